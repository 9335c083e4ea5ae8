//! The responder's sockets and its background service.
//!
//! [`GslbService`] follows the configuration like the health service does
//! ([`crate::health::every_tick_until_shutdown`]): when `[gslb]` appears it serves on the
//! sockets bound at start or by the reload ([`super::GslbLive::prepare`], so that a bind
//! failure is the start's or the reload's error), when `addr` moves it switches to the new
//! sockets and closes the old ones, and when `[gslb]` goes away it stops. It also keeps one
//! probe task per site health check and one poll task per site load report.
//!
//! UDP: a few tasks share the socket; each answers a datagram at once (no await between
//! receiving and answering but the send). TCP: one task per connection, at most
//! [`MAX_TCP_CONNECTIONS`], each message bounded by [`TCP_IDLE`]; queries are answered in
//! order. A query never waits on another client.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::{
    background_service, BackgroundService, GenBackgroundService,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::Semaphore;
use tokio::task::AbortHandle;

use super::config::{LoadPoll, SiteCheck};
use super::dns::{answer, Transport};
use super::{Bound, SiteLive};
use crate::state::Shared;

/// Most TCP connections served at once; more wait in the accept queue.
pub const MAX_TCP_CONNECTIONS: usize = 512;
/// How long a TCP connection may sit between (or inside) messages.
pub const TCP_IDLE: Duration = Duration::from_secs(10);

/// Answer datagrams on `socket` for ever.
async fn udp_loop(socket: Arc<UdpSocket>, shared: Arc<Shared>) {
    let mut buf = vec![0u8; 65535];
    loop {
        let (n, peer) = match socket.recv_from(&mut buf).await {
            Ok(x) => x,
            Err(e) => {
                // ICMP errors of earlier sends surface here on some systems: keep going.
                log::debug!("gslb: UDP receive: {e}");
                continue;
            }
        };
        let runtime = shared.runtime.load();
        let Some(gslb) = runtime.gslb.as_deref() else {
            continue;
        };
        let Some(reply) = answer(
            gslb,
            &shared.metrics.gslb,
            &buf[..n],
            peer.ip(),
            Transport::Udp,
        ) else {
            continue;
        };
        drop(runtime);
        if let Err(e) = socket.send_to(&reply, peer).await {
            log::debug!("gslb: UDP send to {peer}: {e}");
        }
    }
}

/// Accept TCP connections for ever.
async fn tcp_loop(listener: TcpListener, shared: Arc<Shared>) {
    let slots = Arc::new(Semaphore::new(MAX_TCP_CONNECTIONS));
    loop {
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        let (stream, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                log::debug!("gslb: TCP accept: {e}");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            tcp_connection(stream, peer, &shared).await;
            drop(permit);
        });
    }
}

/// Serve one TCP connection: length-prefixed messages, answered in order.
async fn tcp_connection(mut stream: TcpStream, peer: SocketAddr, shared: &Shared) {
    stream.set_nodelay(true).ok();
    let mut len = [0u8; 2];
    let mut buf = Vec::new();
    loop {
        match tokio::time::timeout(TCP_IDLE, stream.read_exact(&mut len)).await {
            Ok(Ok(_)) => {}
            _ => return,
        }
        let n = usize::from(u16::from_be_bytes(len));
        buf.resize(n, 0);
        match tokio::time::timeout(TCP_IDLE, stream.read_exact(&mut buf)).await {
            Ok(Ok(_)) => {}
            _ => return,
        }
        let reply = {
            let runtime = shared.runtime.load();
            let Some(gslb) = runtime.gslb.as_deref() else {
                return;
            };
            answer(gslb, &shared.metrics.gslb, &buf, peer.ip(), Transport::Tcp)
        };
        let Some(reply) = reply else {
            // Not a DNS query at all: nothing more to expect from this peer.
            return;
        };
        let Ok(size) = u16::try_from(reply.len()) else {
            return;
        };
        let mut framed = Vec::with_capacity(reply.len() + 2);
        framed.extend_from_slice(&size.to_be_bytes());
        framed.extend_from_slice(&reply);
        match tokio::time::timeout(TCP_IDLE, stream.write_all(&framed)).await {
            Ok(Ok(())) => {}
            _ => return,
        }
    }
}

