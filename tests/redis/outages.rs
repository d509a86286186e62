//! Failures bounded: a dropped connection loses no decision, and the
//! default failure policy holds each key to its quota per process while
//! Redis is away, and a burst that queues in this process's connection
//! does not trip the breaker.

use std::time::{Duration, Instant};

use http::StatusCode;
use tower_ratelimit::key::Header;
use tower_ratelimit::store::protocol::{Check, Decided};
use tower_ratelimit::store::redis::RedisStore;
use tower_ratelimit::store::Store;
use tower_ratelimit::{Basis, Limit, Policy, Quota, RateLimitLayer, Window};

use crate::support::{decide, impatient, send, service, Proxy, RedisServer, SECRET};

#[tokio::test]
async fn killed_client_connections_lose_no_decision() {
    let server = redis_or_skip!();
    let store = RedisStore::builder(server.url())
        .on_failure(tower_ratelimit::store::FailurePolicy::Open)
        .deadline(Duration::from_secs(2))
        .connect()
        .await
        .unwrap();
    let quota = Quota::new(Window::per_minute(10));
    let check = [Check::new(7, &quota)];
    for _ in 0..4 {
        assert!(decide(&store, 0, &check).await.admitted());
    }
    let mut admin = server.client().await;
    for round in 0..3 {
        // Every connection but this one is closed under the store.
        let killed: i64 = redis::cmd("CLIENT")
            .arg("KILL")
            .arg("TYPE")
            .arg("normal")
            .arg("SKIPME")
            .arg("yes")
            .query_async(&mut admin)
            .await
            .unwrap();
        assert!(
            killed >= 1,
            "round {round}: the store's connection was killed"
        );
        let outcome = decide(&store, 0, &check).await;
        assert_eq!(outcome.windows().len(), 1, "round {round}: Redis decided");
        assert!(outcome.admitted(), "round {round}");
    }
    // 4 + 3 charged in Redis: exactly 3 more, then refusals, all decided
    // there (a failing-open decision would carry no window).
    let mut admitted = 0;
    for _ in 0..6 {
        let outcome = decide(&store, 0, &check).await;
        assert_eq!(outcome.windows().len(), 1);
        admitted += usize::from(outcome.admitted());
    }
    assert_eq!(admitted, 3);
    assert_eq!(store.failures(), 0, "{store:?}");
    assert_eq!(store.fallbacks(), 0, "{store:?}");
}

#[tokio::test]
async fn by_default_an_outage_holds_each_key_to_its_quota_in_each_process() {
    let mut server = redis_or_skip!();
    let policy = || {
        Policy::builder()
            .key_secret(SECRET)
            .limit(
                Limit::new("per_key", Header::parse("X-API-Key").unwrap())
                    .quota(Quota::new(Window::per_minute(5))),
            )
            .build()
            .unwrap()
    };
    let store = RedisStore::builder(server.url())
        .deadline(Duration::from_millis(50))
        .connect()
        .await
        .unwrap();
    let svc =
        service(&RateLimitLayer::with_store(policy(), store.clone()).decision_extensions(true));
    for _ in 0..2 {
        assert_eq!(send(&svc, "GET", "/", "k").await.status(), StatusCode::OK);
    }
    server.kill();
    let mut statuses = Vec::new();
    for _ in 0..8 {
        statuses.push(send(&svc, "GET", "/", "k").await.status().as_u16());
    }
    // This process alone allows the whole quota (its local count starts at
    // the outage), and no more.
    assert_eq!(
        statuses,
        [200, 200, 200, 200, 200, 429, 429, 429],
        "{store:?}"
    );
    assert!(store.fallbacks() >= 8, "{store:?}");
}

