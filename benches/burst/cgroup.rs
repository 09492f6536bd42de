//! A fresh memory cgroup with a limit, the stand-in for a container.
//!
//! Each benchmark mode, and the contract check in `tests/contract.rs`,
//! runs in its own child of this process's memory cgroup (v1, or v2 where
//! the machine has it), so that the kernel enforces the limit and
//! OOM-kills inside it exactly as it would in a 2 GiB Cloud Run instance.
//! The child is removed when the [`Cgroup`] is dropped, also on error and
//! panic paths: processes still in it are killed first, since a cgroup
//! with members cannot be removed.

use std::fs;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use memgate::memory::{Cgroup as OwnCgroup, CgroupVersion};

/// How long removal waits for killed members to leave the cgroup.
const REMOVE_TIMEOUT: Duration = Duration::from_secs(5);

/// Cgroups this program creates are named `<PREFIX><pid>-<run>`.
const PREFIX: &str = "memgate-limited-";

/// A child memory cgroup with a limit, removed on drop.
#[derive(Debug)]
pub struct Cgroup {
    dir: PathBuf,
    version: CgroupVersion,
    limit: u64,
    removed: bool,
}

impl Cgroup {
    /// Creates `<own memory cgroup>/<PREFIX><pid>-<run>` and limits it to
    /// `limit` bytes, without swap.
    ///
    /// # Errors
    ///
    /// Why no limited cgroup could be had: no memory cgroup visible, no
    /// permission to create or write one, or a limit that did not stick.
    /// Nothing must be measured then.
    pub fn create(run: usize, limit: u64) -> Result<Self, String> {
        let own = OwnCgroup::discover()
            .map_err(|e| format!("cannot find this process's memory cgroup: {e}"))?;
        let parent = own.dir().to_path_buf();
        remove_stale(&parent);
        let dir = parent.join(format!("{PREFIX}{}-{run}", std::process::id()));
        if own.version() == CgroupVersion::V2 {
            enable_memory_controller(&parent)?;
        }
        fs::create_dir(&dir).map_err(|e| {
            format!(
                "cannot create cgroup {}: {e} (root and a writable memory \
                 cgroup hierarchy are needed)",
                dir.display()
            )
        })?;
        // From here on, drop removes the directory.
        let cgroup = Self {
            dir,
            version: own.version(),
            limit,
            removed: false,
        };
        cgroup.set_limit()?;
        Ok(cgroup)
    }

    /// The cgroup's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The memory limit, in bytes.
    pub fn limit(&self) -> u64 {
        self.limit
    }

    fn set_limit(&self) -> Result<(), String> {
        let (limit_file, swap_file) = match self.version {
            CgroupVersion::V1 => ("memory.limit_in_bytes", "memory.memsw.limit_in_bytes"),
            CgroupVersion::V2 => ("memory.max", "memory.swap.max"),
        };
        self.write(limit_file, &self.limit.to_string())?;
        let read_back = self.read_u64(limit_file)?;
        if read_back.abs_diff(self.limit) > 4096 {
            return Err(format!(
                "{limit_file} reads {read_back} after writing {}",
                self.limit
            ));
        }
        // Swap would let the limit be passed without an OOM kill; the
        // machine has none, but a machine with swap must not blur results.
        let swap = match self.version {
            CgroupVersion::V1 => self.limit.to_string(),
            CgroupVersion::V2 => "0".to_owned(),
        };
        if self.dir.join(swap_file).exists() {
            self.write(swap_file, &swap)?;
        }
        if self.dir.join("memory.swappiness").exists()
            && let Err(e) = self.write("memory.swappiness", "0")
        {
            eprintln!("cgroup: warning: {e}; swap may be used");
        }
        Ok(())
    }

