//! Cloud Run's container contract, checked on this machine: the binary
//! started the way Cloud Run starts it (`PORT` set, JSON logs, nothing
//! else configured) inside a fresh 2 GiB memory cgroup, the stand-in for a
//! 2 GiB instance. It must find the ceiling from the cgroup's limit, serve
//! on `PORT`, answer every request when SIGTERM lands under load, be gone
//! well before Cloud Run's SIGKILL 10 s later, and write only log lines
//! Cloud Logging can read.
//!
//! A memory cgroup can only be made by root with a writable hierarchy.
//! Where none can be made the check says so and passes, unless
//! `MEMGATE_REQUIRE_CGROUP=1`, as `.ci/run` sets it on machines that can.
//! `cargo test --release --test contract` runs it on the release binary.

// The harness's cgroup, shared with the burst benchmark; this check uses
// part of it.
#[allow(dead_code)]
#[path = "../benches/burst/cgroup.rs"]
mod cgroup;

use std::io::{BufRead, BufReader, Read};
use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use cgroup::Cgroup;
use serde_json::Value;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

const BINARY: &str = env!("CARGO_BIN_EXE_memgate");
const GIB: u64 = 1 << 30;

/// Jobs sent at once: more than a 2 GiB instance runs together.
const JOBS: usize = 30;

/// Cloud Run sends SIGKILL this long after SIGTERM.
const KILL_AFTER: Duration = Duration::from_secs(10);

/// Severities Cloud Logging knows.
const SEVERITIES: [&str; 9] = [
    "DEFAULT",
    "DEBUG",
    "INFO",
    "NOTICE",
    "WARNING",
    "ERROR",
    "CRITICAL",
    "ALERT",
    "EMERGENCY",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_keeps_cloud_runs_contract_in_a_2_gib_cgroup() {
    let Some(cgroup) = limited_cgroup() else {
        return;
    };
    let port = free_port();
    let mut server = Instance::start(&cgroup, port);

    let ceiling = server.wait_for("ceiling chosen");
    assert_eq!(ceiling["limit"].as_u64(), Some(2 * GIB), "{ceiling}");
    assert_eq!(
        ceiling["source"], "memory.ceiling_ratio of the container limit",
        "{ceiling}"
    );
    // The default ceiling_ratio, 0.92, of the cgroup's 2 GiB.
    assert_eq!(
        ceiling["ceiling"].as_u64(),
        Some(1_975_684_956),
        "{ceiling}"
    );

    let listening = server.wait_for("listening");
    let address = listening["address"].as_str().unwrap_or_default();
    assert_eq!(address, format!("0.0.0.0:{port}"), "serves on PORT");
    assert!(
        cgroup.membership(server.child.id()).is_some(),
        "the server is charged to the limited cgroup"
    );

    let http = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{port}");
    let requests = load(&http, &base).await;
    let signalled = Instant::now();
    server.terminate();

    let mut finished = 0;
    for request in requests {
        let answer = request
            .await
            .expect("request task")
            .expect("an answer, not a dropped connection");
        let status = answer.status().as_u16();
        if status == 503 {
            assert!(
                answer.headers().contains_key("retry-after"),
                "a refusal says when to come back"
            );
        } else {
            assert_eq!(status, 200, "a job accepted before SIGTERM finishes");
            finished += 1;
        }
    }
    eprintln!("contract: {finished} finished, {} refused", JOBS - finished);
    assert!(finished > 0, "the jobs in flight finished");

    let code = server.exit_within(KILL_AFTER);
    assert!(
        signalled.elapsed() < KILL_AFTER,
        "gone {:?} after SIGTERM",
        signalled.elapsed()
    );
    assert_eq!(code, Some(0), "a drain exits 0");
    assert_eq!(cgroup.oom_kills(), Ok(0), "no OOM kill");
    server.check_logs();
}

/// A 2 GiB cgroup, or `None` with a note when this machine cannot make
/// one and the check is not required here.
fn limited_cgroup() -> Option<Cgroup> {
    match Cgroup::create(0, 2 * GIB) {
        Ok(cgroup) => Some(cgroup),
        Err(e) if std::env::var("MEMGATE_REQUIRE_CGROUP").as_deref() != Ok("1") => {
            eprintln!("contract: not checked, no memory cgroup can be made here: {e}");
            None
        }
        Err(e) => panic!("MEMGATE_REQUIRE_CGROUP=1 but no cgroup: {e}"),
    }
}

fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    listener.local_addr().expect("local address").port()
}

