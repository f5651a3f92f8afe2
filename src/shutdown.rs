//! Stopping a server: the shutdown handle, the token handlers read, the drain
//! deadline and the registry of live connections it cuts off.
//!
//! A server is in one of three phases:
//!
//! ```text
//!   Running ──shutdown()──▶ Draining ──deadline or force()──▶ Forced ──▶ finished
//! ```
//!
//! - **Running**: accepting and serving.
//! - **Draining**: [`ShutdownHandle::shutdown`] was called (or a signal
//!   arrived). The listening socket stops accepting at once, from the thread
//!   that asked (on Linux; elsewhere when the serving thread closes it), and
//!   the serving loop is woken — through a [`Waker`], not a timer. Requests
//!   already accepted or queued run to completion.
//! - **Forced**: the drain deadline passed (by default 5 s after shutdown
//!   began) or [`ShutdownHandle::force`] was called. Every connection still
//!   open is shut down for reading, so a handler blocked in `read` sees
//!   end-of-file and may still write a goodbye (a connection whose send
//!   buffer is full is shut down both ways at once: its handler is blocked
//!   writing to a peer that does not read). Half the drain grace later
//!   everything still open is shut down in both directions. Queued requests
//!   that never started are closed unserved.
//! - **Finished**: every thread the server started has been joined (or,
//!   past the drain grace, abandoned); the deadline thread is joined and the
//!   waker's descriptors are closed. `serve_forever` returns a
//!   [`ShutdownReport`].
//!
//! The deadline is kept by one thread, `socketserver-drain`, started when
//! shutdown begins: with `Sync` dispatch the serving thread is inside the
//! handler, so nobody else could cut it off.
//!
//! This module is not the signal wiring (that is `signal.rs`); it only offers
//! the calls, [`ShutdownHandle::shutdown`] and [`ShutdownHandle::force`],
//! that signals end up making.

use std::fmt;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Weak};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use parking_lot::{Condvar, Mutex};

use crate::sys::Waker;

const RUNNING: u8 = 0;
const DRAINING: u8 = 1;
const FORCED: u8 = 2;

/// By default a drain may last 5 seconds.
pub(crate) const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// By default handlers get half a second after the drain deadline to
/// return before their threads are left behind.
pub(crate) const DEFAULT_DRAIN_GRACE: Duration = Duration::from_millis(500);

/// Something the drain deadline can cut off: a live connection.
pub(crate) trait ForceClose: Send + Sync {
    /// The cut at the deadline: shuts the read side down, so a thread
    /// blocked reading sees end-of-file and can still write a last message
    /// ("server going away") — or both sides if the send buffer is full, so
    /// a thread blocked writing to a peer that does not read returns too.
    /// Must not block.
    fn cut(&self);
    /// Shuts both directions down, so a thread blocked writing returns too.
    /// Must not block.
    fn close_both(&self);
}

/// The server's listening socket, as the shutdown sees it: told to refuse
/// new connections the moment shutdown begins, from whichever thread begins
/// it (the serving thread may be busy running a handler).
pub(crate) trait StopAccepting: Send + Sync {
    /// Stops accepting new connections, if the platform can do that without
    /// closing the descriptor. Must not block.
    fn stop_accepting(&self);
}

#[derive(Default)]
struct Slots {
    entries: Vec<Option<Arc<dyn ForceClose>>>,
    free: Vec<usize>,
}

#[derive(Debug)]
struct Timer {
    started: Option<Instant>,
    deadline: Option<Instant>,
    /// The server has finished draining: no deadline thread may start.
    done: bool,
    thread: Option<JoinHandle<()>>,
}

