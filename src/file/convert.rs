//! From the file's shape to a [`PolicyBuilder`]: the calls code would make,
//! each checked value's error under the field it came from.

use std::borrow::Cow;
use std::sync::Arc;

use http::StatusCode;

use super::spec::{
    FileSpec, Int, LimitSpec, MethodsSpec, OverrideSpec, PenaltySpec, QuotaSpec, RouteSpec,
    WindowSpec,
};
use crate::error::ConfigError;
use crate::key::{CustomKeys, Key, KeyError, KeyExtractor, RequestView};
use crate::penalty::Penalty;
use crate::policy::rate_text::{parse_duration, parse_window};
use crate::policy::{Algorithm, Limit, OwnQuota, Policy, PolicyBuilder, Quota, Tiers, Window};
use crate::reporting::HeaderStyle;
use crate::reporting::ReportedWindow;
use crate::response::RefusalFormat;
use crate::route::{Methods, PathPattern, Route};

/// An invalid-value error at `field`.
pub(super) fn invalid(field: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::invalid(field, message)
}

/// A whole number in `min..=max`.
pub(super) fn int_in<T: TryFrom<i64>>(
    value: Int,
    min: i64,
    max: i64,
    field: &str,
) -> Result<T, ConfigError> {
    if !(min..=max).contains(&value.0) {
        return Err(invalid(
            field,
            format!("must be from {min} to {max}, not {}", value.0),
        ));
    }
    T::try_from(value.0).map_err(|_| invalid(field, format!("{} is out of range", value.0)))
}

/// `text` between backticks, escaped, for messages.
pub(super) fn quoted(text: &str) -> String {
    format!("`{}`", text.escape_debug())
}

impl FileSpec {
    /// The builder the file describes: its settings, then its limits in
    /// order.
    pub(super) fn into_builder(self, custom: &CustomKeys) -> Result<PolicyBuilder, ConfigError> {
        let mut builder = Policy::builder();
        if let Some(secret) = &self.key_secret {
            builder = builder.key_secret(secret.resolve()?);
        }
        if let Some(headers) = &self.headers {
            builder = builder.header_style(header_style(headers)?);
        }
        if let Some(report) = &self.report {
            builder = match reported_window(report)? {
                ReportedWindow::MostRestrictive => builder.report_most_restrictive(),
                ReportedWindow::Period(period) => builder.report_period(period),
            };
        }
        if let Some(refusal) = &self.refusal {
            let format = RefusalFormat::named(refusal).ok_or_else(|| {
                let names: Vec<_> = RefusalFormat::names().collect();
                let (last, rest) = names.split_last().expect("built-in formats");
                invalid(
                    "refusal",
                    format!(
                        "{}: expected {} or {last}",
                        quoted(refusal),
                        rest.join(", ")
                    ),
                )
            })?;
            builder = builder.refusal(format);
        }
        if let Some(status) = self.refusal_status {
            builder = builder.refusal_status(status_code(status, "refusal_status")?);
        }
        if let Some(status) = self.busy_status {
            builder = builder.busy_status(status_code(status, "busy_status")?);
        }
        if let Some(after) = &self.busy_retry_after {
            let after =
                parse_duration(after).map_err(|reason| invalid("busy_retry_after", reason))?;
            builder = builder.busy_retry_after(after);
        }
        if let Some(len) = self.max_key_len {
            builder = builder.max_key_len(int_in(len, 1, i64::from(u32::MAX), "max_key_len")?);
        }
        if let Some(max) = self.memory.and_then(|m| m.max_entries) {
            let field = "memory.max_entries";
            if max.0 < 1 {
                return Err(invalid(field, format!("must be at least 1, not {}", max.0)));
            }
            let max = usize::try_from(max.0)
                .map_err(|_| invalid(field, format!("{} is out of range", max.0)))?;
            builder = builder.memory_max_entries(max);
        }
        for (i, limit) in self.limits.into_iter().enumerate() {
            builder = builder.limit(
                limit
                    .into_limit(custom)
                    .map_err(|e| e.within(format!("limits[{i}]")))?,
            );
        }
        Ok(builder)
    }
}

