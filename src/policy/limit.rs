//! Limits: a named, independently counted limit with a key and a route table.

use std::fmt;
use std::sync::Arc;

use super::overrides::{Own, OwnQuota};
use super::quota::Quota;
use super::tiers::Tiers;
use crate::error::{key_segment, ConfigError, ConfigErrorKind};
use crate::key::{domain_id, key_domain, operator_key, route_id, Key, KeyExtractor, KeySecret};
use crate::penalty::Penalty;
use crate::policy::exemptions::Exemptions;
use crate::route::{self, Captures, Methods, PathSegments};

/// One named, independently counted limit: whose key, which routes, which
/// quotas.
///
/// Routes are tried in order and the first match wins ("partition": Nixflex's
/// `POST /v1/keys` is 10/hour *instead of* the write quota). Every limit of a
/// policy whose routes match applies ("stacking": Flireo counts a call-control
/// command against the key's 100/minute *and* the call's 10/minute). Each
/// route counts in its own bucket.
///
/// A route is the text `"[METHODS] PATTERN"`: `"POST /v1/keys"`,
/// `"POST,PUT,PATCH,DELETE *"`, `"/v1/calls/{call_id}/control"` (any method),
/// `"*"` (everything). Methods are a comma-separated list (`GET`, `HEAD`,
/// `POST`, `PUT`, `PATCH`, `DELETE` …, or `*` for any), whatever their case.
/// A pattern is literal segments, `{captures}` (one segment each, which key
/// extractors such as [`PathCapture`](crate::key::PathCapture) read) and a
/// final `*` (the rest of the path); empty segments are ignored and literals
/// are compared percent-decoded, so `//v1/%6Beys/` cannot slip past
/// `/v1/keys`.
///
/// A route that names `GET` also matches `HEAD`, and counts a `HEAD` as the
/// `GET` it stands for, in the same bucket: axum and most routers answer
/// `HEAD` with the `GET` handler, so a `HEAD` must not be a free `GET`.
/// [`Limit::route_without_head`] (`head = false` in a policy file) leaves
/// `HEAD` out of a route; to count `HEAD` apart, give it a route of its own
/// before the `GET` route, or leave it out of the `GET` route.
///
/// ```
/// use tower_ratelimit::{key::Header, Limit, Quota, Window};
///
/// // Nixflex, per API key.
/// let per_key = Limit::new("per_key", Header::bearer())
///     .route("POST /v1/keys", Quota::new(Window::per_hour(10)))
///     .route("GET *", Quota::new(Window::per_minute(600)))
///     .route("POST,PUT,PATCH,DELETE *", Quota::new(Window::per_minute(120)));
/// # let _ = per_key;
/// ```
#[derive(Clone)]
pub struct Limit {
    pub(crate) name: String,
    pub(crate) key: Arc<dyn KeyExtractor>,
    pub(crate) routes: Vec<RouteEntry>,
    pub(crate) skip_missing_key: bool,
    pub(crate) shadow: bool,
    pub(crate) exempt_keys: Vec<String>,
    pub(crate) exempt_ips: Vec<String>,
    pub(crate) penalty: Option<Penalty>,
    pub(crate) plan: Option<Arc<dyn KeyExtractor>>,
    pub(crate) overrides: Vec<(String, OwnQuota)>,
}

impl Limit {
    /// A limit named `name` (letters, digits, `_`, `-`, `.`) keyed by `key`.
    pub fn new(name: impl Into<String>, key: impl KeyExtractor) -> Self {
        Self::with_shared_key(name, Arc::new(key))
    }

    /// A global limit named `name`: every request it applies to counts in
    /// one bucket, a whole-API ceiling (`key = { global = true }` in a policy file).
    /// It has no key to miss, so a request without one is counted like any
    /// other; no keyed limit ever falls back to it by accident.
    ///
    /// ```
    /// use tower_ratelimit::{Limit, Quota, Window};
    ///
    /// let ceiling = Limit::global("all").quota(Quota::new(Window::per_second(500)));
    /// # let _ = ceiling;
    /// ```
    pub fn global(name: impl Into<String>) -> Self {
        Self::new(name, crate::key::Global)
    }

