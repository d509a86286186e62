//! The Redis store and the memory store, side by side on random sequences of
//! requests at random times, make the same decisions with the same numbers,
//! penalties and bans included, and peek alike after each.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use proptest::prelude::*;
use tower_ratelimit::penalty::Penalty;
use tower_ratelimit::store::protocol::{Check, Decided, Outcome};
use tower_ratelimit::store::redis::RedisStore;
use tower_ratelimit::store::{MemoryStore, Store};
use tower_ratelimit::{Algorithm, Quota, Window};

const T0: u64 = 1_700_000_000_123_456_789;

fn quotas() -> Vec<Quota> {
    let ms = Duration::from_millis;
    vec![
        Quota::new(Window::per_second(3)).and(Window::per_minute(10)),
        Quota::new(Window::per_second(2))
            .and(Window::per_minute(5))
            .algorithm(Algorithm::FixedWindow),
        Quota::new(Window::new(7, Duration::from_secs(10)).unwrap()).cost(2),
        Quota::new(Window::new(3, ms(200)).unwrap())
            .and(Window::new(4, ms(700)).unwrap())
            .algorithm(Algorithm::FixedWindow),
        // An interval that does not divide evenly: 1000 ms / 3.
        Quota::new(Window::new(3, ms(1000)).unwrap()).and(Window::per_hour(40)),
    ]
}

/// One request: its checks as (bucket, shadow); a bucket always has the
/// same quota (bucket % number of quotas).
#[derive(Debug, Clone)]
struct Step {
    advance_ns: u64,
    checks: Vec<(u64, bool)>,
}

fn steps() -> impl Strategy<Value = Vec<Step>> {
    let step = (
        prop_oneof![Just(0u64), 0u64..400_000_000, 0u64..3_000_000_000],
        prop::collection::vec((0u64..7, prop::bool::weighted(0.2)), 1..=3),
    )
        .prop_map(|(advance_ns, mut checks)| {
            checks.dedup_by_key(|c| c.0);
            Step { advance_ns, checks }
        });
    prop::collection::vec(step, 20..60)
}

