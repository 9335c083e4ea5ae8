//! Malformed or ambiguous requests on a raw socket: 400 (or 431), connection closed, and
//! nothing reaches the backend.

use std::time::Duration;

use switchyard_tests::{route, upstream, Backend, Client, Gateway};

async fn setup() -> (Backend, Gateway) {
    let b = Backend::start("victim").await;
    let text = upstream("u", &[&b], "") + &route("all", "u", "path_prefix = \"/\"");
    let gw = Gateway::start_simple("max_header_bytes = 4096", &text).await;
    (b, gw)
}

/// Sends `raw` on a fresh connection and checks the status, that a 400 closes the
/// connection, that the backend saw nothing, and that a good request still works after.
async fn expect_rejected(raw: &[u8], status: u16) {
    let (b, gw) = setup().await;
    let mut c = Client::connect(gw.port()).await;
    c.send(raw).await;
    let r = match c.try_read_response().await {
        Ok(r) => r,
        Err(e) => panic!(
            "expected {status} for {:?}, got no response: {e}",
            String::from_utf8_lossy(&raw[..raw.len().min(200)])
        ),
    };
    assert_eq!(
        r.status,
        status,
        "request {:?} got body {:?}",
        String::from_utf8_lossy(&raw[..raw.len().min(200)]),
        r.text()
    );
    assert!(
        !r.text().contains("127.0.0.1"),
        "no addresses in {:?}",
        r.text()
    );
    if status == 400 {
        assert!(
            c.wait_closed(Duration::from_secs(2)).await.is_some(),
            "the connection must be closed after a 400"
        );
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        b.request_count(),
        0,
        "nothing may reach the backend, it saw {:?}",
        b.requests()
    );
    // The gateway still serves a good request (so the route did work).
    let ok = gw.get("good.test", "/ok").await;
    assert_eq!(ok.status, 200);
    assert_eq!(b.request_count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn content_length_and_transfer_encoding_is_400() {
    expect_rejected(
        b"POST /x HTTP/1.1\r\nHost: m.test\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        400,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transfer_encoding_then_content_length_is_400() {
    expect_rejected(
        b"POST /x HTTP/1.1\r\nHost: m.test\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n",
        400,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_differing_content_lengths_is_400() {
    expect_rejected(
        b"POST /x HTTP/1.1\r\nHost: m.test\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
        400,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_numeric_content_length_is_400() {
    expect_rejected(
        b"POST /x HTTP/1.1\r\nHost: m.test\r\nContent-Length: abc\r\n\r\nhello",
        400,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_chunk_size_is_400() {
    expect_rejected(
        b"POST /x HTTP/1.1\r\nHost: m.test\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
        400,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_request_line_is_400() {
    expect_rejected(b"THIS IS NOT HTTP AT ALL\r\n\r\n", 400).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn head_over_max_header_bytes_is_431() {
    let raw = format!(
        "GET /big HTTP/1.1\r\nHost: m.test\r\nX-Big: {}\r\n\r\n",
        "a".repeat(8000)
    );
    expect_rejected(raw.as_bytes(), 431).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_headers_over_max_header_bytes_is_431() {
    let mut raw = String::from("GET /many HTTP/1.1\r\nHost: m.test\r\n");
    for i in 0..80 {
        raw.push_str(&format!("X-H{i}: {}\r\n", "v".repeat(60)));
    }
    raw.push_str("\r\n");
    expect_rejected(raw.as_bytes(), 431).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn head_under_max_header_bytes_passes() {
    let (b, gw) = setup().await;
    let raw = format!(
        "GET /fits HTTP/1.1\r\nHost: m.test\r\nConnection: close\r\nX-Big: {}\r\n\r\n",
        "a".repeat(3000)
    );
    let r = switchyard_tests::send_raw(gw.port(), raw).await;
    assert_eq!(r.status, 200, "a 3 KB head is under the 4096-byte limit");
    assert_eq!(
        b.last_request().unwrap().header("x-big").map(str::len),
        Some(3000)
    );
}
