//! Run with `cargo run --example auth_composition` (option: `--addr 127.0.0.1:3001`).
//! Any request may add `?hold_ms=N` (up to 60,000) to stay in flight N ms.
//!
//! An authentication layer and the rate limiter in one `ServiceBuilder`,
//! limiting each *account* by its *plan*:
//!
//! * `AuthLayer` maps an API key (`X-API-Key: <key>` or `Authorization:
//!   Bearer <key>`) to an `Account { id, plan }` and puts it into the
//!   request's extensions; an unknown or missing key is answered 401 by the
//!   auth layer itself, so it never reaches the rate limiter.
//! * `RateLimitLayer` keys by the account's id (`key::Extension`), so every
//!   API key of one account shares one bucket, and picks the quota of the
//!   account's plan (`Limit::plan_from` + `Tiers`): free 10/minute and 2 in
//!   flight, pro 100/minute and 10 in flight.
//!
//! `app` builds the whole stack; `tests/layer/auth_composition.rs` drives it.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::process::ExitCode;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use bytes::Bytes;
use http::header::{AUTHORIZATION, CONTENT_TYPE, WWW_AUTHENTICATE};
use http::{HeaderValue, Request, Response, StatusCode};
use serde_json::json;
use tower::{service_fn, Layer, Service, ServiceBuilder};
use tower_ratelimit::key::{Extension, Key};
use tower_ratelimit::{HeaderStyle, Limit, Policy, Quota, RateLimitLayer, Tiers, Window};

/// A customer's plan, which decides its quotas.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plan {
    /// 10 requests a minute, 2 in flight.
    Free,
    /// 100 requests a minute, 10 in flight.
    Pro,
}

impl Plan {
    /// The plan's name, as the policy's `Tiers` name it.
    pub fn as_str(self) -> &'static str {
        match self {
            Plan::Free => "free",
            Plan::Pro => "pro",
        }
    }
}

/// Who a request is from: what the auth layer learnt from its API key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    /// The account's id: what the rate limiter counts against.
    pub id: String,
    /// The account's plan: which quota applies.
    pub plan: Plan,
}

/// The API keys the auth layer knows, each with its account. An account
/// may have several keys.
#[derive(Debug, Clone, Default)]
pub struct Accounts {
    by_key: HashMap<String, Account>,
}

impl Accounts {
    /// The demo's keys: `sk_free_1` and `sk_free_2` (two keys of one free
    /// account) and `sk_pro_1` (a pro account).
    pub fn demo() -> Self {
        let free = Account {
            id: "acct_free".into(),
            plan: Plan::Free,
        };
        let pro = Account {
            id: "acct_pro".into(),
            plan: Plan::Pro,
        };
        Accounts::default()
            .key("sk_free_1", free.clone())
            .key("sk_free_2", free)
            .key("sk_pro_1", pro)
    }

    /// Adds an API key of `account`.
    #[must_use]
    pub fn key(mut self, key: &str, account: Account) -> Self {
        self.by_key.insert(key.to_owned(), account);
        self
    }

    fn find(&self, key: &str) -> Option<&Account> {
        self.by_key.get(key)
    }
}

/// Authenticates requests: puts the caller's [`Account`] into the request's
/// extensions, or answers 401 without calling the inner service.
#[derive(Debug, Clone)]
pub struct AuthLayer {
    accounts: Arc<Accounts>,
}

impl AuthLayer {
    /// Accepts the keys of `accounts`.
    pub fn new(accounts: Accounts) -> Self {
        AuthLayer {
            accounts: Arc::new(accounts),
        }
    }
}

impl<S> Layer<S> for AuthLayer {
    type Service = Auth<S>;

    fn layer(&self, inner: S) -> Auth<S> {
        Auth {
            inner,
            accounts: Arc::clone(&self.accounts),
        }
    }
}

/// The service [`AuthLayer`] builds.
#[derive(Debug, Clone)]
pub struct Auth<S> {
    inner: S,
    accounts: Arc<Accounts>,
}

