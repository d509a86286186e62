//! Time: a monotonic clock that reads as nanoseconds since the Unix epoch.
//!
//! A layer reads the wall-clock time once, when it is built, and advances it
//! by Tokio's monotonic clock (so it follows `tokio::time::pause`). Tests
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

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Nanoseconds in a second.
pub(crate) const NANOS: u64 = 1_000_000_000;

/// Where decisions get the time.
///
/// `now` is monotonic (it never goes back) and reads as nanoseconds since the
/// Unix epoch, so that windows align to wall-clock minutes and
/// `X-RateLimit-Reset` can be printed without a second clock.
pub trait Clock: Send + Sync + 'static {
    /// The current time, in nanoseconds since the Unix epoch.
    fn now(&self) -> u64;
}

/// The layer's default clock: the wall-clock time when it was created, advanced by
/// Tokio's monotonic clock.
///
/// It follows `tokio::time::pause` and `advance`, so tests with paused time
/// are deterministic. A wall-clock step (NTP, a manual change) after startup
/// does not move it: decisions stay monotonic, and `X-RateLimit-Reset` may be
/// off by that step until the process restarts.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SystemClock {
    origin: tokio::time::Instant,
    origin_unix: u64,
}

impl Default for SystemClock {
    fn default() -> Self {
        Self::new()
    }
}

impl SystemClock {
    /// A clock anchored at the current wall-clock time.
    pub(crate) fn new() -> Self {
        let origin_unix = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        SystemClock {
            origin: tokio::time::Instant::now(),
            origin_unix,
        }
    }
}

impl Clock for SystemClock {
    fn now(&self) -> u64 {
        self.origin_unix + self.origin.elapsed().as_nanos() as u64
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
    /// A clock reading `secs` seconds after the Unix epoch.
    pub fn at_unix_secs(secs: u64) -> Self {
        ManualClock {
            nanos: Arc::new(AtomicU64::new(secs * 1_000_000_000)),
        }
    }

    /// Moves the clock forward.
    pub fn advance(&self, by: Duration) {
        self.nanos.fetch_add(by.as_nanos() as u64, Ordering::SeqCst);
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
