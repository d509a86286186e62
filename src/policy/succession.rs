//! What a policy put in place takes over from the ones a layer enforced
//! before it: the quota each route's buckets were counted at, where that is
//! not the route's own, and the routes they had that it has not, while
//! their counts may live. It belongs to the placement, not to the policy:
//! the same policy put in place twice, after different ones, takes over
//! from each.

use super::{PolicyInner, Quota, Route};

/// A policy's place among the policies a layer enforced.
#[derive(Debug, Default)]
pub(crate) struct Succession {
    /// By route ([`Route::flat`]): the quota its buckets were counted at
    /// when the policy was put in place, if not the route's default.
    bases: Box<[Option<Quota>]>,
    /// The routes of earlier policies this one has not, while their counts
    /// may live.
    retired: Vec<Retired>,
}

/// A route a reload removed, whose buckets may still hold counts: if a
/// route of the same id comes back before `until`, they are converted from
/// `base`, as for any route whose quota changed.
#[derive(Debug, Clone)]
struct Retired {
    id: u64,
    base: Quota,
    /// When every count the route's buckets may hold has expired (ns).
    until: u64,
}

impl Succession {
    /// The quota `route`'s buckets are counted at when no plan or override
    /// applies (see [`Check::base`]).
    ///
    /// [`Check::base`]: crate::store::protocol::Check::base
    #[inline]
    pub(crate) fn base<'a>(&'a self, route: &'a Route) -> &'a Quota {
        match self.bases.get(route.flat) {
            Some(Some(base)) => base,
            _ => &route.quota,
        }
    }

    /// The succession of `after`, put in place at `now` in place of
    /// `before`, whose succession this is: a route whose quota changed
    /// since its buckets were counted (in `before`, or in an earlier policy
    /// that had it, if it was removed and comes back while its counts may
    /// live) has them converted by the store; the routes `before` had and
    /// `after` has not are remembered as retired.
    pub(crate) fn next(&self, before: &PolicyInner, after: &PolicyInner, now: u64) -> Succession {
        fn routes(policy: &PolicyInner) -> Vec<&Route> {
            let limits = policy.limits.iter();
            limits.flat_map(|limit| limit.routes.iter()).collect()
        }
        let (old, new) = (routes(before), routes(after));
        let live = self.retired.iter().filter(|r| r.until > now);
        let bases = new
            .iter()
            .map(|route| {
                let base = match old.iter().find(|r| r.id == route.id) {
                    Some(was) => Some(self.base(was)),
                    None => live.clone().find(|r| r.id == route.id).map(|r| &r.base),
                };
                base.filter(|base| **base != route.quota).cloned()
            })
            .collect();
        let kept = |id: u64| new.iter().any(|r| r.id == id);
        let mut retired: Vec<Retired> = live.filter(|r| !kept(r.id)).cloned().collect();
        for route in old.iter().filter(|r| !kept(r.id)) {
            let base = self.base(route).clone();
            retired.push(Retired {
                id: route.id,
                until: now.saturating_add(base.lifetime_ns()),
                base,
            });
        }
        Succession { bases, retired }
    }
}
