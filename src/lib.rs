//! Exact, keyed, multi-window API rate limiting for [Tower] services: axum,
//! tonic, hyper.
//!
//! A [`RateLimitLayer`] wraps any `Service<http::Request<B>>`. For each
//! request it
//!
//! 1. **matches** the request's method and path against each limit's routes
//!    (`POST /v1/calls/{call_id}/control`, `GET *`);
//! 2. reads each applying limit's **key** (an API key header, a bearer token,
//!    an account an auth layer put in the request's extensions, a path
//!    capture, the client IP …) and hashes it under a secret;
//! 3. **decides** in one atomic step over every (key, window) pair: all admit,
//!    or the request is refused and *nothing* is counted anywhere;
//! 4. **responds**: an admitted request goes to the inner service and its
//!    response gets `X-RateLimit-Limit`, `-Remaining` and `-Reset`; a refused
//!    one gets a 429 with an honest `Retry-After` and a JSON body, and the
//!    inner service is never called.
//!
//! # Example
//!
//! ```
//! use std::convert::Infallible;
//! use http::{Request, Response, StatusCode};
//! use tower::{service_fn, ServiceBuilder, ServiceExt};
//! use tower_ratelimit::{key::Header, Limit, Policy, Quota, RateLimitLayer, Window};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let policy = Policy::builder()
//!     .limit(
//!         Limit::new("per_key", Header::parse("X-API-Key").unwrap())
//!             .route("POST /v1/keys", Quota::new(Window::per_hour(10)))
//!             .quota(Quota::new(Window::per_minute(60)).and(Window::per_hour(1000))),
//!     )
//!     .build()
//!     .unwrap();
//!
//! let service = ServiceBuilder::new()
//!     .layer(RateLimitLayer::new(policy))
//!     .service(service_fn(|_req: Request<String>| async {
//!         Ok::<_, Infallible>(Response::new(String::from("hello")))
//!     }));
//!
//! let request = Request::get("/v1/calls").header("x-api-key", "k_123").body(String::new()).unwrap();
//! let response = service.clone().oneshot(request).await.unwrap();
//! assert_eq!(response.status(), StatusCode::OK);
//! assert_eq!(response.headers()["x-ratelimit-limit"], "60");
//! assert_eq!(response.headers()["x-ratelimit-remaining"], "59");
//!
//! let anonymous = Request::get("/v1/calls").body(String::new()).unwrap();
//! let response = service.oneshot(anonymous).await.unwrap();
//! assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
//! # }
//! ```
//!
//! # The words
//!
//! | word | meaning |
//! |---|---|
//! | [`Policy`] | a list of limits, plus header style, reported window and refusal format; built in code or loaded from TOML |
//! | [`Limit`] | one named, independently counted limit: a key, a route table and quotas. Every limit whose routes match applies (stacking); within a limit the first matching route wins (partition) |
//! | [`Quota`] | windows that must all admit (`60/minute` *and* `1000/hour`), a cost per request and an [`Algorithm`] |
//! | [`key::KeyExtractor`] | reads who a request counts against |
//! | [`store::Store`] | where counts live: [`store::MemoryStore`] by default |
//! | [`Decision`] | admitted or refused, with every window's state; [`Decision::current`] in handlers |
//! | [`ReloadHandle`] | replaces a running layer's policy atomically, keeping counts (see [`reload`]) |
//!
//! # Promises
//!
//! * **Exact counting.** No window admits more than its algorithm's bound
//!   ([`Algorithm`] states both), under any concurrency. A refused request
//!   consumes nothing, in any window of any limit.
//! * **Honest hints.** `Retry-After` is whole seconds, rounded up, at least 1,
//!   and a request sent that much later is admitted (absent other traffic);
//!   `X-RateLimit-Reset` on a refusal is never earlier. `Remaining` is 0 on a
//!   refusal.
//! * **No surprises for the inner service.** Its errors pass through
//!   unchanged; a store failure never becomes one.
//! * **Bounded memory, fair under floods.** Idle keys are dropped once they
//!   equal a fresh key; the memory store has a cap (`[memory] max_entries`),
//!   and at the cap a flood of made-up keys locks no one out: tracked keys
//!   keep their exact counts, and keys without room are counted in a
//!   fixed-size, conservative sketch that may refuse them early but never
//!   admits them late (see [`store::MemoryStore`]).
//! * **Secrets stay secret.** Keys are kept only as keyed hashes and are
//!   never logged.
//! * **Bad input gets a clear answer.** A missing, empty, oversized, non-UTF-8
//!   or duplicated key is a 401 JSON error; a bad policy is a [`ConfigError`]
//!   that names the field (and, for files, the line).
//! * **Monotonic time.** Decisions use a monotonic clock ([`clock::Clock`],
//!   injectable); wall-clock time is read once, to anchor it.
//!
//! # Why its own engine, and where governor fits
//!
//! [governor] is an excellent single-quota GCRA limiter, and this crate's
//! default algorithm is the same GCRA. But a policy here needs what
//! governor's state store does not offer: one atomic decision over several
//! windows *and* several limits in which a refusal charges nothing (governor
//! charges each limiter on its own, and has no refund), fixed windows,
//! per-route quotas on one key, `Remaining`/`Reset` for headers, a memory cap
//! that never forgets a live key, and arithmetic that a shared store (Redis)
//! can reproduce exactly. So the counting engine is this crate's own, in
//! integer nanoseconds, one `u64` per key and window. governor's `Quota`
//! converts into a [`Window`] (feature `governor`), and the benchmarks run
//! governor and tower_governor side by side with this crate.
//!
//! # Differences from `tower::limit::RateLimit` and tower_governor
//!
//! `tower::limit::RateLimit` is one global counter that makes callers wait in
//! `poll_ready`: no keys, no 429, no headers. tower_governor is one GCRA
//! quota per layer keyed by IP or a custom extractor: no path patterns, no
//! stacked or multi-window limits, no reset header, a `Retry-After` that
//! truncates to 0, no shared store.
//!
//! # Ordering with other layers
//!
//! Put the rate limiter *after* (inside) an authentication layer whose
//! result it keys on, so the account is in the request's extensions when the
//! limiter reads it: `ServiceBuilder::new().layer(auth).layer(rate_limit)`.
//!
//! # How the crate is built
//!
//! The modules stand in floors, top to bottom, and each imports only from
//! the floors below it: nothing imports back up, and no two modules import
//! each other (`tests/module_floors.rs` holds the code to this table).
//!
//! ```text
//! admin                               the operators' HTTP API (feature admin)
//! layer                               RateLimitLayer: a policy, a store and a clock
//! reload, client                      hot reload; the outbound half (feature client)
//! service                             RateLimit::call = plan (routes, keys) -> decide (slots, store) -> respond
//! report, file                        a store's outcome as the Decision and headers; policy files (feature toml)
//! store                               Store and its protocol; MemoryStore; RedisStore (feature redis)
//! policy                              Policy, Limit, Quota, Window, plans, overrides, exemptions
//! response, event, future             refusal bodies and their presets, key errors; events; the response future
//! key, body, headers                  extractors, Key, KeySecret (the keyed hash); the response body; headers
//! route, decision, inflight, penalty  path patterns; the Decision; the in-flight and penalty engines
//! error, clock, reporting, shard,     errors, the clock, reporting settings, shards,
//! header_value                        numbers as header values
//! ```
//!
//! The engines (the in-flight limiter, the penalty box, route matching) are
//! the crate's own; the store's decision protocol is in `store::protocol`,
//! public for custom stores but unstable.
//!
//! # Cargo features
//!
//! | feature | adds |
//! |---|---|
#![cfg_attr(
    feature = "toml",
    doc = "| `toml` (default) | [`Policy::from_toml`] and the other policy-file loaders, [`CustomKeys`] |"
)]
#![cfg_attr(
    not(feature = "toml"),
    doc = "| `toml` (default) | `Policy::from_toml` and the other policy-file loaders, `CustomKeys` |"
)]
//! | `axum` | [`Decision`] as an axum extractor; [`key::PeerIp`] also reads axum's `ConnectInfo<SocketAddr>` |
//! | `admin` | `admin::router`: an axum `Router` to look at, reset and override keys' limits (implies `axum`) |
//! | `governor` | `From<governor::Quota>` for [`Window`] |
//! | `redis` | `store::RedisStore`: counts shared by many processes |
//! | `redis-tls` | `rediss://` URLs for the Redis store |
//! | `client` | `client`: a retry policy that honours `Retry-After` and the rate-limit headers, a pacing layer that waits for its turn, a sender pool, campaign waves |
//! | `metrics` | counters, gauges and a histogram through the `metrics` facade: decisions per limit and outcome, near-limit admissions, the stores' errors, fallbacks, breaker, tracked keys and round trips |
//!
//! With `metrics`, the layer registers its metrics' handles with the
//! recorder installed when it is built (the stores, when they are built):
//! install the recorder first. The README's "Metrics" section lists them.
//!
//! [Tower]: https://docs.rs/tower
//! [governor]: https://docs.rs/governor
#![cfg_attr(docsrs, feature(doc_cfg))]

