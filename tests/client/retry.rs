//! `RetryPolicy` under `tower::retry`, against the crate's own layer and
//! against services that answer with each kind of hint.

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{Method, Request, Response, StatusCode};
use tower::retry::budget::TpsBudget;
use tower::retry::RetryLayer;
use tower::{service_fn, Layer, Service, ServiceBuilder, ServiceExt};
use tower_ratelimit::client::{Hint, Pacer, RetryPolicy, Wait};
use tower_ratelimit::clock::ManualClock;
use tower_ratelimit::key::Header;
use tower_ratelimit::{Limit, Policy, Quota, RateLimitLayer, Window};

/// `(name, value)` headers of a canned response.
type Headers = &'static [(&'static str, &'static str)];

/// A service that answers `status` with `headers` (a name given twice is
/// two lines) to its first `refusals` requests, then 200; and how many
/// requests it got.
fn refusing(
    refusals: usize,
    status: StatusCode,
    headers: Headers,
) -> (
    impl Service<Request<String>, Response = Response<String>, Error = Infallible, Future: Send> + Clone,
    Arc<AtomicUsize>,
) {
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&calls);
    let service = service_fn(move |_request: Request<String>| {
        let n = counted.fetch_add(1, Ordering::SeqCst);
        async move {
            let mut response = Response::new(String::new());
            if n < refusals {
                *response.status_mut() = status;
                for (name, value) in headers {
                    response.headers_mut().append(*name, value.parse().unwrap());
                }
            }
            Ok::<_, Infallible>(response)
        }
    });
    (service, calls)
}

fn get() -> Request<String> {
    Request::get("/v1/calls")
        .header("x-api-key", "k_1")
        .body(String::new())
        .unwrap()
}

/// Sends `request` through `policy` around `service`: the response, and
/// the (paused) time it took.
async fn retried<S>(
    policy: RetryPolicy,
    service: S,
    request: Request<String>,
) -> (Response<String>, Duration)
where
    S: Service<Request<String>, Response = Response<String>, Error = Infallible> + Clone,
{
    let start = tokio::time::Instant::now();
    let response = RetryLayer::new(policy)
        .layer(service)
        .oneshot(request)
        .await
        .unwrap();
    (response, start.elapsed())
}

fn waits<B>(response: &Response<B>) -> Vec<Wait> {
    response
        .extensions()
        .get::<Vec<Wait>>()
        .cloned()
        .unwrap_or_default()
}

#[tokio::test(start_paused = true)]
async fn a_retry_waits_the_layers_retry_after_then_succeeds() {
    // 1 request per 2 s per key: the second is told to retry after 2 s.
    let policy = Policy::builder()
        .limit(
            Limit::new("per_key", Header::parse("X-API-Key").unwrap())
                .quota(Quota::new(Window::new(1, Duration::from_secs(2)).unwrap())),
        )
        .build()
        .unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&calls);
    let client = ServiceBuilder::new()
        .layer(RetryLayer::new(RetryPolicy::new()))
        .layer(RateLimitLayer::new(policy))
        .service(service_fn(move |_request: Request<String>| {
            counted.fetch_add(1, Ordering::SeqCst);
            async { Ok::<_, Infallible>(Response::new(String::from("ok"))) }
        }));
    let start = tokio::time::Instant::now();
    let first = client.clone().oneshot(get()).await.unwrap();
    assert_eq!(first.status(), StatusCode::OK);
    let second = client.oneshot(get()).await.unwrap();
    assert_eq!(second.status(), StatusCode::OK);
    assert_eq!(start.elapsed(), Duration::from_secs(2));
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    assert_eq!(
        waits(&second),
        [Wait {
            status: StatusCode::TOO_MANY_REQUESTS,
            delay: Duration::from_secs(2),
            hint: Hint::RetryAfter,
        }]
    );
}

