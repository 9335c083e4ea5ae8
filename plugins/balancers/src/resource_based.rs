//! `resource-based`: the backend reporting the least CPU and memory use.
//!
//! The gateway polls each backend's load endpoint (`resource.path`, every
//! `resource.interval`) for `{"cpu": 0.8, "memory": 0.7}` and stores the answer with
//! [`BackendLoad::set_resource`]. A pick compares, over the eligible backends,
//!
//! ```text
//! cost = score × (in_flight + 1) / effective_weight
//! score = cpu + memory        of a report at most `resource.max_age` old, at least 0.01
//!       = NEUTRAL_SCORE (1.0) without such a report
//! ```
//!
//! The in-flight factor keeps the backend with the best report from taking every request
//! between two polls (herding): its cost grows with what it was sent since. A backend
//! whose report is missing or stale counts as half busy (cpu 0.5 + memory 0.5), so among
//! such backends the pick is exactly weighted least connections, and a backend that stops
//! reporting is neither favoured nor starved.
//!
//! Data structure: the backends' shared [`BackendLoad`] records and weights in an array,
//! one rotating cursor, one clock reading per pick. A pick is the bounded scan of
//! [`crate::scan`]: exact up to [`SCAN_LIMIT_TIMED`] eligible backends, the cheapest of a sliding
//! window of that many above (see [`crate::least_connections`] for the trade-off); ties go
//! in turn.
//!
//! Options: `resource = { path = "/load", interval = "2s", max_age = "10s" }`, each
//! optional (these are the defaults); see [`ResourceOptions`].

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use switchyard_plugin::{Backend, Balancer, BuildError, Pick, PickTime};

use crate::options::{self, duration_field, Uses};
use crate::scan::{self, PerWeight, SCAN_LIMIT_TIMED};
use crate::Slot;

#[cfg(doc)]
use switchyard_plugin::BackendLoad;

/// The score of a backend without a fresh report: as if at 50 % CPU and 50 % memory.
pub const NEUTRAL_SCORE: f64 = 1.0;
/// The lowest score a report counts for, so that in-flight requests still count when a
/// backend reports itself idle.
pub const MIN_SCORE: f64 = 0.01;

/// The `resource` options of an upstream: where and how often the gateway polls each
/// backend's load, and how long a report counts.
///
/// ```
/// use std::time::Duration;
/// use switchyard_balancers::resource_based::ResourceOptions;
///
/// let options = serde_json::json!({ "resource": { "path": "/stats", "max_age": "30s" } });
/// let r = ResourceOptions::from_options(&options).unwrap();
/// assert_eq!(r.path, "/stats");
/// assert_eq!(r.interval, Duration::from_secs(2));
/// assert_eq!(r.max_age, Duration::from_secs(30));
///
/// let bad = serde_json::json!({ "resource": { "interval": "soon" } });
/// assert!(ResourceOptions::from_options(&bad).is_err());
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResourceOptions {
    /// The path the gateway sends `GET` to on each backend (default `/load`).
    pub path: String,
    /// How often it polls (default 2 s).
    pub interval: Duration,
    /// How old a report may be and still count (default 10 s).
    pub max_age: Duration,
}

impl Default for ResourceOptions {
    fn default() -> Self {
        Self {
            path: "/load".to_owned(),
            interval: Duration::from_secs(2),
            max_age: Duration::from_secs(10),
        }
    }
}

impl ResourceOptions {
    /// The `resource` table of an upstream's options; the defaults when it is absent.
    /// Unknown keys, a path not starting with `/`, a duration that does not parse, a zero
    /// interval, or a `max_age` shorter than the interval (every report would be stale
    /// before the next) are errors.
    pub fn from_options(options: &serde_json::Value) -> Result<Self, BuildError> {
        let defaults = Self::default();
        let table = match options.get("resource") {
            None | Some(serde_json::Value::Null) => return Ok(defaults),
            Some(serde_json::Value::Object(table)) => table,
            Some(other) => {
                return Err(BuildError(format!(
                    "resource must be a table such as {{ path = \"/load\", interval = \"2s\", \
                     max_age = \"10s\" }}, not {other}"
                )))
            }
        };
        if let Some(key) = table
            .keys()
            .find(|k| !matches!(k.as_str(), "path" | "interval" | "max_age"))
        {
            return Err(BuildError(format!(
                "resource.{key} is not a setting: resource takes path, interval and max_age"
            )));
        }
        let path = match table.get("path") {
            None | Some(serde_json::Value::Null) => defaults.path,
            Some(serde_json::Value::String(p)) if p.starts_with('/') && !p.contains(' ') => {
                p.clone()
            }
            Some(other) => {
                return Err(BuildError(format!(
                    "resource.path must be a path starting with '/', such as \"/load\", not \
                     {other}"
                )))
            }
        };
        let interval = duration_field(table, "interval", "resource", defaults.interval)?;
        let max_age = duration_field(table, "max_age", "resource", defaults.max_age)?;
        if interval.is_zero() {
            return Err(BuildError("resource.interval must be more than 0".into()));
        }
        if max_age < interval {
            return Err(BuildError(format!(
                "resource.max_age ({max_age:?}) is shorter than resource.interval \
                 ({interval:?}): every report would be stale before the next one"
            )));
        }
        Ok(Self {
            path,
            interval,
            max_age,
        })
    }
}

/// The lowest reported load, weighted by what is in flight.
#[derive(Debug)]
pub struct ResourceBased {
    slots: Box<[Slot]>,
    max_age: Duration,
    cursor: AtomicUsize,
}

impl ResourceBased {
    /// A balancer over these backends counting reports up to `max_age` old.
    pub fn new(backends: &[Backend], max_age: Duration) -> Self {
        Self {
            slots: crate::slots(backends),
            max_age,
            cursor: AtomicUsize::new(0),
        }
    }

