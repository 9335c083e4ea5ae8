//! The configuration file's format: serde structs mirroring the TOML, with
//! `deny_unknown_fields` everywhere. Validation and compilation happen in [`super`].

use std::collections::BTreeMap;
use std::net::SocketAddr;

use serde::Deserialize;
use toml::Spanned;

use super::duration::ConfigDuration;

/// `[server]`: process-wide settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerSection {
    /// Worker threads per listener.
    pub threads: usize,
    /// How long a graceful shutdown waits for in-flight requests.
    pub grace_period: ConfigDuration,
    /// A request head larger than this gets 431.
    pub max_header_bytes: usize,
    /// A client that has not sent a whole request head by then is closed.
    pub client_header_timeout: ConfigDuration,
    /// An idle keep-alive client connection is closed after this.
    pub client_idle_timeout: ConfigDuration,
    /// Idle upstream connections kept for reuse.
    pub upstream_keepalive_pool_size: usize,
    /// `"stdout"`, `"off"` or a file path.
    pub access_log: String,
    /// CIDRs whose X-Forwarded-For is believed.
    pub trusted_proxies: Vec<Spanned<String>>,
    /// The gateway's own log level: error, warn, info, debug, trace.
    pub log_level: String,
    /// Where `-d` writes the process id.
    pub pid_file: String,
    /// The socket over which `-u` takes over listening sockets from the running instance.
    pub upgrade_sock: String,
    /// Where `-d` writes the gateway's own log (stderr when absent).
    pub error_log: Option<String>,
    /// Bytes of the read buffer kept per client connection (0: the gateway reads each
    /// request head straight into its own buffer, and an idle connection holds none).
    pub client_read_buffer: usize,
    /// Bytes of the write buffer per client connection (coalesces small writes).
    pub client_write_buffer: usize,
}

impl Default for ServerSection {
    fn default() -> Self {
        Self {
            threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
            grace_period: ConfigDuration(std::time::Duration::from_secs(30)),
            max_header_bytes: 65536,
            client_header_timeout: ConfigDuration(std::time::Duration::from_secs(10)),
            client_idle_timeout: ConfigDuration(std::time::Duration::from_secs(60)),
            upstream_keepalive_pool_size: 128,
            access_log: "stdout".into(),
            trusted_proxies: Vec::new(),
            log_level: "info".into(),
            pid_file: "/tmp/switchyard.pid".into(),
            upgrade_sock: "/tmp/switchyard_upgrade.sock".into(),
            error_log: None,
            client_read_buffer: 0,
            client_write_buffer: 1460,
        }
    }
}

/// `[admin]`: the admin listener.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminSection {
    /// Address of the admin listener (loopback by default).
    pub addr: SocketAddr,
    /// Bearer token required on `/admin/*` when set.
    pub token: Option<String>,
}

impl Default for AdminSection {
    fn default() -> Self {
        Self {
            addr: SocketAddr::from(([127, 0, 0, 1], 9901)),
            token: None,
        }
    }
}

/// `[session_store]`: where sessions and affinity pins live.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SessionStoreSection {
    /// `"memory"` or `"redis"`.
    pub kind: Spanned<SessionStoreKind>,
    /// Single Redis URL.
    pub url: Option<String>,
    /// Redis Cluster node URLs.
    pub nodes: Option<Vec<String>>,
    /// Per-operation timeout.
    pub timeout: Option<ConfigDuration>,
    /// Prefix of every key.
    pub key_prefix: Option<String>,
    /// Most entries the memory store keeps.
    pub max_entries: Option<usize>,
}

impl Default for SessionStoreSection {
    fn default() -> Self {
        Self {
            kind: Spanned::new(0..0, SessionStoreKind::Memory),
            url: None,
            nodes: None,
            timeout: None,
            key_prefix: None,
            max_entries: None,
        }
    }
}

/// The session store implementations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SessionStoreKind {
    /// In process, the embedded default.
    Memory,
    /// Redis, single node or cluster.
    Redis,
}

/// `tls = { cert, key }` on a listener.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerTls {
    /// PEM certificate chain.
    pub cert: String,
    /// PEM private key.
    pub key: String,
}

/// One `sni` entry on a TLS listener.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SniEntry {
    /// The server name.
    pub name: String,
    /// PEM certificate chain.
    pub cert: String,
    /// PEM private key.
    pub key: String,
}

