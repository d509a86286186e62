//! Helpers shared by the per-customer tests (plans, overrides, in-flight
//! caps): a rate-limited service type, header and body readers, and a
//! "gate" inner service that holds requests until the test lets them go
//! and records what it saw.

#![allow(dead_code)]

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::Poll;

use http::{Request, Response};
use http_body_util::BodyExt;
use serde_json::Value;
use tokio::sync::Semaphore;
use tower::util::BoxCloneService;
use tower::{service_fn, Layer, ServiceExt};
use tower_ratelimit::{Decision, RateLimitLayer, ResponseBody};

/// Nanoseconds in a second.
pub(crate) const NS: u64 = 1_000_000_000;
/// A minute boundary (1_700_000_040 is a multiple of 60).
pub(crate) const T0: u64 = 1_700_000_040;

pub(crate) type Res = Response<ResponseBody<String>>;
pub(crate) type Svc = BoxCloneService<Request<String>, Res, Infallible>;
/// A request under way, boxed so that it can be polled by hand, dropped
/// or spawned.
pub(crate) type Pending = Pin<Box<dyn Future<Output = Res> + Send>>;

/// The value of header `name`, which must be there.
pub(crate) fn header(response: &Res, name: &str) -> String {
    response
        .headers()
        .get(name)
        .unwrap_or_else(|| panic!("no `{name}` header"))
        .to_str()
        .unwrap()
        .to_owned()
}

/// The value of header `name` as a number.
pub(crate) fn num(response: &Res, name: &str) -> u64 {
    header(response, name).parse().unwrap()
}

/// `(X-RateLimit-Limit, X-RateLimit-Remaining)`.
pub(crate) fn limit_remaining(response: &Res) -> (u64, u64) {
    (
        num(response, "x-ratelimit-limit"),
        num(response, "x-ratelimit-remaining"),
    )
}

/// The decision the layer put in the response's extensions.
pub(crate) fn decision(response: &Res) -> &Decision {
    response
        .extensions()
        .get::<Decision>()
        .expect("a decision in the response's extensions")
}

/// The whole body, parsed as JSON.
pub(crate) async fn json(response: Res) -> Value {
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    serde_json::from_slice(&bytes).unwrap()
}

/// The whole body, as text (reading it to its end frees any slot it holds).
pub(crate) async fn text(response: Res) -> String {
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8(bytes.to_vec()).unwrap()
}

/// Lets other tasks run until `cond` holds (a bounded number of turns, so a
/// test fails instead of hanging). Yielding never lets paused time
/// auto-advance.
pub(crate) async fn until(what: &str, mut cond: impl FnMut() -> bool) {
    for _ in 0..10_000 {
        if cond() {
            return;
        }
        tokio::task::yield_now().await;
    }
    panic!("timed out waiting until {what}");
}

/// Sends `request` through `svc`, boxed; nothing happens until it is
/// polled (a queued request joins the line on its first poll).
pub(crate) fn start(svc: &Svc, request: Request<String>) -> Pending {
    let svc = svc.clone();
    Box::pin(async move { svc.oneshot(request).await.unwrap_or_else(|e| match e {}) })
}

/// Polls `pending` once, on the calling task.
pub(crate) async fn poll_now(pending: &mut Pending) -> Poll<Res> {
    futures::poll!(pending.as_mut())
}

/// Polls `pending` once: it must have been answered at once.
pub(crate) async fn answered_at_once(pending: &mut Pending) -> Res {
    match poll_now(pending).await {
        Poll::Ready(response) => response,
        Poll::Pending => panic!("the request was not answered at once"),
    }
}

/// Polls `pending` once: it must still be waiting (for a slot, or inside
/// the inner service).
pub(crate) async fn still_waiting(pending: &mut Pending) {
    if let Poll::Ready(response) = poll_now(pending).await {
        panic!("the request was answered: {}", response.status());
    }
}

/// An inner service that records every request it sees (the `x-seq`
/// header) and how many are inside it at once, and holds those with an
/// `x-hold` header until [`Gate::open`] lets them go.
pub(crate) struct Gate {
    inside: AtomicUsize,
    max_inside: AtomicUsize,
    entered: AtomicUsize,
    order: Mutex<Vec<String>>,
    release: Semaphore,
}

impl Gate {
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(Gate {
            inside: AtomicUsize::new(0),
            max_inside: AtomicUsize::new(0),
            entered: AtomicUsize::new(0),
            order: Mutex::new(Vec::new()),
            release: Semaphore::new(0),
        })
    }

    /// The rate-limited service: `layer` around this gate.
    pub(crate) fn behind(self: &Arc<Self>, layer: &RateLimitLayer) -> Svc {
        let gate = Arc::clone(self);
        let inner = service_fn(move |request: Request<String>| {
            let gate = Arc::clone(&gate);
            async move {
                let seq = request
                    .headers()
                    .get("x-seq")
                    .map(|v| v.to_str().unwrap().to_owned())
                    .unwrap_or_default();
                gate.order.lock().unwrap().push(seq);
                gate.entered.fetch_add(1, Ordering::SeqCst);
                let now = gate.inside.fetch_add(1, Ordering::SeqCst) + 1;
                gate.max_inside.fetch_max(now, Ordering::SeqCst);
                if request.headers().contains_key("x-hold") {
                    gate.release.acquire().await.unwrap().forget();
                }
                gate.inside.fetch_sub(1, Ordering::SeqCst);
                Ok::<_, Infallible>(Response::new(String::from("ok")))
            }
        });
        BoxCloneService::new(layer.layer(inner))
    }

    /// Lets `n` held requests go.
    pub(crate) fn open(&self, n: usize) {
        self.release.add_permits(n);
    }

    /// Requests inside the inner service now.
    pub(crate) fn inside(&self) -> usize {
        self.inside.load(Ordering::SeqCst)
    }

    /// The most requests ever inside the inner service at once.
    pub(crate) fn max_inside(&self) -> usize {
        self.max_inside.load(Ordering::SeqCst)
    }

    /// Requests that reached the inner service so far.
    pub(crate) fn entered(&self) -> usize {
        self.entered.load(Ordering::SeqCst)
    }

    /// The `x-seq` of every request the inner service saw, in order.
    pub(crate) fn order(&self) -> Vec<String> {
        self.order.lock().unwrap().clone()
    }
}
