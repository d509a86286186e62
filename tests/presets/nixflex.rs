//! Nixflex's published policy, from `demo/policies/nixflex.toml`,
//! behaves as its page says: per API key, reads 600 a minute, writes 120 a
//! minute, `POST /v1/keys` 10 an hour instead; concurrent calls per account
//! by plan (10 / 25 / 100 / 250), outbound calls over the cap queued (at most
//! 100, at most 30 s), inbound ones refused at once; Nixflex's 429 bodies.

use std::time::Duration;

use http::StatusCode;
use serde_json::json;
use tokio::time::Instant;

use crate::platform::{body, header, Platform, Res};

const T0: u64 = 1_715_900_000;

fn nixflex() -> Platform {
    Platform::new("nixflex", T0)
}

fn bearer(key: &str) -> String {
    format!("Bearer {key}")
}

async fn send(p: &Platform, method: &str, path: &str, key: &str) -> Res {
    p.send(method, path, &[("authorization", &bearer(key))])
        .await
}

/// Starts `n` calls on `path` that each stay in flight `hold_ms` (their
/// bodies are dropped once they answer, which frees their slots), and waits
/// until all of them have reached the service. Calls are started 100 a
/// minute on the rate clock, inside the key's 120 writes a minute.
async fn hold_calls(
    p: &Platform,
    path: &str,
    key: &str,
    n: usize,
    hold_ms: u64,
) -> Vec<tokio::task::JoinHandle<StatusCode>> {
    let before = p.served();
    let auth = bearer(key);
    let mut calls = Vec::new();
    for i in 0..n {
        if i > 0 && i % 100 == 0 {
            wait_served(p, before + i).await;
            p.clock.advance(Duration::from_secs(60));
        }
        let call = p.send(
            "POST",
            &format!("{path}?hold_ms={hold_ms}"),
            &[("authorization", &auth)],
        );
        calls.push(tokio::spawn(async move { call.await.status() }));
    }
    wait_served(p, before + n).await;
    calls
}

/// Yields until `n` requests have reached the service (a bounded wait).
async fn wait_served(p: &Platform, n: usize) {
    for _ in 0..10_000 {
        if p.served() == n {
            return;
        }
        tokio::task::yield_now().await;
    }
    panic!("only {} of {n} calls reached the service", p.served());
}

#[tokio::test]
async fn reads_are_600_a_minute_per_key() {
    let p = nixflex();
    for i in 0..600u32 {
        let response = send(&p, "GET", "/v1/agents", "nx_a").await;
        assert_eq!(response.status(), StatusCode::OK, "read {i}");
        assert_eq!(header(&response, "x-ratelimit-limit"), "600");
        assert_eq!(
            header(&response, "x-ratelimit-remaining"),
            (599 - i).to_string()
        );
    }
    let refused = send(&p, "GET", "/v1/agents", "nx_a").await;
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    // A read comes back every 100 ms.
    assert_eq!(header(&refused, "retry-after"), "1");
    assert_eq!(header(&refused, "content-type"), "application/json");
    assert_eq!(
        body(refused).await,
        json!({"error": {"type": "rate_limit_error", "code": "rate_limit_exceeded",
            "message": "Rate limit exceeded. Try again in 1 second.",
            "details": {"retry_after": 1}}})
    );
    // Reads and writes count apart, and keys count apart.
    let write = send(&p, "POST", "/v1/agents", "nx_a").await;
    assert_eq!(header(&write, "x-ratelimit-limit"), "120");
    assert_eq!(header(&write, "x-ratelimit-remaining"), "119");
    assert_eq!(
        header(
            &send(&p, "GET", "/v1/agents", "nx_b").await,
            "x-ratelimit-remaining"
        ),
        "599"
    );
}

