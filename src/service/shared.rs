//! What every service of one layer shares: the policy, the store, the clock,
//! the layer's settings and its metrics' handles.

use std::sync::Arc;

use crate::clock::Clock;
use crate::event::Hook;
use crate::inflight::ConcurrencyLimiter;
use crate::policy::Policy;

use super::metrics::Metrics;

/// What every service of one layer shares.
pub(crate) struct Shared<St> {
    pub(crate) policy: Policy,
    pub(crate) store: Arc<St>,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) decision_extensions: bool,
    pub(crate) on_event: Option<Hook>,
    pub(crate) in_flight: ConcurrencyLimiter,
    /// The handles of the policy's metrics (feature `metrics`).
    pub(crate) metrics: Metrics,
}

impl<St> Clone for Shared<St> {
    fn clone(&self) -> Self {
        Shared {
            policy: self.policy.clone(),
            store: Arc::clone(&self.store),
            clock: Arc::clone(&self.clock),
            decision_extensions: self.decision_extensions,
            on_event: self.on_event.clone(),
            in_flight: self.in_flight.clone(),
            metrics: self.metrics.clone(),
        }
    }
}
