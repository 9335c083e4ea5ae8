#![allow(missing_docs)] // criterion's macros generate undocumented items
//! Route lookup at 10, 1 000 and 10 000 routes (criterion).
//!
//! The table mixes host routes (100 hosts), wildcard hosts, path prefixes, exact paths and
//! a few regex routes, as a large edge configuration would. Each lookup is for a request
//! that matches a route near the end of the file, the worst case for a linear scan.

use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion};
use http::{HeaderMap, Method};
use switchyard_gateway::config::Config;
use switchyard_gateway::router::{RequestFacts, RouteTable};
use switchyard_gateway::server::default_registry;

fn table(n: usize) -> RouteTable {
    let mut text = String::from(
        "[[listener]]\nname = \"http\"\naddr = \"127.0.0.1:8080\"\n[[upstream]]\nname = \"u\"\nbackends = [ { addr = \"127.0.0.1:9001\" } ]\n",
    );
    for i in 0..n {
        let route = match i % 10 {
            0 => format!("path_regex = \"^/r{i}/[0-9]+$\"\n"),
            1 => format!(
                "host = \"*.w{}.example.com\"\npath_prefix = \"/w{i}\"\n",
                i % 50
            ),
            2 => format!("path = \"/exact/{i}\"\n"),
            _ => format!(
                "host = \"h{}.example.com\"\npath_prefix = \"/api/v{i}/items\"\n",
                i % 100
            ),
        };
        text.push_str(&format!(
            "[[route]]\nname = \"r{i}\"\n{route}upstream = \"u\"\n"
        ));
    }
    let config = Config::parse("bench.toml", &text, &default_registry()).expect("valid");
    RouteTable::build(&config)
}

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("route_lookup");
    let headers = HeaderMap::new();
    let method = Method::GET;
    for n in [10usize, 1_000, 10_000] {
        let t = table(n);
        // The last host/prefix route in the file.
        let last = (0..n).rev().find(|i| i % 10 >= 3).expect("a prefix route");
        let host = format!("h{}.example.com", last % 100);
        let path = format!("/api/v{last}/items/42");
        let facts = RequestFacts {
            listener: 0,
            host: Some(&host),
            path: &path,
            query: Some("a=1"),
            method: &method,
            headers: &headers,
        };
        assert_eq!(t.lookup(&facts).map(|(i, _)| i), Some(last));
        group.bench_with_input(BenchmarkId::new("hit", n), &facts, |b, f| {
            b.iter(|| t.lookup(black_box(f)))
        });
        let miss_path = "/nothing/here/at/all";
        let miss = RequestFacts {
            path: miss_path,
            ..facts
        };
        group.bench_with_input(BenchmarkId::new("miss", n), &miss, |b, f| {
            b.iter(|| t.lookup(black_box(f)))
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