/// An HTTP status from the field `field`.
fn status_code(value: Int, field: &str) -> Result<StatusCode, ConfigError> {
    let code: u16 = int_in(value, 100, 999, field)?;
    StatusCode::from_u16(code).map_err(|_| invalid(field, format!("{code} is not an HTTP status")))
}

fn header_style(text: &str) -> Result<HeaderStyle, ConfigError> {
    Ok(match text.to_ascii_lowercase().as_str() {
        "x-ratelimit" => HeaderStyle::XRateLimit,
        "ietf" => HeaderStyle::Ietf,
        "both" => HeaderStyle::Both,
        "none" => HeaderStyle::None,
        "draft7" => HeaderStyle::Draft7,
        _ => {
            return Err(invalid(
                "headers",
                format!(
                    "{}: expected x-ratelimit, ietf, both, draft7 or none",
                    quoted(text)
                ),
            ))
        }
    })
}

fn reported_window(text: &str) -> Result<ReportedWindow, ConfigError> {
    if text.eq_ignore_ascii_case("most_restrictive") {
        return Ok(ReportedWindow::MostRestrictive);
    }
    parse_duration(text).map(ReportedWindow::Period).map_err(|reason| {
        invalid(
            "report",
            format!(
                "{}: expected most_restrictive or a window's period such as minute or 60s ({reason})",
                quoted(text)
            ),
        )
    })
}

fn algorithm(text: &str, field: &str) -> Result<Algorithm, ConfigError> {
    // Names are read without regard to ASCII case, as `headers` and
    // `report` are.
    match text.to_ascii_lowercase().as_str() {
        "gcra" => Ok(Algorithm::Gcra),
        "fixed_window" => Ok(Algorithm::FixedWindow),
        _ => Err(invalid(
            field,
            format!("{}: expected gcra or fixed_window", quoted(text)),
        )),
    }
}

impl LimitSpec {
    fn into_limit(self, custom: &CustomKeys) -> Result<Limit, ConfigError> {
        let key = self
            .key
            .extractor(custom, true)
            .map_err(|e| e.within("key"))?;
        let on_missing_key = self.on_missing_key.as_deref().map(str::to_ascii_lowercase);
        let skip_missing_key = match on_missing_key.as_deref() {
            None | Some("reject") => false,
            Some("skip") => true,
            Some(other) => {
                return Err(invalid(
                    "on_missing_key",
                    format!("{}: expected reject or skip", quoted(other)),
                ))
            }
        };
        let default_algorithm = match &self.algorithm {
            Some(text) => algorithm(text, "algorithm")?,
            None => Algorithm::default(),
        };
        let mut limit = Limit::with_shared_key(self.name, key)
            .skip_missing_key(skip_missing_key)
            .shadow(self.shadow)
            .exempt_keys(self.exempt_keys)
            .exempt_ips(self.exempt_ips);
        if let Some(penalty) = self.penalty {
            limit = limit.penalty(penalty.into_penalty().map_err(|e| e.within("penalty"))?);
        }
        if let Some(plan) = &self.plan {
            let source = plan.extractor(custom, true).map_err(|e| e.within("plan"))?;
            limit = limit.plan_from(SharedKey(source));
        }
        for (j, route) in self.routes.into_iter().enumerate() {
            let (route, tiers, head) = route
                .into_route(default_algorithm)
                .map_err(|e| e.within(format!("routes[{j}]")))?;
            limit = limit.built_route(route, head, tiers);
        }
        for (j, spec) in self.overrides.into_iter().enumerate() {
            let (key, value) = spec
                .into_override(default_algorithm)
                .map_err(|e| e.within(format!("overrides[{j}]")))?;
            limit = match value {
                OwnQuota::Plan(plan) => limit.key_plan(key, plan),
                OwnQuota::Quota(quota) => limit.key_quota(key, quota),
            };
        }
        Ok(limit)
    }
}

/// A shared extractor, as [`Limit::plan_from`] takes one.
struct SharedKey(Arc<dyn KeyExtractor>);

impl KeyExtractor for SharedKey {
    fn extract<'a>(&self, request: &RequestView<'a>) -> Result<Key<'a>, KeyError> {
        self.0.extract(request)
    }

    fn describe(&self) -> Cow<'_, str> {
        self.0.describe()
    }
}

