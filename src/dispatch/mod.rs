//! Dispatch strategies: how many requests run at once, and where — Python's
//! mixins, chosen with one call, [`Server::set_dispatch`](crate::Server::set_dispatch).
//!
//! 1. [`Dispatch::Sync`] — one request at a time, on the thread that calls
//!    `serve_forever` (Python's plain `TCPServer`). The default. Nothing to
//!    start, nothing to join; a slow request delays every other.
//! 2. [`Dispatch::Threading`] — a new thread per request (`ThreadingMixIn`),
//!    joined when the server closes (`block_on_close`), with an optional cap
//!    on live threads ([`Threading::max_threads`]).
//! 3. [`Dispatch::Pool`] — the headline: N named worker threads started
//!    once, a bounded crossbeam queue of pending requests in front of them,
//!    and an explicit [`Overflow`] policy when the queue is full: block the
//!    serving loop (backpressure) or reject at once (counted, logged, with
//!    an optional "busy" message). Never more than N handlers at once.
//! 4. [`Dispatch::Reactor`] — keep-alive parking for message-mode handlers
//!    ([`MessageHandler`](crate::MessageHandler)): N workers wait in one
//!    epoll poller; a connection reaches a worker only when it has data, so
//!    thousands of idle connections hold no thread (Linux).
//! 5. [`Dispatch::Forking`] — a child process per request
//!    (`ForkingMixIn`), at most [`Forking::max_children`] at once, reaped as
//!    soon as they exit; a crash in a handler kills only its own child.
//!    Driven from the serving thread (`forking.rs`).
//! 6. [`Dispatch::Prefork`] — beyond Python: a supervisor forks P worker
//!    processes that all accept on the one inherited listening socket, each
//!    running its own dispatch (sync, a pool, or a reactor), and restarts
//!    any that dies (gunicorn, Unicorn). A server-level mode:
//!    `serve_forever` hands over to the supervisor (`prefork.rs`).
//!
//! A dispatcher only moves requests to threads or processes; it never reads
//! a socket (that is the transport's job) and never decides what a request
//! means (the handler's).

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Select, Sender};

use crate::shutdown::ShutdownState;
use crate::stats::Stats;

#[cfg(unix)]
mod forking;
mod pool;
#[cfg(unix)]
pub(crate) mod prefork;
#[cfg(any(target_os = "linux", target_os = "android"))]
pub(crate) mod reactor;
mod sync;
mod threading;

#[cfg(unix)]
pub use forking::Forking;
#[cfg(unix)]
pub use prefork::Prefork;

/// How a server runs its requests: the strategies are described on each
/// variant, and compared under "Which dispatch strategy?" in the
/// [crate docs](crate).
///
/// # Examples
///
/// ```
/// use socketserver::{Dispatch, Overflow, Pool, TcpRequest, TcpServer};
///
/// let mut server = TcpServer::bind("127.0.0.1:0", |_req: &mut TcpRequest| Ok(()))?;
/// server.set_dispatch(Pool::new(8).queue_size(64).overflow(Overflow::Reject));
/// # server.set_dispatch(Dispatch::threading());
/// # std::io::Result::Ok(())
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Dispatch {
    /// One request at a time on the serving thread.
    #[default]
    Sync,
    /// A thread per request.
    Threading(Threading),
    /// A fixed pool of worker threads behind a bounded queue.
    Pool(Pool),
    /// Message-mode connections parked in a poller between messages.
    #[cfg(any(target_os = "linux", target_os = "android"))]
    Reactor(Reactor),
    /// A child process per request; see [`Forking`] for the behaviour and
    /// the fork-safety rules.
    #[cfg(unix)]
    Forking(Forking),
    /// Supervised worker processes accepting on one listening socket; see
    /// [`Prefork`].
    #[cfg(unix)]
    Prefork(Prefork),
}

impl Dispatch {
    /// [`Dispatch::Sync`].
    pub fn sync() -> Self {
        Dispatch::Sync
    }

    /// [`Dispatch::Threading`] with no cap on live threads.
    pub fn threading() -> Self {
        Dispatch::Threading(Threading::new())
    }

    /// [`Dispatch::Pool`] with `workers` threads and the default queue.
    pub fn pool(workers: usize) -> Self {
        Dispatch::Pool(Pool::new(workers))
    }

    /// [`Dispatch::Reactor`] with `workers` threads and the default timeouts.
    #[cfg(any(target_os = "linux", target_os = "android"))]
    pub fn reactor(workers: usize) -> Self {
        Dispatch::Reactor(Reactor::new(workers))
    }

