//! Keys that are not the text of the path: limits keyed by the client's IP
//! (the peer's, or the one trusted proxies forwarded) and global limits. The
//! admin API reads a key as the limit reads a request's, so a peek shows the
//! bucket the requests count in, a reset frees it, and an override (set
//! through the admin API, the policy or its file) applies to them; a key no
//! request could carry is a 4xx.

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};

use http::{Method, Request, Response, StatusCode};
use serde_json::{json, Value};
use tower::util::BoxCloneService;
use tower::{service_fn, Layer, ServiceExt};
use tower_ratelimit::clock::ManualClock;
use tower_ratelimit::key::{ForwardedIp, Header, PeerIp};
use tower_ratelimit::{
    admin, ConfigErrorKind, Limit, Policy, Quota, RateLimitLayer, ResponseBody, Window,
};

use super::admin_call;

const T0: u64 = 1_700_000_040;

type Svc = BoxCloneService<Request<String>, Response<ResponseBody<String>>, Infallible>;

/// A layer over a service that answers 200, and its admin API.
struct Harness {
    svc: Svc,
    admin: axum::Router,
}

impl Harness {
    fn new(policy: Policy) -> Self {
        let layer = RateLimitLayer::new(policy).clock(ManualClock::at_unix_secs(T0));
        let inner = service_fn(|_req: Request<String>| async {
            Ok::<_, Infallible>(Response::new(String::from("ok")))
        });
        Harness {
            svc: BoxCloneService::new(layer.layer(inner)),
            admin: admin::router(&layer),
        }
    }

    /// `(status, X-RateLimit-Limit)` of a request from the peer `peer`
    /// with the headers `headers`.
    async fn send_with(&self, peer: &str, headers: &[(&str, &str)]) -> (StatusCode, String) {
        let mut request = Request::get("/v1/calls");
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let mut request = request.body(String::new()).unwrap();
        let ip: IpAddr = peer.parse().unwrap();
        request.extensions_mut().insert(SocketAddr::new(ip, 50_000));
        let response = self.svc.clone().oneshot(request).await.unwrap();
        let limit = response
            .headers()
            .get("x-ratelimit-limit")
            .map_or(String::new(), |v| v.to_str().unwrap().to_owned());
        (response.status(), limit)
    }

    /// The status of a request from the peer `peer`.
    async fn send(&self, peer: &str) -> StatusCode {
        self.send_with(peer, &[]).await.0
    }

    async fn admin(&self, method: Method, path: &str, body: &str) -> (StatusCode, Value) {
        admin_call::admin_call(&self.admin, method, path, body).await
    }

    /// The remaining count of the one window of limit `limit`'s one route
    /// for the key `key` (percent-encoded), as a peek shows it.
    async fn remaining(&self, limit: &str, key: &str) -> u64 {
        let path = format!("/limits/{limit}/keys/{key}");
        let (status, peek) = self.admin(Method::GET, &path, "").await;
        assert_eq!(status, StatusCode::OK, "{path}: {peek}");
        let windows = admin_call::limits_and_remaining(&peek["routes"][0]);
        assert_eq!(windows.len(), 1, "{peek}");
        assert_eq!(windows[0].0, 3, "{peek}");
        windows[0].1
    }

    /// Resets `key` (percent-encoded) in limit `limit`.
    async fn reset(&self, limit: &str, key: &str) {
        let path = format!("/limits/{limit}/keys/{key}");
        let (status, body) = self.admin(Method::DELETE, &path, "").await;
        assert_eq!(
            (status, body),
            (StatusCode::OK, json!({"limit": limit, "reset": true})),
            "{path}"
        );
    }
}

fn three_per_minute() -> Quota {
    Quota::new(Window::per_minute(3))
}

fn policy(limit: Limit) -> Policy {
    Policy::builder().limit(limit).build().unwrap()
}

/// Sends 4 requests from `peer`: the last is refused.
async fn use_up(h: &Harness, peer: &str) {
    let statuses = [
        h.send(peer).await,
        h.send(peer).await,
        h.send(peer).await,
        h.send(peer).await,
    ];
    assert_eq!(
        statuses,
        [
            StatusCode::OK,
            StatusCode::OK,
            StatusCode::OK,
            StatusCode::TOO_MANY_REQUESTS
        ],
        "{peer}"
    );
}

