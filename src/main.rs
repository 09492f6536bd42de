//! memgate's binary: reads the configuration, finds the memory signals,
//! starts the controller and serves HTTP until SIGTERM or SIGINT, then
//! drains.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use memgate::config::{CONFIG_ENV, Config};
use memgate::controller::Controller;
use memgate::gate::Gate;
use memgate::memory::{Ceiling, SystemMemory, jemalloc};
use memgate::server::{self, App};
use memgate::telemetry::metrics::Metrics;
use tokio::net::TcpListener;

#[cfg(target_os = "linux")]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's start-up options, read before `main` runs. Freed pages go
/// back to the OS over about a second (`dirty_decay_ms`), and skip the
/// intermediate "muzzy" state, which the kernel would still count
/// (`muzzy_decay_ms:0`). Decay needs a thread to run it while the process
/// is idle: `main` enables jemalloc's background thread.
#[cfg(target_os = "linux")]
#[unsafe(export_name = "malloc_conf")]
pub static MALLOC_CONF: &[u8; 37] = b"dirty_decay_ms:1000,muzzy_decay_ms:0\0";

/// Exit code for a configuration that cannot be used (EX_USAGE).
const EXIT_CONFIG: u8 = 64;

/// memgate: admission for heavy jobs, sized from measured memory.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// A TOML file overriding the embedded default configuration.
    #[arg(long, env = CONFIG_ENV, value_name = "FILE")]
    config: Option<PathBuf>,

    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print the effective configuration as TOML and exit.
    Config,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let config = match Config::load(args.config.as_deref()) {
        Ok(config) => config,
        Err(e) => return config_error(&e.to_string()),
    };
    if let Some(Command::Config) = args.command {
        return print_config(&config);
    }
    if let Err(e) = memgate::telemetry::init(&config.log) {
        return config_error(&e.to_string());
    }

    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            tracing::error!(error = %e, "cannot start the runtime");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(serve(config))
}

/// Finds the memory signals, sizes the gate, starts the controller and
/// serves until a signal, then drains.
async fn serve(config: Config) -> ExitCode {
    tune_allocator();

    let memory = SystemMemory::detect();
    let found = memory.describe();
    tracing::info!(%found, "memory signals detected");

    let ceiling = match Ceiling::resolve(&config.memory, memory.limit()) {
        Ok(ceiling) => ceiling,
        Err(e) => return config_error(&e.to_string()),
    };
    tracing::info!(
        ceiling = ceiling.bytes,
        limit = ceiling.limit,
        source = %ceiling.source,
        "ceiling chosen"
    );

    let address = config.server.socket_addr();
    let listener = match TcpListener::bind(address).await {
        Ok(listener) => listener,
        Err(e) => {
            tracing::error!(%address, error = %e, "cannot listen");
            return ExitCode::FAILURE;
        }
    };

    let gate = Gate::new(config.gate.clone(), 0);
    let controller = Controller::new(config.controller.clone(), ceiling, gate.clone(), memory);
    let state = controller.subscribe();
    tracing::info!(
        capacity = state.borrow().gate.capacity,
        running_limit = state.borrow().gate.running_limit,
        tick_ms = config.controller.tick_ms,
        "controller started"
    );
    let (stop_controller, stopped) = tokio::sync::oneshot::channel::<()>();
    let control = tokio::spawn(controller.run(async {
        let _ = stopped.await;
    }));

    let app = App::new(config.server.clone(), gate, state, Arc::new(Metrics::new()));
    tracing::info!(
        address = %listener.local_addr().unwrap_or(address),
        "listening"
    );
    let served = server::serve(listener, app, shutdown_signal()).await;

    let _ = stop_controller.send(());
    let _ = control.await;
    match served {
        Ok(()) => {
            tracing::info!("stopped");
            ExitCode::SUCCESS
        }
        Err(e) => {
            tracing::error!(error = %e, "server failed");
            ExitCode::FAILURE
        }
    }
}

/// Completes on SIGTERM (Cloud Run, Kubernetes) or SIGINT (a terminal).
async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => tracing::info!(signal = "SIGTERM", "shutting down"),
                    _ = ctrl_c => tracing::info!(signal = "SIGINT", "shutting down"),
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM; SIGINT only");
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

/// Starts jemalloc's background thread, so that freed pages decay back to
/// the OS even while no thread allocates.
fn tune_allocator() {
    match jemalloc::enable_background_thread() {
        Ok(settings) => tracing::info!(%settings, "allocator tuned"),
        Err(e) => tracing::warn!(error = %e, "allocator not tuned: freed pages return slowly"),
    }
}

fn print_config(config: &Config) -> ExitCode {
    match config.to_toml() {
        Ok(text) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Err(e) => config_error(&e.to_string()),
    }
}

fn config_error(message: &str) -> ExitCode {
    eprintln!("memgate: {message}");
    ExitCode::from(EXIT_CONFIG)
}
