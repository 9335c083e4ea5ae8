//! The plugin API of Switchyard.
//!
//! This is the one crate a plugin author depends on. It defines:
//!
//! - [`Balancer`]: a load-balancing algorithm, built per upstream by a [`BalancerFactory`];
//! - [`BackendLoad`]: the live load of one backend (in-flight requests, response-time EWMA,
//!   effective weight). The gateway owns it and keys it by the backend's identity, so it
//!   survives configuration reloads and rebuilds of a balancer;
//! - [`Registry`]: the table of algorithms (and of filters added by plugin crates) by name
//!   that the gateway's configuration uses;
//! - [`filter`]: the [`Filter`] trait for request/response filters, the contexts its hooks
//!   receive, [`FilterChain`] (a route's filters in order) and [`SharedCounter`] (the
//!   fleet-wide counter the gateway offers cluster rate limits).
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

/// The JSON crate of the options a [`BalancerFactory`] receives, re-exported so that a
/// plugin names the same `serde_json::Value` without depending on it itself.
pub use serde_json;

/// The attribute that makes a trait impl's `async fn`s object safe, re-exported so that a
/// filter names it without depending on `async-trait` itself.
pub use async_trait::async_trait;

/// The HTTP types the filter contexts use, re-exported for plugin crates.
pub use http;

pub mod filter;

pub mod duration;

pub use duration::{parse_duration, ConfigDuration};
pub use filter::{
    BodyChunk, CounterError, Filter, FilterChain, FilterError, FilterFactory, Flow, HeaderEditor,
    Hooks, RequestContext, RequestHeadEditor, RequestInfo, Response, ResponseContext,
    SessionAccess, SharedCounter, UpstreamRequestContext,
};

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

/// The time constant of the peak-EWMA response-time estimate ([`BackendLoad::peak_ewma_at`]):
/// 10 s, as linkerd and Finagle use.
///
/// A sample that arrives `dt` after the previous one is blended with weight
/// `1 - exp(-dt / PEAK_EWMA_DECAY)`, and a backend that receives no sample sees its estimate
/// fall by a factor `e` every `PEAK_EWMA_DECAY`, so a backend that was slow is tried again.
pub const PEAK_EWMA_DECAY: Duration = Duration::from_secs(10);

/// The process-wide origin of the timestamps kept in [`BackendLoad`] atomics.
fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// `at` as nanoseconds since [`epoch`], plus one so that 0 can mean "never".
/// Instants before the epoch saturate to the epoch.
fn to_tick(at: Instant) -> u64 {
    let ns = at.saturating_duration_since(epoch()).as_nanos();
    u64::try_from(ns).unwrap_or(u64::MAX - 1) + 1
}

/// The inverse of [`to_tick`]; `None` for 0 ("never").
fn from_tick(tick: u64) -> Option<Instant> {
    tick.checked_sub(1)
        .map(|ns| epoch() + Duration::from_nanos(ns))
}

/// The load a backend reported about itself (see [`BackendLoad::set_resource`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ResourceReport {
    /// CPU use as a fraction of the backend's capacity (`0.8` is 80 %).
    pub cpu: f64,
    /// Memory use as a fraction of the backend's capacity.
    pub memory: f64,
    /// When the report was received.
    pub at: Instant,
}

impl ResourceReport {
    /// The report's score, `cpu + memory`: lower is less loaded.
    pub fn score(&self) -> f64 {
        self.cpu + self.memory
    }
}

