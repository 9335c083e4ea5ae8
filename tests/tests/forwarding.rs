//! Headers the gateway adds: X-Forwarded-For/-Proto/-Host and X-Request-Id.

use switchyard_tests::{request, route, upstream, Backend, Gateway, RecordedRequest, Response};

async fn setup(server: &str) -> (Backend, Gateway) {
    let b = Backend::start("fwd").await;
    let text = upstream("u", &[&b], "") + &route("all", "u", "path_prefix = \"/\"");
    let gw = Gateway::start_simple(server, &text).await;
    (b, gw)
}

/// Sends GET / with extra headers; returns the response and what the backend saw.
async fn send(
    gw: &Gateway,
    b: &Backend,
    host: &str,
    extra: &[(&str, &str)],
) -> (Response, RecordedRequest) {
    let before = b.request_count();
    let r = request(gw.port(), "GET", host, "/fwd", extra, b"").await;
    assert_eq!(r.status, 200, "body: {}", r.text());
    assert_eq!(b.request_count(), before + 1);
    (r, b.last_request().unwrap())
}

/// All X-Forwarded-For entries the backend saw, across header lines, trimmed.
fn xff(req: &RecordedRequest) -> Vec<String> {
    req.headers_named("x-forwarded-for")
        .iter()
        .flat_map(|v| v.split(','))
        .map(|s| s.trim().to_string())
        .collect()
}

fn well_formed_id(id: &str) -> bool {
    (1..=128).contains(&id.len())
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '_' || c == '-')
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn x_forwarded_for_untrusted_peer_is_replaced() {
    let (b, gw) = setup("").await;
    let (_, req) = send(&gw, &b, "fwd.test", &[]).await;
    assert_eq!(xff(&req), vec!["127.0.0.1"], "set to the client address");
    let (_, req) = send(&gw, &b, "fwd.test", &[("X-Forwarded-For", "1.2.3.4")]).await;
    assert_eq!(xff(&req), vec!["127.0.0.1"], "a spoofed value is replaced");
    let (_, req) = send(
        &gw,
        &b,
        "fwd.test",
        &[
            ("X-Forwarded-For", "1.2.3.4, 5.6.7.8"),
            ("X-Forwarded-For", "9.9.9.9"),
        ],
    )
    .await;
    assert_eq!(
        xff(&req),
        vec!["127.0.0.1"],
        "every spoofed line is replaced"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn x_forwarded_for_trusted_peer_is_appended() {
    let (b, gw) = setup("trusted_proxies = [\"127.0.0.0/8\"]").await;
    let (_, req) = send(&gw, &b, "fwd.test", &[("X-Forwarded-For", "1.2.3.4")]).await;
    assert_eq!(xff(&req), vec!["1.2.3.4", "127.0.0.1"]);
    let (_, req) = send(
        &gw,
        &b,
        "fwd.test",
        &[("X-Forwarded-For", "1.2.3.4, 5.6.7.8")],
    )
    .await;
    assert_eq!(xff(&req), vec!["1.2.3.4", "5.6.7.8", "127.0.0.1"]);
    let (_, req) = send(&gw, &b, "fwd.test", &[]).await;
    assert_eq!(xff(&req), vec!["127.0.0.1"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn x_forwarded_proto_and_host() {
    let (b, gw) = setup("").await;
    let (_, req) = send(&gw, &b, "shop.example.com", &[]).await;
    assert_eq!(req.headers_named("x-forwarded-proto"), vec!["http"]);
    assert_eq!(
        req.headers_named("x-forwarded-host"),
        vec!["shop.example.com"]
    );
    assert_eq!(
        req.header("host"),
        Some("shop.example.com"),
        "Host is passed through"
    );

    let (_, req) = send(
        &gw,
        &b,
        "shop.example.com",
        &[("X-Forwarded-Proto", "https")],
    )
    .await;
    assert_eq!(
        req.headers_named("x-forwarded-proto"),
        vec!["http"],
        "a client's own value is replaced"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_id_generated_when_absent() {
    let (b, gw) = setup("").await;
    let (r1, req1) = send(&gw, &b, "id.test", &[]).await;
    let sent = req1.headers_named("x-request-id");
    assert_eq!(sent.len(), 1, "one X-Request-Id upstream: {sent:?}");
    let id1 = sent[0].to_string();
    assert!(well_formed_id(&id1), "generated id is well-formed: {id1:?}");
    assert_eq!(
        r1.header("x-request-id"),
        Some(id1.as_str()),
        "echoed on the response"
    );

    let (r2, req2) = send(&gw, &b, "id.test", &[]).await;
    let id2 = req2.header("x-request-id").unwrap().to_string();
    assert_ne!(id1, id2, "ids are unique");
    assert_eq!(r2.header("x-request-id"), Some(id2.as_str()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_id_kept_when_well_formed() {
    let (b, gw) = setup("").await;
    let max = "a".repeat(128);
    for id in ["abc-123_X.y", "7", max.as_str()] {
        let (r, req) = send(&gw, &b, "id.test", &[("X-Request-Id", id)]).await;
        assert_eq!(req.headers_named("x-request-id"), vec![id], "kept upstream");
        assert_eq!(r.header("x-request-id"), Some(id), "echoed");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_id_replaced_when_malformed() {
    let (b, gw) = setup("").await;
    let long129 = "b".repeat(129);
    let long200 = "c".repeat(200);
    for bad in [
        "has space",
        "bad/slash",
        "semi;colon",
        long129.as_str(),
        long200.as_str(),
    ] {
        let (r, req) = send(&gw, &b, "id.test", &[("X-Request-Id", bad)]).await;
        let seen = req.headers_named("x-request-id");
        assert_eq!(seen.len(), 1, "one id upstream for {bad:?}: {seen:?}");
        assert_ne!(seen[0], bad, "a malformed id is replaced");
        assert!(
            well_formed_id(seen[0]),
            "replacement is well-formed: {:?}",
            seen[0]
        );
        assert_eq!(
            r.header("x-request-id"),
            Some(seen[0]),
            "the replacement is echoed"
        );
    }
}
