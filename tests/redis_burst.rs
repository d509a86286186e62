//! A burst of decisions that queues in this process is no failure of Redis:
//! calls that miss their deadline behind this process's own commands, while
//! Redis answers all along, do not open the circuit breaker.
//!
//! A binary of its own, apart from the other Redis tests in `tests/redis/`:
//! what it asserts is how this process's own load looks to the breaker, and
//! the other tests, run beside it, would add load that is not its own.
//!
//! `TOWER_RATELIMIT_SKIP_REDIS=1` skips it (with a note), as it does the
//! other Redis tests.

#![cfg(feature = "redis")]

#[path = "redis/support.rs"]
mod support;

use std::sync::Arc;
use std::time::Duration;

use tower_ratelimit::store::protocol::{Check, Decided};
use tower_ratelimit::store::redis::RedisStore;
use tower_ratelimit::store::Store;
use tower_ratelimit::{Quota, Window};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_queued_in_this_process_is_no_redis_failure() {
    let server = redis_or_skip!();
    // A deadline far below what thousands of calls through one connection
    // take: the later ones wait behind the earlier ones, here, while Redis
    // answers all along.
    let store = RedisStore::builder(server.url())
        .deadline(Duration::from_millis(50))
        .circuit_breaker(3, Duration::from_secs(60))
        .connect()
        .await
        .unwrap();
    let quota = Arc::new(Quota::new(Window::per_minute(1_000)).and(Window::per_hour(10_000)));
    let mut tasks = tokio::task::JoinSet::new();
    for bucket in 0..10_000u64 {
        let store = store.clone();
        let quota = Arc::clone(&quota);
        tasks.spawn(async move {
            let checks = [Check::new(bucket % 500, &quota)];
            let decided = match store.check(0, &checks) {
                Decided::Pending(pending) => pending.await,
                Decided::Ready(result) => result,
            };
            decided.expect("the store never fails");
        });
    }
    while let Some(joined) = tasks.join_next().await {
        joined.unwrap();
    }
    assert!(
        store.timeouts() > 0,
        "the burst queued past the deadline: {store:?}"
    );
    // Redis answered all along: the breaker never opened (on a loaded
    // machine this process may hear nothing for a deadline now and then,
    // but not for three deadlines on end).
    assert!(!store.is_circuit_open(), "{store:?}");
    assert_eq!(store.short_circuits(), 0, "{store:?}");
}
