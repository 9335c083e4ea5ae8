//! `least-response-time`: peak EWMA, as Finagle and linkerd balance.
//!
//! The cost of sending one more request to a backend is its peak-EWMA response time times
//! `in_flight + 1`, divided by its effective weight (a heavier backend, or one at full
//! weight rather than in slow start, takes proportionally more):
//!
//! - the peak EWMA ([`BackendLoad::peak_ewma_at`]) jumps to a slower sample at once and
//!   eases down on faster ones, so a backend that slows down is avoided immediately;
//! - read at pick time, it decays toward zero by `exp(-dt / PEAK_EWMA_DECAY)` over the
//!   time `dt` since the backend's last response, so a backend that was slow and therefore
//!   got no traffic becomes cheap again and is probed: if it recovered, its fast answers
//!   bring it back; if not, the slow answer pushes it away again;
//! - a backend with no response yet is probed first while nothing is in flight to it
//!   (cost 0), and otherwise counted at [`UNMEASURED_RTT`] per request, so a new backend is
//!   tried without all traffic herding onto it before its first answer.
//!
//! Data structure: the backends' shared [`BackendLoad`] records (the gateway feeds their
//! in-flight counts and response times) and weights in an array, one rotating cursor, and
//! one clock reading per pick ([`PickTime`]). Costs are compared as logarithms
//! ([`PickTime::peak_ewma_log_cost`]): the gateway's update of a backend's peak EWMA also
//! stores `ln(peak) + t_last / PEAK_EWMA_DECAY`, so at pick time the decay is a
//! subtraction and the whole cost a few additions, with no exponential or division per
//! backend. A pick is the bounded scan of [`crate::scan`]: exact up to [`SCAN_LIMIT`]
//! eligible backends, the cheapest of a sliding window of that many above, stopping at once
//! at an unmeasured idle backend; ties go in turn.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use switchyard_plugin::{Backend, BackendLoad, Balancer, BuildError, Pick, PickTime};

use crate::options::{self, Uses};
use crate::scan::{self, SCAN_LIMIT};

#[cfg(doc)]
use switchyard_plugin::PEAK_EWMA_DECAY;

/// The response time assumed for a backend that has requests in flight but no answer yet
/// (linkerd's default).
pub const UNMEASURED_RTT: Duration = Duration::from_millis(30);

/// `ln(UNMEASURED_RTT in ns)`: `ln(30 000 000)`.
const LN_UNMEASURED_RTT_NS: f64 = 17.216_707_939_626_43;

/// What the balancer keeps per backend: 16 bytes, in one array.
#[derive(Debug)]
struct Slot {
    load: Arc<BackendLoad>,
    /// `ln(configured weight)`.
    ln_weight: f64,
}

/// Peak-EWMA least response time.
#[derive(Debug)]
pub struct LeastResponseTime {
    slots: Box<[Slot]>,
    cursor: AtomicUsize,
}

impl LeastResponseTime {
    /// A balancer over these backends' load records.
    pub fn new(backends: &[Backend]) -> Self {
        Self {
            slots: backends
                .iter()
                .map(|b| Slot {
                    load: Arc::clone(&b.load),
                    ln_weight: f64::from(b.weight.max(1)).ln(),
                })
                .collect(),
            cursor: AtomicUsize::new(0),
        }
    }

    /// The logarithm of backend `i`'s cost at `now` (lower is better); minus infinity for
    /// an unmeasured backend with nothing in flight.
    #[inline]
    fn log_cost(&self, i: usize, now: &PickTime) -> f64 {
        let slot = &self.slots[i];
        let load = &slot.load;
        let permille = load.weight_permille();
        let ln_weight = if permille >= 1000 {
            slot.ln_weight
        } else {
            slot.ln_weight + (f64::from(permille) / 1000.0).ln()
        };
        match now.peak_ewma_log_cost(load) {
            Some(log_cost) => log_cost - ln_weight,
            None => match load.in_flight() {
                0 => f64::NEG_INFINITY,
                n => LN_UNMEASURED_RTT_NS + (f64::from(n) + 1.0).ln() - ln_weight,
            },
        }
    }

    /// [`Balancer::pick`] as of `now` (tests replay time with it).
    pub fn pick_at(&self, pick: &Pick<'_>, now: PickTime) -> Option<usize> {
        let n = self.slots.len();
        if n == 0 {
            return None;
        }
        let start = self.cursor.fetch_add(1, Ordering::Relaxed) % n;
        scan::least(
            n,
            start,
            SCAN_LIMIT,
            pick,
            |i| self.log_cost(i, &now),
            |&c| c == f64::NEG_INFINITY,
        )
    }
}

