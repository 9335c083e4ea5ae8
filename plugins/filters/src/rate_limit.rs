//! `rate-limit`: a token bucket per key; over the limit, 429 with `Retry-After`.
//!
//! ```toml
//! { kind = "rate-limit", requests_per_second = 100, burst = 200, key = "client-ip", scope = "local" }
//! ```
//!
//! | key | what it is | no value |
//! | --- | --- | --- |
//! | `requests_per_second` | refill rate (a fraction is fine: `0.5` is one every 2 s) | required |
//! | `burst` | bucket size: requests allowed at once | `ceil(requests_per_second)` |
//! | `key` | `client-ip`, `header:NAME`, `cookie:NAME` or `route` | `client-ip` |
//! | `scope` | `local` (this process) or `cluster` (every gateway sharing the session store) | `local` |
//! | `max_keys` | keys tracked at most (local scope) | 100 000 |
//!
//! A request whose key is missing (no such header or cookie, no client address) is not
//! counted, as nginx's `limit_req` does with an empty key. A refused request costs no
//! token. `Retry-After` is the whole number of seconds until a token is back (at least 1).
//!
//! # Local scope
//!
//! Buckets live in a map sharded over [`SHARDS`] mutexes (a lock is held for a few
//! arithmetic operations, never across an `.await`), keyed by a 64-bit keyed hash of the
//! key (SipHash with a per-filter random key, so clients cannot aim collisions). The map is
//! bounded by `max_keys`: a shard that is full first drops its idle buckets (those refilled
//! to `burst`, which are the same as no bucket), then, if still full, the least recently
//! used of a sample of [`EVICTION_SAMPLE`] entries.
//!
//! # Cluster scope
//!
//! Every gateway counts in the same fixed windows through the [`SharedCounter`] the gateway
//! passes in the request context (its session store's Redis). A window lasts
//! `max(burst / requests_per_second, 1 s)` and admits `max(burst, requests_per_second ×
//! window)` requests: the same long-run rate as the bucket, and the same burst. Windows
//! are aligned on the Unix epoch, so gateways with synchronised clocks share them. When
//! the counter is absent or fails (Redis down, timeout), the request is limited by this
//! process's local bucket instead: the fleet then admits up to N times the limit, but never
//! fails a request because of the store.

use std::collections::HashMap;
use std::hash::{BuildHasher, BuildHasherDefault, Hasher, RandomState};
use std::net::IpAddr;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use http::header::{HeaderName, HeaderValue, RETRY_AFTER};
use http::StatusCode;
use parking_lot::Mutex;
use serde::Deserialize;
use switchyard_plugin::{
    async_trait, CounterError, Filter, FilterError, Flow, Hooks, RequestContext, RequestInfo,
    Response, SharedCounter,
};

use crate::util::{cookie, is_token};

/// The number of lock shards of the local bucket map (at most; fewer for small `max_keys`).
pub const SHARDS: usize = 64;

/// How many entries a full shard samples to find one to evict.
pub const EVICTION_SAMPLE: usize = 16;

/// The default of `max_keys`.
pub const DEFAULT_MAX_KEYS: usize = 100_000;

/// The configuration of `rate-limit`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitConfig {
    /// Refill rate, in requests per second.
    pub requests_per_second: f64,
    /// Bucket size (default: `requests_per_second` rounded up).
    pub burst: Option<u64>,
    /// What a bucket is kept for.
    #[serde(default = "client_ip")]
    pub key: String,
    /// `local` or `cluster`.
    #[serde(default)]
    pub scope: Scope,
    /// The most keys tracked at once (local scope, and the cluster fallback).
    #[serde(default = "default_max_keys")]
    pub max_keys: usize,
}

fn client_ip() -> String {
    "client-ip".into()
}

fn default_max_keys() -> usize {
    DEFAULT_MAX_KEYS
}

/// Where the counts live.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Scope {
    /// In this process.
    #[default]
    Local,
    /// In the session store, shared by the fleet (local when it is unavailable).
    Cluster,
}

/// What a bucket is kept for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RateKey {
    /// The client's address.
    ClientIp,
    /// A request header's value (name in lower case).
    Header(HeaderName),
    /// A cookie's value.
    Cookie(String),
    /// The route: one bucket for all its requests.
    Route,
}

