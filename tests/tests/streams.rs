//! L4 streams (`[[stream]]`): TCP balancing, half-close, retries past a dead backend, TLS
//! passthrough by SNI, PROXY protocol v1/v2, UDP flows, max_connections, drain, reload
//! under open connections, the access log line, the metrics and `-t` errors.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use switchyard_tests::stream_backend::{free_udp_port, TcpEcho, UdpEcho};
use switchyard_tests::tls_backend::{
    h1_request, server_common_name, CertUse, Pki, TlsBackend, TlsBackendOptions, TlsClient,
};
use switchyard_tests::{check_config, free_port, line_col, request, Gateway};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

const IO: Duration = Duration::from_secs(10);

/// A configuration with no HTTP listener: `[server]` (plus `server`), `[admin]`, then `rest`.
fn config(server: &str, rest: &str) -> String {
    format!(
        "[server]\ngrace_period = \"2s\"\nthreads = 1\n{server}\n\n[admin]\naddr = \"127.0.0.1:{}\"\n\n{rest}\n",
        free_port()
    )
}

fn upstream(name: &str, backends: &[String], extra: &str) -> String {
    let list: Vec<String> = backends
        .iter()
        .map(|b| format!("  {{ addr = \"{b}\" }},"))
        .collect();
    format!(
        "[[upstream]]\nname = \"{name}\"\nalgorithm = \"round-robin\"\nbackends = [\n{}\n]\n{extra}\n\n",
        list.join("\n")
    )
}

fn stream(name: &str, port: u16, protocol: &str, extra: &str) -> String {
    format!(
        "[[stream]]\nname = \"{name}\"\naddr = \"127.0.0.1:{port}\"\nprotocol = \"{protocol}\"\n{extra}\n\n"
    )
}

async fn connect(port: u16) -> TcpStream {
    tokio::time::timeout(IO, TcpStream::connect(("127.0.0.1", port)))
        .await
        .expect("connect in time")
        .expect("connect")
}

/// Writes `data` and reads exactly as many bytes back.
async fn echo(conn: &mut TcpStream, data: &[u8]) -> Vec<u8> {
    conn.write_all(data).await.expect("write");
    let mut back = vec![0u8; data.len()];
    tokio::time::timeout(IO, conn.read_exact(&mut back))
        .await
        .expect("echo in time")
        .expect("echo");
    back
}

/// Whether the peer closes (EOF or reset) within `within`, without sending anything.
async fn closed_within(conn: &mut TcpStream, within: Duration) -> bool {
    let mut b = [0u8; 1];
    matches!(
        tokio::time::timeout(within, conn.read(&mut b)).await,
        Ok(Ok(0)) | Ok(Err(_))
    )
}

async fn metrics(gw: &Gateway) -> String {
    switchyard_tests::get(gw.admin_port(), "admin", "/metrics")
        .await
        .text()
}

/// The value of the metric line starting with `series` (labels in the exporter's order).
fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

async fn wait_until<F: std::future::Future<Output = bool>>(
    within: Duration,
    mut check: impl FnMut() -> F,
) -> bool {
    let start = Instant::now();
    while start.elapsed() < within {
        if check().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

#[tokio::test]
async fn tcp_round_robin_and_a_large_payload_intact() {
    let a = TcpEcho::start("a").await;
    let b = TcpEcho::start("b").await;
    let port = free_port();
    let gw = Gateway::start(&config(
        "",
        &format!(
            "{}{}",
            stream("pg", port, "tcp", "upstream = \"pool\""),
            upstream("pool", &[a.addr_string(), b.addr_string()], "")
        ),
    ))
    .await;
    for i in 0..6 {
        let mut c = connect(port).await;
        assert_eq!(
            echo(&mut c, format!("ping {i}").as_bytes()).await,
            format!("ping {i}").as_bytes()
        );
    }
    assert_eq!(
        (a.connections(), b.connections()),
        (3, 3),
        "round robin over connections"
    );

    let payload: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let c = connect(port).await;
    let (mut r, mut w) = c.into_split();
    let sent = payload.clone();
    let writer = tokio::spawn(async move {
        w.write_all(&sent).await.unwrap();
        w.shutdown().await.unwrap();
    });
    let mut back = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), r.read_to_end(&mut back))
        .await
        .expect("payload back in time")
        .expect("read");
    writer.await.unwrap();
    assert_eq!(back.len(), payload.len());
    assert!(back == payload, "300 kB echoed intact");
    drop(gw);
}

#[tokio::test]
async fn half_close_passes_both_ways() {
    let a = TcpEcho::start("a").await;
    let port = free_port();
    let _gw = Gateway::start(&config(
        "",
        &format!(
            "{}{}",
            stream("s", port, "tcp", "upstream = \"pool\""),
            upstream("pool", &[a.addr_string()], "")
        ),
    ))
    .await;
    let mut c = connect(port).await;
    c.write_all(b"first half").await.unwrap();
    // Our side is done sending; the backend still answers, then closes its side.
    c.shutdown().await.unwrap();
    let mut back = Vec::new();
    tokio::time::timeout(IO, c.read_to_end(&mut back))
        .await
        .expect("EOF in time")
        .expect("read");
    assert_eq!(back, b"first half");
}

