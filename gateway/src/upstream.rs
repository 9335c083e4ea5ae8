//! Upstreams at run time: each upstream's backends, their state, and its balancer.
//!
//! A backend's live load ([`BackendLoad`]) and state ([`BackendState`]) are kept in a
//! [`BackendRegistry`] keyed by (upstream name, backend address), so they outlive any one
//! compiled configuration: a reload that keeps a backend keeps its counters.

use std::cell::Cell;
use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::HeaderMap;
use pingora_core::upstreams::peer::HttpPeer;
use switchyard_plugin::{Backend, BackendLoad, Balancer, Pick, Registry};

use crate::config::{Config, UpstreamSection};
use crate::health::{self, from_tick, tick, HealthCheck, PassiveOutcome, PassivePolicy};
use crate::router::{cookie_value, query_value};

/// State of one backend that the gateway (not the balancer) decides: active health,
/// drain, passive-health ejection and the slow-start ramp. Shared by identity through the
/// [`BackendRegistry`], so it survives reloads. Every field is an atomic; timestamps are
/// ticks of [`crate::health`]'s clock (0: none).
#[derive(Debug)]
pub struct BackendState {
    /// Passing active health checks (true until a check says otherwise).
    pub healthy: AtomicBool,
    /// Drained by the admin API: no new requests.
    pub draining: AtomicBool,
    /// Ejected until this tick (0: not ejected; cleared by the health service once over).
    ejected_until: AtomicU64,
    /// When the last ejection ended (or will end): the start of ejection-count decay.
    returned_at: AtomicU64,
    /// Ejections so far, after decay: the next one lasts `eject * 2^ejections`.
    ejections: AtomicU32,
    /// Failed requests in a row (passive health).
    consecutive_failures: AtomicU32,
    /// Start of the slow-start ramp in progress (0: none).
    ramp_from: AtomicU64,
    /// Failed active probes in a row.
    probe_fails: AtomicU32,
    /// Passing active probes in a row.
    probe_passes: AtomicU32,
}

impl Default for BackendState {
    fn default() -> Self {
        // Fix the clock's origin before any timestamp is taken.
        let _ = health::epoch();
        Self {
            healthy: AtomicBool::new(true),
            draining: AtomicBool::new(false),
            ejected_until: AtomicU64::new(0),
            returned_at: AtomicU64::new(0),
            ejections: AtomicU32::new(0),
            consecutive_failures: AtomicU32::new(0),
            ramp_from: AtomicU64::new(0),
            probe_fails: AtomicU32::new(0),
            probe_passes: AtomicU32::new(0),
        }
    }
}

fn saturating_inc(a: &AtomicU32) -> u32 {
    a.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
        Some(v.saturating_add(1))
    })
    .unwrap_or(u32::MAX)
    .saturating_add(1)
}

impl BackendState {
    /// Whether new requests may go to this backend: healthy, not draining, not ejected.
    /// Relaxed atomic loads only; the clock is read only while an ejection is recorded.
    pub fn eligible(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
            && !self.draining.load(Ordering::Relaxed)
            && !self.is_ejected()
    }

    /// Whether passive health has the backend ejected now.
    pub fn is_ejected(&self) -> bool {
        match self.ejected_until.load(Ordering::Relaxed) {
            0 => false,
            until => until > tick(Instant::now()),
        }
    }

    /// Whether passive health has the backend ejected at `now`.
    pub fn is_ejected_at(&self, now: Instant) -> bool {
        match self.ejected_until.load(Ordering::Relaxed) {
            0 => false,
            until => until > tick(now),
        }
    }

    /// When the current ejection ends, if there is one (or one that the health service has
    /// not cleared yet).
    pub fn ejected_until(&self) -> Option<Instant> {
        from_tick(self.ejected_until.load(Ordering::Relaxed))
    }

    /// The ejection count (after decay, as of the last ejection).
    pub fn ejections(&self) -> u32 {
        self.ejections.load(Ordering::Relaxed)
    }

    /// Failed requests in a row.
    pub fn consecutive_failures(&self) -> u32 {
        self.consecutive_failures.load(Ordering::Relaxed)
    }

    /// When the slow-start ramp in progress began, if one is.
    pub fn ramp_started(&self) -> Option<Instant> {
        from_tick(self.ramp_from.load(Ordering::Relaxed))
    }

    /// Count one active probe result. Returns `Some(true)` when the backend just turned
    /// healthy (`passes` in a row), `Some(false)` when it just turned unhealthy (`fails` in
    /// a row), `None` otherwise.
    pub fn record_probe(&self, ok: bool, check: &HealthCheck) -> Option<bool> {
        if ok {
            self.probe_fails.store(0, Ordering::Relaxed);
            let passes = saturating_inc(&self.probe_passes);
            if passes >= check.passes && !self.healthy.swap(true, Ordering::Relaxed) {
                return Some(true);
            }
        } else {
            self.probe_passes.store(0, Ordering::Relaxed);
            let fails = saturating_inc(&self.probe_fails);
            if fails >= check.fails && self.healthy.swap(false, Ordering::Relaxed) {
                return Some(false);
            }
        }
        None
    }

    /// Mark the backend healthy because nothing checks it any more. Returns whether it was
    /// unhealthy.
    pub fn mark_healthy_unchecked(&self) -> bool {
        self.probe_fails.store(0, Ordering::Relaxed);
        self.probe_passes.store(0, Ordering::Relaxed);
        !self.healthy.swap(true, Ordering::Relaxed)
    }

