//! In-flight slots kept by a store, so that processes share one count.

use super::protocol::Answer;
use super::StoreError;
#[cfg(doc)]
use crate::inflight::{Busy, Permit};
use crate::inflight::{Mode, SlotFuture};

/// In-flight caps counted by a store rather than by the layer's own
/// limiter, so that every process sharing the store shares each key's
/// slots.
///
/// A store offers this through [`Store::shared_slots`](super::Store::shared_slots);
/// the layer then asks it, not its own limiter, for every capped limit's
/// slot. The rules are the layer's own limiter's: at most `max` slots of
/// `key` at once, the latest `max` wins, a line served first come first
/// served when `mode` queues, and dropping the [`Permit`] frees the slot. A
/// store that cannot answer decides by its failure policy for `limit`: a
/// permit that holds nothing ([`Permit::failed_open`]), [`Busy::Unavailable`]
/// (fail closed), or a local share ([`Permit::fallen_back`], refused with
/// [`Busy::LocalShareFull`]), so that the decision says what stood in for
/// the count.
pub trait SharedSlots: Send + Sync {
    /// Asks for a slot of `key` (a keyed hash) under a cap of `max`, for the
    /// limit named `limit`, waiting as `mode` says. `principal` is the
    /// request's key hashed as in [`Check::principal`](super::protocol::Check::principal),
    /// for stores that keep one principal's counts together.
    fn acquire(&self, key: u64, principal: u64, max: u32, mode: Mode, limit: &str) -> SlotFuture;

    /// How many slots of `key` are held now, by every process: for
    /// operators (the admin API), not on a request's path. The default
    /// answers a [`StoreError`] saying this store cannot count them.
    fn in_flight(&self, key: u64, principal: u64) -> Answer<u32> {
        let _ = (key, principal);
        let error = StoreError::unsupported("this store cannot count its shared slots");
        Box::pin(std::future::ready(Err(error)))
    }
}
