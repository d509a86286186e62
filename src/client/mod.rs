//! The outbound half (feature `client`): clients that honour the limits
//! servers announce, and work that paces itself under limits of its own.
//!
//! * [`RetryPolicy`] is a [`tower::retry::Policy`]: it retries 429 and 503
//!   of idempotent requests after the wait the response asks for
//!   (`Retry-After`, then the IETF `RateLimit` field, then
//!   `X-RateLimit-Reset`, a reset only when its window has nothing left), or
//!   after an exponential backoff with full jitter when there is no hint or
//!   it asks for no wait, within a cap on retries, a cap on the wait it
//!   honours and a retry budget.
//! * [`Pacer`] counts work under a [`Quota`](crate::Quota) in the crate's
//!   stores, but a caller over the quota *waits* for its turn instead of
//!   being refused; [`Pacer::layer`] paces a client's requests by a key read
//!   from each. Pacers sharing a `RedisStore` share one pace.
//! * [`SenderPool`] spreads messages over several senders (SMS numbers),
//!   each paced on its own (1 a second by default), each message to the one
//!   free soonest.
//! * [`Waves`] runs a campaign's jobs at most `min(account cap,
//!   max_concurrent)` at once, the account's cap shared by its campaigns.
//!
//! A client that paces itself at the server's quota and retries what is
//! refused anyway:
//!
//! ```
//! use std::convert::Infallible;
//! use http::{Request, Response, StatusCode};
//! use tower::{service_fn, ServiceBuilder, ServiceExt};
//! use tower::retry::RetryLayer;
//! use tower_ratelimit::client::{Pacer, RetryPolicy};
//! use tower_ratelimit::{Quota, Window};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//! let pacer = Pacer::new(Quota::new(Window::per_minute(60)))?;
//! let api_key = |request: &Request<String>| {
//!     let key = request.headers().get("x-api-key")?;
//!     key.to_str().ok().map(str::to_owned)
//! };
//! let client = ServiceBuilder::new()
//!     .layer(RetryLayer::new(RetryPolicy::new().max_retries(3)))
//!     .layer(pacer.layer(api_key))
//!     .service(service_fn(|_request: Request<String>| async {
//!         Ok::<_, Infallible>(Response::new(String::from("sent")))
//!     }));
//! let request = Request::get("/v1/calls").header("x-api-key", "k_1").body(String::new())?;
//! let response = client.oneshot(request).await?;
//! assert_eq!(response.status(), StatusCode::OK);
//! # Ok(())
//! # }
//! ```

mod jitter;
mod pace;
mod pool;
mod retry;
mod waves;

pub use pace::{Pace, PaceError, PaceLayer, Pacer};
pub use pool::SenderPool;
pub use retry::{Hint, RetryPolicy, Wait};
pub(crate) use waves::AccountSlots;
pub use waves::{Campaign, Waves};
