//! Per-request overhead of the layer over a bare service, compared with
//! `tower_governor` (headers on) and `governor`'s keyed `check_key`, and how
//! throughput scales from one thread to two on disjoint keys.
//!
//! Run with `cargo bench -p tower-ratelimit-benches --bench overhead`. Every
//! request is admitted (the limits are far above what a benchmark can send),
//! responses carry rate-limit headers, and futures are polled in place: no
//! runtime, no TCP.

mod support;

use std::hint::black_box;
use std::num::NonZeroU32;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use axum::body::Body;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use governor::{DefaultKeyedRateLimiter, Quota as GovernorQuota, RateLimiter};
use http::{HeaderName, HeaderValue, Request, Response};
use std::convert::Infallible;
use support::{
    api_keys, bare, config, control, governor_layer, layer, policy, request, send, Cycle, MANY,
};
use tower::{Layer, Service, ServiceExt};
use tower_ratelimit::RateLimitLayer;

const X_RATELIMIT_LIMIT: HeaderName = HeaderName::from_static("x-ratelimit-limit");
const X_RATELIMIT_REMAINING: HeaderName = HeaderName::from_static("x-ratelimit-remaining");
const X_RATELIMIT_RESET: HeaderName = HeaderName::from_static("x-ratelimit-reset");

/// The floor of any layer that sends these headers: the bare service plus the
/// three `X-RateLimit-*` inserts with constant values, and nothing else (no
/// key, no count, no arithmetic).
fn headers_only() -> impl Service<Request<()>, Response = Response<Body>, Error = Infallible> {
    bare().map_response(|mut response: Response<Body>| {
        let headers = response.headers_mut();
        headers.insert(X_RATELIMIT_LIMIT, HeaderValue::from_static("4294967295"));
        headers.insert(
            X_RATELIMIT_REMAINING,
            HeaderValue::from_static("4294967294"),
        );
        headers.insert(X_RATELIMIT_RESET, HeaderValue::from_static("1700000060"));
        response
    })
}

fn keyed_limiter() -> DefaultKeyedRateLimiter<String> {
    RateLimiter::keyed(GovernorQuota::per_second(NonZeroU32::MAX))
}

fn overhead(c: &mut Criterion) {
    let mut group = c.benchmark_group("overhead");
    group.throughput(Throughput::Elements(1));
    for (label, n) in [("1key", 1), ("10k_keys", MANY)] {
        let keys = api_keys(n, 1);

        let mut svc = bare();
        let mut cycle = Cycle::new(keys.clone());
        group.bench_function(format!("bare/{label}"), |b| {
            b.iter(|| black_box(send(&mut svc, request(cycle.next()))))
        });

        let mut svc = headers_only();
        let mut cycle = Cycle::new(keys.clone());
        group.bench_function(format!("headers_only/{label}"), |b| {
            b.iter(|| black_box(send(&mut svc, request(cycle.next()))))
        });

        for windows in [1, 2] {
            let mut svc = layer(windows).layer(bare());
            let mut cycle = Cycle::new(keys.clone());
            let response = send(&mut svc, request(cycle.next()));
            assert!(response.headers().contains_key("x-ratelimit-remaining"));
            group.bench_function(format!("ratelimit_{windows}w/{label}"), |b| {
                b.iter(|| black_box(send(&mut svc, request(cycle.next()))))
            });
        }

        // The crate's defaults: the decision built for `Decision::current`.
        let mut svc = RateLimitLayer::new(policy(2)).layer(bare());
        let mut cycle = Cycle::new(keys.clone());
        group.bench_function(format!("ratelimit_defaults/{label}"), |b| {
            b.iter(|| black_box(send(&mut svc, request(cycle.next()))))
        });

        let mut svc = bare();
        let mut cycle = Cycle::new(keys.clone());
        group.bench_function(format!("bare_control/{label}"), |b| {
            b.iter(|| black_box(send(&mut svc, control(cycle.next()))))
        });
        let mut svc = layer(2).layer(bare());
        let mut cycle = Cycle::new(keys.clone());
        group.bench_function(format!("ratelimit_2w_stacked/{label}"), |b| {
            b.iter(|| black_box(send(&mut svc, control(cycle.next()))))
        });

        let mut svc = governor_layer().layer(bare());
        let mut cycle = Cycle::new(keys.clone());
        let response = send(&mut svc, request(cycle.next()));
        assert!(response.headers().contains_key("x-ratelimit-remaining"));
        group.bench_function(format!("tower_governor/{label}"), |b| {
            b.iter(|| black_box(send(&mut svc, request(cycle.next()))))
        });

        let limiter = keyed_limiter();
        let owned: Vec<String> = keys.iter().map(|k| k.to_string()).collect();
        let mut i = 0;
        group.bench_function(format!("governor_check_key/{label}"), |b| {
            b.iter(|| {
                i = (i + 1) % owned.len();
                black_box(limiter.check_key(&owned[i]).is_ok())
            })
        });
    }
    group.finish();
}

