//! `gateway --demo`: three in-process backends behind 127.0.0.1:8080, admin on
//! 127.0.0.1:9901, and a banner showing how to try it.

use std::time::{Duration, Instant};

use switchyard_tests::{Client, Gateway, TempDir};

fn port_free(port: u16) -> bool {
    std::net::TcpListener::bind(("127.0.0.1", port)).is_ok()
}

/// (url, host header) pairs from the `curl` lines of the banner that point at port 8080.
fn curl_targets(banner: &str) -> Vec<(String, Option<String>)> {
    let mut out = Vec::new();
    for line in banner.lines().filter(|l| l.contains("curl")) {
        let words: Vec<&str> = line
            .split_whitespace()
            .map(|w| w.trim_matches(|c| c == '\'' || c == '"' || c == '`'))
            .collect();
        // A `-H 'Host: name'` on the same line (the space after the colon tells it from a
        // URL's "localhost:8080").
        let host = line.to_ascii_lowercase().find("host: ").map(|i| {
            line[i + 6..]
                .trim_start()
                .split(|c: char| c == '\'' || c == '"' || c.is_whitespace())
                .next()
                .unwrap_or("")
                .to_string()
        });
        for w in &words {
            if w.starts_with("http://127.0.0.1:8080") || w.starts_with("http://localhost:8080") {
                out.push((w.to_string(), host.clone()));
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_starts_and_answers() {
    if !port_free(8080) || !port_free(9901) {
        eprintln!("note: 127.0.0.1:8080 or :9901 is busy; skipping the --demo test");
        return;
    }
    let dir = TempDir::new();
    let gw = Gateway::launch(
        &["--demo"],
        9901,
        vec![("http".to_string(), 8080)],
        dir.path().join("none"),
        dir,
    )
    .await;

    let start = Instant::now();
    let mut banner = format!("{}\n{}", gw.stdout(), gw.stderr());
    while !banner.contains("curl") && start.elapsed() < Duration::from_secs(3) {
        tokio::time::sleep(Duration::from_millis(50)).await;
        banner = format!("{}\n{}", gw.stdout(), gw.stderr());
    }
    assert!(
        banner.contains("curl"),
        "the banner shows a curl command:\n{banner}"
    );

    let targets = curl_targets(&banner);
    assert!(
        !targets.is_empty(),
        "the banner's curl commands point at 127.0.0.1:8080:\n{banner}"
    );
    let (url, host) = &targets[0];
    let rest = url.trim_start_matches("http://");
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let host = host.clone().unwrap_or_else(|| authority.to_string());
    let mut c = Client::connect(8080).await;
    c.send(format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    ))
    .await;
    let r = c.read_response().await;
    assert!(
        (200..300).contains(&r.status),
        "the banner's first curl ({url}, Host {host}) answers 2xx, got {}: {}",
        r.status,
        r.text()
    );
}
