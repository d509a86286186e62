//! Once a key is known, an admitted request costs no heap allocation of the
//! layer's own: the key is hashed in place, the decision is made in a
//! preallocated table, and header values come from static or cached buffers.
//!
//! Allocations are counted by a counting global allocator, on the test's own
//! thread only, around `call` and the poll of its future: the inner service's
//! response (and its header map) is built inside that span too, so the layer
//! is compared with the same calls made on the bare service.
//!
//! A binary of its own: the counting allocator is the whole process's
//! global allocator, and only this test should pay for it.

use std::convert::Infallible;
use std::future::{ready, Ready};

use futures::FutureExt;
use http::{HeaderMap, HeaderValue, Method, Request, Response};
use tower::{service_fn, Layer, Service};
use tower_ratelimit::clock::ManualClock;
use tower_ratelimit::key::{Header, PathCapture};
use tower_ratelimit::{Limit, Policy, Quota, RateLimitLayer, Window};

/// Every response of the layer carries this header.
const LAYERED: Option<&str> = Some("x-ratelimit-reset");

/// Requests that make a key known: one per route it uses.
const KNOWN: usize = 2;

/// Requests per key. Their `X-RateLimit-Reset`s are new Unix timestamps
/// (see `warm_key_makes_no_allocation_of_its_own`), fewer than the 512 the
/// per-thread cache holds.
const SEQUENCE: usize = 50;

/// The inner service: answers at once with a response whose header map has
/// room for the rate-limit headers, so adding them does not grow it.
fn bare() -> impl Service<
    Request<()>,
    Response = Response<()>,
    Error = Infallible,
    Future = Ready<Result<Response<()>, Infallible>>,
> + Clone {
    service_fn(|_: Request<()>| {
        let mut response = Response::new(());
        *response.headers_mut() = HeaderMap::with_capacity(8);
        ready(Ok::<_, Infallible>(response))
    })
}

/// A Nixflex-like policy: per API key, partitioned routes with two windows
/// each, and a stacked per-call limit.
fn policy() -> Policy {
    let quota = || Quota::new(Window::per_minute(100)).and(Window::per_hour(1000));
    Policy::builder()
        .limit(
            Limit::new("per_key", Header::parse("X-API-Key").unwrap())
                .route("POST /v1/keys", quota())
                .route("GET *", quota())
                .route("POST,PUT,PATCH,DELETE *", quota()),
        )
        .limit(Limit::new("per_call", PathCapture::new("call_id")).route(
            "POST /v1/calls/{call_id}/control",
            Quota::new(Window::per_minute(100)),
        ))
        .build()
        .unwrap()
}

fn request(key: &'static str, method: Method, path: &'static str) -> Request<()> {
    let mut request = Request::new(());
    *request.method_mut() = method;
    *request.uri_mut() = http::Uri::from_static(path);
    request
        .headers_mut()
        .insert("x-api-key", HeaderValue::from_static(key));
    request
}

/// `SEQUENCE` requests for `key` on its own call, built before counting
/// starts: call-control commands (counted by both limits) and reads.
fn requests(key: &'static str, call: &'static str) -> Vec<Request<()>> {
    (0..SEQUENCE)
        .map(|i| match i % 2 {
            0 => request(key, Method::POST, call),
            _ => request(key, Method::GET, "/v1/calls/c_42"),
        })
        .collect()
}

/// Sends `requests` one by one and returns how many allocations the calls
/// and their futures made on this thread.
/// `expect` names a header every response must carry.
fn count_allocations<S, B>(service: &mut S, requests: Vec<Request<()>>, expect: Option<&str>) -> u64
where
    S: Service<Request<()>, Response = Response<B>>,
    S::Error: std::fmt::Debug,
{
    let mut total = 0;
    for request in requests {
        let mut response = None;
        total += allocation_counter::measure(|| {
            let future = service.call(request);
            response = Some(future.now_or_never().unwrap().unwrap());
        })
        .count_total;
        let response = response.unwrap();
        assert!(response.status().is_success());
        if let Some(name) = expect {
            assert!(response.headers().contains_key(name), "no {name} header");
        }
    }
    total
}

/// Runs the measured sequence through a layer and returns its allocation
/// count. See the test below for why there are two keys.
fn warm_sequence_allocations(settings: impl FnOnce(RateLimitLayer) -> RateLimitLayer) -> u64 {
    let clock = ManualClock::at_unix_secs(1_700_000_000);
    let layer = settings(RateLimitLayer::new(policy()).clock(clock));
    let mut service = layer.layer(bare());
    let (warm, measured) = (
        requests("key_a", "/v1/calls/c_a/control"),
        requests("key_b", "/v1/calls/c_b/control"),
    );
    let mut warm = warm.into_iter();
    let mut measured = measured.into_iter();
    // Both keys become known: their first two requests (one per route, and
    // each route counts in its own bucket) create their entries.
    count_allocations(&mut service, warm.by_ref().take(KNOWN).collect(), LAYERED);
    count_allocations(
        &mut service,
        measured.by_ref().take(KNOWN).collect(),
        LAYERED,
    );
    // Key A runs the rest of the sequence first, so the per-thread cache of
    // large header values holds every `X-RateLimit-Reset` it produces.
    count_allocations(&mut service, warm.collect(), LAYERED);
    // Key B, in the same state at the same instant, replays it.
    count_allocations(&mut service, measured.collect(), LAYERED)
}

