//! The HTTP front door: hyper 1 over hyper-util, HTTP/1.1 and h2c.
//!
//! [`serve`] accepts connections until its shutdown future completes, then
//! drains: readiness turns 503, the gate refuses new jobs with `draining`,
//! queued asynchronous jobs are cancelled, and jobs in flight get until
//! `server.grace_period_ms` to finish before connections are closed.

use std::convert::Infallible;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytesize::ByteSize;
use http::StatusCode;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio::time::Instant;
use tokio_util::task::TaskTracker;

use crate::controller::AdmissionState;
use crate::gate::Gate;
use crate::telemetry::metrics::Metrics;

mod body;
pub mod headers;
mod problem;
mod routes;
mod store;
mod upload;
mod work;

pub use problem::ApiError;

/// Settings of the server, the `[server]` section of the configuration.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ServerSettings {
    /// Address to listen on.
    pub address: IpAddr,
    /// Port to listen on; the `PORT` environment variable overrides it, as
    /// Cloud Run sets it. 0 picks a free port.
    pub port: u16,
    /// Longest time a client may take to send a request's headers, and a
    /// new connection to send its first byte. Milliseconds, 100 to
    /// 600,000.
    pub header_read_timeout_ms: u64,
    /// Longest time a client may take to send a request's body once its
    /// headers are in. Milliseconds, 100 to 3,600,000.
    pub body_timeout_ms: u64,
    /// Whether HTTP/1.1 connections are kept open between requests.
    pub keep_alive: bool,
    /// Most client connections open at once; past it, new connections wait
    /// in the kernel's listen backlog until one closes. Count, 1 to
    /// 1,000,000; keep it under the process's file descriptor limit.
    pub max_connections: usize,
    /// Largest request body accepted. Size, above 0.
    #[serde(serialize_with = "crate::size::serialize")]
    pub max_body: ByteSize,
    /// Memory reserved for a body sent without `Content-Length` (chunked),
    /// and the most such a body may have; 0 requires a `Content-Length`
    /// (411). Size, at most `max_body`.
    #[serde(serialize_with = "crate::size::serialize")]
    pub max_chunked_body: ByteSize,
    /// Longest a job may work before the answer is 504 and the job is
    /// cancelled at its next stage. Milliseconds, 1 to 3,600,000.
    pub job_timeout_ms: u64,
    /// Nice value of the threads that run jobs, 0 to 19 (Linux). Above
    /// the server's own threads' 0, so that accepting connections,
    /// refusing and answering stay quick while jobs take every core; 0
    /// leaves jobs at the server's priority.
    pub job_nice: u8,
    /// Time jobs in flight get to finish after SIGTERM. Milliseconds, 0 to
    /// 600,000; Cloud Run kills 10 s after SIGTERM, hence 8 s.
    pub grace_period_ms: u64,
    /// Status of the gate's refusals: 503 (Cloud Run, Pub/Sub) or 429.
    pub refusal_status: u16,
    /// Whether `POST /v1/synthetic`, the load-test job, is served.
    pub synthetic: bool,
    /// How long an asynchronous job's result is kept. Milliseconds, 1,000
    /// to 86,400,000.
    pub result_ttl_ms: u64,
    /// Most memory asynchronous results may hold together; the oldest are
    /// evicted first. Size.
    #[serde(serialize_with = "crate::size::serialize")]
    pub max_results: ByteSize,
    /// Most asynchronous jobs known at once, finished or not. Count, 1 to
    /// 1,000,000.
    pub max_async_jobs: usize,
}

impl Default for ServerSettings {
    fn default() -> Self {
        Self {
            address: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            port: 8080,
            header_read_timeout_ms: 10_000,
            body_timeout_ms: 60_000,
            keep_alive: true,
            max_connections: 1024,
            max_body: ByteSize::mib(64),
            max_chunked_body: ByteSize::mib(16),
            job_timeout_ms: 60_000,
            job_nice: 10,
            grace_period_ms: 8_000,
            refusal_status: 503,
            synthetic: true,
            result_ttl_ms: 300_000,
            max_results: ByteSize::mib(256),
            max_async_jobs: 1024,
        }
    }
}