    /// Start a slow-start ramp at `at` (when `slow_start` is set): the effective weight
    /// drops to 1/10 and climbs back to full over `slow_start`.
    pub fn start_ramp(&self, load: &BackendLoad, slow_start: Option<Duration>, at: Instant) {
        if let Some(d) = slow_start.filter(|d| !d.is_zero()) {
            self.ramp_from.store(tick(at), Ordering::Relaxed);
            load.set_weight_permille(health::ramp_permille(Duration::ZERO, d));
        }
    }

    /// Move the ramp in progress on to `now`. Returns whether a ramp is still running.
    pub fn update_ramp(
        &self,
        load: &BackendLoad,
        slow_start: Option<Duration>,
        now: Instant,
    ) -> bool {
        let from = self.ramp_from.load(Ordering::Relaxed);
        let Some(start) = from_tick(from) else {
            return false;
        };
        let elapsed = now.saturating_duration_since(start);
        match slow_start {
            Some(d) if elapsed < d => {
                load.set_weight_permille(health::ramp_permille(elapsed, d));
                true
            }
            _ => {
                // Over (or slow start was configured away): full weight, unless a new ramp
                // began meanwhile.
                if self
                    .ramp_from
                    .compare_exchange(from, 0, Ordering::Relaxed, Ordering::Relaxed)
                    .is_ok()
                {
                    load.set_weight_permille(1000);
                }
                false
            }
        }
    }

    /// A backend added back by a reload starts afresh: healthy, not draining, no ejection.
    fn reset(&self) {
        self.healthy.store(true, Ordering::Relaxed);
        self.draining.store(false, Ordering::Relaxed);
        self.ejected_until.store(0, Ordering::Relaxed);
        self.returned_at.store(0, Ordering::Relaxed);
        self.ejections.store(0, Ordering::Relaxed);
        self.consecutive_failures.store(0, Ordering::Relaxed);
        self.probe_fails.store(0, Ordering::Relaxed);
        self.probe_passes.store(0, Ordering::Relaxed);
    }
}

type BackendKey = (String, String);
type BackendEntry = (Arc<BackendLoad>, Arc<BackendState>);

/// Live state shared across configurations, keyed by (upstream, backend address).
#[derive(Debug, Default)]
pub struct BackendRegistry {
    entries: Mutex<HashMap<BackendKey, BackendEntry>>,
    /// The backends of the last committed configuration; `None` before the first.
    in_use: Mutex<Option<HashSet<BackendKey>>>,
    /// GSLB sites' live state (by site name) and the responder's pending sockets.
    pub gslb: crate::gslb::GslbLive,
}

impl BackendRegistry {
    /// The load record and state of a backend, created on first use.
    pub fn get(&self, upstream: &str, addr: &str) -> (Arc<BackendLoad>, Arc<BackendState>) {
        let mut map = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        map.entry((upstream.to_owned(), addr.to_owned()))
            .or_default()
            .clone()
    }

    /// Record the backends of a configuration about to be put in force. Backends that the
    /// previous one did not have (added by a reload) start afresh in a slow-start ramp; at
    /// the first configuration (process start) every backend starts at full weight.
    pub fn commit(&self, upstreams: &[Arc<UpstreamRuntime>], now: Instant) {
        let keys: HashSet<BackendKey> = upstreams
            .iter()
            .flat_map(|u| u.backends.iter().map(|b| (u.name.clone(), b.addr.clone())))
            .collect();
        let mut in_use = self.in_use.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(previous) = in_use.as_ref() {
            for u in upstreams {
                for b in &u.backends {
                    if !previous.contains(&(u.name.clone(), b.addr.clone())) {
                        b.state.reset();
                        b.state.start_ramp(&b.plugin.load, u.slow_start, now);
                        if u.slow_start.is_some() {
                            log::info!(
                                "upstream {}: backend {} added; slow start over {:?}",
                                u.name,
                                b.addr,
                                u.slow_start.unwrap_or_default()
                            );
                        }
                    }
                }
            }
        }
        *in_use = Some(keys);
    }
}

/// Where a hash algorithm takes its key from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HashKey {
    /// The client address.
    ClientIp,
    /// A request header.
    Header(http::HeaderName),
    /// A cookie.
    Cookie(String),
    /// The path.
    Path,
    /// A query parameter.
    Query(String),
}

impl HashKey {
    /// Parse a validated `hash_key` setting.
    pub fn parse(text: &str) -> Option<Self> {
        Some(match text.split_once(':') {
            None if text == "client-ip" => HashKey::ClientIp,
            None if text == "path" => HashKey::Path,
            Some(("header", n)) => {
                HashKey::Header(http::HeaderName::from_bytes(n.as_bytes()).ok()?)
            }
            Some(("cookie", n)) => HashKey::Cookie(n.to_owned()),
            Some(("query", n)) => HashKey::Query(n.to_owned()),
            _ => return None,
        })
    }

    /// The key bytes for a request (`None` for the client address, which the balancer
    /// reads from [`Pick::client_ip`], or when the request lacks the key).
    pub fn extract<'r>(
        &self,
        headers: &'r HeaderMap,
        path: &'r str,
        query: Option<&'r str>,
    ) -> Option<&'r [u8]> {
        match self {
            HashKey::ClientIp => None,
            HashKey::Header(name) => headers.get(name).map(|v| v.as_bytes()),
            HashKey::Cookie(name) => cookie_value(headers, name).map(str::as_bytes),
            HashKey::Path => Some(path.as_bytes()),
            HashKey::Query(name) => query_value(query, name).map(str::as_bytes),
        }
    }
}

