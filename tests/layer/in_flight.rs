//! Keyed concurrency limits through the layer: at most N requests of a key
//! in flight, the next one refused at once ("busy") or queued first come
//! first served; slots held by response bodies and freed by finished or
//! dropped bodies and by cancelled requests; shadow caps; headers.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::channel::mpsc;
use http::{Request, Response, StatusCode};
use http_body::Frame;
use http_body_util::{BodyExt, StreamBody};
use serde_json::json;
use tower::{service_fn, Layer, ServiceExt};
use tower_ratelimit::clock::ManualClock;
use tower_ratelimit::key::Header;
use tower_ratelimit::{
    ConfigErrorKind, EventKind, HeaderStyle, Limit, Policy, PolicyBuilder, Quota, RateLimitLayer,
    RefusalFormat, RefusalReason, Tiers, Window,
};

use crate::common::{
    answered_at_once, decision, header, json, limit_remaining, num, start, still_waiting, text,
    until, Gate, Pending, Res, Svc, NS, T0,
};

fn api_key() -> Header {
    Header::parse("X-API-Key").unwrap()
}

/// A policy of one limit, `calls`, with `quota` on `POST /v1/calls`.
fn calls(quota: impl Into<Tiers>) -> PolicyBuilder {
    Policy::builder().limit(Limit::new("calls", api_key()).route("POST /v1/calls", quota))
}

fn queue(max_queued: usize, max_wait: Duration) -> Quota {
    Quota::in_flight(1).queue(max_queued, max_wait)
}

/// A layer on a manual clock at `T0` (the in-flight caps and the queue's
/// waits do not depend on it; the windows and `X-RateLimit-Reset` do).
fn layer(policy: PolicyBuilder) -> RateLimitLayer {
    RateLimitLayer::new(policy.build().unwrap())
        .decision_extensions(true)
        .clock(ManualClock::at_unix_secs(T0))
}

/// A `POST /v1/calls` for `key`, numbered `seq`; `hold`: the inner service
/// keeps it until the gate opens.
fn call(key: &str, seq: &str, hold: bool) -> Request<String> {
    let mut request = Request::post("/v1/calls")
        .header("x-api-key", key)
        .header("x-seq", seq);
    if hold {
        request = request.header("x-hold", "1");
    }
    request.body(String::new()).unwrap()
}

/// Starts a held call and checks that it got a slot (it is now inside the
/// inner service).
async fn hold(svc: &Svc, gate: &Gate, key: &str, seq: &str) -> Pending {
    let entered = gate.entered();
    let mut pending = start(svc, call(key, seq, true));
    still_waiting(&mut pending).await;
    assert_eq!(gate.entered(), entered + 1, "{seq} did not get a slot");
    pending
}

/// Starts a call that must wait in the line (it joins it now).
async fn queued(svc: &Svc, key: &str, seq: &str, hold: bool) -> Pending {
    let mut pending = start(svc, call(key, seq, hold));
    still_waiting(&mut pending).await;
    pending
}

/// Sends a call that must be answered busy at once.
async fn busy(svc: &Svc, key: &str, seq: &str) -> Res {
    let response = answered_at_once(&mut start(svc, call(key, seq, false))).await;
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS, "{seq}");
    assert_eq!(decision(&response).refusal(), Some(RefusalReason::Busy));
    response
}

/// Lets one held request out and reads its response to the end.
async fn finish(gate: &Gate, pending: Pending) -> Res {
    gate.open(1);
    pending.await
}

#[tokio::test(start_paused = true)]
async fn exactly_n_requests_of_a_key_are_in_flight_and_the_rest_are_refused_at_once() {
    let layer = layer(calls(Quota::in_flight(3)));
    let gate = Gate::new();
    let svc = gate.behind(&layer);
    let answered = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for key in ["a", "b"] {
        for i in 0..10 {
            let pending = start(&svc, call(key, &format!("{key}{i}"), true));
            let answered = Arc::clone(&answered);
            tasks.push(tokio::spawn(async move {
                let response = pending.await;
                let status = response.status();
                answered.lock().unwrap().push(status);
                drop(response);
                status
            }));
        }
    }
    until("3 per key are in and 14 are answered", || {
        gate.inside() == 6 && answered.lock().unwrap().len() == 14
    })
    .await;
    assert_eq!(gate.max_inside(), 6);
    let order = gate.order();
    assert_eq!(order.iter().filter(|s| s.starts_with('a')).count(), 3);
    assert_eq!(order.iter().filter(|s| s.starts_with('b')).count(), 3);
    assert!(answered
        .lock()
        .unwrap()
        .iter()
        .all(|s| *s == StatusCode::TOO_MANY_REQUESTS));
    assert_eq!(layer.keys_in_flight(), 2);

    gate.open(6);
    let mut statuses = Vec::new();
    for task in tasks {
        statuses.push(task.await.unwrap());
    }
    assert_eq!(statuses.iter().filter(|s| **s == StatusCode::OK).count(), 6);
    assert_eq!(
        statuses
            .iter()
            .filter(|s| **s == StatusCode::TOO_MANY_REQUESTS)
            .count(),
        14
    );
    assert_eq!(gate.entered(), 6, "busy requests never reached the service");
    assert_eq!(gate.max_inside(), 6);
    assert_eq!(layer.keys_in_flight(), 0, "every slot came back");

    // The cap is whole again: three more, then busy.
    let held = [
        hold(&svc, &gate, "a", "a10").await,
        hold(&svc, &gate, "a", "a11").await,
        hold(&svc, &gate, "a", "a12").await,
    ];
    busy(&svc, "a", "a13").await;
    gate.open(3);
    for pending in held {
        assert_eq!(pending.await.status(), StatusCode::OK);
    }
    assert_eq!(layer.keys_in_flight(), 0);
}

