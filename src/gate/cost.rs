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

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use serde::Serialize;

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
}

/// Per-class corrections, shared by every reservation of a gate.
#[derive(Debug, Default)]
pub(crate) struct CostModel {
    classes: Mutex<HashMap<String, ClassHistory>>,
}

#[derive(Debug, Default)]
struct ClassHistory {
    ratios: VecDeque<f64>,
    observed: u64,
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
        let model = CostModel::default();
        assert_eq!(model.correct("jpeg", 100 * MIB), 100 * MIB);
    }

    #[test]
    fn one_underestimated_job_raises_the_next_estimates() {
        let model = CostModel::default();
        model.observe("jpeg", 50 * MIB, 150 * MIB);
        assert_eq!(model.correct("jpeg", 50 * MIB), 150 * MIB);
        assert_eq!(model.correct("png", 50 * MIB), 50 * MIB);
    }

    #[test]
    fn overestimates_are_forgotten_only_after_a_full_window() {
        let model = CostModel::default();
        model.observe("gif", 100 * MIB, 200 * MIB);
        for _ in 0..WINDOW - 1 {
            model.observe("gif", 100 * MIB, 50 * MIB);
        }
        assert_eq!(model.correct("gif", 100 * MIB), 200 * MIB);

        model.observe("gif", 100 * MIB, 50 * MIB);
        assert_eq!(model.correct("gif", 100 * MIB), 50 * MIB);
    }

    #[test]
    fn correction_is_bounded() {
        let model = CostModel::default();
        model.observe("odd", MIB, 1000 * MIB);
        assert_eq!(model.correct("odd", MIB), 16 * MIB);
    }
}
