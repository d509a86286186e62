//! The layer's asynchronous path: a store that answers with
//! `Decided::Pending` (like a remote store would) must give the same
//! decisions and headers as the memory store, call the inner service on the
//! instance that was made ready, keep refusals from it, and turn a store
//! error into an unlimited pass, never into the inner service's error.

use std::fmt;
use std::future::{Future, Ready};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use tower::{Layer, Service, ServiceExt};
use tower_ratelimit::clock::ManualClock;
use tower_ratelimit::key::{Header, PathCapture};
use tower_ratelimit::store::protocol::{Check, Decided, Outcome};
use tower_ratelimit::store::{MemoryStore, Store, StoreError};
use tower_ratelimit::{
    Algorithm, Decision, Limit, Policy, Quota, RateLimit, RateLimitLayer, ResponseBody, Window,
};

const T0: u64 = 1_700_000_000;

/// Wraps the memory store, but answers every check later: the decision is
/// made at once (the checks are borrowed) and handed back from a future that
/// yields to the runtime once first.
#[derive(Debug, Default)]
struct YieldingStore {
    memory: MemoryStore,
    /// While set, every check fails.
    down: AtomicBool,
    checks: AtomicUsize,
}

impl Store for YieldingStore {
    type Pending = Pin<Box<dyn Future<Output = Result<Outcome, StoreError>> + Send>>;

    fn check(&self, now: u64, checks: &[Check<'_>]) -> Decided<Self::Pending> {
        self.checks.fetch_add(1, Ordering::SeqCst);
        let result = if self.down.load(Ordering::SeqCst) {
            Err(StoreError::connection("connection refused"))
        } else {
            match self.memory.check(now, checks) {
                Decided::Ready(result) => result,
                Decided::Pending(_) => unreachable!("the memory store decides at once"),
            }
        };
        Decided::Pending(Box::pin(async move {
            tokio::task::yield_now().await;
            result
        }))
    }
}

/// A store that fails on the spot.
#[derive(Debug)]
struct BrokenStore;

impl Store for BrokenStore {
    type Pending = std::future::Pending<Result<Outcome, StoreError>>;

