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
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use tower_ratelimit::concurrency::{Busy, ConcurrencyLimiter, Mode};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let limiter = ConcurrencyLimiter::new();
//! let account = 42;
//!
//! // Two calls at once for this account: both get a slot at once.
//! let first = limiter.acquire(account, 2, Mode::Refuse).await.unwrap();
//! let _second = limiter.acquire(account, 2, Mode::Refuse).await.unwrap();
//! assert_eq!(limiter.in_flight(account), 2);
//!
//! // An inbound call over the cap is refused at once ...
//! let busy = limiter.acquire(account, 2, Mode::Refuse).await.unwrap_err();
//! assert_eq!(busy, Busy::Full { in_flight: 2 });
//!
//! // ... and an outbound one waits for a slot.
//! let queue = Mode::Queue { max_queued: 100, max_wait: Duration::from_secs(30) };
//! let outbound = tokio::spawn({
//!     let limiter = limiter.clone();
//!     async move { limiter.acquire(account, 2, queue).await.map(|_permit| ()) }
//! });
//! # while limiter.queued(account) == 0 { tokio::task::yield_now().await; }
//! drop(first); // the slot goes to the waiting call
//! assert_eq!(outbound.await.unwrap(), Ok(()));
//! # }
//! ```
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

use std::collections::VecDeque;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use parking_lot::Mutex;
use pin_project_lite::pin_project;
use smallvec::SmallVec;
use tokio::time::{Instant, Sleep};

use crate::shard::{sparse, MixedKeyMap, Padded};

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
pub struct ConcurrencyLimiter {
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
/// There is no time to retry after here: see
/// [Retry hints](self#retry-hints).
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
        }
    }
}

impl std::error::Error for Busy {}

/// One slot of a key, held until this is dropped.
///
/// Dropping it (on any thread) frees the slot, or hands it straight to the
/// key's longest-waiting request. It cannot be cloned: one permit, one slot.
///
/// A store that shares slots between processes (see
/// [`SharedSlots`](crate::store::SharedSlots)) makes its permits with
/// [`Permit::shared`], which runs the store's own release when dropped.
pub struct Permit {
    key: u64,
    in_flight: u32,
    release: Release,
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
    pub struct Acquire {
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
    pub fn new() -> Self {
        Self::default()
    }

    /// Asks for a slot of `key`, which allows at most `max` requests in
    /// flight; a request with no free slot is refused or waits as `mode`
    /// says.
    ///
    /// `max` also becomes the key's cap for the requests already waiting and
    /// in flight (see [Keys and caps](self#keys-and-caps)).
    pub fn acquire(&self, key: u64, max: u32, mode: Mode) -> Acquire {
        Acquire {
            inner: Arc::clone(&self.inner),
            key,
            state: State::Start { max, mode },
            timer: None,
        }
    }

