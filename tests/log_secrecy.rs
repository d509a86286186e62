//! Logs never show a key. This test has a binary of its own: tracing caches
//! each call site's interest process-wide, so a test running beside it with
//! no subscriber could make the layer's events invisible to the recorder.

use std::convert::Infallible;
use std::sync::Arc;

use http::header::AUTHORIZATION;
use http::{Request, Response, StatusCode};
use tower::{service_fn, Layer, ServiceExt};
use tower_ratelimit::key::Header;
use tower_ratelimit::{Limit, Policy, Quota, RateLimitLayer, Window};

const SECRET: &str = "sk_live_7fQ2mZ9xW4";

fn get(path: &str) -> http::request::Builder {
    Request::get(path)
}

fn per_minute(n: u32) -> Quota {
    Quota::new(Window::per_minute(n))
}

fn api_key() -> Header {
    Header::parse("X-API-Key").unwrap()
}

/// Records every span and event (message and fields) as text.
#[derive(Clone, Default)]
struct Recorder {
    log: Arc<std::sync::Mutex<String>>,
}

struct Fields<'a>(&'a mut String);

impl tracing::field::Visit for Fields<'_> {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        self.0.push_str(&format!(" {}={:?}", field.name(), value));
    }
}

impl tracing::Subscriber for Recorder {
    fn register_callsite(
        &self,
        _: &'static tracing::Metadata<'static>,
    ) -> tracing::subscriber::Interest {
        tracing::subscriber::Interest::always()
    }

    fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
        true
    }

    fn max_level_hint(&self) -> Option<tracing::level_filters::LevelFilter> {
        Some(tracing::level_filters::LevelFilter::TRACE)
    }

    fn new_span(&self, span: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        let mut log = self.log.lock().unwrap();
        log.push_str(span.metadata().name());
        span.record(&mut Fields(&mut log));
        log.push('\n');
        tracing::span::Id::from_u64(1)
    }

    fn record(&self, _: &tracing::span::Id, values: &tracing::span::Record<'_>) {
        values.record(&mut Fields(&mut self.log.lock().unwrap()));
    }

    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}

    fn event(&self, event: &tracing::Event<'_>) {
        let mut log = self.log.lock().unwrap();
        event.record(&mut Fields(&mut log));
        log.push('\n');
    }

    fn enter(&self, _: &tracing::span::Id) {}

    fn exit(&self, _: &tracing::span::Id) {}
}

/// The layer logs refusals and key errors (at debug and trace level) and
/// never the key itself.
#[tokio::test(start_paused = true)]
async fn logs_never_contain_the_api_key() {
    let recorder = Recorder::default();
    let _guard = tracing::subscriber::set_default(recorder.clone());
    let policy = Policy::builder()
        .limit(Limit::new("per_key", api_key()).quota(per_minute(1)))
        .limit(Limit::new("per_token", Header::bearer()).quota(per_minute(1)))
        .max_key_len(SECRET.len() + 1)
        .build()
        .unwrap();
    let svc = RateLimitLayer::new(policy).layer(service_fn(|_req: Request<String>| async {
        Ok::<_, Infallible>(Response::new(String::from("inner")))
    }));
    let status = |request: Request<String>| {
        let svc = svc.clone();
        async move { svc.oneshot(request).await.unwrap().status() }
    };
    let both = |key: &str, auth: &str| {
        get("/v1/calls")
            .header("x-api-key", key)
            .header(AUTHORIZATION, auth)
            .body(String::new())
            .unwrap()
    };
    let bearer = format!("Bearer {SECRET}");
    assert_eq!(status(both(SECRET, &bearer)).await, StatusCode::OK);
    assert_eq!(
        status(both(SECRET, &bearer)).await,
        StatusCode::TOO_MANY_REQUESTS
    );
    let conflicting = get("/v1/calls")
        .header("x-api-key", SECRET)
        .header("x-api-key", "other")
        .body(String::new())
        .unwrap();
    assert_eq!(status(conflicting).await, StatusCode::UNAUTHORIZED);
    assert_eq!(
        status(both(&format!("{SECRET}xx"), &bearer)).await,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        status(both("k", &format!("{bearer} x"))).await,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        status(both("k", &format!("Basic {SECRET}"))).await,
        StatusCode::UNAUTHORIZED
    );

    let log = recorder.log.lock().unwrap().clone();
    assert!(
        log.contains("refused"),
        "the recorder saw the layer's events:\n{log}"
    );
    assert!(!log.contains(SECRET), "a log line shows the key:\n{log}");
}
