//! Time: a monotonic clock that reads as nanoseconds since the Unix epoch.
//!
//! A layer's default clock reads the wall-clock time once, and advances it by
//! the CPU's time-stamp counter, checked against the monotonic clock; one
//! made while Tokio's clock is paused follows Tokio's clock instead (so
//! `#[tokio::test(start_paused = true)]` tests are deterministic). Tests
//! that want to set the time themselves give the layer a [`ManualClock`], or
//! any [`Clock`] of their own.
//!
//! ```
//! use std::time::Duration;
//! use tower_ratelimit::clock::ManualClock;
//! use tower_ratelimit::{key::Header, Limit, Policy, Quota, RateLimitLayer, Window};
//!
//! let policy = Policy::builder()
//!     .limit(Limit::new("per_key", Header::parse("X-API-Key").unwrap())
//!         .quota(Quota::new(Window::per_minute(60))))
//!     .build()
//!     .unwrap();
//! let clock = ManualClock::at_unix_secs(1_700_000_000);
//! let layer = RateLimitLayer::new(policy).clock(clock.clone());
//! clock.advance(Duration::from_secs(90));
//! assert_eq!(layer.now(), 1_700_000_090_000_000_000);
//! ```

use std::cell::Cell;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Nanoseconds in a second.
pub(crate) const NANOS: u64 = 1_000_000_000;

/// The latest time the layer counts at: 2^63 ns after the Unix epoch (in
/// the year 2262). A clock that reads later is taken to read this, so that
/// no sum of a time, a period and a carried-over debt can overflow.
pub(crate) const LATEST: u64 = 1 << 63;

/// Where decisions get the time.
///
/// `now` never goes back (on any one thread: readings taken on different
/// threads, or in different processes sharing a store, may be a little
/// apart, and the stores count a reading a little behind where the one ahead
/// counted) and reads as nanoseconds since the Unix epoch, so that windows
/// align to wall-clock minutes and `X-RateLimit-Reset` can be printed
/// without a second clock. The layer reads a time after 2^63 ns (the year
/// 2262) as that moment.
pub trait Clock: Send + Sync + 'static {
    /// The current time, in nanoseconds since the Unix epoch.
    fn now(&self) -> u64;
}

/// The layer's default clock: the wall-clock time when the process first
/// made one, advanced by a monotonic clock.
///
/// A clock made while Tokio's clock is paused (`#[tokio::test(start_paused =
/// true)]`) follows Tokio's clock, `advance` included, so tests with paused
/// time are deterministic. Otherwise it reads the CPU's time-stamp counter
/// (through `quanta`; the monotonic clock where the counter is unreliable),
/// about a third of the cost of asking the operating system, and checks
/// itself against the monotonic clock every 100 ms on each thread, so it
/// never drifts from it by more than the counter's error over that time
/// (microseconds): it never goes back on a thread, and threads agree within
/// that error. A wall-clock step (NTP, a manual change) after startup does not
/// move it: `X-RateLimit-Reset` may be off by that step until the process
/// restarts.
#[derive(Debug, Clone)]
pub(crate) struct SystemClock {
    source: Source,
}

#[derive(Debug, Clone)]
enum Source {
    /// Tokio's clock, paused when this clock was made.
    Paused {
        origin: tokio::time::Instant,
        origin_unix: u64,
    },
    /// The time-stamp counter, anchored per thread (see [`Anchor`]).
    Counter(quanta::Clock),
}

impl Default for SystemClock {
    fn default() -> Self {
        Self::new()
    }
}

impl SystemClock {
    /// The process's clock, or one that follows Tokio's if Tokio's clock is
    /// paused now.
    pub(crate) fn new() -> Self {
        let source = if tokio_is_paused() {
            Source::Paused {
                origin: tokio::time::Instant::now(),
                origin_unix: unix_now(),
            }
        } else {
            Source::Counter(base().counter.clone())
        };
        SystemClock { source }
    }
}

/// A layer's clock: the system's, read without a dynamic call, or one the
/// application gave (see [`RateLimitLayer::clock`](crate::RateLimitLayer::clock)).
#[derive(Clone)]
pub(crate) enum LayerClock {
    System(SystemClock),
    Given(Arc<dyn Clock>),
}

