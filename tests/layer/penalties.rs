//! Temporary bans through the layer: a key refused N times within a window
//! is refused for a while, with an honest `Retry-After` and a body that says
//! it is a temporary block.

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use serde_json::{json, Value};
use tower::util::BoxCloneService;
use tower::{service_fn, Layer, ServiceExt};
use tower_ratelimit::clock::ManualClock;
use tower_ratelimit::key::{Header, PathCapture};
use tower_ratelimit::penalty::Penalty;
use tower_ratelimit::store::MemoryStore;
use tower_ratelimit::{
    Algorithm, Decision, EventKind, Limit, Policy, Quota, RateLimitLayer, RefusalReason,
    ResponseBody, Window,
};

const NS: u64 = 1_000_000_000;
/// A minute boundary.
const T0: u64 = 1_700_000_040;

type Res = Response<ResponseBody<String>>;

struct Harness {
    clock: ManualClock,
    layer: RateLimitLayer,
    svc: BoxCloneService<Request<String>, Res, Infallible>,
    calls: Arc<AtomicUsize>,
    events: Arc<Mutex<Vec<EventKind>>>,
}

impl Harness {
    fn new(policy: Policy) -> Self {
        Self::with_store(policy, MemoryStore::new())
    }

    fn with_store(policy: Policy, store: MemoryStore) -> Self {
        let clock = ManualClock::at_unix_secs(T0);
        let calls = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&calls);
        let inner = service_fn(move |_req: Request<String>| {
            counter.fetch_add(1, Ordering::SeqCst);
            async { Ok::<_, Infallible>(Response::new(String::from("ok"))) }
        });
        let events = Arc::new(Mutex::new(Vec::new()));
        let record = Arc::clone(&events);
        let layer = RateLimitLayer::with_store(policy, store)
            .decision_extensions(true)
            .clock(clock.clone())
            .on_event(move |e| record.lock().unwrap().push(e.kind()));
        Harness {
            clock,
            svc: BoxCloneService::new(layer.layer(inner)),
            layer,
            calls,
            events,
        }
    }

    async fn send(&self, path: &str, key: &str) -> Res {
        let request = Request::get(path)
            .header("x-api-key", key)
            .body(String::new())
            .unwrap();
        self.svc.clone().oneshot(request).await.unwrap()
    }

    fn at(&self, secs_after_t0: u64) {
        self.clock.set((T0 + secs_after_t0) * NS);
    }

    fn bans(&self) -> usize {
        self.events
            .lock()
            .unwrap()
            .iter()
            .filter(|k| **k == EventKind::Banned)
            .count()
    }
}

fn retry_after(response: &Res) -> u64 {
    response.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap()
}

async fn body(response: Res) -> Value {
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    serde_json::from_slice(&bytes).unwrap()
}

/// Per key: 2 per minute in fixed windows; 3 refusals within 60 s ban the
/// key for 300 s.
fn policy() -> Policy {
    Policy::builder()
        .limit(
            Limit::new("per_key", Header::parse("X-API-Key").unwrap())
                .quota(Quota::new(Window::per_minute(2)).algorithm(Algorithm::FixedWindow))
                .penalty(
                    Penalty::new(3, Duration::from_secs(60), Duration::from_secs(300)).unwrap(),
                ),
        )
        .build()
        .unwrap()
}

