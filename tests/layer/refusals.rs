//! Refusals through the public API: each built-in body byte for byte with
//! the real retry seconds, request ids, the refusal status, custom formats,
//! gRPC answers, and the headers every refusal carries.

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode};
use http_body_util::BodyExt;
use serde_json::{json, Value};
use tower::util::BoxCloneService;
use tower::{service_fn, Layer, ServiceExt};
use tower_ratelimit::key::Header;
use tower_ratelimit::penalty::Penalty;
use tower_ratelimit::{
    CustomBody, Decision, Limit, Policy, PolicyBuilder, Quota, RateLimitLayer, RefusalFormat,
    ResponseBody, Window,
};

type Svc = BoxCloneService<Request<String>, Response<ResponseBody<String>>, Infallible>;

struct Harness {
    svc: Svc,
    layer: RateLimitLayer,
    calls: Arc<AtomicUsize>,
}

struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
    decision: Option<Decision>,
}

impl Reply {
    fn text(&self) -> &str {
        std::str::from_utf8(&self.body).expect("a UTF-8 body")
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }

    fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .unwrap_or_else(|| panic!("no {name} header in {:?}", self.headers))
            .to_str()
            .unwrap()
    }
}

impl Harness {
    /// A limit of 1 request per minute per `X-API-Key`, with `configure`
    /// applied to the policy.
    fn new(configure: impl FnOnce(PolicyBuilder) -> PolicyBuilder) -> Self {
        let builder = Policy::builder().limit(
            Limit::new("per_key", Header::parse("X-API-Key").unwrap())
                .quota(Quota::new(Window::per_minute(1))),
        );
        Self::with_policy(configure(builder).build().unwrap())
    }

    fn with_policy(policy: Policy) -> Self {
        let calls = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&calls);
        let inner = service_fn(move |_req: Request<String>| {
            let counter = Arc::clone(&counter);
            async move {
                counter.fetch_add(1, Ordering::SeqCst);
                Ok::<_, Infallible>(Response::new(String::from("inner")))
            }
        });
        let layer = RateLimitLayer::new(policy).decision_extensions(true);
        Harness {
            svc: BoxCloneService::new(layer.layer(inner)),
            layer,
            calls,
        }
    }

    async fn send(&self, request: Request<String>) -> Reply {
        let response = self.svc.clone().oneshot(request).await.unwrap();
        let (parts, body) = response.into_parts();
        Reply {
            status: parts.status,
            decision: parts.extensions.get::<Decision>().cloned(),
            headers: parts.headers,
            body: body.collect().await.unwrap().to_bytes(),
        }
    }

    /// Spends the key's one request, waits `after` seconds, and returns the
    /// refusal of `request` (so the retry is `60 - after` seconds).
    async fn refusal_after(&self, after: u64, request: Request<String>) -> Reply {
        let first = self.send(key_request().body(String::new()).unwrap()).await;
        assert_eq!(first.status, StatusCode::OK);
        tokio::time::advance(Duration::from_secs(after)).await;
        let reply = self.send(request).await;
        assert_eq!(
            self.calls(),
            1,
            "the inner service is never called on a refusal"
        );
        reply
    }

    async fn refusal_in(&self, retry: u64) -> Reply {
        self.refusal_after(60 - retry, key_request().body(String::new()).unwrap())
            .await
    }

    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    fn now_secs_ceil(&self) -> u64 {
        self.layer.now().div_ceil(1_000_000_000)
    }
}

fn key_request() -> http::request::Builder {
    Request::get("/v1/calls").header("x-api-key", "k_1")
}

#[track_caller]
fn assert_body(reply: &Reply, status: StatusCode, content_type: &str, bytes: &str) {
    assert_eq!(reply.status, status);
    assert_eq!(reply.header("content-type"), content_type);
    assert_eq!(reply.text(), bytes);
    let parsed: Value = serde_json::from_str(bytes).unwrap();
    assert_eq!(reply.json(), parsed);
}

