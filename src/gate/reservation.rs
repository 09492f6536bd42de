//! A job's hold on the gate: memory, and a run slot once it runs.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use tokio::sync::OwnedSemaphorePermit;
use tokio::time::Instant;

use super::{Completion, Inner, Need, Patience, Refusal, RefusalReason, Shed, UNIT_BYTES, Waits};

/// Memory held by one job, and a run slot once [`Reservation::run`] has
/// returned. Dropping it returns both, on every path: success, error,
/// panic (drop runs during unwinding), a cancelled future, a timeout.
///
/// When the job [ran](Reservation::run), dropping it also reports the
/// job's service time and, if [recorded](Reservation::record_peak), its
/// measured peak to the gate, which learns from them.
#[derive(Debug)]
#[must_use = "a reservation returns its memory as soon as it is dropped"]
pub struct Reservation {
    gate: Arc<Inner>,
    class: String,
    estimate: u64,
    units: u64,
    reserved_at: Instant,
    run_started: Option<Instant>,
    peak: Option<u64>,
    /// The job's waits so far: a job let into the queue once is not
    /// turned away by the queue's bounds when it waits again.
    waits: Waits,
    /// Raised when the gate sheds the job.
    shed: Shed,
    /// The job's key among those that may be shed, while it runs.
    sheddable: Option<u64>,
    /// A place among the jobs probing a new class; dropped after `Drop`
    /// has marked the class known, so that waiters wake to a known class.
    _probe: Option<OwnedSemaphorePermit>,
}

impl Reservation {
    pub(super) fn new(
        gate: Arc<Inner>,
        class: &str,
        estimate: u64,
        units: u64,
        probe: Option<OwnedSemaphorePermit>,
        waits: Waits,
    ) -> Self {
        gate.in_flight.fetch_add(1, Ordering::AcqRel);
        gate.admitted.fetch_add(1, Ordering::Relaxed);
        Self {
            gate,
            class: class.to_owned(),
            estimate,
            units,
            reserved_at: Instant::now(),
            run_started: None,
            peak: None,
            waits,
            shed: Shed::default(),
            sheddable: None,
            _probe: probe,
        }
    }

    /// The job's class.
    pub fn class(&self) -> &str {
        &self.class
    }

    /// The job's own latest estimate, in bytes, before correction.
    pub fn estimate(&self) -> u64 {
        self.estimate
    }

    /// The memory held, in bytes.
    pub fn bytes(&self) -> u64 {
        self.units * UNIT_BYTES
    }

    /// Whether the job holds a run slot.
    pub fn is_running(&self) -> bool {
        self.run_started.is_some()
    }

    /// Raises the job's estimate to `estimate` bytes, once it knows more
    /// about its input (an image's header has been read, say). The new
    /// estimate is corrected as in [`Gate::reserve`](super::Gate::reserve)
    /// and the difference waited for in the same queue; an estimate below
    /// what is held changes nothing.
    ///
    /// # Errors
    ///
    /// As [`Gate::reserve`](super::Gate::reserve). The reservation keeps
    /// what it held before the call.
    ///
    /// # Cancel safety
    ///
    /// Dropping the future leaves the reservation as it was.
    pub async fn grow(&mut self, estimate: u64) -> Result<(), Refusal> {
        let target = self.gate.costs.correct(&self.class, estimate);
        let units = self.gate.units_within_limit(target)?;
        let extra = u64::from(units).saturating_sub(self.units);
        if extra > 0 {
            // `extra` is at most `units`, which fits in a u32.
            let extra32 = u32::try_from(extra).expect("extra units fit in u32");
            self.gate
                .wait(Need::Memory, extra32, Patience::Bounded, &mut self.waits)
                .await?;
            self.units += extra;
        }
        self.estimate = self.estimate.max(estimate);
        Ok(())
    }

    /// Names the job's class, then grows as [`Reservation::grow`] does:
    /// for a reservation made with
    /// [`Gate::reserve_bytes`](super::Gate::reserve_bytes) once the job
    /// knows what it is. A class still probed is waited for as in
    /// [`Gate::reserve`](super::Gate::reserve).
    ///
    /// # Errors
    ///
    /// As [`Gate::reserve`](super::Gate::reserve). The reservation keeps
    /// what it held before the call.
    ///
    /// # Cancel safety
    ///
    /// Dropping the future leaves the reservation as it was, apart from
    /// its class.
    pub async fn grow_as(&mut self, class: &str, estimate: u64) -> Result<(), Refusal> {
        if self.class != class {
            self.class = class.to_owned();
            self._probe = self.gate.probe(class, &mut self.waits).await?;
        }
        self.grow(estimate).await?;
        self.estimate = estimate;
        Ok(())
    }

