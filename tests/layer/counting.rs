//! Exact counting through the public API: admitted counts per window for each
//! algorithm, all-or-nothing decisions over several windows and several
//! limits, route partitions, cost, key isolation, refusals never reaching the
//! inner service, and exact counts under concurrency.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response, StatusCode};
use tower::util::BoxCloneService;
use tower::{service_fn, Layer, ServiceExt};
use tower_ratelimit::clock::{Clock, ManualClock};
use tower_ratelimit::key::{Header, PathCapture};
use tower_ratelimit::store::MemoryStore;
use tower_ratelimit::{
    Algorithm, Decision, Limit, Policy, Quota, RateLimitLayer, ResponseBody, Window,
};

const NS: u64 = 1_000_000_000;
/// 2023-11-14T22:13:20Z: not aligned to a minute or an hour.
const T0: u64 = 1_700_000_000;

type Svc = BoxCloneService<Request<String>, Response<ResponseBody<String>>, Infallible>;

/// A rate-limited service on a manual clock, with a count of the inner
/// service's calls.
struct Harness {
    clock: ManualClock,
    svc: Svc,
    calls: Arc<AtomicUsize>,
}

impl Harness {
    fn new(policy: Policy) -> Self {
        Self::at(policy, ManualClock::at_unix_secs(T0))
    }

    fn at(policy: Policy, clock: ManualClock) -> Self {
        Self::with_layer(RateLimitLayer::new(policy), clock)
    }

    /// On `store`, which other harnesses (threads, processes) may share.
    fn on_store(policy: Policy, store: &Arc<MemoryStore>, clock: ManualClock) -> Self {
        Self::with_layer(
            RateLimitLayer::with_shared_store(policy, Arc::clone(store)),
            clock,
        )
    }

    fn with_layer(layer: RateLimitLayer, clock: ManualClock) -> Self {
        let calls = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&calls);
        let inner = service_fn(move |_req: Request<String>| {
            counter.fetch_add(1, Ordering::SeqCst);
            async { Ok::<_, Infallible>(Response::new(String::from("ok"))) }
        });
        let layer = layer.decision_extensions(true).clock(clock.clone());
        Harness {
            clock,
            svc: BoxCloneService::new(layer.layer(inner)),
            calls,
        }
    }

    async fn send(&self, method: &str, path: &str, key: &str) -> Response<ResponseBody<String>> {
        self.svc
            .clone()
            .oneshot(request(method, path, key))
            .await
            .unwrap_or_else(|e: Infallible| match e {})
    }

    /// Sends `n` identical requests and returns how many were admitted.
    async fn admitted(&self, n: usize, method: &str, path: &str, key: &str) -> usize {
        let mut admitted = 0;
        for _ in 0..n {
            if self.send(method, path, key).await.status() == StatusCode::OK {
                admitted += 1;
            }
        }
        admitted
    }

    fn advance(&self, by: Duration) {
        self.clock.advance(by);
    }

    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

fn request(method: &str, path: &str, key: &str) -> Request<String> {
    Request::builder()
        .method(method)
        .uri(path)
        .header("x-api-key", key)
        .body(String::new())
        .unwrap()
}

fn api_key() -> Header {
    Header::parse("X-API-Key").unwrap()
}

fn single(quota: Quota) -> Policy {
    Policy::builder()
        .limit(Limit::new("per_key", api_key()).quota(quota))
        .build()
        .unwrap()
}

fn header(response: &Response<ResponseBody<String>>, name: &str) -> u64 {
    response
        .headers()
        .get(name)
        .unwrap_or_else(|| panic!("no {name} header in {:?}", response.headers()))
        .to_str()
        .unwrap()
        .parse()
        .unwrap()
}

fn remaining(response: &Response<ResponseBody<String>>) -> u64 {
    header(response, "x-ratelimit-remaining")
}

fn limit(response: &Response<ResponseBody<String>>) -> u64 {
    header(response, "x-ratelimit-limit")
}

/// The remaining count of every window of the decision, in order.
fn window_remaining(response: &Response<ResponseBody<String>>) -> Vec<(u16, u32, u32)> {
    let decision = response.extensions().get::<Decision>().expect("a decision");
    decision
        .windows()
        .iter()
        .map(|w| (w.limit_index, w.limit, w.remaining))
        .collect()
}

