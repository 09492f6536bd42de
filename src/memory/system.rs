//! The real machine as a [`MemorySource`]: cgroup, `/proc` and jemalloc.

use std::fmt;
use std::path::PathBuf;

use bytesize::ByteSize;
use serde::Serialize;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::cgroup::{Cgroup, CgroupError, CgroupStats, CgroupVersion};
use super::jemalloc::{Jemalloc, JemallocStats};
use super::process::Statm;
use super::{MemorySample, MemorySource, Signal};

/// Reads this machine's memory signals: the memory cgroup, the process's
/// resident set and jemalloc's counters.
///
/// The steering signal is chosen once, at construction, from what the
/// machine offers:
///
/// 1. the cgroup working set, when the memory cgroup has a limit: that is
///    the figure the OOM killer acts on;
/// 2. else the process's resident set. An unlimited cgroup is often shared
///    with other processes (a user's shell, a CI runner), so its usage
///    says little about this process and nothing about how close it is to
///    being killed;
/// 3. else jemalloc's resident bytes.
///
/// Every sample still carries every reading that succeeded, so that the
/// logs and the state snapshot can show all of them.
///
/// # Failures
///
/// [`MemorySource::sample`] never panics. A signal that cannot be read is
/// left out of the sample (`None`). When it is the steering signal, the
/// sample repeats the last good working set rather than switching to
/// another signal, whose scale may differ by gigabytes; the controller then
/// steers on a stale value until reads recover. For the cgroup that value
/// is raised to the process's resident set whenever that is higher: the
/// process is part of the cgroup, so its own growth is never hidden. Each source logs a warning
/// when it starts failing and an info line when it recovers, never once per
/// sample, and [`SystemMemory::read_failures`] counts every failed read.
#[derive(Debug)]
pub struct SystemMemory {
    cgroup: Option<Cgroup>,
    statm: Option<Statm>,
    jemalloc: Option<Jemalloc>,
    limit: Option<u64>,
    signal: Signal,
    last_working_set: u64,
    /// The last full cgroup reading, completed by usage-only reads.
    last_cgroup: Option<CgroupStats>,
    samples: u64,
    cgroup_health: Health,
    process_health: Health,
    jemalloc_health: Health,
    purge_health: Health,
}

/// What [`SystemMemory`] found at construction, for the startup log.
///
/// Its [`Display`](fmt::Display) form reads, for instance,
/// `cgroup v1 at /sys/fs/cgroup/memory/app, pressure from
/// /sys/fs/cgroup/unified/memory.pressure; no limit; steering by process_rss`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Detection {
    /// The memory cgroup's hierarchy, if one was found.
    pub cgroup_version: Option<CgroupVersion>,
    /// The memory cgroup's directory, if one was found.
    pub cgroup_dir: Option<PathBuf>,
    /// Where pressure is read from, if anywhere.
    pub pressure_file: Option<PathBuf>,
    /// The container limit in bytes, if the cgroup has one.
    pub limit: Option<u64>,
    /// The reading the working set is taken from.
    pub signal: Signal,
    /// Whether jemalloc's counters can be read.
    pub jemalloc: bool,
}

/// Whether one source reads, so that failures are logged once per change.
#[derive(Debug)]
struct Health {
    source: &'static str,
    failing: bool,
    failures: u64,
}

impl SystemMemory {
    /// Finds this machine's signals: the memory cgroup from `/proc/self`,
    /// `/proc/self/statm`, and jemalloc's counters.
    ///
    /// Never fails: a missing signal is left out, and a discovery error
    /// other than "no cgroup" is logged at warn. Log
    /// [`SystemMemory::describe`] to record what was found.
    pub fn detect() -> Self {
        let cgroup = match Cgroup::discover() {
            Ok(cgroup) => Some(cgroup),
            Err(CgroupError::NotFound) => {
                debug!("no memory cgroup visible");
                None
            }
            Err(error) => {
                warn!(%error, "memory cgroup discovery failed");
                None
            }
        };
        let statm = Statm::open()
            .inspect_err(|error| warn!(%error, "process rss unavailable"))
            .ok();
        let jemalloc = Jemalloc::new()
            .inspect_err(|error| debug!(%error, "jemalloc statistics unavailable"))
            .ok();
        Self::new(cgroup, statm, jemalloc)
    }

