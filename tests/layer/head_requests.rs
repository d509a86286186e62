//! `HEAD` is the `GET` it stands for: servers (axum and most routers) answer
//! `HEAD` with the `GET` handler, so a route that names `GET` matches `HEAD`
//! too and counts it in the same bucket, in code and in policy files, unless
//! the route opts out. Method names match whatever their case, so `get` is
//! no way around a `GET` route either.

use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use http::{Method, Request, Response, StatusCode};
use tower::util::BoxCloneService;
use tower::{service_fn, Layer, ServiceExt};
use tower_ratelimit::clock::ManualClock;
use tower_ratelimit::key::Header;
use tower_ratelimit::{
    ConfigErrorKind, Decision, Limit, Policy, Quota, RateLimitLayer, RefusalReason, ResponseBody,
    Window,
};

/// 2023-11-14T22:13:20Z.
const T0: u64 = 1_700_000_000;

type Res = Response<ResponseBody<String>>;
type Svc = BoxCloneService<Request<String>, Res, Infallible>;

/// A rate-limited service on a stopped clock whose inner service records
/// the method of every request it answers.
struct Harness {
    svc: Svc,
    seen: Arc<Mutex<Vec<String>>>,
}

impl Harness {
    fn new(policy: Policy) -> Self {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = Arc::clone(&seen);
        let inner = service_fn(move |request: Request<String>| {
            log.lock().unwrap().push(request.method().to_string());
            async { Ok::<_, Infallible>(Response::new(String::from("ok"))) }
        });
        let layer = RateLimitLayer::new(policy)
            .decision_extensions(true)
            .clock(ManualClock::at_unix_secs(T0));
        Harness {
            svc: BoxCloneService::new(layer.layer(inner)),
            seen,
        }
    }

    async fn send_with(&self, method: &str, path: &str, header: &str, key: &str) -> Res {
        let request = Request::builder()
            .method(Method::from_bytes(method.as_bytes()).unwrap())
            .uri(path)
            .header(header, key)
            .body(String::new())
            .unwrap();
        self.svc
            .clone()
            .oneshot(request)
            .await
            .unwrap_or_else(|e| match e {})
    }

    async fn send(&self, method: &str, path: &str, key: &str) -> Res {
        self.send_with(method, path, "x-api-key", key).await
    }

    /// The methods the inner service saw, in order.
    fn seen(&self) -> Vec<String> {
        self.seen.lock().unwrap().clone()
    }
}

fn api_key() -> Header {
    Header::parse("X-API-Key").unwrap()
}

fn per_key(limit: Limit) -> Policy {
    Policy::builder().limit(limit).build().unwrap()
}

fn header(response: &Res, name: &str) -> Option<String> {
    response
        .headers()
        .get(name)
        .map(|v| v.to_str().unwrap().to_owned())
}

/// `(status, X-RateLimit-Limit, X-RateLimit-Remaining)`.
fn counted(response: &Res) -> (StatusCode, Option<String>, Option<String>) {
    (
        response.status(),
        header(response, "x-ratelimit-limit"),
        header(response, "x-ratelimit-remaining"),
    )
}

fn limited(
    status: StatusCode,
    limit: u32,
    remaining: u32,
) -> (StatusCode, Option<String>, Option<String>) {
    (status, Some(limit.to_string()), Some(remaining.to_string()))
}

/// The route of the reported window: `(limit index, route index)`.
fn route_of(response: &Res) -> (u16, u16) {
    let report = response
        .extensions()
        .get::<Decision>()
        .expect("a decision")
        .reported()
        .expect("a reported window");
    (report.limit_index, report.route_index)
}

/// No limit applied: no headers, no decision.
#[track_caller]
fn uncounted(response: &Res) {
    assert_eq!(counted(response), (StatusCode::OK, None, None));
    let decision = response.extensions().get::<Decision>().unwrap();
    assert_eq!(decision.basis(), tower_ratelimit::Basis::Uncounted);
    assert!(decision.windows().is_empty());
}

