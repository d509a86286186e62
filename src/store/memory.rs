//! The in-memory store: sharded hash tables of one `u64` per key and window.

use std::collections::HashMap;
use std::future::Pending;
use std::hash::{BuildHasherDefault, Hasher};

use parking_lot::{Mutex, MutexGuard};
use smallvec::SmallVec;

use super::algorithm::{expires_at, step, Step};
use super::{Check, Decided, Outcome, Store, StoreError, WindowStatus};
use crate::policy::Algorithm;

/// Counts kept in this process's memory.
///
/// Keys are spread over shards, each a mutex around small hash tables (one per
/// algorithm and window period) that map a bucket's 64-bit keyed hash to one
/// `u64` of state: 16 bytes per key and window plus the table's control byte.
/// A decision locks the shards of the request's buckets in index order, so
/// decisions over several limits are atomic and cannot deadlock, and threads
/// working on different keys rarely meet.
///
/// **Idle keys** are dropped once their state equals a fresh key's, so
/// dropping them loses nothing: every shard sweeps itself when a decision
/// touches it and its sweep interval (default 5 s) has passed, and gives
/// memory back to the allocator when its tables become sparse.
/// [`MemoryStore::sweep`] sweeps every shard at once.
///
/// **At the cap** ([`MemoryStoreBuilder::max_entries`], default 1,000,000
/// entries, about 25–40 MB): counting stays exact. A request whose buckets are
/// already tracked is decided as usual; a request that needs a new entry in a
/// full shard is *refused*, with a `Retry-After` that is honest: the moment
/// the earliest entry of that shard expires and frees room. Nothing is ever
/// evicted early, so a flood of fresh keys cannot reset a real client's counts.
///
/// ```
/// use tower_ratelimit::store::MemoryStore;
/// use std::time::Duration;
///
/// let store = MemoryStore::builder()
///     .max_entries(100_000)
///     .sweep_interval(Duration::from_secs(1))
///     .build();
/// assert_eq!(store.len(), 0);
/// ```
#[derive(Debug)]
pub struct MemoryStore {
    shards: Box<[Padded<Mutex<Shard>>]>,
    shard_mask: u64,
    per_shard_cap: usize,
    sweep_interval: u64,
}

/// Builds a [`MemoryStore`].
#[derive(Debug, Clone)]
#[must_use]
pub struct MemoryStoreBuilder {
    max_entries: usize,
    shards: usize,
    sweep_interval: u64,
}

impl Default for MemoryStoreBuilder {
    fn default() -> Self {
        MemoryStoreBuilder {
            max_entries: 1_000_000,
            shards: 64,
            sweep_interval: 5_000_000_000,
        }
    }
}

impl MemoryStoreBuilder {
    /// The most `(key, window)` entries kept at once (default 1,000,000).
    /// Each shard holds at most its share, rounded up.
    pub fn max_entries(mut self, max: usize) -> Self {
        self.max_entries = max.max(1);
        self
    }

    /// The number of shards, rounded up to a power of two (default 64).
    pub fn shards(mut self, shards: usize) -> Self {
        self.shards = shards.clamp(1, 1 << 16).next_power_of_two();
        self
    }

    /// How often a shard drops idle keys when a decision touches it
    /// (default 5 seconds).
    pub fn sweep_interval(mut self, interval: std::time::Duration) -> Self {
        self.sweep_interval = interval.as_nanos().min(u128::from(u64::MAX)) as u64;
        self
    }

