//! Backend tiers (`priority` on a backend): failover inside one upstream, with Envoy's
//! priority-load computation.
//!
//! Each tier's health is the share of its backends that may take traffic (healthy, not
//! draining, not ejected; a backend in its slow-start ramp counts for its ramp fraction),
//! times the overprovisioning factor 1.4, capped at 100 %. Tier 0 takes as much of the
//! traffic as its health; what is left goes to tier 1 up to its health, and so on. When the
//! healths add up to less than 100 % the loads are scaled up so they add up to 100 %
//! (Envoy's normalised total health). Every pick draws a tier by these loads and the
//! balancer then picks within it ([`crate::upstream::UpstreamRuntime::pick`]), so every
//! algorithm, and L4 streams, honour tiers unchanged. An upstream whose backends all
//! share one priority has no tiers and pays nothing.

use crate::upstream::BackendRuntime;

/// The most distinct priorities one upstream may use.
pub const MAX_TIERS: usize = 16;

/// The overprovisioning factor, in tenths (Envoy's default 1.4).
const OVERPROVISION_TENTHS: u64 = 14;

/// An upstream's tiers.
#[derive(Debug, Clone)]
pub struct Tiers {
    /// Tier index (0 = lowest priority value) of each backend.
    tier: Vec<u8>,
    /// Backends per tier.
    size: Vec<u32>,
    /// The priority value of each tier.
    priorities: Vec<u32>,
}

impl Tiers {
    /// The tiers of `backends`; `None` when they share one priority (or use more than
    /// [`MAX_TIERS`], which validation refuses).
    pub fn of(backends: &[BackendRuntime]) -> Option<Self> {
        let mut priorities: Vec<u32> = backends.iter().map(|b| b.priority).collect();
        priorities.sort_unstable();
        priorities.dedup();
        if priorities.len() < 2 || priorities.len() > MAX_TIERS {
            return None;
        }
        let tier: Vec<u8> = backends
            .iter()
            .map(|b| {
                priorities
                    .binary_search(&b.priority)
                    .map_or(0, |t| u8::try_from(t).unwrap_or(0))
            })
            .collect();
        let mut size = vec![0u32; priorities.len()];
        for &t in &tier {
            size[usize::from(t)] += 1;
        }
        Some(Self {
            tier,
            size,
            priorities,
        })
    }

    /// The tier of backend `i`.
    #[inline]
    pub fn tier_of(&self, i: usize) -> usize {
        self.tier.get(i).map_or(0, |&t| usize::from(t))
    }

    /// The priority value of tier `t`.
    pub fn priority(&self, t: usize) -> u32 {
        self.priorities.get(t).copied().unwrap_or(0)
    }

    /// Each tier's health, per mille, from the backends' state now.
    pub fn health(&self, backends: &[BackendRuntime]) -> ([u32; MAX_TIERS], usize) {
        let mut avail = [0u64; MAX_TIERS];
        for (i, b) in backends.iter().enumerate() {
            if b.state.eligible() {
                avail[self.tier_of(i)] += u64::from(b.plugin.load.weight_permille().min(1000));
            }
        }
        let mut health = [0u32; MAX_TIERS];
        for (t, &n) in self.size.iter().enumerate() {
            // avail is in thousandths of a backend: health = min(1000, 1.4 * avail / n).
            let h = avail[t] * OVERPROVISION_TENTHS / (10 * u64::from(n.max(1)));
            health[t] = u32::try_from(h.min(1000)).unwrap_or(1000);
        }
        (health, self.size.len())
    }

    /// Draw the tier of one pick; `None` when no tier has any health (the caller picks over
    /// every backend, which then finds none eligible, or panics over ejections).
    pub fn choose(&self, backends: &[BackendRuntime]) -> Option<usize> {
        let (health, n) = self.health(backends);
        let loads = priority_loads(&health[..n]);
        if loads.iter().all(|&l| l == 0) {
            return None;
        }
        if let Some(t) = loads[..n].iter().position(|&l| l == 1000) {
            return Some(t);
        }
        let mut r = rand::random_range(0..1000u32);
        for (t, &l) in loads[..n].iter().enumerate() {
            if r < l {
                return Some(t);
            }
            r -= l;
        }
        loads[..n].iter().position(|&l| l > 0)
    }
}

/// Envoy's priority load: given each tier's health (per mille, at most 1000), the share of
/// traffic (per mille) each tier takes. The shares add up to 1000, or are all 0 when every
/// health is 0.
pub fn priority_loads(health: &[u32]) -> [u32; MAX_TIERS] {
    let mut loads = [0u32; MAX_TIERS];
    let health = &health[..health.len().min(MAX_TIERS)];
    let total: u32 = health.iter().map(|&h| h.min(1000)).sum::<u32>().min(1000);
    if total == 0 {
        return loads;
    }
    let mut remaining = 1000u32;
    for (t, &h) in health.iter().enumerate() {
        let share = (u64::from(h.min(1000)) * 1000 / u64::from(total)) as u32;
        loads[t] = share.min(remaining);
        remaining -= loads[t];
    }
    if remaining > 0 {
        // Rounding: to the first tier with health.
        if let Some(t) = health.iter().position(|&h| h > 0) {
            loads[t] += remaining;
        }
    }
    loads
}

