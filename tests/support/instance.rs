//! A 2 GiB instance on this machine: a fresh memory cgroup with that
//! limit, and the `memgate` binary started in it as Cloud Run starts it.
//!
//! A memory cgroup can only be made by root with a writable hierarchy.
//! Where none can be made a check says so and passes, unless
//! `MEMGATE_REQUIRE_CGROUP=1`, as `.ci/run` sets it on machines that can.
//!
//! The including test declares `mod cgroup` (the burst harness's) and
//! `mod logged` at its root.

// Each test binary uses its part of it.
#![allow(dead_code)]

use std::net::TcpListener;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::task::JoinHandle;

use crate::cgroup::Cgroup;
use crate::logged::Logged;

pub const BINARY: &str = env!("CARGO_BIN_EXE_memgate");
pub const GIB: u64 = 1 << 30;

/// A 2 GiB cgroup, or `None` with a note naming `check` when this
/// machine cannot make one and the check is not required here.
pub fn limited_cgroup(check: &str) -> Option<Cgroup> {
    match Cgroup::create(0, 2 * GIB) {
        Ok(cgroup) => Some(cgroup),
        Err(e) if std::env::var("MEMGATE_REQUIRE_CGROUP").as_deref() != Ok("1") => {
            eprintln!("{check}: not checked, no memory cgroup can be made here: {e}");
            None
        }
        Err(e) => panic!("MEMGATE_REQUIRE_CGROUP=1 but no cgroup: {e}"),
    }
}

pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    listener.local_addr().expect("local address").port()
}

/// Starts the binary in `cgroup` as Cloud Run starts it: `PORT` and
/// Cloud Run's own variables set, JSON logs as the image sets them, and
/// nothing else from this environment.
pub fn start(cgroup: &Cgroup, port: u16) -> Logged {
    let mut command = cgroup.command(Path::new(BINARY));
    command
        .env_clear()
        .env("PATH", "/usr/local/bin:/usr/bin:/bin")
        .env("PORT", port.to_string())
        .env("K_SERVICE", "memgate")
        .env("K_REVISION", "memgate-00001-abc")
        .env("K_CONFIGURATION", "memgate")
        .env("MEMGATE__LOG__FORMAT", "json");
    Logged::spawn(command)
}

/// The binary started in `cgroup` on a free port, once it listens, with
/// the base URL to reach it.
pub fn serving(cgroup: &Cgroup) -> (Logged, String) {
    let port = free_port();
    let server = start(cgroup, port);
    server.wait_for("listening");
    (server, format!("http://127.0.0.1:{port}"))
}

/// `GET /v1/admission`, parsed.
pub async fn admission(http: &reqwest::Client, base: &str) -> Value {
    let answer = http.get(format!("{base}/v1/admission")).send().await;
    let answer = answer.expect("admission state");
    answer.json().await.expect("admission state as JSON")
}

/// The exit code once the process is gone, waiting at most `limit`.
pub fn exit_within(server: &mut Logged, limit: Duration) -> Option<i32> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = server.child.try_wait().expect("wait for memgate") {
            return status.code();
        }
        assert!(Instant::now() < deadline, "still running after {limit:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The cgroup's highest usage while it is watched, sampled by a task of
/// its own: the kernel's own mark exists on cgroup v1 only.
pub struct PeakWatch {
    peak: Arc<AtomicU64>,
    on: Arc<AtomicBool>,
    task: JoinHandle<()>,
}

impl PeakWatch {
    /// Starts reading `cgroup`'s usage every `every`.
    pub fn start(cgroup: Arc<Cgroup>, every: Duration) -> Self {
        let peak = Arc::new(AtomicU64::new(0));
        let on = Arc::new(AtomicBool::new(true));
        let task = tokio::spawn({
            let (peak, on) = (Arc::clone(&peak), Arc::clone(&on));
            async move {
                while on.load(Ordering::Acquire) {
                    if let Ok(usage) = cgroup.usage() {
                        peak.fetch_max(usage, Ordering::AcqRel);
                    }
                    tokio::time::sleep(every).await;
                }
            }
        });
        Self { peak, on, task }
    }

    /// Stops sampling; the highest usage seen.
    pub async fn stop(self) -> u64 {
        self.on.store(false, Ordering::Release);
        self.task.await.expect("the sampler");
        self.peak.load(Ordering::Acquire)
    }
}
