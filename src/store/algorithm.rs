//! The counting arithmetic of both algorithms, on one `u64` of state per key
//! and window, in integer nanoseconds.
//!
//! Every store uses these functions (or, for a remote store, a literal
//! translation of them), so all stores decide alike.

use super::protocol::WindowStatus;
use crate::policy::{Algorithm, Window};

/// What one window says about one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Step {
    /// The state to store if the whole request is admitted.
    pub(crate) next: u64,
    /// Whether this window admits the request.
    pub(crate) admits: bool,
    /// Remaining cost after the request (if admitted) or now (if refused).
    pub(crate) remaining: u32,
    /// Nanoseconds until the window is back to its full limit (GCRA) or ends
    /// (fixed window), counting this request if admitted.
    pub(crate) reset_after: u64,
    /// Nanoseconds until this window would admit the request; 0 if it does.
    pub(crate) retry_after: u64,
}

impl Step {
    /// What this step says of window `window` of check `check`, whose
    /// limit is `limit`.
    pub(crate) fn status(&self, check: usize, window: usize, limit: u32) -> WindowStatus {
        WindowStatus {
            check: check as u8,
            window: window as u8,
            limit,
            remaining: self.remaining,
            reset_after: self.reset_after,
            retry_after: self.retry_after,
        }
    }
}

/// Applies a request of `cost` at `now` to a window whose stored state is
/// `state` (0 for a key never seen).
#[inline]
pub(crate) fn step(algorithm: Algorithm, window: &Window, state: u64, now: u64, cost: u32) -> Step {
    match algorithm {
        Algorithm::Gcra => gcra(window, state, now, cost),
        Algorithm::FixedWindow => fixed_window(window, state, now, cost),
    }
}

/// When `state` becomes indistinguishable from a key never seen, so that
/// dropping it loses nothing (a time `<= now` means it already is).
pub(crate) fn expires_at(algorithm: Algorithm, period_ns: u64, state: u64, now: u64) -> u64 {
    match algorithm {
        Algorithm::Gcra => state,
        Algorithm::FixedWindow => {
            let current = now / period_ns;
            match counting_window(state, current) {
                Some(ahead) => (current + ahead + 1) * period_ns,
                None => 0,
            }
        }
    }
}

/// When every state of a window of `period_ns` last written before
/// `written_before` counts nothing any more, whatever it holds: a fixed
/// window's state keeps its window's index only modulo 2^32, so after some
/// 2^32 windows without a write it would read as current again; it must be
/// dropped unread by then. (A GCRA state is a time: it never reads wrong.)
pub(crate) fn all_expired_at(algorithm: Algorithm, period_ns: u64, written_before: u64) -> u64 {
    match algorithm {
        Algorithm::Gcra => u64::MAX,
        Algorithm::FixedWindow => {
            written_before.saturating_add(u64::from(AHEAD + 1).saturating_mul(period_ns))
        }
    }
}

/// The latest arrival time a quota change carries a GCRA state to (2^64 -
/// 2^57 ns, in the year 2550), as the Redis store's script caps it: a debt
/// of up to some 500 years is kept exactly, and with times below
/// [`LATEST`](crate::clock::LATEST) and periods of at most 366 days no sum
/// of the arithmetic here can overflow.
pub(crate) const LATEST_TAT: u64 = u64::MAX - (1 << 57) + 1;

/// A GCRA state charged at `from` ns per request, expressed at `to` ns per
/// request with the same number of requests used: the state is a time debt
/// of `used × interval`, so the debt scales with the interval, up to
/// [`LATEST_TAT`]. (A fixed window's state is its count, which carries
/// over as it is.)
pub(crate) fn carry_over(from: u64, to: u64, tat: u64, now: u64) -> u64 {
    if tat <= now || from == to || from == 0 {
        return tat;
    }
    // Rounded up, as the Redis store does: a conversion never frees a
    // fraction of a request.
    let debt = (u128::from(tat - now) * u128::from(to)).div_ceil(u128::from(from));
    let room = LATEST_TAT.saturating_sub(now);
    now + u64::try_from(debt).unwrap_or(room).min(room)
}

#[inline]
fn gcra(window: &Window, tat: u64, now: u64, cost: u32) -> Step {
    let t = window.interval_ns();
    let capacity = t * u64::from(window.limit());
    let base = tat.max(now);
    let next = base + t * u64::from(cost);
    let horizon = now + capacity;
    if next <= horizon {
        Step {
            next,
            admits: true,
            remaining: ((horizon - next) / t) as u32,
            reset_after: next - now,
            retry_after: 0,
        }
    } else {
        Step {
            next: tat,
            admits: false,
            remaining: (horizon.saturating_sub(base) / t) as u32,
            reset_after: base - now,
            retry_after: next - horizon,
        }
    }
}

fn fixed_index(state: u64) -> u32 {
    (state >> 32) as u32
}