/// Sends more heavy jobs than the instance runs at once and returns when
/// some run and some wait, the moment SIGTERM hurts most.
async fn load(
    http: &reqwest::Client,
    base: &str,
) -> Vec<tokio::task::JoinHandle<reqwest::Result<reqwest::Response>>> {
    let requests: Vec<_> = (0..JOBS)
        .map(|_| {
            let url = format!("{base}/v1/synthetic?mib=150&cpu_ms=200&io_ms=1500");
            tokio::spawn(http.post(url).send())
        })
        .collect();

    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let gate = admission(http, base).await["gate"].clone();
        let running = gate["running"].as_u64().unwrap_or(0);
        let queued = gate["queued"].as_u64().unwrap_or(0);
        // Past the first jobs' probe, so that many run at once.
        if running >= 6 && queued >= 1 {
            return requests;
        }
        assert!(Instant::now() < deadline, "no load built up: {gate}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn admission(http: &reqwest::Client, base: &str) -> Value {
    let answer = http.get(format!("{base}/v1/admission")).send().await;
    let answer = answer.expect("admission state");
    answer.json().await.expect("admission state as JSON")
}

/// The server as Cloud Run runs it, with everything it writes.
struct Instance {
    child: Child,
    lines: mpsc::Receiver<String>,
    stdout: Arc<Mutex<Vec<String>>>,
    stderr: Arc<Mutex<String>>,
}

impl Instance {
    fn start(cgroup: &Cgroup, port: u16) -> Self {
        let mut child = cgroup
            .command(Path::new(BINARY))
            .env_clear()
            .env("PATH", "/usr/local/bin:/usr/bin:/bin")
            .env("PORT", port.to_string())
            .env("K_SERVICE", "memgate")
            .env("K_REVISION", "memgate-00001-abc")
            .env("K_CONFIGURATION", "memgate")
            .env("MEMGATE__LOG__FORMAT", "json")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start memgate in the cgroup");

        let (send, lines) = mpsc::channel();
        let stdout = Arc::new(Mutex::new(Vec::new()));
        let kept = Arc::clone(&stdout);
        let out = child.stdout.take().expect("piped stdout");
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                kept.lock().expect("stdout lines").push(line.clone());
                let _ = send.send(line);
            }
        });
        let stderr = Arc::new(Mutex::new(String::new()));
        let kept = Arc::clone(&stderr);
        let mut err = child.stderr.take().expect("piped stderr");
        std::thread::spawn(move || {
            let mut text = String::new();
            let _ = err.read_to_string(&mut text);
            kept.lock().expect("stderr text").push_str(&text);
        });

        Self {
            child,
            lines,
            stdout,
            stderr,
        }
    }

    /// Waits for the log line whose message is `message`, parsed.
    fn wait_for(&self, message: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let Ok(line) = self.lines.recv_timeout(left) else {
                panic!("no log line {message:?}; stderr: {}", self.stderr());
            };
            let value: Value = serde_json::from_str(&line).unwrap_or(Value::Null);
            if value["message"] == message {
                return value;
            }
        }
    }

    fn terminate(&self) {
        let pid = i32::try_from(self.child.id()).expect("a pid");
        // SAFETY: kill(2) with a pid this test started and a valid signal.
        let sent = unsafe { libc::kill(pid, libc::SIGTERM) };
        assert_eq!(sent, 0, "SIGTERM sent");
    }

    /// The exit code once the process is gone, waiting at most `limit`.
    fn exit_within(&mut self, limit: Duration) -> Option<i32> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait for memgate") {
                return status.code();
            }
            assert!(Instant::now() < deadline, "still running after {limit:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Every line on stdout is one JSON object Cloud Logging can lift a
    /// severity, a message and a time from; nothing goes to stderr.
    fn check_logs(&self) {
        // The reader threads end with the pipes, which closed at exit.
        std::thread::sleep(Duration::from_millis(100));
        let lines = self.stdout.lock().expect("stdout lines");
        assert!(lines.len() >= 4, "startup and drain are logged");
        for line in lines.iter() {
            let entry: Value = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}"));
            let severity = entry["severity"].as_str().unwrap_or_default();
            assert!(SEVERITIES.contains(&severity), "severity: {line}");
            assert!(entry["message"].is_string(), "message: {line}");
            let time = entry["time"].as_str().unwrap_or_default();
            assert!(
                OffsetDateTime::parse(time, &Rfc3339).is_ok(),
                "time: {line}"
            );
            assert!(entry.get("level").is_none(), "no level key: {line}");
        }
        let messages: Vec<_> = lines
            .iter()
            .filter_map(|line| serde_json::from_str::<Value>(line).ok())
            .filter_map(|entry| entry["message"].as_str().map(str::to_owned))
            .collect();
        for expected in ["draining: new jobs refused", "drained", "stopped"] {
            assert!(
                messages.iter().any(|m| m == expected),
                "{expected:?} logged: {messages:?}"
            );
        }
        assert_eq!(self.stderr(), "", "nothing on stderr");
    }

    fn stderr(&self) -> String {
        self.stderr.lock().expect("stderr text").clone()
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
