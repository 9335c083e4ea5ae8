//! Sticky sessions: an upstream's `affinity`, and the session store that holds the pins.
//!
//! Two kinds, both compiled per configuration into an [`Affinity`] (see
//! [`crate::state::Runtime::affinity`]):
//!
//! - **cookie**: the gateway sets a cookie (`SWY_AFFINITY` by default) naming the backend
//!   that answered. The value is `BACKEND.EXPIRY.MAC`: `BACKEND` is an opaque id (the first
//!   8 bytes of HMAC-SHA256(secret, upstream, address)), `EXPIRY` the Unix time the pin
//!   ends, `MAC` a truncated HMAC-SHA256 over the upstream and both. Neither the address
//!   nor the index of the backend appears in clear, and without the secret no value can
//!   be made up. A valid cookie keeps the client on its backend while that backend is
//!   healthy (a draining backend keeps its pinned clients); otherwise the gateway picks
//!   again and sets a new cookie. Stateless: nothing is stored.
//! - **session**: the application's own session id (a cookie or a header) is pinned to a
//!   backend in the session store at `affinity_key(upstream, id)`, value the backend's
//!   address, with a sliding TTL, so every gateway sharing a Redis agrees. An id not yet
//!   pinned goes to its consistent-hash owner among the eligible backends and is pinned
//!   there; a response whose `Set-Cookie` (or header) creates or changes the id pins the
//!   new id to the backend that sent it. A short local cache ([`PIN_CACHE_TTL`]) keeps the
//!   store off most requests. When the store fails or is slower than its timeout, the id
//!   is hashed on the same ring: requests keep being answered, and keep their backend
//!   whenever the pin agreed with the hash.
//!
//! Results are counted in `switchyard_affinity_total{upstream,result}`: every request
//! that carries affinity counts one of `hit`, `new` or `repinned` (a pinned request that a
//! retry moves counts `repinned` as well), and a forged, malformed or oversized cookie or
//! session id additionally counts `invalid` (it is then treated as absent). Store failures
//! count in `switchyard_session_store_errors_total{op}` with `op` one of `connect` (the
//! store is not built yet), `get`, `set`, `touch`.
//!
//! The session store itself ([`SessionStoreHandle`]) is built lazily, on first use inside
//! the running server: the Redis store runs a thread of its own, which would not survive
//! pingora's fork into the background.

use std::collections::HashMap;
use std::fmt;
use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use hmac::{Hmac, Mac};
use http::header::{self, HeaderName, HeaderValue};
use pingora_http::{RequestHeader, ResponseHeader};
use sha2::Sha256;
use switchyard_balancers::ConsistentHash;
use switchyard_plugin::{Backend, Balancer, Pick};
use switchyard_session::{
    affinity_key, SessionStore, SessionStoreConfig, StoreKind, DEFAULT_KEY_PREFIX,
};
use tokio::sync::{Notify, OnceCell};

use crate::config::{AffinitySection, SessionStoreKind, SessionStoreSection};
use crate::router::cookie_value;
use crate::state::Shared;
use crate::upstream::{BackendRuntime, UpstreamRuntime};

/// The cookie of `kind = "cookie"` when the configuration names none.
pub const DEFAULT_COOKIE: &str = "SWY_AFFINITY";
/// The cookie carrying the application's session id for `kind = "session"` when neither
/// `cookie` nor `header` is set.
pub const DEFAULT_SESSION_COOKIE: &str = "SESSION";
/// How long a pin lives when `ttl` is not set.
pub const DEFAULT_TTL: Duration = Duration::from_secs(3600);
/// How long a pin read from (or written to) the session store is reused locally.
pub const PIN_CACHE_TTL: Duration = Duration::from_secs(1);
/// The most pins the local cache of one upstream holds.
pub const PIN_CACHE_ENTRIES: usize = 16_384;
/// The longest session id used for affinity; longer ones count `invalid`.
pub const MAX_SESSION_ID_BYTES: usize = 256;

/// The longest affinity cookie value looked at (a real one is about 50 bytes).
const MAX_COOKIE_VALUE: usize = 128;
/// Bytes of the opaque backend id in the cookie.
const BACKEND_ID_BYTES: usize = 8;
/// Bytes of the truncated MAC in the cookie.
const MAC_BYTES: usize = 16;
/// Shards of the local pin cache.
const CACHE_SHARDS: usize = 16;

type HmacSha256 = Hmac<Sha256>;

/// One sticky-session decision, the `result` label of `switchyard_affinity_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AffinityResult {
    /// The request went to the backend its cookie or session was pinned to.
    Hit,
    /// The request had no pin: one was made.
    New,
    /// The pinned backend could not take it (down, ejected, removed, or failed on this
    /// request): the request went elsewhere and the pin moved.
    Repinned,
    /// A cookie or session id that is forged, malformed or too long (then treated as absent).
    Invalid,
}

impl AffinityResult {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Hit => "hit",
            Self::New => "new",
            Self::Repinned => "repinned",
            Self::Invalid => "invalid",
        }
    }
}

/// Whether a backend keeps the clients already pinned to it: healthy (not failing its
/// checks, not ejected). Unlike [`crate::upstream::BackendState::eligible`] a draining
/// backend qualifies: draining stops new sessions, not existing ones.
pub fn keeps_sessions(backend: &BackendRuntime) -> bool {
    backend.state.healthy.load(Ordering::Relaxed) && !backend.state.is_ejected()
}

