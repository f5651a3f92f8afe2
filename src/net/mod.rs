//! Transports: how requests arrive.
//!
//! A *stream* transport (TCP, Unix stream) turns each accepted connection
//! into one [`StreamRequest`](crate::StreamRequest); a *datagram* transport
//! (UDP, Unix datagram) turns each received packet into one
//! [`DatagramRequest`](crate::DatagramRequest). Each transport knows how to
//! bind, how to take the next request without blocking, how to build the
//! request a handler sees, and how to close it afterwards.
//!
//! This module is not the serving loop (`server.rs`) nor the dispatch
//! (`dispatch/`): a transport never decides which thread runs a request.

use std::fmt;
use std::io::{self, IoSlice};
use std::net::Shutdown;
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::Arc;
use std::time::Duration;

use crate::request::StreamRequest;
use crate::server::Context;
use crate::shutdown::{ForceClose, Registration};

pub(crate) use udp::send_datagram;
#[cfg(unix)]
pub use unix::{UnixDatagramSocket, UnixListener};

/// By default the listen backlog (`request_queue_size`) is 1024.
///
/// Python's default of 5 was chosen for 1990s hosts: a burst of more than
/// five simultaneous connects while the accept loop is busy overflows it and
/// clients see retransmitted SYNs (a one-second stall each). 1024 absorbs a
/// benchmark-sized burst; the kernel silently caps it at `net.core.somaxconn`
/// (4096 on Linux since 5.4).
pub const DEFAULT_REQUEST_QUEUE_SIZE: i32 = 1024;

mod private {
    pub trait Sealed {}
}

