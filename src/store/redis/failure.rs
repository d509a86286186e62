//! What a request gets when Redis cannot decide it: per limit, let it
//! through, refuse it, or count it locally against a share of the quota.

use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;
use smallvec::SmallVec;

use super::breaker::{Breaker, Ticket, Transition};
use super::failure_policy::FailurePolicy;
use super::metrics::{Kind, StoreMetrics};
use super::script::Planned;
use crate::decision::Basis;
use crate::policy::{Quota, Window};
use crate::store::protocol::{Check, Decided, Outcome, WindowStatus};
use crate::store::{MemoryStore, Store};

/// This process's own counts of the requests Redis could not decide, kept
/// on a time that never goes back.
///
/// A request whose call to Redis fails falls back when the call fails (up
/// to the store's deadline after it arrived), while one that skips Redis
/// (the breaker is open) falls back at once: decided at the times they
/// arrived, a later request could be counted before an earlier one, and the
/// earlier one would find its bucket counted ahead of its time: refused
/// within its share, with a made-up wait. So each request is decided at the
/// latest time any was decided at here, if that is later than its own, one
/// request at a time: the counts see time in the order they count.
#[derive(Debug, Default)]
pub(super) struct LocalCounts {
    store: MemoryStore,
    /// The latest time a request was decided at here (the layer's clock),
    /// held while one is decided.
    latest: Mutex<u64>,
}

impl LocalCounts {
    /// The outcome for `checks` (see [`decide`]), decided at `now` or at
    /// the latest time a request was decided at here, whichever is later;
    /// with that time, from which every duration in the outcome is
    /// measured.
    pub(super) fn decide(&self, checks: &[Planned], now: u64, retry_after: u64) -> (Outcome, u64) {
        let mut latest = self.latest.lock();
        let now = now.max(*latest);
        *latest = now;
        (decide(checks, &self.store, now, retry_after), now)
    }
}

