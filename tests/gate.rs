//! The gate's promises, one test per promise.
//!
//! Every path that ends a reservation is tested by name: success, error,
//! panic, client gone, timeout, shutdown. Time is tokio's paused clock.

use std::time::Duration;

use memgate::gate::{Binding, Gate, GateSettings, RefusalReason};
use proptest::prelude::*;

const MIB: u64 = 1 << 20;

/// Settings without probing of new classes, which has tests of its own.
fn settings() -> GateSettings {
    GateSettings {
        probe_jobs: 0,
        ..GateSettings::default()
    }
}

fn gate(capacity_mib: u64) -> Gate {
    Gate::new(settings(), capacity_mib * MIB)
}

fn settled(gate: &Gate, capacity_mib: u64) {
    let state = gate.state();
    assert_eq!(state.reserved, 0, "memory still reserved");
    assert_eq!(state.owed, 0, "capacity still owed");
    assert_eq!(state.capacity, capacity_mib * MIB);
    assert_eq!(state.in_flight, 0, "reservations still alive");
    assert_eq!(state.running, 0, "run slots still held");
    assert_eq!(state.queued, 0, "jobs still queued");
}

#[tokio::test(start_paused = true)]
async fn reservation_returns_memory_on_success() {
    let gate = gate(512);
    let mut job = gate.admit("synthetic", 150 * MIB).await.unwrap();
    assert_eq!(gate.state().reserved, 150 * MIB);
    assert_eq!(gate.state().running, 1);

    job.record_peak(150 * MIB);
    drop(job);
    settled(&gate, 512);
}

#[tokio::test(start_paused = true)]
async fn reservation_returns_memory_when_the_job_fails() {
    async fn failing_job(gate: &Gate) -> Result<(), &'static str> {
        let _job = gate
            .admit("synthetic", 100 * MIB)
            .await
            .map_err(|_| "refused")?;
        Err("corrupt input")
    }

    let gate = gate(512);
    assert_eq!(failing_job(&gate).await, Err("corrupt input"));
    settled(&gate, 512);
}

#[tokio::test(start_paused = true)]
async fn reservation_returns_memory_when_the_job_panics() {
    let gate = gate(512);
    let job = gate.admit("synthetic", 100 * MIB).await.unwrap();

    let outcome = tokio::task::spawn_blocking(move || {
        let _job = job;
        panic!("decoder bug");
    })
    .await;

    assert!(outcome.unwrap_err().is_panic());
    settled(&gate, 512);
}

#[tokio::test(start_paused = true)]
async fn reservation_returns_memory_when_the_client_goes_away() {
    let gate = gate(512);
    let held = gate.clone();
    let request = tokio::spawn(async move {
        let _job = held.admit("synthetic", 100 * MIB).await.unwrap();
        tokio::time::sleep(Duration::from_secs(3600)).await;
    });
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(gate.state().reserved, 100 * MIB);

    // hyper drops a request's future when its client disconnects.
    request.abort();
    assert!(request.await.unwrap_err().is_cancelled());
    settled(&gate, 512);
}

#[tokio::test(start_paused = true)]
async fn reservation_returns_memory_when_the_job_times_out() {
    let gate = gate(512);
    let job = async {
        let _job = gate.admit("synthetic", 100 * MIB).await.unwrap();
        tokio::time::sleep(Duration::from_secs(60)).await;
    };

    let outcome = tokio::time::timeout(Duration::from_secs(1), job).await;
    assert!(outcome.is_err());
    settled(&gate, 512);
}

#[tokio::test(start_paused = true)]
async fn reservation_returns_memory_on_shutdown() {
    let gate = gate(200);
    let running = gate.admit("synthetic", 150 * MIB).await.unwrap();
    let waiter = tokio::spawn({
        let gate = gate.clone();
        async move { gate.reserve("synthetic", 150 * MIB).await.map(drop) }
    });
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(gate.state().queued, 1);

    gate.close();
    let refused = waiter.await.unwrap().unwrap_err();
    assert_eq!(refused.reason, RefusalReason::Draining);
    assert_eq!(gate.state().reserved, 150 * MIB, "running job carries on");

    drop(running);
    let state = gate.state();
    assert_eq!((state.reserved, state.in_flight, state.queued), (0, 0, 0));
}

