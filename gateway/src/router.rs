//! The route table: listener + host + path + method + headers + cookies + query -> route.
//!
//! Compiled once per configuration. Routes are indexed by host (exact names in a hash map,
//! `*.` wildcards by suffix, and host-less routes), then by path (exact paths and prefixes
//! in hash maps keyed by the path up to each segment boundary; regex and path-less routes
//! in a short scan list). A lookup probes O(labels x segments) hash buckets, checks the
//! candidates' remaining conditions, and keeps the lowest index: the first match in file
//! order wins, exactly as if every route were tried in turn. Lookups do not allocate.

use std::collections::HashMap;

use http::{HeaderMap, HeaderName, Method};
use regex::Regex;

use crate::config::Config;

/// How a route matches the path.
#[derive(Debug, Clone)]
pub enum PathMatch {
    /// Any path.
    Any,
    /// Exactly this path.
    Exact(String),
    /// This prefix, on a segment boundary.
    Prefix(String),
    /// This regular expression, with the literal text every match must start with (a cheap
    /// filter checked before the regex runs).
    Regex(Regex, String),
}

/// One compiled route.
#[derive(Debug, Clone)]
pub struct Route {
    /// The route's name, for logs and metrics.
    pub name: String,
    /// Index of the upstream it sends to.
    pub upstream: usize,
    /// Bit `i` set: the route applies to listener `i`.
    pub listeners: u64,
    /// The path condition.
    pub path: PathMatch,
    /// Methods; empty means any.
    pub methods: Vec<Method>,
    /// Headers that must be present with these values.
    pub headers: Vec<(HeaderName, String)>,
    /// Cookies that must be present with these values.
    pub cookies: Vec<(String, String)>,
    /// Query parameters that must be present with these values.
    pub query: Vec<(String, String)>,
    /// Remove the matched prefix before forwarding.
    pub strip_prefix: bool,
    /// The route's filters (chain, compress, cache settings).
    pub filters: std::sync::Arc<switchyard_filters::RouteFilters>,
    /// The route's cache, when it has `cache`.
    pub cache: Option<&'static crate::filters::RouteCache>,
}

/// What a lookup needs to know about a request.
#[derive(Debug, Clone, Copy)]
pub struct RequestFacts<'a> {
    /// Index of the listener the request came in on.
    pub listener: usize,
    /// Host (header or authority), as sent.
    pub host: Option<&'a str>,
    /// Path, without the query.
    pub path: &'a str,
    /// Query string, without `?`.
    pub query: Option<&'a str>,
    /// Method.
    pub method: &'a Method,
    /// Request headers.
    pub headers: &'a HeaderMap,
}

type Map<V> = HashMap<Box<str>, V, rustc_hash::FxBuildHasher>;

#[derive(Debug, Default, Clone)]
struct PathIndex {
    exact: Map<Vec<u32>>,
    prefix: Map<Vec<u32>>,
    /// Regex routes by the literal text their matches start with, cut after its last `/`.
    regex: Map<Vec<u32>>,
    scan: Vec<u32>,
}

impl PathIndex {
    fn insert(&mut self, path: &PathMatch, idx: u32) {
        match path {
            PathMatch::Exact(p) => self.exact.entry(p.as_str().into()).or_default().push(idx),
            PathMatch::Prefix(p) => self.prefix.entry(p.as_str().into()).or_default().push(idx),
            PathMatch::Regex(_, literal) => match literal.rfind('/') {
                Some(end) => self
                    .regex
                    .entry(literal[..=end].into())
                    .or_default()
                    .push(idx),
                None => self.scan.push(idx),
            },
            PathMatch::Any => self.scan.push(idx),
        }
    }

