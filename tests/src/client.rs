//! A raw HTTP/1.1 client: the test writes the exact bytes, the client parses what comes back.

use std::time::{Duration, Instant};

use tokio::net::TcpStream;

use crate::wire::{self, Headers, Wire};

/// How long any single read or write of the client may take unless changed.
pub const DEFAULT_IO_TIMEOUT: Duration = Duration::from_secs(5);

/// A response as it arrived.
#[derive(Debug, Clone)]
pub struct Response {
    /// The protocol of the status line, e.g. `HTTP/1.1`.
    pub version: String,
    /// The status code.
    pub status: u16,
    /// The reason phrase (may be empty).
    pub reason: String,
    /// The header fields, in order, names as sent.
    pub headers: Headers,
    /// The body, de-chunked.
    pub body: Vec<u8>,
}

impl Response {
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

    /// The body as (lossy) UTF-8 text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// One client connection with a timeout on every read and write.
pub struct Client {
    wire: Wire,
}

impl Client {
    /// Connects to `127.0.0.1:port`; panics after [`DEFAULT_IO_TIMEOUT`].
    pub async fn connect(port: u16) -> Client {
        match Client::try_connect(port, DEFAULT_IO_TIMEOUT).await {
            Ok(c) => c,
            Err(e) => panic!("cannot connect to 127.0.0.1:{port}: {e}"),
        }
    }

    /// Connects to `127.0.0.1:port` within `timeout`.
    pub async fn try_connect(port: u16, timeout: Duration) -> Result<Client, String> {
        let stream =
            match tokio::time::timeout(timeout, TcpStream::connect(("127.0.0.1", port))).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => return Err(e.to_string()),
                Err(_) => return Err(format!("connect timed out after {timeout:?}")),
            };
        stream.set_nodelay(true).ok();
        Ok(Client {
            wire: Wire::new(stream, Some(DEFAULT_IO_TIMEOUT)),
        })
    }

    /// Changes the timeout applied to every later read and write.
    pub fn set_timeout(&mut self, timeout: Duration) {
        self.wire.timeout = Some(timeout);
    }

    /// Sends `data` as is; panics on error or timeout.
    pub async fn send(&mut self, data: impl AsRef<[u8]>) {
        if let Err(e) = self.try_send(data).await {
            panic!("client send failed: {e}");
        }
    }

    /// Sends `data` as is.
    pub async fn try_send(&mut self, data: impl AsRef<[u8]>) -> Result<(), String> {
        self.wire.write_all(data.as_ref()).await
    }

    /// Reads one response to a non-HEAD request; panics on error, close or timeout.
    pub async fn read_response(&mut self) -> Response {
        self.read_response_for("GET").await
    }

    /// Reads one response to a request with `method` (HEAD responses have no body).
    pub async fn read_response_for(&mut self, method: &str) -> Response {
        match self.try_read_response_for(method).await {
            Ok(r) => r,
            Err(e) => panic!("reading a response failed: {e}"),
        }
    }

    /// Reads one response to a non-HEAD request, or says why not.
    pub async fn try_read_response(&mut self) -> Result<Response, String> {
        self.try_read_response_for("GET").await
    }

    /// Reads one response to a request with `method`, or says why not.
    pub async fn try_read_response_for(&mut self, method: &str) -> Result<Response, String> {
        let mut resp = self.try_read_head().await?;
        let framing = wire::response_framing(resp.status, method, &resp.headers)?;
        resp.body = self.wire.read_body(framing).await?;
        Ok(resp)
    }

    /// Reads only a response head (status line and headers); the body, if any, stays
    /// unread (use [`Client::read_exact`] / [`Client::read_some`] for it).
    pub async fn read_head(&mut self) -> Response {
        match self.try_read_head().await {
            Ok(r) => r,
            Err(e) => panic!("reading a response head failed: {e}"),
        }
    }

    /// Reads only a response head, or says why not.
    pub async fn try_read_head(&mut self) -> Result<Response, String> {
        let head = match self.wire.read_head().await? {
            Some(h) => h,
            None => return Err("connection closed before any response byte".into()),
        };
        let mut parts = head.first_line.splitn(3, ' ');
        let version = parts.next().unwrap_or("").to_string();
        let status_text = parts.next().unwrap_or("");
        let reason = parts.next().unwrap_or("").to_string();
        if !version.starts_with("HTTP/") {
            return Err(format!("not a status line: {:?}", head.first_line));
        }
        let status = status_text
            .parse::<u16>()
            .map_err(|_| format!("bad status line {:?}", head.first_line))?;
        Ok(Response {
            version,
            status,
            reason,
            headers: head.headers,
            body: Vec::new(),
        })
    }