/// A connected stream socket a [`StreamRequest`](crate::StreamRequest) is
/// built on: [`std::net::TcpStream`] or [`std::os::unix::net::UnixStream`].
///
/// Reads and writes go through a shared reference, so the request's `rfile`
/// and `wfile` share one socket without duplicating the descriptor. This
/// trait is sealed.
pub trait StreamSocket: private::Sealed + AsFd + fmt::Debug + Send + Sync + 'static {
    /// The socket's address type.
    type Addr: Clone + fmt::Debug + Send + Sync + 'static;

    /// Reads through a shared reference (`<&TcpStream as Read>::read`).
    fn read_shared(&self, buf: &mut [u8]) -> io::Result<usize>;
    /// Writes through a shared reference.
    fn write_shared(&self, buf: &[u8]) -> io::Result<usize>;
    /// Vectored write through a shared reference.
    fn write_vectored_shared(&self, bufs: &[IoSlice<'_>]) -> io::Result<usize>;
    /// The remote address.
    fn peer_addr(&self) -> io::Result<Self::Addr>;
    /// The local address.
    fn local_addr(&self) -> io::Result<Self::Addr>;
    /// Shuts down the read half, the write half, or both.
    fn shutdown(&self, how: Shutdown) -> io::Result<()>;
    /// Sets `SO_RCVTIMEO`; `None` blocks forever.
    fn set_read_timeout(&self, timeout: Option<Duration>) -> io::Result<()>;
    /// Sets `SO_SNDTIMEO`; `None` blocks forever.
    fn set_write_timeout(&self, timeout: Option<Duration>) -> io::Result<()>;
    /// Moves the socket in or out of non-blocking mode.
    fn set_nonblocking(&self, nonblocking: bool) -> io::Result<()>;
    /// Sets `TCP_NODELAY`; a no-op for sockets without Nagle's algorithm.
    fn set_nodelay(&self, nodelay: bool) -> io::Result<()>;
}

impl<S: StreamSocket> ForceClose for S {
    fn cut(&self) {
        // A full send buffer means whoever writes is blocked on a peer that
        // does not read: no goodbye can get through, wake the writer too.
        let how = if crate::sys::is_writable(self.as_fd()) {
            Shutdown::Read
        } else {
            Shutdown::Both
        };
        // shutdown(2) on a socket the peer already reset fails with
        // ENOTCONN; there is nothing left to wake then.
        let _ = self.shutdown(how);
    }
    fn close_both(&self) {
        let _ = self.shutdown(Shutdown::Both);
    }
}

/// A transport a [`Server`](crate::Server) can serve: a stream listener
/// ([`std::net::TcpListener`], [`UnixListener`]) or a datagram socket
/// ([`std::net::UdpSocket`], [`UnixDatagramSocket`]). This trait is sealed;
/// its workings are internal.
pub trait Transport: sealed::Transport {}

impl<T: sealed::Transport> Transport for T {}

pub(crate) mod sealed {
    use super::*;

    /// The internal side of [`Transport`](super::Transport).
    #[allow(
        unreachable_pub,
        reason = "sealed-trait pattern: public so it may bound a public trait, unnameable outside the crate"
    )]
    pub trait Transport: Send + Sync + Sized + 'static {
        /// The peer address type.
        type Addr: Clone + fmt::Debug + Send + Sync + 'static;
        /// What a handler receives.
        type Request;
        /// A request taken from the transport, not yet started.
        type Job: Send + 'static;

        /// The descriptor the serving loop waits on.
        fn wait_fd(&self) -> BorrowedFd<'_>;

        /// The bound address.
        fn local_addr(&self) -> io::Result<Self::Addr>;

        /// Prepares the socket for the serving loop (non-blocking mode,
        /// options inherited by accepted sockets).
        fn prepare(&self, ctx: &Context) -> io::Result<()>;

        /// Takes the next request without blocking. Errors are
        /// accept/receive errors, classified by the caller. `scratch` is the
        /// serving thread's reusable receive buffer.
        fn next_job(
            self: &Arc<Self>,
            ctx: &Context,
            scratch: &mut Vec<u8>,
        ) -> io::Result<Next<Self::Job, Self::Addr>>;

        /// The peer of a job.
        fn job_peer(job: &Self::Job) -> &Self::Addr;

        /// Builds the handler's request from a job (per-connection socket
        /// options are applied here, on the worker).
        fn open(job: Self::Job, ctx: &Context) -> io::Result<Self::Request>;

        /// Completes a request after `finish`: flushes buffered output, sends
        /// a datagram reply, shuts a connection down.
        fn close(request: Self::Request) -> io::Result<()>;

        /// Refuses a job without running the handler, giving `busy` (if any)
        /// a chance to write a short message first. Must not block.
        fn refuse(job: Self::Job, busy: Option<&BusyHook<Self::Addr>>);

        /// Stops accepting new connections without closing the socket,
        /// called from whichever thread begins shutdown (see
        /// `sys::stop_listening`). Datagram sockets have nothing to stop.
        fn stop_listening(&self) {}
    }
}

impl<T: sealed::Transport> crate::shutdown::StopAccepting for T {
    fn stop_accepting(&self) {
        self.stop_listening();
    }
}

/// `stop_listening` for stream listeners.
pub(crate) fn stop_listening(listener: BorrowedFd<'_>) {
    match crate::sys::stop_listening(listener) {
        Ok(true) => log::debug!("listening socket shut down: new connections are refused"),
        Ok(false) => {}
        Err(e) => log::debug!(
            "cannot shut the listening socket down early ({e}); it is closed after the serving loop returns"
        ),
    }
}

