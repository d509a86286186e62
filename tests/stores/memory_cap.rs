//! The memory store's bounds through the public API: what happens at the
//! entry cap (keys without room are counted in the overflow sketch, never
//! admitted past their quota, with an honest `Retry-After`; known keys are
//! decided exactly), a flood of distinct keys never grows the store past its
//! capacity, and idle keys are dropped losslessly. The flood the cap is for
//! is in `tests/memory_flood.rs` (a binary of its own).

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response, StatusCode};
use tower::util::BoxCloneService;
use tower::{service_fn, Layer, ServiceExt};
use tower_ratelimit::clock::ManualClock;
use tower_ratelimit::key::{Header, KeySecret};
use tower_ratelimit::store::MemoryStore;
use tower_ratelimit::{
    Algorithm, CustomBody, Decision, Limit, Policy, Quota, RateLimitLayer, RefusalFormat,
    RefusalReason, ResponseBody, Window,
};

const NS: u64 = 1_000_000_000;
const T0: u64 = 1_700_000_000;
const HOUR: Duration = Duration::from_secs(3600);

type Res = Response<ResponseBody<String>>;
type Svc = BoxCloneService<Request<String>, Res, Infallible>;

struct Harness {
    clock: ManualClock,
    layer: RateLimitLayer,
    svc: Svc,
    calls: Arc<AtomicUsize>,
}

impl Harness {
    fn new(policy: Policy, store: MemoryStore) -> Self {
        let clock = ManualClock::at_unix_secs(T0);
        let calls = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&calls);
        let inner = service_fn(move |_req: Request<String>| {
            counter.fetch_add(1, Ordering::SeqCst);
            async { Ok::<_, Infallible>(Response::new(String::from("ok"))) }
        });
        let layer = RateLimitLayer::with_store(policy, store)
            .decision_extensions(true)
            .clock(clock.clone());
        let svc = BoxCloneService::new(layer.layer(inner));
        Harness {
            clock,
            layer,
            svc,
            calls,
        }
    }

    async fn send(&self, method: &str, key: &str) -> Res {
        let request = Request::builder()
            .method(method)
            .uri("/v1/calls")
            .header("x-api-key", key)
            .body(String::new())
            .unwrap();
        self.svc.clone().oneshot(request).await.unwrap()
    }

    async fn get(&self, key: &str) -> Res {
        self.send("GET", key).await
    }

    fn at(&self, secs: u64) {
        self.clock.set(secs * NS);
    }

    fn len(&self) -> usize {
        self.layer.store().len()
    }

    fn sweep(&self) {
        self.layer.store().sweep(self.layer.now());
    }
}

/// A policy with a fixed key secret, so that keys land in the same cells
/// of the overflow sketches on every run.
fn per_key(quota: Quota) -> Policy {
    Policy::builder()
        .limit(Limit::new("per_key", Header::parse("X-API-Key").unwrap()).quota(quota))
        .key_secret(KeySecret::from_bytes(*b"memory-cap-tests"))
        .build()
        .unwrap()
}

/// 10/minute, GCRA: one request's state expires 6 s after it.
fn ten_per_minute() -> Policy {
    per_key(Quota::new(Window::per_minute(10)))
}

fn number(response: &Res, name: &str) -> u64 {
    response
        .headers()
        .get(name)
        .unwrap_or_else(|| panic!("no {name} in {:?}", response.headers()))
        .to_str()
        .unwrap()
        .parse()
        .unwrap()
}

fn remaining(response: &Res) -> u64 {
    number(response, "x-ratelimit-remaining")
}

fn retry_after(response: &Res) -> Option<u64> {
    response
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().parse().unwrap())
}

fn refusal(response: &Res) -> Option<RefusalReason> {
    response
        .extensions()
        .get::<Decision>()
        .and_then(Decision::refusal)
}

/// Everything a client sees of a response.
fn seen(response: &Res) -> (u16, Option<u64>, Option<u64>, Option<u64>, Option<u64>) {
    let get = |name: &str| {
        response
            .headers()
            .get(name)
            .map(|v| v.to_str().unwrap().parse().unwrap())
    };
    (
        response.status().as_u16(),
        get("x-ratelimit-limit"),
        get("x-ratelimit-remaining"),
        get("x-ratelimit-reset"),
        get("retry-after"),
    )
}

