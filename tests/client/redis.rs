//! Two pacers, as two processes would have, sharing one pace through a
//! real Redis: together they never pass the quota; and a campaign on one
//! process holding an account's slots that another process's calls count.

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_campaign_on_one_process_holds_the_account_slots_another_process_counts() {
    use std::convert::Infallible;

    use http::{Request, Response, StatusCode};
    use tokio::sync::Notify;
    use tower::{service_fn, Layer, ServiceExt};
    use tower_ratelimit::key::{Header, KeySecret};
    use tower_ratelimit::{Limit, Policy, RateLimitLayer};

    let server = redis_or_skip!();
    let policy = Policy::builder()
        .key_secret(KeySecret::from_bytes(*b"campaign + calls"))
        .limit(
            Limit::new("concurrent_calls", Header::parse("X-API-Key").unwrap())
                .route("POST /v1/calls", Quota::in_flight(2)),
        )
        .build()
        .unwrap();
    let layer = |store| RateLimitLayer::with_store(policy.clone(), store);
    let campaigner = layer(RedisStore::builder(server.url()).connect().await.unwrap());
    let api = layer(RedisStore::builder(server.url()).connect().await.unwrap());

    // Process one runs a campaign of two jobs at once that last until the
    // test lets them end.
    let end = Arc::new(Notify::new());
    let started = Arc::new(AtomicU32::new(0));
    let waves = campaigner.waves("concurrent_calls").unwrap();
    let campaign = waves.campaign("acct_1", 2, 2);
    let (shared_end, shared_started) = (Arc::clone(&end), Arc::clone(&started));
    let jobs = (0..2).map(move |_| {
        let (end, started) = (Arc::clone(&shared_end), Arc::clone(&shared_started));
        async move {
            // Waiting from before it says it started: no end is missed.
            let ended = end.notified();
            started.fetch_add(1, Ordering::SeqCst);
            ended.await;
        }
    });
    let run = tokio::spawn(async move { campaign.run(jobs).await.map(|done| done.len()) });
    for _ in 0..500 {
        if started.load(Ordering::SeqCst) == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        started.load(Ordering::SeqCst),
        2,
        "both jobs have their slots"
    );

    // Process two's call of the same account finds no slot left.
    let svc = api.layer(service_fn(|_: Request<()>| async {
        Ok::<_, Infallible>(Response::new(String::new()))
    }));
    let call = |key: &str| {
        let request = Request::post("/v1/calls")
            .header("x-api-key", key)
            .body(())
            .unwrap();
        svc.clone().oneshot(request)
    };
    assert_eq!(
        call("acct_1").await.unwrap().status(),
        StatusCode::TOO_MANY_REQUESTS
    );
    assert_eq!(call("acct_2").await.unwrap().status(), StatusCode::OK);

    // The jobs end and give their slots back, to every process (a slot
    // goes back to Redis just after its job ends: within moments).
    end.notify_waiters();
    assert_eq!(run.await.unwrap().unwrap(), 2);
    let mut answered = StatusCode::TOO_MANY_REQUESTS;
    for _ in 0..200 {
        answered = call("acct_1").await.unwrap().status();
        if answered == StatusCode::OK {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(answered, StatusCode::OK, "the slots came back");
}
