//! The admission gate: jobs start only while there is memory for them.
//!
//! Admission is by bytes, not by job count. A job asks for a
//! [`Reservation`] sized by its memory estimate; the gate's *capacity* is
//! the memory the controller currently allows jobs to hold. Capacity can
//! move at any time, also below what is already reserved: the difference is
//! *owed* and paid back as reservations end.
//!
//! A second limit counts *running* jobs, for CPU: a reservation holds
//! memory from the moment it is granted (an upload needs memory too), and
//! takes a run slot with [`Reservation::run`] when its CPU-bound work
//! starts.
//!
//! Waiting is bounded in length ([`GateSettings::max_queue`]) and in time
//! ([`GateSettings::max_wait_ms`]). Every refusal says why, and carries a
//! suggested retry delay computed from the queue and recent service times.
//!
//! Every path that ends a job returns what it held: a reservation gives
//! back its memory and its run slot in `Drop`, whether the job finished,
//! failed, panicked, was cancelled or was timed out.
//!
//! # Examples
//!
//! ```
//! use memgate::gate::{Gate, GateSettings};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), memgate::gate::Refusal> {
//! let gate = Gate::new(GateSettings::default(), 512 << 20);
//!
//! let mut job = gate.reserve("thumbnail", 150 << 20).await?;
//! job.run().await?;
//! // ... the work, holding 150 MiB of the gate's 512 MiB ...
//! job.record_peak(140 << 20);
//! drop(job);
//!
//! assert_eq!(gate.state().reserved, 0);
//! # Ok(())
//! # }
//! ```

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::{OwnedSemaphorePermit, TryAcquireError};
use tokio::time::Instant;

mod cost;
mod pool;
mod refusal;
mod reservation;
mod shed;

pub use cost::ClassCost;
pub use refusal::{Refusal, RefusalReason};
pub use reservation::Reservation;
pub use shed::{Shed, Shedding};

use cost::CostModel;
use pool::{Pool, PoolError};
use shed::Shedder;

/// Memory is counted in units of this many bytes: tokio semaphores take
/// `u32` permit counts per acquire, and KiB units let one job hold up to
/// 4 TiB while rounding costs a job at most 1 KiB.
pub const UNIT_BYTES: u64 = 1024;

/// How many finished jobs the gate keeps for the controller between ticks.
/// At 50 ms ticks this is far more than a 2-core machine finishes.
const MAX_PENDING_COMPLETIONS: usize = 4096;

/// Weight of the newest service time in the running average used for
/// retry delays: about the last ten jobs count.
const SERVICE_TIME_WEIGHT: f64 = 0.1;

/// Share of `gate.max_wait_ms` a job's predicted wait may take for it to
/// be let into the queue. The prediction is an average: a job predicted to
/// wait just under the bound is as likely as not to wait past it, and to
/// be refused then, after the whole wait, instead of at once.
const QUEUE_WAIT_SHARE: f64 = 0.75;

/// The bounds on a suggested retry delay. Clients such as Cloud Tasks
/// honour `Retry-After` as given; a minute is long enough for a queue to
/// drain and short enough not to strand work.
const MIN_RETRY_AFTER: Duration = Duration::from_secs(1);
const MAX_RETRY_AFTER: Duration = Duration::from_secs(60);

/// The admission policy: what the controller steers the gate by. Every
/// mode runs the same gate and server; only the limits differ, so that
/// the policies can be compared on the same code.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum AdmissionMode {
    /// memgate: capacity steered from measured memory under the ceiling,
    /// the running limit from service times, new job classes probed.
    #[default]
    Adaptive,
    /// A fixed pool: `gate.max_running` jobs run, `gate.max_queue` wait,
    /// the rest are refused. Memory is not gated.
    Fixed,
    /// A running limit adapted from job latency alone (Netflix's Gradient2,
    /// from the tower-acc crate) between `gate.min_running` and
    /// `gate.max_running`. Memory is not gated.
    Latency,
    /// Every job starts at once: one task per request, nothing gated.
    Unbounded,
}