/// The `switchyard_session` configuration for a `[session_store]` section.
pub fn store_config(section: &SessionStoreSection) -> SessionStoreConfig {
    SessionStoreConfig {
        kind: match section.kind.get_ref() {
            SessionStoreKind::Memory => StoreKind::Memory,
            SessionStoreKind::Redis => StoreKind::Redis,
        },
        url: section.url.clone(),
        nodes: section.nodes.clone(),
        timeout: section.timeout.map(|d| d.get()),
        key_prefix: section
            .key_prefix
            .clone()
            .unwrap_or_else(|| DEFAULT_KEY_PREFIX.to_owned()),
        max_entries: section.max_entries,
    }
}

/// Whether `name` is a valid cookie name (an RFC 6265 token).
fn valid_cookie_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_graphic() && !b"()<>@,;:\\\"/[]?={}".contains(&b))
}

/// Checks an `affinity` table beyond its shape; every problem, as messages.
///
/// An unknown `kind` is reported by the caller, so it gives nothing here.
pub fn validate_section(a: &AffinitySection) -> Vec<String> {
    let mut errors = Vec::new();
    if let Some(ttl) = a.ttl {
        if ttl.get() < Duration::from_secs(1) {
            errors.push("affinity.ttl: expected at least \"1s\"".to_owned());
        }
    }
    if let Some(c) = &a.cookie {
        if !valid_cookie_name(c) {
            errors.push(format!(
                "affinity.cookie `{c}`: expected a cookie name (letters, digits and !#$%&'*+-.^_`|~)"
            ));
        }
    }
    match a.kind.as_str() {
        "cookie" => {
            if a.header.is_some() {
                errors.push(
                    "affinity.header is for kind = \"session\"; the cookie kind sets its own cookie"
                        .to_owned(),
                );
            }
            if a.secret.as_deref() == Some("") {
                errors.push(
                    "affinity.secret: expected a non-empty secret (or leave it out to generate one)"
                        .to_owned(),
                );
            }
        }
        "session" => {
            if a.cookie.is_some() && a.header.is_some() {
                errors.push(
                    "affinity: kind = \"session\" takes the session id from `cookie` or from `header`, not both"
                        .to_owned(),
                );
            }
            if let Some(h) = &a.header {
                if HeaderName::from_bytes(h.as_bytes()).is_err() {
                    errors.push(format!("affinity.header `{h}`: expected a header name"));
                }
            }
            if a.secret.is_some() {
                errors.push(
                    "affinity.secret is for kind = \"cookie\"; session pins live in the session store"
                        .to_owned(),
                );
            }
        }
        _ => {}
    }
    errors
}

/// The key of cookies for upstreams without a `secret`: random, once per process.
fn generated_secret() -> &'static [u8; 32] {
    static SECRET: OnceLock<[u8; 32]> = OnceLock::new();
    SECRET.get_or_init(rand::random)
}

/// Where a session id comes from.
#[derive(Debug)]
enum IdSource {
    Cookie(String),
    Header(HeaderName),
}

struct CookieMode {
    name: String,
    /// The HMAC keyed with the secret (cloned per use, so the key is hashed once).
    mac: HmacSha256,
    /// Each backend's opaque id, by index.
    ids: Vec<[u8; BACKEND_ID_BYTES]>,
    by_id: HashMap<[u8; BACKEND_ID_BYTES], usize>,
}

struct SessionMode {
    source: IdSource,
    /// The fallback (and first placement) of session ids.
    ring: ConsistentHash,
    by_addr: HashMap<String, usize>,
    cache: PinCache,
    /// The store configuration of the runtime this was built for.
    store: SessionStoreConfig,
}

enum Mode {
    Cookie(CookieMode),
    Session(SessionMode),
}

/// The compiled `affinity` of one upstream.
pub struct Affinity {
    upstream: String,
    ttl: Duration,
    mode: Mode,
}

impl fmt::Debug for Affinity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (kind, source) = match &self.mode {
            Mode::Cookie(c) => ("cookie", format!("cookie {}", c.name)),
            Mode::Session(s) => (
                "session",
                match &s.source {
                    IdSource::Cookie(c) => format!("cookie {c}"),
                    IdSource::Header(h) => format!("header {h}"),
                },
            ),
        };
        f.debug_struct("Affinity")
            .field("upstream", &self.upstream)
            .field("kind", &kind)
            .field("source", &source)
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

/// What a cookie said.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CookiePin {
    Absent,
    Invalid,
    Expired,
    /// Genuine; `backend` is `None` when it names a backend this upstream no longer has.
    Valid {
        backend: Option<usize>,
        expires: u64,
    },
}

/// What the session store said about a session id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lookup {
    Pinned(usize),
    /// Pinned to a backend this upstream no longer has.
    Gone,
    Absent,
    Failed,
}

/// What affinity decided for one request, carried from `upstream_peer` to
/// `response_filter`.
#[derive(Debug, Default)]
pub struct Decision {
    /// The backend the request was pinned to and sent to.
    pinned: Option<usize>,
    /// The first decision taken.
    result: Option<AffinityResult>,
    /// Cookie: send the cookie even if the backend did not change (new pin, or refresh).
    refresh: bool,
    /// Session: the id the request carried.
    session: Option<String>,
    /// Session: pin `session` to the backend that answers.
    write: bool,
    /// Session: the store failed; the backend came from the hash ring.
    fallback: bool,
}

