//! Ctrl-C (SIGINT) and SIGTERM, wired to graceful shutdown in one call.
//!
//! The `ctrlc` crate allows one handler per process, so this module installs
//! it once and fans each signal out to every registered server:
//!
//! 1. the first signal begins a graceful shutdown of every server
//!    ([`ShutdownHandle::shutdown`]);
//! 2. a second signal ends their drains at once ([`ShutdownHandle::force`]);
//! 3. a third exits the process immediately with status 130, for handlers
//!    that ignore both their closed sockets and the shutdown token.
//!
//! With the `termination` feature `ctrlc` also catches SIGHUP, treated as
//! SIGTERM. The handler runs on `ctrlc`'s own thread, never in signal
//! context, so it may take locks and log.

use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock, Weak};

use parking_lot::Mutex;

use crate::shutdown::{ShutdownHandle, ShutdownState};

static SERVERS: Mutex<Vec<Weak<ShutdownState>>> = Mutex::new(Vec::new());
static INSTALLED: OnceLock<Result<(), String>> = OnceLock::new();
static RECEIVED: AtomicUsize = AtomicUsize::new(0);

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
    let mut servers = SERVERS.lock();
    servers.retain(|s| s.strong_count() > 0);
    servers.push(Arc::downgrade(handle.state()));
    Ok(())
}

fn on_signal() {
    let count = RECEIVED.fetch_add(1, Ordering::SeqCst) + 1;
    let servers: Vec<Arc<ShutdownState>> =
        SERVERS.lock().iter().filter_map(Weak::upgrade).collect();
    match count {
        1 => {
            log::info!(
                "signal received: shutting down {} server(s) gracefully (send it again to stop at once)",
                servers.len()
            );
            for server in &servers {
                server.begin();
            }
        }
        2 => {
            log::warn!("second signal: ending the drain now");
            for server in &servers {
                server.force();
            }
        }
        _ => {
            log::error!("third signal: exiting immediately");
            std::process::exit(130);
        }
    }
}