impl AdmissionMode {
    /// The mode's name, as the configuration spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Adaptive => "adaptive",
            Self::Fixed => "fixed",
            Self::Latency => "latency",
            Self::Unbounded => "unbounded",
        }
    }
}

/// The running limit of `unbounded` mode: more than any machine runs, so
/// that every job starts at once, as with one task per request.
pub const UNBOUNDED_RUNNING: usize = 1 << 20;

/// Settings of the gate, the `[gate]` section of the configuration.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct GateSettings {
    /// The admission policy: `adaptive` (memgate), `fixed`, `latency` or
    /// `unbounded`, for comparisons; see [`AdmissionMode`].
    pub mode: AdmissionMode,
    /// Jobs that may wait for memory or a run slot at once; the next one is
    /// refused with `queue_full`. Count, 0 (never wait) to 1,000,000.
    pub max_queue: usize,
    /// Longest a job waits for memory or a run slot before it is refused
    /// with `wait_timed_out`. Milliseconds, 0 (never wait) to 3,600,000.
    pub max_wait_ms: u64,
    /// The fewest running jobs the controller may allow. Count, at least 1.
    pub min_running: usize,
    /// The most running jobs the controller may allow, and the limit the
    /// gate starts with. Count, at least `min_running`.
    pub max_running: usize,
    /// Jobs of a class never seen to finish that may hold reservations at
    /// once, until the first one ends and its measured peak corrects the
    /// class's estimates. Count, 0 (no probing) to 1000.
    pub probe_jobs: usize,
}

impl Default for GateSettings {
    fn default() -> Self {
        Self {
            mode: AdmissionMode::Adaptive,
            max_queue: 64,
            max_wait_ms: 10_000,
            min_running: 1,
            max_running: 32,
            probe_jobs: 2,
        }
    }
}

impl GateSettings {
    /// The longest wait, as a duration.
    pub fn max_wait(&self) -> Duration {
        Duration::from_millis(self.max_wait_ms)
    }

    /// Checks the ranges stated on each field; the error names the key.
    pub fn validate(&self) -> Result<(), String> {
        if self.max_queue > 1_000_000 {
            return Err(format!(
                "gate.max_queue: {} is above 1000000",
                self.max_queue
            ));
        }
        if self.max_wait_ms > 3_600_000 {
            return Err(format!(
                "gate.max_wait_ms: {} is above 3600000",
                self.max_wait_ms
            ));
        }
        if self.probe_jobs > 1000 {
            return Err(format!(
                "gate.probe_jobs: {} is above 1000",
                self.probe_jobs
            ));
        }
        if self.min_running == 0 {
            return Err("gate.min_running: must be at least 1".to_owned());
        }
        if self.max_running < self.min_running {
            return Err(format!(
                "gate.max_running: {} is below gate.min_running ({})",
                self.max_running, self.min_running
            ));
        }
        Ok(())
    }
}

/// Which limit holds jobs back, if any.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Binding {
    /// Nothing is waiting.
    None,
    /// Jobs wait for memory.
    Memory,
    /// Jobs have memory and wait for a run slot.
    Cpu,
}

/// The gate's accounts at one instant. Sizes are in bytes.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct GateState {
    /// The memory jobs may hold in total.
    pub capacity: u64,
    /// The memory jobs hold now.
    pub reserved: u64,
    /// Held memory that will be kept, not returned, as jobs end, because
    /// the capacity was lowered below what was reserved.
    pub owed: u64,
    /// The largest reservation the gate accepts; larger jobs are refused
    /// with `too_large` at once.
    pub max_reservation: u64,
    /// Reservations alive, running or not.
    pub in_flight: usize,
    /// Reservations that hold a run slot.
    pub running: usize,
    /// How many jobs may run at once.
    pub running_limit: usize,
    /// Jobs waiting for memory or a run slot.
    pub queued: usize,
    /// Of those, jobs waiting for memory.
    pub waiting_memory: usize,
    /// Of those, jobs waiting for a run slot.
    pub waiting_running: usize,
    /// Whether [`Gate::close`] was called.
    pub draining: bool,
    /// Reservations granted since the gate was built.
    pub admitted: u64,
    /// Refusals since the gate was built, by reason.
    pub refused: Refusals,
}

