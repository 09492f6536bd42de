//! Every error the API answers, and the one place that maps errors to
//! status codes.
//!
//! Errors are `application/problem+json` (RFC 9457) with `type`, `title`,
//! `status` and `detail`, and for the gate's refusals a `reason`. The
//! `type` is a relative URI, `/problems/<name>`, documented in the README.

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::Full;
use serde::Serialize;

use crate::gate::{Refusal, RefusalReason};
use crate::jobs::{JobError, ParamError};

/// What went wrong with a request.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// A query parameter is missing, malformed, repeated or out of range.
    #[error("{0}")]
    BadParameters(#[from] ParamError),
    /// A header has a value the server cannot use.
    #[error("{0}")]
    BadHeader(String),
    /// No route has this path.
    #[error("no such resource")]
    NotFound,
    /// The path exists, but not with this method.
    #[error("method not allowed")]
    MethodNotAllowed,
    /// A body without `Content-Length` where one is required.
    #[error("a Content-Length header is required")]
    LengthRequired,
    /// A body larger than allowed or than declared.
    #[error("the body is larger than {limit} bytes")]
    BodyTooLarge {
        /// The most that was accepted, in bytes.
        limit: u64,
    },
    /// The body did not arrive in time.
    #[error("the body did not arrive within {0:?}")]
    BodyTimeout(Duration),
    /// The client stopped sending the body.
    #[error("the body could not be read: {0}")]
    BodyRead(String),
    /// The job failed on its input or in its work.
    #[error(transparent)]
    Job(#[from] JobError),
    /// The gate would not admit the job.
    #[error("{0}")]
    Refused(Refusal),
    /// The job passed its deadline.
    #[error("the job did not finish within {0:?}")]
    DeadlineExceeded(Duration),
    /// The job panicked; the server carries on.
    #[error("the job failed unexpectedly")]
    JobPanicked,
    /// An asynchronous job has no result to give (yet, or any more).
    #[error("{0}")]
    NoResult(String),
}

/// The body of an error answer.
#[derive(Debug, Serialize)]
struct Problem<'a> {
    #[serde(rename = "type")]
    kind: String,
    title: &'a str,
    status: u16,
    detail: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'static str>,
}

impl ApiError {
    /// The status, the problem's name and its title. `refusal_status` is
    /// what the gate's refusals answer (`server.refusal_status`).
    fn classify(&self, refusal_status: StatusCode) -> (StatusCode, &'static str, &'static str) {
        use StatusCode as S;
        match self {
            Self::BadParameters(_) => (S::BAD_REQUEST, "bad-parameters", "Bad parameters"),
            Self::BadHeader(_) => (S::BAD_REQUEST, "bad-header", "Bad header"),
            Self::NotFound => (S::NOT_FOUND, "not-found", "Not found"),
            Self::MethodNotAllowed => (S::METHOD_NOT_ALLOWED, "method", "Method not allowed"),
            Self::LengthRequired => (S::LENGTH_REQUIRED, "length-required", "Length required"),
            Self::BodyTooLarge { .. } => (S::PAYLOAD_TOO_LARGE, "body-too-large", "Body too large"),
            Self::BodyTimeout(_) => (S::REQUEST_TIMEOUT, "body-timeout", "Body too slow"),
            Self::BodyRead(_) => (S::BAD_REQUEST, "body-read", "Body not read"),
            Self::Job(error) => classify_job(error),
            Self::Refused(refusal) => classify_refusal(refusal, refusal_status),
            Self::DeadlineExceeded(_) => (S::GATEWAY_TIMEOUT, "deadline", "Deadline exceeded"),
            Self::JobPanicked => (S::INTERNAL_SERVER_ERROR, "job-panicked", "Job failed"),
            Self::NoResult(_) => (S::CONFLICT, "no-result", "No result"),
        }
    }

    /// The status this error answers.
    pub fn status(&self, refusal_status: StatusCode) -> StatusCode {
        self.classify(refusal_status).0
    }

    /// The answer to send.
    pub fn into_response(self, refusal_status: StatusCode) -> Response<Full<Bytes>> {
        let (status, name, title) = self.classify(refusal_status);
        let reason = match &self {
            Self::Refused(refusal) => Some(refusal.reason.as_str()),
            _ => None,
        };
        let problem = Problem {
            kind: format!("/problems/{name}"),
            title,
            status: status.as_u16(),
            detail: self.to_string(),
            reason,
        };
        let body = serde_json::to_vec(&problem).unwrap_or_default();

        let mut response = Response::new(Full::new(Bytes::from(body)));
        *response.status_mut() = status;
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if let Self::Refused(Refusal {
            retry_after: Some(delay),
            ..
        }) = &self
        {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(delay.as_secs()));
        }
        response
    }

    /// The refusal's reason, for logs and metrics.
    pub fn reason(&self) -> Option<&'static str> {
        match self {
            Self::Refused(refusal) => Some(refusal.reason.as_str()),
            _ => None,
        }
    }
}

impl From<Refusal> for ApiError {
    fn from(refusal: Refusal) -> Self {
        Self::Refused(refusal)
    }
}

fn classify_job(error: &JobError) -> (StatusCode, &'static str, &'static str) {
    use StatusCode as S;
    match error {
        JobError::Unsupported(_) => (
            S::UNSUPPORTED_MEDIA_TYPE,
            "unsupported-media",
            "Unsupported media type",
        ),
        JobError::Corrupt(_) => (S::UNPROCESSABLE_ENTITY, "corrupt-image", "Corrupt image"),
        JobError::TooLarge(_) => (S::PAYLOAD_TOO_LARGE, "image-too-large", "Image too large"),
        JobError::Params(_) => (S::BAD_REQUEST, "bad-parameters", "Bad parameters"),
        // A cancelled job's client is gone or its deadline passed: the
        // answer, if anyone reads it, is the deadline's.
        JobError::Cancelled => (S::GATEWAY_TIMEOUT, "deadline", "Deadline exceeded"),
        JobError::Encode(_) => (S::INTERNAL_SERVER_ERROR, "job-failed", "Job failed"),
    }
}

fn classify_refusal(
    refusal: &Refusal,
    refusal_status: StatusCode,
) -> (StatusCode, &'static str, &'static str) {
    match refusal.reason {
        // Retrying cannot help: the job is larger than the gate can hold.
        RefusalReason::TooLarge { .. } => (
            StatusCode::PAYLOAD_TOO_LARGE,
            "too-large",
            "Job larger than the memory ceiling",
        ),
        RefusalReason::QueueFull => (refusal_status, "queue-full", "Queue full"),
        RefusalReason::WaitTimedOut => (refusal_status, "wait-timed-out", "Wait timed out"),
        RefusalReason::Draining => (refusal_status, "draining", "Draining"),
        RefusalReason::Shed => (refusal_status, "shed", "Shed under memory pressure"),
    }
}
