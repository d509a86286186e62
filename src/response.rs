//! What a refusal looks like: status, JSON body, request id, gRPC status.

use std::fmt;
use std::sync::Arc;

use bytes::Bytes;
use http::header::{HeaderName, CONTENT_TYPE};
use http::{HeaderMap, HeaderValue, StatusCode};
use serde_json::json;

use crate::decision::{Decision, RefusalReason};
use crate::key::KeyError;

/// `x-request-id`.
pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The body of a refusal. The four platforms' formats reproduce their
/// published bodies, with the real number of seconds.
///
/// | format | body |
/// |---|---|
/// | `Json` (default) | `{"error":{"code":"rate_limit_exceeded","message":"Rate limit exceeded. Try again in 12 seconds.","retry_after":12}}` |
/// | `ProblemJson` | RFC 9457 `application/problem+json`: `{"type":"about:blank","title":"Too Many Requests","status":429,"detail":"…","retry_after":12}` |
/// | `Flireo` | `{"error":{"code":"rate_limit_exceeded","message":"Too many requests. Please retry after 45 seconds."}}` |
/// | `Nixflex` | `{"error":{"type":"rate_limit_error","code":"rate_limit_exceeded","message":"Rate limit exceeded. Try again in 12 seconds.","details":{"retry_after":12}}}` |
/// | `TalkPilot` | `{"error":{"code":"RATE_LIMITED","message":"Rate limit exceeded. Try again in 18 seconds.","request_id":"req_…"}}` |
/// | `Exotel` | `{"request_id":"…","http_code":429,"response":{"error":{"code":"rate_limit_exceeded","message":"rate limit exceeded please retry after some time"}}}` |
///
/// Formats with a request id use the request's own `x-request-id` (when it is
/// 1 to 128 visible ASCII characters) or generate one, and set it as the
/// response's `x-request-id`. Requests with a `application/grpc` content type
/// get a gRPC answer instead: HTTP 200 with `grpc-status: 8`
/// (`RESOURCE_EXHAUSTED`) and a `grpc-message`.
#[derive(Clone, Default)]
#[non_exhaustive]
pub enum RefusalFormat {
    /// A plain JSON error with `code`, `message` and `retry_after`.
    #[default]
    Json,
    /// RFC 9457 problem details.
    ProblemJson,
    /// Flireo's published body.
    Flireo,
    /// Nixflex's published body.
    Nixflex,
    /// TalkPilot's published body, with a request id.
    TalkPilot,
    /// Exotel's published body, with a request id.
    Exotel,
    /// Your own body; see [`RefusalFormat::custom`].
    Custom(Arc<dyn Fn(&Refusal<'_>) -> CustomBody + Send + Sync>),
}

impl RefusalFormat {
    /// A format of your own: a closure from the refusal to a body.
    ///
    /// ```
    /// use tower_ratelimit::{CustomBody, RefusalFormat};
    ///
    /// let format = RefusalFormat::custom(|refusal| {
    ///     CustomBody::json(format!(r#"{{"wait":{}}}"#, refusal.retry_after()))
    /// });
    /// # let _ = format;
    /// ```
    pub fn custom<F>(f: F) -> Self
    where
        F: Fn(&Refusal<'_>) -> CustomBody + Send + Sync + 'static,
    {
        RefusalFormat::Custom(Arc::new(f))
    }

    /// The format named in a policy file: `json`, `problem_json`, `flireo`,
    /// `nixflex`, `talkpilot` or `exotel`.
    pub fn from_name(name: &str) -> Option<Self> {
        Some(match name {
            "json" => RefusalFormat::Json,
            "problem_json" => RefusalFormat::ProblemJson,
            "flireo" => RefusalFormat::Flireo,
            "nixflex" => RefusalFormat::Nixflex,
            "talkpilot" => RefusalFormat::TalkPilot,
            "exotel" => RefusalFormat::Exotel,
            _ => return None,
        })
    }

    fn has_request_id(&self) -> bool {
        matches!(self, RefusalFormat::TalkPilot | RefusalFormat::Exotel)
    }
}

impl fmt::Debug for RefusalFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RefusalFormat::Json => "Json",
            RefusalFormat::ProblemJson => "ProblemJson",
            RefusalFormat::Flireo => "Flireo",
            RefusalFormat::Nixflex => "Nixflex",
            RefusalFormat::TalkPilot => "TalkPilot",
            RefusalFormat::Exotel => "Exotel",
            RefusalFormat::Custom(_) => "Custom(..)",
        })
    }
}