/// Refusals counted by reason.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Refusals {
    /// `queue_full` refusals.
    pub queue_full: u64,
    /// `wait_timed_out` refusals.
    pub wait_timed_out: u64,
    /// `too_large` refusals.
    pub too_large: u64,
    /// `draining` refusals.
    pub draining: u64,
    /// `shed` refusals: running jobs given up to keep memory under the
    /// limit.
    pub shed: u64,
}

impl GateState {
    /// Which limit holds jobs back: memory first, since a job waiting for
    /// memory would still need a run slot after it.
    pub fn binding(&self) -> Binding {
        if self.waiting_memory > 0 {
            Binding::Memory
        } else if self.waiting_running > 0 {
            Binding::Cpu
        } else {
            Binding::None
        }
    }
}

/// A job that ran and ended, reported to the controller.
#[derive(Clone, Debug, PartialEq)]
pub struct Completion {
    /// The job's class.
    pub class: String,
    /// From taking a run slot to giving the reservation back.
    pub service_time: Duration,
    /// The job's own estimate of its memory, in bytes.
    pub estimate: u64,
    /// The memory it held when it ended, in bytes.
    pub reserved: u64,
    /// Its measured peak, in bytes, when the job recorded one.
    pub peak: Option<u64>,
}

/// The admission gate. Cheap to clone: clones share one gate.
#[derive(Clone, Debug)]
pub struct Gate {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    settings: GateSettings,
    memory: Pool,
    running: Pool,
    max_reservation: AtomicU64,
    in_flight: AtomicUsize,
    admitted: AtomicU64,
    refused: [AtomicU64; 5],
    queued: AtomicUsize,
    waiting_memory: AtomicUsize,
    waiting_running: AtomicUsize,
    draining: AtomicBool,
    costs: CostModel,
    service: Mutex<Service>,
    shedder: Shedder,
}

/// Recent service times, for retry delays and the controller.
#[derive(Debug, Default)]
struct Service {
    average: Option<Duration>,
    completions: Vec<Completion>,
}

/// Whether a wait is bounded by the queue's settings.
#[derive(Clone, Copy, Debug)]
enum Patience {
    /// At most `gate.max_queue` waiters, each at most `gate.max_wait_ms`.
    Bounded,
    /// A job the service has accepted (answered 202 for): it waits as long
    /// as it takes, refused only by draining.
    Accepted,
}

/// A job's history in the queue. Only its first wait is held to the
/// queue's bounds (length and predicted wait): a job that was let in is
/// not turned away by them later, between its probe, its memory and its
/// run slot. All its waits together are held to `gate.max_wait_ms`.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Waits {
    /// Whether the job has waited in the queue before.
    queued: bool,
    /// Time it has waited so far.
    total: Duration,
}

/// Which pool a wait is for; they count their waiters apart.
#[derive(Clone, Copy, Debug)]
enum Need {
    Memory,
    RunSlot,
}

impl Gate {
    /// A gate with `capacity` bytes for jobs, the largest reservation
    /// bounded by the same amount, and `settings.max_running` run slots.
    ///
    /// # Panics
    ///
    /// If `settings` fail [`GateSettings::validate`]: the configuration is
    /// checked before a gate is built.
    pub fn new(settings: GateSettings, capacity: u64) -> Self {
        if let Err(e) = settings.validate() {
            panic!("invalid gate settings: {e}");
        }

        let inner = Inner {
            memory: Pool::new(capacity / UNIT_BYTES),
            running: Pool::new(match settings.mode {
                AdmissionMode::Unbounded => UNBOUNDED_RUNNING as u64,
                _ => settings.max_running as u64,
            }),
            max_reservation: AtomicU64::new(capacity),
            in_flight: AtomicUsize::new(0),
            admitted: AtomicU64::new(0),
            refused: Default::default(),
            queued: AtomicUsize::new(0),
            waiting_memory: AtomicUsize::new(0),
            waiting_running: AtomicUsize::new(0),
            draining: AtomicBool::new(false),
            // Probing is part of memgate's policy, not of the others'.
            costs: CostModel::new(if settings.mode == AdmissionMode::Adaptive {
                settings.probe_jobs
            } else {
                0
            }),
            service: Mutex::new(Service::default()),
            shedder: Shedder::default(),
            settings,
        };
        Self {
            inner: Arc::new(inner),
        }
    }

