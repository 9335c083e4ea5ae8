//! Graceful shutdown on SIGTERM: readiness drops at once, in-flight requests finish, the
//! process exits 0 within the grace period.

use std::time::{Duration, Instant};

use switchyard_tests::{route, upstream, Backend, Behavior, Gateway};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_in_flight_requests_and_exits_0() {
    let b = Backend::start("slow-backend").await;
    b.set(Behavior::Delay(Duration::from_secs(1)));
    let text =
        upstream("u", &[&b], "read_timeout = \"10s\"") + &route("all", "u", "path_prefix = \"/\"");
    let mut gw = Gateway::start_simple("grace_period = \"3s\"", &text).await;
    let port = gw.port();

    let slow =
        tokio::spawn(async move { switchyard_tests::get(port, "drain.test", "/slow").await });
    assert_eq!(
        b.wait_requests(1, Duration::from_secs(3)).await,
        1,
        "the slow request reached the backend"
    );

    let signalled = Instant::now();
    gw.signal("TERM");

    // Readiness turns 503 (or the admin listener is gone) at once.
    let mut ready = gw.ready_status().await;
    while ready == Some(200) && signalled.elapsed() < Duration::from_millis(800) {
        tokio::time::sleep(Duration::from_millis(20)).await;
        ready = gw.ready_status().await;
    }
    assert_ne!(
        ready,
        Some(200),
        "/health/ready still 200 {:?} after SIGTERM",
        signalled.elapsed()
    );
    if let Some(s) = ready {
        assert_eq!(s, 503, "/health/ready while shutting down");
    }

    let r = tokio::time::timeout(Duration::from_secs(4), slow)
        .await
        .expect("the in-flight request finished")
        .expect("the request task did not panic");
    assert_eq!(
        r.status,
        200,
        "the in-flight request completes: {}",
        r.text()
    );
    assert_eq!(r.text(), "slow-backend");

    let status = gw
        .wait_exit(Duration::from_secs(5).saturating_sub(signalled.elapsed()))
        .await;
    let status = status.unwrap_or_else(|| {
        panic!(
            "still running {:?} after SIGTERM with grace_period 3s\nstderr: {}",
            signalled.elapsed(),
            gw.stderr()
        )
    });
    assert_eq!(
        status.code(),
        Some(0),
        "exit status {status}; stderr: {}",
        gw.stderr()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_gateway_exits_0_on_sigterm() {
    let b = Backend::start("idle").await;
    let text = upstream("u", &[&b], "") + &route("all", "u", "path_prefix = \"/\"");
    let mut gw = Gateway::start_simple("grace_period = \"2s\"", &text).await;
    assert_eq!(gw.get("idle.test", "/").await.status, 200);
    let signalled = Instant::now();
    gw.signal("TERM");
    let status = gw
        .wait_exit(Duration::from_secs(4))
        .await
        .unwrap_or_else(|| {
            panic!(
                "still running {:?} after SIGTERM\nstderr: {}",
                signalled.elapsed(),
                gw.stderr()
            )
        });
    assert_eq!(
        status.code(),
        Some(0),
        "exit status {status}; stderr: {}",
        gw.stderr()
    );
}
