//! `RedisStoreBuilder`: where a [`RedisStore`] connects, and its settings,
//! checked when it is built.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use redis::aio::ConnectionManagerConfig;
use redis::Script;

use super::breaker::Breaker;
use super::clients::{self, Tls};
use super::connection::{Backend, Cluster, Server};
use super::deny::DenyCache;
use super::failure::LocalCounts;
use super::failure_policy::FailurePolicy;
use super::keys::{valid_prefix, MAX_PREFIX_LEN};
use super::metrics::StoreMetrics;
use super::peek;
use super::resets::{self, Heard};
use super::script;
use super::store::{ClockSource, Counters, Inner, RedisStore};
use crate::error::ConfigError;
use crate::penalty::PenaltyBox;
use crate::store::StoreError;

/// Where the builder connects.
#[derive(Clone)]
enum Target {
    Server(String),
    Cluster(Vec<String>),
}

/// Builds a [`RedisStore`].
#[derive(Clone)]
#[must_use]
pub struct RedisStoreBuilder {
    target: Target,
    tls: Tls,
    prefix: String,
    clock: ClockSource,
    deadline: Duration,
    connect_timeout: Duration,
    failure_threshold: u32,
    cool_down: Duration,
    on_failure: FailurePolicy,
    per_limit: HashMap<Box<str>, FailurePolicy>,
    slot_lease: Duration,
    slot_poll: Duration,
    deny_cache: bool,
}

impl RedisStore {
    /// A builder for a store on the Redis server at `url`
    /// (`redis://[:PASSWORD@]HOST:PORT[/DB]`, `redis+unix:///path`, or
    /// `rediss://…` for TLS with the cargo feature `redis-tls`).
    pub fn builder(url: impl Into<String>) -> RedisStoreBuilder {
        RedisStoreBuilder::new(Target::Server(url.into()))
    }

    /// A builder for a store on a Redis Cluster reached through any of
    /// `urls`. The keys of one principal (one request's key) share a hash
    /// slot; different keys spread over the cluster (see the module
    /// documentation).
    pub fn cluster_builder<I, S>(urls: I) -> RedisStoreBuilder
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        RedisStoreBuilder::new(Target::Cluster(urls.into_iter().map(Into::into).collect()))
    }
}

impl fmt::Debug for RedisStoreBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The URL may hold a password: not printed.
        f.debug_struct("RedisStoreBuilder")
            .field("prefix", &self.prefix)
            .field("clock", &self.clock)
            .field("deadline", &self.deadline)
            .field("connect_timeout", &self.connect_timeout)
            .field("failure_threshold", &self.failure_threshold)
            .field("cool_down", &self.cool_down)
            .field("on_failure", &self.on_failure)
            .field("per_limit", &self.per_limit)
            .field("tls", &self.tls)
            .field("slot_lease", &self.slot_lease)
            .field("slot_poll", &self.slot_poll)
            .finish_non_exhaustive()
    }
}

impl RedisStoreBuilder {
    fn new(target: Target) -> Self {
        RedisStoreBuilder {
            target,
            tls: Tls::default(),
            prefix: String::from("ratelimit"),
            clock: ClockSource::Redis,
            deadline: Duration::from_millis(50),
            connect_timeout: Duration::from_millis(500),
            failure_threshold: 3,
            cool_down: Duration::from_millis(500),
            on_failure: FailurePolicy::default(),
            per_limit: HashMap::new(),
            slot_lease: super::slots::DEFAULT_LEASE,
            slot_poll: super::slots::DEFAULT_POLL,
            deny_cache: true,
        }
    }

    /// The prefix of every key (default `ratelimit`, giving keys such as
    /// `ratelimit:{3f1c0a4d2b7e9d10}:9f86d081884c7d65`): 1 to 64 printable
    /// ASCII characters without `{`, `}` or spaces. Deployments that share
    /// a Redis but not their limits use different prefixes.
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// Decides on the layer's clock (the `now` it passes to the store)
    /// instead of Redis's `TIME`, read inside the decision script (the
    /// default, which keeps every node on one clock however far apart their
    /// own clocks are): for tests with a
    /// [`ManualClock`](crate::clock::ManualClock), and for running side by
    /// side with a [`MemoryStore`](crate::store::MemoryStore). Nodes must
    /// then agree on the time. The keys' TTLs run on Redis's clock, so each
    /// gets one more period and one second of slack: the layer's clock must
    /// not fall behind real time by more than that.
    pub fn layer_clock(mut self) -> Self {
        self.clock = ClockSource::Layer;
        self
    }

    /// The longest a decision may wait for Redis, reconnecting included
    /// (default 50 ms); past it the request follows its limits'
    /// [`FailurePolicy`].
    pub fn deadline(mut self, deadline: Duration) -> Self {
        self.deadline = deadline.max(Duration::from_millis(1));
        self
    }

