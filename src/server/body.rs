//! Request bodies that are drained, not dropped, when the answer comes
//! first.
//!
//! A handler often answers before reading the body: a refusal, a bad
//! parameter, a body too large. Closing the connection with request bytes
//! still unread makes the kernel reset it, and a client still sending, or
//! slow to read, then loses the answer already written: a 503 with
//! `Retry-After` becomes a broken connection, which a client cannot tell
//! from a crash. So a body dropped unread is read and discarded in the
//! background, for a bounded time and number of bytes, while the answer
//! goes out; only past those bounds is the connection closed on it.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, Incoming, SizeHint};

/// Longest a dropped body is drained for. Long enough for a client on a
/// loaded machine to read its answer; short enough that a client that
/// never stops sending does not keep its connection.
const LINGER: Duration = Duration::from_secs(5);

/// A request body that drains itself when dropped unread.
#[derive(Debug)]
pub struct RequestBody {
    inner: Option<Incoming>,
    linger_bytes: u64,
}

impl RequestBody {
    /// Wraps `body`; once dropped, at most `linger_bytes` more of it are
    /// read and discarded.
    pub fn new(body: Incoming, linger_bytes: u64) -> Self {
        Self {
            inner: Some(body),
            linger_bytes,
        }
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.inner.as_mut() {
            Some(body) => Pin::new(body).poll_frame(cx),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(Body::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.inner
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), Body::size_hint)
    }
}

impl Drop for RequestBody {
    fn drop(&mut self) {
        let Some(body) = self.inner.take() else {
            return;
        };
        if body.is_end_stream() {
            return;
        }
        // Outside a runtime (a test building requests by hand) there is no
        // connection to keep.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(drain(body, self.linger_bytes));
        }
    }
}

/// Reads and discards `body` until it ends, `max_bytes` are read, or
/// [`LINGER`] has passed.
async fn drain(mut body: Incoming, max_bytes: u64) {
    let mut read = 0u64;
    let reading = async {
        while let Some(Ok(frame)) = body.frame().await {
            read += frame.data_ref().map_or(0, |data| data.len() as u64);
            if read > max_bytes {
                break;
            }
        }
    };
    let ended = tokio::time::timeout(LINGER, reading).await.is_ok();
    tracing::debug!(read, ended, "unread request body drained");
}
