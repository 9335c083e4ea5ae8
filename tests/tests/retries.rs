//! Retries through the real gateway: a failed connect always moves to another backend; a
//! request that reached a backend is retried only when it is idempotent; the retry budget
//! caps retries at a fifth of an upstream's requests.

use switchyard_tests::{free_port, request, route, Backend, Behavior, Gateway};

fn two_backends(bad: &Backend, good: &Backend, extra: &str) -> String {
    format!(
        "[[upstream]]\nname = \"u\"\nalgorithm = \"round-robin\"\nbackends = [ {{ addr = \"{}\" }}, {{ addr = \"{}\" }} ]\nretry_backoff = \"1ms\"\n{extra}\n\n{}",
        bad.addr_string(),
        good.addr_string(),
        route("all", "u", "path_prefix = \"/\"")
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotent_requests_that_reached_a_backend_are_retried_elsewhere() {
    let bad = Backend::start("bad").await;
    bad.set(Behavior::Reset);
    let good = Backend::start("good").await;
    let gw = Gateway::start_simple(
        "access_log = \"off\"",
        &two_backends(&bad, &good, "retries = 1"),
    )
    .await;
    for _ in 0..4 {
        let r = gw.get("r.test", "/idempotent").await;
        assert_eq!(
            r.status,
            200,
            "GET is retried on the good backend: {}\n{}",
            r.text(),
            gw.stderr()
        );
        assert_eq!(r.text(), "good");
    }
    assert!(
        bad.request_count() >= 1,
        "some attempts did reach the bad backend"
    );
    // PUT is idempotent too, and its small body is replayed whole.
    let r = request(gw.port(), "PUT", "r.test", "/put", &[], b"payload").await;
    assert_eq!(r.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_idempotent_requests_are_not_retried_once_sent() {
    let bad = Backend::start("bad").await;
    bad.set(Behavior::Reset);
    let good = Backend::start("good").await;
    let gw = Gateway::start_simple(
        "access_log = \"off\"",
        &two_backends(&bad, &good, "retries = 3"),
    )
    .await;
    let mut statuses = Vec::new();
    for _ in 0..4 {
        statuses.push(
            request(gw.port(), "POST", "r.test", "/post", &[], b"x")
                .await
                .status,
        );
    }
    // Round robin alternates: POSTs that reached the resetting backend fail with 502.
    assert!(statuses.contains(&502), "{statuses:?}");
    assert!(statuses.contains(&200), "{statuses:?}");
    let posts_on_good = good
        .requests()
        .iter()
        .filter(|r| r.method == "POST")
        .count();
    assert_eq!(
        posts_on_good,
        statuses.iter().filter(|&&s| s == 200).count(),
        "no POST was sent twice"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_retry_budget_stops_a_retry_storm() {
    // Every backend refuses: each request may retry, but the budget allows only a fifth of
    // the requests (at least 10) to be retried within 10 s.
    let dead: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let text = format!(
        "[[upstream]]\nname = \"u\"\nbackends = [ {} ]\nretries = 2\nretry_backoff = \"1ms\"\nconnect_timeout = \"200ms\"\n\n{}",
        dead.iter().map(|p| format!("{{ addr = \"127.0.0.1:{p}\" }}")).collect::<Vec<_>>().join(", "),
        route("all", "u", "path_prefix = \"/\"")
    );
    let gw = Gateway::start_simple("access_log = \"off\"", &text).await;
    for _ in 0..60 {
        assert_eq!(gw.get("r.test", "/").await.status, 502);
    }
    let metrics = request(gw.admin_port(), "GET", "admin", "/metrics", &[], b"")
        .await
        .text();
    let retries: f64 = metrics
        .lines()
        .find(|l| l.starts_with("switchyard_retries_total{upstream=\"u\"}"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .expect("retries metric");
    // Without a budget 60 requests x 2 retries = 120; the budget allows 20% of 60 = 12.
    assert!(retries <= 12.0, "retries {retries}");
    assert!(retries >= 10.0, "retries {retries}");
}
