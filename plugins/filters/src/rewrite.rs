//! `rewrite`: change the path the backend sees with a regular expression.
//!
//! ```toml
//! { kind = "rewrite", pattern = "^/old/(.*)$", replacement = "/new/$1" }
//! ```
//!
//! The first match of `pattern` in the path is replaced by `replacement` (as `sed s///`
//! without `g`): with a pattern anchored by `^...$`, the whole path. A path that does not
//! match is left alone. The query is kept. `replacement` refers to groups as `$1` or
//! `${1}`, `$name` or `${name}`; write `${1}x` (not `$1x`) when a letter, digit or `_`
//! follows, and `$$` for a `$`. A reference to a group the pattern does not have is a
//! configuration error. A result that does not start with `/` gets one.
//!
//! The rewrite applies to the request sent upstream, after the route's `strip_prefix`;
//! routing, the other filters and the access log see the client's path.

use http::{StatusCode, Uri};
use regex::Regex;
use serde::Deserialize;
use switchyard_plugin::{async_trait, Filter, FilterError, Hooks, UpstreamRequestContext};

/// The configuration of `rewrite`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RewriteConfig {
    /// A regular expression (Rust `regex` syntax) matched against the path.
    pub pattern: String,
    /// What replaces the match.
    pub replacement: String,
}

/// The `rewrite` filter.
#[derive(Debug)]
pub struct Rewrite {
    pattern: Regex,
    replacement: String,
}

impl Rewrite {
    /// Check and compile `config`.
    pub fn new(config: &RewriteConfig) -> Result<Self, String> {
        let pattern = Regex::new(&config.pattern).map_err(|e| {
            format!(
                "invalid regex `pattern`: {}",
                e.to_string().replace('\n', " ")
            )
        })?;
        check_references(&pattern, &config.replacement)?;
        if !config.replacement.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(format!(
                "`replacement` {:?} must be visible ASCII (percent-encode other characters)",
                config.replacement
            ));
        }
        Ok(Self {
            pattern,
            replacement: config.replacement.clone(),
        })
    }

    /// The rewritten path and query for `uri`, or `None` when the path does not match.
    pub fn rewrite(&self, uri: &Uri) -> Option<String> {
        let path = uri.path();
        let caps = self.pattern.captures(path)?;
        let whole = caps.get(0)?;
        let query = uri.query();
        let mut out = String::with_capacity(
            path.len() + self.replacement.len() + query.map_or(0, |q| q.len() + 1) + 1,
        );
        out.push_str(&path[..whole.start()]);
        caps.expand(&self.replacement, &mut out);
        out.push_str(&path[whole.end()..]);
        if !out.starts_with('/') {
            out.insert(0, '/');
        }
        if let Some(q) = query {
            out.push('?');
            out.push_str(q);
        }
        Some(out)
    }
}

/// Every `$ref` of `replacement` must name a group of `pattern`.
fn check_references(pattern: &Regex, replacement: &str) -> Result<(), String> {
    let bytes = replacement.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] != b'$' {
            i += 1;
            continue;
        }
        i += 1;
        let name = match bytes.get(i) {
            Some(b'$') => {
                i += 1;
                continue;
            }
            Some(b'{') => {
                let Some(end) = replacement[i..].find('}') else {
                    return Err(format!(
                        "`replacement` has `${{` without `}}`: {replacement:?}"
                    ));
                };
                let name = &replacement[i + 1..i + end];
                i += end + 1;
                name
            }
            _ => {
                let start = i;
                while i < bytes.len() && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'_') {
                    i += 1;
                }
                &replacement[start..i]
            }
        };
        if name.is_empty() {
            return Err(format!(
                "`replacement` has a `$` that names no group (write `$$` for a `$`): {replacement:?}"
            ));
        }
        let known = match name.parse::<usize>() {
            Ok(n) => n < pattern.captures_len(),
            Err(_) => pattern.capture_names().flatten().any(|n| n == name),
        };
        if !known {
            let digits = name.len() - name.trim_start_matches(|c: char| c.is_ascii_digit()).len();
            let hint = if digits > 0 && digits < name.len() {
                let group = &name[..digits];
                format!(" (for group {group} followed by text, write `${{{group}}}`)")
            } else {
                String::new()
            };
            return Err(format!(
                "`replacement` refers to group `{name}`, which `pattern` does not have{hint}"
            ));
        }
    }
    Ok(())
}

#[async_trait]
impl Filter for Rewrite {
    fn kind(&self) -> &'static str {
        "rewrite"
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
        if let Some(target) = self.rewrite(ctx.upstream.uri()) {
            let uri = target.parse::<Uri>().map_err(|_| {
                FilterError::new(
                    StatusCode::BAD_REQUEST,
                    "bad request: the rewritten path is not a valid URI",
                )
            })?;
            ctx.upstream.set_uri(uri);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::{Extensions, HeaderMap, Method};
    use switchyard_plugin::filter::block_on_ready;
    use switchyard_plugin::RequestInfo;

    fn rewrite(pattern: &str, replacement: &str) -> Result<Rewrite, String> {
        Rewrite::new(&RewriteConfig {
            pattern: pattern.into(),
            replacement: replacement.into(),
        })
    }

    fn run(f: &Rewrite, target: &str) -> String {
        let (m, u, h) = (Method::GET, Uri::from_static("/"), HeaderMap::new());
        let info = RequestInfo::new(&m, &u, &h);
        let (mut parts, ()) = http::Request::get(target).body(()).unwrap().into_parts();
        let mut ext = Extensions::new();
        let mut ctx = UpstreamRequestContext::new(info, &mut parts, &mut ext);
        block_on_ready(f.on_upstream_request(&mut ctx)).unwrap();
        parts.uri.to_string()
    }

    #[test]
    fn rewrites_the_path_and_keeps_the_query() {
        let f = rewrite("^/old/(.*)$", "/new/$1").unwrap();
        assert_eq!(run(&f, "/old/a/b?x=1"), "/new/a/b?x=1");
        assert_eq!(run(&f, "/old/"), "/new/");
        assert_eq!(run(&f, "/other/a?x=1"), "/other/a?x=1");
        let f = rewrite("/v1/", "/v2/").unwrap();
        assert_eq!(run(&f, "/api/v1/users"), "/api/v2/users");
        let f = rewrite("^/(?P<id>[0-9]+)$", "item-${id}").unwrap();
        assert_eq!(run(&f, "/42"), "/item-42");
        let f = rewrite("^/(a)(b)$", "/${2}x$1$$").unwrap();
        assert_eq!(run(&f, "/ab"), "/bxa$");
    }

    #[test]
    fn bad_configurations() {
        for (pattern, replacement, why) in [
            ("(", "/x", "invalid regex"),
            ("^/(.*)$", "/$2", "group `2`"),
            ("^/(.*)$", "/$1x", "${1}"),
            ("^/(.*)$", "/${name}", "group `name`"),
            ("^/(.*)$", "/${1", "without"),
            ("^/(.*)$", "/$", "names no group"),
            ("^/(.*)$", "/a b", "visible ASCII"),
        ] {
            let err = rewrite(pattern, replacement).unwrap_err();
            assert!(err.contains(why), "{replacement}: {err}");
        }
    }
}