    /// The cost of backend `i` at `now` (lower is better).
    fn cost(&self, i: usize, now: &PickTime) -> PerWeight {
        let slot = &self.slots[i];
        let score = match now.resource_score(&slot.load, self.max_age) {
            Some(score) => score.max(MIN_SCORE),
            None => NEUTRAL_SCORE,
        };
        PerWeight {
            num: score * (f64::from(slot.load.in_flight()) + 1.0),
            den: slot.effective_weight(),
        }
    }

    /// [`Balancer::pick`] as of `now` (tests replay time with it).
    pub fn pick_at(&self, pick: &Pick<'_>, now: PickTime) -> Option<usize> {
        let n = self.slots.len();
        if n == 0 {
            return None;
        }
        let start = self.cursor.fetch_add(1, Ordering::Relaxed) % n;
        scan::least(
            n,
            start,
            SCAN_LIMIT_TIMED,
            pick,
            |i| self.cost(i, &now),
            |_| false,
        )
    }
}

impl Balancer for ResourceBased {
    fn pick(&self, pick: &Pick<'_>) -> Option<usize> {
        if self.slots.is_empty() {
            return None;
        }
        self.pick_at(pick, PickTime::now())
    }
}

/// The registry factory for `resource-based` (reads `resource`).
pub fn factory(
    backends: &[Backend],
    options: &serde_json::Value,
) -> Result<Box<dyn Balancer>, BuildError> {
    options::check(options, "resource-based", Uses::Resource)?;
    let resource = ResourceOptions::from_options(options)?;
    Ok(Box::new(ResourceBased::new(backends, resource.max_age)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::backends;
    use serde_json::json;
    use std::time::Instant;

    #[test]
    fn the_lowest_fresh_report_wins() {
        let bs = backends(&[1, 1, 1]);
        let b = ResourceBased::new(&bs, Duration::from_secs(10));
        let t0 = Instant::now();
        bs[0].load.set_resource(0.9, 0.7, t0);
        bs[1].load.set_resource(0.2, 0.3, t0);
        bs[2].load.set_resource(0.5, 0.6, t0);
        let all = |_: usize| true;
        let now = PickTime::at(t0 + Duration::from_secs(1));
        for _ in 0..3 {
            assert_eq!(b.pick_at(&Pick::new(3, &all), now), Some(1));
        }
        // In flight counts: 0.5 × 3 > 1.1 × 1.
        (0..2).for_each(|_| bs[1].load.start());
        assert_eq!(b.pick_at(&Pick::new(3, &all), now), Some(2));
        let not_two = |i: usize| i != 2;
        assert_eq!(b.pick_at(&Pick::new(3, &not_two), now), Some(1));
    }

    #[test]
    fn stale_or_missing_reports_fall_back_to_least_connections() {
        let bs = backends(&[1, 1, 1]);
        let max_age = Duration::from_secs(10);
        let b = ResourceBased::new(&bs, max_age);
        let t0 = Instant::now();
        // Backend 0 reported idle long ago; 1 and 2 never reported.
        bs[0].load.set_resource(0.0, 0.0, t0);
        (0..3).for_each(|_| bs[0].load.start());
        bs[1].load.start();
        let all = |_: usize| true;
        let fresh = PickTime::at(t0 + Duration::from_secs(5));
        // While fresh the idle report wins despite 3 in flight (0.01 × 4 < 1 × 1).
        assert_eq!(b.pick_at(&Pick::new(3, &all), fresh), Some(0));
        // Stale: all fall back to least connections, and 2 has none in flight.
        let stale = PickTime::at(t0 + max_age + Duration::from_secs(1));
        for _ in 0..3 {
            assert_eq!(b.pick_at(&Pick::new(3, &all), stale), Some(2));
        }
        bs[2].load.start();
        bs[2].load.start();
        assert_eq!(b.pick_at(&Pick::new(3, &all), stale), Some(1));
    }

    #[test]
    fn no_reports_at_all_is_weighted_least_connections_in_turn() {
        let bs = backends(&[1, 1, 1]);
        let b = ResourceBased::new(&bs, Duration::from_secs(10));
        let all = |_: usize| true;
        let picks: Vec<_> = (0..6)
            .map(|_| b.pick(&Pick::new(3, &all)).unwrap())
            .collect();
        assert_eq!(picks, [0, 1, 2, 0, 1, 2]);
    }

    #[test]
    fn options_are_checked() {
        let bs = backends(&[1]);
        assert!(factory(&bs, &json!({})).is_ok());
        assert!(factory(
            &bs,
            &json!({"resource": {"path": "/load", "interval": "2s", "max_age": "10s"}})
        )
        .is_ok());
        let cases = [
            (json!({"resource": "yes"}), "must be a table"),
            (
                json!({"resource": {"paht": "/x"}}),
                "resource.paht is not a setting",
            ),
            (json!({"resource": {"path": "load"}}), "starting with '/'"),
            (json!({"resource": {"interval": "2 s"}}), "invalid duration"),
            (
                json!({"resource": {"max_age": 10}}),
                "must be a duration string",
            ),
            (json!({"resource": {"interval": "0s"}}), "more than 0"),
            (json!({"resource": {"interval": "20s"}}), "shorter than"),
            (json!({"hash_key": "path"}), "does not use hash_key"),
        ];
        for (options, message) in cases {
            let err = factory(&bs, &options).err().expect("an error");
            assert!(err.0.contains(message), "{err} lacks {message:?}");
        }
        let r = ResourceOptions::from_options(
            &json!({"resource": {"max_age": "250ms", "interval": "100ms"}}),
        )
        .unwrap();
        assert_eq!(r.max_age, Duration::from_millis(250));
    }
}
