//! The running-jobs limit, sized from service times.
//!
//! More CPU-bound jobs than the machine can run at once do not finish
//! sooner: they share the cores, each takes longer, and each holds its
//! memory longer. The limit follows a latency gradient in the spirit of
//! Netflix's concurrency-limits (Gradient2) and Envoy's adaptive
//! concurrency: compare recent service times with a no-load baseline,
//! scale the limit by the ratio, and add a small allowance so that the
//! limit keeps probing upwards.
//!
//! Jobs differ in size, so service times are compared per class and per
//! byte of estimate: a 40 MP image is not slow because it takes longer than
//! a thumbnail.

use std::collections::HashMap;

use tower_acc::{Algorithm, Gradient2};

use crate::gate::{AdmissionMode, Completion, GateSettings, UNBOUNDED_RUNNING};

/// How much of a new sample moves the no-load baseline down (it falls fast:
/// a quick job proves the machine can be that quick) and up (it rises very
/// slowly, so that the baseline is not dragged up by the queueing it is
/// meant to detect, yet follows a real change in the work over about a
/// thousand jobs).
const BASELINE_DOWN: f64 = 0.2;
const BASELINE_UP: f64 = 0.002;

/// The gradient is clamped to this range so that one slow job cannot halve
/// the limit twice in a row.
const MIN_GRADIENT: f64 = 0.5;

/// Weight of each tick's proposal in the limit.
const SMOOTHING: f64 = 0.2;

/// Service times are compared per this many bytes of estimate.
const BYTES_PER_COST_UNIT: f64 = (1u64 << 20) as f64;

/// How the running limit is set, by admission mode.
#[derive(Debug)]
pub enum RunningPolicy {
    /// memgate's gradient on service time per byte, per class.
    Gradient(RunningLimit),
    /// Gradient2 on raw job latency, as latency-based limiters do.
    Latency {
        /// The algorithm, fed every finished job's service time.
        algorithm: Gradient2,
        /// The bounds of the limit (`gate.min_running`, `gate.max_running`).
        min: usize,
        /// See `min`.
        max: usize,
    },
    /// A limit that never moves: a fixed pool, or no limit at all.
    Fixed(usize),
}

impl RunningPolicy {
    /// The policy of `settings.mode`, starting at `gate.max_running` (or
    /// without a limit in `unbounded` mode).
    pub fn new(settings: &GateSettings) -> Self {
        let (min, max) = (settings.min_running, settings.max_running);
        match settings.mode {
            AdmissionMode::Adaptive => Self::Gradient(RunningLimit::new(min, max)),
            AdmissionMode::Latency => Self::Latency {
                algorithm: Gradient2::builder()
                    .initial_limit(max)
                    .min_limit(min)
                    .max_limit(max)
                    .build(),
                min,
                max,
            },
            AdmissionMode::Fixed => Self::Fixed(max),
            AdmissionMode::Unbounded => Self::Fixed(UNBOUNDED_RUNNING),
        }
    }

    /// The limit the policy starts with.
    pub fn limit(&self) -> usize {
        match self {
            Self::Gradient(limit) => limit.limit(),
            Self::Latency {
                algorithm,
                min,
                max,
            } => algorithm.max_concurrency().clamp(*min, *max),
            Self::Fixed(limit) => *limit,
        }
    }

    /// Folds the jobs that finished since the last tick into the limit,
    /// with `running` jobs running now, and returns the new limit.
    pub fn update(&mut self, completions: &[Completion], running: usize) -> usize {
        match self {
            Self::Gradient(limit) => limit.update(completions, running),
            Self::Latency { algorithm, .. } => {
                // Jobs that ended since the last tick were running beside
                // those running now.
                let in_flight = running + completions.len();
                for completion in completions {
                    algorithm.update(completion.service_time, in_flight, false, false);
                }
                self.limit()
            }
            Self::Fixed(limit) => *limit,
        }
    }

    /// Why the limit moved, as adjustments and logs name it.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Gradient(_) => "latency_gradient",
            Self::Latency { .. } => "gradient2",
            Self::Fixed(_) => "fixed",
        }
    }
}

/// The running limit's memory between ticks.
#[derive(Debug)]
pub struct RunningLimit {
    limit: f64,
    min: usize,
    max: usize,
    baselines: HashMap<String, f64>,
}