/// The live load of one backend, shared between the gateway and the balancers.
///
/// The gateway keeps one per backend identity (upstream name and address) and hands the
/// same `Arc` to every balancer built for that backend, so counters survive reloads.
///
/// Every field is an atomic: reading and updating never lock. Values written by two
/// updates racing (a response-time sample and its timestamp, a resource report and its
/// time) may mix; balancers only need them approximately right.
#[derive(Debug)]
pub struct BackendLoad {
    in_flight: AtomicU32,
    /// Effective weight in thousandths of the configured weight (1000 = full weight).
    weight_permille: AtomicU32,
    /// Exponentially weighted moving average of response time in nanoseconds (0: no data).
    ewma_ns: AtomicU64,
    /// Peak-sensitive, time-weighted EWMA of response time in nanoseconds (0: no data).
    peak_ewma_ns: AtomicU64,
    /// When the last response time was observed (a tick, see [`to_tick`]; 0: never).
    observed_tick: AtomicU64,
    /// The `f64` bits of `ln(peak EWMA in ns) + observed_tick / PEAK_EWMA_DECAY`: the peak
    /// EWMA in log space, where its decay over time is a subtraction (see
    /// [`PickTime::peak_ewma_log_cost`]).
    peak_log_key: AtomicU64,
    /// The last resource report: the `f32` bits of cpu (high half) and memory (low half).
    resource_bits: AtomicU64,
    /// When the last resource report arrived (a tick; 0: never, or cleared).
    resource_tick: AtomicU64,
}

impl Default for BackendLoad {
    fn default() -> Self {
        // Fix the epoch no later than the first load record, so that the instants the
        // gateway passes in are after it.
        let _ = epoch();
        Self {
            in_flight: AtomicU32::new(0),
            weight_permille: AtomicU32::new(1000),
            ewma_ns: AtomicU64::new(0),
            peak_ewma_ns: AtomicU64::new(0),
            observed_tick: AtomicU64::new(0),
            peak_log_key: AtomicU64::new(0),
            resource_bits: AtomicU64::new(0),
            resource_tick: AtomicU64::new(0),
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
        self.finish_at(elapsed, Instant::now());
    }

    /// [`finish`](Self::finish), the response received at `at` (for a caller that has
    /// already read the clock).
    pub fn finish_at(&self, elapsed: Duration, at: Instant) {
        // Saturating decrement: a stray finish never wraps the counter.
        let _ = self
            .in_flight
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| v.checked_sub(1));
        self.observe_at(elapsed, at);
    }

    /// Fold one response time into the EWMA (weight 1/8 for the new sample, as TCP's SRTT)
    /// and into the peak EWMA, as received now.
    pub fn observe(&self, elapsed: Duration) {
        self.observe_at(elapsed, Instant::now());
    }

