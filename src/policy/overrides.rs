//! A key's own quotas: listed in the policy, or set at runtime through an
//! [`Overrides`] handle.

use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use parking_lot::RwLock;

use super::quota::Quota;
use super::{CompiledLimit, PolicyInner};
use crate::error::{ConfigError, ConfigErrorKind};
use crate::key::Key;
use crate::shard::KeyMap;

/// A key's own quotas in one limit, in place of those of its plan
/// (TalkPilot: limits chosen when the key is created), before it is
/// compiled against its limit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum OwnQuota {
    /// The key is on this plan (one that the limit's routes name in their
    /// [`Tiers`](crate::Tiers)), whatever the request says.
    Plan(String),
    /// The key gets this quota on every route of the limit.
    Quota(Quota),
}

/// An override, compiled against its limit.
#[derive(Debug, Clone)]
pub(crate) enum Own {
    /// An index into the limit's plans.
    Plan(u8),
    Quota(Arc<Quota>),
}

/// Every limit's overrides, by the keyed hash of the key.
#[derive(Debug)]
pub(crate) struct OverrideTable {
    limits: Box<[Slots]>,
}

#[derive(Debug, Default)]
struct Slots {
    /// Entries in `map`: lets a limit with none skip hashing the key.
    len: AtomicUsize,
    map: RwLock<KeyMap<Own>>,
}

impl OverrideTable {
    pub(crate) fn new(limits: usize) -> Self {
        OverrideTable {
            limits: (0..limits).map(|_| Slots::default()).collect(),
        }
    }

    /// Whether limit `limit` has any override.
    pub(crate) fn any(&self, limit: usize) -> bool {
        self.limits[limit].len.load(Ordering::Relaxed) > 0
    }

    /// The override of `key` (its hash in the limit's override domain).
    pub(crate) fn get(&self, limit: usize, key: u64) -> Option<Own> {
        self.limits[limit].map.read().get(&key).cloned()
    }

    /// Sets (or with `None`, removes) a key's override; whether it had one.
    fn set(&self, limit: usize, key: u64, own: Option<Own>) -> bool {
        let slots = &self.limits[limit];
        let mut map = slots.map.write();
        let had = match own {
            Some(own) => map.insert(key, own),
            None => map.remove(&key),
        };
        slots.len.store(map.len(), Ordering::Relaxed);
        had.is_some()
    }

    /// Lists the policy's own overrides of limit `index`.
    pub(crate) fn load(&self, index: usize, listed: Vec<(u64, Own)>) {
        for (key, own) in listed {
            self.set(index, key, Some(own));
        }
    }
}

/// Sets, changes and removes keys' own quotas while the layer runs.
///
/// Cheap to clone, `Send + Sync`; every layer built from the policy sees a
/// change on its next request, without a rebuild. A key keeps its counts
/// across a change: lowering its limit below what it has used refuses it at
/// once, raising it admits it at once. (The counts of a GCRA window are a
/// time debt; the store converts that debt to the new limit on the key's
/// next request, so the *number* of requests used is what carries over; see
/// [`Check::base`](crate::store::protocol::Check::base).)
///
/// ```
/// use tower_ratelimit::{key::Header, Limit, Policy, Quota, Tiers, Window};
///
/// let policy = Policy::builder()
///     .limit(Limit::new("per_key", Header::parse("x-api-key").unwrap())
///         .quota(Tiers::new(Quota::new(Window::per_minute(60)).and(Window::per_hour(1000)))
///             .plan("scale", Quota::new(Window::per_minute(600)))))
///     .build()
///     .unwrap();
/// let overrides = policy.overrides();
///
/// // TalkPilot: a key created with its own limits.
/// let custom = Quota::new(Window::per_minute(120)).and(Window::per_hour(5000));
/// overrides.set_quota("per_key", "tp_custom", custom.clone()).unwrap();
/// assert_eq!(overrides.quota_of("per_key", "tp_custom"), Some(custom));
///
/// // Another key moved to a plan.
/// overrides.set_plan("per_key", "tp_big", "scale").unwrap();
/// assert_eq!(overrides.plan_of("per_key", "tp_big").as_deref(), Some("scale"));
///
/// assert!(overrides.remove("per_key", "tp_custom").unwrap());
/// assert_eq!(overrides.quota_of("per_key", "tp_custom"), None);
/// assert!(overrides.set_plan("per_kye", "k", "scale").is_err());
/// assert!(overrides.set_plan("per_key", "k", "gold").is_err());
/// ```
#[derive(Clone)]
pub struct Overrides {
    policy: Arc<PolicyInner>,
}

