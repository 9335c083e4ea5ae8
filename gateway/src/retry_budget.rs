//! The retry budget: retries may add at most a fixed share of an upstream's requests over a
//! sliding window (20% over 10 s, as Envoy's and linkerd's budgets), so that a failing fleet
//! is not hit by a retry storm. A small floor lets a quiet upstream still retry.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::LazyLock;
use std::time::Instant;

/// Seconds in the sliding window.
pub const WINDOW_SECS: u64 = 10;
/// Share of requests that may be retried, in percent.
pub const RETRY_PERCENT: u64 = 20;
/// Retries always allowed per window (one a second), however quiet the upstream.
pub const MIN_RETRIES: u64 = 10;

static EPOCH: LazyLock<Instant> = LazyLock::new(Instant::now);

/// Whole seconds since the process's first use of the budget.
pub fn now_secs() -> u64 {
    secs_at(Instant::now())
}

/// Whole seconds from the process's first use of the budget to `at`.
pub fn secs_at(at: Instant) -> u64 {
    at.saturating_duration_since(*EPOCH).as_secs()
}

#[derive(Debug, Default)]
struct Bucket {
    second: AtomicU64,
    requests: AtomicU32,
    retries: AtomicU32,
}

/// Requests and retries of one upstream in one-second buckets.
#[derive(Debug, Default)]
pub struct RetryBudget {
    buckets: [Bucket; WINDOW_SECS as usize],
}

impl RetryBudget {
    fn bucket(&self, now: u64) -> &Bucket {
        let b = &self.buckets[(now % WINDOW_SECS) as usize];
        // The first use in a new second resets the bucket (a race only blurs a count).
        let seen = b.second.load(Ordering::Relaxed);
        if seen != now + 1
            && b.second
                .compare_exchange(seen, now + 1, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            b.requests.store(0, Ordering::Relaxed);
            b.retries.store(0, Ordering::Relaxed);
        }
        b
    }

    /// Count a request (its first attempt) at second `now`.
    pub fn record_request(&self, now: u64) {
        self.bucket(now).requests.fetch_add(1, Ordering::Relaxed);
    }

    fn totals(&self, now: u64) -> (u64, u64) {
        let oldest = (now + 1).saturating_sub(WINDOW_SECS - 1);
        self.buckets
            .iter()
            .filter(|b| {
                let s = b.second.load(Ordering::Relaxed);
                s >= oldest.max(1) && s <= now + 1
            })
            .fold((0, 0), |(req, ret), b| {
                (
                    req + u64::from(b.requests.load(Ordering::Relaxed)),
                    ret + u64::from(b.retries.load(Ordering::Relaxed)),
                )
            })
    }

    /// Take a retry from the budget at second `now`: true (and counted) when the window
    /// still allows one.
    pub fn try_retry(&self, now: u64) -> bool {
        let (requests, retries) = self.totals(now);
        let allowed = (requests * RETRY_PERCENT / 100).max(MIN_RETRIES);
        if retries >= allowed {
            return false;
        }
        self.bucket(now).retries.fetch_add(1, Ordering::Relaxed);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_are_capped_at_a_fifth_of_requests() {
        let b = RetryBudget::default();
        for _ in 0..100 {
            b.record_request(5);
        }
        let granted = (0..100).filter(|_| b.try_retry(5)).count();
        assert_eq!(granted, 20);
    }

    #[test]
    fn a_quiet_upstream_may_still_retry_a_little() {
        let b = RetryBudget::default();
        b.record_request(1);
        let granted = (0..10).filter(|_| b.try_retry(1)).count();
        assert_eq!(granted, MIN_RETRIES as usize);
    }

    #[test]
    fn the_window_slides() {
        let b = RetryBudget::default();
        for _ in 0..100 {
            b.record_request(3);
        }
        assert_eq!((0..50).filter(|_| b.try_retry(3)).count(), 20);
        // Still inside the window: nothing left.
        assert!(!b.try_retry(12));
        // Ten seconds on, the old second has left the window.
        assert_eq!(
            (0..10).filter(|_| b.try_retry(13)).count(),
            MIN_RETRIES as usize
        );
    }
}