#[tokio::test(start_paused = true)]
async fn cancelled_waiter_leaves_the_queue_and_reserves_nothing() {
    let gate = gate(200);
    let running = gate.admit("synthetic", 150 * MIB).await.unwrap();

    let waiting = tokio::time::timeout(
        Duration::from_millis(5),
        gate.reserve("synthetic", 150 * MIB),
    )
    .await;
    assert!(
        waiting.is_err(),
        "the waiter should still have been waiting"
    );
    assert_eq!(gate.state().queued, 0);
    assert_eq!(gate.state().reserved, 150 * MIB);

    drop(running);
    settled(&gate, 200);
}

#[tokio::test(start_paused = true)]
async fn draining_refuses_new_jobs_at_once() {
    let gate = gate(512);
    gate.close();
    let refused = gate.reserve("synthetic", MIB).await.unwrap_err();
    assert_eq!(refused.reason, RefusalReason::Draining);
    assert!(refused.retry_after.is_some());
}

#[tokio::test(start_paused = true)]
async fn job_larger_than_the_gate_is_refused_at_once_as_too_large() {
    let gate = gate(512);
    let started = tokio::time::Instant::now();

    let refused = gate.reserve("synthetic", 513 * MIB).await.unwrap_err();

    assert!(matches!(refused.reason, RefusalReason::TooLarge { .. }));
    assert_eq!(refused.retry_after, None, "retrying cannot help");
    assert_eq!(started.elapsed(), Duration::ZERO);
    settled(&gate, 512);
}

#[tokio::test(start_paused = true)]
async fn full_queue_refuses_with_queue_full_and_a_retry_delay() {
    let settings = GateSettings {
        max_queue: 2,
        ..settings()
    };
    let gate = Gate::new(settings, 100 * MIB);
    let _running = gate.admit("synthetic", 100 * MIB).await.unwrap();
    let mut waiters = Vec::new();
    for _ in 0..2 {
        let gate = gate.clone();
        waiters.push(tokio::spawn(async move {
            gate.reserve("synthetic", 10 * MIB).await.map(drop)
        }));
    }
    tokio::time::sleep(Duration::from_millis(1)).await;
    assert_eq!(gate.state().queued, 2);

    let refused = gate.reserve("synthetic", 10 * MIB).await.unwrap_err();
    assert_eq!(refused.reason, RefusalReason::QueueFull);
    assert!(refused.retry_after.unwrap() >= Duration::from_secs(1));
    assert_eq!(gate.state().refused.queue_full, 1);
    assert_eq!(gate.state().admitted, 1);
}

#[tokio::test(start_paused = true)]
async fn wait_is_bounded_by_max_wait() {
    let settings = GateSettings {
        max_wait_ms: 2_000,
        ..settings()
    };
    let gate = Gate::new(settings, 100 * MIB);
    let _running = gate.admit("synthetic", 100 * MIB).await.unwrap();
    let started = tokio::time::Instant::now();

    let refused = gate.reserve("synthetic", 10 * MIB).await.unwrap_err();

    assert_eq!(refused.reason, RefusalReason::WaitTimedOut);
    assert_eq!(started.elapsed(), Duration::from_secs(2));
    assert_eq!(gate.state().queued, 0);
}

