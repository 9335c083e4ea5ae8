//! The contract's stream metrics, registered in the gateway's Prometheus registry beside
//! the HTTP ones. Labels come from the configuration (stream, upstream, backend names) and
//! fixed words (`direction`, `kind`): nothing a client sends becomes a label.

use prometheus::{IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};

/// Why a stream connection or flow failed (`switchyard_stream_errors_total{kind}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamErrorKind {
    /// A backend refused the connection, or connecting failed otherwise.
    Connect,
    /// No backend could be picked (none healthy, or no upstream for the SNI).
    NoBackend,
    /// tls-passthrough: not a TLS ClientHello, or one too large.
    Sni,
    /// A connect timeout, or a client that did not send its ClientHello or PROXY header
    /// within `handshake_timeout`.
    Timeout,
    /// A bad PROXY protocol header from a trusted proxy.
    ProxyProtocol,
    /// Refused at accept: `max_connections` reached.
    Limit,
}

impl StreamErrorKind {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Connect => "connect",
            Self::NoBackend => "no_backend",
            Self::Sni => "sni",
            Self::Timeout => "timeout",
            Self::ProxyProtocol => "proxy_protocol",
            Self::Limit => "max_connections",
        }
    }
}

/// `switchyard_stream_*`.
#[derive(Debug, Clone)]
pub struct StreamMetrics {
    connections: IntCounterVec,
    active: IntGaugeVec,
    bytes: IntCounterVec,
    errors: IntCounterVec,
}

/// The children one stream's connections update, looked up once per configuration.
#[derive(Debug, Clone)]
pub struct StreamChildren {
    /// `switchyard_stream_active_connections{stream}`.
    pub active: IntGauge,
    /// `switchyard_stream_bytes_total{stream, direction="in"}`: client to backend.
    pub bytes_in: IntCounter,
    /// `switchyard_stream_bytes_total{stream, direction="out"}`: backend to client.
    pub bytes_out: IntCounter,
}

impl StreamMetrics {
    /// The stream metrics, registered in `registry`.
    pub fn new(registry: &Registry) -> Self {
        let counter = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
            registry
                .register(Box::new(c.clone()))
                .expect("registered once");
            c
        };
        let active = IntGaugeVec::new(
            Opts::new(
                "switchyard_stream_active_connections",
                "Open stream connections (TCP) and flows (UDP).",
            ),
            &["stream"],
        )
        .expect("valid metric");
        registry
            .register(Box::new(active.clone()))
            .expect("registered once");
        Self {
            connections: counter(
                "switchyard_stream_connections_total",
                "Stream TCP connections and UDP flows accepted.",
                &["stream", "upstream", "backend"],
            ),
            active,
            bytes: counter(
                "switchyard_stream_bytes_total",
                "Bytes a stream carried: in = client to backend, out = backend to client.",
                &["stream", "direction"],
            ),
            errors: counter(
                "switchyard_stream_errors_total",
                "Stream connections and flows that failed.",
                &["stream", "kind"],
            ),
        }
    }

    /// The children of stream `stream` (the series exist from then on, at 0).
    pub fn children(&self, stream: &str) -> StreamChildren {
        StreamChildren {
            active: self.active.with_label_values(&[stream]),
            bytes_in: self.bytes.with_label_values(&[stream, "in"]),
            bytes_out: self.bytes.with_label_values(&[stream, "out"]),
        }
    }

    /// Count one accepted connection or flow, by where it went (`"none"` when nowhere).
    pub fn connection(&self, stream: &str, upstream: &str, backend: &str) {
        self.connections
            .with_label_values(&[stream, upstream, backend])
            .inc();
    }

    /// Count one failure.
    pub fn error(&self, stream: &str, kind: StreamErrorKind) {
        self.errors
            .with_label_values(&[stream, kind.as_str()])
            .inc();
    }

    /// The count of `switchyard_stream_errors_total{stream, kind}` (for tests).
    pub fn errors_of(&self, stream: &str, kind: StreamErrorKind) -> u64 {
        self.errors
            .with_label_values(&[stream, kind.as_str()])
            .get()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus::{Encoder, TextEncoder};

    #[test]
    fn series_render_with_their_labels() {
        let r = Registry::new();
        let m = StreamMetrics::new(&r);
        let c = m.children("pg");
        c.bytes_in.inc_by(5);
        c.active.inc();
        m.connection("pg", "db", "127.0.0.1:5432");
        m.error("pg", StreamErrorKind::Sni);
        let mut out = Vec::new();
        TextEncoder::new().encode(&r.gather(), &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        for line in [
            "switchyard_stream_bytes_total{direction=\"in\",stream=\"pg\"} 5",
            "switchyard_stream_bytes_total{direction=\"out\",stream=\"pg\"} 0",
            "switchyard_stream_active_connections{stream=\"pg\"} 1",
            "switchyard_stream_connections_total{backend=\"127.0.0.1:5432\",stream=\"pg\",upstream=\"db\"} 1",
            "switchyard_stream_errors_total{kind=\"sni\",stream=\"pg\"} 1",
        ] {
            assert!(text.contains(line), "{line} missing in\n{text}");
        }
        assert_eq!(m.errors_of("pg", StreamErrorKind::Sni), 1);
    }
}
