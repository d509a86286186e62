//! The service: `call` reads top to bottom as a request's path through the
//! layer (match, key, decide, respond).

use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Request, Response};
use smallvec::SmallVec;
use tower_service::Service;

use crate::body::ResponseBody;
use crate::decision::{Decision, ReportedWindow, WindowOrigin};
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
        let mut origin: SmallVec<[WindowOrigin; 4]> = SmallVec::new();
        let mut buckets: SmallVec<[u64; 4]> = SmallVec::new();
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
                    checks.push(if limit.shadow {
                        Check::shadow(bucket, &route.quota)
                    } else {
                        Check::new(bucket, &route.quota)
                    });
                    origin.push((li as u16, ri as u16));
                    buckets.push(bucket);
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
                        &origin,
                        now,
                        policy.report,
                        period_of(policy, &origin),
                    )
                    .map(|w| PendingHeaders::x_only(policy.headers, Reported::from(&w)));
                    return ResponseFuture::inner(inner.call(request), headers, None);
                }
                let decision = decide(policy, &outcome, &origin, now);
                if !quiet {
                    report(shared, &outcome, &origin, &buckets, &decision);
                }
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
                            let decision = decide(&shared.policy.inner, &outcome, &origin, now);
                            if !outcome.admitted() || outcome.shadow_refused() {
                                report(&shared, &outcome, &origin, &buckets, &decision);
                            }
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

/// Tells the logs and the event hook about a refusal or a shadow refusal:
/// the limit whose window makes the client wait longest (for a shadow
/// refusal, each shadow limit that would have refused).
fn report<St>(
    shared: &Shared<St>,
    outcome: &Outcome,
    origin: &[WindowOrigin],
    buckets: &[u64],
    decision: &Decision,
) {
    let policy = &shared.policy.inner;
    let statuses = outcome.windows();
    let emit = |kind: EventKind, check: usize| {
        let limit = &policy.limits[usize::from(origin[check].0)].name;
        match kind {
            EventKind::ShadowRefused => {
                tracing::info!(limit = %limit, bucket = buckets[check], "shadow limit would have refused")
            }
            _ => tracing::debug!(
                limit = %limit,
                bucket = buckets[check],
                retry_after = decision.retry_after().unwrap_or(0),
                reason = ?decision.refusal(),
                "request refused by rate limit"
            ),
        }
        if let Some(hook) = &shared.on_event {
            (hook.0)(&Event {
                kind,
                limit,
                bucket: Some(buckets[check]),
                decision: Some(decision),
                key_error: None,
            });
        }
    };
    if !outcome.admitted() {
        let binding = statuses
            .iter()
            .max_by_key(|w| w.retry_after)
            .map_or(0, |w| usize::from(w.check));
        emit(EventKind::Refused, binding);
        return;
    }
    let mut last = None;
    for status in statuses.iter().filter(|w| w.retry_after > 0) {
        let check = usize::from(status.check);
        let shadow = policy.limits[usize::from(origin[check].0)].shadow;
        if shadow && last != Some(check) {
            emit(EventKind::ShadowRefused, check);
            last = Some(check);
        }
    }
}

/// The request's key for `limit`, checked against the length cap.
fn extract_key<'a>(
    limit: &CompiledLimit,
    view: &RequestView<'a>,
    max_len: usize,
) -> Result<Key<'a>, KeyError> {
    let key = limit.key.extract(view)?;
    if key.len() > max_len {
        return Err(
            KeyError::new(KeyErrorKind::TooLong, limit.key.describe().into_owned())
                .with_detail(format!("The limit is {max_len} bytes.")),
        );
    }
    if key.is_empty() {
        return Err(KeyError::new(
            KeyErrorKind::Empty,
            limit.key.describe().into_owned(),
        ));
    }
    Ok(key)
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

/// What the headers report for a request that was not counted: the limit
/// that would have applied, untouched.
fn uncounted(route: &Route, report: ReportedWindow, now: u64) -> Reported {
    let windows = route.quota.windows();
    let window = match report {
        ReportedWindow::Period(p) => windows.iter().find(|w| w.period() == p),
        ReportedWindow::MostRestrictive => None,
    }
    .unwrap_or(&windows[0]);
    Reported {
        limit: window.limit(),
        remaining: window.limit(),
        reset: now.div_ceil(1_000_000_000),
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
