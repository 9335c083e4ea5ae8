//! UDP streams: a flow is a client's address and port. Its first datagram picks a backend
//! (hash algorithms hash the client address) and opens one connected socket towards it;
//! every later datagram of the flow goes there, and replies go back to the client from the
//! stream's own socket. A flow ends after `idle_timeout` without traffic, after
//! `idle_timeout` without a reply from its backend (a dead backend that drops datagrams
//! does not hold a flow: the client's next datagram picks again), at once when the backend
//! answers with ICMP port unreachable (a passive-health failure), or when the stream stops.
//! At most `max_connections` flows are kept; datagrams that would open more are dropped.

use std::collections::HashMap;
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use socket2::Socket;
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, watch};

use crate::access_log::StreamEntry;
use crate::health::PassiveOutcome;
use crate::state::Shared;
use crate::upstream::UpstreamRuntime;

use super::metrics::StreamErrorKind;
use super::{proxy_protocol, Listener, Open, StreamRuntime};

/// The largest datagram (the UDP payload limit).
const MAX_DATAGRAM: usize = 65536;

/// Start the receive loop of a bound UDP socket (it runs until `stopped` turns true).
pub(crate) fn spawn_listener(
    shared: Arc<Shared>,
    listener: Arc<Listener>,
    socket: Socket,
    stopped: watch::Receiver<bool>,
) -> io::Result<()> {
    let std_socket: std::net::UdpSocket = socket.into();
    let socket = Arc::new(UdpSocket::from_std(std_socket)?);
    tokio::spawn(receive_loop(shared, listener, socket, stopped));
    Ok(())
}

/// What the receive loop keeps of a flow.
struct FlowHandle {
    id: u64,
    backend: Arc<UdpSocket>,
    /// PROXY v2 header put before each datagram, when configured.
    header: Option<Vec<u8>>,
    state: Arc<FlowState>,
}

/// What a flow's receive loop and its reply task share.
#[derive(Debug, Default)]
struct FlowState {
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
    /// Set when the flow ends: the next datagram opens a new flow.
    closed: AtomicBool,
    /// The receive loop's send saw the backend's ICMP refusal.
    refused: tokio::sync::Notify,
}

async fn receive_loop(
    shared: Arc<Shared>,
    listener: Arc<Listener>,
    socket: Arc<UdpSocket>,
    mut stopped: watch::Receiver<bool>,
) {
    let mut flows: HashMap<SocketAddr, FlowHandle> = HashMap::new();
    let (ended_tx, mut ended_rx) = mpsc::unbounded_channel::<(SocketAddr, u64)>();
    let mut next_id = 0u64;
    let mut buf = vec![0u8; MAX_DATAGRAM];
    loop {
        let (n, peer) = tokio::select! {
            biased;
            _ = stopped.wait_for(|s| *s) => break,
            Some((peer, id)) = ended_rx.recv() => {
                if flows.get(&peer).is_some_and(|f| f.id == id) {
                    flows.remove(&peer);
                }
                continue;
            }
            r = socket.recv_from(&mut buf) => match r {
                Ok(v) => v,
                Err(e) => {
                    log::debug!("stream udp receive: {e}");
                    continue;
                }
            },
        };
        let data = &buf[..n];
        // Twice at most: a send that reports the backend's ICMP refusal (of an earlier
        // datagram) ends that flow, and this datagram opens a new one.
        for _ in 0..2 {
            let live = flows
                .get(&peer)
                .is_some_and(|f| !f.state.closed.load(Ordering::Relaxed));
            if !live {
                flows.remove(&peer);
                next_id += 1;
                match open_flow(
                    &shared, &listener, &socket, peer, next_id, &stopped, &ended_tx,
                )
                .await
                {
                    Some(f) => {
                        flows.insert(peer, f);
                    }
                    None => break,
                }
            }
            let Some(flow) = flows.get(&peer) else {
                break;
            };
            let sent = match &flow.header {
                Some(h) => {
                    let mut d = Vec::with_capacity(h.len() + data.len());
                    d.extend_from_slice(h);
                    d.extend_from_slice(data);
                    flow.backend.try_send(&d)
                }
                None => flow.backend.try_send(data),
            };
            match sent {
                Ok(_) => {
                    flow.state.bytes_in.fetch_add(n as u64, Ordering::Relaxed);
                    listener.current.load().metrics.bytes_in.inc_by(n as u64);
                    break;
                }
                Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                    flow.state.closed.store(true, Ordering::Relaxed);
                    flow.state.refused.notify_one();
                    flows.remove(&peer);
                }
                // A full send buffer drops the datagram, as the network would.
                Err(_) => break,
            }
        }
    }
    // The flows see `stopped` too and end on their own.
    drop(flows);
}

