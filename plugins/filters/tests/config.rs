//! The filter lines of the configuration contract, read as the gateway reads them (TOML
//! tables of a route's `filters` list), and a chain of them run on requests.

use std::sync::Arc;

use http::header::{HeaderName, HeaderValue};
use http::{Extensions, HeaderMap, Method, StatusCode, Uri};
use switchyard_filters::{build_filter_toml, build_route_filters, RouteFilters, KINDS};
use switchyard_plugin::filter::block_on_ready;
use switchyard_plugin::{
    BuildError, Filter, Flow, Hooks, Registry, RequestContext, RequestInfo, ResponseContext,
    UpstreamRequestContext,
};

/// The filter examples of the interface contract, verbatim.
const CONTRACT: &str = r#"
filters = [
{ kind = "rate-limit", requests_per_second = 100, burst = 200, key = "client-ip", scope = "local" },
{ kind = "ip-allow", cidrs = ["10.0.0.0/8", "::1/128"] },
{ kind = "ip-deny", cidrs = ["203.0.113.0/24"] },
{ kind = "request-headers", set = { "x-env" = "prod" }, add = { "x-tag" = "a" }, remove = ["x-debug"] },
{ kind = "response-headers", set = { "x-frame-options" = "DENY" }, remove = ["server"] },
{ kind = "redirect", status = 301, location = "https://new.example.com{path}{query}" },
{ kind = "rewrite", pattern = "^/old/(.*)$", replacement = "/new/$1" },
{ kind = "compress", min_bytes = 1024, algorithms = ["br", "zstd", "gzip"] },
{ kind = "body-limit", max_bytes = 1048576 },
{ kind = "cache", max_bytes = 67108864, default_ttl = "60s" },
{ kind = "cors", allow_origins = ["https://app.example.com"], allow_methods = ["GET", "POST"],
  allow_headers = ["content-type"], max_age = "10m", allow_credentials = false },
]
"#;

fn tables(text: &str) -> Vec<toml::Table> {
    #[derive(serde::Deserialize)]
    struct Route {
        filters: Vec<toml::Table>,
    }
    toml::from_str::<Route>(text).unwrap().filters
}

#[test]
fn every_contract_example_builds() {
    let tables = tables(CONTRACT);
    assert_eq!(tables.len(), KINDS.len());
    for (table, kind) in tables.iter().zip(KINDS) {
        let f = build_filter_toml(table).unwrap_or_else(|e| panic!("{kind}: {e}"));
        assert_eq!(f.kind(), kind);
    }
    let route = build_route_filters(&tables, &Registry::new()).unwrap();
    // compress and cache are settings, not chain members.
    assert_eq!(route.chain.len(), KINDS.len() - 2);
    let compress = route.compress.unwrap();
    assert_eq!(compress.min_bytes, 1024);
    let cache = route.cache.unwrap();
    assert_eq!(cache.max_bytes, 67108864);
    assert_eq!(cache.default_ttl, std::time::Duration::from_secs(60));
}

#[test]
fn every_bad_table_is_reported_with_its_index() {
    let tables = tables(
        r#"
filters = [
{ kind = "ip-allow", cidrs = ["10.0.0.0/8"] },
{ kind = "rate-limit", requests_per_second = 100, burts = 200 },
{ kind = "rate-limit", requests_per_second = "fast" },
{ kind = "ip-allow", cidrs = ["10.0.0.0/40"] },
{ kind = "gzip" },
{ cidrs = [] },
{ kind = "cache" },
{ kind = "cache" },
{ kind = "cors", allow_origins = ["*"], allow_credentials = true },
{ kind = 3 },
]
"#,
    );
    let errors = build_route_filters(&tables, &Registry::new()).unwrap_err();
    let indices: Vec<usize> = errors.iter().map(|(i, _)| *i).collect();
    assert_eq!(indices, [1, 2, 3, 4, 5, 7, 8, 9], "{errors:#?}");
    let text = |i: usize| &errors.iter().find(|(j, _)| *j == i).unwrap().1;
    assert!(
        text(1).starts_with("filter `rate-limit`: unknown field `burts`, expected one of"),
        "{}",
        text(1)
    );
    assert!(
        text(2).contains("invalid type: string \"fast\", expected f64"),
        "{}",
        text(2)
    );
    assert!(
        text(3).contains("invalid CIDR \"10.0.0.0/40\""),
        "{}",
        text(3)
    );
    assert!(
        text(4).starts_with("unknown filter kind `gzip`, expected one of: rate-limit, ip-allow"),
        "{}",
        text(4)
    );
    assert_eq!(text(5), "a filter needs `kind`");
    assert_eq!(text(7), "a route takes one `cache` filter");
    assert!(text(8).contains("credentialed"), "{}", text(8));
    assert!(text(9).contains("`kind` must be a string"), "{}", text(9));
}

