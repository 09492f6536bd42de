//! Metrics in the Prometheus text format, served on `/metrics`.
//!
//! Two kinds of figures live here. What the controller published on its
//! last tick (every memory reading, the gate's accounts, the totals of its
//! decisions) is copied at scrape time by [`Metrics::observe_state`] and
//! encoded from that copy, so a scrape shows exactly the state that
//! `/v1/admission` shows. What happens to each job and request (durations,
//! waits, estimate errors) is recorded as it happens, in histograms.
//!
//! Names use the words of the state's fields and of the configuration
//! keys, prefixed `memgate_`, with the unit last (`_bytes`, `_seconds`,
//! `_ratio`) and `_total` on counters. Every [`Metrics`] has its own
//! registry: several servers in one process do not share figures.
//!
//! # Examples
//!
//! ```
//! use std::time::Duration;
//!
//! use memgate::telemetry::metrics::{JobOutcome, Metrics};
//!
//! let metrics = Metrics::new();
//! metrics.job_finished("jpeg", JobOutcome::Done, Duration::from_millis(80));
//!
//! let text = metrics.render();
//! let series = r#"memgate_job_duration_seconds_count{class="jpeg",outcome="done"}"#;
//! assert!(text.contains(&format!("{series} 1")));
//! ```

use std::fmt::{self, Write as _};
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::prometheus_text;
use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::controller::AdmissionState;

mod state;

use state::StateCollector;

/// The `Content-Type` of [`Metrics::render`]'s output: the Prometheus text
/// format, version 0.0.4.
pub const CONTENT_TYPE: &str = prometheus_text::CONTENT_TYPE;

/// How a job that got a run slot ended, as the `outcome` label spells it.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum JobOutcome {
    /// The work returned its output.
    Done,
    /// The work returned an error (a corrupt image, a decoder limit).
    Failed,
    /// The work ran past `server.job_timeout_ms` and was told to stop.
    Deadline,
    /// The work panicked; its reservation was returned.
    Panicked,
    /// The blocking task was cancelled before it returned (the runtime
    /// shut down).
    Cancelled,
    /// The gate shed the job: memory kept rising past the high watermark.
    Shed,
}

