//! Run: `cargo build --release -p tower-ratelimit-benches --example instructions`, then
//! `valgrind --tool=callgrind target/release/examples/instructions ratelimit 20000`
//! (or `governor`, `bare`): sends that many requests (`GET /v1/calls/c_42`,
//! 100 API keys, the overhead bench's two-window policy) through one stack,
//! polled in place, so instruction counts of the stacks can be compared.
//! Subtract `bare` from the others for what each layer adds per request.

#[path = "../benches/support/mod.rs"]
mod support;

use std::hint::black_box;

use http::Request;
use tower::{Layer, Service};
use tower_governor::governor::GovernorConfigBuilder;
use tower_governor::key_extractor::KeyExtractor;
use tower_governor::{GovernorError, GovernorLayer};
use tower_ratelimit::key::Header;
use tower_ratelimit::{Limit, Policy, Quota, RateLimitLayer, Window};

use support::{api_keys, bare, request, send, Cycle, HUGE};

#[derive(Debug, Clone, Copy)]
struct ApiKey;

impl KeyExtractor for ApiKey {
    type Key = String;

    fn extract<T>(&self, request: &Request<T>) -> Result<String, GovernorError> {
        request
            .headers()
            .get("x-api-key")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
            .ok_or(GovernorError::UnableToExtractKey)
    }
}

fn run<S, B>(mut service: S, n: usize)
where
    S: Service<Request<()>, Response = http::Response<B>, Error = std::convert::Infallible>,
{
    let mut keys = Cycle::new(api_keys(100, 0));
    for _ in 0..n {
        black_box(send(&mut service, request(keys.next())));
    }
}

fn main() {
    let mut args = std::env::args().skip(1);
    let stack = args.next().unwrap_or_else(|| "ratelimit".into());
    let n = args.next().and_then(|n| n.parse().ok()).unwrap_or(20_000);
    match stack.as_str() {
        "bare" => run(bare(), n),
        "ratelimit" => {
            let quota = || Quota::new(Window::per_minute(HUGE)).and(Window::per_hour(HUGE));
            let policy = Policy::builder()
                .limit(
                    Limit::new("per_key", Header::parse("X-API-Key").unwrap())
                        .route("POST /v1/keys", quota())
                        .route("GET *", quota())
                        .route("POST,PUT,PATCH,DELETE *", quota()),
                )
                .build()
                .unwrap();
            let layer = RateLimitLayer::new(policy).decision_extensions(false);
            run(layer.layer(bare()), n)
        }
        "governor" => {
            let config = GovernorConfigBuilder::default()
                .per_nanosecond(1)
                .burst_size(HUGE)
                .key_extractor(ApiKey)
                .use_headers()
                .finish()
                .unwrap();
            run(GovernorLayer::new(config).layer(bare()), n)
        }
        other => panic!("unknown stack {other}: bare, ratelimit or governor"),
    }
}
