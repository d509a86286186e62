//! The penalty box: bans after repeated refusals, to the nanosecond.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Barrier};
use std::time::Duration;

use tower_ratelimit::penalty::{Penalty, PenaltyBox};
use tower_ratelimit::ConfigErrorKind;

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
