//! The HTTPS server loop: accept with a connection cap, TLS handshake under a timeout,
//! HTTP/1.1 and HTTP/2 with header and idle timeouts, graceful shutdown.
//!
//! Each connection loads the TLS configuration current at accept time, so certificate
//! swaps reach new connections at once and never disturb open ones.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tokio_rustls::TlsAcceptor;

use super::activity::{Activity, Close, Watched};
use super::body::RequestBody;
use super::tls::{ClientIdentity, TlsMaterial, handshake_failure_reason};

/// What the application learns about the connection a request came on.
#[derive(Debug)]
pub struct ConnInfo {
    pub peer: SocketAddr,
    /// The verified client certificate's identity; `None` only on listeners that do not
    /// ask for one.
    pub identity: Option<ClientIdentity>,
}

/// The application behind the transport.
pub trait App: Send + Sync + 'static {
    fn handle(
        self: Arc<Self>,
        req: Request<RequestBody>,
        conn: Arc<ConnInfo>,
    ) -> impl Future<Output = Response<Full<Bytes>>> + Send;
}

/// Connection-level limits.
#[derive(Debug, Clone)]
pub struct ServerLimits {
    pub handshake_timeout: Duration,
    pub header_timeout: Duration,
    pub idle_timeout: Duration,
    pub shutdown_timeout: Duration,
    pub max_connections: usize,
    pub max_header_bytes: usize,
}

impl Default for ServerLimits {
    /// What both roles use unless configured otherwise.
    fn default() -> Self {
        ServerLimits {
            handshake_timeout: Duration::from_secs(10),
            header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            shutdown_timeout: Duration::from_secs(30),
            max_connections: 1024,
            max_header_bytes: 16 * 1024,
        }
    }
}

/// Counters the transport keeps.
#[derive(Clone, Default)]
pub struct TransportMetrics {
    pub handshake_failures: Family<Vec<(String, String)>, Counter>,
    pub connections_refused: Counter,
    pub connections_active: Gauge,
    pub connections_total: Counter,
    pub accept_failures: Counter,
}

impl TransportMetrics {
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "applianced_tls_handshake_failures",
            "TLS handshakes that failed, by reason",
            self.handshake_failures.clone(),
        );
        registry.register(
            "applianced_connections_refused",
            "Connections closed at once because max_connections was reached",
            self.connections_refused.clone(),
        );
        registry.register(
            "applianced_connections_active",
            "Connections currently open",
            self.connections_active.clone(),
        );
        registry.register(
            "applianced_connections",
            "Connections that completed the TLS handshake",
            self.connections_total.clone(),
        );
        registry.register(
            "applianced_accept_failures",
            "accept() calls that failed (out of descriptors: EMFILE, ENFILE), each followed by a back-off",
            self.accept_failures.clone(),
        );
    }
}

/// A running server; `shutdown` stops accepting and drains the connections.
pub struct Server {
    shutdown: watch::Sender<bool>,
    permits: Arc<Semaphore>,
    limits: ServerLimits,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Server {
    /// Serves `app` on every listener until [`Server::shutdown`].
    pub fn start<A: App>(
        listeners: Vec<TcpListener>,
        tls: Arc<ArcSwap<TlsMaterial>>,
        limits: ServerLimits,
        metrics: TransportMetrics,
        app: Arc<A>,
    ) -> Server {
        let mut limits = limits;
        // The soft descriptor limit is raised to the hard one, and the cap clamped to
        // what it allows with a reserve (see `descriptors`).
        limits.max_connections = super::descriptors::clamp_connections(
            limits.max_connections,
            super::descriptors::raise_limit(),
        );
        let (shutdown, _) = watch::channel(false);
        let permits = Arc::new(Semaphore::new(limits.max_connections));
        let http = Arc::new(http_builder(&limits));
        let tasks = listeners
            .into_iter()
            .map(|listener| {
                let ctx = AcceptContext {
                    tls: tls.clone(),
                    limits: limits.clone(),
                    metrics: metrics.clone(),
                    permits: permits.clone(),
                    http: http.clone(),
                    shutdown: shutdown.subscribe(),
                };
                tokio::spawn(accept_loop(listener, ctx, app.clone()))
            })
            .collect();
        Server {
            shutdown,
            permits,
            limits,
            tasks,
        }
    }

    /// Stops accepting, lets in-flight requests finish (up to the shutdown timeout),
    /// then returns. Returns false when connections were still open at the deadline.
    pub async fn shutdown(self) -> bool {
        let _ = self.shutdown.send(true);
        for t in &self.tasks {
            t.abort();
        }
        let all = u32::try_from(self.limits.max_connections).unwrap_or(u32::MAX);
        tokio::time::timeout(self.limits.shutdown_timeout, self.permits.acquire_many(all))
            .await
            .is_ok()
    }
}

fn http_builder(limits: &ServerLimits) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        // A backstop only: the connection's watchdog enforces both (see `activity`).
        .header_read_timeout(limits.header_timeout + limits.idle_timeout)
        .keep_alive(true)
        .max_buf_size(limits.max_header_bytes.max(8192));
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(128)
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX))
        .keep_alive_interval(Some(limits.idle_timeout / 2))
        .keep_alive_timeout(limits.header_timeout);
    builder
}

