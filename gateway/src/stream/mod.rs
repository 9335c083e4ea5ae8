//! L4 streams (`[[stream]]`): TCP, UDP and TLS passthrough, balanced over the same
//! upstreams as HTTP traffic.
//!
//! # Shape
//!
//! [`StreamService`] is a pingora background service (on its own runtime, with
//! `server.threads` threads). It keeps one listening socket per stream address and follows
//! reloads: every [`MAINTENANCE_TICK`](crate::health::MAINTENANCE_TICK) it looks at
//! `Shared.runtime` and, when it changed, compiles each stream ([`StreamRuntime`]: its
//! upstreams, SNI table, timeouts), hands it to the socket's accept loop (an `ArcSwap`, so a
//! changed stream applies to the next connection), binds sockets for new addresses and
//! stops accepting on removed ones. Established connections are tasks of their own and are
//! never touched by a reload: one accepted on a removed stream finishes on the stream as it
//! was.
//!
//! Backends are picked with [`UpstreamRuntime::pick`] (hash algorithms get the client
//! address), counted with `BackendLoad::start`/`finish` (so the least-connections family
//! sees open streams), and connect failures are passive-health failures
//! ([`UpstreamRuntime::record_outcome`]); health, drain, ejection and slow start come from
//! the backends' shared state, exactly as for HTTP. Active health checks run for every
//! upstream, streams' included (`health_check = { kind = "tcp" }`).
//!
//! # Shutdown and upgrade
//!
//! On SIGTERM/SIGQUIT the service stops accepting (the listening sockets close) and open
//! TCP connections go on; each counts in `Shared.in_flight`, which the shutdown watcher
//! waits on until `server.grace_period`. UDP flows end with the service (a datagram
//! protocol has no connection to finish). Stream sockets are bound with `SO_REUSEPORT`:
//! a new process started with `-u` binds the same addresses while the old one still
//! drains, and the kernel spreads new connections between them until the old one closes
//! its sockets (pingora's own socket hand-over covers only its listening services).
//!
//! # Copying
//!
//! TCP bytes are read into a buffer on the stack and written straight to the other side;
//! only what the other side does not take at once waits on the heap until it does, so an
//! idle connection holds no copy buffer (about 2 KiB of memory per idle stream in all).
//!
//! # Defaults
//!
//! `idle_timeout`: 10 minutes for TCP (as nginx `proxy_timeout` 10m), 30 s for UDP flows.
//! `max_connections`: none for TCP, 65536 UDP flows. `handshake_timeout` (reading a
//! ClientHello or a PROXY header): 5 s.

pub mod config;
pub mod metrics;
pub mod proxy_protocol;
pub mod sni;
pub mod tcp;
pub mod udp;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use async_trait::async_trait;
use ipnet::IpNet;
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::{
    background_service, BackgroundService, GenBackgroundService,
};
use socket2::{Domain, Protocol, Socket, Type};
use tokio::sync::watch;

use crate::config::{ProxyProtocolVersion, StreamProtocol};
use crate::state::{InFlight, Runtime, Shared};
use crate::upstream::UpstreamRuntime;

use self::metrics::StreamChildren;
use self::sni::SniTable;

/// TCP `idle_timeout` when the stream sets none.
pub const DEFAULT_TCP_IDLE: Duration = Duration::from_secs(600);
/// UDP `idle_timeout` when the stream sets none (the contract's default).
pub const DEFAULT_UDP_IDLE: Duration = Duration::from_secs(30);
/// `handshake_timeout` when the stream sets none.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// UDP flows kept at most when the stream sets no `max_connections`.
pub const DEFAULT_UDP_FLOWS: usize = 65536;

/// One compiled `[[stream]]`: what a new connection on its socket uses.
#[derive(Debug)]
pub struct StreamRuntime {
    /// The stream's name.
    pub name: String,
    /// Its protocol.
    pub protocol: StreamProtocol,
    /// The address it listens on.
    pub addr: SocketAddr,
    /// The upstream (for tls-passthrough: the default when no SNI route matches).
    pub upstream: Option<Arc<UpstreamRuntime>>,
    /// tls-passthrough: upstreams by server name.
    pub sni: SniTable<Arc<UpstreamRuntime>>,
    /// No byte either way for this long closes a connection (forgets a flow).
    pub idle_timeout: Duration,
    /// Time allowed for a ClientHello or a PROXY header.
    pub handshake_timeout: Duration,
    /// PROXY header sent to backends.
    pub proxy_protocol: Option<ProxyProtocolVersion>,
    /// Read a PROXY header from trusted proxies.
    pub accept_proxy_protocol: bool,
    /// `server.trusted_proxies`.
    pub trusted_proxies: Vec<IpNet>,
    /// Most open connections (flows).
    pub max_connections: usize,
    /// Its metric children.
    pub metrics: StreamChildren,
}

