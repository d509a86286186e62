//! Step 3 of a request's path: its in-flight slots first (a request that
//! waits for one is counted only once it has it), then one atomic check of
//! every (key, window) pair by the store. One path serves every store: what
//! can be decided at once is, in `call`; what must wait (a slot, a store
//! that answers later) goes on in the response future from where it stopped.

use std::sync::Arc;

use http::{Request, Response};
use tower_service::Service;

use super::applied::{Applied, Checks};
use super::in_flight::{take_now, take_waiting, Taken};
use super::respond::{busy, finish};
use super::Shared;
use crate::concurrency::Busy;
use crate::future::ResponseFuture;
use crate::store::{Decided, Outcome, Store, StoreError};

/// How far a request's decision has got.
pub(super) enum Step<P> {
    /// Every slot is held and the store has answered (`None`: the request
    /// has no window to count).
    Decided(Option<Result<Outcome, StoreError>>),
    /// Claim `.0` has no free slot and the request cannot wait for one.
    Busy(usize, Busy),
    /// The request waits for claim `.0`'s slot.
    Slot(usize),
    /// The store answers later.
    Store(P),
}

impl Applied {
    /// Takes the request's slots that are free now, then asks the store.
    pub(super) fn decide_now<St: Store>(&mut self, shared: &Shared<St>) -> Step<St::Pending> {
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
        self.ask_store(shared)
    }

    /// Asks the store about the request's charges (all slots are held).
    fn ask_store<St: Store>(&self, shared: &Shared<St>) -> Step<St::Pending> {
        if self.charges.is_empty() {
            return Step::Decided(None);
        }
        let mut checks = Checks::new();
        self.checks(&shared.policy.inner, &mut checks);
        match shared.store.check(self.now, &checks) {
            Decided::Ready(result) => Step::Decided(Some(result)),
            Decided::Pending(pending) => Step::Store(pending),
        }
    }
}

/// Goes on deciding in the response future, from `step`: the ready inner
/// service moves into it (a clone takes its place) and is called once the
/// decision is made.
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
    let clone = inner.clone();
    let mut ready = std::mem::replace(inner, clone);
    let shared = Arc::clone(shared);
    ResponseFuture::deciding(Box::pin(async move {
        let mut step = step;
        loop {
            step = match step {
                Step::Decided(decided) => {
                    return finish(&shared, decided, applied, request, &mut ready).await;
                }
                Step::Busy(i, why) => {
                    let now = shared.clock.now();
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
                            applied.now = shared.clock.now();
                            applied.ask_store(&shared)
                        }
                        Err((i, why)) => Step::Busy(i, why),
                    }
                }
                Step::Store(pending) => Step::Decided(Some(pending.await)),
            };
        }
    }))
}
