//! [`Dispatch::Sync`](crate::Dispatch::Sync): one request at a time, on the
//! serving thread — Python's plain `BaseServer`.
//!
//! There is no thread to start or join. A shutdown requested while a request
//! runs takes effect when it returns; the drain deadline still cuts its
//! connection off, from the drain-deadline thread.

use super::Work;

/// Runs the job inline.
pub(crate) fn run<W: Work>(work: &W, job: W::Job) {
    work.run(job);
}