    /// The settings the gate was built with.
    pub fn settings(&self) -> &GateSettings {
        &self.inner.settings
    }

    /// Reserves memory for a job of `class` that its code estimates at
    /// `estimate` bytes. The estimate is first corrected by what earlier
    /// jobs of the class really used.
    ///
    /// Returns at once when the memory is free; otherwise waits in FIFO
    /// order, at most [`GateSettings::max_wait_ms`].
    ///
    /// # Errors
    ///
    /// A [`Refusal`] saying why: `too_large` (at once, for a job larger
    /// than the gate can ever hold), `queue_full`, `wait_timed_out` or
    /// `draining`.
    ///
    /// # Cancel safety
    ///
    /// Dropping the future while it waits reserves nothing and leaves the
    /// queue.
    pub async fn reserve(&self, class: &str, estimate: u64) -> Result<Reservation, Refusal> {
        let mut waits = Waits::default();
        let probe = self.inner.probe(class, &mut waits).await?;
        let bytes = self.inner.costs.correct(class, estimate);
        let units = self.inner.units_within_limit(bytes)?;
        self.inner
            .wait(Need::Memory, units, Patience::Bounded, &mut waits)
            .await?;

        Ok(Reservation::new(
            Arc::clone(&self.inner),
            class,
            estimate,
            u64::from(units),
            probe,
            waits,
        ))
    }

    /// Reserves `bytes` exactly, for a job that does not know its class
    /// yet: an upload whose body must be read before its format is known.
    /// No correction applies and no probe is taken; the job names its class
    /// later with [`Reservation::grow_as`].
    ///
    /// # Errors
    ///
    /// As [`Gate::reserve`].
    ///
    /// # Cancel safety
    ///
    /// As [`Gate::reserve`].
    pub async fn reserve_bytes(&self, bytes: u64) -> Result<Reservation, Refusal> {
        let mut waits = Waits::default();
        let units = self.inner.units_within_limit(bytes)?;
        self.inner
            .wait(Need::Memory, units, Patience::Bounded, &mut waits)
            .await?;
        Ok(Reservation::new(
            Arc::clone(&self.inner),
            "",
            bytes,
            u64::from(units),
            None,
            waits,
        ))
    }

    /// Reserves memory and a run slot: [`Gate::reserve`] then
    /// [`Reservation::run`], for jobs that start working at once.
    ///
    /// # Errors
    ///
    /// As [`Gate::reserve`] and [`Reservation::run`].
    pub async fn admit(&self, class: &str, estimate: u64) -> Result<Reservation, Refusal> {
        let mut reservation = self.reserve(class, estimate).await?;
        reservation.run().await?;
        Ok(reservation)
    }

    /// What a job of `class` estimated at `estimate` bytes would reserve.
    pub fn corrected(&self, class: &str, estimate: u64) -> u64 {
        self.inner.costs.correct(class, estimate)
    }

    /// Moves the capacity to `bytes`. Below what is reserved, the
    /// difference is owed and paid back as reservations end.
    pub fn set_capacity(&self, bytes: u64) {
        self.inner.memory.resize(bytes / UNIT_BYTES);
    }

    /// Sets the largest reservation the gate accepts, in bytes.
    pub fn set_max_reservation(&self, bytes: u64) {
        self.inner.max_reservation.store(bytes, Ordering::Release);
    }

