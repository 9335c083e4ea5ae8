//! The example plugin crate (`plugins/examples/canary`) through the real gateway: registered
//! by one call in the binary, selected by its name, configured through `options`.

use switchyard_tests::{check_config, route, Backend, Gateway};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn canary_plugin_sends_its_share_to_the_canary() {
    let a = Backend::start("a").await;
    let b = Backend::start("b").await;
    let c = Backend::start("c").await;
    let text = format!(
        "[[upstream]]\nname = \"u\"\nalgorithm = \"canary\"\noptions = {{ canary = \"{}\", percent = 20 }}\nbackends = [ {{ addr = \"{}\" }}, {{ addr = \"{}\" }}, {{ addr = \"{}\" }} ]\n\n{}",
        c.addr_string(),
        a.addr_string(),
        b.addr_string(),
        c.addr_string(),
        route("all", "u", "path_prefix = \"/\"")
    );
    let gw = Gateway::start_simple("access_log = \"off\"", &text).await;
    let mut counts = [0usize; 3];
    for _ in 0..100 {
        let r = gw.get("canary.test", "/").await;
        assert_eq!(r.status, 200);
        match r.text().as_str() {
            "a" => counts[0] += 1,
            "b" => counts[1] += 1,
            "c" => counts[2] += 1,
            other => panic!("unexpected body {other:?}"),
        }
    }
    assert_eq!(
        counts[2], 20,
        "the canary gets exactly its share: {counts:?}"
    );
    assert_eq!(counts[0], 40, "{counts:?}");
    assert_eq!(counts[1], 40, "{counts:?}");
}

#[test]
fn plugin_options_are_checked_with_a_position() {
    let check = check_config(
        "[[listener]]\nname = \"h\"\naddr = \"127.0.0.1:1\"\n[[route]]\nname = \"r\"\nupstream = \"u\"\n[[upstream]]\nname = \"u\"\nalgorithm = \"canary\"\noptions = { canary = \"127.0.0.1:7\", percent = 5 }\nbackends = [ { addr = \"127.0.0.1:9\" } ]\n",
    );
    let out = check.output;
    assert_eq!(out.code, Some(1), "{}", out.stderr);
    assert!(out.stderr.contains(":10:11:"), "{}", out.stderr);
    assert!(
        out.stderr.contains("not one of the upstream's backends"),
        "{}",
        out.stderr
    );
}
