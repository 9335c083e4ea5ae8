//! Request and response filters: the [`Filter`] trait, the contexts its hooks receive, and
//! [`FilterChain`], the ordered list of a route's filters that the gateway calls.
//!
//! A route's filters run in the order the configuration writes them. The gateway calls the
//! chain from its proxy phases:
//!
//! | phase (pingora) | chain call | filter hook | typical filters |
//! | --- | --- | --- | --- |
//! | `request_filter` | [`FilterChain::on_request`] | [`Filter::on_request`] | rate limit, IP lists, redirect, CORS preflight, body limit (Content-Length) |
//! | `request_body_filter` | [`FilterChain::on_request_body`] | [`Filter::on_request_body`] | body limit (streamed bodies) |
//! | `upstream_request_filter` | [`FilterChain::on_upstream_request`] | [`Filter::on_upstream_request`] | request headers, rewrite |
//! | `response_filter` | [`FilterChain::on_response`] | [`Filter::on_response`] | response headers, CORS headers |
//!
//! A filter that answers ([`Flow::Respond`]) stops the chain: no later filter sees the
//! request, and the request never reaches a backend. The answer passes through the
//! [`Filter::on_response`] hooks of the filters *before* the one that answered (they saw
//! the request), as an Envoy local reply passes through the encoders already iterated.
//!
//! Filters are shared by every request of their route (`Arc<dyn Filter>`): per-request
//! state goes in the request's [`Extensions`] (the `extensions` of every context), which
//! the gateway keeps from the first phase to the last.
//!
//! Headers of the request sent upstream and of the response are edited through
//! [`HeaderEditor`] (and [`RequestHeadEditor`] for the request's URI): the gateway
//! implements it over pingora's header types, which cannot hand out a `&mut HeaderMap`
//! (the response keeps the backend's header-name case; the request sent upstream carries
//! lowercase names, as from HAProxy or Envoy). `http`'s [`HeaderMap`] and [`request::Parts`] implement it too,
//! for tests and for answers built with [`Response`].
//!
//! # Example: a filter that refuses `DELETE` and tags what it lets through
//!
//! ```
//! use std::sync::Arc;
//! use switchyard_plugin::filter::*;
//! use switchyard_plugin::async_trait;
//! use http::{header::HeaderName, HeaderMap, HeaderValue, Method, StatusCode, Uri};
//!
//! struct NoDelete;
//!
//! #[async_trait]
//! impl Filter for NoDelete {
//!     fn hooks(&self) -> Hooks {
//!         Hooks { request: true, upstream_request: true, ..Hooks::NONE }
//!     }
//!
//!     async fn on_request(&self, ctx: &mut RequestContext<'_>) -> Result<Flow, FilterError> {
//!         if ctx.request.method == Method::DELETE {
//!             return Ok(Flow::Respond(Response::text(StatusCode::METHOD_NOT_ALLOWED, "no\n")));
//!         }
//!         Ok(Flow::Continue)
//!     }
//!
//!     async fn on_upstream_request(
//!         &self,
//!         ctx: &mut UpstreamRequestContext<'_>,
//!     ) -> Result<(), FilterError> {
//!         ctx.upstream.insert(HeaderName::from_static("x-checked"), HeaderValue::from_static("1"));
//!         Ok(())
//!     }
//! }
//!
//! let chain = FilterChain::new(vec![Arc::new(NoDelete) as Arc<dyn Filter>]);
//! let (method, uri, headers) = (Method::DELETE, Uri::from_static("/x"), HeaderMap::new());
//! let mut extensions = http::Extensions::new();
//! let mut ctx = RequestContext::new(
//!     RequestInfo::new(&method, &uri, &headers).with_route("api"),
//!     &mut extensions,
//! );
//! // Every compiled-in filter completes without waiting; a gateway awaits the future.
//! match block_on_ready(chain.on_request(&mut ctx)).unwrap() {
//!     Flow::Respond(r) => assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED),
//!     Flow::Continue => unreachable!(),
//! }
//! ```

use std::borrow::Cow;
use std::fmt;
use std::future::Future;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use http::header::{HeaderName, HeaderValue, CONTENT_TYPE};
use http::{request, response, Extensions, HeaderMap, Method, StatusCode, Uri};