impl Decision {
    /// The first decision taken for this request, if any.
    pub fn result(&self) -> Option<AffinityResult> {
        self.result
    }
}

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

const HEX: &[u8; 16] = b"0123456789abcdef";

fn hex_into(out: &mut String, bytes: &[u8]) {
    for b in bytes {
        out.push(HEX[usize::from(b >> 4)] as char);
        out.push(HEX[usize::from(b & 0xf)] as char);
    }
}

/// Lowercase hex only (what the gateway writes), exactly `N` bytes.
fn unhex<const N: usize>(text: &str) -> Option<[u8; N]> {
    let digits = text.as_bytes();
    if digits.len() != 2 * N {
        return None;
    }
    let nibble = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    let mut out = [0u8; N];
    for (i, o) in out.iter_mut().enumerate() {
        *o = (nibble(digits[2 * i])? << 4) | nibble(digits[2 * i + 1])?;
    }
    Some(out)
}

/// Whether `id` can be a session id for affinity: 1 to [`MAX_SESSION_ID_BYTES`] visible
/// ASCII characters.
fn valid_session_id(id: &str) -> bool {
    (1..=MAX_SESSION_ID_BYTES).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_graphic())
}

impl Affinity {
    /// Compile the `affinity` table of `upstream` (validated by [`validate_section`]).
    /// `store` is the runtime's session store configuration (used by `kind = "session"`).
    pub fn build(
        section: &AffinitySection,
        upstream: &UpstreamRuntime,
        store: &SessionStoreConfig,
    ) -> Result<Self, String> {
        let ttl = section.ttl.map_or(DEFAULT_TTL, |d| d.get());
        let mode = match section.kind.as_str() {
            "cookie" => {
                let key: &[u8] = match &section.secret {
                    Some(s) => s.as_bytes(),
                    None => {
                        log::warn!(
                            "upstream `{}`: affinity has no `secret`; using a random one for this \
                             process, so affinity cookies are not recognised by other gateways or \
                             after a restart (set affinity.secret, the same on every gateway)",
                            upstream.name
                        );
                        generated_secret()
                    }
                };
                let mac = HmacSha256::new_from_slice(key)
                    .map_err(|e| format!("upstream `{}`: affinity.secret: {e}", upstream.name))?;
                let ids: Vec<[u8; BACKEND_ID_BYTES]> = upstream
                    .backends
                    .iter()
                    .map(|b| {
                        let tag = mac
                            .clone()
                            .chain_update(b"switchyard backend\0")
                            .chain_update(upstream.name.as_bytes())
                            .chain_update(b"\0")
                            .chain_update(b.addr.as_bytes())
                            .finalize()
                            .into_bytes();
                        let mut id = [0u8; BACKEND_ID_BYTES];
                        id.copy_from_slice(&tag[..BACKEND_ID_BYTES]);
                        id
                    })
                    .collect();
                let by_id = ids.iter().enumerate().map(|(i, id)| (*id, i)).collect();
                Mode::Cookie(CookieMode {
                    name: section
                        .cookie
                        .clone()
                        .unwrap_or_else(|| DEFAULT_COOKIE.to_owned()),
                    mac,
                    ids,
                    by_id,
                })
            }
            "session" => {
                let source = match (&section.header, &section.cookie) {
                    (Some(h), _) => IdSource::Header(
                        HeaderName::from_bytes(h.as_bytes())
                            .map_err(|_| format!("affinity.header `{h}`: not a header name"))?,
                    ),
                    (None, Some(c)) => IdSource::Cookie(c.clone()),
                    (None, None) => IdSource::Cookie(DEFAULT_SESSION_COOKIE.to_owned()),
                };
                let plugins: Vec<Backend> =
                    upstream.backends.iter().map(|b| b.plugin.clone()).collect();
                Mode::Session(SessionMode {
                    source,
                    ring: ConsistentHash::new(&plugins),
                    by_addr: upstream
                        .backends
                        .iter()
                        .enumerate()
                        .map(|(i, b)| (b.addr.clone(), i))
                        .collect(),
                    cache: PinCache::new(PIN_CACHE_ENTRIES, PIN_CACHE_TTL),
                    store: store.clone(),
                })
            }
            other => {
                return Err(format!(
                    "upstream `{}`: affinity.kind `{other}`: expected \"cookie\" or \"session\"",
                    upstream.name
                ))
            }
        };
        Ok(Self {
            upstream: upstream.name.clone(),
            ttl,
            mode,
        })
    }

