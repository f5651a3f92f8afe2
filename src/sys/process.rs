//! Processes: `fork`, reaping, and the signals around them — the unsafe half
//! of forking and prefork dispatch (`dispatch/forking.rs`,
//! `dispatch/prefork.rs`). Nothing here decides *when* to fork or whom to
//! signal; that is the dispatchers' job.
//!
//! What this module provides:
//!
//! 1. [`fork_lock`]: a process-wide lock held across every `fork(2)` and by
//!    every library thread that could be inside `log` or another lock while
//!    the serving thread forks (the signal thread, the start of a shutdown).
//!    A child therefore never inherits one of *our* locks held by a thread
//!    that does not exist in the child.
//! 2. [`spawn_child`]: forks; the child resets its signal handling for its
//!    [`ChildRole`], runs a closure and leaves with `_exit(2)` — never
//!    returning into the parent's stack, never running the parent's
//!    destructors or `atexit` handlers.
//! 3. [`ChildWatch`]: a descriptor that becomes readable when a child
//!    changes state (a `SIGCHLD` self-pipe), so a serving loop can sleep in
//!    one `poll(2)` and still reap at once.
//! 4. [`try_reap`] (`waitpid(pid, WNOHANG)`) and [`signal_child`]
//!    (`kill(2)`), always for one known pid — never `waitpid(-1)`, which
//!    would steal the statuses of children the application itself started.
//!
//! # Fork safety
//!
//! After `fork(2)` in a multi-threaded process, the child has one thread and
//! a copy of every lock; a lock held by another thread at that instant stays
//! held forever in the child, and POSIX only promises async-signal-safe
//! functions there. The dispatchers keep the premise that makes running
//! ordinary Rust in the child sound in practice: when they fork, the only
//! thread that can be holding a lock is the one calling `fork` (see the
//! "Fork safety" section of `Forking`'s docs for what the application must
//! add to that).

use std::ffi::c_void;
use std::fmt;
use std::io::{self, Write};
use std::mem::MaybeUninit;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::ptr;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicUsize, Ordering};
use std::time::Instant;

use nix::errno::Errno;
use nix::libc;
use nix::poll::{PollFd, PollFlags, poll};
use nix::sys::signal::{self, SaFlags, SigAction, SigHandler, SigSet, SigmaskHow, Signal};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::ForkResult;
pub(crate) use nix::unistd::Pid;
use parking_lot::{Mutex, ReentrantMutex, ReentrantMutexGuard, const_reentrant_mutex};

use super::{Waker, poll_timeout};

/// Exit status of a child whose closure panicked outside the request's own
/// panic handling (the request lifecycle catches handler panics itself).
pub(crate) const EXIT_PANIC: i32 = 2;
/// Exit status of a prefork worker whose supervisor died before the worker
/// could ask to be told about it.
const EXIT_ORPHANED: i32 = 3;
/// Exit status of a child that could not set itself up.
const EXIT_SETUP_FAILED: i32 = 4;

static FORK_LOCK: ReentrantMutex<()> = const_reentrant_mutex(());

/// Takes the process-wide fork lock (see the module docs). Reentrant: a
/// thread holding it may take it again, so `ShutdownHandle::shutdown` can
/// take it both on its own and from inside the signal handler's thread.
pub(crate) fn fork_lock() -> ReentrantMutexGuard<'static, ()> {
    FORK_LOCK.lock()
}

/// What a forked child is for, which decides its signal handling.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ChildRole {
    /// Serves one request (forking dispatch). SIGTERM gets its default
    /// action — it is how the parent cuts a child off at the drain deadline
    /// — and SIGINT and SIGHUP are ignored: a Ctrl-C in the terminal reaches
    /// the whole process group, and it is the parent that decides, so
    /// in-flight requests drain.
    Request,
    /// A prefork worker. SIGTERM stays blocked, for the worker's `sigwait`
    /// thread ([`wait_for_sigterm`]) to take; SIGINT and SIGHUP are ignored
    /// (the supervisor forwards them as SIGTERM); on Linux the worker gets
    /// SIGTERM when its supervisor dies (`PR_SET_PDEATHSIG`).
    Worker,
}

fn termination_signals() -> SigSet {
    let mut set = SigSet::empty();
    set.add(Signal::SIGTERM);
    set.add(Signal::SIGINT);
    set.add(Signal::SIGHUP);
    set
}

