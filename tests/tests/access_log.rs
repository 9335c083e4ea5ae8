//! The access log: one JSON object a line, to stdout, a file, or nowhere.

use std::time::{Duration, Instant};

use serde_json::Value;
use switchyard_tests::{json_lines, route, upstream, Backend, Gateway, TempDir};

const KEYS: [&str; 12] = [
    "time",
    "client",
    "method",
    "host",
    "path",
    "status",
    "route",
    "upstream",
    "backend",
    "bytes",
    "duration_ms",
    "request_id",
];

async fn setup(server: &str) -> (Backend, Gateway) {
    let b = Backend::start("logged").await;
    let text = upstream("logup", &[&b], "")
        + &route(
            "logroute",
            "logup",
            "host = \"log.example.com\"\npath_prefix = \"/\"",
        );
    let gw = Gateway::start_simple(server, &text).await;
    (b, gw)
}

fn looks_rfc3339(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() >= 20
        && b[4] == b'-'
        && b[7] == b'-'
        && (b[10] == b'T' || b[10] == b't')
        && b[13] == b':'
        && b[16] == b':'
        && (s.ends_with('Z') || s.ends_with('z') || s[19..].contains('+') || s[19..].contains('-'))
}

fn check_line(line: &Value) {
    let obj = line.as_object().unwrap();
    for k in KEYS {
        assert!(obj.contains_key(k), "access log line lacks {k:?}: {line}");
    }
    let time = line["time"]
        .as_str()
        .unwrap_or_else(|| panic!("time is a string: {line}"));
    assert!(looks_rfc3339(time), "time is RFC 3339: {time:?}");
    assert!(line["status"].is_u64(), "status is a number: {line}");
    assert!(
        line["duration_ms"].is_number(),
        "duration_ms is a number: {line}"
    );
    assert!(line["duration_ms"].as_f64().unwrap() >= 0.0);
    assert!(line["bytes"].is_number(), "bytes is a number: {line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stdout_gets_one_json_line_per_request() {
    let (b, gw) = setup("access_log = \"stdout\"").await;
    let r = gw.get("log.example.com", "/hello").await;
    assert_eq!(r.status, 200);
    let id = r
        .header("x-request-id")
        .expect("X-Request-Id echoed")
        .to_string();

    let lines = gw.wait_access_log(1, Duration::from_secs(3)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let lines_after = gw.access_log();
    assert_eq!(
        lines_after.len(),
        1,
        "exactly one line for one request (admin health checks are not logged): {lines_after:?}\nstdout: {}",
        gw.stdout()
    );
    let line = &lines[0];
    check_line(line);
    assert_eq!(line["client"], "127.0.0.1");
    assert_eq!(line["method"], "GET");
    assert_eq!(line["host"], "log.example.com");
    assert_eq!(line["path"], "/hello");
    assert_eq!(line["status"], 200);
    assert_eq!(line["route"], "logroute");
    assert_eq!(line["upstream"], "logup");
    assert_eq!(line["backend"], b.addr_string().as_str());
    assert_eq!(
        line["request_id"],
        id.as_str(),
        "the id echoed to the client"
    );

    // A request that matches no route: logged, with no backend.
    let r = gw.get("other.example.com", "/missing").await;
    assert_eq!(r.status, 404);
    let lines = gw.wait_access_log(2, Duration::from_secs(3)).await;
    assert_eq!(lines.len(), 2, "{lines:?}");
    let line = &lines[1];
    check_line(line);
    assert_eq!(line["status"], 404);
    assert_eq!(line["path"], "/missing");
    assert!(
        line["backend"].is_null(),
        "backend is null when none was reached: {line}"
    );
    assert_eq!(
        r.header("x-request-id"),
        line["request_id"].as_str(),
        "the gateway's own 404 echoes the logged X-Request-Id too"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_is_the_rightmost_untrusted_forwarded_for_entry() {
    let (_b, gw) =
        setup("access_log = \"stdout\"\ntrusted_proxies = [\"127.0.0.0/8\", \"10.0.0.0/8\"]").await;
    let r = switchyard_tests::request(
        gw.port(),
        "GET",
        "log.example.com",
        "/via-proxies",
        &[("X-Forwarded-For", "203.0.113.7, 198.51.100.9, 10.1.2.3")],
        b"",
    )
    .await;
    assert_eq!(r.status, 200);
    let lines = gw.wait_access_log(1, Duration::from_secs(3)).await;
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert_eq!(
        lines[0]["client"], "198.51.100.9",
        "the rightmost entry not in trusted_proxies"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn off_prints_nothing() {
    let (b, gw) = setup("access_log = \"off\"").await;
    for _ in 0..3 {
        let r = gw.get("log.example.com", "/quiet").await;
        assert_eq!(r.status, 200);
    }
    assert_eq!(b.request_count(), 3);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(gw.access_log().is_empty(), "stdout: {}", gw.stdout());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_path_writes_there() {
    let dir = TempDir::new();
    let path = dir.path().join("access.log");
    let server = format!("access_log = \"{}\"", path.display());
    let (b, gw) = setup(&server).await;
    let r = gw.get("log.example.com", "/to-file").await;
    assert_eq!(r.status, 200);
    let id = r
        .header("x-request-id")
        .expect("X-Request-Id echoed")
        .to_string();

    let start = Instant::now();
    let lines = loop {
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        let lines = json_lines(&text);
        if !lines.is_empty() || start.elapsed() > Duration::from_secs(3) {
            break lines;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(lines.len(), 1, "one line in {}: {lines:?}", path.display());
    check_line(&lines[0]);
    assert_eq!(lines[0]["request_id"], id.as_str());
    assert_eq!(lines[0]["path"], "/to-file");
    assert_eq!(lines[0]["backend"], b.addr_string().as_str());
    assert!(
        gw.access_log().is_empty(),
        "nothing on stdout: {}",
        gw.stdout()
    );
}