/// Edits the headers of a request or response head the gateway owns.
///
/// The gateway implements it over pingora's header types; [`HeaderMap`], [`request::Parts`]
/// and [`response::Parts`] implement it too.
pub trait HeaderEditor: Send {
    /// The headers as they are now.
    fn headers(&self) -> &HeaderMap;
    /// Set `name` to `value`, replacing every value it had.
    fn insert(&mut self, name: HeaderName, value: HeaderValue);
    /// Add `value` to `name`, keeping the values it had.
    fn append(&mut self, name: HeaderName, value: HeaderValue);
    /// Remove every value of `name`.
    fn remove(&mut self, name: &HeaderName);
}

/// Edits the head of the request the gateway is about to send to a backend: its headers
/// ([`HeaderEditor`]) and its URI (path and query).
pub trait RequestHeadEditor: HeaderEditor {
    /// The request's method.
    fn method(&self) -> &Method;
    /// The request's URI as it will be sent (usually origin form: path and query).
    fn uri(&self) -> &Uri;
    /// Replace the URI the backend sees.
    fn set_uri(&mut self, uri: Uri);
}

impl HeaderEditor for HeaderMap {
    fn headers(&self) -> &HeaderMap {
        self
    }
    fn insert(&mut self, name: HeaderName, value: HeaderValue) {
        HeaderMap::insert(self, name, value);
    }
    fn append(&mut self, name: HeaderName, value: HeaderValue) {
        HeaderMap::append(self, name, value);
    }
    fn remove(&mut self, name: &HeaderName) {
        HeaderMap::remove(self, name);
    }
}

impl HeaderEditor for request::Parts {
    fn headers(&self) -> &HeaderMap {
        &self.headers
    }
    fn insert(&mut self, name: HeaderName, value: HeaderValue) {
        self.headers.insert(name, value);
    }
    fn append(&mut self, name: HeaderName, value: HeaderValue) {
        self.headers.append(name, value);
    }
    fn remove(&mut self, name: &HeaderName) {
        self.headers.remove(name);
    }
}

impl RequestHeadEditor for request::Parts {
    fn method(&self) -> &Method {
        &self.method
    }
    fn uri(&self) -> &Uri {
        &self.uri
    }
    fn set_uri(&mut self, uri: Uri) {
        self.uri = uri;
    }
}

impl HeaderEditor for response::Parts {
    fn headers(&self) -> &HeaderMap {
        &self.headers
    }
    fn insert(&mut self, name: HeaderName, value: HeaderValue) {
        self.headers.insert(name, value);
    }
    fn append(&mut self, name: HeaderName, value: HeaderValue) {
        self.headers.append(name, value);
    }
    fn remove(&mut self, name: &HeaderName) {
        self.headers.remove(name);
    }
}

/// What every hook may read about the request as the client sent it.
///
/// Cheap to copy: references and the client address. Built once per request by the
/// gateway with [`RequestInfo::new`] and the `with_*` methods.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct RequestInfo<'a> {
    /// The request method.
    pub method: &'a Method,
    /// The request URI as received (path and query; with an authority for HTTP/2).
    pub uri: &'a Uri,
    /// The request's host: the URI authority (HTTP/2, absolute form) or the `Host` header,
    /// as sent (a port included). `None` when the request has none.
    pub host: Option<&'a str>,
    /// The request headers as received.
    pub headers: &'a HeaderMap,
    /// The client address, after `trusted_proxies` (the peer, or the rightmost untrusted
    /// `X-Forwarded-For` entry). `None` when unknown (a Unix socket).
    pub client_ip: Option<IpAddr>,
    /// The name of the route that matched.
    pub route: &'a str,
    /// Whether the request came over TLS.
    pub tls: bool,
}

impl<'a> RequestInfo<'a> {
    /// The facts about a request: no host, no client address, route `""`, not TLS until
    /// the `with_*` methods say otherwise.
    pub fn new(method: &'a Method, uri: &'a Uri, headers: &'a HeaderMap) -> Self {
        Self {
            method,
            uri,
            host: None,
            headers,
            client_ip: None,
            route: "",
            tls: false,
        }
    }

    /// With the request's host.
    pub fn with_host(mut self, host: Option<&'a str>) -> Self {
        self.host = host;
        self
    }

    /// With the client's address.
    pub fn with_client_ip(mut self, client_ip: Option<IpAddr>) -> Self {
        self.client_ip = client_ip;
        self
    }

    /// With the name of the route that matched.
    pub fn with_route(mut self, route: &'a str) -> Self {
        self.route = route;
        self
    }