impl PenaltySpec {
    fn into_penalty(self) -> Result<Penalty, ConfigError> {
        let within = parse_duration(&self.within).map_err(|reason| invalid("within", reason))?;
        let ban = parse_duration(&self.ban).map_err(|reason| invalid("ban", reason))?;
        Penalty::new(self.refusals, within, ban)
    }
}

impl OverrideSpec {
    fn into_override(
        self,
        default_algorithm: Algorithm,
    ) -> Result<(String, OwnQuota), ConfigError> {
        let OverrideSpec {
            key,
            plan,
            windows,
            cost,
            algorithm,
            concurrency,
            queue,
        } = self;
        let quota = QuotaSpec {
            windows,
            cost,
            algorithm,
            concurrency,
            queue,
        };
        let has_quota = !quota.windows.is_empty() || quota.concurrency.is_some();
        let value = match (plan, has_quota) {
            (Some(_), true) => {
                return Err(invalid(
                    "plan",
                    "give an override either a `plan` or its own quota (`windows`, `concurrency`), not both",
                ))
            }
            (Some(plan), false) => {
                // The plan's quota is whole: a field of the override's own
                // would be ignored.
                let own = [
                    ("cost", quota.cost.is_some()),
                    ("algorithm", quota.algorithm.is_some()),
                    ("queue", quota.queue.is_some()),
                ];
                if let Some(&(field, _)) = own.iter().find(|(_, given)| *given) {
                    return Err(invalid(
                        field,
                        "an override on a `plan` takes the plan's quota as it is: give it its own quota (`windows`, `concurrency`) instead",
                    ));
                }
                OwnQuota::Plan(plan)
            }
            (None, _) => {
                // Checked here, where its fields are the override's own
                // (`cost`, not `quota.cost`).
                let quota = quota.into_quota(default_algorithm)?;
                quota.validate()?;
                OwnQuota::Quota(quota)
            }
        };
        Ok((key, value))
    }
}

impl QuotaSpec {
    fn into_quota(self, default_algorithm: Algorithm) -> Result<Quota, ConfigError> {
        let mut windows = self
            .windows
            .iter()
            .enumerate()
            .map(|(k, w)| w.window().map_err(|e| e.within(format!("windows[{k}]"))));
        let mut quota = match (windows.next(), self.concurrency) {
            (Some(first), _) => Quota::new(first?),
            (None, Some(max)) => {
                Quota::in_flight(int_in(max, 0, i64::from(u32::MAX), "concurrency")?)
            }
            (None, None) => {
                return Err(invalid(
                    "windows",
                    "list at least one window, such as \"60/minute\", or set `concurrency`",
                ))
            }
        };
        for window in windows {
            quota = quota.and(window?);
        }
        if let Some(max) = self.concurrency {
            quota = quota.max_in_flight(int_in(max, 0, i64::from(u32::MAX), "concurrency")?);
        }
        if let Some(queue) = self.queue {
            if self.concurrency.is_none() {
                return Err(invalid(
                    "queue",
                    "a queue needs `concurrency` (the in-flight cap)",
                ));
            }
            let max_queued = int_in(queue.max_queued, 0, 1_000_000, "queue.max_queued")?;
            let max_wait = parse_duration(&queue.max_wait)
                .map_err(|reason| invalid("queue.max_wait", reason))?;
            quota = quota.queue(max_queued, max_wait);
        }
        if let Some(cost) = self.cost {
            quota = quota.cost(int_in(cost, 1, i64::from(u32::MAX), "cost")?);
        }
        let algorithm = match &self.algorithm {
            Some(text) => algorithm(text, "algorithm")?,
            // The limit's algorithm is for quotas that count: a quota with
            // only an in-flight cap takes none.
            None if quota.windows().is_empty() => return Ok(quota),
            None => default_algorithm,
        };
        Ok(quota.algorithm(algorithm))
    }
}

