//! A simulated machine for the controller: memory, cores and jobs, under
//! tokio's paused clock.
//!
//! The machine's working set is what a memory cgroup would report for a
//! memgate process with jemalloc:
//!
//! - memory outside the heap (code, stacks, page cache) and any surge from
//!   another process in the same container;
//! - the server's own heap;
//! - every running job's touched pages: a job touches its memory while it
//!   works through the first part of its CPU time;
//! - freed pages the allocator keeps (dirty), which decay back to the OS
//!   over about a second, vanish on a purge, and are reused first by jobs
//!   that touch new memory.
//!
//! Jobs share the cores equally, so running more jobs than cores makes each
//! one slower, which the running limit should notice.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use memgate::controller::{Controller, ControllerSettings};
use memgate::gate::{Gate, GateSettings, Refusal, Shed};
use memgate::memory::{
    Ceiling, CeilingSettings, JemallocStats, MemorySample, MemorySource, Signal,
};
use serde::Deserialize;
use tokio::sync::oneshot;
use tokio::time::Instant;

pub const MIB: u64 = 1 << 20;

/// How often the simulated machine moves on.
const STEP: Duration = Duration::from_millis(5);

/// Share of a job's CPU time during which it touches its memory.
const TOUCH_SHARE: f64 = 0.3;

/// A scenario file under `tests/data/scenarios/`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    pub description: String,
    /// The container's memory limit.
    pub limit_mib: u64,
    #[serde(default = "default_ratio")]
    pub ceiling_ratio: f64,
    pub cores: f64,
    /// The run stops here even if jobs are left.
    pub duration_s: f64,
    /// Memory outside the heap at rest.
    pub non_heap_mib: u64,
    /// The server's own heap.
    pub base_heap_mib: u64,
    /// Whether samples carry jemalloc's counters.
    #[serde(default = "yes")]
    pub heap_stats: bool,
    #[serde(default = "default_decay")]
    pub dirty_decay_ms: u64,
    /// Whether new jobs reuse freed pages before touching fresh ones. With
    /// many arenas, a job's thread often cannot reuse another's pages.
    #[serde(default = "yes")]
    pub reuse_dirty: bool,
    #[serde(default = "default_seed")]
    pub seed: u64,
    #[serde(default)]
    pub gate: GateSettings,
    #[serde(default)]
    pub controller: ControllerSettings,
    pub arrivals: Vec<Arrivals>,
    #[serde(default)]
    pub surges: Vec<Surge>,
    pub expect: Expect,
}

/// A batch of jobs arriving evenly over a time span.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Arrivals {
    pub at_s: f64,
    pub count: usize,
    pub over_s: f64,
    pub class: String,
    /// Each job's true peak is drawn log-uniformly from this range.
    pub mib: [f64; 2],
    /// A job's own estimate is its true peak times this.
    #[serde(default = "one")]
    pub estimate_ratio: f64,
    /// CPU time on one core per MiB of true peak, plus `cpu_ms`.
    #[serde(default)]
    pub cpu_ms_per_mib: f64,
    #[serde(default)]
    pub cpu_ms: f64,
    /// Time spent waiting on I/O (an upload, a storage read) before the CPU
    /// work, not sharing the cores.
    #[serde(default)]
    pub io_ms: f64,
    /// Each job's I/O and CPU times are scaled by a factor drawn uniformly
    /// from 1 - jitter to 1 + jitter, so that jobs admitted together do
    /// not all end together.
    #[serde(default = "default_jitter")]
    pub jitter: f64,
    /// Attempts after a refusal, each after its `Retry-After`.
    #[serde(default)]
    pub retries: u32,
}

/// Memory taken by another process in the container.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Surge {
    pub at_s: f64,
    pub ramp_s: f64,
    pub hold_s: f64,
    pub mib: u64,
}