#[tokio::test]
async fn the_third_refusal_within_a_minute_bans_the_key_for_the_ban_time() {
    let h = Harness::new(policy());
    h.at(0);
    assert_eq!(h.send("/", "k").await.status(), StatusCode::OK);
    assert_eq!(h.send("/", "k").await.status(), StatusCode::OK);
    h.at(10);
    let first = h.send("/", "k").await;
    assert_eq!(first.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(
        retry_after(&first),
        50,
        "an ordinary refusal: the window ends in 50 s"
    );
    h.at(20);
    assert_eq!(retry_after(&h.send("/", "k").await), 40);
    assert_eq!(h.bans(), 0);

    // The third refusal starts the ban, and says so: its Retry-After is the
    // ban's, so a client that honours it is not refused again.
    h.at(30);
    let third = h.send("/", "k").await;
    assert_eq!(third.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(retry_after(&third), 300);
    assert_eq!(h.bans(), 1);
    let decision = third.extensions().get::<Decision>().unwrap().clone();
    assert_eq!(decision.refusal(), Some(RefusalReason::Banned));
    assert_eq!(third.headers()["x-ratelimit-remaining"], "0");
    assert_eq!(
        third.headers()["x-ratelimit-reset"],
        (T0 + 330).to_string().as_str()
    );
    assert_eq!(
        body(third).await,
        json!({"error": {"code": "temporarily_blocked",
            "message": "Temporarily blocked after repeated rate-limit violations. Try again in 300 seconds.",
            "retry_after": 300}})
    );

    // The window resets at 60 s, but the ban holds, counting down; requests
    // during the ban neither reach the service nor extend the ban.
    let calls = h.calls.load(Ordering::SeqCst);
    for (at, left) in [(60, 270), (100, 230), (329, 1)] {
        h.at(at);
        let refused = h.send("/", "k").await;
        assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS, "at {at}");
        assert_eq!(retry_after(&refused), left, "at {at}");
    }
    assert_eq!(h.calls.load(Ordering::SeqCst), calls);
    assert_eq!(h.bans(), 1);

    // It lifts exactly when it said.
    h.at(330);
    assert_eq!(h.send("/", "k").await.status(), StatusCode::OK);
}

#[tokio::test]
async fn refusals_spread_wider_than_the_window_never_ban() {
    let h = Harness::new(policy());
    for minute in 0..10 {
        h.at(minute * 61);
        // Two admitted, then one refusal per minute: never 3 within 60 s.
        let _ = h.send("/", "k").await;
        let _ = h.send("/", "k").await;
        let refused = h.send("/", "k").await;
        assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_ne!(
            refused.extensions().get::<Decision>().unwrap().refusal(),
            Some(RefusalReason::Banned)
        );
    }
    assert_eq!(h.bans(), 0);
}

#[tokio::test]
async fn a_ban_is_per_key_and_covers_every_route_of_the_limit() {
    let policy = Policy::builder()
        .limit(
            Limit::new("per_account", PathCapture::new("account"))
                .route(
                    "/v2/accounts/{account}/legs/*",
                    Quota::new(Window::per_minute(1)),
                )
                .route(
                    "/v2/accounts/{account}/bridges/*",
                    Quota::new(Window::per_minute(1)),
                )
                .penalty(
                    Penalty::new(2, Duration::from_secs(60), Duration::from_secs(300)).unwrap(),
                ),
        )
        .build()
        .unwrap();
    let h = Harness::new(policy);
    h.at(0);
    assert_eq!(
        h.send("/v2/accounts/A/legs", "-").await.status(),
        StatusCode::OK
    );
    assert_eq!(
        h.send("/v2/accounts/A/bridges", "-").await.status(),
        StatusCode::OK
    );
    // One refusal in each category: two refusals of the same account.
    assert_eq!(retry_after(&h.send("/v2/accounts/A/legs", "-").await), 60);
    assert_eq!(
        retry_after(&h.send("/v2/accounts/A/bridges", "-").await),
        300
    );
    h.at(120);
    for path in ["/v2/accounts/A/legs", "/v2/accounts/A/bridges"] {
        assert_eq!(retry_after(&h.send(path, "-").await), 180, "{path}");
    }
    // Another account is not touched.
    assert_eq!(
        h.send("/v2/accounts/B/legs", "-").await.status(),
        StatusCode::OK
    );
}

#[tokio::test]
async fn a_shadow_limit_never_bans() {
    let policy = Policy::builder()
        .limit(
            Limit::new("per_key", Header::parse("X-API-Key").unwrap())
                .quota(Quota::new(Window::per_minute(1)))
                .penalty(
                    Penalty::new(1, Duration::from_secs(60), Duration::from_secs(300)).unwrap(),
                )
                .shadow(true),
        )
        .build()
        .unwrap();
    let h = Harness::new(policy);
    h.at(0);
    for _ in 0..5 {
        assert_eq!(h.send("/", "k").await.status(), StatusCode::OK);
    }
    assert_eq!(h.bans(), 0);
}

#[tokio::test]
async fn policy_files_express_penalties() {
    let policy = Policy::from_toml(
        r#"
        refusal = "exotel"

        [[limits]]
        name = "per_key"
        key = { header = "X-API-Key" }
        penalty = { refusals = 1, within = "60s", ban = "5m" }
        routes = [{ windows = ["1/minute"] }]
        "#,
    )
    .unwrap();
    let h = Harness::new(policy);
    h.at(0);
    assert_eq!(h.send("/", "k").await.status(), StatusCode::OK);
    let banned = h.send("/", "k").await;
    assert_eq!(retry_after(&banned), 300);
    let request_id = banned.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        body(banned).await,
        json!({"request_id": request_id, "http_code": 429, "response": {"error": {
            "code": "rate_limit_exceeded",
            "message": "temporarily throttled after repeated rate limit violations please retry after some time"}}})
    );

    let err = Policy::from_toml(
        "[[limits]]\nname = \"a\"\nkey = { global = true }\npenalty = { refusals = 20, within = \"0s\", ban = \"5m\" }\nroutes = [{ windows = [\"1/minute\"] }]\n",
    )
    .unwrap_err();
    assert_eq!(err.field(), "limits[0].penalty.within");
    assert_eq!(err.line(), Some(4));
}

