//! Policy files through the public API: a file means exactly what the
//! equivalent code means, every key form and default works, and every kind of
//! mistake is a `ConfigError` naming the field, line and column.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::BodyExt;
use tower::util::BoxCloneService;
use tower::{service_fn, Layer, ServiceExt};
use tower_ratelimit::clock::Clock;
use tower_ratelimit::key::{Extension, FirstOf, ForwardedIp, Header, Key, PathCapture, PeerIp};
use tower_ratelimit::policy::CustomKeys;
use tower_ratelimit::store::MemoryStore;
use tower_ratelimit::{
    Algorithm, ConfigError, ConfigErrorKind, HeaderStyle, Limit, Policy, Quota, RateLimitLayer,
    RefusalFormat, ResponseBody, Window,
};

type Svc = BoxCloneService<Request<String>, Response<ResponseBody<String>>, Infallible>;

/// The layer's default clock, rebuilt (the crate keeps its own private): the
/// wall-clock time when it was created, advanced by Tokio's clock, so that it
/// follows paused time and two services can share one.
#[derive(Debug, Clone, Copy)]
struct SystemClock {
    origin: tokio::time::Instant,
    origin_unix: u64,
}

impl SystemClock {
    fn new() -> Self {
        let origin_unix = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        SystemClock {
            origin: tokio::time::Instant::now(),
            origin_unix,
        }
    }
}

impl Clock for SystemClock {
    fn now(&self) -> u64 {
        self.origin_unix + self.origin.elapsed().as_nanos() as u64
    }
}

fn service(policy: Policy, clock: SystemClock) -> Svc {
    let inner = service_fn(|_req: Request<String>| async {
        Ok::<_, Infallible>(Response::new(String::from("ok")))
    });
    BoxCloneService::new(RateLimitLayer::new(policy).clock(clock).layer(inner))
}

/// A response, read whole.
#[derive(Debug, PartialEq, Eq)]
struct Reply {
    status: StatusCode,
    headers: Vec<(String, String)>,
    body: Bytes,
}

/// The headers the layer writes.
const LAYER_HEADERS: [&str; 6] = [
    "x-ratelimit-limit",
    "x-ratelimit-remaining",
    "x-ratelimit-reset",
    "ratelimit",
    "ratelimit-policy",
    "retry-after",
];

fn layer_headers(headers: &HeaderMap) -> Vec<(String, String)> {
    LAYER_HEADERS
        .iter()
        .filter_map(|name| {
            headers
                .get(*name)
                .map(|v| (name.to_string(), v.to_str().unwrap().to_owned()))
        })
        .collect()
}

async fn send(svc: &Svc, request: Request<String>) -> Reply {
    let response = svc.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let headers = layer_headers(response.headers());
    let body = response.into_body().collect().await.unwrap().to_bytes();
    Reply {
        status,
        headers,
        body,
    }
}

fn request(method: &str, path: &str, api_key: Option<&str>) -> Request<String> {
    let mut builder = Request::builder().method(method).uri(path);
    if let Some(key) = api_key {
        builder = builder.header("x-api-key", key);
    }
    builder.body(String::new()).unwrap()
}

fn from_peer(mut request: Request<String>, peer: &str) -> Request<String> {
    request
        .extensions_mut()
        .insert(SocketAddr::new(peer.parse().unwrap(), 40_000));
    request
}

// ---------------------------------------------------------------------------
// A file means what code means.

const COMPLETE: &str = r#"
headers = "both"
report = "minute"
refusal = "nixflex"
refusal_status = 429
max_key_len = 64

# Per API key: key creation is partitioned from writes, writes from reads.
[[limits]]
name = "per_key"
key = { header = "X-API-Key" }

[[limits.routes]]
methods = ["POST"]
path = "/v1/keys"
windows = ["2/hour"]

[[limits.routes]]
methods = "POST,PUT,PATCH,DELETE"
path = "*"
windows = ["3/minute", { limit = 5, period = "1h" }]
algorithm = "fixed_window"

[[limits.routes]]
windows = ["4/minute", "10/hour"]

# Per call, stacked on the per-key limit.
[[limits]]
name = "per_call"
key = { path = "call_id" }
algorithm = "fixed_window"

[[limits.routes]]
path = "/v1/calls/{call_id}/control"
windows = ["2/minute"]
cost = 1
"#;

fn complete_in_code() -> Policy {
    Policy::builder()
        .header_style(HeaderStyle::Both)
        .report_period(Duration::from_secs(60))
        .refusal(RefusalFormat::named("nixflex").unwrap())
        .refusal_status(StatusCode::TOO_MANY_REQUESTS)
        .max_key_len(64)
        .limit(
            Limit::new("per_key", Header::parse("X-API-Key").unwrap())
                .route("POST /v1/keys", Quota::new(Window::per_hour(2)))
                .route(
                    "POST,PUT,PATCH,DELETE *",
                    Quota::new(Window::per_minute(3))
                        .and(Window::per_hour(5))
                        .algorithm(Algorithm::FixedWindow),
                )
                .quota(Quota::new(Window::per_minute(4)).and(Window::per_hour(10))),
        )
        .limit(Limit::new("per_call", PathCapture::new("call_id")).route(
            "/v1/calls/{call_id}/control",
            Quota::new(Window::per_minute(2)).algorithm(Algorithm::FixedWindow),
        ))
        .build()
        .unwrap()
}

#[test]
fn a_complete_file_compiles_to_the_same_policy_as_code() {
    let file = Policy::from_toml(COMPLETE).unwrap();
    assert_eq!(format!("{file:?}"), format!("{:?}", complete_in_code()));
}

#[tokio::test(start_paused = true)]
async fn a_complete_file_behaves_like_the_same_policy_in_code() {
    let clock = SystemClock::new();
    let from_file = service(Policy::from_toml(COMPLETE).unwrap(), clock);
    let from_code = service(complete_in_code(), clock);

    let methods = ["GET", "POST", "PUT", "DELETE"];
    let paths = [
        "/v1/keys",
        "/v1/calls",
        "/v1/calls/c1/control",
        "/v1/calls/c2/control",
        "/",
    ];
    let keys = [Some("k_alpha"), Some("k_beta"), None, Some("")];
    // A fixed pseudo-random walk, so the run is the same every time.
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = |n: usize| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state % n as u64) as usize
    };
    let mut statuses = std::collections::BTreeMap::<u16, usize>::new();
    for step in 0..400 {
        let (method, path, key) = (methods[next(4)], paths[next(5)], keys[next(4)]);
        let a = send(&from_file, request(method, path, key)).await;
        let b = send(&from_code, request(method, path, key)).await;
        assert_eq!(a, b, "step {step}: {method} {path} key {key:?}");
        *statuses.entry(a.status.as_u16()).or_default() += 1;
        tokio::time::advance(Duration::from_millis(100 + 700 * next(4) as u64)).await;
    }
    // The walk saw admissions, refusals and unusable keys.
    for status in [200, 429, 401] {
        assert!(
            statuses.get(&status).copied().unwrap_or(0) >= 10,
            "{statuses:?}"
        );
    }
}

#[test]
fn the_demo_servers_default_policy_loads() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/demo/policies/default.toml");
    let file = Policy::from_toml_file(path).unwrap();
    let code = Policy::builder()
        .limit(
            Limit::new("per_key", Header::parse("X-API-Key").unwrap())
                .quota(Quota::new(Window::per_minute(60)).and(Window::per_hour(1000))),
        )
        .build()
        .unwrap();
    assert_eq!(format!("{file:?}"), format!("{code:?}"));
}

#[test]
fn files_load_from_disk() {
    let path = std::env::temp_dir().join(format!(
        "tower-ratelimit-policy-{}.toml",
        std::process::id()
    ));
    std::fs::write(&path, COMPLETE).unwrap();
    let loaded = Policy::from_toml_file(&path);
    std::fs::remove_file(&path).unwrap();
    assert_eq!(
        format!("{:?}", loaded.unwrap()),
        format!("{:?}", complete_in_code())
    );
}

/// The complete example of the README's "Policy files" section, verbatim.
const README_EXAMPLE: &str = r#"# Response format (all optional; the values shown are the defaults except where noted).
headers = "both"                # "x-ratelimit" (default) | "ietf" | "both" | "draft7" | "none"
report = "minute"               # "most_restrictive" (default) or a window's period
refusal = "nixflex"             # "json" (default) | "problem_json" | "flireo" | "nixflex" | "talkpilot" | "exotel"
refusal_status = 429            # default 429
max_key_len = 4096              # default 4096 bytes

# Per API key. Inside a limit the first matching route wins:
# creating keys is 10/hour *instead of* the write quota.
[[limits]]
name = "per_key"
key = { header = "X-API-Key" }
on_missing_key = "reject"       # default: a missing key is a 401, never a shared bucket

[[limits.routes]]
methods = ["POST"]
path = "/v1/keys"
windows = ["10/hour"]

