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

use http::Request;
use tower::{Layer, Service};

use tower_ratelimit::RateLimitLayer;

use support::{api_keys, bare, control, governor_layer, layer, policy, request, send, Cycle};

/// Requests per stack per round.
const BATCH: usize = 100_000;

/// One stack: sends one request per call.
struct Stack {
    name: &'static str,
    /// The bare service it is measured against (the index of a stack that
    /// sends the same requests); `None` for a bare service itself.
    baseline: Option<usize>,
    send: Box<dyn FnMut()>,
    best: f64,
}

/// The bare service sent reads (the request most stacks are sent).
const BARE: usize = 0;
/// The bare service sent call-control commands.
const BARE_CONTROL: usize = 1;
/// The stack every ratio is taken against.
const GOVERNOR: usize = 2;

fn stack<S, B>(
    name: &'static str,
    baseline: Option<usize>,
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
        baseline,
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
    let keys = &api_keys(n_keys, 1);
    let reads = Some(BARE);
    let commands = Some(BARE_CONTROL);
    let mut stacks = vec![
        stack("bare", None, bare(), keys, request),
        stack("bare, call control", None, bare(), keys, control),
        stack(
            "tower_governor",
            reads,
            governor_layer().layer(bare()),
            keys,
            request,
        ),
        stack(
            "ratelimit, 1 window",
            reads,
            layer(1).layer(bare()),
            keys,
            request,
        ),
        stack(
            "ratelimit, 2 windows",
            reads,
            layer(2).layer(bare()),
            keys,
            request,
        ),
        stack(
            "ratelimit, the defaults",
            reads,
            RateLimitLayer::new(policy(2)).layer(bare()),
            keys,
            request,
        ),
        stack(
            "ratelimit, call control",
            commands,
            layer(2).layer(bare()),
            keys,
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
    let added = |stack: &Stack| stack.baseline.map(|b| stack.best - stacks[b].best);
    let governor = added(&stacks[GOVERNOR]).unwrap_or(f64::NAN);
    println!("{n_keys} keys, {rounds} rounds of {BATCH} requests; fastest round of each stack");
    println!(
        "{:<26} {:>8} {:>9} {:>18}",
        "stack", "ns/req", "added", "÷ tower_governor"
    );
    for stack in &stacks {
        let (added, ratio) = match added(stack) {
            Some(ns) => (format!("{ns:.1}"), format!("{:.2}×", ns / governor)),
            None => (String::new(), String::new()),
        };
        println!(
            "{:<26} {:>8.1} {:>9} {:>18}",
            stack.name, stack.best, added, ratio
        );
    }
}