fn memory(store: &MemoryStore, now: u64, checks: &[Check<'_>]) -> Outcome {
    match store.check(now, checks) {
        Decided::Ready(Ok(outcome)) => outcome,
        other => panic!("memory store answered {other:?}"),
    }
}

#[test]
fn redis_and_memory_stores_decide_alike_on_random_sequences() {
    let Some(server) = crate::support::server() else {
        return;
    };
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let case = AtomicUsize::new(0);
    let (refusals_seen, bans_seen) = (AtomicUsize::new(0), AtomicUsize::new(0));
    let cached_seen = AtomicUsize::new(0);
    let quotas = quotas();
    // Buckets 0 and 3 are under a penalty: 3 refusals within 2 s, banned
    // for 5 s (bucket 0 alone: 1 refusal, banned for 1.5 s).
    let strict = Penalty::new(3, Duration::from_secs(2), Duration::from_secs(5)).unwrap();
    let instant = Penalty::new(1, Duration::from_secs(1), Duration::from_millis(1500)).unwrap();
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases: 24,
        failure_persistence: None,
        ..ProptestConfig::default()
    });
    let result = runner.run(&steps(), |steps| {
        runtime.block_on(async {
            // A prefix per case: every case starts from fresh keys.
            let prefix = format!("case{}", case.fetch_add(1, Ordering::SeqCst));
            let redis = RedisStore::builder(server.url())
                .prefix(prefix)
                .layer_clock()
                .deadline(Duration::from_secs(5))
                .connect()
                .await
                .unwrap();
            let memory_store = MemoryStore::new();
            let mut now = T0;
            let mut admitted = 0;
            let mut bans = 0;
            // Every case ends with a burst on bucket 0 (3 a second, banned
            // at its first refusal), so each meets a refusal and a ban.
            let burst = Step {
                advance_ns: 0,
                checks: vec![(0, false)],
            };
            let sequence = steps.iter().chain(std::iter::repeat_n(&burst, 5));
            for (i, step) in sequence.enumerate() {
                now += step.advance_ns;
                let checks: Vec<Check<'_>> = step
                    .checks
                    .iter()
                    .map(|&(bucket, shadow)| {
                        let quota = &quotas[(bucket % quotas.len() as u64) as usize];
                        // Spread buckets over the hash space, as real ones are.
                        let id = bucket;
                        let bucket = bucket.wrapping_mul(0x9E37_79B9_7F4A_7C15);
                        let check = if shadow {
                            Check::shadow(bucket, quota)
                        } else {
                            Check::new(bucket, quota)
                        };
                        match id {
                            0 => check.with_penalty(!bucket, &instant),
                            3 => check.with_penalty(!bucket, &strict),
                            _ => check,
                        }
                    })
                    .collect();
                let expected = memory(&memory_store, now, &checks);
                let cached = redis.cached_refusals();
                let got = match redis.check(now, &checks) {
                    Decided::Pending(pending) => pending.await.unwrap(),
                    Decided::Ready(result) => result.unwrap(),
                };
                if redis.cached_refusals() > cached {
                    // Refused from the deny cache: the same verdict, with
                    // windows that refused it, exactly as they stand (a
                    // window of a limit not in the cache may be missing,
                    // and with it a longer wait).
                    prop_assert!(!expected.admitted(), "step {}: {:?}", i, expected);
                    prop_assert!(!got.windows().is_empty());
                    for window in got.windows() {
                        prop_assert!(window.retry_after > 0);
                        prop_assert!(
                            expected.windows().contains(window),
                            "step {}: {:?} not in {:?}",
                            i,
                            window,
                            expected
                        );
                    }
                    prop_assert!(got.retry_after() <= expected.retry_after());
                    cached_seen.fetch_add(1, Ordering::Relaxed);
                } else {
                    prop_assert_eq!(
                        &got,
                        &expected,
                        "step {} at +{} ns: {:?}",
                        i,
                        now - T0,
                        step
                    );
                }
                admitted += usize::from(got.admitted());
                bans += usize::from(got.ban().is_some());
                // And both read alike where the buckets stand.
                let peeked = redis.peek(now, &checks).await.unwrap();
                let expected = memory_store.peek(now, &checks).await.unwrap();
                prop_assert_eq!(peeked, expected, "peek after step {}", i);
            }
            prop_assert_eq!(redis.failures(), 0);
            refusals_seen.fetch_add(steps.len() + 5 - admitted, Ordering::Relaxed);
            bans_seen.fetch_add(bans, Ordering::Relaxed);
            Ok(())
        })
    });
    if let Err(e) = result {
        panic!("{e}");
    }
    // The sequences did exercise refusals and bans.
    assert!(refusals_seen.into_inner() > 0);
    assert!(bans_seen.into_inner() > 0);
    assert!(
        cached_seen.into_inner() > 0,
        "and refusals from the deny cache"
    );
}

/// Two checks of one request that share a ban key (the protocol allows it):
/// the first check's refusal starts the ban, the second finds it in force
/// and starts none, in Redis as in memory.
#[tokio::test]
async fn checks_that_share_a_ban_key_start_one_ban_in_both_stores() {
    let Some(server) = crate::support::server() else {
        return;
    };
    let quota = Quota::new(Window::per_second(1));
    let other = Quota::new(Window::per_minute(5));
    let instant = Penalty::new(1, Duration::from_secs(1), Duration::from_millis(1500)).unwrap();
    let checks = [
        Check::new(1, &quota).with_penalty(7, &instant),
        Check::new(2, &other),
        Check::new(1, &quota).with_penalty(7, &instant),
    ];
    let redis = RedisStore::builder(server.url())
        .prefix("shared-ban-key")
        .layer_clock()
        .deadline(Duration::from_secs(5))
        .connect()
        .await
        .unwrap();
    let memory_store = MemoryStore::new();
    let mut answers = Vec::new();
    for now in [T0, T0 + 1] {
        let expected = memory(&memory_store, now, &checks);
        let got = match redis.check(now, &checks) {
            Decided::Pending(pending) => pending.await.unwrap(),
            Decided::Ready(result) => result.unwrap(),
        };
        assert_eq!(got, expected, "at +{} ns", now - T0);
        answers.push(got);
    }
    // The second request is refused and starts one ban, on the first check
    // (the outcomes compared above include the checks that started one).
    let refused = &answers[1];
    assert!(!refused.admitted());
    assert_eq!(refused.ban().map(|b| (b.check, b.started)), Some((0, true)));
}