    /// Whether the request came over TLS.
    pub fn with_tls(mut self, tls: bool) -> Self {
        self.tls = tls;
        self
    }

    /// The request path (without the query).
    pub fn path(&self) -> &'a str {
        self.uri.path()
    }

    /// The query string without its `?`, if there is one.
    pub fn query(&self) -> Option<&'a str> {
        self.uri.query()
    }
}

/// What [`Filter::on_request`] receives: the request, and the shared state the gateway
/// offers plugins.
#[non_exhaustive]
pub struct RequestContext<'a> {
    /// The request as the client sent it.
    pub request: RequestInfo<'a>,
    /// A counter shared by every gateway of the fleet (the session store's Redis), when
    /// the gateway has one; `None` otherwise. Filters that use it fall back to local state
    /// when it is absent or fails.
    pub shared_counter: Option<&'a dyn SharedCounter>,
    /// The request's application session (its JSON in the gateway's session store), when
    /// the route's upstream uses session-id affinity and the request carries an id.
    pub session: Option<&'a dyn SessionAccess>,
    /// Per-request state, kept by the gateway from this phase to the last.
    pub extensions: &'a mut Extensions,
}

impl<'a> RequestContext<'a> {
    /// The context of `request`, without a shared counter or session.
    pub fn new(request: RequestInfo<'a>, extensions: &'a mut Extensions) -> Self {
        Self {
            request,
            shared_counter: None,
            session: None,
            extensions,
        }
    }

    /// With the request's application session, if it has one.
    pub fn with_session(mut self, session: Option<&'a dyn SessionAccess>) -> Self {
        self.session = session;
        self
    }

    /// With the fleet-wide counter (the gateway's session store), if it has one.
    pub fn with_shared_counter(mut self, counter: Option<&'a dyn SharedCounter>) -> Self {
        self.shared_counter = counter;
        self
    }
}

/// What [`Filter::on_upstream_request`] receives: the client's request (read only) and the
/// request about to be sent to the backend (editable).
#[non_exhaustive]
pub struct UpstreamRequestContext<'a> {
    /// The request as the client sent it.
    pub request: RequestInfo<'a>,
    /// The request the backend will see: its headers and URI. Changes made by one filter
    /// are seen by the next.
    pub upstream: &'a mut dyn RequestHeadEditor,
    /// Per-request state.
    pub extensions: &'a mut Extensions,
}

impl<'a> UpstreamRequestContext<'a> {
    /// The context for editing `upstream`, the request sent for `request`.
    pub fn new(
        request: RequestInfo<'a>,
        upstream: &'a mut dyn RequestHeadEditor,
        extensions: &'a mut Extensions,
    ) -> Self {
        Self {
            request,
            upstream,
            extensions,
        }
    }
}

/// What [`Filter::on_response`] receives: the client's request (read only) and the head of
/// the response about to be sent to the client (editable headers).
#[non_exhaustive]
pub struct ResponseContext<'a> {
    /// The request as the client sent it.
    pub request: RequestInfo<'a>,
    /// The response status.
    pub status: StatusCode,
    /// The response headers.
    pub headers: &'a mut dyn HeaderEditor,
    /// Per-request state.
    pub extensions: &'a mut Extensions,
}

impl<'a> ResponseContext<'a> {
    /// The context for a response of `status` whose headers are `headers`.
    pub fn new(
        request: RequestInfo<'a>,
        status: StatusCode,
        headers: &'a mut dyn HeaderEditor,
        extensions: &'a mut Extensions,
    ) -> Self {
        Self {
            request,
            status,
            headers,
            extensions,
        }
    }
}

/// One piece of a request body, as it streams through the gateway.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct BodyChunk<'a> {
    /// The bytes of this piece (may be empty, e.g. at the end of the stream).
    pub data: &'a [u8],
    /// Bytes of the body received so far, this piece included.
    pub received: u64,
    /// Whether this is the last piece.
    pub end_of_stream: bool,
}

impl<'a> BodyChunk<'a> {
    /// A piece of `data`, `received` bytes having arrived so far with it.
    pub fn new(data: &'a [u8], received: u64, end_of_stream: bool) -> Self {
        Self {
            data,
            received,
            end_of_stream,
        }
    }
}

