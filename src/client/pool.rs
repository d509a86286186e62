//! [`SenderPool`]: several senders (SMS numbers), each paced on its own;
//! each message goes to the one free soonest.

use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;

use super::pace::{PaceError, Pacer};
use crate::error::ConfigError;
use crate::policy::{Quota, Window};
use crate::store::{MemoryStore, Store};

/// Spreads work over several senders (Nixflex: SMS at 1 message a second
/// per sending number, round-robin over the account's numbers), each paced
/// under the pacer's quota as its own key.
///
/// [`SenderPool::next`] picks the sender that is free soonest: it asks the
/// store for each sender in turn, starting after the one it picked last, and
/// takes the first that admits; when none does, it sleeps until the soonest
/// would and asks again. So senders that are free alike take turns (round
/// robin), no sender exceeds its quota, and callers are served first come,
/// first served, within the pacer's `max_queue` (counted over the whole
/// pool) and `max_wait`. Dropping a waiting `next` takes no turn.
///
/// ```
/// use tower_ratelimit::client::SenderPool;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let pool = SenderPool::new(["+15550001", "+15550002"])?;
/// assert_eq!(pool.next().await?, "+15550001");
/// assert_eq!(pool.next().await?, "+15550002");
/// # Ok(())
/// # }
/// ```
pub struct SenderPool<St = MemoryStore> {
    pacer: Arc<Pacer<St>>,
    senders: Vec<String>,
    /// Where the next search starts: after the sender picked last.
    cursor: Mutex<usize>,
    /// The caller whose turn it is holds this.
    turn: tokio::sync::Mutex<()>,
    /// The callers being served or waiting.
    queued: AtomicUsize,
}

impl SenderPool<MemoryStore> {
    /// A pool of `senders`, each paced at 1 a second, counted in memory.
    /// Fails when there is no sender, or one is empty or named twice.
    pub fn new<I, S>(senders: I) -> Result<Self, ConfigError>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let pacer = Pacer::new(Quota::new(Window::per_second(1)))?.name("sender");
        Self::with_pacer(pacer, senders)
    }
}

impl<St: Store> SenderPool<St> {
    /// A pool of `senders`, each paced by `pacer` (its quota, store, name,
    /// `max_queue` and `max_wait`) under its own name as the key. Pools
    /// that share a pacer (an `Arc<Pacer>`) share each sender's pace.
    pub fn with_pacer<I, S>(
        pacer: impl Into<Arc<Pacer<St>>>,
        senders: I,
    ) -> Result<Self, ConfigError>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let senders: Vec<String> = senders.into_iter().map(Into::into).collect();
        if senders.is_empty() {
            return Err(ConfigError::invalid("senders", "a pool needs a sender"));
        }
        for (i, sender) in senders.iter().enumerate() {
            if sender.is_empty() {
                return Err(ConfigError::invalid("senders", "a sender's name is empty"));
            }
            if senders[..i].contains(sender) {
                return Err(ConfigError::invalid(
                    "senders",
                    format!("`{sender}` is named twice"),
                ));
            }
        }
        Ok(SenderPool {
            pacer: pacer.into(),
            senders,
            cursor: Mutex::new(0),
            turn: tokio::sync::Mutex::new(()),
            queued: AtomicUsize::new(0),
        })
    }

    /// The senders, in the order given.
    pub fn senders(&self) -> &[String] {
        &self.senders
    }

    /// Waits for the sender free soonest, counts one turn of it, and names
    /// it.
    pub async fn next(&self) -> Result<&str, PaceError> {
        let deadline = self.pacer.deadline();
        let _place = Queued::join(&self.queued, self.pacer.max_queue_len())?;
        let Ok(_turn) = tokio::time::timeout_at(deadline, self.turn.lock()).await else {
            return Err(self.pacer.too_long());
        };
        loop {
            let start = *self.cursor.lock();
            let mut soonest = u64::MAX;
            for step in 0..self.senders.len() {
                let i = (start + step) % self.senders.len();
                let outcome = self.pacer.decide(&self.senders[i]).await?;
                if outcome.admitted() {
                    *self.cursor.lock() = (i + 1) % self.senders.len();
                    return Ok(&self.senders[i]);
                }
                soonest = soonest.min(outcome.retry_after());
            }
            self.pacer.sleep_for(soonest, deadline).await?;
        }
    }
}

/// One caller counted in a pool's line, until dropped.
struct Queued<'a>(&'a AtomicUsize);

impl<'a> Queued<'a> {
    fn join(queued: &'a AtomicUsize, max: usize) -> Result<Self, PaceError> {
        queued
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .map_err(|_| PaceError::QueueFull { max_queue: max })?;
        Ok(Queued(queued))
    }
}

impl Drop for Queued<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl<St> fmt::Debug for SenderPool<St> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SenderPool")
            .field("pacer", &self.pacer)
            .field("senders", &self.senders)
            .finish_non_exhaustive()
    }
}
