//! The metrics the layer and its stores record through the `metrics`
//! facade (feature `metrics`). A recorder is global, so these tests are a
//! binary of their own: a small recorder of the tests' own is installed
//! once, before any layer is built, and each test reads only the series of
//! its own limits.

#![cfg(feature = "metrics")]

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use http::{Request, Response, StatusCode};
use metrics::{
    Counter, CounterFn, Gauge, GaugeFn, Histogram, HistogramFn, Key, KeyName, Metadata, Recorder,
    SharedString, Unit,
};
use tower::{service_fn, Layer, ServiceExt};
use tower_ratelimit::clock::ManualClock;
use tower_ratelimit::key::Header;
use tower_ratelimit::penalty::Penalty;
use tower_ratelimit::{Limit, Policy, Quota, RateLimitLayer, Window};

/// A series: `name{label="value",…}`, labels sorted.
fn series(name: &str, labels: &[(&str, &str)]) -> String {
    let mut labels: Vec<_> = labels.iter().map(|(k, v)| format!("{k}={v:?}")).collect();
    labels.sort();
    format!("{name}{{{}}}", labels.join(","))
}

fn series_of(key: &Key) -> String {
    let labels: Vec<_> = key.labels().map(|l| (l.key(), l.value())).collect();
    series(key.name(), &labels)
}

#[derive(Default)]
struct Cell {
    count: AtomicU64,
    /// A gauge's value (as f64 bits).
    gauge: AtomicU64,
    values: Mutex<Vec<f64>>,
}

impl CounterFn for Cell {
    fn increment(&self, value: u64) {
        self.count.fetch_add(value, Ordering::Relaxed);
    }
    fn absolute(&self, value: u64) {
        self.count.fetch_max(value, Ordering::Relaxed);
    }
}

impl Cell {
    fn change(&self, f: impl Fn(f64) -> f64) {
        let mut old = self.gauge.load(Ordering::Relaxed);
        while let Err(now) = self.gauge.compare_exchange(
            old,
            f(f64::from_bits(old)).to_bits(),
            Ordering::Relaxed,
            Ordering::Relaxed,
        ) {
            old = now;
        }
    }
}

impl GaugeFn for Cell {
    fn increment(&self, value: f64) {
        self.change(|v| v + value);
    }
    fn decrement(&self, value: f64) {
        self.change(|v| v - value);
    }
    fn set(&self, value: f64) {
        self.gauge.store(value.to_bits(), Ordering::Relaxed);
    }
}

impl HistogramFn for Cell {
    fn record(&self, value: f64) {
        self.values.lock().unwrap().push(value);
    }
}

/// Keeps every series' value, never resetting them.
#[derive(Default)]
struct TestRecorder {
    cells: Mutex<HashMap<String, Arc<Cell>>>,
}

impl TestRecorder {
    fn cell(&self, key: &Key) -> Arc<Cell> {
        let mut cells = self.cells.lock().unwrap();
        Arc::clone(cells.entry(series_of(key)).or_default())
    }

    fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<Arc<Cell>> {
        self.cells
            .lock()
            .unwrap()
            .get(&series(name, labels))
            .cloned()
    }

    /// A counter's value; 0 if it was never registered.
    fn counter(&self, name: &str, labels: &[(&str, &str)]) -> u64 {
        self.get(name, labels)
            .map_or(0, |c| c.count.load(Ordering::Relaxed))
    }

    fn gauge(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.get(name, labels)
            .map(|c| f64::from_bits(c.gauge.load(Ordering::Relaxed)))
    }

    fn histogram(&self, name: &str, labels: &[(&str, &str)]) -> Vec<f64> {
        self.get(name, labels)
            .map_or_else(Vec::new, |c| c.values.lock().unwrap().clone())
    }

    /// `ratelimit_decisions_total` of `limit`, by outcome (those not zero).
    fn decisions(&self, limit: &str) -> Vec<(&'static str, u64)> {
        OUTCOMES
            .iter()
            .map(|&o| {
                let n = self.counter(
                    "ratelimit_decisions_total",
                    &[("limit", limit), ("outcome", o)],
                );
                (o, n)
            })
            .filter(|&(_, n)| n > 0)
            .collect()
    }