    /// A limit with a shared key extractor.
    pub fn with_shared_key(name: impl Into<String>, key: Arc<dyn KeyExtractor>) -> Self {
        Limit {
            name: name.into(),
            key,
            routes: Vec::new(),
            skip_missing_key: false,
            shadow: false,
            exempt_keys: Vec::new(),
            exempt_ips: Vec::new(),
            penalty: None,
            plan: None,
            overrides: Vec::new(),
        }
    }

    /// Adds a route (its text, `"[METHODS] PATTERN"`) and its quota (a [`Quota`], or [`Tiers`] of
    /// quotas by plan), tried after the routes before it. If it names `GET`,
    /// it matches `HEAD` too, counted in the same bucket. A route whose text
    /// does not parse is reported by [`PolicyBuilder::build`](crate::PolicyBuilder::build).
    #[must_use]
    pub fn route(mut self, route: impl AsRef<str>, quota: impl Into<Tiers>) -> Self {
        self.routes.push(RouteEntry {
            route: route::Route::parse(route.as_ref()),
            tiers: quota.into(),
        });
        self
    }

    /// Adds a route like [`Limit::route`] whose `GET` does *not* also match
    /// `HEAD` (`head = false` in a policy file): a `HEAD` request goes on to
    /// the routes after it, and this limit does not count it if none
    /// matches. The route must name `GET` and not name `HEAD` (else
    /// [`PolicyBuilder::build`](crate::PolicyBuilder::build) reports it; the
    /// error's field is `head`).
    ///
    /// Only for a service that answers `HEAD` cheaply: axum and hyper run
    /// the `GET` handler for a `HEAD` (and drop the body), so there a `HEAD`
    /// costs what a `GET` does, and this route's quota would not hold it.
    ///
    /// ```
    /// use tower_ratelimit::{key::Header, Limit, Quota, Window};
    ///
    /// // Downloads are 10/minute; a HEAD, which the service answers from
    /// // its index without reading the file, is counted by the next route.
    /// let per_key = Limit::new("per_key", Header::bearer())
    ///     .route_without_head("GET /v1/recordings/{id}", Quota::new(Window::per_minute(10)))
    ///     .route("GET *", Quota::new(Window::per_minute(600)));
    /// # let _ = per_key;
    /// ```
    #[must_use]
    pub fn route_without_head(mut self, route: impl AsRef<str>, quota: impl Into<Tiers>) -> Self {
        self.routes.push(RouteEntry {
            route: route::Route::parse(route.as_ref()).and_then(route::Route::without_head),
            tiers: quota.into(),
        });
        self
    }

    /// Adds a route already built (from a policy file's table): as
    /// [`Limit::route`], or as [`Limit::route_without_head`] when `head` is
    /// false.
    #[cfg(feature = "toml")]
    pub(crate) fn built_route(mut self, route: route::Route, head: bool, quota: Tiers) -> Self {
        self.routes.push(RouteEntry {
            route: if head {
                Ok(route)
            } else {
                route.without_head()
            },
            tiers: quota,
        });
        self
    }

    /// Adds a route for every request: the same as `.route("*", quota)`.
    #[must_use]
    pub fn quota(self, quota: impl Into<Tiers>) -> Self {
        self.route("*", quota)
    }

    /// Reads each request's plan with `plan` (an extractor whose value is
    /// the plan's name, such as the plan an authentication layer put in the
    /// request's extensions); routes give each plan its quota with
    /// [`Tiers`]. A request with no plan, or a plan a route does not name,
    /// gets the route's default quota.
    ///
    /// ```
    /// use tower_ratelimit::{key::{Extension, Key}, Limit, Quota, Tiers, Window};
    ///
    /// #[derive(Clone)]
    /// struct Account { id: u64, plan: String }
    ///
    /// let per_account = Limit::new("per_account", Extension::new(|a: &Account| Key::from(a.id)))
    ///     .plan_from(Extension::new(|a: &Account| Key::from(a.plan.as_str())))
    ///     .quota(Tiers::new(Quota::new(Window::per_minute(100)))
    ///         .plan("pro", Quota::new(Window::per_minute(1000))));
    /// # let _ = per_account;
    /// ```
    #[must_use]
    pub fn plan_from(mut self, plan: impl KeyExtractor) -> Self {
        self.plan = Some(Arc::new(plan));
        self
    }

