//! Shedding: ending running jobs early when memory outruns the plan.
//!
//! Cutting capacity stops new jobs, but memory that grows faster than
//! running jobs end (another process in the container taking hundreds of
//! MiB in a second, jobs far above their estimates) would still reach the
//! limit, and an OOM kill loses every job in flight. Shedding gives up a
//! few running jobs instead, the youngest first since they have done the
//! least work: their flags are raised, they stop at their next check, and
//! their clients are refused with `shed` and `Retry-After`, to retry here
//! or elsewhere.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use serde::Serialize;

use super::UNIT_BYTES;

/// A running job's shed flag, raised by the gate when the job should give
/// up. The job checks it between its stages.
#[derive(Clone, Debug, Default)]
pub struct Shed(Arc<AtomicBool>);

impl Shed {
    /// Whether the gate has shed the job.
    pub fn is_shed(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }

    fn raise(&self) {
        self.0.store(true, Ordering::Release);
    }
}

/// What one call to [`Gate::shed`](super::Gate::shed) did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Shedding {
    /// Running jobs whose flags were raised now.
    pub jobs: usize,
    /// Memory they hold, in bytes.
    pub bytes: u64,
    /// Memory held by jobs shed earlier that have not ended yet, in bytes:
    /// it counts towards the amount asked for.
    pub pending: u64,
}

/// The running jobs that may be shed, by the order they started.
#[derive(Debug, Default)]
pub(super) struct Shedder {
    jobs: Mutex<BTreeMap<u64, Entry>>,
    next: AtomicU64,
}

#[derive(Debug)]
struct Entry {
    units: u64,
    flag: Shed,
}

impl Shedder {
    /// Adds a job that started running, holding `units`; returns its key.
    pub(super) fn register(&self, units: u64, flag: Shed) -> u64 {
        let key = self.next.fetch_add(1, Ordering::Relaxed);
        self.lock().insert(key, Entry { units, flag });
        key
    }

    /// Removes a job that ended.
    pub(super) fn unregister(&self, key: u64) {
        self.lock().remove(&key);
    }

    /// Raises the flags of the youngest jobs not shed yet until they hold
    /// at least `bytes`, less what jobs shed earlier still hold.
    pub(super) fn shed(&self, bytes: u64) -> Shedding {
        let mut jobs = self.lock();
        let pending = jobs
            .values()
            .filter(|e| e.flag.is_shed())
            .map(|e| e.units * UNIT_BYTES)
            .sum::<u64>();
        let mut outcome = Shedding {
            pending,
            ..Shedding::default()
        };
        let mut owed = bytes.saturating_sub(pending);
        for entry in jobs.values_mut().rev() {
            if owed == 0 {
                break;
            }
            if entry.flag.is_shed() {
                continue;
            }
            entry.flag.raise();
            let held = entry.units * UNIT_BYTES;
            outcome.jobs += 1;
            outcome.bytes += held;
            owed = owed.saturating_sub(held);
        }
        outcome
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<u64, Entry>> {
        // The map stays consistent whatever panicked while it was held:
        // every change is a single insert, remove or flag store.
        self.jobs
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_youngest_jobs_are_shed_first_until_enough_is_covered() {
        let shedder = Shedder::default();
        let flags: Vec<Shed> = (0..4).map(|_| Shed::default()).collect();
        for flag in &flags {
            shedder.register(100, flag.clone());
        }

        let outcome = shedder.shed(150 * UNIT_BYTES);

        assert_eq!(outcome.jobs, 2);
        assert_eq!(outcome.bytes, 200 * UNIT_BYTES);
        let raised: Vec<bool> = flags.iter().map(Shed::is_shed).collect();
        assert_eq!(raised, [false, false, true, true]);
    }

    #[test]
    fn jobs_shed_and_still_running_count_towards_the_next_call() {
        let shedder = Shedder::default();
        let flags: Vec<Shed> = (0..3).map(|_| Shed::default()).collect();
        for flag in &flags {
            shedder.register(100, flag.clone());
        }
        shedder.shed(50 * UNIT_BYTES);

        let again = shedder.shed(80 * UNIT_BYTES);

        assert_eq!(again.jobs, 0, "the first shed job still covers it");
        assert_eq!(again.pending, 100 * UNIT_BYTES);
        assert_eq!(flags.iter().filter(|f| f.is_shed()).count(), 1);
    }

    #[test]
    fn an_ended_job_is_not_shed() {
        let shedder = Shedder::default();
        let old = Shed::default();
        let young = Shed::default();
        shedder.register(100, old.clone());
        let key = shedder.register(100, young.clone());
        shedder.unregister(key);

        shedder.shed(UNIT_BYTES);

        assert!(old.is_shed());
        assert!(!young.is_shed());
    }
}
