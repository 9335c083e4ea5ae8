//! Route filters through the real gateway: access lists, rate limits, header edits,
//! redirects and rewrites, body limits, CORS at the edge, compression and the edge cache.

use switchyard_tests::{request, Backend, Behavior, Gateway};

async fn gateway_with(filters: &str, backend: &Backend, extra_server: &str) -> Gateway {
    let text = format!(
        "[[route]]\nname = \"f\"\npath_prefix = \"/\"\nupstream = \"u\"\nfilters = [ {filters} ]\n\n[[upstream]]\nname = \"u\"\nbackends = [ {{ addr = \"{}\" }} ]\n",
        backend.addr_string()
    );
    Gateway::start_simple(&format!("access_log = \"off\"\n{extra_server}"), &text).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ip_lists_answer_403_before_the_backend() {
    let b = Backend::start("b").await;
    let gw = gateway_with(r#"{ kind = "ip-deny", cidrs = ["127.0.0.0/8"] }"#, &b, "").await;
    let r = gw.get("f.test", "/").await;
    assert_eq!(r.status, 403);
    assert_eq!(b.request_count(), 0);
    let gw = gateway_with(
        r#"{ kind = "ip-allow", cidrs = ["127.0.0.1/32", "::1/128"] }"#,
        &b,
        "",
    )
    .await;
    assert_eq!(gw.get("f.test", "/").await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_answers_429_with_retry_after() {
    let b = Backend::start("b").await;
    let gw = gateway_with(
        r#"{ kind = "rate-limit", requests_per_second = 1, burst = 3, key = "client-ip" }"#,
        &b,
        "",
    )
    .await;
    let mut statuses = Vec::new();
    let mut retry_after = None;
    for _ in 0..5 {
        let r = gw.get("f.test", "/").await;
        if r.status == 429 {
            retry_after = r.header("retry-after").map(str::to_owned);
        }
        statuses.push(r.status);
    }
    assert_eq!(&statuses[..3], &[200, 200, 200], "{statuses:?}");
    assert!(statuses[3..].contains(&429), "{statuses:?}");
    let secs: u64 = retry_after
        .expect("Retry-After")
        .parse()
        .expect("whole seconds");
    assert!(secs >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_edits_redirect_and_rewrite() {
    let b = Backend::start("b").await;
    b.set(Behavior::EchoHeaders);
    let gw = gateway_with(
        r#"{ kind = "request-headers", set = { "x-env" = "prod" }, remove = ["x-debug"] },
           { kind = "response-headers", set = { "x-frame-options" = "DENY" } },
           { kind = "rewrite", pattern = "^/old/(.*)$", replacement = "/new/$1" }"#,
        &b,
        "",
    )
    .await;
    let r = request(
        gw.port(),
        "GET",
        "f.test",
        "/old/x?q=1",
        &[("x-debug", "1")],
        b"",
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-frame-options"), Some("DENY"));
    let seen = b.last_request().unwrap();
    assert_eq!(
        seen.target, "/new/x?q=1",
        "the path rewritten, the query kept"
    );
    assert_eq!(seen.header("x-env"), Some("prod"));
    assert!(seen.header("x-debug").is_none());

    let gw = gateway_with(
        r#"{ kind = "redirect", status = 301, location = "https://new.example.com{path}{query}" }"#,
        &b,
        "",
    )
    .await;
    let r = gw.get("f.test", "/a?b=1").await;
    assert_eq!(r.status, 301);
    assert_eq!(r.header("location"), Some("https://new.example.com/a?b=1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn body_limit_refuses_large_bodies_with_413() {
    let b = Backend::start("b").await;
    let gw = gateway_with(r#"{ kind = "body-limit", max_bytes = 16 }"#, &b, "").await;
    let r = request(gw.port(), "POST", "f.test", "/", &[], &[b'x'; 64]).await;
    assert_eq!(r.status, 413);
    assert_eq!(
        b.request_count(),
        0,
        "a Content-Length over the limit never reaches the backend"
    );
    let r = request(gw.port(), "POST", "f.test", "/", &[], b"small").await;
    assert_eq!(r.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cors_preflight_is_answered_at_the_edge() {
    let b = Backend::start("b").await;
    let gw = gateway_with(
        r#"{ kind = "cors", allow_origins = ["https://app.example.com"], allow_methods = ["GET", "POST"], allow_headers = ["content-type"], max_age = "10m" }"#,
        &b,
        "",
    )
    .await;
    let r = request(
        gw.port(),
        "OPTIONS",
        "f.test",
        "/api",
        &[
            ("Origin", "https://app.example.com"),
            ("Access-Control-Request-Method", "POST"),
        ],
        b"",
    )
    .await;
    assert!(r.status == 204 || r.status == 200, "{}", r.status);
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("https://app.example.com")
    );
    assert_eq!(
        b.request_count(),
        0,
        "the preflight never reaches the backend"
    );
    let r = request(
        gw.port(),
        "GET",
        "f.test",
        "/api",
        &[("Origin", "https://app.example.com")],
        b"",
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("https://app.example.com")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compress_and_cache() {
    let b = Backend::start("b").await;
    b.set(Behavior::Respond {
        status: 200,
        headers: vec![
            ("Content-Type".into(), "text/plain".into()),
            ("Cache-Control".into(), "max-age=60".into()),
        ],
        body: vec![b'a'; 4096],
    });
    let gw = gateway_with(
        r#"{ kind = "compress", min_bytes = 1024, algorithms = ["gzip"] },
           { kind = "cache", max_bytes = 1048576, default_ttl = "60s" }"#,
        &b,
        "",
    )
    .await;
    let r = request(
        gw.port(),
        "GET",
        "f.test",
        "/c",
        &[("Accept-Encoding", "gzip")],
        b"",
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-cache"), Some("MISS"));
    assert_eq!(r.header("content-encoding"), Some("gzip"));
    assert!(r.body.len() < 4096, "compressed: {} bytes", r.body.len());
    let r = request(gw.port(), "GET", "f.test", "/c", &[], b"").await;
    assert_eq!(r.header("x-cache"), Some("HIT"));
    assert_eq!(
        r.body.len(),
        4096,
        "identity for a client that does not accept gzip"
    );
    assert_eq!(b.request_count(), 1, "the second GET came from the cache");
}

/// A `redis-server` on a free loopback port for one test.
struct Redis {
    child: std::process::Child,
    port: u16,
}

impl Redis {
    fn start() -> Option<Redis> {
        let ok = std::process::Command::new("redis-server")
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success());
        if !ok {
            assert!(
                std::env::var_os("CI").is_none(),
                "redis-server is missing in CI: .ci/setup installs it"
            );
            eprintln!("note: redis-server not installed; skipping");
            return None;
        }
        let port = switchyard_tests::free_port();
        let child = std::process::Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start redis-server");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "redis-server did not come up"
            );
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        Some(Redis { child, port })
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_rate_limit_is_shared_by_two_gateways_and_survives_redis_loss() {
    let Some(mut redis) = Redis::start() else {
        return;
    };
    let b = Backend::start("b").await;
    let store = format!(
        "[session_store]\nkind = \"redis\"\nurl = \"redis://127.0.0.1:{}\"\ntimeout = \"100ms\"\n",
        redis.port
    );
    let text = format!(
        "[[route]]\nname = \"f\"\npath_prefix = \"/\"\nupstream = \"u\"\nfilters = [ {{ kind = \"rate-limit\", requests_per_second = 1, burst = 60, key = \"route\", scope = \"cluster\" }} ]\n\n[[upstream]]\nname = \"u\"\nbackends = [ {{ addr = \"{}\" }} ]\n\n{store}",
        b.addr_string()
    );
    let a = Gateway::start_simple("access_log = \"off\"", &text).await;
    let c = Gateway::start_simple("access_log = \"off\"", &text).await;
    // The fleet counts in fixed 60 s windows: start early in one.
    loop {
        let ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis();
        if ms % 60_000 < 50_000 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    let mut ok = 0;
    for i in 0..60 {
        let gw = if i % 2 == 0 { &a } else { &c };
        if gw.get("f.test", "/").await.status == 200 {
            ok += 1;
        }
    }
    assert_eq!(ok, 60, "the burst of 60 is shared: 30 through each gateway");
    let r = a.get("f.test", "/").await;
    assert_eq!(
        r.status, 429,
        "the 61st request, through either gateway, is limited"
    );
    assert_eq!(c.get("f.test", "/").await.status, 429);
    // Redis gone: the gateways fall back to local limits and never fail a request.
    let _ = redis.child.kill();
    let _ = redis.child.wait();
    for _ in 0..5 {
        let status = c.get("f.test", "/").await.status;
        assert!(status == 200 || status == 429, "status {status}");
    }
}
