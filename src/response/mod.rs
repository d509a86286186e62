//! What a refusal looks like: status, JSON body, request id, gRPC status.

mod presets;

use std::fmt;
use std::sync::Arc;

use bytes::Bytes;
use http::header::{HeaderName, CONTENT_TYPE};
use http::{HeaderMap, HeaderValue, Method, StatusCode};
use serde_json::json;

use crate::decision::{Decision, RefusalReason};
use crate::key::KeyError;

/// `x-request-id`.
const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The body of a refusal: plain JSON (the default), RFC 9457 problem
/// details, a platform's published body chosen by name, or your own.
///
/// | name | body |
/// |---|---|
/// | `json` (default) | `{"error":{"code":"rate_limit_exceeded","message":"Rate limit exceeded. Try again in 12 seconds.","retry_after":12}}` |
/// | `problem_json` | RFC 9457 `application/problem+json`: `{"type":"about:blank","title":"Too Many Requests","status":429,"detail":"…","retry_after":12}` |
/// | `flireo` | `{"error":{"code":"rate_limit_exceeded","message":"Too many requests. Please retry after 45 seconds."}}` |
/// | `nixflex` | `{"error":{"type":"rate_limit_error","code":"rate_limit_exceeded","message":"Rate limit exceeded. Try again in 12 seconds.","details":{"retry_after":12}}}` |
/// | `talkpilot` | `{"error":{"code":"RATE_LIMITED","message":"Rate limit exceeded. Try again in 18 seconds.","request_id":"req_…"}}` |
/// | `exotel` | `{"request_id":"…","http_code":429,"response":{"error":{"code":"rate_limit_exceeded","message":"rate limit exceeded please retry after some time"}}}` |
///
/// The platforms' bodies are presets registered under their names (the
/// names a policy file's `refusal` takes), with the real number of seconds.
/// Formats with a request id use the request's own `x-request-id` (when it
/// is 1 to 128 visible ASCII characters) or generate one, and set it as the
/// response's `x-request-id`. Every answer the layer makes itself says
/// `Cache-Control: no-store`. gRPC and gRPC-web calls (a `POST` with a
/// content type `application/grpc…`, in any case) get a trailers-only gRPC answer
/// instead, in their own content type: HTTP 200 with `grpc-status: 8`
/// (`RESOURCE_EXHAUSTED`), a `grpc-message`, and the wait in
/// `grpc-retry-pushback-ms` (the `Retry-After` in milliseconds), which
/// gRPC clients with a retry policy honour.
///
/// ```
/// use tower_ratelimit::RefusalFormat;
///
/// let nixflex = RefusalFormat::named("nixflex").unwrap();
/// assert_eq!(format!("{nixflex:?}"), "Nixflex");
/// assert!(RefusalFormat::named("xml").is_none());
/// ```
#[derive(Clone, Default)]
pub struct RefusalFormat(Format);

