//! How the memory store decides a request: the quick paths for the most
//! common ones (one limit, or a limit stacked on another, on buckets it
//! tracks already), and the general path, all or nothing over every shard
//! the request's buckets live in.

use std::sync::atomic::Ordering;

use parking_lot::MutexGuard;
use smallvec::SmallVec;

use super::shard::Shard;
use super::MemoryStore;
use crate::policy::{Algorithm, Window};
use crate::store::algorithm::{step, Step};
use crate::store::outcome::settle_uncharged;
use crate::store::protocol::{Check, Outcome};

impl MemoryStore {
    /// Decides the most common request quickly, if it is one: one enforced
    /// check whose windows all track its bucket already and all admit it,
    /// in a shard not due for a sweep. Returns `false`, with nothing
    /// charged and no window in `outcome`, for any other request.
    #[inline]
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
        let mut found = Found::default();
        let all_admit = windows.iter().enumerate().all(|(wi, window)| {
            let Some((t, e, s)) = known_step(&shard, check, algorithm, window, now) else {
                return false;
            };
            found.push(t, e, s.next);
            statuses.push(s.status(0, wi, window.limit()));
            s.admits
        });
        if !all_admit {
            statuses.clear();
            return false;
        }
        found.write(&mut shard, 0..found.len);
        true
    }

    /// [`MemoryStore::admit_known`] for a limit stacked on another: two
    /// enforced checks, with at most [`KNOWN_WINDOWS`] windows in all, each
    /// in a shard not due for a sweep (locked once if they share it).
    /// Returns `false`, with nothing charged and no window in `outcome`,
    /// unless every window tracks its bucket already and admits.
    #[inline(never)]
    fn admit_known_stacked(
        &self,
        now: u64,
        a: &Check<'_>,
        b: &Check<'_>,
        outcome: &mut Outcome,
    ) -> bool {
        let mut found = Found::default();
        let (ia, ib) = (self.shard_of(a.bucket), self.shard_of(b.bucket));
        let admitted = if ia == ib {
            let mut shard = self.shards[ia].0.lock();
            let admitted = probe_known(&mut shard, now, 0, a, outcome, &mut found)
                && probe_known(&mut shard, now, 1, b, outcome, &mut found);
            if admitted {
                found.write(&mut shard, 0..found.len);
            }
            admitted
        } else {
            // Locked in index order, as every decision locks them.
            let first = self.shards[ia.min(ib)].0.lock();
            let second = self.shards[ia.max(ib)].0.lock();
            let (mut sa, mut sb) = if ia < ib {
                (first, second)
            } else {
                (second, first)
            };
            let mut split = 0;
            let admitted = probe_known(&mut sa, now, 0, a, outcome, &mut found) && {
                split = found.len;
                probe_known(&mut sb, now, 1, b, outcome, &mut found)
            };
            if admitted {
                found.write(&mut sa, 0..split);
                found.write(&mut sb, split..found.len);
            }
            admitted
        };
        if !admitted {
            outcome.windows_mut().clear();
        }
        admitted
    }

    /// Decides `checks` into `outcome`, an admitted outcome with no window
    /// yet (filled where the caller returns it: an outcome is large).
    pub(super) fn decide(&self, now: u64, checks: &[Check<'_>], outcome: &mut Outcome) {
        let known = match checks {
            [check] => self.admit_known(now, check, outcome),
            [a, b] => self.admit_known_stacked(now, a, b, outcome),
            _ => false,
        };
        if known {
            return;
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
                self.sweep_shard(shard, now);
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
        // entries (the store's room under its cap, reserved here), even after
        // a sweep, counts them in its sketches too. A sweep moves entries
        // (and drops fresh ones the first pass found), so after one every
        // state is written by looking its entry up again.
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
        // Each shard's entries before its insertions, and the room reserved.
        let mut room: SmallVec<[(usize, usize); 4]> = SmallVec::new();
        for (i, shard) in shards.iter_mut().enumerate().filter(|_| unseen) {
            let new = |s: &Slot| s.shard == i && charged(s) && !s.estimated;
            let needed = slots.iter().filter(|s| new(s) && s.entry.is_none()).count();
            let mut reserved = self.reserve(needed).then_some(needed);
            if reserved.is_none() && now >= shard.full_until {
                self.sweep_shard(shard, now);
                swept = true;
                let needed = slots
                    .iter()
                    .zip(targets())
                    .filter(|(s, (a, p, b))| new(s) && !shard.contains(*a, *p, *b))
                    .count();
                reserved = self.reserve(needed).then_some(needed);
            }
            full[i] = reserved.is_none();
            room.push((shard.entries, reserved.unwrap_or(0)));
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
        for (shard, &(before, reserved)) in shards.iter().zip(&room) {
            self.settle(reserved, shard.entries - before);
        }
        outcome.decide(true, !shadow_admitted);
    }
}

/// The most windows [`MemoryStore::admit_known`] takes.
pub(super) const KNOWN_WINDOWS: usize = 4;

/// Where `check`'s bucket is in the table of `window` (of `algorithm`) in
/// `shard`, and the step the request takes there: `None` if the bucket
/// has no entry there yet.
#[inline(always)]
fn known_step(
    shard: &Shard,
    check: &Check<'_>,
    algorithm: Algorithm,
    window: &Window,
    now: u64,
) -> Option<(usize, usize, Step)> {
    let t = shard.table_index(algorithm, window.period_ns())?;
    let table = &shard.tables[t];
    let e = table.find(check.bucket)?;
    let cost = check.quota.request_cost();
    Some((t, e, step(algorithm, window, table.state(e), now, cost)))
}

/// Looks up the windows of `check` (check `ci` of the request) in `shard`,
/// locked: whether every one tracks its bucket already and admits the
/// request, in a shard not due for a sweep. Each window's status goes into
/// `outcome` and its new state into `found`, up to the first that fails.
#[inline]
fn probe_known(
    shard: &mut Shard,
    now: u64,
    ci: usize,
    check: &Check<'_>,
    outcome: &mut Outcome,
    found: &mut Found,
) -> bool {
    let windows = check.quota.windows();
    if check.shadow || now >= shard.next_sweep || found.len + windows.len() > KNOWN_WINDOWS {
        return false;
    }
    let algorithm = check.quota.algorithm_kind();
    if algorithm == Algorithm::Gcra {
        shard.follow_rates(check, now);
    }
    let statuses = outcome.windows_mut();
    windows.iter().enumerate().all(|(wi, window)| {
        let Some((t, e, s)) = known_step(shard, check, algorithm, window, now) else {
            return false;
        };
        found.push(t, e, s.next);
        statuses.push(s.status(ci, wi, window.limit()));
        s.admits
    })
}

/// The entries the quick paths found, in the order of the request's
/// windows, with their new states: written back where they were found once
/// every window admits.
#[derive(Default)]
struct Found {
    len: usize,
    /// (table, entry, new state)
    entries: [(usize, usize, u64); KNOWN_WINDOWS],
}

impl Found {
    fn push(&mut self, table: usize, entry: usize, next: u64) {
        if let Some(slot) = self.entries.get_mut(self.len) {
            *slot = (table, entry, next);
            self.len += 1;
        }
    }

    /// Writes the new states of entries `range` (those found in `shard`).
    fn write(&self, shard: &mut Shard, range: std::ops::Range<usize>) {
        for &(t, e, next) in &self.entries[range] {
            shard.tables[t].set_state(e, next);
        }
    }
}

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

fn shard_slot(ids: &[usize], shard: usize) -> usize {
    ids.binary_search(&shard).unwrap_or_default()
}