#[tokio::test]
async fn a_peer_ipv4_key_is_the_address_s_bucket() {
    let h = Harness::new(policy(
        Limit::new("l", PeerIp::new()).quota(three_per_minute()),
    ));
    assert_eq!(h.remaining("l", "10.1.2.3").await, 3);
    use_up(&h, "10.1.2.3").await;
    assert_eq!(h.remaining("l", "10.1.2.3").await, 0);
    // The forms a client's address takes: mapped, with a port, spaced.
    assert_eq!(h.remaining("l", "::ffff:10.1.2.3").await, 0);
    assert_eq!(h.remaining("l", "%3A%3Affff%3A10.1.2.3").await, 0);
    assert_eq!(h.remaining("l", "10.1.2.3:443").await, 0);
    assert_eq!(h.remaining("l", "%2010.1.2.3%20").await, 0);
    assert_eq!(h.remaining("l", "10.1.2.4").await, 3);

    h.reset("l", "10.1.2.3").await;
    assert_eq!(h.remaining("l", "10.1.2.3").await, 3);
    assert_eq!(h.send("10.1.2.3").await, StatusCode::OK);
    assert_eq!(h.remaining("l", "10.1.2.3").await, 2);
}

#[tokio::test]
async fn a_dual_stack_peer_and_its_mapped_key_are_the_ipv4_address() {
    let h = Harness::new(policy(
        Limit::new("l", PeerIp::new()).quota(three_per_minute()),
    ));
    use_up(&h, "::ffff:10.1.2.3").await;
    assert_eq!(h.remaining("l", "10.1.2.3").await, 0);
    h.reset("l", "::ffff:10.1.2.3").await;
    assert_eq!(h.send("10.1.2.3").await, StatusCode::OK);
    assert_eq!(h.remaining("l", "::ffff:10.1.2.3").await, 2);
}

#[tokio::test]
async fn a_peer_ipv6_key_is_its_group_s_bucket() {
    let h = Harness::new(policy(
        Limit::new("l", PeerIp::new().ipv6_prefix(48).unwrap()).quota(three_per_minute()),
    ));
    use_up(&h, "2001:db8::1").await;
    assert_eq!(h.remaining("l", "2001:db8::1").await, 0);
    // Any address of the /48, in any of its forms, is the group.
    assert_eq!(h.remaining("l", "2001:db8:0:ffff::9").await, 0);
    assert_eq!(h.remaining("l", "%5B2001:DB8::1%5D").await, 0);
    assert_eq!(h.remaining("l", "%5B2001:db8::1%5D:443").await, 0);
    assert_eq!(h.remaining("l", "2001:db8:1::1").await, 3);

    h.reset("l", "2001:db8:0:1::2").await;
    assert_eq!(h.send("2001:db8::1").await, StatusCode::OK);
    assert_eq!(h.remaining("l", "2001:db8::1").await, 2);
}

