//! The penalty box: the bans in force and the recent refusals of every key.
//!
//! Like the stores, the box works on a key's 64-bit keyed hash and on time as
//! integer nanoseconds since the Unix epoch, on the layer's clock, passed in
//! by the caller: it never reads a clock itself, so it is exact and tests
//! need no sleeps. It applies the rule of the [module](super) exactly.
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

use std::collections::VecDeque;
use std::fmt;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use parking_lot::Mutex;

use super::Penalty;
use crate::shard::{mix, sparse, KeyMap, Padded};

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
pub(crate) struct PenaltyBox {
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
    pub(crate) const DEFAULT_MAX_KEYS: usize = 100_000;

    const SHARDS: usize = 64;
    const DEFAULT_SWEEP_INTERVAL: u64 = 5_000_000_000;

    /// An empty box holding at most
    /// [`DEFAULT_MAX_KEYS`](Self::DEFAULT_MAX_KEYS) keys.
    pub(crate) fn new() -> Self {
        Self::with_max_keys(Self::DEFAULT_MAX_KEYS)
    }

    /// An empty box holding at most `max_keys` keys (0 tracks nothing, so
    /// bans nobody). See [`PenaltyBox`] for what happens at the cap.
    pub(crate) fn with_max_keys(max_keys: usize) -> Self {
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
    pub(crate) fn sweep_interval(mut self, interval: Duration) -> Self {
        self.sweep_interval = interval.as_nanos().min(u128::from(u64::MAX)) as u64;
        self
    }

    /// The most keys this box holds at once.
    #[cfg(test)]
    pub(crate) fn max_keys(&self) -> usize {
        self.max_keys
    }

    /// The number of keys tracked now: keys banned or with counted refusals,
    /// plus fresh ones not swept yet.
    pub(crate) fn len(&self) -> usize {
        self.len.load(Ordering::Acquire)
    }

    /// Whether no key is tracked.
    pub(crate) fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Nanoseconds left in `key`'s ban at `now`, or `None` if no ban is in
    /// force (a ban started at `s` of length `b` is in force over `[s, s + b)`).
    pub(crate) fn banned_for(&self, key: u64, now: u64) -> Option<u64> {
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

    /// Forgets `key`'s ban and counted refusals, as if it had none.
    pub(crate) fn forget(&self, key: u64) {
        let key = mix(key);
        if self.shard(key).lock().map.remove(&key).is_some() {
            self.len.fetch_sub(1, Ordering::AcqRel);
        }
    }

    /// Forgets every key's ban and counted refusals.
    #[cfg(feature = "redis")]
    pub(crate) fn clear(&self) {
        for shard in self.shards.iter() {
            let removed = {
                let mut shard = shard.0.lock();
                let removed = shard.map.len();
                shard.map.clear();
                removed
            };
            self.len.fetch_sub(removed, Ordering::AcqRel);
        }
    }

    /// Records that a request of `key` was refused at `now`, under `penalty`:
    /// counted, with the new ban's length in nanoseconds if this refusal
    /// started one; or not counted, under a ban already in force (see the
    /// [module documentation](self)), with the time it has left; `None` if
    /// the box is full and `key` not tracked (see [`PenaltyBox`]).
    ///
    /// If one key is recorded under different penalties (a policy changed at
    /// runtime), the times it kept are judged by the penalty of each call.
    pub(crate) fn record(&self, key: u64, now: u64, penalty: &Penalty) -> Option<Recorded> {
        self.upsert(
            key,
            now,
            |state| state.refused(now, penalty),
            || {
                let (state, started) = State::first(now, penalty);
                (state, Recorded::Counted(started))
            },
        )
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
    pub(crate) fn sweep(&self, now: u64) {
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

/// What one more refusal did to a key's penalty.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Recorded {
    /// Counted; with the length (ns) of the ban it started, if it did.
    Counted(Option<u64>),
    /// Not counted: the key is banned for this many more nanoseconds.
    Banned(u64),
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

    /// Applies one more refusal at `now`: counted (with the length of the
    /// ban it started, if it started one), or not, under a ban in force.
    fn refused(&mut self, now: u64, penalty: &Penalty) -> Recorded {
        let (next, started) = match self {
            State::Banned { until } if now < *until => return Recorded::Banned(*until - now),
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
                    return Recorded::Counted(None);
                }
                Self::ban(now, penalty)
            }
        };
        *self = next;
        Recorded::Counted(started)
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

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Barrier};
    use std::time::Duration;

    use super::{Penalty, PenaltyBox, Recorded};
    use crate::ConfigErrorKind;

    impl PenaltyBox {
        /// The length of the ban a refusal started, if it started one.
        fn record_refusal(&self, key: u64, now: u64, penalty: &Penalty) -> Option<u64> {
            match self.record(key, now, penalty)? {
                Recorded::Counted(started) => started,
                Recorded::Banned(_) => None,
            }
        }
    }

    const S: u64 = 1_000_000_000;
    const T0: u64 = 1_700_000_000 * S;

    fn penalty(refusals: u32, within_ns: u64, ban_ns: u64) -> Penalty {
        Penalty::new(
            refusals,
            Duration::from_nanos(within_ns),
            Duration::from_nanos(ban_ns),
        )
        .unwrap()
    }

    fn exotel() -> Penalty {
        Penalty::new(20, Duration::from_secs(60), Duration::from_secs(300)).unwrap()
    }

    #[test]
    fn penalty_refuses_zero_and_absurd_values_naming_the_field() {
        let minute = Duration::from_secs(60);
        let cases = [
            (0, minute, minute, "refusals"),
            (Penalty::MAX_REFUSALS + 1, minute, minute, "refusals"),
            (u32::MAX, minute, minute, "refusals"),
            (5, Duration::ZERO, minute, "within"),
            (5, minute, Duration::ZERO, "ban"),
            (
                5,
                Penalty::MAX_DURATION + Duration::from_nanos(1),
                minute,
                "within",
            ),
            (5, minute, Duration::MAX, "ban"),
        ];
        for (refusals, within, ban, field) in cases {
            let err = Penalty::new(refusals, within, ban).unwrap_err();
            assert_eq!(err.kind(), ConfigErrorKind::InvalidValue);
            assert_eq!(err.field(), field, "{refusals} {within:?} {ban:?}");
            assert!(!err.message().is_empty());
        }
        let widest = Penalty::new(
            Penalty::MAX_REFUSALS,
            Penalty::MAX_DURATION,
            Penalty::MAX_DURATION,
        )
        .unwrap();
        assert_eq!(widest.within(), Penalty::MAX_DURATION);
        let narrowest = penalty(1, 1, 1);
        assert_eq!((narrowest.within_ns(), narrowest.ban_ns()), (1, 1));
    }

    #[test]
    fn ban_starts_exactly_at_the_nth_refusal_within_the_window() {
        let bans = PenaltyBox::new();
        let p = penalty(5, 10 * S, 30 * S);
        for i in 0..4 {
            assert_eq!(bans.record_refusal(1, T0 + i * S, &p), None, "refusal {i}");
            assert_eq!(bans.banned_for(1, T0 + i * S), None, "not banned after {i}");
        }
        assert_eq!(bans.record_refusal(1, T0 + 4 * S, &p), Some(30 * S));
        assert_eq!(bans.banned_for(1, T0 + 4 * S), Some(30 * S));
    }

    #[test]
    fn refusals_spread_wider_than_the_window_never_ban() {
        let bans = PenaltyBox::new();
        let p = penalty(3, 10 * S, 30 * S);
        // Three refusals every 5 s + 1 ns: any three span 10 s + 2 ns.
        for i in 0..10_000 {
            let now = T0 + i * (5 * S + 1);
            assert_eq!(bans.record_refusal(1, now, &p), None, "refusal {i}");
            assert_eq!(bans.banned_for(1, now), None);
        }
    }

    #[test]
    fn refusals_exactly_the_window_apart_are_not_within_it() {
        let p = penalty(2, 10 * S, 30 * S);
        // Exactly `within` apart: the first no longer counts.
        let bans = PenaltyBox::new();
        assert_eq!(bans.record_refusal(1, T0, &p), None);
        assert_eq!(bans.record_refusal(1, T0 + 10 * S, &p), None);
        assert_eq!(bans.banned_for(1, T0 + 10 * S), None);
        // One nanosecond less: both count.
        let bans = PenaltyBox::new();
        assert_eq!(bans.record_refusal(1, T0, &p), None);
        assert_eq!(bans.record_refusal(1, T0 + 10 * S - 1, &p), Some(30 * S));

        // With more refusals the span is measured from the oldest counted one.
        let p = penalty(3, 10 * S, 30 * S);
        let bans = PenaltyBox::new();
        assert_eq!(bans.record_refusal(1, T0, &p), None);
        assert_eq!(bans.record_refusal(1, T0 + 5 * S, &p), None);
        assert_eq!(bans.record_refusal(1, T0 + 10 * S, &p), None, "T0 is out");
        assert_eq!(
            bans.record_refusal(1, T0 + 15 * S - 1, &p),
            Some(30 * S),
            "T0+5s, T0+10s and this one span under 10 s"
        );
    }

    #[test]
    fn banned_for_counts_down_exactly_and_the_ban_lifts_at_its_end() {
        let bans = PenaltyBox::new();
        let p = penalty(1, S, 300 * S);
        assert_eq!(bans.record_refusal(9, T0, &p), Some(300 * S));
        for elapsed in [0, 1, S, 299 * S, 300 * S - 1] {
            assert_eq!(bans.banned_for(9, T0 + elapsed), Some(300 * S - elapsed));
        }
        assert_eq!(bans.banned_for(9, T0 + 300 * S), None);
        assert_eq!(bans.banned_for(9, T0 + 301 * S), None);
    }

    #[test]
    fn refusals_during_a_ban_neither_extend_it_nor_count_after_it() {
        let bans = PenaltyBox::new();
        let p = penalty(3, 10 * S, 60 * S);
        for i in 0..2 {
            assert_eq!(bans.record_refusal(1, T0 + i, &p), None);
        }
        assert_eq!(bans.record_refusal(1, T0 + 2, &p), Some(60 * S));
        let end = T0 + 2 + 60 * S;
        // Refused requests during the ban, right up to its last nanosecond.
        for now in [T0 + 3, T0 + S, end - 2, end - 1] {
            assert_eq!(bans.record_refusal(1, now, &p), None);
            assert_eq!(bans.banned_for(1, now), Some(end - now));
        }
        assert_eq!(bans.banned_for(1, end), None, "not extended");
        // The count starts fresh: the refusals just before the end were not
        // counted, and neither are those that led to the ban.
        assert_eq!(bans.record_refusal(1, end, &p), None);
        assert_eq!(bans.record_refusal(1, end + 1, &p), None);
        assert_eq!(bans.banned_for(1, end + 1), None);
        assert_eq!(bans.record_refusal(1, end + 2, &p), Some(60 * S));
        assert_eq!(bans.banned_for(1, end + 2), Some(60 * S));
    }

    #[test]
    fn a_penalty_of_one_refusal_bans_at_the_first() {
        let bans = PenaltyBox::new();
        let p = penalty(1, S, 5 * S);
        assert_eq!(bans.record_refusal(3, T0, &p), Some(5 * S));
        assert_eq!(bans.record_refusal(3, T0 + 5 * S, &p), Some(5 * S));
        assert_eq!(bans.banned_for(3, T0 + 10 * S - 1), Some(1));
    }

    #[test]
    fn keys_are_independent() {
        let bans = PenaltyBox::new();
        let p = penalty(3, 10 * S, 30 * S);
        // Interleaved refusals of two keys: each needs its own three.
        for i in 0..2 {
            assert_eq!(bans.record_refusal(1, T0 + i, &p), None);
            assert_eq!(bans.record_refusal(2, T0 + i, &p), None);
        }
        assert_eq!(bans.record_refusal(1, T0 + 2, &p), Some(30 * S));
        assert_eq!(bans.banned_for(2, T0 + 2), None, "key 2 is not banned");
        assert_eq!(bans.banned_for(3, T0 + 2), None, "nor is a key never seen");
        assert_eq!(bans.record_refusal(2, T0 + 3, &p), Some(30 * S));
        assert_eq!(bans.banned_for(1, T0 + 3), Some(30 * S - 1));
        assert_eq!(bans.banned_for(2, T0 + 3), Some(30 * S));
        assert_eq!(bans.len(), 2);
    }

    #[test]
    fn exotel_twenty_refusals_within_sixty_seconds_throttle_for_three_hundred() {
        let p = exotel();
        assert_eq!(p.refusals(), 20);
        assert_eq!(p.within_ns(), 60 * S);
        assert_eq!(p.ban_ns(), 300 * S);

        // 20 refusals, the last 60 s - 1 ns after the first: throttled.
        let bans = PenaltyBox::new();
        let step = (60 * S - 1) / 19;
        let mut now = T0;
        for i in 0..19 {
            now = T0 + i * step;
            assert_eq!(bans.record_refusal(7, now, &p), None, "refusal {i}");
        }
        let last = T0 + 60 * S - 1;
        assert!(last > now);
        assert_eq!(bans.record_refusal(7, last, &p), Some(300 * S));
        assert_eq!(bans.banned_for(7, last + 120 * S), Some(180 * S));
        assert_eq!(bans.banned_for(7, last + 300 * S - 1), Some(1));
        assert_eq!(bans.banned_for(7, last + 300 * S), None);

        // 20 refusals with the first exactly 60 s before the 20th: 19 count.
        let bans = PenaltyBox::new();
        assert_eq!(bans.record_refusal(7, T0, &p), None);
        for i in 1..19 {
            assert_eq!(bans.record_refusal(7, T0 + i * S, &p), None);
        }
        assert_eq!(bans.record_refusal(7, T0 + 60 * S, &p), None);
        assert_eq!(bans.banned_for(7, T0 + 60 * S), None);
        // The next one makes 20 in the last 60 s.
        assert_eq!(bans.record_refusal(7, T0 + 60 * S, &p), Some(300 * S));
        assert_eq!(bans.banned_for(7, T0 + 360 * S - 1), Some(1));
        assert_eq!(bans.banned_for(7, T0 + 360 * S), None);

        // A client refused once a second for ten minutes: banned at the 20th,
        // refused through the ban, and banned again 20 refusals after it lifts.
        let bans = PenaltyBox::new();
        let starts: Vec<u64> = (0..600)
            .filter(|&i| bans.record_refusal(7, T0 + i * S, &p).is_some())
            .collect();
        assert_eq!(starts, [19, 19 + 300 + 19]);
    }

    #[test]
    fn a_fresh_count_after_the_ban_ignores_refusals_before_it() {
        // Within is longer than the ban: the refusals that led to the ban would
        // still be inside the window when it lifts, but they no longer count.
        let bans = PenaltyBox::new();
        let p = penalty(3, 100 * S, 10 * S);
        for i in 0..2 {
            assert_eq!(bans.record_refusal(1, T0 + i * S, &p), None);
        }
        assert_eq!(bans.record_refusal(1, T0 + 2 * S, &p), Some(10 * S));
        let end = T0 + 12 * S;
        assert_eq!(bans.record_refusal(1, end, &p), None);
        assert_eq!(bans.record_refusal(1, end + S, &p), None);
        assert_eq!(bans.record_refusal(1, end + 2 * S, &p), Some(10 * S));
    }

    /// A tiny deterministic generator, so that the history is the same on every
    /// run.
    struct Lcg(u64);

    impl Lcg {
        fn next(&mut self, below: u64) -> u64 {
            self.0 = self
                .0
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (self.0 >> 33) % below
        }
    }

    #[test]
    fn sweeping_is_lossless_a_swept_box_answers_like_an_unswept_one() {
        let p = penalty(4, 10 * S, 7 * S);
        let kept = PenaltyBox::new().sweep_interval(Duration::from_secs(1_000_000));
        let swept = PenaltyBox::new();
        let mut rng = Lcg(42);
        let mut now = T0;
        let mut bans_started = 0;
        for step in 0..100_000 {
            // Bursts and pauses, in whole seconds give or take a nanosecond
            // (so that the clock often lands on the last nanosecond of a window
            // or a ban, or on its end), and now and then anything up to 12 s.
            now += match rng.next(8) {
                0 => 0,
                1 => 1,
                2 => S - 1,
                3 | 4 => S,
                5 => 2 * S,
                6 => 3 * S,
                _ => rng.next(12 * S),
            };
            let key = rng.next(8);
            if rng.next(3) == 0 {
                assert_eq!(
                    kept.banned_for(key, now),
                    swept.banned_for(key, now),
                    "step {step}"
                );
            } else {
                let a = kept.record_refusal(key, now, &p);
                assert_eq!(a, swept.record_refusal(key, now, &p), "step {step}");
                bans_started += usize::from(a.is_some());
            }
            swept.sweep(now);
            for key in 0..8 {
                assert_eq!(kept.banned_for(key, now), swept.banned_for(key, now));
            }
        }
        assert!(bans_started > 1_000, "the history bans often");
        assert!(swept.len() <= kept.len());
    }

    #[test]
    fn a_swept_key_behaves_like_a_fresh_one() {
        let p = penalty(3, 10 * S, 30 * S);
        let bans = PenaltyBox::new();
        // Key 1: two refusals that stop counting at T0 + 11 s.
        bans.record_refusal(1, T0, &p);
        bans.record_refusal(1, T0 + S, &p);
        bans.sweep(T0 + 11 * S - 1);
        assert_eq!(bans.len(), 1, "the refusal at T0 + 1 s still counts");
        bans.sweep(T0 + 11 * S);
        assert_eq!(bans.len(), 0);
        // Fresh: two refusals do not ban, the third does.
        assert_eq!(bans.record_refusal(1, T0 + 11 * S, &p), None);
        assert_eq!(bans.record_refusal(1, T0 + 11 * S, &p), None);
        assert_eq!(bans.record_refusal(1, T0 + 11 * S, &p), Some(30 * S));
        // A ban is kept until its last nanosecond has passed.
        bans.sweep(T0 + 41 * S - 1);
        assert_eq!(bans.banned_for(1, T0 + 41 * S - 1), Some(1));
        bans.sweep(T0 + 41 * S);
        assert!(bans.is_empty());
    }

    #[test]
    fn sweep_frees_every_key_once_everything_expires() {
        let p = exotel();
        let bans = PenaltyBox::new();
        for key in 0..20_000u64 {
            let now = T0 + key * 1_000;
            // Half the keys get banned, half only counted.
            let times = if key % 2 == 0 { 20 } else { 5 };
            for _ in 0..times {
                bans.record_refusal(key, now, &p);
            }
        }
        assert_eq!(bans.len(), 20_000);
        let last = T0 + 19_999 * 1_000;
        bans.sweep(last + 60 * S);
        assert_eq!(bans.len(), 10_000, "the counted keys are fresh again");
        assert_eq!(
            bans.banned_for(19_998, last + 60 * S),
            Some(240 * S - 1_000)
        );
        bans.sweep(last + 300 * S);
        assert_eq!(bans.len(), 0);
        assert!(bans.is_empty());
    }

    #[test]
    fn shards_sweep_themselves_when_refusals_touch_them() {
        let p = penalty(2, S, S);
        let bans = PenaltyBox::new().sweep_interval(Duration::from_secs(10));
        for key in 0..10_000u64 {
            bans.record_refusal(key, T0, &p);
        }
        assert_eq!(bans.len(), 10_000);
        // Much later, refusals of other keys touch every shard.
        for key in 10_000..20_000u64 {
            bans.record_refusal(key, T0 + 100 * S, &p);
        }
        assert_eq!(bans.len(), 10_000, "the old keys were swept");
    }

    #[test]
    fn at_the_cap_a_flood_of_keys_never_grows_the_box_nor_lifts_a_ban() {
        let p = exotel();
        let cap = 1_000;
        let bans = PenaltyBox::with_max_keys(cap);
        assert_eq!(bans.max_keys(), cap);
        // A client banned, and one with 19 counted refusals.
        for _ in 0..19 {
            bans.record_refusal(u64::MAX, T0, &p);
            bans.record_refusal(u64::MAX - 1, T0, &p);
        }
        assert_eq!(bans.record_refusal(u64::MAX, T0, &p), Some(300 * S));
        let end = T0 + 300 * S;
        // 100,000 distinct keys refused within 60 s, 20 times each for some.
        let mut banned_in_flood = Vec::new();
        for key in 0..100_000u64 {
            let now = T0 + key * 599_000; // the flood lasts 59.9 s
            let times = if key % 100 == 0 { 20 } else { 1 };
            for _ in 0..times {
                if bans.record_refusal(key, now, &p).is_some() {
                    banned_in_flood.push(key);
                }
            }
            assert!(bans.len() <= cap, "key {key}: {} keys", bans.len());
            assert_eq!(bans.banned_for(u64::MAX, now), Some(end - now));
            if key % 997 == 0 {
                bans.sweep(now);
            }
        }
        assert_eq!(bans.len(), cap, "the box is full");
        // Nothing became fresh during the flood: the first 998 keys were
        // tracked (and those refused 20 times banned), the rest not counted.
        assert_eq!(
            banned_in_flood,
            (0..10).map(|k| k * 100).collect::<Vec<_>>()
        );
        assert_eq!(bans.banned_for(100_000 - 100, T0 + 60 * S), None);
        // The tracked client's count survived the flood: one more refusal, 60 s
        // after its first minus 1 ns, is its 20th.
        assert_eq!(
            bans.record_refusal(u64::MAX - 1, T0 + 60 * S - 1, &p),
            Some(300 * S)
        );
        // The ban lifts at its end, not before.
        assert_eq!(bans.banned_for(u64::MAX, end - 1), Some(1));
        assert_eq!(bans.banned_for(u64::MAX, end), None);
        // Once everything has expired the box empties.
        bans.sweep(T0 + 60 * S + 300 * S);
        assert!(bans.is_empty());
    }

    #[test]
    fn at_the_cap_untracked_keys_are_counted_once_room_frees_up() {
        let p = penalty(2, 10 * S, 30 * S);
        let bans = PenaltyBox::with_max_keys(1);
        assert_eq!(bans.record_refusal(1, T0, &p), None);
        // Full: key 2 is not counted, so two refusals do not ban it.
        assert_eq!(bans.record_refusal(2, T0 + 1, &p), None);
        assert_eq!(bans.record_refusal(2, T0 + 2, &p), None);
        assert_eq!(bans.banned_for(2, T0 + 2), None);
        assert_eq!(bans.len(), 1);
        // The tracked key is counted as ever.
        assert_eq!(bans.record_refusal(1, T0 + 3, &p), Some(30 * S));
        // Room frees when key 1's ban ends, and the next new key takes it.
        let end = T0 + 3 + 30 * S;
        assert_eq!(bans.record_refusal(2, end - 1, &p), None);
        assert_eq!(bans.banned_for(1, end - 1), Some(1));
        assert_eq!(bans.record_refusal(2, end, &p), None, "first counted");
        assert_eq!(bans.record_refusal(2, end + 1, &p), Some(30 * S));
        assert_eq!(bans.len(), 1);
        assert_eq!(bans.banned_for(1, end), None);
    }

    #[test]
    fn at_the_cap_room_freed_in_any_shard_is_found() {
        let p = penalty(2, 10 * S, 30 * S);
        let cap = 64;
        let bans = PenaltyBox::with_max_keys(cap).sweep_interval(Duration::from_secs(1_000_000));
        for key in 0..cap as u64 {
            assert_eq!(bans.record_refusal(key, T0 + key, &p), None);
        }
        assert_eq!(bans.len(), cap);
        // Key 0 stops counting at T0 + 10 s: from then on exactly one new key
        // fits, whichever shard it lands in.
        assert_eq!(bans.record_refusal(1_000, T0 + 10 * S - 1, &p), None);
        assert_eq!(bans.record_refusal(1_000, T0 + 10 * S - 1, &p), None);
        for key in 1_001..1_100u64 {
            bans.record_refusal(key, T0 + 10 * S, &p);
        }
        assert_eq!(bans.len(), cap);
        assert_eq!(bans.record_refusal(1_001, T0 + 10 * S, &p), Some(30 * S));
        assert_eq!(bans.record_refusal(1_002, T0 + 10 * S, &p), None);
    }

    #[test]
    fn a_box_with_no_room_tracks_and_bans_nobody() {
        let bans = PenaltyBox::with_max_keys(0);
        let p = penalty(1, S, S);
        assert_eq!(bans.record_refusal(1, T0, &p), None);
        assert_eq!(bans.banned_for(1, T0), None);
        assert!(bans.is_empty());
    }

    #[test]
    fn concurrent_refusals_of_one_key_start_exactly_one_ban() {
        for round in 0..20u64 {
            let bans = Arc::new(PenaltyBox::new());
            let started = Arc::new(AtomicUsize::new(0));
            let threads = 8;
            let barrier = Arc::new(Barrier::new(threads));
            let p = exotel();
            let handles: Vec<_> = (0..threads as u64)
                .map(|t| {
                    let (bans, started, barrier) = (bans.clone(), started.clone(), barrier.clone());
                    std::thread::spawn(move || {
                        barrier.wait();
                        for i in 0..500u64 {
                            // Clocks read by different threads, slightly apart.
                            let now = T0 + round + i * 1_000 + t;
                            if let Some(ban) = bans.record_refusal(42, now, &p) {
                                assert_eq!(ban, 300 * S);
                                started.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    })
                })
                .collect();
            for handle in handles {
                handle.join().unwrap();
            }
            assert_eq!(started.load(Ordering::Relaxed), 1, "round {round}");
            assert_eq!(bans.len(), 1);
            let remaining = bans.banned_for(42, T0 + 10 * S).unwrap();
            assert!(remaining <= 300 * S && remaining > 289 * S);
        }
    }

    #[test]
    fn concurrent_refusals_of_many_keys_ban_each_once() {
        let bans = Arc::new(PenaltyBox::new());
        let p = penalty(10, 60 * S, 300 * S);
        let handles: Vec<_> = (0..8u64)
            .map(|t| {
                let bans = bans.clone();
                std::thread::spawn(move || {
                    let mut started = 0;
                    for i in 0..20u64 {
                        for key in 0..1_000u64 {
                            let now = T0 + i * S + t;
                            started += usize::from(bans.record_refusal(key, now, &p).is_some());
                        }
                    }
                    started
                })
            })
            .collect();
        let started: usize = handles.into_iter().map(|h| h.join().unwrap()).sum();
        assert_eq!(started, 1_000, "every key banned exactly once");
        assert_eq!(bans.len(), 1_000);
        for key in 0..1_000 {
            assert!(bans.banned_for(key, T0 + 20 * S).is_some());
        }
    }

    #[test]
    fn time_going_backwards_or_extreme_times_never_panic() {
        let bans = PenaltyBox::new();
        let p = penalty(3, 10 * S, 30 * S);
        // A refusal recorded with an earlier clock reading counts at the latest.
        assert_eq!(bans.record_refusal(1, T0 + 5 * S, &p), None);
        assert_eq!(bans.record_refusal(1, T0, &p), None);
        // Both count as at T0 + 5 s: a third at T0 + 15 s - 1 ns bans.
        assert_eq!(bans.record_refusal(1, T0 + 15 * S - 1, &p), Some(30 * S));

        let p = Penalty::new(
            Penalty::MAX_REFUSALS,
            Penalty::MAX_DURATION,
            Penalty::MAX_DURATION,
        )
        .unwrap();
        for now in [0, 1, u64::MAX - 1, u64::MAX, 0, u64::MAX / 2] {
            for key in [0, 1, u64::MAX] {
                bans.record_refusal(key, now, &p);
                bans.banned_for(key, now);
            }
            bans.sweep(now);
        }
        let one = penalty(1, 1, Penalty::MAX_DURATION.as_nanos() as u64);
        assert_eq!(
            bans.record_refusal(9, u64::MAX - 1, &one),
            Some(one.ban_ns())
        );
        assert_eq!(bans.banned_for(9, u64::MAX - 1), Some(1), "saturates");
        bans.sweep(u64::MAX);
    }

    #[test]
    fn the_box_is_send_sync_and_debug_without_its_keys() {
        fn send_sync<T: Send + Sync>() {}
        send_sync::<PenaltyBox>();
        let bans = PenaltyBox::with_max_keys(10);
        bans.record_refusal(0xDEAD_BEEF, T0, &exotel());
        let debug = format!("{bans:?}");
        assert!(debug.contains("len: 1"), "{debug}");
        assert!(!debug.to_lowercase().contains("deadbeef"), "{debug}");
        assert!(!debug.contains(&0xDEAD_BEEFu64.to_string()), "{debug}");
        assert!(format!("{:?}", exotel()).contains("refusals: 20"));
    }

    #[test]
    fn exotel_rule_bans_at_the_twentieth_refusal_for_exactly_300_s() {
        // Exotel: refused 20 times within 60 s, throttled for 300 s.
        let penalty = Penalty::new(20, Duration::from_secs(60), Duration::from_secs(300)).unwrap();
        let bans = PenaltyBox::new();
        let account = 0x5eed_u64; // the account's keyed hash
        let t0 = 1_700_000_000 * S;

        // 19 refusals, one every 3 s: no ban yet.
        for i in 0..19 {
            assert_eq!(bans.record_refusal(account, t0 + i * 3 * S, &penalty), None);
        }
        // The 20th, 57 s after the first, starts a 300 s ban.
        let start = t0 + 57 * S;
        assert_eq!(bans.record_refusal(account, start, &penalty), Some(300 * S));
        assert_eq!(bans.banned_for(account, start + 100 * S), Some(200 * S));
        // It lifts exactly 300 s after it started.
        assert_eq!(bans.banned_for(account, start + 300 * S - 1), Some(1));
        assert_eq!(bans.banned_for(account, start + 300 * S), None);

        // Once nothing counts any more, the key is dropped.
        bans.sweep(start + 300 * S);
        assert!(bans.is_empty());
    }

    #[test]
    fn a_full_box_counts_no_new_key_and_keeps_its_bans() {
        let penalty = Penalty::new(1, Duration::from_secs(1), Duration::from_secs(60)).unwrap();
        let bans = PenaltyBox::with_max_keys(1);
        assert_eq!(bans.record_refusal(7, 0, &penalty), Some(60_000_000_000));
        // Full: key 8's refusal is not counted, and key 7 stays banned.
        assert_eq!(bans.record_refusal(8, 1, &penalty), None);
        assert_eq!(bans.banned_for(8, 1), None);
        assert_eq!(bans.banned_for(7, 1), Some(59_999_999_999));
        assert_eq!(bans.len(), 1);
    }
}
