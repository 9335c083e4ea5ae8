//! A backend that answers per path: a load report (`{"cpu": .., "memory": ..}`) on its load
//! path, its name everywhere else, optionally after a per-path delay. For the
//! `resource-based` algorithm, whose gateway polls each backend's load endpoint while
//! traffic goes to the other paths, and for holding slow requests on one path while others
//! answer at once.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::task::AbortHandle;

use crate::wire::{self, Wire};

/// What one path answers.
#[derive(Debug, Clone)]
struct Answer {
    status: u16,
    content_type: &'static str,
    body: Vec<u8>,
    delay: Duration,
}

struct State {
    name: String,
    /// Answers by path (without the query); other paths get 200 and the name.
    paths: Mutex<HashMap<String, Answer>>,
    /// Requests received, by path.
    counts: Mutex<HashMap<String, usize>>,
    tasks: Mutex<Vec<AbortHandle>>,
}

/// A keep-alive HTTP/1.1 backend on `127.0.0.1:<ephemeral>` whose answer depends on the
/// path (set with [`LoadBackend::set_load`], [`LoadBackend::set_path`] and
/// [`LoadBackend::set_delay`]). Stopped (all its tasks aborted) on drop.
pub struct LoadBackend {
    addr: SocketAddr,
    state: Arc<State>,
}

impl LoadBackend {
    /// Starts a backend named `name` that answers `GET /load` with
    /// `{"cpu": cpu, "memory": memory}` and any other path with 200 and its name.
    pub async fn start(name: &str, cpu: f64, memory: f64) -> LoadBackend {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a test backend on 127.0.0.1:0");
        let addr = listener.local_addr().expect("backend local addr");
        let state = Arc::new(State {
            name: name.to_string(),
            paths: Mutex::new(HashMap::new()),
            counts: Mutex::new(HashMap::new()),
            tasks: Mutex::new(Vec::new()),
        });
        let st = state.clone();
        let accept = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                stream.set_nodelay(true).ok();
                let st2 = st.clone();
                let task = tokio::spawn(async move {
                    serve(Wire::new(stream, None), &st2).await;
                });
                st.tasks.lock().unwrap().push(task.abort_handle());
            }
        });
        state.tasks.lock().unwrap().push(accept.abort_handle());
        let backend = LoadBackend { addr, state };
        backend.set_load(cpu, memory);
        backend
    }

    /// The backend's name (the body of its answers off the load path).
    pub fn name(&self) -> &str {
        &self.state.name
    }

    /// `"127.0.0.1:PORT"`, as written in a gateway configuration.
    pub fn addr_string(&self) -> String {
        format!("127.0.0.1:{}", self.addr.port())
    }

    /// Changes the report `GET /load` answers.
    pub fn set_load(&self, cpu: f64, memory: f64) {
        let body = serde_json::json!({ "cpu": cpu, "memory": memory }).to_string();
        self.set_path("/load", 200, "application/json", body.into_bytes());
    }

    /// Makes `path` (without query) answer `status` with this content type and body.
    pub fn set_path(&self, path: &str, status: u16, content_type: &'static str, body: Vec<u8>) {
        self.state.paths.lock().unwrap().insert(
            path.to_string(),
            Answer {
                status,
                content_type,
                body,
                delay: Duration::ZERO,
            },
        );
    }

    /// Makes `path` (without query) answer 200 and the backend's name after `delay`.
    pub fn set_delay(&self, path: &str, delay: Duration) {
        self.state.paths.lock().unwrap().insert(
            path.to_string(),
            Answer {
                status: 200,
                content_type: "text/plain",
                body: self.state.name.as_bytes().to_vec(),
                delay,
            },
        );
    }

    /// How many requests for `path` (without query) arrived so far.
    pub fn count(&self, path: &str) -> usize {
        self.state
            .counts
            .lock()
            .unwrap()
            .get(path)
            .copied()
            .unwrap_or(0)
    }

    /// How many requests for paths other than `/load` arrived so far.
    pub fn traffic(&self) -> usize {
        self.state
            .counts
            .lock()
            .unwrap()
            .iter()
            .filter(|(p, _)| p.as_str() != "/load")
            .map(|(_, n)| n)
            .sum()
    }
}

impl Drop for LoadBackend {
    fn drop(&mut self) {
        for t in self.state.tasks.lock().unwrap().drain(..) {
            t.abort();
        }
    }
}

async fn serve(mut w: Wire, state: &State) {
    loop {
        let Ok(Some(head)) = w.read_head().await else {
            return;
        };
        let mut parts = head.first_line.split(' ');
        let method = parts.next().unwrap_or("").to_string();
        let target = parts.next().unwrap_or("");
        let version = parts.next().unwrap_or("");
        let path = target.split('?').next().unwrap_or("").to_string();
        *state
            .counts
            .lock()
            .unwrap()
            .entry(path.clone())
            .or_default() += 1;
        let Ok(framing) = wire::request_framing(&head.headers) else {
            return;
        };
        if w.read_body(framing).await.is_err() {
            return;
        }
        let close = wire::header_has_token(&head.headers, "connection", "close")
            || (version == "HTTP/1.0"
                && !wire::header_has_token(&head.headers, "connection", "keep-alive"));
        let answer = state
            .paths
            .lock()
            .unwrap()
            .get(&path)
            .cloned()
            .unwrap_or_else(|| Answer {
                status: 200,
                content_type: "text/plain",
                body: state.name.as_bytes().to_vec(),
                delay: Duration::ZERO,
            });
        if !answer.delay.is_zero() {
            tokio::time::sleep(answer.delay).await;
        }
        let mut out = format!(
            "HTTP/1.1 {} X\r\nContent-Type: {}\r\nX-Backend: {}\r\nContent-Length: {}\r\n{}\r\n",
            answer.status,
            answer.content_type,
            state.name,
            answer.body.len(),
            if close { "Connection: close\r\n" } else { "" }
        )
        .into_bytes();
        if method != "HEAD" {
            out.extend_from_slice(&answer.body);
        }
        if w.write_all(&out).await.is_err() || close {
            return;
        }
    }
}