    /// Builds a source from readers found elsewhere (a fixture cgroup in
    /// tests, say), and chooses the steering signal from one reading of
    /// each.
    ///
    /// A cgroup whose first reading fails is kept, for its later readings,
    /// but cannot steer: its limit is unknown.
    pub fn new(cgroup: Option<Cgroup>, statm: Option<Statm>, jemalloc: Option<Jemalloc>) -> Self {
        let mut memory = Self {
            cgroup,
            statm,
            jemalloc,
            limit: None,
            signal: Signal::ProcessRss,
            last_working_set: 0,
            last_cgroup: None,
            samples: 0,
            cgroup_health: Health::new("cgroup"),
            process_health: Health::new("process_rss"),
            jemalloc_health: Health::new("jemalloc"),
            purge_health: Health::new("jemalloc purge"),
        };

        // One reading decides the signal and seeds the working set, so that
        // a failure on the first sample still has a value to repeat.
        let cgroup = memory.read_cgroup();
        let process_rss = memory.read_process_rss();
        let jemalloc = memory.read_jemalloc();
        memory.limit = cgroup.as_ref().and_then(|stats| stats.limit);
        let (signal, working_set) = choose_signal(cgroup.as_ref(), process_rss, jemalloc.as_ref());
        memory.signal = signal;
        memory.last_working_set = working_set;
        memory
    }

    /// The reading every sample's working set is taken from.
    pub fn signal(&self) -> Signal {
        self.signal
    }

    /// The memory cgroup, if one was found.
    pub fn cgroup(&self) -> Option<&Cgroup> {
        self.cgroup.as_ref()
    }

    /// The container limit in bytes read at construction, or `None` when
    /// there is no cgroup, it has no limit, or it could not be read. This is
    /// the `detected_limit` for [`Ceiling::resolve`](super::Ceiling::resolve).
    pub fn limit(&self) -> Option<u64> {
        self.limit
    }

    /// How many reads of any signal have failed since construction.
    pub fn read_failures(&self) -> u64 {
        self.cgroup_health.failures + self.process_health.failures + self.jemalloc_health.failures
    }

    /// What was found, for the startup log.
    pub fn describe(&self) -> Detection {
        Detection {
            cgroup_version: self.cgroup.as_ref().map(Cgroup::version),
            cgroup_dir: self.cgroup.as_ref().map(|c| c.dir().to_path_buf()),
            pressure_file: self
                .cgroup
                .as_ref()
                .and_then(|c| c.pressure_file().map(PathBuf::from)),
            limit: self.limit,
            signal: self.signal,
            jemalloc: self.jemalloc.is_some(),
        }
    }

    /// Reads the cgroup: in full every `FULL_CGROUP_READ_EVERY` samples,
    /// and only its usage in between, with the rest of the last full
    /// reading. The other files change slowly or are averages already
    /// (pressure's shortest window is 10 s), while `memory.stat` costs the
    /// kernel most of a reading.
    fn read_cgroup(&mut self) -> Option<CgroupStats> {
        let cgroup = self.cgroup.as_mut()?;
        let full = self.samples.is_multiple_of(FULL_CGROUP_READ_EVERY);
        let result = match (&self.last_cgroup, full) {
            (Some(last), false) => cgroup.read_usage().map(|usage| CgroupStats {
                usage,
                working_set: usage.saturating_sub(last.inactive_file),
                ..last.clone()
            }),
            _ => cgroup.read(),
        };

        let stats = self.cgroup_health.observe(result);
        if full || stats.is_none() {
            self.last_cgroup.clone_from(&stats);
        }
        stats
    }

    fn read_process_rss(&mut self) -> Option<u64> {
        let result = self.statm.as_mut()?.rss();
        self.process_health.observe(result)
    }

    fn read_jemalloc(&mut self) -> Option<JemallocStats> {
        let result = self.jemalloc.as_ref()?.read();
        self.jemalloc_health.observe(result)
    }
}

/// One sample in this many reads every cgroup file; the others read only
/// the usage. At 50 ms ticks, the slow-moving figures are at most 150 ms
/// old.
const FULL_CGROUP_READ_EVERY: u64 = 4;

impl MemorySource for SystemMemory {
    fn sample(&mut self, at: Instant) -> MemorySample {
        self.samples += 1;
        let jemalloc = self.read_jemalloc();
        let cgroup = self.read_cgroup();
        let process_rss = self.read_process_rss();

        let reading = match self.signal {
            Signal::CgroupWorkingSet => cgroup.as_ref().map(|stats| stats.working_set),
            Signal::ProcessRss => process_rss,
            Signal::JemallocResident => jemalloc.as_ref().map(|stats| stats.resident),
            Signal::Scripted => None,
        };
        match (reading, process_rss) {
            (Some(working_set), _) => self.last_working_set = working_set,
            // The cgroup is unreadable: this process's resident set is part
            // of its working set, so the stale value is kept at least that
            // high. memgate's own growth still shows while it is blind.
            (None, Some(rss)) if self.signal == Signal::CgroupWorkingSet => {
                self.last_working_set = self.last_working_set.max(rss);
            }
            (None, _) => {}
        }

        MemorySample {
            at,
            working_set: self.last_working_set,
            signal: self.signal,
            jemalloc,
            cgroup,
            process_rss,
        }
    }

