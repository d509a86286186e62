//! What the layer knows of each limit that applies to a request: which
//! quota (default, plan or override), which bucket, which in-flight slot,
//! and the slots the request holds so far.

use std::sync::Arc;

use smallvec::SmallVec;

use crate::body::Slots;
use crate::inflight::Mode;
use crate::key::RequestView;
use crate::policy::{CompiledLimit, Own, PolicyInner, Quota, Route, Succession};
use crate::report::WindowOrigin;
use crate::store::protocol::Check;

/// What the key whose id is `id` has on a route of limit `index`: its
/// override, else its plan, else nothing (the route's default applies; see
/// [`Route::quota_of`]).
#[inline(always)]
pub(super) fn resolve(
    policy: &PolicyInner,
    index: usize,
    limit: &CompiledLimit,
    id: u64,
    view: &RequestView<'_>,
) -> Option<Own> {
    if let Some(own) = policy.override_of(index, id) {
        return Some(own);
    }
    let plan = limit
        .plan
        .as_ref()
        .and_then(|source| source.extract(view).ok())
        .and_then(|name| limit.plan_index(&name));
    plan.map(Own::Plan)
}

/// A request's checks, as the store takes them.
pub(super) type Checks<'a> = SmallVec<[Check<'a>; 4]>;

/// One limit's rate check of a request.
pub(super) struct Charge {
    pub(super) origin: WindowOrigin,
    pub(super) bucket: u64,
    /// The request's key, hashed in the domain of the limit's key extractor
    /// (see [`Check::principal`]).
    pub(super) principal: u64,
    /// The key in the limit's penalty box, if the limit has a penalty.
    pub(super) penalty_key: Option<u64>,
    /// The key's override or plan (see [`resolve`]).
    pub(super) own: Option<OwnAt>,
    pub(super) shadow: bool,
}

/// A charge's own quota: a plan of its limit, or the key's quota, kept in
/// [`Applied::quotas`] (so that a charge is plain data, dropped for nothing).
#[derive(Debug, Clone, Copy)]
pub(super) enum OwnAt {
    Plan(u8),
    Quota(u8),
}

/// One limit's in-flight cap on a request.
#[derive(Debug, Clone, Copy)]
pub(super) struct Claim {
    pub(super) origin: WindowOrigin,
    /// The key's slot count, in the limit's concurrency domain.
    pub(super) key: u64,
    /// The request's key, hashed in the domain of the limit's key extractor
    /// (see [`Check::principal`]).
    pub(super) principal: u64,
    /// The request's bucket, for events.
    pub(super) bucket: u64,
    pub(super) cap: u32,
    pub(super) mode: Mode,
    pub(super) shadow: bool,
}

/// What the layer knows of the limits that apply to a request.
pub(super) struct Applied {
    pub(super) charges: SmallVec<[Charge; 4]>,
    /// The keys' own quotas the charges name (see [`OwnAt::Quota`]): the
    /// first, then any more (a request rarely has two).
    pub(super) quotas: (Option<Arc<Quota>>, Vec<Arc<Quota>>),
    pub(super) claims: SmallVec<[Claim; 1]>,
    /// When the charges are decided (after any wait for a slot).
    pub(super) now: u64,
    /// The slots taken so far, in claim order (boxed at the first: the
    /// response body keeps the box).
    pub(super) held: Slots,
    /// Bit `i`: shadow claim `i` had no free slot.
    pub(super) shadow_busy: u64,
}

impl Applied {
    #[inline]
    pub(super) fn new(now: u64) -> Self {
        Applied {
            charges: SmallVec::new(),
            quotas: (None, Vec::new()),
            claims: SmallVec::new(),
            now,
            held: None,
            shadow_busy: 0,
        }
    }

    /// The (limit, route) of charge `check`.
    #[inline]
    pub(super) fn origin(&self, check: usize) -> WindowOrigin {
        // Through the slice: SmallVec's Index does not inline.
        self.charges.as_slice()[check].origin
    }

    /// The route of charge `check`.
    #[inline]
    pub(super) fn route<'p>(&self, policy: &'p PolicyInner, check: usize) -> &'p Route {
        let (li, ri) = self.origin(check);
        &policy.limits[usize::from(li)].routes[usize::from(ri)]
    }

    /// The quota of charge `check`.
    #[inline]
    pub(super) fn quota<'a>(&'a self, policy: &'a PolicyInner, check: usize) -> &'a Quota {
        self.quota_of(
            self.route(policy, check),
            self.charges.as_slice()[check].own,
        )
    }

    /// The quota `own` gives on `route`.
    #[inline]
    fn quota_of<'a>(&'a self, route: &'a Route, own: Option<OwnAt>) -> &'a Quota {
        match own {
            Some(OwnAt::Quota(0)) => self.quotas.0.as_deref().unwrap_or(route.plan_quota(None)),
            Some(OwnAt::Quota(i)) => &self.quotas.1[usize::from(i) - 1],
            Some(OwnAt::Plan(p)) => route.plan_quota(Some(p)),
            None => route.plan_quota(None),
        }
    }

    /// Keeps `own` for a charge.
    #[inline]
    pub(super) fn keep(&mut self, own: Option<Own>) -> Option<OwnAt> {
        match own? {
            Own::Plan(p) => Some(OwnAt::Plan(p)),
            Own::Quota(quota) => {
                let (first, more) = &mut self.quotas;
                if first.is_none() {
                    *first = Some(quota);
                    return Some(OwnAt::Quota(0));
                }
                more.push(quota);
                Some(OwnAt::Quota(more.len() as u8))
            }
        }
    }

    /// Puts the store's checks in `checks` (filled in place: it is large).
    pub(super) fn checks<'a>(
        &'a self,
        policy: &'a PolicyInner,
        succession: &'a Succession,
        checks: &mut Checks<'a>,
    ) {
        for (i, charge) in self.charges.iter().enumerate() {
            let route = self.route(policy, i);
            let limit = &policy.limits[usize::from(charge.origin.0)];
            let quota = self.quota_of(route, charge.own);
            checks.push(Check {
                bucket: charge.bucket,
                principal: charge.principal,
                quota,
                shadow: charge.shadow,
                limit: &limit.name,
                base: succession.base(route),
                penalty: charge.penalty_key.zip(limit.penalty.as_ref()),
            });
        }
    }

    /// The period (ns) of window `window` of check `check`.
    pub(super) fn period_of<'a>(
        &'a self,
        policy: &'a PolicyInner,
    ) -> impl Fn(usize, usize) -> u64 + 'a {
        move |check, window| self.quota(policy, check).windows()[window].period_ns()
    }
}
