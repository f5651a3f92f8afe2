//! Unix implementation of the platform boundary (see `sys/mod.rs`).

use std::io;
use std::net::Shutdown;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};

/// A descriptor that becomes readable once [`Waker::wake`] is called and
/// stays readable from then on.
///
/// It is one end of a Unix socket pair; waking shuts down the other end's
/// write side, so the read end reports end-of-file — readable — for good.
/// No byte is ever written, so there is nothing to drain and waking twice is
/// harmless.
#[derive(Debug)]
pub(crate) struct Waker {
    read_end: UnixStream,
    write_end: UnixStream,
}

impl Waker {
    pub(crate) fn new() -> io::Result<Self> {
        let (read_end, write_end) = UnixStream::pair()?;
        Ok(Self {
            read_end,
            write_end,
        })
    }

    /// Makes the waker readable. Idempotent.
    pub(crate) fn wake(&self) {
        // A second shutdown of the same end is a no-op on Linux and returns
        // ENOTCONN elsewhere; either way the read end already reports EOF.
        let _ = self.write_end.shutdown(Shutdown::Write);
    }

    pub(crate) fn fd(&self) -> BorrowedFd<'_> {
        self.read_end.as_fd()
    }
}

/// What [`wait_readable`] saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ready {
    /// The socket is readable (or has an error pending, which the next
    /// accept or receive call will report).
    Io,
    /// The waker fired.
    Woken,
    /// The timeout passed first.
    TimedOut,
}

/// Converts a remaining duration to a `poll(2)` timeout in milliseconds,
/// rounding up so a sub-millisecond remainder does not become a busy loop of
/// zero-timeout polls.
pub(super) fn poll_timeout(remaining: Option<Duration>) -> PollTimeout {
    match remaining {
        None => PollTimeout::NONE,
        Some(d) => {
            let mut ms = d.as_millis();
            if Duration::from_millis(ms as u64) < d {
                ms += 1;
            }
            PollTimeout::try_from(ms.min(i32::MAX as u128)).unwrap_or(PollTimeout::MAX)
        }
    }
}

/// Blocks until `fd` is readable, `waker` fires, or `timeout` passes.
///
/// The waker wins a tie: once shutdown is requested, no further request is
/// taken even if one is pending. `EINTR` is retried with the remaining time.
pub(crate) fn wait_readable(
    fd: BorrowedFd<'_>,
    waker: &Waker,
    timeout: Option<Duration>,
) -> io::Result<Ready> {
    match wait_readable_or(fd, None, waker, timeout)? {
        ReadyOr::Ready(ready) => Ok(ready),
        ReadyOr::Extra => unreachable!("no extra descriptor was polled"),
    }
}

/// What [`wait_readable_or`] saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ReadyOr {
    /// What [`wait_readable`] would have seen.
    Ready(Ready),
    /// The extra descriptor is readable.
    Extra,
}

