//! Step 4 of a request's path, the answer: the inner service's response
//! with headers, or one the layer produces itself (a refusal, a busy answer,
//! a key error).

use http::header::CACHE_CONTROL;
use http::{HeaderValue, Request, Response};
use smallvec::SmallVec;
use tower_service::Service;

use super::applied::{Applied, Claim};
use super::in_flight::{in_flight_of, slots_basis};
use super::metrics::{self, Verdict};
use super::plan::Ban;
use super::verdict::{decide_counted, emit};
use super::Shared;
use crate::body::{held, ResponseBody, Slots};
use crate::clock::NANOS;
use crate::decision::{Admission, Basis, Decision, Kept, RefusalReason};
use crate::event::EventKind;
use crate::future::ResponseFuture;
use crate::headers::{PendingHeaders, Reported, Standing};
use crate::inflight::Busy;
use crate::key::KeyError;
use crate::policy::{Algorithm, PolicyInner, Window};
use crate::report::{admission, cap_report, standing};
use crate::response::{self, Produced};
use crate::store::protocol::{Outcome, WindowStatus};
use crate::store::StoreError;

/// What the store said of a request's windows, beside the decision built
/// from it: the IETF fields report each window's own state from it.
#[derive(Clone, Copy)]
pub(super) struct Counted<'a> {
    pub(super) outcome: &'a Outcome,
    pub(super) applied: &'a Applied,
}

impl Counted<'_> {
    /// What window `i` of the outcome has (`None` past its windows: the
    /// in-flight caps that follow them in the decision).
    fn standing(&self, policy: &PolicyInner, i: usize) -> Option<Standing> {
        let (status, algorithm, window) = self.window(policy, i)?;
        Some(standing(status, algorithm, window.period_ns()))
    }

    /// The exact period (ns) of window `i` of the outcome (`None` past its
    /// windows).
    fn period_ns(&self, policy: &PolicyInner, i: usize) -> Option<u64> {
        Some(self.window(policy, i)?.2.period_ns())
    }

    /// Window `i` of the outcome: the store's status of it, and its
    /// quota's algorithm and window.
    fn window<'p>(
        &'p self,
        policy: &'p PolicyInner,
        i: usize,
    ) -> Option<(&'p WindowStatus, Algorithm, &'p Window)> {
        let status = self.outcome.windows().get(i)?;
        let quota = self.applied.quota(policy, usize::from(status.check));
        let window = quota.windows().get(usize::from(status.window))?;
        Some((status, quota.algorithm_kind(), window))
    }
}

/// The headers for `decision`, whose windows are those of `counted` (if
/// the store decided it) followed by in-flight caps.
#[inline]
fn headers_for<St>(
    shared: &Shared<St>,
    decision: &Decision,
    counted: Option<Counted<'_>>,
) -> PendingHeaders {
    let policy = &shared.policy;
    if !policy.inner.headers.has_ietf() {
        // Nothing reads the windows' own standing.
        return PendingHeaders::without_ietf(policy.inner.headers, decision);
    }
    // A ban's decision reports the banning window alone, not the store's.
    let counted = counted.filter(|_| decision.refusal() != Some(RefusalReason::Banned));
    PendingHeaders::for_decision(
        policy.inner.headers,
        decision,
        |i, w| {
            let exact = counted.and_then(|c| c.period_ns(&policy.inner, i));
            policy.window_name(w, exact)
        },
        |i, w| {
            counted
                .and_then(|c| c.standing(&policy.inner, i))
                .unwrap_or_else(|| Standing::of_report(w))
        },
    )
}