/// Implements [`StreamSocket`] for a std stream type by forwarding to its
/// inherent methods (`TcpStream`, `UnixStream`). `$nodelay` sets
/// `TCP_NODELAY`, or does nothing where there is no Nagle algorithm.
macro_rules! std_stream_socket {
    ($stream:ty, $addr:ty, nodelay: $nodelay:expr) => {
        impl crate::net::private::Sealed for $stream {}

        impl crate::net::StreamSocket for $stream {
            type Addr = $addr;

            #[inline]
            fn read_shared(&self, buf: &mut [u8]) -> std::io::Result<usize> {
                std::io::Read::read(&mut &*self, buf)
            }
            #[inline]
            fn write_shared(&self, buf: &[u8]) -> std::io::Result<usize> {
                std::io::Write::write(&mut &*self, buf)
            }
            #[inline]
            fn write_vectored_shared(
                &self,
                bufs: &[std::io::IoSlice<'_>],
            ) -> std::io::Result<usize> {
                std::io::Write::write_vectored(&mut &*self, bufs)
            }
            fn peer_addr(&self) -> std::io::Result<$addr> {
                <$stream>::peer_addr(self)
            }
            fn local_addr(&self) -> std::io::Result<$addr> {
                <$stream>::local_addr(self)
            }
            fn shutdown(&self, how: std::net::Shutdown) -> std::io::Result<()> {
                <$stream>::shutdown(self, how)
            }
            fn set_read_timeout(
                &self,
                timeout: Option<std::time::Duration>,
            ) -> std::io::Result<()> {
                <$stream>::set_read_timeout(self, timeout)
            }
            fn set_write_timeout(
                &self,
                timeout: Option<std::time::Duration>,
            ) -> std::io::Result<()> {
                <$stream>::set_write_timeout(self, timeout)
            }
            fn set_nonblocking(&self, nonblocking: bool) -> std::io::Result<()> {
                <$stream>::set_nonblocking(self, nonblocking)
            }
            fn set_nodelay(&self, nodelay: bool) -> std::io::Result<()> {
                let set: fn(&$stream, bool) -> std::io::Result<()> = $nodelay;
                set(self, nodelay)
            }
        }
    };
}

/// A listening stream socket, as [`stream_transport!`] needs it.
pub(crate) trait Listen: AsFd + Send + Sync + 'static {
    type Stream: StreamSocket;
    fn accept_stream(&self) -> io::Result<(Self::Stream, <Self::Stream as StreamSocket>::Addr)>;
    fn listen_addr(&self) -> io::Result<<Self::Stream as StreamSocket>::Addr>;
    fn set_listen_nonblocking(&self) -> io::Result<()>;
}

/// The [`Transport`] of a stream listener: each accepted connection is one
/// [`StreamRequest`].
macro_rules! stream_transport {
    ($listener:ty => $stream:ty) => {
        impl crate::net::sealed::Transport for $listener {
            type Addr = <$stream as crate::net::StreamSocket>::Addr;
            type Request = crate::request::StreamRequest<$stream>;
            type Job = crate::net::StreamJob<$stream>;

            fn wait_fd(&self) -> std::os::fd::BorrowedFd<'_> {
                std::os::fd::AsFd::as_fd(self)
            }

            fn local_addr(&self) -> std::io::Result<Self::Addr> {
                crate::net::Listen::listen_addr(self)
            }

            fn prepare(&self, _ctx: &crate::server::Context) -> std::io::Result<()> {
                crate::net::Listen::set_listen_nonblocking(self)
            }

            fn next_job(
                self: &std::sync::Arc<Self>,
                ctx: &crate::server::Context,
                _scratch: &mut Vec<u8>,
            ) -> std::io::Result<crate::net::Next<Self::Job, Self::Addr>> {
                crate::net::next_stream(&**self, ctx)
            }

            fn job_peer(job: &Self::Job) -> &Self::Addr {
                &job.peer
            }

            fn open(
                job: Self::Job,
                ctx: &crate::server::Context,
            ) -> std::io::Result<Self::Request> {
                crate::net::open_stream(job, ctx)
            }

            fn close(request: Self::Request) -> std::io::Result<()> {
                crate::net::close_stream(request)
            }

            fn refuse(job: Self::Job, busy: Option<&crate::net::BusyHook<Self::Addr>>) {
                job.refuse(busy);
            }

            fn stop_listening(&self) {
                crate::net::stop_listening(std::os::fd::AsFd::as_fd(self));
            }
        }
    };
}

