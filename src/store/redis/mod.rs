//! [`RedisStore`]: the same limits shared by any number of processes, one
//! round trip per decision (feature `redis`).
//!
//! ```no_run
//! use std::time::Duration;
//! use tower_ratelimit::key::{Header, KeySecret};
//! use tower_ratelimit::store::redis::{FailurePolicy, RedisStore};
//! use tower_ratelimit::{Limit, Policy, Quota, RateLimitLayer, Window};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! // Every node hashes keys under the same secret, so they share buckets.
//! let secret = KeySecret::from_bytes(*b"sixteen byte key");
//! let policy = Policy::builder()
//!     .key_secret(secret)
//!     .limit(Limit::new("per_key", Header::parse("X-API-Key")?)
//!         .quota(Quota::new(Window::per_minute(60)).and(Window::per_hour(1000))))
//!     .limit(Limit::new("signups", Header::parse("X-API-Key")?)
//!         .route("POST /v1/accounts", Quota::new(Window::per_hour(5))))
//!     .build()?;
//! let store = RedisStore::builder("redis://127.0.0.1:6379")
//!     .deadline(Duration::from_millis(50))
//!     .on_failure(FailurePolicy::local(25)) // 4 nodes: each allows a quarter alone
//!     .on_failure_of("signups", FailurePolicy::Closed)
//!     .connect()
//!     .await?;
//! let layer = RateLimitLayer::with_store(policy, store);
//! # let _ = layer;
//! # Ok(())
//! # }
//! ```
//!
//! # One script, all or nothing
//!
//! A request's checks (every window of every limit that applies to it) are
//! decided by one Lua script, run with `EVALSHA`: the script is loaded when
//! the store connects, and loaded again whenever Redis answers `NOSCRIPT` (a
//! restarted or flushed server), transparently. The script reads every
//! window's state first, decides, and writes only if every enforced window
//! admits the request, so a refused request writes nothing. Shadow checks are
//! charged only when the request is admitted and all of them admit too.
//!
//! # The same arithmetic as the memory store
//!
//! Both algorithms count in integer nanoseconds. Redis's Lua numbers are
//! doubles, exact only up to 2^53 (about 104 days in nanoseconds), so the
//! script keeps every time and duration as an array of 24-bit limbs and does
//! exact integer addition, subtraction, multiplication and division on them;
//! values cross the script's boundary as decimal strings. The script returns
//! the state each window was decided on, and the store computes the outcome
//! (remaining, reset, retry-after) from it with the very functions the
//! [`MemoryStore`](crate::store::MemoryStore) uses, and checks that the
//! script's verdict agrees. On the same sequence of requests at the same
//! times both stores make the same decisions (a property test runs them side
//! by side).
//!
//! A GCRA window stores, beside its theoretical arrival time, the interval
//! (period / limit) it was charged with. When a bucket's quota changes (a
//! per-key override, a new policy) the debt it carries is rescaled to the new
//! interval, rounded up, so the bucket keeps its *count*: a key that used 8
//! of 10 and is lowered to 5 is refused at once. Fixed windows keep their
//! count as it is.
//!
//! # Keys
//!
//! One Redis key per bucket and window:
//! `{PREFIX}:<bucket, 16 hex digits>:<gcra|fixed>:<period in ns>`, such as
//! `{ratelimit}:9f86d081884c7d65:gcra:60000000000`. The bucket is the keyed
//! hash (SipHash-1-3 under the policy's [`KeySecret`](crate::key::KeySecret))
//! of the limit, its route and the request's key: no raw key ever reaches
//! Redis. Processes that share limits must share the secret
//! ([`PolicyBuilder::key_secret`](crate::PolicyBuilder::key_secret)) and the
//! prefix. Every write sets a TTL one millisecond past the moment the
//! window's state equals a fresh key's, so once traffic stops the database
//! empties, with nothing lost.
//!
//! # Clock
//!
//! By default the script reads Redis's clock (`TIME`), so nodes whose clocks
//! disagree still decide alike; the durations the store reports are measured
//! from that moment. [`RedisStoreBuilder::layer_clock`] uses the layer's clock instead.
//!
//! # When Redis fails
//!
//! Every call has a deadline (default 50 ms, reconnecting included). A call
//! that errs, misses the deadline or gets a nonsensical answer is logged
//! (`tracing`, at `warn` for the first failure in a row and when the breaker
//! opens), counted ([`RedisStore::failures`], [`RedisStore::fallbacks`] …),
//! and the request is decided by its limits' [`FailurePolicy`], chosen per
//! limit name: count locally against a share of the quota (the default:
//! the whole quota, so an outage lets each key through at most its quota
//! per window from each process), fail closed (refuse, `Retry-After` the
//! breaker's cool-down), or fail open (let it through uncounted). After 3
//! failures in a row (by default) a circuit breaker stops calling Redis for
//! a cool-down (default 500 ms); then one request probes, and a success
//! closes it.
//!
//! Only Redis's failures count towards the breaker. A call that misses its
//! deadline while Redis goes on answering this process's other calls has
//! waited behind them in this process's own queue (a load spike here, not a
//! fault there): that request follows its failure policy and is counted in
//! [`RedisStore::timeouts`], but the breaker stays closed. A connection that
//! drops under a call (a killed client, a restarted proxy) is replaced, and
//! the call is sent once more on the new connection; a call that reached
//! Redis just before the drop may then be charged twice, which can refuse a
//! later request early but never admits one uncounted.
//!
//! The store's future never fails and never panics on Redis's account: the
//! layer never sees a store error from it, so a failure never becomes the
//! inner service's error. A check that fails open is left out of the
//! outcome: the request goes through without rate-limit headers for that
//! limit, rather than with made-up numbers.
//!
//! # The deny cache
//!
//! A request that Redis refuses is refused until some moment (its
//! `Retry-After`). Each process remembers, per bucket, the refusals it has
//! been told of and refuses that bucket itself until then, without calling
//! Redis ([`RedisStore::cached_refusals`] counts them), so a client that
//! keeps sending past its limit costs Redis nothing, and goes on being
//! refused while Redis cannot decide. The memory is bounded (65,536
//! refusals per store) and each refusal is forgotten when it ends. Such a
//! refusal reports the windows that Redis said refused, as they stand now
//! (a window of another limit that also refuses may be missing, and with it
//! a longer wait: the next call to Redis tells). A
//! refusal is remembered with the quota it was decided under: a key whose
//! quota changes (an override, a reloaded policy, another cost) asks Redis
//! again at once. Requests under a [penalty](crate::penalty) are not
//! answered from the cache, as Redis must count their refusals to start a
//! ban; a ban, once started, is remembered the same way. A key reset by an operator in another process
//! may be refused here until its remembered refusal ends.
//!
//! # Penalties across processes
//!
//! The decision script also keeps [penalties](crate::penalty), by the rule
//! of the in-memory penalty box: a ban in force on any check refuses the
//! request before any window is read (and is not extended), whichever node
//! started it; a request refused by its windows counts a refusal towards
//! the penalty of each check that refused, in one short list per key
//! (`{PREFIX}:<key hash>:refusals`, the times of the refusals that still
//! count, at most `refusals - 1`); and the refusal that completes the count
//! starts the ban (`{PREFIX}:<key hash>:ban`, its end) and drops the list.
//! Both keys expire when they stop mattering. Each node remembers the bans
//! it has seen in Redis's answers and refuses those keys without a call
//! until they lift ([`Store::banned_for`](crate::store::Store::banned_for)).
//! While Redis cannot decide, refusals are not counted towards penalties.
//!
//! # In-flight caps across processes
//!
//! The store also counts in-flight caps ([`Quota::in_flight`](crate::Quota::in_flight)):
//! it implements [`SharedSlots`](crate::store::protocol::SharedSlots), so the layer
//! asks Redis, not its own limiter, and each key's `max` slots are shared by
//! every node, with the rules of the layer's own in-flight caps
//! ([`Quota::in_flight`](crate::Quota::in_flight)): the
//! latest cap wins, one first-come-first-served line per key across nodes
//! (at most `max_queued` waiters in all), and while anyone waits no
//! newcomer takes a free slot ahead of them.
//!
//! Per key, four Redis keys (`{PREFIX}:<key hash>:inflight:held`, `:line`,
//! `:wait` and `:cap`) hold the slots held (a sorted set of holder ids by
//! lease expiry, on Redis's clock), the line (waiter ids by ticket), the
//! waiters' own leases and the latest cap; a second script decides on them
//! atomically. A slot is held under a lease
//! ([`RedisStoreBuilder::slot_lease`], default 30 s) that a task of each
//! node renews every third of a lease, in one call for all its slots, and
//! that also sends the releases of dropped permits and cancelled waiters. A
//! node that dies stops renewing: its slots come free when their leases run
//! out, and its waiters leave the line within a few polls. A waiting request
//! asks again every [`RedisStoreBuilder::slot_poll`] (default 25 ms), or as
//! soon as a slot of its key is freed on the same node; it leaves the line
//! when its `max_wait` runs out or its future is dropped. Every key expires
//! with its latest lease, so the database empties when traffic stops.
//!
//! Every call has the store's deadline and goes through its circuit
//! breaker. When Redis cannot answer, the limit's [`FailurePolicy`] decides:
//! `Open` gives a permit that holds nothing, `Closed` answers
//! [`Busy::Unavailable`](crate::store::protocol::Busy::Unavailable), and
//! `Local { percent }` takes a slot of this node's share of the cap (`max ×
//! percent / 100`, rounded up, at least 1) in a local limiter. A waiting
//! request never waits past its `max_wait`. Slots of permits that outlive
//! every clone of their store are not released or renewed: they come free
//! when their leases run out.
//!
//! # Redis Cluster
//!
//! [`RedisStore::cluster_builder`] uses a Redis Cluster. The prefix is a hash
//! tag (the braces), so all keys of a store live in one hash slot and one
//! script still decides a whole request atomically, across limits. The price
//! is that one store's keys sit on one shard: spread load over shards by
//! giving separate deployments separate prefixes.
//!
//! # Why the crate's own engine
//!
//! The decisions are not made by `governor`: a policy here needs one atomic
//! decision over several windows and several limits in which a refusal
//! charges nothing, fixed windows beside GCRA, remaining and reset for the
//! headers, and state a Redis script can hold and rescale. The crate's own
//! integer arithmetic does all of that in a few lines that a Lua script can
//! repeat exactly, so the in-memory and Redis stores agree to the
//! nanosecond.

mod breaker;
mod connection;
mod deny;
mod failure;
mod failure_policy;
mod keys;
mod metrics;
mod script;
mod slots;
mod store;

pub use failure_policy::FailurePolicy;
#[doc(hidden)]
pub use store::PendingDecision;
pub use store::{RedisStore, RedisStoreBuilder};
