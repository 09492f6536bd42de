//! Bursts against the real server under a real memory limit:
//! `cargo bench --bench burst -- --workload incident --modes
//! unbounded,fixed:12,latency,adaptive`.
//!
//! Each admission mode runs in a fresh child memory cgroup limited to
//! `--limit` (2 GiB, a Cloud Run instance), one after another: the server
//! is started inside it, an open-loop burst is sent to it over 127.0.0.1,
//! the cgroup's memory and the server's gate are sampled every 50 ms, and
//! an OOM kill is read from the kernel's own count. Where no limited
//! cgroup can be had, the run stops with the reason and reports nothing.
//!
//! Build the server first: `cargo build --release`. Outputs go to
//! `target/burst/`: `<workload>.md`, `.json` (every figure, request and
//! sample) and `.svg`, and the server's log per mode.

mod cgroup;
mod driver;
mod harness;
mod images;
mod process;
mod report;
mod sampler;
mod stability;
mod workload;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use bytesize::ByteSize;
use clap::Parser;

use harness::Context;
use report::{ModeRun, Report};
use workload::{Kind, Mode, Surge};

/// The command line. Workload figures left unset take the workload's own.
#[derive(Debug, Parser)]
#[command(
    name = "burst",
    about = "Bursts against memgate in a memory-limited cgroup"
)]
struct Cli {
    /// The workload.
    #[arg(long, value_enum, default_value = "incident")]
    workload: Kind,
    /// Admission modes, run in order: adaptive, fixed:N[:QUEUE],
    /// latency[:MAX], unbounded. Default: all four, or none with --sweep.
    #[arg(long, value_delimiter = ',')]
    modes: Vec<String>,
    /// Pool sizes to run as fixed:N, after --modes.
    #[arg(long, value_delimiter = ',')]
    sweep: Vec<u32>,
    /// The cgroup's memory limit.
    #[arg(long, default_value = "2GiB")]
    limit: ByteSize,
    /// Where the outputs go.
    #[arg(long, default_value = "target/burst")]
    out: PathBuf,
    /// Output file name stem; default the workload's name, with -sweep.
    #[arg(long)]
    name: Option<String>,
    /// The server binary; default target/release/memgate.
    #[arg(long)]
    binary: Option<PathBuf>,
    /// Requests in the burst.
    #[arg(long)]
    requests: Option<usize>,
    /// Seconds the sends are spread over.
    #[arg(long)]
    seconds: Option<f64>,
    /// MiB per synthetic job.
    #[arg(long)]
    mib: Option<u64>,
    /// CPU ms per synthetic job.
    #[arg(long)]
    cpu_ms: Option<u64>,
    /// Wait per synthetic job with its memory held, in ms (storage I/O).
    #[arg(long)]
    io_ms: Option<u64>,
    /// Retries of a refusal with Retry-After.
    #[arg(long)]
    retries: Option<u32>,
    /// Most requests in flight.
    #[arg(long, default_value_t = 1024)]
    concurrency: usize,
    /// MiB another process in the cgroup takes (default: surge's 600).
    #[arg(long)]
    surge_mib: Option<u64>,
    /// Seconds it holds them.
    #[arg(long)]
    surge_secs: Option<f64>,
    /// Seconds after the start it begins.
    #[arg(long)]
    surge_at: Option<f64>,
    /// Seconds it takes to touch its memory; 0 touches it all at once.
    #[arg(long)]
    surge_ramp: Option<f64>,
    /// Largest image, in megapixels (mixed-images).
    #[arg(long)]
    max_mp: Option<u32>,
    /// Seed of the image sizes (mixed-images, soak).
    #[arg(long)]
    seed: Option<u64>,
    /// Seconds at the start left out of the stability figures (soak).
    #[arg(long)]
    warmup: Option<f64>,
    /// Longest one attempt may take, in seconds.
    #[arg(long, default_value_t = 120.0)]
    request_timeout: f64,
    /// Longest a mode's burst may take, retries included, in seconds;
    /// default the workload's spread plus 600.
    #[arg(long)]
    max_run_secs: Option<f64>,
    /// Server configuration, `section.key=value`, passed as
    /// MEMGATE__SECTION__KEY; repeatable.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,
    /// Passed by `cargo bench`; without it nothing runs.
    #[arg(long, hide = true)]
    bench: bool,
    /// Hold this many MiB and exit: the surge process.
    #[arg(long, hide = true)]
    hold_mib: Option<u64>,
    /// Seconds to hold them.
    #[arg(long, hide = true, default_value_t = 0.0)]
    hold_secs: f64,
    /// Seconds to take to touch them.
    #[arg(long, hide = true, default_value_t = 0.0)]
    hold_ramp_secs: f64,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(mib) = cli.hold_mib {
        process::hold(mib, cli.hold_secs, cli.hold_ramp_secs);
        return ExitCode::SUCCESS;
    }
    // `cargo test --benches` runs bench targets without `--bench`: no
    // minutes-long burst then.
    if !cli.bench {
        println!("burst: run through `cargo bench --bench burst -- ...`");
        return ExitCode::SUCCESS;
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a current-thread runtime always builds");
    let outcome = runtime.block_on(async {
        tokio::select! {
            outcome = run(&cli) => outcome,
            _ = tokio::signal::ctrl_c() => Err("interrupted".to_owned()),
        }
    });
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("burst: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Runs every mode of the workload and writes the outputs after each, so
/// that a later failure keeps the modes already measured.
async fn run(cli: &Cli) -> Result<(), String> {
    let ctx = context(cli)?;
    let modes = modes(cli)?;
    let mut runs: Vec<ModeRun> = Vec::new();
    for (i, mode) in modes.iter().enumerate() {
        println!(
            "{} / {}: running {} in a {} cgroup",
            ctx.stem,
            mode.label,
            ctx.settings.workload.name(),
            cli.limit
        );
        let run = harness::run_mode(&ctx, i, mode).await?;
        println!("  {}", one_line(&run));
        runs.push(run);
        report::write(&ctx.out, &ctx.stem, &report(&ctx, &runs))?;
    }
    println!("\n{}", report::table(&report(&ctx, &runs)));
    println!(
        "written: {}",
        ctx.out
            .join(format!("{}.{{md,json,svg}}", ctx.stem))
            .display()
    );
    Ok(())
}

fn report<'a>(ctx: &'a Context, runs: &'a [ModeRun]) -> Report<'a> {
    Report {
        settings: &ctx.settings,
        limit: ctx.limit,
        runs,
    }
}

fn one_line(run: &ModeRun) -> String {
    let s = &run.summary;
    format!(
        "peak {:.0} MiB, {} OOM kills, {:.1}% succeeded, goodput {:.2} jobs/s, \
         {} refused with Retry-After, {} connection errors",
        run.peak() as f64 / f64::from(1 << 20),
        run.oom_kills,
        s.success_pct,
        s.goodput,
        s.refused_with_retry_after,
        s.connection_errors
    )
}

fn modes(cli: &Cli) -> Result<Vec<Mode>, String> {
    let mut labels = cli.modes.clone();
    if labels.is_empty() && cli.sweep.is_empty() {
        labels = ["unbounded", "fixed:12", "latency", "adaptive"]
            .map(str::to_owned)
            .to_vec();
    }
    labels.extend(cli.sweep.iter().map(|n| format!("fixed:{n}")));
    labels.iter().map(|label| Mode::parse(label)).collect()
}

fn context(cli: &Cli) -> Result<Context, String> {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    let binary = cli
        .binary
        .clone()
        .unwrap_or_else(|| manifest.join("target/release/memgate"));
    if !binary.is_file() {
        return Err(format!(
            "no server binary at {}: run `cargo build --release`",
            binary.display()
        ));
    }
    warn_if_stale(&binary, &manifest.join("src"));
    std::fs::create_dir_all(&cli.out)
        .map_err(|e| format!("cannot create {}: {e}", cli.out.display()))?;
    let settings = settings(cli);
    let stem = cli.name.clone().unwrap_or_else(|| {
        let sweep = if cli.sweep.is_empty() { "" } else { "-sweep" };
        format!("{}{sweep}", settings.workload.name())
    });
    let jobs = settings.jobs(&cli.out.join("images"))?;
    let deadline = Duration::from_secs_f64(cli.max_run_secs.unwrap_or(settings.seconds + 600.0));
    Ok(Context {
        binary,
        exe: std::env::current_exe().map_err(|e| format!("cannot find this program: {e}"))?,
        out: cli.out.clone(),
        stem,
        limit: cli.limit.as_u64(),
        settings,
        jobs,
        concurrency: cli.concurrency,
        request_timeout: Duration::from_secs_f64(cli.request_timeout),
        deadline,
        server_env: server_env(&cli.set)?,
    })
}

/// The workload's figures, with the flags' in place of its own.
fn settings(cli: &Cli) -> workload::Settings {
    let mut s = cli.workload.defaults();
    s.requests = cli.requests.unwrap_or(s.requests);
    s.seconds = cli.seconds.unwrap_or(s.seconds);
    s.mib = cli.mib.unwrap_or(s.mib);
    s.cpu_ms = cli.cpu_ms.unwrap_or(s.cpu_ms);
    s.io_ms = cli.io_ms.unwrap_or(s.io_ms);
    s.retries = cli.retries.unwrap_or(s.retries);
    s.max_mp = cli.max_mp.unwrap_or(s.max_mp);
    s.seed = cli.seed.unwrap_or(s.seed);
    s.warmup_secs = cli.warmup.unwrap_or(s.warmup_secs);
    if s.surge.is_some() || cli.surge_mib.is_some() {
        let base = s.surge.unwrap_or(Surge {
            mib: 600,
            secs: 20.0,
            at_secs: 10.0,
            ramp_secs: 0.0,
        });
        s.surge = Some(Surge {
            mib: cli.surge_mib.unwrap_or(base.mib),
            secs: cli.surge_secs.unwrap_or(base.secs),
            at_secs: cli.surge_at.unwrap_or(base.at_secs),
            ramp_secs: cli.surge_ramp.unwrap_or(base.ramp_secs),
        });
    }
    s
}

/// `server.max_queue=16` becomes `MEMGATE__SERVER__MAX_QUEUE=16`.
fn server_env(pairs: &[String]) -> Result<Vec<(String, String)>, String> {
    pairs
        .iter()
        .map(|pair| {
            let (key, value) = pair
                .split_once('=')
                .ok_or_else(|| format!("--set {pair}: expected KEY=VALUE"))?;
            let key = format!("MEMGATE__{}", key.replace('.', "__").to_uppercase());
            Ok((key, value.to_owned()))
        })
        .collect()
}

/// A binary older than the sources measures old code: say so.
fn warn_if_stale(binary: &Path, src: &Path) {
    let built = std::fs::metadata(binary).and_then(|m| m.modified()).ok();
    if let (Some(built), Some(newest)) = (built, newest_change(src, 4))
        && newest > built
    {
        eprintln!(
            "burst: warning: {} is older than the sources; run `cargo build --release`",
            binary.display()
        );
    }
}

/// The latest modification under `dir`, `depth` levels down at most.
fn newest_change(dir: &Path, depth: u32) -> Option<SystemTime> {
    let entries = std::fs::read_dir(dir).ok()?;
    entries
        .flatten()
        .filter_map(|entry| {
            let meta = entry.metadata().ok()?;
            if meta.is_dir() {
                (depth > 0)
                    .then(|| newest_change(&entry.path(), depth - 1))
                    .flatten()
            } else {
                meta.modified().ok()
            }
        })
        .max()
}