#[tokio::test(start_paused = true)]
async fn waiters_are_admitted_in_arrival_order_as_memory_returns() {
    let gate = gate(300);
    let first = gate.admit("synthetic", 300 * MIB).await.unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    for id in 0..3 {
        let (gate, tx) = (gate.clone(), tx.clone());
        tokio::spawn(async move {
            let job = gate.reserve("synthetic", 100 * MIB).await.unwrap();
            tx.send(id).unwrap();
            tokio::time::sleep(Duration::from_secs(1)).await;
            drop(job);
        });
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    assert_eq!(gate.state().waiting_memory, 3);
    assert_eq!(gate.state().binding(), Binding::Memory);

    drop(first);
    let order: Vec<i32> = [rx.recv().await, rx.recv().await, rx.recv().await]
        .into_iter()
        .flatten()
        .collect();
    assert_eq!(order, vec![0, 1, 2]);
}

#[tokio::test(start_paused = true)]
async fn capacity_below_what_is_reserved_is_owed_and_paid_back() {
    let gate = gate(1000);
    let a = gate.reserve("synthetic", 400 * MIB).await.unwrap();
    let b = gate.reserve("synthetic", 400 * MIB).await.unwrap();

    gate.set_capacity(500 * MIB);
    let state = gate.state();
    assert_eq!(state.owed, 300 * MIB);
    assert!(state.reserved <= state.capacity + state.owed);

    // Room comes back only once the debt is paid.
    drop(a);
    assert_eq!(gate.state().owed, 0);
    let refused = tokio::time::timeout(
        Duration::from_millis(1),
        gate.reserve("synthetic", 200 * MIB),
    )
    .await;
    assert!(refused.is_err(), "100 MiB free, 200 MiB asked: must wait");
    let c = gate.reserve("synthetic", 100 * MIB).await.unwrap();

    drop((b, c));
    settled(&gate, 500);
}

#[tokio::test(start_paused = true)]
async fn reservation_grows_in_the_queue_and_shrinks_at_once() {
    let gate = gate(300);
    let mut job = gate.reserve("jpeg", 10 * MIB).await.unwrap();
    let other = gate.reserve("jpeg", 200 * MIB).await.unwrap();

    let waiting = tokio::time::timeout(Duration::from_millis(5), job.grow(150 * MIB)).await;
    assert!(waiting.is_err(), "only 90 MiB free: the growth waits");
    assert_eq!(
        job.bytes(),
        10 * MIB,
        "a cancelled growth keeps the old size"
    );

    drop(other);
    job.grow(150 * MIB).await.unwrap();
    assert_eq!(gate.state().reserved, 150 * MIB);

    job.shrink_to(40 * MIB);
    assert_eq!(gate.state().reserved, 40 * MIB);

    let refused = job.grow(301 * MIB).await.unwrap_err();
    assert!(matches!(refused.reason, RefusalReason::TooLarge { .. }));
    drop(job);
    settled(&gate, 300);
}

#[tokio::test(start_paused = true)]
async fn run_slots_bound_running_jobs() {
    let settings = GateSettings {
        min_running: 1,
        max_running: 2,
        ..settings()
    };
    let gate = Gate::new(settings, 1000 * MIB);
    let a = gate.admit("synthetic", MIB).await.unwrap();
    let _b = gate.admit("synthetic", MIB).await.unwrap();

    let third = tokio::spawn({
        let gate = gate.clone();
        async move { gate.admit("synthetic", MIB).await.map(drop) }
    });
    tokio::time::sleep(Duration::from_millis(1)).await;
    let state = gate.state();
    assert_eq!((state.running, state.waiting_running), (2, 1));
    assert_eq!(state.binding(), Binding::Cpu);
    assert_eq!(state.reserved, 3 * MIB, "the waiter already holds memory");

    drop(a);
    third.await.unwrap().unwrap();
    assert_eq!(gate.state().running, 1);
}

#[tokio::test(start_paused = true)]
async fn an_accepted_job_waits_for_its_run_slot_past_the_queue_bounds() {
    let settings = GateSettings {
        max_queue: 1,
        max_wait_ms: 100,
        min_running: 1,
        max_running: 1,
        ..settings()
    };
    let gate = Gate::new(settings, 1000 * MIB);
    let running = gate.admit("synthetic", MIB).await.unwrap();
    let _queued = tokio::spawn({
        let gate = gate.clone();
        async move { gate.admit("synthetic", MIB).await.map(drop) }
    });
    tokio::time::sleep(Duration::from_millis(1)).await;

    // The queue is full and the wait is longer than max_wait: an accepted
    // job still waits, and is counted as queued.
    let mut accepted = gate.reserve("synthetic", MIB).await.unwrap();
    let waiting = tokio::spawn(async move { accepted.run_accepted().await.map(|()| accepted) });
    tokio::time::sleep(Duration::from_millis(1)).await;
    assert_eq!(gate.state().queued, 2);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!waiting.is_finished(), "an accepted job is not timed out");

    drop(running);
    let accepted = waiting.await.unwrap().unwrap();
    assert!(accepted.is_running());
}

