//! Penalties across processes: refusals counted on any node add up in
//! Redis, a ban started by one node refuses on every node, and it lifts on
//! time everywhere.

use std::time::Duration;

use http::StatusCode;
use tower_ratelimit::clock::ManualClock;
use tower_ratelimit::key::Header;
use tower_ratelimit::penalty::Penalty;
use tower_ratelimit::store::redis::{FailurePolicy, RedisStore};
use tower_ratelimit::{Limit, Policy, Quota, RateLimitLayer, Window};

use crate::support::{header, send, service, Svc, SECRET};

const T0: u64 = 1_700_000_000;

/// One request a minute per key; 3 refusals within 60 s ban the key for
/// 300 s.
fn policy() -> Policy {
    Policy::builder()
        .key_secret(SECRET)
        .limit(
            Limit::new("per_key", Header::parse("X-API-Key").unwrap())
                .quota(Quota::new(Window::per_minute(1)))
                .penalty(
                    Penalty::new(3, Duration::from_secs(60), Duration::from_secs(300)).unwrap(),
                ),
        )
        .build()
        .unwrap()
}

/// A limit of one `window` per value of `header`, whose `refusals`
/// refusals within 60 s ban that value for `ban_secs`.
fn banning(name: String, header: &str, window: Window, refusals: u32, ban_secs: u64) -> Limit {
    let ban = Duration::from_secs(ban_secs);
    Limit::new(name, Header::parse(header).unwrap())
        .quota(Quota::new(window))
        .penalty(Penalty::new(refusals, Duration::from_secs(60), ban).unwrap())
}

/// Two nodes on one Redis, on one manual clock (the layer's, so that the
/// test can move time).
async fn two_nodes(server: &crate::support::RedisServer, clock: &ManualClock) -> [Svc; 2] {
    nodes_of(server, clock, policy, |layer| layer).await
}

/// Two nodes of `policy()` on one Redis and one manual clock, each layer
/// finished by `finish`.
async fn nodes_of(
    server: &crate::support::RedisServer,
    clock: &ManualClock,
    policy: impl Fn() -> Policy,
    finish: impl Fn(RateLimitLayer<RedisStore>) -> RateLimitLayer<RedisStore>,
) -> [Svc; 2] {
    let mut nodes = Vec::new();
    for _ in 0..2 {
        let store = RedisStore::builder(server.url())
            .layer_clock()
            .deadline(Duration::from_secs(2))
            .connect()
            .await
            .unwrap();
        let layer = RateLimitLayer::with_store(policy(), store).clock(clock.clone());
        nodes.push(service(&finish(layer)));
    }
    nodes.try_into().ok().unwrap()
}

async fn status(svc: &Svc, key: &str) -> (StatusCode, Option<u64>) {
    let response = send(svc, "GET", "/v1/calls", key).await;
    let retry = header(&response, "retry-after").map(|v| v.parse().unwrap());
    (response.status(), retry)
}

#[tokio::test]
async fn refusals_on_both_nodes_add_up_and_the_ban_holds_on_every_node() {
    let server = redis_or_skip!();
    let clock = ManualClock::at_unix_secs(T0);
    let [a, b] = two_nodes(&server, &clock).await;
    assert_eq!(status(&a, "k").await, (StatusCode::OK, None));
    // Refusals alternate between the nodes: only their sum reaches 3.
    clock.advance(Duration::from_secs(1));
    assert_eq!(
        status(&b, "k").await,
        (StatusCode::TOO_MANY_REQUESTS, Some(59))
    );
    clock.advance(Duration::from_secs(1));
    assert_eq!(
        status(&a, "k").await,
        (StatusCode::TOO_MANY_REQUESTS, Some(58))
    );
    clock.advance(Duration::from_secs(1));
    // The third starts the ban: its Retry-After is the ban's.
    assert_eq!(
        status(&b, "k").await,
        (StatusCode::TOO_MANY_REQUESTS, Some(300))
    );
    // Node A never saw the ban start; Redis refuses for it, with the time
    // left, and without counting a refusal (a ban is not extended).
    clock.advance(Duration::from_secs(100));
    assert_eq!(
        status(&a, "k").await,
        (StatusCode::TOO_MANY_REQUESTS, Some(200))
    );
    // Now both nodes know it and refuse without asking Redis.
    for _ in 0..5 {
        assert_eq!(
            status(&a, "k").await,
            (StatusCode::TOO_MANY_REQUESTS, Some(200))
        );
        assert_eq!(
            status(&b, "k").await,
            (StatusCode::TOO_MANY_REQUESTS, Some(200))
        );
    }
    // Other keys are not touched.
    assert_eq!(status(&a, "other").await.0, StatusCode::OK);
    // One nanosecond before it ends, it holds; at its end it lifts on both.
    clock.advance(Duration::from_secs(200) - Duration::from_nanos(1));
    assert_eq!(
        status(&b, "k").await,
        (StatusCode::TOO_MANY_REQUESTS, Some(1))
    );
    clock.advance(Duration::from_nanos(1));
    assert_eq!(status(&a, "k").await, (StatusCode::OK, None));
    // The count starts fresh: two refusals do not ban again.
    assert_eq!(status(&b, "k").await.1, Some(60));
    assert_eq!(status(&a, "k").await.1, Some(60));
    clock.advance(Duration::from_secs(60));
    assert_eq!(status(&b, "k").await, (StatusCode::OK, None));
}

