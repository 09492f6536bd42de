//! Routes and their handlers.
//!
//! | route | answer |
//! |---|---|
//! | `POST /v1/transcode` | 200 with the image |
//! | `POST /v1/jobs` | 202 with `Location: /v1/jobs/{id}` |
//! | `GET /v1/jobs/{id}` | the job's status |
//! | `GET /v1/jobs/{id}/result` | the job's output once done |
//! | `POST /v1/synthetic?mib=N&cpu_ms=M` | the load-test job |
//! | `GET /healthz`, `GET /readyz` | alive; ready (503 while draining) |
//! | `GET /metrics` | Prometheus text format |
//! | `GET /v1/admission` | the controller's state as JSON |

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use serde::Serialize;
use tokio::time::Instant;
use tracing::Instrument;
use uuid::Uuid;

use super::body::RequestBody;
use super::problem::ApiError;
use super::store::{Output, Status};
use super::upload::{self, Upload};
use super::work::{self, JobOptions};
use super::{App, headers};
use crate::controller::AdmissionState;
use crate::gate::{Refusal, RefusalReason};
use crate::jobs::{self, TranscodeParams, synthetic};

type Answer = Response<Full<Bytes>>;

/// Answers one request, logging it and counting it.
pub async fn handle(app: Arc<App>, request: Request<Incoming>, remote: SocketAddr) -> Answer {
    let started = Instant::now();
    let linger_bytes = app.settings.max_body.as_u64();
    let request = request.map(|body| RequestBody::new(body, linger_bytes));
    let method = request.method().clone();
    let url = request.uri().to_string();
    let user_agent = header_text(&request, header::USER_AGENT);
    let request_size = header_text(&request, header::CONTENT_LENGTH);
    let (trace, span_id) = headers::cloud_trace(request.headers());
    // At info, so that warnings and errors inside a request carry its
    // trace at the default level; the request line itself stays at debug.
    let span = tracing::info_span!("request", trace, span_id);

    let (route, answer) = route(&app, request).instrument(span.clone()).await;
    let answer = answer.unwrap_or_else(|e| {
        let status = e.status(app.settings.refusal_status());
        if status.is_server_error() && status != StatusCode::SERVICE_UNAVAILABLE {
            tracing::warn!(parent: &span, route, error = %e, "request failed");
        }
        e.into_response(app.settings.refusal_status())
    });

    let elapsed = started.elapsed();
    app.metrics
        .http_request(route, answer.status().as_u16(), elapsed);
    tracing::debug!(
        parent: &span,
        http.method = %method,
        http.url = url,
        http.status = answer.status().as_u16(),
        http.latency_ms = elapsed.as_secs_f64() * 1000.0,
        http.request_size = request_size,
        http.response_size = answer_size(&answer),
        http.remote_ip = %remote.ip(),
        http.user_agent = user_agent,
        "request"
    );
    answer
}

/// Picks the handler; returns the route's name for metrics and logs.
async fn route(
    app: &Arc<App>,
    request: Request<RequestBody>,
) -> (&'static str, Result<Answer, ApiError>) {
    let path = request.uri().path().to_owned();
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let method = request.method().clone();

    match (method, segments.as_slice()) {
        (Method::POST, ["v1", "transcode"]) => ("transcode", transcode(app, request).await),
        (Method::POST, ["v1", "jobs"]) => ("jobs", submit(app, request).await),
        (Method::GET, ["v1", "jobs", id]) => ("job", job_status(app, id)),
        (Method::GET, ["v1", "jobs", id, "result"]) => ("job_result", job_result(app, id)),
        (Method::POST, ["v1", "synthetic"]) if app.settings.synthetic => {
            ("synthetic", synthetic_job(app, request).await)
        }
        (Method::GET, ["healthz"]) => ("healthz", Ok(text(StatusCode::OK, "ok"))),
        (Method::GET, ["readyz"]) => ("readyz", readyz(app)),
        (Method::GET, ["metrics"]) => ("metrics", Ok(metrics(app))),
        (Method::GET, ["v1", "admission"]) => ("admission", Ok(admission(app))),
        (
            _,
            ["v1", "transcode" | "jobs" | "synthetic"]
            | ["v1", "jobs", _]
            | ["v1", "jobs", _, "result"],
        )
        | (_, ["healthz" | "readyz" | "metrics"] | ["v1", "admission"]) => {
            ("other", Err(ApiError::MethodNotAllowed))
        }
        _ => ("other", Err(ApiError::NotFound)),
    }
}

