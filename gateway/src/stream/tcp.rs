//! TCP and tls-passthrough streams: accept, (read a trusted PROXY header, read the
//! ClientHello,) pick and connect with retries, send a PROXY header, replay what was read,
//! then copy both ways until each side has closed, with an idle timeout.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use prometheus::IntCounter;
use socket2::Socket;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::access_log::StreamEntry;
use crate::config::StreamProtocol;
use crate::health::PassiveOutcome;
use crate::metrics::UpstreamErrorKind;
use crate::state::Shared;
use crate::upstream::UpstreamRuntime;

use super::metrics::StreamErrorKind;
use super::{proxy_protocol, sni, Listener, Open, StreamRuntime};

/// Bytes of the (stack) buffer of one read.
const COPY_BUFFER: usize = 32 * 1024;

/// Start the accept loop of a bound TCP socket (it runs until `stopped` turns true).
pub(crate) fn spawn_listener(
    shared: Arc<Shared>,
    listener: Arc<Listener>,
    socket: Socket,
    mut stopped: watch::Receiver<bool>,
) -> io::Result<()> {
    let std_listener: std::net::TcpListener = socket.into();
    let accept = TcpListener::from_std(std_listener)?;
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                biased;
                _ = stopped.wait_for(|s| *s) => break,
                a = accept.accept() => a,
            };
            let (client, peer) = match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: do not spin.
                    log::warn!("stream accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            };
            let stream = listener.current.load_full();
            let Some(open) = Open::try_new(&listener, &stream, Some(&shared)) else {
                shared
                    .metrics
                    .stream
                    .error(&stream.name, StreamErrorKind::Limit);
                // Refuse with a reset rather than a half-open connection.
                let _ = socket2::SockRef::from(&client).set_linger(Some(Duration::ZERO));
                drop(client);
                continue;
            };
            tokio::spawn(serve(shared.clone(), stream, client, peer, open));
        }
    });
    Ok(())
}

/// What the access log line of a connection says.
#[derive(Debug)]
struct Outcome {
    sni: Option<String>,
    upstream: Option<Arc<UpstreamRuntime>>,
    backend: Option<usize>,
    result: &'static str,
}

