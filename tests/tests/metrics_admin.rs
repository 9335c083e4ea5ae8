//! Metrics, the admin API and hot reload, against the real binary: exact metric deltas for
//! a known mix of traffic, the text checked by a real parser (promtool), the bearer token,
//! reload under load with zero failed requests, and an invalid reload that keeps serving.

use std::collections::HashMap;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use switchyard_tests::{
    free_port, request, route, upstream, Backend, Behavior, Client, Gateway, Response,
};

/// GET /metrics as text.
async fn scrape(gw: &Gateway) -> String {
    let r = request(gw.admin_port(), "GET", "admin", "/metrics", &[], b"").await;
    assert_eq!(r.status, 200);
    assert!(
        r.header("content-type")
            .is_some_and(|v| v.starts_with("text/plain; version=0.0.4")),
        "{:?}",
        r.headers
    );
    r.text()
}

/// Every sample of the text format as (`name{labels}` with labels sorted, value).
fn samples(text: &str) -> HashMap<String, f64> {
    let mut out = HashMap::new();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let (key, value) = line.rsplit_once(' ').expect("sample line");
        let key = match key.split_once('{') {
            Some((name, labels)) => {
                let mut parts: Vec<&str> = labels.trim_end_matches('}').split(',').collect();
                parts.sort_unstable();
                format!("{name}{{{}}}", parts.join(","))
            }
            None => key.to_owned(),
        };
        out.insert(key, value.parse().expect("numeric sample"));
    }
    out
}

fn value(s: &HashMap<String, f64>, name: &str, labels: &[(&str, &str)]) -> f64 {
    let mut parts: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
    parts.sort_unstable();
    let key = format!("{name}{{{}}}", parts.join(","));
    s.get(&key).copied().unwrap_or(0.0)
}

