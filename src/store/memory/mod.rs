//! The in-memory store: sharded hash tables of one `u64` per key and window.
//!
//! The store and its settings here; how a request is decided in
//! [`decide`]; a shard's tables of states in [`shard`]; its penalties'
//! bans and counted refusals in [`penalties`].

mod decide;
mod penalties;
mod shard;

use std::future::Pending;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use parking_lot::Mutex;

use self::penalties::{ban_in_force, count_refusal};
use self::shard::Shard;
use super::algorithm::step;
use super::protocol::{Answer, Ban, Check, Decided, Outcome, Peeked};
use super::{Store, StoreError};
use crate::clock::LATEST;
use crate::penalty::PenaltyBox;
use crate::shard::Padded;

/// Counts kept in this process's memory.
///
/// Keys are spread over shards, each a mutex around small hash tables (one per
/// algorithm and window period) that map a bucket's 64-bit keyed hash to one
/// `u64` of state: 16 bytes per key and window plus the table's control byte
/// and free slots, about 28 bytes in all as keys arrive (shards get unequal
/// shares of the keys so that their tables never all sit just after
/// doubling at once). Where keys keep coming and going, a table's slots
/// freed by sweeps are reused but the table shrinks only once it is a
/// quarter full: plan for about twice that, 55-60 bytes per live key and
/// window, in steady churn.
/// A decision locks the shards of the request's buckets in index order, so
/// decisions over several limits are atomic and cannot deadlock, and threads
/// working on different keys rarely meet. The most common requests (one
/// limit, or a limit stacked on another, with up to four windows in all,
/// buckets already tracked, every window admitting) take one lock per
/// shard and one hash probe per window, and their states are written back
/// where the probes found them.
///
/// Its settings are chosen when it is made, before it is shared with a
/// layer: [`MemoryStore::with_max_entries`], then setters that take and
/// return the store ([`MemoryStore::shards`], [`MemoryStore::sweep_interval`],
/// [`MemoryStore::max_banned_keys`]); each returns a fresh, empty store.
///
/// **Idle keys** are dropped a second after their state equals a fresh
/// key's in every window of their shard (a key's windows go together, so
/// a key still counted in one is never left to an overflow sketch in
/// another), so dropping them loses nothing (the second is for a request whose
/// clock reads a little behind the sweep's, on another thread: it still
/// finds the count of the window it reads as current): every shard sweeps
/// itself when a decision
/// touches it and its sweep interval (default 5 s) has passed, and gives
/// memory back to the allocator when its tables become sparse.
/// [`MemoryStore::sweep`] sweeps every shard at once.
///
/// **Metrics** (cargo feature `metrics`): the gauge
/// `ratelimit_tracked_keys{store="memory"}` is the number of entries of
/// every memory store in the process, updated when a shard sweeps (its
/// handle is registered when the store is made, so install a recorder
/// before). The store's decisions are not timed: they take well under a
/// microsecond, and reading a clock twice would cost more than the rest of
/// an admitted request's counting.
///
/// **At the cap** ([`MemoryStore::with_max_entries`], default 1,000,000
/// entries, about 28 MB), a flood of made-up keys can neither grow memory
/// nor take anything from the keys already tracked:
///
/// * every key already tracked keeps its exact count: nothing is ever
///   evicted early;
/// * the cap is the whole store's, not each shard's: every window is
///   counted exactly while the store holds fewer than `max_entries`
///   entries, whichever shards the keys land in;
/// * once it holds them all, a window that needs a new entry is counted in
///   its shard's **overflow sketch** for its window period: a count-min
///   sketch of two rows, each bucket owning one cell per row (placed by
///   its keyed hash, so a client cannot choose its neighbours). A cell holds the
///   greatest state charged to any bucket placed there, and a bucket is
///   decided by the least of its two cells. So a key counted there is
///   **never admitted past its quota**; it may be **refused early**, by at
///   most what the keys sharing its cell in *each* row used in that window
///   (a key alone in either of its cells is counted exactly). Such a
///   refusal reports [`RefusalReason::Capacity`](crate::RefusalReason::Capacity)
///   and counts towards no penalty. A key stays counted in the sketch
///   until its estimate there is a fresh key's state again, so every entry
///   is exact, and a key moving back in loses nothing. The price: a key new
///   to the store whose cells a flood filled is decided by them too, even
///   once the store has room again, until those counts expire (at most its
///   window's period after the flood). The sketch cannot tell it from a key
///   the flood counted there, which must not get its quota again.
/// * A sketch has a fixed size, made when its shard first overflows: about
///   one cell (8 bytes) per entry of the shard's share of the cap in each
///   of its two rows, rows rounded up to a power of two. So memory stays
///   under about `max_entries` × (28 + 24 × the number of window periods
///   that overflowed) bytes for a flood that fills it once (and up to about
///   `max_entries` × (45 + 24 × periods) while keys keep coming and going at
///   the cap, as its tables churn), plus, for keys on a quota
///   other than their route's (an override, a plan), the rates they were
///   counted at: about 64 bytes per such key seen since its shard's last
///   sweep ([`MemoryStore::sweep_interval`]). A sketch is dropped when
///   every state in it is fresh again.
/// * Reaching the cap is logged at `warn` level, at most once a minute.
///
/// How early a key in a sketch may be refused depends on the flood: with
/// `F` keys counted in one window period's sketches at once and `C` cells
/// (about `max_entries`), a cell is shared with about `2F / C` other keys,
/// and a key is refused early only if, in both of its cells, those keys
/// used the room it needs. Floods on one window period do not touch
/// another period's sketches.
///
/// ```
/// use tower_ratelimit::store::MemoryStore;
/// use std::time::Duration;
///
/// let store = MemoryStore::with_max_entries(100_000).sweep_interval(Duration::from_secs(1));
/// assert_eq!(store.len(), 0);
/// assert!(store.max_entries() >= 100_000);
/// ```
#[derive(Debug)]
pub struct MemoryStore {
    settings: Settings,
    shards: Box<[Padded<Mutex<Shard>>]>,
    /// Shard `i` takes the buckets whose hash bits 24..56 are below
    /// `bounds[i]` (and not below `bounds[i - 1]`).
    bounds: Box<[u64]>,
    /// For each 1/256 of that hash space, the shard where it starts (so
    /// finding a bucket's shard takes a step or two, not a binary search).
    starts: Box<[usize]>,
    /// Each shard's share of the cap, which sizes its overflow sketches
    /// (changed by [`MemoryStore::set_max_entries`]).
    caps: Box<[AtomicUsize]>,
    /// The cap last asked for.
    requested: AtomicUsize,
    /// The entries of every shard: a new entry is made only while this is
    /// under the cap (room is reserved here before a shard inserts).
    entries: Padded<AtomicUsize>,
    sweep_interval: u64,
    /// The bans and counted refusals of checks with a penalty.
    penalties: PenaltyBox,
    at_cap: CapWarning,
    tracked: TrackedKeys,
}