/// What the run must show.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Expect {
    /// The working set at every step, as a share of the ceiling.
    pub max_working_set_ratio: f64,
    /// Jobs completed, as a share of arrivals.
    pub min_completed_ratio: f64,
    /// Jobs completed per second, from the first arrival to the last
    /// completion.
    pub min_throughput: f64,
    /// After each surge, the ticks until capacity is back to 90% of what it
    /// was before the surge.
    pub recover_within_ticks: Option<u64>,
    /// The running limit, averaged over the ticks when jobs were queued,
    /// must be at most this.
    pub max_mean_running_limit: Option<f64>,
    /// The allocator must have been asked to purge at least this often.
    #[serde(default)]
    pub min_purges: u64,
    /// The controller must have shed at least this many running jobs.
    #[serde(default)]
    pub min_shed: u64,
    /// The learned correction of a class must reach at least this.
    #[serde(default)]
    pub min_class_factor: BTreeMap<String, f64>,
}

fn default_ratio() -> f64 {
    0.92
}
fn yes() -> bool {
    true
}
fn one() -> f64 {
    1.0
}
fn default_decay() -> u64 {
    1000
}
fn default_jitter() -> f64 {
    0.2
}
fn default_seed() -> u64 {
    1
}

/// What a run measured.
#[derive(Debug, Default)]
pub struct Report {
    pub ceiling: u64,
    pub arrived: usize,
    pub completed: usize,
    pub failed: usize,
    pub refusals: BTreeMap<&'static str, usize>,
    pub max_working_set: u64,
    pub first_arrival: Option<Duration>,
    pub last_completion: Duration,
    pub recoveries: Vec<Option<u64>>,
    pub class_factors: BTreeMap<String, f64>,
    pub pressure_ticks: u64,
    pub purges: u64,
    pub shed_jobs: u64,
    pub capacity_moves: u64,
    pub mean_running_limit: f64,
}

impl Report {
    pub fn throughput(&self) -> f64 {
        let span = self
            .last_completion
            .saturating_sub(self.first_arrival.unwrap_or_default());
        self.completed as f64 / span.as_secs_f64().max(1e-9)
    }

    pub fn working_set_ratio(&self) -> f64 {
        self.max_working_set as f64 / self.ceiling as f64
    }
}

/// The simulated machine.
#[derive(Debug)]
struct Machine {
    started: Instant,
    non_heap: u64,
    base_heap: u64,
    surge: u64,
    dirty: u64,
    cores: f64,
    dirty_decay: Duration,
    reuse_dirty: bool,
    heap_stats: bool,
    jobs: Vec<Job>,
    max_working_set: u64,
}

#[derive(Debug)]
struct Job {
    peak: u64,
    touched: u64,
    io_total: f64,
    io_left: f64,
    work_total: f64,
    work_left: f64,
    /// Raised when the gate sheds the job: it ends at the next step.
    shed: Shed,
    done: Option<oneshot::Sender<()>>,
}

impl Job {
    fn progress(&self) -> f64 {
        let left = self.io_left.max(0.0) + self.work_left.max(0.0);
        1.0 - left / (self.io_total + self.work_total)
    }

    fn on_cpu(&self) -> bool {
        self.io_left <= 0.0
    }
}

impl Machine {
    fn working_set(&self) -> u64 {
        self.non_heap + self.surge + self.allocated() + self.dirty
    }

    fn allocated(&self) -> u64 {
        self.base_heap + self.jobs.iter().map(|j| j.touched).sum::<u64>()
    }

    fn step(&mut self, dt: Duration, surges: &[Surge]) {
        let t = self.started.elapsed().as_secs_f64();
        self.surge = surges.iter().map(|s| surge_level(s, t)).sum();

        let decayed = self.dirty as f64 * (dt.as_secs_f64() / self.dirty_decay.as_secs_f64());
        self.dirty = self.dirty.saturating_sub(decayed.ceil() as u64);

        let on_cpu = self.jobs.iter().filter(|j| j.on_cpu()).count();
        let share = (self.cores / on_cpu.max(1) as f64).min(1.0);
        for job in &mut self.jobs {
            if job.on_cpu() {
                job.work_left -= dt.as_secs_f64() * share;
            } else {
                job.io_left -= dt.as_secs_f64();
            }
            let target = (job.peak as f64 * (job.progress() / TOUCH_SHARE).min(1.0)) as u64;
            let fresh = target.saturating_sub(job.touched);
            if self.reuse_dirty {
                self.dirty -= fresh.min(self.dirty);
            }
            job.touched = job.touched.max(target);
        }

        let ended = |j: &Job| j.work_left <= 0.0 || j.shed.is_shed();
        for job in self.jobs.iter_mut().filter(|j| ended(j)) {
            self.dirty += job.touched;
            job.touched = 0;
            if let Some(done) = job.done.take() {
                let _ = done.send(());
            }
        }
        self.jobs.retain(|j| !ended(j));
        self.max_working_set = self.max_working_set.max(self.working_set());
    }
}

