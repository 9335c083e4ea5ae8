//! Every balancing algorithm through the real gateway, with real backends (round-robin and
//! weighted-round-robin are in `balancing.rs`): the load-aware ones steer away from a
//! backend holding slow requests or answering slowly, the hash ones keep each key on one
//! backend (and consistent-hash moves only the new backend's share of keys on a reload),
//! the random ones follow the weights, and resource-based follows the backends' load
//! reports.
//!
//! Slow requests are held with a delay on the backend and checked to be still in flight
//! when the assertions run; no assertion depends on how fast the machine is.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::time::{Duration, Instant};

use switchyard_tests::load_backend::LoadBackend;
use switchyard_tests::{
    request_head, route, simple_config, Backend, Behavior, Client, Gateway, Response,
};
use tokio::task::JoinHandle;

/// How long a held request waits at its backend: long enough for the checks that follow
/// it, short enough to keep every test well under 10 s.
const HOLD: Duration = Duration::from_secs(5);

/// `METHOD path` on the admin listener: the status and the body.
async fn admin(port: u16, method: &str, path: &str) -> (u16, String) {
    let mut c = Client::connect(port).await;
    c.send(format!(
        "{method} {path} HTTP/1.1\r\nHost: admin\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    ))
    .await;
    let r = c.read_response().await;
    (r.status, r.text())
}

/// Drain (`"drain"`) or re-enable (`"enable"`) a backend of upstream `pool`.
async fn set_backend(gw: &Gateway, addr: &str, action: &str) {
    let path = format!("/admin/upstreams/pool/backends/{addr}/{action}");
    let (status, body) = admin(gw.admin_port(), "POST", &path).await;
    assert_eq!(status, 200, "{action} {addr}: {body}");
}

/// The gateway's count of requests in flight to backend `addr` of upstream `pool`.
async fn active_requests(gw: &Gateway, addr: &str) -> u64 {
    let (status, body) = admin(gw.admin_port(), "GET", "/admin/upstreams").await;
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    v["upstreams"]
        .as_array()
        .and_then(|us| us.iter().find(|u| u["name"] == "pool"))
        .and_then(|u| u["backends"].as_array())
        .and_then(|bs| bs.iter().find(|b| b["addr"] == addr))
        .and_then(|b| b["active_requests"].as_u64())
        .unwrap_or_else(|| panic!("no backend {addr} in upstream pool: {v}"))
}

/// The admin view of the upstreams (for failure messages).
async fn upstreams(gw: &Gateway) -> String {
    admin(gw.admin_port(), "GET", "/admin/upstreams").await.1
}

/// Polls `check` every 20 ms until it holds; panics with `what` after `within`.
async fn wait_until<F, Fut>(within: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let start = Instant::now();
    loop {
        if check().await {
            return;
        }
        assert!(start.elapsed() < within, "not within {within:?}: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Sends `GET path` on its own connection in the background, for a response that takes
/// up to [`HOLD`].
fn hold(port: u16, path: &str) -> JoinHandle<Response> {
    let raw = request_head("GET", path, "lb.test", &[("Connection", "close")]);
    tokio::spawn(async move {
        let mut c = Client::connect(port).await;
        c.set_timeout(HOLD + Duration::from_secs(5));
        c.send(raw).await;
        c.read_response().await
    })
}

/// The held requests must still be in flight: otherwise the test checked nothing.
fn still_held(held: &[JoinHandle<Response>]) {
    assert!(
        held.iter().all(|h| !h.is_finished()),
        "a held request finished before the checks were over: the machine is too slow for \
         this test to mean anything"
    );
}

/// Waits for the held requests and checks they were answered by `name`.
async fn release(held: Vec<JoinHandle<Response>>, name: &str) {
    for h in held {
        let r = h.await.expect("held request task");
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.text(), name);
    }
}

/// `GET path` over a keep-alive connection, with `x-user: key` when given; the body.
async fn ask(c: &mut Client, path: &str, key: Option<&str>) -> String {
    let extra: Vec<(&str, &str)> = key.map(|k| ("x-user", k)).into_iter().collect();
    c.send(request_head("GET", path, "lb.test", &extra)).await;
    let r = c.read_response().await;
    assert_eq!(r.status, 200, "{}", r.text());
    r.text()
}

/// `n` sequential requests, each on its own connection; how many each backend answered.
async fn tally(gw: &Gateway, path: &str, n: usize) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for _ in 0..n {
        let r = gw.get("lb.test", path).await;
        assert_eq!(r.status, 200, "{}", r.text());
        *counts.entry(r.text()).or_insert(0) += 1;
    }
    counts
}

fn count(counts: &HashMap<String, usize>, name: &str) -> usize {
    counts.get(name).copied().unwrap_or(0)
}

/// An upstream `pool` with this algorithm over `(addr, weight)` backends, `extra` lines,
/// and a route sending everything to it.
fn pool(algorithm: &str, backends: &[(String, u32)], extra: &str) -> String {
    let list: Vec<String> = backends
        .iter()
        .map(|(addr, w)| format!("  {{ addr = \"{addr}\", weight = {w} }},"))
        .collect();
    format!(
        "[[upstream]]\nname = \"pool\"\nalgorithm = \"{algorithm}\"\nbackends = [\n{}\n]\n{extra}\n\n{}",
        list.join("\n"),
        route("all", "pool", "path_prefix = \"/\"")
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_connections_avoids_the_backend_holding_slow_requests() {
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);
    let (aa, ba) = (a.addr_string(), b.addr_string());
    let gw = Gateway::start_simple(
        "",
        &pool("least-connections", &[(aa.clone(), 1), (ba.clone(), 1)], ""),
    )
    .await;
    // Idle, the backends take turns.
    let idle = tally(&gw, "/", 6).await;
    assert!(count(&idle, "a") >= 2 && count(&idle, "b") >= 2, "{idle:?}");

    // Three slow requests held on a (b drained meanwhile so that they all go there).
    a.set(Behavior::Delay(HOLD));
    set_backend(&gw, &ba, "drain").await;
    let held: Vec<_> = (0..3).map(|_| hold(gw.port(), "/slow")).collect();
    let before = a.request_count();
    wait_until(Duration::from_secs(4), "3 requests held on a", || async {
        a.request_count() >= before + 3
    })
    .await;
    wait_until(Duration::from_secs(2), "3 in flight to a", || async {
        active_requests(&gw, &aa).await == 3
    })
    .await;
    set_backend(&gw, &ba, "enable").await;

    // Every new request goes to b (one to a would also take HOLD).
    let next = tally(&gw, "/", 20).await;
    still_held(&held);
    assert!(count(&next, "b") >= 17, "{next:?}");
    release(held, "a").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weighted_least_connections_weighs_what_is_in_flight() {
    let a = LoadBackend::start("a", 0.0, 0.0).await;
    let b = LoadBackend::start("b", 0.0, 0.0).await;
    a.set_delay("/slow", HOLD);
    b.set_delay("/slow", HOLD);
    let (aa, ba) = (a.addr_string(), b.addr_string());
    let gw = Gateway::start_simple(
        "",
        &pool(
            "weighted-least-connections",
            &[(aa.clone(), 4), (ba.clone(), 1)],
            "",
        ),
    )
    .await;
    // Idle (serial requests), the weights decide: 4 to 1.
    let idle = tally(&gw, "/", 10).await;
    assert!(
        (6..=9).contains(&count(&idle, "a")) && count(&idle, "b") >= 1,
        "{idle:?}"
    );

    // Two held on a (weight 4), one on b (weight 1): a is the less loaded per unit of
    // weight (2/4 < 1/1) although it has more in flight.
    let mut held = Vec::new();
    set_backend(&gw, &ba, "drain").await;
    held.extend((0..2).map(|_| hold(gw.port(), "/slow")));
    wait_until(Duration::from_secs(4), "2 requests held on a", || async {
        a.count("/slow") >= 2
    })
    .await;
    set_backend(&gw, &ba, "enable").await;
    set_backend(&gw, &aa, "drain").await;
    held.push(hold(gw.port(), "/slow"));
    wait_until(Duration::from_secs(4), "1 request held on b", || async {
        b.count("/slow") >= 1
    })
    .await;
    set_backend(&gw, &aa, "enable").await;
    assert_eq!(
        (
            active_requests(&gw, &aa).await,
            active_requests(&gw, &ba).await
        ),
        (2, 1)
    );
    let next = tally(&gw, "/", 8).await;
    still_held(&held);
    assert_eq!(count(&next, "a"), 8, "weights count: {next:?}");

    // Four more on a (6/4 > 1/1): now new requests go to b.
    set_backend(&gw, &ba, "drain").await;
    held.extend((0..4).map(|_| hold(gw.port(), "/slow")));
    wait_until(Duration::from_secs(4), "6 requests held on a", || async {
        a.count("/slow") >= 6
    })
    .await;
    set_backend(&gw, &ba, "enable").await;
    let next = tally(&gw, "/", 8).await;
    still_held(&held);
    assert_eq!(count(&next, "b"), 8, "steered away from a: {next:?}");
    for h in held {
        let r = h.await.expect("held request task");
        assert_eq!(r.status, 200);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_response_time_moves_traffic_away_from_a_slow_backend() {
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);
    let gw = Gateway::start_simple(
        "",
        &pool(
            "least-response-time",
            &[(a.addr_string(), 1), (b.addr_string(), 1)],
            "",
        ),
    )
    .await;
    let slow = Duration::from_millis(500);
    // a slow, b fast: after at most a probe or two, everything goes to b.
    a.set(Behavior::Delay(slow));
    let first = tally(&gw, "/", 30).await;
    // (Round-robin would send 15 to each; a loaded machine may make b look slow once.)
    assert!(
        count(&first, "a") <= 6,
        "{first:?} {}",
        upstreams(&gw).await
    );

    // Now b slows down and a recovers: the traffic moves to a.
    a.set(Behavior::Ok);
    b.set(Behavior::Delay(slow));
    let second = tally(&gw, "/", 30).await;
    assert!(
        count(&second, "b") <= 6,
        "{second:?} {}",
        upstreams(&gw).await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ip_hash_keeps_each_key_on_one_backend() {
    let backends = [
        Backend::start("a").await,
        Backend::start("b").await,
        Backend::start("c").await,
    ];
    let list: Vec<(String, u32)> = backends.iter().map(|b| (b.addr_string(), 1)).collect();
    // Two upstreams over the same backends: one keyed by a header, one by the client
    // address (always 127.0.0.1 here).
    let by_ip = pool("ip-hash", &list, "")
        .replace("name = \"pool\"", "name = \"by-ip\"")
        .replace(
            "[[route]]\nname = \"all\"\npath_prefix = \"/\"\nupstream = \"pool\"",
            "[[route]]\nname = \"ip\"\npath_prefix = \"/ip\"\nupstream = \"by-ip\"",
        );
    let text = by_ip + &pool("ip-hash", &list, "hash_key = \"header:x-user\"");
    let gw = Gateway::start_simple("", &text).await;

    let mut c = Client::connect(gw.port()).await;
    let mut owner: HashMap<String, String> = HashMap::new();
    for round in 0..3 {
        for k in 0..30 {
            let key = format!("user-{k}");
            let got = ask(&mut c, "/", Some(&key)).await;
            if round == 0 {
                owner.insert(key, got);
            } else {
                assert_eq!(owner[&key], got, "key {key} moved");
            }
        }
    }
    let used: HashSet<&String> = owner.values().collect();
    assert_eq!(used.len(), 3, "30 keys over 3 backends: {owner:?}");

    // Without a hash key, the client address decides: one backend for all.
    let by_address: HashSet<String> = {
        let mut seen = HashSet::new();
        for _ in 0..10 {
            seen.insert(gw.get("lb.test", "/ip").await.text());
        }
        seen
    };
    assert_eq!(by_address.len(), 1, "{by_address:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consistent_hash_moves_only_the_new_backends_share_on_reload() {
    let backends = [
        Backend::start("a").await,
        Backend::start("b").await,
        Backend::start("c").await,
        Backend::start("d").await,
    ];
    let list: Vec<(String, u32)> = backends.iter().map(|b| (b.addr_string(), 1)).collect();
    let key = "hash_key = \"header:x-user\"";
    let frame = simple_config("", "");
    let gw = Gateway::start(&(frame.clone() + &pool("consistent-hash", &list[..3], key))).await;

    const KEYS: usize = 200;
    let keys: Vec<String> = (0..KEYS).map(|k| format!("user-{k}")).collect();
    let mut c = Client::connect(gw.port()).await;
    let mut before = Vec::new();
    for k in &keys {
        before.push(ask(&mut c, "/", Some(k)).await);
    }
    // Stable: the same keys again land where they did.
    for (k, owner) in keys.iter().zip(&before).take(50) {
        assert_eq!(&ask(&mut c, "/", Some(k)).await, owner, "key {k} moved");
    }
    // Spread: each backend owns a fair share (a third expected; at least 15 %).
    for name in ["a", "b", "c"] {
        let n = before.iter().filter(|o| *o == name).count();
        assert!(n >= KEYS * 15 / 100, "{name} owns {n} of {KEYS} keys");
    }

    // A reload adds d: about a quarter of the keys move, all of them to d.
    std::fs::write(
        gw.config_path(),
        frame + &pool("consistent-hash", &list, key),
    )
    .expect("rewrite the configuration");
    let (status, body) = admin(gw.admin_port(), "POST", "/admin/reload").await;
    assert_eq!(status, 200, "{body}");
    let mut c = Client::connect(gw.port()).await;
    let mut moved = 0;
    for (k, owner) in keys.iter().zip(&before) {
        let now = ask(&mut c, "/", Some(k)).await;
        if &now != owner {
            assert_eq!(
                now, "d",
                "key {k} moved from {owner} to {now}, not to the new backend"
            );
            moved += 1;
        }
    }
    // 1/4 of 200 = 50 expected.
    assert!(
        (KEYS / 10..=KEYS * 45 / 100).contains(&moved),
        "{moved} of {KEYS} keys moved"
    );
}

/// `n` sequential requests over fresh connections must split `a`:`b` about 3:1.
async fn assert_three_to_one(gw: &Gateway, counts: &HashMap<String, usize>, n: usize) {
    let a = count(counts, "a");
    let b = count(counts, "b");
    assert_eq!(a + b, n, "{counts:?}");
    // Expected 225 of 300 (standard deviation 7.5): bounds about 6 deviations out.
    if !(n * 57 / 100..=n * 90 / 100).contains(&a) {
        panic!(
            "a got {a} of {n}, expected about 3/4: {counts:?}; the gateway's view: {}",
            upstreams(gw).await
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_follows_the_weights() {
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);
    let gw = Gateway::start_simple(
        "",
        &pool("random", &[(a.addr_string(), 3), (b.addr_string(), 1)], ""),
    )
    .await;
    let counts = tally(&gw, "/", 300).await;
    assert_three_to_one(&gw, &counts, 300).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn power_of_two_choices_follows_weights_and_avoids_load() {
    let a = LoadBackend::start("a", 0.0, 0.0).await;
    let b = LoadBackend::start("b", 0.0, 0.0).await;
    a.set_delay("/slow", HOLD);
    let (aa, ba) = (a.addr_string(), b.addr_string());
    let gw = Gateway::start_simple(
        "",
        &pool(
            "power-of-two-choices",
            &[(aa.clone(), 3), (ba.clone(), 1)],
            "",
        ),
    )
    .await;
    // Nothing in flight at each pick: the first (weighted) draw wins.
    let counts = tally(&gw, "/", 300).await;
    assert_three_to_one(&gw, &counts, 300).await;

    // Four requests held on a (weight 3): 4/3 in flight per unit of weight against b's 0
    // (or 1, when the previous request's end is not counted yet), so a new request goes to
    // b whenever b is drawn. With weights 3:1 a pick's 16 draws all land on a (and a is
    // taken) with probability 0.75^16, about 1 %: allow for a few of those.
    set_backend(&gw, &ba, "drain").await;
    let held: Vec<_> = (0..4).map(|_| hold(gw.port(), "/slow")).collect();
    wait_until(Duration::from_secs(4), "4 requests held on a", || async {
        a.count("/slow") >= 4
    })
    .await;
    set_backend(&gw, &ba, "enable").await;
    let next = tally(&gw, "/", 20).await;
    still_held(&held);
    assert!(count(&next, "b") >= 17, "{next:?}");
    release(held, "a").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resource_based_prefers_the_less_loaded_backend() {
    let busy = LoadBackend::start("busy", 0.9, 0.9).await;
    let idle = LoadBackend::start("idle", 0.1, 0.1).await;
    let gw = Gateway::start_simple(
        "",
        &pool(
            "resource-based",
            &[(busy.addr_string(), 1), (idle.addr_string(), 1)],
            "resource = { path = \"/load\", interval = \"200ms\", max_age = \"1s\" }",
        ),
    )
    .await;
    // Two polls each: the first one's report is stored.
    let polled = |n: usize| {
        let (x, y) = (&busy, &idle);
        move || {
            let ok = x.count("/load") >= n && y.count("/load") >= n;
            async move { ok }
        }
    };
    wait_until(Duration::from_secs(3), "both backends polled", polled(2)).await;
    let counts = tally(&gw, "/", 40).await;
    assert_eq!(count(&counts, "idle"), 40, "{counts:?}");

    // The loads swap: so does the traffic, from the next report on.
    busy.set_load(0.1, 0.1);
    idle.set_load(1.0, 0.95);
    let n = busy.count("/load").max(idle.count("/load"));
    wait_until(Duration::from_secs(3), "both polled again", polled(n + 2)).await;
    let counts = tally(&gw, "/", 40).await;
    assert_eq!(count(&counts, "busy"), 40, "{counts:?}");

    // Reports stop (the load endpoint fails): once they are older than max_age, both
    // count as half loaded and the backends take turns (least connections).
    busy.set_path("/load", 503, "text/plain", b"down".to_vec());
    idle.set_path("/load", 503, "text/plain", b"down".to_vec());
    wait_until(Duration::from_secs(4), "traffic shared again", || async {
        let counts = tally(&gw, "/", 4).await;
        count(&counts, "busy") > 0 && count(&counts, "idle") > 0
    })
    .await;
}
