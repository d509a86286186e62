//! Quotas: the windows a request must fit in, its cost, and the counting algorithm.

use std::fmt;
use std::time::Duration;

use crate::error::ConfigError;
use crate::inflight::Mode;

/// How a window counts requests.
///
/// Both algorithms work in integer nanoseconds (no floating point), so every
/// store makes the same decision on the same sequence of requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum Algorithm {
    /// Generic cell rate algorithm (a token bucket without a timer): a key may
    /// spend its whole `limit` at once, then earns one request back every
    /// `period / limit`.
    ///
    /// **Bound:** over any interval of length `t`, at most
    /// `limit + floor(t / (period / limit))` requests are admitted.
    ///
    /// This is the default: it never admits the `2 × limit` burst that a fixed
    /// window allows across a window boundary, its `Retry-After` is the exact
    /// moment one request's worth of capacity returns (not the end of a
    /// window), and its state is a single timestamp per key.
    #[default]
    Gcra,
    /// Fixed windows aligned to the Unix epoch (a minute window runs from
    /// `:00` to `:59`): a counter that starts at zero in each window.
    ///
    /// **Bound:** at most `limit` requests per aligned window (so up to
    /// `2 × limit` across a boundary). `X-RateLimit-Reset` is the window's end
    /// and a refused request is told to retry when the next window starts.
    FixedWindow,
}

impl Algorithm {
    /// The name used in policy files (`"gcra"`, `"fixed_window"`).
    pub const fn as_str(self) -> &'static str {
        match self {
            Algorithm::Gcra => "gcra",
            Algorithm::FixedWindow => "fixed_window",
        }
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One window of a quota: at most `limit` units of cost per `period`.
///
/// ```
/// use tower_ratelimit::Window;
/// use std::time::Duration;
///
/// let minute = Window::per_minute(60);
/// assert_eq!(minute.limit(), 60);
/// assert_eq!(minute.period(), Duration::from_secs(60));
/// assert_eq!(Window::new(100, Duration::from_secs(10)).unwrap().limit(), 100);
/// assert!(Window::new(0, Duration::from_secs(1)).is_err());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Window {
    limit: u32,
    period_ns: u64,
    /// GCRA's emission interval, `period / limit` rounded up (so that the
    /// window can never admit more than its bound): computed once, not per
    /// request.
    interval_ns: u64,
}

/// The shortest period a window may have.
const MIN_PERIOD: Duration = Duration::from_millis(1);
/// The longest period a window may have (a year); longer windows are almost
/// certainly a unit mistake.
const MAX_PERIOD: Duration = Duration::from_secs(366 * 24 * 3600);

/// The most requests a queue holds per key.
const MAX_QUEUED: usize = 1_000_000;

impl Window {
    /// A window of `limit` per `period`.
    ///
    /// Fails when `limit` is zero, or `period` is under a millisecond, over a
    /// year, or shorter than `limit` nanoseconds.
    pub fn new(limit: u32, period: Duration) -> Result<Self, ConfigError> {
        if limit == 0 {
            return Err(ConfigError::invalid("window", "limit must be at least 1"));
        }
        if period < MIN_PERIOD || period > MAX_PERIOD {
            return Err(ConfigError::invalid(
                "window",
                format!("period {period:?} is outside 1ms..=366 days"),
            ));
        }
        let period_ns = period.as_nanos() as u64;
        if period_ns < u64::from(limit) {
            return Err(ConfigError::invalid(
                "window",
                format!("{limit} per {period:?} is finer than one request per nanosecond"),
            ));
        }
        Ok(Self::from_parts(limit, period_ns))
    }

    const fn from_parts(limit: u32, period_ns: u64) -> Self {
        Window {
            limit,
            period_ns,
            interval_ns: period_ns.div_ceil(limit as u64),
        }
    }

    const fn fixed(limit: u32, secs: u64) -> Self {
        assert!(limit > 0, "a window's limit must be at least 1");
        Self::from_parts(limit, secs * 1_000_000_000)
    }

    /// `limit` per second. Panics if `limit` is zero (use [`Window::new`] for
    /// values that come from input).
    pub const fn per_second(limit: u32) -> Self {
        Self::fixed(limit, 1)
    }

    /// `limit` per minute. Panics if `limit` is zero.
    pub const fn per_minute(limit: u32) -> Self {
        Self::fixed(limit, 60)
    }

    /// `limit` per hour. Panics if `limit` is zero.
    pub const fn per_hour(limit: u32) -> Self {
        Self::fixed(limit, 3600)
    }

