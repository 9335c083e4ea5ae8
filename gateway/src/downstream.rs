//! The client side of each listener: reads every HTTP/1 request head itself before handing
//! the connection to pingora, so that the gateway can enforce what pingora leaves open:
//!
//! - `client_header_timeout`: the whole head must arrive in time (slowloris clients are
//!   closed with 408, and never hold anything but their own small buffer);
//! - `client_idle_timeout`: an idle keep-alive connection is closed;
//! - `max_header_bytes`: a larger head gets 431;
//! - ambiguous framing (Content-Length with Transfer-Encoding, differing or malformed
//!   Content-Length, an unknown transfer coding, a bad chunk size already received)
//!   gets 400 and the connection is closed before anything reaches a backend.
//!
//! The head bytes are then given to pingora's parser as a "pipelined prefix", so nothing
//! is read twice. HTTP/2 (ALPN h2) connections go straight to pingora.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::BytesMut;
use pingora_core::apps::{HttpServerApp, ServerApp};
use pingora_core::protocols::http::ServerSession;
use pingora_core::protocols::{Stream, ALPN};
use pingora_core::server::ShutdownWatch;
use pingora_proxy::HttpProxy;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::{timeout, Instant, Sleep};

use crate::metrics::Metrics;
use crate::proxy::Gateway;

/// The first read of each request head goes through a stack buffer this large, so that an
/// idle keep-alive connection holds no head buffer at all; a longer head continues in the
/// heap buffer.
const FIRST_READ: usize = 4096;

/// Client-side limits of a listener.
#[derive(Debug, Clone, Copy)]
pub struct ClientLimits {
    /// Largest request head.
    pub max_header_bytes: usize,
    /// Time allowed for a whole request head.
    pub header_timeout: Duration,
    /// Time an idle keep-alive connection is kept.
    pub idle_timeout: Duration,
}

/// A listener's application: the head guard in front of pingora's HTTP proxy.
pub struct Frontend {
    proxy: Arc<HttpProxy<Gateway>>,
    limits: ClientLimits,
    connections: prometheus::IntGauge,
    metrics: Metrics,
}

impl Frontend {
    /// Guard `proxy` with `limits`; `connections` counts open client connections, and
    /// requests refused here are counted in `metrics` (route, upstream, backend `none`).
    pub fn new(
        proxy: HttpProxy<Gateway>,
        limits: ClientLimits,
        connections: prometheus::IntGauge,
        metrics: Metrics,
    ) -> Self {
        Self {
            proxy: Arc::new(proxy),
            limits,
            connections,
            metrics,
        }
    }

    async fn refuse(&self, stream: &mut Stream, status: u16, why: &str, started: Instant) {
        reject(stream, status, why).await;
        self.metrics
            .request("none", "none", "none", status, started.elapsed());
    }
}

struct ConnectionCount(prometheus::IntGauge);