    /// Lowest index among this index's candidates that fully matches, below `best`.
    fn lookup(&self, routes: &[Route], req: &RequestFacts<'_>, mut best: u32) -> u32 {
        let path = req.path;
        let consider = |list: &[u32], best: &mut u32| {
            for &i in list {
                if i >= *best {
                    break;
                }
                if routes[i as usize].matches(req) {
                    *best = i;
                    break;
                }
            }
        };
        if let Some(list) = self.exact.get(path) {
            consider(list, &mut best);
        }
        let (has_prefix, has_regex) = (!self.prefix.is_empty(), !self.regex.is_empty());
        if has_prefix {
            if let Some(list) = self.prefix.get(path) {
                consider(list, &mut best);
            }
        }
        if has_prefix || has_regex {
            // Every prefix that ends on a segment boundary of `path`: the whole path, and
            // for each '/' at position i, path[..i] and path[..=i].
            for (i, b) in path.bytes().enumerate() {
                if b != b'/' {
                    continue;
                }
                if has_prefix && i > 0 {
                    if let Some(list) = self.prefix.get(&path[..i]) {
                        consider(list, &mut best);
                    }
                }
                if has_prefix && i + 1 < path.len() {
                    if let Some(list) = self.prefix.get(&path[..=i]) {
                        consider(list, &mut best);
                    }
                }
                if has_regex {
                    if let Some(list) = self.regex.get(&path[..=i]) {
                        consider(list, &mut best);
                    }
                }
            }
        }
        consider(&self.scan, &mut best);
        best
    }
}

/// The compiled, indexed route table.
#[derive(Debug, Clone, Default)]
pub struct RouteTable {
    routes: Vec<Route>,
    exact_host: Map<PathIndex>,
    wildcard_host: Map<PathIndex>,
    any_host: PathIndex,
}

impl Route {
    /// Whether the request matches this route, its path included (callers reach a route
    /// through an index that already guarantees exact and prefix paths).
    fn matches(&self, req: &RequestFacts<'_>) -> bool {
        if let PathMatch::Regex(re, literal) = &self.path {
            if !req.path.starts_with(literal.as_str()) || !re.is_match(req.path) {
                return false;
            }
        }
        self.matches_rest(req)
    }

    fn matches_rest(&self, req: &RequestFacts<'_>) -> bool {
        if req.listener < 64 && self.listeners & (1u64 << req.listener) == 0 {
            return false;
        }
        if !self.methods.is_empty() && !self.methods.iter().any(|m| m == req.method) {
            return false;
        }
        for (name, value) in &self.headers {
            if !req
                .headers
                .get_all(name)
                .iter()
                .any(|v| v.as_bytes() == value.as_bytes())
            {
                return false;
            }
        }
        for (name, value) in &self.cookies {
            if cookie_value(req.headers, name) != Some(value.as_str()) {
                return false;
            }
        }
        for (name, value) in &self.query {
            if query_value(req.query, name) != Some(value.as_str()) {
                return false;
            }
        }
        true
    }

    /// The path the backend sees when `strip_prefix` is on (the matched prefix removed,
    /// always starting with `/`).
    pub fn stripped<'p>(&self, path: &'p str) -> &'p str {
        let prefix = match &self.path {
            PathMatch::Prefix(p) | PathMatch::Exact(p) if self.strip_prefix => {
                p.trim_end_matches('/')
            }
            _ => return path,
        };
        let rest = &path[prefix.len().min(path.len())..];
        if rest.is_empty() {
            "/"
        } else {
            rest
        }
    }
}

/// The literal text at the start of every match of an anchored pattern (`^/v1/(a|b)` ->
/// `/v1/`); empty when the pattern is not anchored or starts with a metacharacter.
pub fn literal_prefix(pattern: &str) -> String {
    let Some(rest) = pattern.strip_prefix('^') else {
        return String::new();
    };
    let mut out = String::new();
    let mut chars = rest.chars().peekable();
    while let Some(c) = chars.next() {
        if c.is_ascii_alphanumeric()
            || matches!(
                c,
                '/' | '-' | '_' | '~' | '%' | ',' | ';' | '=' | ':' | '@' | '&'
            )
        {
            // A quantifier makes the previous character optional or repeated.
            if matches!(chars.peek(), Some('?' | '*' | '{')) {
                break;
            }
            out.push(c);
        } else if c == '\\' && chars.peek().is_some_and(|n| matches!(n, '.' | '/' | '-')) {
            let n = chars.next().expect("peeked");
            if matches!(chars.peek(), Some('?' | '*' | '{')) {
                break;
            }
            out.push(n);
        } else {
            break;
        }
    }
    out
}

