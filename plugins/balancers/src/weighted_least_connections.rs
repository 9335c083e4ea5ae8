//! `weighted-least-connections`: the backend with the fewest requests in flight per unit of
//! effective weight (`in_flight / effective_weight`, slow start included).
//!
//! Data structure: the backends' shared [`BackendLoad`](switchyard_plugin::BackendLoad) records and configured weights in
//! an array, plus a precomputed weighted rotation (each backend appears `weight / gcd`
//! times, spread evenly by stride scheduling) walked by one atomic cursor. A pick starts its
//! bounded scan ([`crate::scan`]) at the backend the rotation names, compares
//! `in_flight / weight` by cross-multiplication (no division), and keeps the first least
//! one: ties go to the rotation's backend, so idle or equally loaded backends share
//! requests in proportion to their weights rather than the first one taking them all, and
//! serial traffic (nothing ever in flight at a pick) still honours the weights.
//!
//! Cost: O(1) when the rotation's backend is idle, otherwise at most [`SCAN_LIMIT`]
//! eligible backends are read: exact up to that many backends, the least loaded of a
//! sliding window above (see [`crate::least_connections`] for the trade-off). The rotation
//! takes 4 bytes per entry and at most [`MAX_CYCLE`] entries.

use std::sync::atomic::{AtomicUsize, Ordering};

use switchyard_plugin::{Backend, Balancer, BuildError, Pick};

use crate::options::{self, Uses};
use crate::scan::{self, Ratio, SCAN_LIMIT};
use crate::Slot;

/// The longest precomputed rotation, in entries.
pub const MAX_CYCLE: u64 = 1 << 20;

/// Fewest in flight per unit of effective weight, ties taken in weighted turn.
#[derive(Debug)]
pub struct WeightedLeastConnections {
    slots: Box<[Slot]>,
    cycle: Box<[u32]>,
    cursor: AtomicUsize,
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

/// A rotation in which backend `i` appears `weights[i] / gcd` times (scaled down to fit in
/// [`MAX_CYCLE`]), its appearances spread evenly: appearance `k` of a backend of weight `w`
/// sits at `(k + 1/2) / w` of the way through. O(T log T) to build for T entries.
pub fn weighted_cycle(weights: &[u32]) -> Box<[u32]> {
    let mut weights: Vec<u64> = weights.iter().map(|&w| u64::from(w.max(1))).collect();
    let g = weights.iter().copied().fold(0, gcd).max(1);
    weights.iter_mut().for_each(|w| *w /= g);
    let total: u64 = weights.iter().sum();
    if total > MAX_CYCLE {
        let scale = total.div_ceil(MAX_CYCLE);
        weights.iter_mut().for_each(|w| *w = (*w / scale).max(1));
    }
    let mut entries: Vec<(u64, u64, u32)> = Vec::new();
    for (i, &w) in weights.iter().enumerate() {
        for k in 0..w {
            entries.push((2 * k + 1, 2 * w, i as u32));
        }
    }
    // Sort by position (num / den) exactly, then by backend.
    entries.sort_unstable_by(|a, b| {
        (u128::from(a.0) * u128::from(b.1))
            .cmp(&(u128::from(b.0) * u128::from(a.1)))
            .then(a.2.cmp(&b.2))
    });
    entries.into_iter().map(|(_, _, i)| i).collect()
}

impl WeightedLeastConnections {
    /// A balancer over these backends' weights and load records.
    pub fn new(backends: &[Backend]) -> Self {
        let weights: Vec<u32> = backends.iter().map(|b| b.weight).collect();
        Self {
            slots: crate::slots(backends),
            cycle: weighted_cycle(&weights),
            cursor: AtomicUsize::new(0),
        }
    }

