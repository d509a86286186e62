//! Answers: the inner service's response with headers, or one the layer
//! produces itself (a refusal, a busy answer).

use http::{Request, Response};
use tower_service::Service;

use super::applied::Claim;
use super::decide::emit;
use super::in_flight::{cap_report, Held};
use crate::body::{ResponseBody, Slots};
use crate::concurrency::Busy;
use crate::decision::{Decision, RefusalReason, ReportedWindow, WindowReport, NANOS};
use crate::event::EventKind;
use crate::future::ResponseFuture;
use crate::headers::{PendingHeaders, Reported};
use crate::layer::Shared;
use crate::policy::Quota;
use crate::response::{self, Produced};

/// Admitted: call the inner service and decorate its response (whose body
/// holds the request's slots). Refused: answer without calling it.
pub(super) fn respond<S, St, ReqBody, ResBody>(
    shared: &Shared<St>,
    decision: Decision,
    mut request: Request<ReqBody>,
    inner: &mut S,
    held: Held,
) -> ResponseFuture<S::Future, ResBody, S::Error>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
{
    if !decision.is_admitted() {
        return refuse(shared, decision, &request);
    }
    let policy = &shared.policy;
    let headers =
        PendingHeaders::for_decision(policy.inner.headers, &decision, |w| policy.window_name(w));
    let decision = shared.decision_extensions.then(|| {
        request.extensions_mut().insert(decision.clone());
        Box::new(decision)
    });
    ResponseFuture::inner(inner.call(request), Some(headers), decision, slots(held))
}

/// The layer's own answer to a refused request.
pub(super) fn refuse<F, B, E, St, ReqBody>(
    shared: &Shared<St>,
    decision: Decision,
    request: &Request<ReqBody>,
) -> ResponseFuture<F, B, E> {
    let policy = &shared.policy;
    let headers =
        PendingHeaders::for_decision(policy.inner.headers, &decision, |w| policy.window_name(w));
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
    refuse(shared, decision, request)
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

/// What the headers report for a request that was not counted: the limit
/// that would have applied, untouched (`None` for an in-flight cap alone).
pub(super) fn uncounted(quota: &Quota, report: ReportedWindow, now: u64) -> Option<Reported> {
    let window = quota.windows().get(quota_window(quota, report))?;
    Some(Reported {
        limit: window.limit(),
        remaining: window.limit(),
        reset: now.div_ceil(NANOS),
    })
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