    fn near_limit(&self, limit: &str) -> u64 {
        self.counter("ratelimit_near_limit_total", &[("limit", limit)])
    }
}

const OUTCOMES: [&str; 8] = [
    "admitted",
    "refused",
    "busy",
    "banned",
    "key_rejected",
    "shadow_refused",
    "capacity",
    "unavailable",
];

impl Recorder for TestRecorder {
    fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}

    fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
        Counter::from_arc(self.cell(key))
    }
    fn register_gauge(&self, key: &Key, _: &Metadata<'_>) -> Gauge {
        Gauge::from_arc(self.cell(key))
    }
    fn register_histogram(&self, key: &Key, _: &Metadata<'_>) -> Histogram {
        Histogram::from_arc(self.cell(key))
    }
}

/// The binary's recorder, installed on first use (before any layer).
fn recorder() -> &'static TestRecorder {
    static RECORDER: OnceLock<&'static TestRecorder> = OnceLock::new();
    RECORDER.get_or_init(|| {
        let recorder: &'static TestRecorder = Box::leak(Box::default());
        metrics::set_global_recorder(recorder).expect("the only recorder");
        recorder
    })
}

type Body = tower_ratelimit::ResponseBody<String>;

async fn send<S>(service: &S, path: &str, key: Option<&str>) -> Response<Body>
where
    S: tower::Service<Request<String>, Response = Response<Body>, Error = Infallible> + Clone,
{
    let mut request = Request::get(path);
    if let Some(key) = key {
        request = request.header("x-api-key", key);
    }
    let request = request.body(String::new()).unwrap();
    service.clone().oneshot(request).await.unwrap()
}

/// Every decision outcome, with stacked limits, on the memory store.
#[tokio::test]
async fn each_limit_counts_its_decisions_and_near_limit_requests() {
    let recorder = recorder();
    let key = || Header::parse("X-API-Key").unwrap();
    let penalty = Penalty::new(1, Duration::from_secs(60), Duration::from_secs(300)).unwrap();
    let policy = Policy::builder()
        .limit(Limit::new("m_api", key()).route("GET /a", Quota::new(Window::per_minute(5))))
        .limit(
            Limit::new("m_strict", key())
                .route("GET /b", Quota::new(Window::per_minute(1)))
                .penalty(penalty),
        )
        .limit(Limit::new("m_calls", key()).route("GET /c", Quota::in_flight(1)))
        .limit(
            Limit::new("m_preview", key())
                .route("GET /s", Quota::new(Window::per_minute(1)))
                .shadow(true),
        )
        .limit(Limit::global("m_global").route("GET /s", Quota::new(Window::per_minute(100))))
        .build()
        .unwrap();
    let clock = ManualClock::at_unix_secs(1_700_000_000);
    let layer = RateLimitLayer::new(policy)
        .clock(clock.clone())
        .current_decision(false);
    let service = layer.layer(service_fn(|_req: Request<String>| async {
        Ok::<_, Infallible>(Response::new(String::from("ok")))
    }));

    // A window: five admitted (the last two with 20 % or less left), then
    // a refusal; a request without a key is rejected.
    for i in 0..5 {
        let response = send(&service, "/a", Some("k1")).await;
        assert_eq!(response.status(), StatusCode::OK, "request {i}");
    }
    assert_eq!(
        send(&service, "/a", Some("k1")).await.status(),
        StatusCode::TOO_MANY_REQUESTS
    );
    assert_eq!(
        send(&service, "/a", None).await.status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        recorder.decisions("m_api"),
        [("admitted", 5), ("refused", 1), ("key_rejected", 1)]
    );
    assert_eq!(recorder.near_limit("m_api"), 2, "4 and 5 of 5");

    // A ban: the window's refusal starts it (a refusal), the next request
    // is refused by it.
    for status in [200, 429, 429] {
        let response = send(&service, "/b", Some("k2")).await;
        assert_eq!(response.status().as_u16(), status);
    }
    assert_eq!(
        recorder.decisions("m_strict"),
        [("admitted", 1), ("refused", 1), ("banned", 1)]
    );
    assert_eq!(recorder.near_limit("m_strict"), 1);

    // An in-flight cap: a second request while the first one's body is
    // alive is busy. A cap is not a window: never near its limit.
    let first = send(&service, "/c", Some("k3")).await;
    assert_eq!(first.status(), StatusCode::OK);
    let second = send(&service, "/c", Some("k3")).await;
    assert_eq!(second.status(), StatusCode::TOO_MANY_REQUESTS);
    drop(first);
    assert_eq!(
        recorder.decisions("m_calls"),
        [("admitted", 1), ("busy", 1)]
    );
    assert_eq!(recorder.near_limit("m_calls"), 0);

    // Stacked limits: both count the admitted requests; the shadow limit
    // would have refused the second one.
    for _ in 0..2 {
        let response = send(&service, "/s", Some("k4")).await;
        assert_eq!(response.status(), StatusCode::OK);
    }
    assert_eq!(recorder.decisions("m_global"), [("admitted", 2)]);
    assert_eq!(
        recorder.decisions("m_preview"),
        [("admitted", 1), ("shadow_refused", 1)]
    );
    assert_eq!(recorder.near_limit("m_global"), 0);
    assert_eq!(
        recorder.near_limit("m_preview"),
        2,
        "its window, 0 left, is reported"
    );

    // The tracked keys: every memory store's entries, once it sweeps.
    layer.store().sweep(layer.now());
    let tracked = recorder
        .gauge("ratelimit_tracked_keys", &[("store", "memory")])
        .expect("registered");
    assert_eq!(tracked, layer.store().len() as f64);
    assert!(tracked >= 4.0, "k1, k2, k4 and the global key: {tracked}");
    clock.advance(Duration::from_secs(3600));
    layer.store().sweep(layer.now());
    let tracked = recorder.gauge("ratelimit_tracked_keys", &[("store", "memory")]);
    assert_eq!(tracked, Some(0.0), "every key is idle an hour later");
}

