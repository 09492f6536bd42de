//! The controller's published state, encoded as gauges and counters.
//!
//! The state's totals (admissions, refusals, purges, adjustments, the
//! kernel's OOM kills) are already monotonic counts kept by the gate, the
//! controller and the kernel. They are encoded as counters straight from
//! the copy taken at scrape time, by a collector, rather than mirrored into
//! prometheus-client counters by increments of the difference since the
//! last scrape: there is no second copy that could drift from the state
//! (two scrapes at once, a missed scrape), and a series appears exactly
//! when the state has it (a new class, a cgroup that became readable).

use std::fmt;
use std::sync::{Mutex, PoisonError};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{
    DescriptorEncoder, EncodeCounterValue, EncodeGaugeValue, EncodeLabelSet, EncodeMetric,
    MetricEncoder,
};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

use crate::controller::AdmissionState;
use crate::gate::Binding;
use crate::memory::{CeilingSource, CgroupStats, JemallocStats, MemorySample, Pressure};

/// Holds the last observed state and encodes it on each scrape. The server
/// hands it the gate's accounts read at scrape time, so that they agree
/// with the job histograms.
#[derive(Debug, Default)]
pub(super) struct StateCollector {
    latest: Mutex<Option<AdmissionState>>,
}

/// Writes one metric family after another to a scrape.
struct Families<'a> {
    encoder: DescriptorEncoder<'a>,
}

/// One labelled series: its labels and its value.
type Series<L, V> = (L, V);

impl StateCollector {
    pub(super) fn observe(&self, state: &AdmissionState) {
        // A panic elsewhere while the lock was held leaves at worst an
        // older snapshot, which the next scrape replaces.
        let mut latest = self.latest.lock().unwrap_or_else(PoisonError::into_inner);
        *latest = Some(state.clone());
    }
}

impl Collector for StateCollector {
    fn encode(&self, encoder: DescriptorEncoder) -> fmt::Result {
        let latest = self.latest.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(state) = latest.as_ref() else {
            // Nothing was observed yet: no figure is better than a zero
            // that an operator would read as a measurement.
            return Ok(());
        };

        let mut out = Families { encoder };
        encode_sample(&mut out, state)?;
        encode_law(&mut out, state)?;
        encode_gate(&mut out, state)?;
        encode_decisions(&mut out, state)?;
        encode_costs(&mut out, state)
    }
}

impl Families<'_> {
    /// The registry ends the help of the metrics it holds with a period;
    /// the same here, so that every HELP line reads alike.
    fn describe<'s>(
        &'s mut self,
        name: &'s str,
        help: &str,
        metric_type: MetricType,
    ) -> Result<MetricEncoder<'s>, fmt::Error> {
        let help = format!("{help}.");
        self.encoder
            .encode_descriptor(name, &help, None, metric_type)
    }

    fn gauge(&mut self, name: &str, help: &str, value: impl EncodeGaugeValue) -> fmt::Result {
        self.one(name, help, ConstGauge::new(value))
    }

    fn counter(&mut self, name: &str, help: &str, value: impl EncodeCounterValue) -> fmt::Result {
        self.one(name, help, ConstCounter::new(value))
    }

    fn gauges<L: EncodeLabelSet, V: EncodeGaugeValue>(
        &mut self,
        name: &str,
        help: &str,
        series: impl IntoIterator<Item = Series<L, V>>,
    ) -> fmt::Result {
        let mut family = self.describe(name, help, MetricType::Gauge)?;
        for (labels, value) in series {
            ConstGauge::new(value).encode(family.encode_family(&labels)?)?;
        }
        Ok(())
    }

    fn counters<L: EncodeLabelSet, V: EncodeCounterValue>(
        &mut self,
        name: &str,
        help: &str,
        series: impl IntoIterator<Item = Series<L, V>>,
    ) -> fmt::Result {
        let mut family = self.describe(name, help, MetricType::Counter)?;
        for (labels, value) in series {
            ConstCounter::new(value).encode(family.encode_family(&labels)?)?;
        }
        Ok(())
    }

    fn one(&mut self, name: &str, help: &str, metric: impl EncodeMetric) -> fmt::Result {
        let encoder = self.describe(name, help, metric.metric_type())?;
        metric.encode(encoder)
    }
}

/// The readings of the sample; a reading the sample lacks is left out.
fn encode_sample(out: &mut Families<'_>, state: &AdmissionState) -> fmt::Result {
    let sample: &MemorySample = &state.sample;
    out.gauges(
        "working_set_bytes",
        "Memory the controller steers by, from the best reading this machine \
         offers; the signal label names which one",
        [([("signal", sample.signal.as_str())], sample.working_set)],
    )?;
    if let Some(jemalloc) = &sample.jemalloc {
        encode_jemalloc(out, jemalloc)?;
    }
    if let Some(cgroup) = &sample.cgroup {
        encode_cgroup(out, cgroup)?;
    }
    if let Some(rss) = sample.process_rss {
        out.gauge(
            "process_rss_bytes",
            "Resident set of this process, from /proc/self/statm",
            rss,
        )?;
    }
    Ok(())
}

