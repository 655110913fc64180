//! Outcomes on their way from the senders to the recorder.
//!
//! The recorder writes outcomes in batches, so it need not hear of each
//! one as it comes: a channel woke it for every email, a futex wake and a
//! context switch each, which on two cores took the CPU the senders and the
//! server needed. Here it wakes when a batch is full, when the oldest
//! outcome waiting has waited `within`, or when the senders are done.

use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

pub(super) struct Handoff<T> {
    state: Mutex<Waiting<T>>,
    ready: Condvar,
    batch: usize,
    within: Duration,
}

struct Waiting<T> {
    items: Vec<T>,
    /// When the first of `items` came.
    oldest: Option<Instant>,
    closed: bool,
}

impl<T> Handoff<T> {
    /// Batches of `batch` (or whatever came within `within`).
    pub(super) fn new(batch: usize, within: Duration) -> Self {
        Handoff {
            state: Mutex::new(Waiting { items: Vec::new(), oldest: None, closed: false }),
            ready: Condvar::new(),
            batch: batch.max(1),
            within,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Waiting<T>> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Hands one over. Wakes the recorder only when it waits for a first
    /// item, or a batch is full.
    pub(super) fn push(&self, item: T) {
        let mut waiting = self.lock();
        if waiting.items.is_empty() {
            waiting.oldest = Some(Instant::now());
        }
        waiting.items.push(item);
        let wake = waiting.items.len() == 1 || waiting.items.len() >= self.batch;
        drop(waiting);
        if wake {
            self.ready.notify_one();
        }
    }

    /// No more are coming: what waits goes in the next batch.
    pub(super) fn close(&self) {
        self.lock().closed = true;
        self.ready.notify_one();
    }

    /// Everything waiting, once a batch is full, the oldest has waited
    /// `within`, or no more are coming; `None` once closed and drained.
    pub(super) fn next(&self) -> Option<Vec<T>> {
        let mut waiting = self.lock();
        loop {
            let due = match waiting.oldest {
                _ if waiting.items.is_empty() => None,
                _ if waiting.closed || waiting.items.len() >= self.batch => Some(Duration::ZERO),
                Some(oldest) => Some((oldest + self.within).saturating_duration_since(Instant::now())),
                None => Some(Duration::ZERO),
            };
            waiting = match due {
                None if waiting.closed => return None,
                None => self.ready.wait(waiting).unwrap_or_else(|e| e.into_inner()),
                Some(left) if left.is_zero() => {
                    waiting.oldest = None;
                    return Some(std::mem::take(&mut waiting.items));
                }
                Some(left) => self.ready.wait_timeout(waiting, left).unwrap_or_else(|e| e.into_inner()).0,
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_batch_wakes_the_recorder_long_before_within_and_the_rest_comes_when_closed() {
        let within = Duration::from_secs(600);
        let handoff = Handoff::new(3, within);
        let started = Instant::now();
        let first = std::thread::scope(|scope| {
            let recorder = scope.spawn(|| handoff.next());
            for i in 0..3 {
                handoff.push(i);
            }
            recorder.join().unwrap()
        });
        assert_eq!(first, Some(vec![0, 1, 2]));
        assert!(started.elapsed() < within / 2, "the full batch waited {:?}", started.elapsed());
        handoff.push(3);
        handoff.close();
        assert_eq!(handoff.next(), Some(vec![3]));
        assert_eq!(handoff.next(), None);
    }

    #[test]
    fn a_lone_outcome_is_written_once_it_has_waited_within() {
        let within = Duration::from_millis(30);
        let handoff = Handoff::new(256, within);
        let started = Instant::now();
        handoff.push("sent");
        assert_eq!(handoff.next(), Some(vec!["sent"]));
        assert!(started.elapsed() >= within, "written after {:?}, before {within:?}", started.elapsed());
    }
}
