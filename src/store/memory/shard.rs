//! A shard of the memory store: one table of states per algorithm and
//! window period, the GCRA rates of buckets off their route's default, and
//! the sweep that drops what a fresh key would equal.

use hashbrown::hash_table::{Entry, HashTable};

use crate::policy::{Algorithm, Quota, Window};
use crate::shard::{sparse, KeyMap};
use crate::store::algorithm::{all_expired_at, carry_over, expires_at};
use crate::store::overflow::Overflow;
use crate::store::protocol::Check;

/// How long a state is kept after it equals a fresh key's (ns): a reading
/// taken a little before the sweep's (another thread's clock, a thread
/// held up between reading the clock and taking the shard's lock) must
/// still find the count of the window it reads as current.
const GRACE: u64 = 1_000_000_000;

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

/// One window period's states: `(bucket, state)` pairs, placed by the
/// bucket (already a keyed hash) itself.
#[derive(Debug)]
pub(super) struct Table {
    algorithm: Algorithm,
    pub(super) period_ns: u64,
    pub(super) map: HashTable<(u64, u64)>,
    /// Where buckets are counted that the shard had no room for, since it
    /// last reached its cap (until every state in it is fresh again).
    overflow: Option<Box<Overflow>>,
}

impl Table {
    pub(super) fn new(algorithm: Algorithm, period_ns: u64) -> Self {
        Table {
            algorithm,
            period_ns,
            map: HashTable::new(),
            overflow: None,
        }
    }

    /// The state to decide `bucket` by when it has no entry: its estimate
    /// in the overflow sketch, or a fresh key's (0) without one.
    pub(super) fn estimate(&self, bucket: u64, now: u64) -> u64 {
        self.overflow.as_ref().map_or(0, |o| {
            o.estimate(self.algorithm, self.period_ns, bucket, now)
        })
    }

    /// Where `bucket`'s entry is, if it has one: valid until the next
    /// insertion or removal.
    pub(super) fn find(&self, bucket: u64) -> Option<usize> {
        self.map.find_bucket_index(bucket, |e| e.0 == bucket)
    }

    /// The state of the entry at `entry` (from [`Table::find`]).
    pub(super) fn state(&self, entry: usize) -> u64 {
        self.map.get_bucket(entry).map_or(0, |e| e.1)
    }

    /// Replaces the state of the entry at `entry` (from [`Table::find`]).
    pub(super) fn set_state(&mut self, entry: usize, state: u64) {
        if let Some(e) = self.map.get_bucket_mut(entry) {
            e.1 = state;
        }
    }

    pub(super) fn get_mut(&mut self, bucket: u64) -> Option<&mut u64> {
        self.map
            .find_mut(bucket, |e| e.0 == bucket)
            .map(|e| &mut e.1)
    }

    pub(super) fn contains(&self, bucket: u64) -> bool {
        self.find(bucket).is_some()
    }

    /// Whether `bucket` has an entry whose state is not a fresh key's at
    /// `horizon`.
    fn live(&self, bucket: u64, horizon: u64) -> bool {
        let state = self.map.find(bucket, |e| e.0 == bucket).map(|e| e.1);
        state.is_some_and(|s| expires_at(self.algorithm, self.period_ns, s, horizon) > horizon)
    }

