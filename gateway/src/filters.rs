//! Glue between pingora's phases and `switchyard_plugin::filter`:
//! header editors over pingora's heads, the answer a filter makes, the fleet counter over
//! the session store, per-route compression (a downstream module) and per-route caches.

use std::any::Any;
use std::collections::HashMap;
use std::sync::{LazyLock, Mutex};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use http::{HeaderMap, Method, Uri};
use pingora_cache::cache_control::{CacheControl, InterpretCacheControl};
use pingora_cache::eviction::simple_lru;
use pingora_cache::filters::calculate_fresh_until;
use pingora_cache::lock::{CacheKeyLockImpl, CacheLock};
use pingora_cache::{CacheMeta, CacheMetaDefaults, MemCache, NoCacheReason, RespCacheable};
use pingora_core::modules::http::{HttpModule, HttpModuleBuilder, Module};
use pingora_core::protocols::http::compression::{Algorithm, ResponseCompressionCtx};
use pingora_error::Result;
use pingora_http::{RequestHeader, ResponseHeader};
use pingora_proxy::Session;
use switchyard_filters::{CacheSettings, Encoding};
use switchyard_plugin::{
    CounterError, HeaderEditor, RequestHeadEditor, Response, SessionAccess, SharedCounter,
};

use crate::proxy::X_REQUEST_ID;
use crate::state::Shared;

/// Pingora's request to the backend, as filters edit it (after the forwarding headers: see
/// [`crate::proxy::add_forwarding_headers`]).
pub struct UpstreamHead<'a>(pub &'a mut RequestHeader);

impl HeaderEditor for UpstreamHead<'_> {
    fn headers(&self) -> &HeaderMap {
        &self.0.headers
    }
    fn insert(&mut self, name: HeaderName, value: HeaderValue) {
        // Only fails converting the value, which is already a HeaderValue.
        let _ = self.0.insert_header(name, value);
    }
    fn append(&mut self, name: HeaderName, value: HeaderValue) {
        let _ = self.0.append_header(name, value);
    }
    fn remove(&mut self, name: &HeaderName) {
        self.0.remove_header(name);
    }
}

impl RequestHeadEditor for UpstreamHead<'_> {
    fn method(&self) -> &Method {
        &self.0.method
    }
    fn uri(&self) -> &Uri {
        &self.0.uri
    }
    fn set_uri(&mut self, uri: Uri) {
        self.0.set_uri(uri);
    }
}

/// Pingora's response to the client, as filters edit it.
pub struct ResponseHead<'a>(pub &'a mut ResponseHeader);

impl HeaderEditor for ResponseHead<'_> {
    fn headers(&self) -> &HeaderMap {
        &self.0.headers
    }
    fn insert(&mut self, name: HeaderName, value: HeaderValue) {
        let _ = self.0.insert_header(name, value);
    }
    fn append(&mut self, name: HeaderName, value: HeaderValue) {
        let _ = self.0.append_header(name, value);
    }
    fn remove(&mut self, name: &HeaderName) {
        self.0.remove_header(name);
    }
}

/// Send the answer a filter made (`Flow::Respond`): its headers, `Content-Length`, the
/// request id; no body for `HEAD`. A request whose body was not read closes the connection
/// afterwards (the unread body cannot be skipped safely).
pub async fn write_filter_response(
    session: &mut Session,
    response: Response,
    request_id: Option<&HeaderValue>,
) -> Result<()> {
    let mut head = ResponseHeader::build(response.status, Some(response.headers.len() + 2))?;
    for (name, value) in response.headers.iter() {
        head.append_header(name.clone(), value.clone())?;
    }
    head.insert_header(header::CONTENT_LENGTH, response.body.len())?;
    if let Some(id) = request_id {
        head.insert_header(X_REQUEST_ID.clone(), id.clone())?;
    }
    if !session.is_body_empty() {
        session.set_keepalive(None);
    }
    let head_only = session.req_header().method == Method::HEAD || response.body.is_empty();
    session
        .write_response_header(Box::new(head), head_only)
        .await?;
    if !head_only {
        session
            .write_response_body(Some(response.body), true)
            .await?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// The fleet-wide counter of cluster rate limits, over the session store.

/// [`SharedCounter`] over the session store: what cluster rate limits count with.
pub struct StoreCounter<'a>(pub &'a Shared);

#[async_trait]
impl SharedCounter for StoreCounter<'_> {
    async fn incr_window(
        &self,
        key: &str,
        window: Duration,
    ) -> std::result::Result<u64, CounterError> {
        let Some(store) = self.0.session_store().await else {
            return Err(CounterError("session store not ready".into()));
        };
        store.incr(key, window).await.map_err(|e| {
            self.0.metrics.session_store_error("incr");
            CounterError(e.to_string())
        })
    }
}

// ---------------------------------------------------------------------------------------
// The request's application session, over the session store.

