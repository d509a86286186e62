//! The layer in the frameworks it is made for: axum's `Router::layer`,
//! `tower::ServiceBuilder` behind an auth layer, axum's `ConnectInfo`, and
//! tonic's server builder; and the inner service's errors pass through.

use std::convert::Infallible;
use std::fmt;
use std::future::{ready, Ready};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::body::Body;
use axum::routing::get;
use axum::Router;
use http::header::AUTHORIZATION;
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use serde_json::Value;
use tower::{service_fn, Layer, Service, ServiceBuilder, ServiceExt};
use tower_ratelimit::key::{Extension, Header, Key};
use tower_ratelimit::{Decision, Limit, Policy, Quota, RateLimitLayer, Window};

fn per_minute(n: u32) -> Quota {
    Quota::new(Window::per_minute(n))
}

fn per_key(n: u32) -> Policy {
    Policy::builder()
        .limit(Limit::new("per_key", Header::parse("X-API-Key").unwrap()).quota(per_minute(n)))
        .build()
        .unwrap()
}

async fn body_text<B>(body: B) -> String
where
    B: http_body::Body,
    B::Error: fmt::Debug,
{
    String::from_utf8(body.collect().await.unwrap().to_bytes().to_vec()).unwrap()
}

mod axum_router {
    use super::*;

    fn app(policy: Policy) -> Router {
        Router::new()
            .route(
                "/v1/calls",
                get(|| async { "calls" }).post(|| async { (StatusCode::CREATED, "created") }),
            )
            .route(
                "/v1/remaining",
                get(
                    |axum::Extension(decision): axum::Extension<Decision>| async move {
                        decision.reported().map_or(0, |w| w.remaining).to_string()
                    },
                ),
            )
            .layer(RateLimitLayer::new(policy).decision_extensions(true))
    }

