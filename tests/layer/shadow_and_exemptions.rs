//! Shadow mode, allowlists and the event hook, through the public API.

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use http::{Request, Response, StatusCode};
use tower::util::BoxCloneService;
use tower::{service_fn, Layer, ServiceExt};
use tower_ratelimit::key::Header;
use tower_ratelimit::{
    Decision, EventKind, Limit, Policy, PolicyBuilder, Quota, RateLimitLayer, ResponseBody, Window,
};

type Svc = BoxCloneService<Request<String>, Response<ResponseBody<String>>, Infallible>;

/// What the event hook saw: kind, limit, whether a bucket and a decision came
/// with it.
type Seen = Arc<Mutex<Vec<(EventKind, String, bool, bool)>>>;

struct Harness {
    svc: Svc,
    calls: Arc<AtomicUsize>,
    seen: Seen,
}

impl Harness {
    fn new(builder: PolicyBuilder) -> Self {
        let calls = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&calls);
        let inner = service_fn(move |_req: Request<String>| {
            counter.fetch_add(1, Ordering::SeqCst);
            async { Ok::<_, Infallible>(Response::new(String::from("ok"))) }
        });
        let seen: Seen = Arc::default();
        let record = Arc::clone(&seen);
        let layer = RateLimitLayer::new(builder.build().unwrap())
            .decision_extensions(true)
            .on_event(move |event| {
                record.lock().unwrap().push((
                    event.kind(),
                    event.limit().to_owned(),
                    event.bucket().is_some(),
                    event.decision().is_some(),
                ));
            });
        Harness {
            svc: BoxCloneService::new(layer.layer(inner)),
            calls,
            seen,
        }
    }

    async fn send(&self, key: Option<&str>, peer: &str) -> Response<ResponseBody<String>> {
        let mut builder = Request::get("/v1/calls");
        if let Some(key) = key {
            builder = builder.header("x-api-key", key);
        }
        let mut request = builder.body(String::new()).unwrap();
        request
            .extensions_mut()
            .insert(SocketAddr::new(peer.parse::<IpAddr>().unwrap(), 4000));
        self.svc.clone().oneshot(request).await.unwrap()
    }

    fn events(&self) -> Vec<(EventKind, String, bool, bool)> {
        std::mem::take(&mut *self.seen.lock().unwrap())
    }
}

fn api_key() -> Header {
    Header::parse("X-API-Key").unwrap()
}

fn per_minute(n: u32) -> Quota {
    Quota::new(Window::per_minute(n))
}

