//! Flireo's published policy, from `demo/policies/flireo.toml`, behaves
//! as its page says: 100 requests per minute per API key, call control 10
//! commands per minute per active call on top of it, the `X-RateLimit-*`
//! trio on every response, and a 429 with `Retry-After` and Flireo's body.

use std::sync::atomic::Ordering;

use http::StatusCode;
use http_body_util::BodyExt;
use serde_json::json;

use crate::platform::{body, header, Platform, Res, NS};

/// The page's example: `X-RateLimit-Reset: 1702479600`, a minute boundary.
const RESET: u64 = 1_702_479_600;
/// 15 s into the minute that ends at `RESET`, so a refusal says 45 seconds.
const T0: u64 = RESET - 45;

struct Flireo(Platform);

impl std::ops::Deref for Flireo {
    type Target = Platform;

    fn deref(&self) -> &Platform {
        &self.0
    }
}

impl Flireo {
    fn new() -> Self {
        Flireo(Platform::new("flireo", T0))
    }

    async fn send(&self, method: &str, path: &str, authorization: Option<&str>) -> Res {
        match authorization {
            Some(value) => self.0.send(method, path, &[("authorization", value)]).await,
            None => self.0.send(method, path, &[]).await,
        }
    }

    async fn get(&self, key: &str) -> Res {
        self.send("GET", "/agents", Some(&format!("Bearer {key}")))
            .await
    }

    async fn control(&self, key: &str, call: &str) -> Res {
        self.send(
            "POST",
            &format!("/calls/{call}/control"),
            Some(&format!("Bearer {key}")),
        )
        .await
    }
}

#[tokio::test]
async fn each_api_key_gets_100_requests_a_minute() {
    let f = Flireo::new();
    for i in 0..100u32 {
        let response = f.get("key_a").await;
        assert_eq!(response.status(), StatusCode::OK, "request {i}");
        assert_eq!(header(&response, "x-ratelimit-limit"), "100");
        assert_eq!(
            header(&response, "x-ratelimit-remaining"),
            (99 - i).to_string()
        );
        assert_eq!(header(&response, "x-ratelimit-reset"), RESET.to_string());
    }
    assert_eq!(f.get("key_a").await.status(), StatusCode::TOO_MANY_REQUESTS);
    // Another key has its own 100.
    assert_eq!(header(&f.get("key_b").await, "x-ratelimit-remaining"), "99");
    // The next minute starts afresh.
    f.clock.set(RESET * NS);
    assert_eq!(header(&f.get("key_a").await, "x-ratelimit-remaining"), "99");
}

#[tokio::test]
async fn the_refusal_is_the_published_429() {
    let f = Flireo::new();
    for _ in 0..100 {
        f.get("key_a").await;
    }
    let refused = f.get("key_a").await;
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(header(&refused, "x-ratelimit-limit"), "100");
    assert_eq!(header(&refused, "x-ratelimit-remaining"), "0");
    assert_eq!(header(&refused, "x-ratelimit-reset"), "1702479600");
    assert_eq!(header(&refused, "retry-after"), "45");
    assert_eq!(header(&refused, "content-type"), "application/json");
    let bytes = refused.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(
        &bytes[..],
        br#"{"error":{"code":"rate_limit_exceeded","message":"Too many requests. Please retry after 45 seconds."}}"#
    );
    // Retry-After is honest: 45 s later the key is admitted again.
    f.clock.advance(std::time::Duration::from_secs(45));
    assert_eq!(f.get("key_a").await.status(), StatusCode::OK);
}

#[tokio::test]
async fn between_whole_seconds_the_refusal_still_resets_when_the_minute_does() {
    // A real clock is never on a whole second: 44.7 s before the boundary,
    // the wait says 45 and the reset is still the boundary, as on the
    // admitted responses of the same minute.
    let f = Flireo::new();
    f.clock.set(RESET * NS - 44_700_000_000);
    for _ in 0..100 {
        let admitted = f.get("key_a").await;
        assert_eq!(header(&admitted, "x-ratelimit-reset"), RESET.to_string());
    }
    let refused = f.get("key_a").await;
    assert_eq!(header(&refused, "retry-after"), "45");
    assert_eq!(header(&refused, "x-ratelimit-reset"), RESET.to_string());
    f.clock.set(RESET * NS);
    assert_eq!(f.get("key_a").await.status(), StatusCode::OK);
}

#[tokio::test]
async fn call_control_is_10_commands_a_minute_per_call_on_top_of_the_key_limit() {
    let f = Flireo::new();
    for i in 0..10u32 {
        let response = f.control("key_a", "call_1").await;
        assert_eq!(response.status(), StatusCode::OK, "command {i}");
        // The call's window is the most restrictive one, so it is reported.
        assert_eq!(header(&response, "x-ratelimit-limit"), "10");
        assert_eq!(
            header(&response, "x-ratelimit-remaining"),
            (9 - i).to_string()
        );
    }
    let refused = f.control("key_a", "call_1").await;
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(header(&refused, "retry-after"), "45");
    assert_eq!(
        body(refused).await,
        json!({"error": {"code": "rate_limit_exceeded",
            "message": "Too many requests. Please retry after 45 seconds."}})
    );
    // Refused commands consumed none of the key's 100: 10 spent so far.
    for _ in 0..5 {
        assert_eq!(
            f.control("key_a", "call_1").await.status(),
            StatusCode::TOO_MANY_REQUESTS
        );
    }
    assert_eq!(header(&f.get("key_a").await, "x-ratelimit-remaining"), "89");
    // Another call has its own 10; the limit is the call's, whoever sends.
    assert_eq!(f.control("key_a", "call_2").await.status(), StatusCode::OK);
    assert_eq!(
        f.control("key_b", "call_1").await.status(),
        StatusCode::TOO_MANY_REQUESTS
    );
    // Other requests on the call's path are not call control.
    assert_eq!(
        f.send("GET", "/calls/call_1", Some("Bearer key_a"))
            .await
            .status(),
        StatusCode::OK
    );
}

#[tokio::test]
async fn a_key_that_is_out_of_requests_cannot_send_commands_either() {
    let f = Flireo::new();
    for _ in 0..100 {
        f.get("key_a").await;
    }
    let refused = f.control("key_a", "call_1").await;
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(header(&refused, "x-ratelimit-limit"), "100");
    // The refused command consumed nothing of the call's 10.
    assert_eq!(
        header(&f.control("key_b", "call_1").await, "x-ratelimit-remaining"),
        "9"
    );
}

#[tokio::test]
async fn requests_without_a_usable_key_get_401_and_are_not_counted() {
    let f = Flireo::new();
    for authorization in [
        None,
        Some("Basic a2V5"),
        Some("Bearer "),
        Some("Bearer a b"),
    ] {
        let headers: &[(&str, &str)] = match &authorization {
            Some(value) => &[("authorization", value)],
            None => &[],
        };
        let response = f.send_any("GET", "/agents", headers).await;
        assert_eq!(
            response.status(),
            StatusCode::UNAUTHORIZED,
            "{authorization:?}"
        );
        // Nothing was counted, so no quota is reported.
        for name in [
            "x-ratelimit-limit",
            "x-ratelimit-remaining",
            "x-ratelimit-reset",
        ] {
            assert!(!response.headers().contains_key(name), "{name}");
        }
        let error = body(response).await;
        assert!(error["error"]["code"].is_string(), "{error}");
    }
    assert_eq!(f.calls.load(Ordering::SeqCst), 0);
    assert_eq!(header(&f.get("key_a").await, "x-ratelimit-remaining"), "99");
}
