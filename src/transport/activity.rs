//! What a connection is doing, for its timeouts: the requests in flight, when the last
//! one ended, and (HTTP/1.1) when the bytes of the next one began to arrive.
//!
//! Two clocks, as a careful HTTP server keeps them apart:
//! - **idle**: no request in flight since the last one ended. At `idle_timeout` the
//!   connection is closed gracefully (a TLS close_notify after hyper's own close), so a
//!   client's pool sees a clean close. Only requests count, not bytes: HTTP/2 keep-alive
//!   PINGs and their ACKs would otherwise keep an idle connection open forever.
//! - **headers** (HTTP/1.1): from the first byte of a request (or from the handshake for
//!   a connection's first request) to its complete header block. At `header_timeout`
//!   the connection is dropped. hyper's own header timer also runs while a keep-alive
//!   connection waits between requests, which would close every idle connection at
//!   `header_timeout`, abruptly and long before `idle_timeout`; so it is only a
//!   backstop here (set to both timeouts added).

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// How an HTTP/2 connection without ALPN begins (prior knowledge).
const HTTP2_PREFACE: &[u8] = b"PRI * HTTP/2.0";

/// Why a connection is to be closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Close {
    /// A request's headers did not arrive in time: dropped.
    HeadersLate,
    /// No request for the idle timeout: closed gracefully.
    Idle,
}

/// A connection's activity, shared by its reader, its requests and its watchdog.
#[derive(Clone)]
pub(super) struct Activity(Arc<State>);

struct State {
    start: Instant,
    http2: AtomicBool,
    read_before: AtomicBool,
    /// A request has begun on this connection.
    served: AtomicBool,
    in_flight: AtomicUsize,
    /// When the last request ended (ms since `start`).
    last_ms: AtomicU64,
    /// 1 + when the bytes of a request not yet begun started to arrive; 0: none.
    pending_ms: AtomicU64,
}

/// What [`decide`] looks at, times in ms since the connection's handshake.
#[derive(Debug, Clone, Copy)]
struct Snapshot {
    http2: bool,
    served: bool,
    in_flight: usize,
    last_ms: u64,
    pending_since: Option<u64>,
}

/// The watchdog's decision at `now` (pure, for tests).
fn decide(s: Snapshot, now: u64, header_ms: u64, idle_ms: u64) -> Option<Close> {
    if s.in_flight > 0 {
        // A slow handler is not an idle client, and its body has its own timeout.
        return None;
    }
    if !s.http2 {
        let since = match s.pending_since {
            Some(t) => Some(t),
            // The first request is due within the header timeout of the handshake.
            None if !s.served => Some(0),
            None => None,
        };
        if since.is_some_and(|t| now.saturating_sub(t) >= header_ms) {
            return Some(Close::HeadersLate);
        }
    }
    (now.saturating_sub(s.last_ms) >= idle_ms).then_some(Close::Idle)
}

