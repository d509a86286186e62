//! How responses report limits: which headers they carry
//! ([`HeaderStyle`]) and which window the single-window headers describe
//! ([`PolicyBuilder::report_period`](crate::PolicyBuilder::report_period)).
//! Settings of a [`Policy`](crate::Policy), read when a response is built.
//!
//! ```
//! use tower_ratelimit::HeaderStyle;
//!
//! let style = HeaderStyle::Both;
//! assert_ne!(style, HeaderStyle::default());
//! ```

use std::time::Duration;

/// Which rate-limit headers responses carry.
///
/// Rate-limit headers describe only what the layer counted for the request:
/// the windows it was counted in (or, on a refusal, checked against) and
/// the in-flight caps it held or found full. A response about a request that
/// nothing counted carries none, in every style: one that matches no limit,
/// one every applying limit exempts, one let through because the store
/// failed open, and the 401 for a key a limit rejects (missing, empty,
/// too long…), since no window is counted before every key is known. A
/// *busy* refusal reports the in-flight cap that refused it, which it did
/// count: `limit` the cap, nothing free. A refusal during a ban reports the
/// banning limit's window as empty until the ban ends. A shadow limit
/// counts its requests like an enforced one, so its windows are reported
/// too.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum HeaderStyle {
    /// `X-RateLimit-Limit`, `X-RateLimit-Remaining` and `X-RateLimit-Reset`
    /// (Unix seconds: when the window is full again, or ends) for the
    /// reported window. On a refusal, `Remaining` is 0 and `Reset` is never
    /// before `Retry-After` (with GCRA it is when the window is full again,
    /// which may be later: `Retry-After` says when the next request is
    /// admitted). The default; built without allocating.
    #[default]
    XRateLimit,
    /// `RateLimit-Policy` and `RateLimit` of draft-ietf-httpapi-ratelimit-headers-10,
    /// one item per window the request was counted in:
    /// `RateLimit-Policy: "per_key.minute";q=60;w=60` and
    /// `RateLimit: "per_key.minute";r=59;t=1`; an in-flight cap is
    /// `"calls.concurrency";q=10;qu="concurrent-requests"` and
    /// `"calls.concurrency";r=9`.
    ///
    /// Each window reports its own state. `r` is what it has left, after
    /// the request if admitted; a refusal charges nothing, so a window that
    /// had room reports the room it has, and a window that refused reports
    /// 0 (what it has is not enough for the request). `t` is the draft's
    /// "seconds until additional quota is made available", rounded up: for
    /// a window that refused, until it admits the request again (never
    /// after `Retry-After`); otherwise, until the next request is earned
    /// back (GCRA) or the window ends (fixed window). So a window that had
    /// room may say a later `t` than `Retry-After`: it is not what the
    /// client waits for, and the draft has `Retry-After` take precedence.
    /// A window with nothing used has no `t`: no more is to come. An
    /// in-flight cap has no `t` either. `w` is in whole seconds, as the
    /// draft has it: a window under a second says `w=1` (its name keeps its
    /// own period, `"all.500ms"`).
    Ietf,
    /// Both of the above.
    Both,
    /// No rate-limit headers (`Retry-After` is still sent on refusals).
    None,
    /// `RateLimit` and `RateLimit-Policy` of draft-ietf-httpapi-ratelimit-headers-07,
    /// as express-rate-limit sends them (`standardHeaders: 'draft-7'`), for
    /// the reported window (the one the `X-RateLimit-*` trio reports):
    /// `RateLimit: limit=60, remaining=59, reset=1` and
    /// `RateLimit-Policy: 60;w=60`.
    ///
    /// `limit` and `remaining` are the trio's; `reset` is the seconds until
    /// the trio's `Reset` (delta seconds, not a Unix time), rounded up: on a
    /// refusal, never before `Retry-After`. `RateLimit-Policy` is the
    /// window's quota and its period in seconds (`w`). An in-flight cap, when
    /// it is reported (all that applies, or it refused), is
    /// `RateLimit: limit=10, remaining=7, reset=0`: the draft has no unit for
    /// concurrency and requires `reset`, which is 0 while slots are free
    /// (one may free at any moment) and, on a busy refusal, the busy
    /// `Retry-After`; it has no window, so no `RateLimit-Policy`.
    ///
    /// Unlike the other styles these fields are composed per response (one
    /// small allocation); [`Ietf`](HeaderStyle::Ietf) uses the same field
    /// names, so the two cannot be combined.
    Draft7,
}

impl HeaderStyle {
    /// Whether the style includes `RateLimit` fields of an IETF draft
    /// ([`Ietf`](HeaderStyle::Ietf), [`Both`](HeaderStyle::Both),
    /// [`Draft7`](HeaderStyle::Draft7)): they are built from the whole
    /// decision, never on the short path that builds the `X-RateLimit-*`
    /// trio alone.
    pub(crate) fn has_ietf(self) -> bool {
        matches!(
            self,
            HeaderStyle::Ietf | HeaderStyle::Both | HeaderStyle::Draft7
        )
    }
}

/// Which window the single-window headers (`X-RateLimit-*`, draft-7's
/// `RateLimit`) report when a request is counted in several: set with
/// [`PolicyBuilder::report_most_restrictive`](crate::PolicyBuilder::report_most_restrictive)
/// and [`PolicyBuilder::report_period`](crate::PolicyBuilder::report_period).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) enum ReportedWindow {
    /// The window closest to refusing: on a refusal, the one that makes the
    /// client wait longest; otherwise the one with the least remaining
    /// (ties: the one that takes longest to reset). The default.
    #[default]
    MostRestrictive,
    /// The first window (in policy order) with this period, such as
    /// TalkPilot's minute window; the most restrictive one if the request
    /// was not counted in a window of this period.
    Period(Duration),
}
