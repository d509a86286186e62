//! Plan tiers through the public API: an authentication layer puts the
//! caller's `Account` (with its plan) in the request's extensions, and the
//! rate limiter behind it gives each plan its own quotas and in-flight caps.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use http::{Request, Response, StatusCode};
use serde_json::json;
use tower::util::BoxCloneService;
use tower::{service_fn, ServiceBuilder, ServiceExt};
use tower_ratelimit::clock::ManualClock;
use tower_ratelimit::key::{Extension, Header, Key};
use tower_ratelimit::{
    ConfigErrorKind, Limit, Policy, Quota, RateLimitLayer, RefusalReason, Tiers, Window,
};

use crate::common::{decision, header, json, limit_remaining, num, start, Gate, Res, Svc, NS, T0};

/// What the authentication layer learnt about the caller.
#[derive(Clone, Debug)]
struct Account {
    id: String,
    plan: String,
}

/// API key → account, as the authentication layer knows them. Tests change
/// an account's plan here to model an upgrade.
type Accounts = Arc<Mutex<HashMap<String, Account>>>;

fn accounts(list: &[(&str, &str, &str)]) -> Accounts {
    Arc::new(Mutex::new(
        list.iter()
            .map(|(key, id, plan)| {
                (
                    (*key).to_owned(),
                    Account {
                        id: (*id).to_owned(),
                        plan: (*plan).to_owned(),
                    },
                )
            })
            .collect(),
    ))
}

fn by_account() -> impl tower_ratelimit::key::KeyExtractor {
    Extension::new(|a: &Account| Key::from(a.id.as_str()))
}

fn plan_of_account() -> impl tower_ratelimit::key::KeyExtractor {
    Extension::new(|a: &Account| Key::from(a.plan.as_str()))
}

/// One limit per account, its plan read from the account.
fn per_account() -> Limit {
    Limit::new("per_account", by_account()).plan_from(plan_of_account())
}

/// [`per_account`] on [`rate_tiers`], alone in a policy.
fn tiered_policy() -> Policy {
    Policy::builder()
        .limit(per_account().quota(rate_tiers()))
        .build()
        .unwrap()
}

fn per_minute(n: u32) -> Quota {
    Quota::new(Window::per_minute(n))
}

/// 5/minute by default, 20/minute on `pro`, 100/minute on `enterprise`.
fn rate_tiers() -> Tiers {
    Tiers::new(per_minute(5))
        .plan("pro", per_minute(20))
        .plan("enterprise", per_minute(100))
}

/// The authentication layer (an `x-api-key` looked up in `accounts`), then
/// the rate limiter, then a service that counts its calls. The order
/// matters: the limiter reads the `Account` the authentication layer put
/// in the request.
struct Harness {
    svc: Svc,
    calls: Arc<AtomicUsize>,
}

impl Harness {
    fn new(policy: Policy, accounts: &Accounts) -> Self {
        let layer = RateLimitLayer::new(policy)
            .decision_extensions(true)
            .clock(ManualClock::at_unix_secs(T0));
        let calls = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&calls);
        let inner = service_fn(move |_req: Request<String>| {
            counter.fetch_add(1, Ordering::SeqCst);
            async { Ok::<_, Infallible>(Response::new(String::from("ok"))) }
        });
        let svc = ServiceBuilder::new()
            .map_request(authenticate(accounts))
            .layer(layer)
            .service(inner);
        Harness {
            svc: BoxCloneService::new(svc),
            calls,
        }
    }

    async fn send(&self, api_key: &str) -> Res {
        let request = Request::get("/v1/calls")
            .header("x-api-key", api_key)
            .body(String::new())
            .unwrap();
        self.svc.clone().oneshot(request).await.unwrap()
    }

    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