/// `d` moved by a random amount within ± `jitter`.
fn jittered(d: Duration, jitter: Duration) -> Duration {
    let j = jitter.as_secs_f64() * (2.0 * rand::random::<f64>() - 1.0);
    Duration::from_secs_f64((d.as_secs_f64() + j).max(0.001))
}

/// Probe a site for ever with the gateway's health probe, counting results into its
/// state and passing round trips into its smoothed RTT.
async fn probe_loop(site: String, live: Arc<SiteLive>, check: SiteCheck) {
    let interval = check.check.interval;
    tokio::time::sleep(interval.mul_f64(rand::random::<f64>())).await;
    loop {
        let started = tokio::time::Instant::now();
        let result = crate::health::probe(&check.check, check.socket, &check.host).await;
        if result.is_ok() {
            live.record_rtt(started.elapsed());
        } else if let Err(why) = &result {
            log::debug!("gslb: health check of site {site} failed: {why}");
        }
        match live.state.record_probe(result.is_ok(), &check.check) {
            Some(true) => log::info!(
                "gslb: site {site} is healthy again after {} passing checks",
                check.check.passes
            ),
            Some(false) => log::warn!(
                "gslb: site {site} is unhealthy after {} failed checks (last: {})",
                check.check.fails,
                result.err().unwrap_or_default()
            ),
            None => {}
        }
        tokio::time::sleep_until(started + jittered(interval, check.jitter)).await;
    }
}

/// Parse a site's load report: JSON `{"load": x}`, `x` a finite number of at least 0.
pub fn parse_load(body: &[u8]) -> Result<f64, String> {
    let value: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| format!("not JSON: {e}"))?;
    match value.get("load").and_then(serde_json::Value::as_f64) {
        Some(x) if x.is_finite() && x >= 0.0 => Ok(x),
        _ => Err("expected a JSON object like {\"load\": 0.42}".into()),
    }
}

/// Poll a site's load report for ever.
async fn poll_loop(site: String, live: Arc<SiteLive>, poll: LoadPoll) {
    tokio::time::sleep(poll.interval.mul_f64(rand::random::<f64>() * 0.2)).await;
    loop {
        let started = tokio::time::Instant::now();
        let t = &poll.target;
        let result = match tokio::time::timeout(
            poll.timeout,
            crate::resource::fetch(t.socket, &t.host, &t.path),
        )
        .await
        {
            Ok(Ok(body)) => parse_load(&body),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(format!("no answer within {:?}", poll.timeout)),
        };
        match result {
            Ok(load) => live.record_load(load, std::time::Instant::now()),
            Err(e) => log::debug!("gslb: load report of site {site}: {e}"),
        }
        tokio::time::sleep_until(started + jittered(poll.interval, poll.interval / 10)).await;
    }
}

/// The sockets being served and their tasks.
struct Serving {
    addr: SocketAddr,
    tasks: Vec<AbortHandle>,
}

impl Drop for Serving {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// The responder and its sites' checks, as a pingora background service.
pub struct GslbService {
    shared: Arc<Shared>,
    udp_workers: usize,
}

impl std::fmt::Debug for GslbService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GslbService").finish_non_exhaustive()
    }
}

impl GslbService {
    /// The service over `shared`, on a runtime of `threads` threads.
    pub fn service(shared: Arc<Shared>, threads: usize) -> GenBackgroundService<GslbService> {
        let threads = threads.max(1);
        let mut s = background_service(
            "gslb",
            Self {
                shared,
                udp_workers: threads,
            },
        );
        s.threads = Some(threads);
        s
    }