/// The outcome for `checks` when Redis could not decide at `now` (the
/// layer's clock); a fail-closed refusal asks to retry in `retry_after` ns.
///
/// A request is refused if any enforced check fails closed (and then nothing
/// is counted anywhere); otherwise the checks that fall back to memory are
/// decided there, all or nothing (penalties included), and the ones that
/// fail open are left out.
pub(crate) fn decide(
    checks: &[Planned],
    local: &MemoryStore,
    now: u64,
    retry_after: u64,
) -> Outcome {
    let retry_after = retry_after.max(1);
    let closed = |c: &Planned| c.on_failure == FailurePolicy::Closed && !c.shadow;
    if checks.iter().any(closed) {
        let mut statuses: SmallVec<[WindowStatus; 4]> = SmallVec::new();
        for (ci, check) in checks.iter().enumerate().filter(|(_, c)| closed(c)) {
            for (wi, window) in check.windows.iter().enumerate() {
                statuses.push(WindowStatus {
                    check: ci as u8,
                    window: wi as u8,
                    limit: window.limit(),
                    remaining: 0,
                    reset_after: retry_after,
                    retry_after,
                });
            }
        }
        return Outcome::from_statuses(false, statuses).on_basis(Basis::FailedClosed);
    }

    let mut origin: SmallVec<[u8; 4]> = SmallVec::new();
    let mut quotas: SmallVec<[Quota; 2]> = SmallVec::new();
    for (ci, check) in checks.iter().enumerate() {
        if let FailurePolicy::Local { percent } = check.on_failure {
            origin.push(ci as u8);
            quotas.push(share(check, percent));
        }
    }
    if quotas.is_empty() {
        return Outcome::from_statuses(true, SmallVec::new()).on_basis(Basis::FailedOpen);
    }
    let local_checks: SmallVec<[Check<'_>; 2]> = origin
        .iter()
        .zip(&quotas)
        .map(|(&ci, quota)| {
            let check = &checks[usize::from(ci)];
            let mut c = Check::new(check.bucket, quota);
            c.shadow = check.shadow;
            match &check.penalty {
                Some((key, penalty)) => c.with_penalty(*key, penalty),
                None => c,
            }
        })
        .collect();
    let outcome = match local.check(now, &local_checks) {
        Decided::Ready(Ok(outcome)) => outcome,
        // The memory store always decides at once; if it ever did not, the
        // request is let through rather than held.
        Decided::Ready(Err(_)) | Decided::Pending(_) => {
            return Outcome::from_statuses(true, SmallVec::new()).on_basis(Basis::FailedOpen)
        }
    };
    let statuses = outcome.windows().iter().map(|w| WindowStatus {
        check: origin[usize::from(w.check)],
        ..*w
    });
    if outcome.is_capacity_refusal() {
        return Outcome::at_capacity(outcome.retry_after(), statuses)
            .on_basis(Basis::LocalFallback);
    }
    let mut local = Outcome::new(outcome.admitted(), statuses);
    match outcome.ban() {
        Some(ban) if !ban.started => {
            return Outcome::banned(origin[usize::from(ban.check)], ban.left)
                .on_basis(Basis::LocalFallback)
        }
        Some(ban) => {
            local.mark_ban_started(origin[usize::from(ban.check)], ban.left);
            for check in outcome.bans_started() {
                local.note_ban_started(origin[usize::from(check)]);
            }
        }
        None => {}
    }
    local
        .with_shadow_refusal(outcome.shadow_refused())
        .on_basis(Basis::LocalFallback)
}

/// `check`'s quota with every window's limit cut to `percent` %.
fn share(check: &Planned, percent: u8) -> Quota {
    let percent = u64::from(percent.clamp(1, 100));
    let scaled = |w: &Window| {
        let limit = (u64::from(w.limit()) * percent / 100).max(u64::from(check.cost.max(1)));
        let limit = u32::try_from(limit).unwrap_or(w.limit()).min(w.limit());
        Window::new(limit, w.period()).unwrap_or(*w)
    };
    let mut windows = check.windows.iter();
    let first = windows.next().map_or(Window::per_second(1), scaled);
    let mut quota = Quota::new(first)
        .cost(check.cost)
        .algorithm(check.algorithm);
    for w in windows {
        quota = quota.and(scaled(w));
    }
    quota
}

/// Why a call to Redis did not answer as it should.
pub(super) enum Failure {
    /// No answer within the duration, to the call sent at the instant.
    Timeout(std::time::Duration, tokio::time::Instant),
    Redis(redis::RedisError),
    Reply(String),
}

impl Failure {
    /// The kind of [`StoreError`](crate::store::StoreError) this failure
    /// is (as [`connect`](super::RedisStoreBuilder::connect) makes them), for
    /// the metrics.
    pub(super) fn kind(&self) -> Kind {
        match self {
            Failure::Timeout(..) => Kind::Timeout,
            Failure::Redis(e) if e.is_timeout() => Kind::Timeout,
            Failure::Redis(e)
                if e.is_io_error() || e.is_connection_refusal() || e.is_connection_dropped() =>
            {
                Kind::Connection
            }
            Failure::Redis(_) | Failure::Reply(_) => Kind::Protocol,
        }
    }
}

impl Failure {
    /// The [`StoreError`](crate::store::StoreError) that reports this
    /// failure to a caller that is told of it (the admin API).
    pub(super) fn error(&self) -> crate::store::StoreError {
        use crate::store::StoreError;
        let message = format!("Redis did not answer: {self}");
        match self.kind() {
            Kind::Timeout => StoreError::timeout(message),
            Kind::Connection => StoreError::connection(message),
            Kind::Config | Kind::Protocol => StoreError::protocol(message),
        }
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Timeout(d, _) => write!(f, "no answer within {d:?}"),
            Failure::Redis(e) => write!(f, "{e}"),
            Failure::Reply(e) => write!(f, "unexpected answer: {e}"),
        }
    }
}

