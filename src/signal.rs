//! Ctrl-C (SIGINT) and SIGTERM, wired to graceful shutdown in one call.
//!
//! The `ctrlc` crate allows one handler per process, so this module installs
//! it once and fans each signal out to every registered server. Each signal
//! moves every server one step along:
//!
//! 1. a running server begins a graceful shutdown
//!    ([`ShutdownHandle::shutdown`]);
//! 2. a draining server ends its drain at once ([`ShutdownHandle::force`]);
//! 3. if no registered server had a step left to take — all were already
//!    forced or finished, or none is registered — the process exits at once
//!    with status 130, as an unhandled SIGINT would end it: for handlers that
//!    ignore both their closed sockets and the shutdown token, and so that
//!    Ctrl-C still works once the servers are gone.
//!
//! Steps are per server, not per process: a server registered after an
//! earlier one was stopped by a signal still gets a graceful drain on the
//! next. Each server is registered once however often it is passed in.
//!
//! With the `termination` feature `ctrlc` also catches SIGHUP, treated as
//! SIGTERM. The handler runs on `ctrlc`'s own thread (started on first
//! registration, alive for the rest of the process), never in signal
//! context, so it may take locks and log.
//!
//! Two signals that arrive before the first is handled are merged into one
//! by the kernel (standard signals do not queue), so a "second Ctrl-C" only
//! counts once the first has been acted on — in practice, always, for a
//! human at a terminal.

use std::io;
use std::sync::{Arc, OnceLock, Weak};

use parking_lot::Mutex;

use crate::shutdown::{ShutdownHandle, ShutdownState};

static SERVERS: Mutex<Vec<Weak<ShutdownState>>> = Mutex::new(Vec::new());
static INSTALLED: OnceLock<Result<(), String>> = OnceLock::new();

/// Registers `handle` so SIGINT and SIGTERM stop its server (see the
/// [module docs](self)); installs the process's signal handler on first use.
///
/// # Errors
///
/// Fails if a `ctrlc` handler was already installed by someone else.
///
/// # Examples
///
/// ```no_run
/// use socketserver::{TcpRequest, TcpServer};
///
/// let mut server = TcpServer::bind("127.0.0.1:0", |_req: &mut TcpRequest| Ok(()))?;
/// socketserver::signal::shutdown_on_signals(&server.shutdown_handle())?;
/// let report = server.serve_forever()?; // returns after Ctrl-C and the drain
/// # std::io::Result::Ok(())
/// ```
pub fn shutdown_on_signals(handle: &ShutdownHandle) -> io::Result<()> {
    register(handle)
}

pub(crate) fn register(handle: &ShutdownHandle) -> io::Result<()> {
    let installed =
        INSTALLED.get_or_init(|| ctrlc::set_handler(on_signal).map_err(|e| e.to_string()));
    if let Err(e) = installed {
        return Err(io::Error::other(format!(
            "cannot install the signal handler: {e}"
        )));
    }
    let state = Arc::downgrade(handle.state());
    let mut servers = SERVERS.lock();
    servers.retain(|s| s.upgrade().is_some_and(|s| !s.is_finished()));
    if !servers.iter().any(|s| s.ptr_eq(&state)) {
        servers.push(state);
    }
    Ok(())
}

/// What one signal did to one server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Step {
    Begun,
    Forced,
    Nothing,
}

/// Moves one server one step along: running → draining → forced.
fn step(server: &Arc<ShutdownState>) -> Step {
    if !server.is_shutting_down() {
        server.begin();
        Step::Begun
    } else if !server.is_forced() && !server.is_finished() {
        server.force();
        Step::Forced
    } else {
        Step::Nothing
    }
}

fn on_signal() {
    // Logging and starting shutdowns take locks; a fork (forking or prefork
    // dispatch) must not copy them half-held into a child.
    #[cfg(unix)]
    let _fork = crate::sys::fork_lock();
    let servers: Vec<Arc<ShutdownState>> =
        SERVERS.lock().iter().filter_map(Weak::upgrade).collect();
    let steps: Vec<Step> = servers.iter().map(step).collect();
    let begun = steps.iter().filter(|s| **s == Step::Begun).count();
    let forced = steps.iter().filter(|s| **s == Step::Forced).count();
    if begun > 0 {
        log::info!(
            "signal received: shutting down {begun} server(s) gracefully (send it again to stop at once)"
        );
    }
    if forced > 0 {
        log::warn!("signal received again: ending the drain of {forced} server(s) now");
    }
    if begun == 0 && forced == 0 {
        log::error!("signal received with no server left to stop: exiting immediately");
        std::process::exit(130);
    }
}