/// The [`Transport`] of a datagram socket: each datagram is one
/// [`DatagramRequest`](crate::DatagramRequest).
macro_rules! datagram_transport {
    ($socket:ty) => {
        impl crate::net::sealed::Transport for $socket {
            type Addr = <$socket as crate::net::DatagramSocket>::Addr;
            type Request = crate::request::DatagramRequest<$socket>;
            type Job = crate::net::udp::DatagramJob<$socket>;

            fn wait_fd(&self) -> std::os::fd::BorrowedFd<'_> {
                std::os::fd::AsFd::as_fd(self)
            }

            fn local_addr(&self) -> std::io::Result<Self::Addr> {
                crate::net::DatagramSocket::local_addr(self)
            }

            fn prepare(&self, _ctx: &crate::server::Context) -> std::io::Result<()> {
                crate::net::DatagramSocket::set_nonblocking(self, true)
            }

            fn next_job(
                self: &std::sync::Arc<Self>,
                ctx: &crate::server::Context,
                scratch: &mut Vec<u8>,
            ) -> std::io::Result<crate::net::Next<Self::Job, Self::Addr>> {
                crate::net::udp::next_datagram(self, ctx, scratch)
            }

            fn job_peer(job: &Self::Job) -> &Self::Addr {
                &job.peer
            }

            fn open(
                job: Self::Job,
                ctx: &crate::server::Context,
            ) -> std::io::Result<Self::Request> {
                Ok(crate::net::udp::open_datagram(job, ctx))
            }

            fn close(request: Self::Request) -> std::io::Result<()> {
                request.send_wfile()
            }

            fn refuse(job: Self::Job, busy: Option<&crate::net::BusyHook<Self::Addr>>) {
                crate::net::udp::refuse_datagram(job, busy);
            }
        }
    };
}

/// Accepts the next connection without blocking.
pub(crate) fn next_stream<L, S>(
    listener: &L,
    ctx: &Context,
) -> io::Result<Next<StreamJob<S>, S::Addr>>
where
    L: Listen<Stream = S>,
    S: StreamSocket,
{
    match listener.accept_stream() {
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

/// What a transport's `next_job` found.
#[derive(Debug)]
pub enum Next<J, A> {
    /// A request to dispatch.
    Job(J),
    /// Nothing pending.
    Empty,
    /// Something arrived but cannot be served (an oversize datagram): report
    /// it to `handle_error` and go on.
    Dropped { peer: A, error: crate::RequestError },
}

/// The hook that may write a short "busy" message to a refused request.
pub(crate) type BusyHook<A> = dyn Fn(&A, &mut dyn io::Write) + Send + Sync;

/// At most this much unread input is discarded when a connection closes.
pub(crate) const DISCARD_ON_CLOSE: usize = 64 * 1024;

/// Builds a stream request: applies per-connection socket options and wraps
/// the socket in `rfile`/`wfile`.
pub(crate) fn open_stream<S: StreamSocket>(
    job: StreamJob<S>,
    ctx: &Context,
) -> io::Result<StreamRequest<S>> {
    let config = &ctx.config;
    // Only touch the socket when an option differs from the accepted
    // socket's state: each setsockopt is a syscall per connection. (Linux
    // does not copy TCP_NODELAY from the listener to accepted sockets.)
    if config.nodelay {
        job.socket.set_nodelay(true)?;
    }
    if config.read_timeout.is_some() {
        job.socket.set_read_timeout(config.read_timeout)?;
    }
    if config.write_timeout.is_some() {
        job.socket.set_write_timeout(config.write_timeout)?;
    }
    Ok(StreamRequest::new(
        job.socket,
        job.peer,
        config.rbufsize,
        config.wbufsize,
        Arc::clone(&ctx.state),
        job.registration,
    ))
}

/// Completes a stream request (Python's `finish` + `shutdown_request`):
/// flushes `wfile`, then shuts down the write side so the peer sees EOF
/// after the last byte, then closes.
pub(crate) fn close_stream<S: StreamSocket>(request: StreamRequest<S>) -> io::Result<()> {
    let (mut wfile, socket) = request.into_parts();
    let flushed = if wfile.buffer().is_empty() {
        Ok(())
    } else {
        io::Write::flush(&mut wfile)
    };
    drop(wfile);
    // Input the handler did not read would turn the close into a reset
    // that can destroy the reply in flight (see `discard_pending_input`).
    crate::sys::discard_pending_input(socket.as_fd(), DISCARD_ON_CLOSE);
    // The peer may already be gone; that is not the handler's error.
    let _ = socket.shutdown(Shutdown::Write);
    flushed
}

/// A datagram socket a [`DatagramRequest`](crate::DatagramRequest) replies
/// through: [`std::net::UdpSocket`] or [`UnixDatagramSocket`]. This trait is
/// sealed.
pub trait DatagramSocket: private::Sealed + AsFd + fmt::Debug + Send + Sync + 'static {
    /// The socket's address type.
    type Addr: Clone + fmt::Debug + Send + Sync + 'static;

    /// Receives one datagram into `buf`. Returns the number of bytes stored,
    /// the datagram's real length (larger than `buf.len()` when it was
    /// truncated; platforms that cannot tell report `buf.len()`), and the
    /// sender.
    fn recv_datagram(&self, buf: &mut [u8]) -> io::Result<(usize, usize, Self::Addr)>;

    /// Sends one datagram to `peer`.
    fn send_to_peer(&self, data: &[u8], peer: &Self::Addr) -> io::Result<usize>;

    /// The bound address.
    fn local_addr(&self) -> io::Result<Self::Addr>;

    /// Moves the socket in or out of non-blocking mode.
    fn set_nonblocking(&self, nonblocking: bool) -> io::Result<()>;
}

/// A connection accepted by a stream transport, registered with the drain
/// registry from the moment it is accepted.
pub struct StreamJob<S: StreamSocket> {
    pub(crate) socket: Arc<S>,
    pub(crate) peer: S::Addr,
    pub(crate) registration: Registration,
}

impl<S: StreamSocket> fmt::Debug for StreamJob<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StreamJob")
            .field("peer", &self.peer)
            .finish_non_exhaustive()
    }
}