#[tokio::test]
async fn gcra_admits_a_burst_of_limit_then_exactly_one_per_emission_interval() {
    let h = Harness::new(single(Quota::new(Window::per_minute(60))));
    assert_eq!(
        h.admitted(100, "GET", "/v1/calls", "k").await,
        60,
        "the burst is the limit"
    );

    // One request is earned back every 60s / 60 = 1s, not a nanosecond earlier.
    h.advance(Duration::from_millis(999));
    assert_eq!(h.admitted(5, "GET", "/v1/calls", "k").await, 0);
    h.advance(Duration::from_millis(1));
    assert_eq!(h.admitted(5, "GET", "/v1/calls", "k").await, 1);

    // Hammering every 100 ms for 30 s earns exactly 30 more.
    let mut admitted = 0;
    for _ in 0..300 {
        h.advance(Duration::from_millis(100));
        admitted += h.admitted(3, "GET", "/v1/calls", "k").await;
    }
    assert_eq!(admitted, 30);

    // Idle for a whole period: the full burst again, and no more.
    h.advance(Duration::from_secs(60));
    assert_eq!(h.admitted(100, "GET", "/v1/calls", "k").await, 60);
    assert_eq!(h.calls(), 60 + 1 + 30 + 60);
}

#[tokio::test]
async fn gcra_emission_interval_is_rounded_up_so_the_window_never_over_admits() {
    // 3 per second: one request back every 333_333_334 ns (rounded up).
    let h = Harness::new(single(Quota::new(Window::per_second(3))));
    assert_eq!(h.admitted(10, "GET", "/", "k").await, 3);
    h.advance(Duration::from_nanos(333_333_333));
    assert_eq!(h.admitted(10, "GET", "/", "k").await, 0);
    h.advance(Duration::from_nanos(1));
    assert_eq!(h.admitted(10, "GET", "/", "k").await, 1);

    // Over any 10 s of continuous traffic: at most 3 + floor(10 s / interval) = 32.
    let h = Harness::new(single(Quota::new(Window::per_second(3))));
    let mut admitted = 0;
    for _ in 0..1000 {
        admitted += h.admitted(2, "GET", "/", "k").await;
        h.advance(Duration::from_millis(10));
    }
    // 1000 steps of 10 ms span 9.99 s: 3 + floor(9.99 s / 333_333_334 ns) = 3 + 29.
    assert_eq!(admitted, 32);
}

#[tokio::test]
async fn fixed_window_admits_limit_per_aligned_window_and_starts_fresh_at_the_boundary() {
    let h = Harness::new(single(
        Quota::new(Window::per_minute(5)).algorithm(Algorithm::FixedWindow),
    ));
    let minute = 60 * NS;
    let end = (h.clock.now() / minute + 1) * minute;
    assert_eq!(h.admitted(20, "GET", "/", "k").await, 5);

    // The last nanosecond of the window is still the old window.
    h.clock.set(end - 1);
    assert_eq!(h.admitted(3, "GET", "/", "k").await, 0);
    // The boundary starts a fresh count.
    h.clock.set(end);
    assert_eq!(h.admitted(20, "GET", "/", "k").await, 5);

    // Requests every 250 ms for 5 minutes (less one step): exactly 5 in
    // each aligned minute.
    let mut per_window = BTreeMap::<u64, usize>::new();
    for _ in 0..1199 {
        h.advance(Duration::from_millis(250));
        let index = h.clock.now() / minute;
        if h.send("GET", "/", "k").await.status() == StatusCode::OK {
            *per_window.entry(index).or_default() += 1;
        }
    }
    let first = end / minute;
    // The first minute already spent its 5 above.
    for (index, count) in &per_window {
        assert!(*index > first, "window {index} is the exhausted one");
        assert_eq!(*count, 5, "window {index}");
    }
    assert_eq!(per_window.len(), 4);
    assert_eq!(h.calls(), 5 + 5 + 20);
}

#[tokio::test]
async fn fixed_window_allows_a_double_burst_across_a_boundary_but_never_more_per_window() {
    let h = Harness::new(single(
        Quota::new(Window::per_second(10)).algorithm(Algorithm::FixedWindow),
    ));
    let end = (h.clock.now() / NS + 1) * NS;
    h.clock.set(end - 1);
    assert_eq!(h.admitted(15, "GET", "/", "k").await, 10);
    h.clock.set(end);
    assert_eq!(h.admitted(15, "GET", "/", "k").await, 10);
}

