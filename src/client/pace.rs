//! [`Pacer`]: a [`Quota`] that makes callers wait their turn instead of
//! refusing them, and [`PaceLayer`], which paces a client's requests with it.

use std::collections::HashMap;
use std::error::Error;
use std::fmt;
use std::future::{poll_fn, Future};
use std::hash::Hasher;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::Request;
use parking_lot::Mutex;
use siphasher::sip::SipHasher13;
use tokio::time::Instant;
use tower_layer::Layer;
use tower_service::Service;

use super::jitter::SplitMix;
use crate::clock::{Clock, SystemClock, LATEST};
use crate::error::ConfigError;
use crate::policy::Quota;
use crate::store::protocol::{Check, Decided, Outcome};
use crate::store::{MemoryStore, Store, StoreError};

/// Why a paced caller did not get its turn.
#[derive(Debug)]
#[non_exhaustive]
pub enum PaceError {
    /// `max_queue` callers of the key were already being paced.
    QueueFull {
        /// The pacer's [`Pacer::max_queue`].
        max_queue: usize,
    },
    /// The caller's turn would not come within the pacer's `max_wait`.
    TooLong {
        /// The pacer's [`Pacer::max_wait`].
        max_wait: Duration,
    },
    /// The store could not decide.
    Store(StoreError),
}

impl fmt::Display for PaceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PaceError::QueueFull { max_queue } => {
                write!(f, "{max_queue} callers already wait for this key's turn")
            }
            PaceError::TooLong { max_wait } => {
                write!(f, "this key's next turn is more than {max_wait:?} away")
            }
            PaceError::Store(e) => write!(f, "the pacing store failed: {e}"),
        }
    }
}

impl Error for PaceError {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        match self {
            PaceError::Store(e) => Some(e),
            _ => None,
        }
    }
}

/// The most a paced caller wakes after its turn has come, at random (10 ms;
/// see [`Pacer`]).
const MAX_JITTER_NANOS: u64 = 10_000_000;

/// Paces work under a [`Quota`]: a caller over the quota waits for its turn
/// rather than being refused.
///
/// [`Pacer::wait`] asks the store, exactly as the server-side layer does
/// (an atomic check that charges only on admission); when refused, it sleeps
/// the store's `retry_after` and asks again. So it never admits more than
/// the quota's windows allow (for GCRA: at most `limit + floor(t / (period /
/// limit))` over any interval `t`), and processes that share a
/// `RedisStore` share one pace: give their pacers the same
/// [`Pacer::name`]. With such a store, a refused caller wakes a little
/// after the store's `retry_after`, at random (up to a sixteenth of the
/// wait, at most 10 ms), so that the pacers of several processes take the
/// turns of a shared pace in random order rather than the first winner
/// taking them all; in one process, turns come exactly on time.
///
/// In one process, each key's callers take turns first come, first served:
/// only the first asks the store; the others wait behind it, at most
/// [`Pacer::max_queue`] of them (then [`PaceError::QueueFull`]), each at
/// most [`Pacer::max_wait`] (then [`PaceError::TooLong`], at once when the
/// store's answer already says the turn is further away).
///
/// **Cancellation.** Dropping a waiting future leaves the line and takes no
/// turn: nothing is charged until the store admits, and the admission is
/// the future's last step. (With a remote store, a future dropped during
/// that last round trip may have been charged: the quota still holds.)
pub struct Pacer<St = MemoryStore> {
    quota: Quota,
    store: Arc<St>,
    clock: SystemClock,
    domain: String,
    max_queue: usize,
    max_wait: Duration,
    lines: Mutex<HashMap<String, Arc<Line>>>,
    /// The jitter of each wake-up (see [`Pacer::sleep_for`]).
    jitter: SplitMix,
}

/// The callers of one key: the one whose turn it is holds `turn`.
#[derive(Debug, Default)]
struct Line {
    turn: tokio::sync::Mutex<()>,
    /// How many callers are in the line (under the pacer's `lines` lock).
    len: Mutex<usize>,
}

impl Pacer<MemoryStore> {
    /// A pacer of `quota` that counts in this process's memory.
    ///
    /// Fails when the quota could never admit a request, has no window (an
    /// in-flight cap alone does not pace), or has an in-flight cap (a pacer
    /// counts turns, it holds no slots, so the cap would be ignored).
    pub fn new(quota: Quota) -> Result<Self, ConfigError> {
        Self::with_store(quota, MemoryStore::new())
    }
}

impl<St: Store> Pacer<St> {
    /// A pacer of `quota` that counts in `store` (a `RedisStore` shares the
    /// pace with other processes); fails as [`Pacer::new`] does.
    pub fn with_store(quota: Quota, store: St) -> Result<Self, ConfigError> {
        Self::with_shared_store(quota, Arc::new(store))
    }