/// Runs `per_thread` over `threads` threads at once, each on its own keys,
/// and returns the wall time for `iters` requests in all.
fn run_threads<F>(threads: usize, iters: u64, make: &F) -> Duration
where
    F: Fn(usize) -> Box<dyn FnMut() + Send> + Sync,
{
    let start = Barrier::new(threads);
    let share = iters.div_ceil(threads as u64);
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let start = &start;
                scope.spawn(move || {
                    // Made on its own thread, from its own allocator arena:
                    // its state (written on every request) shares no cache
                    // line with the other thread's.
                    let mut work = make(t);
                    start.wait();
                    let began = Instant::now();
                    for _ in 0..share {
                        work();
                    }
                    (began, Instant::now())
                })
            })
            .collect();
        let spans: Vec<(Instant, Instant)> =
            handles.into_iter().map(|h| h.join().unwrap()).collect();
        let began = spans.iter().map(|s| s.0).min().unwrap();
        let ended = spans.iter().map(|s| s.1).max().unwrap();
        ended - began
    })
}

fn scaling(c: &mut Criterion) {
    let mut group = c.benchmark_group("scaling");
    group.throughput(Throughput::Elements(1));
    // Disjoint key sets, one per thread; the single thread uses the first.
    let key_sets: Arc<Vec<Vec<&'static str>>> =
        Arc::new(vec![api_keys(MANY / 2, 1), api_keys(MANY / 2, 2)]);

    let layer = layer(2);
    let ratelimit = |t: usize| -> Box<dyn FnMut() + Send> {
        let mut svc = layer.layer(bare());
        let mut cycle = Cycle::new(key_sets[t].clone());
        Box::new(move || {
            black_box(send(&mut svc, request(cycle.next())));
        })
    };
    // The harness alone (building requests, the bare service's responses):
    // how far two threads can scale on this machine at all.
    let unlimited = |t: usize| -> Box<dyn FnMut() + Send> {
        let mut svc = bare();
        let mut cycle = Cycle::new(key_sets[t].clone());
        Box::new(move || {
            black_box(send(&mut svc, request(cycle.next())));
        })
    };
    let limiter = Arc::new(keyed_limiter());
    let governor = |t: usize| -> Box<dyn FnMut() + Send> {
        let limiter = Arc::clone(&limiter);
        let keys: Vec<String> = key_sets[t].iter().map(|k| k.to_string()).collect();
        let mut i = 0;
        Box::new(move || {
            i = (i + 1) % keys.len();
            black_box(limiter.check_key(&keys[i]).is_ok());
        })
    };
    // Warm both stores so the measured runs only update known keys.
    for t in 0..2 {
        let mut a = ratelimit(t);
        let mut b = governor(t);
        for _ in 0..MANY / 2 {
            a();
            b();
        }
    }
    for threads in [1, 2] {
        group.bench_function(format!("bare/{threads}_threads"), |b| {
            b.iter_custom(|iters| run_threads(threads, iters, &unlimited))
        });
        group.bench_function(format!("ratelimit_2w/{threads}_threads"), |b| {
            b.iter_custom(|iters| run_threads(threads, iters, &ratelimit))
        });
        group.bench_function(format!("governor_check_key/{threads}_threads"), |b| {
            b.iter_custom(|iters| run_threads(threads, iters, &governor))
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = config();
    targets = overhead, scaling
}
criterion_main!(benches);