/// Five a minute in fixed windows.
fn five_a_minute() -> Policy {
    single(Quota::new(Window::per_minute(5)).algorithm(Algorithm::FixedWindow))
}

#[tokio::test]
async fn fixed_window_counts_a_clock_behind_in_the_window_a_clock_ahead_counted_in() {
    // Two layers share one store, as threads of a process or processes on
    // one store do, with clocks two microseconds apart across a minute's end.
    let store = Arc::new(MemoryStore::new());
    let ahead = Harness::on_store(five_a_minute(), &store, ManualClock::default());
    let behind = Harness::on_store(five_a_minute(), &store, ManualClock::default());
    let minute = 60 * NS;
    let end = (T0 * NS / minute + 1) * minute;
    ahead.clock.set(end + 1_000);
    behind.clock.set(end - 1_000);

    // The clock ahead counts 3 in the new minute; the clock behind, still
    // in the old one, counts there too: 2 more, not a fresh 5.
    assert_eq!(ahead.admitted(3, "GET", "/", "k").await, 3);
    assert_eq!(behind.admitted(5, "GET", "/", "k").await, 2);
    // Nothing was overwritten: the new minute stays spent for both.
    assert_eq!(ahead.admitted(5, "GET", "/", "k").await, 0);
    assert_eq!(behind.admitted(5, "GET", "/", "k").await, 0);
    // And its end frees it for both.
    ahead.clock.set(end + minute);
    behind.clock.set(end + minute);
    assert_eq!(ahead.admitted(9, "GET", "/", "k").await, 5);
    assert_eq!(behind.admitted(1, "GET", "/", "k").await, 0);
}

#[tokio::test]
async fn a_sweep_on_a_clock_ahead_keeps_the_window_a_clock_behind_still_counts_in() {
    let store = Arc::new(MemoryStore::new());
    let behind = Harness::on_store(five_a_minute(), &store, ManualClock::default());
    let minute = 60 * NS;
    let end = (T0 * NS / minute + 1) * minute;
    behind.clock.set(end - 1_000);
    assert_eq!(behind.admitted(9, "GET", "/", "k").await, 5);
    // Another thread, its clock two microseconds ahead, sweeps the shard:
    // the minute's count stays for the clock that still reads it as now.
    store.sweep(end + 1_000);
    assert_eq!(store.len(), 1);
    assert_eq!(behind.admitted(5, "GET", "/", "k").await, 0);
    // A second after the minute ended, it is gone.
    store.sweep(end + NS);
    assert_eq!(store.len(), 0);
}

async fn minute_and_hour_refusals_consume_nothing(algorithm: Algorithm) {
    // Start on an hour boundary so that fixed windows are easy to follow.
    let start = (T0 / 3600 + 1) * 3600;
    let policy = single(
        Quota::new(Window::per_minute(60))
            .and(Window::per_hour(1000))
            .algorithm(algorithm),
    );
    let h = Harness::at(policy, ManualClock::at_unix_secs(start));
    assert_eq!(h.admitted(60, "GET", "/", "k").await, 60);
    // 500 refusals by the minute window must not touch the hour window.
    assert_eq!(h.admitted(500, "GET", "/", "k").await, 0);

    // GCRA earns one back after 1 s; a fixed minute starts fresh after 60 s.
    let wait = match algorithm {
        Algorithm::FixedWindow => Duration::from_secs(60),
        _ => Duration::from_secs(1),
    };
    h.advance(wait);
    let response = h.send("GET", "/", "k").await;
    assert_eq!(response.status(), StatusCode::OK);
    let minute_left = match algorithm {
        Algorithm::FixedWindow => 59,
        _ => 0,
    };
    // The hour window counted exactly the 61 admitted requests: a GCRA hour
    // earns one back every 3.6 s, so after 1 s it has 939.27 → 939.
    assert_eq!(
        window_remaining(&response),
        [(0, 60, minute_left), (0, 1000, 939)]
    );
    assert_eq!(h.calls(), 61);
}

#[tokio::test]
async fn gcra_minute_refusals_consume_nothing_in_the_hour_window() {
    minute_and_hour_refusals_consume_nothing(Algorithm::Gcra).await;
}

#[tokio::test]
async fn fixed_window_minute_refusals_consume_nothing_in_the_hour_window() {
    minute_and_hour_refusals_consume_nothing(Algorithm::FixedWindow).await;
}

