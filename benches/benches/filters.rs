//! A route's filter chain per request: five typical filters (`ip-allow`, `rate-limit` with
//! local scope, `request-headers`, `response-headers`, `cors`) built from configuration as
//! the gateway builds them, run through the three phases a proxied request goes through:
//!
//! - `on_request` (ip-allow, rate-limit, cors preflight check),
//! - `on_upstream_request` (request-headers),
//! - `on_response` (response-headers, cors headers for the allowed `Origin`).
//!
//! Each iteration comes from one of 4096 client addresses (so rate-limit looks up a
//! different bucket each time, across its lock shards) and is never limited; the request
//! and response heads it edits are fresh copies made outside the timing, as the gateway
//! gets them from pingora. Groups:
//!
//! - `filters/chain5/full`: the three phases;
//! - `filters/chain5/on_request`, `.../on_upstream_request`, `.../on_response`: one phase;
//! - `filters/empty/full`: the same calls on an empty chain (the floor);
//! - `filters/rate_limited/on_request`: a client over its limit (answered 429).
//!
//! Run: `cargo bench -p switchyard-benches --bench filters -- --warm-up-time 1 --measurement-time 3`

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};

use criterion::{BatchSize, Criterion};
use switchyard_filters::build_filter;
use switchyard_plugin::filter::block_on_ready;
use switchyard_plugin::http::{self, Extensions, HeaderMap, HeaderValue, Method, StatusCode, Uri};
use switchyard_plugin::serde_json::json;
use switchyard_plugin::{
    Filter, FilterChain, Flow, RequestContext, RequestInfo, ResponseContext, UpstreamRequestContext,
};

const CLIENTS: u32 = 4096;

fn chain(rate_limit: switchyard_plugin::serde_json::Value) -> FilterChain {
    let configs = [
        json!({"kind": "ip-allow", "cidrs": ["10.0.0.0/8", "192.168.0.0/16", "2001:db8::/32"]}),
        rate_limit,
        json!({"kind": "request-headers", "set": {"x-env": "prod"}, "add": {"x-tag": "edge"},
               "remove": ["x-debug"]}),
        json!({"kind": "response-headers", "set": {"x-frame-options": "DENY",
               "strict-transport-security": "max-age=31536000"}, "remove": ["server"]}),
        json!({"kind": "cors", "allow_origins": ["https://app.example.com", "https://admin.example.com"],
               "allow_methods": ["GET", "POST"], "allow_headers": ["content-type"], "max_age": "10m"}),
    ];
    let filters: Vec<std::sync::Arc<dyn Filter>> = configs
        .iter()
        .map(|c| build_filter(c).expect("bench configuration"))
        .collect();
    FilterChain::new(filters)
}

fn typical_chain() -> FilterChain {
    chain(
        json!({"kind": "rate-limit", "requests_per_second": 1e9, "burst": 1_000_000_000u64,
                 "key": "client-ip", "scope": "local"}),
    )
}

fn client(i: u32) -> IpAddr {
    IpAddr::V4(Ipv4Addr::from(0x0a00_0000 | (i % CLIENTS)))
}

fn request_headers() -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(
        http::header::HOST,
        HeaderValue::from_static("api.example.com"),
    );
    h.insert(
        http::header::ORIGIN,
        HeaderValue::from_static("https://app.example.com"),
    );
    h.insert(
        http::header::ACCEPT,
        HeaderValue::from_static("application/json"),
    );
    h.insert(
        http::header::USER_AGENT,
        HeaderValue::from_static("bench/1.0"),
    );
    h.insert("x-debug", HeaderValue::from_static("1"));
    h
}

fn upstream_request(headers: &HeaderMap) -> http::request::Parts {
    let (mut parts, ()) = http::Request::get("/api/v1/items?page=2")
        .body(())
        .expect("request")
        .into_parts();
    parts.headers = headers.clone();
    parts
}

fn upstream_response() -> HeaderMap {
    let mut h = HeaderMap::with_capacity(16);
    h.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    h.insert(
        http::header::CONTENT_LENGTH,
        HeaderValue::from_static("512"),
    );
    h.insert(
        http::header::SERVER,
        HeaderValue::from_static("backend/1.0"),
    );
    h.insert(
        http::header::DATE,
        HeaderValue::from_static("Mon, 01 Jan 2024 00:00:00 GMT"),
    );
    h
}