struct AcceptContext {
    tls: Arc<ArcSwap<TlsMaterial>>,
    limits: ServerLimits,
    metrics: TransportMetrics,
    permits: Arc<Semaphore>,
    http: Arc<auto::Builder<TokioExecutor>>,
    shutdown: watch::Receiver<bool>,
}

async fn accept_loop<A: App>(listener: TcpListener, ctx: AcceptContext, app: Arc<A>) {
    let ctx = Arc::new(ctx);
    let refusals = Throttle::new(WARN_EVERY);
    let failures = Throttle::new(WARN_EVERY);
    let mut backoff = ACCEPT_BACKOFF_MIN;
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(x) => {
                backoff = ACCEPT_BACKOFF_MIN;
                x
            }
            Err(e) => {
                // EMFILE and friends: back off (doubling up to a second) instead of
                // spinning; the pending connection stays in the backlog meanwhile.
                ctx.metrics.accept_failures.inc();
                if let Some(suppressed) = failures.allow() {
                    tracing::warn!(error = %e, suppressed, retry_in_ms = backoff.as_millis() as u64, "accept failed");
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(ACCEPT_BACKOFF_MAX);
                continue;
            }
        };
        let Ok(permit) = ctx.permits.clone().try_acquire_owned() else {
            ctx.metrics.connections_refused.inc();
            if let Some(suppressed) = refusals.allow() {
                tracing::warn!(%peer, limit = ctx.limits.max_connections, suppressed, "connection refused: limits.max_connections reached");
            }
            drop(tcp);
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let ctx = ctx.clone();
        let app = app.clone();
        tokio::spawn(async move {
            ctx.metrics.connections_active.inc();
            serve_connection(tcp, peer, &ctx, app).await;
            ctx.metrics.connections_active.dec();
            drop(permit);
        });
    }
}

/// At most one warning of a kind per this period (the rest are counted in `/metrics`).
const WARN_EVERY: Duration = Duration::from_secs(10);
const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(5);
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);

/// Lets one event through per period and counts the ones it holds back.
struct Throttle {
    period: Duration,
    last: std::sync::Mutex<Option<Instant>>,
    suppressed: AtomicU64,
}

impl Throttle {
    fn new(period: Duration) -> Throttle {
        Throttle {
            period,
            last: std::sync::Mutex::new(None),
            suppressed: AtomicU64::new(0),
        }
    }

