//! [`Dispatch::Reactor`](crate::Dispatch::Reactor): keep-alive parking for
//! message-mode handlers ([`MessageHandler`]). Idle connections wait in an
//! epoll poller and hold no thread; a worker serves a connection only while
//! it has data.
//!
//! Design, for speed on small machines:
//!
//! - **No dispatcher thread.** All N workers wait in the same poller
//!   themselves (leader/follower without a leader lock: Linux wakes one
//!   epoll waiter per event). The thread that learns a connection is
//!   readable is the one that serves it — no hand-off, no extra wake-up per
//!   message.
//! - **One-shot readiness.** Every connection is registered `EPOLLONESHOT`:
//!   an event disarms it, so exactly one worker owns it until that worker
//!   re-arms it (`park`). Each arm carries a generation in the event token;
//!   an event from an older arm is stale and ignored. Ownership is the
//!   `active` flag under the connection's output lock, so writers on other
//!   threads know whether they may re-arm a parked connection for output.
//! - **Writes never block a worker or the poller.** Output goes through
//!   [`ConnWriter`](crate::ConnWriter): sent at once if the socket takes it,
//!   otherwise queued and flushed by whichever worker sees the socket
//!   writable. A peer whose queue passes the outbound limit is closed as a
//!   slow consumer.
//! - **New connections are handed over by the kernel.** The serving thread
//!   accepts, then registers the socket for *writability* — true at once —
//!   so some worker picks it up and runs `connect` there.
//!
//! Timeouts: a per-message read deadline is enforced by the connection's
//! reader (a client trickling a message cannot hold a worker longer); the
//! idle timeout by a sweep that worker 0 runs between waits.
//!
//! Shutdown: the serving loop stops accepting; every parked connection is
//! woken once for [`MessageHandler::shutting_down`]; connections then stay
//! served until they close or the drain deadline shuts their sockets down;
//! then the workers exit.

use std::io::{self, Write};
use std::marker::PhantomData;
use std::net::Shutdown;
use std::os::fd::AsFd;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Select, Sender};
use parking_lot::{Condvar, Mutex, RwLock};

use super::{LiveCount, Overflow, Reactor, give_up_at, join_all, send_until_forced};
use crate::connection::{
    ConnShared, Connection, MessageTimeout, Outbound, Rearm, ShuttingDown, Spurious, is_payload,
};
use crate::error::RequestError;
use crate::handler::{Action, CloseReason, MessageHandler, Messages};
use crate::net::{StreamJob, StreamSocket, sealed};
use crate::server::Shared;
use crate::shutdown::{Registration, ShutdownState};
use crate::sys::{PollEvent, PollEvents, Poller, Waker, Want};

/// The token of the reactor's exit signal.
const EXIT_TOKEN: u64 = u64::MAX;
/// Events a single worker takes per wait: enough to amortise `epoll_wait`
/// under load.
const EVENTS_PER_WAIT: usize = 16;
/// How many times in a row a handler is called for data it left buffered
/// before the connection yields to others.
const MAX_ROUNDS: usize = 16;
/// While more than this much output waits to be sent, the connection's own
/// input is not read: a peer that sends without reading gets TCP
/// backpressure, as with a blocking handler, instead of an ever-growing
/// queue.
const PAUSE_READING_ABOVE: usize = 64 * 1024;

fn token(slot: u32, generation: u32) -> u64 {
    (u64::from(slot) << 32) | u64::from(generation)
}

/// A running reactor, as the server's dispatcher sees it.
pub trait ReactorDispatch<J>: Send {
    fn dispatch(&mut self, job: J);
    fn drain(self: Box<Self>) -> u64;
}

/// One connection in the reactor.
struct Entry<S: StreamSocket, St> {
    shared: Arc<ConnShared<S>>,
    io: Mutex<Io<S, St>>,
    _registration: Registration,
    /// Held for the connection's life when `max_connections` is set.
    _slot: Option<SlotGuard>,
}

