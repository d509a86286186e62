//! Temporary bans after repeated refusals: the penalty box.
//!
//! A [`Penalty`] says when a key has misbehaved long enough to be shut out:
//! after `refusals` refusals within `within`, every request of that key is
//! refused for `ban`. Exotel's "an account refused 20 times within 60 s is
//! throttled for 300 s" is `Penalty::new(20, 60 s, 300 s)`.
//! A [`PenaltyBox`] keeps, per key, what that rule needs and nothing more.
//!
//! Like the stores, the box works on a key's 64-bit keyed hash and on time as
//! integer nanoseconds since the Unix epoch, on the layer's clock, passed in
//! by the caller: it never reads a clock itself, so it is exact and tests
//! need no sleeps.
//!
//! # The counting rule
//!
//! A refusal recorded at `t` **counts** at every instant of `[t, t + within)`:
//! `within` nanoseconds, the start included and the end excluded, just as a
//! ban of length `ban` started at `s` is in force over `[s, s + ban)`.
//! A ban starts at the refusal that makes `refusals` counted refusals, that
//! is, at a refusal at `now` when the key's last `refusals` refusals
//! `t_1 <= … <= t_N = now` have `now - t_1 < within`. Two refusals exactly
//! `within` apart are *not* within `within` of each other.
//!
//! * **Refusals during a ban are ignored**: they neither extend the ban nor
//!   count towards the next one. A ban is a fixed sentence, so the
//!   `Retry-After` given with the first refused request stays true: a client
//!   that retries during the ban (as clients do) is not kept out forever, and
//!   a request sent when the ban's `Retry-After` runs out is not refused by
//!   the ban.
//! * **After a ban the count starts fresh**: the refusals that led to it are
//!   forgotten when it starts, so it takes `refusals` new refusals within
//!   `within` after the ban ends to start another.
//! * **A key's time never runs backwards**: two threads may read the clock
//!   and then record in the other order; a refusal whose `now` is earlier
//!   than the key's latest counted refusal is counted at that latest time.
//!   When calls come in time order, as they do from one clock, everything
//!   above is exact to the nanosecond.
//!
//! # Memory
//!
//! Only keys that were refused recently are kept: a key with a ban in force
//! holds one `u64`; a key with counted refusals holds their times, at most
//! `refusals - 1` of them. [`PenaltyBox::sweep`] (and every shard on its own,
//! when a refusal touches it and its sweep interval has passed) drops every
//! key whose state equals a fresh key's (no ban in force and no refusal that
//! still counts), so dropping it loses nothing. The number of keys kept has a
//! hard cap, [`PenaltyBox::with_max_keys`]; what happens at the cap is on
//! [`PenaltyBox`].
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use tower_ratelimit::penalty::{Penalty, PenaltyBox};
//!
//! const S: u64 = 1_000_000_000;
//! // Exotel: refused 20 times within 60 s, throttled for 300 s.
//! let penalty = Penalty::new(20, Duration::from_secs(60), Duration::from_secs(300)).unwrap();
//! let bans = PenaltyBox::new();
//! let account = 0x5eed_u64; // the account's keyed hash
//! let t0 = 1_700_000_000 * S;
//!
//! // 19 refusals, one every 3 s: no ban yet.
//! for i in 0..19 {
//!     assert_eq!(bans.record_refusal(account, t0 + i * 3 * S, &penalty), None);
//! }
//! // The 20th, 57 s after the first, starts a 300 s ban.
//! let start = t0 + 57 * S;
//! assert_eq!(bans.record_refusal(account, start, &penalty), Some(300 * S));
//! assert_eq!(bans.banned_for(account, start + 100 * S), Some(200 * S));
//! // It lifts exactly 300 s after it started.
//! assert_eq!(bans.banned_for(account, start + 300 * S - 1), Some(1));
//! assert_eq!(bans.banned_for(account, start + 300 * S), None);
//!
//! // Once nothing counts any more, the key is dropped.
//! bans.sweep(start + 300 * S);
//! assert!(bans.is_empty());
//! ```

use std::collections::VecDeque;
use std::fmt;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use parking_lot::Mutex;

use crate::shard::{mix, sparse, KeyMap, Padded};
use crate::ConfigError;