    /// `"cookie"` or `"session"`.
    pub fn kind(&self) -> &'static str {
        match self.mode {
            Mode::Cookie(_) => "cookie",
            Mode::Session(_) => "session",
        }
    }

    /// How long a pin lives.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    fn count(&self, shared: &Shared, result: AffinityResult) {
        shared.metrics.affinity(&self.upstream, result.as_str());
    }

    /// The backend for the first attempt of a request: the pinned one when it can take
    /// the request, else the balancer's (cookie) or the ring's (session) choice. `None`:
    /// no eligible backend. Fills `decision` for [`Affinity::on_response`].
    pub async fn choose(
        &self,
        shared: &Shared,
        req: &RequestHeader,
        upstream: &UpstreamRuntime,
        client_ip: Option<std::net::IpAddr>,
        key: Option<&[u8]>,
        decision: &mut Decision,
    ) -> Option<usize> {
        match &self.mode {
            Mode::Cookie(c) => {
                let now = now_unix();
                let result = match self.decode(c, cookie_value(&req.headers, &c.name), now) {
                    CookiePin::Valid {
                        backend: Some(i),
                        expires,
                    } if keeps_sessions(&upstream.backends[i]) => {
                        decision.pinned = Some(i);
                        decision.result = Some(AffinityResult::Hit);
                        // Sliding expiry: renew once half the lifetime is gone.
                        decision.refresh = expires.saturating_sub(now) < self.ttl.as_secs() / 2;
                        self.count(shared, AffinityResult::Hit);
                        return Some(i);
                    }
                    CookiePin::Valid { .. } => AffinityResult::Repinned,
                    CookiePin::Invalid => {
                        self.count(shared, AffinityResult::Invalid);
                        AffinityResult::New
                    }
                    CookiePin::Absent | CookiePin::Expired => AffinityResult::New,
                };
                let i = upstream.pick(client_ip, key, None)?;
                decision.result = Some(result);
                decision.refresh = true;
                self.count(shared, result);
                Some(i)
            }
            Mode::Session(s) => {
                let id = match self.request_id(s, req) {
                    None => return upstream.pick(client_ip, key, None),
                    Some(id) if !valid_session_id(id) => {
                        self.count(shared, AffinityResult::Invalid);
                        return upstream.pick(client_ip, key, None);
                    }
                    Some(id) => id.to_owned(),
                };
                let lookup = self.lookup(shared, s, &id).await;
                let result = match lookup {
                    Lookup::Pinned(i) if keeps_sessions(&upstream.backends[i]) => {
                        decision.pinned = Some(i);
                        decision.result = Some(AffinityResult::Hit);
                        decision.session = Some(id);
                        self.count(shared, AffinityResult::Hit);
                        return Some(i);
                    }
                    Lookup::Pinned(_) | Lookup::Gone => AffinityResult::Repinned,
                    Lookup::Absent => AffinityResult::New,
                    Lookup::Failed => {
                        decision.fallback = true;
                        decision.session = Some(id);
                        return ring_owner(s, upstream, decision.session.as_deref());
                    }
                };
                let i = ring_owner(s, upstream, Some(&id))?;
                decision.result = Some(result);
                decision.session = Some(id);
                decision.write = true;
                self.count(shared, result);
                Some(i)
            }
        }
    }

    /// A retry is about to leave backend `failed`: a pinned request moves (and its pin
    /// with it, in [`Affinity::on_response`]).
    pub fn on_retry(&self, shared: &Shared, decision: &mut Decision, failed: Option<usize>) {
        if decision.pinned.is_some() && decision.pinned == failed {
            decision.pinned = None;
            decision.result = Some(AffinityResult::Repinned);
            match self.mode {
                Mode::Cookie(_) => decision.refresh = true,
                Mode::Session(_) => decision.write = !decision.fallback,
            }
            self.count(shared, AffinityResult::Repinned);
        }
    }

    /// The response of `backend` is about to go to the client: set the affinity cookie,
    /// or record the session pin (a new or moved pin, or an id the response creates).
    pub async fn on_response(
        &self,
        shared: &Shared,
        decision: &mut Decision,
        upstream: &UpstreamRuntime,
        backend: Option<usize>,
        resp: &mut ResponseHeader,
        tls: bool,
    ) {
        let Some(b) = backend else { return };
        match &self.mode {
            Mode::Cookie(c) => {
                if decision.refresh || decision.pinned != Some(b) {
                    let value = self.set_cookie(c, b, now_unix(), tls);
                    if let Ok(v) = HeaderValue::from_str(&value) {
                        let _ = resp.append_header(header::SET_COOKIE, v);
                    }
                }
            }
            Mode::Session(s) => {
                let issued = issued_id(s, resp);
                if let Some(new_id) = issued.filter(|n| Some(n) != decision.session.as_ref()) {
                    if decision.result.is_none() {
                        self.count(shared, AffinityResult::New);
                    }
                    self.pin(shared, s, upstream, &new_id, b).await;
                } else if let Some(id) = &decision.session {
                    if !decision.fallback && (decision.write || decision.pinned != Some(b)) {
                        self.pin(shared, s, upstream, id, b).await;
                    }
                }
            }
        }
    }

    /// The session id of a request (unchecked), from its cookie or header.
    /// The application session id `req` carries, for session-id affinity (`None` for cookie
    /// affinity or when the request has none).
    pub fn session_id<'r>(&self, req: &'r RequestHeader) -> Option<&'r str> {
        match &self.mode {
            Mode::Session(s) => self.request_id(s, req).filter(|id| valid_session_id(id)),
            Mode::Cookie(_) => None,
        }
    }

    fn request_id<'r>(&self, s: &SessionMode, req: &'r RequestHeader) -> Option<&'r str> {
        match &s.source {
            IdSource::Cookie(name) => cookie_value(&req.headers, name),
            IdSource::Header(name) => req.headers.get(name).and_then(|v| v.to_str().ok()),
        }
        .map(str::trim)
        .filter(|id| !id.is_empty())
    }

    /// The pin of `id`: the local cache, else the store (whose TTL then slides).
    async fn lookup(&self, shared: &Shared, s: &SessionMode, id: &str) -> Lookup {
        if let Some(i) = s.cache.get(id) {
            return Lookup::Pinned(i);
        }
        let Some(store) = shared.session_store().await else {
            store_error(shared, "connect", &"the session store is not ready");
            return Lookup::Failed;
        };
        let key = affinity_key(&self.upstream, id);
        let guard = op_guard(&s.store);
        match tokio::time::timeout(guard, store.get_raw(&key)).await {
            Ok(Ok(Some(addr))) => match s.by_addr.get(addr.as_str()) {
                Some(&i) => {
                    s.cache.put(id, i);
                    let ttl = self.ttl;
                    let metrics = shared.metrics.clone();
                    tokio::spawn(async move {
                        match tokio::time::timeout(guard, store.touch(&key, ttl)).await {
                            Ok(Ok(_)) => {}
                            Ok(Err(e)) => store_error_metrics(&metrics, "touch", &e),
                            Err(_) => store_error_metrics(&metrics, "touch", &"timed out"),
                        }
                    });
                    Lookup::Pinned(i)
                }
                None => Lookup::Gone,
            },
            Ok(Ok(None)) => Lookup::Absent,
            Ok(Err(e)) => {
                store_error(shared, "get", &e);
                Lookup::Failed
            }
            Err(_) => {
                store_error(shared, "get", &"timed out");
                Lookup::Failed
            }
        }
    }

    /// Pin `id` to backend `b`, in the local cache and in the store.
    async fn pin(
        &self,
        shared: &Shared,
        s: &SessionMode,
        upstream: &UpstreamRuntime,
        id: &str,
        b: usize,
    ) {
        if !valid_session_id(id) {
            return;
        }
        s.cache.put(id, b);
        let Some(store) = shared.session_store().await else {
            store_error(shared, "connect", &"the session store is not ready");
            return;
        };
        let key = affinity_key(&self.upstream, id);
        let addr = &upstream.backends[b].addr;
        match tokio::time::timeout(op_guard(&s.store), store.set_raw(&key, addr, self.ttl)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => store_error(shared, "set", &e),
            Err(_) => store_error(shared, "set", &"timed out"),
        }
    }

    /// The MAC of a cookie naming backend id `id_hex` until `expires`.
    fn cookie_mac(&self, c: &CookieMode, id_hex: &str, expires: &str) -> HmacSha256 {
        c.mac
            .clone()
            .chain_update(b"switchyard pin\0")
            .chain_update(self.upstream.as_bytes())
            .chain_update(b"\0")
            .chain_update(id_hex.as_bytes())
            .chain_update(b".")
            .chain_update(expires.as_bytes())
    }

    /// The cookie value pinning backend `b` from `now` for the TTL.
    fn cookie_value(&self, c: &CookieMode, b: usize, now: u64) -> String {
        let mut value = String::with_capacity(2 * (BACKEND_ID_BYTES + MAC_BYTES) + 24);
        hex_into(&mut value, &c.ids[b]);
        let id_len = value.len();
        let expires = now.saturating_add(self.ttl.as_secs()).to_string();
        let tag = self
            .cookie_mac(c, &value[..id_len], &expires)
            .finalize()
            .into_bytes();
        value.push('.');
        value.push_str(&expires);
        value.push('.');
        hex_into(&mut value, &tag[..MAC_BYTES]);
        value
    }

    /// The `Set-Cookie` value pinning backend `b`.
    fn set_cookie(&self, c: &CookieMode, b: usize, now: u64, tls: bool) -> String {
        format!(
            "{}={}; Path=/; Max-Age={}; HttpOnly; SameSite=Lax{}",
            c.name,
            self.cookie_value(c, b, now),
            self.ttl.as_secs(),
            if tls { "; Secure" } else { "" }
        )
    }

    /// Read an affinity cookie value.
    fn decode(&self, c: &CookieMode, value: Option<&str>, now: u64) -> CookiePin {
        let Some(value) = value.filter(|v| !v.is_empty()) else {
            return CookiePin::Absent;
        };
        if value.len() > MAX_COOKIE_VALUE {
            return CookiePin::Invalid;
        }
        let mut parts = value.split('.');
        let (Some(id_hex), Some(expires), Some(tag_hex), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return CookiePin::Invalid;
        };
        let (Some(id), Some(tag)) = (
            unhex::<BACKEND_ID_BYTES>(id_hex),
            unhex::<MAC_BYTES>(tag_hex),
        ) else {
            return CookiePin::Invalid;
        };
        if expires.is_empty() || expires.len() > 19 || !expires.bytes().all(|b| b.is_ascii_digit())
        {
            return CookiePin::Invalid;
        }
        if self
            .cookie_mac(c, id_hex, expires)
            .verify_truncated_left(&tag)
            .is_err()
        {
            return CookiePin::Invalid;
        }
        let Ok(expires) = expires.parse::<u64>() else {
            return CookiePin::Invalid;
        };
        if expires < now {
            return CookiePin::Expired;
        }
        CookiePin::Valid {
            backend: c.by_id.get(&id).copied(),
            expires,
        }
    }
}

