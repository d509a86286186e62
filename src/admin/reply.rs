//! The admin API's answers: JSON bodies, and errors that name the field at
//! fault.

use axum::body::Body;
use axum::http::header::CONTENT_TYPE;
use axum::http::{Response, StatusCode};
use serde_json::{json, Value};

use crate::error::{ConfigError, ConfigErrorKind};
use crate::store::StoreError;

/// An answer of the admin API.
pub(super) type Reply = Response<Body>;

/// `value` as a JSON answer with `status`.
pub(super) fn json(status: StatusCode, value: &Value) -> Reply {
    let mut response = Response::new(Body::from(value.to_string()));
    *response.status_mut() = status;
    response.headers_mut().insert(
        CONTENT_TYPE,
        "application/json".parse().expect("a MIME type"),
    );
    response
}

/// An error answer: `{"error": message, "field": field}`.
pub(super) fn error(status: StatusCode, field: &str, message: impl Into<String>) -> Reply {
    let message = message.into();
    json(status, &json!({ "error": message, "field": field }))
}

/// What is wrong with a request, before it is answered: an [`error`].
pub(super) struct Fault {
    status: StatusCode,
    field: String,
    message: String,
}

impl Fault {
    pub(super) fn new(status: StatusCode, field: &str, message: impl Into<String>) -> Self {
        let (field, message) = (field.to_owned(), message.into());
        Fault {
            status,
            field,
            message,
        }
    }

    /// The answer that says it.
    pub(super) fn reply(&self) -> Reply {
        error(self.status, &self.field, self.message.as_str())
    }
}

/// The answer for a policy's refusal: 404 for a name it does not know
/// where a limit was named, else 422.
pub(super) fn config_error(e: &ConfigError) -> Reply {
    let status = match (e.kind(), e.field()) {
        (ConfigErrorKind::UnknownName, "limit") => StatusCode::NOT_FOUND,
        _ => StatusCode::UNPROCESSABLE_ENTITY,
    };
    error(status, e.field(), e.message())
}

/// The answer for a store's failure: 501 if it cannot do this at all,
/// else 503.
pub(super) fn store_error(e: &StoreError) -> Reply {
    let status = if e.is_unsupported() {
        StatusCode::NOT_IMPLEMENTED
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    error(status, "store", e.to_string())
}
