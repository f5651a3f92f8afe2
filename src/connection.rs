//! A long-lived connection in message mode: what a
//! [`MessageHandler`](crate::MessageHandler) sees ([`Connection`]) and the
//! handle other threads write to it through ([`ConnWriter`]).
//!
//! The socket is non-blocking. Reading goes through [`ConnReader`], which
//! waits for more bytes only inside a message and only until the message's
//! deadline; writing goes through [`ConnWriter`], which never waits: bytes
//! the socket cannot take now are queued and sent by the reactor when the
//! socket becomes writable. A connection whose queue outgrows its limit is
//! a slow consumer and is closed, so one stuck peer never stalls the thread
//! that writes to it (a chat broadcast, say).
//!
//! This module holds no poller logic; `dispatch/reactor.rs` does.

use std::fmt;
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::net::Shutdown;
use std::os::fd::AsFd;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Instant;

use parking_lot::Mutex;

use crate::net::StreamSocket;
use crate::shutdown::{ShutdownHandle, ShutdownState, ShutdownToken};
use crate::sys;

/// The error payload of a read that timed out inside a message.
#[derive(Debug)]
pub(crate) struct MessageTimeout;

impl fmt::Display for MessageTimeout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("message not completed within the read timeout")
    }
}

impl std::error::Error for MessageTimeout {}

/// The error payload of a readiness event with nothing to read.
#[derive(Debug)]
pub(crate) struct Spurious;

impl fmt::Display for Spurious {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("no data available")
    }
}

impl std::error::Error for Spurious {}

/// The error payload of a wait inside a message cut short because the
/// server began shutting down.
#[derive(Debug)]
pub(crate) struct ShuttingDown;

impl fmt::Display for ShuttingDown {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the server is shutting down")
    }
}

impl std::error::Error for ShuttingDown {}

pub(crate) fn is_payload<E: std::error::Error + 'static>(err: &io::Error) -> bool {
    err.get_ref().is_some_and(|inner| inner.is::<E>())
}

/// Output state, shared between the connection's owner and every writer.
#[derive(Debug, Default)]
pub(crate) struct Outbound {
    /// Bytes accepted but not yet sent: `queue[sent..]`.
    pub(crate) queue: Vec<u8>,
    pub(crate) sent: usize,
    /// A worker owns the connection now (it is not parked in the poller).
    pub(crate) active: bool,
    /// The arm generation: bumped at every re-arm, carried in the poller's
    /// token, so an event from an older arm is recognised as stale.
    pub(crate) generation: u32,
    /// The current arm waits for readability.
    pub(crate) armed_read: bool,
    /// The current arm waits for writability.
    pub(crate) armed_write: bool,
    pub(crate) closed: bool,
    /// More than the outbound limit was queued: the connection is being
    /// closed as a slow consumer.
    pub(crate) doomed: bool,
}

impl Outbound {
    pub(crate) fn pending(&self) -> usize {
        self.queue.len() - self.sent
    }