#[tokio::test(start_paused = true)]
async fn without_retry_after_the_ietf_t_then_x_ratelimit_reset_are_honoured() {
    let (service, calls) = refusing(
        1,
        StatusCode::TOO_MANY_REQUESTS,
        &[
            (
                "ratelimit",
                "\"per_key.minute\";r=0;t=4, \"per_key.hour\";r=9;t=30",
            ),
            ("x-ratelimit-reset", "9"),
        ],
    );
    let (response, took) = retried(RetryPolicy::new(), service, get()).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(took, Duration::from_secs(4));
    assert_eq!(waits(&response)[0].hint, Hint::RateLimit);
    assert_eq!(calls.load(Ordering::SeqCst), 2);

    // A Unix-time reset, against the policy's clock.
    let (service, _) = refusing(
        1,
        StatusCode::TOO_MANY_REQUESTS,
        &[("x-ratelimit-reset", "1700000003")],
    );
    let policy = RetryPolicy::new().clock(ManualClock::at_unix_secs(1_700_000_000));
    let (response, took) = retried(policy, service, get()).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(took, Duration::from_secs(3));
    assert_eq!(waits(&response)[0].hint, Hint::XRateLimitReset);
}

#[tokio::test(start_paused = true)]
async fn an_http_date_retry_after_is_read_against_the_clock() {
    // 1_700_000_000 is Tue, 14 Nov 2023 22:13:20 GMT.
    let (service, _) = refusing(
        1,
        StatusCode::SERVICE_UNAVAILABLE,
        &[("retry-after", "Tue, 14 Nov 2023 22:13:25 GMT")],
    );
    let policy = RetryPolicy::new().clock(ManualClock::at_unix_secs(1_700_000_000));
    let (response, took) = retried(policy, service, get()).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(took, Duration::from_secs(5));
}

