//! The load driver: an open-loop burst over HTTP to 127.0.0.1.
//!
//! Request `i` of `n` is sent at `i * spread / n` after the start whatever
//! the answers so far, as independent clients would send it: a closed loop
//! would slow down with the server and hide its queueing. At most
//! `concurrency` requests are in flight; a request that waits for a slot is
//! still timed from its scheduled send, so that waiting is not hidden
//! either. Refusals with `Retry-After` are retried after that many seconds,
//! a bounded number of times, within the same request's latency.
//!
//! Connections are not kept: each attempt opens its own, so that a server
//! killed mid-run shows as connection errors on every later attempt.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use reqwest::Client;
use reqwest::header::{CONTENT_TYPE, RETRY_AFTER};
use serde::Serialize;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::process::millis_between;

/// The longest `Retry-After` honoured: the server's own cap.
const MAX_RETRY_AFTER_SECS: u64 = 60;

/// One request of the burst.
#[derive(Clone, Debug)]
pub struct Job {
    /// Path and query, for example `/v1/synthetic?mib=150&cpu_ms=250`.
    pub target: String,
    /// The body and its `Content-Type`; an empty body otherwise.
    pub body: Option<(Bytes, &'static str)>,
    /// What the job is, for the records: `150MiB`, `24MP`.
    pub input: String,
}

/// The burst to send.
#[derive(Clone, Debug)]
pub struct Plan {
    /// The requests, in the order they are sent.
    pub jobs: Arc<Vec<Job>>,
    /// Time over which the sends are spread evenly.
    pub spread: Duration,
    /// Most requests in flight at once.
    pub concurrency: usize,
    /// Most retries of a refused request that carries `Retry-After`.
    pub retries: u32,
    /// Time from the start after which nothing is sent and every request
    /// still open is abandoned: the run always ends.
    pub deadline: Duration,
}

/// Why a request got no answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Failure {
    /// The connection was refused: no server listening.
    Connect,
    /// The connection broke mid-request: the server died, for instance.
    Io,
    /// The attempt took longer than the request timeout.
    Timeout,
    /// The run's deadline passed first.
    Deadline,
}

impl Failure {
    /// Whether this is how a dead or killed server shows.
    pub fn is_connection(self) -> bool {
        matches!(self, Self::Connect | Self::Io)
    }
}

/// A refused attempt: 503 or 429.
#[derive(Clone, Debug, Serialize)]
pub struct Refused {
    /// 1 for the first attempt.
    pub attempt: u32,
    /// When the refusal arrived, in ms since the start.
    pub at_ms: f64,
    /// How long the refusal took to arrive, in ms.
    pub answer_ms: f64,
    /// 503 or 429.
    pub status: u16,
    /// The `Retry-After` delay in seconds, when it was given.
    pub retry_after_s: Option<u64>,
    /// The problem's `reason`: `queue_full`, `wait_timed_out`, ...
    pub reason: Option<String>,
}

/// Everything measured about one request.
#[derive(Clone, Debug, Serialize)]
pub struct Record {
    /// Its position in the burst.
    pub index: usize,
    /// What the job was.
    pub input: String,
    /// When it was due, in ms since the start.
    pub scheduled_ms: f64,
    /// When its first attempt went out, if it did.
    pub sent_ms: Option<f64>,
    /// When its final answer or failure came.
    pub finished_ms: Option<f64>,
    /// From `scheduled_ms` to `finished_ms`, retries included.
    pub latency_ms: Option<f64>,
    /// Attempts made.
    pub attempts: u32,
    /// The final answer's status, if there was one.
    pub status: Option<u16>,
    /// Why there was no final answer.
    pub failure: Option<Failure>,
    /// The final answer's problem `reason` (or `type`), when it was an
    /// error.
    pub reason: Option<String>,
    /// Every refused attempt.
    pub refusals: Vec<Refused>,
    /// Size of the final answer's body.
    pub body_bytes: usize,
}

impl Record {
    /// Whether the job was done: a 2xx answer.
    pub fn succeeded(&self) -> bool {
        self.status.is_some_and(|s| (200..300).contains(&s))
    }
}

/// What one attempt got back.
struct Answer {
    status: u16,
    retry_after: Option<u64>,
    reason: Option<String>,
    bytes: usize,
}

/// What every request task shares.
struct Shared {
    client: Client,
    base: String,
    plan: Plan,
    t0: Instant,
}

