//! Prometheus metrics (the contract's names and labels), through the `prometheus` crate.
//!
//! Labels stay bounded: route, upstream and backend come from the configuration, status is
//! the number, `kind`/`result`/`op` are fixed words. Nothing a client sends becomes a label.
//! Counters are updated with the crate's own atomics; gauges of backend state are read from
//! the shared state when `/metrics` is scraped, so the request path does not touch them.

use std::sync::atomic::Ordering;
use std::sync::OnceLock;
use std::time::Duration;

use parking_lot::RwLock;
use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::state::Runtime;

/// The metric children one route's requests update, found once per configuration
/// (the route's labels never change within one).
#[derive(Default)]
pub struct RouteMetrics {
    /// `switchyard_request_duration_seconds{route, upstream}` of the route.
    duration: OnceLock<Histogram>,
    /// `switchyard_requests_total` children by (backend index, status).
    requests: RwLock<Vec<(u32, u16, IntCounter)>>,
}

impl RouteMetrics {
    /// Distinct (backend, status) pairs cached per route; rarer ones are looked up each time.
    const MAX_CACHED: usize = 64;
}

impl std::fmt::Debug for RouteMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RouteMetrics")
            .field("cached", &self.requests.read().len())
            .finish()
    }
}

/// What went wrong talking to a backend (`switchyard_upstream_errors_total{kind}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamErrorKind {
    /// Refused, unreachable, or another connect failure.
    Connect,
    /// Connect or read timeout.
    Timeout,
    /// TLS handshake or certificate verification failed.
    Tls,
    /// The backend broke the HTTP protocol.
    Protocol,
    /// The connection was reset or closed mid-exchange.
    Reset,
}

impl UpstreamErrorKind {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Connect => "connect",
            Self::Timeout => "timeout",
            Self::Tls => "tls",
            Self::Protocol => "protocol",
            Self::Reset => "reset",
        }
    }

    /// Classify a pingora error that came from the upstream side.
    pub fn of(e: &pingora_error::Error) -> Option<Self> {
        use pingora_error::ErrorType::*;
        if *e.esource() != pingora_error::ErrorSource::Upstream {
            return None;
        }
        Some(match e.etype() {
            ConnectTimedout | ReadTimedout | WriteTimedout | TLSHandshakeTimedout => Self::Timeout,
            ConnectRefused | ConnectNoRoute | ConnectError | BindError | SocketError
            | ConnectProxyFailure => Self::Connect,
            TLSHandshakeFailure | InvalidCert | HandshakeError | TLSWantX509Lookup => Self::Tls,
            InvalidHTTPHeader | H1Error | H2Error | InvalidH2 | H2Downgrade => Self::Protocol,
            ReadError | WriteError | ConnectionClosed => Self::Reset,
            _ => return None,
        })
    }
}

/// Every metric the gateway exports.
#[derive(Debug, Clone)]
pub struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    duration: HistogramVec,
    upstream_errors: IntCounterVec,
    retries: IntCounterVec,
    upstream_connections: IntCounterVec,
    backend_healthy: IntGaugeVec,
    backend_active: IntGaugeVec,
    ejections: IntCounterVec,
    affinity: IntCounterVec,
    session_store_errors: IntCounterVec,
    config_reloads: IntCounterVec,
    downstream_connections: IntGaugeVec,
    /// `switchyard_stream_*`: the L4 streams' metrics, in the same registry.
    pub stream: crate::stream::metrics::StreamMetrics,
    /// The GSLB responder's metrics.
    pub gslb: crate::gslb::GslbMetrics,
}

/// Histogram buckets of request duration, in seconds.
const BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

fn counter(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
    r.register(Box::new(c.clone())).expect("registered once");
    c
}

