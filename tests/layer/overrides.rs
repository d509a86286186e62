//! Runtime overrides through the public API: a key's own quota (or plan) set,
//! changed and removed while the layer runs, effective on the next request,
//! keeping the key's counts.

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response, StatusCode};
use tower::util::BoxCloneService;
use tower::{service_fn, Layer, ServiceExt};
use tower_ratelimit::clock::ManualClock;
use tower_ratelimit::key::{FirstOf, Header, PeerIp};
use tower_ratelimit::{
    Algorithm, ConfigErrorKind, Limit, Overrides, Policy, Quota, RateLimitLayer, RefusalReason,
    Tiers, Window,
};

use crate::common::{decision, limit_remaining, num, Res, Svc, NS, T0};

fn api_key() -> Header {
    Header::parse("X-API-Key").unwrap()
}

fn per_minute(n: u32) -> Quota {
    Quota::new(Window::per_minute(n))
}

fn fixed_per_minute(n: u32) -> Quota {
    per_minute(n).algorithm(Algorithm::FixedWindow)
}

/// One limit, `per_key`, with `quota` on every route.
fn policy(quota: impl Into<Tiers>) -> Policy {
    Policy::builder()
        .limit(Limit::new("per_key", api_key()).quota(quota))
        .build()
        .unwrap()
}

struct Harness {
    clock: ManualClock,
    layer: RateLimitLayer,
    svc: Svc,
    calls: Arc<AtomicUsize>,
}

impl Harness {
    fn new(policy: Policy) -> Self {
        let clock = ManualClock::at_unix_secs(T0);
        let layer = RateLimitLayer::new(policy)
            .decision_extensions(true)
            .clock(clock.clone());
        let calls = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&calls);
        let inner = service_fn(move |_req: Request<String>| {
            counter.fetch_add(1, Ordering::SeqCst);
            async { Ok::<_, Infallible>(Response::new(String::from("ok"))) }
        });
        Harness {
            clock,
            svc: BoxCloneService::new(layer.layer(inner)),
            layer,
            calls,
        }
    }

    fn overrides(&self) -> Overrides {
        self.layer.overrides()
    }

    async fn send_to(&self, method: &str, path: &str, key: &str) -> Res {
        let request = Request::builder()
            .method(method)
            .uri(path)
            .header("x-api-key", key)
            .body(String::new())
            .unwrap();
        self.svc.clone().oneshot(request).await.unwrap()
    }

    async fn send(&self, key: &str) -> Res {
        self.send_to("GET", "/v1/calls", key).await
    }

    /// Sends `n` requests that must all be admitted.
    async fn spend(&self, key: &str, n: usize) {
        for i in 0..n {
            assert_eq!(self.send(key).await.status(), StatusCode::OK, "{key} #{i}");
        }
    }

    /// Moves the clock to `secs` seconds after `T0`.
    fn at(&self, secs: u64) {
        self.clock.set((T0 + secs) * NS);
    }

    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

#[tokio::test]
async fn an_override_takes_effect_on_the_next_request_without_a_rebuild() {
    let h = Harness::new(policy(per_minute(60)));
    assert_eq!(limit_remaining(&h.send("k").await), (60, 59));

    h.overrides()
        .set_quota("per_key", "k", per_minute(3))
        .unwrap();
    assert_eq!(h.overrides().quota_of("per_key", "k"), Some(per_minute(3)));
    // 1 of 3 used before the change.
    assert_eq!(limit_remaining(&h.send("k").await), (3, 1));
    assert_eq!(limit_remaining(&h.send("k").await), (3, 0));
    let refused = h.send("k").await;
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(limit_remaining(&refused), (3, 0));
    assert_eq!(num(&refused, "retry-after"), 20, "60 s / 3");
    assert_eq!(h.calls(), 3);
}