// ---------------------------------------------------------------------------
// A GET route counts HEAD.

#[tokio::test]
async fn a_head_after_the_get_quota_is_used_up_is_refused_with_headers() {
    let h = Harness::new(per_key(
        Limit::new("per_key", api_key()).route("GET /v1/calls", Quota::new(Window::per_minute(5))),
    ));
    for remaining in (0..5).rev() {
        let response = h.send("GET", "/v1/calls", "k").await;
        assert_eq!(counted(&response), limited(StatusCode::OK, 5, remaining));
    }

    let response = h.send("HEAD", "/v1/calls", "k").await;
    assert_eq!(
        counted(&response),
        limited(StatusCode::TOO_MANY_REQUESTS, 5, 0)
    );
    // 5/minute earns one back every 12 s.
    assert_eq!(header(&response, "retry-after").as_deref(), Some("12"));
    assert_eq!(
        header(&response, "x-ratelimit-reset"),
        Some((T0 + 60).to_string())
    );
    let decision = response.extensions().get::<Decision>().unwrap();
    assert_eq!(decision.refusal(), Some(RefusalReason::Window));
    assert_eq!(route_of(&response), (0, 0));
    assert_eq!(h.seen(), ["GET"; 5]);

    // Another key's HEAD is its own.
    let response = h.send("HEAD", "/v1/calls", "other").await;
    assert_eq!(counted(&response), limited(StatusCode::OK, 5, 4));
    assert_eq!(h.seen().last().map(String::as_str), Some("HEAD"));
}

#[tokio::test]
async fn heads_and_gets_share_one_exact_count() {
    let h = Harness::new(per_key(
        Limit::new("per_key", api_key()).route("GET /v1/calls", Quota::new(Window::per_minute(10))),
    ));
    let mut sent = Vec::new();
    for i in 0..10u32 {
        let method = if i % 3 == 0 { "HEAD" } else { "GET" };
        let response = h.send(method, "/v1/calls", "k").await;
        assert_eq!(
            counted(&response),
            limited(StatusCode::OK, 10, 9 - i),
            "request {i}: {method}"
        );
        assert_eq!(route_of(&response), (0, 0));
        sent.push(method);
    }
    for method in ["HEAD", "GET", "HEAD"] {
        let response = h.send(method, "/v1/calls", "k").await;
        assert_eq!(
            counted(&response),
            limited(StatusCode::TOO_MANY_REQUESTS, 10, 0),
            "{method}"
        );
    }
    assert_eq!(h.seen(), sent);
}

#[tokio::test]
async fn head_counts_in_the_get_routes_bucket_of_a_partitioned_limit() {
    // Nixflex's shape: key creation, reads, writes, each its own bucket.
    let h = Harness::new(per_key(
        Limit::new("per_key", api_key())
            .route("POST /v1/keys", Quota::new(Window::per_hour(2)))
            .route("GET *", Quota::new(Window::per_minute(3)))
            .route("POST,PUT,PATCH,DELETE *", Quota::new(Window::per_minute(4))),
    ));
    for (method, remaining) in [("HEAD", 2), ("GET", 1), ("HEAD", 0)] {
        let response = h.send(method, "/v1/keys", "k").await;
        assert_eq!(counted(&response), limited(StatusCode::OK, 3, remaining));
        assert_eq!(route_of(&response), (0, 1));
    }
    for method in ["GET", "HEAD"] {
        let response = h.send(method, "/v1/calls", "k").await;
        assert_eq!(
            counted(&response),
            limited(StatusCode::TOO_MANY_REQUESTS, 3, 0)
        );
        assert_eq!(route_of(&response), (0, 1));
    }
    // The other buckets are untouched.
    let response = h.send("POST", "/v1/keys", "k").await;
    assert_eq!(counted(&response), limited(StatusCode::OK, 2, 1));
    let response = h.send("DELETE", "/v1/calls/c1", "k").await;
    assert_eq!(counted(&response), limited(StatusCode::OK, 4, 3));
}

