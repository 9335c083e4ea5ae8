//! `cors`: Cross-Origin Resource Sharing answered by configuration.
//!
//! ```toml
//! { kind = "cors", allow_origins = ["https://app.example.com"], allow_methods = ["GET", "POST"],
//!   allow_headers = ["content-type"], max_age = "10m", allow_credentials = false }
//! ```
//!
//! - A preflight (`OPTIONS` with `Origin` and `Access-Control-Request-Method`) is answered
//!   at the edge and never reaches a backend: 204 with `Access-Control-Allow-Origin`,
//!   `-Allow-Methods`, `-Allow-Headers`, `-Max-Age` and `-Allow-Credentials` when the
//!   origin, the method and every requested header are allowed; 403 without CORS headers
//!   otherwise (the browser then blocks the request).
//! - Any other request is forwarded; if its `Origin` is allowed, the response gets
//!   `Access-Control-Allow-Origin` (and `-Allow-Credentials`, `-Expose-Headers` when
//!   configured), replacing whatever the backend sent; for any other origin (or none) the
//!   backend's own `Access-Control-Allow-*` grant is removed: the edge owns the policy.
//!   Responses get `Vary: Origin` unless every origin is allowed without credentials (then
//!   the answer is `*` for all).
//!
//! `allow_origins` entries are `"*"`, an origin (`"https://app.example.com"`,
//! `"http://localhost:3000"`) or a subdomain pattern (`"https://*.example.com"`: one or
//! more labels before `.example.com`). `"*"` with `allow_credentials = true` is refused:
//! it would let every site read credentialed answers.
//!
//! `allow_methods` defaults to `GET`, `HEAD`, `POST`; `"*"` allows any. GET, HEAD and POST
//! always pass a preflight (the Fetch standard's safelisted methods). `allow_headers`
//! defaults to none; `"*"` allows any requested header (the request's list is echoed).
//! `expose_headers` (an addition) lists response headers scripts may read.

use http::header::{
    HeaderName, HeaderValue, ACCESS_CONTROL_ALLOW_CREDENTIALS, ACCESS_CONTROL_ALLOW_HEADERS,
    ACCESS_CONTROL_ALLOW_METHODS, ACCESS_CONTROL_ALLOW_ORIGIN, ACCESS_CONTROL_EXPOSE_HEADERS,
    ACCESS_CONTROL_MAX_AGE, ACCESS_CONTROL_REQUEST_HEADERS, ACCESS_CONTROL_REQUEST_METHOD, ORIGIN,
};
use http::{Method, StatusCode};
use serde::Deserialize;
use switchyard_plugin::{
    async_trait, Filter, FilterError, Flow, HeaderEditor, Hooks, RequestContext, RequestInfo,
    Response, ResponseContext,
};

use crate::util::{add_vary, header_name, is_token, ConfigDuration};

/// The configuration of `cors`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CorsConfig {
    /// Origins allowed: `"*"`, `"https://app.example.com"`, `"https://*.example.com"`.
    pub allow_origins: Vec<String>,
    /// Methods allowed (default `GET`, `HEAD`, `POST`; `"*"`: any).
    #[serde(default = "default_methods")]
    pub allow_methods: Vec<String>,
    /// Request headers allowed (default none; `"*"`: any).
    #[serde(default)]
    pub allow_headers: Vec<String>,
    /// Response headers scripts may read.
    #[serde(default)]
    pub expose_headers: Vec<String>,
    /// How long a browser may cache a preflight answer.
    pub max_age: Option<ConfigDuration>,
    /// Whether credentialed requests (cookies, `Authorization`) may read the answer.
    #[serde(default)]
    pub allow_credentials: bool,
}

