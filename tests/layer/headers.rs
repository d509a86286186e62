//! Rate-limit headers through the public API: exact `X-RateLimit-*` values on
//! admitted and refused responses, honest `Retry-After`, the reported window,
//! the IETF header style (each window's own state, also on a refusal), the
//! draft-7 style (the reported window, read back with a Structured Field
//! Values parser), no headers on responses about requests nothing counted,
//! the inner service's
//! own headers, and the decision in the request's and response's extensions.

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use tower::util::BoxCloneService;
use tower::{service_fn, Layer, ServiceExt};
use tower_ratelimit::clock::{Clock, ManualClock};
use tower_ratelimit::key::{Header, PathCapture};
use tower_ratelimit::penalty::Penalty;
use tower_ratelimit::{
    Algorithm, Decision, HeaderStyle, Limit, Policy, Quota, RateLimitLayer, RefusalReason,
    ResponseBody, Window,
};

use crate::common::{answered_at_once, start, still_waiting, Gate};

const NS: u64 = 1_000_000_000;
/// 2023-11-14T22:13:20Z: 20 s into a minute, 800 s into an hour.
const T0: u64 = 1_700_000_000;
/// The first hour boundary after `T0`.
const HOUR: u64 = (T0 / 3600 + 1) * 3600;

type Res = Response<ResponseBody<String>>;
type Svc = BoxCloneService<Request<String>, Res, Infallible>;

/// A rate-limited service whose inner service records the decision it saw
/// and sets headers of its own.
struct Harness {
    clock: ManualClock,
    svc: Svc,
    calls: Arc<AtomicUsize>,
    seen: Arc<Mutex<Vec<Option<Decision>>>>,
}

impl Harness {
    fn new(policy: Policy) -> Self {
        Self::with(
            RateLimitLayer::new(policy).decision_extensions(true),
            T0 * NS,
        )
    }

    fn at(policy: Policy, nanos: u64) -> Self {
        Self::with(RateLimitLayer::new(policy).decision_extensions(true), nanos)
    }

    fn with(layer: RateLimitLayer, nanos: u64) -> Self {
        let clock = ManualClock::default();
        clock.set(nanos);
        let calls = Arc::new(AtomicUsize::new(0));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (counter, record) = (Arc::clone(&calls), Arc::clone(&seen));
        let inner = service_fn(move |req: Request<String>| {
            counter.fetch_add(1, Ordering::SeqCst);
            record
                .lock()
                .unwrap()
                .push(req.extensions().get::<Decision>().cloned());
            async {
                let response = Response::builder()
                    .header("content-type", "text/plain")
                    .header("x-inner", "kept")
                    .header("cache-control", "no-store")
                    .body(String::from("inner body"))
                    .unwrap();
                Ok::<_, Infallible>(response)
            }
        });
        let svc = BoxCloneService::new(layer.clock(clock.clone()).layer(inner));
        Harness {
            clock,
            svc,
            calls,
            seen,
        }
    }

    async fn send(&self, method: &str, path: &str, key: &str) -> Res {
        let request = Request::builder()
            .method(method)
            .uri(path)
            .header("x-api-key", key)
            .body(String::new())
            .unwrap();
        self.svc.clone().oneshot(request).await.unwrap()
    }

    async fn get(&self) -> Res {
        self.send("GET", "/v1/calls", "k").await
    }

    /// Sends `n` requests that must all be admitted.
    async fn spend(&self, n: usize, method: &str, path: &str) {
        for i in 0..n {
            let response = self.send(method, path, "k").await;
            assert_eq!(response.status(), StatusCode::OK, "request {i} of {n}");
        }
    }

    fn set(&self, nanos: u64) {
        self.clock.set(nanos);
    }

    fn advance(&self, by: Duration) {
        self.clock.advance(by);
    }

    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

fn value<'r>(response: &'r Res, name: &str) -> Option<&'r str> {
    response.headers().get(name).map(|v| v.to_str().unwrap())
}

fn number(response: &Res, name: &str) -> u64 {
    value(response, name)
        .unwrap_or_else(|| panic!("no {name} in {:?}", response.headers()))
        .parse()
        .unwrap()
}

/// `(Limit, Remaining, Reset)`.
fn trio(response: &Res) -> (u64, u64, u64) {
    (
        number(response, "x-ratelimit-limit"),
        number(response, "x-ratelimit-remaining"),
        number(response, "x-ratelimit-reset"),
    )
}