#[tokio::test]
async fn gcra_hour_refusals_consume_nothing_in_the_minute_window() {
    // 5/minute (one back every 12 s) and 6/hour (one back every 600 s).
    let h = Harness::new(single(
        Quota::new(Window::per_minute(5)).and(Window::per_hour(6)),
    ));
    assert_eq!(h.admitted(5, "GET", "/", "k").await, 5);
    h.advance(Duration::from_secs(12));
    assert_eq!(h.admitted(1, "GET", "/", "k").await, 1, "the hour's 6th");
    // From now on the hour refuses; the minute would admit. 300 refusals
    // spread over 9 minutes must charge the minute window nothing.
    for _ in 0..300 {
        h.advance(Duration::from_millis(1800));
        assert_eq!(h.admitted(1, "GET", "/", "k").await, 0);
    }
    // The hour's 6 requests were spent by T0 + 3600 (one per 600 s), so it
    // has room for one at T0 + 600, not a nanosecond earlier. Had the
    // refusals been charged to the minute window (12 s each), it would now
    // be an hour in debt.
    h.clock.set((T0 + 600) * NS - 1);
    assert_eq!(h.admitted(1, "GET", "/", "k").await, 0);
    h.clock.set((T0 + 600) * NS);
    let response = h.send("GET", "/", "k").await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(window_remaining(&response), [(0, 5, 4), (0, 6, 0)]);
    assert_eq!(h.calls(), 7);
}

fn flireo() -> Policy {
    Policy::builder()
        .limit(Limit::new("per_key", api_key()).quota(Quota::new(Window::per_minute(100))))
        .limit(Limit::new("per_call", PathCapture::new("call_id")).route(
            "POST /v1/calls/{call_id}/control",
            Quota::new(Window::per_minute(10)),
        ))
        .build()
        .unwrap()
}

#[tokio::test]
async fn a_request_refused_by_the_call_limit_consumes_none_of_the_key_quota() {
    let h = Harness::new(flireo());
    assert_eq!(
        h.admitted(10, "POST", "/v1/calls/c1/control", "k").await,
        10
    );
    assert_eq!(h.admitted(30, "POST", "/v1/calls/c1/control", "k").await, 0);
    // Only the key limit applies here: it counted the 10 admitted requests.
    let response = h.send("GET", "/v1/numbers", "k").await;
    assert_eq!((limit(&response), remaining(&response)), (100, 89));
    // Both limits apply to a new call: the key has 88 left, the call 9.
    let response = h.send("POST", "/v1/calls/c2/control", "k").await;
    assert_eq!(window_remaining(&response), [(0, 100, 88), (1, 10, 9)]);
    assert_eq!(h.calls(), 12);
}

#[tokio::test]
async fn a_request_refused_by_the_key_limit_consumes_none_of_the_call_quota() {
    let h = Harness::new(flireo());
    assert_eq!(h.admitted(100, "GET", "/v1/numbers", "k").await, 100);
    assert_eq!(h.admitted(7, "POST", "/v1/calls/c3/control", "k").await, 0);
    // The key earns one request back after 600 ms; the call window is untouched.
    h.advance(Duration::from_millis(600));
    let response = h.send("POST", "/v1/calls/c3/control", "k").await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(window_remaining(&response), [(0, 100, 0), (1, 10, 9)]);
    assert_eq!(h.calls(), 101);
}

#[tokio::test]
async fn a_call_limit_is_shared_by_every_key_that_controls_the_call() {
    let h = Harness::new(flireo());
    assert_eq!(h.admitted(6, "POST", "/v1/calls/c1/control", "k1").await, 6);
    assert_eq!(
        h.admitted(10, "POST", "/v1/calls/c1/control", "k2").await,
        4
    );
    // The call limit only matches its route: other paths of c1 are not counted in it.
    assert_eq!(h.admitted(5, "GET", "/v1/calls/c1", "k2").await, 5);
    // Each key counted only its own admitted requests.
    let response = h.send("GET", "/v1/numbers", "k1").await;
    assert_eq!(remaining(&response), 100 - 6 - 1);
    let response = h.send("GET", "/v1/numbers", "k2").await;
    assert_eq!(remaining(&response), 100 - 4 - 5 - 1);
}