/// Sends the burst to `base` (`http://127.0.0.1:<port>`), starting at `t0`,
/// and returns one record per job, in order.
pub async fn run(client: Client, base: String, plan: Plan, t0: Instant) -> Vec<Record> {
    let count = plan.jobs.len();
    let deadline = t0 + plan.deadline;
    let slots = Arc::new(Semaphore::new(plan.concurrency.max(1)));
    let shared = Arc::new(Shared {
        client,
        base,
        plan,
        t0,
    });
    let mut tasks = JoinSet::new();
    let mut records = Vec::with_capacity(count);
    for index in 0..count {
        let share = index as f64 / count as f64;
        let scheduled = t0 + shared.plan.spread.mul_f64(share);
        tokio::time::sleep_until(scheduled.into()).await;
        let slot = tokio::select! {
            slot = Arc::clone(&slots).acquire_owned() => slot.ok(),
            () = tokio::time::sleep_until(deadline.into()) => None,
        };
        let Some(slot) = slot else {
            records.push(unsent(&shared, index, scheduled));
            continue;
        };
        let shared = Arc::clone(&shared);
        tasks.spawn(async move {
            let record = send(&shared, index, scheduled).await;
            drop(slot);
            record
        });
    }
    while let Some(done) = tasks.join_next().await {
        records.push(done.expect("request tasks do not panic"));
    }
    records.sort_by_key(|r| r.index);
    records
}

fn unsent(shared: &Shared, index: usize, scheduled: Instant) -> Record {
    let mut record = new_record(shared, index, scheduled);
    record.failure = Some(Failure::Deadline);
    record
}

fn new_record(shared: &Shared, index: usize, scheduled: Instant) -> Record {
    Record {
        index,
        input: shared.plan.jobs[index].input.clone(),
        scheduled_ms: millis_between(shared.t0, scheduled),
        sent_ms: None,
        finished_ms: None,
        latency_ms: None,
        attempts: 0,
        status: None,
        failure: None,
        reason: None,
        refusals: Vec::new(),
        body_bytes: 0,
    }
}

/// One request: attempts until an answer that is not a refusal with
/// `Retry-After`, the retries run out, or the next retry would come after
/// the deadline; the last answer stands then.
async fn send(shared: &Shared, index: usize, scheduled: Instant) -> Record {
    let job = &shared.plan.jobs[index];
    let deadline = shared.t0 + shared.plan.deadline;
    let url = format!("{}{}", shared.base, job.target);
    let mut record = new_record(shared, index, scheduled);
    record.sent_ms = Some(millis_between(shared.t0, Instant::now()));
    for attempt in 1..=shared.plan.retries + 1 {
        record.attempts = attempt;
        let started = Instant::now();
        let answer = tokio::time::timeout_at(deadline.into(), once(&shared.client, &url, job))
            .await
            .unwrap_or(Err(Failure::Deadline));
        let answer = match answer {
            Ok(answer) => answer,
            Err(failure) => {
                // No final answer: an earlier refusal stays in `refusals`.
                record.failure = Some(failure);
                record.status = None;
                record.reason = None;
                break;
            }
        };
        let refused_at = Instant::now();
        record.status = Some(answer.status);
        record.body_bytes = answer.bytes;
        record.reason.clone_from(&answer.reason);
        if !matches!(answer.status, 429 | 503) {
            break;
        }
        let retry_after = answer.retry_after;
        record.refusals.push(Refused {
            attempt,
            at_ms: millis_between(shared.t0, refused_at),
            answer_ms: millis_between(started, refused_at),
            status: answer.status,
            retry_after_s: retry_after,
            reason: answer.reason,
        });
        let Some(secs) = retry_after.filter(|_| attempt <= shared.plan.retries) else {
            break;
        };
        let wake = refused_at + Duration::from_secs(secs.min(MAX_RETRY_AFTER_SECS));
        if wake >= deadline {
            break;
        }
        tokio::time::sleep_until(wake.into()).await;
    }
    let finished = Instant::now();
    record.finished_ms = Some(millis_between(shared.t0, finished));
    record.latency_ms = Some(millis_between(scheduled, finished));
    record
}

/// One attempt: the request, its whole answer, and the problem's reason
/// when it is an error.
async fn once(client: &Client, url: &str, job: &Job) -> Result<Answer, Failure> {
    // An explicit empty body sends `Content-Length: 0`: without it the
    // server would reserve room for a chunked upload.
    let request = match &job.body {
        Some((body, content_type)) => client
            .post(url)
            .header(CONTENT_TYPE, *content_type)
            .body(body.clone()),
        None => client.post(url).body(Bytes::new()),
    };
    let response = request.send().await.map_err(classify)?;
    let status = response.status().as_u16();
    let retry_after = response
        .headers()
        .get(RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok());
    let body = response.bytes().await.map_err(classify)?;
    let reason = (status >= 400).then(|| problem_reason(&body)).flatten();
    Ok(Answer {
        status,
        retry_after,
        reason,
        bytes: body.len(),
    })
}

fn classify(error: reqwest::Error) -> Failure {
    if error.is_timeout() {
        Failure::Timeout
    } else if error.is_connect() {
        Failure::Connect
    } else {
        Failure::Io
    }
}

/// The `reason` of a problem+json body, else its `type`.
fn problem_reason(body: &[u8]) -> Option<String> {
    let problem: serde_json::Value = serde_json::from_slice(body).ok()?;
    let field = problem.get("reason").or_else(|| problem.get("type"))?;
    field.as_str().map(str::to_owned)
}
