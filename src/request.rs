//! What a handler receives: [`StreamRequest`] (one connection) and
//! [`DatagramRequest`] (one packet).
//!
//! A stream request carries Python's `StreamRequestHandler` attributes:
//! buffered `rfile` and `wfile`, the peer's address, timeouts and
//! `TCP_NODELAY`. A datagram request carries `DatagramRequestHandler`'s:
//! `rfile` over the packet, and a `wfile` whose contents are sent back to
//! the peer as one datagram after `finish`. Both carry the server's
//! [`ShutdownToken`].
//!
//! This module does not read or accept anything itself; transports build
//! requests, dispatchers run them.

use std::fmt;
use std::io::{self, BufReader, BufWriter, Cursor, IoSlice, Read, Write};
use std::sync::Arc;
use std::time::Duration;

use crate::net::{DatagramSocket, StreamSocket};
use crate::shutdown::{Registration, ShutdownHandle, ShutdownState, ShutdownToken};

/// The read half of a shared stream socket: `rfile`'s inner reader.
#[derive(Debug)]
pub struct SocketReader<S> {
    socket: Arc<S>,
}

impl<S: StreamSocket> SocketReader<S> {
    pub(crate) fn new(socket: Arc<S>) -> Self {
        Self { socket }
    }

    /// The underlying socket.
    pub fn get_ref(&self) -> &S {
        &self.socket
    }
}

impl<S: StreamSocket> Read for SocketReader<S> {
    #[inline]
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.socket.read_shared(buf)
    }
}

/// The write half of a shared stream socket: `wfile`'s inner writer.
#[derive(Debug)]
pub struct SocketWriter<S> {
    socket: Arc<S>,
}

impl<S: StreamSocket> SocketWriter<S> {
    pub(crate) fn new(socket: Arc<S>) -> Self {
        Self { socket }
    }

    /// The underlying socket.
    pub fn get_ref(&self) -> &S {
        &self.socket
    }
}

impl<S: StreamSocket> Write for SocketWriter<S> {
    #[inline]
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.socket.write_shared(buf)
    }

    #[inline]
    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        self.socket.write_vectored_shared(bufs)
    }

    #[inline]
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// One connection, as a handler sees it.
///
/// `rfile` and `wfile` are public fields, as in Python, so a handler can
/// borrow both at once (`io::copy(&mut req.rfile, &mut req.wfile)`).
/// By default `rfile` buffers 8 KiB and `wfile` is unbuffered (Python's
/// `wbufsize = 0`): every write goes straight to the socket, so a handler
/// that forgets to flush never leaves its peer waiting. Set
/// [`Server::set_wbufsize`](crate::Server::set_wbufsize) for fewer, larger
/// writes; the server flushes `wfile` after `finish`.
///
/// # Examples
///
/// ```
/// use std::io::{self, BufRead, Write};
/// use socketserver::TcpRequest;
///
/// fn echo_lines(req: &mut TcpRequest) -> io::Result<()> {
///     let mut line = Vec::new();
///     while req.rfile.read_until(b'\n', &mut line)? > 0 {
///         req.wfile.write_all(&line)?;
///         line.clear();
///     }
///     Ok(())
/// }
/// # let _ = echo_lines;
/// ```
pub struct StreamRequest<S: StreamSocket> {
    /// Buffered reader over the connection (Python's `rfile`).
    pub rfile: BufReader<SocketReader<S>>,
    /// Writer over the connection (Python's `wfile`); unbuffered unless the
    /// server's `wbufsize` is set.
    pub wfile: BufWriter<SocketWriter<S>>,
    socket: Arc<S>,
    peer: S::Addr,
    state: Arc<ShutdownState>,
    _registration: Registration,
}

impl<S: StreamSocket> fmt::Debug for StreamRequest<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StreamRequest")
            .field("socket", &self.socket)
            .field("peer", &self.peer)
            .finish_non_exhaustive()
    }
}

impl<S: StreamSocket> StreamRequest<S> {
    pub(crate) fn new(
        socket: Arc<S>,
        peer: S::Addr,
        rbufsize: usize,
        wbufsize: usize,
        state: Arc<ShutdownState>,
        registration: Registration,
    ) -> Self {
        StreamRequest {
            rfile: BufReader::with_capacity(rbufsize, SocketReader::new(Arc::clone(&socket))),
            wfile: BufWriter::with_capacity(wbufsize, SocketWriter::new(Arc::clone(&socket))),
            socket,
            peer,
            state,
            _registration: registration,
        }
    }

    /// The peer's address (Python's `client_address`).
    pub fn peer_addr(&self) -> &S::Addr {
        &self.peer
    }

    /// The local address of the connection.
    pub fn local_addr(&self) -> io::Result<S::Addr> {
        self.socket.local_addr()
    }

    /// The connected socket itself (Python's `request`), for options this
    /// type does not wrap. Reading from it directly bypasses `rfile`'s
    /// buffer.
    pub fn socket(&self) -> &S {
        &self.socket
    }