/// The authentication step: puts the caller's account in the request.
fn authenticate(
    accounts: &Accounts,
) -> impl Fn(Request<String>) -> Request<String> + Clone + Send + Sync + 'static {
    let accounts = Arc::clone(accounts);
    move |mut request: Request<String>| {
        let account = request
            .headers()
            .get("x-api-key")
            .and_then(|k| k.to_str().ok())
            .and_then(|k| accounts.lock().unwrap().get(k).cloned());
        if let Some(account) = account {
            request.extensions_mut().insert(account);
        }
        request
    }
}

/// Sends `n` requests for `api_key`, each of which must be admitted with
/// `X-RateLimit-Limit: limit` and the remaining count going down from
/// `limit - 1`.
async fn spend(h: &Harness, api_key: &str, n: u64, limit: u64) {
    for i in 0..n {
        let response = h.send(api_key).await;
        assert_eq!(response.status(), StatusCode::OK, "{api_key} request {i}");
        assert_eq!(
            limit_remaining(&response),
            (limit, limit - 1 - i),
            "{api_key} request {i}"
        );
    }
}

#[tokio::test]
async fn each_plan_gets_its_own_quota_from_the_account_the_auth_layer_inserted() {
    let accounts = accounts(&[
        ("key_free", "acct_1", "free"),
        ("key_pro", "acct_2", "pro"),
        ("key_ent", "acct_3", "enterprise"),
    ]);
    let policy = tiered_policy();
    let h = Harness::new(policy, &accounts);

    // (api key, the plan's limit, Retry-After of the first refusal: one
    // request's worth of the window, rounded up).
    for (api_key, limit, retry) in [("key_free", 5, 12), ("key_pro", 20, 3), ("key_ent", 100, 1)] {
        spend(&h, api_key, limit, limit).await;
        let refused = h.send(api_key).await;
        assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS, "{api_key}");
        assert_eq!(limit_remaining(&refused), (limit, 0), "{api_key}");
        assert_eq!(num(&refused, "retry-after"), retry, "{api_key}");
        assert_eq!(
            decision(&refused).refusal(),
            Some(RefusalReason::Window),
            "{api_key}"
        );
    }
    assert_eq!(h.calls(), 5 + 20 + 100, "refusals never reach the service");
}

#[tokio::test]
async fn accounts_on_one_plan_are_counted_each_on_their_own() {
    let accounts = accounts(&[("key_a", "acct_a", "pro"), ("key_b", "acct_b", "pro")]);
    let policy = tiered_policy();
    let h = Harness::new(policy, &accounts);
    spend(&h, "key_a", 20, 20).await;
    assert_eq!(
        h.send("key_a").await.status(),
        StatusCode::TOO_MANY_REQUESTS
    );
    spend(&h, "key_b", 20, 20).await;
    assert_eq!(
        h.send("key_b").await.status(),
        StatusCode::TOO_MANY_REQUESTS
    );
    assert_eq!(h.calls(), 40);
}

#[tokio::test]
async fn an_unknown_or_empty_plan_gets_the_default_quota() {
    let accounts = accounts(&[
        ("key_gold", "acct_gold", "gold"),
        ("key_empty", "acct_empty", ""),
        ("key_case", "acct_case", "PRO"),
    ]);
    let policy = tiered_policy();
    let h = Harness::new(policy, &accounts);
    for api_key in ["key_gold", "key_empty", "key_case"] {
        spend(&h, api_key, 5, 5).await;
        let refused = h.send(api_key).await;
        assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS, "{api_key}");
        assert_eq!(num(&refused, "retry-after"), 12, "{api_key}");
    }
    assert_eq!(h.calls(), 15);
}

