//! `gateway --demo`: the embedded configuration and three demo backends served in process.

use async_trait::async_trait;
use http::{Response, StatusCode};
use pingora_core::apps::http_app::{HttpServer, ServeHttp};
use pingora_core::protocols::http::ServerSession;
use pingora_core::services::listening::Service;

/// The embedded demo configuration (the same text as `conf/demo.toml`).
pub const DEMO_TOML: &str = include_str!("../../conf/demo.toml");

/// The name errors in the embedded configuration are reported under.
pub const DEMO_NAME: &str = "conf/demo.toml (embedded)";

/// Addresses of the demo backends (they must match `conf/demo.toml`).
pub const DEMO_BACKENDS: [&str; 3] = ["127.0.0.1:18081", "127.0.0.1:18082", "127.0.0.1:18083"];

/// A demo backend: answers every request with a small JSON description of it.
pub struct DemoBackend {
    name: String,
}

#[async_trait]
impl ServeHttp for DemoBackend {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let req = session.req_header();
        let headers: serde_json::Map<String, serde_json::Value> = req
            .headers
            .iter()
            .filter_map(|(k, v)| Some((k.as_str().to_owned(), v.to_str().ok()?.into())))
            .collect();
        let body = serde_json::json!({
            "backend": self.name,
            "method": req.method.as_str(),
            "path": req.uri.path_and_query().map_or("/", |p| p.as_str()),
            "headers": headers,
        });
        let mut body = serde_json::to_vec_pretty(&body).unwrap_or_default();
        body.push(b'\n');
        Response::builder()
            .status(StatusCode::OK)
            .header("content-type", "application/json")
            .header("content-length", body.len())
            .header("x-demo-backend", self.name.as_str())
            .body(body)
            .expect("static response parts")
    }
}

/// The three demo backend services.
pub fn backend_services() -> Vec<Service<HttpServer<DemoBackend>>> {
    DEMO_BACKENDS
        .iter()
        .enumerate()
        .map(|(i, addr)| {
            let name = format!("demo-{}", i + 1);
            let mut service = Service::new(name.clone(), HttpServer::new_app(DemoBackend { name }));
            service.add_tcp(addr);
            service.threads = Some(1);
            service
        })
        .collect()
}

/// The banner printed when the demo starts.
pub fn banner() -> String {
    "\
Switchyard demo: gateway on http://127.0.0.1:8080, admin on http://127.0.0.1:9901
three demo backends (demo-1, demo-2, demo-3) on 127.0.0.1:18081-18083, in-memory sessions.

Try:
  curl -s http://127.0.0.1:8080/                      # round robin across demo-1..3
  curl -s http://127.0.0.1:8080/api/users/7           # weighted (5:1:1), prefix stripped
  curl -si http://127.0.0.1:8080/nowhere -H 'Host: other.example' | head -1
  curl -s http://127.0.0.1:9901/health/ready
  curl -s http://127.0.0.1:9901/admin/upstreams
  curl -s -X POST http://127.0.0.1:9901/admin/upstreams/web/backends/127.0.0.1:18082/drain
Stop with Ctrl-C.
"
    .to_owned()
}