/// The value of cookie `name` in the request's `Cookie` headers.
pub fn cookie_value<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim_matches('"'))
}

/// The value of query parameter `name` (raw, not percent-decoded).
pub fn query_value<'q>(query: Option<&'q str>, name: &str) -> Option<&'q str> {
    query?
        .split('&')
        .map(|pair| pair.split_once('=').unwrap_or((pair, "")))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// Host without port and trailing dot; ASCII-lowercased into `buf` when needed.
fn normalize_host<'a>(host: &'a str, buf: &'a mut [u8; 256]) -> Option<&'a str> {
    let host = if let Some(rest) = host.strip_prefix('[') {
        // IPv6 literal: "[::1]:8080" -> "[::1]"
        let end = rest.find(']')?;
        &host[..end + 2]
    } else {
        host.rsplit_once(':').map_or(host, |(h, port)| {
            if port.bytes().all(|b| b.is_ascii_digit()) {
                h
            } else {
                host
            }
        })
    };
    let host = host.strip_suffix('.').unwrap_or(host);
    if !host.bytes().any(|b| b.is_ascii_uppercase()) {
        return Some(host);
    }
    let bytes = host.as_bytes();
    if bytes.len() > buf.len() {
        return None;
    }
    for (d, s) in buf.iter_mut().zip(bytes) {
        *d = s.to_ascii_lowercase();
    }
    std::str::from_utf8(&buf[..bytes.len()]).ok()
}

impl RouteTable {
    /// Compile the routes of a validated configuration.
    pub fn build(config: &Config) -> Self {
        let all_listeners = if config.listeners.len() >= 64 {
            u64::MAX
        } else {
            (1u64 << config.listeners.len()) - 1
        };
        let mut table = RouteTable::default();
        for (idx, r) in config.routes.iter().enumerate() {
            let filters = config.route_filters.get(idx).cloned().unwrap_or_default();
            let path = if let Some(p) = &r.path {
                PathMatch::Exact(p.get_ref().clone())
            } else if let Some(p) = &r.path_prefix {
                if p.get_ref() == "/" {
                    PathMatch::Any
                } else {
                    PathMatch::Prefix(p.get_ref().clone())
                }
            } else if let Some(p) = &r.path_regex {
                PathMatch::Regex(
                    Regex::new(p.get_ref()).expect("validated"),
                    literal_prefix(p.get_ref()),
                )
            } else {
                PathMatch::Any
            };
            let listeners = match &r.listeners {
                None => all_listeners,
                Some(names) => names
                    .iter()
                    .filter_map(|n| config.listener_index(n.get_ref()))
                    .fold(0u64, |m, i| m | (1u64 << i)),
            };
            let route = Route {
                name: r.name.get_ref().clone(),
                upstream: config
                    .upstreams
                    .iter()
                    .position(|u| u.name.get_ref() == r.upstream.get_ref())
                    .expect("validated"),
                listeners,
                path,
                methods: r
                    .methods
                    .iter()
                    .flatten()
                    .filter_map(|m| {
                        Method::from_bytes(m.get_ref().to_ascii_uppercase().as_bytes()).ok()
                    })
                    .collect(),
                headers: r
                    .headers
                    .iter()
                    .filter_map(|(k, v)| {
                        Some((HeaderName::from_bytes(k.as_bytes()).ok()?, v.clone()))
                    })
                    .collect(),
                cookies: r
                    .cookies
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
                query: r
                    .query
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
                strip_prefix: r.strip_prefix,
                filters: filters.clone(),
                cache: filters
                    .cache
                    .as_ref()
                    .map(|c| crate::filters::route_cache(r.name.get_ref(), c)),
            };
            let index = match r.host.as_ref().map(|h| h.get_ref().to_ascii_lowercase()) {
                None => &mut table.any_host,
                Some(h) => match h.strip_prefix("*.") {
                    Some(suffix) => table.wildcard_host.entry(suffix.into()).or_default(),
                    None => table
                        .exact_host
                        .entry(h.trim_end_matches('.').into())
                        .or_default(),
                },
            };
            let idx = u32::try_from(idx).expect("fewer than 2^32 routes");
            index.insert(&route.path, idx);
            table.routes.push(route);
        }
        table
    }

