//! What to do with a request: the [`RequestHandler`] trait.
//!
//! Python's `BaseRequestHandler` is a class instantiated once per request;
//! here one handler value is shared by every worker (`&self`, `Sync`), and
//! per-request state lives in locals of [`handle`](RequestHandler::handle)
//! or in the request itself. The call order is Python's:
//!
//! ```text
//! setup ──Ok──▶ handle ──▶ finish        (finish runs even if handle failed)
//!   │
//!   └──Err──▶ (handle and finish skipped)
//! ```
//!
//! Any closure `Fn(&mut R) -> io::Result<()>` is a handler whose `handle` is
//! the closure. This module is not the dispatch (who calls the handler, on
//! which thread): see `dispatch`.

use std::io;

/// Handles one request of type `R` — a
/// [`StreamRequest`](crate::StreamRequest) for stream servers, a
/// [`DatagramRequest`](crate::DatagramRequest) for datagram servers.
///
/// Errors returned from any method, and panics, end the request and are
/// reported to the server's `handle_error` hook; the server keeps serving.
///
/// # Examples
///
/// A line-oriented upper-casing handler with a greeting in `setup`:
///
/// ```
/// use std::io::{self, BufRead, Write};
/// use socketserver::{RequestHandler, TcpRequest, TcpServer};
///
/// struct Shout;
///
/// impl RequestHandler<TcpRequest> for Shout {
///     fn setup(&self, req: &mut TcpRequest) -> io::Result<()> {
///         req.wfile.write_all(b"hello\n")
///     }
///     fn handle(&self, req: &mut TcpRequest) -> io::Result<()> {
///         let mut line = String::new();
///         while req.rfile.read_line(&mut line)? > 0 {
///             req.wfile.write_all(line.to_uppercase().as_bytes())?;
///             line.clear();
///         }
///         Ok(())
///     }
/// }
///
/// let server = TcpServer::bind("127.0.0.1:0", Shout)?;
/// # let _ = server;
/// # io::Result::Ok(())
/// ```
pub trait RequestHandler<R>: Send + Sync + 'static {
    /// Called before [`handle`](Self::handle). If it fails, neither `handle`
    /// nor `finish` runs. Does nothing by default.
    fn setup(&self, request: &mut R) -> io::Result<()> {
        let _ = request;
        Ok(())
    }

    /// Serves the request.
    fn handle(&self, request: &mut R) -> io::Result<()>;

    /// Called after [`handle`](Self::handle), even when `handle` failed.
    /// Does nothing by default. (The server flushes `wfile` after `finish`.)
    fn finish(&self, request: &mut R) -> io::Result<()> {
        let _ = request;
        Ok(())
    }
}

impl<R, F> RequestHandler<R> for F
where
    F: Fn(&mut R) -> io::Result<()> + Send + Sync + 'static,
{
    fn handle(&self, request: &mut R) -> io::Result<()> {
        self(request)
    }
}