#[tokio::test]
async fn a_dead_backend_is_skipped_and_counted() {
    let live = TcpEcho::start("live").await;
    let dead = format!("127.0.0.1:{}", free_port());
    let port = free_port();
    let gw = Gateway::start(&config(
        "",
        &format!(
            "{}{}",
            stream("s", port, "tcp", "upstream = \"pool\""),
            upstream(
                "pool",
                &[dead.clone(), live.addr_string()],
                "retries = 1\nconnect_timeout = \"1s\""
            )
        ),
    ))
    .await;
    for i in 0..4 {
        let mut c = connect(port).await;
        let msg = format!("m{i}");
        assert_eq!(echo(&mut c, msg.as_bytes()).await, msg.as_bytes());
    }
    assert_eq!(live.connections(), 4);
    let m = metrics(&gw).await;
    let errors = metric(
        &m,
        "switchyard_stream_errors_total{kind=\"connect\",stream=\"s\"}",
    );
    assert!(
        errors.unwrap_or(0.0) >= 1.0,
        "connect failures counted:\n{m}"
    );
}

#[tokio::test]
async fn tls_passthrough_routes_by_sni_and_the_client_sees_the_backends_certificate() {
    let pki = Pki::new("Stream Test CA");
    let db_cert = pki.issue("db", "db-backend", &["db.example.com"], CertUse::Server);
    let apps_cert = pki.issue(
        "apps",
        "apps-backend",
        &["*.apps.example.com"],
        CertUse::Server,
    );
    let db = TlsBackend::start("db", &db_cert, TlsBackendOptions::default()).await;
    let apps = TlsBackend::start("apps", &apps_cert, TlsBackendOptions::default()).await;
    let port = free_port();
    let gw = Gateway::start(&config(
        "",
        &format!(
            "{}{}{}",
            stream(
                "edge",
                port,
                "tls-passthrough",
                "sni_routes = [ { sni = \"DB.example.com\", upstream = \"db\" }, { sni = \"*.apps.example.com\", upstream = \"apps\" } ]\nhandshake_timeout = \"1s\""
            ),
            upstream("db", &[db.addr_string()], ""),
            upstream("apps", &[apps.addr_string()], "")
        ),
    ))
    .await;
    for (name, cn, body) in [
        ("db.example.com", "db-backend", "db"),
        ("x.apps.example.com", "apps-backend", "apps"),
        ("a.b.apps.example.com", "apps-backend", "apps"),
    ] {
        let mut s = TlsClient::new(name, pki.ca_path())
            .connect(port)
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(server_common_name(&s).as_deref(), Some(cn), "{name}");
        let r = h1_request(
            &mut s,
            &format!("GET / HTTP/1.1\r\nHost: {name}\r\nConnection: close\r\n\r\n"),
        )
        .await
        .unwrap();
        assert_eq!(r.text(), body, "{name}");
    }
    // No route and no default upstream: closed.
    assert!(TlsClient::new("other.org", pki.ca_path())
        .connect(port)
        .await
        .is_err());
    // Not TLS at all: closed cleanly, counted.
    let mut c = connect(port).await;
    c.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    assert!(closed_within(&mut c, IO).await, "garbage is closed");
    // Nothing sent: closed after handshake_timeout, counted.
    let mut idle = connect(port).await;
    assert!(
        closed_within(&mut idle, IO).await,
        "a silent client is closed"
    );
    let m = metrics(&gw).await;
    assert!(
        metric(
            &m,
            "switchyard_stream_errors_total{kind=\"sni\",stream=\"edge\"}"
        )
        .unwrap_or(0.0)
            >= 2.0,
        "{m}"
    );
    assert!(
        metric(
            &m,
            "switchyard_stream_errors_total{kind=\"timeout\",stream=\"edge\"}"
        )
        .unwrap_or(0.0)
            >= 1.0,
        "{m}"
    );
    let log = gw.wait_access_log(6, IO).await;
    let line = log
        .iter()
        .find(|l| l["sni"] == "db.example.com")
        .unwrap_or_else(|| panic!("a line for db.example.com: {log:?}"));
    assert_eq!(line["protocol"], "tls-passthrough");
    assert_eq!(line["upstream"], "db");
    assert_eq!(line["backend"], db.addr_string());
}

#[tokio::test]
async fn proxy_protocol_v1_and_v2_bytes_are_exact() {
    let a = TcpEcho::start("a").await;
    let b = TcpEcho::start("b").await;
    let (p1, p2) = (free_port(), free_port());
    let _gw = Gateway::start(&config(
        "",
        &format!(
            "{}{}{}{}",
            stream(
                "v1",
                p1,
                "tcp",
                "upstream = \"one\"\nproxy_protocol = \"v1\""
            ),
            stream(
                "v2",
                p2,
                "tcp",
                "upstream = \"two\"\nproxy_protocol = \"v2\""
            ),
            upstream("one", &[a.addr_string()], ""),
            upstream("two", &[b.addr_string()], "")
        ),
    ))
    .await;
    let mut c = connect(p1).await;
    let client_port = c.local_addr().unwrap().port();
    assert_eq!(echo(&mut c, b"hi").await.len(), 2);
    let want = format!("PROXY TCP4 127.0.0.1 127.0.0.1 {client_port} {p1}\r\nhi");
    let got = a.wait_received(0, want.len(), IO).await;
    assert_eq!(String::from_utf8_lossy(&got), want);

    let mut c = connect(p2).await;
    let client_port = c.local_addr().unwrap().port();
    assert_eq!(echo(&mut c, b"hi").await.len(), 2);
    let mut want = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    want.extend([0x21, 0x11, 0, 12, 127, 0, 0, 1, 127, 0, 0, 1]);
    want.extend(client_port.to_be_bytes());
    want.extend(p2.to_be_bytes());
    want.extend(b"hi");
    assert_eq!(b.wait_received(0, want.len(), IO).await, want);
}