    /// [`Dispatch::Forking`] with at most 40 children at once (Python's
    /// `max_children`).
    #[cfg(unix)]
    pub fn forking() -> Self {
        Dispatch::Forking(Forking::new())
    }

    /// [`Dispatch::Prefork`] with `processes` workers, each serving one
    /// request at a time ([`Dispatch::Sync`]).
    #[cfg(unix)]
    pub fn prefork(processes: usize) -> Self {
        Dispatch::Prefork(Prefork::new(processes))
    }
}

/// Settings of [`Dispatch::Threading`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Threading {
    pub(crate) max_threads: Option<usize>,
}

impl Threading {
    /// No cap on live threads (Python's behaviour).
    pub fn new() -> Self {
        Self::default()
    }

    /// Caps the number of request threads alive at once; at the cap the
    /// serving loop waits for one to finish before accepting more
    /// (backpressure). By default there is no cap.
    ///
    /// # Panics
    ///
    /// If `max` is zero.
    pub fn max_threads(mut self, max: usize) -> Self {
        assert!(max > 0, "max_threads must be at least 1");
        self.max_threads = Some(max);
        self
    }
}

impl From<Threading> for Dispatch {
    fn from(t: Threading) -> Self {
        Dispatch::Threading(t)
    }
}

/// What a [`Pool`] does with a request when its queue is full.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Overflow {
    /// Block the serving loop until a worker frees a slot: the kernel's
    /// listen backlog then absorbs the burst, and beyond it clients wait in
    /// `connect`. Nothing is dropped. The default.
    #[default]
    Block,
    /// When the queue is full and every worker is busy, close the request
    /// at once, after the server's busy hook (if any) has written a short
    /// message; counted in `Stats::rejected` and logged. Latency stays
    /// bounded under overload. (A worker that is free but not yet waiting
    /// for work, having just started or finished a request, still counts
    /// as room.)
    Reject,
}

/// Settings of [`Dispatch::Pool`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pool {
    pub(crate) workers: usize,
    pub(crate) queue_size: usize,
    pub(crate) overflow: Overflow,
}

impl Default for Pool {
    fn default() -> Self {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        Pool::new((4 * cores).max(4))
    }
}

impl Pool {
    /// A pool of `workers` threads, a queue of `workers` pending requests
    /// (so at most twice `workers` requests are held at once), and the
    /// [`Overflow::Block`] policy. `Pool::default()` has four workers per
    /// core, at least four.
    ///
    /// Each worker serves one request — for a stream server, one whole
    /// connection — at a time: a pool of N serves N long-lived connections
    /// at once, and the rest wait.
    ///
    /// # Panics
    ///
    /// If `workers` is zero.
    pub fn new(workers: usize) -> Self {
        assert!(workers > 0, "a pool needs at least one worker");
        Pool {
            workers,
            queue_size: workers,
            overflow: Overflow::Block,
        }
    }

    /// How many accepted requests may wait for a worker. By default as many
    /// as there are workers. Zero makes the hand-off direct: a request is
    /// only accepted into the pool when a worker is free to take it.
    pub fn queue_size(mut self, size: usize) -> Self {
        self.queue_size = size;
        self
    }

    /// What to do when the queue is full. By default [`Overflow::Block`].
    pub fn overflow(mut self, overflow: Overflow) -> Self {
        self.overflow = overflow;
        self
    }

    /// The number of worker threads.
    pub fn workers(&self) -> usize {
        self.workers
    }
}

impl From<Pool> for Dispatch {
    fn from(p: Pool) -> Self {
        Dispatch::Pool(p)
    }
}

/// Settings of [`Dispatch::Reactor`], for servers of a
/// [`MessageHandler`](crate::MessageHandler) (`Messages(handler)`).
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use socketserver::{Overflow, Reactor};
///
/// let reactor = Reactor::new(4)
///     .idle_timeout(Some(Duration::from_secs(60)))
///     .read_timeout(Duration::from_secs(5))
///     .max_connections(Some(10_000))
///     .overflow(Overflow::Reject);
/// # let _ = reactor;
/// ```
#[cfg(any(target_os = "linux", target_os = "android"))]
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reactor {
    pub(crate) workers: usize,
    pub(crate) read_timeout: Duration,
    pub(crate) idle_timeout: Option<Duration>,
    pub(crate) max_connections: Option<usize>,
    pub(crate) overflow: Overflow,
    pub(crate) max_outbound: usize,
}