#[tokio::test]
async fn ban_and_refusal_keys_hold_no_raw_key_and_expire() {
    let server = redis_or_skip!();
    let clock = ManualClock::at_unix_secs(T0);
    let [a, b] = two_nodes(&server, &clock).await;
    let raw = "sk_live_RAWSECRET";
    assert_eq!(status(&a, raw).await.0, StatusCode::OK);
    assert_eq!(status(&b, raw).await.1, Some(60));
    let keys = server.keys().await;
    let mut client = server.client().await;
    assert!(keys.iter().any(|k| k.ends_with(":refusals")), "{keys:?}");
    for key in &keys {
        assert!(!key.contains("RAWSECRET"), "{key}");
        let ttl: i64 = redis::cmd("PTTL")
            .arg(key)
            .query_async(&mut client)
            .await
            .unwrap();
        assert!(ttl > 0, "{key} has a TTL");
    }
    clock.advance(Duration::from_secs(1));
    assert_eq!(status(&a, raw).await.1, Some(59));
    assert_eq!(status(&b, raw).await.1, Some(300));
    let keys = server.keys().await;
    assert!(keys.iter().any(|k| k.ends_with(":ban")), "{keys:?}");
    assert!(
        !keys.iter().any(|k| k.ends_with(":refusals")),
        "dropped when the ban starts: {keys:?}"
    );
    for key in keys.iter().filter(|k| k.ends_with(":ban")) {
        let ttl: i64 = redis::cmd("PTTL")
            .arg(key)
            .query_async(&mut client)
            .await
            .unwrap();
        // On the layer's clock: the ban's 300 s, plus its slack of 300 s
        // and 1 s.
        assert!(ttl > 0 && ttl <= 601_002, "{key}: {ttl}");
    }
}

#[tokio::test]
async fn while_redis_is_down_the_local_share_counts_refusals_and_bans_in_this_process() {
    let mut server = redis_or_skip!();
    let clock = ManualClock::at_unix_secs(T0);
    let store = RedisStore::builder(server.url())
        .layer_clock()
        .deadline(Duration::from_millis(50))
        .on_failure(FailurePolicy::local(100))
        .connect()
        .await
        .unwrap();
    let node = service(&RateLimitLayer::with_store(policy(), store.clone()).clock(clock.clone()));
    server.kill();
    // The local share is the whole limit: one a minute.
    assert_eq!(status(&node, "k").await, (StatusCode::OK, None));
    clock.advance(Duration::from_secs(1));
    assert_eq!(status(&node, "k").await.1, Some(59));
    clock.advance(Duration::from_secs(1));
    assert_eq!(status(&node, "k").await.1, Some(58));
    clock.advance(Duration::from_secs(1));
    // The third refusal starts the ban, as it would in Redis.
    assert_eq!(
        status(&node, "k").await,
        (StatusCode::TOO_MANY_REQUESTS, Some(300))
    );
    // It holds past the window: the minute's slot is free again, the key
    // is still refused, with the ban's time left.
    clock.advance(Duration::from_secs(100));
    assert_eq!(
        status(&node, "k").await,
        (StatusCode::TOO_MANY_REQUESTS, Some(200))
    );
    assert_eq!(status(&node, "other").await.0, StatusCode::OK);
    clock.advance(Duration::from_secs(200));
    assert_eq!(status(&node, "k").await, (StatusCode::OK, None));
    // Seven requests, six decided by the local share: the banned key was
    // refused from the bans this process knows, without asking anyone.
    assert_eq!(store.fallbacks(), 6, "{store:?}");
    assert_eq!(store.decisions(), 0);
}

