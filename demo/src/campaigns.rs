//! `POST /v1/campaigns` and `GET /v1/campaigns/{id}`: a batch campaign's
//! simulated calls, launched in waves up to the smaller of the account's
//! concurrent-call cap (its Nixflex plan's, as the policy file defines it)
//! and the campaign's `max_concurrent`.
//!
//! An account's campaigns share its cap with each other and with its own
//! `POST /v1/calls` requests: their slots are the rate-limit layer's.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;
use tower_ratelimit::client::Waves;
use tower_ratelimit::Policy;

use crate::jobs::{self, Jobs};

/// The limit and route whose concurrency is an account's call cap.
pub(crate) const LIMIT: &str = "concurrent_calls";
const ROUTE: &str = "/v1/calls";

/// The most recipients of one campaign.
const MAX_RECIPIENTS: u64 = 10_000;
/// The longest simulated call.
const MAX_CALL_MS: u64 = 60_000;

/// Each account's concurrent-call cap: its plan's (the policy's overrides
/// say which plan a key is on), or the route's default.
pub(crate) struct AccountCaps {
    default: u32,
    plans: HashMap<String, u32>,
    policy: Policy,
}

impl AccountCaps {
    /// The caps of `POST /v1/calls` in the `concurrent_calls` limit of a
    /// policy file, if it has them (the Nixflex preset does).
    pub(crate) fn from_policy_file(text: &str, policy: Policy) -> Option<Self> {
        let file: toml::Table = text.parse().ok()?;
        let limit = file
            .get("limits")?
            .as_array()?
            .iter()
            .find(|l| l.get("name").and_then(|n| n.as_str()) == Some(LIMIT))?;
        let route = limit.get("routes")?.as_array()?.iter().find(|r| {
            let path = r.get("path").and_then(|p| p.as_str());
            let post = r
                .get("methods")
                .and_then(|m| m.as_array())
                .is_some_and(|m| m.iter().any(|m| m.as_str() == Some("POST")));
            path == Some(ROUTE) && post
        })?;
        let cap = |t: &toml::Value| u32::try_from(t.get("concurrency")?.as_integer()?).ok();
        let plans = route
            .get("plans")
            .and_then(|p| p.as_table())
            .into_iter()
            .flatten()
            .filter_map(|(name, plan)| Some((name.clone(), cap(plan)?)))
            .collect();
        Some(AccountCaps {
            default: cap(route)?,
            plans,
            policy,
        })
    }

    /// The cap of `account`'s plan.
    fn of(&self, account: &str) -> u32 {
        let plan = self.policy.overrides().plan_of(LIMIT, account);
        plan.and_then(|p| self.plans.get(&p).copied())
            .unwrap_or(self.default)
    }
}

/// The campaigns, and the account caps their calls run under.
pub(crate) struct Campaigns {
    caps: AccountCaps,
    waves: Waves,
    jobs: Mutex<Jobs<Progress>>,
}

impl Campaigns {
    /// Campaigns under `caps`, whose calls take their slots from `waves`.
    pub(crate) fn new(caps: AccountCaps, waves: Waves) -> Self {
        Campaigns {
            caps,
            waves,
            jobs: Mutex::new(Jobs::new("cmp")),
        }
    }
}

/// How far a campaign has come.
#[derive(Default)]
struct Progress {
    done: AtomicU32,
    running: AtomicU32,
    peak: AtomicU32,
    finished: AtomicBool,
}

impl Progress {
    /// One simulated call of `ms` milliseconds.
    async fn call(&self, ms: u64) {
        let now = self.running.fetch_add(1, Ordering::SeqCst) + 1;
        self.peak.fetch_max(now, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(ms)).await;
        self.running.fetch_sub(1, Ordering::SeqCst);
        self.done.fetch_add(1, Ordering::SeqCst);
    }
}

/// `POST /v1/campaigns` `{"recipients": N, "max_concurrent": M, "call_ms": T}`:
/// 202 `{"id": …}`, and the calls start.
pub(crate) async fn create(
    State(campaigns): State<Arc<Campaigns>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Some(account) = jobs::account(&headers) else {
        return jobs::error(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "an API key is required",
        );
    };
    let body = match jobs::object(&body) {
        Ok(body) => body,
        Err(invalid) => return invalid.into_response(),
    };
    let cap = campaigns.caps.of(&account);
    let fields = (
        jobs::number(&body, "recipients", (1, MAX_RECIPIENTS), None),
        jobs::number(&body, "max_concurrent", (1, 1_000), Some(u64::from(cap))),
        jobs::number(&body, "call_ms", (0, MAX_CALL_MS), Some(1_000)),
    );
    let (recipients, max_concurrent, call_ms) = match fields {
        (Ok(r), Ok(m), Ok(c)) => (r, m as u32, c),
        (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) => return e.into_response(),
    };
    let progress = Arc::new(Progress::default());
    let inserted = campaigns
        .jobs
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(Arc::clone(&progress), |p| p.finished.load(Ordering::SeqCst));
    let Some(id) = inserted else {
        return jobs::too_many("campaigns");
    };
    let campaign = campaigns.waves.campaign(&account, cap, max_concurrent);
    tokio::spawn(async move {
        let calls = (0..recipients).map(|_| progress.call(call_ms));
        // It waits without a bound, so it does not fail.
        let _ = campaign.run(calls).await;
        progress.finished.store(true, Ordering::SeqCst);
    });
    (StatusCode::ACCEPTED, Json(json!({"id": id}))).into_response()
}

/// `GET /v1/campaigns/{id}`: `{"done": n, "peak_concurrency": p, "finished": bool}`.
pub(crate) async fn status(
    State(campaigns): State<Arc<Campaigns>>,
    Path(id): Path<String>,
) -> Response {
    let progress = campaigns
        .jobs
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(&id);
    let Some(p) = progress else {
        return jobs::not_found("campaign", &id);
    };
    Json(json!({
        "done": p.done.load(Ordering::SeqCst),
        "peak_concurrency": p.peak.load(Ordering::SeqCst),
        "finished": p.finished.load(Ordering::SeqCst),
    }))
    .into_response()
}
