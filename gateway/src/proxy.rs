//! The request path: pingora's `ProxyHttp` phases calling the router, the balancer and the
//! forwarding rules.
//!
//! - `request_filter`: route lookup (404), client address, request id;
//! - `upstream_peer`: the balancer picks a backend (503 when none is eligible), with backoff
//!   between attempts; with `affinity`, the pinned backend first ([`crate::affinity`]);
//! - `upstream_request_filter`: forwarding headers, prefix strip;
//! - `response_filter`: hop-by-hop headers removed, request id echoed, affinity cookie set
//!   or session pin recorded;
//! - `fail_to_connect` / `fail_to_proxy`: retries and the gateway's own error answers;
//! - `logging`: load accounting and the access log.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use ipnet::IpNet;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_error::{Error, ErrorSource, ErrorType, Result};
use pingora_http::{RequestHeader, ResponseHeader};
use pingora_proxy::{FailToProxy, ProxyHttp, Session};

use crate::access_log::Entry;
use crate::affinity::{Affinity, Decision};
use crate::filters::{
    response_cacheable, write_filter_response, ResponseHead, RouteCompression,
    RouteCompressionBuilder, StoreCounter, StoreSession, UpstreamHead,
};
use crate::metrics::UpstreamErrorKind;
use crate::state::{InFlight, Runtime, Shared};
use crate::upstream::UpstreamRuntime;
use pingora_cache::{CacheKey, CachePhase, RespCacheable};
use pingora_core::modules::http::HttpModules;
use switchyard_filters::{CacheSettings, RouteFilters};
use switchyard_plugin::{
    BodyChunk, FilterError, Flow, RequestContext, RequestInfo, ResponseContext, SessionAccess,
    UpstreamRequestContext,
};

/// `X-Request-Id`, set on requests to backends and echoed on every answer.
pub(crate) static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// The proxy of one listener.
pub struct Gateway {
    shared: Arc<Shared>,
    listener: usize,
    tls: bool,
}

impl Gateway {
    /// The proxy for listener number `listener`.
    pub fn new(shared: Arc<Shared>, listener: usize, tls: bool) -> Self {
        Self {
            shared,
            listener,
            tls,
        }
    }
}

/// Per-request state carried across the phases.
pub struct RequestCtx {
    start: Instant,
    _in_flight: InFlight,
    runtime: Option<Arc<Runtime>>,
    route: Option<usize>,
    upstream: Option<Arc<UpstreamRuntime>>,
    backend: Option<usize>,
    dispatched: Option<Instant>,
    /// The backend whose load counts this request now.
    dispatched_to: Option<usize>,
    attempts: u32,
    client_ip: Option<IpAddr>,
    request_id: Option<HeaderValue>,
    /// Body of the gateway's own error answer, when it makes one.
    error_body: Option<String>,
    /// Status of the backend's response, for passive health.
    upstream_status: Option<u16>,
    /// The matched route's filters.
    filters: Option<Arc<RouteFilters>>,
    /// Per-request state of the filters.
    filter_state: http::Extensions,
    /// Request body bytes seen, for `on_request_body`.
    body_received: u64,
    /// The upstream's sticky sessions, when it has `affinity`.
    affinity: Option<Arc<Affinity>>,
    /// What affinity decided for this request.
    sticky: Decision,
}

impl RequestCtx {
    fn route_name(&self) -> Option<&str> {
        let rt = self.runtime.as_ref()?;
        Some(rt.routes.routes().get(self.route?)?.name.as_str())
    }
}

/// Whether `id` is a well-formed request id: 1 to 128 of `A-Z a-z 0-9 . _ -`.
pub fn valid_request_id(id: &[u8]) -> bool {
    (1..=128).contains(&id.len())
        && id
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// A fresh random request id (32 hex digits).
pub fn new_request_id() -> HeaderValue {
    let n: u128 = rand::random();
    let mut buf = [0u8; 32];
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for (i, b) in buf.iter_mut().enumerate() {
        *b = HEX[((n >> (4 * (31 - i))) & 0xf) as usize];
    }
    HeaderValue::from_bytes(&buf).expect("hex is a valid header value")
}

/// The client address: the peer, or with a trusted peer the rightmost X-Forwarded-For
/// entry that is not itself a trusted proxy.
pub fn client_address(
    peer: Option<IpAddr>,
    xff: Option<&[u8]>,
    trusted: &[IpNet],
) -> Option<IpAddr> {
    let peer = peer?;
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|n| n.contains(ip));
    if !is_trusted(&peer) {
        return Some(peer);
    }
    let Some(xff) = xff.and_then(|v| std::str::from_utf8(v).ok()) else {
        return Some(peer);
    };
    let mut last = peer;
    for part in xff.rsplit(',') {
        match part.trim().parse::<IpAddr>() {
            Ok(ip) if is_trusted(&ip) => last = ip,
            Ok(ip) => return Some(ip),
            Err(_) => return Some(last),
        }
    }
    Some(last)
}

fn status_of(e: &Error) -> u16 {
    use ErrorType::*;
    match e.etype() {
        HTTPStatus(code) => *code,
        ConnectTimedout | ConnectRefused | ConnectNoRoute | ConnectError | BindError
        | ConnectProxyFailure | TLSHandshakeFailure | TLSHandshakeTimedout | InvalidCert
        | HandshakeError | TLSWantX509Lookup => 502,
        ReadTimedout | WriteTimedout if *e.esource() == ErrorSource::Upstream => 504,
        _ => match e.esource() {
            ErrorSource::Upstream => 502,
            ErrorSource::Downstream => match e.etype() {
                ReadError | WriteError | ConnectionClosed => 0,
                ReadTimedout | WriteTimedout => 408,
                _ => 400,
            },
            _ => 500,
        },
    }
}

