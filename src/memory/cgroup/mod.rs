//! The memory cgroup this process is charged to: where it is, and what it
//! holds.
//!
//! Discovery follows the kernel's own bookkeeping rather than guessing
//! paths: `/proc/self/cgroup` names this process's cgroup in each hierarchy,
//! and `/proc/self/mountinfo` says where each hierarchy is mounted and which
//! part of it the mount shows. Three layouts are found in the wild:
//!
//! - **v2**: one `cgroup2` mount holds every controller; the process's line
//!   reads `0::/path`.
//! - **v1**: one `cgroup` mount per controller; the memory line reads
//!   `N:memory:/path`.
//! - **hybrid**: controllers on v1, plus a `cgroup2` mount that carries only
//!   `cgroup.*` files and pressure (PSI). Usage and limit then come from v1,
//!   pressure from v2.
//!
//! Inside a container, the mount often shows only the container's own
//! subtree: mountinfo's root field is then the cgroup's path itself, and
//! that prefix is stripped before joining the rest to the mount point.
//!
//! Discovery opens the files once; [`Cgroup::read`] re-reads them through
//! the open handles. On this machine's v1 cgroup a reading costs 17 to
//! 21 us, most of it the kernel writing `memory.stat`; opening each file
//! anew costs 53 to 58 us (`benches/signals.rs`).

mod discover;
mod stats;

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

use serde::Serialize;
use thiserror::Error;

use self::discover::{Located, locate_v1, locate_v2, parse_memberships, parse_mountinfo};
use self::stats::{parse_pressure, read_parsed, read_v1, read_v2};
use super::file::{KernelFile, ParseError};

/// The cgroup hierarchy that the memory controller was found in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CgroupVersion {
    /// The legacy hierarchy: `memory.usage_in_bytes`, `memory.limit_in_bytes`.
    V1,
    /// The unified hierarchy: `memory.current`, `memory.max`.
    V2,
}

/// A memory cgroup found for this process, with its files held open.
///
/// Build one with [`Cgroup::discover`]; read it with [`Cgroup::read`].
#[derive(Debug)]
pub struct Cgroup {
    version: CgroupVersion,
    dir: PathBuf,
    files: Files,
    pressure: Option<KernelFile>,
    buf: Vec<u8>,
}

/// One reading of a memory cgroup. All sizes are in bytes.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct CgroupStats {
    /// Memory charged to the cgroup, page cache included.
    pub usage: u64,
    /// The tightest limit on the cgroup and its ancestors, or `None` when
    /// no limit is set.
    pub limit: Option<u64>,
    /// Page cache the kernel can drop first under pressure.
    pub inactive_file: u64,
    /// `usage` minus `inactive_file`: the figure the OOM killer and the
    /// kubelet hold against the limit.
    pub working_set: u64,
    /// How many processes the kernel has OOM-killed in this cgroup; 0 when
    /// the kernel does not count them (v1 before Linux 4.13).
    pub oom_kills: u64,
    /// Memory pressure (PSI), when the kernel provides it for this cgroup.
    pub pressure: Option<Pressure>,
}

/// Memory pressure stall information (PSI) for a cgroup.
///
/// `some` is the share of wall time in which at least one task waited for
/// memory (reclaim, refaults); `full` the share in which all non-idle tasks
/// did at once. Averages are percentages over 10, 60 and 300 s; totals are
/// the accumulated stall time in microseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct Pressure {
    /// Percent of the last 10 s with at least one task stalled.
    pub some_avg10: f64,
    /// Percent of the last 60 s with at least one task stalled.
    pub some_avg60: f64,
    /// Percent of the last 300 s with at least one task stalled.
    pub some_avg300: f64,
    /// Total time with at least one task stalled, in microseconds.
    pub some_total_us: u64,
    /// Percent of the last 10 s with all non-idle tasks stalled.
    pub full_avg10: f64,
    /// Percent of the last 60 s with all non-idle tasks stalled.
    pub full_avg60: f64,
    /// Percent of the last 300 s with all non-idle tasks stalled.
    pub full_avg300: f64,
    /// Total time with all non-idle tasks stalled, in microseconds.
    pub full_total_us: u64,
}

