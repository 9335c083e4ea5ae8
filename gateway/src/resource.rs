//! Resource polling for `resource-based` upstreams.
//!
//! [`ResourceService`] is a pingora background service. For every upstream whose algorithm
//! is `resource-based` (or that has a `resource` table, for a plugin algorithm reading the
//! same reports) it keeps one poll task per backend, and follows reloads as
//! [`crate::health`] does: every [`MAINTENANCE_TICK`](crate::health::MAINTENANCE_TICK) it looks at `shared.runtime` and,
//! when the runtime changed, starts tasks for new (upstream, backend, settings)
//! combinations and stops the ones that went away.
//!
//! A poll is `GET resource.path` (default `/load`) over HTTP/1.1 with `Connection: close`
//! on a plain tokio `TcpStream`, bounded as a whole by `min(resource.interval, 1s)`. The
//! answer must be a 2xx whose body (at most [`MAX_REPORT_BYTES`], `Content-Length`,
//! chunked or close-delimited) is a JSON object with numeric `cpu` and `memory`
//! ([`parse_report`]): fractions of 1, other keys ignored. A negative value makes the report
//! invalid; a value above 1 counts as 1 (fully loaded). A valid report is stored in the
//! backend's [`BackendLoad`] with [`BackendLoad::set_resource`]; the balancer counts it for
//! `resource.max_age` and, past that (or before the first report), treats the backend as
//! half loaded, which makes the pick least connections among such backends
//! (see `switchyard_balancers::resource_based`). A failed poll (refused, timed out, non-2xx,
//! malformed or oversized body) leaves the last report in place to age out; failures are
//! logged once when they start (warning) and once when they end.
//!
//! Each backend's first poll comes at a random offset within `interval`, later ones
//! `interval` ± 10 % after the previous one started, so many backends are not polled in the
//! same instant. When a backend stops being polled (removed, or its upstream changed
//! algorithm) its report is forgotten ([`BackendLoad::clear_resource`]). Upstreams with
//! `tls` are not polled (no TLS client here yet): a warning says so, and their backends
//! are balanced as if none reported.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::{
    background_service, BackgroundService, GenBackgroundService,
};
use switchyard_balancers::ResourceOptions;
use switchyard_plugin::BackendLoad;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::AbortHandle;

use crate::health::every_tick_until_shutdown;
use crate::state::{Runtime, Shared};

/// The largest load-report body accepted, in bytes (a report is a few dozen).
pub const MAX_REPORT_BYTES: usize = 4096;

/// The largest response head accepted, in bytes.
pub const MAX_HEAD_BYTES: usize = 4096;

/// The longest a poll may take, whatever the interval.
pub const MAX_POLL_TIMEOUT: Duration = Duration::from_secs(1);

/// One load report as a backend sent it, after validation.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LoadReport {
    /// CPU use, a fraction of 1 (values above 1 are counted as 1).
    pub cpu: f64,
    /// Memory use, a fraction of 1 (values above 1 are counted as 1).
    pub memory: f64,
}

/// How an upstream's backends are polled: `resource` with its defaults applied.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ResourcePoll {
    /// The path (and query) sent with `GET`.
    pub path: String,
    /// Time between two polls of a backend.
    pub interval: Duration,
    /// Bound on one whole poll: `min(interval, 1s)`.
    pub timeout: Duration,
}

impl ResourcePoll {
    /// The polling settings of these (validated) resource options.
    pub fn from_options(options: &ResourceOptions) -> Self {
        Self {
            path: options.path.clone(),
            interval: options.interval,
            timeout: options.interval.min(MAX_POLL_TIMEOUT),
        }
    }

    /// The polling settings of an upstream section, or `None` when its backends are not
    /// polled: it neither uses `resource-based` nor has a `resource` table.
    pub fn of_section(section: &crate::config::UpstreamSection) -> Option<Self> {
        if section.algorithm.get_ref() != "resource-based" && section.resource.is_none() {
            return None;
        }
        let options = crate::config::balancer_options(section);
        // The balancer factory validated these; fall back to the defaults all the same.
        let options = ResourceOptions::from_options(&options).unwrap_or_default();
        Some(Self::from_options(&options))
    }
}