impl<S: StreamSocket> StreamJob<S> {
    pub(crate) fn new(socket: S, peer: S::Addr, ctx: &Context) -> Self {
        let socket = Arc::new(socket);
        let registration = ctx.state.register(socket.clone());
        StreamJob {
            socket,
            peer,
            registration,
        }
    }

    /// Writes the optional busy message without blocking, then closes.
    pub(crate) fn refuse(self, busy: Option<&BusyHook<S::Addr>>) {
        if let Some(busy) = busy
            && self.socket.set_nonblocking(true).is_ok()
        {
            let mut writer = crate::request::SocketWriter::new(Arc::clone(&self.socket));
            busy(&self.peer, &mut writer);
        }
        // FIN after the message; the close that follows releases the socket.
        let _ = self.socket.shutdown(Shutdown::Write);
    }
}

/// Socket options applied before `bind(2)` (and `listen(2)` for streams).
///
/// # Examples
///
/// ```
/// use socketserver::{BindOptions, TcpRequest, TcpServer};
///
/// let options = BindOptions::new().request_queue_size(128).reuse_port(true);
/// let server = TcpServer::bind_with("127.0.0.1:0", &options, |_req: &mut TcpRequest| Ok(()))?;
/// assert_ne!(server.local_addr()?.port(), 0);
/// # std::io::Result::Ok(())
/// ```
#[derive(Clone, Debug)]
pub struct BindOptions {
    pub(crate) backlog: i32,
    pub(crate) reuse_address: bool,
    pub(crate) reuse_port: bool,
    pub(crate) only_v6: Option<bool>,
}

impl Default for BindOptions {
    fn default() -> Self {
        Self::new()
    }
}

impl BindOptions {
    /// The defaults: backlog [`DEFAULT_REQUEST_QUEUE_SIZE`], `SO_REUSEADDR`
    /// on (Unix), `SO_REUSEPORT` off, `IPV6_V6ONLY` left at the system
    /// default.
    pub fn new() -> Self {
        Self {
            backlog: DEFAULT_REQUEST_QUEUE_SIZE,
            reuse_address: cfg!(unix),
            reuse_port: false,
            only_v6: None,
        }
    }