#[tokio::test]
async fn a_route_naming_get_and_head_counts_them_together() {
    let h = Harness::new(per_key(
        Limit::new("per_key", api_key())
            .route("GET,HEAD /v1/calls", Quota::new(Window::per_minute(2))),
    ));
    assert_eq!(
        counted(&h.send("HEAD", "/v1/calls", "k").await),
        limited(StatusCode::OK, 2, 1)
    );
    assert_eq!(
        counted(&h.send("GET", "/v1/calls", "k").await),
        limited(StatusCode::OK, 2, 0)
    );
    assert_eq!(
        counted(&h.send("HEAD", "/v1/calls", "k").await),
        limited(StatusCode::TOO_MANY_REQUESTS, 2, 0)
    );
}

#[tokio::test]
async fn a_route_naming_only_post_does_not_match_head() {
    let h = Harness::new(per_key(
        Limit::new("per_key", api_key()).route("POST /v1/calls", Quota::new(Window::per_minute(1))),
    ));
    assert_eq!(
        counted(&h.send("POST", "/v1/calls", "k").await),
        limited(StatusCode::OK, 1, 0)
    );
    for _ in 0..3 {
        uncounted(&h.send("HEAD", "/v1/calls", "k").await);
    }
    assert_eq!(
        counted(&h.send("POST", "/v1/calls", "k").await),
        limited(StatusCode::TOO_MANY_REQUESTS, 1, 0)
    );
    assert_eq!(h.seen(), ["POST", "HEAD", "HEAD", "HEAD"]);
}

#[tokio::test]
async fn a_route_naming_only_head_does_not_match_get() {
    let h = Harness::new(per_key(
        Limit::new("per_key", api_key()).route("HEAD /v1/calls", Quota::new(Window::per_minute(1))),
    ));
    assert_eq!(
        counted(&h.send("HEAD", "/v1/calls", "k").await),
        limited(StatusCode::OK, 1, 0)
    );
    uncounted(&h.send("GET", "/v1/calls", "k").await);
    assert_eq!(
        counted(&h.send("HEAD", "/v1/calls", "k").await),
        limited(StatusCode::TOO_MANY_REQUESTS, 1, 0)
    );
}

// ---------------------------------------------------------------------------
// Policy files.

/// One limit keyed by `X-API-Key`, with `route` as its only route.
fn file_with_route(route: &str) -> String {
    format!(
        "[[limits]]\nname = \"per_key\"\nkey = {{ header = \"X-API-Key\" }}\nroutes = [{route}]\n"
    )
}

#[tokio::test]
async fn a_get_route_in_a_policy_file_counts_head() {
    for methods in [r#"["GET"]"#, r#""GET""#, r#"["get"]"#, r#""GET,POST""#] {
        let text = file_with_route(&format!(
            "{{ methods = {methods}, path = \"/v1/calls\", windows = [\"3/minute\"] }}"
        ));
        let h = Harness::new(Policy::from_toml(&text).unwrap());
        for (method, remaining) in [("GET", 2), ("HEAD", 1), ("GET", 0)] {
            let response = h.send(method, "/v1/calls", "k").await;
            assert_eq!(
                counted(&response),
                limited(StatusCode::OK, 3, remaining),
                "{methods}: {method}"
            );
        }
        let response = h.send("HEAD", "/v1/calls", "k").await;
        assert_eq!(
            counted(&response),
            limited(StatusCode::TOO_MANY_REQUESTS, 3, 0),
            "{methods}"
        );
        assert_eq!(h.seen(), ["GET", "HEAD", "GET"], "{methods}");
    }
}