mod built_in_formats {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn json_is_the_default_with_code_message_and_retry_after() {
        let h = Harness::new(|b| b);
        let reply = h.refusal_in(12).await;
        assert_body(
            &reply,
            StatusCode::TOO_MANY_REQUESTS,
            "application/json",
            r#"{"error":{"code":"rate_limit_exceeded","message":"Rate limit exceeded. Try again in 12 seconds.","retry_after":12}}"#,
        );
        assert_eq!(reply.header("retry-after"), "12");
    }

    #[tokio::test(start_paused = true)]
    async fn json_says_one_second_in_the_singular() {
        let policy = Policy::builder()
            .limit(
                Limit::new("per_key", Header::parse("X-API-Key").unwrap())
                    .quota(Quota::new(Window::per_second(1))),
            )
            .build()
            .unwrap();
        let h = Harness::with_policy(policy);
        assert_eq!(
            h.send(key_request().body(String::new()).unwrap())
                .await
                .status,
            StatusCode::OK
        );
        let reply = h.send(key_request().body(String::new()).unwrap()).await;
        assert_body(
            &reply,
            StatusCode::TOO_MANY_REQUESTS,
            "application/json",
            r#"{"error":{"code":"rate_limit_exceeded","message":"Rate limit exceeded. Try again in 1 second.","retry_after":1}}"#,
        );
        assert_eq!(reply.header("retry-after"), "1");
    }

    #[tokio::test(start_paused = true)]
    async fn problem_json_is_rfc_9457_with_its_content_type() {
        let h = Harness::new(|b| b.refusal(RefusalFormat::problem_json()));
        let reply = h.refusal_in(12).await;
        assert_body(
            &reply,
            StatusCode::TOO_MANY_REQUESTS,
            "application/problem+json",
            r#"{"type":"about:blank","title":"Too Many Requests","status":429,"detail":"Rate limit exceeded. Try again in 12 seconds.","retry_after":12}"#,
        );
    }

    #[tokio::test(start_paused = true)]
    async fn flireo_body_is_the_published_one_with_the_real_seconds() {
        let h = Harness::new(|b| b.refusal(RefusalFormat::named("flireo").unwrap()));
        let reply = h.refusal_in(45).await;
        // Exactly the page's example, which also says 45 seconds.
        assert_body(
            &reply,
            StatusCode::TOO_MANY_REQUESTS,
            "application/json",
            r#"{"error":{"code":"rate_limit_exceeded","message":"Too many requests. Please retry after 45 seconds."}}"#,
        );
        let published = json!({
          "error": {
            "code": "rate_limit_exceeded",
            "message": "Too many requests. Please retry after 45 seconds."
          }
        });
        assert_eq!(reply.json(), published);
        assert_eq!(reply.header("retry-after"), "45");

        let h = Harness::new(|b| b.refusal(RefusalFormat::named("flireo").unwrap()));
        let reply = h.refusal_in(7).await;
        assert_eq!(
            reply.text(),
            r#"{"error":{"code":"rate_limit_exceeded","message":"Too many requests. Please retry after 7 seconds."}}"#
        );
    }

    #[tokio::test(start_paused = true)]
    async fn nixflex_body_is_the_published_one_with_the_real_seconds() {
        let h = Harness::new(|b| b.refusal(RefusalFormat::named("nixflex").unwrap()));
        let reply = h.refusal_in(12).await;
        assert_body(
            &reply,
            StatusCode::TOO_MANY_REQUESTS,
            "application/json",
            r#"{"error":{"type":"rate_limit_error","code":"rate_limit_exceeded","message":"Rate limit exceeded. Try again in 12 seconds.","details":{"retry_after":12}}}"#,
        );
        let published = json!({
          "error": {
            "type": "rate_limit_error",
            "code": "rate_limit_exceeded",
            "message": "Rate limit exceeded. Try again in 12 seconds.",
            "details": {
              "retry_after": 12
            }
          }
        });
        assert_eq!(reply.json(), published);
        assert_eq!(reply.header("retry-after"), "12");
    }

