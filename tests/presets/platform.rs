//! The harness of the platform suites: a policy file from
//! `demo/policies/`, enforced in front of a service that answers
//! `200 {}` (after `?hold_ms=N` ms, like the demo server), on a manual clock.

#![allow(dead_code)] // each suite uses what it needs

use std::convert::Infallible;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use http::{Request, Response};
use http_body_util::BodyExt;
use serde_json::Value;
use tower::util::BoxCloneService;
use tower::{service_fn, Layer, ServiceExt};
use tower_ratelimit::clock::ManualClock;
use tower_ratelimit::{Policy, RateLimitLayer, ResponseBody};

pub(crate) const NS: u64 = 1_000_000_000;

pub(crate) type Res = Response<ResponseBody<String>>;

pub(crate) struct Platform {
    pub(crate) clock: ManualClock,
    pub(crate) layer: RateLimitLayer,
    svc: BoxCloneService<Request<String>, Res, Infallible>,
    /// Requests that reached the inner service.
    pub(crate) calls: Arc<AtomicUsize>,
}

impl Platform {
    /// The preset `name`, with the clock at `unix_secs`.
    pub(crate) fn new(name: &str, unix_secs: u64) -> Self {
        let file = format!("{}/demo/policies/{name}.toml", env!("CARGO_MANIFEST_DIR"));
        let policy = Policy::from_toml_file(&file).expect("the policy file loads");
        let clock = ManualClock::at_unix_secs(unix_secs);
        let calls = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&calls);
        let inner = service_fn(move |req: Request<String>| {
            counter.fetch_add(1, Ordering::SeqCst);
            let hold = hold_ms(req.uri().query().unwrap_or(""));
            async move {
                if let Some(ms) = hold {
                    tokio::time::sleep(Duration::from_millis(ms)).await;
                }
                Ok::<_, Infallible>(Response::new(String::from("{}")))
            }
        });
        let layer = RateLimitLayer::new(policy)
            .decision_extensions(true)
            .clock(clock.clone());
        Platform {
            clock,
            svc: BoxCloneService::new(layer.layer(inner)),
            layer,
            calls,
        }
    }

    /// Sends a request; every response must carry the `X-RateLimit-*` trio.
    pub(crate) fn send(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
    ) -> impl Future<Output = Res> + Send + 'static {
        let response = self.send_any(method, path, headers);
        let what = format!("{method} {path}");
        async move {
            let response = response.await;
            for name in [
                "x-ratelimit-limit",
                "x-ratelimit-remaining",
                "x-ratelimit-reset",
            ] {
                assert!(
                    response.headers().contains_key(name),
                    "{what}: every response carries {name}: {:?}",
                    response.headers()
                );
            }
            response
        }
    }

    /// Sends a request the policy may not limit at all.
    pub(crate) fn send_any(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
    ) -> impl Future<Output = Res> + Send + 'static {
        let mut request = Request::builder().method(method).uri(path);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let request = request.body(String::new()).unwrap();
        self.svc.clone().oneshot(request).map(Result::unwrap)
    }

    /// Requests that reached the inner service so far.
    pub(crate) fn served(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

fn hold_ms(query: &str) -> Option<u64> {
    query
        .split('&')
        .find_map(|pair| pair.strip_prefix("hold_ms="))
        .and_then(|ms| ms.parse().ok())
}

pub(crate) fn header(response: &Res, name: &str) -> String {
    response
        .headers()
        .get(name)
        .unwrap_or_else(|| panic!("no {name} header"))
        .to_str()
        .unwrap()
        .to_owned()
}

pub(crate) async fn body(response: Res) -> Value {
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    serde_json::from_slice(&bytes).unwrap()
}
