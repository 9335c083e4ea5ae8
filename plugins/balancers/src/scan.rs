//! The bounded scan shared by the load-aware algorithms (least connections, weighted least
//! connections, least response time, resource based).
//!
//! A pick walks the backends from a rotating start and keeps the least costly eligible
//! one, the first found winning ties (so ties rotate). It stops early at a backend whose
//! cost is the floor (nothing in flight: nothing can beat it), and after `d` eligible
//! backends ([`SCAN_LIMIT`], or [`SCAN_LIMIT_TIMED`] for resource based). Up to `d` backends that is an exact minimum; above, the pick is
//! the best of a window of `d` eligible backends that slides by one every pick: a bounded
//! cost (under 200 ns at 10 000 backends) for an approximation in the spirit of
//! power-of-d choices, where the chosen backend is the least loaded of `d` candidates. Ineligible backends do not count toward the
//! limit, so the walk goes on past them until it has seen enough eligible ones or all.

use switchyard_plugin::Pick;

/// The most eligible backends a pick of least connections, weighted least connections or
/// least response time examines. With this many backends or fewer the pick is the exact
/// least costly backend; with more, the least costly of a sliding window of this many.
pub const SCAN_LIMIT: usize = 32;

/// The most eligible backends a resource-based pick examines: its cost per backend (the
/// report's age, two fractions, in-flight count and weight in floating point) is about
/// three times a counter's, so the window is half as wide to stay within the same time
/// budget (200 ns a pick at 10 000 backends).
pub const SCAN_LIMIT_TIMED: usize = 16;

/// The index of the least costly eligible backend among at most `limit` eligible ones,
/// walking from `start` (wrapping at `n`); the first found wins ties; `floor(cost)` stops
/// the walk at once. `None` when no backend is eligible.
#[inline]
pub(crate) fn least<C: PartialOrd>(
    n: usize,
    start: usize,
    limit: usize,
    pick: &Pick<'_>,
    mut cost: impl FnMut(usize) -> C,
    floor: impl Fn(&C) -> bool,
) -> Option<usize> {
    let advance = |i: usize| if i + 1 == n { 0 } else { i + 1 };
    let mut i = start;
    let mut left = n;
    // The first eligible backend, then the others against it: the best stays in registers.
    let (mut best_i, mut best) = loop {
        if left == 0 {
            return None;
        }
        left -= 1;
        if pick.eligible(i) {
            let c = cost(i);
            if floor(&c) {
                return Some(i);
            }
            break (i, c);
        }
        i = advance(i);
    };
    let mut seen = 1;
    while seen < limit && left > 0 {
        i = advance(i);
        left -= 1;
        if pick.eligible(i) {
            let c = cost(i);
            if floor(&c) {
                return Some(i);
            }
            // Strictly less: the first found wins ties (and NaN never displaces a number).
            if c < best {
                best_i = i;
                best = c;
            }
            seen += 1;
        }
    }
    Some(best_i)
}

/// `in_flight / weight` compared without division: `a/b < c/d` as `a*d < c*b` (both
/// products fit in a `u64`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Ratio {
    /// Requests in flight.
    pub(crate) num: u32,
    /// Effective weight, at least 1.
    pub(crate) den: u32,
}

impl PartialOrd for Ratio {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        let lhs = u64::from(self.num) * u64::from(other.den);
        let rhs = u64::from(other.num) * u64::from(self.den);
        lhs.partial_cmp(&rhs)
    }
}

/// A cost per unit of weight, `num / den`, compared by cross-multiplication (two
/// multiplications instead of a division per backend). `den` is positive.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct PerWeight {
    /// The cost.
    pub(crate) num: f64,
    /// The effective weight, at least 1.
    pub(crate) den: f64,
}

impl PartialOrd for PerWeight {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        (self.num * other.den).partial_cmp(&(other.num * self.den))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_below_the_limit_and_ties_go_to_the_first_found() {
        let costs = [3, 1, 2, 1];
        let all = |_: usize| true;
        let p = Pick::new(4, &all);
        assert_eq!(least(4, 0, 32, &p, |i| costs[i], |_| false), Some(1));
        assert_eq!(least(4, 2, 32, &p, |i| costs[i], |_| false), Some(3));
        assert_eq!(least(4, 0, 2, &p, |i| costs[i], |_| false), Some(1));
        assert_eq!(least(4, 0, 1, &p, |i| costs[i], |_| false), Some(0));
    }

    #[test]
    fn ineligible_do_not_count_and_floor_stops() {
        let costs = [0, 5, 4, 9];
        let not_zero = |i: usize| i != 0;
        let p = Pick::new(4, &not_zero);
        assert_eq!(least(4, 0, 2, &p, |i| costs[i], |c| *c == 0), Some(2));
        let none = |_: usize| false;
        let p = Pick::new(4, &none);
        assert_eq!(least(4, 0, 2, &p, |i| costs[i], |_| false), None);
        let all = |_: usize| true;
        let p = Pick::new(4, &all);
        let mut calls = 0;
        let got = least(
            4,
            3,
            32,
            &p,
            |i| {
                calls += 1;
                costs[i]
            },
            |c| *c == 0,
        );
        assert_eq!((got, calls), (Some(0), 2));
    }

    #[test]
    fn ratios_compare_by_cross_multiplication() {
        let r = |num, den| Ratio { num, den };
        assert!(r(1, 3) < r(1, 2));
        assert!(r(2, 4) == r(2, 4));
        assert_eq!(
            r(2, 4).partial_cmp(&r(1, 2)),
            Some(std::cmp::Ordering::Equal)
        );
        assert!(r(u32::MAX, 1) > r(u32::MAX - 1, 1));
        assert!(r(u32::MAX, u32::MAX) < r(2, 1));
        let w = |num, den| PerWeight { num, den };
        assert!(w(3.0, 2.0) < w(2.0, 1.0));
        assert!(w(0.0, 1.0) < w(0.1, 100.0));
        assert_eq!(
            w(1.0, 2.0).partial_cmp(&w(2.0, 4.0)),
            Some(std::cmp::Ordering::Equal)
        );
    }
}