fn reason_text(status: u16) -> &'static str {
    match status {
        400 => "bad request",
        404 => "not found",
        408 => "request timeout",
        413 => "request body too large",
        431 => "request header fields too large",
        502 => "bad gateway: the upstream server could not be reached or failed",
        503 => "service unavailable: no healthy backend",
        504 => "gateway timeout: the upstream server did not answer in time",
        _ => "error",
    }
}

/// Write one of the gateway's own answers: short plain text, the request id echoed.
async fn respond(
    session: &mut Session,
    status: u16,
    body: &str,
    request_id: Option<&HeaderValue>,
) -> Result<()> {
    let mut resp = ResponseHeader::build(status, Some(4))?;
    resp.insert_header(header::CONTENT_TYPE, "text/plain; charset=utf-8")?;
    resp.insert_header(header::CONTENT_LENGTH, body.len() + 1)?;
    resp.insert_header(header::CACHE_CONTROL, "no-store")?;
    if let Some(id) = request_id {
        resp.insert_header(X_REQUEST_ID.clone(), id.clone())?;
    }
    let head_only = session.req_header().method == http::Method::HEAD;
    session
        .write_response_header(Box::new(resp), head_only)
        .await?;
    if !head_only {
        let mut text = String::with_capacity(body.len() + 1);
        text.push_str(body);
        text.push('\n');
        session
            .write_response_body(Some(Bytes::from(text)), true)
            .await?;
    }
    Ok(())
}

/// Hop-by-hop response headers (and those `Connection` names) that never reach the client.
fn strip_response_hop_by_hop(resp: &mut ResponseHeader) {
    // One pass over the names first: most responses carry at most `Connection`, and looking
    // each hop-by-hop name up (and removing it) costs a hash and a probe in two maps.
    let mut present = 0u8;
    for name in resp.headers.keys() {
        present |= hop_by_hop_bit(name);
    }
    if present == 0 {
        return;
    }
    let switching = resp.status == http::StatusCode::SWITCHING_PROTOCOLS;
    if present == HOP_CONNECTION && !switching && connection_names_nothing(resp) {
        // Only `Connection: keep-alive` or `close`: pingora writes its own Connection header
        // over it when it sends the head, so there is nothing to remove.
        return;
    }
    if present & HOP_CONNECTION != 0 {
        let nominated: Vec<HeaderName> = resp
            .headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .filter(|t| {
                !t.is_empty()
                    && !t.eq_ignore_ascii_case("keep-alive")
                    && !t.eq_ignore_ascii_case("close")
            })
            .filter_map(|t| HeaderName::from_bytes(t.as_bytes()).ok())
            .filter(|n| {
                n != header::UPGRADE
                    && n != header::CONNECTION
                    && n != header::CONTENT_LENGTH
                    && n != header::TRANSFER_ENCODING
            })
            .collect();
        for n in nominated {
            resp.remove_header(&n);
        }
    }
    if !switching {
        if present & HOP_CONNECTION != 0 {
            resp.remove_header(&header::CONNECTION);
        }
        if present & HOP_UPGRADE != 0 {
            resp.remove_header(&header::UPGRADE);
        }
    }
    if present & HOP_KEEP_ALIVE != 0 {
        resp.remove_header("keep-alive");
    }
    if present & HOP_PROXY_CONNECTION != 0 {
        resp.remove_header("proxy-connection");
    }
    if present & HOP_TE != 0 {
        resp.remove_header(&header::TE);
    }
    if present & HOP_TRAILER != 0 {
        resp.remove_header(&header::TRAILER);
    }
}

/// Whether every `Connection` token is `keep-alive` or `close` (it nominates no header).
fn connection_names_nothing(resp: &ResponseHeader) -> bool {
    resp.headers.get_all(header::CONNECTION).iter().all(|v| {
        v.as_bytes()
            .split(|&b| b == b',')
            .map(|t| t.trim_ascii())
            .all(|t| {
                t.is_empty()
                    || t.eq_ignore_ascii_case(b"keep-alive")
                    || t.eq_ignore_ascii_case(b"close")
            })
    })
}

const HOP_CONNECTION: u8 = 1;
const HOP_UPGRADE: u8 = 2;
const HOP_KEEP_ALIVE: u8 = 4;
const HOP_PROXY_CONNECTION: u8 = 8;
const HOP_TE: u8 = 16;
const HOP_TRAILER: u8 = 32;

/// Which hop-by-hop header `name` is, as one of the `HOP_*` bits (0 for an end-to-end one).
fn hop_by_hop_bit(name: &HeaderName) -> u8 {
    if name == header::CONNECTION {
        HOP_CONNECTION
    } else if name == header::UPGRADE {
        HOP_UPGRADE
    } else if name == header::TE {
        HOP_TE
    } else if name == header::TRAILER {
        HOP_TRAILER
    } else {
        match name.as_str() {
            "keep-alive" => HOP_KEEP_ALIVE,
            "proxy-connection" => HOP_PROXY_CONNECTION,
            _ => 0,
        }
    }
}