#[tokio::test(start_paused = true)]
async fn the_busy_answer_has_its_status_retry_after_headers_and_json_body() {
    let layer = layer(calls(Quota::in_flight(2)));
    let gate = Gate::new();
    let svc = gate.behind(&layer);
    let held = [
        hold(&svc, &gate, "k", "0").await,
        hold(&svc, &gate, "k", "1").await,
    ];
    let refused = busy(&svc, "k", "2").await;
    assert_eq!(header(&refused, "retry-after"), "1", "the default: 1 s");
    assert_eq!(limit_remaining(&refused), (2, 0));
    assert_eq!(num(&refused, "x-ratelimit-reset"), T0 + 1);
    assert_eq!(header(&refused, "content-type"), "application/json");
    let d = decision(&refused);
    assert_eq!(d.retry_after(), Some(1));
    assert_eq!(d.windows().len(), 1);
    assert!(d.windows()[0].concurrent);
    assert_eq!((d.windows()[0].limit, d.windows()[0].remaining), (2, 0));
    assert_eq!(
        json(refused).await,
        json!({"error": {
            "code": "concurrency_limit_exceeded",
            "message": "Too many requests in flight. Try again in 1 second.",
            "retry_after": 1
        }})
    );
    gate.open(2);
    for pending in held {
        assert_eq!(pending.await.status(), StatusCode::OK);
    }
    assert_eq!(gate.entered(), 2);
}

#[test]
fn a_busy_retry_after_outside_a_second_to_a_day_is_refused() {
    for after in [Duration::ZERO, Duration::from_secs(86_401)] {
        let err = calls(Quota::in_flight(1))
            .busy_retry_after(after)
            .build()
            .unwrap_err();
        assert_eq!(err.field(), "busy_retry_after", "{err}");
        assert!(err.message().contains("from 1 s to 1 day"), "{err}");
    }
    for after in [Duration::from_millis(1), Duration::from_secs(86_400)] {
        assert!(calls(Quota::in_flight(1))
            .busy_retry_after(after)
            .build()
            .is_ok());
    }
}

