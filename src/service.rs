//! The service: `call` reads top to bottom as a request's path through the
//! layer (match, key, decide, respond).

use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Request, Response};
use smallvec::SmallVec;
use tower_service::Service;

use crate::body::ResponseBody;
use crate::decision::{Decision, ReportedWindow, WindowOrigin, WindowReport, NANOS};
use crate::event::{Event, EventKind};
use crate::future::ResponseFuture;
use crate::headers::{PendingHeaders, Reported};
use crate::key::{Key, KeyError, KeyErrorKind, RequestView};
use crate::layer::Shared;
use crate::policy::{CompiledLimit, MissingKey, PathSegments, PolicyInner, Route};
use crate::response::{self, Produced};
use crate::store::{Check, Decided, MemoryStore, Outcome, Store};

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

        // 1. match and 2. key: every limit with a matching route adds a check.
        let mut checks: SmallVec<[Check<'_>; 4]> = SmallVec::new();
        let mut applied = Applied {
            origin: SmallVec::new(),
            buckets: SmallVec::new(),
            penalty_keys: SmallVec::new(),
            now,
        };
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
                    let bucket = policy.secret.bucket(route.id, &key);
                    let penalty_key = limit
                        .penalty
                        .map(|_| policy.secret.bucket(limit.penalty_domain, &key));
                    if let (Some(key), false) = (penalty_key, limit.shadow) {
                        if let Some(left) = shared.penalties.banned_for(key, now) {
                            banned = Some((li, ri, left, bucket));
                            break;
                        }
                    }
                    applied.penalty_keys.push(penalty_key);
                    checks.push(
                        if limit.shadow {
                            Check::shadow(bucket, &route.quota)
                        } else {
                            Check::new(bucket, &route.quota)
                        }
                        .in_limit(&limit.name),
                    );
                    applied.origin.push((li as u16, ri as u16));
                    applied.buckets.push(bucket);
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
                    let produced = response::key_error(&error, request.headers());
                    let headers = PendingHeaders::x_only(
                        policy.headers,
                        uncounted(route, policy.report, now),
                    );
                    return ResponseFuture::produced(build(produced, headers, None));
                }
            }
        }
        drop(path);
        if let Some((li, ri, left, bucket)) = banned {
            let route = &policy.limits[li].routes[ri];
            let decision = Decision::banned(left, now, window_report(route, li, ri, policy.report));
            emit(shared, EventKind::Refused, li, bucket, &decision);
            return respond(shared, decision, request, inner);
        }
        if checks.is_empty() {
            return ResponseFuture::inner(inner.call(request), None, None);
        }

        // 3. decide: one atomic check of every (key, window) pair.
        match shared.store.check(now, &checks) {
            Decided::Ready(Ok(outcome)) => {
                // 4. respond. The common case (admitted, nothing reads the
                // decision, single-window headers) skips building it.
                let quiet = outcome.admitted() && !outcome.shadow_refused();
                if quiet && !shared.decision_extensions && !policy.headers.has_ietf() {
                    let headers = Decision::reported_window(
                        &outcome,
                        &applied.origin,
                        now,
                        policy.report,
                        period_of(policy, &applied.origin),
                    )
                    .map(|w| PendingHeaders::x_only(policy.headers, Reported::from(&w)));
                    return ResponseFuture::inner(inner.call(request), headers, None);
                }
                let decision = decide_counted(shared, &outcome, &applied);
                respond(shared, decision, request, inner)
            }
            Decided::Ready(Err(error)) => {
                tracing::warn!(%error, "rate-limit store failed; request let through unlimited");
                ResponseFuture::inner(inner.call(request), None, None)
            }
            Decided::Pending(pending) => {
                let clone = inner.clone();
                let mut ready = std::mem::replace(inner, clone);
                let shared = Arc::clone(shared);
                ResponseFuture::deciding(Box::pin(async move {
                    match pending.await {
                        Ok(outcome) => {
                            let decision = decide_counted(&shared, &outcome, &applied);
                            respond(&shared, decision, request, &mut ready).await
                        }
                        Err(error) => {
                            tracing::warn!(%error, "rate-limit store failed; request let through unlimited");
                            ready.call(request).await.map(|r| r.map(ResponseBody::new))
                        }
                    }
                }))
            }
        }
    }
}

