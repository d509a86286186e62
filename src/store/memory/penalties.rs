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

/// The refusal for the bans in force on `checks` at `now`, if any: the
/// longest answers (of equal ones, the first check's).
pub(crate) fn ban_in_force(bans: &PenaltyBox, now: u64, checks: &[Check<'_>]) -> Option<Outcome> {
    penalized(checks)
        .filter_map(|(i, (key, _))| Some((i, bans.banned_for(key, now)?)))
        .max_by_key(|&(i, left)| (left, std::cmp::Reverse(i)))
        .map(|(i, left)| Outcome::banned(i, left))
}

/// Counts a refusal at `now` against the penalty of each enforced check
/// whose windows refused, and marks every ban it starts (the longest
/// answers).
pub(crate) fn count_refusal(
    bans: &PenaltyBox,
    now: u64,
    checks: &[Check<'_>],
    outcome: &mut Outcome,
) {
    if outcome.admitted() || outcome.is_capacity_refusal() || outcome.ban().is_some() {
        return;
    }
    let mut started = false;
    let mut in_force: Option<(u8, u64)> = None;
    for (i, (key, penalty)) in penalized(checks) {
        let refused = outcome
            .windows()
            .iter()
            .any(|w| w.check == i && w.retry_after > 0);
        if refused {
            match bans.record(key, now, penalty) {
                Some(Recorded::Counted(Some(ban))) => {
                    outcome.mark_ban_started(i, ban);
                    started = true;
                }
                Some(Recorded::Banned(left)) if in_force.is_none_or(|(_, l)| l < left) => {
                    in_force = Some((i, left));
                }
                Some(_) | None => {}
            }
        }
    }
    if started {
        return;
    }
    if let Some((i, left)) = in_force {
        // A ban that another request's refusal started since this one
        // looked: it answers this refusal, which it did not count.
        *outcome = Outcome::banned(i, left);
    }
}
