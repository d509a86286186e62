//! Run: `cargo build --release -p tower-ratelimit-benches --example instructions`, then
//! `valgrind --tool=callgrind --toggle-collect='instructions::run*' target/release/examples/instructions ratelimit 20000`
//! (or `ratelimit1`, `defaults`, `governor`, `bare`; `stacked` and
//! `bare_control` for call control's two limits): sends that many requests
//! (`GET /v1/calls/c_42`, 100 API keys, the overhead bench's policy) through
//! one stack, polled in place, so instruction counts of the stacks can be
//! compared (the same stacks as the `overhead` bench's `ratelimit_2w`,
//! `ratelimit_1w`, `ratelimit_defaults` and `tower_governor`). `--toggle-collect` counts `run` alone: the requests,
//! not the stack's construction (nor the clock's calibration).
//! Subtract `bare` from the others for what each layer adds per request.

#[path = "../benches/support/mod.rs"]
mod support;

use std::hint::black_box;

use http::Request;
use tower::{Layer, Service};

use tower_ratelimit::RateLimitLayer;

use support::{api_keys, bare, control, governor_layer, layer, policy, request, send, Cycle};

#[inline(never)]
fn run<S, B>(mut service: S, n: usize, make: fn(&'static str) -> Request<()>)
where
    S: Service<Request<()>, Response = http::Response<B>, Error = std::convert::Infallible>,
{
    let mut keys = Cycle::new(api_keys(100, 0));
    for _ in 0..n {
        black_box(send(&mut service, make(keys.next())));
    }
}

fn main() {
    let mut args = std::env::args().skip(1);
    let stack = args.next().unwrap_or_else(|| "ratelimit".into());
    let n = args.next().and_then(|n| n.parse().ok()).unwrap_or(20_000);
    match stack.as_str() {
        "bare" => run(bare(), n, request),
        "ratelimit" => run(layer(2).layer(bare()), n, request),
        // One window: the work tower_governor does.
        "ratelimit1" => run(layer(1).layer(bare()), n, request),
        // The crate's defaults: the decision in the request's and the
        // response's extensions.
        "defaults" => run(RateLimitLayer::new(policy(2)).layer(bare()), n, request),
        "governor" => run(governor_layer().layer(bare()), n, request),
        // Call control, two limits of two windows each (and its bare
        // service, to subtract).
        "stacked" => run(layer(2).layer(bare()), n, control),
        "bare_control" => run(bare(), n, control),
        other => panic!(
            "unknown stack {other}: bare, ratelimit, ratelimit1, defaults, governor, stacked or bare_control"
        ),
    }
}
