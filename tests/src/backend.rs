//! An in-process HTTP/1.1 backend that records what the gateway sends it.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::task::AbortHandle;

use crate::wire::{self, Headers, Wire};

/// What the backend does with the next requests; switch it at any time with
/// [`Backend::set`].
#[derive(Debug, Clone)]
pub enum Behavior {
    /// 200 with the backend's name as the body (`text/plain`). A WebSocket upgrade request
    /// (`Connection: Upgrade`, `Upgrade: websocket`) is answered 101 and then every byte
    /// received is echoed back.
    Ok,
    /// This status with the backend's name as the body.
    Status(u16),
    /// Wait this long, then answer like [`Behavior::Ok`].
    Delay(Duration),
    /// Read the request and never answer (the connection stays open until the peer closes).
    Hang,
    /// Read the request and reset the connection (TCP RST) without answering.
    Reset,
    /// Read the request and close the connection (FIN) without answering.
    Close,
    /// 200 with a JSON body `{"method", "target", "headers": [[name, value], ...]}`.
    EchoHeaders,
    /// 200 with this body (`Content-Length` framing).
    Body(Arc<Vec<u8>>),
    /// This status, these extra headers and this body (`Content-Length` is added).
    Respond {
        /// The status code.
        status: u16,
        /// Header fields sent as written, after the status line.
        headers: Headers,
        /// The body.
        body: Vec<u8>,
    },
    /// 200 with `Transfer-Encoding: chunked`, one chunk per element, waiting `pause` before
    /// each chunk after the first.
    Chunked {
        /// The chunks, each sent as one HTTP chunk.
        chunks: Vec<Vec<u8>>,
        /// The wait between two chunks.
        pause: Duration,
    },
}

/// A request as the backend received it.
#[derive(Debug, Clone)]
pub struct RecordedRequest {
    /// The method.
    pub method: String,
    /// The request target as sent: path and query.
    pub target: String,
    /// The protocol, e.g. `HTTP/1.1`.
    pub version: String,
    /// Header fields in arrival order, names as sent.
    pub headers: Headers,
    /// The body, de-chunked (empty until `complete`).
    pub body: Vec<u8>,
    /// Whether the whole body arrived (the head is recorded as soon as it arrives).
    pub complete: bool,
    /// Which accepted connection (0-based, in accept order) carried it.
    pub connection: usize,
}

impl RecordedRequest {
    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        wire::find_header(&self.headers, name)
    }

    /// Every value of header `name` (case-insensitive).
    pub fn headers_named(&self, name: &str) -> Vec<&str> {
        wire::find_headers(&self.headers, name)
    }

    /// Whether header `name` is present.
    pub fn has_header(&self, name: &str) -> bool {
        self.header(name).is_some()
    }

    /// The path without the query.
    pub fn path(&self) -> &str {
        self.target.split('?').next().unwrap_or("")
    }
}

struct State {
    name: String,
    behavior: Mutex<Behavior>,
    requests: Mutex<Vec<RecordedRequest>>,
    connections: AtomicUsize,
    open_connections: AtomicUsize,
    tasks: Mutex<Vec<AbortHandle>>,
}

/// A test backend on `127.0.0.1:<ephemeral>`: one task per connection, keep-alive,
/// recording every request. Stopped (all its tasks aborted) on drop.
pub struct Backend {
    addr: SocketAddr,
    state: Arc<State>,
}

