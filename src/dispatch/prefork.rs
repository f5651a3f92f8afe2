//! [`Dispatch::Prefork`](crate::Dispatch::Prefork): a supervisor and P
//! worker processes that all accept on one listening socket — the gunicorn
//! and Unicorn model, beyond Python's mixins.
//!
//! The behaviour a user must know is documented on the public [`Prefork`]
//! settings type; this module is the supervisor and the worker's setup.
//! Forking, reaping and signals go through `sys/process.rs`.

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use parking_lot::Mutex;

use super::Dispatch;
use crate::net::Transport;
use crate::server::{Server, Service};
use crate::shutdown::{ForceClose, ShutdownReport, ShutdownState};
use crate::sys::{self, ChildExit, ChildRole, ChildWatch, Pid, Wake};

/// Restart back-off while workers die young: 100 ms doubling to 5 s.
const RESTART_BACKOFF_MIN: Duration = Duration::from_millis(100);
const RESTART_BACKOFF_MAX: Duration = Duration::from_secs(5);
/// A worker that lived this long was healthy: its death resets the back-off.
const STABLE_AFTER: Duration = Duration::from_secs(5);
/// After the drain deadline and the drain grace (which each worker spends
/// cutting its connections off and joining its threads), how much longer
/// workers get before SIGKILL: each began its drain a moment after the
/// supervisor did.
const WORKER_GRACE: Duration = Duration::from_secs(1);
/// After SIGKILL, how long to wait for the kernel to finish a worker off.
const KILL_GRACE: Duration = Duration::from_secs(1);
/// Exit status of a worker that could not become one (its setup failed).
const EXIT_SETUP_FAILED: i32 = 1;
/// Exit status after a third SIGTERM (128 + SIGINT, as `signal.rs` uses).
const EXIT_THIRD_SIGNAL: i32 = 130;