/// The state behind [`ShutdownHandle`] and [`ShutdownToken`]; one per server.
///
/// Phase changes out of Running happen under the `timer` lock, so the
/// deadline a thread reads is always the one belonging to the phase it saw.
pub(crate) struct ShutdownState {
    phase: AtomicU8,
    /// Released when the server finishes, so a stopped server holds no
    /// descriptor even while handles to it live on.
    waker: Mutex<Option<Arc<Waker>>>,
    /// Dropped when shutdown begins, so every clone of `stopped` becomes
    /// ready: lets blocked channel operations (a full pool queue, a thread
    /// cap) select on "shutdown started" next to their own work.
    stop_tx: Mutex<Option<Sender<()>>>,
    stop_rx: Receiver<()>,
    /// Dropped when the drain ends: at the deadline, on `force`, or when the
    /// server finishes.
    forced_tx: Mutex<Option<Sender<()>>>,
    forced_rx: Receiver<()>,
    drain_timeout: Mutex<Duration>,
    grace: Mutex<Duration>,
    timer: Mutex<Timer>,
    timer_cv: Condvar,
    slots: Mutex<Slots>,
    listener: Mutex<Option<Weak<dyn StopAccepting>>>,
}

impl fmt::Debug for ShutdownState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ShutdownState")
            .field("phase", &self.phase.load(Ordering::Relaxed))
            .field("drain_timeout", &*self.drain_timeout.lock())
            .field("live_connections", &self.live_connections())
            .finish_non_exhaustive()
    }
}

impl ShutdownState {
    pub(crate) fn new() -> std::io::Result<Arc<Self>> {
        let (stop_tx, stop_rx) = crossbeam_channel::bounded(0);
        let (forced_tx, forced_rx) = crossbeam_channel::bounded(0);
        Ok(Arc::new(Self {
            phase: AtomicU8::new(RUNNING),
            waker: Mutex::new(Some(Arc::new(Waker::new()?))),
            stop_tx: Mutex::new(Some(stop_tx)),
            stop_rx,
            forced_tx: Mutex::new(Some(forced_tx)),
            forced_rx,
            drain_timeout: Mutex::new(DEFAULT_DRAIN_TIMEOUT),
            grace: Mutex::new(DEFAULT_DRAIN_GRACE),
            timer: Mutex::new(Timer {
                started: None,
                deadline: None,
                done: false,
                thread: None,
            }),
            timer_cv: Condvar::new(),
            slots: Mutex::new(Slots::default()),
            listener: Mutex::new(None),
        }))
    }

    /// The serving loop's waker; `None` once the server has finished.
    pub(crate) fn waker(&self) -> Option<Arc<Waker>> {
        self.waker.lock().clone()
    }

    /// A receiver that becomes ready (disconnected) when shutdown begins.
    pub(crate) fn stopped(&self) -> &Receiver<()> {
        &self.stop_rx
    }

    /// A receiver that becomes ready (disconnected) when the drain ends: the
    /// deadline passed, `force` was called, or the server finished.
    pub(crate) fn forced(&self) -> &Receiver<()> {
        &self.forced_rx
    }

    pub(crate) fn set_drain_timeout(&self, timeout: Duration) {
        *self.drain_timeout.lock() = timeout;
    }

    pub(crate) fn drain_timeout(&self) -> Duration {
        *self.drain_timeout.lock()
    }

    pub(crate) fn set_grace(&self, grace: Duration) {
        *self.grace.lock() = grace;
    }

    /// How long after the cut handlers get to return: half of it with only
    /// their read side shut (time to say goodbye), then both sides.
    pub(crate) fn grace(&self) -> Duration {
        *self.grace.lock()
    }

    /// Tells the shutdown which listening socket to stop when it begins. A
    /// weak reference: the server alone decides when the socket is closed.
    pub(crate) fn set_listener(&self, listener: Weak<dyn StopAccepting>) {
        *self.listener.lock() = Some(listener);
    }

    /// Forgets the listening socket: a forked child has closed its copy,
    /// and must never shut down whatever its descriptor number becomes.
    pub(crate) fn forget_listener(&self) {
        self.listener.lock().take();
    }

    #[inline]
    pub(crate) fn is_shutting_down(&self) -> bool {
        self.phase.load(Ordering::Acquire) != RUNNING
    }

    #[inline]
    pub(crate) fn is_forced(&self) -> bool {
        self.phase.load(Ordering::Acquire) == FORCED
    }

    /// Whether the server has finished its drain (every thread joined).
    pub(crate) fn is_finished(&self) -> bool {
        self.timer.lock().done
    }

