//! What the layer decided about a request: admitted or refused and why, and
//! every window it was counted in, as handlers and outer layers read it.

use smallvec::SmallVec;

use crate::clock::NANOS;

mod kept;

pub(crate) use kept::{reset_at, Admission, CountedWindow, Kept};

/// Why a request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum RefusalReason {
    /// A window of an applying limit had no room.
    Window,
    /// The store is at its memory cap and counts the key approximately (it
    /// had no room for it), and that estimate refused the request: possibly
    /// early, never late (see [`MemoryStore`](crate::store::MemoryStore)).
    Capacity,
    /// The key is temporarily banned after repeated refusals (see
    /// [`Limit::penalty`](crate::Limit::penalty)).
    Banned,
    /// The key had no free in-flight slot (see
    /// [`Quota::in_flight`](crate::Quota::in_flight)): refused at once, or
    /// after its queue was full or its wait ran out.
    Busy,
    /// The store could not decide (Redis unreachable, too slow, or its
    /// circuit breaker open) and a limit that fails closed refused the
    /// request ([`Basis::FailedClosed`]).
    Unavailable,
}

/// What decided a request: the store's count, or what stood in for it.
///
/// ```
/// use tower_ratelimit::Basis;
///
/// assert_ne!(Basis::Counted, Basis::DenyCache);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Basis {
    /// The store counted the request against its windows (and penalties,
    /// and in-flight caps): the usual case.
    #[default]
    Counted,
    /// The Redis store refused it from its memory of an earlier refusal of
    /// the same bucket, without calling Redis (see the deny cache in the
    /// `store::redis` module's docs, feature `redis`).
    DenyCache,
    /// The store could not decide, and the limits' failure policies counted
    /// it in this process's memory instead (its windows, or an in-flight
    /// slot taken in this process's share of the cap).
    LocalFallback,
    /// The store could not decide, and the limits fail open: the request
    /// went through uncounted (or, with windows counted, an in-flight slot
    /// let through uncounted).
    FailedOpen,
    /// The store could not decide, and a limit that fails closed refused the
    /// request ([`RefusalReason::Unavailable`]).
    FailedClosed,
    /// No limit applied to the request (no route of any limit matched, its
    /// key is exempt, or a limit skipped its missing key): it went through
    /// uncounted, with no window.
    Uncounted,
}

/// One window the request was counted in (or checked against).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowReport {
    /// Index of the limit in the policy.
    pub limit_index: u16,
    /// Index of the route in that limit.
    pub route_index: u16,
    /// Index of the window in that route's quota.
    pub window_index: u8,
    /// The window's limit.
    pub limit: u32,
    /// What is left after this request, if admitted; 0 on a refusal, as
    /// `X-RateLimit-Remaining` says (the IETF `RateLimit` field reports each
    /// window's own; see [`HeaderStyle::Ietf`](crate::HeaderStyle::Ietf)).
    pub remaining: u32,
    /// When the window is full again (GCRA) or ends (fixed window), in Unix
    /// seconds, rounded up.
    pub reset: u64,
    /// Seconds until `reset`, rounded up.
    pub reset_after: u64,
    /// The window's period in seconds, rounded up (0 for an in-flight cap).
    pub period: u64,
    /// Whether this is an in-flight cap rather than a window: `limit`
    /// requests at once, `remaining` slots free.
    pub concurrent: bool,
}

/// The layer's decision about a request.
///
/// Handlers read it with [`Decision::current`] (and axum handlers, with the
/// `axum` feature, also as an extractor); with
/// [`RateLimitLayer::decision_extensions`](crate::RateLimitLayer::decision_extensions)
/// it is also put into the request's and the response's extensions (for
/// outer layers).
#[derive(Debug, PartialEq, Eq)]
pub struct Decision {
    pub(crate) refusal: Option<RefusalReason>,
    pub(crate) basis: Basis,
    pub(crate) shadow_refused: bool,
    pub(crate) retry_after: u64,
    /// Index in `windows` (a policy has at most 256 checks of 8 windows).
    pub(crate) reported: u16,
    pub(crate) windows: SmallVec<[WindowReport; 4]>,
}

impl Clone for Decision {
    /// As derived, but the windows (plain data) are copied as one slice
    /// rather than pushed one by one: the request's and the response's
    /// extensions each get a decision.
    fn clone(&self) -> Self {
        Decision {
            refusal: self.refusal,
            basis: self.basis,
            shadow_refused: self.shadow_refused,
            retry_after: self.retry_after,
            reported: self.reported,
            windows: SmallVec::from_slice(&self.windows),
        }
    }
}

scoped_tls::scoped_thread_local!(static CURRENT: Kept);