/// When a key is banned and for how long: after `refusals` refusals within
/// `within`, for `ban`.
///
/// The exact rule is in the [module documentation](self): a refusal counts
/// for `within` nanoseconds after it (the end excluded), the ban starts at the
/// refusal that makes `refusals` counted ones, lasts exactly `ban`, is not
/// extended by refusals during it, and the count starts fresh after it.
///
/// ```
/// use std::time::Duration;
/// use tower_ratelimit::penalty::Penalty;
///
/// let exotel = Penalty::new(20, Duration::from_secs(60), Duration::from_secs(300)).unwrap();
/// assert_eq!(exotel.refusals(), 20);
/// assert_eq!(exotel.within(), Duration::from_secs(60));
/// assert_eq!(exotel.ban(), Duration::from_secs(300));
///
/// let err = Penalty::new(0, Duration::from_secs(60), Duration::from_secs(300)).unwrap_err();
/// assert_eq!(err.field(), "refusals");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Penalty {
    refusals: u32,
    within_ns: u64,
    ban_ns: u64,
}

impl Penalty {
    /// The most refusals a penalty can count (a key keeps up to this many
    /// refusal times, 8 bytes each).
    pub const MAX_REFUSALS: u32 = 1_000;

    /// The longest `within` or `ban`: 366 days.
    pub const MAX_DURATION: Duration = Duration::from_secs(366 * 24 * 60 * 60);

    /// A penalty that bans a key for `ban` after `refusals` refusals within
    /// `within`.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] of kind
    /// [`InvalidValue`](crate::ConfigErrorKind::InvalidValue), naming the
    /// field (`refusals`, `within` or `ban`), when `refusals` is 0 or above
    /// [`MAX_REFUSALS`](Self::MAX_REFUSALS), or a duration is zero or longer
    /// than [`MAX_DURATION`](Self::MAX_DURATION).
    pub fn new(refusals: u32, within: Duration, ban: Duration) -> Result<Self, ConfigError> {
        if refusals == 0 {
            return Err(ConfigError::invalid(
                "refusals",
                "a penalty needs at least 1 refusal",
            ));
        }
        if refusals > Self::MAX_REFUSALS {
            return Err(ConfigError::invalid(
                "refusals",
                format!(
                    "{refusals} refusals is more than a penalty can count (at most {})",
                    Self::MAX_REFUSALS
                ),
            ));
        }
        let within_ns = duration_ns("within", within)?;
        let ban_ns = duration_ns("ban", ban)?;
        Ok(Penalty {
            refusals,
            within_ns,
            ban_ns,
        })
    }

    /// How many refusals within [`within`](Self::within) start a ban.
    pub fn refusals(&self) -> u32 {
        self.refusals
    }

    /// How long a refusal counts towards a ban.
    pub fn within(&self) -> Duration {
        Duration::from_nanos(self.within_ns)
    }

    /// How long a ban lasts.
    pub fn ban(&self) -> Duration {
        Duration::from_nanos(self.ban_ns)
    }

    /// [`within`](Self::within) in nanoseconds.
    pub fn within_ns(&self) -> u64 {
        self.within_ns
    }

    /// [`ban`](Self::ban) in nanoseconds.
    pub fn ban_ns(&self) -> u64 {
        self.ban_ns
    }
}

fn duration_ns(field: &str, duration: Duration) -> Result<u64, ConfigError> {
    if duration.is_zero() {
        return Err(ConfigError::invalid(
            field,
            "a penalty's durations must be longer than zero",
        ));
    }
    if duration > Penalty::MAX_DURATION {
        return Err(ConfigError::invalid(
            field,
            format!(
                "{duration:?} is longer than a penalty allows (at most {} days)",
                Penalty::MAX_DURATION.as_secs() / 86_400
            ),
        ));
    }
    // At most 366 days: about 3.2e16 ns, far below u64::MAX.
    Ok(duration.as_nanos() as u64)
}

