//! The admin listener's health endpoints.

use switchyard_tests::{admin_status, route, upstream, Backend, Client, Gateway};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_live_and_ready_answer_200() {
    let b = Backend::start("adm").await;
    let text = upstream("u", &[&b], "") + &route("all", "u", "path_prefix = \"/\"");
    let gw = Gateway::start_simple("", &text).await;
    assert_eq!(
        admin_status(gw.admin_port(), "/health/live").await,
        Some(200)
    );
    assert_eq!(
        admin_status(gw.admin_port(), "/health/ready").await,
        Some(200)
    );

    // Several on one keep-alive connection.
    let mut c = Client::connect(gw.admin_port()).await;
    for path in ["/health/live", "/health/ready", "/health/live"] {
        c.send(format!("GET {path} HTTP/1.1\r\nHost: admin\r\n\r\n"))
            .await;
        let r = c.read_response().await;
        assert_eq!(r.status, 200, "{path}");
    }
    assert_eq!(b.request_count(), 0, "admin requests are not proxied");
}