#[tokio::test]
async fn at_the_cap_a_new_key_is_counted_in_the_overflow_and_known_keys_exactly() {
    let store = MemoryStore::with_max_entries(3)
        .shards(1)
        .sweep_interval(HOUR);
    assert_eq!(store.max_entries(), 3);
    let h = Harness::new(ten_per_minute(), store);
    for (secs, key) in [(0, "a"), (1, "b"), (2, "c")] {
        h.at(T0 + secs);
        assert_eq!(h.get(key).await.status(), StatusCode::OK);
    }
    assert_eq!(h.len(), 3);

    // A fourth key finds no room: it is admitted, counted in the overflow
    // sketch (alone in its cells, so exactly), and takes no entry.
    h.at(T0 + 3);
    let admitted = h.get("d").await;
    assert_eq!(admitted.status(), StatusCode::OK);
    assert_eq!(refusal(&admitted), None);
    assert_eq!(remaining(&admitted), 9);
    assert_eq!(h.len(), 3, "a key without room is not stored");

    // Known keys are still decided exactly: `c` has 8 then 7 left, and `b`
    // gets exactly the 9 requests its window has left.
    assert_eq!(remaining(&h.get("c").await), 8);
    assert_eq!(remaining(&h.get("c").await), 7);
    let mut admitted = 0;
    for _ in 0..20 {
        let response = h.get("b").await;
        if response.status() == StatusCode::OK {
            admitted += 1;
        } else {
            assert_eq!(refusal(&response), Some(RefusalReason::Window));
        }
    }
    assert_eq!(admitted, 9);

    // `d` gets its whole quota, exactly, and no more: the refusal names the
    // cap (its count is an estimate) and its Retry-After is honest.
    for left in (0..9).rev() {
        assert_eq!(remaining(&h.get("d").await), left);
    }
    let refused = h.get("d").await;
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(refusal(&refused), Some(RefusalReason::Capacity));
    assert_eq!(retry_after(&refused), Some(6));
    let reset = number(&refused, "x-ratelimit-reset");
    assert!(reset >= T0 + 3 + 6, "reset {reset}");
    assert_eq!(h.len(), 3);

    // When `a` expires (T0 + 6), a new key takes its place, with a fresh
    // key's count; `d` stays in the sketch until its estimate is fresh.
    h.at(T0 + 6);
    let admitted = h.get("e").await;
    assert_eq!(admitted.status(), StatusCode::OK);
    assert_eq!(remaining(&admitted), 9);
    assert_eq!(h.len(), 3);
    h.at(T0 + 9);
    let retried = h.get("d").await;
    assert_eq!(retried.status(), StatusCode::OK, "admitted when told");
    assert_eq!(remaining(&retried), 0);
    assert_eq!(refusal(&h.get("d").await), Some(RefusalReason::Capacity));
    assert_eq!(h.calls.load(Ordering::SeqCst), 3 + 1 + 2 + 9 + 9 + 1 + 1);
}

#[tokio::test]
async fn every_entry_of_the_cap_is_used_before_any_key_is_counted_approximately() {
    // 250 keys of two windows fill a cap of 500 entries to the last one,
    // however they spread over the store's 64 shards: the cap is the
    // store's, not a fixed share of it per shard.
    let store = MemoryStore::with_max_entries(500).sweep_interval(HOUR);
    assert_eq!(store.max_entries(), 500);
    let h = Harness::new(
        per_key(Quota::new(Window::per_hour(10)).and(Window::per_day(100))),
        store,
    );
    let customers: Vec<String> = (0..250).map(|i| format!("customer-{i}")).collect();
    for (i, key) in customers.iter().enumerate() {
        let response = h.get(key).await;
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(remaining(&response), 9, "{key}");
        assert_eq!(h.len(), 2 * (i + 1), "{key} has both its entries");
    }

    // The store is full: a new key is counted in the sketches and takes no
    // entry, and so do 5,000 more.
    let response = h.get("one-more").await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(h.len(), 500);
    for i in 0..5_000 {
        h.get(&format!("flood-{i}")).await;
    }
    assert_eq!(h.len(), 500);

    // Every customer was tracked before the flood, so each is counted
    // exactly: 8 left of the hour's 10, 98 of the day's 100.
    for key in &customers {
        let response = h.get(key).await;
        assert_eq!(response.status(), StatusCode::OK, "{key}");
        assert_eq!(refusal(&response), None);
        assert_eq!(remaining(&response), 8, "{key}");
        let decision = response.extensions().get::<Decision>().unwrap();
        let left: Vec<u32> = decision.windows().iter().map(|w| w.remaining).collect();
        assert_eq!(left, [8, 98], "{key}");
    }

    // Idle keys leave room for others: once the customers' windows are
    // fresh again, the sweep frees every entry, and new keys are tracked.
    h.at(T0 + 2 * 24 * 3600);
    h.sweep();
    assert_eq!(h.len(), 0);
    for i in 0..250 {
        assert_eq!(h.get(&format!("later-{i}")).await.status(), StatusCode::OK);
    }
    assert_eq!(h.len(), 500);
}