    /// Sets how many jobs may run at once, clamped to the settings' bounds;
    /// in `unbounded` mode there is no limit to set.
    pub fn set_running_limit(&self, limit: usize) {
        let settings = &self.inner.settings;
        let limit = match settings.mode {
            AdmissionMode::Unbounded => UNBOUNDED_RUNNING,
            _ => limit.clamp(settings.min_running, settings.max_running),
        };
        self.inner.running.resize(limit as u64);
    }

    /// Sheds running jobs, the youngest first, until those shed and not yet
    /// ended hold at least `bytes`: each job's [`Shed`] flag is raised, it
    /// stops at its next check, and its client is refused with `shed`.
    /// Asynchronous jobs, accepted already, are never shed.
    pub fn shed(&self, bytes: u64) -> Shedding {
        self.inner.shedder.shed(bytes)
    }

    /// Starts draining: nothing new is admitted, and every job waiting for
    /// memory or a run slot is refused with `draining`. Jobs already
    /// running carry on and return what they hold as they end.
    pub fn close(&self) {
        self.inner.draining.store(true, Ordering::Release);
        self.inner.memory.close();
        self.inner.running.close();
    }

    /// The gate's accounts at this instant.
    pub fn state(&self) -> GateState {
        let inner = &self.inner;
        let memory = inner.memory.snapshot();
        let running = inner.running.snapshot();
        GateState {
            capacity: memory.capacity * UNIT_BYTES,
            reserved: memory.held * UNIT_BYTES,
            owed: memory.owed * UNIT_BYTES,
            max_reservation: inner.max_reservation.load(Ordering::Acquire),
            in_flight: inner.in_flight.load(Ordering::Acquire),
            running: running.held as usize,
            running_limit: running.capacity as usize,
            queued: inner.queued.load(Ordering::Acquire),
            waiting_memory: inner.waiting_memory.load(Ordering::Acquire),
            waiting_running: inner.waiting_running.load(Ordering::Acquire),
            draining: inner.draining.load(Ordering::Acquire),
            admitted: inner.admitted.load(Ordering::Relaxed),
            refused: Refusals {
                queue_full: inner.refused[0].load(Ordering::Relaxed),
                wait_timed_out: inner.refused[1].load(Ordering::Relaxed),
                too_large: inner.refused[2].load(Ordering::Relaxed),
                draining: inner.refused[3].load(Ordering::Relaxed),
                shed: inner.refused[4].load(Ordering::Relaxed),
            },
        }
    }

    /// Every job class's learned correction.
    pub fn costs(&self) -> Vec<ClassCost> {
        self.inner.costs.classes_snapshot()
    }

    /// Takes the jobs that ended since the last call, oldest first.
    pub fn take_completions(&self) -> Vec<Completion> {
        std::mem::take(&mut self.inner.service().completions)
    }

    /// The running average of service times, if any job has ended.
    pub fn average_service_time(&self) -> Option<Duration> {
        self.inner.service().average
    }
}

impl Inner {
    fn pool(&self, need: Need) -> (&Pool, &AtomicUsize) {
        match need {
            Need::Memory => (&self.memory, &self.waiting_memory),
            Need::RunSlot => (&self.running, &self.waiting_running),
        }
    }

    /// Checks `bytes` against the largest reservation and converts it to
    /// units.
    fn units_within_limit(&self, bytes: u64) -> Result<u32, Refusal> {
        let max = self.max_reservation.load(Ordering::Acquire);
        let units = u32::try_from(bytes.div_ceil(UNIT_BYTES));
        match units {
            Ok(units) if bytes <= max => Ok(units),
            _ => Err(self.refusal(RefusalReason::TooLarge { bytes, max })),
        }
    }

