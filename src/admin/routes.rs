//! The admin API's routes: peek, forget, and a key's override.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde_json::{json, Value};

use super::reply::{config_error, error, json, store_error, Fault, Reply};
use super::Admin;
use crate::clock::NANOS;
use crate::key::{operator_key, KeySecret};
use crate::policy::{rate_text, Own, PolicyInner, Quota};
use crate::service::Shared;
use crate::store::protocol::Check;
use crate::store::Store;

/// The longest override body taken, in bytes (a few windows' rates).
pub(super) const MAX_BODY: usize = 64 * 1024;

/// The path's limit and key, percent-decoded.
type KeyPath = Result<Path<(String, String)>, PathRejection>;

/// One key of one limit, under the policy as it stands.
struct Target<St> {
    shared: Arc<Shared<St>>,
    index: usize,
    limit: String,
    /// The key as the path writes it (what the override handle reads).
    key: String,
    /// The id of the key the limit reads from a request whose key is
    /// `key`.
    id: u64,
    /// That key's override, if it has one.
    own: Option<Own>,
}

impl<St> Target<St> {
    /// The limit and key the path names, or the answer that says what is
    /// wrong with them.
    fn of(admin: &Admin<St>, path: KeyPath) -> Result<Self, Fault> {
        let Path((limit, key)) = path.map_err(|_| {
            let message = "the limit and key must be percent-encoded UTF-8";
            Fault::new(StatusCode::BAD_REQUEST, "path", message)
        })?;
        let shared = admin.current.load_full();
        let policy = &shared.policy.inner;
        let Some((index, compiled)) = policy.limit(&limit) else {
            let message = format!("the policy has no limit named `{}`", limit.escape_debug());
            return Err(Fault::new(StatusCode::NOT_FOUND, "limit", message));
        };
        // Read as the limit reads a request's key: an address for a limit
        // keyed by the client's IP, `global` for a global limit …
        let read = operator_key(&*compiled.key, &key, policy.max_key_len)
            .map_err(|why| Fault::new(StatusCode::BAD_REQUEST, "key", why))?;
        let id = compiled.key_id(&policy.secret, &read);
        let own = policy.override_of(index, id);
        Ok(Target {
            index,
            limit,
            key,
            id,
            own,
            shared,
        })
    }

    fn policy(&self) -> &PolicyInner {
        &self.shared.policy.inner
    }

    /// One check per route of the limit, at the key's override or the
    /// route's default quota.
    fn checks(&self) -> Vec<Check<'_>> {
        let (id, own) = (self.id, self.own.as_ref());
        let limit = &self.policy().limits[self.index];
        let penalty = limit.penalty.as_ref();
        let penalty_key = KeySecret::derive(id, limit.penalty_domain);
        limit
            .routes
            .iter()
            .map(|route| {
                let check = Check::new(KeySecret::derive(id, route.id), route.quota_of(own))
                    .based_on(self.shared.succession.base(route))
                    .of_principal(id)
                    .in_limit(&limit.name);
                match penalty {
                    Some(penalty) => check.with_penalty(penalty_key, penalty),
                    None => check,
                }
            })
            .collect()
    }
}

/// `GET /limits/{limit}/keys/{key}`: where the key stands, consuming nothing.
pub(super) async fn peek<St: Store>(State(admin): State<Admin<St>>, path: KeyPath) -> Reply {
    let target = match Target::of(&admin, path) {
        Ok(target) => target,
        Err(fault) => return fault.reply(),
    };
    let own = target.own.as_ref();
    let now = target.shared.now();
    let answer = target.shared.store.peek(now, &target.checks());
    let peeked = match answer.await {
        Ok(peeked) => peeked,
        Err(e) => return store_error(&e),
    };
    let policy = target.policy();
    let limit = &policy.limits[target.index];
    let unix = |after: u64| now.saturating_add(after).div_ceil(NANOS);
    let routes: Vec<Value> = limit
        .routes
        .iter()
        .enumerate()
        .map(|(ri, route)| {
            let quota = route.quota_of(own);
            let windows: Vec<Value> = peeked
                .windows
                .iter()
                .filter(|w| usize::from(w.check) == ri)
                .map(|w| {
                    let window = quota.windows().get(usize::from(w.window));
                    json!({
                        "rate": window.map(ToString::to_string),
                        "limit": w.limit,
                        "remaining": w.remaining,
                        "reset": unix(w.reset_after),
                    })
                })
                .collect();
            json!({ "route": route.matcher.to_string(), "windows": windows })
        })
        .collect();
    let capped = limit
        .routes
        .iter()
        .any(|r| r.quota_of(own).in_flight_cap().is_some());
    let key = KeySecret::derive(target.id, limit.concurrency_domain);
    let in_flight = match target.shared.store.shared_slots() {
        _ if !capped => None,
        None => Some(target.shared.in_flight.in_flight(key)),
        Some(slots) => match slots.in_flight(key, target.id).await {
            Ok(held) => Some(held),
            Err(e) if e.is_unsupported() => None,
            Err(e) => return store_error(&e),
        },
    };
    let banned_for = peeked.bans.iter().map(|b| b.left.div_ceil(NANOS)).max();
    json(
        StatusCode::OK,
        &json!({
            "limit": target.limit,
            "override": own.map(|own| own_json(limit.plans.as_ref(), own)),
            "routes": routes,
            "in_flight": in_flight,
            "banned_for": banned_for,
        }),
    )
}

