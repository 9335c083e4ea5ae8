//! Upstreams at run time: each upstream's backends, their state, and its balancer.
//!
//! A backend's live load ([`BackendLoad`]) and state ([`BackendState`]) are kept in a
//! [`BackendRegistry`] keyed by (upstream name, backend address), so they outlive any one
//! compiled configuration: a reload that keeps a backend keeps its counters.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::HeaderMap;
use pingora_core::upstreams::peer::HttpPeer;
use switchyard_plugin::{Backend, BackendLoad, Balancer, Pick, Registry};

use crate::config::{Config, UpstreamSection};
use crate::router::{cookie_value, query_value};

/// State of one backend that the gateway (not the balancer) decides.
#[derive(Debug)]
pub struct BackendState {
    /// Passing health checks (true until a check says otherwise).
    pub healthy: AtomicBool,
    /// Drained by the admin API: no new requests.
    pub draining: AtomicBool,
}

impl Default for BackendState {
    fn default() -> Self {
        Self {
            healthy: AtomicBool::new(true),
            draining: AtomicBool::new(false),
        }
    }
}

impl BackendState {
    /// Whether new requests may go to this backend.
    pub fn eligible(&self) -> bool {
        self.healthy.load(Ordering::Relaxed) && !self.draining.load(Ordering::Relaxed)
    }
}

/// Live state shared across configurations, keyed by (upstream, backend address).
#[derive(Debug, Default)]
pub struct BackendRegistry {
    entries: Mutex<HashMap<(String, String), (Arc<BackendLoad>, Arc<BackendState>)>>,
}

impl BackendRegistry {
    /// The load record and state of a backend, created on first use.
    pub fn get(&self, upstream: &str, addr: &str) -> (Arc<BackendLoad>, Arc<BackendState>) {
        let mut map = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        map.entry((upstream.to_owned(), addr.to_owned()))
            .or_default()
            .clone()
    }
}

/// Where a hash algorithm takes its key from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HashKey {
    /// The client address.
    ClientIp,
    /// A request header.
    Header(http::HeaderName),
    /// A cookie.
    Cookie(String),
    /// The path.
    Path,
    /// A query parameter.
    Query(String),
}

impl HashKey {
    /// Parse a validated `hash_key` setting.
    pub fn parse(text: &str) -> Option<Self> {
        Some(match text.split_once(':') {
            None if text == "client-ip" => HashKey::ClientIp,
            None if text == "path" => HashKey::Path,
            Some(("header", n)) => {
                HashKey::Header(http::HeaderName::from_bytes(n.as_bytes()).ok()?)
            }
            Some(("cookie", n)) => HashKey::Cookie(n.to_owned()),
            Some(("query", n)) => HashKey::Query(n.to_owned()),
            _ => return None,
        })
    }

    /// The key bytes for a request (`None` for the client address, which the balancer
    /// reads from [`Pick::client_ip`], or when the request lacks the key).
    pub fn extract<'r>(
        &self,
        headers: &'r HeaderMap,
        path: &'r str,
        query: Option<&'r str>,
    ) -> Option<&'r [u8]> {
        match self {
            HashKey::ClientIp => None,
            HashKey::Header(name) => headers.get(name).map(|v| v.as_bytes()),
            HashKey::Cookie(name) => cookie_value(headers, name).map(str::as_bytes),
            HashKey::Path => Some(path.as_bytes()),
            HashKey::Query(name) => query_value(query, name).map(str::as_bytes),
        }
    }
}

/// One backend of a compiled upstream.
#[derive(Debug)]
pub struct BackendRuntime {
    /// Address as written in the configuration (the metrics label).
    pub addr: String,
    /// Resolved socket address.
    pub socket: SocketAddr,
    /// Weight and live load, as balancers see them.
    pub plugin: Backend,
    /// Health and drain state.
    pub state: Arc<BackendState>,
    /// The peer template cloned for each request.
    pub peer: HttpPeer,
}

/// A compiled upstream.
pub struct UpstreamRuntime {
    /// Name from the configuration.
    pub name: String,
    /// Algorithm name.
    pub algorithm: String,
    /// The backends, in configuration order.
    pub backends: Vec<BackendRuntime>,
    /// The balancer built for these backends.
    pub balancer: Box<dyn Balancer>,
    /// Hash key source, for hash algorithms.
    pub hash_key: Option<HashKey>,
    /// Extra attempts on other backends after a connect failure.
    pub retries: u32,
    /// Base of the exponential retry backoff.
    pub retry_backoff: Duration,
}

impl std::fmt::Debug for UpstreamRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamRuntime")
            .field("name", &self.name)
            .field("algorithm", &self.algorithm)
            .field("backends", &self.backends)
            .finish_non_exhaustive()
    }
}