impl Decision {
    /// The decision about the request whose inner service is running on this
    /// thread now: set while the layer calls the inner service and while it
    /// polls the inner service's future, as a tracing span is entered while
    /// its future is polled. So a handler reads it anywhere in its own code
    /// (before or after an `.await`), but not in a task it spawns, nor behind
    /// a layer that hands requests to another task (`tower::buffer`): read
    /// it first and pass it on. Under stacked rate-limit layers it is the
    /// innermost layer's. `None` outside, or when the layer does not build
    /// the decision (both
    /// [`current_decision`](crate::RateLimitLayer::current_decision) and
    /// [`decision_extensions`](crate::RateLimitLayer::decision_extensions)
    /// off).
    ///
    /// ```
    /// use std::convert::Infallible;
    /// use http::{Request, Response};
    /// use tower::{service_fn, Layer, ServiceExt};
    /// use tower_ratelimit::{key::Header, Decision, Limit, Policy, Quota, RateLimitLayer, Window};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let policy = Policy::builder()
    ///     .limit(Limit::new("per_key", Header::parse("X-API-Key").unwrap())
    ///         .quota(Quota::new(Window::per_minute(60))))
    ///     .build()
    ///     .unwrap();
    /// let handler = service_fn(|_: Request<()>| async {
    ///     let decision = Decision::current().expect("under the layer");
    ///     let left = decision.reported().map_or(0, |w| w.remaining);
    ///     Ok::<_, Infallible>(Response::builder().header("x-left", left).body(()).unwrap())
    /// });
    /// let service = RateLimitLayer::new(policy).layer(handler);
    /// let request = Request::get("/").header("x-api-key", "k_1").body(()).unwrap();
    /// let response = service.oneshot(request).await.unwrap();
    /// assert_eq!(response.headers()["x-left"], "59");
    /// assert!(Decision::current().is_none());
    /// # }
    /// ```
    pub fn current() -> Option<Decision> {
        CURRENT.is_set().then(|| CURRENT.with(Kept::decision))
    }

    /// Runs `f` with `decision` as [`Decision::current`] (when there is one).
    #[inline]
    pub(crate) fn in_scope<R>(decision: Option<&Kept>, f: impl FnOnce() -> R) -> R {
        match decision {
            Some(decision) => CURRENT.set(decision, f),
            None => f(),
        }
    }

    /// A refusal because a key is banned for `ban_left` more nanoseconds;
    /// `reported` is the banning limit's window, reported as empty until the
    /// ban ends.
    pub(crate) fn banned(ban_left: u64, now: u64, reported: WindowReport) -> Self {
        Self::refused_by(RefusalReason::Banned, ban_left, now, reported)
    }

    /// A refusal because a key had no free in-flight slot; `reported` is the
    /// cap that refused it.
    pub(crate) fn busy(retry_after: u64, now: u64, reported: WindowReport) -> Self {
        let wait = retry_after.saturating_mul(NANOS);
        Self::refused_by(RefusalReason::Busy, wait, now, reported)
    }

    /// A refusal because a shared in-flight count could not be asked and
    /// the limit fails closed ([`Basis::FailedClosed`]); `reported` is the
    /// cap that could not be checked.
    pub(crate) fn unavailable(retry_after: u64, now: u64, reported: WindowReport) -> Self {
        let wait = retry_after.saturating_mul(NANOS);
        let mut decision = Self::refused_by(RefusalReason::Unavailable, wait, now, reported);
        decision.basis = Basis::FailedClosed;
        decision
    }

    /// A refusal for `reason` that is not a window's: `reported` is shown
    /// empty until `wait` nanoseconds from `now` (its reset the second that
    /// moment falls in, its `Retry-After` the whole seconds to it, at least
    /// one).
    fn refused_by(reason: RefusalReason, wait: u64, now: u64, mut reported: WindowReport) -> Self {
        let retry_after = wait.div_ceil(NANOS).max(1);
        reported.remaining = 0;
        reported.reset = now.saturating_add(wait.max(1)).div_ceil(NANOS);
        reported.reset_after = retry_after;
        let mut windows = SmallVec::new();
        windows.push(reported);
        Decision {
            refusal: Some(reason),
            basis: Basis::Counted,
            shadow_refused: false,
            retry_after,
            reported: 0,
            windows,
        }
    }

    /// Adds the in-flight caps a request holds slots of (after its windows).
    /// When no window was counted, the reported one is the cap with the
    /// fewest free slots (the first of those).
    pub(crate) fn add_caps(&mut self, caps: impl IntoIterator<Item = WindowReport>) {
        let counted = self.windows.len();
        self.windows.extend(caps);
        if counted == 0 {
            let fewest = (0..self.windows.len()).min_by_key(|&i| self.windows[i].remaining);
            self.reported = fewest.unwrap_or(0) as u16;
        }
    }

