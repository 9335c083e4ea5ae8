//! Hop-by-hop headers never cross the gateway, in either direction; a WebSocket upgrade does.

use std::time::Duration;

use switchyard_tests::{route, upstream, Backend, Behavior, Client, Gateway};

async fn setup() -> (Backend, Gateway) {
    let b = Backend::start("hop").await;
    let text = upstream("u", &[&b], "") + &route("all", "u", "path_prefix = \"/\"");
    let gw = Gateway::start_simple("", &text).await;
    (b, gw)
}

const REQUEST_HOP: [&str; 6] = [
    "x-secret",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "upgrade",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_hop_by_hop_headers_do_not_reach_the_backend() {
    let (b, gw) = setup().await;
    let mut c = Client::connect(gw.port()).await;
    c.send(
        "GET /hop HTTP/1.1\r\nHost: hop.test\r\nConnection: close, X-Secret\r\nX-Secret: s3cret\r\n\
         Keep-Alive: timeout=5\r\nProxy-Connection: keep-alive\r\nTE: trailers\r\nTrailer: X-Checksum\r\n\
         Upgrade: h2c\r\nX-Normal: kept\r\n\r\n",
    )
    .await;
    let r = c.read_response().await;
    assert_eq!(r.status, 200, "body: {}", r.text());
    let req = b.last_request().expect("the request reached the backend");
    assert_eq!(
        req.header("x-normal"),
        Some("kept"),
        "end-to-end headers cross"
    );
    for h in REQUEST_HOP {
        assert!(
            !req.has_header(h),
            "{h} reached the backend: {:?}",
            req.headers
        );
    }
    for v in req.headers_named("connection") {
        assert!(
            !v.to_ascii_lowercase().contains("x-secret"),
            "the client's Connection value reached the backend: {v}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headers_named_by_connection_are_dropped_on_keep_alive() {
    let (b, gw) = setup().await;
    let mut c = Client::connect(gw.port()).await;
    for i in 0..2 {
        c.send(format!(
            "GET /k{i} HTTP/1.1\r\nHost: hop.test\r\nConnection: X-Foo, X-Bar\r\nX-Foo: 1\r\nX-Bar: 2\r\nX-Baz: 3\r\n\r\n"
        ))
        .await;
        let r = c.read_response().await;
        assert_eq!(r.status, 200);
        let req = b.last_request().unwrap();
        assert_eq!(req.target, format!("/k{i}"));
        assert!(!req.has_header("x-foo"), "{:?}", req.headers);
        assert!(!req.has_header("x-bar"), "{:?}", req.headers);
        assert_eq!(req.header("x-baz"), Some("3"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn response_hop_by_hop_headers_do_not_reach_the_client() {
    let (b, gw) = setup().await;
    b.set(Behavior::Respond {
        status: 200,
        headers: vec![
            ("Connection".into(), "X-Backend-Secret".into()),
            ("X-Backend-Secret".into(), "1".into()),
            ("Keep-Alive".into(), "timeout=5, max=100".into()),
            ("Proxy-Connection".into(), "keep-alive".into()),
            ("Trailer".into(), "X-Checksum".into()),
            ("Upgrade".into(), "h2c".into()),
            ("X-Normal-Resp".into(), "yes".into()),
        ],
        body: b"payload".to_vec(),
    });
    let r = gw.get("hop.test", "/resp").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "payload");
    assert_eq!(r.header("x-normal-resp"), Some("yes"));
    for h in [
        "x-backend-secret",
        "keep-alive",
        "proxy-connection",
        "trailer",
        "upgrade",
    ] {
        assert!(!r.has_header(h), "{h} reached the client: {:?}", r.headers);
    }
    for v in r.headers_named("connection") {
        assert!(
            !v.to_ascii_lowercase().contains("x-backend-secret"),
            "the backend's Connection value reached the client: {v}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_upgrade_passes_through() {
    let (b, gw) = setup().await;
    // pingora 0.9 has a race (cloudflare/pingora#946): when the backend's 101 is read before
    // the upgrade request's own (empty) body end, the proxied connection can close right
    // after the 101. It hits a few percent of upgrades; a client reconnects, and so does this
    // test, up to three times. An upgrade that never works still fails.
    let mut last_error = String::new();
    for _attempt in 0..3 {
        match websocket_round_trip(&b, &gw).await {
            Ok(()) => return,
            Err(e) => last_error = e,
        }
    }
    panic!("{last_error}");
}

async fn websocket_round_trip(b: &Backend, gw: &Gateway) -> Result<(), String> {
    let mut c = Client::connect(gw.port()).await;
    c.send(
        "GET /ws HTTP/1.1\r\nHost: ws.test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    )
    .await;
    let head = c.read_head().await;
    assert_eq!(head.status, 101, "headers: {:?}", head.headers);
    assert!(
        head.header("upgrade")
            .is_some_and(|v| v.eq_ignore_ascii_case("websocket")),
        "101 carries Upgrade: websocket: {:?}",
        head.headers
    );
    let req = b.last_request().unwrap();
    assert!(
        req.header("upgrade")
            .is_some_and(|v| v.eq_ignore_ascii_case("websocket")),
        "the upgrade request reached the backend with Upgrade: {:?}",
        req.headers
    );
    assert!(
        req.headers_named("connection")
            .iter()
            .any(|v| v.to_ascii_lowercase().contains("upgrade")),
        "and with Connection: upgrade: {:?}",
        req.headers
    );
    c.set_timeout(Duration::from_secs(3));
    for (i, msg) in [&b"hello"[..], b"\x81\x05world", &[0u8, 1, 2, 255, 254][..]]
        .iter()
        .enumerate()
    {
        c.send(msg).await;
        match c.try_read_exact(msg.len()).await {
            Ok(echo) => assert_eq!(echo, *msg, "bytes echoed both ways"),
            Err(e) => {
                return Err(format!(
                    "message #{i} was not echoed through the upgraded connection: {e}; \
                     backend connections open: {}, backend requests: {:?}\ngateway stderr:\n{}",
                    b.open_connections(),
                    b.requests(),
                    gw.stderr()
                ))
            }
        }
    }
    Ok(())
}
