//! The controller: a tokio task that sizes the gate from memory samples.
//!
//! Every tick (`controller.tick_ms`, 50 ms by default) it takes one
//! [`MemorySample`], lets the allocator purge when the working set is past
//! the high watermark or near it with too many freed pages kept, runs the
//! [capacity law](law), folds finished jobs
//! into the [running limit](running), applies both to the [`Gate`], and
//! publishes an [`AdmissionState`] with every figure and the last decision.
//!
//! The controller is driven by [`Controller::tick`] with the time passed in,
//! so tests run it under tokio's paused clock with scripted memory.

use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio::time::{Instant, MissedTickBehavior};

use crate::gate::{AdmissionMode, Binding, ClassCost, Gate, GateState};
use crate::memory::{Ceiling, MemorySample, MemorySource, Signal};

pub mod law;
pub mod running;

use law::{CapacityLaw, Decision, Heap, Inputs, Transition};
use running::RunningPolicy;

/// Settings of the controller, the `[controller]` section of the
/// configuration. Watermarks and steps are fractions of the ceiling.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ControllerSettings {
    /// Time between two samples and decisions. Milliseconds, 10 to 1000.
    pub tick_ms: u64,
    /// Above this share of the ceiling the working set is under pressure:
    /// the allocator purges and capacity is cut. Fraction, above
    /// `low_watermark`, at most 1.
    pub high_watermark: f64,
    /// Pressure is released, and capacity may grow, only below this share
    /// of the ceiling; above it, freed pages kept past the margin between
    /// the high watermark and the ceiling are purged. Fraction, above 0,
    /// below `high_watermark`.
    pub low_watermark: f64,
    /// Capacity cut per byte of working set above the high watermark.
    /// Ratio, above 0, at most 10.
    pub shrink_gain: f64,
    /// Largest capacity increase per tick while recovering. Fraction of the
    /// ceiling, above 0, at most 1.
    pub grow_step: f64,
    /// Time for the unreserved-memory estimate to follow a fall (it follows
    /// a rise at once). Milliseconds, 0 to 600,000.
    pub unreserved_decay_ms: u64,
    /// Shortest time between two purges of the allocator's freed pages.
    /// Milliseconds, 0 to 60,000.
    pub purge_interval_ms: u64,
}

impl Default for ControllerSettings {
    fn default() -> Self {
        Self {
            tick_ms: 50,
            high_watermark: 0.97,
            low_watermark: 0.85,
            shrink_gain: 1.0,
            grow_step: 0.05,
            unreserved_decay_ms: 2_000,
            purge_interval_ms: 50,
        }
    }
}

impl ControllerSettings {
    /// The tick, as a duration.
    pub fn tick(&self) -> Duration {
        Duration::from_millis(self.tick_ms)
    }

    /// Checks the ranges stated on each field; the error names the key.
    pub fn validate(&self) -> Result<(), String> {
        let fraction = |key: &str, v: f64, lo: f64, hi: f64| {
            if v > lo && v <= hi {
                Ok(())
            } else {
                Err(format!("controller.{key}: {v} is outside ({lo}, {hi}]"))
            }
        };
        if !(10..=1000).contains(&self.tick_ms) {
            return Err(format!(
                "controller.tick_ms: {} is outside 10 to 1000",
                self.tick_ms
            ));
        }
        fraction("high_watermark", self.high_watermark, 0.0, 1.0)?;
        fraction(
            "low_watermark",
            self.low_watermark,
            0.0,
            self.high_watermark,
        )?;
        if self.low_watermark >= self.high_watermark {
            return Err(format!(
                "controller.low_watermark: {} is not below controller.high_watermark ({})",
                self.low_watermark, self.high_watermark
            ));
        }
        fraction("shrink_gain", self.shrink_gain, 0.0, 10.0)?;
        fraction("grow_step", self.grow_step, 0.0, 1.0)?;
        if self.unreserved_decay_ms > 600_000 {
            return Err(format!(
                "controller.unreserved_decay_ms: {} is above 600000",
                self.unreserved_decay_ms
            ));
        }
        if self.purge_interval_ms > 60_000 {
            return Err(format!(
                "controller.purge_interval_ms: {} is above 60000",
                self.purge_interval_ms
            ));
        }
        Ok(())
    }
}

