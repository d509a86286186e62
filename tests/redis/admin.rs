//! The admin API on the Redis store, side by side with the memory store
//! (`tests/admin` has its other scenarios): a peek consumes nothing and
//! reads what the memory store reads, a reset applies on the next request
//! (a ban and a refusal this process cached included, and those another
//! process remembers), an override too, and a peek counts the slots in
//! flight across processes.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use http::{Method, Request, Response, StatusCode};
use serde_json::{json, Value};
use tower::util::BoxCloneService;
use tower::{service_fn, Layer};
use tower_ratelimit::clock::ManualClock;
use tower_ratelimit::key::{Header, KeySecret};
use tower_ratelimit::penalty::Penalty;
use tower_ratelimit::store::redis::RedisStore;
use tower_ratelimit::store::{MemoryStore, Store};
use tower_ratelimit::{admin, Limit, Policy, Quota, RateLimitLayer, Tiers, Window};

use crate::support::{header, on_layer_clock, RedisServer, Svc};

#[path = "../support/admin_call.rs"]
mod admin_call;
use admin_call::{admin_call, limits_and_remaining};

const T0: u64 = 1_700_000_040;

/// 60 a minute and 1000 an hour (plan `scale`: 600 a minute), 10 an hour
/// on `POST /v1/keys`; with `penalty`, 2 refusals within 60 s ban the key
/// for 300 s; with `in_flight`, at most 2 requests of a key at once.
fn policy(penalty: bool, in_flight: bool) -> Policy {
    let mut quota = Quota::new(Window::per_minute(60)).and(Window::per_hour(1000));
    if in_flight {
        quota = quota.max_in_flight(2);
    }
    let tiers = Tiers::new(quota).plan("scale", Quota::new(Window::per_minute(600)));
    let mut limit = Limit::new("per_key", Header::parse("X-API-Key").unwrap())
        .route("POST /v1/keys", Quota::new(Window::per_hour(10)))
        .quota(tiers);
    if penalty {
        let rule = Penalty::new(2, Duration::from_secs(60), Duration::from_secs(300)).unwrap();
        limit = limit.penalty(rule);
    }
    Policy::builder()
        .key_secret(KeySecret::from_bytes(*b"admin on redis!!"))
        .limit(limit)
        .build()
        .unwrap()
}

/// One layer's service and admin router, on a manual clock at `T0`.
struct Harness {
    svc: Svc,
    admin: axum::Router,
    clock: ManualClock,
}

impl Harness {
    fn new<St: Store>(policy: Policy, store: St) -> Self {
        let clock = ManualClock::at_unix_secs(T0);
        let layer = RateLimitLayer::with_store(policy, store).clock(clock.clone());
        let inner = service_fn(|_req: Request<String>| async {
            Ok::<_, Infallible>(Response::new(String::from("ok")))
        });
        Harness {
            svc: BoxCloneService::new(layer.layer(inner)),
            admin: admin::router(&layer),
            clock,
        }
    }

    /// `(status, X-RateLimit-Limit, X-RateLimit-Remaining)` of a request of `key`.
    async fn send(&self, key: &str) -> (StatusCode, String, String) {
        let response = crate::support::send(&self.svc, "GET", "/v1/calls", key).await;
        let text = |name| header(&response, name).unwrap_or_default().to_owned();
        let (limit, remaining) = (text("x-ratelimit-limit"), text("x-ratelimit-remaining"));
        (response.status(), limit, remaining)
    }

    async fn admin(&self, method: Method, path: &str, body: &str) -> (StatusCode, Value) {
        admin_call(&self.admin, method, path, body).await
    }

    async fn peek(&self, key: &str) -> Value {
        let (status, peek) = self
            .admin(Method::GET, &format!("/limits/per_key/keys/{key}"), "")
            .await;
        assert_eq!(status, StatusCode::OK, "{peek}");
        peek
    }
}

/// A Redis store on the layer's clock (so that it reads as the memory
/// store does at the same moments).
async fn redis_store(server: &RedisServer) -> RedisStore {
    on_layer_clock(RedisStore::builder(server.url())).await
}

/// The same policy on the memory store and on Redis.
async fn twins(server: &RedisServer, penalty: bool) -> (Harness, Harness, RedisStore) {
    let store = redis_store(server).await;
    let memory = Harness::new(policy(penalty, false), MemoryStore::new());
    let redis = Harness::new(policy(penalty, false), store.clone());
    (memory, redis, store)
}

/// The `GET /v1/calls` route's windows in a peek: `[(limit, remaining)]`.
fn calls_windows(peek: &Value) -> Vec<(u64, u64)> {
    limits_and_remaining(&peek["routes"][1])
}

