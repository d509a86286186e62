//! What a limit does while Redis cannot decide.

/// What a limit does while Redis cannot decide (unreachable, too slow, or the
/// circuit breaker is open).
///
/// ```
/// use tower_ratelimit::store::FailurePolicy;
///
/// assert_eq!(FailurePolicy::default(), FailurePolicy::Open);
/// assert_eq!(FailurePolicy::local(25), FailurePolicy::Local { percent: 25 });
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum FailurePolicy {
    /// Let the request through as far as this limit is concerned, uncounted
    /// and without rate-limit headers for it (the default: an outage of the
    /// limiter does not become an outage of the API).
    #[default]
    Open,
    /// Refuse the request, with a `Retry-After` of the circuit breaker's
    /// cool-down (what is left of it while it is open). A shadow limit never
    /// refuses, so for it this acts as [`FailurePolicy::Open`].
    Closed,
    /// Count the request in this process's memory against `percent` % of
    /// every window's limit (1 to 100; at least 1 request and at least the
    /// request's cost per window), with the same algorithm and periods: with
    /// `n` nodes, `100 / n` keeps the whole fleet near the real limit. The
    /// local counts start from zero at each outage and are not merged back.
    /// Refusals made here count towards the limit's penalty in this process,
    /// and a ban they start holds in this process only.
    Local {
        /// The share of each window's limit this process allows on its own.
        percent: u8,
    },
}

impl FailurePolicy {
    /// [`FailurePolicy::Local`] with `percent` clamped to 1..=100.
    pub const fn local(percent: u8) -> Self {
        let percent = if percent == 0 {
            1
        } else if percent > 100 {
            100
        } else {
            percent
        };
        FailurePolicy::Local { percent }
    }
}