/// What the layer knows of each check it asked the store about.
struct Applied {
    /// The (limit, route) of each check.
    origin: SmallVec<[WindowOrigin; 4]>,
    /// Each check's bucket.
    buckets: SmallVec<[u64; 4]>,
    /// Each check's key in its limit's penalty box, if the limit has a penalty.
    penalty_keys: SmallVec<[Option<u64>; 4]>,
    now: u64,
}

/// A decision the store made, with what the layer knows of each check.
struct Counted<'a> {
    outcome: &'a Outcome,
    applied: &'a Applied,
}

impl Counted<'_> {
    /// Reports the outcome (see [`emit`]) and counts refusals towards
    /// penalties. A refusal names the limit whose window makes the client
    /// wait longest and counts towards the penalty of every limit that
    /// refused; a shadow refusal names each shadow limit that would have
    /// refused. Returns the check whose refusal started a ban, with the ban's
    /// length.
    fn report<St>(&self, shared: &Shared<St>, decision: &Decision) -> Option<(usize, u64)> {
        let policy = &*shared.policy.inner;
        let statuses = self.outcome.windows();
        let limit_of = |check: usize| usize::from(self.applied.origin[check].0);
        let bucket_of = |check: usize| self.applied.buckets[check];
        let refusing = (0..self.applied.origin.len()).filter(|&c| {
            statuses
                .iter()
                .any(|w| usize::from(w.check) == c && w.retry_after > 0)
        });
        if self.outcome.admitted() {
            for check in refusing {
                if policy.limits[limit_of(check)].shadow {
                    emit(
                        shared,
                        EventKind::ShadowRefused,
                        limit_of(check),
                        bucket_of(check),
                        decision,
                    );
                }
            }
            return None;
        }
        let binding = statuses
            .iter()
            .max_by_key(|w| w.retry_after)
            .map_or(0, |w| usize::from(w.check));
        emit(
            shared,
            EventKind::Refused,
            limit_of(binding),
            bucket_of(binding),
            decision,
        );
        if self.outcome.is_capacity_refusal() {
            return None;
        }
        let mut started = None;
        for check in refusing {
            let limit = &policy.limits[limit_of(check)];
            if let (Some(penalty), Some(key)) = (&limit.penalty, self.applied.penalty_keys[check]) {
                if let Some(ban) = shared
                    .penalties
                    .record_refusal(key, self.applied.now, penalty)
                {
                    emit(
                        shared,
                        EventKind::Banned,
                        limit_of(check),
                        bucket_of(check),
                        decision,
                    );
                    started = started.or(Some((check, ban)));
                }
            }
        }
        started
    }
}

/// Tells the logs and the event hook about one refusal, ban or shadow
/// refusal by limit `limit` of the request in `bucket`.
fn emit<St>(shared: &Shared<St>, kind: EventKind, limit: usize, bucket: u64, decision: &Decision) {
    let limit = &*shared.policy.inner.limits[limit].name;
    match kind {
        EventKind::ShadowRefused => {
            tracing::info!(limit, bucket, "shadow limit would have refused")
        }
        EventKind::Banned => {
            tracing::info!(limit, bucket, "key banned after repeated refusals")
        }
        _ => tracing::debug!(
            limit,
            bucket,
            retry_after = decision.retry_after().unwrap_or(0),
            reason = ?decision.refusal(),
            "request refused by rate limit"
        ),
    }
    if let Some(hook) = &shared.on_event {
        (hook.0)(&Event {
            kind,
            limit,
            bucket: Some(bucket),
            decision: Some(decision),
            key_error: None,
        });
    }
}

