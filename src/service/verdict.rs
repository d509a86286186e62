//! From a store's outcome to the layer's verdict: the decision (a refusal
//! that started a ban answers as the ban), and the events it makes.

use super::applied::Applied;
use super::metrics::Verdict;
use super::Shared;
use crate::decision::{Decision, RefusalReason};
use crate::event::{Event, EventKind};
use crate::report::{quota_report, refusal_reason};
use crate::store::protocol::Outcome;

/// The decision for a store outcome; a refusal that started a ban answers
/// as the ban, and waits for the longest of the bans it started and the
/// windows that refused it (so its `Retry-After` stays honest).
pub(super) fn decide_counted<St>(
    shared: &Shared<St>,
    outcome: &Outcome,
    applied: &Applied,
) -> Decision {
    let policy = &*shared.policy.inner;
    let decision = || {
        Decision::from_outcome(
            outcome,
            |check| {
                (
                    applied.origin(check),
                    applied.quota(policy, check).windows(),
                )
            },
            applied.now,
            policy.report,
        )
    };
    if outcome.admitted() && !outcome.shadow_refused() {
        // Returned as built, straight into the caller's place for it.
        return decision();
    }
    let decision = decision();
    match report(shared, outcome, applied, &decision) {
        Some((check, ban)) => {
            let (li, ri) = applied.origin(check);
            let quota = applied.quota(policy, check);
            Decision::banned(
                ban,
                applied.now,
                quota_report(quota, usize::from(li), usize::from(ri), policy.report),
            )
        }
        None => decision,
    }
}

/// Reports the outcome (see [`emit`]). A refusal names the limit whose
/// window makes the client wait longest (or whose ban is in force); a
/// shadow refusal names each shadow limit that would have refused. Returns
/// the check whose ban refused the request or was started by its refusal
/// (the store counts refusals towards penalties; of several, the longest),
/// with the time the answer waits for.
fn report<St>(
    shared: &Shared<St>,
    outcome: &Outcome,
    applied: &Applied,
    decision: &Decision,
) -> Option<(usize, u64)> {
    let policy = &*shared.policy.inner;
    let statuses = outcome.windows();
    let limit_of = |check: usize| usize::from(applied.origin(check).0);
    let bucket_of = |check: usize| applied.charges[check].bucket;
    if outcome.admitted() {
        let refusing = (0..applied.charges.len()).filter(|&c| {
            statuses
                .iter()
                .any(|w| usize::from(w.check) == c && w.retry_after > 0)
        });
        for check in refusing {
            if policy.limits[limit_of(check)].shadow {
                emit(
                    shared,
                    EventKind::ShadowRefused,
                    limit_of(check),
                    bucket_of(check),
                    decision,
                );
            }
        }
        return None;
    }
    let ban = outcome.ban();
    let binding = statuses
        .iter()
        .max_by_key(|w| w.retry_after)
        .map(|w| w.check)
        .or(ban.map(|b| b.check))
        .map_or(0, usize::from);
    // A ban in force refused the request; one its refusal started did not.
    match ban.filter(|b| !b.started) {
        Some(b) => shared
            .metrics
            .count(limit_of(usize::from(b.check)), Verdict::Banned),
        None => {
            let verdict = match refusal_reason(outcome) {
                Some(RefusalReason::Capacity) => Verdict::Capacity,
                Some(RefusalReason::Unavailable) => Verdict::Unavailable,
                _ => Verdict::Refused,
            };
            shared.metrics.count(limit_of(binding), verdict);
        }
    }
    emit(
        shared,
        EventKind::Refused,
        limit_of(binding),
        bucket_of(binding),
        decision,
    );
    let ban = ban?;
    let check = usize::from(ban.check);
    if !ban.started {
        return Some((check, ban.left));
    }
    // Every ban the refusal started; the answer waits for the longest of
    // them and of the windows that refused (a request sent when the ban
    // lifts must find its windows open, or it would start the next).
    // (The outcome's bits name checks below 32 only.)
    let beyond = (check >= 32).then_some(check);
    for started in outcome.bans_started().map(usize::from).chain(beyond) {
        emit(
            shared,
            EventKind::Banned,
            limit_of(started),
            bucket_of(started),
            decision,
        );
    }
    Some((check, outcome.retry_after()))
}

/// Tells the logs and the event hook about one refusal, ban or shadow
/// refusal by limit `limit` of the request in `bucket`.
pub(super) fn emit<St>(
    shared: &Shared<St>,
    kind: EventKind,
    limit: usize,
    bucket: u64,
    decision: &Decision,
) {
    let limit = &*shared.policy.inner.limits[limit].name;
    match kind {
        EventKind::ShadowRefused => {
            tracing::info!(limit, bucket, "shadow limit would have refused")
        }
        EventKind::Banned => {
            tracing::info!(limit, bucket, "key banned after repeated refusals")
        }
        _ => tracing::debug!(
            limit,
            bucket,
            retry_after = decision.retry_after().unwrap_or(0),
            reason = ?decision.refusal(),
            "request refused by rate limit"
        ),
    }
    if let Some(hook) = &shared.on_event {
        (hook.0)(&Event {
            kind,
            limit,
            bucket: Some(bucket),
            decision: Some(decision),
            key_error: None,
        });
    }
}
