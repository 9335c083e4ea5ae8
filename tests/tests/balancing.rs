//! Load balancing through the real gateway: exact round-robin and smooth weighted
//! round-robin sequences.

use switchyard_tests::{route, Backend, Client, Gateway};

async fn sequence(gw: &Gateway, n: usize) -> String {
    let mut s = String::new();
    for _ in 0..n {
        let r = gw.get("lb.test", "/").await;
        assert_eq!(r.status, 200, "body: {}", r.text());
        s.push_str(&r.text());
    }
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_rotates_exactly() {
    let (a, b, c) = (
        Backend::start("a").await,
        Backend::start("b").await,
        Backend::start("c").await,
    );
    let text = format!(
        "[[upstream]]\nname = \"pool\"\nalgorithm = \"round-robin\"\nbackends = [\n  {{ addr = \"{}\" }},\n  {{ addr = \"{}\" }},\n  {{ addr = \"{}\" }},\n]\n\n{}",
        a.addr_string(),
        b.addr_string(),
        c.addr_string(),
        route("all", "pool", "path_prefix = \"/\"")
    );
    let gw = Gateway::start_simple("", &text).await;
    let seq = sequence(&gw, 9).await;
    let first: Vec<char> = seq.chars().take(3).collect();
    let mut sorted = first.clone();
    sorted.sort();
    assert_eq!(
        sorted,
        vec!['a', 'b', 'c'],
        "each backend once per round: {seq}"
    );
    let expected: String = first.iter().cycle().take(9).collect();
    assert_eq!(seq, expected, "exact rotation");

    // The rotation continues across requests sharing one keep-alive connection.
    let mut client = Client::connect(gw.port()).await;
    let mut seq2 = String::new();
    for _ in 0..6 {
        client.send("GET / HTTP/1.1\r\nHost: lb.test\r\n\r\n").await;
        let r = client.read_response().await;
        assert_eq!(r.status, 200);
        seq2.push_str(&r.text());
    }
    let expected: String = first.iter().cycle().take(15).skip(9).collect();
    assert_eq!(seq2, expected, "rotation over one keep-alive connection");
    assert_eq!(
        (a.request_count(), b.request_count(), c.request_count()),
        (5, 5, 5)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weighted_round_robin_is_smooth() {
    let (a, b, c) = (
        Backend::start("a").await,
        Backend::start("b").await,
        Backend::start("c").await,
    );
    let text = format!(
        "[[upstream]]\nname = \"pool\"\nalgorithm = \"weighted-round-robin\"\nbackends = [\n  {{ addr = \"{}\", weight = 5 }},\n  {{ addr = \"{}\", weight = 1 }},\n  {{ addr = \"{}\", weight = 1 }},\n]\n\n{}",
        a.addr_string(),
        b.addr_string(),
        c.addr_string(),
        route("all", "pool", "path_prefix = \"/\"")
    );
    let gw = Gateway::start_simple("", &text).await;
    let seq = sequence(&gw, 14).await;
    assert_eq!(seq, "aabacaaaabacaa", "smooth weighted round-robin order");
}
