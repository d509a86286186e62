//! Arbitrary rate-limit hints on a 429 or 503 (`Retry-After`, the IETF
//! `RateLimit` and `RateLimit-Policy` fields, `X-RateLimit-Reset`; each line
//! of the input is one header: its first byte picks the name and the
//! status, the rest is the value) through the client's `RetryPolicy`: it
//! retries after a wait no longer than `max_wait` (or the backoff's cap,
//! when no hint is read), or gives up; never a panic.
#![no_main]

use std::time::Duration;

use http::{HeaderValue, Request, Response, StatusCode};
use libfuzzer_sys::fuzz_target;
use tower::retry::Policy;
use tower_ratelimit::client::RetryPolicy;

const NAMES: [&str; 4] = [
    "retry-after",
    "ratelimit",
    "ratelimit-policy",
    "x-ratelimit-reset",
];

fuzz_target!(|data: &[u8]| {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap();
    let _entered = runtime.enter();
    let max_wait = Duration::from_secs(30);
    let backoff = Duration::from_secs(5);
    let mut policy = RetryPolicy::new()
        .max_wait(max_wait)
        .backoff(Duration::from_millis(100), backoff)
        .seed(7);
    let mut response = Response::new(());
    *response.status_mut() = StatusCode::TOO_MANY_REQUESTS;
    for line in data.split(|&b| b == b'\n') {
        let Some((&first, value)) = line.split_first() else {
            continue;
        };
        if first & 0x80 != 0 {
            *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
        }
        if let Ok(value) = HeaderValue::from_bytes(value) {
            let name = NAMES[usize::from(first) % NAMES.len()];
            response.headers_mut().append(name, value);
        }
    }
    let mut request = Request::new(());
    let mut result: Result<Response<()>, ()> = Ok(response);
    let start = tokio::time::Instant::now();
    if let Some(sleep) = policy.retry(&mut request, &mut result) {
        let wait = sleep.deadline().saturating_duration_since(start);
        assert!(wait <= max_wait.max(backoff), "waits {wait:?}");
    }
});