#[test]
fn a_file_route_means_the_same_as_the_code_route() {
    let file = |head: &str| {
        Policy::from_toml(&file_with_route(&format!(
            "{{ methods = [\"GET\"], path = \"/v1/calls\", windows = [\"3/minute\"] }},\n  \
             {{ methods = [\"GET\"], {head} path = \"/v1/keys\", windows = [\"3/minute\"] }}"
        )))
        .unwrap()
    };
    let code = |head: bool| {
        let limit = Limit::new("per_key", api_key())
            .route("GET /v1/calls", Quota::new(Window::per_minute(3)));
        let quota = Quota::new(Window::per_minute(3));
        per_key(if head {
            limit.route("GET /v1/keys", quota)
        } else {
            limit.route_without_head("GET /v1/keys", quota)
        })
    };
    let debug = |policy: Policy| format!("{policy:?}");
    assert_eq!(debug(file("")), debug(code(true)));
    assert_eq!(debug(file("head = true,")), debug(code(true)));
    assert_eq!(debug(file("head = false,")), debug(code(false)));
    assert_ne!(debug(code(false)), debug(code(true)));
}

#[tokio::test]
async fn the_nixflex_preset_counts_head_as_a_read() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/demo/policies/nixflex.toml");
    let h = Harness::new(Policy::from_toml_file(path).unwrap());
    let bearer = "Bearer nx_a";
    for i in 0..600u32 {
        let response = h
            .send_with("GET", "/v1/calls", "authorization", bearer)
            .await;
        assert_eq!(response.status(), StatusCode::OK, "GET {i}");
    }
    for _ in 0..3 {
        let response = h
            .send_with("HEAD", "/v1/calls", "authorization", bearer)
            .await;
        assert_eq!(
            counted(&response),
            limited(StatusCode::TOO_MANY_REQUESTS, 600, 0)
        );
        assert_eq!(route_of(&response), (0, 1));
    }
    assert_eq!(h.seen().len(), 600);
    assert!(h.seen().iter().all(|m| m == "GET"));
}

// ---------------------------------------------------------------------------
// Opting out.

#[tokio::test]
async fn a_route_without_head_in_code_leaves_head_to_the_routes_after_it() {
    let h = Harness::new(per_key(
        Limit::new("per_key", api_key())
            .route_without_head("GET /v1/recordings/{id}", Quota::new(Window::per_minute(2)))
            .route("*", Quota::new(Window::per_minute(100))),
    ));
    for remaining in [1, 0] {
        let response = h.send("GET", "/v1/recordings/r1", "k").await;
        assert_eq!(counted(&response), limited(StatusCode::OK, 2, remaining));
    }
    assert_eq!(
        counted(&h.send("GET", "/v1/recordings/r1", "k").await),
        limited(StatusCode::TOO_MANY_REQUESTS, 2, 0)
    );
    for remaining in [99, 98] {
        let response = h.send("HEAD", "/v1/recordings/r1", "k").await;
        assert_eq!(counted(&response), limited(StatusCode::OK, 100, remaining));
        assert_eq!(route_of(&response), (0, 1));
    }
}

#[tokio::test]
async fn a_route_without_head_and_no_route_after_it_does_not_count_head() {
    let h = Harness::new(per_key(
        Limit::new("per_key", api_key())
            .route_without_head("GET /v1/calls", Quota::new(Window::per_minute(1))),
    ));
    assert_eq!(
        counted(&h.send("GET", "/v1/calls", "k").await),
        limited(StatusCode::OK, 1, 0)
    );
    uncounted(&h.send("HEAD", "/v1/calls", "k").await);
    uncounted(&h.send("head", "/v1/calls", "k").await);
    assert_eq!(
        counted(&h.send("GET", "/v1/calls", "k").await),
        limited(StatusCode::TOO_MANY_REQUESTS, 1, 0)
    );
}