/// Serve one accepted connection to its end.
async fn serve(
    shared: Arc<Shared>,
    stream: Arc<StreamRuntime>,
    mut client: TcpStream,
    peer: SocketAddr,
    _open: Open,
) {
    let started = Instant::now();
    let _ = client.set_nodelay(true);
    let local = client.local_addr().unwrap_or(stream.addr);
    let counters = Counters::default();
    let mut out = Outcome {
        sni: None,
        upstream: None,
        backend: None,
        result: "ok",
    };
    let mut client_addr = peer;
    let mut dest_addr = local;
    let mut prefix = Vec::new();
    let m = &shared.metrics.stream;

    let ready = 'prepare: {
        if stream.reads_proxy_header(peer) {
            match tokio::time::timeout(
                stream.handshake_timeout,
                proxy_protocol::read_header(&mut client, &mut prefix),
            )
            .await
            {
                Ok(Ok(addrs)) => {
                    if let Some((src, dst)) = addrs {
                        client_addr = src;
                        dest_addr = dst;
                    }
                }
                Ok(Err(e)) => {
                    log::debug!("stream {}: bad PROXY header from {peer}: {e}", stream.name);
                    m.error(&stream.name, StreamErrorKind::ProxyProtocol);
                    out.result = "reset";
                    break 'prepare false;
                }
                Err(_) => {
                    m.error(&stream.name, StreamErrorKind::Timeout);
                    out.result = "idle_timeout";
                    break 'prepare false;
                }
            }
        }
        let upstream = if stream.protocol == StreamProtocol::TlsPassthrough {
            match tokio::time::timeout(
                stream.handshake_timeout,
                sni::read_client_hello(&mut client, &mut prefix),
            )
            .await
            {
                Ok(Ok(name)) => {
                    let upstream = stream.route(name.as_deref());
                    out.sni = name;
                    if upstream.is_none() {
                        m.error(&stream.name, StreamErrorKind::Sni);
                    }
                    upstream
                }
                Ok(Err(e)) => {
                    log::debug!("stream {}: no ClientHello from {peer}: {e:?}", stream.name);
                    m.error(&stream.name, StreamErrorKind::Sni);
                    out.result = "reset";
                    break 'prepare false;
                }
                Err(_) => {
                    m.error(&stream.name, StreamErrorKind::Timeout);
                    out.result = "idle_timeout";
                    break 'prepare false;
                }
            }
        } else {
            stream.upstream.clone()
        };
        out.upstream = upstream;
        true
    };

    if ready {
        match &out.upstream {
            None => {
                // An unrouted server name was counted as `sni` above.
                if stream.protocol != StreamProtocol::TlsPassthrough {
                    m.error(&stream.name, StreamErrorKind::NoBackend);
                }
                out.result = "no_backend";
            }
            Some(upstream) => match connect(&shared, &stream, upstream, client_addr).await {
                Err(result) => out.result = result,
                Ok((index, mut backend, took)) => {
                    out.backend = Some(index);
                    // Counted once connected, so that open connections are in it.
                    m.connection(&stream.name, &upstream.name, &upstream.backends[index].addr);
                    out.result = relay(
                        &stream,
                        &mut client,
                        &mut backend,
                        (client_addr, dest_addr),
                        &prefix,
                        &counters,
                    )
                    .await;
                    let b = &upstream.backends[index];
                    b.plugin.load.finish(took);
                    upstream.balancer.release(
                        index,
                        &switchyard_plugin::Outcome {
                            elapsed: took,
                            ok: true,
                        },
                    );
                }
            },
        }
    }
    let upstream_name = out.upstream.as_ref().map(|u| u.name.as_str());
    let backend = out
        .upstream
        .as_ref()
        .zip(out.backend)
        .map(|(u, i)| u.backends[i].addr.as_str());
    if backend.is_none() {
        m.connection(&stream.name, upstream_name.unwrap_or("none"), "none");
    }
    if shared.access_log.enabled() {
        let elapsed = started.elapsed();
        let client_text = client_addr.to_string();
        shared.access_log.write(&StreamEntry {
            time: &super::time_since(elapsed),
            stream: &stream.name,
            protocol: stream.protocol.as_str(),
            client: &client_text,
            sni: out.sni.as_deref(),
            upstream: upstream_name,
            backend,
            bytes_in: counters.bytes_in.load(Ordering::Relaxed),
            bytes_out: counters.bytes_out.load(Ordering::Relaxed),
            duration_ms: elapsed.as_secs_f64() * 1000.0,
            result: out.result,
        });
    }
}

/// Pick a backend and connect within its `connect_timeout`; on a refused or timed-out
/// connect try another one (avoiding the one that failed), up to the upstream's `retries`.
/// Each failure counts for passive health. Returns the backend index, the connection and
/// how long connecting took, or the access log result.
async fn connect(
    shared: &Shared,
    stream: &StreamRuntime,
    upstream: &UpstreamRuntime,
    client: SocketAddr,
) -> Result<(usize, TcpStream, Duration), &'static str> {
    let m = &shared.metrics;
    let mut avoid = None;
    let mut tried = false;
    for attempt in 0..=upstream.retries {
        let Some(index) = upstream.pick(Some(client.ip()), None, avoid) else {
            break;
        };
        if attempt > 0 {
            m.retry(&upstream.name);
        }
        tried = true;
        let b = &upstream.backends[index];
        b.plugin.load.start();
        let t0 = Instant::now();
        let limit = b
            .peer
            .options
            .connection_timeout
            .unwrap_or(Duration::from_secs(1));
        let kind = match tokio::time::timeout(limit, TcpStream::connect(b.socket)).await {
            Ok(Ok(conn)) => {
                let took = t0.elapsed();
                let _ = conn.set_nodelay(true);
                // A connection made is a success for passive health (it resets the count
                // of consecutive failures).
                upstream.record_outcome(index, PassiveOutcome::Status(200));
                m.upstream_connection(&upstream.name, &b.addr);
                return Ok((index, conn, took));
            }
            Ok(Err(e)) => {
                log::debug!(
                    "stream {}: connect to {} ({}) failed: {e}",
                    stream.name,
                    b.addr,
                    upstream.name
                );
                (StreamErrorKind::Connect, UpstreamErrorKind::Connect)
            }
            Err(_) => (StreamErrorKind::Timeout, UpstreamErrorKind::Timeout),
        };
        b.plugin.load.finish(t0.elapsed());
        m.stream.error(&stream.name, kind.0);
        m.upstream_error(&upstream.name, &b.addr, kind.1);
        if upstream.record_outcome(index, PassiveOutcome::Failure) {
            m.ejection(&upstream.name, &b.addr);
        }
        avoid = Some(index);
    }
    if tried {
        Err("connect_failed")
    } else {
        m.stream.error(&stream.name, StreamErrorKind::NoBackend);
        Err("no_backend")
    }
}