fn nixflex() -> Policy {
    Policy::builder()
        .limit(
            Limit::new("per_key", api_key())
                .route("POST /v1/keys", Quota::new(Window::per_hour(10)))
                .route("GET *", Quota::new(Window::per_minute(600)))
                .route(
                    "POST,PUT,PATCH,DELETE *",
                    Quota::new(Window::per_minute(120)),
                ),
        )
        .build()
        .unwrap()
}

#[tokio::test]
async fn the_first_matching_route_wins_and_counts_instead_of_the_write_quota() {
    let h = Harness::new(nixflex());
    let response = h.send("POST", "/v1/keys", "k").await;
    assert_eq!((limit(&response), remaining(&response)), (10, 9));
    assert_eq!(h.admitted(20, "POST", "/v1/keys", "k").await, 9);
    // Creating keys spent none of the 120/minute write quota.
    let response = h.send("POST", "/v1/calls", "k").await;
    assert_eq!((limit(&response), remaining(&response)), (120, 119));
    // GET /v1/keys is not `POST /v1/keys`: it is a read.
    let response = h.send("GET", "/v1/keys", "k").await;
    assert_eq!((limit(&response), remaining(&response)), (600, 599));
}

#[tokio::test]
async fn read_and_write_quotas_count_separately() {
    let h = Harness::new(nixflex());
    let mut writes = 0;
    for method in ["POST", "PUT", "PATCH", "DELETE"] {
        writes += h.admitted(40, method, "/v1/calls/c1", "k").await;
    }
    assert_eq!(writes, 120, "every write method shares one bucket");
    assert_eq!(h.admitted(700, "GET", "/v1/calls", "k").await, 600);
    // Reads did not refill or spend writes, and vice versa.
    assert_eq!(h.admitted(1, "DELETE", "/v1/calls/c1", "k").await, 0);
    // A method no route names is not limited (and not counted).
    let response = h.send("OPTIONS", "/v1/calls", "k").await;
    assert_eq!(response.status(), StatusCode::OK);
    assert!(response.headers().get("x-ratelimit-limit").is_none());
    assert_eq!(h.calls(), 120 + 600 + 1);
}

#[tokio::test]
async fn a_cost_above_one_spends_that_much_of_every_window() {
    let h = Harness::new(single(
        Quota::new(Window::per_minute(10))
            .and(Window::per_hour(20))
            .cost(3),
    ));
    let mut left = Vec::new();
    for _ in 0..4 {
        let response = h.send("POST", "/v1/calls", "k").await;
        left.push((response.status().as_u16(), remaining(&response)));
    }
    assert_eq!(left, [(200, 7), (200, 4), (200, 1), (429, 0)]);
    // 3 units come back after 3 × 6 s = 18 s, less the 6 s of slack the
    // minute had (1 unit left): 12 s.
    h.advance(Duration::from_millis(11_999));
    assert_eq!(h.admitted(1, "POST", "/v1/calls", "k").await, 0);
    h.advance(Duration::from_millis(1));
    let response = h.send("POST", "/v1/calls", "k").await;
    assert_eq!(response.status(), StatusCode::OK);
    // The hour window (one unit back every 180 s) holds 12 of 20 units.
    assert_eq!(window_remaining(&response), [(0, 10, 0), (0, 20, 8)]);

    let h = Harness::new(single(
        Quota::new(Window::per_minute(10))
            .cost(4)
            .algorithm(Algorithm::FixedWindow),
    ));
    assert_eq!(
        h.admitted(10, "POST", "/v1/calls", "k").await,
        2,
        "4 + 4 fit in 10, 12 do not"
    );
}

#[tokio::test]
async fn two_keys_never_share_counts() {
    for algorithm in [Algorithm::Gcra, Algorithm::FixedWindow] {
        let h = Harness::new(single(
            Quota::new(Window::per_minute(10)).algorithm(algorithm),
        ));
        assert_eq!(h.admitted(50, "GET", "/", "alice").await, 10);
        let response = h.send("GET", "/", "bob").await;
        assert_eq!(
            remaining(&response),
            9,
            "{algorithm}: bob is untouched by alice"
        );
        assert_eq!(h.admitted(50, "GET", "/", "bob").await, 9);
        for i in 0..50 {
            let key = format!("key-{i}");
            assert_eq!(
                h.admitted(12, "GET", "/", &key).await,
                10,
                "{algorithm}: {key}"
            );
        }
        assert_eq!(h.calls(), 10 + 10 + 500);
    }
}

