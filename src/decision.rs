//! What the layer decided about a request, and the window it reports.

use std::time::Duration;

use smallvec::SmallVec;

use crate::headers::Reported;
use crate::store::{Outcome, WindowStatus};

/// Nanoseconds in a second.
pub(crate) const NANOS: u64 = 1_000_000_000;

/// Which window the single-valued headers (`X-RateLimit-*`) report when a
/// request is counted in several.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum ReportedWindow {
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

/// The layer's decision about a request: put into the request's extensions
/// (for handlers) and the response's (for outer layers).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    refusal: Option<RefusalReason>,
    shadow_refused: bool,
    retry_after: u64,
    reported: usize,
    windows: SmallVec<[WindowReport; 4]>,
}

/// Where each window of an outcome belongs in the policy.
pub(crate) type WindowOrigin = (u16, u16);

impl Decision {
    /// Builds the decision from a store outcome. `origin(check)` is the
    /// (limit, route) of each check; `period_of(check, window)` its period.
    pub(crate) fn from_outcome(
        outcome: &Outcome,
        origin: impl Fn(usize) -> WindowOrigin,
        now: u64,
        report: ReportedWindow,
        period_ns: impl Fn(usize, usize) -> u64,
    ) -> Self {
        let mut windows: SmallVec<[WindowReport; 4]> = SmallVec::new();
        for status in outcome.windows() {
            windows.push(window_report(outcome, status, &origin, now, &period_ns));
        }
        let refusal = match (outcome.admitted(), outcome.is_capacity_refusal()) {
            (true, _) => None,
            (false, true) => Some(RefusalReason::Capacity),
            (false, false) => Some(RefusalReason::Window),
        };
        let retry_after = if refusal.is_some() {
            outcome.retry_after().div_ceil(NANOS).max(1)
        } else {
            0
        };
        let reported = pick(outcome, report, |i| windows[i].period);
        let mut decision = Decision {
            refusal,
            shadow_refused: outcome.shadow_refused(),
            retry_after,
            reported,
            windows,
        };
        if refusal.is_some() {
            // Never advertise a reset before the moment a retry is admitted.
            let retry_at = now.div_ceil(NANOS) + retry_after;
            if let Some(w) = decision.windows.get_mut(reported) {
                if w.reset < retry_at {
                    w.reset = retry_at;
                    w.reset_after = retry_after;
                }
            }
        }
        decision
    }

    /// A refusal because a key is banned for `ban_left` more nanoseconds;
    /// `reported` is the banning limit's window, reported as empty until the
    /// ban ends.
    pub(crate) fn banned(ban_left: u64, now: u64, reported: WindowReport) -> Self {
        let retry_after = ban_left.div_ceil(NANOS).max(1);
        Self::refused_by(RefusalReason::Banned, retry_after, now, reported)
    }

    /// A refusal because a key had no free in-flight slot; `reported` is the
    /// cap that refused it.
    pub(crate) fn busy(retry_after: u64, now: u64, reported: WindowReport) -> Self {
        Self::refused_by(RefusalReason::Busy, retry_after, now, reported)
    }

    /// A refusal for `reason` that is not a window's: `reported` is shown
    /// empty until `retry_after` seconds from `now`.
    fn refused_by(
        reason: RefusalReason,
        retry_after: u64,
        now: u64,
        mut reported: WindowReport,
    ) -> Self {
        reported.remaining = 0;
        reported.reset = now.div_ceil(NANOS) + retry_after;
        reported.reset_after = retry_after;
        let mut windows = SmallVec::new();
        windows.push(reported);
        Decision {
            refusal: Some(reason),
            shadow_refused: false,
            retry_after,
            reported: 0,
            windows,
        }
    }

    /// Adds the in-flight caps a request holds slots of (after its windows).
    /// They become the reported window only when no window was counted.
    pub(crate) fn with_caps(mut self, caps: impl IntoIterator<Item = WindowReport>) -> Self {
        let counted = !self.windows.is_empty();
        self.windows.extend(caps);
        if !counted {
            self.reported = 0;
        }
        self
    }

