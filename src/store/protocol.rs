//! The protocol between the layer and a store. **Unstable: not covered by
//! semantic versioning.** It may change in any release, minor or patch.
//!
//! These are the types a [`Store`](super::Store) works with: the layer gives
//! it one [`Check`] per applying limit and it answers [`Decided`], now or
//! later, with an [`Outcome`] (a [`WindowStatus`] per window, and the
//! [`Ban`] that refused, if any). A store that keeps in-flight slots for
//! several processes implements [`SharedSlots`], handing out [`Permit`]s or
//! answering [`Busy`]. The stores this crate ships, [`MemoryStore`](super::MemoryStore)
//! and the Redis store, are the stable way to keep counts; implement
//! [`Store`](super::Store) yourself only if you can follow this module's
//! changes.
//!
//! ```
//! use tower_ratelimit::store::protocol::{Check, Decided};
//! use tower_ratelimit::store::{MemoryStore, Store};
//! use tower_ratelimit::{Quota, Window};
//!
//! let store = MemoryStore::new();
//! let quota = Quota::new(Window::per_minute(1));
//! let check = [Check::new(42, &quota)];
//! let now = 1_700_000_000_000_000_000;
//! let Decided::Ready(Ok(first)) = store.check(now, &check) else { unreachable!() };
//! let Decided::Ready(Ok(second)) = store.check(now, &check) else { unreachable!() };
//! assert!(first.admitted() && !second.admitted());
//! ```

pub use super::outcome::{Ban, Outcome, WindowStatus};
pub use super::peeked::{Answer, Peeked};
#[cfg(feature = "redis")]
pub use super::redis::PendingDecision;
pub use super::shared_slots::SharedSlots;
pub use super::StoreError;
pub use crate::inflight::{Busy, Mode, Permit, SlotFuture};

use crate::penalty::Penalty;
use crate::policy::Quota;

/// One limit's part of a request: whose bucket, which quota.
#[derive(Debug, Clone, Copy)]
pub struct Check<'a> {
    /// The bucket: a keyed hash of the limit, its route and the request's key.
    pub bucket: u64,
    /// Whose key this is: the keyed hash of the request's key, the same for
    /// every limit keyed the same way (0 when unknown). A store shared
    /// across shards keeps all of one principal's counts together (the
    /// Redis store's hash tag).
    pub principal: u64,
    /// The windows, algorithm and cost that apply.
    pub quota: &'a Quota,
    /// A shadow check never refuses the request: it is charged only when the
    /// request is admitted and it would have admitted it too, and its verdict
    /// is reported in [`Outcome::shadow_refused`].
    pub shadow: bool,
    /// The name of the limit the check belongs to (empty when unknown), for
    /// stores whose behaviour differs per limit (a failure policy, say).
    pub limit: &'a str,
    /// The route's default quota, when `quota` is another (a plan's or a
    /// key's own). A key's counts must survive a change of its quota: when a
    /// bucket's windows were last charged at other rates, the store carries
    /// the number of requests used over to `quota`'s windows of the same
    /// period before deciding (and keeps them converted whatever it
    /// decides). The memory store remembers the rates only of buckets whose
    /// quota is not `base`; a store may also keep each window's rate beside
    /// its state and ignore this.
    pub base: &'a Quota,
    /// The limit's penalty, if it has one: the key's 64-bit keyed hash in
    /// the limit's penalty domain, and the rule. See [`Store`](super::Store) for what a
    /// store does with it.
    pub penalty: Option<(u64, &'a Penalty)>,
}

impl<'a> Check<'a> {
    /// A check of `quota` for `bucket`.
    pub fn new(bucket: u64, quota: &'a Quota) -> Self {
        Check {
            bucket,
            principal: 0,
            quota,
            shadow: false,
            limit: "",
            base: quota,
            penalty: None,
        }
    }

    /// A shadow check (see [`Check::shadow`](Check#structfield.shadow)).
    pub fn shadow(bucket: u64, quota: &'a Quota) -> Self {
        Check {
            shadow: true,
            ..Check::new(bucket, quota)
        }
    }

    /// The same check, on a route whose default quota is `base` (see
    /// [`Check::base`](Check#structfield.base)).
    #[must_use]
    pub fn based_on(self, base: &'a Quota) -> Self {
        Check { base, ..self }
    }

    /// The same check, under `penalty` for the key `key` (see
    /// [`Check::penalty`](Check#structfield.penalty)).
    #[must_use]
    pub fn with_penalty(self, key: u64, penalty: &'a Penalty) -> Self {
        Check {
            penalty: Some((key, penalty)),
            ..self
        }
    }

    /// The same check, for the key whose hash is `principal` (see
    /// [`Check::principal`](Check#structfield.principal)).
    #[must_use]
    pub fn of_principal(self, principal: u64) -> Self {
        Check { principal, ..self }
    }

    /// The same check, naming the limit it belongs to.
    #[must_use]
    pub fn in_limit(self, limit: &'a str) -> Self {
        Check { limit, ..self }
    }
}

/// A store's answer: now, or later.
#[derive(Debug)]
pub enum Decided<P> {
    /// The decision is made.
    Ready(Result<Outcome, StoreError>),
    /// The decision is under way; the layer awaits this future.
    Pending(P),
}