    /// The precomputed weighted rotation that breaks ties.
    pub fn cycle(&self) -> &[u32] {
        &self.cycle
    }
}

impl Balancer for WeightedLeastConnections {
    fn pick(&self, pick: &Pick<'_>) -> Option<usize> {
        let n = self.slots.len();
        if n == 0 {
            return None;
        }
        let turn = self.cursor.fetch_add(1, Ordering::Relaxed) % self.cycle.len();
        let start = self.cycle[turn] as usize;
        scan::least(
            n,
            start,
            SCAN_LIMIT,
            pick,
            |i| {
                let slot = &self.slots[i];
                Ratio {
                    num: slot.load.in_flight(),
                    den: slot.load.effective_weight(slot.weight),
                }
            },
            |r| r.num == 0,
        )
    }
}

/// The registry factory for `weighted-least-connections`.
pub fn factory(
    backends: &[Backend],
    options: &serde_json::Value,
) -> Result<Box<dyn Balancer>, BuildError> {
    options::check(options, "weighted-least-connections", Uses::Nothing)?;
    Ok(Box::new(WeightedLeastConnections::new(backends)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::backends;
    use proptest::prelude::*;

    #[test]
    fn ties_rotate_never_always_the_first() {
        let bs = backends(&[1, 1, 1]);
        let b = WeightedLeastConnections::new(&bs);
        let all = |_: usize| true;
        // Idle: each in turn.
        let picks: Vec<_> = (0..6)
            .map(|_| b.pick(&Pick::new(3, &all)).unwrap())
            .collect();
        assert_eq!(picks, [0, 1, 2, 0, 1, 2]);
        // Equally loaded (nonzero): still each in turn.
        for x in &bs {
            x.load.start();
            x.load.start();
        }
        let picks: Vec<_> = (0..6)
            .map(|_| b.pick(&Pick::new(3, &all)).unwrap())
            .collect();
        assert_eq!(picks, [0, 1, 2, 0, 1, 2]);
    }

    #[test]
    fn load_is_divided_by_effective_weight() {
        let bs = backends(&[3, 1]);
        let b = WeightedLeastConnections::new(&bs);
        let all = |_: usize| true;
        // 5/3 < 2/1: the heavy backend wins.
        (0..5).for_each(|_| bs[0].load.start());
        (0..2).for_each(|_| bs[1].load.start());
        for _ in 0..4 {
            assert_eq!(b.pick(&Pick::new(2, &all)), Some(0));
        }
        // Slow start cuts its weight to 1: 5/1 > 2/1.
        bs[0].load.set_weight_permille(333);
        for _ in 0..4 {
            assert_eq!(b.pick(&Pick::new(2, &all)), Some(1));
        }
    }

    #[test]
    fn concurrent_load_settles_in_proportion_to_weights() {
        let bs = backends(&[3, 1, 2]);
        let b = WeightedLeastConnections::new(&bs);
        let all = |_: usize| true;
        for _ in 0..60 {
            let i = b.pick(&Pick::new(3, &all)).unwrap();
            bs[i].load.start();
        }
        let got: Vec<u32> = bs.iter().map(|x| x.load.in_flight()).collect();
        assert_eq!(got, [30, 10, 20]);
    }

    #[test]
    fn serial_traffic_follows_weights() {
        let bs = backends(&[5, 1, 1]);
        let b = WeightedLeastConnections::new(&bs);
        let all = |_: usize| true;
        let mut counts = [0; 3];
        for _ in 0..70 {
            counts[b.pick(&Pick::new(3, &all)).unwrap()] += 1;
        }
        assert_eq!(counts, [50, 10, 10]);
    }

    proptest! {
        #[test]
        fn cycle_counts_follow_weights(weights in prop::collection::vec(1u32..30, 1..12)) {
            let cycle = weighted_cycle(&weights);
            let g = weights.iter().map(|&w| u64::from(w)).fold(0, gcd);
            for (i, w) in weights.iter().enumerate() {
                let count = cycle.iter().filter(|&&c| c as usize == i).count() as u64;
                prop_assert_eq!(count, u64::from(*w) / g);
            }
        }

        #[test]
        fn idle_picks_honour_weights_over_a_full_cycle(weights in prop::collection::vec(1u32..10, 1..10)) {
            let bs = backends(&weights);
            let b = WeightedLeastConnections::new(&bs);
            let all = |_: usize| true;
            let len = b.cycle().len();
            let mut counts = vec![0usize; weights.len()];
            for _ in 0..len {
                counts[b.pick(&Pick::new(bs.len(), &all)).unwrap()] += 1;
            }
            let g = weights.iter().map(|&w| u64::from(w)).fold(0, gcd);
            for (i, w) in weights.iter().enumerate() {
                prop_assert_eq!(counts[i] as u64, u64::from(*w) / g);
            }
        }
    }
}