fn surge_level(surge: &Surge, t: f64) -> u64 {
    let into = t - surge.at_s;
    let full = (surge.mib * MIB) as f64;
    let level = if into < 0.0 {
        0.0
    } else if into < surge.ramp_s {
        full * into / surge.ramp_s
    } else if into < surge.ramp_s + surge.hold_s {
        full
    } else {
        (full * (1.0 - (into - surge.ramp_s - surge.hold_s) / surge.ramp_s.max(1e-9))).max(0.0)
    };
    level as u64
}

/// The machine as a memory source for the controller.
struct SimSource(Arc<Mutex<Machine>>);

impl MemorySource for SimSource {
    fn sample(&mut self, at: Instant) -> MemorySample {
        let machine = self.0.lock().unwrap();
        let mut sample = MemorySample::scripted(at, machine.working_set());
        sample.signal = Signal::Scripted;
        if machine.heap_stats {
            let allocated = machine.allocated();
            sample.jemalloc = Some(JemallocStats {
                allocated,
                active: allocated,
                resident: allocated + machine.dirty,
                ..JemallocStats::default()
            });
        }
        sample
    }

    fn purge(&mut self) -> bool {
        self.0.lock().unwrap().dirty = 0;
        true
    }
}

/// A small deterministic generator (xorshift64*), so that runs repeat.
struct Rng(u64);

impl Rng {
    fn next_f64(&mut self) -> f64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        let x = self.0.wrapping_mul(0x2545_F491_4F6C_DD1D);
        (x >> 11) as f64 / (1u64 << 53) as f64
    }

    fn log_uniform(&mut self, [lo, hi]: [f64; 2]) -> f64 {
        (lo.ln() + (hi.ln() - lo.ln()) * self.next_f64()).exp()
    }
}

/// One job as it arrives.
struct Spec {
    at: Duration,
    class: String,
    peak: u64,
    estimate: u64,
    work: f64,
    io: f64,
    retries: u32,
}

fn plan(scenario: &Scenario) -> Vec<Spec> {
    let mut rng = Rng(scenario.seed.max(1));
    let mut specs = Vec::new();
    for batch in &scenario.arrivals {
        for i in 0..batch.count {
            let offset = batch.over_s * i as f64 / batch.count.max(1) as f64;
            let peak_mib = rng.log_uniform(batch.mib);
            let stretch = 1.0 + batch.jitter * (2.0 * rng.next_f64() - 1.0);
            specs.push(Spec {
                at: Duration::from_secs_f64(batch.at_s + offset),
                class: batch.class.clone(),
                peak: (peak_mib * MIB as f64) as u64,
                estimate: (peak_mib * batch.estimate_ratio * MIB as f64) as u64,
                work: stretch * (batch.cpu_ms + batch.cpu_ms_per_mib * peak_mib) / 1000.0,
                io: stretch * batch.io_ms / 1000.0,
                retries: batch.retries,
            });
        }
    }
    specs.sort_by_key(|s| s.at);
    specs
}

enum Outcome {
    Completed(Duration),
    Failed,
}