/// Forks, if `proceed` — asked under the fork lock, just before the fork —
/// says so. In the parent, returns the child's pid (`None` if `proceed`
/// said no). In the child, sets up the signal handling of `role`, runs
/// `child` and exits with the status it returns ([`EXIT_PANIC`] if it
/// panics), flushing stdout and the logger first; the child never returns
/// from this call.
///
/// Callers must not hold the fork lock themselves: the child must start
/// with it released, and it cannot release a guard owned by a caller's
/// stack frame it will never return to. Hence `proceed`, for a check that
/// must not race with another thread (has shutdown begun?).
///
/// The termination signals are blocked around the fork, so a SIGTERM or
/// Ctrl-C arriving in the child before its handling is reset cannot run the
/// parent's handler there (`ctrlc`'s handler would write into a pipe shared
/// with the parent and be taken for a signal to the parent).
///
/// The caller keeps the fork-safety premise: no other thread of this process
/// may hold a lock the child will need (see the module docs); the fork lock
/// is held across the call.
pub(crate) fn spawn_child(
    role: ChildRole,
    proceed: impl FnOnce() -> bool,
    child: impl FnOnce() -> i32,
) -> io::Result<Option<Pid>> {
    let guard = fork_lock();
    if !proceed() {
        return Ok(None);
    }
    let parent = nix::unistd::getpid();
    let old_mask = termination_signals().thread_swap_mask(SigmaskHow::SIG_BLOCK)?;
    // SAFETY: fork(2) itself is always safe to call; the hazard is what the
    // child does afterwards in a multi-threaded process. Every thread this
    // library starts either does not exist while forking is possible (the
    // drain-deadline thread starts with the shutdown, after which nothing
    // forks) or holds the fork lock — which we hold — around everything it
    // does besides blocking in a system call, so no library lock or logger
    // lock is held by a thread missing from the child. The application's
    // own threads are covered by the documented requirement on
    // `Forking` and `Prefork` (their "Fork safety" docs).
    let forked = unsafe { nix::unistd::fork() };
    match forked {
        Err(e) => {
            let _ = old_mask.thread_set_mask();
            Err(e.into())
        }
        Ok(ForkResult::Parent { child }) => {
            let _ = old_mask.thread_set_mask();
            Ok(Some(child))
        }
        Ok(ForkResult::Child) => {
            // Nothing may unwind out of here: above us is the parent's stack.
            let code = catch_unwind(AssertUnwindSafe(|| {
                // The child's copy of the lock is held by this very thread,
                // once: release it, or a thread the child starts (a prefork
                // worker's) could never take it.
                drop(guard);
                if FORK_LOCK.is_locked() {
                    log::error!("forked child: the fork lock is still held (a socketserver bug)");
                    return EXIT_SETUP_FAILED;
                }
                if let Err(e) = reset_signals_in_child(role, parent, &old_mask) {
                    log::error!("forked child: cannot reset its signal handling: {e}");
                    return EXIT_SETUP_FAILED;
                }
                child()
            }))
            .unwrap_or(EXIT_PANIC);
            exit_child(code)
        }
    }
}

fn reset_signals_in_child(role: ChildRole, parent: Pid, old_mask: &SigSet) -> io::Result<()> {
    restore_sigchld();
    let ignore = SigAction::new(SigHandler::SigIgn, SaFlags::empty(), SigSet::empty());
    let default = SigAction::new(SigHandler::SigDfl, SaFlags::empty(), SigSet::empty());
    // SAFETY: installing SIG_IGN or SIG_DFL runs no code of ours in signal
    // context; the previous actions (the parent's handlers, whose threads
    // and pipes do not belong to this child) are dropped on purpose.
    unsafe {
        signal::sigaction(Signal::SIGINT, &ignore)?;
        signal::sigaction(Signal::SIGHUP, &ignore)?;
        signal::sigaction(Signal::SIGTERM, &default)?;
    }
    match role {
        ChildRole::Request => {
            // The parent's mask, minus the termination signals (SIGTERM must
            // reach us; the other two are ignored anyway).
            let mut mask = *old_mask;
            for sig in termination_signals().iter() {
                mask.remove(sig);
            }
            mask.thread_set_mask()?;
        }
        ChildRole::Worker => {
            #[cfg(any(target_os = "linux", target_os = "android"))]
            nix::sys::prctl::set_pdeathsig(Signal::SIGTERM)?;
            // The supervisor may have died before the line above: then no
            // signal will ever come, and this worker would serve orphaned.
            if nix::unistd::getppid() != parent {
                exit_child(EXIT_ORPHANED);
            }
        }
    }
    Ok(())
}

