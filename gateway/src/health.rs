//! Backend health: active checks, passive health (outlier detection) and slow start.
//!
//! # Active checks (`health_check`)
//!
//! [`HealthService`] is a pingora background service. It keeps one probe task per
//! (upstream, backend) of the configuration in force and follows reloads: every
//! [`MAINTENANCE_TICK`] it looks at `shared.runtime` and, when the runtime changed, starts
//! probes for new (upstream, backend, check) combinations and stops the ones that went away.
//! Probes are a plain tokio `TcpStream`: `kind = "tcp"` only connects; `kind = "http"` (the
//! default) sends `GET path HTTP/1.1` with `Connection: close` and reads the status line,
//! which must be within `expect` (default `200-399`). The whole probe is bounded by
//! `timeout`. Each backend's first probe comes at a random offset within `interval`, later
//! ones `interval` ± 10 % after the previous one started, so hundreds of backends are not
//! probed in the same instant. A backend goes down after `fails` consecutive failed probes
//! and comes back after `passes` consecutive successful ones; every backend starts healthy.
//! When an upstream's `health_check` is removed by a reload, its backends are marked healthy.
//! Upstreams with `tls` are probed over TLS with the same settings as their requests.
//!
//! # Passive health (`passive_health`)
//!
//! The proxy reports how each request to a backend ended
//! ([`UpstreamRuntime::record_outcome`]). Connect errors, resets and timeouts always count
//! as failures, responses when their status is in `statuses` (default 502, 503, 504); any
//! other response resets the count. After `consecutive_failures` (default 5) failures in a
//! row the backend is ejected for `eject` (default 30 s). Each repeated ejection doubles the
//! time, up to [`PassivePolicy::max_eject`]: ten times `eject`, but no more than 5 minutes
//! unless `eject` itself is longer. The ejection count decays by one for every
//! [`PassivePolicy::decay_period`] (twice `eject`) the backend has stayed un-ejected. At
//! most `max_ejection_percent` (default 50) of an upstream's backends, rounded down, are
//! ejected at once: an upstream of one backend never ejects it. Passive health is off when
//! the upstream has no `passive_health` table.
//!
//! # Eligibility and panic mode
//!
//! A backend may be picked when it is healthy, not draining and not ejected; the check is a
//! few relaxed atomic loads (the clock is read only for a backend that is ejected). When
//! no backend is eligible only because of ejections, the upstream ignores ejections (panic
//! mode) rather than failing; when no backend is healthy and not draining the pick fails
//! and the proxy answers 503, as the contract says ("no healthy backend: 503"). Entering
//! and leaving either state is logged once per transition.
//!
//! # Slow start (`slow_start`)
//!
//! A backend that turns healthy again (active checks), returns from an ejection, is added
//! by a reload (not at process start: backends then start at full weight) or is re-enabled
//! after a drain ramps linearly from 1/10 of its weight to full over `slow_start`. The ramp
//! start is a timestamp in the backend's state; the effective weight
//! ([`BackendLoad::set_weight_permille`]) is recomputed by the health service every
//! [`MAINTENANCE_TICK`] while a ramp runs, so the request path never reads the clock for it.
//! Algorithms that weigh backends by their effective weight (`weighted-least-connections`,
//! `random`, `power-of-two-choices`, `least-response-time`, `resource-based`, and plugins)
//! honour it themselves. For the algorithms that do not read weights,
//! [`UpstreamRuntime::pick`] applies it: for `round-robin` and `weighted-round-robin` (a
//! precomputed cycle) a picked backend in its ramp is kept with probability
//! `permille / 1000` and otherwise the balancer picks again (its cursor moves on, so the
//! proportions are exact); for `least-connections` a backend in its ramp takes part in a
//! pick with that probability. The hash algorithms (`ip-hash`, `consistent-hash`) are left
//! alone: skipping would move keys between backends.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, LazyLock, OnceLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pingora_core::connectors::TransportConnector;
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::{
    background_service, BackgroundService, GenBackgroundService,
};
use pingora_core::upstreams::peer::{HttpPeer, Scheme};
use pingora_error::{Error, ErrorSource, ErrorType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::AbortHandle;

use crate::config::{HealthCheckSection, PassiveHealthSection, UpstreamSection};
use crate::state::{Runtime, Shared};
use crate::upstream::{BackendState, UpstreamRuntime};
use switchyard_plugin::BackendLoad;

/// How often the health service looks for a new configuration, ends ejections and moves
/// slow-start ramps on.
pub const MAINTENANCE_TICK: Duration = Duration::from_millis(250);

/// Call `on_tick` every [`MAINTENANCE_TICK`] with the current runtime and whether it is a
/// different one than at the previous tick (true the first time), until `shutdown` turns
/// true or its sender goes away. The loop of the gateway's background services.
pub async fn every_tick_until_shutdown(
    shared: &Shared,
    mut shutdown: ShutdownWatch,
    mut on_tick: impl FnMut(&Arc<Runtime>, bool),
) {
    let mut seen: Option<Arc<Runtime>> = None;
    let mut ticker = tokio::time::interval(MAINTENANCE_TICK);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            changed = shutdown.changed() => {
                if changed.is_err() || *shutdown.borrow() {
                    break;
                }
            }
            _ = ticker.tick() => {}
        }
        let runtime = shared.runtime.load_full();
        let changed = seen.as_ref().is_none_or(|s| !Arc::ptr_eq(s, &runtime));
        on_tick(&runtime, changed);
        if changed {
            seen = Some(runtime);
        }
    }
}

