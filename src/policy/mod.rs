//! Policies: everything a layer enforces.
//!
//! A [`Policy`] is a list of [`Limit`]s plus how responses look: which
//! headers ([`HeaderStyle`]), which window they report
//! ([`PolicyBuilder::report_period`]), and the body of a refusal
//! ([`RefusalFormat`]). Build one in code with
//! [`Policy::builder`], or load one from TOML with `Policy::from_toml`
//! (feature `toml`, on by default; the format is in the crate's README).
//!
//! ```
//! use tower_ratelimit::{key::Header, Limit, Policy, Quota, RefusalFormat, Window};
//! use std::time::Duration;
//!
//! // TalkPilot: per X-API-Key, 60/minute and 1,000/hour, headers report the minute.
//! let policy = Policy::builder()
//!     .limit(
//!         Limit::new("per_key", Header::parse("X-API-Key").unwrap())
//!             .quota(Quota::new(Window::per_minute(60)).and(Window::per_hour(1000))),
//!     )
//!     .report_period(Duration::from_secs(60))
//!     .refusal(RefusalFormat::named("talkpilot").unwrap())
//!     .build()
//!     .unwrap();
//! assert_eq!(policy.limit_names().collect::<Vec<_>>(), ["per_key"]);
//! ```

mod exemptions;
mod limit;
mod overrides;
mod quota;
pub(crate) mod rate_text;
mod succession;
mod tiers;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use http::StatusCode;

pub use limit::Limit;
pub(crate) use limit::{CompiledLimit, Route};
pub use overrides::Overrides;
#[cfg(feature = "toml")]
pub(crate) use overrides::OwnQuota;
pub(crate) use overrides::{carry_over, OverrideTable, Own};
pub use quota::{Algorithm, Quota, Window};
pub(crate) use succession::Succession;
pub use tiers::Tiers;

#[cfg(feature = "toml")]
pub use crate::key::CustomKeys;

use crate::decision::WindowReport;
use crate::error::ConfigError;
use crate::key::KeySecret;
use crate::reporting::{HeaderStyle, ReportedWindow};
use crate::response::RefusalFormat;

/// The most limits one policy may have.
const MAX_LIMITS: usize = 64;
/// The default cap on a key's length.
const DEFAULT_MAX_KEY_LEN: usize = 4096;

/// Everything a layer enforces. Cheap to clone.
#[derive(Clone)]
pub struct Policy {
    pub(crate) inner: Arc<PolicyInner>,
}

pub(crate) struct PolicyInner {
    pub(crate) limits: Box<[CompiledLimit]>,
    pub(crate) headers: HeaderStyle,
    pub(crate) report: ReportedWindow,
    pub(crate) refusal: RefusalFormat,
    pub(crate) refusal_status: StatusCode,
    pub(crate) max_key_len: usize,
    pub(crate) secret: KeySecret,
    /// Whether `secret` was given rather than drawn at random.
    pub(crate) secret_given: bool,
    /// The status of a "busy" refusal (no free in-flight slot).
    pub(crate) busy_status: StatusCode,
    /// The `Retry-After` of a "busy" refusal, in whole seconds.
    pub(crate) busy_retry_after: u64,
    pub(crate) overrides: OverrideTable,
    /// The entry cap of the memory store `RateLimitLayer::new` builds.
    pub(crate) memory_max_entries: Option<usize>,
}

impl PolicyInner {
    /// The limit named `name`, with its index.
    pub(crate) fn limit(&self, name: &str) -> Option<(usize, &CompiledLimit)> {
        self.limits
            .iter()
            .enumerate()
            .find(|(_, l)| &*l.name == name)
    }

    /// The override of the key whose id is `id` (see
    /// [`CompiledLimit::key_id`]) in limit `index`, if it has one.
    #[inline]
    pub(crate) fn override_of(&self, index: usize, id: u64) -> Option<Own> {
        if !self.overrides.any(index) {
            return None;
        }
        let limit = &self.limits[index];
        self.overrides
            .get(index, KeySecret::derive(id, limit.override_domain))
    }
}

impl Policy {
    /// The handle that sets keys' own quotas at runtime; every layer built
    /// from this policy (or a clone of it) sees its changes.
    ///
    /// A layer's own handle ([`RateLimitLayer::overrides`]) follows its
    /// reloads; this one changes this policy only.
    ///
    /// [`RateLimitLayer::overrides`]: crate::RateLimitLayer::overrides
    pub fn overrides(&self) -> Overrides {
        let inner = Arc::clone(&self.inner);
        Overrides::new(move || Arc::clone(&inner))
    }

    /// A builder for a policy.
    pub fn builder() -> PolicyBuilder {
        PolicyBuilder::default()
    }

    /// The names of the policy's limits, in order.
    pub fn limit_names(&self) -> impl Iterator<Item = &str> {
        self.inner.limits.iter().map(|l| &*l.name)
    }

    /// Whether the secret keys are hashed under was given (in code or in
    /// the policy file) rather than drawn at random for this process.
    /// Processes that share a store must share a given secret, or they
    /// count every key in different buckets.
    pub fn has_key_secret(&self) -> bool {
        self.inner.secret_given
    }