/// Open a flow for `peer`: pick a backend, connect a socket to it, start the reply task.
async fn open_flow(
    shared: &Arc<Shared>,
    listener: &Arc<Listener>,
    socket: &Arc<UdpSocket>,
    peer: SocketAddr,
    id: u64,
    stopped: &watch::Receiver<bool>,
    ended: &mpsc::UnboundedSender<(SocketAddr, u64)>,
) -> Option<FlowHandle> {
    let stream = listener.current.load_full();
    let m = &shared.metrics;
    let Some(open) = Open::try_new(listener, &stream, None) else {
        m.stream.error(&stream.name, StreamErrorKind::Limit);
        return None;
    };
    let Some(upstream) = stream.upstream.clone() else {
        m.stream.error(&stream.name, StreamErrorKind::NoBackend);
        return None;
    };
    let Some(index) = upstream.pick(Some(peer.ip()), None, None) else {
        m.stream.error(&stream.name, StreamErrorKind::NoBackend);
        m.stream.connection(&stream.name, &upstream.name, "none");
        return None;
    };
    let b = &upstream.backends[index];
    let local: SocketAddr = if b.socket.is_ipv4() {
        (Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let backend = match UdpSocket::bind(local).await {
        Ok(s) => s,
        Err(e) => {
            log::warn!("stream {}: cannot open a UDP socket: {e}", stream.name);
            m.stream.error(&stream.name, StreamErrorKind::Connect);
            return None;
        }
    };
    if let Err(e) = backend.connect(b.socket).await {
        log::debug!("stream {}: connect to {} failed: {e}", stream.name, b.addr);
        m.stream.error(&stream.name, StreamErrorKind::Connect);
        if upstream.record_outcome(index, PassiveOutcome::Failure) {
            m.ejection(&upstream.name, &b.addr);
        }
        return None;
    }
    b.plugin.load.start();
    m.stream.connection(&stream.name, &upstream.name, &b.addr);
    m.upstream_connection(&upstream.name, &b.addr);
    let header = stream
        .proxy_protocol
        .map(|v| proxy_protocol::header(v, true, peer, stream.addr));
    let backend = Arc::new(backend);
    let state = Arc::new(FlowState::default());
    tokio::spawn(flow_task(Flow {
        shared: shared.clone(),
        stream,
        upstream,
        index,
        backend: backend.clone(),
        socket: socket.clone(),
        peer,
        state: state.clone(),
        stopped: stopped.clone(),
        ended: ended.clone(),
        id,
        _open: open,
    }));
    Some(FlowHandle {
        id,
        backend,
        header,
        state,
    })
}

/// One flow's reply task and what it needs.
struct Flow {
    shared: Arc<Shared>,
    stream: Arc<StreamRuntime>,
    upstream: Arc<UpstreamRuntime>,
    index: usize,
    backend: Arc<UdpSocket>,
    socket: Arc<UdpSocket>,
    peer: SocketAddr,
    state: Arc<FlowState>,
    stopped: watch::Receiver<bool>,
    ended: mpsc::UnboundedSender<(SocketAddr, u64)>,
    id: u64,
    _open: Open,
}

/// The backend answered with ICMP port unreachable (nothing listens there): a
/// passive-health failure that ends the flow.
fn refused(f: &Flow) -> &'static str {
    let m = &f.shared.metrics;
    m.stream.error(&f.stream.name, StreamErrorKind::Connect);
    let b = &f.upstream.backends[f.index];
    if f.upstream.record_outcome(f.index, PassiveOutcome::Failure) {
        m.ejection(&f.upstream.name, &b.addr);
    }
    "connect_failed"
}

/// Receive one reply from the backend and send it to the client; returns its size. The
/// buffer lives on the stack of this (not async) function only, so an idle flow holds
/// none. A full socket buffer drops the datagram, as the network would.
fn relay_reply(backend: &UdpSocket, socket: &UdpSocket, peer: SocketAddr) -> io::Result<usize> {
    let mut buf = [0u8; MAX_DATAGRAM];
    let n = backend.try_recv(&mut buf)?;
    let _ = socket.try_send_to(&buf[..n], peer);
    Ok(n)
}

/// Relay the backend's replies to the client until the flow ends, then log it.
async fn flow_task(f: Flow) {
    let started = Instant::now();
    let idle = f.stream.idle_timeout;
    let step = (idle / 4).max(Duration::from_millis(10));
    let mut seen = 0u64;
    let mut last_change = Instant::now();
    let mut last_reply = Instant::now();
    let mut first_reply: Option<Duration> = None;
    let mut stopped = f.stopped.clone();
    let result = loop {
        tokio::select! {
            _ = stopped.wait_for(|s| *s) => break "ok",
            _ = f.state.refused.notified() => break refused(&f),
            r = f.backend.readable() => {
                if r.is_err() {
                    break "reset";
                }
                match relay_reply(&f.backend, &f.socket, f.peer) {
                    Ok(n) => {
                        last_reply = Instant::now();
                        first_reply.get_or_insert_with(|| started.elapsed());
                        f.state.bytes_out.fetch_add(n as u64, Ordering::Relaxed);
                        f.stream.metrics.bytes_out.inc_by(n as u64);
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => break refused(&f),
                    Err(_) => break "reset",
                }
            }
            _ = tokio::time::sleep(step) => {
                let moved = f.state.bytes_in.load(Ordering::Relaxed)
                    + f.state.bytes_out.load(Ordering::Relaxed);
                let now = Instant::now();
                if moved != seen {
                    seen = moved;
                    last_change = now;
                }
                if now.duration_since(last_change) >= idle {
                    break "idle_timeout";
                }
                if now.duration_since(last_reply) >= idle {
                    // The client talks, the backend does not answer.
                    break if first_reply.is_some() { "idle_timeout" } else { "connect_failed" };
                }
            }
        }
    };
    f.state.closed.store(true, Ordering::Relaxed);
    let _ = f.ended.send((f.peer, f.id));
    let elapsed = started.elapsed();
    let b = &f.upstream.backends[f.index];
    let latency = first_reply.unwrap_or(elapsed);
    b.plugin.load.finish(latency);
    if first_reply.is_some() {
        f.upstream
            .record_outcome(f.index, PassiveOutcome::Status(200));
    }
    f.upstream.balancer.release(
        f.index,
        &switchyard_plugin::Outcome {
            elapsed: latency,
            ok: first_reply.is_some(),
        },
    );
    if f.shared.access_log.enabled() {
        let client = f.peer.to_string();
        f.shared.access_log.write(&StreamEntry {
            time: &super::time_since(elapsed),
            stream: &f.stream.name,
            protocol: f.stream.protocol.as_str(),
            client: &client,
            sni: None,
            upstream: Some(&f.upstream.name),
            backend: Some(&b.addr),
            bytes_in: f.state.bytes_in.load(Ordering::Relaxed),
            bytes_out: f.state.bytes_out.load(Ordering::Relaxed),
            duration_ms: elapsed.as_secs_f64() * 1000.0,
            result,
        });
    }
}