#[cfg(feature = "admin")]
#[cfg_attr(docsrs, doc(cfg(feature = "admin")))]
pub mod admin;
mod body;
#[cfg(feature = "client")]
#[cfg_attr(docsrs, doc(cfg(feature = "client")))]
pub mod client;
pub mod clock;
mod decision;
mod error;
mod event;
#[cfg(feature = "toml")]
mod file;
mod future;
mod header_value;
mod headers;
mod inflight;
pub mod key;
mod layer;
pub mod penalty;
pub mod policy;
pub mod reload;
mod report;
mod reporting;
mod response;
mod route;
mod service;
mod shard;
pub mod store;

pub use body::ResponseBody;
pub use decision::{Basis, Decision, RefusalReason, WindowReport};
pub use error::{ConfigError, ConfigErrorKind};
pub use event::{Event, EventKind};
pub use future::ResponseFuture;
#[cfg(feature = "toml")]
pub use key::CustomKeys;
pub use layer::RateLimitLayer;
pub use policy::{Algorithm, Limit, Overrides, Policy, PolicyBuilder, Quota, Tiers, Window};
pub use reload::{Changes, ReloadHandle};
pub use reporting::HeaderStyle;
pub use response::{CustomBody, Refusal, RefusalFormat};
pub use service::RateLimit;

#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