/// How far a fixed window's state may be ahead of a reading, in windows.
const AHEAD: u32 = 1 << 20;

/// Which window a fixed window's stored `state` counts in, as windows after
/// `current` (the reading's): `Some(0)` for the reading's own, `None` if it
/// counts nothing any more. A state a little ahead was counted by a clock a
/// little ahead of this one (another thread's, another process's): the
/// reading counts in that window too, so that an earlier window never
/// overwrites a later one's count.
#[inline]
fn counting_window(state: u64, current: u64) -> Option<u64> {
    match fixed_index(state).wrapping_sub(current as u32) {
        0 => Some(0),
        ahead if ahead < AHEAD && state as u32 != 0 => Some(u64::from(ahead)),
        _ => None,
    }
}

#[inline]
fn fixed_window(window: &Window, state: u64, now: u64, cost: u32) -> Step {
    let p = window.period_ns();
    let reading = now / p;
    let (current, used) = match counting_window(state, reading) {
        Some(ahead) => (reading + ahead, state as u32),
        None => (reading, 0),
    };
    let index = current as u32;
    let reset_after = (current + 1) * p - now;
    let limit = window.limit();
    match used.checked_add(cost).filter(|&u| u <= limit) {
        Some(total) => Step {
            next: (u64::from(index) << 32) | u64::from(total),
            admits: true,
            remaining: limit - total,
            reset_after,
            retry_after: 0,
        },
        None => Step {
            next: state,
            admits: false,
            remaining: limit - used.min(limit),
            reset_after,
            retry_after: reset_after,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    #[test]
    fn gcra_admits_the_burst_then_one_per_interval() {
        let w = Window::per_minute(60);
        let mut state = 0;
        let now = 1_000 * S;
        for i in 0..60 {
            let s = step(Algorithm::Gcra, &w, state, now, 1);
            assert!(s.admits, "request {i}");
            assert_eq!(s.remaining, 59 - i);
            state = s.next;
        }
        let refused = step(Algorithm::Gcra, &w, state, now, 1);
        assert!(!refused.admits);
        assert_eq!(refused.retry_after, S);
        assert_eq!(refused.reset_after, 60 * S);
        assert!(step(Algorithm::Gcra, &w, state, now + S, 1).admits);
        assert_eq!(
            expires_at(Algorithm::Gcra, w.period_ns(), state, now),
            now + 60 * S
        );
    }

    #[test]
    fn fixed_window_resets_at_the_aligned_boundary() {
        let w = Window::per_minute(2);
        let now = 1_000 * S + S / 2; // 16m40.5s: 19.5s before the minute ends
        let a = step(Algorithm::FixedWindow, &w, 0, now, 1);
        let b = step(Algorithm::FixedWindow, &w, a.next, now, 1);
        let c = step(Algorithm::FixedWindow, &w, b.next, now, 1);
        assert!(a.admits && b.admits && !c.admits);
        assert_eq!(b.remaining, 0);
        assert_eq!(c.retry_after, 19 * S + S / 2);
        let next_window = now + c.retry_after;
        assert!(step(Algorithm::FixedWindow, &w, b.next, next_window, 1).admits);
        assert_eq!(
            expires_at(Algorithm::FixedWindow, w.period_ns(), b.next, next_window),
            0
        );
    }

    #[test]
    fn a_fixed_window_reading_behind_the_stored_window_counts_in_it() {
        let w = Window::per_minute(5);
        let minute = 60 * S;
        let behind = 1_000 * minute - 1; // a nanosecond before minute 1,000
        let ahead = 1_000 * minute + 1;
        // A clock a little ahead counts 3 in minute 1,000.
        let mut state = 0;
        for _ in 0..3 {
            state = step(Algorithm::FixedWindow, &w, state, ahead, 1).next;
        }
        // A clock a little behind counts in that minute too: 2 more, not 5.
        let late = step(Algorithm::FixedWindow, &w, state, behind, 1);
        assert!(late.admits);
        assert_eq!((late.remaining, late.reset_after), (1, minute + 1));
        let late = step(Algorithm::FixedWindow, &w, late.next, behind, 1);
        let refused = step(Algorithm::FixedWindow, &w, late.next, behind, 1);
        assert!(late.admits && !refused.admits);
        assert_eq!(refused.retry_after, minute + 1);
        // And the minute's count stands for the clock ahead.
        assert!(!step(Algorithm::FixedWindow, &w, late.next, ahead, 1).admits);
        assert_eq!(
            expires_at(Algorithm::FixedWindow, w.period_ns(), late.next, behind),
            1_001 * minute
        );
        // A fresh key, and a count of an earlier minute, count nothing.
        assert_eq!(step(Algorithm::FixedWindow, &w, 0, behind, 1).remaining, 4);
        let old = step(Algorithm::FixedWindow, &w, 0, behind - minute, 1).next;
        assert_eq!(
            step(Algorithm::FixedWindow, &w, old, behind, 1).remaining,
            4
        );
    }
}