/// Any other path under `/limits/`: a 404 that lists the routes.
pub(super) async fn unknown() -> Reply {
    let message = "the admin API's routes are /limits/{limit}/keys/{key} (GET, DELETE) and \
        /limits/{limit}/keys/{key}/override (PUT, DELETE)";
    error(StatusCode::NOT_FOUND, "path", message)
}

/// A method a route does not take: a 405.
pub(super) async fn method_not_allowed() -> Reply {
    let message = "/limits/{limit}/keys/{key} takes GET and DELETE; its /override, PUT and DELETE";
    error(StatusCode::METHOD_NOT_ALLOWED, "method", message)
}

/// `DELETE /limits/{limit}/keys/{key}`: forgets the key's counts and ban.
pub(super) async fn forget<St: Store>(State(admin): State<Admin<St>>, path: KeyPath) -> Reply {
    let target = match Target::of(&admin, path) {
        Ok(target) => target,
        Err(fault) => return fault.reply(),
    };
    let now = target.shared.now();
    let answer = target.shared.store.forget(now, &target.checks());
    match answer.await {
        Ok(true) => {
            tracing::info!(limit = %target.limit, "rate-limit admin: a key's counts were reset");
            json(
                StatusCode::OK,
                &json!({ "limit": target.limit, "reset": true }),
            )
        }
        Ok(false) => {
            tracing::warn!(limit = %target.limit, "rate-limit admin: a key's reset left a count shared with other keys");
            let message = "the key's own counts and ban were forgotten, but the store is at \
                its entry cap: the key's next request is decided by its overflow sketch, \
                whose count it shares with other keys and which cannot be forgotten for one \
                key (it lasts until its window has passed)";
            error(StatusCode::CONFLICT, "key", message)
        }
        Err(e) => store_error(&e),
    }
}

/// `PUT /limits/{limit}/keys/{key}/override`: the key's own quota
/// (`{"windows": [...]}`) or plan (`{"plan": "..."}`).
pub(super) async fn set_override<St: Store>(
    State(admin): State<Admin<St>>,
    path: KeyPath,
    body: Result<Bytes, BytesRejection>,
) -> Reply {
    let target = match Target::of(&admin, path) {
        Ok(target) => target,
        Err(fault) => return fault.reply(),
    };
    let body = match body {
        Ok(body) => body,
        Err(rejection) if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            let message = format!("the body is longer than the {MAX_BODY} bytes an override takes");
            return error(StatusCode::PAYLOAD_TOO_LARGE, "body", message);
        }
        Err(rejection) => return error(rejection.status(), "body", rejection.body_text()),
    };
    let (limit, key) = (&target.limit, &target.key);
    let set = match parse_override(&body) {
        Ok(Wanted::Quota(quota)) => admin.overrides.set_quota(limit, key, quota),
        Ok(Wanted::Plan(plan)) => admin.overrides.set_plan(limit, key, &plan),
        Err(fault) => return fault.reply(),
    };
    if let Err(e) = set {
        return config_error(&e);
    }
    tracing::info!(limit = %limit, "rate-limit admin: a key's override was set");
    let value = match (
        admin.overrides.plan_of(limit, key),
        admin.overrides.quota_of(limit, key),
    ) {
        (Some(plan), _) => json!({ "plan": plan }),
        (_, Some(quota)) => json!({ "windows": windows_text(&quota) }),
        (None, None) => Value::Null,
    };
    json(
        StatusCode::OK,
        &json!({ "limit": limit, "override": value }),
    )
}