    /// The header style.
    pub fn header_style(&self) -> HeaderStyle {
        self.inner.headers
    }

    /// The entry cap of the memory store that
    /// [`RateLimitLayer::new`](crate::RateLimitLayer::new) builds for this
    /// policy, if the policy sets one ([`PolicyBuilder::memory_max_entries`],
    /// or `max_entries` in a policy file's `[memory]` table); `None` means
    /// the store's default.
    pub fn memory_max_entries(&self) -> Option<usize> {
        self.inner.memory_max_entries
    }

    /// A window's name in the IETF headers: `<limit>.<period>`
    /// (`<limit>.concurrency` for an in-flight cap), of its exact period
    /// (ns) when known (`per_key.500ms`), else of the period of the window
    /// its route's quotas have at its index, if one rounds to its period in
    /// seconds, else of that period.
    pub(crate) fn window_name(&self, w: &WindowReport, exact: Option<u64>) -> String {
        let limit = &self.inner.limits[usize::from(w.limit_index)];
        if w.concurrent {
            return format!("{}.concurrency", limit.name);
        }
        let exact = exact.or_else(|| {
            let route = limit.routes.get(usize::from(w.route_index))?;
            let plans = route.plans.iter().flatten();
            std::iter::once(&route.quota)
                .chain(plans)
                .filter_map(|q| q.windows().get(usize::from(w.window_index)))
                .map(Window::period_ns)
                .find(|ns| ns.div_ceil(crate::clock::NANOS) == w.period)
        });
        struct Period(std::time::Duration);
        impl fmt::Display for Period {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                rate_text::fmt_period(self.0, f)
            }
        }
        let period = exact.map_or(Duration::from_secs(w.period), Duration::from_nanos);
        format!("{}.{}", limit.name, Period(period))
    }
}

impl fmt::Debug for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Policy")
            .field("limits", &self.inner.limits)
            .field("headers", &self.inner.headers)
            .field("report", &self.inner.report)
            .field("refusal", &self.inner.refusal)
            .field("refusal_status", &self.inner.refusal_status)
            .field("max_key_len", &self.inner.max_key_len)
            .field("memory_max_entries", &self.inner.memory_max_entries)
            .finish_non_exhaustive()
    }
}

/// Builds a [`Policy`]; [`PolicyBuilder::build`] checks everything at once.
#[derive(Debug, Clone)]
#[must_use]
pub struct PolicyBuilder {
    limits: Vec<Limit>,
    headers: HeaderStyle,
    report: ReportedWindow,
    refusal: RefusalFormat,
    refusal_status: StatusCode,
    max_key_len: usize,
    secret: Option<KeySecret>,
    busy_status: StatusCode,
    busy_retry_after: Duration,
    memory_max_entries: Option<usize>,
}

impl Default for PolicyBuilder {
    fn default() -> Self {
        PolicyBuilder {
            limits: Vec::new(),
            headers: HeaderStyle::default(),
            report: ReportedWindow::default(),
            refusal: RefusalFormat::default(),
            refusal_status: StatusCode::TOO_MANY_REQUESTS,
            max_key_len: DEFAULT_MAX_KEY_LEN,
            secret: None,
            busy_status: StatusCode::TOO_MANY_REQUESTS,
            busy_retry_after: Duration::from_secs(1),
            memory_max_entries: None,
        }
    }
}

impl PolicyBuilder {
    /// Adds a limit. Every limit whose routes match a request applies to it.
    pub fn limit(mut self, limit: Limit) -> Self {
        self.limits.push(limit);
        self
    }

    /// Sets which rate-limit headers responses carry (default `X-RateLimit-*`).
    pub fn header_style(mut self, style: HeaderStyle) -> Self {
        self.headers = style;
        self
    }

    /// Has the `X-RateLimit-*` headers report the window closest to
    /// refusing (the default): on a refusal, the one that makes the client
    /// wait longest; otherwise the one with the least remaining (ties: the
    /// one that takes longest to reset). Undoes
    /// [`PolicyBuilder::report_period`].
    pub fn report_most_restrictive(mut self) -> Self {
        self.report = ReportedWindow::MostRestrictive;
        self
    }

    /// Has the `X-RateLimit-*` headers report the first window (in policy
    /// order) with this period, such as TalkPilot's minute window; the most
    /// restrictive one when the request was not counted in a window of this
    /// period. [`PolicyBuilder::build`] checks that some window has it.
    /// ([`Decision::reported`](crate::Decision::reported) is that window.)
    pub fn report_period(mut self, period: Duration) -> Self {
        self.report = ReportedWindow::Period(period);
        self
    }

    /// Sets the body of refusals (default: [`RefusalFormat::json`]).
    pub fn refusal(mut self, format: RefusalFormat) -> Self {
        self.refusal = format;
        self
    }

    /// Sets the status of refusals (default 429).
    pub fn refusal_status(mut self, status: StatusCode) -> Self {
        self.refusal_status = status;
        self
    }