/// The consistent-hash owner of session `id` among the eligible backends.
fn ring_owner(s: &SessionMode, upstream: &UpstreamRuntime, id: Option<&str>) -> Option<usize> {
    let backends = &upstream.backends;
    let eligible = |i: usize| backends[i].state.eligible();
    let pick = Pick::new(backends.len(), &eligible).with_key(id.map(str::as_bytes));
    s.ring.pick(&pick)
}

/// The session id a response creates or changes, if any: the value of its `Set-Cookie`
/// for the session cookie (not a deletion), or of the session header.
fn issued_id(s: &SessionMode, resp: &ResponseHeader) -> Option<String> {
    match &s.source {
        IdSource::Header(name) => resp
            .headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
            .filter(|v| valid_session_id(v))
            .map(str::to_owned),
        IdSource::Cookie(name) => {
            let mut found = None;
            for v in resp.headers.get_all(header::SET_COOKIE) {
                let Ok(v) = v.to_str() else { continue };
                let mut attrs = v.split(';');
                let Some((n, value)) = attrs.next().and_then(|p| p.trim().split_once('=')) else {
                    continue;
                };
                if n.trim() != name {
                    continue;
                }
                let value = value.trim().trim_matches('"');
                let deleted = value.is_empty()
                    || attrs.any(|a| {
                        a.trim()
                            .split_once('=')
                            .filter(|(k, _)| k.trim().eq_ignore_ascii_case("max-age"))
                            .is_some_and(|(_, v)| v.trim().parse::<i64>().map_or(true, |n| n <= 0))
                    });
                // The last Set-Cookie of a name wins, as in a browser.
                found = (!deleted && valid_session_id(value)).then(|| value.to_owned());
            }
            found
        }
    }
}