#[async_trait]
impl ProxyHttp for Gateway {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> RequestCtx {
        RequestCtx {
            start: Instant::now(),
            _in_flight: InFlight::new(&self.shared),
            runtime: None,
            route: None,
            upstream: None,
            backend: None,
            dispatched: None,
            dispatched_to: None,
            attempts: 0,
            client_ip: None,
            request_id: None,
            error_body: None,
            upstream_status: None,
            filters: None,
            filter_state: http::Extensions::new(),
            body_received: 0,
            affinity: None,
            sticky: Decision::default(),
        }
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        let runtime = self.shared.runtime.load_full();
        if !self.shared.is_ready() {
            // Shutting down: finish this request, then close the connection.
            session.set_keepalive(None);
        }
        if session.req_header().method.is_idempotent() {
            // Keep the start of the body (pingora's retry buffer) so a failed attempt can be
            // sent again to another backend.
            session.as_mut().enable_retry_buffering();
        }
        let req = session.req_header();
        ctx.request_id = Some(match req.headers.get(&X_REQUEST_ID) {
            Some(v) if valid_request_id(v.as_bytes()) => v.clone(),
            _ => new_request_id(),
        });
        let peer = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip());
        ctx.client_ip = client_address(
            peer,
            req.headers.get(&X_FORWARDED_FOR).map(|v| v.as_bytes()),
            &runtime.config.trusted_proxies,
        );
        if let Some(tls_port) = runtime
            .config
            .listeners
            .get(self.listener)
            .filter(|l| l.redirect_https)
            .and_then(|_| https_port(&runtime.config))
        {
            let location = https_location(req, tls_port);
            ctx.runtime = Some(runtime);
            redirect(session, 308, &location, ctx.request_id.as_ref()).await?;
            return Ok(true);
        }
        let host = request_host(req);
        let facts = crate::router::RequestFacts {
            listener: self.listener,
            host,
            path: req.uri.path(),
            query: req.uri.query(),
            method: &req.method,
            headers: &req.headers,
        };
        let found = runtime.routes.lookup(&facts).map(|(i, r)| (i, r.upstream));
        match found {
            Some((route, upstream)) => {
                ctx.route = Some(route);
                ctx.upstream = runtime.upstreams.get(upstream).cloned();
                ctx.affinity = runtime.affinity.get(upstream).cloned().flatten();
                let filters = runtime.routes.routes()[route].filters.clone();
                ctx.runtime = Some(runtime);
                if filters.chain.has_request_hooks() {
                    let rt = ctx.runtime.as_ref().expect("just set");
                    let req = session.req_header();
                    let info = RequestInfo::new(&req.method, &req.uri, &req.headers)
                        .with_host(request_host(req))
                        .with_client_ip(ctx.client_ip)
                        .with_route(&rt.routes.routes()[route].name)
                        .with_tls(self.tls);
                    let counter = StoreCounter(&self.shared);
                    let app_session =
                        ctx.affinity
                            .as_deref()
                            .and_then(|a| a.session_id(req))
                            .map(|id| StoreSession {
                                shared: &self.shared,
                                id,
                            });
                    let mut fctx = RequestContext::new(info, &mut ctx.filter_state)
                        .with_shared_counter(Some(&counter))
                        .with_session(app_session.as_ref().map(|s| s as &dyn SessionAccess));
                    match filters.chain.on_request(&mut fctx).await {
                        Ok(Flow::Continue) => {}
                        Ok(Flow::Respond(response)) => {
                            write_filter_response(session, response, ctx.request_id.as_ref())
                                .await?;
                            return Ok(true);
                        }
                        Err(e) => {
                            let status = e.status.as_u16();
                            respond(session, status, &e.message, ctx.request_id.as_ref()).await?;
                            return Ok(true);
                        }
                    }
                }
                if let Some(compress) = &filters.compress {
                    if let Some(encoding) = compress.negotiate(&session.req_header().headers) {
                        if let Some(m) =
                            session.downstream_modules_ctx.get_mut::<RouteCompression>()
                        {
                            m.enable(encoding, compress.min_bytes);
                        }
                    }
                }
                ctx.filters = Some(filters);
                Ok(false)
            }
            None => {
                ctx.runtime = Some(runtime);
                let req = session.req_header();
                let body = format!(
                    "no route for {} {}",
                    req.method,
                    truncate(req.uri.path(), 200)
                );
                respond(session, 404, &body, ctx.request_id.as_ref()).await?;
                Ok(true)
            }
        }
    }

    async fn upstream_peer(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<Box<HttpPeer>> {
        let Some(upstream) = ctx.upstream.clone() else {
            return Error::e_explain(ErrorType::HTTPStatus(500), "no upstream");
        };
        if ctx.attempts > 0 {
            // Exponential backoff with full jitter: base * 2^(n-1) * U(0.5, 1.5).
            let base = upstream.retry_backoff.as_secs_f64()
                * f64::from(1u32 << (ctx.attempts - 1).min(10));
            let jitter: f64 = 0.5 + rand::random::<f64>();
            tokio::time::sleep(Duration::from_secs_f64((base * jitter).min(5.0))).await;
        }
        let req = session.req_header();
        let key = upstream
            .hash_key
            .as_ref()
            .and_then(|k| k.extract(&req.headers, req.uri.path(), req.uri.query()));
        let avoid = if ctx.attempts > 0 { ctx.backend } else { None };
        let picked = match ctx.affinity.as_deref() {
            None => upstream.pick(ctx.client_ip, key, avoid),
            Some(affinity) if ctx.attempts == 0 => {
                affinity
                    .choose(
                        &self.shared,
                        req,
                        &upstream,
                        ctx.client_ip,
                        key,
                        &mut ctx.sticky,
                    )
                    .await
            }
            Some(affinity) => {
                affinity.on_retry(&self.shared, &mut ctx.sticky, avoid);
                upstream.pick(ctx.client_ip, key, avoid)
            }
        };
        let Some(idx) = picked else {
            ctx.error_body = Some(format!("no healthy backend for upstream {}", upstream.name));
            ctx.backend = None;
            log::debug!("upstream {}: no eligible backend", upstream.name);
            return Error::e_explain(ErrorType::HTTPStatus(503), "no eligible backend");
        };
        // One clock read for everything below (each costs tens of nanoseconds here).
        let now = Instant::now();
        if ctx.attempts == 0 {
            upstream
                .retry_budget
                .record_request(crate::retry_budget::secs_at(now));
        }
        ctx.attempts += 1;
        ctx.backend = Some(idx);
        let backend = &upstream.backends[idx];
        // A retry moves the request to another backend: the failed attempt is over.
        if let (Some(prev), Some(t)) = (ctx.dispatched_to.take(), ctx.dispatched.take()) {
            upstream.backends[prev]
                .plugin
                .load
                .finish_at(now.saturating_duration_since(t), now);
        }
        backend.plugin.load.start();
        ctx.dispatched = Some(now);
        ctx.dispatched_to = Some(idx);
        Ok(Box::new(backend.peer.clone()))
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream_request: &mut RequestHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        let runtime = ctx.runtime.as_ref().expect("set in request_filter");
        let peer = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip());
        let trusted = peer.is_some_and(|p| {
            runtime
                .config
                .trusted_proxies
                .iter()
                .any(|n| n.contains(&p))
        });
        add_forwarding_headers(
            upstream_request,
            peer,
            trusted,
            self.tls,
            ctx.request_id.as_ref(),
        )?;
        if let Some(route) = ctx.route.and_then(|r| runtime.routes.routes().get(r)) {
            if route.strip_prefix {
                let path = upstream_request.uri.path();
                let stripped = route.stripped(path);
                if stripped.len() != path.len() {
                    let mut target = String::with_capacity(stripped.len() + 64);
                    target.push_str(stripped);
                    if let Some(q) = upstream_request.uri.query() {
                        target.push('?');
                        target.push_str(q);
                    }
                    let uri = target.parse::<http::Uri>().map_err(|e| {
                        Error::because(ErrorType::InvalidHTTPHeader, "stripped path", e)
                    })?;
                    upstream_request.set_uri(uri);
                }
            }
        }
        if let Some(filters) = ctx.filters.as_ref() {
            let route = ctx.route.and_then(|r| runtime.routes.routes().get(r));
            if route.is_some_and(|r| r.cache.is_some()) {
                // One cached variant for every client: the backend sends identity, the edge
                // compresses per client after the cache (downstream module).
                upstream_request.insert_header(header::ACCEPT_ENCODING, "identity")?;
            }
            if filters.chain.has_upstream_request_hooks() {
                let req = session.req_header();
                let info = RequestInfo::new(&req.method, &req.uri, &req.headers)
                    .with_host(request_host(req))
                    .with_client_ip(ctx.client_ip)
                    .with_route(route.map_or("", |r| r.name.as_str()))
                    .with_tls(self.tls);
                let mut head = UpstreamHead(upstream_request);
                let mut uctx = UpstreamRequestContext::new(info, &mut head, &mut ctx.filter_state);
                filters
                    .chain
                    .on_upstream_request(&mut uctx)
                    .await
                    .map_err(filter_error)?;
            }
        }
        Ok(())
    }

    async fn response_filter(
        &self,
        session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        strip_response_hop_by_hop(upstream_response);
        ctx.upstream_status = Some(upstream_response.status.as_u16());
        if let Some(id) = &ctx.request_id {
            upstream_response.insert_header(X_REQUEST_ID.clone(), id.clone())?;
        }
        if let (Some(affinity), Some(upstream)) = (ctx.affinity.as_deref(), &ctx.upstream) {
            affinity
                .on_response(
                    &self.shared,
                    &mut ctx.sticky,
                    upstream,
                    ctx.backend,
                    upstream_response,
                    self.tls,
                )
                .await;
        }
        let route = ctx
            .route
            .zip(ctx.runtime.as_ref())
            .and_then(|(r, rt)| rt.routes.routes().get(r));
        if route.is_some_and(|r| r.cache.is_some()) {
            let hit = matches!(
                session.cache.phase(),
                CachePhase::Hit
                    | CachePhase::Stale
                    | CachePhase::StaleUpdating
                    | CachePhase::Revalidated
            );
            upstream_response.insert_header("x-cache", if hit { "HIT" } else { "MISS" })?;
        }
        if let Some(filters) = ctx
            .filters
            .as_ref()
            .filter(|f| f.chain.has_response_hooks())
        {
            let req = session.req_header();
            let info = RequestInfo::new(&req.method, &req.uri, &req.headers)
                .with_host(request_host(req))
                .with_client_ip(ctx.client_ip)
                .with_route(route.map_or("", |r| r.name.as_str()))
                .with_tls(self.tls);
            let status = upstream_response.status;
            let mut head = ResponseHead(upstream_response);
            let mut rctx = ResponseContext::new(info, status, &mut head, &mut ctx.filter_state);
            if let Err(e) = filters.chain.on_response(&mut rctx).await {
                log::warn!(
                    "route {}: response filter: {e}",
                    route.map_or("", |r| r.name.as_str())
                );
            }
        }
        Ok(())
    }

    fn init_downstream_modules(&self, modules: &mut HttpModules) {
        // Per-route compression, instead of pingora's default (a disabled compressor).
        modules.add_module(Box::new(RouteCompressionBuilder));
    }

    async fn request_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        if let Some(filters) = ctx
            .filters
            .as_ref()
            .filter(|f| f.chain.needs_request_body())
        {
            let data = body.as_deref().unwrap_or_default();
            ctx.body_received += data.len() as u64;
            let chunk = BodyChunk::new(data, ctx.body_received, end_of_stream);
            if let Err(e) = filters.chain.on_request_body(&chunk) {
                ctx.error_body = Some(e.message.to_string());
                return Err(filter_error(e));
            }
        }
        Ok(())
    }

    fn request_cache_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<()> {
        let cache = ctx
            .route
            .zip(ctx.runtime.as_ref())
            .and_then(|(r, rt)| rt.routes.routes()[r].cache);
        if let Some(c) = cache {
            if CacheSettings::cacheable_method(&session.req_header().method) {
                session
                    .cache
                    .enable(c.storage, Some(c.eviction), None, Some(c.lock), None);
                session.cache.set_max_file_size_bytes(
                    usize::try_from(c.settings.max_object_bytes).unwrap_or(usize::MAX),
                );
            }
        }
        Ok(())
    }

    fn cache_key_callback(&self, session: &Session, ctx: &mut RequestCtx) -> Result<CacheKey> {
        let req = session.req_header();
        let route = ctx.route_name().unwrap_or("");
        let host = request_host(req).unwrap_or("");
        let target = req.uri.path_and_query().map_or("/", |p| p.as_str());
        // Length-prefixed parts: unambiguous. The route is the user tag (one namespace each).
        let primary = format!("{}:{host}{}:{target}", host.len(), target.len());
        Ok(CacheKey::new(primary, route))
    }

    fn response_cache_filter(
        &self,
        session: &Session,
        resp: &ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<RespCacheable> {
        let cache = ctx
            .route
            .zip(ctx.runtime.as_ref())
            .and_then(|(r, rt)| rt.routes.routes()[r].cache);
        let Some(c) = cache else {
            return Ok(RespCacheable::Uncacheable(
                pingora_cache::NoCacheReason::NeverEnabled,
            ));
        };
        let authorization = session
            .req_header()
            .headers
            .contains_key(header::AUTHORIZATION);
        Ok(response_cacheable(&c.settings, resp, authorization))
    }

    fn suppress_error_log(&self, _session: &Session, _ctx: &RequestCtx, error: &Error) -> bool {
        // A client that goes away mid-request is ordinary at the edge, not an error to log.
        *error.esource() == ErrorSource::Downstream
            && matches!(
                error.etype(),
                ErrorType::ConnectionClosed | ErrorType::ReadError | ErrorType::WriteError
            )
    }

    async fn connected_to_upstream(
        &self,
        _session: &mut Session,
        reused: bool,
        _peer: &HttpPeer,
        #[cfg(unix)] _fd: std::os::unix::io::RawFd,
        _digest: Option<&pingora_core::protocols::Digest>,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        if !reused {
            if let (Some(u), Some(i)) = (&ctx.upstream, ctx.backend) {
                self.shared
                    .metrics
                    .upstream_connection(&u.name, &u.backends[i].addr);
            }
        }
        Ok(())
    }

    fn error_while_proxy(
        &self,
        _peer: &HttpPeer,
        session: &mut Session,
        mut e: Box<Error>,
        ctx: &mut RequestCtx,
        client_reused: bool,
    ) -> Box<Error> {
        // A filter's refusal (body-limit 413) is final: never retried on another backend.
        if matches!(e.etype(), ErrorType::HTTPStatus(_)) {
            e.set_retry(false);
            return e;
        }
        // The request reached a backend: retry only idempotent requests whose body is still
        // whole in the retry buffer, before anything was sent to the client, within the
        // upstream's retries and retry budget.
        let retryable = session.req_header().method.is_idempotent()
            && !session.as_ref().retry_buffer_truncated()
            && session.response_written().is_none();
        if !retryable {
            e.set_retry(false);
            return e;
        }
        if let (Some(u), Some(i)) = (&ctx.upstream, ctx.backend) {
            let now = crate::retry_budget::now_secs();
            if ctx.attempts <= u.retries && u.retry_budget.try_retry(now) {
                // This attempt's failure is final for its backend: count it here, since
                // logging only sees the last attempt.
                if let Some(kind) = UpstreamErrorKind::of(&e) {
                    self.shared
                        .metrics
                        .upstream_error(&u.name, &u.backends[i].addr, kind);
                }
                if u.record_outcome(i, crate::health::PassiveOutcome::Failure) {
                    self.shared.metrics.ejection(&u.name, &u.backends[i].addr);
                }
                e.set_retry(true);
                self.shared.metrics.retry(&u.name);
                return e;
            }
        }
        // Otherwise pingora's rule: a stale pooled connection may be retried once.
        e.retry.decide_reuse(client_reused);
        e
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut RequestCtx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        if let (Some(u), Some(i)) = (&ctx.upstream, ctx.backend) {
            if u.record_outcome(i, crate::health::PassiveOutcome::Failure) {
                self.shared.metrics.ejection(&u.name, &u.backends[i].addr);
            }
        }
        if let Some(upstream) = &ctx.upstream {
            let backend = ctx
                .backend
                .map_or("none", |i| upstream.backends[i].addr.as_str());
            if let Some(kind) = UpstreamErrorKind::of(&e) {
                self.shared
                    .metrics
                    .upstream_error(&upstream.name, backend, kind);
            }
            // A failed connect never reached the backend: always safe to try another one.
            let now = crate::retry_budget::now_secs();
            if ctx.attempts <= upstream.retries && upstream.retry_budget.try_retry(now) {
                e.set_retry(true);
                self.shared.metrics.retry(&upstream.name);
            }
        }
        e
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut RequestCtx,
    ) -> FailToProxy {
        let status = status_of(e);
        if status > 0 && session.response_written().is_none() {
            let body = ctx
                .error_body
                .take()
                .unwrap_or_else(|| reason_text(status).to_owned());
            if let Err(err) = respond(session, status, &body, ctx.request_id.as_ref()).await {
                log::debug!("could not send the error answer: {err}");
            }
        }
        FailToProxy {
            error_code: status,
            can_reuse_downstream: false,
        }
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut RequestCtx) {
        let status = session
            .response_written()
            .map(|r| r.status.as_u16())
            .or_else(|| e.map(status_of))
            .unwrap_or(0);
        let backend = ctx
            .upstream
            .as_ref()
            .zip(ctx.backend)
            .map(|(u, i)| &u.backends[i]);
        // One clock read for the load, the passive health and the metrics.
        let now = Instant::now();
        if let (Some(b), Some(t)) = (backend, ctx.dispatched) {
            let elapsed = now.saturating_duration_since(t);
            b.plugin.load.finish_at(elapsed, now);
            let ok = e.is_none() && status < 500;
            if let (Some(u), Some(i)) = (&ctx.upstream, ctx.backend) {
                u.balancer
                    .release(i, &switchyard_plugin::Outcome { elapsed, ok });
                if let Some(o) = crate::health::PassiveOutcome::of_request(e, ctx.upstream_status) {
                    if u.record_outcome_at(i, o, now) {
                        self.shared.metrics.ejection(&u.name, &u.backends[i].addr);
                    }
                }
            }
        }
        let reached = backend.filter(|_| ctx.dispatched.is_some());
        let upstream_name = ctx.upstream.as_ref().map_or("none", |u| u.name.as_str());
        let backend_label = reached.map_or("none", |b| b.addr.as_str());
        if let Some(err) = e {
            let connect = matches!(
                err.etype(),
                ErrorType::ConnectTimedout
                    | ErrorType::ConnectRefused
                    | ErrorType::ConnectNoRoute
                    | ErrorType::ConnectError
            );
            if let (Some(kind), false) = (UpstreamErrorKind::of(err), connect) {
                self.shared
                    .metrics
                    .upstream_error(upstream_name, backend_label, kind);
            }
        }
        if status > 0 {
            let total = now.saturating_duration_since(ctx.start);
            let cache = ctx
                .route
                .zip(ctx.runtime.as_ref())
                .and_then(|(r, rt)| rt.route_metrics.get(r));
            match cache {
                Some(cache) => self.shared.metrics.route_request(
                    cache,
                    ctx.route_name().unwrap_or("none"),
                    upstream_name,
                    reached.and(ctx.backend),
                    backend_label,
                    status,
                    total,
                ),
                None => self.shared.metrics.request(
                    ctx.route_name().unwrap_or("none"),
                    upstream_name,
                    backend_label,
                    status,
                    total,
                ),
            }
        }
        if !self.shared.access_log.enabled() {
            return;
        }
        let req = session.req_header();
        let time = time::OffsetDateTime::now_utc() - ctx.start.elapsed();
        let time = time
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default();
        let client = ctx.client_ip.map(|ip| ip.to_string());
        let path = req.uri.path_and_query().map_or("/", |p| p.as_str());
        let reached = reached.map(|b| b.addr.as_str());
        self.shared.access_log.write(&Entry {
            time: &time,
            client: client.as_deref(),
            method: req.method.as_str(),
            host: request_host(req),
            path,
            status,
            route: ctx.route_name(),
            upstream: ctx.upstream.as_ref().map(|u| u.name.as_str()),
            backend: reached,
            bytes: session.body_bytes_sent(),
            duration_ms: (ctx.start.elapsed().as_secs_f64() * 1_000_000.0).round() / 1000.0,
            request_id: ctx
                .request_id
                .as_ref()
                .and_then(|v| v.to_str().ok())
                .unwrap_or(""),
        });
    }
}

