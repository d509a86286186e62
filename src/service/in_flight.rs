//! In-flight caps: taking a request's slots, at once or after a wait, from
//! the layer's own limiter or from a store that shares them.

use super::applied::Claim;
use super::Shared;
use crate::body::{hold, Slots};
use crate::decision::Basis;
use crate::inflight::{Busy, ConcurrencyLimiter, Mode, Permit, Source};
use crate::store::Store;

#[cfg(feature = "client")]
impl<St: Store> Shared<St> {
    /// A slot of `account`'s in-flight cap of `cap` in the limit named
    /// `limit`, counted with the requests that cap counts (in the store's
    /// shared slots if it has them): `account` is the key as the limit
    /// reads it from a request. The cap is never above the one the limit
    /// gives the account's requests (its override's, or the routes' own: a
    /// plan a request carries is not known here). `None` if the policy has
    /// no such limit.
    pub(crate) fn account_slot(
        &self,
        limit: &str,
        account: &str,
        cap: u32,
        mode: Mode,
    ) -> Option<crate::inflight::SlotFuture> {
        let policy = &self.policy.inner;
        let (index, compiled) = policy.limit(limit)?;
        // Read as the limit reads a request's key, so that the account's
        // requests and its jobs share their slots.
        let key = compiled
            .key
            .key_from_text(account)
            .unwrap_or_else(|_| crate::key::Key::from(account));
        let id = compiled.key_id(&policy.secret, &key);
        let own = policy.override_of(index, id);
        let limit_cap = (compiled.routes.iter())
            .filter_map(|route| route.quota_of(own.as_ref()).in_flight_cap())
            .min();
        let cap = limit_cap.map_or(cap, |most| cap.min(most));
        let key = crate::key::KeySecret::derive(id, compiled.concurrency_domain);
        Some(match self.store.shared_slots() {
            Some(slots) => slots.acquire(key, id, cap, mode, &compiled.name),
            None => Box::pin(self.in_flight.acquire(key, cap, mode)),
        })
    }
}

/// How taking a request's slots at once went.
pub(super) enum Taken {
    /// Every enforced cap gave a slot (shadow caps that had none are
    /// marked in `shadow_busy`).
    All,
    /// Claim `.0` has no free slot and its mode lets the request wait.
    Wait(usize),
    /// Claim `.0` has no free slot and the request cannot wait.
    Refused(usize, Busy),
}

/// Takes the slots of `claims[from..]` that are free now in the layer's
/// own limiter, in order (the order of their slot counts' keys, the same
/// under every policy, so two requests never wait on each other's slots);
/// stops at the first that is not.
pub(super) fn take_now(
    limiter: &ConcurrencyLimiter,
    claims: &[Claim],
    from: usize,
    held: &mut Slots,
    shadow_busy: &mut u64,
) -> Taken {
    for (i, claim) in claims.iter().enumerate().skip(from) {
        match limiter.try_acquire(claim.key, claim.cap) {
            Ok(permit) => hold(held, permit),
            // A shadow cap never makes a request wait or fail.
            Err(_) if claim.shadow => *shadow_busy |= 1 << i,
            Err(_) if can_wait(claim.mode) => return Taken::Wait(i),
            Err(busy) => return Taken::Refused(i, busy),
        }
    }
    Taken::All
}

/// Takes the slots of `claims[from..]`, waiting where a claim's mode lets
/// it: in the store's shared slots if it has them, else in the layer's own
/// limiter (where `claims[from]` is the one found busy by [`take_now`]).
/// On a refusal, names the claim that got no slot and why.
pub(super) async fn take_waiting<St: Store>(
    shared: &Shared<St>,
    claims: &[Claim],
    mut from: usize,
    held: &mut Slots,
    shadow_busy: &mut u64,
) -> Result<(), (usize, Busy)> {
    if let Some(slots) = shared.store.shared_slots() {
        let limits = &shared.policy.inner.limits;
        for (i, claim) in claims.iter().enumerate().skip(from) {
            let limit = &limits[usize::from(claim.origin.0)].name;
            let mode = if claim.shadow {
                Mode::Refuse
            } else {
                claim.mode
            };
            match slots
                .acquire(claim.key, claim.principal, claim.cap, mode, limit)
                .await
            {
                Ok(permit) => hold(held, permit),
                Err(_) if claim.shadow => *shadow_busy |= 1 << i,
                Err(busy) => return Err((i, busy)),
            }
        }
        return Ok(());
    }
    let limiter = &shared.in_flight;
    loop {
        let claim = &claims[from];
        match limiter.acquire(claim.key, claim.cap, claim.mode).await {
            Ok(permit) => hold(held, permit),
            Err(busy) => return Err((from, busy)),
        }
        match take_now(limiter, claims, from + 1, held, shadow_busy) {
            Taken::All => return Ok(()),
            Taken::Wait(i) => from = i,
            Taken::Refused(i, busy) => return Err((i, busy)),
        }
    }
}

fn can_wait(mode: Mode) -> bool {
    matches!(mode, Mode::Queue { max_queued, max_wait } if max_queued > 0 && !max_wait.is_zero())
}

/// The requests in flight that `claim`'s headers report: those when its
/// slot was granted, or the whole cap when it got none; `None` when a
/// failure policy stood in for the shared count (the slot let through
/// uncounted, or taken in this process's share), so that no made-up
/// number is reported.
pub(super) fn in_flight_of(claim: &Claim, held: &[Permit]) -> Option<u32> {
    match held.iter().find(|p| p.key() == claim.key) {
        // Uncounted, or counted in this process's share only: the cap's
        // numbers would be made up.
        Some(permit) if permit.source() != Source::Counted => None,
        Some(permit) => Some(permit.in_flight()),
        None => Some(claim.cap),
    }
}

/// What stood in for the store's count of the slots `held`, if anything
/// did: a failure policy's fallback or pass.
pub(super) fn slots_basis(held: &[Permit]) -> Option<Basis> {
    held.iter().find_map(|permit| match permit.source() {
        Source::Counted => None,
        Source::Fallback => Some(Basis::LocalFallback),
        Source::FailedOpen => Some(Basis::FailedOpen),
    })
}