    fn check(&self, _now: u64, _checks: &[Check<'_>]) -> Decided<Self::Pending> {
        Decided::Ready(Err(StoreError::connection("no route to host")))
    }
}

/// The inner service's own error.
#[derive(Debug, Clone, PartialEq, Eq)]
struct InnerError(&'static str);

impl fmt::Display for InnerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

impl std::error::Error for InnerError {}

/// What every clone of a [`Probe`] records.
#[derive(Debug, Default)]
struct Record {
    polls: AtomicUsize,
    calls: AtomicUsize,
    /// Calls on an instance whose `poll_ready` had not returned `Ready`.
    unready_calls: AtomicUsize,
    seen: Mutex<Vec<Option<Decision>>>,
    /// `Decision::current()` in each call.
    current: Mutex<Vec<Option<Decision>>>,
}

/// An inner service that checks tower's contract: `call` only on an
/// instance that `poll_ready` made ready. A clone starts not ready. A request
/// to `/fail` answers with an [`InnerError`].
#[derive(Debug)]
struct Probe {
    ready: bool,
    record: Arc<Record>,
}

impl Probe {
    fn new() -> (Self, Arc<Record>) {
        let record = Arc::new(Record::default());
        (
            Probe {
                ready: false,
                record: Arc::clone(&record),
            },
            record,
        )
    }
}

impl Clone for Probe {
    fn clone(&self) -> Self {
        Probe {
            ready: false,
            record: Arc::clone(&self.record),
        }
    }
}

impl Service<Request<String>> for Probe {
    type Response = Response<String>;
    type Error = InnerError;
    type Future = Ready<Result<Response<String>, InnerError>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), InnerError>> {
        self.record.polls.fetch_add(1, Ordering::SeqCst);
        self.ready = true;
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<String>) -> Self::Future {
        if !std::mem::replace(&mut self.ready, false) {
            self.record.unready_calls.fetch_add(1, Ordering::SeqCst);
        }
        self.record.calls.fetch_add(1, Ordering::SeqCst);
        self.record
            .seen
            .lock()
            .unwrap()
            .push(req.extensions().get::<Decision>().cloned());
        self.record
            .current
            .lock()
            .unwrap()
            .push(Decision::current());
        if req.uri().path() == "/fail" {
            return std::future::ready(Err(InnerError("inner service failed")));
        }
        let response = Response::builder()
            .header("x-inner", "kept")
            .body(String::from("inner body"))
            .unwrap();
        std::future::ready(Ok(response))
    }
}

type Res = Response<ResponseBody<String>>;

fn request(method: &str, path: &str, key: &str) -> Request<String> {
    Request::builder()
        .method(method)
        .uri(path)
        .header("x-api-key", key)
        .body(String::new())
        .unwrap()
}

/// Stacked limits, two windows each, both algorithms.
fn policy() -> Policy {
    Policy::builder()
        .limit(
            Limit::new("per_key", Header::parse("X-API-Key").unwrap())
                .route("POST /v1/keys", Quota::new(Window::per_minute(3)))
                .quota(Quota::new(Window::per_second(5)).and(Window::per_minute(20))),
        )
        .limit(
            Limit::new("per_call", PathCapture::new("call_id")).route(
                "POST /v1/calls/{call_id}/control",
                Quota::new(Window::per_second(2))
                    .and(Window::per_minute(6))
                    .algorithm(Algorithm::FixedWindow),
            ),
        )
        .build()
        .unwrap()
}

fn one_per_minute() -> Policy {
    Policy::builder()
        .limit(
            Limit::new("per_key", Header::parse("X-API-Key").unwrap())
                .quota(Quota::new(Window::per_minute(1))),
        )
        .build()
        .unwrap()
}

fn yielding(
    policy: Policy,
    clock: &ManualClock,
) -> (
    RateLimit<Probe, YieldingStore>,
    Arc<Record>,
    RateLimitLayer<YieldingStore>,
) {
    let (probe, record) = Probe::new();
    let layer = RateLimitLayer::with_store(policy, YieldingStore::default())
        .decision_extensions(true)
        .clock(clock.clone());
    (layer.layer(probe), record, layer)
}

/// Everything a client sees of a response, and the decision it carries.
async fn observe(response: Res) -> (u16, Vec<(String, String)>, Vec<u8>, Option<Decision>) {
    let decision = response.extensions().get::<Decision>().cloned();
    let status = response.status().as_u16();
    let mut headers: Vec<_> = response
        .headers()
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_str().unwrap().to_owned()))
        .collect();
    headers.sort();
    let body = response
        .into_body()
        .collect()
        .await
        .unwrap()
        .to_bytes()
        .to_vec();
    (status, headers, body, decision)
}

fn header<'r>(response: &'r Res, name: &str) -> Option<&'r str> {
    response.headers().get(name).map(|v| v.to_str().unwrap())
}