#[tokio::test]
async fn a_peek_on_redis_consumes_nothing_and_reads_as_the_memory_store() {
    let server = redis_or_skip!();
    let (memory, redis, store) = twins(&server, true).await;
    for h in [&memory, &redis] {
        h.send("k1").await;
        h.send("k1").await;
    }
    for _ in 0..3 {
        let peek = redis.peek("k1").await;
        assert_eq!(calls_windows(&peek), [(60, 58), (1000, 998)], "{peek}");
        assert_eq!(peek["routes"][0]["windows"][0]["remaining"], 10);
        assert_eq!(peek["banned_for"], Value::Null);
        assert_eq!(peek, memory.peek("k1").await);
    }
    // A second and a half later, 1.5 requests have come back: 1 whole one.
    for h in [&memory, &redis] {
        h.clock.advance(Duration::from_millis(1500));
    }
    let peek = redis.peek("k1").await;
    assert_eq!(calls_windows(&peek), [(60, 59), (1000, 998)], "{peek}");
    assert_eq!(peek, memory.peek("k1").await);
    assert_eq!(redis.send("k1").await, memory.send("k1").await);
    assert_eq!(redis.send("k1").await.2, "57");
    assert_eq!(store.failures(), 0);
}

#[tokio::test]
async fn a_reset_on_redis_lifts_a_ban_and_deletes_the_keys() {
    let server = redis_or_skip!();
    let (memory, redis, store) = twins(&server, true).await;
    for h in [&memory, &redis] {
        for _ in 0..60 {
            assert_eq!(h.send("k2").await.0, StatusCode::OK);
        }
        for _ in 0..2 {
            assert_eq!(h.send("k2").await.0, StatusCode::TOO_MANY_REQUESTS);
        }
    }
    let peek = redis.peek("k2").await;
    assert_eq!(peek["banned_for"], 300, "{peek}");
    assert_eq!(calls_windows(&peek), [(60, 0), (1000, 940)]);
    assert_eq!(peek, memory.peek("k2").await);
    // Banned here too, without a call to Redis.
    assert_eq!(redis.send("k2").await.0, StatusCode::TOO_MANY_REQUESTS);

    let (status, body) = redis
        .admin(Method::DELETE, "/limits/per_key/keys/k2", "")
        .await;
    assert_eq!(
        (status, body),
        (StatusCode::OK, json!({"limit": "per_key", "reset": true}))
    );
    assert_eq!(
        server.keys().await,
        Vec::<String>::new(),
        "bucket, ban, refusals"
    );
    assert_eq!(
        redis.send("k2").await,
        (StatusCode::OK, "60".into(), "59".into())
    );
    let peek = redis.peek("k2").await;
    assert_eq!(peek["banned_for"], Value::Null);
    assert_eq!(calls_windows(&peek), [(60, 59), (1000, 999)]);
    assert_eq!(store.failures(), 0);
}