/// The capacity of the modes that do not gate memory: 1 PiB, more than
/// any machine has, and within the gate's KiB units and tokio's permits.
pub const UNGATED_CAPACITY: u64 = 1 << 50;

/// A change the controller made to one of the gate's limits.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Adjustment {
    /// The tick it was made on.
    pub tick: u64,
    /// Which limit moved: `capacity` (bytes) or `running_limit` (jobs).
    pub limit: &'static str,
    /// The value before.
    pub from: u64,
    /// The value after.
    pub to: u64,
    /// Why: a capacity [`law::Reason`], or `latency_gradient`.
    pub reason: &'static str,
}

/// Everything the controller knew and decided on its last tick. Sizes are
/// in bytes.
#[derive(Clone, Debug, Serialize)]
pub struct AdmissionState {
    /// Ticks since the controller started.
    pub tick: u64,
    /// The admission policy (`gate.mode`).
    pub mode: AdmissionMode,
    /// The ceiling the working set is steered under, and where it came
    /// from.
    pub ceiling: Ceiling,
    /// The high watermark: pressure above it.
    pub high_watermark: u64,
    /// The low watermark: recovery below it.
    pub low_watermark: u64,
    /// The value steered by.
    pub working_set: u64,
    /// Which reading `working_set` came from.
    pub signal: Signal,
    /// Every reading of the sample.
    pub sample: MemorySample,
    /// Memory that no reservation covers, as the law estimates it.
    pub unreserved: u64,
    /// The most the capacity may be now: high watermark minus unreserved.
    pub bound: u64,
    /// The gate's accounts after this tick's decision.
    pub gate: GateState,
    /// Which limit holds jobs back.
    pub binding: Binding,
    /// Whether pressure is engaged.
    pub pressure: bool,
    /// How many times the allocator was asked to purge.
    pub purges: u64,
    /// Running jobs shed because memory kept rising past the high
    /// watermark.
    pub shed_jobs: u64,
    /// The last change to a limit, on this tick or before.
    pub last_adjustment: Option<Adjustment>,
    /// Every change to a limit since the start, counted by limit and
    /// reason (`capacity/pressure`, `running_limit/latency_gradient`, ...).
    pub adjustments: BTreeMap<String, u64>,
    /// The learned cost corrections per job class.
    pub costs: Vec<ClassCost>,
}

/// The controller task's state.
#[derive(Debug)]
pub struct Controller<S> {
    settings: ControllerSettings,
    ceiling: Ceiling,
    gate: Gate,
    source: S,
    law: CapacityLaw,
    running: RunningPolicy,
    mode: AdmissionMode,
    tick: u64,
    purges: u64,
    shed_jobs: u64,
    binding: Binding,
    last_adjustment: Option<Adjustment>,
    adjustments: BTreeMap<String, u64>,
    state: watch::Sender<AdmissionState>,
}

