#![allow(missing_docs)] // criterion's macros generate undocumented items
//! The forwarding headers of one request (criterion): X-Forwarded-For, -Proto, -Host and
//! X-Request-Id set on a copy of a parsed request head, as `upstream_request_filter` does,
//! against the same four headers through pingora's `insert_header` (what the gateway did
//! before: each name parsed again, a second map of spellings, both maps grown one header
//! at a time).

use std::net::IpAddr;

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use http::HeaderValue;
use pingora_http::RequestHeader;
use switchyard_gateway::proxy::add_forwarding_headers;

/// A browser-like request head as pingora's parser builds it (names' spelling kept).
fn parsed_head() -> RequestHeader {
    let mut req = RequestHeader::build("GET", b"/api/v1/users?page=2", Some(8)).unwrap();
    for (name, value) in [
        ("Host", "example.com"),
        (
            "User-Agent",
            "Mozilla/5.0 (X11; Linux x86_64) Firefox/128.0",
        ),
        ("Accept", "text/html,application/xhtml+xml;q=0.9,*/*;q=0.8"),
        ("Accept-Language", "en-GB,en;q=0.5"),
        ("Accept-Encoding", "gzip, deflate, br"),
        ("Cookie", "session=abc123; theme=dark"),
        ("Referer", "https://example.com/"),
        ("Connection", "keep-alive"),
    ] {
        req.append_header(name, value).unwrap();
    }
    req
}

fn bench(c: &mut Criterion) {
    let head = parsed_head();
    let peer: IpAddr = "192.0.2.10".parse().unwrap();
    let id = HeaderValue::from_static("0123456789abcdef0123456789abcdef");
    c.bench_function(
        "forwarding/add_forwarding_headers (8-header request)",
        |b| {
            b.iter(|| {
                let mut req = head.clone();
                add_forwarding_headers(&mut req, Some(peer), false, false, Some(&id)).unwrap();
                black_box(req)
            })
        },
    );
    c.bench_function(
        "forwarding/pingora insert_header x4 (8-header request)",
        |b| {
            b.iter(|| {
                let mut req = head.clone();
                req.insert_header("x-forwarded-for", peer.to_string())
                    .unwrap();
                req.insert_header("x-forwarded-proto", "http").unwrap();
                let host = req.headers.get("host").cloned().unwrap();
                req.insert_header("x-forwarded-host", host).unwrap();
                req.insert_header("x-request-id", id.clone()).unwrap();
                black_box(req)
            })
        },
    );
    c.bench_function("forwarding/clone only (baseline)", |b| {
        b.iter(|| black_box(head.clone()))
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
