//! What the layer tells a `metrics` recorder (cargo feature `metrics`): per
//! limit, how each request that it applied to was decided, and how many
//! admitted requests had 20 % or less of the reported window left.
//!
//! | metric | labels | counts |
//! |---|---|---|
//! | `ratelimit_decisions_total` | `limit`, `outcome` | one per limit that decided a request: `admitted` (every limit that counted an admitted request), `refused` (the refusing limit: a window had no room; the other limits, which counted nothing, record nothing), `busy`, `banned`, `key_rejected`, `shadow_refused`, `capacity` (the memory store's estimate for a key it had no room for refused) or `unavailable` (the store could not decide and the limit fails closed) |
//! | `ratelimit_near_limit_total` | `limit` | admitted requests with 20 % or less of the reported window left |
//!
//! The handles are registered with the recorder **when the layer is
//! built** (one set per limit), so a recorder must be installed before;
//! on the request's path each count is one `increment` of a handle (with
//! no recorder, a branch). Without the feature every function here is
//! empty.

use super::applied::Applied;
use super::Shared;
use crate::headers::Reported;
use crate::policy::Policy;
use crate::store::protocol::Outcome;

/// How a limit decided a request, as `ratelimit_decisions_total`'s
/// `outcome` label says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(not(feature = "metrics"), allow(dead_code))]
pub(super) enum Verdict {
    Admitted,
    Refused,
    Busy,
    Banned,
    KeyRejected,
    ShadowRefused,
    Capacity,
    Unavailable,
}

#[cfg(feature = "metrics")]
impl Verdict {
    const ALL: [Verdict; 8] = [
        Verdict::Admitted,
        Verdict::Refused,
        Verdict::Busy,
        Verdict::Banned,
        Verdict::KeyRejected,
        Verdict::ShadowRefused,
        Verdict::Capacity,
        Verdict::Unavailable,
    ];

    fn label(self) -> &'static str {
        match self {
            Verdict::Admitted => "admitted",
            Verdict::Refused => "refused",
            Verdict::Busy => "busy",
            Verdict::Banned => "banned",
            Verdict::KeyRejected => "key_rejected",
            Verdict::ShadowRefused => "shadow_refused",
            Verdict::Capacity => "capacity",
            Verdict::Unavailable => "unavailable",
        }
    }
}

/// One limit's handles.
#[cfg(feature = "metrics")]
#[derive(Clone)]
struct LimitMetrics {
    /// `ratelimit_decisions_total`, indexed by [`Verdict`].
    decisions: [metrics::Counter; 8],
    near_limit: metrics::Counter,
}

/// The handles of every limit of a layer's policy, registered once.
#[derive(Clone, Default)]
pub(crate) struct Metrics {
    #[cfg(feature = "metrics")]
    limits: std::sync::Arc<[LimitMetrics]>,
}

impl Metrics {
    /// Registers the handles of `policy`'s limits with the recorder
    /// installed now (none: handles that do nothing).
    #[cfg_attr(not(feature = "metrics"), allow(unused_variables))]
    pub(crate) fn new(policy: &Policy) -> Self {
        #[cfg(feature = "metrics")]
        {
            let limits = policy
                .inner
                .limits
                .iter()
                .map(|limit| {
                    let name = &limit.name;
                    LimitMetrics {
                        decisions: Verdict::ALL.map(|v| {
                            metrics::counter!(
                                "ratelimit_decisions_total",
                                "limit" => name.to_string(),
                                "outcome" => v.label()
                            )
                        }),
                        near_limit: metrics::counter!(
                            "ratelimit_near_limit_total",
                            "limit" => name.to_string()
                        ),
                    }
                })
                .collect();
            Metrics { limits }
        }
        #[cfg(not(feature = "metrics"))]
        Metrics {}
    }

    /// Counts one request that limit `limit` decided as `verdict`.
    #[inline(always)]
    #[cfg_attr(not(feature = "metrics"), allow(unused_variables))]
    pub(super) fn count(&self, limit: usize, verdict: Verdict) {
        #[cfg(feature = "metrics")]
        if let Some(l) = self.limits.get(limit) {
            l.decisions[verdict as usize].increment(1);
        }
    }

    /// Counts an admitted request near limit `limit`'s reported window's end.
    #[cfg(feature = "metrics")]
    #[inline(always)]
    fn near_limit(&self, limit: usize) {
        if let Some(l) = self.limits.get(limit) {
            l.near_limit.increment(1);
        }
    }
}

/// Whether an admitted request with `remaining` of `limit` left is near
/// the limit: 20 % or less left.
#[cfg(feature = "metrics")]
#[inline(always)]
fn near(remaining: u32, limit: u32) -> bool {
    u64::from(remaining) * 5 <= u64::from(limit)
}

/// Counts an admitted request: every limit in `applied` admitted it, but a
/// shadow limit whose window (in `outcome`) or in-flight cap would have
/// refused it counts a shadow refusal instead.
#[inline(always)]
#[cfg_attr(not(feature = "metrics"), allow(unused_variables))]
pub(super) fn admitted<St>(shared: &Shared<St>, applied: &Applied, outcome: Option<&Outcome>) {
    #[cfg(feature = "metrics")]
    {
        let metrics = &shared.metrics;
        let busy_claim = |limit: u16| {
            applied
                .claims
                .iter()
                .enumerate()
                .any(|(i, c)| c.origin.0 == limit && applied.shadow_busy & (1 << i) != 0)
        };
        for (i, charge) in applied.charges.iter().enumerate() {
            let limit = charge.origin.0;
            let shadow_refused = charge.shadow
                && (outcome.is_some_and(|o| {
                    o.windows()
                        .iter()
                        .any(|w| usize::from(w.check) == i && w.retry_after > 0)
                }) || busy_claim(limit));
            metrics.count(
                usize::from(limit),
                if shadow_refused {
                    Verdict::ShadowRefused
                } else {
                    Verdict::Admitted
                },
            );
        }
        for (i, claim) in applied.claims.iter().enumerate() {
            let limit = claim.origin.0;
            if applied.charges.iter().any(|c| c.origin.0 == limit) {
                continue;
            }
            let verdict = if applied.shadow_busy & (1 << i) != 0 {
                Verdict::ShadowRefused
            } else {
                Verdict::Admitted
            };
            metrics.count(usize::from(limit), verdict);
        }
    }
}

/// Counts an admission whose reported window, of limit `limit`, is left
/// with `reported`: near the limit if that is 20 % or less.
#[inline(always)]
#[cfg_attr(not(feature = "metrics"), allow(unused_variables))]
pub(super) fn near_limit<St>(shared: &Shared<St>, limit: u16, reported: &Reported) {
    #[cfg(feature = "metrics")]
    if near(reported.remaining, reported.limit) {
        shared.metrics.near_limit(usize::from(limit));
    }
}

/// Counts an admitted request whose decision was built: near the limit if
/// its reported window (not an in-flight cap) has 20 % or less left.
#[inline]
#[cfg_attr(not(feature = "metrics"), allow(unused_variables))]
pub(super) fn near_limit_decided<St>(shared: &Shared<St>, decision: &crate::decision::Decision) {
    #[cfg(feature = "metrics")]
    if let Some(w) = decision.reported() {
        if !w.concurrent && near(w.remaining, w.limit) {
            shared.metrics.near_limit(usize::from(w.limit_index));
        }
    }
}