/// A refusal by the memory store's estimate for a key it had no room for is
/// counted apart from a window's.
#[tokio::test]
async fn a_refusal_at_the_memory_cap_is_counted_as_capacity() {
    use tower_ratelimit::store::MemoryStore;

    let recorder = recorder();
    let policy = Policy::builder()
        .limit(
            Limit::new("m_capped", Header::parse("X-API-Key").unwrap())
                .quota(Quota::new(Window::per_minute(2))),
        )
        .build()
        .unwrap();
    let store = MemoryStore::with_max_entries(1).shards(1);
    let layer = RateLimitLayer::with_store(policy, store)
        .clock(ManualClock::at_unix_secs(1_700_000_000))
        .current_decision(false);
    let service = layer.layer(service_fn(|_req: Request<String>| async {
        Ok::<_, Infallible>(Response::new(String::from("ok")))
    }));
    // "a" takes the only entry; "b" is counted in the overflow sketch.
    let statuses: Vec<u16> = futures::future::join_all(
        ["a", "a", "a", "b", "b", "b"]
            .iter()
            .map(|key| send(&service, "/", Some(key))),
    )
    .await
    .iter()
    .map(|r| r.status().as_u16())
    .collect();
    assert_eq!(statuses, [200, 200, 429, 200, 200, 429]);
    assert_eq!(
        recorder.decisions("m_capped"),
        [("admitted", 4), ("refused", 1), ("capacity", 1)]
    );
}

/// The Redis store's metrics: the duration of its calls, its errors, the
/// decisions its failure policies made, its breaker and its deny cache.
#[cfg(feature = "redis")]
#[path = "redis/support.rs"]
mod support;

