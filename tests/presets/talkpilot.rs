//! TalkPilot's published policy, from `demo/policies/talkpilot.toml`,
//! behaves as its page says: per `X-API-Key` (never per IP), 60 a minute and
//! 1,000 an hour, both; the headers report the minute window; keys can have
//! their own limits; a 429 with `Retry-After` and TalkPilot's body, whose
//! `request_id` is the response's `x-request-id`.

use http::StatusCode;
use serde_json::json;
use tower_ratelimit::{Decision, Quota, Window};

use crate::platform::{body, header, Platform, NS};

/// The page's example: `X-RateLimit-Reset: 1711108920`, a minute boundary.
const RESET: u64 = 1_711_108_920;
/// 42 s into the minute that ends at `RESET`, so a refusal says 18 seconds.
const T0: u64 = RESET - 18;
/// The start of the hour `RESET` is in.
const HOUR: u64 = 1_711_108_800;

fn talkpilot(at: u64) -> Platform {
    Platform::new("talkpilot", at)
}

async fn get(p: &Platform, key: &str) -> crate::platform::Res {
    p.send("GET", "/agents", &[("x-api-key", key)]).await
}

#[tokio::test]
async fn each_key_gets_60_requests_a_minute_and_the_headers_say_so() {
    let p = talkpilot(T0);
    for i in 0..60u32 {
        let response = get(&p, "tp_a").await;
        assert_eq!(response.status(), StatusCode::OK, "request {i}");
        assert_eq!(header(&response, "x-ratelimit-limit"), "60");
        assert_eq!(
            header(&response, "x-ratelimit-remaining"),
            (59 - i).to_string()
        );
        assert_eq!(header(&response, "x-ratelimit-reset"), RESET.to_string());
    }
    let refused = get(&p, "tp_a").await;
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    // The page's example refusal, header for header.
    assert_eq!(header(&refused, "retry-after"), "18");
    assert_eq!(header(&refused, "x-ratelimit-limit"), "60");
    assert_eq!(header(&refused, "x-ratelimit-remaining"), "0");
    assert_eq!(header(&refused, "x-ratelimit-reset"), "1711108920");
    // Another key has its own quota.
    assert_eq!(
        header(&get(&p, "tp_b").await, "x-ratelimit-remaining"),
        "59"
    );
    // Retry-After is honest: 18 s later the key is admitted again.
    p.clock.set(RESET * NS);
    assert_eq!(get(&p, "tp_a").await.status(), StatusCode::OK);
}

#[tokio::test]
async fn the_refusal_body_carries_the_request_id_of_the_response() {
    let p = talkpilot(T0);
    for _ in 0..60 {
        get(&p, "tp_a").await;
    }
    // The client's own request id is kept ...
    let refused = p
        .send(
            "GET",
            "/agents",
            &[("x-api-key", "tp_a"), ("x-request-id", "req_abc123")],
        )
        .await;
    assert_eq!(header(&refused, "content-type"), "application/json");
    assert_eq!(header(&refused, "x-request-id"), "req_abc123");
    assert_eq!(
        body(refused).await,
        json!({"error": {"code": "RATE_LIMITED",
            "message": "Rate limit exceeded. Try again in 18 seconds.",
            "request_id": "req_abc123"}})
    );
    // ... and a request without one gets a fresh `req_…` id, the same in the
    // header and the body.
    let refused = get(&p, "tp_a").await;
    let id = header(&refused, "x-request-id");
    assert!(id.starts_with("req_") && id.len() > 4, "{id}");
    let body = body(refused).await;
    assert_eq!(body["error"]["request_id"], json!(id));
    assert_eq!(body["error"]["code"], json!("RATE_LIMITED"));
}

#[tokio::test]
async fn the_hour_allows_1000_whatever_the_minutes_allow() {
    let p = talkpilot(HOUR);
    for minute in 0..16u64 {
        p.clock.set((HOUR + minute * 60) * NS);
        for _ in 0..60 {
            assert_eq!(get(&p, "tp_a").await.status(), StatusCode::OK);
        }
    }
    p.clock.set((HOUR + 16 * 60) * NS);
    for i in 0..40u32 {
        let response = get(&p, "tp_a").await;
        assert_eq!(response.status(), StatusCode::OK, "request {}", 960 + i);
        // The headers keep reporting the minute window.
        assert_eq!(header(&response, "x-ratelimit-limit"), "60");
        assert_eq!(
            header(&response, "x-ratelimit-remaining"),
            (59 - i).to_string()
        );
    }
    // Request 1,001 is refused by the hour, though the minute has room: the
    // client waits for the hour, and the minute's reset says so too.
    let refused = get(&p, "tp_a").await;
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    let wait = 3600 - 16 * 60;
    assert_eq!(header(&refused, "retry-after"), wait.to_string());
    assert_eq!(header(&refused, "x-ratelimit-limit"), "60");
    assert_eq!(header(&refused, "x-ratelimit-remaining"), "0");
    assert_eq!(
        header(&refused, "x-ratelimit-reset"),
        (HOUR + 3600).to_string()
    );
    assert_eq!(
        body(refused).await["error"]["message"],
        json!(format!("Rate limit exceeded. Try again in {wait} seconds."))
    );
    // The next hour starts afresh.
    p.clock.set((HOUR + 3600) * NS);
    assert_eq!(get(&p, "tp_a").await.status(), StatusCode::OK);
}

