//! What a limit does while Redis cannot decide.

/// What a limit does while Redis cannot decide (unreachable, too slow, or the
/// circuit breaker is open).
///
/// The default is [`FailurePolicy::local`]`(100)`: while Redis cannot
/// decide, each process counts every key against the whole quota in its own
/// memory, so an outage lets a key through at most its quota per window from
/// each process, and the API stays up. Failing open is an explicit choice.
///
/// ```
/// use tower_ratelimit::store::FailurePolicy;
///
/// assert_eq!(FailurePolicy::default(), FailurePolicy::Local { percent: 100 });
/// assert_eq!(FailurePolicy::local(25), FailurePolicy::Local { percent: 25 });
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum FailurePolicy {
    /// Let the request through as far as this limit is concerned, uncounted
    /// and without rate-limit headers for it: an outage of the limiter never
    /// refuses a request, and limits nothing.
    Open,
    /// Refuse the request, with a `Retry-After` of the circuit breaker's
    /// cool-down (what is left of it while it is open). A shadow limit never
    /// refuses, so for it this acts as [`FailurePolicy::Open`].
    Closed,
    /// Count the request in this process's memory against `percent` % of
    /// every window's limit (1 to 100; at least 1 request and at least the
    /// request's cost per window), with the same algorithm and periods: with
    /// `n` nodes, `100 / n` keeps the whole fleet near the real limit. The
    /// local counts are this process's own: they do not start from Redis's,
    /// and they are not merged back. A request is counted when it falls
    /// back (up to the store's deadline after it arrived, if its call
    /// failed), no earlier than any request counted here before it: time
    /// never goes back for the local counts, so a request within the share
    /// is admitted, and a refusal's wait is measured from then.
    /// Refusals made here count towards the limit's penalty in this process,
    /// and a ban they start holds in this process only.
    Local {
        /// The share of each window's limit this process allows on its own.
        percent: u8,
    },
}

impl Default for FailurePolicy {
    /// [`FailurePolicy::local`]`(100)`: at most the quota per process.
    fn default() -> Self {
        FailurePolicy::Local { percent: 100 }
    }
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