/// Leaves a forked child: flushes stdout and the logger, then `_exit(2)`.
pub(crate) fn exit_child(code: i32) -> ! {
    let _ = io::stdout().flush();
    log::logger().flush();
    // SAFETY: _exit(2) has no preconditions. It skips destructors and
    // atexit handlers on purpose: they belong to the parent (its listening
    // socket's cleanup, its buffered files), not to this copy of it.
    unsafe { libc::_exit(code) }
}

/// Blocks the calling thread until a SIGTERM is pending, and takes it. For a
/// prefork worker's signal thread: SIGTERM is blocked in every thread of the
/// worker ([`ChildRole::Worker`]), so it is delivered only here.
pub(crate) fn wait_for_sigterm() -> io::Result<()> {
    let mut set = SigSet::empty();
    set.add(Signal::SIGTERM);
    set.wait()?;
    Ok(())
}

/// How a child ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ChildExit {
    /// It called `_exit` (or returned from main) with this status.
    Exited(i32),
    /// A signal ended it.
    Signaled(Signal),
    /// Reaped by someone else (SIGCHLD ignored, or another `waitpid`): the
    /// status is lost.
    Unknown,
}

impl fmt::Display for ChildExit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ChildExit::Exited(code) => write!(f, "exit status {code}"),
            ChildExit::Signaled(sig) => write!(f, "killed by signal {sig}"),
            ChildExit::Unknown => f.write_str("unknown status (reaped elsewhere)"),
        }
    }
}

/// Reaps `pid` if it has ended: `waitpid(pid, WNOHANG)`. `Ok(None)` while it
/// runs.
pub(crate) fn try_reap(pid: Pid) -> io::Result<Option<ChildExit>> {
    loop {
        return match waitpid(pid, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(_, code)) => Ok(Some(ChildExit::Exited(code))),
            Ok(WaitStatus::Signaled(_, sig, _core)) => Ok(Some(ChildExit::Signaled(sig))),
            // StillAlive, and stop/continue reports we did not ask for.
            Ok(_) => Ok(None),
            Err(Errno::EINTR) => continue,
            Err(Errno::ECHILD) => Ok(Some(ChildExit::Unknown)),
            Err(e) => Err(e.into()),
        };
    }
}

/// Sends `sig` to one child. A child that is already gone is not an error.
pub(crate) fn signal_child(pid: Pid, sig: Signal) {
    match signal::kill(pid, sig) {
        Ok(()) | Err(Errno::ESRCH) => {}
        Err(e) => log::warn!("cannot send {sig} to child {pid}: {e}"),
    }
}

/// Whether `accept(2)` failed because the listening socket was stopped
/// (`shutdown(2)` on it, see [`stop_listening`](super::stop_listening):
/// Linux reports `EINVAL`) — by another process sharing it, when the
/// caller did not stop it itself.
pub(crate) fn listener_was_stopped(err: &io::Error) -> bool {
    err.raw_os_error() == Some(Errno::EINVAL as i32)
}

/// The calling process's pid.
pub(crate) fn current_pid() -> Pid {
    nix::unistd::getpid()
}

// ---------------------------------------------------------------------------
// SIGCHLD self-pipes.
//
// The handler writes one byte into every registered pipe. Each watcher (one
// per forking dispatcher or prefork supervisor alive in the process) has its
// own pipe, so one draining its pipe never hides a child's exit from
// another. Pipes are created on demand and never closed: a write end the
// handler has just loaded can never become some other file's descriptor.

const WATCH_SLOTS: usize = 32;

static WATCH_FDS: [AtomicI32; WATCH_SLOTS] = [const { AtomicI32::new(-1) }; WATCH_SLOTS];

struct WatchPipe {
    read: UnixStream,
    write: UnixStream,
    in_use: bool,
}

static WATCH_PIPES: Mutex<Vec<WatchPipe>> = Mutex::new(Vec::new());

/// The SIGCHLD action found before ours, chained to and restored in children.
static PREVIOUS_SIGCHLD: OnceLock<libc::sigaction> = OnceLock::new();
static PREVIOUS_HANDLER: AtomicUsize = AtomicUsize::new(libc::SIG_DFL);
static PREVIOUS_SIGINFO: AtomicBool = AtomicBool::new(false);
static INSTALLED: OnceLock<Result<(), String>> = OnceLock::new();