impl RateKey {
    /// Parse `client-ip`, `header:NAME`, `cookie:NAME` or `route`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let bad = || {
            format!(
                "invalid rate-limit key {text:?}: expected \"client-ip\", \"header:NAME\", \"cookie:NAME\" or \"route\""
            )
        };
        match text {
            "client-ip" => Ok(Self::ClientIp),
            "route" => Ok(Self::Route),
            _ => match text.split_once(':') {
                Some(("header", name)) if is_token(name) => HeaderName::from_bytes(name.as_bytes())
                    .map(Self::Header)
                    .map_err(|_| bad()),
                Some(("cookie", name)) if is_token(name) => Ok(Self::Cookie(name.to_owned())),
                _ => Err(bad()),
            },
        }
    }

    /// This request's key, `None` when it has none.
    fn extract<'r>(&self, request: &RequestInfo<'r>) -> Option<KeyValue<'r>> {
        match self {
            Self::ClientIp => request.client_ip.map(|ip| KeyValue::Ip(ip.to_canonical())),
            Self::Header(name) => request
                .headers
                .get(name)
                .map(|v| KeyValue::Bytes(v.as_bytes())),
            Self::Cookie(name) => cookie(request.headers, name).map(KeyValue::Bytes),
            Self::Route => Some(KeyValue::Route),
        }
        .filter(|k| !matches!(k, KeyValue::Bytes(b) if b.is_empty()))
    }

    fn spec(&self) -> String {
        match self {
            Self::ClientIp => "client-ip".into(),
            Self::Header(n) => format!("header={n}"),
            Self::Cookie(n) => format!("cookie={n}"),
            Self::Route => "route".into(),
        }
    }
}

/// One request's key.
#[derive(Debug, Clone, Copy)]
enum KeyValue<'a> {
    Ip(IpAddr),
    Bytes(&'a [u8]),
    Route,
}

/// A token bucket: `tokens` as of `last_ns` (nanoseconds since the limiter's origin).
#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    last_ns: u64,
}