    /// Fold one response time, received at `at`, into both estimates:
    ///
    /// - the EWMA ([`ewma`](Self::ewma)): weight 1/8 for the new sample;
    /// - the peak EWMA ([`peak_ewma_at`](Self::peak_ewma_at)), as Finagle's and linkerd's:
    ///   a sample above the current estimate replaces it at once (the estimate follows a
    ///   slowdown immediately); a lower one is blended in with weight
    ///   `1 - exp(-dt / PEAK_EWMA_DECAY)`, `dt` being the time since the previous sample,
    ///   starting from the estimate as decayed over `dt`.
    ///
    /// ```
    /// use std::time::{Duration, Instant};
    /// use switchyard_plugin::{BackendLoad, PEAK_EWMA_DECAY};
    ///
    /// let load = BackendLoad::new();
    /// let t0 = Instant::now();
    /// load.observe_at(Duration::from_millis(10), t0);
    /// load.observe_at(Duration::from_millis(500), t0); // a spike counts at once
    /// assert_eq!(load.peak_ewma_at(t0), Some(Duration::from_millis(500)));
    /// // ... and fades when nothing more is heard from the backend.
    /// let later = load.peak_ewma_at(t0 + PEAK_EWMA_DECAY * 3).unwrap();
    /// assert!(later < Duration::from_millis(30));
    /// ```
    pub fn observe_at(&self, elapsed: Duration, at: Instant) {
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
        let tick = to_tick(at);
        let previous = self.observed_tick.swap(tick, Ordering::Relaxed);
        let dt = tick.saturating_sub(previous);
        let mut peak = sample;
        let _ = self
            .peak_ewma_ns
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |old| {
                peak = Self::next_peak(old, previous, dt, sample);
                Some(peak)
            });
        let key = (peak as f64).ln() + tick as f64 * INV_DECAY_NS;
        self.peak_log_key.store(key.to_bits(), Ordering::Relaxed);
    }

    /// The peak EWMA after `sample`, from `old` whose last sample was `dt` ns ago
    /// (`previous` 0: there was none).
    fn next_peak(old: u64, previous: u64, dt: u64, sample: u64) -> u64 {
        if old == 0 || previous == 0 {
            return sample;
        }
        // The estimate as read now, decayed over dt ...
        let w = decay_factor(dt);
        let decayed = old as f64 * w;
        if sample as f64 >= decayed {
            // ... replaced by a sample above it (peak sensitivity) ...
            return sample;
        }
        // ... or blended with a sample below it, by how long it has been.
        let blended = decayed * w + sample as f64 * (1.0 - w);
        (blended as u64).max(sample)
    }

    /// The response-time EWMA, or `None` before the first response.
    pub fn ewma(&self) -> Option<Duration> {
        match self.ewma_ns.load(Ordering::Relaxed) {
            0 => None,
            ns => Some(Duration::from_nanos(ns)),
        }
    }

    /// The peak EWMA as of its last sample, or `None` before the first response.
    pub fn peak_ewma(&self) -> Option<Duration> {
        match self.peak_ewma_ns.load(Ordering::Relaxed) {
            0 => None,
            ns => Some(Duration::from_nanos(ns)),
        }
    }

    /// The peak EWMA as seen at `now`: decayed toward zero by `exp(-dt / PEAK_EWMA_DECAY)`,
    /// `dt` being the time since the last sample. `None` before the first response.
    ///
    /// The decay is what makes a least-response-time balancer try a backend again after
    /// it was slow: without new samples its estimate falls until it is the cheapest.
    pub fn peak_ewma_at(&self, now: Instant) -> Option<Duration> {
        let ns = self.peak_ewma_ns.load(Ordering::Relaxed);
        if ns == 0 {
            return None;
        }
        Some(Duration::from_nanos(self.decayed_peak_ns(ns, to_tick(now))))
    }

    /// The peak EWMA in nanoseconds as seen at `now_tick` (see [`to_tick`]), 0 for no data.
    /// The hot-path form of [`peak_ewma_at`](Self::peak_ewma_at), for balancers that take
    /// the time once per pick.
    fn decayed_peak_ns(&self, ns: u64, now_tick: u64) -> u64 {
        let last = self.observed_tick.load(Ordering::Relaxed);
        let dt = now_tick.saturating_sub(last);
        if dt == 0 {
            return ns;
        }
        ((ns as f64 * decay_factor(dt)) as u64).max(1)
    }

    /// When the last response time was observed, or `None` before the first.
    pub fn last_observed(&self) -> Option<Instant> {
        from_tick(self.observed_tick.load(Ordering::Relaxed))
    }

    /// The peak-EWMA cost of sending one more request here at `now`, as Finagle and linkerd
    /// compute it: the decayed peak EWMA ([`peak_ewma_at`](Self::peak_ewma_at)) in
    /// nanoseconds times `in_flight + 1`. `None` before the first response.
    pub fn peak_ewma_cost_at(&self, now: Instant) -> Option<f64> {
        self.peak_ewma_cost_tick(to_tick(now))
    }

    fn peak_ewma_cost_tick(&self, now_tick: u64) -> Option<f64> {
        let ns = self.peak_ewma_ns.load(Ordering::Relaxed);
        if ns == 0 {
            return None;
        }
        let dt = now_tick.saturating_sub(self.observed_tick.load(Ordering::Relaxed));
        let rtt = ns as f64 * decay_factor(dt);
        Some(rtt * (f64::from(self.in_flight()) + 1.0))
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

    /// `configured` scaled by [`weight_permille`](Self::weight_permille), never below 1:
    /// the same as [`Backend::effective_weight`] for a backend of that weight.
    pub fn effective_weight(&self, configured: u32) -> u32 {
        let w = u64::from(configured) * u64::from(self.weight_permille()) / 1000;
        u32::try_from(w).unwrap_or(u32::MAX).max(1)
    }

    /// Store the load the backend reported at `at` (the gateway polls the backend's load
    /// endpoint, which answers `{"cpu": 0.8, "memory": 0.7}`). Fractions of 1; values that
    /// are negative or not finite are stored as 0 (a negative) or 1 (NaN, infinite).
    ///
    /// ```
    /// use std::time::{Duration, Instant};
    /// use switchyard_plugin::BackendLoad;
    ///
    /// let load = BackendLoad::new();
    /// let t0 = Instant::now();
    /// assert_eq!(load.resource_score_at(t0, Duration::from_secs(10)), None);
    /// load.set_resource(0.5, 0.25, t0);
    /// assert_eq!(load.resource_score_at(t0, Duration::from_secs(10)), Some(0.75));
    /// // A report older than max_age no longer counts.
    /// let later = t0 + Duration::from_secs(11);
    /// assert_eq!(load.resource_score_at(later, Duration::from_secs(10)), None);
    /// ```
    pub fn set_resource(&self, cpu: f64, memory: f64, at: Instant) {
        fn sane(v: f64) -> f32 {
            if v.is_finite() {
                v.max(0.0) as f32
            } else {
                1.0
            }
        }
        let bits = (u64::from(sane(cpu).to_bits()) << 32) | u64::from(sane(memory).to_bits());
        self.resource_bits.store(bits, Ordering::Relaxed);
        self.resource_tick.store(to_tick(at), Ordering::Relaxed);
    }

    /// Forget the last resource report (the backend stopped answering its load endpoint).
    pub fn clear_resource(&self) {
        self.resource_tick.store(0, Ordering::Relaxed);
    }

    /// The last resource report, however old, or `None` when there is none.
    pub fn resource(&self) -> Option<ResourceReport> {
        let at = from_tick(self.resource_tick.load(Ordering::Relaxed))?;
        let bits = self.resource_bits.load(Ordering::Relaxed);
        Some(ResourceReport {
            cpu: f64::from(f32::from_bits((bits >> 32) as u32)),
            memory: f64::from(f32::from_bits(bits as u32)),
            at,
        })
    }

    /// The score (`cpu + memory`, lower is better) of the last resource report if it is at
    /// most `max_age` old now; `None` when there is none or it is stale.
    pub fn resource_score(&self, max_age: Duration) -> Option<f64> {
        self.resource_score_at(Instant::now(), max_age)
    }

    /// [`resource_score`](Self::resource_score) as seen at `now`.
    pub fn resource_score_at(&self, now: Instant, max_age: Duration) -> Option<f64> {
        self.resource_score_tick(to_tick(now), max_age)
    }

    fn resource_score_tick(&self, now_tick: u64, max_age: Duration) -> Option<f64> {
        let at = self.resource_tick.load(Ordering::Relaxed);
        if at == 0 {
            return None;
        }
        let age = now_tick.saturating_sub(at);
        if u128::from(age) > max_age.as_nanos() {
            return None;
        }
        let bits = self.resource_bits.load(Ordering::Relaxed);
        let cpu = f32::from_bits((bits >> 32) as u32);
        let memory = f32::from_bits(bits as u32);
        Some(f64::from(cpu) + f64::from(memory))
    }
}

