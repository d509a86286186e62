//! When Redis fails: each limit's failure policy within the deadline, the
//! circuit breaker, no hanging request, and enforcement that resumes by
//! itself when Redis is back.

use std::time::{Duration, Instant};

use http::StatusCode;
use tower_ratelimit::key::{Header, PathCapture};
use tower_ratelimit::store::redis::{FailurePolicy, RedisStore};
use tower_ratelimit::{Limit, Policy, Quota, RateLimitLayer, Window};

use crate::support::{header, send, service, Svc, SECRET};

/// What a request may take while Redis is down: the deadline, plus room for
/// a busy test machine.
const BOUND: Duration = Duration::from_millis(400);

/// 100 per minute per key; call control also 100 per minute per call.
fn policy() -> Policy {
    Policy::builder()
        .key_secret(SECRET)
        .limit(
            Limit::new("per_key", Header::parse("X-API-Key").unwrap())
                .quota(Quota::new(Window::per_minute(100))),
        )
        .limit(Limit::new("per_call", PathCapture::new("call_id")).route(
            "POST /calls/{call_id}/control",
            Quota::new(Window::per_minute(100)),
        ))
        .build()
        .unwrap()
}

async fn node(
    server: &crate::support::RedisServer,
    on_failure: FailurePolicy,
) -> (Svc, RedisStore) {
    let store = RedisStore::builder(server.url())
        .deadline(Duration::from_millis(50))
        .on_failure(on_failure)
        .connect()
        .await
        .unwrap();
    (
        service(&RateLimitLayer::with_store(policy(), store.clone())),
        store,
    )
}