/// Keys are already hashes: use them as they are.
#[derive(Default)]
struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 << 8) | u64::from(b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

type Shard = HashMap<u64, Bucket, BuildHasherDefault<IdHasher>>;

/// In-process token buckets keyed by 64-bit hashes, bounded in number.
///
/// ```
/// use std::time::{Duration, Instant};
/// use switchyard_filters::rate_limit::LocalLimiter;
///
/// let t0 = Instant::now();
/// let limiter = LocalLimiter::new(10.0, 2.0, 1000, t0);
/// assert!(limiter.check(7, t0).is_ok());
/// assert!(limiter.check(7, t0).is_ok());
/// // The bucket is empty: a token comes back in 1/10 s.
/// assert_eq!(limiter.check(7, t0), Err(Duration::from_millis(100)));
/// assert!(limiter.check(7, t0 + Duration::from_millis(100)).is_ok());
/// // Another key has its own bucket.
/// assert!(limiter.check(8, t0).is_ok());
/// ```
pub struct LocalLimiter {
    rate_per_ns: f64,
    burst: f64,
    origin: Instant,
    shards: Box<[Mutex<Shard>]>,
    shard_cap: usize,
}

impl LocalLimiter {
    /// Buckets refilling at `rate` tokens a second up to `burst`, at most about `max_keys`
    /// of them; times are measured from `origin`.
    pub fn new(rate: f64, burst: f64, max_keys: usize, origin: Instant) -> Self {
        let shards = (max_keys / 64).clamp(1, SHARDS).next_power_of_two();
        Self {
            rate_per_ns: rate / 1e9,
            burst,
            origin,
            shards: (0..shards).map(|_| Mutex::new(Shard::default())).collect(),
            shard_cap: max_keys.div_ceil(shards).max(1),
        }
    }

    /// Take a token from the bucket of `key` (a hash) at `now`: `Ok` if there was one,
    /// else how long until there is.
    pub fn check(&self, key: u64, now: Instant) -> Result<(), Duration> {
        let now_ns = u64::try_from(now.saturating_duration_since(self.origin).as_nanos())
            .unwrap_or(u64::MAX);
        // Shard on bits the map does not use for its own placement (low bits) or its
        // control bytes (top 7 bits).
        let shard = &self.shards[(key >> 32) as usize & (self.shards.len() - 1)];
        let mut map = shard.lock();
        if let Some(bucket) = map.get_mut(&key) {
            return self.take(bucket, now_ns);
        }
        if map.len() >= self.shard_cap {
            self.make_room(&mut map, now_ns);
        }
        let mut bucket = Bucket {
            tokens: self.burst,
            last_ns: now_ns,
        };
        let result = self.take(&mut bucket, now_ns);
        map.insert(key, bucket);
        result
    }

    fn refilled(&self, bucket: &Bucket, now_ns: u64) -> f64 {
        let elapsed = now_ns.saturating_sub(bucket.last_ns) as f64;
        (bucket.tokens + elapsed * self.rate_per_ns).min(self.burst)
    }

    fn take(&self, bucket: &mut Bucket, now_ns: u64) -> Result<(), Duration> {
        let tokens = self.refilled(bucket, now_ns);
        bucket.last_ns = bucket.last_ns.max(now_ns);
        if tokens >= 1.0 {
            bucket.tokens = tokens - 1.0;
            Ok(())
        } else {
            bucket.tokens = tokens;
            Err(Duration::from_nanos(
                ((1.0 - tokens) / self.rate_per_ns).ceil() as u64,
            ))
        }
    }

    /// Drop idle buckets; if none is idle, the least recently used of a sample.
    fn make_room(&self, map: &mut Shard, now_ns: u64) {
        map.retain(|_, b| self.refilled(b, now_ns) < self.burst);
        if map.len() < self.shard_cap {
            return;
        }
        let stalest = map
            .iter()
            .take(EVICTION_SAMPLE)
            .min_by_key(|(_, b)| b.last_ns)
            .map(|(k, _)| *k);
        if let Some(k) = stalest {
            map.remove(&k);
        }
    }

    /// How many buckets are kept now.
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| s.lock().len()).sum()
    }

    /// Whether no bucket is kept.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl std::fmt::Debug for LocalLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalLimiter")
            .field("rate", &(self.rate_per_ns * 1e9))
            .field("burst", &self.burst)
            .field("shards", &self.shards.len())
            .field("shard_cap", &self.shard_cap)
            .finish()
    }
}

/// The `rate-limit` filter.
#[derive(Debug)]
pub struct RateLimit {
    key: RateKey,
    cluster: bool,
    local: LocalLimiter,
    hasher: RandomState,
    /// Cluster windows: length in milliseconds and requests admitted in each.
    window_ms: u64,
    window_limit: u64,
    /// `{key spec}:{window_ms}:{window_limit}`, escaped, for cluster counter keys.
    key_tag: String,
}

impl RateLimit {
    /// Check and build from `config`.
    pub fn new(config: &RateLimitConfig) -> Result<Self, String> {
        let rate = config.requests_per_second;
        if !(rate.is_finite() && rate > 0.0 && rate <= 1e9) {
            return Err(format!(
                "requests_per_second must be a number above 0 (and at most 1e9), not {rate}"
            ));
        }
        let burst = config.burst.unwrap_or_else(|| rate.ceil() as u64);
        if burst == 0 {
            return Err("burst must be at least 1".into());
        }
        if burst > 1_000_000_000 {
            return Err("burst must be at most 1e9".into());
        }
        if config.max_keys == 0 {
            return Err("max_keys must be at least 1".into());
        }
        let key = RateKey::parse(&config.key)?;
        let window_ms = ((burst as f64 / rate) * 1000.0).ceil().max(1000.0) as u64;
        let window_limit = (burst as f64).max((rate * window_ms as f64 / 1000.0).floor()) as u64;
        let mut key_tag = String::new();
        escape_into(&mut key_tag, key.spec().as_bytes());
        key_tag.push_str(&format!(":{window_ms}:{window_limit}"));
        Ok(Self {
            key,
            cluster: config.scope == Scope::Cluster,
            local: LocalLimiter::new(rate, burst as f64, config.max_keys, Instant::now()),
            hasher: RandomState::new(),
            window_ms,
            window_limit,
            key_tag,
        })
    }

