//! The GSLB responder (`[gslb]`) against the real binary: zone answers, strategies with real
//! health checks and load reports on 127.0.0.1 backends, ECS, garbage datagrams, admin,
//! metrics and reload. Site addresses in answers are documentation addresses (data only);
//! every check and load URL points at a test backend on 127.0.0.1.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::{RData, RecordType};
use switchyard_tests::dns::{
    addrs, ask_tcp, ask_udp, ecs_of, query_message, tcp_raw, udp_raw, Ask,
};
use switchyard_tests::{
    check_config, free_port, line_col, Backend, Behavior, Client, Gateway, TempDir,
};

const ZONE: &str = "gslb.example.com";

async fn admin(port: u16, method: &str, path: &str) -> (u16, String) {
    let mut c = Client::connect(port).await;
    c.send(format!(
        "{method} {path} HTTP/1.1\r\nHost: admin\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    ))
    .await;
    let r = c.read_response().await;
    (r.status, r.text())
}

/// A configuration with only `[admin]` and `[gslb]` (no HTTP listener), `rest` after.
fn config(dns_port: u16, rest: &str) -> String {
    format!(
        "[server]\ngrace_period = \"1s\"\nthreads = 1\naccess_log = \"off\"\n\n[admin]\naddr = \"127.0.0.1:{}\"\n\n\
         [gslb]\naddr = \"127.0.0.1:{dns_port}\"\nzone = \"{ZONE}\"\nttl = \"30s\"\nnameservers = [\"ns1.example.com\", \"ns2.example.com\"]\n{rest}",
        free_port()
    )
}

fn http_check(b: &Backend) -> String {
    format!(
        "health_check = {{ kind = \"http\", url = \"http://{}/health\", interval = \"200ms\", timeout = \"1s\", fails = 1, passes = 1 }}",
        b.addr_string()
    )
}

/// Waits (20 s at most) until `name` answers over UDP with exactly `want`.
async fn wait_for_answer(port: u16, name: &str, want: &[&str], ask: &Ask) -> Message {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut last = Vec::new();
    while Instant::now() < deadline {
        let m = query_message(name, RecordType::A, ask);
        if let Some(bytes) = udp_raw(port, &m.to_vec().unwrap()).await {
            let reply = Message::from_vec(&bytes).unwrap();
            last = addrs(&reply);
            if last == want {
                return reply;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{name}: still {last:?} after 20 s, expected {want:?}");
}

const TWO_SITES: &str = r#"
[[gslb.site]]
name = "eu"
addrs = ["192.0.2.10", "2001:db8::10"]
cidrs = ["10.1.0.0/16", "127.0.0.0/8"]

[[gslb.site]]
name = "us"
addrs = ["192.0.2.20"]
cidrs = ["10.2.0.0/16", "10.2.3.0/24"]
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zone_answers() {
    let port = free_port();
    let mut many = String::from("[[gslb.site]]\nname = \"big\"\naddrs = [");
    for i in 1..=60 {
        many.push_str(&format!("\"198.51.100.{i}\", "));
    }
    many.push_str("]\n");
    let text = config(
        port,
        &format!(
            "{TWO_SITES}\n{many}\n[[gslb.name]]\nname = \"api\"\nsites = [\"eu\", \"us\"]\n\n\
             [[gslb.name]]\nname = \"v4.www\"\nsites = [\"us\"]\n\n[[gslb.name]]\nname = \"big\"\nsites = [\"big\"]\n"
        ),
    );
    let _gw = Gateway::start(&text).await;
    let none = Ask::default();
    wait_for_answer(port, "api.gslb.example.com.", &["192.0.2.10"], &none).await;

    // A and AAAA, authoritative, names case-insensitive.
    let m = ask_udp(port, "ApI.GsLb.ExAmPlE.cOm.", RecordType::A, &none).await;
    assert_eq!(m.response_code(), ResponseCode::NoError);
    assert!(m.authoritative());
    assert_eq!(addrs(&m), ["192.0.2.10"]);
    assert_eq!(m.answers()[0].ttl(), 30);
    let m = ask_udp(port, "api.gslb.example.com.", RecordType::AAAA, &none).await;
    assert_eq!(addrs(&m), ["2001:db8::10"]);

    // Apex: SOA and NS.
    let m = ask_udp(port, "gslb.example.com.", RecordType::SOA, &none).await;
    assert!(m.authoritative());
    assert!(
        matches!(m.answers()[0].data(), RData::SOA(soa) if soa.mname().to_ascii() == "ns1.example.com.")
    );
    let m = ask_udp(port, "gslb.example.com.", RecordType::NS, &none).await;
    let mut ns: Vec<String> = m
        .answers()
        .iter()
        .filter_map(|r| match r.data() {
            RData::NS(n) => Some(n.0.to_ascii()),
            _ => None,
        })
        .collect();
    ns.sort();
    assert_eq!(ns, ["ns1.example.com.", "ns2.example.com."]);

    // NXDOMAIN with the SOA in authority.
    let m = ask_udp(port, "nope.gslb.example.com.", RecordType::A, &none).await;
    assert_eq!(m.response_code(), ResponseCode::NXDomain);
    assert!(m.authoritative() && m.answers().is_empty());
    assert!(matches!(m.name_servers()[0].data(), RData::SOA(_)));
    // NODATA: a site without IPv6, an unsupported type, an empty non-terminal.
    for (name, t) in [
        ("v4.www.gslb.example.com.", RecordType::AAAA),
        ("api.gslb.example.com.", RecordType::MX),
        ("www.gslb.example.com.", RecordType::A),
    ] {
        let m = ask_udp(port, name, t, &none).await;
        assert_eq!(m.response_code(), ResponseCode::NoError, "{name} {t}");
        assert!(m.answers().is_empty(), "{name} {t}");
        assert!(
            matches!(m.name_servers()[0].data(), RData::SOA(_)),
            "{name} {t}"
        );
    }
    // REFUSED outside the zone.
    let m = ask_udp(port, "example.org.", RecordType::A, &none).await;
    assert_eq!(m.response_code(), ResponseCode::Refused);
    assert!(m.answers().is_empty());

    // 60 addresses do not fit 512 bytes: TC over UDP, complete over TCP and with EDNS.
    let m = ask_udp(port, "big.gslb.example.com.", RecordType::A, &none).await;
    assert!(m.truncated(), "UDP answer past 512 bytes is truncated");
    assert!(m.answers().is_empty());
    let m = ask_tcp(port, "big.gslb.example.com.", RecordType::A, &none).await;
    assert!(!m.truncated());
    assert_eq!(addrs(&m).len(), 60);
    let edns = Ask {
        edns: Some(4096),
        ecs: None,
    };
    let m = ask_udp(port, "big.gslb.example.com.", RecordType::A, &edns).await;
    assert!(!m.truncated());
    assert_eq!(addrs(&m).len(), 60);
    assert!(m.extensions().is_some(), "EDNS answered with OPT");

    // A header followed by garbage: FORMERR with the same id.
    let mut bad = query_message("api.gslb.example.com.", RecordType::A, &none)
        .to_vec()
        .unwrap();
    bad.truncate(12);
    bad[5] = 1; // one question, none present
    bad.extend_from_slice(&[0xff; 7]);
    let reply = udp_raw(port, &bad).await.expect("FORMERR answer");
    let m = Message::from_vec(&reply).unwrap();
    assert_eq!(m.response_code(), ResponseCode::FormErr);
    assert_eq!(m.id(), u16::from_be_bytes([bad[0], bad[1]]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_never_stops_it() {
    let port = free_port();
    let text = config(
        port,
        &format!("{TWO_SITES}\n[[gslb.name]]\nname = \"api\"\nsites = [\"eu\"]\n"),
    );
    let _gw = Gateway::start(&text).await;
    wait_for_answer(
        port,
        "api.gslb.example.com.",
        &["192.0.2.10"],
        &Ask::default(),
    )
    .await;
    let good = query_message("api.gslb.example.com.", RecordType::A, &Ask::default())
        .to_vec()
        .unwrap();
    // A TCP client that sends half a message and stalls does not hold others up.
    let mut stalled = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut stalled, &[0, 40, 1, 2])
        .await
        .unwrap();
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let mut seed: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for i in 0..10_000 {
        let datagram: Vec<u8> = if i % 2 == 0 {
            // Random bytes, 0 to 599 of them.
            let n = (next() % 600) as usize;
            (0..n).map(|_| next() as u8).collect()
        } else {
            // A valid query cut short, or with random bytes flipped.
            let mut d = good.clone();
            if i % 4 == 1 {
                d.truncate((next() as usize) % d.len());
            } else {
                let at = (next() as usize) % d.len();
                d[at] ^= next() as u8 | 1;
            }
            d
        };
        let _ = socket.send_to(&datagram, ("127.0.0.1", port)).await;
        if i % 500 == 0 {
            tokio::task::yield_now().await;
        }
    }
    // Still answering, over UDP and TCP.
    let m = wait_for_answer(
        port,
        "api.gslb.example.com.",
        &["192.0.2.10"],
        &Ask::default(),
    )
    .await;
    assert_eq!(m.response_code(), ResponseCode::NoError);
    let m = ask_tcp(
        port,
        "api.gslb.example.com.",
        RecordType::A,
        &Ask::default(),
    )
    .await;
    assert_eq!(addrs(&m), ["192.0.2.10"]);
    let reply = tcp_raw(port, &good).await.expect("TCP answer");
    assert!(Message::from_vec(&reply).is_ok());
    drop(stalled);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_follows_health_checks_and_fails_open() {
    let port = free_port();
    let a = Backend::start("a").await;
    let b = Backend::start("b").await;
    let text = config(
        port,
        &format!(
            "[[gslb.site]]\nname = \"first\"\naddrs = [\"192.0.2.1\"]\n{}\n\n\
             [[gslb.site]]\nname = \"second\"\naddrs = [\"192.0.2.2\"]\n{}\n\n\
             [[gslb.name]]\nname = \"api\"\nstrategy = \"failover\"\nsites = [\"first\", \"second\"]\n",
            http_check(&a),
            http_check(&b)
        ),
    );
    let gw = Gateway::start(&text).await;
    let none = Ask::default();
    wait_for_answer(port, "api.gslb.example.com.", &["192.0.2.1"], &none).await;
    a.set(Behavior::Status(503));
    wait_for_answer(port, "api.gslb.example.com.", &["192.0.2.2"], &none).await;
    let (_, json) = admin(gw.admin_port(), "GET", "/admin/gslb").await;
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["sites"][0]["healthy"], false, "{v}");
    assert_eq!(v["names"][0]["answer"], "second", "{v}");
    // Back when it recovers.
    a.set(Behavior::Ok);
    wait_for_answer(port, "api.gslb.example.com.", &["192.0.2.1"], &none).await;
    // Every site down: answered as if all were healthy (the first), and counted.
    a.set(Behavior::Status(503));
    b.set(Behavior::Status(503));
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (_, json) = admin(gw.admin_port(), "GET", "/admin/gslb").await;
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        if v["sites"][0]["healthy"] == false && v["sites"][1]["healthy"] == false {
            break;
        }
        assert!(Instant::now() < deadline, "sites still up: {v}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let m = ask_udp(port, "api.gslb.example.com.", RecordType::A, &none).await;
    assert_eq!(addrs(&m), ["192.0.2.1"]);
    let (_, metrics) = admin(gw.admin_port(), "GET", "/metrics").await;
    let line = metrics
        .lines()
        .find(|l| l.starts_with("switchyard_gslb_fail_open_total{name=\"api\"}"))
        .unwrap_or_else(|| panic!("no fail-open counter:\n{metrics}"));
    assert!(!line.ends_with(" 0"), "{line}");
    assert!(
        metrics.contains("switchyard_gslb_site_healthy{site=\"first\"} 0"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn geo_by_ecs_source_address_and_geoip() {
    let port = free_port();
    let dir = TempDir::new();
    let db = switchyard_tests::mmdb::country_db(&[
        ("81.2.69.0".parse().unwrap(), 24, "DE", "EU"),
        ("203.0.113.0".parse().unwrap(), 24, "JP", "AS"),
    ]);
    let db_path = dir.path().join("country.mmdb");
    std::fs::write(&db_path, db).unwrap();
    let text = config(
        port,
        &format!(
            "geoip = \"{}\"\n{TWO_SITES}countries = [\"JP\"]\n\n\
             [[gslb.site]]\nname = \"de\"\naddrs = [\"192.0.2.30\"]\ncountries = [\"DE\"]\n\n\
             [[gslb.name]]\nname = \"api\"\nstrategy = \"geo\"\nsites = [\"us\", \"eu\", \"de\"]\n",
            db_path.display()
        ),
    );
    let _gw = Gateway::start(&text).await;
    let name = "api.gslb.example.com.";
    // The query's source (127.0.0.1) is in eu's 127.0.0.0/8.
    wait_for_answer(port, name, &["192.0.2.10"], &Ask::default()).await;
    let ecs = |ip: &str, prefix: u8| Ask {
        edns: Some(1232),
        ecs: Some((ip.parse().unwrap(), prefix)),
    };
    // ECS beats the source; the longest prefix wins; scope echoed.
    let m = ask_udp(port, name, RecordType::A, &ecs("10.2.3.0", 24)).await;
    assert_eq!(addrs(&m), ["192.0.2.20"]);
    let ip: IpAddr = "10.2.3.0".parse().unwrap();
    assert_eq!(ecs_of(&m), Some((ip, 24, 24)));
    let m = ask_udp(port, name, RecordType::A, &ecs("10.1.7.0", 24)).await;
    assert_eq!(addrs(&m), ["192.0.2.10"]);
    assert_eq!(ecs_of(&m).map(|e| e.2), Some(16), "scope = the matched /16");
    // The MaxMind database: Germany and Japan.
    let m = ask_udp(port, name, RecordType::A, &ecs("81.2.69.0", 24)).await;
    assert_eq!(addrs(&m), ["192.0.2.30"]);
    let m = ask_udp(port, name, RecordType::A, &ecs("203.0.113.0", 24)).await;
    assert_eq!(addrs(&m), ["192.0.2.20"], "JP is us's");
    // Unknown to every table: failover order (us first).
    let m = ask_udp(port, name, RecordType::A, &ecs("198.18.0.0", 15)).await;
    assert_eq!(addrs(&m), ["192.0.2.20"]);
    assert_eq!(ecs_of(&m).map(|e| e.1), Some(15));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latency_prefers_the_faster_site() {
    let port = free_port();
    let slow = Backend::start("slow").await;
    let fast = Backend::start("fast").await;
    slow.set(Behavior::Delay(Duration::from_millis(150)));
    let text = config(
        port,
        &format!(
            "[[gslb.site]]\nname = \"slow\"\naddrs = [\"192.0.2.1\"]\n{}\n\n\
             [[gslb.site]]\nname = \"fast\"\naddrs = [\"192.0.2.2\"]\n{}\n\n\
             [[gslb.name]]\nname = \"api\"\nstrategy = \"latency\"\nsites = [\"slow\", \"fast\"]\n",
            http_check(&slow),
            http_check(&fast)
        ),
    );
    let gw = Gateway::start(&text).await;
    // Both round trips measured (a site without one ranks last)...
    let deadline = Instant::now() + Duration::from_secs(20);
    let v = loop {
        let (_, json) = admin(gw.admin_port(), "GET", "/admin/gslb").await;
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        if v["sites"][0]["rtt_ms"].is_f64() && v["sites"][1]["rtt_ms"].is_f64() {
            break v;
        }
        assert!(Instant::now() < deadline, "no round trips measured: {v}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        v["sites"][0]["rtt_ms"].as_f64().unwrap() > v["sites"][1]["rtt_ms"].as_f64().unwrap(),
        "{v}"
    );
    // ...the faster one answers.
    let m = ask_udp(
        port,
        "api.gslb.example.com.",
        RecordType::A,
        &Ask::default(),
    )
    .await;
    assert_eq!(addrs(&m), ["192.0.2.2"]);
    // The slow one turns fast and the fast one slow: the answer follows.
    fast.set(Behavior::Delay(Duration::from_millis(300)));
    slow.set(Behavior::Ok);
    wait_for_answer(
        port,
        "api.gslb.example.com.",
        &["192.0.2.1"],
        &Ask::default(),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_prefers_the_less_loaded_site() {
    let port = free_port();
    let busy = Backend::start("busy").await;
    let idle = Backend::start("idle").await;
    let report = |x: f64| Behavior::Body(Arc::new(format!("{{\"load\": {x}}}").into_bytes()));
    busy.set(report(0.9));
    idle.set(report(0.1));
    let load = |b: &Backend| {
        format!(
            "load = {{ url = \"http://{}/load\", interval = \"200ms\" }}",
            b.addr_string()
        )
    };
    let text = config(
        port,
        &format!(
            "[[gslb.site]]\nname = \"busy\"\naddrs = [\"192.0.2.1\"]\n{}\n\n\
             [[gslb.site]]\nname = \"idle\"\naddrs = [\"192.0.2.2\"]\n{}\n\n\
             [[gslb.name]]\nname = \"api\"\nstrategy = \"load\"\nsites = [\"busy\", \"idle\"]\n",
            load(&busy),
            load(&idle)
        ),
    );
    let gw = Gateway::start(&text).await;
    wait_for_answer(
        port,
        "api.gslb.example.com.",
        &["192.0.2.2"],
        &Ask::default(),
    )
    .await;
    let (_, json) = admin(gw.admin_port(), "GET", "/admin/gslb").await;
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["sites"][1]["load"], 0.1, "{v}");
    busy.set(report(0.05));
    wait_for_answer(
        port,
        "api.gslb.example.com.",
        &["192.0.2.1"],
        &Ask::default(),
    )
    .await;
    // A site whose reports stop (its endpoint fails) turns unknown, ranked after known ones.
    busy.set(Behavior::Status(500));
    wait_for_answer(
        port,
        "api.gslb.example.com.",
        &["192.0.2.2"],
        &Ask::default(),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weighted_spreads_in_proportion_drain_and_metrics() {
    let port = free_port();
    let text = config(
        port,
        "[[gslb.site]]\nname = \"one\"\naddrs = [\"192.0.2.1\"]\nweight = 1\n\n\
         [[gslb.site]]\nname = \"three\"\naddrs = [\"192.0.2.3\"]\nweight = 3\n\n\
         [[gslb.name]]\nname = \"api\"\nstrategy = \"weighted\"\nsites = [\"one\", \"three\"]\n",
    );
    let gw = Gateway::start(&text).await;
    let name = "api.gslb.example.com.";
    let deadline = Instant::now() + Duration::from_secs(20);
    while udp_raw(
        port,
        &query_message(name, RecordType::A, &Ask::default())
            .to_vec()
            .unwrap(),
    )
    .await
    .is_none()
    {
        assert!(Instant::now() < deadline, "no answer");
    }
    let n = 800;
    let mut threes = 0;
    for _ in 0..n {
        let m = ask_udp(port, name, RecordType::A, &Ask::default()).await;
        if addrs(&m) == ["192.0.2.3"] {
            threes += 1;
        }
    }
    // Expected 600 of 800 (sd ~12): well inside 520..680.
    assert!((520..680).contains(&threes), "{threes} of {n}");

    // Drain takes a site out of every answer; enable brings it back.
    let (status, body) = admin(gw.admin_port(), "POST", "/admin/gslb/sites/three/drain").await;
    assert_eq!(status, 200, "{body}");
    for _ in 0..50 {
        let m = ask_udp(port, name, RecordType::A, &Ask::default()).await;
        assert_eq!(addrs(&m), ["192.0.2.1"]);
    }
    let (_, json) = admin(gw.admin_port(), "GET", "/admin/gslb").await;
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["sites"][1]["draining"], true, "{v}");
    assert_eq!(v["names"][0]["strategy"], "weighted", "{v}");
    let (status, _) = admin(gw.admin_port(), "POST", "/admin/gslb/sites/three/enable").await;
    assert_eq!(status, 200);
    let (status, _) = admin(gw.admin_port(), "POST", "/admin/gslb/sites/nope/drain").await;
    assert_eq!(status, 404);
    let mut seen_three = false;
    for _ in 0..100 {
        let m = ask_udp(port, name, RecordType::A, &Ask::default()).await;
        seen_three |= addrs(&m) == ["192.0.2.3"];
    }
    assert!(seen_three);

    // Metrics: queries by name, type and rcode; answers by site.
    let _ = ask_udp(
        port,
        "nope.gslb.example.com.",
        RecordType::A,
        &Ask::default(),
    )
    .await;
    let (_, metrics) = admin(gw.admin_port(), "GET", "/metrics").await;
    let value = |prefix: &str| -> u64 {
        metrics
            .lines()
            .find(|l| l.starts_with(prefix))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {prefix} in\n{metrics}"))
    };
    assert!(
        value("switchyard_gslb_queries_total{name=\"api\",qtype=\"A\",rcode=\"NOERROR\"}") >= 950
    );
    assert_eq!(
        value("switchyard_gslb_queries_total{name=\"none\",qtype=\"A\",rcode=\"NXDOMAIN\"}"),
        1
    );
    let one = value("switchyard_gslb_answers_total{name=\"api\",site=\"one\"}");
    let three = value("switchyard_gslb_answers_total{name=\"api\",site=\"three\"}");
    assert!(one + three >= 950 && three > one, "{one} {three}");
    assert!(metrics.contains("switchyard_gslb_site_healthy{site=\"one\"} 1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_changes_names_and_moves_the_address() {
    let port = free_port();
    let sites = "[[gslb.site]]\nname = \"a\"\naddrs = [\"192.0.2.1\"]\n\n[[gslb.site]]\nname = \"b\"\naddrs = [\"192.0.2.2\"]\n\n";
    let text = config(
        port,
        &format!("{sites}[[gslb.name]]\nname = \"api\"\nsites = [\"a\", \"b\"]\n"),
    );
    let gw = Gateway::start(&text).await;
    wait_for_answer(
        port,
        "api.gslb.example.com.",
        &["192.0.2.1"],
        &Ask::default(),
    )
    .await;
    // SIGHUP: a new order and a new name.
    let changed = text.replace("sites = [\"a\", \"b\"]", "sites = [\"b\", \"a\"]")
        + "\n[[gslb.name]]\nname = \"web\"\nsites = [\"a\"]\n";
    std::fs::write(gw.config_path(), &changed).unwrap();
    gw.signal("HUP");
    wait_for_answer(
        port,
        "api.gslb.example.com.",
        &["192.0.2.2"],
        &Ask::default(),
    )
    .await;
    wait_for_answer(
        port,
        "web.gslb.example.com.",
        &["192.0.2.1"],
        &Ask::default(),
    )
    .await;
    // A bad reload keeps the running configuration.
    std::fs::write(
        gw.config_path(),
        changed.replace("sites = [\"a\"]", "sites = [\"zz\"]"),
    )
    .unwrap();
    let (status, body) = admin(gw.admin_port(), "POST", "/admin/reload").await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("site `zz`"), "{body}");
    // POST /admin/reload moving the responder to another port.
    let port2 = free_port();
    std::fs::write(
        gw.config_path(),
        changed.replace(
            &format!("127.0.0.1:{port}\""),
            &format!("127.0.0.1:{port2}\""),
        ),
    )
    .unwrap();
    let (status, body) = admin(gw.admin_port(), "POST", "/admin/reload").await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("gslb.addr changed"), "{body}");
    wait_for_answer(
        port2,
        "web.gslb.example.com.",
        &["192.0.2.1"],
        &Ask::default(),
    )
    .await;
    // The old address stops answering.
    let deadline = Instant::now() + Duration::from_secs(20);
    let q = query_message("web.gslb.example.com.", RecordType::A, &Ask::default())
        .to_vec()
        .unwrap();
    while udp_raw(port, &q).await.is_some() {
        assert!(Instant::now() < deadline, "the old address still answers");
    }
}

#[test]
fn configuration_errors_name_file_line_and_column() {
    let text = format!(
        "[admin]\naddr = \"127.0.0.1:{}\"\n\n[gslb]\naddr = \"127.0.0.1:5353\"\nzone = \"{ZONE}\"\n\n\
         [[gslb.site]]\nname = \"eu\"\naddrs = [\"192.0.2.1\", \"not-an-ip\"]\ncidrs = [\"10.0.0.0/33\"]\n\n\
         [[gslb.name]]\nname = \"api.other.org.\"\nsites = [\"eu\"]\n\n\
         [[gslb.name]]\nname = \"web\"\nstrategy = \"fastest\"\nsites = [\"mars\"]\n",
        free_port()
    );
    let check = check_config(&text);
    assert_eq!(check.output.code, Some(1), "{:?}", check.output);
    let err = check.output.stderr.clone() + &check.output.stdout;
    for (needle, what) in [
        ("\"not-an-ip\"", "invalid address"),
        ("\"10.0.0.0/33\"", "invalid CIDR"),
        ("\"api.other.org.\"", "outside the zone"),
        ("\"fastest\"", "unknown strategy"),
        ("\"mars\"", "site `mars`"),
    ] {
        let (line, col) = line_col(&text, needle);
        let at = format!("{}:{line}:{col}: ", check.path);
        assert!(
            err.lines().any(|l| l.starts_with(&at) && l.contains(what)),
            "no `{at}... {what}` in:\n{err}"
        );
    }
    // Only [gslb], no listener: a valid configuration.
    let ok = format!(
        "[admin]\naddr = \"127.0.0.1:{}\"\n[gslb]\naddr = \"127.0.0.1:5353\"\nzone = \"{ZONE}\"\n",
        free_port()
    );
    let check = check_config(&ok);
    assert_eq!(check.output.code, Some(0), "{:?}", check.output);
}

#[test]
fn the_shipped_example_is_valid() {
    let path = switchyard_tests::workspace_root().join("conf/gslb.toml");
    let out = switchyard_tests::run_gateway(
        &["-c", &path.to_string_lossy(), "-t"],
        Duration::from_secs(10),
    );
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(out.stdout.contains("configuration ok"), "{out:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gslb_admin_needs_the_admin_token() {
    let port = free_port();
    let text = config(
        port,
        "[[gslb.site]]\nname = \"a\"\naddrs = [\"192.0.2.1\"]\n\n[[gslb.name]]\nname = \"api\"\nsites = [\"a\"]\n",
    )
    .replace("\n\n[gslb]", "\ntoken = \"s3cret\"\n\n[gslb]");
    let gw = Gateway::start(&text).await;
    for (method, path) in [
        ("GET", "/admin/gslb"),
        ("POST", "/admin/gslb/sites/a/drain"),
    ] {
        let (status, _) = admin(gw.admin_port(), method, path).await;
        assert_eq!(status, 401, "{method} {path} without the token");
    }
    let mut c = Client::connect(gw.admin_port()).await;
    c.send("GET /admin/gslb HTTP/1.1\r\nHost: admin\r\nAuthorization: Bearer s3cret\r\nConnection: close\r\n\r\n")
        .await;
    let r = c.read_response().await;
    assert_eq!(r.status, 200);
    let v: serde_json::Value = serde_json::from_str(&r.text()).unwrap();
    assert_eq!(
        v["sites"][0]["draining"], false,
        "the unauthorised drain did nothing: {v}"
    );
}