/// One backend of a compiled upstream.
#[derive(Debug)]
pub struct BackendRuntime {
    /// Address as written in the configuration (the metrics label).
    pub addr: String,
    /// Resolved socket address.
    pub socket: SocketAddr,
    /// Weight and live load, as balancers see them.
    pub plugin: Backend,
    /// Health and drain state.
    pub state: Arc<BackendState>,
    /// The peer template cloned for each request.
    pub peer: HttpPeer,
    /// Its tier (`priority`; 0 is the first).
    pub priority: u32,
}

/// A compiled upstream.
pub struct UpstreamRuntime {
    /// Name from the configuration.
    pub name: String,
    /// Algorithm name.
    pub algorithm: String,
    /// The backends, in configuration order.
    pub backends: Vec<BackendRuntime>,
    /// The balancer built for these backends.
    pub balancer: Box<dyn Balancer>,
    /// Hash key source, for hash algorithms.
    pub hash_key: Option<HashKey>,
    /// Extra attempts on other backends after a connect failure.
    pub retries: u32,
    /// Base of the exponential retry backoff.
    pub retry_backoff: Duration,
    /// Active health check, when configured.
    pub health: Option<HealthCheck>,
    /// Passive health policy, when configured (`passive_health`).
    pub passive: Option<PassivePolicy>,
    /// Slow-start ramp length, when configured.
    pub slow_start: Option<Duration>,
    /// How `pick` applies slow start (for algorithms that ignore weights).
    ramp: RampMode,
    /// The last [`PickMode`], for logging transitions once.
    mode: AtomicU8,
    /// Serialises ejection decisions (taken only when a backend reaches its threshold).
    eject_lock: Mutex<()>,
    /// Retries may add at most 20% of this upstream's requests over 10 s.
    pub retry_budget: crate::retry_budget::RetryBudget,
    /// Backend tiers, when the backends have more than one `priority`.
    tiers: Option<crate::tiers::Tiers>,
}

/// How the last pick found its backend, for logging each transition once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
enum PickMode {
    /// Among eligible backends.
    Normal = 0,
    /// Every healthy backend is ejected: ejections ignored.
    Panic = 1,
    /// No healthy, non-draining backend.
    Nothing = 2,
}

/// How [`UpstreamRuntime::pick`] applies slow start for algorithms that do not read the
/// effective weight themselves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RampMode {
    /// The algorithm reads the effective weight (or hashes, where skipping would move keys).
    None,
    /// Rotations (`round-robin`, `weighted-round-robin`): a picked backend in its ramp is
    /// kept with probability `permille / 1000`, otherwise the balancer picks again, which
    /// moves its cursor on: rejection sampling, exact proportions.
    Redraw,
    /// `least-connections`: a backend in its ramp takes part in a pick with probability
    /// `permille / 1000` (picking again would return the same least loaded backend).
    Filter,
}

impl RampMode {
    fn of(algorithm: &str) -> Self {
        match algorithm {
            "round-robin" | "weighted-round-robin" => Self::Redraw,
            "least-connections" => Self::Filter,
            _ => Self::None,
        }
    }
}

/// The most picks [`RampMode::Redraw`] makes before keeping what it drew.
const RAMP_REDRAWS: usize = 8;

impl std::fmt::Debug for UpstreamRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamRuntime")
            .field("name", &self.name)
            .field("algorithm", &self.algorithm)
            .field("backends", &self.backends)
            .finish_non_exhaustive()
    }
}

impl UpstreamRuntime {
    /// Build an upstream from its validated section.
    pub fn build(
        section: &UpstreamSection,
        resolved: &[SocketAddr],
        registry: &Registry,
        live: &BackendRegistry,
    ) -> Result<Self, String> {
        let name = section.name.get_ref().clone();
        let health = section
            .health_check
            .as_ref()
            .map(|h| HealthCheck::from_section(h, false))
            .transpose()
            .map_err(|e| format!("upstream `{name}`: {e}"))?;
        let passive = section
            .passive_health
            .as_ref()
            .map(PassivePolicy::from_section)
            .transpose()
            .map_err(|e| format!("upstream `{name}`: {e}"))?;
        let connect_timeout = section
            .connect_timeout
            .map_or(Duration::from_secs(1), |d| d.get());
        let read_timeout = section
            .read_timeout
            .map_or(Duration::from_secs(30), |d| d.get());
        let peer_tls = section
            .tls
            .as_ref()
            .map(crate::tls::PeerTls::load)
            .transpose()
            .map_err(|e| format!("upstream `{name}`: {}", e.join("; ")))?;
        let backends: Vec<BackendRuntime> = section
            .backends
            .get_ref()
            .iter()
            .zip(resolved)
            .map(|(b, socket)| {
                let addr = b.addr.get_ref().clone();
                let (load, state) = live.get(&name, &addr);
                let mut peer = HttpPeer::new(*socket, false, String::new());
                peer.options.connection_timeout = Some(connect_timeout);
                peer.options.read_timeout = Some(read_timeout);
                peer.options.idle_timeout = Some(Duration::from_secs(60));
                if let Some(tls) = &peer_tls {
                    tls.apply(&mut peer, &addr);
                }
                BackendRuntime {
                    plugin: Backend {
                        addr: addr.clone(),
                        weight: *b.weight.get_ref(),
                        load,
                    },
                    addr,
                    socket: *socket,
                    state,
                    peer,
                    priority: b.priority,
                }
            })
            .collect();
        let factory = registry
            .balancer(section.algorithm.get_ref())
            .ok_or_else(|| format!("unknown algorithm `{}`", section.algorithm.get_ref()))?;
        let plugins: Vec<Backend> = backends.iter().map(|b| b.plugin.clone()).collect();
        let options = crate::config::balancer_options(section);
        let balancer = factory
            .build(&plugins, &options)
            .map_err(|e| format!("upstream `{name}`: {e}"))?;
        Ok(Self {
            name,
            algorithm: section.algorithm.get_ref().clone(),
            balancer,
            hash_key: section
                .hash_key
                .as_ref()
                .and_then(|k| HashKey::parse(k.get_ref())),
            retries: section.retries.unwrap_or(1),
            retry_backoff: section
                .retry_backoff
                .map_or(Duration::from_millis(25), |d| d.get()),
            health,
            passive,
            slow_start: section.slow_start.map(|d| d.get()).filter(|d| !d.is_zero()),
            ramp: RampMode::of(section.algorithm.get_ref()),
            retry_budget: Default::default(),
            mode: AtomicU8::new(PickMode::Normal as u8),
            eject_lock: Mutex::new(()),
            tiers: crate::tiers::Tiers::of(&backends),
            backends,
        })
    }

