//! Requests over several principals (hash slots): decided group by group,
//! all or nothing. A refusal by a later group gives back what earlier
//! groups charged, shadow checks and penalties keep their rules across
//! groups, and concurrent requests on a shared principal never get past its
//! quota.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tower_ratelimit::key::{Header, PathCapture};
use tower_ratelimit::penalty::Penalty;
use tower_ratelimit::store::protocol::Check;
use tower_ratelimit::store::redis::RedisStore;
use tower_ratelimit::{Algorithm, Limit, Policy, Quota, RateLimitLayer, Window};

use crate::support::{decide, send, service, RedisServer, SECRET};

const NOW: u64 = 1_700_000_000_000_000_000;
/// Two principals; `A` sorts first, so its group is decided first.
const A: u64 = 0x0a;
const B: u64 = 0x0b;

async fn store(server: &RedisServer) -> RedisStore {
    // Every decision reaches the script: no refusal from the deny cache.
    RedisStore::builder(server.url())
        .layer_clock()
        .deadline(Duration::from_secs(5))
        .deny_cache(false)
        .connect()
        .await
        .unwrap()
}

#[tokio::test]
async fn a_refusal_by_a_later_principal_leaves_the_earlier_uncharged() {
    let server = redis_or_skip!();
    let store = store(&server).await;
    let gcra = Quota::new(Window::per_minute(10)).and(Window::per_hour(100));
    let fixed = Quota::new(Window::per_minute(10)).algorithm(Algorithm::FixedWindow);
    let one = Quota::new(Window::per_minute(1));
    // Principal A's buckets hold a count; B's one-a-minute bucket is used.
    let a_only = [
        Check::new(1, &gcra).of_principal(A),
        Check::new(2, &fixed).of_principal(A),
    ];
    assert!(decide(&store, NOW, &a_only).await.admitted());
    assert!(decide(&store, NOW, &[Check::new(3, &one).of_principal(B)])
        .await
        .admitted());
    let before = server.values().await;
    assert_eq!(before.len(), 3, "{before:?}");

    // A admits and is charged first; B refuses; A's charges are given back.
    let both = [
        Check::new(1, &gcra).of_principal(A),
        Check::new(2, &fixed).of_principal(A),
        Check::new(3, &one).of_principal(B),
        // A fresh bucket of A: it leaves no key behind.
        Check::new(4, &fixed).of_principal(A),
    ];
    for _ in 0..3 {
        let refused = decide(&store, NOW, &both).await;
        assert!(!refused.admitted());
        let remaining: Vec<u32> = refused.windows().iter().map(|w| w.remaining).collect();
        assert_eq!(remaining, [9, 99, 9, 0, 10], "the statuses charge nothing");
        assert_eq!(server.values().await, before, "every value as it was");
    }
    // Reversed: B is decided first and refuses; A only reads.
    let reversed = [
        Check::new(3, &one).of_principal(A),
        Check::new(1, &gcra).of_principal(B),
    ];
    let mut client = server.client().await;
    let _: () = redis::cmd("FLUSHALL")
        .query_async(&mut client)
        .await
        .unwrap();
    assert!(decide(&store, NOW, &reversed[..1]).await.admitted());
    assert!(!decide(&store, NOW, &reversed).await.admitted());
    assert_eq!(server.keys().await.len(), 1, "B was not charged");
    assert_eq!(store.failures(), 0);
}

