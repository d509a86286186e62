//! Plans: a route's quota for each customer plan.

use super::quota::Quota;

/// A route's quotas by plan: a default quota, and one quota per named plan.
///
/// A limit learns a request's plan from [`Limit::plan_from`] (an extractor,
/// typically of what an authentication layer put in the request's
/// extensions) or from a plan given to a key ([`Limit::key_plan`],
/// [`Overrides::set_plan`]); a request whose plan is
/// unknown, or has no quota on this route, gets the default. Every route
/// takes a `Tiers`, and a plain [`Quota`] is a `Tiers` with no plans.
///
/// ```
/// use tower_ratelimit::{Quota, Tiers, Window};
///
/// // Nixflex: concurrent calls by plan, pay-as-you-go by default.
/// let calls = Tiers::new(Quota::in_flight(10))
///     .plan("starter", Quota::in_flight(25))
///     .plan("scale", Quota::in_flight(100));
/// assert_eq!(calls.quota_for(Some("scale")).in_flight_cap(), Some(100));
/// assert_eq!(calls.quota_for(Some("gold")).in_flight_cap(), Some(10));
/// ```
///
/// [`Limit::plan_from`]: crate::Limit::plan_from
/// [`Limit::key_plan`]: crate::Limit::key_plan
/// [`Overrides::set_plan`]: crate::Overrides::set_plan
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tiers {
    pub(crate) default: Quota,
    pub(crate) plans: Vec<(String, Quota)>,
}

impl Tiers {
    /// Tiers whose every plan gets `default`, until [`Tiers::plan`] says
    /// otherwise.
    pub fn new(default: Quota) -> Self {
        Tiers {
            default,
            plans: Vec::new(),
        }
    }

    /// Gives requests on plan `name` their own quota (a later entry for the
    /// same plan replaces an earlier one).
    #[must_use]
    pub fn plan(mut self, name: impl Into<String>, quota: Quota) -> Self {
        let name = name.into();
        self.plans.retain(|(n, _)| *n != name);
        self.plans.push((name, quota));
        self
    }

    /// The quota of a request on `plan` (`None`: no plan known).
    pub fn quota_for(&self, plan: Option<&str>) -> &Quota {
        plan.and_then(|p| self.plans.iter().find(|(n, _)| n == p))
            .map_or(&self.default, |(_, q)| q)
    }
}

impl From<Quota> for Tiers {
    fn from(default: Quota) -> Self {
        Tiers::new(default)
    }
}