/// The bans in force and the recent refusals of every key, shared by all
/// requests (`Send + Sync`; put it in an `Arc`).
///
/// Keys are spread over shards, each a mutex around a hash table from the
/// key's 64-bit keyed hash to its state, so threads working on different
/// keys rarely meet. Time is `now`, nanoseconds since the Unix epoch, as the
/// stores take it.
///
/// **At the cap** ([`with_max_keys`](Self::with_max_keys), default
/// [`DEFAULT_MAX_KEYS`](Self::DEFAULT_MAX_KEYS)) the box never holds more
/// keys than the cap, and never drops a key whose state still matters: a
/// ban in force is never lifted early and a key's counted refusals are never
/// forgotten early, so a flood of distinct refused keys cannot free a banned
/// client. Instead, when the box is full, a refusal of a key that is *not*
/// tracked yet is not counted. Keys already tracked are counted exactly as
/// ever. So at the cap a ban can only start *later* than the rule says (the
/// refusals that were not counted are missing), never earlier, and never
/// ends early. Room comes back as soon as a tracked key becomes fresh: the
/// box knows the earliest moment that can happen, and the first refusal of
/// a new key after it sweeps every shard (one thread at a time; a refusal
/// that finds a sweep running is not counted) and takes the room freed.
///
/// ```
/// use std::time::Duration;
/// use tower_ratelimit::penalty::{Penalty, PenaltyBox};
///
/// let penalty = Penalty::new(1, Duration::from_secs(1), Duration::from_secs(60)).unwrap();
/// let bans = PenaltyBox::with_max_keys(1);
/// assert_eq!(bans.record_refusal(7, 0, &penalty), Some(60_000_000_000));
/// // Full: key 8's refusal is not counted, and key 7 stays banned.
/// assert_eq!(bans.record_refusal(8, 1, &penalty), None);
/// assert_eq!(bans.banned_for(8, 1), None);
/// assert_eq!(bans.banned_for(7, 1), Some(59_999_999_999));
/// assert_eq!(bans.len(), 1);
/// ```
pub struct PenaltyBox {
    shards: Box<[Padded<Mutex<Shard>>]>,
    /// Keys tracked in all shards; never above `max_keys`.
    len: AtomicUsize,
    max_keys: usize,
    /// No tracked state becomes fresh before this time (a lower bound over
    /// every shard's `earliest`).
    earliest: AtomicU64,
    /// Held by the one thread sweeping every shard to make room at the cap.
    sweeping: Mutex<()>,
    sweep_interval: u64,
}

impl fmt::Debug for PenaltyBox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The keys themselves stay out of logs.
        f.debug_struct("PenaltyBox")
            .field("len", &self.len())
            .field("max_keys", &self.max_keys)
            .field("shards", &self.shards.len())
            .field("sweep_interval", &Duration::from_nanos(self.sweep_interval))
            .finish()
    }
}

impl Default for PenaltyBox {
    fn default() -> Self {
        Self::new()
    }
}

impl PenaltyBox {
    /// The cap of [`PenaltyBox::new`]: 100,000 keys.
    ///
    /// A banned key takes about 60 bytes; a key with counted refusals about
    /// 60 bytes plus 8 per refusal kept (at most `refusals - 1`, allocated in
    /// steps of powers of two).
    pub const DEFAULT_MAX_KEYS: usize = 100_000;

    const SHARDS: usize = 64;
    const DEFAULT_SWEEP_INTERVAL: u64 = 5_000_000_000;

    /// An empty box holding at most
    /// [`DEFAULT_MAX_KEYS`](Self::DEFAULT_MAX_KEYS) keys.
    pub fn new() -> Self {
        Self::with_max_keys(Self::DEFAULT_MAX_KEYS)
    }

    /// An empty box holding at most `max_keys` keys (0 tracks nothing, so
    /// bans nobody). See [`PenaltyBox`] for what happens at the cap.
    pub fn with_max_keys(max_keys: usize) -> Self {
        PenaltyBox {
            shards: (0..Self::SHARDS)
                .map(|_| Padded(Mutex::new(Shard::default())))
                .collect(),
            len: AtomicUsize::new(0),
            max_keys,
            earliest: AtomicU64::new(u64::MAX),
            sweeping: Mutex::new(()),
            sweep_interval: Self::DEFAULT_SWEEP_INTERVAL,
        }
    }

    /// Sets how often a shard drops fresh keys on its own, when a refusal
    /// touches it (default 5 seconds).
    #[must_use]
    pub fn sweep_interval(mut self, interval: Duration) -> Self {
        self.sweep_interval = interval.as_nanos().min(u128::from(u64::MAX)) as u64;
        self
    }

    /// The most keys this box holds at once.
    pub fn max_keys(&self) -> usize {
        self.max_keys
    }

    /// The number of keys tracked now: keys banned or with counted refusals,
    /// plus fresh ones not swept yet.
    pub fn len(&self) -> usize {
        self.len.load(Ordering::Acquire)
    }

