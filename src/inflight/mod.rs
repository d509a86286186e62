//! Keyed in-flight caps: how many requests of a key may be under way at
//! once, set with [`Quota::in_flight`](crate::Quota::in_flight).
//!
//! The engine is [`limiter`]: a sharded, per-key count of the slots in use
//! with a first-come-first-served line for requests that may wait. A store
//! shared by several processes may keep the slots instead (it implements
//! [`SharedSlots`](crate::store::protocol::SharedSlots)), so that every
//! process counts each key's slots together; the layer then asks it rather
//! than its own limiter (the glue is the service's `in_flight` step).

mod limiter;

pub use limiter::{Busy, Mode, Permit, SlotFuture};
pub(crate) use limiter::{ConcurrencyLimiter, Source};