impl LayerClock {
    /// The time by this clock.
    #[inline]
    pub(crate) fn now(&self) -> u64 {
        match self {
            LayerClock::System(clock) => clock.now(),
            LayerClock::Given(clock) => clock.now(),
        }
    }
}

impl Clock for SystemClock {
    #[inline]
    fn now(&self) -> u64 {
        match &self.source {
            Source::Counter(counter) => Anchor::now(counter),
            Source::Paused {
                origin,
                origin_unix,
            } => origin_unix + origin.elapsed().as_nanos() as u64,
        }
    }
}

/// The wall-clock time now, in nanoseconds since the Unix epoch.
fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// Whether Tokio's clock is paused on this thread: its time stands still
/// while the monotonic clock moves on (outside a runtime, Tokio's clock is
/// the monotonic clock).
fn tokio_is_paused() -> bool {
    let before = tokio::time::Instant::now();
    let start = Instant::now();
    while start.elapsed() < Duration::from_micros(2) {
        std::hint::spin_loop();
    }
    tokio::time::Instant::now() == before
}

/// What every [`SystemClock`] of the process reads from: the wall-clock time
/// when the first was made, the monotonic clock then, and the counter.
struct Base {
    origin: Instant,
    origin_unix: u64,
    counter: quanta::Clock,
}

fn base() -> &'static Base {
    static BASE: OnceLock<Base> = OnceLock::new();
    BASE.get_or_init(|| Base {
        counter: quanta::Clock::new(),
        origin: Instant::now(),
        origin_unix: unix_now(),
    })
}

impl Base {
    /// The time by the monotonic clock.
    fn monotonic(&self) -> u64 {
        self.origin_unix + self.origin.elapsed().as_nanos() as u64
    }
}

/// How often a thread checks the counter against the monotonic clock.
const RESYNC: u64 = 100_000_000;

/// A thread's reading of the counter and the time it stood for: the time is
/// `at` plus the counter's nanoseconds since `raw`, less up to half of them
/// while `lag` is owed (the counter ran fast, and the clock must not step
/// back to the monotonic one: it slows to half speed until it is level).
#[derive(Clone, Copy)]
struct Anchor {
    raw: u64,
    at: u64,
    lag: u64,
}

thread_local! {
    static ANCHOR: Cell<Anchor> = const { Cell::new(Anchor { raw: 0, at: 0, lag: 0 }) };
}

impl Anchor {
    /// The time on this thread, in nanoseconds since the Unix epoch.
    #[inline]
    fn now(counter: &quanta::Clock) -> u64 {
        // Read and written as a whole (no closure over the thread-local: a
        // small access the compiler inlines).
        let anchor = ANCHOR.get();
        let raw = counter.raw();
        let elapsed = counter.delta_as_nanos(anchor.raw, raw);
        if anchor.at == 0 {
            // The thread's first reading.
            return Anchor::renew(raw, 0);
        }
        let now = anchor.time(elapsed);
        if elapsed < RESYNC {
            return now;
        }
        Anchor::renew(raw, now)
    }

    /// Makes [`Anchor::resync`]'s anchor this thread's, and returns its time.
    #[cold]
    #[inline(never)]
    fn renew(raw: u64, now: u64) -> u64 {
        let anchor = Anchor::resync(raw, now);
        ANCHOR.set(anchor);
        anchor.at
    }

    /// The time `elapsed` counter nanoseconds after the anchor.
    #[inline]
    fn time(self, elapsed: u64) -> u64 {
        self.at + elapsed - (elapsed / 2).min(self.lag)
    }

    /// A new anchor at counter reading `raw`: the monotonic clock's time,
    /// or `now` (what this thread reads from its old anchor) if that is
    /// later, owing the difference.
    fn resync(raw: u64, now: u64) -> Anchor {
        let monotonic = base().monotonic();
        let at = monotonic.max(now);
        Anchor {
            raw,
            at,
            lag: at - monotonic,
        }
    }
}