    /// The drain deadline, once shutdown has begun; after
    /// [`force`](Self::force), the moment it was forced.
    pub(crate) fn deadline(&self) -> Option<Instant> {
        self.timer.lock().deadline
    }

    /// When shutdown began.
    pub(crate) fn started(&self) -> Option<Instant> {
        self.timer.lock().started
    }

    /// Begins a graceful shutdown. Idempotent; never blocks on the server.
    pub(crate) fn begin(self: &Arc<Self>) {
        // Forking dispatch checks "not shutting down" and forks under this
        // lock, so the drain-deadline thread started below never exists
        // while a fork happens (see dispatch/forking.rs).
        #[cfg(unix)]
        let _fork = crate::sys::fork_lock();
        {
            let mut timer = self.timer.lock();
            if self.phase.load(Ordering::Acquire) != RUNNING {
                return;
            }
            self.phase.store(DRAINING, Ordering::Release);
            let now = Instant::now();
            timer.started = Some(now);
            let timeout = *self.drain_timeout.lock();
            // A timeout too large to add is "no deadline": a year will do.
            timer.deadline = Some(
                now.checked_add(timeout)
                    .unwrap_or(now + Duration::from_secs(365 * 24 * 3600)),
            );
            if !timer.done {
                let state = Arc::clone(self);
                match thread::Builder::new()
                    .name("socketserver-drain".into())
                    .spawn(move || state.run_timer())
                {
                    Ok(handle) => timer.thread = Some(handle),
                    Err(e) => log::error!(
                        "cannot start the drain-deadline thread ({e}); the drain will be cut off by the serving thread instead"
                    ),
                }
            }
        }
        // Refuse new connections first, from this thread: the serving thread
        // may be busy in a handler (Sync dispatch) and not close the
        // listener until the drain is over.
        let listener = self.listener.lock().as_ref().and_then(Weak::upgrade);
        if let Some(listener) = listener {
            listener.stop_accepting();
        }
        self.stop_tx.lock().take();
        if let Some(waker) = self.waker() {
            waker.wake();
        }
        log::info!("shutdown requested: no new requests; draining");
    }

    /// Ends the drain now: begins shutdown if needed, moves the deadline to
    /// this instant and cuts live connections off for reading before
    /// returning; the deadline thread shuts them down completely after the
    /// goodbye window.
    pub(crate) fn force(self: &Arc<Self>) {
        self.begin();
        let has_thread = {
            let mut timer = self.timer.lock();
            if timer.done || self.is_forced() {
                return;
            }
            timer.deadline = Some(Instant::now());
            self.timer_cv.notify_all();
            timer.thread.is_some()
        };
        self.force_now();
        if !has_thread {
            self.cut_off();
        }
    }

    /// The drain-deadline thread: waits for the deadline (or the end of the
    /// drain), then cuts live connections off in two steps.
    fn run_timer(&self) {
        let mut timer = self.timer.lock();
        loop {
            if timer.done {
                return;
            }
            let Some(deadline) = timer.deadline else {
                return;
            };
            if Instant::now() >= deadline {
                break;
            }
            self.timer_cv.wait_until(&mut timer, deadline);
        }
        drop(timer);
        self.force_now();
        let cut_at = Instant::now() + self.grace() / 2;
        let mut timer = self.timer.lock();
        while !timer.done && Instant::now() < cut_at {
            self.timer_cv.wait_until(&mut timer, cut_at);
        }
        drop(timer);
        self.cut_off();
    }

    /// Moves to the Forced phase and cuts every live connection
    /// ([`ForceClose::cut`]). Called by the deadline thread, by `force`, or
    /// by a drain that finds the deadline passed.
    pub(crate) fn force_now(&self) {
        if self
            .phase
            .compare_exchange(DRAINING, FORCED, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            return;
        }
        self.forced_tx.lock().take();
        let live = self.live();
        if !live.is_empty() {
            log::warn!(
                "drain deadline reached: shutting down {} open connection(s)",
                live.len()
            );
        }
        for conn in live {
            conn.cut();
        }
    }

    /// Shuts every connection still live down in both directions.
    fn cut_off(&self) {
        for conn in self.live() {
            conn.close_both();
        }
    }