    /// Sets the read timeout: a read blocked longer fails with `WouldBlock`
    /// or `TimedOut`. `None` (the server's default unless
    /// [`Server::set_read_timeout`](crate::Server::set_read_timeout) says
    /// otherwise) waits forever.
    pub fn set_read_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        self.socket.set_read_timeout(timeout)
    }

    /// Sets the write timeout.
    pub fn set_write_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        self.socket.set_write_timeout(timeout)
    }

    /// Sets `TCP_NODELAY` (on by default; a no-op for Unix sockets).
    pub fn set_nodelay(&self, nodelay: bool) -> io::Result<()> {
        self.socket.set_nodelay(nodelay)
    }

    /// The server's shutdown state, read-only.
    pub fn shutdown_token(&self) -> ShutdownToken {
        ShutdownToken::new(Arc::clone(&self.state))
    }

    /// Whether the server has begun shutting down: a long-lived handler
    /// should finish its current message and say goodbye.
    #[inline]
    pub fn is_shutting_down(&self) -> bool {
        self.state.is_shutting_down()
    }

    /// A handle that can stop the server — safe to use from inside this
    /// handler (it never waits for `serve_forever`).
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        ShutdownHandle::new(Arc::clone(&self.state))
    }

    pub(crate) fn into_parts(self) -> (BufWriter<SocketWriter<S>>, Arc<S>) {
        (self.wfile, self.socket)
    }
}

/// A TCP connection request.
pub type TcpRequest = StreamRequest<std::net::TcpStream>;

/// A Unix stream connection request.
#[cfg(unix)]
pub type UnixStreamRequest = StreamRequest<std::os::unix::net::UnixStream>;

/// One received datagram, as a handler sees it.
///
/// `rfile` reads the packet; whatever the handler writes to `wfile` is sent
/// back to the peer as **one** datagram after `finish` (Python's
/// `DatagramRequestHandler`), unless it is empty (Python would send an
/// empty datagram; here send one with `reply(b"")`). A failed `wfile` reply
/// is reported to `handle_error`. For several replies, or a reply to
/// another address, use [`reply`](Self::reply) or [`socket`](Self::socket).
///
/// Every reply goes out through the server's one socket, from the address
/// the server is bound to, whichever thread the handler runs on.
///
/// # Examples
///
/// ```
/// use std::io::{self, Write};
/// use socketserver::UdpRequest;
///
/// fn shout(req: &mut UdpRequest) -> io::Result<()> {
///     let upper = req.packet().to_ascii_uppercase();
///     req.wfile.write_all(&upper)
/// }
/// # let _ = shout;
/// ```
pub struct DatagramRequest<D: DatagramSocket> {
    /// The packet, as a reader (Python's `rfile`).
    pub rfile: Cursor<Vec<u8>>,
    /// The reply, sent as one datagram after `finish` if not empty.
    pub wfile: Vec<u8>,
    socket: Arc<D>,
    peer: D::Addr,
    state: Arc<ShutdownState>,
    reply_timeout: Duration,
}

impl<D: DatagramSocket> fmt::Debug for DatagramRequest<D> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DatagramRequest")
            .field("len", &self.rfile.get_ref().len())
            .field("peer", &self.peer)
            .finish_non_exhaustive()
    }
}

impl<D: DatagramSocket> DatagramRequest<D> {
    pub(crate) fn new(
        packet: Vec<u8>,
        peer: D::Addr,
        socket: Arc<D>,
        state: Arc<ShutdownState>,
        reply_timeout: Duration,
    ) -> Self {
        DatagramRequest {
            rfile: Cursor::new(packet),
            wfile: Vec::new(),
            socket,
            peer,
            state,
            reply_timeout,
        }
    }

    /// The whole packet.
    pub fn packet(&self) -> &[u8] {
        self.rfile.get_ref()
    }

    /// The sender's address (Python's `client_address`).
    pub fn peer_addr(&self) -> &D::Addr {
        &self.peer
    }

    /// Sends `data` to the peer now, as one datagram, through the server's
    /// socket. Can be called any number of times. If the socket's send
    /// buffer is full, waits for room up to the server's write timeout (by
    /// default one second).
    ///
    /// # Errors
    ///
    /// Fails like `send_to`, or with `TimedOut`; for a Unix datagram peer
    /// that did not bind an address, fails with `NotConnected` ("peer has no
    /// address").
    pub fn reply(&self, data: &[u8]) -> io::Result<usize> {
        crate::net::send_datagram(&*self.socket, data, &self.peer, self.reply_timeout)
    }

    /// The server's socket (Python's `socket` attribute of the request),
    /// shared with the serving thread and every other handler.
    ///
    /// It is in non-blocking mode while the server runs: a direct
    /// `send_to` on it may fail with `WouldBlock` where
    /// [`reply`](Self::reply) would wait for room. Never receive from it;
    /// that would steal other clients' requests.
    pub fn socket(&self) -> &D {
        &self.socket
    }

    /// The server's shutdown state, read-only.
    pub fn shutdown_token(&self) -> ShutdownToken {
        ShutdownToken::new(Arc::clone(&self.state))
    }

    /// Whether the server has begun shutting down.
    #[inline]
    pub fn is_shutting_down(&self) -> bool {
        self.state.is_shutting_down()
    }

    /// A handle that can stop the server, safe to use from the handler.
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        ShutdownHandle::new(Arc::clone(&self.state))
    }

    /// Sends `wfile` as one datagram if it is not empty.
    pub(crate) fn send_wfile(self) -> io::Result<()> {
        if self.wfile.is_empty() {
            return Ok(());
        }
        self.reply(&self.wfile).map(drop)
    }
}

/// A UDP datagram request.
pub type UdpRequest = DatagramRequest<std::net::UdpSocket>;

/// A Unix datagram request.
#[cfg(unix)]
pub type UnixDatagramRequest = DatagramRequest<crate::net::UnixDatagramSocket>;
