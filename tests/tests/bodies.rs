//! Large bodies cross intact in both directions, and responses stream.

use std::sync::Arc;
use std::time::{Duration, Instant};

use switchyard_tests::{route, upstream, Backend, Behavior, Client, Gateway};

const MIB: usize = 1024 * 1024;

fn pattern(n: usize) -> Vec<u8> {
    (0..n).map(|i| ((i * 31 + i / 251) % 251) as u8).collect()
}

async fn setup() -> (Backend, Gateway) {
    let b = Backend::start("bodies").await;
    let text =
        upstream("u", &[&b], "read_timeout = \"10s\"") + &route("all", "u", "path_prefix = \"/\"");
    let gw = Gateway::start_simple("", &text).await;
    (b, gw)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_chunked_upload_arrives_intact() {
    let (b, gw) = setup().await;
    let body = pattern(8 * MIB);
    let mut c = Client::connect(gw.port()).await;
    c.send("POST /upload HTTP/1.1\r\nHost: up.test\r\nTransfer-Encoding: chunked\r\n\r\n")
        .await;
    for chunk in body.chunks(64 * 1024 + 3) {
        let mut framed = format!("{:x}\r\n", chunk.len()).into_bytes();
        framed.extend_from_slice(chunk);
        framed.extend_from_slice(b"\r\n");
        c.send(framed).await;
    }
    c.send("0\r\n\r\n").await;
    let r = c.read_response().await;
    assert_eq!(r.status, 200, "body: {}", r.text());
    let req = b.last_request().unwrap();
    assert!(req.complete);
    assert_eq!(req.body.len(), body.len(), "upload length");
    assert!(req.body == body, "upload content differs");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_content_length_upload_arrives_intact() {
    let (b, gw) = setup().await;
    let body = pattern(8 * MIB + 17);
    let mut c = Client::connect(gw.port()).await;
    c.send(format!(
        "PUT /upload HTTP/1.1\r\nHost: up.test\r\nContent-Length: {}\r\n\r\n",
        body.len()
    ))
    .await;
    c.send(&body).await;
    let r = c.read_response().await;
    assert_eq!(r.status, 200, "body: {}", r.text());
    let req = b.last_request().unwrap();
    assert_eq!(req.body.len(), body.len(), "upload length");
    assert!(req.body == body, "upload content differs");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_response_arrives_intact() {
    let (b, gw) = setup().await;
    let body = Arc::new(pattern(8 * MIB + 5));
    b.set(Behavior::Body(body.clone()));
    let r = gw.get("down.test", "/big").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body.len(), body.len(), "response length");
    assert!(r.body == *body, "response content differs");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_chunked_response_arrives_intact() {
    let (b, gw) = setup().await;
    let body = pattern(4 * MIB);
    let chunks: Vec<Vec<u8>> = body.chunks(50_000).map(|c| c.to_vec()).collect();
    b.set(Behavior::Chunked {
        chunks,
        pause: Duration::ZERO,
    });
    let r = gw.get("down.test", "/big-chunked").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body.len(), body.len(), "response length");
    assert!(r.body == body, "response content differs");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn response_is_streamed_not_buffered() {
    let (b, gw) = setup().await;
    b.set(Behavior::Chunked {
        chunks: vec![b"first-part".to_vec(), b"second-part".to_vec()],
        pause: Duration::from_millis(1500),
    });
    let mut c = Client::connect(gw.port()).await;
    let start = Instant::now();
    c.send("GET /stream HTTP/1.1\r\nHost: s.test\r\nConnection: close\r\n\r\n")
        .await;
    let head = c.read_head().await;
    assert_eq!(head.status, 200);
    let mut seen = Vec::new();
    while !String::from_utf8_lossy(&seen).contains("first-part") {
        seen.extend(c.read_some().await);
    }
    let first_at = start.elapsed();
    assert!(
        first_at < Duration::from_millis(1200),
        "the first chunk must arrive before the backend sends the second (took {first_at:?})"
    );
    while !String::from_utf8_lossy(&seen).contains("second-part") {
        seen.extend(c.read_some().await);
    }
    assert!(start.elapsed() >= Duration::from_millis(1400));
}
