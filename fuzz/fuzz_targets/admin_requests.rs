//! Arbitrary requests to the admin API (the input's first byte picks the
//! method, its first line is the path, the rest the body) on the memory
//! store: a JSON answer with a 2xx or a 4xx (or the 501/503 of a store that
//! cannot answer), never a 500, never a panic.
#![no_main]

use http::{Method, Request, StatusCode};
use libfuzzer_sys::fuzz_target;
use tower::ServiceExt;
use tower_ratelimit::{admin, Policy, RateLimitLayer};

/// A policy with plans, routes and an in-flight cap: the Nixflex preset.
const POLICY: &str = include_str!("../../demo/policies/nixflex.toml");

const METHODS: [Method; 4] = [Method::GET, Method::DELETE, Method::PUT, Method::POST];

fuzz_target!(|data: &[u8]| {
    let Some((&first, rest)) = data.split_first() else {
        return;
    };
    let (path, body) = match rest.iter().position(|&b| b == b'\n') {
        Some(at) => (&rest[..at], &rest[at + 1..]),
        None => (rest, &[][..]),
    };
    let Ok(path) = std::str::from_utf8(path) else {
        return;
    };
    let Ok(request) = Request::builder()
        .method(METHODS[usize::from(first) % METHODS.len()].clone())
        .uri(path)
        .header("content-type", "application/json")
        .body(axum::body::Body::from(body.to_vec()))
    else {
        return;
    };
    let policy = Policy::from_toml(POLICY).expect("the preset loads");
    let layer = RateLimitLayer::new(policy);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let response = runtime
        .block_on(admin::router(&layer).oneshot(request))
        .unwrap();
    let status = response.status();
    assert_ne!(status, StatusCode::INTERNAL_SERVER_ERROR);
    assert!(
        status.is_success() || status.is_client_error() || status.is_server_error(),
        "{status}"
    );
});
