//! The local deny cache: a bucket that Redis refused until some moment is
//! refused here until then, without a round trip, so abusive traffic costs
//! Redis nothing.
//!
//! An entry holds what Redis answered for one enforced check (its windows'
//! statuses and how long until it admits) and the fingerprint of the quota
//! it was refused under: a request of the same bucket under another quota (a
//! key's override, a reloaded policy, another cost) is not refused from the
//! cache but asks Redis. Requests with a penalty are not answered from the
//! cache: Redis must count their refusals to start a ban, and looks for a
//! ban before any window (the bans this process sees are remembered apart).
//! Between a refusal and its end, a bucket's state in Redis only grows
//! (other requests charge it), unless an operator resets it: every store
//! hears of a reset at once (see [`resets`](super::resets)).

use parking_lot::Mutex;
use smallvec::SmallVec;

use super::script::Planned;
use crate::decision::Basis;
use crate::policy::Algorithm;
use crate::shard::{mix, KeyMap, Padded};
use crate::store::algorithm::step;
use crate::store::protocol::{Outcome, WindowStatus};

/// Shards of the cache (a power of two).
const SHARDS: usize = 16;

/// The entries a shard keeps at most: the cache never grows past
/// `SHARDS * PER_SHARD` entries, whatever the traffic.
const PER_SHARD: usize = 4_096;

/// Refusals from Redis, remembered until they end.
#[derive(Debug, Default)]
pub(crate) struct DenyCache {
    shards: [Padded<Mutex<KeyMap<Entry>>>; SHARDS],
}

/// One bucket's refusal.
#[derive(Debug, Clone)]
struct Entry {
    /// The quota the bucket was refused under (see [`fingerprint`]).
    quota: u64,
    /// When Redis refused it, on the layer's clock (ns).
    at: u64,
    /// When it would admit again (`at` plus the longest wait).
    until: u64,
    /// The windows that refused, as Redis reported them at `at` (`check`
    /// 0), to be brought up to date with [`as_of`].
    windows: SmallVec<[WindowStatus; 2]>,
}

/// A fingerprint of what a check is decided under: algorithm, cost and
/// windows.
fn fingerprint(check: &Planned) -> u64 {
    let algorithm = match check.algorithm {
        Algorithm::Gcra => 1,
        Algorithm::FixedWindow => 2,
    };
    let mut h = mix(algorithm ^ (u64::from(check.cost) << 8));
    for window in &check.windows {
        h = mix(h ^ window.period_ns());
        h = mix(h ^ u64::from(window.limit()));
    }
    h
}

/// Whether the cache may answer for `check`.
fn cacheable(check: &Planned) -> bool {
    !check.shadow && check.penalty.is_none()
}

/// Window `w` of `check`, refused at `at`, as it stands at `now` if it
/// still refuses: a GCRA window refills as time passes (its arrival time is
/// `at + reset_after`), a fixed window stays as it was until it ends.
fn as_of(check: &Planned, at: u64, w: &WindowStatus, now: u64) -> Option<WindowStatus> {
    let elapsed = now.saturating_sub(at);
    match check.algorithm {
        Algorithm::Gcra => {
            let window = check.windows.get(usize::from(w.window))?;
            let tat = at.saturating_add(w.reset_after);
            let now = step(Algorithm::Gcra, window, tat, now, check.cost);
            (!now.admits).then(|| now.status(0, usize::from(w.window), w.limit))
        }
        Algorithm::FixedWindow => (w.retry_after > elapsed).then(|| WindowStatus {
            reset_after: w.reset_after - elapsed,
            retry_after: w.retry_after - elapsed,
            ..*w
        }),
    }
}

impl DenyCache {
    fn shard(&self, bucket: u64) -> &Mutex<KeyMap<Entry>> {
        // Buckets are keyed hashes: their low bits spread evenly.
        &self.shards[(bucket as usize) & (SHARDS - 1)].0
    }