    /// Gives `key` its own quota on every route of this limit, whatever plan
    /// its requests carry. `key` is read as this limit reads a request's
    /// key (an address for a limit keyed by the client's IP: see
    /// [`KeyExtractor::key_from_text`]); one that no request carries is
    /// reported by [`PolicyBuilder::build`](crate::PolicyBuilder::build).
    /// Keys listed here are kept only as keyed hashes;
    /// [`Policy::overrides`](crate::Policy::overrides) changes them at
    /// runtime. Two entries for one key are a [`ConfigError`].
    #[must_use]
    pub fn key_quota(mut self, key: impl Into<String>, quota: Quota) -> Self {
        self.overrides.push((key.into(), OwnQuota::Quota(quota)));
        self
    }

    /// Puts `key` on the plan named `plan` (one that the routes name in
    /// their [`Tiers`]) in this limit, whatever plan its requests carry.
    /// Like [`Limit::key_quota`], kept only as a keyed hash and changed at
    /// runtime through [`Policy::overrides`](crate::Policy::overrides).
    #[must_use]
    pub fn key_plan(mut self, key: impl Into<String>, plan: impl Into<String>) -> Self {
        self.overrides
            .push((key.into(), OwnQuota::Plan(plan.into())));
        self
    }

    /// With `true`, a request whose key is *missing* is not subject to this
    /// limit (other limits still apply). The default, `false`, answers it
    /// with a 401 JSON error that says what is wrong: the request is not
    /// counted and never reaches the inner service.
    ///
    /// A key that is present but unusable (empty, conflicting, too long …)
    /// is answered with a 401 either way, so a client cannot escape its
    /// bucket by breaking its key. Skip a missing key only where an
    /// unidentified request is limited elsewhere (`on_missing_key = "skip"`
    /// in a policy file).
    #[must_use]
    pub fn skip_missing_key(mut self, skip: bool) -> Self {
        self.skip_missing_key = skip;
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

    /// The limit as requests use it, its keys hashed under `secret`; keys an
    /// operator listed are at most `max_key_len` bytes, as requests' are.
    pub(crate) fn compile(
        &self,
        secret: &KeySecret,
        max_key_len: usize,
    ) -> Result<CompiledLimit, ConfigError> {
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
        if self.routes.len() > MAX_ROUTES {
            return Err(ConfigError::invalid(
                "routes",
                format!("a limit has at most {MAX_ROUTES} routes"),
            ));
        }
        self.key.check().map_err(|e| e.within("key"))?;
        let mut plans: Vec<Box<str>> = Vec::new();
        for route in &self.routes {
            for (name, _) in &route.tiers.plans {
                if !plans.iter().any(|p| **p == **name) {
                    plans.push(name.as_str().into());
                }
            }
        }
        if plans.len() > usize::from(u8::MAX) {
            return Err(ConfigError::invalid(
                "routes",
                format!("a limit names at most {} plans", u8::MAX),
            ));
        }
        let mut texts: Vec<String> = Vec::with_capacity(self.routes.len());
        let routes = self
            .routes
            .iter()
            .enumerate()
            .map(|(i, entry)| {
                let route = Route::compile(entry, &plans, |text| {
                    let nth = texts.iter().filter(|t| **t == text).count();
                    let id = route_id(&self.name, &text, nth);
                    texts.push(text);
                    id
                })
                .map_err(|e| e.within(format!("routes[{i}]")))?;
                for capture in self.key.required_captures() {
                    if !route.matcher.pattern().capture_names().any(|c| c == capture) {
                        return Err(ConfigError::new(
                            crate::error::ConfigErrorKind::UnknownName,
                            format!("routes[{i}].path"),
                            format!(
                                "the limit is keyed by the path capture `{{{capture}}}`, which `{}` does not have",
                                route.matcher.pattern()
                            ),
                        ));
                    }
                }
                Ok(route)
            })
            .collect::<Result<Box<[Route]>, ConfigError>>()?;
        // The first matching route wins: one that an earlier route matches
        // every request of would never count anything.
        for (j, later) in routes.iter().enumerate() {
            if let Some(i) = routes[..j]
                .iter()
                .position(|earlier| earlier.matcher.covers(&later.matcher))
            {
                return Err(ConfigError::invalid(
                    format!("routes[{j}]"),
                    format!(
                        "`{}` can never match: routes[{i}] (`{}`) comes first and matches \
                         every request it would (put the narrower route first)",
                        later.matcher, routes[i].matcher
                    ),
                ));
            }
            if let Some(by) = later
                .matcher
                .covered_by(routes[..j].iter().map(|r| &r.matcher))
            {
                let named: Vec<String> = by
                    .iter()
                    .map(|&i| format!("routes[{i}] (`{}`)", routes[i].matcher))
                    .collect();
                return Err(ConfigError::invalid(
                    format!("routes[{j}]"),
                    format!(
                        "`{}` can never match: {} come first and together match every \
                         request it would (put the narrower route first)",
                        later.matcher,
                        named.join(", ")
                    ),
                ));
            }
        }
        one_cap_per_key(&routes, &plans)?;
        let mut limit = CompiledLimit {
            name: self.name.as_str().into(),
            key: Arc::clone(&self.key),
            routes,
            skip_missing_key: self.skip_missing_key,
            shadow: self.shadow,
            penalty: self.penalty,
            key_domain: key_domain(&self.key.describe()),
            penalty_domain: domain_id(&self.name, 1),
            override_domain: domain_id(&self.name, 2),
            concurrency_domain: domain_id(&self.name, 3),
            exemptions: Exemptions::compile(
                &self.name,
                &*self.key,
                max_key_len,
                &self.exempt_keys,
                &self.exempt_ips,
                (secret, key_domain(&self.key.describe())),
            )?,
            plan: self.plan.clone(),
            plans: plans.into(),
            listed: Vec::new(),
        };
        limit.listed = self
            .overrides
            .iter()
            .enumerate()
            .map(|(i, (key, value))| {
                // An empty key is one no request carries, as is too long a
                // one or (for a limit keyed by IP) one that is no address.
                let key = limit
                    .key_from_text(key, max_key_len)
                    .map_err(|e| e.within(format!("overrides[{i}]")))?;
                let own = limit
                    .own(value)
                    .map_err(|e| e.within(format!("overrides[{i}]")))?;
                let hash = KeySecret::derive(limit.key_id(secret, &key), limit.override_domain);
                Ok((hash, own))
            })
            .collect::<Result<_, ConfigError>>()?;
        // Two entries for one key (in any of its spellings): which one
        // applies would be a guess.
        let mut first = std::collections::HashMap::with_capacity(limit.listed.len());
        for (j, (hash, _)) in limit.listed.iter().enumerate() {
            if let Some(i) = first.insert(*hash, j) {
                return Err(ConfigError::invalid(
                    format!("overrides[{j}].key"),
                    format!("the same key as overrides[{i}]: a key has one override"),
                ));
            }
        }
        Ok(limit)
    }
}

impl fmt::Debug for Limit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Limit")
            .field("name", &self.name)
            .field("routes", &self.routes)
            .field("skip_missing_key", &self.skip_missing_key)
            .field("shadow", &self.shadow)
            .field(
                "exempt_keys",
                &format_args!("<{} keys>", self.exempt_keys.len()),
            )
            .field("exempt_ips", &self.exempt_ips)
            .field("penalty", &self.penalty)
            .field("plan_from", &self.plan.as_ref().map(|p| p.describe()))
            .field(
                "overrides",
                &format_args!("<{} keys>", self.overrides.len()),
            )
            .finish_non_exhaustive()
    }
}