impl Overrides {
    pub(crate) fn new(policy: Arc<PolicyInner>) -> Self {
        Overrides { policy }
    }

    fn limit(&self, name: &str) -> Result<(usize, &CompiledLimit), ConfigError> {
        self.policy
            .limits
            .iter()
            .enumerate()
            .find(|(_, l)| &*l.name == name)
            .ok_or_else(|| {
                ConfigError::new(
                    ConfigErrorKind::UnknownName,
                    "limit",
                    format!("the policy has no limit named `{}`", name.escape_debug()),
                )
            })
    }

    fn hash(&self, limit: &CompiledLimit, key: &str) -> Result<u64, ConfigError> {
        if key.is_empty() {
            return Err(ConfigError::invalid("key", "a key cannot be empty"));
        }
        Ok(self
            .policy
            .secret
            .named(limit.override_domain, &Key::from(key)))
    }

    /// Gives `key` its own quota on every route of the limit named `limit`,
    /// from its next request on, in place of any plan or quota it had.
    /// Errors name what is wrong: an unknown limit, an empty key, or a
    /// quota that could never admit a request.
    pub fn set_quota(&self, limit: &str, key: &str, quota: Quota) -> Result<(), ConfigError> {
        self.set(limit, key, &OwnQuota::Quota(quota))
    }

    /// Puts `key` on the plan named `plan` in the limit named `limit`
    /// (whatever plan its requests carry), from its next request on, in
    /// place of any plan or quota it had. Errors name what is wrong: an
    /// unknown limit, an empty key, or a plan no route of the limit names.
    pub fn set_plan(&self, limit: &str, key: &str, plan: &str) -> Result<(), ConfigError> {
        self.set(limit, key, &OwnQuota::Plan(plan.to_owned()))
    }

    fn set(&self, limit: &str, key: &str, value: &OwnQuota) -> Result<(), ConfigError> {
        let (index, compiled) = self.limit(limit)?;
        let own = compiled.own(value)?;
        let key = self.hash(compiled, key)?;
        self.policy.overrides.set(index, key, Some(own));
        Ok(())
    }

    /// Takes back the plan or quota `key` was given in the limit named
    /// `limit`, so its requests' own plan applies again; `Ok(false)` if it
    /// had none.
    pub fn remove(&self, limit: &str, key: &str) -> Result<bool, ConfigError> {
        let (index, compiled) = self.limit(limit)?;
        let key = self.hash(compiled, key)?;
        Ok(self.policy.overrides.set(index, key, None))
    }

    /// The quota `key` was given in the limit named `limit`
    /// ([`Overrides::set_quota`], [`Limit::key_quota`](crate::Limit::key_quota)),
    /// if it has one.
    pub fn quota_of(&self, limit: &str, key: &str) -> Option<Quota> {
        match self.get(limit, key)? {
            (_, Own::Quota(q)) => Some(Quota::clone(&q)),
            (_, Own::Plan(_)) => None,
        }
    }

    /// The plan `key` was put on in the limit named `limit`
    /// ([`Overrides::set_plan`], [`Limit::key_plan`](crate::Limit::key_plan)),
    /// if it was.
    pub fn plan_of(&self, limit: &str, key: &str) -> Option<String> {
        match self.get(limit, key)? {
            (compiled, Own::Plan(p)) => Some(compiled.plans[usize::from(p)].to_string()),
            (_, Own::Quota(_)) => None,
        }
    }

    /// The override of `key` in the limit named `limit`, with that limit.
    fn get(&self, limit: &str, key: &str) -> Option<(&CompiledLimit, Own)> {
        let (index, compiled) = self.limit(limit).ok()?;
        let key = self.hash(compiled, key).ok()?;
        Some((compiled, self.policy.overrides.get(index, key)?))
    }
}

impl fmt::Debug for Overrides {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Overrides").finish_non_exhaustive()
    }
}
