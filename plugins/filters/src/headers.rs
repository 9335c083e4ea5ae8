//! `request-headers` and `response-headers`: set, add and remove headers.
//!
//! ```toml
//! { kind = "request-headers", set = { "x-env" = "prod" }, add = { "x-tag" = "a" }, remove = ["x-debug"] }
//! { kind = "response-headers", set = { "x-frame-options" = "DENY" }, remove = ["server"] }
//! ```
//!
//! `remove` drops every value of a header, `set` replaces (or creates) a header with one
//! value, `add` appends a value to those the header already has; they apply in that order.
//! An `add` value may be a list: `add = { "x-tag" = ["a", "b"] }`.
//!
//! `request-headers` edits the request the backend sees (after the gateway's own
//! forwarding headers, so it can override them); the client's request as the other filters
//! see it is unchanged. `response-headers` edits the response the client receives, the
//! gateway's answers made by later filters of the route included.
//!
//! `Content-Length` and `Transfer-Encoding` cannot be edited: they are the message's
//! framing, which the gateway owns.

use std::collections::BTreeMap;

use http::header::{HeaderName, HeaderValue, CONTENT_LENGTH, TRANSFER_ENCODING};
use serde::Deserialize;
use switchyard_plugin::{
    async_trait, Filter, FilterError, HeaderEditor, Hooks, ResponseContext, UpstreamRequestContext,
};

use crate::util::{header_name, header_value};

/// One value or several.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany {
    /// `"a"`.
    One(String),
    /// `["a", "b"]`.
    Many(Vec<String>),
}

impl OneOrMany {
    fn values(&self) -> &[String] {
        match self {
            OneOrMany::One(v) => std::slice::from_ref(v),
            OneOrMany::Many(v) => v,
        }
    }
}

/// The configuration of `request-headers` and `response-headers`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeadersConfig {
    /// Headers to set, replacing every value they had.
    #[serde(default)]
    pub set: BTreeMap<String, String>,
    /// Values to append.
    #[serde(default)]
    pub add: BTreeMap<String, OneOrMany>,
    /// Headers to remove.
    #[serde(default)]
    pub remove: Vec<String>,
}

/// Compiled header edits: names and values parsed once.
///
/// ```
/// use http::HeaderMap;
/// use switchyard_filters::headers::{HeaderRules, HeadersConfig};
///
/// let config: HeadersConfig = serde_json::from_value(serde_json::json!({
///     "set": {"x-env": "prod"}, "add": {"x-tag": ["a", "b"]}, "remove": ["x-debug"]
/// })).unwrap();
/// let rules = HeaderRules::new(&config).unwrap();
/// let mut headers = HeaderMap::new();
/// headers.insert("x-debug", "1".parse().unwrap());
/// headers.insert("x-env", "dev".parse().unwrap());
/// rules.apply(&mut headers);
/// assert_eq!(headers["x-env"], "prod");
/// assert_eq!(headers.get_all("x-tag").iter().count(), 2);
/// assert!(!headers.contains_key("x-debug"));
/// ```
#[derive(Debug, Clone, Default)]
pub struct HeaderRules {
    remove: Vec<HeaderName>,
    set: Vec<(HeaderName, HeaderValue)>,
    add: Vec<(HeaderName, HeaderValue)>,
}

impl HeaderRules {
    /// Check and compile `config`.
    pub fn new(config: &HeadersConfig) -> Result<Self, String> {
        let name = |n: &str| -> Result<HeaderName, String> {
            let name = header_name(n)?;
            if name == CONTENT_LENGTH || name == TRANSFER_ENCODING {
                return Err(format!(
                    "header `{n}` is the message framing, which the gateway owns: it cannot be edited"
                ));
            }
            Ok(name)
        };
        let mut rules = HeaderRules::default();
        for n in &config.remove {
            rules.remove.push(name(n)?);
        }
        for (n, v) in &config.set {
            rules.set.push((name(n)?, header_value(n, v)?));
        }
        for (n, values) in &config.add {
            let hn = name(n)?;
            for v in values.values() {
                rules.add.push((hn.clone(), header_value(n, v)?));
            }
        }
        if rules.is_empty() {
            return Err("nothing to do: give at least one of `set`, `add`, `remove`".into());
        }
        Ok(rules)
    }

    /// Whether there is no edit.
    pub fn is_empty(&self) -> bool {
        self.remove.is_empty() && self.set.is_empty() && self.add.is_empty()
    }

    /// Apply the edits: remove, then set, then add.
    pub fn apply(&self, headers: &mut dyn HeaderEditor) {
        for n in &self.remove {
            headers.remove(n);
        }
        for (n, v) in &self.set {
            headers.insert(n.clone(), v.clone());
        }
        for (n, v) in &self.add {
            headers.append(n.clone(), v.clone());
        }
    }
}

