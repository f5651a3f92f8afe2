//! [`Dispatch::Threading`](crate::Dispatch::Threading): a thread per request
//! — Python's `ThreadingMixIn` with `block_on_close = True`.
//!
//! Threads are named `socketserver-request-N`. With a cap
//! ([`Threading::max_threads`](crate::Threading::max_threads)), the serving
//! loop waits for a free slot before handing a request over; the wait ends
//! at once if shutdown begins, and the request it held is handed to the
//! drain, which runs it if a slot frees up before the deadline. Closing the
//! server joins every request thread, bounded by the drain deadline.

use std::sync::Arc;
use std::thread::{self, JoinHandle};

use crossbeam_channel::{Receiver, Select, Sender};

use super::{LiveCount, Threading, Work, join_all, send_until_forced};
use crate::shutdown::ShutdownState;

/// Slots for the thread cap: a bounded channel used as a counting
/// semaphore, so waiting for a slot can sit in one `Select` with shutdown.
struct Slots {
    acquire: Sender<()>,
    release: Receiver<()>,
}

/// Gives a slot back when the request thread ends, even by a panic.
struct SlotGuard(Option<Receiver<()>>);

impl Drop for SlotGuard {
    fn drop(&mut self) {
        if let Some(release) = &self.0 {
            let _ = release.try_recv();
        }
    }
}

pub(crate) struct ThreadingDispatcher<W: Work> {
    work: Arc<W>,
    state: Arc<ShutdownState>,
    live: LiveCount,
    slots: Option<Slots>,
    handles: Vec<JoinHandle<()>>,
    prune_at: usize,
    spawned: u64,
    /// Requests accepted before shutdown that were waiting for a slot when
    /// it began: the serving loop hands them over and returns at once; the
    /// drain still runs them if a slot frees up before the deadline.
    pending: Vec<W::Job>,
}

impl<W: Work> ThreadingDispatcher<W> {
    pub(crate) fn new(config: &Threading, work: Arc<W>, state: Arc<ShutdownState>) -> Self {
        let slots = config.max_threads.map(|max| {
            let (acquire, release) = crossbeam_channel::bounded(max);
            Slots { acquire, release }
        });
        ThreadingDispatcher {
            work,
            state,
            live: LiveCount::new(),
            slots,
            handles: Vec::new(),
            prune_at: 64,
            spawned: 0,
            pending: Vec::new(),
        }
    }

    /// Takes a slot under the cap; `false` if shutdown began first.
    fn acquire(&self, slots: &Slots) -> bool {
        if slots.acquire.try_send(()).is_ok() {
            return true;
        }
        if self.state.is_shutting_down() {
            return false;
        }
        let mut select = Select::new();
        let send = select.send(&slots.acquire);
        let stop = select.recv(self.state.stopped());
        let op = select.select();
        if op.index() == send {
            return op.send(&slots.acquire, ()).is_ok();
        }
        debug_assert_eq!(op.index(), stop);
        let _ = op.recv(self.state.stopped());
        false
    }

    pub(crate) fn dispatch(&mut self, job: W::Job) {
        let slot = match &self.slots {
            Some(slots) => {
                if !self.acquire(slots) {
                    self.pending.push(job);
                    return;
                }
                SlotGuard(Some(slots.release.clone()))
            }
            None => SlotGuard(None),
        };
        self.spawn(job, slot);
    }

    fn spawn(&mut self, job: W::Job, slot: SlotGuard) {
        if self.handles.len() >= self.prune_at {
            // Finished threads need no join; forget them so the list tracks
            // only live ones.
            self.handles.retain(|h| !h.is_finished());
            self.prune_at = (self.handles.len() * 2).max(64);
        }
        let work = Arc::clone(&self.work);
        let live = self.live.enter();
        self.spawned += 1;
        let spawned = thread::Builder::new()
            .name(format!("socketserver-request-{}", self.spawned))
            .spawn(move || {
                let _live = live;
                let _slot = slot;
                work.run(job);
            });
        match spawned {
            Ok(handle) => self.handles.push(handle),
            // The closure, and with it the connection, is dropped: the peer
            // sees the connection close.
            Err(e) => log::error!("cannot spawn a request thread ({e}); request dropped"),
        }
    }

    pub(crate) fn drain(mut self) -> u64 {
        // Requests accepted before shutdown still run if a slot frees up
        // before the deadline; the serving loop has already returned, so the
        // listener is closed while we wait.
        for job in std::mem::take(&mut self.pending) {
            let Some(slots) = &self.slots else {
                self.spawn(job, SlotGuard(None));
                continue;
            };
            if send_until_forced(&slots.acquire, (), &self.state).is_err() {
                self.work.discard(job);
                continue;
            }
            let slot = SlotGuard(Some(slots.release.clone()));
            // A slot and the deadline can become ready together: the
            // deadline wins (dropping the guard gives the slot back).
            if self.state.is_forced() {
                drop(slot);
                self.work.discard(job);
            } else {
                self.spawn(job, slot);
            }
        }
        join_all(self.live, self.handles, &self.state, "request")
    }
}