impl Drop for ConnectionCount {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// What reading a request head came to.
#[derive(Debug, PartialEq, Eq)]
pub enum Head {
    /// A complete head (and whatever followed it) is in the buffer.
    Complete,
    /// The client closed, went idle too long, or shutdown began: close quietly.
    Closed,
    /// The client was too slow sending the head.
    TimedOut,
    /// The head is larger than allowed.
    TooLarge,
    /// The head is malformed or its framing is ambiguous.
    Bad(&'static str),
}

#[async_trait]
impl ServerApp for Frontend {
    async fn process_new(
        self: &Arc<Self>,
        mut stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        self.connections.inc();
        let _count = ConnectionCount(self.connections.clone());
        if matches!(stream.selected_alpn_proto(), Some(ALPN::H2)) {
            return ServerApp::process_new(&self.proxy, stream, shutdown).await;
        }
        let limits = self.limits;
        let mut settings = None;
        let mut first = true;
        // One timer for the connection's whole life, moved forward before each head: moving a
        // pending tokio timer later is one atomic store, where a new timer per request costs a
        // registration (measured: about a tenth of a proxied request's instructions).
        let timer = tokio::time::sleep(limits.header_timeout);
        tokio::pin!(timer);
        loop {
            // Empty until the head's first bytes arrive (see `read_first_or_expire`).
            let mut buf = BytesMut::new();
            let started = Instant::now();
            let outcome = read_head(
                &mut stream,
                &mut buf,
                &limits,
                first,
                shutdown,
                started,
                timer.as_mut(),
            )
            .await;
            match outcome {
                Head::Complete => {}
                Head::Closed => return None,
                Head::TimedOut => {
                    let why = "request timeout: the request head took too long";
                    self.refuse(&mut stream, 408, why, started).await;
                    return None;
                }
                Head::TooLarge => {
                    let why = "request header fields too large";
                    self.refuse(&mut stream, 431, why, started).await;
                    return None;
                }
                Head::Bad(why) => {
                    self.refuse(&mut stream, 400, why, started).await;
                    return None;
                }
            }
            let mut session = ServerSession::new_http1(stream);
            let idle = limits.idle_timeout.as_secs().max(1);
            session.set_keepalive(if *shutdown.borrow() { None } else { Some(idle) });
            if let Some(s) = settings.take() {
                pingora_core::apps::HttpPersistentSettings::apply_to_session(s, &mut session);
            }
            session.set_pipelined_prefix(buf);
            let reused = self.proxy.process_new_http(session, shutdown).await?;
            let (next, next_settings) = reused.consume();
            stream = next;
            settings = next_settings;
            first = false;
        }
    }

