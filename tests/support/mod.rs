//! A memgate server started in-process on loopback, for tests over real
//! HTTP.
//!
//! Memory is scripted: the working set is what the test sets, so that
//! tests running side by side in one process do not steer each other's
//! gates.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use memgate::config::Config;
use memgate::controller::{AdmissionState, Controller};
use memgate::gate::{Gate, GateState};
use memgate::memory::{Ceiling, MemorySample, MemorySource};
use memgate::server::{self, App};
use memgate::telemetry::metrics::Metrics;
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

pub mod images;

pub const MIB: u64 = 1 << 20;

/// A working set the test controls.
#[derive(Clone)]
pub struct Scripted(pub Arc<AtomicU64>);

impl MemorySource for Scripted {
    fn sample(&mut self, at: tokio::time::Instant) -> MemorySample {
        MemorySample::scripted(at, self.0.load(Ordering::Relaxed))
    }

    fn purge(&mut self) -> bool {
        false
    }
}

/// A running server.
pub struct TestServer {
    pub addr: SocketAddr,
    pub base: String,
    pub gate: Gate,
    pub state: watch::Receiver<AdmissionState>,
    pub working_set: Arc<AtomicU64>,
    shutdown: Mutex<Option<oneshot::Sender<()>>>,
    served: Mutex<Option<JoinHandle<()>>>,
}

/// The default configuration with a 1 GiB ceiling and the changes `edit`
/// makes.
pub fn config(edit: impl FnOnce(&mut Config)) -> Config {
    let mut config = Config::default();
    config.memory.ceiling = Some(bytesize::ByteSize::gib(1));
    config.server.port = 0;
    config.server.grace_period_ms = 3_000;
    edit(&mut config);
    config.validate().expect("test configuration");
    config
}

impl TestServer {
    /// Starts a server with `config` on 127.0.0.1 and a free port.
    pub async fn start(config: Config) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("address");

        let working_set = Arc::new(AtomicU64::new(50 * MIB));
        let ceiling = Ceiling::resolve(&config.memory, Some(2 << 30)).expect("ceiling");
        let gate = Gate::new(config.gate.clone(), 0);
        let controller = Controller::new(
            config.controller.clone(),
            ceiling,
            gate.clone(),
            Scripted(Arc::clone(&working_set)),
        );
        let state = controller.subscribe();
        tokio::spawn(controller.run(std::future::pending()));

        let app = App::new(
            config.server.clone(),
            gate.clone(),
            state.clone(),
            Arc::new(Metrics::new()),
        );
        let (shutdown, stopped) = oneshot::channel::<()>();
        let served = tokio::spawn(async move {
            let stopped = async {
                let _ = stopped.await;
            };
            server::serve(listener, app, stopped).await.expect("serve");
        });

        Self {
            addr,
            base: format!("http://{addr}"),
            gate,
            state,
            working_set,
            shutdown: Mutex::new(Some(shutdown)),
            served: Mutex::new(Some(served)),
        }
    }

    /// The URL of `path`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Sends SIGTERM's equivalent: the server starts draining.
    pub fn shut_down(&self) {
        if let Some(shutdown) = self.shutdown.lock().unwrap().take() {
            let _ = shutdown.send(());
        }
    }

    /// Waits for the server to finish draining.
    pub async fn stopped(&self) {
        let served = self.served.lock().unwrap().take();
        if let Some(served) = served {
            served.await.expect("server task");
        }
    }

    /// Waits up to `within` for the gate to satisfy `done`, and returns
    /// its last state.
    pub async fn gate_until(
        &self,
        within: Duration,
        done: impl Fn(&GateState) -> bool,
    ) -> GateState {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let state = self.gate.state();
            if done(&state) || tokio::time::Instant::now() > deadline {
                return state;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// An HTTP client without connection reuse surprises.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .expect("client")
}

/// Checks that `response` is a problem with `status` (problem+json, with
/// `type`, `title` and `detail`), and returns its body.
pub async fn problem(response: reqwest::Response, status: u16) -> Value {
    assert_eq!(response.status().as_u16(), status);
    let content_type = response.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_owned();
    assert_eq!(content_type, "application/problem+json");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["status"], status);
    for key in ["type", "title", "detail"] {
        assert!(body[key].is_string(), "problem without {key}: {body}");
    }
    body
}