fn remaining(response: &Response<ResponseBody<String>>) -> u64 {
    response.headers()["x-ratelimit-remaining"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap()
}

#[tokio::test(start_paused = true)]
async fn a_shadow_limit_never_refuses_but_reports_and_counts_like_an_enforced_one() {
    let h = Harness::new(
        Policy::builder().limit(
            Limit::new("per_key", api_key())
                .quota(per_minute(3))
                .shadow(true),
        ),
    );
    let mut shadow_refused = Vec::new();
    for _ in 0..6 {
        let response = h.send(Some("k"), "192.0.2.1").await;
        assert_eq!(response.status(), StatusCode::OK);
        let decision = response.extensions().get::<Decision>().unwrap();
        assert!(decision.is_admitted());
        assert!(response.headers().get("retry-after").is_none());
        shadow_refused.push(decision.shadow_refused());
    }
    assert_eq!(
        h.calls.load(Ordering::SeqCst),
        6,
        "every request went through"
    );
    // It counted exactly what an enforced limit would: 3 admitted, then
    // refusals that consume nothing.
    assert_eq!(shadow_refused, [false, false, false, true, true, true]);
    let events = h.events();
    assert_eq!(events.len(), 3);
    assert!(events
        .iter()
        .all(|e| *e == (EventKind::ShadowRefused, "per_key".to_owned(), true, true)));
}

#[tokio::test(start_paused = true)]
async fn a_shadow_refusal_charges_the_shadow_limit_nothing_and_never_blocks_the_enforced_one() {
    let h = Harness::new(
        Policy::builder()
            .limit(Limit::new("enforced", api_key()).quota(per_minute(10)))
            .limit(
                Limit::new("rehearsal", api_key())
                    .quota(per_minute(1))
                    .shadow(true),
            ),
    );
    for i in 0..10u64 {
        let response = h.send(Some("k"), "192.0.2.1").await;
        assert_eq!(response.status(), StatusCode::OK, "request {i}");
        let decision = response.extensions().get::<Decision>().unwrap();
        assert_eq!(decision.shadow_refused(), i > 0, "request {i}");
        let enforced = decision
            .windows()
            .iter()
            .find(|w| w.limit_index == 0)
            .unwrap();
        assert_eq!(
            u64::from(enforced.remaining),
            9 - i,
            "the enforced limit counts every request"
        );
    }
    let refused = h.send(Some("k"), "192.0.2.1").await;
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    let events = h.events();
    assert_eq!(
        events
            .iter()
            .filter(|e| e.0 == EventKind::ShadowRefused)
            .count(),
        9
    );
    assert_eq!(
        events.last().unwrap(),
        &(EventKind::Refused, "enforced".to_owned(), true, true)
    );
}

#[tokio::test(start_paused = true)]
async fn a_shadow_limit_lets_a_request_without_a_key_through() {
    let h = Harness::new(
        Policy::builder().limit(
            Limit::new("per_key", api_key())
                .quota(per_minute(3))
                .shadow(true),
        ),
    );
    let response = h.send(None, "192.0.2.1").await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        h.events(),
        [(EventKind::KeyRejected, "per_key".to_owned(), false, false)]
    );
}

#[tokio::test(start_paused = true)]
async fn an_exempt_key_is_never_refused_nor_counted() {
    let h = Harness::new(
        Policy::builder().limit(
            Limit::new("per_key", api_key())
                .quota(per_minute(2))
                .exempt_keys(["internal"]),
        ),
    );
    for _ in 0..50 {
        let response = h.send(Some("internal"), "192.0.2.1").await;
        assert_eq!(response.status(), StatusCode::OK);
        assert!(response.headers().get("x-ratelimit-limit").is_none());
    }
    // Other keys are limited as usual.
    assert_eq!(remaining(&h.send(Some("k"), "192.0.2.1").await), 1);
    assert_eq!(remaining(&h.send(Some("k"), "192.0.2.1").await), 0);
    assert_eq!(
        h.send(Some("k"), "192.0.2.1").await.status(),
        StatusCode::TOO_MANY_REQUESTS
    );
    assert_eq!(h.calls.load(Ordering::SeqCst), 52);
}

#[tokio::test(start_paused = true)]
async fn an_exempt_key_of_a_limit_keyed_by_ip_is_an_address() {
    // Written as an operator writes addresses: the IPv4-mapped form of a
    // peer, and an IPv6 address whose /64 the limit groups.
    let h = Harness::new(
        Policy::builder().limit(
            Limit::new("per_ip", tower_ratelimit::key::PeerIp::new())
                .quota(per_minute(1))
                .exempt_keys(["::ffff:10.1.2.3", "2001:db8::1"]),
        ),
    );
    for peer in ["10.1.2.3", "::ffff:10.1.2.3", "2001:db8::ffff"] {
        for _ in 0..3 {
            assert_eq!(h.send(None, peer).await.status(), StatusCode::OK, "{peer}");
        }
    }
    assert_eq!(remaining(&h.send(None, "10.1.2.4").await), 0);
    assert_eq!(
        h.send(None, "10.1.2.4").await.status(),
        StatusCode::TOO_MANY_REQUESTS
    );

    // A text that no request of the limit has is an error, not a silent
    // no-op.
    let err = Policy::builder()
        .limit(
            Limit::new("per_ip", tower_ratelimit::key::PeerIp::new())
                .quota(per_minute(1))
                .exempt_keys(["10.1.2.3", "partner-key"]),
        )
        .build()
        .unwrap_err();
    assert_eq!(err.field(), "limits[0].exempt_keys[1]");
    assert!(err.message().contains("IP address"), "{err}");
    assert!(!err.to_string().contains("partner-key"), "{err}");
}

