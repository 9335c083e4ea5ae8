//! An example Switchyard plugin, written as an outside author would: a `canary` balancer.
//!
//! It sends `percent` percent of requests to one backend (the canary) and rotates the rest
//! over the others. When the canary is not eligible (down, drained, ejected), everything goes
//! to the others; when none of the others is eligible, everything goes to the canary.
//!
//! Configuration, on an upstream:
//!
//! ```toml
//! [[upstream]]
//! name = "api"
//! algorithm = "canary"
//! options = { canary = "127.0.0.1:9003", percent = 10 }
//! backends = [ { addr = "127.0.0.1:9001" }, { addr = "127.0.0.1:9002" }, { addr = "127.0.0.1:9003" } ]
//! ```
//!
//! Registration, in the binary that links this crate (one call):
//!
//! ```
//! let mut registry = switchyard_plugin::Registry::new();
//! switchyard_example_canary::register(&mut registry);
//! assert!(registry.balancer("canary").is_some());
//! ```

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use serde::Deserialize;
use switchyard_plugin::{Backend, Balancer, BuildError, Pick, Registry};

/// The plugin's options, read from the upstream's `options` table.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CanaryOptions {
    /// Address of the canary backend, as written in `backends`.
    pub canary: String,
    /// Share of requests for the canary, 0 to 100.
    pub percent: u8,
}

/// Sends `percent` of picks to the canary, the rest round robin over the others.
#[derive(Debug)]
pub struct Canary {
    canary: usize,
    /// Out of every 100 picks, how many go to the canary.
    percent: u64,
    len: usize,
    counter: AtomicU64,
    rotation: AtomicUsize,
}

impl Canary {
    /// A canary balancer over `len` backends, `canary` being the index of the canary.
    pub fn new(len: usize, canary: usize, percent: u8) -> Self {
        Self {
            canary,
            percent: u64::from(percent.min(100)),
            len,
            counter: AtomicU64::new(0),
            rotation: AtomicUsize::new(0),
        }
    }
}

impl Balancer for Canary {
    fn pick(&self, pick: &Pick<'_>) -> Option<usize> {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        // Spread the canary's share evenly over each window of 100 picks:
        // pick n goes to the canary when floor((n+1)p/100) > floor(np/100).
        let to_canary = ((n % 100 + 1) * self.percent) / 100 > ((n % 100) * self.percent) / 100;
        if to_canary && pick.eligible(self.canary) {
            return Some(self.canary);
        }
        let others = self.len.saturating_sub(1);
        let start = self.rotation.fetch_add(1, Ordering::Relaxed);
        (0..others)
            .map(|step| {
                let i = (start + step) % others;
                if i >= self.canary {
                    i + 1
                } else {
                    i
                }
            })
            .find(|&i| pick.eligible(i))
            .or_else(|| pick.eligible(self.canary).then_some(self.canary))
    }
}

/// The factory: reads [`CanaryOptions`] and finds the canary among the backends.
pub fn factory(
    backends: &[Backend],
    options: &serde_json::Value,
) -> Result<Box<dyn Balancer>, BuildError> {
    let options = CanaryOptions::deserialize(options).map_err(|e| {
        BuildError(format!(
            "canary needs options = {{ canary = \"ADDR\", percent = N }}: {e}"
        ))
    })?;
    if options.percent > 100 {
        return Err(BuildError(format!(
            "percent must be 0 to 100, not {}",
            options.percent
        )));
    }
    let canary = backends
        .iter()
        .position(|b| b.addr == options.canary)
        .ok_or_else(|| {
            BuildError(format!(
                "the canary `{}` is not one of the upstream's backends",
                options.canary
            ))
        })?;
    Ok(Box::new(Canary::new(
        backends.len(),
        canary,
        options.percent,
    )))
}

/// Register the `canary` algorithm.
pub fn register(registry: &mut Registry) {
    registry.register_balancer("canary", factory);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backends() -> Vec<Backend> {
        ["a:1", "b:1", "c:1"]
            .iter()
            .map(|a| Backend::new(*a, 1))
            .collect()
    }

    #[test]
    fn sends_exactly_the_share_to_the_canary() {
        let b = factory(
            &backends(),
            &serde_json::json!({"canary": "c:1", "percent": 10}),
        )
        .unwrap();
        let all = |_: usize| true;
        let picks: Vec<usize> = (0..1000)
            .map(|_| b.pick(&Pick::new(3, &all)).unwrap())
            .collect();
        assert_eq!(picks.iter().filter(|&&i| i == 2).count(), 100);
        assert_eq!(picks.iter().filter(|&&i| i == 0).count(), 450);
    }

    #[test]
    fn falls_back_when_the_canary_or_the_others_are_down() {
        let b = factory(
            &backends(),
            &serde_json::json!({"canary": "c:1", "percent": 50}),
        )
        .unwrap();
        let no_canary = |i: usize| i != 2;
        assert!((0..100).all(|_| b.pick(&Pick::new(3, &no_canary)) != Some(2)));
        let only_canary = |i: usize| i == 2;
        assert!((0..100).all(|_| b.pick(&Pick::new(3, &only_canary)) == Some(2)));
    }

    #[test]
    fn bad_options_are_explained() {
        for bad in [
            serde_json::json!({}),
            serde_json::json!({"canary": "z:1", "percent": 10}),
            serde_json::json!({"canary": "c:1", "percent": 101}),
            serde_json::json!({"canary": "c:1", "percent": 10, "extra": 1}),
        ] {
            assert!(factory(&backends(), &bad).is_err(), "{bad}");
        }
    }
}