fn retry_after(response: &Res) -> Option<u64> {
    value(response, "retry-after").map(|v| v.parse().unwrap())
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

fn fixed(window: Window) -> Quota {
    Quota::new(window).algorithm(Algorithm::FixedWindow)
}

#[tokio::test]
async fn gcra_admitted_responses_report_limit_remaining_and_the_moment_the_window_is_full_again() {
    let h = Harness::new(single(Quota::new(Window::per_minute(60))));
    let first = h.get().await;
    assert_eq!(first.status(), StatusCode::OK);
    assert_eq!(trio(&first), (60, 59, T0 + 1));
    assert_eq!(retry_after(&first), None);
    let second = h.get().await;
    assert_eq!(trio(&second), (60, 58, T0 + 2));
    h.spend(57, "GET", "/v1/calls").await;
    let last = h.get().await;
    assert_eq!(trio(&last), (60, 0, T0 + 60));
    assert_eq!(retry_after(&last), None, "Retry-After only on refusals");

    // Half a second later: refused, 0 left, full again at T0 + 60.
    h.advance(Duration::from_millis(500));
    let refused = h.get().await;
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(trio(&refused), (60, 0, T0 + 60));
    assert_eq!(retry_after(&refused), Some(1), "0.5 s rounds up to 1");
    assert_eq!(h.calls(), 60);
}

#[tokio::test]
async fn fixed_window_reset_is_the_end_of_the_aligned_window() {
    let h = Harness::new(single(fixed(Window::per_minute(3))));
    let end = T0 + 40;
    for left in [2, 1, 0] {
        let response = h.get().await;
        assert_eq!(trio(&response), (3, left, end));
        assert_eq!(retry_after(&response), None);
    }
    h.advance(Duration::from_millis(250));
    let refused = h.get().await;
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(retry_after(&refused), Some(40), "39.75 s rounds up to 40");
    // The reset is when the window ends, as on the admitted responses,
    // though a client that waits the advertised 40 s comes back 0.25 s
    // after it.
    assert_eq!(trio(&refused), (3, 0, end));

    h.set(end * NS);
    let fresh = h.get().await;
    assert_eq!(trio(&fresh), (3, 2, end + 60));
}

#[tokio::test]
async fn remaining_decreases_by_the_cost_and_is_zero_on_a_refusal() {
    // 10/minute at cost 3: a unit is earned back every 6 s.
    let h = Harness::new(single(Quota::new(Window::per_minute(10)).cost(3)));
    let mut seen = Vec::new();
    for _ in 0..4 {
        let response = h.get().await;
        seen.push((
            response.status().as_u16(),
            trio(&response),
            retry_after(&response),
        ));
    }
    assert_eq!(
        seen,
        [
            (200, (10, 7, T0 + 18), None),
            (200, (10, 4, T0 + 36), None),
            (200, (10, 1, T0 + 54), None),
            (429, (10, 0, T0 + 54), Some(12)),
        ]
    );

    let h = Harness::new(single(fixed(Window::per_minute(10)).cost(4)));
    let remaining: Vec<_> = [h.get().await, h.get().await, h.get().await]
        .iter()
        .map(|r| (r.status().as_u16(), number(r, "x-ratelimit-remaining")))
        .collect();
    assert_eq!(remaining, [(200, 6), (200, 2), (429, 0)]);
}

#[tokio::test]
async fn retry_after_is_whole_seconds_rounded_up_and_at_least_one() {
    // GCRA 60/minute: after the burst, one back every second.
    let h = Harness::new(single(Quota::new(Window::per_minute(60))));
    h.spend(60, "GET", "/v1/calls").await;
    for (at_ms, expected) in [(0, 1), (100, 1), (999, 1)] {
        h.set(T0 * NS + at_ms * 1_000_000);
        assert_eq!(
            retry_after(&h.get().await),
            Some(expected),
            "{at_ms} ms after the burst"
        );
    }
    // A wait of a single nanosecond still says 1, never 0.
    h.set((T0 + 1) * NS - 1);
    assert_eq!(retry_after(&h.get().await), Some(1));

    // GCRA 30/minute: one back every 2 s; a 1.1 s wait says 2.
    let h = Harness::new(single(Quota::new(Window::per_minute(30))));
    h.spend(30, "GET", "/v1/calls").await;
    h.advance(Duration::from_millis(900));
    assert_eq!(retry_after(&h.get().await), Some(2));

    // Fixed window: 100 ms and 1.1 s before the boundary.
    let end = T0 + 40;
    let h = Harness::at(
        single(fixed(Window::per_minute(1))),
        end * NS - 1_100_000_000,
    );
    h.spend(1, "GET", "/v1/calls").await;
    assert_eq!(retry_after(&h.get().await), Some(2));
    h.set(end * NS - 100_000_000);
    assert_eq!(retry_after(&h.get().await), Some(1));
    h.set(end * NS - 1);
    assert_eq!(retry_after(&h.get().await), Some(1));
}

/// The next request must be refused with `Retry-After: expected`; a request
/// sent that many seconds later is admitted and (when the wait is over a
/// second) one sent a second earlier is refused. Returns the refusal.
async fn assert_honest(h: &Harness, method: &str, path: &str, expected: u64) -> Res {
    let now = h.clock.now();
    let refused = h.send(method, path, "k").await;
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    let wait = retry_after(&refused).expect("Retry-After on a refusal");
    assert_eq!(wait, expected);
    // The reset is never before the wait ends (its second, rounded up):
    // after the moment a second short of Retry-After, which is refused.
    let reset = number(&refused, "x-ratelimit-reset");
    assert!(
        reset * NS > now + (wait - 1) * NS,
        "X-RateLimit-Reset {reset} against now ({now} ns) and Retry-After {wait}"
    );
    assert_eq!(number(&refused, "x-ratelimit-remaining"), 0);
    if wait >= 2 {
        h.set(now + (wait - 1) * NS);
        let early = h.send(method, path, "k").await;
        assert_eq!(
            early.status(),
            StatusCode::TOO_MANY_REQUESTS,
            "a second early"
        );
    }
    h.set(now + wait * NS);
    let on_time = h.send(method, path, "k").await;
    assert_eq!(on_time.status(), StatusCode::OK, "after Retry-After");
    refused
}

#[tokio::test]
async fn gcra_retry_after_is_honest() {
    // 2/minute: one back every 30 s.
    let h = Harness::new(single(Quota::new(Window::per_minute(2))));
    h.spend(2, "GET", "/v1/calls").await;
    let refused = assert_honest(&h, "GET", "/v1/calls", 30).await;
    assert_eq!(trio(&refused), (2, 0, T0 + 60));

    // 300 ms into the wait: 29.7 s left, said as 30.
    let h = Harness::new(single(Quota::new(Window::per_minute(2))));
    h.spend(2, "GET", "/v1/calls").await;
    h.advance(Duration::from_millis(300));
    assert_honest(&h, "GET", "/v1/calls", 30).await;
}

#[tokio::test]
async fn fixed_window_retry_after_is_honest() {
    let h = Harness::new(single(fixed(Window::per_minute(2))));
    h.spend(2, "GET", "/v1/calls").await;
    let refused = assert_honest(&h, "GET", "/v1/calls", 40).await;
    assert_eq!(trio(&refused), (2, 0, T0 + 40));

    let h = Harness::at(single(fixed(Window::per_minute(2))), T0 * NS + 250_000_000);
    h.spend(2, "GET", "/v1/calls").await;
    assert_honest(&h, "GET", "/v1/calls", 40).await;
}

#[tokio::test]
async fn fixed_window_retry_after_is_honest_when_the_hour_window_binds() {
    // 60/minute and 100/hour, starting 10 s into an hour.
    let policy = single(fixed(Window::per_minute(60)).and(Window::per_hour(100)));
    let h = Harness::at(policy, (HOUR + 10) * NS);
    h.spend(60, "GET", "/v1/calls").await;
    h.set((HOUR + 60) * NS);
    h.spend(40, "GET", "/v1/calls").await;
    // The minute has 20 left; the hour is spent until its end.
    let refused = assert_honest(&h, "GET", "/v1/calls", 3540).await;
    assert_eq!(
        trio(&refused),
        (100, 0, HOUR + 3600),
        "the binding window is reported"
    );
}

#[tokio::test]
async fn gcra_retry_after_is_honest_when_the_hour_window_binds() {
    // 5/minute (one back every 12 s) and 6/hour (one back every 600 s).
    let h = Harness::new(single(
        Quota::new(Window::per_minute(5)).and(Window::per_hour(6)),
    ));
    h.spend(5, "GET", "/v1/calls").await;
    h.advance(Duration::from_secs(12));
    h.spend(1, "GET", "/v1/calls").await;
    h.advance(Duration::from_secs(12));
    // The minute would admit; the hour has room again at T0 + 600.
    let refused = assert_honest(&h, "GET", "/v1/calls", 576).await;
    assert_eq!(trio(&refused), (6, 0, T0 + 3600));
}

fn flireo(call_quota: Quota) -> Policy {
    Policy::builder()
        .limit(Limit::new("per_key", api_key()).quota(Quota::new(Window::per_minute(100))))
        .limit(
            Limit::new("per_call", PathCapture::new("call_id"))
                .route("POST /v1/calls/{call_id}/control", call_quota),
        )
        .build()
        .unwrap()
}

#[tokio::test]
async fn retry_after_is_honest_with_stacked_limits() {
    // The call limit binds: 2/minute, one back every 30 s.
    let h = Harness::new(flireo(Quota::new(Window::per_minute(2))));
    h.spend(2, "POST", "/v1/calls/c1/control").await;
    let refused = assert_honest(&h, "POST", "/v1/calls/c1/control", 30).await;
    assert_eq!(
        trio(&refused),
        (2, 0, T0 + 60),
        "the call window is reported"
    );

    // Both bind: the key in 0.6 s, the call in 30 s; the longer wait is told.
    let h = Harness::new(flireo(Quota::new(Window::per_minute(2))));
    h.spend(2, "POST", "/v1/calls/c1/control").await;
    h.spend(98, "GET", "/v1/numbers").await;
    assert_honest(&h, "POST", "/v1/calls/c1/control", 30).await;

    // The key binds with a fixed-window call limit that has room.
    let h = Harness::new(flireo(fixed(Window::per_minute(10))));
    h.spend(100, "GET", "/v1/numbers").await;
    h.advance(Duration::from_millis(100));
    let refused = assert_honest(&h, "POST", "/v1/calls/c1/control", 1).await;
    assert_eq!(
        number(&refused, "x-ratelimit-limit"),
        100,
        "the key window is reported"
    );
}

#[tokio::test(start_paused = true)]
async fn retry_after_is_honest_with_paused_tokio_time() {
    for quota in [
        Quota::new(Window::per_minute(2)),
        fixed(Window::per_minute(2)),
    ] {
        let calls = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&calls);
        let svc = RateLimitLayer::new(single(quota.clone()))
            .decision_extensions(true)
            .layer(service_fn(move |_req: Request<String>| {
                counter.fetch_add(1, Ordering::SeqCst);
                async { Ok::<_, Infallible>(Response::new(String::new())) }
            }));
        let send = || {
            let request = Request::get("/v1/calls")
                .header("x-api-key", "k")
                .body(String::new())
                .unwrap();
            svc.clone().oneshot(request)
        };
        // The default clock follows Tokio's paused time from the wall-clock
        // moment the layer was made, so a fixed window's wait is whatever
        // is left of the current minute.
        assert_eq!(send().await.unwrap().status(), StatusCode::OK);
        assert_eq!(send().await.unwrap().status(), StatusCode::OK);
        let refused = send().await.unwrap();
        assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
        let wait = retry_after(&refused).unwrap();
        assert!((1..=60).contains(&wait), "{quota:?}: {wait}");
        if wait >= 2 {
            tokio::time::advance(Duration::from_secs(wait - 1)).await;
            assert_eq!(
                send().await.unwrap().status(),
                StatusCode::TOO_MANY_REQUESTS,
                "{quota:?}"
            );
            tokio::time::advance(Duration::from_secs(1)).await;
        } else {
            tokio::time::advance(Duration::from_secs(wait)).await;
        }
        assert_eq!(send().await.unwrap().status(), StatusCode::OK, "{quota:?}");
        assert_eq!(calls.load(Ordering::SeqCst), 3, "{quota:?}");
    }
}