#[tokio::test]
async fn lowering_a_limit_below_what_was_used_refuses_at_once_with_an_honest_retry_after() {
    let h = Harness::new(policy(per_minute(60)));
    h.spend("k", 50).await;
    h.overrides()
        .set_quota("per_key", "k", per_minute(40))
        .unwrap();

    // 50 used of 40: over by 10, so one request's room (1.5 s) returns
    // after 10 × 1.5 s + 1.5 s = 16.5 s.
    let refused = h.send("k").await;
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(limit_remaining(&refused), (40, 0));
    assert_eq!(num(&refused, "retry-after"), 17);
    assert_eq!(
        num(&refused, "x-ratelimit-reset"),
        T0 + 75,
        "the 50 requests are 75 s of the 40/minute window"
    );
    assert_eq!(decision(&refused).refusal(), Some(RefusalReason::Window));
    assert_eq!(h.calls(), 50);

    h.at(16);
    assert_eq!(
        h.send("k").await.status(),
        StatusCode::TOO_MANY_REQUESTS,
        "16 s is not yet 16.5 s"
    );
    h.at(17);
    let admitted = h.send("k").await;
    assert_eq!(admitted.status(), StatusCode::OK, "Retry-After was honest");
    assert_eq!(limit_remaining(&admitted), (40, 0));
    assert_eq!(h.calls(), 51);
}

#[tokio::test]
async fn raising_a_limit_admits_at_once_with_the_remaining_of_what_was_used() {
    let h = Harness::new(policy(per_minute(60)));
    h.spend("k", 50).await;
    let overrides = h.overrides();
    overrides.set_quota("per_key", "k", per_minute(40)).unwrap();
    assert_eq!(h.send("k").await.status(), StatusCode::TOO_MANY_REQUESTS);

    overrides
        .set_quota("per_key", "k", per_minute(120))
        .unwrap();
    let admitted = h.send("k").await;
    assert_eq!(admitted.status(), StatusCode::OK);
    assert_eq!(limit_remaining(&admitted), (120, 69), "51 of 120 used");

    // Exactly 120 in the minute, all told.
    h.spend("k", 69).await;
    let refused = h.send("k").await;
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(num(&refused, "retry-after"), 1, "0.5 s, rounded up");
    assert_eq!(h.calls(), 120);
}

#[tokio::test]
async fn raising_straight_from_the_default_keeps_the_count() {
    let h = Harness::new(policy(per_minute(60)));
    h.spend("k", 60).await;
    assert_eq!(h.send("k").await.status(), StatusCode::TOO_MANY_REQUESTS);
    h.overrides()
        .set_quota("per_key", "k", per_minute(120))
        .unwrap();
    assert_eq!(limit_remaining(&h.send("k").await), (120, 59));
}

