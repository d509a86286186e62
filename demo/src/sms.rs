//! `POST /v1/sms` and `GET /v1/sms/{id}`: messages sent over several
//! sending numbers, each at 1 message a second (shared by every request
//! that uses the number), each message from the number free soonest.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};
use tokio::time::Instant;
use tower_ratelimit::client::{Pacer, SenderPool};
use tower_ratelimit::{Quota, Window};

use crate::jobs::{self, Jobs};

/// The most messages of one request.
const MAX_COUNT: u64 = 1_000;
/// The most sending numbers of one request.
const MAX_NUMBERS: usize = 20;
/// The longest sending number.
const MAX_NUMBER_LEN: usize = 32;

/// The sends, and the pace of every sending number.
pub(crate) struct Messages {
    pacer: Arc<Pacer>,
    jobs: Mutex<Jobs<Sends>>,
}

impl Messages {
    pub(crate) fn new() -> Self {
        let pacer = Pacer::new(Quota::new(Window::per_second(1)))
            .expect("1 a second is a valid quota")
            .name("sms")
            .max_wait(Duration::from_secs(3_600));
        Messages {
            pacer: Arc::new(pacer),
            jobs: Mutex::new(Jobs::new("sms")),
        }
    }
}

/// One request's messages: who sent each and when.
#[derive(Default)]
struct Sends {
    sent: Mutex<Vec<Value>>,
    error: Mutex<Option<String>>,
    finished: AtomicBool,
}

/// `POST /v1/sms` `{"from": ["+15550001", …], "count": N}`: 202 `{"id": …}`,
/// and the messages go out.
pub(crate) async fn create(State(messages): State<Arc<Messages>>, body: Bytes) -> Response {
    let start = Instant::now();
    let body = match jobs::object(&body) {
        Ok(body) => body,
        Err(invalid) => return invalid.into_response(),
    };
    let count = match jobs::number(&body, "count", (1, MAX_COUNT), None) {
        Ok(count) => count,
        Err(invalid) => return invalid.into_response(),
    };
    let from = match numbers(body.get("from")) {
        Ok(from) => from,
        Err(message) => return jobs::invalid("from", message).into_response(),
    };
    let pool = match SenderPool::with_pacer(Arc::clone(&messages.pacer), from) {
        Ok(pool) => pool,
        Err(e) => return jobs::invalid("from", e.to_string()).into_response(),
    };
    let sends = Arc::new(Sends::default());
    let inserted = messages
        .jobs
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(Arc::clone(&sends), |s| s.finished.load(Ordering::SeqCst));
    let Some(id) = inserted else {
        return jobs::too_many("SMS sends");
    };
    tokio::spawn(async move {
        for _ in 0..count {
            match pool.next().await {
                Ok(from) => {
                    let at_ms = start.elapsed().as_millis() as u64;
                    let sent = json!({"from": from, "at_ms": at_ms});
                    sends
                        .sent
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push(sent);
                }
                Err(e) => {
                    *sends.error.lock().unwrap_or_else(|e| e.into_inner()) = Some(e.to_string());
                    break;
                }
            }
        }
        sends.finished.store(true, Ordering::SeqCst);
    });
    (StatusCode::ACCEPTED, Json(json!({"id": id}))).into_response()
}

/// The sending numbers of `from`: 1 to 20 strings of 1 to 32 characters.
fn numbers(from: Option<&Value>) -> Result<Vec<String>, String> {
    let rule = format!(
        "must be a list of 1 to {MAX_NUMBERS} sending numbers of 1 to {MAX_NUMBER_LEN} characters"
    );
    let list = from.and_then(Value::as_array).ok_or_else(|| rule.clone())?;
    if list.is_empty() || list.len() > MAX_NUMBERS {
        return Err(rule);
    }
    list.iter()
        .map(|n| {
            n.as_str()
                .filter(|n| !n.is_empty() && n.len() <= MAX_NUMBER_LEN)
                .map(str::to_owned)
                .ok_or_else(|| rule.clone())
        })
        .collect()
}

/// `GET /v1/sms/{id}`: `{"sent": [{"from": …, "at_ms": t}, …], "finished": bool}`
/// (and `"error"` if sending stopped early).
pub(crate) async fn status(
    State(messages): State<Arc<Messages>>,
    Path(id): Path<String>,
) -> Response {
    let sends = messages
        .jobs
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(&id);
    let Some(s) = sends else {
        return jobs::not_found("SMS send", &id);
    };
    let sent = s.sent.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let mut body = json!({"sent": sent, "finished": s.finished.load(Ordering::SeqCst)});
    if let Some(error) = s.error.lock().unwrap_or_else(|e| e.into_inner()).clone() {
        body["error"] = Value::String(error);
    }
    Json(body).into_response()
}
