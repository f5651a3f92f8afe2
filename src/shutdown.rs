//! Stopping a server: the shutdown handle, the token handlers read, the drain
//! deadline and the registry of live connections it cuts off.
//!
//! A server is in one of three phases:
//!
//! ```text
//!   Running ──shutdown()──▶ Draining ──deadline or force()──▶ Forced
//! ```
//!
//! - **Running**: accepting and serving.
//! - **Draining**: [`ShutdownHandle::shutdown`] was called (or a signal
//!   arrived). The serving loop has been woken — through a [`Waker`], not a
//!   timer — and stops accepting at once; the listening socket is closed so
//!   new connections are refused rather than left in the backlog. Requests
//!   already accepted or queued run to completion.
//! - **Forced**: the drain deadline passed (by default 5 s after shutdown
//!   began) or [`ShutdownHandle::force`] was called. Every connection still
//!   open is shut down in both directions, so a handler blocked in `read` or
//!   `write` returns at once; queued requests that never started are closed
//!   unserved.
//!
//! `serve_forever` returns when every worker thread and child process the
//! server started has finished, with a [`ShutdownReport`].
//!
//! This module is not the signal wiring (that is `signal.rs`); it only offers
//! the one call, [`ShutdownHandle::shutdown`], that signals end up making.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
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

/// Something the drain deadline can cut off: a live connection.
pub(crate) trait ForceClose: Send + Sync {
    /// Shuts the connection down in both directions, waking any thread
    /// blocked on it. Must not block.
    fn force_close(&self);
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
    done: bool,
    thread: Option<JoinHandle<()>>,
}

/// The state behind [`ShutdownHandle`] and [`ShutdownToken`]; one per server.
pub(crate) struct ShutdownState {
    phase: AtomicU8,
    waker: Waker,
    /// Dropped when shutdown begins, so every clone of `stopped` becomes
    /// ready: lets blocked channel operations (a full pool queue, a thread
    /// cap) select on "shutdown started" next to their own work.
    stop_tx: Mutex<Option<Sender<()>>>,
    stop_rx: Receiver<()>,
    drain_timeout: Mutex<Duration>,
    timer: Mutex<Timer>,
    timer_cv: Condvar,
    slots: Mutex<Slots>,
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
        Ok(Arc::new(Self {
            phase: AtomicU8::new(RUNNING),
            waker: Waker::new()?,
            stop_tx: Mutex::new(Some(stop_tx)),
            stop_rx,
            drain_timeout: Mutex::new(DEFAULT_DRAIN_TIMEOUT),
            timer: Mutex::new(Timer {
                started: None,
                deadline: None,
                done: false,
                thread: None,
            }),
            timer_cv: Condvar::new(),
            slots: Mutex::new(Slots::default()),
        }))
    }

    pub(crate) fn waker(&self) -> &Waker {
        &self.waker
    }

    /// A receiver that becomes ready (disconnected) when shutdown begins.
    pub(crate) fn stopped(&self) -> &Receiver<()> {
        &self.stop_rx
    }

    pub(crate) fn set_drain_timeout(&self, timeout: Duration) {
        *self.drain_timeout.lock() = timeout;
    }

    #[inline]
    pub(crate) fn is_shutting_down(&self) -> bool {
        self.phase.load(Ordering::Acquire) != RUNNING
    }

    #[inline]
    pub(crate) fn is_forced(&self) -> bool {
        self.phase.load(Ordering::Acquire) == FORCED
    }

    /// The drain deadline, once shutdown has begun.
    pub(crate) fn deadline(&self) -> Option<Instant> {
        self.timer.lock().deadline
    }

    /// When shutdown began.
    pub(crate) fn started(&self) -> Option<Instant> {
        self.timer.lock().started
    }

    /// Begins a graceful shutdown. Idempotent; never blocks on the server.
    pub(crate) fn begin(self: &Arc<Self>) {
        if self
            .phase
            .compare_exchange(RUNNING, DRAINING, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            return;
        }
        let now = Instant::now();
        {
            let mut timer = self.timer.lock();
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
                        "cannot start the drain-deadline thread ({e}); open connections will only be cut off when the server is closed"
                    ),
                }
            }
        }
        self.stop_tx.lock().take();
        self.waker.wake();
        log::info!("shutdown requested: no new requests; draining");
    }

    /// Ends the drain now: begins shutdown if needed, then moves the deadline
    /// to this instant.
    pub(crate) fn force(self: &Arc<Self>) {
        self.begin();
        let mut timer = self.timer.lock();
        if timer.done {
            return;
        }
        timer.deadline = Some(Instant::now());
        if timer.thread.is_some() {
            self.timer_cv.notify_all();
        } else {
            drop(timer);
            self.force_now();
        }
    }

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
    }

    /// Moves to the Forced phase and cuts off every live connection.
    pub(crate) fn force_now(&self) {
        if self
            .phase
            .compare_exchange(DRAINING, FORCED, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            return;
        }
        let live: Vec<Arc<dyn ForceClose>> = self
            .slots
            .lock()
            .entries
            .iter()
            .flatten()
            .cloned()
            .collect();
        if !live.is_empty() {
            log::warn!(
                "drain deadline reached: shutting down {} open connection(s)",
                live.len()
            );
        }
        for conn in live {
            conn.force_close();
        }
    }

    /// Marks the drain as over and joins the deadline thread. Called by the
    /// server once every worker has finished; later `begin` calls are no-ops.
    pub(crate) fn finish(&self) {
        // A server closed without a shutdown request still ends in a
        // non-running phase, so handles held elsewhere see it as stopped.
        let _ = self
            .phase
            .compare_exchange(RUNNING, DRAINING, Ordering::AcqRel, Ordering::Acquire);
        self.stop_tx.lock().take();
        self.waker.wake();
        let thread = {
            let mut timer = self.timer.lock();
            timer.done = true;
            self.timer_cv.notify_all();
            timer.thread.take()
        };
        if let Some(thread) = thread {
            let _ = thread.join();
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
        // Registered after the cut-off swept the table: cut it off now.
        if self.is_forced() {
            conn.force_close();
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
    /// connection still open, as if the drain deadline had passed. This is
    /// what a second Ctrl-C does.
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
/// deadline is woken by its connection being shut down.
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

    /// Whether the drain deadline has passed (connections are being cut off).
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
/// println!("stopped: {report}");
/// # std::io::Result::Ok(())
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ShutdownReport {
    /// Requests that finished normally after shutdown began.
    pub drained: u64,
    /// Requests cut off, or discarded unstarted, at the drain deadline.
    pub forced: u64,
    /// Worker threads or child processes that had not exited a grace period
    /// after the deadline and were left behind (a handler that ignores both
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
