//! Answers: the inner service's response with headers, or one the layer
//! produces itself (a refusal, a busy answer).

use http::{Request, Response};
use tower_service::Service;

use super::applied::{Applied, Claim};
use super::decide::emit;
use super::in_flight::{cap_report, Held};
use crate::body::{ResponseBody, Slots};
use crate::concurrency::Busy;
use crate::decision::{Decision, RefusalReason, ReportedWindow, WindowReport, NANOS};
use crate::event::EventKind;
use crate::future::ResponseFuture;
use crate::headers::{PendingHeaders, Standing};
use crate::layer::Shared;
use crate::policy::{PolicyInner, Quota};
use crate::response::{self, Produced};
use crate::store::Outcome;

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
        let status = self.outcome.windows().get(i)?;
        let quota = self.applied.quota(policy, usize::from(status.check));
        let window = quota.windows().get(usize::from(status.window))?;
        Some(Standing::of_status(
            status,
            quota.algorithm_kind(),
            window.period_ns(),
        ))
    }
}

/// The headers for `decision`, whose windows are those of `counted` (if
/// the store decided it) followed by in-flight caps.
fn headers_for<St>(
    shared: &Shared<St>,
    decision: &Decision,
    counted: Option<Counted<'_>>,
) -> PendingHeaders {
    let policy = &shared.policy;
    // A ban's decision reports the banning window alone, not the store's.
    let counted = counted.filter(|_| decision.refusal() != Some(RefusalReason::Banned));
    PendingHeaders::for_decision(
        policy.inner.headers,
        decision,
        |w| policy.window_name(w),
        |i, w| {
            counted
                .and_then(|c| c.standing(&policy.inner, i))
                .unwrap_or_else(|| Standing::of_report(w))
        },
    )
}

/// Admitted: call the inner service and decorate its response (whose body
/// holds the request's slots). Refused: answer without calling it.
/// `counted`: what the store said, if it decided.
pub(super) fn respond<S, St, ReqBody, ResBody>(
    shared: &Shared<St>,
    decision: Decision,
    counted: Option<Counted<'_>>,
    mut request: Request<ReqBody>,
    inner: &mut S,
    held: Held,
) -> ResponseFuture<S::Future, ResBody, S::Error>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
{
    if !decision.is_admitted() {
        return refuse(shared, decision, counted, &request);
    }
    let headers = headers_for(shared, &decision, counted);
    let decision = shared.decision_extensions.then(|| {
        request.extensions_mut().insert(decision.clone());
        Box::new(decision)
    });
    ResponseFuture::inner(inner.call(request), Some(headers), decision, slots(held))
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
    let status = if decision.refusal() == Some(RefusalReason::Busy) {
        policy.inner.busy_status
    } else {
        policy.inner.refusal_status
    };
    let produced = response::refusal(&policy.inner.refusal, status, &decision, request.headers());
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
    let in_flight = match why {
        Busy::Full { in_flight } => in_flight,
        _ => claim.cap,
    };
    let report = cap_report(claim, in_flight, 0);
    let decision = Decision::busy(shared.policy.inner.busy_retry_after, now, report);
    emit(
        shared,
        EventKind::Refused,
        usize::from(claim.origin.0),
        claim.bucket,
        &decision,
    );
    refuse(shared, decision, None, request)
}

/// The slots a response body holds.
pub(super) fn slots(held: Held) -> Slots {
    (!held.is_empty()).then(|| held.into_vec().into_boxed_slice())
}

/// Which window of `quota` the headers report when nothing was counted.
fn quota_window(quota: &Quota, report: ReportedWindow) -> usize {
    let windows = quota.windows();
    match report {
        ReportedWindow::Period(p) => windows.iter().position(|w| w.period() == p),
        ReportedWindow::MostRestrictive => None,
    }
    .unwrap_or(0)
}

/// The reported window of `quota` (route `ri` of limit `li`), before any
/// adjustment; an in-flight cap's if the quota has no window.
pub(super) fn window_report(
    quota: &Quota,
    li: usize,
    ri: usize,
    report: ReportedWindow,
) -> WindowReport {
    let index = quota_window(quota, report);
    let (limit, period) = quota
        .windows()
        .get(index)
        .map_or((quota.in_flight_cap().unwrap_or(0), 0), |w| {
            (w.limit(), w.period_ns().div_ceil(NANOS))
        });
    WindowReport {
        limit_index: li as u16,
        route_index: ri as u16,
        window_index: index as u8,
        limit,
        remaining: 0,
        reset: 0,
        reset_after: 0,
        period,
        concurrent: quota.windows().is_empty(),
    }
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
    let mut response = Response::new(ResponseBody::full(body));
    *response.status_mut() = status;
    *response.headers_mut() = map;
    if let Some(decision) = decision {
        response.extensions_mut().insert(decision);
    }
    response
}
