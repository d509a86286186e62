//! Hot reload: a handle that replaces a layer's whole policy, atomically,
//! while requests flow.
//!
//! A request loads the policy once, when it arrives, and is decided and
//! answered under it to its end; the next one sees the new policy. Counts
//! carry over: a bucket's id is the keyed hash of its limit's name, its
//! route's text (methods and pattern, not its place in the limit) and the
//! key, so every route of a limit that keeps its name keeps its buckets,
//! whatever routes come, go or move around it.
//!
//! * A route whose **windows are unchanged** keeps its counts exactly.
//! * A route whose **default quota changed** keeps them too, converted the
//!   way a key's changed plan or override is: the number of requests used
//!   in each window carries over to the new window of the same period (a
//!   window of a new period, or counted by the other algorithm, starts
//!   fresh; see
//!   [`Check::base`](crate::store::protocol::Check::base)).
//! * A **new limit** or route starts fresh; a removed one's counts are left
//!   to expire in the store. One that comes back (the same limit name and
//!   route text) while they may still live gets them back, converted from
//!   the quota they were counted at, as a changed quota's are.
//! * **Runtime overrides** set through the layer's
//!   [`overrides`](crate::RateLimitLayer::overrides) handle stay for the
//!   limits that keep their name (a plan by its name: one the new limit no
//!   longer names is dropped and counted in [`Changes::overrides_dropped`]).
//! * **In-flight requests** keep their slots, which go back to the same
//!   counts when they end; in-flight caps and penalty bans are kept per
//!   limit name and key, like buckets.
//! * The **key secret**: a policy that sets none hashes under the process's
//!   own, as the running one did. A policy that sets another secret moves
//!   every key to new buckets (and drops the runtime overrides), as
//!   [`Changes::key_secret`] says; one that sets none in place of a running
//!   policy's own is refused.
//! * The **memory cap**: a new policy's
//!   [`memory_max_entries`](crate::Policy::memory_max_entries), if it sets
//!   one, becomes the cap of the memory store that
//!   [`RateLimitLayer::new`](crate::RateLimitLayer::new) made from the
//!   running policy ([`Changes::memory_max_entries`]); nothing tracked is
//!   dropped under a lower one (see
//!   [`MemoryStore::set_max_entries`](crate::store::MemoryStore::set_max_entries)).
//!   A policy without one leaves the cap as it is, and a store given to the
//!   layer keeps its own.
//!
//! A policy that fails to parse or validate is refused with its
//! [`ConfigError`], and the running one stays. The layer's store and its
//! settings (clock, hook, where the decision goes) stay as they are.
//!
//! ```
//! use tower_ratelimit::{key::Header, Limit, Policy, Quota, RateLimitLayer, Window};
//!
//! let policy = |per_minute| {
//!     Policy::builder()
//!         .limit(Limit::new("per_key", Header::parse("X-API-Key").unwrap())
//!             .quota(Quota::new(Window::per_minute(per_minute))))
//!         .build()
//! };
//! let layer = RateLimitLayer::new(policy(60).unwrap());
//! let handle = layer.reload_handle();
//!
//! let changes = handle.replace(policy(120).unwrap()).unwrap();
//! assert_eq!(changes.changed, ["per_key"]);
//! assert_eq!(changes.to_string(), "changed: per_key");
//! assert!(changes.added.is_empty() && changes.removed.is_empty());
//! ```

use std::fmt;
use std::sync::Arc;

use crate::error::ConfigError;
use crate::policy::{carry_over, Policy, PolicyInner};
use crate::service::Current;

/// Replaces the policy of a [`RateLimitLayer`](crate::RateLimitLayer), of
/// every service it built and of its clones, from
/// [`RateLimitLayer::reload_handle`](crate::RateLimitLayer::reload_handle).
/// Cheap to clone, `Send + Sync`. The [module documentation](self) says
/// what carries over.
pub struct ReloadHandle<St> {
    current: Arc<Current<St>>,
}

impl<St> ReloadHandle<St> {
    pub(crate) fn new(current: Arc<Current<St>>) -> Self {
        ReloadHandle { current }
    }

