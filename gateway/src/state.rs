//! State shared by every listener, the admin listener and the signal handler.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;
use switchyard_plugin::Registry;
use switchyard_session::{SessionStore, SessionStoreConfig};

use crate::access_log::{AccessLog, Destination};
use crate::affinity::{store_config, Affinity, SessionStoreHandle};
use crate::config::Config;
use crate::metrics::Metrics;
use crate::router::RouteTable;
use crate::upstream::{build_all, BackendRegistry, UpstreamRuntime};

/// One compiled configuration: swapped as a whole on reload.
#[derive(Debug)]
pub struct Runtime {
    /// The validated configuration.
    pub config: Config,
    /// The route table.
    pub routes: RouteTable,
    /// The upstreams, in configuration order (routes refer to them by index).
    pub upstreams: Vec<Arc<UpstreamRuntime>>,
    /// Each upstream's sticky sessions (same order as `upstreams`; `None` without
    /// `affinity`).
    pub affinity: Vec<Option<Arc<Affinity>>>,
    /// `[session_store]`, as the session store crate takes it.
    pub session_store: SessionStoreConfig,
    /// Per route (same order as `routes`): the metric children its requests update.
    pub route_metrics: Vec<crate::metrics::RouteMetrics>,
    /// `[gslb]`, compiled: the DNS responder's zone and sites.
    pub gslb: Option<Arc<crate::gslb::Gslb>>,
}

/// Everything the gateway's services share.
#[derive(Debug)]
pub struct Shared {
    /// The configuration in force.
    pub runtime: ArcSwap<Runtime>,
    /// Known algorithms.
    pub registry: Registry,
    /// Backend load and state kept across reloads.
    pub live: BackendRegistry,
    /// False once shutdown begins (`/health/ready` answers 503).
    pub ready: AtomicBool,
    /// Requests being processed.
    pub in_flight: AtomicUsize,
    /// The access log.
    pub access_log: AccessLog,
    /// The Prometheus metrics.
    pub metrics: Metrics,
    /// The session store, built on first use (see [`Shared::session_store`]).
    pub stores: SessionStoreHandle,
}

impl Shared {
    /// Compile `config` and build the shared state around it.
    pub fn new(config: Config, registry: Registry) -> Result<Arc<Self>, String> {
        let live = BackendRegistry::default();
        let runtime = compile(config, &registry, &live)?;
        let access_log = AccessLog::new(Destination::parse(&runtime.config.server.access_log));
        let stores = SessionStoreHandle::new(runtime.session_store.clone());
        Ok(Arc::new(Self {
            runtime: ArcSwap::from_pointee(runtime),
            registry,
            live,
            ready: AtomicBool::new(true),
            in_flight: AtomicUsize::new(0),
            access_log,
            metrics: Metrics::new(),
            stores,
        }))
    }

    /// The session store of the configuration in force, built on first use inside the
    /// running server (never before pingora forks into the background: the Redis store
    /// runs a thread of its own). `None` while it is not ready within the store's
    /// timeout: callers degrade.
    pub async fn session_store(&self) -> Option<Arc<dyn SessionStore>> {
        let runtime = self.runtime.load_full();
        self.stores.get(&runtime.session_store).await
    }

    /// Whether the gateway takes traffic.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }
}

/// Compile a validated configuration into a [`Runtime`].
pub fn compile(
    config: Config,
    registry: &Registry,
    live: &BackendRegistry,
) -> Result<Runtime, String> {
    let upstreams = build_all(&config, registry, live)?;
    let routes = RouteTable::build(&config);
    let session_store = store_config(&config.session_store);
    let affinity = config
        .upstreams
        .iter()
        .zip(&upstreams)
        .map(|(section, upstream)| {
            section
                .affinity
                .as_ref()
                .map(|a| Affinity::build(a, upstream, &session_store).map(Arc::new))
                .transpose()
        })
        .collect::<Result<Vec<_>, String>>()?;
    let route_metrics = routes.routes().iter().map(|_| Default::default()).collect();
    let gslb = config
        .gslb
        .as_ref()
        .map(|g| crate::gslb::Gslb::build(g, &live.gslb).map(Arc::new))
        .transpose()?;
    Ok(Runtime {
        config,
        route_metrics,
        routes,
        upstreams,
        affinity,
        session_store,
        gslb,
    })
}

/// Counts a request as in flight for as long as it lives.
#[derive(Debug)]
pub struct InFlight(Arc<Shared>);

impl InFlight {
    /// Count one more request in flight.
    pub fn new(shared: &Arc<Shared>) -> Self {
        shared.in_flight.fetch_add(1, Ordering::Relaxed);
        Self(shared.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}