impl Backend {
    /// Starts a backend named `name` answering with [`Behavior::Ok`].
    pub async fn start(name: &str) -> Backend {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a test backend on 127.0.0.1:0");
        let addr = listener.local_addr().expect("backend local addr");
        let state = Arc::new(State {
            name: name.to_string(),
            behavior: Mutex::new(Behavior::Ok),
            requests: Mutex::new(Vec::new()),
            connections: AtomicUsize::new(0),
            open_connections: AtomicUsize::new(0),
            tasks: Mutex::new(Vec::new()),
        });
        let st = state.clone();
        let accept = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                stream.set_nodelay(true).ok();
                let id = st.connections.fetch_add(1, Ordering::SeqCst);
                st.open_connections.fetch_add(1, Ordering::SeqCst);
                let st2 = st.clone();
                let task = tokio::spawn(async move {
                    serve_connection(Wire::new(stream, None), &st2, id).await;
                    st2.open_connections.fetch_sub(1, Ordering::SeqCst);
                });
                st.tasks.lock().unwrap().push(task.abort_handle());
            }
        });
        state.tasks.lock().unwrap().push(accept.abort_handle());
        Backend { addr, state }
    }

    /// The backend's name (the body of its [`Behavior::Ok`] answers).
    pub fn name(&self) -> &str {
        &self.state.name
    }

    /// The socket address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// `"127.0.0.1:PORT"`, as written in a gateway configuration.
    pub fn addr_string(&self) -> String {
        format!("127.0.0.1:{}", self.addr.port())
    }

    /// Changes what the backend does with the next requests.
    pub fn set(&self, behavior: Behavior) {
        *self.state.behavior.lock().unwrap() = behavior;
    }

    /// Every request received so far (heads are recorded as soon as they arrive).
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.state.requests.lock().unwrap().clone()
    }

    /// How many requests (heads) arrived so far.
    pub fn request_count(&self) -> usize {
        self.state.requests.lock().unwrap().len()
    }

    /// The most recent request, if any.
    pub fn last_request(&self) -> Option<RecordedRequest> {
        self.state.requests.lock().unwrap().last().cloned()
    }

    /// Forgets the recorded requests (the connection counters stay).
    pub fn clear(&self) {
        self.state.requests.lock().unwrap().clear();
    }

    /// How many connections were accepted so far.
    pub fn connections(&self) -> usize {
        self.state.connections.load(Ordering::SeqCst)
    }

    /// How many accepted connections are still open.
    pub fn open_connections(&self) -> usize {
        self.state.open_connections.load(Ordering::SeqCst)
    }

    /// Waits up to `within` until at least `n` requests have arrived; returns the count.
    pub async fn wait_requests(&self, n: usize, within: Duration) -> usize {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let c = self.request_count();
            if c >= n || tokio::time::Instant::now() >= deadline {
                return c;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        for t in self.state.tasks.lock().unwrap().drain(..) {
            t.abort();
        }
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        101 => "Switching Protocols",
        200 => "OK",
        201 => "Created",
        204 => "No Content",
        301 => "Moved Permanently",
        302 => "Found",
        304 => "Not Modified",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Status",
    }
}

fn simple_response(
    state: &State,
    status: u16,
    body: &[u8],
    close: bool,
    head_only: bool,
) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: text/plain\r\nX-Backend: {}\r\nContent-Length: {}\r\n",
        reason(status),
        state.name,
        body.len()
    );
    if close {
        out.push_str("Connection: close\r\n");
    }
    out.push_str("\r\n");
    let mut out = out.into_bytes();
    if !head_only {
        out.extend_from_slice(body);
    }
    out
}

