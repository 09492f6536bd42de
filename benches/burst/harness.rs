//! One mode's run: a fresh limited cgroup, the server started inside it,
//! the burst, the samples, and everything stopped and removed again.

use std::fs;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::Client;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::cgroup::Cgroup;
use crate::driver::{self, Job, Plan, Record};
use crate::process::{Exit, Process};
use crate::report::{Ended, ModeRun, Summary};
use crate::sampler::{self, Series, ServerRefusals};
use crate::stability::Stability;
use crate::workload::{Kind, Mode, Settings, Surge};

/// Longest wait for `/readyz` after the start.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// Time the server gets to drain on SIGTERM before SIGKILL: its grace
/// period is 8 s.
const STOP_GRACE: Duration = Duration::from_secs(12);

/// Samples taken after the last answer, to show memory going back.
const TAIL: Duration = Duration::from_secs(2);

/// What every mode of a workload shares.
#[derive(Debug)]
pub struct Context {
    /// The server binary.
    pub binary: PathBuf,
    /// This program, for the surge holder.
    pub exe: PathBuf,
    /// Where logs go.
    pub out: PathBuf,
    /// The file name stem of this workload's outputs.
    pub stem: String,
    /// The cgroup's memory limit, in bytes.
    pub limit: u64,
    /// The workload.
    pub settings: Settings,
    /// Its requests.
    pub jobs: Arc<Vec<Job>>,
    /// Most requests in flight.
    pub concurrency: usize,
    /// Longest one attempt may take.
    pub request_timeout: Duration,
    /// Longest the burst may take, retries included.
    pub deadline: Duration,
    /// Server configuration given on the command line, as environment.
    pub server_env: Vec<(String, String)>,
}

/// A server started in a cgroup and checked to be serving from it.
struct Started {
    server: Process,
    base: String,
    checked: Checked,
}

/// What the checks before the burst found.
struct Checked {
    /// `/v1/admission`'s `ceiling`: what the server detected.
    ceiling: Value,
    /// Whether the server's detected limit is the cgroup's.
    server_saw_limit: bool,
    /// The server's memory line of `/proc/<pid>/cgroup`.
    membership: String,
}

/// Runs `mode` in cgroup number `run` and returns its figures. The cgroup
/// is removed on every path.
///
/// # Errors
///
/// When no limited cgroup can be had, the server does not start, is not in
/// the cgroup or runs another mode, or the cgroup cannot be removed.
pub async fn run_mode(ctx: &Context, run: usize, mode: &Mode) -> Result<ModeRun, String> {
    let mut cgroup = Cgroup::create(run, ctx.limit)?;
    let log = ctx
        .out
        .join(format!("{}-{}.log", ctx.stem, mode.label.replace(':', "-")));
    // A fresh log per run: a stale one would mislead.
    let _ = fs::remove_file(&log);
    let started = start(ctx, &cgroup, mode, &log).await;
    let measured = match started {
        Ok(started) => {
            println!(
                "  server pid {} serving from {}, ceiling {}",
                started.server.pid(),
                started.checked.membership,
                started.checked.ceiling
            );
            measure(ctx, &cgroup, mode, started, &log).await
        }
        Err(e) => Err(e),
    };
    // A failed measurement says more than a failed removal after it.
    let removed = cgroup.remove();
    let run = measured?;
    removed?;
    Ok(run)
}

/// Starts the server inside `cgroup` and waits until it serves.
async fn start(ctx: &Context, cgroup: &Cgroup, mode: &Mode, log: &Path) -> Result<Started, String> {
    let port = free_port()?;
    let mut command = cgroup.command(&ctx.binary);
    for (key, _) in std::env::vars() {
        if key.starts_with("MEMGATE") || key == "RUST_LOG" {
            command.env_remove(key);
        }
    }
    command
        .env("MEMGATE__SERVER__ADDRESS", "127.0.0.1")
        .env("PORT", port.to_string())
        .env("MEMGATE__LOG__FORMAT", "json")
        .envs(mode.env.iter().cloned())
        .envs(ctx.server_env.iter().cloned());
    let server = Process::spawn(command, log)?;
    let base = format!("http://127.0.0.1:{port}");
    let checked = check(cgroup, mode, &server, &base, log).await;
    match checked {
        Ok(checked) => Ok(Started {
            server,
            base,
            checked,
        }),
        Err(e) => {
            server.stop(STOP_GRACE).await;
            Err(e)
        }
    }
}