/// An answer made by a filter instead of the backend's.
#[derive(Debug, Clone)]
pub struct Response {
    /// Status.
    pub status: StatusCode,
    /// Headers. The gateway adds `Content-Length` (from `body`) and `X-Request-Id`.
    pub headers: HeaderMap,
    /// Body (empty for none; never sent for `HEAD`).
    pub body: Bytes,
}

impl Response {
    /// An answer of `status` with no header and no body.
    pub fn new(status: StatusCode) -> Self {
        Self {
            status,
            headers: HeaderMap::new(),
            body: Bytes::new(),
        }
    }

    /// An answer of `status` with a plain-text body.
    pub fn text(status: StatusCode, body: impl Into<Bytes>) -> Self {
        let mut r = Self::new(status);
        r.headers.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        r.body = body.into();
        r
    }

    /// The same answer with `name: value` set.
    pub fn with_header(mut self, name: HeaderName, value: HeaderValue) -> Self {
        self.headers.insert(name, value);
        self
    }
}

/// What a request hook decides.
#[derive(Debug, Clone)]
pub enum Flow {
    /// Go on: the next filter, then the backend.
    Continue,
    /// Answer the client with this response now; the chain stops.
    Respond(Response),
}

/// A filter's failure: the gateway answers `status` with `message` as a short plain-text
/// body (when nothing was sent to the client yet) and stops the request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FilterError {
    /// The status to answer with.
    pub status: StatusCode,
    /// A short explanation for the client and the log (no secrets, no addresses).
    pub message: Cow<'static, str>,
}

impl FilterError {
    /// A failure answered with `status`.
    pub fn new(status: StatusCode, message: impl Into<Cow<'static, str>>) -> Self {
        Self {
            status,
            message: message.into(),
        }
    }

    /// A failure of the filter itself: 500.
    pub fn internal(message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, message)
    }
}

impl fmt::Display for FilterError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.status.as_u16(), self.message)
    }
}

impl std::error::Error for FilterError {}

/// Which hooks a filter implements, so that [`FilterChain`] calls only those (each call
/// of an async hook costs a boxed future).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hooks {
    /// [`Filter::on_request`].
    pub request: bool,
    /// [`Filter::on_request_body`].
    pub request_body: bool,
    /// [`Filter::on_upstream_request`].
    pub upstream_request: bool,
    /// [`Filter::on_response`].
    pub response: bool,
}

impl Hooks {
    /// Every hook (the default: correct for any filter, if not the fastest).
    pub const ALL: Hooks = Hooks {
        request: true,
        request_body: true,
        upstream_request: true,
        response: true,
    };
    /// No hook: a filter that only carries configuration for the gateway.
    pub const NONE: Hooks = Hooks {
        request: false,
        request_body: false,
        upstream_request: false,
        response: false,
    };
}

/// A request/response filter. Every hook defaults to doing nothing.
///
/// One instance serves every request of its route, concurrently: keep per-request state in
/// the contexts' `extensions`, shared state in atomics or short-held locks (never held
/// across an `.await`). See the [module documentation](self) for when each hook runs.
#[async_trait]
pub trait Filter: Send + Sync + 'static {
    /// A name for logs: the configuration `kind` for compiled-in filters.
    fn kind(&self) -> &'static str {
        std::any::type_name::<Self>()
    }

    /// The hooks this filter implements. Declare only those: [`FilterChain`] skips the
    /// others. Defaults to [`Hooks::ALL`].
    fn hooks(&self) -> Hooks {
        Hooks::ALL
    }

    /// The request head has arrived and a route matched; decide whether to go on or to
    /// answer now.
    async fn on_request(&self, _ctx: &mut RequestContext<'_>) -> Result<Flow, FilterError> {
        Ok(Flow::Continue)
    }

    /// A piece of the request body arrived (called as it streams, before it is sent on).
    /// An error stops the request; if the backend already started receiving the body, the
    /// gateway closes both connections.
    fn on_request_body(&self, _chunk: &BodyChunk<'_>) -> Result<(), FilterError> {
        Ok(())
    }

    /// The request to the backend is being built: edit its headers or URI.
    async fn on_upstream_request(
        &self,
        _ctx: &mut UpstreamRequestContext<'_>,
    ) -> Result<(), FilterError> {
        Ok(())
    }

    /// The response head is about to be sent to the client: edit its headers. Also called
    /// on answers made by later filters of the chain (see [`FilterChain::on_request`]).
    async fn on_response(&self, _ctx: &mut ResponseContext<'_>) -> Result<(), FilterError> {
        Ok(())
    }
}

