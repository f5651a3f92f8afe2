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

/// What a [`MessageHandler`] wants done with its connection after handling
/// what was available.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Keep the connection open: it waits in the poller, holding no thread,
    /// until more data arrives.
    Keep,
    /// Close the connection (after sending what was written).
    Close,
}

/// Why a message-mode connection closed, as told to
/// [`MessageHandler::disconnect`].
#[derive(Debug)]
#[non_exhaustive]
pub enum CloseReason {
    /// The handler returned [`Action::Close`].
    Handler,
    /// The peer closed its side (end of file).
    PeerClosed,
    /// No data arrived for the idle timeout.
    IdleTimeout,
    /// A message did not arrive completely within the read timeout.
    ReadTimeout,
    /// The peer did not read its output fast enough: more than the
    /// per-connection outbound limit was waiting to be sent.
    SlowConsumer,
    /// The server was shut down (the drain deadline passed or the drain was
    /// forced).
    Shutdown,
    /// The handler failed or panicked (also reported to `handle_error`), or
    /// the connection failed.
    Error(crate::RequestError),
}

impl std::fmt::Display for CloseReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CloseReason::Handler => f.write_str("closed by the handler"),
            CloseReason::PeerClosed => f.write_str("closed by the peer"),
            CloseReason::IdleTimeout => f.write_str("idle timeout"),
            CloseReason::ReadTimeout => f.write_str("message read timeout"),
            CloseReason::SlowConsumer => f.write_str("peer too slow to read its output"),
            CloseReason::Shutdown => f.write_str("server shutdown"),
            CloseReason::Error(e) => write!(f, "error: {e}"),
        }
    }
}

/// A message-oriented handler for long-lived stream connections, served by
/// [`Dispatch::Reactor`](crate::Dispatch::Reactor): instead of owning a
/// thread for the connection's whole life, the handler is called each time
/// the connection has data, processes what is available, and returns
/// [`Action::Keep`] (park the connection in the poller, holding no thread)
/// or [`Action::Close`].
///
/// Per-connection state lives in [`State`](Self::State), created by
/// [`connect`](Self::connect). Serve it by wrapping it in [`Messages`]:
/// `TcpServer::bind(addr, Messages(handler))`.
///
/// Reads through [`Connection::rfile`](crate::Connection::rfile) block only
/// inside a message: if a message is incomplete, the read waits for the rest
/// up to the server's per-message read timeout, then fails with `TimedOut`
/// and the connection is closed ([`CloseReason::ReadTimeout`]). So a handler
/// should read what it needs for one message at a time, and return `Keep`
/// once [`Connection::has_buffered_data`](crate::Connection::has_buffered_data)
/// says nothing more is buffered.
///
/// # Examples
///
/// A line echo that holds no thread between lines:
///
/// ```
/// use std::io::{self, BufRead, Write};
/// use std::net::TcpStream;
/// use socketserver::{Action, Connection, MessageHandler, Messages, TcpServer};
///
/// struct LineEcho;
///
/// impl MessageHandler<TcpStream> for LineEcho {
///     type State = u64; // lines echoed on this connection
///
///     fn connect(&self, _conn: &mut Connection<TcpStream>) -> io::Result<u64> {
///         Ok(0)
///     }
///
///     fn ready(&self, conn: &mut Connection<TcpStream>, lines: &mut u64) -> io::Result<Action> {
///         loop {
///             let mut line = String::new();
///             if conn.rfile.read_line(&mut line)? == 0 {
///                 return Ok(Action::Close); // end of file
///             }
///             conn.wfile.write_all(line.as_bytes())?;
///             *lines += 1;
///             if !conn.has_buffered_data() {
///                 return Ok(Action::Keep); // nothing more yet: park
///             }
///         }
///     }
/// }
///
/// let server = TcpServer::bind("127.0.0.1:0", Messages(LineEcho))?;
/// # let _ = server;
/// # io::Result::Ok(())
/// ```
pub trait MessageHandler<S: crate::StreamSocket>: Send + Sync + 'static {
    /// Per-connection state.
    type State: Send + 'static;

    /// Called once for each new connection, on a worker; may write a
    /// greeting. An error closes the connection.
    fn connect(&self, conn: &mut crate::Connection<S>) -> io::Result<Self::State>;

    /// Called when the connection has data to read. Process the complete
    /// messages available and return whether to keep the connection.
    fn ready(&self, conn: &mut crate::Connection<S>, state: &mut Self::State)
    -> io::Result<Action>;

    /// Called once for each open connection when the server begins shutting
    /// down — a chance to say goodbye. By default keeps the connection, which
    /// then stays served until the peer closes it or the drain deadline.
    fn shutting_down(
        &self,
        conn: &mut crate::Connection<S>,
        state: &mut Self::State,
    ) -> io::Result<Action> {
        let _ = (conn, state);
        Ok(Action::Keep)
    }

    /// Called once when the connection closes, with the reason. Anything
    /// written here is sent if the socket still accepts it without waiting.
    /// Does nothing by default.
    fn disconnect(
        &self,
        conn: &mut crate::Connection<S>,
        state: Self::State,
        reason: &CloseReason,
    ) {
        let _ = (conn, state, reason);
    }
}

/// Serves a [`MessageHandler`] on a stream server in message mode:
/// `TcpServer::bind(addr, Messages(handler))`. Such a server's dispatch is
/// [`Dispatch::Reactor`](crate::Dispatch::Reactor) (set by default).
#[derive(Clone, Debug)]
pub struct Messages<M>(pub M);