/// Waits for `/readyz`, then checks that the server is in the cgroup and
/// runs `mode`; returns the ceiling it chose and whether it saw the limit.
async fn check(
    cgroup: &Cgroup,
    mode: &Mode,
    server: &Process,
    base: &str,
    log: &Path,
) -> Result<Checked, String> {
    let client = Client::new();
    wait_ready(&client, server, base, log).await?;
    let Some(membership) = cgroup.membership(server.pid()) else {
        return Err(format!(
            "the server (pid {}) is not in {}",
            server.pid(),
            cgroup.dir().display()
        ));
    };
    let state = sampler::admission(&client, &format!("{base}/v1/admission"))
        .await
        .ok_or("GET /v1/admission failed before the burst")?;
    let running = state["mode"].as_str().unwrap_or("adaptive");
    if running != mode.gate_mode {
        return Err(format!("mode {}: the server runs {running}", mode.label));
    }
    let ceiling = state["ceiling"].clone();
    Ok(Checked {
        server_saw_limit: ceiling["limit"].as_u64() == Some(cgroup.limit()),
        ceiling,
        membership,
    })
}

async fn wait_ready(
    client: &Client,
    server: &Process,
    base: &str,
    log: &Path,
) -> Result<(), String> {
    let url = format!("{base}/readyz");
    let deadline = Instant::now() + READY_TIMEOUT;
    while Instant::now() < deadline {
        if let Some(exit) = server.exit() {
            return Err(format!(
                "the server exited before serving ({:?}, signal {:?}); its log ends:\n{}",
                exit.code,
                exit.signal,
                tail(log)
            ));
        }
        let answer = client
            .get(&url)
            .timeout(Duration::from_secs(1))
            .send()
            .await;
        if answer.is_ok_and(|a| a.status().is_success()) {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Err(format!("the server was not ready within {READY_TIMEOUT:?}"))
}

/// What the burst saw, before the server is stopped.
struct Observed {
    t0: Instant,
    records: Vec<Record>,
    series: Series,
    holder: Result<Option<Process>, String>,
    server_refusals: Option<ServerRefusals>,
}

/// The burst, then the server and the surge holder stopped, and every
/// figure gathered.
async fn measure(
    ctx: &Context,
    cgroup: &Cgroup,
    mode: &Mode,
    started: Started,
    log: &Path,
) -> Result<ModeRun, String> {
    let observed = observe(ctx, cgroup, &started.base, log).await?;
    let t0 = observed.t0;
    let died = started.server.exit();
    let stopped = started.server.stop(STOP_GRACE).await;
    let holder = match observed.holder {
        Ok(Some(process)) => Ok(process.stop(Duration::from_secs(1)).await),
        Ok(None) => Ok(None),
        Err(e) => Err(e),
    };
    let at = |exit: Option<Exit>| exit.map(|e| ended(e, t0));
    let (sampled_peak, sampled_peak_working_set) = peaks(&observed.series);
    Ok(ModeRun {
        mode: mode.clone(),
        cgroup: cgroup.dir().display().to_string(),
        limit: cgroup.limit(),
        server_pid: started.server.pid(),
        server_membership: started.checked.membership,
        ceiling: started.checked.ceiling,
        server_saw_limit: started.checked.server_saw_limit,
        oom_kills: cgroup.oom_kills()?,
        server_died: at(died),
        server_stopped: if died.is_some() { None } else { at(stopped) },
        holder: at(holder.as_ref().ok().copied().flatten()),
        holder_error: holder.err(),
        kernel_peak: cgroup.kernel_peak(),
        sampled_peak,
        sampled_peak_working_set,
        summary: Summary::of(&observed.records),
        server_refusals: observed.server_refusals,
        stability: (ctx.settings.workload == Kind::Soak).then(|| {
            Stability::of(
                &observed.series,
                ctx.settings.warmup_secs,
                ctx.settings.seconds,
            )
        }),
        series: observed.series,
        requests: observed.records,
    })
}

/// The burst, with the samples and the surge alongside; sampling goes on
/// for [`TAIL`] after the last answer.
async fn observe(
    ctx: &Context,
    cgroup: &Cgroup,
    base: &str,
    log: &Path,
) -> Result<Observed, String> {
    let client = burst_client(ctx.request_timeout)?;
    let plan = Plan {
        jobs: Arc::clone(&ctx.jobs),
        spread: Duration::from_secs_f64(ctx.settings.seconds),
        concurrency: ctx.concurrency,
        retries: ctx.settings.retries,
        deadline: ctx.deadline,
    };
    let stop = CancellationToken::new();
    let t0 = Instant::now();
    let sampling = Client::new();
    let metrics_url = format!("{base}/metrics");
    let burst = async {
        let records = driver::run(client, base.to_owned(), plan, t0).await;
        tokio::time::sleep(TAIL).await;
        let refusals = sampler::server_refusals(&sampling, &metrics_url).await;
        stop.cancel();
        (records, refusals)
    };
    let limit = ctx.deadline + TAIL * 2;
    let samples = sampler::sample(cgroup, &sampling, base, t0, &stop, limit);
    let holder_log = log.with_extension("holder.log");
    let surge = surge(ctx, cgroup, t0, &holder_log, &stop);
    let ((records, server_refusals), series, holder) = tokio::join!(burst, samples, surge);
    Ok(Observed {
        t0,
        records,
        series,
        holder,
        server_refusals,
    })
}

fn ended(exit: Exit, t0: Instant) -> Ended {
    Ended {
        at_ms: exit.at_ms(t0),
        code: exit.code,
        signal: exit.signal,
    }
}

/// Starts the surge holder at its time, in the cgroup, and waits for it
/// to end (or for the burst to end, if that comes first).
async fn surge(
    ctx: &Context,
    cgroup: &Cgroup,
    t0: Instant,
    log: &Path,
    stop: &CancellationToken,
) -> Result<Option<Process>, String> {
    let Some(Surge {
        mib,
        secs,
        at_secs,
        ramp_secs,
    }) = ctx.settings.surge
    else {
        return Ok(None);
    };
    let at = t0 + Duration::from_secs_f64(at_secs);
    tokio::select! {
        () = stop.cancelled() => return Err("the burst ended before the surge was due".to_owned()),
        () = tokio::time::sleep_until(at.into()) => {}
    }
    let _ = fs::remove_file(log);
    let mut command = cgroup.command(&ctx.exe);
    command.args([
        "--hold-mib",
        &mib.to_string(),
        "--hold-secs",
        &secs.to_string(),
        "--hold-ramp-secs",
        &ramp_secs.to_string(),
    ]);
    let holder = Process::spawn(command, log)?;
    // Touching fresh pages runs near 340 MB/s here: allow for it.
    let bound = Duration::from_secs_f64(ramp_secs + secs + mib as f64 / 100.0 + 5.0);
    tokio::select! {
        () = stop.cancelled() => {}
        _ = holder.wait_for(bound) => {}
    }
    Ok(Some(holder))
}

fn peaks(series: &Series) -> (u64, u64) {
    let usage = series.memory.iter().map(|p| p.usage).max().unwrap_or(0);
    let working_set = series
        .memory
        .iter()
        .map(|p| p.working_set)
        .max()
        .unwrap_or(0);
    (usage, working_set)
}

/// The burst's client: no idle connections kept, so every attempt opens
/// its own and a dead server cannot hide behind a pooled one.
fn burst_client(timeout: Duration) -> Result<Client, String> {
    Client::builder()
        .pool_max_idle_per_host(0)
        .connect_timeout(Duration::from_secs(5))
        .timeout(timeout)
        .build()
        .map_err(|e| format!("cannot build the HTTP client: {e}"))
}

/// A port free on 127.0.0.1 now. Another process could take it before the
/// server binds it; the server then fails to start and says so.
fn free_port() -> Result<u16, String> {
    let listener =
        TcpListener::bind("127.0.0.1:0").map_err(|e| format!("cannot find a free port: {e}"))?;
    listener
        .local_addr()
        .map(|a| a.port())
        .map_err(|e| format!("cannot find a free port: {e}"))
}

/// The last lines of a log, for an error message.
fn tail(log: &Path) -> String {
    let text = fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(8)..].join("\n")
}
