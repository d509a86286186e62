//! One call of the admin API, as the tests of both stores make it, and
//! what they read from its answers.

use axum::body::Body;
use http::{Method, Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::Value;
use tower::ServiceExt;

/// Sends `method path` with `body` to the admin `router`: the status and
/// the JSON answer (`Null` if it is not JSON).
pub(crate) async fn admin_call(
    router: &axum::Router,
    method: Method,
    path: &str,
    body: &str,
) -> (StatusCode, Value) {
    let request = Request::builder()
        .method(method)
        .uri(path)
        .body(Body::from(body.to_owned()))
        .unwrap();
    let response = router.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

/// A peeked route's windows (its `"windows"` array): `[(limit, remaining)]`.
pub(crate) fn limits_and_remaining(route: &Value) -> Vec<(u64, u64)> {
    route["windows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| {
            (
                w["limit"].as_u64().unwrap(),
                w["remaining"].as_u64().unwrap(),
            )
        })
        .collect()
}
