//! In-flight slots shared through Redis: [`SharedSlots`](crate::store::protocol::SharedSlots)
//! for [`RedisStore`](super::RedisStore).
//!
//! Each key's held slots, line and cap live in Redis (see `slots.lua`), so
//! every node sharing the server shares them. A slot is held under a lease
//! that this node's upkeep task renews; a node that dies stops renewing, and
//! its slots come free when their leases run out. A waiting request polls
//! its place in line (refreshing its own, shorter lease) until a slot is its
//! turn, its wait runs out, or it is dropped.
//!
//! The store's private parts reach this module as a [`Parts`], built by a
//! function the store hands over, so the store's fields stay its own.

use std::collections::HashMap;
use std::fmt;
use std::pin::pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use redis::Script;
use tokio::sync::mpsc::{self, UnboundedSender};
use tokio::sync::Notify;
use tokio::time::Instant;

use super::breaker::{self, Breaker, Permit as Call, Ticket, Transition};
use super::connection::Backend;
use super::failure::{self, Failure};
use super::failure_policy::FailurePolicy;
use super::keys::slot_keys;
use crate::inflight::{Busy, ConcurrencyLimiter, Mode, Permit};
use crate::store::protocol::SlotFuture;

mod upkeep;

use self::upkeep::{Msg, Upkeep};

/// The Lua source of the slots script.
const SOURCE: &str = include_str!("../slots.lua");

/// The default lease of a held slot.
pub(super) const DEFAULT_LEASE: Duration = Duration::from_secs(30);
/// The default time between two polls of a waiting request.
pub(super) const DEFAULT_POLL: Duration = Duration::from_millis(25);
/// The longest lease accepted.
pub(super) const MAX_LEASE: Duration = Duration::from_secs(24 * 60 * 60);

/// Renewals and releases sent in one script call, at most.
const KEYS_PER_CALL: usize = 128;
const IDS_PER_CALL: usize = 1024;
/// Frees kept for a retry while Redis cannot take them, at most.
const MAX_PENDING_FREES: usize = 100_000;

/// The script's answer to a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    /// A slot, with the key's count now.
    Granted(u32),
    /// In line.
    Waiting,
    /// Refused: no free slot and no room (or no leave) to wait.
    Full(u32),
    /// Refused: it would have had to wait, and may not (`max_wait` of 0).
    WouldWait,
}

/// What the slot logic needs of the store, borrowed from it.
pub(super) struct Parts<'a> {
    pub(super) backend: &'a Backend,
    pub(super) breaker: &'a Arc<Breaker>,
    pub(super) deadline: Duration,
    pub(super) prefix: &'a str,
    pub(super) counters: Counts<'a>,
    pub(super) slots: &'a Slots,
}

/// The store's counters that slot calls add to.
pub(super) struct Counts<'a> {
    pub(super) answered: &'a AtomicU64,
    pub(super) failures: &'a AtomicU64,
    pub(super) timeouts: &'a AtomicU64,
    pub(super) short_circuits: &'a AtomicU64,
    pub(super) fallbacks: &'a AtomicU64,
    pub(super) script_loads: &'a AtomicU64,
    pub(super) metrics: &'a super::metrics::StoreMetrics,
}

/// How to get a [`Parts`] from the store's shared state `T`.
pub(super) type PartsOf<T> = for<'a> fn(&'a T) -> Parts<'a>;

/// The store's shared state, held, and the way to its [`Parts`]: what a
/// slot call takes with it when it goes on past its deadline (see
/// [`call`]).
pub(super) struct Owner<T> {
    state: Arc<T>,
    parts: PartsOf<T>,
}

impl<T> Owner<T> {
    pub(super) fn new(state: Arc<T>, parts: PartsOf<T>) -> Self {
        Owner { state, parts }
    }

    /// What the slot logic needs of the store.
    pub(super) fn parts(&self) -> Parts<'_> {
        (self.parts)(&self.state)
    }
}

impl<T> Clone for Owner<T> {
    fn clone(&self) -> Self {
        Owner {
            state: Arc::clone(&self.state),
            parts: self.parts,
        }
    }
}