/// [`wait_readable`], also waking when `extra` (if any) is readable: a
/// dispatcher's own event source, such as forking dispatch's "a child
/// exited" pipe. The socket wins over `extra`, the waker over both.
pub(crate) fn wait_readable_or(
    fd: BorrowedFd<'_>,
    extra: Option<BorrowedFd<'_>>,
    waker: &Waker,
    timeout: Option<Duration>,
) -> io::Result<ReadyOr> {
    let deadline = timeout.map(|t| Instant::now() + t);
    loop {
        let remaining = deadline.map(|d| d.saturating_duration_since(Instant::now()));
        let mut fds = [
            PollFd::new(waker.fd(), PollFlags::POLLIN),
            PollFd::new(fd, PollFlags::POLLIN),
            PollFd::new(extra.unwrap_or(fd), PollFlags::POLLIN),
        ];
        let used = if extra.is_some() { 3 } else { 2 };
        match poll(&mut fds[..used], poll_timeout(remaining)) {
            Ok(0) => {
                if deadline.is_none_or(|d| Instant::now() >= d) {
                    return Ok(ReadyOr::Ready(Ready::TimedOut));
                }
            }
            Ok(_) => {
                if fds[0].any().unwrap_or(false) {
                    return Ok(ReadyOr::Ready(Ready::Woken));
                }
                if fds[1].any().unwrap_or(false) {
                    return Ok(ReadyOr::Ready(Ready::Io));
                }
                if used == 3 && fds[2].any().unwrap_or(false) {
                    return Ok(ReadyOr::Extra);
                }
            }
            Err(Errno::EINTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
}

/// Sleeps for `timeout` unless the waker fires first; returns `true` if it
/// fired. Used to back off after a transient accept error without delaying
/// shutdown.
pub(crate) fn sleep_unless_woken(waker: &Waker, timeout: Duration) -> io::Result<bool> {
    let deadline = Instant::now() + timeout;
    loop {
        let remaining = deadline.saturating_duration_since(Instant::now());
        let mut fds = [PollFd::new(waker.fd(), PollFlags::POLLIN)];
        match poll(&mut fds, poll_timeout(Some(remaining))) {
            Ok(0) if Instant::now() >= deadline => return Ok(false),
            Ok(0) => {}
            Ok(_) => return Ok(true),
            Err(Errno::EINTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
}

/// Stops a listening socket accepting connections without closing it, so a
/// thread other than the one serving it can refuse new connections at once.
/// Returns whether the platform could.
///
/// On Linux, `shutdown(2)` with `SHUT_RD` on a listening socket takes it
/// out of the listening state (the kernel's `inet_shutdown` calls this "a
/// temporary solution for missing close() in multithreaded environment"):
/// new TCP connections are refused, those still in the backlog are reset,
/// and `accept(2)` fails with `EINVAL`. On a Unix-domain listener new
/// connects are refused. Other systems reject `shutdown(2)` on a listener
/// (`ENOTCONN`), so there the listener only stops when it is closed.
pub(crate) fn stop_listening(fd: BorrowedFd<'_>) -> io::Result<bool> {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    {
        socket2::SockRef::from(&fd).shutdown(Shutdown::Read)?;
        Ok(true)
    }
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    {
        let _ = fd;
        Ok(false)
    }
}

/// Whether `fd` has room to write now (`poll(2)` with a zero timeout). An
/// error or hang-up counts as writable: a write would not block.
pub(crate) fn is_writable(fd: BorrowedFd<'_>) -> bool {
    let mut fds = [PollFd::new(fd, PollFlags::POLLOUT)];
    match poll(&mut fds, PollTimeout::ZERO) {
        Ok(n) => n > 0,
        Err(_) => true,
    }
}

/// Readiness a caller of [`poll_one`] waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(
    dead_code,
    reason = "Read is for deadline-bounded reads of the keep-alive reactor"
)]
pub(crate) enum Interest {
    Read,
    Write,
}

/// Waits until `fd` is ready for `interest` or `deadline` passes. Returns
/// `Ok(false)` on timeout. Error and hang-up conditions count as ready: the
/// following read or write reports them.
pub(crate) fn poll_one(
    fd: BorrowedFd<'_>,
    interest: Interest,
    deadline: Option<Instant>,
) -> io::Result<bool> {
    let flags = match interest {
        Interest::Read => PollFlags::POLLIN,
        Interest::Write => PollFlags::POLLOUT,
    };
    loop {
        let remaining = deadline.map(|d| d.saturating_duration_since(Instant::now()));
        if remaining == Some(Duration::ZERO) {
            return Ok(false);
        }
        let mut fds = [PollFd::new(fd, flags)];
        match poll(&mut fds, poll_timeout(remaining)) {
            Ok(0) => {}
            Ok(_) => return Ok(true),
            Err(Errno::EINTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
}

/// Reads and throws away input that has already arrived on a stream socket,
/// without blocking, up to `limit` bytes; stops at end of file.
///
/// Closing a TCP socket whose receive queue is not empty sends a reset
/// instead of a FIN, and the peer may then lose the last reply still in
/// flight to it (RFC 2525, section 2.17; Apache's "lingering close"). A
/// server that stops reading before its client stops writing calls this
/// just before closing.
pub(crate) fn discard_pending_input(fd: BorrowedFd<'_>, limit: usize) {
    use nix::sys::socket::{MsgFlags, recv};
    use std::os::fd::AsRawFd;
    let mut buf = [0u8; 4096];
    let mut total = 0;
    while total < limit {
        match recv(fd.as_raw_fd(), &mut buf, MsgFlags::MSG_DONTWAIT) {
            Ok(0) => return,
            Ok(n) => total += n,
            Err(Errno::EINTR) => {}
            Err(_) => return,
        }
    }
}

/// How the serving loop should treat an error from `accept(2)` or
/// `recvfrom(2)`, following the `ERRORS` section of accept(2) and the
/// `# Errors` section of std's `TcpListener::accept`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AcceptErrorKind {
    /// The connection died in the backlog or the call was interrupted: try
    /// again at once. accept(2): "Linux accept() passes already-pending
    /// network errors on the new socket as an error code ... the application
    /// should treat them like EAGAIN by retrying" (ENETDOWN, EPROTO,
    /// ENOPROTOOPT, EHOSTDOWN, ENONET, EHOSTUNREACH, EOPNOTSUPP, ENETUNREACH);
    /// ECONNABORTED and EINTR likewise. For datagram sockets, ECONNREFUSED
    /// is an ICMP error from an earlier reply and says nothing about the
    /// socket.
    Retry,
    /// The process or system is out of a resource (descriptors, buffers,
    /// memory): log, back off, and try again later. Retrying at once would
    /// spin, because the pending connection keeps the listener readable.
    Backoff,
    /// The listening socket itself is broken (EBADF, EINVAL, ENOTSOCK, ...):
    /// stop serving and report the error.
    Fatal,
}

pub(crate) fn classify_accept_error(err: &io::Error) -> AcceptErrorKind {
    if err.kind() == io::ErrorKind::Interrupted {
        return AcceptErrorKind::Retry;
    }
    let Some(code) = err.raw_os_error() else {
        return AcceptErrorKind::Fatal;
    };
    match Errno::from_raw(code) {
        Errno::ECONNABORTED
        | Errno::EINTR
        | Errno::EPROTO
        | Errno::ENETDOWN
        | Errno::ENOPROTOOPT
        | Errno::EHOSTDOWN
        | Errno::EHOSTUNREACH
        | Errno::EOPNOTSUPP
        | Errno::ENETUNREACH
        | Errno::ECONNRESET
        | Errno::ECONNREFUSED
        | Errno::ETIMEDOUT
        | Errno::EPERM => AcceptErrorKind::Retry,
        #[cfg(any(target_os = "linux", target_os = "android"))]
        Errno::ENONET => AcceptErrorKind::Retry,
        Errno::EMFILE | Errno::ENFILE | Errno::ENOBUFS | Errno::ENOMEM => AcceptErrorKind::Backoff,
        _ => AcceptErrorKind::Fatal,
    }
}

/// Whether a non-blocking `connect(2)` failed with `EINPROGRESS` (std has
/// no stable `ErrorKind` for it yet).
pub(crate) fn is_in_progress(err: &io::Error) -> bool {
    err.raw_os_error() == Some(Errno::EINPROGRESS as i32)
}

/// `recvfrom(2)` on a datagram socket, asking the kernel for the datagram's
/// real length where it can tell (`MSG_TRUNC`, Linux): returns that length,
/// which exceeds `buf.len()` when the datagram was truncated, and the sender.
pub(crate) fn recv_from_trunc<S: AsFd>(
    socket: &S,
    buf: &mut [u8],
) -> io::Result<(usize, socket2::SockAddr)> {
    let socket = socket2::SockRef::from(socket);
    #[cfg(any(target_os = "linux", target_os = "android"))]
    let flags = nix::sys::socket::MsgFlags::MSG_TRUNC.bits();
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    let flags = 0;
    // SAFETY: `[u8]` and `[MaybeUninit<u8>]` have the same layout, and every
    // byte of `buf` is already initialised; recvfrom(2) only stores
    // initialised bytes into it, so no uninitialised byte can become visible
    // through `buf` afterwards.
    let uninit = unsafe { &mut *(buf as *mut [u8] as *mut [std::mem::MaybeUninit<u8>]) };
    socket.recv_from_with_flags(uninit, flags)
}

/// Readiness notification for many sockets, shared by several threads: the
/// keep-alive reactor's poller (epoll).
///
/// Every connection is registered *one-shot*: an event disarms it, so
/// exactly one thread learns that a connection is ready, and that thread
/// re-arms it when done (`modify`). Many threads may block in
/// [`Poller::wait`] at once; Linux wakes one of them per ready event
/// (epoll waiters queue exclusively), which is the leader/follower pattern
/// without a leader lock.
#[cfg(any(target_os = "linux", target_os = "android"))]
#[derive(Debug)]
pub(crate) struct Poller {
    epoll: nix::sys::epoll::Epoll,
}

/// What a registration waits for.
#[cfg(any(target_os = "linux", target_os = "android"))]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Want {
    pub(crate) read: bool,
    pub(crate) write: bool,
}

/// One readiness event.
#[cfg(any(target_os = "linux", target_os = "android"))]
#[derive(Debug, Clone, Copy)]
pub(crate) struct PollEvent {
    pub(crate) token: u64,
    pub(crate) readable: bool,
    pub(crate) writable: bool,
}

/// A buffer of events for [`Poller::wait`].
#[cfg(any(target_os = "linux", target_os = "android"))]
pub(crate) struct PollEvents(Vec<nix::sys::epoll::EpollEvent>, usize);

#[cfg(any(target_os = "linux", target_os = "android"))]
impl PollEvents {
    pub(crate) fn with_capacity(n: usize) -> Self {
        PollEvents(vec![nix::sys::epoll::EpollEvent::empty(); n.max(1)], 0)
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = PollEvent> + '_ {
        use nix::sys::epoll::EpollFlags as F;
        self.0[..self.1].iter().map(|e| {
            let flags = e.events();
            // Errors and hang-ups count as both: the next read or write
            // reports them.
            let broken = flags.intersects(F::EPOLLERR | F::EPOLLHUP);
            PollEvent {
                token: e.data(),
                readable: broken || flags.intersects(F::EPOLLIN | F::EPOLLRDHUP),
                writable: broken || flags.contains(F::EPOLLOUT),
            }
        })
    }
}

#[cfg(any(target_os = "linux", target_os = "android"))]
impl Poller {
    pub(crate) fn new() -> io::Result<Self> {
        use nix::sys::epoll::{Epoll, EpollCreateFlags};
        Ok(Poller {
            epoll: Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC)?,
        })
    }

    fn flags(want: Want, oneshot: bool) -> nix::sys::epoll::EpollFlags {
        use nix::sys::epoll::EpollFlags as F;
        let mut flags = F::empty();
        if want.read {
            flags |= F::EPOLLIN | F::EPOLLRDHUP;
        }
        if want.write {
            flags |= F::EPOLLOUT;
        }
        if oneshot {
            flags |= F::EPOLLONESHOT;
        }
        flags
    }

    /// Registers `fd`: one-shot, or level-triggered for a descriptor every
    /// waiter should see (the reactor's exit signal).
    pub(crate) fn add(
        &self,
        fd: BorrowedFd<'_>,
        token: u64,
        want: Want,
        oneshot: bool,
    ) -> io::Result<()> {
        let event = nix::sys::epoll::EpollEvent::new(Self::flags(want, oneshot), token);
        Ok(self.epoll.add(fd, event)?)
    }

    /// Re-arms a one-shot registration with a new token and interest.
    pub(crate) fn rearm(&self, fd: BorrowedFd<'_>, token: u64, want: Want) -> io::Result<()> {
        let mut event = nix::sys::epoll::EpollEvent::new(Self::flags(want, true), token);
        Ok(self.epoll.modify(fd, &mut event)?)
    }

    pub(crate) fn delete(&self, fd: BorrowedFd<'_>) -> io::Result<()> {
        Ok(self.epoll.delete(fd)?)
    }

    /// Waits for events; `EINTR` returns zero events.
    pub(crate) fn wait(
        &self,
        events: &mut PollEvents,
        timeout: Option<Duration>,
    ) -> io::Result<usize> {
        match self.epoll.wait(&mut events.0, poll_timeout(timeout)) {
            Ok(n) => {
                events.1 = n;
                Ok(n)
            }
            Err(Errno::EINTR) => {
                events.1 = 0;
                Ok(0)
            }
            Err(e) => Err(e.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waker_is_sticky_and_idempotent() {
        let waker = Waker::new().unwrap();
        assert!(!sleep_unless_woken(&waker, Duration::from_millis(1)).unwrap());
        waker.wake();
        waker.wake();
        for _ in 0..3 {
            assert!(sleep_unless_woken(&waker, Duration::from_secs(5)).unwrap());
        }
    }

    #[test]
    fn poll_timeout_rounds_up() {
        assert_eq!(
            poll_timeout(Some(Duration::from_micros(10))).as_millis(),
            Some(1)
        );
        assert_eq!(poll_timeout(Some(Duration::ZERO)).as_millis(), Some(0));
        assert!(poll_timeout(None).is_none());
    }

    #[test]
    fn resource_exhaustion_backs_off_and_aborts_retry() {
        let emfile = io::Error::from_raw_os_error(Errno::EMFILE as i32);
        let aborted = io::Error::from_raw_os_error(Errno::ECONNABORTED as i32);
        let badf = io::Error::from_raw_os_error(Errno::EBADF as i32);
        assert_eq!(classify_accept_error(&emfile), AcceptErrorKind::Backoff);
        assert_eq!(classify_accept_error(&aborted), AcceptErrorKind::Retry);
        assert_eq!(classify_accept_error(&badf), AcceptErrorKind::Fatal);
    }
}