#[tokio::test]
async fn a_trusted_proxys_header_gives_the_client_address() {
    let a = TcpEcho::start("a").await;
    let port = free_port();
    let gw = Gateway::start(&config(
        "trusted_proxies = [\"127.0.0.1/32\"]",
        &format!(
            "{}{}",
            stream(
                "s",
                port,
                "tcp",
                "upstream = \"pool\"\naccept_proxy_protocol = true\nproxy_protocol = \"v1\""
            ),
            upstream("pool", &[a.addr_string()], "")
        ),
    ))
    .await;
    let mut c = connect(port).await;
    c.write_all(format!("PROXY TCP4 192.0.2.9 127.0.0.1 4444 {port}\r\n").as_bytes())
        .await
        .unwrap();
    let want = format!("PROXY TCP4 192.0.2.9 127.0.0.1 4444 {port}\r\nhello");
    // The echo backend sends back everything it got: the gateway's header, then ours.
    c.write_all(b"hello").await.unwrap();
    let mut back = vec![0u8; want.len()];
    tokio::time::timeout(IO, c.read_exact(&mut back))
        .await
        .expect("echo in time")
        .expect("echo");
    assert_eq!(String::from_utf8_lossy(&back), want);
    assert_eq!(
        String::from_utf8_lossy(&a.wait_received(0, want.len(), IO).await),
        want
    );
    drop(c);
    let log = gw.wait_access_log(1, IO).await;
    assert_eq!(log[0]["client"], "192.0.2.9:4444", "{log:?}");
}

#[tokio::test]
async fn udp_flows_are_sticky_and_spread_and_replies_come_from_the_stream() {
    let a = UdpEcho::start("a").await;
    let b = UdpEcho::start("b").await;
    let port = free_udp_port();
    let gw = Gateway::start(&config(
        "",
        &format!(
            "{}{}",
            stream(
                "dns",
                port,
                "udp",
                "upstream = \"pool\"\nidle_timeout = \"1s\""
            ),
            upstream("pool", &[a.addr_string(), b.addr_string()], "")
        ),
    ))
    .await;
    let target: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut seen = Vec::new();
    for client in 0..4 {
        let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let mut names = Vec::new();
        for i in 0..3 {
            let msg = format!("c{client} d{i}");
            let mut buf = [0u8; 256];
            // Datagrams may be lost: resend a few times.
            let mut got = None;
            for _ in 0..20 {
                sock.send_to(msg.as_bytes(), target).await.unwrap();
                if let Ok(Ok((n, from))) =
                    tokio::time::timeout(Duration::from_millis(500), sock.recv_from(&mut buf)).await
                {
                    got = Some((buf[..n].to_vec(), from));
                    break;
                }
            }
            let (reply, from) = got.expect("a reply");
            assert_eq!(from, target, "the reply comes from the stream's address");
            let text = String::from_utf8(reply).unwrap();
            let (name, echoed) = text.split_once(':').unwrap();
            assert_eq!(echoed, msg);
            names.push(name.to_owned());
        }
        assert!(
            names.iter().all(|n| *n == names[0]),
            "one flow, one backend: {names:?}"
        );
        seen.push(names[0].clone());
    }
    assert!(
        seen.contains(&"a".to_owned()) && seen.contains(&"b".to_owned()),
        "flows spread: {seen:?}"
    );
    // Each flow is logged when it expires.
    let log = gw.wait_access_log(4, Duration::from_secs(20)).await;
    assert!(log.len() >= 4, "{log:?}");
    assert!(log
        .iter()
        .all(|l| l["protocol"] == "udp" && l["stream"] == "dns"));
    assert!(log.iter().all(|l| l["result"] == "idle_timeout"), "{log:?}");
    assert!(a.datagrams().len() + b.datagrams().len() >= 12);
}

#[tokio::test]
async fn a_dead_udp_backend_does_not_hold_flows() {
    let live = UdpEcho::start("live").await;
    let dead = format!("127.0.0.1:{}", free_udp_port());
    let port = free_udp_port();
    let gw = Gateway::start(&config(
        "",
        &format!(
            "{}{}",
            stream(
                "u",
                port,
                "udp",
                "upstream = \"pool\"\nidle_timeout = \"2s\""
            ),
            upstream("pool", &[dead, live.addr_string()], "")
        ),
    ))
    .await;
    let target: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    for client in 0..4 {
        let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let msg = format!("client {client}");
        let mut buf = [0u8; 256];
        let mut reply = None;
        // A flow on the dead backend ends at its ICMP refusal; a resend picks again.
        for _ in 0..40 {
            sock.send_to(msg.as_bytes(), target).await.unwrap();
            if let Ok(Ok((n, _))) =
                tokio::time::timeout(Duration::from_millis(250), sock.recv_from(&mut buf)).await
            {
                reply = Some(String::from_utf8_lossy(&buf[..n]).into_owned());
                break;
            }
        }
        assert_eq!(reply, Some(format!("live:{msg}")), "client {client}");
    }
    let m = metrics(&gw).await;
    assert!(
        metric(
            &m,
            "switchyard_stream_errors_total{kind=\"connect\",stream=\"u\"}"
        )
        .unwrap_or(0.0)
            >= 1.0,
        "the refusal is counted:\n{m}"
    );
    let log = gw.wait_access_log(1, IO).await;
    assert!(
        log.iter().any(|l| l["result"] == "connect_failed"),
        "the refused flow is logged: {log:?}"
    );
}

