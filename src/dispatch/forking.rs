//! [`Dispatch::Forking`](crate::Dispatch::Forking): a child process per
//! request — Python's `ForkingMixIn`.
//!
//! The behaviour and the fork-safety rules a user must know are documented
//! on the public [`Forking`] settings type; this module is their
//! implementation, driven from the serving thread.
//!
//! All the unsafe calls — `fork`, `sigaction`, `_exit`, and the descriptor
//! juggling around them — live in `sys/process.rs`, each with its reasons.
//!
//! This module is not the prefork supervisor (`prefork.rs`), which forks
//! long-lived workers rather than one child per request.

use std::os::fd::{AsRawFd, BorrowedFd, RawFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use super::{Outcome, Work};
use crate::shutdown::{ForceClose, ShutdownState};
use crate::stats::Stats;
use crate::sys::{self, ChildExit, ChildRole, ChildWatch, EXIT_PANIC, Pid, Wake};

/// After SIGKILL, how long a drain waits for the kernel to finish a child
/// off before giving up on reaping it (a process stuck in uninterruptible
/// sleep can outlive SIGKILL).
const KILL_GRACE: Duration = Duration::from_secs(1);

/// Exit status of a child whose request failed with an error.
const EXIT_ERROR: i32 = 1;

/// Settings of [`Dispatch::Forking`](crate::Dispatch::Forking): a child
/// process per request — Python's `ForkingMixIn`.
///
/// For each accepted connection (or received datagram) the serving thread
/// forks. The child closes its copy of the listening socket, runs the
/// request lifecycle (setup → handle → finish → close) and leaves with
/// `_exit`: status 0 when the request completed, 1 after an error, 2 after a
/// caught panic. The parent drops its copy of the request at once (for a
/// connection, that closes its descriptor; the child's copy keeps the
/// connection open), counts the child and goes back to accepting.
///
/// - **Cap.** At most [`max_children`](Self::max_children) children run at once (40 by
///   default, as in Python). At the cap the serving thread waits for one to
///   exit before it accepts more: it sleeps in `poll(2)` on a `SIGCHLD`
///   self-pipe and the shutdown waker, so the wait costs no CPU and ends at
///   once on shutdown. The kernel's listen backlog holds the waiting
///   clients.
/// - **Reaping.** The serving loop also wakes on that pipe while idle, and
///   reaps (`waitpid(pid, WNOHANG)`, for its own children only) after every
///   wake and every accept batch, so no zombie outlives its request by more
///   than a moment. A child that exits non-zero is logged with its pid and
///   status; one killed by a signal (an abort, a segfault, the OOM killer) is
///   logged as an error. Neither disturbs the server. The parent's
///   [`Stats`](crate::Stats) count each child by its exit status: `active`
///   is the number of live children.
/// - **Shutdown.** Closing the server stops accepting, then waits for the
///   children until the drain deadline. Children still running then get
///   SIGTERM, and SIGKILL once the drain grace has passed
///   ([`Server::set_drain_grace`](crate::Server::set_drain_grace), half a
///   second by default); all are reaped. Children that
///   could not be reaped even then are reported as
///   [`ShutdownReport::abandoned`](crate::ShutdownReport::abandoned).
///
/// # Fork safety
///
/// After `fork(2)` the child has one thread — a copy of the serving thread —
/// and a copy of every lock in the process. A lock that another thread held
/// at that instant (the logger's, the allocator's, a `Mutex` in your
/// handler's state) stays locked forever in the child, and the child
/// deadlocks on it. So, in forking mode:
///
/// - **The parent must run only the serving thread** while it serves, apart
///   from threads that hold no lock when a fork can happen. This library
///   keeps to that: it starts no thread in forking mode until shutdown
///   begins (the drain-deadline thread), and no fork happens after that; the
///   signal thread of [`Server::shutdown_on_signals`](crate::Server::shutdown_on_signals)
///   blocks in `read(2)` and does all its other work — logging, starting the
///   shutdown — under a process-wide fork lock that every fork also holds.
///   Threads of your own (a metrics exporter, a background flusher) break
///   the premise: start them in the child, or use the pool.
/// - **A child may not rely on other threads**: it has none. It must not
///   wait for a lock, channel or condition that a thread of the parent would
///   have released. It may start threads of its own.
/// - **A child is a copy.** Changes it makes to memory (counters, caches)
///   are lost when it exits; share state through files, sockets or a
///   database, not through the handler's fields. The parent's
///   [`Stats`](crate::Stats) are kept from the children's exit statuses.
/// - **Signals in a child:** SIGTERM has its default action (terminate; it
///   is how the parent cuts a child off at the drain deadline); SIGINT and
///   SIGHUP are ignored, so a Ctrl-C in the terminal, which reaches the
///   whole process group, leaves the decision to the parent and in-flight
///   requests drain. SIGCHLD is given back the action the application had.
/// - **A child does not see the parent's shutdown**: its copy of the
///   shutdown state was taken at the fork, so
///   [`is_shutting_down`](crate::StreamRequest::is_shutting_down) stays
///   `false` in it. The parent's drain waits for it; at the deadline it is
///   sent SIGTERM. A long-lived handler that wants to say goodbye should
///   catch SIGTERM itself.
/// - **Shutdown from a child:** a handler that calls
///   [`ShutdownHandle::shutdown`](crate::ShutdownHandle::shutdown) in a
///   child stops the parent server too — the shutdown waker is a socket pair
///   that parent and child share, and waking it wakes the parent's loop. The
///   child's own request goes on until it returns.
///
/// - **SIGCHLD.** The first forking server (or prefork supervisor) in a
///   process installs a `SIGCHLD` handler, kept for the life of the process.
///   A handler the application installed before is called from it; an
///   inherited `SIG_IGN` (which would make the kernel reap children itself)
///   is replaced, so the application's own children must then be waited for.
///
/// # Examples
///
/// One request served by a child process, with the client in the same thread
/// (the parent must not run other threads while it forks: see *Fork
/// safety* above):
///
/// ```
/// use std::io::{Read, Write};
/// use socketserver::{Forking, TcpRequest, TcpServer};
///
/// let mut server = TcpServer::bind("127.0.0.1:0", |req: &mut TcpRequest| {
///     std::io::copy(&mut req.rfile, &mut req.wfile).map(drop)
/// })?;
/// server.set_dispatch(Forking::new().max_children(8));
/// let mut client = std::net::TcpStream::connect(server.local_addr()?)?;
/// client.write_all(b"served by a child")?;
/// client.shutdown(std::net::Shutdown::Write)?;
/// assert!(server.handle_request()?); // forks; the child echoes and exits
/// let mut reply = String::new();
/// client.read_to_string(&mut reply)?;
/// assert_eq!(reply, "served by a child");
/// let report = server.server_close(); // reaps the child
/// assert_eq!(report.abandoned, 0);
/// # std::io::Result::Ok(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Forking {
    pub(crate) max_children: usize,
}