struct Io<S: StreamSocket, St> {
    conn: Connection<S>,
    /// `None` until `connect` ran.
    state: Option<St>,
    told_shutdown: bool,
    /// Set once the connection is closing but still has output to send:
    /// it then waits for writability only, and closes when the queue is
    /// empty (or at the idle timeout or drain deadline, whichever is first).
    closing: bool,
}

/// A place under `max_connections`, given back on drop.
struct SlotGuard(Receiver<()>);

impl Drop for SlotGuard {
    fn drop(&mut self) {
        let _ = self.0.try_recv();
    }
}

struct Slab<E> {
    entries: Vec<Option<Arc<E>>>,
    /// The generation the next connection in each slot starts from, so a
    /// stale event for a closed connection cannot match its successor.
    generations: Vec<u32>,
    free: Vec<u32>,
    len: usize,
}

impl<E> Default for Slab<E> {
    fn default() -> Self {
        Slab {
            entries: Vec::new(),
            generations: Vec::new(),
            free: Vec::new(),
            len: 0,
        }
    }
}

/// Re-arms parked connections for output on behalf of writers.
struct Rearmer {
    poller: Arc<Poller>,
}

impl Rearm for Rearmer {
    fn rearm_for_write(&self, out: &mut Outbound, slot: u32, fd: std::os::fd::BorrowedFd<'_>) {
        out.generation = out.generation.wrapping_add(1);
        out.armed_write = true;
        let want = Want {
            read: out.armed_read,
            write: true,
        };
        if let Err(e) = self.poller.rearm(fd, token(slot, out.generation), want) {
            log::error!("cannot re-arm a connection for output: {e}");
        }
    }
}

/// What serving an event decided.
enum Outcome {
    /// Park; `again` asks for an immediate new event (data left buffered).
    Keep {
        again: bool,
    },
    Close(CloseReason),
}

/// What a handler call ended with, other than success.
enum CallError {
    Io(io::Error),
    Panic(RequestError),
}

struct Core<T, S, M>
where
    T: sealed::Transport<Job = StreamJob<S>, Addr = <S as StreamSocket>::Addr>,
    S: StreamSocket,
    M: MessageHandler<S>,
{
    shared: Arc<Shared<T, Messages<M>>>,
    config: Reactor,
    poller: Arc<Poller>,
    rearm: Arc<dyn Rearm>,
    slab: RwLock<Slab<Entry<S, M::State>>>,
    /// Open connections, for the drain.
    open: Mutex<usize>,
    none_open: Condvar,
    exit: Waker,
    epoch: Instant,
    next_sweep: Mutex<Instant>,
}