impl StreamRuntime {
    /// Compile stream `index` of `runtime`'s configuration.
    pub fn build(runtime: &Runtime, index: usize, shared: &Shared) -> Option<Self> {
        let config = &runtime.config;
        let s = config.streams.get(index)?;
        let upstream_named = |name: &str| {
            config
                .upstreams
                .iter()
                .position(|u| u.name.get_ref() == name)
                .and_then(|i| runtime.upstreams.get(i))
                .cloned()
        };
        let protocol = *s.protocol.get_ref();
        let sni = s
            .sni_routes
            .iter()
            .flat_map(|r| r.get_ref())
            .filter_map(|r| {
                Some((
                    r.sni.get_ref().clone(),
                    upstream_named(r.upstream.get_ref())?,
                ))
            })
            .collect::<Vec<_>>();
        let udp = protocol == StreamProtocol::Udp;
        Some(Self {
            name: s.name.get_ref().clone(),
            protocol,
            addr: *s.addr.get_ref(),
            upstream: s
                .upstream
                .as_ref()
                .and_then(|u| upstream_named(u.get_ref())),
            sni: SniTable::new(sni),
            idle_timeout: s.idle_timeout.map_or(
                if udp {
                    DEFAULT_UDP_IDLE
                } else {
                    DEFAULT_TCP_IDLE
                },
                |d| d.get(),
            ),
            handshake_timeout: s
                .handshake_timeout
                .map_or(DEFAULT_HANDSHAKE_TIMEOUT, |d| d.get()),
            proxy_protocol: s.proxy_protocol.as_ref().map(|p| *p.get_ref()),
            accept_proxy_protocol: s.accept_proxy_protocol,
            trusted_proxies: config.trusted_proxies.clone(),
            max_connections: s
                .max_connections
                .as_ref()
                .map_or(if udp { DEFAULT_UDP_FLOWS } else { usize::MAX }, |m| {
                    *m.get_ref()
                }),
            metrics: shared.metrics.stream.children(s.name.get_ref()),
        })
    }

    /// The upstream for a tls-passthrough connection that sent server name `sni`.
    pub fn route(&self, sni: Option<&str>) -> Option<Arc<UpstreamRuntime>> {
        sni.and_then(|n| self.sni.lookup(n))
            .or(self.upstream.as_ref())
            .cloned()
    }

    /// Whether a PROXY header is read from a client at `peer`.
    pub fn reads_proxy_header(&self, peer: SocketAddr) -> bool {
        self.accept_proxy_protocol && self.trusted_proxies.iter().any(|n| n.contains(&peer.ip()))
    }
}

/// Which socket a stream needs: its transport and address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SocketKey {
    /// TCP (tcp, tls-passthrough) or UDP.
    pub tcp: bool,
    /// The address.
    pub addr: SocketAddr,
}

impl SocketKey {
    fn of(protocol: StreamProtocol, addr: SocketAddr) -> Self {
        Self {
            tcp: config::is_tcp(protocol),
            addr,
        }
    }
}

/// Before a reload is put in force: check that each address the new configuration adds
/// can be bound (bound, never listened on, then closed), so that an address in use fails
/// the reload with the stream's `FILE:LINE:COLUMN` and the running configuration stays.
/// Addresses the running configuration already serves are not probed.
pub fn check_new_addresses(
    current: &crate::config::Config,
    next: &crate::config::Config,
) -> Result<(), String> {
    let running: std::collections::HashSet<SocketKey> = current
        .streams
        .iter()
        .map(|s| SocketKey::of(*s.protocol.get_ref(), *s.addr.get_ref()))
        .collect();
    let text = std::fs::read_to_string(&next.path).unwrap_or_default();
    let mut errors = Vec::new();
    for s in &next.streams {
        let key = SocketKey::of(*s.protocol.get_ref(), *s.addr.get_ref());
        if running.contains(&key) {
            continue;
        }
        if let Err(e) = bind_only(key) {
            let (line, col) = crate::config::error::line_col(&text, s.addr.span().start);
            errors.push(format!(
                "{}:{line}:{col}: stream `{}`: cannot listen on {} ({}): {e}",
                next.path,
                s.name.get_ref(),
                key.addr,
                if key.tcp { "tcp" } else { "udp" },
            ));
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors.join("\n"))
    }
}