    /// Takes `units` from the pool for `need`: at once when free, else in
    /// the queue. A job's first wait is held to the queue's bounds, and
    /// all its waits together to `gate.max_wait_ms` (see [`Waits`]), unless
    /// `patience` says the job was accepted already.
    async fn wait(
        &self,
        need: Need,
        units: u32,
        patience: Patience,
        waits: &mut Waits,
    ) -> Result<(), Refusal> {
        if self.draining.load(Ordering::Acquire) {
            return Err(self.refusal(RefusalReason::Draining));
        }

        let (pool, waiting) = self.pool(need);
        match pool.try_acquire(units) {
            Ok(()) => return Ok(()),
            Err(PoolError::Closed) => return Err(self.refusal(RefusalReason::Draining)),
            Err(PoolError::Busy) => {}
        }

        let started = Instant::now();
        let waited = match patience {
            Patience::Bounded => {
                let _place = self.take_place(waiting, waits)?;
                let budget = self.settings.max_wait().saturating_sub(waits.total);
                tokio::time::timeout(budget, pool.acquire(units)).await
            }
            Patience::Accepted => {
                let _place = self.join_queue(waiting);
                Ok(pool.acquire(units).await)
            }
        };
        waits.queued = true;
        waits.total += started.elapsed();
        match waited {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(self.refusal(RefusalReason::Draining)),
            Err(_) => Err(self.refusal(RefusalReason::WaitTimedOut)),
        }
    }

