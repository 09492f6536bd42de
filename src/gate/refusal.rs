//! Why the gate turned a job away, and when to try again.

use std::time::Duration;

/// The gate's answer to a job it would not admit.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{reason}")]
pub struct Refusal {
    /// Why the job was refused.
    pub reason: RefusalReason,
    /// When the client could try again, or `None` when trying again cannot
    /// help (the job is too large for this gate).
    pub retry_after: Option<Duration>,
}

/// Why a job was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RefusalReason {
    /// The queue already holds `gate.max_queue` jobs.
    #[error("the queue is full")]
    QueueFull,
    /// The job waited `gate.max_wait_ms` without getting room.
    #[error("the wait for room timed out")]
    WaitTimedOut,
    /// The job needs more memory than the gate will ever hold; it would
    /// wait forever, so it is refused at once.
    #[error("the job needs {bytes} bytes, more than the largest reservation ({max} bytes)")]
    TooLarge {
        /// The job's corrected estimate.
        bytes: u64,
        /// The largest reservation the gate accepted at the time.
        max: u64,
    },
    /// The gate is closed for shutdown.
    #[error("the gate is draining")]
    Draining,
    /// The job was running when memory outgrew the plan, and was given up
    /// so that the others could finish.
    #[error("the job was shed to keep memory under the limit")]
    Shed,
}

impl RefusalReason {
    /// The reason's place in the gate's counters.
    pub(super) fn index(&self) -> usize {
        match self {
            Self::QueueFull => 0,
            Self::WaitTimedOut => 1,
            Self::TooLarge { .. } => 2,
            Self::Draining => 3,
            Self::Shed => 4,
        }
    }

    /// The reason's name as logs, metrics and responses spell it.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::QueueFull => "queue_full",
            Self::WaitTimedOut => "wait_timed_out",
            Self::TooLarge { .. } => "too_large",
            Self::Draining => "draining",
            Self::Shed => "shed",
        }
    }
}