    /// Builds the store.
    pub fn build(self) -> MemoryStore {
        let shards = (0..self.shards)
            .map(|_| Padded(Mutex::new(Shard::default())))
            .collect();
        MemoryStore {
            shards,
            shard_mask: self.shards as u64 - 1,
            per_shard_cap: self.max_entries.div_ceil(self.shards),
            sweep_interval: self.sweep_interval,
        }
    }
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryStore {
    /// A store with the default cap, shards and sweep interval.
    pub fn new() -> Self {
        Self::builder().build()
    }

    /// A builder to set the cap, shards and sweep interval.
    pub fn builder() -> MemoryStoreBuilder {
        MemoryStoreBuilder::default()
    }

    /// The number of `(key, window)` entries tracked now.
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| s.0.lock().entries).sum()
    }

    /// Whether no entry is tracked.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The most entries the store keeps (the configured cap, rounded up to a
    /// multiple of the shard count).
    pub fn capacity(&self) -> usize {
        self.per_shard_cap * self.shards.len()
    }

    /// Drops every entry that equals a fresh key's at `now` (nanoseconds since
    /// the Unix epoch, on the layer's clock) and returns spare memory.
    pub fn sweep(&self, now: u64) {
        for shard in self.shards.iter() {
            shard.0.lock().sweep(now);
        }
    }

    fn shard_of(&self, bucket: u64) -> usize {
        ((bucket >> 40) & self.shard_mask) as usize
    }

    fn decide(&self, now: u64, checks: &[Check<'_>]) -> Outcome {
        let mut ids: SmallVec<[usize; 4]> = checks.iter().map(|c| self.shard_of(c.bucket)).collect();
        ids.sort_unstable();
        ids.dedup();
        let mut shards: SmallVec<[MutexGuard<'_, Shard>; 4]> =
            ids.iter().map(|&i| self.shards[i].0.lock()).collect();
        for shard in shards.iter_mut() {
            if now >= shard.next_sweep {
                shard.sweep(now);
                shard.next_sweep = now.saturating_add(self.sweep_interval);
            }
        }

        let mut statuses: SmallVec<[WindowStatus; 4]> = SmallVec::new();
        let mut next: SmallVec<[u64; 4]> = SmallVec::new();
        let mut admitted = true;
        for (ci, check) in checks.iter().enumerate() {
            let shard = &shards[shard_slot(&ids, self.shard_of(check.bucket))];
            let algorithm = check.quota.algorithm_kind();
            for (wi, window) in check.quota.windows().iter().enumerate() {
                let state = shard.get(algorithm, window.period_ns(), check.bucket);
                let s: Step = step(algorithm, window, state, now, check.quota.request_cost());
                admitted &= s.admits;
                next.push(s.next);
                statuses.push(WindowStatus {
                    check: ci as u8,
                    window: wi as u8,
                    limit: window.limit(),
                    remaining: s.remaining,
                    reset_after: s.reset_after,
                    retry_after: s.retry_after,
                });
            }
        }
        if !admitted {
            // Nothing is charged: windows that would have admitted report
            // what they have now, not what they would have had.
            for (status, check) in statuses.iter_mut().map(|s| {
                let check = &checks[usize::from(s.check)];
                (s, check)
            }) {
                if status.retry_after == 0 {
                    status.remaining += check.quota.request_cost();
                }
            }
            return Outcome::new(false, statuses);
        }

        for (slot, shard) in shards.iter_mut().enumerate() {
            let needed = new_entries(shard, checks, |b| shard_slot(&ids, self.shard_of(b)) == slot);
            if shard.entries + needed <= self.per_shard_cap {
                continue;
            }
            if now >= shard.full_until {
                shard.sweep(now);
            }
            let needed = new_entries(shard, checks, |b| shard_slot(&ids, self.shard_of(b)) == slot);
            if shard.entries + needed > self.per_shard_cap {
                return Outcome::at_capacity(shard.full_until.saturating_sub(now), statuses);
            }
        }

        let mut states = next.into_iter();
        for check in checks {
            let shard = &mut shards[shard_slot(&ids, self.shard_of(check.bucket))];
            let algorithm = check.quota.algorithm_kind();
            for window in check.quota.windows() {
                let state = states.next().unwrap_or_default();
                shard.set(algorithm, window.period_ns(), check.bucket, state);
            }
        }
        Outcome::new(true, statuses)
    }
}

impl Store for MemoryStore {
    type Pending = Pending<Result<Outcome, StoreError>>;

    fn check(&self, now: u64, checks: &[Check<'_>]) -> Decided<Self::Pending> {
        Decided::Ready(Ok(self.decide(now, checks)))
    }
}

fn shard_slot(ids: &[usize], shard: usize) -> usize {
    ids.binary_search(&shard).unwrap_or_default()
}

/// How many entries of `checks` (in the shard picked by `here`) are not
/// tracked yet.
fn new_entries(shard: &Shard, checks: &[Check<'_>], here: impl Fn(u64) -> bool) -> usize {
    checks
        .iter()
        .filter(|c| here(c.bucket))
        .map(|c| {
            let algorithm = c.quota.algorithm_kind();
            c.quota
                .windows()
                .iter()
                .filter(|w| !shard.contains(algorithm, w.period_ns(), c.bucket))
                .count()
        })
        .sum()
}

/// Keeps each shard on its own cache lines, so two threads locking two
/// shards do not slow each other down.
#[derive(Debug)]
#[repr(align(128))]
struct Padded<T>(T);

/// Bucket hashes are already keyed SipHash output: hashing them again would
/// only cost time.
#[derive(Default)]
struct PassThrough(u64);

impl Hasher for PassThrough {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

type Map = HashMap<u64, u64, BuildHasherDefault<PassThrough>>;

#[derive(Debug)]
struct Table {
    algorithm: Algorithm,
    period_ns: u64,
    map: Map,
}

#[derive(Debug, Default)]
struct Shard {
    tables: Vec<Table>,
    entries: usize,
    next_sweep: u64,
    /// Until when a sweep cannot free anything (set when a sweep leaves the
    /// shard full).
    full_until: u64,
}

impl Shard {
    fn table(&self, algorithm: Algorithm, period_ns: u64) -> Option<&Table> {
        self.tables
            .iter()
            .find(|t| t.period_ns == period_ns && t.algorithm == algorithm)
    }

    fn get(&self, algorithm: Algorithm, period_ns: u64, bucket: u64) -> u64 {
        self.table(algorithm, period_ns)
            .and_then(|t| t.map.get(&bucket).copied())
            .unwrap_or(0)
    }

    fn contains(&self, algorithm: Algorithm, period_ns: u64, bucket: u64) -> bool {
        self.table(algorithm, period_ns)
            .is_some_and(|t| t.map.contains_key(&bucket))
    }

    fn set(&mut self, algorithm: Algorithm, period_ns: u64, bucket: u64, state: u64) {
        let index = match self
            .tables
            .iter()
            .position(|t| t.period_ns == period_ns && t.algorithm == algorithm)
        {
            Some(i) => i,
            None => {
                self.tables.push(Table {
                    algorithm,
                    period_ns,
                    map: Map::default(),
                });
                self.tables.len() - 1
            }
        };
        if self.tables[index].map.insert(bucket, state).is_none() {
            self.entries += 1;
        }
    }

    fn sweep(&mut self, now: u64) {
        let mut earliest = u64::MAX;
        for table in &mut self.tables {
            let (algorithm, period) = (table.algorithm, table.period_ns);
            table.map.retain(|_, state| {
                let expires = expires_at(algorithm, period, *state, now);
                if expires > now {
                    earliest = earliest.min(expires);
                }
                expires > now
            });
            if table.map.capacity() > 64 && table.map.len() * 4 < table.map.capacity() {
                table.map.shrink_to(table.map.len() * 2);
            }
        }
        self.tables.retain(|t| !t.map.is_empty());
        self.entries = self.tables.iter().map(|t| t.map.len()).sum();
        self.full_until = earliest;
    }
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
        assert_eq!(refused.windows()[0].remaining, 99, "reports what is left, untouched");
        let only_wide = ready(&store, T0, &[Check::new(1, &wide)]);
        assert_eq!(only_wide.windows()[0].remaining, 98);
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
