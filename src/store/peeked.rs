//! What a store answers when asked about buckets off a request's path:
//! where they stand ([`Store::peek`](super::Store::peek)), and that it
//! forgot them ([`Store::forget`](super::Store::forget)).

use std::future::Future;
use std::pin::Pin;

use super::outcome::{Ban, WindowStatus};
use super::StoreError;

/// A store's answer to a question off a request's path, boxed: such
/// questions are rare (an operator's), so a remote store answers them
/// with any future.
pub type Answer<T> = Pin<Box<dyn Future<Output = Result<T, StoreError>> + Send + 'static>>;

/// Where checks stand, consuming nothing: each window as a request of cost
/// 0 would find it, and the bans in force.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Peeked {
    /// Each window of each check, in order: its limit, what remains and
    /// when it is full again (`retry_after` is 0).
    pub windows: Vec<WindowStatus>,
    /// The bans in force on the checks' penalty keys (`started` is false).
    pub bans: Vec<Ban>,
}

/// The [`Answer`] of a store that cannot `what`: an error that says so.
pub(crate) fn unsupported<T: Send + 'static>(what: &str) -> Answer<T> {
    let error = StoreError::unsupported(format!("this store cannot {what}"));
    Box::pin(std::future::ready(Err(error)))
}
