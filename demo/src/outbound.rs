//! The Nixflex preset's outbound work, as the platform runs it for its
//! customers: batch campaigns launched in waves (`POST /v1/campaigns`,
//! [`campaigns`](crate::campaigns)) and SMS paced per sending number
//! (`POST /v1/sms`, [`sms`](crate::sms)). The routes sit behind the API's
//! rate-limit layer like any other; what both share is in
//! [`jobs`](crate::jobs).

use std::sync::Arc;

use axum::routing::{get, post};
use axum::Router;
use tower_ratelimit::store::Store;
use tower_ratelimit::RateLimitLayer;

use crate::campaigns::{AccountCaps, Campaigns};
use crate::sms::Messages;

/// The outbound routes when the policy (`config`, a TOML file) defines the
/// Nixflex account caps (`concurrent_calls` on `POST /v1/calls`); otherwise
/// none. Campaign calls take their account's slots from `layer`'s cap, so
/// that they and the account's own `POST /v1/calls` count together.
pub(crate) fn routes<St: Store>(config: Option<&str>, layer: &RateLimitLayer<St>) -> Router {
    let caps = config
        .and_then(|path| std::fs::read_to_string(path).ok())
        .and_then(|text| AccountCaps::from_policy_file(&text, layer.policy()));
    let (Some(caps), Ok(waves)) = (caps, layer.waves(crate::campaigns::LIMIT)) else {
        return Router::new();
    };
    let campaigns = Arc::new(Campaigns::new(caps, waves));
    let messages = Arc::new(Messages::new());
    Router::new()
        .route("/v1/campaigns", post(crate::campaigns::create))
        .route("/v1/campaigns/{id}", get(crate::campaigns::status))
        .with_state(campaigns)
        .merge(
            Router::new()
                .route("/v1/sms", post(crate::sms::create))
                .route("/v1/sms/{id}", get(crate::sms::status))
                .with_state(messages),
        )
}