#[test]
fn plugin_kinds_come_from_the_registry() {
    struct Stamp(HeaderValue);
    #[switchyard_plugin::async_trait]
    impl Filter for Stamp {
        fn hooks(&self) -> Hooks {
            Hooks {
                response: true,
                ..Hooks::NONE
            }
        }
        async fn on_response(
            &self,
            ctx: &mut ResponseContext<'_>,
        ) -> Result<(), switchyard_plugin::FilterError> {
            ctx.headers
                .insert(HeaderName::from_static("x-stamp"), self.0.clone());
            Ok(())
        }
    }
    let mut registry = Registry::new();
    registry.register_filter("stamp", |options: &serde_json::Value| {
        // The factory sees its own keys only.
        assert!(options.get("kind").is_none());
        let value = options
            .get("value")
            .and_then(|v| v.as_str())
            .ok_or_else(|| BuildError("`value` (a string) is required".into()))?;
        let value = HeaderValue::from_str(value).map_err(|e| BuildError(e.to_string()))?;
        Ok(Arc::new(Stamp(value)) as Arc<dyn Filter>)
    });
    let ok = tables(r#"filters = [{ kind = "stamp", value = "v1" }]"#);
    let route = build_route_filters(&ok, &registry).unwrap();
    assert_eq!(route.chain.len(), 1);
    let bad = tables(r#"filters = [{ kind = "stamp" }, { kind = "nope" }]"#);
    let errors = build_route_filters(&bad, &registry).unwrap_err();
    assert_eq!(
        errors[0],
        (0, "filter `stamp`: `value` (a string) is required".into())
    );
    assert!(errors[1].1.ends_with("cors, stamp"), "{}", errors[1].1);
}

/// The five filters of the bench, as a route would write them.
fn typical() -> RouteFilters {
    let tables = tables(
        r#"
filters = [
{ kind = "ip-allow", cidrs = ["10.0.0.0/8", "192.168.0.0/16", "2001:db8::/32"] },
{ kind = "rate-limit", requests_per_second = 2, burst = 2, key = "client-ip" },
{ kind = "request-headers", set = { "x-env" = "prod" }, remove = ["x-debug"] },
{ kind = "response-headers", set = { "x-frame-options" = "DENY" }, remove = ["server"] },
{ kind = "cors", allow_origins = ["https://app.example.com"], allow_headers = ["content-type"], max_age = "10m" },
]
"#,
    );
    build_route_filters(&tables, &Registry::new()).unwrap()
}

struct Request {
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    ip: &'static str,
}

fn request(method: Method, ip: &'static str, headers: &[(&'static str, &'static str)]) -> Request {
    let mut h = HeaderMap::new();
    for (n, v) in headers {
        h.append(*n, HeaderValue::from_static(v));
    }
    Request {
        method,
        uri: Uri::from_static("/api/items?page=2"),
        headers: h,
        ip,
    }
}

/// Run a request through the three phases as the gateway does; the answer's status and
/// headers, and the headers the backend saw (none when answered at the edge).
fn run(route: &RouteFilters, req: &Request) -> (StatusCode, HeaderMap, Option<HeaderMap>) {
    let mut ext = Extensions::new();
    let info = RequestInfo::new(&req.method, &req.uri, &req.headers)
        .with_client_ip(Some(req.ip.parse().unwrap()))
        .with_route("api");
    let mut ctx = RequestContext::new(info, &mut ext);
    if let Flow::Respond(r) = block_on_ready(route.chain.on_request(&mut ctx)).unwrap() {
        return (r.status, r.headers, None);
    }
    let (mut upstream, ()) = http::Request::builder()
        .method(req.method.clone())
        .uri(req.uri.clone())
        .body(())
        .unwrap()
        .into_parts();
    upstream.headers = req.headers.clone();
    let mut up = UpstreamRequestContext::new(info, &mut upstream, &mut ext);
    block_on_ready(route.chain.on_upstream_request(&mut up)).unwrap();
    let mut response = HeaderMap::new();
    response.insert("server", HeaderValue::from_static("backend"));
    let mut rctx = ResponseContext::new(info, StatusCode::OK, &mut response, &mut ext);
    block_on_ready(route.chain.on_response(&mut rctx)).unwrap();
    (StatusCode::OK, response, Some(upstream.headers))
}

#[test]
fn a_typical_chain_end_to_end() {
    let route = typical();
    // An allowed client with an allowed origin.
    let req = request(
        Method::GET,
        "10.1.2.3",
        &[("origin", "https://app.example.com"), ("x-debug", "1")],
    );
    let (status, resp, seen) = run(&route, &req);
    assert_eq!(status, 200);
    let seen = seen.unwrap();
    assert_eq!(seen["x-env"], "prod");
    assert!(!seen.contains_key("x-debug"));
    assert_eq!(resp["x-frame-options"], "DENY");
    assert!(!resp.contains_key("server"));
    assert_eq!(
        resp["access-control-allow-origin"],
        "https://app.example.com"
    );
    assert_eq!(resp["vary"], "Origin");

    // A client outside the allow list: 403, and the response hooks after ip-allow never ran.
    let (status, resp, seen) = run(&route, &request(Method::GET, "8.8.8.8", &[]));
    assert_eq!(status, 403);
    assert!(seen.is_none() && !resp.contains_key("x-frame-options"));

    // The burst is 2: the third request of 10.1.2.3 is limited. The 429 passes through the
    // response hooks of the filters before rate-limit (ip-allow has none).
    assert_eq!(run(&route, &req).0, 200);
    let (status, resp, seen) = run(&route, &req);
    assert_eq!(status, 429);
    assert!(seen.is_none());
    assert_eq!(resp["retry-after"], "1");

    // A preflight from another client is answered at the edge by cors, after
    // response-headers' hook (which comes before cors in the chain).
    let preflight = request(
        Method::OPTIONS,
        "192.168.1.1",
        &[
            ("origin", "https://app.example.com"),
            ("access-control-request-method", "POST"),
            ("access-control-request-headers", "content-type"),
        ],
    );
    let (status, resp, seen) = run(&route, &preflight);
    assert_eq!(status, 204);
    assert!(seen.is_none());
    assert_eq!(resp["access-control-allow-methods"], "GET, HEAD, POST");
    assert_eq!(resp["access-control-allow-headers"], "content-type");
    assert_eq!(resp["access-control-max-age"], "600");
    assert_eq!(resp["x-frame-options"], "DENY");
}
