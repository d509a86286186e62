//! The layer: a policy, a store and a clock, shared by every service it builds.

use std::fmt;
use std::sync::Arc;

use arc_swap::ArcSwap;
use tower_layer::Layer;

use crate::clock::{Clock, LayerClock, SystemClock};
use crate::event::{Event, Hook};
use crate::inflight::ConcurrencyLimiter;
use crate::policy::{Overrides, Policy};
use crate::reload::ReloadHandle;
use crate::service::{Current, Metrics, RateLimit, Shared};
use crate::store::{MemoryStore, Store};

/// Applies a rate-limit [`Policy`] to a service.
///
/// Cloning the layer (or the services it builds) shares the policy, the
/// store and the clock: every clone counts in the same buckets.
///
/// With the cargo feature `metrics`, building the layer registers each
/// limit's metrics with the `metrics` recorder installed then (none: they
/// record nothing), so install it before.
///
/// ```
/// use tower_ratelimit::{key::Header, Limit, Policy, Quota, RateLimitLayer, Window};
///
/// let policy = Policy::builder()
///     .limit(Limit::new("per_key", Header::parse("X-API-Key").unwrap())
///         .quota(Quota::new(Window::per_minute(60)).and(Window::per_hour(1000))))
///     .build()
///     .unwrap();
/// let layer = RateLimitLayer::new(policy);
/// # let _ = layer;
/// ```
#[must_use]
pub struct RateLimitLayer<St = MemoryStore> {
    current: Arc<Current<St>>,
    store: Arc<St>,
}

impl RateLimitLayer<MemoryStore> {
    /// Enforces `policy` with counts in this process's memory: a
    /// [`MemoryStore`] capped at the policy's
    /// [`memory_max_entries`](Policy::memory_max_entries) if it sets one,
    /// else [`MemoryStore::new`]. A reloaded policy that sets one changes
    /// the cap (see [`MemoryStore::set_max_entries`]).
    pub fn new(policy: Policy) -> Self {
        let store = match policy.memory_max_entries() {
            Some(max) => MemoryStore::with_max_entries(max),
            None => MemoryStore::new(),
        };
        Self::with_store(policy, store)
            .set(|shared| shared.resize = Some(MemoryStore::set_max_entries))
    }
}

impl<St: Store> RateLimitLayer<St> {
    /// Enforces `policy` with counts in `store` (a memory store keeps the
    /// cap it was built with, whatever the policy's, or a reloaded policy's,
    /// [`memory_max_entries`](Policy::memory_max_entries)).
    pub fn with_store(policy: Policy, store: St) -> Self {
        Self::with_shared_store(policy, Arc::new(store))
    }

    /// Enforces `policy` with counts in a store shared with other layers.
    ///
    /// A store that other processes share ([`Store::shares_counts`]) needs
    /// a policy with a key secret of its own
    /// ([`Policy::has_key_secret`]); without one, this logs a warning.
    pub fn with_shared_store(policy: Policy, store: Arc<St>) -> Self {
        if store.shares_counts() && !policy.has_key_secret() {
            tracing::warn!(
                "the rate-limit store is shared with other processes, but the policy's key \
                 secret is random: this process counts every key in buckets of its own; \
                 give every process the same key_secret"
            );
        }
        let shared = Shared {
            metrics: Metrics::new(&policy),
            policy,
            succession: Arc::default(),
            store: Arc::clone(&store),
            clock: LayerClock::System(SystemClock::new()),
            decision_extensions: false,
            current_decision: true,
            on_event: None,
            resize: None,
            in_flight: ConcurrencyLimiter::new(),
        };
        RateLimitLayer {
            current: Arc::new(ArcSwap::from_pointee(shared)),
            store,
        }
    }

    /// The same layer with a setting changed by `set`: a layer of its own,
    /// apart from the clones of this one (as a builder's setters are).
    fn set(mut self, set: impl FnOnce(&mut Shared<St>)) -> Self {
        let mut shared = Shared::clone(&self.current.load());
        set(&mut shared);
        self.current = Arc::new(ArcSwap::from_pointee(shared));
        self
    }

    /// Uses `clock` instead of the system clock (for tests).
    pub fn clock(self, clock: impl Clock) -> Self {
        self.set(|shared| shared.clock = LayerClock::Given(Arc::new(clock)))
    }

    /// Whether the [`Decision`](crate::Decision) is also put into the
    /// request's and the response's extensions, for code that reads it there
    /// (an outer layer reading the response's, say). Default `false`: it
    /// costs 6 small allocations per request, all inside `http::Extensions`
    /// (an empty one boxes its map and its table on the first insert, and
    /// it boxes every value). Handlers need not turn it on: they read the
    /// decision with [`Decision::current`](crate::Decision::current).
    /// Under stacked layers that both put it there, the request's
    /// extensions end up with the innermost layer's decision (the one its
    /// handler sees) and the response's with the outermost's, which is the
    /// one its `X-RateLimit-*` headers describe (each layer writes them on
    /// the way out).
    pub fn decision_extensions(self, enabled: bool) -> Self {
        self.set(|shared| shared.decision_extensions = enabled)
    }