/// This node's side of the shared slots: its identity, its settings, the
/// channel to its upkeep task, its fallback limiter and its local waiters.
pub(super) struct Slots {
    script: Script,
    /// A random id for this node (this store): holder ids start with it.
    node: u64,
    /// The counter that makes holder ids unique on this node.
    next: AtomicU64,
    lease: Duration,
    poll: Duration,
    waiter_lease: Duration,
    upkeep: UnboundedSender<Msg>,
    /// The upkeep task, until the first request spawns it.
    idle_upkeep: Mutex<Option<Upkeep>>,
    /// Counts slots while Redis cannot, for limits that fail locally.
    local: ConcurrencyLimiter,
    /// Per key, what wakes this node's waiters when it frees a slot.
    waiters: Mutex<HashMap<u64, (Arc<Notify>, usize)>>,
}

impl fmt::Debug for Slots {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Slots")
            .field("lease", &self.lease)
            .field("poll", &self.poll)
            .field("waiter_lease", &self.waiter_lease)
            .finish_non_exhaustive()
    }
}

impl Slots {
    /// This node's slots with leases of `lease`, waiters polling every
    /// `poll`, and calls of at most `deadline`. The upkeep task starts with
    /// the first request.
    pub(super) fn new(lease: Duration, poll: Duration, deadline: Duration) -> Slots {
        let (tx, rx) = mpsc::unbounded_channel();
        // A random node id; should the OS not give one, the clock and the
        // address of a fresh allocation still tell nodes apart in practice.
        let node = getrandom::u64().unwrap_or_else(|_| {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64);
            let spot = Box::new(0u8);
            nanos ^ (&*spot as *const u8 as u64).rotate_left(32)
        });
        Slots {
            script: Script::new(SOURCE),
            node,
            next: AtomicU64::new(0),
            lease,
            poll,
            waiter_lease: waiter_lease(poll, deadline),
            upkeep: tx,
            idle_upkeep: Mutex::new(Some(Upkeep { rx, lease })),
            local: ConcurrencyLimiter::new(),
            waiters: Mutex::new(HashMap::new()),
        }
    }

    /// Spawns the upkeep task on the current Tokio runtime, once (with the
    /// first request, so that a store whose limits have no cap runs none).
    fn start_upkeep<T: Send + Sync + 'static>(&self, owner: &Owner<T>) {
        let mut idle = self.idle_upkeep.lock();
        if idle.is_none() {
            return;
        }
        // Outside a runtime nothing can be spawned (the request falls back
        // to its policy, see `run`): a later request starts the task.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            if let Some(upkeep) = idle.take() {
                runtime.spawn(upkeep.run(Arc::downgrade(&owner.state), owner.parts));
            }
        }
    }

    /// The slots script, for loading at connect.
    pub(super) fn script(&self) -> &Script {
        &self.script
    }

    fn holder(&self, n: u64) -> String {
        format!("{:016x}{n:x}", self.node)
    }

    /// Registers a waiter of `key`, to be woken when this node frees one of
    /// its slots.
    fn wait_on(&self, key: u64) -> Waiting<'_> {
        let mut waiters = self.waiters.lock();
        let entry = waiters
            .entry(key)
            .or_insert_with(|| (Arc::new(Notify::new()), 0));
        entry.1 += 1;
        Waiting {
            slots: self,
            key,
            notify: Arc::clone(&entry.0),
        }
    }

    /// Wakes this node's waiters of `key`.
    fn wake(&self, key: u64) {
        if let Some((notify, _)) = self.waiters.lock().get(&key) {
            notify.notify_waiters();
        }
    }
}

/// How long a waiter's place in line lasts without a poll: four polls and
/// four deadlines, and at least 250 ms. A node that dies leaves the line
/// after it.
fn waiter_lease(poll: Duration, deadline: Duration) -> Duration {
    (poll.saturating_add(deadline))
        .saturating_mul(4)
        .max(Duration::from_millis(250))
}

fn millis(d: Duration) -> String {
    d.as_millis().max(1).to_string()
}

/// One key's in-flight count: its keyed hash in the limit's concurrency
/// domain, and the principal whose hash slot its Redis keys are in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct Count {
    principal: u64,
    key: u64,
}