#[tokio::test]
async fn removing_an_override_puts_the_key_back_on_its_default_with_its_counts() {
    let h = Harness::new(policy(per_minute(60)));
    h.spend("k", 50).await;
    let overrides = h.overrides();
    overrides
        .set_quota("per_key", "k", per_minute(120))
        .unwrap();
    assert_eq!(limit_remaining(&h.send("k").await), (120, 69));

    assert_eq!(overrides.remove("per_key", "k"), Ok(true));
    assert_eq!(overrides.quota_of("per_key", "k"), None);
    assert_eq!(overrides.plan_of("per_key", "k"), None);
    assert_eq!(overrides.remove("per_key", "k"), Ok(false), "nothing left");
    // 51 used, back on 60/minute.
    assert_eq!(limit_remaining(&h.send("k").await), (60, 8));
    h.spend("k", 8).await;
    assert_eq!(h.send("k").await.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(h.calls(), 60);
}

#[tokio::test]
async fn removing_a_key_that_never_had_an_override_changes_nothing() {
    let h = Harness::new(policy(per_minute(60)));
    h.spend("k", 10).await;
    assert_eq!(h.overrides().remove("per_key", "k"), Ok(false));
    assert_eq!(limit_remaining(&h.send("k").await), (60, 49));
}

#[tokio::test]
async fn fixed_window_overrides_keep_the_count_of_the_current_window() {
    let h = Harness::new(policy(fixed_per_minute(10)));
    h.at(15);
    h.spend("k", 8).await;
    let overrides = h.overrides();
    overrides
        .set_quota("per_key", "k", fixed_per_minute(5))
        .unwrap();
    let refused = h.send("k").await;
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(limit_remaining(&refused), (5, 0));
    assert_eq!(num(&refused, "retry-after"), 45, "the window ends at :60");
    assert_eq!(num(&refused, "x-ratelimit-reset"), T0 + 60);

    overrides
        .set_quota("per_key", "k", fixed_per_minute(20))
        .unwrap();
    assert_eq!(limit_remaining(&h.send("k").await), (20, 11), "9 of 20");

    // A new window starts from zero under the override.
    h.at(60);
    assert_eq!(limit_remaining(&h.send("k").await), (20, 19));
    assert_eq!(h.calls(), 10);
}

#[tokio::test]
async fn an_override_can_put_a_key_on_a_plan() {
    let h = Harness::new(policy(
        Tiers::new(per_minute(60)).plan("pro", per_minute(600)),
    ));
    h.spend("k", 50).await;
    h.overrides().set_plan("per_key", "k", "pro").unwrap();
    assert_eq!(
        h.overrides().plan_of("per_key", "k").as_deref(),
        Some("pro")
    );
    assert_eq!(limit_remaining(&h.send("k").await), (600, 549));
    // Back to the default: 51 used of 60 (+1).
    h.overrides().remove("per_key", "k").unwrap();
    assert_eq!(limit_remaining(&h.send("k").await), (60, 8));
}

#[tokio::test]
async fn each_route_of_the_limit_converts_its_own_counts_once() {
    let h = Harness::new(
        Policy::builder()
            .limit(
                Limit::new("per_key", api_key())
                    .route("GET *", per_minute(60))
                    .route("POST *", per_minute(10)),
            )
            .build()
            .unwrap(),
    );
    h.spend("k", 50).await;
    for _ in 0..5 {
        assert_eq!(
            h.send_to("POST", "/v1/calls", "k").await.status(),
            StatusCode::OK
        );
    }
    let overrides = h.overrides();
    overrides
        .set_quota("per_key", "k", per_minute(120))
        .unwrap();
    // The override's quota applies to every route; each keeps its count.
    assert_eq!(limit_remaining(&h.send("k").await), (120, 69));
    // A second change before POST's next request: POST's counts are still
    // those of its own 10/minute and convert from there.
    overrides
        .set_quota("per_key", "k", per_minute(240))
        .unwrap();
    assert_eq!(
        limit_remaining(&h.send_to("POST", "/v1/calls", "k").await),
        (240, 234),
        "6 of 240"
    );
    assert_eq!(limit_remaining(&h.send("k").await), (240, 188), "52 of 240");

    overrides.remove("per_key", "k").unwrap();
    assert_eq!(limit_remaining(&h.send("k").await), (60, 7), "53 of 60");
    assert_eq!(
        limit_remaining(&h.send_to("POST", "/v1/calls", "k").await),
        (10, 3),
        "7 of 10"
    );
}

#[tokio::test]
async fn an_override_on_one_key_leaves_other_keys_and_limits_alone() {
    let h = Harness::new(
        Policy::builder()
            .limit(Limit::new("per_key", api_key()).quota(per_minute(60)))
            .limit(
                Limit::new("per_key_hourly", api_key()).quota(Quota::new(Window::per_hour(1000))),
            )
            .build()
            .unwrap(),
    );
    h.spend("other", 10).await;
    h.overrides()
        .set_quota("per_key", "k", per_minute(2))
        .unwrap();
    assert_eq!(h.overrides().quota_of("per_key", "other"), None);
    assert_eq!(h.overrides().plan_of("per_key", "other"), None);
    assert_eq!(h.overrides().quota_of("per_key_hourly", "k"), None);
    assert_eq!(h.overrides().plan_of("per_key_hourly", "k"), None);

    let first = h.send("k").await;
    let windows = decision(&first).windows();
    assert_eq!(windows.len(), 2);
    assert_eq!((windows[0].limit, windows[0].remaining), (2, 1));
    assert_eq!((windows[1].limit, windows[1].remaining), (1000, 999));
    assert_eq!(h.send("k").await.status(), StatusCode::OK);
    assert_eq!(h.send("k").await.status(), StatusCode::TOO_MANY_REQUESTS);

    let other = h.send("other").await;
    let windows = decision(&other).windows();
    assert_eq!((windows[0].limit, windows[0].remaining), (60, 49));
    assert_eq!((windows[1].limit, windows[1].remaining), (1000, 989));
    assert_eq!(h.calls(), 13);
}

#[tokio::test]
async fn mistakes_are_config_errors_that_name_the_field() {
    let h = Harness::new(policy(
        Tiers::new(per_minute(60)).plan("pro", per_minute(600)),
    ));
    let overrides = h.overrides();

    let err = overrides
        .set_quota("per_kye", "k", per_minute(1))
        .unwrap_err();
    assert_eq!(err.kind(), ConfigErrorKind::UnknownName);
    assert_eq!(err.field(), "limit");
    assert!(err.message().contains("per_kye"), "{}", err.message());
    let err = overrides.remove("per_kye", "k").unwrap_err();
    assert_eq!(
        (err.kind(), err.field()),
        (ConfigErrorKind::UnknownName, "limit")
    );
    assert_eq!(overrides.quota_of("per_kye", "k"), None);
    assert_eq!(overrides.plan_of("per_kye", "k"), None);

    let err = overrides.set_plan("per_key", "k", "gold").unwrap_err();
    assert_eq!(err.kind(), ConfigErrorKind::UnknownName);
    assert_eq!(err.field(), "plan");
    assert!(
        err.message().contains("`gold`") && err.message().contains("`pro`"),
        "names the plan and the known ones: {}",
        err.message()
    );

    let cases = [
        (per_minute(1).cost(2), "quota.cost"),
        (per_minute(1).cost(0), "quota.cost"),
        (
            per_minute(5).and(Window::new(10, Duration::from_secs(60)).unwrap()),
            "quota.windows",
        ),
        (
            per_minute(5).queue(10, Duration::from_secs(1)),
            "quota.queue",
        ),
    ];
    for (quota, field) in cases {
        let err = overrides.set_quota("per_key", "k", quota).unwrap_err();
        assert_eq!(
            (err.kind(), err.field()),
            (ConfigErrorKind::InvalidValue, field)
        );
    }

    let err = overrides
        .set_quota("per_key", "", per_minute(1))
        .unwrap_err();
    assert_eq!(
        (err.kind(), err.field()),
        (ConfigErrorKind::InvalidValue, "key")
    );

    // Nothing was set by the failed calls.
    assert_eq!(overrides.quota_of("per_key", "k"), None);
    assert_eq!(overrides.plan_of("per_key", "k"), None);
    assert_eq!(limit_remaining(&h.send("k").await), (60, 59));
}

#[tokio::test]
async fn mistakes_in_the_policy_s_own_overrides_name_the_field() {
    // The limit, with one more override given by `add`.
    let build = |add: fn(Limit) -> Limit| {
        Policy::builder()
            .limit(add(Limit::new("per_key", api_key())
                .quota(Tiers::new(per_minute(60)).plan("pro", per_minute(600)))
                .key_plan("fine", "pro")))
            .build()
            .unwrap_err()
    };
    let err = build(|l| l.key_plan("k", "gold"));
    assert_eq!(
        (err.kind(), err.field()),
        (ConfigErrorKind::UnknownName, "limits[0].overrides[1].plan")
    );
    let err = build(|l| l.key_quota("", per_minute(1)));
    assert_eq!(
        (err.kind(), err.field()),
        (ConfigErrorKind::InvalidValue, "limits[0].overrides[1].key")
    );
    let err = build(|l| l.key_quota("k", per_minute(1).cost(2)));
    assert_eq!(
        (err.kind(), err.field()),
        (
            ConfigErrorKind::InvalidValue,
            "limits[0].overrides[1].quota.cost"
        )
    );
}

#[tokio::test]
async fn overrides_listed_in_a_policy_file_apply_and_can_be_changed_at_runtime() {
    let policy = Policy::from_toml(
        r#"
[[limits]]
name = "per_key"
key = { header = "x-api-key" }
routes = [{ path = "*", windows = ["60/minute"] }]
overrides = [{ key = "tp_custom", windows = ["120/minute"] }]
"#,
    )
    .unwrap();
    let h = Harness::new(policy);
    assert_eq!(limit_remaining(&h.send("tp_custom").await), (120, 119));
    assert_eq!(limit_remaining(&h.send("tp_plain").await), (60, 59));
    assert_eq!(h.overrides().remove("per_key", "tp_custom"), Ok(true));
    assert_eq!(limit_remaining(&h.send("tp_custom").await), (60, 58));
}

fn assert_handle<T: Clone + Send + Sync + 'static>(_: &T) {}

#[tokio::test]
async fn overrides_are_shared_by_clones_of_the_layer_and_the_policy_s_handle() {
    let policy = policy(per_minute(60));
    let from_policy = policy.overrides();
    assert_handle(&from_policy);

    let h = Harness::new(policy);
    let clone = h.layer.clone();
    let svc_of_clone: Svc =
        BoxCloneService::new(clone.layer(service_fn(|_req: Request<String>| async {
            Ok::<_, Infallible>(Response::new(String::from("ok")))
        })));
    let send_through_clone = || {
        svc_of_clone.clone().oneshot(
            Request::get("/")
                .header("x-api-key", "k")
                .body(String::new())
                .unwrap(),
        )
    };

    // Set from another thread, through the policy's handle.
    let handle = from_policy.clone();
    std::thread::spawn(move || handle.set_quota("per_key", "k", per_minute(5)).unwrap())
        .join()
        .unwrap();

    assert_eq!(limit_remaining(&h.send("k").await), (5, 4));
    assert_eq!(
        limit_remaining(&send_through_clone().await.unwrap()),
        (5, 3),
        "the clone counts in the same buckets, under the same override"
    );
    assert_eq!(
        clone.overrides().quota_of("per_key", "k"),
        Some(per_minute(5))
    );

    // Removed through a clone of the layer: the policy's handle sees it.
    assert_eq!(clone.overrides().remove("per_key", "k"), Ok(true));
    assert_eq!(from_policy.quota_of("per_key", "k"), None);
    assert_eq!(from_policy.plan_of("per_key", "k"), None);
    // 2 used, back on 60/minute.
    assert_eq!(limit_remaining(&h.send("k").await), (60, 57));
    assert_eq!(
        limit_remaining(&send_through_clone().await.unwrap()),
        (60, 56)
    );
}

/// Two layers built from one policy count in stores of their own but share
/// its overrides: each must carry its own counts over a change.
#[tokio::test]

async fn two_layers_of_one_policy_each_keep_their_counts_across_a_change() {
    let policy = policy(per_minute(60));
    let first = Harness::new(policy.clone());
    let second = Harness::new(policy.clone());
    let overrides = policy.overrides();

    overrides.set_quota("per_key", "k", per_minute(5)).unwrap();
    assert_eq!(limit_remaining(&first.send("k").await), (5, 4));
    assert_eq!(limit_remaining(&first.send("k").await), (5, 3));
    assert_eq!(limit_remaining(&second.send("k").await), (5, 4));

    assert_eq!(overrides.remove("per_key", "k"), Ok(true));
    assert_eq!(limit_remaining(&first.send("k").await), (60, 57), "3 of 60");
    // The second layer used 1 request under 5/minute (12 s of its window):
    // 2 of 60 now. Without converting, those 12 s read as 12 requests.
    assert_eq!(
        limit_remaining(&second.send("k").await),
        (60, 58),
        "2 of 60"
    );
}

#[tokio::test]
async fn an_override_can_give_a_key_an_in_flight_cap_of_its_own() {
    let h = Harness::new(policy(per_minute(60)));
    h.overrides()
        .set_quota("per_key", "k", per_minute(100).max_in_flight(2))
        .unwrap();
    let response = h.send("k").await;
    let windows = decision(&response).windows();
    assert_eq!(windows.len(), 2);
    assert_eq!(
        (
            windows[0].limit,
            windows[0].remaining,
            windows[0].concurrent
        ),
        (100, 99, false)
    );
    assert_eq!(
        (
            windows[1].limit,
            windows[1].remaining,
            windows[1].concurrent
        ),
        (2, 1, true)
    );
    assert_eq!(
        limit_remaining(&response),
        (100, 99),
        "the window is reported"
    );
    drop(response);
    assert_eq!(h.layer.keys_in_flight(), 0);
}

/// Sends `REQUESTS` requests for `key` on one task while another keeps
/// applying `switch(i)` to the key's override; returns how many were
/// admitted during the race.
async fn race(h: &Harness, key: &str, switch: fn(&Overrides, &str, usize)) -> usize {
    const REQUESTS: usize = 300;
    let sender = {
        let svc = h.svc.clone();
        let key = key.to_owned();
        tokio::spawn(async move {
            let mut admitted = 0;
            for _ in 0..REQUESTS {
                let request = Request::get("/")
                    .header("x-api-key", &key)
                    .body(String::new())
                    .unwrap();
                if svc.clone().oneshot(request).await.unwrap().status() == StatusCode::OK {
                    admitted += 1;
                }
            }
            admitted
        })
    };
    let switcher = {
        let overrides = h.overrides();
        let key = key.to_owned();
        tokio::spawn(async move {
            for i in 0..REQUESTS {
                switch(&overrides, &key, i);
                tokio::task::yield_now().await;
            }
        })
    };
    let admitted = sender.await.unwrap();
    switcher.await.unwrap();
    admitted
}

/// Requests for `key` until one is refused; the number admitted.
async fn drain(h: &Harness, key: &str, at_most: usize) -> usize {
    let mut admitted = 0;
    loop {
        let response = h.send(key).await;
        if response.status() != StatusCode::OK {
            return admitted;
        }
        admitted += 1;
        assert!(admitted <= at_most, "{key}: over {at_most} admitted");
    }
}

/// Two tasks on two threads: one sends requests on a key while the other
/// keeps setting, replacing and removing the key's override (a quota of
/// its own, a plan, the default: all 120/minute). Nothing panics, and with
/// time standing still the key is admitted exactly 120 times in all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_from_another_task_while_requests_run_never_panics_and_stays_exact() {
    let h = Harness::new(policy(
        Tiers::new(per_minute(120)).plan("pro", per_minute(120).and(Window::per_hour(1000))),
    ));
    for round in 0..20 {
        let key = format!("k{round}");
        let during = race(&h, &key, |overrides, key, i| match i % 3 {
            0 => overrides
                .set_quota("per_key", key, per_minute(120))
                .unwrap(),
            1 => overrides.set_plan("per_key", key, "pro").unwrap(),
            _ => {
                overrides.remove("per_key", key).unwrap();
            }
        })
        .await;
        assert!(during <= 120, "round {round}: {during} admitted");
        let total = during + drain(&h, &key, 120).await;
        assert_eq!(total, 120, "round {round}");
    }
}