/// Parse a load report: a JSON object with numeric `cpu` and `memory`, fractions of 1.
/// Other keys are ignored. A missing, non-numeric, negative or non-finite value is an
/// error; a value above 1 is clamped to 1.
///
/// ```
/// use switchyard_gateway::resource::parse_report;
///
/// let r = parse_report(br#"{"cpu": 0.8, "memory": 0.7, "disk": 0.1}"#).unwrap();
/// assert_eq!((r.cpu, r.memory), (0.8, 0.7));
/// assert_eq!(parse_report(br#"{"cpu": 1.5, "memory": 0}"#).unwrap().cpu, 1.0);
/// assert!(parse_report(br#"{"cpu": -0.1, "memory": 0.2}"#).is_err());
/// assert!(parse_report(br#"{"cpu": 0.1}"#).is_err());
/// ```
pub fn parse_report(body: &[u8]) -> Result<LoadReport, String> {
    let value: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| format!("not JSON: {e}"))?;
    let object = value
        .as_object()
        .ok_or_else(|| "not a JSON object such as {\"cpu\": 0.8, \"memory\": 0.7}".to_owned())?;
    let fraction = |key: &str| -> Result<f64, String> {
        let v = match object.get(key) {
            Some(serde_json::Value::Number(n)) => n
                .as_f64()
                .ok_or_else(|| format!("`{key}` is not a number"))?,
            Some(other) => return Err(format!("`{key}` is not a number: {other}")),
            None => return Err(format!("no `{key}`")),
        };
        if !v.is_finite() || v < 0.0 {
            return Err(format!("`{key}` {v} is not a fraction of 1"));
        }
        Ok(v.min(1.0))
    };
    Ok(LoadReport {
        cpu: fraction("cpu")?,
        memory: fraction("memory")?,
    })
}

/// Poll a backend once: `GET path` with `Host: host`, bounded by `poll.timeout`.
pub async fn poll(
    poll: &ResourcePoll,
    socket: SocketAddr,
    host: &str,
) -> Result<LoadReport, String> {
    match tokio::time::timeout(poll.timeout, fetch(socket, host, &poll.path)).await {
        Ok(body) => parse_report(&body?),
        Err(_) => Err(format!("no answer within {:?}", poll.timeout)),
    }
}

/// How a response body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    Length(usize),
    Chunked,
    Close,
}

/// `GET path` and the body of a 2xx answer, at most [`MAX_REPORT_BYTES`].
pub(crate) async fn fetch(socket: SocketAddr, host: &str, path: &str) -> Result<Vec<u8>, String> {
    let mut stream = TcpStream::connect(socket)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    stream.set_nodelay(true).ok();
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nUser-Agent: switchyard-resource\r\nAccept: application/json\r\n\r\n"
    );
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| format!("send: {e}"))?;
    let mut buf = Vec::with_capacity(512);
    let head_end = loop {
        if let Some(i) = find(&buf, b"\r\n\r\n") {
            break i + 4;
        }
        if buf.len() > MAX_HEAD_BYTES {
            return Err(format!("response head over {MAX_HEAD_BYTES} bytes"));
        }
        if read_some(&mut stream, &mut buf).await? == 0 {
            return Err("connection closed before a full response head".into());
        }
    };
    let framing = parse_head(&buf[..head_end])?;
    let mut raw = buf.split_off(head_end);
    // Chunk framing adds a few bytes per chunk; allow for it without letting it run away.
    let raw_limit = match framing {
        Framing::Length(n) if n > MAX_REPORT_BYTES => {
            return Err(format!("report of {n} bytes, more than {MAX_REPORT_BYTES}"))
        }
        Framing::Length(n) => n,
        Framing::Chunked => 2 * MAX_REPORT_BYTES,
        Framing::Close => MAX_REPORT_BYTES,
    };
    loop {
        match framing {
            Framing::Length(n) if raw.len() >= n => {
                raw.truncate(n);
                return Ok(raw);
            }
            Framing::Chunked => {
                if let Some(body) = decode_chunked(&raw)? {
                    return Ok(body);
                }
            }
            _ => {}
        }
        if raw.len() > raw_limit {
            return Err(format!("report over {MAX_REPORT_BYTES} bytes"));
        }
        if read_some(&mut stream, &mut raw).await? == 0 {
            return match framing {
                Framing::Close => Ok(raw),
                _ => Err("connection closed before the whole report".into()),
            };
        }
    }
}