#[test]
fn warm_key_makes_no_allocation_of_its_own() {
    // The clock stands still, so each request of a key moves its reset
    // further out and `X-RateLimit-Reset` (a Unix timestamp, too large for
    // the static table of small numbers) takes a new value every time. Such
    // values are built once per thread and then shared from a cache; the
    // second key replays exactly the first key's sequence, so every value it
    // needs is cached and what is left is the layer's own allocations.
    let bare_count = count_allocations(
        &mut bare(),
        requests("key_b", "/v1/calls/c_b/control")
            .into_iter()
            .skip(KNOWN)
            .collect(),
        None,
    );
    assert!(bare_count > 0, "the bare response's header map is counted");

    // The defaults: the decision is built and is `Decision::current()`
    // while the inner service runs, kept in the response future.
    let defaults = warm_sequence_allocations(|layer| layer);
    assert_eq!(
        defaults, bare_count,
        "the layer's defaults allocated for a known key: {defaults} allocations against {bare_count}"
    );
    // Nothing reads the decision: it is not even built.
    let unread = warm_sequence_allocations(|layer| layer.current_decision(false));
    assert_eq!(
        unread, bare_count,
        "the layer allocated on its own for a known key: {unread} allocations against {bare_count}"
    );
    // A key with a quota of its own (an override) allocates nothing more
    // (its numbers below 10,000, so that no `Remaining` is built either).
    let overridden = warm_sequence_allocations(|layer| {
        let quota = Quota::new(Window::per_minute(5_000));
        layer
            .overrides()
            .set_quota("per_key", "key_b", quota)
            .unwrap();
        layer
    });
    assert_eq!(
        overridden, bare_count,
        "the layer allocated for a key's own quota: {overridden} allocations against {bare_count}"
    );
}

#[test]
fn decision_extensions_cost_six_allocations_per_request() {
    // `http::Extensions` allocates on the first insert a boxed map and the
    // map's table, and it boxes every value. The decision goes into the
    // request's extensions and into the response's (2 × 3 allocations); the
    // response future keeps the decision itself until the response exists.
    // Those 6 are the whole price of `decision_extensions(true)` (off by
    // default), all of them inside `http::Extensions` (a request or a
    // response whose extensions already hold something costs only the
    // value's box).
    let bare_count = count_allocations(
        &mut bare(),
        requests("key_b", "/v1/calls/c_b/control")
            .into_iter()
            .skip(KNOWN)
            .collect(),
        None,
    );
    let layered = warm_sequence_allocations(|layer| layer.decision_extensions(true));
    let measured = (SEQUENCE - KNOWN) as u64;
    assert_eq!(
        layered - bare_count,
        6 * measured,
        "{layered} allocations against {bare_count} for {measured} requests"
    );
}

/// A change to a layer's settings.
type Settings = fn(RateLimitLayer) -> RateLimitLayer;

#[test]
fn a_large_remaining_that_changes_on_every_request_costs_one_allocation() {
    // 100,000 an hour in a fixed window: `X-RateLimit-Limit` and `-Reset`
    // stay the same (both cached after the first request), and
    // `X-RateLimit-Remaining` (99,999, 99,998 …: too large for the static
    // table) is a new number on every request. Each costs one allocation,
    // the header value's buffer (shared with the per-thread cache without
    // another); nothing else of the layer's allocates.
    // With the crate's defaults (the decision built) and with it not built;
    // each on its own limit, so that no value is cached by the other.
    let settings: [(u32, Settings); 2] = [
        (100_000, |layer| layer),
        (200_000, |layer| layer.current_decision(false)),
    ];
    for (limit, set) in settings {
        let policy = Policy::builder()
            .limit(
                Limit::new("per_key", Header::parse("X-API-Key").unwrap()).route(
                    "GET *",
                    Quota::new(Window::per_hour(limit))
                        .algorithm(tower_ratelimit::Algorithm::FixedWindow),
                ),
            )
            .build()
            .unwrap();
        let layer =
            set(RateLimitLayer::new(policy).clock(ManualClock::at_unix_secs(1_700_000_000)));
        let mut service = layer.layer(bare());
        let reads = |n| {
            (0..n)
                .map(|_| request("key_large", Method::GET, "/v1/calls/c_42"))
                .collect::<Vec<_>>()
        };
        // The key becomes known, and the limit and reset are cached.
        count_allocations(&mut service, reads(KNOWN), LAYERED);
        let measured = 200;
        let bare_count = count_allocations(&mut bare(), reads(measured), None);
        let layered = count_allocations(&mut service, reads(measured), LAYERED);
        // One each, give or take a rare one of the allocator's own
        // bookkeeping (one in a few hundred requests here).
        let own = layered - bare_count;
        let measured = measured as u64;
        assert!(
            (measured..=measured + measured / 100).contains(&own),
            "limit {limit}: {layered} allocations against {bare_count} for {measured} requests"
        );
    }
}
