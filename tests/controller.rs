//! The controller's decisions on scripted memory, tick by tick.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use memgate::controller::{Controller, ControllerSettings, UNGATED_CAPACITY};
use memgate::gate::{AdmissionMode, Binding, Gate, GateSettings, UNBOUNDED_RUNNING};
use memgate::memory::{Ceiling, CeilingSettings, JemallocStats, MemorySample, MemorySource};
use tokio::time::Instant;

const MIB: u64 = 1 << 20;

/// A scripted machine: memory outside the heap, the heap in use, and the
/// freed pages the allocator keeps, which a purge returns.
#[derive(Clone, Default)]
struct Script(Arc<Mutex<State>>);

#[derive(Default)]
struct State {
    outside: u64,
    allocated: u64,
    dirty: u64,
    purges: u32,
}

impl Script {
    fn set(&self, outside_mib: u64, allocated_mib: u64, dirty_mib: u64) {
        let mut state = self.0.lock().unwrap();
        state.outside = outside_mib * MIB;
        state.allocated = allocated_mib * MIB;
        state.dirty = dirty_mib * MIB;
    }

    fn purges(&self) -> u32 {
        self.0.lock().unwrap().purges
    }
}

impl MemorySource for Script {
    fn sample(&mut self, at: Instant) -> MemorySample {
        let state = self.0.lock().unwrap();
        let resident = state.allocated + state.dirty;
        let mut sample = MemorySample::scripted(at, state.outside + resident);
        sample.jemalloc = Some(JemallocStats {
            allocated: state.allocated,
            active: state.allocated,
            resident,
            ..JemallocStats::default()
        });
        sample
    }

    fn purge(&mut self) -> bool {
        let mut state = self.0.lock().unwrap();
        state.dirty = 0;
        state.purges += 1;
        true
    }
}

/// A controller under a 1000 MiB ceiling: high watermark 950 MiB, low
/// watermark 850 MiB.
fn controller(script: &Script) -> Controller<Script> {
    controller_with(
        script,
        GateSettings {
            probe_jobs: 0,
            ..GateSettings::default()
        },
    )
}

/// As [`controller`], with a gate built from `gate`.
fn controller_with(script: &Script, gate: GateSettings) -> Controller<Script> {
    let settings = CeilingSettings {
        ceiling_ratio: 1.0,
        ..CeilingSettings::default()
    };
    let ceiling = Ceiling::resolve(&settings, Some(1000 * MIB)).unwrap();
    let gate = Gate::new(gate, 0);
    // Watermarks pinned, so that the figures below do not follow the
    // defaults: high 950 MiB, low 850 MiB.
    let settings = ControllerSettings {
        high_watermark: 0.95,
        low_watermark: 0.85,
        ..ControllerSettings::default()
    };
    Controller::new(settings, ceiling, gate, script.clone())
}

#[tokio::test(start_paused = true)]
async fn the_first_sample_sizes_the_gate_before_any_tick() {
    let script = Script::default();
    script.set(100, 0, 0);
    let controller = controller(&script);

    let state = controller.subscribe().borrow().clone();
    assert_eq!(state.gate.capacity, 850 * MIB);
    assert_eq!(state.unreserved, 100 * MIB);
    assert_eq!(state.last_adjustment.unwrap().reason, "initial");
}

#[tokio::test(start_paused = true)]
async fn above_the_high_watermark_the_allocator_purges_before_capacity_is_cut() {
    let script = Script::default();
    script.set(100, 0, 0);
    let mut controller = controller(&script);
    let gate = controller.gate().clone();
    let _job = gate.reserve("jpeg", 800 * MIB).await.unwrap();

    // Freed pages alone push the working set over: a purge is enough.
    script.set(100, 800, 80);
    let state = controller.tick(Instant::now());
    assert_eq!(script.purges(), 1);
    assert_eq!(state.working_set, 900 * MIB);
    assert!(!state.pressure);
    assert_eq!(state.gate.capacity, 850 * MIB);
}