impl Count {
    /// The Redis keys of its slots: held, line, waiter leases, cap.
    fn keys(self, prefix: &str) -> [String; 4] {
        slot_keys(prefix, self.principal, self.key)
    }
}

/// A registered waiter; unregisters on drop.
struct Waiting<'a> {
    slots: &'a Slots,
    key: u64,
    notify: Arc<Notify>,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        let mut waiters = self.slots.waiters.lock();
        if let Some(entry) = waiters.get_mut(&self.key) {
            entry.1 -= 1;
            if entry.1 == 0 {
                waiters.remove(&self.key);
            }
        }
    }
}

/// Gives up what a request may have in Redis (a place in line, or a slot
/// whose grant never reached it) when dropped armed: the request's future
/// was dropped, it timed out, or it fell back.
struct Leave<'a> {
    upkeep: &'a UnboundedSender<Msg>,
    key: Count,
    n: u64,
    armed: bool,
}

impl Drop for Leave<'_> {
    fn drop(&mut self) {
        if self.armed {
            let _ = self.upkeep.send(Msg::Free {
                key: self.key,
                n: self.n,
            });
        }
    }
}

/// Why a script call gave no answer.
enum CallError {
    /// The request's wait ran out during the call (not Redis's fault).
    WaitOver,
    /// Redis failed (or the breaker is open); `sent` if the call may have
    /// reached it.
    Failed { sent: bool },
}

/// Asks for a slot of `key` (of `principal`) for the store `owner` (see
/// [`SharedSlots::acquire`](crate::store::protocol::SharedSlots::acquire)).
pub(super) fn acquire<T: Send + Sync + 'static>(
    owner: Arc<T>,
    parts: PartsOf<T>,
    key: u64,
    principal: u64,
    max: u32,
    mode: Mode,
    policy: FailurePolicy,
) -> SlotFuture {
    Box::pin(async move {
        let owner = Owner::new(owner, parts);
        owner.parts().slots.start_upkeep(&owner);
        run(&owner, Count { principal, key }, max, mode, policy).await
    })
}

