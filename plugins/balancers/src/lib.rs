//! Switchyard's compiled-in load-balancing algorithms, one module each.
//!
//! [`register_all`] adds every algorithm to a [`Registry`] under the names the
//! configuration uses:
//!
//! | name | module | pick cost |
//! | --- | --- | --- |
//! | `round-robin` | [`round_robin`] | O(1) |
//! | `weighted-round-robin` | [`weighted_round_robin`] | O(1) |
//! | `least-connections` | [`least_connections`] | O(min(n, [`SCAN_LIMIT`])) |
//! | `weighted-least-connections` | [`weighted_least_connections`] | O(min(n, [`SCAN_LIMIT`])) |
//! | `ip-hash` | [`ip_hash`] | O(1) |
//! | `consistent-hash` | [`consistent_hash`] | O(1) expected, O(log n) worst |
//! | `least-response-time` | [`least_response_time`] | O(min(n, [`SCAN_LIMIT`])) |
//! | `random` | [`random`] | O(1) |
//! | `power-of-two-choices` | [`power_of_two_choices`] | O(1) |
//! | `resource-based` | [`resource_based`] | O(min(n, [`SCAN_LIMIT_TIMED`])) |
//!
//! Costs are with every backend eligible; each module says what it does otherwise. No pick
//! allocates. Load-aware algorithms read the [`BackendLoad`]
//! records the gateway keeps, so their state survives a rebuild of the balancer.
//!
//! The hash algorithms take the upstream's `hash_key`; `resource-based` takes its
//! `resource` table; every factory refuses those keys where its algorithm would ignore them.

use std::sync::Arc;

use switchyard_plugin::{Backend, BackendLoad, Registry};

mod alias;
mod hash;
mod rng;

pub mod consistent_hash;
pub mod ip_hash;
pub mod least_connections;
pub mod least_response_time;
pub mod options;
pub mod power_of_two_choices;
pub mod random;
pub mod resource_based;
pub mod round_robin;
pub mod scan;
pub mod weighted_least_connections;
pub mod weighted_round_robin;

pub use consistent_hash::ConsistentHash;
pub use ip_hash::IpHash;
pub use least_connections::LeastConnections;
pub use least_response_time::LeastResponseTime;
pub use power_of_two_choices::PowerOfTwoChoices;
pub use random::Random;
pub use resource_based::{ResourceBased, ResourceOptions};
pub use round_robin::RoundRobin;
pub use scan::{SCAN_LIMIT, SCAN_LIMIT_TIMED};
pub use weighted_least_connections::WeightedLeastConnections;
pub use weighted_round_robin::SmoothWeightedRoundRobin;

/// Every compiled-in algorithm's configuration name, sorted.
pub const ALGORITHMS: [&str; 10] = [
    "consistent-hash",
    "ip-hash",
    "least-connections",
    "least-response-time",
    "power-of-two-choices",
    "random",
    "resource-based",
    "round-robin",
    "weighted-least-connections",
    "weighted-round-robin",
];

/// Register every compiled-in algorithm under its configuration name.
pub fn register_all(registry: &mut Registry) {
    registry
        .register_balancer("round-robin", round_robin::factory)
        .register_balancer("weighted-round-robin", weighted_round_robin::factory)
        .register_balancer("least-connections", least_connections::factory)
        .register_balancer(
            "weighted-least-connections",
            weighted_least_connections::factory,
        )
        .register_balancer("ip-hash", ip_hash::factory)
        .register_balancer("consistent-hash", consistent_hash::factory)
        .register_balancer("least-response-time", least_response_time::factory)
        .register_balancer("random", random::factory)
        .register_balancer("power-of-two-choices", power_of_two_choices::factory)
        .register_balancer("resource-based", resource_based::factory);
}

/// What the weighted load-aware algorithms keep per backend: 16 bytes, in one array.
#[derive(Debug, Clone)]
pub(crate) struct Slot {
    pub(crate) load: Arc<BackendLoad>,
    pub(crate) weight: u32,
}

impl Slot {
    /// The configured weight times the effective fraction (slow start), in thousandths,
    /// as a float for cross-multiplied comparisons: not floored at 1 like
    /// [`Backend::effective_weight`], so a weight-1 backend in slow start counts as less.
    #[inline]
    pub(crate) fn effective_weight(&self) -> f64 {
        f64::from(self.weight) * f64::from(self.load.weight_permille())
    }
}

pub(crate) fn slots(backends: &[Backend]) -> Box<[Slot]> {
    backends
        .iter()
        .map(|b| Slot {
            load: Arc::clone(&b.load),
            weight: b.weight.max(1),
        })
        .collect()
}

#[cfg(test)]
pub(crate) mod testing {
    use switchyard_plugin::Backend;

    /// Backends with these weights and distinct addresses.
    pub(crate) fn backends(weights: &[u32]) -> Vec<Backend> {
        weights
            .iter()
            .enumerate()
            .map(|(i, &w)| Backend::new(format!("10.0.{}.{}:80", i / 256, i % 256), w))
            .collect()
    }