#[tokio::test]
async fn writes_of_every_method_share_120_a_minute() {
    let p = nixflex();
    let methods = ["POST", "PUT", "PATCH", "DELETE"];
    for i in 0..120u32 {
        let method = methods[i as usize % 4];
        let response = send(&p, method, "/v1/agents/a1", "nx_a").await;
        assert_eq!(response.status(), StatusCode::OK, "{method} {i}");
        assert_eq!(
            header(&response, "x-ratelimit-remaining"),
            (119 - i).to_string()
        );
    }
    for method in methods {
        let refused = send(&p, method, "/v1/agents/a1", "nx_a").await;
        assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS, "{method}");
        // A write comes back every 500 ms.
        assert_eq!(header(&refused, "retry-after"), "1");
        assert_eq!(
            body(refused).await["error"]["details"]["retry_after"],
            json!(1)
        );
    }
    assert_eq!(
        send(&p, "GET", "/v1/agents", "nx_a").await.status(),
        StatusCode::OK
    );
}

#[tokio::test]
async fn creating_keys_is_10_an_hour_instead_of_the_write_quota() {
    let p = nixflex();
    for i in 0..10u32 {
        let response = send(&p, "POST", "/v1/keys", "nx_a").await;
        assert_eq!(response.status(), StatusCode::OK, "key {i}");
        assert_eq!(header(&response, "x-ratelimit-limit"), "10");
        assert_eq!(
            header(&response, "x-ratelimit-remaining"),
            (9 - i).to_string()
        );
    }
    let refused = send(&p, "POST", "/v1/keys", "nx_a").await;
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    // One key's worth comes back every 6 minutes.
    assert_eq!(header(&refused, "retry-after"), "360");
    assert_eq!(
        body(refused).await,
        json!({"error": {"type": "rate_limit_error", "code": "rate_limit_exceeded",
            "message": "Rate limit exceeded. Try again in 360 seconds.",
            "details": {"retry_after": 360}}})
    );
    // Key creation did not count as writes: the write quota is untouched.
    let write = send(&p, "POST", "/v1/agents", "nx_a").await;
    assert_eq!(header(&write, "x-ratelimit-remaining"), "119");
    // Reading keys is a read.
    let read = send(&p, "GET", "/v1/keys", "nx_a").await;
    assert_eq!(header(&read, "x-ratelimit-limit"), "600");
}