impl<S: MemorySource> Controller<S> {
    /// A controller for `gate`, steering under `ceiling` with readings
    /// from `source`. It samples once at once and sizes the gate from that
    /// sample, so that the gate is right before the first tick.
    ///
    /// # Panics
    ///
    /// If `settings` fail [`ControllerSettings::validate`]: the
    /// configuration is checked before a controller is built.
    pub fn new(settings: ControllerSettings, ceiling: Ceiling, gate: Gate, mut source: S) -> Self {
        if let Err(e) = settings.validate() {
            panic!("invalid controller settings: {e}");
        }

        let law = CapacityLaw::new(&settings, ceiling.bytes);
        let mode = gate.settings().mode;
        let running = RunningPolicy::new(gate.settings());
        let now = Instant::now();
        let first = source.sample(now);
        let placeholder = AdmissionState {
            tick: 0,
            mode,
            ceiling,
            high_watermark: law.high_watermark(),
            low_watermark: law.low_watermark(),
            working_set: first.working_set,
            signal: first.signal,
            sample: first.clone(),
            unreserved: 0,
            bound: 0,
            gate: gate.state(),
            binding: Binding::None,
            pressure: false,
            purges: 0,
            shed_jobs: 0,
            last_adjustment: None,
            adjustments: BTreeMap::new(),
            costs: Vec::new(),
        };

        let mut controller = Self {
            settings,
            ceiling,
            gate,
            source,
            law,
            running,
            mode,
            tick: 0,
            purges: 0,
            shed_jobs: 0,
            binding: Binding::None,
            last_adjustment: None,
            adjustments: BTreeMap::new(),
            state: watch::Sender::new(placeholder),
        };
        controller.decide(now, first);
        controller
    }

    /// A receiver of every published [`AdmissionState`].
    pub fn subscribe(&self) -> watch::Receiver<AdmissionState> {
        self.state.subscribe()
    }

    /// The gate this controller sizes.
    pub fn gate(&self) -> &Gate {
        &self.gate
    }

    /// One tick at `now`: sample, purge if due, decide, apply, publish.
    pub fn tick(&mut self, now: Instant) -> AdmissionState {
        let mut sample = self.source.sample(now);
        let heap = heap_of(&sample);
        if self.law.wants_purge(now, sample.working_set, heap) && self.source.purge() {
            self.purges += 1;
            let before = sample.working_set;
            sample = self.source.sample(now);
            tracing::debug!(
                before,
                after = sample.working_set,
                "purged the allocator's freed pages"
            );
        }
        self.tick += 1;
        self.decide(now, sample)
    }

    /// Ticks every `controller.tick_ms` until `shutdown` completes.
    pub async fn run(mut self, shutdown: impl Future<Output = ()>) {
        let mut interval = tokio::time::interval(self.settings.tick());
        interval.set_missed_tick_behavior(MissedTickBehavior::Delay);
        tokio::pin!(shutdown);

        loop {
            tokio::select! {
                at = interval.tick() => {
                    self.tick(at);
                }
                () = &mut shutdown => break,
            }
        }
        tracing::debug!(ticks = self.tick, "controller stopped");
    }

    /// Runs the law on `sample` and applies its decision.
    fn decide(&mut self, now: Instant, sample: MemorySample) -> AdmissionState {
        let before = self.gate.state();
        let decision = self.law.step(Inputs {
            now,
            working_set: sample.working_set,
            heap: heap_of(&sample),
            reserved: before.reserved,
            capacity: before.capacity,
            waiting_memory: before.waiting_memory,
        });

        self.apply_capacity(&before, &decision, sample.working_set);
        self.apply_shed(&decision, sample.working_set);
        self.apply_running_limit(&before);
        self.report_transition(&decision, &sample);

        let gate = self.gate.state();
        self.report_binding(gate.binding());
        self.publish(sample, decision, gate)
    }

    fn apply_capacity(&mut self, before: &GateState, decision: &Decision, working_set: u64) {
        if self.mode != AdmissionMode::Adaptive {
            return self.ungate_memory(before);
        }
        self.gate.set_max_reservation(decision.max_reservation);
        let Some(reason) = decision.reason else {
            return;
        };

        self.gate.set_capacity(decision.capacity);
        tracing::debug!(
            from = before.capacity,
            to = decision.capacity,
            reason = reason.as_str(),
            working_set,
            reserved = before.reserved,
            unreserved = decision.unreserved,
            "capacity adjusted"
        );
        self.record(Adjustment {
            tick: self.tick,
            limit: "capacity",
            from: before.capacity,
            to: decision.capacity,
            reason: reason.as_str(),
        });
    }