/// `request-headers`: edits the request the backend sees.
#[derive(Debug)]
pub struct RequestHeaders(pub HeaderRules);

/// `response-headers`: edits the response the client receives.
#[derive(Debug)]
pub struct ResponseHeaders(pub HeaderRules);

#[async_trait]
impl Filter for RequestHeaders {
    fn kind(&self) -> &'static str {
        "request-headers"
    }

    fn hooks(&self) -> Hooks {
        Hooks {
            upstream_request: true,
            ..Hooks::NONE
        }
    }

    async fn on_upstream_request(
        &self,
        ctx: &mut UpstreamRequestContext<'_>,
    ) -> Result<(), FilterError> {
        self.0.apply(ctx.upstream);
        Ok(())
    }
}

#[async_trait]
impl Filter for ResponseHeaders {
    fn kind(&self) -> &'static str {
        "response-headers"
    }

    fn hooks(&self) -> Hooks {
        Hooks {
            response: true,
            ..Hooks::NONE
        }
    }

    async fn on_response(&self, ctx: &mut ResponseContext<'_>) -> Result<(), FilterError> {
        self.0.apply(ctx.headers);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::{Extensions, HeaderMap, Method, StatusCode, Uri};
    use switchyard_plugin::filter::block_on_ready;
    use switchyard_plugin::RequestInfo;

    fn config(json: serde_json::Value) -> Result<HeaderRules, String> {
        let c: HeadersConfig = serde_json::from_value(json).map_err(|e| e.to_string())?;
        HeaderRules::new(&c)
    }

    #[test]
    fn request_headers_edit_the_upstream_request() {
        let f = RequestHeaders(
            config(serde_json::json!({
                "set": {"x-env": "prod", "X-Forwarded-Host": "api.example.com"},
                "add": {"x-tag": "a"},
                "remove": ["x-debug"]
            }))
            .unwrap(),
        );
        let (m, u, h) = (Method::GET, Uri::from_static("/"), HeaderMap::new());
        let info = RequestInfo::new(&m, &u, &h);
        let (mut parts, ()) = http::Request::get("/")
            .header("x-debug", "1")
            .header("x-env", "dev")
            .header("x-env", "test")
            .header("x-tag", "0")
            .header("x-forwarded-host", "internal")
            .body(())
            .unwrap()
            .into_parts();
        let mut ext = Extensions::new();
        let mut ctx = UpstreamRequestContext::new(info, &mut parts, &mut ext);
        block_on_ready(f.on_upstream_request(&mut ctx)).unwrap();
        assert!(!parts.headers.contains_key("x-debug"));
        let env: Vec<_> = parts.headers.get_all("x-env").iter().collect();
        assert_eq!(env, ["prod"]);
        let tags: Vec<_> = parts.headers.get_all("x-tag").iter().collect();
        assert_eq!(tags, ["0", "a"]);
        assert_eq!(parts.headers["x-forwarded-host"], "api.example.com");
    }

    #[test]
    fn response_headers_edit_the_response() {
        let f = ResponseHeaders(
            config(serde_json::json!({"set": {"x-frame-options": "DENY"}, "remove": ["server"]}))
                .unwrap(),
        );
        let (m, u, h) = (Method::GET, Uri::from_static("/"), HeaderMap::new());
        let mut resp = HeaderMap::new();
        resp.insert("server", "backend/1.0".parse().unwrap());
        let mut ext = Extensions::new();
        let info = RequestInfo::new(&m, &u, &h);
        let mut ctx = ResponseContext::new(info, StatusCode::OK, &mut resp, &mut ext);
        block_on_ready(f.on_response(&mut ctx)).unwrap();
        assert_eq!(resp["x-frame-options"], "DENY");
        assert!(!resp.contains_key("server"));
    }

    #[test]
    fn bad_configurations() {
        for (json, why) in [
            (serde_json::json!({}), "nothing to do"),
            (
                serde_json::json!({"set": {"bad name": "x"}}),
                "invalid header name",
            ),
            (serde_json::json!({"set": {"x": "a\nb"}}), "invalid value"),
            (serde_json::json!({"remove": ["content-length"]}), "framing"),
            (
                serde_json::json!({"add": {"transfer-encoding": "chunked"}}),
                "framing",
            ),
            (serde_json::json!({"sett": {"x": "1"}}), "unknown field"),
        ] {
            let err = config(json).unwrap_err();
            assert!(err.contains(why), "{err}");
        }
    }
}