async fn run<T: Send + Sync + 'static>(
    owner: &Owner<T>,
    count: Count,
    max: u32,
    mode: Mode,
    policy: FailurePolicy,
) -> Result<Permit, Busy> {
    let p = &owner.parts();
    let key = count.key;
    if tokio::runtime::Handle::try_current().is_err() {
        // Neither Redis calls nor their deadlines work outside a Tokio
        // runtime: the failure policy answers instead of a panic.
        return fall_back(p, key, max, mode, policy, Instant::now()).await;
    }
    let s = p.slots;
    let (max_queued, max_wait) = match mode {
        Mode::Refuse => (0, Duration::ZERO),
        Mode::Queue {
            max_queued,
            max_wait,
        } => (max_queued, max_wait),
    };
    let may_join = !max_wait.is_zero();
    let started = Instant::now();
    let until = started.checked_add(max_wait);
    let n = s.next.fetch_add(1, Ordering::Relaxed);
    let keys = count.keys(p.prefix);
    let mut args = [
        String::from("a"),
        s.holder(n),
        max.to_string(),
        String::from("1"),
        max_queued.to_string(),
        String::from(if may_join { "1" } else { "0" }),
        millis(s.lease),
        millis(s.waiter_lease),
    ];
    let mut leave = Leave {
        upkeep: &s.upkeep,
        key: count,
        n,
        armed: false,
    };
    let waiting = (may_join && max_queued > 0).then(|| s.wait_on(key));
    let mut polls = 0u32;
    loop {
        // Listen for this node's releases before asking, so that none made
        // during the call is missed.
        let mut woken = pin!(waiting.as_ref().map(|w| w.notify.notified()));
        if let Some(woken) = woken.as_mut().as_pin_mut() {
            woken.enable();
        }
        let budget = match until {
            Some(until) if polls > 0 => p
                .deadline
                .min(until.saturating_duration_since(Instant::now())),
            _ => p.deadline,
        };
        leave.armed = true;
        let reply = match call(owner, &keys, &args, budget).await {
            Ok(reply) => reply,
            Err(CallError::WaitOver) => {
                return Err(Busy::TimedOut {
                    waited: started.elapsed(),
                })
            }
            Err(CallError::Failed { sent }) => {
                // Nothing to give up if nothing reached Redis.
                leave.armed = sent || polls > 0;
                drop(leave);
                return fall_back(p, key, max, mode, policy, started).await;
            }
        };
        let Some(verdict) = parse(&reply) else {
            // Cannot happen: `call` checked the reply.
            drop(leave);
            return fall_back(p, key, max, mode, policy, started).await;
        };
        match verdict {
            Verdict::Granted(in_flight) => {
                leave.armed = false;
                let _ = s.upkeep.send(Msg::Held { key: count, n });
                let upkeep = s.upkeep.clone();
                return Ok(Permit::shared(key, in_flight, move || {
                    let _ = upkeep.send(Msg::Free { key: count, n });
                }));
            }
            Verdict::Full(in_flight) => {
                leave.armed = false;
                return Err(Busy::Full { in_flight });
            }
            Verdict::WouldWait => {
                leave.armed = false;
                return Err(Busy::TimedOut {
                    waited: Duration::ZERO,
                });
            }
            Verdict::Waiting => {
                // In line, `leave` armed. Wait for a poll, a local
                // release, or the end of the wait.
                polls = polls.saturating_add(1);
                args[3] = String::from("0");
                let pause = match until {
                    Some(until) => s.poll.min(until.saturating_duration_since(Instant::now())),
                    None => s.poll,
                };
                if !pause.is_zero() {
                    match woken.as_mut().as_pin_mut() {
                        Some(woken) => drop(tokio::time::timeout(pause, woken).await),
                        None => tokio::time::sleep(pause).await,
                    }
                }
                if until.is_some_and(|until| Instant::now() >= until) {
                    return Err(Busy::TimedOut {
                        waited: started.elapsed(),
                    });
                }
            }
        }
    }
}

/// Reads an acquire reply: `[verdict, in flight, position, line length]`.
fn parse(reply: &[i64]) -> Option<Verdict> {
    let [verdict, in_flight, position, line] = *reply else {
        return None;
    };
    let in_flight = u32::try_from(in_flight).ok()?;
    if position < 0 || line < 0 {
        return None;
    }
    match verdict {
        1 => Some(Verdict::Granted(in_flight)),
        2 => Some(Verdict::Waiting),
        3 => Some(Verdict::Full(in_flight)),
        4 => Some(Verdict::WouldWait),
        _ => None,
    }
}

/// One script call through the breaker, within `budget` (the deadline, or
/// less when the request's wait ends sooner). A call unanswered by then
/// goes on in a task of its own, so that the breaker hears a late answer
/// (see [`breaker::within`]).
async fn call<T: Send + Sync + 'static>(
    owner: &Owner<T>,
    keys: &[String],
    args: &[String],
    budget: Duration,
) -> Result<Vec<i64>, CallError> {
    let p = &owner.parts();
    let permit = p.breaker.permit();
    if let Call::Refused(_) = permit {
        p.counters.short_circuits.fetch_add(1, Ordering::Relaxed);
        tracing::trace!("rate-limit store: circuit open, Redis not called for a slot");
        return Err(CallError::Failed { sent: false });
    }
    let ticket = Ticket::new(Arc::clone(p.breaker), permit);
    let cut_short = budget < p.deadline;
    let call = {
        let (owner, keys, args) = (owner.clone(), keys.to_vec(), args.to_vec());
        async move {
            let p = owner.parts();
            let loads = p.counters.script_loads;
            p.backend
                .eval::<_, Vec<i64>>(&p.slots.script, &keys, &args, loads)
                .await
        }
    };
    let failure = match breaker::within(p.breaker, budget, call).await {
        // The request's own time ran out, not Redis's: the ticket is
        // dropped unanswered (abandoned).
        Err(_) if cut_short => return Err(CallError::WaitOver),
        Err(sent) => Failure::Timeout(budget, sent),
        Ok(Err(e)) => Failure::Redis(e),
        Ok(Ok(reply)) if args[0] != "a" || parse(&reply).is_some() => {
            p.counters.answered.fetch_add(1, Ordering::Relaxed);
            if ticket.success() == Transition::Closed {
                tracing::info!("rate-limit store: Redis answers again");
            }
            return Ok(reply);
        }
        Ok(Ok(reply)) => Failure::Reply(format!("{reply:?}")),
    };
    record_failure(p, &failure, ticket);
    Err(CallError::Failed { sent: true })
}

