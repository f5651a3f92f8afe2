//! UDP: [`UdpServer`](crate::UdpServer) over IPv4 and IPv6, plus the
//! datagram plumbing shared with Unix datagram sockets.
//!
//! One received datagram is one request. The serving thread receives into a
//! scratch buffer one byte larger than `max_packet_size` (and, on Linux,
//! asks for the real length with `MSG_TRUNC`), so an oversize datagram is
//! detected and reported instead of being handed on truncated. Replies from
//! every worker go out through the one shared socket.

use std::io;
use std::net::{SocketAddr, ToSocketAddrs, UdpSocket};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{BindOptions, BusyHook, DatagramSocket, Next, each_addr, private};
use crate::error::RequestError;
use crate::request::DatagramRequest;
use crate::server::{Context, Server, Service};
use crate::sys;

/// By default a reply that cannot be queued (full socket buffer) is retried
/// for up to one second, unless the server's write timeout says otherwise.
pub(crate) const DEFAULT_REPLY_TIMEOUT: Duration = Duration::from_secs(1);

/// A datagram received by a datagram transport, not yet handled.
pub struct DatagramJob<D: DatagramSocket> {
    pub(crate) packet: Vec<u8>,
    pub(crate) peer: D::Addr,
    pub(crate) socket: Arc<D>,
}

impl<D: DatagramSocket> std::fmt::Debug for DatagramJob<D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DatagramJob")
            .field("len", &self.packet.len())
            .field("peer", &self.peer)
            .finish_non_exhaustive()
    }
}

/// Receives the next datagram without blocking (the socket is
/// non-blocking while served).
pub(crate) fn next_datagram<D: DatagramSocket>(
    socket: &Arc<D>,
    ctx: &Context,
    scratch: &mut Vec<u8>,
) -> io::Result<Next<DatagramJob<D>, D::Addr>> {
    let limit = ctx.config.max_packet_size;
    if scratch.len() != limit + 1 {
        scratch.resize(limit + 1, 0);
    }
    match socket.recv_datagram(scratch) {
        Ok((stored, real_len, peer)) => {
            if stored > limit || real_len > limit {
                ctx.stats.inc_oversize();
                return Ok(Next::Dropped {
                    peer,
                    error: RequestError::Oversize {
                        size: real_len.max(stored),
                        limit,
                    },
                });
            }
            Ok(Next::Job(DatagramJob {
                packet: scratch[..stored].to_vec(),
                peer,
                socket: Arc::clone(socket),
            }))
        }
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(Next::Empty),
        Err(e) => Err(e),
    }
}

pub(crate) fn open_datagram<D: DatagramSocket>(
    job: DatagramJob<D>,
    ctx: &Context,
) -> DatagramRequest<D> {
    DatagramRequest::new(
        job.packet,
        job.peer,
        job.socket,
        Arc::clone(&ctx.state),
        ctx.config.write_timeout.unwrap_or(DEFAULT_REPLY_TIMEOUT),
    )
}

pub(crate) fn refuse_datagram<D: DatagramSocket>(
    job: DatagramJob<D>,
    busy: Option<&BusyHook<D::Addr>>,
) {
    if let Some(busy) = busy {
        let mut message = Vec::new();
        busy(&job.peer, &mut message);
        if !message.is_empty() {
            // Refusing happens on the serving thread: one attempt, no wait.
            let _ = job.socket.send_to_peer(&message, &job.peer);
        }
    }
}

/// The first and longest pause between send attempts when `poll(2)` says
/// the socket is writable but the send still would block.
const SEND_RETRY_MIN: Duration = Duration::from_millis(1);
const SEND_RETRY_MAX: Duration = Duration::from_millis(50);