#[tokio::test]
async fn a_refusal_by_the_minute_spends_nothing_of_the_hour() {
    let p = talkpilot(HOUR);
    for _ in 0..60 {
        get(&p, "tp_a").await;
    }
    for _ in 0..100 {
        assert_eq!(
            get(&p, "tp_a").await.status(),
            StatusCode::TOO_MANY_REQUESTS
        );
    }
    p.clock.set((HOUR + 60) * NS);
    let response = get(&p, "tp_a").await;
    let decision = response.extensions().get::<Decision>().unwrap();
    let hour = decision
        .windows()
        .iter()
        .find(|w| w.period == 3600)
        .unwrap();
    assert_eq!((hour.limit, hour.remaining), (1000, 1000 - 61));
}

#[tokio::test]
async fn a_key_with_its_own_limits_gets_them() {
    let p = talkpilot(T0);
    for i in 0..120u32 {
        let response = get(&p, "tp_custom").await;
        assert_eq!(response.status(), StatusCode::OK, "request {i}");
        assert_eq!(header(&response, "x-ratelimit-limit"), "120");
        assert_eq!(
            header(&response, "x-ratelimit-remaining"),
            (119 - i).to_string()
        );
    }
    let refused = get(&p, "tp_custom").await;
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(header(&refused, "retry-after"), "18");
    let decision = refused.extensions().get::<Decision>().unwrap();
    let hour = decision
        .windows()
        .iter()
        .find(|w| w.period == 3600)
        .unwrap();
    assert_eq!(hour.limit, 5000);
}

#[tokio::test]
async fn a_key_created_later_gets_its_limits_on_its_next_request() {
    let p = talkpilot(T0);
    for _ in 0..30 {
        get(&p, "tp_new").await;
    }
    let custom = Quota::new(Window::per_minute(40))
        .and(Window::per_hour(2000))
        .algorithm(tower_ratelimit::Algorithm::FixedWindow);
    p.layer
        .overrides()
        .set_quota("per_key", "tp_new", custom)
        .unwrap();
    // Its 30 requests of this minute still count, now against 40.
    let response = get(&p, "tp_new").await;
    assert_eq!(header(&response, "x-ratelimit-limit"), "40");
    assert_eq!(header(&response, "x-ratelimit-remaining"), "9");
    for _ in 0..9 {
        assert_eq!(get(&p, "tp_new").await.status(), StatusCode::OK);
    }
    assert_eq!(
        get(&p, "tp_new").await.status(),
        StatusCode::TOO_MANY_REQUESTS
    );
}

#[tokio::test]
async fn limits_are_per_key_never_per_ip() {
    let p = talkpilot(T0);
    for i in 0..60 {
        let ip = format!("10.0.0.{i}");
        let response = p
            .send(
                "GET",
                "/agents",
                &[("x-api-key", "tp_a"), ("x-forwarded-for", &ip)],
            )
            .await;
        assert_eq!(response.status(), StatusCode::OK);
    }
    let other_ip = p
        .send(
            "GET",
            "/agents",
            &[("x-api-key", "tp_a"), ("x-forwarded-for", "192.0.2.1")],
        )
        .await;
    assert_eq!(other_ip.status(), StatusCode::TOO_MANY_REQUESTS);
    // One client address with two keys: two quotas.
    let second_key = p
        .send(
            "GET",
            "/agents",
            &[("x-api-key", "tp_b"), ("x-forwarded-for", "10.0.0.1")],
        )
        .await;
    assert_eq!(second_key.status(), StatusCode::OK);
}

#[tokio::test]
async fn requests_without_a_usable_key_get_401_and_are_not_counted() {
    let p = talkpilot(T0);
    for headers in [
        &[][..],
        &[("x-api-key", "")][..],
        &[("x-api-key", "a"), ("x-api-key", "b")][..],
    ] {
        let response = p.send_any("GET", "/agents", headers).await;
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "{headers:?}");
        // Nothing was counted, so no quota is reported.
        assert!(!response.headers().contains_key("x-ratelimit-limit"));
        assert!(body(response).await["error"]["code"].is_string());
    }
    assert_eq!(p.served(), 0);
    assert_eq!(
        header(&get(&p, "tp_a").await, "x-ratelimit-remaining"),
        "59"
    );
}
