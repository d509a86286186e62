//! Hot reload through the public API: a new policy takes effect on the next
//! request, counts carry over (unchanged limits exactly, routes by their
//! text, changed windows converted by period), a bad policy is refused and
//! the running one keeps working, runtime overrides and in-flight slots
//! survive.

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use http::{Request, Response, StatusCode};
use tower::util::BoxCloneService;
use tower::{service_fn, Layer, ServiceExt};
use tower_ratelimit::clock::ManualClock;
use tower_ratelimit::key::Header;
use tower_ratelimit::{Algorithm, Limit, Policy, Quota, RateLimitLayer, Tiers, Window};

use crate::common::{
    answered_at_once, limit_remaining, start, still_waiting, Gate, Res, Svc, NS, T0,
};

fn api_key() -> Header {
    Header::parse("X-API-Key").unwrap()
}

fn per_minute(n: u32) -> Quota {
    Quota::new(Window::per_minute(n))
}

/// `per_key` with `GET /v1/calls` at `calls`, behind `front` routes, plus
/// a second limit `per_ip`-like `global` at `global`.
fn policy(front: &[(&str, Quota)], calls: Quota, global: u32) -> Policy {
    let mut per_key = Limit::new("per_key", api_key());
    for (route, quota) in front {
        per_key = per_key.route(*route, quota.clone());
    }
    Policy::builder()
        .limit(per_key.route("GET /v1/calls", calls))
        .limit(Limit::new("global", api_key()).quota(per_minute(global)))
        .build()
        .unwrap()
}

fn harness(policy: Policy) -> (RateLimitLayer, Svc) {
    let clock = ManualClock::at_unix_secs(T0);
    let layer = RateLimitLayer::new(policy)
        .decision_extensions(true)
        .clock(clock);
    let inner = service_fn(|_req: Request<String>| async {
        Ok::<_, Infallible>(Response::new(String::from("ok")))
    });
    let svc = BoxCloneService::new(layer.layer(inner));
    (layer, svc)
}

fn get(svc: &Svc, key: &str) -> impl std::future::Future<Output = Res> + Send {
    let request = Request::get("/v1/calls")
        .header("x-api-key", key)
        .body(String::new())
        .unwrap();
    let svc = svc.clone();
    async move { svc.oneshot(request).await.unwrap() }
}

/// `(limit, remaining)` of `per_key`'s window on `GET /v1/calls`.
async fn calls_window(svc: &Svc, key: &str) -> (u64, u64) {
    let response = get(svc, key).await;
    assert_eq!(response.status(), StatusCode::OK);
    let decision = crate::common::decision(&response);
    let w = decision
        .windows()
        .iter()
        .find(|w| w.limit_index == 0)
        .expect("per_key's window");
    (u64::from(w.limit), u64::from(w.remaining))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_under_load_loses_no_count_of_an_unchanged_limit() {
    const QUOTA: u32 = 300;
    let old = policy(&[], per_minute(QUOTA), 10_000);
    let (layer, svc) = harness(old.clone());
    let handle = layer.reload_handle();
    let admitted = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let (svc, admitted) = (svc.clone(), Arc::clone(&admitted));
        tasks.push(tokio::spawn(async move {
            for _ in 0..40 {
                if get(&svc, "k").await.status() == StatusCode::OK {
                    admitted.fetch_add(1, Ordering::SeqCst);
                }
                tokio::task::yield_now().await;
            }
        }));
    }
    // Meanwhile: routes added in front and the other limit changed, back
    // and forth.
    for i in 0..20 {
        let next = if i % 2 == 0 {
            let front = [
                ("POST /v1/keys", per_minute(5)),
                ("GET /v1/other", per_minute(7)),
            ];
            policy(&front, per_minute(QUOTA), 20_000 + i)
        } else {
            old.clone()
        };
        handle.replace(next).unwrap();
        tokio::task::yield_now().await;
    }
    for task in tasks {
        task.await.unwrap();
    }
    assert_eq!(admitted.load(Ordering::SeqCst), QUOTA as usize);
}

