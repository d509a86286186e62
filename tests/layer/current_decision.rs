//! Handlers read the layer's decision with the defaults, without any
//! extension: `Decision::current()` while the inner service runs, and the
//! axum extractor.

use std::convert::Infallible;
use std::future::Future;

use axum::body::Body;
use axum::routing::get;
use axum::Router;
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use tower::{service_fn, Layer, ServiceExt};
use tower_ratelimit::key::Header;
use tower_ratelimit::{Decision, Limit, Policy, Quota, RateLimitLayer, Window};

fn per_key(name: &str, n: u32) -> Policy {
    Policy::builder()
        .limit(
            Limit::new(name, Header::parse("X-API-Key").unwrap())
                .quota(Quota::new(Window::per_minute(n))),
        )
        .build()
        .unwrap()
}

fn call(path: &str, key: &str) -> Request<Body> {
    Request::get(path)
        .header("x-api-key", key)
        .body(Body::empty())
        .unwrap()
}

async fn text(response: Response<impl http_body::Body<Error = impl std::fmt::Debug>>) -> String {
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8(bytes.to_vec()).unwrap()
}

/// What a handler reports of its decision: remaining in the reported window.
fn remaining(decision: Option<Decision>) -> String {
    match decision {
        Some(d) => d.reported().map_or(u32::MAX, |w| w.remaining).to_string(),
        None => "none".into(),
    }
}

/// An inner service that answers what `Decision::current()` says is left.
fn echo_remaining() -> impl tower::Service<
    Request<Body>,
    Response = Response<String>,
    Error = Infallible,
    Future = impl Future<Output = Result<Response<String>, Infallible>> + Send,
> + Clone
       + Send {
    service_fn(|_: Request<Body>| async {
        Ok::<_, Infallible>(Response::new(remaining(Decision::current())))
    })
}

#[tokio::test(start_paused = true)]
async fn an_axum_handler_takes_the_decision_as_an_extractor_with_the_defaults() {
    let app = Router::new()
        .route(
            "/v1/remaining",
            get(|decision: Decision| async move { remaining(Some(decision)) }),
        )
        .layer(RateLimitLayer::new(per_key("per_key", 5)));
    for expected in ["4", "3", "2"] {
        let response = app
            .clone()
            .oneshot(call("/v1/remaining", "k_1"))
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert!(
            response.extensions().get::<Decision>().is_none(),
            "no extension unless asked for"
        );
        assert_eq!(text(response).await, expected);
    }
}

#[tokio::test(start_paused = true)]
async fn the_decision_is_current_across_awaits_in_the_handler_but_not_in_spawned_tasks() {
    let handler = service_fn(|_: Request<Body>| async {
        let before = remaining(Decision::current());
        tokio::task::yield_now().await;
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        let after = remaining(Decision::current());
        let spawned = tokio::spawn(async { remaining(Decision::current()) })
            .await
            .unwrap();
        Ok::<_, Infallible>(Response::new(format!("{before} {after} {spawned}")))
    });
    let service = RateLimitLayer::new(per_key("per_key", 3)).layer(handler);
    let response = service.clone().oneshot(call("/", "k_1")).await.unwrap();
    assert_eq!(text(response).await, "2 2 none");
    assert!(Decision::current().is_none(), "nothing is current outside");
    let response = service.oneshot(call("/", "k_1")).await.unwrap();
    assert_eq!(text(response).await, "1 1 none");
}

#[tokio::test(start_paused = true)]
async fn the_decision_is_current_in_the_inner_service_s_call_too() {
    // A service doing its work in `call` (not in its future) sees it too.
    let handler = service_fn(|_: Request<Body>| {
        let seen = remaining(Decision::current());
        std::future::ready(Ok::<_, Infallible>(Response::new(seen)))
    });
    let service = RateLimitLayer::new(per_key("per_key", 10)).layer(handler);
    let response = service.oneshot(call("/", "k_1")).await.unwrap();
    assert_eq!(text(response).await, "9");
}

#[tokio::test(start_paused = true)]
async fn under_stacked_layers_the_innermost_decision_is_current() {
    let handler = service_fn(|_: Request<Body>| async {
        let d = Decision::current().unwrap();
        let w = d.reported().unwrap();
        Ok::<_, Infallible>(Response::new(format!("{}/{}", w.remaining, w.limit)))
    });
    let inner = RateLimitLayer::new(per_key("inner", 7)).layer(handler);
    let service = RateLimitLayer::new(per_key("outer", 100)).layer(inner);
    let response = service.oneshot(call("/", "k_1")).await.unwrap();
    assert_eq!(text(response).await, "6/7");
}

