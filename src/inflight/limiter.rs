//! Keyed concurrency limits: caps on requests *in flight* per key, answered
//! at once ("busy") or after a bounded, first-come-first-served wait.
//!
//! A rate limit counts requests per time window; a concurrency limit counts
//! requests that have started and not yet finished. Nixflex sells both: 600
//! reads a minute per API key, *and* 10, 25 or 100 calls at once per account
//! by plan, where outbound calls over the cap queue and inbound ones hear a
//! busy signal. A [`ConcurrencyLimiter`] keeps that second count:
//!
//! * [`ConcurrencyLimiter::acquire`] asks for a slot of a key (a `u64`, such
//!   as a bucket hash) under a cap given with the call, in a [`Mode`]:
//!   [`Mode::Refuse`] answers at once, [`Mode::Queue`] waits in line for a
//!   slot, with a bounded line and a bounded wait.
//! * The answer is a [`Permit`], which holds the slot until it is dropped,
//!   or [`Busy`], which says why there was none.
//! * Dropping a [`Permit`] hands its slot straight to the key's
//!   longest-waiting request.
//!
//! # Keys and caps
//!
//! Keys are `u64`s: the layer hashes every key under a secret before it gets
//! here, so the limiter never sees a raw API key. Each key is counted on its
//! own. The cap comes with each call, so it can differ per key (plans,
//! overrides) and change at any time; the key follows the cap of its latest
//! call:
//!
//! * **Lowering** the cap never revokes a permit. Requests in flight finish;
//!   new requests are refused (or wait) until fewer than the new cap are in
//!   flight, and slots freed in the meantime are not handed on.
//! * **Raising** the cap lets queued requests in at once, oldest first, up to
//!   the new cap.
//! * **A cap of 0** closes the key: [`Mode::Refuse`] is refused at once, and
//!   [`Mode::Queue`] waits (up to its `max_wait`) until a later call raises the
//!   cap.
//!
//! # Order and fairness
//!
//! Each key has one first-in-first-out line. A slot that frees up goes to the
//! request that has waited longest, and while anyone waits, a new request
//! never takes a free slot ahead of them (it joins the line, or is refused in
//! [`Mode::Refuse`]). A request joins the line when its [`Acquire`] is first
//! polled.
//!
//! # Cancellation and memory
//!
//! Dropping a waiting [`Acquire`] takes it out of the line; if a slot had
//! just been handed to it, the slot goes to the next in line. A key's state
//! is dropped as soon as no permit is held and no request waits, so the
//! limiter's memory is proportional to the keys busy *now*.
//!
//! # Retry hints
//!
//! [`Busy`] carries no time to retry after: a slot frees when a request in
//! flight finishes, which depends on the service behind the limiter, not on
//! anything the limiter knows. A refusal's `Retry-After` should come from the
//! policy (a fixed value that suits the service's typical request time).
//!
//! # Time
//!
//! [`Mode::Queue`]'s `max_wait` runs on [`tokio::time`], so it follows a
//! paused test clock. Like every Tokio timer, a request that waits with a
//! finite `max_wait` must be polled inside a Tokio runtime with time enabled.
//! A `max_wait` too large to add to the current instant means "no limit"
//! (and needs no timer).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};

mod table;

use self::table::{wake_all, First, Inner, Waiting, Wakers};

/// The number of shards: keys are spread over this many mutexes, so that
/// threads working on different keys rarely meet.
const SHARDS: usize = 64;

/// Caps the requests in flight per key, refusing or queueing the rest.
///
/// Cloning is cheap (an [`Arc`]); clones share their counts. See the
/// [module documentation](self) for the rules on caps, order and
/// cancellation.
///
/// Keys are spread over 64 shards, each a mutex (on its own cache lines)
/// around a hash table from a key to its entry: the slots in flight, the
/// latest cap, and the line of waiting requests (a ring buffer that holds a
/// ticket and a waker per waiter, and allocates only once someone waits).
/// A key costs about 60 bytes while it is busy and nothing once it is idle.
/// Every operation locks one shard for a few instructions, never across an
/// `.await`, so threads working on different keys rarely meet.
#[derive(Clone, Default)]
pub(crate) struct ConcurrencyLimiter {
    inner: Arc<Inner>,
}

/// What to do with a request that finds no free slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Mode {
    /// Refuse it at once with [`Busy::Full`] (Nixflex's inbound calls: a busy
    /// signal).
    Refuse,
    /// Wait in the key's first-in-first-out line for a slot (Nixflex's
    /// outbound calls).
    Queue {
        /// The most requests that may wait for this key at once. A request
        /// that finds the line this long is refused at once with
        /// [`Busy::Full`]; `0` makes the mode act like [`Mode::Refuse`].
        max_queued: usize,
        /// The longest a request waits; then it leaves the line and is
        /// refused with [`Busy::TimedOut`]. [`Duration::ZERO`] refuses at
        /// once with [`Busy::TimedOut`] instead of waiting.
        max_wait: Duration,
    },
}

