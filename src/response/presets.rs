//! The platforms' published refusal bodies, as data: one row per platform,
//! registered under the name a policy file uses (`refusal = "nixflex"`).
//!
//! Each row says whether the body carries a request id and how the body is
//! made from a refusal's [`Facts`]; a ban or a busy answer keeps the
//! platform's shape, and its message (and, where the platform has its own
//! code for it, its code) says what it is. Nothing outside this file knows a
//! platform by name.

use serde_json::{json, Value};

use super::{Facts, Preset, Why};

/// The presets, by name.
pub(super) static PRESETS: [Preset; 4] = [
    Preset {
        name: "flireo",
        title: "Flireo",
        content_type: "application/json",
        request_id: false,
        body: flireo,
    },
    Preset {
        name: "nixflex",
        title: "Nixflex",
        content_type: "application/json",
        request_id: false,
        body: nixflex,
    },
    Preset {
        name: "talkpilot",
        title: "TalkPilot",
        content_type: "application/json",
        request_id: true,
        body: talkpilot,
    },
    Preset {
        name: "exotel",
        title: "Exotel",
        content_type: "application/json",
        request_id: true,
        body: exotel,
    },
];

/// `{"error":{"code":"rate_limit_exceeded","message":"Too many requests. Please retry after 45 seconds."}}`
fn flireo(f: &Facts<'_>) -> Value {
    let wait = f.wait;
    json!({"error": {"code": if f.why == Why::Busy { f.code } else { "rate_limit_exceeded" },
    "message": match f.why {
        Why::Banned => format!("Temporarily blocked after repeated rate-limit violations. Please retry after {wait}."),
        Why::Busy => format!("Too many requests in flight. Please retry after {wait}."),
        Why::Rate => format!("Too many requests. Please retry after {wait}."),
    }}})
}

/// `{"error":{"type":"rate_limit_error","code":"rate_limit_exceeded","message":"Rate limit exceeded. Try again in 12 seconds.","details":{"retry_after":12}}}`
fn nixflex(f: &Facts<'_>) -> Value {
    json!({"error": {"type": "rate_limit_error",
        "code": if f.why == Why::Busy { f.code } else { "rate_limit_exceeded" },
        "message": if f.why == Why::Busy {
            format!("Concurrency limit reached. Try again in {}.", f.wait)
        } else {
            f.try_again.to_owned()
        },
        "details": {"retry_after": f.retry}}})
}

/// `{"error":{"code":"RATE_LIMITED","message":"Rate limit exceeded. Try again in 18 seconds.","request_id":"req_…"}}`
fn talkpilot(f: &Facts<'_>) -> Value {
    json!({"error": {"code": "RATE_LIMITED",
        "message": f.try_again,
        "request_id": f.request_id}})
}

/// `{"request_id":"…","http_code":429,"response":{"error":{"code":"rate_limit_exceeded","message":"rate limit exceeded please retry after some time"}}}`
fn exotel(f: &Facts<'_>) -> Value {
    json!({"request_id": f.request_id, "http_code": f.status.as_u16(),
    "response": {"error": {"code": "rate_limit_exceeded",
    "message": match f.why {
        Why::Banned => "temporarily throttled after repeated rate limit violations please retry after some time",
        Why::Busy => "too many concurrent requests please retry after some time",
        Why::Rate => "rate limit exceeded please retry after some time",
    }}}})
}
