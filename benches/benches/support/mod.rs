//! What the benchmarks share: API keys, requests, the bare service they
//! protect, the policy and layers they compare, a well-mixed bucket id,
//! polling a service in place, and a `redis-server` of their own.
//!
//! Each benchmark uses a part of it.
#![allow(dead_code)]

use std::convert::Infallible;
use std::future::{ready, Ready};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use axum::body::Body;
use criterion::Criterion;
use futures::FutureExt;
use http::header::CONTENT_TYPE;
use http::{HeaderValue, Method, Request, Response};
use tower::{service_fn, Service, ServiceExt};
use tower_governor::governor::GovernorConfigBuilder;
use tower_governor::key_extractor::KeyExtractor as GovernorKeyExtractor;
use tower_governor::{GovernorError, GovernorLayer};
use tower_ratelimit::key::{Header, PathCapture};
use tower_ratelimit::{Limit, Policy, Quota, RateLimitLayer, Window};

/// Distinct API keys in the many-keys workloads.
pub(crate) const MANY: usize = 10_000;
/// A limit (and a cap) no benchmark gets near.
pub(crate) const HUGE: u32 = u32::MAX;
/// 2023-11-14T22:13:20Z, in nanoseconds.
pub(crate) const T0: u64 = 1_700_000_000_000_000_000;

/// `n` API keys: `nx_live_` and 24 hex digits, 32 bytes like real ones;
/// another `salt` gives other keys.
pub(crate) fn api_keys(n: usize, salt: u64) -> Vec<&'static str> {
    (0..n as u64)
        .map(|i| {
            let x = (i ^ salt.rotate_left(32)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
            let key: &'static str =
                Box::leak(format!("nx_live_{:016x}{:08x}", x, i as u32).into_boxed_str());
            key
        })
        .collect()
}

/// A well-mixed 64-bit bucket id, as the layer's keyed hash would give.
pub(crate) fn bucket(i: u64) -> u64 {
    let mut x = i.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// The request most workloads send: a read of one call, by API key.
pub(crate) fn request(key: &'static str) -> Request<()> {
    to(Method::GET, "/v1/calls/c_42", key)
}

/// A call-control command: counted by the per-key limit's write route and,
/// stacked, by the per-call limit.
pub(crate) fn control(key: &'static str) -> Request<()> {
    to(Method::POST, "/v1/calls/c_42/control", key)
}

/// A request of `method` to `path` with `X-API-Key: key`.
pub(crate) fn to(method: Method, path: &'static str, key: &'static str) -> Request<()> {
    let mut request = Request::new(());
    *request.method_mut() = method;
    *request.uri_mut() = http::Uri::from_static(path);
    request
        .headers_mut()
        .insert("x-api-key", HeaderValue::from_static(key));
    request
}

/// The service being protected: answers at once with an empty body and a
/// `Content-Type`, as an axum handler returning a string does. (The header
/// map is allocated by the bare service, as in real applications; the
/// rate-limit headers then fit in it without growing it.)
pub(crate) fn bare() -> impl Service<
    Request<()>,
    Response = Response<Body>,
    Error = Infallible,
    Future = Ready<Result<Response<Body>, Infallible>>,
> + Clone {
    service_fn(|_: Request<()>| {
        let mut response = Response::new(Body::empty());
        response.headers_mut().insert(
            CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        ready(Ok::<_, Infallible>(response))
    })
}

/// Sends `request` through `service`, polling its futures in place (no
/// runtime); the response is returned, and dropped by the caller.
pub(crate) fn send<S, B>(service: &mut S, request: Request<()>) -> Response<B>
where
    S: Service<Request<()>, Response = Response<B>>,
    S::Error: std::fmt::Debug,
{
    let service = service.ready().now_or_never().unwrap().unwrap();
    let response = service.call(request).now_or_never().unwrap().unwrap();
    debug_assert!(response.status().is_success());
    response
}

/// Round-robin over a list.
pub(crate) struct Cycle<T> {
    items: Vec<T>,
    next: usize,
}

impl<T: Copy> Cycle<T> {
    pub(crate) fn new(items: Vec<T>) -> Self {
        Cycle { items, next: 0 }
    }

    pub(crate) fn next(&mut self) -> T {
        let item = self.items[self.next];
        self.next = (self.next + 1) % self.items.len();
        item
    }
}

/// Criterion's settings for the per-request benches: short runs, enough
/// samples for stable medians on a 2-core machine.
pub(crate) fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(30)
}

/// A Nixflex-like policy: per API key, a partitioned route table (key
/// creation, reads, writes), and a stacked per-call limit on call control.
/// `windows` is 1 (per minute) or 2 (per minute and per hour).
pub(crate) fn policy(windows: usize) -> Policy {
    let quota = |_| {
        let q = Quota::new(Window::per_minute(HUGE));
        if windows == 2 {
            q.and(Window::per_hour(HUGE))
        } else {
            q
        }
    };
    Policy::builder()
        .limit(
            Limit::new("per_key", Header::parse("X-API-Key").unwrap())
                .route("POST /v1/keys", quota(()))
                .route("GET *", quota(()))
                .route("POST,PUT,PATCH,DELETE *", quota(())),
        )
        .limit(
            Limit::new("per_call", PathCapture::new("call_id"))
                .route("POST /v1/calls/{call_id}/control", quota(())),
        )
        .build()
        .unwrap()
}

/// The layer over [`policy`], doing the work tower_governor does: nothing
/// reads the decision, so it is not built (the crate's defaults build it
/// for `Decision::current`).
pub(crate) fn layer(windows: usize) -> RateLimitLayer {
    RateLimitLayer::new(policy(windows)).current_decision(false)
}

/// tower_governor's key: the `X-API-Key` header, as a `String`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ApiKey;

impl GovernorKeyExtractor for ApiKey {
    type Key = String;

    fn extract<T>(&self, request: &Request<T>) -> Result<String, GovernorError> {
        request
            .headers()
            .get("x-api-key")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
            .ok_or(GovernorError::UnableToExtractKey)
    }
}

/// tower_governor with its headers on: one GCRA quota no benchmark gets
/// near, keyed by [`ApiKey`].
pub(crate) fn governor_layer(
) -> GovernorLayer<ApiKey, governor::middleware::StateInformationMiddleware, Body> {
    let config = GovernorConfigBuilder::default()
        .per_nanosecond(1)
        .burst_size(HUGE)
        .key_extractor(ApiKey)
        .use_headers()
        .finish()
        .unwrap();
    GovernorLayer::new(config)
}

/// A single-threaded Tokio runtime with timers and I/O, for the Redis
/// benches.
pub(crate) fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// A `redis-server` child on a free loopback port, persistence off, killed
/// on drop.
pub(crate) struct RedisServer {
    child: Child,
    port: u16,
}

impl RedisServer {
    /// Starts `redis-server` (from `PATH`) and waits until it accepts
    /// connections.
    pub(crate) fn start() -> Self {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free loopback port")
            .port();
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(std::env::temp_dir())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server on PATH (apt-get install -y redis-server)");
        let server = RedisServer { child, port };
        let started = Instant::now();
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "redis-server did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        server
    }

    /// `redis://127.0.0.1:PORT`.
    pub(crate) fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The `q` quantile (0 to 1) of sorted `samples`, in microseconds.
pub(crate) fn quantile_micros(samples: &[Duration], q: f64) -> f64 {
    let at = ((samples.len() as f64 * q) as usize).min(samples.len() - 1);
    samples[at].as_secs_f64() * 1e6
}
