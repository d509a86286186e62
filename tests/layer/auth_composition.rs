//! The auth composition example (`examples/auth_composition.rs`), driven
//! through its own service stack: accounts from API keys, plan quotas,
//! one bucket per account and per-plan in-flight caps.

#[path = "../../examples/auth_composition.rs"]
#[allow(dead_code, unreachable_pub)]
mod example;

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use serde_json::Value;
use tower::{service_fn, Service, ServiceBuilder, ServiceExt};
use tower_ratelimit::clock::ManualClock;
use tower_ratelimit::RateLimitLayer;

use example::{app, policy, Accounts, AuthLayer};

/// The example's stack on a manual clock, with the limiter's layer (for its
/// store and slots) and a count of the events it reported.
struct Fixture {
    clock: ManualClock,
    layer: RateLimitLayer,
    events: Arc<AtomicUsize>,
}

fn stack() -> (
    impl Service<Request<Body>, Response = Response<Body>, Error = Infallible> + Clone,
    Fixture,
) {
    let clock = ManualClock::at_unix_secs(1_700_000_000);
    let events = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&events);
    let layer = RateLimitLayer::new(policy())
        .clock(clock.clone())
        .on_event(move |_| {
            counted.fetch_add(1, Ordering::SeqCst);
        });
    let service = app(Accounts::demo(), layer.clone());
    (
        service,
        Fixture {
            clock,
            layer,
            events,
        },
    )
}

fn with_key(key: &str) -> Request<Body> {
    Request::get("/v1/calls")
        .header("x-api-key", key)
        .body(Body::empty())
        .unwrap()
}

fn with_bearer(token: &str) -> Request<Body> {
    Request::get("/v1/calls")
        .header("authorization", format!("Bearer {token}"))
        .body(Body::empty())
        .unwrap()
}

async fn send<S>(service: &S, request: Request<Body>) -> Response<Body>
where
    S: Service<Request<Body>, Response = Response<Body>, Error = Infallible> + Clone,
{
    service.clone().oneshot(request).await.unwrap()
}

/// Sends `limit` requests made by `request`: each is admitted, with the
/// plan's headers (`limit` a minute, `cap` in flight) and one less left.
async fn spend_plan<S>(service: &S, request: impl Fn() -> Request<Body>, limit: u32, cap: u32)
where
    S: Service<Request<Body>, Response = Response<Body>, Error = Infallible> + Clone,
{
    let policy = format!(
        r#""per_account.minute";q={limit};w=60, "per_account.concurrency";q={cap};qu="concurrent-requests""#
    );
    for used in 1..=limit {
        let response = send(service, request()).await;
        assert_eq!(response.status(), StatusCode::OK, "request {used}");
        let limit_text = limit.to_string();
        assert_eq!(header(&response, "x-ratelimit-limit"), Some(&*limit_text));
        let remaining = (limit - used).to_string();
        assert_eq!(
            header(&response, "x-ratelimit-remaining"),
            Some(&*remaining)
        );
        assert_eq!(header(&response, "ratelimit-policy"), Some(&*policy));
    }
}

fn header<'r>(response: &'r Response<Body>, name: &str) -> Option<&'r str> {
    response
        .headers()
        .get(name)
        .map(|v| v.to_str().expect("a header of ASCII text"))
}

async fn error_code(response: Response<Body>) -> String {
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    let body: Value = serde_json::from_slice(&bytes).expect("a JSON body");
    body["error"]["code"]
        .as_str()
        .expect("an error code")
        .to_owned()
}

#[tokio::test]
async fn unknown_or_missing_keys_are_refused_by_auth_and_never_reach_the_limiter() {
    let (service, fixture) = stack();
    for _ in 0..50 {
        for (request, code) in [
            (with_key("sk_nope"), "invalid_api_key"),
            (with_bearer("sk_guess"), "invalid_api_key"),
            (
                Request::get("/v1/calls").body(Body::empty()).unwrap(),
                "missing_api_key",
            ),
        ] {
            let response = send(&service, request).await;
            assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
            assert_eq!(header(&response, "www-authenticate"), Some("Bearer"));
            assert_eq!(header(&response, "x-ratelimit-limit"), None);
            assert_eq!(header(&response, "ratelimit-policy"), None);
            assert_eq!(error_code(response).await, code);
        }
    }
    assert!(fixture.layer.store().is_empty(), "nothing was counted");
    assert_eq!(fixture.layer.keys_in_flight(), 0, "no slot was taken");
    assert_eq!(fixture.events.load(Ordering::SeqCst), 0);

    let response = send(&service, with_key("sk_free_1")).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(header(&response, "x-ratelimit-remaining"), Some("9"));
}