/// Hands a failed call's ticket back to the breaker, counts the failure
/// (and a timeout) and logs it: at `warn` for the first failure in a row and
/// when the breaker opens, else at `debug`. A call that missed its deadline
/// while Redis answered other calls waited in this process's own queue: it
/// is counted as a timeout but is no failure of Redis, so the breaker is
/// left as it was. `what` names what the call was for ("requests",
/// "in-flight caps").
pub(super) fn record(
    failure: &Failure,
    ticket: Ticket,
    breaker: &Breaker,
    [failures, timeouts]: [&AtomicU64; 2],
    metrics: &StoreMetrics,
    what: &str,
) {
    metrics.failure(failure.kind());
    let transition = if let Failure::Timeout(_, sent) = failure {
        timeouts.fetch_add(1, Ordering::Relaxed);
        match ticket.timed_out(*sent) {
            Some(transition) => transition,
            None => {
                tracing::debug!(
                    error = %failure,
                    "rate-limit store: a call waited behind this process's own commands; \
                     it follows its failure policy, Redis answers"
                );
                return;
            }
        }
    } else if let Failure::Redis(_) = failure {
        match ticket.errored() {
            Some(transition) => transition,
            None => {
                failures.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(
                    error = %failure,
                    "rate-limit store: a cluster node failed while the others answer; \
                     this request follows its failure policy"
                );
                return;
            }
        }
    } else {
        ticket.failure()
    };
    failures.fetch_add(1, Ordering::Relaxed);
    if transition == Transition::Opened {
        tracing::warn!(
            error = %failure,
            cool_down = ?breaker.cool_down(),
            "rate-limit store: Redis keeps failing; not calling it for the cool-down, \
             {what} follow their failure policy"
        );
    } else if breaker.consecutive_failures() == 1 {
        tracing::warn!(error = %failure, "rate-limit store: Redis failed; {what} follow their failure policy");
    } else {
        tracing::debug!(error = %failure, "rate-limit store: Redis failed again");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::Algorithm;

    const T0: u64 = 1_700_000_000_000_000_000;

    fn planned(bucket: u64, quota: &Quota, on_failure: FailurePolicy) -> Planned {
        Planned::new(&Check::new(bucket, quota), on_failure)
    }

    #[test]
    fn open_checks_are_left_out_and_admit() {
        let quota = Quota::new(Window::per_minute(1));
        let local = MemoryStore::new();
        let checks = [planned(1, &quota, FailurePolicy::Open)];
        for _ in 0..5 {
            let o = decide(&checks, &local, T0, 1);
            assert!(o.admitted());
            assert!(o.windows().is_empty());
        }
        assert!(local.is_empty(), "nothing counted");
    }

    #[test]
    fn a_closed_check_refuses_and_nothing_is_counted_locally() {
        let quota = Quota::new(Window::per_minute(10)).and(Window::per_hour(100));
        let local = MemoryStore::new();
        let checks = [
            planned(1, &quota, FailurePolicy::local(50)),
            planned(2, &quota, FailurePolicy::Closed),
        ];
        let o = decide(&checks, &local, T0, 3_000_000_000);
        assert!(!o.admitted());
        assert_eq!(o.retry_after(), 3_000_000_000);
        assert_eq!(o.windows().len(), 2);
        assert!(o.windows().iter().all(|w| w.check == 1 && w.remaining == 0));
        assert!(local.is_empty());
    }

    #[test]
    fn a_shadow_check_never_fails_closed() {
        let quota = Quota::new(Window::per_minute(10));
        let local = MemoryStore::new();
        let mut shadow = planned(1, &quota, FailurePolicy::Closed);
        shadow.shadow = true;
        assert!(decide(&[shadow], &local, T0, 1).admitted());
    }

    #[test]
    fn the_local_fallback_counts_a_share_of_each_window() {
        let quota = Quota::new(Window::per_minute(10))
            .and(Window::per_hour(100))
            .algorithm(Algorithm::FixedWindow);
        let local = MemoryStore::new();
        let checks = [
            planned(9, &quota, FailurePolicy::Open),
            planned(1, &quota, FailurePolicy::local(30)),
        ];
        let admitted = (0..10)
            .filter(|_| decide(&checks, &local, T0, 1).admitted())
            .count();
        assert_eq!(admitted, 3, "30 % of 10 per minute");
        let o = decide(&checks, &local, T0, 1);
        assert!(o.windows().iter().all(|w| w.check == 1));
        assert_eq!(o.windows()[0].limit, 3);
        assert_eq!(o.windows()[1].limit, 30);
    }

    #[test]
    fn a_request_that_falls_back_late_is_decided_on_the_latest_time() {
        // 5 an hour: one every 720 s.
        let quota = Quota::new(Window::per_hour(5));
        let local = LocalCounts::default();
        let checks = [planned(1, &quota, FailurePolicy::local(100))];
        let later = T0 + 1_000_000_000;
        for _ in 0..3 {
            let (outcome, at) = local.decide(&checks, later, 1);
            assert!(outcome.admitted());
            assert_eq!(at, later);
        }
        // Requests that arrived a second earlier, decided now: the 2 left
        // of the share, then a refusal until the share frees a request.
        let mut admitted = 0;
        for _ in 0..5 {
            let (outcome, at) = local.decide(&checks, T0, 1);
            assert_eq!(at, later, "never before a time already decided at");
            if outcome.admitted() {
                admitted += 1;
            } else {
                assert_eq!(outcome.retry_after(), 720 * 1_000_000_000);
            }
        }
        assert_eq!(admitted, 2);
        let (outcome, at) = local.decide(&checks, later + 720 * 1_000_000_000, 1);
        assert!(outcome.admitted(), "admitted once its wait is over");
        assert_eq!(at, later + 720 * 1_000_000_000);
    }

    #[test]
    fn a_share_never_drops_below_one_request_or_the_cost() {
        let quota = Quota::new(Window::per_minute(10)).cost(4);
        let local = MemoryStore::new();
        let checks = [planned(1, &quota, FailurePolicy::local(1))];
        assert!(decide(&checks, &local, T0, 1).admitted());
        assert!(!decide(&checks, &local, T0, 1).admitted());
        assert_eq!(FailurePolicy::local(0), FailurePolicy::Local { percent: 1 });
        assert_eq!(
            FailurePolicy::local(250),
            FailurePolicy::Local { percent: 100 }
        );
    }
}