/// The decision for a store outcome; a refusal that started a ban answers
/// as the ban (its `Retry-After` is the ban's, so it stays honest).
fn decide_counted<St>(shared: &Shared<St>, outcome: &Outcome, applied: &Applied) -> Decision {
    let policy = &*shared.policy.inner;
    let decision = decide(policy, outcome, &applied.origin, applied.now);
    if outcome.admitted() && !outcome.shadow_refused() {
        return decision;
    }
    match (Counted { outcome, applied }).report(shared, &decision) {
        Some((check, ban)) => {
            let (li, ri) = applied.origin[check];
            let (li, ri) = (usize::from(li), usize::from(ri));
            let route = &policy.limits[li].routes[ri];
            Decision::banned(
                ban,
                applied.now,
                window_report(route, li, ri, policy.report),
            )
        }
        None => decision,
    }
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

fn decide(policy: &PolicyInner, outcome: &Outcome, origin: &[WindowOrigin], now: u64) -> Decision {
    Decision::from_outcome(
        outcome,
        origin,
        now,
        policy.report,
        period_of(policy, origin),
    )
}

/// The period (ns) of window `window` of check `check`.
fn period_of<'a>(
    policy: &'a PolicyInner,
    origin: &'a [WindowOrigin],
) -> impl Fn(usize, usize) -> u64 + 'a {
    move |check, window| {
        let (li, ri) = origin[check];
        policy.limits[usize::from(li)].routes[usize::from(ri)]
            .quota
            .windows()[window]
            .period_ns()
    }
}

/// Admitted: call the inner service and decorate its response. Refused:
/// answer without calling it.
fn respond<S, St, ReqBody, ResBody>(
    shared: &Shared<St>,
    decision: Decision,
    mut request: Request<ReqBody>,
    inner: &mut S,
) -> ResponseFuture<S::Future, ResBody, S::Error>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
{
    let policy = &shared.policy;
    let headers =
        PendingHeaders::for_decision(policy.inner.headers, &decision, |w| policy.window_name(w));
    if decision.is_admitted() {
        let decision = shared.decision_extensions.then(|| {
            request.extensions_mut().insert(decision.clone());
            Box::new(decision)
        });
        return ResponseFuture::inner(inner.call(request), Some(headers), decision);
    }
    let produced = response::refusal(
        &policy.inner.refusal,
        policy.inner.refusal_status,
        &decision,
        request.headers(),
    );
    let decision = shared.decision_extensions.then_some(decision);
    ResponseFuture::produced(build(produced, headers, decision))
}

/// Which window of `route` the headers report when nothing was counted.
fn route_window(route: &Route, report: ReportedWindow) -> usize {
    let windows = route.quota.windows();
    match report {
        ReportedWindow::Period(p) => windows.iter().position(|w| w.period() == p),
        ReportedWindow::MostRestrictive => None,
    }
    .unwrap_or(0)
}

/// What the headers report for a request that was not counted: the limit
/// that would have applied, untouched.
fn uncounted(route: &Route, report: ReportedWindow, now: u64) -> Reported {
    let window = route.quota.windows()[route_window(route, report)];
    Reported {
        limit: window.limit(),
        remaining: window.limit(),
        reset: now.div_ceil(NANOS),
    }
}

/// The reported window of route `ri` of limit `li`, before any adjustment.
fn window_report(route: &Route, li: usize, ri: usize, report: ReportedWindow) -> WindowReport {
    let index = route_window(route, report);
    let window = route.quota.windows()[index];
    WindowReport {
        limit_index: li as u16,
        route_index: ri as u16,
        window_index: index as u8,
        limit: window.limit(),
        remaining: 0,
        reset: 0,
        reset_after: 0,
        period: window.period_ns().div_ceil(NANOS),
    }
}

fn build<B>(
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
