//! Rate-limit headers: `X-RateLimit-*`, the IETF draft's `RateLimit` and
//! `RateLimit-Policy`, and `Retry-After`.

use std::fmt::Write as _;

use http::header::{HeaderName, RETRY_AFTER};
use http::{HeaderMap, HeaderValue};

use crate::decision::{Decision, WindowReport};
use crate::header_value::number;

/// Which rate-limit headers responses carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum HeaderStyle {
    /// `X-RateLimit-Limit`, `X-RateLimit-Remaining` and `X-RateLimit-Reset`
    /// (Unix seconds) for the reported window. The default; built without
    /// allocating.
    #[default]
    XRateLimit,
    /// `RateLimit-Policy` and `RateLimit` of draft-ietf-httpapi-ratelimit-headers-10,
    /// one item per window the request was counted in:
    /// `RateLimit-Policy: "per_key.minute";q=60;w=60` and
    /// `RateLimit: "per_key.minute";r=59;t=1`; an in-flight cap is
    /// `"calls.concurrency";q=10;qu="concurrent-requests"` and
    /// `"calls.concurrency";r=9`.
    Ietf,
    /// Both of the above.
    Both,
    /// No rate-limit headers (`Retry-After` is still sent on refusals).
    None,
}

impl HeaderStyle {
    /// Whether the style includes the IETF fields.
    pub(crate) fn has_ietf(self) -> bool {
        matches!(self, HeaderStyle::Ietf | HeaderStyle::Both)
    }
}

/// `X-RateLimit-Limit`.
pub const X_RATELIMIT_LIMIT: HeaderName = HeaderName::from_static("x-ratelimit-limit");
/// `X-RateLimit-Remaining`.
pub const X_RATELIMIT_REMAINING: HeaderName = HeaderName::from_static("x-ratelimit-remaining");
/// `X-RateLimit-Reset`.
pub const X_RATELIMIT_RESET: HeaderName = HeaderName::from_static("x-ratelimit-reset");
/// `RateLimit` (IETF draft).
pub const RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");
/// `RateLimit-Policy` (IETF draft).
pub const RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");

/// The values the single-window headers report.
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

/// The headers to put on a response, prepared while the request is decided
/// and written when the response exists.
#[derive(Debug, Clone, Default)]
pub(crate) struct PendingHeaders {
    x: Option<Reported>,
    /// Boxed: rarely used, and it would double the size of every response
    /// future (which is moved a few times per request).
    ietf: Option<Box<(HeaderValue, HeaderValue)>>,
    retry_after: Option<u64>,
}

impl PendingHeaders {
    /// The headers for `decision` in `style`; `name` names a window for the
    /// IETF fields.
    pub(crate) fn for_decision(
        style: HeaderStyle,
        decision: &Decision,
        name: impl Fn(&WindowReport) -> String,
    ) -> Self {
        let x = matches!(style, HeaderStyle::XRateLimit | HeaderStyle::Both)
            .then(|| decision.reported().map(Reported::from))
            .flatten();
        let ietf = style
            .has_ietf()
            .then(|| ietf_fields(decision.windows(), name))
            .flatten();
        PendingHeaders {
            x,
            ietf,
            retry_after: decision.retry_after(),
        }
    }

    /// Only the `X-RateLimit-*` trio (for responses about a request that was
    /// not counted, such as a missing key).
    pub(crate) fn x_only(style: HeaderStyle, reported: Reported) -> Self {
        PendingHeaders {
            x: matches!(style, HeaderStyle::XRateLimit | HeaderStyle::Both).then_some(reported),
            ..Self::default()
        }
    }

    /// Writes the headers, replacing any the inner service set.
    pub(crate) fn write(self, headers: &mut HeaderMap) {
        if let Some(r) = self.x {
            headers.insert(X_RATELIMIT_LIMIT, number(u64::from(r.limit)));
            headers.insert(X_RATELIMIT_REMAINING, number(u64::from(r.remaining)));
            headers.insert(X_RATELIMIT_RESET, number(r.reset));
        }
        if let Some(fields) = self.ietf {
            let (policy, state) = *fields;
            headers.insert(RATELIMIT_POLICY, policy);
            headers.insert(RATELIMIT, state);
        }
        if let Some(secs) = self.retry_after {
            headers.insert(RETRY_AFTER, number(secs));
        }
    }
}

fn ietf_fields(
    windows: &[WindowReport],
    name: impl Fn(&WindowReport) -> String,
) -> Option<Box<(HeaderValue, HeaderValue)>> {
    let mut policy = String::new();
    let mut state = String::new();
    for (i, w) in windows.iter().enumerate() {
        let sep = if i == 0 { "" } else { ", " };
        let name = name(w);
        if w.concurrent {
            // An in-flight cap has no window and no reset.
            let _ = write!(
                policy,
                "{sep}\"{name}\";q={};qu=\"concurrent-requests\"",
                w.limit
            );
            let _ = write!(state, "{sep}\"{name}\";r={}", w.remaining);
            continue;
        }
        let _ = write!(policy, "{sep}\"{name}\";q={};w={}", w.limit, w.period);
        let _ = write!(
            state,
            "{sep}\"{name}\";r={};t={}",
            w.remaining, w.reset_after
        );
    }
    if windows.is_empty() {
        return None;
    }
    Some(Box::new((
        HeaderValue::try_from(policy).ok()?,
        HeaderValue::try_from(state).ok()?,
    )))
}