/// Settings of [`Dispatch::Prefork`](crate::Dispatch::Prefork): a supervisor
/// and P worker processes that all accept on one listening socket — the
/// gunicorn and Unicorn model, beyond Python's mixins.
///
/// `serve_forever` on a prefork server does not serve: it becomes the
/// **supervisor**. It forks P **workers**; each inherits the listening
/// socket and runs the ordinary serving loop on it with its own dispatch
/// ([`dispatch`](Self::dispatch): one request at a time by default, or a thread
/// pool), so the kernel spreads connections (or datagrams) across P
/// processes and every core is used with no shared lock between them. A
/// crash, abort or leak in a handler takes down one worker, never the
/// server.
///
/// ```text
/// supervisor ── fork ──▶ worker 1: serve_forever(listener, per-process dispatch)
///     │      ── fork ──▶ worker 2: ...
///     │  sleeps in poll(2) on a SIGCHLD pipe and the shutdown waker
///     ├─ a worker died ──▶ log pid and status, fork a replacement
///     │                    (back-off 100 ms doubling to 5 s while they die young)
///     └─ shutdown ──▶ close its listener copy, SIGTERM every worker (each
///                     drains), wait until the drain deadline; then a second
///                     SIGTERM (force), SIGKILL after the drain grace and a
///                     second more, reap all
/// ```
///
/// - **Workers' signals.** A worker blocks SIGTERM in all its threads before
///   starting any, and takes it in a small `sigwait` thread: the first
///   SIGTERM begins the worker's graceful shutdown, the second forces it,
///   the third exits at once. SIGINT and SIGHUP are ignored in workers: a
///   Ctrl-C in the terminal reaches the whole process group, and the
///   supervisor turns it into one orderly SIGTERM per worker. On Linux a
///   worker also gets SIGTERM if the supervisor dies (`PR_SET_PDEATHSIG`),
///   so a SIGKILLed supervisor leaves no worker serving behind it.
/// - **Each worker has its own shutdown state** (waker, drain deadline,
///   drain registry): the supervisor's waker is a socket pair shared across
///   fork and must not be woken by every worker's drain. A handler that
///   calls [`ShutdownHandle::shutdown`](crate::ShutdownHandle::shutdown)
///   in a worker stops the whole server: the worker forwards it to the
///   supervisor, which shuts every worker down. A worker sent SIGTERM on its
///   own (`kill -TERM <worker>`) drains and exits, and is replaced: a
///   rolling restart of one worker.
/// - **Restarts.** A worker that dies while the server runs is replaced at
///   once if it had lived five seconds or more; one that dies younger is
///   replaced after a back-off (100 ms, doubling up to 5 s), so a handler
///   that crashes every worker on start does not make the supervisor spin.
/// - **Report and stats.** The [`ShutdownReport`] the supervisor returns
///   adds up the workers' own reports (each writes it to a pipe before it
///   exits). The supervisor serves nothing itself, so its
///   [`Stats`](crate::Stats) stay zero: the counters live in the workers.
/// - **Unix socket files** are removed only by the process that bound them
///   — the supervisor, when it stops accepting.
/// - **Refusing new connections.** On Linux the supervisor stops the one
///   shared listening socket the moment shutdown begins, so new connections
///   are refused at once, even while every worker is busy in a request; a
///   worker whose `accept` then fails begins its own drain. Elsewhere the
///   socket stops when its last copy is closed: the supervisor's at once,
///   each worker's when its serving loop sees the shutdown (a sync worker
///   busy in a request sees it when the request ends).
/// - **Only [`Server::serve_forever`](crate::Server::serve_forever)**:
///   [`handle_request`](crate::Server::handle_request) on a prefork server
///   fails with `Unsupported`.
///
/// Fork safety is as for forking dispatch (see [`Forking`](crate::Forking)):
/// the supervisor runs only its own thread (and the signal thread, which
/// forks respect), and the workers start their threads after the fork.
///
/// # Examples
///
/// Four worker processes with eight pool threads each:
///
/// ```no_run
/// use socketserver::{Dispatch, Prefork, TcpRequest, TcpServer};
///
/// let mut server = TcpServer::bind("127.0.0.1:9999", |req: &mut TcpRequest| {
///     std::io::copy(&mut req.rfile, &mut req.wfile).map(drop)
/// })?;
/// server.set_dispatch(Prefork::new(4).dispatch(Dispatch::pool(8)));
/// server.shutdown_on_signals()?; // SIGTERM: every worker drains, then return
/// let report = server.serve_forever()?; // this process supervises
/// log::info!("stopped: {report}");
/// # std::io::Result::Ok(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Prefork {
    pub(crate) processes: usize,
    pub(crate) dispatch: Box<Dispatch>,
}

impl Default for Prefork {
    /// One worker per core, each serving one request at a time.
    fn default() -> Self {
        Prefork::new(std::thread::available_parallelism().map_or(1, |n| n.get()))
    }
}

impl Prefork {
    /// `processes` workers, each serving one request at a time
    /// ([`Dispatch::Sync`], gunicorn's "sync" workers).
    /// `Prefork::default()` has one worker per core.
    ///
    /// # Panics
    ///
    /// If `processes` is zero.
    pub fn new(processes: usize) -> Self {
        assert!(processes > 0, "prefork needs at least one worker process");
        Prefork {
            processes,
            dispatch: Box::new(Dispatch::Sync),
        }
    }

    /// How each worker process runs its requests. By default
    /// [`Dispatch::Sync`]; a [`Pool`](crate::Pool) serves several slow or
    /// long-lived connections per worker.
    ///
    /// # Panics
    ///
    /// If `dispatch` is itself forking or prefork.
    pub fn dispatch(mut self, dispatch: impl Into<Dispatch>) -> Self {
        let dispatch = dispatch.into();
        assert!(
            !matches!(dispatch, Dispatch::Forking(_) | Dispatch::Prefork(_)),
            "a prefork worker's dispatch must be sync, threading, pool or reactor"
        );
        self.dispatch = Box::new(dispatch);
        self
    }

    /// The number of worker processes.
    pub fn processes(&self) -> usize {
        self.processes
    }
}

impl From<Prefork> for Dispatch {
    fn from(p: Prefork) -> Self {
        Dispatch::Prefork(p)
    }
}