/// One `[[listener]]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerSection {
    /// Unique name routes refer to.
    pub name: Spanned<String>,
    /// Address to listen on.
    pub addr: Spanned<SocketAddr>,
    /// TLS termination.
    pub tls: Option<Spanned<ListenerTls>>,
    /// More certificates chosen by SNI.
    #[serde(default)]
    pub sni: Vec<SniEntry>,
    /// On a plain listener: 308 to the TLS listener.
    #[serde(default)]
    pub redirect_https: bool,
}

/// One `[[route]]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteSection {
    /// Unique name, used in logs and metrics.
    pub name: Spanned<String>,
    /// Listeners this route applies to (default: all).
    pub listeners: Option<Vec<Spanned<String>>>,
    /// Host to match (exact or `*.` wildcard).
    pub host: Option<Spanned<String>>,
    /// Exact path.
    pub path: Option<Spanned<String>>,
    /// Path prefix on segment boundaries.
    pub path_prefix: Option<Spanned<String>>,
    /// Path regular expression.
    pub path_regex: Option<Spanned<String>>,
    /// Methods to match.
    pub methods: Option<Vec<Spanned<String>>>,
    /// Headers that must be present with these exact values.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Cookies that must be present with these exact values.
    #[serde(default)]
    pub cookies: BTreeMap<String, String>,
    /// Query parameters that must be present with these exact values.
    #[serde(default)]
    pub query: BTreeMap<String, String>,
    /// The upstream the route sends to.
    pub upstream: Spanned<String>,
    /// Remove the matched prefix before forwarding.
    #[serde(default)]
    pub strip_prefix: bool,
    /// Filters run in order.
    #[serde(default)]
    pub filters: Vec<Spanned<toml::Table>>,
}

/// One backend of an upstream.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackendSection {
    /// `host:port`.
    pub addr: Spanned<String>,
    /// Relative weight, at least 1.
    #[serde(default = "one")]
    pub weight: Spanned<u32>,
    /// Tier: 0 (the default) is the first; higher tiers take traffic only as lower ones
    /// fail (see [`crate::upstream`], "Backend tiers").
    #[serde(default)]
    pub priority: u32,
}

fn one() -> Spanned<u32> {
    Spanned::new(0..0, 1)
}

/// `health_check = { ... }`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthCheckSection {
    /// `"http"` (default) or `"tcp"`.
    #[serde(default)]
    pub kind: Option<String>,
    /// Path probed by HTTP checks.
    pub path: Option<String>,
    /// Time between probes.
    pub interval: Option<ConfigDuration>,
    /// Probe timeout.
    pub timeout: Option<ConfigDuration>,
    /// Consecutive failures that mark a backend down.
    pub fails: Option<u32>,
    /// Consecutive successes that mark it up.
    pub passes: Option<u32>,
    /// Host header for HTTP checks.
    pub host: Option<String>,
    /// Expected status range, `"200-399"`.
    pub expect: Option<String>,
}

/// `passive_health = { ... }`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PassiveHealthSection {
    /// Consecutive failures that eject a backend.
    pub consecutive_failures: Option<u32>,
    /// How long an ejection lasts.
    pub eject: Option<ConfigDuration>,
    /// Statuses that count as failures.
    pub statuses: Option<Vec<u16>>,
    /// Largest share of an upstream that may be ejected, percent.
    pub max_ejection_percent: Option<u32>,
}

/// `resource = { ... }` for `resource-based`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResourceSection {
    /// Path of each backend's load report.
    pub path: Option<String>,
    /// Time between polls.
    pub interval: Option<ConfigDuration>,
    /// Reports older than this are ignored.
    pub max_age: Option<ConfigDuration>,
}

/// `affinity = { ... }`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AffinitySection {
    /// `"cookie"` or `"session"`.
    pub kind: String,
    /// Cookie name.
    pub cookie: Option<String>,
    /// Header carrying the session id.
    pub header: Option<String>,
    /// Lifetime of a pin.
    pub ttl: Option<ConfigDuration>,
    /// HMAC key for cookie affinity.
    pub secret: Option<String>,
}

