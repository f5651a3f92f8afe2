//! [`Dispatch::Pool`](crate::Dispatch::Pool): N worker threads started once,
//! fed through one bounded crossbeam channel.
//!
//! The hand-off from the serving loop to a worker is a single channel send:
//! no other lock. When the channel is full the [`Overflow`] policy decides:
//! `Block` waits for room (and stops waiting the moment shutdown begins),
//! `Reject` refuses the request at once — unless a worker is idle: a worker
//! that has just started or just finished a request is free but not yet
//! back in `recv`, so a full queue (or a zero-capacity hand-off) has room a
//! moment later, and the request waits for it instead. Workers catch
//! handler panics, so the pool keeps its size for its whole life.
//!
//! On shutdown the sending side is dropped; workers finish what is queued and
//! exit. Requests still queued when the drain deadline passes are closed
//! without being served.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread::{self, JoinHandle};

use crossbeam_channel::{Receiver, Select, SendTimeoutError, Sender, TrySendError};

use super::{LiveCount, Overflow, Pool, Work, join_all};
use crate::shutdown::ShutdownState;
use crate::stats::Stats;

pub(crate) struct PoolDispatcher<W: Work> {
    queue: Sender<W::Job>,
    overflow: Overflow,
    work: Arc<W>,
    state: Arc<ShutdownState>,
    stats: Stats,
    live: Arc<LiveCount>,
    workers: Vec<JoinHandle<()>>,
    /// Workers not running a request: parked in `recv`, or on their way
    /// there.
    idle: Arc<AtomicUsize>,
}

impl<W: Work> PoolDispatcher<W> {
    pub(crate) fn start(
        config: &Pool,
        work: Arc<W>,
        state: Arc<ShutdownState>,
        stats: Stats,
    ) -> std::io::Result<Self> {
        let (queue, jobs) = crossbeam_channel::bounded(config.queue_size);
        let live = Arc::<LiveCount>::default();
        let idle = Arc::new(AtomicUsize::new(config.workers));
        let mut workers = Vec::with_capacity(config.workers);
        for i in 0..config.workers {
            let jobs = jobs.clone();
            let work = Arc::clone(&work);
            let state = Arc::clone(&state);
            let stats = stats.clone();
            let idle = Arc::clone(&idle);
            let guard = live.enter();
            let handle = thread::Builder::new()
                .name(format!("socketserver-worker-{i}"))
                .spawn(move || {
                    let _live = guard;
                    worker_loop(&jobs, &*work, &state, &stats, &idle);
                })?;
            workers.push(handle);
        }
        log::debug!(
            "pool started: {} workers, queue of {}, overflow {:?}",
            config.workers,
            config.queue_size,
            config.overflow
        );
        Ok(PoolDispatcher {
            queue,
            overflow: config.overflow,
            work,
            state,
            stats,
            live,
            workers,
            idle,
        })
    }

    pub(crate) fn dispatch(&mut self, job: W::Job) {
        self.stats.inc_queued();
        let job = match self.queue.try_send(job) {
            Ok(()) => return,
            Err(TrySendError::Full(job)) => job,
            Err(TrySendError::Disconnected(job)) => {
                self.stats.dec_queued();
                self.work.discard(job);
                return;
            }
        };
        match self.overflow {
            // Every worker is busy and the queue is full: refuse.
            Overflow::Reject if self.idle.load(Ordering::Acquire) == 0 => {
                self.stats.dec_queued();
                self.work.reject(job);
            }
            // Block, or an idle worker will make room at once.
            Overflow::Reject | Overflow::Block => self.send_blocking(job),
        }
    }

    /// Waits for room in the queue, or for shutdown; an accepted request is
    /// still served if room appears before the drain deadline.
    fn send_blocking(&self, job: W::Job) {
        let mut select = Select::new();
        let send = select.send(&self.queue);
        let _stop = select.recv(self.state.stopped());
        let op = select.select();
        let job = if op.index() == send {
            match op.send(&self.queue, job) {
                Ok(()) => return,
                Err(e) => e.into_inner(),
            }
        } else {
            let _ = op.recv(self.state.stopped());
            let deadline = self
                .state
                .deadline()
                .unwrap_or_else(std::time::Instant::now);
            match self.queue.send_deadline(job, deadline) {
                Ok(()) => return,
                Err(SendTimeoutError::Timeout(job) | SendTimeoutError::Disconnected(job)) => job,
            }
        };
        self.stats.dec_queued();
        self.work.discard(job);
    }

    pub(crate) fn drain(self) -> u64 {
        // Closing the queue lets workers run what is queued, then exit.
        drop(self.queue);
        join_all(&self.live, self.workers, &self.state, "worker")
    }
}

fn worker_loop<W: Work>(
    jobs: &Receiver<W::Job>,
    work: &W,
    state: &ShutdownState,
    stats: &Stats,
    idle: &AtomicUsize,
) {
    for job in jobs.iter() {
        idle.fetch_sub(1, Ordering::AcqRel);
        stats.dec_queued();
        if state.is_forced() {
            work.discard(job);
        } else {
            work.run(job);
        }
        idle.fetch_add(1, Ordering::AcqRel);
    }
}