/// What a custom refusal format is given.
#[derive(Debug)]
pub struct Refusal<'a> {
    decision: &'a Decision,
    status: StatusCode,
    request_id: &'a str,
}

impl Refusal<'_> {
    /// The decision that refused the request.
    pub fn decision(&self) -> &Decision {
        self.decision
    }

    /// Whole seconds until the request would be admitted (at least 1).
    pub fn retry_after(&self) -> u64 {
        self.decision.retry_after().unwrap_or(1)
    }

    /// The response's status.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The request id: the request's own `x-request-id`, or a generated one.
    /// It is set on the response only when the format uses it, or when the
    /// custom body asks for it with [`CustomBody::with_request_id`].
    pub fn request_id(&self) -> &str {
        self.request_id
    }
}

/// The body a custom format produces.
#[derive(Debug, Clone)]
pub struct CustomBody {
    content_type: HeaderValue,
    body: Bytes,
    request_id: bool,
}

impl CustomBody {
    /// A JSON body.
    pub fn json(body: impl Into<Bytes>) -> Self {
        CustomBody {
            content_type: HeaderValue::from_static("application/json"),
            body: body.into(),
            request_id: false,
        }
    }

    /// A body of another content type.
    pub fn new(content_type: HeaderValue, body: impl Into<Bytes>) -> Self {
        CustomBody {
            content_type,
            body: body.into(),
            request_id: false,
        }
    }

    /// Also sets the request id as the response's `x-request-id`.
    #[must_use]
    pub fn with_request_id(mut self) -> Self {
        self.request_id = true;
        self
    }
}

/// A produced response before its body type is chosen.
#[derive(Debug)]
pub(crate) struct Produced {
    pub(crate) status: StatusCode,
    pub(crate) headers: HeaderMap,
    pub(crate) body: Bytes,
}

fn seconds(n: u64) -> String {
    if n == 1 {
        "1 second".to_owned()
    } else {
        format!("{n} seconds")
    }
}

/// The refusal of a request, in `format`.
pub(crate) fn refusal(
    format: &RefusalFormat,
    status: StatusCode,
    decision: &Decision,
    request_headers: &HeaderMap,
) -> Produced {
    let retry = decision.retry_after().unwrap_or(1);
    let reason = decision.refusal();
    let banned = reason == Some(RefusalReason::Banned);
    let busy = reason == Some(RefusalReason::Busy);
    if is_grpc(request_headers) {
        let what = if busy {
            "too many requests in flight"
        } else {
            "rate limit exceeded"
        };
        return grpc(8, &format!("{what}, retry after {}", seconds(retry)));
    }
    let request_id = request_id(request_headers);
    let wait = seconds(retry);
    // A ban or a busy answer keeps each format's shape; its message (and,
    // where the format has its own code for it, its code) says what it is.
    let try_again = if banned {
        format!("Temporarily blocked after repeated rate-limit violations. Try again in {wait}.")
    } else if busy {
        format!("Too many requests in flight. Try again in {wait}.")
    } else {
        format!("Rate limit exceeded. Try again in {wait}.")
    };
    let code = if banned {
        "temporarily_blocked"
    } else if busy {
        "concurrency_limit_exceeded"
    } else {
        "rate_limit_exceeded"
    };
    let (content_type, body, with_id) = match format {
        RefusalFormat::Json => (
            "application/json",
            json!({"error": {"code": code,
                "message": try_again,
                "retry_after": retry}}),
            false,
        ),
        RefusalFormat::ProblemJson => (
            "application/problem+json",
            json!({"type": "about:blank", "title": status.canonical_reason().unwrap_or("Too Many Requests"),
                "status": status.as_u16(),
                "detail": try_again,
                "retry_after": retry}),
            false,
        ),
        RefusalFormat::Flireo => (
            "application/json",
            json!({"error": {"code": if busy { code } else { "rate_limit_exceeded" },
            "message": if banned {
                format!("Temporarily blocked after repeated rate-limit violations. Please retry after {wait}.")
            } else if busy {
                format!("Too many requests in flight. Please retry after {wait}.")
            } else {
                format!("Too many requests. Please retry after {wait}.")
            }}}),
            false,
        ),
        RefusalFormat::Nixflex => (
            "application/json",
            json!({"error": {"type": "rate_limit_error",
                "code": if busy { code } else { "rate_limit_exceeded" },
                "message": if busy {
                    format!("Concurrency limit reached. Try again in {wait}.")
                } else {
                    try_again
                },
                "details": {"retry_after": retry}}}),
            false,
        ),
        RefusalFormat::TalkPilot => (
            "application/json",
            json!({"error": {"code": "RATE_LIMITED",
                "message": try_again,
                "request_id": request_id}}),
            true,
        ),
        RefusalFormat::Exotel => (
            "application/json",
            json!({"request_id": request_id, "http_code": status.as_u16(),
            "response": {"error": {"code": "rate_limit_exceeded",
            "message": if banned {
                "temporarily throttled after repeated rate limit violations please retry after some time"
            } else if busy {
                "too many concurrent requests please retry after some time"
            } else {
                "rate limit exceeded please retry after some time"
            }}}}),
            true,
        ),
        RefusalFormat::Custom(f) => {
            let custom = f(&Refusal {
                decision,
                status,
                request_id: &request_id,
            });
            let mut headers = HeaderMap::new();
            headers.insert(CONTENT_TYPE, custom.content_type);
            if custom.request_id {
                set_request_id(&mut headers, &request_id);
            }
            return Produced {
                status,
                headers,
                body: custom.body,
            };
        }
    };
    debug_assert_eq!(with_id, format.has_request_id());
    let mut headers = HeaderMap::new();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    if with_id {
        set_request_id(&mut headers, &request_id);
    }
    Produced {
        status,
        headers,
        body: Bytes::from(body.to_string()),
    }
}