/// `DELETE /limits/{limit}/keys/{key}/override`: takes the key's override
/// back.
pub(super) async fn remove_override<St: Store>(
    State(admin): State<Admin<St>>,
    path: KeyPath,
) -> Reply {
    let target = match Target::of(&admin, path) {
        Ok(target) => target,
        Err(fault) => return fault.reply(),
    };
    match admin.overrides.remove(&target.limit, &target.key) {
        Ok(removed) => {
            if removed {
                tracing::info!(limit = %target.limit, "rate-limit admin: a key's override was removed");
            }
            let body = json!({ "limit": target.limit, "removed": removed });
            json(StatusCode::OK, &body)
        }
        Err(e) => config_error(&e),
    }
}

/// A key the JSON object `body` (valid JSON) gives twice at its top level,
/// if any: a JSON value keeps only the last, which would be applied in
/// silence.
fn duplicate_key(body: &[u8]) -> Option<String> {
    use serde::de::{Deserializer, IgnoredAny, MapAccess, Visitor};

    struct Keys;
    impl<'de> Visitor<'de> for Keys {
        type Value = Option<String>;

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a JSON value")
        }

        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut seen: Vec<String> = Vec::new();
            let mut twice = None;
            while let Some(key) = map.next_key::<String>()? {
                map.next_value::<IgnoredAny>()?;
                if twice.is_none() && seen.contains(&key) {
                    twice = Some(key.clone());
                }
                seen.push(key);
            }
            Ok(twice)
        }

        fn visit_seq<A: serde::de::SeqAccess<'de>>(
            self,
            mut seq: A,
        ) -> Result<Self::Value, A::Error> {
            while seq.next_element::<IgnoredAny>()?.is_some() {}
            Ok(None)
        }

        fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_str<E>(self, _: &str) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_unit<E>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
    }
    let mut reader = serde_json::Deserializer::from_slice(body);
    (&mut reader).deserialize_any(Keys).ok().flatten()
}

/// What a `PUT` of an override asks for.
enum Wanted {
    Quota(Quota),
    Plan(String),
}

/// Reads `{"windows": ["120/minute", ...]}` or `{"plan": "scale"}`.
fn parse_override(body: &[u8]) -> Result<Wanted, Fault> {
    let unprocessable =
        |field: &str, message: String| Fault::new(StatusCode::UNPROCESSABLE_ENTITY, field, message);
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| Fault::new(StatusCode::BAD_REQUEST, "body", format!("not JSON: {e}")))?;
    if let Some(field) = duplicate_key(body) {
        let message = format!("`{}` is given twice", field.escape_debug());
        return Err(unprocessable(&field, message));
    }
    let Some(object) = value.as_object() else {
        let message = r#"expected {"windows": [...]} or {"plan": "..."}"#.to_string();
        return Err(unprocessable("body", message));
    };
    if let Some(field) = object.keys().find(|k| *k != "windows" && *k != "plan") {
        let message = format!(
            "unknown field `{}`: use `windows` or `plan`",
            field.escape_debug()
        );
        return Err(unprocessable(field, message));
    }
    match (object.get("windows"), object.get("plan")) {
        (Some(windows), None) => {
            let Some(texts) = windows.as_array().filter(|a| !a.is_empty()) else {
                let message = r#"a non-empty list of rates, such as ["120/minute"]"#.to_string();
                return Err(unprocessable("windows", message));
            };
            let mut quota: Option<Quota> = None;
            for (i, text) in texts.iter().enumerate() {
                let field = format!("windows[{i}]");
                let Some(text) = text.as_str() else {
                    return Err(unprocessable(&field, "a rate is a string".to_string()));
                };
                let window = rate_text::parse_window(text).map_err(|e| unprocessable(&field, e))?;
                quota = Some(match quota {
                    None => Quota::new(window),
                    Some(quota) => quota.and(window),
                });
            }
            let quota = quota.expect("at least one window");
            // Checked here, where its fields are the body's own (`windows`).
            quota
                .validate()
                .map_err(|e| unprocessable(e.field(), e.message().to_string()))?;
            Ok(Wanted::Quota(quota))
        }
        (None, Some(plan)) => match plan.as_str() {
            Some(plan) => Ok(Wanted::Plan(plan.to_string())),
            None => Err(unprocessable("plan", "a plan is a string".to_string())),
        },
        _ => {
            let message = "give either `windows` or `plan`".to_string();
            Err(unprocessable("body", message))
        }
    }
}

/// An override as the answers show it.
fn own_json(plans: &[Box<str>], own: &Own) -> Value {
    match own {
        Own::Plan(p) => json!({ "plan": plans.get(usize::from(*p)).map(|p| &**p) }),
        Own::Quota(quota) => json!({ "windows": windows_text(quota) }),
    }
}

/// A quota's windows as rates: `["120/minute", "5000/hour"]`.
fn windows_text(quota: &Quota) -> Vec<String> {
    quota.windows().iter().map(ToString::to_string).collect()
}