#[tokio::test]
async fn max_connections_refuses_past_the_limit() {
    let a = TcpEcho::start("a").await;
    let port = free_port();
    let gw = Gateway::start(&config(
        "",
        &format!(
            "{}{}",
            stream("s", port, "tcp", "upstream = \"pool\"\nmax_connections = 2"),
            upstream("pool", &[a.addr_string()], "")
        ),
    ))
    .await;
    let mut c1 = connect(port).await;
    let mut c2 = connect(port).await;
    assert_eq!(echo(&mut c1, b"1").await, b"1");
    assert_eq!(echo(&mut c2, b"2").await, b"2");
    // Refused: reset at once (which may already fail the connect) or closed unread.
    let refused = match TcpStream::connect(("127.0.0.1", port)).await {
        Err(_) => true,
        Ok(mut c3) => closed_within(&mut c3, IO).await,
    };
    assert!(refused, "the third connection is refused");
    drop(c1);
    // Once one closes, a new one is served.
    let ok = wait_until(IO, || async {
        let Ok(mut c) = TcpStream::connect(("127.0.0.1", port)).await else {
            return false;
        };
        c.write_all(b"x").await.is_ok() && {
            let mut b = [0u8; 1];
            matches!(
                tokio::time::timeout(Duration::from_secs(2), c.read(&mut b)).await,
                Ok(Ok(1))
            )
        }
    })
    .await;
    assert!(ok, "served again below the limit");
    assert_eq!(echo(&mut c2, b"still").await, b"still");
    let m = metrics(&gw).await;
    assert!(
        metric(
            &m,
            "switchyard_stream_errors_total{kind=\"max_connections\",stream=\"s\"}"
        )
        .unwrap_or(0.0)
            >= 1.0,
        "{m}"
    );
}

