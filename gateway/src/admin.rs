//! The admin listener: health, metrics, the JSON admin API and reload. Bound to loopback
//! by default and never reachable through a public listener.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use async_trait::async_trait;
use http::{Method, Response, StatusCode};
use pingora_core::apps::http_app::ServeHttp;
use pingora_core::protocols::http::ServerSession;
use serde_json::json;

use crate::state::Shared;

/// The admin application.
pub struct Admin {
    shared: Arc<Shared>,
    token: Option<String>,
}

impl Admin {
    /// The admin API over `shared`; `/admin/*` needs `token` when set.
    pub fn new(shared: Arc<Shared>, token: Option<String>) -> Self {
        Self { shared, token }
    }

    fn authorized(&self, session: &ServerSession) -> bool {
        let Some(token) = &self.token else {
            return true;
        };
        let given = session
            .req_header()
            .headers
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        constant_time_eq(given.as_bytes(), token.as_bytes())
    }

    fn upstreams_json(&self) -> serde_json::Value {
        let rt = self.shared.runtime.load();
        let now = std::time::Instant::now();
        let upstreams: Vec<_> = rt
            .upstreams
            .iter()
            .map(|u| {
                let backends: Vec<_> = u
                    .backends
                    .iter()
                    .map(|b| {
                        json!({
                            "addr": b.addr,
                            "weight": b.plugin.weight,
                            "effective_weight": b.plugin.effective_weight(),
                            "healthy": b.state.healthy.load(Ordering::Relaxed),
                            "draining": b.state.draining.load(Ordering::Relaxed),
                            "ejected": b.state.is_ejected_at(now),
                            "active_requests": b.plugin.load.in_flight(),
                            "ewma_ms": b.plugin.load.ewma().map(|d| d.as_secs_f64() * 1000.0),
                            "priority": b.priority,
                        })
                    })
                    .collect();
                json!({"name": u.name, "algorithm": u.algorithm, "backends": backends})
            })
            .collect();
        json!({ "upstreams": upstreams })
    }

    fn set_draining(&self, upstream: &str, addr: &str, draining: bool) -> Response<Vec<u8>> {
        let rt = self.shared.runtime.load();
        let Some(u) = rt.upstreams.iter().find(|u| u.name == upstream) else {
            return text(StatusCode::NOT_FOUND, &format!("no upstream {upstream}"));
        };
        let Some(index) = u.backends.iter().position(|b| b.addr == addr) else {
            return text(
                StatusCode::NOT_FOUND,
                &format!("no backend {addr} in upstream {upstream}"),
            );
        };
        // Re-enabling a drained backend starts its slow-start ramp.
        u.set_draining(index, draining);
        log::info!(
            "upstream {upstream}: backend {addr} {}",
            if draining { "draining" } else { "enabled" }
        );
        json_response(
            StatusCode::OK,
            &json!({"upstream": upstream, "backend": addr, "draining": draining}),
        )
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn text(status: StatusCode, body: &str) -> Response<Vec<u8>> {
    let body = format!("{body}\n").into_bytes();
    Response::builder()
        .status(status)
        .header("content-type", "text/plain; charset=utf-8")
        .header("content-length", body.len())
        .body(body)
        .expect("static response parts")
}

fn json_response(status: StatusCode, value: &serde_json::Value) -> Response<Vec<u8>> {
    let body = serde_json::to_vec_pretty(value).unwrap_or_default();
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .header("content-length", body.len())
        .body(body)
        .expect("static response parts")
}

#[async_trait]
impl ServeHttp for Admin {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let method = session.req_header().method.clone();
        let path = session.req_header().uri.path().to_owned();
        match (&method, path.as_str()) {
            (&Method::GET, "/health/live") => text(StatusCode::OK, "live"),
            (&Method::GET, "/health/ready") => {
                if self.shared.is_ready() {
                    text(StatusCode::OK, "ready")
                } else {
                    text(StatusCode::SERVICE_UNAVAILABLE, "shutting down")
                }
            }
            (&Method::GET, "/metrics") => {
                let body = self.shared.metrics.render(&self.shared.runtime.load());
                Response::builder()
                    .status(StatusCode::OK)
                    .header("content-type", "text/plain; version=0.0.4")
                    .header("content-length", body.len())
                    .body(body)
                    .expect("static response parts")
            }
            (_, p) if p.starts_with("/admin/") || p == "/admin" => {
                if !self.authorized(session) {
                    return Response::builder()
                        .status(StatusCode::UNAUTHORIZED)
                        .header("www-authenticate", "Bearer")
                        .header("content-type", "text/plain; charset=utf-8")
                        .header("content-length", 13)
                        .body(b"unauthorized\n".to_vec())
                        .expect("static response parts");
                }
                self.admin(&method, p).await
            }
            _ => text(StatusCode::NOT_FOUND, "not found"),
        }
    }
}

impl Admin {
    async fn admin(&self, method: &Method, path: &str) -> Response<Vec<u8>> {
        let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
        match (method, parts.as_slice()) {
            (&Method::GET, ["admin", "upstreams"]) => {
                json_response(StatusCode::OK, &self.upstreams_json())
            }
            (
                &Method::POST,
                ["admin", "upstreams", u, "backends", addr, action @ ("drain" | "enable")],
            ) => {
                let addr = percent_decode(addr);
                self.set_draining(u, &addr, *action == "drain")
            }
            (&Method::GET, ["admin", "gslb"]) => match self.shared.runtime.load().gslb.as_deref() {
                Some(g) => json_response(StatusCode::OK, &g.admin_json()),
                None => text(StatusCode::NOT_FOUND, "no [gslb] configured"),
            },
            (&Method::POST, ["admin", "gslb", "sites", site, action @ ("drain" | "enable")]) => {
                let site = percent_decode(site);
                let rt = self.shared.runtime.load();
                match rt
                    .gslb
                    .as_deref()
                    .map(|g| g.set_draining(&site, *action == "drain"))
                {
                    Some(Ok(v)) => json_response(StatusCode::OK, &v),
                    Some(Err(e)) => text(StatusCode::NOT_FOUND, &e),
                    None => text(StatusCode::NOT_FOUND, "no [gslb] configured"),
                }
            }
            (_, ["admin", "gslb", ..]) => {
                text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed")
            }
            (&Method::POST, ["admin", "reload"]) => match crate::server::reload(&self.shared) {
                Ok(summary) => text(StatusCode::OK, &summary),
                Err(errors) => text(StatusCode::BAD_REQUEST, &errors),
            },
            (_, ["admin", "upstreams", ..]) | (_, ["admin", "reload"]) => {
                text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed")
            }
            _ => text(StatusCode::NOT_FOUND, "not found"),
        }
    }
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_comparison() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
    }

    #[test]
    fn decodes_addresses_in_paths() {
        assert_eq!(percent_decode("127.0.0.1%3A9001"), "127.0.0.1:9001");
        assert_eq!(percent_decode("127.0.0.1:9001"), "127.0.0.1:9001");
        assert_eq!(percent_decode("%zz"), "%zz");
    }
}
