//! Limits: a named, independently counted limit with a key and a route table.

use std::fmt;
use std::sync::Arc;

use http::Method;

use super::methods::Methods;
use super::pattern::{Captures, PathPattern, PathSegments};
use super::quota::Quota;
use crate::error::ConfigError;
use crate::key::{route_id, KeyExtractor, KeySecret};
use crate::penalty::Penalty;
use crate::policy::exemptions::Exemptions;

/// What a limit does with a request whose key is missing or unusable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum MissingKey {
    /// Answer 401 with a JSON error that says what is wrong; the request is
    /// not counted and never reaches the inner service. The default.
    #[default]
    Reject,
    /// When the key is *missing*, this limit does not apply to the request
    /// (other limits still do). A key that is present but unusable (empty,
    /// conflicting, too long …) is still answered with a 401, so a client
    /// cannot escape its bucket by breaking its key. Choose it only where an
    /// unidentified request is limited elsewhere.
    Skip,
}

/// One named, independently counted limit: whose key, which routes, which
/// quotas.
///
/// Routes are tried in order and the first match wins ("partition": Nixflex's
/// `POST /v1/keys` is 10/hour *instead of* the write quota). Every limit of a
/// policy whose routes match applies ("stacking": Flireo counts a call-control
/// command against the key's 100/minute *and* the call's 10/minute). Each
/// route counts in its own bucket.
///
/// A route is written `"[METHODS] PATTERN"`: `"POST /v1/keys"`,
/// `"POST,PUT,PATCH,DELETE *"`, `"/v1/calls/{call_id}/control"` (any method),
/// `"*"` (everything).
///
/// ```
/// use tower_ratelimit::{key::Bearer, Limit, Quota, Window};
///
/// // Nixflex, per API key.
/// let per_key = Limit::new("per_key", Bearer::new())
///     .route("POST /v1/keys", Quota::new(Window::per_hour(10)))
///     .route("GET *", Quota::new(Window::per_minute(600)))
///     .route("POST,PUT,PATCH,DELETE *", Quota::new(Window::per_minute(120)));
/// # let _ = per_key;
/// ```
#[derive(Clone)]
pub struct Limit {
    pub(crate) name: String,
    pub(crate) key: Arc<dyn KeyExtractor>,
    pub(crate) routes: Vec<(String, Quota)>,
    pub(crate) missing_key: MissingKey,
    pub(crate) shadow: bool,
    pub(crate) exempt_keys: Vec<String>,
    pub(crate) exempt_ips: Vec<String>,
    pub(crate) penalty: Option<Penalty>,
}

impl Limit {
    /// A limit named `name` (letters, digits, `_`, `-`, `.`) keyed by `key`.
    pub fn new(name: impl Into<String>, key: impl KeyExtractor) -> Self {
        Self::with_shared_key(name, Arc::new(key))
    }

    /// A limit with a shared key extractor.
    pub fn with_shared_key(name: impl Into<String>, key: Arc<dyn KeyExtractor>) -> Self {
        Limit {
            name: name.into(),
            key,
            routes: Vec::new(),
            missing_key: MissingKey::default(),
            shadow: false,
            exempt_keys: Vec::new(),
            exempt_ips: Vec::new(),
            penalty: None,
        }
    }

    /// Adds a route (`"[METHODS] PATTERN"`) and its quota, tried after the
    /// routes before it.
    #[must_use]
    pub fn route(mut self, route: impl Into<String>, quota: Quota) -> Self {
        self.routes.push((route.into(), quota));
        self
    }

    /// Adds a route for every request: the same as `.route("*", quota)`.
    #[must_use]
    pub fn quota(self, quota: Quota) -> Self {
        self.route("*", quota)
    }

    /// Sets what happens when a request has no usable key.
    #[must_use]
    pub fn on_missing_key(mut self, missing_key: MissingKey) -> Self {
        self.missing_key = missing_key;
        self
    }

    /// Runs the limit in shadow mode: it decides, sets headers and reports
    /// (in the [`Decision`](crate::Decision), the event hook and the logs)
    /// what it would have refused, but never refuses. It counts exactly what
    /// it would count if enforced, so switching it on is safe to rehearse.
    #[must_use]
    pub fn shadow(mut self, shadow: bool) -> Self {
        self.shadow = shadow;
        self
    }

    /// Keys this limit never applies to (internal keys, partner accounts …).
    /// Only their keyed hashes are kept once the policy is built.
    #[must_use]
    pub fn exempt_keys<I, S>(mut self, keys: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.exempt_keys.extend(keys.into_iter().map(Into::into));
        self
    }

    /// Peer addresses (IPs or CIDR ranges, such as `10.0.0.0/8`) this limit
    /// never applies to. Checked when the policy is built.
    #[must_use]
    pub fn exempt_ips<I, S>(mut self, ranges: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.exempt_ips.extend(ranges.into_iter().map(Into::into));
        self
    }

