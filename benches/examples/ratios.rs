//! Run: `cargo run --release -p tower-ratelimit-benches --example ratios [KEYS] [ROUNDS]`.
//!
//! The `overhead` bench's stacks, measured side by side the way a noisy
//! machine allows: every round times a batch of requests through each stack
//! in turn (in a rotating order), and each stack keeps its fastest round. A
//! slow spell then costs every stack a round, instead of landing on
//! whichever benchmark happened to run during it, so the ratios of added
//! time (each stack's time less the bare service's, over tower_governor's)
//! move less from run to run than ratios taken from separate benchmarks.
//! `KEYS` is the number of API keys cycled through (default 10,000),
//! `ROUNDS` the number of rounds (default 20).

#[path = "../benches/support/mod.rs"]
mod support;

use std::hint::black_box;
use std::time::Instant;

use http::{Method, Request};
use tower::{Layer, Service};

use tower_ratelimit::RateLimitLayer;

use support::{api_keys, bare, governor_layer, layer, policy, request, send, to, Cycle};

/// Requests per stack per round.
const BATCH: usize = 100_000;

/// A call-control command: counted by both limits of the policy.
fn control(key: &'static str) -> Request<()> {
    to(Method::POST, "/v1/calls/c_42/control", key)
}

/// One stack: sends one request per call.
struct Stack {
    name: &'static str,
    send: Box<dyn FnMut()>,
    best: f64,
}

fn stack<S, B>(
    name: &'static str,
    mut service: S,
    keys: &[&'static str],
    make: fn(&'static str) -> Request<()>,
) -> Stack
where
    S: Service<Request<()>, Response = http::Response<B>, Error = std::convert::Infallible>
        + 'static,
    B: 'static,
{
    let mut keys = Cycle::new(keys.to_vec());
    Stack {
        name,
        send: Box::new(move || {
            black_box(send(&mut service, make(keys.next())));
        }),
        best: f64::INFINITY,
    }
}

fn main() {
    let mut args = std::env::args().skip(1);
    let n_keys = args.next().and_then(|n| n.parse().ok()).unwrap_or(10_000);
    let rounds = args.next().and_then(|n| n.parse().ok()).unwrap_or(20);
    let keys = api_keys(n_keys, 1);
    let mut stacks = vec![
        stack("bare", bare(), &keys, request),
        stack(
            "ratelimit, 1 window",
            layer(1).layer(bare()),
            &keys,
            request,
        ),
        stack(
            "ratelimit, 2 windows",
            layer(2).layer(bare()),
            &keys,
            request,
        ),
        stack(
            "ratelimit, the defaults",
            RateLimitLayer::new(policy(2)).layer(bare()),
            &keys,
            request,
        ),
        stack(
            "tower_governor",
            governor_layer().layer(bare()),
            &keys,
            request,
        ),
        stack("bare, call control", bare(), &keys, control),
        stack(
            "ratelimit, call control",
            layer(2).layer(bare()),
            &keys,
            control,
        ),
    ];
    // Every key known to every stack before anything is timed.
    for stack in &mut stacks {
        for _ in 0..n_keys.max(BATCH / 10) {
            (stack.send)();
        }
    }
    for round in 0..rounds {
        let count = stacks.len();
        for i in 0..count {
            let stack = &mut stacks[(i + round) % count];
            let start = Instant::now();
            for _ in 0..BATCH {
                (stack.send)();
            }
            let ns = start.elapsed().as_nanos() as f64 / BATCH as f64;
            stack.best = stack.best.min(ns);
        }
    }
    let best = |name: &str| {
        stacks
            .iter()
            .find(|s| s.name == name)
            .map_or(0.0, |s| s.best)
    };
    let governor = best("tower_governor") - best("bare");
    println!("{n_keys} keys, {rounds} rounds of {BATCH} requests; fastest round of each stack");
    println!(
        "{:<26} {:>8} {:>9} {:>18}",
        "stack", "ns/req", "added", "÷ tower_governor"
    );
    for stack in &stacks {
        let base = if stack.name.ends_with("call control") {
            best("bare, call control")
        } else {
            best("bare")
        };
        let added = stack.best - base;
        let ratio = if stack.name.starts_with("bare") {
            String::new()
        } else {
            format!("{:.2}×", added / governor)
        };
        println!(
            "{:<26} {:>8.1} {:>9.1} {:>18}",
            stack.name, stack.best, added, ratio
        );
    }
}