async fn serve_connection(mut w: Wire, state: &State, conn_id: usize) {
    loop {
        let head = match w.read_head().await {
            Ok(Some(h)) => h,
            _ => return,
        };
        let mut parts = head.first_line.split(' ');
        let method = parts.next().unwrap_or("").to_string();
        let target = parts.next().unwrap_or("").to_string();
        let version = parts.next().unwrap_or("").to_string();
        let index = {
            let mut reqs = state.requests.lock().unwrap();
            reqs.push(RecordedRequest {
                method: method.clone(),
                target: target.clone(),
                version: version.clone(),
                headers: head.headers.clone(),
                body: Vec::new(),
                complete: false,
                connection: conn_id,
            });
            reqs.len() - 1
        };
        let Ok(framing) = wire::request_framing(&head.headers) else {
            return;
        };
        let Ok(body) = w.read_body(framing).await else {
            return;
        };
        if let Some(r) = state.requests.lock().unwrap().get_mut(index) {
            r.body = body;
            r.complete = true;
        }
        let close = wire::header_has_token(&head.headers, "connection", "close")
            || (version == "HTTP/1.0"
                && !wire::header_has_token(&head.headers, "connection", "keep-alive"));
        let head_only = method == "HEAD";
        let behavior = state.behavior.lock().unwrap().clone();
        let websocket = wire::header_has_token(&head.headers, "connection", "upgrade")
            && wire::header_has_token(&head.headers, "upgrade", "websocket");
        let reply = match behavior {
            Behavior::Ok if websocket => {
                let resp = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n";
                if w.write_all(resp).await.is_err() {
                    return;
                }
                // Echo whatever arrives, including bytes that came with the head.
                loop {
                    let pending = w.take_buffered();
                    if !pending.is_empty() && w.write_all(&pending).await.is_err() {
                        return;
                    }
                    match w.fill().await {
                        Ok(0) | Err(_) => return,
                        Ok(_) => {}
                    }
                }
            }
            Behavior::Ok => simple_response(state, 200, state.name.as_bytes(), close, head_only),
            Behavior::Status(s) => {
                simple_response(state, s, state.name.as_bytes(), close, head_only)
            }
            Behavior::Delay(d) => {
                tokio::time::sleep(d).await;
                simple_response(state, 200, state.name.as_bytes(), close, head_only)
            }
            Behavior::Hang => {
                // Keep the connection open, unanswered, until the peer goes away.
                let _ = tokio::time::timeout(Duration::from_secs(300), async {
                    loop {
                        match w.fill().await {
                            Ok(0) | Err(_) => return,
                            Ok(_) => {
                                w.take_buffered();
                            }
                        }
                    }
                })
                .await;
                return;
            }
            Behavior::Reset => {
                w.stream.set_zero_linger().ok();
                return;
            }
            Behavior::Close => return,
            Behavior::EchoHeaders => {
                let json = serde_json::json!({
                    "method": method,
                    "target": target,
                    "headers": head.headers.iter().map(|(n, v)| vec![n.clone(), v.clone()]).collect::<Vec<_>>(),
                });
                let body = json.to_string().into_bytes();
                let mut out = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nX-Backend: {}\r\nContent-Length: {}\r\n{}\r\n",
                    state.name,
                    body.len(),
                    if close { "Connection: close\r\n" } else { "" }
                )
                .into_bytes();
                if !head_only {
                    out.extend_from_slice(&body);
                }
                out
            }
            Behavior::Body(body) => simple_response(state, 200, &body, close, head_only),
            Behavior::Respond {
                status,
                headers,
                body,
            } => {
                let mut out = format!("HTTP/1.1 {status} {}\r\n", reason(status));
                for (n, v) in &headers {
                    out.push_str(&format!("{n}: {v}\r\n"));
                }
                out.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
                let mut out = out.into_bytes();
                if !head_only {
                    out.extend_from_slice(&body);
                }
                out
            }
            Behavior::Chunked { chunks, pause } => {
                let head = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nX-Backend: {}\r\nTransfer-Encoding: chunked\r\n{}\r\n",
                    state.name,
                    if close { "Connection: close\r\n" } else { "" }
                );
                if w.write_all(head.as_bytes()).await.is_err() {
                    return;
                }
                for (i, chunk) in chunks.iter().enumerate() {
                    if i > 0 {
                        tokio::time::sleep(pause).await;
                    }
                    if chunk.is_empty() {
                        continue;
                    }
                    let mut c = format!("{:x}\r\n", chunk.len()).into_bytes();
                    c.extend_from_slice(chunk);
                    c.extend_from_slice(b"\r\n");
                    if w.write_all(&c).await.is_err() {
                        return;
                    }
                }
                b"0\r\n\r\n".to_vec()
            }
        };
        if w.write_all(&reply).await.is_err() || close {
            return;
        }
    }
}