#[tokio::test(start_paused = true)]
async fn an_accepted_job_waiting_for_its_run_slot_is_refused_by_draining() {
    let settings = GateSettings {
        max_running: 1,
        ..settings()
    };
    let gate = Gate::new(settings, 1000 * MIB);
    let _running = gate.admit("synthetic", MIB).await.unwrap();
    let mut accepted = gate.reserve("synthetic", MIB).await.unwrap();
    let waiting = tokio::spawn(async move { accepted.run_accepted().await });
    tokio::time::sleep(Duration::from_millis(1)).await;

    gate.close();
    let refusal = waiting.await.unwrap().unwrap_err();
    assert_eq!(refusal.reason, RefusalReason::Draining);
    assert_eq!(
        gate.state().reserved,
        MIB,
        "only the running job holds memory"
    );
}

#[tokio::test(start_paused = true)]
async fn running_limit_lowered_below_running_jobs_is_paid_back() {
    let gate = gate(1000);
    let jobs: Vec<_> = futures_join(&gate, 4).await;
    gate.set_running_limit(2);
    assert_eq!(gate.state().running_limit, 2);

    drop(jobs);
    let state = gate.state();
    assert_eq!((state.running, state.running_limit), (0, 2));
    let _a = gate.admit("synthetic", MIB).await.unwrap();
    let _b = gate.admit("synthetic", MIB).await.unwrap();
    let third = tokio::time::timeout(Duration::from_millis(1), gate.admit("synthetic", MIB)).await;
    assert!(third.is_err(), "two slots only");
}

async fn futures_join(gate: &Gate, n: usize) -> Vec<memgate::gate::Reservation> {
    let mut jobs = Vec::new();
    for _ in 0..n {
        jobs.push(gate.admit("synthetic", MIB).await.unwrap());
    }
    jobs
}

#[tokio::test(start_paused = true)]
async fn a_measured_peak_corrects_the_next_estimates_of_its_class() {
    let gate = gate(2000);
    let mut job = gate.admit("jpeg", 50 * MIB).await.unwrap();
    job.record_peak(150 * MIB);
    drop(job);

    let next = gate.reserve("jpeg", 50 * MIB).await.unwrap();
    assert_eq!(next.bytes(), 150 * MIB);
    let other = gate.reserve("png", 50 * MIB).await.unwrap();
    assert_eq!(other.bytes(), 50 * MIB);
}

#[tokio::test(start_paused = true)]
async fn a_new_class_runs_only_its_probe_jobs_until_one_ends() {
    let probing = GateSettings {
        probe_jobs: 2,
        ..GateSettings::default()
    };
    let gate = Gate::new(probing, 1000 * MIB);
    let mut first = gate.admit("gif", 10 * MIB).await.unwrap();
    let _second = gate.admit("gif", 10 * MIB).await.unwrap();

    let third = tokio::spawn({
        let gate = gate.clone();
        async move { gate.reserve("gif", 10 * MIB).await.map(|r| r.bytes()) }
    });
    tokio::time::sleep(Duration::from_millis(1)).await;
    assert_eq!(
        gate.state().waiting_memory,
        1,
        "the third waits for the probe"
    );
    assert!(gate.costs()[0].probing);

    // The first probe ends having used three times its estimate: the
    // waiter goes on, with the corrected estimate.
    first.record_peak(30 * MIB);
    drop(first);
    assert_eq!(third.await.unwrap().unwrap(), 30 * MIB);
    assert!(!gate.costs()[0].probing);
}

