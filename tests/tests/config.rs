//! `gateway -c FILE -t`: validation, error positions, exit codes.

use std::time::Duration;

use switchyard_tests::{check_config, line_col, run_gateway, workspace_root, ConfigCheck};

/// A valid configuration; each test breaks one thing in it by string replacement.
const GOOD: &str = r#"[server]
threads = 1
grace_period = "1s"
max_header_bytes = 65536

[admin]
addr = "127.0.0.1:19901"

[[listener]]
name = "http"
addr = "127.0.0.1:PORT"

[[route]]
name = "api"
path_prefix = "/api"
upstream = "api"

[[route]]
name = "rest"
path_prefix = "/"
upstream = "web"

[[upstream]]
name = "api"
algorithm = "round-robin"
backends = [
  { addr = "127.0.0.1:9001", weight = 2 },
  { addr = "127.0.0.1:9002" },
]
read_timeout = "5s"

[[upstream]]
name = "web"
algorithm = "weighted-round-robin"
backends = [ { addr = "127.0.0.1:9003" } ]
"#;

fn good() -> String {
    GOOD.replace("PORT", "18080")
}

/// Replaces the single occurrence of `from` in the good config with `to`.
fn broken(from: &str, to: &str) -> String {
    let g = good();
    assert_eq!(
        g.matches(from).count(),
        1,
        "test bug: {from:?} must occur once"
    );
    g.replacen(from, to, 1)
}

fn show(c: &ConfigCheck) -> String {
    format!(
        "exit code {:?} (timed out: {})\n--- stdout ---\n{}\n--- stderr ---\n{}",
        c.output.code, c.output.timed_out, c.output.stdout, c.output.stderr
    )
}

/// Exit code 1, no panic, the file named.
fn assert_rejected(c: &ConfigCheck) {
    assert_eq!(
        c.output.code,
        Some(1),
        "a bad config must exit 1; {}",
        show(c)
    );
    let all = format!("{}{}", c.output.stdout, c.output.stderr);
    assert!(
        !all.contains("panicked"),
        "a user error must not panic; {}",
        show(c)
    );
    assert!(
        !all.contains("RUST_BACKTRACE"),
        "no backtrace hint for a user error; {}",
        show(c)
    );
    assert!(
        !all.contains("configuration ok"),
        "a bad config must not say ok; {}",
        show(c)
    );
    assert!(
        c.output.stderr.contains(&c.path),
        "stderr must name the file {}; {}",
        c.path,
        show(c)
    );
}

/// stderr holds `FILE:LINE:COLUMN` for one of the candidate positions in `text`: each is
/// the first occurrence of a needle, moved right by an offset (to point inside it, e.g. at
/// the value after `key = `).
fn assert_points_at(c: &ConfigCheck, text: &str, candidates: &[(&str, usize)]) {
    let wanted: Vec<String> = candidates
        .iter()
        .map(|(needle, offset)| {
            let (l, col) = line_col(text, needle);
            format!("{}:{l}:{}", c.path, col + offset)
        })
        .collect();
    assert!(
        wanted.iter().any(|w| c.output.stderr.contains(w.as_str())),
        "stderr must name the position, one of {wanted:?}; {}",
        show(c)
    );
}

#[test]
fn good_config_prints_ok_and_exits_0() {
    let c = check_config(&good());
    assert_eq!(c.output.code, Some(0), "{}", show(&c));
    assert!(
        c.output.stdout.contains("configuration ok")
            || c.output.stderr.contains("configuration ok"),
        "{}",
        show(&c)
    );
}

#[test]
fn test_mode_never_binds_listeners() {
    // Hold the listener's port: `-t` must still succeed because it never listens.
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = held.local_addr().unwrap().port();
    let c = check_config(&GOOD.replace("PORT", &port.to_string()));
    assert_eq!(c.output.code, Some(0), "{}", show(&c));
    assert!(
        c.output.stdout.contains("configuration ok")
            || c.output.stderr.contains("configuration ok"),
        "{}",
        show(&c)
    );
}

#[test]
fn unknown_key_in_server_names_its_position() {
    let text = broken("threads = 1\n", "threads = 1\nbogus_key = 1\n");
    let c = check_config(&text);
    assert_rejected(&c);
    assert_points_at(&c, &text, &[("bogus_key", 0)]);
    assert!(c.output.stderr.contains("bogus_key"), "{}", show(&c));
}