#[tokio::test]
async fn refused_requests_never_reach_the_inner_service() {
    let h = Harness::new(single(Quota::new(Window::per_minute(5))));
    let mut refused = 0;
    for _ in 0..100 {
        let response = h.send("GET", "/", "k").await;
        if response.status() == StatusCode::TOO_MANY_REQUESTS {
            refused += 1;
        }
    }
    assert_eq!(refused, 95);
    assert_eq!(h.calls(), 5, "only admitted requests were passed on");
}

/// 8 tasks × 500 requests, each task cycling through `keys`, on a frozen
/// clock, through clones of one service on a multi-threaded runtime. Returns
/// the admitted count per key.
async fn hammer(svc: Svc, keys: &'static [&'static str]) -> BTreeMap<&'static str, usize> {
    let mut tasks = Vec::new();
    for t in 0..8 {
        let svc = svc.clone();
        tasks.push(tokio::spawn(async move {
            let mut admitted = BTreeMap::<&str, usize>::new();
            for i in 0..500 {
                let key = keys[(t + i) % keys.len()];
                let response = svc
                    .clone()
                    .oneshot(request("GET", "/v1/calls", key))
                    .await
                    .unwrap();
                if response.status() == StatusCode::OK {
                    *admitted.entry(key).or_default() += 1;
                }
                if i % 64 == 0 {
                    tokio::task::yield_now().await;
                }
            }
            admitted
        }));
    }
    let mut total = BTreeMap::new();
    for task in tasks {
        for (key, n) in task.await.unwrap() {
            *total.entry(key).or_default() += n;
        }
    }
    total
}