    /// Purges jemalloc's dirty pages in every arena. Returns `false` without
    /// jemalloc, or when jemalloc refused (logged once until it succeeds).
    fn purge(&mut self) -> bool {
        let Some(jemalloc) = &self.jemalloc else {
            return false;
        };
        self.purge_health.observe(jemalloc.purge()).is_some()
    }
}

impl fmt::Display for Detection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.cgroup_version, &self.cgroup_dir) {
            (Some(version), Some(dir)) => write!(f, "cgroup {version} at {}", dir.display())?,
            _ => f.write_str("no memory cgroup")?,
        }
        if let Some(pressure) = &self.pressure_file {
            write!(f, ", pressure from {}", pressure.display())?;
        }
        match self.limit {
            Some(limit) => write!(f, "; limit {}", ByteSize(limit))?,
            None => f.write_str("; no limit")?,
        }
        write!(f, "; steering by {}", self.signal)
    }
}

impl Health {
    fn new(source: &'static str) -> Self {
        Self {
            source,
            failing: false,
            failures: 0,
        }
    }

    /// Passes a reading through, counting a failure and logging only when
    /// the source changes between reading and failing.
    fn observe<T, E: std::error::Error>(&mut self, result: Result<T, E>) -> Option<T> {
        match result {
            Ok(value) => {
                if self.failing {
                    self.failing = false;
                    info!(source = self.source, "memory signal readable again");
                }
                Some(value)
            }
            Err(error) => {
                self.failures += 1;
                if !self.failing {
                    self.failing = true;
                    warn!(source = self.source, %error, "memory signal unreadable");
                }
                None
            }
        }
    }
}

/// Picks the steering signal and its first value, in the order given in
/// [`SystemMemory`]'s docs.
fn choose_signal(
    cgroup: Option<&CgroupStats>,
    process_rss: Option<u64>,
    jemalloc: Option<&JemallocStats>,
) -> (Signal, u64) {
    if let Some(stats) = cgroup
        && stats.limit.is_some()
    {
        return (Signal::CgroupWorkingSet, stats.working_set);
    }
    if let Some(rss) = process_rss {
        return (Signal::ProcessRss, rss);
    }
    if let Some(stats) = jemalloc {
        return (Signal::JemallocResident, stats.resident);
    }

    // Nothing reads. Keep the last resort, in case jemalloc recovers, and
    // say so: a working set stuck at zero admits everything.
    warn!("no memory signal readable; the working set reads zero");
    (Signal::JemallocResident, 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cgroup_stats(limit: Option<u64>) -> CgroupStats {
        CgroupStats {
            usage: 300,
            limit,
            inactive_file: 100,
            working_set: 200,
            oom_kills: 0,
            pressure: None,
        }
    }

    #[test]
    fn limited_cgroup_steers() {
        let stats = cgroup_stats(Some(1000));
        assert_eq!(
            choose_signal(Some(&stats), Some(50), None),
            (Signal::CgroupWorkingSet, 200)
        );
    }

    #[test]
    fn unlimited_cgroup_yields_to_process_rss() {
        let stats = cgroup_stats(None);
        assert_eq!(
            choose_signal(Some(&stats), Some(50), None),
            (Signal::ProcessRss, 50)
        );
    }

    #[test]
    fn jemalloc_resident_is_the_last_resort() {
        let jemalloc = JemallocStats {
            resident: 70,
            ..JemallocStats::default()
        };
        assert_eq!(
            choose_signal(None, None, Some(&jemalloc)),
            (Signal::JemallocResident, 70)
        );
        assert_eq!(
            choose_signal(None, None, None),
            (Signal::JemallocResident, 0)
        );
    }

    #[test]
    fn health_counts_every_failure_and_recovers() {
        let mut health = Health::new("test");
        let failed: Result<u64, std::io::Error> = Err(std::io::Error::other("gone"));
        assert_eq!(health.observe(failed), None);
        assert_eq!(
            health.observe(Err::<u64, _>(std::io::Error::other("gone"))),
            None
        );
        assert!(health.failing);
        assert_eq!(health.failures, 2);

        assert_eq!(health.observe(Ok::<u64, std::io::Error>(5)), Some(5));
        assert!(!health.failing);
        assert_eq!(health.failures, 2);
    }

    #[test]
    fn detection_reads_as_one_line() {
        let detection = Detection {
            cgroup_version: Some(CgroupVersion::V1),
            cgroup_dir: Some("/sys/fs/cgroup/memory/app".into()),
            pressure_file: Some("/sys/fs/cgroup/unified/memory.pressure".into()),
            limit: None,
            signal: Signal::ProcessRss,
            jemalloc: true,
        };
        assert_eq!(
            detection.to_string(),
            "cgroup v1 at /sys/fs/cgroup/memory/app, pressure from \
             /sys/fs/cgroup/unified/memory.pressure; no limit; steering by process_rss"
        );
    }

    #[test]
    fn system_memory_is_a_memory_source() {
        fn assert_source<T: MemorySource>() {}
        assert_source::<SystemMemory>();
    }
}