    /// A command that runs `program` inside this cgroup: a shell writes
    /// its own pid into `cgroup.procs` and then execs the program, so that
    /// the program is charged here before it allocates anything.
    pub fn command(&self, program: &Path) -> Command {
        let mut command = Command::new("sh");
        command
            .arg("-c")
            .arg(r#"echo $$ > "$0" && exec "$@""#)
            .arg(self.dir.join("cgroup.procs"))
            .arg(program);
        command
    }

    /// The memory line of `/proc/<pid>/cgroup` when it names this cgroup:
    /// the proof that process `pid` is charged here.
    pub fn membership(&self, pid: u32) -> Option<String> {
        let name = self.dir.file_name()?.to_string_lossy();
        let text = fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
        let line = text.lines().find(|line| {
            let mut fields = line.splitn(3, ':');
            let (_, controllers, path) = (fields.next(), fields.next(), fields.next());
            let memory = match self.version {
                CgroupVersion::V1 => {
                    controllers.is_some_and(|c| c.split(',').any(|c| c == "memory"))
                }
                CgroupVersion::V2 => controllers == Some(""),
            };
            memory && path.is_some_and(|p| p.ends_with(&format!("/{name}")))
        });
        line.map(str::to_owned)
    }

    /// Memory charged to the cgroup, page cache included.
    pub fn usage(&self) -> Result<u64, String> {
        match self.version {
            CgroupVersion::V1 => self.read_u64("memory.usage_in_bytes"),
            CgroupVersion::V2 => self.read_u64("memory.current"),
        }
    }

    /// Page cache the kernel can drop first: usage minus this is the
    /// working set.
    pub fn inactive_file(&self) -> Result<u64, String> {
        let key = match self.version {
            CgroupVersion::V1 => "total_inactive_file",
            CgroupVersion::V2 => "inactive_file",
        };
        self.read_key("memory.stat", key)
    }

    /// OOM kills inside the cgroup since it was created.
    pub fn oom_kills(&self) -> Result<u64, String> {
        match self.version {
            CgroupVersion::V1 => self.read_key("memory.oom_control", "oom_kill"),
            CgroupVersion::V2 => self.read_key("memory.events", "oom_kill"),
        }
    }

    /// The kernel's own high-water mark of usage, where it keeps one
    /// (`memory.peak` needs Linux 5.19 on v2).
    pub fn kernel_peak(&self) -> Option<u64> {
        match self.version {
            CgroupVersion::V1 => self.read_u64("memory.max_usage_in_bytes").ok(),
            CgroupVersion::V2 => self.read_u64("memory.peak").ok(),
        }
    }

    /// Processes in the cgroup now.
    pub fn pids(&self) -> Vec<i32> {
        fs::read_to_string(self.dir.join("cgroup.procs"))
            .unwrap_or_default()
            .lines()
            .filter_map(|line| line.trim().parse().ok())
            .collect()
    }

    /// Kills every process left in the cgroup and removes it, waiting a
    /// little for the kernel to let the members go.
    ///
    /// # Errors
    ///
    /// When the directory is still there after [`REMOVE_TIMEOUT`].
    pub fn remove(&mut self) -> Result<(), String> {
        if self.removed {
            return Ok(());
        }
        let started = Instant::now();
        loop {
            // Only processes this program put here can be members.
            for pid in self.pids() {
                // SAFETY: kill(2) has no memory-safety preconditions.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
            match fs::remove_dir(&self.dir) {
                Ok(()) => break,
                Err(e) if e.kind() == ErrorKind::NotFound => break,
                Err(e) if started.elapsed() > REMOVE_TIMEOUT => {
                    return Err(format!("cannot remove {}: {e}", self.dir.display()));
                }
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
        self.removed = true;
        Ok(())
    }

    fn write(&self, file: &str, value: &str) -> Result<(), String> {
        let path = self.dir.join(file);
        fs::write(&path, value)
            .map_err(|e| format!("cannot write {value} to {}: {e}", path.display()))
    }

    fn read_u64(&self, file: &str) -> Result<u64, String> {
        let path = self.dir.join(file);
        let text = fs::read_to_string(&path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        text.trim()
            .parse()
            .map_err(|e| format!("{}: {e}: {text:?}", path.display()))
    }

    /// Reads the value of `key` from a `key value` per line file.
    fn read_key(&self, file: &str, key: &str) -> Result<u64, String> {
        let path = self.dir.join(file);
        let text = fs::read_to_string(&path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        text.lines()
            .find_map(|line| {
                let (k, v) = line.split_once(' ')?;
                (k == key).then(|| v.trim().parse().ok())?
            })
            .ok_or_else(|| format!("{} has no {key} line", path.display()))
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        if let Err(e) = self.remove() {
            eprintln!("cgroup: {e}");
        }
    }
}

/// On v2 a child gets memory files only when the parent delegates the
/// controller to its children.
fn enable_memory_controller(parent: &Path) -> Result<(), String> {
    let control = parent.join("cgroup.subtree_control");
    let enabled = fs::read_to_string(&control).unwrap_or_default();
    if enabled.split_whitespace().any(|c| c == "memory") {
        return Ok(());
    }
    fs::write(&control, "+memory").map_err(|e| {
        format!(
            "cannot enable the memory controller in {}: {e} (a v2 cgroup \
             with processes of its own cannot delegate controllers)",
            control.display()
        )
    })
}

/// Removes empty cgroups left by runs of this program that were killed
/// before they could clean up: their pid is gone. Members are never
/// touched here.
fn remove_stale(parent: &Path) {
    let Ok(entries) = fs::read_dir(parent) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix(PREFIX)
            .and_then(|rest| rest.split('-').next())
        else {
            continue;
        };
        if !Path::new("/proc").join(pid).exists() && fs::remove_dir(entry.path()).is_ok() {
            eprintln!("cgroup: removed stale cgroup {}", entry.path().display());
        }
    }
}
