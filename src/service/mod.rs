//! The service: `call` reads top to bottom as a request's path through the
//! layer (match, key, decide, respond).

mod applied;
mod decide;
mod in_flight;
mod respond;

use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Request, Response};
use tower_service::Service;

use self::applied::{resolve, Applied, Charge, Checks, Claim};
use self::decide::{decide_counted, emit};
use self::in_flight::{cap_report, in_flight_of, take_now, take_waiting, Held, Taken};
use self::respond::{build, busy, refuse, respond, slots, window_report, Counted};
use crate::body::ResponseBody;
use crate::decision::{Decision, NANOS};
use crate::event::{Event, EventKind};
use crate::future::ResponseFuture;
use crate::headers::{PendingHeaders, Reported};
use crate::key::{Key, KeyError, KeyErrorKind, KeySecret, RequestView};
use crate::layer::Shared;
use crate::policy::{CompiledLimit, MissingKey, PathSegments};
use crate::response;
use crate::store::{Decided, MemoryStore, Outcome, Store};

/// A service rate-limited by a [`RateLimitLayer`](crate::RateLimitLayer).
///
/// `poll_ready` only asks the inner service: the key is not known until a
/// request arrives, so every decision happens in `call`. With the memory
/// store the decision is made in `call` itself and the inner service is
/// called at once; with a store that answers later, the ready inner service
/// moves into the response future (and a clone takes its place).
pub struct RateLimit<S, St = MemoryStore> {
    inner: S,
    shared: Arc<Shared<St>>,
}