    async fn cleanup(&self) {
        self.proxy.http_cleanup().await;
    }
}

async fn reject(stream: &mut Stream, status: u16, body: &str) {
    let reason = match status {
        400 => "Bad Request",
        408 => "Request Timeout",
        431 => "Request Header Fields Too Large",
        _ => "Error",
    };
    let text = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\nCache-Control: no-store\r\n\r\n{body}\n",
        body.len() + 1
    );
    let _ = timeout(Duration::from_secs(2), async {
        let _ = stream.write_all(text.as_bytes()).await;
        let _ = stream.flush().await;
        let _ = stream.shutdown().await;
    })
    .await;
}

/// Read one request head into `buf`, enforcing the limits. `now` is when the wait began;
/// `timer` is the connection's timer, moved to each deadline in turn.
pub async fn read_head<S>(
    stream: &mut S,
    buf: &mut BytesMut,
    limits: &ClientLimits,
    first: bool,
    shutdown: &ShutdownWatch,
    now: Instant,
    mut timer: Pin<&mut Sleep>,
) -> Head
where
    S: tokio::io::AsyncRead + Unpin + ?Sized,
{
    // A keep-alive connection is not reused once shutdown has begun. One that is already
    // waiting is not woken for it: the process ends as soon as requests have drained, and
    // watching the signal on every request would cost a waiter registration each time.
    if !first && *shutdown.borrow() {
        return Head::Closed;
    }
    // Wait for the first byte: a new connection has `header_timeout` for its whole head; an
    // idle keep-alive connection may wait `idle_timeout` before starting the next one.
    let wait = if first {
        limits.header_timeout
    } else {
        limits.idle_timeout
    };
    timer.as_mut().reset(now + wait);
    match read_first_or_expire(stream, buf, timer.as_mut()).await {
        Some(Ok(0)) | Some(Err(_)) => return Head::Closed,
        Some(Ok(_)) => {}
        None if first => return Head::TimedOut,
        None => return Head::Closed,
    }
    let mut scanned = 0;
    let mut deadline_set = first;
    loop {
        if let Some(end) = find_head_end(buf, scanned) {
            if end > limits.max_header_bytes {
                return Head::TooLarge;
            }
            return match check_framing(&buf[..end], &buf[end..]) {
                Ok(()) => Head::Complete,
                Err(why) => Head::Bad(why),
            };
        }
        if buf.len() > limits.max_header_bytes {
            return Head::TooLarge;
        }
        if !deadline_set {
            // A keep-alive request has begun: the rest of its head is due within
            // `header_timeout` of its first bytes.
            timer.as_mut().reset(Instant::now() + limits.header_timeout);
            deadline_set = true;
        }
        scanned = buf.len().saturating_sub(3);
        if buf.capacity() - buf.len() < 1024 {
            buf.reserve(buf.len().max(1024).min(limits.max_header_bytes));
        }
        match read_or_expire(stream, buf, timer.as_mut()).await {
            Some(Ok(0)) | Some(Err(_)) => return Head::Closed,
            Some(Ok(_)) => {}
            None => return Head::TimedOut,
        }
    }
}

/// Wait for the first bytes of a head and put them in the empty `buf`, or `None` when
/// `timer` fires first. Each poll reads into a buffer on the thread's stack, so a
/// connection that waits holds no buffer of its own (an idle keep-alive connection would
/// otherwise keep one for as long as it stays open); the bytes that came are then copied
/// into a heap buffer of their size, which pingora goes on to parse.
async fn read_first_or_expire<S>(
    stream: &mut S,
    buf: &mut BytesMut,
    timer: Pin<&mut Sleep>,
) -> Option<std::io::Result<usize>>
where
    S: tokio::io::AsyncRead + Unpin + ?Sized,
{
    let first = std::future::poll_fn(|cx| {
        let mut space = [std::mem::MaybeUninit::<u8>::uninit(); FIRST_READ];
        let mut read = tokio::io::ReadBuf::uninit(&mut space);
        std::task::ready!(Pin::new(&mut *stream).poll_read(cx, &mut read))?;
        buf.extend_from_slice(read.filled());
        std::task::Poll::Ready(Ok(read.filled().len()))
    });
    tokio::select! {
        biased;
        read = first => Some(read),
        () = timer => None,
    }
}

/// Read more of the head into `buf`, or `None` when `timer` fires first.
async fn read_or_expire<S>(
    stream: &mut S,
    buf: &mut BytesMut,
    timer: Pin<&mut Sleep>,
) -> Option<std::io::Result<usize>>
where
    S: tokio::io::AsyncRead + Unpin + ?Sized,
{
    tokio::select! {
        biased;
        read = stream.read_buf(buf) => Some(read),
        () = timer => None,
    }
}

/// The end of the head (just past the blank line), searching from `from`.
fn find_head_end(buf: &[u8], from: usize) -> Option<usize> {
    // Leading empty lines before a request line are allowed (RFC 9112 section 2.2).
    let mut start = 0;
    while start < buf.len() && (buf[start] == b'\r' || buf[start] == b'\n') {
        start += 1;
    }
    let from = from.max(start);
    let mut i = from;
    while let Some(pos) = buf[i..].iter().position(|&b| b == b'\n') {
        let nl = i + pos;
        // "\n\n" or "\n\r\n"
        if nl > start {
            if buf[nl - 1] == b'\n' {
                return Some(nl + 1);
            }
            if nl >= 2 && buf[nl - 1] == b'\r' && buf[nl - 2] == b'\n' {
                return Some(nl + 1);
            }
        }
        i = nl + 1;
    }
    None
}

/// Reject ambiguous or malformed message framing (request smuggling vectors).
pub fn check_framing(head: &[u8], body: &[u8]) -> Result<(), &'static str> {
    let mut content_length: Option<u64> = None;
    let mut transfer_encoding = false;
    let mut chunked_last = false;
    let mut lines = head
        .split(|&b| b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l));
    // Skip leading empty lines and the request line.
    for line in lines.by_ref() {
        if !line.is_empty() {
            break;
        }
    }
    for line in lines {
        if line.is_empty() {
            break;
        }
        if line[0] == b' ' || line[0] == b'\t' {
            return Err("bad request: obsolete line folding in the header");
        }
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            return Err("bad request: malformed header line");
        };
        let name = &line[..colon];
        let value = trim(&line[colon + 1..]);
        if name.eq_ignore_ascii_case(b"content-length") {
            let Some(n) = parse_decimal(value) else {
                return Err("bad request: invalid Content-Length");
            };
            if content_length.is_some_and(|prev| prev != n) {
                return Err("bad request: conflicting Content-Length headers");
            }
            content_length = Some(n);
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            transfer_encoding = true;
            for coding in value
                .split(|&b| b == b',')
                .map(trim)
                .filter(|c| !c.is_empty())
            {
                chunked_last = coding.eq_ignore_ascii_case(b"chunked");
                if !chunked_last && !coding.eq_ignore_ascii_case(b"identity") {
                    return Err("bad request: unsupported Transfer-Encoding");
                }
            }
        }
    }
    if transfer_encoding && content_length.is_some() {
        return Err("bad request: both Content-Length and Transfer-Encoding");
    }
    if transfer_encoding && !chunked_last {
        return Err("bad request: Transfer-Encoding must end with chunked");
    }
    if transfer_encoding {
        check_chunks(body)?;
    }
    Ok(())
}

