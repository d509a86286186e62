//! A flood of made-up keys, several times the memory store's cap, through
//! the layer: memory stays bounded, keys tracked before the flood keep their
//! exact counts, keys first seen during or after it are admitted up to their
//! quota (within the overflow sketch's documented error, which only ever
//! refuses early), no key is admitted past its quota, and reaching the cap
//! is visible (a `warn` log, and `RefusalReason::Capacity` in decisions and
//! events). A binary of its own: it records the layer's logs, and tracing
//! caches each call site's interest process-wide.

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::FutureExt;
#[path = "support/log_text.rs"]
mod log_text;
use http::{Request, Response, StatusCode};
use log_text::LogText;
use tower::util::BoxCloneService;
use tower::{service_fn, Layer, Service};
use tower_ratelimit::clock::ManualClock;
use tower_ratelimit::store::protocol::{Check, Decided};
use tower_ratelimit::store::Store;
use tower_ratelimit::{
    Decision, EventKind, Policy, Quota, RateLimitLayer, RefusalReason, ResponseBody, Window,
};

const NS: u64 = 1_000_000_000;
const T0: u64 = 1_700_000_000;

type Res = Response<ResponseBody<String>>;
type Svc = BoxCloneService<Request<String>, Res, Infallible>;

/// Nixflex's shape (`POST /v1/keys` 10 per hour, reads 600 per minute) in a
/// policy file that caps the memory store at 1,000 entries. The key secret
/// is fixed so that keys land in the same cells on every run.
const POLICY: &str = r#"
key_secret = "0123456789abcdef0123456789abcdef"

[memory]
max_entries = 1000

[[limits]]
name = "per_key"
key = { header = "X-API-Key" }
routes = [
  { methods = ["POST"], path = "/v1/keys", windows = ["10/hour"] },
  { methods = ["GET"], path = "*", windows = ["600/minute"] },
]
"#;

/// Sends one request; the memory store decides on the spot.
fn send(svc: &mut Svc, method: &str, path: &str, key: &str) -> Res {
    let request = Request::builder()
        .method(method)
        .uri(path)
        .header("x-api-key", key)
        .body(String::new())
        .unwrap();
    svc.call(request).now_or_never().unwrap().unwrap()
}

fn create_key(svc: &mut Svc, key: &str) -> Res {
    send(svc, "POST", "/v1/keys", key)
}

fn refusal(response: &Res) -> Option<RefusalReason> {
    response
        .extensions()
        .get::<Decision>()
        .and_then(Decision::refusal)
}