/// Why a memory cgroup could not be found or read.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum CgroupError {
    /// Neither a v2 nor a v1 memory cgroup is visible to this process: no
    /// cgroup mount, no membership line, or a mount that does not show the
    /// process's cgroup (gVisor, some sandboxes, non-Linux systems). A
    /// process in the v2 root cgroup, such as PID 1 of a microVM, lands
    /// here too: the root cgroup has no `memory.current`.
    #[error("no memory cgroup is visible to this process")]
    NotFound,
    /// A file could not be opened or read. After discovery this means the
    /// cgroup went away or the kernel refused the read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The file that failed.
        path: PathBuf,
        /// What the OS said.
        #[source]
        source: io::Error,
    },
    /// A file was read but its text does not have the expected shape.
    #[error("cannot parse {}: {source}", path.display())]
    Parse {
        /// The file that failed.
        path: PathBuf,
        /// What was wrong with its text.
        #[source]
        source: ParseError,
    },
}

/// The open files of one cgroup, by version.
#[derive(Debug)]
enum Files {
    V1 {
        usage: KernelFile,
        limit: KernelFile,
        stat: KernelFile,
        oom_control: KernelFile,
    },
    V2 {
        current: KernelFile,
        /// `memory.max` of the cgroup and of each ancestor visible in the
        /// mount: a parent's limit binds its children too, and v2 has no
        /// `hierarchical_memory_limit` to report it.
        limits: Vec<KernelFile>,
        stat: KernelFile,
        events: KernelFile,
    },
}

impl Cgroup {
    /// Finds this process's memory cgroup from `/proc/self`.
    ///
    /// Probes v2 first, then v1; on a hybrid machine the v2 mount still
    /// supplies pressure.
    ///
    /// # Errors
    ///
    /// [`CgroupError::NotFound`] when no memory cgroup is visible, and
    /// [`CgroupError::Read`] or [`CgroupError::Parse`] when `/proc/self` or
    /// the cgroup's files cannot be read.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use memgate::memory::Cgroup;
    ///
    /// let mut cgroup = Cgroup::discover()?;
    /// let stats = cgroup.read()?;
    /// println!("{cgroup}: working set {} bytes", stats.working_set);
    /// # Ok::<(), memgate::memory::cgroup::CgroupError>(())
    /// ```
    pub fn discover() -> Result<Self, CgroupError> {
        Self::discover_at(Path::new("/proc/self"), Path::new("/"))
    }

    /// Finds a memory cgroup from the `cgroup` and `mountinfo` files in
    /// `proc_self`, with every mount point taken as relative to `root`.
    ///
    /// [`Cgroup::discover`] passes `/proc/self` and `/`; tests pass a fake
    /// tree, so that `/sys/fs/cgroup` in a fixture's mountinfo resolves to
    /// `<root>/sys/fs/cgroup`.
    ///
    /// # Errors
    ///
    /// As for [`Cgroup::discover`].
    pub fn discover_at(proc_self: &Path, root: &Path) -> Result<Self, CgroupError> {
        let memberships_text = read_lossy(&proc_self.join("cgroup"))?;
        let mountinfo_text = read_lossy(&proc_self.join("mountinfo"))?;
        let memberships =
            parse_memberships(&memberships_text).map_err(parse_error(proc_self.join("cgroup")))?;
        let mounts =
            parse_mountinfo(&mountinfo_text).map_err(parse_error(proc_self.join("mountinfo")))?;

        // The unified hierarchy carries memory only when `memory.current`
        // is there; on a hybrid machine it still carries pressure.
        let unified = locate_v2(&memberships, &mounts, root);
        if let Some(unified) = &unified
            && unified.dir.join("memory.current").is_file()
        {
            return Self::open_v2(unified);
        }

        let memory = locate_v1(&memberships, &mounts, root).ok_or(CgroupError::NotFound)?;
        Self::open_v1(
            memory.dir,
            unified.as_ref().map(|unified| unified.dir.as_path()),
        )
    }

    /// Which hierarchy the memory controller is in.
    pub fn version(&self) -> CgroupVersion {
        self.version
    }

    /// The cgroup's directory, where usage and limit are read.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The `memory.pressure` file pressure is read from, if any. On a hybrid
    /// machine it lies in the v2 mount, outside [`Cgroup::dir`].
    pub fn pressure_file(&self) -> Option<&Path> {
        self.pressure.as_ref().map(KernelFile::path)
    }