/// Bytes carried each way.
#[derive(Debug, Default)]
struct Counters {
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
}

/// Send the PROXY header and the bytes already read, then copy both ways until both sides
/// closed (half-close kept), a side resets, or nothing moved for `idle_timeout`. Returns
/// the access log result.
async fn relay(
    stream: &StreamRuntime,
    client: &mut TcpStream,
    backend: &mut TcpStream,
    addrs: (SocketAddr, SocketAddr),
    prefix: &[u8],
    counters: &Counters,
) -> &'static str {
    let mut first = Vec::new();
    if let Some(version) = stream.proxy_protocol {
        first = proxy_protocol::header(version, false, addrs.0, addrs.1);
    }
    first.extend_from_slice(prefix);
    if !first.is_empty() {
        if backend.write_all(&first).await.is_err() {
            return "reset";
        }
        counters
            .bytes_in
            .fetch_add(prefix.len() as u64, Ordering::Relaxed);
        stream.metrics.bytes_in.inc_by(prefix.len() as u64);
    }
    let copy = async {
        tokio::try_join!(
            pump(
                client,
                backend,
                &counters.bytes_in,
                &stream.metrics.bytes_in
            ),
            pump(
                backend,
                client,
                &counters.bytes_out,
                &stream.metrics.bytes_out
            ),
        )
    };
    let idle = stream.idle_timeout;
    let step = (idle / 4).max(Duration::from_millis(10));
    tokio::pin!(copy);
    let mut seen = 0u64;
    let mut last_change = tokio::time::Instant::now();
    loop {
        tokio::select! {
            r = &mut copy => return if r.is_ok() { "ok" } else { "reset" },
            _ = tokio::time::sleep(step) => {
                let moved = counters.bytes_in.load(Ordering::Relaxed)
                    + counters.bytes_out.load(Ordering::Relaxed);
                let now = tokio::time::Instant::now();
                if moved != seen {
                    seen = moved;
                    last_change = now;
                } else if now.duration_since(last_change) >= idle {
                    return "idle_timeout";
                }
            }
        }
    }
}

/// Copy from `from` to `to` until `from` ends, then close `to`'s sending side (the
/// half-close passes on). Bytes go through a buffer on the stack of [`step`]; only what
/// `to` does not take at once waits on the heap (at most one read's worth), so an idle
/// connection holds no copy buffer at all.
async fn pump(
    from: &TcpStream,
    to: &TcpStream,
    count: &AtomicU64,
    metric: &IntCounter,
) -> io::Result<()> {
    let mut pending: Vec<u8> = Vec::new();
    loop {
        while !pending.is_empty() {
            to.writable().await?;
            match to.try_write(&pending) {
                Ok(n) => {
                    pending.drain(..n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
        }
        // Give the memory back while waiting for the next bytes.
        pending = Vec::new();
        from.readable().await?;
        match step(from, to, &mut pending) {
            Ok(Some(n)) => {
                count.fetch_add(n as u64, Ordering::Relaxed);
                metric.inc_by(n as u64);
            }
            Ok(None) => {
                // The peer may be gone already: nothing more to tell it then.
                let _ = socket2::SockRef::from(to).shutdown(std::net::Shutdown::Write);
                return Ok(());
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
}

/// One read from `from` and as much of it as `to` takes now; the rest goes to `pending`.
/// `None` at the end of `from`.
fn step(from: &TcpStream, to: &TcpStream, pending: &mut Vec<u8>) -> io::Result<Option<usize>> {
    let mut buf = [0u8; COPY_BUFFER];
    let n = from.try_read(&mut buf)?;
    if n == 0 {
        return Ok(None);
    }
    let written = match to.try_write(&buf[..n]) {
        Ok(w) => w,
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
        Err(e) => return Err(e),
    };
    if written < n {
        pending.extend_from_slice(&buf[written..n]);
    }
    Ok(Some(n))
}