#[tokio::test]
async fn a_free_account_is_refused_after_exactly_ten_a_minute_with_its_plan_headers() {
    let (service, fixture) = stack();
    spend_plan(&service, || with_key("sk_free_1"), 10, 2).await;

    let refused = send(&service, with_key("sk_free_1")).await;
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(header(&refused, "x-ratelimit-limit"), Some("10"));
    assert_eq!(header(&refused, "x-ratelimit-remaining"), Some("0"));
    // GCRA gives one request back every 60 s / 10.
    assert_eq!(header(&refused, "retry-after"), Some("6"));
    assert_eq!(error_code(refused).await, "rate_limit_exceeded");
    assert_eq!(fixture.events.load(Ordering::SeqCst), 1);

    fixture.clock.advance(Duration::from_secs(6));
    let response = send(&service, with_key("sk_free_1")).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(header(&response, "x-ratelimit-remaining"), Some("0"));
}

#[tokio::test]
async fn a_pro_account_gets_the_pro_limit() {
    let (service, _fixture) = stack();
    spend_plan(&service, || with_bearer("sk_pro_1"), 100, 10).await;
    let refused = send(&service, with_bearer("sk_pro_1")).await;
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(header(&refused, "x-ratelimit-limit"), Some("100"));
    // 60 s / 100 = 0.6 s, rounded up.
    assert_eq!(header(&refused, "retry-after"), Some("1"));

    // The free account has its own, untouched bucket.
    let free = send(&service, with_key("sk_free_1")).await;
    assert_eq!(free.status(), StatusCode::OK);
    assert_eq!(header(&free, "x-ratelimit-remaining"), Some("9"));
}

#[tokio::test]
async fn two_keys_of_one_account_share_one_bucket() {
    let (service, fixture) = stack();
    for used in 1..=10 {
        // Alternate the account's two keys, and the two ways of sending one.
        let request = if used % 2 == 0 {
            with_key("sk_free_2")
        } else {
            with_bearer("sk_free_1")
        };
        let response = send(&service, request).await;
        assert_eq!(response.status(), StatusCode::OK, "request {used}");
        let remaining = (10 - used).to_string();
        assert_eq!(
            header(&response, "x-ratelimit-remaining"),
            Some(&*remaining)
        );
    }
    for key in ["sk_free_1", "sk_free_2"] {
        let refused = send(&service, with_key(key)).await;
        assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS, "{key}");
    }
    assert_eq!(fixture.layer.store().len(), 1, "one bucket, one window");
}

#[tokio::test]
async fn the_in_flight_cap_follows_the_plan_and_a_busy_refusal_costs_nothing() {
    let (service, fixture) = stack();
    // A response whose body is not yet sent (or dropped) holds its slot.
    let held = vec![
        send(&service, with_key("sk_free_1")).await,
        send(&service, with_bearer("sk_free_2")).await,
    ];
    assert!(held.iter().all(|r| r.status() == StatusCode::OK));
    assert_eq!(
        header(&held[1], "ratelimit"),
        Some(r#""per_account.minute";r=8;t=6, "per_account.concurrency";r=0"#)
    );

    for key in ["sk_free_1", "sk_free_2"] {
        let busy = send(&service, with_key(key)).await;
        assert_eq!(busy.status(), StatusCode::TOO_MANY_REQUESTS, "{key}");
        assert_eq!(header(&busy, "retry-after"), Some("1"));
        assert_eq!(
            header(&busy, "ratelimit-policy"),
            Some(r#""per_account.concurrency";q=2;qu="concurrent-requests""#)
        );
        assert_eq!(error_code(busy).await, "concurrency_limit_exceeded");
    }

    // The pro account's cap is its own, and 10.
    let mut pro = Vec::new();
    for _ in 0..10 {
        let response = send(&service, with_key("sk_pro_1")).await;
        assert_eq!(response.status(), StatusCode::OK);
        pro.push(response);
    }
    let busy = send(&service, with_key("sk_pro_1")).await;
    assert_eq!(busy.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(error_code(busy).await, "concurrency_limit_exceeded");

    // A finished response frees its slot; the busy refusals counted nothing.
    drop(held);
    let response = send(&service, with_key("sk_free_1")).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(header(&response, "x-ratelimit-remaining"), Some("7"));
    drop(response);
    drop(pro);
    assert_eq!(fixture.layer.keys_in_flight(), 0, "every slot is back");
}

#[tokio::test]
async fn a_limiter_outside_auth_cannot_see_the_account() {
    // The wrong order: the limiter runs before the auth layer has put the
    // account into the request, so even a valid key is a missing key to it.
    let service = ServiceBuilder::new()
        .layer(RateLimitLayer::new(policy()))
        .layer(AuthLayer::new(Accounts::demo()))
        .service(service_fn(|_: Request<Body>| async {
            Ok::<_, Infallible>(Response::new(Body::empty()))
        }));
    let response = service.oneshot(with_key("sk_free_1")).await.unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    let body: Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(body["error"]["code"], "missing_key");
}