impl Balancer for LeastResponseTime {
    fn pick(&self, pick: &Pick<'_>) -> Option<usize> {
        if self.slots.is_empty() {
            return None;
        }
        self.pick_at(pick, PickTime::now())
    }
}

/// The registry factory for `least-response-time`.
pub fn factory(
    backends: &[Backend],
    options: &serde_json::Value,
) -> Result<Box<dyn Balancer>, BuildError> {
    options::check(options, "least-response-time", Uses::Nothing)?;
    Ok(Box::new(LeastResponseTime::new(backends)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::backends;
    use std::time::Instant;
    use switchyard_plugin::PEAK_EWMA_DECAY;

    fn ms(v: u64) -> Duration {
        Duration::from_millis(v)
    }

    #[test]
    fn prefers_the_faster_backend() {
        let bs = backends(&[1, 1, 1]);
        let b = LeastResponseTime::new(&bs);
        let t0 = Instant::now();
        for (x, rtt) in bs.iter().zip([50, 5, 20]) {
            x.load.observe_at(ms(rtt), t0);
        }
        let all = |_: usize| true;
        let now = PickTime::at(t0 + ms(10));
        for _ in 0..5 {
            assert_eq!(b.pick_at(&Pick::new(3, &all), now), Some(1));
        }
        // In-flight requests count: 5 ms × 5 > 20 ms × 1.
        (0..4).for_each(|_| bs[1].load.start());
        assert_eq!(b.pick_at(&Pick::new(3, &all), now), Some(2));
        // Not eligible: never picked.
        let not_two = |i: usize| i != 2;
        assert_eq!(b.pick_at(&Pick::new(3, &not_two), now), Some(1));
    }

    #[test]
    fn a_slow_backend_is_avoided_then_probed_again_after_decay() {
        let bs = backends(&[1, 1]);
        let b = LeastResponseTime::new(&bs);
        let all = |_: usize| true;
        let t0 = Instant::now();
        bs[0].load.observe_at(ms(2), t0);
        bs[1].load.observe_at(ms(500), t0);
        // The fast backend keeps answering in 2 ms; the slow one hears nothing.
        let mut t = t0;
        let mut probed_at = None;
        for step in 1..=600u64 {
            t = t0 + Duration::from_millis(step * 100);
            let i = b.pick_at(&Pick::new(2, &all), PickTime::at(t)).unwrap();
            if i == 1 {
                probed_at = Some(t - t0);
                break;
            }
            bs[0].load.observe_at(ms(2), t);
        }
        // 500 ms decays below 2 ms after ln(250) ≈ 5.5 decay constants.
        let probed_at = probed_at.expect("the slow backend is probed again");
        assert!(probed_at > PEAK_EWMA_DECAY * 5, "{probed_at:?}");
        assert!(probed_at < PEAK_EWMA_DECAY * 6, "{probed_at:?}");
        // It recovered: its fast answer brings it back into rotation.
        bs[1].load.observe_at(ms(2), t);
        let later = PickTime::at(t + ms(100));
        bs[0].load.start();
        assert_eq!(b.pick_at(&Pick::new(2, &all), later), Some(1));
    }

    #[test]
    fn unmeasured_backends_are_probed_without_herding() {
        let bs = backends(&[1, 1]);
        let b = LeastResponseTime::new(&bs);
        let all = |_: usize| true;
        let t0 = Instant::now();
        bs[0].load.observe_at(ms(5), t0);
        let now = PickTime::at(t0);
        assert_eq!(b.pick_at(&Pick::new(2, &all), now), Some(1));
        bs[1].load.start();
        // One probe in flight: 30 ms × 2 > 5 ms.
        for _ in 0..3 {
            assert_eq!(b.pick_at(&Pick::new(2, &all), now), Some(0));
        }
    }

    #[test]
    fn idle_unmeasured_backends_take_turns() {
        let bs = backends(&[1, 1, 1]);
        let b = LeastResponseTime::new(&bs);
        let all = |_: usize| true;
        let picks: Vec<_> = (0..6)
            .map(|_| b.pick(&Pick::new(3, &all)).unwrap())
            .collect();
        assert_eq!(picks, [0, 1, 2, 0, 1, 2]);
    }
}