#[cfg(any(target_os = "linux", target_os = "android"))]
impl Default for Reactor {
    /// Four workers (a reactor's workers only run while a connection has
    /// data, so few are needed), and the documented defaults.
    fn default() -> Self {
        Reactor::new(4)
    }
}

#[cfg(any(target_os = "linux", target_os = "android"))]
impl Reactor {
    /// `workers` threads serving ready connections; a 10 s per-message read
    /// timeout, a 5 min idle timeout, no connection limit, a 1 MiB
    /// per-connection outbound limit.
    ///
    /// # Panics
    ///
    /// If `workers` is zero.
    pub fn new(workers: usize) -> Self {
        assert!(workers > 0, "a reactor needs at least one worker");
        Reactor {
            workers,
            read_timeout: Duration::from_secs(10),
            idle_timeout: Some(Duration::from_secs(300)),
            max_connections: None,
            overflow: Overflow::Block,
            max_outbound: 1 << 20,
        }
    }

    /// The longest a message may take to arrive once its first bytes have:
    /// a handler reading an incomplete message waits at most this long, then
    /// the connection is closed ([`CloseReason::ReadTimeout`]). A client
    /// trickling a message byte by byte cannot hold a worker longer. By
    /// default 10 seconds.
    ///
    /// [`CloseReason::ReadTimeout`]: crate::CloseReason::ReadTimeout
    pub fn read_timeout(mut self, timeout: Duration) -> Self {
        self.read_timeout = timeout;
        self
    }

    /// Closes a connection that sends nothing for this long, telling its
    /// handler ([`CloseReason::IdleTimeout`]). `None` keeps idle
    /// connections forever. By default 5 minutes.
    ///
    /// [`CloseReason::IdleTimeout`]: crate::CloseReason::IdleTimeout
    pub fn idle_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.idle_timeout = timeout;
        self
    }

    /// The most connections open at once; beyond it the [`overflow`]
    /// policy applies (block accepting, or reject with the busy hook's
    /// message). By default no limit: the process's file-descriptor limit
    /// applies.
    ///
    /// [`overflow`]: Self::overflow
    pub fn max_connections(mut self, max: Option<usize>) -> Self {
        self.max_connections = max;
        self
    }

    /// What to do with a new connection at `max_connections`. By default
    /// [`Overflow::Block`].
    pub fn overflow(mut self, overflow: Overflow) -> Self {
        self.overflow = overflow;
        self
    }

    /// How many bytes may wait to be sent to one connection before it is
    /// closed as a slow consumer. By default 1 MiB.
    pub fn max_outbound(mut self, bytes: usize) -> Self {
        self.max_outbound = bytes;
        self
    }

    /// The number of worker threads.
    pub fn workers(&self) -> usize {
        self.workers
    }
}

#[cfg(any(target_os = "linux", target_os = "android"))]
impl From<Reactor> for Dispatch {
    fn from(r: Reactor) -> Self {
        Dispatch::Reactor(r)
    }
}

/// How one request ended, as [`Work::run`] reports it. Threads ignore it; a
/// forked child turns it into its exit status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// The handler returned `Ok` and the request was closed cleanly.
    Completed,
    /// The request failed with an error (reported to `handle_error`).
    Failed,
    /// The handler panicked (caught, reported to `handle_error`).
    Panicked,
}

/// What a dispatcher runs: the server's request lifecycle for one job.
pub(crate) trait Work: Send + Sync + 'static {
    type Job: Send + 'static;
    /// Runs a request to completion and says how it ended. Never panics:
    /// handler panics are caught and reported inside.
    fn run(&self, job: Self::Job) -> Outcome;
    /// The peer of a job, for logs written far from the job itself (a
    /// forked child's exit).
    fn peer(job: &Self::Job) -> String;
    /// Refuses a request because the dispatcher is full.
    fn reject(&self, job: Self::Job);
    /// Drops a request that never started because the drain deadline passed.
    fn discard(&self, job: Self::Job);
    /// Starts a reactor for this server's message handler.
    #[cfg(any(target_os = "linux", target_os = "android"))]
    fn start_reactor(
        self: &Arc<Self>,
        config: &Reactor,
    ) -> io::Result<Box<dyn reactor::ReactorDispatch<Self::Job>>>;
}