/// Runs one job: admission with retries, then its work on the machine.
async fn job(
    gate: Gate,
    machine: Arc<Mutex<Machine>>,
    spec: Spec,
    refusals: Arc<Mutex<Vec<Refusal>>>,
) -> Outcome {
    for _ in 0..=spec.retries {
        match gate.admit(&spec.class, spec.estimate).await {
            Ok(mut reservation) => {
                let (done, finished) = oneshot::channel();
                machine.lock().unwrap().jobs.push(Job {
                    peak: spec.peak,
                    touched: 0,
                    io_total: spec.io,
                    io_left: spec.io,
                    work_total: spec.work.max(1e-3),
                    work_left: spec.work.max(1e-3),
                    shed: reservation.shed_flag(),
                    done: Some(done),
                });
                let _ = finished.await;
                if let Some(refusal) = reservation.shed_refusal() {
                    drop(reservation);
                    let retry_after = refusal.retry_after;
                    refusals.lock().unwrap().push(refusal);
                    match retry_after {
                        Some(delay) => tokio::time::sleep(delay).await,
                        None => break,
                    }
                    continue;
                }
                reservation.record_peak(spec.peak);
                drop(reservation);
                let started = machine.lock().unwrap().started;
                return Outcome::Completed(started.elapsed());
            }
            Err(refusal) => {
                let retry_after = refusal.retry_after;
                refusals.lock().unwrap().push(refusal);
                match retry_after {
                    Some(delay) => tokio::time::sleep(delay).await,
                    None => break,
                }
            }
        }
    }
    Outcome::Failed
}

/// Runs a scenario to its end and reports what happened.
pub async fn run(scenario: &Scenario) -> Report {
    let limit = scenario.limit_mib * MIB;
    let settings = CeilingSettings {
        ceiling_ratio: scenario.ceiling_ratio,
        ..CeilingSettings::default()
    };
    let ceiling = Ceiling::resolve(&settings, Some(limit)).expect("scenario ceiling");

    let started = Instant::now();
    let machine = Arc::new(Mutex::new(Machine {
        started,
        non_heap: scenario.non_heap_mib * MIB,
        base_heap: scenario.base_heap_mib * MIB,
        surge: 0,
        dirty: 0,
        cores: scenario.cores,
        dirty_decay: Duration::from_millis(scenario.dirty_decay_ms.max(1)),
        reuse_dirty: scenario.reuse_dirty,
        heap_stats: scenario.heap_stats,
        jobs: Vec::new(),
        max_working_set: 0,
    }));

    let gate = Gate::new(scenario.gate.clone(), 0);
    let controller = Controller::new(
        scenario.controller.clone(),
        ceiling,
        gate.clone(),
        SimSource(Arc::clone(&machine)),
    );
    let states = controller.subscribe();
    let (stop, stopped) = oneshot::channel::<()>();
    let control = tokio::spawn(controller.run(async {
        let _ = stopped.await;
    }));

    let horizon = Duration::from_secs_f64(scenario.duration_s);
    let stepper = tokio::spawn(step_machine(
        Arc::clone(&machine),
        scenario.surges_owned(),
        horizon,
    ));
    let finished = Arc::new(AtomicBool::new(false));
    let watcher = tokio::spawn(watch_capacity(
        states,
        scenario.controller.tick(),
        horizon,
        Arc::clone(&finished),
    ));

    let specs = plan(scenario);
    let mut report = Report {
        ceiling: ceiling.bytes,
        arrived: specs.len(),
        first_arrival: specs.first().map(|s| s.at),
        ..Report::default()
    };
    let refusals = Arc::new(Mutex::new(Vec::new()));
    let mut jobs = Vec::new();
    for spec in specs {
        tokio::time::sleep_until(started + spec.at).await;
        let task = job(
            gate.clone(),
            Arc::clone(&machine),
            spec,
            Arc::clone(&refusals),
        );
        jobs.push(tokio::spawn(task));
    }

    for task in jobs {
        match tokio::time::timeout_at(started + horizon, task).await {
            Ok(Ok(Outcome::Completed(at))) => {
                report.completed += 1;
                report.last_completion = report.last_completion.max(at);
            }
            _ => report.failed += 1,
        }
    }

    finished.store(true, Ordering::Release);
    let timeline = watcher.await.expect("watcher");
    if std::env::var_os("SCENARIO_TRACE").is_some() {
        trace(&timeline, scenario.controller.tick());
    }
    let _ = stop.send(());
    control.await.expect("controller");
    stepper.abort();

    for refusal in refusals.lock().unwrap().iter() {
        *report.refusals.entry(refusal.reason.as_str()).or_default() += 1;
    }
    report.max_working_set = machine.lock().unwrap().max_working_set;
    report.recoveries = recoveries(&timeline, &scenario.surges, scenario.controller.tick());
    report.pressure_ticks = timeline.iter().filter(|p| p.pressure).count() as u64;
    let queued: Vec<&Point> = timeline.iter().filter(|p| p.queued > 0).collect();
    report.mean_running_limit =
        queued.iter().map(|p| p.running_limit as f64).sum::<f64>() / queued.len().max(1) as f64;
    report.capacity_moves = timeline
        .windows(2)
        .filter(|w| w[0].capacity != w[1].capacity)
        .count() as u64;
    if let Some(last) = timeline.last() {
        report.purges = last.purges;
        report.shed_jobs = last.shed_jobs;
        report.class_factors = last.factors.clone();
    }

    let state = gate.state();
    assert_eq!(state.reserved, 0, "every reservation returned");
    assert_eq!(state.in_flight, 0, "no reservation left alive");
    report
}

