//! The rule: how many refusals, within how long, ban for how long.

use std::time::Duration;

use crate::error::ConfigError;

/// When a key is banned and for how long: after `refusals` refusals within
/// `within`, for `ban`.
///
/// The exact rule is in the [module documentation](super): a refusal counts
/// for `within` nanoseconds after it (the end excluded), the ban starts at the
/// refusal that makes `refusals` counted ones, lasts exactly `ban`, is not
/// extended by refusals during it, and the count starts fresh after it.
///
/// ```
/// use std::time::Duration;
/// use tower_ratelimit::penalty::Penalty;
///
/// let exotel = Penalty::new(20, Duration::from_secs(60), Duration::from_secs(300)).unwrap();
/// assert_eq!(exotel.refusals(), 20);
/// assert_eq!(exotel.within(), Duration::from_secs(60));
/// assert_eq!(exotel.ban(), Duration::from_secs(300));
///
/// let err = Penalty::new(0, Duration::from_secs(60), Duration::from_secs(300)).unwrap_err();
/// assert_eq!(err.field(), "refusals");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Penalty {
    pub(super) refusals: u32,
    pub(super) within_ns: u64,
    pub(super) ban_ns: u64,
}

impl Penalty {
    /// The most refusals a penalty can count (a key keeps up to this many
    /// refusal times, 8 bytes each).
    pub const MAX_REFUSALS: u32 = 1_000;

    /// The longest `within` or `ban`: 366 days.
    pub const MAX_DURATION: Duration = Duration::from_secs(366 * 24 * 60 * 60);

    /// A penalty that bans a key for `ban` after `refusals` refusals within
    /// `within`.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] of kind
    /// [`InvalidValue`](crate::ConfigErrorKind::InvalidValue), naming the
    /// field (`refusals`, `within` or `ban`), when `refusals` is 0 or above
    /// [`MAX_REFUSALS`](Self::MAX_REFUSALS), or a duration is zero or longer
    /// than [`MAX_DURATION`](Self::MAX_DURATION).
    pub fn new(refusals: u32, within: Duration, ban: Duration) -> Result<Self, ConfigError> {
        if refusals == 0 {
            return Err(ConfigError::invalid(
                "refusals",
                "a penalty needs at least 1 refusal",
            ));
        }
        if refusals > Self::MAX_REFUSALS {
            return Err(ConfigError::invalid(
                "refusals",
                format!(
                    "{refusals} refusals is more than a penalty can count (at most {})",
                    Self::MAX_REFUSALS
                ),
            ));
        }
        let within_ns = duration_ns("within", within)?;
        let ban_ns = duration_ns("ban", ban)?;
        Ok(Penalty {
            refusals,
            within_ns,
            ban_ns,
        })
    }

    /// How many refusals within [`within`](Self::within) start a ban.
    pub fn refusals(&self) -> u32 {
        self.refusals
    }

    /// How long a refusal counts towards a ban.
    pub fn within(&self) -> Duration {
        Duration::from_nanos(self.within_ns)
    }

    /// How long a ban lasts.
    pub fn ban(&self) -> Duration {
        Duration::from_nanos(self.ban_ns)
    }

    /// [`within`](Self::within) in nanoseconds.
    #[cfg(any(feature = "redis", test))]
    pub(crate) fn within_ns(&self) -> u64 {
        self.within_ns
    }

    /// [`ban`](Self::ban) in nanoseconds.
    #[cfg(any(feature = "redis", test))]
    pub(crate) fn ban_ns(&self) -> u64 {
        self.ban_ns
    }
}

fn duration_ns(field: &str, duration: Duration) -> Result<u64, ConfigError> {
    if duration.is_zero() {
        return Err(ConfigError::invalid(
            field,
            "a penalty's durations must be longer than zero",
        ));
    }
    if duration > Penalty::MAX_DURATION {
        return Err(ConfigError::invalid(
            field,
            format!(
                "{duration:?} is longer than a penalty allows (at most {} days)",
                Penalty::MAX_DURATION.as_secs() / 86_400
            ),
        ));
    }
    // At most 366 days: about 3.2e16 ns, far below u64::MAX.
    Ok(duration.as_nanos() as u64)
}