    /// A pacer of `quota` that counts in a store shared with others; fails
    /// as [`Pacer::new`] does.
    pub fn with_shared_store(quota: Quota, store: Arc<St>) -> Result<Self, ConfigError> {
        quota.validate()?;
        if quota.windows().is_empty() {
            return Err(ConfigError::invalid(
                "windows",
                "a pacer needs a window: an in-flight cap alone does not pace",
            ));
        }
        if let Some(cap) = quota.in_flight_cap() {
            return Err(ConfigError::invalid(
                "in_flight",
                format!("a pacer holds no in-flight slots: remove the in-flight cap of {cap}"),
            ));
        }
        Ok(Pacer {
            quota,
            store,
            clock: SystemClock::new(),
            domain: String::from("pace"),
            max_queue: 1_000,
            max_wait: Duration::from_secs(60),
            lines: Mutex::new(HashMap::new()),
            jitter: SplitMix::from_os(),
        })
    }

    /// Names the pace (default `"pace"`): pacers with the same name and
    /// store share each key's turns; pacers with other names count apart.
    #[must_use]
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.domain = name.into();
        self
    }

    /// The most callers of one key paced at once in this process, the one
    /// whose turn it is included (default 1,000).
    #[must_use]
    pub fn max_queue(mut self, max: usize) -> Self {
        self.max_queue = max;
        self
    }

    /// The longest a caller waits for its turn (default 60 s);
    /// `Duration::MAX` (or any wait past some 30 years) is no bound.
    #[must_use]
    pub fn max_wait(mut self, max: Duration) -> Self {
        self.max_wait = max;
        self
    }

    /// The quota.
    pub fn quota(&self) -> &Quota {
        &self.quota
    }

    /// The store.
    pub fn store(&self) -> &Arc<St> {
        &self.store
    }

    /// A layer that paces each request under the key `key` reads from it;
    /// a request for which `key` answers `None` is not paced.
    pub fn layer<K>(self, key: K) -> PaceLayer<K, St> {
        PaceLayer {
            pacer: Arc::new(self),
            key,
        }
    }

    /// Waits for `key`'s next turn: resolves once the store has counted it.
    pub async fn wait(&self, key: &str) -> Result<(), PaceError> {
        let deadline = self.deadline();
        let place = self.join(key)?;
        let Ok(_turn) = tokio::time::timeout_at(deadline, place.line.turn.lock()).await else {
            return Err(self.too_long());
        };
        loop {
            let outcome = self.decide(key).await?;
            if outcome.admitted() {
                return Ok(());
            }
            self.sleep(&outcome, deadline).await?;
        }
    }

    /// When a caller that starts now must have had its turn.
    pub(crate) fn deadline(&self) -> Instant {
        let now = Instant::now();
        let unbounded = Duration::from_secs(86_400 * 365 * 30);
        now.checked_add(self.max_wait.min(unbounded)).unwrap_or(now)
    }

    pub(crate) fn too_long(&self) -> PaceError {
        PaceError::TooLong {
            max_wait: self.max_wait,
        }
    }

    pub(crate) fn max_queue_len(&self) -> usize {
        self.max_queue
    }

    /// Sleeps until a refused `outcome` says the store may admit, or fails
    /// at once if that is after `deadline`.
    pub(crate) async fn sleep(
        &self,
        outcome: &Outcome,
        deadline: Instant,
    ) -> Result<(), PaceError> {
        self.sleep_for(outcome.retry_after(), deadline).await
    }

    /// Sleeps `nanos` (at least 1), or fails at once if that ends after
    /// `deadline`; then, with a store that other processes share, a little
    /// more at random: up to a sixteenth of `nanos`, at most
    /// [`MAX_JITTER_NANOS`] (not past `deadline`). Pacers of several
    /// processes that share a pace wake for the same turn: without the
    /// jitter the one that won a turn woke first for the next one too, and
    /// took every turn for seconds on end. (Each late wake-up delays the
    /// pace by as much: some 0.5 % at the cap.)
    pub(crate) async fn sleep_for(&self, nanos: u64, deadline: Instant) -> Result<(), PaceError> {
        let at = Instant::now().checked_add(Duration::from_nanos(nanos.max(1)));
        match at {
            Some(at) if at <= deadline => {
                let jitter = if self.store.shares_counts() {
                    self.jitter.up_to((nanos / 16).min(MAX_JITTER_NANOS))
                } else {
                    0
                };
                let later = at.checked_add(Duration::from_nanos(jitter));
                tokio::time::sleep_until(later.map_or(deadline, |t| t.min(deadline))).await;
                Ok(())
            }
            _ => Err(self.too_long()),
        }
    }

    /// Asks the store to count one turn of `key` now.
    pub(crate) async fn decide(&self, key: &str) -> Result<Outcome, PaceError> {
        let bucket = self.bucket(key);
        let checks = [Check::new(bucket, &self.quota)];
        let decided = match self.store.check(self.clock.now().min(LATEST), &checks) {
            Decided::Ready(result) => result,
            Decided::Pending(pending) => pending.await,
        };
        decided.map_err(PaceError::Store)
    }

    /// The bucket of `key`: the same in every process, for the same name.
    fn bucket(&self, key: &str) -> u64 {
        let mut h = SipHasher13::new_with_keys(0x7061_6365_5f63_6c69, 0x656e_745f_7475_726e);
        h.write(self.domain.as_bytes());
        h.write_u8(0xff);
        h.write(key.as_bytes());
        h.finish()
    }

    /// Joins `key`'s line, unless it is full.
    fn join(&self, key: &str) -> Result<Place<'_, St>, PaceError> {
        let mut lines = self.lines.lock();
        let line = Arc::clone(lines.entry(key.to_owned()).or_default());
        let mut len = line.len.lock();
        if *len >= self.max_queue {
            let empty = *len == 0;
            drop(len);
            if empty {
                lines.remove(key);
            }
            return Err(PaceError::QueueFull {
                max_queue: self.max_queue,
            });
        }
        *len += 1;
        drop(len);
        Ok(Place {
            pacer: self,
            key: key.to_owned(),
            line,
        })
    }
}