    /// Whether backend `i` may be picked in one pass of [`pick`](Self::pick).
    #[inline]
    fn may_pick(&self, i: usize, pass: &Pass, seen: &Seen) -> bool {
        if Some(i) == pass.avoid {
            return false;
        }
        if let (Some(t), Some(tiers)) = (pass.tier, &self.tiers) {
            if tiers.tier_of(i) != t {
                return false;
            }
        }
        let b = &self.backends[i];
        let s = &b.state;
        if !s.healthy.load(Ordering::Relaxed) || s.draining.load(Ordering::Relaxed) {
            return false;
        }
        let until = s.ejected_until.load(Ordering::Relaxed);
        if until != 0 && !pass.ignore_ejection {
            let now = match seen.now.get() {
                0 => {
                    let t = tick(Instant::now());
                    seen.now.set(t);
                    t
                }
                t => t,
            };
            if until > now {
                seen.ejected.set(true);
                return false;
            }
        }
        if pass.ramp {
            let permille = b.plugin.load.weight_permille();
            if permille < 1000 && rand::random_range(0..1000u32) >= permille {
                seen.ramped.set(true);
                return false;
            }
        }
        true
    }

    fn pick_pass(
        &self,
        client_ip: Option<IpAddr>,
        key: Option<&[u8]>,
        pass: Pass,
        seen: &Seen,
    ) -> Option<usize> {
        let eligible = |i: usize| self.may_pick(i, &pass, seen);
        let pick = Pick::new(self.backends.len(), &eligible)
            .with_client_ip(client_ip)
            .with_key(key);
        self.balancer.pick(&pick)
    }

    /// Pick a backend for a request, avoiding `avoid` (the one that just failed) while
    /// another one can be picked.
    ///
    /// Eligible backends are healthy, not draining and not ejected; for algorithms that do
    /// not read weights a backend in a slow-start ramp is kept with probability
    /// `permille / 1000` (see [`crate::health`], "Slow start"). When only ejections leave nothing, ejections are ignored (panic
    /// mode); when no backend is healthy and not draining, `None` (the proxy answers 503).
    /// With every backend eligible and none in a ramp this is one balancer pick and a few
    /// relaxed atomic loads per backend looked at; it never locks or allocates.
    ///
    /// With backend tiers (`priority`), the tier is chosen first by Envoy's priority load
    /// ([`crate::tiers`]) and the pick is restricted to it; when nothing of that tier can be
    /// picked (or only the avoided backend), the pick runs over every tier.
    pub fn pick(
        &self,
        client_ip: Option<IpAddr>,
        key: Option<&[u8]>,
        avoid: Option<usize>,
    ) -> Option<usize> {
        if let Some(tiers) = &self.tiers {
            if let Some(tier) = tiers.choose(&self.backends) {
                if let Some(i) = self.pick_from(client_ip, key, avoid, Some(tier)) {
                    self.note_mode(PickMode::Normal);
                    return Some(i);
                }
            }
        }
        self.pick_from(client_ip, key, avoid, None)
    }

