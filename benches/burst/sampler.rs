//! The time series of a run: the cgroup's memory and the server's gate,
//! every 50 ms.
//!
//! Memory is read from the cgroup's files, so that it is known also when
//! the server is too busy to answer, or dead. The gate is read from
//! `GET /v1/admission` in a loop of its own, so that a slow answer delays
//! only the gate's series.

use std::time::{Duration, Instant};

use reqwest::Client;
use serde::Serialize;
use serde_json::Value;
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;

use crate::cgroup::Cgroup;
use crate::process::millis_between;

/// Time between two samples.
pub const PERIOD: Duration = Duration::from_millis(50);

/// The longest an admission snapshot may take before it is skipped.
const ADMISSION_TIMEOUT: Duration = Duration::from_millis(500);

/// The cgroup's memory at one instant. Bytes.
#[derive(Clone, Debug, Serialize)]
pub struct MemoryPoint {
    /// Milliseconds since the start of the burst.
    pub t_ms: f64,
    /// `memory.usage_in_bytes` (v1) or `memory.current` (v2).
    pub usage: u64,
    /// Usage minus inactive file pages.
    pub working_set: u64,
}

/// The server's admission state at one instant, from `/v1/admission`.
#[derive(Clone, Debug, Serialize)]
pub struct GatePoint {
    /// Milliseconds since the start of the burst, when the answer came.
    pub t_ms: f64,
    /// The working set the server steers by.
    pub working_set: u64,
    /// The memory jobs may hold.
    pub capacity: u64,
    /// The memory jobs hold.
    pub reserved: u64,
    /// Reservations alive.
    pub in_flight: u64,
    /// Jobs running.
    pub running: u64,
    /// Jobs allowed to run at once.
    pub running_limit: u64,
    /// Jobs waiting.
    pub queued: u64,
    /// Whether pressure was engaged.
    pub pressure: bool,
}

/// Both series of one run.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Series {
    /// The cgroup's memory.
    pub memory: Vec<MemoryPoint>,
    /// The server's gate.
    pub gate: Vec<GatePoint>,
    /// Admission snapshots that failed or timed out.
    pub gate_misses: u64,
}

/// Samples until `stop` is cancelled or `limit` has passed since `t0`.
pub async fn sample(
    cgroup: &Cgroup,
    client: &Client,
    base: &str,
    t0: Instant,
    stop: &CancellationToken,
    limit: Duration,
) -> Series {
    let end = t0 + limit;
    let memory = async {
        let mut points = Vec::new();
        let mut ticks = ticker();
        while tick(&mut ticks, stop, end).await {
            if let Some(point) = memory_point(cgroup, t0) {
                points.push(point);
            }
        }
        points
    };
    let gate = async {
        let url = format!("{base}/v1/admission");
        let (mut points, mut misses) = (Vec::new(), 0);
        let mut ticks = ticker();
        while tick(&mut ticks, stop, end).await {
            match admission(client, &url).await {
                Some(state) => points.push(gate_point(&state, t0)),
                None => misses += 1,
            }
        }
        (points, misses)
    };
    let (memory, (gate, gate_misses)) = tokio::join!(memory, gate);
    Series {
        memory,
        gate,
        gate_misses,
    }
}

fn ticker() -> tokio::time::Interval {
    let mut ticks = tokio::time::interval(PERIOD);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Skip);
    ticks
}

/// Waits for the next tick; false once sampling should end.
async fn tick(ticks: &mut tokio::time::Interval, stop: &CancellationToken, end: Instant) -> bool {
    tokio::select! {
        () = stop.cancelled() => false,
        _ = ticks.tick() => Instant::now() < end,
    }
}

fn memory_point(cgroup: &Cgroup, t0: Instant) -> Option<MemoryPoint> {
    let usage = cgroup.usage().ok()?;
    let inactive = cgroup.inactive_file().unwrap_or(0);
    Some(MemoryPoint {
        t_ms: millis_between(t0, Instant::now()),
        usage,
        working_set: usage.saturating_sub(inactive),
    })
}

/// The server's `/v1/admission` answer, or `None` when it has none in
/// time.
pub async fn admission(client: &Client, url: &str) -> Option<Value> {
    fetch(client, url).await?.json().await.ok()
}

/// A GET of the server's that answers within [`ADMISSION_TIMEOUT`].
async fn fetch(client: &Client, url: &str) -> Option<reqwest::Response> {
    let request = client.get(url).timeout(ADMISSION_TIMEOUT);
    request.send().await.ok()
}

fn gate_point(state: &Value, t0: Instant) -> GatePoint {
    let number = |v: &Value| v.as_u64().unwrap_or(0);
    let gate = &state["gate"];
    GatePoint {
        t_ms: millis_between(t0, Instant::now()),
        working_set: number(&state["working_set"]),
        capacity: number(&gate["capacity"]),
        reserved: number(&gate["reserved"]),
        in_flight: number(&gate["in_flight"]),
        running: number(&gate["running"]),
        running_limit: number(&gate["running_limit"]),
        queued: number(&gate["queued"]),
        pressure: state["pressure"].as_bool().unwrap_or(false),
    }
}

/// Refusals as the server timed them, from its request-duration histogram:
/// from the request's headers to its answer, without the client's own
/// scheduling or upload.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct ServerRefusals {
    /// Answers with status 503 or 429.
    pub count: u64,
    /// Those answered within 10 ms.
    pub within_10ms: u64,
    /// Those that were running jobs shed, from `memgate_refused_total`.
    pub shed: u64,
}

/// The server's refusal timings, read from `GET /metrics`; `None` when it
/// does not answer.
pub async fn server_refusals(client: &Client, url: &str) -> Option<ServerRefusals> {
    let text = fetch(client, url).await?.text().await.ok()?;
    Some(refusals_in(&text))
}

/// Sums the refusal series of the duration histogram over every route.
fn refusals_in(metrics: &str) -> ServerRefusals {
    const FAMILY: &str = "memgate_http_request_duration_seconds";
    let mut refusals = ServerRefusals::default();
    for line in metrics.lines() {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let Ok(value) = value.parse::<f64>() else {
            continue;
        };
        if series == r#"memgate_refused_total{reason="shed"}"# {
            refusals.shed = value as u64;
            continue;
        }
        let refused = series.contains(r#"status="503""#) || series.contains(r#"status="429""#);
        if !refused {
            continue;
        }
        if series.starts_with(&format!("{FAMILY}_count")) {
            refusals.count += value as u64;
        } else if series.starts_with(&format!("{FAMILY}_bucket")) && series.contains(r#"le="0.01""#)
        {
            refusals.within_10ms += value as u64;
        }
    }
    refusals
}
