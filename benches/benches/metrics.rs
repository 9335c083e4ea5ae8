#![allow(missing_docs)] // criterion's macros generate undocumented items
//! The cost of the metrics a request updates (criterion): one `switchyard_requests_total`
//! increment and one `switchyard_request_duration_seconds` observation, as in the proxy's
//! logging phase, with label values taken from the configuration: looked up by label each
//! time, and through the per-route cache the request path uses.

use std::time::Duration;

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use switchyard_gateway::metrics::{Metrics, RouteMetrics};

fn bench(c: &mut Criterion) {
    let metrics = Metrics::new();
    let routes: Vec<String> = (0..100).map(|i| format!("route-{i}")).collect();
    let mut i = 0usize;
    c.bench_function("metrics/request (100 routes)", |b| {
        b.iter(|| {
            i = (i + 1) % routes.len();
            metrics.request(
                black_box(&routes[i]),
                black_box("users"),
                black_box("127.0.0.1:9001"),
                black_box(200),
                Duration::from_micros(250),
            );
        })
    });
}

fn bench_cached(c: &mut Criterion) {
    let metrics = Metrics::new();
    let routes: Vec<(String, RouteMetrics)> = (0..100)
        .map(|i| (format!("route-{i}"), RouteMetrics::default()))
        .collect();
    let mut i = 0usize;
    c.bench_function(
        "metrics/route_request, cached per route (100 routes)",
        |b| {
            b.iter(|| {
                i = (i + 1) % routes.len();
                let (name, cache) = &routes[i];
                metrics.route_request(
                    cache,
                    black_box(name),
                    black_box("users"),
                    Some(0),
                    black_box("127.0.0.1:9001"),
                    black_box(200),
                    Duration::from_micros(250),
                );
            })
        },
    );
}

criterion_group!(benches, bench, bench_cached);
criterion_main!(benches);