    /// Reads a body of the framing the given head announces (after [`Client::read_head`]).
    pub async fn read_body_of(&mut self, head: &Response, method: &str) -> Vec<u8> {
        let framing = match wire::response_framing(head.status, method, &head.headers) {
            Ok(f) => f,
            Err(e) => panic!("bad response framing: {e}"),
        };
        match self.wire.read_body(framing).await {
            Ok(b) => b,
            Err(e) => panic!("reading the body failed: {e}"),
        }
    }

    /// Reads exactly `n` raw bytes; panics on close or timeout.
    pub async fn read_exact(&mut self, n: usize) -> Vec<u8> {
        match self.wire.take(n).await {
            Ok(b) => b,
            Err(e) => panic!("reading {n} raw bytes failed: {e}"),
        }
    }

    /// Reads exactly `n` raw bytes, or says why not.
    pub async fn try_read_exact(&mut self, n: usize) -> Result<Vec<u8>, String> {
        self.wire.take(n).await
    }

    /// Returns what is buffered, or waits for at least one more raw byte (panics on close or
    /// timeout).
    pub async fn read_some(&mut self) -> Vec<u8> {
        if self.wire.buffered() == 0 {
            match self.wire.fill().await {
                Ok(0) => panic!("connection closed while waiting for bytes"),
                Ok(_) => {}
                Err(e) => panic!("waiting for bytes failed: {e}"),
            }
        }
        self.wire.take_buffered()
    }

    /// Waits until the peer closes the connection (end of stream or reset), discarding what
    /// arrives. Returns how long it took, or `None` if it was still open after `within`.
    pub async fn wait_closed(&mut self, within: Duration) -> Option<Duration> {
        let start = Instant::now();
        let saved = self.wire.timeout;
        let result = loop {
            let left = within.saturating_sub(start.elapsed());
            if left.is_zero() {
                break None;
            }
            self.wire.timeout = Some(left);
            match self.wire.fill().await {
                Ok(0) => break Some(start.elapsed()),
                Ok(_) => {
                    self.wire.take_buffered();
                }
                Err(e) if e.starts_with("read error") => break Some(start.elapsed()),
                Err(_) => break None,
            }
        };
        self.wire.timeout = saved;
        result
    }
}

/// Builds a request head: `METHOD target HTTP/1.1`, `Host`, the extra headers, blank line.
pub fn request_head(method: &str, target: &str, host: &str, extra: &[(&str, &str)]) -> String {
    let mut s = format!("{method} {target} HTTP/1.1\r\nHost: {host}\r\n");
    for (n, v) in extra {
        s.push_str(n);
        s.push_str(": ");
        s.push_str(v);
        s.push_str("\r\n");
    }
    s.push_str("\r\n");
    s
}

/// Sends the raw request `raw` on a new connection and reads one response (HEAD-aware from
/// the request's first word).
pub async fn send_raw(port: u16, raw: impl AsRef<[u8]>) -> Response {
    let raw = raw.as_ref();
    let method = String::from_utf8_lossy(raw)
        .split(' ')
        .next()
        .unwrap_or("GET")
        .to_string();
    let mut c = Client::connect(port).await;
    c.send(raw).await;
    c.read_response_for(&method).await
}

/// `GET target` with `Host: host` and `Connection: close` on a new connection.
pub async fn get(port: u16, host: &str, target: &str) -> Response {
    send_raw(
        port,
        request_head("GET", target, host, &[("Connection", "close")]),
    )
    .await
}

/// A request with a method, extra headers and a body (Content-Length framing) on a new
/// connection, with `Connection: close`.
pub async fn request(
    port: u16,
    method: &str,
    host: &str,
    target: &str,
    extra: &[(&str, &str)],
    body: &[u8],
) -> Response {
    let len = body.len().to_string();
    let mut headers: Vec<(&str, &str)> = extra.to_vec();
    headers.push(("Connection", "close"));
    if !body.is_empty() || !matches!(method, "GET" | "HEAD" | "DELETE" | "OPTIONS") {
        headers.push(("Content-Length", &len));
    }
    let mut raw = request_head(method, target, host, &headers).into_bytes();
    raw.extend_from_slice(body);
    send_raw(port, raw).await
}
