//! Exotel's published policy, from `demo/policies/exotel.toml`, behaves
//! as its page says: per account (from the path), each API category counted
//! on its own with a 10/second burst and a 100/minute sustained limit, both;
//! temporary throttling after repeated violations; no concurrent actions on
//! one leg or one bridge; a 429 with `Retry-After` and Exotel's body, whose `request_id`
//! is the response's `x-request-id`.

use std::time::Duration;

use http::StatusCode;
use serde_json::json;

use crate::platform::{body, header, Platform, Res, NS};

const T0: u64 = 1_750_000_000;

fn exotel() -> Platform {
    Platform::new("exotel", T0)
}

async fn legs(p: &Platform, account: &str) -> Res {
    p.send("GET", &format!("/v2/accounts/{account}/legs"), &[])
        .await
}

fn at(p: &Platform, secs: u64, millis: u64) {
    p.clock.set((T0 + secs) * NS + millis * 1_000_000);
}

#[tokio::test]
async fn a_burst_of_10_a_second_per_account_and_category() {
    let p = exotel();
    for i in 0..10u32 {
        let response = legs(&p, "AC1").await;
        assert_eq!(response.status(), StatusCode::OK, "request {i}");
        assert_eq!(header(&response, "x-ratelimit-limit"), "10");
        assert_eq!(
            header(&response, "x-ratelimit-remaining"),
            (9 - i).to_string()
        );
    }
    let refused = legs(&p, "AC1").await;
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    // One request's worth of the burst comes back every 100 ms.
    assert_eq!(header(&refused, "retry-after"), "1");
    assert_eq!(header(&refused, "x-ratelimit-remaining"), "0");
    // Other categories and other accounts count on their own.
    for path in [
        "/v2/accounts/AC1/bridges",
        "/v2/accounts/AC1/actions/a1",
        "/v2/accounts/AC1/events",
        "/v2/accounts/AC2/legs/L1",
    ] {
        let response = p.send("GET", path, &[]).await;
        assert_eq!(response.status(), StatusCode::OK, "{path}");
        assert_eq!(header(&response, "x-ratelimit-remaining"), "9", "{path}");
    }
    at(&p, 0, 100);
    assert_eq!(legs(&p, "AC1").await.status(), StatusCode::OK);
}

#[tokio::test]
async fn the_sustained_limit_is_100_a_minute() {
    let p = exotel();
    // Ten a second, each second: the burst refills every second, and the
    // minute earns back one request every 0.6 s. After 11 full seconds the
    // minute's debt is 55 s of its 60: room for 8 more, not 10.
    for second in 0..=10 {
        at(&p, second, 0);
        for _ in 0..10 {
            assert_eq!(
                legs(&p, "AC1").await.status(),
                StatusCode::OK,
                "second {second}"
            );
        }
    }
    at(&p, 11, 0);
    for _ in 0..8 {
        assert_eq!(legs(&p, "AC1").await.status(), StatusCode::OK);
    }
    let refused = legs(&p, "AC1").await;
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    // The minute refuses (the second still has room): it is the one reported.
    assert_eq!(header(&refused, "x-ratelimit-limit"), "100");
    assert_eq!(header(&refused, "retry-after"), "1");
    // 0.4 s later the minute has room again.
    at(&p, 11, 400);
    assert_eq!(legs(&p, "AC1").await.status(), StatusCode::OK);
}

#[tokio::test]
async fn the_refusal_is_exotels_body_with_the_response_request_id() {
    let p = exotel();
    for _ in 0..10 {
        legs(&p, "AC1").await;
    }
    let refused = p
        .send(
            "GET",
            "/v2/accounts/AC1/legs",
            &[("x-request-id", "xyz123")],
        )
        .await;
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(header(&refused, "content-type"), "application/json");
    assert_eq!(header(&refused, "x-request-id"), "xyz123");
    assert_eq!(
        body(refused).await,
        json!({"request_id": "xyz123", "http_code": 429,
            "response": {"error": {"code": "rate_limit_exceeded",
                "message": "rate limit exceeded please retry after some time"}}})
    );
    let refused = legs(&p, "AC1").await;
    let id = header(&refused, "x-request-id");
    assert_eq!(body(refused).await["request_id"], json!(id));
}

#[tokio::test]
async fn a_refused_request_spends_nothing_in_either_window() {
    let p = exotel();
    for _ in 0..10 {
        legs(&p, "AC1").await;
    }
    for _ in 0..5 {
        assert_eq!(
            legs(&p, "AC1").await.status(),
            StatusCode::TOO_MANY_REQUESTS
        );
    }
    at(&p, 1, 0);
    let response = legs(&p, "AC1").await;
    let decision = response
        .extensions()
        .get::<tower_ratelimit::Decision>()
        .unwrap();
    let minute = decision.windows().iter().find(|w| w.period == 60).unwrap();
    // 11 admitted in all, one earned back in the second that passed.
    assert_eq!((minute.limit, minute.remaining), (100, 100 - 11 + 1));
}