#[tokio::test(start_paused = true)]
async fn busy_status_retry_after_and_format_come_from_the_policy() {
    let layer = layer(
        calls(Quota::in_flight(1))
            .busy_status(StatusCode::SERVICE_UNAVAILABLE)
            .busy_retry_after(Duration::from_millis(2500))
            .refusal(RefusalFormat::named("nixflex").unwrap()),
    );
    let gate = Gate::new();
    let svc = gate.behind(&layer);
    let held = hold(&svc, &gate, "k", "0").await;
    let refused = answered_at_once(&mut start(&svc, call("k", "1", false))).await;
    assert_eq!(refused.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(header(&refused, "retry-after"), "3", "2.5 s, rounded up");
    assert_eq!(num(&refused, "x-ratelimit-reset"), T0 + 3);
    assert_eq!(
        json(refused).await,
        json!({"error": {
            "type": "rate_limit_error",
            "code": "concurrency_limit_exceeded",
            "message": "Concurrency limit reached. Try again in 3 seconds.",
            "details": {"retry_after": 3}
        }})
    );
    assert_eq!(finish(&gate, held).await.status(), StatusCode::OK);

    let err = calls(Quota::in_flight(1))
        .busy_status(StatusCode::OK)
        .build()
        .unwrap_err();
    assert_eq!(
        (err.kind(), err.field()),
        (ConfigErrorKind::InvalidValue, "busy_status")
    );
}

#[tokio::test(start_paused = true)]
async fn a_busy_refusal_costs_no_rate_quota() {
    let layer = layer(calls(Quota::new(Window::per_minute(5)).max_in_flight(1)));
    let gate = Gate::new();
    let svc = gate.behind(&layer);
    let held = hold(&svc, &gate, "k", "0").await;
    for i in 1..=3 {
        let refused = busy(&svc, "k", &i.to_string()).await;
        assert_eq!(
            decision(&refused).windows().len(),
            1,
            "only the cap is reported: no window was checked"
        );
        assert_eq!(limit_remaining(&refused), (1, 0));
    }
    let first = finish(&gate, held).await;
    assert_eq!(limit_remaining(&first), (5, 4));
    drop(first);
    let next = answered_at_once(&mut start(&svc, call("k", "4", false))).await;
    assert_eq!(next.status(), StatusCode::OK);
    assert_eq!(
        limit_remaining(&next),
        (5, 3),
        "2 of 5: the busy ones cost nothing"
    );
    assert_eq!(gate.entered(), 2);
}

#[tokio::test(start_paused = true)]
async fn queued_requests_are_served_first_come_first_served() {
    let layer = layer(calls(queue(10, Duration::from_secs(30))));
    let gate = Gate::new();
    let svc = gate.behind(&layer);
    let first = hold(&svc, &gate, "k", "0").await;
    // Created in one order, joined the line in another: the line's order
    // is the order of joining.
    let mut waiting: Vec<(usize, Pending)> = (1..=5)
        .map(|i| (i, start(&svc, call("k", &i.to_string(), true))))
        .collect();
    let join_order = [3, 1, 4, 2, 5];
    for seq in join_order {
        let (_, pending) = waiting.iter_mut().find(|(i, _)| *i == seq).unwrap();
        still_waiting(pending).await;
    }
    assert_eq!(gate.entered(), 1, "one in flight, five waiting");
    assert_eq!(layer.keys_in_flight(), 1);

    // Another key is not held up by this key's line (through a service of
    // its own, so that `gate` sees only `k`).
    let other_gate = Gate::new();
    let other_svc = other_gate.behind(&layer);
    let other = answered_at_once(&mut start(&other_svc, call("other", "x", false))).await;
    assert_eq!(other.status(), StatusCode::OK);
    drop(other);

    let tasks: Vec<_> = std::iter::once(first)
        .chain(waiting.into_iter().map(|(_, p)| p))
        .map(|pending| tokio::spawn(async move { text(pending.await).await }))
        .collect();
    gate.open(6);
    for task in tasks {
        assert_eq!(task.await.unwrap(), "ok");
    }
    assert_eq!(gate.order(), ["0", "3", "1", "4", "2", "5"]);
    assert_eq!(gate.max_inside(), 1, "never two of `k` at once");
    assert_eq!(layer.keys_in_flight(), 0);
}

#[tokio::test(start_paused = true)]
async fn queue_mode_keeps_exactly_n_in_flight_and_serves_everyone() {
    let layer = layer(calls(
        Quota::in_flight(3).queue(100, Duration::from_secs(3600)),
    ));
    let gate = Gate::new();
    let svc = gate.behind(&layer);
    let tasks: Vec<_> = (0..20)
        .map(|i| {
            let pending = start(&svc, call("k", &i.to_string(), true));
            tokio::spawn(async move {
                let response = pending.await;
                let status = response.status();
                text(response).await;
                status
            })
        })
        .collect();
    until("3 are inside", || gate.inside() == 3).await;
    for _ in 0..100 {
        tokio::task::yield_now().await;
    }
    assert_eq!(gate.entered(), 3, "the other 17 wait");
    gate.open(20);
    for task in tasks {
        assert_eq!(task.await.unwrap(), StatusCode::OK);
    }
    assert_eq!(gate.entered(), 20);
    assert_eq!(gate.max_inside(), 3);
    assert_eq!(layer.keys_in_flight(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_new_request_never_takes_a_freed_slot_ahead_of_the_line() {
    let layer = layer(calls(queue(10, Duration::from_secs(30))));
    let gate = Gate::new();
    let svc = gate.behind(&layer);
    let first = hold(&svc, &gate, "k", "0").await;
    let mut second = queued(&svc, "k", "1", true).await;
    // The slot is handed to the waiting request before it even runs ...
    drop(finish(&gate, first).await);
    // ... so a request that arrives now joins the line behind it.
    let mut third = queued(&svc, "k", "2", false).await;
    still_waiting(&mut second).await;
    assert_eq!(gate.order(), ["0", "1"]);
    still_waiting(&mut third).await;
    gate.open(1);
    assert_eq!(second.await.status(), StatusCode::OK);
    assert_eq!(third.await.status(), StatusCode::OK);
    assert_eq!(gate.order(), ["0", "1", "2"]);
    assert_eq!(layer.keys_in_flight(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_full_queue_refuses_at_once() {
    let layer = layer(calls(queue(2, Duration::from_secs(30))));
    let gate = Gate::new();
    let svc = gate.behind(&layer);
    let first = hold(&svc, &gate, "k", "0").await;
    let second = queued(&svc, "k", "1", false).await;
    let third = queued(&svc, "k", "2", false).await;
    let refused = busy(&svc, "k", "3").await;
    assert_eq!(header(&refused, "retry-after"), "1");
    assert_eq!(limit_remaining(&refused), (1, 0));
    assert_eq!(
        json(refused).await["error"]["code"],
        json!("concurrency_limit_exceeded")
    );
    let tasks: Vec<_> = [second, third]
        .into_iter()
        .map(|p| tokio::spawn(async move { p.await.status() }))
        .collect();
    drop(finish(&gate, first).await);
    for task in tasks {
        assert_eq!(task.await.unwrap(), StatusCode::OK);
    }
    assert_eq!(gate.order(), ["0", "1", "2"], "3 never reached the service");
    assert_eq!(layer.keys_in_flight(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_request_that_waits_out_max_wait_is_refused_and_costs_nothing() {
    let layer = layer(calls(
        Quota::new(Window::per_minute(5))
            .max_in_flight(1)
            .queue(5, Duration::from_secs(10)),
    ));
    let gate = Gate::new();
    let svc = gate.behind(&layer);
    let first = hold(&svc, &gate, "k", "0").await;
    let mut second = queued(&svc, "k", "1", false).await;

    tokio::time::advance(Duration::from_millis(9_999)).await;
    still_waiting(&mut second).await;
    tokio::time::advance(Duration::from_millis(1)).await;
    let refused = answered_at_once(&mut second).await;
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(decision(&refused).refusal(), Some(RefusalReason::Busy));
    assert_eq!(header(&refused, "retry-after"), "1");
    assert_eq!(limit_remaining(&refused), (1, 0), "the cap refused it");
    assert_eq!(
        json(refused).await["error"]["code"],
        json!("concurrency_limit_exceeded")
    );
    assert_eq!(gate.entered(), 1);
    assert_eq!(layer.keys_in_flight(), 1, "only the first holds a slot");

    let first = finish(&gate, first).await;
    assert_eq!(limit_remaining(&first), (5, 4));
    drop(first);
    assert_eq!(layer.keys_in_flight(), 0);
    let next = answered_at_once(&mut start(&svc, call("k", "2", false))).await;
    assert_eq!(
        limit_remaining(&next),
        (5, 3),
        "2 of 5: the request refused after waiting cost nothing"
    );
}

#[tokio::test(start_paused = true)]
async fn a_queued_request_is_counted_when_it_gets_its_slot() {
    let layer = layer(calls(
        Quota::new(Window::per_minute(2))
            .max_in_flight(1)
            .queue(5, Duration::from_secs(30)),
    ));
    let gate = Gate::new();
    let svc = gate.behind(&layer);
    let first = hold(&svc, &gate, "k", "0").await;
    let second = queued(&svc, "k", "1", false).await;
    let third = queued(&svc, "k", "2", false).await;
    // Each task reads its response to the end (which frees its slot for
    // the next in line) and reports what it saw.
    let tasks: Vec<_> = [second, third]
        .into_iter()
        .map(|p| tokio::spawn(async move { Seen::of(p.await).await }))
        .collect();
    let first = finish(&gate, first).await;
    assert_eq!(limit_remaining(&first), (2, 1));
    drop(first);
    let mut seen = Vec::new();
    for task in tasks {
        seen.push(task.await.unwrap());
    }
    assert_eq!(
        seen[0],
        Seen {
            status: StatusCode::OK,
            limit_remaining: (2, 0),
            refusal: None,
            retry_after: None,
            body: "ok".into(),
        }
    );
    // The third waited for its slot, then the window refused it: a rate
    // refusal, and its slot went back.
    assert_eq!(seen[1].status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(seen[1].limit_remaining, (2, 0));
    assert_eq!(seen[1].refusal, Some(RefusalReason::Window));
    assert_eq!(seen[1].retry_after.as_deref(), Some("30"));
    let body: serde_json::Value = serde_json::from_str(&seen[1].body).unwrap();
    assert_eq!(body["error"]["code"], json!("rate_limit_exceeded"));
    assert_eq!(gate.order(), ["0", "1"]);
    assert_eq!(layer.keys_in_flight(), 0);
}

/// What a task saw of its response, read to the end.
#[derive(Debug, PartialEq)]
struct Seen {
    status: StatusCode,
    limit_remaining: (u64, u64),
    refusal: Option<RefusalReason>,
    retry_after: Option<String>,
    body: String,
}

impl Seen {
    async fn of(response: Res) -> Seen {
        Seen {
            status: response.status(),
            limit_remaining: limit_remaining(&response),
            refusal: decision(&response).refusal(),
            retry_after: response
                .headers()
                .get("retry-after")
                .map(|v| v.to_str().unwrap().to_owned()),
            body: text(response).await,
        }
    }
}

#[tokio::test(start_paused = true)]
async fn a_rate_refusal_after_getting_a_slot_frees_the_slot() {
    let clock = ManualClock::at_unix_secs(T0);
    let layer = RateLimitLayer::new(
        calls(Quota::new(Window::per_minute(2)).max_in_flight(1))
            .build()
            .unwrap(),
    )
    .decision_extensions(true)
    .clock(clock.clone());
    let gate = Gate::new();
    let svc = gate.behind(&layer);
    for i in 0..2 {
        let response = answered_at_once(&mut start(&svc, call("k", &i.to_string(), false))).await;
        assert_eq!(limit_remaining(&response), (2, 1 - i));
    }
    let refused = answered_at_once(&mut start(&svc, call("k", "2", false))).await;
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(decision(&refused).refusal(), Some(RefusalReason::Window));
    assert_eq!(header(&refused, "retry-after"), "30");
    assert_eq!(
        layer.keys_in_flight(),
        0,
        "the refused request let go of its slot"
    );
    clock.advance(Duration::from_secs(30));
    let held = hold(&svc, &gate, "k", "3").await;
    assert_eq!(layer.keys_in_flight(), 1);
    assert_eq!(finish(&gate, held).await.status(), StatusCode::OK);
    assert_eq!(gate.entered(), 3);
}

#[tokio::test(start_paused = true)]
async fn a_finished_body_frees_the_slot_as_soon_as_it_ends() {
    let layer = layer(calls(Quota::in_flight(1)));
    let gate = Gate::new();
    let svc = gate.behind(&layer);
    let first = answered_at_once(&mut start(&svc, call("k", "0", false))).await;
    assert_eq!(first.status(), StatusCode::OK);
    busy(&svc, "k", "1").await;
    assert_eq!(layer.keys_in_flight(), 1, "the body holds the slot");

    let mut body = first.into_body();
    let frame = body.frame().await.unwrap().unwrap();
    assert_eq!(frame.into_data().unwrap(), "ok");
    assert!(body.frame().await.is_none());
    assert_eq!(
        layer.keys_in_flight(),
        0,
        "freed at the end of the body, before it is dropped"
    );
    let next = answered_at_once(&mut start(&svc, call("k", "2", false))).await;
    assert_eq!(next.status(), StatusCode::OK);
    drop((body, next));
    assert_eq!(layer.keys_in_flight(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_dropped_body_frees_the_slot() {
    let layer = layer(calls(Quota::in_flight(1)));
    let gate = Gate::new();
    let svc = gate.behind(&layer);
    let first = answered_at_once(&mut start(&svc, call("k", "0", false))).await;
    busy(&svc, "k", "1").await;
    drop(first);
    assert_eq!(layer.keys_in_flight(), 0);
    let next = answered_at_once(&mut start(&svc, call("k", "2", false))).await;
    assert_eq!(next.status(), StatusCode::OK);
}

#[tokio::test(start_paused = true)]
async fn a_request_dropped_while_in_flight_frees_its_slot() {
    let layer = layer(calls(Quota::in_flight(1)));
    let gate = Gate::new();
    let svc = gate.behind(&layer);
    let held = hold(&svc, &gate, "k", "0").await;
    busy(&svc, "k", "1").await;
    drop(held);
    assert_eq!(layer.keys_in_flight(), 0);
    let next = answered_at_once(&mut start(&svc, call("k", "2", false))).await;
    assert_eq!(next.status(), StatusCode::OK);
}

#[tokio::test(start_paused = true)]
async fn a_streaming_body_keeps_its_slot_until_its_end() {
    type Chunks = mpsc::UnboundedReceiver<Result<Frame<Bytes>, Infallible>>;
    let layer = layer(calls(Quota::in_flight(1)));
    let bodies: Arc<Mutex<VecDeque<Chunks>>> = Arc::default();
    let source = Arc::clone(&bodies);
    let svc = layer.layer(service_fn(move |_req: Request<String>| {
        let chunks = source.lock().unwrap().pop_front().unwrap();
        async move { Ok::<_, Infallible>(Response::new(StreamBody::new(chunks))) }
    }));
    let send = |bodies: &Arc<Mutex<VecDeque<Chunks>>>| {
        let (tx, rx) = mpsc::unbounded();
        bodies.lock().unwrap().push_back(rx);
        let request = call("k", "s", false);
        (tx, svc.clone().oneshot(request))
    };

    let (tx, response) = send(&bodies);
    let response = response.await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let mut body = response.into_body();
    tx.unbounded_send(Ok(Frame::data(Bytes::from_static(b"one"))))
        .unwrap();
    let frame = body.frame().await.unwrap().unwrap();
    assert_eq!(frame.into_data().unwrap(), "one");

    // Mid-stream: the slot is still taken.
    let (_unused, refused) = send(&bodies);
    assert_eq!(
        refused.await.unwrap().status(),
        StatusCode::TOO_MANY_REQUESTS
    );
    bodies.lock().unwrap().clear();
    tx.unbounded_send(Ok(Frame::data(Bytes::from_static(b"two"))))
        .unwrap();
    let frame = body.frame().await.unwrap().unwrap();
    assert_eq!(frame.into_data().unwrap(), "two");
    assert_eq!(layer.keys_in_flight(), 1);

    // The stream ends: the slot is free, though the body still exists.
    drop(tx);
    assert!(body.frame().await.is_none());
    assert_eq!(layer.keys_in_flight(), 0);
    let (tx2, next) = send(&bodies);
    drop(tx2);
    assert_eq!(next.await.unwrap().status(), StatusCode::OK);
    drop(body);
}

#[tokio::test(start_paused = true)]
async fn a_cancelled_queued_request_leaves_the_line_and_holds_nothing() {
    let layer = layer(calls(queue(10, Duration::from_secs(30))));
    let gate = Gate::new();
    let svc = gate.behind(&layer);
    let first = hold(&svc, &gate, "k", "0").await;
    let second = queued(&svc, "k", "1", false).await;
    let third = queued(&svc, "k", "2", false).await;
    drop(third);
    drop(second);
    drop(finish(&gate, first).await);
    assert_eq!(layer.keys_in_flight(), 0, "no slot, no waiter left");
    assert_eq!(
        gate.order(),
        ["0"],
        "the cancelled never reached the service"
    );
    // No ghost ahead in the line: a new request is served at once.
    let next = answered_at_once(&mut start(&svc, call("k", "3", false))).await;
    assert_eq!(next.status(), StatusCode::OK);
}

#[tokio::test(start_paused = true)]
async fn a_queued_request_cancelled_after_being_handed_the_slot_passes_it_on() {
    let layer = layer(calls(queue(10, Duration::from_secs(30))));
    let gate = Gate::new();
    let svc = gate.behind(&layer);
    let first = hold(&svc, &gate, "k", "0").await;
    let second = queued(&svc, "k", "1", true).await;
    let mut third = queued(&svc, "k", "2", true).await;
    // The first ends: its slot goes to the second, which is dropped before
    // it runs again; the slot must go on to the third.
    drop(finish(&gate, first).await);
    drop(second);
    still_waiting(&mut third).await;
    assert_eq!(gate.order(), ["0", "2"]);
    assert_eq!(finish(&gate, third).await.status(), StatusCode::OK);
    assert_eq!(layer.keys_in_flight(), 0);
}

#[tokio::test(start_paused = true)]
async fn ten_thousand_cancelled_queued_requests_leak_nothing() {
    let layer = layer(calls(queue(20_000, Duration::from_secs(30))));
    let gate = Gate::new();
    let svc = gate.behind(&layer);
    let first = hold(&svc, &gate, "k", "0").await;
    let mut waiting = Vec::with_capacity(10_000);
    for i in 0..10_000 {
        waiting.push(queued(&svc, "k", &format!("c{i}"), false).await);
    }
    // Cancel every other one, then the rest from the back.
    let mut kept = Vec::new();
    for (i, pending) in waiting.into_iter().enumerate() {
        if i % 2 == 1 {
            kept.push(pending);
        }
    }
    while let Some(pending) = kept.pop() {
        drop(pending);
    }
    assert_eq!(
        layer.keys_in_flight(),
        1,
        "only the key in flight is tracked"
    );

    // The line is empty: the next request is the first to get the slot.
    let mut last = queued(&svc, "k", "last", false).await;
    drop(finish(&gate, first).await);
    let response = answered_at_once(&mut last).await;
    assert_eq!(response.status(), StatusCode::OK);
    drop(response);
    assert_eq!(gate.order(), ["0", "last"]);
    assert_eq!(layer.keys_in_flight(), 0);
    assert_eq!(layer.keys_in_flight(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_key_has_one_count_across_the_routes_of_a_limit() {
    let layer = layer(
        Policy::builder().limit(
            Limit::new("calls", api_key())
                .route("POST /v1/calls", Quota::in_flight(2))
                .route("GET /v1/calls/{id}", Quota::in_flight(2)),
        ),
    );
    let gate = Gate::new();
    let svc = gate.behind(&layer);
    let get = |key: &str, seq: &str, hold: bool| {
        let mut request = Request::get("/v1/calls/c1")
            .header("x-api-key", key)
            .header("x-seq", seq);
        if hold {
            request = request.header("x-hold", "1");
        }
        start(&svc, request.body(String::new()).unwrap())
    };
    let post = hold(&svc, &gate, "k", "post").await;
    let mut read = get("k", "get", true);
    still_waiting(&mut read).await;
    assert_eq!(gate.entered(), 2);

    busy(&svc, "k", "post2").await;
    let refused = answered_at_once(&mut get("k", "get2", false)).await;
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(decision(&refused).refusal(), Some(RefusalReason::Busy));
    assert_eq!(layer.keys_in_flight(), 1, "one key, one count");

    // Another key has its own two.
    let other = answered_at_once(&mut get("other", "o", false)).await;
    assert_eq!(other.status(), StatusCode::OK);
    drop(other);

    gate.open(2);
    assert_eq!(post.await.status(), StatusCode::OK);
    assert_eq!(read.await.status(), StatusCode::OK);
    assert_eq!(layer.keys_in_flight(), 0);
}

#[tokio::test(start_paused = true)]
async fn an_override_gives_one_key_a_cap_of_its_own() {
    let layer = layer(calls(Quota::in_flight(1)));
    layer
        .overrides()
        .set_quota("calls", "vip", Quota::in_flight(3))
        .unwrap();
    let gate = Gate::new();
    let svc = gate.behind(&layer);
    let mut held = Vec::new();
    for i in 0..3 {
        held.push(hold(&svc, &gate, "vip", &format!("v{i}")).await);
    }
    assert_eq!(limit_remaining(&busy(&svc, "vip", "v3").await), (3, 0));
    held.push(hold(&svc, &gate, "k", "k0").await);
    assert_eq!(limit_remaining(&busy(&svc, "k", "k1").await), (1, 0));
    gate.open(4);
    for pending in held {
        assert_eq!(pending.await.status(), StatusCode::OK);
    }
    assert_eq!(gate.max_inside(), 4);
    assert_eq!(layer.keys_in_flight(), 0);
}

#[tokio::test(start_paused = true)]
async fn lowering_a_key_s_cap_at_runtime_revokes_nothing_and_refuses_until_under_it() {
    let layer = layer(calls(Quota::in_flight(3)));
    let gate = Gate::new();
    let svc = gate.behind(&layer);
    let mut held = VecDeque::new();
    for i in 0..3 {
        held.push_back(hold(&svc, &gate, "k", &i.to_string()).await);
    }
    let overrides = layer.overrides();
    overrides
        .set_quota("calls", "k", Quota::in_flight(1))
        .unwrap();
    assert_eq!(limit_remaining(&busy(&svc, "k", "3").await), (1, 0));
    // Two of the three end: one is still in flight, which is the new cap.
    for _ in 0..2 {
        let response = finish(&gate, held.pop_front().unwrap()).await;
        assert_eq!(response.status(), StatusCode::OK, "no slot was revoked");
    }
    busy(&svc, "k", "4").await;
    assert_eq!(
        finish(&gate, held.pop_front().unwrap()).await.status(),
        StatusCode::OK
    );
    let one = hold(&svc, &gate, "k", "5").await;
    busy(&svc, "k", "6").await;

    // Back to the default cap of 3.
    assert_eq!(overrides.remove("calls", "k"), Ok(true));
    let two = hold(&svc, &gate, "k", "7").await;
    let three = hold(&svc, &gate, "k", "8").await;
    assert_eq!(limit_remaining(&busy(&svc, "k", "9").await), (3, 0));
    gate.open(3);
    for pending in [one, two, three] {
        assert_eq!(pending.await.status(), StatusCode::OK);
    }
    assert_eq!(gate.entered(), 6);
    assert_eq!(layer.keys_in_flight(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_shadow_cap_never_refuses_but_reports() {
    let events = Arc::new(Mutex::new(Vec::new()));
    let record = Arc::clone(&events);
    let layer = RateLimitLayer::new(
        Policy::builder()
            .limit(
                Limit::new("calls", api_key())
                    .route("POST /v1/calls", Quota::in_flight(1))
                    .shadow(true),
            )
            .build()
            .unwrap(),
    )
    .decision_extensions(true)
    .clock(ManualClock::at_unix_secs(T0))
    .on_event(move |e| {
        record
            .lock()
            .unwrap()
            .push((e.kind(), e.limit().to_owned()))
    });
    let gate = Gate::new();
    let svc = gate.behind(&layer);
    let held = [
        hold(&svc, &gate, "k", "0").await,
        hold(&svc, &gate, "k", "1").await,
        hold(&svc, &gate, "k", "2").await,
    ];
    assert_eq!(gate.inside(), 3, "all three run");
    assert_eq!(
        *events.lock().unwrap(),
        [
            (EventKind::ShadowRefused, "calls".to_owned()),
            (EventKind::ShadowRefused, "calls".to_owned())
        ]
    );
    gate.open(3);
    let mut shadow_refused = Vec::new();
    for pending in held {
        let response = pending.await;
        assert_eq!(response.status(), StatusCode::OK);
        assert!(decision(&response).is_admitted());
        assert_eq!(limit_remaining(&response), (1, 0));
        shadow_refused.push(decision(&response).shadow_refused());
    }
    assert_eq!(shadow_refused, [false, true, true]);
    assert_eq!(gate.max_inside(), 3);
    assert_eq!(layer.keys_in_flight(), 0);
}

#[tokio::test(start_paused = true)]
async fn ietf_headers_report_the_cap_as_concurrent_requests() {
    let layer = layer(
        calls(Quota::new(Window::per_minute(60)).max_in_flight(2)).header_style(HeaderStyle::Ietf),
    );
    let gate = Gate::new();
    let svc = gate.behind(&layer);
    let first = answered_at_once(&mut start(&svc, call("k", "0", false))).await;
    assert_eq!(
        header(&first, "ratelimit-policy"),
        r#""calls.minute";q=60;w=60, "calls.concurrency";q=2;qu="concurrent-requests""#
    );
    assert_eq!(
        header(&first, "ratelimit"),
        r#""calls.minute";r=59;t=1, "calls.concurrency";r=1"#
    );
    assert!(first.headers().get("x-ratelimit-limit").is_none());
    let second = answered_at_once(&mut start(&svc, call("k", "1", false))).await;
    assert_eq!(
        header(&second, "ratelimit"),
        r#""calls.minute";r=58;t=1, "calls.concurrency";r=0"#
    );
    let refused = busy(&svc, "k", "2").await;
    assert_eq!(
        header(&refused, "ratelimit-policy"),
        r#""calls.concurrency";q=2;qu="concurrent-requests""#
    );
    assert_eq!(header(&refused, "ratelimit"), r#""calls.concurrency";r=0"#);
    assert_eq!(header(&refused, "retry-after"), "1");
    drop((first, second));
    assert_eq!(layer.keys_in_flight(), 0);
}

#[tokio::test(start_paused = true)]
async fn x_ratelimit_headers_report_the_cap_of_a_route_with_only_an_in_flight_cap() {
    for extensions in [true, false] {
        let layer = layer(calls(Quota::in_flight(3))).decision_extensions(extensions);
        let gate = Gate::new();
        let svc = gate.behind(&layer);
        let mut held = Vec::new();
        for i in 0..3u64 {
            let response =
                answered_at_once(&mut start(&svc, call("k", &i.to_string(), false))).await;
            assert_eq!(response.status(), StatusCode::OK);
            assert_eq!(
                limit_remaining(&response),
                (3, 2 - i),
                "extensions {extensions}"
            );
            assert_eq!(num(&response, "x-ratelimit-reset"), T0);
            held.push(response);
        }
        let refused = answered_at_once(&mut start(&svc, call("k", "3", false))).await;
        assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(limit_remaining(&refused), (3, 0));
        assert_eq!(num(&refused, "x-ratelimit-reset"), T0 + 1);
        assert_eq!(header(&refused, "retry-after"), "1");
        held.remove(0);
        let again = answered_at_once(&mut start(&svc, call("k", "4", false))).await;
        assert_eq!(limit_remaining(&again), (3, 0));
        drop((held, again));
        assert_eq!(layer.keys_in_flight(), 0);
        assert_eq!(layer.now(), T0 * NS);
    }
}

#[tokio::test(start_paused = true)]
async fn with_caps_alone_the_headers_report_the_cap_with_the_fewest_free_slots() {
    // Two limits cap the request in flight, none counts it in a window:
    // whether the decision is built or not, the trio reports the cap with
    // the fewest free slots (the first of those), as the decision does.
    let policy = || {
        Policy::builder()
            .limit(Limit::new("wide", api_key()).route("POST /v1/calls", Quota::in_flight(5)))
            .limit(Limit::new("narrow", api_key()).route("POST /v1/calls", Quota::in_flight(2)))
    };
    for (extensions, current) in [(true, true), (false, true), (false, false)] {
        let layer = layer(policy())
            .decision_extensions(extensions)
            .current_decision(current);
        let gate = Gate::new();
        let svc = gate.behind(&layer);
        let mut held = Vec::new();
        for (i, left) in [(0u64, 1u64), (1, 0)] {
            let response =
                answered_at_once(&mut start(&svc, call("k", &i.to_string(), false))).await;
            let setting = format!("extensions {extensions}, current {current}");
            assert_eq!(response.status(), StatusCode::OK, "{setting}");
            assert_eq!(limit_remaining(&response), (2, left), "{setting}");
            if extensions {
                let reported = *decision(&response).reported().unwrap();
                assert_eq!((reported.limit, u64::from(reported.remaining)), (2, left));
                assert_eq!(reported.limit_index, 1, "{setting}");
            }
            held.push(response);
        }
        let refused = answered_at_once(&mut start(&svc, call("k", "2", false))).await;
        assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(limit_remaining(&refused), (2, 0));
        drop(held);
        assert_eq!(layer.keys_in_flight(), 0);
    }
}

#[tokio::test(start_paused = true)]
async fn a_request_waiting_for_its_slot_holds_no_permit_of_a_concurrency_limit_inside() {
    use tower::limit::ConcurrencyLimitLayer;
    use tower::util::BoxCloneService;

    let release = Arc::new(tokio::sync::Semaphore::new(0));
    let gate = Arc::clone(&release);
    let inner = service_fn(move |request: Request<String>| {
        let gate = Arc::clone(&gate);
        async move {
            if request.headers().contains_key("x-hold") {
                gate.acquire().await.unwrap().forget();
            }
            Ok::<_, Infallible>(Response::new(String::from("ok")))
        }
    });
    // Two requests at once in the inner service; one of key `k` at once in
    // the layer, the next queued.
    let layer = layer(calls(queue(10, Duration::from_secs(5))));
    let svc: Svc = BoxCloneService::new(layer.layer(ConcurrencyLimitLayer::new(2).layer(inner)));
    let mut a = start(&svc, call("k", "a", true));
    still_waiting(&mut a).await;
    let mut b = start(&svc, call("k", "b", false));
    still_waiting(&mut b).await;
    // `b` waits for `k`'s slot without a permit of the inner limit, so the
    // other key's request finds the second permit free and runs at once.
    let other = answered_at_once(&mut start(&svc, call("j", "j", false))).await;
    assert_eq!(other.status(), StatusCode::OK);
    release.add_permits(1);
    assert_eq!(a.await.status(), StatusCode::OK);
    assert_eq!(b.await.status(), StatusCode::OK);
}