#[tokio::test(start_paused = true)]
async fn without_a_hint_each_backoff_is_within_full_jitter_bounds() {
    let base = Duration::from_millis(100);
    let max = Duration::from_millis(1_000);
    let mut longest = [Duration::ZERO; 6];
    for seed in 0..200 {
        let (service, calls) = refusing(usize::MAX, StatusCode::SERVICE_UNAVAILABLE, &[]);
        let policy = RetryPolicy::new()
            .max_retries(6)
            .backoff(base, max)
            .budget(TpsBudget::new(Duration::from_secs(1), 1_000_000, 1000.0))
            .seed(seed);
        let (response, took) = retried(policy, service, get()).await;
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(calls.load(Ordering::SeqCst), 7);
        let waits = waits(&response);
        assert_eq!(waits.len(), 6);
        let mut total = Duration::ZERO;
        for (n, wait) in waits.iter().enumerate() {
            assert_eq!(wait.hint, Hint::Backoff);
            let ceiling = (base * 2u32.pow(n as u32)).min(max);
            assert!(
                wait.delay <= ceiling,
                "retry {n}: {:?} > {ceiling:?}",
                wait.delay
            );
            longest[n] = longest[n].max(wait.delay);
            total += wait.delay;
        }
        // Tokio's timers round each wait up to the next millisecond.
        assert!(took >= total && took <= total + Duration::from_millis(6));
    }
    // Over 200 seeds, the jitter spans its range: some wait is near each ceiling.
    for (n, longest) in longest.iter().enumerate() {
        let ceiling = (base * 2u32.pow(n as u32)).min(max);
        assert!(
            *longest >= ceiling * 9 / 10,
            "retry {n}: longest {longest:?}"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn policies_configured_from_one_draw_different_waits() {
    // Two clients configured from one base policy retry at different
    // moments, not in lockstep: they share its random source.
    let base = RetryPolicy::new()
        .budget(TpsBudget::new(Duration::from_secs(1), 1_000_000, 1000.0))
        .seed(7);
    let drawn = |policy: RetryPolicy| async move {
        let (service, _) = refusing(usize::MAX, StatusCode::SERVICE_UNAVAILABLE, &[]);
        let (response, _) = retried(policy, service, get()).await;
        waits(&response).iter().map(|w| w.delay).collect::<Vec<_>>()
    };
    let a = drawn(base.clone().max_retries(5)).await;
    let b = drawn(base.clone().max_retries(5)).await;
    assert_eq!((a.len(), b.len()), (5, 5));
    assert_ne!(a, b);
}

#[tokio::test(start_paused = true)]
async fn retries_stop_at_the_cap_and_return_the_last_response() {
    let (service, calls) = refusing(
        usize::MAX,
        StatusCode::TOO_MANY_REQUESTS,
        &[("retry-after", "1")],
    );
    let (response, took) = retried(RetryPolicy::new().max_retries(2), service, get()).await;
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(calls.load(Ordering::SeqCst), 3);
    assert_eq!(took, Duration::from_secs(2));
    assert_eq!(waits(&response).len(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_spent_budget_returns_the_429() {
    // A reserve of one retry and nothing earned by requests.
    let (service, calls) = refusing(
        usize::MAX,
        StatusCode::TOO_MANY_REQUESTS,
        &[("retry-after", "1")],
    );
    let policy =
        RetryPolicy::new()
            .max_retries(5)
            .budget(TpsBudget::new(Duration::from_secs(1), 1, 0.0));
    let client = RetryLayer::new(policy).layer(service);
    let first = client.clone().oneshot(get()).await.unwrap();
    assert_eq!(first.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    let second = client.oneshot(get()).await.unwrap();
    assert_eq!(second.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(calls.load(Ordering::SeqCst), 3);
}

#[tokio::test(start_paused = true)]
async fn post_is_not_retried_unless_allowed() {
    let post = || {
        Request::builder()
            .method(Method::POST)
            .uri("/v1/calls")
            .body(String::from("{}"))
            .unwrap()
    };
    let (service, calls) = refusing(1, StatusCode::TOO_MANY_REQUESTS, &[("retry-after", "1")]);
    let response = RetryLayer::new(RetryPolicy::new())
        .layer(service)
        .oneshot(post())
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(calls.load(Ordering::SeqCst), 1);

    let (service, calls) = refusing(1, StatusCode::TOO_MANY_REQUESTS, &[("retry-after", "1")]);
    let response = RetryLayer::new(RetryPolicy::new().retry_non_idempotent(true))
        .layer(service)
        .oneshot(post())
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

#[tokio::test(start_paused = true)]
async fn a_wait_past_max_wait_is_not_honoured() {
    // A number of seconds too large for a u64 is longer still, not noise.
    let hints: [Headers; 2] = [
        &[("retry-after", "86400")],
        &[("retry-after", "99999999999999999999")],
    ];
    for headers in hints {
        let after = headers[0].1;
        let (service, calls) = refusing(1, StatusCode::TOO_MANY_REQUESTS, headers);
        let (response, took) = retried(
            RetryPolicy::new().max_wait(Duration::from_secs(60)),
            service,
            get(),
        )
        .await;
        assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(response.headers()["retry-after"], after);
        assert_eq!(calls.load(Ordering::SeqCst), 1, "{after}");
        assert_eq!(took, Duration::ZERO);
        assert!(waits(&response).is_empty());
    }
}

/// A paused-time wait of `delay`: Tokio's timers round it up to the next
/// millisecond.
fn slept(delay: Duration) -> Duration {
    Duration::from_millis(delay.as_nanos().div_ceil(1_000_000) as u64)
}

#[tokio::test(start_paused = true)]
async fn a_reset_of_a_window_with_room_left_is_no_hint() {
    // A 503 from a server that sends its rate-limit headers on every
    // response: the window resets in 2800 s but has 999 requests left.
    let room_left: [Headers; 2] = [
        &[
            ("x-ratelimit-remaining", "999"),
            ("x-ratelimit-reset", "1700002800"),
        ],
        &[("ratelimit", "limit=1000, remaining=5, reset=2800")],
    ];
    for headers in room_left {
        let (service, calls) = refusing(1, StatusCode::SERVICE_UNAVAILABLE, headers);
        let policy = RetryPolicy::new()
            .seed(1)
            .clock(ManualClock::at_unix_secs(1_700_000_000));
        let (response, took) = retried(policy, service, get()).await;
        assert_eq!(response.status(), StatusCode::OK, "{headers:?}");
        assert_eq!(calls.load(Ordering::SeqCst), 2);
        let waits = waits(&response);
        assert_eq!(waits.len(), 1);
        assert_eq!(waits[0].hint, Hint::Backoff);
        assert!(waits[0].delay <= Duration::from_millis(100), "{waits:?}");
        assert_eq!(took, slept(waits[0].delay));
    }

    // Nothing left: the reset is waited for.
    let empty: [(Headers, Hint); 2] = [
        (
            &[
                ("x-ratelimit-remaining", "0"),
                ("x-ratelimit-reset", "1700000003"),
            ],
            Hint::XRateLimitReset,
        ),
        (
            &[("ratelimit", "limit=1000, remaining=0, reset=3")],
            Hint::RateLimit,
        ),
    ];
    for (headers, hint) in empty {
        let (service, calls) = refusing(1, StatusCode::TOO_MANY_REQUESTS, headers);
        let policy = RetryPolicy::new().clock(ManualClock::at_unix_secs(1_700_000_000));
        let (response, took) = retried(policy, service, get()).await;
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(calls.load(Ordering::SeqCst), 2);
        assert_eq!(took, Duration::from_secs(3));
        assert_eq!(
            waits(&response),
            [Wait {
                status: StatusCode::TOO_MANY_REQUESTS,
                delay: Duration::from_secs(3),
                hint,
            }]
        );
    }
}

/// The account a request is sent for, as a request extension.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Account(&'static str);

/// When each request was sent (ms), and the account it carried.
type Sent = Arc<Mutex<Vec<(u64, Option<Account>)>>>;

#[tokio::test(start_paused = true)]
async fn a_retry_carries_the_requests_extensions_and_is_paced_by_them() {
    // One request per 10 s per account, read from an extension; the server
    // refuses the first with `Retry-After: 1`.
    let window = Window::new(1, Duration::from_secs(10)).unwrap();
    let pacer = Pacer::new(Quota::new(window)).unwrap();
    let sent: Sent = Arc::default();
    let log = Arc::clone(&sent);
    let start = tokio::time::Instant::now();
    let (refuse, _) = refusing(1, StatusCode::TOO_MANY_REQUESTS, &[("retry-after", "1")]);
    let inner = service_fn(move |request: Request<String>| {
        let account = request.extensions().get::<Account>().cloned();
        log.lock()
            .unwrap()
            .push((start.elapsed().as_millis() as u64, account));
        refuse.clone().oneshot(request)
    });
    let client = ServiceBuilder::new()
        .layer(RetryLayer::new(RetryPolicy::new()))
        .layer(pacer.layer(|request: &Request<String>| {
            let account = request.extensions().get::<Account>()?;
            Some(account.0.to_owned())
        }))
        .service(inner);
    let mut request = get();
    request.extensions_mut().insert(Account("acct_1"));
    let response = client.oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        waits(&response),
        [Wait {
            status: StatusCode::TOO_MANY_REQUESTS,
            delay: Duration::from_secs(1),
            hint: Hint::RetryAfter,
        }]
    );
    // The retry, ready at 1 s, waits for the account's next turn at 10 s.
    let account = Some(Account("acct_1"));
    assert_eq!(
        *sent.lock().unwrap(),
        [(0, account.clone()), (10_000, account)]
    );
}

#[tokio::test(start_paused = true)]
async fn a_hint_of_no_wait_is_replaced_by_the_backoff() {
    // 1_700_000_000 is Tue, 14 Nov 2023 22:13:20 GMT.
    let now: [Headers; 4] = [
        &[("retry-after", "0")],
        &[("retry-after", "Tue, 14 Nov 2023 22:13:00 GMT")],
        &[("x-ratelimit-reset", "1600000000")],
        &[("ratelimit", "\"a\";r=0;t=0")],
    ];
    let base = Duration::from_millis(100);
    for headers in now {
        let (service, calls) = refusing(usize::MAX, StatusCode::SERVICE_UNAVAILABLE, headers);
        let policy = RetryPolicy::new()
            .max_retries(3)
            .budget(TpsBudget::new(Duration::from_secs(1), 1_000_000, 1000.0))
            .clock(ManualClock::at_unix_secs(1_700_000_000))
            .seed(3);
        let (response, took) = retried(policy, service, get()).await;
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(calls.load(Ordering::SeqCst), 4);
        let waits = waits(&response);
        assert_eq!(waits.len(), 3, "{headers:?}");
        let mut total = Duration::ZERO;
        for (n, wait) in waits.iter().enumerate() {
            assert_eq!(wait.status, StatusCode::SERVICE_UNAVAILABLE);
            assert_eq!(wait.hint, Hint::Backoff, "{headers:?}");
            assert!(wait.delay <= base * 2u32.pow(n as u32), "{wait:?}");
            total += slept(wait.delay);
        }
        assert!(took > Duration::ZERO, "{headers:?}");
        assert_eq!(took, total);
    }
}

#[tokio::test(start_paused = true)]
async fn only_the_methods_rfc_9110_defines_as_idempotent_are_retried() {
    let request = |method: &str| {
        Request::builder()
            .method(Method::from_bytes(method.as_bytes()).unwrap())
            .uri("/v1/calls")
            .body(String::new())
            .unwrap()
    };
    let sends = |policy: RetryPolicy, method: &'static str| async move {
        let (service, calls) = refusing(1, StatusCode::TOO_MANY_REQUESTS, &[("retry-after", "1")]);
        retried(policy, service, request(method)).await;
        calls.load(Ordering::SeqCst)
    };
    for method in ["GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"] {
        assert_eq!(sends(RetryPolicy::new(), method).await, 2, "{method}");
    }
    // Methods are case-sensitive: `post` is an extension method.
    for method in ["POST", "PATCH", "CONNECT", "LOCK", "PURGE", "MKCOL", "post"] {
        assert_eq!(sends(RetryPolicy::new(), method).await, 1, "{method}");
        let anyway = RetryPolicy::new().retry_non_idempotent(true);
        assert_eq!(sends(anyway, method).await, 2, "{method}");
    }
}

#[tokio::test(start_paused = true)]
async fn the_longest_retry_after_of_every_line_is_the_hint() {
    // Two lines, in either order: 86400 s is past `max_wait`.
    let two: [Headers; 2] = [
        &[("retry-after", "1"), ("retry-after", "86400")],
        &[("retry-after", "86400"), ("retry-after", "1")],
    ];
    for headers in two {
        let (service, calls) = refusing(1, StatusCode::TOO_MANY_REQUESTS, headers);
        let (response, took) = retried(RetryPolicy::new(), service, get()).await;
        assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(calls.load(Ordering::SeqCst), 1, "{headers:?}");
        assert_eq!(took, Duration::ZERO);
    }
    // One folded line, and a line that cannot be read beside one that can.
    let longest_seven: [Headers; 2] = [
        &[("retry-after", "5, 7")],
        &[("retry-after", "soon"), ("retry-after", "7")],
    ];
    for headers in longest_seven {
        let (service, calls) = refusing(1, StatusCode::TOO_MANY_REQUESTS, headers);
        let (response, took) = retried(RetryPolicy::new(), service, get()).await;
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(calls.load(Ordering::SeqCst), 2);
        assert_eq!(took, Duration::from_secs(7), "{headers:?}");
        assert_eq!(waits(&response)[0].hint, Hint::RetryAfter);
    }
}