/// A running dispatcher.
pub(crate) enum Dispatcher<W: Work> {
    Sync,
    Threading(threading::ThreadingDispatcher<W>),
    Pool(pool::PoolDispatcher<W>),
    #[cfg(any(target_os = "linux", target_os = "android"))]
    Reactor(Box<dyn reactor::ReactorDispatch<W::Job>>),
    #[cfg(unix)]
    Forking(forking::ForkingDispatcher),
}

impl<W: Work> Dispatcher<W> {
    pub(crate) fn start(
        dispatch: &Dispatch,
        work: &Arc<W>,
        state: &Arc<ShutdownState>,
        stats: &Stats,
    ) -> io::Result<Self> {
        Ok(match dispatch {
            Dispatch::Sync => Dispatcher::Sync,
            Dispatch::Threading(cfg) => Dispatcher::Threading(threading::ThreadingDispatcher::new(
                cfg,
                Arc::clone(work),
                Arc::clone(state),
            )),
            Dispatch::Pool(cfg) => Dispatcher::Pool(pool::PoolDispatcher::start(
                cfg,
                Arc::clone(work),
                Arc::clone(state),
                stats.clone(),
            )?),
            #[cfg(any(target_os = "linux", target_os = "android"))]
            Dispatch::Reactor(cfg) => Dispatcher::Reactor(work.start_reactor(cfg)?),
            #[cfg(unix)]
            Dispatch::Forking(cfg) => Dispatcher::Forking(forking::ForkingDispatcher::new(
                cfg,
                Arc::clone(state),
                stats.clone(),
            )?),
            #[cfg(unix)]
            Dispatch::Prefork(_) => {
                return Err(io::Error::new(
                    io::ErrorKind::Unsupported,
                    "prefork dispatch runs only under serve_forever (its workers are whole serving loops)",
                ));
            }
        })
    }

    /// Tells the dispatcher which descriptor the serving loop accepts on:
    /// a forked request child closes its copy of a listening socket.
    pub(crate) fn set_listener(&mut self, fd: std::os::fd::BorrowedFd<'_>) {
        #[cfg(unix)]
        if let Dispatcher::Forking(d) = self {
            d.set_listener(fd);
        }
        let _ = fd;
    }

    /// A descriptor the serving loop should also wait on, for the
    /// dispatcher's own events (a forked child exited); when it is readable,
    /// the loop calls [`service`](Self::service).
    pub(crate) fn wake_fd(&self) -> Option<std::os::fd::BorrowedFd<'_>> {
        match self {
            #[cfg(unix)]
            Dispatcher::Forking(d) => Some(d.wake_fd()),
            _ => None,
        }
    }

    /// Housekeeping between requests, on the serving thread (Python's
    /// `ForkingMixIn.service_actions`): reaps exited children.
    pub(crate) fn service(&mut self) {
        #[cfg(unix)]
        if let Dispatcher::Forking(d) = self {
            d.service();
        }
    }

    /// Hands a job over; may block (backpressure) but wakes on shutdown.
    pub(crate) fn dispatch(&mut self, work: &W, job: W::Job) {
        match self {
            Dispatcher::Sync => sync::run(work, job),
            Dispatcher::Threading(d) => d.dispatch(job),
            Dispatcher::Pool(d) => d.dispatch(job),
            #[cfg(any(target_os = "linux", target_os = "android"))]
            Dispatcher::Reactor(d) => d.dispatch(job),
            #[cfg(unix)]
            Dispatcher::Forking(d) => d.dispatch(work, job),
        }
    }

    /// Waits for every started and queued request to finish (the drain),
    /// bounded by the shutdown deadline plus the drain grace. Returns how
    /// many threads were abandoned.
    pub(crate) fn drain(self) -> u64 {
        match self {
            Dispatcher::Sync => 0,
            Dispatcher::Threading(d) => d.drain(),
            Dispatcher::Pool(d) => d.drain(),
            #[cfg(any(target_os = "linux", target_os = "android"))]
            Dispatcher::Reactor(d) => d.drain(),
            #[cfg(unix)]
            Dispatcher::Forking(d) => d.drain(),
        }
    }
}

/// Counts the threads a dispatcher started so a drain can wait for them
/// with a deadline, next to the "drain forced" signal (`JoinHandle::join`
/// has neither).
///
/// Every live thread holds a clone of a sender that is never sent on; the
/// receiver disconnects when the last one is gone, so the wait is a channel
/// operation and can sit in one `Select` with the shutdown state.
#[derive(Debug)]
pub(crate) struct LiveCount {
    count: Arc<AtomicUsize>,
    alive: Sender<()>,
    gone: Receiver<()>,
}