#[cfg(feature = "redis")]
#[tokio::test]
async fn the_redis_store_records_calls_errors_fallbacks_and_its_breaker() {
    use tower_ratelimit::key::KeySecret;
    use tower_ratelimit::store::redis::{FailurePolicy, RedisStore};

    let recorder = recorder();
    let Some(mut server) = support::server() else {
        return;
    };
    let store = RedisStore::builder(server.url())
        .prefix("metrics-test")
        .deadline(Duration::from_millis(200))
        .circuit_breaker(2, Duration::from_secs(60))
        .on_failure(FailurePolicy::Open)
        .on_failure_of("r_closed", FailurePolicy::Closed)
        .connect()
        .await
        .expect("redis answers");
    let key = || Header::parse("X-API-Key").unwrap();
    let policy = Policy::builder()
        .key_secret(KeySecret::from_bytes(*b"metrics test key"))
        .limit(Limit::new("r_open", key()).route("GET /r", Quota::new(Window::per_minute(100))))
        .limit(Limit::new("r_closed", key()).route("GET /rc", Quota::new(Window::per_minute(100))))
        .limit(Limit::new("r_tight", key()).route("GET /rt", Quota::new(Window::per_minute(1))))
        .build()
        .unwrap();
    let layer = RateLimitLayer::with_store(policy, store);
    let service = layer.layer(service_fn(|_req: Request<String>| async {
        Ok::<_, Infallible>(Response::new(String::from("ok")))
    }));
    let redis = [("store", "redis")];

    for _ in 0..2 {
        assert_eq!(
            send(&service, "/r", Some("k")).await.status(),
            StatusCode::OK
        );
    }
    assert_eq!(
        recorder
            .histogram("ratelimit_store_duration_seconds", &redis)
            .len(),
        2
    );
    assert_eq!(recorder.gauge("ratelimit_breaker_open", &redis), Some(0.0));
    assert_eq!(
        recorder.counter("ratelimit_store_reconnects_total", &redis),
        0
    );

    // Past its limit, a key is refused by Redis once, then from the cache.
    for status in [200, 429, 429, 429] {
        let response = send(&service, "/rt", Some("k")).await;
        assert_eq!(response.status().as_u16(), status);
    }
    assert_eq!(
        recorder.counter("ratelimit_cached_refusals_total", &redis),
        2
    );
    assert_eq!(
        recorder.decisions("r_tight"),
        [("admitted", 1), ("refused", 3)]
    );
    assert_eq!(
        recorder
            .histogram("ratelimit_store_duration_seconds", &redis)
            .len(),
        4,
        "two calls for /rt, none for the cached refusals"
    );

    // Redis is gone: each limit's failure policy decides; after two
    // failures the breaker opens and Redis is not called.
    server.kill();
    assert_eq!(
        send(&service, "/r", Some("k")).await.status(),
        StatusCode::OK
    );
    assert_eq!(
        send(&service, "/rc", Some("k")).await.status(),
        StatusCode::TOO_MANY_REQUESTS
    );
    assert!(layer.store().is_circuit_open());
    assert_eq!(recorder.gauge("ratelimit_breaker_open", &redis), Some(1.0));
    // The opening gave up the connection for a new one.
    assert_eq!(
        recorder.counter("ratelimit_store_reconnects_total", &redis),
        1
    );
    assert_eq!(layer.store().reconnects(), 1);
    assert_eq!(
        send(&service, "/r", Some("k")).await.status(),
        StatusCode::OK
    );
    assert_eq!(layer.store().short_circuits(), 1);

    let fallbacks = |limit, policy| {
        recorder.counter(
            "ratelimit_fallback_decisions_total",
            &[("limit", limit), ("policy", policy)],
        )
    };
    assert_eq!(fallbacks("r_open", "open"), 2);
    assert_eq!(fallbacks("r_closed", "closed"), 1);
    assert_eq!(
        fallbacks("r_open", "local") + fallbacks("r_closed", "open"),
        0
    );

    let errors = |kind| {
        recorder.counter(
            "ratelimit_store_errors_total",
            &[("store", "redis"), ("kind", kind)],
        )
    };
    assert_eq!(
        errors("connection") + errors("timeout"),
        2,
        "two failed calls"
    );
    assert_eq!(errors("protocol") + errors("config"), 0);
    assert_eq!(layer.store().failures(), 2);
    // Six calls were made (four answered, two failed); not the short
    // circuit.
    let durations = recorder.histogram("ratelimit_store_duration_seconds", &redis);
    assert_eq!(durations.len(), 6, "{durations:?}");
    assert!(durations.iter().all(|&d| (0.0..1.0).contains(&d)));

    assert_eq!(recorder.decisions("r_open"), [("admitted", 4)]);
    assert_eq!(
        recorder.decisions("r_closed"),
        [("unavailable", 1)],
        "the store could not decide; the limit fails closed"
    );

    // A store that cannot connect counts its error.
    let error = RedisStore::builder(server.url())
        .connect_timeout(Duration::from_millis(200))
        .connect()
        .await
        .expect_err("nothing listens");
    assert!(error.is_connection() || error.is_timeout());
    assert_eq!(errors("connection") + errors("timeout"), 3);
}