fn default_methods() -> Vec<String> {
    vec!["GET".into(), "HEAD".into(), "POST".into()]
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum OriginRule {
    Any,
    Exact(String),
    /// `scheme://` and `.domain[:port]` around one or more labels.
    Subdomains {
        scheme: String,
        suffix: String,
    },
}

impl OriginRule {
    fn parse(text: &str) -> Result<Self, String> {
        if text == "*" {
            return Ok(Self::Any);
        }
        let lower = text.to_ascii_lowercase();
        let bad = || {
            format!(
                "invalid origin {text:?} in allow_origins: expected \"*\", \"https://host[:port]\" or \"https://*.domain\""
            )
        };
        let Some((scheme, authority)) = lower.split_once("://") else {
            return Err(bad());
        };
        if scheme.is_empty()
            || !scheme
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b))
            || authority.is_empty()
            || authority.contains(['/', '?', '#', ' ', '@'])
        {
            return Err(bad());
        }
        match authority.strip_prefix("*.") {
            Some(rest) if !rest.is_empty() && !rest.contains('*') => Ok(Self::Subdomains {
                scheme: format!("{scheme}://"),
                suffix: format!(".{rest}"),
            }),
            Some(_) => Err(bad()),
            None if authority.contains('*') => Err(bad()),
            None => Ok(Self::Exact(lower)),
        }
    }

    fn matches(&self, origin: &[u8]) -> bool {
        match self {
            Self::Any => true,
            Self::Exact(o) => origin.eq_ignore_ascii_case(o.as_bytes()),
            Self::Subdomains { scheme, suffix } => {
                origin.len() > scheme.len() + suffix.len()
                    && origin[..scheme.len()].eq_ignore_ascii_case(scheme.as_bytes())
                    && origin[origin.len() - suffix.len()..].eq_ignore_ascii_case(suffix.as_bytes())
                    && !origin[scheme.len()..origin.len() - suffix.len()]
                        .iter()
                        .any(|b| b"/:@?#".contains(b))
            }
        }
    }
}

/// The `cors` filter.
#[derive(Debug)]
pub struct Cors {
    origins: Vec<OriginRule>,
    /// Every origin allowed, without credentials: answer `*`, no `Vary: Origin`.
    star: bool,
    any_method: bool,
    methods: Vec<Method>,
    methods_value: HeaderValue,
    any_header: bool,
    headers: Vec<HeaderName>,
    headers_value: Option<HeaderValue>,
    expose_value: Option<HeaderValue>,
    max_age_value: Option<HeaderValue>,
    credentials: bool,
}

static TRUE: HeaderValue = HeaderValue::from_static("true");
static STAR: HeaderValue = HeaderValue::from_static("*");

impl Cors {
    /// Check and compile `config`.
    pub fn new(config: &CorsConfig) -> Result<Self, String> {
        if config.allow_origins.is_empty() {
            return Err("allow_origins is empty: list the origins allowed, or \"*\"".into());
        }
        let origins = config
            .allow_origins
            .iter()
            .map(|o| OriginRule::parse(o))
            .collect::<Result<Vec<_>, _>>()?;
        let any_origin = origins.contains(&OriginRule::Any);
        if any_origin && config.allow_credentials {
            return Err(
                "allow_origins = [\"*\"] with allow_credentials = true would let every site read credentialed answers: list the origins"
                    .into(),
            );
        }
        let any_method = config.allow_methods.iter().any(|m| m == "*");
        let mut methods = Vec::new();
        for m in config.allow_methods.iter().filter(|m| *m != "*") {
            if !is_token(m) {
                return Err(format!("invalid method {m:?} in allow_methods"));
            }
            methods.push(
                Method::from_bytes(m.to_ascii_uppercase().as_bytes()).map_err(|e| e.to_string())?,
            );
        }
        let methods_value = if any_method {
            STAR.clone()
        } else {
            join(methods.iter().map(Method::as_str)).ok_or("allow_methods is empty")?
        };
        let any_header = config.allow_headers.iter().any(|h| h == "*");
        let headers = config
            .allow_headers
            .iter()
            .filter(|h| *h != "*")
            .map(|h| header_name(h))
            .collect::<Result<Vec<_>, _>>()?;
        let headers_value = join(headers.iter().map(HeaderName::as_str));
        let expose = config
            .expose_headers
            .iter()
            .map(|h| header_name(h))
            .collect::<Result<Vec<_>, _>>()?;
        let expose_value = join(expose.iter().map(HeaderName::as_str));
        let max_age_value = config.max_age.map(|d| HeaderValue::from(d.0.as_secs()));
        Ok(Self {
            star: any_origin,
            origins,
            any_method,
            methods,
            methods_value,
            any_header,
            headers,
            headers_value,
            expose_value,
            max_age_value,
            credentials: config.allow_credentials,
        })
    }

    /// Whether `origin` may read answers.
    pub fn origin_allowed(&self, origin: &[u8]) -> bool {
        self.origins.iter().any(|r| r.matches(origin))
    }

    fn method_allowed(&self, method: &[u8]) -> bool {
        self.any_method
            || matches!(method, b"GET" | b"HEAD" | b"POST")
            || self.methods.iter().any(|m| m.as_str().as_bytes() == method)
    }