/// The process-wide origin of the timestamps kept in backend state atomics.
pub(crate) fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// `at` as nanoseconds since [`epoch`] plus one, so that 0 can mean "never". Instants before
/// the epoch saturate to it.
pub(crate) fn tick(at: Instant) -> u64 {
    let ns = at.saturating_duration_since(epoch()).as_nanos();
    u64::try_from(ns).unwrap_or(u64::MAX - 1) + 1
}

/// The inverse of [`tick`]; `None` for 0.
pub(crate) fn from_tick(t: u64) -> Option<Instant> {
    t.checked_sub(1)
        .map(|ns| epoch() + Duration::from_nanos(ns))
}

/// What an active check does.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum CheckKind {
    /// `GET path` over HTTP/1.1; healthy when the status is within `expect`.
    Http {
        /// The request path (and query).
        path: String,
        /// The `Host` header; the backend's address when absent.
        host: Option<String>,
        /// Lowest healthy status.
        expect_min: u16,
        /// Highest healthy status.
        expect_max: u16,
    },
    /// A TCP connect; healthy when it succeeds.
    Tcp,
}

/// An upstream's active health check, with its defaults applied.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HealthCheck {
    /// What a probe does.
    pub kind: CheckKind,
    /// Time between two probes of a backend (default 5 s).
    pub interval: Duration,
    /// Bound on one whole probe (default 1 s).
    pub timeout: Duration,
    /// Consecutive failures that mark a backend down (default 3).
    pub fails: u32,
    /// Consecutive successes that mark it up again (default 2).
    pub passes: u32,
}

/// Parse an `expect` status range: `"200-399"` or a single status `"204"`.
pub fn parse_expect(text: &str) -> Result<(u16, u16), String> {
    let bad = || {
        format!(
            "health_check.expect `{text}`: expected a status range like \"200-399\" or one status like \"204\""
        )
    };
    let (lo, hi) = match text.split_once('-') {
        Some((a, b)) => (a.trim(), b.trim()),
        None => (text.trim(), text.trim()),
    };
    let lo: u16 = lo.parse().map_err(|_| bad())?;
    let hi: u16 = hi.parse().map_err(|_| bad())?;
    if !(100..=599).contains(&lo) || !(100..=599).contains(&hi) || lo > hi {
        return Err(bad());
    }
    Ok((lo, hi))
}

fn header_safe(s: &str) -> bool {
    !s.bytes().any(|b| b.is_ascii_control() || b == b' ')
}

impl HealthCheck {
    /// The check a `health_check` table describes. `tls` upstreams get a TCP check (an HTTP
    /// probe in clear text would fail against a TLS backend).
    pub fn from_section(s: &HealthCheckSection, tls: bool) -> Result<Self, String> {
        let interval = s.interval.map_or(Duration::from_secs(5), |d| d.get());
        let timeout = s.timeout.map_or(Duration::from_secs(1), |d| d.get());
        if interval.is_zero() {
            return Err("health_check.interval must be more than 0".into());
        }
        if timeout.is_zero() {
            return Err("health_check.timeout must be more than 0".into());
        }
        let fails = s.fails.unwrap_or(3);
        let passes = s.passes.unwrap_or(2);
        if fails == 0 {
            return Err("health_check.fails must be at least 1".into());
        }
        if passes == 0 {
            return Err("health_check.passes must be at least 1".into());
        }
        let kind = match s.kind.as_deref().unwrap_or("http") {
            "tcp" => CheckKind::Tcp,
            "http" => {
                let path = s.path.clone().unwrap_or_else(|| "/health".to_owned());
                if !path.starts_with('/') || !header_safe(&path) {
                    return Err(format!(
                        "health_check.path `{path}`: expected a path starting with '/', without spaces"
                    ));
                }
                if let Some(h) = &s.host {
                    if h.is_empty() || !header_safe(h) {
                        return Err(format!("health_check.host `{h}`: expected a host name"));
                    }
                }
                let (expect_min, expect_max) =
                    parse_expect(s.expect.as_deref().unwrap_or("200-399"))?;
                if tls {
                    CheckKind::Tcp
                } else {
                    CheckKind::Http {
                        path,
                        host: s.host.clone(),
                        expect_min,
                        expect_max,
                    }
                }
            }
            other => {
                return Err(format!(
                    "health_check.kind `{other}`: expected \"http\" or \"tcp\""
                ))
            }
        };
        Ok(Self {
            kind,
            interval,
            timeout,
            fails,
            passes,
        })
    }
}

/// A set of HTTP statuses (100..=639), one bit each.
#[derive(Debug, Clone, PartialEq, Eq)]
struct StatusSet([u64; 10]);