#[tokio::test(start_paused = true)]
async fn retry_delay_grows_with_the_queue_and_service_time() {
    let settings = GateSettings {
        max_queue: 4,
        // Long enough that the queue's length, not its predicted wait,
        // is what refuses.
        max_wait_ms: 60_000,
        // Four run slots, but memory for one job at a time: the delay
        // follows the jobs really running, not the slots.
        min_running: 4,
        max_running: 4,
        ..settings()
    };
    let gate = Gate::new(settings, 100 * MIB);

    // Teach the gate that a job takes 3 s.
    let job = gate.admit("synthetic", 100 * MIB).await.unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    drop(job);

    let _running = gate.admit("synthetic", 100 * MIB).await.unwrap();
    for _ in 0..4 {
        let gate = gate.clone();
        tokio::spawn(async move { gate.reserve("synthetic", 100 * MIB).await.map(drop) });
    }
    tokio::time::sleep(Duration::from_millis(1)).await;

    let refused = gate.reserve("synthetic", MIB).await.unwrap_err();
    assert_eq!(refused.reason, RefusalReason::QueueFull);
    // Five jobs ahead (four queued and this one), 3 s each, one at a time.
    assert_eq!(refused.retry_after, Some(Duration::from_secs(16)));
}

/// An operation on the gate, for the property tests.
#[derive(Clone, Debug)]
enum Op {
    Reserve(u64),
    Grow(usize, u64),
    Shrink(usize, u64),
    Drop(usize),
    Capacity(u64),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (1..400u64).prop_map(Op::Reserve),
        (0..16usize, 1..400u64).prop_map(|(i, m)| Op::Grow(i, m)),
        (0..16usize, 0..400u64).prop_map(|(i, m)| Op::Shrink(i, m)),
        (0..16usize).prop_map(Op::Drop),
        (0..2000u64).prop_map(Op::Capacity),
    ]
}

proptest! {
    #[test]
    fn reserved_never_exceeds_capacity_plus_owed_and_everything_returns(
        ops in proptest::collection::vec(op(), 1..80)
    ) {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .unwrap();
        runtime.block_on(async {
            // No waiting: every operation completes or is refused at once.
            let settings = GateSettings { max_wait_ms: 0, ..settings() };
            let gate = Gate::new(settings, 1000 * MIB);
            let mut live = Vec::new();
            let mut capacity = 1000 * MIB;

            for op in ops {
                match op {
                    Op::Reserve(mib) => {
                        if let Ok(r) = gate.reserve("p", mib * MIB).await {
                            live.push(r);
                        }
                    }
                    Op::Grow(i, mib) if !live.is_empty() => {
                        let n = live.len();
                        let _ = live[i % n].grow(mib * MIB).await;
                    }
                    Op::Shrink(i, mib) if !live.is_empty() => {
                        let n = live.len();
                        live[i % n].shrink_to(mib * MIB);
                    }
                    Op::Drop(i) if !live.is_empty() => {
                        let n = live.len();
                        drop(live.swap_remove(i % n));
                    }
                    Op::Capacity(mib) => {
                        capacity = mib * MIB;
                        gate.set_capacity(capacity);
                    }
                    _ => {}
                }

                let state = gate.state();
                let held: u64 = live.iter().map(|r| r.bytes()).sum();
                prop_assert_eq!(state.reserved, held);
                prop_assert!(state.reserved <= state.capacity + state.owed);
                prop_assert_eq!(state.in_flight, live.len());
            }

            live.clear();
            let state = gate.state();
            prop_assert_eq!(state.reserved, 0);
            prop_assert_eq!(state.owed, 0);
            prop_assert_eq!(state.capacity, capacity);
            prop_assert_eq!(state.in_flight, 0);

            // Everything really came back: the whole capacity is free.
            if capacity > 0 {
                gate.set_max_reservation(capacity);
                prop_assert!(gate.reserve("p", capacity).await.is_ok());
            }
            Ok(())
        })?;
    }
}