impl Activity {
    /// A connection that has just completed its handshake; `http2` when ALPN chose it.
    pub(super) fn new(http2: bool) -> Activity {
        Activity(Arc::new(State {
            start: Instant::now(),
            http2: AtomicBool::new(http2),
            read_before: AtomicBool::new(false),
            served: AtomicBool::new(false),
            in_flight: AtomicUsize::new(0),
            last_ms: AtomicU64::new(0),
            pending_ms: AtomicU64::new(0),
        }))
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.0.start.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// A request's headers are complete; it is in flight until its guards drop (one
    /// for its handler, one for its body while the body is still being received).
    pub(super) fn begin_request(&self) -> RequestGuard {
        let s = &self.0;
        s.served.store(true, Ordering::Relaxed);
        s.pending_ms.store(0, Ordering::Relaxed);
        self.hold()
    }

    /// One more part of the current request in flight.
    pub(super) fn hold(&self) -> RequestGuard {
        self.0.in_flight.fetch_add(1, Ordering::Relaxed);
        RequestGuard(self.clone())
    }

    /// Bytes arrived from the client.
    fn read(&self, bytes: &[u8]) {
        let s = &self.0;
        if !s.read_before.swap(true, Ordering::Relaxed) && bytes.starts_with(HTTP2_PREFACE) {
            s.http2.store(true, Ordering::Relaxed);
        }
        if s.in_flight.load(Ordering::Relaxed) == 0 && s.pending_ms.load(Ordering::Relaxed) == 0 {
            s.pending_ms.store(self.now_ms() + 1, Ordering::Relaxed);
        }
    }

    /// What the connection's watchdog should do now, if anything.
    pub(super) fn due(&self, header_timeout: Duration, idle_timeout: Duration) -> Option<Close> {
        let s = &self.0;
        let pending = s.pending_ms.load(Ordering::Relaxed);
        let snapshot = Snapshot {
            http2: s.http2.load(Ordering::Relaxed),
            served: s.served.load(Ordering::Relaxed),
            in_flight: s.in_flight.load(Ordering::Relaxed),
            last_ms: s.last_ms.load(Ordering::Relaxed),
            pending_since: pending.checked_sub(1),
        };
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        decide(
            snapshot,
            self.now_ms(),
            ms(header_timeout),
            ms(idle_timeout),
        )
    }
}

/// Held while a request's handler runs, and while its body is received.
pub(super) struct RequestGuard(Activity);

impl Drop for RequestGuard {
    fn drop(&mut self) {
        let s = &self.0.0;
        s.last_ms.store(self.0.now_ms(), Ordering::Relaxed);
        s.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A connection's stream, telling its [`Activity`] when bytes arrive.
pub(super) struct Watched<S> {
    inner: S,
    activity: Activity,
}

impl<S> Watched<S> {
    pub(super) fn new(inner: S, activity: Activity) -> Watched<S> {
        Watched { inner, activity }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Watched<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.inner).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            this.activity.read(&buf.filled()[before..]);
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Watched<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEADER: u64 = 1_000;
    const IDLE: u64 = 4_000;

    fn h1() -> Snapshot {
        Snapshot {
            http2: false,
            served: true,
            in_flight: 0,
            last_ms: 10_000,
            pending_since: None,
        }
    }

    #[test]
    fn an_idle_keep_alive_connection_waits_for_the_idle_timeout_not_the_header_one() {
        let s = h1();
        assert_eq!(decide(s, 10_000 + HEADER * 3, HEADER, IDLE), None);
        assert_eq!(decide(s, 10_000 + IDLE, HEADER, IDLE), Some(Close::Idle));
    }

    #[test]
    fn headers_are_due_within_the_header_timeout_of_their_first_byte() {
        let s = Snapshot {
            pending_since: Some(12_000),
            ..h1()
        };
        assert_eq!(decide(s, 12_999, HEADER, IDLE), None);
        assert_eq!(decide(s, 13_000, HEADER, IDLE), Some(Close::HeadersLate));
    }

    #[test]
    fn the_first_request_is_due_within_the_header_timeout_of_the_handshake() {
        let fresh = Snapshot {
            served: false,
            last_ms: 0,
            ..h1()
        };
        assert_eq!(decide(fresh, 999, HEADER, IDLE), None);
        assert_eq!(decide(fresh, 1_000, HEADER, IDLE), Some(Close::HeadersLate));
        // HTTP/2 has no header rule here (hyper's h2 has its own): only idleness.
        let h2 = Snapshot {
            http2: true,
            pending_since: Some(0),
            ..fresh
        };
        assert_eq!(decide(h2, 3_999, HEADER, IDLE), None);
        assert_eq!(decide(h2, 4_000, HEADER, IDLE), Some(Close::Idle));
    }

    #[test]
    fn nothing_is_due_while_a_request_runs() {
        let busy = Snapshot {
            in_flight: 1,
            pending_since: Some(0),
            ..h1()
        };
        assert_eq!(decide(busy, u64::MAX, HEADER, IDLE), None);
    }

    #[test]
    fn bytes_start_the_header_clock_only_between_requests() {
        let a = Activity::new(false);
        a.read(b"GET / HTTP/1.1\r\n");
        let pending = a.0.pending_ms.load(Ordering::Relaxed);
        assert_ne!(pending, 0);
        let guard = a.begin_request();
        assert_eq!(
            a.0.pending_ms.load(Ordering::Relaxed),
            0,
            "headers complete"
        );
        a.read(b"body bytes");
        assert_eq!(
            a.0.pending_ms.load(Ordering::Relaxed),
            0,
            "a body is not a request"
        );
        let body = a.hold();
        drop(guard);
        a.read(b"body bytes after the answer");
        assert_eq!(
            a.0.pending_ms.load(Ordering::Relaxed),
            0,
            "a body still received after its answer is not a request"
        );
        drop(body);
        a.read(b"GET /next");
        assert_ne!(
            a.0.pending_ms.load(Ordering::Relaxed),
            0,
            "the next request"
        );
    }

    #[test]
    fn a_prior_knowledge_http2_preface_is_recognised_on_the_first_read_only() {
        let a = Activity::new(false);
        a.read(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n");
        assert!(a.0.http2.load(Ordering::Relaxed));
        let b = Activity::new(false);
        b.read(b"GET / HTTP/1.1\r\n");
        b.read(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n");
        assert!(!b.0.http2.load(Ordering::Relaxed));
    }
}