/// `1 / PEAK_EWMA_DECAY` in nanoseconds.
const INV_DECAY_NS: f64 = 1.0 / PEAK_EWMA_DECAY.as_nanos() as f64;

/// `exp(-dt / PEAK_EWMA_DECAY)` for `dt` in nanoseconds.
fn decay_factor(dt_ns: u64) -> f64 {
    (-(dt_ns as f64) * INV_DECAY_NS).exp()
}

/// `ln(n + 1)`: from a table for the usual small counts, `ln` beyond.
#[inline]
fn ln_count(n: u32) -> f64 {
    match LN_1_TO_64.get(n as usize) {
        Some(&v) => v,
        None => (f64::from(n) + 1.0).ln(),
    }
}

/// `ln(n + 1)` for `n` in `0..64`.
#[allow(clippy::excessive_precision, clippy::approx_constant)]
const LN_1_TO_64: [f64; 64] = [
    0.0,
    0.6931471805599453,
    1.0986122886681098,
    1.3862943611198906,
    1.6094379124341003,
    1.791759469228055,
    1.9459101490553132,
    2.0794415416798357,
    2.1972245773362196,
    2.302585092994046,
    2.3978952727983707,
    2.4849066497880004,
    2.5649493574615367,
    2.6390573296152584,
    2.70805020110221,
    2.772588722239781,
    2.833213344056216,
    2.8903717578961645,
    2.9444389791664403,
    2.995732273553991,
    3.044522437723423,
    3.091042453358316,
    3.1354942159291497,
    3.1780538303479458,
    3.2188758248682006,
    3.258096538021482,
    3.295836866004329,
    3.332204510175204,
    3.367295829986474,
    3.4011973816621555,
    3.4339872044851463,
    3.4657359027997265,
    3.4965075614664802,
    3.5263605246161616,
    3.5553480614894135,
    3.58351893845611,
    3.6109179126442243,
    3.6375861597263857,
    3.6635616461296463,
    3.6888794541139363,
    3.713572066704308,
    3.7376696182833684,
    3.7612001156935624,
    3.784189633918261,
    3.8066624897703196,
    3.828641396489095,
    3.8501476017100584,
    3.871201010907891,
    3.8918202981106265,
    3.912023005428146,
    3.9318256327243257,
    3.9512437185814275,
    3.970291913552122,
    3.9889840465642745,
    4.007333185232471,
    4.02535169073515,
    4.04305126783455,
    4.060443010546419,
    4.07753744390572,
    4.0943445622221,
    4.110873864173311,
    4.127134385045092,
    4.143134726391533,
    4.1588830833596715,
];