/// Set the forwarding headers of an upstream request: X-Forwarded-For (the peer appended
/// to the client's list only when the peer is a trusted proxy), X-Forwarded-Proto,
/// X-Forwarded-Host (removed when the request names no host) and X-Request-Id.
///
/// The headers are edited on the request's own `http` parts, sized once, and the request
/// is rebuilt from them: pingora's per-header insert re-parses each name, keeps a second
/// map of the names' original spelling and grows both maps one header at a time, which
/// measured at about a tenth of a proxied request's instructions. The upstream request's
/// header names go out lowercase, as HAProxy and Envoy send them (names are
/// case-insensitive); the request target is kept byte for byte.
pub fn add_forwarding_headers(
    req: &mut RequestHeader,
    peer: Option<IpAddr>,
    peer_trusted: bool,
    tls: bool,
    request_id: Option<&HeaderValue>,
) -> Result<()> {
    // pingora keeps a separate copy of the target only when the URI cannot reproduce it
    // (absolute-form, CONNECT, not UTF-8); otherwise `raw_path` points into the URI itself,
    // which the rebuilt request keeps whole.
    let raw = req.raw_path();
    let in_uri = |part: Option<&str>| part.is_some_and(|p| p.as_ptr() == raw.as_ptr());
    let target_is_uri = raw.is_empty()
        || (req.raw_path_is_utf8()
            && (in_uri(req.uri.path_and_query().map(|p| p.as_str()))
                || in_uri(req.uri.authority().map(|a| a.as_str()))));
    let raw_target = (!target_is_uri).then(|| raw.to_vec());
    let placeholder = RequestHeader::from(http::Request::new(()).into_parts().0);
    let mut parts: http::request::Parts = std::mem::replace(req, placeholder).into();
    let headers = &mut parts.headers;
    headers.reserve(4);
    if let Some(peer) = peer {
        let peer_value = ip_header_value(peer);
        let value = match headers.get(&X_FORWARDED_FOR) {
            Some(prev) if peer_trusted => {
                let mut v = Vec::with_capacity(prev.len() + 2 + peer_value.len());
                v.extend_from_slice(prev.as_bytes());
                v.extend_from_slice(b", ");
                v.extend_from_slice(peer_value.as_bytes());
                HeaderValue::from_bytes(&v).unwrap_or(peer_value)
            }
            _ => peer_value,
        };
        headers.insert(X_FORWARDED_FOR.clone(), value);
    }
    headers.insert(
        X_FORWARDED_PROTO.clone(),
        HeaderValue::from_static(if tls { "https" } else { "http" }),
    );
    let host = match parts.uri.authority() {
        Some(a) if parts.uri.host().is_some() => HeaderValue::from_str(a.as_str()).ok(),
        _ => headers.get(header::HOST).cloned(),
    };
    match host.filter(|h| !h.is_empty() && h.to_str().is_ok()) {
        Some(host) => {
            headers.insert(X_FORWARDED_HOST.clone(), host);
        }
        None => {
            headers.remove(&X_FORWARDED_HOST);
        }
    }
    if let Some(id) = request_id {
        headers.insert(X_REQUEST_ID.clone(), id.clone());
    }
    *req = RequestHeader::from(parts);
    if let Some(raw) = raw_target {
        req.set_raw_path(&raw)?;
    }
    Ok(())
}