fn remaining(response: &Res) -> u64 {
    response.headers()["x-ratelimit-remaining"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap()
}

/// How many of `n` requests `send` gets admitted, checking that no refusal
/// comes before an admission ends (a refusal consumes nothing, so the count
/// of one key cannot go up again at one instant).
fn admitted_of(n: usize, mut send: impl FnMut() -> Res) -> (usize, Vec<RefusalReason>) {
    let (mut admitted, mut reasons) = (0, Vec::new());
    for _ in 0..n {
        let response = send();
        match refusal(&response) {
            None => {
                assert!(reasons.is_empty(), "admitted after a refusal");
                assert_eq!(response.status(), StatusCode::OK);
                admitted += 1;
            }
            Some(reason) => {
                assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
                reasons.push(reason);
            }
        }
    }
    (admitted, reasons)
}

#[test]
fn a_flood_of_made_up_keys_several_times_the_cap_locks_no_one_out() {
    let warnings = LogText::up_to(tracing::Level::WARN);
    let _logs = tracing::subscriber::set_default(warnings.clone());

    let clock = ManualClock::at_unix_secs(T0);
    let capacity_events = Arc::new(Mutex::new(0usize));
    let seen = Arc::clone(&capacity_events);
    let layer = RateLimitLayer::new(Policy::from_toml(POLICY).unwrap())
        .decision_extensions(true)
        .clock(clock.clone())
        .on_event(move |event| {
            let reason = event.decision().and_then(Decision::refusal);
            if event.kind() == EventKind::Refused && reason == Some(RefusalReason::Capacity) {
                *seen.lock().unwrap() += 1;
            }
        });
    let inner = service_fn(|_req: Request<String>| async {
        Ok::<_, Infallible>(Response::new(String::from("ok")))
    });
    let mut svc: Svc = BoxCloneService::new(layer.layer(inner));
    let store = Arc::clone(layer.store());
    let capacity = store.max_entries();
    assert_eq!(capacity, 1000);

    // Before the flood: a customer creates 4 keys (6 left this hour, kept
    // tracked throughout), another creates 1 (refilled and dropped 6 min
    // later, in the middle of the flood).
    for n in 1..=4 {
        assert_eq!(remaining(&create_key(&mut svc, "customer")), 10 - n);
    }
    assert_eq!(remaining(&create_key(&mut svc, "regular")), 9);

    // The flood: one key creation from each of 10,000 made-up keys, one
    // every 40 ms for 400 s. A made-up key's state lasts 360 s, so about
    // 9,000 are live at once: nine times the cap.
    let flood = |i: usize| format!("made-up-{i}");
    let flood_one = |svc: &mut Svc, i: usize| {
        clock.advance(Duration::from_millis(40));
        let response = create_key(svc, &flood(i));
        assert_eq!(response.status(), StatusCode::OK, "flood key {i}");
        assert!(store.len() <= capacity, "{} entries", store.len());
    };
    for i in 0..4000 {
        flood_one(&mut svc, i);
    }
    assert_eq!(store.len(), capacity, "the cap is reached");
    // From here on, the flood takes no more memory: the store's tables are
    // full and its overflow sketches exist. (What it leaves is the layer's
    // per-thread cache of `X-RateLimit-Reset` values, 512 at most, which
    // takes one value a second here.)
    let memory = allocation_counter::measure(|| {
        for i in 4000..10_000 {
            flood_one(&mut svc, i);
        }
    });
    assert!(
        memory.bytes_current <= 240 * 44,
        "{} bytes more after 6,000 more keys",
        memory.bytes_current
    );
    assert!(
        memory.bytes_max < 16 * 1024,
        "at most {} bytes",
        memory.bytes_max
    );
    assert_eq!(layer.now(), (T0 + 400) * NS);

    // Reaching the cap was logged once (the warning repeats at most once a
    // minute), and never refused a flood key.
    let warnings = warnings.text();
    let count = warnings.lines().count();
    assert!((1..=7).contains(&count), "{count} warnings");
    assert!(
        warnings.lines().all(|line| line.contains("at its cap")),
        "{warnings}"
    );
    assert!(!warnings.contains("made-up"), "{warnings}");

    // The customer tracked before the flood: exactly what it has left, 6
    // of its 10 and one more earned back over the 400 s (one per 360 s).
    let (admitted, reasons) = admitted_of(10, || create_key(&mut svc, "customer"));
    assert_eq!(admitted, 7);
    assert_eq!(reasons, vec![RefusalReason::Window; 3]);

    // Keys first seen after the flood, on a period it did not touch: every
    // read of the minute is admitted, exactly 600, and the 601st refused.
    for key in ["newcomer-1", "newcomer-2"] {
        let (admitted, reasons) = admitted_of(601, || send(&mut svc, "GET", "/v1/calls", key));
        assert_eq!(admitted, 600, "{key}");
        assert_eq!(reasons.len(), 1);
    }

    // Keys first seen after the flood (and the one that refilled during it)
    // on the flooded period: never past their 10, and refused early only by
    // what the live made-up keys sharing their cells used. About 8,000 of
    // them are live in the hour's sketches, of 4,096 cells (64 shards of 64,
    // the least a shard has): about two per cell, so a couple of requests
    // early on average, the sketch's documented error at this density.
    let mut early = 0;
    let mut keys: Vec<String> = (0..100).map(|i| format!("late-{i}")).collect();
    keys.push(String::from("regular"));
    for key in &keys {
        let (admitted, reasons) = admitted_of(12, || create_key(&mut svc, key));
        // One key's worst case depends on where the keyed hashes put it
        // (the cells it shares); the total below is the sketch's error.
        assert!((4..=10).contains(&admitted), "{key}: {admitted}");
        early += 10 - admitted;
        let cause = if admitted < 10 {
            RefusalReason::Capacity
        } else {
            RefusalReason::Window
        };
        assert_eq!(reasons[0], cause, "{key}");
    }
    assert!(early <= 300, "{early} requests refused early over 101 keys");
    assert!(early > 0, "the flood really shares the sketch's cells");

    // No key is ever admitted past its quota: every made-up key tries 12
    // more creations. The first 1,000 (sent 40 s in or earlier) have their
    // request's 360 s behind them and get at most 10; the others at most
    // the 9 they have left.
    for i in 0..10_000 {
        let (admitted, _) = admitted_of(12, || create_key(&mut svc, &flood(i)));
        let left = if i < 1000 { 10 } else { 9 };
        assert!(admitted <= left, "flood key {i}: {admitted} more");
    }
    assert!(store.len() <= capacity);
    assert!(*capacity_events.lock().unwrap() > 0);

    // The store itself, flooded directly at its cap. The room the sweeps
    // free goes to the first buckets that need it, whichever shard they
    // are in, so a shard's table may grow past what it held (the cap is the
    // store's, not each shard's); then not one byte more.
    let quota = Quota::new(Window::per_hour(10));
    let now = layer.now();
    let flood_store = |buckets: std::ops::Range<u64>| {
        allocation_counter::measure(|| {
            for bucket in buckets.clone() {
                let check = [Check::new(
                    bucket.wrapping_mul(0x9E37_79B9_7F4A_7C15),
                    &quota,
                )];
                assert!(matches!(store.check(now, &check), Decided::Ready(Ok(_))));
            }
        })
    };
    let memory = flood_store(0..20_000);
    assert!(
        memory.bytes_current <= 16 * capacity as i64,
        "{} bytes more: over a 16-byte entry per entry of the cap",
        memory.bytes_current
    );
    assert_eq!(store.len(), capacity);
    let memory = flood_store(20_000..40_000);
    assert_eq!((memory.bytes_current, memory.count_current), (0, 0));
    assert_eq!(store.len(), capacity);
}