    /// A refusal of `checks` at `now` if Redis refused any of them until
    /// later than `now` under the same quota: the windows that refused, as
    /// they stand now, of every such check.
    pub(crate) fn refusal(&self, checks: &[Planned], now: u64) -> Option<Outcome> {
        // A ban is looked at before any window: Redis must say whether one
        // is in force.
        if checks.iter().any(|c| !c.shadow && c.penalty.is_some()) {
            return None;
        }
        let mut windows = SmallVec::<[WindowStatus; 4]>::new();
        for (index, check) in checks.iter().enumerate() {
            if !cacheable(check) {
                continue;
            }
            let mut shard = self.shard(check.bucket).lock();
            let Some(entry) = shard.get(&check.bucket) else {
                continue;
            };
            if now >= entry.until {
                shard.remove(&check.bucket);
                continue;
            }
            if entry.quota != fingerprint(check) {
                continue;
            }
            windows.extend(
                entry
                    .windows
                    .iter()
                    .filter_map(|w| as_of(check, entry.at, w, now))
                    .map(|w| WindowStatus {
                        check: u8::try_from(index).unwrap_or(u8::MAX),
                        ..w
                    }),
            );
        }
        (!windows.is_empty())
            .then(|| Outcome::from_statuses(false, windows).on_basis(Basis::DenyCache))
    }

    /// Remembers the checks that Redis's `outcome` (made at `now`) refused.
    pub(crate) fn note(&self, checks: &[Planned], outcome: &Outcome, now: u64) {
        if outcome.admitted() || outcome.ban().is_some() {
            return;
        }
        for (index, check) in checks.iter().enumerate() {
            if !cacheable(check) {
                continue;
            }
            let windows: SmallVec<[WindowStatus; 2]> = outcome
                .windows()
                .iter()
                .filter(|w| usize::from(w.check) == index && w.retry_after > 0)
                .map(|w| WindowStatus { check: 0, ..*w })
                .collect();
            let wait = windows.iter().map(|w| w.retry_after).max().unwrap_or(0);
            if wait == 0 {
                continue;
            }
            let entry = Entry {
                quota: fingerprint(check),
                at: now,
                until: now.saturating_add(wait),
                windows,
            };
            let mut shard = self.shard(check.bucket).lock();
            if shard.len() >= PER_SHARD && !shard.contains_key(&check.bucket) {
                shard.retain(|_, e| e.until > now);
                if shard.len() >= PER_SHARD {
                    continue;
                }
            }
            shard.insert(check.bucket, entry);
        }
    }

    /// Forgets `bucket`'s refusal (an operator reset it).
    pub(crate) fn forget(&self, bucket: u64) {
        self.shard(bucket).lock().remove(&bucket);
    }

    /// Forgets every refusal (resets may have been missed).
    pub(crate) fn clear(&self) {
        for shard in &self.shards {
            shard.0.lock().clear();
        }
    }

    /// The refusals remembered.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.shards.iter().map(|s| s.0.lock().len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::penalty::Penalty;
    use crate::store::protocol::{Check, Decided};
    use crate::store::redis::FailurePolicy;
    use crate::store::{MemoryStore, Store};
    use crate::{Quota, Window};
    use std::time::Duration;

    const T0: u64 = 1_700_000_000_000_000_000;
    const SECOND: u64 = 1_000_000_000;

    fn planned(bucket: u64, quota: &Quota) -> Planned {
        Planned::new(&Check::new(bucket, quota), FailurePolicy::default())
    }