/// A route as [`Limit::route`] or [`Limit::route_without_head`] took it.
#[derive(Debug, Clone)]
pub(crate) struct RouteEntry {
    /// The route, or why its text is not one (reported when the policy is
    /// built).
    route: Result<route::Route, ConfigError>,
    tiers: Tiers,
}

/// Refuses routes that would give one key two in-flight caps: the routes of
/// a limit share each key's count of requests in flight, so under each plan
/// (and with none) every route with a cap must have the same one.
fn one_cap_per_key(routes: &[Route], plans: &[Box<str>]) -> Result<(), ConfigError> {
    let plan_indices = (0..plans.len()).map(|p| Some(p as u8));
    for plan in std::iter::once(None).chain(plan_indices) {
        let mut first: Option<(usize, u32)> = None;
        for (j, route) in routes.iter().enumerate() {
            let Some(cap) = route.plan_quota(plan).in_flight_cap() else {
                continue;
            };
            let Some((i, before)) = first else {
                first = Some((j, cap));
                continue;
            };
            if cap == before {
                continue;
            }
            let own_plan = plan.filter(|&p| route.plans[usize::from(p)].is_some());
            let field = match own_plan {
                Some(p) => format!(
                    "routes[{j}].plans.{}.concurrency",
                    key_segment(&plans[usize::from(p)])
                ),
                None => format!("routes[{j}].concurrency"),
            };
            let under = plan.map_or(String::new(), |p| {
                format!(" on plan `{}`", plans[usize::from(p)])
            });
            return Err(ConfigError::invalid(
                field,
                format!(
                    "`{}` caps a key's requests in flight at {cap}{under}, but routes[{i}] \
                     (`{}`) at {before}: the routes of a limit share each key's count of \
                     requests in flight, so they take one cap (put a route with a cap of \
                     its own in a limit of its own)",
                    route.matcher, routes[i].matcher
                ),
            ));
        }
    }
    Ok(())
}