    /// Stores `state` for `bucket`; whether the entry is new.
    pub(super) fn insert(&mut self, bucket: u64, state: u64) -> bool {
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
pub(super) struct Shard {
    pub(super) tables: Vec<Table>,
    /// The GCRA rates (period, interval) each bucket not on its route's
    /// default quota was last charged at (see [`Check::base`]).
    rates: KeyMap<Box<[(u64, u64)]>>,
    pub(super) entries: usize,
    pub(super) next_sweep: u64,
    /// Until when a sweep cannot free anything: the earliest expiry found by
    /// the last sweep, lowered by every entry added since, plus [`GRACE`].
    pub(super) full_until: u64,
    /// The entries at the last sweep: what the tracked-keys gauge has of
    /// the shard.
    #[cfg(feature = "metrics")]
    pub(super) reported: usize,
}

impl Shard {
    /// Carries `check.bucket`'s GCRA counts over to `check.quota`'s rates if
    /// they were last charged at other rates (its plan or override changed),
    /// and remembers the rates of a bucket that is not on its route's
    /// default quota. Buckets on the default cost nothing here while no
    /// bucket of the shard is on another quota.
    #[inline]
    pub(super) fn follow_rates(&mut self, check: &Check<'_>, now: u64) {
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
        // Whether the rates on record are this quota's already (besides
        // those of periods it does not have).
        let mut recorded = last.is_some();
        for window in check.quota.windows() {
            let period = window.period_ns();
            let on_record = last.and_then(|r| rate_in(r, period));
            recorded &= on_record == Some(window.interval_ns());
            let Some(from) = on_record.or_else(|| base_interval(check, period)) else {
                continue;
            };
            let to = window.interval_ns();
            if from == to {
                continue;
            }
            let Some(table) = tables
                .iter_mut()
                .find(|t| t.algorithm == Algorithm::Gcra && t.period_ns == period)
            else {
                continue;
            };
            if let Some(tat) = table.get_mut(check.bucket) {
                *tat = carry_over(from, to, *tat, now);
            } else if let (Some(_), Some(sketch)) = (on_record, table.overflow.as_deref_mut()) {
                // A key counted in the sketch, at a rate on record (its
                // own, so the estimate is its count, not only other keys'):
                // its estimate, converted, raises its cells. They are
                // shared, so they are never lowered: a raised quota's key
                // may be refused early, as a key in the sketch may be, and
                // a lowered one's keeps its debt. (Without a record, from a
                // key's first request or after a sweep, nothing is
                // converted: the estimate may be other keys' alone.)
                let (gcra, bucket) = (Algorithm::Gcra, check.bucket);
                let estimate = sketch.estimate(gcra, period, bucket, now);
                let converted = carry_over(from, to, estimate, now);
                if converted > estimate {
                    sketch.charge(gcra, period, bucket, converted, now);
                }
            }
        }
        if custom && !recorded {
            // The rates of periods this quota does not have stay on record
            // while their states do: a quota that has them again converts
            // those states from the rate they were charged at.
            let mut now_rates = gcra_rates(check.quota).into_vec();
            let kept = last.into_iter().flatten().filter(|(period, _)| {
                rate_in(&now_rates, *period).is_none()
                    && tables.iter().any(|t| {
                        t.algorithm == Algorithm::Gcra
                            && t.period_ns == *period
                            && t.contains(check.bucket)
                    })
            });
            let kept: Vec<(u64, u64)> = kept.copied().collect();
            now_rates.extend(kept);
            rates.insert(check.bucket, now_rates.into());
        }
    }

    /// The state `check.bucket` has in `window` at `now`, as the memory
    /// store's [`check`](crate::store::Store::check) would decide by it
    /// (converted to the window's rate if it was charged at another),
    /// changing nothing.
    pub(super) fn state_of(
        &self,
        check: &Check<'_>,
        algorithm: Algorithm,
        window: &Window,
        now: u64,
    ) -> u64 {
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

    /// Drops `check`'s bucket's entries in every table; whether, at `now`,
    /// none of its quota's windows decides it by a live estimate in an
    /// overflow sketch (a count there stays: it is shared with other
    /// buckets).
    pub(super) fn forget(&mut self, check: &Check<'_>, now: u64) -> bool {
        let bucket = check.bucket;
        for table in &mut self.tables {
            if let Ok(entry) = table.map.find_entry(bucket, |e| e.0 == bucket) {
                entry.remove();
                self.entries -= 1;
            }
        }
        self.rates.remove(&bucket);
        let algorithm = check.quota.algorithm_kind();
        check.quota.windows().iter().all(|w| {
            self.table(algorithm, w.period_ns())
                .is_none_or(|t| t.estimate(bucket, now) == 0)
        })
    }

    pub(super) fn table_index(&self, algorithm: Algorithm, period_ns: u64) -> Option<usize> {
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

    pub(super) fn table(&self, algorithm: Algorithm, period_ns: u64) -> Option<&Table> {
        self.table_index(algorithm, period_ns)
            .map(|i| &self.tables[i])
    }

    pub(super) fn contains(&self, algorithm: Algorithm, period_ns: u64, bucket: u64) -> bool {
        self.table(algorithm, period_ns)
            .is_some_and(|t| t.contains(bucket))
    }

    /// Stores `state` for `bucket` at `now`.
    pub(super) fn set(
        &mut self,
        algorithm: Algorithm,
        period_ns: u64,
        bucket: u64,
        state: u64,
        now: u64,
    ) {
        let index = self.table_or_new(algorithm, period_ns);
        if self.tables[index].insert(bucket, state) {
            self.entries += 1;
            // A new entry may expire before every other one: `full_until`
            // stays the earliest expiry (or earlier), so that a refusal at
            // the cap never promises room later than it comes.
            let expires = expires_at(algorithm, period_ns, state, now);
            self.full_until = self.full_until.min(expires.saturating_add(GRACE));
        }
    }

    /// Counts `state` for `bucket` in the overflow sketch of its table (a
    /// sketch of about `cells` cells, made if the table has none).
    pub(super) fn count_over(
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

    /// Drops what has been a fresh key's state for [`GRACE`] at `now`. A
    /// bucket's entries go together: a fresh one stays while the bucket has
    /// a live entry in another table, so that a tracked key is never
    /// counted in a sketch, at the cap, for the window it was dropped from.
    pub(super) fn sweep(&mut self, now: u64) {
        let mut earliest = u64::MAX;
        // Fresh since before `horizon`: a reading a little behind `now`
        // (another thread's clock) sees it fresh too.
        let horizon = now.saturating_sub(GRACE);
        // Every entry was written before the sweep that is due now was:
        // a write at a later time would have swept first.
        let written_before = self.next_sweep;
        for i in 0..self.tables.len() {
            let (before, rest) = self.tables.split_at_mut(i);
            let Some((table, after)) = rest.split_first_mut() else {
                break;
            };
            let (algorithm, period) = (table.algorithm, table.period_ns);
            if horizon >= all_expired_at(algorithm, period, written_before) {
                // Unread: a fixed window's state idle this long may read as
                // current again.
                table.map.clear();
                table.overflow = None;
            }
            let fresh = |o: &Overflow| o.expires_at(algorithm, period, horizon) <= horizon;
            if table.overflow.as_deref().is_some_and(fresh) {
                table.overflow = None;
            }
            let elsewhere = |bucket| {
                let mut others = before.iter().chain(after.iter());
                others.any(|other| other.live(bucket, horizon))
            };
            table.map.retain(|&mut (bucket, state)| {
                let expires = expires_at(algorithm, period, state, horizon);
                if expires > horizon {
                    earliest = earliest.min(expires.saturating_add(GRACE));
                    return true;
                }
                elsewhere(bucket)
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