/// An IP address as a header value, IPv4 formatted without `fmt`.
fn ip_header_value(ip: IpAddr) -> HeaderValue {
    let IpAddr::V4(v4) = ip else {
        return HeaderValue::from_str(&ip.to_string()).expect("an IP address is a valid value");
    };
    let mut buf = [0u8; 15];
    let mut n = 0;
    for (i, octet) in v4.octets().into_iter().enumerate() {
        if i > 0 {
            buf[n] = b'.';
            n += 1;
        }
        if octet >= 100 {
            buf[n] = b'0' + octet / 100;
            n += 1;
        }
        if octet >= 10 {
            buf[n] = b'0' + octet / 10 % 10;
            n += 1;
        }
        buf[n] = b'0' + octet % 10;
        n += 1;
    }
    HeaderValue::from_bytes(&buf[..n]).expect("digits and dots are a valid value")
}

/// The port of the first TLS listener, which `redirect_https` sends clients to.
fn https_port(config: &crate::config::Config) -> Option<u16> {
    config
        .listeners
        .iter()
        .find(|l| l.tls.is_some())
        .map(|l| l.addr.get_ref().port())
}

/// `https://HOST[:PORT]/path?query` for a request (the port left out when it is 443).
pub fn https_location(req: &RequestHeader, port: u16) -> String {
    let host = request_host(req).unwrap_or("localhost");
    // Strip a port from the Host, keeping IPv6 literals whole.
    let bare = match host.rfind(':') {
        Some(i)
            if !host[i..].contains(']') && host[i + 1..].bytes().all(|b| b.is_ascii_digit()) =>
        {
            &host[..i]
        }
        _ => host,
    };
    let target = req.uri.path_and_query().map_or("/", |p| p.as_str());
    if port == 443 {
        format!("https://{bare}{target}")
    } else {
        format!("https://{bare}:{port}{target}")
    }
}