    /// Reads usage, limit, inactive file pages, OOM kills and pressure.
    ///
    /// Each file is read through the handle opened at discovery, from
    /// offset zero, so a reading costs a few positioned reads and no path
    /// lookups.
    ///
    /// # Errors
    ///
    /// [`CgroupError::Read`] when a file can no longer be read (the cgroup
    /// was removed, for instance), [`CgroupError::Parse`] when its text is
    /// not what the kernel writes. Never panics on either.
    pub fn read(&mut self) -> Result<CgroupStats, CgroupError> {
        let Self {
            files,
            pressure,
            buf,
            ..
        } = self;
        let mut stats = match files {
            Files::V1 {
                usage,
                limit,
                stat,
                oom_control,
            } => read_v1(usage, limit, stat, oom_control, buf)?,
            Files::V2 {
                current,
                limits,
                stat,
                events,
            } => read_v2(current, limits, stat, events, buf)?,
        };
        stats.pressure = match pressure {
            Some(file) => Some(read_parsed(file, buf, parse_pressure)?),
            None => None,
        };
        Ok(stats)
    }

    /// Reads only the usage (`memory.current` or
    /// `memory.usage_in_bytes`): one small file, for the ticks between two
    /// full [`Cgroup::read`]s.
    ///
    /// # Errors
    ///
    /// As [`Cgroup::read`].
    pub fn read_usage(&mut self) -> Result<u64, CgroupError> {
        let usage = match &self.files {
            Files::V1 { usage, .. } => usage,
            Files::V2 { current, .. } => current,
        };
        read_parsed(usage, &mut self.buf, super::file::parse_u64)
    }

    fn open_v2(unified: &Located) -> Result<Self, CgroupError> {
        let dir = &unified.dir;

        // Walk up to the mount's own directory: above it, ancestors are not
        // visible (a container sees its own cgroup as the root).
        let limits = dir
            .ancestors()
            .take_while(|ancestor| ancestor.starts_with(&unified.mount_dir))
            .map(|ancestor| ancestor.join("memory.max"))
            .filter(|path| path.is_file())
            .map(open)
            .collect::<Result<Vec<_>, _>>()?;

        let files = Files::V2 {
            current: open(dir.join("memory.current"))?,
            limits,
            stat: open(dir.join("memory.stat"))?,
            events: open(dir.join("memory.events"))?,
        };
        Ok(Self::with_files(
            CgroupVersion::V2,
            dir.clone(),
            files,
            Some(dir),
        ))
    }

    fn open_v1(dir: PathBuf, unified: Option<&Path>) -> Result<Self, CgroupError> {
        let files = Files::V1 {
            usage: open(dir.join("memory.usage_in_bytes"))?,
            limit: open(dir.join("memory.limit_in_bytes"))?,
            stat: open(dir.join("memory.stat"))?,
            oom_control: open(dir.join("memory.oom_control"))?,
        };
        Ok(Self::with_files(CgroupVersion::V1, dir, files, unified))
    }

    fn with_files(
        version: CgroupVersion,
        dir: PathBuf,
        files: Files,
        pressure_dir: Option<&Path>,
    ) -> Self {
        let mut buf = Vec::new();
        let pressure = pressure_dir.and_then(|dir| open_pressure(dir, &mut buf));
        Self {
            version,
            dir,
            files,
            pressure,
            buf,
        }
    }
}

impl fmt::Display for CgroupVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::V1 => "v1",
            Self::V2 => "v2",
        })
    }
}

impl fmt::Display for Cgroup {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "cgroup {} at {}", self.version, self.dir.display())?;
        match self.pressure_file() {
            Some(path) => write!(f, ", pressure from {}", path.display()),
            None => f.write_str(", no pressure"),
        }
    }
}

/// Opens `memory.pressure` in `dir` if the kernel serves it there. Kernels
/// booted without PSI, or with it off for cgroups, have no such file or fail
/// to read it: then there is simply no pressure to report.
fn open_pressure(dir: &Path, buf: &mut Vec<u8>) -> Option<KernelFile> {
    let file = KernelFile::open(dir.join("memory.pressure")).ok()?;
    read_parsed(&file, buf, parse_pressure).ok()?;
    Some(file)
}

fn open(path: PathBuf) -> Result<KernelFile, CgroupError> {
    KernelFile::open(path.clone()).map_err(|source| CgroupError::Read { path, source })
}

/// Reads a discovery file; mount paths need not be UTF-8, and a stray byte
/// in an unrelated mount must not stop discovery.
fn read_lossy(path: &Path) -> Result<String, CgroupError> {
    let bytes = std::fs::read(path).map_err(|source| CgroupError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

pub(super) fn parse_error(path: PathBuf) -> impl FnOnce(ParseError) -> CgroupError {
    move |source| CgroupError::Parse { path, source }
}