/// Why a [`SharedCounter`] could not count.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CounterError(pub String);

impl fmt::Display for CounterError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for CounterError {}

/// The request's application session, as a filter sees it: the JSON the gateway's session
/// store keeps for the session id the request carries.
#[async_trait]
pub trait SessionAccess: Send + Sync {
    /// The session id (from the cookie or header the upstream's affinity names).
    fn id(&self) -> &str;

    /// The session's JSON, or `None` when the store has none (or it expired).
    async fn get(&self) -> Result<Option<serde_json::Value>, CounterError>;

    /// Replace the session's JSON, kept for `ttl`. Applications sharing the store (the key
    /// is `session:{id}` under the store's prefix) see it too; a filter can, for example,
    /// record the user after a login.
    async fn set(&self, value: &serde_json::Value, ttl: Duration) -> Result<(), CounterError>;
}

/// A counter shared by every gateway of a fleet, for cluster-wide rate limits. The gateway
/// implements it over its session store's Redis (`INCR` with an expiry); a plugin never
/// links Redis itself.
///
/// Implementations must answer quickly or fail (the session store's timeout bounds every
/// call): a filter falls back to local state on an error, never fails the request.
///
/// ```
/// use std::collections::HashMap;
/// use std::sync::Mutex;
/// use std::time::Duration;
/// use switchyard_plugin::async_trait;
/// use switchyard_plugin::filter::{CounterError, SharedCounter};
///
/// #[derive(Default)]
/// struct InMemory(Mutex<HashMap<String, u64>>);
///
/// #[async_trait]
/// impl SharedCounter for InMemory {
///     async fn incr_window(&self, key: &str, _window: Duration) -> Result<u64, CounterError> {
///         let mut map = self.0.lock().unwrap();
///         let n = map.entry(key.to_owned()).or_insert(0);
///         *n += 1;
///         Ok(*n)
///     }
/// }
/// ```
#[async_trait]
pub trait SharedCounter: Send + Sync {
    /// Count one event under `key` and return the count including it.
    ///
    /// `key` names one fixed time window (the caller puts the window's number in it), and
    /// `window` is that window's length: the counter must live at least that long after its
    /// first event and may then expire (Redis: `SET key 0 PX window NX` then `INCR key`, in
    /// one transaction).
    async fn incr_window(&self, key: &str, window: Duration) -> Result<u64, CounterError>;
}

/// A route's filters, in order, with the list of those implementing each hook computed
/// once, so that a request pays only for the hooks in use.
///
/// ```
/// use std::sync::Arc;
/// use switchyard_plugin::filter::{Filter, FilterChain, Hooks};
///
/// struct Nothing;
/// impl Filter for Nothing {
///     fn hooks(&self) -> Hooks {
///         Hooks::NONE
///     }
/// }
///
/// let chain = FilterChain::new(vec![Arc::new(Nothing) as Arc<dyn Filter>]);
/// assert_eq!(chain.len(), 1);
/// assert!(!chain.has_request_hooks() && !chain.needs_request_body());
/// ```
#[derive(Clone, Default)]
pub struct FilterChain {
    filters: Vec<Arc<dyn Filter>>,
    request: Box<[usize]>,
    request_body: Box<[usize]>,
    upstream_request: Box<[usize]>,
    response: Box<[usize]>,
}

impl FilterChain {
    /// The chain of `filters`, run in this order.
    pub fn new(filters: Vec<Arc<dyn Filter>>) -> Self {
        let hooks: Vec<Hooks> = filters.iter().map(|f| f.hooks()).collect();
        let pick = |want: fn(&Hooks) -> bool| -> Box<[usize]> {
            hooks
                .iter()
                .enumerate()
                .filter(|(_, h)| want(h))
                .map(|(i, _)| i)
                .collect()
        };
        Self {
            request: pick(|h| h.request),
            request_body: pick(|h| h.request_body),
            upstream_request: pick(|h| h.upstream_request),
            response: pick(|h| h.response),
            filters,
        }
    }

    /// The filters, in order.
    pub fn filters(&self) -> &[Arc<dyn Filter>] {
        &self.filters
    }

    /// How many filters.
    pub fn len(&self) -> usize {
        self.filters.len()
    }

    /// Whether there is no filter at all.
    pub fn is_empty(&self) -> bool {
        self.filters.is_empty()
    }

    /// Whether some filter implements [`Filter::on_request`].
    pub fn has_request_hooks(&self) -> bool {
        !self.request.is_empty()
    }

