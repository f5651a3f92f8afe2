//! The platform boundary: everything the rest of the crate asks of the
//! operating system, so that `net/`, `dispatch/` and `server.rs` read without
//! libc. This is the only module allowed to contain `unsafe` code.
//!
//! What a platform must provide (the list a port starts from, as in mio's
//! `sys/mod.rs`):
//!
//! 1. [`Waker`]: a descriptor that becomes readable, and *stays* readable,
//!    once woken — the serving loop's "shutdown was requested" signal, so the
//!    loop blocks in one `poll(2)` instead of polling a flag on a timer.
//! 2. [`wait_readable`]: block until a socket is readable, the waker fires,
//!    or a timeout passes ([`wait_readable_or`]: or a dispatcher's own
//!    descriptor is readable).
//! 3. [`poll_one`]: wait, with a timeout, until one descriptor is readable or
//!    writable (deadline-bounded reads and writes on non-blocking sockets).
//! 4. Accept-error classification ([`AcceptErrorKind`]).
//! 5. [`stop_listening`]: make a listening socket refuse new connections
//!    without closing it (or report that the platform cannot).
//! 6. Processes, for forking and prefork dispatch (`process.rs`): `fork(2)`
//!    under a process-wide fork lock with the child's signal handling reset,
//!    a `SIGCHLD` self-pipe to sleep on, `waitpid(2)` for one known child,
//!    `kill(2)`, `_exit(2)`.
//!
//! Only Unix is supported today; on other targets the crate does not build,
//! and the error says so (see `lib.rs`).

#[cfg(unix)]
#[allow(unsafe_code, reason = "sys/ is the one place where unsafe code lives")]
mod unix;

#[cfg(unix)]
#[allow(unsafe_code, reason = "sys/ is the one place where unsafe code lives")]
mod process;

#[cfg(unix)]
pub(crate) use process::*;
#[cfg(unix)]
pub(crate) use unix::*;