impl Default for Forking {
    fn default() -> Self {
        Forking { max_children: 40 }
    }
}

impl Forking {
    /// At most 40 children at once (Python's `max_children`).
    pub fn new() -> Self {
        Self::default()
    }

    /// Caps the number of children alive at once; at the cap the serving
    /// loop waits for one to exit before accepting more (backpressure: the
    /// listen backlog holds the rest). By default 40.
    ///
    /// # Panics
    ///
    /// If `max` is zero.
    pub fn max_children(mut self, max: usize) -> Self {
        assert!(max > 0, "max_children must be at least 1");
        self.max_children = max;
        self
    }
}

impl From<Forking> for crate::Dispatch {
    fn from(f: Forking) -> Self {
        crate::Dispatch::Forking(f)
    }
}

/// One live child.
#[derive(Debug)]
struct Child {
    pid: Pid,
    /// The peer it serves, for the logs.
    peer: String,
    /// Whether we sent it SIGTERM or SIGKILL (its end counts as forced).
    cut_off: bool,
}

/// The live children and the pipe that says one of them exited. Shared with
/// the drain registry, so the drain deadline (or a forced shutdown) sends
/// SIGTERM from whichever thread reaches it.
#[derive(Debug)]
struct Children {
    watch: ChildWatch,
    live: Mutex<Vec<Child>>,
}