#[tokio::test]
async fn the_store_keeps_a_key_for_its_penalty_only_while_it_matters() {
    let h = Harness::new(policy());
    h.at(0);
    for _ in 0..2 {
        assert_eq!(h.send("/", "k").await.status(), StatusCode::OK);
    }
    let penalties = || h.layer.store().penalized_keys();
    assert_eq!(penalties(), 0, "admitted requests leave nothing");
    for at in [10, 20, 30] {
        h.at(at);
        h.send("/", "k").await;
    }
    assert_eq!(h.bans(), 1);
    assert_eq!(penalties(), 1, "the banned key, once");
    // A sweep keeps the ban in force, and drops it once it has lifted.
    h.layer.store().sweep(h.layer.now());
    assert_eq!(penalties(), 1);
    h.at(330);
    h.layer.store().sweep(h.layer.now());
    assert_eq!(penalties(), 0);
}

#[tokio::test]
async fn a_store_that_keeps_no_banned_key_bans_nobody() {
    let h = Harness::with_store(policy(), MemoryStore::new().max_banned_keys(0));
    h.at(0);
    for _ in 0..2 {
        h.send("/", "k").await;
    }
    for at in [10, 20, 30, 40] {
        h.at(at);
        let refused = h.send("/", "k").await;
        assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(
            retry_after(&refused),
            60 - at,
            "an ordinary refusal at {at}"
        );
    }
    assert_eq!(h.bans(), 0);
    assert_eq!(h.layer.store().penalized_keys(), 0);
}

#[test]
fn under_contention_the_ban_starts_at_the_nth_refusal_and_answers_every_later_one() {
    use tower_ratelimit::store::protocol::{Check, Decided};
    use tower_ratelimit::store::Store;

    // 5 a minute; the third refusal within a minute bans for 300 s. Four
    // threads send at one frozen moment: 5 admitted, 2 refusals by the
    // window, the third starts the ban, and every one after it is the
    // ban's, whichever thread it came from and however they interleave.
    let quota = Quota::new(Window::per_minute(5));
    let penalty = Penalty::new(3, Duration::from_secs(60), Duration::from_secs(300)).unwrap();
    let now = T0 * NS;
    for round in 0..40 {
        let store = MemoryStore::new();
        let tally = Mutex::new([0usize; 4]);
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    for _ in 0..50 {
                        let check = [Check::new(7, &quota).with_penalty(9, &penalty)];
                        let Decided::Ready(Ok(outcome)) = store.check(now, &check) else {
                            panic!("the memory store decides at once");
                        };
                        let kind = match outcome.ban() {
                            _ if outcome.admitted() => 0,
                            None => 1,
                            Some(ban) if ban.started => 2,
                            Some(_) => 3,
                        };
                        tally.lock().unwrap()[kind] += 1;
                    }
                });
            }
        });
        let [admitted, by_window, started, banned] = *tally.lock().unwrap();
        assert_eq!(
            (admitted, by_window, started, banned),
            (5, 2, 1, 200 - 8),
            "round {round}"
        );
    }
}