impl StatusSet {
    fn new(statuses: &[u16]) -> Self {
        let mut bits = [0u64; 10];
        for &s in statuses {
            if let Some(word) = bits.get_mut(usize::from(s / 64)) {
                *word |= 1 << (s % 64);
            }
        }
        Self(bits)
    }

    fn contains(&self, status: u16) -> bool {
        self.0
            .get(usize::from(status / 64))
            .is_some_and(|w| w & (1 << (status % 64)) != 0)
    }
}

/// An upstream's passive health policy, with its defaults applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PassivePolicy {
    /// Consecutive failures that eject a backend (default 5).
    pub consecutive_failures: u32,
    /// The first ejection's length (default 30 s).
    pub eject: Duration,
    /// Largest share of an upstream's backends ejected at once, percent (default 50).
    pub max_ejection_percent: u32,
    statuses: StatusSet,
}

impl Default for PassivePolicy {
    fn default() -> Self {
        Self {
            consecutive_failures: 5,
            eject: Duration::from_secs(30),
            max_ejection_percent: 50,
            statuses: StatusSet::new(&[502, 503, 504]),
        }
    }
}

impl PassivePolicy {
    /// The policy a `passive_health` table describes.
    pub fn from_section(s: &PassiveHealthSection) -> Result<Self, String> {
        let d = Self::default();
        let consecutive_failures = s.consecutive_failures.unwrap_or(d.consecutive_failures);
        if consecutive_failures == 0 {
            return Err("passive_health.consecutive_failures must be at least 1".into());
        }
        let eject = s.eject.map_or(d.eject, |e| e.get());
        if eject.is_zero() {
            return Err("passive_health.eject must be more than 0".into());
        }
        let max_ejection_percent = s.max_ejection_percent.unwrap_or(d.max_ejection_percent);
        if max_ejection_percent > 100 {
            return Err(format!(
                "passive_health.max_ejection_percent {max_ejection_percent}: expected 0 to 100"
            ));
        }
        let statuses = match &s.statuses {
            Some(list) => {
                if let Some(bad) = list.iter().find(|s| !(100..=599).contains(*s)) {
                    return Err(format!(
                        "passive_health.statuses: {bad} is not an HTTP status (100 to 599)"
                    ));
                }
                StatusSet::new(list)
            }
            None => d.statuses,
        };
        Ok(Self {
            consecutive_failures,
            eject,
            max_ejection_percent,
            statuses,
        })
    }

    /// Whether a response with this status counts as a failure.
    pub fn counts_status(&self, status: u16) -> bool {
        self.statuses.contains(status)
    }

    /// The longest ejection: ten times `eject`, at most 5 minutes unless `eject` is longer.
    pub fn max_eject(&self) -> Duration {
        (self.eject * 10).min(self.eject.max(Duration::from_secs(300)))
    }

    /// How long ejection number `nth` (1-based, after decay) lasts: `eject` doubled for each
    /// earlier one, capped at [`max_eject`](Self::max_eject).
    pub fn ejection_duration(&self, nth: u32) -> Duration {
        let doublings = nth.saturating_sub(1).min(20);
        self.eject
            .saturating_mul(1u32 << doublings)
            .min(self.max_eject())
    }

    /// Un-ejected time after which the ejection count drops by one: twice `eject`.
    pub fn decay_period(&self) -> Duration {
        self.eject * 2
    }

    /// How many of `backends` may be ejected at once.
    pub fn max_ejected(&self, backends: usize) -> usize {
        backends.saturating_mul(self.max_ejection_percent as usize) / 100
    }
}

/// How one request to a backend ended, for passive health.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PassiveOutcome {
    /// The backend answered with this status.
    Status(u16),
    /// A connect error, reset, timeout, TLS or protocol failure: always a failure.
    Failure,
}

impl PassiveOutcome {
    /// Whether `e` happened while connecting (these reach `fail_to_connect`, which records
    /// them, once per attempt).
    pub fn is_connect_error(e: &Error) -> bool {
        use ErrorType::*;
        matches!(
            e.etype(),
            ConnectTimedout
                | ConnectRefused
                | ConnectNoRoute
                | ConnectError
                | ConnectProxyFailure
                | BindError
                | SocketError
                | TLSHandshakeFailure
                | TLSHandshakeTimedout
                | TLSWantX509Lookup
                | InvalidCert
                | HandshakeError
        )
    }

    /// The outcome to record at the end of a request (`logging`): an upstream-side error
    /// other than a connect error is a [`Failure`](Self::Failure) (connect errors are recorded
    /// by `fail_to_connect`); otherwise the backend's response status, when one arrived;
    /// `None` when there is nothing to say about the backend (the client went away first, or
    /// the gateway answered by itself).
    pub fn of_request(error: Option<&Error>, upstream_status: Option<u16>) -> Option<Self> {
        if let Some(e) = error {
            if *e.esource() == ErrorSource::Upstream
                && !matches!(e.etype(), ErrorType::HTTPStatus(_))
            {
                return (!Self::is_connect_error(e)).then_some(Self::Failure);
            }
        }
        upstream_status.map(Self::Status)
    }
}