#[tokio::test]
async fn concurrent_requests_on_a_shared_principal_never_get_past_its_quota() {
    let server = redis_or_skip!();
    // Two nodes.
    let nodes = [
        Arc::new(store(&server).await),
        Arc::new(store(&server).await),
    ];
    let gcra = Arc::new(Quota::new(Window::per_minute(5)).and(Window::per_hour(50)));
    let fixed = Arc::new(Quota::new(Window::per_minute(5)).algorithm(Algorithm::FixedWindow));
    let one = Arc::new(Quota::new(Window::per_minute(1)));
    let admitted = Arc::new(AtomicUsize::new(0));
    let refused_by_other = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for i in 0..200u64 {
        let store = Arc::clone(&nodes[(i % 2) as usize]);
        let (gcra, fixed, one) = (Arc::clone(&gcra), Arc::clone(&fixed), Arc::clone(&one));
        let (admitted, refused_by_other) = (Arc::clone(&admitted), Arc::clone(&refused_by_other));
        tasks.push(tokio::spawn(async move {
            // Every request charges the shared principal A and one of a few
            // other principals, each of which admits one request a minute:
            // most requests are refused by their second group after A was
            // charged, and A is refunded.
            let other = 0x100 + i % 8;
            let checks = [
                Check::new(1, &gcra).of_principal(A),
                Check::new(2, &fixed).of_principal(A),
                Check::new(other, &one).of_principal(other),
            ];
            let outcome = decide(&store, NOW, &checks).await;
            if outcome.admitted() {
                admitted.fetch_add(1, Ordering::SeqCst);
            } else if outcome.windows()[..3].iter().all(|w| w.retry_after == 0) {
                // A admitted (and was charged, then refunded): B refused.
                refused_by_other.fetch_add(1, Ordering::SeqCst);
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let admitted = admitted.load(Ordering::SeqCst);
    assert!(admitted >= 1, "someone got through");
    assert!(admitted <= 5, "{admitted} admitted past a quota of 5");
    assert!(
        refused_by_other.load(Ordering::SeqCst) > 0,
        "refunds happened"
    );
    // Fixed windows are refunded exactly: the count is the admissions'.
    let probe = decide(&nodes[0], NOW, &[Check::new(2, &fixed).of_principal(A)]).await;
    if admitted < 5 {
        assert!(probe.admitted());
        assert_eq!(probe.windows()[0].remaining as usize, 5 - admitted - 1);
    } else {
        assert!(!probe.admitted());
    }
    // GCRA charges stay only where another request charged the bucket in
    // between: never fewer than the admissions.
    let probe = decide(&nodes[0], NOW, &[Check::new(1, &gcra).of_principal(A)]).await;
    let used = 5 - probe.windows()[0].remaining as usize - usize::from(probe.admitted());
    assert!(used >= admitted, "{used} counted, {admitted} admitted");
    assert_eq!(nodes[0].failures() + nodes[1].failures(), 0);
}

#[tokio::test]
async fn shadow_checks_and_penalties_keep_their_rules_across_principals() {
    let server = redis_or_skip!();
    let store = store(&server).await;
    let roomy = Quota::new(Window::per_minute(10));
    let one = Quota::new(Window::per_minute(1));
    // A's shadow check admits, B's refuses: the request is admitted, and
    // no shadow check is charged.
    let checks = [
        Check::new(1, &roomy).of_principal(A),
        Check::shadow(2, &roomy).of_principal(A),
        Check::shadow(3, &one).of_principal(B),
    ];
    assert!(
        decide(&store, NOW, &[Check::shadow(3, &one).of_principal(B)])
            .await
            .admitted()
    );
    let outcome = decide(&store, NOW, &checks).await;
    assert!(outcome.admitted() && outcome.shadow_refused());
    let shadow = decide(&store, NOW, &[Check::shadow(2, &roomy).of_principal(A)]).await;
    assert_eq!(shadow.windows()[0].remaining, 9, "A's shadow was refunded");
    let enforced = decide(&store, NOW, &[Check::new(1, &roomy).of_principal(A)]).await;
    assert_eq!(
        enforced.windows()[0].remaining,
        8,
        "A's enforced check stays"
    );

    // Penalties: banned at the first refusal. B refuses: its penalty starts
    // a ban; A admitted, so A's penalty counts nothing.
    let instant = Penalty::new(1, Duration::from_secs(10), Duration::from_secs(30)).unwrap();
    let checks = [
        Check::new(10, &roomy)
            .of_principal(A)
            .with_penalty(0xa0, &instant),
        Check::new(11, &one)
            .of_principal(B)
            .with_penalty(0xb0, &instant),
    ];
    assert!(decide(&store, NOW, &checks[1..]).await.admitted());
    let refused = decide(&store, NOW, &checks).await;
    assert!(!refused.admitted());
    let ban = refused.ban().expect("B's refusal started a ban");
    assert_eq!((ban.check, ban.started), (1, true));
    // The ban in force in B refuses the next request, with no charge in A.
    let banned = decide(&store, NOW, &checks).await;
    assert_eq!(banned.ban().map(|b| (b.check, b.started)), Some((1, false)));
    let a = decide(&store, NOW, &checks[..1]).await;
    assert!(a.admitted(), "A is not banned");
    assert_eq!(a.windows()[0].remaining, 9, "and was never charged before");
    assert_eq!(store.failures(), 0);
}

#[tokio::test]
async fn the_limits_of_one_key_share_a_principal_and_other_keys_do_not() {
    let server = redis_or_skip!();
    let policy = Policy::builder()
        .key_secret(SECRET)
        .limit(
            Limit::new("per_key", Header::parse("X-API-Key").unwrap())
                .quota(Quota::new(Window::per_minute(60))),
        )
        .limit(
            Limit::new("per_key_hourly", Header::parse("x-api-key").unwrap())
                .quota(Quota::new(Window::per_hour(1000))),
        )
        .limit(Limit::new("per_call", PathCapture::new("call_id")).route(
            "POST /v1/calls/{call_id}/control",
            Quota::new(Window::per_second(2)),
        ))
        .build()
        .unwrap();
    let store = RedisStore::builder(server.url()).connect().await.unwrap();
    let svc = service(&RateLimitLayer::with_store(policy, store));
    let response = send(&svc, "POST", "/v1/calls/call_1/control", "key-1").await;
    assert_eq!(response.status(), http::StatusCode::OK);
    let keys = server.keys().await;
    assert_eq!(keys.len(), 3, "{keys:?}");
    let mut tags: Vec<&str> = keys.iter().map(|k| k.split(':').nth(1).unwrap()).collect();
    tags.sort_unstable();
    tags.dedup();
    assert_eq!(
        tags.len(),
        2,
        "the API key's two limits in one slot, the call's in another: {keys:?}"
    );
}