    fn live(&self) -> Vec<Arc<dyn ForceClose>> {
        self.slots
            .lock()
            .entries
            .iter()
            .flatten()
            .cloned()
            .collect()
    }

    /// Marks the drain as over, joins the deadline thread and releases the
    /// waker's descriptors. Called by the server once every worker has
    /// finished; later `begin` and `force` calls are no-ops.
    pub(crate) fn finish(&self) {
        let thread = {
            let mut timer = self.timer.lock();
            // A server closed without a shutdown request still ends in a
            // non-running phase, so handles held elsewhere see it as stopped.
            if self.phase.load(Ordering::Acquire) == RUNNING {
                self.phase.store(DRAINING, Ordering::Release);
            }
            timer.done = true;
            self.timer_cv.notify_all();
            timer.thread.take()
        };
        self.stop_tx.lock().take();
        self.forced_tx.lock().take();
        if let Some(thread) = thread {
            let _ = thread.join();
        }
        // Connections of abandoned handlers, if any, are cut off for good.
        self.cut_off();
        self.listener.lock().take();
        if let Some(waker) = self.waker.lock().take() {
            waker.wake();
        }
    }

    /// Registers a live connection so the drain deadline can cut it off.
    pub(crate) fn register(self: &Arc<Self>, conn: Arc<dyn ForceClose>) -> Registration {
        let key = {
            let mut slots = self.slots.lock();
            match slots.free.pop() {
                Some(key) => {
                    slots.entries[key] = Some(Arc::clone(&conn));
                    key
                }
                None => {
                    slots.entries.push(Some(Arc::clone(&conn)));
                    slots.entries.len() - 1
                }
            }
        };
        // Registered after the cut-off swept the table (forced is set before
        // the sweep takes the lock): it will never be served, cut it off now.
        if self.is_forced() {
            conn.close_both();
        }
        Registration {
            state: Arc::clone(self),
            key,
        }
    }

    pub(crate) fn live_connections(&self) -> usize {
        let slots = self.slots.lock();
        slots.entries.len() - slots.free.len()
    }
}

/// Keeps a connection in the drain registry; removes it when dropped.
pub(crate) struct Registration {
    state: Arc<ShutdownState>,
    key: usize,
}

impl fmt::Debug for Registration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Registration")
            .field("key", &self.key)
            .finish()
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut slots = self.state.slots.lock();
        slots.entries[self.key] = None;
        slots.free.push(self.key);
    }
}

/// Stops a server from any thread, including from inside one of its
/// handlers. Cloneable and `Send`; every call is idempotent and returns at
/// once.
///
/// Unlike Python's `BaseServer.shutdown()`, this does not wait for
/// `serve_forever` to return — which is what lets a handler call it without
/// deadlocking. The thread running `serve_forever` sees the request at once
/// (it is woken, not polled) and returns after the drain.
///
/// # Examples
///
/// ```
/// use std::thread;
/// use socketserver::{TcpRequest, TcpServer};
///
/// let mut server = TcpServer::bind("127.0.0.1:0", |_req: &mut TcpRequest| Ok(()))?;
/// let handle = server.shutdown_handle();
/// let stopper = thread::spawn(move || handle.shutdown());
/// let report = server.serve_forever()?;
/// stopper.join().unwrap();
/// assert_eq!(report.forced, 0);
/// # std::io::Result::Ok(())
/// ```
#[derive(Clone, Debug)]
pub struct ShutdownHandle {
    state: Arc<ShutdownState>,
}

impl ShutdownHandle {
    pub(crate) fn new(state: Arc<ShutdownState>) -> Self {
        Self { state }
    }

    /// Asks the server to stop: no new requests, in-flight ones finish until
    /// the drain deadline. Returns at once.
    pub fn shutdown(&self) {
        self.state.begin();
    }

    /// Ends the drain now: begins shutdown if needed, and cuts off every
    /// connection still open, as if the drain deadline had passed — done
    /// before this returns. Requests that never started are closed unserved.
    /// This is what a second Ctrl-C does.
    pub fn force(&self) {
        self.state.force();
    }

