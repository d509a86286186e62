//! Observability: what the layer tells the application about refusals.

use std::fmt;
use std::sync::Arc;

use crate::decision::Decision;
use crate::key::KeyError;

/// What happened to a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum EventKind {
    /// A limit refused the request.
    Refused,
    /// A limit in shadow mode would have refused the request; it went through.
    ShadowRefused,
    /// The request had no usable key for a limit and was answered with a 401.
    KeyRejected,
    /// A refusal started a temporary ban of the key (the refusal itself is
    /// reported as `Refused` too).
    Banned,
}

/// One refusal, shadow refusal, key rejection or ban started, for the hook
/// set with [`RateLimitLayer::on_event`](crate::RateLimitLayer::on_event). It names
/// the limit and carries the keyed hash of the request's bucket, never the
/// key itself.
///
/// ```
/// use tower_ratelimit::{key::Header, EventKind, Limit, Policy, Quota, RateLimitLayer, Window};
/// use std::sync::atomic::{AtomicU64, Ordering};
/// use std::sync::Arc;
///
/// let refusals = Arc::new(AtomicU64::new(0));
/// let counter = Arc::clone(&refusals);
/// let policy = Policy::builder()
///     .limit(Limit::new("per_key", Header::parse("X-API-Key").unwrap()).quota(Quota::new(Window::per_minute(60))))
///     .build()
///     .unwrap();
/// let layer = RateLimitLayer::new(policy).on_event(move |event| {
///     if event.kind() == EventKind::Refused {
///         counter.fetch_add(1, Ordering::Relaxed);
///     }
/// });
/// # let _ = layer;
/// ```
#[derive(Debug, Clone, Copy)]
pub struct Event<'a> {
    pub(crate) kind: EventKind,
    pub(crate) limit: &'a str,
    pub(crate) bucket: Option<u64>,
    pub(crate) decision: Option<&'a Decision>,
    pub(crate) key_error: Option<&'a KeyError>,
}

impl<'a> Event<'a> {
    /// What happened.
    pub fn kind(&self) -> EventKind {
        self.kind
    }

    /// The name of the limit that refused (or would have).
    pub fn limit(&self) -> &'a str {
        self.limit
    }

    /// The keyed hash of the request's bucket in that limit (stable for one
    /// key while the policy's secret is), when the request had a key.
    pub fn bucket(&self) -> Option<u64> {
        self.bucket
    }

    /// The decision, for refusals and shadow refusals.
    pub fn decision(&self) -> Option<&'a Decision> {
        self.decision
    }

    /// What was wrong with the key, for key rejections.
    pub fn key_error(&self) -> Option<&'a KeyError> {
        self.key_error
    }
}

/// A hook called for every event.
#[derive(Clone)]
pub(crate) struct Hook(pub(crate) Arc<dyn Fn(&Event<'_>) + Send + Sync>);

impl fmt::Debug for Hook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Hook(..)")
    }
}