/// A [`MemoryStore`]'s settings, kept to rebuild it when one changes.
#[derive(Debug, Clone, Copy)]
struct Settings {
    max_entries: usize,
    shards: usize,
    sweep_interval: u64,
    max_banned_keys: usize,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            max_entries: DEFAULT_MAX_ENTRIES,
            shards: 64,
            sweep_interval: 5_000_000_000,
            max_banned_keys: PenaltyBox::DEFAULT_MAX_KEYS,
        }
    }
}

/// The cap of [`MemoryStore::new`].
const DEFAULT_MAX_ENTRIES: usize = 1_000_000;

impl Settings {
    /// A store with these settings and no entries.
    fn build(self) -> MemoryStore {
        let shards = (0..self.shards)
            .map(|_| Padded(Mutex::new(Shard::default())))
            .collect();
        // Shard `i`'s share grows as 2^(i/n): the largest is twice the
        // smallest. Hash tables double when they fill, so equal shards would
        // all double at the same moment and the store's memory per entry
        // would swing between ~20 and ~40 bytes as keys come and go; shares
        // spread over one doubling keep the tables' fill levels spread too,
        // and memory per entry near its mean (~28 bytes) at any key count.
        let n = self.shards;
        let mut share = 0.0;
        let mut bounds = Vec::with_capacity(n);
        for (i, w) in shares(n).enumerate() {
            share += w;
            let bound = if i + 1 == n {
                1 << 32
            } else {
                (share * (1u64 << 32) as f64) as u64
            };
            bounds.push(bound);
        }
        MemoryStore {
            settings: self,
            shards,
            starts: (0..256u64)
                .map(|r| bounds.partition_point(|&b| b <= r << 24))
                .collect(),
            bounds: bounds.into(),
            caps: shard_caps(n, self.max_entries)
                .map(AtomicUsize::new)
                .collect(),
            requested: AtomicUsize::new(self.max_entries),
            entries: Padded(AtomicUsize::new(0)),
            sweep_interval: self.sweep_interval,
            penalties: PenaltyBox::with_max_keys(self.max_banned_keys)
                .sweep_interval(std::time::Duration::from_nanos(self.sweep_interval)),
            at_cap: CapWarning::default(),
            tracked: TrackedKeys::new(),
        }
    }
}