    /// Sends queued bytes until the socket would block. Returns an error
    /// only for a broken connection.
    pub(crate) fn flush_to<S: StreamSocket>(&mut self, socket: &S) -> io::Result<()> {
        while self.sent < self.queue.len() {
            match socket.write_shared(&self.queue[self.sent..]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => self.sent += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        if self.sent == self.queue.len() {
            self.queue.clear();
            self.sent = 0;
        } else if self.sent > self.queue.len() / 2 {
            self.queue.drain(..self.sent);
            self.sent = 0;
        }
        Ok(())
    }
}

/// Re-arms a parked connection so the reactor flushes its queue.
pub(crate) trait Rearm: Send + Sync {
    /// Called with the outbound lock held, when bytes were queued on a
    /// parked connection whose arm does not wait for writability.
    fn rearm_for_write(&self, out: &mut Outbound, slot: u32, fd: std::os::fd::BorrowedFd<'_>);
}

/// The part of a connection shared by its owner, its writers, and the drain
/// registry.
pub(crate) struct ConnShared<S: StreamSocket> {
    pub(crate) socket: Arc<S>,
    pub(crate) out: Mutex<Outbound>,
    pub(crate) slot: u32,
    pub(crate) max_outbound: usize,
    /// Milliseconds since the reactor started, at the last read event.
    pub(crate) last_active: AtomicU64,
    pub(crate) rearm: Arc<dyn Rearm>,
}

impl<S: StreamSocket> ConnShared<S> {
    /// Queues or sends `data`, all or nothing, never waiting.
    fn send(&self, data: &[u8]) -> io::Result<()> {
        let mut out = self.out.lock();
        if out.closed || out.doomed {
            return Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "connection is closed",
            ));
        }
        let mut rest = data;
        if out.pending() == 0 {
            while !rest.is_empty() {
                match self.socket.write_shared(rest) {
                    Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                    Ok(n) => rest = &rest[n..],
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
            if rest.is_empty() {
                return Ok(());
            }
        }
        if out.pending() + rest.len() > self.max_outbound {
            out.doomed = true;
            drop(out);
            log::warn!(
                "connection {:?}: more than {} bytes waiting to be sent; closing it as a slow consumer",
                self.socket.peer_addr().ok(),
                self.max_outbound
            );
            // Wakes the connection in the poller, where its owner closes it.
            let _ = self.socket.shutdown(Shutdown::Both);
            return Err(io::Error::new(
                io::ErrorKind::WouldBlock,
                "peer is not reading: connection closed as a slow consumer",
            ));
        }
        out.queue.extend_from_slice(rest);
        if !out.active && !out.armed_write {
            self.rearm
                .rearm_for_write(&mut out, self.slot, self.socket.as_fd());
        }
        Ok(())
    }
}

/// A handle for writing to a message-mode connection from any thread — a
/// chat room's broadcast, a notifier. Cheap to clone.
///
/// Writes never block: what the socket cannot take at once is queued (up to
/// the reactor's per-connection outbound limit) and sent when the peer reads.
/// A peer that lets more than the limit pile up is disconnected as a slow
/// consumer, and writes fail from then on.
///
/// A writer keeps the connection's socket open while it lives; drop writers
/// when [`MessageHandler::disconnect`](crate::MessageHandler::disconnect)
/// reports the connection closed.
pub struct ConnWriter<S: StreamSocket> {
    shared: Arc<ConnShared<S>>,
}

impl<S: StreamSocket> Clone for ConnWriter<S> {
    fn clone(&self) -> Self {
        ConnWriter {
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<S: StreamSocket> fmt::Debug for ConnWriter<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnWriter")
            .field("socket", &self.shared.socket)
            .finish_non_exhaustive()
    }
}

impl<S: StreamSocket> ConnWriter<S> {
    pub(crate) fn new(shared: Arc<ConnShared<S>>) -> Self {
        ConnWriter { shared }
    }

    /// Sends `data` whole — now, or queued behind earlier output. Never
    /// blocks.
    ///
    /// # Errors
    ///
    /// `BrokenPipe` once the connection is closed; `WouldBlock` when this
    /// write would pass the outbound limit (the connection is then closed as
    /// a slow consumer); or the socket's error.
    pub fn send(&self, data: &[u8]) -> io::Result<()> {
        self.shared.send(data)
    }

    /// Whether the connection has been closed (or is being closed as a slow
    /// consumer).
    pub fn is_closed(&self) -> bool {
        let out = self.shared.out.lock();
        out.closed || out.doomed
    }

    /// Bytes queued and not yet sent.
    pub fn pending(&self) -> usize {
        self.shared.out.lock().pending()
    }

    /// Whether two writers write to the same connection.
    pub fn same_connection(&self, other: &ConnWriter<S>) -> bool {
        Arc::ptr_eq(&self.shared, &other.shared)
    }
}

impl<S: StreamSocket> Write for ConnWriter<S> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.shared.send(buf).map(|()| buf.len())
    }

    /// Does nothing: queued bytes are sent by the reactor as the socket
    /// drains, and waiting for that here could block a worker.
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// `rfile`'s inner reader in message mode: reads the non-blocking socket and,
/// when nothing is available inside a message, waits until the message
/// deadline.
pub struct ConnReader<S: StreamSocket> {
    shared: Arc<ConnShared<S>>,
    state: Arc<ShutdownState>,
    deadline: Option<Instant>,
    /// A wait for the rest of a message ends when shutdown begins (the
    /// handler has not yet been told of the shutdown).
    interruptible: bool,
    /// A readiness event started this call and nothing was read yet: a
    /// `WouldBlock` now means the event was stale.
    fresh_event: bool,
    eof: bool,
}

impl<S: StreamSocket> fmt::Debug for ConnReader<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnReader")
            .field("deadline", &self.deadline)
            .field("eof", &self.eof)
            .finish_non_exhaustive()
    }
}

impl<S: StreamSocket> Read for ConnReader<S> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            match self.shared.socket.read_shared(buf) {
                Ok(n) => {
                    self.fresh_event = false;
                    if n == 0 && !buf.is_empty() {
                        self.eof = true;
                    }
                    return Ok(n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if std::mem::take(&mut self.fresh_event) {
                        return Err(io::Error::new(io::ErrorKind::WouldBlock, Spurious));
                    }
                    let Some(deadline) = self.deadline else {
                        return Err(e);
                    };
                    let fd = self.shared.socket.as_fd();
                    let ready = if self.interruptible {
                        // No waker: the server has finished, so it is
                        // certainly shutting down.
                        let Some(waker) = self.state.waker() else {
                            return Err(io::Error::other(ShuttingDown));
                        };
                        let remaining = deadline.saturating_duration_since(Instant::now());
                        match sys::wait_readable(fd, &waker, Some(remaining))? {
                            sys::Ready::Io => true,
                            sys::Ready::TimedOut => false,
                            // Not `Interrupted`: std's readers retry that.
                            sys::Ready::Woken => return Err(io::Error::other(ShuttingDown)),
                        }
                    } else {
                        sys::poll_one(fd, sys::Interest::Read, Some(deadline))?
                    };
                    if !ready {
                        return Err(io::Error::new(io::ErrorKind::TimedOut, MessageTimeout));
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }
}

/// A message-mode connection, as a [`MessageHandler`](crate::MessageHandler)
/// sees it.
///
/// `rfile` and `wfile` are public fields as in
/// [`StreamRequest`](crate::StreamRequest). `rfile` keeps its buffer between
/// calls, so bytes of the next message read along with this one are not
/// lost. `wfile` is unbuffered unless the server's `wbufsize` is set, and is
/// flushed into the connection's output queue after each handler call;
/// writes never block (see [`ConnWriter`]).
pub struct Connection<S: StreamSocket> {
    /// Buffered reader over the connection.
    pub rfile: BufReader<ConnReader<S>>,
    /// Writer over the connection.
    pub wfile: BufWriter<ConnWriter<S>>,
    shared: Arc<ConnShared<S>>,
    peer: S::Addr,
    state: Arc<ShutdownState>,
}

impl<S: StreamSocket> fmt::Debug for Connection<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connection")
            .field("peer", &self.peer)
            .finish_non_exhaustive()
    }
}

impl<S: StreamSocket> Connection<S> {
    pub(crate) fn new(
        shared: Arc<ConnShared<S>>,
        peer: S::Addr,
        rbufsize: usize,
        wbufsize: usize,
        state: Arc<ShutdownState>,
    ) -> Self {
        let reader = ConnReader {
            shared: Arc::clone(&shared),
            state: Arc::clone(&state),
            deadline: None,
            interruptible: false,
            fresh_event: false,
            eof: false,
        };
        Connection {
            rfile: BufReader::with_capacity(rbufsize.max(1), reader),
            wfile: BufWriter::with_capacity(wbufsize, ConnWriter::new(Arc::clone(&shared))),
            shared,
            peer,
            state,
        }
    }