#[tokio::test]
async fn head_false_in_a_policy_file_opts_out() {
    let h = Harness::new(
        Policy::from_toml(&file_with_route(
            "{ methods = [\"GET\"], head = false, path = \"/v1/calls\", windows = [\"1/minute\"] }",
        ))
        .unwrap(),
    );
    assert_eq!(
        counted(&h.send("GET", "/v1/calls", "k").await),
        limited(StatusCode::OK, 1, 0)
    );
    uncounted(&h.send("HEAD", "/v1/calls", "k").await);
    assert_eq!(
        counted(&h.send("GET", "/v1/calls", "k").await),
        limited(StatusCode::TOO_MANY_REQUESTS, 1, 0)
    );
}

#[test]
fn only_a_route_that_names_get_and_not_head_can_opt_out() {
    for (route, reason) in [
        ("POST /v1/calls", "do not include GET"),
        ("HEAD /v1/calls", "do not include GET"),
        ("GET,HEAD /v1/calls", "include HEAD"),
        ("/v1/calls", "include HEAD"),
        ("* /v1/calls", "include HEAD"),
    ] {
        let err = Policy::builder()
            .limit(
                Limit::new("per_key", api_key())
                    .route("GET *", Quota::new(Window::per_minute(1)))
                    .route_without_head(route, Quota::new(Window::per_minute(1))),
            )
            .build()
            .unwrap_err();
        assert_eq!(err.kind(), ConfigErrorKind::InvalidValue, "{route}");
        assert_eq!(err.field(), "limits[0].routes[1].head", "{route}");
        assert!(err.message().contains(reason), "{route}: {err}");
    }
}

// ---------------------------------------------------------------------------
// Method names in another case.

#[tokio::test]
async fn method_names_in_another_case_are_the_same_method() {
    let h = Harness::new(per_key(
        Limit::new("per_key", api_key())
            .route("GET /v1/calls", Quota::new(Window::per_minute(5)))
            .route("POST /v1/calls", Quota::new(Window::per_minute(1))),
    ));
    for (method, remaining) in [("get", 4), ("Get", 3), ("GET", 2), ("head", 1), ("hEAD", 0)] {
        let response = h.send(method, "/v1/calls", "k").await;
        assert_eq!(
            counted(&response),
            limited(StatusCode::OK, 5, remaining),
            "{method}"
        );
        assert_eq!(route_of(&response), (0, 0), "{method}");
    }
    for method in ["gEt", "HEAD", "Head"] {
        assert_eq!(
            counted(&h.send(method, "/v1/calls", "k").await),
            limited(StatusCode::TOO_MANY_REQUESTS, 5, 0),
            "{method}"
        );
    }
    assert_eq!(
        counted(&h.send("post", "/v1/calls", "k").await),
        limited(StatusCode::OK, 1, 0)
    );
    assert_eq!(
        counted(&h.send("POST", "/v1/calls", "k").await),
        limited(StatusCode::TOO_MANY_REQUESTS, 1, 0)
    );
    assert_eq!(h.seen(), ["get", "Get", "GET", "head", "hEAD", "post"]);
}

#[tokio::test]
async fn other_extension_methods_match_only_routes_for_every_method() {
    let h = Harness::new(per_key(
        Limit::new("per_key", api_key())
            .route("GET,POST /v1/calls", Quota::new(Window::per_minute(5)))
            .route("*", Quota::new(Window::per_minute(2))),
    ));
    for (method, remaining) in [("PURGE", 1), ("gets", 0)] {
        let response = h.send(method, "/v1/calls", "k").await;
        assert_eq!(
            counted(&response),
            limited(StatusCode::OK, 2, remaining),
            "{method}"
        );
        assert_eq!(route_of(&response), (0, 1), "{method}");
    }
    assert_eq!(
        counted(&h.send("purge", "/v1/calls", "k").await),
        limited(StatusCode::TOO_MANY_REQUESTS, 2, 0)
    );
}