#[tokio::test]
async fn drain_keeps_open_connections_and_sends_new_ones_elsewhere() {
    let a = TcpEcho::start("a").await;
    let b = TcpEcho::start("b").await;
    let port = free_port();
    let gw = Gateway::start(&config(
        "",
        &format!(
            "{}{}",
            stream("s", port, "tcp", "upstream = \"pool\""),
            upstream("pool", &[a.addr_string(), b.addr_string()], "")
        ),
    ))
    .await;
    let mut first = connect(port).await;
    assert_eq!(echo(&mut first, b"x").await, b"x");
    let on_a = a.connections() == 1;
    let (drained, other) = if on_a { (&a, &b) } else { (&b, &a) };
    let r = request(
        gw.admin_port(),
        "POST",
        "admin",
        &format!(
            "/admin/upstreams/pool/backends/{}/drain",
            drained.addr_string()
        ),
        &[],
        b"",
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let before = other.connections();
    for _ in 0..4 {
        let mut c = connect(port).await;
        assert_eq!(echo(&mut c, b"y").await, b"y");
    }
    assert_eq!(
        other.connections(),
        before + 4,
        "new connections avoid the drained backend"
    );
    assert_eq!(drained.connections(), 1);
    assert_eq!(echo(&mut first, b"still here").await, b"still here");
    let up = switchyard_tests::get(gw.admin_port(), "admin", "/admin/upstreams").await;
    let v: serde_json::Value = serde_json::from_slice(&up.body).unwrap();
    let backends = v["upstreams"][0]["backends"].as_array().unwrap().clone();
    let d = backends
        .iter()
        .find(|x| x["addr"] == drained.addr_string())
        .unwrap();
    assert_eq!(d["draining"], true);
    assert_eq!(
        d["active_requests"], 1,
        "the open stream counts as active: {v}"
    );
}

#[tokio::test]
async fn reload_adds_and_removes_streams_without_touching_open_connections() {
    let a = TcpEcho::start("a").await;
    let b = TcpEcho::start("b").await;
    let (p1, p2) = (free_port(), free_port());
    let admin = free_port();
    let text = |streams: &str| {
        format!(
            "[server]\ngrace_period = \"2s\"\nthreads = 1\n\n[admin]\naddr = \"127.0.0.1:{admin}\"\n\n{streams}{}{}",
            upstream("one", &[a.addr_string()], ""),
            upstream("two", &[b.addr_string()], "")
        )
    };
    let gw = Gateway::start(&text(&stream("old", p1, "tcp", "upstream = \"one\""))).await;
    let mut open = connect(p1).await;
    assert_eq!(echo(&mut open, b"before").await, b"before");

    std::fs::write(
        gw.config_path(),
        text(&stream("new", p2, "tcp", "upstream = \"two\"")),
    )
    .unwrap();
    gw.signal("HUP");
    let added = wait_until(Duration::from_secs(15), || async {
        match tokio::time::timeout(
            Duration::from_secs(1),
            TcpStream::connect(("127.0.0.1", p2)),
        )
        .await
        {
            Ok(Ok(mut c)) => {
                c.write_all(b"n").await.is_ok() && {
                    let mut buf = [0u8; 1];
                    matches!(
                        tokio::time::timeout(Duration::from_secs(2), c.read(&mut buf)).await,
                        Ok(Ok(1))
                    )
                }
            }
            _ => false,
        }
    })
    .await;
    assert!(added, "the new stream serves");
    assert!(b.connections() >= 1);
    let removed = wait_until(Duration::from_secs(15), || async {
        TcpStream::connect(("127.0.0.1", p1)).await.is_err()
    })
    .await;
    assert!(removed, "the removed stream no longer accepts");
    assert_eq!(
        echo(&mut open, b"after").await,
        b"after",
        "the open connection is untouched"
    );
    assert_eq!(a.connections(), 1);

    // Changing a stream in place (same address, another upstream) applies to new connections.
    let mut on_new = connect(p2).await;
    assert_eq!(echo(&mut on_new, b"kept").await, b"kept");
    std::fs::write(
        gw.config_path(),
        text(&stream("new", p2, "tcp", "upstream = \"one\"")),
    )
    .unwrap();
    gw.signal("HUP");
    let moved = wait_until(Duration::from_secs(15), || async {
        let before = a.connections();
        let Ok(mut c) = TcpStream::connect(("127.0.0.1", p2)).await else {
            return false;
        };
        let _ = c.write_all(b"m").await;
        let mut buf = [0u8; 1];
        let _ = tokio::time::timeout(Duration::from_secs(2), c.read(&mut buf)).await;
        a.connections() > before
    })
    .await;
    assert!(moved, "new connections go to the new upstream");
    assert_eq!(
        echo(&mut on_new, b"same").await,
        b"same",
        "the open one stays where it was"
    );
}

#[tokio::test]
async fn access_log_line_and_metrics_of_a_connection() {
    let a = TcpEcho::start("a").await;
    let port = free_port();
    let gw = Gateway::start(&config(
        "",
        &format!(
            "{}{}",
            stream(
                "pg",
                port,
                "tcp",
                "upstream = \"pool\"\nidle_timeout = \"1m\""
            ),
            upstream(
                "pool",
                &[a.addr_string()],
                "health_check = { kind = \"tcp\", interval = \"1s\" }"
            )
        ),
    ))
    .await;
    let mut c = connect(port).await;
    let client = c.local_addr().unwrap().to_string();
    assert_eq!(echo(&mut c, b"0123456789").await, b"0123456789");
    let m = metrics(&gw).await;
    assert_eq!(
        metric(&m, "switchyard_stream_active_connections{stream=\"pg\"}"),
        Some(1.0),
        "{m}"
    );
    assert_eq!(
        metric(
            &m,
            &format!(
                "switchyard_stream_connections_total{{backend=\"{}\",stream=\"pg\",upstream=\"pool\"}}",
                a.addr_string()
            )
        ),
        Some(1.0),
        "an open connection is counted already: {m}"
    );
    drop(c);
    let log = gw.wait_access_log(1, IO).await;
    let line = &log[0];
    for key in [
        "time",
        "stream",
        "protocol",
        "client",
        "sni",
        "upstream",
        "backend",
        "bytes_in",
        "bytes_out",
        "duration_ms",
        "result",
    ] {
        assert!(line.get(key).is_some(), "{key} in {line}");
    }
    assert_eq!(line["stream"], "pg");
    assert_eq!(line["protocol"], "tcp");
    assert_eq!(line["client"], client);
    assert!(line["sni"].is_null());
    assert_eq!(line["upstream"], "pool");
    assert_eq!(line["backend"], a.addr_string());
    assert_eq!(line["bytes_in"], 10);
    assert_eq!(line["bytes_out"], 10);
    assert_eq!(line["result"], "ok");
    assert!(line["duration_ms"].is_number());
    let m = metrics(&gw).await;
    let backend = a.addr_string();
    assert_eq!(
        metric(
            &m,
            &format!("switchyard_stream_connections_total{{backend=\"{backend}\",stream=\"pg\",upstream=\"pool\"}}")
        ),
        Some(1.0),
        "{m}"
    );
    assert_eq!(
        metric(
            &m,
            "switchyard_stream_bytes_total{direction=\"in\",stream=\"pg\"}"
        ),
        Some(10.0)
    );
    assert_eq!(
        metric(
            &m,
            "switchyard_stream_bytes_total{direction=\"out\",stream=\"pg\"}"
        ),
        Some(10.0)
    );
    assert_eq!(
        metric(&m, "switchyard_stream_active_connections{stream=\"pg\"}"),
        Some(0.0)
    );
    assert_eq!(
        metric(
            &m,
            &format!("switchyard_backend_healthy{{backend=\"{backend}\",upstream=\"pool\"}}")
        ),
        Some(1.0),
        "a stream-only upstream is health checked and exported: {m}"
    );
}

#[tokio::test]
async fn graceful_shutdown_lets_open_connections_finish() {
    let a = TcpEcho::start("a").await;
    let port = free_port();
    let text = config(
        "",
        &format!(
            "{}{}",
            stream("s", port, "tcp", "upstream = \"pool\""),
            upstream("pool", &[a.addr_string()], "")
        ),
    )
    .replace("grace_period = \"2s\"", "grace_period = \"10s\"");
    let mut gw = Gateway::start(&text).await;
    let mut open = connect(port).await;
    assert_eq!(echo(&mut open, b"x").await, b"x");
    gw.signal("TERM");
    let stopped = wait_until(Duration::from_secs(10), || async {
        TcpStream::connect(("127.0.0.1", port)).await.is_err()
    })
    .await;
    assert!(stopped, "no new connections once shutting down");
    assert_eq!(
        echo(&mut open, b"still").await,
        b"still",
        "the open one goes on"
    );
    assert!(
        gw.wait_exit(Duration::from_millis(300)).await.is_none(),
        "waits for it"
    );
    drop(open);
    let status = gw
        .wait_exit(Duration::from_secs(10))
        .await
        .expect("exits once it closed");
    assert!(status.success());
}

// ---- gateway -t ----

const GOOD: &str = r#"[server]
trusted_proxies = ["10.0.0.0/8"]

[admin]
addr = "127.0.0.1:19911"

[[stream]]
name = "pg"
addr = "127.0.0.1:15432"
protocol = "tcp"
upstream = "pg"
proxy_protocol = "v2"

[[stream]]
name = "edge"
addr = "127.0.0.1:18443"
protocol = "tls-passthrough"
sni_routes = [ { sni = "db.example.com", upstream = "pg" }, { sni = "*.apps.example.com", upstream = "apps" } ]
accept_proxy_protocol = true

[[stream]]
name = "dns"
addr = "127.0.0.1:15353"
protocol = "udp"
upstream = "apps"
idle_timeout = "30s"

[[upstream]]
name = "pg"
algorithm = "least-connections"
backends = [ { addr = "127.0.0.1:5432" } ]
health_check = { kind = "tcp", interval = "5s" }

[[upstream]]
name = "apps"
algorithm = "ip-hash"
backends = [ { addr = "127.0.0.1:8001" }, { addr = "127.0.0.1:8002" } ]
"#;

fn expect_error(text: &str, needle: &str, at: &str) {
    let c = check_config(text);
    let all = format!("{}{}", c.output.stdout, c.output.stderr);
    assert_eq!(c.output.code, Some(1), "{all}");
    assert!(!all.contains("panicked"), "{all}");
    let (line, col) = line_col(text, at);
    let prefix = format!("{}:{line}:{col}: ", c.path);
    assert!(
        all.lines()
            .any(|l| l.starts_with(&prefix) && l.contains(needle)),
        "want `{prefix}...{needle}` in:\n{all}"
    );
}

#[test]
fn a_configuration_of_streams_only_is_valid() {
    let c = check_config(GOOD);
    assert_eq!(
        c.output.code,
        Some(0),
        "{}{}",
        c.output.stdout,
        c.output.stderr
    );
    assert!(c.output.stdout.contains("configuration ok"));
}

#[test]
fn stream_errors_name_file_line_and_column() {
    expect_error(
        &GOOD.replace("upstream = \"pg\"\nproxy", "upstream = \"nope\"\nproxy"),
        "upstream `nope`",
        "\"nope\"",
    );
    expect_error(
        &GOOD.replace("protocol = \"tcp\"", "protocol = \"sctp\""),
        "sctp",
        "\"sctp\"",
    );
    expect_error(
        &GOOD.replace(
            "upstream = \"apps\"\nidle",
            "upstream = \"apps\"\nsni_routes = [ { sni = \"a.com\", upstream = \"pg\" } ]\nidle",
        ),
        "sni_routes",
        "[ { sni = \"a.com\"",
    );
    expect_error(
        &GOOD.replace("127.0.0.1:18443", "127.0.0.1:15432"),
        "stream addresses must be unique",
        "\"127.0.0.1:15432\"\nprotocol = \"tls",
    );
    expect_error(
        &GOOD.replace("127.0.0.1:15432", "127.0.0.1:19911"),
        "admin listener",
        "\"127.0.0.1:19911\"\nprotocol",
    );
    expect_error(
        &GOOD.replace(
            "algorithm = \"ip-hash\"",
            "algorithm = \"ip-hash\"\nhash_key = \"header:x-user\"",
        ),
        "hash_key",
        "\"header:x-user\"",
    );
    expect_error(
        &GOOD.replace("*.apps.example.com", "apps.*.example.com"),
        "invalid sni",
        "\"apps.*.example.com\"",
    );
    expect_error(
        &GOOD.replace(
            "idle_timeout = \"30s\"",
            "idle_timeout = \"30s\"\nproxy_protocol = \"v1\"",
        ),
        "v1",
        "\"v1\"",
    );
}

#[test]
fn a_stream_clashing_with_a_listener_is_an_error() {
    let text = format!("{GOOD}\n[[listener]]\nname = \"http\"\naddr = \"0.0.0.0:15432\"\n");
    expect_error(&text, "listener `http`", "\"127.0.0.1:15432\"");
}

#[test]
fn an_address_in_use_fails_the_start_with_its_position() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let text = config(
        "",
        &format!(
            "{}{}",
            stream("s", port, "tcp", "upstream = \"u\""),
            upstream("u", &["127.0.0.1:9".into()], "")
        ),
    );
    let dir = switchyard_tests::TempDir::new();
    let path = dir.write("gateway.toml", &text);
    let out =
        switchyard_tests::run_gateway(&["-c", &path.to_string_lossy()], Duration::from_secs(15));
    assert_eq!(out.code, Some(1), "{}{}", out.stdout, out.stderr);
    let (line, col) = line_col(&text, &format!("\"127.0.0.1:{port}\""));
    assert!(
        out.stderr.contains(&format!(
            "gateway.toml:{line}:{col}: stream `s`: cannot listen"
        )),
        "{}",
        out.stderr
    );
    drop(taken);
}

