//! The demo's HTTP server: the stand-in voice API behind a limiter, served
//! over HTTP/1.1 with guards against slow and numerous clients. Shared by
//! the `voice_api` binary and the tests that serve the demo.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::http::{Method, Request, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tower_service::Service;

/// The longest `?hold_ms=` accepted.
const MAX_HOLD_MS: u64 = 60_000;

/// How the server treats slow and numerous clients.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Guards {
    /// The longest a client may take to send a request's line and headers,
    /// counted from the connection's start or from the end of the previous
    /// response (so it also bounds an idle keep-alive connection); then the
    /// connection is closed.
    pub(crate) header_timeout: Duration,
    /// The most connections served at once; further ones wait in the
    /// listen backlog until one closes.
    pub(crate) max_connections: usize,
}

/// The demo API behind `limiter` (which adds the rate-limit layer): every
/// request it lets through is answered 200 JSON, after `?hold_ms=N`
/// milliseconds if it asks for them, but for methods outside the usual six
/// (405). Request bodies are never read.
pub(crate) fn app(limiter: impl FnOnce(Router) -> Router) -> Router {
    limiter(Router::new().fallback(answer))
}

/// The methods the API serves; others get a 405 (a route table counts
/// only the methods it names, so the demo serves no method a policy could
/// leave uncounted by omission).
const SERVED: [Method; 6] = [
    Method::GET,
    Method::HEAD,
    Method::POST,
    Method::PUT,
    Method::PATCH,
    Method::DELETE,
];

async fn answer(method: Method, uri: Uri) -> Response {
    if !SERVED.contains(&method) {
        let body = Json(json!({"error": {
            "code": "method_not_allowed",
            "message": format!("{method} is not served; use GET, HEAD, POST, PUT, PATCH or DELETE"),
        }}));
        let allow = [(
            axum::http::header::ALLOW,
            "GET, HEAD, POST, PUT, PATCH, DELETE",
        )];
        return (StatusCode::METHOD_NOT_ALLOWED, allow, body).into_response();
    }
    let hold = uri
        .query()
        .into_iter()
        .flat_map(|q| q.split('&'))
        .find_map(|pair| pair.strip_prefix("hold_ms="));
    let hold_ms = match hold.map(str::parse::<u64>) {
        None => 0,
        Some(Ok(ms)) if ms <= MAX_HOLD_MS => ms,
        Some(_) => {
            let message =
                format!("hold_ms must be a whole number of milliseconds from 0 to {MAX_HOLD_MS}");
            let body = Json(json!({"error": {"code": "invalid_hold_ms", "message": message}}));
            return (StatusCode::BAD_REQUEST, body).into_response();
        }
    };
    if hold_ms > 0 {
        tokio::time::sleep(Duration::from_millis(hold_ms)).await;
    }
    Json(json!({
        "ok": true,
        "method": method.as_str(),
        "path": uri.path(),
        "held_ms": hold_ms,
    }))
    .into_response()
}

/// Serves `app` on `listener` until `shutdown` completes, then stops
/// accepting and waits for the open connections to finish their requests.
/// Each request carries its peer's `SocketAddr` in its extensions, for
/// `PeerIp` keys. A response sent before its request's body has arrived
/// closes the connection rather than wait for the rest.
pub(crate) async fn serve(
    listener: TcpListener,
    app: Router,
    guards: Guards,
    shutdown: impl Future<Output = ()>,
) {
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(guards.header_timeout);
    let slots = Arc::new(Semaphore::new(guards.max_connections));
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let slot = tokio::select! {
            slot = Arc::clone(&slots).acquire_owned() => slot.expect("the semaphore is never closed"),
            () = &mut shutdown => break,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Such as running out of file descriptors: try again shortly.
                    eprintln!("accept: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let app = app.clone();
        let service = hyper::service::service_fn(move |mut request: Request<Incoming>| {
            request.extensions_mut().insert(peer);
            app.clone().call(request)
        });
        let connection = graceful.watch(http.serve_connection(TokioIo::new(stream), service));
        tokio::spawn(async move {
            // A client that leaves, or is too slow, ends only its own connection.
            let _ = connection.await;
            drop(slot);
        });
    }
    drop(listener);
    graceful.shutdown().await;
}