    /// The routes, in file order.
    pub fn routes(&self) -> &[Route] {
        &self.routes
    }

    /// The first route (in file order) that matches the request.
    pub fn lookup(&self, req: &RequestFacts<'_>) -> Option<(usize, &Route)> {
        let mut best = u32::MAX;
        let mut buf = [0u8; 256];
        if let Some(host) = req.host.and_then(|h| normalize_host(h, &mut buf)) {
            if let Some(index) = self.exact_host.get(host) {
                best = index.lookup(&self.routes, req, best);
            }
            if !self.wildcard_host.is_empty() {
                // "*.example.com" matches one or more labels before "example.com".
                for (i, b) in host.bytes().enumerate() {
                    if b == b'.' {
                        if let Some(index) = self.wildcard_host.get(&host[i + 1..]) {
                            best = index.lookup(&self.routes, req, best);
                        }
                    }
                }
            }
        }
        best = self.any_host.lookup(&self.routes, req, best);
        (best != u32::MAX).then(|| (best as usize, &self.routes[best as usize]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use switchyard_plugin::Registry;

    fn table(routes: &str) -> RouteTable {
        let text = format!(
            r#"
[[listener]]
name = "a"
addr = "127.0.0.1:1"
[[listener]]
name = "b"
addr = "127.0.0.1:2"
[[upstream]]
name = "u"
backends = [ {{ addr = "127.0.0.1:9" }} ]
{routes}"#
        );
        let mut reg = Registry::new();
        switchyard_balancers::register_all(&mut reg);
        RouteTable::build(&Config::parse("t.toml", &text, &reg).unwrap())
    }

    fn find(
        t: &RouteTable,
        listener: usize,
        host: Option<&str>,
        method: &str,
        target: &str,
        headers: &[(&str, &str)],
    ) -> Option<String> {
        let mut map = HeaderMap::new();
        for (k, v) in headers {
            map.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        let (path, query) = target
            .split_once('?')
            .map_or((target, None), |(p, q)| (p, Some(q)));
        let method = Method::from_bytes(method.as_bytes()).unwrap();
        t.lookup(&RequestFacts {
            listener,
            host,
            path,
            query,
            method: &method,
            headers: &map,
        })
        .map(|(_, r)| r.name.clone())
    }

    #[test]
    fn prefix_matches_on_segment_boundaries_only() {
        let t = table("[[route]]\nname = \"api\"\npath_prefix = \"/api\"\nupstream = \"u\"\n");
        assert_eq!(
            find(&t, 0, None, "GET", "/api", &[]).as_deref(),
            Some("api")
        );
        assert_eq!(
            find(&t, 0, None, "GET", "/api/x/y", &[]).as_deref(),
            Some("api")
        );
        assert_eq!(
            find(&t, 0, None, "GET", "/api?x=1", &[]).as_deref(),
            Some("api")
        );
        assert_eq!(find(&t, 0, None, "GET", "/apix", &[]), None);
        assert_eq!(find(&t, 0, None, "GET", "/", &[]), None);
    }

    #[test]
    fn trailing_slash_prefix_needs_the_slash() {
        let t = table("[[route]]\nname = \"api\"\npath_prefix = \"/api/\"\nupstream = \"u\"\n");
        assert_eq!(
            find(&t, 0, None, "GET", "/api/x", &[]).as_deref(),
            Some("api")
        );
        assert_eq!(find(&t, 0, None, "GET", "/api", &[]), None);
    }

    #[test]
    fn first_match_in_file_order_wins_across_indexes() {
        let t = table(
            r#"
[[route]]
name = "regex"
path_regex = "^/v[0-9]+/items"
upstream = "u"
[[route]]
name = "host"
host = "API.example.com"
path_prefix = "/v1"
upstream = "u"
[[route]]
name = "exact"
path = "/v1/items"
upstream = "u"
[[route]]
name = "wild"
host = "*.example.com"
upstream = "u"
[[route]]
name = "fallback"
upstream = "u"
"#,
        );
        assert_eq!(
            find(&t, 0, Some("api.example.com"), "GET", "/v1/items", &[]).as_deref(),
            Some("regex")
        );
        assert_eq!(
            find(&t, 0, Some("Api.Example.com:8080"), "GET", "/v1/other", &[]).as_deref(),
            Some("host")
        );
        assert_eq!(
            find(&t, 0, Some("x.y.example.com"), "GET", "/z", &[]).as_deref(),
            Some("wild")
        );
        assert_eq!(
            find(&t, 0, Some("example.com"), "GET", "/z", &[]).as_deref(),
            Some("fallback")
        );
        assert_eq!(
            find(&t, 0, None, "GET", "/v1/items", &[]).as_deref(),
            Some("regex")
        );
    }

    #[test]
    fn methods_headers_cookies_query_and_listeners() {
        let t = table(
            r#"
[[route]]
name = "post-canary"
methods = ["POST"]
headers = { "x-canary" = "1" }
cookies = { "beta" = "yes" }
query = { "v" = "2" }
upstream = "u"
[[route]]
name = "only-b"
listeners = ["b"]
upstream = "u"
"#,
        );
        let all = [("x-canary", "1"), ("cookie", "a=b; beta=yes")];
        assert_eq!(
            find(&t, 0, None, "POST", "/x?v=2", &all).as_deref(),
            Some("post-canary")
        );
        assert_eq!(find(&t, 0, None, "GET", "/x?v=2", &all), None);
        assert_eq!(find(&t, 0, None, "POST", "/x?v=3", &all), None);
        assert_eq!(
            find(&t, 0, None, "POST", "/x?v=2", &[("x-canary", "1")]),
            None
        );
        assert_eq!(
            find(&t, 1, None, "GET", "/x", &[]).as_deref(),
            Some("only-b")
        );
        assert_eq!(find(&t, 0, None, "GET", "/x", &[]), None);
    }

    #[test]
    fn literal_prefixes_of_patterns() {
        assert_eq!(literal_prefix("^/v[0-9]+/items"), "/v");
        assert_eq!(literal_prefix("^/api/v1/(a|b)"), "/api/v1/");
        assert_eq!(literal_prefix("^/a\\.b/c?"), "/a.b/");
        assert_eq!(literal_prefix("/x"), "");
        assert_eq!(literal_prefix("^/ab*"), "/a");
    }

    #[test]
    fn strip_prefix_keeps_a_leading_slash() {
        let t = table("[[route]]\nname = \"r\"\npath_prefix = \"/api/v1/users\"\nstrip_prefix = true\nupstream = \"u\"\n");
        let r = &t.routes()[0];
        assert_eq!(r.stripped("/api/v1/users/7"), "/7");
        assert_eq!(r.stripped("/api/v1/users"), "/");
    }

    #[test]
    fn ten_thousand_routes_still_find_the_right_one() {
        let mut s = String::new();
        for i in 0..10_000 {
            s.push_str(&format!("[[route]]\nname = \"r{i}\"\nhost = \"h{}.example.com\"\npath_prefix = \"/p{i}\"\nupstream = \"u\"\n", i % 100));
        }
        let t = table(&s);
        assert_eq!(
            find(&t, 0, Some("h42.example.com"), "GET", "/p9942/x", &[]).as_deref(),
            Some("r9942")
        );
        assert_eq!(
            find(&t, 0, Some("h41.example.com"), "GET", "/p9942/x", &[]),
            None
        );
    }
}
