//! `pick()` of every compiled-in balancing algorithm at 3, 100 and 10 000 backends, all
//! eligible, built through the registry exactly as the gateway builds them.
//!
//! Two states of the pool:
//!
//! - `pick_idle`: fresh load records (nothing in flight, no response time, no report),
//!   weight 1 each: the first pick after start, or a lightly loaded upstream;
//! - `pick_loaded`: weights 1 to 4, 1 to 32 requests in flight per backend, a response
//!   time and a resource report for each: what a busy upstream looks like. The load-aware
//!   algorithms cannot stop at an idle backend here, so this is their steady-state cost.
//!
//! Each iteration builds the `Pick` with a varying hash key and client address (so the hash
//! algorithms do not hit one cached position) and an eligibility closure reading a flag per
//! backend, as the gateway's does.
//!
//! Run: `cargo bench -p switchyard-benches --bench balancers -- --warm-up-time 1 --measurement-time 2`

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion};
use switchyard_balancers::{register_all, ALGORITHMS};
use switchyard_plugin::serde_json;
use switchyard_plugin::{Backend, Balancer, Pick, Registry};

const SIZES: [usize; 3] = [3, 100, 10_000];

fn mix(mut x: u64) -> u64 {
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    x
}

fn pool(n: usize, loaded: bool) -> Vec<Backend> {
    let now = Instant::now();
    (0..n)
        .map(|i| {
            let weight = if loaded { 1 + (i % 4) as u32 } else { 1 };
            let b = Backend::new(
                format!("10.{}.{}.{}:8080", i >> 16, (i >> 8) & 255, i & 255),
                weight,
            );
            if loaded {
                let r = mix(i as u64);
                (0..1 + r % 32).for_each(|_| b.load.start());
                b.load
                    .observe_at(Duration::from_micros(500 + (r >> 8) % 20_000), now);
                let cpu = ((r >> 16) % 100) as f64 / 100.0;
                let memory = ((r >> 24) % 100) as f64 / 100.0;
                b.load.set_resource(cpu, memory, now);
            }
            b
        })
        .collect()
}

fn bench_group(c: &mut Criterion, group_name: &str, loaded: bool) {
    let mut registry = Registry::new();
    register_all(&mut registry);
    let mut group = c.benchmark_group(group_name);
    for &n in &SIZES {
        let backends = pool(n, loaded);
        let healthy = vec![true; n];
        let eligible = |i: usize| healthy[i];
        for name in ALGORITHMS {
            let balancer: Box<dyn Balancer> = registry
                .balancer(name)
                .expect("registered")
                .build(&backends, &serde_json::Value::Null)
                .expect("builds");
            let mut counter = 0u64;
            group.bench_with_input(BenchmarkId::new(name, n), &n, |b, &n| {
                b.iter(|| {
                    counter = counter.wrapping_add(1);
                    let key = mix(counter).to_le_bytes();
                    let ip = IpAddr::V4(Ipv4Addr::from(counter as u32));
                    let pick = Pick::new(n, &eligible)
                        .with_key(Some(&key))
                        .with_client_ip(Some(ip));
                    black_box(balancer.pick(black_box(&pick)))
                })
            });
        }
    }
    group.finish();
}

fn picks(c: &mut Criterion) {
    bench_group(c, "pick_idle", false);
    bench_group(c, "pick_loaded", true);
}

// What `criterion_group!`/`criterion_main!` expand to, written out so that every item has
// its documentation (the workspace warns on missing docs).
fn main() {
    let mut c = Criterion::default().configure_from_args();
    picks(&mut c);
    c.final_summary();
}
