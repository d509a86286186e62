//! The in-memory store: sharded hash tables of one `u64` per key and window.

use std::future::Pending;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use hashbrown::hash_table::{Entry, HashTable};
use parking_lot::{Mutex, MutexGuard};
use smallvec::SmallVec;

use super::algorithm::{carry_over, expires_at, step, Step};
use super::outcome::settle_uncharged;
use super::overflow::Overflow;
use super::protocol::{Answer, Ban, Check, Decided, Outcome, Peeked};
use super::{Store, StoreError};
use crate::penalty::{ban_in_force, count_refusal, PenaltyBox};
use crate::policy::{Algorithm, Quota, Window};
use crate::shard::{sparse, KeyMap, Padded};

/// Counts kept in this process's memory.
///
/// Keys are spread over shards, each a mutex around small hash tables (one per
/// algorithm and window period) that map a bucket's 64-bit keyed hash to one
/// `u64` of state: 16 bytes per key and window plus the table's control byte
/// and free slots, about 28 bytes in all (shards get unequal shares of the
/// keys so that their tables never all sit just after doubling at once).
/// A decision locks the shards of the request's buckets in index order, so
/// decisions over several limits are atomic and cannot deadlock, and threads
/// working on different keys rarely meet. The most common request (one
/// limit, a key already tracked, every window admitting) takes one lock and
/// one hash probe per window, and its states are written back where the
/// probes found them.
///
/// Its settings are chosen when it is made, before it is shared with a
/// layer: [`MemoryStore::with_max_entries`], then setters that take and
/// return the store ([`MemoryStore::shards`], [`MemoryStore::sweep_interval`],
/// [`MemoryStore::max_banned_keys`]); each returns a fresh, empty store.
///
/// **Idle keys** are dropped once their state equals a fresh key's, so
/// dropping them loses nothing: every shard sweeps itself when a decision
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
/// nor lock anyone out:
///
/// * every key already tracked keeps its exact count: nothing is ever
///   evicted early;
/// * a window that needs a new entry in a full shard is counted in that
///   shard's **overflow sketch** for its window period: a count-min sketch
///   of two rows, each bucket owning one cell per row (placed by its keyed
///   hash, so a client cannot choose its neighbours). A cell holds the
///   greatest state charged to any bucket placed there, and a bucket is
///   decided by the least of its two cells. So a key counted there is
///   **never admitted past its quota**; it may be **refused early**, by at
///   most what the keys sharing its cell in *each* row used in that window
///   (a key alone in either of its cells is counted exactly). Such a
///   refusal reports [`RefusalReason::Capacity`](crate::RefusalReason::Capacity)
///   and counts towards no penalty. A key stays counted in the sketch
///   until its estimate there is a fresh key's state again, so every entry
///   is exact, and a key moving back in loses nothing.
/// * A sketch has a fixed size, made when its shard first overflows: about
///   one cell (8 bytes) per entry of the shard's share of the cap, rows
///   rounded up to a power of two. So memory stays under about
///   `max_entries` × (28 + 16 × the number of window periods that
///   overflowed) bytes, whatever the flood. A sketch is dropped when every
///   state in it is fresh again.
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
    /// The most entries each shard keeps: its share of the cap (changed by
    /// [`MemoryStore::set_max_entries`]).
    caps: Box<[AtomicUsize]>,
    /// The cap last asked for.
    requested: AtomicUsize,
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
    /// (at least 1); each shard holds at most its share, rounded up
    /// ([`MemoryStore::max_entries`] reads the sum back).
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
    /// (default 5 seconds). The store comes back empty, so set it before the
    /// store is used.
    #[must_use]
    pub fn sweep_interval(self, interval: std::time::Duration) -> Self {
        Settings {
            sweep_interval: interval.as_nanos().min(u128::from(u64::MAX)) as u64,
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
    /// ([`MemoryStore::set_max_entries`]), plus under one entry per shard
    /// (each shard's share is rounded up).
    pub fn max_entries(&self) -> usize {
        self.caps.iter().map(|c| c.load(Ordering::Relaxed)).sum()
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

    /// Drops every entry that equals a fresh key's at `now` (nanoseconds since
    /// the Unix epoch, on the layer's clock) and returns spare memory.
    pub fn sweep(&self, now: u64) {
        for shard in self.shards.iter() {
            let mut shard = shard.0.lock();
            shard.sweep(now);
            self.tracked.swept(&mut shard);
        }
        self.penalties.sweep(now);
    }

    /// The number of keys kept for penalties now: banned, or with refusals
    /// that still count.
    pub fn penalized_keys(&self) -> usize {
        self.penalties.len()
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

    /// Decides the most common request quickly, if it is one: one enforced
    /// check whose windows all track its bucket already and all admit it,
    /// in a shard not due for a sweep. Returns `false`, with nothing
    /// charged and no window in `outcome`, for any other request.
    fn admit_known(&self, now: u64, check: &Check<'_>, outcome: &mut Outcome) -> bool {
        let windows = check.quota.windows();
        if check.shadow || windows.len() > KNOWN_WINDOWS {
            return false;
        }
        let mut shard = self.shards[self.shard_of(check.bucket)].0.lock();
        if now >= shard.next_sweep {
            return false;
        }
        let algorithm = check.quota.algorithm_kind();
        if algorithm == Algorithm::Gcra {
            shard.follow_rates(check, now);
        }
        let statuses = outcome.windows_mut();
        let mut found = [(0, 0, 0); KNOWN_WINDOWS];
        let all_admit = windows.iter().enumerate().all(|(wi, window)| {
            let Some(t) = shard.table_index(algorithm, window.period_ns()) else {
                return false;
            };
            let table = &shard.tables[t];
            let Some(e) = table.find(check.bucket) else {
                return false;
            };
            let cost = check.quota.request_cost();
            let s = step(algorithm, window, table.state(e), now, cost);
            found[wi] = (t, e, s.next);
            statuses.push(s.status(0, wi, window.limit()));
            s.admits
        });
        if !all_admit {
            statuses.clear();
            return false;
        }
        for &(t, e, next) in &found[..windows.len()] {
            shard.tables[t].set_state(e, next);
        }
        true
    }

    /// Decides `checks` into `outcome`, an admitted outcome with no window
    /// yet (filled where the caller returns it: an outcome is large).
    fn decide(&self, now: u64, checks: &[Check<'_>], outcome: &mut Outcome) {
        if let [check] = checks {
            if self.admit_known(now, check, outcome) {
                return;
            }
        }
        // The shards of the request's buckets, each locked once, in index
        // order (inserted in order: a request has a check or two).
        let mut ids: SmallVec<[usize; 4]> = SmallVec::new();
        for check in checks {
            let shard = self.shard_of(check.bucket);
            match ids.binary_search(&shard) {
                Ok(_) => {}
                Err(at) if at == ids.len() => ids.push(shard),
                Err(at) => ids.insert(at, shard),
            }
        }
        let ids = &ids[..];
        let mut guards: SmallVec<[MutexGuard<'_, Shard>; 4]> = SmallVec::new();
        for &i in ids {
            guards.push(self.shards[i].0.lock());
        }
        let shards = &mut guards[..];
        for shard in shards.iter_mut() {
            if now >= shard.next_sweep {
                shard.sweep(now);
                self.tracked.swept(shard);
                shard.next_sweep = now.saturating_add(self.sweep_interval);
            }
        }

        // Read every window's state once; nothing changes yet. A bucket with
        // no entry is decided by its estimate in the overflow sketch, if its
        // table has one (it may have been counted there).
        let statuses = outcome.windows_mut();
        let mut slots: SmallVec<[Slot; 4]> = SmallVec::new();
        let mut admitted = true;
        let mut shadow_admitted = true;
        let mut unseen = false;
        let mut estimate_refused = false;
        for (ci, check) in checks.iter().enumerate() {
            let shard_index = match ids {
                [_] => 0,
                _ => shard_slot(ids, self.shard_of(check.bucket)),
            };
            let shard = &mut shards[shard_index];
            let algorithm = check.quota.algorithm_kind();
            if algorithm == Algorithm::Gcra {
                shard.follow_rates(check, now);
            }
            for (wi, window) in check.quota.windows().iter().enumerate() {
                let table = shard.table_index(algorithm, window.period_ns());
                let entry = table.and_then(|t| shard.tables[t].find(check.bucket));
                let state = match (table, entry) {
                    (Some(t), Some(e)) => shard.tables[t].state(e),
                    (Some(t), None) => shard.tables[t].estimate(check.bucket, now),
                    _ => 0,
                };
                let s: Step = step(algorithm, window, state, now, check.quota.request_cost());
                if check.shadow {
                    shadow_admitted &= s.admits;
                } else {
                    admitted &= s.admits;
                }
                let estimated = entry.is_none() && state != 0;
                estimate_refused |= estimated && !s.admits && !check.shadow;
                unseen |= entry.is_none();
                slots.push(Slot {
                    shard: shard_index,
                    entry: table.zip(entry),
                    shadow: check.shadow,
                    estimated,
                    state,
                    next: s.next,
                });
                statuses.push(s.status(ci, wi, window.limit()));
            }
        }
        let slots = &slots[..];
        settle_uncharged(
            statuses,
            admitted,
            shadow_admitted,
            |check| checks[check].shadow,
            |i, status| {
                let check = &checks[usize::from(status.check)];
                let window = &check.quota.windows()[usize::from(status.window)];
                step(check.quota.algorithm_kind(), window, slots[i].state, now, 0)
            },
        );
        if !admitted {
            // Refused by a sketch's estimate: the cap, not (for certain)
            // the key's own use, is what refused it.
            if estimate_refused {
                outcome.refuse_at_capacity();
            } else {
                outcome.decide(false, false);
            }
            return;
        }
        // Shadow checks are charged only when they would have admitted too:
        // they count exactly what they would count if they were enforced.
        let charged = |slot: &Slot| !slot.shadow || shadow_admitted;

        // Where each new state goes. A bucket with a live estimate stays
        // counted in its overflow sketch until the estimate is fresh (so that
        // every entry is exact); a shard without room for all of its new
        // entries, even after a sweep, counts them in its sketches too. A
        // sweep moves entries (and drops fresh ones the first pass found),
        // so after one every state is written by looking its entry up again.
        let targets = || {
            checks.iter().flat_map(|c| {
                let algorithm = c.quota.algorithm_kind();
                c.quota
                    .windows()
                    .iter()
                    .map(move |w| (algorithm, w.period_ns(), c.bucket))
            })
        };
        let mut swept = false;
        let mut full: SmallVec<[bool; 4]> = SmallVec::from_elem(false, shards.len());
        for (i, shard) in shards.iter_mut().enumerate().filter(|_| unseen) {
            let new = |s: &Slot| s.shard == i && charged(s) && !s.estimated;
            let needed = slots.iter().filter(|s| new(s) && s.entry.is_none()).count();
            let cap = self.caps[ids[i]].load(Ordering::Relaxed);
            if shard.entries + needed <= cap {
                continue;
            }
            if now >= shard.full_until {
                shard.sweep(now);
                self.tracked.swept(shard);
                swept = true;
            }
            let needed = slots
                .iter()
                .zip(targets())
                .filter(|(s, (a, p, b))| new(s) && !shard.contains(*a, *p, *b))
                .count();
            full[i] = shard.entries + needed > cap;
        }

        // Entries the first pass found are written where it found them,
        // before any insertion can move them; new entries are inserted after.
        for slot in slots.iter().filter(|s| charged(s) && !swept) {
            if let Some((t, e)) = slot.entry {
                shards[slot.shard].tables[t].set_state(e, slot.next);
            }
        }
        if unseen || swept {
            for (slot, (algorithm, period, bucket)) in slots.iter().zip(targets()) {
                if !charged(slot) || (slot.entry.is_some() && !swept) {
                    continue;
                }
                let shard = &mut shards[slot.shard];
                let no_room = full[slot.shard] && !shard.contains(algorithm, period, bucket);
                if slot.estimated || no_room {
                    let cells = 2 * self.caps[ids[slot.shard]].load(Ordering::Relaxed);
                    shard.count_over(algorithm, period, bucket, slot.next, now, cells);
                } else {
                    shard.set(algorithm, period, bucket, slot.next, now);
                }
                if no_room {
                    self.at_cap.warn(now, || self.max_entries());
                }
            }
        }
        outcome.decide(true, !shadow_admitted);
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

/// The most windows [`MemoryStore::admit_known`] takes.
const KNOWN_WINDOWS: usize = 4;

/// One window of one check, as the first pass over the locked shards found it.
struct Slot {
    /// The shard's place among the locked ones.
    shard: usize,
    /// The window's table in that shard and the bucket's entry in it, if
    /// it has one yet.
    entry: Option<(usize, usize)>,
    /// Whether the window's check is a shadow one.
    shadow: bool,
    /// Whether the state is an estimate from an overflow sketch (live, and
    /// the bucket has no entry).
    estimated: bool,
    /// The state now (0 for a bucket never seen).
    state: u64,
    /// The state to store if the request is admitted.
    next: u64,
}

impl Store for MemoryStore {
    type Pending = Pending<Result<Outcome, StoreError>>;

    fn check(&self, now: u64, checks: &[Check<'_>]) -> Decided<Self::Pending> {
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
        self.penalties.banned_for(key, now)
    }

    fn peek(&self, now: u64, checks: &[Check<'_>]) -> Answer<Peeked> {
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

    fn forget(&self, checks: &[Check<'_>]) -> Answer<()> {
        for check in checks {
            let mut shard = self.shards[self.shard_of(check.bucket)].0.lock();
            shard.forget(check.bucket);
            if let Some((key, _)) = check.penalty {
                self.penalties.forget(key);
            }
        }
        Box::pin(std::future::ready(Ok(())))
    }
}

/// The GCRA rates of `quota`: each window's period and interval (ns).
fn gcra_rates(quota: &Quota) -> Box<[(u64, u64)]> {
    if quota.algorithm_kind() != Algorithm::Gcra {
        return Box::new([]);
    }
    quota
        .windows()
        .iter()
        .map(|w| (w.period_ns(), w.interval_ns()))
        .collect()
}

fn shard_slot(ids: &[usize], shard: usize) -> usize {
    ids.binary_search(&shard).unwrap_or_default()
}

/// One window period's states: `(bucket, state)` pairs, placed by the
/// bucket (already a keyed hash) itself.
#[derive(Debug)]
struct Table {
    algorithm: Algorithm,
    period_ns: u64,
    map: HashTable<(u64, u64)>,
    /// Where buckets are counted that the shard had no room for, since it
    /// last reached its cap (until every state in it is fresh again).
    overflow: Option<Box<Overflow>>,
}

impl Table {
    fn new(algorithm: Algorithm, period_ns: u64) -> Self {
        Table {
            algorithm,
            period_ns,
            map: HashTable::new(),
            overflow: None,
        }
    }

    /// The state to decide `bucket` by when it has no entry: its estimate
    /// in the overflow sketch, or a fresh key's (0) without one.
    fn estimate(&self, bucket: u64, now: u64) -> u64 {
        self.overflow.as_ref().map_or(0, |o| {
            o.estimate(self.algorithm, self.period_ns, bucket, now)
        })
    }

    /// Where `bucket`'s entry is, if it has one: valid until the next
    /// insertion or removal.
    fn find(&self, bucket: u64) -> Option<usize> {
        self.map.find_bucket_index(bucket, |e| e.0 == bucket)
    }

    /// The state of the entry at `entry` (from [`Table::find`]).
    fn state(&self, entry: usize) -> u64 {
        self.map.get_bucket(entry).map_or(0, |e| e.1)
    }

    /// Replaces the state of the entry at `entry` (from [`Table::find`]).
    fn set_state(&mut self, entry: usize, state: u64) {
        if let Some(e) = self.map.get_bucket_mut(entry) {
            e.1 = state;
        }
    }

    fn get_mut(&mut self, bucket: u64) -> Option<&mut u64> {
        self.map
            .find_mut(bucket, |e| e.0 == bucket)
            .map(|e| &mut e.1)
    }

    fn contains(&self, bucket: u64) -> bool {
        self.find(bucket).is_some()
    }

    /// Stores `state` for `bucket`; whether the entry is new.
    fn insert(&mut self, bucket: u64, state: u64) -> bool {
        match self.map.entry(bucket, |e| e.0 == bucket, |e| e.0) {
            Entry::Occupied(mut e) => {
                e.get_mut().1 = state;
                false
            }
            Entry::Vacant(e) => {
                e.insert((bucket, state));
                true
            }
        }
    }
}

#[derive(Debug, Default)]
struct Shard {
    tables: Vec<Table>,
    /// The GCRA rates (period, interval) each bucket not on its route's
    /// default quota was last charged at (see [`Check::base`]).
    rates: KeyMap<Box<[(u64, u64)]>>,
    entries: usize,
    next_sweep: u64,
    /// Until when a sweep cannot free anything: the earliest expiry found by
    /// the last sweep, lowered by every entry added since.
    full_until: u64,
    /// The entries at the last sweep: what the tracked-keys gauge has of
    /// the shard.
    #[cfg(feature = "metrics")]
    reported: usize,
}

impl Shard {
    /// Carries `check.bucket`'s GCRA counts over to `check.quota`'s rates if
    /// they were last charged at other rates (its plan or override changed),
    /// and remembers the rates of a bucket that is not on its route's
    /// default quota. Buckets on the default cost nothing here while no
    /// bucket of the shard is on another quota.
    #[inline]
    fn follow_rates(&mut self, check: &Check<'_>, now: u64) {
        let custom = !std::ptr::eq(check.quota, check.base) && check.quota != check.base;
        if custom || !self.rates.is_empty() {
            self.carry_rates(check, custom, now);
        }
    }

    /// [`Shard::follow_rates`] for a bucket on a quota of its own, or in a
    /// shard where some bucket is.
    #[inline(never)]
    fn carry_rates(&mut self, check: &Check<'_>, custom: bool, now: u64) {
        let Shard { tables, rates, .. } = self;
        let removed;
        let last = if custom {
            rates.get(&check.bucket).map(|r| &**r)
        } else {
            removed = rates.remove(&check.bucket);
            removed.as_deref()
        };
        let rate_in = |rates: &[(u64, u64)], period: u64| {
            rates.iter().find(|(p, _)| *p == period).map(|(_, i)| *i)
        };
        // Whether the rates on record are this quota's already.
        let mut recorded = last.is_some_and(|r| r.len() == check.quota.windows().len());
        for window in check.quota.windows() {
            let period = window.period_ns();
            let from = last.and_then(|r| rate_in(r, period));
            recorded &= from == Some(window.interval_ns());
            let Some(from) = from.or_else(|| base_interval(check, period)) else {
                continue;
            };
            let table = tables
                .iter_mut()
                .find(|t| t.algorithm == Algorithm::Gcra && t.period_ns == period);
            if let Some(tat) = table.and_then(|t| t.get_mut(check.bucket)) {
                *tat = carry_over(from, window.interval_ns(), *tat, now);
            }
        }
        if custom && !recorded {
            rates.insert(check.bucket, gcra_rates(check.quota));
        }
    }

    /// The state `check.bucket` has in `window` at `now`, as
    /// [`MemoryStore::check`] would decide by it (converted to the window's
    /// rate if it was charged at another), changing nothing.
    fn state_of(&self, check: &Check<'_>, algorithm: Algorithm, window: &Window, now: u64) -> u64 {
        let period = window.period_ns();
        let Some(table) = self.table(algorithm, period) else {
            return 0;
        };
        let state = match table.find(check.bucket) {
            Some(e) => table.state(e),
            None => table.estimate(check.bucket, now),
        };
        if algorithm != Algorithm::Gcra {
            return state;
        }
        let recorded = self
            .rates
            .get(&check.bucket)
            .and_then(|rates| rates.iter().find(|(p, _)| *p == period).map(|(_, i)| *i));
        match recorded.or_else(|| base_interval(check, period)) {
            Some(from) => carry_over(from, window.interval_ns(), state, now),
            None => state,
        }
    }

    /// Drops `bucket`'s entries in every table (a count in an overflow
    /// sketch stays: it is shared with other buckets).
    fn forget(&mut self, bucket: u64) {
        for table in &mut self.tables {
            if let Ok(entry) = table.map.find_entry(bucket, |e| e.0 == bucket) {
                entry.remove();
                self.entries -= 1;
            }
        }
        self.rates.remove(&bucket);
    }

    fn table_index(&self, algorithm: Algorithm, period_ns: u64) -> Option<usize> {
        self.tables
            .iter()
            .position(|t| t.period_ns == period_ns && t.algorithm == algorithm)
    }

    /// The index of the table of `algorithm` and `period_ns`, made if the
    /// shard has none.
    fn table_or_new(&mut self, algorithm: Algorithm, period_ns: u64) -> usize {
        self.table_index(algorithm, period_ns).unwrap_or_else(|| {
            self.tables.push(Table::new(algorithm, period_ns));
            self.tables.len() - 1
        })
    }

    fn table(&self, algorithm: Algorithm, period_ns: u64) -> Option<&Table> {
        self.table_index(algorithm, period_ns)
            .map(|i| &self.tables[i])
    }

    fn contains(&self, algorithm: Algorithm, period_ns: u64, bucket: u64) -> bool {
        self.table(algorithm, period_ns)
            .is_some_and(|t| t.contains(bucket))
    }

    /// Stores `state` for `bucket` at `now`.
    fn set(&mut self, algorithm: Algorithm, period_ns: u64, bucket: u64, state: u64, now: u64) {
        let index = self.table_or_new(algorithm, period_ns);
        if self.tables[index].insert(bucket, state) {
            self.entries += 1;
            // A new entry may expire before every other one: `full_until`
            // stays the earliest expiry (or earlier), so that a refusal at
            // the cap never promises room later than it comes.
            self.full_until = self
                .full_until
                .min(expires_at(algorithm, period_ns, state, now));
        }
    }

    /// Counts `state` for `bucket` in the overflow sketch of its table (a
    /// sketch of about `cells` cells, made if the table has none).
    fn count_over(
        &mut self,
        algorithm: Algorithm,
        period_ns: u64,
        bucket: u64,
        state: u64,
        now: u64,
        cells: usize,
    ) {
        let index = self.table_or_new(algorithm, period_ns);
        self.tables[index]
            .overflow
            .get_or_insert_with(|| Box::new(Overflow::new(cells)))
            .charge(algorithm, period_ns, bucket, state, now);
    }

    fn sweep(&mut self, now: u64) {
        let mut earliest = u64::MAX;
        for table in &mut self.tables {
            let fresh = |o: &Overflow| o.expires_at(table.algorithm, table.period_ns, now) <= now;
            if table.overflow.as_deref().is_some_and(fresh) {
                table.overflow = None;
            }
            let (algorithm, period) = (table.algorithm, table.period_ns);
            table.map.retain(|&mut (_, state)| {
                let expires = expires_at(algorithm, period, state, now);
                if expires > now {
                    earliest = earliest.min(expires);
                }
                expires > now
            });
            if sparse(table.map.len(), table.map.capacity()) {
                table.map.shrink_to(table.map.len() * 2, |e| e.0);
            }
        }
        self.tables
            .retain(|t| !t.map.is_empty() || t.overflow.is_some());
        if self.tables.is_empty() {
            self.tables = Vec::new();
        }
        self.entries = self.tables.iter().map(|t| t.map.len()).sum();
        self.full_until = earliest;
        if !self.rates.is_empty() {
            let tables = &self.tables;
            self.rates
                .retain(|&bucket, _| tables.iter().any(|t| t.contains(bucket)));
            if sparse(self.rates.len(), self.rates.capacity()) {
                self.rates.shrink_to(self.rates.len() * 2);
            }
        }
    }
}

/// The interval of `check`'s route default (its base quota) in the GCRA
/// window of `period`, if it has one: the rate a bucket with no rates on
/// record was charged at.
fn base_interval(check: &Check<'_>, period: u64) -> Option<u64> {
    if check.base.algorithm_kind() != Algorithm::Gcra {
        return None;
    }
    check
        .base
        .windows()
        .iter()
        .find(|w| w.period_ns() == period)
        .map(Window::interval_ns)
}

#[cfg(test)]
mod tests {
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
        assert_eq!(store.len(), 1000, "the minute windows are back to fresh");
        store.sweep(T0 + 361 * S);
        assert!(store.is_empty());
    }
}
