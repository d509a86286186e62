//! What the layer reports of each window, built here and nowhere else: a
//! [`WindowReport`] from a store's status of a counted window, from a quota
//! (a ban's window, before anything is counted) or from an in-flight cap;
//! the [`Decision`] that holds them; the values of the single-window
//! headers, read from an outcome without building the decision; and a
//! counted window's standing for the IETF fields.

use smallvec::SmallVec;

use crate::clock::NANOS;
use crate::decision::{
    reset_at, Admission, Basis, CountedWindow, Decision, RefusalReason, WindowReport,
};
use crate::headers::{Reported, Standing};
use crate::policy::{Algorithm, Quota, Window};
use crate::reporting::ReportedWindow;
use crate::store::protocol::{Outcome, WindowStatus};

/// Where each window of an outcome belongs in the policy.
pub(crate) type WindowOrigin = (u16, u16);

/// What a counted window has, from the store's status of it: counted by
/// `algorithm` over `period_ns`.
pub(crate) fn standing(w: &WindowStatus, algorithm: Algorithm, period_ns: u64) -> Standing {
    if w.retry_after > 0 {
        // It refused (or, a shadow window, would have): nothing is usable
        // until it admits the request.
        return Standing::new(0, Some(w.retry_after.div_ceil(NANOS)));
    }
    let more_after = match algorithm {
        _ if w.remaining >= w.limit || w.reset_after == 0 => None,
        // The state is a debt of one interval per counted request,
        // `reset_after` in all: the oldest is earned back once the debt is
        // down to a whole number of intervals.
        Algorithm::Gcra => {
            let interval = period_ns.div_ceil(u64::from(w.limit)).max(1);
            Some((w.reset_after - 1) % interval + 1)
        }
        Algorithm::FixedWindow => Some(w.reset_after),
    };
    Standing::new(w.remaining, more_after.map(|ns| ns.div_ceil(NANOS)))
}

/// Why `outcome` refused its request, if it did (a ban's refusal is built
/// apart, by [`Decision::banned`]).
pub(crate) fn refusal_reason(outcome: &Outcome) -> Option<RefusalReason> {
    if outcome.admitted() {
        None
    } else if outcome.is_capacity_refusal() {
        Some(RefusalReason::Capacity)
    } else if outcome.basis() == Basis::FailedClosed {
        Some(RefusalReason::Unavailable)
    } else {
        Some(RefusalReason::Window)
    }
}

impl Decision {
    /// Builds the decision from a store outcome. `check_of(check)` is the
    /// (limit, route) of each check and the windows of its quota.
    #[inline]
    pub(crate) fn from_outcome<'q>(
        outcome: &Outcome,
        check_of: impl Fn(usize) -> (WindowOrigin, &'q [Window]),
        now: u64,
        report: ReportedWindow,
    ) -> Self {
        let refusal = refusal_reason(outcome);
        let retry_after = if refusal.is_some() {
            outcome.retry_after().div_ceil(NANOS).max(1)
        } else {
            0
        };
        // Built in place: the windows are filled where they stay, not
        // moved in (the decision is some 200 bytes).
        let mut decision = Decision {
            refusal,
            basis: outcome.basis(),
            shadow_refused: outcome.shadow_refused(),
            retry_after,
            reported: 0,
            windows: SmallVec::new(),
        };
        let mut periods: SmallVec<[u64; 4]> = SmallVec::new();
        for_each_window(outcome, check_of, |_, w| {
            periods.push(w.period);
            decision.windows.push(w.report(now))
        });
        let reported = pick(outcome, report, |i| periods[i]);
        // At most 256 checks of 8 windows each: it fits.
        decision.reported = reported as u16;
        if refusal.is_some() {
            // Never advertise a reset before the moment a retry is admitted
            // (that moment's second, rounded up, as every reset is).
            let retry_at = now
                .saturating_add(outcome.retry_after().max(1))
                .div_ceil(NANOS);
            if let Some(w) = decision.windows.get_mut(reported) {
                if w.reset < retry_at {
                    w.reset = retry_at;
                    w.reset_after = retry_after;
                }
            }
        }
        decision
    }

    /// The `X-RateLimit-*` values of an *admitted* request (its reported
    /// window's), with that window's index in the outcome and the check it
    /// belongs to, without building the whole decision.
    pub(crate) fn reported_values(
        outcome: &Outcome,
        now: u64,
        report: ReportedWindow,
        period_ns: impl Fn(usize, usize) -> u64,
    ) -> Option<(usize, usize, Reported)> {
        debug_assert!(outcome.admitted(), "refusals build the whole decision");
        let statuses = outcome.windows();
        let period = |i: usize| {
            let w: &WindowStatus = &statuses[i];
            period_ns(usize::from(w.check), usize::from(w.window))
        };
        let i = pick(outcome, report, period);
        let w = statuses.get(i)?;
        let values = Reported {
            limit: w.limit,
            remaining: w.remaining,
            reset: reset_at(now, w.reset_after),
        };
        Some((i, usize::from(w.check), values))
    }
}