    /// The longest one attempt to (re)connect may take (default 500 ms). It
    /// runs in the background: requests still wait at most the deadline.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout.max(Duration::from_millis(1));
        self
    }

    /// After `failures` consecutive failed calls (default 3; nothing heard
    /// from Redis between them, not even a late answer), stop calling Redis
    /// for `cool_down` (default 500 ms); then one request probes it, and a
    /// success closes the breaker again.
    pub fn circuit_breaker(mut self, failures: u32, cool_down: Duration) -> Self {
        self.failure_threshold = failures.max(1);
        self.cool_down = cool_down;
        self
    }

    /// Whether this process refuses a bucket that Redis refused, until the
    /// refusal ends, without calling Redis (default `true`; see
    /// [the deny cache](crate::store::redis#the-deny-cache)). Off, Redis
    /// decides every request: each refusal reports every window, and a reset
    /// made in another process applies at once, at the cost of a call per
    /// refused request.
    pub fn deny_cache(mut self, enabled: bool) -> Self {
        self.deny_cache = enabled;
        self
    }

    /// What every limit without its own setting does when Redis fails
    /// (default [`FailurePolicy::local`]`(100)`: each process counts alone
    /// against the whole quota).
    pub fn on_failure(mut self, policy: FailurePolicy) -> Self {
        self.on_failure = policy;
        self
    }

    /// What the limit named `limit` does when Redis fails.
    pub fn on_failure_of(mut self, limit: impl Into<String>, policy: FailurePolicy) -> Self {
        self.per_limit.insert(limit.into().into_boxed_str(), policy);
        self
    }

    /// How long an in-flight slot stays held in Redis without a renewal
    /// (default 30 s). Each node renews the leases of the slots it holds
    /// every third of a lease; the slots of a node that dies (or cannot
    /// reach Redis for that long) come free when their leases run out. At
    /// least three deadlines and at most a day, or `build` fails.
    pub fn slot_lease(mut self, lease: Duration) -> Self {
        self.slot_lease = lease;
        self
    }

    /// How often a request waiting in an in-flight cap's line asks Redis
    /// whether a slot is its turn (default 25 ms); a slot freed on the same
    /// node wakes it at once. A place in line lapses after four polls and
    /// four deadlines (at least 250 ms) without one, so a node that dies
    /// leaves the line. At least 1 ms and at most the slot lease, or `build`
    /// fails.
    pub fn slot_poll(mut self, poll: Duration) -> Self {
        self.slot_poll = poll;
        self
    }

    /// Trusts only the CA certificates in `pem` (one or more PEM
    /// `CERTIFICATE` blocks), instead of the operating system's roots, for a
    /// `rediss://` server: a server whose certificate a private CA signed.
    /// [`build`](Self::build) fails if they do not parse or the URL is not
    /// `rediss://`.
    #[cfg(feature = "redis-tls")]
    #[cfg_attr(docsrs, doc(cfg(feature = "redis-tls")))]
    pub fn tls_root_certificates(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.tls.root_certificates = Some(pem.into());
        self
    }

    /// Builds the store without waiting for Redis: it connects on first use,
    /// and requests follow the failure policy until it answers. Must be
    /// called inside a Tokio runtime (the connection runs on it).
    ///
    /// Fails on a malformed URL or prefix, or outside a Tokio runtime.
    pub fn build(self) -> Result<RedisStore, ConfigError> {
        if !valid_prefix(&self.prefix) {
            return Err(ConfigError::invalid(
                "prefix",
                format!(
                    "`{}` is not 1 to {MAX_PREFIX_LEN} printable ASCII characters without braces or spaces",
                    self.prefix.escape_default()
                ),
            ));
        }
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(ConfigError::invalid(
                "redis",
                "the Redis store must be built inside a Tokio runtime",
            ));
        }
        let min_lease = self.deadline.saturating_mul(3);
        if self.slot_lease < min_lease || self.slot_lease > super::slots::MAX_LEASE {
            return Err(ConfigError::invalid(
                "slot_lease",
                format!(
                    "{:?} is not between three deadlines ({min_lease:?}) and a day",
                    self.slot_lease
                ),
            ));
        }
        if self.slot_poll < Duration::from_millis(1) || self.slot_poll > self.slot_lease {
            return Err(ConfigError::invalid(
                "slot_poll",
                format!(
                    "{:?} is not between 1 ms and the slot lease ({:?})",
                    self.slot_poll, self.slot_lease
                ),
            ));
        }
        // A connection to a server or to each cluster node, reconnected at
        // once when it drops (retried once, soon).
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(self.connect_timeout))
            .set_response_timeout(None)
            .set_number_of_retries(1)
            .set_min_delay(Duration::from_millis(10))
            .set_max_delay(Duration::from_millis(100));
        let backend = match &self.target {
            Target::Server(url) => {
                let client = clients::server_client(url, &self.tls)?;
                Backend::Single(Box::new(Server::new(client, config)?))
            }
            Target::Cluster(urls) => {
                let seeds = clients::cluster_seeds(urls, &self.tls)?;
                let cluster = Cluster::new(seeds, config, self.connect_timeout);
                Backend::Cluster(Box::new(cluster))
            }
        };
        let breaker = Breaker::new(self.failure_threshold, self.cool_down);
        let breaker = match backend {
            Backend::Cluster(_) => breaker.on_cluster(self.deadline),
            Backend::Single(_) => breaker,
        };
        // One connection of its own per seed, for the resets channel.
        let seeds = match &self.target {
            Target::Server(url) => std::slice::from_ref(url),
            Target::Cluster(urls) => urls.as_slice(),
        };
        let clients = seeds
            .iter()
            .map(|url| clients::server_client(url, &self.tls))
            .collect::<Result<Vec<_>, _>>()?;
        let channel = resets::channel(&self.prefix);
        let store = RedisStore {
            inner: Arc::new(Inner {
                backend,
                script: Script::new(&script::source()),
                refund: Script::new(script::REFUND),
                admin: Script::new(peek::SOURCE),
                prefix: self.prefix.into_boxed_str(),
                clock: self.clock,
                deadline: self.deadline,
                breaker: Arc::new(breaker),
                on_failure: self.on_failure,
                per_limit: self.per_limit,
                local: LocalCounts::default(),
                counters: Counters::default(),
                metrics: StoreMetrics::new(),
                slots: super::slots::Slots::new(self.slot_lease, self.slot_poll, self.deadline),
                bans: PenaltyBox::new(),
                deny: self.deny_cache.then(DenyCache::default),
                listener: std::sync::OnceLock::new(),
            }),
        };
        // Connections that went silent are given up (a failover, a
        // middlebox that forgot them): when the breaker opens, the probe
        // after the cool-down goes out on a new one; on a cluster, where one
        // silent node does not open it, a lost call starts a new one, used
        // once it reaches every primary. The resets listener subscribes
        // again on a new one too.
        let inner = Arc::downgrade(&store.inner);
        let renew = Arc::new(tokio::sync::Notify::new());
        let renew_listener = Arc::clone(&renew);
        store.inner.breaker.on_silence(move || {
            if let Some(inner) = inner.upgrade() {
                inner.reconnect();
            }
            renew_listener.notify_one();
        });
        let inner = Arc::downgrade(&store.inner);
        let tell = move |heard: Heard<'_>| {
            let Some(inner) = inner.upgrade() else {
                return false;
            };
            match heard {
                Heard::Subscribing => {}
                Heard::Subscribed => inner.forget_remembered(),
                Heard::Message(message) => inner.forget_reset(resets::parse(message)),
            }
            true
        };
        let listen = resets::listen(clients, channel, self.connect_timeout, renew, tell);
        let listener = tokio::spawn(listen).abort_handle();
        let _ = store.inner.listener.set(listener);
        Ok(store)
    }

    /// Builds the store, checks that Redis answers within the connect
    /// timeout, and loads its scripts.
    pub async fn connect(self) -> Result<RedisStore, StoreError> {
        let timeout = self.connect_timeout;
        let store = self.build().map_err(|e| {
            let error = StoreError::config(e.to_string()).with_source(e);
            StoreMetrics::new().store_error(&error);
            error
        })?;
        let inner = &store.inner;
        let error = match tokio::time::timeout(
            timeout,
            inner.backend.prepare(
                &[&inner.script, &inner.refund, inner.slots.script()],
                &inner.counters.script_loads,
            ),
        )
        .await
        {
            Ok(Ok(())) => return Ok(store),
            Ok(Err(e)) => {
                let unanswered =
                    |what: fn(String) -> StoreError| what(format!("Redis did not answer: {e}"));
                let error = if e.is_timeout() {
                    unanswered(StoreError::timeout)
                } else if e.is_io_error() || e.is_connection_refusal() || e.is_connection_dropped()
                {
                    unanswered(StoreError::connection)
                } else {
                    // A wrong password, a database that does not exist, a
                    // replica that refuses the script: Redis did answer.
                    StoreError::protocol(format!("Redis refused the store: {e}"))
                };
                error.with_source(e)
            }
            Err(_) => StoreError::timeout(format!("Redis did not answer within {timeout:?}")),
        };
        inner.metrics.store_error(&error);
        Err(error)
    }
}