impl Scenario {
    fn surges_owned(&self) -> Vec<Surge> {
        self.surges
            .iter()
            .map(|s| Surge {
                at_s: s.at_s,
                ramp_s: s.ramp_s,
                hold_s: s.hold_s,
                mib: s.mib,
            })
            .collect()
    }
}

async fn step_machine(machine: Arc<Mutex<Machine>>, surges: Vec<Surge>, horizon: Duration) {
    let mut interval = tokio::time::interval(STEP);
    let started = machine.lock().unwrap().started;
    while started.elapsed() < horizon {
        interval.tick().await;
        machine.lock().unwrap().step(STEP, &surges);
    }
}

/// One tick of the controller as the test sees it.
#[derive(Debug)]
struct Point {
    at: Duration,
    capacity: u64,
    reserved: u64,
    queued: usize,
    running: usize,
    running_limit: usize,
    working_set: u64,
    pressure: bool,
    purges: u64,
    shed_jobs: u64,
    factors: BTreeMap<String, f64>,
}

/// Reads the published state once per tick until the horizon or the end.
async fn watch_capacity(
    states: tokio::sync::watch::Receiver<memgate::controller::AdmissionState>,
    tick: Duration,
    horizon: Duration,
    finished: Arc<AtomicBool>,
) -> Vec<Point> {
    let started = Instant::now();
    let mut timeline = Vec::new();
    let mut interval = tokio::time::interval(tick);
    while started.elapsed() < horizon && !finished.load(Ordering::Acquire) {
        interval.tick().await;
        let state = states.borrow();
        timeline.push(Point {
            at: started.elapsed(),
            capacity: state.gate.capacity,
            reserved: state.gate.reserved,
            queued: state.gate.queued,
            running: state.gate.running,
            running_limit: state.gate.running_limit,
            working_set: state.working_set,
            pressure: state.pressure,
            purges: state.purges,
            shed_jobs: state.shed_jobs,
            factors: state
                .costs
                .iter()
                .map(|c| (c.class.clone(), c.factor))
                .collect(),
        });
    }
    timeline
}

/// For each surge, the ticks from its end until capacity is back to 90% of
/// its level just before the surge began.
fn recoveries(timeline: &[Point], surges: &[Surge], tick: Duration) -> Vec<Option<u64>> {
    surges
        .iter()
        .map(|s| {
            let begin = Duration::from_secs_f64(s.at_s);
            let end = Duration::from_secs_f64(s.at_s + 2.0 * s.ramp_s + s.hold_s);
            let before = timeline.iter().rev().find(|p| p.at <= begin)?.capacity;
            let back = timeline
                .iter()
                .find(|p| p.at >= end && p.capacity as f64 >= 0.9 * before as f64)?;
            Some(((back.at - end).as_secs_f64() / tick.as_secs_f64()).ceil() as u64)
        })
        .collect()
}

/// Prints the timeline once a second, for `SCENARIO_TRACE=1`.
fn trace(timeline: &[Point], tick: Duration) {
    let every = std::env::var("SCENARIO_TRACE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or((1.0 / tick.as_secs_f64()).round() as usize);
    for p in timeline.iter().step_by(every.max(1)) {
        println!(
            "  t={:>6.1}s ws={:>5} cap={:>5} res={:>5} queued={:>3} running={:>2}/{:<2} pressure={}",
            p.at.as_secs_f64(),
            p.working_set / MIB,
            p.capacity / MIB,
            p.reserved / MIB,
            p.queued,
            p.running,
            p.running_limit,
            p.pressure
        );
    }
}
