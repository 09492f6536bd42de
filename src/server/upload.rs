//! A request's memory starts with its body: reserve, then read.
//!
//! The declared `Content-Length` is reserved on the gate before a byte of
//! the body is read, so that a burst of uploads waits or is refused like
//! any other memory. A body without a length (chunked) reserves
//! `server.max_chunked_body` and is refused with 413 past it, or with 411
//! when that setting is zero.

use bytes::{Bytes, BytesMut};
use http::HeaderMap;
use http_body_util::BodyExt;

use super::ServerSettings;
use super::body::RequestBody;
use super::headers::declared_length;
use super::problem::ApiError;
use crate::gate::{Gate, Reservation};

/// A body read in full, and the reservation that covers it.
#[derive(Debug)]
pub struct Upload {
    /// The body.
    pub body: Bytes,
    /// Memory reserved for it; the job grows it to its full estimate.
    pub reservation: Reservation,
}

/// Reserves memory for the body of a request with `headers`, then reads
/// `body` into one buffer.
///
/// # Errors
///
/// 400 for a malformed `Content-Length`, 411 or 413 as the module docs
/// say, the gate's refusal, 408 when the body does not arrive within
/// `server.body_timeout_ms`, 400 when the client stops sending.
///
/// # Cancel safety
///
/// Dropping the future returns the reservation.
pub async fn read(
    headers: &HeaderMap,
    body: RequestBody,
    gate: &Gate,
    settings: &ServerSettings,
) -> Result<Upload, ApiError> {
    let limit = body_limit(headers, settings)?;
    let reservation = gate.reserve_bytes(limit).await?;

    let timeout = settings.body_timeout();
    let body = tokio::time::timeout(timeout, collect(body, limit))
        .await
        .map_err(|_| ApiError::BodyTimeout(timeout))??;
    Ok(Upload { body, reservation })
}

/// How many bytes the body may have: what it declares, within the limits.
fn body_limit(headers: &HeaderMap, settings: &ServerSettings) -> Result<u64, ApiError> {
    let max_body = settings.max_body.as_u64();
    match declared_length(headers)? {
        Some(length) if length > max_body => Err(ApiError::BodyTooLarge { limit: max_body }),
        Some(length) => Ok(length),
        None if settings.max_chunked_body.as_u64() == 0 => Err(ApiError::LengthRequired),
        None => Ok(settings.max_chunked_body.as_u64().min(max_body)),
    }
}

/// Reads the body frame by frame into one buffer of at most `limit`
/// bytes, so that memory never exceeds what was reserved (collecting
/// frames and then joining them would hold the body twice).
async fn collect(mut body: RequestBody, limit: u64) -> Result<Bytes, ApiError> {
    // The whole limit is reserved already; allocating it at once avoids
    // the doubling growth that would briefly hold more than that.
    let capacity = usize::try_from(limit).unwrap_or(usize::MAX);
    let mut buffer = BytesMut::with_capacity(capacity);

    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| ApiError::BodyRead(e.to_string()))?;
        let Ok(data) = frame.into_data() else {
            continue; // trailers carry nothing the job needs
        };
        if (buffer.len() + data.len()) as u64 > limit {
            return Err(ApiError::BodyTooLarge { limit });
        }
        if buffer.is_empty() && data.len() as u64 == limit {
            // The whole body in one frame: no copy.
            return Ok(data);
        }
        buffer.extend_from_slice(&data);
    }
    Ok(buffer.freeze())
}
