//! The layer against a reference model: random request sequences (time
//! steps, keys, methods and paths) through a policy of two stacked limits
//! with two windows per quota, for both algorithms. Every decision of the
//! layer (admitted or not, `Remaining`, `Retry-After`, each window's
//! remaining count and reset) must equal the model's.
//!
//! The model is deliberately plain: per window, GCRA is a "theoretical
//! arrival time" advanced by `ceil(period / limit)` per unit of cost, and a
//! fixed window is a count per `floor(now / period)`. A request is admitted
//! only if every window of every applying limit admits it, and only then is
//! anything charged.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::executor::block_on;
use http::{Request, Response, StatusCode};
use proptest::prelude::*;
use tower::util::BoxCloneService;
use tower::{service_fn, Layer, ServiceExt};
use tower_ratelimit::clock::{Clock, ManualClock};
use tower_ratelimit::key::{Header, PathCapture};
use tower_ratelimit::{
    Algorithm, Decision, Limit, Policy, Quota, RateLimitLayer, ResponseBody, Window,
};

const NS: u64 = 1_000_000_000;
const MS: u64 = 1_000_000;

const KEYS: [&str; 3] = ["k1", "k2", "k3"];

/// The requests a sequence is made of.
const REQUESTS: [(&str, &str); 7] = [
    ("GET", "/v1/keys"),
    ("POST", "/v1/keys"),
    ("POST", "/v1/calls"),
    ("DELETE", "/v1/calls/c1"),
    ("GET", "/v1/calls/c1/control"),
    ("POST", "/v1/calls/c1/control"),
    ("POST", "/v1/calls/c2/control"),
];

/// The windows of each route, as (limit, period in ms). Periods that are not
/// whole seconds and limits that do not divide them exercise the rounding.
const KEY_CREATE: [(u32, u64); 2] = [(2, 1000), (5, 7000)];
const KEY_READ: [(u32, u64); 2] = [(7, 1000), (12, 9000)];
const KEY_WRITE: [(u32, u64); 2] = [(6, 2000), (15, 10_000)];
const CALL: [(u32, u64); 2] = [(3, 1500), (8, 6000)];

/// The policy under test and the model's view of it.
#[derive(Debug, Clone, Copy)]
struct Setup {
    key_algorithm: Algorithm,
    call_algorithm: Algorithm,
    write_cost: u32,
    call_cost: u32,
}

/// One route's quota, in the model's terms.
#[derive(Debug, Clone, Copy)]
struct ModelQuota {
    windows: [(u32, u64); 2],
    cost: u32,
    algorithm: Algorithm,
}

impl ModelQuota {
    fn quota(&self) -> Quota {
        let window =
            |(limit, ms): (u32, u64)| Window::new(limit, Duration::from_millis(ms)).unwrap();
        Quota::new(window(self.windows[0]))
            .and(window(self.windows[1]))
            .cost(self.cost)
            .algorithm(self.algorithm)
    }
}

impl Setup {
    fn routes(&self) -> [ModelQuota; 4] {
        let (k, c) = (self.key_algorithm, self.call_algorithm);
        [
            ModelQuota {
                windows: KEY_CREATE,
                cost: 1,
                algorithm: k,
            },
            ModelQuota {
                windows: KEY_READ,
                cost: 1,
                algorithm: k,
            },
            ModelQuota {
                windows: KEY_WRITE,
                cost: self.write_cost,
                algorithm: k,
            },
            ModelQuota {
                windows: CALL,
                cost: self.call_cost,
                algorithm: c,
            },
        ]
    }

    fn policy(&self) -> Policy {
        let [create, read, write, call] = self.routes();
        Policy::builder()
            .limit(
                Limit::new("per_key", Header::parse("X-API-Key").unwrap())
                    .route("POST /v1/keys", create.quota())
                    .route("GET *", read.quota())
                    .route("POST,PUT,PATCH,DELETE *", write.quota()),
            )
            .limit(
                Limit::new("per_call", PathCapture::new("call_id"))
                    .route("/v1/calls/{call_id}/control", call.quota()),
            )
            .build()
            .unwrap()
    }

    /// The (route, bucket key) pairs that apply to a request, in policy order.
    fn applying(&self, request: usize, key: &str) -> Vec<(usize, String)> {
        let (method, path) = REQUESTS[request];
        let key_route = match (method, path) {
            ("POST", "/v1/keys") => 0,
            ("GET", _) => 1,
            _ => 2,
        };
        let mut applying = vec![(key_route, key.to_owned())];
        if let Some(call) = path
            .strip_prefix("/v1/calls/")
            .and_then(|p| p.strip_suffix("/control"))
        {
            applying.push((3, call.to_owned()));
        }
        applying
    }
}

