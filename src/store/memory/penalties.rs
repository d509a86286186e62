//! The memory store's penalties, kept in this process's penalty box: a ban
//! in force refuses before any window is looked at, and a refusal counts
//! towards the penalties of the checks that refused (see
//! [`Store`](crate::store::Store)).

use crate::penalty::{Penalty, PenaltyBox, Recorded};
use crate::store::protocol::{Check, Outcome};

/// The enforced checks that have a penalty, with their index.
fn penalized<'c, 'a>(
    checks: &'c [Check<'a>],
) -> impl Iterator<Item = (u8, (u64, &'a Penalty))> + 'c {
    checks
        .iter()
        .enumerate()
        .filter(|(_, c)| !c.shadow)
        .filter_map(|(i, c)| Some((i as u8, c.penalty?)))
}

/// The refusal for a ban in force on one of `checks` at `now`, if any.
pub(crate) fn ban_in_force(bans: &PenaltyBox, now: u64, checks: &[Check<'_>]) -> Option<Outcome> {
    penalized(checks).find_map(|(i, (key, _))| {
        bans.banned_for(key, now)
            .map(|left| Outcome::banned(i, left))
    })
}

/// Counts a refusal at `now` against the penalty of each enforced check
/// whose windows refused, and marks the first ban it starts.
pub(crate) fn count_refusal(
    bans: &PenaltyBox,
    now: u64,
    checks: &[Check<'_>],
    outcome: &mut Outcome,
) {
    if outcome.admitted() || outcome.is_capacity_refusal() || outcome.ban().is_some() {
        return;
    }
    let mut started = None;
    let mut in_force = None;
    for (i, (key, penalty)) in penalized(checks) {
        let refused = outcome
            .windows()
            .iter()
            .any(|w| w.check == i && w.retry_after > 0);
        if refused {
            match bans.record(key, now, penalty) {
                Some(Recorded::Counted(Some(ban))) => started = started.or(Some((i, ban))),
                Some(Recorded::Banned(left)) => in_force = in_force.or(Some((i, left))),
                Some(Recorded::Counted(None)) | None => {}
            }
        }
    }
    if let Some((i, ban)) = started {
        outcome.mark_ban_started(i, ban);
    } else if let Some((i, left)) = in_force {
        // A ban that another request's refusal started since this one
        // looked: it answers this refusal, which it did not count.
        *outcome = Outcome::banned(i, left);
    }
}