fn record_failure(p: &Parts<'_>, failure: &Failure, ticket: Ticket) {
    let counters = [p.counters.failures, p.counters.timeouts];
    let metrics = p.counters.metrics;
    failure::record(
        failure,
        ticket,
        p.breaker,
        counters,
        metrics,
        "in-flight caps",
    );
}

/// The answer when Redis could not give one: the limit's failure policy.
async fn fall_back(
    p: &Parts<'_>,
    key: u64,
    max: u32,
    mode: Mode,
    policy: FailurePolicy,
    started: Instant,
) -> Result<Permit, Busy> {
    p.counters.fallbacks.fetch_add(1, Ordering::Relaxed);
    match policy {
        FailurePolicy::Open => Ok(Permit::failed_open(key)),
        FailurePolicy::Closed => Err(Busy::Unavailable),
        FailurePolicy::Local { percent } => {
            let elapsed = started.elapsed();
            let mode = match mode {
                Mode::Queue {
                    max_queued,
                    max_wait,
                } if !max_wait.is_zero() => {
                    let left = max_wait.saturating_sub(elapsed);
                    if left.is_zero() {
                        return Err(Busy::TimedOut { waited: elapsed });
                    }
                    Mode::Queue {
                        max_queued,
                        max_wait: left,
                    }
                }
                other => other,
            };
            let share = share(max, percent);
            match p.slots.local.acquire(key, share, mode).await {
                Err(Busy::TimedOut { waited }) => Err(Busy::TimedOut {
                    waited: waited.saturating_add(elapsed),
                }),
                Err(Busy::Full { in_flight }) => Err(Busy::LocalShareFull { in_flight, share }),
                other => other.map(Permit::fallen_back),
            }
        }
    }
}

/// `percent` % of `max`, rounded up, at least 1 (a cap of 0 stays 0).
fn share(max: u32, percent: u8) -> u32 {
    if max == 0 {
        return 0;
    }
    let percent = u64::from(percent.clamp(1, 100));
    let cap = (u64::from(max) * percent).div_ceil(100);
    u32::try_from(cap).unwrap_or(max).clamp(1, max)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_local_share_rounds_up_and_never_drops_below_one() {
        assert_eq!(share(10, 25), 3);
        assert_eq!(share(10, 30), 3);
        assert_eq!(share(3, 10), 1);
        assert_eq!(share(1, 1), 1);
        assert_eq!(share(0, 50), 0);
        assert_eq!(share(u32::MAX, 100), u32::MAX);
        assert_eq!(share(7, 0), 1);
    }

    #[test]
    fn only_well_formed_acquire_replies_are_read() {
        assert_eq!(parse(&[1, 3, 0, 0]), Some(Verdict::Granted(3)));
        assert_eq!(parse(&[2, 3, 1, 2]), Some(Verdict::Waiting));
        assert_eq!(parse(&[3, 2, 0, 1]), Some(Verdict::Full(2)));
        assert_eq!(parse(&[4, 2, 0, 0]), Some(Verdict::WouldWait));
        assert_eq!(parse(&[5, 3, 0, 0]), None);
        assert_eq!(parse(&[1, -1, 0, 0]), None);
        assert_eq!(parse(&[1, 3, 0]), None);
    }

    #[test]
    fn a_waiter_lease_spans_several_polls() {
        assert_eq!(
            waiter_lease(Duration::from_millis(25), Duration::from_millis(50)),
            Duration::from_millis(300)
        );
        assert_eq!(
            waiter_lease(Duration::from_millis(1), Duration::from_millis(1)),
            Duration::from_millis(250)
        );
    }
}
