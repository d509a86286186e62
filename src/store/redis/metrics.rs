//! What the Redis store tells a `metrics` recorder (cargo feature
//! `metrics`); without the feature every function here is empty.
//!
//! | metric | labels | what |
//! |---|---|---|
//! | `ratelimit_store_errors_total` | `store="redis"`, `kind` | failed calls to Redis: `connection`, `timeout`, `protocol` (and `config`, `connection`, … for a failed [`connect`](super::RedisStoreBuilder::connect)), as [`StoreError`]'s kinds |
//! | `ratelimit_fallback_decisions_total` | `limit`, `policy` | per limit, requests whose windows its [`FailurePolicy`](super::FailurePolicy) decided (`open`, `closed` or `local`) because Redis did not |
//! | `ratelimit_breaker_open` | `store="redis"` | 1 while the circuit breaker is open, else 0 |
//! | `ratelimit_store_duration_seconds` | `store="redis"` | each decision's call to Redis, from sending to its answer or its deadline |
//! | `ratelimit_cached_refusals_total` | `store="redis"` | requests refused from the [deny cache](super#the-deny-cache), without a call |
//! | `ratelimit_store_reconnects_total` | `store="redis"` | new connections set out for because Redis seemed silent on the one in use (the breaker opened, a probe failed, or a call went unanswered a cool-down past its deadline); see [`RedisStore::reconnects`](super::RedisStore::reconnects) |
//!
//! The handles are registered when the store is built, except the
//! fallback counters, registered at a limit's first fallback.

#[cfg(feature = "metrics")]
use std::time::Instant;

use super::script::Planned;
use crate::store::protocol::Check;
use crate::store::StoreError;

/// An error's kind, as [`StoreError`]'s predicates tell them.
#[cfg_attr(not(feature = "metrics"), allow(dead_code))]
#[derive(Debug, Clone, Copy)]
pub(super) enum Kind {
    Config = 0,
    Connection = 1,
    Timeout = 2,
    Protocol = 3,
}

impl Kind {
    fn of(error: &StoreError) -> Kind {
        if error.is_config() {
            Kind::Config
        } else if error.is_connection() {
            Kind::Connection
        } else if error.is_timeout() {
            Kind::Timeout
        } else {
            Kind::Protocol
        }
    }
}

/// The Redis store's handles.
pub(super) struct StoreMetrics {
    #[cfg(feature = "metrics")]
    errors: [metrics::Counter; 4],
    #[cfg(feature = "metrics")]
    duration: metrics::Histogram,
    #[cfg(feature = "metrics")]
    fallbacks: parking_lot::RwLock<Fallbacks>,
    #[cfg(feature = "metrics")]
    cached_refusals: metrics::Counter,
    #[cfg(feature = "metrics")]
    reconnects: metrics::Counter,
}

/// Each limit's `open`, `closed` and `local` fallback counters, by the
/// number given to its name.
#[cfg(feature = "metrics")]
#[derive(Default)]
struct Fallbacks {
    ids: std::collections::HashMap<Box<str>, u32>,
    counters: Vec<[metrics::Counter; 3]>,
}

/// The numbers of a request's limits' fallback counters, one per check.
pub(super) struct Limits {
    #[cfg(feature = "metrics")]
    ids: smallvec::SmallVec<[u32; 4]>,
}

impl StoreMetrics {
    /// Registers the store's handles with the recorder installed now.
    pub(super) fn new() -> Self {
        #[cfg(feature = "metrics")]
        {
            let error = |kind: &'static str| metrics::counter!("ratelimit_store_errors_total", "store" => "redis", "kind" => kind);
            StoreMetrics {
                errors: [
                    error("config"),
                    error("connection"),
                    error("timeout"),
                    error("protocol"),
                ],
                duration: metrics::histogram!("ratelimit_store_duration_seconds", "store" => "redis"),
                fallbacks: Default::default(),
                cached_refusals: metrics::counter!("ratelimit_cached_refusals_total", "store" => "redis"),
                reconnects: metrics::counter!("ratelimit_store_reconnects_total", "store" => "redis"),
            }
        }
        #[cfg(not(feature = "metrics"))]
        StoreMetrics {}
    }