/// Read what is available (at most 1 KiB) onto `buf`; 0 at end of stream.
async fn read_some(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Result<usize, String> {
    let mut chunk = [0u8; 1024];
    let n = stream
        .read(&mut chunk)
        .await
        .map_err(|e| format!("read: {e}"))?;
    buf.extend_from_slice(&chunk[..n]);
    Ok(n)
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// The body framing of a complete response head, which must be a 2xx.
fn parse_head(head: &[u8]) -> Result<Framing, String> {
    let text = std::str::from_utf8(head).map_err(|_| "response head is not text".to_owned())?;
    let mut lines = text.split("\r\n");
    let status_line = lines.next().unwrap_or("");
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next().unwrap_or("");
    let code = parts.next().unwrap_or("");
    let status: u16 = match code.parse() {
        Ok(s) if version.starts_with("HTTP/1.") && code.len() == 3 => s,
        _ => {
            let shown: String = status_line.chars().take(64).collect();
            return Err(format!("not an HTTP/1.x status line: {shown:?}"));
        }
    };
    if !(200..300).contains(&status) {
        return Err(format!("status {status}, expected 2xx"));
    }
    let mut framing = Framing::Close;
    for line in lines.filter(|l| !l.is_empty()) {
        let Some((name, value)) = line.split_once(':') else {
            return Err("malformed response header".into());
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("transfer-encoding") {
            if value.eq_ignore_ascii_case("chunked") {
                framing = Framing::Chunked;
            } else {
                return Err(format!("unsupported transfer-encoding {value:?}"));
            }
        } else if name.eq_ignore_ascii_case("content-length") && framing != Framing::Chunked {
            let n = value
                .parse()
                .map_err(|_| format!("bad content-length {value:?}"))?;
            if matches!(framing, Framing::Length(m) if m != n) {
                return Err("conflicting content-length headers".into());
            }
            framing = Framing::Length(n);
        }
    }
    Ok(framing)
}

/// Decode a chunked body: `Ok(None)` while incomplete, the body once the last chunk has
/// arrived (trailers are skipped), an error when malformed or over [`MAX_REPORT_BYTES`].
fn decode_chunked(raw: &[u8]) -> Result<Option<Vec<u8>>, String> {
    let mut body = Vec::new();
    let mut at = 0;
    loop {
        let Some(eol) = find(&raw[at..], b"\r\n") else {
            return Ok(None);
        };
        let line = std::str::from_utf8(&raw[at..at + eol]).map_err(|_| "bad chunk size")?;
        let digits = line.split(';').next().unwrap_or("").trim();
        let size =
            usize::from_str_radix(digits, 16).map_err(|_| format!("bad chunk size {digits:?}"))?;
        at += eol + 2;
        if size == 0 {
            // Trailers, if any, end with an empty line.
            let rest = &raw[at..];
            let done = rest.starts_with(b"\r\n") || find(rest, b"\r\n\r\n").is_some();
            return Ok(done.then_some(body));
        }
        if body.len() + size > MAX_REPORT_BYTES {
            return Err(format!("report over {MAX_REPORT_BYTES} bytes"));
        }
        if raw.len() < at + size + 2 {
            return Ok(None);
        }
        body.extend_from_slice(&raw[at..at + size]);
        if &raw[at + size..at + size + 2] != b"\r\n" {
            return Err("chunk not followed by CRLF".into());
        }
        at += size + 2;
    }
}

/// One backend to poll.
#[derive(Debug)]
struct PollTarget {
    upstream: String,
    addr: String,
    socket: SocketAddr,
    poll: ResourcePoll,
    load: Arc<BackendLoad>,
}

/// `d` scaled by a random factor in `[lo, hi)`.
fn jittered(d: Duration, lo: f64, hi: f64) -> Duration {
    d.mul_f64(lo + (hi - lo) * rand::random::<f64>())
}

/// Poll one backend for ever: first at a random offset within the interval, then every
/// interval ± 10 %, storing each valid report.
async fn poll_loop(target: Arc<PollTarget>) {
    let interval = target.poll.interval;
    tokio::time::sleep(jittered(interval, 0.0, 1.0)).await;
    let mut failing = false;
    loop {
        let started = tokio::time::Instant::now();
        match poll(&target.poll, target.socket, &target.addr).await {
            Ok(report) => {
                target
                    .load
                    .set_resource(report.cpu, report.memory, Instant::now());
                if failing {
                    log::info!(
                        "upstream {}: backend {} reports its load again",
                        target.upstream,
                        target.addr
                    );
                }
                failing = false;
            }
            Err(why) => {
                if failing {
                    log::debug!(
                        "upstream {}: load report of {} failed: {why}",
                        target.upstream,
                        target.addr
                    );
                } else {
                    log::warn!(
                        "upstream {}: load report of {} (GET {}) failed: {why}; its last report \
                         counts until it is resource.max_age old",
                        target.upstream,
                        target.addr,
                        target.poll.path
                    );
                }
                failing = true;
            }
        }
        tokio::time::sleep_until(started + jittered(interval, 0.9, 1.1)).await;
    }
}

/// Identity of a poll task: changed settings restart it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct PollKey {
    upstream: String,
    addr: String,
    socket: SocketAddr,
    poll: ResourcePoll,
}

/// A running poll task and the load record it feeds.
struct Task {
    handle: AbortHandle,
    load: Arc<BackendLoad>,
}

/// The running poll tasks.
#[derive(Default)]
struct Polls {
    tasks: HashMap<PollKey, Task>,
}

impl Polls {
    /// Start and stop poll tasks to match `runtime`.
    fn reconcile(&mut self, runtime: &Runtime) {
        let mut wanted = HashSet::new();
        for (section, u) in runtime.config.upstreams.iter().zip(&runtime.upstreams) {
            debug_assert_eq!(section.name.get_ref(), &u.name);
            let Some(poll) = ResourcePoll::of_section(section) else {
                continue;
            };
            if section.tls.is_some() {
                log::warn!(
                    "upstream {}: load reports are not polled over TLS yet; its backends are \
                     balanced as if none reported (least connections)",
                    u.name
                );
                continue;
            }
            for b in &u.backends {
                let key = PollKey {
                    upstream: u.name.clone(),
                    addr: b.addr.clone(),
                    socket: b.socket,
                    poll: poll.clone(),
                };
                if !self.tasks.contains_key(&key) {
                    let target = Arc::new(PollTarget {
                        upstream: u.name.clone(),
                        addr: b.addr.clone(),
                        socket: b.socket,
                        poll: poll.clone(),
                        load: b.plugin.load.clone(),
                    });
                    let handle = tokio::spawn(poll_loop(target)).abort_handle();
                    let task = Task {
                        handle,
                        load: b.plugin.load.clone(),
                    };
                    self.tasks.insert(key.clone(), task);
                }
                wanted.insert(key);
            }
        }
        let still_polled: HashSet<(&str, &str)> = wanted
            .iter()
            .map(|k| (k.upstream.as_str(), k.addr.as_str()))
            .collect();
        self.tasks.retain(|k, task| {
            let keep = wanted.contains(k);
            if !keep {
                task.handle.abort();
                // A backend no longer polled at all must not keep a report for ever: if
                // it comes back later, only a new report counts.
                if !still_polled.contains(&(k.upstream.as_str(), k.addr.as_str())) {
                    task.load.clear_resource();
                }
            }
            keep
        });
    }

    fn abort_all(&mut self) {
        for (_, t) in self.tasks.drain() {
            t.handle.abort();
        }
    }

    fn len(&self) -> usize {
        self.tasks.len()
    }
}

/// The background service that polls the load reports of `resource-based` upstreams'
/// backends, following configuration reloads.
pub struct ResourceService {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for ResourceService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResourceService").finish_non_exhaustive()
    }
}

impl ResourceService {
    /// The service over the gateway's shared state.
    pub fn new(shared: Arc<Shared>) -> Self {
        Self { shared }
    }

    /// The service wrapped as a pingora background service, ready for
    /// `server.add_service(...)`.
    pub fn service(shared: Arc<Shared>) -> GenBackgroundService<ResourceService> {
        background_service("resource polling", Self::new(shared))
    }

    /// Run until `shutdown` turns true (or its sender goes away).
    async fn run(&self, shutdown: ShutdownWatch) {
        let mut polls = Polls::default();
        every_tick_until_shutdown(&self.shared, shutdown, |runtime, changed| {
            if changed {
                polls.reconcile(runtime);
                log::debug!("resource polling: {} backends polled", polls.len());
            }
        })
        .await;
        polls.abort_all();
    }
}

#[async_trait]
impl BackgroundService for ResourceService {
    async fn start(&self, shutdown: ShutdownWatch) {
        self.run(shutdown).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Mutex;
    use tokio::net::TcpListener;

    #[test]
    fn reports_are_parsed_and_checked() {
        let ok = |t: &str| parse_report(t.as_bytes()).map(|r| (r.cpu, r.memory));
        assert_eq!(ok(r#"{"cpu": 0.8, "memory": 0.7}"#), Ok((0.8, 0.7)));
        assert_eq!(ok(r#"{"memory":0,"cpu":1}"#), Ok((1.0, 0.0)));
        assert_eq!(
            ok(r#"{"cpu": 0.25, "memory": 0.5, "host": "x", "disk": [1]}"#),
            Ok((0.25, 0.5))
        );
        // Above 1 counts as fully loaded.
        assert_eq!(ok(r#"{"cpu": 3, "memory": 1.01}"#), Ok((1.0, 1.0)));
        for (bad, why) in [
            (r#"{"cpu": -0.5, "memory": 0.1}"#, "not a fraction"),
            (r#"{"cpu": 0.5, "memory": -1e-9}"#, "not a fraction"),
            (r#"{"cpu": "0.5", "memory": 0.1}"#, "not a number"),
            (r#"{"cpu": null, "memory": 0.1}"#, "not a number"),
            (r#"{"cpu": 0.5}"#, "no `memory`"),
            (r#"[0.5, 0.5]"#, "not a JSON object"),
            (r#"{"cpu": NaN, "memory": 0.1}"#, "not JSON"),
            (r#"{"cpu": 1e999, "memory": 0.1}"#, "not"),
            ("", "not JSON"),
        ] {
            let err = ok(bad).unwrap_err();
            assert!(err.contains(why), "{bad}: {err}");
        }
    }

    #[test]
    fn heads_and_chunks() {
        let head = |t: &str| parse_head(t.as_bytes());
        assert_eq!(
            head("HTTP/1.1 200 OK\r\nContent-Length: 12\r\n\r\n"),
            Ok(Framing::Length(12))
        );
        assert_eq!(
            head("HTTP/1.1 200 OK\r\ncontent-length: 3\r\nTransfer-Encoding: chunked\r\n\r\n"),
            Ok(Framing::Chunked)
        );
        assert_eq!(head("HTTP/1.0 204 No Content\r\n\r\n"), Ok(Framing::Close));
        assert!(head("HTTP/1.1 503 Busy\r\n\r\n")
            .unwrap_err()
            .contains("503"));
        assert!(head("SSH-2.0-x\r\n\r\n").is_err());
        assert!(head("HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n").is_err());
        assert!(head("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n").is_err());

        assert_eq!(decode_chunked(b"4\r\n{\"a\"\r\n"), Ok(None));
        assert_eq!(
            decode_chunked(b"4\r\n{\"a\"\r\n3;x=y\r\n:1}\r\n0\r\n\r\n"),
            Ok(Some(b"{\"a\":1}".to_vec()))
        );
        assert_eq!(
            decode_chunked(b"2\r\n{}\r\n0\r\nX-T: 1\r\n\r\n"),
            Ok(Some(b"{}".to_vec()))
        );
        assert_eq!(decode_chunked(b"2\r\n{}\r\n0\r\n"), Ok(None));
        assert!(decode_chunked(b"zz\r\n").is_err());
        assert!(decode_chunked(b"2\r\n{}xx").is_err());
        assert!(decode_chunked(b"2000\r\n").is_err());
    }

    /// A server answering every connection with `answer(n)` (n: 0-based request number),
    /// recording the request heads.
    async fn server<F>(answer: F) -> (SocketAddr, Arc<Mutex<Vec<String>>>)
    where
        F: Fn(usize) -> Vec<u8> + Send + Sync + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let seen2 = seen.clone();
        let count = Arc::new(AtomicUsize::new(0));
        let answer = Arc::new(answer);
        tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = listener.accept().await else {
                    continue;
                };
                let (seen, count, answer) = (seen2.clone(), count.clone(), answer.clone());
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    while find(&buf, b"\r\n\r\n").is_none() {
                        let mut chunk = [0u8; 512];
                        match s.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    seen.lock()
                        .unwrap()
                        .push(String::from_utf8_lossy(&buf).into_owned());
                    let n = count.fetch_add(1, Ordering::SeqCst);
                    let _ = s.write_all(&answer(n)).await;
                    let _ = s.shutdown().await;
                });
            }
        });
        (addr, seen)
    }

    fn json(body: &str) -> Vec<u8> {
        format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .into_bytes()
    }

    fn settings(path: &str, interval: Duration) -> ResourcePoll {
        ResourcePoll {
            path: path.into(),
            interval,
            timeout: interval.min(MAX_POLL_TIMEOUT),
        }
    }

    #[tokio::test]
    async fn polls_a_real_server() {
        let answers: Vec<Vec<u8>> = vec![
            json(r#"{"cpu": 0.8, "memory": 0.7, "uptime": 12}"#),
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n8\r\n{\"cpu\":0\r\n10\r\n.1,\"memory\":0.2}\r\n0\r\n\r\n".to_vec(),
            b"HTTP/1.0 200 OK\r\n\r\n{\"cpu\":0.3,\"memory\":0.4}".to_vec(),
            b"HTTP/1.1 500 Oops\r\nContent-Length: 0\r\n\r\n".to_vec(),
            json(r#"{"cpu": 0.5}"#),
            format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", MAX_REPORT_BYTES + 1)
                .into_bytes(),
            {
                let mut v = b"HTTP/1.1 200 OK\r\n\r\n{\"cpu\":0.1,\"memory\":0.1,\"pad\":\"".to_vec();
                v.extend(std::iter::repeat_n(b'x', MAX_REPORT_BYTES));
                v.extend_from_slice(b"\"}");
                v
            },
            json(r#"{"cpu": 0.5, "memory": 0.5"#),
        ];
        let (addr, seen) = server(move |n| answers[n.min(answers.len() - 1)].clone()).await;
        let s = settings("/load?v=1", Duration::from_secs(2));
        assert_eq!(s.timeout, Duration::from_secs(1));
        let r = poll(&s, addr, "svc:80").await.unwrap();
        assert_eq!((r.cpu, r.memory), (0.8, 0.7));
        let head = seen.lock().unwrap()[0].clone();
        assert!(head.starts_with("GET /load?v=1 HTTP/1.1\r\n"), "{head}");
        assert!(head.contains("Host: svc:80\r\n") && head.contains("Connection: close\r\n"));
        let r = poll(&s, addr, "x").await.unwrap();
        assert_eq!((r.cpu, r.memory), (0.1, 0.2), "chunked");
        let r = poll(&s, addr, "x").await.unwrap();
        assert_eq!((r.cpu, r.memory), (0.3, 0.4), "close-delimited");
        let err = poll(&s, addr, "x").await.unwrap_err();
        assert!(err.contains("500"), "{err}");
        let err = poll(&s, addr, "x").await.unwrap_err();
        assert!(err.contains("no `memory`"), "{err}");
        let err = poll(&s, addr, "x").await.unwrap_err();
        assert!(err.contains("more than"), "{err}");
        let err = poll(&s, addr, "x").await.unwrap_err();
        assert!(err.contains("over"), "{err}");
        let err = poll(&s, addr, "x").await.unwrap_err();
        assert!(err.contains("not JSON"), "{err}");

        // A server that accepts and never answers fails within the timeout.
        let silent = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let quick = settings("/load", Duration::from_millis(200));
        let t = Instant::now();
        let err = poll(&quick, silent.local_addr().unwrap(), "x")
            .await
            .unwrap_err();
        assert!(err.contains("no answer"), "{err}");
        assert!(t.elapsed() < Duration::from_secs(1));
        // A closed port fails at once.
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let dead = closed.local_addr().unwrap();
        drop(closed);
        assert!(poll(&s, dead, "x").await.unwrap_err().contains("connect"));
    }

    fn config_text(upstream: &str) -> String {
        format!(
            "[admin]\naddr = \"127.0.0.1:1\"\n[[listener]]\nname = \"http\"\naddr = \"127.0.0.1:2\"\n\
             [[route]]\nname = \"r\"\npath_prefix = \"/\"\nupstream = \"u\"\n{upstream}"
        )
    }

    fn reload(shared: &Shared, upstream: &str) {
        let registry = crate::server::default_registry();
        let config =
            crate::config::Config::parse("t.toml", &config_text(upstream), &registry).unwrap();
        let runtime = crate::state::compile(config, &shared.registry, &shared.live).unwrap();
        shared.runtime.store(Arc::new(runtime));
    }

    async fn wait_for(within: Duration, check: impl Fn() -> bool) -> bool {
        let start = Instant::now();
        while start.elapsed() < within {
            if check() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        check()
    }

    #[test]
    fn only_resource_upstreams_are_polled() {
        let registry = crate::server::default_registry();
        let parse = |u: &str| {
            crate::config::Config::parse("t.toml", &config_text(u), &registry)
                .unwrap()
                .upstreams[0]
                .clone()
        };
        let rr = parse("[[upstream]]\nname = \"u\"\nbackends = [{ addr = \"127.0.0.1:7001\" }]\n");
        assert_eq!(ResourcePoll::of_section(&rr), None);
        let rb = parse(
            "[[upstream]]\nname = \"u\"\nalgorithm = \"resource-based\"\nbackends = [{ addr = \"127.0.0.1:7001\" }]\n",
        );
        assert_eq!(
            ResourcePoll::of_section(&rb),
            Some(settings("/load", Duration::from_secs(2)))
        );
        let custom = parse(
            "[[upstream]]\nname = \"u\"\nalgorithm = \"resource-based\"\nbackends = [{ addr = \"127.0.0.1:7001\" }]\n\
             resource = { path = \"/stats\", interval = \"500ms\", max_age = \"3s\" }\n",
        );
        assert_eq!(
            ResourcePoll::of_section(&custom),
            Some(ResourcePoll {
                path: "/stats".into(),
                interval: Duration::from_millis(500),
                timeout: Duration::from_millis(500),
            })
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_service_stores_reports_and_follows_reloads() {
        let (busy, busy_seen) = server(|_| json(r#"{"cpu": 0.9, "memory": 0.8}"#)).await;
        let (idle, idle_seen) = server(|_| json(r#"{"cpu": 0.1, "memory": 0.2}"#)).await;
        let resource = "resource = { path = \"/load\", interval = \"100ms\", max_age = \"1s\" }\n";
        let with = |algorithm: &str, extra: &str| {
            format!(
                "[[upstream]]\nname = \"u\"\nalgorithm = \"{algorithm}\"\nbackends = [{{ addr = \"{busy}\" }}, {{ addr = \"{idle}\" }}]\n{extra}"
            )
        };
        let registry = crate::server::default_registry();
        let config = crate::config::Config::parse(
            "t.toml",
            &config_text(&with("resource-based", resource)),
            &registry,
        )
        .unwrap();
        let shared = Shared::new(config, registry).unwrap();
        let service = ResourceService::new(shared.clone());
        let (tx, rx) = tokio::sync::watch::channel(false);
        let handle = tokio::spawn(async move { service.run(rx).await });
        let u = shared.runtime.load().upstreams[0].clone();
        let (busy_load, idle_load) = (
            u.backends[0].plugin.load.clone(),
            u.backends[1].plugin.load.clone(),
        );
        assert!(
            wait_for(Duration::from_secs(3), || busy_load.resource().is_some()
                && idle_load.resource().is_some())
            .await,
            "no reports stored"
        );
        let r = busy_load.resource().unwrap();
        assert!(
            (r.cpu - 0.9).abs() < 1e-6 && (r.memory - 0.8).abs() < 1e-6,
            "{r:?}"
        );
        let score = idle_load.resource_score(Duration::from_secs(1)).unwrap();
        assert!((score - 0.3).abs() < 1e-6, "{score}");
        // The balancer now prefers the idle backend.
        for _ in 0..5 {
            assert_eq!(u.pick(None, None, None), Some(1));
        }
        // Polls keep their cadence: about every 100 ms.
        let before = busy_seen.lock().unwrap().len();
        tokio::time::sleep(Duration::from_millis(600)).await;
        let polled = busy_seen.lock().unwrap().len() - before;
        assert!((3..=9).contains(&polled), "{polled} polls in 600 ms");

        // A reload to another algorithm stops the polls and forgets the reports.
        reload(&shared, &with("least-connections", ""));
        assert!(
            wait_for(Duration::from_secs(2), || busy_load.resource().is_none()
                && idle_load.resource().is_none())
            .await,
            "reports kept after the reload"
        );
        let counts = || {
            (
                busy_seen.lock().unwrap().len(),
                idle_seen.lock().unwrap().len(),
            )
        };
        let stopped = counts();
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert_eq!(counts(), stopped, "polls went on after the reload");

        // And a reload back starts them again.
        reload(&shared, &with("resource-based", resource));
        assert!(
            wait_for(Duration::from_secs(3), || busy_load.resource().is_some()).await,
            "polling did not resume"
        );
        tx.send(true).unwrap();
        tokio::time::timeout(Duration::from_secs(2), handle)
            .await
            .expect("the service stops on shutdown")
            .unwrap();
    }
}