    /// [`pick`](Self::pick) within one tier (`Some`: the avoided backend is never taken and
    /// the pick mode is not logged) or over every backend (`None`).
    fn pick_from(
        &self,
        client_ip: Option<IpAddr>,
        key: Option<&[u8]>,
        avoid: Option<usize>,
        tier: Option<usize>,
    ) -> Option<usize> {
        let seen = Seen::default();
        let avoids = [avoid, None];
        let avoids = if avoid.is_some() && tier.is_none() {
            &avoids[..]
        } else {
            &avoids[..1]
        };
        let note = |mode| {
            if tier.is_none() {
                self.note_mode(mode);
            }
        };
        for &avoid in avoids {
            let strict = Pass {
                avoid,
                ignore_ejection: false,
                ramp: self.ramp == RampMode::Filter,
                tier,
            };
            if let Some(mut i) = self.pick_pass(client_ip, key, strict, &seen) {
                if self.ramp == RampMode::Redraw {
                    for _ in 1..RAMP_REDRAWS {
                        let permille = self.backends[i].plugin.load.weight_permille();
                        if permille >= 1000 || rand::random_range(0..1000u32) < permille {
                            break;
                        }
                        match self.pick_pass(client_ip, key, strict, &seen) {
                            Some(j) => i = j,
                            None => break,
                        }
                    }
                }
                note(PickMode::Normal);
                return Some(i);
            }
            if seen.ramped.get() {
                // Only backends in their ramp are left: take one of them rather than none.
                let pass = Pass {
                    ramp: false,
                    ..strict
                };
                if let Some(i) = self.pick_pass(client_ip, key, pass, &seen) {
                    note(PickMode::Normal);
                    return Some(i);
                }
            }
            if seen.ejected.get() {
                let panic = Pass {
                    avoid,
                    ignore_ejection: true,
                    ramp: false,
                    tier,
                };
                if let Some(i) = self.pick_pass(client_ip, key, panic, &seen) {
                    note(PickMode::Panic);
                    return Some(i);
                }
            }
        }
        note(PickMode::Nothing);
        None
    }

    /// Log a change of pick mode, once per transition.
    fn note_mode(&self, mode: PickMode) {
        let m = mode as u8;
        if self.mode.load(Ordering::Relaxed) == m {
            return;
        }
        let before = self.mode.swap(m, Ordering::Relaxed);
        if before == m {
            return;
        }
        match mode {
            PickMode::Panic => log::warn!(
                "upstream {}: every healthy backend is ejected by passive health; ignoring ejections until one returns",
                self.name
            ),
            PickMode::Nothing => log::warn!(
                "upstream {}: no healthy backend left (of {}); answering 503",
                self.name,
                self.backends.len()
            ),
            PickMode::Normal => log::info!(
                "upstream {}: eligible backends available again",
                self.name
            ),
        }
    }

    /// Record how a request to backend `index` ended (passive health). Returns whether the
    /// backend was ejected because of it (count `switchyard_ejections_total`).
    ///
    /// Call it once per attempt: from `fail_to_connect` with [`PassiveOutcome::Failure`] and
    /// from `logging` with [`PassiveOutcome::of_request`]. Without `passive_health` it does
    /// nothing. A success costs one relaxed load (and a store after failures).
    pub fn record_outcome(&self, index: usize, outcome: PassiveOutcome) -> bool {
        self.record_outcome_at(index, outcome, Instant::now())
    }

    /// [`record_outcome`](Self::record_outcome) at `now`.
    pub fn record_outcome_at(&self, index: usize, outcome: PassiveOutcome, now: Instant) -> bool {
        let (Some(policy), Some(b)) = (&self.passive, self.backends.get(index)) else {
            return false;
        };
        let st = &b.state;
        let failed = match outcome {
            PassiveOutcome::Failure => true,
            PassiveOutcome::Status(s) => policy.counts_status(s),
        };
        if !failed {
            if st.consecutive_failures.load(Ordering::Relaxed) != 0 {
                st.consecutive_failures.store(0, Ordering::Relaxed);
            }
            return false;
        }
        let n = saturating_inc(&st.consecutive_failures);
        if n < policy.consecutive_failures || st.is_ejected_at(now) {
            return false;
        }
        let _guard = self.eject_lock.lock().unwrap_or_else(|e| e.into_inner());
        if st.is_ejected_at(now) {
            return false;
        }
        // Start counting afresh whatever happens: a refused ejection is retried only after
        // another run of failures, so a failing backend does not take the lock each time.
        st.consecutive_failures.store(0, Ordering::Relaxed);
        let ejected = self
            .backends
            .iter()
            .filter(|b| b.state.is_ejected_at(now))
            .count();
        let allowed = policy.max_ejected(self.backends.len());
        if ejected >= allowed {
            log::debug!(
                "upstream {}: backend {} not ejected: {ejected} of {} already are (max_ejection_percent {})",
                self.name,
                b.addr,
                self.backends.len(),
                policy.max_ejection_percent
            );
            return false;
        }
        // The ejection count decays by one per decay period spent un-ejected.
        let mut count = st.ejections.load(Ordering::Relaxed);
        if let Some(returned) = from_tick(st.returned_at.load(Ordering::Relaxed)) {
            let quiet = now.saturating_duration_since(returned);
            let periods = quiet.as_nanos() / policy.decay_period().as_nanos().max(1);
            count = count.saturating_sub(u32::try_from(periods).unwrap_or(u32::MAX));
        }
        let count = count.saturating_add(1);
        let duration = policy.ejection_duration(count);
        let until = tick(now + duration);
        st.ejections.store(count, Ordering::Relaxed);
        st.returned_at.store(until, Ordering::Relaxed);
        st.ejected_until.store(until, Ordering::Relaxed);
        log::warn!(
            "upstream {}: backend {} ejected for {duration:?} after {n} consecutive failures (ejection {count})",
            self.name,
            b.addr
        );
        true
    }

    /// Drain (`true`) or re-enable (`false`) backend `index`. Re-enabling a drained backend
    /// starts its slow-start ramp. Returns whether it was draining before.
    pub fn set_draining(&self, index: usize, draining: bool) -> bool {
        let Some(b) = self.backends.get(index) else {
            return false;
        };
        let was = b.state.draining.swap(draining, Ordering::Relaxed);
        if was && !draining {
            b.state
                .start_ramp(&b.plugin.load, self.slow_start, Instant::now());
        }
        was
    }