/// The effective weight, in permille, `elapsed` into a slow-start ramp of length `ramp`:
/// linear from 100 (1/10) to 1000.
pub fn ramp_permille(elapsed: Duration, ramp: Duration) -> u32 {
    if ramp.is_zero() || elapsed >= ramp {
        return 1000;
    }
    let f = elapsed.as_secs_f64() / ramp.as_secs_f64();
    (100.0 + 900.0 * f).clamp(100.0, 1000.0) as u32
}

/// Every problem with an upstream's `health_check`, `passive_health` and `slow_start`, for
/// the configuration check (`-t`) to report with the upstream's position.
pub fn validate(section: &UpstreamSection) -> Vec<String> {
    let mut errors = Vec::new();
    if let Some(hc) = &section.health_check {
        if let Err(e) = HealthCheck::from_section(hc, false) {
            errors.push(e);
        }
    }
    if let Some(p) = &section.passive_health {
        if let Err(e) = PassivePolicy::from_section(p) {
            errors.push(e);
        }
    }
    errors
}

/// Why a probe failed.
pub type ProbeError = String;

/// Probe a backend once, bounded by the check's timeout.
pub async fn probe(check: &HealthCheck, socket: SocketAddr, host: &str) -> Result<(), ProbeError> {
    probe_peer(check, socket, host, None).await
}

/// Probe a backend once, over TLS with `tls_peer`'s settings when it is given.
pub async fn probe_peer(
    check: &HealthCheck,
    socket: SocketAddr,
    host: &str,
    tls_peer: Option<&HttpPeer>,
) -> Result<(), ProbeError> {
    let probe = async {
        match tls_peer {
            Some(peer) => {
                // pingora's connector: the handshake verifies exactly as requests do.
                static CONNECTOR: LazyLock<TransportConnector> =
                    LazyLock::new(|| TransportConnector::new(None));
                let stream = CONNECTOR
                    .new_stream(peer)
                    .await
                    .map_err(|e| format!("TLS connect: {e}"))?;
                probe_http(check, stream, host).await
            }
            None => {
                let stream = TcpStream::connect(socket)
                    .await
                    .map_err(|e| format!("connect: {e}"))?;
                stream.set_nodelay(true).ok();
                probe_http(check, stream, host).await
            }
        }
    };
    match tokio::time::timeout(check.timeout, probe).await {
        Ok(r) => r,
        Err(_) => Err(format!("no answer within {:?}", check.timeout)),
    }
}