    /// Bans a key for a while after repeated refusals by this limit (Exotel:
    /// refused 20 times within 60 s → every request refused for 300 s). While
    /// banned, every request of the key that this limit applies to is refused
    /// with `Retry-After` the ban's remaining time and a body that says it is
    /// a temporary block; the counting rule is on [`Penalty`].
    #[must_use]
    pub fn penalty(mut self, penalty: Penalty) -> Self {
        self.penalty = Some(penalty);
        self
    }

    pub(crate) fn compile(&self, secret: &KeySecret) -> Result<CompiledLimit, ConfigError> {
        let valid_name = !self.name.is_empty()
            && self.name.len() <= 64
            && self
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
        if !valid_name {
            return Err(ConfigError::invalid(
                "name",
                format!(
                    "`{}`: a limit name is 1 to 64 letters, digits, `_`, `-` or `.`",
                    self.name.escape_debug()
                ),
            ));
        }
        if self.routes.is_empty() {
            return Err(ConfigError::invalid(
                "routes",
                "a limit needs at least one route",
            ));
        }
        let routes = self
            .routes
            .iter()
            .enumerate()
            .map(|(i, (spec, quota))| {
                let route = Route::parse(spec, quota.clone(), route_id(&self.name, i))
                    .map_err(|e| e.within(format!("routes[{i}]")))?;
                if let Some(capture) = self.key.required_capture() {
                    if !route.pattern.capture_names().any(|c| c == capture) {
                        return Err(ConfigError::new(
                            crate::ConfigErrorKind::UnknownName,
                            format!("routes[{i}].path"),
                            format!(
                                "the limit is keyed by the path capture `{{{capture}}}`, which `{}` does not have",
                                route.pattern
                            ),
                        ));
                    }
                }
                Ok(route)
            })
            .collect::<Result<_, ConfigError>>()?;
        Ok(CompiledLimit {
            name: self.name.as_str().into(),
            key: Arc::clone(&self.key),
            routes,
            missing_key: self.missing_key,
            shadow: self.shadow,
            penalty: self.penalty,
            penalty_domain: route_id(&self.name, usize::MAX - 1),
            exemptions: Exemptions::compile(
                &self.name,
                &self.exempt_keys,
                &self.exempt_ips,
                secret,
            )?,
        })
    }
}

impl fmt::Debug for Limit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Limit")
            .field("name", &self.name)
            .field("routes", &self.routes)
            .field("missing_key", &self.missing_key)
            .field("shadow", &self.shadow)
            .field(
                "exempt_keys",
                &format_args!("<{} keys>", self.exempt_keys.len()),
            )
            .field("exempt_ips", &self.exempt_ips)
            .field("penalty", &self.penalty)
            .finish_non_exhaustive()
    }
}

/// A limit ready to match requests.
pub(crate) struct CompiledLimit {
    pub(crate) name: Box<str>,
    pub(crate) key: Arc<dyn KeyExtractor>,
    pub(crate) routes: Box<[Route]>,
    pub(crate) missing_key: MissingKey,
    pub(crate) shadow: bool,
    pub(crate) penalty: Option<Penalty>,
    /// The hash domain of this limit's penalty keys: one per key, whatever
    /// the route.
    pub(crate) penalty_domain: u64,
    pub(crate) exemptions: Exemptions,
}

impl CompiledLimit {
    /// The first route that matches, with its index and captures.
    pub(crate) fn route_for<'s: 'p, 'p>(
        &'s self,
        method: &Method,
        path: &'p PathSegments<'p>,
    ) -> Option<(usize, &'s Route, Captures<'p>)> {
        self.routes.iter().enumerate().find_map(|(i, route)| {
            if !route.methods.contains(method) {
                return None;
            }
            route
                .pattern
                .matches(path)
                .map(|captures| (i, route, captures))
        })
    }
}

impl fmt::Debug for CompiledLimit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CompiledLimit")
            .field("name", &self.name)
            .field("routes", &self.routes)
            .finish_non_exhaustive()
    }
}

/// Methods and a path pattern, with the quota for requests that match.
#[derive(Debug)]
pub(crate) struct Route {
    pub(crate) methods: Methods,
    pub(crate) pattern: PathPattern,
    pub(crate) quota: Quota,
    /// Stable id of (limit, route index), hashed into every bucket.
    pub(crate) id: u64,
}

impl Route {
    fn parse(spec: &str, quota: Quota, id: u64) -> Result<Route, ConfigError> {
        let spec = spec.trim();
        let (methods, path) = match spec.split_once(char::is_whitespace) {
            Some((methods, path)) => (methods.parse::<Methods>()?, path.trim()),
            None => (Methods::ANY, spec),
        };
        let pattern = PathPattern::parse(path).map_err(|e| e.within("path"))?;
        quota.validate()?;
        Ok(Route {
            methods,
            pattern,
            quota,
            id,
        })
    }
}
