//! Switchyard's compiled-in load-balancing algorithms, one module each.
//!
//! [`register_all`] adds every algorithm to a [`Registry`] under the names the
//! configuration uses.

use switchyard_plugin::Registry;

pub mod round_robin;
pub mod weighted_round_robin;

pub use round_robin::RoundRobin;
pub use weighted_round_robin::SmoothWeightedRoundRobin;

/// Register every compiled-in algorithm under its configuration name.
pub fn register_all(registry: &mut Registry) {
    registry.register_balancer("round-robin", round_robin::factory);
    registry.register_balancer("weighted-round-robin", weighted_round_robin::factory);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registers_the_foundation_algorithms() {
        let mut r = Registry::new();
        register_all(&mut r);
        let names: Vec<_> = r.balancer_names().collect();
        assert!(names.contains(&"round-robin"));
        assert!(names.contains(&"weighted-round-robin"));
    }
}
