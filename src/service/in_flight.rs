//! In-flight caps: taking a request's slots, at once or after a wait.

use smallvec::SmallVec;

use super::applied::Claim;
use crate::concurrency::{ConcurrencyLimiter, Mode, Permit};
use crate::decision::WindowReport;

/// The slots a request holds so far.
pub(super) type Held = SmallVec<[Permit; 1]>;

/// How taking a request's slots at once went.
pub(super) enum Taken {
    /// Every enforced cap gave a slot (shadow caps that had none are
    /// marked in `shadow_busy`).
    All,
    /// Claim `.0` has no free slot and its mode lets the request wait.
    Wait(usize),
    /// Claim `.0` has no free slot and the request cannot wait.
    Busy(usize),
}

/// Takes the slots of `claims[from..]` that are free now, in order (the
/// order is the policy's, so two requests never wait on each other's
/// slots); stops at the first that is not.
pub(super) fn take_now(
    limiter: &ConcurrencyLimiter,
    claims: &[Claim],
    from: usize,
    held: &mut Held,
    shadow_busy: &mut u64,
) -> Taken {
    for (i, claim) in claims.iter().enumerate().skip(from) {
        match limiter.try_acquire(claim.key, claim.cap) {
            Ok(permit) => held.push(permit),
            // A shadow cap never makes a request wait or fail.
            Err(_) if claim.shadow => *shadow_busy |= 1 << i,
            Err(_) if can_wait(claim.mode) => return Taken::Wait(i),
            Err(_) => return Taken::Busy(i),
        }
    }
    Taken::All
}

fn can_wait(mode: Mode) -> bool {
    matches!(mode, Mode::Queue { max_queued, max_wait } if max_queued > 0 && !max_wait.is_zero())
}

/// What the headers say about claim `claim`'s cap now.
pub(super) fn cap_report(
    limiter: &ConcurrencyLimiter,
    claim: &Claim,
    now_secs: u64,
) -> WindowReport {
    let in_flight = limiter.in_flight(claim.key);
    WindowReport {
        limit_index: claim.origin.0,
        route_index: claim.origin.1,
        window_index: 0,
        limit: claim.cap,
        remaining: claim.cap.saturating_sub(in_flight),
        reset: now_secs,
        reset_after: 0,
        period: 0,
        concurrent: true,
    }
}