/// The service's metrics: a registry of its own and the figures in it.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    state: Arc<StateCollector>,
    job_duration: Family<JobLabels, Histogram, fn() -> Histogram>,
    queue_wait: Family<ClassLabels, Histogram, fn() -> Histogram>,
    estimate_error: Family<ClassLabels, Histogram, fn() -> Histogram>,
    http_request_duration: Family<HttpLabels, Histogram, fn() -> Histogram>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct JobLabels {
    class: String,
    outcome: JobOutcome,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ClassLabels {
    class: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HttpLabels {
    route: &'static str,
    status: u16,
}

/// Upper bounds of job durations, in seconds. Transcodes measured here run
/// from tens of milliseconds (small images) to a few seconds (a 24 MP
/// progressive JPEG); touching 150 MiB of fresh memory alone takes 0.3 to
/// 0.45 s. The last bound is `server.job_timeout_ms`'s default, 60 s.
const JOB_DURATION_BUCKETS: [f64; 12] = [
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// Upper bounds of waits for memory and a run slot, in seconds. Under a
/// millisecond means the job did not queue; capacity moves once per
/// controller tick (`controller.tick_ms`, 50 ms), hence the bounds near
/// one and a few ticks; a wait ends at `gate.max_wait_ms`, 10 s by default.
const QUEUE_WAIT_BUCKETS: [f64; 11] = [
    0.001, 0.005, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Upper bounds of the ratio of a job's measured peak to its estimate.
/// Estimates are off by factors, not by amounts: the bounds are half
/// octaves (powers of the square root of 2, rounded) from 1/4 to 16, so
/// that 1 (exact), 1.41 and 2 are told apart (a progressive JPEG needs about
/// 1.7 times a baseline one of the same size) and a class wrong by an order
/// of magnitude still lands in a finite bucket.
const ESTIMATE_ERROR_BUCKETS: [f64; 13] = [
    0.25, 0.35, 0.5, 0.71, 1.0, 1.41, 2.0, 2.83, 4.0, 5.66, 8.0, 11.3, 16.0,
];

/// Upper bounds of HTTP request durations, in seconds: health checks,
/// scrapes and immediate refusals answer in about a millisecond, a refusal
/// after a full wait near `gate.max_wait_ms` (10 s), and a transcode spends
/// its upload, its wait and its job, up to `server.job_timeout_ms` (60 s).
const HTTP_DURATION_BUCKETS: [f64; 13] = [
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0, 30.0, 60.0,
];

impl Metrics {
    /// An empty set of metrics in a registry of its own.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("memgate");
        let state = Arc::new(StateCollector::default());
        registry.register_collector(Box::new(Arc::clone(&state)));

        let metrics = Self {
            registry,
            state,
            job_duration: Family::new_with_constructor(job_duration_histogram),
            queue_wait: Family::new_with_constructor(queue_wait_histogram),
            estimate_error: Family::new_with_constructor(estimate_error_histogram),
            http_request_duration: Family::new_with_constructor(http_duration_histogram),
        };
        metrics.register_histograms()
    }

    /// Keeps a copy of the controller's latest published state, to be
    /// rendered as gauges and counters. Call it just before [`Self::render`]
    /// so that a scrape shows the state of that moment.
    pub fn observe_state(&self, state: &AdmissionState) {
        self.state.observe(state);
    }

    /// Records a job's time from taking its run slot to its end.
    pub fn job_finished(&self, class: &str, outcome: JobOutcome, duration: Duration) {
        let labels = JobLabels {
            class: class.to_owned(),
            outcome,
        };
        self.job_duration
            .get_or_create(&labels)
            .observe(duration.as_secs_f64());
    }

    /// Records how long a job held a reservation before it got a run slot:
    /// its waits for memory and for CPU, and its upload.
    pub fn queue_wait(&self, class: &str, duration: Duration) {
        self.queue_wait
            .get_or_create(&class_labels(class))
            .observe(duration.as_secs_f64());
    }

    /// Records how far a job's measured peak was from the estimate it was
    /// admitted with, as the ratio peak / estimate. A zero estimate has no
    /// ratio and is not recorded.
    pub fn estimate_error(&self, class: &str, estimate_bytes: u64, peak_bytes: u64) {
        if estimate_bytes == 0 {
            return;
        }
        let ratio = peak_bytes as f64 / estimate_bytes as f64;
        self.estimate_error
            .get_or_create(&class_labels(class))
            .observe(ratio);
    }

    /// Records an answered request by route name and status code.
    pub fn http_request(&self, route: &'static str, status: u16, duration: Duration) {
        let labels = HttpLabels { route, status };
        self.http_request_duration
            .get_or_create(&labels)
            .observe(duration.as_secs_f64());
    }

    /// Every metric in the Prometheus text format ([`CONTENT_TYPE`]).
    pub fn render(&self) -> String {
        let mut text = String::new();
        // Encoding writes into a `String` and the collector's own writes
        // cannot fail, so an error here is a bug in the encoder.
        prometheus_text::encode(&mut text, &self.registry)
            .expect("encoding metrics into a string does not fail");
        text
    }

    fn register_histograms(mut self) -> Self {
        self.registry.register(
            "job_duration_seconds",
            "Time jobs spent running, from taking a run slot to their end, by \
             job class and outcome (done, failed, deadline, panicked, cancelled, shed)",
            self.job_duration.clone(),
        );
        self.registry.register(
            "queue_wait_seconds",
            "Time jobs held a reservation before they got a run slot: upload, \
             wait for memory and wait for CPU, by job class",
            self.queue_wait.clone(),
        );
        self.registry.register(
            "estimate_error_ratio",
            "Measured heap peak of finished jobs divided by the estimate they \
             were admitted with, by job class; above 1 the gate under-reserved",
            self.estimate_error.clone(),
        );
        self.registry.register(
            "http_request_duration_seconds",
            "Time from reading a request's head to its answer, by route and \
             status code",
            self.http_request_duration.clone(),
        );
        self
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl JobOutcome {
    /// The outcome's name as metrics and logs spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Done => "done",
            Self::Failed => "failed",
            Self::Deadline => "deadline",
            Self::Panicked => "panicked",
            Self::Cancelled => "cancelled",
            Self::Shed => "shed",
        }
    }
}

impl fmt::Display for JobOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl EncodeLabelValue for JobOutcome {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> fmt::Result {
        encoder.write_str(self.as_str())
    }
}

fn class_labels(class: &str) -> ClassLabels {
    ClassLabels {
        class: class.to_owned(),
    }
}

fn job_duration_histogram() -> Histogram {
    Histogram::new(JOB_DURATION_BUCKETS)
}

fn queue_wait_histogram() -> Histogram {
    Histogram::new(QUEUE_WAIT_BUCKETS)
}

fn estimate_error_histogram() -> Histogram {
    Histogram::new(ESTIMATE_ERROR_BUCKETS)
}

fn http_duration_histogram() -> Histogram {
    Histogram::new(HTTP_DURATION_BUCKETS)
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use tokio::time::Instant;

    use super::*;
    use crate::controller::{Controller, ControllerSettings};
    use crate::gate::{ClassCost, Gate, GateSettings, RefusalReason};
    use crate::memory::{
        Ceiling, CeilingSettings, CgroupStats, JemallocStats, MemorySample, MemorySource, Pressure,
        Signal,
    };

    const MIB: u64 = 1 << 20;

    /// A scripted machine: memory outside the heap and the heap in use.
    #[derive(Clone, Default)]
    struct Script(Arc<Mutex<(u64, u64, u32)>>);

    impl Script {
        fn set(&self, outside_mib: u64, allocated_mib: u64) {
            let mut script = self.0.lock().unwrap();
            script.0 = outside_mib * MIB;
            script.1 = allocated_mib * MIB;
        }

        fn purges(&self) -> u32 {
            self.0.lock().unwrap().2
        }
    }

    impl MemorySource for Script {
        fn sample(&mut self, at: Instant) -> MemorySample {
            let (outside, allocated, _) = *self.0.lock().unwrap();
            let mut sample = MemorySample::scripted(at, outside + allocated);
            sample.jemalloc = Some(JemallocStats {
                allocated,
                active: allocated,
                resident: allocated,
                retained: 7 * MIB,
                metadata: 3 * MIB,
            });
            sample
        }

        fn purge(&mut self) -> bool {
            self.0.lock().unwrap().2 += 1;
            true
        }
    }

    /// A controller under a 1000 MiB ceiling: high watermark 950 MiB, low
    /// watermark 850 MiB.
    fn controller(script: &Script) -> Controller<Script> {
        let settings = CeilingSettings {
            ceiling_ratio: 1.0,
            ..CeilingSettings::default()
        };
        let ceiling = Ceiling::resolve(&settings, Some(1000 * MIB)).unwrap();
        let gate = Gate::new(
            GateSettings {
                probe_jobs: 0,
                ..GateSettings::default()
            },
            0,
        );
        let settings = ControllerSettings {
            high_watermark: 0.95,
            ..ControllerSettings::default()
        };
        Controller::new(settings, ceiling, gate, script.clone())
    }

    /// The value of the one series written exactly as `series`.
    fn value(text: &str, series: &str) -> Option<f64> {
        let mut values = text.lines().filter_map(|line| {
            let (name, value) = line.rsplit_once(' ')?;
            (name == series).then(|| value.parse::<f64>().unwrap())
        });
        let first = values.next();
        assert!(values.next().is_none(), "{series} written twice:\n{text}");
        first
    }

    fn assert_value(text: &str, series: &str, expected: f64) {
        assert_eq!(value(text, series), Some(expected), "{series} in:\n{text}");
    }

    /// A state as a controller publishes it after one tick at 100 MiB.
    fn published_state() -> AdmissionState {
        let script = Script::default();
        script.set(100, 0);
        controller(&script).tick(Instant::now())
    }

    #[tokio::test(start_paused = true)]
    async fn a_scrape_shows_what_the_controller_decided_under_pressure() {
        let script = Script::default();
        script.set(100, 0);
        let mut controller = controller(&script);
        let gate = controller.gate().clone();
        let _job = gate.reserve("jpeg", 800 * MIB).await.unwrap();
        let refusal = gate.reserve("jpeg", 2000 * MIB).await.unwrap_err();
        assert!(matches!(refusal.reason, RefusalReason::TooLarge { .. }));

        // The job uses 100 MiB more than it reserved: 50 MiB above the high
        // watermark, so capacity is cut to 750 MiB and 50 MiB are owed.
        script.set(100, 900);
        let state = controller.tick(Instant::now());
        let metrics = Metrics::new();
        metrics.observe_state(&state);
        let text = metrics.render();

        let mib = |n: u64| (n * MIB) as f64;
        assert_value(
            &text,
            r#"memgate_working_set_bytes{signal="scripted"}"#,
            mib(1000),
        );
        assert_value(&text, "memgate_jemalloc_allocated_bytes", mib(900));
        assert_value(&text, "memgate_jemalloc_retained_bytes", mib(7));
        assert_value(&text, "memgate_jemalloc_metadata_bytes", mib(3));
        assert_value(
            &text,
            r#"memgate_ceiling_bytes{source="ratio_of_container_limit"}"#,
            mib(1000),
        );
        assert_value(&text, "memgate_high_watermark_bytes", mib(950));
        assert_value(&text, "memgate_low_watermark_bytes", mib(850));
        assert_value(&text, "memgate_capacity_bytes", mib(750));
        assert_value(&text, "memgate_reserved_bytes", mib(800));
        assert_value(&text, "memgate_owed_bytes", mib(50));
        assert_value(&text, "memgate_unreserved_bytes", state.unreserved as f64);
        assert_value(&text, "memgate_bound_bytes", state.bound as f64);
        assert_value(&text, "memgate_pressure", 1.0);
        assert_value(&text, "memgate_in_flight", 1.0);
        assert_value(&text, "memgate_running", 0.0);
        assert_value(&text, "memgate_running_limit", 32.0);
        assert_value(&text, r#"memgate_binding{limit="none"}"#, 1.0);
        assert_value(&text, r#"memgate_binding{limit="memory"}"#, 0.0);
        assert_value(&text, "memgate_draining", 0.0);

        assert_value(&text, "memgate_admitted_total", 1.0);
        assert_value(&text, r#"memgate_refused_total{reason="too_large"}"#, 1.0);
        assert_value(&text, r#"memgate_refused_total{reason="queue_full"}"#, 0.0);
        assert_value(
            &text,
            r#"memgate_adjustments_total{limit="capacity",reason="initial"}"#,
            1.0,
        );
        assert_value(
            &text,
            r#"memgate_adjustments_total{limit="capacity",reason="pressure"}"#,
            1.0,
        );
        assert_value(&text, "memgate_purges_total", f64::from(script.purges()));
        assert!(script.purges() >= 1, "no purge above the high watermark");
        assert_value(&text, "memgate_controller_ticks_total", 1.0);
    }

    #[test]
    fn every_reading_of_a_full_sample_is_a_gauge() {
        let mut state = published_state();
        state.sample.signal = Signal::CgroupWorkingSet;
        state.sample.process_rss = Some(400 * MIB);
        state.sample.cgroup = Some(CgroupStats {
            usage: 1200 * MIB,
            limit: Some(2048 * MIB),
            inactive_file: 200 * MIB,
            working_set: 1000 * MIB,
            oom_kills: 2,
            pressure: Some(Pressure {
                some_avg10: 12.5,
                full_avg10: 2.0,
                some_total_us: 1_500_000,
                full_total_us: 250_000,
                ..Pressure::default()
            }),
        });
        let metrics = Metrics::new();
        metrics.observe_state(&state);
        let text = metrics.render();

        let mib = |n: u64| (n * MIB) as f64;
        assert_value(
            &text,
            r#"memgate_working_set_bytes{signal="cgroup_working_set"}"#,
            state.working_set as f64,
        );
        assert_value(&text, "memgate_process_rss_bytes", mib(400));
        assert_value(&text, "memgate_cgroup_usage_bytes", mib(1200));
        assert_value(&text, "memgate_cgroup_limit_bytes", mib(2048));
        assert_value(&text, "memgate_cgroup_inactive_file_bytes", mib(200));
        assert_value(&text, "memgate_cgroup_working_set_bytes", mib(1000));
        assert_value(&text, "memgate_cgroup_oom_kills_total", 2.0);
        assert_value(&text, "memgate_cgroup_pressure_some_avg10_ratio", 0.125);
        assert_value(&text, "memgate_cgroup_pressure_full_avg10_ratio", 0.02);
        assert_value(&text, "memgate_cgroup_pressure_some_seconds_total", 1.5);
        assert_value(&text, "memgate_cgroup_pressure_full_seconds_total", 0.25);
    }

    #[test]
    fn readings_the_sample_lacks_are_left_out() {
        let mut state = published_state();
        state.sample.jemalloc = None;
        let metrics = Metrics::new();
        metrics.observe_state(&state);
        let text = metrics.render();

        for absent in [
            "memgate_jemalloc_",
            "memgate_cgroup_",
            "memgate_process_rss",
        ] {
            assert!(!text.contains(absent), "{absent} in:\n{text}");
        }
        assert!(text.contains("memgate_working_set_bytes{"), "{text}");
    }

    #[test]
    fn waiting_binding_draining_and_costs_follow_the_state() {
        let mut state = published_state();
        state.gate.waiting_memory = 2;
        state.gate.waiting_running = 1;
        state.gate.queued = 3;
        state.gate.draining = true;
        state.binding = state.gate.binding();
        state.costs = vec![
            ClassCost {
                class: "png".to_owned(),
                factor: 1.5,
                observed: 4,
                probing: false,
            },
            ClassCost {
                class: "webp".to_owned(),
                factor: 1.0,
                observed: 0,
                probing: true,
            },
        ];
        let metrics = Metrics::new();
        metrics.observe_state(&state);
        let text = metrics.render();

        assert_value(&text, "memgate_queued", 3.0);
        assert_value(&text, r#"memgate_waiting{need="memory"}"#, 2.0);
        assert_value(&text, r#"memgate_waiting{need="cpu"}"#, 1.0);
        assert_value(&text, r#"memgate_binding{limit="memory"}"#, 1.0);
        assert_value(&text, r#"memgate_binding{limit="cpu"}"#, 0.0);
        assert_value(&text, r#"memgate_binding{limit="none"}"#, 0.0);
        assert_value(&text, "memgate_draining", 1.0);
        assert_value(&text, r#"memgate_cost_factor{class="png"}"#, 1.5);
        assert_value(&text, r#"memgate_cost_probing{class="png"}"#, 0.0);
        assert_value(&text, r#"memgate_cost_probing{class="webp"}"#, 1.0);
    }

    #[test]
    fn a_later_scrape_shows_the_later_state() {
        let metrics = Metrics::new();
        let mut state = published_state();
        metrics.observe_state(&state);
        state.gate.admitted = 41;
        metrics.observe_state(&state);

        assert_value(&metrics.render(), "memgate_admitted_total", 41.0);
    }

    #[test]
    fn nothing_of_the_state_is_rendered_before_it_is_observed() {
        let metrics = Metrics::new();
        assert_eq!(metrics.render(), "");

        metrics.job_finished("jpeg", JobOutcome::Failed, Duration::from_millis(5));
        let text = metrics.render();
        assert!(!text.contains("memgate_capacity_bytes"), "{text}");
        assert!(text.contains("# TYPE memgate_job_duration_seconds histogram"));
    }

    #[test]
    fn counters_render_with_total_and_every_family_has_help() {
        let metrics = Metrics::new();
        metrics.observe_state(&published_state());
        metrics.job_finished("jpeg", JobOutcome::Done, Duration::from_millis(80));
        let text = metrics.render();

        let types: Vec<(&str, &str)> = text
            .lines()
            .filter_map(|line| line.strip_prefix("# TYPE "))
            .filter_map(|rest| rest.split_once(' '))
            .collect();
        assert!(types.len() > 30, "{text}");
        for (name, kind) in types {
            assert!(name.starts_with("memgate_"), "{name}");
            assert_eq!(kind == "counter", name.ends_with("_total"), "{name} {kind}");
            let help = format!("# HELP {name} ");
            let line = text.lines().find(|line| line.starts_with(&help));
            assert!(line.is_some_and(|l| l.len() > help.len() + 10), "{name}");
        }
    }

    #[test]
    fn job_durations_fall_in_buckets_by_class_and_outcome() {
        let metrics = Metrics::new();
        metrics.job_finished("jpeg", JobOutcome::Done, Duration::from_millis(80));
        metrics.job_finished("jpeg", JobOutcome::Done, Duration::from_secs(3));
        metrics.job_finished("jpeg", JobOutcome::Deadline, Duration::from_secs(61));
        let text = metrics.render();

        let done = |le: &str| {
            format!(
                r#"memgate_job_duration_seconds_bucket{{class="jpeg",outcome="done",le="{le}"}}"#
            )
        };
        assert_value(&text, &done("0.05"), 0.0);
        assert_value(&text, &done("0.1"), 1.0);
        assert_value(&text, &done("2.5"), 1.0);
        assert_value(&text, &done("5"), 2.0);
        assert_value(&text, &done("+Inf"), 2.0);
        let sum = value(
            &text,
            r#"memgate_job_duration_seconds_sum{class="jpeg",outcome="done"}"#,
        );
        assert!(sum.is_some_and(|sum| (sum - 3.08).abs() < 1e-9), "{text}");
        assert_value(
            &text,
            r#"memgate_job_duration_seconds_bucket{class="jpeg",outcome="deadline",le="60"}"#,
            0.0,
        );
        assert_value(
            &text,
            r#"memgate_job_duration_seconds_count{class="jpeg",outcome="deadline"}"#,
            1.0,
        );
    }

    #[test]
    fn estimate_errors_are_ratios_in_half_octave_buckets_around_one() {
        let metrics = Metrics::new();
        metrics.estimate_error("png", 100 * MIB, 150 * MIB);
        metrics.estimate_error("png", 100 * MIB, 100 * MIB);
        metrics.estimate_error("png", 0, 100 * MIB);
        let text = metrics.render();

        let bucket =
            |le: &str| format!(r#"memgate_estimate_error_ratio_bucket{{class="png",le="{le}"}}"#);
        let bounds: Vec<&str> = text
            .lines()
            .filter(|line| line.starts_with("memgate_estimate_error_ratio_bucket"))
            .filter_map(|line| line.split("le=\"").nth(1)?.split('"').next())
            .collect();
        assert_eq!(bounds.first(), Some(&"0.25"));
        assert_eq!(bounds.len(), 14, "{bounds:?}");
        assert_eq!(bounds[bounds.len() - 2], "16");
        assert_value(&text, &bucket("0.71"), 0.0);
        assert_value(&text, &bucket("1"), 1.0);
        assert_value(&text, &bucket("1.41"), 1.0);
        assert_value(&text, &bucket("2"), 2.0);
        assert_value(
            &text,
            r#"memgate_estimate_error_ratio_count{class="png"}"#,
            2.0,
        );
    }

    #[test]
    fn queue_waits_and_requests_are_recorded_by_their_labels() {
        let metrics = Metrics::new();
        metrics.queue_wait("jpeg", Duration::from_millis(40));
        metrics.http_request("transcode", 503, Duration::from_millis(3));
        metrics.http_request("transcode", 200, Duration::from_millis(700));
        let text = metrics.render();

        assert_value(
            &text,
            r#"memgate_queue_wait_seconds_bucket{class="jpeg",le="0.025"}"#,
            0.0,
        );
        assert_value(
            &text,
            r#"memgate_queue_wait_seconds_bucket{class="jpeg",le="0.05"}"#,
            1.0,
        );
        assert_value(
            &text,
            concat!(
                "memgate_http_request_duration_seconds_bucket",
                r#"{route="transcode",status="503",le="0.005"}"#
            ),
            1.0,
        );
        assert_value(
            &text,
            r#"memgate_http_request_duration_seconds_count{route="transcode",status="200"}"#,
            1.0,
        );
    }

    #[test]
    fn two_servers_in_one_process_keep_their_own_figures() {
        let first = Metrics::new();
        let second = Metrics::new();
        first.http_request("healthz", 200, Duration::from_millis(1));

        let series = r#"memgate_http_request_duration_seconds_count{route="healthz",status="200"}"#;
        assert_value(&first.render(), series, 1.0);
        assert_eq!(value(&second.render(), series), None);
    }
}