#[tokio::test]
async fn a_forgotten_key_leaves_its_room_under_the_cap_to_another() {
    use tower_ratelimit::store::protocol::{Check, Decided};
    use tower_ratelimit::store::Store;

    let store = MemoryStore::with_max_entries(2);
    let quota = Quota::new(Window::per_minute(10)).and(Window::per_hour(100));
    let decide = |bucket: u64| {
        let Decided::Ready(Ok(outcome)) = store.check(T0 * NS, &[Check::new(bucket, &quota)])
        else {
            panic!("the memory store decides at once");
        };
        assert!(outcome.admitted());
    };
    decide(1);
    assert_eq!(store.len(), 2);
    decide(2);
    assert_eq!(
        store.len(),
        2,
        "no room for a second key (it is in the sketch)"
    );
    assert!(store
        .forget(T0 * NS, &[Check::new(1, &quota)])
        .await
        .unwrap());
    assert_eq!(store.len(), 0);
    // A third key takes the room (the second stays in the sketch until its
    // estimate there is fresh, so that every entry is exact).
    decide(3);
    assert_eq!(store.len(), 2, "the forgotten key's room is taken");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_distinct_keys_never_grows_the_store_past_its_capacity() {
    let store = MemoryStore::with_max_entries(1000).shards(4);
    let capacity = store.max_entries();
    assert_eq!(capacity, 1000);
    // A small refusal body keeps 100,000 requests quick.
    let policy = Policy::builder()
        .limit(
            Limit::new("per_key", Header::parse("X-API-Key").unwrap())
                .quota(Quota::new(Window::per_minute(10))),
        )
        .refusal(RefusalFormat::custom(|_| CustomBody::json("{}")))
        .build()
        .unwrap();
    let h = Harness::new(policy, store);
    for _ in 0..10 {
        assert_eq!(h.get("client").await.status(), StatusCode::OK);
    }
    // 100,000 keys from 4 tasks over 10 s.
    let mut tasks = Vec::new();
    for t in 0..4u32 {
        let (svc, clock, store) = (h.svc.clone(), h.clock.clone(), Arc::clone(h.layer.store()));
        tasks.push(tokio::spawn(async move {
            let (mut admitted, mut at_capacity) = (0, 0);
            for i in 0..25_000u32 {
                clock.advance(Duration::from_micros(100));
                let request = Request::get("/v1/calls")
                    .header("x-api-key", format!("flood-{t}-{i}"))
                    .body(String::new())
                    .unwrap();
                let response = svc.clone().oneshot(request).await.unwrap();
                match refusal(&response) {
                    None => admitted += 1,
                    Some(RefusalReason::Capacity) => at_capacity += 1,
                    Some(other) => panic!("flood key {t}-{i} refused for {other:?}"),
                }
                if i % 256 == 0 {
                    let len = store.len();
                    assert!(len <= capacity, "{len} entries after {i} flood keys");
                }
            }
            (admitted, at_capacity)
        }));
    }
    let (mut admitted, mut at_capacity) = (0, 0);
    for task in tasks {
        let (a, c) = task.await.unwrap();
        admitted += a;
        at_capacity += c;
    }
    assert!(h.len() <= capacity);
    assert!(
        at_capacity > 0 && admitted >= 1000,
        "{admitted} admitted, {at_capacity} refused"
    );

    // The real client was never forgotten: at T0 + 10 s it has earned back
    // exactly one request (one per 6 s, its 10 spent at T0), not a fresh 10.
    let response = h.get("client").await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(remaining(&response), 0);
    assert_eq!(
        h.get("client").await.status(),
        StatusCode::TOO_MANY_REQUESTS
    );
}

#[tokio::test]
async fn sweep_drops_idle_keys_a_second_after_they_equal_a_fresh_key() {
    for algorithm in [Algorithm::Gcra, Algorithm::FixedWindow] {
        let store = MemoryStore::new().shards(4).sweep_interval(HOUR);
        let h = Harness::new(
            per_key(Quota::new(Window::per_minute(10)).algorithm(algorithm)),
            store,
        );
        // T0 is 20 s into a minute: a fixed window's state expires at T0 + 40,
        // a GCRA state of one request at T0 + 6.
        let expiry = match algorithm {
            Algorithm::FixedWindow => T0 + 40,
            _ => T0 + 6,
        };
        for i in 0..100 {
            assert_eq!(h.get(&format!("key-{i}")).await.status(), StatusCode::OK);
        }
        assert_eq!(h.len(), 100);
        // Kept for a second after: a reading a little behind the sweep's
        // (another thread's) must still find its window's count.
        h.clock.set((expiry + 1) * NS - 1);
        h.sweep();
        assert_eq!(h.len(), 100, "{algorithm}: nothing is dropped early");
        h.at(expiry + 1);
        h.sweep();
        assert_eq!(h.len(), 0, "{algorithm}");

        // A swept key answers exactly like a key never seen.
        let swept = h.get("key-0").await;
        let fresh = h.get("never-seen").await;
        assert_eq!(seen(&swept), seen(&fresh), "{algorithm}");
        assert_eq!(remaining(&swept), 9);
    }
}

#[tokio::test]
async fn idle_keys_are_dropped_when_the_sweep_interval_passes_with_traffic() {
    let store = MemoryStore::new()
        .shards(1)
        .sweep_interval(Duration::from_secs(1));
    let h = Harness::new(ten_per_minute(), store);
    for i in 0..100 {
        h.get(&format!("key-{i}")).await;
    }
    assert_eq!(h.len(), 100);
    // Two seconds on, the keys are not idle yet (6 s): nothing is dropped.
    h.at(T0 + 2);
    h.get("other").await;
    assert_eq!(h.len(), 101);
    h.at(T0 + 7);
    h.get("another").await;
    assert_eq!(h.len(), 2, "only the keys used in the last 6 s remain");
}

/// A tiny deterministic generator, so that both layers see one sequence.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self, below: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 33) % below
    }
}