/// A caller's place in a key's line; leaving it forgets the line once it
/// is empty.
struct Place<'a, St> {
    pacer: &'a Pacer<St>,
    key: String,
    line: Arc<Line>,
}

impl<St> Drop for Place<'_, St> {
    fn drop(&mut self) {
        let mut lines = self.pacer.lines.lock();
        let mut len = self.line.len.lock();
        *len -= 1;
        if *len == 0 {
            lines.remove(&self.key);
        }
    }
}

impl<St> fmt::Debug for Pacer<St> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pacer")
            .field("quota", &self.quota)
            .field("name", &self.domain)
            .field("max_queue", &self.max_queue)
            .field("max_wait", &self.max_wait)
            .finish_non_exhaustive()
    }
}

/// Paces requests with a [`Pacer`]: made by [`Pacer::layer`].
#[derive(Debug)]
pub struct PaceLayer<K, St = MemoryStore> {
    pacer: Arc<Pacer<St>>,
    key: K,
}

impl<K: Clone, St> Clone for PaceLayer<K, St> {
    fn clone(&self) -> Self {
        PaceLayer {
            pacer: Arc::clone(&self.pacer),
            key: self.key.clone(),
        }
    }
}

impl<S, K: Clone, St> Layer<S> for PaceLayer<K, St> {
    type Service = Pace<S, K, St>;

    fn layer(&self, inner: S) -> Self::Service {
        Pace {
            inner,
            layer: self.clone(),
        }
    }
}

/// A service whose requests wait their turn under a [`Pacer`] before they
/// are sent; its errors are the inner service's or a [`PaceError`], boxed.
///
/// It is always ready, and reserves nothing of the inner service: each
/// request's future first waits its turn, then waits for a clone of the
/// inner service to be ready, then calls it. So a request waiting its turn
/// holds none of the inner service's capacity (a
/// `tower::limit::ConcurrencyLimit` permit, say), and requests of other keys
/// go ahead of it. A request is sent no earlier than its turn, later if the
/// inner service is not ready then; an error of the inner service's
/// readiness, found once the turn is taken (the turn is spent), is the
/// future's error.
#[derive(Debug)]
pub struct Pace<S, K, St = MemoryStore> {
    inner: S,
    layer: PaceLayer<K, St>,
}

impl<S: Clone, K: Clone, St> Clone for Pace<S, K, St> {
    fn clone(&self) -> Self {
        Pace {
            inner: self.inner.clone(),
            layer: self.layer.clone(),
        }
    }
}

/// The boxed error of a [`Pace`] service.
type BoxError = Box<dyn Error + Send + Sync>;

impl<S, K, St, B> Service<Request<B>> for Pace<S, K, St>
where
    S: Service<Request<B>> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: Into<BoxError>,
    K: Fn(&Request<B>) -> Option<String> + Clone,
    St: Store,
    B: Send + 'static,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, BoxError>> + Send>>;

    /// Always ready: the inner service's readiness is each request's to
    /// wait for, after its turn.
    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let mut inner = self.inner.clone();
        let key = (self.layer.key)(&request);
        let pacer = Arc::clone(&self.layer.pacer);
        Box::pin(async move {
            if let Some(key) = key {
                pacer.wait(&key).await?;
            }
            poll_fn(|cx| inner.poll_ready(cx))
                .await
                .map_err(Into::into)?;
            inner.call(request).await.map_err(Into::into)
        })
    }
}
