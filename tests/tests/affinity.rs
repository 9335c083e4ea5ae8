//! Sticky sessions end to end: the signed affinity cookie (kept, forged, failed over,
//! drained) and session-id affinity in the memory store and in a real Redis shared by two
//! gateways, through a Redis outage and back.
//!
//! The Redis tests start their own `redis-server` on a free port and kill it when they end.
//! Without `redis-server`/`redis-cli` on the PATH they print a note and pass, except under
//! CI (`CI` set), where they fail.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use switchyard_tests::{
    free_port, request, route, simple_config, Backend, Behavior, Client, Gateway, Response, TempDir,
};

const HOST: &str = "sticky.test";
const SECRET: &str = "affinity-test-secret";

/// A `GET /` with these extra headers, on a new connection.
async fn get_with(port: u16, headers: &[(&str, &str)]) -> Response {
    request(port, "GET", HOST, "/", headers, b"").await
}

/// A `GET /` carrying `Cookie: {cookie}` when given.
async fn get_cookie(port: u16, cookie: Option<&str>) -> Response {
    match cookie {
        Some(c) => get_with(port, &[("Cookie", c)]).await,
        None => get_with(port, &[]).await,
    }
}

/// The value the response's `Set-Cookie` gives cookie `name`, if any.
fn set_cookie(r: &Response, name: &str) -> Option<String> {
    r.headers_named("set-cookie").into_iter().find_map(|v| {
        let (n, rest) = v.split_once('=')?;
        (n.trim() == name).then(|| rest.split(';').next().unwrap_or("").to_owned())
    })
}

/// The whole `Set-Cookie` header for cookie `name`.
fn set_cookie_header(r: &Response, name: &str) -> Option<String> {
    r.headers_named("set-cookie")
        .into_iter()
        .find(|v| v.starts_with(&format!("{name}=")))
        .map(str::to_owned)
}

