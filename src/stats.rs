//! Cheap counters a running server keeps about itself.
//!
//! Every counter is a relaxed atomic bumped once per request or connection,
//! never per byte. [`Stats`] is a cloneable handle that can be read from any
//! thread while the server runs; [`Stats::snapshot`] copies the counters out.
//! This is not a metrics system: export the snapshot to one if you need
//! rates or histograms.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Debug, Default)]
struct Counters {
    accepted: AtomicU64,
    denied: AtomicU64,
    rejected: AtomicU64,
    queued: AtomicU64,
    active: AtomicU64,
    completed: AtomicU64,
    errors: AtomicU64,
    panics: AtomicU64,
    oversize: AtomicU64,
    forced: AtomicU64,
    drained: AtomicU64,
    timeouts: AtomicU64,
}

/// A handle on a server's counters. Clone it freely; all clones read the same
/// counters.
///
/// # Examples
///
/// ```
/// use socketserver::TcpServer;
///
/// let server = TcpServer::bind("127.0.0.1:0", |_req: &mut socketserver::TcpRequest| Ok(()))?;
/// let stats = server.stats();
/// assert_eq!(stats.snapshot().accepted, 0);
/// # std::io::Result::Ok(())
/// ```
#[derive(Clone, Debug, Default)]
pub struct Stats(Arc<Counters>);

/// A copy of a server's counters at one moment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct StatsSnapshot {
    /// Connections accepted or datagrams received (oversize datagrams are
    /// counted in `oversize` only).
    pub accepted: u64,
    /// Requests closed because `verify_request` said no.
    pub denied: u64,
    /// Requests refused because the pool's queue (or a connection limit) was
    /// full and the overflow policy is `Reject`.
    pub rejected: u64,
    /// Requests waiting in the pool's queue right now.
    pub queued: u64,
    /// Handlers running right now.
    pub active: u64,
    /// Requests whose handler returned `Ok`.
    pub completed: u64,
    /// Requests that ended in an error or a panic (reported to
    /// `handle_error`).
    pub errors: u64,
    /// Of `errors`, those that were panics.
    pub panics: u64,
    /// Datagrams larger than `max_packet_size`, dropped unhandled and
    /// reported to `handle_error` (not counted in `accepted` or `errors`).
    pub oversize: u64,
    /// Requests cut off or discarded at the drain deadline.
    pub forced: u64,
    /// Requests that finished during a graceful drain.
    pub drained: u64,
    /// Message-mode connections closed by the idle or read timeout.
    pub timeouts: u64,
}

macro_rules! counter_ops {
    ($($field:ident => $inc:ident),* $(,)?) => {
        $(
            #[inline]
            pub(crate) fn $inc(&self) {
                self.0.$field.fetch_add(1, Ordering::Relaxed);
            }
        )*
    };
}

impl Stats {
    pub(crate) fn new() -> Self {
        Self::default()
    }

    counter_ops! {
        accepted => inc_accepted,
        denied => inc_denied,
        rejected => inc_rejected,
        queued => inc_queued,
        active => inc_active,
        completed => inc_completed,
        errors => inc_errors,
        panics => inc_panics,
        oversize => inc_oversize,
        forced => inc_forced,
        drained => inc_drained,
        timeouts => inc_timeouts,
    }

    #[inline]
    pub(crate) fn dec_queued(&self) {
        self.0.queued.fetch_sub(1, Ordering::Relaxed);
    }

    #[inline]
    pub(crate) fn dec_active(&self) {
        self.0.active.fetch_sub(1, Ordering::Relaxed);
    }

    /// Copies the counters out.
    pub fn snapshot(&self) -> StatsSnapshot {
        let c = &self.0;
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        StatsSnapshot {
            accepted: load(&c.accepted),
            denied: load(&c.denied),
            rejected: load(&c.rejected),
            queued: load(&c.queued),
            active: load(&c.active),
            completed: load(&c.completed),
            errors: load(&c.errors),
            panics: load(&c.panics),
            oversize: load(&c.oversize),
            forced: load(&c.forced),
            drained: load(&c.drained),
            timeouts: load(&c.timeouts),
        }
    }
}

impl fmt::Display for StatsSnapshot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "accepted={} denied={} rejected={} queued={} active={} completed={} errors={} panics={} oversize={} forced={} drained={} timeouts={}",
            self.accepted,
            self.denied,
            self.rejected,
            self.queued,
            self.active,
            self.completed,
            self.errors,
            self.panics,
            self.oversize,
            self.forced,
            self.drained,
            self.timeouts
        )
    }
}
