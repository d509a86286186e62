//! The admin listener (`--admin HOST:PORT`, feature `admin`): `GET
//! /metrics` in the Prometheus text format and the rate limiter's admin API
//! (`/limits/{limit}/keys/{key}` …), apart from the API's port. Shared by
//! the `voice_api` binary and the tests that serve the demo.

use axum::http::header::CONTENT_TYPE;
use axum::routing::get;
use axum::Router;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

/// Installs the Prometheus recorder for the whole process. Call it before
/// the rate-limit layer is built: the layer registers its metrics' handles
/// when it is built.
pub(crate) fn install() -> Result<PrometheusHandle, String> {
    PrometheusBuilder::new()
        .install_recorder()
        .map_err(|e| format!("--admin: cannot install the metrics recorder: {e}"))
}

/// The admin API: `GET /metrics`, every metric recorded so far, beside
/// `limits`, the rate limiter's own (`tower_ratelimit::admin::router`).
pub(crate) fn router(handle: PrometheusHandle, limits: Router) -> Router {
    limits.route(
        "/metrics",
        get(move || {
            let body = handle.render();
            async move { ([(CONTENT_TYPE, "text/plain; version=0.0.4")], body) }
        }),
    )
}