    /// The listen backlog: how many connections the kernel queues before
    /// they are accepted (Python's `request_queue_size`). By default 1024;
    /// see [`DEFAULT_REQUEST_QUEUE_SIZE`]. Ignored for datagram sockets.
    pub fn request_queue_size(mut self, size: u32) -> Self {
        self.backlog = size.min(i32::MAX as u32) as i32;
        self
    }

    /// `SO_REUSEADDR` (Python's `allow_reuse_address`). On by default on
    /// Unix, so a restarted server can bind while old connections to its
    /// port sit in TIME_WAIT. (On Windows the option lets another process
    /// steal a port in use, so it is off there.)
    pub fn reuse_address(mut self, on: bool) -> Self {
        self.reuse_address = on;
        self
    }

    /// `SO_REUSEPORT` (Python's `allow_reuse_port`): several sockets, in one
    /// process or several, bind the same port and the kernel spreads
    /// connections or datagrams across them. Off by default.
    ///
    /// # Platform-specific behavior
    ///
    /// Unix only; on other platforms binding fails with `Unsupported`.
    pub fn reuse_port(mut self, on: bool) -> Self {
        self.reuse_port = on;
        self
    }

    /// `IPV6_V6ONLY` for IPv6 addresses: `false` makes a `[::]` socket
    /// dual-stack (it also receives IPv4 as v4-mapped addresses), `true`
    /// restricts it to IPv6. By default the system's setting
    /// (`net.ipv6.bindv6only`, usually dual-stack on Linux). Ignored for
    /// IPv4 and Unix sockets.
    pub fn only_v6(mut self, on: bool) -> Self {
        self.only_v6 = Some(on);
        self
    }

    /// Creates, configures and binds an IP socket of `ty`; streams also
    /// listen.
    pub(crate) fn bind_ip(
        &self,
        addr: std::net::SocketAddr,
        ty: socket2::Type,
    ) -> io::Result<socket2::Socket> {
        use socket2::{Domain, Socket};
        let socket = Socket::new(Domain::for_address(addr), ty, None)?;
        self.configure(&socket)?;
        if addr.is_ipv6()
            && let Some(only) = self.only_v6
        {
            socket.set_only_v6(only)?;
        }
        socket.bind(&addr.into())?;
        if ty == socket2::Type::STREAM {
            socket.listen(self.backlog)?;
        }
        Ok(socket)
    }

    pub(crate) fn configure(&self, socket: &socket2::Socket) -> io::Result<()> {
        #[cfg(unix)]
        if self.reuse_address {
            // On Windows this would allow rebinding a port actively in use
            // by another socket, so it is only honoured on Unix.
            socket.set_reuse_address(true)?;
        }
        if self.reuse_port {
            #[cfg(all(unix, not(any(target_os = "solaris", target_os = "illumos"))))]
            socket.set_reuse_port(true)?;
            #[cfg(not(all(unix, not(any(target_os = "solaris", target_os = "illumos")))))]
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "SO_REUSEPORT is not supported on this platform",
            ));
        }
        Ok(())
    }
}

/// Resolves `addr` and calls `bind` on each address in turn until one
/// succeeds, as `std::net::TcpListener::bind` does.
pub(crate) fn each_addr<A, T>(
    addr: A,
    mut bind: impl FnMut(std::net::SocketAddr) -> io::Result<T>,
) -> io::Result<T>
where
    A: std::net::ToSocketAddrs,
{
    let mut last_err = None;
    for addr in addr.to_socket_addrs()? {
        match bind(addr) {
            Ok(t) => return Ok(t),
            Err(e) => last_err = Some(e),
        }
    }
    Err(last_err.unwrap_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            "could not resolve to any addresses",
        )
    }))
}

// The transports come last: they use the macros above, which must be
// defined first.
mod tcp;
mod udp;
#[cfg(unix)]
mod unix;
