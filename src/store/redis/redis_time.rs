//! What this process knows of a Redis server's clock (each server, and each
//! node of a cluster, has its own), so that a decision call can tell it
//! when the layer stops waiting for it: a call that Redis runs later (after
//! a stall, a pause, behind a slow script) then writes nothing.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// How long the offset of one span of answers is trusted after the span
/// ends (ns): a clock of Redis's that steps back is followed within this.
const SPAN: u64 = 5_000_000_000;

/// No offset known yet.
const UNKNOWN: i64 = i64::MIN;

/// How much before the deadline the moment is set, at most (ns): an answer
/// takes a little time to come back, and one that comes too late must not
/// have been charged.
const MARGIN: u64 = 2_000_000;

/// The offset of Redis's `TIME` from a local monotonic clock, as a lower
/// bound: each answer that carries Redis's time gives one (Redis's time
/// when it ran the script, less the local time when the answer came back,
/// which is later), and the greatest of the current and the last span of
/// answers is kept. A moment computed with it comes no later on Redis's
/// clock than the same moment here.
#[derive(Debug)]
pub(super) struct RedisTime {
    base: Instant,
    /// The greatest offset of the span that started at `span_start`.
    current: AtomicI64,
    /// The greatest of the span before.
    previous: AtomicI64,
    span_start: AtomicU64,
}

impl RedisTime {
    pub(super) fn new() -> Self {
        RedisTime {
            base: Instant::now(),
            current: AtomicI64::new(UNKNOWN),
            previous: AtomicI64::new(UNKNOWN),
            span_start: AtomicU64::new(0),
        }
    }

    /// The local clock (ns since the tracker was made).
    fn local(&self) -> u64 {
        u64::try_from(self.base.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// An answer has just come back saying Redis's time was `redis` (ns
    /// since the Unix epoch) when the script ran.
    pub(super) fn heard(&self, redis: u64) {
        let local = self.local();
        let offset = i64::try_from(i128::from(redis) - i128::from(local)).unwrap_or(UNKNOWN);
        let start = self.span_start.load(Ordering::Relaxed);
        if local.saturating_sub(start) >= SPAN
            && self
                .span_start
                .compare_exchange(start, local, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            let ended = self.current.swap(offset, Ordering::Relaxed);
            self.previous.store(ended, Ordering::Relaxed);
            return;
        }
        self.current.fetch_max(offset, Ordering::Relaxed);
    }

    /// The moment on Redis's clock (ns since the Unix epoch) by which a
    /// call sent now and waited for `deadline` has been given up here, less
    /// a tenth of the deadline (at most [`MARGIN`]) for its answer to come
    /// back: `None` while no answer has told Redis's time.
    pub(super) fn until(&self, deadline: Duration) -> Option<u64> {
        let offset = self
            .current
            .load(Ordering::Relaxed)
            .max(self.previous.load(Ordering::Relaxed));
        if offset == UNKNOWN {
            return None;
        }
        let deadline = u64::try_from(deadline.as_nanos()).unwrap_or(u64::MAX);
        let wait = deadline - (deadline / 10).min(MARGIN);
        let local = i128::from(self.local().saturating_add(wait));
        u64::try_from(local + i128::from(offset)).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_moment_is_the_local_one_moved_by_the_greatest_offset_heard() {
        let time = RedisTime::new();
        assert_eq!(time.until(Duration::from_millis(50)), None, "nothing heard");
        let redis = 1_700_000_000_000_000_000u64;
        time.heard(redis);
        time.heard(redis - 1_000_000);
        let until = time.until(Duration::from_millis(50)).unwrap();
        // Redis's time now is at least `redis` (it answered before now):
        // the moment is 48 ms on from about then (50 less the margin),
        // never later.
        let local_elapsed = time.local();
        assert!(until >= redis + 48_000_000, "{until}");
        assert!(until <= redis + 48_000_000 + local_elapsed, "{until}");
    }
}