#[tokio::test]
async fn sweeping_is_lossless_a_sweeping_store_decides_like_one_that_never_sweeps() {
    let two_routes = || {
        Policy::builder()
            .limit(
                Limit::new("per_key", Header::parse("X-API-Key").unwrap())
                    .route(
                        "GET *",
                        Quota::new(Window::per_second(3))
                            .and(Window::new(10, Duration::from_secs(10)).unwrap()),
                    )
                    .route(
                        "POST *",
                        Quota::new(Window::per_second(2))
                            .and(Window::new(7, Duration::from_secs(10)).unwrap())
                            .cost(2)
                            .algorithm(Algorithm::FixedWindow),
                    ),
            )
            .build()
            .unwrap()
    };
    let sweeping = Harness::new(
        two_routes(),
        MemoryStore::new()
            .shards(1)
            .sweep_interval(Duration::from_millis(1)),
    );
    let keeping = Harness::new(
        two_routes(),
        MemoryStore::new().shards(1).sweep_interval(HOUR * 24),
    );
    let mut rng = Lcg(7);
    let mut smaller = 0;
    for step in 0..5000 {
        let by = Duration::from_millis(match rng.next(10) {
            0 => 3000 + rng.next(9000),
            _ => rng.next(400),
        });
        sweeping.clock.advance(by);
        keeping.clock.advance(by);
        if rng.next(50) == 0 {
            sweeping.sweep();
        }
        let key = format!("k{}", rng.next(6));
        let method = if rng.next(3) == 0 { "POST" } else { "GET" };
        let a = sweeping.send(method, &key).await;
        let b = keeping.send(method, &key).await;
        assert_eq!(seen(&a), seen(&b), "step {step}: {method} {key}");
        if sweeping.len() < keeping.len() {
            smaller += 1;
        }
    }
    assert!(
        smaller > 100,
        "the sweeping store really dropped keys ({smaller} steps)"
    );
    assert_eq!(
        sweeping.calls.load(Ordering::SeqCst),
        keeping.calls.load(Ordering::SeqCst)
    );
}

