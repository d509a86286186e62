//! Rate-limit headers: `X-RateLimit-*`, the IETF drafts' `RateLimit` and
//! `RateLimit-Policy` (draft-10's lists of windows, or draft-7's single
//! window), and `Retry-After`.

use std::fmt::Write as _;

use http::header::{HeaderName, RETRY_AFTER};
use http::{HeaderMap, HeaderValue};

use crate::decision::{Decision, WindowReport};
use crate::header_value::{number, quota_policy, trio, Composed};
use crate::reporting::HeaderStyle;

/// `X-RateLimit-Limit`.
pub(crate) const X_RATELIMIT_LIMIT: HeaderName = HeaderName::from_static("x-ratelimit-limit");
/// `X-RateLimit-Remaining`.
pub(crate) const X_RATELIMIT_REMAINING: HeaderName =
    HeaderName::from_static("x-ratelimit-remaining");
/// `X-RateLimit-Reset`.
pub(crate) const X_RATELIMIT_RESET: HeaderName = HeaderName::from_static("x-ratelimit-reset");
/// `RateLimit` (IETF drafts).
pub(crate) const RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");
/// `RateLimit-Policy` (IETF drafts).
pub(crate) const RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");

/// The values the single-window headers (`X-RateLimit-*`) report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Reported {
    pub(crate) limit: u32,
    pub(crate) remaining: u32,
    pub(crate) reset: u64,
}

impl From<&WindowReport> for Reported {
    fn from(w: &WindowReport) -> Self {
        Reported {
            limit: w.limit,
            remaining: w.remaining,
            reset: w.reset,
        }
    }
}

/// What a `RateLimit` item says of one window: `r`, and `t` unless no more
/// quota is to come (see [`HeaderStyle::Ietf`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Standing {
    remaining: u32,
    more_after: Option<u64>,
}

impl Standing {
    /// `remaining` left, and more in `more_after` seconds (`None`: no more
    /// is to come).
    pub(crate) fn new(remaining: u32, more_after: Option<u64>) -> Self {
        Standing {
            remaining,
            more_after,
        }
    }

    /// A window or cap the store gave no status of (a ban's window, an
    /// in-flight cap): as reported.
    pub(crate) fn of_report(w: &WindowReport) -> Self {
        Standing {
            remaining: w.remaining,
            more_after: (!w.concurrent).then_some(w.reset_after),
        }
    }
}

/// The headers to put on a response, prepared while the request is decided
/// and written when the response exists.
#[derive(Debug, Clone, Default)]
pub(crate) struct PendingHeaders {
    x: Option<Reported>,
    /// Boxed: rarely used, and it would double the size of every response
    /// future (which is moved a few times per request).
    ietf: Option<Box<IetfFields>>,
    retry_after: Option<u64>,
}

/// The `RateLimit-Policy` and `RateLimit` values of either draft.
#[derive(Debug, Clone)]
struct IetfFields {
    /// `None`: the field is not sent (draft-7's in-flight cap has no window).
    policy: Option<HeaderValue>,
    state: HeaderValue,
}

impl PendingHeaders {
    /// The headers for `decision` in `style`; for draft-10's fields,
    /// `name(i, w)` names window `i` and `standing(i, w)` says what it has.
    pub(crate) fn for_decision(
        style: HeaderStyle,
        decision: &Decision,
        name: impl Fn(usize, &WindowReport) -> String,
        standing: impl Fn(usize, &WindowReport) -> Standing,
    ) -> Self {
        let x = matches!(style, HeaderStyle::XRateLimit | HeaderStyle::Both)
            .then(|| decision.reported().map(Reported::from))
            .flatten();
        let ietf = match style {
            HeaderStyle::Ietf | HeaderStyle::Both => {
                ietf_fields(decision.windows(), name, standing)
            }
            HeaderStyle::Draft7 => draft7_fields(decision),
            HeaderStyle::XRateLimit | HeaderStyle::None => None,
        };
        PendingHeaders {
            x,
            ietf,
            retry_after: decision.retry_after(),
        }
    }