/// One worker slot: the process in it now, or when to start the next.
#[derive(Debug)]
struct Slot {
    pid: Option<Pid>,
    started: Instant,
    backoff: Duration,
    restart_at: Option<Instant>,
    /// The read end of the pipe the worker writes its report to.
    report: Option<UnixStream>,
    /// SIGTERMs sent to the current worker by the shutdown.
    terms_sent: u8,
}

/// The slots and the SIGCHLD pipe, shared with the drain registry so the
/// drain deadline forces the workers' drains from whichever thread reaches
/// it first.
#[derive(Debug)]
struct Workers {
    watch: ChildWatch,
    slots: Mutex<Vec<Slot>>,
}

impl Workers {
    /// Sends the `nth` SIGTERM (1: drain, 2: force) to every live worker
    /// that has had fewer.
    fn terminate(&self, nth: u8) {
        for slot in self.slots.lock().iter_mut() {
            if let Some(pid) = slot.pid
                && slot.terms_sent < nth
            {
                slot.terms_sent = nth;
                sys::signal_child(pid, Signal::SIGTERM);
            }
        }
    }

    fn kill_all(&self) {
        for slot in self.slots.lock().iter() {
            if let Some(pid) = slot.pid {
                log::error!("worker {pid} still running after the drain deadline: SIGKILL");
                sys::signal_child(pid, Signal::SIGKILL);
            }
        }
    }

    fn live(&self) -> usize {
        self.slots.lock().iter().filter(|s| s.pid.is_some()).count()
    }
}

impl ForceClose for Workers {
    /// At the drain deadline (or on `force`): a second SIGTERM to every
    /// worker, which forces its own drain.
    fn cut(&self) {
        log::warn!("drain deadline: forcing every worker's drain (second SIGTERM)");
        self.terminate(2);
        self.watch.notify();
    }

    /// Workers cut their own connections; the supervisor's last resort,
    /// SIGKILL, comes from its drain. Just let it look again.
    fn close_both(&self) {
        self.watch.notify();
    }
}

/// What the workers reported, added up.
#[derive(Debug, Default)]
struct Totals {
    drained: u64,
    forced: u64,
    abandoned: u64,
}

impl Totals {
    /// Reads a dead worker's report line: `drained forced abandoned`.
    fn add_from(&mut self, report: UnixStream) {
        let mut line = String::new();
        let _ = report.set_nonblocking(true);
        let _ = (&report).read_to_string(&mut line);
        let numbers: Vec<u64> = line
            .split_whitespace()
            .filter_map(|n| n.parse().ok())
            .collect();
        if let [drained, forced, abandoned] = numbers[..] {
            self.drained += drained;
            self.forced += forced;
            self.abandoned += abandoned;
        }
    }
}