#[tokio::test]
async fn a_ban_shorter_than_the_refusing_window_waits_for_the_window() {
    // One an hour, and a 10 s ban on the first refusal: the window refuses
    // for an hour, so an answer of 10 s would send the client into the
    // next ban, and the next, for the whole hour.
    let policy = Policy::builder()
        .limit(
            Limit::new("per_key", Header::parse("X-API-Key").unwrap())
                .quota(Quota::new(Window::per_hour(1)))
                .penalty(
                    Penalty::new(1, Duration::from_secs(60), Duration::from_secs(10)).unwrap(),
                ),
        )
        .build()
        .unwrap();
    let h = Harness::new(policy);
    h.at(0);
    assert_eq!(h.send("/", "k").await.status(), StatusCode::OK);
    let refused = h.send("/", "k").await;
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(retry_after(&refused), 3600);
    assert_eq!(
        refused.headers()["x-ratelimit-reset"],
        (T0 + 3600).to_string().as_str()
    );
    let decision = refused.extensions().get::<Decision>().unwrap();
    assert_eq!(decision.refusal(), Some(RefusalReason::Banned));
    assert_eq!(h.bans(), 1);
    // The ban itself lasts its 10 s: refused by it until then, uncounted.
    h.at(9);
    let banned = h.send("/", "k").await;
    assert_eq!(retry_after(&banned), 1);
    // As the first answer said: admitted an hour on, with no second ban.
    h.at(3600);
    assert_eq!(h.send("/", "k").await.status(), StatusCode::OK);
    assert_eq!(h.bans(), 1);
}

#[tokio::test]
async fn a_refusal_that_starts_two_bans_reports_both_and_waits_for_the_longer() {
    let key = || Header::parse("X-API-Key").unwrap();
    let banning = |secs| Penalty::new(2, Duration::from_secs(60), Duration::from_secs(secs));
    let policy = Policy::builder()
        .limit(
            Limit::new("a", key())
                .quota(Quota::new(Window::per_minute(1)))
                .penalty(banning(100).unwrap()),
        )
        .limit(
            Limit::new("b", key())
                .quota(Quota::new(Window::per_minute(1)))
                .penalty(banning(300).unwrap()),
        )
        .build()
        .unwrap();
    let clock = ManualClock::at_unix_secs(T0);
    let events = Arc::new(Mutex::new(Vec::new()));
    let record = Arc::clone(&events);
    let layer = RateLimitLayer::new(policy)
        .clock(clock.clone())
        .on_event(move |e| {
            record
                .lock()
                .unwrap()
                .push((e.kind(), e.limit().to_owned()))
        });
    let inner = service_fn(|_req: Request<String>| async {
        Ok::<_, Infallible>(Response::new(String::new()))
    });
    let svc = layer.layer(inner);
    let send = || {
        let request = Request::get("/").header("x-api-key", "k");
        svc.clone().oneshot(request.body(String::new()).unwrap())
    };
    assert_eq!(send().await.unwrap().status(), StatusCode::OK);
    assert_eq!(
        send().await.unwrap().status(),
        StatusCode::TOO_MANY_REQUESTS
    );
    let started = send().await.unwrap();
    assert_eq!(retry_after(&started), 300);
    let banned: Vec<String> = (events.lock().unwrap().iter())
        .filter(|(kind, _)| *kind == EventKind::Banned)
        .map(|(_, limit)| limit.clone())
        .collect();
    assert_eq!(banned, ["a", "b"]);
    // A request in the bans hears of the longer one too.
    clock.set((T0 + 50) * NS);
    assert_eq!(retry_after(&send().await.unwrap()), 250);
    clock.set((T0 + 300) * NS);
    assert_eq!(send().await.unwrap().status(), StatusCode::OK);
}