/// The reference for one window: what an exact store would hold for a key
/// charged with exactly the requests the store under test admitted.
#[derive(Debug, Clone, Copy, Default)]
struct Exact(u64, u64);

impl Exact {
    /// Whether this window admits `cost` at `now`, and the state after.
    fn step(self, algorithm: Algorithm, window: &Window, now: u64, cost: u32) -> (bool, Self) {
        let (limit, period) = (u64::from(window.limit()), window.period().as_nanos() as u64);
        match algorithm {
            Algorithm::FixedWindow => {
                let index = now / period;
                let used = if self.0 == index { self.1 } else { 0 };
                let total = used + u64::from(cost);
                (total <= limit, Exact(index, total))
            }
            _ => {
                let interval = period.div_ceil(limit);
                let next = self.0.max(now) + interval * u64::from(cost);
                (next <= now + interval * limit, Exact(next, 0))
            }
        }
    }
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(96))]

    /// At a cap of a few entries, most of 160 keys are counted in the
    /// overflow sketch (64 cells), many sharing cells: every admission is one an exact store
    /// would make for the requests admitted so far, and every refusal that
    /// does not name the cap is one it would make too.
    #[test]
    fn at_a_tiny_cap_no_key_is_admitted_past_its_quota_and_only_the_cap_refuses_early(
        fixed in proptest::bool::ANY,
        buckets in proptest::collection::vec(proptest::num::u64::ANY, 160),
        ops in proptest::collection::vec((0..160usize, 1..=3u32, 0..300u64, 0..20u8), 1..800),
    ) {
        use tower_ratelimit::store::protocol::{Check, Decided};
        use tower_ratelimit::store::Store;
        let algorithm = if fixed { Algorithm::FixedWindow } else { Algorithm::Gcra };
        let quotas: Vec<Quota> = (1..=3)
            .map(|cost| {
                Quota::new(Window::per_second(4))
                    .and(Window::new(9, Duration::from_secs(10)).unwrap())
                    .cost(cost)
                    .algorithm(algorithm)
            })
            .collect();
        let store = MemoryStore::with_max_entries(4)
            .shards(1)
            .sweep_interval(Duration::from_secs(1));
        let mut exact = vec![[Exact::default(); 2]; buckets.len()];
        let mut now = T0 * NS;
        for (key, cost, ms, sweep) in ops {
            now += ms * 1_000_000;
            if sweep == 0 {
                store.sweep(now);
            }
            let quota = &quotas[cost as usize - 1];
            let Decided::Ready(Ok(outcome)) = store.check(now, &[Check::new(buckets[key], quota)])
            else {
                panic!("the memory store decides at once");
            };
            let steps: Vec<_> = quota
                .windows()
                .iter()
                .zip(exact[key])
                .map(|(w, state)| state.step(algorithm, w, now, cost))
                .collect();
            let would = steps.iter().all(|(admits, _)| *admits);
            if outcome.admitted() {
                proptest::prop_assert!(would, "key {} admitted past its quota", key);
                for (state, (_, next)) in exact[key].iter_mut().zip(steps) {
                    *state = next;
                }
            } else if !outcome.is_capacity_refusal() {
                proptest::prop_assert!(!would, "key {} refused early, not for the cap", key);
            }
            proptest::prop_assert!(store.len() <= store.max_entries());
        }
    }
}

#[test]
fn the_cap_changes_at_runtime_and_setters_keep_the_new_one() {
    let store = MemoryStore::with_max_entries(10_000);
    assert_eq!(store.max_entries(), 10_000);
    assert!(store.set_max_entries(640));
    assert_eq!(store.max_entries(), 640);
    assert!(!store.set_max_entries(640), "the same cap changes nothing");
    // A cap of 0 is 1.
    assert!(store.set_max_entries(0));
    assert_eq!(store.max_entries(), 1);
    assert!(store.set_max_entries(640));
    // A setter rebuilds the store with the cap it has now.
    let store = store.shards(8);
    assert_eq!(store.max_entries(), 640);
}

