//! Hot paths of the gate and the controller.
//!
//! `cargo bench --bench gate` measures:
//!
//! - `reserve_release/uncontended`: one reservation taken and dropped on a
//!   gate with room, polled once, as a request that is admitted at once;
//! - `reserve_release/64_waiters`: reservations handed from job to job by
//!   64 tasks that contend for room for 8, on two worker threads;
//! - `controller_tick/scripted`: one tick of the controller (law, running
//!   limit, gate update, published state) on a scripted sample;
//! - `controller_tick/system`: the same with this machine's real signals
//!   (cgroup files, `/proc/self/statm`, jemalloc), sampling included.

use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use memgate::controller::{Controller, ControllerSettings};
use memgate::gate::{Gate, GateSettings};
use memgate::memory::{Ceiling, CeilingSettings, MemorySample, MemorySource, SystemMemory};

#[cfg(target_os = "linux")]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

const MIB: u64 = 1 << 20;

fn settings() -> GateSettings {
    GateSettings {
        max_queue: 1024,
        max_running: 64,
        probe_jobs: 0,
        ..GateSettings::default()
    }
}

/// Polls a future that is expected to be ready at once.
fn ready<F: Future>(future: F) -> F::Output {
    let mut future = pin!(future);
    let mut cx = Context::from_waker(Waker::noop());
    match future.as_mut().poll(&mut cx) {
        Poll::Ready(output) => output,
        Poll::Pending => panic!("the gate had room: the future should be ready"),
    }
}

fn reserve_release(c: &mut Criterion) {
    let mut group = c.benchmark_group("reserve_release");

    let gate = Gate::new(settings(), 1024 * MIB);
    group.bench_function("uncontended", |b| {
        b.iter(|| {
            let reservation = ready(gate.reserve("bench", 150 * MIB)).expect("room");
            drop(reservation);
        })
    });

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_time()
        .build()
        .expect("runtime");
    group.bench_function("64_waiters", |b| {
        b.iter_custom(|iters| runtime.block_on(contended(iters)))
    });
    group.finish();
}

/// `iters` reservations taken and dropped by 64 tasks over room for 8.
async fn contended(iters: u64) -> Duration {
    let gate = Gate::new(settings(), 8 * 100 * MIB);
    let tasks = 64;
    let per_task = iters.div_ceil(tasks);
    let started = Instant::now();

    let handles: Vec<_> = (0..tasks)
        .map(|_| {
            let gate = gate.clone();
            tokio::spawn(async move {
                for _ in 0..per_task {
                    let reservation = gate.reserve("bench", 100 * MIB).await.expect("room");
                    tokio::task::yield_now().await;
                    drop(reservation);
                }
            })
        })
        .collect();
    for handle in handles {
        handle.await.expect("task");
    }
    started
        .elapsed()
        .mul_f64(iters as f64 / (per_task * tasks) as f64)
}

/// A source that returns the same reading without touching the machine.
struct Scripted(u64);

impl MemorySource for Scripted {
    fn sample(&mut self, at: tokio::time::Instant) -> MemorySample {
        MemorySample::scripted(at, self.0)
    }

    fn purge(&mut self) -> bool {
        false
    }
}

fn controller_tick(c: &mut Criterion) {
    let mut group = c.benchmark_group("controller_tick");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("runtime");
    let _guard = runtime.enter();
    let ceiling = Ceiling::resolve(&CeilingSettings::default(), Some(2048 * MIB)).expect("ceiling");

    let gate = Gate::new(settings(), 0);
    let mut scripted = Controller::new(
        ControllerSettings::default(),
        ceiling,
        gate,
        Scripted(400 * MIB),
    );
    group.bench_function("scripted", |b| {
        b.iter(|| scripted.tick(tokio::time::Instant::now()))
    });

    let gate = Gate::new(settings(), 0);
    let mut system = Controller::new(
        ControllerSettings::default(),
        ceiling,
        gate,
        SystemMemory::detect(),
    );
    group.bench_function("system", |b| {
        b.iter(|| system.tick(tokio::time::Instant::now()))
    });
    group.finish();
}

criterion_group!(benches, reserve_release, controller_tick);
criterion_main!(benches);
