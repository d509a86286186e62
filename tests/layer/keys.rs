//! Keys through the public API: every unusable key is a clear 401 that is
//! not counted and never reaches the inner service; keys are isolated, path
//! keys are percent-decoded, fallbacks and forwarded addresses cannot be
//! abused, and raw keys never show.

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http::header::AUTHORIZATION;
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode};
use http_body_util::BodyExt;
use serde_json::Value;
use tower::util::BoxCloneService;
use tower::{service_fn, Layer, ServiceExt};
use tower_ratelimit::key::{
    Extension, FirstOf, ForwardedIp, Header, Key, KeyErrorKind, PathCapture, PeerIp, RequestView,
};
use tower_ratelimit::{
    Decision, Limit, Policy, PolicyBuilder, Quota, RateLimitLayer, ResponseBody, Window,
};

type Svc = BoxCloneService<Request<String>, Response<ResponseBody<String>>, Infallible>;

/// A layered service whose inner service counts its calls.
struct Harness {
    svc: Svc,
    calls: Arc<AtomicUsize>,
}

/// A response, read whole.
struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
    decision: Option<Decision>,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "body is not JSON ({e}): {:?}",
                String::from_utf8_lossy(&self.body)
            )
        })
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
    fn new(builder: PolicyBuilder) -> Self {
        let calls = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&calls);
        let inner = service_fn(move |_req: Request<String>| {
            let counter = Arc::clone(&counter);
            async move {
                counter.fetch_add(1, Ordering::SeqCst);
                Ok::<_, Infallible>(Response::new(String::from("inner")))
            }
        });
        let policy = builder.build().expect("the policy builds");
        Harness {
            svc: BoxCloneService::new(
                RateLimitLayer::new(policy)
                    .decision_extensions(true)
                    .layer(inner),
            ),
            calls,
        }
    }

    fn one_limit(limit: Limit) -> Self {
        Self::new(Policy::builder().limit(limit))
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

    async fn status(&self, request: Request<String>) -> StatusCode {
        self.send(request).await.status
    }

    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

fn get(path: &str) -> http::request::Builder {
    Request::get(path)
}

fn with_key(key: &str) -> Request<String> {
    get("/v1/calls")
        .header("x-api-key", key)
        .body(String::new())
        .unwrap()
}

fn per_minute(n: u32) -> Quota {
    Quota::new(Window::per_minute(n))
}

fn api_key() -> Header {
    Header::parse("X-API-Key").unwrap()
}

/// A request with the peer address a server would record.
fn from_peer(ip: &str, request: http::request::Builder) -> Request<String> {
    let mut request = request.body(String::new()).unwrap();
    let addr = SocketAddr::new(ip.parse::<IpAddr>().unwrap(), 40_000);
    request.extensions_mut().insert(addr);
    request
}

/// Checks a key-error answer: 401, JSON content type, exactly
/// `{"error":{"code","message"}}` with `code` and a message naming `source`.
#[track_caller]
fn assert_key_error(reply: &Reply, kind: KeyErrorKind, source: &str) {
    assert_eq!(
        reply.status,
        StatusCode::UNAUTHORIZED,
        "body: {:?}",
        reply.body
    );
    assert_eq!(reply.header("content-type"), "application/json");
    let body = reply.json();
    let error = body["error"].as_object().expect("an `error` object");
    assert_eq!(
        body.as_object().unwrap().len(),
        1,
        "only `error` at the top: {body}"
    );
    assert_eq!(error.len(), 2, "only `code` and `message`: {body}");
    assert_eq!(error["code"], kind.code(), "{body}");
    let message = error["message"].as_str().expect("a string message");
    assert!(
        message.contains(source),
        "the message `{message}` should name where the key was sought (`{source}`)"
    );
    assert!(
        reply.headers.get("retry-after").is_none(),
        "a key error is not a refusal"
    );
}

/// A global 1/minute limit in front of the limit under test: if a bad-key
/// request were counted anywhere, the next good request would be refused.
fn guarded(limit: Limit) -> Harness {
    Harness::new(
        Policy::builder()
            .limit(Limit::global("global").quota(per_minute(1)))
            .limit(limit),
    )
}

/// Sends `bad`, expects a key error of `kind` naming `source`, then proves
/// nothing was counted and the inner service was not called.
async fn rejects_uncounted(
    harness: &Harness,
    bad: Request<String>,
    kind: KeyErrorKind,
    source: &str,
    good: Request<String>,
) {
    let reply = harness.send(bad).await;
    assert_key_error(&reply, kind, source);
    assert_eq!(
        harness.calls(),
        0,
        "a bad key never reaches the inner service"
    );
    assert!(reply.decision.is_none(), "a bad key is not decided");
    let ok = harness.send(good).await;
    assert_eq!(
        ok.status,
        StatusCode::OK,
        "the bad-key request must not have been counted"
    );
    assert_eq!(ok.header("x-ratelimit-remaining"), "0");
    assert_eq!(harness.calls(), 1);
}

mod bad_keys {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn absent_header_is_401_missing_key_naming_the_header() {
        let h = guarded(Limit::new("per_key", api_key()).quota(per_minute(10)));
        let bad = get("/v1/calls").body(String::new()).unwrap();
        rejects_uncounted(
            &h,
            bad,
            KeyErrorKind::Missing,
            "X-API-Key header",
            with_key("k_1"),
        )
        .await;
    }

    #[tokio::test(start_paused = true)]
    async fn empty_header_is_401_empty_key() {
        let h = guarded(Limit::new("per_key", api_key()).quota(per_minute(10)));
        let bad = get("/v1/calls")
            .header("x-api-key", "")
            .body(String::new())
            .unwrap();
        rejects_uncounted(
            &h,
            bad,
            KeyErrorKind::Empty,
            "X-API-Key header",
            with_key("k_1"),
        )
        .await;
    }

    #[tokio::test(start_paused = true)]
    async fn header_of_only_spaces_is_401_empty_key() {
        let h = guarded(Limit::new("per_key", api_key()).quota(per_minute(10)));
        let bad = get("/v1/calls")
            .header("x-api-key", "   ")
            .body(String::new())
            .unwrap();
        rejects_uncounted(
            &h,
            bad,
            KeyErrorKind::Empty,
            "X-API-Key header",
            with_key("k_1"),
        )
        .await;
    }

    #[tokio::test(start_paused = true)]
    async fn non_utf8_header_is_401_invalid_key_encoding() {
        let h = guarded(Limit::new("per_key", api_key()).quota(per_minute(10)));
        let value = HeaderValue::from_bytes(&[0xff, 0xfe, b'k']).unwrap();
        let bad = get("/v1/calls")
            .header("x-api-key", value)
            .body(String::new())
            .unwrap();
        rejects_uncounted(
            &h,
            bad,
            KeyErrorKind::NotUtf8,
            "X-API-Key header",
            with_key("k_1"),
        )
        .await;
    }

    #[tokio::test(start_paused = true)]
    async fn key_over_the_default_4096_byte_cap_is_401_key_too_long() {
        let h = guarded(Limit::new("per_key", api_key()).quota(per_minute(10)));
        let long = "k".repeat(4097);
        let bad = get("/v1/calls")
            .header("x-api-key", long.as_str())
            .body(String::new())
            .unwrap();
        rejects_uncounted(
            &h,
            bad,
            KeyErrorKind::TooLong,
            "X-API-Key header",
            with_key(&"k".repeat(4096)),
        )
        .await;
    }

    #[tokio::test(start_paused = true)]
    async fn key_over_a_custom_max_key_len_is_401_and_at_the_cap_is_accepted() {
        let h = Harness::new(
            Policy::builder()
                .limit(Limit::global("global").quota(per_minute(1)))
                .limit(Limit::new("per_key", api_key()).quota(per_minute(10)))
                .max_key_len(8),
        );
        let bad = with_key("123456789");
        rejects_uncounted(
            &h,
            bad,
            KeyErrorKind::TooLong,
            "X-API-Key header",
            with_key("12345678"),
        )
        .await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_header_twice_with_different_values_is_401_conflicting_keys() {
        let h = guarded(Limit::new("per_key", api_key()).quota(per_minute(10)));
        let bad = get("/v1/calls")
            .header("x-api-key", "k_victim")
            .header("x-api-key", "k_attacker")
            .body(String::new())
            .unwrap();
        rejects_uncounted(
            &h,
            bad,
            KeyErrorKind::Conflicting,
            "X-API-Key header",
            with_key("k_1"),
        )
        .await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_header_twice_with_the_same_value_is_that_one_key() {
        let h = Harness::one_limit(Limit::new("per_key", api_key()).quota(per_minute(2)));
        let twice = get("/v1/calls")
            .header("x-api-key", "k_1")
            .header("x-api-key", "k_1")
            .body(String::new())
            .unwrap();
        let reply = h.send(twice).await;
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(reply.header("x-ratelimit-remaining"), "1");
        let once = h.send(with_key("k_1")).await;
        assert_eq!(
            once.header("x-ratelimit-remaining"),
            "0",
            "the doubled header counted against k_1"
        );
        assert_eq!(
            h.status(with_key("k_1")).await,
            StatusCode::TOO_MANY_REQUESTS
        );
    }

    /// A request with `pad` other headers, then `lines` of `X-API-Key`
    /// with other headers between them.
    fn among_others(pad: usize, lines: &[&str]) -> Request<String> {
        let mut request = get("/v1/calls");
        for i in 0..pad {
            request = request.header(format!("x-pad-{i}"), "v");
        }
        for (i, line) in lines.iter().enumerate() {
            request = request
                .header("x-api-key", *line)
                .header(format!("x-between-{i}"), "v");
        }
        request.body(String::new()).unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn key_lines_are_read_alike_among_few_or_many_other_headers() {
        // A few header lines are read one by one, many are looked up by
        // name: both find the one key, and both see a second line.
        for pad in [0, 3, 20] {
            let h = Harness::one_limit(Limit::new("per_key", api_key()).quota(per_minute(2)));
            let reply = h.send(among_others(pad, &["k_1"])).await;
            assert_eq!(reply.status, StatusCode::OK, "{pad} other headers");
            assert_eq!(reply.header("x-ratelimit-remaining"), "1");
            let reply = h.send(among_others(pad, &["k_1", "k_1"])).await;
            assert_eq!(reply.header("x-ratelimit-remaining"), "0");
            let missing = h.send(among_others(pad, &[])).await;
            assert_key_error(&missing, KeyErrorKind::Missing, "X-API-Key header");

            let h = guarded(Limit::new("per_key", api_key()).quota(per_minute(10)));
            rejects_uncounted(
                &h,
                among_others(pad, &["k_2", "k_attacker"]),
                KeyErrorKind::Conflicting,
                "X-API-Key header",
                among_others(pad, &["k_2"]),
            )
            .await;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn basic_authorization_is_401_malformed_key_for_a_bearer_limit() {
        let h = guarded(Limit::new("per_token", Header::bearer()).quota(per_minute(10)));
        let bad = get("/v1/calls")
            .header(AUTHORIZATION, "Basic dXNlcjpwYXNz")
            .body(String::new())
            .unwrap();
        let good = get("/v1/calls")
            .header(AUTHORIZATION, "Bearer tok_1")
            .body(String::new())
            .unwrap();
        rejects_uncounted(
            &h,
            bad,
            KeyErrorKind::Malformed,
            "Authorization header",
            good,
        )
        .await;
    }

    #[tokio::test(start_paused = true)]
    async fn bearer_without_a_token_is_401_empty_key() {
        for value in ["Bearer", "Bearer    "] {
            let h = guarded(Limit::new("per_token", Header::bearer()).quota(per_minute(10)));
            let bad = get("/v1/calls")
                .header(AUTHORIZATION, value)
                .body(String::new())
                .unwrap();
            let good = get("/v1/calls")
                .header(AUTHORIZATION, "Bearer tok_1")
                .body(String::new())
                .unwrap();
            rejects_uncounted(&h, bad, KeyErrorKind::Empty, "Authorization header", good).await;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn bearer_token_with_a_space_is_401_malformed_key() {
        let h = guarded(Limit::new("per_token", Header::bearer()).quota(per_minute(10)));
        let bad = get("/v1/calls")
            .header(AUTHORIZATION, "Bearer tok_1 tok_2")
            .body(String::new())
            .unwrap();
        let good = get("/v1/calls")
            .header(AUTHORIZATION, "Bearer tok_1")
            .body(String::new())
            .unwrap();
        rejects_uncounted(
            &h,
            bad,
            KeyErrorKind::Malformed,
            "Authorization header",
            good,
        )
        .await;
    }

    #[tokio::test(start_paused = true)]
    async fn missing_authorization_is_401_missing_key_for_a_bearer_limit() {
        let h = guarded(Limit::new("per_token", Header::bearer()).quota(per_minute(10)));
        let bad = get("/v1/calls").body(String::new()).unwrap();
        let good = get("/v1/calls")
            .header(AUTHORIZATION, "Bearer tok_1")
            .body(String::new())
            .unwrap();
        rejects_uncounted(&h, bad, KeyErrorKind::Missing, "Authorization header", good).await;
    }

    #[derive(Clone)]
    struct Account {
        id: String,
    }

    #[tokio::test(start_paused = true)]
    async fn missing_extension_is_401_missing_key_naming_the_type() {
        let h = guarded(
            Limit::new(
                "per_account",
                Extension::new(|a: &Account| Key::from(a.id.as_str())),
            )
            .quota(per_minute(10)),
        );
        let bad = get("/v1/calls").body(String::new()).unwrap();
        let mut good = get("/v1/calls").body(String::new()).unwrap();
        good.extensions_mut().insert(Account {
            id: "acct_1".into(),
        });
        rejects_uncounted(&h, bad, KeyErrorKind::Missing, "Account", good).await;
    }

    /// A limit keyed by the account an auth layer found, else a header the
    /// client chooses: an exemption and an override written for an
    /// account are the account's, and a client that sends its id in the
    /// header gets neither.
    #[tokio::test(start_paused = true)]
    async fn an_operator_key_of_first_of_is_one_alternative_s_not_the_client_s() {
        let h = Harness::one_limit(
            Limit::new(
                "per_caller",
                FirstOf::new()
                    .or(Extension::new(|a: &Account| Key::from(a.id.as_str())))
                    .or(Header::parse("X-Anon-Id").unwrap()),
            )
            .quota(per_minute(2))
            .exempt_keys(["acct_internal"])
            .key_quota("acct_big", per_minute(1000)),
        );
        let as_account = |id: &str| {
            let mut request = get("/v1/calls").body(String::new()).unwrap();
            request.extensions_mut().insert(Account { id: id.into() });
            request
        };
        let anonymous = |id: &str| {
            get("/v1/calls")
                .header("x-anon-id", id)
                .body(String::new())
                .unwrap()
        };
        for _ in 0..5 {
            assert_eq!(h.status(as_account("acct_internal")).await, StatusCode::OK);
            assert_eq!(h.status(as_account("acct_big")).await, StatusCode::OK);
        }
        for id in ["acct_internal", "acct_big"] {
            let statuses = [
                h.status(anonymous(id)).await,
                h.status(anonymous(id)).await,
                h.status(anonymous(id)).await,
            ];
            assert_eq!(
                statuses,
                [
                    StatusCode::OK,
                    StatusCode::OK,
                    StatusCode::TOO_MANY_REQUESTS
                ],
                "{id} through the header is an anonymous caller's key"
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn empty_extension_value_is_401_empty_key_naming_the_type() {
        let h = guarded(
            Limit::new(
                "per_account",
                Extension::new(|a: &Account| Key::from(a.id.as_str())),
            )
            .quota(per_minute(10)),
        );
        let mut bad = get("/v1/calls").body(String::new()).unwrap();
        bad.extensions_mut().insert(Account { id: String::new() });
        let mut good = get("/v1/calls").body(String::new()).unwrap();
        good.extensions_mut().insert(Account {
            id: "acct_1".into(),
        });
        rejects_uncounted(&h, bad, KeyErrorKind::Empty, "Account", good).await;
    }

    #[tokio::test(start_paused = true)]
    async fn missing_peer_address_is_401_missing_key() {
        let h = guarded(Limit::new("per_ip", PeerIp::new()).quota(per_minute(10)));
        let bad = get("/v1/calls").body(String::new()).unwrap();
        let good = from_peer("192.0.2.1", get("/v1/calls"));
        rejects_uncounted(&h, bad, KeyErrorKind::Missing, "IP address", good).await;
    }

    #[tokio::test(start_paused = true)]
    async fn closure_returning_none_is_401_missing_key() {
        let tenant =
            |req: &RequestView<'_>| req.headers().get("x-tenant").map(|v| v.as_bytes().to_vec());
        let h = guarded(Limit::new("per_tenant", tenant).quota(per_minute(10)));
        let bad = get("/v1/calls").body(String::new()).unwrap();
        let good = get("/v1/calls")
            .header("x-tenant", "t_1")
            .body(String::new())
            .unwrap();
        let reply = h.send(bad).await;
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
        assert_eq!(reply.json()["error"]["code"], "missing_key");
        assert_eq!(h.calls(), 0);
        assert_eq!(h.status(good).await, StatusCode::OK);
    }

    #[tokio::test(start_paused = true)]
    async fn bad_key_in_the_second_limit_consumes_nothing_in_the_first() {
        // The same as the guarded cases, but with a counted per-key limit
        // first: its bucket must be untouched by the refused request.
        let h = Harness::new(
            Policy::builder()
                .limit(Limit::new("per_key", api_key()).quota(per_minute(1)))
                .limit(Limit::new("per_token", Header::bearer()).quota(per_minute(10))),
        );
        let bad = get("/v1/calls")
            .header("x-api-key", "k_1")
            .header(AUTHORIZATION, "Basic xyz")
            .body(String::new())
            .unwrap();
        assert_eq!(h.status(bad).await, StatusCode::UNAUTHORIZED);
        let good = get("/v1/calls")
            .header("x-api-key", "k_1")
            .header(AUTHORIZATION, "Bearer t")
            .body(String::new())
            .unwrap();
        assert_eq!(h.status(good).await, StatusCode::OK);
        assert_eq!(h.calls(), 1);
    }
}

mod missing_key_skip {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn skip_makes_the_limit_not_apply_while_other_limits_still_do() {
        let h = Harness::new(
            Policy::builder()
                .limit(
                    Limit::new("per_key", api_key())
                        .quota(per_minute(1))
                        .skip_missing_key(true),
                )
                .limit(Limit::global("global").quota(per_minute(3))),
        );
        let anonymous = || get("/v1/calls").body(String::new()).unwrap();
        // per_key (1/min) would refuse the second; it does not apply.
        let first = h.send(anonymous()).await;
        assert_eq!(first.status, StatusCode::OK);
        assert_eq!(
            first.header("x-ratelimit-limit"),
            "3",
            "only the global limit reports"
        );
        assert_eq!(first.header("x-ratelimit-remaining"), "2");
        assert_eq!(first.decision.as_ref().unwrap().windows().len(), 1);
        assert_eq!(h.status(anonymous()).await, StatusCode::OK);
        // A keyed request counts in both.
        let keyed = h.send(with_key("k_1")).await;
        assert_eq!(keyed.status, StatusCode::OK);
        assert_eq!(keyed.decision.as_ref().unwrap().windows().len(), 2);
        // The global limit still applies to anonymous requests.
        let refused = h.send(anonymous()).await;
        assert_eq!(refused.status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(h.calls(), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn skip_does_not_let_a_present_but_bad_key_escape_its_bucket() {
        // Skip is for requests that carry no key at all. A client that has
        // spent its key's quota must not get through by adding a second,
        // different X-API-Key (its backend may well read the first one).
        let h = Harness::new(
            Policy::builder()
                .limit(
                    Limit::new("per_key", api_key())
                        .quota(per_minute(1))
                        .skip_missing_key(true),
                )
                .limit(Limit::global("global").quota(per_minute(100))),
        );
        assert_eq!(h.status(with_key("k_1")).await, StatusCode::OK);
        assert_eq!(
            h.status(with_key("k_1")).await,
            StatusCode::TOO_MANY_REQUESTS
        );
        let doubled = get("/v1/calls")
            .header("x-api-key", "k_1")
            .header("x-api-key", "k_other")
            .body(String::new())
            .unwrap();
        let reply = h.send(doubled).await;
        assert_key_error(&reply, KeyErrorKind::Conflicting, "X-API-Key header");
        let empty = get("/v1/calls")
            .header("x-api-key", "")
            .body(String::new())
            .unwrap();
        assert_eq!(h.send(empty).await.status, StatusCode::UNAUTHORIZED);
        assert_eq!(h.calls(), 1);
    }
}

mod isolation {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn different_keys_never_share_counts() {
        let h = Harness::one_limit(Limit::new("per_key", api_key()).quota(per_minute(2)));
        assert_eq!(
            h.send(with_key("k_a"))
                .await
                .header("x-ratelimit-remaining"),
            "1"
        );
        assert_eq!(
            h.send(with_key("k_a"))
                .await
                .header("x-ratelimit-remaining"),
            "0"
        );
        assert_eq!(
            h.status(with_key("k_a")).await,
            StatusCode::TOO_MANY_REQUESTS
        );
        let b = h.send(with_key("k_b")).await;
        assert_eq!(b.status, StatusCode::OK);
        assert_eq!(b.header("x-ratelimit-remaining"), "1", "k_b starts fresh");
        // Prefixes and case are different keys too.
        assert_eq!(h.status(with_key("k_")).await, StatusCode::OK);
        assert_eq!(h.status(with_key("K_A")).await, StatusCode::OK);
        assert_eq!(h.status(with_key("k_aa")).await, StatusCode::OK);
    }

    #[tokio::test(start_paused = true)]
    async fn the_same_key_under_two_limits_counts_separately() {
        let h = Harness::new(
            Policy::builder()
                .limit(Limit::new("reads", api_key()).route("GET *", per_minute(1)))
                .limit(Limit::new("writes", api_key()).route("POST *", per_minute(1))),
        );
        assert_eq!(h.status(with_key("k_1")).await, StatusCode::OK);
        let post = || {
            Request::post("/v1/calls")
                .header("x-api-key", "k_1")
                .body(String::new())
                .unwrap()
        };
        assert_eq!(
            h.status(post()).await,
            StatusCode::OK,
            "the reads bucket is not the writes bucket"
        );
        assert_eq!(
            h.status(with_key("k_1")).await,
            StatusCode::TOO_MANY_REQUESTS
        );
        assert_eq!(h.status(post()).await, StatusCode::TOO_MANY_REQUESTS);
    }

    #[tokio::test(start_paused = true)]
    async fn the_same_key_under_two_stacked_limits_reports_each_count() {
        let h = Harness::new(
            Policy::builder()
                .limit(Limit::new("small", api_key()).quota(per_minute(2)))
                .limit(Limit::new("large", api_key()).quota(per_minute(5))),
        );
        let first = h.send(with_key("k_1")).await;
        let windows = first.decision.unwrap();
        let remaining: Vec<u32> = windows.windows().iter().map(|w| w.remaining).collect();
        assert_eq!(
            remaining,
            [1, 4],
            "each limit has its own bucket for the same key"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn bearer_scheme_is_case_insensitive() {
        let h = Harness::one_limit(Limit::new("per_token", Header::bearer()).quota(per_minute(3)));
        let auth = |v: &str| {
            get("/v1/calls")
                .header(AUTHORIZATION, v)
                .body(String::new())
                .unwrap()
        };
        assert_eq!(
            h.send(auth("Bearer tok_1"))
                .await
                .header("x-ratelimit-remaining"),
            "2"
        );
        assert_eq!(
            h.send(auth("bearer tok_1"))
                .await
                .header("x-ratelimit-remaining"),
            "1"
        );
        assert_eq!(
            h.send(auth("BEARER tok_1"))
                .await
                .header("x-ratelimit-remaining"),
            "0"
        );
        assert_eq!(
            h.status(auth("BeArEr tok_1")).await,
            StatusCode::TOO_MANY_REQUESTS
        );
        // The token itself is case-sensitive.
        assert_eq!(h.status(auth("Bearer TOK_1")).await, StatusCode::OK);
    }

    #[tokio::test(start_paused = true)]
    async fn path_capture_keys_are_percent_decoded() {
        let h = Harness::one_limit(
            Limit::new("per_call", PathCapture::new("call_id"))
                .route("POST /v1/calls/{call_id}/control", per_minute(2)),
        );
        let control = |path: &str| Request::post(path).body(String::new()).unwrap();
        assert_eq!(
            h.send(control("/v1/calls/c1/control"))
                .await
                .header("x-ratelimit-remaining"),
            "1"
        );
        let encoded = h.send(control("/v1/calls/c%31/control")).await;
        assert_eq!(encoded.status, StatusCode::OK);
        assert_eq!(
            encoded.header("x-ratelimit-remaining"),
            "0",
            "c%31 is c1's bucket"
        );
        assert_eq!(
            h.status(control("/v1/calls/%63%31/control")).await,
            StatusCode::TOO_MANY_REQUESTS
        );
        assert_eq!(
            h.status(control("/v1/calls/c2/control")).await,
            StatusCode::OK,
            "another call"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_capture_within_another_key_is_counted_per_pair() {
        let h = Harness::one_limit(
            Limit::new(
                "per_call",
                PathCapture::new("call_id").within(Header::bearer()),
            )
            .route("POST /v1/calls/{call_id}/control", per_minute(2)),
        );
        let control = |call: &str, token: &str| {
            Request::post(format!("/v1/calls/{call}/control"))
                .header(AUTHORIZATION, format!("Bearer {token}"))
                .body(String::new())
                .unwrap()
        };
        for _ in 0..2 {
            assert_eq!(h.status(control("c1", "owner")).await, StatusCode::OK);
        }
        assert_eq!(
            h.status(control("c%31", "owner")).await,
            StatusCode::TOO_MANY_REQUESTS,
            "the capture is still decoded"
        );
        // Another key naming the same call spends its own budget of it; the
        // same key's other call is another pair.
        assert_eq!(h.status(control("c1", "other")).await, StatusCode::OK);
        assert_eq!(h.status(control("c2", "owner")).await, StatusCode::OK);
        // Pairs never run together: `ownerc` + `1` is not `owner` + `c1`.
        assert_eq!(h.status(control("1", "ownerc")).await, StatusCode::OK);
        // Without the scope's key there is no key: a 401, nothing counted.
        let calls = h.calls();
        let anonymous = Request::post("/v1/calls/c1/control").body(String::new());
        let reply = h.send(anonymous.unwrap()).await;
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
        assert_eq!(h.calls(), calls);
    }

    #[test]
    fn a_scope_s_captures_are_required_of_every_route() {
        let limit = Limit::new(
            "per_leg",
            PathCapture::new("leg").within(PathCapture::new("account")),
        );
        let err = Policy::builder()
            .limit(limit.route("POST /legs/{leg}/actions", per_minute(1)))
            .build()
            .unwrap_err();
        assert_eq!(err.field(), "limits[0].routes[0].path");
        assert!(err.message().contains("`{account}`"), "{err}");
    }

    /// A layer of one limit per call id, 1 a minute on call control.
    fn per_call_harness() -> Harness {
        Harness::one_limit(
            Limit::new("per_call", PathCapture::new("call_id"))
                .route("POST /v1/calls/{call_id}/control", per_minute(1)),
        )
    }

    /// A call-control command for call `id` (as written in the path).
    fn control(id: &str) -> Request<String> {
        Request::post(format!("/v1/calls/{id}/control"))
            .body(String::new())
            .unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn long_path_capture_keys_are_decoded_across_chunk_boundaries() {
        let h = per_call_harness();
        let plain = "c".repeat(200);
        assert_eq!(h.status(control(&plain)).await, StatusCode::OK);
        // The same 200 bytes with some of them percent-encoded, around the
        // 64-byte marks.
        let mut encoded = String::new();
        for i in 0..200 {
            if matches!(i, 0 | 62..=66 | 127 | 128 | 199) {
                encoded.push_str("%63");
            } else {
                encoded.push('c');
            }
        }
        assert_eq!(
            h.status(control(&encoded)).await,
            StatusCode::TOO_MANY_REQUESTS
        );
        // One byte more or less is another call.
        assert_eq!(h.status(control(&"c".repeat(199))).await, StatusCode::OK);
        assert_eq!(h.status(control(&"c".repeat(201))).await, StatusCode::OK);
    }

    /// A capture that decodes to bytes that are not UTF-8 is a 401, as any
    /// key that is not UTF-8 (and as axum's `Path<String>` refuses it); a
    /// `%` sequence that decodes to UTF-8 is a key like its plain spelling.
    #[tokio::test(start_paused = true)]
    async fn a_capture_that_decodes_to_invalid_utf8_is_401_and_uncounted() {
        let h = per_call_harness();
        for id in ["%FF", "c%C3", "%e2%82", "%C3%28"] {
            let reply = h.send(control(id)).await;
            assert_key_error(&reply, KeyErrorKind::NotUtf8, "`call_id` path segment");
        }
        assert_eq!(h.calls(), 0);
        assert_eq!(h.status(control("%C3%A9")).await, StatusCode::OK);
        assert_eq!(
            h.status(control("%c3%a9")).await,
            StatusCode::TOO_MANY_REQUESTS,
            "one call, however its bytes are written"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn odd_percent_encodings_in_a_capture_never_panic_and_stay_isolated() {
        let h = per_call_harness();
        for id in ["c%", "c%3", "%G1", "%e2%82", "%00", "%2F", "%25", "%2525"] {
            let reply = h.send(control(id)).await;
            assert!(
                reply.status == StatusCode::OK || reply.status == StatusCode::UNAUTHORIZED,
                "{id}: {}",
                reply.status
            );
        }
        // `%25` is `%`, `%2525` is `%25`: different calls.
        assert_eq!(
            h.status(control("%25")).await,
            StatusCode::TOO_MANY_REQUESTS
        );
        assert_eq!(
            h.status(control("%2525")).await,
            StatusCode::TOO_MANY_REQUESTS
        );
        assert_eq!(h.status(control("%252525")).await, StatusCode::OK);
    }

    #[tokio::test(start_paused = true)]
    async fn a_percent_encoded_literal_or_extra_slashes_cannot_bypass_a_route() {
        let h = Harness::one_limit(
            Limit::new("per_key", api_key())
                .route("POST /v1/keys", Quota::new(Window::per_hour(1)))
                .route("*", per_minute(100)),
        );
        let post = |path: &str| {
            Request::post(path)
                .header("x-api-key", "k_1")
                .body(String::new())
                .unwrap()
        };
        let first = h.send(post("/v1/keys")).await;
        assert_eq!(
            (first.status, first.header("x-ratelimit-limit")),
            (StatusCode::OK, "1")
        );
        for path in [
            "/v1/%6Beys",
            "/v1/%6beys",
            "/%76%31/keys",
            "//v1//keys/",
            "/v1/keys/",
            "/v1/k%65ys?x=1",
        ] {
            let reply = h.send(post(path)).await;
            assert_eq!(
                (reply.status, reply.header("x-ratelimit-limit")),
                (StatusCode::TOO_MANY_REQUESTS, "1"),
                "{path} must be limited as POST /v1/keys"
            );
        }
        assert_eq!(h.calls(), 1);
    }
}

mod first_of {
    use super::*;

    fn key_or_ip() -> FirstOf {
        FirstOf::new().or(api_key()).or(PeerIp::new())
    }

    #[tokio::test(start_paused = true)]
    async fn falls_back_to_the_ip_only_when_the_key_is_missing() {
        let h = Harness::one_limit(Limit::new("per_client", key_or_ip()).quota(per_minute(1)));
        assert_eq!(
            h.status(from_peer("192.0.2.1", get("/"))).await,
            StatusCode::OK
        );
        assert_eq!(
            h.status(from_peer("192.0.2.1", get("/"))).await,
            StatusCode::TOO_MANY_REQUESTS
        );
        // The API key is preferred over the IP: a fresh bucket.
        let keyed = from_peer("192.0.2.1", get("/").header("x-api-key", "k_1"));
        assert_eq!(h.status(keyed).await, StatusCode::OK);
    }

    #[tokio::test(start_paused = true)]
    async fn a_present_but_bad_key_is_401_and_never_falls_back_to_the_ip() {
        let h = Harness::one_limit(Limit::new("per_client", key_or_ip()).quota(per_minute(10)));
        let cases: [(&str, Request<String>, KeyErrorKind); 3] = [
            (
                "empty",
                from_peer("192.0.2.1", get("/").header("x-api-key", "")),
                KeyErrorKind::Empty,
            ),
            (
                "conflicting",
                from_peer(
                    "192.0.2.1",
                    get("/").header("x-api-key", "a").header("x-api-key", "b"),
                ),
                KeyErrorKind::Conflicting,
            ),
            (
                "not utf-8",
                from_peer(
                    "192.0.2.1",
                    get("/").header("x-api-key", HeaderValue::from_bytes(&[0xff]).unwrap()),
                ),
                KeyErrorKind::NotUtf8,
            ),
        ];
        for (what, request, kind) in cases {
            let reply = h.send(request).await;
            assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{what}");
            assert_eq!(reply.json()["error"]["code"], kind.code(), "{what}");
        }
        assert_eq!(h.calls(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn too_long_key_is_401_and_never_falls_back() {
        let h = Harness::new(
            Policy::builder()
                .limit(Limit::new("per_client", key_or_ip()).quota(per_minute(10)))
                .max_key_len(4),
        );
        let reply = h
            .send(from_peer(
                "192.0.2.1",
                get("/").header("x-api-key", "12345"),
            ))
            .await;
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
        assert_eq!(reply.json()["error"]["code"], "key_too_long");
    }

    #[tokio::test(start_paused = true)]
    async fn all_alternatives_missing_is_401_missing_key() {
        let h = Harness::one_limit(Limit::new("per_client", key_or_ip()).quota(per_minute(10)));
        let reply = h.send(get("/").body(String::new()).unwrap()).await;
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
        assert_eq!(reply.json()["error"]["code"], "missing_key");
        assert_eq!(h.calls(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn all_alternatives_missing_names_every_place_the_key_was_sought() {
        let h = Harness::one_limit(
            Limit::new(
                "per_client",
                FirstOf::new().or(api_key()).or(Header::bearer()),
            )
            .quota(per_minute(10)),
        );
        let reply = h.send(get("/").body(String::new()).unwrap()).await;
        assert_key_error(&reply, KeyErrorKind::Missing, "X-API-Key header");
        assert_key_error(&reply, KeyErrorKind::Missing, "Authorization header");
    }

    #[tokio::test(start_paused = true)]
    async fn equal_bytes_from_two_alternatives_are_different_keys() {
        let h = Harness::one_limit(
            Limit::new(
                "per_client",
                FirstOf::new()
                    .or(api_key())
                    .or(Header::parse("X-Session").unwrap()),
            )
            .quota(per_minute(1)),
        );
        let by_key = || {
            get("/")
                .header("x-api-key", "same")
                .body(String::new())
                .unwrap()
        };
        let by_session = || {
            get("/")
                .header("x-session", "same")
                .body(String::new())
                .unwrap()
        };
        assert_eq!(h.status(by_key()).await, StatusCode::OK);
        assert_eq!(
            h.status(by_session()).await,
            StatusCode::OK,
            "alternative 2 has its own bucket"
        );
        assert_eq!(h.status(by_key()).await, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(h.status(by_session()).await, StatusCode::TOO_MANY_REQUESTS);
    }
}

mod forwarded_ip {
    use super::*;

    fn forwarded(peer: &str, xff: &str) -> Request<String> {
        from_peer(peer, get("/").header("x-forwarded-for", xff))
    }

    fn per_client(n: u32) -> Harness {
        Harness::one_limit(
            Limit::new("per_ip", ForwardedIp::new(["10.0.0.0/8"]).unwrap()).quota(per_minute(n)),
        )
    }

    #[tokio::test(start_paused = true)]
    async fn the_client_is_the_first_untrusted_address_from_the_right() {
        let h = per_client(1);
        assert_eq!(
            h.status(forwarded("10.0.0.1", "9.9.9.9, 203.0.113.7"))
                .await,
            StatusCode::OK
        );
        // Same client via another trusted proxy, and through a chain of them.
        assert_eq!(
            h.status(forwarded("10.0.0.2", "203.0.113.7")).await,
            StatusCode::TOO_MANY_REQUESTS
        );
        assert_eq!(
            h.status(forwarded(
                "10.0.0.1",
                "1.1.1.1, 203.0.113.7, 10.1.2.3, 10.4.5.6"
            ))
            .await,
            StatusCode::TOO_MANY_REQUESTS,
            "trusted hops are skipped"
        );
        // The client cannot pick its key by writing addresses on the left.
        assert_eq!(
            h.status(forwarded("10.0.0.1", "198.51.100.1, 203.0.113.7"))
                .await,
            StatusCode::TOO_MANY_REQUESTS
        );
        assert_eq!(
            h.status(forwarded("10.0.0.1", "203.0.113.8")).await,
            StatusCode::OK
        );
        // Several header lines are one list, the last line nearest.
        let two_lines = from_peer(
            "10.0.0.1",
            get("/")
                .header("x-forwarded-for", "203.0.113.8")
                .header("x-forwarded-for", "10.0.0.5"),
        );
        assert_eq!(h.status(two_lines).await, StatusCode::TOO_MANY_REQUESTS);
    }

    #[tokio::test(start_paused = true)]
    async fn client_written_garbage_left_of_the_client_is_never_read() {
        let h = per_client(1);
        assert_eq!(
            h.status(forwarded("10.0.0.1", "not-an-ip, 203.0.113.7"))
                .await,
            StatusCode::OK
        );
        assert_eq!(
            h.status(forwarded("10.0.0.1", "203.0.113.7")).await,
            StatusCode::TOO_MANY_REQUESTS
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_forwarded_header_is_read_when_configured_and_only_then() {
        let h = Harness::one_limit(
            Limit::new(
                "per_ip",
                ForwardedIp::new(["10.0.0.0/8"]).unwrap().forwarded(),
            )
            .quota(per_minute(1)),
        );
        let fwd = |v: &str| from_peer("10.0.0.1", get("/").header("forwarded", v));
        assert_eq!(
            h.status(fwd("for=203.0.113.7;proto=https, for=10.0.0.9"))
                .await,
            StatusCode::OK
        );
        assert_eq!(
            h.status(fwd(r#"for="203.0.113.7:4711""#)).await,
            StatusCode::TOO_MANY_REQUESTS
        );
        // X-Forwarded-For is not read: the client is the proxy itself.
        let xff = from_peer(
            "10.0.0.1",
            get("/").header("x-forwarded-for", "203.0.113.9"),
        );
        assert_eq!(h.status(xff).await, StatusCode::OK);
        let xff = from_peer(
            "10.0.0.1",
            get("/").header("x-forwarded-for", "203.0.113.10"),
        );
        assert_eq!(
            h.status(xff).await,
            StatusCode::TOO_MANY_REQUESTS,
            "both counted as 10.0.0.1"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_malformed_forwarded_header_is_explained_in_its_own_syntax() {
        let h = Harness::one_limit(
            Limit::new(
                "per_ip",
                ForwardedIp::new(["10.0.0.0/8"]).unwrap().forwarded(),
            )
            .quota(per_minute(1)),
        );
        let reply = h
            .send(from_peer(
                "10.0.0.1",
                get("/").header("forwarded", "for=unknown"),
            ))
            .await;
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
        let message = reply.json()["error"]["message"].to_string();
        assert!(message.contains("for="), "{message}");
        assert!(!message.contains("list of IP addresses"), "{message}");
    }

    #[test]
    fn a_bad_trusted_proxy_is_named_by_its_place_in_the_list() {
        let error = ForwardedIp::new(["10.0.0.0/8", "nope"]).unwrap_err();
        assert_eq!(error.field(), "trusted[1]");
    }

    #[tokio::test(start_paused = true)]
    async fn an_untrusted_peer_cannot_spoof_its_address() {
        let h = per_client(1);
        assert_eq!(
            h.status(forwarded("198.51.100.9", "203.0.113.1")).await,
            StatusCode::OK
        );
        // A different forged address: still the peer's bucket.
        assert_eq!(
            h.status(forwarded("198.51.100.9", "203.0.113.2")).await,
            StatusCode::TOO_MANY_REQUESTS,
            "the header of an untrusted peer is ignored"
        );
        assert_eq!(
            h.status(from_peer("198.51.100.9", get("/"))).await,
            StatusCode::TOO_MANY_REQUESTS
        );
        // A trusted proxy forwarding for the peer's address shares the bucket.
        assert_eq!(
            h.status(forwarded("10.0.0.1", "198.51.100.9")).await,
            StatusCode::TOO_MANY_REQUESTS
        );
        // And the forged address itself is untouched.
        assert_eq!(
            h.status(forwarded("10.0.0.1", "203.0.113.2")).await,
            StatusCode::OK
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_trusted_peer_without_a_header_is_the_client() {
        let h = per_client(1);
        assert_eq!(
            h.status(from_peer("10.0.0.1", get("/"))).await,
            StatusCode::OK
        );
        assert_eq!(
            h.status(from_peer("10.0.0.1", get("/"))).await,
            StatusCode::TOO_MANY_REQUESTS
        );
        assert_eq!(
            h.status(from_peer("10.0.0.2", get("/"))).await,
            StatusCode::OK
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_garbled_header_from_a_trusted_proxy_is_401_malformed_key() {
        let h = per_client(10);
        let reply = h.send(forwarded("10.0.0.1", "not-an-address")).await;
        assert_key_error(&reply, KeyErrorKind::Malformed, "X-Forwarded-For");
        assert_eq!(h.calls(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn ipv6_clients_are_grouped_by_64() {
        let h = per_client(1);
        assert_eq!(
            h.status(forwarded("10.0.0.1", "2001:db8:1:2::1")).await,
            StatusCode::OK
        );
        assert_eq!(
            h.status(forwarded(
                "10.0.0.1",
                "[2001:db8:1:2:ffff:ffff:ffff:ffff]:443"
            ))
            .await,
            StatusCode::TOO_MANY_REQUESTS,
            "one /64 is one client"
        );
        assert_eq!(
            h.status(forwarded("10.0.0.1", "2001:db8:1:3::1")).await,
            StatusCode::OK,
            "another /64"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn ipv6_peers_are_grouped_by_64() {
        let h = Harness::one_limit(Limit::new("per_ip", PeerIp::new()).quota(per_minute(1)));
        assert_eq!(
            h.status(from_peer("2001:db8:aa:bb::1", get("/"))).await,
            StatusCode::OK
        );
        assert_eq!(
            h.status(from_peer("2001:db8:aa:bb:1234::9", get("/")))
                .await,
            StatusCode::TOO_MANY_REQUESTS
        );
        assert_eq!(
            h.status(from_peer("2001:db8:aa:bc::1", get("/"))).await,
            StatusCode::OK
        );
        // An IPv4-mapped IPv6 peer is its IPv4 address.
        assert_eq!(
            h.status(from_peer("198.51.100.4", get("/"))).await,
            StatusCode::OK
        );
        assert_eq!(
            h.status(from_peer("::ffff:198.51.100.4", get("/"))).await,
            StatusCode::TOO_MANY_REQUESTS
        );
        // IPv4 peers are not grouped.
        assert_eq!(
            h.status(from_peer("192.0.2.1", get("/"))).await,
            StatusCode::OK
        );
        assert_eq!(
            h.status(from_peer("192.0.2.2", get("/"))).await,
            StatusCode::OK
        );
    }
}

mod secrecy {
    use super::*;

    const SECRET: &str = "sk_live_7fQ2mZ9xW4";

    #[test]
    fn debug_of_a_key_shows_only_its_length() {
        let shown = format!("{:?}", Key::from(SECRET));
        assert!(!shown.contains(SECRET), "{shown}");
        assert!(!shown.contains("7fQ2"), "{shown}");
        assert!(shown.contains(&SECRET.len().to_string()), "{shown}");
        let long = "s".repeat(100);
        let shown = format!("{:?}", Key::copied(long.as_bytes()));
        assert!(!shown.contains("sss"), "{shown}");
        assert!(shown.contains("100"), "{shown}");
    }

    #[track_caller]
    fn assert_absent(reply: &Reply, what: &str) {
        for (name, value) in &reply.headers {
            assert!(
                !value
                    .as_bytes()
                    .windows(SECRET.len())
                    .any(|w| w == SECRET.as_bytes()),
                "{what}: header {name} shows the key"
            );
        }
        let body = String::from_utf8_lossy(&reply.body);
        assert!(!body.contains(SECRET), "{what}: body shows the key: {body}");
        if let Some(decision) = &reply.decision {
            let shown = format!("{decision:?}");
            assert!(
                !shown.contains(SECRET),
                "{what}: decision shows the key: {shown}"
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn responses_and_decisions_never_contain_the_api_key() {
        for format in [
            tower_ratelimit::RefusalFormat::json(),
            tower_ratelimit::RefusalFormat::problem_json(),
            tower_ratelimit::RefusalFormat::named("flireo").unwrap(),
            tower_ratelimit::RefusalFormat::named("nixflex").unwrap(),
            tower_ratelimit::RefusalFormat::named("talkpilot").unwrap(),
            tower_ratelimit::RefusalFormat::named("exotel").unwrap(),
        ] {
            let h = Harness::new(
                Policy::builder()
                    .limit(Limit::new("per_key", api_key()).quota(per_minute(1)))
                    .header_style(tower_ratelimit::HeaderStyle::Both)
                    .refusal(format.clone())
                    .max_key_len(SECRET.len() + 1),
            );
            let admitted = h.send(with_key(SECRET)).await;
            assert_eq!(admitted.status, StatusCode::OK);
            assert_absent(&admitted, "admitted");
            let refused = h.send(with_key(SECRET)).await;
            assert_eq!(refused.status, StatusCode::TOO_MANY_REQUESTS);
            assert!(refused.decision.is_some());
            assert_absent(&refused, &format!("refused ({format:?})"));

            let conflicting = get("/v1/calls")
                .header("x-api-key", SECRET)
                .header("x-api-key", "other")
                .body(String::new())
                .unwrap();
            assert_absent(&h.send(conflicting).await, "conflicting");
            let too_long = format!("{SECRET}xx");
            let reply = h.send(with_key(&too_long)).await;
            assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
            assert_absent(&reply, "too long");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn bearer_tokens_never_show_in_responses() {
        let h = Harness::one_limit(Limit::new("per_token", Header::bearer()).quota(per_minute(1)));
        let auth = |v: &str| {
            get("/")
                .header(AUTHORIZATION, v)
                .body(String::new())
                .unwrap()
        };
        let token = format!("Bearer {SECRET}");
        assert_absent(&h.send(auth(&token)).await, "admitted");
        assert_absent(&h.send(auth(&token)).await, "refused");
        assert_absent(&h.send(auth(&format!("{token} extra"))).await, "malformed");
        assert_absent(&h.send(auth(&format!("Basic {SECRET}"))).await, "basic");
    }
}

/// IPv4-mapped IPv6 addresses (`::ffff:a.b.c.d`: every IPv4 peer of a
/// dual-stack listener) are their IPv4 address: as the peer, in forwarded
/// headers, in trusted-proxy lists and in exempt ranges.
mod dual_stack {
    use super::*;

    fn forwarded(peer: &str, xff: &str) -> Request<String> {
        from_peer(peer, get("/").header("x-forwarded-for", xff))
    }

    fn behind(trusted: &[&str], n: u32) -> Harness {
        Harness::one_limit(
            Limit::new("per_ip", ForwardedIp::new(trusted).unwrap()).quota(per_minute(n)),
        )
    }

    /// `X-RateLimit-Remaining` of an admitted request.
    async fn remaining(h: &Harness, request: Request<String>) -> String {
        let reply = h.send(request).await;
        assert_eq!(reply.status, StatusCode::OK, "body: {:?}", reply.body);
        reply.header("x-ratelimit-remaining").to_owned()
    }

    #[tokio::test(start_paused = true)]
    async fn a_dual_stack_peer_is_a_trusted_ipv4_proxy_and_its_clients_are_counted_apart() {
        let h = behind(&["127.0.0.1"], 2);
        let proxy = "::ffff:127.0.0.1";
        assert_eq!(remaining(&h, forwarded(proxy, "203.0.113.1")).await, "1");
        assert_eq!(remaining(&h, forwarded(proxy, "203.0.113.1")).await, "0");
        assert_eq!(
            h.status(forwarded(proxy, "203.0.113.1")).await,
            StatusCode::TOO_MANY_REQUESTS
        );
        // Another client behind the same proxy has its own bucket.
        assert_eq!(remaining(&h, forwarded(proxy, "203.0.113.2")).await, "1");
        // The proxy's own requests (no header) are the proxy's bucket, which
        // neither client touched, whichever way its address is written.
        assert_eq!(remaining(&h, from_peer(proxy, get("/"))).await, "1");
        assert_eq!(remaining(&h, from_peer("127.0.0.1", get("/"))).await, "0");
        assert_eq!(h.calls(), 5);
    }

    #[tokio::test(start_paused = true)]
    async fn a_mapped_forwarded_address_shares_the_ipv4_bucket() {
        let h = behind(&["127.0.0.1"], 4);
        assert_eq!(remaining(&h, forwarded("127.0.0.1", "1.2.3.4")).await, "3");
        assert_eq!(
            remaining(&h, forwarded("::ffff:127.0.0.1", "::ffff:1.2.3.4")).await,
            "2"
        );
        assert_eq!(
            remaining(&h, forwarded("127.0.0.1", "[::ffff:1.2.3.4]:5000")).await,
            "1"
        );
        assert_eq!(
            remaining(
                &h,
                forwarded("::ffff:127.0.0.1", "0:0:0:0:0:FFFF:0102:0304")
            )
            .await,
            "0"
        );
        assert_eq!(
            h.status(forwarded("127.0.0.1", "1.2.3.4")).await,
            StatusCode::TOO_MANY_REQUESTS
        );

        let h = Harness::one_limit(
            Limit::new(
                "per_ip",
                ForwardedIp::new(["127.0.0.1"]).unwrap().forwarded(),
            )
            .quota(per_minute(2)),
        );
        let fwd = |peer: &str, v: &str| from_peer(peer, get("/").header("forwarded", v));
        assert_eq!(
            remaining(&h, fwd("::ffff:127.0.0.1", "for=1.2.3.4")).await,
            "1"
        );
        assert_eq!(
            remaining(&h, fwd("::ffff:127.0.0.1", r#"for="[::ffff:1.2.3.4]:80""#)).await,
            "0"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_mapped_trusted_hop_is_skipped() {
        let h = behind(&["10.0.0.0/8"], 2);
        assert_eq!(
            remaining(&h, forwarded("10.0.0.1", "203.0.113.7, ::ffff:10.0.0.2")).await,
            "1"
        );
        assert_eq!(
            remaining(&h, forwarded("10.0.0.1", "203.0.113.7")).await,
            "0"
        );
        assert_eq!(
            remaining(&h, forwarded("10.0.0.1", "203.0.113.8, ::ffff:10.0.0.2")).await,
            "1",
            "another client behind the same hop"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn trusted_proxies_written_as_mapped_addresses_or_ranges_are_ipv4() {
        let h = behind(&["::ffff:127.0.0.1", "::ffff:10.0.0.0/104"], 3);
        assert_eq!(
            remaining(&h, forwarded("127.0.0.1", "203.0.113.1")).await,
            "2"
        );
        assert_eq!(
            remaining(&h, forwarded("10.9.8.7", "203.0.113.1")).await,
            "1"
        );
        assert_eq!(
            remaining(&h, forwarded("::ffff:10.9.8.7", "203.0.113.1")).await,
            "0"
        );
        assert_eq!(
            remaining(&h, forwarded("10.9.8.7", "203.0.113.2")).await,
            "2"
        );
        // Outside the ranges the header is ignored: the peer is the client.
        assert_eq!(
            remaining(&h, forwarded("11.0.0.1", "203.0.113.2")).await,
            "2"
        );
        assert_eq!(
            remaining(&h, forwarded("11.0.0.1", "203.0.113.3")).await,
            "1"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_ipv6_range_trusts_no_ipv4_peer() {
        let h = behind(&["::/0"], 2);
        assert_eq!(
            remaining(&h, forwarded("::ffff:198.51.100.1", "203.0.113.1")).await,
            "1"
        );
        assert_eq!(
            remaining(&h, forwarded("::ffff:198.51.100.1", "203.0.113.2")).await,
            "0",
            "both counted as the peer 198.51.100.1"
        );
        assert_eq!(
            remaining(&h, forwarded("2001:db8::1", "203.0.113.1")).await,
            "1",
            "an IPv6 peer is trusted"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_forwarded_element_with_two_for_parameters_is_401_malformed_key() {
        let h = Harness::one_limit(
            Limit::new(
                "per_ip",
                ForwardedIp::new(["10.0.0.0/8"]).unwrap().forwarded(),
            )
            .quota(per_minute(10)),
        );
        for value in [
            "for=203.0.113.7;for=198.51.100.1",
            "for=unknown;for=198.51.100.1",
            "for=198.51.100.2, for=203.0.113.7;proto=https;FOR=10.0.0.3",
        ] {
            let reply = h
                .send(from_peer("10.0.0.1", get("/").header("forwarded", value)))
                .await;
            assert_key_error(&reply, KeyErrorKind::Malformed, "Forwarded header");
        }
        assert_eq!(h.calls(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn exempt_ranges_written_as_mapped_addresses_exempt_ipv4_peers() {
        let h = Harness::one_limit(
            Limit::new("per_ip", PeerIp::new())
                .quota(per_minute(1))
                .exempt_ips(["::ffff:10.0.0.0/104"]),
        );
        for peer in ["10.1.2.3", "10.1.2.3", "::ffff:10.1.2.3"] {
            assert_eq!(h.status(from_peer(peer, get("/"))).await, StatusCode::OK);
        }
        assert_eq!(
            h.status(from_peer("192.0.2.1", get("/"))).await,
            StatusCode::OK
        );
        assert_eq!(
            h.status(from_peer("::ffff:192.0.2.1", get("/"))).await,
            StatusCode::TOO_MANY_REQUESTS
        );
        assert_eq!(h.calls(), 4);
    }
}

/// A key that could be read two ways is refused, never counted as a third
/// key: comma-folded header lines, and bearer tokens outside RFC 6750.
mod ambiguity {
    use super::*;

    const BEARER: &str = "Bearer token in the Authorization header";

    fn auth(value: impl TryInto<HeaderValue, Error: std::fmt::Debug>) -> Request<String> {
        get("/v1/calls")
            .header(AUTHORIZATION, value.try_into().unwrap())
            .body(String::new())
            .unwrap()
    }

    fn api_keys(values: &[&str]) -> Request<String> {
        let mut request = get("/v1/calls");
        for value in values {
            request = request.header("x-api-key", *value);
        }
        request.body(String::new()).unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn a_comma_in_a_key_header_is_the_401_of_duplicated_lines() {
        let h = guarded(Limit::new("per_key", api_key()).quota(per_minute(10)));
        let lines = h.send(api_keys(&["k_victim", "k_attacker"])).await;
        assert_key_error(&lines, KeyErrorKind::Conflicting, "X-API-Key header");
        for folded in [
            "k_victim, k_attacker",
            "k_victim,k_attacker",
            "k_1,",
            ",k_1",
        ] {
            let reply = h.send(api_keys(&[folded])).await;
            assert_key_error(&reply, KeyErrorKind::Conflicting, "X-API-Key header");
            assert_eq!(reply.body, lines.body, "{folded:?}");
        }
        assert_eq!(
            lines.json()["error"]["message"],
            "The request has more than one X-API-Key header, with different values."
        );
        // A comma in one of several lines too.
        let reply = h.send(api_keys(&["k_1", "k_1, k_2"])).await;
        assert_eq!(reply.body, lines.body);
        // Nothing was counted.
        rejects_uncounted(
            &h,
            api_keys(&["k_1, k_2"]),
            KeyErrorKind::Conflicting,
            "X-API-Key header",
            with_key("k_1"),
        )
        .await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_folded_header_of_equal_values_is_that_one_key() {
        let h = Harness::one_limit(Limit::new("per_key", api_key()).quota(per_minute(3)));
        let remaining = |reply: Reply| {
            assert_eq!(reply.status, StatusCode::OK);
            reply.header("x-ratelimit-remaining").to_owned()
        };
        assert_eq!(remaining(h.send(api_keys(&["k_1, k_1"])).await), "2");
        assert_eq!(remaining(h.send(api_keys(&["k_1", "k_1,k_1"])).await), "1");
        assert_eq!(remaining(h.send(with_key("k_1")).await), "0");
        assert_eq!(
            h.status(api_keys(&["k_1,k_1"])).await,
            StatusCode::TOO_MANY_REQUESTS
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_comma_never_falls_back_to_the_next_alternative() {
        let h = Harness::one_limit(
            Limit::new("per_client", FirstOf::new().or(api_key()).or(PeerIp::new()))
                .quota(per_minute(10)),
        );
        let reply = h
            .send(from_peer(
                "192.0.2.1",
                get("/").header("x-api-key", "k_1, k_2"),
            ))
            .await;
        assert_key_error(&reply, KeyErrorKind::Conflicting, "X-API-Key header");
        assert_eq!(h.calls(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn allow_commas_reads_a_comma_as_part_of_the_key() {
        let h = Harness::one_limit(
            Limit::new("per_key", api_key().allow_commas()).quota(per_minute(2)),
        );
        let remaining = |reply: Reply| {
            assert_eq!(reply.status, StatusCode::OK, "body: {:?}", reply.body);
            reply.header("x-ratelimit-remaining").to_owned()
        };
        assert_eq!(remaining(h.send(api_keys(&["K, K2"])).await), "1");
        assert_eq!(remaining(h.send(api_keys(&[" K, K2 "])).await), "0");
        assert_eq!(
            h.status(api_keys(&["K, K2"])).await,
            StatusCode::TOO_MANY_REQUESTS
        );
        // `K, K2` is neither `K` nor `K2`, nor `K,K2`.
        assert_eq!(remaining(h.send(with_key("K")).await), "1");
        assert_eq!(remaining(h.send(with_key("K2")).await), "1");
        assert_eq!(remaining(h.send(with_key("K,K2")).await), "1");
        // Lines with different values are still a conflict.
        let reply = h.send(api_keys(&["K", "K2"])).await;
        assert_key_error(&reply, KeyErrorKind::Conflicting, "X-API-Key header");
        assert_eq!(h.calls(), 5);
    }

    #[tokio::test(start_paused = true)]
    async fn bearer_credentials_outside_rfc_6750_are_401_and_uncounted() {
        const TOKEN: &str = "The Bearer token in the Authorization header is malformed. \
                             A bearer token is letters, digits and `-._~+/`, then optional `=` padding.";
        const SCHEME: &str =
            "The Authorization header is malformed. Expected `Authorization: Bearer <token>`.";
        const ENCODING: &str = "The Bearer token in the Authorization header is not valid UTF-8.";
        let malformed_token = |v: &[u8]| (v.to_vec(), KeyErrorKind::Malformed, BEARER, TOKEN);
        let mut cases: Vec<_> = [
            "Bearer tok\tx",
            "Bearer \ttok",
            "Bearer tok x",
            "Bearer tok=x",
            "Bearer =tok",
            "Bearer ==",
            "Bearer tok==x",
            "Bearer t\u{e9}k",
            "Bearer tok\"",
        ]
        .iter()
        .map(|v| malformed_token(v.as_bytes()))
        .collect();
        for c in b"!#$%&'()*:;<>?@[\\]^`{|}" {
            cases.push(malformed_token(
                &[b"Bearer tok".as_slice(), &[*c], b"x"].concat(),
            ));
        }
        // The scheme is followed by one or more spaces, nothing else.
        for value in ["Bearer\ttok", "Bearertok", "Bearer-tok", "Token tok"] {
            let value = value.as_bytes().to_vec();
            cases.push((
                value,
                KeyErrorKind::Malformed,
                "Authorization header",
                SCHEME,
            ));
        }
        cases.push((
            b"Bearer tok\xff".to_vec(),
            KeyErrorKind::NotUtf8,
            BEARER,
            ENCODING,
        ));
        // Other control characters cannot even reach a header value.
        for c in (0u8..0x20).filter(|&c| c != b'\t').chain([0x7f]) {
            assert!(HeaderValue::from_bytes(&[b't', c]).is_err());
        }
        for (value, kind, source, message) in cases {
            let shown = String::from_utf8_lossy(&value).into_owned();
            let h = guarded(Limit::new("per_token", Header::bearer()).quota(per_minute(10)));
            let bad = || auth(HeaderValue::from_bytes(&value).unwrap());
            let reply = h.send(bad()).await;
            assert_key_error(&reply, kind, source);
            assert_eq!(reply.json()["error"]["message"], message, "{shown:?}");
            rejects_uncounted(&h, bad(), kind, source, auth("Bearer tok_1")).await;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn b64tokens_are_admitted_and_counted_exactly() {
        let h = Harness::one_limit(Limit::new("per_token", Header::bearer()).quota(per_minute(3)));
        let remaining = |reply: Reply| {
            assert_eq!(reply.status, StatusCode::OK, "body: {:?}", reply.body);
            reply.header("x-ratelimit-remaining").to_owned()
        };
        let token = "aZ09-._~+/Tok==";
        for (value, left) in [
            (format!("Bearer {token}"), "2"),
            // One or more spaces after the scheme, any case.
            (format!("bEaReR    {token}"), "1"),
            // Duplicated lines folded by a proxy, when they agree.
            (format!("Bearer {token}, Bearer {token}"), "0"),
        ] {
            assert_eq!(
                remaining(h.send(auth(value.as_str())).await),
                left,
                "{value}"
            );
        }
        assert_eq!(
            h.status(auth(format!("Bearer {token}").as_str())).await,
            StatusCode::TOO_MANY_REQUESTS
        );
        // Padding and case are part of the token.
        for other in ["aZ09-._~+/Tok=", "aZ09-._~+/Tok", "aZ09-._~+/TOK==", "x="] {
            assert_eq!(
                remaining(h.send(auth(format!("Bearer {other}").as_str())).await),
                "2",
                "{other}"
            );
        }
        assert_eq!(h.calls(), 7);
    }

    #[tokio::test(start_paused = true)]
    async fn folded_authorization_lines_that_differ_are_the_401_of_duplicated_lines() {
        let h = guarded(Limit::new("per_token", Header::bearer()).quota(per_minute(10)));
        let lines = h
            .send(
                get("/v1/calls")
                    .header(AUTHORIZATION, "Bearer tok_1")
                    .header(AUTHORIZATION, "Bearer tok_2")
                    .body(String::new())
                    .unwrap(),
            )
            .await;
        assert_key_error(&lines, KeyErrorKind::Conflicting, BEARER);
        let folded = h.send(auth("Bearer tok_1, Bearer tok_2")).await;
        assert_key_error(&folded, KeyErrorKind::Conflicting, BEARER);
        assert_eq!(folded.body, lines.body);
        rejects_uncounted(
            &h,
            auth("Bearer tok_1,tok_2"),
            KeyErrorKind::Conflicting,
            BEARER,
            auth("Bearer tok_1"),
        )
        .await;
    }
}