/// `POST /v1/transcode`: the image back, transcoded.
async fn transcode(app: &App, request: Request<RequestBody>) -> Result<Answer, ApiError> {
    let params = TranscodeParams::from_query(request.uri().query())?;
    let upload = admit_image(app, request, &params).await?;

    let Upload { body, reservation } = upload;
    let max_alloc = reservation.bytes();
    let held = body.len() as u64;
    let work = move |cancel: &jobs::Cancel| jobs::transcode(&body, &params, max_alloc, cancel);
    let finished = work::run(
        reservation,
        work,
        options(app, false, held, Box::new(|| {})),
    )
    .await?;

    let image = finished.output;
    Ok(bytes(
        StatusCode::OK,
        image.format.content_type(),
        Bytes::from(image.data),
    ))
}

/// `POST /v1/jobs`: admitted now, worked on in the background.
async fn submit(app: &Arc<App>, request: Request<RequestBody>) -> Result<Answer, ApiError> {
    let params = TranscodeParams::from_query(request.uri().query())?;
    let upload = admit_image(app, request, &params).await?;
    let Some(id) = app.store.insert() else {
        return Err(ApiError::Refused(Refusal {
            reason: RefusalReason::QueueFull,
            retry_after: Some(Duration::from_secs(1)),
        }));
    };

    let task_app = Arc::clone(app);
    let span = tracing::Span::current();
    app.tasks
        .spawn(async move { background(task_app, id, upload, params).await }.instrument(span));

    let mut answer = json(
        StatusCode::ACCEPTED,
        &Submitted {
            id: id.to_string(),
            status: Status::Queued,
        },
    );
    let location = format!("/v1/jobs/{id}");
    if let Ok(value) = HeaderValue::from_str(&location) {
        answer.headers_mut().insert(header::LOCATION, value);
    }
    Ok(answer)
}

#[derive(Serialize)]
struct Submitted {
    id: String,
    status: Status,
}

/// Runs an asynchronous job to its end and stores what came of it.
async fn background(app: Arc<App>, id: Uuid, upload: Upload, params: TranscodeParams) {
    let Upload { body, reservation } = upload;
    let max_alloc = reservation.bytes();
    let held = body.len() as u64;
    let work = move |cancel: &jobs::Cancel| jobs::transcode(&body, &params, max_alloc, cancel);
    let store = &app.store;
    let on_start = Box::new(move || store.running(id));

    match work::run(reservation, work, options(&app, true, held, on_start)).await {
        Ok(finished) => {
            let image = finished.output;
            let output = Output {
                data: Bytes::from(image.data),
                content_type: image.format.content_type(),
            };
            if let Some(mut reservation) = finished.kept {
                reservation.shrink_to(output.data.len() as u64);
                store.done(id, output, reservation);
            }
        }
        Err(ApiError::Refused(refusal)) if refusal.reason == RefusalReason::Draining => {
            tracing::info!(job = %id, "asynchronous job cancelled: the server is draining");
            store.failed(id, Status::Cancelled, "draining".to_owned(), None);
        }
        Err(e) => {
            let status = e.status(app.settings.refusal_status()).as_u16();
            store.failed(id, Status::Failed, e.to_string(), Some(status));
        }
    }
}

/// `GET /v1/jobs/{id}`.
fn job_status(app: &App, id: &str) -> Result<Answer, ApiError> {
    let id = Uuid::parse_str(id).map_err(|_| ApiError::NotFound)?;
    let view = app.store.view(id).ok_or(ApiError::NotFound)?;
    Ok(json(StatusCode::OK, &view))
}

