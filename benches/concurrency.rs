//! The cost of an in-flight cap beside a rate check: through the layer
//! (rate only, cap only, both) over a bare service, and the two engines
//! alone (`ConcurrencyLimiter::try_acquire` + drop, `MemoryStore::check`).
//!
//! Run with `cargo bench --bench concurrency`. Every request is admitted:
//! windows and caps are far above what a benchmark can send, and each
//! response (and with it its slot) is dropped before the next request, so
//! a cap is never full. Futures are polled in place: no runtime, no TCP.

use std::convert::Infallible;
use std::future::{ready, Ready};
use std::hint::black_box;
use std::time::Duration;

use axum::body::Body;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use futures::FutureExt;
use http::header::CONTENT_TYPE;
use http::{HeaderValue, Method, Request, Response};
use tower::{service_fn, Layer, Service, ServiceExt};
use tower_ratelimit::concurrency::ConcurrencyLimiter;
use tower_ratelimit::key::Header;
use tower_ratelimit::store::{Check, Decided, MemoryStore, Store};
use tower_ratelimit::{Limit, Policy, Quota, RateLimitLayer, Window};

/// Distinct API keys in the many-keys workloads.
const MANY: usize = 10_000;
/// A limit (and a cap) no benchmark gets near.
const HUGE: u32 = u32::MAX;
/// 2023-11-14T22:13:20Z, in nanoseconds.
const T0: u64 = 1_700_000_000_000_000_000;

/// `nx_live_` and 24 hex digits: 32 bytes, like a real API key.
fn api_keys(n: usize) -> Vec<&'static str> {
    (0..n as u64)
        .map(|i| {
            let x = i.wrapping_mul(0x9E37_79B9_7F4A_7C15);
            let key: &'static str =
                Box::leak(format!("nx_live_{:016x}{:08x}", x, i as u32).into_boxed_str());
            key
        })
        .collect()
}

/// A well-mixed 64-bit key, as the layer's keyed hash would give.
fn hashed(i: u64) -> u64 {
    let mut x = i.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

fn request(key: &'static str) -> Request<()> {
    let mut request = Request::new(());
    *request.method_mut() = Method::GET;
    *request.uri_mut() = http::Uri::from_static("/v1/calls/c_42");
    request
        .headers_mut()
        .insert("x-api-key", HeaderValue::from_static(key));
    request
}

/// The service being protected: answers at once, as an axum handler
/// returning a string does.
fn bare() -> impl Service<
    Request<()>,
    Response = Response<Body>,
    Error = Infallible,
    Future = Ready<Result<Response<Body>, Infallible>>,
> + Clone {
    service_fn(|_: Request<()>| {
        let mut response = Response::new(Body::empty());
        response.headers_mut().insert(
            CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        ready(Ok::<_, Infallible>(response))
    })
}

/// One limit per API key, on every route, with `quota`.
fn layer(quota: Quota) -> RateLimitLayer {
    let policy = Policy::builder()
        .limit(Limit::new("per_key", Header::parse("X-API-Key").unwrap()).quota(quota))
        .build()
        .unwrap();
    RateLimitLayer::new(policy).decision_extensions(false)
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

/// Sends one request through `service`, polling its futures in place; the
/// response is returned (and dropped by the caller, freeing any slot).
fn send<S, B>(service: &mut S, key: &'static str) -> Response<B>
where
    S: Service<Request<()>, Response = Response<B>>,
    S::Error: std::fmt::Debug,
{
    let service = service.ready().now_or_never().unwrap().unwrap();
    let response = service.call(request(key)).now_or_never().unwrap().unwrap();
    debug_assert!(response.status().is_success());
    response
}

/// Round-robin over a list.
struct Cycle<T> {
    items: Vec<T>,
    next: usize,
}

impl<T: Copy> Cycle<T> {
    fn new(items: Vec<T>) -> Self {
        Cycle { items, next: 0 }
    }

    fn next(&mut self) -> T {
        let item = self.items[self.next];
        self.next = (self.next + 1) % self.items.len();
        item
    }
}

fn through_the_layer(c: &mut Criterion) {
    let mut group = c.benchmark_group("layer");
    group.throughput(Throughput::Elements(1));
    for (label, n) in [("1key", 1), ("10k_keys", MANY)] {
        let keys = api_keys(n);

        let mut svc = bare();
        let mut cycle = Cycle::new(keys.clone());
        group.bench_function(format!("bare/{label}"), |b| {
            b.iter(|| black_box(send(&mut svc, cycle.next())))
        });

        for (name, quota) in quotas() {
            let layer = layer(quota);
            let mut svc = layer.layer(bare());
            let mut cycle = Cycle::new(keys.clone());
            let response = send(&mut svc, cycle.next());
            assert!(response.headers().contains_key("x-ratelimit-remaining"));
            drop(response);
            group.bench_function(format!("{name}/{label}"), |b| {
                b.iter(|| black_box(send(&mut svc, cycle.next())))
            });
            assert!(layer.in_flight().is_empty(), "a slot leaked");
        }
    }
    group.finish();
}

fn engines_alone(c: &mut Criterion) {
    let mut group = c.benchmark_group("alone");
    group.throughput(Throughput::Elements(1));
    for (label, n) in [("1key", 1), ("10k_keys", MANY as u64)] {
        let keys: Vec<u64> = (0..n).map(hashed).collect();

        let limiter = ConcurrencyLimiter::new();
        let mut cycle = Cycle::new(keys.clone());
        group.bench_function(format!("try_acquire_and_drop/{label}"), |b| {
            b.iter(|| drop(black_box(limiter.try_acquire(cycle.next(), HUGE).unwrap())))
        });
        assert!(limiter.is_empty());

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

fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(30)
}

criterion_group! {
    name = benches;
    config = config();
    targets = through_the_layer, engines_alone
}
criterion_main!(benches);
