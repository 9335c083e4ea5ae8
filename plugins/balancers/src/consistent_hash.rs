//! `consistent-hash`: a ketama-style hash ring with virtual nodes.
//!
//! Each backend puts `POINTS_PER_WEIGHT × weight` points on a 64-bit ring; point `j` of a
//! backend is a hash of its address and `j`, so the ring depends on the backends'
//! identities, not on their order or indices. A request's key ([`Pick::key`], else the
//! client address) hashes to a position, and the first point at or after it (wrapping)
//! names the backend. Adding a backend only inserts its points: the keys that move (about
//! its share of the weight, `1/(n+1)` for equal weights) all move to it, and removing one
//! moves only its keys. When the owner of a key is not eligible the walk goes on along the
//! ring to the next eligible backend's point, so a down backend's keys spread over the
//! others and come back when it recovers.
//!
//! Data structure: the points sorted in one array of `u64` with their owners in a parallel
//! array of `u32` (12 bytes a point), and a bucket index over the top bits of the hash (one
//! `u32` per 4 points on average) that narrows the binary search to a handful of
//! neighbouring points in one or two cache lines: O(1) expected, O(log n) at worst,
//! instead of a cold binary search over megabytes at 10 000 backends. No allocation per
//! pick.
//!
//! The ring is capped at [`MAX_POINTS`]: past `MAX_POINTS / 160` units of weight every
//! backend's count is scaled down in proportion (at least one point each). Since point `j`
//! of a backend never changes, a change of scale only adds or removes each backend's last
//! points, so a membership change then also moves that small fraction of keys between the
//! remaining backends.

use std::sync::atomic::{AtomicUsize, Ordering};

use switchyard_plugin::{Backend, Balancer, BuildError, Pick};

use crate::hash;
use crate::options::{self, Uses};

/// Ring points per unit of weight (ketama's 160).
pub const POINTS_PER_WEIGHT: u64 = 160;
/// The most points a ring holds (12 MiB).
pub const MAX_POINTS: u64 = 1 << 20;
/// Ring steps walked past ineligible owners before checking that any backend is eligible.
const WALK_BEFORE_CHECK: usize = 64;

/// A consistent-hash ring.
#[derive(Debug)]
pub struct ConsistentHash {
    points: Box<[u64]>,
    owners: Box<[u32]>,
    /// `buckets[b]` is the first point whose top bits are at least `b`; one more entry at the
    /// end holds the number of points.
    buckets: Box<[u32]>,
    /// The number of top bits the bucket index uses (0: no index).
    bits: u32,
    backends: usize,
    cursor: AtomicUsize,
}

/// Point `j` of the backend whose address hashes to `base`.
fn point(base: u64, j: u64) -> u64 {
    hash::fmix64(base.wrapping_add((j + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15)))
}

impl ConsistentHash {
    /// The ring for these backends (by address and weight).
    pub fn new(backends: &[Backend]) -> Self {
        let total_weight: u64 = backends.iter().map(|b| u64::from(b.weight.max(1))).sum();
        let per_weight = if total_weight * POINTS_PER_WEIGHT > MAX_POINTS {
            MAX_POINTS as f64 / total_weight as f64
        } else {
            POINTS_PER_WEIGHT as f64
        };
        let mut ring: Vec<(u64, u32)> = Vec::new();
        for (i, b) in backends.iter().enumerate() {
            let count = ((f64::from(b.weight.max(1)) * per_weight) as u64).max(1);
            let base = hash::bytes(b.addr.as_bytes());
            ring.extend((0..count).map(|j| (point(base, j), i as u32)));
        }
        ring.sort_unstable();
        let len = ring.len();
        // About 4 points a bucket, at most 2^20 buckets.
        let bits = if len < 64 {
            0
        } else {
            (usize::BITS - 1 - (len / 4).leading_zeros()).min(20)
        };
        let mut buckets = Vec::with_capacity((1 << bits) + 1);
        let mut next = 0usize;
        for b in 0..(1u64 << bits) {
            while next < len && top(ring[next].0, bits) < b {
                next += 1;
            }
            buckets.push(next as u32);
        }
        buckets.push(len as u32);
        Self {
            points: ring.iter().map(|&(p, _)| p).collect(),
            owners: ring.iter().map(|&(_, o)| o).collect(),
            buckets: buckets.into_boxed_slice(),
            bits,
            backends: backends.len(),
            cursor: AtomicUsize::new(0),
        }
    }