#[derive(Clone)]
enum Format {
    /// A row of [`FORMATS`] or of the presets.
    Preset(&'static Preset),
    /// Your own body.
    Custom(Arc<dyn Fn(&Refusal<'_>) -> CustomBody + Send + Sync>),
}

impl Default for Format {
    fn default() -> Self {
        Format::Preset(&FORMATS[0])
    }
}

/// A format known by name: whether its body carries the request id, and how
/// the body is made from a refusal's facts.
pub(crate) struct Preset {
    /// The name a policy file uses.
    pub(crate) name: &'static str,
    /// The name `Debug` shows.
    pub(crate) title: &'static str,
    /// The body's content type.
    pub(crate) content_type: &'static str,
    /// Whether the body carries the request id (then it is also set as the
    /// response's `x-request-id`).
    pub(crate) request_id: bool,
    /// The body.
    pub(crate) body: fn(&Facts<'_>) -> serde_json::Value,
}

/// What a named format makes a refusal's body from.
pub(crate) struct Facts<'a> {
    /// Why the request was refused.
    pub(crate) why: Why,
    /// Whole seconds until it would be admitted (at least 1).
    pub(crate) retry: u64,
    /// The same, in words: `"12 seconds"`.
    pub(crate) wait: &'a str,
    /// The plain message: `"Rate limit exceeded. Try again in 12 seconds."`,
    /// or what a ban or a busy answer says instead.
    pub(crate) try_again: &'a str,
    /// The plain code: `rate_limit_exceeded`, `temporarily_blocked` or
    /// `concurrency_limit_exceeded`.
    pub(crate) code: &'static str,
    /// The response's status.
    pub(crate) status: StatusCode,
    /// The request id (used only by formats that carry one).
    pub(crate) request_id: &'a str,
}

/// Why a request was refused, as a body tells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Why {
    /// A window refused it.
    Rate,
    /// No in-flight slot was free.
    Busy,
    /// Its key is banned.
    Banned,
}

/// The formats of this crate's own: plain JSON (the default) and problem
/// details. The platforms' are in [`presets`].
static FORMATS: [Preset; 2] = [
    Preset {
        name: "json",
        title: "Json",
        content_type: "application/json",
        request_id: false,
        body: |f| {
            json!({"error": {"code": f.code,
                "message": f.try_again,
                "retry_after": f.retry}})
        },
    },
    Preset {
        name: "problem_json",
        title: "ProblemJson",
        content_type: "application/problem+json",
        request_id: false,
        body: |f| {
            json!({"type": "about:blank",
                "title": f.status.canonical_reason().unwrap_or("Too Many Requests"),
                "status": f.status.as_u16(),
                "detail": f.try_again,
                "retry_after": f.retry})
        },
    },
];

impl RefusalFormat {
    /// A plain JSON error with `code`, `message` and `retry_after` (the
    /// default).
    pub fn json() -> Self {
        RefusalFormat(Format::Preset(&FORMATS[0]))
    }

    /// RFC 9457 problem details (`application/problem+json`).
    pub fn problem_json() -> Self {
        RefusalFormat(Format::Preset(&FORMATS[1]))
    }

    /// The format registered as `name`, as a policy file's `refusal` names
    /// it: `json`, `problem_json`, or a platform's preset (`flireo`,
    /// `nixflex`, `talkpilot`, `exotel`), without regard to ASCII case.
    pub fn named(name: &str) -> Option<Self> {
        FORMATS
            .iter()
            .chain(presets::PRESETS.iter())
            .find(|p| p.name.eq_ignore_ascii_case(name))
            .map(|p| RefusalFormat(Format::Preset(p)))
    }

    /// The names [`RefusalFormat::named`] knows, in order.
    #[cfg(feature = "toml")]
    pub(crate) fn names() -> impl Iterator<Item = &'static str> {
        FORMATS
            .iter()
            .chain(presets::PRESETS.iter())
            .map(|p| p.name)
    }

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
        RefusalFormat(Format::Custom(Arc::new(f)))
    }
}