#[tokio::test(start_paused = true)]
async fn an_upload_reserved_by_bytes_takes_its_class_once_known() {
    let probing = GateSettings {
        probe_jobs: 1,
        ..GateSettings::default()
    };
    let gate = Gate::new(probing, 1000 * MIB);

    // Uploads are not probed: many may be read at once.
    let mut first = gate.reserve_bytes(5 * MIB).await.unwrap();
    let mut second = gate.reserve_bytes(5 * MIB).await.unwrap();
    assert_eq!(gate.state().reserved, 10 * MIB);

    // Once the header is read, the class is probed and corrected.
    first.grow_as("jpeg", 90 * MIB).await.unwrap();
    assert_eq!(first.bytes(), 90 * MIB);
    let waiting = tokio::time::timeout(Duration::from_millis(5), second.grow_as("jpeg", 90 * MIB));
    assert!(waiting.await.is_err(), "one probe job at a time");

    first.run().await.unwrap();
    first.record_peak(180 * MIB);
    drop(first);
    second.grow_as("jpeg", 90 * MIB).await.unwrap();
    assert_eq!(
        second.bytes(),
        180 * MIB,
        "corrected by the first job's peak"
    );
}

#[tokio::test(start_paused = true)]
async fn a_finished_job_keeps_its_result_memory_but_not_its_run_slot() {
    let gate = gate(1000);
    let mut job = gate.admit("webp", 100 * MIB).await.unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;

    job.finish();
    job.shrink_to(MIB);
    let state = gate.state();
    assert_eq!((state.running, state.reserved), (0, MIB));
    assert_eq!(gate.average_service_time(), Some(Duration::from_secs(2)));

    // Holding the result longer is not service time.
    tokio::time::sleep(Duration::from_secs(60)).await;
    drop(job);
    assert_eq!(gate.average_service_time(), Some(Duration::from_secs(2)));
    settled(&gate, 1000);
}

#[tokio::test(start_paused = true)]
async fn a_job_that_would_wait_past_max_wait_is_refused_at_once() {
    let settings = GateSettings {
        max_queue: 100,
        max_wait_ms: 1000,
        min_running: 1,
        max_running: 1,
        ..settings()
    };
    let gate = Gate::new(settings, 1000 * MIB);

    // One job of 600 ms sets the service time.
    let first = gate.admit("synthetic", MIB).await.unwrap();
    tokio::time::advance(Duration::from_millis(600)).await;
    drop(first);

    // One runs, one waits (600 ms predicted); a third would wait 1200 ms.
    let _running = gate.admit("synthetic", MIB).await.unwrap();
    let waiting = tokio::spawn({
        let gate = gate.clone();
        async move { gate.admit("synthetic", MIB).await.map(drop) }
    });
    tokio::time::sleep(Duration::from_millis(1)).await;
    assert_eq!(gate.state().queued, 1);

    let asked = tokio::time::Instant::now();
    let refusal = gate.admit("synthetic", MIB).await.unwrap_err();
    assert_eq!(refusal.reason, RefusalReason::QueueFull);
    assert_eq!(asked.elapsed(), Duration::ZERO, "refused without waiting");
    assert!(refusal.retry_after.is_some());
    drop(waiting);
}

#[tokio::test(start_paused = true)]
async fn a_job_let_into_the_queue_is_not_turned_away_when_it_waits_again() {
    let settings = GateSettings {
        max_queue: 1,
        min_running: 1,
        max_running: 1,
        ..settings()
    };
    let gate = Gate::new(settings, 101 * MIB);
    let slot = gate.admit("synthetic", MIB).await.unwrap();
    let memory = gate.reserve("synthetic", 100 * MIB).await.unwrap();

    // B waits for memory, then, later, for its run slot.
    let b = tokio::spawn({
        let gate = gate.clone();
        async move {
            let mut job = gate.reserve("synthetic", 50 * MIB).await?;
            tokio::time::sleep(Duration::from_secs(1)).await;
            job.run().await.map(|()| job)
        }
    });
    tokio::time::sleep(Duration::from_millis(1)).await;
    drop(memory);

    // While B works, F fills the queue waiting for memory.
    tokio::time::sleep(Duration::from_millis(10)).await;
    let f = tokio::spawn({
        let gate = gate.clone();
        async move { gate.reserve("synthetic", 60 * MIB).await.map(drop) }
    });
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(gate.state().queued, 1, "F waits");

    // B's second wait joins the full queue instead of being refused.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(gate.state().queued, 2, "B waits for its run slot too");
    drop(slot);
    let b = b.await.unwrap().unwrap();
    assert!(b.is_running());
    drop(b);
    f.await.unwrap().unwrap();
}