#[tokio::test]
async fn a_missing_plan_gets_the_default_quota_and_is_not_an_error() {
    // The plan comes from a header the caller may leave out; the key from
    // the account. A missing plan is no reason to refuse a request.
    let accounts = accounts(&[
        ("key_1", "acct_1", "ignored"),
        ("key_2", "acct_2", "ignored"),
    ]);
    let policy = Policy::builder()
        .limit(
            Limit::new("per_account", by_account())
                .plan_from(Header::parse("x-plan").unwrap())
                .quota(rate_tiers()),
        )
        .build()
        .unwrap();
    let h = Harness::new(policy, &accounts);
    spend(&h, "key_1", 5, 5).await;
    let refused = h.send("key_1").await;
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(limit_remaining(&refused), (5, 0));

    // Another account naming a plan in the header gets that plan's quota.
    let request = Request::get("/v1/calls")
        .header("x-api-key", "key_2")
        .header("x-plan", "pro")
        .body(String::new())
        .unwrap();
    let response = h.svc.clone().oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(limit_remaining(&response), (20, 19));
    assert_eq!(h.calls(), 6);
}

#[tokio::test]
async fn without_an_account_the_key_is_missing_and_the_request_is_refused_401() {
    let accounts = accounts(&[("key_1", "acct_1", "pro")]);
    let policy = tiered_policy();
    let h = Harness::new(policy, &accounts);
    let response = h.send("key_unknown").await;
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        json(response).await["error"]["code"],
        json!("missing_key"),
        "an unauthenticated request has no account to count against"
    );
    assert_eq!(h.calls(), 0);
}

#[tokio::test]
async fn plans_give_routes_different_quotas_and_a_route_without_the_plan_uses_its_default() {
    let accounts = accounts(&[("key_free", "acct_1", "free"), ("key_pro", "acct_2", "pro")]);
    let policy = Policy::builder()
        .limit(
            per_account()
                .route(
                    "POST /v1/calls",
                    Tiers::new(per_minute(2)).plan("pro", per_minute(10)),
                )
                // This route names no plan: everyone gets 3/minute.
                .route("GET *", per_minute(3)),
        )
        .build()
        .unwrap();
    let h = Harness::new(policy, &accounts);
    let post = |key: &'static str| {
        let svc = h.svc.clone();
        async move {
            let request = Request::post("/v1/calls")
                .header("x-api-key", key)
                .body(String::new())
                .unwrap();
            svc.oneshot(request).await.unwrap()
        }
    };
    assert_eq!(limit_remaining(&post("key_free").await), (2, 1));
    assert_eq!(limit_remaining(&post("key_pro").await), (10, 9));
    assert_eq!(limit_remaining(&h.send("key_free").await), (3, 2));
    assert_eq!(limit_remaining(&h.send("key_pro").await), (3, 2));
}

#[tokio::test(start_paused = true)]
async fn plans_cap_requests_in_flight_by_plan() {
    let accounts = accounts(&[
        ("key_free", "acct_free", "payg"),
        ("key_starter", "acct_starter", "starter"),
    ]);
    // Nixflex: concurrent calls by plan.
    let policy = Policy::builder()
        .limit(
            Limit::new("calls", by_account())
                .plan_from(plan_of_account())
                .route(
                    "POST /v1/calls",
                    Tiers::new(Quota::in_flight(1)).plan("starter", Quota::in_flight(3)),
                ),
        )
        .build()
        .unwrap();
    let layer = RateLimitLayer::new(policy).decision_extensions(true);
    let gate = Gate::new();
    let svc = ServiceBuilder::new()
        .map_request(authenticate(&accounts))
        .service(gate.behind(&layer));
    let svc: Svc = BoxCloneService::new(svc);
    let call = |key: &str, seq: usize| {
        let request = Request::post("/v1/calls")
            .header("x-api-key", key)
            .header("x-seq", format!("{key}-{seq}"))
            .header("x-hold", "1")
            .body(String::new())
            .unwrap();
        start(&svc, request)
    };

    let mut held = Vec::new();
    // (api key, the plan's cap)
    for (key, cap) in [("key_free", 1), ("key_starter", 3)] {
        for seq in 0..cap {
            let mut pending = call(key, seq);
            assert!(futures::poll!(&mut pending).is_pending(), "{key} {seq}");
            held.push(pending);
        }
        // One over the cap: refused on its first poll, with the plan's cap.
        let mut over = call(key, cap);
        let busy = match futures::poll!(&mut over) {
            std::task::Poll::Ready(response) => response,
            std::task::Poll::Pending => panic!("{key}: the request over the cap waited"),
        };
        assert_eq!(busy.status(), StatusCode::TOO_MANY_REQUESTS, "{key}");
        assert_eq!(decision(&busy).refusal(), Some(RefusalReason::Busy));
        assert_eq!(limit_remaining(&busy), (cap as u64, 0), "{key}");
        assert_eq!(header(&busy, "retry-after"), "1");
    }
    assert_eq!(gate.inside(), 4);
    assert_eq!(gate.entered(), 4, "busy requests never reach the service");
    assert_eq!(layer.keys_in_flight(), 2, "two accounts hold slots");

    gate.open(4);
    for pending in held {
        let response = pending.await;
        assert_eq!(response.status(), StatusCode::OK);
        drop(response);
    }
    assert_eq!(layer.keys_in_flight(), 0);
}