    fn call(method: &str, path: &str, key: Option<&str>) -> Request<Body> {
        let mut builder = Request::builder().method(method).uri(path);
        if let Some(key) = key {
            builder = builder.header("x-api-key", key);
        }
        builder.body(Body::empty()).unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn router_layer_admits_with_headers_then_refuses_with_429() {
        let app = app(per_key(2));
        let first = app
            .clone()
            .oneshot(call("GET", "/v1/calls", Some("k_1")))
            .await
            .unwrap();
        assert_eq!(first.status(), StatusCode::OK);
        assert_eq!(first.headers()["x-ratelimit-limit"], "2");
        assert_eq!(first.headers()["x-ratelimit-remaining"], "1");
        assert!(first.headers().contains_key("x-ratelimit-reset"));
        assert!(first
            .extensions()
            .get::<Decision>()
            .is_some_and(Decision::is_admitted));
        assert_eq!(body_text(first.into_body()).await, "calls");

        let second = app
            .clone()
            .oneshot(call("POST", "/v1/calls", Some("k_1")))
            .await
            .unwrap();
        assert_eq!(
            second.status(),
            StatusCode::CREATED,
            "the handler's own status passes through"
        );
        assert_eq!(second.headers()["x-ratelimit-remaining"], "0");

        let third = app
            .clone()
            .oneshot(call("GET", "/v1/calls", Some("k_1")))
            .await
            .unwrap();
        assert_eq!(third.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(third.headers()["content-type"], "application/json");
        assert_eq!(third.headers()["x-ratelimit-remaining"], "0");
        // 2/minute: one request's worth returns every 30 seconds.
        assert_eq!(third.headers()["retry-after"], "30");
        let body: Value = serde_json::from_str(&body_text(third.into_body()).await).unwrap();
        assert_eq!(body["error"]["code"], "rate_limit_exceeded");
        assert_eq!(body["error"]["retry_after"], 30);

        let other = app
            .oneshot(call("GET", "/v1/calls", Some("k_2")))
            .await
            .unwrap();
        assert_eq!(other.status(), StatusCode::OK);
    }

    #[tokio::test(start_paused = true)]
    async fn handlers_read_the_decision_from_the_request_extensions() {
        let app = app(per_key(5));
        let response = app
            .clone()
            .oneshot(call("GET", "/v1/remaining", Some("k_1")))
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(body_text(response.into_body()).await, "4");
        let response = app
            .oneshot(call("GET", "/v1/remaining", Some("k_1")))
            .await
            .unwrap();
        assert_eq!(body_text(response.into_body()).await, "3");
    }

    #[tokio::test(start_paused = true)]
    async fn router_layer_answers_a_missing_key_with_401() {
        let app = app(per_key(5));
        let response = app.oneshot(call("GET", "/v1/calls", None)).await.unwrap();
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        let body: Value = serde_json::from_str(&body_text(response.into_body()).await).unwrap();
        assert_eq!(body["error"]["code"], "missing_key");
    }

    #[tokio::test(start_paused = true)]
    async fn route_layer_limits_only_matched_routes() {
        let app = Router::new()
            .route("/v1/calls", get(|| async { "calls" }))
            .route_layer(RateLimitLayer::new(per_key(1)).decision_extensions(true));
        let first = app
            .clone()
            .oneshot(call("GET", "/v1/calls", Some("k_1")))
            .await
            .unwrap();
        assert_eq!(first.status(), StatusCode::OK);
        let second = app
            .clone()
            .oneshot(call("GET", "/v1/calls", Some("k_1")))
            .await
            .unwrap();
        assert_eq!(second.status(), StatusCode::TOO_MANY_REQUESTS);
        // Unmatched paths are axum's 404, not counted and not refused.
        let missing = app.oneshot(call("GET", "/nowhere", None)).await.unwrap();
        assert_eq!(missing.status(), StatusCode::NOT_FOUND);
    }

    #[cfg(feature = "axum")]
    #[tokio::test(start_paused = true)]
    async fn peer_ip_reads_axums_connect_info() {
        use std::net::SocketAddr;

        use axum::extract::ConnectInfo;
        use axum::routing::post;
        use tower_ratelimit::key::PeerIp;

        let policy = Policy::builder()
            .limit(Limit::new("per_ip", PeerIp::new()).route("POST /login", per_minute(1)))
            .build()
            .unwrap();
        let app = Router::new()
            .route("/login", post(|| async { "welcome" }))
            .layer(RateLimitLayer::new(policy).decision_extensions(true));
        let login = |addr: &str| {
            let mut request = Request::post("/login").body(Body::empty()).unwrap();
            request
                .extensions_mut()
                .insert(ConnectInfo(addr.parse::<SocketAddr>().unwrap()));
            request
        };
        assert_eq!(
            app.clone()
                .oneshot(login("192.0.2.1:50000"))
                .await
                .unwrap()
                .status(),
            StatusCode::OK
        );
        assert_eq!(
            app.clone()
                .oneshot(login("192.0.2.1:50001"))
                .await
                .unwrap()
                .status(),
            StatusCode::TOO_MANY_REQUESTS,
            "another connection from the same address shares the bucket"
        );
        assert_eq!(
            app.clone()
                .oneshot(login("192.0.2.2:50000"))
                .await
                .unwrap()
                .status(),
            StatusCode::OK
        );
        let missing = app
            .oneshot(Request::post("/login").body(Body::empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(
            missing.status(),
            StatusCode::UNAUTHORIZED,
            "no ConnectInfo: a clear 401, not a shared bucket"
        );
    }
}

mod service_builder {
    use super::*;

    /// What an authentication layer learnt about the caller.
    #[derive(Debug, Clone)]
    struct Account {
        id: &'static str,
    }

    /// A stand-in authentication layer: two tokens belong to one account.
    fn authenticate(mut request: Request<String>) -> Request<String> {
        let account = match request
            .headers()
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
        {
            Some("Bearer t_1a" | "Bearer t_1b") => Some(Account { id: "acct_1" }),
            Some("Bearer t_2") => Some(Account { id: "acct_2" }),
            _ => None,
        };
        if let Some(account) = account {
            request.extensions_mut().insert(account);
        }
        request
    }

    fn by_token(token: &str) -> Request<String> {
        Request::get("/v1/calls")
            .header(AUTHORIZATION, format!("Bearer {token}"))
            .body(String::new())
            .unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn composes_after_an_auth_layer_and_keys_on_its_account() {
        let calls = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&calls);
        let policy = Policy::builder()
            .limit(
                Limit::new("per_account", Extension::new(|a: &Account| Key::from(a.id)))
                    .quota(per_minute(2)),
            )
            .build()
            .unwrap();
        let svc = ServiceBuilder::new()
            .map_request(authenticate)
            .layer(RateLimitLayer::new(policy).decision_extensions(true))
            .service(service_fn(move |request: Request<String>| {
                let counter = Arc::clone(&counter);
                async move {
                    counter.fetch_add(1, Ordering::SeqCst);
                    let account = request
                        .extensions()
                        .get::<Account>()
                        .map_or("none", |a| a.id);
                    Ok::<_, Infallible>(Response::new(account.to_owned()))
                }
            }));

        let first = svc.clone().oneshot(by_token("t_1a")).await.unwrap();
        assert_eq!(first.status(), StatusCode::OK);
        assert_eq!(first.headers()["x-ratelimit-remaining"], "1");
        assert_eq!(
            body_text(first.into_body()).await,
            "acct_1",
            "the account reaches the handler"
        );
        let second = svc.clone().oneshot(by_token("t_1b")).await.unwrap();
        assert_eq!(
            second.headers()["x-ratelimit-remaining"],
            "0",
            "both tokens count against acct_1"
        );
        let third = svc.clone().oneshot(by_token("t_1a")).await.unwrap();
        assert_eq!(third.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(
            svc.clone().oneshot(by_token("t_2")).await.unwrap().status(),
            StatusCode::OK
        );

        let anonymous = svc.clone().oneshot(by_token("unknown")).await.unwrap();
        assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED);
        let body: Value = serde_json::from_str(&body_text(anonymous.into_body()).await).unwrap();
        assert_eq!(body["error"]["code"], "missing_key");
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("Account"),
            "{body}"
        );
        assert_eq!(calls.load(Ordering::SeqCst), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn clones_of_the_layer_and_service_share_counts() {
        let layer = RateLimitLayer::new(per_key(2)).decision_extensions(true);
        let inner = service_fn(|_: Request<String>| async {
            Ok::<_, Infallible>(Response::new(String::new()))
        });
        let a = ServiceBuilder::new().layer(layer.clone()).service(inner);
        let b = ServiceBuilder::new().layer(layer).service(inner);
        let request = || {
            Request::get("/")
                .header("x-api-key", "k")
                .body(String::new())
                .unwrap()
        };
        assert_eq!(
            a.clone().oneshot(request()).await.unwrap().status(),
            StatusCode::OK
        );
        assert_eq!(
            b.clone().oneshot(request()).await.unwrap().status(),
            StatusCode::OK
        );
        assert_eq!(
            a.oneshot(request()).await.unwrap().status(),
            StatusCode::TOO_MANY_REQUESTS
        );
    }

    #[test]
    fn the_service_is_clone_send_and_sync() {
        fn assert_bounds<T: Clone + Send + Sync + 'static>(_: &T) {}
        let inner = service_fn(|_: Request<String>| async {
            Ok::<_, Infallible>(Response::new(String::new()))
        });
        let svc = RateLimitLayer::new(per_key(1))
            .decision_extensions(true)
            .layer(inner);
        assert_bounds(&svc);
        assert_bounds(&RateLimitLayer::new(per_key(1)).decision_extensions(true));
    }
}

mod inner_errors {
    use super::*;

    #[derive(Debug, Clone, PartialEq, Eq)]
    struct MyError(&'static str);

    impl fmt::Display for MyError {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(self.0)
        }
    }

    impl std::error::Error for MyError {}

    #[tokio::test(start_paused = true)]
    async fn the_inner_services_error_passes_through_unchanged() {
        let svc = RateLimitLayer::new(per_key(1))
            .decision_extensions(true)
            .layer(service_fn(|_: Request<String>| async {
                Err::<Response<String>, _>(MyError("boom"))
            }));
        let request = || {
            Request::get("/")
                .header("x-api-key", "k")
                .body(String::new())
                .unwrap()
        };
        let error = svc.clone().oneshot(request()).await.unwrap_err();
        assert_eq!(error, MyError("boom"));
        // A refusal is a response, not an error of the inner type.
        let refused = svc.oneshot(request()).await.unwrap();
        assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    }

    /// A service that is never ready.
    #[derive(Clone)]
    struct Broken {
        called: Arc<AtomicUsize>,
    }

    impl Service<Request<String>> for Broken {
        type Response = Response<String>;
        type Error = MyError;
        type Future = Ready<Result<Response<String>, MyError>>;

        fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), MyError>> {
            Poll::Ready(Err(MyError("not ready")))
        }

        fn call(&mut self, _request: Request<String>) -> Self::Future {
            self.called.fetch_add(1, Ordering::SeqCst);
            ready(Ok(Response::new(String::new())))
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_inner_services_poll_ready_error_passes_through_unchanged() {
        let called = Arc::new(AtomicUsize::new(0));
        let svc = RateLimitLayer::new(per_key(1))
            .decision_extensions(true)
            .layer(Broken {
                called: Arc::clone(&called),
            });
        let request = Request::get("/")
            .header("x-api-key", "k")
            .body(String::new())
            .unwrap();
        assert_eq!(
            svc.oneshot(request).await.unwrap_err(),
            MyError("not ready")
        );
        assert_eq!(called.load(Ordering::SeqCst), 0);
    }
}

mod tonic_server {
    use super::*;
    use tonic_health::pb::health_client::HealthClient;
    use tonic_health::pb::HealthCheckRequest;

    fn per_metadata_key(n: u32) -> Policy {
        Policy::builder()
            .limit(Limit::new("per_key", Header::parse("x-api-key").unwrap()).quota(per_minute(n)))
            .limit(Limit::global("global").quota(per_minute(100)))
            .build()
            .unwrap()
    }

    #[tokio::test]
    async fn the_layer_fits_tonics_server_builder() {
        let (_reporter, health) = tonic_health::server::health_reporter();
        let router = tonic::transport::Server::builder()
            .layer(RateLimitLayer::new(per_metadata_key(1)).decision_extensions(true))
            .add_service(health);
        // Creating the serve future type-checks every bound tonic puts on a
        // layered service (it is not polled, so nothing is bound).
        let serve = router.serve("127.0.0.1:0".parse().unwrap());
        drop(serve);
    }

    fn check(key: Option<&str>) -> tonic::Request<HealthCheckRequest> {
        let mut request = tonic::Request::new(HealthCheckRequest {
            service: String::new(),
        });
        if let Some(key) = key {
            request
                .metadata_mut()
                .insert("x-api-key", key.parse().unwrap());
        }
        request
    }

    #[tokio::test(start_paused = true)]
    async fn a_grpc_client_gets_resource_exhausted_with_retry_after() {
        let (_reporter, health) = tonic_health::server::health_reporter();
        // The same stack `Server::builder().layer(..).add_service(..)` serves.
        let routes = tonic::service::Routes::new(health).prepare();
        let mut client = HealthClient::new(
            RateLimitLayer::new(per_metadata_key(1))
                .decision_extensions(true)
                .layer(routes),
        );

        let ok = client
            .check(check(Some("k_1")))
            .await
            .expect("the first check is admitted");
        assert_eq!(ok.metadata().get("x-ratelimit-remaining").unwrap(), "0");
        assert_eq!(ok.metadata().get("x-ratelimit-limit").unwrap(), "1");

        let refused = client.check(check(Some("k_1"))).await.unwrap_err();
        assert_eq!(
            refused.code(),
            tonic::Code::ResourceExhausted,
            "{refused:?}"
        );
        assert!(refused.message().contains("60"), "{}", refused.message());
        assert_eq!(refused.metadata().get("retry-after").unwrap(), "60");
        assert_eq!(
            refused.metadata().get("grpc-retry-pushback-ms").unwrap(),
            "60000"
        );
        assert_eq!(
            refused.metadata().get("x-ratelimit-remaining").unwrap(),
            "0"
        );

        let anonymous = client.check(check(None)).await.unwrap_err();
        assert_eq!(
            anonymous.code(),
            tonic::Code::Unauthenticated,
            "{anonymous:?}"
        );
        assert!(
            anonymous.message().contains("x-api-key"),
            "{}",
            anonymous.message()
        );

        assert!(client.check(check(Some("k_2"))).await.is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn a_raw_grpc_request_through_oneshot_gets_grpc_status_8() {
        let (_reporter, health) = tonic_health::server::health_reporter();
        let svc = RateLimitLayer::new(per_metadata_key(1))
            .decision_extensions(true)
            .layer(tonic::service::Routes::new(health).prepare());
        // One length-prefixed, empty HealthCheckRequest.
        let request = || {
            Request::post("/grpc.health.v1.Health/Check")
                .header("content-type", "application/grpc")
                .header("te", "trailers")
                .header("x-api-key", "k_1")
                .body(tonic::body::Body::new(http_body_util::Full::new(
                    bytes::Bytes::from_static(&[0, 0, 0, 0, 0]),
                )))
                .unwrap()
        };
        let admitted = svc.clone().oneshot(request()).await.unwrap();
        assert_eq!(admitted.status(), StatusCode::OK);
        let collected = admitted.into_body().collect().await.unwrap();
        let trailers = collected
            .trailers()
            .expect("a gRPC answer ends with trailers");
        assert_eq!(trailers["grpc-status"], "0");

        let refused = svc.oneshot(request()).await.unwrap();
        assert_eq!(refused.status(), StatusCode::OK);
        assert_eq!(refused.headers()["grpc-status"], "8");
        assert!(refused.headers().contains_key("grpc-message"));
        assert_eq!(refused.headers()["retry-after"], "60");
        // gRPC's own retry pushback says the same wait, in milliseconds.
        assert_eq!(refused.headers()["grpc-retry-pushback-ms"], "60000");
    }
}

/// A response through the layer is as large as the inner service's (with
/// axum's body): its moves cost what the inner service's do.
#[test]
fn a_response_through_the_layer_is_no_larger_than_the_inner_services() {
    use std::mem::size_of;
    use tower_ratelimit::ResponseBody;
    assert_eq!(
        size_of::<Response<ResponseBody<Body>>>(),
        size_of::<Response<Body>>()
    );
}