/// Why a request got no slot.
///
/// There is no time to retry after here: a slot frees when a request in
/// flight finishes, which depends on the service, so a busy refusal's
/// `Retry-After` comes from the policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Busy {
    /// The key had no free slot and the request could not wait: the mode was
    /// [`Mode::Refuse`], or the key's line was full.
    Full {
        /// The requests of the key in flight when it was refused.
        in_flight: u32,
    },
    /// The request waited its mode's `max_wait` without getting a slot, and
    /// left the line.
    TimedOut {
        /// How long it waited (on Tokio's clock).
        waited: Duration,
    },
    /// A shared store could not be asked, and the limit's failure policy is
    /// to refuse.
    Unavailable,
    /// A shared store could not be asked, and the limit's failure policy is
    /// to count in this process's share of the cap: the share had no free
    /// slot and the request could not wait.
    LocalShareFull {
        /// The requests of the key in flight in this process's share.
        in_flight: u32,
        /// This process's share of the cap.
        share: u32,
    },
}

impl fmt::Display for Busy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Busy::Full { in_flight } => {
                write!(f, "too many requests in flight ({in_flight})")
            }
            Busy::TimedOut { waited } => {
                write!(f, "no request slot came free within {waited:?}")
            }
            Busy::Unavailable => f.write_str("the shared in-flight count could not be reached"),
            Busy::LocalShareFull { in_flight, share } => write!(
                f,
                "the shared in-flight count could not be reached, and this process's share \
                 of the cap is full ({in_flight} of {share})"
            ),
        }
    }
}

impl std::error::Error for Busy {}

/// A slot on its way: resolves to a [`Permit`] or to [`Busy`].
pub type SlotFuture = Pin<Box<dyn Future<Output = Result<Permit, Busy>> + Send + 'static>>;

/// One slot of a key, held until this is dropped.
///
/// Dropping it (on any thread) frees the slot, or hands it straight to the
/// key's longest-waiting request. It cannot be cloned: one permit, one slot.
///
/// A store that shares slots between processes (see
/// [`SharedSlots`](crate::store::protocol::SharedSlots)) makes its permits with
/// [`Permit::shared`], which runs the store's own release when dropped.
pub struct Permit {
    key: u64,
    in_flight: u32,
    release: Release,
    source: Source,
}

/// What granted a permit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Source {
    /// The limiter or store that counts the key's slots.
    Counted,
    /// A store that could not count it, in this process's share of the cap
    /// (its failure policy).
    Fallback,
    /// A store that could not count it, letting it through (its failure
    /// policy): the permit holds nothing.
    FailedOpen,
}

/// What dropping a permit does.
enum Release {
    /// Frees the slot in this limiter.
    Local(Arc<Inner>),
    /// Runs a shared store's release (taken when it runs).
    Shared(Option<Box<dyn FnOnce() + Send + Sync>>),
}