#[tokio::test]
async fn zero_downtime_upgrade_keeps_the_stream_served() {
    let a = TcpEcho::start("a").await;
    let port = free_port();
    let dir = switchyard_tests::TempDir::new();
    let upgrade_sock = dir.path().join("upgrade.sock");
    let pid_file = dir.path().join("gateway.pid");
    let text = config(
        &format!(
            "upgrade_sock = \"{}\"\npid_file = \"{}\"",
            upgrade_sock.display(),
            pid_file.display()
        ),
        &format!(
            "{}{}",
            stream("s", port, "tcp", "upstream = \"pool\""),
            upstream("pool", &[a.addr_string()], "")
        ),
    )
    .replace("grace_period = \"2s\"", "grace_period = \"15s\"");
    let mut old = Gateway::start(&text).await;
    let mut open = connect(port).await;
    assert_eq!(echo(&mut open, b"old").await, b"old");

    // The new process waits for the old one's sockets; the old one hands them over on SIGQUIT.
    let path = old.config_path().to_string_lossy().into_owned();
    let admin = old.admin_port();
    let new_dir = switchyard_tests::TempDir::new();
    let spawn_path = path.clone();
    let new = tokio::spawn(async move {
        Gateway::launch(
            &["-c", &spawn_path, "-u"],
            admin,
            Vec::new(),
            std::path::PathBuf::from(&spawn_path),
            new_dir,
        )
        .await
    });
    let new = new.await.unwrap();
    // Give the new process a moment to reach its wait for the sockets.
    let bound = wait_until(Duration::from_secs(10), || async { upgrade_sock.exists() }).await;
    assert!(bound, "the new process listens for the hand-over");
    old.signal("QUIT");
    // Connections are served all along: by the old process, then by the new one.
    let start = Instant::now();
    let mut served = 0;
    while start.elapsed() < Duration::from_secs(8) {
        let mut c = connect(port).await;
        assert_eq!(echo(&mut c, b"n").await, b"n", "served during the upgrade");
        served += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(served > 10);
    assert_eq!(
        echo(&mut open, b"still").await,
        b"still",
        "the old connection goes on"
    );
    drop(open);
    let status = old.wait_exit(Duration::from_secs(20)).await;
    assert!(
        status.is_some_and(|s| s.success()),
        "the old process exits once drained"
    );
    let mut c = connect(port).await;
    assert_eq!(
        echo(&mut c, b"after").await,
        b"after",
        "the new process serves alone"
    );
    drop(new);
}

#[tokio::test]
async fn hashing_uses_the_client_address_from_a_trusted_proxy_header() {
    let a = TcpEcho::start("a").await;
    let b = TcpEcho::start("b").await;
    let port = free_port();
    let _gw = Gateway::start(&config(
        "trusted_proxies = [\"127.0.0.1/32\"]",
        &format!(
            "{}{}",
            stream(
                "s",
                port,
                "tcp",
                "upstream = \"pool\"\naccept_proxy_protocol = true"
            ),
            upstream(
                "pool",
                &[a.addr_string(), b.addr_string()],
                "hash_key = \"client-ip\""
            )
            .replace("round-robin", "ip-hash")
        ),
    ))
    .await;
    // Which backend each client address lands on, asked twice.
    let mut placement = Vec::new();
    for round in 0..2 {
        for host in 1..=8u8 {
            let before = (a.connections(), b.connections());
            let mut c = connect(port).await;
            c.write_all(
                format!(
                    "PROXY TCP4 198.51.100.{host} 127.0.0.1 {} {port}\r\n",
                    1000 + u16::from(host) * 10 + round
                )
                .as_bytes(),
            )
            .await
            .unwrap();
            assert_eq!(echo(&mut c, b"k").await, b"k");
            let on_a = a.connections() > before.0;
            assert!(on_a || b.connections() > before.1);
            placement.push((round, host, on_a));
        }
    }
    for host in 1..=8u8 {
        let first = placement
            .iter()
            .find(|p| p.0 == 0 && p.1 == host)
            .unwrap()
            .2;
        let second = placement
            .iter()
            .find(|p| p.0 == 1 && p.1 == host)
            .unwrap()
            .2;
        assert_eq!(
            first, second,
            "client 198.51.100.{host} stays on its backend"
        );
    }
    assert!(
        a.connections() > 0 && b.connections() > 0,
        "addresses spread: {placement:?}"
    );
}

#[tokio::test]
async fn least_connections_counts_open_streams() {
    let a = TcpEcho::start("a").await;
    let b = TcpEcho::start("b").await;
    let port = free_port();
    let _gw = Gateway::start(&config(
        "",
        &format!(
            "{}{}",
            stream("s", port, "tcp", "upstream = \"pool\""),
            upstream("pool", &[a.addr_string(), b.addr_string()], "")
                .replace("round-robin", "least-connections")
        ),
    ))
    .await;
    // Three long connections: the third goes where only one is open.
    let mut held = Vec::new();
    for _ in 0..3 {
        let mut c = connect(port).await;
        assert_eq!(echo(&mut c, b"h").await, b"h");
        held.push(c);
    }
    let (na, nb) = (a.open_connections(), b.open_connections());
    assert_eq!(na + nb, 3);
    assert!(na >= 1 && nb >= 1, "open streams balance: {na} / {nb}");
    // The next one goes to the backend with fewer open streams.
    let mut c = connect(port).await;
    assert_eq!(echo(&mut c, b"n").await, b"n");
    assert_eq!((a.open_connections(), b.open_connections()), (2, 2));
}

/// A ClientHello for `name`, as OpenSSL's client writes it.
fn client_hello(name: &str) -> Vec<u8> {
    use openssl::ssl::{HandshakeError, SslConnector, SslMethod};
    use std::io::{Read, Write};
    struct Capture(Vec<u8>);
    impl Read for Capture {
        fn read(&mut self, _: &mut [u8]) -> std::io::Result<usize> {
            Err(std::io::ErrorKind::WouldBlock.into())
        }
    }
    impl Write for Capture {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let connector = SslConnector::builder(SslMethod::tls()).unwrap().build();
    match connector.connect(name, Capture(Vec::new())) {
        Err(HandshakeError::WouldBlock(mid)) => mid.get_ref().0.clone(),
        _ => panic!("the handshake waits for the server"),
    }
}

#[tokio::test]
async fn a_client_hello_split_over_segments_is_routed_and_replayed_intact() {
    let echo_backend = TcpEcho::start("raw").await;
    let port = free_port();
    let _gw = Gateway::start(&config(
        "",
        &format!(
            "{}{}",
            stream(
                "edge",
                port,
                "tls-passthrough",
                "sni_routes = [ { sni = \"*.example.com\", upstream = \"raw\" } ]"
            ),
            upstream("raw", &[echo_backend.addr_string()], "")
        ),
    ))
    .await;
    let hello = client_hello("split.example.com");
    let mut c = connect(port).await;
    c.set_nodelay(true).unwrap();
    for part in hello.chunks(hello.len() / 3 + 1) {
        c.write_all(part).await.unwrap();
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    let mut back = vec![0u8; hello.len()];
    tokio::time::timeout(IO, c.read_exact(&mut back))
        .await
        .expect("echo in time")
        .expect("echo");
    assert_eq!(back, hello, "the backend got the ClientHello byte for byte");
    assert_eq!(echo_backend.connections(), 1);
}

#[tokio::test]
async fn udp_flows_past_max_connections_are_dropped() {
    let a = UdpEcho::start("a").await;
    let port = free_udp_port();
    let gw = Gateway::start(&config(
        "",
        &format!(
            "{}{}",
            stream(
                "u",
                port,
                "udp",
                "upstream = \"pool\"\nmax_connections = 1\nidle_timeout = \"30s\""
            ),
            upstream("pool", &[a.addr_string()], "")
        ),
    ))
    .await;
    let target: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let ask = |sock: std::sync::Arc<UdpSocket>, tries: usize| async move {
        let mut buf = [0u8; 64];
        for _ in 0..tries {
            sock.send_to(b"q", target).await.unwrap();
            if let Ok(Ok((n, _))) =
                tokio::time::timeout(Duration::from_millis(300), sock.recv_from(&mut buf)).await
            {
                return Some(buf[..n].to_vec());
            }
        }
        None
    };
    let first = std::sync::Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
    assert_eq!(ask(first.clone(), 20).await.as_deref(), Some(&b"a:q"[..]));
    let second = std::sync::Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
    assert_eq!(ask(second, 3).await, None, "a second flow is refused");
    assert_eq!(
        ask(first, 20).await.as_deref(),
        Some(&b"a:q"[..]),
        "the first goes on"
    );
    let m = metrics(&gw).await;
    assert!(
        metric(
            &m,
            "switchyard_stream_errors_total{kind=\"max_connections\",stream=\"u\"}"
        )
        .unwrap_or(0.0)
            >= 1.0,
        "{m}"
    );
}

#[tokio::test]
async fn a_reload_onto_an_address_in_use_is_refused_with_its_position() {
    let a = TcpEcho::start("a").await;
    let port = free_port();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let busy = taken.local_addr().unwrap().port();
    let admin = free_port();
    let text = |streams: &str| {
        format!(
            "[server]\ngrace_period = \"2s\"\nthreads = 1\n\n[admin]\naddr = \"127.0.0.1:{admin}\"\n\n{streams}{}",
            upstream("pool", &[a.addr_string()], "")
        )
    };
    let gw = Gateway::start(&text(&stream("s", port, "tcp", "upstream = \"pool\""))).await;
    let next = text(&format!(
        "{}{}",
        stream("s", port, "tcp", "upstream = \"pool\""),
        stream("busy", busy, "tcp", "upstream = \"pool\"")
    ));
    std::fs::write(gw.config_path(), &next).unwrap();
    let r = request(admin, "POST", "admin", "/admin/reload", &[], b"").await;
    assert_eq!(r.status, 400, "{}", r.text());
    let (line, col) = line_col(&next, &format!("\"127.0.0.1:{busy}\""));
    assert!(
        r.text()
            .contains(&format!(":{line}:{col}: stream `busy`: cannot listen")),
        "{}",
        r.text()
    );
    // The running configuration goes on.
    let mut c = connect(port).await;
    assert_eq!(echo(&mut c, b"ok").await, b"ok");
    drop(taken);
}