/// A clock reading taken once per pick, for balancers that read many backends' time-based
/// state (peak EWMA, resource reports) and want to call `Instant::now()` only once.
///
/// [`peak_ewma_log_cost`](Self::peak_ewma_log_cost) is the form for comparing many
/// backends: the logarithm of the peak-EWMA cost, in which the decay over time is one
/// subtraction instead of an exponential per backend.
///
/// ```
/// use std::time::{Duration, Instant};
/// use switchyard_plugin::{BackendLoad, PickTime};
///
/// let load = BackendLoad::new();
/// let t0 = Instant::now();
/// load.observe_at(Duration::from_millis(20), t0);
/// load.set_resource(0.1, 0.2, t0);
/// let now = PickTime::at(t0);
/// assert_eq!(now.peak_ewma_cost(&load), Some(20_000_000.0));
/// let log_cost = now.peak_ewma_log_cost(&load).unwrap();
/// assert!((log_cost - 20_000_000f64.ln()).abs() < 1e-9);
/// assert!(now.resource_score(&load, Duration::from_secs(1)).is_some());
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PickTime {
    tick: u64,
    /// `tick / PEAK_EWMA_DECAY`.
    decay_units: f64,
}

impl PickTime {
    /// The current time.
    pub fn now() -> Self {
        Self::at(Instant::now())
    }

    /// A given time (tests, replays).
    pub fn at(at: Instant) -> Self {
        let tick = to_tick(at);
        Self {
            tick,
            decay_units: tick as f64 * INV_DECAY_NS,
        }
    }

    /// [`BackendLoad::peak_ewma_cost_at`] at this time.
    pub fn peak_ewma_cost(&self, load: &BackendLoad) -> Option<f64> {
        load.peak_ewma_cost_tick(self.tick)
    }

    /// The natural logarithm of [`peak_ewma_cost`](Self::peak_ewma_cost): in the same
    /// order, so a balancer can compare logs, and cheap: `ln(peak EWMA)` and the time of
    /// the last sample are kept together as one number when a response is observed, so the
    /// decay (`exp(-dt / PEAK_EWMA_DECAY)`) is one subtraction here and `ln(in_flight + 1)`
    /// a table read. To a weighted cost, add `-ln(weight)`. `None` before the first
    /// response.
    #[inline]
    pub fn peak_ewma_log_cost(&self, load: &BackendLoad) -> Option<f64> {
        if load.peak_ewma_ns.load(Ordering::Relaxed) == 0 {
            return None;
        }
        // ln(peak) + t_last / decay - now / decay = ln(peak × exp(-(now - t_last) / decay)).
        // (A sample that lands after this reading was taken counts as decayed by a negative
        // dt of microseconds: a difference of about 1e-7, left alone.)
        let key = f64::from_bits(load.peak_log_key.load(Ordering::Relaxed));
        Some(key - self.decay_units + ln_count(load.in_flight()))
    }