    fn headers_allowed(&self, requested: Option<&HeaderValue>) -> bool {
        if self.any_header {
            return true;
        }
        let Some(requested) = requested else {
            return true;
        };
        requested
            .as_bytes()
            .split(|&b| b == b',')
            .map(<[u8]>::trim_ascii)
            .filter(|h| !h.is_empty())
            .all(|h| {
                self.headers
                    .iter()
                    .any(|a| a.as_str().as_bytes().eq_ignore_ascii_case(h))
            })
    }

    /// The answer to a preflight from `origin`.
    fn preflight(&self, request: &RequestInfo<'_>, origin: &HeaderValue) -> Response {
        let method = request.headers.get(ACCESS_CONTROL_REQUEST_METHOD);
        let requested_headers = request.headers.get(ACCESS_CONTROL_REQUEST_HEADERS);
        let ok = self.origin_allowed(origin.as_bytes())
            && method.is_some_and(|m| self.method_allowed(m.as_bytes()))
            && self.headers_allowed(requested_headers);
        let mut r = if ok {
            Response::new(StatusCode::NO_CONTENT)
        } else {
            Response::text(StatusCode::FORBIDDEN, "forbidden: CORS preflight refused\n")
        };
        if ok {
            let h = &mut r.headers;
            h.insert(ACCESS_CONTROL_ALLOW_ORIGIN, self.allow_origin_value(origin));
            h.insert(ACCESS_CONTROL_ALLOW_METHODS, self.methods_value.clone());
            let allow_headers = if self.any_header {
                requested_headers.cloned()
            } else {
                self.headers_value.clone()
            };
            if let Some(v) = allow_headers {
                h.insert(ACCESS_CONTROL_ALLOW_HEADERS, v);
            }
            if let Some(v) = &self.max_age_value {
                h.insert(ACCESS_CONTROL_MAX_AGE, v.clone());
            }
            if self.credentials {
                h.insert(ACCESS_CONTROL_ALLOW_CREDENTIALS, TRUE.clone());
            }
        }
        if !self.star {
            add_vary(&mut r.headers, "Origin");
        }
        add_vary(&mut r.headers, "Access-Control-Request-Method");
        add_vary(&mut r.headers, "Access-Control-Request-Headers");
        r
    }

    fn allow_origin_value(&self, origin: &HeaderValue) -> HeaderValue {
        if self.star {
            STAR.clone()
        } else {
            origin.clone()
        }
    }

    /// Add the CORS headers of an ordinary (not preflight) response.
    pub fn decorate(&self, request: &RequestInfo<'_>, headers: &mut dyn HeaderEditor) {
        match request.headers.get(ORIGIN) {
            Some(origin) if self.origin_allowed(origin.as_bytes()) => {
                headers.insert(ACCESS_CONTROL_ALLOW_ORIGIN, self.allow_origin_value(origin));
                if self.credentials {
                    headers.insert(ACCESS_CONTROL_ALLOW_CREDENTIALS, TRUE.clone());
                }
                if let Some(v) = &self.expose_value {
                    headers.insert(ACCESS_CONTROL_EXPOSE_HEADERS, v.clone());
                }
            }
            _ => {
                // The edge owns the CORS policy: a backend's own grant does not widen it.
                if headers.headers().contains_key(ACCESS_CONTROL_ALLOW_ORIGIN) {
                    headers.remove(&ACCESS_CONTROL_ALLOW_ORIGIN);
                    headers.remove(&ACCESS_CONTROL_ALLOW_CREDENTIALS);
                    headers.remove(&ACCESS_CONTROL_EXPOSE_HEADERS);
                }
            }
        }
        if !self.star {
            add_vary(headers, "Origin");
        }
    }
}

fn join<'a>(items: impl Iterator<Item = &'a str>) -> Option<HeaderValue> {
    let mut out = String::new();
    for item in items {
        if !out.is_empty() {
            out.push_str(", ");
        }
        out.push_str(item);
    }
    if out.is_empty() {
        None
    } else {
        HeaderValue::from_str(&out).ok()
    }
}