    /// Whether no key is tracked.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Nanoseconds left in `key`'s ban at `now`, or `None` if no ban is in
    /// force (a ban started at `s` of length `b` is in force over `[s, s + b)`).
    pub fn banned_for(&self, key: u64, now: u64) -> Option<u64> {
        if self.is_empty() {
            return None;
        }
        let key = mix(key);
        let shard = self.shard(key).lock();
        match shard.map.get(&key) {
            Some(State::Banned { until }) if now < *until => Some(until - now),
            _ => None,
        }
    }

    /// Records that a request of `key` was refused at `now`, under `penalty`.
    ///
    /// Returns the new ban's length in nanoseconds if this refusal started a
    /// ban, `None` otherwise: too few refusals yet, a ban already in force
    /// (the refusal is ignored, see the [module documentation](self)), or the
    /// box is full and `key` not tracked (see [`PenaltyBox`]).
    ///
    /// If one key is recorded under different penalties (a policy changed at
    /// runtime), the times it kept are judged by the penalty of each call.
    pub fn record_refusal(&self, key: u64, now: u64, penalty: &Penalty) -> Option<u64> {
        self.upsert(
            key,
            now,
            |state| state.refused(now, penalty),
            || State::first(now, penalty),
        )
        .flatten()
    }

    /// Records that `key` is banned until `until` (ns since the Unix epoch):
    /// a ban learned elsewhere, such as from a store shared with other
    /// processes. A later ban in force is kept.
    #[cfg(feature = "redis")]
    pub(crate) fn note_ban(&self, key: u64, now: u64, until: u64) {
        let banned = |until| State::Banned { until };
        self.upsert(
            key,
            now,
            |state| match state {
                State::Banned { until: known } if *known >= until => {}
                state => *state = banned(until),
            },
            || (banned(until), ()),
        );
    }

    /// Updates `key`'s state with `existing`, or inserts `fresh()`'s if the
    /// key is not tracked and the cap leaves room (sweeping to make room if
    /// need be); `None` when the box is full.
    fn upsert<R>(
        &self,
        key: u64,
        now: u64,
        existing: impl FnOnce(&mut State) -> R,
        fresh: impl FnOnce() -> (State, R),
    ) -> Option<R> {
        let key = mix(key);
        // Whether this call holds one place under the cap for `key`.
        let mut reserved = false;
        loop {
            let mut shard = self.shard(key).lock();
            if now >= shard.next_sweep {
                shard.next_sweep = now.saturating_add(self.sweep_interval);
                self.sweep_shard(&mut shard, now);
            }
            if let Some(state) = shard.map.get_mut(&key) {
                // (Another thread may have added `key` while this one made
                // room: its place goes back.)
                if reserved {
                    self.len.fetch_sub(1, Ordering::AcqRel);
                }
                let answer = existing(state);
                let expires = state.expires();
                self.written(&mut shard, expires);
                return Some(answer);
            }
            if reserved || self.reserve() {
                let (state, answer) = fresh();
                self.written(&mut shard, state.expires());
                shard.map.insert(key, state);
                return Some(answer);
            }
            // Full. Sweeping needs every shard's lock, one at a time.
            drop(shard);
            if !self.make_room(now) {
                return None;
            }
            reserved = true;
        }
    }

    /// Drops every key whose state equals a fresh key's at `now` (no ban in
    /// force and no refusal that still counts) and gives spare memory back.
    /// A dropped key then behaves exactly as if it had been kept.
    pub fn sweep(&self, now: u64) {
        for shard in self.shards.iter() {
            self.sweep_shard(&mut shard.0.lock(), now);
        }
        // The new lower bound: every shard's, read twice, so that a state
        // written while the first reading ran (whose own `fetch_min` this
        // `store` may undo) is seen by the second.
        self.earliest
            .store(self.shards_earliest(), Ordering::Release);
        self.earliest
            .fetch_min(self.shards_earliest(), Ordering::AcqRel);
    }

    /// Takes a place under the cap for a new key, sweeping every shard first
    /// if some key may have become fresh. Only one thread sweeps at a time;
    /// the others find no room meanwhile.
    fn make_room(&self, now: u64) -> bool {
        if self.reserve() {
            return true;
        }
        if now < self.earliest.load(Ordering::Acquire) {
            return false;
        }
        let Some(_sweeping) = self.sweeping.try_lock() else {
            return false;
        };
        self.sweep(now);
        self.reserve()
    }