    /// Puts `policy` in place of the running one, from the next request on,
    /// and says what changed. Refused, with the running policy left in
    /// place, if `policy` sets no key secret where the running one sets its
    /// own.
    pub fn replace(&self, policy: Policy) -> Result<Changes, ConfigError> {
        loop {
            let old = self.current.load_full();
            let (before, after) = (&*old.policy.inner, &*policy.inner);
            if before.secret_given && !after.secret_given {
                return Err(ConfigError::invalid(
                    "key_secret",
                    "the running policy sets a key secret and the new one sets none: \
                     keys would move to new buckets (and away from other processes)",
                ));
            }
            let mut changes = Changes::between(before, after);
            let next = Arc::new(old.with_policy(policy.clone(), old.now()));
            // Swapped only if no other reload got in first: else, again.
            // The store's cap follows in the same step, so that reloads
            // that race leave it as the policy that stays sets it.
            let (dropped, swapped) = carry_over(before, after, || {
                let previous = self.current.compare_and_swap(&old, next);
                Arc::ptr_eq(&previous, &old).then(|| match (old.resize, after.memory_max_entries) {
                    (Some(resize), Some(max)) => resize(&old.store, max).then_some(max),
                    _ => None,
                })
            });
            if let Some(resized) = swapped {
                changes.overrides_dropped = dropped;
                changes.memory_max_entries = resized;
                return Ok(changes);
            }
        }
    }

    /// Reads the policy file at `path` and puts it in place, as
    /// [`ReloadHandle::replace`] does; a file that cannot be read, parsed
    /// or validated is refused with its [`ConfigError`] (naming the line),
    /// and the running policy stays.
    #[cfg(feature = "toml")]
    #[cfg_attr(docsrs, doc(cfg(feature = "toml")))]
    pub fn reload_file(&self, path: impl AsRef<std::path::Path>) -> Result<Changes, ConfigError> {
        self.replace(Policy::from_toml_file(path)?)
    }

    /// The policy enforced now.
    pub fn policy(&self) -> Policy {
        self.current.load().policy.clone()
    }
}

impl<St> Clone for ReloadHandle<St> {
    fn clone(&self) -> Self {
        ReloadHandle {
            current: Arc::clone(&self.current),
        }
    }
}

impl<St> fmt::Debug for ReloadHandle<St> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReloadHandle").finish_non_exhaustive()
    }
}

/// What a reload changed, by limit name, for the logs; its
/// [`Display`](fmt::Display) is one line (`added: a; changed: b`, or
/// `no change`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Changes {
    /// Limits the new policy has and the old one had not.
    pub added: Vec<String>,
    /// Limits the old policy had and the new one has not (their counts are
    /// left to expire).
    pub removed: Vec<String>,
    /// Limits of both whose routes, quotas, plans, key, penalty,
    /// exemptions or mode differ.
    pub changed: Vec<String>,
    /// Runtime overrides not kept: their limit or plan is gone, or the key
    /// secret changed.
    pub overrides_dropped: usize,
    /// Whether the key secret changed: every key is counted afresh, in new
    /// buckets (limits with exempt keys show as changed too: their keys are
    /// hashed anew).
    pub key_secret: bool,
    /// The memory store's new cap, when the new policy sets another
    /// [`memory_max_entries`](crate::Policy::memory_max_entries) and the
    /// layer made its store from its policy
    /// ([`RateLimitLayer::new`](crate::RateLimitLayer::new)).
    pub memory_max_entries: Option<usize>,
}

impl Changes {
    fn between(old: &PolicyInner, new: &PolicyInner) -> Self {
        let find =
            |policy: &PolicyInner, name: &str| policy.limits.iter().position(|l| &*l.name == name);
        let mut changes = Changes {
            key_secret: old.secret != new.secret,
            ..Changes::default()
        };
        for limit in new.limits.iter() {
            let name = limit.name.to_string();
            match find(old, &limit.name) {
                None => changes.added.push(name),
                Some(i) if limit.differs_from(&old.limits[i]) => changes.changed.push(name),
                Some(_) => {}
            }
        }
        for limit in old.limits.iter() {
            if find(new, &limit.name).is_none() {
                changes.removed.push(limit.name.to_string());
            }
        }
        changes
    }

    /// Whether nothing changed: no limit added, removed or changed, no
    /// runtime override dropped, the same key secret and no new memory cap.
    pub fn is_empty(&self) -> bool {
        self.added.is_empty()
            && self.removed.is_empty()
            && self.changed.is_empty()
            && self.overrides_dropped == 0
            && !self.key_secret
            && self.memory_max_entries.is_none()
    }
}

impl fmt::Display for Changes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::new();
        for (what, names) in [
            ("added", &self.added),
            ("removed", &self.removed),
            ("changed", &self.changed),
        ] {
            if !names.is_empty() {
                parts.push(format!("{what}: {}", names.join(", ")));
            }
        }
        if self.key_secret {
            parts.push(String::from("key secret changed: every key counts afresh"));
        }
        if let Some(max) = self.memory_max_entries {
            parts.push(format!("memory cap: {max} entries"));
        }
        if self.overrides_dropped > 0 {
            parts.push(format!(
                "runtime overrides dropped: {}",
                self.overrides_dropped
            ));
        }
        if parts.is_empty() {
            f.write_str("no change")
        } else {
            f.write_str(&parts.join("; "))
        }
    }
}