#[tokio::test]
async fn repeated_violations_throttle_the_account_for_300_seconds() {
    let p = exotel();
    for _ in 0..10 {
        legs(&p, "AC1").await;
    }
    for i in 0..19 {
        let refused = legs(&p, "AC1").await;
        assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(header(&refused, "retry-after"), "1", "refusal {i}");
    }
    // The 20th refusal within 60 s throttles the account.
    let throttled = legs(&p, "AC1").await;
    assert_eq!(throttled.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(header(&throttled, "retry-after"), "300");
    let id = header(&throttled, "x-request-id");
    assert_eq!(
        body(throttled).await,
        json!({"request_id": id, "http_code": 429,
            "response": {"error": {"code": "rate_limit_exceeded",
                "message": "temporarily throttled after repeated rate limit violations please retry after some time"}}})
    );
    // Every request of the account is refused, in every category, with the
    // time left; other accounts are not.
    at(&p, 100, 0);
    let refused = p.send("GET", "/v2/accounts/AC1/bridges", &[]).await;
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(header(&refused, "retry-after"), "200");
    assert_eq!(legs(&p, "AC2").await.status(), StatusCode::OK);
    at(&p, 299, 0);
    assert_eq!(
        legs(&p, "AC1").await.status(),
        StatusCode::TOO_MANY_REQUESTS
    );
    at(&p, 300, 0);
    assert_eq!(legs(&p, "AC1").await.status(), StatusCode::OK);
}

#[tokio::test]
async fn refusals_spread_over_more_than_60_seconds_do_not_throttle() {
    let p = exotel();
    // 19 refusals now, 19 more after the 60 s: never 20 within 60 s.
    for start in [0, 61] {
        at(&p, start, 0);
        for _ in 0..10 {
            legs(&p, "AC1").await;
        }
        for _ in 0..19 {
            let refused = legs(&p, "AC1").await;
            assert_eq!(header(&refused, "retry-after"), "1");
        }
    }
    at(&p, 62, 0);
    assert_eq!(legs(&p, "AC1").await.status(), StatusCode::OK);
}

#[tokio::test(start_paused = true)]
async fn one_action_at_a_time_per_leg_and_per_bridge() {
    let p = exotel();
    for (path, other) in [
        (
            "/v2/accounts/AC1/legs/L1/actions",
            "/v2/accounts/AC1/legs/L2/actions",
        ),
        (
            "/v2/accounts/AC1/bridges/B1/actions",
            "/v2/accounts/AC1/bridges/B2/actions",
        ),
    ] {
        let served = p.served();
        let first = tokio::spawn(p.send("POST", &format!("{path}?hold_ms=1000"), &[]));
        while p.served() < served + 1 {
            tokio::task::yield_now().await;
        }
        let busy = p.send("POST", path, &[("x-request-id", "r2")]).await;
        assert_eq!(busy.status(), StatusCode::TOO_MANY_REQUESTS, "{path}");
        assert_eq!(header(&busy, "retry-after"), "1");
        assert_eq!(header(&busy, "x-ratelimit-limit"), "1");
        assert_eq!(header(&busy, "x-ratelimit-remaining"), "0");
        assert_eq!(
            body(busy).await,
            json!({"request_id": "r2", "http_code": 429,
                "response": {"error": {"code": "rate_limit_exceeded",
                    "message": "too many concurrent requests please retry after some time"}}})
        );
        // Another leg (bridge) is free; the refused action reached nothing.
        assert_eq!(p.send("POST", other, &[]).await.status(), StatusCode::OK);
        assert_eq!(p.served(), served + 2);
        // Another account naming the same id names a leg (bridge) of its
        // own: it neither waits for the first action nor holds its slot.
        let elsewhere = path.replace("AC1", "AC2");
        assert_eq!(
            p.send("POST", &elsewhere, &[]).await.status(),
            StatusCode::OK
        );
        assert_eq!(p.served(), served + 3);
        // Once the first action is done, the leg (bridge) takes the next.
        assert_eq!(first.await.unwrap().status(), StatusCode::OK);
        tokio::time::advance(Duration::from_millis(1)).await;
        assert_eq!(p.send("POST", path, &[]).await.status(), StatusCode::OK);
    }
}

#[tokio::test]
async fn paths_outside_an_account_are_not_limited() {
    let p = exotel();
    for _ in 0..50 {
        let response = p.send_any("GET", "/v1/health", &[]).await;
        assert_eq!(response.status(), StatusCode::OK);
        assert!(!response.headers().contains_key("x-ratelimit-limit"));
    }
    assert_eq!(p.served(), 50);
}
