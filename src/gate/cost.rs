//! What jobs really cost, learned per job class.
//!
//! A job's memory estimate comes from its own code (a formula over the
//! image's dimensions, say) and can be wrong in either direction. When a
//! job ends with a measured peak, the ratio of that peak to the estimate it
//! was admitted with is recorded for its class. Later estimates of the class
//! are multiplied by the *largest* ratio among the last few jobs: one
//! under-estimated job is enough to raise the correction, while lowering it
//! takes a whole window of jobs that used less, so the gate errs towards
//! safety and forgets a stale correction within a window.
//!
//! A class the gate has never seen finish is *probed*: only a few of its
//! jobs may hold reservations at once until one of them has run to its
//! end. Without that, a burst of a new class with estimates three times too
//! low would all be admitted before the first measurement came back, and
//! the working set would overshoot the ceiling by the whole error.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use serde::Serialize;
use tokio::sync::Semaphore;

/// How many recent jobs of a class the correction looks at.
const WINDOW: usize = 8;

/// Bounds on the correction factor. Below a quarter, an estimate is so far
/// off that the measurement is more likely wrong than the formula (a job
/// that failed early, say); above sixteen the same holds the other way.
const MIN_FACTOR: f64 = 0.25;
const MAX_FACTOR: f64 = 16.0;

/// The learned correction of one job class, as the state snapshot shows it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ClassCost {
    /// The job class, as the job named it.
    pub class: String,
    /// What estimates of this class are multiplied by.
    pub factor: f64,
    /// Jobs of this class that ended with a measured peak.
    pub observed: u64,
    /// Whether the class is still probed: no job of it has run to its end.
    pub probing: bool,
}

/// Per-class corrections, shared by every reservation of a gate.
#[derive(Debug, Default)]
pub(crate) struct CostModel {
    probe_jobs: usize,
    classes: Mutex<HashMap<String, ClassHistory>>,
}

#[derive(Debug, Default)]
struct ClassHistory {
    ratios: VecDeque<f64>,
    observed: u64,
    /// Open while the class is probed; closed, which wakes every waiter,
    /// once a job of the class has run to its end.
    probe: Option<Arc<Semaphore>>,
}

impl ClassHistory {
    fn factor(&self) -> f64 {
        let worst = self.ratios.iter().copied().fold(f64::NAN, f64::max);
        if worst.is_nan() {
            1.0
        } else {
            worst.clamp(MIN_FACTOR, MAX_FACTOR)
        }
    }
}

impl CostModel {
    /// A model that probes a new class with `probe_jobs` jobs at a time;
    /// zero turns probing off.
    pub fn new(probe_jobs: usize) -> Self {
        Self {
            probe_jobs,
            classes: Mutex::default(),
        }
    }

    /// The probe of `class` while it has one: a semaphore with a permit
    /// per job allowed at once. `None` once a job of the class has ended.
    pub fn probe(&self, class: &str) -> Option<Arc<Semaphore>> {
        if self.probe_jobs == 0 {
            return None;
        }
        let mut classes = self.classes();
        let history = classes
            .entry(class.to_owned())
            .or_insert_with(|| ClassHistory {
                probe: Some(Arc::new(Semaphore::new(self.probe_jobs))),
                ..ClassHistory::default()
            });
        history.probe.clone()
    }

    /// Records that a job of `class` ran to its end: the class is known,
    /// and every job waiting on its probe goes on.
    pub fn ended(&self, class: &str) {
        let mut classes = self.classes();
        let history = classes.entry(class.to_owned()).or_default();
        if let Some(probe) = history.probe.take() {
            probe.close();
        }
    }

    /// The corrected size of a job whose own estimate is `estimate` bytes.
    pub fn correct(&self, class: &str, estimate: u64) -> u64 {
        let factor = self.classes().get(class).map_or(1.0, ClassHistory::factor);
        scale(estimate, factor)
    }

    /// Records that a job estimated at `estimate` bytes peaked at `peak`.
    pub fn observe(&self, class: &str, estimate: u64, peak: u64) {
        if estimate == 0 {
            return;
        }
        let ratio = peak as f64 / estimate as f64;

        let mut classes = self.classes();
        let history = classes.entry(class.to_owned()).or_default();
        if history.ratios.len() == WINDOW {
            history.ratios.pop_front();
        }
        history.ratios.push_back(ratio);
        history.observed += 1;
    }

    /// Every class's correction, sorted by class name.
    pub fn classes_snapshot(&self) -> Vec<ClassCost> {
        let classes = self.classes();
        let mut out: Vec<ClassCost> = classes
            .iter()
            .map(|(class, history)| ClassCost {
                class: class.clone(),
                factor: history.factor(),
                observed: history.observed,
                probing: history.probe.is_some(),
            })
            .collect();
        out.sort_by(|a, b| a.class.cmp(&b.class));
        out
    }

    fn classes(&self) -> std::sync::MutexGuard<'_, HashMap<String, ClassHistory>> {
        // The map holds plain numbers: a panic elsewhere cannot leave it
        // half-written in a way that matters.
        self.classes.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// `bytes` times `factor`, rounded up and saturated.
fn scale(bytes: u64, factor: f64) -> u64 {
    let scaled = (bytes as f64 * factor).ceil();
    if scaled >= u64::MAX as f64 {
        u64::MAX
    } else {
        scaled as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    #[test]
    fn unknown_class_is_taken_at_its_word() {
        let model = CostModel::new(2);
        assert_eq!(model.correct("jpeg", 100 * MIB), 100 * MIB);
    }

    #[test]
    fn one_underestimated_job_raises_the_next_estimates() {
        let model = CostModel::new(2);
        model.observe("jpeg", 50 * MIB, 150 * MIB);
        assert_eq!(model.correct("jpeg", 50 * MIB), 150 * MIB);
        assert_eq!(model.correct("png", 50 * MIB), 50 * MIB);
    }

    #[test]
    fn overestimates_are_forgotten_only_after_a_full_window() {
        let model = CostModel::new(2);
        model.observe("gif", 100 * MIB, 200 * MIB);
        for _ in 0..WINDOW - 1 {
            model.observe("gif", 100 * MIB, 50 * MIB);
        }
        assert_eq!(model.correct("gif", 100 * MIB), 200 * MIB);

        model.observe("gif", 100 * MIB, 50 * MIB);
        assert_eq!(model.correct("gif", 100 * MIB), 50 * MIB);
    }

    #[test]
    fn a_new_class_is_probed_until_one_job_ends() {
        let model = CostModel::new(2);
        let probe = model.probe("webp").unwrap();
        assert_eq!(probe.available_permits(), 2);

        model.ended("webp");
        assert!(probe.is_closed());
        assert!(model.probe("webp").is_none());
        assert!(CostModel::new(0).probe("webp").is_none());
    }

    #[test]
    fn correction_is_bounded() {
        let model = CostModel::new(2);
        model.observe("odd", MIB, 1000 * MIB);
        assert_eq!(model.correct("odd", MIB), 16 * MIB);
    }
}