#[tokio::test]
async fn a_forwarded_ip_key_is_the_client_s_bucket() {
    let forwarded = ForwardedIp::new(["10.0.0.0/8"]).unwrap();
    let h = Harness::new(policy(Limit::new("l", forwarded).quota(three_per_minute())));
    let via_proxy = |ip: &'static str| [("x-forwarded-for", ip)];
    for _ in 0..3 {
        let sent = h.send_with("10.0.0.1", &via_proxy("203.0.113.7")).await;
        assert_eq!(sent.0, StatusCode::OK);
    }
    let sent = h.send_with("10.0.0.1", &via_proxy("203.0.113.7")).await;
    assert_eq!(sent.0, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(h.remaining("l", "203.0.113.7").await, 0);
    assert_eq!(h.remaining("l", "10.0.0.1").await, 3);

    h.reset("l", "::ffff:203.0.113.7").await;
    let sent = h.send_with("10.0.0.1", &via_proxy("203.0.113.7")).await;
    assert_eq!(sent.0, StatusCode::OK);
    assert_eq!(h.remaining("l", "203.0.113.7").await, 2);

    // An IPv6 client, grouped by /64 (the default).
    for _ in 0..3 {
        let sent = h.send_with("10.0.0.1", &via_proxy("2001:db8::7")).await;
        assert_eq!(sent.0, StatusCode::OK);
    }
    assert_eq!(h.remaining("l", "2001:db8::1234").await, 0);
    h.reset("l", "2001:db8::7").await;
    assert_eq!(h.remaining("l", "2001:db8::7").await, 3);
}

#[tokio::test]
async fn a_forwarded_obfuscated_identifier_is_a_key() {
    let forwarded = ForwardedIp::new(["10.0.0.0/8"]).unwrap().forwarded();
    let h = Harness::new(policy(Limit::new("l", forwarded).quota(three_per_minute())));
    for _ in 0..2 {
        let sent = h
            .send_with("10.0.0.1", &[("forwarded", "for=_node7")])
            .await;
        assert_eq!(sent.0, StatusCode::OK);
    }
    assert_eq!(h.remaining("l", "_node7").await, 1);
    h.reset("l", "_node7").await;
    assert_eq!(h.remaining("l", "_node7").await, 3);
}

#[tokio::test]
async fn a_global_limit_s_one_key_is_global() {
    let h = Harness::new(policy(Limit::global("all").quota(three_per_minute())));
    h.send("10.1.2.3").await;
    h.send("10.1.2.4").await;
    h.send("2001:db8::1").await;
    assert_eq!(h.send("10.9.9.9").await, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(h.remaining("all", "global").await, 0);
    h.reset("all", "global").await;
    assert_eq!(h.send("10.9.9.9").await, StatusCode::OK);
    assert_eq!(h.remaining("all", "global").await, 2);

    // Any other key names no request's bucket.
    for method in [Method::GET, Method::DELETE] {
        let (status, body) = h.admin(method, "/limits/all/keys/10.1.2.3", "").await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        assert_eq!(body["field"], "key");
        assert!(
            body["error"].as_str().unwrap().contains("`global`"),
            "{body}"
        );
    }
}

#[tokio::test]
async fn an_override_set_through_the_admin_api_applies_to_the_address() {
    let h = Harness::new(policy(
        Limit::new("l", PeerIp::new()).quota(three_per_minute()),
    ));
    let path = "/limits/l/keys/10.1.2.3/override";
    let (status, body) = h
        .admin(Method::PUT, path, r#"{"windows": ["10/minute"]}"#)
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        h.send_with("10.1.2.3", &[]).await,
        (StatusCode::OK, "10".into())
    );
    assert_eq!(
        h.send_with("::ffff:10.1.2.3", &[]).await,
        (StatusCode::OK, "10".into())
    );
    assert_eq!(
        h.send_with("10.1.2.4", &[]).await,
        (StatusCode::OK, "3".into())
    );
    let (_, peek) = h.admin(Method::GET, "/limits/l/keys/10.1.2.3", "").await;
    assert_eq!(peek["override"], json!({"windows": ["10/minute"]}));
    assert_eq!(
        admin_call::limits_and_remaining(&peek["routes"][0]),
        [(10, 8)]
    );

    let (status, body) = h
        .admin(
            Method::DELETE,
            "/limits/l/keys/::ffff:10.1.2.3/override",
            "",
        )
        .await;
    assert_eq!((status, &body["removed"]), (StatusCode::OK, &json!(true)));
    assert_eq!(h.send_with("10.1.2.3", &[]).await.1, "3");
}

#[tokio::test]
async fn an_override_listed_in_the_policy_applies_to_the_address() {
    let h = Harness::new(policy(
        Limit::new("l", PeerIp::new())
            .quota(three_per_minute())
            .key_quota("2001:db8::1", Quota::new(Window::per_minute(10))),
    ));
    // Another address of the same /64.
    assert_eq!(
        h.send_with("2001:db8::2", &[]).await,
        (StatusCode::OK, "10".into())
    );
    assert_eq!(
        h.send_with("2001:db8:0:1::1", &[]).await,
        (StatusCode::OK, "3".into())
    );
}

#[cfg(feature = "toml")]
#[tokio::test]
async fn an_override_in_a_policy_file_applies_to_the_address() {
    let policy = Policy::from_toml(
        r#"
        [[limits]]
        name = "l"
        key = { forwarded_ip = { trusted = ["10.0.0.0/8"] } }
        routes = [{ windows = ["3/minute"] }]

        [[limits.overrides]]
        key = "203.0.113.7"
        windows = ["10/minute"]
        "#,
    )
    .unwrap();
    let h = Harness::new(policy);
    let client = |ip| [("x-forwarded-for", ip)];
    assert_eq!(
        h.send_with("10.0.0.1", &client("203.0.113.7")).await,
        (StatusCode::OK, "10".into())
    );
    assert_eq!(
        h.send_with("10.0.0.1", &client("203.0.113.8")).await,
        (StatusCode::OK, "3".into())
    );
    let (_, peek) = h.admin(Method::GET, "/limits/l/keys/203.0.113.7", "").await;
    assert_eq!(peek["override"], json!({"windows": ["10/minute"]}));
}

#[tokio::test]
async fn an_override_handle_reads_the_address() {
    let policy = policy(Limit::new("l", PeerIp::new()).quota(three_per_minute()));
    let overrides = policy.overrides();
    let h = Harness::new(policy);
    overrides
        .set_quota("l", "10.1.2.3", Quota::new(Window::per_minute(10)))
        .unwrap();
    assert_eq!(h.send_with("10.1.2.3", &[]).await.1, "10");
    assert_eq!(
        overrides.quota_of("l", "::ffff:10.1.2.3"),
        Some(Quota::new(Window::per_minute(10)))
    );
    let err = overrides
        .set_quota("l", "10.1.2", Quota::new(Window::per_minute(10)))
        .unwrap_err();
    assert_eq!(
        (err.kind(), err.field()),
        (ConfigErrorKind::InvalidValue, "key")
    );
}

#[test]
fn a_policy_refuses_an_override_no_request_could_match() {
    let err = Policy::builder()
        .limit(
            Limit::new("l", PeerIp::new())
                .quota(three_per_minute())
                .key_quota("10.1.2.3", three_per_minute())
                .key_quota("client-7", three_per_minute()),
        )
        .build()
        .unwrap_err();
    assert_eq!(
        (err.kind(), err.field()),
        (ConfigErrorKind::InvalidValue, "limits[0].overrides[1].key")
    );
    assert!(err.message().contains("IP address"), "{err}");

    let err = Policy::builder()
        .limit(
            Limit::global("all")
                .quota(three_per_minute())
                .key_quota("everyone", three_per_minute()),
        )
        .build()
        .unwrap_err();
    assert_eq!(err.field(), "limits[0].overrides[0].key");
}

#[tokio::test]
async fn a_key_that_is_not_an_address_is_a_400_that_says_so() {
    let h = Harness::new(policy(
        Limit::new("l", PeerIp::new()).quota(three_per_minute()),
    ));
    for (method, path, body) in [
        (Method::GET, "/limits/l/keys/10.1.2", ""),
        (Method::DELETE, "/limits/l/keys/10.1.2.300", ""),
        (Method::GET, "/limits/l/keys/client-7", ""),
        (Method::GET, "/limits/l/keys/2001:db8::1::2", ""),
        (
            Method::PUT,
            "/limits/l/keys/not-an-ip/override",
            r#"{"windows": ["10/minute"]}"#,
        ),
        (Method::DELETE, "/limits/l/keys/not-an-ip/override", ""),
    ] {
        let (status, value) = h.admin(method.clone(), path, body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{method} {path}: {value}");
        assert_eq!(value["field"], "key", "{value}");
        let message = value["error"].as_str().unwrap();
        assert!(message.contains("IP address"), "{message}");
    }
}

#[tokio::test]
async fn a_key_no_request_could_carry_is_a_4xx() {
    let h = Harness::new(
        Policy::builder()
            .limit(
                Limit::new("per_key", Header::parse("X-API-Key").unwrap())
                    .skip_missing_key(true)
                    .quota(three_per_minute()),
            )
            .limit(
                Limit::new("per_token", Header::bearer())
                    .skip_missing_key(true)
                    .quota(three_per_minute()),
            )
            .limit(Limit::new("per_ip", PeerIp::new()).quota(three_per_minute()))
            .max_key_len(16)
            .build()
            .unwrap(),
    );
    // A request whose key is only spaces is refused.
    let sent = h.send_with("10.1.2.3", &[("x-api-key", "  ")]).await;
    assert_eq!(sent.0, StatusCode::UNAUTHORIZED);
    for path in [
        "/limits/per_key/keys/%20%20",
        "/limits/per_key/keys/%09",
        "/limits/per_key/keys/k_1,k_2",
        "/limits/per_key/keys/k%0A1",
        "/limits/per_key/keys/k_0123456789abcdef",
        "/limits/per_token/keys/not%20a%20token",
        "/limits/per_token/keys/%20",
        "/limits/per_ip/keys/%20%20",
    ] {
        for method in [Method::GET, Method::DELETE] {
            let (status, value) = h.admin(method.clone(), path, "").await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{method} {path}: {value}");
            assert_eq!(value["field"], "key", "{value}");
            assert!(value["error"].is_string(), "{value}");
        }
        let override_path = format!("{path}/override");
        let (status, value) = h
            .admin(Method::PUT, &override_path, r#"{"plan": "x"}"#)
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{override_path}: {value}");
    }

    // A header's key is trimmed as a header line is: ` k ` is `k`.
    h.send_with("10.1.2.3", &[("x-api-key", "k")]).await;
    let (status, peek) = h
        .admin(Method::GET, "/limits/per_key/keys/%20k%20", "")
        .await;
    assert_eq!(status, StatusCode::OK, "{peek}");
    assert_eq!(
        admin_call::limits_and_remaining(&peek["routes"][0]),
        [(3, 2)]
    );
}