/// What a window holds in the model.
#[derive(Debug, Clone, Copy)]
enum State {
    /// GCRA: the theoretical arrival time of the next request.
    Tat(u64),
    /// Fixed window: which window, and how much of it is used.
    Count { window: u64, used: u32 },
}

/// One window's verdict on one request.
struct Verdict {
    admits: bool,
    next: State,
    /// Remaining after the request, if admitted.
    remaining: u32,
    /// Unix seconds when the window is full again / ends, if admitted.
    reset: u64,
    /// Nanoseconds until this window would admit the request.
    retry: u64,
}

fn judge(
    algorithm: Algorithm,
    (limit, period_ms): (u32, u64),
    cost: u32,
    state: Option<State>,
    now: u64,
) -> Verdict {
    let period = period_ms * MS;
    match algorithm {
        Algorithm::FixedWindow => {
            let window = now / period;
            let used = match state {
                Some(State::Count { window: w, used }) if w == window => used,
                _ => 0,
            };
            let admits = used + cost <= limit;
            let end = (window + 1) * period;
            Verdict {
                admits,
                next: State::Count {
                    window,
                    used: used + cost,
                },
                remaining: limit.saturating_sub(used + cost),
                reset: end.div_ceil(NS),
                retry: if admits { 0 } else { end - now },
            }
        }
        _ => {
            let interval = period.div_ceil(u64::from(limit));
            let tat = match state {
                Some(State::Tat(t)) => t,
                _ => 0,
            };
            let next = tat.max(now) + interval * u64::from(cost);
            let horizon = now + interval * u64::from(limit);
            let admits = next <= horizon;
            Verdict {
                admits,
                next: State::Tat(next),
                remaining: if admits {
                    ((horizon - next) / interval) as u32
                } else {
                    0
                },
                reset: next.div_ceil(NS),
                retry: next.saturating_sub(horizon),
            }
        }
    }
}

/// The model's decision on one request.
#[derive(Debug, PartialEq, Eq)]
struct Expected {
    admitted: bool,
    remaining: u64,
    retry_after: Option<u64>,
    /// Each window's (limit, remaining, reset) when admitted.
    windows: Vec<(u32, u32, u64)>,
}

#[derive(Default)]
struct Model {
    states: HashMap<(usize, String, usize), State>,
}

impl Model {
    fn decide(&mut self, setup: &Setup, request: usize, key: &str, now: u64) -> Expected {
        let routes = setup.routes();
        let mut verdicts = Vec::new();
        for (route, bucket) in setup.applying(request, key) {
            let quota = routes[route];
            for (w, &window) in quota.windows.iter().enumerate() {
                let id = (route, bucket.clone(), w);
                let state = self.states.get(&id).copied();
                verdicts.push((
                    id,
                    window.0,
                    judge(quota.algorithm, window, quota.cost, state, now),
                ));
            }
        }
        if verdicts.iter().all(|(_, _, v)| v.admits) {
            let windows: Vec<_> = verdicts
                .iter()
                .map(|(_, limit, v)| (*limit, v.remaining, v.reset))
                .collect();
            let remaining = windows.iter().map(|w| u64::from(w.1)).min().unwrap();
            for (id, _, v) in verdicts {
                self.states.insert(id, v.next);
            }
            Expected {
                admitted: true,
                remaining,
                retry_after: None,
                windows,
            }
        } else {
            let wait = verdicts.iter().map(|(_, _, v)| v.retry).max().unwrap();
            Expected {
                admitted: false,
                remaining: 0,
                retry_after: Some(wait.div_ceil(NS).max(1)),
                windows: Vec::new(),
            }
        }
    }
}

type Svc = BoxCloneService<Request<String>, Response<ResponseBody<String>>, Infallible>;

fn number(response: &Response<ResponseBody<String>>, name: &str) -> Option<u64> {
    response
        .headers()
        .get(name)
        .map(|v| v.to_str().unwrap().parse().unwrap())
}