    /// [`BackendLoad::resource_score_at`] at this time.
    pub fn resource_score(&self, load: &BackendLoad, max_age: Duration) -> Option<f64> {
        load.resource_score_tick(self.tick, max_age)
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
        self.load.effective_weight(self.weight)
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

/// Where a hash algorithm takes its key from: an upstream's `hash_key` setting.
///
/// The gateway extracts the key from each request and passes it as [`Pick::key`]; the
/// balancers validate the setting when they are built. The forms are `client-ip`,
/// `header:NAME`, `cookie:NAME`, `path` and `query:NAME`.
///
/// ```
/// use switchyard_plugin::HashKey;
///
/// assert_eq!(HashKey::parse("header:X-User").unwrap(), HashKey::Header("x-user".into()));
/// assert_eq!(HashKey::parse("client-ip").unwrap(), HashKey::ClientIp);
/// assert_eq!(HashKey::parse("query:id").unwrap().to_string(), "query:id");
/// assert!(HashKey::parse("header:").is_err());
/// assert!(HashKey::parse("body").is_err());
///
/// let options = serde_json::json!({ "hash_key": "cookie:session" });
/// assert_eq!(HashKey::from_options(&options).unwrap(), Some(HashKey::Cookie("session".into())));
/// assert_eq!(HashKey::from_options(&serde_json::json!({})).unwrap(), None);
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum HashKey {
    /// `client-ip`: the client's address (after `trusted_proxies`).
    ClientIp,
    /// `header:NAME`: the value of request header `NAME` (stored in lower case; header
    /// names are case-insensitive).
    Header(String),
    /// `cookie:NAME`: the value of cookie `NAME`.
    Cookie(String),
    /// `path`: the request path, without the query.
    Path,
    /// `query:NAME`: the value of query parameter `NAME`.
    Query(String),
}

impl HashKey {
    /// The forms accepted, for error messages.
    pub const FORMS: &'static str =
        r#""client-ip", "header:NAME", "cookie:NAME", "path" or "query:NAME""#;

    /// Parse a `hash_key` setting.
    pub fn parse(text: &str) -> Result<Self, BuildError> {
        let bad = |why: &str| {
            BuildError(format!(
                "hash_key {text:?}: {why}; expected {}",
                Self::FORMS
            ))
        };
        match text {
            "client-ip" => return Ok(Self::ClientIp),
            "path" => return Ok(Self::Path),
            _ => {}
        }
        let Some((kind, name)) = text.split_once(':') else {
            return Err(bad("unknown form"));
        };
        if name.is_empty() {
            return Err(bad("the name after ':' is empty"));
        }
        let is_token = |s: &str| {
            s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
        };
        match kind {
            "header" if is_token(name) => Ok(Self::Header(name.to_ascii_lowercase())),
            "cookie" if is_token(name) => Ok(Self::Cookie(name.to_owned())),
            "query"
                if !name
                    .bytes()
                    .any(|b| b.is_ascii_whitespace() || b == b'&' || b == b'=') =>
            {
                Ok(Self::Query(name.to_owned()))
            }
            "header" | "cookie" | "query" => Err(bad("the name has a character it cannot have")),
            _ => Err(bad("unknown form")),
        }
    }

    /// The `hash_key` of an upstream's options (`None` when absent or `null`); an error when
    /// it is not a string of one of the forms.
    pub fn from_options(options: &serde_json::Value) -> Result<Option<Self>, BuildError> {
        match options.get("hash_key") {
            None | Some(serde_json::Value::Null) => Ok(None),
            Some(serde_json::Value::String(text)) => Self::parse(text).map(Some),
            Some(other) => Err(BuildError(format!(
                "hash_key must be a string ({}), not {other}",
                Self::FORMS
            ))),
        }
    }
}

impl std::fmt::Display for HashKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::ClientIp => f.write_str("client-ip"),
            Self::Header(name) => write!(f, "header:{name}"),
            Self::Cookie(name) => write!(f, "cookie:{name}"),
            Self::Path => f.write_str("path"),
            Self::Query(name) => write!(f, "query:{name}"),
        }
    }
}

