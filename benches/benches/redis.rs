//! What a decision costs in Redis against the memory store, on loopback:
//! decisions per second from one process over one connection, and the p50 and
//! p99 latency one decision adds; and the latency of one in-flight slot
//! shared through Redis.
//!
//! Run with
//! `cargo bench -p tower-ratelimit-benches --bench redis --features redis`.
//! The bench starts its own `redis-server` (from `PATH`, persistence off) on
//! a free loopback port and stops it at the end. Each decision checks two
//! windows (60/minute and 1,000/hour, GCRA) of one of 10,000 keys.

mod support;

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput};
use support::{bucket, quantile_micros, RedisServer, HUGE, T0};
use tower_ratelimit::store::protocol::{Check, Decided, Mode, Outcome, SharedSlots};
use tower_ratelimit::store::redis::RedisStore;
use tower_ratelimit::store::{MemoryStore, Store};
use tower_ratelimit::{Quota, Window};

const KEYS: u64 = 10_000;
/// Decisions in flight at once in the throughput runs.
const IN_FLIGHT: usize = 64;

async fn decide<St: Store>(store: &St, now: u64, checks: &[Check<'_>]) -> Outcome {
    match store.check(now, checks) {
        Decided::Ready(result) => result.expect("decided"),
        Decided::Pending(pending) => pending.await.expect("decided"),
    }
}

/// p50 and p99 of `n` sequential decisions, in microseconds.
fn percentiles<St: Store>(
    runtime: &tokio::runtime::Runtime,
    store: &St,
    quota: &Quota,
    n: u64,
) -> (f64, f64) {
    let mut samples = Vec::with_capacity(n as usize);
    runtime.block_on(async {
        for i in 0..n {
            let checks = [Check::new(bucket(i % KEYS), quota)];
            let started = Instant::now();
            black_box(decide(store, T0 + i, &checks).await);
            samples.push(started.elapsed());
        }
    });
    samples.sort();
    (
        quantile_micros(&samples, 0.50),
        quantile_micros(&samples, 0.99),
    )
}

/// p50 and p99 of `n` sequential in-flight slots of a store's shared
/// slots, each taken and dropped at once, in microseconds.
fn slot_percentiles(
    runtime: &tokio::runtime::Runtime,
    slots: &dyn SharedSlots,
    n: u64,
) -> (f64, f64) {
    let mut samples = Vec::with_capacity(n as usize);
    runtime.block_on(async {
        for i in 0..n {
            let key = bucket(i % KEYS);
            let started = Instant::now();
            let permit = slots.acquire(key, key, 10, Mode::Refuse, "bench").await;
            drop(black_box(permit.expect("a free slot")));
            samples.push(started.elapsed());
        }
    });
    samples.sort();
    (
        quantile_micros(&samples, 0.50),
        quantile_micros(&samples, 0.99),
    )
}

fn main() {
    let server = RedisServer::start();
    let runtime = support::runtime();
    let redis = runtime
        .block_on(
            RedisStore::builder(server.url())
                .deadline(Duration::from_secs(5))
                .connect(),
        )
        .expect("the bench's Redis answers");
    let memory = MemoryStore::new();
    let quota = Quota::new(Window::per_minute(60)).and(Window::per_hour(1000));

    let (m50, m99) = percentiles(&runtime, &memory, &quota, 20_000);
    let (r50, r99) = percentiles(&runtime, &redis, &quota, 20_000);
    println!("latency of one decision (20,000 sequential, 2 windows, 10,000 keys):");
    println!("  memory store  p50 {m50:>8.2} µs   p99 {m99:>8.2} µs");
    println!("  redis store   p50 {r50:>8.2} µs   p99 {r99:>8.2} µs");
    assert_eq!(redis.failures(), 0, "every decision came from Redis");

    let slots = redis.shared_slots().expect("the Redis store shares slots");
    let (s50, s99) = slot_percentiles(&runtime, slots, 20_000);
    println!("latency of one in-flight slot, taken and dropped (20,000 sequential, 10,000 keys):");
    println!("  redis store   p50 {s50:>8.2} µs   p99 {s99:>8.2} µs");
    assert_eq!(redis.failures(), 0, "every slot came from Redis");

    let mut criterion = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .configure_from_args();
    let mut group = criterion.benchmark_group("decisions");
    group.throughput(Throughput::Elements(IN_FLIGHT as u64));
    // Every decision admitted however many criterion runs (a refusal would
    // come from the deny cache, without a call).
    let quota = Quota::new(Window::per_minute(HUGE)).and(Window::per_hour(HUGE));
    let mut i = 0u64;
    group.bench_function("memory store, 64 decisions", |b| {
        b.iter(|| {
            runtime.block_on(async {
                for _ in 0..IN_FLIGHT {
                    i += 1;
                    let checks = [Check::new(bucket(i % KEYS), &quota)];
                    black_box(decide(&memory, T0 + i, &checks).await);
                }
            })
        })
    });
    group.bench_function("redis store, one connection, 64 in flight", |b| {
        b.iter(|| {
            runtime.block_on(async {
                let mut pending = Vec::with_capacity(IN_FLIGHT);
                for _ in 0..IN_FLIGHT {
                    i += 1;
                    let checks = [Check::new(bucket(i % KEYS), &quota)];
                    // The store's future owns what it needs: all 64 go out
                    // on the one connection before the first answer.
                    match redis.check(T0 + i, &checks) {
                        Decided::Pending(decision) => pending.push(decision),
                        Decided::Ready(_) => panic!("the breaker opened"),
                    }
                }
                black_box(futures::future::join_all(pending).await);
            })
        })
    });
    group.finish();
    criterion.final_summary();
    assert_eq!(redis.failures(), 0, "every decision came from Redis");
}