    /// A place in the queue: checked against its bounds on a job's first
    /// wait, given on the later ones.
    fn take_place<'a>(
        &'a self,
        waiting: &'a AtomicUsize,
        waits: &Waits,
    ) -> Result<QueuePlace<'a>, Refusal> {
        if waits.queued {
            Ok(self.join_queue(waiting))
        } else {
            self.enter_queue(waiting)
        }
    }

    /// Waits for a place among the jobs probing `class`, while it is
    /// probed. The wait counts as a wait for memory: it is the memory the
    /// class might really use that is unknown.
    ///
    /// While a class is probed nothing tells how long its jobs take or
    /// how many fit, so the queue takes at most `gate.max_running`
    /// waiters then: about as many as can start together once the first
    /// job ends. The rest are refused at once, with a retry delay, rather
    /// than let in and turned away later.
    async fn probe(
        &self,
        class: &str,
        waits: &mut Waits,
    ) -> Result<Option<OwnedSemaphorePermit>, Refusal> {
        if self.draining.load(Ordering::Acquire) {
            return Err(self.refusal(RefusalReason::Draining));
        }
        let Some(probe) = self.costs.probe(class) else {
            return Ok(None);
        };
        match Arc::clone(&probe).try_acquire_owned() {
            Ok(permit) => return Ok(Some(permit)),
            // Closed: the class became known in the meantime.
            Err(TryAcquireError::Closed) => return Ok(None),
            Err(TryAcquireError::NoPermits) => {}
        }
        if self.queued.load(Ordering::Acquire) >= self.settings.max_running {
            return Err(self.refusal(RefusalReason::QueueFull));
        }

        let started = Instant::now();
        let _place = self.enter_queue(&self.waiting_memory)?;
        let waited = tokio::time::timeout(self.settings.max_wait(), probe.acquire_owned()).await;
        waits.queued = true;
        waits.total += started.elapsed();
        match waited {
            Ok(Ok(permit)) => Ok(Some(permit)),
            Ok(Err(_)) => Ok(None),
            Err(_) => Err(self.refusal(RefusalReason::WaitTimedOut)),
        }
    }

    /// Takes a place in the queue, or refuses when it is full: when it
    /// holds `gate.max_queue` jobs, or more work than can be served within
    /// [`QUEUE_WAIT_SHARE`] of `gate.max_wait_ms`. A job that would likely
    /// time out is refused now, so that its client hears it at once instead
    /// of after the whole wait.
    fn enter_queue<'a>(&'a self, waiting: &'a AtomicUsize) -> Result<QueuePlace<'a>, Refusal> {
        let max = self.settings.max_queue;
        let max_wait = self.settings.max_wait().mul_f64(QUEUE_WAIT_SHARE);
        let taken = self
            .queued
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |q| {
                let fits = self.predicted_wait(q).is_none_or(|wait| wait <= max_wait);
                (q < max && fits).then_some(q + 1)
            });
        if taken.is_err() || self.settings.max_wait_ms == 0 {
            if taken.is_ok() {
                self.queued.fetch_sub(1, Ordering::AcqRel);
            }
            return Err(self.refusal(RefusalReason::QueueFull));
        }

        waiting.fetch_add(1, Ordering::AcqRel);
        Ok(QueuePlace {
            queued: &self.queued,
            waiting,
        })
    }

    /// Takes a place in the queue even when it is full, for a job that was
    /// accepted already: it is counted, so that the queue's length tells
    /// newcomers how much work is ahead of them, but never turned away.
    fn join_queue<'a>(&'a self, waiting: &'a AtomicUsize) -> QueuePlace<'a> {
        self.queued.fetch_add(1, Ordering::AcqRel);
        waiting.fetch_add(1, Ordering::AcqRel);
        QueuePlace {
            queued: &self.queued,
            waiting,
        }
    }

    fn refusal(&self, reason: RefusalReason) -> Refusal {
        self.refused[reason.index()].fetch_add(1, Ordering::Relaxed);
        let retry_after = match reason {
            RefusalReason::TooLarge { .. } => None,
            RefusalReason::Draining => Some(MIN_RETRY_AFTER),
            RefusalReason::QueueFull | RefusalReason::WaitTimedOut | RefusalReason::Shed => {
                Some(self.retry_after())
            }
        };
        Refusal {
            reason,
            retry_after,
        }
    }

    /// How long a job entering the queue behind `ahead` others would likely
    /// wait: the jobs ahead and itself, served as many at a time as are
    /// running now, each taking the average service time. `None` until a
    /// job has finished: without a service time, only the queue's length
    /// bounds it.
    fn predicted_wait(&self, ahead: usize) -> Option<Duration> {
        let average = self.service().average?;
        let serving = self.running.snapshot().held.max(1);
        let jobs = u32::try_from(ahead + 1).unwrap_or(u32::MAX);
        let serving = u32::try_from(serving).unwrap_or(u32::MAX);
        Some(average.saturating_mul(jobs) / serving)
    }

    /// How long until the queue ahead of a new job has likely drained: the
    /// jobs waiting plus one, served as many at a time as are running now,
    /// each taking the average service time. Running jobs, not the running
    /// limit: when memory binds, fewer run than the limit allows, and a
    /// delay from the limit sends clients back before there is room.
    ///
    /// Before any job has finished the drain cannot be predicted, and the
    /// queue is full all the same: the delay is then the longest wait the
    /// queue accepts, so that a cold start's first refusals come back
    /// once jobs have ended instead of within a second, to a queue that is
    /// still full.
    fn retry_after(&self) -> Duration {
        let queued = self.queued.load(Ordering::Acquire);
        let drain = self
            .predicted_wait(queued)
            .unwrap_or_else(|| self.settings.max_wait().mul_f64(QUEUE_WAIT_SHARE));

        let whole_seconds = Duration::from_secs(drain.as_secs() + 1);
        whole_seconds.clamp(MIN_RETRY_AFTER, MAX_RETRY_AFTER)
    }

    /// Books a job that ran and ended.
    fn complete(&self, completion: Completion) {
        let mut service = self.service();
        let newest = completion.service_time;
        service.average = Some(match service.average {
            None => newest,
            Some(old) => {
                old.mul_f64(1.0 - SERVICE_TIME_WEIGHT) + newest.mul_f64(SERVICE_TIME_WEIGHT)
            }
        });

        if service.completions.len() == MAX_PENDING_COMPLETIONS {
            // The controller has stopped draining; keep the newest.
            service.completions.remove(0);
        }
        service.completions.push(completion);
    }

    fn service(&self) -> std::sync::MutexGuard<'_, Service> {
        // Plain numbers and a list: still meaningful after a panic.
        self.service.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A place in the queue, given up when dropped: a waiter that is
/// cancelled, times out or is admitted leaves the count in every case.
struct QueuePlace<'a> {
    queued: &'a AtomicUsize,
    waiting: &'a AtomicUsize,
}

impl Drop for QueuePlace<'_> {
    fn drop(&mut self) {
        self.waiting.fetch_sub(1, Ordering::AcqRel);
        self.queued.fetch_sub(1, Ordering::AcqRel);
    }
}
