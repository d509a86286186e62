//! The outbound half (feature `client`): the retry policy against the
//! crate's own layer, the pacer, the sender pool and campaign waves under
//! paused time, and two pacers sharing one pace through a real Redis.

#![cfg(feature = "client")]

#[cfg(feature = "redis")]
#[macro_use]
#[path = "../redis/support.rs"]
mod support;

mod pace;
mod pool;
#[cfg(feature = "redis")]
mod redis;
mod retry;
mod waves;

/// Milliseconds since `start`, on Tokio's clock.
fn ms_since(start: tokio::time::Instant) -> u64 {
    start.elapsed().as_millis() as u64
}
