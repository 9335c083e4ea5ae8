//! `power-of-two-choices`: draw two backends at random, send to the less loaded.
//!
//! Mitzenmacher's result: comparing two random choices instead of taking one cuts the
//! most loaded backend's excess from O(log n / log log n) to O(log log n), at the cost of
//! reading two counters instead of scanning all of them. Here the two candidates are drawn
//! in proportion to their configured weights (a Vose alias table, as [`crate::random`]),
//! distinct when the draws find two eligible ones, and compared by
//! `in_flight / effective_weight` (cross-multiplied, no division); on a tie the first drawn
//! wins, so idle pools follow the weights.
//!
//! Data structure: the alias table (8 bytes a backend), the backends' shared load records
//! and weights, and the thread-local wyrand generator (see `rng.rs`): O(1) per pick at
//! any size, no allocation, no shared write. An ineligible draw is drawn again, up to
//! [`MAX_DRAWS`] draws in all: when they find only one eligible backend it is taken, and
//! when they find none a walk from a random start finds one (O(n), and only when most of
//! the weight is ineligible).

use switchyard_plugin::{Backend, Balancer, BuildError, Pick};

use crate::alias::AliasTable;
use crate::options::{self, Uses};
use crate::random::any_eligible;
use crate::rng;
use crate::scan::Ratio;
use crate::Slot;

/// The most draws a pick makes looking for two eligible backends.
pub const MAX_DRAWS: usize = 16;

/// The less loaded of two weighted random choices.
#[derive(Debug)]
pub struct PowerOfTwoChoices {
    table: AliasTable,
    slots: Box<[Slot]>,
}

impl PowerOfTwoChoices {
    /// A balancer over these backends.
    pub fn new(backends: &[Backend]) -> Self {
        let weights: Vec<u32> = backends.iter().map(|b| b.weight).collect();
        Self {
            table: AliasTable::new(&weights),
            slots: crate::slots(backends),
        }
    }

    fn load(&self, i: usize) -> Ratio {
        let slot = &self.slots[i];
        Ratio {
            num: slot.load.in_flight(),
            den: slot.load.effective_weight(slot.weight),
        }
    }
}

impl Balancer for PowerOfTwoChoices {
    fn pick(&self, pick: &Pick<'_>) -> Option<usize> {
        let n = self.table.len();
        if n == 0 {
            return None;
        }
        let mut first = None;
        for _ in 0..MAX_DRAWS {
            let i = self.table.draw(rng::next_u64());
            if !pick.eligible(i) {
                continue;
            }
            match first {
                None => first = Some(i),
                Some(a) if a == i => {}
                Some(a) => return Some(if self.load(i) < self.load(a) { i } else { a }),
            }
        }
        // One eligible backend found (perhaps the only one), or none: settle.
        first.or_else(|| any_eligible(n, pick))
    }
}

/// The registry factory for `power-of-two-choices`.
pub fn factory(
    backends: &[Backend],
    options: &serde_json::Value,
) -> Result<Box<dyn Balancer>, BuildError> {
    options::check(options, "power-of-two-choices", Uses::Nothing)?;
    Ok(Box::new(PowerOfTwoChoices::new(backends)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{backends, chi_square_ok};

    #[test]
    fn the_less_loaded_of_the_two_wins() {
        rng::seed(3);
        let bs = backends(&[1, 1]);
        (0..3).for_each(|_| bs[0].load.start());
        let b = PowerOfTwoChoices::new(&bs);
        let all = |_: usize| true;
        for _ in 0..100 {
            assert_eq!(b.pick(&Pick::new(2, &all)), Some(1));
        }
    }

    #[test]
    fn spreads_concurrent_load_evenly() {
        rng::seed(11);
        let bs = backends(&[1; 10]);
        let b = PowerOfTwoChoices::new(&bs);
        let all = |_: usize| true;
        for _ in 0..1000 {
            let i = b.pick(&Pick::new(10, &all)).unwrap();
            bs[i].load.start();
        }
        let max = bs.iter().map(|x| x.load.in_flight()).max().unwrap();
        // Power of two choices: the maximum stays within a few of the mean (100).
        assert!(max <= 104, "max {max}");
    }

    #[test]
    fn idle_picks_follow_weights() {
        rng::seed(5);
        let bs = backends(&[3, 1, 1]);
        let b = PowerOfTwoChoices::new(&bs);
        let all = |_: usize| true;
        let mut counts = [0u64; 3];
        for _ in 0..30_000 {
            counts[b.pick(&Pick::new(3, &all)).unwrap()] += 1;
        }
        // First draw weighted; ties go to it.
        assert!(chi_square_ok(&counts, &[3.0, 1.0, 1.0]), "{counts:?}");
    }

    #[test]
    fn a_single_eligible_backend_is_found() {
        let bs = backends(&[50, 50, 1]);
        let b = PowerOfTwoChoices::new(&bs);
        let only_two = |i: usize| i == 2;
        for _ in 0..50 {
            assert_eq!(b.pick(&Pick::new(3, &only_two)), Some(2));
        }
    }
}