    fn hash(&self, key: KeyValue<'_>) -> u64 {
        let mut h = self.hasher.build_hasher();
        match key {
            KeyValue::Ip(IpAddr::V4(a)) => h.write(&a.octets()),
            KeyValue::Ip(IpAddr::V6(a)) => h.write(&a.octets()),
            KeyValue::Bytes(b) => h.write(b),
            KeyValue::Route => h.write_u8(0),
        }
        h.finish()
    }

    /// The cluster counter key of `key` in window number `window`:
    /// `ratelimit:{route}:{key spec}:{window ms}:{limit}:{value}:{window}`, every variable
    /// part percent-escaped (`:` included), long values replaced by a stable hash.
    fn counter_key(&self, route: &str, key: KeyValue<'_>, window: u64) -> String {
        let mut out = String::with_capacity(48 + route.len() + self.key_tag.len());
        out.push_str("ratelimit:");
        escape_into(&mut out, route.as_bytes());
        out.push(':');
        out.push_str(&self.key_tag);
        out.push(':');
        match key {
            KeyValue::Ip(ip) => escape_into(&mut out, ip.to_string().as_bytes()),
            KeyValue::Bytes(b) if b.len() <= 96 => escape_into(&mut out, b),
            KeyValue::Bytes(b) => {
                out.push_str("~h");
                for seed in [0xcbf2_9ce4_8422_2325u64, 0x6c62_272e_07bb_0142] {
                    out.push_str(&format!("{:016x}", fnv1a(seed, b)));
                }
            }
            KeyValue::Route => out.push('-'),
        }
        out.push(':');
        out.push_str(&window.to_string());
        out
    }

    /// Count the request in the fleet's current window at `now_ms` (Unix milliseconds).
    async fn check_cluster(
        &self,
        counter: &dyn SharedCounter,
        route: &str,
        key: KeyValue<'_>,
        now_ms: u64,
    ) -> Result<Result<(), Duration>, CounterError> {
        let window = now_ms / self.window_ms;
        let name = self.counter_key(route, key, window);
        let count = counter
            .incr_window(&name, Duration::from_millis(self.window_ms))
            .await?;
        if count <= self.window_limit {
            Ok(Ok(()))
        } else {
            Ok(Err(Duration::from_millis(
                self.window_ms - now_ms % self.window_ms,
            )))
        }
    }

    async fn decide(
        &self,
        ctx: &RequestContext<'_>,
        now: Instant,
        now_ms: u64,
    ) -> Result<(), Duration> {
        let Some(key) = self.key.extract(&ctx.request) else {
            return Ok(());
        };
        if self.cluster {
            if let Some(counter) = ctx.shared_counter {
                if let Ok(decision) = self
                    .check_cluster(counter, ctx.request.route, key, now_ms)
                    .await
                {
                    return decision;
                }
            }
        }
        self.local.check(self.hash(key), now)
    }
}

fn fnv1a(seed: u64, bytes: &[u8]) -> u64 {
    bytes.iter().fold(seed, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Append `bytes`, keeping `A-Z a-z 0-9 . _ ~ -` and percent-encoding the rest.
fn escape_into(out: &mut String, bytes: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for &b in bytes {
        if b.is_ascii_alphanumeric() || b"._~-".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push('%');
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 15)]));
        }
    }
}

