//! TCP: [`TcpServer`](crate::TcpServer) over IPv4 and IPv6.
//!
//! The listener is std's [`TcpListener`], created through `socket2` so the
//! backlog, `SO_REUSEADDR`, `SO_REUSEPORT` and `IPV6_V6ONLY` can be set
//! before `bind`/`listen`. Each accepted connection becomes one
//! [`TcpRequest`](crate::TcpRequest).

use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};

use super::{BindOptions, Listen, each_addr};
use crate::server::{Server, Service};

std_stream_socket!(TcpStream, SocketAddr, nodelay: TcpStream::set_nodelay);

impl Listen for TcpListener {
    type Stream = TcpStream;

    fn accept_stream(&self) -> io::Result<(TcpStream, SocketAddr)> {
        self.accept()
    }
    fn listen_addr(&self) -> io::Result<SocketAddr> {
        self.local_addr()
    }
    fn set_listen_nonblocking(&self) -> io::Result<()> {
        self.set_nonblocking(true)
    }
}

stream_transport!(TcpListener => TcpStream);

/// Constructors for [`TcpServer`](crate::TcpServer).
impl<H> Server<TcpListener, H>
where
    H: Service<TcpListener>,
{
    /// Binds a TCP server to `addr` with the default [`BindOptions`] and
    /// starts listening (Python's `TCPServer(addr, Handler)`). Port 0 picks
    /// a free port; read it back with [`local_addr`](Server::local_addr).
    /// IPv6 addresses (`"[::1]:0"`) work the same way.
    ///
    /// # Examples
    ///
    /// An echo server, in five lines:
    ///
    /// ```
    /// use std::io::{Read, Write};
    /// use socketserver::{TcpRequest, TcpServer};
    ///
    /// let mut server = TcpServer::bind("127.0.0.1:0", |req: &mut TcpRequest| {
    ///     std::io::copy(&mut req.rfile, &mut req.wfile)?;
    ///     Ok(())
    /// })?;
    /// # let addr = server.local_addr()?;
    /// # let client = std::thread::spawn(move || -> std::io::Result<Vec<u8>> {
    /// #     let mut conn = std::net::TcpStream::connect(addr)?;
    /// #     conn.write_all(b"ping")?;
    /// #     conn.shutdown(std::net::Shutdown::Write)?;
    /// #     let mut reply = Vec::new();
    /// #     conn.read_to_end(&mut reply)?;
    /// #     Ok(reply)
    /// # });
    /// # assert!(server.handle_request()?);
    /// # assert_eq!(client.join().unwrap()?, b"ping");
    /// # std::io::Result::Ok(())
    /// ```
    ///
    /// # Errors
    ///
    /// Fails if `addr` does not resolve or no resolved address can be bound
    /// (`AddrInUse`, `PermissionDenied`, ...).
    pub fn bind<A: ToSocketAddrs>(addr: A, handler: H) -> io::Result<Self> {
        Self::bind_with(addr, &BindOptions::new(), handler)
    }

    /// Binds with explicit socket options (backlog, `SO_REUSEPORT`,
    /// `IPV6_V6ONLY`, ...).
    pub fn bind_with<A: ToSocketAddrs>(
        addr: A,
        options: &BindOptions,
        handler: H,
    ) -> io::Result<Self> {
        let listener = each_addr(addr, |addr| {
            options
                .bind_ip(addr, socket2::Type::STREAM)
                .map(TcpListener::from)
        })?;
        Server::new_bound(listener, handler)
    }

    /// Serves an existing listener — one inherited from a supervisor or
    /// from systemd socket activation, or bound with options this crate does
    /// not wrap. The listener must already be listening.
    pub fn from_listener(listener: TcpListener, handler: H) -> io::Result<Self> {
        Server::new(listener, handler)
    }
}