[[limits.routes]]
methods = ["POST", "PUT", "PATCH", "DELETE"]
windows = ["120/minute"]
algorithm = "fixed_window"

[[limits.routes]]               # everything else: 600/minute and 10,000/hour, both
windows = ["600/minute", { limit = 10_000, period = "1h" }]

# Per call, stacked on the per-key limit: a call-control request counts
# against both.
[[limits]]
name = "per_call"
key = { path = "call_id" }

[[limits.routes]]
path = "/v1/calls/{call_id}/control"
windows = ["10/minute"]

# A whole-API ceiling by client address, behind a load balancer.
[[limits]]
name = "per_client"
key = { forwarded_ip = { trusted = ["10.0.0.0/8"], header = "x-forwarded-for", ipv6_prefix = 64 } }
routes = [{ windows = ["20/second", "100/minute"] }]
"#;

#[test]
fn the_readme_example_loads() {
    let policy = Policy::from_toml(README_EXAMPLE).unwrap();
    assert_eq!(
        policy.limit_names().collect::<Vec<_>>(),
        ["per_key", "per_call", "per_client"]
    );
    assert_eq!(policy.header_style(), HeaderStyle::Both);
}

#[test]
fn every_header_style_has_a_name() {
    let rest = with_routes("routes = [{ windows = [\"60/minute\"] }]\n");
    for (name, style) in [
        ("x-ratelimit", HeaderStyle::XRateLimit),
        ("ietf", HeaderStyle::Ietf),
        ("both", HeaderStyle::Both),
        ("draft7", HeaderStyle::Draft7),
        ("Draft7", HeaderStyle::Draft7),
        ("none", HeaderStyle::None),
    ] {
        let policy = Policy::from_toml(&format!("headers = \"{name}\"\n{rest}")).unwrap();
        assert_eq!(policy.header_style(), style, "{name}");
    }
}

#[tokio::test(start_paused = true)]
async fn draft7_headers_from_a_file_are_those_of_the_same_policy_in_code() {
    let file = Policy::from_toml(
        r#"
headers = "draft7"
report = "minute"

[[limits]]
name = "per_key"
key = { header = "X-API-Key" }
routes = [{ windows = ["2/minute", "100/hour"] }]
"#,
    )
    .unwrap();
    let code = Policy::builder()
        .limit(
            Limit::new("per_key", Header::parse("X-API-Key").unwrap())
                .quota(Quota::new(Window::per_minute(2)).and(Window::per_hour(100))),
        )
        .header_style(HeaderStyle::Draft7)
        .report_period(Duration::from_secs(60))
        .build()
        .unwrap();
    assert_eq!(format!("{file:?}"), format!("{code:?}"));
    let clock = SystemClock::new();
    let (file, code) = (service(file, clock), service(code, clock));
    for expected in [
        StatusCode::OK,
        StatusCode::OK,
        StatusCode::TOO_MANY_REQUESTS,
    ] {
        let a = send(&file, request("GET", "/v1/calls", Some("k"))).await;
        let b = send(&code, request("GET", "/v1/calls", Some("k"))).await;
        assert_eq!(a.status, expected);
        assert_eq!(a, b);
        let names: Vec<_> = a.headers.iter().map(|(n, _)| n.as_str()).collect();
        if expected == StatusCode::OK {
            assert_eq!(names, ["ratelimit", "ratelimit-policy"]);
        } else {
            assert_eq!(names, ["ratelimit", "ratelimit-policy", "retry-after"]);
        }
        assert_eq!(a.headers[1].1, "2;w=60");
    }
}

// ---------------------------------------------------------------------------
// Defaults.

#[test]
fn defaults_are_the_builders_defaults() {
    let file = Policy::from_toml(
        r#"
[[limits]]
name = "per_key"
key = { header = "X-API-Key" }
routes = [{ windows = ["2/minute"] }]
"#,
    )
    .unwrap();
    let code = Policy::builder()
        .limit(
            Limit::new("per_key", Header::parse("X-API-Key").unwrap())
                .skip_missing_key(false)
                .route(
                    "*",
                    Quota::new(Window::per_minute(2))
                        .cost(1)
                        .algorithm(Algorithm::Gcra),
                ),
        )
        .header_style(HeaderStyle::XRateLimit)
        .report_most_restrictive()
        .refusal(RefusalFormat::json())
        .refusal_status(StatusCode::TOO_MANY_REQUESTS)
        .max_key_len(4096)
        .build()
        .unwrap();
    assert_eq!(format!("{file:?}"), format!("{code:?}"));
    assert_eq!(file.header_style(), HeaderStyle::XRateLimit);
}

#[tokio::test(start_paused = true)]
async fn defaults_behave_as_documented() {
    let policy = Policy::from_toml(
        r#"
[[limits]]
name = "per_key"
key = { header = "X-API-Key" }
routes = [{ windows = ["2/minute"] }]
"#,
    )
    .unwrap();
    let svc = service(policy, SystemClock::new());
    // Any method, any path.
    assert_eq!(
        send(&svc, request("DELETE", "/a/b", Some("k")))
            .await
            .status,
        StatusCode::OK
    );
    assert_eq!(
        send(&svc, request("GET", "/", Some("k"))).await.status,
        StatusCode::OK
    );
    // A plain JSON 429 with X-RateLimit-* only.
    let refused = send(&svc, request("GET", "/", Some("k"))).await;
    assert_eq!(refused.status, StatusCode::TOO_MANY_REQUESTS);
    let names: Vec<_> = refused.headers.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "x-ratelimit-limit",
            "x-ratelimit-remaining",
            "x-ratelimit-reset",
            "retry-after"
        ]
    );
    let body: serde_json::Value = serde_json::from_slice(&refused.body).unwrap();
    assert_eq!(body["error"]["code"], "rate_limit_exceeded");
    // GCRA: one request's worth returns after period / limit.
    tokio::time::advance(Duration::from_secs(30)).await;
    assert_eq!(
        send(&svc, request("GET", "/", Some("k"))).await.status,
        StatusCode::OK
    );
    // A missing key is rejected; keys up to 4096 bytes are accepted.
    assert_eq!(
        send(&svc, request("GET", "/", None)).await.status,
        StatusCode::UNAUTHORIZED
    );
    let long = "k".repeat(4096);
    assert_eq!(
        send(&svc, request("GET", "/", Some(&long))).await.status,
        StatusCode::OK
    );
    let too_long = "k".repeat(4097);
    assert_eq!(
        send(&svc, request("GET", "/", Some(&too_long)))
            .await
            .status,
        StatusCode::UNAUTHORIZED
    );
}

// ---------------------------------------------------------------------------
// Every key form.

/// A policy of one `1/minute` limit keyed by `key` (a TOML inline table).
fn keyed(key: &str, custom: &CustomKeys) -> Svc {
    let text = format!(
        "[[limits]]\nname = \"k\"\nkey = {key}\n[[limits.routes]]\npath = \"/calls/{{call_id}}\"\nwindows = [\"1/minute\"]\n"
    );
    let policy = Policy::from_toml_with(&text, custom).unwrap_or_else(|e| panic!("{key}: {e}"));
    service(policy, SystemClock::new())
}

/// Whether the first request is admitted, a repeat refused (same key) and
/// the `other` request admitted (a different key).
async fn same_then_other(
    svc: &Svc,
    make: impl Fn(usize) -> Request<String>,
    other: Request<String>,
) {
    assert_eq!(send(svc, make(0)).await.status, StatusCode::OK);
    assert_eq!(
        send(svc, make(1)).await.status,
        StatusCode::TOO_MANY_REQUESTS
    );
    assert_eq!(send(svc, other).await.status, StatusCode::OK);
}

fn get(path: &str) -> http::request::Builder {
    Request::get(path)
}