/// Each of `n` shards' share of the keys (summing to 1): shard `i`'s grows
/// as 2^(i/n), so the largest is twice the smallest (see [`Settings::build`]).
fn shares(n: usize) -> impl Iterator<Item = f64> {
    let weight = move |i: usize| (i as f64 / n as f64).exp2();
    let total: f64 = (0..n).map(weight).sum();
    (0..n).map(move |i| weight(i) / total)
}

/// Each of `n` shards' share of a cap of `max_entries`, rounded up.
fn shard_caps(n: usize, max_entries: usize) -> impl Iterator<Item = usize> {
    shares(n).map(move |share| ((max_entries as f64 * share).ceil() as usize).max(1))
}

/// The `ratelimit_tracked_keys{store="memory"}` gauge (feature `metrics`),
/// which every memory store adds its entries to: each shard adds the change
/// since its last sweep when it sweeps, and a dropped store takes its share
/// back.
struct TrackedKeys {
    #[cfg(feature = "metrics")]
    gauge: metrics::Gauge,
}

impl TrackedKeys {
    fn new() -> Self {
        TrackedKeys {
            #[cfg(feature = "metrics")]
            gauge: metrics::gauge!("ratelimit_tracked_keys", "store" => "memory"),
        }
    }

    /// `shard` has just swept: adds the change in its entries to the gauge.
    #[cfg_attr(not(feature = "metrics"), allow(unused_variables))]
    fn swept(&self, shard: &mut Shard) {
        #[cfg(feature = "metrics")]
        {
            let before = std::mem::replace(&mut shard.reported, shard.entries);
            if shard.entries >= before {
                self.gauge.increment((shard.entries - before) as f64);
            } else {
                self.gauge.decrement((before - shard.entries) as f64);
            }
        }
    }
}

impl std::fmt::Debug for TrackedKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TrackedKeys")
    }
}

