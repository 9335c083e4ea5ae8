//! A small buffered HTTP/1.1 reader shared by the test client and the test backend.
//!
//! It parses exactly what arrives on the socket, so tests see the bytes the gateway really
//! sent, and every read can be bounded by a timeout.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Largest head (request or status line plus headers) the reader accepts.
pub(crate) const MAX_HEAD: usize = 4 * 1024 * 1024;

/// A header list as it arrived: names with their original case, in order.
pub type Headers = Vec<(String, String)>;

/// The first value of header `name` (case-insensitive).
pub(crate) fn find_header<'a>(headers: &'a Headers, name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// Every value of header `name` (case-insensitive), in order.
pub(crate) fn find_headers<'a>(headers: &'a Headers, name: &str) -> Vec<&'a str> {
    headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
        .collect()
}

/// Whether any value of header `name`, split on commas, equals `token` (case-insensitive).
pub(crate) fn header_has_token(headers: &Headers, name: &str, token: &str) -> bool {
    find_headers(headers, name)
        .iter()
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// A parsed head: the first line and the header fields.
#[derive(Debug, Clone)]
pub(crate) struct Head {
    pub first_line: String,
    pub headers: Headers,
}

/// How a message body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Framing {
    /// No body.
    Empty,
    /// `Content-Length` bytes.
    Length(usize),
    /// `Transfer-Encoding: chunked`.
    Chunked,
    /// Until the peer closes (responses only).
    UntilClose,
}

/// A TCP stream with a read buffer and an optional timeout on every read.
pub(crate) struct Wire {
    pub stream: TcpStream,
    buf: Vec<u8>,
    pub timeout: Option<Duration>,
}

impl Wire {
    pub fn new(stream: TcpStream, timeout: Option<Duration>) -> Wire {
        Wire {
            stream,
            buf: Vec::with_capacity(16 * 1024),
            timeout,
        }
    }

    /// Reads more bytes into the buffer; `Ok(0)` at end of stream.
    pub async fn fill(&mut self) -> Result<usize, String> {
        let mut tmp = vec![0u8; 64 * 1024];
        let read = self.stream.read(&mut tmp);
        let n = match self.timeout {
            Some(t) => match tokio::time::timeout(t, read).await {
                Ok(r) => r.map_err(|e| format!("read error: {e}"))?,
                Err(_) => return Err(format!("read timed out after {t:?}")),
            },
            None => read.await.map_err(|e| format!("read error: {e}"))?,
        };
        self.buf.extend_from_slice(&tmp[..n]);
        Ok(n)
    }