extern "C" fn on_sigchld(sig: libc::c_int, info: *mut libc::siginfo_t, context: *mut c_void) {
    let saved = Errno::last_raw();
    let byte = [1u8];
    for slot in &WATCH_FDS {
        let fd = slot.load(Ordering::Acquire);
        if fd >= 0 {
            // SAFETY: write(2) is async-signal-safe; `fd` is the write end of
            // a pipe that is never closed, and `byte` is a valid one-byte
            // buffer. A full pipe (EAGAIN: non-blocking) is already readable.
            unsafe { libc::write(fd, byte.as_ptr().cast(), 1) };
        }
    }
    let previous = PREVIOUS_HANDLER.load(Ordering::Acquire);
    if previous != libc::SIG_DFL && previous != libc::SIG_IGN {
        if PREVIOUS_SIGINFO.load(Ordering::Acquire) {
            // SAFETY: `previous` was read from the kernel's record of the
            // SIGCHLD action with SA_SIGINFO set, so it is a three-argument
            // handler; it expects exactly the arguments we were given.
            let handler = unsafe {
                std::mem::transmute::<
                    usize,
                    extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut c_void),
                >(previous)
            };
            handler(sig, info, context);
        } else {
            // SAFETY: as above, without SA_SIGINFO: a one-argument handler.
            let handler =
                unsafe { std::mem::transmute::<usize, extern "C" fn(libc::c_int)>(previous) };
            handler(sig);
        }
    }
    Errno::set_raw(saved);
}

fn install_sigchld_handler() -> Result<(), String> {
    let mut previous = MaybeUninit::<libc::sigaction>::zeroed();
    // SAFETY: a query — a null new action changes nothing — with a valid
    // pointer for the old action.
    let rc = unsafe { libc::sigaction(libc::SIGCHLD, ptr::null(), previous.as_mut_ptr()) };
    if rc != 0 {
        return Err(io::Error::last_os_error().to_string());
    }
    // SAFETY: sigaction(2) succeeded, so it filled the whole struct in.
    let previous = unsafe { previous.assume_init() };
    PREVIOUS_HANDLER.store(previous.sa_sigaction, Ordering::Release);
    PREVIOUS_SIGINFO.store(previous.sa_flags & libc::SA_SIGINFO != 0, Ordering::Release);
    let _ = PREVIOUS_SIGCHLD.set(previous);
    if previous.sa_sigaction == libc::SIG_IGN {
        log::warn!(
            "SIGCHLD was ignored (children reaped by the kernel); socketserver now catches it to reap its own children"
        );
    }
    let action = SigAction::new(
        SigHandler::SigAction(on_sigchld),
        SaFlags::SA_RESTART | SaFlags::SA_NOCLDSTOP,
        SigSet::empty(),
    );
    // SAFETY: `on_sigchld` is async-signal-safe: atomic loads, write(2), a
    // call to the handler that was installed before it, and errno saved and
    // restored around all of that.
    unsafe { signal::sigaction(Signal::SIGCHLD, &action) }.map_err(|e| e.to_string())?;
    Ok(())
}

/// In a forked child: puts back the SIGCHLD action we replaced, so the
/// child's own subprocesses neither write into the parent's pipes nor miss
/// the application's handler.
fn restore_sigchld() {
    if let Some(previous) = PREVIOUS_SIGCHLD.get() {
        // SAFETY: re-installs an action the kernel handed us, unchanged.
        unsafe { libc::sigaction(libc::SIGCHLD, previous, ptr::null_mut()) };
    }
}

/// What [`ChildWatch::wait`] saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Wake {
    /// A child changed state (or [`ChildWatch::notify`] was called).
    Child,
    /// The shutdown waker fired.
    Woken,
    /// The deadline passed.
    TimedOut,
}

/// A descriptor that becomes readable when any child of this process exits
/// (see the module docs). Installs the SIGCHLD handler on first use.
#[derive(Debug)]
pub(crate) struct ChildWatch {
    slot: usize,
    read: RawFd,
    write: RawFd,
}