    #[tokio::test(start_paused = true)]
    async fn talkpilot_body_is_the_published_one_with_the_requests_id() {
        let h = Harness::new(|b| b.refusal(RefusalFormat::named("talkpilot").unwrap()));
        let request = key_request()
            .header("x-request-id", "req_abc123")
            .body(String::new())
            .unwrap();
        let reply = h.refusal_after(42, request).await;
        assert_body(
            &reply,
            StatusCode::TOO_MANY_REQUESTS,
            "application/json",
            r#"{"error":{"code":"RATE_LIMITED","message":"Rate limit exceeded. Try again in 18 seconds.","request_id":"req_abc123"}}"#,
        );
        let published = json!({
          "error": {
            "code": "RATE_LIMITED",
            "message": "Rate limit exceeded. Try again in 18 seconds.",
            "request_id": "req_abc123"
          }
        });
        assert_eq!(reply.json(), published);
        assert_eq!(reply.header("x-request-id"), "req_abc123");
        assert_eq!(reply.header("retry-after"), "18");
    }

    #[tokio::test(start_paused = true)]
    async fn exotel_body_is_the_published_one_with_the_requests_id() {
        let h = Harness::new(|b| b.refusal(RefusalFormat::named("exotel").unwrap()));
        let request = key_request()
            .header("x-request-id", "xyz123")
            .body(String::new())
            .unwrap();
        let reply = h.refusal_after(30, request).await;
        assert_body(
            &reply,
            StatusCode::TOO_MANY_REQUESTS,
            "application/json",
            r#"{"request_id":"xyz123","http_code":429,"response":{"error":{"code":"rate_limit_exceeded","message":"rate limit exceeded please retry after some time"}}}"#,
        );
        assert_eq!(reply.header("x-request-id"), "xyz123");
        assert_eq!(reply.header("retry-after"), "30");
    }

    #[tokio::test(start_paused = true)]
    async fn formats_without_a_request_id_do_not_set_one() {
        for format in [
            RefusalFormat::json(),
            RefusalFormat::problem_json(),
            RefusalFormat::named("flireo").unwrap(),
            RefusalFormat::named("nixflex").unwrap(),
        ] {
            let h = Harness::new(|b| b.refusal(format.clone()));
            let reply = h.refusal_in(10).await;
            assert!(reply.headers.get("x-request-id").is_none(), "{format:?}");
            assert!(!reply.text().contains("req_"), "{format:?}");
        }
    }

    #[test]
    fn policy_file_names_select_the_built_in_formats() {
        for (name, debug) in [
            ("json", "Json"),
            ("problem_json", "ProblemJson"),
            ("flireo", "Flireo"),
            ("nixflex", "Nixflex"),
            ("talkpilot", "TalkPilot"),
            ("exotel", "Exotel"),
        ] {
            let format = RefusalFormat::named(name).unwrap_or_else(|| panic!("{name}"));
            assert_eq!(format!("{format:?}"), debug);
        }
        assert!(RefusalFormat::named("Flireo ").is_none());
        assert!(RefusalFormat::named("xml").is_none());
    }
}

mod request_ids {
    use super::*;

    fn is_generated(id: &str) -> bool {
        id.len() > "req_".len()
            && id.starts_with("req_")
            && id["req_".len()..]
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    }

    async fn talkpilot_id(h: &Harness, request: Request<String>) -> String {
        let reply = h.send(request).await;
        assert_eq!(reply.status, StatusCode::TOO_MANY_REQUESTS);
        let header = reply.header("x-request-id").to_owned();
        assert_eq!(
            reply.json()["error"]["request_id"],
            Value::String(header.clone()),
            "the body's request_id is the response's x-request-id"
        );
        header
    }

    #[tokio::test(start_paused = true)]
    async fn without_an_incoming_id_one_is_generated_set_on_the_response_and_unique() {
        let h = Harness::new(|b| b.refusal(RefusalFormat::named("talkpilot").unwrap()));
        let reply = h.refusal_in(20).await;
        let first = reply.header("x-request-id").to_owned();
        assert!(is_generated(&first), "{first}");
        assert_eq!(
            reply.json()["error"]["request_id"],
            Value::String(first.clone())
        );
        let second = talkpilot_id(&h, key_request().body(String::new()).unwrap()).await;
        assert!(is_generated(&second), "{second}");
        assert_ne!(first, second, "two refusals get two ids");
    }