#[tokio::test]
async fn an_override_listed_in_the_policy_beats_the_plan_the_request_carries() {
    let accounts = accounts(&[
        ("key_vip", "acct_vip", "free"),
        ("key_capped", "acct_capped", "enterprise"),
        ("key_plain", "acct_plain", "enterprise"),
    ]);
    let policy = Policy::builder()
        .limit(
            per_account()
                .quota(rate_tiers())
                .key_plan("acct_vip", "pro")
                .key_quota("acct_capped", per_minute(2)),
        )
        .build()
        .unwrap();
    let overrides = policy.overrides();
    assert_eq!(
        overrides.plan_of("per_account", "acct_vip").as_deref(),
        Some("pro")
    );
    assert_eq!(
        overrides.quota_of("per_account", "acct_capped"),
        Some(per_minute(2))
    );
    assert_eq!(overrides.quota_of("per_account", "acct_plain"), None);
    assert_eq!(overrides.plan_of("per_account", "acct_plain"), None);

    let h = Harness::new(policy, &accounts);
    // The extension says "free" (5/minute); the policy says "pro".
    spend(&h, "key_vip", 20, 20).await;
    assert_eq!(
        num(&h.send("key_vip").await, "retry-after"),
        3,
        "refused as pro: 60 s / 20"
    );
    // The extension says "enterprise" (100/minute); the policy says 2/minute.
    spend(&h, "key_capped", 2, 2).await;
    let refused = h.send("key_capped").await;
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(num(&refused, "retry-after"), 30);
    // An account without an override keeps its plan.
    spend(&h, "key_plain", 3, 100).await;
    assert_eq!(h.calls(), 20 + 2 + 3);
}

#[tokio::test]
async fn a_plan_override_also_sets_the_in_flight_cap_of_its_plan() {
    let accounts = accounts(&[("key_vip", "acct_vip", "payg")]);
    let policy = Policy::builder()
        .limit(
            Limit::new("calls", by_account())
                .plan_from(plan_of_account())
                .quota(
                    Tiers::new(per_minute(60).max_in_flight(1))
                        .plan("scale", per_minute(600).max_in_flight(100)),
                )
                .key_plan("acct_vip", "scale"),
        )
        .build()
        .unwrap();
    let h = Harness::new(policy, &accounts);
    let response = h.send("key_vip").await;
    assert_eq!(response.status(), StatusCode::OK);
    let windows = decision(&response).windows();
    assert_eq!(windows.len(), 2, "the minute window and the in-flight cap");
    assert_eq!((windows[0].limit, windows[0].remaining), (600, 599));
    assert!(!windows[0].concurrent);
    assert_eq!((windows[1].limit, windows[1].remaining), (100, 99));
    assert!(windows[1].concurrent);
}

