//! Step 3 of a request's path: its in-flight slots first (a request that
//! waits for one is counted only once it has it), then one atomic check of
//! every (key, window) pair by the store. One path serves every store: what
//! can be decided at once is, in `call`; what must wait (a slot, a store
//! that answers later) goes on in the response future from where it stopped.

use std::future::poll_fn;
use std::sync::Arc;

use http::{Request, Response};
use tower_service::Service;

use super::applied::{Applied, Checks};
use super::in_flight::{take_now, take_waiting, Taken};
use super::respond::{busy, finish};
use super::Shared;
use crate::future::ResponseFuture;
use crate::inflight::Busy;
use crate::store::protocol::{Decided, Outcome};
use crate::store::Store;

/// How far a request's decision has got.
pub(super) enum Step<P> {
    /// Every slot is held and the store was asked: its answer, now or later.
    Asked(Decided<P>),
    /// Every slot is held, and the request has no window to count.
    Uncounted,
    /// Claim `.0` has no free slot and the request cannot wait for one.
    Busy(usize, Busy),
    /// The request waits for claim `.0`'s slot.
    Slot(usize),
}

impl Applied {
    /// Takes the request's slots that are free now, then asks the store
    /// `checks` (the charges' checks, built by [`plan`](super::plan::plan)).
    #[inline]
    pub(super) fn decide_now<St: Store>(
        &mut self,
        shared: &Shared<St>,
        checks: &Checks<'_>,
    ) -> Step<St::Pending> {
        if !self.claims.is_empty() {
            // Slots a store shares are always asked for later.
            let taken = match shared.store.shared_slots() {
                Some(_) => Taken::Wait(0),
                None => take_now(
                    &shared.in_flight,
                    &self.claims,
                    0,
                    &mut self.held,
                    &mut self.shadow_busy,
                ),
            };
            match taken {
                Taken::All => {}
                Taken::Wait(i) => return Step::Slot(i),
                Taken::Refused(i, why) => return Step::Busy(i, why),
            }
        }
        if self.charges.is_empty() {
            return Step::Uncounted;
        }
        Step::Asked(self.ask(shared, checks))
    }

    /// Asks the store `checks`, the charges' checks as
    /// [`plan`](super::plan::plan) built them: all of them, unless a key
    /// has a quota of its own (then they are built again here).
    #[inline(always)]
    pub(super) fn ask<St: Store>(
        &self,
        shared: &Shared<St>,
        checks: &Checks<'_>,
    ) -> Decided<St::Pending> {
        if checks.len() == self.charges.len() {
            shared.store.check(self.now, checks)
        } else {
            self.ask_rebuilt(shared)
        }
    }

    /// Asks the store about the charges, building their checks.
    #[cold]
    #[inline(never)]
    fn ask_rebuilt<St: Store>(&self, shared: &Shared<St>) -> Decided<St::Pending> {
        let mut checks = Checks::new();
        self.checks(&shared.policy.inner, &shared.succession, &mut checks);
        shared.store.check(self.now, &checks)
    }

    /// Asks the store about the request's charges (all slots are held,
    /// after a wait: the checks are built again here).
    #[inline]
    fn ask_store<St: Store>(&self, shared: &Shared<St>) -> Step<St::Pending> {
        if self.charges.is_empty() {
            return Step::Uncounted;
        }
        let mut checks = Checks::new();
        self.checks(&shared.policy.inner, &shared.succession, &mut checks);
        Step::Asked(shared.store.check(self.now, &checks))
    }
}

/// Goes on deciding in the response future, from `step`. A clone of the
/// inner service goes with it, made ready only once the request is
/// admitted: the ready service stays in place for the next request, so a
/// request that waits (for a slot, for Redis) holds nothing of the inner
/// service meanwhile (a `ConcurrencyLimit` inside the layer, say, keeps its
/// permits for requests that run).
pub(super) fn later<S, St, ReqBody, ResBody>(
    shared: &Arc<Shared<St>>,
    inner: &mut S,
    request: Request<ReqBody>,
    mut applied: Applied,
    step: Step<St::Pending>,
) -> ResponseFuture<S::Future, ResBody, S::Error>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    St: Store,
    ReqBody: Send + 'static,
    ResBody: Send + 'static,
{
    let mut inner = inner.clone();
    let shared = Arc::clone(shared);
    ResponseFuture::deciding(Box::pin(async move {
        let mut step = step;
        loop {
            step = match step {
                Step::Asked(Decided::Ready(answer)) => {
                    // Admitted: on the store's count, or let through by a
                    // store that failed (refusals never reach the inner
                    // service, so they do not wait for it).
                    if answer.as_ref().map_or(true, Outcome::admitted) {
                        poll_fn(|cx| inner.poll_ready(cx)).await?;
                    }
                    let inner = &mut inner;
                    return finish(&shared, Some(&answer), &mut applied, request, inner).await;
                }
                Step::Asked(Decided::Pending(pending)) => {
                    Step::Asked(Decided::Ready(pending.await))
                }
                Step::Uncounted => {
                    poll_fn(|cx| inner.poll_ready(cx)).await?;
                    return finish(&shared, None, &mut applied, request, &mut inner).await;
                }
                Step::Busy(i, why) => {
                    let now = shared.now();
                    let claim = &applied.claims[i];
                    return busy::<S::Future, _, _, _, _>(&shared, claim, why, now, &request).await;
                }
                Step::Slot(from) => {
                    let Applied {
                        claims,
                        held,
                        shadow_busy,
                        ..
                    } = &mut applied;
                    match take_waiting(&shared, claims, from, held, shadow_busy).await {
                        Ok(()) => {
                            applied.now = shared.now();
                            applied.ask_store(&shared)
                        }
                        Err((i, why)) => Step::Busy(i, why),
                    }
                }
            };
        }
    }))
}
