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
//! On shutdown the serving loop stops at once, even when it was waiting for
//! room (the request it held is handed to the drain). The drain then queues
//! that request if room appears before the deadline, drops the sending side,
//! and waits: workers finish what is queued and exit. Requests still queued
//! when the drain deadline passes are closed without being served.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread::{self, JoinHandle};

use crossbeam_channel::{Receiver, Select, Sender, TrySendError};

use super::{LiveCount, Overflow, Pool, Work, join_all, send_until_forced};
use crate::shutdown::ShutdownState;
use crate::stats::Stats;

pub(crate) struct PoolDispatcher<W: Work> {
    queue: Sender<W::Job>,
    /// The workers' end, kept to sweep the queue if workers are stuck at the
    /// end of the drain.
    jobs: Receiver<W::Job>,
    overflow: Overflow,
    work: Arc<W>,
    state: Arc<ShutdownState>,
    stats: Stats,
    live: LiveCount,
    workers: Vec<JoinHandle<()>>,
    /// Workers not running a request: parked in `recv`, or on their way
    /// there.
    idle: Arc<AtomicUsize>,
    /// Requests accepted before shutdown that were waiting for room in a
    /// full queue when it began: the serving loop hands them over here and
    /// returns at once, so the listener is closed without waiting for room.
    pending: Vec<W::Job>,
}

impl<W: Work> PoolDispatcher<W> {
    pub(crate) fn start(
        config: &Pool,
        work: Arc<W>,
        state: Arc<ShutdownState>,
        stats: Stats,
    ) -> std::io::Result<Self> {
        let (queue, jobs) = crossbeam_channel::bounded(config.queue_size);
        let live = LiveCount::new();
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
            jobs,
            overflow: config.overflow,
            work,
            state,
            stats,
            live,
            workers,
            idle,
            pending: Vec::new(),
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

    /// Waits for room in the queue, or for shutdown: then the request is
    /// kept for the drain, which still serves it if room appears before the
    /// deadline.
    fn send_blocking(&mut self, job: W::Job) {
        if self.state.is_shutting_down() {
            self.pending.push(job);
            return;
        }
        let mut select = Select::new();
        let send = select.send(&self.queue);
        let _stop = select.recv(self.state.stopped());
        let op = select.select();
        if op.index() == send {
            if let Err(e) = op.send(&self.queue, job) {
                self.stats.dec_queued();
                self.work.discard(e.into_inner());
            }
        } else {
            let _ = op.recv(self.state.stopped());
            self.pending.push(job);
        }
    }

    pub(crate) fn drain(self) -> u64 {
        let PoolDispatcher {
            queue,
            jobs,
            work,
            state,
            stats,
            live,
            workers,
            pending,
            ..
        } = self;
        for job in pending {
            if let Err(job) = send_until_forced(&queue, job, &state) {
                stats.dec_queued();
                work.discard(job);
            }
        }
        // Closing the queue lets workers run what is queued, then exit.
        drop(queue);
        let abandoned = join_all(live, workers, &state, "worker");
        // Workers discard what is left once the drain is forced; if they
        // are all stuck, nobody would: close those requests here.
        for job in jobs.try_iter() {
            stats.dec_queued();
            work.discard(job);
        }
        abandoned
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