/// Answers a decided request: `decided` is the store's answer (`None`: the
/// request has no window to count), and every slot is held. A store that
/// failed lets the request through unlimited. The common case (admitted,
/// nothing reads the decision, single-window headers) skips building the
/// decision.
#[inline(always)]
pub(super) fn finish<S, St, ReqBody, ResBody>(
    shared: &Shared<St>,
    decided: Option<&Result<Outcome, StoreError>>,
    applied: &mut Applied,
    request: Request<ReqBody>,
    inner: &mut S,
) -> ResponseFuture<S::Future, ResBody, S::Error>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
{
    let outcome = match decided {
        None => None,
        Some(Ok(outcome)) => Some(outcome),
        Some(Err(error)) => {
            tracing::warn!(%error, "rate-limit store failed; request let through unlimited");
            metrics::admitted(shared, applied, None);
            let slots = applied.held.take();
            return uncounted(shared, Basis::FailedOpen, request, inner, slots);
        }
    };
    let policy = &*shared.policy.inner;
    let now = applied.now;
    // The caps in the policy's order (their slots were taken in another).
    let caps = || {
        let mut claims: SmallVec<[&Claim; 4]> = applied.claims.iter().collect();
        claims.sort_unstable_by_key(|c| c.origin);
        claims.into_iter().filter_map(|c| {
            let in_flight = in_flight_of(c, held(&applied.held))?;
            Some(cap_report(c.origin, c.cap, in_flight, now.div_ceil(NANOS)))
        })
    };
    let quiet =
        outcome.is_none_or(|o| o.admitted() && !o.shadow_refused()) && applied.shadow_busy == 0;
    if quiet && !shared.keeps_decision() && !policy.headers.has_ietf() {
        let headers = match outcome {
            Some(outcome) => reported_headers(shared, outcome, applied).map(|(_, h)| h),
            None => caps()
                .min_by_key(|w| w.remaining)
                .map(|w| PendingHeaders::x_only(policy.headers, Reported::from(&w))),
        };
        metrics::admitted(shared, applied, outcome);
        let slots = applied.held.take();
        return ResponseFuture::inner(inner.call(request), headers, None, false, slots);
    }
    if let (true, Some(outcome)) = (quiet, outcome) {
        if outcome.windows().len() <= Admission::WINDOWS
            && applied.claims.is_empty()
            && !shared.decision_extensions
            && !policy.headers.has_ietf()
        {
            return admit_plainly(shared, outcome, applied, request, inner);
        }
    }
    let mut decision = match outcome {
        Some(outcome) => decide_counted(shared, outcome, applied),
        None => Decision::admitted(),
    };
    decision.add_shadow_refusal(applied.shadow_busy != 0);
    let counted = outcome.map(|outcome| Counted {
        outcome,
        applied: &*applied,
    });
    if !decision.is_admitted() {
        return refuse(shared, decision, counted, &request);
    }
    // Admitted by the windows the store counted, and by slots a failure
    // policy may have stood in for: the decision says so.
    if decision.basis == Basis::Counted {
        if let Some(basis) = slots_basis(held(&applied.held)) {
            decision.basis = basis;
        }
    }
    for (i, claim) in applied.claims.iter().enumerate() {
        if applied.shadow_busy & (1 << i) != 0 {
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
    if !applied.claims.is_empty() {
        decision.add_caps(caps());
    }
    metrics::admitted(shared, applied, outcome);
    metrics::near_limit_decided(shared, &decision);
    let headers = headers_for(shared, &decision, counted);
    let slots = applied.held.take();
    respond(shared, decision, headers, request, inner, slots)
}

/// The `X-RateLimit-*` headers of an admitted `outcome`, with the index of
/// their window in it (`None` if it has no window); that window is counted
/// near its limit in the metrics if it is.
#[inline(always)]
fn reported_headers<St>(
    shared: &Shared<St>,
    outcome: &Outcome,
    applied: &Applied,
) -> Option<(usize, PendingHeaders)> {
    let policy = &*shared.policy.inner;
    let period = applied.period_of(policy);
    let (i, check, values) =
        Decision::reported_values(outcome, applied.now, policy.report, period)?;
    metrics::near_limit(shared, applied.origin(check).0, &values);
    Some((i, PendingHeaders::x_only(policy.headers, values)))
}

/// Admits a request of a plain admission (see [`Admission`]) whose decision
/// only handlers read: it is built if one asks.
#[inline(never)]
fn admit_plainly<S, St, ReqBody, ResBody>(
    shared: &Shared<St>,
    outcome: &Outcome,
    applied: &mut Applied,
    request: Request<ReqBody>,
    inner: &mut S,
) -> ResponseFuture<S::Future, ResBody, S::Error>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
{
    let policy = &*shared.policy.inner;
    let reported = reported_headers(shared, outcome, applied);
    let check_of = |check| {
        let quota = applied.quota(policy, check);
        (applied.origin(check), quota.windows())
    };
    let at = reported.as_ref().map_or(0, |(i, _)| *i);
    let kept = Kept::Admission(admission(outcome, check_of, applied.now, at));
    let headers = reported.map(|(_, headers)| headers);
    metrics::admitted(shared, applied, Some(outcome));
    let future = Decision::in_scope(Some(&kept), || inner.call(request));
    ResponseFuture::inner(future, headers, Some(kept), false, None)
}

/// A request no limit applies to: it goes through uncounted, and handlers
/// that read the decision find one saying so ([`Basis::Uncounted`]).
#[inline]
pub(super) fn pass<S, St, ReqBody, ResBody>(
    shared: &Shared<St>,
    request: Request<ReqBody>,
    inner: &mut S,
) -> ResponseFuture<S::Future, ResBody, S::Error>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
{
    uncounted(shared, Basis::Uncounted, request, inner, None)
}

/// Calls the inner service with no rate-limit headers, for a request let
/// through uncounted on `basis` (with the slots it holds); the decision
/// says so, if it is kept.
fn uncounted<S, St, ReqBody, ResBody>(
    shared: &Shared<St>,
    basis: Basis,
    request: Request<ReqBody>,
    inner: &mut S,
    slots: Slots,
) -> ResponseFuture<S::Future, ResBody, S::Error>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
{
    if !shared.keeps_decision() {
        return ResponseFuture::inner(inner.call(request), None, None, false, slots);
    }
    let decision = Decision::admitted_on(basis);
    respond(
        shared,
        decision,
        PendingHeaders::default(),
        request,
        inner,
        slots,
    )
}

/// The 401 for a key a limit rejected: nothing was counted, so no
/// rate-limit headers.
pub(super) fn reject<F, B, E, ReqBody>(
    error: &KeyError,
    request: &Request<ReqBody>,
) -> ResponseFuture<F, B, E> {
    let produced = response::key_error(error, request.method(), request.headers());
    ResponseFuture::produced(build(produced, PendingHeaders::default(), None))
}

/// The refusal of a key found banned before anything was counted.
pub(super) fn banned<F, B, E, St, ReqBody>(
    shared: &Shared<St>,
    ban: Ban,
    now: u64,
    request: &Request<ReqBody>,
) -> ResponseFuture<F, B, E> {
    let decision = Decision::banned(ban.left, now, ban.report);
    shared.metrics.count(ban.limit, Verdict::Banned);
    emit(shared, EventKind::Refused, ban.limit, ban.bucket, &decision);
    refuse(shared, decision, None, request)
}

/// Admitted: calls the inner service, whose response gets `headers` (and
/// whose body holds the request's slots).
#[inline(always)]
fn respond<S, St, ReqBody, ResBody>(
    shared: &Shared<St>,
    decision: Decision,
    headers: PendingHeaders,
    mut request: Request<ReqBody>,
    inner: &mut S,
    slots: Slots,
) -> ResponseFuture<S::Future, ResBody, S::Error>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
{
    let extend = shared.decision_extensions;
    if extend {
        request.extensions_mut().insert(decision.clone());
    }
    if shared.keeps_decision() {
        let kept = Kept::Built(decision);
        let future = Decision::in_scope(Some(&kept), || inner.call(request));
        ResponseFuture::inner(future, Some(headers), Some(kept), extend, slots)
    } else {
        ResponseFuture::inner(inner.call(request), Some(headers), None, false, slots)
    }
}

/// The layer's own answer to a refused request; `counted`: what the store
/// said, if it decided.
pub(super) fn refuse<F, B, E, St, ReqBody>(
    shared: &Shared<St>,
    decision: Decision,
    counted: Option<Counted<'_>>,
    request: &Request<ReqBody>,
) -> ResponseFuture<F, B, E> {
    let policy = &shared.policy;
    let headers = headers_for(shared, &decision, counted);
    let status = if decision.refused_by_cap() {
        policy.inner.busy_status
    } else {
        policy.inner.refusal_status
    };
    let (method, asked) = (request.method(), request.headers());
    let produced = response::refusal(&policy.inner.refusal, status, &decision, method, asked);
    let decision = shared.decision_extensions.then_some(decision);
    ResponseFuture::produced(build(produced, headers, decision))
}

/// The "busy" answer: claim `claim` got no slot, for the reason `why`.
pub(super) fn busy<F, B, E, St, ReqBody>(
    shared: &Shared<St>,
    claim: &Claim,
    why: Busy,
    now: u64,
    request: &Request<ReqBody>,
) -> ResponseFuture<F, B, E> {
    // What is known of the cap: the store's count, or this process's
    // share when the store could not be asked.
    let (cap, in_flight) = match why {
        Busy::Full { in_flight } => (claim.cap, in_flight),
        Busy::LocalShareFull { in_flight, share } => (share, in_flight),
        _ => (claim.cap, claim.cap),
    };
    let report = cap_report(claim.origin, cap, in_flight, 0);
    let retry_after = shared.policy.inner.busy_retry_after;
    // A store that could not be asked, and a limit that fails closed: the
    // refusal says so, as one of the windows' would.
    let (decision, verdict) = match why {
        Busy::Unavailable => (
            Decision::unavailable(retry_after, now, report),
            Verdict::Unavailable,
        ),
        Busy::LocalShareFull { .. } => {
            let mut decision = Decision::busy(retry_after, now, report);
            decision.basis = Basis::LocalFallback;
            (decision, Verdict::Busy)
        }
        _ => (Decision::busy(retry_after, now, report), Verdict::Busy),
    };
    shared.metrics.count(usize::from(claim.origin.0), verdict);
    emit(
        shared,
        EventKind::Refused,
        usize::from(claim.origin.0),
        claim.bucket,
        &decision,
    );
    refuse(shared, decision, None, request)
}

pub(super) fn build<B>(
    produced: Produced,
    headers: PendingHeaders,
    decision: Option<Decision>,
) -> Response<ResponseBody<B>> {
    let Produced {
        status,
        headers: mut map,
        body,
    } = produced;
    headers.write(&mut map);
    // An answer about this client at this moment: no cache may keep it
    // (a gRPC refusal is a `200`).
    map.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    let mut response = Response::new(ResponseBody::full(body));
    *response.status_mut() = status;
    *response.headers_mut() = map;
    if let Some(decision) = decision {
        response.extensions_mut().insert(decision);
    }
    response
}
