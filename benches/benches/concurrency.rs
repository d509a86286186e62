//! The cost of an in-flight cap beside a rate check: through the layer
//! (rate only, cap only, both) over a bare service, and the memory store's
//! check alone (`MemoryStore::check`). The in-flight limiter is the crate's
//! own engine: its cost alone is the "cap only" row minus the bare service.
//!
//! Run with `cargo bench -p tower-ratelimit-benches --bench concurrency`. Every
//! request is admitted: windows and caps are far above what a benchmark can
//! send, and each response (and with it its slot) is dropped before the next
//! request, so a cap is never full. Futures are polled in place: no runtime, no
//! TCP.

mod support;

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use support::{api_keys, bare, bucket, config, request, send, Cycle, HUGE, MANY, T0};
use tower::Layer;
use tower_ratelimit::key::Header;
use tower_ratelimit::store::protocol::{Check, Decided};
use tower_ratelimit::store::{MemoryStore, Store};
use tower_ratelimit::{Limit, Policy, Quota, RateLimitLayer, Window};

/// One limit per API key, on every route, with `quota`.
fn layer(quota: Quota) -> RateLimitLayer {
    let policy = Policy::builder()
        .limit(Limit::new("per_key", Header::parse("X-API-Key").unwrap()).quota(quota))
        .build()
        .unwrap();
    RateLimitLayer::new(policy).current_decision(false)
}

/// The three layers measured: a window alone, a cap alone (refuse mode),
/// and both in one quota.
fn quotas() -> [(&'static str, Quota); 3] {
    [
        ("rate_only", Quota::new(Window::per_minute(HUGE))),
        ("in_flight_only", Quota::in_flight(HUGE)),
        (
            "rate_and_in_flight",
            Quota::new(Window::per_minute(HUGE)).max_in_flight(HUGE),
        ),
    ]
}

fn through_the_layer(c: &mut Criterion) {
    let mut group = c.benchmark_group("layer");
    group.throughput(Throughput::Elements(1));
    for (label, n) in [("1key", 1), ("10k_keys", MANY)] {
        let keys = api_keys(n, 0);

        let mut svc = bare();
        let mut cycle = Cycle::new(keys.clone());
        group.bench_function(format!("bare/{label}"), |b| {
            b.iter(|| black_box(send(&mut svc, request(cycle.next()))))
        });

        for (name, quota) in quotas() {
            let layer = layer(quota);
            let mut svc = layer.layer(bare());
            let mut cycle = Cycle::new(keys.clone());
            let response = send(&mut svc, request(cycle.next()));
            assert!(response.headers().contains_key("x-ratelimit-remaining"));
            drop(response);
            group.bench_function(format!("{name}/{label}"), |b| {
                b.iter(|| black_box(send(&mut svc, request(cycle.next()))))
            });
            assert_eq!(layer.keys_in_flight(), 0, "a slot leaked");
        }
    }
    group.finish();
}

fn store_alone(c: &mut Criterion) {
    let mut group = c.benchmark_group("alone");
    group.throughput(Throughput::Elements(1));
    for (label, n) in [("1key", 1), ("10k_keys", MANY as u64)] {
        let keys: Vec<u64> = (0..n).map(bucket).collect();

        // A fixed `now`: with this limit, no run comes near refusing.
        let store = MemoryStore::new();
        let quota = Quota::new(Window::per_minute(HUGE));
        let mut cycle = Cycle::new(keys.clone());
        group.bench_function(format!("memory_store_check/{label}"), |b| {
            b.iter(|| {
                let check = [Check::new(cycle.next(), &quota)];
                match store.check(T0, &check) {
                    Decided::Ready(Ok(outcome)) => black_box(outcome.admitted()),
                    other => panic!("the memory store answered {other:?}"),
                }
            })
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = config();
    targets = through_the_layer, store_alone
}
criterion_main!(benches);
