//! TCP: [`TcpServer`](crate::TcpServer) over IPv4 and IPv6.
//!
//! The listener is std's [`TcpListener`], created through `socket2` so the
//! backlog, `SO_REUSEADDR`, `SO_REUSEPORT` and `IPV6_V6ONLY` can be set
//! before `bind`/`listen`. Each accepted connection becomes one
//! [`TcpRequest`](crate::TcpRequest).

use std::io::{self, IoSlice, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::Arc;
use std::time::Duration;

use super::{BindOptions, Next, StreamJob, StreamSocket, each_addr, private, sealed};
use crate::request::StreamRequest;
use crate::server::{Context, Server, Service};

impl private::Sealed for TcpStream {}

impl StreamSocket for TcpStream {
    type Addr = SocketAddr;

    #[inline]
    fn read_shared(&self, buf: &mut [u8]) -> io::Result<usize> {
        (&*self).read(buf)
    }
    #[inline]
    fn write_shared(&self, buf: &[u8]) -> io::Result<usize> {
        (&*self).write(buf)
    }
    #[inline]
    fn write_vectored_shared(&self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        (&*self).write_vectored(bufs)
    }
    fn peer_addr(&self) -> io::Result<SocketAddr> {
        TcpStream::peer_addr(self)
    }
    fn local_addr(&self) -> io::Result<SocketAddr> {
        TcpStream::local_addr(self)
    }
    fn shutdown(&self, how: Shutdown) -> io::Result<()> {
        TcpStream::shutdown(self, how)
    }
    fn set_read_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        TcpStream::set_read_timeout(self, timeout)
    }
    fn set_write_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        TcpStream::set_write_timeout(self, timeout)
    }
    fn set_nonblocking(&self, nonblocking: bool) -> io::Result<()> {
        TcpStream::set_nonblocking(self, nonblocking)
    }
    fn set_nodelay(&self, nodelay: bool) -> io::Result<()> {
        TcpStream::set_nodelay(self, nodelay)
    }
}

impl sealed::Transport for TcpListener {
    type Addr = SocketAddr;
    type Request = StreamRequest<TcpStream>;
    type Job = StreamJob<TcpStream>;

    fn wait_fd(&self) -> BorrowedFd<'_> {
        self.as_fd()
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        TcpListener::local_addr(self)
    }

    fn prepare(&self, _ctx: &Context) -> io::Result<()> {
        self.set_nonblocking(true)
    }

    fn next_job(
        self: &Arc<Self>,
        ctx: &Context,
        _scratch: &mut Vec<u8>,
    ) -> io::Result<Next<Self::Job, SocketAddr>> {
        match self.accept() {
            Ok((stream, peer)) => {
                // BSD-derived systems hand out accepted sockets that inherit
                // O_NONBLOCK from the listener; handlers expect blocking I/O.
                #[cfg(not(any(target_os = "linux", target_os = "android")))]
                stream.set_nonblocking(false)?;
                Ok(Next::Job(StreamJob::new(stream, peer, ctx)))
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(Next::Empty),
            Err(e) => Err(e),
        }
    }

    fn job_peer(job: &Self::Job) -> &SocketAddr {
        &job.peer
    }

    fn open(job: Self::Job, ctx: &Context) -> io::Result<Self::Request> {
        super::open_stream(job, ctx)
    }

    fn close(request: Self::Request) -> io::Result<()> {
        super::close_stream(request)
    }

    fn refuse(job: Self::Job, busy: Option<&super::BusyHook<SocketAddr>>) {
        job.refuse(busy);
    }

    fn stop_listening(&self) {
        super::stop_listening(self.as_fd());
    }
}

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
