//! What the outbound routes share: JSON errors, body reading, the
//! request's account and a bounded table of jobs.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

/// The most jobs (campaigns, or SMS sends) kept at once, each kind: past
/// it the oldest finished one is forgotten, and if none has finished a new
/// one is refused.
pub(crate) const MAX_JOBS: usize = 1_000;

/// A JSON error: `{"error": {"code": …, "message": …}}`.
pub(crate) fn error(status: StatusCode, code: &str, message: impl Into<String>) -> Response {
    let body = json!({"error": {"code": code, "message": message.into()}});
    (status, Json(body)).into_response()
}

/// A field of a request's body that is not as it should be: a 400 that
/// names it.
pub(crate) struct Invalid {
    field: &'static str,
    message: String,
}

impl IntoResponse for Invalid {
    fn into_response(self) -> Response {
        let Invalid { field, message } = self;
        let message = format!("`{field}`: {message}");
        let body =
            json!({"error": {"code": "invalid_request", "field": field, "message": message}});
        (StatusCode::BAD_REQUEST, Json(body)).into_response()
    }
}

/// The field `field` is not as it should be.
pub(crate) fn invalid(field: &'static str, message: impl Into<String>) -> Invalid {
    Invalid {
        field,
        message: message.into(),
    }
}

/// The request's body as a JSON object.
pub(crate) fn object(body: &[u8]) -> Result<serde_json::Map<String, Value>, Invalid> {
    match serde_json::from_slice(body) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(invalid("body", "must be a JSON object")),
        Err(e) => Err(invalid("body", format!("is not JSON: {e}"))),
    }
}

/// The whole number `field` of `body`, from `min` to `max`; `default` if
/// it is absent and has one.
pub(crate) fn number(
    body: &serde_json::Map<String, Value>,
    field: &'static str,
    (min, max): (u64, u64),
    default: Option<u64>,
) -> Result<u64, Invalid> {
    let range = || format!("must be a whole number from {min} to {max}");
    match (body.get(field), default) {
        (None, Some(default)) => Ok(default),
        (None, None) => Err(invalid(field, format!("is required: {}", range()))),
        (Some(value), _) => value
            .as_u64()
            .filter(|n| (min..=max).contains(n))
            .ok_or_else(|| invalid(field, range())),
    }
}

/// The API key of the request (`Authorization: Bearer …`), which the
/// rate-limit layer has already required.
pub(crate) fn account(headers: &HeaderMap) -> Option<String> {
    let value = headers.get("authorization")?.to_str().ok()?;
    let (scheme, token) = value.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim().to_owned())
}

/// Jobs by id, at most [`MAX_JOBS`], the oldest first.
pub(crate) struct Jobs<T> {
    prefix: &'static str,
    next: u64,
    by_id: HashMap<String, Arc<T>>,
    order: VecDeque<String>,
}

impl<T> Jobs<T> {
    pub(crate) fn new(prefix: &'static str) -> Self {
        Jobs {
            prefix,
            next: 1,
            by_id: HashMap::new(),
            order: VecDeque::new(),
        }
    }

    /// Keeps `job` under a new id, forgetting the oldest finished job if
    /// the table is full; `None` if it is full of jobs under way.
    pub(crate) fn insert(&mut self, job: Arc<T>, finished: impl Fn(&T) -> bool) -> Option<String> {
        if self.by_id.len() >= MAX_JOBS {
            let oldest = self.order.iter().position(|id| finished(&self.by_id[id]))?;
            if let Some(id) = self.order.remove(oldest) {
                self.by_id.remove(&id);
            }
        }
        let id = format!("{}_{}", self.prefix, self.next);
        self.next += 1;
        self.by_id.insert(id.clone(), job);
        self.order.push_back(id.clone());
        Some(id)
    }

    pub(crate) fn get(&self, id: &str) -> Option<Arc<T>> {
        self.by_id.get(id).cloned()
    }
}

/// The 503 for a full table of jobs under way.
pub(crate) fn too_many(what: &str) -> Response {
    error(
        StatusCode::SERVICE_UNAVAILABLE,
        "too_many_jobs",
        format!("{MAX_JOBS} {what} are under way; try again when one has finished"),
    )
}

/// The 404 for an unknown id.
pub(crate) fn not_found(what: &str, id: &str) -> Response {
    error(
        StatusCode::NOT_FOUND,
        "not_found",
        format!("no {what} `{id}`"),
    )
}
