//! `round-robin`: exact rotation over the backends, skipping ineligible ones.
//!
//! Data structure: one atomic counter. A pick is one `fetch_add` plus, when the backend
//! at the cursor is ineligible, a walk to the next eligible one (O(1) while all are up).

use std::sync::atomic::{AtomicUsize, Ordering};

use switchyard_plugin::{Backend, Balancer, BuildError, Pick};

/// Exact rotation: with all backends eligible, backend `i` gets every `n`-th request.
#[derive(Debug)]
pub struct RoundRobin {
    len: usize,
    cursor: AtomicUsize,
}

impl RoundRobin {
    /// A rotation over `len` backends, starting at the first.
    pub fn new(len: usize) -> Self {
        Self {
            len,
            cursor: AtomicUsize::new(0),
        }
    }
}

impl Balancer for RoundRobin {
    fn pick(&self, pick: &Pick<'_>) -> Option<usize> {
        if self.len == 0 {
            return None;
        }
        let start = self.cursor.fetch_add(1, Ordering::Relaxed) % self.len;
        (0..self.len)
            .map(|step| (start + step) % self.len)
            .find(|&i| pick.eligible(i))
    }
}

/// The registry factory for `round-robin`.
pub fn factory(
    backends: &[Backend],
    options: &serde_json::Value,
) -> Result<Box<dyn Balancer>, BuildError> {
    crate::options::check(options, "round-robin", crate::options::Uses::Nothing)?;
    Ok(Box::new(RoundRobin::new(backends.len())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotates_exactly() {
        let rr = RoundRobin::new(3);
        let all = |_: usize| true;
        let picks: Vec<_> = (0..6)
            .map(|_| rr.pick(&Pick::new(3, &all)).unwrap())
            .collect();
        assert_eq!(picks, [0, 1, 2, 0, 1, 2]);
    }

    #[test]
    fn skips_ineligible_and_gives_none_when_all_down() {
        let rr = RoundRobin::new(3);
        let not_one = |i: usize| i != 1;
        let picks: Vec<_> = (0..4)
            .map(|_| rr.pick(&Pick::new(3, &not_one)).unwrap())
            .collect();
        assert!(!picks.contains(&1));
        let none = |_: usize| false;
        assert_eq!(rr.pick(&Pick::new(3, &none)), None);
        assert_eq!(RoundRobin::new(0).pick(&Pick::new(0, &none)), None);
    }
}