impl Children {
    /// Sends `sig` to every live child not yet sent one (`again`: to all).
    fn signal_all(&self, sig: nix::sys::signal::Signal, again: bool) {
        let mut live = self.live.lock();
        let targets: Vec<&mut Child> = live.iter_mut().filter(|c| again || !c.cut_off).collect();
        if targets.is_empty() {
            return;
        }
        log::warn!(
            "drain deadline: sending {sig} to {} child process(es) still running",
            targets.len()
        );
        for child in targets {
            child.cut_off = true;
            sys::signal_child(child.pid, sig);
        }
    }
}

impl ForceClose for Children {
    /// At the drain deadline (or on `force`): SIGTERM to every child.
    fn cut(&self) {
        self.signal_all(nix::sys::signal::Signal::SIGTERM, false);
        // Wake the drain, which may be sleeping until a later deadline.
        self.watch.notify();
    }

    /// Children have no second step here: the drain itself sends SIGKILL
    /// once the grace has passed. Just let it look again.
    fn close_both(&self) {
        self.watch.notify();
    }
}

/// The running forking dispatcher: lives on the serving thread.
pub(crate) struct ForkingDispatcher {
    max_children: usize,
    children: Arc<Children>,
    state: Arc<ShutdownState>,
    stats: Stats,
    listener: Option<RawFd>,
}

impl ForkingDispatcher {
    pub(crate) fn new(
        config: &Forking,
        state: Arc<ShutdownState>,
        stats: Stats,
    ) -> std::io::Result<Self> {
        Ok(ForkingDispatcher {
            max_children: config.max_children,
            children: Arc::new(Children {
                watch: ChildWatch::new()?,
                live: Mutex::new(Vec::new()),
            }),
            state,
            stats,
            listener: None,
        })
    }

    pub(crate) fn set_listener(&mut self, fd: BorrowedFd<'_>) {
        self.listener = Some(fd.as_raw_fd());
    }