async fn probe_http<S>(
    check: &HealthCheck,
    mut stream: S,
    default_host: &str,
) -> Result<(), ProbeError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let CheckKind::Http {
        path,
        host,
        expect_min,
        expect_max,
    } = &check.kind
    else {
        return Ok(());
    };
    let host = host.as_deref().unwrap_or(default_host);
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nUser-Agent: switchyard-health\r\nAccept: */*\r\n\r\n"
    );
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| format!("send: {e}"))?;
    let mut buf = [0u8; 256];
    let mut len = 0;
    loop {
        if let Some(status) = parse_status_line(&buf[..len]) {
            let status = status?;
            return if (*expect_min..=*expect_max).contains(&status) {
                Ok(())
            } else {
                Err(format!(
                    "status {status}, expected {expect_min}-{expect_max}"
                ))
            };
        }
        if len == buf.len() {
            return Err("status line too long".into());
        }
        let n = stream
            .read(&mut buf[len..])
            .await
            .map_err(|e| format!("read: {e}"))?;
        if n == 0 {
            return Err("connection closed before a status line".into());
        }
        len += n;
    }
}

/// The status of a complete HTTP/1.x status line at the start of `buf`; `None` while the
/// line is incomplete.
fn parse_status_line(buf: &[u8]) -> Option<Result<u16, ProbeError>> {
    let end = buf.iter().position(|&b| b == b'\n')?;
    let line = String::from_utf8_lossy(&buf[..end]);
    let mut parts = line.trim_end_matches('\r').splitn(3, ' ');
    let version = parts.next().unwrap_or("");
    let code = parts.next().unwrap_or("");
    Some(match code.parse::<u16>() {
        Ok(s) if version.starts_with("HTTP/1.") && code.len() == 3 => Ok(s),
        _ => Err(format!(
            "not an HTTP/1.x status line: {:?}",
            truncate(&line, 64)
        )),
    })
}

fn truncate(s: &str, max: usize) -> &str {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// One backend to probe, with everything the probe task needs.
#[derive(Debug)]
pub struct ProbeTarget {
    /// Upstream name.
    pub upstream: String,
    /// Backend address as configured (and the default `Host`).
    pub addr: String,
    /// Where to connect.
    pub socket: SocketAddr,
    /// The check.
    pub check: HealthCheck,
    /// The upstream's slow start, for a backend that turns healthy.
    pub slow_start: Option<Duration>,
    /// The backend's shared state.
    pub state: Arc<BackendState>,
    /// The backend's shared load record (its effective weight).
    pub load: Arc<BackendLoad>,
    /// For `tls` upstreams: the backend's peer, so probes use the same TLS settings
    /// (CA, name, client certificate) as requests.
    pub tls_peer: Option<HttpPeer>,
}

type ProbeFuture = Pin<Box<dyn Future<Output = Result<(), ProbeError>> + Send>>;
type ProbeFn = Arc<dyn Fn(Arc<ProbeTarget>) -> ProbeFuture + Send + Sync>;

fn real_probe() -> ProbeFn {
    Arc::new(|t: Arc<ProbeTarget>| {
        Box::pin(async move { probe_peer(&t.check, t.socket, &t.addr, t.tls_peer.as_ref()).await })
            as ProbeFuture
    })
}

/// `d` scaled by a random factor in `[lo, hi)`.
fn jittered(d: Duration, lo: f64, hi: f64) -> Duration {
    d.mul_f64(lo + (hi - lo) * rand::random::<f64>())
}

/// Probe one backend for ever: first at a random offset within the interval, then every
/// interval ± 10 %, counting results into its state.
async fn probe_loop(target: Arc<ProbeTarget>, probe: ProbeFn) {
    let interval = target.check.interval;
    tokio::time::sleep(jittered(interval, 0.0, 1.0)).await;
    loop {
        let started = tokio::time::Instant::now();
        let result = probe(target.clone()).await;
        let now = tokio::time::Instant::now().into_std();
        if let Err(why) = &result {
            log::debug!(
                "health check of {} in upstream {} failed: {why}",
                target.addr,
                target.upstream
            );
        }
        match target.state.record_probe(result.is_ok(), &target.check) {
            Some(true) => {
                log::info!(
                    "upstream {}: backend {} is healthy again after {} passing checks",
                    target.upstream,
                    target.addr,
                    target.check.passes
                );
                target
                    .state
                    .start_ramp(&target.load, target.slow_start, now);
            }
            Some(false) => log::warn!(
                "upstream {}: backend {} is unhealthy after {} failed checks (last: {})",
                target.upstream,
                target.addr,
                target.check.fails,
                result.err().unwrap_or_default()
            ),
            None => {}
        }
        tokio::time::sleep_until(started + jittered(interval, 0.9, 1.1)).await;
    }
}

/// Identity of a probe task: a changed check restarts it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct ProbeKey {
    upstream: String,
    addr: String,
    socket: SocketAddr,
    check: HealthCheck,
}

/// The running probe tasks.
#[derive(Default)]
struct Probes {
    tasks: std::collections::HashMap<ProbeKey, AbortHandle>,
}

impl Probes {
    /// Start and stop probe tasks to match `upstreams`.
    fn reconcile(&mut self, upstreams: &[Arc<UpstreamRuntime>], probe: &ProbeFn) {
        let mut wanted = std::collections::HashSet::new();
        for u in upstreams {
            let Some(check) = &u.health else {
                // No checks (any more): nothing may keep a backend down.
                for b in &u.backends {
                    if b.state.mark_healthy_unchecked() {
                        log::info!(
                            "upstream {}: backend {} marked healthy (no health_check)",
                            u.name,
                            b.addr
                        );
                    }
                }
                continue;
            };
            for b in &u.backends {
                let key = ProbeKey {
                    upstream: u.name.clone(),
                    addr: b.addr.clone(),
                    socket: b.socket,
                    check: check.clone(),
                };
                if !self.tasks.contains_key(&key) {
                    let target = Arc::new(ProbeTarget {
                        upstream: u.name.clone(),
                        addr: b.addr.clone(),
                        socket: b.socket,
                        check: check.clone(),
                        slow_start: u.slow_start,
                        state: b.state.clone(),
                        load: b.plugin.load.clone(),
                        tls_peer: (b.peer.scheme == Scheme::HTTPS).then(|| b.peer.clone()),
                    });
                    let task = tokio::spawn(probe_loop(target, probe.clone()));
                    self.tasks.insert(key.clone(), task.abort_handle());
                }
                wanted.insert(key);
            }
        }
        self.tasks.retain(|k, task| {
            let keep = wanted.contains(k);
            if !keep {
                task.abort();
            }
            keep
        });
    }

    fn abort_all(&mut self) {
        for (_, t) in self.tasks.drain() {
            t.abort();
        }
    }
}

/// The background service that runs active health checks, ends ejections and moves
/// slow-start ramps on, following configuration reloads.
pub struct HealthService {
    shared: Arc<Shared>,
    probe: ProbeFn,
}

impl std::fmt::Debug for HealthService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HealthService").finish_non_exhaustive()
    }
}

impl HealthService {
    /// The service over the gateway's shared state.
    pub fn new(shared: Arc<Shared>) -> Self {
        Self {
            shared,
            probe: real_probe(),
        }
    }

    /// The service wrapped as a pingora background service, ready for
    /// `server.add_service(...)`.
    pub fn service(shared: Arc<Shared>) -> GenBackgroundService<HealthService> {
        background_service("health checks", Self::new(shared))
    }

    /// Run until `shutdown` turns true (or its sender goes away).
    async fn run(&self, shutdown: ShutdownWatch) {
        let mut probes = Probes::default();
        every_tick_until_shutdown(&self.shared, shutdown, |runtime, changed| {
            if changed {
                probes.reconcile(&runtime.upstreams, &self.probe);
            }
            let now = tokio::time::Instant::now().into_std();
            for u in &runtime.upstreams {
                u.maintain(now);
            }
        })
        .await;
        probes.abort_all();
    }
}

#[async_trait]
impl BackgroundService for HealthService {
    async fn start(&self, shutdown: ShutdownWatch) {
        self.run(shutdown).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::Mutex;

    #[test]
    fn expect_ranges() {
        assert_eq!(parse_expect("200-399"), Ok((200, 399)));
        assert_eq!(parse_expect("204"), Ok((204, 204)));
        assert!(parse_expect("399-200").is_err());
        assert!(parse_expect("2xx").is_err());
        assert!(parse_expect("200-700").is_err());
    }

    #[test]
    fn status_lines() {
        assert_eq!(parse_status_line(b"HTTP/1.1 200 OK\r\n"), Some(Ok(200)));
        assert_eq!(parse_status_line(b"HTTP/1.0 503\r\n"), Some(Ok(503)));
        assert_eq!(parse_status_line(b"HTTP/1.1 20"), None);
        assert!(matches!(parse_status_line(b"SSH-2.0-x\r\n"), Some(Err(_))));
    }

    #[test]
    fn statuses_and_ejection_durations() {
        let p = PassivePolicy::default();
        assert!(p.counts_status(502) && p.counts_status(504));
        assert!(!p.counts_status(500) && !p.counts_status(200));
        assert_eq!(p.ejection_duration(1), Duration::from_secs(30));
        assert_eq!(p.ejection_duration(2), Duration::from_secs(60));
        assert_eq!(p.ejection_duration(4), Duration::from_secs(240));
        assert_eq!(p.ejection_duration(5), Duration::from_secs(300));
        assert_eq!(p.ejection_duration(40), Duration::from_secs(300));
        let short = PassivePolicy {
            eject: Duration::from_secs(1),
            ..PassivePolicy::default()
        };
        assert_eq!(short.max_eject(), Duration::from_secs(10));
        assert_eq!(short.ejection_duration(5), Duration::from_secs(10));
        let long = PassivePolicy {
            eject: Duration::from_secs(600),
            ..PassivePolicy::default()
        };
        assert_eq!(long.ejection_duration(3), Duration::from_secs(600));
        assert_eq!(p.max_ejected(1), 0);
        assert_eq!(p.max_ejected(2), 1);
        assert_eq!(p.max_ejected(5), 2);
    }

    #[test]
    fn outcomes_of_requests() {
        let up = |t| Error::new_up(t);
        assert_eq!(
            PassiveOutcome::of_request(Some(&up(ErrorType::ReadTimedout)), None),
            Some(PassiveOutcome::Failure)
        );
        assert_eq!(
            PassiveOutcome::of_request(Some(&up(ErrorType::ConnectionClosed)), Some(200)),
            Some(PassiveOutcome::Failure)
        );
        // Counted by fail_to_connect.
        assert_eq!(
            PassiveOutcome::of_request(Some(&up(ErrorType::ConnectRefused)), None),
            None
        );
        // The client went away after the response head arrived.
        assert_eq!(
            PassiveOutcome::of_request(Some(&Error::new_down(ErrorType::WriteError)), Some(200)),
            Some(PassiveOutcome::Status(200))
        );
        assert_eq!(
            PassiveOutcome::of_request(None, Some(502)),
            Some(PassiveOutcome::Status(502))
        );
        assert_eq!(PassiveOutcome::of_request(None, None), None);
    }

    #[test]
    fn ramp_is_linear_from_a_tenth() {
        let d = Duration::from_secs(100);
        assert_eq!(ramp_permille(Duration::ZERO, d), 100);
        assert_eq!(ramp_permille(Duration::from_secs(50), d), 550);
        assert_eq!(ramp_permille(Duration::from_secs(100), d), 1000);
        assert_eq!(ramp_permille(Duration::from_secs(500), d), 1000);
        assert_eq!(ramp_permille(Duration::from_secs(1), Duration::ZERO), 1000);
    }

    #[test]
    fn sections_get_defaults_and_are_checked() {
        let hc: HealthCheckSection = toml::from_str("").unwrap();
        let c = HealthCheck::from_section(&hc, false).unwrap();
        assert_eq!(c.interval, Duration::from_secs(5));
        assert_eq!(c.timeout, Duration::from_secs(1));
        assert_eq!((c.fails, c.passes), (3, 2));
        assert_eq!(
            c.kind,
            CheckKind::Http {
                path: "/health".into(),
                host: None,
                expect_min: 200,
                expect_max: 399
            }
        );
        assert_eq!(
            HealthCheck::from_section(&hc, true).unwrap().kind,
            CheckKind::Tcp
        );
        let bad: HealthCheckSection = toml::from_str("fails = 0\nexpect = \"x\"").unwrap();
        assert!(HealthCheck::from_section(&bad, false).is_err());
        let p: PassiveHealthSection = toml::from_str("statuses = [500]").unwrap();
        let p = PassivePolicy::from_section(&p).unwrap();
        assert!(p.counts_status(500) && !p.counts_status(502));
        let bad: PassiveHealthSection = toml::from_str("max_ejection_percent = 101").unwrap();
        assert!(PassivePolicy::from_section(&bad).is_err());
    }

    fn shared_for(upstreams: &str) -> Arc<Shared> {
        let text = format!(
            "[admin]\naddr = \"127.0.0.1:1\"\n[[listener]]\nname = \"http\"\naddr = \"127.0.0.1:2\"\n\
             [[route]]\nname = \"r\"\npath_prefix = \"/\"\nupstream = \"u\"\n{upstreams}"
        );
        let registry = crate::server::default_registry();
        let config = crate::config::Config::parse("t.toml", &text, &registry).unwrap();
        Shared::new(config, registry).unwrap()
    }

    /// A prober whose answer per backend address the test sets, counting probes.
    struct Script {
        up: Mutex<std::collections::HashMap<String, bool>>,
        probes: AtomicUsize,
        first: Mutex<Vec<Duration>>,
    }

    fn scripted(script: &Arc<Script>, t0: tokio::time::Instant) -> ProbeFn {
        let script = script.clone();
        Arc::new(move |t: Arc<ProbeTarget>| {
            let script = script.clone();
            Box::pin(async move {
                if script.probes.fetch_add(1, Ordering::SeqCst) < 3 {
                    script.first.lock().unwrap().push(t0.elapsed());
                }
                let ok = script
                    .up
                    .lock()
                    .unwrap()
                    .get(&t.addr)
                    .copied()
                    .unwrap_or(true);
                if ok {
                    Ok(())
                } else {
                    Err("scripted".into())
                }
            }) as ProbeFuture
        })
    }

    #[tokio::test(start_paused = true)]
    async fn fails_and_passes_are_counted_exactly() {
        let shared = shared_for(
            "[[upstream]]\nname = \"u\"\nbackends = [{ addr = \"127.0.0.1:7001\" }, { addr = \"127.0.0.1:7002\" }, { addr = \"127.0.0.1:7003\" }]\n\
             health_check = { interval = \"1s\", fails = 3, passes = 2 }\nslow_start = \"10s\"\n",
        );
        let t0 = tokio::time::Instant::now();
        let script = Arc::new(Script {
            up: Mutex::new(Default::default()),
            probes: AtomicUsize::new(0),
            first: Mutex::new(Vec::new()),
        });
        script
            .up
            .lock()
            .unwrap()
            .insert("127.0.0.1:7001".into(), false);
        let service = HealthService {
            shared: shared.clone(),
            probe: scripted(&script, t0),
        };
        let (tx, rx) = tokio::sync::watch::channel(false);
        let stopped = Arc::new(AtomicBool::new(false));
        let s2 = stopped.clone();
        let handle = tokio::spawn(async move {
            service.run(rx).await;
            s2.store(true, Ordering::SeqCst);
        });
        let rt = shared.runtime.load_full();
        let u = rt.upstreams[0].clone();
        let healthy = |i: usize| u.backends[i].state.healthy.load(Ordering::SeqCst);
        // Backends start healthy; the first probes are spread within the first interval.
        assert!(healthy(0));
        tokio::time::sleep(Duration::from_millis(1010)).await;
        let first = script.first.lock().unwrap().clone();
        assert_eq!(first.len(), 3, "{first:?}");
        assert!(
            first.iter().all(|d| *d <= Duration::from_millis(1000)),
            "{first:?}"
        );
        // At most two probes so far (the first within the interval, the next 0.9 s or more
        // later): fails = 3 keeps it up. The exact fails/passes counting is unit-tested on
        // BackendState::record_probe; here the service's cadence (with +/-10 % jitter) only
        // bounds when the transitions happen.
        assert!(healthy(0), "down before the third failure");
        let mut waited = Duration::ZERO;
        while healthy(0) {
            assert!(
                waited < Duration::from_millis(2400),
                "still up after three failed probes"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
            waited += Duration::from_millis(50);
        }
        assert!(healthy(1) && healthy(2));
        assert!(u.pick(None, None, None).is_some_and(|i| i != 0));
        // Back up after exactly two passing probes, then in a slow-start ramp.
        script
            .up
            .lock()
            .unwrap()
            .insert("127.0.0.1:7001".into(), true);
        // Two passing probes bring it back: within two intervals (+10 % jitter).
        let mut waited = Duration::ZERO;
        while !healthy(0) {
            assert!(
                waited < Duration::from_millis(2300),
                "still down after two passing probes"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
            waited += Duration::from_millis(50);
        }
        assert!(
            waited >= Duration::from_millis(850),
            "up after one passing probe ({waited:?})"
        );
        let w = u.backends[0].plugin.load.weight_permille();
        assert!((100..400).contains(&w), "ramp starts near 1/10: {w}");
        tokio::time::sleep(Duration::from_secs(5)).await;
        let w2 = u.backends[0].plugin.load.weight_permille();
        assert!(w2 > w && w2 < 1000, "{w} -> {w2}");
        tokio::time::sleep(Duration::from_secs(6)).await;
        assert_eq!(u.backends[0].plugin.load.weight_permille(), 1000);
        // Probes keep their cadence: about one per backend per second.
        let n = script.probes.load(Ordering::SeqCst);
        let secs = t0.elapsed().as_secs_f64();
        assert!(
            (n as f64) > 3.0 * (secs - 1.0) * 0.85 && (n as f64) < 3.0 * secs * 1.15,
            "{n} probes in {secs}s"
        );
        tx.send(true).unwrap();
        tokio::time::sleep(MAINTENANCE_TICK).await;
        assert!(stopped.load(Ordering::SeqCst));
        handle.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn reloads_are_followed() {
        let with_check = "[[upstream]]\nname = \"u\"\nbackends = [{ addr = \"127.0.0.1:7001\" }]\n\
                          health_check = { kind = \"tcp\", interval = \"1s\", fails = 1, passes = 1 }\n";
        let shared = shared_for(with_check);
        let t0 = tokio::time::Instant::now();
        let script = Arc::new(Script {
            up: Mutex::new(Default::default()),
            probes: AtomicUsize::new(0),
            first: Mutex::new(Vec::new()),
        });
        script
            .up
            .lock()
            .unwrap()
            .insert("127.0.0.1:7001".into(), false);
        let service = HealthService {
            shared: shared.clone(),
            probe: scripted(&script, t0),
        };
        let (_tx, rx) = tokio::sync::watch::channel(false);
        tokio::spawn(async move { service.run(rx).await });
        tokio::time::sleep(Duration::from_millis(2500)).await;
        let state = shared.runtime.load().upstreams[0].backends[0].state.clone();
        assert!(!state.healthy.load(Ordering::SeqCst));
        // A reload without health checks: probes stop and the backend is healthy again.
        let text = shared.runtime.load().config.path.clone();
        assert_eq!(text, "t.toml");
        let without = with_check.replace(
            "health_check = { kind = \"tcp\", interval = \"1s\", fails = 1, passes = 1 }\n",
            "",
        );
        let registry = crate::server::default_registry();
        let config = crate::config::Config::parse(
            "t.toml",
            &format!(
                "[admin]\naddr = \"127.0.0.1:1\"\n[[listener]]\nname = \"http\"\naddr = \"127.0.0.1:2\"\n\
                 [[route]]\nname = \"r\"\npath_prefix = \"/\"\nupstream = \"u\"\n{without}"
            ),
            &registry,
        )
        .unwrap();
        let runtime = crate::state::compile(config, &shared.registry, &shared.live).unwrap();
        shared.runtime.store(Arc::new(runtime));
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(state.healthy.load(Ordering::SeqCst));
        let before = script.probes.load(Ordering::SeqCst);
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert_eq!(
            script.probes.load(Ordering::SeqCst),
            before,
            "probes stopped"
        );
    }

    #[tokio::test]
    async fn real_probes() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(String::new()));
        let seen2 = seen.clone();
        tokio::spawn(async move {
            let mut n = 0;
            loop {
                let (mut s, _) = listener.accept().await.unwrap();
                let mut buf = vec![0u8; 1024];
                let k = s.read(&mut buf).await.unwrap_or(0);
                *seen2.lock().unwrap() = String::from_utf8_lossy(&buf[..k]).into_owned();
                let status = if n == 0 { 204 } else { 500 };
                n += 1;
                let _ = s
                    .write_all(
                        format!("HTTP/1.1 {status} X\r\nContent-Length: 0\r\n\r\n").as_bytes(),
                    )
                    .await;
            }
        });
        let check = HealthCheck {
            kind: CheckKind::Http {
                path: "/hc".into(),
                host: Some("svc.internal".into()),
                expect_min: 200,
                expect_max: 399,
            },
            interval: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
            fails: 1,
            passes: 1,
        };
        probe(&check, addr, "ignored").await.unwrap();
        let req = seen.lock().unwrap().clone();
        assert!(req.starts_with("GET /hc HTTP/1.1\r\n"), "{req}");
        assert!(req.contains("Host: svc.internal\r\n") && req.contains("Connection: close\r\n"));
        assert!(req.contains("User-Agent: switchyard-health\r\n"));
        let err = probe(&check, addr, "x").await.unwrap_err();
        assert!(err.contains("500"), "{err}");
        // TCP checks only connect; a closed port fails.
        let tcp = HealthCheck {
            kind: CheckKind::Tcp,
            ..check.clone()
        };
        probe(&tcp, addr, "x").await.unwrap();
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let dead = closed.local_addr().unwrap();
        drop(closed);
        assert!(probe(&tcp, dead, "x").await.is_err());
        // A backend that accepts and never answers fails within the timeout.
        let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let quick = HealthCheck {
            timeout: Duration::from_millis(200),
            ..check
        };
        let t = Instant::now();
        let err = probe(&quick, silent.local_addr().unwrap(), "x")
            .await
            .unwrap_err();
        assert!(err.contains("no answer"), "{err}");
        assert!(t.elapsed() < Duration::from_secs(1));
    }
}
