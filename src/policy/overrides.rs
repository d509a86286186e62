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
/// (TalkPilot: limits chosen when the key is created).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Override {
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
/// use tower_ratelimit::{key::Header, Limit, Override, Policy, Quota, Window};
///
/// let policy = Policy::builder()
///     .limit(Limit::new("per_key", Header::parse("x-api-key").unwrap())
///         .quota(Quota::new(Window::per_minute(60)).and(Window::per_hour(1000))))
///     .build()
///     .unwrap();
/// let overrides = policy.overrides();
///
/// // TalkPilot: a key created with its own limits.
/// let custom = Quota::new(Window::per_minute(120)).and(Window::per_hour(5000));
/// overrides.set("per_key", "tp_custom", Override::Quota(custom.clone())).unwrap();
/// assert_eq!(overrides.get("per_key", "tp_custom"), Some(Override::Quota(custom)));
///
/// assert!(overrides.remove("per_key", "tp_custom").unwrap());
/// assert!(overrides.set("per_kye", "k", Override::Plan("gold".into())).is_err());
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

    /// Gives `key` its own quotas in the limit named `limit`, from its next
    /// request on. Errors name what is wrong: an unknown limit or plan, or
    /// a quota that could never admit a request.
    pub fn set(&self, limit: &str, key: &str, value: Override) -> Result<(), ConfigError> {
        let (index, compiled) = self.limit(limit)?;
        let own = compiled.own(&value)?;
        let key = self.hash(compiled, key)?;
        self.policy.overrides.set(index, key, Some(own));
        Ok(())
    }

    /// Puts `key` back on its plan in the limit named `limit`; `Ok(false)`
    /// if it had no override.
    pub fn remove(&self, limit: &str, key: &str) -> Result<bool, ConfigError> {
        let (index, compiled) = self.limit(limit)?;
        let key = self.hash(compiled, key)?;
        Ok(self.policy.overrides.set(index, key, None))
    }

    /// The override of `key` in the limit named `limit`, if it has one.
    pub fn get(&self, limit: &str, key: &str) -> Option<Override> {
        let (index, compiled) = self.limit(limit).ok()?;
        let key = self.hash(compiled, key).ok()?;
        Some(match self.policy.overrides.get(index, key)? {
            Own::Plan(p) => Override::Plan(compiled.plans[usize::from(p)].to_string()),
            Own::Quota(q) => Override::Quota(Quota::clone(&q)),
        })
    }
}

impl fmt::Debug for Overrides {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Overrides").finish_non_exhaustive()
    }
}