    /// Sets the longest key accepted, in bytes (default 4096); longer keys
    /// are a [`KeyErrorKind::TooLong`](crate::key::KeyErrorKind::TooLong).
    pub fn max_key_len(mut self, bytes: usize) -> Self {
        self.max_key_len = bytes;
        self
    }

    /// Sets the secret keys are hashed under (default: random, one per
    /// process, shared by every policy that sets none). Processes
    /// that share a store must share it.
    pub fn key_secret(mut self, secret: KeySecret) -> Self {
        self.secret = Some(secret);
        self
    }

    /// Sets the status of a "busy" refusal, when a request finds no free
    /// in-flight slot (default 429).
    pub fn busy_status(mut self, status: StatusCode) -> Self {
        self.busy_status = status;
        self
    }

    /// Sets the `Retry-After` of a "busy" refusal (default 1 s; rounded up
    /// to whole seconds, from 1 s to 1 day: another is a [`ConfigError`]).
    /// No one knows when a request in flight will end, so this is a hint,
    /// not a promise.
    pub fn busy_retry_after(mut self, after: Duration) -> Self {
        self.busy_retry_after = after;
        self
    }

    /// Sets the most `(key, window)` entries the memory store that
    /// [`RateLimitLayer::new`](crate::RateLimitLayer::new) builds may hold
    /// (at least 1; default: [`MemoryStore`](crate::store::MemoryStore)'s
    /// own, 1,000,000), as
    /// [`MemoryStore::with_max_entries`](crate::store::MemoryStore::with_max_entries)
    /// does. A store given to
    /// [`RateLimitLayer::with_store`](crate::RateLimitLayer::with_store)
    /// keeps the cap it was built with.
    pub fn memory_max_entries(mut self, max: usize) -> Self {
        self.memory_max_entries = Some(max);
        self
    }

    /// Checks and compiles the policy.
    pub fn build(self) -> Result<Policy, ConfigError> {
        if self.limits.is_empty() {
            return Err(ConfigError::invalid(
                "limits",
                "a policy needs at least one limit",
            ));
        }
        if self.limits.len() > MAX_LIMITS {
            return Err(ConfigError::invalid(
                "limits",
                format!("at most {MAX_LIMITS} limits per policy"),
            ));
        }
        if self.max_key_len == 0 {
            return Err(ConfigError::invalid("max_key_len", "must be at least 1"));
        }
        if self.memory_max_entries == Some(0) {
            return Err(ConfigError::invalid(
                "memory.max_entries",
                "must be at least 1",
            ));
        }
        for (field, status) in [
            ("refusal_status", self.refusal_status),
            ("busy_status", self.busy_status),
        ] {
            if !(status.is_client_error() || status.is_server_error()) {
                return Err(ConfigError::invalid(
                    field,
                    format!("{status} is not an error status"),
                ));
            }
        }
        let busy_retry_after = self.busy_retry_after.as_nanos().div_ceil(1_000_000_000);
        if !(1..=86_400).contains(&busy_retry_after) {
            return Err(ConfigError::invalid(
                "busy_retry_after",
                format!(
                    "{:?} is not from 1 s to 1 day (rounded up to whole seconds)",
                    self.busy_retry_after
                ),
            ));
        }
        let busy_retry_after = busy_retry_after as u64;
        let secret_given = self.secret.is_some();
        let secret = self.secret.unwrap_or_else(KeySecret::of_process);
        let mut limits = Vec::with_capacity(self.limits.len());
        for (i, limit) in self.limits.iter().enumerate() {
            if self.limits[..i].iter().any(|l| l.name == limit.name) {
                return Err(ConfigError::invalid(
                    format!("limits[{i}].name"),
                    format!("two limits are named `{}`", limit.name),
                ));
            }
            limits.push(
                limit
                    .compile(&secret, self.max_key_len)
                    .map_err(|e| e.within(format!("limits[{i}]")))?,
            );
        }
        if let ReportedWindow::Period(period) = self.report {
            let found = limits
                .iter()
                .flat_map(|l| l.routes.iter())
                .flat_map(|r| std::iter::once(&r.quota).chain(r.plans.iter().flatten()))
                .flat_map(|q| q.windows())
                .any(|w| w.period() == period);
            if !found {
                return Err(ConfigError::invalid(
                    "report",
                    format!("no window has the period {period:?}"),
                ));
            }
        }
        let routes = limits.iter_mut().flat_map(|limit| limit.routes.iter_mut());
        for (flat, route) in routes.enumerate() {
            route.flat = flat;
        }
        let mut overrides = OverrideTable::new(limits.len());
        for (i, limit) in limits.iter_mut().enumerate() {
            let listed = std::mem::take(&mut limit.listed);
            overrides.load(i, listed);
        }
        Ok(Policy {
            inner: Arc::new(PolicyInner {
                busy_status: self.busy_status,
                busy_retry_after,
                overrides,
                limits: limits.into(),
                headers: self.headers,
                report: self.report,
                refusal: self.refusal,
                refusal_status: self.refusal_status,
                max_key_len: self.max_key_len,
                secret,
                secret_given,
                memory_max_entries: self.memory_max_entries,
            }),
        })
    }
}
