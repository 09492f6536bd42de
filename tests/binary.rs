//! The `memgate` binary as an operator runs it: flags, configuration
//! errors, and a drain on SIGTERM that answers every request and exits 0.

#[path = "support/logged.rs"]
mod logged;

use std::process::{Command, Output};
use std::time::{Duration, Instant};

use logged::Logged;

const BINARY: &str = env!("CARGO_BIN_EXE_memgate");

/// Runs the binary to its end with `env` set and no inherited `MEMGATE_*`
/// or `PORT` variables.
fn run(args: &[&str], env: &[(&str, &str)]) -> Output {
    command(env).args(args).output().expect("run memgate")
}

fn command(env: &[(&str, &str)]) -> Command {
    let mut command = Command::new(BINARY);
    for (key, _) in std::env::vars() {
        if key.starts_with("MEMGATE") || key == "PORT" || key == "RUST_LOG" {
            command.env_remove(key);
        }
    }
    command.envs(env.iter().copied());
    command
}

#[test]
fn help_lists_the_flags_and_the_config_subcommand() {
    let output = run(&["--help"], &[]);
    assert!(output.status.success());
    let help = String::from_utf8_lossy(&output.stdout);
    assert!(help.contains("--config"), "{help}");
    assert!(help.contains("config"), "{help}");
}

#[test]
fn an_unknown_key_exits_64_naming_it() {
    let output = run(&["config"], &[("MEMGATE__GATE__MAX_QEUE", "7")]);
    assert_eq!(output.status.code(), Some(64));
    let message = String::from_utf8_lossy(&output.stderr);
    assert!(message.contains("max_qeue"), "{message}");
}

#[test]
fn a_value_out_of_range_exits_64_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("memgate.toml");
    std::fs::write(&path, "[memory]\nceiling_ratio = 1.5\n").unwrap();

    let output = run(&["--config", path.to_str().unwrap(), "config"], &[]);
    assert_eq!(output.status.code(), Some(64));
    let message = String::from_utf8_lossy(&output.stderr);
    assert!(message.contains("memory.ceiling_ratio"), "{message}");
}

#[test]
fn the_config_subcommand_prints_the_effective_configuration() {
    let output = run(
        &["config"],
        &[("MEMGATE__GATE__MAX_QUEUE", "7"), ("PORT", "9090")],
    );
    assert!(output.status.success());
    let printed: toml::Table = String::from_utf8_lossy(&output.stdout).parse().unwrap();
    assert_eq!(printed["gate"]["max_queue"].as_integer(), Some(7));
    assert_eq!(printed["server"]["port"].as_integer(), Some(9090));
    assert_eq!(printed["memory"]["ceiling_ratio"].as_float(), Some(0.92));
}

/// The binary serving on a free loopback port, with its log lines.
struct Running {
    logged: Logged,
    port: u16,
}

impl Running {
    fn start(env: &[(&str, &str)]) -> Self {
        let mut base = vec![
            ("MEMGATE__SERVER__ADDRESS", "127.0.0.1"),
            ("PORT", "0"),
            ("MEMGATE__LOG__FORMAT", "json"),
        ];
        base.extend_from_slice(env);
        let logged = Logged::spawn(command(&base));
        let listening = logged.wait_for("listening");
        let address = listening["address"].as_str().expect("address field");
        let port = address.rsplit(':').next().unwrap().parse().unwrap();
        Self { logged, port }
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }
}

#[tokio::test]
async fn sigterm_answers_the_jobs_in_flight_then_exits_zero() {
    let mut server = Running::start(&[("MEMGATE__GATE__PROBE_JOBS", "0")]);
    let http = reqwest::Client::new();

    let jobs: Vec<_> = (0..2)
        .map(|_| {
            let request = http.post(server.url("/v1/synthetic?mib=8&cpu_ms=1500"));
            tokio::spawn(request.send())
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let state: serde_json::Value = http
            .get(server.url("/v1/admission"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if state["gate"]["running"].as_u64() == Some(2) || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let signalled = Instant::now();
    server.logged.terminate();
    for job in jobs {
        let answer = job
            .await
            .unwrap()
            .expect("an answer, not a dropped connection");
        assert_eq!(answer.status(), 200, "a job in flight finishes");
    }
    server.logged.wait_for("drained");
    let status = server.logged.child.wait().unwrap();
    assert_eq!(status.code(), Some(0));
    assert!(
        signalled.elapsed() < Duration::from_secs(8),
        "exited within the grace period"
    );
}