fn encode_jemalloc(out: &mut Families<'_>, stats: &JemallocStats) -> fmt::Result {
    out.gauge(
        "jemalloc_allocated_bytes",
        "Heap the program has allocated and not freed",
        stats.allocated,
    )?;
    out.gauge(
        "jemalloc_active_bytes",
        "Heap pages holding at least one allocation",
        stats.active,
    )?;
    out.gauge(
        "jemalloc_resident_bytes",
        "Resident pages jemalloc maps, freed pages not yet returned to the \
         OS included",
        stats.resident,
    )?;
    out.gauge(
        "jemalloc_retained_bytes",
        "Virtual memory jemalloc keeps mapped for reuse after returning it \
         to the OS; not resident",
        stats.retained,
    )?;
    out.gauge(
        "jemalloc_metadata_bytes",
        "Memory jemalloc uses for its own bookkeeping",
        stats.metadata,
    )
}

fn encode_cgroup(out: &mut Families<'_>, stats: &CgroupStats) -> fmt::Result {
    out.gauge(
        "cgroup_usage_bytes",
        "Memory charged to the container's cgroup, page cache included",
        stats.usage,
    )?;
    if let Some(limit) = stats.limit {
        out.gauge(
            "cgroup_limit_bytes",
            "Tightest memory limit on the cgroup and its ancestors; absent \
             when unlimited",
            limit,
        )?;
    }
    out.gauge(
        "cgroup_inactive_file_bytes",
        "Page cache the kernel drops first under pressure",
        stats.inactive_file,
    )?;
    out.gauge(
        "cgroup_working_set_bytes",
        "Cgroup usage minus inactive file pages: what the OOM killer holds \
         against the limit",
        stats.working_set,
    )?;
    out.counter(
        "cgroup_oom_kills",
        "Processes the kernel OOM-killed in this cgroup, as the kernel \
         counts them (it may predate this process)",
        stats.oom_kills,
    )?;
    match &stats.pressure {
        Some(pressure) => encode_pressure(out, pressure),
        None => Ok(()),
    }
}

/// PSI averages are percents in the kernel's files; they are exposed as
/// ratios, Prometheus's base unit, and the stall totals as seconds.
fn encode_pressure(out: &mut Families<'_>, psi: &Pressure) -> fmt::Result {
    out.gauge(
        "cgroup_pressure_some_avg10_ratio",
        "Share of the last 10 s in which at least one task of the cgroup \
         stalled on memory (PSI some avg10, 0 to 1)",
        psi.some_avg10 / 100.0,
    )?;
    out.gauge(
        "cgroup_pressure_full_avg10_ratio",
        "Share of the last 10 s in which all non-idle tasks of the cgroup \
         stalled on memory at once (PSI full avg10, 0 to 1)",
        psi.full_avg10 / 100.0,
    )?;
    out.counter(
        "cgroup_pressure_some_seconds",
        "Time in which at least one task of the cgroup stalled on memory \
         (PSI some total)",
        psi.some_total_us as f64 / 1e6,
    )?;
    out.counter(
        "cgroup_pressure_full_seconds",
        "Time in which all non-idle tasks of the cgroup stalled on memory \
         (PSI full total)",
        psi.full_total_us as f64 / 1e6,
    )
}

/// The ceiling, the watermarks and the capacity law's estimates.
fn encode_law(out: &mut Families<'_>, state: &AdmissionState) -> fmt::Result {
    out.gauges(
        "ceiling_bytes",
        "Memory the working set is steered under; the source label names the \
         setting it came from",
        [(
            [("source", ceiling_source(state.ceiling.source))],
            state.ceiling.bytes,
        )],
    )?;
    out.gauge(
        "ceiling_limit_bytes",
        "Limit the ceiling was checked against or derived from: the container \
         limit when one was detected, else memory.fallback_limit",
        state.ceiling.limit,
    )?;
    out.gauge(
        "high_watermark_bytes",
        "Working set above which pressure engages: capacity is cut and the \
         allocator purged (controller.high_watermark of the ceiling)",
        state.high_watermark,
    )?;
    out.gauge(
        "low_watermark_bytes",
        "Working set below which pressure is released and capacity may grow \
         (controller.low_watermark of the ceiling)",
        state.low_watermark,
    )?;
    out.gauge(
        "unreserved_bytes",
        "Memory that no reservation covers, as the controller estimates it",
        state.unreserved,
    )?;
    out.gauge(
        "bound_bytes",
        "Most the capacity may be now: high watermark minus unreserved",
        state.bound,
    )?;
    out.gauge(
        "pressure",
        "1 while memory pressure is engaged, else 0",
        i64::from(state.pressure),
    )
}