/// Sends one datagram, waiting up to `timeout` for room if it cannot be
/// queued at once.
///
/// A UDP socket whose send buffer is full becomes writable again when there
/// is room, so `poll(2)` is the right wait. A Unix datagram socket is
/// different: when the *receiver's* queue is full, `sendto(2)` fails with
/// `EAGAIN`, yet `poll(2)` on an unconnected sender reports it writable at
/// once (Linux `unix_dgram_poll` checks the peer's queue only for connected
/// sockets). Polling alone would spin on the CPU until the deadline, so a
/// send that still would block after `poll` said ready backs off, 1 ms
/// doubling to 50 ms.
pub(crate) fn send_datagram<D: DatagramSocket>(
    socket: &D,
    data: &[u8],
    peer: &D::Addr,
    timeout: Duration,
) -> io::Result<usize> {
    let deadline = Instant::now() + timeout;
    let mut pause = Duration::ZERO;
    loop {
        match socket.send_to_peer(data, peer) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                let timed_out = || {
                    io::Error::new(
                        io::ErrorKind::TimedOut,
                        "datagram reply timed out: no room to send (socket buffer or receiver's queue full)",
                    )
                };
                if !pause.is_zero() {
                    let left = deadline.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return Err(timed_out());
                    }
                    std::thread::sleep(pause.min(left));
                }
                pause = (pause * 2).clamp(SEND_RETRY_MIN, SEND_RETRY_MAX);
                if !sys::poll_one(socket.as_fd(), sys::Interest::Write, Some(deadline))? {
                    return Err(timed_out());
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            other => return other,
        }
    }
}

impl private::Sealed for UdpSocket {}

impl DatagramSocket for UdpSocket {
    type Addr = SocketAddr;

    fn recv_datagram(&self, buf: &mut [u8]) -> io::Result<(usize, usize, SocketAddr)> {
        let (real_len, addr) = sys::recv_from_trunc(self, buf)?;
        let addr = addr.as_socket().ok_or_else(|| {
            io::Error::new(io::ErrorKind::InvalidData, "datagram from a non-IP address")
        })?;
        Ok((real_len.min(buf.len()), real_len, addr))
    }

    fn send_to_peer(&self, data: &[u8], peer: &SocketAddr) -> io::Result<usize> {
        self.send_to(data, peer)
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        UdpSocket::local_addr(self)
    }

    fn set_nonblocking(&self, nonblocking: bool) -> io::Result<()> {
        UdpSocket::set_nonblocking(self, nonblocking)
    }
}

datagram_transport!(UdpSocket);

/// Constructors for [`UdpServer`](crate::UdpServer).
impl<H> Server<UdpSocket, H>
where
    H: Service<UdpSocket>,
{
    /// Binds a UDP server to `addr` (Python's `UDPServer(addr, Handler)`).
    /// Each datagram received is one request.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::io::Write;
    /// use socketserver::{UdpRequest, UdpServer};
    ///
    /// let mut server = UdpServer::bind("127.0.0.1:0", |req: &mut UdpRequest| {
    ///     let packet = req.packet().to_vec();
    ///     req.wfile.write_all(&packet) // sent back as one datagram
    /// })?;
    /// let client = std::net::UdpSocket::bind("127.0.0.1:0")?;
    /// client.send_to(b"ping", server.local_addr()?)?;
    /// assert!(server.handle_request()?);
    /// let mut buf = [0; 16];
    /// let (n, _) = client.recv_from(&mut buf)?;
    /// assert_eq!(&buf[..n], b"ping");
    /// # std::io::Result::Ok(())
    /// ```
    ///
    /// # Errors
    ///
    /// Fails if `addr` does not resolve or cannot be bound.
    pub fn bind<A: ToSocketAddrs>(addr: A, handler: H) -> io::Result<Self> {
        Self::bind_with(addr, &BindOptions::new(), handler)
    }

    /// Binds with explicit socket options (`SO_REUSEPORT`, `IPV6_V6ONLY`).
    pub fn bind_with<A: ToSocketAddrs>(
        addr: A,
        options: &BindOptions,
        handler: H,
    ) -> io::Result<Self> {
        let socket = each_addr(addr, |addr| {
            options
                .bind_ip(addr, socket2::Type::DGRAM)
                .map(UdpSocket::from)
        })?;
        Server::new(socket, handler)
    }

    /// Serves an existing, bound socket.
    pub fn from_socket(socket: UdpSocket, handler: H) -> io::Result<Self> {
        Server::new(socket, handler)
    }
}