#[tokio::test(start_paused = true)]
async fn under_stacked_layers_the_extractor_takes_the_innermost_decision_too() {
    // The outer layer puts its decision into the request's extensions; the
    // inner one (the defaults) only makes its own current. The extractor
    // must agree with `Decision::current`: the inner layer's.
    let describe = |decision: Decision| async move {
        let current = Decision::current().unwrap();
        let limit = |d: &Decision| d.reported().unwrap().limit;
        format!("{} {}", limit(&decision), limit(&current))
    };
    let app = Router::new().route("/", get(describe));
    let inner = RateLimitLayer::new(per_key("inner", 7)).layer(app);
    let service = RateLimitLayer::new(per_key("outer", 100))
        .decision_extensions(true)
        .layer(inner);
    let response = service.oneshot(call("/", "k_1")).await.unwrap();
    assert_eq!(text(response).await, "7 7");
}

#[tokio::test(start_paused = true)]
async fn under_stacked_layers_with_extensions_the_response_carries_the_outermost_decision() {
    // Each layer writes its headers on the way out, so the response's
    // headers are the outermost layer's, and so is its extension; the
    // request's extension is the innermost's, as the handler sees it.
    let handler = service_fn(|request: Request<Body>| async move {
        let seen = request.extensions().get::<Decision>().unwrap();
        let current = Decision::current().unwrap();
        let limit = |d: &Decision| d.reported().unwrap().limit;
        let text = format!("{} {}", limit(seen), limit(&current));
        Ok::<_, Infallible>(Response::new(Body::from(text)))
    });
    let inner = RateLimitLayer::new(per_key("inner", 7))
        .decision_extensions(true)
        .layer(handler);
    let service = RateLimitLayer::new(per_key("outer", 100))
        .decision_extensions(true)
        .layer(inner);
    let response = service.oneshot(call("/", "k_1")).await.unwrap();
    let carried = response.extensions().get::<Decision>().unwrap();
    assert_eq!(carried.reported().unwrap().limit, 100);
    assert_eq!(response.headers()["x-ratelimit-limit"], "100");
    assert_eq!(text(response).await, "7 7");
}

#[tokio::test(start_paused = true)]
async fn with_current_decision_off_handlers_get_none_and_the_extractor_answers_500() {
    let handler = echo_remaining();
    let layer = RateLimitLayer::new(per_key("per_key", 10)).current_decision(false);
    let response = layer
        .clone()
        .layer(handler)
        .oneshot(call("/", "k_1"))
        .await
        .unwrap();
    assert_eq!(text(response).await, "none");
    // The headers are the same either way.
    let app = Router::new()
        .route(
            "/",
            get(|decision: Decision| async move { remaining(Some(decision)) }),
        )
        .layer(layer);
    let response = app.oneshot(call("/", "k_1")).await.unwrap();
    assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(response.headers()["x-ratelimit-remaining"], "8");
}

