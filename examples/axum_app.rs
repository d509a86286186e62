//! Run: `cargo run --example axum_app --features axum`
//!
//! An axum app on 127.0.0.1:3001 with two stacked limits:
//!
//! * `per_key`: every `/v1/...` request counts against its `X-API-Key`,
//!   60 per minute and 1,000 per hour (a missing key is a 401);
//! * `login_per_ip`: `POST /login` is limited to 5 per minute per client IP,
//!   read from axum's `ConnectInfo` (the `axum` feature).
//!
//! Try:
//!
//! ```text
//! curl -i -H 'X-API-Key: k_demo' http://127.0.0.1:3001/v1/calls
//! curl -i http://127.0.0.1:3001/v1/calls                      # 401, no key
//! for i in 1 2 3 4 5 6; do curl -s -o /dev/null -w '%{http_code}\n' -X POST http://127.0.0.1:3001/login; done
//! ```

use std::net::SocketAddr;

use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};
use tower_ratelimit::key::{Header, PeerIp};
use tower_ratelimit::{Decision, Limit, Policy, Quota, RateLimitLayer, Window};

const ADDR: &str = "127.0.0.1:3001";

fn policy() -> Policy {
    Policy::builder()
        .limit(
            Limit::new(
                "per_key",
                Header::parse("X-API-Key").expect("a valid header name"),
            )
            .route(
                "/v1/*",
                Quota::new(Window::per_minute(60)).and(Window::per_hour(1000)),
            ),
        )
        .limit(
            Limit::new("login_per_ip", PeerIp::new())
                .route("POST /login", Quota::new(Window::per_minute(5))),
        )
        .build()
        .expect("a valid policy")
}

async fn list_calls(decision: Decision) -> Json<Value> {
    // The layer's decision about this request (an extractor with the `axum`
    // feature; `Decision::current()` anywhere in the handler).
    let remaining = decision.reported().map(|w| w.remaining);
    Json(json!({"calls": [], "remaining_this_window": remaining}))
}

async fn create_call() -> Json<Value> {
    Json(json!({"id": "call_1", "status": "queued"}))
}

async fn login() -> Json<Value> {
    Json(json!({"token": "t_demo"}))
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let app = Router::new()
        .route("/v1/calls", get(list_calls).post(create_call))
        .route("/login", post(login))
        .layer(RateLimitLayer::new(policy()));

    let listener = tokio::net::TcpListener::bind(ADDR).await?;
    println!("listening on http://{}", listener.local_addr()?);
    println!("  curl -i -H 'X-API-Key: k_demo' http://{ADDR}/v1/calls");
    println!("  curl -i -X POST http://{ADDR}/login");
    // `ConnectInfo<SocketAddr>` is what `PeerIp` reads the client's address from.
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .await
}