#[async_trait]
impl Filter for Cors {
    fn kind(&self) -> &'static str {
        "cors"
    }

    fn hooks(&self) -> Hooks {
        Hooks {
            request: true,
            response: true,
            ..Hooks::NONE
        }
    }

    async fn on_request(&self, ctx: &mut RequestContext<'_>) -> Result<Flow, FilterError> {
        let request = &ctx.request;
        if request.method != Method::OPTIONS
            || !request.headers.contains_key(ACCESS_CONTROL_REQUEST_METHOD)
        {
            return Ok(Flow::Continue);
        }
        match request.headers.get(ORIGIN) {
            Some(origin) => Ok(Flow::Respond(self.preflight(request, origin))),
            None => Ok(Flow::Continue),
        }
    }

    async fn on_response(&self, ctx: &mut ResponseContext<'_>) -> Result<(), FilterError> {
        self.decorate(&ctx.request, ctx.headers);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::header::VARY;
    use http::{Extensions, HeaderMap, Uri};
    use switchyard_plugin::filter::block_on_ready;

    fn cors(json: serde_json::Value) -> Result<Cors, String> {
        let c: CorsConfig = serde_json::from_value(json).map_err(|e| e.to_string())?;
        Cors::new(&c)
    }

    fn contract() -> Cors {
        cors(serde_json::json!({
            "allow_origins": ["https://app.example.com"], "allow_methods": ["GET", "POST", "put"],
            "allow_headers": ["content-type", "X-Token"], "max_age": "10m", "allow_credentials": true
        }))
        .unwrap()
    }

    fn request(f: &Cors, method: Method, headers: &[(&'static str, &'static str)]) -> Flow {
        let u = Uri::from_static("/api");
        let mut h = HeaderMap::new();
        for (n, v) in headers {
            h.append(*n, HeaderValue::from_static(v));
        }
        let mut ext = Extensions::new();
        let mut ctx = RequestContext::new(RequestInfo::new(&method, &u, &h), &mut ext);
        block_on_ready(f.on_request(&mut ctx)).unwrap()
    }

    fn response(f: &Cors, headers: &[(&'static str, &'static str)]) -> HeaderMap {
        let (m, u) = (Method::GET, Uri::from_static("/api"));
        let mut h = HeaderMap::new();
        for (n, v) in headers {
            h.append(*n, HeaderValue::from_static(v));
        }
        let mut resp = HeaderMap::new();
        resp.insert(
            ACCESS_CONTROL_ALLOW_ORIGIN,
            HeaderValue::from_static("https://evil.example"),
        );
        resp.insert(VARY, HeaderValue::from_static("Accept-Encoding"));
        let mut ext = Extensions::new();
        let info = RequestInfo::new(&m, &u, &h);
        let mut ctx = ResponseContext::new(info, StatusCode::OK, &mut resp, &mut ext);
        block_on_ready(f.on_response(&mut ctx)).unwrap();
        resp
    }

    fn vary(h: &HeaderMap) -> Vec<&str> {
        h.get_all(VARY)
            .iter()
            .map(|v| v.to_str().unwrap())
            .collect()
    }

    #[test]
    fn preflight_is_answered_at_the_edge() {
        let f = contract();
        let Flow::Respond(r) = request(
            &f,
            Method::OPTIONS,
            &[
                ("origin", "https://app.example.com"),
                ("access-control-request-method", "PUT"),
                ("access-control-request-headers", "Content-Type, x-token"),
            ],
        ) else {
            panic!("preflight must be answered");
        };
        assert_eq!(r.status, StatusCode::NO_CONTENT);
        let h = &r.headers;
        assert_eq!(h[ACCESS_CONTROL_ALLOW_ORIGIN], "https://app.example.com");
        assert_eq!(h[ACCESS_CONTROL_ALLOW_METHODS], "GET, POST, PUT");
        assert_eq!(h[ACCESS_CONTROL_ALLOW_HEADERS], "content-type, x-token");
        assert_eq!(h[ACCESS_CONTROL_MAX_AGE], "600");
        assert_eq!(h[ACCESS_CONTROL_ALLOW_CREDENTIALS], "true");
        assert_eq!(
            vary(h),
            [
                "Origin",
                "Access-Control-Request-Method",
                "Access-Control-Request-Headers"
            ]
        );
        assert!(r.body.is_empty());
    }

    #[test]
    fn bad_preflights_are_refused() {
        let f = contract();
        for headers in [
            &[
                ("origin", "https://other.example.com"),
                ("access-control-request-method", "GET"),
            ][..],
            &[
                ("origin", "https://app.example.com"),
                ("access-control-request-method", "DELETE"),
            ],
            &[
                ("origin", "https://app.example.com"),
                ("access-control-request-method", "GET"),
                ("access-control-request-headers", "x-other"),
            ],
        ] {
            let Flow::Respond(r) = request(&f, Method::OPTIONS, headers) else {
                panic!("refused preflights are answered too");
            };
            assert_eq!(r.status, StatusCode::FORBIDDEN, "{headers:?}");
            assert!(!r.headers.contains_key(ACCESS_CONTROL_ALLOW_ORIGIN));
        }
        // Not preflights: forwarded.
        assert!(matches!(
            request(
                &f,
                Method::OPTIONS,
                &[("origin", "https://app.example.com")]
            ),
            Flow::Continue
        ));
        assert!(matches!(
            request(
                &f,
                Method::OPTIONS,
                &[("access-control-request-method", "GET")]
            ),
            Flow::Continue
        ));
        assert!(matches!(
            request(&f, Method::GET, &[("origin", "https://app.example.com")]),
            Flow::Continue
        ));
    }

    #[test]
    fn ordinary_responses_get_cors_headers_for_allowed_origins() {
        let f = contract();
        let h = response(&f, &[("origin", "https://app.example.com")]);
        assert_eq!(h[ACCESS_CONTROL_ALLOW_ORIGIN], "https://app.example.com");
        assert_eq!(h[ACCESS_CONTROL_ALLOW_CREDENTIALS], "true");
        assert_eq!(vary(&h), ["Accept-Encoding", "Origin"]);
        let h = response(&f, &[("origin", "https://other.example.com")]);
        // The backend's own grant is removed for an origin the edge does not allow.
        assert!(!h.contains_key(ACCESS_CONTROL_ALLOW_ORIGIN));
        assert!(!h.contains_key(ACCESS_CONTROL_ALLOW_CREDENTIALS));
        assert_eq!(vary(&h), ["Accept-Encoding", "Origin"]);
        let h = response(&f, &[]);
        assert_eq!(vary(&h), ["Accept-Encoding", "Origin"]);
    }

    #[test]
    fn wildcards() {
        let f = cors(
            serde_json::json!({"allow_origins": ["*"], "allow_headers": ["*"],
            "allow_methods": ["*"], "expose_headers": ["x-total"]}),
        )
        .unwrap();
        let h = response(&f, &[("origin", "https://anyone.example")]);
        assert_eq!(h[ACCESS_CONTROL_ALLOW_ORIGIN], "*");
        assert_eq!(h[ACCESS_CONTROL_EXPOSE_HEADERS], "x-total");
        assert_eq!(vary(&h), ["Accept-Encoding"]);
        let Flow::Respond(r) = request(
            &f,
            Method::OPTIONS,
            &[
                ("origin", "https://x.example"),
                ("access-control-request-method", "PATCH"),
                ("access-control-request-headers", "x-a, x-b"),
            ],
        ) else {
            panic!()
        };
        assert_eq!(r.status, StatusCode::NO_CONTENT);
        assert_eq!(r.headers[ACCESS_CONTROL_ALLOW_HEADERS], "x-a, x-b");
        assert_eq!(r.headers[ACCESS_CONTROL_ALLOW_METHODS], "*");

        let f = cors(serde_json::json!({"allow_origins": ["https://*.example.com"]})).unwrap();
        assert!(f.origin_allowed(b"https://a.example.com"));
        assert!(f.origin_allowed(b"https://a.b.Example.com"));
        assert!(!f.origin_allowed(b"https://example.com"));
        assert!(!f.origin_allowed(b"http://a.example.com"));
        assert!(!f.origin_allowed(b"https://a.example.com:8443"));
        assert!(!f.origin_allowed(b"https://evil.com/.example.com"));
    }

    #[test]
    fn bad_configurations() {
        for (json, why) in [
            (serde_json::json!({"allow_origins": []}), "empty"),
            (
                serde_json::json!({"allow_origins": ["app.example.com"]}),
                "invalid origin",
            ),
            (
                serde_json::json!({"allow_origins": ["https://app.example.com/"]}),
                "invalid origin",
            ),
            (
                serde_json::json!({"allow_origins": ["https://a*.example.com"]}),
                "invalid origin",
            ),
            (
                serde_json::json!({"allow_origins": ["*"], "allow_credentials": true}),
                "credentialed",
            ),
            (
                serde_json::json!({"allow_origins": ["*"], "allow_methods": ["GE T"]}),
                "invalid method",
            ),
            (
                serde_json::json!({"allow_origins": ["*"], "allow_methods": []}),
                "allow_methods is empty",
            ),
            (
                serde_json::json!({"allow_origins": ["*"], "allow_headers": ["a b"]}),
                "invalid header",
            ),
            (
                serde_json::json!({"allow_origins": ["*"], "max_age": 600}),
                "duration",
            ),
            (
                serde_json::json!({"allow_origins": ["*"], "origins": []}),
                "unknown field",
            ),
        ] {
            let err = cors(json.clone()).unwrap_err();
            assert!(err.contains(why), "{json}: {err}");
        }
    }
}