/// TalkPilot's limit; its headers report the window of `report`'s period,
/// or the default window with `None`.
fn talkpilot(report: Option<Duration>) -> Policy {
    let builder = Policy::builder().limit(
        Limit::new("per_key", api_key())
            .quota(fixed(Window::per_minute(60)).and(Window::per_hour(100))),
    );
    match report {
        Some(period) => builder.report_period(period),
        None => builder,
    }
    .build()
    .unwrap()
}

#[tokio::test]
async fn the_most_restrictive_window_is_reported_by_default() {
    let h = Harness::at(talkpilot(None), HOUR * NS);
    let first = h.get().await;
    // Minute: 59 left; hour: 99 left.
    assert_eq!(trio(&first), (60, 59, HOUR + 60));
    h.spend(59, "GET", "/v1/calls").await;
    h.set((HOUR + 60) * NS);
    // Minute: 59 left; hour: 39 left.
    assert_eq!(trio(&h.get().await), (100, 39, HOUR + 3600));
}

#[tokio::test]
async fn a_named_period_is_reported_even_when_another_window_has_less_left() {
    let h = Harness::at(talkpilot(Some(Duration::from_secs(60))), HOUR * NS);
    h.spend(60, "GET", "/v1/calls").await;
    h.set((HOUR + 60) * NS);
    // Minute: 59 left; hour: 39 left. TalkPilot reports the minute.
    assert_eq!(trio(&h.get().await), (60, 59, HOUR + 120));
    h.spend(39, "GET", "/v1/calls").await;
    // The hour refuses; the minute window is still reported, with 0 left
    // and a reset no earlier than the retry.
    let refused = h.get().await;
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(retry_after(&refused), Some(3540));
    assert_eq!(trio(&refused), (60, 0, HOUR + 3600));
}

fn ietf(style: HeaderStyle) -> Policy {
    Policy::builder()
        .limit(
            Limit::new("per_key", api_key())
                .quota(Quota::new(Window::per_minute(60)).and(Window::per_hour(1000))),
        )
        .header_style(style)
        .build()
        .unwrap()
}