fn gauge(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric");
    r.register(Box::new(g.clone())).expect("registered once");
    g
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A fresh set of metrics in its own registry.
    pub fn new() -> Self {
        let r = Registry::new();
        let duration = HistogramVec::new(
            HistogramOpts::new(
                "switchyard_request_duration_seconds",
                "Time from the request's start to the end of its response.",
            )
            .buckets(BUCKETS.to_vec()),
            &["route", "upstream"],
        )
        .expect("valid metric");
        r.register(Box::new(duration.clone()))
            .expect("registered once");
        let m = Self {
            requests: counter(
                &r,
                "switchyard_requests_total",
                "Requests answered.",
                &["route", "upstream", "backend", "status"],
            ),
            duration,
            upstream_errors: counter(
                &r,
                "switchyard_upstream_errors_total",
                "Failures talking to a backend.",
                &["upstream", "backend", "kind"],
            ),
            retries: counter(
                &r,
                "switchyard_retries_total",
                "Requests retried on another backend.",
                &["upstream"],
            ),
            upstream_connections: counter(
                &r,
                "switchyard_upstream_connections_total",
                "New connections opened to a backend.",
                &["upstream", "backend"],
            ),
            backend_healthy: gauge(
                &r,
                "switchyard_backend_healthy",
                "Whether a backend passes its health checks (0/1).",
                &["upstream", "backend"],
            ),
            backend_active: gauge(
                &r,
                "switchyard_backend_active_requests",
                "Requests in flight to a backend.",
                &["upstream", "backend"],
            ),
            ejections: counter(
                &r,
                "switchyard_ejections_total",
                "Passive-health ejections of a backend.",
                &["upstream", "backend"],
            ),
            affinity: counter(
                &r,
                "switchyard_affinity_total",
                "Sticky-session decisions.",
                &["upstream", "result"],
            ),
            session_store_errors: counter(
                &r,
                "switchyard_session_store_errors_total",
                "Failed session store operations.",
                &["op"],
            ),
            config_reloads: counter(
                &r,
                "switchyard_config_reloads_total",
                "Configuration reloads.",
                &["result"],
            ),
            downstream_connections: gauge(
                &r,
                "switchyard_downstream_connections",
                "Open client connections.",
                &["listener"],
            ),
            stream: crate::stream::metrics::StreamMetrics::new(&r),
            gslb: crate::gslb::GslbMetrics::register(&r),
            registry: r,
        };
        for result in ["ok", "error"] {
            m.config_reloads.with_label_values(&[result]);
        }
        m
    }

    /// Count one answered request.
    pub fn request(
        &self,
        route: &str,
        upstream: &str,
        backend: &str,
        status: u16,
        elapsed: Duration,
    ) {
        let mut buf = itoa::Buffer::new();
        self.requests
            .with_label_values(&[route, upstream, backend, buf.format(status)])
            .inc();
        self.duration
            .with_label_values(&[route, upstream])
            .observe(elapsed.as_secs_f64());
    }

    /// Count one answered request of a route, through the route's cache of metric children:
    /// after the first request of each (backend, status), an update is two atomic adds and
    /// a short scan, instead of hashing four label values and looking them up each time.
    /// `backend` is the backend's index in the route's upstream (`None`: not reached).
    #[allow(clippy::too_many_arguments)]
    pub fn route_request(
        &self,
        cache: &RouteMetrics,
        route: &str,
        upstream: &str,
        backend: Option<usize>,
        backend_label: &str,
        status: u16,
        elapsed: Duration,
    ) {
        let key = backend.map_or(u32::MAX, |b| u32::try_from(b).unwrap_or(u32::MAX - 1));
        let counted = {
            let known = cache.requests.read();
            match known.iter().find(|(b, s, _)| *b == key && *s == status) {
                Some((_, _, counter)) => {
                    counter.inc();
                    true
                }
                None => false,
            }
        };
        if !counted {
            let mut buf = itoa::Buffer::new();
            let counter = self.requests.with_label_values(&[
                route,
                upstream,
                backend_label,
                buf.format(status),
            ]);
            counter.inc();
            let mut known = cache.requests.write();
            if known.len() < RouteMetrics::MAX_CACHED
                && !known.iter().any(|(b, s, _)| *b == key && *s == status)
            {
                known.push((key, status, counter));
            }
        }
        cache
            .duration
            .get_or_init(|| self.duration.with_label_values(&[route, upstream]))
            .observe(elapsed.as_secs_f64());
    }

    /// Count a failure talking to a backend.
    pub fn upstream_error(&self, upstream: &str, backend: &str, kind: UpstreamErrorKind) {
        self.upstream_errors
            .with_label_values(&[upstream, backend, kind.as_str()])
            .inc();
    }

    /// Count a retry.
    pub fn retry(&self, upstream: &str) {
        self.retries.with_label_values(&[upstream]).inc();
    }

    /// Count a new upstream connection.
    pub fn upstream_connection(&self, upstream: &str, backend: &str) {
        self.upstream_connections
            .with_label_values(&[upstream, backend])
            .inc();
    }

    /// Count an ejection.
    pub fn ejection(&self, upstream: &str, backend: &str) {
        self.ejections.with_label_values(&[upstream, backend]).inc();
    }

    /// Count a sticky-session decision (`hit`, `new`, `repinned`, `invalid`).
    pub fn affinity(&self, upstream: &str, result: &str) {
        self.affinity.with_label_values(&[upstream, result]).inc();
    }

    /// Count a failed session store operation.
    pub fn session_store_error(&self, op: &str) {
        self.session_store_errors.with_label_values(&[op]).inc();
    }

    /// Count a configuration reload.
    pub fn config_reload(&self, ok: bool) {
        self.config_reloads
            .with_label_values(&[if ok { "ok" } else { "error" }])
            .inc();
    }

    /// The open-connections gauge of a listener.
    pub fn downstream_connections(&self, listener: &str) -> IntGauge {
        self.downstream_connections.with_label_values(&[listener])
    }

    /// Render every metric in the Prometheus text format, reading backend gauges from
    /// `runtime` first.
    pub fn render(&self, runtime: &Runtime) -> Vec<u8> {
        self.backend_healthy.reset();
        self.backend_active.reset();
        for u in &runtime.upstreams {
            // Series that exist from the start (at 0), so dashboards and alerts see them.
            self.retries.with_label_values(&[u.name.as_str()]);
            for b in &u.backends {
                let labels = [u.name.as_str(), b.addr.as_str()];
                self.upstream_connections.with_label_values(&labels);
                self.ejections.with_label_values(&labels);
                self.backend_healthy
                    .with_label_values(&labels)
                    .set(i64::from(b.state.healthy.load(Ordering::Relaxed)));
                self.backend_active
                    .with_label_values(&labels)
                    .set(i64::from(b.plugin.load.in_flight()));
            }
        }
        self.gslb.refresh(runtime.gslb.as_deref());
        let mut out = Vec::with_capacity(16 * 1024);
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            log::error!("metrics encoding failed: {e}");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cached_route_counts_match_the_labels() {
        let m = Metrics::new();
        let cache = RouteMetrics::default();
        let b0 = "127.0.0.1:9001";
        let b1 = "127.0.0.1:9002";
        let ms = Duration::from_millis(2);
        for _ in 0..3 {
            m.route_request(&cache, "users", "pool", Some(0), b0, 200, ms);
        }
        m.route_request(&cache, "users", "pool", Some(1), b1, 200, ms);
        m.route_request(&cache, "users", "pool", Some(0), b0, 503, ms);
        m.route_request(&cache, "users", "pool", None, "none", 503, ms);
        // The uncached path and the cache update the same children.
        m.request("users", "pool", b0, 200, ms);
        let get = |b: &str, s: &str| m.requests.with_label_values(&["users", "pool", b, s]).get();
        assert_eq!(get(b0, "200"), 4);
        assert_eq!(get(b1, "200"), 1);
        assert_eq!(get(b0, "503"), 1);
        assert_eq!(get("none", "503"), 1);
        assert_eq!(cache.requests.read().len(), 4);
        let hist = m.duration.with_label_values(&["users", "pool"]);
        assert_eq!(hist.get_sample_count(), 7);
    }

    #[test]
    fn counts_show_in_the_text_format() {
        let m = Metrics::new();
        m.request(
            "users",
            "users",
            "127.0.0.1:9001",
            200,
            Duration::from_millis(3),
        );
        m.request(
            "users",
            "users",
            "127.0.0.1:9001",
            200,
            Duration::from_millis(3),
        );
        m.request("none", "none", "none", 404, Duration::from_millis(1));
        m.config_reload(false);
        m.upstream_error("users", "127.0.0.1:9001", UpstreamErrorKind::Connect);
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&m.registry.gather(), &mut out)
            .unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains(
            "switchyard_requests_total{backend=\"127.0.0.1:9001\",route=\"users\",status=\"200\",upstream=\"users\"} 2"
        ), "{text}");
        assert!(text.contains(
            "switchyard_request_duration_seconds_count{route=\"users\",upstream=\"users\"} 2"
        ));
        assert!(text.contains("switchyard_config_reloads_total{result=\"error\"} 1"));
        assert!(text.contains("kind=\"connect\""));
    }

    #[test]
    fn error_kinds() {
        use pingora_error::{Error, ErrorType};
        assert_eq!(
            UpstreamErrorKind::of(&Error::new_up(ErrorType::ConnectRefused)),
            Some(UpstreamErrorKind::Connect)
        );
        assert_eq!(
            UpstreamErrorKind::of(&Error::new_up(ErrorType::ReadTimedout)),
            Some(UpstreamErrorKind::Timeout)
        );
        assert_eq!(
            UpstreamErrorKind::of(&Error::new_up(ErrorType::ConnectionClosed)),
            Some(UpstreamErrorKind::Reset)
        );
        assert_eq!(
            UpstreamErrorKind::of(&Error::new_down(ErrorType::ConnectionClosed)),
            None
        );
    }
}