/// A socket for `key` with the stream options, bound but not listening.
fn bind_only(key: SocketKey) -> std::io::Result<Socket> {
    let domain = Domain::for_address(key.addr);
    let socket = if key.tcp {
        Socket::new(domain, Type::STREAM, Some(Protocol::TCP))?
    } else {
        Socket::new(domain, Type::DGRAM, Some(Protocol::UDP))?
    };
    if key.addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&key.addr.into())?;
    Ok(socket)
}

/// Bind a stream socket (`SO_REUSEADDR`, `SO_REUSEPORT`, non-blocking; IPv6 sockets are
/// IPv6 only, so `[::]` and `0.0.0.0` are different addresses).
pub fn bind(key: SocketKey) -> std::io::Result<Socket> {
    let socket = bind_only(key)?;
    if key.tcp {
        socket.listen(1024)?;
    }
    Ok(socket)
}

/// What every connection of one socket shares, across the stream's reloads.
#[derive(Debug)]
pub(crate) struct Listener {
    /// The stream as last compiled.
    pub(crate) current: ArcSwap<StreamRuntime>,
    /// Open connections (flows) of this socket.
    pub(crate) open: AtomicUsize,
    /// Turns true when the socket is to stop (stream removed, or shutdown).
    pub(crate) stop: watch::Sender<bool>,
}

/// Counts one open connection (flow) for as long as it lives: the socket's count for
/// `max_connections`, the stream's active gauge, and (TCP) the process's in-flight count
/// that graceful shutdown waits on.
#[derive(Debug)]
pub(crate) struct Open {
    listener: Arc<Listener>,
    gauge: prometheus::IntGauge,
    _in_flight: Option<InFlight>,
}

impl Open {
    /// Count one more, unless `max_connections` is reached (`None`).
    pub(crate) fn try_new(
        listener: &Arc<Listener>,
        stream: &StreamRuntime,
        shared: Option<&Arc<Shared>>,
    ) -> Option<Self> {
        let max = stream.max_connections;
        listener
            .open
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()?;
        stream.metrics.active.inc();
        Some(Self {
            listener: listener.clone(),
            gauge: stream.metrics.active.clone(),
            _in_flight: shared.map(InFlight::new),
        })
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        self.listener.open.fetch_sub(1, Ordering::Relaxed);
        self.gauge.dec();
    }
}

/// A bound socket and its accept (receive) loop.
struct Bound {
    listener: Arc<Listener>,
}

/// The background service that binds, serves and unbinds stream sockets as the
/// configuration changes.
pub struct StreamService {
    shared: Arc<Shared>,
    /// Sockets bound at start (before daemonizing), taken by the first reconcile.
    initial: Mutex<HashMap<SocketKey, Socket>>,
}

impl std::fmt::Debug for StreamService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamService").finish_non_exhaustive()
    }
}

impl StreamService {
    /// Bind every stream socket of the configuration in force, so that an address in use
    /// fails the start with the stream's `FILE:LINE:COLUMN`.
    pub fn bind(shared: Arc<Shared>) -> Result<Self, String> {
        let runtime = shared.runtime.load_full();
        let config = &runtime.config;
        let text = std::fs::read_to_string(&config.path).unwrap_or_default();
        let mut initial = HashMap::new();
        let mut errors = Vec::new();
        for s in &config.streams {
            let key = SocketKey::of(*s.protocol.get_ref(), *s.addr.get_ref());
            match bind(key) {
                Ok(socket) => {
                    initial.insert(key, socket);
                }
                Err(e) => {
                    let (line, col) = crate::config::error::line_col(&text, s.addr.span().start);
                    errors.push(format!(
                        "{}:{line}:{col}: stream `{}`: cannot listen on {} ({}): {e}",
                        config.path,
                        s.name.get_ref(),
                        key.addr,
                        if key.tcp { "tcp" } else { "udp" },
                    ));
                }
            }
        }
        if errors.is_empty() {
            Ok(Self {
                shared,
                initial: Mutex::new(initial),
            })
        } else {
            Err(errors.join("\n"))
        }
    }