    /// Takes a slot of `key` now if one is free and no one waits for it
    /// (what [`Mode::Refuse`] does, without a future).
    pub fn try_acquire(&self, key: u64, max: u32) -> Result<Permit, Busy> {
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
    pub fn in_flight(&self, key: u64) -> u32 {
        let shard = self.inner.shard(key).lock();
        shard.keys.get(&key).map_or(0, |e| e.in_flight)
    }

    /// The requests of `key` waiting for a slot now.
    pub fn queued(&self, key: u64) -> usize {
        let shard = self.inner.shard(key).lock();
        shard.keys.get(&key).map_or(0, |e| e.queue.len())
    }

    /// The number of keys tracked now: those with a request in flight or
    /// waiting.
    pub fn len(&self) -> usize {
        self.inner
            .shards
            .iter()
            .map(|s| s.0.lock().keys.len())
            .sum()
    }

    /// Whether no key is tracked: nothing is in flight and no one waits.
    pub fn is_empty(&self) -> bool {
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
        }
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

/// The shared state: keys spread over padded, locked shards.
struct Inner {
    shards: Box<[Padded<Mutex<Shard>>]>,
}

impl Default for Inner {
    fn default() -> Self {
        Inner {
            shards: (0..SHARDS)
                .map(|_| Padded(Mutex::new(Shard::default())))
                .collect(),
        }
    }
}

#[derive(Default)]
struct Shard {
    keys: MixedKeyMap<Entry>,
}

/// One key's count and line.
///
/// Between operations the line is empty or `in_flight >= cap`: a freed slot
/// goes straight to the oldest waiter (still counted), so a new request can
/// never find a free slot while someone waits.
#[derive(Default)]
struct Entry {
    /// Slots held, plus slots handed to waiters that have not taken them yet.
    in_flight: u32,
    /// The cap of the key's latest call.
    cap: u32,
    /// The requests waiting, oldest first; tickets increase front to back.
    queue: VecDeque<Waiter>,
    /// The ticket the next waiter gets.
    next_ticket: u64,
}

struct Waiter {
    ticket: u64,
    waker: Waker,
}

/// What the first poll of an [`Acquire`] found.
enum First {
    /// With the key's count now.
    Admitted(u32),
    Refused(Busy),
    Queued {
        ticket: u64,
        since: Instant,
    },
}

/// What a later poll of a waiting [`Acquire`] found.
enum Waiting {
    /// A slot was handed to it (and is counted in `in_flight`, the key's
    /// count now).
    Granted(u32),
    /// Its time ran out; it has left the line.
    Left,
    Pending,
}

/// Wakers of waiters handed a slot, woken once the shard is unlocked.
type Wakers = SmallVec<[Waker; 4]>;

fn wake_all(wakers: Wakers) {
    for waker in wakers {
        waker.wake();
    }
}

impl Inner {
    fn shard(&self, key: u64) -> &Mutex<Shard> {
        // Fibonacci hashing: the top bits of the product depend on every bit
        // of the key, so small sequential keys spread as well as hashes do.
        let index = (key.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 58) as usize % self.shards.len();
        &self.shards[index].0
    }

    /// A permit for a slot already counted in `in_flight`.
    fn permit(self: &Arc<Self>, key: u64, in_flight: u32) -> Permit {
        Permit {
            key,
            in_flight,
            release: Release::Local(Arc::clone(self)),
        }
    }

    fn first_poll(&self, key: u64, max: u32, mode: Mode, waker: &Waker) -> First {
        let mut wake = Wakers::new();
        let first = {
            let mut shard = self.shard(key).lock();
            let entry = shard.entry(key, max, &mut wake);
            if entry.queue.is_empty() && entry.in_flight < entry.cap {
                entry.in_flight += 1;
                First::Admitted(entry.in_flight)
            } else {
                let first = match mode {
                    Mode::Queue {
                        max_queued,
                        max_wait,
                    } if entry.queue.len() < max_queued => {
                        if max_wait.is_zero() {
                            First::Refused(Busy::TimedOut {
                                waited: Duration::ZERO,
                            })
                        } else {
                            let ticket = entry.next_ticket;
                            entry.next_ticket = ticket.wrapping_add(1);
                            entry.queue.push_back(Waiter {
                                ticket,
                                waker: waker.clone(),
                            });
                            First::Queued {
                                ticket,
                                since: Instant::now(),
                            }
                        }
                    }
                    _ => First::Refused(Busy::Full {
                        in_flight: entry.in_flight,
                    }),
                };
                if let First::Refused(_) = first {
                    shard.forget_if_idle(key);
                }
                first
            }
        };
        wake_all(wake);
        first
    }

    fn poll_queued(&self, key: u64, ticket: u64, expired: bool, waker: &Waker) -> Waiting {
        let mut shard = self.shard(key).lock();
        let Some(entry) = shard.keys.get_mut(&key) else {
            // Cannot happen: a waiter's key is tracked until it has taken or
            // given back its slot. Answer as if the time ran out.
            return Waiting::Left;
        };
        let Some(at) = entry.position(ticket) else {
            return Waiting::Granted(entry.in_flight);
        };
        if expired {
            entry.remove(at);
            shard.forget_if_idle(key);
            return Waiting::Left;
        }
        let slot = &mut entry.queue[at].waker;
        if !slot.will_wake(waker) {
            slot.clone_from(waker);
        }
        Waiting::Pending
    }

    /// Takes a dropped waiter out of the line, or gives back the slot it was
    /// handed and never took.
    fn cancel(&self, key: u64, ticket: u64) {
        let mut shard = self.shard(key).lock();
        let Some(entry) = shard.keys.get_mut(&key) else {
            return;
        };
        match entry.position(ticket) {
            Some(at) => {
                entry.remove(at);
                shard.forget_if_idle(key);
            }
            None => {
                drop(shard);
                self.release(key);
            }
        }
    }

    /// Frees one slot of `key`, handing it on to the line if the cap allows.
    fn release(&self, key: u64) {
        let mut wake = Wakers::new();
        {
            let mut shard = self.shard(key).lock();
            if let Some(entry) = shard.keys.get_mut(&key) {
                entry.in_flight = entry.in_flight.saturating_sub(1);
                entry.hand_on(&mut wake);
                shard.forget_if_idle(key);
            }
        }
        wake_all(wake);
    }
}

impl Shard {
    /// The entry of `key` (a fresh one if untracked), with its cap set to
    /// `max` and the slots a raised cap frees handed to the line.
    fn entry(&mut self, key: u64, max: u32, wake: &mut Wakers) -> &mut Entry {
        let entry = self.keys.entry(key).or_default();
        entry.cap = max;
        entry.hand_on(wake);
        entry
    }

    /// Drops `key`'s entry if it holds nothing: no slot, no waiter.
    fn forget_if_idle(&mut self, key: u64) {
        if self
            .keys
            .get(&key)
            .is_some_and(|e| e.in_flight == 0 && e.queue.is_empty())
        {
            self.keys.remove(&key);
            if sparse(self.keys.len(), self.keys.capacity()) {
                self.keys.shrink_to(self.keys.len() * 2);
            }
        }
    }
}

impl Entry {
    /// Hands free slots (under the cap) to the oldest waiters.
    fn hand_on(&mut self, wake: &mut Wakers) {
        while self.in_flight < self.cap {
            let Some(waiter) = self.queue.pop_front() else {
                break;
            };
            self.in_flight += 1;
            wake.push(waiter.waker);
        }
    }

    fn position(&self, ticket: u64) -> Option<usize> {
        self.queue.binary_search_by_key(&ticket, |w| w.ticket).ok()
    }

    fn remove(&mut self, at: usize) {
        self.queue.remove(at);
        if sparse(self.queue.len(), self.queue.capacity()) {
            self.queue.shrink_to(self.queue.len() * 2);
        }
    }
}