impl<S, St> RateLimit<S, St> {
    pub(crate) fn from_shared(inner: S, shared: Arc<Shared<St>>) -> Self {
        RateLimit { inner, shared }
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
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<S: fmt::Debug, St> fmt::Debug for RateLimit<S, St> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimit")
            .field("inner", &self.inner)
            .field("policy", &self.shared.policy)
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
        let RateLimit { inner, shared } = self;
        let policy = &*shared.policy.inner;
        let now = shared.clock.now();

        // 1. match and 2. key: every limit with a matching route adds a
        // charge (its windows) and a claim (its in-flight cap), or both.
        let mut applied = Applied::new(now);
        let mut banned = None;
        let path = PathSegments::new(request.uri().path());
        for (li, limit) in policy.limits.iter().enumerate() {
            let Some((ri, route, captures)) = limit.route_for(request.method(), &path) else {
                continue;
            };
            let view = RequestView::new(&request, Some(captures));
            match extract_key(limit, &view, policy.max_key_len) {
                Ok(key) if limit.exemptions.covers(&key, &view, &policy.secret) => {
                    tracing::trace!(limit = %limit.name, "limit skipped: exempt");
                }
                Ok(key) => {
                    let id = policy.secret.id(limit.key_domain, &key);
                    let bucket = KeySecret::derive(id, route.id);
                    let own = resolve(policy, li, limit, &key, &view);
                    let quota = route.quota_of(own.as_ref());
                    let penalty_key = limit
                        .penalty
                        .map(|_| KeySecret::derive(id, limit.penalty_domain));
                    if let (Some(key), false) = (penalty_key, limit.shadow) {
                        if let Some(left) = shared.store.banned_for(key, now) {
                            let report = window_report(quota, li, ri, policy.report);
                            banned = Some((li, left, bucket, report));
                            break;
                        }
                    }
                    let origin = (li as u16, ri as u16);
                    if let Some(cap) = quota.in_flight_cap() {
                        applied.claims.push(Claim {
                            origin,
                            key: KeySecret::derive(id, limit.concurrency_domain),
                            bucket,
                            cap,
                            mode: quota.in_flight_mode(),
                            shadow: limit.shadow,
                        });
                    }
                    if !quota.windows().is_empty() {
                        applied.charges.push(Charge {
                            origin,
                            bucket,
                            penalty_key,
                            own,
                            shadow: limit.shadow,
                        });
                    }
                }
                Err(error)
                    if limit.missing_key == MissingKey::Skip
                        && error.kind() == KeyErrorKind::Missing =>
                {
                    tracing::trace!(limit = %limit.name, %error, "limit skipped: no usable key");
                }
                Err(error) => {
                    if let Some(hook) = &shared.on_event {
                        (hook.0)(&Event {
                            kind: EventKind::KeyRejected,
                            limit: &limit.name,
                            bucket: None,
                            decision: None,
                            key_error: Some(&error),
                        });
                    }
                    if limit.shadow {
                        tracing::info!(limit = %limit.name, %error, "shadow limit would have rejected the key");
                        continue;
                    }
                    tracing::debug!(limit = %limit.name, %error, "request refused: no usable key");
                    // Nothing is counted before every key is known: no
                    // rate-limit headers.
                    let produced = response::key_error(&error, request.headers());
                    return ResponseFuture::produced(build(
                        produced,
                        PendingHeaders::default(),
                        None,
                    ));
                }
            }
        }
        drop(path);
        if let Some((li, left, bucket, report)) = banned {
            let decision = Decision::banned(left, now, report);
            emit(shared, EventKind::Refused, li, bucket, &decision);
            return refuse(shared, decision, None, &request);
        }
        if applied.charges.is_empty() && applied.claims.is_empty() {
            return ResponseFuture::inner(inner.call(request), None, None, None);
        }

        // 3. decide: the request's in-flight slots first (a request that
        // waits for one is counted only once it has it; slots a store
        // shares are always asked for later), then one atomic check of
        // every (key, window) pair.
        let mut held = Held::new();
        let mut shadow_busy = 0;
        let taken = if applied.claims.is_empty() {
            Taken::All
        } else if shared.store.shared_slots().is_some() {
            Taken::Wait(0)
        } else {
            take_now(
                &shared.in_flight,
                &applied.claims,
                0,
                &mut held,
                &mut shadow_busy,
            )
        };
        match taken {
            Taken::All => {}
            Taken::Refused(i, why) => return busy(shared, &applied.claims[i], why, now, &request),
            Taken::Wait(i) => {
                let state = Waiting {
                    applied,
                    held,
                    shadow_busy,
                };
                return later(shared, inner, request, state, Resume::Claim(i));
            }
        }
        if applied.charges.is_empty() {
            return finish(shared, None, &applied, held, shadow_busy, request, inner);
        }
        let mut checks = Checks::new();
        applied.checks(policy, &mut checks);
        let decided = shared.store.check(now, &checks);
        drop(checks);
        match decided {
            Decided::Ready(Ok(outcome)) => finish(
                shared,
                Some(&outcome),
                &applied,
                held,
                shadow_busy,
                request,
                inner,
            ),
            Decided::Ready(Err(error)) => {
                tracing::warn!(%error, "rate-limit store failed; request let through unlimited");
                ResponseFuture::inner(inner.call(request), None, None, slots(held))
            }
            Decided::Pending(pending) => {
                let state = Waiting {
                    applied,
                    held,
                    shadow_busy,
                };
                later(shared, inner, request, state, Resume::Store(pending))
            }
        }
    }
}

/// A request whose decision waits: for an in-flight slot, or for the store.
struct Waiting {
    applied: Applied,
    held: Held,
    /// Bit `i`: shadow claim `i` had no free slot.
    shadow_busy: u64,
}

/// Where a waiting decision resumes.
enum Resume<P> {
    /// At claim `.0`, whose slot the request waits for.
    Claim(usize),
    /// At the store's answer.
    Store(P),
}