#[tokio::test]
async fn a_refused_key_is_refused_without_a_call_until_it_would_be_admitted() {
    let mut server = redis_or_skip!();
    let store = RedisStore::builder(server.url())
        .layer_clock()
        .connect()
        .await
        .unwrap();
    let quota = Quota::new(Window::per_second(2));
    let checks = [Check::new(11, &quota)];
    const T0: u64 = 1_700_000_000_000_000_000;
    let at = |ms: u64| T0 + ms * 1_000_000;
    let decide_at = |now: u64| {
        let store = store.clone();
        async move {
            match store.check(now, &checks) {
                Decided::Pending(pending) => pending.await.unwrap(),
                Decided::Ready(result) => result.unwrap(),
            }
        }
    };
    assert!(decide_at(at(0)).await.admitted());
    assert!(decide_at(at(0)).await.admitted());
    let refused = decide_at(at(0)).await;
    assert!(!refused.admitted());
    assert_eq!(refused.retry_after(), 500_000_000, "GCRA: one in 500 ms");
    let decisions = store.decisions();

    // Until then, refused here: no call, the wait counting down.
    for ms in [0, 100, 499] {
        let again = decide_at(at(ms)).await;
        assert!(!again.admitted());
        assert_eq!(again.retry_after(), (500 - ms) * 1_000_000);
        assert_eq!(again.windows()[0].remaining, 0);
    }
    assert_eq!(store.decisions(), decisions, "Redis was not called");
    assert_eq!(store.cached_refusals(), 3);

    // While Redis is away, the key is still known to be over.
    server.kill();
    assert!(!decide_at(at(300)).await.admitted());
    assert_eq!(store.cached_refusals(), 4);
}

#[tokio::test]
async fn a_changed_quota_asks_redis_again_at_once() {
    let server = redis_or_skip!();
    let store = RedisStore::builder(server.url())
        .layer_clock()
        .connect()
        .await
        .unwrap();
    const T0: u64 = 1_700_000_000_000_000_000;
    let one = Quota::new(Window::per_minute(1));
    assert!(decide(&store, T0, &[Check::new(5, &one)]).await.admitted());
    assert!(!decide(&store, T0, &[Check::new(5, &one)]).await.admitted());
    // An override raises the key's quota: Redis decides, with the count kept.
    let raised = Quota::new(Window::per_minute(3));
    let check = [Check::new(5, &raised).based_on(&one)];
    assert!(decide(&store, T0, &check).await.admitted());
    assert_eq!(store.cached_refusals(), 0);
}

/// The decision says what made it: Redis's count, the deny cache, or, while
/// Redis is away, which failure policy.
#[tokio::test]
async fn each_decision_says_what_made_it() {
    use tower_ratelimit::store::FailurePolicy;
    use tower_ratelimit::{Decision, RefusalReason};

    let mut server = redis_or_skip!();
    let key = || Header::parse("X-API-Key").unwrap();
    let policy = Policy::builder()
        .key_secret(SECRET)
        .limit(Limit::new("local", key()).route("GET /l", Quota::new(Window::per_minute(1))))
        .limit(Limit::new("open", key()).route("GET /o", Quota::new(Window::per_minute(1))))
        .limit(Limit::new("closed", key()).route("GET /c", Quota::new(Window::per_minute(1))))
        .build()
        .unwrap();
    let store = RedisStore::builder(server.url())
        .on_failure_of("open", FailurePolicy::Open)
        .on_failure_of("closed", FailurePolicy::Closed)
        .connect()
        .await
        .unwrap();
    let svc = service(&RateLimitLayer::with_store(policy, store).decision_extensions(true));
    let seen = |response: http::Response<_>| {
        let decision = response.extensions().get::<Decision>().cloned();
        let decision = decision.expect("a decision");
        (
            response.status().as_u16(),
            decision.refusal(),
            decision.basis(),
        )
    };
    use Basis::{Counted, DenyCache, FailedClosed, FailedOpen, LocalFallback};
    use RefusalReason::{Unavailable, Window as Full};
    assert_eq!(
        seen(send(&svc, "GET", "/l", "k").await),
        (200, None, Counted)
    );
    assert_eq!(
        seen(send(&svc, "GET", "/l", "k").await),
        (429, Some(Full), Counted)
    );
    assert_eq!(
        seen(send(&svc, "GET", "/l", "k").await),
        (429, Some(Full), DenyCache)
    );

    server.kill();
    assert_eq!(
        seen(send(&svc, "GET", "/l", "k2").await),
        (200, None, LocalFallback)
    );
    assert_eq!(
        seen(send(&svc, "GET", "/l", "k2").await),
        (429, Some(Full), LocalFallback)
    );
    assert_eq!(
        seen(send(&svc, "GET", "/o", "k2").await),
        (200, None, FailedOpen)
    );
    assert_eq!(
        seen(send(&svc, "GET", "/c", "k2").await),
        (429, Some(Unavailable), FailedClosed)
    );
    // The deny cache still knows `k` is over.
    assert_eq!(
        seen(send(&svc, "GET", "/l", "k").await),
        (429, Some(Full), DenyCache)
    );
}