#[test]
fn unknown_key_in_route_names_its_position() {
    let text = broken("path_prefix = \"/api\"", "path_prefx = \"/api\"");
    let c = check_config(&text);
    assert_rejected(&c);
    assert_points_at(&c, &text, &[("path_prefx", 0)]);
}

#[test]
fn unknown_key_in_backend_inline_table_names_its_position() {
    let text = broken(
        "{ addr = \"127.0.0.1:9002\" }",
        "{ addr = \"127.0.0.1:9002\", wieght = 2 }",
    );
    let c = check_config(&text);
    assert_rejected(&c);
    assert_points_at(&c, &text, &[("wieght", 0)]);
}

#[test]
fn wrong_type_names_its_position() {
    let text = broken("threads = 1", "threads = \"two\"");
    let c = check_config(&text);
    assert_rejected(&c);
    assert_points_at(&c, &text, &[("threads", 0), ("\"two\"", 0)]);
}

#[test]
fn bad_duration_names_its_position() {
    let text = broken("read_timeout = \"5s\"", "read_timeout = \"5 parsecs\"");
    let c = check_config(&text);
    assert_rejected(&c);
    assert_points_at(&c, &text, &[("read_timeout", 0), ("read_timeout = ", 15)]);
}

#[test]
fn bad_server_duration_names_its_position() {
    let text = broken("grace_period = \"1s\"", "grace_period = \"soon\"");
    let c = check_config(&text);
    assert_rejected(&c);
    assert_points_at(&c, &text, &[("grace_period", 0), ("\"soon\"", 0)]);
}

#[test]
fn duplicate_route_name_is_rejected() {
    let text = broken("name = \"rest\"", "name = \"api\"");
    let c = check_config(&text);
    assert_rejected(&c);
    assert!(
        c.output.stderr.contains("api"),
        "must name the duplicate; {}",
        show(&c)
    );
    assert!(
        c.output.stderr.to_lowercase().contains("route"),
        "must say it is a route; {}",
        show(&c)
    );
}

#[test]
fn duplicate_upstream_name_is_rejected() {
    let text = broken("name = \"web\"", "name = \"api\"");
    // The route "rest" now names a missing upstream too; rename it so that only the
    // duplicate is wrong.
    let text = text.replacen("upstream = \"web\"", "upstream = \"api\"", 1);
    let c = check_config(&text);
    assert_rejected(&c);
    assert!(
        c.output.stderr.contains("api"),
        "must name the duplicate; {}",
        show(&c)
    );
    assert!(
        c.output.stderr.to_lowercase().contains("upstream"),
        "must say it is an upstream; {}",
        show(&c)
    );
}

#[test]
fn route_naming_a_missing_upstream_is_rejected() {
    let text = broken("upstream = \"web\"", "upstream = \"nowhere\"");
    let c = check_config(&text);
    assert_rejected(&c);
    assert!(
        c.output.stderr.contains("nowhere"),
        "must name the missing upstream; {}",
        show(&c)
    );
    assert!(
        c.output.stderr.contains("upstream"),
        "must name the key; {}",
        show(&c)
    );
}

#[test]
fn route_naming_a_missing_listener_is_rejected() {
    let text = broken(
        "name = \"rest\"\n",
        "name = \"rest\"\nlisteners = [\"nolistener\"]\n",
    );
    let c = check_config(&text);
    assert_rejected(&c);
    assert!(
        c.output.stderr.contains("nolistener"),
        "must name the missing listener; {}",
        show(&c)
    );
    assert!(
        c.output.stderr.contains("listener"),
        "must name the key; {}",
        show(&c)
    );
}

#[test]
fn weight_zero_names_its_position() {
    let text = broken("weight = 2", "weight = 0");
    let c = check_config(&text);
    assert_rejected(&c);
    assert_points_at(
        &c,
        &text,
        &[
            ("weight = 0", 0),
            ("weight = 0", 9),
            ("{ addr = \"127.0.0.1:9001\"", 0),
        ],
    );
}