/// `tls = { ... }` on an upstream.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamTls {
    /// Name to send and verify.
    pub sni: Option<String>,
    /// CA bundle to verify against.
    pub ca: Option<String>,
    /// Whether to verify the backend's certificate.
    #[serde(default = "yes")]
    pub verify: bool,
    /// Client certificate for mTLS.
    pub client_cert: Option<String>,
    /// Client key for mTLS.
    pub client_key: Option<String>,
    /// Speak HTTP/2 to the backends.
    #[serde(default)]
    pub h2: bool,
}

fn yes() -> bool {
    true
}

/// One `[[upstream]]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamSection {
    /// Unique name routes refer to.
    pub name: Spanned<String>,
    /// Balancing algorithm name.
    #[serde(default = "default_algorithm")]
    pub algorithm: Spanned<String>,
    /// The backends.
    pub backends: Spanned<Vec<BackendSection>>,
    /// Connect timeout.
    pub connect_timeout: Option<ConfigDuration>,
    /// Timeout between reads of the response.
    pub read_timeout: Option<ConfigDuration>,
    /// Attempts on other backends after a failure.
    pub retries: Option<u32>,
    /// Base of the exponential retry backoff.
    pub retry_backoff: Option<ConfigDuration>,
    /// Active health checks.
    pub health_check: Option<HealthCheckSection>,
    /// Passive health (outlier detection).
    pub passive_health: Option<PassiveHealthSection>,
    /// Slow-start ramp.
    pub slow_start: Option<ConfigDuration>,
    /// Hash key for hash algorithms.
    pub hash_key: Option<Spanned<String>>,
    /// Resource-based polling.
    pub resource: Option<ResourceSection>,
    /// Sticky sessions.
    pub affinity: Option<AffinitySection>,
    /// Re-encryption to backends.
    pub tls: Option<UpstreamTls>,
    /// Free-form settings for a plugin algorithm, handed to its factory as JSON.
    pub options: Option<Spanned<toml::Table>>,
}

fn default_algorithm() -> Spanned<String> {
    Spanned::new(0..0, "round-robin".to_owned())
}

/// The transport of a `[[stream]]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum StreamProtocol {
    /// Whole TCP connections.
    Tcp,
    /// UDP flows (a client address and port).
    Udp,
    /// TCP connections routed by the TLS ClientHello's SNI, never decrypted.
    TlsPassthrough,
}

impl StreamProtocol {
    /// The name as written in the configuration (and in the access log).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Tcp => "tcp",
            Self::Udp => "udp",
            Self::TlsPassthrough => "tls-passthrough",
        }
    }
}

/// A PROXY protocol version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProxyProtocolVersion {
    /// The text header (`PROXY TCP4 ...\r\n`).
    V1,
    /// The binary header.
    V2,
}

/// One `sni_routes` entry of a `tls-passthrough` stream.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SniRouteSection {
    /// An exact server name or `*.suffix`.
    pub sni: Spanned<String>,
    /// The upstream such connections go to.
    pub upstream: Spanned<String>,
}

/// One `[[stream]]`: an L4 listener balancing connections or flows over an upstream.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamSection {
    /// Unique name, used in logs and metrics.
    pub name: Spanned<String>,
    /// Address to listen on.
    pub addr: Spanned<SocketAddr>,
    /// `"tcp"`, `"udp"` or `"tls-passthrough"`.
    pub protocol: Spanned<StreamProtocol>,
    /// The upstream (for tls-passthrough: the default when no `sni_routes` entry matches).
    pub upstream: Option<Spanned<String>>,
    /// tcp: no byte either way for this long closes both sides; udp: the flow is forgotten.
    pub idle_timeout: Option<ConfigDuration>,
    /// PROXY protocol header sent to the backend before any byte.
    pub proxy_protocol: Option<Spanned<ProxyProtocolVersion>>,
    /// Read a PROXY v1/v2 header from clients in `server.trusted_proxies`.
    #[serde(default)]
    pub accept_proxy_protocol: bool,
    /// Past this many open connections (udp: flows) new ones are refused.
    pub max_connections: Option<Spanned<usize>>,
    /// tls-passthrough: the upstream by SNI.
    pub sni_routes: Option<Spanned<Vec<SniRouteSection>>>,
    /// How long a client has to send its ClientHello (tls-passthrough) or PROXY header.
    pub handshake_timeout: Option<ConfigDuration>,
}
/// `[gslb]`: the authoritative DNS responder (see [`crate::gslb`]).
pub type GslbSection = crate::gslb::config::GslbSection;