/// The answer to a request without a usable key: 401 and a JSON error.
pub(crate) fn key_error(error: &KeyError, request_headers: &HeaderMap) -> Produced {
    if is_grpc(request_headers) {
        return grpc(16, &error.to_string());
    }
    let body = json!({"error": {"code": error.kind().code(), "message": error.to_string()}});
    let mut headers = HeaderMap::new();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    Produced {
        status: StatusCode::UNAUTHORIZED,
        headers,
        body: Bytes::from(body.to_string()),
    }
}

fn is_grpc(headers: &HeaderMap) -> bool {
    // `application/grpc`, `application/grpc+proto`, `application/grpc;…`,
    // but not gRPC-web, whose clients expect their own framing.
    headers.get(CONTENT_TYPE).is_some_and(|v| {
        let v = v.as_bytes();
        v.strip_prefix(b"application/grpc")
            .is_some_and(|rest| rest.is_empty() || rest[0] == b'+' || rest[0] == b';')
    })
}

/// A trailers-only gRPC answer with `code` and `message`.
fn grpc(code: u8, message: &str) -> Produced {
    let mut headers = HeaderMap::new();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    headers.insert(
        HeaderName::from_static("grpc-status"),
        HeaderValue::from(u16::from(code)),
    );
    let encoded: String = message
        .bytes()
        .map(|b| {
            if (0x20..0x7f).contains(&b) && b != b'%' {
                char::from(b).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect();
    if let Ok(value) = HeaderValue::try_from(encoded) {
        headers.insert(HeaderName::from_static("grpc-message"), value);
    }
    Produced {
        status: StatusCode::OK,
        headers,
        body: Bytes::new(),
    }
}

/// The request's own id, if usable, or a fresh one.
fn request_id(headers: &HeaderMap) -> String {
    if let Some(id) = headers.get(X_REQUEST_ID) {
        let bytes = id.as_bytes();
        if (1..=128).contains(&bytes.len()) && bytes.iter().all(|b| (0x21..0x7f).contains(b)) {
            if let Ok(id) = std::str::from_utf8(bytes) {
                return id.to_owned();
            }
        }
    }
    let n = getrandom::u64().unwrap_or_else(|_| {
        use std::sync::atomic::{AtomicU64, Ordering};
        static NEXT: AtomicU64 = AtomicU64::new(1);
        NEXT.fetch_add(1, Ordering::Relaxed) ^ u64::from(std::process::id()) << 40
    });
    format!("req_{n:016x}")
}

fn set_request_id(headers: &mut HeaderMap, id: &str) {
    if let Ok(value) = HeaderValue::from_str(id) {
        headers.insert(X_REQUEST_ID, value);
    }
}