    /// Bytes already buffered and not yet consumed.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Takes everything buffered.
    pub fn take_buffered(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.buf)
    }

    /// Writes all of `data` (bounded by the timeout when one is set).
    pub async fn write_all(&mut self, data: &[u8]) -> Result<(), String> {
        let write = async {
            self.stream.write_all(data).await?;
            self.stream.flush().await
        };
        match self.timeout {
            Some(t) => match tokio::time::timeout(t, write).await {
                Ok(r) => r.map_err(|e| format!("write error: {e}")),
                Err(_) => Err(format!("write timed out after {t:?}")),
            },
            None => write.await.map_err(|e| format!("write error: {e}")),
        }
    }

    /// Reads a head up to and including the blank line. `Ok(None)` when the stream ends
    /// cleanly before any byte of a new head.
    pub async fn read_head(&mut self) -> Result<Option<Head>, String> {
        let mut scanned = 0usize;
        loop {
            if let Some(pos) = find_subslice(&self.buf[scanned.saturating_sub(3)..], b"\r\n\r\n") {
                let end = scanned.saturating_sub(3) + pos + 4;
                let raw: Vec<u8> = self.buf.drain(..end).collect();
                return parse_head(&raw).map(Some);
            }
            scanned = self.buf.len();
            if self.buf.len() > MAX_HEAD {
                return Err("head too large".into());
            }
            if self.fill().await? == 0 {
                if self.buf.is_empty() {
                    return Ok(None);
                }
                return Err(format!(
                    "stream ended inside a head: {:?}",
                    String::from_utf8_lossy(&self.buf)
                ));
            }
        }
    }

    /// Reads one CRLF-terminated line, without the CRLF.
    pub async fn read_line(&mut self) -> Result<String, String> {
        loop {
            if let Some(pos) = find_subslice(&self.buf, b"\r\n") {
                let line: Vec<u8> = self.buf.drain(..pos + 2).collect();
                return Ok(String::from_utf8_lossy(&line[..pos]).into_owned());
            }
            if self.buf.len() > MAX_HEAD {
                return Err("line too long".into());
            }
            if self.fill().await? == 0 {
                return Err("stream ended inside a line".into());
            }
        }
    }

    /// Reads exactly `n` bytes.
    pub async fn take(&mut self, n: usize) -> Result<Vec<u8>, String> {
        while self.buf.len() < n {
            if self.fill().await? == 0 {
                return Err(format!(
                    "stream ended after {} of {} body bytes",
                    self.buf.len(),
                    n
                ));
            }
        }
        Ok(self.buf.drain(..n).collect())
    }

    /// Reads until the peer closes.
    pub async fn read_to_close(&mut self) -> Result<Vec<u8>, String> {
        loop {
            match self.fill().await {
                Ok(0) => return Ok(std::mem::take(&mut self.buf)),
                Ok(_) => {}
                Err(e) if e.starts_with("read error") => {
                    // A reset after the body counts as the end of it.
                    return Ok(std::mem::take(&mut self.buf));
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Reads a body with the given framing; chunked bodies are decoded (trailers dropped).
    pub async fn read_body(&mut self, framing: Framing) -> Result<Vec<u8>, String> {
        match framing {
            Framing::Empty => Ok(Vec::new()),
            Framing::Length(n) => self.take(n).await,
            Framing::UntilClose => self.read_to_close().await,
            Framing::Chunked => {
                let mut body = Vec::new();
                loop {
                    let line = self.read_line().await?;
                    let size_text = line.split(';').next().unwrap_or("").trim();
                    let size = usize::from_str_radix(size_text, 16)
                        .map_err(|_| format!("bad chunk size line {line:?}"))?;
                    if size == 0 {
                        // Trailers until the empty line.
                        loop {
                            if self.read_line().await?.is_empty() {
                                return Ok(body);
                            }
                        }
                    }
                    body.extend_from_slice(&self.take(size).await?);
                    let crlf = self.take(2).await?;
                    if crlf != b"\r\n" {
                        return Err("chunk not followed by CRLF".into());
                    }
                }
            }
        }
    }
}

/// Position of `needle` in `hay`.
pub(crate) fn find_subslice(hay: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() || hay.len() < needle.len() {
        return None;
    }
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Parses a head (first line, header lines, blank line).
pub(crate) fn parse_head(raw: &[u8]) -> Result<Head, String> {
    let text = String::from_utf8_lossy(raw);
    let mut lines = text.split("\r\n");
    let first_line = lines.next().unwrap_or("").to_string();
    let mut headers = Vec::new();
    for line in lines {
        if line.is_empty() {
            continue;
        }
        let Some((name, value)) = line.split_once(':') else {
            return Err(format!("header line without a colon: {line:?}"));
        };
        headers.push((name.trim().to_string(), value.trim().to_string()));
    }
    Ok(Head {
        first_line,
        headers,
    })
}

/// The framing of a request body (RFC 9112 §6.3, requests never read until close).
pub(crate) fn request_framing(headers: &Headers) -> Result<Framing, String> {
    if header_has_token(headers, "transfer-encoding", "chunked") {
        return Ok(Framing::Chunked);
    }
    match find_header(headers, "content-length") {
        Some(v) => v
            .parse::<usize>()
            .map(|n| {
                if n == 0 {
                    Framing::Empty
                } else {
                    Framing::Length(n)
                }
            })
            .map_err(|_| format!("bad content-length {v:?}")),
        None => Ok(Framing::Empty),
    }
}

/// The framing of a response body given its status and the request method.
pub(crate) fn response_framing(
    status: u16,
    method: &str,
    headers: &Headers,
) -> Result<Framing, String> {
    if method.eq_ignore_ascii_case("HEAD")
        || (100..200).contains(&status)
        || status == 204
        || status == 304
    {
        return Ok(Framing::Empty);
    }
    if header_has_token(headers, "transfer-encoding", "chunked") {
        return Ok(Framing::Chunked);
    }
    match find_header(headers, "content-length") {
        Some(v) => v
            .parse::<usize>()
            .map(Framing::Length)
            .map_err(|_| format!("bad content-length {v:?}")),
        None => Ok(Framing::UntilClose),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;
    use tokio::net::TcpListener;

    async fn wire_with(bytes: &'static [u8]) -> Wire {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            s.write_all(bytes).await.unwrap();
        });
        let s = TcpStream::connect(addr).await.unwrap();
        Wire::new(s, Some(Duration::from_secs(2)))
    }

    #[tokio::test]
    async fn parses_a_chunked_response_and_the_next_one() {
        let mut w = wire_with(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-A: 1\r\n\r\n5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-T: t\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n",
        )
        .await;
        let h = w.read_head().await.unwrap().unwrap();
        assert_eq!(h.first_line, "HTTP/1.1 200 OK");
        assert_eq!(find_header(&h.headers, "x-a"), Some("1"));
        let f = response_framing(200, "GET", &h.headers).unwrap();
        assert_eq!(f, Framing::Chunked);
        assert_eq!(w.read_body(f).await.unwrap(), b"hello world");
        let h = w.read_head().await.unwrap().unwrap();
        assert_eq!(h.first_line, "HTTP/1.1 204 No Content");
        assert_eq!(
            response_framing(204, "GET", &h.headers).unwrap(),
            Framing::Empty
        );
        assert!(w.read_head().await.unwrap().is_none());
    }

    #[tokio::test]
    async fn reads_until_close_without_length() {
        let mut w = wire_with(b"HTTP/1.0 200 OK\r\n\r\nall of it").await;
        let h = w.read_head().await.unwrap().unwrap();
        let f = response_framing(200, "GET", &h.headers).unwrap();
        assert_eq!(f, Framing::UntilClose);
        assert_eq!(w.read_body(f).await.unwrap(), b"all of it");
    }

    #[test]
    fn connection_tokens_are_case_insensitive() {
        let h: Headers = vec![("Connection".into(), "keep-alive, Upgrade".into())];
        assert!(header_has_token(&h, "connection", "upgrade"));
        assert!(!header_has_token(&h, "connection", "close"));
    }
}