async fn redirect(
    session: &mut Session,
    status: u16,
    location: &str,
    request_id: Option<&HeaderValue>,
) -> Result<()> {
    let mut resp = ResponseHeader::build(status, Some(4))?;
    resp.insert_header(header::LOCATION, location)?;
    resp.insert_header(header::CONTENT_LENGTH, 0)?;
    if let Some(id) = request_id {
        resp.insert_header(X_REQUEST_ID.clone(), id.clone())?;
    }
    session.write_response_header(Box::new(resp), true).await
}

fn filter_error(e: FilterError) -> Box<Error> {
    Error::explain(
        ErrorType::HTTPStatus(e.status.as_u16()),
        e.message.into_owned(),
    )
}

/// Host of a request: the URI authority (HTTP/2, absolute form) or the Host header.
pub fn request_host(req: &RequestHeader) -> Option<&str> {
    req.uri
        .host()
        .map(|_| req.uri.authority().map_or("", |a| a.as_str()))
        .or_else(|| req.headers.get(header::HOST).and_then(|h| h.to_str().ok()))
        .filter(|h| !h.is_empty())
}

fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn https_location_keeps_host_path_and_query() {
        let mut req = RequestHeader::build("GET", b"/a/b?x=1", None).unwrap();
        req.insert_header("host", "example.com:8080").unwrap();
        assert_eq!(
            https_location(&req, 8443),
            "https://example.com:8443/a/b?x=1"
        );
        assert_eq!(https_location(&req, 443), "https://example.com/a/b?x=1");
        let mut v6 = RequestHeader::build("GET", b"/", None).unwrap();
        v6.insert_header("host", "[::1]:80").unwrap();
        assert_eq!(https_location(&v6, 443), "https://[::1]/");
    }

    #[test]
    fn request_id_shape() {
        assert!(valid_request_id(b"abc-DEF_1.2"));
        assert!(!valid_request_id(b""));
        assert!(!valid_request_id(b"has space"));
        assert!(!valid_request_id(&[b'a'; 129]));
        let id = new_request_id();
        assert_eq!(id.len(), 32);
        assert!(valid_request_id(id.as_bytes()));
        assert_ne!(new_request_id(), id);
    }

    #[test]
    fn client_address_trusts_only_trusted_peers() {
        let trusted = vec!["10.0.0.0/8".parse().unwrap()];
        let peer: IpAddr = "10.1.1.1".parse().unwrap();
        let outsider: IpAddr = "203.0.113.9".parse().unwrap();
        // Untrusted peer: X-Forwarded-For ignored.
        assert_eq!(
            client_address(Some(outsider), Some(b"1.2.3.4"), &trusted),
            Some(outsider)
        );
        // Trusted peer: rightmost entry not in the trusted set.
        assert_eq!(
            client_address(Some(peer), Some(b"1.2.3.4, 5.6.7.8, 10.2.2.2"), &trusted),
            Some("5.6.7.8".parse().unwrap())
        );
        assert_eq!(client_address(Some(peer), None, &trusted), Some(peer));
    }

    #[test]
    fn error_statuses() {
        assert_eq!(status_of(&Error::new_up(ErrorType::ConnectRefused)), 502);
        assert_eq!(status_of(&Error::new_up(ErrorType::ReadTimedout)), 504);
        assert_eq!(status_of(&Error::new(ErrorType::HTTPStatus(503))), 503);
        assert_eq!(
            status_of(&Error::new_down(ErrorType::InvalidHTTPHeader)),
            400
        );
        assert_eq!(status_of(&Error::new_down(ErrorType::ConnectionClosed)), 0);
    }

    #[test]
    fn forwarding_headers_replace_spoofed_ones_and_keep_the_target() {
        let mut req = RequestHeader::build("GET", b"/a%20b?x=1", None).unwrap();
        req.insert_header("Host", "example.com").unwrap();
        req.insert_header("X-Forwarded-For", "6.6.6.6").unwrap();
        req.insert_header("X-Forwarded-Proto", "https").unwrap();
        req.insert_header("X-Forwarded-Host", "evil.example")
            .unwrap();
        req.insert_header("Accept", "*/*").unwrap();
        let id = HeaderValue::from_static("abc");
        let peer: IpAddr = "192.0.2.10".parse().unwrap();
        add_forwarding_headers(&mut req, Some(peer), false, false, Some(&id)).unwrap();
        let get = |n: &str| req.headers.get(n).and_then(|v| v.to_str().ok());
        assert_eq!(get("x-forwarded-for"), Some("192.0.2.10"));
        assert_eq!(get("x-forwarded-proto"), Some("http"));
        assert_eq!(get("x-forwarded-host"), Some("example.com"));
        assert_eq!(get("x-request-id"), Some("abc"));
        assert_eq!(get("accept"), Some("*/*"));
        assert_eq!(req.raw_path(), b"/a%20b?x=1");

        // A trusted peer's list is kept, the peer appended; TLS listeners say https.
        let mut req = RequestHeader::build("GET", b"/", None).unwrap();
        req.insert_header("x-forwarded-for", "1.2.3.4").unwrap();
        let v6: IpAddr = "2001:db8::1".parse().unwrap();
        add_forwarding_headers(&mut req, Some(v6), true, true, None).unwrap();
        let get = |n: &str| req.headers.get(n).and_then(|v| v.to_str().ok());
        assert_eq!(get("x-forwarded-for"), Some("1.2.3.4, 2001:db8::1"));
        assert_eq!(get("x-forwarded-proto"), Some("https"));
        assert_eq!(get("x-forwarded-host"), None);
        assert_eq!(get("x-request-id"), None);
    }

    #[test]
    fn absolute_form_targets_survive_the_rebuild() {
        let target = b"http://example.com/p?q=1";
        let mut req = RequestHeader::build("GET", target, None).unwrap();
        add_forwarding_headers(&mut req, None, false, false, None).unwrap();
        assert_eq!(req.raw_path(), target);
        // pingora keeps only the path of an absolute-form URI: the host comes from Host.
        assert!(req.headers.get("x-forwarded-host").is_none());
        assert_eq!(req.headers.get("x-forwarded-proto").unwrap(), "http");
    }

    #[test]
    fn a_uri_with_authority_is_kept_whole() {
        // As pingora builds an HTTP/2 request: the URI carries the authority.
        let parts = http::Request::get("https://example.com/p?q=1")
            .body(())
            .unwrap()
            .into_parts()
            .0;
        let mut req = RequestHeader::from(parts);
        add_forwarding_headers(&mut req, None, false, true, None).unwrap();
        assert_eq!(req.uri.authority().unwrap().as_str(), "example.com");
        assert_eq!(req.raw_path(), b"/p?q=1");
        assert_eq!(req.headers.get("x-forwarded-host").unwrap(), "example.com");
    }

    #[test]
    fn ipv4_header_values_match_display() {
        for ip in [
            "0.0.0.0",
            "127.0.0.1",
            "10.20.30.40",
            "255.255.255.255",
            "1.100.9.99",
        ] {
            let parsed: IpAddr = ip.parse().unwrap();
            assert_eq!(ip_header_value(parsed), ip);
        }
    }

    #[test]
    fn responses_without_hop_by_hop_headers_are_untouched() {
        let mut r = ResponseHeader::build(200, None).unwrap();
        r.insert_header("Content-Type", "text/plain").unwrap();
        r.insert_header("X-Kept", "1").unwrap();
        strip_response_hop_by_hop(&mut r);
        assert_eq!(r.headers.len(), 2);
        let mut upgrade = ResponseHeader::build(101, None).unwrap();
        upgrade.insert_header("connection", "upgrade").unwrap();
        upgrade.insert_header("upgrade", "websocket").unwrap();
        upgrade.insert_header("keep-alive", "timeout=5").unwrap();
        strip_response_hop_by_hop(&mut upgrade);
        assert!(upgrade.headers.get("connection").is_some());
        assert!(upgrade.headers.get("upgrade").is_some());
        assert!(upgrade.headers.get("keep-alive").is_none());
    }

    #[test]
    fn response_hop_by_hop_headers_are_removed() {
        let mut r = ResponseHeader::build(200, None).unwrap();
        r.insert_header("connection", "keep-alive, x-private")
            .unwrap();
        r.insert_header("x-private", "1").unwrap();
        r.insert_header("keep-alive", "timeout=5").unwrap();
        r.insert_header("x-kept", "1").unwrap();
        strip_response_hop_by_hop(&mut r);
        assert!(r.headers.get("x-private").is_none());
        assert!(r.headers.get("keep-alive").is_none());
        assert!(r.headers.get("connection").is_none());
        assert!(r.headers.get("x-kept").is_some());
    }
}
