//! `random`: a backend drawn at random in proportion to its effective weight.
//!
//! Data structure: a Vose alias table over the configured weights (8 bytes a backend,
//! built in O(n)) and the thread-local wyrand generator (see `rng.rs`): a draw is one
//! random number, one table read and one comparison, O(1) at any size, no allocation, no
//! shared write (unlike a rotation cursor, threads never contend).
//!
//! Effective weight (slow start) changes at run time, so it is applied by rejection: a
//! drawn backend at `p`‰ of its weight is kept with probability `p / 1000`, which makes the
//! accepted draws exactly proportional to the effective weights. An ineligible draw is
//! drawn again. After [`MAX_DRAWS`] draws without success the last eligible backend drawn
//! is taken (so a pool whose every backend is in slow start still follows the configured
//! weights), and failing even that a walk from a random start finds the first eligible
//! backend: O(n), and not weighted, but only reached when most backends are ineligible
//! (with 90 % of the weight ineligible, 0.9^16 ≈ 19 % of picks).

use std::sync::Arc;

use switchyard_plugin::{Backend, BackendLoad, Balancer, BuildError, Pick};

use crate::alias::AliasTable;
use crate::options::{self, Uses};
use crate::rng;

/// The most draws a pick makes before it settles for what it found.
pub const MAX_DRAWS: usize = 16;

/// Weighted random choice.
#[derive(Debug)]
pub struct Random {
    table: AliasTable,
    loads: Box<[Arc<BackendLoad>]>,
}

impl Random {
    /// A balancer drawing among these backends by weight.
    pub fn new(backends: &[Backend]) -> Self {
        let weights: Vec<u32> = backends.iter().map(|b| b.weight).collect();
        Self {
            table: AliasTable::new(&weights),
            loads: backends.iter().map(|b| Arc::clone(&b.load)).collect(),
        }
    }
}

/// The first eligible backend walking from a random start, for when draws found none.
pub(crate) fn any_eligible(n: usize, pick: &Pick<'_>) -> Option<usize> {
    let start = rng::below(n);
    (start..n).chain(0..start).find(|&i| pick.eligible(i))
}

impl Balancer for Random {
    fn pick(&self, pick: &Pick<'_>) -> Option<usize> {
        let n = self.table.len();
        if n == 0 {
            return None;
        }
        let mut fallback = None;
        for _ in 0..MAX_DRAWS {
            let bits = rng::next_u64();
            let i = self.table.draw(bits);
            if !pick.eligible(i) {
                continue;
            }
            let permille = self.loads[i].weight_permille();
            // A fresh number for the coin: the draw's bits are not independent of `i`.
            if permille >= 1000 || rng::below(1000) < permille as usize {
                return Some(i);
            }
            fallback = Some(i);
        }
        fallback.or_else(|| any_eligible(n, pick))
    }
}

/// The registry factory for `random`.
pub fn factory(
    backends: &[Backend],
    options: &serde_json::Value,
) -> Result<Box<dyn Balancer>, BuildError> {
    options::check(options, "random", Uses::Nothing)?;
    Ok(Box::new(Random::new(backends)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{backends, chi_square_ok};
    use proptest::prelude::*;

    #[test]
    fn slow_start_lowers_the_share() {
        rng::seed(7);
        let bs = backends(&[1, 1]);
        bs[1].load.set_weight_permille(250);
        let b = Random::new(&bs);
        let all = |_: usize| true;
        let mut counts = [0u64; 2];
        for _ in 0..50_000 {
            counts[b.pick(&Pick::new(2, &all)).unwrap()] += 1;
        }
        assert!(chi_square_ok(&counts, &[4.0, 1.0]), "{counts:?}");
    }

    #[test]
    fn only_eligible_and_none_when_none() {
        let bs = backends(&[100, 1, 1]);
        let b = Random::new(&bs);
        let only_two = |i: usize| i == 2;
        for _ in 0..200 {
            assert_eq!(b.pick(&Pick::new(3, &only_two)), Some(2));
        }
        let none = |_: usize| false;
        assert_eq!(b.pick(&Pick::new(3, &none)), None);
        assert_eq!(Random::new(&[]).pick(&Pick::new(0, &none)), None);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(32))]
        #[test]
        fn weights_are_honoured_statistically(weights in prop::collection::vec(1u32..10, 1..8)) {
            rng::seed(0x5eed);
            let bs = backends(&weights);
            let b = Random::new(&bs);
            let all = |_: usize| true;
            let mut counts = vec![0u64; weights.len()];
            for _ in 0..20_000 {
                counts[b.pick(&Pick::new(bs.len(), &all)).unwrap()] += 1;
            }
            let expected: Vec<f64> = weights.iter().map(|&w| f64::from(w)).collect();
            prop_assert!(chi_square_ok(&counts, &expected), "{:?} for {:?}", counts, weights);
        }
    }
}