/// 429 with `Retry-After` in whole seconds, at least 1.
fn too_many(wait: Duration) -> Response {
    let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    Response::text(StatusCode::TOO_MANY_REQUESTS, "too many requests\n")
        .with_header(RETRY_AFTER, HeaderValue::from(secs.max(1)))
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

#[async_trait]
impl Filter for RateLimit {
    fn kind(&self) -> &'static str {
        "rate-limit"
    }

    fn hooks(&self) -> Hooks {
        Hooks {
            request: true,
            ..Hooks::NONE
        }
    }

    async fn on_request(&self, ctx: &mut RequestContext<'_>) -> Result<Flow, FilterError> {
        let now_ms = if self.cluster { unix_ms() } else { 0 };
        match self.decide(ctx, Instant::now(), now_ms).await {
            Ok(()) => Ok(Flow::Continue),
            Err(wait) => Ok(Flow::Respond(too_many(wait))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::{Extensions, HeaderMap, Method, Uri};
    use switchyard_plugin::filter::block_on_ready;

    fn config(json: serde_json::Value) -> Result<RateLimit, String> {
        let c: RateLimitConfig = serde_json::from_value(json).map_err(|e| e.to_string())?;
        RateLimit::new(&c)
    }

    /// The status for a request from `ip` with `headers` at `now`.
    fn status_at(
        f: &RateLimit,
        ip: Option<&str>,
        headers: &HeaderMap,
        counter: Option<&dyn SharedCounter>,
        now: Instant,
        now_ms: u64,
    ) -> Result<(), Duration> {
        let (m, u) = (Method::GET, Uri::from_static("/"));
        let mut ext = Extensions::new();
        let info = RequestInfo::new(&m, &u, headers)
            .with_client_ip(ip.map(|s| s.parse().unwrap()))
            .with_route("api");
        let ctx = RequestContext::new(info, &mut ext).with_shared_counter(counter);
        block_on_ready(f.decide(&ctx, now, now_ms))
    }

    #[test]
    fn bucket_refills_at_the_rate_and_holds_burst() {
        let f = config(serde_json::json!({"requests_per_second": 2, "burst": 3})).unwrap();
        let t0 = f.local.origin;
        let h = HeaderMap::new();
        let ip = Some("192.0.2.1");
        for _ in 0..3 {
            assert!(status_at(&f, ip, &h, None, t0, 0).is_ok());
        }
        let wait = status_at(&f, ip, &h, None, t0, 0).unwrap_err();
        assert_eq!(wait, Duration::from_millis(500));
        // Another client is not affected; IPv4-mapped is the same client.
        assert!(status_at(&f, Some("192.0.2.2"), &h, None, t0, 0).is_ok());
        assert!(status_at(&f, Some("::ffff:192.0.2.1"), &h, None, t0, 0).is_err());
        // Half a second later, one more.
        let t1 = t0 + Duration::from_millis(500);
        assert!(status_at(&f, ip, &h, None, t1, 0).is_ok());
        assert!(status_at(&f, ip, &h, None, t1, 0).is_err());
        // Long idle: back to burst, not more.
        let t2 = t1 + Duration::from_secs(3600);
        for _ in 0..3 {
            assert!(status_at(&f, ip, &h, None, t2, 0).is_ok());
        }
        assert!(status_at(&f, ip, &h, None, t2, 0).is_err());
    }

    #[test]
    fn the_answer_is_429_with_whole_seconds() {
        assert_eq!(
            too_many(Duration::from_millis(10)).headers[RETRY_AFTER],
            "1"
        );
        assert_eq!(
            too_many(Duration::from_millis(1500)).headers[RETRY_AFTER],
            "2"
        );
        assert_eq!(too_many(Duration::from_secs(3)).headers[RETRY_AFTER], "3");
        let r = too_many(Duration::ZERO);
        assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(r.headers[RETRY_AFTER], "1");
        // Through the filter.
        let f = config(serde_json::json!({"requests_per_second": 0.1, "burst": 1})).unwrap();
        let (m, u, h) = (Method::GET, Uri::from_static("/"), HeaderMap::new());
        let mut ext = Extensions::new();
        let info = RequestInfo::new(&m, &u, &h).with_client_ip(Some("10.0.0.1".parse().unwrap()));
        let mut ctx = RequestContext::new(info, &mut ext);
        assert!(matches!(
            block_on_ready(f.on_request(&mut ctx)).unwrap(),
            Flow::Continue
        ));
        let Flow::Respond(r) = block_on_ready(f.on_request(&mut ctx)).unwrap() else {
            panic!("second request must be limited");
        };
        assert_eq!(r.status, 429);
        let secs: u64 = r.headers[RETRY_AFTER].to_str().unwrap().parse().unwrap();
        assert!((9..=10).contains(&secs), "{secs}");
    }

    #[test]
    fn keys_from_headers_cookies_and_route() {
        let f = config(
            serde_json::json!({"requests_per_second": 1, "burst": 1, "key": "header:X-User"}),
        )
        .unwrap();
        let t0 = f.local.origin;
        let mut alice = HeaderMap::new();
        alice.insert("x-user", "alice".parse().unwrap());
        let mut bob = HeaderMap::new();
        bob.insert("x-user", "bob".parse().unwrap());
        assert!(status_at(&f, None, &alice, None, t0, 0).is_ok());
        assert!(status_at(&f, None, &alice, None, t0, 0).is_err());
        assert!(status_at(&f, None, &bob, None, t0, 0).is_ok());
        // No key: not counted.
        for _ in 0..5 {
            assert!(status_at(&f, None, &HeaderMap::new(), None, t0, 0).is_ok());
        }

        let f =
            config(serde_json::json!({"requests_per_second": 1, "burst": 1, "key": "cookie:sid"}))
                .unwrap();
        let mut a = HeaderMap::new();
        a.insert("cookie", "theme=dark; sid=abc".parse().unwrap());
        assert!(status_at(&f, None, &a, None, t0, 0).is_ok());
        assert!(status_at(&f, None, &a, None, t0, 0).is_err());

        let f = config(serde_json::json!({"requests_per_second": 1, "burst": 2, "key": "route"}))
            .unwrap();
        let h = HeaderMap::new();
        assert!(status_at(&f, Some("10.0.0.1"), &h, None, t0, 0).is_ok());
        assert!(status_at(&f, Some("10.0.0.2"), &h, None, t0, 0).is_ok());
        assert!(status_at(&f, None, &h, None, t0, 0).is_err());
    }

    #[test]
    fn the_map_stays_bounded() {
        let t0 = Instant::now();
        let l = LocalLimiter::new(1.0, 5.0, 256, t0);
        for k in 0..10_000u64 {
            let key = k.wrapping_mul(0x9e37_79b9_7f4a_7c15);
            assert!(l.check(key, t0 + Duration::from_millis(k)).is_ok());
        }
        assert!(l.len() <= 256, "{}", l.len());
        // Idle buckets are dropped first: after a long pause, all of them go.
        let later = t0 + Duration::from_secs(3600);
        let shards = l.shards.len();
        for s in 0..shards as u64 {
            // A key for shard s that is new.
            let _ = l.check((s << 32) | 0xdead_beef_0000_0000, later);
        }
        assert!(l.len() <= 256);
        assert!(!l.is_empty());
    }

    /// The fleet's counter, in memory.
    #[derive(Default)]
    struct Fleet(Mutex<HashMap<String, u64>>);

    #[async_trait]
    impl SharedCounter for Fleet {
        async fn incr_window(&self, key: &str, window: Duration) -> Result<u64, CounterError> {
            assert!(window >= Duration::from_secs(1));
            let mut map = self.0.lock();
            let n = map.entry(key.to_owned()).or_insert(0);
            *n += 1;
            Ok(*n)
        }
    }

    /// A counter whose store is down.
    struct Down;

    #[async_trait]
    impl SharedCounter for Down {
        async fn incr_window(&self, _key: &str, _window: Duration) -> Result<u64, CounterError> {
            Err(CounterError("connection refused".into()))
        }
    }

    #[test]
    fn cluster_scope_counts_in_the_shared_windows() {
        let json = serde_json::json!({"requests_per_second": 1, "burst": 3, "scope": "cluster"});
        // Two gateways, one counter.
        let g1 = config(json.clone()).unwrap();
        let g2 = config(json).unwrap();
        assert_eq!((g1.window_ms, g1.window_limit), (3000, 3));
        let fleet = Fleet::default();
        let h = HeaderMap::new();
        let ip = Some("198.51.100.4");
        let now_ms = 1_699_999_998_500; // 500 ms into window 566666666 of 3 s
        assert_eq!(now_ms % 3000, 500);
        let t0 = Instant::now();
        assert!(status_at(&g1, ip, &h, Some(&fleet), t0, now_ms).is_ok());
        assert!(status_at(&g2, ip, &h, Some(&fleet), t0, now_ms).is_ok());
        assert!(status_at(&g1, ip, &h, Some(&fleet), t0, now_ms + 10).is_ok());
        let wait = status_at(&g2, ip, &h, Some(&fleet), t0, now_ms + 100).unwrap_err();
        assert_eq!(wait, Duration::from_millis(2400));
        // Local buckets were not touched.
        assert!(g1.local.is_empty() && g2.local.is_empty());
        // The next window starts afresh.
        assert!(status_at(&g2, ip, &h, Some(&fleet), t0, now_ms + 2500).is_ok());
        let keys: Vec<String> = fleet.0.lock().keys().cloned().collect();
        assert!(
            keys.contains(&"ratelimit:api:client-ip:3000:3:198.51.100.4:566666666".to_string()),
            "{keys:?}"
        );
    }

    #[test]
    fn cluster_scope_falls_back_to_local_limits() {
        let f =
            config(serde_json::json!({"requests_per_second": 1, "burst": 2, "scope": "cluster"}))
                .unwrap();
        let h = HeaderMap::new();
        let t0 = f.local.origin;
        for counter in [Some(&Down as &dyn SharedCounter), None] {
            let ip = if counter.is_some() {
                "10.0.0.1"
            } else {
                "10.0.0.2"
            };
            assert!(status_at(&f, Some(ip), &h, counter, t0, 0).is_ok());
            assert!(status_at(&f, Some(ip), &h, counter, t0, 0).is_ok());
            assert_eq!(
                status_at(&f, Some(ip), &h, counter, t0, 0),
                Err(Duration::from_secs(1))
            );
        }
    }

    #[test]
    fn cluster_windows_and_keys() {
        // A high rate with a small burst: one-second windows of `rate` requests.
        let f = config(
            serde_json::json!({"requests_per_second": 100, "burst": 10, "scope": "cluster",
            "key": "header:x-user"}),
        )
        .unwrap();
        assert_eq!((f.window_ms, f.window_limit), (1000, 100));
        let f2 =
            config(serde_json::json!({"requests_per_second": 0.5, "scope": "cluster"})).unwrap();
        assert_eq!((f2.window_ms, f2.window_limit), (2000, 1));
        let k = f.counter_key("my:route", KeyValue::Bytes(b"a b:c"), 7);
        assert_eq!(
            k,
            "ratelimit:my%3Aroute:header%3Dx-user:1000:100:a%20b%3Ac:7"
        );
        let long = [b'x'; 200];
        let k1 = f.counter_key("r", KeyValue::Bytes(&long), 1);
        assert!(k1.len() < 100 && k1.contains("~h"), "{k1}");
        let k2 = f.counter_key("r", KeyValue::Ip("2001:db8::1".parse().unwrap()), 1);
        assert!(k2.contains("2001%3Adb8%3A%3A1"), "{k2}");
    }

    #[test]
    fn bad_configurations() {
        for (json, why) in [
            (serde_json::json!({"requests_per_second": 0}), "above 0"),
            (serde_json::json!({"requests_per_second": -1}), "above 0"),
            (
                serde_json::json!({"requests_per_second": 1, "burst": 0}),
                "burst",
            ),
            (
                serde_json::json!({"requests_per_second": 1, "key": "ip"}),
                "invalid rate-limit key",
            ),
            (
                serde_json::json!({"requests_per_second": 1, "key": "header:"}),
                "invalid rate-limit key",
            ),
            (
                serde_json::json!({"requests_per_second": 1, "key": "query:x"}),
                "invalid rate-limit key",
            ),
            (
                serde_json::json!({"requests_per_second": 1, "scope": "global"}),
                "unknown variant",
            ),
            (
                serde_json::json!({"requests_per_second": 1, "max_keys": 0}),
                "max_keys",
            ),
            (
                serde_json::json!({"requests_per_second": 1, "burts": 3}),
                "unknown field",
            ),
            (serde_json::json!({"burst": 3}), "missing field"),
        ] {
            let err = config(json.clone()).unwrap_err();
            assert!(err.contains(why), "{json}: {err}");
        }
        let f = config(serde_json::json!({"requests_per_second": 2.5})).unwrap();
        assert_eq!(f.local.burst, 3.0);
        assert_eq!(
            RateKey::parse("header:X-User").unwrap(),
            RateKey::Header(HeaderName::from_static("x-user"))
        );
    }
}
