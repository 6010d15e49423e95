//! Request bodies for every role: [`RequestBody`], what applications receive, and
//! [`read_limited`], reading one within a size and a time limit: refused before reading
//! when the declared length is already too large, never held beyond `max` bytes, and a
//! client that trickles its body is cut off at `timeout`.
//!
//! A body left unread is not simply dropped. Dropping it before the answer is sent makes
//! HTTP/2 reset the stream with `CANCEL` ahead of the response frames (curl reports a
//! framing error, httpx hangs) and makes HTTP/1.1 close the connection after the answer
//! (with unread data in the socket, a reset that can lose the answer; and a client that
//! has already sent its next request on the kept-alive connection sees it fail). Instead
//! the rest of the body is handed to a background task that reads and discards a bounded
//! amount within [`DRAIN_MAX_TIME`], so the client finishes sending, reads the answer and
//! keeps its connection; past that bound the body is released after a short grace, by
//! then after the answer, so HTTP/2 resets with `NO_ERROR` as RFC 9113 §8.1 allows and
//! HTTP/1.1 closes. A refused body (413) is drained up to [`DRAIN_MAX_BYTES`]; a body an
//! application simply did not need (a 401, 404 or 405 answered before reading) up to
//! [`UNREAD_DRAIN_BYTES`].

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::{Version, header};
use http_body_util::BodyExt;
use hyper::Request;
use hyper::body::{Body, Frame, Incoming, SizeHint};

use super::activity::{Activity, RequestGuard};

/// Most bytes of a refused body read and discarded so its client sees the answer.
pub const DRAIN_MAX_BYTES: u64 = 16 * 1024 * 1024;
/// Most bytes of a body an application dropped unread that are read and discarded.
pub const UNREAD_DRAIN_BYTES: u64 = 1024 * 1024;
/// Longest time spent discarding a refused or unread body.
pub const DRAIN_MAX_TIME: Duration = Duration::from_secs(10);
/// How long a refused body that is not drained is held before it is released, so the
/// answer goes out first.
const RELEASE_GRACE: Duration = Duration::from_millis(250);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BodyError {
    #[error("request body larger than the limit of {0} bytes")]
    TooLarge(u64),
    #[error("request body not received in time")]
    Timeout,
    #[error("cannot read the request body: {0}")]
    Read(String),
}

/// A request's body as applications receive it: hyper's, drained in the background
/// (within [`UNREAD_DRAIN_BYTES`]) if it is dropped unread.
/// While it is received, its connection counts the request as in flight.
pub struct RequestBody {
    inner: Option<Incoming>,
    done: bool,
    polled: bool,
    /// An HTTP/1.1 client waiting for "100 Continue": until the body is read it has sent
    /// nothing, and reading would invite it.
    awaits_continue: bool,
    receiving: Option<RequestGuard>,
}

impl RequestBody {
    pub(super) fn new(req: Request<Incoming>, activity: &Activity) -> Request<RequestBody> {
        let awaits_continue = expects_continue(&req);
        req.map(|body| {
            let receiving = (!body.is_end_stream()).then(|| activity.hold());
            RequestBody {
                inner: Some(body),
                done: false,
                polled: false,
                awaits_continue,
                receiving,
            }
        })
    }
}

/// Whether an HTTP/1.1 request waits for "100 Continue" before it sends its body.
fn expects_continue<B>(req: &Request<B>) -> bool {
    req.version() < Version::HTTP_2
        && req
            .headers()
            .get(header::EXPECT)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.eq_ignore_ascii_case("100-continue"))
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        let Some(inner) = this.inner.as_mut().filter(|_| !this.done) else {
            return Poll::Ready(None);
        };
        this.polled = true;
        let polled = Pin::new(&mut *inner).poll_frame(cx);
        // Ended by its length as well as by its channel: once a response is written,
        // hyper keeps the channel open until the next request, though all is received.
        if matches!(polled, Poll::Ready(None)) || inner.is_end_stream() {
            this.done = true;
            this.receiving = None;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.done || self.inner.as_ref().is_none_or(Body::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.inner
            .as_ref()
            .map(Body::size_hint)
            .unwrap_or_else(|| SizeHint::with_exact(0))
    }
}

impl Drop for RequestBody {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        if let Some(body) = self.inner.take()
            && !body.is_end_stream()
            && tokio::runtime::Handle::try_current().is_ok()
        {
            // Not invited, or more than is worth reading: held briefly, then closed.
            let invited = self.polled || !self.awaits_continue;
            let drain = invited && body.size_hint().lower() <= UNREAD_DRAIN_BYTES;
            let drain_bytes = if drain { UNREAD_DRAIN_BYTES } else { 0 };
            release(body, drain_bytes, self.receiving.take());
        }
    }
}

pub async fn read_limited(
    req: Request<RequestBody>,
    max: u64,
    timeout: Duration,
) -> Result<Bytes, BodyError> {
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let mut body = req.into_body();
    if declared.is_some_and(|n| n > max) {
        // A client waiting for "100 Continue" has sent nothing and will send nothing:
        // reading would invite the body instead (dropping the body does not read it).
        if body.awaits_continue {
            return Err(BodyError::TooLarge(max));
        }
        let drain = declared.is_some_and(|n| n <= DRAIN_MAX_BYTES);
        discard(body, drain);
        return Err(BodyError::TooLarge(max));
    }
    let mut collected = BytesMut::new();
    let read = async {
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| BodyError::Read(e.to_string()))?;
            if let Ok(data) = frame.into_data() {
                if (collected.len() + data.len()) as u64 > max {
                    return Err(BodyError::TooLarge(max));
                }
                collected.extend_from_slice(&data);
            }
        }
        Ok(())
    };
    let outcome = match tokio::time::timeout(timeout, read).await {
        Err(_) => Err(BodyError::Timeout),
        Ok(result) => result,
    };
    match outcome {
        Ok(()) => Ok(collected.freeze()),
        Err(BodyError::TooLarge(max)) => {
            discard(body, true);
            Err(BodyError::TooLarge(max))
        }
        // A client that trickles would not finish in time anyway: hold, do not read.
        Err(BodyError::Timeout) => {
            discard(body, false);
            Err(BodyError::Timeout)
        }
        Err(e) => Err(e),
    }
}

/// Releases a body the application will not use without losing its answer: reads and
/// discards it (when `drain`, up to [`DRAIN_MAX_BYTES`]) within the bounds above, else
/// holds it briefly. Must be called from within the runtime.
pub fn discard(mut body: RequestBody, drain: bool) {
    if let Some(inner) = body.inner.take() {
        let drain_bytes = if drain { DRAIN_MAX_BYTES } else { 0 };
        release(inner, drain_bytes, body.receiving.take());
    }
}

/// Drains or holds `body` in the background; the request stays in flight on its
/// connection (`receiving`) until then.
fn release(body: Incoming, drain_bytes: u64, receiving: Option<RequestGuard>) {
    tokio::spawn(async move {
        let _receiving = receiving;
        let mut body = body;
        if drain_bytes > 0 {
            let mut seen: u64 = 0;
            let reading = async {
                // Ended by its length too (see `RequestBody::poll_frame`).
                while !body.is_end_stream()
                    && let Some(Ok(frame)) = body.frame().await
                {
                    if let Ok(data) = frame.into_data() {
                        seen += data.len() as u64;
                        if seen > drain_bytes {
                            return false;
                        }
                    }
                }
                true
            };
            if let Ok(true) = tokio::time::timeout(DRAIN_MAX_TIME, reading).await {
                return;
            }
        }
        tokio::time::sleep(RELEASE_GRACE).await;
        drop(body);
    });
}
