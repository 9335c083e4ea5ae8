//! Upstream failures: refused or reset -> 502, read timeout -> 504; error bodies never leak
//! a backend address.

use std::time::{Duration, Instant};

use switchyard_tests::{free_port, route, upstream, Backend, Behavior, Gateway, Response};

fn assert_no_leak(r: &Response, port: u16) {
    let body = r.text();
    assert!(
        !body.contains("127.0.0.1"),
        "the error body leaks the address: {body:?}"
    );
    assert!(
        !body.contains(&port.to_string()),
        "the error body leaks the port: {body:?}"
    );
    assert!(body.len() < 512, "short body expected: {body:?}");
    assert!(!body.contains("panicked"), "{body:?}");
}

async fn with_backend(behavior: Behavior, extra: &str) -> (Backend, Gateway) {
    let b = Backend::start("broken").await;
    b.set(behavior);
    let text = upstream("u", &[&b], extra) + &route("all", "u", "path_prefix = \"/\"");
    let gw = Gateway::start_simple("", &text).await;
    (b, gw)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_connection_is_502() {
    let dead = free_port();
    let text = format!(
        "[[upstream]]\nname = \"u\"\nalgorithm = \"round-robin\"\nbackends = [ {{ addr = \"127.0.0.1:{dead}\" }} ]\nconnect_timeout = \"1s\"\n\n{}",
        route("all", "u", "path_prefix = \"/\"")
    );
    let gw = Gateway::start_simple("", &text).await;
    let start = Instant::now();
    let r = gw.get("err.test", "/refused").await;
    assert_eq!(r.status, 502, "body: {}", r.text());
    assert!(
        start.elapsed() < Duration::from_secs(4),
        "took {:?}",
        start.elapsed()
    );
    assert_no_leak(&r, dead);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_connection_is_502() {
    let (b, gw) = with_backend(Behavior::Reset, "").await;
    let r = gw.get("err.test", "/reset").await;
    assert_eq!(r.status, 502, "body: {}", r.text());
    assert_no_leak(&r, b.port());
    assert!(b.request_count() >= 1, "the request did reach the backend");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_without_answer_is_502() {
    let (b, gw) = with_backend(Behavior::Close, "").await;
    let r = gw.get("err.test", "/closed").await;
    assert_eq!(r.status, 502, "body: {}", r.text());
    assert_no_leak(&r, b.port());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_timeout_is_504() {
    let (b, gw) = with_backend(Behavior::Hang, "read_timeout = \"500ms\"").await;
    let start = Instant::now();
    let r = gw.get("err.test", "/hang").await;
    let took = start.elapsed();
    assert_eq!(r.status, 504, "body: {}", r.text());
    assert!(
        took >= Duration::from_millis(450),
        "answered before the read timeout: {took:?}"
    );
    assert!(
        took < Duration::from_secs(4),
        "500ms read timeout (with at most a couple of retries) took {took:?}"
    );
    assert_no_leak(&r, b.port());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_error_status_passes_through() {
    let (b, gw) = with_backend(Behavior::Status(503), "").await;
    let r = gw.get("err.test", "/503").await;
    assert_eq!(r.status, 503);
    assert_eq!(
        r.text(),
        "broken",
        "a backend's own error answer is passed through"
    );
    b.set(Behavior::Ok);
    let r = gw.get("err.test", "/ok").await;
    assert_eq!(r.status, 200);
}