    /// Periodic upkeep (the health service calls it every tick): end ejections that are
    /// over (the backend returns in a slow-start ramp) and move ramps on.
    pub fn maintain(&self, now: Instant) {
        let now_tick = tick(now);
        for b in &self.backends {
            let st = &b.state;
            let until = st.ejected_until.load(Ordering::Relaxed);
            if until != 0
                && until <= now_tick
                && st
                    .ejected_until
                    .compare_exchange(until, 0, Ordering::Relaxed, Ordering::Relaxed)
                    .is_ok()
            {
                st.consecutive_failures.store(0, Ordering::Relaxed);
                log::info!(
                    "upstream {}: backend {} back from ejection",
                    self.name,
                    b.addr
                );
                if let Some(at) = from_tick(until) {
                    st.start_ramp(&b.plugin.load, self.slow_start, at);
                }
            }
            st.update_ramp(&b.plugin.load, self.slow_start, now);
        }
    }
}

/// One pass of [`UpstreamRuntime::pick`].
#[derive(Debug, Clone, Copy)]
struct Pass {
    avoid: Option<usize>,
    ignore_ejection: bool,
    ramp: bool,
    /// Only backends of this tier.
    tier: Option<usize>,
}

/// What the passes of one pick saw.
#[derive(Debug, Default)]
struct Seen {
    /// The clock, read at most once, when an ejection is met (0: not read).
    now: Cell<u64>,
    /// An ejected backend was skipped.
    ejected: Cell<bool>,
    /// A backend in its ramp was skipped by chance.
    ramped: Cell<bool>,
}