/// A limit ready to match requests.
pub(crate) struct CompiledLimit {
    pub(crate) name: Box<str>,
    pub(crate) key: Arc<dyn KeyExtractor>,
    pub(crate) routes: Box<[Route]>,
    pub(crate) skip_missing_key: bool,
    pub(crate) shadow: bool,
    pub(crate) penalty: Option<Penalty>,
    /// The hash domain of this limit's key ids, its key extractor's (see
    /// [`key_domain`]): a request's key is hashed once per limit, into an
    /// id shared by every limit keyed the same way (the request's principal
    /// for that key), and the limit's bucket, penalty key and in-flight
    /// count are derived from that id in domains of the limit's own (see
    /// [`KeySecret::derive`]).
    pub(crate) key_domain: u64,
    /// The domain of this limit's penalty keys: one per key, whatever
    /// the route.
    pub(crate) penalty_domain: u64,
    /// The hash domain of this limit's overrides.
    pub(crate) override_domain: u64,
    /// The domain of this limit's in-flight slots: one count per key,
    /// whatever the route.
    pub(crate) concurrency_domain: u64,
    pub(crate) exemptions: Exemptions,
    /// Where a request's plan comes from.
    pub(crate) plan: Option<Arc<dyn KeyExtractor>>,
    /// The plans the routes name, in order of first mention.
    pub(crate) plans: Box<[Box<str>]>,
    /// The overrides the policy lists: keyed hashes and values.
    pub(crate) listed: Vec<(u64, Own)>,
}

/// The most routes one limit may have.
const MAX_ROUTES: usize = 64;

impl CompiledLimit {
    /// Compiles an override against this limit's plans.
    pub(crate) fn own(&self, value: &OwnQuota) -> Result<Own, ConfigError> {
        match value {
            OwnQuota::Plan(name) => self
                .plans
                .iter()
                .position(|p| **p == **name)
                .map(|i| Own::Plan(i as u8))
                .ok_or_else(|| {
                    let known: Vec<_> = self.plans.iter().map(|p| format!("`{p}`")).collect();
                    ConfigError::new(
                        ConfigErrorKind::UnknownName,
                        "plan",
                        format!(
                            "no route of limit `{}` names the plan `{}` (known: {})",
                            self.name,
                            name.escape_debug(),
                            if known.is_empty() {
                                "none".to_string()
                            } else {
                                known.join(", ")
                            }
                        ),
                    )
                }),
            OwnQuota::Quota(quota) => {
                quota.validate().map_err(|e| e.within("quota"))?;
                Ok(Own::Quota(Arc::new(quota.clone())))
            }
        }
    }

    /// Whether this limit, in a policy that replaces the one `old` is in,
    /// is enforced otherwise than `old` (by name: same routes, quotas,
    /// plans, key, penalty, exemptions and mode, or not).
    pub(crate) fn differs_from(&self, old: &CompiledLimit) -> bool {
        let same_routes = self.routes.len() == old.routes.len()
            && self.routes.iter().zip(old.routes.iter()).all(|(a, b)| {
                a.id == b.id && a.matcher == b.matcher && a.quota == b.quota && a.plans == b.plans
            });
        let describe = |l: &CompiledLimit| {
            (
                l.key.settings().into_owned(),
                l.plan.as_ref().map(|p| p.settings().into_owned()),
            )
        };
        !(same_routes
            && self.plans == old.plans
            && describe(self) == describe(old)
            && self.skip_missing_key == old.skip_missing_key
            && self.shadow == old.shadow
            && self.penalty == old.penalty
            && self.exemptions == old.exemptions)
    }