/// A lowered quota (an override, a plan changed) carries the count over for
/// a key counted in the overflow sketch as for a known key: neither is
/// admitted again until its debt at the new rate is paid.
#[tokio::test]
async fn a_lowered_quota_carries_the_count_of_a_key_in_the_sketch_too() {
    let store = MemoryStore::with_max_entries(3)
        .shards(1)
        .sweep_interval(HOUR);
    let h = Harness::new(per_key(Quota::new(Window::per_minute(1000))), store);
    let throttle = |key: &str, per_minute: u32| {
        h.layer
            .overrides()
            .set_quota("per_key", key, Quota::new(Window::per_minute(per_minute)))
            .unwrap();
    };
    h.at(T0);
    for key in ["a", "b", "known"] {
        assert_eq!(h.get(key).await.status(), StatusCode::OK);
    }
    // `known` has an entry; `flooded` finds none and is counted in the
    // sketch. On 100 a minute of their own, each uses 90.
    for key in ["known", "flooded"] {
        throttle(key, 100);
    }
    for _ in 0..89 {
        assert_eq!(h.get("known").await.status(), StatusCode::OK);
    }
    for _ in 0..90 {
        assert_eq!(h.get("flooded").await.status(), StatusCode::OK);
    }
    assert_eq!(h.len(), 3);
    // Both throttled to 10 a minute: 90 used is 9 minutes of the new rate.
    for key in ["known", "flooded"] {
        throttle(key, 10);
    }
    // At once (the next second): each key's 53 s of debt at 100 a minute is
    // 530 s at 10.
    for minutes in [0, 1, 2, 5, 7] {
        h.at(T0 + 1 + minutes * 60);
        for key in ["known", "flooded"] {
            let response = h.get(key).await;
            assert_eq!(
                response.status(),
                StatusCode::TOO_MANY_REQUESTS,
                "{key} at +{minutes} min"
            );
        }
    }
    // Paid off after 8 minutes: the debt less the 54 s of burst the new
    // quota allows before its next request.
    h.at(T0 + 8 * 60 + 1);
    for key in ["known", "flooded"] {
        assert_eq!(h.get(key).await.status(), StatusCode::OK, "{key}");
    }
}

/// A key in the sketch on a quota below its route's, sending at its own
/// rate while sweeps run every second: admitted every time (a sweep that
/// forgets the rate it was counted at converts nothing, so no debt grows).
#[tokio::test]
async fn sweeps_never_grow_the_debt_of_a_key_in_the_sketch() {
    let store = MemoryStore::with_max_entries(3)
        .shards(1)
        .sweep_interval(Duration::from_secs(1));
    let h = Harness::new(per_key(Quota::new(Window::per_minute(100))), store);
    h.layer
        .overrides()
        .set_quota("per_key", "slow", Quota::new(Window::per_minute(10)))
        .unwrap();
    h.at(T0);
    for key in ["a", "b", "c"] {
        assert_eq!(h.get(key).await.status(), StatusCode::OK);
    }
    for _ in 0..5 {
        assert_eq!(h.get("slow").await.status(), StatusCode::OK);
    }
    assert_eq!(h.len(), 3, "`slow` is counted in the sketch");
    for step in 1..=20 {
        h.at(T0 + step * 6);
        let response = h.get("slow").await;
        assert_eq!(response.status(), StatusCode::OK, "step {step}");
    }
}

#[tokio::test]
async fn a_tracked_key_keeps_every_window_exact_at_the_cap_after_a_sweep() {
    // 10 a minute and 100 an hour: a minute after its last request a key's
    // minute entry equals a fresh one, its hour entry does not.
    let quota = Quota::new(Window::per_minute(10)).and(Window::per_hour(100));
    let store = MemoryStore::with_max_entries(4)
        .shards(1)
        .sweep_interval(HOUR);
    let h = Harness::new(per_key(quota), store);
    h.at(T0);
    for _ in 0..5 {
        assert_eq!(h.get("customer").await.status(), StatusCode::OK);
    }
    // Two minutes on, made-up keys fill the store (two entries each) and
    // its sketches; ten seconds later a sweep drops what is fresh.
    h.at(T0 + 120);
    for i in 0..500 {
        h.get(&format!("made-up-{i}")).await;
    }
    h.at(T0 + 130);
    h.sweep();
    // The customer still has its 10 of the minute (95 of the hour), all
    // counted exactly: a key's windows are dropped together or not at all,
    // so its minute is not left to the made-up keys' sketch.
    for left in (0..10).rev() {
        let response = h.get("customer").await;
        assert_eq!(response.status(), StatusCode::OK, "{left} left");
        assert_eq!(remaining(&response), left);
    }
    let refused = h.get("customer").await;
    assert_eq!(refusal(&refused), Some(RefusalReason::Window));
}
