//! Where counts live.
//!
//! A [`Store`] decides one request in one atomic step over every
//! `(key, window)` pair that applies to it: either every window of every
//! applying limit admits the request and all of them are charged, or the
//! request is refused and nothing is charged anywhere.
//!
//! [`MemoryStore`] is the default. A store that must talk to a server returns
//! [`Decided::Pending`] with a future; a store that decides on the spot (like
//! the memory store) returns [`Decided::Ready`], and the layer then calls the
//! inner service straight away without boxing or allocating.
//!
//! ```
//! use tower_ratelimit::store::{Check, Decided, MemoryStore, Store};
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

pub(crate) mod algorithm;
mod memory;
mod outcome;
mod overflow;
mod penalties;
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub mod redis;
mod shared_slots;

use std::future::Future;

#[cfg(feature = "redis")]
pub use self::redis::{FailurePolicy, RedisStore};
pub use memory::{MemoryStore, MemoryStoreBuilder};
pub use outcome::{Ban, Outcome, StoreError, WindowStatus};
pub use shared_slots::{SharedSlots, SlotFuture};

use crate::penalty::Penalty;
use crate::policy::Quota;

/// One limit's part of a request: whose bucket, which quota.
#[derive(Debug, Clone, Copy)]
pub struct Check<'a> {
    /// The bucket: a keyed hash of the limit, its route and the request's key.
    pub bucket: u64,
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
    /// the limit's penalty domain, and the rule. See [`Store`] for what a
    /// store does with it.
    pub penalty: Option<(u64, &'a Penalty)>,
}

impl<'a> Check<'a> {
    /// A check of `quota` for `bucket`.
    pub fn new(bucket: u64, quota: &'a Quota) -> Self {
        Check {
            bucket,
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

/// A place where counts are kept and decisions are made.
///
/// `check` must decide all `checks` atomically: if any window of any
/// enforced check refuses, no state changes; otherwise every enforced check
/// is charged, and the shadow checks are charged too if all of their windows
/// admit (else none of them is). `now` is the layer's monotonic clock in
/// nanoseconds since the Unix epoch; a remote store may use its own clock
/// instead, as long as the durations it reports are measured from the moment
/// of its decision.
///
/// A store also keeps the [penalties](crate::penalty) of its checks, in the
/// same step: an enforced check whose penalty key is banned at `now` refuses
/// the request, charging nothing, and the outcome says so
/// ([`Outcome::ban`]); a request refused by its windows counts one refusal
/// against the penalty of each enforced check whose windows refused it, and
/// the outcome names the first ban that starts. (A refusal for the store's
/// memory cap counts against no one.)
pub trait Store: Send + Sync + 'static {
    /// The future of a decision that is not made on the spot. Stores that
    /// always answer at once use [`std::future::Pending`]`<...>` or any never-built type.
    type Pending: Future<Output = Result<Outcome, StoreError>> + Send + 'static;

    /// Decides one request.
    fn check(&self, now: u64, checks: &[Check<'_>]) -> Decided<Self::Pending>;

    /// Whether `key` (a penalty key, as in [`Check::penalty`]) is known to
    /// be banned at `now`, and for how many more nanoseconds: a quick look
    /// before any slot is taken or any check made. [`Store::check`] remains
    /// the authority; a store shared by several processes answers from the
    /// bans it has seen. The default knows of none.
    fn banned_for(&self, key: u64, now: u64) -> Option<u64> {
        let _ = (key, now);
        None
    }

    /// Whether other processes may share this store's counts (a Redis
    /// store, say). The layer then warns when its policy's key secret is
    /// random, as such processes would count each key apart. The default is
    /// `false`.
    fn shares_counts(&self) -> bool {
        false
    }

    /// The in-flight slots this store keeps for every process that shares
    /// it; `None` (the default) leaves them to the layer's own
    /// [`ConcurrencyLimiter`](crate::concurrency::ConcurrencyLimiter).
    fn shared_slots(&self) -> Option<&dyn SharedSlots> {
        None
    }
}
