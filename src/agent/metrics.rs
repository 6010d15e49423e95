//! `/metrics`: Prometheus text format.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::transport::TransportMetrics;

type Labels = Vec<(String, String)>;

/// Labels of the per-request metrics: no allocation on the request path.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    route: &'static str,
    code: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabel {
    route: &'static str,
}

pub struct AgentMetrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    durations: Family<RouteLabel, Histogram, fn() -> Histogram>,
    pub reloads: Family<Labels, Counter>,
    pub cert_not_after: Family<Labels, Gauge>,
    pub transport: TransportMetrics,
}

fn duration_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0001, 4.0, 10))
}

impl AgentMetrics {
    pub fn new() -> AgentMetrics {
        let mut registry = Registry::default();
        let requests = Family::<RequestLabels, Counter>::default();
        let durations = Family::<RouteLabel, Histogram, fn() -> Histogram>::new_with_constructor(
            duration_histogram,
        );
        let reloads = Family::<Labels, Counter>::default();
        let cert_not_after = Family::<Labels, Gauge>::default();
        let transport = TransportMetrics::default();
        registry.register(
            "applianced_requests",
            "HTTP requests by route and status code",
            requests.clone(),
        );
        registry.register(
            "applianced_request_duration_seconds",
            "Time to answer a request, by route",
            durations.clone(),
        );
        registry.register(
            "applianced_daemon_operations",
            "Starts, reloads and stops of haproxy and stunnel, by result",
            reloads.clone(),
        );
        registry.register(
            "applianced_certificate_not_after_timestamp_seconds",
            "Expiry time of certificates the agent uses",
            cert_not_after.clone(),
        );
        transport.register(&mut registry);
        AgentMetrics {
            registry,
            requests,
            durations,
            reloads,
            cert_not_after,
            transport,
        }
    }

    pub fn observe_request(&self, route: &'static str, code: u16, seconds: f64) {
        self.requests
            .get_or_create(&RequestLabels { route, code })
            .inc();
        self.durations
            .get_or_create(&RouteLabel { route })
            .observe(seconds);
    }

    pub fn set_cert_expiry(&self, name: &str, not_after: i64) {
        self.cert_not_after
            .get_or_create(&vec![("certificate".into(), name.into())])
            .set(not_after);
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        let _ = encode(&mut out, &self.registry);
        out
    }
}

impl Default for AgentMetrics {
    fn default() -> Self {
        Self::new()
    }
}