pin_project! {
    /// The future [`ConcurrencyLimiter::acquire`] returns: resolves to a
    /// [`Permit`] or to [`Busy`].
    ///
    /// It does nothing until polled. The first poll decides: a free slot
    /// (and no one waiting before it) makes it ready at once; otherwise it
    /// is refused at once or joins the key's line, as its [`Mode`] says.
    /// Dropping it while it waits takes it out of the line. It holds no lock
    /// between polls and is not boxed; joining a line may grow that key's
    /// ring buffer. Polled again after it resolved, it answers
    /// `Busy::Full { in_flight: 0 }` rather than panic.
    #[must_use = "a request joins the line only when its future is polled"]
    pub(crate) struct Acquire {
        inner: Arc<Inner>,
        key: u64,
        state: State,
        #[pin]
        timer: Option<Sleep>,
    }

    impl PinnedDrop for Acquire {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            if let State::Queued { ticket, .. } = *this.state {
                this.inner.cancel(*this.key, ticket);
            }
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum State {
    /// Not polled yet.
    Start { max: u32, mode: Mode },
    /// In the key's line (or just handed a slot, not yet taken) since
    /// `since`.
    Queued { ticket: u64, since: Instant },
    /// Resolved.
    Done,
}

impl ConcurrencyLimiter {
    /// A limiter that tracks no key yet.
    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// Asks for a slot of `key`, which allows at most `max` requests in
    /// flight; a request with no free slot is refused or waits as `mode`
    /// says.
    ///
    /// `max` also becomes the key's cap for the requests already waiting and
    /// in flight (see [Keys and caps](self#keys-and-caps)).
    pub(crate) fn acquire(&self, key: u64, max: u32, mode: Mode) -> Acquire {
        Acquire {
            inner: Arc::clone(&self.inner),
            key,
            state: State::Start { max, mode },
            timer: None,
        }
    }

    /// Takes a slot of `key` now if one is free and no one waits for it
    /// (what [`Mode::Refuse`] does, without a future).
    pub(crate) fn try_acquire(&self, key: u64, max: u32) -> Result<Permit, Busy> {
        let mut wake = Wakers::new();
        let answer = {
            let mut shard = self.inner.shard(key).lock();
            let entry = shard.entry(key, max, &mut wake);
            if entry.queue.is_empty() && entry.in_flight < entry.cap {
                entry.in_flight += 1;
                Ok(entry.in_flight)
            } else {
                let in_flight = entry.in_flight;
                shard.forget_if_idle(key);
                Err(Busy::Full { in_flight })
            }
        };
        wake_all(wake);
        answer.map(|in_flight| self.inner.permit(key, in_flight))
    }

    /// The requests of `key` holding a slot now, including any slot just
    /// handed to a waiting request that has not yet been polled to take it.
    #[cfg(any(test, feature = "admin"))]
    pub(crate) fn in_flight(&self, key: u64) -> u32 {
        let shard = self.inner.shard(key).lock();
        shard.keys.get(&key).map_or(0, |e| e.in_flight)
    }

    /// The requests of `key` waiting for a slot now.
    #[cfg(test)]
    pub(crate) fn queued(&self, key: u64) -> usize {
        let shard = self.inner.shard(key).lock();
        shard.keys.get(&key).map_or(0, |e| e.queue.len())
    }

    /// The number of keys tracked now: those with a request in flight or
    /// waiting.
    pub(crate) fn len(&self) -> usize {
        self.inner
            .shards
            .iter()
            .map(|s| s.0.lock().keys.len())
            .sum()
    }

    /// Whether no key is tracked: nothing is in flight and no one waits.
    #[cfg(test)]
    pub(crate) fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl fmt::Debug for ConcurrencyLimiter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConcurrencyLimiter")
            .field("keys", &self.len())
            .finish()
    }
}

impl Permit {
    /// A permit for a slot kept by a shared store: `in_flight` is the key's
    /// count when the slot was granted (this one included), and `release`
    /// runs once, when the permit is dropped (it must not block: send the
    /// release to a task).
    pub fn shared(
        key: u64,
        in_flight: u32,
        release: impl FnOnce() + Send + Sync + 'static,
    ) -> Self {
        Permit {
            key,
            in_flight,
            release: Release::Shared(Some(Box::new(release))),
            source: Source::Counted,
        }
    }

    /// A permit that holds nothing, for a store that could not count the
    /// slot and lets the request through (its failure policy fails open):
    /// no rate-limit header reports its cap, and the decision says it
    /// failed open.
    pub fn failed_open(key: u64) -> Self {
        Permit {
            key,
            in_flight: 0,
            release: Release::Shared(None),
            source: Source::FailedOpen,
        }
    }

    /// This permit, marked as taken in this process's share of the cap by a
    /// store that could not count it (its failure policy): the decision
    /// says it fell back.
    pub fn fallen_back(mut self) -> Self {
        self.source = Source::Fallback;
        self
    }

    /// What granted it.
    pub(crate) fn source(&self) -> Source {
        self.source
    }

    /// The key whose slot this is.
    pub fn key(&self) -> u64 {
        self.key
    }

    /// The requests of the key in flight when this slot was granted, this
    /// one included.
    pub fn in_flight(&self) -> u32 {
        self.in_flight
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        match &mut self.release {
            Release::Local(inner) => inner.release(self.key),
            Release::Shared(release) => {
                if let Some(release) = release.take() {
                    release();
                }
            }
        }
    }
}

impl fmt::Debug for Permit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Permit")
            .field("key", &format_args!("{:#018x}", self.key))
            .field("in_flight", &self.in_flight)
            .finish()
    }
}

impl fmt::Debug for Acquire {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match self.state {
            State::Start { .. } => "start",
            State::Queued { .. } => "queued",
            State::Done => "done",
        };
        f.debug_struct("Acquire")
            .field("key", &format_args!("{:#018x}", self.key))
            .field("state", &state)
            .finish()
    }
}