#[cfg(feature = "metrics")]
impl Drop for MemoryStore {
    fn drop(&mut self) {
        let reported: usize = self.shards.iter_mut().map(|s| s.0.get_mut().reported).sum();
        if reported > 0 {
            self.tracked.gauge.decrement(reported as f64);
        }
    }
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryStore {
    /// A store with the default cap (1,000,000 entries), shards and sweep
    /// interval.
    pub fn new() -> Self {
        Settings::default().build()
    }

    /// A store that keeps at most `max` `(key, window)` entries at once
    /// (at least 1), in all its shards together: no key is counted in an
    /// overflow sketch while the store has room for it.
    pub fn with_max_entries(max: usize) -> Self {
        Settings {
            max_entries: max.max(1),
            ..Settings::default()
        }
        .build()
    }

    /// Sets the number of shards, rounded up to a power of two (default 64).
    /// The store comes back empty, so set it before the store is used.
    #[must_use]
    pub fn shards(self, shards: usize) -> Self {
        Settings {
            shards: shards.clamp(1, 1 << 16).next_power_of_two(),
            ..self.settings()
        }
        .build()
    }

    /// Sets how often a shard drops idle keys when a decision touches it
    /// (default 5 seconds, at most a day: a shard idle longer must be swept
    /// when next touched, for a fixed window's count read long after its
    /// window could read as current). The store comes back empty, so set
    /// it before the store is used.
    #[must_use]
    pub fn sweep_interval(self, interval: std::time::Duration) -> Self {
        const DAY: u128 = 86_400 * 1_000_000_000;
        Settings {
            sweep_interval: interval.as_nanos().min(DAY) as u64,
            ..self.settings()
        }
        .build()
    }

    /// Sets the most keys kept for penalties at once, banned or with
    /// refusals that still count (default 100,000). At the cap a ban in
    /// force is never lifted early and no counted refusal is forgotten
    /// early; a refusal of a key not tracked yet is not counted, so a ban
    /// can only start later than its rule says, never earlier. The store
    /// comes back empty, so set it before the store is used.
    #[must_use]
    pub fn max_banned_keys(self, max: usize) -> Self {
        Settings {
            max_banned_keys: max,
            ..self.settings()
        }
        .build()
    }

    /// The number of `(key, window)` entries tracked now.
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| s.0.lock().entries).sum()
    }

    /// Whether no entry is tracked.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The most `(key, window)` entries the store keeps: the cap it was made
    /// with ([`MemoryStore::with_max_entries`]) or last given
    /// ([`MemoryStore::set_max_entries`]).
    pub fn max_entries(&self) -> usize {
        self.requested.load(Ordering::Relaxed)
    }

    /// Changes the cap (at least 1) while the store is in use; whether it
    /// changed. Nothing tracked is dropped: under a lower cap, windows that
    /// need a new entry are counted in the overflow sketches until idle keys
    /// leave room, and a higher one gives new keys entries again. A
    /// [`RateLimitLayer`](crate::RateLimitLayer) made by
    /// [`new`](crate::RateLimitLayer::new) applies a reloaded policy's
    /// [`memory_max_entries`](crate::Policy::memory_max_entries) this way.
    pub fn set_max_entries(&self, max: usize) -> bool {
        let max = max.max(1);
        if self.requested.swap(max, Ordering::Relaxed) == max {
            return false;
        }
        for (cap, share) in self.caps.iter().zip(shard_caps(self.caps.len(), max)) {
            cap.store(share, Ordering::Relaxed);
        }
        true
    }

    /// The settings to rebuild the store with.
    fn settings(&self) -> Settings {
        Settings {
            max_entries: self.requested.load(Ordering::Relaxed),
            ..self.settings
        }
    }

    /// Drops every entry that has equalled a fresh key's for a second at
    /// `now` (nanoseconds since the Unix epoch, on the layer's clock) and
    /// returns spare memory.
    pub fn sweep(&self, now: u64) {
        for shard in self.shards.iter() {
            self.sweep_shard(&mut shard.0.lock(), now);
        }
        self.penalties.sweep(now);
    }

    /// The number of keys kept for penalties now: banned, or with refusals
    /// that still count.
    pub fn penalized_keys(&self) -> usize {
        self.penalties.len()
    }

    /// Sweeps `shard` at `now`: the entries it drops leave room under the
    /// cap.
    fn sweep_shard(&self, shard: &mut Shard, now: u64) {
        let before = shard.entries;
        shard.sweep(now);
        self.release(before - shard.entries);
        self.tracked.swept(shard);
    }

    /// Reserves room under the cap for `needed` new entries; whether there
    /// is room (no entry is reserved if not).
    fn reserve(&self, needed: usize) -> bool {
        let max = self.requested.load(Ordering::Relaxed);
        needed == 0
            || (self.entries.0)
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                    (n + needed <= max).then_some(n + needed)
                })
                .is_ok()
    }

    /// A shard made `made` new entries where it reserved room for
    /// `reserved`: the difference goes back (or is added).
    fn settle(&self, reserved: usize, made: usize) {
        if made < reserved {
            self.release(reserved - made);
        } else if made > reserved {
            self.entries.0.fetch_add(made - reserved, Ordering::Relaxed);
        }
    }

    /// `n` entries were dropped: their room is free again.
    fn release(&self, n: usize) {
        if n > 0 {
            self.entries.0.fetch_sub(n, Ordering::Relaxed);
        }
    }

    fn shard_of(&self, bucket: u64) -> usize {
        // Bits 24..56: the tables use the lowest bits to place an entry and
        // the highest seven to tell entries apart.
        let x = (bucket >> 24) & 0xFFFF_FFFF;
        let mut shard = self.starts[(x >> 24) as usize];
        while self.bounds[shard] <= x {
            shard += 1;
        }
        shard
    }
}

/// Logs, at most once a minute, that the store is counting keys in its
/// overflow sketches.
#[derive(Debug, Default)]
struct CapWarning {
    /// When the next warning may be logged (layer clock, ns).
    next: AtomicU64,
}

impl CapWarning {
    fn warn(&self, now: u64, max_entries: impl FnOnce() -> usize) {
        let next = self.next.load(Ordering::Relaxed);
        let after = now.saturating_add(60 * 1_000_000_000);
        if now < next
            || (self.next)
                .compare_exchange(next, after, Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
        {
            return;
        }
        tracing::warn!(
            max_entries = max_entries(),
            "the rate-limit memory store is at its cap: keys it has no room for are counted \
             approximately (never admitted past their quota, possibly refused early, with \
             RefusalReason::Capacity); raise max_entries if they are real clients"
        );
    }
}

impl Store for MemoryStore {
    type Pending = Pending<Result<Outcome, StoreError>>;