    /// Whether an admitted request's [`Decision`](crate::Decision) is
    /// [`Decision::current`](crate::Decision::current) while the inner
    /// service runs (default `true`): kept in the response future, no
    /// allocation. Turn it off if nothing reads it, to save building it
    /// (with [`decision_extensions`](Self::decision_extensions) on it is
    /// built anyway, and current too).
    pub fn current_decision(self, enabled: bool) -> Self {
        self.set(|shared| shared.current_decision = enabled)
    }

    /// Calls `hook` for every refusal, shadow refusal, key rejection and
    /// ban started ([`EventKind`](crate::EventKind)), on the request's task (keep it quick: count, log, or send to a channel).
    /// The layer also emits a `tracing` event for each, at `debug` level
    /// (shadow refusals at `info`).
    pub fn on_event<F>(self, hook: F) -> Self
    where
        F: Fn(&Event<'_>) + Send + Sync + 'static,
    {
        self.set(|shared| shared.on_event = Some(Hook(Arc::new(hook))))
    }

    /// The policy enforced now (the latest that a [`ReloadHandle`] put in
    /// place).
    pub fn policy(&self) -> Policy {
        self.current.load().policy.clone()
    }

    /// The handle that sets keys' own quotas at runtime in the policy
    /// enforced now, and after a reload in the new one (see
    /// [`Policy::overrides`] and [`ReloadHandle`]).
    pub fn overrides(&self) -> Overrides {
        let current = Arc::clone(&self.current);
        Overrides::new(move || Arc::clone(&current.load().policy.inner))
    }

    /// The handle that replaces the policy of this layer and of every
    /// service it built (and of its clones), while requests flow.
    pub fn reload_handle(&self) -> ReloadHandle<St> {
        ReloadHandle::new(Arc::clone(&self.current))
    }

    /// The number of keys with a request in flight, or waiting for a slot,
    /// under the in-flight caps this layer counts itself (see
    /// [`Quota::in_flight`](crate::Quota::in_flight)); 0 once every response
    /// body is done. A store that shares slots between processes keeps its
    /// own count instead.
    pub fn keys_in_flight(&self) -> usize {
        self.current.load().in_flight.len()
    }

    /// The store.
    pub fn store(&self) -> &Arc<St> {
        &self.store
    }

    /// The current time on the layer's clock, in nanoseconds since the Unix epoch.
    pub fn now(&self) -> u64 {
        self.current.load().now()
    }

    /// Campaign waves whose accounts' slots are this layer's in-flight slots
    /// of the limit named `limit` (feature `client`): an account's campaign
    /// jobs and its requests under that limit's in-flight caps count
    /// together, in this process or, on a store that shares slots, in every
    /// process. A campaign's `account` is the key as the limit reads it from
    /// a request (the API key, say). A campaign runs no more jobs at once
    /// than the limit's cap for the account (its override's, or the routes'
    /// own; a plan a request carries is not known here): a campaign's
    /// `account_cap` can lower it, not raise it. After a reload that removes
    /// the limit, an account's campaigns share slots of their own.
    ///
    /// Fails if the policy has no limit named `limit`.
    #[cfg(feature = "client")]
    #[cfg_attr(docsrs, doc(cfg(feature = "client")))]
    pub fn waves(&self, limit: &str) -> Result<crate::client::Waves, crate::error::ConfigError> {
        if self.current.load().policy.inner.limit(limit).is_none() {
            let message = format!("the policy has no limit named `{limit}`");
            return Err(crate::error::ConfigError::invalid("limit", message));
        }
        let slots = LimitSlots {
            current: Arc::clone(&self.current),
            limit: limit.into(),
            orphans: crate::client::Waves::new(),
        };
        Ok(crate::client::Waves::sharing(Arc::new(slots)))
    }

    /// What the layer shares with its services now.
    #[cfg(feature = "admin")]
    pub(crate) fn current(&self) -> &Arc<Current<St>> {
        &self.current
    }
}

impl<St> Clone for RateLimitLayer<St> {
    fn clone(&self) -> Self {
        RateLimitLayer {
            current: Arc::clone(&self.current),
            store: Arc::clone(&self.store),
        }
    }
}

impl<St> fmt::Debug for RateLimitLayer<St> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimitLayer")
            .field("policy", &self.current.load().policy)
            .finish_non_exhaustive()
    }
}

impl<S, St> Layer<S> for RateLimitLayer<St> {
    type Service = RateLimit<S, St>;

    fn layer(&self, inner: S) -> Self::Service {
        RateLimit::from_current(inner, Arc::clone(&self.current))
    }
}

/// A layer's in-flight slots of one limit, for campaign waves (see
/// [`RateLimitLayer::waves`]).
#[cfg(feature = "client")]
struct LimitSlots<St> {
    current: Arc<Current<St>>,
    limit: Box<str>,
    /// Where accounts' slots go once a reload removed the limit.
    orphans: crate::client::Waves,
}

#[cfg(feature = "client")]
impl<St: Store> crate::client::AccountSlots for LimitSlots<St> {
    fn acquire(
        &self,
        account: &str,
        cap: u32,
        mode: crate::inflight::Mode,
    ) -> crate::inflight::SlotFuture {
        let slot = self
            .current
            .load()
            .account_slot(&self.limit, account, cap, mode);
        slot.unwrap_or_else(|| self.orphans.account_slot(account, cap, mode))
    }
}
