//! The plugin API of Switchyard.
//!
//! This is the one crate a plugin author depends on. It defines:
//!
//! - [`Balancer`]: a load-balancing algorithm, built per upstream by a [`BalancerFactory`];
//! - [`BackendLoad`]: the live load of one backend (in-flight requests, response-time EWMA,
//!   effective weight). The gateway owns it and keys it by the backend's identity, so it
//!   survives configuration reloads and rebuilds of a balancer;
//! - [`Registry`]: the table of algorithms by name that the gateway's configuration uses.
//!
//! It does no I/O and depends on no other crate of the workspace.
//!
//! # Example: a balancer that always picks the first eligible backend
//!
//! ```
//! use switchyard_plugin::{Backend, Balancer, BalancerFactory, BuildError, Pick, Registry};
//!
//! struct First;
//! impl Balancer for First {
//!     fn pick(&self, pick: &Pick<'_>) -> Option<usize> {
//!         (0..pick.len()).find(|&i| pick.eligible(i))
//!     }
//! }
//!
//! let mut registry = Registry::new();
//! registry.register_balancer("first", |_backends: &[Backend], _options: &serde_json::Value| {
//!     Ok(Box::new(First) as Box<dyn Balancer>)
//! });
//! assert!(registry.balancer_names().any(|n| n == "first"));
//! ```

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// The live load of one backend, shared between the gateway and the balancers.
///
/// The gateway keeps one per backend identity (upstream name and address) and hands the
/// same `Arc` to every balancer built for that backend, so counters survive reloads.
#[derive(Debug)]
pub struct BackendLoad {
    in_flight: AtomicU32,
    /// Exponentially weighted moving average of response time in nanoseconds (0: no data).
    ewma_ns: AtomicU64,
    /// Effective weight in thousandths of the configured weight (1000 = full weight).
    weight_permille: AtomicU32,
}

impl Default for BackendLoad {
    fn default() -> Self {
        Self {
            in_flight: AtomicU32::new(0),
            ewma_ns: AtomicU64::new(0),
            weight_permille: AtomicU32::new(1000),
        }
    }
}

impl BackendLoad {
    /// A fresh load record: nothing in flight, no response time yet, full weight.
    pub fn new() -> Self {
        Self::default()
    }

    /// Requests currently in flight to this backend.
    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Count one more request in flight (called by the gateway when it dispatches).
    pub fn start(&self) {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
    }

    /// Count a request as finished and fold its duration into the response-time EWMA.
    pub fn finish(&self, elapsed: Duration) {
        // Saturating decrement: a stray finish never wraps the counter.
        let _ = self
            .in_flight
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| v.checked_sub(1));
        self.observe(elapsed);
    }

    /// Fold one response time into the EWMA (weight 1/8 for the new sample, as TCP's SRTT).
    pub fn observe(&self, elapsed: Duration) {
        let sample = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX).max(1);
        let _ = self
            .ewma_ns
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |old| {
                Some(if old == 0 {
                    sample
                } else {
                    old - old / 8 + sample / 8
                })
            });
    }

    /// The response-time EWMA, or `None` before the first response.
    pub fn ewma(&self) -> Option<Duration> {
        match self.ewma_ns.load(Ordering::Relaxed) {
            0 => None,
            ns => Some(Duration::from_nanos(ns)),
        }
    }

    /// Effective weight as thousandths of the configured weight (slow start lowers it).
    pub fn weight_permille(&self) -> u32 {
        self.weight_permille.load(Ordering::Relaxed)
    }

    /// Set the effective weight in thousandths of the configured weight (clamped to 1..=1000).
    pub fn set_weight_permille(&self, permille: u32) {
        self.weight_permille
            .store(permille.clamp(1, 1000), Ordering::Relaxed);
    }
}

/// One backend as a balancer sees it: its address, configured weight and live load.
#[derive(Debug, Clone)]
pub struct Backend {
    /// The address as written in the configuration (`host:port`).
    pub addr: String,
    /// The configured weight (at least 1).
    pub weight: u32,
    /// The live load, shared with the gateway and kept across reloads.
    pub load: Arc<BackendLoad>,
}

impl Backend {
    /// A backend with a fresh load record.
    pub fn new(addr: impl Into<String>, weight: u32) -> Self {
        Self {
            addr: addr.into(),
            weight: weight.max(1),
            load: Arc::new(BackendLoad::new()),
        }
    }

    /// The configured weight scaled by the effective-weight fraction, never below 1.
    pub fn effective_weight(&self) -> u32 {
        let w = u64::from(self.weight) * u64::from(self.load.weight_permille()) / 1000;
        u32::try_from(w).unwrap_or(u32::MAX).max(1)
    }
}

/// What a balancer is told about one request when it picks a backend.
pub struct Pick<'a> {
    len: usize,
    eligible: &'a dyn Fn(usize) -> bool,
    /// The client's address (after `trusted_proxies`), when known.
    pub client_ip: Option<IpAddr>,
    /// The hash key chosen by the upstream's `hash_key` setting, when it has one.
    pub key: Option<&'a [u8]>,
}