/// A boxed response future (kept simple for the example).
type BoxFuture<T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + Send>>;

impl<S, B, ResBody> Service<Request<B>> for Auth<S>
where
    S: Service<Request<B>, Response = Response<ResBody>>,
    S::Future: Send + 'static,
    ResBody: http_body::Body<Data = Bytes> + Send + 'static,
    ResBody::Error: Into<axum::BoxError>,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = BoxFuture<Response<Body>, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<B>) -> Self::Future {
        let account = match api_key(&request) {
            None => Err(("missing_api_key", "Send an X-API-Key or Bearer token.")),
            Some(key) => self
                .accounts
                .find(key)
                .cloned()
                .ok_or(("invalid_api_key", "The API key is not valid.")),
        };
        match account {
            Ok(account) => {
                request.extensions_mut().insert(account);
                let response = self.inner.call(request);
                Box::pin(async move { Ok(response.await?.map(Body::new)) })
            }
            Err((code, message)) => {
                let response = unauthorized(code, message);
                Box::pin(async move { Ok(response) })
            }
        }
    }
}

/// The request's API key: `X-API-Key`, else a bearer token.
fn api_key<B>(request: &Request<B>) -> Option<&str> {
    let headers = request.headers();
    if let Some(key) = headers.get("x-api-key") {
        return key.to_str().ok();
    }
    let value = headers.get(AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

fn unauthorized(code: &str, message: &str) -> Response<Body> {
    let body = json!({"error": {"code": code, "message": message}}).to_string();
    let mut response = Response::new(Body::from(body));
    *response.status_mut() = StatusCode::UNAUTHORIZED;
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    headers.insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    response
}

/// The rate-limit policy: one limit, per account, with a quota per plan.
pub fn policy() -> Policy {
    // Free is also the default: for an account whose plan no tier names.
    let free = Quota::new(Window::per_minute(10)).max_in_flight(2);
    let pro = Quota::new(Window::per_minute(100)).max_in_flight(10);
    Policy::builder()
        .limit(
            // The key: the account the auth layer found, not the API key, so
            // that all of an account's keys count in one bucket.
            Limit::new(
                "per_account",
                Extension::new(|a: &Account| Key::from(a.id.as_str())),
            )
            // The plan: read from the same extension; it picks the tier.
            .plan_from(Extension::new(|a: &Account| Key::from(a.plan.as_str())))
            .quota(Tiers::new(free).plan("pro", pro)),
        )
        // `X-RateLimit-*` for the minute window, and the IETF fields, which
        // also report the in-flight cap.
        .header_style(HeaderStyle::Both)
        .build()
        .expect("the policy is valid")
}

/// The whole service: auth, then the rate limiter, then the API.
///
/// `ServiceBuilder` runs its layers top to bottom, so the first `.layer` is
/// the outermost and sees a request first:
///
/// 1. `AuthLayer` runs first. It turns the API key into an `Account` in
///    the request's extensions, or answers 401 itself: an unknown key is
///    never counted, and cannot use up anyone's quota.
/// 2. `RateLimitLayer` runs next and reads that `Account`: its id is the
///    key, its plan picks the quota.
///
/// In the other order the limiter would run before anyone knew the caller:
/// there would be no `Account` to read (every request would be a 401 for a
/// missing key), and the only keys left to it would be the peer's IP or the
/// raw API key header, so an account's keys would not share a bucket and
/// its plan could not choose the quota. A limit that must run before auth,
/// against floods of made-up keys, is a separate per-IP limiter outside
/// `AuthLayer`.
pub fn app(
    accounts: Accounts,
    limiter: RateLimitLayer,
) -> impl Service<Request<Body>, Response = Response<Body>, Error = Infallible, Future: Send + 'static>
       + Clone
       + Send
       + Sync
       + 'static {
    ServiceBuilder::new()
        .layer(AuthLayer::new(accounts))
        .layer(limiter)
        .service(service_fn(answer))
}

/// The longest `?hold_ms=` accepted.
const MAX_HOLD_MS: u64 = 60_000;

/// The API behind the layers: a 200 that says who asked, after
/// `?hold_ms=N` milliseconds if asked.
async fn answer(request: Request<Body>) -> Result<Response<Body>, Infallible> {
    let hold_ms = request
        .uri()
        .query()
        .into_iter()
        .flat_map(|q| q.split('&'))
        .find_map(|pair| pair.strip_prefix("hold_ms="))
        .and_then(|ms| ms.parse::<u64>().ok())
        .unwrap_or(0)
        .min(MAX_HOLD_MS);
    if hold_ms > 0 {
        tokio::time::sleep(Duration::from_millis(hold_ms)).await;
    }
    // The handler can read the account too.
    let account = request.extensions().get::<Account>();
    let body = json!({
        "ok": true,
        "path": request.uri().path(),
        "account": account.map(|a| a.id.as_str()),
        "plan": account.map(|a| a.plan.as_str()),
        "held_ms": hold_ms,
    });
    let mut response = Response::new(Body::from(body.to_string()));
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    Ok(response)
}

fn parse_addr() -> Result<SocketAddr, String> {
    let usage = "usage: auth_composition [--addr HOST:PORT]";
    let mut addr = SocketAddr::from(([127, 0, 0, 1], 3001));
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--addr" => {
                let text = args
                    .next()
                    .ok_or_else(|| format!("--addr needs a value\n{usage}"))?;
                addr = text.parse().map_err(|_| {
                    format!("--addr: `{text}` is not HOST:PORT (such as 127.0.0.1:3001)")
                })?;
            }
            "-h" | "--help" => return Err(usage.to_owned()),
            other => return Err(format!("unknown argument `{other}`\n{usage}")),
        }
    }
    Ok(addr)
}