impl<T, S, M> Core<T, S, M>
where
    T: sealed::Transport<Job = StreamJob<S>, Addr = <S as StreamSocket>::Addr>,
    S: StreamSocket,
    M: MessageHandler<S>,
{
    fn state(&self) -> &ShutdownState {
        &self.shared.ctx.state
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    fn get(&self, slot: u32) -> Option<Arc<Entry<S, M::State>>> {
        self.slab
            .read()
            .entries
            .get(slot as usize)
            .and_then(|e| e.clone())
    }

    fn worker(&self, index: usize) {
        // One worker takes events in batches (nobody else could serve them
        // sooner). With several, each takes one event per wait: a worker
        // whose handler blocks — on a lock, a database, the rest of a
        // message — must not sit on ready connections another worker could
        // serve. (Linux wakes one waiter per event, so the cost is one
        // `epoll_wait` per event, not a thundering herd.)
        let batch = if self.config.workers == 1 {
            EVENTS_PER_WAIT
        } else {
            1
        };
        let mut events = PollEvents::with_capacity(batch);
        loop {
            // Worker 0 also runs the idle sweep, so it alone wakes on a timer.
            let timeout = match (index, self.config.idle_timeout) {
                (0, Some(_)) => Some(
                    self.next_sweep
                        .lock()
                        .saturating_duration_since(Instant::now()),
                ),
                _ => None,
            };
            if let Err(e) = self.poller.wait(&mut events, timeout) {
                log::error!("reactor wait failed: {e}");
                thread::sleep(Duration::from_millis(10));
                continue;
            }
            for event in events.iter() {
                if event.token == EXIT_TOKEN {
                    return;
                }
                self.handle_event(event);
            }
            if index == 0 && self.config.idle_timeout.is_some() {
                self.maybe_sweep();
            }
        }
    }

    fn handle_event(&self, event: PollEvent) {
        let slot = (event.token >> 32) as u32;
        let generation = event.token as u32;
        let Some(entry) = self.get(slot) else {
            return;
        };
        let mut broken = None;
        {
            let mut out = entry.shared.out.lock();
            if out.closed || out.active || out.generation != generation {
                return; // stale, or another worker owns it and will re-arm
            }
            out.active = true;
            out.armed_write = false;
            if event.writable
                && out.pending() > 0
                && let Err(e) = out.flush_to(&*entry.shared.socket)
            {
                broken = Some(e);
            }
        }
        let mut io = entry.io.lock();
        if io.closing {
            // Lingering to send the last output.
            let pending = entry.shared.out.lock().pending();
            if broken.is_none() && pending > 0 && !self.state().is_forced() {
                self.park(&entry, &mut io, false);
            } else {
                io.closing = false;
                self.finish_close(&entry);
            }
            return;
        }
        let outcome = match broken {
            Some(e) => Outcome::Close(classify(e, &entry.shared)),
            None => self.serve(&entry, &mut io, event),
        };
        match outcome {
            Outcome::Keep { again } => self.park(&entry, &mut io, again),
            Outcome::Close(reason) => self.close(&entry, &mut io, reason),
        }
    }

    /// Runs a handler callback, catching panics.
    fn call<R>(&self, f: impl FnOnce() -> io::Result<R>) -> Result<R, CallError> {
        match catch_unwind(AssertUnwindSafe(f)) {
            Ok(Ok(r)) => Ok(r),
            Ok(Err(e)) => Err(CallError::Io(e)),
            Err(payload) => Err(CallError::Panic(RequestError::from_panic(payload))),
        }
    }

    fn serve(
        &self,
        entry: &Entry<S, M::State>,
        io: &mut Io<S, M::State>,
        event: PollEvent,
    ) -> Outcome {
        if self.state().is_forced() {
            return Outcome::Close(CloseReason::Shutdown);
        }
        if entry.shared.out.lock().doomed {
            return Outcome::Close(CloseReason::SlowConsumer);
        }
        let handler = &self.shared.handler.0;
        let stats = &self.shared.ctx.stats;
        let deadline = Instant::now() + self.config.read_timeout;
        let Io {
            conn,
            state,
            told_shutdown,
            ..
        } = io;

        let Some(state) = state else {
            // A new connection: the registration's writability event.
            conn.begin_call(deadline, false, false);
            let connected = self.call(|| handler.connect(conn));
            conn.end_call();
            entry
                .shared
                .last_active
                .store(self.now_ms(), Ordering::Relaxed);
            return match connected.and_then(|st| flush(conn).map(|()| st)) {
                Ok(st) => {
                    io.state = Some(st);
                    Outcome::Keep { again: false }
                }
                Err(e) => Outcome::Close(self.reason(e, &entry.shared)),
            };
        };

        if !*told_shutdown && self.state().is_shutting_down() {
            *told_shutdown = true;
            conn.begin_call(deadline, false, false);
            let decided = self.call(|| handler.shutting_down(conn, state));
            conn.end_call();
            match decided.and_then(|a| flush(conn).map(|()| a)) {
                Ok(Action::Keep) => {}
                Ok(Action::Close) => return Outcome::Close(CloseReason::Handler),
                Err(e) => return Outcome::Close(self.reason(e, &entry.shared)),
            }
        }

        if !(event.readable || conn.has_buffered_data()) {
            return Outcome::Keep { again: false };
        }
        entry
            .shared
            .last_active
            .store(self.now_ms(), Ordering::Relaxed);
        for round in 0..MAX_ROUNDS {
            conn.begin_call(deadline, round == 0 && event.readable, !*told_shutdown);
            stats.inc_active();
            let result = self.call(|| handler.ready(conn, state));
            stats.dec_active();
            conn.end_call();
            match result.and_then(|a| flush(conn).map(|()| a)) {
                Ok(Action::Keep) => {
                    if conn.is_eof() {
                        return Outcome::Close(CloseReason::PeerClosed);
                    }
                    if !conn.has_buffered_data() {
                        return Outcome::Keep { again: false };
                    }
                }
                Ok(Action::Close) if conn.is_eof() => {
                    return Outcome::Close(CloseReason::PeerClosed);
                }
                Ok(Action::Close) => return Outcome::Close(CloseReason::Handler),
                Err(CallError::Io(e)) if is_payload::<Spurious>(&e) => {
                    return Outcome::Keep { again: false };
                }
                Err(e) => return Outcome::Close(self.reason(e, &entry.shared)),
            }
        }
        Outcome::Keep { again: true }
    }

    fn reason(&self, error: CallError, shared: &ConnShared<S>) -> CloseReason {
        match error {
            CallError::Io(e) => classify(e, shared),
            CallError::Panic(p) => CloseReason::Error(p),
        }
    }

    /// Re-arms the connection and gives up ownership.
    fn park(&self, entry: &Entry<S, M::State>, io: &mut Io<S, M::State>, again: bool) {
        let result = {
            let mut out = entry.shared.out.lock();
            out.active = false;
            out.generation = out.generation.wrapping_add(1);
            // A handler not yet told of a shutdown that began while it ran
            // (the drain's wake-up skipped it, it was busy) is called again
            // at once: writability is immediate.
            let untold = io.state.is_some() && !io.told_shutdown && self.state().is_shutting_down();
            out.armed_write = again || untold || out.pending() > 0;
            out.armed_read = !io.closing && out.pending() <= PAUSE_READING_ABOVE;
            let want = Want {
                read: out.armed_read,
                write: out.armed_write,
            };
            let result = self.poller.rearm(
                entry.shared.socket.as_fd(),
                token(entry.shared.slot, out.generation),
                want,
            );
            if result.is_err() {
                out.active = true; // keep ownership to close it below
            }
            result
        };
        if let Err(e) = result {
            log::error!("cannot re-arm a connection: {e}");
            self.close(entry, io, CloseReason::Error(RequestError::Io(e)));
        }
    }

    /// Begins closing a connection this worker owns: tells the handler, then
    /// sends what output it can; if some must wait for the peer to read,
    /// lingers (parked for writability) and closes once it is sent.
    fn close(&self, entry: &Entry<S, M::State>, io: &mut Io<S, M::State>, reason: CloseReason) {
        let shared = &entry.shared;
        self.account(io, &reason);
        if let Some(state) = io.state.take() {
            let handler = &self.shared.handler.0;
            let conn = &mut io.conn;
            if catch_unwind(AssertUnwindSafe(|| {
                handler.disconnect(conn, state, &reason)
            }))
            .is_err()
            {
                log::error!("disconnect handler panicked for {:?}", conn.peer_addr());
            }
            let _ = io.conn.wfile.flush();
        }
        let graceful = !matches!(reason, CloseReason::SlowConsumer | CloseReason::Error(_));
        let pending = {
            let mut out = shared.out.lock();
            let _ = out.flush_to(&*shared.socket);
            out.pending()
        };
        if graceful && pending > 0 && !self.state().is_forced() {
            // No more input is wanted: say so to the peer now.
            let _ = shared.socket.shutdown(Shutdown::Read);
            io.closing = true;
            self.park(entry, io, false);
            return;
        }
        self.finish_close(entry);
    }

    /// Counts a closing connection and reports errors, before the handler
    /// hears of it.
    fn account(&self, io: &Io<S, M::State>, reason: &CloseReason) {
        let stats = &self.shared.ctx.stats;
        match reason {
            CloseReason::Handler | CloseReason::PeerClosed => stats.inc_completed(),
            CloseReason::IdleTimeout | CloseReason::ReadTimeout => {
                stats.inc_timeouts();
                log::debug!("closing {:?}: {reason}", io.conn.peer_addr());
            }
            CloseReason::SlowConsumer => stats.inc_errors(),
            CloseReason::Shutdown => {}
            CloseReason::Error(e) => {
                stats.inc_errors();
                if e.is_panic() {
                    stats.inc_panics();
                }
                self.shared.report_error(io.conn.peer_addr(), e);
            }
        }
    }

    /// Unregisters and releases a connection this worker owns.
    fn finish_close(&self, entry: &Entry<S, M::State>) {
        let shared = &entry.shared;
        let ctx = &self.shared.ctx;
        {
            let mut out = shared.out.lock();
            out.closed = true;
            out.queue = Vec::new();
            out.sent = 0;
        }
        let _ = self.poller.delete(shared.socket.as_fd());
        // Unread input would turn the close into a reset that can destroy
        // the last reply in flight (see `discard_pending_input`).
        crate::sys::discard_pending_input(shared.socket.as_fd(), crate::net::DISCARD_ON_CLOSE);
        let _ = shared.socket.shutdown(Shutdown::Write);
        {
            let mut slab = self.slab.write();
            let slot = shared.slot as usize;
            slab.entries[slot] = None;
            slab.generations[slot] = shared.out.lock().generation.wrapping_add(1);
            slab.free.push(shared.slot);
            slab.len -= 1;
        }
        let stats = &ctx.stats;
        let state = &ctx.state;
        if state.is_shutting_down() {
            if state.is_forced() {
                stats.inc_forced();
            } else {
                stats.inc_drained();
            }
        }
        let mut open = self.open.lock();
        *open -= 1;
        if *open == 0 {
            self.none_open.notify_all();
        }
    }

    /// Closes connections idle past the idle timeout (worker 0, between
    /// waits).
    fn maybe_sweep(&self) {
        let Some(idle) = self.config.idle_timeout else {
            return;
        };
        {
            let mut next = self.next_sweep.lock();
            let now = Instant::now();
            if now < *next {
                return;
            }
            *next = now + sweep_interval(idle);
        }
        let now = self.now_ms();
        let limit = idle.as_millis() as u64;
        let candidates: Vec<_> = self
            .slab
            .read()
            .entries
            .iter()
            .flatten()
            .filter(|e| now.saturating_sub(e.shared.last_active.load(Ordering::Relaxed)) >= limit)
            .cloned()
            .collect();
        for entry in candidates {
            {
                let mut out = entry.shared.out.lock();
                if out.active || out.closed {
                    continue;
                }
                out.active = true; // claim it from the poller
            }
            let mut io = entry.io.lock();
            if std::mem::take(&mut io.closing) {
                // Lingering output the peer never read.
                self.finish_close(&entry);
            } else {
                self.close(&entry, &mut io, CloseReason::IdleTimeout);
            }
        }
    }
}

impl<T, S, M> Core<T, S, M>
where
    T: sealed::Transport<Job = StreamJob<S>, Addr = <S as StreamSocket>::Addr>,
    S: StreamSocket,
    M: MessageHandler<S>,
{
    /// Logs the connections still open when the drain is forced.
    fn describe_open(&self, count: usize) {
        let entries: Vec<_> = self.slab.read().entries.iter().flatten().cloned().collect();
        let described: Vec<String> = entries
            .iter()
            .take(10)
            .map(|entry| {
                let out = entry.shared.out.lock();
                let doing = if out.active { "in a handler" } else { "parked" };
                format!(
                    "{:?} ({doing}, {} bytes unsent)",
                    entry.shared.socket.peer_addr().ok(),
                    out.pending()
                )
            })
            .collect();
        log::warn!(
            "drain deadline: {count} connection(s) still open: {}{}",
            described.join(", "),
            if entries.len() > 10 { ", ..." } else { "" }
        );
    }
}

/// How often the idle sweep runs: a quarter of the idle timeout, between
/// 10 ms and one second.
fn sweep_interval(idle: Duration) -> Duration {
    (idle / 4).clamp(Duration::from_millis(10), Duration::from_secs(1))
}

fn flush<S: StreamSocket>(conn: &mut Connection<S>) -> Result<(), CallError> {
    conn.wfile.flush().map_err(CallError::Io)
}

/// Sorts a connection's I/O error into a close reason.
fn classify<S: StreamSocket>(e: io::Error, shared: &ConnShared<S>) -> CloseReason {
    if shared.out.lock().doomed {
        return CloseReason::SlowConsumer;
    }
    if is_payload::<MessageTimeout>(&e) {
        return CloseReason::ReadTimeout;
    }
    if is_payload::<ShuttingDown>(&e) {
        return CloseReason::Shutdown;
    }
    match e.kind() {
        io::ErrorKind::UnexpectedEof
        | io::ErrorKind::ConnectionReset
        | io::ErrorKind::ConnectionAborted
        | io::ErrorKind::BrokenPipe => CloseReason::PeerClosed,
        _ => CloseReason::Error(RequestError::Io(e)),
    }
}

/// The running reactor.
pub(crate) struct ReactorDispatcher<T, S, M>
where
    T: sealed::Transport<Job = StreamJob<S>, Addr = <S as StreamSocket>::Addr>,
    S: StreamSocket,
    M: MessageHandler<S>,
{
    core: Arc<Core<T, S, M>>,
    workers: Vec<JoinHandle<()>>,
    live: LiveCount,
    slots: Option<(Sender<()>, Receiver<()>)>,
    _marker: PhantomData<fn() -> T>,
}

impl<T, S, M> ReactorDispatcher<T, S, M>
where
    T: sealed::Transport<Job = StreamJob<S>, Addr = <S as StreamSocket>::Addr>,
    S: StreamSocket,
    M: MessageHandler<S>,
    Messages<M>: crate::server::service::Service<T>,
{
    pub(crate) fn start(
        shared: &Arc<Shared<T, Messages<M>>>,
        config: &Reactor,
    ) -> io::Result<Self> {
        let poller = Arc::new(Poller::new()?);
        let exit = Waker::new()?;
        poller.add(
            exit.fd(),
            EXIT_TOKEN,
            Want {
                read: true,
                write: false,
            },
            false,
        )?;
        let now = Instant::now();
        let core = Arc::new(Core {
            shared: Arc::clone(shared),
            config: config.clone(),
            rearm: Arc::new(Rearmer {
                poller: Arc::clone(&poller),
            }),
            poller,
            slab: RwLock::new(Slab::default()),
            open: Mutex::new(0),
            none_open: Condvar::new(),
            exit,
            epoch: now,
            next_sweep: Mutex::new(
                now + config.idle_timeout.map_or(Duration::ZERO, sweep_interval),
            ),
        });
        let live = LiveCount::new();
        let mut workers = Vec::with_capacity(config.workers);
        for i in 0..config.workers {
            let core = Arc::clone(&core);
            let guard = live.enter();
            workers.push(
                thread::Builder::new()
                    .name(format!("socketserver-reactor-{i}"))
                    .spawn(move || {
                        let _live = guard;
                        core.worker(i);
                    })?,
            );
        }
        log::debug!(
            "reactor started: {} workers, read timeout {:?}, idle timeout {:?}",
            config.workers,
            config.read_timeout,
            config.idle_timeout
        );
        Ok(ReactorDispatcher {
            core,
            workers,
            live,
            slots: config.max_connections.map(crossbeam_channel::bounded),
            _marker: PhantomData,
        })
    }

    /// Takes a place under `max_connections`, per the overflow policy.
    fn acquire(&self, job: StreamJob<S>) -> Result<(StreamJob<S>, Option<SlotGuard>), ()> {
        let Some((acquire, release)) = &self.slots else {
            return Ok((job, None));
        };
        let guard = || Some(SlotGuard(release.clone()));
        if acquire.try_send(()).is_ok() {
            return Ok((job, guard()));
        }
        let work = &*self.core.shared;
        match self.core.config.overflow {
            Overflow::Reject => {
                crate::dispatch::Work::reject(work, job);
                Err(())
            }
            Overflow::Block => {
                let state = &self.core.shared.ctx.state;
                let mut select = Select::new();
                let send = select.send(acquire);
                let _stop = select.recv(state.stopped());
                let op = select.select();
                if op.index() == send {
                    if op.send(acquire, ()).is_ok() {
                        return Ok((job, guard()));
                    }
                } else {
                    let _ = op.recv(state.stopped());
                    // Accepted before shutdown: served if a place frees up
                    // before the drain is cut off (the deadline wins a tie;
                    // dropping the guard gives the place back).
                    if send_until_forced(acquire, (), state).is_ok() {
                        let place = guard();
                        if !state.is_forced() {
                            return Ok((job, place));
                        }
                    }
                }
                crate::dispatch::Work::discard(work, job);
                Err(())
            }
        }
    }

    fn register(&self, job: StreamJob<S>, slot_guard: Option<SlotGuard>) -> io::Result<()> {
        let core = &self.core;
        let ctx = &core.shared.ctx;
        let StreamJob {
            socket,
            peer,
            registration,
        } = job;
        socket.set_nonblocking(true)?;
        if ctx.config.nodelay {
            socket.set_nodelay(true)?;
        }
        let mut slab = core.slab.write();
        let slot = match slab.free.pop() {
            Some(slot) => slot,
            None => {
                slab.entries.push(None);
                slab.generations.push(0);
                (slab.entries.len() - 1) as u32
            }
        };
        let generation = slab.generations[slot as usize];
        let shared = Arc::new(ConnShared {
            socket,
            out: Mutex::new(Outbound {
                generation,
                armed_write: true,
                ..Outbound::default()
            }),
            slot,
            max_outbound: core.config.max_outbound,
            last_active: core.now_ms().into(),
            rearm: Arc::clone(&core.rearm),
        });
        let conn = Connection::new(
            Arc::clone(&shared),
            peer,
            ctx.config.rbufsize,
            ctx.config.wbufsize,
            Arc::clone(&ctx.state),
        );
        let entry = Arc::new(Entry {
            shared: Arc::clone(&shared),
            io: Mutex::new(Io {
                conn,
                state: None,
                told_shutdown: false,
                closing: false,
            }),
            _registration: registration,
            _slot: slot_guard,
        });
        slab.entries[slot as usize] = Some(entry);
        slab.len += 1;
        *core.open.lock() += 1;
        // Writable at once: some worker picks the connection up and runs
        // `connect` there, not on the accepting thread.
        let want = Want {
            read: false,
            write: true,
        };
        if let Err(e) = core
            .poller
            .add(shared.socket.as_fd(), token(slot, generation), want, true)
        {
            slab.entries[slot as usize] = None;
            slab.free.push(slot);
            slab.len -= 1;
            drop(slab);
            let mut open = core.open.lock();
            *open -= 1;
            if *open == 0 {
                core.none_open.notify_all();
            }
            return Err(e);
        }
        Ok(())
    }
}

impl<T, S, M> ReactorDispatch<StreamJob<S>> for ReactorDispatcher<T, S, M>
where
    T: sealed::Transport<Job = StreamJob<S>, Addr = <S as StreamSocket>::Addr>,
    S: StreamSocket,
    M: MessageHandler<S>,
    Messages<M>: crate::server::service::Service<T>,
{
    fn dispatch(&mut self, job: StreamJob<S>) {
        let peer = job.peer.clone();
        let Ok((job, slot)) = self.acquire(job) else {
            return;
        };
        if let Err(e) = self.register(job, slot) {
            self.core.shared.ctx.stats.inc_errors();
            self.core.shared.report_error(&peer, &RequestError::Io(e));
        }
    }

    fn drain(self: Box<Self>) -> u64 {
        let core = &self.core;
        // Wake every parked connection once, so its handler hears about
        // the shutdown; it stays served until it closes or the deadline.
        let parked: Vec<_> = core.slab.read().entries.iter().flatten().cloned().collect();
        for entry in parked {
            let mut out = entry.shared.out.lock();
            if !out.active && !out.closed {
                core.rearm.rearm_for_write(
                    &mut out,
                    entry.shared.slot,
                    entry.shared.socket.as_fd(),
                );
            }
        }
        let mut stuck = 0;
        let mut described = false;
        {
            let mut open = core.open.lock();
            while *open > 0 {
                if !described && core.state().is_forced() {
                    // Say who outstayed the drain, for whoever reads the log.
                    described = true;
                    let count = *open;
                    drop(open);
                    core.describe_open(count);
                    open = core.open.lock();
                    continue;
                }
                // `force()` can move the deadline earlier while we wait:
                // look again at least every 50 ms.
                let until = give_up_at(core.state());
                if until.is_some_and(|t| Instant::now() >= t) {
                    break;
                }
                let recheck = Instant::now() + Duration::from_millis(50);
                let wake = until.map_or(recheck, |t| t.min(recheck));
                core.none_open.wait_until(&mut open, wake);
            }
            if *open > 0 {
                stuck = *open as u64;
                log::error!("{stuck} connection(s) still open after the drain deadline");
            }
        }
        core.exit.wake();
        let ReactorDispatcher { workers, live, .. } = *self;
        stuck + join_all(live, workers, core.state(), "reactor")
    }
}

/// `Messages(handler)` is a service of each stream transport (see the note
/// on `request_handler_service!` in `server.rs`).
macro_rules! message_handler_service {
    ($($transport:ty => $socket:ty),* $(,)?) => {
        $(
            impl<M: MessageHandler<$socket>> crate::server::service::Service<$transport>
                for Messages<M>
            {
                fn process(shared: &Shared<$transport, Self>, job: StreamJob<$socket>) -> io::Result<()> {
                    message_process(shared, job)
                }
                fn default_dispatch() -> crate::Dispatch {
                    crate::Dispatch::Reactor(Reactor::default())
                }
                fn needs_reactor() -> bool {
                    true
                }
                fn start_reactor(
                    shared: &Arc<Shared<$transport, Self>>,
                    config: &Reactor,
                ) -> io::Result<Box<dyn ReactorDispatch<StreamJob<$socket>>>> {
                    Ok(Box::new(ReactorDispatcher::start(shared, config)?))
                }
            }
        )*
    };
}

message_handler_service!(
    std::net::TcpListener => std::net::TcpStream,
    crate::net::UnixListener => std::os::unix::net::UnixStream,
);

fn message_process<T, M>(_shared: &Shared<T, M>, _job: T::Job) -> io::Result<()>
where
    T: sealed::Transport,
{
    Err(io::Error::new(
        io::ErrorKind::InvalidInput,
        "a message handler (Messages(..)) is served by Dispatch::Reactor only",
    ))
}