impl RouteSpec {
    /// The route, its quotas by plan, and whether its `GET` also matches
    /// `HEAD` (for [`Limit::route`]; else it is for
    /// [`Limit::route_without_head`]).
    fn into_route(self, default_algorithm: Algorithm) -> Result<(Route, Tiers, bool), ConfigError> {
        let methods = match &self.methods {
            None => Methods::ANY,
            Some(MethodsSpec::One(text)) => text.parse::<Methods>()?,
            Some(MethodsSpec::List(list)) => {
                if list.is_empty() {
                    return Err(invalid(
                        "methods",
                        "list at least one method, or leave `methods` out for every method",
                    ));
                }
                let mut set: Option<Methods> = None;
                for (k, name) in list.iter().enumerate() {
                    if name.contains(',') {
                        return Err(invalid(
                            format!("methods[{k}]"),
                            format!("{}: one method per list item", quoted(name)),
                        ));
                    }
                    let parsed = name.parse::<Methods>().map_err(|e| {
                        ConfigError::invalid(format!("methods[{k}]"), e.message().to_owned())
                    })?;
                    set = Some(set.map_or(parsed, |s| s.or(parsed)));
                }
                set.unwrap_or(Methods::ANY)
            }
        };
        if self.head.is_some() && !methods.meets(Methods::GET) {
            return Err(invalid(
                "head",
                format!(
                    "`head` says whether a route that names GET also matches HEAD, \
                     and this route's methods ({methods}) do not include GET"
                ),
            ));
        }
        // As in a route's text (`Route::parse`), whitespace around the path
        // is not part of it, whichever kind it is.
        let path = self.path.as_deref().unwrap_or("*").trim();
        let pattern = PathPattern::parse(path).map_err(|e| e.within("path"))?;

        let own = QuotaSpec {
            windows: self.windows,
            cost: self.cost,
            algorithm: self.algorithm,
            concurrency: self.concurrency,
            queue: self.queue,
        };
        let mut tiers = Tiers::new(own.into_quota(default_algorithm)?);
        for (name, spec) in self.plans {
            let quota = spec
                .into_quota(default_algorithm)
                .map_err(|e| e.within_key("plans", &name))?;
            tiers = tiers.plan(name, quota);
        }
        Ok((
            Route::new(methods, pattern),
            tiers,
            self.head.unwrap_or(true),
        ))
    }
}

impl WindowSpec {
    fn window(&self) -> Result<Window, ConfigError> {
        match self {
            WindowSpec::Text(text) => parse_window(text).map_err(|reason| {
                let shown = format!("`{text}`");
                if reason.contains(&shown) {
                    invalid("", reason)
                } else {
                    invalid("", format!("{reason} (in {shown})"))
                }
            }),
            WindowSpec::Table(table) => {
                let limit: u32 = int_in(table.limit, 1, i64::from(u32::MAX), "limit")?;
                let period =
                    parse_duration(&table.period).map_err(|reason| invalid("period", reason))?;
                Window::new(limit, period).map_err(|e| invalid("", e.message().to_owned()))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(table: &str) -> (Route, bool) {
        let spec: RouteSpec = toml::from_str(table).unwrap();
        let (route, _, head) = spec.into_route(Algorithm::default()).unwrap();
        (route, head)
    }

    #[test]
    fn a_route_table_is_the_route_its_text_names() {
        for (table, text) in [
            ("windows = [\"1/s\"]", "*"),
            (
                "methods = [\"post\", \"PUT\"]\npath = \"/v1/keys\"\nwindows = [\"1/s\"]",
                "POST,PUT /v1/keys",
            ),
            (
                "methods = \"GET,HEAD\"\npath = \"/v1/{id}/*\"\nwindows = [\"1/s\"]",
                "GET,HEAD /v1/{id}/*",
            ),
            (
                "methods = \"*\"\npath = \"/v1/keys\u{a0}\"\nwindows = [\"1/s\"]",
                "* /v1/keys\u{a0}",
            ),
        ] {
            assert_eq!(route(table), (Route::parse(text).unwrap(), true), "{table}");
        }
        assert_eq!(
            route("path = \"/v1/keys\u{a0}\"\nwindows = [\"1/s\"]"),
            route("path = \"/v1/keys\"\nwindows = [\"1/s\"]")
        );
        let (get, head) = route("methods = [\"GET\"]\nhead = false\nwindows = [\"1/s\"]");
        assert_eq!((get, head), (Route::parse("GET *").unwrap(), false));
    }
}
