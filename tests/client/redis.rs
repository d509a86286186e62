//! Two pacers, as two processes would have, sharing one pace through a
//! real Redis: together they never pass the quota.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tower_ratelimit::client::Pacer;
use tower_ratelimit::store::RedisStore;
use tower_ratelimit::{Quota, Window};

/// How long the callers keep asking.
const RUN: Duration = Duration::from_secs(2);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_pacers_sharing_redis_never_pass_the_quota_together() {
    let server = redis_or_skip!();
    let quota = Quota::new(Window::per_second(5));
    let mut pacers = Vec::new();
    for _ in 0..2 {
        let store = RedisStore::builder(server.url()).connect().await.unwrap();
        let pacer = Pacer::with_store(quota.clone(), store)
            .unwrap()
            .name("sms")
            .max_wait(Duration::from_secs(5));
        pacers.push(Arc::new(pacer));
    }
    let start = Instant::now();
    let admitted: Vec<Arc<AtomicU32>> = (0..2).map(|_| Arc::default()).collect();
    let mut callers = Vec::new();
    for (pacer, count) in pacers.iter().zip(&admitted) {
        for _ in 0..4 {
            let (pacer, count) = (Arc::clone(pacer), Arc::clone(count));
            callers.push(tokio::spawn(async move {
                while start.elapsed() < RUN {
                    pacer.wait("+15550001").await.unwrap();
                    // Counted only if admitted within the run (the store
                    // admitted it earlier still).
                    if start.elapsed() <= RUN {
                        count.fetch_add(1, Ordering::SeqCst);
                    }
                }
            }));
        }
    }
    for caller in callers {
        caller.await.unwrap();
    }
    let each: Vec<u32> = admitted.iter().map(|c| c.load(Ordering::SeqCst)).collect();
    let total: u32 = each.iter().sum();
    // GCRA's bound over 2 s at 5/s: the burst of 5, and one per 200 ms.
    assert!(total <= 5 + 10, "admitted {each:?} in {RUN:?}");
    // And they did pace rather than give up: close to the bound.
    assert!(total >= 12, "admitted {each:?} in {RUN:?}");
    assert!(each.iter().all(|&n| n > 0), "admitted {each:?}");
}