    fn start_serving(&self, bound: Bound) -> Result<Serving, String> {
        let addr = bound.addr;
        let udp = UdpSocket::from_std(bound.udp).map_err(|e| format!("gslb UDP {addr}: {e}"))?;
        let tcp = TcpListener::from_std(bound.tcp).map_err(|e| format!("gslb TCP {addr}: {e}"))?;
        let udp = Arc::new(udp);
        let mut tasks = Vec::new();
        for _ in 0..self.udp_workers {
            tasks.push(tokio::spawn(udp_loop(udp.clone(), self.shared.clone())).abort_handle());
        }
        tasks.push(tokio::spawn(tcp_loop(tcp, self.shared.clone())).abort_handle());
        log::info!("gslb: answering DNS on {addr} (UDP and TCP)");
        Ok(Serving { addr, tasks })
    }

    async fn run(&self, shutdown: ShutdownWatch) {
        let live = &self.shared.live.gslb;
        let mut serving: Option<Serving> = None;
        let mut probes: HashMap<(String, SiteCheck), AbortHandle> = HashMap::new();
        let mut polls: HashMap<(String, LoadPoll), AbortHandle> = HashMap::new();
        crate::health::every_tick_until_shutdown(&self.shared, shutdown, |runtime, changed| {
            let Some(gslb) = runtime.gslb.as_deref() else {
                if serving.take().is_some() {
                    log::info!("gslb: [gslb] removed; the responder stopped");
                    live.set_serving(None);
                }
                for t in probes
                    .drain()
                    .map(|x| x.1)
                    .chain(polls.drain().map(|x| x.1))
                {
                    t.abort();
                }
                return;
            };
            if !changed {
                return;
            }
            if serving.as_ref().map(|s| s.addr) != Some(gslb.addr) {
                let bound = live.take(gslb.addr).map_or_else(
                    || {
                        Bound::bind(
                            gslb.addr,
                            live.reuse_port.load(std::sync::atomic::Ordering::Relaxed),
                        )
                    },
                    Ok,
                );
                match bound.and_then(|b| self.start_serving(b)) {
                    Ok(s) => {
                        live.set_serving(Some(s.addr));
                        serving = Some(s);
                    }
                    Err(e) => log::error!("{e}"),
                }
            }
            let mut wanted_probes = std::collections::HashSet::new();
            let mut wanted_polls = std::collections::HashSet::new();
            for site in &gslb.sites {
                match &site.check {
                    Some(check) => {
                        let key = (site.name.clone(), check.clone());
                        probes.entry(key.clone()).or_insert_with(|| {
                            tokio::spawn(probe_loop(
                                site.name.clone(),
                                site.live.clone(),
                                check.clone(),
                            ))
                            .abort_handle()
                        });
                        wanted_probes.insert(key);
                    }
                    None => {
                        if site.live.state.mark_healthy_unchecked() {
                            log::info!("gslb: site {} marked healthy (no health_check)", site.name);
                        }
                    }
                }
                match &site.load {
                    Some(poll) => {
                        let key = (site.name.clone(), poll.clone());
                        polls.entry(key.clone()).or_insert_with(|| {
                            tokio::spawn(poll_loop(
                                site.name.clone(),
                                site.live.clone(),
                                poll.clone(),
                            ))
                            .abort_handle()
                        });
                        wanted_polls.insert(key);
                    }
                    None => site.live.forget_load(),
                }
            }
            probes.retain(|k, t| {
                let keep = wanted_probes.contains(k);
                if !keep {
                    t.abort();
                }
                keep
            });
            polls.retain(|k, t| {
                let keep = wanted_polls.contains(k);
                if !keep {
                    t.abort();
                }
                keep
            });
        })
        .await;
        for t in probes
            .drain()
            .map(|x| x.1)
            .chain(polls.drain().map(|x| x.1))
        {
            t.abort();
        }
        drop(serving);
        live.set_serving(None);
    }
}

#[async_trait]
impl BackgroundService for GslbService {
    async fn start(&self, shutdown: ShutdownWatch) {
        self.run(shutdown).await;
    }
}