/// A clock that moves only when told to, for tests.
///
/// ```
/// use tower_ratelimit::clock::{Clock, ManualClock};
/// use std::time::Duration;
///
/// let clock = ManualClock::at_unix_secs(1_700_000_000);
/// clock.advance(Duration::from_millis(1500));
/// assert_eq!(clock.now(), 1_700_000_001_500_000_000);
/// ```
#[derive(Clone, Default)]
pub struct ManualClock {
    nanos: Arc<AtomicU64>,
}

impl ManualClock {
    /// A clock reading `secs` seconds after the Unix epoch (or the last
    /// nanosecond a `u64` holds, if that is later).
    pub fn at_unix_secs(secs: u64) -> Self {
        ManualClock {
            nanos: Arc::new(AtomicU64::new(secs.saturating_mul(NANOS))),
        }
    }

    /// Moves the clock forward (up to the last nanosecond a `u64` holds).
    pub fn advance(&self, by: Duration) {
        let by = u64::try_from(by.as_nanos()).unwrap_or(u64::MAX);
        // Never fails: the closure always gives a value.
        let _ = self
            .nanos
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                Some(n.saturating_add(by))
            });
    }

    /// Sets the clock to `nanos` since the Unix epoch; moving it backwards
    /// is ignored (the clock is monotonic).
    pub fn set(&self, nanos: u64) {
        self.nanos.fetch_max(nanos, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> u64 {
        self.nanos.load(Ordering::SeqCst)
    }
}

impl fmt::Debug for ManualClock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ManualClock({}ns)", self.now())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_slow_anchor_runs_at_half_speed_until_level_then_at_full() {
        let anchor = Anchor {
            raw: 0,
            at: 1_000,
            lag: 10,
        };
        let times: Vec<u64> = [0, 4, 19, 20, 21, 30].map(|e| anchor.time(e)).into();
        assert_eq!(times, [1_000, 1_002, 1_010, 1_010, 1_011, 1_020]);
        let level = Anchor { lag: 0, ..anchor };
        assert_eq!(level.time(30), 1_030);
    }

    #[test]
    fn a_resync_never_steps_back_and_owes_what_it_is_ahead() {
        let monotonic = base().monotonic();
        let ahead = Anchor::resync(7, monotonic + 5_000_000_000);
        assert_eq!(ahead.at, monotonic + 5_000_000_000);
        assert!(ahead.lag > 4_900_000_000 && ahead.lag <= 5_000_000_000);
        let behind = Anchor::resync(7, monotonic - 1);
        assert!(behind.at >= monotonic && behind.lag == 0);
    }

    #[test]
    fn the_counter_clock_never_goes_back_and_keeps_to_the_monotonic_clock() {
        let clock = SystemClock::new();
        assert!(matches!(clock.source, Source::Counter(_)));
        let threads: Vec<_> = (0..2)
            .map(|_| {
                let clock = clock.clone();
                std::thread::spawn(move || {
                    let start = Instant::now();
                    let mut last = clock.now();
                    // Past a few resyncs.
                    while start.elapsed() < Duration::from_millis(350) {
                        let now = clock.now();
                        assert!(now >= last, "went back from {last} to {now}");
                        last = now;
                    }
                    // Within a millisecond of the monotonic clock, read on
                    // both sides (a thread may be preempted in between).
                    let before = base().monotonic();
                    let now = clock.now();
                    let after = base().monotonic();
                    assert!(now + 1_000_000 >= before && now <= after + 1_000_000);
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
        let unix = unix_now();
        assert!(
            clock.now().abs_diff(unix) < 5 * NANOS,
            "near the wall clock"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_clock_made_while_tokio_is_paused_follows_tokio() {
        let clock = SystemClock::new();
        assert!(matches!(clock.source, Source::Paused { .. }));
        let before = clock.now();
        std::thread::sleep(Duration::from_millis(2));
        assert_eq!(clock.now(), before, "stands still with Tokio");
        tokio::time::advance(Duration::from_millis(1_500)).await;
        assert_eq!(clock.now(), before + 1_500_000_000);
    }

    #[tokio::test]
    async fn a_clock_made_while_tokio_runs_reads_the_counter() {
        assert!(matches!(SystemClock::new().source, Source::Counter(_)));
    }
}