impl std::str::FromStr for HashKey {
    type Err = BuildError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Self::parse(text)
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

/// The algorithms known to a gateway, by the names the configuration uses, and the filters
/// that plugin crates add (the compiled-in filters are a typed enum in `switchyard-filters`).
#[derive(Default)]
pub struct Registry {
    balancers: BTreeMap<String, Arc<dyn BalancerFactory>>,
    filters: BTreeMap<String, Arc<dyn FilterFactory>>,
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

    /// Register (or replace) the filter kind `name`. The factory receives the filter's
    /// table from a route's `filters` list as JSON, without its `kind` key.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use switchyard_plugin::{BuildError, Filter, Hooks, Registry};
    ///
    /// struct Tag;
    /// impl Filter for Tag {
    ///     fn hooks(&self) -> Hooks {
    ///         Hooks::NONE
    ///     }
    /// }
    ///
    /// let mut registry = Registry::new();
    /// registry.register_filter("tag", |options: &serde_json::Value| {
    ///     if options.as_object().is_some_and(|o| !o.is_empty()) {
    ///         return Err(BuildError("`tag` takes no options".into()));
    ///     }
    ///     Ok(Arc::new(Tag) as Arc<dyn Filter>)
    /// });
    /// let factory = registry.filter("tag").unwrap();
    /// assert!(factory.build(&serde_json::json!({})).is_ok());
    /// assert!(factory.build(&serde_json::json!({"x": 1})).is_err());
    /// assert_eq!(registry.filter_names().collect::<Vec<_>>(), ["tag"]);
    /// ```
    pub fn register_filter(&mut self, name: &str, factory: impl FilterFactory) -> &mut Self {
        self.filters.insert(name.to_owned(), Arc::new(factory));
        self
    }

    /// The factory of filter kind `name`, if registered.
    pub fn filter(&self, name: &str) -> Option<Arc<dyn FilterFactory>> {
        self.filters.get(name).cloned()
    }

    /// The registered filter kinds, sorted.
    pub fn filter_names(&self) -> impl Iterator<Item = &str> {
        self.filters.keys().map(String::as_str)
    }
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("balancers", &self.balancers.keys().collect::<Vec<_>>())
            .field("filters", &self.filters.keys().collect::<Vec<_>>())
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
    fn peak_ewma_follows_spikes_and_decays() {
        let load = BackendLoad::new();
        let t0 = Instant::now();
        assert_eq!(load.peak_ewma_at(t0), None);
        assert_eq!(load.last_observed(), None);
        load.observe_at(Duration::from_millis(10), t0);
        assert_eq!(load.peak_ewma_at(t0), Some(Duration::from_millis(10)));
        // A spike replaces the estimate at once.
        load.observe_at(Duration::from_millis(500), t0 + Duration::from_millis(1));
        let peak = load.peak_ewma_at(t0 + Duration::from_millis(1)).unwrap();
        assert_eq!(peak, Duration::from_millis(500));
        // Decays by e every PEAK_EWMA_DECAY without samples.
        let t1 = t0 + Duration::from_millis(1) + PEAK_EWMA_DECAY;
        let ms = load.peak_ewma_at(t1).unwrap().as_secs_f64() * 1000.0;
        assert!((183.0..185.0).contains(&ms), "{ms}");
        // A fast sample after a long silence mostly replaces the old estimate.
        let t2 = t0 + PEAK_EWMA_DECAY * 5;
        load.observe_at(Duration::from_millis(1), t2);
        let ms = load.peak_ewma_at(t2).unwrap().as_secs_f64() * 1000.0;
        assert!((1.0..1.2).contains(&ms), "{ms}");
        // A fast sample right after a slow one moves the estimate only a little.
        load.observe_at(Duration::from_millis(100), t2);
        load.observe_at(Duration::from_millis(1), t2 + Duration::from_millis(100));
        let ms = load
            .peak_ewma_at(t2 + Duration::from_millis(100))
            .unwrap()
            .as_secs_f64()
            * 1000.0;
        assert!((97.0..100.0).contains(&ms), "{ms}");
        let last = load.last_observed().unwrap();
        assert!(last >= t2 && last <= t2 + Duration::from_millis(100));
        // The plain EWMA is untouched by timing.
        assert!(load.ewma().is_some());
    }