    #[tokio::test(start_paused = true)]
    async fn exotel_generated_id_is_in_body_and_header() {
        let h = Harness::new(|b| b.refusal(RefusalFormat::named("exotel").unwrap()));
        let reply = h.refusal_in(20).await;
        let id = reply.header("x-request-id").to_owned();
        assert!(is_generated(&id), "{id}");
        assert_eq!(reply.json()["request_id"], Value::String(id.clone()));
        let again = h.send(key_request().body(String::new()).unwrap()).await;
        assert_ne!(again.header("x-request-id"), id);
        assert_eq!(
            again.json()["request_id"],
            Value::String(again.header("x-request-id").to_owned())
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_valid_incoming_id_of_up_to_128_visible_characters_is_kept() {
        let h = Harness::new(|b| b.refusal(RefusalFormat::named("talkpilot").unwrap()));
        h.refusal_in(20).await;
        for id in [
            "a",
            "0f8fad5b-d9cb-469f-a165-70867728950e",
            &"x".repeat(128),
            "~!@#$%^&*()_+{}|:<>?",
        ] {
            let request = key_request()
                .header("x-request-id", id)
                .body(String::new())
                .unwrap();
            assert_eq!(talkpilot_id(&h, request).await, id);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn an_invalid_incoming_id_is_replaced_by_a_generated_one() {
        let h = Harness::new(|b| b.refusal(RefusalFormat::named("talkpilot").unwrap()));
        h.refusal_in(20).await;
        let too_long = "x".repeat(129);
        let bad: [(&str, HeaderValue); 5] = [
            ("too long", HeaderValue::from_str(&too_long).unwrap()),
            ("tab", HeaderValue::from_bytes(b"abc\tdef").unwrap()),
            ("space", HeaderValue::from_static("abc def")),
            ("non-ASCII", HeaderValue::from_bytes(b"abc\xffdef").unwrap()),
            ("empty", HeaderValue::from_static("")),
        ];
        for (what, value) in bad {
            let sent = value.clone();
            let request = key_request()
                .header("x-request-id", value)
                .body(String::new())
                .unwrap();
            let id = talkpilot_id(&h, request).await;
            assert!(is_generated(&id), "{what}: {id:?}");
            assert_ne!(id.as_bytes(), sent.as_bytes(), "{what}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn an_incoming_id_given_twice_is_not_echoed_as_two() {
        let h = Harness::new(|b| b.refusal(RefusalFormat::named("exotel").unwrap()));
        h.refusal_in(20).await;
        let request = key_request()
            .header("x-request-id", "id_one")
            .header("x-request-id", "id_two")
            .body(String::new())
            .unwrap();
        let reply = h.send(request).await;
        let ids: Vec<_> = reply.headers.get_all("x-request-id").iter().collect();
        assert_eq!(ids.len(), 1, "one x-request-id on the response");
        assert_eq!(
            reply.json()["request_id"].as_str().unwrap(),
            ids[0].to_str().unwrap()
        );
    }
}

mod status {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn refusal_status_is_the_status_and_exotels_http_code() {
        let h = Harness::new(|b| {
            b.refusal(RefusalFormat::named("exotel").unwrap())
                .refusal_status(StatusCode::SERVICE_UNAVAILABLE)
        });
        let request = key_request()
            .header("x-request-id", "xyz123")
            .body(String::new())
            .unwrap();
        let reply = h.refusal_after(30, request).await;
        assert_body(
            &reply,
            StatusCode::SERVICE_UNAVAILABLE,
            "application/json",
            r#"{"request_id":"xyz123","http_code":503,"response":{"error":{"code":"rate_limit_exceeded","message":"rate limit exceeded please retry after some time"}}}"#,
        );
        assert_eq!(reply.header("retry-after"), "30");
    }

    #[tokio::test(start_paused = true)]
    async fn refusal_status_is_used_by_every_format() {
        for format in [
            RefusalFormat::json(),
            RefusalFormat::named("flireo").unwrap(),
            RefusalFormat::named("nixflex").unwrap(),
            RefusalFormat::named("talkpilot").unwrap(),
        ] {
            let h = Harness::new(|b| {
                b.refusal(format.clone())
                    .refusal_status(StatusCode::SERVICE_UNAVAILABLE)
            });
            let reply = h.refusal_in(10).await;
            assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE, "{format:?}");
            assert_eq!(reply.header("retry-after"), "10", "{format:?}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn problem_json_status_and_title_follow_the_refusal_status() {
        // RFC 9457 4.2.1: with type "about:blank" the title SHOULD be the
        // status's reason phrase.
        let h = Harness::new(|b| {
            b.refusal(RefusalFormat::problem_json())
                .refusal_status(StatusCode::SERVICE_UNAVAILABLE)
        });
        let reply = h.refusal_in(10).await;
        assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(reply.header("content-type"), "application/problem+json");
        assert_eq!(reply.json()["status"], 503);
        assert_eq!(
            reply.json()["title"],
            "Service Unavailable",
            "the title matches the status"
        );
    }

    #[test]
    fn a_refusal_status_that_is_not_an_error_is_a_config_error() {
        for status in [StatusCode::OK, StatusCode::FOUND] {
            let error = Policy::builder()
                .limit(
                    Limit::new("per_key", Header::parse("X-API-Key").unwrap())
                        .quota(Quota::new(Window::per_minute(1))),
                )
                .refusal_status(status)
                .build()
                .unwrap_err();
            assert!(error.to_string().contains("refusal_status"), "{error}");
        }
    }
}

mod custom {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn custom_format_gets_the_refusal_and_writes_the_body() {
        let h = Harness::new(|b| {
            b.refusal(RefusalFormat::custom(|r| {
                assert!(!r.decision().is_admitted());
                assert_eq!(r.decision().retry_after(), Some(r.retry_after()));
                CustomBody::json(format!(
                    r#"{{"wait":{},"status":{}}}"#,
                    r.retry_after(),
                    r.status().as_u16()
                ))
            }))
        });
        let reply = h.refusal_in(45).await;
        assert_body(
            &reply,
            StatusCode::TOO_MANY_REQUESTS,
            "application/json",
            r#"{"wait":45,"status":429}"#,
        );
        assert!(
            reply.headers.get("x-request-id").is_none(),
            "only set when asked"
        );
        assert_eq!(reply.header("retry-after"), "45");
        assert_eq!(reply.header("x-ratelimit-remaining"), "0");
    }

    #[tokio::test(start_paused = true)]
    async fn custom_format_with_request_id_sets_the_header_it_used() {
        let h = Harness::new(|b| {
            b.refusal(RefusalFormat::custom(|r| {
                CustomBody::json(format!(r#"{{"id":"{}"}}"#, r.request_id())).with_request_id()
            }))
        });
        let reply = h.refusal_in(45).await;
        let id = reply.header("x-request-id").to_owned();
        assert!(id.starts_with("req_"), "{id}");
        assert_eq!(reply.text(), format!(r#"{{"id":"{id}"}}"#));

        let request = key_request()
            .header("x-request-id", "mine-1")
            .body(String::new())
            .unwrap();
        let reply = h.send(request).await;
        assert_eq!(reply.header("x-request-id"), "mine-1");
        assert_eq!(reply.text(), r#"{"id":"mine-1"}"#);
    }

    #[tokio::test(start_paused = true)]
    async fn custom_format_may_use_another_content_type() {
        let h = Harness::new(|b| {
            b.refusal(RefusalFormat::custom(|r| {
                CustomBody::new(
                    HeaderValue::from_static("text/plain; charset=utf-8"),
                    format!("slow down: {}s", r.retry_after()),
                )
            }))
        });
        let reply = h.refusal_in(5).await;
        assert_eq!(reply.status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(reply.header("content-type"), "text/plain; charset=utf-8");
        assert_eq!(reply.text(), "slow down: 5s");
    }
}

mod grpc {
    use super::*;

    fn grpc_request(content_type: &str) -> Request<String> {
        Request::post("/pkg.Service/Method")
            .header("x-api-key", "k_1")
            .header("content-type", content_type)
            .header("te", "trailers")
            .body(String::new())
            .unwrap()
    }

    /// A `grpc-message` value, percent-decoded.
    fn grpc_message(reply: &Reply) -> String {
        let raw = reply.header("grpc-message").as_bytes();
        let mut out = Vec::new();
        let mut i = 0;
        while i < raw.len() {
            if raw[i] == b'%' && i + 2 < raw.len() {
                let hex = std::str::from_utf8(&raw[i + 1..i + 3]).unwrap();
                out.push(u8::from_str_radix(hex, 16).unwrap());
                i += 3;
            } else {
                out.push(raw[i]);
                i += 1;
            }
        }
        String::from_utf8(out).unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn grpc_refusal_is_http_200_with_grpc_status_8_and_retry_after() {
        // gRPC-web too (its clients read a trailers-only answer's status
        // from its headers), in any case, answered in its own media type.
        for (content_type, answered) in [
            ("application/grpc", "application/grpc"),
            ("application/grpc+proto", "application/grpc"),
            ("Application/GRPC; charset=utf-8", "application/grpc"),
            ("application/grpc-web", "application/grpc-web"),
            ("application/grpc-web+proto", "application/grpc-web+proto"),
            ("APPLICATION/GRPC-WEB-TEXT", "application/grpc-web-text"),
            // Nothing else of the client's text comes back.
            ("application/grpc-web+x, text/html", "application/grpc-web"),
        ] {
            let h = Harness::new(|b| b.refusal(RefusalFormat::named("talkpilot").unwrap()));
            let reply = h.refusal_after(15, grpc_request(content_type)).await;
            assert_eq!(
                reply.status,
                StatusCode::OK,
                "gRPC errors travel in grpc-status"
            );
            assert_eq!(reply.header("grpc-status"), "8", "RESOURCE_EXHAUSTED");
            assert!(
                grpc_message(&reply).contains("45"),
                "{}",
                grpc_message(&reply)
            );
            assert_eq!(reply.header("content-type"), answered);
            assert_eq!(reply.header("retry-after"), "45");
            assert_eq!(reply.header("grpc-retry-pushback-ms"), "45000");
            assert_eq!(reply.header("x-ratelimit-limit"), "1");
            assert_eq!(reply.header("x-ratelimit-remaining"), "0");
            assert!(
                reply.body.is_empty(),
                "a trailers-only answer has no JSON body"
            );
        }
    }

    /// gRPC calls are `POST`s: a `GET` that claims a gRPC content type gets
    /// the HTTP answer, never a `200` that a cache in front could keep for
    /// its URL; and no answer of the limiter may be kept by a cache.
    #[tokio::test(start_paused = true)]
    async fn only_a_post_gets_the_grpc_answer_and_no_answer_is_cacheable() {
        let h = Harness::new(|b| b);
        let get = |key: Option<&str>| {
            let request = Request::get("/public/page").header("content-type", "application/grpc");
            match key {
                Some(key) => request.header("x-api-key", key),
                None => request,
            }
            .body(String::new())
            .unwrap()
        };
        let no_key = h.send(get(None)).await;
        assert_eq!(no_key.status, StatusCode::UNAUTHORIZED);
        assert!(!no_key.headers.contains_key("grpc-status"));
        assert_eq!(no_key.header("cache-control"), "no-store");
        let refused = h.refusal_after(0, get(Some("k_1"))).await;
        assert_eq!(refused.status, StatusCode::TOO_MANY_REQUESTS);
        assert!(!refused.headers.contains_key("grpc-status"));
        assert_eq!(refused.header("cache-control"), "no-store");
        let h = Harness::new(|b| b);
        let grpc = h.refusal_after(0, grpc_request("application/grpc")).await;
        assert_eq!(grpc.status, StatusCode::OK);
        assert_eq!(grpc.header("grpc-status"), "8");
        assert_eq!(grpc.header("cache-control"), "no-store");
    }

    #[tokio::test(start_paused = true)]
    async fn grpc_request_without_a_key_gets_grpc_status_16() {
        let h = Harness::new(|b| b);
        let request = Request::post("/pkg.Service/Method")
            .header("content-type", "application/grpc")
            .body(String::new())
            .unwrap();
        let reply = h.send(request).await;
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(reply.header("grpc-status"), "16", "UNAUTHENTICATED");
        // Retrying cannot help: no pushback invites it.
        assert!(!reply.headers.contains_key("grpc-retry-pushback-ms"));
        assert!(
            grpc_message(&reply).contains("X-API-Key"),
            "{}",
            grpc_message(&reply)
        );
        assert!(reply.body.is_empty());
        assert_eq!(h.calls(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_non_grpc_content_type_gets_the_json_body() {
        for content_type in [
            "application/json",
            "application/grpcx",
            "application/grpc-webx",
        ] {
            let h = Harness::new(|b| b);
            let request = key_request()
                .header("content-type", content_type)
                .body(String::new())
                .unwrap();
            let reply = h.refusal_after(0, request).await;
            assert_eq!(
                reply.status,
                StatusCode::TOO_MANY_REQUESTS,
                "{content_type}"
            );
            assert!(reply.headers.get("grpc-status").is_none());
            assert_eq!(reply.json()["error"]["retry_after"], 60);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_banned_grpc_request_hears_it_is_a_temporary_block() {
        let penalty = Penalty::new(1, Duration::from_secs(60), Duration::from_secs(600));
        let h = Harness::with_policy(
            Policy::builder()
                .limit(
                    Limit::new("per_key", Header::parse("X-API-Key").unwrap())
                        .quota(Quota::new(Window::per_minute(1)))
                        .penalty(penalty.unwrap()),
                )
                .build()
                .unwrap(),
        );
        let reply = h.refusal_after(0, grpc_request("application/grpc")).await;
        assert_eq!(reply.header("grpc-status"), "8");
        assert_eq!(
            grpc_message(&reply),
            "temporarily blocked after repeated rate-limit violations, retry after 600 seconds"
        );
        assert_eq!(reply.header("grpc-retry-pushback-ms"), "600000");
    }
}

mod headers {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_refusal_carries_x_ratelimit_and_an_honest_retry_after() {
        let h = Harness::new(|b| b.refusal(RefusalFormat::named("flireo").unwrap()));
        let reply = h.refusal_in(45).await;
        assert_eq!(reply.status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(reply.header("x-ratelimit-limit"), "1");
        assert_eq!(reply.header("x-ratelimit-remaining"), "0");
        assert_eq!(reply.header("retry-after"), "45");
        let reset: u64 = reply.header("x-ratelimit-reset").parse().unwrap();
        assert_eq!(
            reset,
            h.now_secs_ceil() + 45,
            "reset is when the retry is admitted"
        );
        let decision = reply
            .decision
            .as_ref()
            .expect("the decision is in the response's extensions");
        assert_eq!(decision.retry_after(), Some(45));
        assert!(!decision.is_admitted());

        // Refusals consume nothing and keep the same hint.
        tokio::time::advance(Duration::from_secs(44)).await;
        let still = h.send(key_request().body(String::new()).unwrap()).await;
        assert_eq!(still.header("retry-after"), "1");
        tokio::time::advance(Duration::from_secs(1)).await;
        let admitted = h.send(key_request().body(String::new()).unwrap()).await;
        assert_eq!(
            admitted.status,
            StatusCode::OK,
            "a request sent Retry-After later is admitted"
        );
        assert_eq!(h.calls(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn many_refusals_never_reach_the_inner_service() {
        for format in [
            RefusalFormat::json(),
            RefusalFormat::problem_json(),
            RefusalFormat::named("flireo").unwrap(),
            RefusalFormat::named("nixflex").unwrap(),
            RefusalFormat::named("talkpilot").unwrap(),
            RefusalFormat::named("exotel").unwrap(),
            RefusalFormat::custom(|_| CustomBody::json("{}")),
        ] {
            let h = Harness::new(|b| b.refusal(format.clone()));
            h.refusal_in(30).await;
            for _ in 0..20 {
                let reply = h.send(key_request().body(String::new()).unwrap()).await;
                assert_eq!(reply.status, StatusCode::TOO_MANY_REQUESTS, "{format:?}");
                assert_ne!(reply.text(), "inner", "{format:?}");
                assert!(reply.headers.get("retry-after").is_some(), "{format:?}");
                assert!(
                    reply.headers.get("x-ratelimit-reset").is_some(),
                    "{format:?}"
                );
            }
            assert_eq!(h.calls(), 1, "{format:?}");
        }
    }
}