impl ChildWatch {
    /// # Errors
    ///
    /// Fails if the SIGCHLD handler cannot be installed, a pipe cannot be
    /// created, or more than 32 watchers are alive at once.
    pub(crate) fn new() -> io::Result<Self> {
        if let Err(e) = INSTALLED.get_or_init(install_sigchld_handler) {
            return Err(io::Error::other(format!(
                "cannot install the SIGCHLD handler: {e}"
            )));
        }
        let mut pipes = WATCH_PIPES.lock();
        let slot = match pipes.iter().position(|p| !p.in_use) {
            Some(slot) => slot,
            None if pipes.len() < WATCH_SLOTS => {
                let (read, write) = UnixStream::pair()?;
                read.set_nonblocking(true)?;
                write.set_nonblocking(true)?;
                pipes.push(WatchPipe {
                    read,
                    write,
                    in_use: false,
                });
                pipes.len() - 1
            }
            None => {
                return Err(io::Error::other(format!(
                    "more than {WATCH_SLOTS} forking servers in one process"
                )));
            }
        };
        let pipe = &mut pipes[slot];
        pipe.in_use = true;
        let watch = ChildWatch {
            slot,
            read: pipe.read.as_raw_fd(),
            write: pipe.write.as_raw_fd(),
        };
        watch.drain();
        WATCH_FDS[slot].store(watch.write, Ordering::Release);
        Ok(watch)
    }

    /// The descriptor to poll for readability.
    pub(crate) fn fd(&self) -> BorrowedFd<'_> {
        // SAFETY: the pipe is kept open for the life of the process (see
        // `WATCH_PIPES`), so the descriptor outlives any borrow of `self`.
        unsafe { BorrowedFd::borrow_raw(self.read) }
    }

    /// Empties the pipe, so the next poll sleeps until the next event.
    pub(crate) fn drain(&self) {
        let mut buf = [0u8; 64];
        // Non-blocking: stops at EAGAIN once empty.
        while let Ok(n) = nix::unistd::read(self.fd(), &mut buf) {
            if n < buf.len() {
                break;
            }
        }
    }

    /// Makes the watch readable, as a child's exit would: wakes a thread
    /// waiting in [`wait`](Self::wait) to look at its children again.
    pub(crate) fn notify(&self) {
        // SAFETY: as in `fd`: the pipe is never closed.
        let write = unsafe { BorrowedFd::borrow_raw(self.write) };
        let _ = nix::unistd::write(write, &[1]);
    }

    /// Sleeps until a child changes state, `waker` fires (if given) or
    /// `until` passes; drains the pipe before returning. A waker that fired
    /// wins over a child event.
    pub(crate) fn wait(&self, waker: Option<&Waker>, until: Option<Instant>) -> io::Result<Wake> {
        loop {
            let remaining = until.map(|t| t.saturating_duration_since(Instant::now()));
            let mut fds = Vec::with_capacity(2);
            fds.push(PollFd::new(self.fd(), PollFlags::POLLIN));
            if let Some(waker) = waker {
                fds.push(PollFd::new(waker.fd(), PollFlags::POLLIN));
            }
            match poll(&mut fds, poll_timeout(remaining)) {
                Ok(0) => {
                    if until.is_some_and(|t| Instant::now() >= t) {
                        return Ok(Wake::TimedOut);
                    }
                }
                Ok(_) => {
                    let child = fds[0].any().unwrap_or(false);
                    let woken = fds.get(1).is_some_and(|f| f.any().unwrap_or(false));
                    if child {
                        self.drain();
                    }
                    if woken {
                        return Ok(Wake::Woken);
                    }
                    if child {
                        return Ok(Wake::Child);
                    }
                }
                Err(Errno::EINTR) => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
}

impl Drop for ChildWatch {
    fn drop(&mut self) {
        WATCH_FDS[self.slot].store(-1, Ordering::Release);
        self.drain();
        WATCH_PIPES.lock()[self.slot].in_use = false;
    }
}

/// Closes, in a forked request child, its copy of the server's listening
/// socket — so that once the parent closes its own, new connections are
/// refused rather than queued on a socket that only children hold. A
/// datagram socket (the one replies go out through) is left open.
pub(crate) fn close_listener_in_child(fd: RawFd) {
    // SAFETY: only called in a forked child, which runs one request and
    // then `_exit`s without returning to the serving loop that owns this
    // descriptor, so nothing uses or closes it after us.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    let is_stream = socket2::SockRef::from(&owned)
        .r#type()
        .is_ok_and(|ty| ty == socket2::Type::STREAM);
    if is_stream {
        drop(owned);
    } else {
        std::mem::forget(owned);
    }
}