/// Decides in the response future: the ready inner service moves into it
/// (a clone takes its place) and is called once the decision is made.
fn later<S, St, ReqBody, ResBody>(
    shared: &Arc<Shared<St>>,
    inner: &mut S,
    request: Request<ReqBody>,
    state: Waiting,
    resume: Resume<St::Pending>,
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
        let Waiting {
            mut applied,
            mut held,
            mut shadow_busy,
        } = state;
        let decided = match resume {
            Resume::Store(pending) => pending.await,
            Resume::Claim(from) => {
                let taken =
                    take_waiting(&shared, &applied.claims, from, &mut held, &mut shadow_busy);
                if let Err((i, why)) = taken.await {
                    let claim = &applied.claims[i];
                    let now = shared.clock.now();
                    return busy::<S::Future, _, _, _, _>(&shared, claim, why, now, &request).await;
                }
                applied.now = shared.clock.now();
                if applied.charges.is_empty() {
                    return finish(
                        &shared,
                        None,
                        &applied,
                        held,
                        shadow_busy,
                        request,
                        &mut ready,
                    )
                    .await;
                }
                let mut checks = Checks::new();
                applied.checks(&shared.policy.inner, &mut checks);
                let decided = shared.store.check(applied.now, &checks);
                drop(checks);
                match decided {
                    Decided::Ready(result) => result,
                    Decided::Pending(pending) => pending.await,
                }
            }
        };
        match decided {
            Ok(outcome) => {
                finish(
                    &shared,
                    Some(&outcome),
                    &applied,
                    held,
                    shadow_busy,
                    request,
                    &mut ready,
                )
                .await
            }
            Err(error) => {
                tracing::warn!(%error, "rate-limit store failed; request let through unlimited");
                ResponseFuture::inner(ready.call(request), None, None, slots(held)).await
            }
        }
    }))
}

/// Step 4, respond: once the slots are held and the store has decided
/// (`None`: the request has no window to count). The common case (admitted, nothing
/// reads the decision, single-window headers) skips building the decision.
#[inline]
fn finish<S, St, ReqBody, ResBody>(
    shared: &Shared<St>,
    outcome: Option<&Outcome>,
    applied: &Applied,
    held: Held,
    shadow_busy: u64,
    request: Request<ReqBody>,
    inner: &mut S,
) -> ResponseFuture<S::Future, ResBody, S::Error>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
{
    let policy = &*shared.policy.inner;
    let now = applied.now;
    let caps = || {
        applied
            .claims
            .iter()
            .map(|c| cap_report(c, in_flight_of(c, &held), now.div_ceil(NANOS)))
    };
    let quiet = outcome.is_none_or(|o| o.admitted() && !o.shadow_refused()) && shadow_busy == 0;
    if quiet && !shared.decision_extensions && !policy.headers.has_ietf() {
        let reported = match outcome {
            Some(outcome) => {
                Decision::reported_values(outcome, now, policy.report, applied.period_of(policy))
            }
            None => caps()
                .min_by_key(|w| w.remaining)
                .map(|w| Reported::from(&w)),
        };
        let headers = reported.map(|r| PendingHeaders::x_only(policy.headers, r));
        return ResponseFuture::inner(inner.call(request), headers, None, slots(held));
    }
    let decision = match outcome {
        Some(outcome) => decide_counted(shared, outcome, applied),
        None => Decision::admitted(),
    }
    .with_shadow_refusal(shadow_busy != 0);
    let counted = outcome.map(|outcome| Counted { outcome, applied });
    if !decision.is_admitted() {
        return refuse(shared, decision, counted, &request);
    }
    for (i, claim) in applied.claims.iter().enumerate() {
        if shadow_busy & (1 << i) != 0 {
            let limit = usize::from(claim.origin.0);
            emit(
                shared,
                EventKind::ShadowRefused,
                limit,
                claim.bucket,
                &decision,
            );
        }
    }
    let decision = decision.with_caps(caps());
    respond(shared, decision, counted, request, inner, held)
}

/// The request's key for `limit`, checked against the length cap.
fn extract_key<'a>(
    limit: &CompiledLimit,
    view: &RequestView<'a>,
    max_len: usize,
) -> Result<Key<'a>, KeyError> {
    let key = limit.key.extract(view)?;
    let kind = match key.len() {
        0 => KeyErrorKind::Empty,
        len if len > max_len => KeyErrorKind::TooLong,
        _ => return Ok(key),
    };
    let error = KeyError::new(kind, limit.key.describe().into_owned());
    Err(match kind {
        KeyErrorKind::TooLong => error.with_detail(format!("The limit is {max_len} bytes.")),
        _ => error,
    })
}
