//! A fast thread-local random number generator for the randomised algorithms.
//!
//! wyrand (Wang Yi's generator, the one `fastrand` uses): a 64-bit state in a
//! `thread_local` `Cell`, one add and one 64×64→128 multiply per number. No allocation, no
//! lock, no shared cache line between threads. Not for cryptography: it only spreads load.

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};

thread_local! {
    static STATE: Cell<u64> = const { Cell::new(0) };
}

/// A seed for a new thread: a process-wide counter mixed with the clock, so threads differ.
fn fresh_seed() -> u64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0x853c_49e6_748f_ea9b);
    let count = COUNTER.fetch_add(0x9e37_79b9_7f4a_7c15, Ordering::Relaxed);
    let clock = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    crate::hash::fmix64(count ^ clock.rotate_left(32)) | 1
}

/// The next 64 random bits of this thread's generator.
#[inline]
pub(crate) fn next_u64() -> u64 {
    STATE.with(|state| {
        let mut s = state.get();
        if s == 0 {
            s = fresh_seed();
        }
        let s = s.wrapping_add(0xa076_1d64_78bd_642f);
        state.set(s);
        let t = u128::from(s) * u128::from(s ^ 0xe703_7ed1_a0b4_28db);
        (t >> 64) as u64 ^ t as u64
    })
}

/// A random index below `n` (Lemire's multiply-shift; `n` must be at least 1).
#[inline]
pub(crate) fn below(n: usize) -> usize {
    scale(next_u64(), n)
}

/// Map 64 random bits onto `0..n` by multiplying and keeping the high half.
#[inline]
pub(crate) fn scale(bits: u64, n: usize) -> usize {
    ((u128::from(bits) * n as u128) >> 64) as usize
}

/// Seed this thread's generator, for reproducible tests.
#[cfg(test)]
pub(crate) fn seed(seed: u64) {
    STATE.with(|state| state.set(seed | 1));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeded_sequences_repeat_and_spread() {
        seed(42);
        let a: Vec<u64> = (0..8).map(|_| next_u64()).collect();
        seed(42);
        let b: Vec<u64> = (0..8).map(|_| next_u64()).collect();
        assert_eq!(a, b);
        let mut counts = [0u32; 10];
        for _ in 0..100_000 {
            counts[below(10)] += 1;
        }
        assert!(
            counts.iter().all(|&c| (9_500..10_500).contains(&c)),
            "{counts:?}"
        );
    }
}