/// [`SessionAccess`] over the session store: the JSON at `session:{id}`.
pub struct StoreSession<'a> {
    /// The shared state (its session store).
    pub shared: &'a Shared,
    /// The session id the request carries.
    pub id: &'a str,
}

#[async_trait]
impl SessionAccess for StoreSession<'_> {
    fn id(&self) -> &str {
        self.id
    }

    async fn get(&self) -> std::result::Result<Option<serde_json::Value>, CounterError> {
        let Some(store) = self.shared.session_store().await else {
            return Err(CounterError("session store not ready".into()));
        };
        store
            .get(&switchyard_session::session_key(self.id))
            .await
            .map_err(|e| {
                self.shared.metrics.session_store_error("get");
                CounterError(e.to_string())
            })
    }

    async fn set(
        &self,
        value: &serde_json::Value,
        ttl: Duration,
    ) -> std::result::Result<(), CounterError> {
        let Some(store) = self.shared.session_store().await else {
            return Err(CounterError("session store not ready".into()));
        };
        store
            .set(&switchyard_session::session_key(self.id), value, ttl)
            .await
            .map_err(|e| {
                self.shared.metrics.session_store_error("set");
                CounterError(e.to_string())
            })
    }
}

// ---------------------------------------------------------------------------------------
// Compression: pingora's compressor, switched on per request by the route's `compress`.

/// The downstream module that compresses responses of routes with `compress`. Replaces
/// pingora's default (disabled) `ResponseCompression`: add it in `init_downstream_modules`.
#[derive(Default)]
pub struct RouteCompression {
    ctx: Option<ResponseCompressionCtx>,
    min_bytes: u64,
}

impl RouteCompression {
    /// Compress this request's response with `encoding` if it is at least `min_bytes`.
    pub fn enable(&mut self, encoding: Encoding, min_bytes: u64) {
        let algorithm = match encoding {
            Encoding::Brotli => Algorithm::Brotli,
            Encoding::Zstd => Algorithm::Zstd,
            Encoding::Gzip => Algorithm::Gzip,
        };
        let mut ctx = ResponseCompressionCtx::new(0, false, false);
        ctx.adjust_algorithm_level(algorithm, encoding.default_level());
        // Pingora compresses with the first encoding the request lists: give it only the
        // one negotiated (q-values and the route's preference order).
        if let Ok(mut accept) = RequestHeader::build("GET", b"/", Some(1)) {
            if accept
                .insert_header(header::ACCEPT_ENCODING, encoding.as_str())
                .is_ok()
            {
                ctx.request_filter(&accept);
                self.ctx = Some(ctx);
                self.min_bytes = min_bytes;
            }
        }
    }

    fn active(&mut self) -> Option<&mut ResponseCompressionCtx> {
        self.ctx
            .as_mut()
            .filter(|c| c.is_enabled() && !c.is_header_phase())
    }
}

#[async_trait]
impl HttpModule for RouteCompression {
    fn as_any(&self) -> &dyn Any {
        self
    }
    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }

    async fn response_header_filter(
        &mut self,
        resp: &mut ResponseHeader,
        end_of_stream: bool,
    ) -> Result<()> {
        let Some(ctx) = self.ctx.as_mut() else {
            return Ok(());
        };
        if resp.status.is_informational() && resp.status != http::StatusCode::SWITCHING_PROTOCOLS {
            return Ok(()); // wait for the final head
        }
        let length = resp
            .headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        let partial = resp.status == http::StatusCode::PARTIAL_CONTENT
            || resp.headers.contains_key(header::CONTENT_RANGE);
        if partial || length.is_some_and(|l| l < self.min_bytes) {
            self.ctx = None;
            return Ok(());
        }
        ctx.response_header_filter(resp, end_of_stream);
        Ok(())
    }

    fn response_body_filter(
        &mut self,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
    ) -> Result<()> {
        if let Some(ctx) = self.active() {
            if let Some(compressed) = ctx.response_body_filter(body.as_ref(), end_of_stream) {
                *body = Some(compressed);
            }
        }
        Ok(())
    }

    fn response_done_filter(&mut self) -> Result<Option<Bytes>> {
        Ok(self
            .active()
            .and_then(|ctx| ctx.response_body_filter(None, true)))
    }
}

/// Builds [`RouteCompression`] for each request.
pub struct RouteCompressionBuilder;

impl HttpModuleBuilder for RouteCompressionBuilder {
    fn init(&self) -> Module {
        Box::new(RouteCompression::default())
    }
    fn order(&self) -> i16 {
        // As pingora's own compression: after the other modules' response filters.
        i16::MIN / 2
    }
}

// ---------------------------------------------------------------------------------------
// Cache: one in-memory store per route, bounded by its `max_bytes`.

/// A route's cache: storage, LRU eviction by bytes, and the lock that lets one request
/// fill a missing entry while the others wait for it. `'static` as pingora requires.
pub struct RouteCache {
    /// Storage (pingora's in-memory store).
    pub storage: &'static MemCache,
    /// Evicts the least recently used entries beyond `max_bytes`.
    pub eviction: &'static simple_lru::Manager,
    /// One filler per key.
    pub lock: &'static CacheKeyLockImpl,
    /// The route's settings.
    pub settings: CacheSettings,
}