    /// Whether shutdown has begun.
    pub fn is_shutting_down(&self) -> bool {
        self.state.is_shutting_down()
    }

    /// A read-only view of the same state, for handlers.
    pub fn token(&self) -> ShutdownToken {
        ShutdownToken {
            state: Arc::clone(&self.state),
        }
    }

    pub(crate) fn state(&self) -> &Arc<ShutdownState> {
        &self.state
    }
}

/// What a handler sees of the server's shutdown: whether it has begun, and
/// when the drain deadline falls. Cheap to clone.
///
/// Long-lived handlers (a chat session, a device feed) should check
/// [`is_shutting_down`](Self::is_shutting_down) between messages and say
/// goodbye where the protocol allows; a handler blocked in `read` at the
/// deadline is woken by end-of-file (its connection is shut down for
/// reading) and, seeing [`is_forced`](Self::is_forced), can still write a
/// last message. See "Shutting down" in the [crate docs](crate).
#[derive(Clone, Debug)]
pub struct ShutdownToken {
    state: Arc<ShutdownState>,
}

impl ShutdownToken {
    pub(crate) fn new(state: Arc<ShutdownState>) -> Self {
        Self { state }
    }

    /// Whether shutdown has begun.
    #[inline]
    pub fn is_shutting_down(&self) -> bool {
        self.state.is_shutting_down()
    }

    /// Whether the drain deadline has passed or the drain was forced: the
    /// connections are being cut off. A handler whose `read` just returned
    /// end-of-file can tell from this that it was the server, not the
    /// client, and say goodbye.
    #[inline]
    pub fn is_forced(&self) -> bool {
        self.state.is_forced()
    }

    /// The drain deadline, once shutdown has begun.
    pub fn deadline(&self) -> Option<Instant> {
        self.state.deadline()
    }

    /// Blocks until shutdown begins or `timeout` passes; returns whether
    /// shutdown has begun. Useful for a handler's helper thread that should
    /// stop with the server.
    pub fn wait(&self, timeout: Duration) -> bool {
        match self.state.stopped().recv_timeout(timeout) {
            Err(RecvTimeoutError::Disconnected) => true,
            Ok(()) | Err(RecvTimeoutError::Timeout) => self.is_shutting_down(),
        }
    }

    /// Blocks until the drain deadline passes (or [`ShutdownHandle::force`]
    /// is called), the server finishes, or `timeout` passes; returns whether
    /// the drain was forced. For work not tied to the request's connection —
    /// a datagram handler waiting on a backend, a helper thread — that must
    /// give up when the server cuts off what is left.
    pub fn wait_forced(&self, timeout: Duration) -> bool {
        let _ = self.state.forced().recv_timeout(timeout);
        self.is_forced()
    }
}

/// What `serve_forever` returns after a shutdown: how the drain went.
///
/// # Examples
///
/// ```
/// # use socketserver::{TcpRequest, TcpServer};
/// let mut server = TcpServer::bind("127.0.0.1:0", |_req: &mut TcpRequest| Ok(()))?;
/// server.shutdown_handle().shutdown();
/// let report = server.serve_forever()?;
/// log::info!("stopped: {report}");
/// # std::io::Result::Ok(())
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ShutdownReport {
    /// Requests that finished normally after shutdown began.
    pub drained: u64,
    /// Requests cut off, or discarded unstarted, at the drain deadline.
    pub forced: u64,
    /// Worker threads or child processes still running when the drain grace
    /// ([`Server::set_drain_grace`](crate::Server::set_drain_grace)) had
    /// passed after the cut, and left behind (a handler that ignores both
    /// its closed socket and the shutdown token). Zero in a healthy server.
    pub abandoned: u64,
    /// Time from the shutdown request to the end of the drain.
    pub drain_time: Duration,
}

impl fmt::Display for ShutdownReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "drained {} request(s), forced {} at the deadline, in {:.3}s",
            self.drained,
            self.forced,
            self.drain_time.as_secs_f64()
        )?;
        if self.abandoned > 0 {
            write!(f, "; {} worker(s) abandoned", self.abandoned)?;
        }
        Ok(())
    }
}
