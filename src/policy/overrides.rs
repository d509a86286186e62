//! A key's own quotas: listed in the policy, or set at runtime through an
//! [`Overrides`] handle.

use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use parking_lot::{Mutex, RwLock};

use super::quota::Quota;
use super::{CompiledLimit, PolicyInner};
use crate::error::{ConfigError, ConfigErrorKind};
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
    /// Held while the table is written through a handle, or copied into
    /// a reloaded policy's (see [`carry_over`]).
    writes: Mutex<()>,
}

#[derive(Debug, Default)]
struct Slots {
    /// Entries in `map`: lets a limit with none skip hashing the key.
    len: AtomicUsize,
    map: RwLock<KeyMap<Entry>>,
    /// The overrides the policy lists: what `map` starts from whenever the
    /// policy is put in place (see [`carry_over`]).
    listed: KeyMap<Own>,
}

/// An override, and where it comes from.
#[derive(Debug, Clone)]
struct Entry {
    own: Own,
    /// Set through an [`Overrides`] handle rather than listed in the policy:
    /// a reload keeps it.
    runtime: bool,
}

impl OverrideTable {
    pub(crate) fn new(limits: usize) -> Self {
        OverrideTable {
            limits: (0..limits).map(|_| Slots::default()).collect(),
            writes: Mutex::new(()),
        }
    }

    /// Whether limit `limit` has any override.
    #[inline]
    pub(crate) fn any(&self, limit: usize) -> bool {
        self.limits[limit].len.load(Ordering::Relaxed) > 0
    }

    /// The override of `key` (its hash in the limit's override domain).
    pub(crate) fn get(&self, limit: usize, key: u64) -> Option<Own> {
        self.limits[limit]
            .map
            .read()
            .get(&key)
            .map(|entry| entry.own.clone())
    }

    /// Sets (or with `None`, removes) a key's override; whether it had one.
    fn set(&self, limit: usize, key: u64, entry: Option<Entry>) -> bool {
        let slots = &self.limits[limit];
        let mut map = slots.map.write();
        let had = match entry {
            Some(entry) => map.insert(key, entry),
            None => map.remove(&key),
        };
        slots.len.store(map.len(), Ordering::Relaxed);
        had.is_some()
    }

    /// Lists the policy's own overrides of limit `index`.
    pub(crate) fn load(&mut self, index: usize, listed: Vec<(u64, Own)>) {
        self.limits[index].listed = listed.into_iter().collect();
        self.restart(index);
    }

    /// Puts limit `index`'s overrides back to those the policy lists,
    /// without any set at runtime.
    fn restart(&self, index: usize) {
        let slots = &self.limits[index];
        let mut map = slots.map.write();
        map.clear();
        for (&key, own) in &slots.listed {
            let own = own.clone();
            let runtime = false;
            map.insert(key, Entry { own, runtime });
        }
        slots.len.store(map.len(), Ordering::Relaxed);
    }
}

/// Copies the overrides set at runtime in `old` into `new`, a policy that
/// replaces it, for the limits `new` still has (by name): a quota as it
/// is, a plan by its name. Returns how many it could not keep (their limit
/// or plan is gone, or the key secret changed). `new` starts from the
/// overrides it lists (whatever it held from an earlier time in place), and
/// a runtime override takes the place of one it lists for the same key.
///
/// `write` runs with both tables held against writes through handles, after
/// the copy: the caller swaps `new` in there, so that a handle's write lands
/// in `old` before the copy or in `new` after the swap.
pub(crate) fn carry_over<R>(
    old: &PolicyInner,
    new: &PolicyInner,
    write: impl FnOnce() -> R,
) -> (usize, R) {
    if std::ptr::eq(old, new) {
        // The running policy put in place again: its overrides stay.
        let _held = old.overrides.writes.lock();
        return (0, write());
    }
    let _old = old.overrides.writes.lock();
    let _new = new.overrides.writes.lock();
    // `new` may have run before, or have been half filled by a reload that
    // another got ahead of: it starts from its own list again.
    for index in 0..new.limits.len() {
        new.overrides.restart(index);
    }
    let mut dropped = 0;
    for (limit, slots) in old.limits.iter().zip(old.overrides.limits.iter()) {
        let map = slots.map.read();
        let runtime = || map.iter().filter(|(_, entry)| entry.runtime);
        let kept = new
            .limits
            .iter()
            .position(|l| l.name == limit.name)
            .filter(|_| new.secret == old.secret);
        let Some(index) = kept else {
            dropped += runtime().count();
            continue;
        };
        let target = &new.limits[index];
        for (&key, entry) in runtime() {
            let own = match &entry.own {
                Own::Quota(quota) => Some(Own::Quota(Arc::clone(quota))),
                Own::Plan(p) => target
                    .plans
                    .iter()
                    .position(|name| *name == limit.plans[usize::from(*p)])
                    .map(|p| Own::Plan(p as u8)),
            };
            match own {
                Some(own) => {
                    let runtime = true;
                    new.overrides.set(index, key, Some(Entry { own, runtime }));
                }
                None => dropped += 1,
            }
        }
    }
    (dropped, write())
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
    /// The policy to change: always the same one, or a layer's current.
    policy: Arc<dyn Fn() -> Arc<PolicyInner> + Send + Sync>,
}