#[tokio::test(start_paused = true)]
async fn header_key() {
    let svc = keyed(r#"{ header = "X-API-Key" }"#, &CustomKeys::new());
    let make = |_| request("GET", "/calls/c1", Some("a"));
    same_then_other(&svc, make, request("GET", "/calls/c1", Some("b"))).await;
    assert_eq!(
        send(&svc, request("GET", "/calls/c1", None)).await.status,
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test(start_paused = true)]
async fn bearer_key() {
    let svc = keyed("{ bearer = true }", &CustomKeys::new());
    let bearer = |token: &str| {
        get("/calls/c1")
            .header("authorization", format!("Bearer {token}"))
            .body(String::new())
            .unwrap()
    };
    same_then_other(&svc, |_| bearer("t1"), bearer("t2")).await;
}

#[tokio::test(start_paused = true)]
async fn path_capture_key() {
    let svc = keyed(r#"{ path = "call_id" }"#, &CustomKeys::new());
    same_then_other(
        &svc,
        |_| request("GET", "/calls/c1", None),
        request("GET", "/calls/c2", None),
    )
    .await;
}

#[tokio::test(start_paused = true)]
async fn peer_ip_key() {
    let svc = keyed("{ peer_ip = true }", &CustomKeys::new());
    let at = |ip: &str| from_peer(request("GET", "/calls/c1", None), ip);
    same_then_other(&svc, |_| at("192.0.2.1"), at("192.0.2.2")).await;
    // IPv6 by /64 unless told otherwise.
    assert_eq!(
        send(&svc, at("2001:db8:0:1::1")).await.status,
        StatusCode::OK
    );
    assert_eq!(
        send(&svc, at("2001:db8:0:1::2")).await.status,
        StatusCode::TOO_MANY_REQUESTS
    );
    assert_eq!(
        send(&svc, at("2001:db8:0:2::1")).await.status,
        StatusCode::OK
    );
}

#[tokio::test(start_paused = true)]
async fn peer_ip_key_with_an_ipv6_prefix() {
    let svc = keyed("{ peer_ip = { ipv6_prefix = 56 } }", &CustomKeys::new());
    let at = |ip: &str| from_peer(request("GET", "/calls/c1", None), ip);
    // Different /64s in one /56 share a bucket; another /56 does not.
    same_then_other(
        &svc,
        |i| at(["2001:db8:0:100::1", "2001:db8:0:1ff::1"][i]),
        at("2001:db8:0:200::1"),
    )
    .await;
}

#[tokio::test(start_paused = true)]
async fn forwarded_ip_key() {
    let svc = keyed(
        r#"{ forwarded_ip = { trusted = ["10.0.0.0/8"] } }"#,
        &CustomKeys::new(),
    );
    let via_proxy = |client: &str| {
        let request = get("/calls/c1")
            .header("x-forwarded-for", client)
            .body(String::new())
            .unwrap();
        from_peer(request, "10.0.0.1")
    };
    same_then_other(
        &svc,
        |_| via_proxy("198.51.100.7"),
        via_proxy("198.51.100.8"),
    )
    .await;
    // An untrusted peer's header is ignored: it counts as itself.
    let direct = from_peer(
        get("/calls/c1")
            .header("x-forwarded-for", "198.51.100.9")
            .body(String::new())
            .unwrap(),
        "203.0.113.1",
    );
    assert_eq!(send(&svc, direct).await.status, StatusCode::OK);
}

#[tokio::test(start_paused = true)]
async fn forwarded_ip_key_with_the_forwarded_header_and_a_prefix() {
    let svc = keyed(
        r#"{ forwarded_ip = { trusted = ["10.0.0.1", "192.168.0.0/16"], header = "forwarded", ipv6_prefix = 48 } }"#,
        &CustomKeys::new(),
    );
    let via_proxy = |client: &str| {
        let value = format!("for=\"[{client}]\";proto=https");
        from_peer(
            get("/calls/c1")
                .header("forwarded", value)
                .body(String::new())
                .unwrap(),
            "10.0.0.1",
        )
    };
    same_then_other(
        &svc,
        |i| via_proxy(["2001:db8:1:1::1", "2001:db8:1:ff::1"][i]),
        via_proxy("2001:db8:2::1"),
    )
    .await;
    // X-Forwarded-For is not read when `forwarded` is configured.
    let xff = from_peer(
        get("/calls/c1")
            .header("x-forwarded-for", "198.51.100.1")
            .body(String::new())
            .unwrap(),
        "10.0.0.1",
    );
    assert_eq!(send(&svc, xff).await.status, StatusCode::OK);
    let xff = from_peer(
        get("/calls/c1")
            .header("x-forwarded-for", "198.51.100.2")
            .body(String::new())
            .unwrap(),
        "10.0.0.1",
    );
    assert_eq!(
        send(&svc, xff).await.status,
        StatusCode::TOO_MANY_REQUESTS,
        "both count as the proxy"
    );
}

#[tokio::test(start_paused = true)]
async fn global_key() {
    let svc = keyed("{ global = true }", &CustomKeys::new());
    assert_eq!(
        send(&svc, request("GET", "/calls/c1", Some("a")))
            .await
            .status,
        StatusCode::OK
    );
    assert_eq!(
        send(&svc, request("GET", "/calls/c2", None)).await.status,
        StatusCode::TOO_MANY_REQUESTS
    );
}

#[derive(Clone)]
struct Account(&'static str);

#[tokio::test(start_paused = true)]
async fn custom_key() {
    let custom = CustomKeys::new().with("account", Extension::new(|a: &Account| Key::from(a.0)));
    let svc = keyed(r#"{ custom = "account" }"#, &custom);
    let as_account = |id: &'static str| {
        let mut request = request("GET", "/calls/c1", None);
        request.extensions_mut().insert(Account(id));
        request
    };
    same_then_other(&svc, |_| as_account("acct_1"), as_account("acct_2")).await;
    assert_eq!(
        send(&svc, request("GET", "/calls/c1", None)).await.status,
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test(start_paused = true)]
async fn first_of_key() {
    let svc = keyed(
        r#"{ first_of = [{ header = "X-API-Key" }, { peer_ip = true }] }"#,
        &CustomKeys::new(),
    );
    let make = |key: Option<&str>, ip: &str| from_peer(request("GET", "/calls/c1", key), ip);
    // With an API key, per key whatever the address.
    same_then_other(
        &svc,
        |i| make(Some("k1"), ["192.0.2.1", "192.0.2.2"][i]),
        make(Some("k2"), "192.0.2.1"),
    )
    .await;
    // Without one, per address.
    same_then_other(&svc, |_| make(None, "192.0.2.3"), make(None, "192.0.2.4")).await;
}

#[test]
fn a_file_key_is_the_same_as_the_code_key() {
    let text = r#"
[[limits]]
name = "client"
key = { first_of = [{ header = "X-API-Key" }, { forwarded_ip = { trusted = ["10.0.0.0/8"], header = "x-forwarded-for", ipv6_prefix = 64 } }] }
on_missing_key = "skip"
routes = [{ windows = ["5/second"] }]
"#;
    let code = Policy::builder()
        .limit(
            Limit::new(
                "client",
                FirstOf::new()
                    .or(Header::parse("X-API-Key").unwrap())
                    .or(ForwardedIp::new(["10.0.0.0/8"])
                        .unwrap()
                        .x_forwarded_for()
                        .ipv6_prefix(64)
                        .unwrap()),
            )
            .skip_missing_key(true)
            .quota(Quota::new(Window::per_second(5))),
        )
        .build()
        .unwrap();
    assert_eq!(
        format!("{:?}", Policy::from_toml(text).unwrap()),
        format!("{code:?}")
    );
}

#[test]
fn a_custom_key_can_be_replaced_and_listed() {
    let custom = CustomKeys::new()
        .with("account", Extension::new(|a: &Account| Key::from(a.0)))
        .with("tenant", |_: &tower_ratelimit::key::RequestView<'_>| {
            Some(b"t".to_vec())
        })
        .with("account", |_: &tower_ratelimit::key::RequestView<'_>| {
            Some(b"a".to_vec())
        });
    assert_eq!(custom.names().collect::<Vec<_>>(), ["account", "tenant"]);
    assert!(custom.get("tenant").is_some());
    assert!(custom.get("nobody").is_none());
    assert_eq!(
        format!("{custom:?}"),
        r#"CustomKeys(["account", "tenant"])"#
    );
}

#[tokio::test(start_paused = true)]
async fn on_missing_key_skip_lets_the_request_through_uncounted_by_that_limit() {
    let policy = Policy::from_toml(
        r#"
[[limits]]
name = "per_key"
key = { header = "X-API-Key" }
on_missing_key = "skip"
routes = [{ windows = ["1/minute"] }]

[[limits]]
name = "everyone"
key = { global = true }
routes = [{ windows = ["3/minute"] }]
"#,
    )
    .unwrap();
    let svc = service(policy, SystemClock::new());
    assert_eq!(
        send(&svc, request("GET", "/", None)).await.status,
        StatusCode::OK
    );
    assert_eq!(
        send(&svc, request("GET", "/", None)).await.status,
        StatusCode::OK
    );
    assert_eq!(
        send(&svc, request("GET", "/", None)).await.status,
        StatusCode::OK
    );
    assert_eq!(
        send(&svc, request("GET", "/", None)).await.status,
        StatusCode::TOO_MANY_REQUESTS
    );
}

// ---------------------------------------------------------------------------
// Every kind of mistake: kind, field, line and column.

#[track_caller]
fn check(
    text: &str,
    kind: ConfigErrorKind,
    field: &str,
    line: usize,
    column: usize,
) -> ConfigError {
    check_with(text, &CustomKeys::new(), kind, field, line, column)
}

#[track_caller]
fn check_with(
    text: &str,
    custom: &CustomKeys,
    kind: ConfigErrorKind,
    field: &str,
    line: usize,
    column: usize,
) -> ConfigError {
    let err = Policy::from_toml_with(text, custom).unwrap_err();
    assert_eq!(
        (err.kind(), err.field(), err.line(), err.column()),
        (kind, field, Some(line), Some(column)),
        "{err}"
    );
    let shown = err.to_string();
    assert!(
        shown.contains(&format!("line {line}, column {column}")),
        "{shown}"
    );
    err
}

/// One limit keyed by `X-API-Key`, with the route table written by `routes`.
fn with_routes(routes: &str) -> String {
    format!("[[limits]]\nname = \"per_key\"\nkey = {{ header = \"X-API-Key\" }}\n{routes}")
}

#[test]
fn toml_syntax_errors() {
    // An unterminated string.
    let err = check(
        "[[limits]]\nname = \"per_key\nkey = { header = \"X-API-Key\" }\n",
        ConfigErrorKind::Syntax,
        "limits[0].name",
        2,
        16,
    );
    assert!(err.message().contains("invalid basic string"), "{err}");
    // A key twice in one table.
    check(
        "[[limits]]\nname = \"a\"\nname = \"b\"\n",
        ConfigErrorKind::Syntax,
        "limits[0].name",
        3,
        1,
    );
    // A value missing.
    check(
        &with_routes("[[limits.routes]]\ncost =\nwindows = [\"1/s\"]\n"),
        ConfigErrorKind::Syntax,
        "limits[0].routes[0].cost",
        5,
        7,
    );
}

#[test]
fn wrong_types() {
    let err = check(
        &with_routes("[[limits.routes]]\nwindows = [\"1/s\"]\ncost = \"2\"\n"),
        ConfigErrorKind::Syntax,
        "limits[0].routes[0].cost",
        6,
        8,
    );
    assert!(err.message().contains("expected an integer"), "{err}");
    check(
        &with_routes("[[limits.routes]]\nwindows = [\"1/s\", 60]\n"),
        ConfigErrorKind::Syntax,
        "limits[0].routes[0].windows[1]",
        5,
        19,
    );
    check(
        &with_routes("[[limits.routes]]\nmethods = 3\nwindows = [\"1/s\"]\n"),
        ConfigErrorKind::Syntax,
        "limits[0].routes[0].methods",
        5,
        11,
    );
    // A table where a list of tables belongs.
    check(
        &with_routes("[limits.routes]\nwindows = [\"1/s\"]\n"),
        ConfigErrorKind::Syntax,
        "limits[0].routes",
        4,
        1,
    );
    let err = check(
        "[[limits]]\nname = \"a\"\nkey = \"X-API-Key\"\n",
        ConfigErrorKind::Syntax,
        "limits[0].key",
        3,
        7,
    );
    assert!(err.message().contains("a key table such as"), "{err}");
    check(
        "[[limits]]\nname = \"a\"\nkey = { peer_ip = \"yes\" }\n",
        ConfigErrorKind::Syntax,
        "limits[0].key.peer_ip",
        3,
        19,
    );
}

#[test]
fn unknown_fields_are_typos() {
    let err = check(
        &with_routes("[[limits.routes]]\nwindws = [\"1/s\"]\n"),
        ConfigErrorKind::Syntax,
        "limits[0].routes[0].windws",
        5,
        1,
    );
    assert!(err.message().contains("unknown field `windws`"), "{err}");
    check(
        "header = \"ietf\"\n",
        ConfigErrorKind::Syntax,
        "header",
        1,
        1,
    );
    check(
        "[[limits]]\nname = \"a\"\nkey = { heder = \"X-API-Key\" }\n",
        ConfigErrorKind::Syntax,
        "limits[0].key.heder",
        3,
        9,
    );
    check(
        &with_routes("routes = [{ windows = [{ limit = 1, perod = \"1s\" }] }]\n"),
        ConfigErrorKind::Syntax,
        "limits[0].routes[0].windows[0].perod",
        4,
        37,
    );
}

#[test]
fn missing_required_fields() {
    // A route needs a window or an in-flight cap.
    let err = check(
        &with_routes("[[limits.routes]]\npath = \"/v1\"\n"),
        ConfigErrorKind::InvalidValue,
        "limits[0].routes[0].windows",
        4,
        1,
    );
    assert!(err.message().contains("or set `concurrency`"), "{err}");
    check(
        "[[limits]]\nname = \"a\"\nroutes = [{ windows = [\"1/s\"] }]\n",
        ConfigErrorKind::Syntax,
        "limits[0]",
        1,
        1,
    );
}

#[test]
fn bad_windows() {
    let err = check(
        &with_routes("[[limits.routes]]\nwindows = [\"60/minute\", \"10/fortnight\"]\n"),
        ConfigErrorKind::InvalidValue,
        "limits[0].routes[0].windows[1]",
        5,
        25,
    );
    assert!(err.message().contains("fortnight"), "{err}");
    check(
        &with_routes("[[limits.routes]]\nwindows = [\"0/minute\"]\n"),
        ConfigErrorKind::InvalidValue,
        "limits[0].routes[0].windows[0]",
        5,
        12,
    );
    check(
        &with_routes("[[limits.routes]]\nwindows = [{ limit = -1, period = \"1h\" }]\n"),
        ConfigErrorKind::InvalidValue,
        "limits[0].routes[0].windows[0].limit",
        5,
        22,
    );
    check(
        &with_routes("[[limits.routes]]\nwindows = [{ limit = 5, period = \"1 fortnight\" }]\n"),
        ConfigErrorKind::InvalidValue,
        "limits[0].routes[0].windows[0].period",
        5,
        34,
    );
    check(
        &with_routes("[[limits.routes]]\nwindows = [{ limit = 5, period = \"2y\" }]\n"),
        ConfigErrorKind::InvalidValue,
        "limits[0].routes[0].windows[0].period",
        5,
        34,
    );
    // Two windows of one period.
    check(
        &with_routes("[[limits.routes]]\nwindows = [\"60/minute\", \"100/60s\"]\n"),
        ConfigErrorKind::InvalidValue,
        "limits[0].routes[0].windows",
        5,
        11,
    );
    let err = check(
        &with_routes("[[limits.routes]]\nwindows = []\n"),
        ConfigErrorKind::InvalidValue,
        "limits[0].routes[0].windows",
        5,
        11,
    );
    assert!(err.message().contains("at least one window"), "{err}");
}

#[test]
fn bad_path_patterns() {
    let err = check(
        &with_routes("[[limits.routes]]\npath = \"/v1/{id\"\nwindows = [\"1/s\"]\n"),
        ConfigErrorKind::BadPattern,
        "limits[0].routes[0].path",
        5,
        8,
    );
    assert!(err.message().contains("/v1/{id"), "{err}");
    check(
        &with_routes("[[limits.routes]]\npath = \"v1/keys\"\nwindows = [\"1/s\"]\n"),
        ConfigErrorKind::BadPattern,
        "limits[0].routes[0].path",
        5,
        8,
    );
}

#[test]
fn unknown_methods() {
    check(
        &with_routes("[[limits.routes]]\nmethods = [\"GET\", \"FETCH\"]\nwindows = [\"1/s\"]\n"),
        ConfigErrorKind::InvalidValue,
        "limits[0].routes[0].methods[1]",
        5,
        19,
    );
    let err = check(
        &with_routes("[[limits.routes]]\nmethods = \"GET,FETCH\"\nwindows = [\"1/s\"]\n"),
        ConfigErrorKind::InvalidValue,
        "limits[0].routes[0].methods",
        5,
        11,
    );
    assert!(err.message().contains("FETCH"), "{err}");
    check(
        &with_routes("[[limits.routes]]\nmethods = []\nwindows = [\"1/s\"]\n"),
        ConfigErrorKind::InvalidValue,
        "limits[0].routes[0].methods",
        5,
        11,
    );
}

#[test]
fn bad_head_settings() {
    // Only a route that names GET has a HEAD to keep or leave out.
    let err = check(
        &with_routes(
            "[[limits.routes]]\nmethods = [\"POST\"]\nhead = false\nwindows = [\"1/s\"]\n",
        ),
        ConfigErrorKind::InvalidValue,
        "limits[0].routes[0].head",
        6,
        8,
    );
    assert!(err.message().contains("(POST) do not include GET"), "{err}");
    check(
        &with_routes("routes = [{ methods = \"HEAD\", head = true, windows = [\"1/s\"] }]\n"),
        ConfigErrorKind::InvalidValue,
        "limits[0].routes[0].head",
        4,
        38,
    );
    // A route that names HEAD (or every method) cannot leave it out.
    let err = check(
        &with_routes("[[limits.routes]]\nhead = false\nwindows = [\"1/s\"]\n"),
        ConfigErrorKind::InvalidValue,
        "limits[0].routes[0].head",
        5,
        8,
    );
    assert!(err.message().contains("(*) include HEAD"), "{err}");
    check(
        &with_routes(
            "[[limits.routes]]\nmethods = [\"GET\", \"HEAD\"]\nhead = false\nwindows = [\"1/s\"]\n",
        ),
        ConfigErrorKind::InvalidValue,
        "limits[0].routes[0].head",
        6,
        8,
    );
    let err = check(
        &with_routes(
            "[[limits.routes]]\nmethods = [\"GET\"]\nhead = \"no\"\nwindows = [\"1/s\"]\n",
        ),
        ConfigErrorKind::Syntax,
        "limits[0].routes[0].head",
        6,
        8,
    );
    assert!(err.message().contains("expected a boolean"), "{err}");
}

#[test]
fn a_cost_larger_than_a_window() {
    let err = check(
        &with_routes("[[limits.routes]]\nwindows = [\"100/minute\", \"5/second\"]\ncost = 10\n"),
        ConfigErrorKind::InvalidValue,
        "limits[0].routes[0].cost",
        6,
        8,
    );
    assert!(err.message().contains("5/second"), "{err}");
    check(
        &with_routes("[[limits.routes]]\nwindows = [\"100/minute\"]\ncost = 0\n"),
        ConfigErrorKind::InvalidValue,
        "limits[0].routes[0].cost",
        6,
        8,
    );
}

#[test]
fn bad_algorithms_and_missing_key_choices() {
    check(
        &with_routes("algorithm = \"leaky\"\nroutes = [{ windows = [\"1/s\"] }]\n"),
        ConfigErrorKind::InvalidValue,
        "limits[0].algorithm",
        4,
        13,
    );
    check(
        &with_routes("[[limits.routes]]\nwindows = [\"1/s\"]\nalgorithm = \"sliding\"\n"),
        ConfigErrorKind::InvalidValue,
        "limits[0].routes[0].algorithm",
        6,
        13,
    );
    check(
        &with_routes("on_missing_key = \"allow\"\nroutes = [{ windows = [\"1/s\"] }]\n"),
        ConfigErrorKind::InvalidValue,
        "limits[0].on_missing_key",
        4,
        18,
    );
}

#[test]
fn unknown_custom_keys() {
    let custom = CustomKeys::new().with("account", Extension::new(|a: &Account| Key::from(a.0)));
    let err = check_with(
        "[[limits]]\nname = \"a\"\nkey = { custom = \"acount\" }\nroutes = [{ windows = [\"1/s\"] }]\n",
        &custom,
        ConfigErrorKind::UnknownName,
        "limits[0].key.custom",
        3,
        18,
    );
    assert!(
        err.message().contains("`account`"),
        "names what is registered: {err}"
    );
    check(
        "[[limits]]\nname = \"a\"\nkey = { first_of = [{ header = \"x\" }, { custom = \"account\" }] }\nroutes = [{ windows = [\"1/s\"] }]\n",
        ConfigErrorKind::UnknownName,
        "limits[0].key.first_of[1].custom",
        3,
        50,
    );
}

#[test]
fn a_path_key_needs_its_capture_in_every_route() {
    check(
        "[[limits]]\nname = \"per_call\"\nkey = { path = \"call_id\" }\n\n[[limits.routes]]\npath = \"/v1/calls/{call_id}\"\nwindows = [\"1/s\"]\n\n[[limits.routes]]\npath = \"/v1/calls\"\nwindows = [\"1/s\"]\n",
        ConfigErrorKind::UnknownName,
        "limits[0].routes[1].path",
        10,
        8,
    );
    check(
        "[[limits]]\nname = \"per_call\"\nkey = { path = \"{call_id}\" }\nroutes = [{ path = \"/{call_id}\", windows = [\"1/s\"] }]\n",
        ConfigErrorKind::InvalidValue,
        "limits[0].key.path",
        3,
        16,
    );
}

#[test]
fn bad_key_tables() {
    let routes = "routes = [{ windows = [\"1/s\"] }]\n";
    let err = check(
        &format!(
            "[[limits]]\nname = \"a\"\nkey = {{ header = \"X-API-Key\", bearer = true }}\n{routes}"
        ),
        ConfigErrorKind::InvalidValue,
        "limits[0].key",
        3,
        7,
    );
    assert!(err.message().contains("first_of"), "{err}");
    check(
        &format!("[[limits]]\nname = \"a\"\nkey = {{}}\n{routes}"),
        ConfigErrorKind::InvalidValue,
        "limits[0].key",
        3,
        7,
    );
    check(
        &format!("[[limits]]\nname = \"a\"\nkey = {{ header = \"X API Key\" }}\n{routes}"),
        ConfigErrorKind::InvalidValue,
        "limits[0].key.header",
        3,
        18,
    );
    check(
        &format!("[[limits]]\nname = \"a\"\nkey = {{ bearer = false }}\n{routes}"),
        ConfigErrorKind::InvalidValue,
        "limits[0].key.bearer",
        3,
        18,
    );
    check(
        &format!(
            "[[limits]]\nname = \"a\"\nkey = {{ peer_ip = {{ ipv6_prefix = 129 }} }}\n{routes}"
        ),
        ConfigErrorKind::InvalidValue,
        "limits[0].key.peer_ip.ipv6_prefix",
        3,
        35,
    );
    check(
        &format!("[[limits]]\nname = \"a\"\nkey = {{ forwarded_ip = {{ trusted = [\"10.0.0.0/8\", \"10.0.0.0/33\"] }} }}\n{routes}"),
        ConfigErrorKind::InvalidValue,
        "limits[0].key.forwarded_ip.trusted[1]",
        3,
        51,
    );
    check(
        &format!(
            "[[limits]]\nname = \"a\"\nkey = {{ forwarded_ip = {{ trusted = [] }} }}\n{routes}"
        ),
        ConfigErrorKind::InvalidValue,
        "limits[0].key.forwarded_ip.trusted",
        3,
        36,
    );
    check(
        &format!(
            "[[limits]]\nname = \"a\"\nkey = {{ forwarded_ip = {{ trusted = [\"10.0.0.1\"], header = \"x-real-ip\" }} }}\n{routes}"
        ),
        ConfigErrorKind::InvalidValue,
        "limits[0].key.forwarded_ip.header",
        3,
        59,
    );
    check(
        &format!("[[limits]]\nname = \"a\"\nkey = {{ first_of = [] }}\n{routes}"),
        ConfigErrorKind::InvalidValue,
        "limits[0].key.first_of",
        3,
        20,
    );
}

#[test]
fn bad_limits() {
    let limit = |name: &str| {
        format!("[[limits]]\nname = \"{name}\"\nkey = {{ global = true }}\nroutes = [{{ windows = [\"1/s\"] }}]\n")
    };
    let err = check(
        &format!("{}\n{}", limit("per_key"), limit("per_key")),
        ConfigErrorKind::InvalidValue,
        "limits[1].name",
        7,
        8,
    );
    assert!(
        err.message().contains("two limits are named `per_key`"),
        "{err}"
    );
    check(
        &limit("per key"),
        ConfigErrorKind::InvalidValue,
        "limits[0].name",
        2,
        8,
    );
    check(
        "[[limits]]\nname = \"a\"\nkey = { global = true }\n",
        ConfigErrorKind::InvalidValue,
        "limits[0].routes",
        1,
        1,
    );
    check(
        "limits = []\n",
        ConfigErrorKind::InvalidValue,
        "limits",
        1,
        10,
    );
    check("# nothing\n", ConfigErrorKind::InvalidValue, "limits", 1, 1);
}

#[test]
fn bad_top_level_values() {
    let rest = with_routes("routes = [{ windows = [\"60/minute\"] }]\n");
    let err = check(
        &format!("headers = \"draft\"\n{rest}"),
        ConfigErrorKind::InvalidValue,
        "headers",
        1,
        11,
    );
    // The message lists every valid style.
    assert!(
        err.message()
            .contains("expected x-ratelimit, ietf, both, draft7 or none"),
        "{err}"
    );
    check(
        &format!("refusal = \"xml\"\n{rest}"),
        ConfigErrorKind::InvalidValue,
        "refusal",
        1,
        11,
    );
    check(
        &format!("refusal_status = 200\n{rest}"),
        ConfigErrorKind::InvalidValue,
        "refusal_status",
        1,
        18,
    );
    check(
        &format!("refusal_status = 42\n{rest}"),
        ConfigErrorKind::InvalidValue,
        "refusal_status",
        1,
        18,
    );
    for (after, column) in [("\"0s\"", 20), ("\"100000d\"", 20), ("\"24h 1s\"", 20)] {
        let err = check(
            &format!("busy_retry_after = {after}\n{rest}"),
            ConfigErrorKind::InvalidValue,
            "busy_retry_after",
            1,
            column,
        );
        assert!(err.message().contains("from 1 s to 1 day"), "{err}");
    }
    check(
        &format!("max_key_len = 0\n{rest}"),
        ConfigErrorKind::InvalidValue,
        "max_key_len",
        1,
        15,
    );
    check(
        &format!("report = \"sometimes\"\n{rest}"),
        ConfigErrorKind::InvalidValue,
        "report",
        1,
        10,
    );
    // A period no window has.
    let err = check(
        &format!("report = \"hour\"\n{rest}"),
        ConfigErrorKind::InvalidValue,
        "report",
        1,
        10,
    );
    assert!(err.message().contains("no window has the period"), "{err}");
}

#[test]
fn columns_count_characters_not_bytes() {
    check(
        "# Ünïcödé\n[[limits]]\nname = \"ß\" # é\nkey = { global = true }\nroutes = [{ windows = [\"1/s\"], path = \"/ü/{x\" }]\n",
        ConfigErrorKind::BadPattern,
        "limits[0].routes[0].path",
        5,
        39,
    );
}

#[test]
fn io_errors_name_the_path() {
    let path = std::env::temp_dir().join("tower-ratelimit-no-such-dir/policy.toml");
    let err = Policy::from_toml_file(&path).unwrap_err();
    assert_eq!(err.kind(), ConfigErrorKind::Io);
    assert!(
        err.message()
            .contains("tower-ratelimit-no-such-dir/policy.toml"),
        "{err}"
    );
    assert_eq!(err.line(), None);
}

#[test]
fn a_file_that_is_not_utf8_is_a_syntax_error_with_its_position() {
    let path = std::env::temp_dir().join(format!(
        "tower-ratelimit-latin1-{}.toml",
        std::process::id()
    ));
    std::fs::write(&path, b"# ok\nname = \"caf\xe9\"\n").unwrap();
    let err = Policy::from_toml_file(&path);
    std::fs::remove_file(&path).unwrap();
    let err = err.unwrap_err();
    assert_eq!(err.kind(), ConfigErrorKind::Syntax);
    assert_eq!((err.line(), err.column()), (Some(2), Some(12)));
    assert!(err.message().contains("UTF-8"), "{err}");
}

#[test]
fn the_error_in_the_crate_docs() {
    let err = Policy::from_toml(
        r#"
[[limits]]
name = "per_key"
key = { header = "x-api-key" }
routes = [{ path = "/v1/{id", windows = ["60/minute"] }]
"#,
    )
    .unwrap_err();
    assert_eq!(err.kind(), ConfigErrorKind::BadPattern);
    assert_eq!(err.field(), "limits[0].routes[0].path");
    assert_eq!((err.line(), err.column()), (Some(5), Some(20)));
}

// ---------------------------------------------------------------------------
// `[memory]`: the cap of the memory store `RateLimitLayer::new` builds.

#[test]
fn memory_max_entries_loads() {
    let rest = with_routes("routes = [{ windows = [\"60/minute\"] }]\n");
    let file = Policy::from_toml(&format!("[memory]\nmax_entries = 100_000\n\n{rest}")).unwrap();
    assert_eq!(file.memory_max_entries(), Some(100_000));
    let code = Policy::builder()
        .limit(
            Limit::new("per_key", Header::parse("X-API-Key").unwrap())
                .quota(Quota::new(Window::per_minute(60))),
        )
        .memory_max_entries(100_000)
        .build()
        .unwrap();
    assert_eq!(code.memory_max_entries(), Some(100_000));
    assert_eq!(format!("{file:?}"), format!("{code:?}"));

    // Without it (or with an empty table), the store's default.
    assert_eq!(Policy::from_toml(&rest).unwrap().memory_max_entries(), None);
    let empty = Policy::from_toml(&format!("[memory]\n\n{rest}")).unwrap();
    assert_eq!(empty.memory_max_entries(), None);
    // The table may come after the limits, as any TOML table may.
    let after = Policy::from_toml(&format!("{rest}\n[memory]\nmax_entries = 7\n")).unwrap();
    assert_eq!(after.memory_max_entries(), Some(7));
}

#[test]
fn bad_memory_tables() {
    let rest = with_routes("routes = [{ windows = [\"60/minute\"] }]\n");
    let err = check(
        &format!("[memory]\nmax_entries = 0\n\n{rest}"),
        ConfigErrorKind::InvalidValue,
        "memory.max_entries",
        2,
        15,
    );
    assert!(err.message().contains("must be at least 1, not 0"), "{err}");
    check(
        &format!("[memory]\nmax_entries = -5\n\n{rest}"),
        ConfigErrorKind::InvalidValue,
        "memory.max_entries",
        2,
        15,
    );
    let err = check(
        &format!("[memory]\nmax_entries = \"10\"\n\n{rest}"),
        ConfigErrorKind::Syntax,
        "memory.max_entries",
        2,
        15,
    );
    assert!(err.message().contains("expected an integer"), "{err}");
    let err = check(
        &format!("[memory]\nmax_entries = 10\nmax_entrys = 10\n\n{rest}"),
        ConfigErrorKind::Syntax,
        "memory.max_entrys",
        3,
        1,
    );
    assert!(
        err.message().contains("unknown field `max_entrys`"),
        "{err}"
    );
    check(
        &format!("memory = {{ max_entries = 10, shards = 4 }}\n{rest}"),
        ConfigErrorKind::Syntax,
        "memory.shards",
        1,
        30,
    );
    check(
        &format!("memory = 10\n{rest}"),
        ConfigErrorKind::Syntax,
        "memory",
        1,
        10,
    );

    // The builder checks the same.
    let err = Policy::builder()
        .limit(
            Limit::new("per_key", Header::parse("X-API-Key").unwrap())
                .quota(Quota::new(Window::per_minute(60))),
        )
        .memory_max_entries(0)
        .build()
        .unwrap_err();
    assert_eq!(
        (err.kind(), err.field()),
        (ConfigErrorKind::InvalidValue, "memory.max_entries")
    );
}

#[tokio::test(start_paused = true)]
async fn the_layer_builds_its_memory_store_with_the_policys_cap() {
    let policy = |memory: &str| {
        Policy::from_toml(&format!(
            "{memory}{}",
            with_routes("routes = [{ windows = [\"60/minute\"] }]\n")
        ))
        .unwrap()
    };
    let capped = RateLimitLayer::new(policy("[memory]\nmax_entries = 10\n\n"));
    let default = RateLimitLayer::new(policy(""));
    assert_eq!(
        capped.store().max_entries(),
        MemoryStore::with_max_entries(10).max_entries()
    );
    assert_eq!(
        default.store().max_entries(),
        MemoryStore::new().max_entries()
    );
    // (The cap is spread over the store's shards, each keeping at least one.)
    assert!(
        capped.store().max_entries() < 100,
        "{}",
        capped.store().max_entries()
    );

    // A flood of 300 distinct keys: the default store tracks every one, the
    // capped store no more than its capacity.
    for layer in [&capped, &default] {
        let inner = service_fn(|_req: Request<String>| async {
            Ok::<_, Infallible>(Response::new(String::from("ok")))
        });
        let svc: Svc = BoxCloneService::new(layer.clone().layer(inner));
        for i in 0..300 {
            let key = format!("k{i}");
            svc.clone()
                .oneshot(request("GET", "/v1/calls", Some(&key)))
                .await
                .unwrap();
        }
    }
    assert_eq!(default.store().len(), 300);
    assert!(
        capped.store().len() <= capped.store().max_entries(),
        "{} entries",
        capped.store().len()
    );

    // A store given to `with_store` keeps its own cap.
    let own = RateLimitLayer::with_store(
        policy("[memory]\nmax_entries = 10\n\n"),
        MemoryStore::with_max_entries(5_000),
    );
    assert_eq!(
        own.store().max_entries(),
        MemoryStore::with_max_entries(5_000).max_entries()
    );
}

#[tokio::test]
async fn a_header_key_may_read_commas_as_part_of_the_key() {
    let routes = "routes = [{ windows = [\"2/minute\"] }]\n";
    let file = |key: &str| format!("[[limits]]\nname = \"per_key\"\nkey = {key}\n{routes}");
    let folded = || request("GET", "/v1/calls", Some("k_1, k_2"));

    // By default a comma is two keys folded into one line: refused.
    let strict = Policy::from_toml(&file(r#"{ header = "X-API-Key" }"#)).unwrap();
    let svc = service(strict, SystemClock::new());
    assert_eq!(send(&svc, folded()).await.status, StatusCode::UNAUTHORIZED);

    // With allow_commas, the whole value is one key, counted as such.
    let commas = r#"{ header = "X-API-Key", allow_commas = true }"#;
    let svc = service(
        Policy::from_toml(&file(commas)).unwrap(),
        SystemClock::new(),
    );
    for status in [
        StatusCode::OK,
        StatusCode::OK,
        StatusCode::TOO_MANY_REQUESTS,
    ] {
        assert_eq!(send(&svc, folded()).await.status, status);
    }
    let other = send(&svc, request("GET", "/v1/calls", Some("k_1"))).await;
    assert_eq!(other.status, StatusCode::OK, "k_1 alone is another key");

    // `allow_commas = false` is the default, spelled out.
    let spelled = r#"{ header = "X-API-Key", allow_commas = false }"#;
    let svc = service(
        Policy::from_toml(&file(spelled)).unwrap(),
        SystemClock::new(),
    );
    assert_eq!(send(&svc, folded()).await.status, StatusCode::UNAUTHORIZED);

    // It belongs to header keys only.
    let err = Policy::from_toml(&file("{ bearer = true, allow_commas = true }")).unwrap_err();
    assert_eq!(err.kind(), ConfigErrorKind::InvalidValue);
    assert_eq!(err.field(), "limits[0].key.allow_commas");
    assert!(err.message().contains("goes with `header`"), "{err}");
}

#[test]
fn two_overrides_of_one_key_are_an_error() {
    let text = r#"[[limits]]
name = "per_key"
key = { header = "X-API-Key" }
routes = [{ windows = ["10/minute"] }]

[[limits.overrides]]
key = "k_1"
windows = ["1/minute"]

[[limits.overrides]]
key = "k_2"
windows = ["20/minute"]

[[limits.overrides]]
key = "k_1"
windows = ["50/minute"]
"#;
    let err = check(
        text,
        ConfigErrorKind::InvalidValue,
        "limits[0].overrides[2].key",
        15,
        7,
    );
    assert!(
        err.message().contains("the same key as overrides[0]"),
        "{err}"
    );
    assert!(
        !err.to_string().contains("k_1"),
        "keys are never shown: {err}"
    );

    // One address in two spellings is one key of a limit keyed by IP.
    let err = Policy::builder()
        .limit(
            Limit::new("per_ip", PeerIp::new())
                .quota(Quota::new(Window::per_minute(10)))
                .key_quota("10.1.2.3", Quota::new(Window::per_minute(1)))
                .key_quota("::ffff:10.1.2.3", Quota::new(Window::per_minute(2))),
        )
        .build()
        .unwrap_err();
    assert_eq!(err.field(), "limits[0].overrides[1].key");
}

#[test]
fn a_listed_key_longer_than_any_request_s_is_an_error() {
    let long = "k".repeat(65);
    let limit = || {
        Limit::new("per_key", Header::parse("X-API-Key").unwrap())
            .quota(Quota::new(Window::per_minute(10)))
    };
    let err = Policy::builder()
        .max_key_len(64)
        .limit(limit().key_quota(long.as_str(), Quota::new(Window::per_minute(1))))
        .build()
        .unwrap_err();
    assert_eq!(err.field(), "limits[0].overrides[0].key");
    assert!(err.message().contains("1 to 64 bytes"), "{err}");
    let err = Policy::builder()
        .max_key_len(64)
        .limit(limit().exempt_keys([long.as_str()]))
        .build()
        .unwrap_err();
    assert_eq!(err.field(), "limits[0].exempt_keys[0]");
    assert!(Policy::builder()
        .max_key_len(65)
        .limit(limit().key_quota(long.as_str(), Quota::new(Window::per_minute(1))))
        .build()
        .is_ok());
}

#[test]
fn a_route_an_earlier_route_shadows_is_an_error() {
    // `quota` is a route for every request: one after it never matches.
    let err = Policy::builder()
        .limit(
            Limit::new("per_key", Header::parse("X-API-Key").unwrap())
                .quota(Quota::new(Window::per_minute(10)))
                .route("GET /slow", Quota::in_flight(1)),
        )
        .build()
        .unwrap_err();
    assert_eq!(err.field(), "limits[0].routes[1]");
    assert!(
        err.message().contains("can never match: routes[0]"),
        "{err}"
    );
    // A GET route matches HEAD: a HEAD route after it never does, unless
    // the GET route leaves HEAD out.
    let limit = || Limit::new("per_key", Header::parse("X-API-Key").unwrap());
    let err = Policy::builder()
        .limit(
            limit()
                .route("GET /v1/calls/{id}", Quota::new(Window::per_minute(10)))
                .route("HEAD /v1/calls/c_1", Quota::new(Window::per_minute(1))),
        )
        .build()
        .unwrap_err();
    assert_eq!(err.field(), "limits[0].routes[1]");
    assert!(Policy::builder()
        .limit(
            limit()
                .route_without_head("GET /v1/calls/{id}", Quota::new(Window::per_minute(10)))
                .route("HEAD /v1/calls/c_1", Quota::new(Window::per_minute(1))),
        )
        .build()
        .is_ok());
    // The narrower route first is what was meant.
    assert!(Policy::builder()
        .limit(
            limit()
                .route("GET /slow", Quota::in_flight(1))
                .quota(Quota::new(Window::per_minute(10))),
        )
        .build()
        .is_ok());

    // In a file, the error points at the route.
    check(
        r#"[[limits]]
name = "per_key"
key = { header = "X-API-Key" }
routes = [
  { path = "/v1/*", windows = ["10/minute"] },
  { methods = ["POST"], path = "/v1/keys", windows = ["1/hour"] },
]
"#,
        ConfigErrorKind::InvalidValue,
        "limits[0].routes[1]",
        6,
        3,
    );
}

#[test]
fn a_field_that_would_mean_nothing_is_an_error_at_its_place() {
    // An override on a plan takes the plan's quota whole: its own cost,
    // algorithm or queue would be ignored (and were, unchecked).
    let on_plan = |field: &str| {
        with_routes(&format!(
            "[[limits.routes]]\nwindows = [\"3/minute\"]\nplans.pro = {{ windows = [\"10/minute\"] }}\n\
             [[limits.overrides]]\nkey = \"ov\"\nplan = \"pro\"\n{field}\n"
        ))
    };
    for (field, name, column) in [
        ("cost = 7", "cost", 8),
        ("algorithm = \"fixed_window\"", "algorithm", 13),
        ("queue = { max_queued = 1, max_wait = \"1s\" }", "queue", 9),
    ] {
        let err = check(
            &on_plan(field),
            ConfigErrorKind::InvalidValue,
            &format!("limits[0].overrides[0].{name}"),
            10,
            column,
        );
        assert!(err.message().contains("plan's quota"), "{err}");
    }
    // An override's own quota is checked where its fields are.
    check(
        &with_routes(
            "overrides = [{ key = \"a\", windows = [\"5/minute\"], cost = 6 }]\n\
             routes = [{ windows = [\"3/minute\"] }]\n",
        ),
        ConfigErrorKind::InvalidValue,
        "limits[0].overrides[0].cost",
        4,
        58,
    );
    // An in-flight cap of 0 would refuse everything; a cost or an
    // algorithm on a quota with no window would count nothing.
    check(
        &with_routes("[[limits.routes]]\nconcurrency = 0\n"),
        ConfigErrorKind::InvalidValue,
        "limits[0].routes[0].concurrency",
        5,
        15,
    );
    check(
        &with_routes("[[limits.routes]]\nconcurrency = 2\ncost = 5\n"),
        ConfigErrorKind::InvalidValue,
        "limits[0].routes[0].cost",
        6,
        8,
    );
    check(
        &with_routes("[[limits.routes]]\nconcurrency = 2\nalgorithm = \"fixed_window\"\n"),
        ConfigErrorKind::InvalidValue,
        "limits[0].routes[0].algorithm",
        6,
        13,
    );
    // A plan whose name is not bare is quoted in the path, and found.
    check(
        &with_routes(
            "[[limits.routes]]\nwindows = [\"3/minute\"]\n[limits.routes.plans]\n\"a.b\" = { windows = [\"0/minute\"] }\n",
        ),
        ConfigErrorKind::InvalidValue,
        "limits[0].routes[0].plans.\"a.b\".windows[0]",
        7,
        22,
    );
}

#[test]
fn a_window_finer_than_a_request_per_nanosecond_is_refused_from_code_too() {
    use tower_ratelimit::key::Header;
    use tower_ratelimit::{Limit, Quota, Window};
    // `Window::new` refuses it; the const constructors cannot, so the
    // policy's build does.
    assert!(Window::new(u32::MAX, std::time::Duration::from_secs(1)).is_err());
    let err = Policy::builder()
        .limit(
            Limit::new("per_key", Header::parse("X-API-Key").unwrap())
                .quota(Quota::new(Window::per_second(u32::MAX))),
        )
        .build()
        .unwrap_err();
    assert_eq!(err.kind(), ConfigErrorKind::InvalidValue);
    assert!(err.field().ends_with("windows"), "{err}");
    assert!(err.message().contains("nanosecond"), "{err}");
    let err = Policy::builder()
        .limit(
            Limit::new("per_key", Header::parse("X-API-Key").unwrap()).quota(Quota::in_flight(0)),
        )
        .build()
        .unwrap_err();
    assert!(err.field().ends_with("concurrency"), "{err}");
    // The builder's queue has the file's bounds.
    for (quota, field) in [
        (
            Quota::in_flight(1).queue(2_000_000, std::time::Duration::from_secs(1)),
            "queue.max_queued",
        ),
        (
            Quota::in_flight(1).queue(10, std::time::Duration::from_secs(400 * 86_400)),
            "queue.max_wait",
        ),
    ] {
        let err = Policy::builder()
            .limit(Limit::new("per_key", Header::parse("X-API-Key").unwrap()).quota(quota))
            .build()
            .unwrap_err();
        assert!(err.field().ends_with(field), "{err}");
    }
}

#[tokio::test]
async fn whitespace_around_a_route_s_path_is_not_part_of_it_of_any_kind() {
    // As in the builder's route text: an ASCII space (refused before) and
    // a no-break space (dropped before) alike.
    for path in ["/a ", " /a", "/a\u{a0}", "\u{2028}/a"] {
        let text = with_routes(&format!(
            "[[limits.routes]]\npath = \"{path}\"\nwindows = [\"2/minute\"]\n"
        ));
        let policy = Policy::from_toml(&text).unwrap_or_else(|e| panic!("{path:?}: {e}"));
        let svc = service(policy, SystemClock::new());
        let reply = send(&svc, request("GET", "/a", Some("k_1"))).await;
        assert_eq!(reply.status, StatusCode::OK, "{path:?}");
        let remaining = reply
            .headers
            .iter()
            .find(|(name, _)| name == "x-ratelimit-remaining");
        assert_eq!(remaining.map(|(_, v)| v.as_str()), Some("1"), "{path:?}");
    }
}

#[test]
fn names_are_read_without_regard_to_case_everywhere() {
    // As `headers` and `report` always were.
    let text = "refusal = \"Nixflex\"\n[[limits]]\nname = \"per_key\"\n\
                key = { header = \"X-API-Key\" }\non_missing_key = \"Skip\"\n\
                algorithm = \"FIXED_WINDOW\"\n[[limits.routes]]\nwindows = [\"2/minute\"]\n\
                algorithm = \"GCRA\"\n";
    Policy::from_toml(text).unwrap();
    // A limit's algorithm is for its quotas that count: one with only an
    // in-flight cap takes none (and is no error).
    let text = "[[limits]]\nname = \"per_key\"\nkey = { header = \"X-API-Key\" }\n\
                algorithm = \"fixed_window\"\n\
                overrides = [{ key = \"k\", concurrency = 3 }]\n\
                [[limits.routes]]\nconcurrency = 2\n";
    Policy::from_toml(text).unwrap();
    // Rates: units once each, largest first; limits as TOML writes numbers.
    for (window, field) in [
        ("\"2/1m1m\"", "limits[0].routes[0].windows[0]"),
        ("\"+2/minute\"", "limits[0].routes[0].windows[0]"),
        ("\"2__0/minute\"", "limits[0].routes[0].windows[0]"),
    ] {
        let err = Policy::from_toml(&with_routes(&format!(
            "[[limits.routes]]\nwindows = [{window}]\n"
        )))
        .unwrap_err();
        assert_eq!(err.field(), field, "{window}: {err}");
    }
}

#[test]
fn a_route_earlier_routes_shadow_together_is_an_error() {
    // GET and POST each have a route first: `GET,POST /a` never matches.
    let limit = || Limit::new("per_key", Header::parse("X-API-Key").unwrap());
    let err = Policy::builder()
        .limit(
            limit()
                .route("GET /a", Quota::new(Window::per_minute(10)))
                .route("POST /{any}", Quota::new(Window::per_minute(5)))
                .route("GET,POST /a", Quota::new(Window::per_minute(1))),
        )
        .build()
        .unwrap_err();
    assert_eq!(err.field(), "limits[0].routes[2]");
    assert!(
        err.message().contains("routes[0]") && err.message().contains("routes[1]"),
        "{err}"
    );
    // One method left over: it can match, so it is no error.
    assert!(Policy::builder()
        .limit(
            limit()
                .route("GET /a", Quota::new(Window::per_minute(10)))
                .route("POST /a", Quota::new(Window::per_minute(5)))
                .route("GET,POST,PUT /a", Quota::new(Window::per_minute(1))),
        )
        .build()
        .is_ok());
}

#[test]
fn a_first_of_with_no_alternative_is_refused_from_code_as_from_a_file() {
    // It would find no key in any request: every request a 401.
    let err = Policy::builder()
        .limit(Limit::new("per_key", FirstOf::new()).quota(Quota::new(Window::per_minute(1))))
        .build()
        .unwrap_err();
    assert_eq!(err.field(), "limits[0].key.first_of", "{err}");
    let nested = FirstOf::new().or(FirstOf::new());
    let err = Policy::builder()
        .limit(Limit::new("per_key", nested).quota(Quota::new(Window::per_minute(1))))
        .build()
        .unwrap_err();
    assert_eq!(err.field(), "limits[0].key.first_of[0].first_of", "{err}");
}

#[test]
fn a_date_where_a_window_goes_is_named_as_one() {
    let err = Policy::from_toml(&with_routes(
        "[[limits.routes]]\nwindows = [1979-05-27T07:32:00Z]\n",
    ))
    .unwrap_err();
    assert!(!err.message().contains("$__toml"), "{err}");
    assert!(err.message().contains("date"), "{err}");
}

#[test]
fn the_routes_of_a_limit_that_cap_in_flight_take_one_cap() {
    // One count per key across the routes: two caps would let the larger
    // one's requests hand the smaller one's line more slots than it has.
    let err = check(
        &with_routes(
            "[[limits.routes]]\npath = \"/small\"\nconcurrency = 1\n\
             [[limits.routes]]\npath = \"/big\"\nconcurrency = 5\n",
        ),
        ConfigErrorKind::InvalidValue,
        "limits[0].routes[1].concurrency",
        9,
        15,
    );
    assert!(err.message().contains("at 5, but routes[0]"), "{err}");
    assert!(err.message().contains("limit of its own"), "{err}");
    // Under a plan too, where the plan's own quota sets it.
    let err = check(
        &with_routes(
            "[[limits.routes]]\npath = \"/a\"\nconcurrency = 10\nplans.pro = { concurrency = 25 }\n\
             [[limits.routes]]\npath = \"/b\"\nconcurrency = 10\nplans.pro = { concurrency = 50 }\n",
        ),
        ConfigErrorKind::InvalidValue,
        "limits[0].routes[1].plans.pro.concurrency",
        11,
        29,
    );
    assert!(err.message().contains("on plan `pro`"), "{err}");
    // The same cap in another mode, and a route with no cap, are one cap.
    let text = with_routes(
        "[[limits.routes]]\npath = \"/in\"\nconcurrency = 10\nplans.pro = { concurrency = 25 }\n\
         [[limits.routes]]\npath = \"/out\"\nconcurrency = 10\nqueue = { max_queued = 5, max_wait = \"1s\" }\n\
         plans.pro = { concurrency = 25, queue = { max_queued = 5, max_wait = \"1s\" } }\n\
         [[limits.routes]]\npath = \"/free\"\nwindows = [\"5/second\"]\n",
    );
    Policy::from_toml(&text).unwrap();
    // In code.
    use tower_ratelimit::key::Header;
    use tower_ratelimit::{Limit, Quota};
    let err = Policy::builder()
        .limit(
            Limit::new("calls", Header::parse("X-API-Key").unwrap())
                .route(
                    "GET /small",
                    Quota::in_flight(1).queue(10, std::time::Duration::from_secs(30)),
                )
                .route("GET /big", Quota::in_flight(5)),
        )
        .build()
        .unwrap_err();
    assert_eq!(err.field(), "limits[0].routes[1].concurrency", "{err}");
}

#[test]
fn a_path_capture_is_counted_within_another_key_from_a_file() {
    let limit = |key: &str| {
        format!(
            "[[limits]]\nname = \"per_leg\"\nkey = {key}\n\
             routes = [{{ path = \"/v2/accounts/{{account_sid}}/legs/{{leg_sid}}\", windows = [\"1/minute\"] }}]\n"
        )
    };
    Policy::from_toml(&limit(
        "{ path = \"leg_sid\", within = { path = \"account_sid\" } }",
    ))
    .unwrap();
    // `within` is a path capture's, and its own table is checked in place.
    check(
        &limit("{ header = \"X-API-Key\", within = { path = \"account_sid\" } }"),
        ConfigErrorKind::InvalidValue,
        "limits[0].key.within",
        3,
        40,
    );
    check(
        &limit("{ path = \"leg_sid\", within = { path = \"account\" } }"),
        ConfigErrorKind::UnknownName,
        "limits[0].routes[0].path",
        4,
        20,
    );
    check(
        &limit("{ path = \"leg_sid\", within = { header = \"\" } }"),
        ConfigErrorKind::InvalidValue,
        "limits[0].key.within.header",
        3,
        47,
    );
}