    fn check(&self, now: u64, checks: &[Check<'_>]) -> Decided<Self::Pending> {
        // A time past the latest one counted at is that one: no sum of the
        // arithmetic overflows.
        let now = now.min(LATEST);
        // One way out, so the outcome is built where it is returned.
        let mut decided = Decided::Ready(Ok(Outcome::building()));
        if let Decided::Ready(Ok(outcome)) = &mut decided {
            match ban_in_force(&self.penalties, now, checks) {
                Some(banned) => *outcome = banned,
                None => {
                    self.decide(now, checks, outcome);
                    count_refusal(&self.penalties, now, checks, outcome);
                }
            }
        }
        decided
    }

    fn banned_for(&self, key: u64, now: u64) -> Option<u64> {
        let now = now.min(LATEST);
        self.penalties.banned_for(key, now)
    }

    fn peek(&self, now: u64, checks: &[Check<'_>]) -> Answer<Peeked> {
        let now = now.min(LATEST);
        let mut peeked = Peeked::default();
        for (ci, check) in checks.iter().enumerate() {
            let shard = self.shards[self.shard_of(check.bucket)].0.lock();
            let algorithm = check.quota.algorithm_kind();
            for (wi, window) in check.quota.windows().iter().enumerate() {
                let state = shard.state_of(check, algorithm, window, now);
                let s = step(algorithm, window, state, now, 0);
                peeked.windows.push(s.status(ci, wi, window.limit()));
            }
            if let Some((key, _)) = check.penalty {
                if let Some(left) = self.penalties.banned_for(key, now) {
                    let check = ci as u8;
                    let started = false;
                    peeked.bans.push(Ban {
                        check,
                        left,
                        started,
                    });
                }
            }
        }
        Box::pin(std::future::ready(Ok(peeked)))
    }

    fn forget(&self, now: u64, checks: &[Check<'_>]) -> Answer<bool> {
        let now = now.min(LATEST);
        let mut all = true;
        for check in checks {
            let mut shard = self.shards[self.shard_of(check.bucket)].0.lock();
            let before = shard.entries;
            all &= shard.forget(check, now);
            self.release(before - shard.entries);
            if let Some((key, _)) = check.penalty {
                self.penalties.forget(key);
            }
        }
        Box::pin(std::future::ready(Ok(all)))
    }
}

#[cfg(test)]
mod tests {
    use super::decide::KNOWN_WINDOWS;
    use super::*;
    use crate::{Quota, Window};

    const S: u64 = 1_000_000_000;
    const T0: u64 = 1_700_000_000 * S;

    fn ready(store: &MemoryStore, now: u64, checks: &[Check<'_>]) -> Outcome {
        match store.check(now, checks) {
            Decided::Ready(Ok(o)) => o,
            other => panic!("memory store answered {other:?}"),
        }
    }

    #[test]
    fn a_window_a_quota_dropped_is_converted_from_its_own_rate_when_it_returns() {
        let store = MemoryStore::new();
        let base = Quota::new(Window::per_minute(1000)).and(Window::per_hour(100));
        let slower = Quota::new(Window::per_minute(1000)).and(Window::per_hour(60));
        let no_hour = Quota::new(Window::per_minute(1000));
        let under = |quota| [Check::new(7, quota).based_on(&base)];
        // 30 requests at 60 an hour; one without the hour window (its state
        // is kept, charged at 60 an hour); then the default of 100 an hour:
        // 31 used, 69 left.
        for _ in 0..30 {
            assert!(ready(&store, T0, &under(&slower)).admitted());
        }
        assert!(ready(&store, T0, &under(&no_hour)).admitted());
        let back = ready(&store, T0, &under(&base));
        assert!(back.admitted());
        assert_eq!(back.windows()[1].remaining, 69);
    }

    #[test]
    fn a_refusal_in_one_check_charges_no_other_check() {
        let store = MemoryStore::new();
        let wide = Quota::new(Window::per_minute(100));
        let narrow = Quota::new(Window::per_minute(1));
        let both = [Check::new(1, &wide), Check::new(2 << 40, &narrow)];
        assert!(ready(&store, T0, &both).admitted());
        let refused = ready(&store, T0, &both);
        assert!(!refused.admitted());
        assert_eq!(
            refused.windows()[0].remaining,
            99,
            "reports what is left, untouched"
        );
        let only_wide = ready(&store, T0, &[Check::new(1, &wide)]);
        assert_eq!(only_wide.windows()[0].remaining, 98);
    }

    #[test]
    fn stacked_checks_on_known_buckets_are_charged_together_in_one_shard_or_two() {
        let key = Quota::new(Window::per_minute(100)).and(Window::per_hour(1000));
        let call = Quota::new(Window::per_minute(3)).and(Window::per_hour(50));
        for (a, b, shards) in [(1 << 55, 7, 2), (5, 7, 1)] {
            let store = MemoryStore::new();
            let distinct = if store.shard_of(a) == store.shard_of(b) {
                1
            } else {
                2
            };
            assert_eq!(distinct, shards, "buckets {a} and {b}");
            let both = [Check::new(a, &key), Check::new(b, &call)];
            for n in 1..=3u32 {
                let outcome = ready(&store, T0 + u64::from(n), &both);
                assert!(outcome.admitted(), "request {n}");
                let left: Vec<u32> = outcome.windows().iter().map(|w| w.remaining).collect();
                assert_eq!(left, [100 - n, 1000 - n, 3 - n, 50 - n], "request {n}");
            }
            // The call's minute refuses: nothing is charged anywhere.
            let refused = ready(&store, T0 + 4, &both);
            assert!(!refused.admitted());
            let left: Vec<u32> = refused.windows().iter().map(|w| w.remaining).collect();
            assert_eq!(left, [97, 997, 0, 47]);
            let key_alone = ready(&store, T0 + 5, &[Check::new(a, &key)]);
            assert_eq!(key_alone.windows()[0].remaining, 96);
            // A refusal by the key's windows charges the call nothing either.
            let tight = Quota::new(Window::per_minute(4));
            let call_wide = Quota::new(Window::per_minute(100));
            let first = ready(
                &store,
                T0 + 6,
                &[Check::new(a + 1, &tight), Check::new(b + 1, &call_wide)],
            );
            assert!(first.admitted(), "new buckets");
            for _ in 0..3 {
                let pair = [Check::new(a + 1, &tight), Check::new(b + 1, &call_wide)];
                assert!(ready(&store, T0 + 7, &pair).admitted());
            }
            let pair = [Check::new(a + 1, &tight), Check::new(b + 1, &call_wide)];
            assert!(!ready(&store, T0 + 8, &pair).admitted());
            let call_alone = ready(&store, T0 + 9, &[Check::new(b + 1, &call_wide)]);
            assert_eq!(
                call_alone.windows()[0].remaining,
                95,
                "charged 4 times, then this one"
            );
        }
    }

    #[test]
    fn a_quota_of_more_windows_than_the_quick_path_takes_is_counted_exactly() {
        let store = MemoryStore::new();
        let quota = Quota::new(Window::per_second(3))
            .and(Window::per_minute(100))
            .and(Window::per_hour(1000))
            .and(Window::per_day(10_000))
            .and(Window::new(50, std::time::Duration::from_secs(10)).unwrap());
        assert!(quota.windows().len() > KNOWN_WINDOWS);
        let check = [Check::new(7, &quota)];
        for n in 1..=3u32 {
            let outcome = ready(&store, T0, &check);
            assert!(outcome.admitted(), "request {n}");
            assert_eq!(outcome.windows().len(), 5);
            assert_eq!(outcome.windows()[1].remaining, 100 - n);
        }
        let refused = ready(&store, T0, &check);
        assert!(!refused.admitted());
        assert_eq!(refused.windows()[1].remaining, 97, "nothing charged");
        assert_eq!(store.len(), 5);
    }

    #[test]
    fn sweep_drops_idle_keys_and_keeps_live_ones() {
        let store = MemoryStore::new();
        let quota = Quota::new(Window::per_minute(10)).and(Window::per_hour(10));
        for key in 0..1000u64 {
            assert!(ready(&store, T0, &[Check::new(key << 20, &quota)]).admitted());
        }
        assert_eq!(store.len(), 2000);
        store.sweep(T0 + 61 * S);
        assert_eq!(
            store.len(),
            2000,
            "a minute window back to fresh stays while its key's hour counts"
        );
        store.sweep(T0 + 361 * S);
        assert!(store.is_empty());
    }
}