impl UpstreamRuntime {
    /// Build an upstream from its validated section.
    pub fn build(
        section: &UpstreamSection,
        resolved: &[SocketAddr],
        registry: &Registry,
        live: &BackendRegistry,
    ) -> Result<Self, String> {
        let name = section.name.get_ref().clone();
        let connect_timeout = section
            .connect_timeout
            .map_or(Duration::from_secs(1), |d| d.get());
        let read_timeout = section
            .read_timeout
            .map_or(Duration::from_secs(30), |d| d.get());
        let backends: Vec<BackendRuntime> = section
            .backends
            .get_ref()
            .iter()
            .zip(resolved)
            .map(|(b, socket)| {
                let addr = b.addr.get_ref().clone();
                let (load, state) = live.get(&name, &addr);
                let mut peer = HttpPeer::new(*socket, false, String::new());
                peer.options.connection_timeout = Some(connect_timeout);
                peer.options.read_timeout = Some(read_timeout);
                peer.options.idle_timeout = Some(Duration::from_secs(60));
                BackendRuntime {
                    plugin: Backend {
                        addr: addr.clone(),
                        weight: *b.weight.get_ref(),
                        load,
                    },
                    addr,
                    socket: *socket,
                    state,
                    peer,
                }
            })
            .collect();
        let factory = registry
            .balancer(section.algorithm.get_ref())
            .ok_or_else(|| format!("unknown algorithm `{}`", section.algorithm.get_ref()))?;
        let plugins: Vec<Backend> = backends.iter().map(|b| b.plugin.clone()).collect();
        let mut options = serde_json::Map::new();
        if let Some(k) = &section.hash_key {
            options.insert("hash_key".into(), k.get_ref().clone().into());
        }
        if let Some(r) = &section.resource {
            let mut m = serde_json::Map::new();
            if let Some(p) = &r.path {
                m.insert("path".into(), p.clone().into());
            }
            if let Some(d) = r.max_age {
                m.insert(
                    "max_age".into(),
                    format!("{}ms", d.get().as_millis()).into(),
                );
            }
            if let Some(d) = r.interval {
                m.insert(
                    "interval".into(),
                    format!("{}ms", d.get().as_millis()).into(),
                );
            }
            options.insert("resource".into(), m.into());
        }
        let balancer = factory
            .build(&plugins, &serde_json::Value::Object(options))
            .map_err(|e| format!("upstream `{name}`: {e}"))?;
        Ok(Self {
            name,
            algorithm: section.algorithm.get_ref().clone(),
            backends,
            balancer,
            hash_key: section
                .hash_key
                .as_ref()
                .and_then(|k| HashKey::parse(k.get_ref())),
            retries: section.retries.unwrap_or(1),
            retry_backoff: section
                .retry_backoff
                .map_or(Duration::from_millis(25), |d| d.get()),
        })
    }

    /// Pick an eligible backend, avoiding `avoid` (the one that just failed) while another
    /// eligible backend exists.
    pub fn pick(
        &self,
        client_ip: Option<IpAddr>,
        key: Option<&[u8]>,
        avoid: Option<usize>,
    ) -> Option<usize> {
        let backends = &self.backends;
        let eligible = |i: usize| Some(i) != avoid && backends[i].state.eligible();
        let pick = Pick::new(backends.len(), &eligible)
            .with_client_ip(client_ip)
            .with_key(key);
        self.balancer.pick(&pick).or_else(|| {
            // Only the avoided backend is left: better to try it again than to fail.
            let eligible = |i: usize| backends[i].state.eligible();
            let pick = Pick::new(backends.len(), &eligible)
                .with_client_ip(client_ip)
                .with_key(key);
            avoid.and_then(|_| self.balancer.pick(&pick))
        })
    }
}

/// Build every upstream of a configuration.
pub fn build_all(
    config: &Config,
    registry: &Registry,
    live: &BackendRegistry,
) -> Result<Vec<Arc<UpstreamRuntime>>, String> {
    config
        .upstreams
        .iter()
        .zip(&config.resolved)
        .map(|(u, r)| UpstreamRuntime::build(u, r, registry, live).map(Arc::new))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_key_extracts_each_source() {
        let mut h = HeaderMap::new();
        h.insert("x-user", "alice".parse().unwrap());
        h.insert("cookie", "sid=42; a=b".parse().unwrap());
        let get = |k: &str| {
            HashKey::parse(k)
                .unwrap()
                .extract(&h, "/p", Some("id=7"))
                .map(|b| b.to_vec())
        };
        assert_eq!(get("header:x-user"), Some(b"alice".to_vec()));
        assert_eq!(get("cookie:sid"), Some(b"42".to_vec()));
        assert_eq!(get("path"), Some(b"/p".to_vec()));
        assert_eq!(get("query:id"), Some(b"7".to_vec()));
        assert_eq!(get("client-ip"), None);
    }

    #[test]
    fn registry_keeps_state_by_identity() {
        let live = BackendRegistry::default();
        let (a, _) = live.get("u", "127.0.0.1:1");
        a.start();
        let (b, _) = live.get("u", "127.0.0.1:1");
        assert_eq!(b.in_flight(), 1);
        let (c, _) = live.get("v", "127.0.0.1:1");
        assert_eq!(c.in_flight(), 0);
    }
}