impl Future for Acquire {
    type Output = Result<Permit, Busy>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        let key = *this.key;
        match *this.state {
            State::Start { max, mode } => {
                let first = this.inner.first_poll(key, max, mode, cx.waker());
                match first {
                    First::Admitted(in_flight) => {
                        *this.state = State::Done;
                        Poll::Ready(Ok(this.inner.permit(key, in_flight)))
                    }
                    First::Refused(busy) => {
                        *this.state = State::Done;
                        Poll::Ready(Err(busy))
                    }
                    First::Queued { ticket, since } => {
                        *this.state = State::Queued { ticket, since };
                        if let Mode::Queue { max_wait, .. } = mode {
                            if let Some(deadline) = since.checked_add(max_wait) {
                                this.timer.set(Some(tokio::time::sleep_until(deadline)));
                                // Registers the timer; it cannot have fired
                                // yet, and if it has, the next poll sees it.
                                if let Some(timer) = this.timer.as_mut().as_pin_mut() {
                                    if timer.poll(cx).is_ready() {
                                        cx.waker().wake_by_ref();
                                    }
                                }
                            }
                        }
                        Poll::Pending
                    }
                }
            }
            State::Queued { ticket, since } => {
                let expired = match this.timer.as_mut().as_pin_mut() {
                    Some(timer) => timer.poll(cx).is_ready(),
                    None => false,
                };
                match this.inner.poll_queued(key, ticket, expired, cx.waker()) {
                    Waiting::Granted(in_flight) => {
                        *this.state = State::Done;
                        Poll::Ready(Ok(this.inner.permit(key, in_flight)))
                    }
                    Waiting::Left => {
                        *this.state = State::Done;
                        Poll::Ready(Err(Busy::TimedOut {
                            waited: Instant::now().saturating_duration_since(since),
                        }))
                    }
                    Waiting::Pending => Poll::Pending,
                }
            }
            // Polled after it resolved: a contract breach by the caller, but
            // never a panic; it stays refused.
            State::Done => Poll::Ready(Err(Busy::Full { in_flight: 0 })),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::future::Future;
    use std::pin::Pin;
    use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
    use std::sync::{Arc, Mutex};
    use std::task::{Context, Poll};
    use std::time::Duration;

    use super::{Acquire, Busy, ConcurrencyLimiter, Mode, Permit};
    use futures::task::{waker, ArcWake};

    const KEY: u64 = 0x5eed_0001;

    fn queue(max_queued: usize, max_wait: Duration) -> Mode {
        Mode::Queue {
            max_queued,
            max_wait,
        }
    }

    /// A long line with a long wait.
    fn patient() -> Mode {
        queue(usize::MAX, Duration::from_secs(3600))
    }

    /// A waker that records whether it was woken.
    #[derive(Default)]
    struct Flag(AtomicBool);

    impl ArcWake for Flag {
        fn wake_by_ref(arc_self: &Arc<Self>) {
            arc_self.0.store(true, Ordering::SeqCst);
        }
    }

    impl Flag {
        fn take(&self) -> bool {
            self.0.swap(false, Ordering::SeqCst)
        }
    }

    /// Polls `future` once with `flag` as its waker.
    fn poll_with<F: Future + Unpin>(future: &mut F, flag: &Arc<Flag>) -> Poll<F::Output> {
        let waker = waker(Arc::clone(flag));
        Pin::new(future).poll(&mut Context::from_waker(&waker))
    }

    /// Polls `future` once with a waker nobody watches.
    fn poll_once<F: Future + Unpin>(future: &mut F) -> Poll<F::Output> {
        poll_with(future, &Arc::new(Flag::default()))
    }

    /// A slot now, or a panic naming why not.
    fn take(limiter: &ConcurrencyLimiter, key: u64, max: u32, mode: Mode) -> Permit {
        match poll_once(&mut Box::pin(limiter.acquire(key, max, mode))) {
            Poll::Ready(Ok(permit)) => permit,
            Poll::Ready(Err(busy)) => panic!("refused: {busy}"),
            Poll::Pending => panic!("not ready on its first poll"),
        }
    }

    /// The answer of a first poll, which must be a refusal.
    fn refusal(limiter: &ConcurrencyLimiter, key: u64, max: u32, mode: Mode) -> Busy {
        match poll_once(&mut Box::pin(limiter.acquire(key, max, mode))) {
            Poll::Ready(Err(busy)) => busy,
            Poll::Ready(Ok(_)) => panic!("admitted"),
            Poll::Pending => panic!("queued"),
        }
    }

    /// A request that has joined the line.
    fn waiter(limiter: &ConcurrencyLimiter, key: u64, max: u32, mode: Mode) -> Pin<Box<Acquire>> {
        let mut acquire = Box::pin(limiter.acquire(key, max, mode));
        assert!(poll_once(&mut acquire).is_pending(), "expected to wait");
        acquire
    }

    /// Lets other tasks run until `key` has `n` waiters (a bounded number of
    /// turns, so a request that never joins fails the test instead of hanging).
    async fn until_queued(limiter: &ConcurrencyLimiter, key: u64, n: usize) {
        for _ in 0..100_000 {
            if limiter.queued(key) >= n {
                return;
            }
            tokio::task::yield_now().await;
        }
        panic!("{} of {n} requests joined the line", limiter.queued(key));
    }

    #[test]
    fn refuse_mode_admits_exactly_the_cap_and_refuses_the_next_at_once() {
        let limiter = ConcurrencyLimiter::new();
        let permits: Vec<Permit> = (0..10)
            .map(|_| take(&limiter, KEY, 10, Mode::Refuse))
            .collect();
        assert_eq!(limiter.in_flight(KEY), 10);
        assert_eq!(
            refusal(&limiter, KEY, 10, Mode::Refuse),
            Busy::Full { in_flight: 10 }
        );
        assert!(matches!(
            limiter.try_acquire(KEY, 10),
            Err(Busy::Full { in_flight: 10 })
        ));
        assert_eq!(limiter.in_flight(KEY), 10, "a refusal holds nothing");
        drop(permits);
        assert_eq!(limiter.in_flight(KEY), 0);
        assert!(limiter.is_empty());
    }

    #[test]
    fn a_dropped_permit_frees_its_slot_for_the_next_request() {
        let limiter = ConcurrencyLimiter::new();
        let first = take(&limiter, KEY, 1, Mode::Refuse);
        assert!(limiter.try_acquire(KEY, 1).is_err());
        drop(first);
        let second = limiter.try_acquire(KEY, 1).expect("the slot is free again");
        assert_eq!(second.key(), KEY);
        assert_eq!(limiter.in_flight(KEY), 1);
    }

    #[test]
    fn keys_are_counted_independently() {
        let limiter = ConcurrencyLimiter::new();
        let _a = take(&limiter, 1, 1, Mode::Refuse);
        let _b = take(&limiter, 2, 1, Mode::Refuse);
        let _c = take(&limiter, 3, 2, Mode::Refuse);
        assert!(limiter.try_acquire(1, 1).is_err());
        assert!(limiter.try_acquire(2, 1).is_err());
        let _c2 = limiter.try_acquire(3, 2).expect("key 3 has a second slot");
        assert_eq!(limiter.len(), 3);
        assert_eq!(
            (
                limiter.in_flight(1),
                limiter.in_flight(2),
                limiter.in_flight(3)
            ),
            (1, 1, 2)
        );
        assert_eq!(limiter.in_flight(4), 0);
    }

    #[test]
    fn refused_requests_leave_no_state_behind() {
        let limiter = ConcurrencyLimiter::new();
        for key in 0..1000 {
            assert_eq!(
                refusal(&limiter, key, 0, Mode::Refuse),
                Busy::Full { in_flight: 0 }
            );
            assert!(limiter.try_acquire(key, 0).is_err());
            assert_eq!(
                refusal(&limiter, key, 0, queue(0, Duration::from_secs(1))),
                Busy::Full { in_flight: 0 }
            );
        }
        assert!(limiter.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn queue_mode_serves_waiters_in_fifo_order() {
        let limiter = ConcurrencyLimiter::new();
        let holder = take(&limiter, KEY, 1, Mode::Refuse);
        let served = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for i in 0..20 {
            let (shared, served) = (limiter.clone(), Arc::clone(&served));
            tasks.push(tokio::spawn(async move {
                let _permit = shared.acquire(KEY, 1, patient()).await.unwrap();
                served.lock().unwrap().push(i);
                tokio::time::sleep(Duration::from_millis(10)).await;
            }));
            // Task `i` has joined the line before task `i + 1` is spawned.
            until_queued(&limiter, KEY, i + 1).await;
        }
        assert_eq!(limiter.queued(KEY), 20);
        drop(holder);
        for task in tasks {
            task.await.unwrap();
        }
        assert_eq!(*served.lock().unwrap(), (0..20).collect::<Vec<_>>());
        assert!(limiter.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn new_arrivals_never_take_a_slot_ahead_of_waiters() {
        let limiter = ConcurrencyLimiter::new();
        let holder = take(&limiter, KEY, 1, Mode::Refuse);
        let flag = Arc::new(Flag::default());
        let mut first = Box::pin(limiter.acquire(KEY, 1, patient()));
        assert!(poll_with(&mut first, &flag).is_pending());
        let mut second = waiter(&limiter, KEY, 1, patient());

        drop(holder);
        assert!(flag.take(), "the dropped permit woke the oldest waiter");
        assert_eq!(limiter.in_flight(KEY), 1, "the slot is reserved for it");
        assert_eq!(limiter.queued(KEY), 1);
        // Before the waiter runs, a new request finds no free slot.
        assert!(limiter.try_acquire(KEY, 1).is_err());
        assert!(poll_once(&mut waiter(&limiter, KEY, 1, patient())).is_pending());
        assert!(poll_once(&mut second).is_pending());

        let permit = match poll_once(&mut first) {
            Poll::Ready(Ok(permit)) => permit,
            other => panic!("the oldest waiter was not served: {other:?}"),
        };
        drop(permit);
        assert!(matches!(poll_once(&mut second), Poll::Ready(Ok(_))));
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_queue_refuses_at_once() {
        let limiter = ConcurrencyLimiter::new();
        let _holder = take(&limiter, KEY, 1, Mode::Refuse);
        let mode = queue(3, Duration::from_secs(10));
        let _waiting: Vec<_> = (0..3).map(|_| waiter(&limiter, KEY, 1, mode)).collect();
        assert_eq!(limiter.queued(KEY), 3);
        assert_eq!(refusal(&limiter, KEY, 1, mode), Busy::Full { in_flight: 1 });
        assert_eq!(limiter.queued(KEY), 3, "the refused request never joined");
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiter_times_out_after_max_wait_and_leaves_the_queue() {
        let limiter = ConcurrencyLimiter::new();
        let _holder = take(&limiter, KEY, 1, Mode::Refuse);
        let started = tokio::time::Instant::now();
        let task = tokio::spawn({
            let limiter = limiter.clone();
            async move {
                limiter
                    .acquire(KEY, 1, queue(10, Duration::from_millis(1500)))
                    .await
            }
        });
        until_queued(&limiter, KEY, 1).await;
        let answer = task.await.unwrap();
        assert_eq!(
            answer.unwrap_err(),
            Busy::TimedOut {
                waited: Duration::from_millis(1500)
            }
        );
        assert_eq!(started.elapsed(), Duration::from_millis(1500));
        assert_eq!(limiter.queued(KEY), 0);
        assert_eq!(limiter.in_flight(KEY), 1, "the holder keeps its slot");
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiter_is_served_before_its_deadline() {
        let limiter = ConcurrencyLimiter::new();
        let holder = take(&limiter, KEY, 1, Mode::Refuse);
        let task = tokio::spawn({
            let limiter = limiter.clone();
            async move {
                let waited = tokio::time::Instant::now();
                let permit = limiter
                    .acquire(KEY, 1, queue(10, Duration::from_secs(2)))
                    .await;
                (permit.map(|_| ()), waited.elapsed())
            }
        });
        tokio::time::sleep(Duration::from_millis(1999)).await;
        drop(holder);
        let (answer, waited) = task.await.unwrap();
        assert_eq!(answer, Ok(()));
        assert_eq!(waited, Duration::from_millis(1999));
        assert!(limiter.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_slot_handed_over_as_the_deadline_passes_is_kept() {
        let limiter = ConcurrencyLimiter::new();
        let holder = take(&limiter, KEY, 1, Mode::Refuse);
        let mut late = waiter(&limiter, KEY, 1, queue(10, Duration::from_secs(1)));
        drop(holder);
        tokio::time::advance(Duration::from_secs(5)).await;
        assert!(
            matches!(poll_once(&mut late), Poll::Ready(Ok(_))),
            "a waiter handed a slot takes it even if its time ran out since"
        );
        assert!(limiter.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn permits_freed_by_drop_wake_the_next_waiter() {
        let limiter = ConcurrencyLimiter::new();
        let holders: Vec<Permit> = (0..2)
            .map(|_| take(&limiter, KEY, 2, Mode::Refuse))
            .collect();
        let tasks: Vec<_> = (0..2)
            .map(|_| {
                let limiter = limiter.clone();
                tokio::spawn(async move { limiter.acquire(KEY, 2, patient()).await.map(drop) })
            })
            .collect();
        until_queued(&limiter, KEY, 2).await;
        // Dropped on another thread.
        std::thread::spawn(move || drop(holders)).join().unwrap();
        for task in tasks {
            assert_eq!(task.await.unwrap(), Ok(()));
        }
        assert!(limiter.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn ten_thousand_cancelled_waiters_leave_no_state() {
        let limiter = ConcurrencyLimiter::new();
        let holder = take(&limiter, KEY, 1, Mode::Refuse);

        // One at a time: each joins the line and is dropped.
        for _ in 0..10_000 {
            drop(waiter(&limiter, KEY, 1, patient()));
        }
        assert_eq!(limiter.queued(KEY), 0);

        // All at once, then dropped in an order that is not the line's.
        let mut waiting: Vec<_> = (0..10_000)
            .map(|_| waiter(&limiter, KEY, 1, patient()))
            .collect();
        assert_eq!(limiter.queued(KEY), 10_000);
        let odd: Vec<_> = (0..waiting.len()).filter(|i| i % 2 == 1).rev().collect();
        for i in odd {
            drop(waiting.swap_remove(i));
        }
        assert_eq!(limiter.queued(KEY), 5_000);
        drop(waiting);
        assert_eq!(limiter.queued(KEY), 0);

        // Waiting in tasks that are aborted.
        let spawned: Vec<_> = (0..10_000)
            .map(|_| {
                let limiter = limiter.clone();
                tokio::spawn(async move { limiter.acquire(KEY, 1, patient()).await.map(drop) })
            })
            .collect();
        until_queued(&limiter, KEY, 10_000).await;
        for task in &spawned {
            task.abort();
        }
        for task in spawned {
            assert!(task.await.unwrap_err().is_cancelled());
        }
        assert_eq!(limiter.queued(KEY), 0);

        assert_eq!(limiter.in_flight(KEY), 1);
        assert_eq!(limiter.len(), 1);
        drop(holder);
        assert_eq!(limiter.in_flight(KEY), 0);
        assert_eq!(limiter.len(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_slot_handed_to_a_cancelled_waiter_goes_to_the_next() {
        let limiter = ConcurrencyLimiter::new();
        let holder = take(&limiter, KEY, 1, Mode::Refuse);
        let first = waiter(&limiter, KEY, 1, patient());
        let flag = Arc::new(Flag::default());
        let mut second = Box::pin(limiter.acquire(KEY, 1, patient()));
        assert!(poll_with(&mut second, &flag).is_pending());

        drop(holder);
        assert_eq!(
            (limiter.in_flight(KEY), limiter.queued(KEY)),
            (1, 1),
            "the slot is the first waiter's"
        );
        assert!(!flag.take());
        drop(first);
        assert!(flag.take(), "the next waiter was woken");
        assert_eq!((limiter.in_flight(KEY), limiter.queued(KEY)), (1, 0));
        let permit = match poll_once(&mut second) {
            Poll::Ready(Ok(permit)) => permit,
            other => panic!("the next waiter did not get the slot: {other:?}"),
        };
        drop(permit);
        assert!(limiter.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_handed_slot_with_no_one_left_waiting_is_freed() {
        let limiter = ConcurrencyLimiter::new();
        let holder = take(&limiter, KEY, 1, Mode::Refuse);
        let only = waiter(&limiter, KEY, 1, patient());
        drop(holder);
        assert_eq!(limiter.in_flight(KEY), 1);
        drop(only);
        assert!(limiter.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn raising_the_cap_lets_queued_waiters_in_at_once() {
        let limiter = ConcurrencyLimiter::new();
        let _holder = take(&limiter, KEY, 1, Mode::Refuse);
        let flags: Vec<Arc<Flag>> = (0..3).map(|_| Arc::new(Flag::default())).collect();
        let mut waiting: Vec<_> = flags
            .iter()
            .map(|flag| {
                let mut acquire = Box::pin(limiter.acquire(KEY, 1, patient()));
                assert!(poll_with(&mut acquire, flag).is_pending());
                acquire
            })
            .collect();

        // A call under a cap of 3: the two oldest waiters get the new slots,
        // and the call itself (refuse mode) finds none left.
        assert_eq!(
            refusal(&limiter, KEY, 3, Mode::Refuse),
            Busy::Full { in_flight: 3 }
        );
        assert_eq!((limiter.in_flight(KEY), limiter.queued(KEY)), (3, 1));
        assert_eq!(
            flags.iter().map(|f| f.take()).collect::<Vec<_>>(),
            [true, true, false]
        );
        let _a = match poll_once(&mut waiting[0]) {
            Poll::Ready(Ok(p)) => p,
            other => panic!("{other:?}"),
        };
        let _b = match poll_once(&mut waiting[1]) {
            Poll::Ready(Ok(p)) => p,
            other => panic!("{other:?}"),
        };
        assert!(poll_with(&mut waiting[2], &flags[2]).is_pending());

        // Raised again, with a free slot and no one else waiting: admitted.
        let mut more = Box::pin(limiter.acquire(KEY, 5, Mode::Refuse));
        assert!(matches!(poll_once(&mut more), Poll::Ready(Ok(_))));
        assert!(flags[2].take(), "the last waiter got a slot first");
    }

    #[tokio::test(start_paused = true)]
    async fn lowering_the_cap_revokes_nothing_and_holds_new_requests_until_below_it() {
        let limiter = ConcurrencyLimiter::new();
        let mut permits: Vec<Permit> = (0..3)
            .map(|_| take(&limiter, KEY, 3, Mode::Refuse))
            .collect();
        assert_eq!(
            refusal(&limiter, KEY, 1, Mode::Refuse),
            Busy::Full { in_flight: 3 }
        );
        assert_eq!(limiter.in_flight(KEY), 3, "no permit was revoked");

        // A waiter under the lowered cap gets no slot until fewer than 1 are
        // in flight.
        let flag = Arc::new(Flag::default());
        let mut waiting = Box::pin(limiter.acquire(KEY, 1, patient()));
        assert!(poll_with(&mut waiting, &flag).is_pending());
        permits.pop();
        permits.pop();
        assert!(!flag.take(), "2 -> 1 in flight: still at the cap of 1");
        assert_eq!((limiter.in_flight(KEY), limiter.queued(KEY)), (1, 1));
        permits.pop();
        assert!(flag.take());
        let _served = match poll_once(&mut waiting) {
            Poll::Ready(Ok(permit)) => permit,
            other => panic!("the waiter was not served: {other:?}"),
        };
        assert!(limiter.try_acquire(KEY, 1).is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn a_zero_cap_refuses_at_once_or_waits_until_raised() {
        let limiter = ConcurrencyLimiter::new();
        assert_eq!(
            refusal(&limiter, KEY, 0, Mode::Refuse),
            Busy::Full { in_flight: 0 }
        );

        let timed = tokio::spawn({
            let limiter = limiter.clone();
            async move {
                limiter
                    .acquire(KEY, 0, queue(10, Duration::from_secs(1)))
                    .await
                    .map(drop)
            }
        });
        assert_eq!(
            timed.await.unwrap(),
            Err(Busy::TimedOut {
                waited: Duration::from_secs(1)
            })
        );
        assert!(limiter.is_empty());

        let mut raised = waiter(&limiter, KEY, 0, patient());
        let _p = take(&limiter, KEY, 2, Mode::Refuse);
        assert!(matches!(poll_once(&mut raised), Poll::Ready(Ok(_))));
    }

    #[tokio::test(start_paused = true)]
    async fn edge_modes_answer_without_panicking() {
        let limiter = ConcurrencyLimiter::new();
        let _holder = take(&limiter, KEY, 1, Mode::Refuse);
        // No room in the line: like refuse mode.
        assert_eq!(
            refusal(&limiter, KEY, 1, queue(0, Duration::from_secs(1))),
            Busy::Full { in_flight: 1 }
        );
        // No time to wait: timed out at once, without joining.
        assert_eq!(
            refusal(&limiter, KEY, 1, queue(10, Duration::ZERO)),
            Busy::TimedOut {
                waited: Duration::ZERO
            }
        );
        assert_eq!(limiter.queued(KEY), 0);
        // A wait too long for the clock: no deadline.
        let mut forever = waiter(&limiter, KEY, 1, queue(10, Duration::MAX));
        tokio::time::advance(Duration::from_secs(86_400 * 365)).await;
        assert!(poll_once(&mut forever).is_pending());
        drop(forever);
        // A wait of a thousand years: a timer far out, not a panic.
        let mut long = waiter(
            &limiter,
            KEY,
            1,
            queue(10, Duration::from_secs(86_400 * 365_250)),
        );
        tokio::time::advance(Duration::from_secs(86_400 * 365)).await;
        assert!(poll_once(&mut long).is_pending());
        drop(long);
        assert_eq!(limiter.queued(KEY), 0);
        // Every key, every cap.
        for key in [0, 1, u64::MAX] {
            let _p = take(&limiter, key, u32::MAX, Mode::Refuse);
        }
        // Polled again after it resolved: refused, not a panic.
        let mut done = Box::pin(limiter.acquire(KEY, 1, Mode::Refuse));
        assert!(poll_once(&mut done).is_ready());
        assert!(matches!(poll_once(&mut done), Poll::Ready(Err(_))));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 8)]
    async fn many_tasks_on_many_threads_never_exceed_the_cap() {
        const CAP: u32 = 4;
        const KEYS: u64 = 3;
        let limiter = ConcurrencyLimiter::new();
        let current: Arc<Vec<AtomicU32>> = Arc::new((0..KEYS).map(|_| AtomicU32::new(0)).collect());
        let highest: Arc<Vec<AtomicU32>> = Arc::new((0..KEYS).map(|_| AtomicU32::new(0)).collect());
        let served = Arc::new(AtomicU32::new(0));
        let tasks: Vec<_> = (0..96u64)
            .map(|t| {
                let (limiter, current, highest, served) = (
                    limiter.clone(),
                    Arc::clone(&current),
                    Arc::clone(&highest),
                    Arc::clone(&served),
                );
                tokio::spawn(async move {
                    for i in 0..300u64 {
                        let k = (t + i) % KEYS;
                        let mode = match (t + i) % 4 {
                            0 => Mode::Refuse,
                            1 => queue(8, Duration::from_millis(1)),
                            _ => patient(),
                        };
                        let Ok(permit) = limiter.acquire(k, CAP, mode).await else {
                            continue;
                        };
                        let now = current[k as usize].fetch_add(1, Ordering::SeqCst) + 1;
                        highest[k as usize].fetch_max(now, Ordering::SeqCst);
                        served.fetch_add(1, Ordering::Relaxed);
                        tokio::task::yield_now().await;
                        current[k as usize].fetch_sub(1, Ordering::SeqCst);
                        // Sometimes dropped on a plain thread.
                        if i % 50 == 0 {
                            std::thread::spawn(move || drop(permit)).join().unwrap();
                        } else {
                            drop(permit);
                        }
                    }
                })
            })
            .collect();
        for task in tasks {
            task.await.unwrap();
        }
        for k in 0..KEYS as usize {
            let peak = highest[k].load(Ordering::SeqCst);
            assert!(
                peak <= CAP,
                "key {k}: {peak} in flight under a cap of {CAP}"
            );
        }
        assert!(served.load(Ordering::Relaxed) > 0);
        assert!(limiter.is_empty(), "left behind: {limiter:?}");
    }

    #[test]
    fn futures_and_permits_cross_threads() {
        fn send<T: Send>() {}
        fn send_sync<T: Send + Sync>() {}
        send::<Acquire>();
        send_sync::<Permit>();
        send_sync::<ConcurrencyLimiter>();
        send_sync::<Busy>();
    }

    #[test]
    fn debug_output_names_the_hashed_key_only() {
        let limiter = ConcurrencyLimiter::new();
        let permit = take(&limiter, 0xabc, 1, Mode::Refuse);
        assert_eq!(
            format!("{permit:?}"),
            "Permit { key: 0x0000000000000abc, in_flight: 1 }"
        );
        assert_eq!(format!("{limiter:?}"), "ConcurrencyLimiter { keys: 1 }");
        assert_eq!(
            Busy::Full { in_flight: 3 }.to_string(),
            "too many requests in flight (3)"
        );
    }

    #[tokio::test(flavor = "current_thread")]
    async fn inbound_calls_over_the_cap_are_busy_and_outbound_ones_wait() {
        let limiter = ConcurrencyLimiter::new();
        let account = 42;

        // Two calls at once for this account: both get a slot at once.
        let first = limiter.acquire(account, 2, Mode::Refuse).await.unwrap();
        let _second = limiter.acquire(account, 2, Mode::Refuse).await.unwrap();
        assert_eq!(limiter.in_flight(account), 2);

        // An inbound call over the cap is refused at once ...
        let busy = limiter.acquire(account, 2, Mode::Refuse).await.unwrap_err();
        assert_eq!(busy, Busy::Full { in_flight: 2 });

        // ... and an outbound one waits for a slot.
        let queue = Mode::Queue {
            max_queued: 100,
            max_wait: Duration::from_secs(30),
        };
        let outbound = tokio::spawn({
            let limiter = limiter.clone();
            async move { limiter.acquire(account, 2, queue).await.map(|_permit| ()) }
        });
        while limiter.queued(account) == 0 {
            tokio::task::yield_now().await;
        }
        drop(first); // the slot goes to the waiting call
        assert_eq!(outbound.await.unwrap(), Ok(()));
    }
}