impl std::fmt::Debug for RouteCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RouteCache")
            .field("settings", &self.settings)
            .finish()
    }
}

static CACHES: LazyLock<Mutex<HashMap<(String, u64), &'static RouteCache>>> =
    LazyLock::new(|| Mutex::new(HashMap::new()));

/// The cache of route `route` (built on first use, kept across reloads while the route
/// keeps its name and `max_bytes`; a cache no configuration uses any more is leaked: a few
/// bytes of structure, its entries age out of the LRU only when reused).
pub fn route_cache(route: &str, settings: &CacheSettings) -> &'static RouteCache {
    let mut caches = CACHES.lock().unwrap_or_else(|e| e.into_inner());
    caches
        .entry((route.to_owned(), settings.max_bytes))
        .or_insert_with(|| {
            let max = usize::try_from(settings.max_bytes).unwrap_or(usize::MAX);
            let lock: &'static CacheLock = Box::leak(CacheLock::new_boxed(Duration::from_secs(10)));
            Box::leak(Box::new(RouteCache {
                storage: Box::leak(Box::new(MemCache::new())),
                eviction: Box::leak(Box::new(simple_lru::Manager::new(max))),
                lock,
                settings: settings.clone(),
            }))
        })
}

/// Freshness from the response's own headers only (no default by status).
const HEADERS_ONLY: CacheMetaDefaults = CacheMetaDefaults::new(|_| None, 0, 0);

/// Whether (and how long) to keep a response: its `Cache-Control`/`Expires` when it has
/// them, else the route's `default_ttl` for the statuses kept by default.
pub fn response_cacheable(
    settings: &CacheSettings,
    resp: &ResponseHeader,
    authorization: bool,
) -> RespCacheable {
    let cc = CacheControl::from_resp_headers(resp);
    // Vary on anything but what the edge handles itself would need cache variance.
    let varies = resp.headers.get_all(header::VARY).iter().any(|v| {
        v.as_bytes().split(|&b| b == b',').any(|t| {
            let t = t.trim_ascii();
            !(t.eq_ignore_ascii_case(b"accept-encoding")
                || t.eq_ignore_ascii_case(b"origin")
                || t.is_empty())
        })
    });
    if varies || resp.headers.contains_key(header::SET_COOKIE) {
        return RespCacheable::Uncacheable(NoCacheReason::OriginNotCache);
    }
    let now = SystemTime::now();
    let fresh_until = calculate_fresh_until(now, cc.as_ref(), resp, authorization, &HEADERS_ONLY);
    let says_no = authorization
        || cc
            .as_ref()
            .is_some_and(|c| c.no_store() || c.no_cache() || c.private());
    let fresh_until = match fresh_until {
        Some(t) => t,
        None if says_no => return RespCacheable::Uncacheable(NoCacheReason::OriginNotCache),
        None => match settings.fresh_for(resp.status.as_u16()) {
            Some(ttl) => now + ttl,
            None => return RespCacheable::Uncacheable(NoCacheReason::OriginNotCache),
        },
    };
    let mut header = resp.clone();
    if let Some(cc) = &cc {
        cc.strip_private_headers(&mut header);
    }
    RespCacheable::Cacheable(CacheMeta::new(fresh_until, now, 0, 0, header))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::server::default_registry;

    #[tokio::test]
    async fn filters_read_and_write_the_session_json_in_the_store() {
        let text = r#"
[[listener]]
name = "http"
addr = "127.0.0.1:1"
[[route]]
name = "r"
upstream = "app"
[[upstream]]
name = "app"
backends = [ { addr = "127.0.0.1:9" } ]
affinity = { kind = "session", cookie = "SESSION" }
"#;
        let config = Config::parse("t.toml", text, &default_registry()).unwrap();
        let shared = Shared::new(config, default_registry()).unwrap();
        // The id a request carries, as the affinity of its upstream reads it.
        let runtime = shared.runtime.load_full();
        let affinity = runtime.affinity[0].clone().expect("session affinity");
        let mut req = RequestHeader::build("GET", b"/", None).unwrap();
        req.insert_header("cookie", "a=b; SESSION=user-42").unwrap();
        let id = affinity.session_id(&req).expect("an id");
        assert_eq!(id, "user-42");

        let session = StoreSession {
            shared: &shared,
            id,
        };
        assert_eq!(session.get().await.unwrap(), None);
        let value = serde_json::json!({"user": "alice", "role": "admin"});
        session.set(&value, Duration::from_secs(60)).await.unwrap();
        assert_eq!(session.get().await.unwrap(), Some(value.clone()));
        // Applications sharing the store see it at session:{id}.
        let store = shared.session_store().await.unwrap();
        assert_eq!(
            store
                .get(&switchyard_session::session_key("user-42"))
                .await
                .unwrap(),
            Some(value)
        );
    }
}