#[tokio::test]
async fn ietf_style_sends_one_policy_item_per_window() {
    let h = Harness::new(ietf(HeaderStyle::Ietf));
    let response = h.get().await;
    assert_eq!(
        value(&response, "ratelimit-policy"),
        Some(r#""per_key.minute";q=60;w=60, "per_key.hour";q=1000;w=3600"#)
    );
    // The hour earns a request back every 3.6 s: t rounds up to 4.
    assert_eq!(
        value(&response, "ratelimit"),
        Some(r#""per_key.minute";r=59;t=1, "per_key.hour";r=999;t=4"#)
    );
    assert_eq!(value(&response, "x-ratelimit-limit"), None);
    assert_eq!(value(&response, "x-ratelimit-remaining"), None);
    assert_eq!(value(&response, "x-ratelimit-reset"), None);

    h.spend(59, "GET", "/v1/calls").await;
    let refused = h.get().await;
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(retry_after(&refused), Some(1));
    assert_eq!(
        value(&refused, "ratelimit-policy"),
        Some(r#""per_key.minute";q=60;w=60, "per_key.hour";q=1000;w=3600"#)
    );
    // Nothing was charged: the hour holds 60 requests, not 61, so 940 are
    // left, and the oldest is earned back in 3.6 s; the minute admits again
    // in 1 s.
    assert_eq!(
        value(&refused, "ratelimit"),
        Some(r#""per_key.minute";r=0;t=1, "per_key.hour";r=940;t=4"#)
    );
}

#[tokio::test]
async fn ietf_windows_under_a_second_have_names_of_their_own() {
    // 4 per 500 ms and 6 a second: two names, each its own window's.
    let h = Harness::new(
        Policy::builder()
            .limit(
                Limit::new("per_key", api_key()).quota(
                    Quota::new(Window::new(4, Duration::from_millis(500)).unwrap())
                        .and(Window::per_second(6)),
                ),
            )
            .header_style(HeaderStyle::Ietf)
            .build()
            .unwrap(),
    );
    let response = h.get().await;
    assert_eq!(
        value(&response, "ratelimit-policy"),
        Some(r#""per_key.500ms";q=4;w=1, "per_key.second";q=6;w=1"#)
    );
    let state = value(&response, "ratelimit").unwrap();
    assert!(
        state.starts_with(r#""per_key.500ms";r=3"#) && state.contains(r#""per_key.second";r=5"#),
        "{state}"
    );
}

#[tokio::test]
async fn a_window_under_a_second_is_reported_and_named_as_itself_by_every_answer() {
    // 6 a second and 4 per 500 ms, the 500 ms one reported; 1 refusal bans.
    let penalty = Penalty::new(1, Duration::from_secs(60), Duration::from_secs(5)).unwrap();
    let h = Harness::new(
        Policy::builder()
            .limit(
                Limit::new("k", api_key())
                    .quota(
                        Quota::new(Window::per_second(6))
                            .and(Window::new(4, Duration::from_millis(500)).unwrap()),
                    )
                    .penalty(penalty),
            )
            .report_period(Duration::from_millis(500))
            .header_style(HeaderStyle::Both)
            .build()
            .unwrap(),
    );
    let admitted = h.get().await;
    assert_eq!(trio(&admitted).0, 4, "the 500 ms window, not the second's");
    for _ in 0..3 {
        h.get().await;
    }
    let refused = h.get().await;
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(trio(&refused).0, 4);
    let banned = h.get().await;
    assert_eq!(trio(&banned).0, 4);
    // The ban names the 500 ms window by its own name, as every answer does.
    for answer in [&refused, &banned] {
        let policy = value(answer, "ratelimit-policy").unwrap();
        assert!(policy.starts_with(r#""k.500ms";q=4"#), "{policy}");
    }
}

#[tokio::test]
async fn ietf_style_names_every_stacked_limit() {
    let policy = Policy::builder()
        .limit(Limit::new("per_key", api_key()).quota(Quota::new(Window::per_minute(100))))
        .limit(Limit::new("per_call", PathCapture::new("call_id")).route(
            "POST /v1/calls/{call_id}/control",
            Quota::new(Window::per_minute(10)),
        ))
        .header_style(HeaderStyle::Ietf)
        .build()
        .unwrap();
    let h = Harness::new(policy);
    let response = h.send("POST", "/v1/calls/c1/control", "k").await;
    assert_eq!(
        value(&response, "ratelimit-policy"),
        Some(r#""per_key.minute";q=100;w=60, "per_call.minute";q=10;w=60"#)
    );
    assert_eq!(
        value(&response, "ratelimit"),
        Some(r#""per_key.minute";r=99;t=1, "per_call.minute";r=9;t=6"#)
    );
    let other = h.send("GET", "/v1/numbers", "k").await;
    assert_eq!(
        value(&other, "ratelimit-policy"),
        Some(r#""per_key.minute";q=100;w=60"#)
    );
    // Two used: the first is earned back 0.6 s after it was sent.
    assert_eq!(
        value(&other, "ratelimit"),
        Some(r#""per_key.minute";r=98;t=1"#)
    );
}

#[tokio::test]
async fn both_style_sends_x_ratelimit_and_ietf_headers() {
    let h = Harness::new(ietf(HeaderStyle::Both));
    let response = h.get().await;
    assert_eq!(trio(&response), (60, 59, T0 + 1));
    assert_eq!(
        value(&response, "ratelimit"),
        Some(r#""per_key.minute";r=59;t=1, "per_key.hour";r=999;t=4"#)
    );
    assert!(value(&response, "ratelimit-policy").is_some());
}

#[tokio::test]
async fn none_style_sends_no_rate_limit_headers_but_keeps_retry_after() {
    let h = Harness::new(ietf(HeaderStyle::None));
    let admitted = h.get().await;
    assert_eq!(admitted.status(), StatusCode::OK);
    for name in [
        "x-ratelimit-limit",
        "x-ratelimit-remaining",
        "x-ratelimit-reset",
        "ratelimit",
        "ratelimit-policy",
        "retry-after",
    ] {
        assert_eq!(value(&admitted, name), None, "{name}");
    }
    h.spend(59, "GET", "/v1/calls").await;
    let refused = h.get().await;
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(retry_after(&refused), Some(1));
    for name in [
        "x-ratelimit-limit",
        "x-ratelimit-remaining",
        "x-ratelimit-reset",
        "ratelimit",
        "ratelimit-policy",
    ] {
        assert_eq!(value(&refused, name), None, "{name}");
    }
}

fn minute_and_hour(style: HeaderStyle, algorithm: Algorithm) -> Policy {
    Policy::builder()
        .limit(
            Limit::new("per_key", api_key()).quota(
                Quota::new(Window::per_minute(3))
                    .and(Window::per_hour(100))
                    .algorithm(algorithm),
            ),
        )
        .header_style(style)
        .build()
        .unwrap()
}

#[tokio::test]
async fn ietf_refusal_reports_each_window_its_own_remaining_and_when_more_comes() {
    // GCRA: the minute earns a request back every 20 s, the hour every 36 s.
    let h = Harness::new(minute_and_hour(HeaderStyle::Ietf, Algorithm::Gcra));
    let first = h.get().await;
    assert_eq!(
        value(&first, "ratelimit"),
        Some(r#""per_key.minute";r=2;t=20, "per_key.hour";r=99;t=36"#)
    );
    h.spend(2, "GET", "/v1/calls").await;

    // The minute refuses: it has nothing and admits again in 20 s; the hour
    // was not charged and still has 97, the oldest back in 36 s.
    let refused = h.get().await;
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(retry_after(&refused), Some(20));
    assert_eq!(
        value(&refused, "ratelimit-policy"),
        Some(r#""per_key.minute";q=3;w=60, "per_key.hour";q=100;w=3600"#)
    );
    assert_eq!(
        value(&refused, "ratelimit"),
        Some(r#""per_key.minute";r=0;t=20, "per_key.hour";r=97;t=36"#)
    );

    // A second later, refused again, and still nothing charged.
    h.advance(Duration::from_secs(1));
    let again = h.get().await;
    assert_eq!(again.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(retry_after(&again), Some(19));
    assert_eq!(
        value(&again, "ratelimit"),
        Some(r#""per_key.minute";r=0;t=19, "per_key.hour";r=97;t=35"#)
    );

    // A second before the minute's `t` it still refuses; at its `t` it
    // admits. The hour then holds 3.44 requests: 96 left, the oldest back
    // in 16 s.
    h.advance(Duration::from_secs(18));
    assert_eq!(h.get().await.status(), StatusCode::TOO_MANY_REQUESTS);
    h.advance(Duration::from_secs(1));
    let admitted = h.get().await;
    assert_eq!(admitted.status(), StatusCode::OK);
    assert_eq!(
        value(&admitted, "ratelimit"),
        Some(r#""per_key.minute";r=0;t=20, "per_key.hour";r=96;t=16"#)
    );
    assert_eq!(h.calls(), 4);
}

#[tokio::test]
async fn ietf_refusal_by_a_fixed_minute_reports_the_hour_and_the_ends_of_both_windows() {
    // T0 is 20 s into a minute and 800 s into an hour.
    let h = Harness::new(minute_and_hour(HeaderStyle::Both, Algorithm::FixedWindow));
    let first = h.get().await;
    assert_eq!(
        value(&first, "ratelimit"),
        Some(r#""per_key.minute";r=2;t=40, "per_key.hour";r=99;t=2800"#)
    );
    h.spend(2, "GET", "/v1/calls").await;
    let refused = h.get().await;
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(retry_after(&refused), Some(40));
    assert_eq!(
        value(&refused, "ratelimit"),
        Some(r#""per_key.minute";r=0;t=40, "per_key.hour";r=97;t=2800"#)
    );
    // The single-window trio keeps its promise: the window that refused,
    // nothing left, until the retry.
    assert_eq!(trio(&refused), (3, 0, T0 + 40));
}

#[tokio::test]
async fn ietf_window_with_nothing_used_reports_its_whole_quota_and_no_reset() {
    let policy = Policy::builder()
        .limit(Limit::new("per_key", api_key()).quota(Quota::new(Window::per_minute(1))))
        .limit(Limit::new("per_call", PathCapture::new("call_id")).route(
            "POST /v1/calls/{call_id}/control",
            Quota::new(Window::per_minute(10)),
        ))
        .header_style(HeaderStyle::Ietf)
        .build()
        .unwrap();
    let h = Harness::new(policy);
    let first = h.send("POST", "/v1/calls/c1/control", "k").await;
    assert_eq!(first.status(), StatusCode::OK);
    // The key's minute refuses; call c2's minute was never charged: all 10
    // are left and no more is to come, so it has no `t`.
    let refused = h.send("POST", "/v1/calls/c2/control", "k").await;
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(retry_after(&refused), Some(60));
    assert_eq!(
        value(&refused, "ratelimit"),
        Some(r#""per_key.minute";r=0;t=60, "per_call.minute";r=10"#)
    );
}

// ---------------------------------------------------------------------------
// The draft-7 style: `RateLimit: limit=…, remaining=…, reset=…` and
// `RateLimit-Policy: …;w=…` for the reported window.

fn sf_integer(item: &sfv::Item, what: &str) -> u64 {
    assert!(
        item.params.is_empty(),
        "{what}: parameters {:?}",
        item.params
    );
    let n = item
        .bare_item
        .as_integer()
        .unwrap_or_else(|| panic!("{what}: not an integer: {:?}", item.bare_item));
    u64::try_from(i64::from(n)).unwrap_or_else(|_| panic!("{what}: negative"))
}

/// Draft-7's `RateLimit`, read by a Structured Field Values parser (the
/// draft makes it a Dictionary of Integers): exactly the keys `limit`,
/// `remaining` and `reset`, in that order (as express-rate-limit sends
/// them). `(limit, remaining, reset)`.
fn draft7(response: &Res) -> (u64, u64, u64) {
    let text = value(response, "ratelimit")
        .unwrap_or_else(|| panic!("no RateLimit in {:?}", response.headers()));
    let dict: sfv::Dictionary = sfv::Parser::new(text)
        .parse()
        .unwrap_or_else(|e| panic!("RateLimit: {text}: {e}"));
    let keys: Vec<&str> = dict.keys().map(|k| k.as_str()).collect();
    assert_eq!(keys, ["limit", "remaining", "reset"], "{text}");
    let get = |key: &str| match &dict[key] {
        sfv::ListEntry::Item(item) => sf_integer(item, key),
        inner => panic!("{key}: an inner list: {inner:?}"),
    };
    (get("limit"), get("remaining"), get("reset"))
}

/// Draft-7's `RateLimit-Policy`, read by the same parser (a List of Items,
/// each an Integer quota with its window as the `w` parameter):
/// `(quota, w)` of each policy.
fn draft7_policy(response: &Res) -> Vec<(u64, u64)> {
    let text = value(response, "ratelimit-policy")
        .unwrap_or_else(|| panic!("no RateLimit-Policy in {:?}", response.headers()));
    let list: sfv::List = sfv::Parser::new(text)
        .parse()
        .unwrap_or_else(|e| panic!("RateLimit-Policy: {text}: {e}"));
    list.iter()
        .map(|entry| match entry {
            sfv::ListEntry::Item(item) => {
                let keys: Vec<&str> = item.params.keys().map(|k| k.as_str()).collect();
                assert_eq!(keys, ["w"], "{text}");
                let quota = item.bare_item.as_integer().expect("an integer quota");
                let w = item.params["w"].as_integer().expect("an integer window");
                (
                    u64::try_from(i64::from(quota)).unwrap(),
                    u64::try_from(i64::from(w)).unwrap(),
                )
            }
            inner => panic!("an inner list: {inner:?}"),
        })
        .collect()
}

fn draft7_single(quota: Quota) -> Policy {
    Policy::builder()
        .limit(Limit::new("per_key", api_key()).quota(quota))
        .header_style(HeaderStyle::Draft7)
        .build()
        .unwrap()
}

#[tokio::test]
async fn draft7_admitted_responses_report_limit_remaining_and_delta_seconds() {
    let h = Harness::new(draft7_single(Quota::new(Window::per_minute(60))));
    let first = h.get().await;
    assert_eq!(first.status(), StatusCode::OK);
    assert_eq!(
        value(&first, "ratelimit"),
        Some("limit=60, remaining=59, reset=1")
    );
    assert_eq!(value(&first, "ratelimit-policy"), Some("60;w=60"));
    assert_eq!(draft7(&first), (60, 59, 1));
    assert_eq!(draft7_policy(&first), [(60, 60)]);
    for name in [
        "x-ratelimit-limit",
        "x-ratelimit-remaining",
        "x-ratelimit-reset",
        "retry-after",
    ] {
        assert_eq!(value(&first, name), None, "{name}");
    }
    // The inner service's own headers are kept.
    assert_eq!(value(&first, "x-inner"), Some("kept"));

    // Half a second later: 58 left, full again in 1.5 s, rounded up.
    h.advance(Duration::from_millis(500));
    h.get().await;
    let third = h.get().await;
    assert_eq!(draft7(&third), (60, 57, 3));

    // A fixed window resets when it ends: T0 is 20 s into its minute.
    let h = Harness::new(draft7_single(fixed(Window::per_minute(60))));
    let first = h.get().await;
    assert_eq!(
        value(&first, "ratelimit"),
        Some("limit=60, remaining=59, reset=40")
    );
    assert_eq!(value(&first, "ratelimit-policy"), Some("60;w=60"));
}

#[tokio::test]
async fn draft7_refusal_reports_nothing_left_and_a_reset_no_earlier_than_retry_after() {
    // A fixed 3/minute and 100/hour; T0 is 20 s into the minute.
    let h = Harness::new(minute_and_hour(HeaderStyle::Draft7, Algorithm::FixedWindow));
    h.spend(3, "GET", "/v1/calls").await;
    let refused = h.get().await;
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(retry_after(&refused), Some(40));
    assert_eq!(
        value(&refused, "ratelimit"),
        Some("limit=3, remaining=0, reset=40")
    );
    assert_eq!(value(&refused, "ratelimit-policy"), Some("3;w=60"));
    assert_eq!(draft7_policy(&refused), [(3, 60)]);

    // GCRA: the minute admits again in 20 s, but is full again only in a
    // minute; `reset` is when the window resets, after the retry.
    let h = Harness::new(minute_and_hour(HeaderStyle::Draft7, Algorithm::Gcra));
    h.spend(3, "GET", "/v1/calls").await;
    let refused = h.get().await;
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(retry_after(&refused), Some(20));
    assert_eq!(draft7(&refused), (3, 0, 60));
    assert!(draft7(&refused).2 >= retry_after(&refused).unwrap());
    assert_eq!(h.calls(), 3);
}

/// TalkPilot's limit in the draft-7 style; `report`: the reported period.
fn talkpilot_draft7(report: Option<Duration>) -> Policy {
    let builder = Policy::builder()
        .limit(
            Limit::new("per_key", api_key())
                .quota(fixed(Window::per_minute(60)).and(Window::per_hour(100))),
        )
        .header_style(HeaderStyle::Draft7);
    match report {
        Some(period) => builder.report_period(period),
        None => builder,
    }
    .build()
    .unwrap()
}

#[tokio::test]
async fn draft7_reports_the_most_restrictive_window_by_default() {
    let h = Harness::at(talkpilot_draft7(None), HOUR * NS);
    let first = h.get().await;
    // Minute: 59 left; hour: 99 left.
    assert_eq!(
        value(&first, "ratelimit"),
        Some("limit=60, remaining=59, reset=60")
    );
    assert_eq!(value(&first, "ratelimit-policy"), Some("60;w=60"));
    h.spend(59, "GET", "/v1/calls").await;
    h.set((HOUR + 60) * NS);
    // Minute: 59 left; hour: 39 left, and it ends in 3540 s.
    let later = h.get().await;
    assert_eq!(
        value(&later, "ratelimit"),
        Some("limit=100, remaining=39, reset=3540")
    );
    assert_eq!(value(&later, "ratelimit-policy"), Some("100;w=3600"));
}

#[tokio::test]
async fn draft7_reports_a_named_period_even_when_another_window_has_less_left() {
    let h = Harness::at(talkpilot_draft7(Some(Duration::from_secs(60))), HOUR * NS);
    h.spend(60, "GET", "/v1/calls").await;
    h.set((HOUR + 60) * NS);
    let admitted = h.get().await;
    assert_eq!(
        value(&admitted, "ratelimit"),
        Some("limit=60, remaining=59, reset=60")
    );
    h.spend(39, "GET", "/v1/calls").await;
    // The hour refuses; the minute is still reported, with nothing left and
    // a reset no earlier than the retry, as the X-RateLimit trio says.
    let refused = h.get().await;
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(retry_after(&refused), Some(3540));
    assert_eq!(
        value(&refused, "ratelimit"),
        Some("limit=60, remaining=0, reset=3540")
    );
    assert_eq!(value(&refused, "ratelimit-policy"), Some("60;w=60"));
}

/// A per-key limit of 7 a minute and 20 an hour by `algorithm`, stacked with
/// a per-call limit of 2 a second and 5 a minute on call control, in
/// `style`; the reported window the most restrictive (`None`) or a period's.
fn stacked(report: Option<Duration>, algorithm: Algorithm, style: HeaderStyle) -> Policy {
    let builder = Policy::builder()
        .limit(
            Limit::new("per_key", api_key()).quota(
                Quota::new(Window::per_minute(7))
                    .and(Window::per_hour(20))
                    .algorithm(algorithm),
            ),
        )
        .limit(Limit::new("per_call", PathCapture::new("call_id")).route(
            "POST /v1/calls/{call_id}/control",
            Quota::new(Window::per_second(2)).and(Window::per_minute(5)),
        ))
        .header_style(style);
    match report {
        Some(period) => builder.report_period(period),
        None => builder.report_most_restrictive(),
    }
    .build()
    .unwrap()
}

/// Draft-7's `RateLimit` says what the `X-RateLimit-*` trio says, with the
/// reset in seconds from now rather than a Unix time: for every reporting
/// choice and algorithm, with stacked limits, through admissions and
/// refusals.
#[tokio::test]
async fn draft7_values_are_the_trios() {
    for report in [
        None,
        Some(Duration::from_secs(60)),
        Some(Duration::from_secs(3600)),
    ] {
        for algorithm in [Algorithm::Gcra, Algorithm::FixedWindow] {
            let x = Harness::with(
                RateLimitLayer::new(stacked(report, algorithm, HeaderStyle::XRateLimit))
                    .current_decision(false),
                T0 * NS,
            );
            let d7 = Harness::new(stacked(report, algorithm, HeaderStyle::Draft7));
            let mut now = T0 * NS;
            let mut refused = 0;
            for step in 0..60u64 {
                let (method, path) = if step % 3 == 0 {
                    ("POST", "/v1/calls/c1/control")
                } else {
                    ("GET", "/v1/calls")
                };
                let a = x.send(method, path, "k").await;
                let b = d7.send(method, path, "k").await;
                let at = format!("{report:?} {algorithm:?} step {step}");
                assert_eq!(a.status(), b.status(), "{at}");
                assert_eq!(retry_after(&a), retry_after(&b), "{at}");
                let (limit, remaining, reset_at) = trio(&a);
                let (d7_limit, d7_remaining, reset) = draft7(&b);
                assert_eq!((d7_limit, d7_remaining), (limit, remaining), "{at}");
                // Both round up, from the nanosecond: the same moment, to
                // within the second `now` is in.
                assert!(
                    (reset_at - now.div_ceil(NS)..=reset_at - now / NS).contains(&reset),
                    "{at}: reset {reset}, X-RateLimit-Reset {reset_at} at {now} ns"
                );
                if let Some(wait) = retry_after(&b) {
                    assert!(reset >= wait, "{at}");
                    assert_eq!(remaining, 0, "{at}");
                    refused += 1;
                }
                let policy = draft7_policy(&b);
                assert_eq!(policy.len(), 1, "{at}");
                assert_eq!(policy[0].0, limit, "{at}");
                assert!([1, 60, 3600].contains(&policy[0].1), "{at}");
                let gap = Duration::from_millis(250 + step * 37 % 900);
                x.advance(gap);
                d7.advance(gap);
                now += gap.as_nanos() as u64;
            }
            assert!(refused > 0, "{report:?} {algorithm:?}: no refusal seen");
        }
    }
}

/// An in-flight cap, reported only when it is all that applies or when it
/// refused: draft-7 has no unit for concurrency, so it is `limit` the cap
/// and `remaining` the free slots, `reset` 0 while slots are free (one may
/// free at any moment) or the busy `Retry-After`, and no
/// `RateLimit-Policy` (a cap has no window).
#[tokio::test(start_paused = true)]
async fn draft7_reports_an_in_flight_cap_as_limit_and_free_slots() {
    let policy = Policy::builder()
        .limit(Limit::new("calls", api_key()).route("POST /v1/calls", Quota::in_flight(2)))
        .limit(Limit::new("per_key", api_key()).route(
            "POST /v1/numbers",
            Quota::new(Window::per_minute(5)).max_in_flight(1),
        ))
        .header_style(HeaderStyle::Draft7)
        .busy_retry_after(Duration::from_millis(2500))
        .build()
        .unwrap();
    let layer = RateLimitLayer::new(policy)
        .decision_extensions(true)
        .clock(ManualClock::at_unix_secs(T0));
    let gate = Gate::new();
    let svc = gate.behind(&layer);
    let post = |path: &str| {
        Request::post(path)
            .header("x-api-key", "k")
            .header("x-hold", "1")
            .body(String::new())
            .unwrap()
    };
    let mut first = start(&svc, post("/v1/calls"));
    still_waiting(&mut first).await;
    let mut second = start(&svc, post("/v1/calls"));
    still_waiting(&mut second).await;
    assert_eq!(gate.inside(), 2);
    let mut third = start(&svc, post("/v1/calls"));
    let busy = answered_at_once(&mut third).await;
    assert_eq!(busy.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(retry_after(&busy), Some(3));
    assert_eq!(
        value(&busy, "ratelimit"),
        Some("limit=2, remaining=0, reset=3")
    );
    assert_eq!(draft7(&busy), (2, 0, 3));
    assert_eq!(value(&busy, "ratelimit-policy"), None);

    gate.open(2);
    let (first, second) = (first.await, second.await);
    assert_eq!(first.status(), StatusCode::OK);
    assert_eq!(
        value(&first, "ratelimit"),
        Some("limit=2, remaining=1, reset=0")
    );
    assert_eq!(
        value(&second, "ratelimit"),
        Some("limit=2, remaining=0, reset=0")
    );
    assert_eq!(draft7(&second), (2, 0, 0));
    assert_eq!(value(&second, "ratelimit-policy"), None);

    // A window and a cap: the window is reported, and the cap is not.
    let mut numbers = start(&svc, post("/v1/numbers"));
    still_waiting(&mut numbers).await;
    gate.open(1);
    let numbers = numbers.await;
    assert_eq!(numbers.status(), StatusCode::OK);
    assert_eq!(
        value(&numbers, "ratelimit"),
        Some("limit=5, remaining=4, reset=12")
    );
    assert_eq!(value(&numbers, "ratelimit-policy"), Some("5;w=60"));
}

const RATE_LIMIT_HEADERS: [&str; 6] = [
    "x-ratelimit-limit",
    "x-ratelimit-remaining",
    "x-ratelimit-reset",
    "ratelimit",
    "ratelimit-policy",
    "retry-after",
];

async fn error_code(response: Res) -> String {
    let body = response.into_body().collect().await.unwrap().to_bytes();
    let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
    json["error"]["code"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn a_rejected_key_gets_no_rate_limit_headers_in_any_style() {
    for style in [
        HeaderStyle::XRateLimit,
        HeaderStyle::Ietf,
        HeaderStyle::Both,
        HeaderStyle::Draft7,
    ] {
        let h = Harness::new(
            Policy::builder()
                .limit(Limit::new("per_key", api_key()).quota(Quota::new(Window::per_minute(60))))
                .header_style(style)
                .build()
                .unwrap(),
        );
        let missing = Request::get("/v1/calls").body(String::new()).unwrap();
        let empty = Request::get("/v1/calls")
            .header("x-api-key", "")
            .body(String::new())
            .unwrap();
        let conflicting = Request::get("/v1/calls")
            .header("x-api-key", "k_1")
            .header("x-api-key", "k_2")
            .body(String::new())
            .unwrap();
        for (request, code) in [
            (missing, "missing_key"),
            (empty, "empty_key"),
            (conflicting, "conflicting_keys"),
        ] {
            let response = h.svc.clone().oneshot(request).await.unwrap();
            assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "{style:?}");
            for name in RATE_LIMIT_HEADERS {
                assert_eq!(value(&response, name), None, "{style:?} {code}: {name}");
            }
            assert_eq!(error_code(response).await, code, "{style:?}");
        }
        assert_eq!(h.calls(), 0, "{style:?}");
    }
}

#[tokio::test]
async fn a_key_rejected_by_one_limit_is_counted_and_reported_by_none() {
    let h = Harness::new(
        Policy::builder()
            .limit(Limit::global("global").quota(Quota::new(Window::per_minute(100))))
            .limit(Limit::new("per_key", api_key()).quota(Quota::new(Window::per_minute(60))))
            .header_style(HeaderStyle::Both)
            .build()
            .unwrap(),
    );
    for _ in 0..3 {
        let request = Request::get("/v1/calls").body(String::new()).unwrap();
        let response = h.svc.clone().oneshot(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        for name in RATE_LIMIT_HEADERS {
            assert_eq!(value(&response, name), None, "{name}");
        }
    }
    // The global limit applied to those requests but counted none of them.
    let keyed = h.get().await;
    assert_eq!(keyed.status(), StatusCode::OK);
    assert_eq!(trio(&keyed), (60, 59, T0 + 1));
    assert_eq!(
        value(&keyed, "ratelimit"),
        Some(r#""global.minute";r=99;t=1, "per_key.minute";r=59;t=1"#)
    );
}

#[tokio::test]
async fn the_inner_service_headers_and_body_are_kept() {
    let h = Harness::new(single(Quota::new(Window::per_minute(60))));
    let response = h.get().await;
    assert_eq!(value(&response, "x-inner"), Some("kept"));
    assert_eq!(value(&response, "content-type"), Some("text/plain"));
    assert_eq!(value(&response, "cache-control"), Some("no-store"));
    assert_eq!(trio(&response), (60, 59, T0 + 1));
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], b"inner body");
}

#[tokio::test]
async fn a_refusal_carries_the_headers_and_a_json_body_with_the_same_wait() {
    let h = Harness::new(single(Quota::new(Window::per_minute(2))));
    h.spend(2, "GET", "/v1/calls").await;
    let refused = h.get().await;
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(trio(&refused), (2, 0, T0 + 60));
    assert_eq!(retry_after(&refused), Some(30));
    assert_eq!(value(&refused, "content-type"), Some("application/json"));
    assert_eq!(
        value(&refused, "x-inner"),
        None,
        "the inner service was not called"
    );
    let body = refused.into_body().collect().await.unwrap().to_bytes();
    let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(json["error"]["retry_after"], 30);
    assert_eq!(h.calls(), 2);
}

#[tokio::test]
async fn the_decision_is_in_the_request_and_response_extensions() {
    let h = Harness::new(single(
        Quota::new(Window::per_minute(2)).and(Window::per_hour(10)),
    ));
    let response = h.get().await;
    let decision = response
        .extensions()
        .get::<Decision>()
        .expect("in the response")
        .clone();
    assert!(decision.is_admitted());
    assert_eq!(decision.retry_after(), None);
    assert_eq!(decision.refusal(), None);
    let reported = decision.reported().unwrap();
    assert_eq!(
        (reported.limit, reported.remaining, reported.reset),
        trio_u32(&response)
    );
    assert_eq!(decision.windows().len(), 2);
    assert_eq!(
        decision
            .windows()
            .iter()
            .map(|w| (w.limit, w.remaining, w.period))
            .collect::<Vec<_>>(),
        [(2, 1, 60), (10, 9, 3600)]
    );
    let seen = h.seen.lock().unwrap().clone();
    assert_eq!(
        seen,
        [Some(decision)],
        "the inner service saw the same decision"
    );

    h.spend(1, "GET", "/v1/calls").await;
    let refused = h.get().await;
    let decision = refused
        .extensions()
        .get::<Decision>()
        .expect("in a refusal");
    assert!(!decision.is_admitted());
    assert_eq!(decision.refusal(), Some(RefusalReason::Window));
    assert_eq!(decision.retry_after(), Some(30));
    assert_eq!(decision.retry_after(), retry_after(&refused));
    assert_eq!(
        h.seen.lock().unwrap().len(),
        2,
        "a refusal never reaches the inner service"
    );
}

fn trio_u32(response: &Res) -> (u32, u32, u64) {
    let (limit, remaining, reset) = trio(response);
    (limit as u32, remaining as u32, reset)
}

#[tokio::test]
async fn decision_extensions_can_be_turned_off() {
    let layer =
        RateLimitLayer::new(single(Quota::new(Window::per_minute(1)))).decision_extensions(false);
    let h = Harness::with(layer, T0 * NS);
    let admitted = h.get().await;
    assert_eq!(admitted.status(), StatusCode::OK);
    assert!(admitted.extensions().get::<Decision>().is_none());
    assert_eq!(trio(&admitted), (1, 0, T0 + 60), "headers are still sent");
    let refused = h.get().await;
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(refused.extensions().get::<Decision>().is_none());
    assert_eq!(*h.seen.lock().unwrap(), [None]);
}

#[tokio::test]
async fn requests_that_match_no_limit_pass_untouched() {
    let policy = Policy::builder()
        .limit(
            Limit::new("per_key", api_key())
                .route("POST /v1/calls", Quota::new(Window::per_minute(1))),
        )
        .header_style(HeaderStyle::Both)
        .build()
        .unwrap();
    let h = Harness::new(policy);
    for _ in 0..5 {
        // No key at all: no limit applies, so no 401 either.
        let request = Request::get("/health").body(String::new()).unwrap();
        let response = h.svc.clone().oneshot(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        for name in [
            "x-ratelimit-limit",
            "x-ratelimit-remaining",
            "x-ratelimit-reset",
            "ratelimit",
            "ratelimit-policy",
            "retry-after",
        ] {
            assert_eq!(value(&response, name), None, "{name}");
        }
        assert_eq!(value(&response, "x-inner"), Some("kept"));
        let decision = response.extensions().get::<Decision>().unwrap();
        assert_eq!(decision.basis(), tower_ratelimit::Basis::Uncounted);
        assert!(decision.is_admitted() && decision.windows().is_empty());
        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&body[..], b"inner body");
    }
    assert_eq!(h.calls(), 5);
    // The inner service saw the same decision in the request.
    let seen = h.seen.lock().unwrap();
    assert_eq!(seen.len(), 5);
    assert!(seen
        .iter()
        .all(|d| d.as_ref().map(Decision::basis) == Some(tower_ratelimit::Basis::Uncounted)));
}

/// When nothing reads the decision (no extensions, not current), admitted
/// requests take a shorter path that builds only the reported window; its headers must be exactly those of
/// the full decision, for every reporting choice and algorithm, with stacked
/// limits and several windows, through admissions and refusals.
#[tokio::test]
async fn headers_are_the_same_with_or_without_the_decision_extensions() {
    for report in [
        None,
        Some(Duration::from_secs(60)),
        Some(Duration::from_secs(3600)),
    ] {
        for algorithm in [Algorithm::Gcra, Algorithm::FixedWindow] {
            let full = Harness::new(stacked(report, algorithm, HeaderStyle::XRateLimit));
            let lean = Harness::with(
                RateLimitLayer::new(stacked(report, algorithm, HeaderStyle::XRateLimit))
                    .current_decision(false),
                T0 * NS,
            );
            for step in 0..60u64 {
                let (method, path) = if step % 3 == 0 {
                    ("POST", "/v1/calls/c1/control")
                } else {
                    ("GET", "/v1/calls")
                };
                let a = full.send(method, path, "k").await;
                let b = lean.send(method, path, "k").await;
                assert_eq!(
                    a.status(),
                    b.status(),
                    "{report:?} {algorithm:?} step {step}"
                );
                for name in [
                    "x-ratelimit-limit",
                    "x-ratelimit-remaining",
                    "x-ratelimit-reset",
                    "retry-after",
                ] {
                    assert_eq!(
                        value(&a, name),
                        value(&b, name),
                        "{name}: {report:?} {algorithm:?} step {step}"
                    );
                }
                assert!(b.extensions().get::<Decision>().is_none());
                let gap = Duration::from_millis(250 + step * 37 % 900);
                full.advance(gap);
                lean.advance(gap);
            }
        }
    }
}