/// Sends a request that must be answered within [`BOUND`].
fn bounded(
    svc: &Svc,
    method: &str,
    path: &str,
    key: &str,
) -> impl std::future::Future<Output = http::Response<tower_ratelimit::ResponseBody<String>>> + Send
{
    let request = send(svc, method, path, key);
    let what = format!("{method} {path}");
    async move {
        let started = Instant::now();
        let response = tokio::time::timeout(Duration::from_secs(2), request)
            .await
            .expect("no request hangs");
        let took = started.elapsed();
        assert!(took < BOUND, "{what} took {took:?}");
        response
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_mid_run_gives_each_failure_policy_within_the_deadline() {
    let mut server = redis_or_skip!();
    let (open, open_store) = node(&server, FailurePolicy::Open).await;
    let (closed, closed_store) = node(&server, FailurePolicy::Closed).await;
    let (local, local_store) = node(&server, FailurePolicy::local(10)).await;
    for (i, svc) in [&open, &closed, &local].into_iter().enumerate() {
        let response = bounded(svc, "GET", "/", &format!("first{i}")).await;
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(
            header(&response, "x-ratelimit-remaining"),
            Some("99"),
            "decided by Redis"
        );
    }

    // Load on all three while Redis dies.
    let mut load = Vec::new();
    for svc in [&open, &closed, &local] {
        for task in 0..3 {
            let svc = svc.clone();
            load.push(tokio::spawn(async move {
                let mut statuses = Vec::new();
                for _ in 0..30 {
                    let response = bounded(&svc, "GET", "/", &format!("load{task}")).await;
                    statuses.push(response.status());
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                statuses
            }));
        }
    }
    tokio::time::sleep(Duration::from_millis(60)).await;
    server.kill();
    for task in load {
        let statuses = task.await.expect("no request panicked");
        assert!(statuses
            .iter()
            .all(|s| *s == StatusCode::OK || *s == StatusCode::TOO_MANY_REQUESTS));
    }

    // Fail open: through, uncounted, and no made-up rate-limit headers.
    for _ in 0..20 {
        let response = bounded(&open, "GET", "/", "k").await;
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(header(&response, "x-ratelimit-remaining"), None);
    }
    // Fail closed: refused, with a Retry-After.
    for _ in 0..20 {
        let response = bounded(&closed, "GET", "/", "k").await;
        assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
        let retry: u64 = header(&response, "retry-after").unwrap().parse().unwrap();
        assert!(
            (1..=1).contains(&retry),
            "the cool-down, rounded up: {retry}"
        );
    }
    // Local fallback: 10 % of 100 per minute, counted in this process.
    let admitted = {
        let mut admitted = 0;
        for _ in 0..20 {
            let response = bounded(&local, "GET", "/", "fresh").await;
            if response.status() == StatusCode::OK {
                admitted += 1;
                assert!(header(&response, "x-ratelimit-limit") == Some("10"));
            }
        }
        admitted
    };
    assert_eq!(admitted, 10);

    for store in [&open_store, &closed_store, &local_store] {
        assert!(store.failures() >= 3, "{store:?}");
        assert!(store.short_circuits() > 0, "the breaker opened: {store:?}");
        // Every failure and short circuit fell back, and so did any call
        // that waited behind this process's own past its deadline while
        // Redis still answered (a timeout that is no failure: a loaded
        // test machine).
        let failed = store.failures() + store.short_circuits();
        assert!(
            (failed..=failed + store.timeouts()).contains(&store.fallbacks()),
            "{store:?}"
        );
    }
}

#[tokio::test]
async fn a_frozen_redis_costs_each_request_at_most_the_deadline() {
    let server = redis_or_skip!();
    let (closed, store) = node(&server, FailurePolicy::Closed).await;
    assert_eq!(
        bounded(&closed, "GET", "/", "k").await.status(),
        StatusCode::OK
    );
    server.freeze();
    let started = Instant::now();
    for _ in 0..10 {
        let response = bounded(&closed, "GET", "/", "k").await;
        assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    }
    let timeouts = store.timeouts();
    let counters = format!("{store:?}");
    server.thaw();
    assert_eq!(
        timeouts, 3,
        "three deadlines missed, then the breaker opened: {counters}"
    );
    assert!(started.elapsed() < Duration::from_millis(3 * 50 + 300));
}

#[tokio::test]
async fn limits_follow_their_own_failure_policies() {
    let mut server = redis_or_skip!();
    let store = RedisStore::builder(server.url())
        .on_failure_of("per_call", FailurePolicy::Closed)
        .connect()
        .await
        .unwrap();
    assert_eq!(
        store.failure_policy("per_key"),
        FailurePolicy::Local { percent: 100 },
        "the default: each process counts alone against the whole quota"
    );
    let svc = service(&RateLimitLayer::with_store(policy(), store));
    server.kill();
    for _ in 0..5 {
        assert_eq!(
            bounded(&svc, "GET", "/calls", "k").await.status(),
            StatusCode::OK
        );
        assert_eq!(
            bounded(&svc, "POST", "/calls/c1/control", "k")
                .await
                .status(),
            StatusCode::TOO_MANY_REQUESTS
        );
    }
}

#[tokio::test]
async fn a_restarted_redis_is_enforced_again_within_two_seconds_without_rebuilding() {
    let mut server = redis_or_skip!();
    let (svc, store) = node(&server, FailurePolicy::Closed).await;
    assert_eq!(
        bounded(&svc, "GET", "/", "k").await.status(),
        StatusCode::OK
    );
    let loads = store.script_loads();
    server.kill();
    for _ in 0..10 {
        assert_eq!(
            bounded(&svc, "GET", "/", "k").await.status(),
            StatusCode::TOO_MANY_REQUESTS
        );
    }
    assert!(store.is_circuit_open());

    server.restart();
    let back = Instant::now();
    loop {
        let response = bounded(&svc, "GET", "/", "k").await;
        if response.status() == StatusCode::OK {
            // A fresh server: the count starts again.
            assert_eq!(header(&response, "x-ratelimit-remaining"), Some("99"));
            break;
        }
        assert!(
            back.elapsed() < Duration::from_secs(2),
            "still refused after 2 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(!store.is_circuit_open());
    assert_eq!(
        store.script_loads(),
        loads + 1,
        "NOSCRIPT: the script was loaded again"
    );
    let response = bounded(&svc, "GET", "/", "k").await;
    assert_eq!(header(&response, "x-ratelimit-remaining"), Some("98"));
}

#[tokio::test]
async fn a_store_built_while_redis_is_down_starts_enforcing_when_it_comes_up() {
    let mut server = redis_or_skip!();
    server.kill();
    let store = RedisStore::builder(server.url())
        .on_failure(FailurePolicy::Closed)
        .build()
        .expect("building does not wait for Redis");
    let svc = service(&RateLimitLayer::with_store(policy(), store));
    assert_eq!(
        bounded(&svc, "GET", "/", "k").await.status(),
        StatusCode::TOO_MANY_REQUESTS
    );
    server.restart();
    let back = Instant::now();
    while bounded(&svc, "GET", "/", "k").await.status() != StatusCode::OK {
        assert!(
            back.elapsed() < Duration::from_secs(2),
            "still refused after 2 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A connect that Redis answers with an error (a wrong password, a
/// database that does not exist) says Redis refused, not that it did not
/// answer, and never shows the password.
#[tokio::test]
async fn a_connect_redis_refuses_says_so_without_the_password() {
    if crate::support::skipped() {
        return;
    }
    let server = crate::support::RedisServer::start();
    let mut admin = server.client().await;
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("requirepass")
        .arg("s3cret-pass")
        .query_async(&mut admin)
        .await
        .unwrap();
    let port = server.port();
    for url in [
        format!("redis://:wrong-pass@127.0.0.1:{port}"),
        format!("redis://:s3cret-pass@127.0.0.1:{port}/99"),
    ] {
        let error = RedisStore::builder(url.as_str())
            .connect()
            .await
            .expect_err("refused");
        let text = error.to_string();
        assert!(text.contains("Redis refused the store"), "{text}");
        assert!(!text.contains("did not answer"), "{text}");
        assert!(!text.contains("pass"), "{text}");
    }
}

#[tokio::test]
async fn calls_redis_runs_after_their_deadline_charge_nothing_and_start_no_ban() {
    let server = redis_or_skip!();
    // 2 a minute per key; 3 refusals within a minute ban the key for 5.
    let penalty = tower_ratelimit::penalty::Penalty::new(
        3,
        Duration::from_secs(60),
        Duration::from_secs(300),
    )
    .unwrap();
    let policy = Policy::builder()
        .key_secret(SECRET)
        .limit(
            Limit::new("per_key", Header::parse("X-API-Key").unwrap())
                .quota(Quota::new(Window::per_minute(2)))
                .penalty(penalty),
        )
        .build()
        .unwrap();
    let store = RedisStore::builder(server.url())
        .deadline(Duration::from_millis(50))
        .on_failure(FailurePolicy::Closed)
        .connect()
        .await
        .unwrap();
    let layer = RateLimitLayer::with_store(policy, store.clone()).decision_extensions(true);
    let svc = service(&layer);
    let first = bounded(&svc, "GET", "/", "k").await;
    assert_eq!(header(&first, "x-ratelimit-remaining"), Some("1"));

    // Redis stalls while 10 requests come at once: each is refused by the
    // failure policy at its deadline, and its call waits in Redis.
    server.freeze();
    let stalled: Vec<_> = (0..10)
        .map(|_| tokio::spawn(bounded(&svc, "GET", "/", "k")))
        .collect();
    for request in stalled {
        let response = request.await.unwrap();
        assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    }
    server.thaw();
    // Redis runs them now, past the moment they were given up: none may
    // charge the key's window or count as a refusal towards a ban. (The
    // breaker, open after the stall, lets a call through after 100 ms.)
    tokio::time::sleep(Duration::from_millis(400)).await;
    let after = bounded(&svc, "GET", "/", "k").await;
    assert_eq!(after.status(), StatusCode::OK, "{store:?}");
    assert_eq!(header(&after, "x-ratelimit-remaining"), Some("0"));
    let refused = bounded(&svc, "GET", "/", "k").await;
    let decision = refused
        .extensions()
        .get::<tower_ratelimit::Decision>()
        .unwrap();
    assert_eq!(
        decision.refusal(),
        Some(tower_ratelimit::RefusalReason::Window),
        "refused by its window, not banned"
    );
}