impl ServerSettings {
    /// Checks the ranges stated on each field; the error names the key.
    pub fn validate(&self) -> Result<(), String> {
        let range = |key: &str, value: u64, lo: u64, hi: u64| {
            if (lo..=hi).contains(&value) {
                Ok(())
            } else {
                Err(format!("server.{key}: {value} is outside {lo} to {hi}"))
            }
        };
        range(
            "header_read_timeout_ms",
            self.header_read_timeout_ms,
            100,
            600_000,
        )?;
        range("body_timeout_ms", self.body_timeout_ms, 100, 3_600_000)?;
        range("job_timeout_ms", self.job_timeout_ms, 1, 3_600_000)?;
        range("job_nice", u64::from(self.job_nice), 0, 19)?;
        range("grace_period_ms", self.grace_period_ms, 0, 600_000)?;
        range("result_ttl_ms", self.result_ttl_ms, 1_000, 86_400_000)?;
        range("max_async_jobs", self.max_async_jobs as u64, 1, 1_000_000)?;
        range("max_connections", self.max_connections as u64, 1, 1_000_000)?;
        if self.max_body.as_u64() == 0 {
            return Err("server.max_body: must be above 0".to_owned());
        }
        if self.max_chunked_body > self.max_body {
            return Err("server.max_chunked_body: must be at most server.max_body".to_owned());
        }
        if !matches!(self.refusal_status, 429 | 503) {
            return Err(format!(
                "server.refusal_status: {} is neither 429 nor 503",
                self.refusal_status
            ));
        }
        Ok(())
    }

    /// The address to bind.
    pub fn socket_addr(&self) -> SocketAddr {
        SocketAddr::new(self.address, self.port)
    }

    fn body_timeout(&self) -> Duration {
        Duration::from_millis(self.body_timeout_ms)
    }

    fn job_timeout(&self) -> Duration {
        Duration::from_millis(self.job_timeout_ms)
    }

    fn refusal_status(&self) -> StatusCode {
        StatusCode::from_u16(self.refusal_status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE)
    }
}

/// Everything a request handler needs, shared by all connections.
#[derive(Debug)]
pub struct App {
    settings: ServerSettings,
    gate: Gate,
    state: watch::Receiver<AdmissionState>,
    metrics: Arc<Metrics>,
    store: store::Store,
    /// Asynchronous jobs' tasks, waited for when draining.
    tasks: TaskTracker,
}

impl App {
    /// The shared state of a server admitting jobs through `gate`, reading
    /// the controller's published `state`.
    pub fn new(
        settings: ServerSettings,
        gate: Gate,
        state: watch::Receiver<AdmissionState>,
        metrics: Arc<Metrics>,
    ) -> Arc<Self> {
        let store = store::Store::new(
            Duration::from_millis(settings.result_ttl_ms),
            settings.max_results.as_u64(),
            settings.max_async_jobs,
        );
        Arc::new(Self {
            settings,
            gate,
            state,
            metrics,
            store,
            tasks: TaskTracker::new(),
        })
    }

    fn draining(&self) -> bool {
        self.gate.state().draining
    }
}

/// Why the server stopped.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The listener failed.
    #[error("listener: {0}")]
    Listen(#[from] std::io::Error),
}

/// Serves `listener` until `shutdown` completes, then drains as the
/// module docs say and returns.
///
/// # Errors
///
/// When the listener fails to accept for a reason other than a single
/// connection's error.
pub async fn serve(
    listener: TcpListener,
    app: Arc<App>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServerError> {
    let builder = connection_builder(&app.settings);
    let graceful = GracefulShutdown::new();
    let slots = Arc::new(Semaphore::new(app.settings.max_connections));
    let sweeper = tokio::spawn(sweep(Arc::clone(&app)));
    tokio::pin!(shutdown);
    let mut full = false;

    loop {
        // A slot first, so that at the limit nothing more is accepted:
        // new connections wait in the listen backlog.
        let slot = tokio::select! {
            slot = Arc::clone(&slots).acquire_owned() => slot,
            () = &mut shutdown => break,
        };
        let Ok(slot) = slot else { break };
        // Logged once per time the limit is reached, not per connection:
        // a flood would otherwise flood the logs too.
        let now_full = slots.available_permits() == 0;
        if now_full && !full {
            tracing::warn!(
                max_connections = app.settings.max_connections,
                "connection limit reached: new connections wait"
            );
        }
        full = now_full;
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, remote) = match accepted {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        // Out of file descriptors, say: wait rather than spin.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                serve_connection(&builder, &graceful, Arc::clone(&app), stream, remote, slot);
            }
            () = &mut shutdown => break,
        }
    }

    drain(&app, listener, &builder, graceful, &slots).await;
    sweeper.abort();
    Ok(())
}