#[tokio::test]
async fn a_plan_named_by_an_override_must_exist() {
    let err = Policy::builder()
        .limit(per_account().quota(rate_tiers()).key_plan("acct_1", "gold"))
        .build()
        .unwrap_err();
    assert_eq!(err.kind(), ConfigErrorKind::UnknownName);
    assert_eq!(err.field(), "limits[0].overrides[0].plan");
    assert!(err.message().contains("`gold`"), "{}", err.message());
    assert!(
        err.message().contains("`pro`") && err.message().contains("`enterprise`"),
        "the message lists the known plans: {}",
        err.message()
    );
}

#[tokio::test]
async fn a_plan_quota_that_can_never_admit_is_an_error_naming_the_plan() {
    let err = Policy::builder()
        .limit(per_account().quota(Tiers::new(per_minute(5)).plan("pro", per_minute(1).cost(2))))
        .build()
        .unwrap_err();
    assert_eq!(err.kind(), ConfigErrorKind::InvalidValue);
    assert_eq!(err.field(), "limits[0].routes[0].plans.pro.cost");
}

#[tokio::test]
async fn plans_and_their_overrides_from_a_policy_file() {
    let policy = Policy::from_toml(
        r#"
[[limits]]
name = "per_key"
key = { header = "x-api-key" }
plan = { header = "x-plan" }
overrides = [{ key = "k_vip", plan = "pro" }]

[[limits.routes]]
path = "*"
windows = ["5/minute"]
plans = { pro = { windows = ["20/minute"] } }
"#,
    )
    .unwrap();
    let layer = RateLimitLayer::new(policy)
        .decision_extensions(true)
        .clock(ManualClock::at_unix_secs(T0));
    let svc = tower::Layer::layer(
        &layer,
        service_fn(|_req: Request<String>| async {
            Ok::<_, Infallible>(Response::new(String::from("ok")))
        }),
    );
    let send = |key: &str, plan: Option<&str>| {
        let mut request = Request::get("/").header("x-api-key", key);
        if let Some(plan) = plan {
            request = request.header("x-plan", plan);
        }
        svc.clone().oneshot(request.body(String::new()).unwrap())
    };
    let free = send("k_free", None).await.unwrap();
    assert_eq!(limit_remaining(&free), (5, 4));
    let pro = send("k_pro", Some("pro")).await.unwrap();
    assert_eq!(limit_remaining(&pro), (20, 19));
    let vip = send("k_vip", None).await.unwrap();
    assert_eq!(limit_remaining(&vip), (20, 19), "the file's override");
    assert_eq!(layer.now(), T0 * NS);
}

/// A customer who upgrades keeps the requests already used: 5 of 5 used on
/// the free plan, then upgraded to pro (20/minute), has 15 left, and the
/// upgrade admits the next request at once. (The same promise an override
/// makes; see `overrides.rs`.)
#[tokio::test]

async fn upgrading_a_plan_in_the_auth_layer_keeps_the_requests_used() {
    let accounts = accounts(&[("key_1", "acct_1", "free"), ("key_2", "acct_2", "pro")]);
    let policy = tiered_policy();
    let h = Harness::new(policy, &accounts);

    spend(&h, "key_1", 5, 5).await;
    accounts.lock().unwrap().get_mut("key_1").unwrap().plan = "pro".into();
    let upgraded = h.send("key_1").await;
    assert_eq!(upgraded.status(), StatusCode::OK, "5 of 20 used: room left");
    assert_eq!(limit_remaining(&upgraded), (20, 14));

    // Downgrade: 10 of 20 used, then on a 5/minute plan: over it, refused.
    spend(&h, "key_2", 10, 20).await;
    accounts.lock().unwrap().get_mut("key_2").unwrap().plan = "free".into();
    let downgraded = h.send("key_2").await;
    assert_eq!(
        downgraded.status(),
        StatusCode::TOO_MANY_REQUESTS,
        "10 used is over the free plan's 5"
    );
}