    /// The headers for `decision` in a `style` without IETF fields: the
    /// trio of its reported window and `Retry-After`.
    #[inline]
    pub(crate) fn without_ietf(style: HeaderStyle, decision: &Decision) -> Self {
        debug_assert!(!style.has_ietf());
        PendingHeaders {
            x: matches!(style, HeaderStyle::XRateLimit)
                .then(|| decision.reported().map(Reported::from))
                .flatten(),
            ietf: None,
            retry_after: decision.retry_after(),
        }
    }

    /// Only the `X-RateLimit-*` trio, for an admitted request whose decision
    /// is not built.
    pub(crate) fn x_only(style: HeaderStyle, reported: Reported) -> Self {
        PendingHeaders {
            x: matches!(style, HeaderStyle::XRateLimit | HeaderStyle::Both).then_some(reported),
            ..Self::default()
        }
    }

    /// Writes the headers, replacing any the inner service set.
    pub(crate) fn write(self, headers: &mut HeaderMap) {
        if let Some(r) = self.x {
            let [limit, remaining, reset] =
                trio(u64::from(r.limit), u64::from(r.remaining), r.reset);
            headers.insert(X_RATELIMIT_LIMIT, limit);
            headers.insert(X_RATELIMIT_REMAINING, remaining);
            headers.insert(X_RATELIMIT_RESET, reset);
        }
        if let Some(fields) = self.ietf {
            let IetfFields { policy, state } = *fields;
            match policy {
                Some(policy) => headers.insert(RATELIMIT_POLICY, policy),
                // A cap has no window: drop any policy the inner service
                // set, which would not describe the `RateLimit` beside it.
                None => headers.remove(RATELIMIT_POLICY),
            };
            headers.insert(RATELIMIT, state);
        }
        if let Some(secs) = self.retry_after {
            headers.insert(RETRY_AFTER, number(secs));
        }
    }
}

/// Draft-10's fields: one item per window (see [`HeaderStyle::Ietf`]).
fn ietf_fields(
    windows: &[WindowReport],
    name: impl Fn(usize, &WindowReport) -> String,
    standing: impl Fn(usize, &WindowReport) -> Standing,
) -> Option<Box<IetfFields>> {
    if windows.is_empty() {
        return None;
    }
    let mut policy = String::new();
    let mut state = String::new();
    for (i, w) in windows.iter().enumerate() {
        let sep = if i == 0 { "" } else { ", " };
        let name = name(i, w);
        let now = standing(i, w);
        if w.concurrent {
            // An in-flight cap has no window and no reset.
            let _ = write!(
                policy,
                "{sep}\"{name}\";q={};qu=\"concurrent-requests\"",
                w.limit
            );
        } else {
            let _ = write!(policy, "{sep}\"{name}\";q={};w={}", w.limit, w.period);
        }
        let _ = write!(state, "{sep}\"{name}\";r={}", now.remaining);
        if let Some(t) = now.more_after {
            let _ = write!(state, ";t={t}");
        }
    }
    Some(Box::new(IetfFields {
        policy: Some(HeaderValue::try_from(policy).ok()?),
        state: HeaderValue::try_from(state).ok()?,
    }))
}

/// Draft-7's fields, for the reported window (see [`HeaderStyle::Draft7`]):
/// `RateLimit: limit=60, remaining=59, reset=1` and
/// `RateLimit-Policy: 60;w=60`.
fn draft7_fields(decision: &Decision) -> Option<Box<IetfFields>> {
    let w = decision.reported()?;
    // Seconds until the trio's `Reset`; on a refusal, never before the
    // retry (the decision already moved the reported window's reset there).
    let reset = w.reset_after.max(decision.retry_after().unwrap_or(0));
    let mut state = Composed::new();
    state
        .text("limit=")
        .number(u64::from(w.limit))
        .text(", remaining=")
        .number(u64::from(w.remaining))
        .text(", reset=")
        .number(reset);
    let policy = if w.concurrent {
        None
    } else {
        Some(quota_policy(w.limit, w.period)?)
    };
    Some(Box::new(IetfFields {
        policy,
        state: state.value()?,
    }))
}
