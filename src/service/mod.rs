//! The service: `call` reads top to bottom as a request's path through the
//! layer: plan (match the routes, read the keys), decide (in-flight slots,
//! then the store), respond.

mod applied;
mod decide;
mod in_flight;
mod metrics;
mod plan;
mod respond;
mod shared;
mod verdict;

use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};

use arc_swap::cache::Cache;
use http::{Request, Response};
use tower_service::Service;

use self::applied::{Applied, Checks};
use self::decide::{later, Step};
pub(crate) use self::metrics::Metrics;
use self::plan::{plan, Plan};
use self::respond::{banned, busy, finish, pass, reject};
pub(crate) use self::shared::{Current, Shared};
use crate::body::ResponseBody;
use crate::future::ResponseFuture;
use crate::store::protocol::Decided;
use crate::store::{MemoryStore, Store};

/// A service rate-limited by a [`RateLimitLayer`](crate::RateLimitLayer).
///
/// `poll_ready` only asks the inner service: the key is not known until a
/// request arrives, so every decision happens in `call`. With the memory
/// store the decision is made in `call` itself and the inner service is
/// called at once; with a store that answers later, the ready inner service
/// moves into the response future (and a clone takes its place).
pub struct RateLimit<S, St = MemoryStore> {
    inner: S,
    /// What the layer shares now, as this service last saw it: a request
    /// checks it is still current with one relaxed load (a reload swaps it).
    current: Cache<Arc<Current<St>>, Arc<Shared<St>>>,
}

impl<S, St> RateLimit<S, St> {
    pub(crate) fn from_current(inner: S, current: Arc<Current<St>>) -> Self {
        RateLimit {
            inner,
            current: Cache::new(current),
        }
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// The inner service, unwrapped.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S: Clone, St> Clone for RateLimit<S, St> {
    fn clone(&self) -> Self {
        RateLimit {
            inner: self.inner.clone(),
            current: self.current.clone(),
        }
    }
}

impl<S: fmt::Debug, St> fmt::Debug for RateLimit<S, St> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimit")
            .field("inner", &self.inner)
            .field("policy", &self.current.arc_swap().load().policy)
            .finish_non_exhaustive()
    }
}

impl<S, St, ReqBody, ResBody> Service<Request<ReqBody>> for RateLimit<S, St>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    St: Store,
    ReqBody: Send + 'static,
    ResBody: Send + 'static,
{
    type Response = Response<ResponseBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, ResBody, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        let RateLimit { inner, current } = self;
        // The policy as it stands now, kept to the end of this request's
        // decision whatever a reload swaps in meanwhile.
        let shared: &Arc<Shared<St>> = current.load();
        let now = shared.now();

        // 1. match and 2. key: which limits apply, to whose key, at which quota.
        let mut applied = Applied::new(now);
        let mut checks = Checks::new();
        match plan(shared, &request, &mut applied, &mut checks) {
            Plan::Apply => {}
            Plan::Pass => return pass(shared, request, inner),
            Plan::Reject(error) => return reject(&error, &request),
            Plan::Banned(ban) => return banned(shared, ban, now, &request),
        }

        // 3. decide: the in-flight slots, then the store; what must wait
        // goes on in the response future. The usual request, with no slot
        // to take, asks the store straight away.
        if applied.claims.is_empty() && !applied.charges.is_empty() {
            return match applied.ask(shared, &checks) {
                // 4. respond.
                Decided::Ready(ref answer) => {
                    finish(shared, Some(answer), &mut applied, request, inner)
                }
                pending => later(shared, inner, request, applied, Step::Asked(pending)),
            };
        }
        match applied.decide_now(shared, &checks) {
            // 4. respond.
            Step::Asked(Decided::Ready(ref answer)) => {
                finish(shared, Some(answer), &mut applied, request, inner)
            }
            Step::Uncounted => finish(shared, None, &mut applied, request, inner),
            Step::Busy(i, why) => busy(shared, &applied.claims[i], why, now, &request),
            step => later(shared, inner, request, applied, step),
        }
    }
}