#[test]
fn upstream_without_backends_names_its_position() {
    let text = broken(
        "backends = [ { addr = \"127.0.0.1:9003\" } ]",
        "backends = []",
    );
    let c = check_config(&text);
    assert_rejected(&c);
    assert_points_at(&c, &text, &[("backends = []", 0), ("backends = []", 11)]);
}

#[test]
fn bad_regex_names_its_position() {
    let text = broken("path_prefix = \"/api\"", "path_regex = \"^/v[0-9+/items(\"");
    let c = check_config(&text);
    assert_rejected(&c);
    assert_points_at(&c, &text, &[("path_regex", 0), ("\"^/v[0-9+/items(\"", 0)]);
}

#[test]
fn unknown_algorithm_is_rejected() {
    let text = broken("algorithm = \"round-robin\"", "algorithm = \"roulette\"");
    let c = check_config(&text);
    assert_rejected(&c);
    assert_points_at(
        &c,
        &text,
        &[
            ("algorithm = \"roulette\"", 0),
            ("algorithm = \"roulette\"", 12),
        ],
    );
}

#[test]
fn two_independent_errors_are_both_printed() {
    let text = broken("weight = 2", "weight = 0").replacen(
        "upstream = \"web\"",
        "upstream = \"nowhere\"",
        1,
    );
    let c = check_config(&text);
    assert_rejected(&c);
    assert_points_at(
        &c,
        &text,
        &[
            ("weight = 0", 0),
            ("weight = 0", 9),
            ("{ addr = \"127.0.0.1:9001\"", 0),
        ],
    );
    assert!(
        c.output.stderr.contains("nowhere"),
        "the second error (missing upstream) must be printed too; {}",
        show(&c)
    );
    let error_lines = c
        .output
        .stderr
        .lines()
        .filter(|l| l.contains(&c.path))
        .count();
    assert!(
        error_lines >= 2,
        "two errors, each naming the file; {}",
        show(&c)
    );
}

#[test]
fn toml_syntax_error_names_its_line() {
    let text = broken("[admin]", "[admin");
    let c = check_config(&text);
    assert_rejected(&c);
    let (line, _) = line_col(&text, "[admin");
    let want = format!("{}:{line}:", c.path);
    assert!(c.output.stderr.contains(&want), "want {want}; {}", show(&c));
}

#[test]
fn missing_file_exits_1_without_panic() {
    let o = run_gateway(
        &["-c", "/nonexistent/switchyard/none.toml", "-t"],
        Duration::from_secs(10),
    );
    assert_eq!(o.code, Some(1), "{o:?}");
    assert!(
        o.stderr.contains("/nonexistent/switchyard/none.toml"),
        "{o:?}"
    );
    assert!(!o.stderr.contains("panicked"), "{o:?}");
}

#[test]
fn every_shipped_config_passes_the_test_mode() {
    let dir = workspace_root().join("conf");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "toml"))
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    if files.is_empty() {
        eprintln!("note: no conf/*.toml yet; nothing to check");
        return;
    }
    for f in files {
        let path = f.to_string_lossy().into_owned();
        let o = run_gateway(&["-c", &path, "-t"], Duration::from_secs(10));
        assert_eq!(o.code, Some(0), "{path} must pass -t: {o:?}");
        assert!(
            o.stdout.contains("configuration ok") || o.stderr.contains("configuration ok"),
            "{path}: {o:?}"
        );
    }
}

#[test]
fn errors_in_different_tables_are_all_printed() {
    let text = broken("threads = 1\n", "threads = 1\nbogus_key = 1\n").replacen(
        "read_timeout = \"5s\"",
        "read_timeout = \"5 parsecs\"",
        1,
    );
    let c = check_config(&text);
    assert_rejected(&c);
    assert_points_at(&c, &text, &[("bogus_key", 0)]);
    assert_points_at(&c, &text, &[("read_timeout", 0), ("read_timeout = ", 15)]);
}

#[test]
fn errors_in_the_same_table_are_all_printed() {
    // The contract: `-t` prints *every* error. Two independent mistakes in [server].
    let text = broken("threads = 1\n", "threads = \"two\"\nbogus_key = 1\n");
    let c = check_config(&text);
    assert_rejected(&c);
    assert_points_at(&c, &text, &[("bogus_key", 0)]);
    assert_points_at(&c, &text, &[("threads", 0), ("\"two\"", 0)]);
}