/// `METHOD path` on the admin listener: status and body.
async fn admin(port: u16, method: &str, path: &str) -> (u16, String) {
    let mut c = Client::connect(port).await;
    c.send(format!(
        "{method} {path} HTTP/1.1\r\nHost: admin\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    ))
    .await;
    let r = c.read_response().await;
    (r.status, r.text())
}

/// The value of the metric sample whose line starts with `name{` and holds every label in
/// `labels` (0 when absent).
async fn metric(gw: &Gateway, name: &str, labels: &[&str]) -> f64 {
    let (status, text) = admin(gw.admin_port(), "GET", "/metrics").await;
    assert_eq!(status, 200);
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")))
        .filter(|l| labels.iter().all(|lab| l.contains(lab)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

async fn affinity_count(gw: &Gateway, result: &str) -> f64 {
    metric(
        gw,
        "switchyard_affinity_total",
        &["upstream=\"app\"", &format!("result=\"{result}\"")],
    )
    .await
}

async fn three_backends() -> Vec<Backend> {
    vec![
        Backend::start("a").await,
        Backend::start("b").await,
        Backend::start("c").await,
    ]
}

/// Routes and an upstream `app` (round-robin over `backends`) with `affinity`, after the
/// top-level tables in `extra`.
fn sticky_rest(backends: &[&Backend], affinity: &str, extra: &str) -> String {
    sticky_upstream(backends, affinity, extra, "")
}

/// [`sticky_rest`] with more lines (`upstream_lines`) inside the upstream table.
fn sticky_upstream(
    backends: &[&Backend],
    affinity: &str,
    extra: &str,
    upstream_lines: &str,
) -> String {
    let list: Vec<String> = backends
        .iter()
        .map(|b| format!("  {{ addr = \"{}\" }},", b.addr_string()))
        .collect();
    format!(
        "{extra}\n[[upstream]]\nname = \"app\"\nalgorithm = \"round-robin\"\nbackends = [\n{}\n]\n{upstream_lines}\naffinity = {affinity}\n\n{}",
        list.join("\n"),
        route("all", "app", "path_prefix = \"/\"")
    )
}

fn cookie_affinity() -> String {
    format!("{{ kind = \"cookie\", secret = \"{SECRET}\" }}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cookie_keeps_a_client_on_its_backend() {
    let backends = three_backends().await;
    let refs: Vec<&Backend> = backends.iter().collect();
    let gw = Gateway::start_simple("", &sticky_rest(&refs, &cookie_affinity(), "")).await;
    let port = gw.port();

    // Without the cookie, round-robin spreads; every answer pins with a cookie.
    let mut seen = BTreeSet::new();
    for _ in 0..6 {
        let r = get_cookie(port, None).await;
        assert_eq!(r.status, 200);
        assert!(set_cookie(&r, "SWY_AFFINITY").is_some(), "{:?}", r.headers);
        seen.insert(r.text());
    }
    assert_eq!(seen.len(), 3, "round-robin spreads: {seen:?}");

    let first = get_cookie(port, None).await;
    let header = set_cookie_header(&first, "SWY_AFFINITY").expect("a Set-Cookie");
    for attr in ["; Path=/", "; Max-Age=3600", "; HttpOnly", "; SameSite=Lax"] {
        assert!(header.contains(attr), "{attr} missing from {header}");
    }
    assert!(
        !header.contains("Secure"),
        "no Secure on plain HTTP: {header}"
    );
    let value = set_cookie(&first, "SWY_AFFINITY").unwrap();
    assert!(
        !value.contains("127.0.0.1"),
        "address in the cookie: {value}"
    );
    for b in &backends {
        assert!(
            !value.contains(&b.port().to_string()),
            "a backend port in the cookie: {value}"
        );
    }
    let pinned = first.text();
    let cookie = format!("SWY_AFFINITY={value}");
    for i in 0..20 {
        let r = get_cookie(port, Some(&cookie)).await;
        assert_eq!(r.status, 200);
        assert_eq!(r.text(), pinned, "request {i} left the pinned backend");
        assert!(
            set_cookie(&r, "SWY_AFFINITY").is_none(),
            "a fresh valid cookie is not re-sent"
        );
    }
    // Other cookies next to it do not matter.
    let r = get_cookie(port, Some(&format!("theme=dark; {cookie}; lang=en"))).await;
    assert_eq!(r.text(), pinned);
    assert!(affinity_count(&gw, "hit").await >= 21.0);
    assert!(affinity_count(&gw, "new").await >= 7.0);
    assert_eq!(affinity_count(&gw, "invalid").await, 0.0);

    // A reload keeps cookies valid (same secret, same backends).
    let (status, body) = admin(gw.admin_port(), "POST", "/admin/reload").await;
    assert_eq!(status, 200, "{body}");
    let r = get_cookie(port, Some(&cookie)).await;
    assert_eq!(r.text(), pinned, "the pin survives a reload");
    assert_eq!(affinity_count(&gw, "invalid").await, 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_cookie_is_invalid_and_replaced() {
    let backends = three_backends().await;
    let refs: Vec<&Backend> = backends.iter().collect();
    let gw = Gateway::start_simple("", &sticky_rest(&refs, &cookie_affinity(), "")).await;
    let port = gw.port();
    let value = set_cookie(&get_cookie(port, None).await, "SWY_AFFINITY").unwrap();

    // One character changed: the signature no longer matches.
    let mut forged = value.clone().into_bytes();
    let last = forged.len() - 1;
    forged[last] = if forged[last] == b'0' { b'1' } else { b'0' };
    let forged = String::from_utf8(forged).unwrap();
    let garbage = format!("127.0.0.1:{}", backends[0].port());
    let mut invalid = 0.0;
    for bad in [forged.as_str(), garbage.as_str(), "x.y.z", "%%%", "0.0.0"] {
        let r = get_cookie(port, Some(&format!("SWY_AFFINITY={bad}"))).await;
        assert_eq!(r.status, 200, "a bad cookie is never an error: {bad}");
        let fresh = set_cookie(&r, "SWY_AFFINITY").expect("a new cookie replaces a bad one");
        assert_ne!(fresh, bad);
        invalid += 1.0;
        // The replacement is genuine: it sticks.
        let again = get_cookie(port, Some(&format!("SWY_AFFINITY={fresh}"))).await;
        assert_eq!(again.text(), r.text());
        assert!(set_cookie(&again, "SWY_AFFINITY").is_none());
    }
    assert_eq!(affinity_count(&gw, "invalid").await, invalid);

    // A cookie signed with another secret (another fleet) is not accepted either.
    let others = three_backends().await;
    let other_refs: Vec<&Backend> = others.iter().collect();
    let other = Gateway::start_simple(
        "",
        &sticky_rest(
            &other_refs,
            "{ kind = \"cookie\", secret = \"someone-else\" }",
            "",
        ),
    )
    .await;
    let foreign = set_cookie(&get_cookie(other.port(), None).await, "SWY_AFFINITY").unwrap();
    let r = get_cookie(port, Some(&format!("SWY_AFFINITY={foreign}"))).await;
    assert_eq!(r.status, 200);
    assert!(set_cookie(&r, "SWY_AFFINITY").is_some());
    assert_eq!(affinity_count(&gw, "invalid").await, invalid + 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pinned_backend_down_repins() {
    let mut backends: Vec<Option<Backend>> = three_backends().await.into_iter().map(Some).collect();
    let refs: Vec<&Backend> = backends.iter().flatten().collect();
    let gw = Gateway::start_simple(
        "",
        &sticky_rest(
            &refs,
            "{ kind = \"cookie\", cookie = \"PIN\", ttl = \"10m\" }",
            "",
        ),
    )
    .await;
    let port = gw.port();
    let first = get_cookie(port, None).await;
    let header = set_cookie_header(&first, "PIN").expect("the configured cookie name");
    assert!(header.contains("Max-Age=600"), "{header}");
    let cookie = format!("PIN={}", set_cookie(&first, "PIN").unwrap());
    let pinned = first.text();
    assert_eq!(get_cookie(port, Some(&cookie)).await.text(), pinned);

    // Stop the pinned backend.
    let gone = backends
        .iter_mut()
        .find(|b| b.as_ref().is_some_and(|b| b.name() == pinned))
        .unwrap()
        .take()
        .unwrap();
    drop(gone);
    tokio::time::sleep(Duration::from_millis(50)).await;

    let r = get_cookie(port, Some(&cookie)).await;
    assert_eq!(
        r.status,
        200,
        "the client is served elsewhere: {}",
        r.text()
    );
    assert_ne!(r.text(), pinned);
    let moved = set_cookie(&r, "PIN").expect("a new cookie names the new backend");
    let new_cookie = format!("PIN={moved}");
    let new_home = r.text();
    for _ in 0..10 {
        let r = get_cookie(port, Some(&new_cookie)).await;
        assert_eq!(r.status, 200);
        assert_eq!(r.text(), new_home, "sticks to the new backend");
    }
    assert!(affinity_count(&gw, "repinned").await >= 1.0);
    assert_eq!(affinity_count(&gw, "invalid").await, 0.0);
}

/// Waits (5 s max) until the admin view of backend `addr` of `app` has `field` = `value`.
async fn wait_backend(gw: &Gateway, addr: &str, field: &str, value: bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (_, body) = admin(gw.admin_port(), "GET", "/admin/upstreams").await;
        let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
        let found = v["upstreams"]
            .as_array()
            .and_then(|us| us.iter().find(|u| u["name"] == "app"))
            .and_then(|u| u["backends"].as_array())
            .and_then(|bs| bs.iter().find(|b| b["addr"] == addr))
            .map(|b| b[field] == value);
        if found == Some(true) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{addr} never had {field} = {value}: {v}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unhealthy_or_ejected_pinned_backend_repins() {
    for (setting, field) in [
        (
            "health_check = { path = \"/health\", interval = \"100ms\", timeout = \"500ms\", fails = 1, passes = 1 }",
            "healthy",
        ),
        (
            "retries = 0\npassive_health = { consecutive_failures = 1, eject = \"30s\" }",
            "ejected",
        ),
    ] {
        let backends = three_backends().await;
        let refs: Vec<&Backend> = backends.iter().collect();
        let gw = Gateway::start_simple(
            "",
            &sticky_upstream(&refs, &cookie_affinity(), "", setting),
        )
        .await;
        let port = gw.port();
        let first = get_cookie(port, None).await;
        let cookie = format!("SWY_AFFINITY={}", set_cookie(&first, "SWY_AFFINITY").unwrap());
        let pinned = backends.iter().find(|b| b.name() == first.text()).unwrap();
        pinned.set(Behavior::Status(503));
        if field == "healthy" {
            wait_backend(&gw, &pinned.addr_string(), "healthy", false).await;
        } else {
            // One failed answer ejects it.
            assert_eq!(get_cookie(port, Some(&cookie)).await.status, 503);
            wait_backend(&gw, &pinned.addr_string(), "ejected", true).await;
        }
        let r = get_cookie(port, Some(&cookie)).await;
        assert_eq!(r.status, 200, "{field}: {}", r.text());
        assert_ne!(r.text(), pinned.name());
        let moved = format!("SWY_AFFINITY={}", set_cookie(&r, "SWY_AFFINITY").expect("a new cookie"));
        for _ in 0..5 {
            assert_eq!(get_cookie(port, Some(&moved)).await.text(), r.text());
        }
        assert_eq!(affinity_count(&gw, "repinned").await, 1.0, "{field}");
        // Back to health: new sessions may go there again, moved ones stay moved.
        pinned.set(Behavior::Ok);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn draining_keeps_pinned_sessions() {
    let backends = three_backends().await;
    let refs: Vec<&Backend> = backends.iter().collect();
    let gw = Gateway::start_simple("", &sticky_rest(&refs, &cookie_affinity(), "")).await;
    let port = gw.port();
    let first = get_cookie(port, None).await;
    let cookie = format!(
        "SWY_AFFINITY={}",
        set_cookie(&first, "SWY_AFFINITY").unwrap()
    );
    let pinned = first.text();
    let addr = backends
        .iter()
        .find(|b| b.name() == pinned)
        .unwrap()
        .addr_string();
    let (status, body) = admin(
        gw.admin_port(),
        "POST",
        &format!("/admin/upstreams/app/backends/{addr}/drain"),
    )
    .await;
    assert_eq!(status, 200, "{body}");

    for _ in 0..10 {
        let r = get_cookie(port, Some(&cookie)).await;
        assert_eq!(r.status, 200);
        assert_eq!(
            r.text(),
            pinned,
            "a pinned session stays on a draining backend"
        );
    }
    for _ in 0..10 {
        let r = get_cookie(port, None).await;
        assert_eq!(r.status, 200);
        assert_ne!(r.text(), pinned, "no new session on a draining backend");
        assert!(set_cookie(&r, "SWY_AFFINITY").is_some());
    }
    // Undo the drain: new sessions may land there again.
    let (status, _) = admin(
        gw.admin_port(),
        "POST",
        &format!("/admin/upstreams/app/backends/{addr}/enable"),
    )
    .await;
    assert_eq!(status, 200);
    let mut seen = BTreeSet::new();
    for _ in 0..30 {
        seen.insert(get_cookie(port, None).await.text());
    }
    assert!(seen.contains(&pinned), "{seen:?}");
}

/// Makes every backend answer with `Set-Cookie: SESSION={name}-{round}`: the id that
/// backend issues this round.
fn issue_ids(backends: &[Backend], round: usize) {
    for b in backends {
        b.set(Behavior::Respond {
            status: 200,
            headers: vec![(
                "Set-Cookie".to_owned(),
                format!("SESSION={}-{round}; Path=/; HttpOnly", b.name()),
            )],
            body: b.name().as_bytes().to_vec(),
        });
    }
}

fn answer_plainly(backends: &[Backend]) {
    for b in backends {
        b.set(Behavior::Ok);
    }
}

/// Requests without a session id until every backend has issued its id for `round`;
/// returns (id, issuing backend).
async fn collect_issued(port: u16, backends: &[Backend], round: usize) -> Vec<(String, String)> {
    issue_ids(backends, round);
    let mut issued = BTreeMap::new();
    for _ in 0..30 {
        let r = get_cookie(port, None).await;
        assert_eq!(r.status, 200);
        let id = set_cookie(&r, "SESSION").expect("the backend's Set-Cookie passes through");
        issued.insert(id, r.text());
        if issued.len() == backends.len() {
            break;
        }
    }
    answer_plainly(backends);
    assert_eq!(issued.len(), backends.len(), "{issued:?}");
    issued.into_iter().collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_id_affinity_with_the_memory_store() {
    let backends = three_backends().await;
    let refs: Vec<&Backend> = backends.iter().collect();
    let gw = Gateway::start_simple(
        "",
        &sticky_rest(
            &refs,
            "{ kind = \"session\", cookie = \"SESSION\", ttl = \"10m\" }",
            "[session_store]\nkind = \"memory\"\n",
        ),
    )
    .await;
    let port = gw.port();

    // No id: balanced normally, nothing pinned, no cookie of the gateway's own.
    let mut seen = BTreeSet::new();
    for _ in 0..6 {
        let r = get_cookie(port, None).await;
        assert!(r.headers_named("set-cookie").is_empty(), "{:?}", r.headers);
        seen.insert(r.text());
    }
    assert_eq!(seen.len(), 3);

    // An id not yet pinned is pinned to the backend it first reaches.
    let mut homes = BTreeSet::new();
    for k in 0..12 {
        let cookie = format!("SESSION=user-{k}");
        let home = get_cookie(port, Some(&cookie)).await.text();
        for _ in 0..5 {
            assert_eq!(
                get_cookie(port, Some(&cookie)).await.text(),
                home,
                "{cookie}"
            );
        }
        homes.insert(home);
    }
    assert!(homes.len() >= 2, "ids spread over the backends: {homes:?}");

    // An id the application issues (Set-Cookie) is pinned to the backend that issued it.
    for round in 0..3 {
        for (id, issuer) in collect_issued(port, &backends, round).await {
            let cookie = format!("SESSION={id}");
            for _ in 0..4 {
                let r = get_cookie(port, Some(&cookie)).await;
                assert_eq!(r.text(), issuer, "{id} left the backend that issued it");
            }
        }
    }

    // An oversized id counts invalid and is balanced like no id.
    let long = format!("SESSION={}", "x".repeat(400));
    let r = get_cookie(port, Some(&long)).await;
    assert_eq!(r.status, 200);
    assert_eq!(affinity_count(&gw, "invalid").await, 1.0);
    assert!(affinity_count(&gw, "new").await >= 12.0 + 9.0);
    assert!(affinity_count(&gw, "hit").await >= 60.0 + 36.0 - 9.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_id_from_a_header() {
    let backends = three_backends().await;
    let refs: Vec<&Backend> = backends.iter().collect();
    let gw = Gateway::start_simple(
        "",
        &sticky_rest(
            &refs,
            "{ kind = \"session\", header = \"x-session-id\" }",
            "",
        ),
    )
    .await;
    let port = gw.port();
    let mut homes = BTreeSet::new();
    for k in 0..12 {
        let id = format!("tok-{k}");
        let home = get_with(port, &[("x-session-id", &id)]).await.text();
        for _ in 0..5 {
            let r = get_with(port, &[("X-Session-Id", &id)]).await;
            assert_eq!(r.text(), home, "{id}");
        }
        homes.insert(home);
    }
    assert!(homes.len() >= 2, "{homes:?}");
    // The cookie of the same name means nothing here.
    let mut seen = BTreeSet::new();
    for _ in 0..6 {
        seen.insert(get_cookie(port, Some("x-session-id=tok-1")).await.text());
    }
    assert_eq!(seen.len(), 3, "no id: round-robin");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn affinity_config_errors_are_reported() {
    let check = switchyard_tests::check_config(&simple_config(
        "",
        "[[upstream]]\nname = \"app\"\nbackends = [ { addr = \"127.0.0.1:1\" } ]\n\
         affinity = { kind = \"session\", cookie = \"S\", header = \"x-s\", secret = \"no\" }\n\n\
         [[route]]\nname = \"r\"\npath_prefix = \"/\"\nupstream = \"app\"\n\n\
         [session_store]\nkind = \"redis\"\nurl = \"http://not-redis\"\n",
    ));
    let out = &check.output;
    assert_eq!(out.code, Some(1), "{out:?}");
    assert!(out.stderr.contains("not both"), "{}", out.stderr);
    assert!(out.stderr.contains("affinity.secret"), "{}", out.stderr);
    assert!(out.stderr.contains("not-redis"), "{}", out.stderr);
}

// ---------------------------------------------------------------------------------------
// Redis.

/// Whether `redis-server` and `redis-cli` can run; fails under CI if not.
fn redis_available() -> bool {
    let works = |bin: &str| {
        Command::new(bin)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if works("redis-server") && works("redis-cli") {
        return true;
    }
    if std::env::var_os("CI").is_some() {
        panic!(
            "redis-server/redis-cli are not installed, and CI is set: the affinity tests \
             need them (.ci/setup installs the redis-server package)"
        );
    }
    eprintln!("note: redis-server/redis-cli not found; skipping this Redis test");
    false
}

/// One `redis-server` process, killed when dropped.
struct RedisServer {
    port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

impl RedisServer {
    fn start(dir: &Path) -> RedisServer {
        let mut server = RedisServer::stopped(dir);
        server.spawn();
        server
    }

    /// A server on a free port, not started yet.
    fn stopped(dir: &Path) -> RedisServer {
        RedisServer {
            port: free_port(),
            dir: dir.to_path_buf(),
            child: None,
        }
    }

    fn spawn(&mut self) {
        assert!(self.child.is_none());
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1"])
            .args(["--save", ""])
            .args(["--appendonly", "no"])
            .args(["--daemonize", "no"])
            .arg("--dir")
            .arg(&self.dir)
            .arg("--logfile")
            .arg(self.dir.join("redis.log"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-server");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !ping(self.port) {
            if Instant::now() > deadline {
                let log = std::fs::read_to_string(self.dir.join("redis.log")).unwrap_or_default();
                panic!("redis-server on port {} did not come up:\n{log}", self.port);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Runs `redis-cli` with `args`; its trimmed output.
    fn cli(&self, args: &[&str]) -> String {
        let out = Command::new("redis-cli")
            .args(["-p", &self.port.to_string()])
            .args(args)
            .output()
            .expect("run redis-cli");
        assert!(out.status.success(), "redis-cli {args:?} failed");
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// Pins `session` of upstream `app` to `addr` directly in Redis.
    fn pin(&self, session: &str, addr: &str) {
        let key = format!("switchyard:affinity:app:{session}");
        assert_eq!(self.cli(&["SET", &key, addr, "EX", "600"]), "OK");
    }

    /// The pin of `session` of upstream `app` in Redis.
    fn pinned(&self, session: &str) -> String {
        self.cli(&["GET", &format!("switchyard:affinity:app:{session}")])
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Sends `PING` over a raw socket; true on `+PONG`.
fn ping(port: u16) -> bool {
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
    if stream.write_all(b"PING\r\n").is_err() {
        return false;
    }
    let mut buf = [0u8; 7];
    stream.read_exact(&mut buf).is_ok() && &buf == b"+PONG\r\n"
}

fn redis_rest(backends: &[Backend], redis: &RedisServer) -> String {
    let refs: Vec<&Backend> = backends.iter().collect();
    sticky_rest(
        &refs,
        "{ kind = \"session\", cookie = \"SESSION\", ttl = \"10m\" }",
        &format!(
            "[session_store]\nkind = \"redis\"\nurl = \"{}\"\ntimeout = \"50ms\"\n",
            redis.url()
        ),
    )
}

/// The backend a request carrying session `id` reaches, checking it answers in time.
async fn home_of(port: u16, id: &str) -> String {
    let started = Instant::now();
    let r = get_cookie(port, Some(&format!("SESSION={id}"))).await;
    let took = started.elapsed();
    assert_eq!(r.status, 200, "{id}: {}", r.text());
    // "Promptly": far below a client's patience, with room for a loaded CI machine (the
    // store's own timeout is 50 ms; a request that waited on a dead Redis would hang).
    assert!(took < Duration::from_secs(3), "{id} took {took:?}");
    r.text()
}

/// Sends a first session request so that the gateway builds its store, and waits until it
/// has (pins are then read from Redis).
async fn warm_up(port: u16, redis: &RedisServer) {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut n = 0;
    loop {
        let id = format!("warm-up-{port}-{n}");
        home_of(port, &id).await;
        if !redis.pinned(&id).is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the gateway never wrote a pin to Redis"
        );
        n += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_gateways_sharing_redis_agree() {
    if !redis_available() {
        return;
    }
    let dir = TempDir::new();
    let redis = RedisServer::start(dir.path());
    let backends = three_backends().await;
    let rest = redis_rest(&backends, &redis);
    let a = Gateway::start_simple("", &rest).await;
    let b = Gateway::start_simple("", &rest).await;
    warm_up(a.port(), &redis).await;
    warm_up(b.port(), &redis).await;
    let addr_of = |name: &str| {
        backends
            .iter()
            .find(|b| b.name() == name)
            .unwrap()
            .addr_string()
    };

    // Ids issued by the backends through gateway A are pinned in Redis to their issuer,
    // and gateway B sends them there too.
    for round in 0..3 {
        for (id, issuer) in collect_issued(a.port(), &backends, round).await {
            assert_eq!(
                redis.pinned(&id),
                addr_of(&issuer),
                "the pin of {id} in Redis"
            );
            for _ in 0..3 {
                assert_eq!(home_of(b.port(), &id).await, issuer, "{id} via gateway B");
                assert_eq!(home_of(a.port(), &id).await, issuer, "{id} via gateway A");
            }
        }
    }

    // An id first seen by gateway B is pinned where B sent it; A agrees.
    for k in 0..6 {
        let id = format!("seen-by-b-{k}");
        let home = home_of(b.port(), &id).await;
        assert_eq!(redis.pinned(&id), addr_of(&home));
        assert_eq!(home_of(a.port(), &id).await, home);
    }

    // Pins written by anyone into Redis are followed by both.
    for k in 0..9 {
        let id = format!("injected-{k}");
        redis.pin(&id, &backends[k % 3].addr_string());
        assert_eq!(home_of(a.port(), &id).await, backends[k % 3].name());
        assert_eq!(home_of(b.port(), &id).await, backends[k % 3].name());
    }
    assert_eq!(
        metric(&a, "switchyard_session_store_errors_total", &[]).await,
        0.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_outage_falls_back_to_hashing_and_recovers() {
    if !redis_available() {
        return;
    }
    let dir = TempDir::new();
    let mut redis = RedisServer::start(dir.path());
    let backends = three_backends().await;
    let gw = Gateway::start_simple("", &redis_rest(&backends, &redis)).await;
    let port = gw.port();
    warm_up(port, &redis).await;

    // Ids pinned by a first request (placed by hashing) and ids pinned elsewhere by hand.
    let mut placed = BTreeMap::new();
    for k in 0..9 {
        let id = format!("placed-{k}");
        placed.insert(id.clone(), home_of(port, &id).await);
    }
    let injected: Vec<String> = (0..9).map(|k| format!("injected-{k}")).collect();
    for (k, id) in injected.iter().enumerate() {
        redis.pin(id, &backends[k % 3].addr_string());
        assert_eq!(home_of(port, id).await, backends[k % 3].name());
    }

    // Traffic keeps flowing while Redis dies: every request answered, and promptly.
    let stop = Arc::new(AtomicBool::new(false));
    let worst = Arc::new(Mutex::new((Duration::ZERO, 0usize, 0usize)));
    let traffic = {
        let (stop, worst) = (stop.clone(), worst.clone());
        tokio::spawn(async move {
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                let id = format!("traffic-{}", n % 20);
                let started = Instant::now();
                let r = get_cookie(port, Some(&format!("SESSION={id}"))).await;
                let took = started.elapsed();
                let mut w = worst.lock().unwrap();
                w.0 = w.0.max(took);
                w.1 += 1;
                w.2 += usize::from(r.status != 200);
                n += 1;
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    redis.kill();
    // Past the local pin cache: from now on every lookup meets the outage.
    tokio::time::sleep(Duration::from_millis(1500)).await;

    // During the outage: each id always reaches the same backend (its hash owner); ids
    // that were placed by hashing keep their backend.
    let mut during = BTreeMap::new();
    for round in 0..3 {
        for id in placed.keys().chain(injected.iter()) {
            let home = home_of(port, id).await;
            let first = during.entry(id.clone()).or_insert_with(|| home.clone());
            assert_eq!(*first, home, "{id} moved during the outage (round {round})");
        }
    }
    for (id, home) in &placed {
        assert_eq!(
            &during[id], home,
            "{id}: a hash-placed pin survives the outage"
        );
    }
    let spread: BTreeSet<&String> = during.values().collect();
    assert!(spread.len() >= 2, "the fallback still spreads: {spread:?}");
    assert!(
        metric(
            &gw,
            "switchyard_session_store_errors_total",
            &["op=\"get\""]
        )
        .await
            > 0.0,
        "store failures are counted"
    );

    // Redis comes back (empty): pins written into it are followed again, without a
    // gateway restart.
    redis.spawn();
    let moved: Vec<(String, usize)> = injected
        .iter()
        .enumerate()
        .map(|(k, id)| {
            // Pin each id to a backend other than its hash owner.
            let owner = backends
                .iter()
                .position(|b| b.name() == during[id])
                .unwrap();
            let target = (owner + 1 + k % 2) % 3;
            redis.pin(id, &backends[target].addr_string());
            (id.clone(), target)
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut following = 0;
        for (id, target) in &moved {
            following += usize::from(home_of(port, id).await == backends[*target].name());
        }
        if following == moved.len() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "only {following} of {} ids follow their pins after Redis came back",
            moved.len()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // And new pins are written again.
    let home = home_of(port, "after-the-outage").await;
    let addr = backends
        .iter()
        .find(|b| b.name() == home)
        .unwrap()
        .addr_string();
    assert_eq!(redis.pinned("after-the-outage"), addr);

    stop.store(true, Ordering::Relaxed);
    traffic.await.unwrap();
    let (worst, count, failed) = *worst.lock().unwrap();
    assert!(count > 20, "background traffic ran: {count}");
    assert_eq!(failed, 0, "no request failed during the outage");
    assert!(worst < Duration::from_secs(3), "slowest request: {worst:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_at_start_then_up() {
    if !redis_available() {
        return;
    }
    let dir = TempDir::new();
    let mut redis = RedisServer::stopped(dir.path());
    let backends = three_backends().await;
    let gw = Gateway::start_simple("", &redis_rest(&backends, &redis)).await;
    let port = gw.port();

    // No Redis: answered at once, each id on one backend (its hash owner).
    let mut owners = BTreeMap::new();
    for round in 0..3 {
        for k in 0..9 {
            let id = format!("early-{k}");
            let home = home_of(port, &id).await;
            assert_eq!(
                owners.entry(id.clone()).or_insert_with(|| home.clone()),
                &home,
                "{id} moved (round {round})"
            );
        }
    }
    assert!(metric(&gw, "switchyard_session_store_errors_total", &[]).await > 0.0);

    // Redis arrives: pins are read from it without a gateway restart.
    redis.spawn();
    let moved: Vec<(String, usize)> = (0..9)
        .map(|k| {
            let id = format!("early-{k}");
            let owner = backends
                .iter()
                .position(|b| b.name() == owners[&id])
                .unwrap();
            let target = (owner + 1) % 3;
            redis.pin(&id, &backends[target].addr_string());
            (id, target)
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut following = 0;
        for (id, target) in &moved {
            following += usize::from(home_of(port, id).await == backends[*target].name());
        }
        if following == moved.len() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "only {following} of {} ids follow their pins once Redis is up",
            moved.len()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A Redis Cluster of three masters on loopback, started for one test.
struct RedisCluster {
    nodes: Vec<Child>,
    ports: Vec<u16>,
    _dir: TempDir,
}

impl RedisCluster {
    fn start() -> RedisCluster {
        let dir = TempDir::new();
        let mut nodes = Vec::new();
        let mut ports = Vec::new();
        for i in 0..3 {
            // A cluster node also listens on port + 10000 (its cluster bus): both must be free.
            let port = loop {
                let p = free_port();
                if p <= 55_000 && std::net::TcpListener::bind(("127.0.0.1", p + 10_000)).is_ok() {
                    break p;
                }
            };
            let node_dir = dir.path().join(format!("node{i}"));
            std::fs::create_dir_all(&node_dir).unwrap();
            let child = Command::new("redis-server")
                .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                .args(["--save", "", "--appendonly", "no"])
                .args([
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    "nodes.conf",
                ])
                .args(["--cluster-node-timeout", "5000"])
                .arg("--dir")
                .arg(&node_dir)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("start redis-server");
            nodes.push(child);
            ports.push(port);
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        for &p in &ports {
            while !ping(p) {
                assert!(
                    Instant::now() < deadline,
                    "cluster node {p} did not come up"
                );
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        let addrs: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
        let out = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addrs)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .expect("redis-cli --cluster create");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let deadline = Instant::now() + Duration::from_secs(15);
        for p in &ports {
            loop {
                let info = Command::new("redis-cli")
                    .args(["-p", &p.to_string(), "cluster", "info"])
                    .output()
                    .expect("redis-cli cluster info");
                if String::from_utf8_lossy(&info.stdout).contains("cluster_state:ok") {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "the cluster never reached state ok"
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        RedisCluster {
            nodes,
            ports,
            _dir: dir,
        }
    }

    /// Pins `session` of upstream `app` to `addr`, through any node (following MOVED).
    fn pin(&self, session: &str, addr: &str) {
        let key = format!("switchyard:affinity:app:{session}");
        let out = Command::new("redis-cli")
            .args([
                "-c",
                "-p",
                &self.ports[0].to_string(),
                "SET",
                &key,
                addr,
                "EX",
                "600",
            ])
            .output()
            .expect("redis-cli SET");
        assert!(String::from_utf8_lossy(&out.stdout).contains("OK"));
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for child in &mut self.nodes {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_gateways_sharing_a_redis_cluster_agree() {
    if !redis_available() {
        return;
    }
    let cluster = RedisCluster::start();
    let backends = three_backends().await;
    let refs: Vec<&Backend> = backends.iter().collect();
    let nodes: Vec<String> = cluster
        .ports
        .iter()
        .map(|p| format!("\"redis://127.0.0.1:{p}\""))
        .collect();
    let rest = sticky_rest(
        &refs,
        "{ kind = \"session\", cookie = \"SESSION\", ttl = \"10m\" }",
        &format!(
            "[session_store]\nkind = \"redis\"\nnodes = [{}]\ntimeout = \"200ms\"\n",
            nodes.join(", ")
        ),
    );
    let a = Gateway::start_simple("", &rest).await;
    let b = Gateway::start_simple("", &rest).await;
    // Pins written into the cluster (keys spread over its three masters) are followed by
    // both gateways, whatever the hash fallback would have chosen.
    for k in 0..9 {
        let id = format!("cluster-{k}");
        cluster.pin(&id, &backends[k % 3].addr_string());
    }
    for k in 0..9 {
        let id = format!("cluster-{k}");
        let want = backends[k % 3].name();
        let mut got_a = String::new();
        // The store connects on first use; give the cluster connection a moment.
        for _ in 0..50 {
            got_a = home_of(a.port(), &id).await;
            if got_a == want {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(got_a, want, "{id} via gateway A");
        let mut got_b = String::new();
        for _ in 0..50 {
            got_b = home_of(b.port(), &id).await;
            if got_b == want {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(got_b, want, "{id} via gateway B");
    }
}