#[tokio::test(flavor = "multi_thread", worker_threads = 8)]
async fn concurrent_requests_on_one_key_admit_exactly_the_limit() {
    for algorithm in [Algorithm::Gcra, Algorithm::FixedWindow] {
        let h = Harness::new(single(
            Quota::new(Window::per_hour(1000)).algorithm(algorithm),
        ));
        let admitted = hammer(h.svc.clone(), &["k"]).await;
        assert_eq!(admitted, BTreeMap::from([("k", 1000)]), "{algorithm}");
        assert_eq!(h.calls(), 1000, "{algorithm}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 8)]
async fn concurrent_stacked_limits_admit_exactly_the_tighter_total() {
    // Per key 1000/hour, and 1500/hour for everyone. Key `a` sends 3000
    // requests and `b` 1000: `a` runs into its own limit while the global
    // one has room, and `b` fills the rest. If a request refused by its key
    // limit were charged to the global limit, fewer than 1500 would pass.
    let policy = Policy::builder()
        .limit(Limit::new("per_key", api_key()).quota(Quota::new(Window::per_hour(1000))))
        .limit(Limit::global("global").quota(Quota::new(Window::per_hour(1500))))
        .build()
        .unwrap();
    let h = Harness::new(policy);
    let admitted = hammer(h.svc.clone(), &["a", "a", "a", "b"]).await;
    assert_eq!(admitted, BTreeMap::from([("a", 1000), ("b", 500)]));
    assert_eq!(h.calls(), 1500);
}

/// A year of 366 days.
const YEAR: Duration = Duration::from_secs(366 * 86_400);

#[tokio::test]
async fn a_quota_cut_to_a_sliver_carries_a_debt_capped_as_redis_caps_it() {
    // 1,000 of a 1,000-a-year quota used, then the key's own quota is 1 a
    // year: the debt is 1,000 years, more than a nanosecond count holds
    // next to the time. The arrival time is capped at 2^64 - 2^57 ns (in
    // 2550), as the Redis store's script caps it: refused, never admitted
    // by an overflow.
    let policy = single(Quota::new(Window::new(1000, YEAR).unwrap()).cost(1000));
    let layer = RateLimitLayer::new(policy);
    let overrides = layer.overrides();
    let h = Harness::with_layer(layer, ManualClock::at_unix_secs(T0));
    assert_eq!(h.send("GET", "/", "k").await.status(), StatusCode::OK);
    let sliver = Quota::new(Window::new(1, YEAR).unwrap());
    overrides.set_quota("per_key", "k", sliver).unwrap();
    h.advance(Duration::from_secs(1));
    let refused = h.send("GET", "/", "k").await;
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    let latest_tat = u64::MAX - (1 << 57) + 1;
    let wait = (latest_tat - (T0 + 1) * NS).div_ceil(NS);
    assert_eq!(refused.headers()["retry-after"], wait.to_string().as_str());
    assert_eq!(refused.headers()["x-ratelimit-remaining"], "0");
    assert_eq!(h.calls(), 1);
}

#[tokio::test]
async fn a_key_suspended_then_restored_owes_what_it_used() {
    // A day's whole quota used, the key suspended (1 a day: a debt of
    // 100,000 days), then restored the same second: it still owes its day.
    let per_day = Window::new(100_000, Duration::from_secs(86_400)).unwrap();
    let policy = single(Quota::new(per_day).cost(100_000));
    let layer = RateLimitLayer::new(policy);
    let overrides = layer.overrides();
    let h = Harness::with_layer(layer, ManualClock::at_unix_secs(T0));
    assert_eq!(h.send("GET", "/", "k").await.status(), StatusCode::OK);
    let suspended = Quota::new(Window::per_day(1));
    overrides.set_quota("per_key", "k", suspended).unwrap();
    h.advance(Duration::from_millis(500));
    assert_eq!(
        h.send("GET", "/", "k").await.status(),
        StatusCode::TOO_MANY_REQUESTS
    );
    overrides.remove("per_key", "k").unwrap();
    h.advance(Duration::from_millis(500));
    let refused = h.send("GET", "/", "k").await;
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    // Half a second drained at each rate: at the suspended one, next to
    // nothing.
    assert_eq!(refused.headers()["retry-after"], "86400");
    assert_eq!(h.calls(), 1);
}

#[tokio::test]
async fn a_clock_past_the_year_2262_reads_as_then_and_counts_without_overflow() {
    // Times past 2^63 ns are read as 2^63 ns: no sum overflows (it did
    // near the end of a u64, in debug builds a panic).
    for quota in [
        Quota::new(Window::per_day(1)),
        Quota::new(Window::per_day(1)).algorithm(Algorithm::FixedWindow),
    ] {
        let clock = ManualClock::default();
        clock.set(u64::MAX - 3_600 * NS);
        let h = Harness::at(single(quota), clock.clone());
        let admitted = h.send("GET", "/", "k").await;
        assert_eq!(admitted.status(), StatusCode::OK);
        let reset: u64 = admitted.headers()["x-ratelimit-reset"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!(reset > (1u64 << 63) / NS, "reset {reset} is after 2262");
        clock.advance(Duration::from_secs(7_200));
        let refused = h.send("GET", "/", "k").await;
        assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
        assert!(refused.headers().contains_key("retry-after"));
    }
}

#[test]
fn a_manual_clock_saturates_rather_than_wrapping() {
    let clock = ManualClock::at_unix_secs(u64::MAX);
    assert_eq!(clock.now(), u64::MAX);
    let clock = ManualClock::default();
    clock.set(u64::MAX - 5);
    clock.advance(Duration::from_nanos(10));
    assert_eq!(clock.now(), u64::MAX, "never goes back");
    clock.advance(Duration::MAX);
    assert_eq!(clock.now(), u64::MAX);
}

#[tokio::test]
async fn a_fixed_window_idle_for_2_pow_32_windows_does_not_count_again() {
    // A fixed window's state keeps its window's index modulo 2^32: idle
    // for just under 2^32 windows, an old count read as current again
    // (refused, `Retry-After` 1). The store drops it unread.
    for (period, gap) in [
        (
            Duration::from_millis(1),
            Duration::from_millis((1 << 32) - 5),
        ),
        (Duration::from_secs(1), Duration::from_secs((1 << 32) - 100)),
    ] {
        let quota = Quota::new(Window::new(1, period).unwrap()).algorithm(Algorithm::FixedWindow);
        // However seldom the store is asked to sweep: at most daily.
        let store = Arc::new(MemoryStore::new().sweep_interval(Duration::MAX));
        let h = Harness::on_store(single(quota), &store, ManualClock::at_unix_secs(T0));
        assert_eq!(h.send("GET", "/", "k").await.status(), StatusCode::OK);
        h.advance(gap);
        let again = h.send("GET", "/", "k").await;
        assert_eq!(again.status(), StatusCode::OK, "after {gap:?}");
        assert_eq!(
            h.send("GET", "/", "k").await.status(),
            StatusCode::TOO_MANY_REQUESTS
        );
    }
}
