//! The figures of a long run: whether memory drifts once warm, whether
//! the gate's capacity swings, and whether every reservation came back
//! when the load stopped.
//!
//! - *Drift*: the cgroup's working set averaged over the first minute after
//!   the warm-up and over the last minute of the load; drift is the change
//!   between the two, as a share of the first. Leaked or retained memory
//!   shows as a rise. Every minute's average is kept, to show the path.
//! - *Capacity*: the memory the gate lets jobs hold, sampled every 50 ms
//!   after the warm-up. Its coefficient of variation (standard deviation
//!   over mean) is the measure of swinging, and *swings* counts reversals
//!   of direction by more than [`SWING`] of the mean, per minute: a
//!   controller that hunts shows as many large reversals, one that holds
//!   steady as none.
//! - *Returned*: the gate's last sample, taken after the last answer, must
//!   show nothing reserved, running, queued or in flight.

use serde::Serialize;

use crate::sampler::{GatePoint, MemoryPoint, Series};

/// The averaging window of the drift, in seconds.
const WINDOW_S: f64 = 60.0;

/// A reversal of capacity counts as a swing when it moves at least this
/// share of the mean capacity.
pub const SWING: f64 = 0.10;

const MIB: f64 = (1u64 << 20) as f64;

/// What a long run shows; see the module's documentation.
#[derive(Clone, Debug, Serialize)]
pub struct Stability {
    /// Seconds left out at the start.
    pub warmup_s: f64,
    /// When the last request was due, in seconds: the end of the load.
    pub load_end_s: f64,
    /// The working set's mean per minute after the warm-up, in MiB.
    pub minute_means_mib: Vec<f64>,
    /// Change from the first minute after the warm-up to the last minute
    /// of the load, in percent of the first.
    pub drift_pct: Option<f64>,
    /// Mean capacity after the warm-up, in MiB.
    pub capacity_mean_mib: f64,
    /// Its standard deviation over its mean, in percent.
    pub capacity_cv_pct: f64,
    /// Reversals of capacity by at least [`SWING`] of its mean, per
    /// minute.
    pub swings_per_minute: f64,
    /// Share of the samples after the warm-up with pressure engaged, in
    /// percent.
    pub pressure_pct: f64,
    /// The gate's last sample, after the last answer.
    pub end: Option<GatePoint>,
}

impl Stability {
    /// The figures of `series`, leaving out the first `warmup_s` and
    /// ending the load at `load_end_s`.
    pub fn of(series: &Series, warmup_s: f64, load_end_s: f64) -> Self {
        let (from, to) = (warmup_s * 1000.0, load_end_s * 1000.0);
        let minute_means_mib = minute_means(&series.memory, from, to);
        let drift_pct = match (minute_means_mib.first(), minute_means_mib.last()) {
            (Some(&first), Some(&last)) if minute_means_mib.len() >= 2 && first > 0.0 => {
                Some(100.0 * (last - first) / first)
            }
            _ => None,
        };

        let capacity: Vec<f64> = series
            .gate
            .iter()
            .filter(|p| p.t_ms >= from && p.t_ms <= to)
            .map(|p| p.capacity as f64)
            .collect();
        let (mean, sd) = mean_sd(&capacity);
        let minutes = ((to - from) / 60_000.0).max(f64::EPSILON);
        let pressured = series
            .gate
            .iter()
            .filter(|p| p.t_ms >= from && p.t_ms <= to && p.pressure)
            .count();

        Self {
            warmup_s,
            load_end_s,
            minute_means_mib,
            drift_pct,
            capacity_mean_mib: mean / MIB,
            capacity_cv_pct: if mean > 0.0 { 100.0 * sd / mean } else { 0.0 },
            swings_per_minute: swings(&capacity, SWING * mean) as f64 / minutes,
            pressure_pct: 100.0 * pressured as f64 / capacity.len().max(1) as f64,
            end: series.gate.last().cloned(),
        }
    }

    /// Whether the last sample shows every reservation returned.
    pub fn returned(&self) -> bool {
        self.end
            .as_ref()
            .is_some_and(|p| p.reserved == 0 && p.in_flight == 0 && p.running == 0 && p.queued == 0)
    }

    /// The figures as markdown lines.
    pub fn markdown(&self, label: &str) -> String {
        let drift = self
            .drift_pct
            .map_or_else(|| "-".to_owned(), |d| format!("{d:+.1}%"));
        let minutes: Vec<String> = self
            .minute_means_mib
            .iter()
            .map(|m| format!("{m:.0}"))
            .collect();
        let end = self.end.as_ref().map_or_else(
            || "no sample".to_owned(),
            |p| {
                format!(
                    "{} bytes reserved, {} in flight, {} running, {} queued",
                    p.reserved, p.in_flight, p.running, p.queued
                )
            },
        );
        format!(
            "\n- {label}: after {:.0} s of warm-up and until the load ended at \
             {:.0} s: working set drift {drift} (minute means, MiB: {}); \
             capacity {:.0} MiB on average, coefficient of variation \
             {:.1}%, {:.2} swings of {:.0}% or more per minute; pressure \
             engaged {:.1}% of the time. After the last answer: {end}, \
             {}.\n",
            self.warmup_s,
            self.load_end_s,
            minutes.join(" "),
            self.capacity_mean_mib,
            self.capacity_cv_pct,
            self.swings_per_minute,
            SWING * 100.0,
            self.pressure_pct,
            if self.returned() {
                "every reservation returned"
            } else {
                "NOT every reservation returned"
            },
        )
    }
}

/// The mean working set of each whole minute between `from` and `to` (ms).
fn minute_means(memory: &[MemoryPoint], from: f64, to: f64) -> Vec<f64> {
    let window = WINDOW_S * 1000.0;
    let count = ((to - from) / window).floor().max(0.0) as usize;
    (0..count)
        .filter_map(|i| {
            let start = from + i as f64 * window;
            let values: Vec<f64> = memory
                .iter()
                .filter(|p| p.t_ms >= start && p.t_ms < start + window)
                .map(|p| p.working_set as f64 / MIB)
                .collect();
            (!values.is_empty()).then(|| mean_sd(&values).0)
        })
        .collect()
}

fn mean_sd(values: &[f64]) -> (f64, f64) {
    if values.is_empty() {
        return (0.0, 0.0);
    }
    let n = values.len() as f64;
    let mean = values.iter().sum::<f64>() / n;
    let var = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n;
    (mean, var.sqrt())
}

/// Reversals of direction by at least `threshold`: the zigzag of the
/// series with that minimum move.
fn swings(values: &[f64], threshold: f64) -> usize {
    let Some(&first) = values.first() else {
        return 0;
    };
    if threshold <= 0.0 {
        return 0;
    }
    let (mut low, mut high) = (first, first);
    // +1 rising, -1 falling, 0 not yet known.
    let mut direction = 0i8;
    let mut reversals = 0;
    for &v in values {
        match direction {
            1 if v > high => high = v,
            1 if high - v >= threshold => {
                reversals += 1;
                direction = -1;
                low = v;
            }
            -1 if v < low => low = v,
            -1 if v - low >= threshold => {
                reversals += 1;
                direction = 1;
                high = v;
            }
            0 if v - low >= threshold => {
                direction = 1;
                high = v;
            }
            0 if high - v >= threshold => {
                direction = -1;
                low = v;
            }
            _ => {
                low = low.min(v);
                high = high.max(v);
            }
        }
    }
    reversals
}