#[tokio::test(start_paused = true)]
async fn an_exempt_range_is_never_refused_and_other_limits_still_apply() {
    let h = Harness::new(
        Policy::builder()
            .limit(
                Limit::new("per_key", api_key())
                    .quota(per_minute(1))
                    .exempt_ips(["10.0.0.0/8", "2001:db8::/32"]),
            )
            .limit(Limit::new("per_key_daily", api_key()).quota(Quota::new(Window::per_day(5)))),
    );
    for peer in ["10.1.2.3", "10.200.0.1", "2001:db8::7", "::ffff:10.0.0.9"] {
        assert_eq!(
            h.send(Some("k"), peer).await.status(),
            StatusCode::OK,
            "{peer}"
        );
    }
    // The daily limit was not exempt: 4 of its 5 are spent.
    let outside = h.send(Some("k"), "192.0.2.1").await;
    assert_eq!(outside.status(), StatusCode::OK);
    assert_eq!(remaining(&outside), 0);
    assert_eq!(
        h.send(Some("k"), "10.0.0.1").await.status(),
        StatusCode::TOO_MANY_REQUESTS,
        "the daily limit applies inside the exempt range"
    );
}

#[test]
fn bad_exemptions_are_config_errors_naming_the_field() {
    let err = Policy::builder()
        .limit(
            Limit::new("per_key", api_key())
                .quota(per_minute(1))
                .exempt_ips(["10.0.0.0/8", "not-an-ip"]),
        )
        .build()
        .unwrap_err();
    assert_eq!(err.field(), "limits[0].exempt_ips[1]");
    assert!(err.message().contains("not-an-ip"), "{err}");
    let err = Policy::builder()
        .limit(
            Limit::new("per_key", api_key())
                .quota(per_minute(1))
                .exempt_keys([""]),
        )
        .build()
        .unwrap_err();
    assert_eq!(err.field(), "limits[0].exempt_keys[0]");
}

#[test]
fn exempt_keys_never_show_in_debug_output() {
    let limit = Limit::new("per_key", api_key())
        .quota(per_minute(1))
        .exempt_keys(["sk_live_partner_secret"]);
    let shown = format!("{limit:?}");
    assert!(!shown.contains("sk_live_partner_secret"), "{shown}");
    let policy = Policy::builder().limit(limit).build().unwrap();
    assert!(!format!("{policy:?}").contains("sk_live_partner_secret"));
}

#[tokio::test(start_paused = true)]
async fn policy_files_express_shadow_mode_and_allowlists() {
    let policy = Policy::from_toml(
        r#"
        [[limits]]
        name = "per_key"
        key = { header = "X-API-Key" }
        shadow = true
        exempt_keys = ["internal"]
        exempt_ips = ["10.0.0.0/8"]
        routes = [{ windows = ["1/minute"] }]
        "#,
    )
    .unwrap();
    let svc = RateLimitLayer::new(policy)
        .decision_extensions(true)
        .layer(service_fn(|_req: Request<String>| async {
            Ok::<_, Infallible>(Response::new(String::new()))
        }));
    for _ in 0..3 {
        let request = Request::get("/")
            .header("x-api-key", "k")
            .body(String::new())
            .unwrap();
        let response = svc.clone().oneshot(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK, "shadow: never refused");
    }
    let request = Request::get("/")
        .header("x-api-key", "internal")
        .body(String::new())
        .unwrap();
    let response = svc.clone().oneshot(request).await.unwrap();
    assert!(
        response.headers().get("x-ratelimit-limit").is_none(),
        "exempt key"
    );
    let err = Policy::from_toml(
        "[[limits]]\nname = \"a\"\nkey = { global = true }\nexempt_ips = [\"10.0.0.0/33\"]\nroutes = [{ windows = [\"1/minute\"] }]\n",
    )
    .unwrap_err();
    assert_eq!(err.field(), "limits[0].exempt_ips[0]");
    assert_eq!(err.line(), Some(4));
}
