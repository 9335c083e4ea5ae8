//! End-to-end test harness for Switchyard: runs the real `gateway` binary as a subprocess,
//! in-process HTTP/1.1 test backends that record what they receive, and a raw HTTP/1.1
//! client that sends exact bytes and bounds every read with a timeout.
//!
//! The binary is `$SWITCHYARD_GATEWAY` when set, else `debug/gateway` in cargo's target dir
//! (build it with `cargo build --bin gateway`).

mod backend;
mod client;
pub mod dns;
mod gateway;
pub mod load_backend;
pub mod mmdb;
pub mod stream_backend;
pub mod tls_backend;
mod wire;

pub use backend::{Backend, Behavior, RecordedRequest};
pub use client::{get, request, request_head, send_raw, Client, Response, DEFAULT_IO_TIMEOUT};
pub use gateway::{
    admin_status, check_config, check_config_named, free_port, gateway_bin, json_lines, line_col,
    line_col_nth, run_gateway, simple_config, workspace_root, ConfigCheck, Gateway, Output,
    TempDir, START_TIMEOUT,
};
pub use wire::Headers;

/// An upstream section named `name` with the given backends (weight 1 each) and
/// `algorithm = "round-robin"`, followed by `extra` lines inside the same table.
pub fn upstream(name: &str, backends: &[&Backend], extra: &str) -> String {
    let list: Vec<String> = backends
        .iter()
        .map(|b| format!("  {{ addr = \"{}\" }},", b.addr_string()))
        .collect();
    format!(
        "[[upstream]]\nname = \"{name}\"\nalgorithm = \"round-robin\"\nbackends = [\n{}\n]\n{extra}\n",
        list.join("\n")
    )
}

/// A route section named `name` sending to `upstream`, with `matchers` (TOML lines such as
/// `path_prefix = "/api"`) inside the same table.
pub fn route(name: &str, upstream: &str, matchers: &str) -> String {
    format!("[[route]]\nname = \"{name}\"\n{matchers}\nupstream = \"{upstream}\"\n\n")
}