fn connection_builder(settings: &ServerSettings) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // Without a timer, hyper's header-read timeout silently does nothing.
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_millis(settings.header_read_timeout_ms))
        .keep_alive(settings.keep_alive);
    builder.http2().timer(TokioTimer::new());
    builder
}

/// Serves one connection in a task of its own, which holds `slot` until
/// the connection ends.
fn serve_connection(
    builder: &auto::Builder<TokioExecutor>,
    graceful: &GracefulShutdown,
    app: Arc<App>,
    stream: tokio::net::TcpStream,
    remote: SocketAddr,
    slot: OwnedSemaphorePermit,
) {
    let first_byte = Duration::from_millis(app.settings.header_read_timeout_ms);
    let builder = builder.clone();
    let watcher = graceful.watcher();
    let service = service_fn(move |request| {
        let app = Arc::clone(&app);
        async move { Ok::<_, Infallible>(routes::handle(app, request, remote).await) }
    });
    tokio::spawn(async move {
        let _slot = slot;
        // hyper's header-read timer starts with the first byte: a client
        // that connects and sends nothing would hold its slot forever.
        // (Readiness alone is not enough: a new socket may report it.)
        let mut byte = [0u8; 1];
        if tokio::time::timeout(first_byte, stream.peek(&mut byte))
            .await
            .is_err()
        {
            tracing::debug!(%remote, "connection closed: nothing sent");
            return;
        }
        let connection = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
        if let Err(e) = watcher.watch(connection.into_owned()).await {
            tracing::debug!(error = %e, %remote, "connection ended with an error");
        }
    });
}

/// Drains: closes the gate, keeps answering (503 `draining` for new jobs)
/// while jobs in flight finish, then closes connections, all within the
/// grace period.
async fn drain(
    app: &Arc<App>,
    listener: TcpListener,
    builder: &auto::Builder<TokioExecutor>,
    graceful: GracefulShutdown,
    slots: &Arc<Semaphore>,
) {
    let grace = Duration::from_millis(app.settings.grace_period_ms);
    let deadline = Instant::now() + grace;
    app.gate.close();
    app.tasks.close();
    let unfinished = app.store.unfinished();
    tracing::info!(
        grace_ms = app.settings.grace_period_ms,
        in_flight = app.gate.state().in_flight,
        async_jobs = unfinished.len(),
        "draining: new jobs refused"
    );

    // Jobs in flight finish; requests that still arrive are answered.
    {
        let quiet = async {
            app.tasks.wait().await;
            while app.gate.state().running > 0 {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        };
        let accept = async {
            loop {
                let Ok((stream, remote)) = listener.accept().await else {
                    continue;
                };
                // At the limit, a connection made during the drain is
                // closed at once: nothing waits for the slot.
                if let Ok(slot) = Arc::clone(slots).try_acquire_owned() {
                    serve_connection(builder, &graceful, Arc::clone(app), stream, remote, slot);
                }
            }
        };
        tokio::select! {
            () = quiet => {}
            () = accept => {}
            () = tokio::time::sleep_until(deadline) => {
                let running = app.gate.state().running;
                tracing::warn!(running, "grace period over with jobs running");
            }
        }
    }

    // Whatever is left of the grace period closes connections politely.
    let closed = tokio::time::timeout_at(deadline, graceful.shutdown()).await;
    tracing::info!(connections_closed = closed.is_ok(), "drained");
}

/// Periodically expires asynchronous results.
async fn sweep(app: Arc<App>) {
    let mut interval = tokio::time::interval(Duration::from_secs(1));
    loop {
        interval.tick().await;
        app.store.expire(Instant::now());
    }
}