    /// Whether `counts` fit proportions `expected` by Pearson's chi-square, with a bound
    /// far out in the tail (about p < 1e-5), so a fixed-seed test does not flake while a
    /// wrong distribution over tens of thousands of picks still fails.
    pub(crate) fn chi_square_ok(counts: &[u64], expected: &[f64]) -> bool {
        let total: f64 = counts.iter().sum::<u64>() as f64;
        let sum: f64 = expected.iter().sum();
        let chi: f64 = counts
            .iter()
            .zip(expected)
            .map(|(&c, &e)| {
                let want = total * e / sum;
                (c as f64 - want).powi(2) / want
            })
            .sum();
        let df = (counts.len().max(2) - 1) as f64;
        chi < df + 6.0 * (2.0 * df).sqrt() + 16.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::net::{IpAddr, Ipv4Addr};
    use std::time::{Duration, Instant};
    use switchyard_plugin::Pick;

    #[test]
    fn registers_every_algorithm() {
        let mut r = Registry::new();
        register_all(&mut r);
        let names: Vec<_> = r.balancer_names().collect();
        assert_eq!(names, ALGORITHMS);
        let bs = testing::backends(&[1, 2]);
        let all = |_: usize| true;
        for name in ALGORITHMS {
            let b = r
                .balancer(name)
                .unwrap()
                .build(&bs, &serde_json::Value::Null)
                .unwrap();
            assert!(b.pick(&Pick::new(2, &all)).is_some(), "{name}");
            let none = |_: usize| false;
            assert_eq!(b.pick(&Pick::new(2, &none)), None, "{name}");
            let empty = r
                .balancer(name)
                .unwrap()
                .build(&[], &serde_json::Value::Null)
                .unwrap();
            assert_eq!(empty.pick(&Pick::new(0, &all)), None, "{name}");
        }
    }

    #[test]
    fn misplaced_options_are_refused_by_every_algorithm() {
        let mut r = Registry::new();
        register_all(&mut r);
        let bs = testing::backends(&[1]);
        let hash_key = serde_json::json!({ "hash_key": "header:x-user" });
        let resource = serde_json::json!({ "resource": { "path": "/load" } });
        let bad_key = serde_json::json!({ "hash_key": "body" });
        for name in ALGORITHMS {
            let f = r.balancer(name).unwrap();
            let hashing = matches!(name, "ip-hash" | "consistent-hash");
            assert_eq!(f.build(&bs, &hash_key).is_ok(), hashing, "{name}");
            assert_eq!(
                f.build(&bs, &resource).is_ok(),
                name == "resource-based",
                "{name}"
            );
            assert!(f.build(&bs, &bad_key).is_err(), "{name}");
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// For every algorithm: never an ineligible backend while an eligible one exists,
        /// and `None` only when none is eligible, whatever the loads, weights and keys.
        #[test]
        fn never_an_ineligible_backend(
            weights in prop::collection::vec(1u32..6, 1..80),
            eligible in prop::collection::vec(prop::bool::weighted(0.3), 80),
            in_flight in prop::collection::vec(0u32..4, 80),
            rtt_ms in prop::collection::vec(prop::option::of(1u64..100), 80),
            reports in prop::collection::vec(prop::option::of((0.0f64..1.0, 0.0f64..1.0)), 80),
            keys in prop::collection::vec(prop::option::of(any::<u64>()), 8),
        ) {
            let bs = testing::backends(&weights);
            let n = bs.len();
            let t0 = Instant::now();
            for (i, b) in bs.iter().enumerate() {
                (0..in_flight[i]).for_each(|_| b.load.start());
                if let Some(ms) = rtt_ms[i] {
                    b.load.observe_at(Duration::from_millis(ms), t0);
                }
                if let Some((cpu, mem)) = reports[i] {
                    b.load.set_resource(cpu, mem, t0);
                }
                if i % 3 == 0 {
                    b.load.set_weight_permille(100);
                }
            }
            let ok = |i: usize| eligible[i];
            let any = (0..n).any(ok);
            let mut r = Registry::new();
            register_all(&mut r);
            for name in ALGORITHMS {
                let b = r.balancer(name).unwrap().build(&bs, &serde_json::Value::Null).unwrap();
                for key in &keys {
                    let bytes = key.map(u64::to_le_bytes);
                    let ip = key.map(|k| IpAddr::V4(Ipv4Addr::from(k as u32)));
                    let pick = Pick::new(n, &ok)
                        .with_key(bytes.as_ref().map(|b| b.as_slice()))
                        .with_client_ip(ip.filter(|_| key.unwrap_or(0) % 2 == 0));
                    match b.pick(&pick) {
                        Some(i) => prop_assert!(i < n && eligible[i], "{} picked {}", name, i),
                        None => prop_assert!(!any, "{} found none among eligible", name),
                    }
                }
            }
        }
    }
}
