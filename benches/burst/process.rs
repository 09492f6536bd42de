//! Child processes started inside a cgroup: the server and the surge
//! holder.
//!
//! A thread waits for each child so that its end (an OOM kill shows as
//! SIGKILL) is known the moment it happens. Signals are sent only while
//! the child is known to be unreaped, so that a pid the kernel has handed
//! to another process is never signalled.

use std::fs::File;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How a child process ended.
#[derive(Clone, Copy, Debug)]
pub struct Exit {
    /// When.
    pub at: Instant,
    /// Its exit code, when it exited.
    pub code: Option<i32>,
    /// The signal that ended it, when one did (9 for an OOM kill).
    pub signal: Option<i32>,
}

impl Exit {
    /// Milliseconds from `t0` to the end, negative when it came before.
    pub fn at_ms(&self, t0: Instant) -> f64 {
        millis_between(t0, self.at)
    }
}

/// A running child process.
#[derive(Debug)]
pub struct Process {
    pid: u32,
    exit: Arc<Mutex<Option<Exit>>>,
}

impl Process {
    /// Starts `command` with its output appended to `log`.
    ///
    /// # Errors
    ///
    /// When the log cannot be opened or the process cannot be started.
    pub fn spawn(mut command: Command, log: &Path) -> Result<Self, String> {
        let out = File::options()
            .create(true)
            .append(true)
            .open(log)
            .map_err(|e| format!("cannot open {}: {e}", log.display()))?;
        let err = out
            .try_clone()
            .map_err(|e| format!("cannot share {}: {e}", log.display()))?;
        // Its own process group: a Ctrl-C at the terminal reaches only this
        // program, which then stops the child itself.
        command
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .process_group(0);
        let child = command
            .spawn()
            .map_err(|e| format!("cannot start {command:?}: {e}"))?;
        let pid = child.id();
        let exit = Arc::new(Mutex::new(None));
        let slot = Arc::clone(&exit);
        std::thread::Builder::new()
            .name(format!("wait-{pid}"))
            .spawn(move || wait(child, &slot))
            .map_err(|e| format!("cannot start a thread to wait for {pid}: {e}"))?;
        Ok(Self { pid, exit })
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// How the process ended, once it has.
    pub fn exit(&self) -> Option<Exit> {
        *self.exit.lock().expect("the waiting thread never panics")
    }

    /// Sends `signal` unless the process has already been reaped.
    pub fn signal(&self, signal: i32) {
        let exit = self.exit.lock().expect("the waiting thread never panics");
        if exit.is_none() {
            let pid = i32::try_from(self.pid).expect("pids fit in i32");
            // SAFETY: kill(2) has no memory-safety preconditions; the pid is
            // still this child's, since it is reaped only under this lock.
            unsafe { libc::kill(pid, signal) };
        }
    }

    /// Waits up to `timeout` for the process to end.
    pub async fn wait_for(&self, timeout: Duration) -> Option<Exit> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(exit) = self.exit() {
                return Some(exit);
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// SIGTERM, up to `grace` to end, then SIGKILL; returns how it ended.
    pub async fn stop(&self, grace: Duration) -> Option<Exit> {
        self.signal(libc::SIGTERM);
        if let Some(exit) = self.wait_for(grace).await {
            return Some(exit);
        }
        self.signal(libc::SIGKILL);
        self.wait_for(Duration::from_secs(2)).await
    }
}

/// Waits without reaping, marks the end under the lock, then reaps: until
/// then the pid stays this child's, so [`Process::signal`] is safe.
fn wait(mut child: Child, slot: &Mutex<Option<Exit>>) {
    let pid = child.id();
    // SAFETY: an all-zero siginfo_t is a valid value for waitid to fill.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: `info` is a valid, writable siginfo_t.
        let rc = unsafe {
            libc::waitid(
                libc::P_PID,
                pid,
                &raw mut info,
                libc::WEXITED | libc::WNOWAIT,
            )
        };
        if rc == 0 || std::io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
            break;
        }
    }
    let mut exit = slot.lock().expect("no other holder of the lock panics");
    let status = child.wait().ok();
    *exit = Some(Exit {
        at: Instant::now(),
        code: status.and_then(|s| s.code()),
        signal: status.and_then(|s| s.signal()),
    });
}

/// Milliseconds from `t0` to `t`, negative when `t` came first.
pub fn millis_between(t0: Instant, t: Instant) -> f64 {
    match t.checked_duration_since(t0) {
        Some(d) => d.as_secs_f64() * 1000.0,
        None => -(t0 - t).as_secs_f64() * 1000.0,
    }
}

/// The `--hold-mib` mode of this binary: takes `mib` MiB, writes every
/// page so that it is really charged, evenly over `ramp_secs` seconds (at
/// once when 0), holds it for `secs` seconds, and exits. Run inside the
/// cgroup, it is the surge from another process.
pub fn hold(mib: u64, secs: f64, ramp_secs: f64) {
    let bytes = usize::try_from(mib << 20).expect("the size fits in memory");
    let mut buffer = vec![0u8; bytes];
    let started = std::time::Instant::now();
    let chunks = buffer.len().div_ceil(1 << 20).max(1);
    for (i, chunk) in buffer.chunks_mut(1 << 20).enumerate() {
        for page in chunk.chunks_mut(4096) {
            page[0] = 1;
        }
        let due = Duration::from_secs_f64(ramp_secs.max(0.0) * (i + 1) as f64 / chunks as f64);
        std::thread::sleep(due.saturating_sub(started.elapsed()));
    }
    std::hint::black_box(&buffer);
    std::thread::sleep(Duration::from_secs_f64(secs.max(0.0)));
    drop(buffer);
}