#[tokio::test]
async fn a_refusal_that_starts_two_bans_in_redis_reports_both_and_every_node_waits_for_the_longer()
{
    let server = redis_or_skip!();
    let clock = ManualClock::at_unix_secs(T0);
    let policy = || {
        Policy::builder()
            .key_secret(SECRET)
            .limit(banning(
                "a".into(),
                "X-API-Key",
                Window::per_minute(1),
                2,
                100,
            ))
            .limit(banning(
                "b".into(),
                "X-API-Key",
                Window::per_minute(1),
                2,
                300,
            ))
            .build()
            .unwrap()
    };
    let events = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let hook = |layer: RateLimitLayer<RedisStore>| {
        let record = std::sync::Arc::clone(&events);
        layer.on_event(move |e| {
            if e.kind() == tower_ratelimit::EventKind::Banned {
                record.lock().unwrap().push(e.limit().to_owned());
            }
        })
    };
    let [one, other] = &nodes_of(&server, &clock, policy, hook).await;
    assert_eq!(status(one, "k").await, (StatusCode::OK, None));
    assert_eq!(
        status(one, "k").await,
        (StatusCode::TOO_MANY_REQUESTS, Some(60))
    );
    // Both limits' second refusal: both ban; the answer waits for the longer.
    assert_eq!(
        status(one, "k").await,
        (StatusCode::TOO_MANY_REQUESTS, Some(300))
    );
    assert_eq!(*events.lock().unwrap(), ["a", "b"]);
    // The other node has seen neither ban: Redis answers with the longer.
    clock.advance(Duration::from_secs(50));
    assert_eq!(
        status(other, "k").await,
        (StatusCode::TOO_MANY_REQUESTS, Some(250))
    );
    clock.advance(Duration::from_secs(250));
    assert_eq!(status(other, "k").await.0, StatusCode::OK);
}

#[tokio::test]
async fn of_equal_bans_the_first_limit_s_answers_in_redis_as_in_memory() {
    use tower::ServiceExt;
    let server = redis_or_skip!();
    // Two limits of two principals (two script calls), banning alike.
    let policy = || {
        Policy::builder()
            .key_secret(SECRET)
            .limit(banning(
                "a".into(),
                "X-API-Key",
                Window::per_minute(1),
                2,
                300,
            ))
            .limit(banning("b".into(), "X-Tenant", Window::per_hour(1), 2, 300))
            .build()
            .unwrap()
    };
    // The limit each answer names: the ban starting, then in force.
    async fn named(svc: &Svc, clock: &ManualClock, key: &str) -> Vec<u16> {
        let mut limits = Vec::new();
        for step in 0..4 {
            if step == 3 {
                clock.advance(Duration::from_secs(10));
            }
            let request = http::Request::get("/v1/calls")
                .header("x-api-key", key)
                .header("x-tenant", key)
                .body(String::new())
                .unwrap();
            let response = svc.clone().oneshot(request).await.unwrap();
            let decision = response.extensions().get::<tower_ratelimit::Decision>();
            if step >= 2 {
                assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
                limits.push(decision.unwrap().reported().unwrap().limit_index);
            }
        }
        limits
    }
    for n in 0..8 {
        let key = format!("k{n}");
        let clock = ManualClock::at_unix_secs(T0);
        let memory = RateLimitLayer::new(policy())
            .clock(clock.clone())
            .decision_extensions(true);
        let in_memory = named(&service(&memory), &clock, &key).await;
        let clock = ManualClock::at_unix_secs(T0 + 1_000 * (n + 1));
        let store = RedisStore::builder(server.url())
            .layer_clock()
            .deadline(Duration::from_secs(2))
            .connect()
            .await
            .unwrap();
        let redis = RateLimitLayer::with_store(policy(), store)
            .clock(clock.clone())
            .decision_extensions(true);
        let in_redis = named(&service(&redis), &clock, &key).await;
        assert_eq!(in_memory, [0, 0], "{key}");
        assert_eq!(in_redis, in_memory, "{key}");
    }
}

#[tokio::test]
async fn a_refusal_that_starts_bans_on_many_limits_is_still_a_refusal() {
    let server = redis_or_skip!();
    let clock = ManualClock::at_unix_secs(T0);
    // 46 limits of one principal: one script call, which names the checks
    // that banned in one number (the first 32 of them).
    let many = || {
        let limits =
            (0..46).map(|i| banning(format!("l{i}"), "X-API-Key", Window::per_minute(1), 1, 300));
        limits
            .fold(Policy::builder().key_secret(SECRET), |p, l| p.limit(l))
            .build()
            .unwrap()
    };
    let [node, _] = &nodes_of(&server, &clock, many, |layer| layer).await;
    assert_eq!(status(node, "k").await, (StatusCode::OK, None));
    assert_eq!(
        status(node, "k").await,
        (StatusCode::TOO_MANY_REQUESTS, Some(300))
    );
    assert_eq!(
        status(node, "k").await,
        (StatusCode::TOO_MANY_REQUESTS, Some(300))
    );
}