    /// `limit` per day. Panics if `limit` is zero.
    pub const fn per_day(limit: u32) -> Self {
        Self::fixed(limit, 86_400)
    }

    /// The most cost admitted per period.
    #[inline]
    pub const fn limit(&self) -> u32 {
        self.limit
    }

    /// The window's length.
    pub const fn period(&self) -> Duration {
        Duration::from_nanos(self.period_ns)
    }

    #[inline]
    pub(crate) const fn period_ns(&self) -> u64 {
        self.period_ns
    }

    #[inline]
    pub(crate) const fn interval_ns(&self) -> u64 {
        self.interval_ns
    }
}

impl fmt::Display for Window {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/", self.limit)?;
        crate::policy::rate_text::fmt_period(self.period(), f)
    }
}

#[cfg(feature = "governor")]
impl From<governor::Quota> for Window {
    /// A governor quota of `burst` cells replenished one per `interval` is a
    /// GCRA window of `burst` per `burst × interval`.
    fn from(quota: governor::Quota) -> Self {
        let limit = quota.burst_size().get();
        let period = quota.replenish_interval().as_nanos() as u64 * u64::from(limit);
        let period = period.clamp(MIN_PERIOD.as_nanos() as u64, MAX_PERIOD.as_nanos() as u64);
        Window::from_parts(limit, period.max(u64::from(limit)))
    }
}

/// What one request must fit in: every window must admit it.
///
/// ```
/// use tower_ratelimit::{Algorithm, Quota, Window};
///
/// // TalkPilot: 60 per minute and 1,000 per hour, both.
/// let quota = Quota::new(Window::per_minute(60)).and(Window::per_hour(1000));
/// assert_eq!(quota.windows().len(), 2);
///
/// // Exotel: 10/second burst and 100/minute sustained, counted in fixed windows.
/// let quota = Quota::new(Window::per_second(10))
///     .and(Window::per_minute(100))
///     .algorithm(Algorithm::FixedWindow);
/// assert_eq!(quota.algorithm_kind(), Algorithm::FixedWindow);
/// ```
///
/// A quota can also cap the requests *in flight* (Nixflex: 10 calls at once
/// on pay-as-you-go), alone or beside its windows:
///
/// ```
/// use std::time::Duration;
/// use tower_ratelimit::{Quota, Window};
///
/// // Inbound calls: at most 10 at once, the 11th is refused at once.
/// let inbound = Quota::in_flight(10);
/// // Outbound calls: at most 10 at once, the rest wait (100 at most, 30 s at most).
/// let outbound = Quota::in_flight(10).queue(100, Duration::from_secs(30));
/// // 60 a minute, and never more than 5 at once.
/// let both = Quota::new(Window::per_minute(60)).max_in_flight(5);
/// assert_eq!(both.in_flight_cap(), Some(5));
/// # let _ = (inbound, outbound);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Quota {
    windows: Vec<Window>,
    cost: u32,
    algorithm: Algorithm,
    in_flight: Option<u32>,
    mode: Mode,
}

impl Quota {
    /// A quota of one window, cost 1 per request, GCRA.
    pub fn new(window: Window) -> Self {
        Quota {
            windows: vec![window],
            in_flight: None,
            ..Quota::in_flight(0)
        }
    }

    /// A quota that only caps the requests in flight at `max`: a request
    /// over the cap is refused at once ("busy"), unless [`Quota::queue`]
    /// lets it wait. The slot is held until the response body has been sent
    /// or dropped. Counted per key across every route of the limit, so the
    /// routes of a limit that cap take one cap under each plan (the
    /// policy's build refuses two).
    pub fn in_flight(max: u32) -> Self {
        Quota {
            windows: Vec::new(),
            cost: 1,
            algorithm: Algorithm::default(),
            in_flight: Some(max),
            mode: Mode::Refuse,
        }
    }

    /// Also caps the requests in flight at `max` (see [`Quota::in_flight`]).
    #[must_use]
    pub fn max_in_flight(mut self, max: u32) -> Self {
        self.in_flight = Some(max);
        self
    }

    /// Lets a request over the in-flight cap wait for a slot, first come
    /// first served, instead of being refused at once: at most `max_queued`
    /// wait per key, each at most `max_wait`; past either it is refused as
    /// busy. A request that waits is counted in the quota's windows (if any)
    /// only once it has its slot, so a request refused after waiting costs
    /// nothing.
    #[must_use]
    pub fn queue(mut self, max_queued: usize, max_wait: Duration) -> Self {
        self.mode = Mode::Queue {
            max_queued,
            max_wait,
        };
        self
    }

