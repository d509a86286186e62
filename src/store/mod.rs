//! Where counts live.
//!
//! A [`Store`] decides one request in one atomic step over every
//! `(key, window)` pair that applies to it: either every window of every
//! applying limit admits the request and all of them are charged, or the
//! request is refused and nothing is charged anywhere.
//!
//! [`MemoryStore`] is the default: counts in this process's memory, decided
//! on the spot, so the layer calls the inner service straight away without
//! boxing or allocating. The Redis store (feature `redis`) shares counts
//! between processes. The types a store decides with are the
//! [`protocol`] module's, which is unstable: the stores are the stable API,
//! not the protocol between them and the layer.
//!
//! ```
//! use tower_ratelimit::store::MemoryStore;
//! use tower_ratelimit::{key::Header, Limit, Policy, Quota, RateLimitLayer, Window};
//!
//! let policy = Policy::builder()
//!     .limit(Limit::new("per_key", Header::parse("X-API-Key").unwrap())
//!         .quota(Quota::new(Window::per_minute(60))))
//!     .build()
//!     .unwrap();
//! let store = MemoryStore::with_max_entries(100_000);
//! let layer = RateLimitLayer::with_store(policy, store);
//! assert!(layer.store().max_entries() >= 100_000);
//! ```

pub(crate) mod algorithm;
mod error;
mod memory;
mod outcome;
mod overflow;
mod peeked;
#[doc(hidden)]
pub mod protocol;
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub mod redis;
mod shared_slots;

use std::future::Future;

pub use self::error::StoreError;
#[cfg(feature = "redis")]
pub use self::redis::{FailurePolicy, RedisStore};
pub use memory::MemoryStore;

use self::peeked::unsupported;
use self::protocol::{Answer, Check, Decided, Outcome, Peeked, SharedSlots};

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
///
/// Use the stores this crate ships. Implementing `Store` yourself means
/// following the [`protocol`] module, which is **unstable**: it is not
/// covered by semantic versioning and may change in any release.
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
    /// it; `None` (the default) leaves them to the layer's own limiter.
    fn shared_slots(&self) -> Option<&dyn SharedSlots> {
        None
    }

    /// Where `checks` stand at `now`, consuming nothing and counting no
    /// refusal: each window as a request of cost 0 would find it (counts a
    /// bucket has at other rates converted as [`Store::check`] would), and
    /// the bans in force on the checks' penalty keys. For operators (the
    /// admin API), not on a request's path. The default answers a
    /// [`StoreError`] saying this store cannot peek.
    fn peek(&self, now: u64, checks: &[Check<'_>]) -> Answer<Peeked> {
        let _ = (now, checks);
        unsupported("peek")
    }

    /// Drops the counts of the checks' buckets, in every window, and the
    /// bans and counted refusals of their penalty keys, at `now`: their next
    /// request is decided as a fresh key's. Answers whether it is: `false`
    /// when a bucket's next request is still decided by a live count it
    /// shares with other buckets (the memory store's overflow sketch, at its
    /// cap), which cannot be forgotten for one bucket alone. For operators (the
    /// admin API), not on a request's path. The default answers a
    /// [`StoreError`] saying this store cannot forget.
    fn forget(&self, now: u64, checks: &[Check<'_>]) -> Answer<bool> {
        let _ = (now, checks);
        unsupported("forget")
    }
}
