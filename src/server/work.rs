//! Running a job's CPU work on tokio's blocking pool, under the gate.
//!
//! The reservation moves into the blocking closure, so it ends only when
//! the work has really finished: `spawn_blocking` work cannot be aborted,
//! and memory it still holds must stay counted even after its client has
//! gone or its deadline has passed. Those only raise the job's cancel
//! flag, which the pipeline checks between its stages.

use std::time::Duration;

use tokio::time::Instant;

use super::problem::ApiError;
use crate::gate::Reservation;
use crate::jobs::{Cancel, JobError, measure_peak};
use crate::telemetry::metrics::{JobOutcome, Metrics};

/// A job's work: runs on a blocking thread with the job's cancel flag.
pub trait Work<T>: FnOnce(&Cancel) -> Result<T, JobError> + Send + 'static {}

impl<T, F: FnOnce(&Cancel) -> Result<T, JobError> + Send + 'static> Work<T> for F {}

/// Raises the cancel flag when dropped, unless disarmed: a request future
/// that hyper drops (its client went away) stops its job at the next
/// stage.
struct CancelOnDrop(Option<Cancel>);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        if let Some(cancel) = self.0.take() {
            cancel.cancel();
        }
    }
}

/// How to run a job.
pub struct JobOptions<'a> {
    /// Longest the work may take.
    pub deadline: Duration,
    /// Nice value of the thread the work runs on, 0 to 19.
    pub nice: u8,
    /// Whether the job is asynchronous, answered 202 already: it waits for
    /// its run slot past the queue's bounds (it was accepted), and its
    /// reservation comes back with the output, to cover the stored result.
    pub background: bool,
    /// Memory the job holds from before its work starts, allocated on
    /// another thread (its request body), in bytes. The work's measured
    /// peak sees only its own thread, so this is added to it.
    pub held_bytes: u64,
    /// Where durations and estimate errors are recorded.
    pub metrics: &'a Metrics,
    /// Called once the job has its run slot.
    pub on_start: Box<dyn FnOnce() + Send + 'a>,
}

/// What a finished job hands back: its output, and its reservation when
/// the caller asked to keep it (for a stored result).
pub struct Finished<T> {
    /// The work's output.
    pub output: T,
    /// The reservation, run finished but memory still held.
    pub kept: Option<Reservation>,
}

/// Takes a run slot, runs `work` on the blocking pool and waits for it at
/// most `deadline`. For a background job, the reservation comes back with
/// the output instead of ending with the work.
///
/// # Errors
///
/// The gate's refusal of a run slot, the job's own error, 504 past the
/// deadline, 500 when the work panicked.
pub async fn run<T: Send + 'static>(
    mut reservation: Reservation,
    work: impl Work<T>,
    job: JobOptions<'_>,
) -> Result<Finished<T>, ApiError> {
    let JobOptions {
        deadline,
        nice,
        background,
        held_bytes,
        metrics,
        on_start,
    } = job;
    let queued_for = reservation.held_for();
    // TODO: a job waiting here for its run slot already holds its whole
    // estimate, so when CPU binds the reserved memory sits unused (the
    // incident burst used 60% of the limit with capacity full). Holding
    // only the input while waiting and growing once a slot is free would
    // let memory bind only when memory is short.
    if background {
        reservation.run_accepted().await?;
    } else {
        reservation.run().await?;
    }
    on_start();
    let kind = reservation.class().to_owned();
    metrics.queue_wait(&kind, queued_for);

    let cancel = Cancel::new().with_shed(reservation.shed_flag());
    let mut guard = CancelOnDrop(Some(cancel.clone()));
    let started = Instant::now();
    let handle = tokio::task::spawn_blocking(move || {
        lower_priority(nice);
        let (output, peak) = measure_peak(|| work(&cancel));
        let peak = peak.map(|peak| peak + held_bytes);
        if let Some(peak) = peak {
            reservation.record_peak(peak);
        }
        let estimate = reservation.estimate();
        let shed = match output {
            Err(JobError::Cancelled) => reservation.shed_refusal(),
            _ => None,
        };
        if background && output.is_ok() {
            reservation.finish();
            (output, Some(reservation), estimate, peak, shed)
        } else {
            // Drops here, on the blocking thread, once the work is over.
            (output, None, estimate, peak, shed)
        }
    });

    let joined = tokio::time::timeout(deadline, handle).await;
    let outcome = match joined {
        Err(_) => {
            // The guard raises the flag; the work stops at its next stage
            // and its reservation ends with it.
            metrics.job_finished(&kind, JobOutcome::Deadline, started.elapsed());
            return Err(ApiError::DeadlineExceeded(deadline));
        }
        Ok(Err(join)) if join.is_panic() => {
            tracing::error!(kind, "job panicked; its reservation was returned");
            metrics.job_finished(&kind, JobOutcome::Panicked, started.elapsed());
            return Err(ApiError::JobPanicked);
        }
        Ok(Err(_)) => {
            metrics.job_finished(&kind, JobOutcome::Cancelled, started.elapsed());
            return Err(ApiError::JobPanicked);
        }
        Ok(Ok(outcome)) => outcome,
    };
    guard.0 = None;

    let (output, kept, estimate, peak, shed) = outcome;
    if let Some(refusal) = shed {
        metrics.job_finished(&kind, JobOutcome::Shed, started.elapsed());
        return Err(refusal.into());
    }
    if let Some(peak) = peak {
        metrics.estimate_error(&kind, estimate, peak);
    }
    let label = if output.is_ok() {
        JobOutcome::Done
    } else {
        JobOutcome::Failed
    };
    metrics.job_finished(&kind, label, started.elapsed());
    Ok(Finished {
        output: output?,
        kept,
    })
}

/// Sets the calling thread's nice value to `nice`, once per thread: a
/// blocking-pool thread keeps it for every job it runs after. Raising a
/// nice value needs no privilege; failing to is only logged, as the job
/// still runs, at the server's priority.
fn lower_priority(nice: u8) {
    thread_local! {
        static NICE: std::cell::Cell<u8> = const { std::cell::Cell::new(0) };
    }
    if nice == 0 || NICE.get() == nice {
        return;
    }
    NICE.set(nice);

    #[cfg(target_os = "linux")]
    {
        // On Linux the nice value is per thread, and `who = 0` names the
        // calling thread, not the whole process.
        // SAFETY: setpriority takes plain integers and touches no memory.
        let set = unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, i32::from(nice)) };
        if set != 0 {
            let error = std::io::Error::last_os_error();
            tracing::warn!(nice, %error, "job thread priority not lowered");
        }
    }
}
