//! An arbitrary route pattern through a policy (`Limit::route`); when the
//! policy builds, the arbitrary paths that follow it (one per line) go
//! through the layer: every one is answered (admitted, or counted against
//! its capture's key), and a pattern that does not build is a `BadPattern`
//! or `InvalidValue` error, never a panic.
#![no_main]

use std::convert::Infallible;

use futures::FutureExt;
use http::{Request, Response, StatusCode};
use libfuzzer_sys::fuzz_target;
use tower::{service_fn, Layer, ServiceExt};
use tower_ratelimit::key::{FirstOf, PathCapture, RequestView};
use tower_ratelimit::{ConfigErrorKind, Limit, Policy, Quota, RateLimitLayer, Window};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let mut lines = text.split('\n');
    let pattern = lines.next().unwrap_or_default();
    // Keyed on the first capture when the pattern has one, else on nothing.
    let capture = pattern
        .split('/')
        .find_map(|s| s.strip_prefix('{')?.strip_suffix('}'))
        .unwrap_or("none");
    let key = FirstOf::new()
        .or(PathCapture::new(capture))
        .or(|_: &RequestView<'_>| Some("global"));
    let policy = Policy::builder()
        .limit(Limit::new("paths", key).route(
            format!("GET {pattern}"),
            Quota::new(Window::per_second(u32::MAX)),
        ))
        .build();
    let policy = match policy {
        Ok(policy) => policy,
        Err(err) => {
            assert!(
                matches!(
                    err.kind(),
                    ConfigErrorKind::BadPattern | ConfigErrorKind::InvalidValue
                ),
                "{err}"
            );
            return;
        }
    };
    let layer = RateLimitLayer::new(policy);
    for path in lines {
        let Ok(request) = Request::get(path).body(()) else {
            continue;
        };
        let service = layer.layer(service_fn(|_: Request<()>| async {
            Ok::<_, Infallible>(Response::new(()))
        }));
        let response = service.oneshot(request).now_or_never().unwrap().unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{pattern} on {path}");
    }
});
