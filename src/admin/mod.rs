//! The admin API (feature `admin`): an axum [`Router`] through which an
//! operator looks at where a key stands, resets it, and gives it its own
//! quota or plan, on the layer's store and under its current policy
//! (reloads included).
//!
//! | request | does |
//! |---|---|
//! | `GET /limits/{limit}/keys/{key}` | where the key stands, consuming nothing: each route's windows (limit, remaining, reset in Unix seconds), its requests in flight, its ban's time left |
//! | `DELETE /limits/{limit}/keys/{key}` | forgets its counts and its ban: its next request is a fresh key's (409 if the memory store, at its entry cap, counts the key in its overflow sketch: that count is shared with other keys and stays until its window has passed) |
//! | `PUT /limits/{limit}/keys/{key}/override` | `{"windows": ["120/minute", "5000/hour"]}` or `{"plan": "scale"}`: its own quota or plan, from its next request on |
//! | `DELETE /limits/{limit}/keys/{key}/override` | takes its override back |
//!
//! The key travels percent-encoded in the path (`tp%2Fkey` for `tp/key`),
//! is hashed like any request's key, and is never logged. It is read as the
//! limit's key extractor reads a request's key
//! ([`KeyExtractor::key_from_text`](crate::key::KeyExtractor::key_from_text)):
//! for a limit keyed by the client's IP
//! ([`PeerIp`](crate::key::PeerIp), [`ForwardedIp`](crate::key::ForwardedIp)),
//! an address (`10.1.2.3`, `2001:db8::1`, `::ffff:10.1.2.3`), which names
//! the bucket of its IPv4 address or IPv6 group; for a global limit, `global`;
//! for a header, the value as a header line would carry it (the token, for
//! a bearer token); for a [`FirstOf`](crate::key::FirstOf), as the first of
//! its sources that can read it. A key that no request could carry (empty
//! once trimmed, not an address, too long …) is a 400. Its quota is its
//! override's or each route's
//! default: the plan a request would carry is not known here. Answers are
//! JSON; errors are `{"error": "...", "field": "..."}` with 404 for an
//! unknown limit or route, 405 for a method a route does not take, 400 or
//! 422 for a bad key, body, rate or plan, 413 for a body over 64 KiB, 501 for a
//! store that cannot peek or forget (both stores this crate ships can), and
//! 503 for a store that failed to (Redis did not answer in time). The
//! router does no authentication: mount it behind your own, apart from the
//! public API.
//!
//! ```
//! use tower_ratelimit::{admin, key::Header, Limit, Policy, Quota, RateLimitLayer, Window};
//!
//! let policy = Policy::builder()
//!     .limit(Limit::new("per_key", Header::parse("X-API-Key").unwrap())
//!         .quota(Quota::new(Window::per_minute(60))))
//!     .build()
//!     .unwrap();
//! let layer = RateLimitLayer::new(policy);
//! let operators: axum::Router = admin::router(&layer);
//! // Serve `operators` on an internal listener, behind authentication.
//! # let _ = operators;
//! ```

mod reply;
mod routes;

use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use axum::routing::{get, put};
use axum::Router;

use crate::layer::RateLimitLayer;
use crate::policy::Overrides;
use crate::service::Current;
use crate::store::Store;

/// The admin API of `layer`: its store, and its policy as it stands at
/// each request (see the [module documentation](self) for the routes).
pub fn router<St: Store>(layer: &RateLimitLayer<St>) -> Router {
    let admin = Admin {
        current: Arc::clone(layer.current()),
        overrides: layer.overrides(),
    };
    // Nested, so that its JSON 404 answers only under `/limits` and the
    // router merges into an application that has a fallback of its own.
    let limits = Router::new()
        .route(
            "/{limit}/keys/{key}",
            get(routes::peek::<St>).delete(routes::forget::<St>),
        )
        .route(
            "/{limit}/keys/{key}/override",
            put(routes::set_override::<St>).delete(routes::remove_override::<St>),
        )
        .fallback(routes::unknown)
        .method_not_allowed_fallback(routes::method_not_allowed)
        .layer(DefaultBodyLimit::max(routes::MAX_BODY));
    Router::new().nest("/limits", limits).with_state(admin)
}

/// What the routes share: the layer's current state and its overrides.
struct Admin<St> {
    current: Arc<Current<St>>,
    overrides: Overrides,
}

impl<St> Clone for Admin<St> {
    fn clone(&self) -> Self {
        Admin {
            current: Arc::clone(&self.current),
            overrides: self.overrides.clone(),
        }
    }
}