    /// The cap on requests in flight, if the quota has one.
    #[inline]
    pub fn in_flight_cap(&self) -> Option<u32> {
        self.in_flight
    }

    /// What happens to a request over the in-flight cap.
    pub(crate) fn in_flight_mode(&self) -> Mode {
        self.mode
    }

    /// Adds a window that must also admit each request.
    #[must_use]
    pub fn and(mut self, window: Window) -> Self {
        self.windows.push(window);
        self
    }

    /// Sets how much of each window one request spends (default 1).
    #[must_use]
    pub fn cost(mut self, cost: u32) -> Self {
        self.cost = cost;
        self
    }

    /// Sets the counting algorithm (default [`Algorithm::Gcra`]).
    #[must_use]
    pub fn algorithm(mut self, algorithm: Algorithm) -> Self {
        self.algorithm = algorithm;
        self
    }

    /// The windows, in the order they were given.
    #[inline]
    pub fn windows(&self) -> &[Window] {
        &self.windows
    }

    /// How long after its last request a bucket of this quota may still
    /// hold a count (ns): two of its longest periods (a sliding window reads
    /// the one before the current).
    pub(crate) fn lifetime_ns(&self) -> u64 {
        let longest = self.windows.iter().map(Window::period_ns).max();
        longest.unwrap_or(0).saturating_mul(2)
    }

    /// The cost of one request.
    #[inline]
    pub fn request_cost(&self) -> u32 {
        self.cost
    }

    /// The counting algorithm.
    #[inline]
    pub fn algorithm_kind(&self) -> Algorithm {
        self.algorithm
    }

    /// Checks that the quota can ever admit a request, and that it means
    /// all it says: a cost of at least 1 that fits in every window, no two
    /// windows of the same period, none finer than a request per
    /// nanosecond, an in-flight cap of at least 1, a queue of at most
    /// 1,000,000 requests waiting at most 366 days, and no cost or
    /// algorithm on a quota without windows.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.windows.is_empty() && self.in_flight.is_none() {
            return Err(ConfigError::invalid(
                "windows",
                "a quota needs a window or an in-flight cap",
            ));
        }
        if self.in_flight.is_none() && self.mode != Mode::Refuse {
            return Err(ConfigError::invalid(
                "queue",
                "a queue needs an in-flight cap (`concurrency`)",
            ));
        }
        if self.cost == 0 {
            return Err(ConfigError::invalid("cost", "must be at least 1"));
        }
        if let Mode::Queue {
            max_queued,
            max_wait,
        } = self.mode
        {
            if max_queued > MAX_QUEUED {
                return Err(ConfigError::invalid(
                    "queue.max_queued",
                    format!("at most {MAX_QUEUED} requests may wait per key"),
                ));
            }
            if max_wait > MAX_PERIOD {
                return Err(ConfigError::invalid(
                    "queue.max_wait",
                    format!("{max_wait:?} is longer than 366 days"),
                ));
            }
        }
        if self.in_flight == Some(0) {
            return Err(ConfigError::invalid(
                "concurrency",
                "an in-flight cap of 0 would refuse every request",
            ));
        }
        if self.windows.is_empty() && self.cost != 1 {
            return Err(ConfigError::invalid(
                "cost",
                "a quota with no window counts no cost (an in-flight cap holds one slot per request)",
            ));
        }
        if self.windows.is_empty() && self.algorithm != Algorithm::default() {
            return Err(ConfigError::invalid(
                "algorithm",
                "a quota with no window has nothing to count with an algorithm",
            ));
        }
        if self.windows.len() > MAX_WINDOWS {
            return Err(ConfigError::invalid(
                "windows",
                format!("at most {MAX_WINDOWS} windows per quota"),
            ));
        }
        for (i, w) in self.windows.iter().enumerate() {
            if w.period_ns < u64::from(w.limit) {
                return Err(ConfigError::invalid(
                    "windows",
                    format!("{w} is finer than one request per nanosecond"),
                ));
            }
            if self.cost > w.limit {
                return Err(ConfigError::invalid(
                    "cost",
                    format!(
                        "cost {} exceeds the window {w}, so no request could ever pass",
                        self.cost
                    ),
                ));
            }
            if self.windows[..i].iter().any(|o| o.period_ns == w.period_ns) {
                return Err(ConfigError::invalid(
                    "windows",
                    format!("two windows with the same period ({w})"),
                ));
            }
        }
        Ok(())
    }
}

/// The most windows one quota may have.
pub(crate) const MAX_WINDOWS: usize = 8;