    /// A decision with no window, for a request only capped in flight.
    pub(crate) fn admitted() -> Self {
        Self::admitted_on(Basis::Counted)
    }

    /// An admitted request, with no window, on `basis` (a request no limit
    /// applied to, or that a failed store let through).
    pub(crate) fn admitted_on(basis: Basis) -> Self {
        Decision {
            refusal: None,
            basis,
            shadow_refused: false,
            retry_after: 0,
            reported: 0,
            windows: SmallVec::new(),
        }
    }

    /// Marks that a shadow limit would have refused the request.
    pub(crate) fn add_shadow_refusal(&mut self, refused: bool) {
        self.shadow_refused |= refused;
    }

    /// Whether the request was admitted.
    #[inline]
    pub fn is_admitted(&self) -> bool {
        self.refusal.is_none()
    }

    /// Whether a limit in shadow mode would have refused the request.
    #[inline]
    pub fn shadow_refused(&self) -> bool {
        self.shadow_refused
    }

    /// Why the request was refused, if it was.
    #[inline]
    pub fn refusal(&self) -> Option<RefusalReason> {
        self.refusal
    }

    /// Whether an in-flight cap refused the request: no free slot, or a
    /// shared count that could not be asked (answered as busy, with the
    /// busy status and body, whatever the reason says).
    pub(crate) fn refused_by_cap(&self) -> bool {
        match self.refusal {
            Some(RefusalReason::Busy) => true,
            Some(RefusalReason::Unavailable) => self.reported().is_some_and(|w| w.concurrent),
            _ => false,
        }
    }

    /// What decided the request: the store's count, its deny cache, or a
    /// failure policy while the store could not decide.
    #[inline]
    pub fn basis(&self) -> Basis {
        self.basis
    }

    /// Whole seconds (at least 1, rounded up) after which the refused request
    /// would be admitted, absent other traffic; `None` if admitted.
    #[inline]
    pub fn retry_after(&self) -> Option<u64> {
        self.refusal.map(|_| self.retry_after)
    }

    /// The reported window: the one the `X-RateLimit-*` headers describe
    /// (see [`PolicyBuilder::report_period`](crate::PolicyBuilder::report_period)).
    #[inline]
    pub fn reported(&self) -> Option<&WindowReport> {
        self.windows.get(usize::from(self.reported))
    }

    /// Every window the request was counted in.
    #[inline]
    pub fn windows(&self) -> &[WindowReport] {
        &self.windows
    }
}

/// With the `axum` feature, handlers take the decision as an extractor:
/// [`Decision::current`], else the request's extensions (for a handler
/// that runs apart from the layer's task, behind `tower::buffer` say, under
/// a layer with
/// [`decision_extensions`](crate::RateLimitLayer::decision_extensions)).
/// Under stacked layers it is the innermost decision either way: a layer
/// that keeps a decision makes it current. Every request a layer lets through has one (one no limit applied to is
/// [`Basis::Uncounted`]), unless the layer keeps none
/// ([`RateLimitLayer::current_decision`](crate::RateLimitLayer::current_decision)
/// off, without extensions). A handler not behind a rate-limit layer gets a
/// 500, as for a missing `Extension`; one that may be takes
/// `Option<Decision>`.
#[cfg(feature = "axum")]
impl<S: Send + Sync> axum::extract::FromRequestParts<S> for Decision {
    type Rejection = (http::StatusCode, &'static str);

    async fn from_request_parts(
        parts: &mut http::request::Parts,
        _state: &S,
    ) -> Result<Self, Self::Rejection> {
        Decision::of_parts(parts).ok_or((
            http::StatusCode::INTERNAL_SERVER_ERROR,
            "no rate-limit decision: the handler is not behind a RateLimitLayer",
        ))
    }
}

/// `Option<Decision>` as an axum extractor: `None` for a handler that no
/// rate-limit layer is in front of.
#[cfg(feature = "axum")]
impl<S: Send + Sync> axum::extract::OptionalFromRequestParts<S> for Decision {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut http::request::Parts,
        _state: &S,
    ) -> Result<Option<Self>, Self::Rejection> {
        Ok(Decision::of_parts(parts))
    }
}

#[cfg(feature = "axum")]
impl Decision {
    /// The decision about the request of `parts`: current (the innermost
    /// layer's), or in its extensions.
    fn of_parts(parts: &http::request::Parts) -> Option<Decision> {
        Decision::current().or_else(|| parts.extensions.get::<Decision>().cloned())
    }
}