#[tokio::test(start_paused = true)]
async fn pressure_cuts_capacity_below_what_is_reserved_and_is_released_below_the_low_watermark() {
    let script = Script::default();
    script.set(100, 0, 0);
    let mut controller = controller(&script);
    let gate = controller.gate().clone();
    let job = gate.reserve("jpeg", 800 * MIB).await.unwrap();

    // The job uses 100 MiB more than it reserved: the working set is
    // 50 MiB above the high watermark.
    script.set(100, 900, 0);
    let state = controller.tick(Instant::now());
    assert!(state.pressure);
    assert_eq!(state.gate.capacity, 750 * MIB);
    assert_eq!(state.gate.owed, 50 * MIB);
    assert_eq!(state.last_adjustment.as_ref().unwrap().reason, "pressure");

    // Between the watermarks: pressure holds, capacity does not grow.
    script.set(100, 800, 0);
    let state = controller.tick(Instant::now() + Duration::from_millis(50));
    assert!(state.pressure);
    assert!(state.gate.capacity <= 750 * MIB);

    drop(job);
    script.set(100, 0, 0);
    let state = controller.tick(Instant::now() + Duration::from_millis(100));
    assert!(!state.pressure);
}

#[tokio::test(start_paused = true)]
async fn capacity_grows_back_a_step_per_tick_while_jobs_wait() {
    let script = Script::default();
    script.set(600, 0, 0);
    let mut controller = controller(&script);
    let gate = controller.gate().clone();
    assert_eq!(gate.state().capacity, 350 * MIB);
    let _running = gate.reserve("jpeg", 300 * MIB).await.unwrap();

    // A surge from outside ends; a job waits for more than is free.
    script.set(100, 300, 0);
    let waiter = tokio::spawn({
        let gate = gate.clone();
        async move { gate.reserve("jpeg", 200 * MIB).await.map(drop) }
    });
    tokio::time::sleep(Duration::from_millis(1)).await;
    assert_eq!(gate.state().binding(), Binding::Memory);

    let mut capacities = Vec::new();
    for i in 1..=4 {
        let state = controller.tick(Instant::now() + Duration::from_secs(i));
        capacities.push(state.gate.capacity / MIB);
    }
    // Each step is at most 5% of the ceiling.
    assert!(
        capacities.windows(2).all(|w| w[1] - w[0] <= 50),
        "{capacities:?}"
    );
    assert!(capacities[3] > 350);

    while !waiter.is_finished() {
        controller.tick(Instant::now() + Duration::from_secs(10));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    waiter.await.unwrap().unwrap();
}

#[tokio::test(start_paused = true)]
async fn the_published_state_names_every_figure() {
    let script = Script::default();
    script.set(100, 0, 0);
    let mut controller = controller(&script);
    let state = controller.tick(Instant::now());

    let json = serde_json::to_value(&state).unwrap();
    for key in [
        "tick",
        "ceiling",
        "high_watermark",
        "low_watermark",
        "working_set",
        "signal",
        "sample",
        "unreserved",
        "bound",
        "gate",
        "binding",
        "pressure",
        "purges",
        "last_adjustment",
        "costs",
    ] {
        assert!(json.get(key).is_some(), "missing {key}: {json}");
    }
    for key in [
        "capacity",
        "reserved",
        "owed",
        "in_flight",
        "running",
        "running_limit",
        "queued",
    ] {
        assert!(json["gate"].get(key).is_some(), "missing gate.{key}");
    }
    assert_eq!(json["ceiling"]["bytes"], 1000 * MIB);
}

#[tokio::test(start_paused = true)]
async fn the_controller_task_ticks_until_shutdown() {
    let script = Script::default();
    script.set(100, 0, 0);
    let controller = controller(&script);
    let states = controller.subscribe();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(controller.run(async {
        let _ = stopped.await;
    }));

    tokio::time::sleep(Duration::from_millis(1025)).await;
    let ticks = states.borrow().tick;
    assert!(
        (20..=21).contains(&ticks),
        "{ticks} ticks in about a second"
    );

    stop.send(()).unwrap();
    task.await.unwrap();
}

/// A controller as [`controller`] builds it, for the admission `mode`,
/// with room for 2 to 6 running jobs.
fn controller_in(script: &Script, mode: AdmissionMode) -> Controller<Script> {
    controller_with(
        script,
        GateSettings {
            mode,
            min_running: 2,
            max_running: 6,
            ..GateSettings::default()
        },
    )
}

#[tokio::test(start_paused = true)]
async fn a_fixed_pool_does_not_gate_memory_and_never_moves_its_limit() {
    let script = Script::default();
    script.set(100, 0, 0);
    let mut controller = controller_in(&script, AdmissionMode::Fixed);
    let gate = controller.gate().clone();
    assert_eq!(gate.state().running_limit, 6);

    // Memory far past the ceiling: memgate would cut; a fixed pool does not.
    script.set(1200, 0, 0);
    let state = controller.tick(Instant::now());
    assert_eq!(state.mode, AdmissionMode::Fixed);
    assert_eq!(state.gate.capacity, UNGATED_CAPACITY);
    assert_eq!(state.gate.running_limit, 6);

    // A job larger than the ceiling is admitted: nothing sizes it.
    let job = gate.reserve("jpeg", 2000 * MIB).await.unwrap();
    assert_eq!(job.bytes(), 2000 * MIB);
}

#[tokio::test(start_paused = true)]
async fn unbounded_mode_starts_every_job_at_once() {
    let script = Script::default();
    let controller = controller_in(&script, AdmissionMode::Unbounded);
    let gate = controller.gate().clone();
    assert_eq!(gate.state().running_limit, UNBOUNDED_RUNNING);

    let mut jobs = Vec::new();
    for _ in 0..100 {
        let mut job = gate.reserve("synthetic", 150 * MIB).await.unwrap();
        job.run().await.unwrap();
        jobs.push(job);
    }
    assert_eq!(gate.state().running, 100);
    assert_eq!(gate.state().queued, 0);
}

#[tokio::test(start_paused = true)]
async fn the_latency_mode_lowers_its_limit_when_jobs_slow_down() {
    let script = Script::default();
    let mut controller = controller_in(&script, AdmissionMode::Latency);
    let gate = controller.gate().clone();
    assert_eq!(gate.state().running_limit, 6);

    // Full load: quick jobs first set the baseline, then the same jobs
    // take four times as long.
    for service_ms in [100, 100, 100, 100, 100, 400, 400, 400, 400, 400, 400] {
        let mut running = Vec::new();
        for _ in 0..gate.state().running_limit {
            let mut job = gate.reserve("synthetic", MIB).await.unwrap();
            job.run().await.unwrap();
            running.push(job);
        }
        tokio::time::advance(Duration::from_millis(service_ms)).await;
        drop(running);
        controller.tick(Instant::now());
    }
    let limit = gate.state().running_limit;
    assert!((2..6).contains(&limit), "limit {limit}");
}

#[tokio::test(start_paused = true)]
async fn a_clock_that_jumps_forward_or_back_moves_no_decision_past_the_bound() {
    let script = Script::default();
    script.set(100, 0, 0);
    let mut controller = controller(&script);
    let gate = controller.gate().clone();
    let _job = gate.reserve("jpeg", 300 * MIB).await.unwrap();
    script.set(100, 300, 0);
    let start = Instant::now();
    controller.tick(start + Duration::from_millis(50));

    // An hour passes between two ticks (a suspended VM, a stalled task),
    // then a tick arrives dated before the last one.
    for at in [
        start + Duration::from_secs(3600),
        start + Duration::from_millis(10),
    ] {
        let state = controller.tick(at);
        assert!(!state.pressure);
        assert!(state.gate.capacity <= 850 * MIB, "{}", state.gate.capacity);
        assert!(state.gate.capacity >= 300 * MIB, "{}", state.gate.capacity);
    }

    // Measurement still rules after the jumps: a surge is cut at once.
    script.set(700, 300, 0);
    let state = controller.tick(start + Duration::from_secs(3601));
    assert!(state.pressure);
    assert!(state.gate.capacity < 300 * MIB, "{}", state.gate.capacity);
}
