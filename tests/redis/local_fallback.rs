//! The local fallback decides on a time that never goes back: a request
//! whose call to Redis fails late (at its deadline) is counted after the
//! requests that skipped Redis meanwhile, though it arrived before them, and
//! still gets exactly the local share of each window, with honest waits.

use std::time::Duration;

use http::{Response, StatusCode};
use tower_ratelimit::clock::ManualClock;
use tower_ratelimit::store::redis::{FailurePolicy, RedisStore};
use tower_ratelimit::{
    Basis, Decision, Quota, RateLimitLayer, RefusalReason, ResponseBody, Window,
};

use crate::support::{header, per_key, send, service, Svc};

const T0: u64 = 1_700_000_000;

/// What a response says: admitted, or refused with its `Retry-After` (s),
/// and what decided it.
fn seen(response: &Response<ResponseBody<String>>) -> (Option<u64>, Basis, Option<RefusalReason>) {
    let decision = response.extensions().get::<Decision>().expect("a decision");
    let retry = header(response, "retry-after").map(|v| v.parse().expect("seconds"));
    match response.status() {
        StatusCode::OK => assert_eq!(retry, None),
        StatusCode::TOO_MANY_REQUESTS => assert!(retry.is_some(), "a refusal says when"),
        other => panic!("unexpected status {other}"),
    }
    (retry, decision.basis(), decision.refusal())
}

/// `count` requests on key `key` at once, each in a task of its own.
fn spawn_many(
    svc: &Svc,
    key: &str,
    count: usize,
) -> Vec<tokio::task::JoinHandle<Response<ResponseBody<String>>>> {
    (0..count)
        .map(|_| tokio::spawn(send(svc, "GET", "/", key)))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_that_fall_back_late_get_the_whole_local_share_and_honest_waits() {
    let server = redis_or_skip!();
    let clock = ManualClock::at_unix_secs(T0);
    // 5 an hour per key (GCRA: one every 720 s), the whole quota locally
    // while Redis cannot decide; a breaker that opens at the first failure
    // and stays open for the test.
    let store = RedisStore::builder(server.url())
        .on_failure(FailurePolicy::local(100))
        .deadline(Duration::from_secs(1))
        .circuit_breaker(1, Duration::from_secs(600))
        .connect()
        .await
        .unwrap();
    let layer = RateLimitLayer::with_store(per_key(Quota::new(Window::per_hour(5))), store.clone())
        .clock(clock.clone())
        .decision_extensions(true);
    let svc = service(&layer);
    let first = send(&svc, "GET", "/", "warm").await;
    assert_eq!(seen(&first), (None, Basis::Counted, None), "Redis decides");

    // Redis goes silent. A first call waits its deadline; 400 ms later, 40
    // requests on key `k` call Redis too (the breaker is still closed) and
    // wait theirs.
    server.freeze();
    let opener = tokio::spawn(send(&svc, "GET", "/", "other"));
    tokio::time::sleep(Duration::from_millis(400)).await;
    let late = spawn_many(&svc, "k", 40);

    // The first call's failure opens the breaker, while the 40 still wait.
    let opener = opener.await.unwrap();
    assert_eq!(seen(&opener), (None, Basis::LocalFallback, None));
    assert!(store.is_circuit_open(), "{store:?}");
    assert!(
        late.iter().all(|request| !request.is_finished()),
        "the 40 calls still wait for Redis: {store:?}"
    );

    // A second later, 3 requests on `k` skip Redis and are counted at once,
    // on the later time, ahead of the 40 that arrived before them.
    clock.advance(Duration::from_secs(1));
    let early = futures::future::join_all((0..3).map(|_| send(&svc, "GET", "/", "k"))).await;
    for response in &early {
        assert_eq!(seen(response), (None, Basis::LocalFallback, None));
    }
    assert!(
        late.iter().all(|request| !request.is_finished()),
        "the 40 calls still wait for Redis: {store:?}"
    );

    // Then the 40 fall back: exactly the 2 left of the share are admitted,
    // and every refusal is the window's, with a wait that is honest.
    let mut admitted = early.len();
    let mut waits = Vec::new();
    for request in late {
        let response = request.await.unwrap();
        match seen(&response) {
            (None, Basis::LocalFallback, None) => admitted += 1,
            (Some(wait), Basis::LocalFallback, Some(RefusalReason::Window)) => waits.push(wait),
            other => panic!("unexpected decision {other:?}: {store:?}"),
        }
    }
    assert_eq!(
        admitted, 5,
        "the whole local share, no less: waits {waits:?}"
    );
    assert_eq!(waits.len(), 38);
    // Each refusal asks for the one interval the share needs to free a
    // request, and is honest: a retry a second sooner is refused, one after
    // its `Retry-After` is admitted (the shortest tells for all).
    assert!(waits.iter().all(|&w| w == 720), "waits {waits:?}");
    let shortest = *waits.iter().min().unwrap();
    clock.advance(Duration::from_secs(shortest - 1));
    let early_retry = send(&svc, "GET", "/", "k").await;
    assert_eq!(
        seen(&early_retry),
        (Some(1), Basis::LocalFallback, Some(RefusalReason::Window))
    );
    clock.advance(Duration::from_secs(1));
    let retry = send(&svc, "GET", "/", "k").await;
    assert_eq!(
        seen(&retry),
        (None, Basis::LocalFallback, None),
        "{store:?}"
    );
    assert!(
        store.is_circuit_open(),
        "decided locally throughout: {store:?}"
    );
}

/// The probe that found the flaw, on the layer's default clock: Redis killed,
/// then three rounds of 50 requests at once on one key. The first requests
/// of the first round fail in Redis and fall back after the ones that skip
/// it once the breaker opens.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bursts_on_one_key_after_redis_is_killed_get_exactly_the_local_share() {
    let mut server = redis_or_skip!();
    let store = RedisStore::builder(server.url())
        .on_failure(FailurePolicy::local(100))
        .connect()
        .await
        .unwrap();
    let layer = RateLimitLayer::with_store(per_key(Quota::new(Window::per_hour(5))), store.clone())
        .decision_extensions(true);
    let svc = service(&layer);
    let first = send(&svc, "GET", "/", "warm").await;
    assert_eq!(seen(&first), (None, Basis::Counted, None), "Redis decides");
    server.kill();
    let started = std::time::Instant::now();
    let mut admitted = 0;
    let mut waits = Vec::new();
    for round in 0..3 {
        for request in spawn_many(&svc, "k", 50) {
            let response = request.await.unwrap();
            match seen(&response) {
                (None, Basis::LocalFallback, None) => admitted += 1,
                (Some(wait), Basis::LocalFallback, Some(RefusalReason::Window)) => {
                    waits.push((round, wait))
                }
                other => panic!("round {round}: unexpected decision {other:?}: {store:?}"),
            }
        }
    }
    assert_eq!(
        admitted, 5,
        "the whole local share, no less: waits {waits:?}"
    );
    // The 5 admissions free the next request 720 s after the first of
    // them; every refusal comes after them, within `took`: its wait must be
    // 720 s less at most that (rounded up), no shorter (a retry then would
    // be refused) and no longer.
    let took = started.elapsed().as_secs();
    let honest = 720u64.saturating_sub(took + 1)..=720;
    assert!(
        waits.iter().all(|(_, w)| honest.contains(w)),
        "waits {waits:?} within {took} s"
    );
    assert!(store.fallbacks() >= 150, "{store:?}");
}
