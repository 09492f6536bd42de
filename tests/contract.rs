//! Cloud Run's container contract, checked on this machine: the binary
//! started the way Cloud Run starts it (`PORT` set, JSON logs, nothing
//! else configured) inside a fresh 2 GiB memory cgroup, the stand-in for a
//! 2 GiB instance. It must find the ceiling from the cgroup's limit, serve
//! on `PORT`, answer every request when SIGTERM lands under load, be gone
//! well before Cloud Run's SIGKILL 10 s later, and write only log lines
//! Cloud Logging can read. Where no cgroup can be made it says so and
//! passes (see `support/instance.rs`). `cargo test --release --test
//! contract` runs it on the release binary.

// The harness's cgroup, shared with the burst benchmark; this check uses
// part of it.
#[allow(dead_code)]
#[path = "../benches/burst/cgroup.rs"]
mod cgroup;
#[path = "support/instance.rs"]
mod instance;
#[path = "support/logged.rs"]
mod logged;

use std::time::{Duration, Instant};

use instance::{GIB, admission, exit_within, free_port, limited_cgroup, start};
use logged::Logged;
use serde_json::Value;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

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
    let Some(cgroup) = limited_cgroup("contract") else {
        return;
    };
    let port = free_port();
    let mut server = start(&cgroup, port);

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

    let code = exit_within(&mut server, KILL_AFTER);
    assert!(
        signalled.elapsed() < KILL_AFTER,
        "gone {:?} after SIGTERM",
        signalled.elapsed()
    );
    assert_eq!(code, Some(0), "a drain exits 0");
    assert_eq!(cgroup.oom_kills(), Ok(0), "no OOM kill");
    check_logs(&server);
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

/// Every line on stdout is one JSON object Cloud Logging can lift a
/// severity, a message and a time from; nothing goes to stderr.
fn check_logs(server: &Logged) {
    // The reader threads end with the pipes, which closed at exit.
    std::thread::sleep(Duration::from_millis(100));
    let lines = server.lines();
    assert!(lines.len() >= 4, "startup and drain are logged");
    let mut messages = Vec::new();
    for line in &lines {
        let entry: Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}"));
        let severity = entry["severity"].as_str().unwrap_or_default();
        assert!(SEVERITIES.contains(&severity), "severity: {line}");
        let time = entry["time"].as_str().unwrap_or_default();
        assert!(
            OffsetDateTime::parse(time, &Rfc3339).is_ok(),
            "time: {line}"
        );
        assert!(entry.get("level").is_none(), "no level key: {line}");
        let message = entry["message"].as_str();
        messages.push(message.expect("a message").to_owned());
    }
    for expected in ["draining: new jobs refused", "drained", "stopped"] {
        assert!(
            messages.iter().any(|m| m == expected),
            "{expected:?} logged: {messages:?}"
        );
    }
    assert_eq!(server.stderr(), "", "nothing on stderr");
}
