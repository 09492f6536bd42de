//! The work memgate admits: image transcoding and the synthetic load job.
//!
//! Each job comes with a memory estimate computed before any heavy work
//! starts, so that the gate can admit it by bytes, and a class name under
//! which the gate learns how far its estimates are off. The work itself is
//! synchronous and runs on a blocking thread; it checks a [`Cancel`] flag
//! between its stages, because blocking work cannot be aborted from
//! outside.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use thiserror::Error;

use crate::gate::Shed;

mod query;
pub mod synthetic;
mod transcode;

pub use query::ParamError;
pub use transcode::{
    ImageInfo, InputFormat, OutputFormat, TranscodeParams, Transcoded, class, estimate, probe,
    transcode,
};

/// Why a job failed on its input or in its work.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum JobError {
    /// The input is not an image memgate reads.
    #[error("unsupported input: {0}")]
    Unsupported(String),
    /// The input claims to be an image but cannot be decoded: corrupt or
    /// truncated.
    #[error("corrupt image: {0}")]
    Corrupt(String),
    /// The work would need more memory than the job may use.
    #[error("too large: {0}")]
    TooLarge(String),
    /// The parameters ask for an output that cannot be made from this
    /// input.
    #[error(transparent)]
    Params(#[from] ParamError),
    /// The job was cancelled between two stages: its client left or its
    /// deadline passed.
    #[error("the job was cancelled")]
    Cancelled,
    /// The output could not be written.
    #[error("encoding failed: {0}")]
    Encode(String),
}

/// A job's cancellation flag, shared between the request that waits for
/// the job and the blocking thread that runs it, and the gate's shed flag
/// for the job, when it has one.
#[derive(Clone, Debug, Default)]
pub struct Cancel {
    flag: Arc<AtomicBool>,
    shed: Option<Shed>,
}

impl Cancel {
    /// A flag that is not raised.
    pub fn new() -> Self {
        Self::default()
    }

    /// The same flag, also raised when the gate sheds the job.
    pub fn with_shed(self, shed: Shed) -> Self {
        Self {
            shed: Some(shed),
            ..self
        }
    }

    /// Raises the flag: the job stops at its next check.
    pub fn cancel(&self) {
        self.flag.store(true, Ordering::Release);
    }

    /// Whether the flag is raised, or the gate has shed the job.
    pub fn is_cancelled(&self) -> bool {
        self.flag.load(Ordering::Acquire) || self.shed.as_ref().is_some_and(Shed::is_shed)
    }

    /// Where a job may stop between two stages.
    ///
    /// # Errors
    ///
    /// [`JobError::Cancelled`] once the flag is raised.
    pub fn check(&self) -> Result<(), JobError> {
        if self.is_cancelled() {
            Err(JobError::Cancelled)
        } else {
            Ok(())
        }
    }
}

/// Runs `work` on the current thread and measures the most heap memory it
/// held at once, in bytes, with jemalloc's per-thread high-water mark.
///
/// The peak counts what this thread allocated, net of what it freed:
/// memory allocated elsewhere (a request body) is not in it. It is `None`
/// where jemalloc's counters cannot be read, or read zero because jemalloc
/// is not serving this process's allocations.
pub fn measure_peak<T>(work: impl FnOnce() -> T) -> (T, Option<u64>) {
    let reset = crate::memory::jemalloc::reset_thread_peak().is_ok();
    let output = work();
    let peak = crate::memory::jemalloc::thread_peak()
        .ok()
        .filter(|&peak| reset && peak > 0);
    (output, peak)
}
