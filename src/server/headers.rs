//! The request headers memgate reads itself, parsed strictly: whatever a
//! client sends, the answer is a value or a typed error, never a panic.

use http::HeaderMap;
use http::header;

use super::ApiError;

/// The body length a request declares in `Content-Length`, if it declares
/// one.
///
/// # Errors
///
/// [`ApiError::BadHeader`] when the value is not a decimal number of
/// bytes that fits in a `u64`.
pub fn declared_length(headers: &HeaderMap) -> Result<Option<u64>, ApiError> {
    let Some(value) = headers.get(header::CONTENT_LENGTH) else {
        return Ok(None);
    };
    value
        .to_str()
        .ok()
        .and_then(|text| text.trim().parse().ok())
        .map(Some)
        .ok_or_else(|| ApiError::BadHeader("Content-Length is not a number".to_owned()))
}

/// The trace and span ids of `X-Cloud-Trace-Context: TRACE_ID/SPAN_ID;o=1`,
/// as Cloud Run's front end sets it. A trace id that is not hexadecimal is
/// dropped with its span: logs must not carry what a client made up.
pub fn cloud_trace(headers: &HeaderMap) -> (Option<String>, Option<String>) {
    let Some(value) = headers
        .get("x-cloud-trace-context")
        .and_then(|v| v.to_str().ok())
    else {
        return (None, None);
    };
    let (trace, rest) = value.split_once('/').unwrap_or((value, ""));
    let span = rest.split(';').next().filter(|s| !s.is_empty());
    let valid = !trace.is_empty() && trace.chars().all(|c| c.is_ascii_hexdigit());
    (
        valid.then(|| trace.to_owned()),
        span.filter(|_| valid).map(str::to_owned),
    )
}