    pub(crate) fn wake_fd(&self) -> BorrowedFd<'_> {
        self.children.watch.fd()
    }

    fn live(&self) -> usize {
        self.children.live.lock().len()
    }

    /// Forks a child for `job`, then — if that filled the last slot — waits
    /// for a child to exit, so the serving loop does not accept a request
    /// it could not start.
    pub(crate) fn dispatch<W: Work>(&mut self, work: &W, job: W::Job) {
        if !self.wait_for_slot() {
            work.discard(job);
            return;
        }
        let peer = W::peer(&job);
        let listener = self.listener;
        let state = &self.state;
        // Checked under the fork lock: a shutdown cannot begin (and start
        // the drain-deadline thread) between the check and the fork.
        let spawned = sys::spawn_child(
            ChildRole::Request,
            || !state.is_shutting_down(),
            move || {
                if let Some(fd) = listener {
                    sys::close_listener_in_child(fd);
                }
                // The copy of the shutdown state must not stop that
                // descriptor number if a handler calls `shutdown()`.
                state.forget_listener();
                match work.run(job) {
                    Outcome::Completed => 0,
                    Outcome::Failed => EXIT_ERROR,
                    Outcome::Panicked => EXIT_PANIC,
                }
            },
        );
        // In the parent the closure was dropped unrun, and the job — the
        // parent's copy of the connection — with it.
        match spawned {
            Ok(None) => {
                // A shutdown began since the accept: the connection is
                // closed unserved.
                self.stats.inc_forced();
                log::debug!("shutting down: closing unserved request from {peer}");
            }
            Ok(Some(pid)) => {
                self.stats.inc_active();
                log::trace!("forked child {pid} for {peer}");
                self.children.live.lock().push(Child {
                    pid,
                    peer,
                    cut_off: false,
                });
            }
            Err(e) => {
                self.stats.inc_errors();
                log::error!("cannot fork a child for {peer} ({e}); request dropped");
            }
        }
        self.wait_for_slot();
    }

    /// Waits until fewer than `max_children` children are alive. Returns
    /// `false` if shutdown began first (a request in hand is then not
    /// started).
    fn wait_for_slot(&mut self) -> bool {
        // Below the cap there is nothing to wait for; the serving loop reaps
        // after every batch, so there is no need to here.
        if self.live() < self.max_children {
            return true;
        }
        loop {
            self.reap();
            if self.live() < self.max_children {
                return true;
            }
            let waker = self.state.waker();
            match self.children.watch.wait(waker.as_deref(), None) {
                Ok(Wake::Child | Wake::TimedOut) => {}
                Ok(Wake::Woken) => {
                    // Our own shutdown, or a child's: the waker is shared
                    // across fork (see the module docs).
                    self.state.begin();
                    return false;
                }
                Err(e) => {
                    log::error!("waiting for a child process failed: {e}");
                    return false;
                }
            }
        }
    }

    /// Reaps every child that has exited (between requests).
    pub(crate) fn service(&mut self) {
        self.children.watch.drain();
        self.reap();
    }

    fn reap(&self) {
        let mut live = self.children.live.lock();
        live.retain(|child| match sys::try_reap(child.pid) {
            Ok(None) => true,
            Ok(Some(exit)) => {
                self.account(child, exit);
                false
            }
            Err(e) => {
                log::error!("cannot wait for child {}: {e}", child.pid);
                true
            }
        });
    }

    /// Counts and logs how a child ended.
    fn account(&self, child: &Child, exit: ChildExit) {
        let stats = &self.stats;
        let (pid, peer) = (child.pid, &child.peer);
        stats.dec_active();
        match exit {
            ChildExit::Exited(0) => stats.inc_completed(),
            ChildExit::Exited(EXIT_ERROR) => {
                // The child reported the error itself, through handle_error.
                stats.inc_errors();
                log::debug!("child {pid} serving {peer} ended with exit status {EXIT_ERROR}");
            }
            ChildExit::Exited(EXIT_PANIC) => {
                stats.inc_errors();
                stats.inc_panics();
                log::warn!(
                    "child {pid} serving {peer} ended with exit status {EXIT_PANIC}: its handler panicked"
                );
            }
            ChildExit::Exited(_) => {
                stats.inc_errors();
                log::warn!("child {pid} serving {peer} ended with {exit}");
            }
            ChildExit::Signaled(_) if child.cut_off => {
                stats.inc_errors();
                log::info!("child {pid} serving {peer} cut off at the drain deadline ({exit})");
            }
            ChildExit::Signaled(_) => {
                stats.inc_errors();
                log::error!("child {pid} serving {peer} was {exit}; the server goes on");
            }
            ChildExit::Unknown => {
                log::warn!("child {pid} serving {peer}: {exit}");
            }
        }
        if self.state.is_shutting_down() {
            if child.cut_off {
                stats.inc_forced();
            } else {
                stats.inc_drained();
            }
        }
    }

    /// Waits for the children until the drain deadline, then SIGTERM, then
    /// SIGKILL once the drain grace has passed; reaps them all. Returns how many could
    /// not be reaped.
    pub(crate) fn drain(self) -> u64 {
        // Registered, the children are cut off by the drain-deadline thread
        // (or a forced shutdown) exactly when connections would be.
        let registration =
            (self.live() > 0).then(|| self.state.register(self.children.clone() as Arc<_>));
        let mut killed_at: Option<Instant> = None;
        loop {
            self.reap();
            if self.live() == 0 {
                break;
            }
            let now = Instant::now();
            let deadline = self.state.deadline().unwrap_or(now);
            if now >= deadline {
                // Normally done already by the drain-deadline thread.
                self.children
                    .signal_all(nix::sys::signal::Signal::SIGTERM, false);
            }
            let kill_at = deadline + self.state.grace();
            let wake_at = match killed_at {
                None if now < deadline => deadline,
                None if now < kill_at => kill_at,
                None => {
                    self.children
                        .signal_all(nix::sys::signal::Signal::SIGKILL, true);
                    killed_at = Some(now);
                    now + KILL_GRACE
                }
                Some(t) if now >= t + KILL_GRACE => break,
                Some(t) => t + KILL_GRACE,
            };
            if let Err(e) = self.children.watch.wait(None, Some(wake_at)) {
                log::error!("waiting for child processes failed: {e}");
                break;
            }
        }
        drop(registration);
        let abandoned = self.children.live.lock();
        if !abandoned.is_empty() {
            let pids: Vec<String> = abandoned.iter().map(|c| c.pid.to_string()).collect();
            log::error!(
                "{} child process(es) could not be reaped after SIGKILL; leaving them behind: {}",
                pids.len(),
                pids.join(", ")
            );
        }
        abandoned.len() as u64
    }
}