    /// How many points the ring holds.
    pub fn points(&self) -> usize {
        self.points.len()
    }

    /// The ring position of the first point at or after `h` (wrapping).
    fn position(&self, h: u64) -> usize {
        let (lo, hi) = if self.bits == 0 {
            (0, self.points.len())
        } else {
            let b = top(h, self.bits) as usize;
            (self.buckets[b] as usize, self.buckets[b + 1] as usize)
        };
        let pos = lo + self.points[lo..hi].partition_point(|&p| p < h);
        if pos == self.points.len() {
            0
        } else {
            pos
        }
    }

    /// The backend owning hash `h` among those `eligible`.
    fn owner(&self, h: u64, pick: &Pick<'_>) -> Option<usize> {
        let len = self.points.len();
        let mut pos = self.position(h);
        for step in 0..len {
            let owner = self.owners[pos] as usize;
            if pick.eligible(owner) {
                return Some(owner);
            }
            if step == WALK_BEFORE_CHECK && !(0..self.backends).any(|i| pick.eligible(i)) {
                return None;
            }
            pos += 1;
            if pos == len {
                pos = 0;
            }
        }
        None
    }
}

/// The top `bits` bits of `h` (0 when `bits` is 0).
fn top(h: u64, bits: u32) -> u64 {
    h.checked_shr(64 - bits).unwrap_or(0)
}

impl Balancer for ConsistentHash {
    fn pick(&self, pick: &Pick<'_>) -> Option<usize> {
        if self.points.is_empty() {
            return None;
        }
        let h = hash::request(pick).unwrap_or_else(|| {
            // No key and no client address: spread requests around the ring.
            hash::fmix64(self.cursor.fetch_add(1, Ordering::Relaxed) as u64)
        });
        self.owner(h, pick)
    }
}