#[tokio::test(start_paused = true)]
async fn a_refused_request_never_reaches_the_handler_and_leaves_nothing_current() {
    let handler = echo_remaining();
    let service = RateLimitLayer::new(per_key("per_key", 1)).layer(handler);
    let first = service.clone().oneshot(call("/", "k_1")).await.unwrap();
    assert_eq!(text(first).await, "0");
    let second = service.oneshot(call("/", "k_1")).await.unwrap();
    assert_eq!(second.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(Decision::current().is_none());
}

#[tokio::test(start_paused = true)]
async fn a_request_no_limit_applies_to_has_an_uncounted_decision() {
    use tower_ratelimit::Basis;

    // An exempt key, a path no route matches: both go through uncounted,
    // and the handler's extractor says so rather than answering 500.
    let policy = Policy::builder()
        .limit(
            Limit::new("per_key", Header::parse("X-API-Key").unwrap())
                .route("GET /v1/*", Quota::new(Window::per_minute(5)))
                .exempt_keys(["k_internal"]),
        )
        .build()
        .unwrap();
    let describe = |decision: Decision| async move {
        format!(
            "{:?} {} {}",
            decision.basis(),
            decision.is_admitted(),
            decision.windows().len()
        )
    };
    let app = Router::new()
        .route("/v1/calls", get(describe))
        .route("/health", get(describe))
        .layer(RateLimitLayer::new(policy.clone()));
    for (path, key) in [("/v1/calls", "k_internal"), ("/health", "k_1")] {
        let response = app.clone().oneshot(call(path, key)).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{path}");
        assert!(response.headers().get("x-ratelimit-limit").is_none());
        assert_eq!(text(response).await, "Uncounted true 0", "{path}");
    }
    // A counted request is still counted.
    let response = app.clone().oneshot(call("/v1/calls", "k_1")).await.unwrap();
    assert_eq!(text(response).await, "Counted true 1");

    // With extensions on, the response carries it too.
    let service = RateLimitLayer::new(policy)
        .decision_extensions(true)
        .layer(echo_remaining());
    let response = service.oneshot(call("/health", "k_1")).await.unwrap();
    let decision = response.extensions().get::<Decision>().unwrap();
    assert_eq!(decision.basis(), Basis::Uncounted);
    assert!(decision.reported().is_none());
}

#[tokio::test(start_paused = true)]
async fn option_of_decision_is_none_for_a_handler_without_a_layer() {
    let handler = |decision: Option<Decision>| async move { remaining(decision) };
    let bare = Router::new().route("/", get(handler));
    let response = bare.oneshot(call("/", "k_1")).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(text(response).await, "none");
    let limited = Router::new()
        .route("/", get(handler))
        .layer(RateLimitLayer::new(per_key("per_key", 10)));
    let response = limited.oneshot(call("/", "k_1")).await.unwrap();
    assert_eq!(text(response).await, "9");
}

#[tokio::test(start_paused = true)]
async fn a_plain_admission_s_current_decision_is_the_one_the_extensions_carry() {
    use std::time::Duration;
    use tower_ratelimit::clock::ManualClock;

    // GETs are counted in two windows: a handler's decision is built from
    // the admission's figures only when it asks. POSTs are counted in five
    // (more than such figures hold): built at once. Either way it must be
    // the decision a layer with extensions puts on the response.
    let policy = Policy::builder()
        .limit(
            Limit::new("per_key", Header::parse("X-API-Key").unwrap())
                .quota(Quota::new(Window::per_second(3)).and(Window::per_minute(100))),
        )
        .limit(
            Limit::new("per_account", Header::parse("X-API-Key").unwrap()).route(
                "POST /v1/*",
                Quota::new(Window::per_minute(50))
                    .and(Window::per_hour(1_000))
                    .and(Window::per_day(5_000)),
            ),
        )
        .report_period(Duration::from_secs(60))
        .build()
        .unwrap();
    let handler = service_fn(|_: Request<Body>| async {
        let mut response = Response::new(String::new());
        response
            .extensions_mut()
            .insert(Decision::current().expect("under the layer"));
        Ok::<_, Infallible>(response)
    });
    let clock = ManualClock::at_unix_secs(1_700_000_000);
    let current = RateLimitLayer::new(policy.clone())
        .clock(clock.clone())
        .layer(handler);
    let extended = RateLimitLayer::new(policy)
        .clock(clock.clone())
        .decision_extensions(true)
        .layer(handler);
    for i in 0..16u32 {
        let key = if i % 3 == 0 { "k_1" } else { "k_2" };
        let request = || {
            let method = if i % 2 == 0 { "GET" } else { "POST" };
            Request::builder()
                .method(method)
                .uri("/v1/calls")
                .header("x-api-key", key)
                .body(Body::empty())
                .unwrap()
        };
        let asked = current.clone().oneshot(request()).await.unwrap();
        let carried = extended.clone().oneshot(request()).await.unwrap();
        let asked = asked.extensions().get::<Decision>().unwrap();
        let carried = carried.extensions().get::<Decision>().unwrap();
        assert_eq!(asked, carried, "request {i}");
        assert!(asked.is_admitted(), "request {i}");
        assert_eq!(asked.windows().len(), if i % 2 == 0 { 2 } else { 5 });
        assert_eq!(asked.reported().unwrap().period, 60, "request {i}");
        clock.advance(Duration::from_millis(350));
    }
}