/// The bound on one store operation, beyond the store's own timeout.
fn op_guard(config: &SessionStoreConfig) -> Duration {
    config.effective_timeout() * 2
}

fn store_error(shared: &Shared, op: &str, why: &dyn fmt::Display) {
    store_error_metrics(&shared.metrics, op, why);
}

fn store_error_metrics(metrics: &crate::metrics::Metrics, op: &str, why: &dyn fmt::Display) {
    metrics.session_store_error(op);
    // At most one warning every 10 seconds: an outage must not flood the log.
    static LAST: AtomicU64 = AtomicU64::new(0);
    static START: OnceLock<Instant> = OnceLock::new();
    let now = START.get_or_init(Instant::now).elapsed().as_secs() + 10;
    let last = LAST.load(Ordering::Relaxed);
    if now >= last + 10
        && LAST
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
    {
        log::warn!("session store {op} failed: {why}; affinity falls back to hashing session ids");
    }
}

/// One shard of the pin cache: session id → (backend index, when cached).
type PinShard = HashMap<Box<str>, (usize, Instant)>;

/// A small bounded cache of session pins, each kept for a short time.
struct PinCache {
    shards: Box<[Mutex<PinShard>]>,
    hasher: RandomState,
    per_shard: usize,
    ttl: Duration,
}

impl PinCache {
    fn new(entries: usize, ttl: Duration) -> Self {
        Self {
            shards: (0..CACHE_SHARDS)
                .map(|_| Mutex::new(HashMap::new()))
                .collect(),
            hasher: RandomState::new(),
            per_shard: entries.div_ceil(CACHE_SHARDS).max(1),
            ttl,
        }
    }

    fn shard(&self, id: &str) -> std::sync::MutexGuard<'_, PinShard> {
        let i = (self.hasher.hash_one(id) % CACHE_SHARDS as u64) as usize;
        self.shards[i].lock().unwrap_or_else(|e| e.into_inner())
    }

    fn get(&self, id: &str) -> Option<usize> {
        let mut shard = self.shard(id);
        match shard.get(id) {
            Some(&(i, at)) if at.elapsed() < self.ttl => Some(i),
            Some(_) => {
                shard.remove(id);
                None
            }
            None => None,
        }
    }

    fn put(&self, id: &str, backend: usize) {
        let mut shard = self.shard(id);
        if shard.len() >= self.per_shard && !shard.contains_key(id) {
            let ttl = self.ttl;
            shard.retain(|_, (_, at)| at.elapsed() < ttl);
            if shard.len() >= self.per_shard {
                shard.clear();
            }
        }
        shard.insert(id.into(), (backend, Instant::now()));
    }
}

/// The session store, built on first use from the running configuration's
/// `[session_store]` (and built again if a reload changes that section).
///
/// Building happens on a task of its own; callers wait for it at most the store's
/// timeout, then degrade (a Redis that is down at start takes about a second to give up
/// its first connection attempt).
pub struct SessionStoreHandle {
    slot: ArcSwap<StoreSlot>,
}

struct StoreSlot {
    config: SessionStoreConfig,
    cell: OnceCell<Arc<dyn SessionStore>>,
    started: AtomicBool,
    ready: Notify,
}

impl StoreSlot {
    fn new(config: SessionStoreConfig) -> Self {
        Self {
            config,
            cell: OnceCell::new(),
            started: AtomicBool::new(false),
            ready: Notify::new(),
        }
    }
}

impl fmt::Debug for SessionStoreHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let slot = self.slot.load();
        f.debug_struct("SessionStoreHandle")
            .field("config", &slot.config)
            .field("built", &slot.cell.initialized())
            .finish()
    }
}

impl SessionStoreHandle {
    /// A handle for `config`; nothing is built yet.
    pub fn new(config: SessionStoreConfig) -> Self {
        Self {
            slot: ArcSwap::from_pointee(StoreSlot::new(config)),
        }
    }