impl Overrides {
    /// A handle on the policy `policy` returns when it is called.
    pub(crate) fn new(policy: impl Fn() -> Arc<PolicyInner> + Send + Sync + 'static) -> Self {
        Overrides {
            policy: Arc::new(policy),
        }
    }

    /// Runs `write` on the policy, held against a reload: a policy that a
    /// reload has replaced is never written.
    fn write<R>(&self, write: impl FnOnce(&PolicyInner) -> R) -> R {
        loop {
            let policy = (self.policy)();
            let _writing = policy.overrides.writes.lock();
            if Arc::ptr_eq(&policy, &(self.policy)()) {
                return write(&policy);
            }
        }
    }

    fn limit<'p>(
        policy: &'p PolicyInner,
        name: &str,
    ) -> Result<(usize, &'p CompiledLimit), ConfigError> {
        policy.limit(name).ok_or_else(|| {
            ConfigError::new(
                ConfigErrorKind::UnknownName,
                "limit",
                format!("the policy has no limit named `{}`", name.escape_debug()),
            )
        })
    }

    /// The keyed hash of the key a request of `limit` carries when an
    /// operator writes it as `key` (an address for a limit keyed by the
    /// client's IP …; see [`CompiledLimit::key_from_text`]).
    fn hash(policy: &PolicyInner, limit: &CompiledLimit, key: &str) -> Result<u64, ConfigError> {
        let key = limit.key_from_text(key, policy.max_key_len)?;
        let id = limit.key_id(&policy.secret, &key);
        Ok(crate::key::KeySecret::derive(id, limit.override_domain))
    }

    /// Gives `key` its own quota on every route of the limit named `limit`,
    /// from its next request on, in place of any plan or quota it had.
    /// `key` is read as the limit reads a request's key (an address for a
    /// limit keyed by the client's IP: see
    /// [`KeyExtractor::key_from_text`](crate::key::KeyExtractor::key_from_text)).
    /// Errors name what is wrong: an unknown limit, a key no request of
    /// the limit carries (empty, not an address …), or a quota that could
    /// never admit a request.
    pub fn set_quota(&self, limit: &str, key: &str, quota: Quota) -> Result<(), ConfigError> {
        self.set(limit, key, &OwnQuota::Quota(quota))
    }

    /// Puts `key` on the plan named `plan` in the limit named `limit`
    /// (whatever plan its requests carry), from its next request on, in
    /// place of any plan or quota it had. `key` is read as in
    /// [`Overrides::set_quota`]. Errors name what is wrong: an unknown
    /// limit, a key no request of the limit carries, or a plan no route of
    /// the limit names.
    pub fn set_plan(&self, limit: &str, key: &str, plan: &str) -> Result<(), ConfigError> {
        self.set(limit, key, &OwnQuota::Plan(plan.to_owned()))
    }

    fn set(&self, limit: &str, key: &str, value: &OwnQuota) -> Result<(), ConfigError> {
        self.write(|policy| {
            let (index, compiled) = Self::limit(policy, limit)?;
            let own = compiled.own(value)?;
            let key = Self::hash(policy, compiled, key)?;
            let runtime = true;
            policy
                .overrides
                .set(index, key, Some(Entry { own, runtime }));
            Ok(())
        })
    }

    /// Takes back the plan or quota `key` was given in the limit named
    /// `limit`, so its requests' own plan applies again; `Ok(false)` if it
    /// had none. (One the policy lists comes back if a reload lists it.)
    pub fn remove(&self, limit: &str, key: &str) -> Result<bool, ConfigError> {
        self.write(|policy| {
            let (index, compiled) = Self::limit(policy, limit)?;
            let key = Self::hash(policy, compiled, key)?;
            Ok(policy.overrides.set(index, key, None))
        })
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
            (plan, Own::Plan(_)) => plan,
            (_, Own::Quota(_)) => None,
        }
    }

    /// The override of `key` in the limit named `limit`, with the name of
    /// its plan if it is one.
    fn get(&self, limit: &str, key: &str) -> Option<(Option<String>, Own)> {
        let policy = (self.policy)();
        let (index, compiled) = Self::limit(&policy, limit).ok()?;
        let key = Self::hash(&policy, compiled, key).ok()?;
        let own = policy.overrides.get(index, key)?;
        let plan = match own {
            Own::Plan(p) => Some(compiled.plans[usize::from(p)].to_string()),
            Own::Quota(_) => None,
        };
        Some((plan, own))
    }
}

impl fmt::Debug for Overrides {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Overrides").finish_non_exhaustive()
    }
}