    /// `Some(events held back since the last one let through)`, or `None`: stay quiet.
    fn allow(&self) -> Option<u64> {
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        if last.is_some_and(|t| now.duration_since(t) < self.period) {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        *last = Some(now);
        Some(self.suppressed.swap(0, Ordering::Relaxed))
    }
}

async fn serve_connection<A: App>(
    tcp: TcpStream,
    peer: SocketAddr,
    ctx: &AcceptContext,
    app: Arc<A>,
) {
    let (acceptor, client_cert_required) = {
        let material = ctx.tls.load();
        (
            TlsAcceptor::from(material.config.clone()),
            material.requires_client_certificate(),
        )
    };
    let tls = match tokio::time::timeout(ctx.limits.handshake_timeout, acceptor.accept(tcp)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            let reason = handshake_failure_reason(&e);
            record_handshake_failure(ctx, reason);
            tracing::info!(%peer, reason, error = %e, "TLS handshake refused");
            return;
        }
        Err(_) => {
            record_handshake_failure(ctx, "timeout");
            tracing::info!(%peer, "TLS handshake timed out");
            return;
        }
    };
    let identity = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .and_then(ClientIdentity::from_cert);
    if client_cert_required && identity.is_none() {
        // The verifier requires a certificate, so this is unreachable in practice.
        record_handshake_failure(ctx, "no_certificate");
        return;
    }
    ctx.metrics.connections_total.inc();
    let conn = Arc::new(ConnInfo { peer, identity });
    let http2 = tls.get_ref().1.alpn_protocol() == Some(b"h2".as_slice());
    let activity = Activity::new(http2);
    let io = TokioIo::new(Watched::new(tls, activity.clone()));
    let service = {
        let activity = activity.clone();
        hyper::service::service_fn(move |req: Request<Incoming>| {
            let guard = activity.begin_request();
            let req = RequestBody::new(req, &activity);
            let app = app.clone();
            let conn = conn.clone();
            async move {
                let response = app.handle(req, conn).await;
                drop(guard);
                Ok::<_, std::convert::Infallible>(response)
            }
        })
    };
    let connection = ctx.http.serve_connection(io, service);
    tokio::pin!(connection);
    let mut shutdown = ctx.shutdown.clone();
    let (header_timeout, idle_timeout) = (ctx.limits.header_timeout, ctx.limits.idle_timeout);
    let mut tick =
        tokio::time::interval(header_timeout.min(idle_timeout) / 4 + Duration::from_millis(1));
    let mut closing = false;
    // An idle connection asked to close that still has not (a client that does not read
    // what it is sent) is dropped at this deadline.
    let forced = tokio::time::sleep(Duration::from_secs(365 * 86_400));
    tokio::pin!(forced);
    loop {
        tokio::select! {
            result = connection.as_mut() => {
                if let Err(e) = result {
                    tracing::debug!(%peer, error = %e, "connection ended with an error");
                }
                return;
            }
            _ = shutdown.changed(), if !closing => {
                closing = true;
                connection.as_mut().graceful_shutdown();
            }
            _ = tick.tick(), if !closing => match activity.due(header_timeout, idle_timeout) {
                None => {}
                Some(Close::HeadersLate) => {
                    tracing::debug!(%peer, "dropping a connection whose request headers are late");
                    return;
                }
                Some(Close::Idle) => {
                    tracing::debug!(%peer, "closing idle connection");
                    closing = true;
                    connection.as_mut().graceful_shutdown();
                    forced.as_mut().reset(tokio::time::Instant::now() + header_timeout);
                }
            },
            _ = forced.as_mut(), if closing => {
                tracing::debug!(%peer, "dropping a connection that did not close");
                return;
            }
        }
    }
}

fn record_handshake_failure(ctx: &AcceptContext, reason: &str) {
    ctx.metrics
        .handshake_failures
        .get_or_create(&vec![("reason".to_string(), reason.to_string())])
        .inc();
}

/// Binds a listening socket (address reuse on, backlog 1024).
pub fn bind(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

/// READY=1 once every listener is bound, and watchdog pings from the runtime.
/// Waits for SIGTERM or SIGINT. At each SIGHUP meanwhile, runs `on_hup` between
/// systemd's RELOADING and READY notifications.
pub async fn until_terminated<F, Fut>(mut on_hup: F) -> std::io::Result<()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = ()>,
{
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    loop {
        tokio::select! {
            _ = term.recv() => return Ok(()),
            _ = int.recv() => return Ok(()),
            _ = hup.recv() => {
                let _ = sd_notify::notify(&[sd_notify::NotifyState::Reloading]);
                on_hup().await;
                let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
            }
        }
    }
}

pub fn notify_ready() {
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
    if let Some(period) = sd_notify::watchdog_enabled() {
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(period / 2);
            loop {
                tick.tick().await;
                let _ = sd_notify::notify(&[sd_notify::NotifyState::Watchdog]);
            }
        });
    }
}

/// Runs a role's main future on a multi-threaded runtime (`worker_threads` 0: one per
/// CPU) and returns its exit code.
pub fn run_to_exit(worker_threads: usize, main: impl Future<Output = i32>) -> i32 {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if worker_threads > 0 {
        builder.worker_threads(worker_threads);
    }
    // Workers write the log lines they collected whenever they run out of work.
    builder
        .on_thread_park(crate::logging::worker_parks)
        .on_thread_stop(crate::logging::thread_stops);
    match builder.enable_all().build() {
        Ok(runtime) => runtime.block_on(main),
        Err(e) => {
            tracing::error!(error = %e, "cannot start the async runtime");
            crate::exit::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn throttle_lets_one_through_per_period_and_counts_the_rest() {
        let t = Throttle::new(Duration::from_millis(200));
        assert_eq!(t.allow(), Some(0));
        assert_eq!(t.allow(), None);
        assert_eq!(t.allow(), None);
        std::thread::sleep(Duration::from_millis(250));
        assert_eq!(t.allow(), Some(2));
        assert_eq!(t.allow(), None);
    }
}