    /// The store for `config`, building it on first use (on a task of its own, inside the
    /// current Tokio runtime); `None` if it is not ready within the store's timeout.
    pub async fn get(&self, config: &SessionStoreConfig) -> Option<Arc<dyn SessionStore>> {
        let mut slot = self.slot.load_full();
        if slot.config != *config {
            // A reload changed `[session_store]`: a new store replaces the old one, which
            // stops once the requests using it are done.
            self.slot.rcu(|cur| {
                if cur.config == *config {
                    Arc::clone(cur)
                } else {
                    Arc::new(StoreSlot::new(config.clone()))
                }
            });
            slot = self.slot.load_full();
        }
        if let Some(store) = slot.cell.get() {
            return Some(Arc::clone(store));
        }
        let notified = slot.ready.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        if !slot.started.swap(true, Ordering::AcqRel) {
            let building = Arc::clone(&slot);
            tokio::spawn(async move {
                match switchyard_session::build(&building.config).await {
                    Ok(store) => {
                        log::info!("session store ready: {}", store.kind());
                        let _ = building.cell.set(store);
                    }
                    Err(e) => {
                        log::error!("cannot build the session store: {e}");
                        // Let a later request try again, but not at once.
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        building.started.store(false, Ordering::Release);
                    }
                }
                building.ready.notify_waiters();
            });
        }
        if let Some(store) = slot.cell.get() {
            return Some(Arc::clone(store));
        }
        let _ = tokio::time::timeout(slot.config.effective_timeout(), notified).await;
        slot.cell.get().cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ConfigDuration;

    fn section(kind: &str) -> AffinitySection {
        AffinitySection {
            kind: kind.to_owned(),
            cookie: None,
            header: None,
            ttl: None,
            secret: Some("s3cret".to_owned()),
        }
    }

    fn cookie_mode(name: &str, secret: &[u8], addrs: &[&str]) -> (Affinity, Vec<String>) {
        let mac = HmacSha256::new_from_slice(secret).unwrap();
        let ids: Vec<[u8; BACKEND_ID_BYTES]> = addrs
            .iter()
            .map(|a| {
                let t = mac
                    .clone()
                    .chain_update(b"switchyard backend\0")
                    .chain_update(name.as_bytes())
                    .chain_update(b"\0")
                    .chain_update(a.as_bytes())
                    .finalize()
                    .into_bytes();
                let mut id = [0u8; BACKEND_ID_BYTES];
                id.copy_from_slice(&t[..BACKEND_ID_BYTES]);
                id
            })
            .collect();
        let by_id = ids.iter().enumerate().map(|(i, id)| (*id, i)).collect();
        (
            Affinity {
                upstream: name.to_owned(),
                ttl: DEFAULT_TTL,
                mode: Mode::Cookie(CookieMode {
                    name: DEFAULT_COOKIE.to_owned(),
                    mac,
                    ids,
                    by_id,
                }),
            },
            addrs.iter().map(|a| a.to_string()).collect(),
        )
    }

    fn cm(a: &Affinity) -> &CookieMode {
        match &a.mode {
            Mode::Cookie(c) => c,
            Mode::Session(_) => unreachable!(),
        }
    }

    #[test]
    fn cookie_round_trip_and_opacity() {
        let (a, addrs) = cookie_mode("app", b"k", &["127.0.0.1:9001", "127.0.0.1:9002"]);
        let now = 1_700_000_000;
        for b in 0..2 {
            let v = a.cookie_value(cm(&a), b, now);
            assert!(v.len() <= MAX_COOKIE_VALUE, "{v}");
            assert!(!v.contains("127.0.0.1") && !v.contains("900"), "{v}");
            assert_eq!(
                a.decode(cm(&a), Some(&v), now),
                CookiePin::Valid {
                    backend: Some(b),
                    expires: now + 3600
                }
            );
        }
        let _ = addrs;
        // Same backend, same secret: the id part is stable; different backends differ.
        let v0 = a.cookie_value(cm(&a), 0, now);
        let v1 = a.cookie_value(cm(&a), 1, now);
        assert_ne!(v0.split('.').next(), v1.split('.').next());
    }

    #[test]
    fn forged_and_malformed_cookies_are_invalid() {
        let (a, _) = cookie_mode("app", b"k", &["127.0.0.1:9001", "127.0.0.1:9002"]);
        let now = 1_700_000_000;
        let v = a.cookie_value(cm(&a), 0, now);
        let c = cm(&a);
        // Flip one character anywhere.
        for i in 0..v.len() {
            let mut bytes = v.clone().into_bytes();
            bytes[i] = if bytes[i] == b'0' { b'1' } else { b'0' };
            let t = String::from_utf8(bytes).unwrap();
            if t != v {
                assert_eq!(a.decode(c, Some(&t), now), CookiePin::Invalid, "{t}");
            }
        }
        // Pointing the id at the other backend without the key.
        let v1 = a.cookie_value(c, 1, now);
        let spliced = format!(
            "{}.{}",
            v1.split('.').next().unwrap(),
            v.split_once('.').unwrap().1
        );
        assert_eq!(a.decode(c, Some(&spliced), now), CookiePin::Invalid);
        for bad in [
            "x",
            "..",
            "a.b.c",
            "0.0.0.0",
            &"a".repeat(500),
            &v.to_uppercase(),
        ] {
            assert_eq!(a.decode(c, Some(bad), now), CookiePin::Invalid, "{bad}");
        }
        assert_eq!(a.decode(c, None, now), CookiePin::Absent);
        assert_eq!(a.decode(c, Some(""), now), CookiePin::Absent);
        // Another secret, or another upstream, does not accept it.
        let (other, _) = cookie_mode("app", b"other", &["127.0.0.1:9001"]);
        assert_eq!(other.decode(cm(&other), Some(&v), now), CookiePin::Invalid);
        let (other, _) = cookie_mode("web", b"k", &["127.0.0.1:9001"]);
        assert_eq!(other.decode(cm(&other), Some(&v), now), CookiePin::Invalid);
        // Expired.
        assert_eq!(a.decode(c, Some(&v), now + 3601), CookiePin::Expired);
        // A removed backend: genuine, names nobody.
        let (fewer, _) = cookie_mode("app", b"k", &["127.0.0.1:9001"]);
        assert_eq!(
            fewer.decode(cm(&fewer), Some(&v1), now),
            CookiePin::Valid {
                backend: None,
                expires: now + 3600
            }
        );
    }

    #[test]
    fn set_cookie_attributes() {
        let (a, _) = cookie_mode("app", b"k", &["127.0.0.1:9001"]);
        let plain = a.set_cookie(cm(&a), 0, 1, false);
        assert!(plain.starts_with("SWY_AFFINITY="), "{plain}");
        assert!(
            plain.ends_with("; Path=/; Max-Age=3600; HttpOnly; SameSite=Lax"),
            "{plain}"
        );
        assert!(a.set_cookie(cm(&a), 0, 1, true).ends_with("; Secure"));
        assert!(HeaderValue::from_str(&plain).is_ok());
    }

    #[test]
    fn validation() {
        assert!(validate_section(&section("cookie")).is_empty());
        let mut s = section("cookie");
        s.header = Some("x-session".into());
        s.ttl = Some(ConfigDuration(Duration::from_millis(10)));
        s.cookie = Some("bad name".into());
        assert_eq!(validate_section(&s).len(), 3, "{:?}", validate_section(&s));
        let mut s = section("session");
        s.secret = None;
        assert!(validate_section(&s).is_empty());
        s.cookie = Some("SESSION".into());
        s.header = Some("x-session-id".into());
        assert_eq!(validate_section(&s).len(), 1);
        s.cookie = None;
        s.header = Some("bad header".into());
        s.secret = Some("x".into());
        assert_eq!(validate_section(&s).len(), 2);
    }

    #[test]
    fn issued_ids_from_set_cookie() {
        let s = SessionMode {
            source: IdSource::Cookie("SESSION".into()),
            ring: ConsistentHash::new(&[]),
            by_addr: HashMap::new(),
            cache: PinCache::new(10, PIN_CACHE_TTL),
            store: SessionStoreConfig::default(),
        };
        let resp = |cookies: &[&str]| {
            let mut r = ResponseHeader::build(200, None).unwrap();
            for c in cookies {
                r.append_header("set-cookie", *c).unwrap();
            }
            r
        };
        assert_eq!(
            issued_id(&s, &resp(&["a=1", "SESSION=abc; Path=/; HttpOnly"])),
            Some("abc".into())
        );
        assert_eq!(issued_id(&s, &resp(&["SESSIONX=abc"])), None);
        assert_eq!(issued_id(&s, &resp(&["SESSION=; Max-Age=0"])), None);
        assert_eq!(issued_id(&s, &resp(&["SESSION=abc; Max-Age=0"])), None);
        assert_eq!(
            issued_id(&s, &resp(&["SESSION=abc; max-age=60"])),
            Some("abc".into())
        );
        assert_eq!(issued_id(&s, &resp(&[])), None);
    }

    #[test]
    fn pin_cache_expires_and_stays_bounded() {
        let c = PinCache::new(32, Duration::from_millis(50));
        c.put("a", 1);
        assert_eq!(c.get("a"), Some(1));
        c.put("a", 2);
        assert_eq!(c.get("a"), Some(2));
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(c.get("a"), None);
        let c = PinCache::new(32, Duration::from_secs(10));
        for i in 0..10_000 {
            c.put(&format!("id{i}"), i);
        }
        let total: usize = c.shards.iter().map(|s| s.lock().unwrap().len()).sum();
        assert!(total <= 32 + CACHE_SHARDS, "{total}");
    }

    #[test]
    fn session_ids() {
        assert!(valid_session_id("abc-123_=="));
        assert!(!valid_session_id(""));
        assert!(!valid_session_id("has space"));
        assert!(!valid_session_id(&"x".repeat(MAX_SESSION_ID_BYTES + 1)));
    }

    #[test]
    fn store_config_mapping() {
        let s = SessionStoreSection::default();
        let c = store_config(&s);
        assert_eq!(c, SessionStoreConfig::default());
        c.validate().unwrap();
    }

    #[tokio::test]
    async fn store_is_built_on_first_use_and_rebuilt_on_change() {
        let h = SessionStoreHandle::new(SessionStoreConfig::default());
        let a = h
            .get(&SessionStoreConfig::default())
            .await
            .expect("memory store");
        let b = h.get(&SessionStoreConfig::default()).await.unwrap();
        assert!(Arc::ptr_eq(&a, &b));
        let other = SessionStoreConfig {
            key_prefix: "x:".into(),
            ..Default::default()
        };
        let c = h.get(&other).await.unwrap();
        assert_eq!(c.key_prefix(), "x:");
    }
}