    /// In the modes that do not gate memory, makes the capacity too large
    /// to bind, once. The law still runs, so that the published state
    /// shows what memgate would have done.
    fn ungate_memory(&mut self, before: &GateState) {
        if before.capacity == UNGATED_CAPACITY {
            return;
        }
        self.gate.set_capacity(UNGATED_CAPACITY);
        self.gate.set_max_reservation(UNGATED_CAPACITY);
        self.record(Adjustment {
            tick: self.tick,
            limit: "capacity",
            from: before.capacity,
            to: UNGATED_CAPACITY,
            reason: self.mode.as_str(),
        });
    }

    fn apply_running_limit(&mut self, before: &GateState) {
        let completions = self.gate.take_completions();
        let limit = self.running.update(&completions, before.running);
        if limit == before.running_limit {
            return;
        }

        self.gate.set_running_limit(limit);
        tracing::debug!(
            from = before.running_limit,
            to = limit,
            running = before.running,
            reason = self.running.reason(),
            "running limit adjusted"
        );
        self.record(Adjustment {
            tick: self.tick,
            limit: "running_limit",
            from: before.running_limit as u64,
            to: limit as u64,
            reason: self.running.reason(),
        });
    }

    /// Sheds running jobs when the law asks for it, in memgate's own mode
    /// only: the others are there to show what happens without it.
    fn apply_shed(&mut self, decision: &Decision, working_set: u64) {
        if self.mode != AdmissionMode::Adaptive || decision.shed == 0 {
            return;
        }
        let shedding = self.gate.shed(decision.shed);
        if shedding.jobs == 0 {
            return;
        }
        self.shed_jobs += shedding.jobs as u64;
        tracing::warn!(
            jobs = shedding.jobs,
            bytes = shedding.bytes,
            pending = shedding.pending,
            asked = decision.shed,
            working_set,
            high_watermark = self.law.high_watermark(),
            "running jobs shed: memory still rising past the high watermark"
        );
    }

    fn record(&mut self, adjustment: Adjustment) {
        let key = format!("{}/{}", adjustment.limit, adjustment.reason);
        *self.adjustments.entry(key).or_default() += 1;
        self.last_adjustment = Some(adjustment);
    }

    fn report_transition(&self, decision: &Decision, sample: &MemorySample) {
        match decision.transition {
            Some(Transition::Engaged) => tracing::warn!(
                working_set = sample.working_set,
                high_watermark = self.law.high_watermark(),
                ceiling = self.ceiling.bytes,
                capacity = decision.capacity,
                unreserved = decision.unreserved,
                mode = self.mode.as_str(),
                "memory pressure engaged"
            ),
            Some(Transition::Released) => tracing::info!(
                working_set = sample.working_set,
                low_watermark = self.law.low_watermark(),
                capacity = decision.capacity,
                "memory pressure released"
            ),
            None => {}
        }
    }

    fn report_binding(&mut self, binding: Binding) {
        if binding != self.binding {
            tracing::debug!(from = ?self.binding, to = ?binding, "binding limit changed");
            self.binding = binding;
        }
    }

    fn publish(&self, sample: MemorySample, decision: Decision, gate: GateState) -> AdmissionState {
        let state = AdmissionState {
            tick: self.tick,
            mode: self.mode,
            ceiling: self.ceiling,
            high_watermark: self.law.high_watermark(),
            low_watermark: self.law.low_watermark(),
            working_set: sample.working_set,
            signal: sample.signal,
            sample,
            unreserved: decision.unreserved,
            bound: decision.bound,
            binding: gate.binding(),
            gate,
            pressure: self.law.pressure(),
            purges: self.purges,
            shed_jobs: self.shed_jobs,
            last_adjustment: self.last_adjustment.clone(),
            adjustments: self.adjustments.clone(),
            costs: self.gate.costs(),
        };
        self.state.send_replace(state.clone());
        state
    }
}

/// jemalloc's figures of a sample, as the law reads them.
fn heap_of(sample: &MemorySample) -> Option<Heap> {
    sample.jemalloc.as_ref().map(|j| Heap {
        allocated: j.allocated,
        resident: j.resident,
    })
}