/// The registry factory for `consistent-hash` (accepts `hash_key`).
pub fn factory(
    backends: &[Backend],
    options: &serde_json::Value,
) -> Result<Box<dyn Balancer>, BuildError> {
    options::check(options, "consistent-hash", Uses::HashKey)?;
    Ok(Box::new(ConsistentHash::new(backends)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ring(addrs: &[(String, u32)]) -> ConsistentHash {
        let bs: Vec<Backend> = addrs
            .iter()
            .map(|(a, w)| Backend::new(a.clone(), *w))
            .collect();
        ConsistentHash::new(&bs)
    }

    /// The address each key goes to.
    fn owners(r: &ConsistentHash, addrs: &[(String, u32)], keys: &[u64]) -> Vec<String> {
        let all = |_: usize| true;
        keys.iter()
            .map(|k| {
                let key = k.to_le_bytes();
                let i = r
                    .pick(&Pick::new(addrs.len(), &all).with_key(Some(&key)))
                    .unwrap();
                addrs[i].0.clone()
            })
            .collect()
    }

    fn addrs(ids: &[u16], weights: &[u32]) -> Vec<(String, u32)> {
        ids.iter()
            .zip(weights)
            .map(|(id, w)| (format!("10.1.{}.{}:8080", id / 256, id % 256), *w))
            .collect()
    }

    fn keys(count: usize, seed: u64) -> Vec<u64> {
        (0..count as u64)
            .map(|i| hash::fmix64(i ^ seed.rotate_left(17)))
            .collect()
    }

    #[test]
    fn bucket_index_agrees_with_plain_binary_search() {
        let a = addrs(&(0..300).collect::<Vec<_>>(), &[1; 300]);
        let r = ring(&a);
        assert_eq!(r.points(), 300 * 160);
        assert!(r.bits > 0);
        for h in keys(5000, 1)
            .into_iter()
            .chain([0, 1, u64::MAX, r.points[0], r.points[7]])
        {
            let plain = r.points.partition_point(|&p| p < h) % r.points.len();
            assert_eq!(r.position(h), plain, "{h:#x}");
        }
    }

    #[test]
    fn weights_scale_points_and_share() {
        let a = addrs(&[1, 2, 3], &[1, 2, 4]);
        let r = ring(&a);
        assert_eq!(r.points(), 7 * 160);
        let got = owners(&r, &a, &keys(70_000, 9));
        let counts: Vec<u64> = a
            .iter()
            .map(|(addr, _)| got.iter().filter(|o| *o == addr).count() as u64)
            .collect();
        // Virtual nodes are not exact: within 25 % of the weight share.
        for (c, w) in counts.iter().zip([1.0, 2.0, 4.0]) {
            let want = 70_000.0 * w / 7.0;
            assert!((*c as f64 - want).abs() < want * 0.25, "{counts:?}");
        }
    }

    #[test]
    fn ring_is_capped_and_still_covers_everyone() {
        let n = 8000u16;
        let a = addrs(&(0..n).collect::<Vec<_>>(), &vec![1; n as usize]);
        let r = ring(&a);
        assert!(r.points() as u64 <= MAX_POINTS);
        assert!(r.points() >= 8000 * 100);
        let mut seen = vec![false; n as usize];
        r.owners.iter().for_each(|&o| seen[o as usize] = true);
        assert!(seen.iter().all(|&s| s));
    }

    #[test]
    fn an_ineligible_owner_sends_keys_to_the_next_and_all_down_is_none() {
        let a = addrs(&[1, 2, 3, 4], &[1; 4]);
        let r = ring(&a);
        let ks = keys(2000, 3);
        let before = owners(&r, &a, &ks);
        let not_zero = |i: usize| i != 0;
        for (k, b) in ks.iter().zip(&before) {
            let key = k.to_le_bytes();
            let i = r
                .pick(&Pick::new(4, &not_zero).with_key(Some(&key)))
                .unwrap();
            assert_ne!(i, 0);
            if *b != a[0].0 {
                assert_eq!(&a[i].0, b);
            }
        }
        let none = |_: usize| false;
        assert_eq!(r.pick(&Pick::new(4, &none).with_key(Some(b"k"))), None);
        assert_eq!(ring(&[]).pick(&Pick::new(0, &none)), None);
        // No key, no address: spread, and still only eligible backends.
        for _ in 0..50 {
            assert_ne!(r.pick(&Pick::new(4, &not_zero)), Some(0));
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]

        #[test]
        fn adding_a_backend_moves_about_its_share_and_only_to_it(
            ids in prop::collection::hash_set(0u16..5000, 2..20),
            weights in prop::collection::vec(1u32..4, 20),
            seed in any::<u64>(),
        ) {
            let ids: Vec<u16> = ids.into_iter().collect();
            let all = addrs(&ids, &weights);
            let (old, new) = (&all[..all.len() - 1], &all);
            let ks = keys(4000, seed);
            let before = owners(&ring(old), old, &ks);
            let after = owners(&ring(new), new, &ks);
            let newcomer = &new[new.len() - 1];
            let moved = before.iter().zip(&after).filter(|(b, a)| b != a).count();
            for (b, a) in before.iter().zip(&after) {
                prop_assert!(b == a || *a == newcomer.0, "a key moved from {} to {}", b, a);
            }
            let total: u32 = new.iter().map(|(_, w)| w).sum();
            let share = f64::from(newcomer.1) / f64::from(total);
            let want = share * ks.len() as f64;
            prop_assert!(
                (moved as f64) > want * 0.5 && (moved as f64) < want * 1.6,
                "moved {} of {}, expected about {}", moved, ks.len(), want
            );
        }

        #[test]
        fn removing_a_backend_moves_only_its_keys_and_order_does_not_matter(
            ids in prop::collection::hash_set(0u16..5000, 2..20),
            weights in prop::collection::vec(1u32..4, 20),
            gone in any::<prop::sample::Index>(),
            seed in any::<u64>(),
        ) {
            let ids: Vec<u16> = ids.into_iter().collect();
            let all = addrs(&ids, &weights);
            let gone = gone.index(all.len());
            let mut rest = all.clone();
            let removed = rest.remove(gone);
            let ks = keys(2000, seed);
            let before = owners(&ring(&all), &all, &ks);
            let after = owners(&ring(&rest), &rest, &ks);
            for (b, a) in before.iter().zip(&after) {
                prop_assert!(b == a || *b == removed.0, "a key of {} moved to {}", b, a);
            }
            // The same backends listed in another order map every key the same.
            let mut reversed = all.clone();
            reversed.reverse();
            prop_assert_eq!(owners(&ring(&reversed), &reversed, &ks), before);
        }
    }
}