impl fmt::Debug for RefusalFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match &self.0 {
            Format::Preset(preset) => preset.title,
            Format::Custom(_) => "Custom(..)",
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
    method: &Method,
    request_headers: &HeaderMap,
) -> Produced {
    let retry = decision.retry_after().unwrap_or(1);
    let reason = decision.refusal();
    let banned = reason == Some(RefusalReason::Banned);
    let busy = decision.refused_by_cap();
    if let Some(content_type) = grpc_type(method, request_headers) {
        let what = if busy {
            "too many requests in flight"
        } else if banned {
            "temporarily blocked after repeated rate-limit violations"
        } else {
            "rate limit exceeded"
        };
        let message = format!("{what}, retry after {}", seconds(retry));
        return grpc(content_type, 8, &message, Some(retry.saturating_mul(1000)));
    }
    let request_id = request_id(request_headers);
    let preset = match &format.0 {
        Format::Preset(preset) => preset,
        Format::Custom(f) => {
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
    let why = if banned {
        Why::Banned
    } else if busy {
        Why::Busy
    } else {
        Why::Rate
    };
    let wait = seconds(retry);
    let try_again = match why {
        Why::Banned => format!(
            "Temporarily blocked after repeated rate-limit violations. Try again in {wait}."
        ),
        Why::Busy => format!("Too many requests in flight. Try again in {wait}."),
        Why::Rate => format!("Rate limit exceeded. Try again in {wait}."),
    };
    let body = (preset.body)(&Facts {
        why,
        retry,
        wait: &wait,
        try_again: &try_again,
        code: match why {
            Why::Banned => "temporarily_blocked",
            Why::Busy => "concurrency_limit_exceeded",
            Why::Rate => "rate_limit_exceeded",
        },
        status,
        request_id: &request_id,
    });
    let mut headers = HeaderMap::new();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(preset.content_type));
    if preset.request_id {
        set_request_id(&mut headers, &request_id);
    }
    Produced {
        status,
        headers,
        body: Bytes::from(body.to_string()),
    }
}

/// The answer to a request without a usable key: 401 and a JSON error.
pub(crate) fn key_error(
    error: &KeyError,
    method: &Method,
    request_headers: &HeaderMap,
) -> Produced {
    if let Some(content_type) = grpc_type(method, request_headers) {
        return grpc(content_type, 16, &error.to_string(), None);
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

/// The content type of the answer to a gRPC request (a `POST`, as every gRPC
/// call is), `None` for any other: a `GET` that claims a gRPC content type
/// gets the HTTP answer, never a `200` a cache could keep for its URL.
/// `application/grpc` for `application/grpc`, `application/grpc+proto`,
/// `application/grpc;…`; for gRPC-web, whose clients read a trailers-only
/// answer's status from its headers too, its own kind
/// (`application/grpc-web` or `application/grpc-web-text`, `+proto` kept).
/// Media types are read in any case; nothing else of the request's is
/// echoed.
fn grpc_type(method: &Method, headers: &HeaderMap) -> Option<HeaderValue> {
    if method != Method::POST {
        return None;
    }
    let value = headers.get(CONTENT_TYPE)?.to_str().ok()?;
    let media = value.split(';').next().unwrap_or("").trim();
    let media = media.to_ascii_lowercase();
    let rest = media.strip_prefix("application/grpc")?;
    let suffix_ok = |s: &str| s.is_empty() || s.starts_with('+');
    if suffix_ok(rest) {
        return Some(HeaderValue::from_static("application/grpc"));
    }
    let web = rest.strip_prefix("-web")?;
    let (text, suffix) = match web.strip_prefix("-text") {
        Some(suffix) => (true, suffix),
        None => (false, web),
    };
    let answer = match (text, suffix) {
        (_, s) if !suffix_ok(s) => return None,
        (false, "+proto") => "application/grpc-web+proto",
        (false, _) => "application/grpc-web",
        (true, "+proto") => "application/grpc-web-text+proto",
        (true, _) => "application/grpc-web-text",
    };
    Some(HeaderValue::from_static(answer))
}

/// A trailers-only gRPC answer of `content_type` with `code` and `message`,
/// and `grpc-retry-pushback-ms` if `pushback_ms` is given: how long a gRPC
/// client with a retry policy waits before it tries again.
fn grpc(content_type: HeaderValue, code: u8, message: &str, pushback_ms: Option<u64>) -> Produced {
    let mut headers = HeaderMap::new();
    headers.insert(CONTENT_TYPE, content_type);
    headers.insert(
        HeaderName::from_static("grpc-status"),
        HeaderValue::from(u16::from(code)),
    );
    if let Some(ms) = pushback_ms {
        headers.insert(
            HeaderName::from_static("grpc-retry-pushback-ms"),
            HeaderValue::from(ms),
        );
    }
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
