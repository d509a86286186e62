//! What every service of one layer shares: the policy, the store, the clock,
//! the layer's settings and its metrics' handles, behind the pointer a
//! reload swaps.

use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::clock::{LayerClock, LATEST};
use crate::event::Hook;
use crate::inflight::ConcurrencyLimiter;
use crate::policy::{Policy, Succession};

use super::metrics::Metrics;

/// Where a layer and its services find what they share now: a request loads
/// it once and keeps it to its end, and a reload swaps it whole.
pub(crate) type Current<St> = ArcSwap<Shared<St>>;

/// What every service of one layer shares.
pub(crate) struct Shared<St> {
    pub(crate) policy: Policy,
    /// What the policy took over from the ones before it, here.
    pub(crate) succession: Arc<Succession>,
    pub(crate) store: Arc<St>,
    pub(crate) clock: LayerClock,
    /// Whether the decision goes into the request's and the response's
    /// extensions.
    pub(crate) decision_extensions: bool,
    /// Whether the decision is [`Decision::current`](crate::Decision::current)
    /// while the inner service runs.
    pub(crate) current_decision: bool,
    pub(crate) on_event: Option<Hook>,
    /// Gives the store a reloaded policy's memory cap, when the layer made
    /// the store from its policy; whether the cap changed.
    pub(crate) resize: Option<fn(&St, usize) -> bool>,
    pub(crate) in_flight: ConcurrencyLimiter,
    /// The handles of the policy's metrics (feature `metrics`).
    pub(crate) metrics: Metrics,
}

impl<St> Clone for Shared<St> {
    fn clone(&self) -> Self {
        Shared {
            policy: self.policy.clone(),
            succession: Arc::clone(&self.succession),
            store: Arc::clone(&self.store),
            clock: self.clock.clone(),
            decision_extensions: self.decision_extensions,
            current_decision: self.current_decision,
            on_event: self.on_event.clone(),
            resize: self.resize,
            in_flight: self.in_flight.clone(),
            metrics: self.metrics.clone(),
        }
    }
}

impl<St> Shared<St> {
    /// The same, enforcing `policy` put in place at `now` (with its own
    /// metrics' handles).
    pub(crate) fn with_policy(&self, policy: Policy, now: u64) -> Self {
        let succession = (self.succession).next(&self.policy.inner, &policy.inner, now);
        Shared {
            metrics: Metrics::new(&policy),
            succession: Arc::new(succession),
            policy,
            ..self.clone()
        }
    }
}

impl<St> Shared<St> {
    /// The time by the layer's clock, no later than [`LATEST`].
    #[inline]
    pub(crate) fn now(&self) -> u64 {
        self.clock.now().min(LATEST)
    }

    /// Whether anything reads the decision of an admitted request.
    #[inline]
    pub(crate) fn keeps_decision(&self) -> bool {
        self.decision_extensions || self.current_decision
    }
}