impl LiveCount {
    pub(crate) fn new() -> Self {
        let (alive, gone) = crossbeam_channel::bounded(0);
        LiveCount {
            count: Arc::default(),
            alive,
            gone,
        }
    }

    /// Counts one more thread until the guard is dropped.
    pub(crate) fn enter(&self) -> LiveGuard {
        self.count.fetch_add(1, Ordering::SeqCst);
        LiveGuard {
            count: Arc::clone(&self.count),
            _alive: self.alive.clone(),
        }
    }

    /// The drain: waits until every thread has exited, or the drain is
    /// forced (deadline or `force`) and then the drain grace has
    /// passed. Returns how many threads are still running.
    pub(crate) fn wait(self, state: &ShutdownState) -> usize {
        let LiveCount { count, alive, gone } = self;
        drop(alive);
        if !wait_until_forced(&gone, state) {
            return 0;
        }
        // Cut off: handlers blocked on their connections return now; give
        // them a moment before giving up on them.
        let give_up = give_up_at(state).unwrap_or_else(Instant::now);
        match gone.recv_deadline(give_up) {
            Err(RecvTimeoutError::Disconnected) => 0,
            Ok(()) | Err(RecvTimeoutError::Timeout) => count.load(Ordering::SeqCst),
        }
    }
}

/// Decrements its [`LiveCount`] when dropped, even by a panic.
#[derive(Debug)]
pub(crate) struct LiveGuard {
    count: Arc<AtomicUsize>,
    // Dropped after `drop` has decremented the count, so the count is
    // final when the receiver disconnects.
    _alive: Sender<()>,
}

impl Drop for LiveGuard {
    fn drop(&mut self) {
        self.count.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Waits until `gone` disconnects (returns `false`) or the drain is forced
/// (returns `true`). If the deadline passes with nobody having forced the
/// drain (the deadline thread could not start), forces it from here.
fn wait_until_forced(gone: &Receiver<()>, state: &ShutdownState) -> bool {
    let mut select = Select::new();
    let idle = select.recv(gone);
    let forced = select.recv(state.forced());
    let op = match state.deadline() {
        Some(deadline) => select.select_deadline(deadline),
        None => Ok(select.select()),
    };
    match op {
        Ok(op) if op.index() == idle => {
            let _ = op.recv(gone);
            false
        }
        Ok(op) => {
            debug_assert_eq!(op.index(), forced);
            let _ = op.recv(state.forced());
            true
        }
        Err(_) => {
            state.force_now();
            true
        }
    }
}

/// The instant after which a drain stops waiting for connections or threads:
/// the drain deadline plus the drain grace. Read when called: a later
/// `force` moves the deadline earlier.
pub(crate) fn give_up_at(state: &ShutdownState) -> Option<Instant> {
    state.deadline().map(|d| d + state.grace())
}

/// Sends `msg` on `channel` unless the drain is forced first; gives `msg`
/// back if it could not be sent. For a request accepted before shutdown but
/// still waiting for room when it began.
pub(crate) fn send_until_forced<T>(
    channel: &Sender<T>,
    msg: T,
    state: &ShutdownState,
) -> Result<(), T> {
    if state.is_forced() {
        return Err(msg);
    }
    let mut select = Select::new();
    let send = select.send(channel);
    let _forced = select.recv(state.forced());
    let op = match state.deadline() {
        Some(deadline) => select.select_deadline(deadline),
        None => Ok(select.select()),
    };
    match op {
        Ok(op) if op.index() == send => op.send(channel, msg).map_err(|e| e.into_inner()),
        Ok(op) => {
            let _ = op.recv(state.forced());
            Err(msg)
        }
        Err(_) => {
            state.force_now();
            Err(msg)
        }
    }
}

/// Waits for `live` threads within the drain bound, then joins the finished
/// ones; threads still running are left behind (detached). Returns how many
/// were abandoned.
pub(crate) fn join_all(
    live: LiveCount,
    handles: Vec<std::thread::JoinHandle<()>>,
    state: &ShutdownState,
    what: &str,
) -> u64 {
    let stuck = live.wait(state);
    if stuck > 0 {
        log::error!(
            "{stuck} {what} thread(s) still running {:?} after the drain was cut off; leaving them behind",
            state.grace()
        );
    }
    for handle in handles {
        if stuck == 0 || handle.is_finished() {
            let _ = handle.join();
        }
    }
    stuck as u64
}