#[tokio::test]
async fn a_route_added_in_front_keeps_the_counts_of_the_others() {
    let (layer, svc) = harness(policy(&[], per_minute(10), 100));
    for _ in 0..4 {
        get(&svc, "k").await;
    }
    let front = [
        ("GET /v1/calls/{id}", per_minute(3)),
        ("* /v1/keys", per_minute(2)),
    ];
    let changes = layer
        .reload_handle()
        .replace(policy(&front, per_minute(10), 100))
        .unwrap();
    assert_eq!(changes.changed, ["per_key"]);
    assert!(changes.added.is_empty() && changes.removed.is_empty());
    assert_eq!(
        calls_window(&svc, "k").await,
        (10, 5),
        "4 used before, 1 now"
    );
}

/// A harness whose key `k` used 4 of its 10 a minute on `GET /v1/calls`,
/// counted by `algorithm`.
async fn four_of_ten(algorithm: Algorithm) -> (RateLimitLayer, Svc) {
    let (layer, svc) = harness(policy(&[], per_minute(10).algorithm(algorithm), 100));
    for _ in 0..4 {
        get(&svc, "k").await;
    }
    (layer, svc)
}

#[tokio::test]
async fn changed_windows_carry_the_count_over_by_period() {
    for algorithm in [Algorithm::Gcra, Algorithm::FixedWindow] {
        let quota = |n| per_minute(n).algorithm(algorithm);
        let (layer, svc) = four_of_ten(algorithm).await;
        let handle = layer.reload_handle();
        let changes = handle.replace(policy(&[], quota(20), 100)).unwrap();
        assert_eq!(changes.to_string(), "changed: per_key");
        assert_eq!(calls_window(&svc, "k").await, (20, 15), "{algorithm:?}");
        // Lowered below what the key used: refused on the next request.
        handle.replace(policy(&[], quota(3), 100)).unwrap();
        let refused = get(&svc, "k").await;
        assert_eq!(
            refused.status(),
            StatusCode::TOO_MANY_REQUESTS,
            "{algorithm:?}"
        );
        // And back: the count is still the key's 5.
        handle.replace(policy(&[], quota(10), 100)).unwrap();
        assert_eq!(calls_window(&svc, "k").await, (10, 4), "{algorithm:?}");
    }
}

