//! Memory signals: what the process, its allocator and its container hold.
//!
//! Every reading ends up in one [`MemorySample`]. The controller steers by
//! [`MemorySample::working_set`], which comes from the best signal this
//! machine offers (see [`Signal`]); the other readings travel along so that
//! the state snapshot, the logs and the metrics can show all of them.
//!
//! [`MemorySource`] is the seam between the controller and the machine:
//! [`SystemMemory`] reads the real signals, and tests and simulations script
//! their own.

use std::fmt;

use serde::Serialize;
use tokio::time::Instant;

pub mod cgroup;
pub mod jemalloc;
pub mod process;

mod ceiling;
mod file;
mod system;

pub use ceiling::{Ceiling, CeilingError, CeilingSettings, CeilingSource, LimitKind};
pub use cgroup::{Cgroup, CgroupStats, CgroupVersion, Pressure};
pub use file::ParseError;
pub use jemalloc::{Jemalloc, JemallocStats};
pub use system::{Detection, SystemMemory};

/// Which reading [`MemorySample::working_set`] was taken from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Signal {
    /// The container's usage minus its inactive file pages: what the
    /// kernel's OOM killer and the kubelet compare with the limit.
    CgroupWorkingSet,
    /// The process's resident set from `/proc/self/statm`, used where no
    /// limited cgroup can be read (Cloud Run gen1, a developer's machine).
    ProcessRss,
    /// jemalloc's resident bytes, the last resort when even `/proc` is
    /// unreadable.
    JemallocResident,
    /// A reading made up by a test or a simulation.
    Scripted,
}

/// One reading of every memory signal, taken at one instant.
///
/// All sizes are in bytes.
#[derive(Clone, Debug, Serialize)]
pub struct MemorySample {
    /// When the reading was taken.
    #[serde(skip)]
    pub at: Instant,
    /// The value the controller steers by, from [`Self::signal`].
    pub working_set: u64,
    /// Which reading `working_set` came from.
    pub signal: Signal,
    /// jemalloc's counters, when jemalloc is the allocator.
    pub jemalloc: Option<JemallocStats>,
    /// The container's counters, when a memory cgroup could be read.
    pub cgroup: Option<CgroupStats>,
    /// The process's resident set, when `/proc/self/statm` could be read.
    pub process_rss: Option<u64>,
}

impl Signal {
    /// The signal's name as it appears in logs, metrics and JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::CgroupWorkingSet => "cgroup_working_set",
            Self::ProcessRss => "process_rss",
            Self::JemallocResident => "jemalloc_resident",
            Self::Scripted => "scripted",
        }
    }
}

impl fmt::Display for Signal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl MemorySample {
    /// A sample that carries only a working set, for tests and simulations.
    pub fn scripted(at: Instant, working_set: u64) -> Self {
        Self {
            at,
            working_set,
            signal: Signal::Scripted,
            jemalloc: None,
            cgroup: None,
            process_rss: None,
        }
    }
}

/// Where the controller gets its readings from.
///
/// [`SystemMemory`] reads the machine; tests implement this trait to script
/// a memory trace.
pub trait MemorySource: Send + 'static {
    /// Takes one reading of every signal. `at` is the time the reading is
    /// stamped with; readers must not block for long (the controller calls
    /// this every tick).
    fn sample(&mut self, at: Instant) -> MemorySample;

    /// Asks the allocator to return freed pages to the OS at once. Returns
    /// whether anything was attempted; the next sample shows the effect.
    fn purge(&mut self) -> bool;
}