    /// Whether some filter wants the request body ([`Filter::on_request_body`]): the
    /// gateway counts body bytes only then.
    pub fn needs_request_body(&self) -> bool {
        !self.request_body.is_empty()
    }

    /// Whether some filter implements [`Filter::on_upstream_request`].
    pub fn has_upstream_request_hooks(&self) -> bool {
        !self.upstream_request.is_empty()
    }

    /// Whether some filter implements [`Filter::on_response`].
    pub fn has_response_hooks(&self) -> bool {
        !self.response.is_empty()
    }

    /// Run the request hooks in order. The first filter that answers stops the chain; its
    /// answer then passes through the response hooks of the filters before it (not its
    /// own), and is returned for the gateway to send. An error stops the chain too.
    pub async fn on_request(&self, ctx: &mut RequestContext<'_>) -> Result<Flow, FilterError> {
        for &i in self.request.iter() {
            match self.filters[i].on_request(ctx).await? {
                Flow::Continue => {}
                Flow::Respond(mut response) => {
                    let earlier = self.response.iter().take_while(|&&j| j < i);
                    let mut rctx = ResponseContext::new(
                        ctx.request,
                        response.status,
                        &mut response.headers,
                        &mut *ctx.extensions,
                    );
                    for &j in earlier {
                        self.filters[j].on_response(&mut rctx).await?;
                    }
                    return Ok(Flow::Respond(response));
                }
            }
        }
        Ok(Flow::Continue)
    }

    /// Run the body hooks on one piece of the request body; the first error stops.
    pub fn on_request_body(&self, chunk: &BodyChunk<'_>) -> Result<(), FilterError> {
        for &i in self.request_body.iter() {
            self.filters[i].on_request_body(chunk)?;
        }
        Ok(())
    }

    /// Run the upstream-request hooks in order; the first error stops.
    pub async fn on_upstream_request(
        &self,
        ctx: &mut UpstreamRequestContext<'_>,
    ) -> Result<(), FilterError> {
        for &i in self.upstream_request.iter() {
            self.filters[i].on_upstream_request(ctx).await?;
        }
        Ok(())
    }

    /// Run the response hooks in order; the first error stops.
    pub async fn on_response(&self, ctx: &mut ResponseContext<'_>) -> Result<(), FilterError> {
        for &i in self.response.iter() {
            self.filters[i].on_response(ctx).await?;
        }
        Ok(())
    }
}

impl fmt::Debug for FilterChain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.filters.iter().map(|x| x.kind()))
            .finish()
    }
}

/// Builds a [`Filter`] from its configuration table (as JSON, without `kind`), for
/// filters registered by name with [`Registry::register_filter`](crate::Registry::register_filter).
pub trait FilterFactory: Send + Sync + 'static {
    /// Build the filter, or explain why the options do not fit.
    fn build(&self, options: &serde_json::Value) -> Result<Arc<dyn Filter>, crate::BuildError>;
}

impl<F> FilterFactory for F
where
    F: Fn(&serde_json::Value) -> Result<Arc<dyn Filter>, crate::BuildError> + Send + Sync + 'static,
{
    fn build(&self, options: &serde_json::Value) -> Result<Arc<dyn Filter>, crate::BuildError> {
        self(options)
    }
}