    /// Gives back all but `bytes` of what is held, for a job that has
    /// released a buffer. Holding less than `bytes` already changes nothing.
    pub fn shrink_to(&mut self, bytes: u64) {
        let keep = bytes.div_ceil(UNIT_BYTES);
        if keep < self.units {
            self.gate.memory.release(self.units - keep);
            self.units = keep;
        }
    }

    /// Takes a run slot, waiting in the bounded queue if every slot is in
    /// use. Calling it again while running does nothing.
    ///
    /// # Errors
    ///
    /// `queue_full`, `wait_timed_out` or `draining`; the memory stays held
    /// until the reservation is dropped.
    ///
    /// # Cancel safety
    ///
    /// Dropping the future takes no slot.
    pub async fn run(&mut self) -> Result<(), Refusal> {
        self.run_with(Patience::Bounded).await?;
        if self.sheddable.is_none() {
            let key = self.gate.shedder.register(self.units, self.shed.clone());
            self.sheddable = Some(key);
        }
        Ok(())
    }

    /// The flag the gate raises when it sheds this job, to be checked by
    /// the job between its stages. Only jobs that took their run slot with
    /// [`Reservation::run`] are ever shed.
    pub fn shed_flag(&self) -> Shed {
        self.shed.clone()
    }

    /// The refusal to answer a job that stopped because it was shed, or
    /// `None` when it was not shed. Counted as a `shed` refusal.
    pub fn shed_refusal(&self) -> Option<Refusal> {
        self.shed
            .is_shed()
            .then(|| self.gate.refusal(RefusalReason::Shed))
    }

    /// Takes a run slot as [`Reservation::run`] does, but waits as long as
    /// it takes, even past `gate.max_queue` waiters: for a job the service
    /// has accepted already (an asynchronous job answered 202), whose
    /// memory is held and which must not be dropped for a long queue. It
    /// counts as queued while it waits, and is never shed.
    ///
    /// # Errors
    ///
    /// `draining` only.
    ///
    /// # Cancel safety
    ///
    /// Dropping the future takes no slot.
    pub async fn run_accepted(&mut self) -> Result<(), Refusal> {
        self.run_with(Patience::Accepted).await
    }

    async fn run_with(&mut self, patience: Patience) -> Result<(), Refusal> {
        if self.run_started.is_none() {
            self.gate
                .wait(Need::RunSlot, 1, patience, &mut self.waits)
                .await?;
            self.run_started = Some(Instant::now());
        }
        Ok(())
    }

    /// Ends the job's run but keeps its memory: the run slot is returned and
    /// the job's service time and peak are reported, as when it is dropped,
    /// while the memory stays held, for a result kept after the work (shrink
    /// it to the result's size with [`Reservation::shrink_to`]). Does
    /// nothing for a reservation that is not running.
    pub fn finish(&mut self) {
        let Some(started) = self.run_started.take() else {
            return;
        };
        if let Some(key) = self.sheddable.take() {
            self.gate.shedder.unregister(key);
        }
        self.gate.running.release(1);
        self.report(started);
    }

    /// Reports a run that ended to the gate's cost model and completions.
    fn report(&mut self, started: Instant) {
        // A job that never named its class teaches nothing, nor does one
        // shed midway: its short run and partial peak would make the class
        // look quicker and smaller than it is.
        if self.class.is_empty() || self.shed.is_shed() {
            return;
        }
        let gate = &self.gate;
        if let Some(peak) = self.peak {
            gate.costs.observe(&self.class, self.estimate, peak);
        }
        gate.costs.ended(&self.class);
        gate.complete(Completion {
            class: self.class.clone(),
            service_time: started.elapsed(),
            estimate: self.estimate,
            reserved: self.units * UNIT_BYTES,
            peak: self.peak,
        });
    }

    /// Records the job's measured peak memory, in bytes. When the
    /// reservation ends, the peak is compared with the estimate to correct
    /// later estimates of the class.
    pub fn record_peak(&mut self, bytes: u64) {
        self.peak = Some(self.peak.map_or(bytes, |p| p.max(bytes)));
    }

    /// How long the reservation has been held.
    pub fn held_for(&self) -> std::time::Duration {
        self.reserved_at.elapsed()
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.gate.memory.release(self.units);
        self.finish();
        self.gate.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}