    /// The id of `key` in this limit, hashed under `secret`: the one full
    /// hash of a request's key per limit, from which its buckets, penalty
    /// key and in-flight count are derived (see [`KeySecret::derive`]).
    #[inline]
    pub(crate) fn key_id(&self, secret: &KeySecret, key: &Key<'_>) -> u64 {
        secret.id(self.key_domain, key)
    }

    /// [`operator_key`] of this limit's extractor, as an error on the
    /// field `key`.
    pub(crate) fn key_from_text<'t>(
        &self,
        text: &'t str,
        max_len: usize,
    ) -> Result<Key<'t>, ConfigError> {
        operator_key(&*self.key, text, max_len).map_err(|why| ConfigError::invalid("key", why))
    }

    /// The index of the plan named `name`, if a route names it.
    pub(crate) fn plan_index(&self, name: &Key<'_>) -> Option<u8> {
        let name = name.to_bytes();
        self.plans
            .iter()
            .position(|p| p.as_bytes() == &*name)
            .map(|i| i as u8)
    }

    /// The first route that matches, with its index and captures.
    #[inline]
    pub(crate) fn route_for<'s: 'p, 'p>(
        &'s self,
        method: Methods,
        path: &'p PathSegments<'p>,
    ) -> Option<(usize, &'s Route, Captures<'p>)> {
        self.routes.iter().enumerate().find_map(|(i, route)| {
            route
                .matcher
                .matches(method, path)
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

/// The requests a route matches, with their quota.
#[derive(Debug)]
pub(crate) struct Route {
    /// Which requests match: methods and a path pattern.
    pub(crate) matcher: route::Route,
    /// The default quota.
    pub(crate) quota: Quota,
    /// The quota of each of the limit's plans, where this route names it.
    pub(crate) plans: Box<[Option<Quota>]>,
    /// Stable id of the limit and the route's text, hashed into every
    /// bucket (see [`route_id`]).
    pub(crate) id: u64,
    /// The route's place among all the policy's routes, limit by limit
    /// (see [`Succession`](super::Succession)).
    pub(crate) flat: usize,
}

impl Route {
    /// Compiles `entry`; `id` gives the id of the route's text.
    fn compile(
        entry: &RouteEntry,
        plans: &[Box<str>],
        id: impl FnOnce(String) -> u64,
    ) -> Result<Route, ConfigError> {
        let RouteEntry { route, tiers } = entry;
        let matcher = route.clone()?;
        let id = id(matcher.to_string());
        tiers.default.validate()?;
        for (name, quota) in &tiers.plans {
            quota.validate().map_err(|e| e.within_key("plans", name))?;
        }
        let plans = plans
            .iter()
            .map(|p| {
                tiers
                    .plans
                    .iter()
                    .find(|(n, _)| **n == **p)
                    .map(|(_, q)| q.clone())
            })
            .collect();
        Ok(Route {
            matcher,
            quota: tiers.default.clone(),
            flat: 0,
            plans,
            id,
        })
    }

    /// The quota of a request whose key has `own` (a plan, an index into
    /// the limit's plans, or a quota of its own); with `None`, or a plan
    /// this route has no quota for, the route's default.
    pub(crate) fn quota_of<'a>(&'a self, own: Option<&'a Own>) -> &'a Quota {
        match own {
            Some(Own::Quota(quota)) => quota,
            Some(Own::Plan(p)) => self.plan_quota(Some(*p)),
            None => self.plan_quota(None),
        }
    }

    /// The quota of plan `plan` (an index into the limit's plans); with
    /// `None`, or a plan this route has no quota for, the route's default.
    pub(crate) fn plan_quota(&self, plan: Option<u8>) -> &Quota {
        plan.and_then(|p| self.plans.get(usize::from(p)))
            .and_then(Option::as_ref)
            .unwrap_or(&self.quota)
    }
}
