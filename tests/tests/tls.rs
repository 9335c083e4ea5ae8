//! TLS through the real gateway, with certificates made at run time: termination with
//! certificates chosen by SNI, protocol versions and cipher suites, HTTP/2 by ALPN end to
//! end, re-encryption to TLS backends (verification, name mismatch, untrusted certificates,
//! client certificates, HTTP/2 to backends), plain HTTP sent to a TLS port, and the
//! configuration errors for bad certificate files.

use std::time::Duration;

use openssl::ssl::SslVersion;
use switchyard_tests::tls_backend::{
    h1_request, h2_connect, h2_request, negotiated, server_common_name, CertFiles, CertUse, Pki,
    TlsBackend, TlsBackendOptions, TlsClient,
};
use switchyard_tests::{
    check_config, free_port, line_col, route, upstream, Backend, Behavior, Gateway,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The certificates of a TLS listener: the default (`localhost`), `api.example.com` and a
/// `*.example.com` wildcard, all signed by one test CA.
struct ListenerCerts {
    pki: Pki,
    default: CertFiles,
    api: CertFiles,
    wildcard: CertFiles,
}

impl ListenerCerts {
    fn new() -> ListenerCerts {
        let pki = Pki::new("Switchyard Test CA");
        let default = pki.issue(
            "default",
            "localhost",
            &["localhost", "127.0.0.1"],
            CertUse::Server,
        );
        let api = pki.issue(
            "api",
            "api.example.com",
            &["api.example.com"],
            CertUse::Server,
        );
        let wildcard = pki.issue(
            "wildcard",
            "wildcard.example.com",
            &["*.example.com"],
            CertUse::Server,
        );
        ListenerCerts {
            pki,
            default,
            api,
            wildcard,
        }
    }

    /// A client sending `sni` and trusting the test CA.
    fn client(&self, sni: &str) -> TlsClient {
        TlsClient::new(sni, self.pki.ca_path())
    }
}

/// A configuration with a plain listener `http` and a TLS listener `https` (with the SNI
/// certificates), then `rest`.
fn config(certs: &ListenerCerts, rest: &str) -> String {
    format!(
        r#"[server]
grace_period = "1s"
threads = 2

[admin]
addr = "127.0.0.1:{admin}"

[[listener]]
name = "http"
addr = "127.0.0.1:{http}"

[[listener]]
name = "https"
addr = "127.0.0.1:{https}"
tls = {{ cert = "{dc}", key = "{dk}" }}
sni = [
  {{ name = "api.example.com", cert = "{ac}", key = "{ak}" }},
  {{ name = "*.example.com", cert = "{wc}", key = "{wk}" }},
]

{rest}
"#,
        admin = free_port(),
        http = free_port(),
        https = free_port(),
        dc = certs.default.cert_path(),
        dk = certs.default.key_path(),
        ac = certs.api.cert_path(),
        ak = certs.api.key_path(),
        wc = certs.wildcard.cert_path(),
        wk = certs.wildcard.key_path(),
    )
}

/// An upstream `name` with one TLS backend and `tls = { <tls> }`.
fn tls_upstream(name: &str, backend: &TlsBackend, tls: &str) -> String {
    format!(
        "[[upstream]]\nname = \"{name}\"\nbackends = [ {{ addr = \"{}\" }} ]\nconnect_timeout = \"2s\"\nretries = 0\ntls = {{ {tls} }}\n\n",
        backend.addr_string()
    )
}

fn get_head(host: &str, path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sni_picks_the_certificate_and_unknown_names_get_the_default() {
    let certs = ListenerCerts::new();
    let b = Backend::start("plain").await;
    b.set(Behavior::EchoHeaders);
    let rest = route("all", "u", "path_prefix = \"/\"") + &upstream("u", &[&b], "");
    let gw = Gateway::start(&config(&certs, &rest)).await;
    let port = gw.listener_port("https");

    for (sni, cn) in [
        (Some("api.example.com"), "api.example.com"),
        (Some("API.Example.com"), "api.example.com"),
        (Some("www.example.com"), "wildcard.example.com"),
        (Some("unknown.test"), "localhost"),
        (None, "localhost"),
    ] {
        let client = TlsClient {
            server_name: sni.map(str::to_owned),
            ..certs.client("x")
        };
        let mut s = client
            .connect(port)
            .await
            .unwrap_or_else(|e| panic!("SNI {sni:?}: {e}\n{}", gw.stderr()));
        assert_eq!(
            server_common_name(&s).as_deref(),
            Some(cn),
            "SNI {sni:?} must get the certificate of {cn}"
        );
        // The connection carries requests like any other, with X-Forwarded-Proto https.
        let r = h1_request(&mut s, &get_head(sni.unwrap_or("localhost"), "/tls"))
            .await
            .unwrap();
        assert_eq!(r.status, 200, "{r:?}");
        let echoed: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        let proto = echoed["headers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|h| {
                h[0].as_str()
                    .unwrap()
                    .eq_ignore_ascii_case("x-forwarded-proto")
            })
            .map(|h| h[1].as_str().unwrap().to_owned());
        assert_eq!(proto.as_deref(), Some("https"), "{echoed}");
    }

    // The plain listener still says http.
    let r = gw.get("localhost", "/plain").await;
    assert_eq!(r.status, 200);
    assert!(r.text().contains("\"http\""), "{}", r.text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_tls12_and_tls13_with_modern_cipher_suites() {
    let certs = ListenerCerts::new();
    let b = Backend::start("b").await;
    let rest = route("all", "u", "path_prefix = \"/\"") + &upstream("u", &[&b], "");
    let gw = Gateway::start(&config(&certs, &rest)).await;
    let port = gw.listener_port("https");

    for old in [SslVersion::TLS1, SslVersion::TLS1_1] {
        let client = TlsClient {
            legacy: true,
            ..certs.client("localhost").only(old)
        };
        let err = client
            .connect(port)
            .await
            .map(|s| negotiated(&s).0)
            .expect_err("TLS 1.0 and 1.1 must be refused");
        assert!(
            err.contains("protocol version") || err.contains("alert"),
            "the server must refuse the old version: {err}"
        );
    }

    for (v, name) in [
        (SslVersion::TLS1_2, "TLSv1.2"),
        (SslVersion::TLS1_3, "TLSv1.3"),
    ] {
        let mut s = certs
            .client("localhost")
            .only(v)
            .connect(port)
            .await
            .unwrap_or_else(|e| panic!("{name} must be accepted: {e}"));
        assert_eq!(negotiated(&s).0, name);
        let r = h1_request(&mut s, &get_head("localhost", "/"))
            .await
            .unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.text(), "b");
    }

    // TLS 1.2 with only legacy suites (CBC, RSA key exchange, 3DES): no agreement.
    let weak = TlsClient {
        legacy: true,
        cipher_list: Some(
            "ECDHE-ECDSA-AES128-SHA:ECDHE-ECDSA-AES256-SHA:AES128-SHA:AES256-SHA:DES-CBC3-SHA:@SECLEVEL=0".into(),
        ),
        ..certs.client("localhost").only(SslVersion::TLS1_2)
    };
    assert!(
        weak.connect(port).await.is_err(),
        "weak TLS 1.2 cipher suites must be refused"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_by_alpn_is_routed_balanced_and_logged() {
    let certs = ListenerCerts::new();
    let a = Backend::start("a").await;
    let b = Backend::start("b").await;
    let rest = route(
        "api",
        "u",
        "host = \"api.example.com\"\npath_prefix = \"/h2\"",
    ) + &upstream("u", &[&a, &b], "");
    let gw = Gateway::start(&config(&certs, &rest)).await;
    let port = gw.listener_port("https");

    let s = certs
        .client("api.example.com")
        .with_alpn(&["h2", "http/1.1"])
        .connect(port)
        .await
        .unwrap();
    assert_eq!(negotiated(&s).1.as_deref(), Some("h2"), "ALPN must pick h2");
    let send = h2_connect(s).await.unwrap();
    // Concurrent streams on one connection, routed by :authority and balanced.
    let mut tasks = Vec::new();
    for i in 0..6 {
        let send = send.clone();
        tasks.push(tokio::spawn(async move {
            h2_request(
                &send,
                "GET",
                &format!("https://api.example.com/h2/{i}?q={i}"),
                &[("x-test", "h2")],
            )
            .await
        }));
    }
    let mut bodies = Vec::new();
    for t in tasks {
        let r = t.await.unwrap().unwrap();
        assert_eq!(r.status, 200, "{r:?}");
        assert!(r.header("x-request-id").is_some(), "{r:?}");
        bodies.push(r.text());
    }
    bodies.sort();
    assert_eq!(bodies.iter().filter(|b| *b == "a").count(), 3, "{bodies:?}");
    assert_eq!(bodies.iter().filter(|b| *b == "b").count(), 3, "{bodies:?}");

    // Another :authority does not match the host route.
    let r = h2_request(&send, "GET", "https://other.test/h2/x", &[])
        .await
        .unwrap();
    assert_eq!(r.status, 404, "{r:?}");

    // The backends got ordinary HTTP/1.1 requests with the host and forwarding headers.
    let got = a.requests();
    let req = got.first().expect("backend a got a request");
    assert!(req.path().starts_with("/h2/"), "{req:?}");
    assert_eq!(req.header("x-test"), Some("h2"), "{req:?}");
    assert_eq!(req.header("x-forwarded-proto"), Some("https"), "{req:?}");
    assert_eq!(
        req.header("host").or(req.header("x-forwarded-host")),
        Some("api.example.com"),
        "{req:?}"
    );

    // Logged like HTTP/1.1 requests.
    let log = gw.wait_access_log(7, Duration::from_secs(5)).await;
    let h2_lines: Vec<_> = log
        .iter()
        .filter(|l| l["path"].as_str().is_some_and(|p| p.starts_with("/h2/")))
        .collect();
    assert_eq!(h2_lines.len(), 7, "{log:?}");
    let ok = h2_lines
        .iter()
        .filter(|l| l["status"] == 200 && l["route"] == "api" && l["upstream"] == "u")
        .filter(|l| l["host"].as_str() == Some("api.example.com"))
        .filter(|l| l["backend"].as_str().is_some())
        .count();
    assert_eq!(ok, 6, "{h2_lines:?}");

    // A client offering only http/1.1 gets it.
    let mut s = certs
        .client("api.example.com")
        .with_alpn(&["http/1.1"])
        .connect(port)
        .await
        .unwrap();
    assert_eq!(negotiated(&s).1.as_deref(), Some("http/1.1"));
    let r = h1_request(&mut s, &get_head("api.example.com", "/h2/one"))
        .await
        .unwrap();
    assert_eq!(r.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reencryption_verifies_the_backend_certificate() {
    let certs = ListenerCerts::new();
    let backend_pki = Pki::new("Backend CA");
    let cert = backend_pki.issue(
        "backend",
        "backend.internal",
        &["backend.internal"],
        CertUse::Server,
    );
    let secure = TlsBackend::start("secure", &cert, TlsBackendOptions::default()).await;
    let ca = backend_pki.ca_path_string();
    let rest = route("all", "s", "path_prefix = \"/\"")
        + &tls_upstream(
            "s",
            &secure,
            &format!("sni = \"backend.internal\", ca = \"{ca}\""),
        );
    let gw = Gateway::start(&config(&certs, &rest)).await;

    // Plain in, TLS out.
    let r = gw.get("localhost", "/re").await;
    assert_eq!(r.status, 200, "{r:?}\n{}", gw.stderr());
    assert_eq!(r.text(), "secure");
    assert_eq!(r.header("x-backend-sni"), Some("backend.internal"));
    // TLS in, TLS out.
    let mut s = certs
        .client("localhost")
        .connect(gw.listener_port("https"))
        .await
        .unwrap();
    let r = h1_request(&mut s, &get_head("localhost", "/re2"))
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.text(), "secure");

    let hs = secure.handshakes();
    assert!(!hs.is_empty());
    assert!(
        hs.iter()
            .all(|h| h.sni.as_deref() == Some("backend.internal")),
        "{hs:?}"
    );
    assert!(hs.iter().all(|h| h.version == "TLSv1.3"), "{hs:?}");
    let reqs = secure.requests();
    assert_eq!(reqs.len(), 2, "{reqs:?}");
    assert_eq!(reqs[1].header("x-forwarded-proto"), Some("https"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn untrusted_backend_certificate_gives_502_unless_verify_is_off() {
    let certs = ListenerCerts::new();
    let trusted_pki = Pki::new("Trusted CA");
    let rogue = Pki::new("Rogue CA");
    let self_signed = rogue.self_signed("self", "backend.internal", &["backend.internal"]);
    let other_ca = rogue.issue(
        "rogue",
        "backend.internal",
        &["backend.internal"],
        CertUse::Server,
    );
    let b1 = TlsBackend::start("self-signed", &self_signed, TlsBackendOptions::default()).await;
    let b2 = TlsBackend::start("other-ca", &other_ca, TlsBackendOptions::default()).await;
    let b3 = TlsBackend::start("unchecked", &self_signed, TlsBackendOptions::default()).await;
    let ca = trusted_pki.ca_path_string();
    let rest = route("one", "u1", "path_prefix = \"/one\"")
        + &route("two", "u2", "path_prefix = \"/two\"")
        + &route("sys", "u3", "path_prefix = \"/system-roots\"")
        + &route("off", "u4", "path_prefix = \"/off\"")
        + &tls_upstream(
            "u1",
            &b1,
            &format!("sni = \"backend.internal\", ca = \"{ca}\""),
        )
        + &tls_upstream(
            "u2",
            &b2,
            &format!("sni = \"backend.internal\", ca = \"{ca}\""),
        )
        + &tls_upstream("u3", &b1, "sni = \"backend.internal\"")
        + &tls_upstream("u4", &b3, "verify = false");
    let gw = Gateway::start(&config(&certs, &rest)).await;

    for path in ["/one", "/two", "/system-roots"] {
        let r = gw.get("localhost", path).await;
        assert_eq!(r.status, 502, "{path}: {r:?}");
        assert!(
            !r.text().contains("127.0.0.1"),
            "no backend address in the body"
        );
    }
    assert!(b1.requests().is_empty() && b2.requests().is_empty());
    let r = gw.get("localhost", "/off").await;
    assert_eq!(
        r.status, 200,
        "verify = false accepts any certificate: {r:?}"
    );
    assert_eq!(r.text(), "unchecked");
    // The gateway keeps serving after the failures.
    assert_eq!(gw.get("localhost", "/one").await.status, 502);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_name_mismatch_gives_502() {
    let certs = ListenerCerts::new();
    let pki = Pki::new("Backend CA");
    let cert = pki.issue(
        "backend",
        "backend.internal",
        &["backend.internal"],
        CertUse::Server,
    );
    let b = TlsBackend::start("b", &cert, TlsBackendOptions::default()).await;
    let ca = pki.ca_path_string();
    let rest = route("bad", "wrong", "path_prefix = \"/wrong\"")
        + &route("good", "right", "path_prefix = \"/right\"")
        + &tls_upstream(
            "wrong",
            &b,
            &format!("sni = \"other.internal\", ca = \"{ca}\""),
        )
        + &tls_upstream(
            "right",
            &b,
            &format!("sni = \"backend.internal\", ca = \"{ca}\""),
        );
    let gw = Gateway::start(&config(&certs, &rest)).await;

    let r = gw.get("localhost", "/wrong").await;
    assert_eq!(r.status, 502, "{r:?}");
    let r = gw.get("localhost", "/right").await;
    assert_eq!(r.status, 200, "{r:?}");
    let reqs = b.requests();
    assert_eq!(
        reqs.len(),
        1,
        "only the verified connection carried a request: {reqs:?}"
    );
    assert_eq!(reqs[0].target, "/right");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backends_demanding_a_client_certificate_get_one() {
    let certs = ListenerCerts::new();
    let pki = Pki::new("Internal CA");
    let server = pki.issue(
        "backend",
        "backend.internal",
        &["backend.internal"],
        CertUse::Server,
    );
    let client = pki.issue(
        "client",
        "switchyard-gateway",
        &["switchyard-gateway"],
        CertUse::Client,
    );
    let b = TlsBackend::start(
        "mtls",
        &server,
        TlsBackendOptions {
            client_ca: Some(pki.ca_path().to_path_buf()),
            h2: false,
        },
    )
    .await;
    let ca = pki.ca_path_string();
    let rest = route("with", "with", "path_prefix = \"/with\"")
        + &route("without", "without", "path_prefix = \"/without\"")
        + &tls_upstream(
            "with",
            &b,
            &format!(
                "sni = \"backend.internal\", ca = \"{ca}\", client_cert = \"{}\", client_key = \"{}\"",
                client.cert_path(),
                client.key_path()
            ),
        )
        + &tls_upstream("without", &b, &format!("sni = \"backend.internal\", ca = \"{ca}\""));
    let gw = Gateway::start(&config(&certs, &rest)).await;

    let r = gw.get("localhost", "/with").await;
    assert_eq!(r.status, 200, "{r:?}\n{}", gw.stderr());
    assert_eq!(
        r.header("x-backend-client-cert"),
        Some("switchyard-gateway")
    );
    let hs = b.handshakes();
    assert!(
        hs.iter()
            .any(|h| h.client_cert.as_deref() == Some("switchyard-gateway")),
        "{hs:?}"
    );

    let r = gw.get("localhost", "/without").await;
    assert_eq!(
        r.status, 502,
        "no client certificate: the backend refuses: {r:?}"
    );
    assert_eq!(b.requests().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_to_tls_backends_when_h2_is_set() {
    let certs = ListenerCerts::new();
    let pki = Pki::new("Backend CA");
    let cert = pki.issue(
        "backend",
        "backend.internal",
        &["backend.internal"],
        CertUse::Server,
    );
    let b = TlsBackend::start(
        "h2",
        &cert,
        TlsBackendOptions {
            client_ca: None,
            h2: true,
        },
    )
    .await;
    let ca = pki.ca_path_string();
    let rest = route("two", "h2", "path_prefix = \"/two\"")
        + &route("one", "h1", "path_prefix = \"/one\"")
        + &tls_upstream(
            "h2",
            &b,
            &format!("sni = \"backend.internal\", ca = \"{ca}\", h2 = true"),
        )
        + &tls_upstream(
            "h1",
            &b,
            &format!("sni = \"backend.internal\", ca = \"{ca}\""),
        );
    let gw = Gateway::start(&config(&certs, &rest)).await;

    let r = gw.get("localhost", "/two?x=1").await;
    assert_eq!(r.status, 200, "{r:?}\n{}", gw.stderr());
    assert_eq!(r.header("x-backend-protocol"), Some("HTTP/2"));
    assert_eq!(r.text(), "h2");
    let r = gw.get("localhost", "/one").await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.header("x-backend-protocol"), Some("HTTP/1.1"));
    let reqs = b.requests();
    let two = reqs
        .iter()
        .find(|r| r.protocol == "HTTP/2")
        .expect("an HTTP/2 request");
    assert_eq!(two.target, "/two?x=1");
    assert_eq!(two.method, "GET");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_http_on_the_tls_port_does_not_disturb_other_clients() {
    let certs = ListenerCerts::new();
    let b = Backend::start("b").await;
    let rest = route("all", "u", "path_prefix = \"/\"") + &upstream("u", &[&b], "");
    let gw = Gateway::start(&config(&certs, &rest)).await;
    let port = gw.listener_port("https");

    // A client that connects and says nothing holds only its own connection.
    let _silent = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    // Plain HTTP on the TLS port: the handshake fails and the connection is closed.
    let mut plain = Vec::new();
    for _ in 0..3 {
        let mut c = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .unwrap();
        c.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
            .await
            .unwrap();
        plain.push(c);
    }
    for mut c in plain {
        let mut buf = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(5), c.read_to_end(&mut buf)).await;
        assert!(
            read.is_ok(),
            "plain HTTP on a TLS port must be closed promptly"
        );
        assert!(
            !String::from_utf8_lossy(&buf).contains("HTTP/1.1 200"),
            "no HTTP answer in the clear"
        );
    }
    // Everyone else is served.
    for i in 0..5 {
        let mut s = certs.client("localhost").connect(port).await.unwrap();
        let r = h1_request(&mut s, &get_head("localhost", &format!("/after/{i}")))
            .await
            .unwrap();
        assert_eq!(r.status, 200);
    }
    assert_eq!(gw.get("localhost", "/plain").await.status, 200);
}

#[test]
fn bad_certificate_files_are_configuration_errors_with_positions() {
    let certs = ListenerCerts::new();
    let good = config(
        &certs,
        &(route("r", "u", "path_prefix = \"/\"")
            + "[[upstream]]\nname = \"u\"\nbackends = [ { addr = \"127.0.0.1:9001\" } ]\n"),
    );
    let ok = check_config(&good);
    assert_eq!(ok.output.code, Some(0), "{:?}", ok.output);

    // A missing certificate file: the position of the listener's `tls` value and the path.
    let missing = good.replace(&certs.default.cert_path(), "/nonexistent/default.crt");
    let c = check_config(&missing);
    assert_eq!(c.output.code, Some(1), "{:?}", c.output);
    let (line, col) = line_col(&missing, "{ cert = \"/nonexistent");
    let at = format!("{}:{line}:{col}:", c.path);
    assert!(c.output.stderr.contains(&at), "want {at}: {:?}", c.output);
    assert!(
        c.output.stderr.contains("/nonexistent/default.crt"),
        "{:?}",
        c.output
    );

    // A key that is not the certificate's; a file that is not PEM.
    let mismatch = good.replace(&certs.default.key_path(), &certs.api.key_path());
    let c = check_config(&mismatch);
    assert_eq!(c.output.code, Some(1), "{:?}", c.output);
    assert!(
        c.output.stderr.contains("does not belong"),
        "{:?}",
        c.output
    );
    let not_pem = good.replace(&certs.wildcard.cert_path(), &certs.wildcard.key_path());
    let c = check_config(&not_pem);
    assert_eq!(c.output.code, Some(1), "{:?}", c.output);
    assert!(
        c.output.stderr.contains("sni[1]") && c.output.stderr.contains("no PEM certificate"),
        "{:?}",
        c.output
    );

    // Upstream TLS: a missing CA, a client certificate without its key, and an IP backend
    // that cannot be verified without `sni`.
    let up = |tls: &str| {
        config(
            &certs,
            &(route("r", "u", "path_prefix = \"/\"")
                + &format!("[[upstream]]\nname = \"u\"\nbackends = [ {{ addr = \"127.0.0.1:9001\" }} ]\ntls = {{ {tls} }}\n")),
        )
    };
    for (tls, want) in [
        (
            "sni = \"b.internal\", ca = \"/nonexistent/ca.pem\"",
            "/nonexistent/ca.pem",
        ),
        (
            &format!(
                "sni = \"b.internal\", client_cert = \"{}\"",
                certs.api.cert_path()
            ),
            "client_key",
        ),
        ("verify = true", "tls.sni"),
    ] {
        let text = up(tls);
        let c = check_config(&text);
        assert_eq!(c.output.code, Some(1), "{tls}: {:?}", c.output);
        assert!(c.output.stderr.contains(want), "{tls}: {:?}", c.output);
        let (line, _) = line_col(&text, "name = \"u\"");
        assert!(
            c.output.stderr.contains(&format!("{}:{line}:", c.path)),
            "{tls}: {:?}",
            c.output
        );
    }
    assert_eq!(check_config(&up("verify = false")).output.code, Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirect_https_sends_plain_clients_to_the_tls_listener() {
    let certs = ListenerCerts::new();
    let b = Backend::start("b").await;
    let rest = route("all", "u", "path_prefix = \"/\"") + &upstream("u", &[&b], "");
    let text = config(&certs, &rest).replace(
        "name = \"http\"\n",
        "name = \"http\"\nredirect_https = true\n",
    );
    let gw = Gateway::start(&text).await;
    let tls_port = gw.listener_port("https");
    let r = gw.get("Example.com:8080", "/a/b?x=1").await;
    assert_eq!(r.status, 308);
    assert_eq!(
        r.header("location"),
        Some(format!("https://Example.com:{tls_port}/a/b?x=1").as_str())
    );
    assert_eq!(b.request_count(), 0, "a redirect never reaches a backend");
    // The TLS listener serves normally.
    let mut s = certs.client("localhost").connect(tls_port).await.unwrap();
    let r = h1_request(&mut s, &get_head("localhost", "/a"))
        .await
        .unwrap();
    assert_eq!(r.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_re_reads_listener_certificates() {
    let certs = ListenerCerts::new();
    let b = Backend::start("b").await;
    let rest = route("all", "u", "path_prefix = \"/\"") + &upstream("u", &[&b], "");
    let text = config(&certs, &rest);
    let gw = Gateway::start(&text).await;
    let port = gw.listener_port("https");
    // An open connection made before the reload.
    let mut before = certs.client("localhost").connect(port).await.unwrap();
    assert_eq!(server_common_name(&before).as_deref(), Some("localhost"));

    // New default certificate, same file names as the config: write it over the old one.
    let renewed = certs.pki.issue(
        "renewed",
        "renewed.localhost",
        &["localhost", "127.0.0.1"],
        CertUse::Server,
    );
    std::fs::copy(renewed.cert_path(), certs.default.cert_path()).unwrap();
    std::fs::copy(renewed.key_path(), certs.default.key_path()).unwrap();
    let r = switchyard_tests::request(gw.admin_port(), "POST", "admin", "/admin/reload", &[], b"")
        .await;
    assert_eq!(r.status, 200, "{}", r.text());

    let after = certs.client("localhost").connect(port).await.unwrap();
    assert_eq!(
        server_common_name(&after).as_deref(),
        Some("renewed.localhost"),
        "new handshakes get the new certificate"
    );
    // The connection opened before the reload still works.
    let r = h1_request(&mut before, &get_head("localhost", "/still"))
        .await
        .unwrap();
    assert_eq!(r.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_checks_use_the_upstream_tls_settings() {
    let pki = Pki::new("Backend CA");
    let cert = pki.issue(
        "backend",
        "backend.internal",
        &["backend.internal"],
        CertUse::Server,
    );
    let good = TlsBackend::start("good", &cert, TlsBackendOptions::default()).await;
    let rogue_pki = Pki::new("Rogue CA");
    let rogue_cert = rogue_pki.issue(
        "rogue",
        "backend.internal",
        &["backend.internal"],
        CertUse::Server,
    );
    let rogue = TlsBackend::start("rogue", &rogue_cert, TlsBackendOptions::default()).await;
    let rest = format!(
        "[[upstream]]\nname = \"u\"\nbackends = [ {{ addr = \"{}\" }}, {{ addr = \"{}\" }} ]\nhealth_check = {{ path = \"/health\", interval = \"200ms\", timeout = \"1s\", fails = 1, passes = 1 }}\ntls = {{ sni = \"backend.internal\", ca = \"{}\" }}\n\n{}",
        good.addr_string(),
        rogue.addr_string(),
        pki.ca_path_string(),
        route("all", "u", "path_prefix = \"/\"")
    );
    let gw = Gateway::start_simple("access_log = \"off\"", &rest).await;
    // The probe over TLS fails verification for the rogue backend: it is marked down, and
    // every request goes to the verified one.
    let mut down = false;
    for _ in 0..50 {
        let r = switchyard_tests::request(
            gw.admin_port(),
            "GET",
            "admin",
            "/admin/upstreams",
            &[],
            b"",
        )
        .await;
        let json: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        let backends = json["upstreams"][0]["backends"].as_array().unwrap().clone();
        let healthy: Vec<bool> = backends
            .iter()
            .map(|b| b["healthy"].as_bool().unwrap())
            .collect();
        if healthy == [true, false] {
            down = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        down,
        "the backend failing TLS verification is taken out by its health check"
    );
    for _ in 0..6 {
        assert_eq!(gw.get("x", "/").await.status, 200);
    }
    // The rogue backend's probe fails at the handshake, sooner than the verified one's
    // completes: wait for the latter rather than expect it to have come already.
    let mut probed = false;
    for _ in 0..50 {
        if good.requests().iter().any(|r| r.target == "/health") {
            probed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(probed, "the verified backend was probed over TLS");
}