/// The decision of a plain admission `outcome` (admitted, with no shadow
/// refusal, and one an [`Admission`] holds), whose reported window is
/// `reported`, kept as its figures; `check_of` as for
/// [`Decision::from_outcome`].
#[inline]
pub(crate) fn admission<'q>(
    outcome: &Outcome,
    check_of: impl Fn(usize) -> (WindowOrigin, &'q [Window]),
    now: u64,
    reported: usize,
) -> Admission {
    debug_assert!(outcome.admitted() && !outcome.shadow_refused());
    let mut admission = Admission::new(now, outcome.basis(), reported);
    for_each_window(outcome, check_of, |_, w| admission.push(w));
    admission
}

/// Calls `f` with each window of `outcome` (its index, and what its report
/// is made from); `check_of` as for [`Decision::from_outcome`].
#[inline]
fn for_each_window<'q>(
    outcome: &Outcome,
    check_of: impl Fn(usize) -> (WindowOrigin, &'q [Window]),
    mut f: impl FnMut(usize, CountedWindow),
) {
    // The statuses come check by check: each check is looked up once.
    let mut last = None;
    for (i, status) in outcome.windows().iter().enumerate() {
        let check = usize::from(status.check);
        let (origin, windows) = match last {
            Some((c, found)) if c == check => found,
            _ => last.insert((check, check_of(check))).1,
        };
        let period = windows
            .get(usize::from(status.window))
            .map_or(0, Window::period_ns);
        let remaining = if outcome.admitted() {
            status.remaining
        } else {
            0
        };
        let counted = CountedWindow {
            origin,
            window: status.window,
            limit: status.limit,
            remaining,
            reset_after: status.reset_after,
            period,
        };
        f(i, counted);
    }
}

/// The index of the reported window; `period_ns(i)` is window `i`'s period
/// in nanoseconds.
#[inline]
fn pick(outcome: &Outcome, report: ReportedWindow, period_ns: impl Fn(usize) -> u64) -> usize {
    let statuses = outcome.windows();
    if let ReportedWindow::Period(period) = report {
        let wanted = period.as_nanos();
        if let Some(i) = (0..statuses.len()).find(|&i| u128::from(period_ns(i)) == wanted) {
            return i;
        }
    }
    if !outcome.admitted() && !outcome.is_capacity_refusal() {
        return (0..statuses.len())
            .max_by_key(|&i| (statuses[i].retry_after, std::cmp::Reverse(i)))
            .unwrap_or(0);
    }
    // The fewest remaining, then the latest reset, then the first.
    let rank = |w: &WindowStatus| (w.remaining, std::cmp::Reverse(w.reset_after));
    let mut best = 0;
    for (i, w) in statuses.iter().enumerate().skip(1) {
        if rank(w) < rank(&statuses[best]) {
            best = i;
        }
    }
    best
}

/// Which window of `quota` the headers report when nothing was counted.
fn reported_of(quota: &Quota, report: ReportedWindow) -> usize {
    let windows = quota.windows();
    match report {
        ReportedWindow::Period(p) => windows.iter().position(|w| w.period() == p),
        ReportedWindow::MostRestrictive => None,
    }
    .unwrap_or(0)
}

/// The reported window of `quota` (route `ri` of limit `li`), before any
/// adjustment; an in-flight cap's if the quota has no window.
pub(crate) fn quota_report(
    quota: &Quota,
    li: usize,
    ri: usize,
    report: ReportedWindow,
) -> WindowReport {
    let index = reported_of(quota, report);
    let (limit, period) = quota
        .windows()
        .get(index)
        .map_or((quota.in_flight_cap().unwrap_or(0), 0), |w| {
            (w.limit(), w.period_ns().div_ceil(NANOS))
        });
    WindowReport {
        limit_index: li as u16,
        route_index: ri as u16,
        window_index: index as u8,
        limit,
        remaining: 0,
        reset: 0,
        reset_after: 0,
        period,
        concurrent: quota.windows().is_empty(),
    }
}

/// The report of an in-flight cap of `cap` requests (limit and route
/// `origin`) with `in_flight` of them in flight.
pub(crate) fn cap_report(
    origin: WindowOrigin,
    cap: u32,
    in_flight: u32,
    now_secs: u64,
) -> WindowReport {
    WindowReport {
        limit_index: origin.0,
        route_index: origin.1,
        window_index: 0,
        limit: cap,
        remaining: cap.saturating_sub(in_flight),
        reset: now_secs,
        reset_after: 0,
        period: 0,
        concurrent: true,
    }
}