impl RunningLimit {
    /// A limit between `min` and `max`, starting at `max`.
    pub fn new(min: usize, max: usize) -> Self {
        Self {
            limit: max as f64,
            min,
            max,
            baselines: HashMap::new(),
        }
    }

    /// The current limit.
    pub fn limit(&self) -> usize {
        (self.limit.round() as usize).clamp(self.min, self.max)
    }

    /// Folds in the jobs that ended since the last tick; `running` is how
    /// many hold a run slot now. Returns the new limit.
    pub fn update(&mut self, completions: &[Completion], running: usize) -> usize {
        let gradients: Vec<f64> = completions.iter().map(|c| self.gradient(c)).collect();
        if gradients.is_empty() {
            return self.limit();
        }
        let gradient = gradients.iter().sum::<f64>() / gradients.len() as f64;

        // The square root lets a small limit grow fast and a large one
        // slowly, as in Gradient2.
        let allowance = self.limit.sqrt();
        let mut proposal = self.limit * gradient + allowance;

        // A limit that is not used tells nothing about the machine: do not
        // raise it while fewer than half the slots are busy.
        if (running as f64) < self.limit / 2.0 {
            proposal = proposal.min(self.limit);
        }

        let smoothed = self.limit * (1.0 - SMOOTHING) + proposal * SMOOTHING;
        self.limit = smoothed.clamp(self.min as f64, self.max as f64);
        self.limit()
    }

    /// This job's gradient: its class's baseline over its own time per
    /// byte, between `MIN_GRADIENT` and 1.
    fn gradient(&mut self, completion: &Completion) -> f64 {
        let units = (completion.estimate as f64 / BYTES_PER_COST_UNIT).max(1.0);
        let sample = completion.service_time.as_secs_f64() / units;
        if sample <= 0.0 {
            return 1.0;
        }

        let baseline = self
            .baselines
            .entry(completion.class.clone())
            .or_insert(sample);
        let weight = if sample < *baseline {
            BASELINE_DOWN
        } else {
            BASELINE_UP
        };
        *baseline += (sample - *baseline) * weight;

        (*baseline / sample).clamp(MIN_GRADIENT, 1.0)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn job(ms: u64) -> Completion {
        Completion {
            class: "synthetic".to_owned(),
            service_time: Duration::from_millis(ms),
            estimate: 100 << 20,
            reserved: 100 << 20,
            peak: None,
        }
    }

    #[test]
    fn service_times_that_grow_with_concurrency_pull_the_limit_down() {
        let mut limit = RunningLimit::new(1, 16);
        limit.update(&[job(100)], 16);

        // Sixteen jobs sharing two cores take eight times as long.
        for _ in 0..50 {
            limit.update(&[job(800)], 16);
        }
        assert!(limit.limit() <= 8, "limit {}", limit.limit());
    }

    #[test]
    fn steady_service_times_let_the_limit_climb_back() {
        let mut limit = RunningLimit::new(1, 16);
        limit.limit = 2.0;
        for _ in 0..100 {
            let busy = limit.limit();
            limit.update(&[job(100)], busy);
        }
        assert_eq!(limit.limit(), 16);
    }

    #[test]
    fn an_unused_limit_is_not_raised() {
        let mut limit = RunningLimit::new(1, 16);
        limit.limit = 8.0;
        for _ in 0..50 {
            limit.update(&[job(100)], 1);
        }
        assert_eq!(limit.limit(), 8);
    }

    #[test]
    fn the_limit_stays_within_its_bounds() {
        let mut limit = RunningLimit::new(5, 6);
        limit.update(&[job(10)], 6);
        for _ in 0..100 {
            limit.update(&[job(10_000)], 6);
            assert!((5..=6).contains(&limit.limit()));
        }
        assert_eq!(limit.limit(), 5);
    }

    #[test]
    fn the_allowance_keeps_a_floor_of_about_four_under_any_slowdown() {
        // At the clamped gradient of one half, the limit settles where
        // L = L / 2 + sqrt(L), that is at four.
        let mut limit = RunningLimit::new(1, 16);
        limit.update(&[job(10)], 16);
        for _ in 0..200 {
            limit.update(&[job(10_000)], 16);
        }
        assert_eq!(limit.limit(), 4);
    }
}