impl<'a> Pick<'a> {
    /// A pick among `len` backends, of which those where `eligible(i)` holds may be chosen.
    pub fn new(len: usize, eligible: &'a dyn Fn(usize) -> bool) -> Self {
        Self {
            len,
            eligible,
            client_ip: None,
            key: None,
        }
    }

    /// Set the client address.
    pub fn with_client_ip(mut self, ip: Option<IpAddr>) -> Self {
        self.client_ip = ip;
        self
    }

    /// Set the hash key.
    pub fn with_key(mut self, key: Option<&'a [u8]>) -> Self {
        self.key = key;
        self
    }

    /// How many backends the upstream has (eligible or not).
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the upstream has no backend at all.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether backend `index` may be chosen now (healthy, not draining, not ejected).
    pub fn eligible(&self, index: usize) -> bool {
        index < self.len && (self.eligible)(index)
    }
}

/// How a request to a backend ended, reported to [`Balancer::release`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    /// How long the request took from dispatch to the end of the response.
    pub elapsed: Duration,
    /// Whether it succeeded (a response was received and it was not a failure status).
    pub ok: bool,
}

/// A load-balancing algorithm for one upstream.
///
/// Built by a [`BalancerFactory`] from the upstream's backends, rebuilt when they change.
/// Keep per-backend load in [`Backend::load`], not in the balancer, so it survives rebuilds.
/// `pick` runs on every request: it must not allocate and should cost O(1) or O(log n).
pub trait Balancer: Send + Sync + 'static {
    /// Choose the index of a backend for which [`Pick::eligible`] holds, or `None` when
    /// there is none.
    fn pick(&self, pick: &Pick<'_>) -> Option<usize>;

    /// A request to backend `index` finished. The gateway has already updated the
    /// backend's [`BackendLoad`]; algorithms with state of their own update it here.
    fn release(&self, _index: usize, _outcome: &Outcome) {}
}

/// Why a balancer could not be built from its configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildError(pub String);

impl std::fmt::Display for BuildError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for BuildError {}

/// Builds a [`Balancer`] for an upstream from its backends and the upstream's options
/// (the upstream's configuration table as JSON, for algorithm-specific keys).
pub trait BalancerFactory: Send + Sync + 'static {
    /// Build the balancer, or explain why the options do not fit.
    fn build(
        &self,
        backends: &[Backend],
        options: &serde_json::Value,
    ) -> Result<Box<dyn Balancer>, BuildError>;
}

impl<F> BalancerFactory for F
where
    F: Fn(&[Backend], &serde_json::Value) -> Result<Box<dyn Balancer>, BuildError>
        + Send
        + Sync
        + 'static,
{
    fn build(
        &self,
        backends: &[Backend],
        options: &serde_json::Value,
    ) -> Result<Box<dyn Balancer>, BuildError> {
        self(backends, options)
    }
}

/// The algorithms known to a gateway, by the names the configuration uses.
#[derive(Default)]
pub struct Registry {
    balancers: BTreeMap<String, Arc<dyn BalancerFactory>>,
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Register (or replace) the algorithm `name`.
    pub fn register_balancer(&mut self, name: &str, factory: impl BalancerFactory) -> &mut Self {
        self.balancers.insert(name.to_owned(), Arc::new(factory));
        self
    }

    /// The factory for `name`, if registered.
    pub fn balancer(&self, name: &str) -> Option<Arc<dyn BalancerFactory>> {
        self.balancers.get(name).cloned()
    }

    /// The registered algorithm names, sorted.
    pub fn balancer_names(&self) -> impl Iterator<Item = &str> {
        self.balancers.keys().map(String::as_str)
    }
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("balancers", &self.balancers.keys().collect::<Vec<_>>())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ewma_starts_empty_and_follows_samples() {
        let load = BackendLoad::new();
        assert_eq!(load.ewma(), None);
        load.observe(Duration::from_millis(80));
        assert_eq!(load.ewma(), Some(Duration::from_millis(80)));
        for _ in 0..100 {
            load.observe(Duration::from_millis(8));
        }
        let ms = load.ewma().unwrap().as_secs_f64() * 1000.0;
        assert!((7.5..9.0).contains(&ms), "ewma {ms}");
    }

    #[test]
    fn in_flight_never_wraps() {
        let load = BackendLoad::new();
        load.start();
        load.finish(Duration::from_millis(1));
        load.finish(Duration::from_millis(1));
        assert_eq!(load.in_flight(), 0);
    }

    #[test]
    fn effective_weight_scales_and_floors_at_one() {
        let b = Backend::new("127.0.0.1:1", 10);
        assert_eq!(b.effective_weight(), 10);
        b.load.set_weight_permille(100);
        assert_eq!(b.effective_weight(), 1);
        b.load.set_weight_permille(0);
        assert_eq!(b.load.weight_permille(), 1);
        assert_eq!(b.effective_weight(), 1);
    }

    #[test]
    fn pick_guards_out_of_range() {
        let all = |_: usize| true;
        let p = Pick::new(2, &all);
        assert!(p.eligible(1));
        assert!(!p.eligible(2));
    }
}