/// Runs `steps` (nanoseconds to advance, key, request) through the layer and
/// the model side by side.
fn run(setup: Setup, start: u64, steps: &[(u64, usize, usize)]) -> Result<(), TestCaseError> {
    let clock = ManualClock::default();
    clock.set(start);
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&calls);
    let inner = service_fn(move |_req: Request<String>| {
        counter.fetch_add(1, Ordering::Relaxed);
        async { Ok::<_, Infallible>(Response::new(String::new())) }
    });
    let svc: Svc = BoxCloneService::new(
        RateLimitLayer::new(setup.policy())
            .decision_extensions(true)
            .clock(clock.clone())
            .layer(inner),
    );
    let mut model = Model::default();
    let mut admitted = 0;
    for (i, &(advance, key, request)) in steps.iter().enumerate() {
        clock.advance(Duration::from_nanos(advance));
        let now = clock.now();
        let (method, path) = REQUESTS[request];
        let req = Request::builder()
            .method(method)
            .uri(path)
            .header("x-api-key", KEYS[key])
            .body(String::new())
            .unwrap();
        let response = block_on(svc.clone().oneshot(req)).unwrap();
        let expected = model.decide(&setup, request, KEYS[key], now);
        let decision = response
            .extensions()
            .get::<Decision>()
            .expect("a decision")
            .clone();
        let actual = Expected {
            admitted: response.status() == StatusCode::OK,
            remaining: number(&response, "x-ratelimit-remaining").expect("X-RateLimit-Remaining"),
            retry_after: number(&response, "retry-after"),
            windows: if decision.is_admitted() {
                decision
                    .windows()
                    .iter()
                    .map(|w| (w.limit, w.remaining, w.reset))
                    .collect()
            } else {
                Vec::new()
            },
        };
        prop_assert_eq!(
            &actual,
            &expected,
            "step {} at {} ns: {} {} key {}",
            i,
            now,
            method,
            path,
            KEYS[key]
        );
        prop_assert_eq!(decision.is_admitted(), expected.admitted);
        if let Some(wait) = expected.retry_after {
            prop_assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
            let reset = number(&response, "x-ratelimit-reset").expect("X-RateLimit-Reset");
            // Never before the wait ends (its second, rounded up): after
            // the moment a second short of Retry-After.
            prop_assert!(
                reset * NS > now + (wait - 1) * NS,
                "reset {} before the retry",
                reset
            );
            prop_assert!(decision.windows().iter().all(|w| w.remaining == 0));
        } else {
            admitted += 1;
        }
        prop_assert_eq!(
            calls.load(Ordering::Relaxed),
            admitted,
            "the inner service saw only admissions"
        );
    }
    Ok(())
}

fn algorithm() -> impl Strategy<Value = Algorithm> {
    prop_oneof![Just(Algorithm::Gcra), Just(Algorithm::FixedWindow)]
}

fn setup() -> impl Strategy<Value = Setup> {
    (algorithm(), algorithm(), 1..=3u32, 1..=2u32).prop_map(
        |(key_algorithm, call_algorithm, write_cost, call_cost)| Setup {
            key_algorithm,
            call_algorithm,
            write_cost,
            call_cost,
        },
    )
}

/// Mostly bursts (a few ms apart), sometimes pauses up to a few windows, at
/// nanosecond resolution.
fn advance() -> impl Strategy<Value = u64> {
    prop_oneof![
        6 => (0..20u64, 0..MS).prop_map(|(ms, ns)| ms * MS + ns),
        3 => (0..1500u64).prop_map(|ms| ms * MS),
        1 => (0..12_000u64, 0..MS).prop_map(|(ms, ns)| ms * MS + ns),
    ]
}

fn steps() -> impl Strategy<Value = Vec<(u64, usize, usize)>> {
    prop::collection::vec((advance(), 0..KEYS.len(), 0..REQUESTS.len()), 1..200)
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 256,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn the_layer_decides_like_the_reference_model(
        setup in setup(),
        // Anywhere within a minute of 2023-11-14T22:13:20Z, to the nanosecond.
        start in (1_700_000_000 * NS)..(1_700_000_060 * NS),
        steps in steps(),
    ) {
        run(setup, start, &steps)?;
    }
}

#[test]
fn the_model_agrees_on_a_hand_written_sequence() {
    // A sanity check of the harness itself: a burst of call-control requests
    // from one key, refused by the call limit after 3, then admitted again
    // once the 1.5 s window earns one back.
    let setup = Setup {
        key_algorithm: Algorithm::Gcra,
        call_algorithm: Algorithm::Gcra,
        write_cost: 1,
        call_cost: 1,
    };
    let mut steps = vec![(0, 0, 5); 5];
    steps.push((500 * MS, 0, 5));
    steps.push((1, 0, 5));
    run(setup, 1_700_000_000 * NS, &steps).unwrap();

    let mut model = Model::default();
    let decisions: Vec<bool> = (0..5)
        .map(|_| model.decide(&setup, 5, "k1", 1_700_000_000 * NS).admitted)
        .collect();
    assert_eq!(decisions, [true, true, true, false, false]);
    assert!(
        model
            .decide(&setup, 5, "k1", 1_700_000_000 * NS + 500 * MS)
            .admitted
    );
}