    #[test]
    fn peak_ewma_cost_counts_in_flight() {
        let load = BackendLoad::new();
        let t0 = Instant::now();
        assert_eq!(load.peak_ewma_cost_at(t0), None);
        load.observe_at(Duration::from_millis(2), t0);
        load.start();
        load.start();
        assert_eq!(load.peak_ewma_cost_at(t0), Some(6_000_000.0));
        assert_eq!(PickTime::at(t0).peak_ewma_cost(&load), Some(6_000_000.0));
    }

    #[test]
    fn resource_reports_age_and_sanitise() {
        let load = BackendLoad::new();
        let t0 = Instant::now();
        assert_eq!(load.resource(), None);
        load.set_resource(0.8, 0.7, t0);
        let r = load.resource().unwrap();
        assert!((r.score() - 1.5).abs() < 1e-6);
        assert!((r.cpu - 0.8).abs() < 1e-6 && (r.memory - 0.7).abs() < 1e-6);
        let max_age = Duration::from_secs(10);
        assert!(load.resource_score_at(t0 + max_age, max_age).is_some());
        assert!(load
            .resource_score_at(t0 + max_age + Duration::from_millis(1), max_age)
            .is_none());
        assert!(load.resource_score(Duration::from_secs(3600)).is_some());
        load.set_resource(f64::NAN, -3.0, t0);
        assert_eq!(load.resource_score_at(t0, max_age), Some(1.0));
        load.clear_resource();
        assert_eq!(load.resource_score_at(t0, max_age), None);
        assert_eq!(load.resource(), None);
    }

    #[test]
    fn instants_before_the_epoch_saturate() {
        let early = Instant::now();
        let load = BackendLoad::new();
        load.set_resource(0.1, 0.1, early);
        assert!(load.resource().is_some());
        assert_eq!(from_tick(0), None);
    }

    #[test]
    fn hash_key_forms() {
        for ok in [
            "client-ip",
            "path",
            "header:x-user",
            "cookie:sid",
            "query:id",
        ] {
            let k = HashKey::parse(ok).unwrap();
            assert_eq!(k.to_string(), ok);
            assert_eq!(ok.parse::<HashKey>().unwrap(), k);
        }
        for bad in [
            "",
            "ip",
            "header",
            "header:",
            "header:a b",
            "cookie:a;b",
            "query:a=b",
            "url:x",
        ] {
            let err = HashKey::parse(bad).unwrap_err();
            assert!(err.0.contains("hash_key"), "{err}");
        }
        assert!(HashKey::from_options(&serde_json::json!({"hash_key": 3})).is_err());
        assert_eq!(
            HashKey::from_options(&serde_json::Value::Null).unwrap(),
            None
        );
        assert_eq!(
            HashKey::from_options(&serde_json::json!({"hash_key": null})).unwrap(),
            None
        );
    }

    #[test]
    fn log_cost_matches_the_cost() {
        let load = BackendLoad::new();
        let t0 = Instant::now();
        assert_eq!(PickTime::at(t0).peak_ewma_log_cost(&load), None);
        load.observe_at(Duration::from_millis(3), t0);
        load.observe_at(Duration::from_millis(40), t0 + Duration::from_millis(5));
        load.observe_at(Duration::from_millis(7), t0 + Duration::from_secs(2));
        for in_flight in [0u32, 1, 5, 63, 64, 200] {
            while load.in_flight() < in_flight {
                load.start();
            }
            for later in [0u64, 1, 1_000, 20_000, 3_600_000] {
                let now = PickTime::at(t0 + Duration::from_secs(2) + Duration::from_millis(later));
                let cost = now.peak_ewma_cost(&load).unwrap();
                let log = now.peak_ewma_log_cost(&load).unwrap();
                assert!(
                    (log - cost.ln()).abs() < 1e-9,
                    "{in_flight} {later}: {log} vs {}",
                    cost.ln()
                );
            }
        }
        for n in 0..70 {
            assert!((ln_count(n) - f64::from(n + 1).ln()).abs() < 1e-15);
        }
    }

    #[test]
    fn pick_guards_out_of_range() {
        let all = |_: usize| true;
        let p = Pick::new(2, &all);
        assert!(p.eligible(1));
        assert!(!p.eligible(2));
    }
}