fn encode_gate(out: &mut Families<'_>, state: &AdmissionState) -> fmt::Result {
    let gate = &state.gate;
    out.gauge(
        "capacity_bytes",
        "Memory jobs may hold in total, as the controller last set it",
        gate.capacity,
    )?;
    out.gauge("reserved_bytes", "Memory jobs hold now", gate.reserved)?;
    out.gauge(
        "owed_bytes",
        "Held memory the gate keeps as jobs end, because capacity was cut \
         below what was reserved",
        gate.owed,
    )?;
    out.gauge(
        "max_reservation_bytes",
        "Largest reservation the gate accepts; larger jobs are refused with \
         too_large",
        gate.max_reservation,
    )?;
    out.gauge(
        "in_flight",
        "Reservations alive, running or not",
        gate.in_flight,
    )?;
    out.gauge("running", "Reservations that hold a run slot", gate.running)?;
    out.gauge(
        "running_limit",
        "How many jobs may run at once, as the controller last set it",
        gate.running_limit,
    )?;
    out.gauge(
        "queued",
        "Jobs waiting for memory or a run slot",
        gate.queued,
    )?;
    out.gauges(
        "waiting",
        "Jobs waiting, by what they need: memory, or a run slot (cpu)",
        [
            ([("need", "memory")], gate.waiting_memory),
            ([("need", "cpu")], gate.waiting_running),
        ],
    )?;
    out.gauges(
        "binding",
        "1 for the limit that holds jobs back (memory, cpu, or none when \
         nothing waits), 0 for the others",
        [Binding::None, Binding::Memory, Binding::Cpu].map(|limit| {
            (
                [("limit", binding(limit))],
                i64::from(limit == state.binding),
            )
        }),
    )?;
    out.gauge(
        "draining",
        "1 once the server is shutting down and refuses new jobs, else 0",
        i64::from(gate.draining),
    )
}

/// The totals of what the gate and the controller decided.
fn encode_decisions(out: &mut Families<'_>, state: &AdmissionState) -> fmt::Result {
    let gate = &state.gate;
    out.counter("admitted", "Reservations the gate granted", gate.admitted)?;
    out.counters(
        "refused",
        "Jobs the gate refused, by reason: queue_full, wait_timed_out, \
         too_large, draining, shed",
        [
            ([("reason", "queue_full")], gate.refused.queue_full),
            ([("reason", "wait_timed_out")], gate.refused.wait_timed_out),
            ([("reason", "too_large")], gate.refused.too_large),
            ([("reason", "draining")], gate.refused.draining),
            ([("reason", "shed")], gate.refused.shed),
        ],
    )?;
    out.counter(
        "shed_jobs",
        "Running jobs the controller shed because memory kept rising past \
         the high watermark",
        state.shed_jobs,
    )?;
    out.counter(
        "purges",
        "Times the controller asked the allocator to return freed pages to \
         the OS",
        state.purges,
    )?;
    out.counters(
        "adjustments",
        "Changes the controller made to a limit (capacity, running_limit), \
         by limit and reason",
        state.adjustments.iter().map(|(key, &count)| {
            let (limit, reason) = key.split_once('/').unwrap_or((key, ""));
            ([("limit", limit), ("reason", reason)], count)
        }),
    )?;
    out.counter(
        "controller_ticks",
        "Ticks of the controller since it started; a flat rate means it \
         stopped steering",
        state.tick,
    )
}

fn encode_costs(out: &mut Families<'_>, state: &AdmissionState) -> fmt::Result {
    out.gauges(
        "cost_factor",
        "Learned correction the estimates of a job class are multiplied by",
        state
            .costs
            .iter()
            .map(|cost| ([("class", cost.class.as_str())], cost.factor)),
    )?;
    out.gauges(
        "cost_probing",
        "1 while a job class is probed (no job of it has finished, so few may \
         run at once), else 0",
        state
            .costs
            .iter()
            .map(|cost| ([("class", cost.class.as_str())], i64::from(cost.probing))),
    )
}

fn ceiling_source(source: CeilingSource) -> &'static str {
    match source {
        CeilingSource::Absolute => "absolute",
        CeilingSource::RatioOfContainerLimit => "ratio_of_container_limit",
        CeilingSource::RatioOfFallbackLimit => "ratio_of_fallback_limit",
    }
}

fn binding(limit: Binding) -> &'static str {
    match limit {
        Binding::None => "none",
        Binding::Memory => "memory",
        Binding::Cpu => "cpu",
    }
}