#[tokio::main]
async fn main() -> ExitCode {
    let addr = match parse_addr() {
        Ok(addr) => addr,
        Err(message) => {
            eprintln!("{message}");
            return ExitCode::from(2);
        }
    };
    let app = app(Accounts::demo(), RateLimitLayer::new(policy()));

    let listener = match tokio::net::TcpListener::bind(addr).await {
        Ok(listener) => listener,
        Err(e) => {
            eprintln!("cannot listen on {addr}: {e}");
            return ExitCode::FAILURE;
        }
    };
    let addr = listener.local_addr().unwrap_or(addr);
    println!("auth_composition listening on http://{addr}");
    println!("keys: sk_free_1, sk_free_2 (one free account: 10/minute, 2 in flight), sk_pro_1 (pro: 100/minute, 10 in flight)");
    println!("try:");
    println!("  curl -i -H 'X-API-Key: sk_free_1' http://{addr}/v1/calls");
    println!("  curl -i -H 'Authorization: Bearer sk_pro_1' http://{addr}/v1/calls");
    println!(
        "  curl -i -H 'X-API-Key: sk_nope' http://{addr}/v1/calls     # unknown key: 401 from auth"
    );
    println!(
        "  for i in 1 2 3; do curl -s -o /dev/null -w '%{{http_code}} ' -H 'X-API-Key: sk_free_1' 'http://{addr}/v1/calls?hold_ms=2000' & done; wait; echo   # 2 in flight: the third is 429"
    );
    println!(
        "  for k in sk_free_1 sk_free_2; do for i in $(seq 6); do curl -s -o /dev/null -w '%{{http_code}} ' -H \"X-API-Key: $k\" http://{addr}/v1/calls; done; done; echo   # both keys, one bucket: 429 once its 10 a minute are used"
    );

    let shutdown = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let service = axum::ServiceExt::<Request<Body>>::into_make_service(app);
    if let Err(e) = axum::serve(listener, service)
        .with_graceful_shutdown(shutdown)
        .await
    {
        eprintln!("server error: {e}");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}