/// A store behind `proxy` (see [`impatient`]: 3 failures open its breaker).
async fn behind(proxy: &Proxy) -> RedisStore {
    impatient(RedisStore::builder(proxy.url()), 3).await
}

/// Sends `checks` through `store` until Redis decides them (not the
/// failure policy), at most 2 s.
async fn decided_in_redis_again(store: &RedisStore, checks: &[Check<'_>]) {
    let started = Instant::now();
    while decide(store, 0, checks).await.basis() != Basis::Counted {
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "never decided in Redis again: {store:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_connection_gone_silent_is_replaced() {
    let server = redis_or_skip!();
    // Behind a proxy that can swallow a connection's packets without
    // closing it: the connection manager replaces only one that drops.
    let proxy = Proxy::start(server.port()).await;
    let store = behind(&proxy).await;
    let quota = Quota::new(Window::per_minute(1_000));
    let checks = [Check::new(7, &quota)];
    assert_eq!(decide(&store, 0, &checks).await.basis(), Basis::Counted);
    proxy.silence();
    // Each call waits its deadline unanswered; the third opens the breaker.
    for _ in 0..3 {
        let outcome = decide(&store, 0, &checks).await;
        assert_eq!(outcome.basis(), Basis::LocalFallback);
    }
    assert!(store.is_circuit_open(), "{store:?}");
    // The probe after the cool-down goes out on a new connection: Redis
    // decides again.
    decided_in_redis_again(&store, &checks).await;
    assert_eq!(store.timeouts(), 3, "{store:?}");
    assert!(store.reconnects() >= 1, "{store:?}");
}

#[tokio::test]
async fn a_failover_behind_one_address_is_followed() {
    let old = redis_or_skip!();
    let new = RedisServer::start();
    let proxy = Proxy::start(old.port()).await;
    let store = behind(&proxy).await;
    let quota = Quota::new(Window::per_minute(1_000));
    let checks = [Check::new(7, &quota)];
    assert_eq!(decide(&store, 0, &checks).await.basis(), Basis::Counted);
    // The failover: the old primary becomes a replica of the new one (it
    // refuses writes, READONLY, on the connection the store holds), and the
    // address now leads to the new primary.
    let _: () = redis::cmd("REPLICAOF")
        .arg("127.0.0.1")
        .arg(new.port())
        .query_async(&mut old.client().await)
        .await
        .unwrap();
    proxy.redirect(new.port());
    // The errors open the breaker; the probe after the cool-down goes out
    // on a new connection, to the new primary, which decides.
    decided_in_redis_again(&store, &checks).await;
    assert!(store.failures() >= 3, "{store:?}");
}

#[tokio::test]
async fn after_a_silence_resets_from_other_processes_still_arrive() {
    let server = redis_or_skip!();
    // Process A behind the proxy; process B, the operator's, direct.
    let proxy = Proxy::start(server.port()).await;
    let a = behind(&proxy).await;
    let b = RedisStore::builder(server.url()).connect().await.unwrap();
    let quota = Quota::new(Window::per_minute(1));
    let checks = [Check::new(7, &quota)];
    assert!(decide(&a, 0, &checks).await.admitted());
    // A's connections, its subscription to resets among them, go silent.
    proxy.silence();
    for _ in 0..3 {
        assert_eq!(decide(&a, 0, &checks).await.basis(), Basis::LocalFallback);
    }
    // Redis decides again (the key's one request a minute is used), and A
    // remembers the refusal.
    decided_in_redis_again(&a, &checks).await;
    assert_eq!(decide(&a, 0, &checks).await.basis(), Basis::DenyCache);
    // The operator resets the key through B: A hears of it, on the
    // subscription it made again when its breaker opened, and asks Redis.
    assert!(b.forget(0, &checks).await.unwrap());
    let started = Instant::now();
    while !decide(&a, 0, &checks).await.admitted() {
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "the reset never reached A: {a:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_queued_in_this_process_is_no_redis_failure() {
    let server = redis_or_skip!();
    // A deadline far below what 20,000 calls through one connection take
    // (some 120 ms at 170,000 a second): the later ones wait behind the
    // earlier ones, here, while Redis answers all along.
    let store = RedisStore::builder(server.url())
        .deadline(Duration::from_millis(50))
        .circuit_breaker(3, Duration::from_secs(60))
        .connect()
        .await
        .unwrap();
    let quota = Quota::new(Window::per_minute(1_000)).and(Window::per_hour(10_000));
    // Sent at once, from one task that takes each answer as it comes: the
    // queue is the connection's. (Spread over thousands of tasks, the burst
    // also queues in the runtime, and a process that cannot run the tasks
    // that read its answers for three deadlines, its cores taken by other
    // processes, is a silent Redis as far as it can tell.)
    let decisions = (0..20_000u64).map(|bucket| {
        let (store, quota) = (&store, &quota);
        async move {
            let checks = [Check::new(bucket % 500, quota)];
            let decided = match store.check(0, &checks) {
                Decided::Pending(pending) => pending.await,
                Decided::Ready(result) => result,
            };
            decided.expect("the store never fails");
        }
    });
    futures::future::join_all(decisions).await;
    assert!(
        store.timeouts() > 0,
        "the burst queued past the deadline: {store:?}"
    );
    // Redis answered all along: the breaker never opened.
    assert!(!store.is_circuit_open(), "{store:?}");
    assert_eq!(store.short_circuits(), 0, "{store:?}");
}

/// A call unanswered at its deadline waits for a late answer (which the
/// breaker hears) for one cool-down more, then is given up: a silence that
/// outlasts it leaves no task behind, however many calls it swallowed.
#[tokio::test]
async fn calls_lost_in_a_silence_leave_no_task_behind() {
    let server = redis_or_skip!();
    let proxy = Proxy::start(server.port()).await;
    // A breaker that does not open: every call goes out and times out.
    let store = impatient(RedisStore::builder(proxy.url()), 1_000).await;
    let quota = Quota::new(Window::per_minute(1_000));
    let checks = [Check::new(7, &quota)];
    assert_eq!(decide(&store, 0, &checks).await.basis(), Basis::Counted);
    let tasks = || {
        tokio::runtime::Handle::current()
            .metrics()
            .num_alive_tasks()
    };
    let before = tasks();
    proxy.silence();
    let outcomes = futures::future::join_all((0..20).map(|_| decide(&store, 0, &checks))).await;
    assert!(outcomes.iter().all(|o| o.basis() == Basis::LocalFallback));
    let waiting = tasks();
    assert!(waiting >= before + 20, "{before} tasks, then {waiting}");
    tokio::time::sleep(Duration::from_millis(400)).await;
    let after = tasks();
    assert!(
        after <= before + 2,
        "{before} tasks, then {waiting}, then {after}"
    );
    // The 20 calls were lost in one cool-down: one new connection.
    assert_eq!(store.reconnects(), 1, "{store:?}");
    decided_in_redis_again(&store, &checks).await;
}