#[cfg(test)]
mod tests {
    use super::*;

    fn loads(h: &[u32]) -> Vec<u32> {
        priority_loads(h)[..h.len()].to_vec()
    }

    #[test]
    fn envoy_priority_loads() {
        // A healthy first tier takes everything.
        assert_eq!(loads(&[1000, 1000]), [1000, 0]);
        // Health above 1/1.4 still counts as whole: 8 of 10 healthy -> 1.12 -> 100 %.
        assert_eq!(loads(&[1000, 1000]), loads(&[1000, 700]));
        // 5 of 10 healthy: 0.5 * 1.4 = 70 %, the rest spills to tier 1.
        assert_eq!(loads(&[700, 1000]), [700, 300]);
        // Down the chain: 20 %, then 30 %, then the rest.
        assert_eq!(loads(&[200, 300, 1000]), [200, 300, 500]);
        // Not enough health anywhere: scaled up to 100 % (normalised total health).
        assert_eq!(loads(&[200, 300]), [400, 600]);
        assert_eq!(loads(&[0, 140]), [0, 1000]);
        // Nothing healthy at all.
        assert_eq!(loads(&[0, 0]), [0, 0]);
        // Shares always add up to 1000.
        for a in (0..=1000).step_by(37) {
            for b in (0..=1000).step_by(53) {
                let l = loads(&[a, b, 333]);
                assert_eq!(l.iter().sum::<u32>(), 1000, "{a} {b}: {l:?}");
            }
        }
    }

    fn upstream(algorithm: &str) -> std::sync::Arc<crate::upstream::UpstreamRuntime> {
        let text = format!(
            "[admin]\naddr = \"127.0.0.1:1\"\n[[listener]]\nname = \"http\"\naddr = \"127.0.0.1:2\"\n\
             [[route]]\nname = \"r\"\npath_prefix = \"/\"\nupstream = \"u\"\n\
             [[upstream]]\nname = \"u\"\nalgorithm = \"{algorithm}\"\nslow_start = \"100s\"\nbackends = [\
             {{ addr = \"127.0.0.1:7001\" }}, {{ addr = \"127.0.0.1:7002\" }},\
             {{ addr = \"127.0.0.1:7003\", priority = 1 }}, {{ addr = \"127.0.0.1:7004\", priority = 1 }}]\n"
        );
        let registry = crate::server::default_registry();
        let config = crate::config::Config::parse("t.toml", &text, &registry).unwrap();
        let live = crate::upstream::BackendRegistry::default();
        crate::upstream::build_all(&config, &registry, &live)
            .unwrap()
            .remove(0)
    }

    fn tier1_share(u: &crate::upstream::UpstreamRuntime, n: usize) -> f64 {
        let hits = (0..n)
            .filter(|_| u.pick(None, None, None).is_some_and(|i| i >= 2))
            .count();
        hits as f64 / n as f64
    }

    #[test]
    fn every_algorithm_honours_tiers() {
        use std::sync::atomic::Ordering;
        for algorithm in [
            "round-robin",
            "least-connections",
            "random",
            "ip-hash",
            "power-of-two-choices",
        ] {
            let u = upstream(algorithm);
            assert_eq!(tier1_share(&u, 2000), 0.0, "{algorithm}: tier 0 takes all");
            // Half of tier 0 down: 0.5 * 1.4 = 70 % stays, 30 % spills over.
            u.backends[0].state.healthy.store(false, Ordering::Relaxed);
            let share = tier1_share(&u, 4000);
            assert!((0.25..0.35).contains(&share), "{algorithm}: {share}");
            // Tier 0 drained or down entirely: tier 1 takes everything.
            u.set_draining(1, true);
            assert_eq!(tier1_share(&u, 500), 1.0, "{algorithm}");
            // Back, in a slow-start ramp (1/10 of a backend of two: 7 %), then whole.
            u.set_draining(1, false);
            let share = tier1_share(&u, 4000);
            assert!((0.88..0.97).contains(&share), "{algorithm}: ramp {share}");
            u.maintain(std::time::Instant::now() + std::time::Duration::from_secs(200));
            u.backends[0].state.healthy.store(true, Ordering::Relaxed);
            assert_eq!(tier1_share(&u, 500), 0.0, "{algorithm}: recovered");
            // Nothing healthy anywhere: no pick (503).
            for b in &u.backends {
                b.state.healthy.store(false, Ordering::Relaxed);
            }
            assert_eq!(u.pick(None, None, None), None);
        }
    }

    #[test]
    fn a_retry_leaves_the_tier_rather_than_repeat_the_failed_backend() {
        use std::sync::atomic::Ordering;
        let u = upstream("round-robin");
        u.backends[1].state.healthy.store(false, Ordering::Relaxed);
        // Backend 0 is tier 0's only one (health 70 %); a retry avoiding it goes to tier 1.
        for _ in 0..50 {
            assert!(u.pick(None, None, Some(0)).is_some_and(|i| i >= 2));
        }
        let t = Tiers::of(&u.backends).unwrap();
        assert_eq!((t.priority(0), t.priority(1)), (0, 1));
        assert_eq!(t.health(&u.backends).0[..2], [700, 1000]);
    }
}