/// Runs the supervisor (see the module docs) until shutdown, then drains
/// the workers and returns their summed report.
pub(crate) fn supervise<T, H>(
    server: &mut Server<T, H>,
    config: &Prefork,
) -> io::Result<ShutdownReport>
where
    T: Transport,
    H: Service<T>,
{
    server.prefork_prepare(&config.dispatch)?;
    let state = Arc::clone(server.prefork_state());
    let now = Instant::now();
    let workers = Arc::new(Workers {
        watch: ChildWatch::new()?,
        slots: Mutex::new(
            (0..config.processes)
                .map(|_| Slot {
                    pid: None,
                    started: now,
                    backoff: Duration::ZERO,
                    restart_at: Some(now),
                    report: None,
                    terms_sent: 0,
                })
                .collect(),
        ),
    });
    log::info!(
        "prefork supervisor {}: {} worker process(es), each with {:?}",
        sys::current_pid(),
        config.processes,
        config.dispatch
    );
    let mut totals = Totals::default();
    let mut failed = None;
    loop {
        reap(&workers, &state, &mut totals);
        if state.is_shutting_down() {
            break;
        }
        start_due(server, &workers, &state, config);
        let next_restart = workers
            .slots
            .lock()
            .iter()
            .filter_map(|s| s.restart_at)
            .min();
        let waker = state.waker();
        match workers.watch.wait(waker.as_deref(), next_restart) {
            Ok(Wake::Child | Wake::TimedOut) => {}
            // A signal, a handle, or a worker forwarding its handler's
            // shutdown: all wake the one waker.
            Ok(Wake::Woken) => state.begin(),
            Err(e) => {
                // Cannot watch the workers any more: stop them all rather
                // than leave them unsupervised.
                log::error!("prefork supervisor: waiting for workers failed: {e}; shutting down");
                failed = Some(e);
                state.begin();
            }
        }
    }
    // New connections are refused once every copy of the listener is
    // closed: ours now, the workers' as each begins its drain.
    server.prefork_close_listener();
    log::info!(
        "prefork supervisor: forwarding the shutdown to {} worker(s)",
        workers.live()
    );
    workers.terminate(1);
    let abandoned = drain(&workers, &state, &mut totals);
    state.finish();
    let report = ShutdownReport {
        drained: totals.drained,
        forced: totals.forced,
        abandoned: totals.abandoned + abandoned,
        drain_time: state.started().map_or(Duration::ZERO, |t| t.elapsed()),
    };
    log::info!("prefork supervisor stopped: {report}");
    server.prefork_finish(report);
    match failed {
        Some(e) => Err(e),
        None => Ok(report),
    }
}

/// Reaps dead workers: logs them and, unless shutting down, schedules their
/// replacement.
fn reap(workers: &Workers, state: &ShutdownState, totals: &mut Totals) {
    let shutting_down = state.is_shutting_down();
    let now = Instant::now();
    for (index, slot) in workers.slots.lock().iter_mut().enumerate() {
        let Some(pid) = slot.pid else { continue };
        let exit = match sys::try_reap(pid) {
            Ok(None) => continue,
            Ok(Some(exit)) => exit,
            Err(e) => {
                log::error!("cannot wait for worker {pid}: {e}");
                continue;
            }
        };
        slot.pid = None;
        if let Some(report) = slot.report.take() {
            totals.add_from(report);
        }
        if shutting_down {
            match exit {
                ChildExit::Exited(0) => log::debug!("worker {pid} drained and exited"),
                _ => log::warn!("worker {pid} ended with {exit} during shutdown"),
            }
            continue;
        }
        let lived = now.saturating_duration_since(slot.started);
        slot.backoff = restart_backoff(slot.backoff, Some(lived));
        slot.restart_at = Some(now + slot.backoff);
        let message = format!(
            "worker {pid} (slot {index}) {exit} after {:.1}s; restarting it in {:?}",
            lived.as_secs_f64(),
            slot.backoff
        );
        match exit {
            ChildExit::Exited(0) => log::info!("{message}"),
            ChildExit::Exited(_) | ChildExit::Unknown => log::warn!("{message}"),
            ChildExit::Signaled(_) => log::error!("{message}"),
        }
    }
}

/// How long to wait before restarting a slot whose worker just died after
/// `lived` (`None`: it could not even be started), given the slot's
/// previous back-off: none after a healthy life, else 100 ms doubling to
/// 5 s.
fn restart_backoff(previous: Duration, lived: Option<Duration>) -> Duration {
    match lived {
        Some(lived) if lived >= STABLE_AFTER => Duration::ZERO,
        _ => (previous * 2).clamp(RESTART_BACKOFF_MIN, RESTART_BACKOFF_MAX),
    }
}