fn trim(v: &[u8]) -> &[u8] {
    let start = v
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(v.len());
    let end = v
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(start, |e| e + 1);
    &v[start..end]
}

fn parse_decimal(v: &[u8]) -> Option<u64> {
    if v.is_empty() || v.len() > 19 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(v).ok()?.parse().ok()
}

/// Check the chunk-size lines of the part of a chunked body already received.
fn check_chunks(mut body: &[u8]) -> Result<(), &'static str> {
    const BAD: &str = "bad request: invalid chunk size";
    loop {
        let Some(nl) = body.iter().position(|&b| b == b'\n') else {
            // Incomplete size line: check what is there.
            let part = body.split(|&b| b == b';').next().unwrap_or(&[]);
            if part.len() > 16 || !part.iter().all(|b| b.is_ascii_hexdigit() || *b == b'\r') {
                return Err(BAD);
            }
            return Ok(());
        };
        let line = body[..nl].strip_suffix(b"\r").unwrap_or(&body[..nl]);
        let size_part = trim(line.split(|&b| b == b';').next().unwrap_or(&[]));
        if size_part.is_empty()
            || size_part.len() > 16
            || !size_part.iter().all(u8::is_ascii_hexdigit)
        {
            return Err(BAD);
        }
        let size = u64::from_str_radix(std::str::from_utf8(size_part).map_err(|_| BAD)?, 16)
            .map_err(|_| BAD)?;
        if size == 0 {
            return Ok(()); // trailers follow
        }
        let rest = &body[nl + 1..];
        let Ok(size) = usize::try_from(size) else {
            return Ok(());
        };
        if rest.len() < size + 2 {
            return Ok(()); // data still arriving
        }
        let after = &rest[size..];
        if !(after.starts_with(b"\r\n") || after.starts_with(b"\n")) {
            return Err("bad request: chunk data not followed by CRLF");
        }
        body = &after[if after.starts_with(b"\r\n") { 2 } else { 1 }..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(req: &str) -> Result<(), &'static str> {
        let end = find_head_end(req.as_bytes(), 0).expect("complete head");
        check_framing(&req.as_bytes()[..end], &req.as_bytes()[end..])
    }

    #[test]
    fn finds_the_end_of_the_head() {
        assert_eq!(
            find_head_end(b"GET / HTTP/1.1\r\nHost: a\r\n\r\nBODY", 0),
            Some(27)
        );
        assert_eq!(find_head_end(b"GET / HTTP/1.1\nHost: a\n\n", 0), Some(24));
        assert_eq!(find_head_end(b"\r\nGET / HTTP/1.1\r\n\r\n", 0), Some(20));
        assert_eq!(find_head_end(b"GET / HTTP/1.1\r\nHost: a\r\n", 0), None);
    }

    #[test]
    fn plain_requests_pass() {
        assert_eq!(check("GET / HTTP/1.1\r\nHost: a\r\n\r\n"), Ok(()));
        assert_eq!(
            check("POST / HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello"),
            Ok(())
        );
        assert_eq!(
            check("POST / HTTP/1.1\r\nContent-Length: 5\r\ncontent-length: 5\r\n\r\n"),
            Ok(())
        );
        assert_eq!(
            check("POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"),
            Ok(())
        );
        assert_eq!(
            check("POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhel"),
            Ok(())
        );
    }

    #[test]
    fn smuggling_shapes_are_rejected() {
        assert!(check(
            "POST / HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"
        )
        .is_err());
        assert!(
            check("POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n").is_err()
        );
        assert!(check("POST / HTTP/1.1\r\nContent-Length: -5\r\n\r\n").is_err());
        assert!(check("POST / HTTP/1.1\r\nContent-Length: 5, 6\r\n\r\n").is_err());
        assert!(check("POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n").is_err());
        assert!(check("POST / HTTP/1.1\r\nTransfer-Encoding: chunked, gzip\r\n\r\n").is_err());
        assert!(check(
            "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n"
        )
        .is_err());
        assert!(check(
            "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhelloXX0\r\n\r\n"
        )
        .is_err());
        assert!(check("GET / HTTP/1.1\r\nHost: a\r\n folded\r\n\r\n").is_err());
    }

    /// Read one head from a client that sent `sent` and keeps its connection open.
    async fn head_after(sent: &[u8], limits: &ClientLimits, first: bool) -> (Head, BytesMut) {
        let (_tx, rx) = tokio::sync::watch::channel(false);
        let timer = tokio::time::sleep(limits.header_timeout);
        tokio::pin!(timer);
        let (mut client, mut server) = tokio::io::duplex(64 * 1024);
        client.write_all(sent).await.unwrap();
        let mut buf = BytesMut::new();
        let now = Instant::now();
        let head = read_head(
            &mut server,
            &mut buf,
            limits,
            first,
            &rx,
            now,
            timer.as_mut(),
        )
        .await;
        drop(client);
        (head, buf)
    }

    #[tokio::test]
    async fn heads_longer_than_the_first_read_and_split_heads_complete() {
        let limits = ClientLimits {
            max_header_bytes: 16 * 1024,
            header_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(5),
        };
        // Longer than the stack buffer of the first read: finished in the heap buffer.
        let long = format!("GET / HTTP/1.1\r\nX-Long: {}\r\n\r\n", "a".repeat(6000));
        let (head, buf) = head_after(long.as_bytes(), &limits, true).await;
        assert_eq!(head, Head::Complete);
        assert_eq!(&buf[..], long.as_bytes());

        // A keep-alive head in two pieces, with the body's first bytes after it.
        let (_tx, rx) = tokio::sync::watch::channel(false);
        let timer = tokio::time::sleep(limits.header_timeout);
        tokio::pin!(timer);
        let (mut client, mut server) = tokio::io::duplex(64 * 1024);
        let writer = tokio::spawn(async move {
            client.write_all(b"POST /x HTTP/1.1\r\nHo").await.unwrap();
            tokio::time::sleep(Duration::from_millis(50)).await;
            client
                .write_all(b"st: a\r\nContent-Length: 4\r\n\r\nab")
                .await
                .unwrap();
            client
        });
        let mut buf = BytesMut::new();
        let now = Instant::now();
        let got = read_head(
            &mut server,
            &mut buf,
            &limits,
            false,
            &rx,
            now,
            timer.as_mut(),
        );
        assert_eq!(got.await, Head::Complete);
        assert!(buf.starts_with(b"POST /x HTTP/1.1\r\nHost: a\r\n"));
        drop(writer.await.unwrap());
    }

    #[tokio::test]
    async fn slow_head_times_out_and_large_head_is_refused() {
        let limits = ClientLimits {
            max_header_bytes: 1024,
            header_timeout: Duration::from_millis(200),
            idle_timeout: Duration::from_secs(5),
        };
        let partial = b"GET / HTTP/1.1\r\nHost: a\r\n";
        assert_eq!(head_after(partial, &limits, true).await.0, Head::TimedOut);
        let big = format!("GET / HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(2000));
        assert_eq!(
            head_after(big.as_bytes(), &limits, true).await.0,
            Head::TooLarge
        );
        let whole = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n";
        assert_eq!(head_after(whole, &limits, true).await.0, Head::Complete);
    }
}
