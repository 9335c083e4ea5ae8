//! Prometheus metrics. The full metric set grows with the metrics issue; this renders what
//! the gateway tracks today from its shared state.

use std::fmt::Write;
use std::sync::atomic::Ordering;

use crate::state::Shared;

/// Render the metrics in the Prometheus text format.
pub fn render(shared: &Shared) -> Vec<u8> {
    let rt = shared.runtime.load();
    let mut out = String::new();
    out.push_str(
        "# HELP switchyard_backend_healthy Whether a backend passes its health checks (0/1).\n",
    );
    out.push_str("# TYPE switchyard_backend_healthy gauge\n");
    for u in &rt.upstreams {
        for b in &u.backends {
            let _ = writeln!(
                out,
                "switchyard_backend_healthy{{upstream=\"{}\",backend=\"{}\"}} {}",
                escape(&u.name),
                escape(&b.addr),
                u8::from(b.state.healthy.load(Ordering::Relaxed))
            );
        }
    }
    out.push_str("# HELP switchyard_backend_active_requests Requests in flight to a backend.\n");
    out.push_str("# TYPE switchyard_backend_active_requests gauge\n");
    for u in &rt.upstreams {
        for b in &u.backends {
            let _ = writeln!(
                out,
                "switchyard_backend_active_requests{{upstream=\"{}\",backend=\"{}\"}} {}",
                escape(&u.name),
                escape(&b.addr),
                b.plugin.load.in_flight()
            );
        }
    }
    out.into_bytes()
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}
