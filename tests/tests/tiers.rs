//! Backend tiers (`priority`): the first tier serves while it is healthy, the next takes
//! over when it fails and gives the traffic back when it recovers.

use std::time::{Duration, Instant};

use switchyard_tests::{route, Backend, Behavior, Client, Gateway};

async fn admin_get(port: u16, path: &str) -> String {
    let mut c = Client::connect(port).await;
    c.send(format!(
        "GET {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n"
    ))
    .await;
    c.read_response().await.text()
}

/// Waits (20 s at most) until a request is answered by `want`.
async fn wait_served_by(gw: &Gateway, want: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut last = String::new();
    while Instant::now() < deadline {
        let r = gw.get("t.example", "/").await;
        last = format!("{} {}", r.status, r.text());
        if r.status == 200 && r.text() == want {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("never served by {want}; last answer: {last}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_next_tier_serves_while_the_first_is_down() {
    let primary = Backend::start("primary").await;
    let backup = Backend::start("backup").await;
    let rest = format!(
        "[[upstream]]\nname = \"u\"\nalgorithm = \"round-robin\"\nbackends = [\n  {{ addr = \"{}\" }},\n  {{ addr = \"{}\", priority = 1 }},\n]\n\
         health_check = {{ path = \"/health\", interval = \"200ms\", fails = 1, passes = 1 }}\n\n{}",
        primary.addr_string(),
        backup.addr_string(),
        route("all", "u", "path_prefix = \"/\"")
    );
    let gw = Gateway::start_simple("", &rest).await;
    // While tier 0 is healthy, tier 1 gets nothing.
    for _ in 0..20 {
        let r = gw.get("t.example", "/").await;
        assert_eq!((r.status, r.text()), (200, "primary".to_owned()));
    }
    let json = admin_get(gw.admin_port(), "/admin/upstreams").await;
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["upstreams"][0]["backends"][0]["priority"], 0, "{v}");
    assert_eq!(v["upstreams"][0]["backends"][1]["priority"], 1, "{v}");
    // Tier 0 dies: tier 1 serves.
    primary.set(Behavior::Status(503));
    wait_served_by(&gw, "backup").await;
    for _ in 0..10 {
        let r = gw.get("t.example", "/").await;
        assert_eq!((r.status, r.text()), (200, "backup".to_owned()));
    }
    // It recovers: the traffic goes back.
    primary.set(Behavior::Ok);
    wait_served_by(&gw, "primary").await;
    for _ in 0..10 {
        let r = gw.get("t.example", "/").await;
        assert_eq!((r.status, r.text()), (200, "primary".to_owned()));
    }
}