#[tokio::test(start_paused = true)]
async fn inbound_calls_over_the_plan_cap_are_refused_at_once() {
    let p = nixflex();
    let held = hold_calls(&p, "/v1/calls/inbound", "nx_payg", 10, 1_000).await;
    let busy = send(&p, "POST", "/v1/calls/inbound", "nx_payg").await;
    assert_eq!(busy.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(header(&busy, "retry-after"), "1");
    assert_eq!(header(&busy, "x-ratelimit-limit"), "10");
    assert_eq!(header(&busy, "x-ratelimit-remaining"), "0");
    let busy = body(busy).await;
    assert_eq!(
        busy,
        json!({"error": {"type": "rate_limit_error", "code": "concurrency_limit_exceeded",
            "message": "Concurrency limit reached. Try again in 1 second.",
            "details": {"retry_after": 1}}})
    );
    assert_eq!(p.served(), 10);
    // The busy call spent nothing of the write quota: 10 calls so far.
    let write = send(&p, "POST", "/v1/agents", "nx_payg").await;
    assert_eq!(header(&write, "x-ratelimit-remaining"), "109");
    // Another account has its own cap.
    assert_eq!(
        send(&p, "POST", "/v1/calls/inbound", "nx_other")
            .await
            .status(),
        StatusCode::OK
    );
    for call in held {
        assert_eq!(call.await.unwrap(), StatusCode::OK);
    }
    assert_eq!(
        send(&p, "POST", "/v1/calls/inbound", "nx_payg")
            .await
            .status(),
        StatusCode::OK
    );
}

#[tokio::test(start_paused = true)]
async fn each_plan_has_its_cap() {
    for (key, cap) in [
        ("nx_payg", 10),
        ("nx_starter", 25),
        ("nx_scale", 100),
        ("nx_enterprise", 250),
    ] {
        let p = nixflex();
        let held = hold_calls(&p, "/v1/calls/inbound", key, cap, 1_000).await;
        let busy = send(&p, "POST", "/v1/calls/inbound", key).await;
        assert_eq!(busy.status(), StatusCode::TOO_MANY_REQUESTS, "{key}");
        assert_eq!(header(&busy, "x-ratelimit-limit"), cap.to_string(), "{key}");
        assert_eq!(p.served(), cap);
        for call in held {
            assert_eq!(call.await.unwrap(), StatusCode::OK);
        }
    }
}

#[tokio::test(start_paused = true)]
async fn outbound_calls_over_the_cap_wait_their_turn() {
    let p = nixflex();
    let started = Instant::now();
    let held = hold_calls(&p, "/v1/calls", "nx_payg", 10, 1_000).await;
    // The 11th outbound call waits for the first slot to free, then runs.
    let queued = send(&p, "POST", "/v1/calls", "nx_payg").await;
    let status = queued.status();
    assert_eq!(status, StatusCode::OK, "{}", body(queued).await);
    assert_eq!(started.elapsed(), Duration::from_millis(1_000));
    assert_eq!(p.served(), 11);
    for call in held {
        assert_eq!(call.await.unwrap(), StatusCode::OK);
    }
}

#[tokio::test(start_paused = true)]
async fn inbound_and_outbound_calls_share_the_account_cap() {
    let p = nixflex();
    let inbound = hold_calls(&p, "/v1/calls/inbound", "nx_payg", 5, 1_000).await;
    let outbound = hold_calls(&p, "/v1/calls", "nx_payg", 5, 1_000).await;
    let busy = send(&p, "POST", "/v1/calls/inbound", "nx_payg").await;
    assert_eq!(busy.status(), StatusCode::TOO_MANY_REQUESTS);
    for call in inbound.into_iter().chain(outbound) {
        assert_eq!(call.await.unwrap(), StatusCode::OK);
    }
}

#[tokio::test(start_paused = true)]
async fn at_most_100_calls_wait_and_none_longer_than_30_seconds() {
    let p = nixflex();
    let held = hold_calls(&p, "/v1/calls", "nx_payg", 10, 60_000).await;
    let auth = bearer("nx_payg");
    let waiting: Vec<_> = (0..100)
        .map(|_| tokio::spawn(p.send("POST", "/v1/calls", &[("authorization", &auth)])))
        .collect();
    // Let every waiting call join the line.
    for _ in 0..50 {
        tokio::task::yield_now().await;
    }
    // The line is full: the 101st waiting call is refused at once.
    let started = Instant::now();
    let refused = send(&p, "POST", "/v1/calls", "nx_payg").await;
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(started.elapsed(), Duration::ZERO);
    assert_eq!(
        body(refused).await["error"]["code"],
        json!("concurrency_limit_exceeded")
    );
    // The calls in line give up after 30 s (the held ones last 60 s).
    for call in waiting {
        let response = call.await.unwrap();
        assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(header(&response, "retry-after"), "1");
    }
    assert_eq!(started.elapsed(), Duration::from_secs(30));
    assert_eq!(p.served(), 10);
    // None of them spent any of the write quota.
    let write = send(&p, "POST", "/v1/agents", "nx_payg").await;
    assert_eq!(header(&write, "x-ratelimit-remaining"), "109");
    for call in held {
        assert_eq!(call.await.unwrap(), StatusCode::OK);
    }
    assert_eq!(p.layer.keys_in_flight(), 0);
}

#[tokio::test]
async fn requests_without_a_usable_key_get_401_and_are_not_counted() {
    let p = nixflex();
    for headers in [
        &[][..],
        &[("authorization", "Basic a2V5")][..],
        &[("authorization", "Bearer ")][..],
    ] {
        let response = p.send_any("POST", "/v1/calls/inbound", headers).await;
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "{headers:?}");
        // Nothing was counted, so no quota is reported.
        assert!(!response.headers().contains_key("x-ratelimit-limit"));
        assert!(body(response).await["error"]["code"].is_string());
    }
    assert_eq!(p.served(), 0);
    let write = send(&p, "POST", "/v1/agents", "nx_a").await;
    assert_eq!(header(&write, "x-ratelimit-remaining"), "119");
}