/// Forks a worker into every empty slot whose restart time has come.
fn start_due<T, H>(
    server: &mut Server<T, H>,
    workers: &Workers,
    state: &Arc<ShutdownState>,
    config: &Prefork,
) where
    T: Transport,
    H: Service<T>,
{
    let now = Instant::now();
    let due: Vec<usize> = workers
        .slots
        .lock()
        .iter()
        .enumerate()
        .filter(|(_, s)| s.pid.is_none() && s.restart_at.is_some_and(|t| t <= now))
        .map(|(i, _)| i)
        .collect();
    for index in due {
        match fork_worker(server, state, config) {
            Ok(Some((pid, report))) => {
                log::info!("worker {pid} started (slot {index})");
                let mut slots = workers.slots.lock();
                let slot = &mut slots[index];
                slot.pid = Some(pid);
                slot.started = Instant::now();
                slot.restart_at = None;
                slot.report = Some(report);
                slot.terms_sent = 0;
            }
            Ok(None) => return, // shutting down
            Err(e) => {
                let mut slots = workers.slots.lock();
                let slot = &mut slots[index];
                slot.backoff = restart_backoff(slot.backoff, None);
                slot.restart_at = Some(Instant::now() + slot.backoff);
                log::error!(
                    "cannot start a worker for slot {index}: {e}; retrying in {:?}",
                    slot.backoff
                );
            }
        }
    }
}

/// Forks one worker. `Ok(None)` if shutdown has begun.
fn fork_worker<T, H>(
    server: &mut Server<T, H>,
    state: &Arc<ShutdownState>,
    config: &Prefork,
) -> io::Result<Option<(Pid, UnixStream)>>
where
    T: Transport,
    H: Service<T>,
{
    let (report_rx, report_tx) = UnixStream::pair()?;
    let dispatch = (*config.dispatch).clone();
    let supervisor = Arc::clone(state);
    // Checked under the fork lock: no shutdown can begin (and start the
    // drain-deadline thread) before the fork.
    let pid = sys::spawn_child(
        ChildRole::Worker,
        || !state.is_shutting_down(),
        move || worker_main(server, dispatch, supervisor, report_tx),
    )?;
    Ok(pid.map(|pid| (pid, report_rx)))
}

/// A worker's life, in the forked child: a fresh shutdown state, the
/// SIGTERM thread, the ordinary serving loop, the report to the supervisor.
fn worker_main<T, H>(
    server: &mut Server<T, H>,
    dispatch: Dispatch,
    supervisor: Arc<ShutdownState>,
    mut report_tx: UnixStream,
) -> i32
where
    T: Transport,
    H: Service<T>,
{
    let pid = sys::current_pid();
    let state = match server.prefork_become_worker(dispatch) {
        Ok(state) => state,
        Err(e) => {
            log::error!("worker {pid}: cannot start: {e}");
            return EXIT_SETUP_FAILED;
        }
    };
    // Set by the SIGTERM thread before it begins a shutdown, so the
    // forwarding thread can tell the supervisor's SIGTERM from a shutdown
    // asked for inside this worker.
    let signalled = Arc::new(AtomicBool::new(false));
    let started = {
        let state = Arc::clone(&state);
        let signalled = Arc::clone(&signalled);
        thread::Builder::new()
            .name("socketserver-sigterm".into())
            .spawn(move || sigterm_loop(&state, &signalled))
    }
    .and_then(|_| {
        let state = Arc::clone(&state);
        let signalled = Arc::clone(&signalled);
        thread::Builder::new()
            .name("socketserver-forward".into())
            .spawn(move || {
                // Disconnected when this worker's shutdown begins.
                let _ = state.stopped().recv();
                // Only the waker: this is the supervisor's state as copied
                // at fork, shared with it through that socket pair.
                let Some(waker) = supervisor.waker() else {
                    return;
                };
                // Already woken: the supervisor is shutting down (it stopped
                // the listener, which is how this worker heard of it).
                let supervisor_stopping =
                    sys::sleep_unless_woken(&waker, Duration::ZERO).unwrap_or(false);
                if !signalled.load(Ordering::SeqCst) && !supervisor_stopping {
                    log::info!(
                        "worker {pid}: shutdown requested inside the worker; stopping the server"
                    );
                    waker.wake();
                }
            })
    });
    let forward = match started {
        Ok(forward) => forward,
        Err(e) => {
            log::error!("worker {pid}: cannot start its signal threads: {e}");
            return EXIT_SETUP_FAILED;
        }
    };
    let served = server.serve_forever();
    // Its shutdown has begun, so the forwarding thread is finishing: let it
    // tell the supervisor before `_exit` ends every thread.
    let _ = forward.join();
    log::info!("worker {pid} stopped: {}", server.stats().snapshot());
    let report = served.as_ref().copied().unwrap_or_default();
    let _ = writeln!(
        report_tx,
        "{} {} {}",
        report.drained, report.forced, report.abandoned
    );
    match served {
        Ok(_) => 0,
        Err(e) => {
            log::error!("worker {pid}: serving failed: {e}");
            1
        }
    }
}

