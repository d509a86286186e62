//! The admin API through the public API, on the memory store: peek consumes
//! nothing, a reset and an override apply on the next request, errors are
//! JSON that name the field, and the raw key never reaches the logs. (A
//! binary of its own: it records every log line of the process.)

use std::convert::Infallible;
use std::sync::OnceLock;
use std::time::Duration;

use axum::body::Body;
use http::{Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use serde_json::{json, Value};
use tower::util::BoxCloneService;
use tower::{service_fn, Layer, ServiceExt};
use tower_ratelimit::clock::ManualClock;
use tower_ratelimit::key::Header;
use tower_ratelimit::penalty::Penalty;
use tower_ratelimit::store::protocol::{Check, Decided};
use tower_ratelimit::store::{MemoryStore, Store};
use tower_ratelimit::{admin, Limit, Policy, Quota, RateLimitLayer, ResponseBody, Tiers, Window};

const T0: u64 = 1_700_000_040;

type Svc = BoxCloneService<Request<String>, Response<ResponseBody<String>>, Infallible>;

fn policy() -> Policy {
    let quota = Tiers::new(Quota::new(Window::per_minute(60)).and(Window::per_hour(1000)))
        .plan("scale", Quota::new(Window::per_minute(600)));
    Policy::builder()
        .limit(
            Limit::new("per_key", Header::parse("X-API-Key").unwrap())
                .route("POST /v1/keys", Quota::new(Window::per_hour(10)))
                .quota(quota)
                .penalty(
                    Penalty::new(2, Duration::from_secs(60), Duration::from_secs(300)).unwrap(),
                ),
        )
        .build()
        .unwrap()
}

struct Harness {
    svc: Svc,
    admin: axum::Router,
}

impl Harness {
    fn new() -> Self {
        logs();
        let layer = RateLimitLayer::new(policy()).clock(ManualClock::at_unix_secs(T0));
        let inner = service_fn(|_req: Request<String>| async {
            Ok::<_, Infallible>(Response::new(String::from("ok")))
        });
        Harness {
            svc: BoxCloneService::new(layer.layer(inner)),
            admin: admin::router(&layer),
        }
    }

    /// `(status, X-RateLimit-Limit, X-RateLimit-Remaining)` of a request of `key`.
    async fn send(&self, key: &str) -> (StatusCode, String, String) {
        let request = Request::get("/v1/calls")
            .header("x-api-key", key)
            .body(String::new())
            .unwrap();
        let response = self.svc.clone().oneshot(request).await.unwrap();
        let header = |name| {
            response
                .headers()
                .get(name)
                .map_or(String::new(), |v| v.to_str().unwrap().to_owned())
        };
        let (limit, remaining) = (header("x-ratelimit-limit"), header("x-ratelimit-remaining"));
        (response.status(), limit, remaining)
    }

    async fn admin(&self, method: Method, path: &str, body: &str) -> (StatusCode, Value) {
        admin_call::admin_call(&self.admin, method, path, body).await
    }
}

/// The `GET /v1/calls` route's windows in a peek: `[(limit, remaining)]`.
fn calls_windows(peek: &Value) -> Vec<(u64, u64)> {
    let route = peek["routes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["route"] == "* *")
        .expect("the default route");
    admin_call::limits_and_remaining(route)
}

#[tokio::test]
async fn a_peek_consumes_nothing() {
    let h = Harness::new();
    h.send("k1").await;
    h.send("k1").await;
    for _ in 0..3 {
        let (status, peek) = h.admin(Method::GET, "/limits/per_key/keys/k1", "").await;
        assert_eq!(status, StatusCode::OK, "{peek}");
        assert_eq!(calls_windows(&peek), [(60, 58), (1000, 998)]);
        assert_eq!(peek["limit"], "per_key");
        assert_eq!(peek["routes"][0]["route"], "POST /v1/keys");
        assert_eq!(peek["routes"][0]["windows"][0]["remaining"], 10);
        assert_eq!(peek["routes"][1]["windows"][0]["rate"], "60/minute");
        assert_eq!(peek["banned_for"], Value::Null);
        assert_eq!(peek["override"], Value::Null);
        let reset = peek["routes"][1]["windows"][0]["reset"].as_u64().unwrap();
        assert!((T0..=T0 + 60).contains(&reset), "{reset}");
    }
    assert_eq!(h.send("k1").await.2, "57");
}

#[tokio::test]
async fn a_reset_applies_on_the_next_request_and_lifts_a_ban() {
    let h = Harness::new();
    for _ in 0..60 {
        h.send("k2").await;
    }
    for _ in 0..2 {
        assert_eq!(h.send("k2").await.0, StatusCode::TOO_MANY_REQUESTS);
    }
    let (_, peek) = h.admin(Method::GET, "/limits/per_key/keys/k2", "").await;
    assert_eq!(peek["banned_for"], 300, "{peek}");
    let (status, body) = h.admin(Method::DELETE, "/limits/per_key/keys/k2", "").await;
    assert_eq!(
        (status, body),
        (StatusCode::OK, json!({"limit": "per_key", "reset": true}))
    );
    assert_eq!(
        h.send("k2").await,
        (StatusCode::OK, "60".into(), "59".into())
    );
    let (_, peek) = h.admin(Method::GET, "/limits/per_key/keys/k2", "").await;
    assert_eq!(peek["banned_for"], Value::Null);
}

#[tokio::test]
async fn overrides_apply_on_the_next_request_and_delete_removes_them() {
    let h = Harness::new();
    h.send("k3").await;
    let path = "/limits/per_key/keys/k3/override";
    let (status, body) = h
        .admin(
            Method::PUT,
            path,
            r#"{"windows": ["120/minute", "5000/hour"]}"#,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        body["override"],
        json!({"windows": ["120/minute", "5000/hour"]})
    );
    assert_eq!(
        h.send("k3").await,
        (StatusCode::OK, "120".into(), "118".into())
    );
    let (_, peek) = h.admin(Method::GET, "/limits/per_key/keys/k3", "").await;
    assert_eq!(
        peek["override"],
        json!({"windows": ["120/minute", "5000/hour"]})
    );

    let (status, body) = h.admin(Method::PUT, path, r#"{"plan": "scale"}"#).await;
    assert_eq!(
        (status, &body["override"]),
        (StatusCode::OK, &json!({"plan": "scale"}))
    );
    assert_eq!(h.send("k3").await.1, "600");

    let (status, body) = h.admin(Method::DELETE, path, "").await;
    assert_eq!((status, &body["removed"]), (StatusCode::OK, &json!(true)));
    assert_eq!(h.send("k3").await.1, "60");
    let (_, body) = h.admin(Method::DELETE, path, "").await;
    assert_eq!(body["removed"], false);
}

#[tokio::test]
async fn errors_are_json_and_name_the_field() {
    let h = Harness::new();
    // Past the 64 KiB an override body may take.
    let huge = format!(r#"{{"windows": ["{}/minute"]}}"#, "1".repeat(3 << 20));
    let cases = [
        (
            Method::GET,
            "/limits/nope/keys/k",
            "",
            StatusCode::NOT_FOUND,
            "limit",
        ),
        (
            Method::DELETE,
            "/limits/nope/keys/k",
            "",
            StatusCode::NOT_FOUND,
            "limit",
        ),
        (
            Method::PUT,
            "/limits/nope/keys/k/override",
            "{}",
            StatusCode::NOT_FOUND,
            "limit",
        ),
        (
            Method::PUT,
            "/limits/per_key/keys/k/override",
            "{",
            StatusCode::BAD_REQUEST,
            "body",
        ),
        (
            Method::PUT,
            "/limits/per_key/keys/k/override",
            "[]",
            StatusCode::UNPROCESSABLE_ENTITY,
            "body",
        ),
        (
            Method::PUT,
            "/limits/per_key/keys/k/override",
            "{}",
            StatusCode::UNPROCESSABLE_ENTITY,
            "body",
        ),
        (
            Method::PUT,
            "/limits/per_key/keys/k/override",
            r#"{"plan": "gold"}"#,
            StatusCode::UNPROCESSABLE_ENTITY,
            "plan",
        ),
        (
            Method::PUT,
            "/limits/per_key/keys/k/override",
            r#"{"plan": 3}"#,
            StatusCode::UNPROCESSABLE_ENTITY,
            "plan",
        ),
        (
            Method::PUT,
            "/limits/per_key/keys/k/override",
            r#"{"windows": []}"#,
            StatusCode::UNPROCESSABLE_ENTITY,
            "windows",
        ),
        (
            Method::PUT,
            "/limits/per_key/keys/k/override",
            r#"{"windows": ["60/minute", "5/fortnight"]}"#,
            StatusCode::UNPROCESSABLE_ENTITY,
            "windows[1]",
        ),
        (
            Method::PUT,
            "/limits/per_key/keys/k/override",
            r#"{"windows": ["0/minute"]}"#,
            StatusCode::UNPROCESSABLE_ENTITY,
            "windows[0]",
        ),
        (
            // Not the last one given, applied in silence.
            Method::PUT,
            "/limits/per_key/keys/k/override",
            r#"{"windows": ["1/minute"], "windows": ["100/minute"]}"#,
            StatusCode::UNPROCESSABLE_ENTITY,
            "windows",
        ),
        (
            // The body's own field, not a `quota` it does not have.
            Method::PUT,
            "/limits/per_key/keys/k/override",
            r#"{"windows": ["60/minute", "100/60s"]}"#,
            StatusCode::UNPROCESSABLE_ENTITY,
            "windows",
        ),
        (
            Method::PUT,
            "/limits/per_key/keys/k/override",
            r#"{"windows": ["1/minute"], "plan": "scale"}"#,
            StatusCode::UNPROCESSABLE_ENTITY,
            "body",
        ),
        (
            Method::PUT,
            "/limits/per_key/keys/k/override",
            r#"{"quota": 1}"#,
            StatusCode::UNPROCESSABLE_ENTITY,
            "quota",
        ),
        (
            Method::GET,
            "/limits/per_key/keys/%FF",
            "",
            StatusCode::BAD_REQUEST,
            "path",
        ),
        (
            // No key: a path no route serves.
            Method::GET,
            "/limits/per_key/keys/",
            "",
            StatusCode::NOT_FOUND,
            "path",
        ),
        (
            Method::POST,
            "/limits/per_key/keys/k",
            "",
            StatusCode::METHOD_NOT_ALLOWED,
            "method",
        ),
        (
            Method::PUT,
            "/limits/per_key/keys/k/override",
            &huge,
            StatusCode::PAYLOAD_TOO_LARGE,
            "body",
        ),
    ];
    for (method, path, body, status, field) in cases {
        let (got, value) = h.admin(method.clone(), path, body).await;
        assert_eq!(got, status, "{method} {path} {body}: {value}");
        assert_eq!(value["field"], field, "{method} {path} {body}: {value}");
        assert!(value["error"].is_string(), "{value}");
    }
}

#[tokio::test]
async fn a_reset_of_a_key_counted_in_the_overflow_sketch_says_it_cannot_be_whole() {
    logs();
    let policy = Policy::builder()
        .limit(
            Limit::new("pk", Header::parse("X-API-Key").unwrap())
                .quota(Quota::new(Window::per_hour(2))),
        )
        .build()
        .unwrap();
    let layer = RateLimitLayer::with_store(policy, MemoryStore::with_max_entries(1))
        .clock(ManualClock::at_unix_secs(T0));
    let inner = service_fn(|_req: Request<String>| async {
        Ok::<_, Infallible>(Response::new(String::new()))
    });
    let svc = layer.layer(inner);
    let admin = admin::router(&layer);
    let send = |key: &'static str| {
        let request = Request::get("/").header("x-api-key", key);
        let svc = svc.clone();
        async move {
            let response = svc.oneshot(request.body(String::new()).unwrap()).await;
            response.unwrap().status()
        }
    };
    // `tracked` takes the only entry; `sketched` is counted in the sketch.
    assert_eq!(send("tracked").await, StatusCode::OK);
    for status in [
        StatusCode::OK,
        StatusCode::OK,
        StatusCode::TOO_MANY_REQUESTS,
    ] {
        assert_eq!(send("sketched").await, status);
    }
    let (status, value) =
        admin_call::admin_call(&admin, Method::DELETE, "/limits/pk/keys/sketched", "").await;
    assert_eq!(status, StatusCode::CONFLICT, "{value}");
    assert_eq!(value["field"], "key", "{value}");
    assert!(
        value["error"].as_str().unwrap().contains("overflow sketch"),
        "{value}"
    );
    // As the answer says: the count is still there.
    assert_eq!(send("sketched").await, StatusCode::TOO_MANY_REQUESTS);
    // The tracked key's own entry is forgotten whole.
    assert_eq!(send("tracked").await, StatusCode::OK);
    let (status, value) =
        admin_call::admin_call(&admin, Method::DELETE, "/limits/pk/keys/tracked", "").await;
    assert_eq!(status, StatusCode::OK, "{value}");
    assert_eq!(value, json!({ "limit": "pk", "reset": true }));
}

#[tokio::test]
async fn a_percent_encoded_key_is_the_key_it_encodes() {
    let h = Harness::new();
    h.send("tp/a b").await;
    let (status, peek) = h
        .admin(Method::GET, "/limits/per_key/keys/tp%2Fa%20b", "")
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(calls_windows(&peek)[0], (60, 59));
}

/// A store that keeps counts but cannot peek or forget.
struct Opaque(MemoryStore);

impl Store for Opaque {
    type Pending = <MemoryStore as Store>::Pending;

    fn check(&self, now: u64, checks: &[Check<'_>]) -> Decided<Self::Pending> {
        self.0.check(now, checks)
    }
}

#[tokio::test]
async fn a_store_that_cannot_peek_answers_501() {
    let layer = RateLimitLayer::with_store(policy(), Opaque(MemoryStore::new()));
    let router = admin::router(&layer);
    for method in [Method::GET, Method::DELETE] {
        let request = Request::builder()
            .method(method)
            .uri("/limits/per_key/keys/k")
            .body(Body::empty())
            .unwrap();
        let response = router.clone().oneshot(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::NOT_IMPLEMENTED);
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        let value: Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(value["field"], "store");
    }
}

#[tokio::test]
async fn the_raw_key_never_reaches_the_logs() {
    const SECRET: &str = "sk_live_admin_9Zq";
    let h = Harness::new();
    h.send(SECRET).await;
    let key_path = format!("/limits/per_key/keys/{SECRET}");
    h.admin(Method::GET, &key_path, "").await;
    h.admin(
        Method::PUT,
        &format!("{key_path}/override"),
        r#"{"plan": "scale"}"#,
    )
    .await;
    h.admin(
        Method::PUT,
        &format!("{key_path}/override"),
        r#"{"plan": "gold"}"#,
    )
    .await;
    h.admin(Method::DELETE, &format!("{key_path}/override"), "")
        .await;
    h.admin(Method::DELETE, &key_path, "").await;
    let log = logs().text();
    assert!(
        log.contains("rate-limit admin"),
        "the logs were recorded: {log}"
    );
    assert!(!log.contains(SECRET), "{log}");
}

mod addresses;
#[path = "../support/admin_call.rs"]
mod admin_call;
#[path = "../support/log_text.rs"]
mod log_text;

/// Every log line of the process since the first harness, as text.
fn logs() -> &'static log_text::LogText {
    static LOG: OnceLock<log_text::LogText> = OnceLock::new();
    LOG.get_or_init(|| {
        let log = log_text::LogText::default();
        tracing::subscriber::set_global_default(log.clone()).unwrap();
        log
    })
}

#[tokio::test]
async fn a_capture_within_a_key_is_named_by_the_key_and_the_value() {
    logs();
    let policy = Policy::builder()
        .limit(
            Limit::new(
                "per_call",
                tower_ratelimit::key::PathCapture::new("call_id")
                    .within(Header::parse("X-API-Key").unwrap()),
            )
            .route(
                "POST /calls/{call_id}/control",
                Quota::new(Window::per_minute(5)),
            ),
        )
        .build()
        .unwrap();
    let layer = RateLimitLayer::new(policy).clock(ManualClock::at_unix_secs(T0));
    let inner = service_fn(|_req: Request<String>| async {
        Ok::<_, Infallible>(Response::new(String::new()))
    });
    let svc = layer.layer(inner);
    let admin = admin::router(&layer);
    for _ in 0..2 {
        let request = Request::post("/calls/c%31/control").header("x-api-key", "tp/key");
        let response = svc.clone().oneshot(request.body(String::new()).unwrap());
        assert_eq!(response.await.unwrap().status(), StatusCode::OK);
    }
    // The key and the value (decoded) joined by the last `/`: the key may
    // hold one.
    let path = "/limits/per_call/keys/tp%2Fkey%2Fc1";
    let (status, peek) = admin_call::admin_call(&admin, Method::GET, path, "").await;
    assert_eq!(status, StatusCode::OK, "{peek}");
    let windows = admin_call::limits_and_remaining(&peek["routes"][0]);
    assert_eq!(windows, [(5, 3)], "{peek}");
    let (status, value) =
        admin_call::admin_call(&admin, Method::GET, "/limits/per_call/keys/c1", "").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{value}");
    assert_eq!(value["field"], "key");
}

#[tokio::test]
async fn the_router_merges_into_an_application_with_a_fallback_of_its_own() {
    let h = Harness::new();
    let app = axum::Router::new()
        .route("/health", axum::routing::get(|| async { "ok" }))
        .fallback(|| async { (StatusCode::NOT_FOUND, "the app's own 404") })
        .merge(h.admin.clone());
    let call = |path: &str| {
        let request = Request::get(path).body(Body::empty()).unwrap();
        let app = app.clone();
        async move {
            let response = app.oneshot(request).await.unwrap();
            let status = response.status();
            let bytes = response.into_body().collect().await.unwrap().to_bytes();
            (status, String::from_utf8(bytes.to_vec()).unwrap())
        }
    };
    assert_eq!(call("/health").await, (StatusCode::OK, "ok".into()));
    assert_eq!(
        call("/elsewhere").await,
        (StatusCode::NOT_FOUND, "the app's own 404".into())
    );
    let (status, body) = call("/limits/per_key/keys/k").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // Under `/limits`, the admin API's own JSON 404.
    let (status, body) = call("/limits/per_key/keys/").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let value: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(value["field"], "path", "{body}");
}