    /// A decision with no window, for a request only capped in flight.
    pub(crate) fn admitted() -> Self {
        Decision {
            refusal: None,
            shadow_refused: false,
            retry_after: 0,
            reported: 0,
            windows: SmallVec::new(),
        }
    }

    /// Marks that a shadow limit would have refused the request.
    pub(crate) fn with_shadow_refusal(mut self, refused: bool) -> Self {
        self.shadow_refused |= refused;
        self
    }

    /// The `X-RateLimit-*` values of an *admitted* request (its reported
    /// window's), without building the whole decision.
    pub(crate) fn reported_values(
        outcome: &Outcome,
        now: u64,
        report: ReportedWindow,
        period_ns: impl Fn(usize, usize) -> u64,
    ) -> Option<Reported> {
        debug_assert!(outcome.admitted(), "refusals build the whole decision");
        let statuses = outcome.windows();
        let period = |i: usize| {
            let w: &WindowStatus = &statuses[i];
            period_ns(usize::from(w.check), usize::from(w.window)).div_ceil(NANOS)
        };
        let w = statuses.get(pick(outcome, report, period))?;
        Some(Reported {
            limit: w.limit,
            remaining: w.remaining,
            reset: reset_at(now, w.reset_after),
        })
    }

    /// Whether the request was admitted.
    pub fn is_admitted(&self) -> bool {
        self.refusal.is_none()
    }

    /// Whether a limit in shadow mode would have refused the request.
    pub fn shadow_refused(&self) -> bool {
        self.shadow_refused
    }

    /// Why the request was refused, if it was.
    pub fn refusal(&self) -> Option<RefusalReason> {
        self.refusal
    }

    /// Whole seconds (at least 1, rounded up) after which the refused request
    /// would be admitted, absent other traffic; `None` if admitted.
    pub fn retry_after(&self) -> Option<u64> {
        self.refusal.map(|_| self.retry_after)
    }

    /// The reported window (see [`ReportedWindow`]).
    pub fn reported(&self) -> Option<&WindowReport> {
        self.windows.get(self.reported)
    }

    /// Every window the request was counted in.
    pub fn windows(&self) -> &[WindowReport] {
        &self.windows
    }
}

/// What the headers say about one window.
fn window_report(
    outcome: &Outcome,
    w: &WindowStatus,
    origin: impl Fn(usize) -> WindowOrigin,
    now: u64,
    period_ns: impl Fn(usize, usize) -> u64,
) -> WindowReport {
    let (limit_index, route_index) = origin(usize::from(w.check));
    let period = period_ns(usize::from(w.check), usize::from(w.window));
    WindowReport {
        limit_index,
        route_index,
        window_index: w.window,
        limit: w.limit,
        remaining: if outcome.admitted() { w.remaining } else { 0 },
        reset: reset_at(now, w.reset_after),
        reset_after: w.reset_after.div_ceil(NANOS),
        period: period.div_ceil(NANOS),
        concurrent: false,
    }
}

/// When a window `reset_after` ns from `now` resets, in Unix seconds
/// (rounded up: never before it does).
fn reset_at(now: u64, reset_after: u64) -> u64 {
    (now + reset_after).div_ceil(NANOS)
}

/// The index of the reported window; `period_secs(i)` is window `i`'s period
/// in whole seconds.
fn pick(outcome: &Outcome, report: ReportedWindow, period_secs: impl Fn(usize) -> u64) -> usize {
    let statuses = outcome.windows();
    if let ReportedWindow::Period(period) = report {
        let secs = period.as_nanos().div_ceil(u128::from(NANOS)) as u64;
        if let Some(i) = (0..statuses.len()).find(|&i| period_secs(i) == secs) {
            return i;
        }
    }
    if !outcome.admitted() && !outcome.is_capacity_refusal() {
        return (0..statuses.len())
            .max_by_key(|&i| (statuses[i].retry_after, std::cmp::Reverse(i)))
            .unwrap_or(0);
    }
    (0..statuses.len())
        .min_by_key(|&i| {
            (
                statuses[i].remaining,
                std::cmp::Reverse(statuses[i].reset_after),
                i,
            )
        })
        .unwrap_or(0)
}