    #[cfg_attr(not(feature = "metrics"), allow(unused_variables))]
    fn error(&self, kind: Kind) {
        #[cfg(feature = "metrics")]
        self.errors[kind as usize].increment(1);
    }

    /// Counts a failed call to Redis, of kind `kind`.
    pub(super) fn failure(&self, kind: Kind) {
        self.error(kind);
    }

    /// Counts a store that could not connect.
    pub(super) fn store_error(&self, error: &StoreError) {
        self.error(Kind::of(error));
    }

    /// Counts a refusal from the deny cache.
    pub(super) fn cached_refusal(&self) {
        #[cfg(feature = "metrics")]
        self.cached_refusals.increment(1);
    }

    /// Counts a new connection made because Redis seemed silent.
    pub(super) fn reconnect(&self) {
        #[cfg(feature = "metrics")]
        self.reconnects.increment(1);
    }

    /// Starts timing a call to Redis.
    pub(super) fn start(&self) -> Timer {
        Timer {
            #[cfg(feature = "metrics")]
            start: Instant::now(),
        }
    }

    /// Records the call `timer` timed.
    #[cfg_attr(not(feature = "metrics"), allow(unused_variables))]
    pub(super) fn finished(&self, timer: Timer) {
        #[cfg(feature = "metrics")]
        self.duration.record(timer.start.elapsed().as_secs_f64());
    }

    /// The numbers of `checks`' limits (a limit's counters are
    /// registered the first time it is seen).
    #[cfg_attr(not(feature = "metrics"), allow(unused_variables))]
    pub(super) fn limits(&self, checks: &[Check<'_>]) -> Limits {
        #[cfg(feature = "metrics")]
        {
            let mut ids = smallvec::SmallVec::new();
            for check in checks {
                let known = self.fallbacks.read().ids.get(check.limit).copied();
                ids.push(known.unwrap_or_else(|| self.register(check.limit)));
            }
            Limits { ids }
        }
        #[cfg(not(feature = "metrics"))]
        Limits {}
    }

    #[cfg(feature = "metrics")]
    #[cold]
    fn register(&self, limit: &str) -> u32 {
        let mut fallbacks = self.fallbacks.write();
        let Fallbacks { ids, counters } = &mut *fallbacks;
        *ids.entry(limit.into()).or_insert_with(|| {
            counters.push(["open", "closed", "local"].map(|policy| {
                metrics::counter!(
                    "ratelimit_fallback_decisions_total",
                    "limit" => limit.to_owned(),
                    "policy" => policy
                )
            }));
            (counters.len() - 1) as u32
        })
    }

    /// Counts, for each check, a decision its limit's failure policy made
    /// (`limits` are the checks' numbers, from [`StoreMetrics::limits`]).
    #[cfg_attr(not(feature = "metrics"), allow(unused_variables))]
    pub(super) fn fallback(&self, limits: &Limits, checks: &[Planned]) {
        #[cfg(feature = "metrics")]
        {
            use super::failure_policy::FailurePolicy;
            let fallbacks = self.fallbacks.read();
            for (&id, check) in limits.ids.iter().zip(checks) {
                let index = match check.on_failure {
                    FailurePolicy::Open => 0,
                    FailurePolicy::Closed => 1,
                    FailurePolicy::Local { .. } => 2,
                };
                if let Some(counters) = fallbacks.counters.get(id as usize) {
                    counters[index].increment(1);
                }
            }
        }
    }
}

/// When a call to Redis started (nothing without the feature).
pub(super) struct Timer {
    #[cfg(feature = "metrics")]
    start: Instant,
}