/// `GET /v1/jobs/{id}/result`.
fn job_result(app: &App, id: &str) -> Result<Answer, ApiError> {
    let id = Uuid::parse_str(id).map_err(|_| ApiError::NotFound)?;
    let view = app.store.view(id).ok_or(ApiError::NotFound)?;
    match app.store.result(id) {
        Some(output) => Ok(bytes(StatusCode::OK, output.content_type, output.data)),
        None => Err(ApiError::NoResult(format!(
            "job {id} is {}",
            serde_json::to_value(view.status)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default()
        ))),
    }
}

/// `POST /v1/synthetic`: reserve, allocate, touch, spend CPU, answer.
async fn synthetic_job(app: &App, request: Request<RequestBody>) -> Result<Answer, ApiError> {
    let params = synthetic::SyntheticParams::from_query(request.uri().query())?;
    let reservation = app
        .gate
        .reserve(synthetic::CLASS, synthetic::estimate(&params))
        .await?;
    let work = move |cancel: &jobs::Cancel| synthetic::run(&params, cancel);
    let finished = work::run(reservation, work, options(app, false, 0, Box::new(|| {}))).await?;
    Ok(json(StatusCode::OK, &finished.output))
}

/// Reads an upload under the gate, reads the image's header and grows the
/// reservation to the job's estimate.
async fn admit_image(
    app: &App,
    request: Request<RequestBody>,
    params: &TranscodeParams,
) -> Result<Upload, ApiError> {
    let (parts, body) = request.into_parts();
    let mut upload = upload::read(&parts.headers, body, &app.gate, &app.settings).await?;

    let info = jobs::probe(&upload.body)?;
    let estimate = jobs::estimate(&info, params)?;
    upload
        .reservation
        .grow_as(jobs::class(&info, params), estimate)
        .await?;
    Ok(upload)
}

fn options<'a>(
    app: &'a App,
    background: bool,
    held_bytes: u64,
    on_start: Box<dyn FnOnce() + Send + 'a>,
) -> JobOptions<'a> {
    JobOptions {
        deadline: app.settings.job_timeout(),
        nice: app.settings.job_nice,
        background,
        held_bytes,
        metrics: &app.metrics,
        on_start,
    }
}

fn readyz(app: &App) -> Result<Answer, ApiError> {
    if app.draining() {
        return Err(ApiError::Refused(Refusal {
            reason: RefusalReason::Draining,
            retry_after: Some(Duration::from_secs(1)),
        }));
    }
    Ok(text(StatusCode::OK, "ready"))
}

fn metrics(app: &App) -> Answer {
    app.metrics.observe_state(&current_state(app));
    let mut answer = text(StatusCode::OK, &app.metrics.render());
    answer.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(crate::telemetry::metrics::CONTENT_TYPE),
    );
    answer
}

fn admission(app: &App) -> Answer {
    json(StatusCode::OK, &current_state(app))
}

/// The controller's last published state with the gate's accounts read
/// now: the rest is at most one tick old, but a job that just ended must
/// not still show as admitted but not yet counted.
fn current_state(app: &App) -> AdmissionState {
    let mut state = app.state.borrow().clone();
    state.gate = app.gate.state();
    state.binding = state.gate.binding();
    state
}

fn json<T: Serialize>(status: StatusCode, value: &T) -> Answer {
    let body = serde_json::to_vec(value).unwrap_or_default();
    bytes(status, "application/json", Bytes::from(body))
}

fn text(status: StatusCode, body: &str) -> Answer {
    bytes(
        status,
        "text/plain; charset=utf-8",
        Bytes::from(body.to_owned()),
    )
}

fn bytes(status: StatusCode, content_type: &'static str, body: Bytes) -> Answer {
    let mut answer = Response::new(Full::new(body));
    *answer.status_mut() = status;
    answer
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    answer
}

fn header_text(request: &Request<RequestBody>, name: header::HeaderName) -> String {
    request
        .headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned()
}

fn answer_size(answer: &Answer) -> u64 {
    use hyper::body::Body;
    answer.body().size_hint().exact().unwrap_or(0)
}