    /// The peer's address.
    pub fn peer_addr(&self) -> &S::Addr {
        &self.peer
    }

    /// The connected socket, for options this type does not wrap. It is in
    /// non-blocking mode; reading from it directly bypasses `rfile`.
    pub fn socket(&self) -> &S {
        &self.shared.socket
    }

    /// A writer other threads can use to send to this connection.
    pub fn writer(&self) -> ConnWriter<S> {
        ConnWriter::new(Arc::clone(&self.shared))
    }

    /// Whether `rfile` holds bytes not yet consumed: if not, a handler that
    /// has processed its messages should return [`Action::Keep`](crate::Action::Keep).
    pub fn has_buffered_data(&self) -> bool {
        !self.rfile.buffer().is_empty()
    }

    /// Whether the peer has closed its side (a read returned end of file).
    pub fn is_eof(&self) -> bool {
        self.rfile.get_ref().eof
    }

    /// Whether the server has begun shutting down.
    pub fn is_shutting_down(&self) -> bool {
        self.state.is_shutting_down()
    }

    /// The server's shutdown state, read-only.
    pub fn shutdown_token(&self) -> ShutdownToken {
        ShutdownToken::new(Arc::clone(&self.state))
    }

    /// A handle that can stop the server, safe to use from a handler.
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        ShutdownHandle::new(Arc::clone(&self.state))
    }

    /// Arms the reader for one handler call.
    pub(crate) fn begin_call(&mut self, deadline: Instant, fresh_event: bool, interruptible: bool) {
        let buffered = self.has_buffered_data();
        let reader = self.rfile.get_mut();
        reader.deadline = Some(deadline);
        reader.fresh_event = fresh_event && !buffered;
        reader.interruptible = interruptible;
    }

    pub(crate) fn end_call(&mut self) {
        let reader = self.rfile.get_mut();
        reader.deadline = None;
        reader.fresh_event = false;
    }
}
