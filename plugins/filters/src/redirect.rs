//! `redirect`: answer with a redirect to a location built from the request.
//!
//! ```toml
//! { kind = "redirect", status = 301, location = "https://new.example.com{path}{query}" }
//! ```
//!
//! `status` is 301, 302 (the default), 303, 307 or 308. In `location`:
//!
//! | placeholder | becomes |
//! | --- | --- |
//! | `{host}` | the request's host as sent, a port included (`localhost` when it has none) |
//! | `{path}` | the request's path, as sent (percent-encoding kept) |
//! | `{query}` | `?` and the query when the request has one; empty otherwise |
//!
//! Any other `{...}` is a configuration error. The answer has no body.

use http::header::{HeaderValue, LOCATION};
use http::StatusCode;
use serde::Deserialize;
use switchyard_plugin::{
    async_trait, Filter, FilterError, Flow, Hooks, RequestContext, RequestInfo, Response,
};

/// The configuration of `redirect`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedirectConfig {
    /// 301, 302 (default), 303, 307 or 308.
    #[serde(default = "found")]
    pub status: u16,
    /// The location template.
    pub location: String,
}

fn found() -> u16 {
    302
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Text(String),
    Host,
    Path,
    Query,
}

/// The `redirect` filter.
#[derive(Debug)]
pub struct Redirect {
    status: StatusCode,
    parts: Vec<Part>,
    /// The location when the template has no placeholder.
    fixed: Option<HeaderValue>,
    /// Length of the literal text, to size the location once.
    text_len: usize,
}

impl Redirect {
    /// Check and compile `config`.
    pub fn new(config: &RedirectConfig) -> Result<Self, String> {
        if !matches!(config.status, 301 | 302 | 303 | 307 | 308) {
            return Err(format!(
                "redirect status {} is not a redirect: expected 301, 302, 303, 307 or 308",
                config.status
            ));
        }
        let status = StatusCode::from_u16(config.status).map_err(|e| e.to_string())?;
        if config.location.is_empty() {
            return Err("`location` is empty".into());
        }
        let mut parts = Vec::new();
        let mut rest = config.location.as_str();
        while let Some(open) = rest.find('{') {
            if open > 0 {
                parts.push(Part::Text(rest[..open].to_owned()));
            }
            let Some(close) = rest[open..].find('}') else {
                return Err(format!(
                    "`location` has a `{{` without `}}`: {:?}",
                    config.location
                ));
            };
            parts.push(match &rest[open + 1..open + close] {
                "host" => Part::Host,
                "path" => Part::Path,
                "query" => Part::Query,
                other => {
                    return Err(format!(
                        "unknown placeholder `{{{other}}}` in `location`: expected {{host}}, {{path}} or {{query}}"
                    ))
                }
            });
            rest = &rest[open + close + 1..];
        }
        if !rest.is_empty() {
            parts.push(Part::Text(rest.to_owned()));
        }
        let mut text_len = 0;
        for p in &parts {
            if let Part::Text(t) = p {
                if !t.bytes().all(|b| b.is_ascii_graphic()) {
                    return Err(format!(
                        "`location` {:?} must be visible ASCII without spaces: percent-encode other characters",
                        config.location
                    ));
                }
                text_len += t.len();
            }
        }
        let fixed = match parts.as_slice() {
            [Part::Text(t)] => Some(HeaderValue::from_str(t).map_err(|e| e.to_string())?),
            _ => None,
        };
        Ok(Self {
            status,
            parts,
            fixed,
            text_len,
        })
    }

    /// The location for `request`.
    pub fn location(&self, request: &RequestInfo<'_>) -> String {
        let host = request.host.unwrap_or("localhost");
        let query = request.query();
        let mut out = String::with_capacity(
            self.text_len
                + host.len()
                + request.uri.path().len()
                + query.map_or(0, |q| q.len() + 1),
        );
        for p in &self.parts {
            match p {
                Part::Text(t) => out.push_str(t),
                Part::Host => out.push_str(host),
                Part::Path => out.push_str(request.path()),
                Part::Query => {
                    if let Some(q) = query {
                        out.push('?');
                        out.push_str(q);
                    }
                }
            }
        }
        out
    }
}

#[async_trait]
impl Filter for Redirect {
    fn kind(&self) -> &'static str {
        "redirect"
    }

    fn hooks(&self) -> Hooks {
        Hooks {
            request: true,
            ..Hooks::NONE
        }
    }

    async fn on_request(&self, ctx: &mut RequestContext<'_>) -> Result<Flow, FilterError> {
        let location = match &self.fixed {
            Some(v) => v.clone(),
            None => HeaderValue::try_from(self.location(&ctx.request)).map_err(|_| {
                FilterError::new(
                    StatusCode::BAD_REQUEST,
                    "bad request: the redirect location is not a valid header",
                )
            })?,
        };
        Ok(Flow::Respond(
            Response::new(self.status).with_header(LOCATION, location),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::{Extensions, HeaderMap, Method, Uri};
    use switchyard_plugin::filter::block_on_ready;

    fn redirect(status: u16, location: &str) -> Result<Redirect, String> {
        Redirect::new(&RedirectConfig {
            status,
            location: location.into(),
        })
    }

    fn answer(f: &Redirect, uri: &'static str, host: Option<&str>) -> Response {
        let (m, u, h) = (Method::GET, Uri::from_static(uri), HeaderMap::new());
        let mut ext = Extensions::new();
        let info = RequestInfo::new(&m, &u, &h).with_host(host);
        let mut ctx = RequestContext::new(info, &mut ext);
        match block_on_ready(f.on_request(&mut ctx)).unwrap() {
            Flow::Respond(r) => r,
            Flow::Continue => panic!("a redirect always answers"),
        }
    }

    #[test]
    fn placeholders() {
        let f = redirect(301, "https://new.example.com{path}{query}").unwrap();
        let r = answer(&f, "/a/b%20c?x=1&y=2", Some("old.example.com"));
        assert_eq!(r.status, 301);
        assert_eq!(
            r.headers[LOCATION],
            "https://new.example.com/a/b%20c?x=1&y=2"
        );
        let r = answer(&f, "/a", Some("old.example.com"));
        assert_eq!(r.headers[LOCATION], "https://new.example.com/a");
        let f = redirect(308, "https://{host}/v2{path}").unwrap();
        let r = answer(&f, "/x?q", Some("h:8080"));
        assert_eq!(r.headers[LOCATION], "https://h:8080/v2/x");
        let r = answer(&f, "/x", None);
        assert_eq!(r.headers[LOCATION], "https://localhost/v2/x");
        let f = redirect(302, "/maintenance.html").unwrap();
        assert_eq!(
            answer(&f, "/x", None).headers[LOCATION],
            "/maintenance.html"
        );
    }

    #[test]
    fn bad_configurations() {
        for (status, location, why) in [
            (200, "/x", "not a redirect"),
            (304, "/x", "not a redirect"),
            (301, "", "empty"),
            (301, "/{path", "without"),
            (301, "/{uri}", "unknown placeholder `{uri}`"),
            (301, "/é", "percent-encode"),
        ] {
            let err = redirect(status, location).unwrap_err();
            assert!(err.contains(why), "{location}: {err}");
        }
        let c: RedirectConfig =
            serde_json::from_value(serde_json::json!({"location": "/x"})).unwrap();
        assert_eq!(c.status, 302);
    }
}