/// Build every upstream of a configuration, and commit its backends to `live` (see
/// [`BackendRegistry::commit`]): call it only for a configuration about to be put in force.
pub fn build_all(
    config: &Config,
    registry: &Registry,
    live: &BackendRegistry,
) -> Result<Vec<Arc<UpstreamRuntime>>, String> {
    config
        .upstreams
        .iter()
        .zip(&config.resolved)
        .map(|(u, r)| UpstreamRuntime::build(u, r, registry, live).map(Arc::new))
        .collect::<Result<Vec<_>, _>>()
        .inspect(|upstreams| live.commit(upstreams, Instant::now()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_key_extracts_each_source() {
        let mut h = HeaderMap::new();
        h.insert("x-user", "alice".parse().unwrap());
        h.insert("cookie", "sid=42; a=b".parse().unwrap());
        let get = |k: &str| {
            HashKey::parse(k)
                .unwrap()
                .extract(&h, "/p", Some("id=7"))
                .map(|b| b.to_vec())
        };
        assert_eq!(get("header:x-user"), Some(b"alice".to_vec()));
        assert_eq!(get("cookie:sid"), Some(b"42".to_vec()));
        assert_eq!(get("path"), Some(b"/p".to_vec()));
        assert_eq!(get("query:id"), Some(b"7".to_vec()));
        assert_eq!(get("client-ip"), None);
    }

    #[test]
    fn registry_keeps_state_by_identity() {
        let live = BackendRegistry::default();
        let (a, _) = live.get("u", "127.0.0.1:1");
        a.start();
        let (b, _) = live.get("u", "127.0.0.1:1");
        assert_eq!(b.in_flight(), 1);
        let (c, _) = live.get("v", "127.0.0.1:1");
        assert_eq!(c.in_flight(), 0);
    }

    fn upstream_with(
        backends: usize,
        algorithm: &str,
        extra: &str,
    ) -> (Arc<UpstreamRuntime>, BackendRegistry) {
        let list: Vec<String> = (0..backends)
            .map(|i| format!("{{ addr = \"127.0.0.1:{}\" }}", 7001 + i))
            .collect();
        let text = format!(
            "[admin]\naddr = \"127.0.0.1:1\"\n[[listener]]\nname = \"http\"\naddr = \"127.0.0.1:2\"\n\
             [[route]]\nname = \"r\"\npath_prefix = \"/\"\nupstream = \"u\"\n\
             [[upstream]]\nname = \"u\"\nalgorithm = \"{algorithm}\"\nbackends = [{}]\n{extra}\n",
            list.join(", ")
        );
        let registry = crate::server::default_registry();
        let config = Config::parse("t.toml", &text, &registry).unwrap();
        let live = BackendRegistry::default();
        let mut ups = build_all(&config, &registry, &live).unwrap();
        (ups.remove(0), live)
    }

    const PASSIVE: &str =
        "passive_health = { consecutive_failures = 3, eject = \"10s\", statuses = [502] }";

    #[test]
    fn consecutive_failures_eject_and_successes_reset() {
        let (u, _) = upstream_with(4, "round-robin", PASSIVE);
        let t0 = Instant::now();
        let fail = PassiveOutcome::Status(502);
        assert!(!u.record_outcome_at(0, fail, t0));
        assert!(!u.record_outcome_at(0, PassiveOutcome::Failure, t0));
        // A success in between starts the count again; 500 is not in `statuses`.
        assert!(!u.record_outcome_at(0, PassiveOutcome::Status(500), t0));
        assert!(!u.record_outcome_at(0, fail, t0));
        assert!(!u.record_outcome_at(0, fail, t0));
        assert!(
            u.record_outcome_at(0, fail, t0),
            "third failure in a row ejects"
        );
        let st = &u.backends[0].state;
        assert!(st.is_ejected_at(t0 + Duration::from_millis(9_999)));
        assert!(!st.is_ejected_at(t0 + Duration::from_secs(10)));
        assert!(st.is_ejected(), "the real clock is within the ejection");
        assert!(!st.eligible());
        // Failures while ejected change nothing.
        for _ in 0..5 {
            assert!(!u.record_outcome_at(0, fail, t0 + Duration::from_secs(1)));
        }
        for _ in 0..50 {
            assert_ne!(u.pick(None, None, None), Some(0));
        }
        // The health service ends it.
        u.maintain(t0 + Duration::from_secs(10));
        assert_eq!(st.ejected_until(), None);
        assert_eq!(st.consecutive_failures(), 0);
    }

    #[test]
    fn ejections_double_up_to_the_cap_and_decay() {
        let (u, _) = upstream_with(2, "round-robin", PASSIVE);
        let st = u.backends[0].state.clone();
        let mut now = Instant::now();
        let mut lengths = Vec::new();
        for _ in 0..6 {
            for _ in 0..3 {
                u.record_outcome_at(0, PassiveOutcome::Failure, now);
            }
            let until = st.ejected_until().expect("ejected");
            lengths.push((until - now).as_secs());
            // Fails again right after returning.
            now = until;
            u.maintain(now);
        }
        // 10s base, doubling, capped at 10x base (100 s).
        assert_eq!(lengths, [10, 20, 40, 80, 100, 100]);
        assert_eq!(st.ejections(), 6);
        // Staying un-ejected for two decay periods (2 x eject each) drops the count by two:
        // the next ejection is the fifth's length, capped: 100 s; after a long quiet spell
        // it is back to the base.
        now += Duration::from_secs(40);
        for _ in 0..3 {
            u.record_outcome_at(0, PassiveOutcome::Failure, now);
        }
        assert_eq!(st.ejections(), 5);
        let until = st.ejected_until().unwrap();
        assert_eq!((until - now).as_secs(), 100);
        now = until + Duration::from_secs(3600);
        u.maintain(now);
        for _ in 0..3 {
            u.record_outcome_at(0, PassiveOutcome::Failure, now);
        }
        assert_eq!(st.ejections(), 1);
        assert_eq!((st.ejected_until().unwrap() - now).as_secs(), 10);
    }

    #[test]
    fn ejection_share_is_capped() {
        let (u, _) = upstream_with(5, "round-robin", PASSIVE);
        let t0 = Instant::now();
        let mut ejected = 0;
        for round in 0..4 {
            for i in 0..5 {
                for _ in 0..3 {
                    if u.record_outcome_at(
                        i,
                        PassiveOutcome::Failure,
                        t0 + Duration::from_millis(round),
                    ) {
                        ejected += 1;
                    }
                }
            }
        }
        // 50 % of 5, rounded down.
        assert_eq!(ejected, 2);
        let now = t0 + Duration::from_millis(5);
        let count = u
            .backends
            .iter()
            .filter(|b| b.state.is_ejected_at(now))
            .count();
        assert_eq!(count, 2);
        // One backend: never ejected (50 % of 1 is 0).
        let (one, _) = upstream_with(1, "round-robin", PASSIVE);
        for _ in 0..30 {
            assert!(!one.record_outcome_at(0, PassiveOutcome::Failure, t0));
        }
        // Without passive_health nothing is counted.
        let (off, _) = upstream_with(2, "round-robin", "");
        for _ in 0..30 {
            assert!(!off.record_outcome_at(0, PassiveOutcome::Failure, t0));
        }
        assert_eq!(off.backends[0].state.consecutive_failures(), 0);
    }

    #[test]
    fn panic_mode_ignores_ejections_but_not_health() {
        let (u, _) = upstream_with(2, "round-robin", PASSIVE);
        let t0 = Instant::now();
        for _ in 0..3 {
            u.record_outcome_at(0, PassiveOutcome::Failure, t0);
        }
        assert!(u.backends[0].state.is_ejected());
        // The other backend goes down by active checks: only the ejected one is healthy.
        u.backends[1].state.healthy.store(false, Ordering::Relaxed);
        assert_eq!(u.pick(None, None, None), Some(0), "panic mode");
        assert_eq!(u.mode.load(Ordering::Relaxed), PickMode::Panic as u8);
        // Draining it too leaves nothing: the proxy answers 503.
        u.set_draining(0, true);
        assert_eq!(u.pick(None, None, None), None);
        assert_eq!(u.mode.load(Ordering::Relaxed), PickMode::Nothing as u8);
        u.backends[1].state.healthy.store(true, Ordering::Relaxed);
        assert_eq!(u.pick(None, None, None), Some(1));
        assert_eq!(u.mode.load(Ordering::Relaxed), PickMode::Normal as u8);
        // The avoided backend is still taken when it is the only one left.
        assert_eq!(u.pick(None, None, Some(1)), Some(1));
    }

    #[test]
    fn probes_count_fails_and_passes() {
        let st = BackendState::default();
        let check = HealthCheck {
            kind: health::CheckKind::Tcp,
            interval: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
            fails: 3,
            passes: 2,
        };
        assert_eq!(st.record_probe(false, &check), None);
        assert_eq!(st.record_probe(false, &check), None);
        assert_eq!(
            st.record_probe(true, &check),
            None,
            "a pass resets the failures"
        );
        assert_eq!(st.record_probe(false, &check), None);
        assert_eq!(st.record_probe(false, &check), None);
        assert_eq!(st.record_probe(false, &check), Some(false));
        assert_eq!(st.record_probe(false, &check), None);
        assert!(!st.eligible());
        assert_eq!(st.record_probe(true, &check), None);
        assert_eq!(
            st.record_probe(false, &check),
            None,
            "a failure resets the passes"
        );
        assert_eq!(st.record_probe(true, &check), None);
        assert_eq!(st.record_probe(true, &check), Some(true));
        assert!(st.eligible());
    }

    #[test]
    fn slow_start_ramps_and_weighs_picks() {
        let (u, _) = upstream_with(2, "weighted-round-robin", "slow_start = \"100s\"");
        let t0 = Instant::now();
        let b0 = &u.backends[0];
        // Process start: full weight. Drain and re-enable: a ramp from 1/10.
        assert_eq!(b0.plugin.effective_weight(), 1);
        assert_eq!(b0.plugin.load.weight_permille(), 1000);
        assert!(!u.set_draining(0, true));
        assert!(u.set_draining(0, false));
        assert_eq!(b0.plugin.load.weight_permille(), 100);
        let start = b0.state.ramp_started().unwrap();
        u.maintain(start + Duration::from_secs(50));
        assert_eq!(b0.plugin.load.weight_permille(), 550);
        // Picks follow the ramp: ~550 / (550 + 1000) of the cycle's turns for backend 0.
        let n = 20_000;
        let zeros = (0..n)
            .filter(|_| u.pick(None, None, None) == Some(0))
            .count();
        let share = zeros as f64 / n as f64;
        assert!((0.30..0.40).contains(&share), "share {share}");
        u.maintain(start + Duration::from_secs(100));
        assert_eq!(b0.plugin.load.weight_permille(), 1000);
        assert_eq!(b0.state.ramp_started(), None);
        // Every backend in its ramp: picks still succeed.
        for b in &u.backends {
            b.state.start_ramp(&b.plugin.load, u.slow_start, t0);
        }
        for _ in 0..100 {
            assert!(u.pick(None, None, None).is_some());
        }
    }

    #[test]
    fn least_connections_honours_the_ramp() {
        let (u, _) = upstream_with(2, "least-connections", "slow_start = \"100s\"");
        let b0 = &u.backends[0];
        b0.state
            .start_ramp(&b0.plugin.load, u.slow_start, Instant::now());
        let n = 10_000;
        let zeros = (0..n)
            .filter(|_| u.pick(None, None, None) == Some(0))
            .count();
        let share = zeros as f64 / n as f64;
        assert!(share < 0.15, "share {share}");
        // Alone, it is still picked.
        u.backends[1].state.draining.store(true, Ordering::Relaxed);
        assert!((0..100).all(|_| u.pick(None, None, None) == Some(0)));
    }

    #[test]
    fn weighted_algorithms_read_the_ramp_themselves() {
        let (u, _) = upstream_with(2, "weighted-least-connections", "slow_start = \"10s\"");
        assert_eq!(u.ramp, RampMode::None);
        let b0 = &u.backends[0];
        b0.state
            .start_ramp(&b0.plugin.load, u.slow_start, Instant::now());
        assert_eq!(b0.plugin.effective_weight(), 1);
        let (h, _) = upstream_with(
            2,
            "consistent-hash",
            "hash_key = \"path\"\nslow_start = \"10s\"",
        );
        assert_eq!(h.ramp, RampMode::None);
    }

    #[test]
    fn reload_added_backends_start_a_ramp_but_not_at_start() {
        let registry = crate::server::default_registry();
        let text = |n: usize| {
            let list: Vec<String> = (0..n)
                .map(|i| format!("{{ addr = \"127.0.0.1:{}\" }}", 7001 + i))
                .collect();
            format!(
                "[admin]\naddr = \"127.0.0.1:1\"\n[[listener]]\nname = \"http\"\naddr = \"127.0.0.1:2\"\n\
                 [[route]]\nname = \"r\"\npath_prefix = \"/\"\nupstream = \"u\"\n\
                 [[upstream]]\nname = \"u\"\nbackends = [{}]\nslow_start = \"30s\"\n",
                list.join(", ")
            )
        };
        let live = BackendRegistry::default();
        let first = build_all(
            &Config::parse("t.toml", &text(1), &registry).unwrap(),
            &registry,
            &live,
        )
        .unwrap();
        assert_eq!(first[0].backends[0].plugin.load.weight_permille(), 1000);
        let second = build_all(
            &Config::parse("t.toml", &text(2), &registry).unwrap(),
            &registry,
            &live,
        )
        .unwrap();
        assert_eq!(
            second[0].backends[0].plugin.load.weight_permille(),
            1000,
            "kept"
        );
        assert_eq!(
            second[0].backends[1].plugin.load.weight_permille(),
            100,
            "added"
        );
        assert!(second[0].backends[1].state.ramp_started().is_some());
        // Removed, then added back: a fresh start again.
        second[0].backends[1]
            .state
            .healthy
            .store(false, Ordering::Relaxed);
        build_all(
            &Config::parse("t.toml", &text(1), &registry).unwrap(),
            &registry,
            &live,
        )
        .unwrap();
        let third = build_all(
            &Config::parse("t.toml", &text(2), &registry).unwrap(),
            &registry,
            &live,
        )
        .unwrap();
        assert!(third[0].backends[1].state.healthy.load(Ordering::Relaxed));
    }
}