#[tokio::test]
async fn a_new_limit_applies_on_the_next_request_and_a_removed_one_no_longer() {
    let (layer, svc) = harness(policy(&[], per_minute(10), 100));
    assert_eq!(limit_remaining(&get(&svc, "k").await).0, 10);
    let strict = Policy::builder()
        .limit(Limit::new("strict", api_key()).quota(per_minute(1)))
        .build()
        .unwrap();
    let changes = layer.reload_handle().replace(strict).unwrap();
    assert_eq!(changes.added, ["strict"]);
    assert_eq!(changes.removed, ["per_key", "global"]);
    assert_eq!(limit_remaining(&get(&svc, "k").await), (1, 0));
    assert_eq!(get(&svc, "k").await.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(layer.policy().limit_names().collect::<Vec<_>>(), ["strict"]);
}

#[tokio::test]
async fn a_bad_policy_file_is_refused_and_the_running_policy_stays() {
    let dir = std::env::temp_dir().join(format!("ratelimit-reload-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("policy.toml");
    let good = "[[limits]]\nname = \"per_key\"\nkey = { header = \"X-API-Key\" }\n\n\
                [[limits.routes]]\nwindows = [\"2/minute\"]\n";
    std::fs::write(&file, good).unwrap();
    let (layer, svc) = harness(Policy::from_toml_file(&file).unwrap());
    let handle = layer.reload_handle();
    assert_eq!(limit_remaining(&get(&svc, "k").await), (2, 1));

    std::fs::write(&file, good.replace("2/minute", "2/fortnight")).unwrap();
    let error = handle.reload_file(&file).unwrap_err();
    assert_eq!(error.line(), Some(6), "{error}");
    std::fs::write(&file, "[[limits]\n").unwrap();
    assert!(handle.reload_file(&file).is_err());
    assert!(handle.reload_file(dir.join("missing.toml")).is_err());

    assert_eq!(limit_remaining(&get(&svc, "k").await), (2, 0));
    assert_eq!(get(&svc, "k").await.status(), StatusCode::TOO_MANY_REQUESTS);

    std::fs::write(&file, good.replace("2/minute", "5/minute")).unwrap();
    let changes = handle.reload_file(&file).unwrap();
    assert_eq!(changes.changed, ["per_key"]);
    assert_eq!(limit_remaining(&get(&svc, "k").await), (5, 2));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn runtime_overrides_survive_a_reload_where_their_limit_and_plan_do() {
    let tiers = |scale| {
        let tiers = Tiers::new(per_minute(10));
        if scale {
            tiers.plan("scale", per_minute(50))
        } else {
            tiers
        }
    };
    let with = |scale| {
        Policy::builder()
            .limit(Limit::new("per_key", api_key()).quota(tiers(scale)))
            .limit(Limit::new("other", api_key()).quota(per_minute(100)))
            .build()
            .unwrap()
    };
    let (layer, svc) = harness(with(true));
    let overrides = layer.overrides();
    overrides
        .set_quota("per_key", "vip", per_minute(30))
        .unwrap();
    overrides.set_plan("per_key", "big", "scale").unwrap();
    overrides.set_quota("other", "vip", per_minute(7)).unwrap();

    let handle = layer.reload_handle();
    assert_eq!(handle.replace(with(true)).unwrap().overrides_dropped, 0);
    assert_eq!(limit_remaining(&get(&svc, "big").await), (50, 49));
    assert_eq!(
        overrides.plan_of("per_key", "big").as_deref(),
        Some("scale")
    );

    let changes = handle.replace(with(false)).unwrap();
    assert_eq!(changes.overrides_dropped, 1, "the plan `scale` is gone");
    assert_eq!(overrides.plan_of("per_key", "big"), None);
    assert_eq!(overrides.quota_of("per_key", "vip"), Some(per_minute(30)));
    let vip = get(&svc, "vip").await;
    let decision = crate::common::decision(&vip);
    let limits: Vec<u32> = decision.windows().iter().map(|w| w.limit).collect();
    assert_eq!(limits, [30, 7]);

    // The layer's handle writes to the policy in place now.
    overrides
        .set_quota("per_key", "new", per_minute(2))
        .unwrap();
    assert_eq!(limit_remaining(&get(&svc, "new").await).0, 2);
}

#[tokio::test]
async fn requests_in_flight_across_a_reload_release_their_slots() {
    let capped = |cap| {
        Policy::builder()
            .limit(
                Limit::new("per_key", api_key())
                    .quota(Quota::in_flight(cap).and(Window::per_minute(100))),
            )
            .build()
            .unwrap()
    };
    let layer = RateLimitLayer::new(capped(1))
        .decision_extensions(true)
        .clock(ManualClock::at_unix_secs(T0));
    let gate = Gate::new();
    let svc = gate.behind(&layer);
    let call = |hold: bool| {
        let mut request = Request::get("/v1/calls").header("x-api-key", "k");
        if hold {
            request = request.header("x-hold", "1");
        }
        request.body(String::new()).unwrap()
    };
    let mut first = start(&svc, call(true));
    still_waiting(&mut first).await;
    assert_eq!(gate.inside(), 1);

    layer.reload_handle().replace(capped(1)).unwrap();
    let mut second = start(&svc, call(false));
    let busy = answered_at_once(&mut second).await;
    assert_eq!(
        busy.status(),
        StatusCode::TOO_MANY_REQUESTS,
        "the slot is still held"
    );

    gate.open(1);
    let done = first.await;
    assert_eq!(done.status(), StatusCode::OK);
    crate::common::text(done).await;
    assert_eq!(layer.keys_in_flight(), 0);
    let third = svc.clone().oneshot(call(false)).await.unwrap();
    assert_eq!(third.status(), StatusCode::OK);
    let _ = NS;
}

/// `per_key` at 1,000 a minute on `GET /v1/calls`; the memory store capped
/// at `max` entries, if given.
fn capped(max: Option<usize>) -> Policy {
    let builder = Policy::builder()
        .limit(Limit::new("per_key", api_key()).route("GET /v1/calls", per_minute(1000)));
    match max {
        Some(max) => builder.memory_max_entries(max),
        None => builder,
    }
    .build()
    .unwrap()
}

#[tokio::test]
async fn a_reloaded_memory_cap_applies_and_drops_no_tracked_key() {
    let (layer, svc) = harness(capped(Some(10_000)));
    assert_eq!(layer.store().max_entries(), 10_000);
    for i in 0..300 {
        assert_eq!(get(&svc, &format!("k{i}")).await.status(), StatusCode::OK);
    }
    for _ in 0..4 {
        get(&svc, "k0").await;
    }
    assert_eq!(layer.store().len(), 300);

    let handle = layer.reload_handle();
    let changes = handle.replace(capped(Some(100))).unwrap();
    assert_eq!(changes.memory_max_entries, Some(100));
    assert_eq!(changes.to_string(), "memory cap: 100 entries");
    assert!(!changes.is_empty());
    assert_eq!(layer.store().max_entries(), 100);

    // Under the lower cap new keys are admitted, counted in the overflow
    // sketches: the store holds more than its new cap already, so none
    // takes an entry (where the old cap took all 500), and no tracked key
    // loses its count.
    for i in 300..800 {
        assert_eq!(get(&svc, &format!("k{i}")).await.status(), StatusCode::OK);
    }
    let tracked = layer.store().len();
    assert_eq!(tracked, 300);
    assert_eq!(calls_window(&svc, "k0").await, (1000, 994));

    // The same cap again, or a policy without one: nothing changes.
    assert!(handle.replace(capped(Some(100))).unwrap().is_empty());
    assert!(handle.replace(capped(None)).unwrap().is_empty());
    assert_eq!(layer.store().max_entries(), 100);

    // A higher cap: new keys get entries of their own again.
    let changes = handle.replace(capped(Some(10_000))).unwrap();
    assert_eq!(changes.memory_max_entries, Some(10_000));
    for i in 800..900 {
        assert_eq!(get(&svc, &format!("k{i}")).await.status(), StatusCode::OK);
    }
    // (Save the few whose two sketch cells the 500 keys counted there hold:
    // a key stays counted where its estimate is live, so that no count is
    // ever lost; about 5 % here, with some 8 keys in each shard's 2 × 32
    // cells.)
    let grown = layer.store().len() - tracked;
    assert!((80..=100).contains(&grown), "{grown} of 100 new keys");
}

#[tokio::test]
async fn a_store_given_to_the_layer_keeps_its_own_cap_on_reload() {
    let store = tower_ratelimit::store::MemoryStore::with_max_entries(5_000);
    let layer = RateLimitLayer::with_store(capped(Some(10_000)), store);
    let before = layer.store().max_entries();
    let changes = layer.reload_handle().replace(capped(Some(100))).unwrap();
    assert_eq!(changes.memory_max_entries, None);
    assert_eq!(layer.store().max_entries(), before);
}

#[tokio::test]
async fn a_reload_that_changes_the_key_secret_says_so() {
    use tower_ratelimit::key::KeySecret;

    let with_secret = |secret: &[u8; 16]| {
        Policy::builder()
            .limit(Limit::new("per_key", api_key()).quota(per_minute(10)))
            .key_secret(KeySecret::from_bytes(*secret))
            .build()
            .unwrap()
    };
    let (layer, svc) = harness(with_secret(b"0123456789abcdef"));
    for _ in 0..4 {
        get(&svc, "k").await;
    }
    assert_eq!(limit_remaining(&get(&svc, "k").await), (10, 5));
    layer
        .overrides()
        .set_quota("per_key", "vip", per_minute(30))
        .unwrap();

    // The same secret: nothing changed, and the counts carry on.
    let handle = layer.reload_handle();
    let same = handle.replace(with_secret(b"0123456789abcdef")).unwrap();
    assert!(!same.key_secret);
    assert!(same.is_empty());
    assert_eq!(same.to_string(), "no change");
    assert_eq!(limit_remaining(&get(&svc, "k").await), (10, 4));

    // Another secret: every key counts afresh, the runtime override is
    // dropped, and the reload says both.
    let changes = handle.replace(with_secret(b"fedcba9876543210")).unwrap();
    assert!(changes.key_secret);
    assert_eq!(changes.overrides_dropped, 1);
    assert!(changes.changed.is_empty(), "{changes}");
    assert!(!changes.is_empty());
    assert_eq!(
        changes.to_string(),
        "key secret changed: every key counts afresh; runtime overrides dropped: 1"
    );
    assert_eq!(limit_remaining(&get(&svc, "k").await), (10, 9));
    assert_eq!(limit_remaining(&get(&svc, "vip").await), (10, 9));
}

#[tokio::test]
async fn putting_the_running_policy_in_place_again_changes_nothing_and_blocks_nothing() {
    let (layer, svc) = harness(policy(&[], per_minute(10), 100));
    let overrides = layer.overrides();
    overrides
        .set_quota("per_key", "vip", per_minute(30))
        .unwrap();
    let handle = layer.reload_handle();
    // On a thread of its own: a reload that waited on itself would hang.
    let (done, finished) = std::sync::mpsc::channel();
    let again = handle.clone();
    std::thread::spawn(move || {
        let _ = done.send(again.replace(again.policy()));
    });
    let changes = finished
        .recv_timeout(std::time::Duration::from_secs(10))
        .expect("the reload returned")
        .unwrap();
    assert!(changes.is_empty(), "{changes}");
    // Overrides and reloads go on working, and the override stayed.
    overrides
        .set_quota("per_key", "big", per_minute(50))
        .unwrap();
    assert_eq!(overrides.quota_of("per_key", "vip"), Some(per_minute(30)));
    assert_eq!(calls_window(&svc, "big").await, (50, 49));
    assert!(handle.replace(policy(&[], per_minute(10), 100)).is_ok());
}

#[tokio::test]
async fn a_policy_put_back_in_place_does_not_bring_back_a_removed_override() {
    let first = policy(&[], per_minute(10), 100);
    let (layer, svc) = harness(first.clone());
    let (overrides, handle) = (layer.overrides(), layer.reload_handle());
    overrides
        .set_quota("per_key", "k0", per_minute(30))
        .unwrap();
    handle.replace(policy(&[], per_minute(12), 100)).unwrap();
    assert!(overrides.remove("per_key", "k0").unwrap());
    handle.replace(first).unwrap();
    assert_eq!(overrides.quota_of("per_key", "k0"), None);
    assert_eq!(calls_window(&svc, "k0").await, (10, 9));
}

/// Two limits capped at one request in flight with a line, in one order or
/// the other.
fn two_caps(account_first: bool) -> Policy {
    let cap = || Quota::in_flight(1).queue(10, std::time::Duration::from_secs(30));
    let account = Limit::new("account", api_key()).quota(cap());
    let line = Limit::global("line").quota(cap());
    let (first, second) = if account_first {
        (account, line)
    } else {
        (line, account)
    };
    Policy::builder()
        .limit(first)
        .limit(second)
        .build()
        .unwrap()
}

#[tokio::test(start_paused = true)]
async fn requests_under_a_policy_and_its_reordered_reload_never_wait_on_each_other() {
    let layer = RateLimitLayer::new(two_caps(true)).clock(ManualClock::at_unix_secs(T0));
    let gate = Gate::new();
    let svc = gate.behind(&layer);
    let call = |seq: &str| {
        Request::get("/v1/calls")
            .header("x-api-key", "k")
            .header("x-seq", seq)
            .header("x-hold", "1")
            .body(String::new())
            .unwrap()
    };
    let mut holder = start(&svc, call("holder"));
    still_waiting(&mut holder).await;
    assert_eq!(gate.inside(), 1, "the holder has both slots");
    // One request waits under the first order, one under the reordered
    // policy: each would hold the slot the other waits for if each took
    // its slots in its own policy's order.
    // Each answer is dropped where it arrives: its body holds the slots.
    let status = |pending: crate::common::Pending| async move { pending.await.status() };
    let before = tokio::spawn(status(start(&svc, call("before"))));
    crate::common::until("the first waiter is in line", || layer.keys_in_flight() > 0).await;
    tokio::task::yield_now().await;
    layer.reload_handle().replace(two_caps(false)).unwrap();
    let after = tokio::spawn(status(start(&svc, call("after"))));
    for _ in 0..100 {
        tokio::task::yield_now().await;
    }
    assert_eq!(gate.entered(), 1, "both wait while the holder runs");

    gate.open(1);
    assert_eq!(holder.await.status(), StatusCode::OK);
    crate::common::until("one waiter gets both slots", || gate.inside() == 1).await;
    gate.open(1);
    crate::common::until("the other gets them next", || gate.entered() == 3).await;
    gate.open(1);
    assert_eq!(before.await.unwrap(), StatusCode::OK);
    assert_eq!(after.await.unwrap(), StatusCode::OK);
    assert_eq!(layer.keys_in_flight(), 0);
}

#[tokio::test]
async fn a_route_or_limit_removed_and_added_again_gets_its_counts_back_converted() {
    for algorithm in [Algorithm::Gcra, Algorithm::FixedWindow] {
        let quota = |n| per_minute(n).algorithm(algorithm);
        let (layer, svc) = four_of_ten(algorithm).await;
        let handle = layer.reload_handle();
        // The route goes, and comes back at twice the rate: the key's 4
        // are 4 of 20, not 8 (its buckets counted at 10 a minute).
        let without_route = Policy::builder()
            .limit(Limit::new("per_key", api_key()).route("GET /v1/other", quota(10)))
            .limit(Limit::new("global", api_key()).quota(per_minute(100)))
            .build()
            .unwrap();
        handle.replace(without_route).unwrap();
        handle.replace(policy(&[], quota(20), 100)).unwrap();
        assert_eq!(calls_window(&svc, "k").await, (20, 15), "{algorithm:?}");
        // The whole limit goes, and comes back at 6 a minute: 5 used of 6.
        let without_limit = Policy::builder()
            .limit(Limit::new("global", api_key()).quota(per_minute(100)))
            .build()
            .unwrap();
        handle.replace(without_limit).unwrap();
        handle.replace(policy(&[], quota(6), 100)).unwrap();
        assert_eq!(calls_window(&svc, "k").await, (6, 0), "{algorithm:?}");
        assert_eq!(get(&svc, "k").await.status(), StatusCode::TOO_MANY_REQUESTS);
    }
}

#[tokio::test]
async fn a_key_read_otherwise_is_a_changed_limit() {
    let with = |key: Header| {
        Policy::builder()
            .limit(Limit::new("per_key", key).quota(per_minute(10)))
            .build()
            .unwrap()
    };
    let (layer, _svc) = harness(with(api_key()));
    let handle = layer.reload_handle();
    let changes = handle.replace(with(api_key().allow_commas())).unwrap();
    assert_eq!(
        changes.changed,
        ["per_key"],
        "commas read as part of the key"
    );
    let changes = handle.replace(with(api_key().allow_commas())).unwrap();
    assert!(changes.changed.is_empty(), "{changes}");

    let by_ip = |trusted: &str| {
        let key = tower_ratelimit::key::ForwardedIp::new([trusted]).unwrap();
        Policy::builder()
            .limit(Limit::new("per_ip", key).quota(per_minute(10)))
            .build()
            .unwrap()
    };
    handle.replace(by_ip("10.0.0.0/8")).unwrap();
    let changes = handle.replace(by_ip("192.168.0.0/16")).unwrap();
    assert_eq!(changes.changed, ["per_ip"], "other proxies trusted");
}

#[tokio::test]
async fn a_policy_put_in_place_again_takes_over_from_the_one_it_replaces_each_time() {
    // `quiet` has no `GET /v1/calls`; the same object is put in place
    // several times, after different policies.
    let quiet = Policy::builder()
        .limit(Limit::new("global", api_key()).quota(per_minute(100)))
        .build()
        .unwrap();
    let (layer, svc) = harness(quiet.clone());
    let handle = layer.reload_handle();
    handle.replace(quiet.clone()).unwrap();
    handle.replace(policy(&[], per_minute(10), 100)).unwrap();
    for _ in 0..4 {
        get(&svc, "k").await;
    }
    // The route goes with `quiet` in place again, and comes back at 20 a
    // minute: the key's 4 are 4 of 20 (counted at 10 a minute).
    handle.replace(quiet.clone()).unwrap();
    handle.replace(policy(&[], per_minute(20), 100)).unwrap();
    assert_eq!(calls_window(&svc, "k").await, (20, 15));
}