    /// The service wrapped for `server.add_service(...)`, on `threads` threads.
    pub fn into_service(self, threads: usize) -> GenBackgroundService<StreamService> {
        let mut service = background_service("streams", self);
        service.threads = Some(threads.max(1));
        service
    }

    async fn run(&self, shutdown: ShutdownWatch) {
        let mut bound: HashMap<SocketKey, Bound> = HashMap::new();
        let mut failed = false;
        let mut ticks = 0u32;
        crate::health::every_tick_until_shutdown(&self.shared, shutdown, |runtime, changed| {
            ticks = ticks.wrapping_add(1);
            // Retry addresses that could not be bound every few seconds.
            if changed || (failed && ticks.is_multiple_of(16)) {
                failed = self.reconcile(runtime, &mut bound, changed);
            }
        })
        .await;
        if !bound.is_empty() {
            log::info!(
                "streams: shutting down, no new connections on {} socket(s)",
                bound.len()
            );
        }
        for (_, b) in bound.drain() {
            let _ = b.listener.stop.send(true);
        }
    }

    /// Make the bound sockets those of `runtime`'s streams. Returns whether some address
    /// could not be bound.
    fn reconcile(
        &self,
        runtime: &Arc<Runtime>,
        bound: &mut HashMap<SocketKey, Bound>,
        changed: bool,
    ) -> bool {
        let mut wanted: HashMap<SocketKey, Arc<StreamRuntime>> = HashMap::new();
        for i in 0..runtime.config.streams.len() {
            if let Some(s) = StreamRuntime::build(runtime, i, &self.shared) {
                wanted
                    .entry(SocketKey::of(s.protocol, s.addr))
                    .or_insert_with(|| Arc::new(s));
            }
        }
        bound.retain(|key, b| {
            let keep = wanted.contains_key(key);
            if !keep {
                log::info!(
                    "stream {}: removed; no new connections on {} (open ones finish)",
                    b.listener.current.load().name,
                    key.addr
                );
                let _ = b.listener.stop.send(true);
            }
            keep
        });
        let mut failed = false;
        for (key, stream) in wanted {
            if let Some(b) = bound.get(&key) {
                if changed {
                    b.listener.current.store(stream);
                }
                continue;
            }
            let socket = self
                .initial
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&key);
            let socket = match socket.map_or_else(|| bind(key), Ok) {
                Ok(s) => s,
                Err(e) => {
                    if changed {
                        log::error!(
                            "stream {}: cannot listen on {} ({}): {e}; retrying",
                            stream.name,
                            key.addr,
                            if key.tcp { "tcp" } else { "udp" }
                        );
                    }
                    failed = true;
                    continue;
                }
            };
            let (stop, stopped) = watch::channel(false);
            let listener = Arc::new(Listener {
                current: ArcSwap::new(stream.clone()),
                open: AtomicUsize::new(0),
                stop,
            });
            let started = if key.tcp {
                tcp::spawn_listener(self.shared.clone(), listener.clone(), socket, stopped)
            } else {
                udp::spawn_listener(self.shared.clone(), listener.clone(), socket, stopped)
            };
            match started {
                Ok(()) => {
                    log::info!(
                        "stream {}: {} on {}",
                        stream.name,
                        stream.protocol.as_str(),
                        key.addr
                    );
                    bound.insert(key, Bound { listener });
                }
                Err(e) => {
                    log::error!("stream {}: cannot serve {}: {e}", stream.name, key.addr);
                    failed = true;
                }
            }
        }
        failed
    }
}

#[async_trait]
impl BackgroundService for StreamService {
    async fn start(&self, shutdown: ShutdownWatch) {
        self.run(shutdown).await;
    }
}

/// The RFC 3339 time `elapsed` ago.
pub(crate) fn time_since(elapsed: Duration) -> String {
    (time::OffsetDateTime::now_utc() - elapsed)
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}