    fn shards_earliest(&self) -> u64 {
        self.shards
            .iter()
            .map(|s| s.0.lock().earliest)
            .min()
            .unwrap_or(u64::MAX)
    }

    /// Notes that a state expiring at `expires` was written to `shard`.
    fn written(&self, shard: &mut Shard, expires: u64) {
        shard.earliest = shard.earliest.min(expires);
        // Expiries mostly grow: a plain load spares the shared cache line.
        if expires < self.earliest.load(Ordering::Relaxed) {
            self.earliest.fetch_min(expires, Ordering::AcqRel);
        }
    }

    fn sweep_shard(&self, shard: &mut Shard, now: u64) {
        let removed = shard.sweep(now);
        if removed > 0 {
            self.len.fetch_sub(removed, Ordering::AcqRel);
        }
    }

    /// Takes one place under the cap, if there is one.
    fn reserve(&self) -> bool {
        self.len
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.max_keys).then_some(n + 1)
            })
            .is_ok()
    }

    fn shard(&self, mixed: u64) -> &Mutex<Shard> {
        // Bits 24..56: the table places entries by the lowest bits and tells
        // them apart by the highest seven.
        let x = (mixed >> 24) & 0xFFFF_FFFF;
        let index = (x * self.shards.len() as u64) >> 32;
        &self.shards[index as usize].0
    }
}

/// What the box knows about one key.
#[derive(Debug)]
enum State {
    /// A ban that ends at `until` (excluded); no refusal counts.
    Banned { until: u64 },
    /// The times of the refusals that may still count, oldest first, at most
    /// `refusals - 1` of them and never empty; the newest stops counting at
    /// `until`.
    Counting { times: VecDeque<u64>, until: u64 },
}

impl State {
    /// The state of a key never seen after one refusal at `now`.
    fn first(now: u64, penalty: &Penalty) -> (State, Option<u64>) {
        if penalty.refusals <= 1 {
            return Self::ban(now, penalty);
        }
        let mut times = VecDeque::with_capacity(1);
        times.push_back(now);
        let until = now.saturating_add(penalty.within_ns);
        (State::Counting { times, until }, None)
    }

    fn ban(now: u64, penalty: &Penalty) -> (State, Option<u64>) {
        let until = now.saturating_add(penalty.ban_ns);
        (State::Banned { until }, Some(penalty.ban_ns))
    }

    /// Applies one more refusal at `now`; returns the length of the ban it
    /// started, if it started one.
    fn refused(&mut self, now: u64, penalty: &Penalty) -> Option<u64> {
        let (next, started) = match self {
            State::Banned { until } if now < *until => return None,
            State::Banned { .. } => Self::first(now, penalty),
            State::Counting { times, until } => {
                let now = times.back().map_or(now, |&newest| now.max(newest));
                while times
                    .front()
                    .is_some_and(|&t| t.saturating_add(penalty.within_ns) <= now)
                {
                    times.pop_front();
                }
                if times.len() + 1 < penalty.refusals as usize {
                    times.push_back(now);
                    *until = now.saturating_add(penalty.within_ns);
                    return None;
                }
                Self::ban(now, penalty)
            }
        };
        *self = next;
        started
    }

    /// When this state becomes a fresh key's (a time `<= now` means it is).
    fn expires(&self) -> u64 {
        match self {
            State::Banned { until } | State::Counting { until, .. } => *until,
        }
    }
}

#[derive(Debug)]
struct Shard {
    map: KeyMap<State>,
    /// When a sweep runs on its own next.
    next_sweep: u64,
    /// No state here becomes fresh before this time: the earliest expiry
    /// found by the last sweep, lowered by every state written since.
    earliest: u64,
}

impl Default for Shard {
    fn default() -> Self {
        Shard {
            map: KeyMap::default(),
            next_sweep: 0,
            earliest: u64::MAX,
        }
    }
}

impl Shard {
    /// Drops the fresh states; returns how many.
    fn sweep(&mut self, now: u64) -> usize {
        let before = self.map.len();
        let mut earliest = u64::MAX;
        self.map.retain(|_, state| {
            let expires = state.expires();
            if expires > now {
                earliest = earliest.min(expires);
            }
            expires > now
        });
        if sparse(self.map.len(), self.map.capacity()) {
            self.map.shrink_to(self.map.len() * 2);
        }
        self.earliest = earliest;
        before - self.map.len()
    }
}