/// The worker's SIGTERM thread: first signal drains, second forces, third
/// exits at once.
fn sigterm_loop(state: &Arc<ShutdownState>, signalled: &AtomicBool) {
    static RECEIVED: AtomicUsize = AtomicUsize::new(0);
    loop {
        if let Err(e) = sys::wait_for_sigterm() {
            log::error!("worker: waiting for SIGTERM failed: {e}");
            return;
        }
        signalled.store(true, Ordering::SeqCst);
        match RECEIVED.fetch_add(1, Ordering::SeqCst) + 1 {
            1 => {
                log::debug!("worker {}: SIGTERM, draining", sys::current_pid());
                state.begin();
            }
            2 => state.force(),
            _ => sys::exit_child(EXIT_THIRD_SIGNAL),
        }
    }
}

/// Waits for the workers to finish their drains; forces, then kills, those
/// that outlive the deadline. Returns how many could not be reaped.
fn drain(workers: &Arc<Workers>, state: &Arc<ShutdownState>, totals: &mut Totals) -> u64 {
    let registration = state.register(Arc::clone(workers) as Arc<dyn ForceClose>);
    let mut killed_at: Option<Instant> = None;
    loop {
        reap(workers, state, totals);
        if workers.live() == 0 {
            break;
        }
        let now = Instant::now();
        let deadline = state.deadline().unwrap_or(now);
        if now >= deadline {
            workers.terminate(2); // normally done by the drain-deadline thread
        }
        let kill_at = deadline + state.grace() + WORKER_GRACE;
        let wake_at = match killed_at {
            None if now < deadline => deadline,
            None if now < kill_at => kill_at,
            None => {
                workers.kill_all();
                killed_at = Some(now);
                now + KILL_GRACE
            }
            Some(t) if now >= t + KILL_GRACE => break,
            Some(t) => t + KILL_GRACE,
        };
        if let Err(e) = workers.watch.wait(None, Some(wake_at)) {
            log::error!("waiting for workers failed: {e}");
            break;
        }
    }
    drop(registration);
    let left = workers.live();
    if left > 0 {
        log::error!("{left} worker(s) could not be reaped after SIGKILL; leaving them behind");
    }
    left as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_crash_loop_backs_off_and_a_healthy_life_resets_the_back_off() {
        let young = Some(Duration::from_millis(10));
        let mut backoff = Duration::ZERO;
        let mut seen = Vec::new();
        for _ in 0..8 {
            backoff = restart_backoff(backoff, young);
            seen.push(backoff.as_millis());
        }
        assert_eq!(seen, [100, 200, 400, 800, 1600, 3200, 5000, 5000]);
        assert_eq!(restart_backoff(backoff, Some(STABLE_AFTER)), Duration::ZERO);
        assert_eq!(restart_backoff(Duration::ZERO, None), RESTART_BACKOFF_MIN);
    }

    #[test]
    fn a_worker_report_line_adds_up() {
        let mut totals = Totals::default();
        for line in ["3 1 0\n", "2 0 1\n", "garbage\n"] {
            let (rx, mut tx) = UnixStream::pair().unwrap();
            tx.write_all(line.as_bytes()).unwrap();
            drop(tx);
            totals.add_from(rx);
        }
        assert_eq!((totals.drained, totals.forced, totals.abandoned), (5, 1, 1));
    }

    #[test]
    #[should_panic(expected = "must be sync, threading, pool or reactor")]
    fn prefork_workers_cannot_fork_per_request() {
        let _ = Prefork::new(2).dispatch(Dispatch::forking());
    }
}