/// Two tasks on two threads: one sends requests on a key while the other
/// keeps switching the key's override between 60/minute and 120/minute.
/// Time stands still, so however the two interleave, the key can never
/// have used more than 120, and once the race is over and the key is left
/// on 120/minute, it has been admitted exactly 120 times.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]

async fn set_from_another_task_while_requests_run_never_panics_and_ends_exact() {
    let h = Harness::new(policy(per_minute(60)));
    for round in 0..100 {
        let key = format!("k{round}");
        let during = race(&h, &key, |overrides, key, i| match i % 3 {
            0 => overrides
                .set_quota("per_key", key, per_minute(120))
                .unwrap(),
            1 => {
                overrides.remove("per_key", key).unwrap();
            }
            _ => overrides.set_quota("per_key", key, per_minute(60)).unwrap(),
        })
        .await;
        assert!(during <= 120, "round {round}: {during} admitted");
        h.overrides()
            .set_quota("per_key", &key, per_minute(120))
            .unwrap();
        let total = during + drain(&h, &key, 120 - during).await;
        assert_eq!(total, 120, "round {round}");
    }
}

/// A limit keyed by the first of several sources (the API key, else the
/// peer address): an override of the API key applies to requests that send
/// that API key.
#[tokio::test]

async fn an_override_applies_to_a_limit_keyed_by_first_of() {
    let h = Harness::new(
        Policy::builder()
            .limit(
                Limit::new("per_client", FirstOf::new().or(api_key()).or(PeerIp::new()))
                    .quota(per_minute(60)),
            )
            .build()
            .unwrap(),
    );
    h.overrides()
        .set_quota("per_client", "k", per_minute(5))
        .unwrap();
    assert_eq!(limit_remaining(&h.send("k").await), (5, 4));
}