/// Fresh heads for one request (made outside the timing).
struct Heads {
    upstream: http::request::Parts,
    response: HeaderMap,
}

fn heads(headers: &HeaderMap) -> Heads {
    Heads {
        upstream: upstream_request(headers),
        response: upstream_response(),
    }
}

/// Which phases to run.
#[derive(Clone, Copy, PartialEq)]
enum Phases {
    Full,
    Request,
    Upstream,
    Response,
}

fn run(
    chain: &FilterChain,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    ip: IpAddr,
    heads: &mut Heads,
    phases: Phases,
) -> bool {
    let mut ext = Extensions::new();
    let info = RequestInfo::new(method, uri, headers)
        .with_host(Some("api.example.com"))
        .with_client_ip(Some(ip))
        .with_route("api");
    if matches!(phases, Phases::Full | Phases::Request) {
        let mut ctx = RequestContext::new(info, &mut ext);
        if let Flow::Respond(r) = block_on_ready(chain.on_request(&mut ctx)).expect("no error") {
            return black_box(r).status == StatusCode::OK;
        }
    }
    if matches!(phases, Phases::Full | Phases::Upstream) {
        let mut up = UpstreamRequestContext::new(info, &mut heads.upstream, &mut ext);
        block_on_ready(chain.on_upstream_request(&mut up)).expect("no error");
    }
    if matches!(phases, Phases::Full | Phases::Response) {
        let mut rctx = ResponseContext::new(info, StatusCode::OK, &mut heads.response, &mut ext);
        block_on_ready(chain.on_response(&mut rctx)).expect("no error");
    }
    true
}

fn bench(c: &mut Criterion) {
    let method = Method::GET;
    let uri = Uri::from_static("/api/v1/items?page=2");
    let headers = request_headers();

    // Check once that the chain does what the bench claims.
    let typical = typical_chain();
    let mut h = heads(&headers);
    assert!(run(
        &typical,
        &method,
        &uri,
        &headers,
        client(1),
        &mut h,
        Phases::Full
    ));
    assert_eq!(h.upstream.headers["x-env"], "prod");
    assert!(!h.upstream.headers.contains_key("x-debug"));
    assert_eq!(
        h.response["access-control-allow-origin"],
        "https://app.example.com"
    );
    assert!(!h.response.contains_key(http::header::SERVER));

    let mut group = c.benchmark_group("filters");
    for (name, phases) in [
        ("chain5/full", Phases::Full),
        ("chain5/on_request", Phases::Request),
        ("chain5/on_upstream_request", Phases::Upstream),
        ("chain5/on_response", Phases::Response),
    ] {
        let mut i = 0u32;
        group.bench_function(name, |b| {
            b.iter_batched_ref(
                || heads(&headers),
                |h| {
                    i = i.wrapping_add(1);
                    run(&typical, &method, &uri, &headers, client(i), h, phases)
                },
                BatchSize::SmallInput,
            )
        });
    }

    let empty = FilterChain::new(Vec::new());
    let mut i = 0u32;
    group.bench_function("empty/full", |b| {
        b.iter_batched_ref(
            || heads(&headers),
            |h| {
                i = i.wrapping_add(1);
                run(&empty, &method, &uri, &headers, client(i), h, Phases::Full)
            },
            BatchSize::SmallInput,
        )
    });

    // One client far over a tiny limit: every request is answered 429.
    let limited = chain(
        json!({"kind": "rate-limit", "requests_per_second": 0.001, "burst": 1,
                               "key": "client-ip"}),
    );
    let mut h = heads(&headers);
    run(
        &limited,
        &method,
        &uri,
        &headers,
        client(7),
        &mut h,
        Phases::Request,
    );
    assert!(!run(
        &limited,
        &method,
        &uri,
        &headers,
        client(7),
        &mut h,
        Phases::Request
    ));
    group.bench_function("rate_limited/on_request", |b| {
        b.iter_batched_ref(
            || heads(&headers),
            |h| {
                run(
                    &limited,
                    &method,
                    &uri,
                    &headers,
                    client(7),
                    h,
                    Phases::Request,
                )
            },
            BatchSize::SmallInput,
        )
    });
    group.finish();
}

// What `criterion_group!`/`criterion_main!` expand to, written out so that every item has
// its documentation (the workspace warns on missing docs).
fn main() {
    let mut c = Criterion::default().configure_from_args();
    bench(&mut c);
    c.final_summary();
}