#[tokio::test]
async fn a_pending_store_defers_the_decision_and_the_inner_call() {
    let clock = ManualClock::at_unix_secs(T0);
    let (mut svc, record, layer) = yielding(one_per_minute(), &clock);
    svc.ready().await.unwrap();
    let mut future = std::pin::pin!(svc.call(request("GET", "/", "k")));
    assert!(
        futures::poll!(future.as_mut()).is_pending(),
        "the store's future yields first"
    );
    assert_eq!(
        record.calls.load(Ordering::SeqCst),
        0,
        "the inner service waits for the decision"
    );
    let response = future.await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(header(&response, "x-ratelimit-remaining"), Some("0"));
    assert_eq!(record.calls.load(Ordering::SeqCst), 1);
    assert_eq!(layer.store().checks.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_pending_store_decides_and_answers_exactly_like_the_memory_store() {
    let clock = ManualClock::at_unix_secs(T0);
    let (pending, pending_record, _layer) = yielding(policy(), &clock);
    let (probe, memory_record) = Probe::new();
    let memory = RateLimitLayer::new(policy())
        .decision_extensions(true)
        .clock(clock.clone())
        .layer(probe);

    let requests = [
        ("GET", "/v1/calls", "k1"),
        ("POST", "/v1/keys", "k1"),
        ("POST", "/v1/calls/c1/control", "k1"),
        ("POST", "/v1/calls/c1/control", "k2"),
        ("GET", "/v1/calls", "k2"),
    ];
    let mut seed = 11u64;
    let (mut admitted, mut refused) = (0, 0);
    for step in 0..600 {
        seed = seed
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        let pick = (seed >> 33) as usize;
        if pick % 4 == 0 {
            clock.advance(Duration::from_millis((pick % 1700) as u64));
        }
        let (method, path, key) = requests[pick % requests.len()];
        let a = observe(
            pending
                .clone()
                .oneshot(request(method, path, key))
                .await
                .unwrap(),
        )
        .await;
        let b = observe(
            memory
                .clone()
                .oneshot(request(method, path, key))
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(a, b, "step {step}: {method} {path} {key}");
        if a.0 == 200 {
            admitted += 1;
        } else {
            assert_eq!(a.0, 429);
            refused += 1;
        }
    }
    assert!(
        admitted > 50 && refused > 50,
        "{admitted} admitted, {refused} refused"
    );
    assert_eq!(
        pending_record.calls.load(Ordering::SeqCst),
        admitted,
        "refusals never reach it"
    );
    assert_eq!(memory_record.calls.load(Ordering::SeqCst), admitted);
    assert_eq!(pending_record.unready_calls.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn the_async_path_calls_the_inner_service_that_was_made_ready() {
    let clock = ManualClock::at_unix_secs(T0);
    let policy = Policy::builder()
        .limit(
            Limit::new("per_key", Header::parse("X-API-Key").unwrap())
                .quota(Quota::new(Window::per_minute(5))),
        )
        .build()
        .unwrap();
    let (mut svc, record, _layer) = yielding(policy, &clock);

    // One service, driven as a server would: ready, call, and several
    // responses in flight at once.
    let mut in_flight = Vec::new();
    for _ in 0..8 {
        svc.ready().await.unwrap();
        in_flight.push(svc.call(request("GET", "/v1/calls", "k")));
    }
    let mut statuses = Vec::new();
    for future in in_flight {
        statuses.push(future.await.unwrap().status().as_u16());
    }
    assert_eq!(statuses, [200, 200, 200, 200, 200, 429, 429, 429]);
    assert_eq!(record.calls.load(Ordering::SeqCst), 5);
    assert_eq!(
        record.unready_calls.load(Ordering::SeqCst),
        0,
        "every call went to a ready instance"
    );
    assert!(record.polls.load(Ordering::SeqCst) >= 8);

    // And through `oneshot` on clones.
    clock.advance(Duration::from_secs(12));
    for _ in 0..3 {
        svc.clone()
            .oneshot(request("GET", "/v1/calls", "k"))
            .await
            .unwrap();
    }
    assert_eq!(
        record.calls.load(Ordering::SeqCst),
        6,
        "12 s earned exactly one back"
    );
    assert_eq!(record.unready_calls.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn the_decision_reaches_the_inner_service_and_the_response_in_the_async_path() {
    let clock = ManualClock::at_unix_secs(T0);
    let (svc, record, _layer) = yielding(one_per_minute(), &clock);
    let response = svc.clone().oneshot(request("GET", "/", "k")).await.unwrap();
    let decision = response
        .extensions()
        .get::<Decision>()
        .cloned()
        .expect("in the response");
    assert!(decision.is_admitted());
    assert_eq!(*record.seen.lock().unwrap(), [Some(decision.clone())]);
    assert_eq!(*record.current.lock().unwrap(), [Some(decision)]);
    assert_eq!(header(&response, "x-inner"), Some("kept"));
    assert_eq!(header(&response, "x-ratelimit-reset"), Some("1700000060"));

    let refused = svc.clone().oneshot(request("GET", "/", "k")).await.unwrap();
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(header(&refused, "retry-after"), Some("60"));
    assert_eq!(
        refused
            .extensions()
            .get::<Decision>()
            .and_then(Decision::retry_after),
        Some(60)
    );
    assert_eq!(record.seen.lock().unwrap().len(), 1);
}

#[tokio::test]
async fn a_store_error_in_the_async_path_lets_requests_through_unlimited() {
    let clock = ManualClock::at_unix_secs(T0);
    let (svc, record, layer) = yielding(one_per_minute(), &clock);
    layer.store().down.store(true, Ordering::SeqCst);
    for _ in 0..5 {
        let response = svc
            .clone()
            .oneshot(request("GET", "/", "k"))
            .await
            .expect("not an inner error");
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(header(&response, "x-inner"), Some("kept"));
        for name in [
            "x-ratelimit-limit",
            "x-ratelimit-remaining",
            "x-ratelimit-reset",
            "retry-after",
        ] {
            assert_eq!(header(&response, name), None, "{name}");
        }
        let decision = response.extensions().get::<Decision>().unwrap();
        assert_eq!(decision.basis(), tower_ratelimit::Basis::FailedOpen);
        assert!(decision.is_admitted() && decision.windows().is_empty());
    }
    assert_eq!(record.calls.load(Ordering::SeqCst), 5);
    assert_eq!(record.unready_calls.load(Ordering::SeqCst), 0);
    // The request's extensions and `Decision::current` said the same.
    let failed_open = |seen: &[Option<Decision>]| {
        seen.len() == 5
            && seen.iter().all(|d| {
                d.as_ref().map(Decision::basis) == Some(tower_ratelimit::Basis::FailedOpen)
            })
    };
    assert!(failed_open(&record.seen.lock().unwrap()));
    assert!(failed_open(&record.current.lock().unwrap()));

    // The inner service's own error still comes through unchanged.
    let error = svc
        .clone()
        .oneshot(request("GET", "/fail", "k"))
        .await
        .unwrap_err();
    assert_eq!(error, InnerError("inner service failed"));

    // Back up: nothing was counted while it was down.
    layer.store().down.store(false, Ordering::SeqCst);
    let response = svc.clone().oneshot(request("GET", "/", "k")).await.unwrap();
    assert_eq!(header(&response, "x-ratelimit-remaining"), Some("0"));
    assert_eq!(response.status(), StatusCode::OK);
    let refused = svc.clone().oneshot(request("GET", "/", "k")).await.unwrap();
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
}

#[tokio::test]
async fn a_store_that_fails_at_once_lets_requests_through_unlimited() {
    let (probe, record) = Probe::new();
    let svc = RateLimitLayer::with_store(one_per_minute(), BrokenStore)
        .decision_extensions(true)
        .clock(ManualClock::at_unix_secs(T0))
        .layer(probe);
    for _ in 0..5 {
        let response = svc
            .clone()
            .oneshot(request("GET", "/", "k"))
            .await
            .expect("not an inner error");
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(header(&response, "x-ratelimit-limit"), None);
    }
    assert_eq!(record.calls.load(Ordering::SeqCst), 5);
    let error = svc
        .clone()
        .oneshot(request("GET", "/fail", "k"))
        .await
        .unwrap_err();
    assert_eq!(error, InnerError("inner service failed"));
}

#[tokio::test]
async fn inner_errors_pass_through_unchanged_in_the_async_path() {
    let clock = ManualClock::at_unix_secs(T0);
    let policy = Policy::builder()
        .limit(
            Limit::new("per_key", Header::parse("X-API-Key").unwrap())
                .quota(Quota::new(Window::per_minute(2))),
        )
        .build()
        .unwrap();
    let (svc, record, _layer) = yielding(policy, &clock);
    let error = svc
        .clone()
        .oneshot(request("GET", "/fail", "k"))
        .await
        .unwrap_err();
    assert_eq!(error, InnerError("inner service failed"));
    // The admitted request was counted even though the inner service failed.
    let response = svc.clone().oneshot(request("GET", "/", "k")).await.unwrap();
    assert_eq!(header(&response, "x-ratelimit-remaining"), Some("0"));
    // A refused request never reaches it, so it cannot fail.
    let refused = svc
        .clone()
        .oneshot(request("GET", "/fail", "k"))
        .await
        .unwrap();
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(record.calls.load(Ordering::SeqCst), 2);
}