#[tokio::test]
async fn a_reset_on_redis_clears_a_refusal_cached_in_this_process() {
    let server = redis_or_skip!();
    let (_, redis, store) = twins(&server, false).await;
    for _ in 0..60 {
        assert_eq!(redis.send("k3").await.0, StatusCode::OK);
    }
    assert_eq!(redis.send("k3").await.0, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(redis.send("k3").await.0, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(store.cached_refusals(), 1, "the second refusal was cached");

    let (status, _) = redis
        .admin(Method::DELETE, "/limits/per_key/keys/k3", "")
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        redis.send("k3").await,
        (StatusCode::OK, "60".into(), "59".into())
    );
    assert_eq!(store.cached_refusals(), 1);
}

/// Resets `key` through `a`'s admin API, then sends `key`'s request
/// through `b` until it is admitted (a refusal from memory charges nothing),
/// at most 2 s: the reset reached `b`'s process, and `b` counts afresh.
async fn reset_reaches(a: &Harness, b: &Harness, key: &str) {
    let path = format!("/limits/per_key/keys/{key}");
    let (status, _) = a.admin(Method::DELETE, &path, "").await;
    assert_eq!(status, StatusCode::OK);
    for _ in 0..200 {
        let answer = b.send(key).await;
        if answer.0 == StatusCode::OK {
            assert_eq!(answer, (StatusCode::OK, "60".into(), "59".into()), "{key}");
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the reset of {key} never reached the other process");
}

#[tokio::test]
async fn a_reset_on_one_process_reaches_the_refusals_and_bans_others_remember() {
    let server = redis_or_skip!();
    // Two processes: their own stores and layers, one Redis.
    let (store_a, store_b) = (redis_store(&server).await, redis_store(&server).await);
    for penalty in [false, true] {
        let key = if penalty { "banned" } else { "refused" };
        let a = Harness::new(policy(penalty, false), store_a.clone());
        let b = Harness::new(policy(penalty, false), store_b.clone());
        for _ in 0..60 {
            assert_eq!(b.send(key).await.0, StatusCode::OK);
        }
        let cached = store_b.cached_refusals();
        for _ in 0..3 {
            assert_eq!(b.send(key).await.0, StatusCode::TOO_MANY_REQUESTS);
        }
        // B refuses from memory now: its deny cache without a penalty, the
        // ban it saw with one (the clock stands still, so neither ends).
        if !penalty {
            assert!(store_b.cached_refusals() > cached, "B cached the refusal");
        }
        let peek = a.peek(key).await;
        assert_eq!(
            peek["banned_for"],
            if penalty { json!(300) } else { Value::Null }
        );

        reset_reaches(&a, &b, key).await;
    }
    assert_eq!(store_a.failures() + store_b.failures(), 0);
}

#[tokio::test]
async fn a_user_refused_the_resets_channel_resets_all_the_same_and_is_told() {
    let server = redis_or_skip!();
    let warnings = crate::log_text::LogText::up_to(tracing::Level::WARN);
    let _logs = tracing::subscriber::set_default(warnings.clone());
    // A least-privilege user: every key and command, but no channel.
    let mut root = server.client().await;
    redis::cmd("ACL")
        .arg(&[
            "SETUSER",
            "app",
            "on",
            ">pw",
            "~*",
            "+@all",
            "resetchannels",
        ])
        .query_async::<()>(&mut root)
        .await
        .unwrap();
    let url = format!("redis://app:pw@127.0.0.1:{}", server.port());
    let store = on_layer_clock(RedisStore::builder(&url)).await;
    let a = Harness::new(policy(false, false), store.clone());
    for _ in 0..60 {
        assert_eq!(a.send("k").await.0, StatusCode::OK);
    }
    assert_eq!(a.send("k").await.0, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(store.cached_refusals(), 0, "the first refusal is Redis's");

    // The keys are deleted and this process forgets the refusal: a 200,
    // not a 503, and no failure of Redis (the breaker stays closed).
    let (status, body) = a.admin(Method::DELETE, "/limits/per_key/keys/k", "").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        a.send("k").await,
        (StatusCode::OK, "60".into(), "59".into())
    );
    assert_eq!(store.failures(), 0);

    // What other processes miss is said at `warn`: the subscription and
    // the reset Redis would not publish.
    let said = warnings.text();
    assert!(said.contains("cannot subscribe to resets"), "{said}");
    assert!(said.contains("refused to publish"), "{said}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_cluster_a_reset_reaches_every_store_whichever_node_holds_the_key() {
    let cluster = cluster_or_skip!();
    let store = || on_layer_clock(RedisStore::cluster_builder(cluster.urls()));
    let (store_a, store_b) = (store().await, store().await);
    let a = Harness::new(policy(false, false), store_a.clone());
    let b = Harness::new(policy(false, false), store_b.clone());
    // Keys spread over the nodes: each reset is published on its key's
    // node, and the cluster passes it on to every node.
    for key in ["k-one", "k-two", "k-three", "k-four"] {
        for _ in 0..60 {
            assert_eq!(b.send(key).await.0, StatusCode::OK);
        }
        let cached = store_b.cached_refusals();
        for _ in 0..2 {
            assert_eq!(b.send(key).await.0, StatusCode::TOO_MANY_REQUESTS);
        }
        assert!(store_b.cached_refusals() > cached, "{key}: B cached it");
        reset_reaches(&a, &b, key).await;
    }
    assert_eq!(store_a.failures() + store_b.failures(), 0);
}

#[tokio::test]
async fn a_store_that_subscribes_again_forgets_what_it_remembers() {
    let server = redis_or_skip!();
    let store = redis_store(&server).await;
    let h = Harness::new(policy(false, false), store.clone());
    for _ in 0..60 {
        assert_eq!(h.send("k4").await.0, StatusCode::OK);
    }
    assert_eq!(h.send("k4").await.0, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(h.send("k4").await.0, StatusCode::TOO_MANY_REQUESTS);
    let cached = store.cached_refusals();
    assert!(cached >= 1, "the refusal is remembered");
    // The resets channel's connection drops: resets may be missed while it
    // is away, so once subscribed again the store asks Redis (still a
    // refusal: nothing was reset) instead of its memory.
    let mut admin = server.client().await;
    let killed: i64 = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("TYPE")
        .arg("pubsub")
        .query_async(&mut admin)
        .await
        .unwrap();
    assert_eq!(killed, 1, "the store's one subscriber");
    let mut asked_redis = false;
    for _ in 0..200 {
        tokio::time::sleep(Duration::from_millis(10)).await;
        let before = store.cached_refusals();
        assert_eq!(h.send("k4").await.0, StatusCode::TOO_MANY_REQUESTS);
        if store.cached_refusals() == before {
            asked_redis = true;
            break;
        }
    }
    assert!(asked_redis, "the store never forgot its cached refusal");
    // And remembers the new refusal.
    let before = store.cached_refusals();
    assert_eq!(h.send("k4").await.0, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(store.cached_refusals(), before + 1);
    assert_eq!(store.failures(), 0);
}

#[tokio::test]
async fn overrides_on_redis_apply_on_the_next_request_and_peek_converts_counts() {
    let server = redis_or_skip!();
    let (memory, redis, _) = twins(&server, false).await;
    let path = "/limits/per_key/keys/k4/override";
    for h in [&memory, &redis] {
        for _ in 0..3 {
            h.send("k4").await;
        }
        let body = r#"{"windows": ["120/minute", "5000/hour"]}"#;
        assert_eq!(h.admin(Method::PUT, path, body).await.0, StatusCode::OK);
    }
    // Used 3 of 60 a minute: 3 of 120, the same count at the new rate.
    let peek = redis.peek("k4").await;
    assert_eq!(calls_windows(&peek), [(120, 117), (5000, 4997)], "{peek}");
    assert_eq!(peek, memory.peek("k4").await);
    let sent = redis.send("k4").await;
    assert_eq!(sent, (StatusCode::OK, "120".into(), "116".into()));
    assert_eq!(sent, memory.send("k4").await);

    for h in [&memory, &redis] {
        let (status, _) = h.admin(Method::PUT, path, r#"{"plan": "scale"}"#).await;
        assert_eq!(status, StatusCode::OK);
        h.clock.advance(Duration::from_millis(250));
    }
    let peek = redis.peek("k4").await;
    assert_eq!(peek, memory.peek("k4").await);
    assert_eq!(redis.send("k4").await.1, "600");
    let (status, body) = redis.admin(Method::DELETE, path, "").await;
    assert_eq!((status, &body["removed"]), (StatusCode::OK, &json!(true)));
    assert_eq!(redis.send("k4").await.1, "60");
}

#[tokio::test]
async fn a_peek_on_redis_counts_the_slots_every_node_holds() {
    let server = redis_or_skip!();
    let release = Arc::new(tokio::sync::Semaphore::new(0));
    let held = Arc::clone(&release);
    let clock = ManualClock::at_unix_secs(T0);
    let mut nodes = Vec::new();
    for _ in 0..2 {
        let layer = RateLimitLayer::with_store(policy(false, true), redis_store(&server).await)
            .clock(clock.clone());
        let held = Arc::clone(&held);
        let inner = service_fn(move |_req: Request<String>| {
            let held = Arc::clone(&held);
            async move {
                held.acquire().await.unwrap().forget();
                Ok::<_, Infallible>(Response::new(String::from("ok")))
            }
        });
        let svc: Svc = BoxCloneService::new(layer.layer(inner));
        nodes.push((svc, admin::router(&layer)));
    }
    let in_flight = |router: axum::Router| async move {
        let (status, peek) = admin_call(&router, Method::GET, "/limits/per_key/keys/k5", "").await;
        assert_eq!(status, StatusCode::OK, "{peek}");
        peek["in_flight"].clone()
    };
    assert_eq!(in_flight(nodes[0].1.clone()).await, 0);
    // One request in flight on each node: each node sees both.
    let requests: Vec<_> = nodes
        .iter()
        .map(|(svc, _)| tokio::spawn(crate::support::send(svc, "GET", "/v1/calls", "k5")))
        .collect();
    let mut seen = Value::Null;
    for _ in 0..200 {
        seen = in_flight(nodes[1].1.clone()).await;
        if seen == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(seen, 2);
    assert_eq!(in_flight(nodes[0].1.clone()).await, 2);
    release.add_permits(2);
    for request in requests {
        assert_eq!(request.await.unwrap().status(), StatusCode::OK);
    }
    // Released by each node's upkeep, soon after.
    for _ in 0..200 {
        seen = in_flight(nodes[0].1.clone()).await;
        if seen == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(seen, 0);
}

#[tokio::test]
async fn peek_and_reset_answer_503_when_redis_does_not_answer() {
    let mut server = redis_or_skip!();
    let store = RedisStore::builder(server.url())
        .layer_clock()
        .deadline(Duration::from_millis(100))
        .connect()
        .await
        .unwrap();
    let redis = Harness::new(policy(true, false), store);
    server.kill();
    for method in [Method::GET, Method::DELETE] {
        let (status, body) = redis
            .admin(method.clone(), "/limits/per_key/keys/k6", "")
            .await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{method}: {body}");
        assert_eq!(body["field"], "store");
    }
}