#[tokio::test(start_paused = true)]
async fn while_a_class_is_probed_only_max_running_jobs_wait_for_it() {
    let settings = GateSettings {
        probe_jobs: 1,
        min_running: 1,
        max_running: 2,
        ..GateSettings::default()
    };
    let gate = Gate::new(settings, 1000 * MIB);
    let _probe = gate.reserve("jpeg", MIB).await.unwrap();

    let mut waiting = Vec::new();
    for _ in 0..2 {
        let gate = gate.clone();
        waiting.push(tokio::spawn(async move {
            gate.reserve("jpeg", MIB).await.map(drop)
        }));
    }
    tokio::time::sleep(Duration::from_millis(1)).await;
    assert_eq!(gate.state().queued, 2);

    let asked = tokio::time::Instant::now();
    let refusal = gate.reserve("jpeg", MIB).await.unwrap_err();
    assert_eq!(refusal.reason, RefusalReason::QueueFull);
    assert_eq!(asked.elapsed(), Duration::ZERO, "refused at once");
}

#[tokio::test(start_paused = true)]
async fn a_refusal_before_any_job_ended_waits_as_long_as_the_queue_would() {
    let settings = GateSettings {
        max_queue: 1,
        max_wait_ms: 10_000,
        ..settings()
    };
    let gate = Gate::new(settings, 100 * MIB);
    let _running = gate.admit("synthetic", 100 * MIB).await.unwrap();
    let waiter = gate.clone();
    tokio::spawn(async move { waiter.reserve("synthetic", 100 * MIB).await.map(drop) });
    tokio::time::sleep(Duration::from_millis(1)).await;

    let refused = gate.reserve("synthetic", MIB).await.unwrap_err();
    assert_eq!(refused.reason, RefusalReason::QueueFull);
    // Three quarters of max_wait, rounded up to whole seconds.
    assert_eq!(refused.retry_after, Some(Duration::from_secs(8)));
}

#[tokio::test(start_paused = true)]
async fn shedding_takes_the_youngest_running_job_and_never_an_accepted_one() {
    let gate = gate(1000);
    let old = gate.admit("synthetic", 100 * MIB).await.unwrap();
    let young = gate.admit("synthetic", 100 * MIB).await.unwrap();
    let mut accepted = gate.reserve("synthetic", 100 * MIB).await.unwrap();
    accepted.run_accepted().await.unwrap();
    let waiting = gate.reserve("synthetic", 100 * MIB).await.unwrap();

    let shedding = gate.shed(50 * MIB);
    assert_eq!((shedding.jobs, shedding.bytes), (1, 100 * MIB));
    assert!(young.shed_flag().is_shed());
    assert!(!old.shed_flag().is_shed());
    assert_eq!(young.shed_refusal().unwrap().reason, RefusalReason::Shed);
    assert_eq!(gate.state().refused.shed, 1);

    // Asked for more than anyone may give: only the other running job.
    let more = gate.shed(1000 * MIB);
    assert_eq!((more.jobs, more.pending), (1, 100 * MIB));
    assert!(old.shed_flag().is_shed());
    assert!(!accepted.shed_flag().is_shed());
    assert!(!waiting.shed_flag().is_shed());
    assert!(accepted.shed_refusal().is_none());

    drop((old, young, accepted, waiting));
    settled(&gate, 1000);
}

#[tokio::test(start_paused = true)]
async fn a_shed_job_teaches_the_gate_nothing() {
    let gate = gate(1000);
    let mut job = gate.admit("synthetic", 100 * MIB).await.unwrap();
    gate.shed(1);
    tokio::time::sleep(Duration::from_millis(10)).await;
    job.record_peak(5 * MIB);
    drop(job);

    assert!(gate.take_completions().is_empty());
    assert_eq!(gate.average_service_time(), None);
    assert_eq!(gate.corrected("synthetic", 100 * MIB), 100 * MIB);
}
