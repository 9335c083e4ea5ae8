//! `ip-hash`: the same client address (or hash key) always goes to the same backend.
//!
//! The key is [`Pick::key`] when the upstream has a `hash_key`, otherwise the client
//! address (an IPv4-mapped IPv6 address counts as its IPv4 form). Its 64-bit hash (fixed,
//! seedless: every gateway of a fleet agrees) draws from a Vose alias table over the
//! configured weights, so keys spread in proportion to weight in O(1): one hash, one table
//! read, no allocation. While the backend set is unchanged a key always maps to the same
//! backend.
//!
//! When that backend is not eligible the key is rehashed, a fixed sequence per key, up to
//! [`MAX_REHASH`] times (as nginx's `ip_hash` retries 20 times), so its requests move to
//! one other backend and come back when it recovers; a walk from the hash's position
//! finds an eligible backend if all those are down. A request with neither key nor
//! client address goes to the backends in turn.
//!
//! Adding or removing a backend rebuilds the table and moves many keys, as with nginx's
//! `ip_hash`; use `consistent-hash` where that matters.

use std::sync::atomic::{AtomicUsize, Ordering};

use switchyard_plugin::{Backend, Balancer, BuildError, Pick};

use crate::alias::AliasTable;
use crate::hash;
use crate::options::{self, Uses};

/// The most rehashes before the walk.
pub const MAX_REHASH: usize = 20;

/// Hash of the client address or key onto the weighted backends.
#[derive(Debug)]
pub struct IpHash {
    table: AliasTable,
    cursor: AtomicUsize,
}

impl IpHash {
    /// A balancer over these backends' weights.
    pub fn new(backends: &[Backend]) -> Self {
        let weights: Vec<u32> = backends.iter().map(|b| b.weight).collect();
        Self {
            table: AliasTable::new(&weights),
            cursor: AtomicUsize::new(0),
        }
    }
}

impl Balancer for IpHash {
    fn pick(&self, pick: &Pick<'_>) -> Option<usize> {
        let n = self.table.len();
        if n == 0 {
            return None;
        }
        let Some(mut h) = hash::request(pick) else {
            let start = self.cursor.fetch_add(1, Ordering::Relaxed) % n;
            return (start..n).chain(0..start).find(|&i| pick.eligible(i));
        };
        for _ in 0..=MAX_REHASH {
            let i = self.table.draw(h);
            if pick.eligible(i) {
                return Some(i);
            }
            h = hash::rehash(h);
        }
        let start = crate::rng::scale(h, n);
        (start..n).chain(0..start).find(|&i| pick.eligible(i))
    }
}

/// The registry factory for `ip-hash` (accepts `hash_key`).
pub fn factory(
    backends: &[Backend],
    options: &serde_json::Value,
) -> Result<Box<dyn Balancer>, BuildError> {
    options::check(options, "ip-hash", Uses::HashKey)?;
    Ok(Box::new(IpHash::new(backends)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{backends, chi_square_ok};
    use proptest::prelude::*;
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

    fn pick_ip(b: &IpHash, n: usize, ip: IpAddr, eligible: &dyn Fn(usize) -> bool) -> usize {
        b.pick(&Pick::new(n, eligible).with_client_ip(Some(ip)))
            .unwrap()
    }

    #[test]
    fn key_overrides_address() {
        let bs = backends(&[1; 16]);
        let b = IpHash::new(&bs);
        let all = |_: usize| true;
        let ip = IpAddr::V4(Ipv4Addr::new(198, 51, 100, 1));
        let by_key: Vec<usize> = (0..64u32)
            .map(|k| {
                let key = k.to_le_bytes();
                b.pick(
                    &Pick::new(16, &all)
                        .with_client_ip(Some(ip))
                        .with_key(Some(&key)),
                )
                .unwrap()
            })
            .collect();
        // Different keys from one address spread over several backends.
        let distinct: std::collections::HashSet<_> = by_key.iter().collect();
        assert!(distinct.len() > 8, "{by_key:?}");
    }

    #[test]
    fn no_key_no_address_takes_turns() {
        let bs = backends(&[1, 1, 1]);
        let b = IpHash::new(&bs);
        let all = |_: usize| true;
        let picks: Vec<_> = (0..3)
            .map(|_| b.pick(&Pick::new(3, &all)).unwrap())
            .collect();
        assert_eq!(picks, [0, 1, 2]);
    }

    #[test]
    fn weights_spread_addresses() {
        let bs = backends(&[1, 2, 5]);
        let b = IpHash::new(&bs);
        let all = |_: usize| true;
        let mut counts = [0u64; 3];
        for i in 0..40_000u32 {
            let ip = IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i));
            counts[pick_ip(&b, 3, ip, &all)] += 1;
        }
        assert!(chi_square_ok(&counts, &[1.0, 2.0, 5.0]), "{counts:?}");
    }

    proptest! {
        #[test]
        fn stable_per_address_and_moves_only_when_its_backend_is_down(
            weights in prop::collection::vec(1u32..5, 2..10),
            addrs in prop::collection::vec(any::<u32>(), 1..50),
            v6 in any::<u128>(),
            down in any::<prop::sample::Index>(),
        ) {
            let bs = backends(&weights);
            let n = bs.len();
            let b = IpHash::new(&bs);
            let rebuilt = IpHash::new(&bs);
            let all = |_: usize| true;
            let down = down.index(n);
            let not_down = move |i: usize| i != down;
            let mut ips: Vec<IpAddr> = addrs.iter().map(|&a| IpAddr::V4(Ipv4Addr::from(a))).collect();
            ips.push(IpAddr::V6(Ipv6Addr::from(v6)));
            for ip in ips {
                let first = pick_ip(&b, n, ip, &all);
                // Stable across picks and across a rebuild with the same backends.
                prop_assert_eq!(pick_ip(&b, n, ip, &all), first);
                prop_assert_eq!(pick_ip(&rebuilt, n, ip, &all), first);
                let moved = pick_ip(&b, n, ip, &not_down);
                prop_assert_ne!(moved, down);
                if first != down {
                    prop_assert_eq!(moved, first);
                } else {
                    // Its substitute is stable too.
                    prop_assert_eq!(pick_ip(&b, n, ip, &not_down), moved);
                }
            }
        }
    }
}
