//! `Pacer` and its layer under paused time: callers wait their turn, never
//! more than the quota, first come first served; a dropped waiter takes no
//! turn; the line and the wait are bounded.

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use http::{Request, Response};
use tower::limit::ConcurrencyLimitLayer;
use tower::{service_fn, Layer, Service, ServiceExt};
use tower_ratelimit::client::{PaceError, Pacer};
use tower_ratelimit::store::MemoryStore;
use tower_ratelimit::{ConfigErrorKind, Quota, Window};

use super::ms_since;

#[tokio::test(start_paused = true)]
async fn fifty_callers_are_admitted_at_the_quotas_pace_and_never_faster() {
    let pacer = Arc::new(Pacer::new(Quota::new(Window::per_second(5))).unwrap());
    let start = tokio::time::Instant::now();
    let tasks: Vec<_> = (0..50)
        .map(|_| {
            let pacer = Arc::clone(&pacer);
            tokio::spawn(async move {
                pacer.wait("k").await.unwrap();
                ms_since(start)
            })
        })
        .collect();
    let mut admitted = Vec::new();
    for task in tasks {
        admitted.push(task.await.unwrap());
    }
    admitted.sort_unstable();
    // GCRA at 5/s: the burst of 5, then one every 200 ms.
    let expected: Vec<u64> = [0; 4].into_iter().chain((0..46).map(|i| i * 200)).collect();
    assert_eq!(admitted, expected);
    // The quota's bound over every interval of a second: 5 + 1s / 200ms.
    for (i, &t) in admitted.iter().enumerate() {
        let within = admitted[i..].iter().take_while(|&&u| u < t + 1_000).count();
        assert!(within <= 10, "{within} admitted in [{t}, {t}+1000) ms");
    }
    // Another key has its own pace.
    tokio::time::timeout(Duration::ZERO, pacer.wait("other"))
        .await
        .expect("a fresh key is admitted at once")
        .unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_dropped_waiter_takes_no_turn() {
    let pacer = Arc::new(Pacer::new(Quota::new(Window::per_second(1))).unwrap());
    let start = tokio::time::Instant::now();
    pacer.wait("k").await.unwrap();
    let dropped = {
        let pacer = Arc::clone(&pacer);
        tokio::spawn(async move { pacer.wait("k").await })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    dropped.abort();
    assert!(dropped.await.unwrap_err().is_cancelled());
    // The next caller has the turn the dropped one would have had.
    pacer.wait("k").await.unwrap();
    assert_eq!(ms_since(start), 1_000);
    pacer.wait("k").await.unwrap();
    assert_eq!(ms_since(start), 2_000);
}

#[tokio::test(start_paused = true)]
async fn a_full_line_fails_at_once() {
    let pacer = Pacer::new(Quota::new(Window::new(1, Duration::from_secs(10)).unwrap()))
        .unwrap()
        .max_queue(2);
    let pacer = Arc::new(pacer);
    pacer.wait("k").await.unwrap();
    let waiting: Vec<_> = (0..2)
        .map(|_| {
            let pacer = Arc::clone(&pacer);
            tokio::spawn(async move { pacer.wait("k").await })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(1)).await;
    let start = tokio::time::Instant::now();
    let refused = pacer.wait("k").await.unwrap_err();
    assert!(
        matches!(refused, PaceError::QueueFull { max_queue: 2 }),
        "{refused:?}"
    );
    assert_eq!(ms_since(start), 0);
    assert_eq!(
        refused.to_string(),
        "2 callers already wait for this key's turn"
    );
    for task in waiting {
        task.await.unwrap().unwrap();
    }
    // The line is empty again: the next caller waits its turn.
    pacer.wait("k").await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_turn_past_max_wait_fails_without_waiting() {
    let pacer = Pacer::new(Quota::new(Window::new(1, Duration::from_secs(10)).unwrap()))
        .unwrap()
        .max_wait(Duration::from_secs(5));
    pacer.wait("k").await.unwrap();
    let start = tokio::time::Instant::now();
    let refused = pacer.wait("k").await.unwrap_err();
    assert!(
        matches!(refused, PaceError::TooLong { max_wait } if max_wait == Duration::from_secs(5)),
        "{refused:?}"
    );
    assert_eq!(ms_since(start), 0);
}

#[test]
fn a_pacer_needs_a_window() {
    let error = Pacer::new(Quota::in_flight(3)).unwrap_err();
    assert!(
        error.to_string().contains("a pacer needs a window"),
        "{error}"
    );
}

#[tokio::test(start_paused = true)]
async fn the_pace_layer_delays_each_keys_requests_and_leaves_unkeyed_ones() {
    let pacer = Pacer::new(Quota::new(Window::per_second(1))).unwrap();
    let sent: Arc<Mutex<Vec<(String, u64)>>> = Arc::default();
    let start = tokio::time::Instant::now();
    let log = Arc::clone(&sent);
    let client = pacer
        .layer(recipient)
        .layer(service_fn(move |request: Request<String>| {
            log.lock()
                .unwrap()
                .push((request.body().clone(), ms_since(start)));
            async { Ok::<_, Infallible>(Response::new(())) }
        }));
    let request = |to: Option<&str>, body: &str| {
        let mut builder = Request::get("/");
        if let Some(to) = to {
            builder = builder.header("x-to", to);
        }
        builder.body(body.to_owned()).unwrap()
    };
    let requests = [
        request(Some("a"), "a1"),
        request(Some("a"), "a2"),
        request(Some("b"), "b1"),
        request(Some("a"), "a3"),
        request(None, "none"),
    ];
    let calls = requests.map(|r| client.clone().oneshot(r));
    for result in futures::future::join_all(calls).await {
        result.unwrap();
    }
    let mut sent = sent.lock().unwrap().clone();
    sent.sort_by_key(|(body, at)| (*at, body.clone()));
    let expected = [
        ("a1", 0),
        ("b1", 0),
        ("none", 0),
        ("a2", 1_000),
        ("a3", 2_000),
    ];
    let expected: Vec<(String, u64)> = expected.iter().map(|(b, t)| (b.to_string(), *t)).collect();
    assert_eq!(sent, expected);
}

#[tokio::test(start_paused = true)]
async fn a_max_wait_of_duration_max_is_no_bound() {
    // One turn in 366 days: the second caller waits for it.
    let window = Window::new(1, Duration::from_secs(366 * 86_400)).unwrap();
    let pacer = Pacer::new(Quota::new(window))
        .unwrap()
        .max_wait(Duration::MAX);
    pacer.wait("k").await.unwrap();
    let start = tokio::time::Instant::now();
    pacer.wait("k").await.unwrap();
    assert_eq!(start.elapsed(), Duration::from_secs(366 * 86_400));
}

#[test]
fn a_pacer_refuses_an_in_flight_cap() {
    let quota = || Quota::new(Window::per_second(100)).max_in_flight(1);
    let errors = [
        Pacer::new(quota()).unwrap_err(),
        Pacer::with_store(quota(), MemoryStore::new()).unwrap_err(),
        Pacer::with_shared_store(quota(), Arc::new(MemoryStore::new())).unwrap_err(),
    ];
    for error in errors {
        assert_eq!(error.kind(), ConfigErrorKind::InvalidValue);
        assert_eq!(error.field(), "in_flight");
        assert_eq!(
            error.to_string(),
            "invalid rate-limit policy, field `in_flight`: \
             a pacer holds no in-flight slots: remove the in-flight cap of 1"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn a_request_waiting_its_turn_holds_none_of_the_inner_services_capacity() {
    // One request a minute per key, one request at a time inside.
    let pacer = Pacer::new(Quota::new(Window::per_minute(1))).unwrap();
    let sent: Arc<Mutex<Vec<(String, u64)>>> = Arc::default();
    let start = tokio::time::Instant::now();
    let log = Arc::clone(&sent);
    let client = pacer
        .layer(recipient)
        .layer(
            ConcurrencyLimitLayer::new(1).layer(service_fn(move |request: Request<String>| {
                log.lock()
                    .unwrap()
                    .push((request.body().clone(), ms_since(start)));
                async { Ok::<_, Infallible>(Response::new(())) }
            })),
        );
    let request = |to: &str, body: &str| {
        let builder = Request::get("/").header("x-to", to);
        builder.body(body.to_owned()).unwrap()
    };
    client.clone().oneshot(request("a", "a1")).await.unwrap();
    // The second request of "a" waits a minute for its turn...
    let a2 = tokio::spawn(client.clone().oneshot(request("a", "a2")));
    tokio::task::yield_now().await;
    // ... and "b" goes ahead of it at once.
    client.clone().oneshot(request("b", "b1")).await.unwrap();
    assert_eq!(ms_since(start), 0);
    a2.await.unwrap().unwrap();
    let expected = [("a1", 0), ("b1", 0), ("a2", 60_000)];
    let expected: Vec<(String, u64)> = expected.iter().map(|(b, t)| (b.to_string(), *t)).collect();
    assert_eq!(*sent.lock().unwrap(), expected);
}

/// A service that is never ready: its readiness fails.
#[derive(Clone)]
struct Down;

impl Service<Request<String>> for Down {
    type Response = Response<()>;
    type Error = std::io::Error;
    type Future = std::future::Ready<Result<Response<()>, std::io::Error>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Err(std::io::Error::other("down")))
    }

    fn call(&mut self, _request: Request<String>) -> Self::Future {
        unreachable!("called without being ready")
    }
}

#[tokio::test(start_paused = true)]
async fn an_error_of_the_inner_services_readiness_comes_back_after_the_turn() {
    let pacer = Pacer::new(Quota::new(Window::per_second(1))).unwrap();
    let client = pacer
        .layer(|_: &Request<String>| Some(String::from("k")))
        .layer(Down);
    let start = tokio::time::Instant::now();
    for at in [0, 1_000] {
        let error = client
            .clone()
            .oneshot(Request::new(String::new()))
            .await
            .unwrap_err();
        assert_eq!(error.to_string(), "down");
        // Each request took a turn before it found the service down.
        assert_eq!(ms_since(start), at);
    }
}

/// The pacing key of a request: its `X-To` header.
fn recipient(request: &Request<String>) -> Option<String> {
    let to = request.headers().get("x-to")?;
    to.to_str().ok().map(str::to_owned)
}
