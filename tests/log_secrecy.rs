//! Logs never show a key. This test has a binary of its own: tracing caches
//! each call site's interest process-wide, so a test running beside it with
//! no subscriber could make the layer's events invisible to the recorder.

use std::convert::Infallible;

use http::header::AUTHORIZATION;
use http::{Request, Response, StatusCode};
use tower::{service_fn, Layer, ServiceExt};
use tower_ratelimit::key::Header;
use tower_ratelimit::{Limit, Policy, Quota, RateLimitLayer, Window};

const SECRET: &str = "sk_live_7fQ2mZ9xW4";

fn get(path: &str) -> http::request::Builder {
    Request::get(path)
}

fn per_minute(n: u32) -> Quota {
    Quota::new(Window::per_minute(n))
}

fn api_key() -> Header {
    Header::parse("X-API-Key").unwrap()
}

#[path = "support/log_text.rs"]
mod log_text;

use log_text::LogText as Recorder;

/// The layer logs refusals and key errors (at debug and trace level) and
/// never the key itself.
#[tokio::test(start_paused = true)]
async fn logs_never_contain_the_api_key() {
    let recorder = Recorder::default();
    let _guard = tracing::subscriber::set_default(recorder.clone());
    let policy = Policy::builder()
        .limit(Limit::new("per_key", api_key()).quota(per_minute(1)))
        .limit(Limit::new("per_token", Header::bearer()).quota(per_minute(1)))
        .max_key_len(SECRET.len() + 1)
        .build()
        .unwrap();
    let svc = RateLimitLayer::new(policy).layer(service_fn(|_req: Request<String>| async {
        Ok::<_, Infallible>(Response::new(String::from("inner")))
    }));
    let status = |request: Request<String>| {
        let svc = svc.clone();
        async move { svc.oneshot(request).await.unwrap().status() }
    };
    let both = |key: &str, auth: &str| {
        get("/v1/calls")
            .header("x-api-key", key)
            .header(AUTHORIZATION, auth)
            .body(String::new())
            .unwrap()
    };
    let bearer = format!("Bearer {SECRET}");
    assert_eq!(status(both(SECRET, &bearer)).await, StatusCode::OK);
    assert_eq!(
        status(both(SECRET, &bearer)).await,
        StatusCode::TOO_MANY_REQUESTS
    );
    let conflicting = get("/v1/calls")
        .header("x-api-key", SECRET)
        .header("x-api-key", "other")
        .body(String::new())
        .unwrap();
    assert_eq!(status(conflicting).await, StatusCode::UNAUTHORIZED);
    assert_eq!(
        status(both(&format!("{SECRET}xx"), &bearer)).await,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        status(both("k", &format!("{bearer} x"))).await,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        status(both("k", &format!("Basic {SECRET}"))).await,
        StatusCode::UNAUTHORIZED
    );

    let log = recorder.text();
    assert!(
        log.contains("refused"),
        "the recorder saw the layer's events:\n{log}"
    );
    assert!(!log.contains(SECRET), "a log line shows the key:\n{log}");
}
