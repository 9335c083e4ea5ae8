//! Backend health end to end: active HTTP and TCP checks, passive ejection, the 503 when no
//! backend is left, the ejection cap, and the slow-start ramp after a drain.

use std::future::Future;
use std::time::{Duration, Instant};

use switchyard_tests::{free_port, route, upstream, Backend, Behavior, Client, Gateway};

/// `METHOD path` on the admin listener; the response body parsed as JSON (or `null`).
async fn admin(port: u16, method: &str, path: &str) -> (u16, serde_json::Value) {
    let mut c = Client::connect(port).await;
    c.send(format!(
        "{method} {path} HTTP/1.1\r\nHost: admin\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    ))
    .await;
    let r = c.read_response().await;
    let v = serde_json::from_slice(&r.body).unwrap_or(serde_json::Value::Null);
    (r.status, v)
}

/// The admin view of one backend.
async fn backend_view(gw: &Gateway, upstream: &str, addr: &str) -> serde_json::Value {
    let (status, v) = admin(gw.admin_port(), "GET", "/admin/upstreams").await;
    assert_eq!(status, 200);
    v["upstreams"]
        .as_array()
        .and_then(|us| us.iter().find(|u| u["name"] == upstream))
        .and_then(|u| u["backends"].as_array())
        .and_then(|bs| bs.iter().find(|b| b["addr"] == addr))
        .cloned()
        .unwrap_or_else(|| panic!("no backend {addr} in upstream {upstream}: {v}"))
}

/// Polls `check` every 20 ms until it holds; how long that took, or `None` after `within`.
async fn wait_for<F, Fut>(within: Duration, mut check: F) -> Option<Duration>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let start = Instant::now();
    while start.elapsed() < within {
        if check().await {
            return Some(start.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    None
}

fn probes(b: &Backend) -> usize {
    b.requests()
        .iter()
        .filter(|r| r.path() == "/health")
        .count()
}

fn traffic(b: &Backend) -> usize {
    b.requests()
        .iter()
        .filter(|r| r.path() != "/health")
        .count()
}

fn all_route() -> String {
    route("all", "u", "path_prefix = \"/\"")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_check_takes_a_failing_backend_out_and_back() {
    let a = Backend::start("a").await;
    let b = Backend::start("b").await;
    let c = Backend::start("c").await;
    let check = "health_check = { path = \"/health\", interval = \"200ms\", timeout = \"500ms\", fails = 2, passes = 2 }";
    let text = upstream("u", &[&a, &b, &c], check) + &all_route();
    let gw = Gateway::start_simple("", &text).await;
    let addr = b.addr_string();

    // Healthy at start, and probed with the documented request.
    assert_eq!(backend_view(&gw, "u", &addr).await["healthy"], true);
    assert!(
        wait_for(Duration::from_secs(3), || async { probes(&b) >= 1 })
            .await
            .is_some(),
        "no probe arrived"
    );
    let probe = b
        .requests()
        .into_iter()
        .find(|r| r.path() == "/health")
        .unwrap();
    assert_eq!(probe.method, "GET");
    assert_eq!(probe.header("host"), Some(addr.as_str()));
    assert_eq!(probe.header("user-agent"), Some("switchyard-health"));

    // Failing: out after `fails` (2) failed probes.
    b.set(Behavior::Status(500));
    let before = probes(&b);
    let took = wait_for(Duration::from_secs(5), || async {
        backend_view(&gw, "u", &addr).await["healthy"] == false
    })
    .await;
    assert!(took.is_some(), "never marked unhealthy");
    let failed = probes(&b) - before;
    assert!(
        (2..=3).contains(&failed),
        "down after {failed} failed probes, expected fails = 2"
    );

    // Its traffic goes to the others.
    let seen = traffic(&b);
    for i in 0..30 {
        let r = gw.get("h.test", &format!("/r{i}")).await;
        assert_eq!(r.status, 200, "request {i}: {}", r.text());
        assert_ne!(r.text(), "b");
    }
    assert_eq!(traffic(&b), seen, "an unhealthy backend got traffic");
    assert!(traffic(&a) >= 10 && traffic(&c) >= 10);

    // Back after `passes` (2) passing probes.
    b.set(Behavior::Ok);
    let before = probes(&b);
    assert!(
        wait_for(Duration::from_secs(5), || async {
            backend_view(&gw, "u", &addr).await["healthy"] == true
        })
        .await
        .is_some(),
        "never healthy again"
    );
    let passed = probes(&b) - before;
    assert!(
        (2..=3).contains(&passed),
        "up after {passed} passing probes, expected passes = 2"
    );
    let mut got_b = 0;
    for i in 0..12 {
        let r = gw.get("h.test", &format!("/back{i}")).await;
        assert_eq!(r.status, 200);
        got_b += usize::from(r.text() == "b");
    }
    assert!(got_b >= 3, "b got {got_b} of 12 after coming back");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_check_marks_a_closed_port_down() {
    let live = Backend::start("live").await;
    let dead = format!("127.0.0.1:{}", free_port());
    let text = format!(
        "[[upstream]]\nname = \"u\"\nalgorithm = \"round-robin\"\nbackends = [ {{ addr = \"{}\" }}, {{ addr = \"{dead}\" }} ]\n\
         retries = 0\nhealth_check = {{ kind = \"tcp\", interval = \"200ms\", timeout = \"300ms\", fails = 2, passes = 1 }}\n\n{}",
        live.addr_string(),
        all_route()
    );
    let gw = Gateway::start_simple("", &text).await;
    assert!(
        wait_for(Duration::from_secs(5), || async {
            backend_view(&gw, "u", &dead).await["healthy"] == false
        })
        .await
        .is_some(),
        "the closed port was never marked down"
    );
    assert_eq!(
        backend_view(&gw, "u", &live.addr_string()).await["healthy"],
        true
    );
    // With retries = 0 a request sent to the dead port would be a 502: none is.
    let start = Instant::now();
    for i in 0..20 {
        let r = gw.get("t.test", &format!("/{i}")).await;
        assert_eq!(r.status, 200, "request {i}: {}", r.text());
    }
    assert!(start.elapsed() < Duration::from_secs(5));
    assert!(probes(&live) == 0, "a tcp check sends no HTTP request");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passive_ejection_after_consecutive_502s_then_return() {
    let bad = Backend::start("bad").await;
    let good = Backend::start("good").await;
    bad.set(Behavior::Status(502));
    let text = upstream(
        "u",
        &[&bad, &good],
        "passive_health = { consecutive_failures = 3, eject = \"1s\" }",
    ) + &all_route();
    let gw = Gateway::start_simple("", &text).await;
    let addr = bad.addr_string();

    let mut bad_answers = 0;
    for i in 0..20 {
        let r = gw.get("p.test", &format!("/{i}")).await;
        if r.status == 502 {
            bad_answers += 1;
        } else {
            assert_eq!(r.status, 200);
        }
    }
    // Three in a row eject it (one more may slip through while the third is still being
    // logged).
    assert!(
        (3..=4).contains(&bad_answers),
        "{bad_answers} answers from the failing backend"
    );
    let view = backend_view(&gw, "u", &addr).await;
    assert_eq!(view["ejected"], true, "{view}");
    assert_eq!(
        view["healthy"], true,
        "ejection is not an active-check failure"
    );
    let seen = traffic(&bad);
    for i in 0..10 {
        assert_eq!(gw.get("p.test", &format!("/e{i}")).await.status, 200);
    }
    assert_eq!(traffic(&bad), seen, "an ejected backend got traffic");

    // Back after `eject`.
    bad.set(Behavior::Ok);
    let took = wait_for(Duration::from_secs(4), || async {
        backend_view(&gw, "u", &addr).await["ejected"] == false
    })
    .await
    .expect("never returned from the ejection");
    assert!(
        took < Duration::from_millis(1600),
        "returned after {took:?}"
    );
    let mut got_bad = 0;
    for i in 0..10 {
        let r = gw.get("p.test", &format!("/b{i}")).await;
        assert_eq!(r.status, 200);
        got_bad += usize::from(r.text() == "bad");
    }
    assert!(got_bad >= 3, "the returned backend got {got_bad} of 10");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_eligible_backend_answers_503_at_once() {
    let b = Backend::start("sick").await;
    b.set(Behavior::Status(500));
    let text = upstream(
        "u",
        &[&b],
        "health_check = { interval = \"200ms\", fails = 1, passes = 1 }",
    ) + &all_route();
    let gw = Gateway::start_simple("", &text).await;
    assert!(
        wait_for(Duration::from_secs(5), || async {
            backend_view(&gw, "u", &b.addr_string()).await["healthy"] == false
        })
        .await
        .is_some(),
        "never marked unhealthy"
    );
    let seen = traffic(&b);
    for i in 0..3 {
        let start = Instant::now();
        let r = gw.get("n.test", &format!("/{i}")).await;
        assert_eq!(r.status, 503, "{}", r.text());
        assert!(
            start.elapsed() < Duration::from_millis(500),
            "took {:?}",
            start.elapsed()
        );
        assert!(!r.text().contains("127.0.0.1"), "{}", r.text());
    }
    assert_eq!(traffic(&b), seen, "nothing is sent to an unhealthy backend");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ejection_never_exceeds_half_of_an_upstream() {
    let bs: Vec<Backend> = futures_join(4).await;
    for b in &bs {
        b.set(Behavior::Status(502));
    }
    let refs: Vec<&Backend> = bs.iter().collect();
    let text = upstream(
        "u",
        &refs,
        "passive_health = { consecutive_failures = 2, eject = \"30s\" }",
    ) + &all_route();
    let gw = Gateway::start_simple("", &text).await;
    for i in 0..40 {
        let r = gw.get("x.test", &format!("/{i}")).await;
        // Never 503: half of the backends stay in.
        assert_eq!(r.status, 502, "request {i}: {}", r.text());
    }
    let mut ejected = 0;
    for b in &bs {
        if backend_view(&gw, "u", &b.addr_string()).await["ejected"] == true {
            ejected += 1;
        }
    }
    assert_eq!(ejected, 2, "50 % of 4 backends");
}

async fn futures_join(n: usize) -> Vec<Backend> {
    let mut v = Vec::with_capacity(n);
    for i in 0..n {
        v.push(Backend::start(&format!("b{i}")).await);
    }
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enable_after_drain_ramps_the_weight() {
    let a = Backend::start("a").await;
    let b = Backend::start("b").await;
    let text = format!(
        "[[upstream]]\nname = \"u\"\nalgorithm = \"weighted-round-robin\"\nbackends = [ {{ addr = \"{}\", weight = 10 }}, {{ addr = \"{}\", weight = 10 }} ]\n\
         slow_start = \"2s\"\n\n{}",
        a.addr_string(),
        b.addr_string(),
        all_route()
    );
    let gw = Gateway::start_simple("", &text).await;
    let addr = b.addr_string();
    let view = backend_view(&gw, "u", &addr).await;
    assert_eq!(view["effective_weight"], 10, "full weight at start: {view}");
    assert_eq!(view["draining"], false);
    assert_eq!(view["active_requests"], 0);
    let port = gw.admin_port();
    let (s, _) = admin(
        port,
        "POST",
        &format!("/admin/upstreams/u/backends/{addr}/drain"),
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(backend_view(&gw, "u", &addr).await["draining"], true);
    for i in 0..6 {
        let r = gw.get("d.test", &format!("/{i}")).await;
        assert_eq!(r.text(), "a", "a drained backend got a request");
    }
    let (s, _) = admin(
        port,
        "POST",
        &format!("/admin/upstreams/u/backends/{addr}/enable"),
    )
    .await;
    assert_eq!(s, 200);
    let view = backend_view(&gw, "u", &addr).await;
    assert_eq!(view["draining"], false);
    let w = view["effective_weight"].as_u64().unwrap();
    assert!(w < 5, "ramp starts near 1/10 of the weight: {view}");
    let full = wait_for(Duration::from_secs(5), || async {
        backend_view(&gw, "u", &addr).await["effective_weight"] == 10
    })
    .await
    .expect("never back to full weight");
    assert!(
        full >= Duration::from_millis(1500),
        "full weight after {full:?}, slow_start is 2s"
    );
    for i in 0..6 {
        assert_eq!(gw.get("d.test", &format!("/f{i}")).await.status, 200);
    }
    assert!(traffic(&b) >= 2);
    assert!(backend_view(&gw, "u", &addr).await["ewma_ms"].is_number());
}