/// Drive a future that completes without waiting (every compiled-in filter does, except
/// a cluster rate limit whose [`SharedCounter`] waits) to its end on the current thread.
/// For tests, benches and doc examples; the gateway awaits the future instead.
///
/// # Panics
///
/// If the future is not ready at the first poll.
pub fn block_on_ready<F: Future>(future: F) -> F::Output {
    let mut future = std::pin::pin!(future);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    match future.as_mut().poll(&mut cx) {
        std::task::Poll::Ready(out) => out,
        std::task::Poll::Pending => panic!("block_on_ready: the future is waiting"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::header::HeaderName;

    static X_SEEN: HeaderName = HeaderName::from_static("x-seen");

    /// Answers when asked to, marks responses with its name.
    struct Mark {
        name: &'static str,
        answer: bool,
    }

    #[async_trait]
    impl Filter for Mark {
        fn kind(&self) -> &'static str {
            self.name
        }
        async fn on_request(&self, ctx: &mut RequestContext<'_>) -> Result<Flow, FilterError> {
            ctx.extensions.insert(self.name);
            if self.answer {
                return Ok(Flow::Respond(Response::text(
                    StatusCode::IM_A_TEAPOT,
                    "tea",
                )));
            }
            Ok(Flow::Continue)
        }
        async fn on_upstream_request(
            &self,
            ctx: &mut UpstreamRequestContext<'_>,
        ) -> Result<(), FilterError> {
            let path = format!("/{}{}", self.name, ctx.upstream.uri().path());
            ctx.upstream.set_uri(path.parse().unwrap());
            Ok(())
        }
        async fn on_response(&self, ctx: &mut ResponseContext<'_>) -> Result<(), FilterError> {
            ctx.headers
                .append(X_SEEN.clone(), HeaderValue::from_static(self.name));
            Ok(())
        }
    }

    fn mark(name: &'static str, answer: bool) -> Arc<dyn Filter> {
        Arc::new(Mark { name, answer })
    }

    fn seen(headers: &HeaderMap) -> Vec<&str> {
        headers
            .get_all(&X_SEEN)
            .iter()
            .map(|v| v.to_str().unwrap())
            .collect()
    }

    #[test]
    fn an_answer_stops_the_chain_and_passes_earlier_response_hooks() {
        let chain = FilterChain::new(vec![mark("a", false), mark("b", true), mark("c", false)]);
        let (method, uri, headers) = (Method::GET, Uri::from_static("/"), HeaderMap::new());
        let mut ext = Extensions::new();
        let info = RequestInfo::new(&method, &uri, &headers);
        let mut ctx = RequestContext::new(info, &mut ext);
        let Flow::Respond(r) = block_on_ready(chain.on_request(&mut ctx)).unwrap() else {
            panic!("expected an answer");
        };
        assert_eq!(r.status, StatusCode::IM_A_TEAPOT);
        assert_eq!(seen(&r.headers), ["a"]);
        // "c" never ran; "b" ran last.
        assert_eq!(ext.get::<&'static str>(), Some(&"b"));
    }

    #[test]
    fn hooks_run_in_order_and_see_each_others_changes() {
        let chain = FilterChain::new(vec![mark("a", false), mark("b", false)]);
        let (method, uri, headers) = (Method::GET, Uri::from_static("/x?q=1"), HeaderMap::new());
        let mut ext = Extensions::new();
        let info = RequestInfo::new(&method, &uri, &headers).with_route("r");
        let mut ctx = RequestContext::new(info, &mut ext);
        assert!(matches!(
            block_on_ready(chain.on_request(&mut ctx)).unwrap(),
            Flow::Continue
        ));
        let (mut parts, ()) = http::Request::get("/x?q=1").body(()).unwrap().into_parts();
        let mut up = UpstreamRequestContext::new(info, &mut parts, &mut ext);
        block_on_ready(chain.on_upstream_request(&mut up)).unwrap();
        assert_eq!(parts.uri.path(), "/b/a/x");
        let mut resp = HeaderMap::new();
        let mut rctx = ResponseContext::new(info, StatusCode::OK, &mut resp, &mut ext);
        block_on_ready(chain.on_response(&mut rctx)).unwrap();
        assert_eq!(seen(&resp), ["a", "b"]);
        assert_eq!(format!("{chain:?}"), r#"["a", "b"]"#);
    }

    #[test]
    fn hookless_filters_are_skipped() {
        struct Quiet;
        impl Filter for Quiet {
            fn hooks(&self) -> Hooks {
                Hooks::NONE
            }
            fn on_request_body(&self, _chunk: &BodyChunk<'_>) -> Result<(), FilterError> {
                Err(FilterError::internal("must not run"))
            }
        }
        let chain = FilterChain::new(vec![Arc::new(Quiet)]);
        assert!(!chain.needs_request_body());
        assert!(chain
            .on_request_body(&BodyChunk::new(b"x", 1, true))
            .is_ok());
        assert!(Quiet.kind().ends_with("Quiet"));
    }

    #[test]
    fn errors_and_responses() {
        let e = FilterError::new(StatusCode::PAYLOAD_TOO_LARGE, "too big");
        assert_eq!(e.to_string(), "413: too big");
        assert_eq!(FilterError::internal("x").status, 500);
        let r = Response::new(StatusCode::NO_CONTENT)
            .with_header(X_SEEN.clone(), HeaderValue::from_static("1"));
        assert!(r.body.is_empty() && r.headers.contains_key(&X_SEEN));
    }
}