    /// What the memory store (which decides as Redis does) says.
    fn decide(store: &MemoryStore, now: u64, checks: &[Check<'_>]) -> Outcome {
        match store.check(now, checks) {
            Decided::Ready(outcome) => outcome.unwrap(),
            Decided::Pending(_) => unreachable!(),
        }
    }

    #[test]
    fn a_refused_bucket_is_refused_exactly_until_it_would_admit() {
        let cache = DenyCache::default();
        let store = MemoryStore::new();
        // 10 a minute (one per 6 s) and 12 an hour; the other check is wide.
        let quota = Quota::new(Window::per_minute(10)).and(Window::per_hour(12));
        let wide = Quota::new(Window::per_minute(100));
        let checks = [Check::new(8, &wide), Check::new(7, &quota)];
        let planned = [planned(8, &wide), planned(7, &quota)];
        for _ in 0..10 {
            assert!(decide(&store, T0, &checks).admitted());
        }
        let refused = decide(&store, T0, &checks);
        assert!(!refused.admitted());
        cache.note(&planned, &refused, T0);
        assert_eq!(cache.len(), 1, "only the refusing check is kept");

        // As the memory store would report it, for as long as it refuses:
        // the refusing windows of the refusing check.
        for elapsed in [0, SECOND, 5 * SECOND, 6 * SECOND - 1] {
            let now = T0 + elapsed;
            let cached = cache.refusal(&planned, now).expect("refused");
            let exact = decide(&store, now, &checks);
            assert!(!exact.admitted());
            let refusing: Vec<_> = exact
                .windows()
                .iter()
                .filter(|w| w.retry_after > 0)
                .copied()
                .collect();
            assert_eq!(cached.windows(), &refusing[..], "after {elapsed} ns");
            assert_eq!(cached.retry_after(), exact.retry_after());
        }
        // The bucket alone, at another position in another request.
        let alone = cache.refusal(&planned[1..], T0 + 5 * SECOND).unwrap();
        assert_eq!(alone.windows()[0].check, 0);
        assert_eq!(alone.retry_after(), SECOND);

        assert!(cache.refusal(&planned, T0 + 6 * SECOND).is_none(), "over");
        assert!(decide(&store, T0 + 6 * SECOND, &checks).admitted());
        assert_eq!(cache.len(), 0, "dropped once over");
    }

    #[test]
    fn a_fixed_window_refuses_until_it_ends() {
        let cache = DenyCache::default();
        let store = MemoryStore::new();
        let quota = Quota::new(Window::per_minute(1)).algorithm(Algorithm::FixedWindow);
        let checks = [Check::new(3, &quota)];
        assert!(decide(&store, T0, &checks).admitted());
        let refused = decide(&store, T0, &checks);
        cache.note(&[planned(3, &quota)], &refused, T0);
        let left = refused.retry_after();
        let later = T0 + left - 1;
        let cached = cache.refusal(&[planned(3, &quota)], later).unwrap();
        assert_eq!(cached.windows(), decide(&store, later, &checks).windows());
        assert_eq!(cached.basis(), Basis::DenyCache);
        assert!(cache.refusal(&[planned(3, &quota)], T0 + left).is_none());
    }

    #[test]
    fn another_quota_or_cost_asks_redis() {
        let cache = DenyCache::default();
        let store = MemoryStore::new();
        let quota = Quota::new(Window::per_minute(1));
        let checks = [Check::new(7, &quota)];
        decide(&store, T0, &checks);
        cache.note(&[planned(7, &quota)], &decide(&store, T0, &checks), T0);
        assert!(cache.refusal(&[planned(7, &quota)], T0).is_some());
        let raised = Quota::new(Window::per_minute(20));
        assert!(cache.refusal(&[planned(7, &raised)], T0).is_none());
        let dearer = quota.clone().cost(2);
        assert!(cache.refusal(&[planned(7, &dearer)], T0).is_none());
        let fixed = quota.clone().algorithm(Algorithm::FixedWindow);
        assert!(cache.refusal(&[planned(7, &fixed)], T0).is_none());
    }

    #[test]
    fn penalised_requests_shadow_checks_admissions_and_bans_are_left_to_redis() {
        let cache = DenyCache::default();
        let store = MemoryStore::new();
        let quota = Quota::new(Window::per_minute(1));
        let penalty = Penalty::new(3, Duration::from_secs(60), Duration::from_secs(600)).unwrap();
        let checks = [Check::new(1, &quota)];
        decide(&store, T0, &checks);
        let refused = decide(&store, T0, &checks);
        let shadow = Planned::new(&Check::shadow(1, &quota), FailurePolicy::default());
        cache.note(&[shadow], &refused, T0);
        cache.note(&[planned(1, &quota)], &Outcome::new(true, []), T0);
        cache.note(&[planned(1, &quota)], &Outcome::banned(0, SECOND), T0);
        assert_eq!(cache.len(), 0);
        cache.note(&[planned(1, &quota)], &refused, T0);
        let penalised = Planned::new(
            &Check::new(2, &quota).with_penalty(99, &penalty),
            FailurePolicy::default(),
        );
        assert!(cache.refusal(&[planned(1, &quota)], T0).is_some());
        assert!(
            cache
                .refusal(&[planned(1, &quota), penalised], T0)
                .is_none(),
            "Redis looks for a ban first"
        );
    }

    #[test]
    fn the_cache_stays_bounded() {
        let cache = DenyCache::default();
        let store = MemoryStore::new();
        let quota = Quota::new(Window::per_minute(1));
        let checks = [Check::new(0, &quota)];
        decide(&store, T0, &checks);
        let refused = decide(&store, T0, &checks);
        let wait = refused.retry_after();
        for bucket in 0..(SHARDS * PER_SHARD * 2) as u64 {
            cache.note(&[planned(bucket, &quota)], &refused, T0);
        }
        assert_eq!(cache.len(), SHARDS * PER_SHARD);
        // Once they are over, room is made for new refusals.
        let fresh = (SHARDS * PER_SHARD * 3) as u64;
        cache.note(&[planned(fresh, &quota)], &refused, T0 + wait);
        assert!(cache
            .refusal(&[planned(fresh, &quota)], T0 + wait)
            .is_some());
    }
}