async fn admin(gw: &Gateway, method: &str, path: &str, token: Option<&str>) -> Response {
    let auth = token.map(|t| format!("Bearer {t}"));
    let headers: Vec<(&str, &str)> = auth
        .as_deref()
        .map(|a| vec![("Authorization", a)])
        .unwrap_or_default();
    request(gw.admin_port(), method, "admin", path, &headers, b"").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metric_deltas_match_the_traffic_exactly() {
    let ok = Backend::start("ok").await;
    let failing = Backend::start("failing").await;
    failing.set(Behavior::Status(503));
    let text = upstream("okpool", &[&ok], "")
        + &upstream("badpool", &[&failing], "")
        + &route("good", "okpool", "path_prefix = \"/good\"")
        + &route("bad", "badpool", "path_prefix = \"/bad\"");
    let gw = Gateway::start_simple("access_log = \"off\"", &text).await;
    // Warm up so every series exists, then measure deltas.
    assert_eq!(gw.get("m.test", "/good").await.status, 200);
    // A request is counted in its logging phase, just after its response is sent.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let before = samples(&scrape(&gw).await);
    for _ in 0..5 {
        assert_eq!(gw.get("m.test", "/good/x").await.status, 200);
    }
    for _ in 0..3 {
        assert_eq!(gw.get("m.test", "/bad").await.status, 503);
    }
    for _ in 0..2 {
        assert_eq!(gw.get("m.test", "/nowhere").await.status, 404);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let after = samples(&scrape(&gw).await);
    let delta = |name: &str, labels: &[(&str, &str)]| {
        value(&after, name, labels) - value(&before, name, labels)
    };
    let ok_addr = ok.addr_string();
    let bad_addr = failing.addr_string();
    assert_eq!(
        delta(
            "switchyard_requests_total",
            &[
                ("route", "good"),
                ("upstream", "okpool"),
                ("backend", &ok_addr),
                ("status", "200")
            ]
        ),
        5.0
    );
    assert_eq!(
        delta(
            "switchyard_requests_total",
            &[
                ("route", "bad"),
                ("upstream", "badpool"),
                ("backend", &bad_addr),
                ("status", "503")
            ]
        ),
        3.0
    );
    assert_eq!(
        delta(
            "switchyard_requests_total",
            &[
                ("route", "none"),
                ("upstream", "none"),
                ("backend", "none"),
                ("status", "404")
            ]
        ),
        2.0
    );
    // The histogram counts every request of its route.
    assert_eq!(
        delta(
            "switchyard_request_duration_seconds_count",
            &[("route", "good"), ("upstream", "okpool")]
        ),
        5.0
    );
    assert_eq!(
        value(
            &after,
            "switchyard_request_duration_seconds_count",
            &[("route", "good"), ("upstream", "okpool")]
        ),
        value(
            &after,
            "switchyard_requests_total",
            &[
                ("route", "good"),
                ("upstream", "okpool"),
                ("backend", &ok_addr),
                ("status", "200")
            ]
        )
    );
    assert_eq!(
        value(
            &after,
            "switchyard_backend_healthy",
            &[("upstream", "okpool"), ("backend", &ok_addr)]
        ),
        1.0
    );
    // No label carries what a client sent.
    assert!(!after
        .keys()
        .any(|k| k.contains("/good/x") || k.contains("m.test")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_text_passes_promtool() {
    let Ok(out) = Command::new("promtool").arg("--version").output() else {
        assert!(
            std::env::var_os("CI").is_none(),
            "promtool is missing in CI: .ci/setup installs Debian's prometheus package"
        );
        eprintln!("note: promtool not installed; skipping the parser check");
        return;
    };
    assert!(out.status.success());
    let b = Backend::start("p").await;
    let text = upstream("u", &[&b], "") + &route("all", "u", "path_prefix = \"/\"");
    let gw = Gateway::start_simple("access_log = \"off\"", &text).await;
    for _ in 0..3 {
        gw.get("p.test", "/").await;
    }
    gw.get("p.test", "/").await;
    let metrics = scrape(&gw).await;
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run promtool");
    use std::io::Write;
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(metrics.as_bytes())
        .expect("write metrics");
    let out = child.wait_with_output().expect("promtool output");
    assert!(
        out.status.success(),
        "promtool rejected the metrics:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    for name in [
        "switchyard_requests_total",
        "switchyard_request_duration_seconds",
        "switchyard_upstream_connections_total",
        "switchyard_backend_healthy",
        "switchyard_backend_active_requests",
        "switchyard_config_reloads_total",
        "switchyard_downstream_connections",
        "switchyard_retries_total",
    ] {
        assert!(metrics.contains(name), "{name} missing from /metrics");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_token_guards_admin_but_not_metrics_or_health() {
    let b = Backend::start("t").await;
    let text = upstream("u", &[&b], "") + &route("all", "u", "path_prefix = \"/\"");
    let admin_port = free_port();
    let toml = format!(
        "[server]\ngrace_period = \"1s\"\naccess_log = \"off\"\n[admin]\naddr = \"127.0.0.1:{admin_port}\"\ntoken = \"s3cret\"\n[[listener]]\nname = \"http\"\naddr = \"127.0.0.1:{}\"\n{text}",
        free_port()
    );
    let gw = Gateway::start(&toml).await;
    assert_eq!(
        admin(&gw, "GET", "/admin/upstreams", None).await.status,
        401
    );
    assert_eq!(
        admin(&gw, "GET", "/admin/upstreams", Some("wrong"))
            .await
            .status,
        401
    );
    let ok = admin(&gw, "GET", "/admin/upstreams", Some("s3cret")).await;
    assert_eq!(ok.status, 200);
    let json: serde_json::Value = serde_json::from_slice(&ok.body).expect("JSON");
    assert_eq!(json["upstreams"][0]["name"], "u");
    assert_eq!(json["upstreams"][0]["backends"][0]["addr"], b.addr_string());
    assert_eq!(admin(&gw, "POST", "/admin/reload", None).await.status, 401);
    assert_eq!(admin(&gw, "GET", "/metrics", None).await.status, 200);
    assert_eq!(admin(&gw, "GET", "/health/live", None).await.status, 200);
    assert_eq!(admin(&gw, "GET", "/health/ready", None).await.status, 200);
    // The admin API is never served on a public listener.
    let r = gw.get("t.test", "/admin/upstreams").await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.text(),
        "t",
        "the public listener proxied it like any path"
    );
}

fn config_with(admin_port: u16, port: u16, backends: &[&Backend], extra_route: &str) -> String {
    format!(
        "[server]\ngrace_period = \"2s\"\naccess_log = \"off\"\n[admin]\naddr = \"127.0.0.1:{admin_port}\"\n[[listener]]\nname = \"http\"\naddr = \"127.0.0.1:{port}\"\n{}{}{extra_route}",
        upstream("u", backends, "retries = 2"),
        route("all", "u", "path_prefix = \"/\"")
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reload_under_load_fails_no_request() {
    let a = Backend::start("a").await;
    let b = Backend::start("b").await;
    let c = Backend::start("c").await;
    let (admin_port, port) = (free_port(), free_port());
    let gw = Gateway::start(&config_with(admin_port, port, &[&a, &b], "")).await;
    let path = gw.config_path().to_path_buf();

    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicUsize::new(0));
    let mut workers = Vec::new();
    // Two kept-alive clients and two clients opening a connection per request.
    for keep_alive in [true, true, false, false] {
        let (stop, done) = (stop.clone(), done.clone());
        workers.push(tokio::spawn(async move {
            let mut failures = Vec::new();
            let mut conn: Option<Client> = None;
            while !stop.load(Ordering::Relaxed) {
                let r = if keep_alive {
                    let c = match conn.as_mut() {
                        Some(c) => c,
                        None => conn.insert(Client::connect(port).await),
                    };
                    c.send("GET /load HTTP/1.1\r\nHost: r.test\r\n\r\n").await;
                    match c.try_read_response().await {
                        Ok(r) => {
                            if r.header("connection")
                                .is_some_and(|v| v.eq_ignore_ascii_case("close"))
                            {
                                conn = None;
                            }
                            Ok(r)
                        }
                        Err(e) => {
                            conn = None;
                            Err(e)
                        }
                    }
                } else {
                    Ok(request(port, "GET", "r.test", "/load", &[], b"").await)
                };
                match r {
                    Ok(r) if r.status == 200 => {
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(r) => failures.push(format!("status {}", r.status)),
                    Err(e) => failures.push(e),
                }
            }
            failures
        }));
    }
    // Reload several times, adding and removing backends.
    let sets: [&[&Backend]; 4] = [&[&a, &b, &c], &[&b, &c], &[&c, &a], &[&a, &b]];
    for set in sets {
        tokio::time::sleep(Duration::from_millis(250)).await;
        std::fs::write(&path, config_with(admin_port, port, set, "")).expect("write config");
        let r = admin(&gw, "POST", "/admin/reload", None).await;
        assert_eq!(r.status, 200, "reload: {}", r.text());
        assert!(r.text().contains("reloaded"), "{}", r.text());
    }
    tokio::time::sleep(Duration::from_millis(250)).await;
    stop.store(true, Ordering::Relaxed);
    let mut failures = Vec::new();
    for w in workers {
        failures.extend(w.await.expect("worker"));
    }
    let total = done.load(Ordering::Relaxed);
    assert!(
        failures.is_empty(),
        "{} failed of {}: {:?}",
        failures.len(),
        total + failures.len(),
        &failures[..failures.len().min(5)]
    );
    assert!(total > 100, "only {total} requests were made");
    // Every backend served traffic at some point; the last set is a and b.
    assert!(
        c.request_count() > 0,
        "c was added by a reload and got traffic"
    );
    let c_before = c.request_count();
    for _ in 0..10 {
        assert_eq!(gw.get("r.test", "/after").await.status, 200);
    }
    assert_eq!(
        c.request_count(),
        c_before,
        "c was removed by the last reload"
    );
    let s = samples(&scrape(&gw).await);
    assert_eq!(
        value(&s, "switchyard_config_reloads_total", &[("result", "ok")]),
        4.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_reload_keeps_serving_and_reports_errors() {
    let a = Backend::start("a").await;
    let (admin_port, port) = (free_port(), free_port());
    let gw = Gateway::start(&config_with(admin_port, port, &[&a], "")).await;
    let path = gw.config_path().to_path_buf();
    let good = std::fs::read_to_string(&path).expect("config");
    std::fs::write(
        &path,
        good.replace(
            "grace_period = \"2s\"",
            "grace_period = \"2 parsecs\"\nbogus = 1",
        ),
    )
    .expect("write");
    let r = admin(&gw, "POST", "/admin/reload", None).await;
    assert_eq!(r.status, 400);
    let body = r.text();
    let file = path.display().to_string();
    assert!(body.lines().count() >= 2, "one error a line: {body}");
    assert!(
        body.lines().all(|l| l.starts_with(&format!("{file}:"))),
        "FILE:LINE:COLUMN: message lines: {body}"
    );
    assert!(body.contains(&format!("{file}:2:16:")), "{body}");
    assert_eq!(gw.get("r.test", "/still").await.status, 200);
    // SIGHUP with the file still broken changes nothing either.
    gw.signal("HUP");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(gw.get("r.test", "/still").await.status, 200);
    let s = samples(&scrape(&gw).await);
    assert_eq!(
        value(
            &s,
            "switchyard_config_reloads_total",
            &[("result", "error")]
        ),
        2.0
    );
    // Fixed file, SIGHUP: reloaded.
    std::fs::write(&path, good).expect("write");
    gw.signal("HUP");
    let mut ok = 0.0;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        ok = value(
            &samples(&scrape(&gw).await),
            "switchyard_config_reloads_total",
            &[("result", "ok")],
        );
        if ok >= 1.0 {
            break;
        }
    }
    assert_eq!(ok, 1.0, "SIGHUP reloaded the fixed file");
}
