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
//! grouped by *principal*: the request's key for the limits it keys, hashed
//! ([`Check::principal`](crate::store::protocol::Check#structfield.principal)),
//! the same for every limit keyed by the same source. All the keys of one
//! principal share a hash slot, and one Lua script, run with `EVALSHA`,
//! decides the whole group: it reads every window's state first, decides,
//! and writes only if every enforced window admits the request, so a
//! refused request writes nothing. Shadow checks are charged only when the
//! request is admitted and all of them admit too. A request whose checks
//! share one principal (the common case) is one script call. The script is
//! loaded when the store connects, and loaded again whenever Redis answers
//! `NOSCRIPT` (a restarted or flushed server), transparently.
//!
//! Every key the store writes has a TTL, so Redis may evict it under any
//! `maxmemory-policy` but `noeviction`, and an evicted count starts afresh
//! with no error to notice: give the store a Redis that runs with
//! `noeviction`, where a full Redis answers `OOM` and the failure policy
//! decides.
//!
//! A request over several principals (Flireo's API key *and* the call id
//! in its path) is decided group by group, in the order of the principals,
//! the same on every node. Each group charges only if all its windows
//! admit and no earlier group refused; once one refuses, the later groups
//! only read (for the outcome's numbers) and count penalty refusals. Then
//! what the earlier groups charged is given back by a refund script, one
//! call per group:
//!
//! - a fixed window still in the same window gives back exactly its cost,
//!   whatever else was counted since;
//! - a GCRA window is restored only if it still holds the arrival time the
//!   charge wrote, at the same interval: under one interval the arrival
//!   time only grows, so then nothing was charged since, and the restore
//!   is exact. If another request was charged in between, the charge
//!   stays. Subtracting it instead could take back part of the other
//!   request's charge: GCRA charges `max(tat, now) + increment`, so once
//!   `now` has passed our arrival time the other request's charge no longer
//!   sits on top of ours, and `tat − increment` would forget it (an
//!   over-admission later).
//!
//! So a refused request leaves no charge anywhere, but under contention on
//! a GCRA bucket by another request between the two calls, where its charge
//! stays until the window frees it: an early refusal for that bucket, never
//! an admission past a quota. Concurrent requests never over-admit: each
//! group decides atomically on the state its script sees, which holds every
//! charge not given back, and a refund only removes a charge of its own.
//! Between a charge and its refund the bucket counts the request, so a
//! request there may be refused that a moment later would not. Shadow
//! checks follow the same rule across groups (their charges are given back
//! when another group's shadow check refuses), and a ban in force in any
//! group refuses the request with no charge left anywhere. If Redis fails
//! mid-request, the groups already charged are refunded and the request
//! follows its limits' [`FailurePolicy`].
//!
//! A call that misses its deadline is not taken back from Redis: a stalled
//! or paused Redis, or one busy with a slow script, runs it when it can.
//! On Redis's clock (the default) each call tells the server (on a cluster,
//! the node) the moment, on its own clock, after which this process no
//! longer waits for the answer, a little before the deadline (learned from
//! that server's earlier answers, so never later than the real one while
//! its clock runs on steadily), and a call run after it writes nothing: a
//! request answered by its failure policy is never also charged, nor
//! counted towards a ban, when Redis catches up. A clock that steps forward
//! costs the calls of that moment their failure policy, and is learned from
//! their answers; one that steps back weakens this for a few seconds. (A
//! call run just before that moment whose answer still comes back late
//! counts. On the layer's clock the moment is not sent.)
//!
//! # The same arithmetic as the memory store
//!
//! Both algorithms count in integer nanoseconds. Redis's Lua numbers are
//! doubles, exact only up to 2^53 (about 104 days in nanoseconds, while a
//! nanosecond Unix time is about 2^61), so the script keeps every moment
//! and every duration as a pair of exact numbers, seconds and nanoseconds
//! below a second, and adds and compares them with a carry: exact for any
//! time and any window the crate accepts (up to 366 days). Numbers cross
//! the script's boundary, and sit in Redis, as little-endian doubles (Lua's
//! `struct`), so the script never converts a number to text. Its two rare
//! paths, the rescale of a GCRA window after a quota change and the index
//! of a fixed window whose period is not whole milliseconds, use exact big
//! integers (24-bit limbs), built only by a call that needs them. The
//! script returns the state each window was decided on, and the store
//! computes the outcome (remaining, reset, retry-after) from it with the
//! very functions the [`MemoryStore`](crate::store::MemoryStore) uses, and
//! checks that the script's verdict agrees. On the same sequence of
//! requests at the same times both stores make the same decisions (a
//! property test runs them side by side, another at any time of the 64-bit
//! range on any window).
//!
//! A GCRA window stores, beside its theoretical arrival time, the interval
//! (period / limit) it was charged with. When a bucket's quota changes (a
//! per-key override, a new policy) the debt it carries is rescaled to the new
//! interval, rounded up, so the bucket keeps its *count*: a key that used 8
//! of 10 and is lowered to 5 is refused at once. Fixed windows keep their
//! count as it is. Windows are known by algorithm and period, so a quota
//! change that keeps a period keeps that window's count; a window the quota
//! no longer has is kept while it still counts.
//!
//! # Keys
//!
//! One Redis key per bucket, holding all its windows:
//! `PREFIX:{<principal, 16 hex digits>}:<bucket, 16 hex digits>`, such as
//! `ratelimit:{3f1c0a4d2b7e9d10}:9f86d081884c7d65`. The braces make the
//! principal a hash tag, so in a Redis Cluster the keys of one principal
//! (every window and limit of one key) share a slot, and different keys
//! spread over the 16384 slots. The bucket is the keyed hash (SipHash-1-3
//! under the policy's [`KeySecret`](crate::key::KeySecret)) of the
//! request's key, then derived for the limit and its route; the principal
//! is the key's hash before that derivation: no raw key ever reaches Redis.
//! The value is each window's tag (`g<period>@<interval>=` or
//! `f<period>=`) and its state, two doubles. Processes that share limits
//! must share the secret
//! ([`PolicyBuilder::key_secret`](crate::PolicyBuilder::key_secret)) and the
//! prefix. Every write sets a TTL one millisecond past the moment the
//! bucket's last window equals a fresh one, so once traffic stops the
//! database empties, with nothing lost.
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
//! failures in a row (by default; nothing heard from Redis between them,
//! not even a late answer) a circuit breaker stops calling Redis for a
//! cool-down (default 500 ms); then one request probes, and a success
//! closes it.
//!
//! Only Redis's failures count towards the breaker. A call that misses its
//! deadline while Redis goes on answering this process's other calls has
//! waited behind them in this process's own queue (a load spike here, not a
//! fault there): that request follows its failure policy and is counted in
//! [`RedisStore::timeouts`], but the breaker stays closed. A silence is
//! timed from when the call was sent, not from when its request asked, and
//! an answer that comes as the deadline passes is still taken. (What the
//! process cannot tell from a silent Redis is its own tasks that read the
//! answers not running for three deadlines, thousands of requests at once
//! on cores that other processes keep busy: then the breaker opens too.) On a
//! cluster, an error while another node answered within the deadline is
//! that node's: the request follows its failure policy, and the breaker,
//! which stands for the whole store, stays closed, so the keys on the other
//! nodes are still decided in Redis. A connection that drops under a call
//! (a killed client, a restarted proxy) is replaced, and the call is sent
//! once more on the new connection; a call that reached Redis just before
//! the drop may then be charged twice, which can refuse a later request
//! early but never admits one uncounted. A connection to one server that
//! goes silent without dropping (a failover behind an address that now
//! swallows packets, a middlebox that forgot it), or that leads to an old
//! primary now answering `READONLY`, is given up each time the breaker
//! opens, so the probe after the cool-down goes out on a new one;
//! the listener of the resets channel (below) then subscribes again on a new
//! connection too. A call unanswered at its deadline still waits, in a task
//! of its own, one cool-down (at least one deadline) for a late answer
//! (which the breaker hears); unanswered even then, it is given up and its
//! connection taken for silent. On a cluster, where a silent node leaves
//! the breaker closed, the store then gives up the connection of each node
//! that leaves a call waiting and has not answered for a deadline, and maps
//! the cluster's slots again in the background: the silent node's keys, or
//! those of a frozen primary whose replica took over, are decided in Redis
//! again, and the other nodes keep their connections.
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
//! ban; a ban, once started, is remembered the same way. A key reset by an
//! operator ([`Store::forget`](crate::store::Store::forget)) is forgotten by
//! every process at once: the reset's script publishes what it deleted on
//! the channel `<prefix>:resets` (on a cluster, every node passes it on),
//! and each store listens there on a connection of its own. A store that
//! subscribes again after its connection dropped forgets every refusal and
//! ban it remembers, as it may have missed resets meanwhile.
//!
//! # Penalties across processes
//!
//! The decision script also keeps [penalties](crate::penalty), by the rule
//! of the in-memory penalty box: a ban in force on any check refuses the
//! request before any window is read (and is not extended), whichever node
//! started it; a request refused by its windows counts a refusal towards
//! the penalty of each check that refused, in one short list per key
//! (`PREFIX:{<principal>}:<key hash>:refusals`, the times of the refusals
//! that still count, at most `refusals - 1`); and the refusal that completes
//! the count starts the ban (`PREFIX:{<principal>}:<key hash>:ban`, its
//! end) and drops the list.
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
//! Per key, four Redis keys (`PREFIX:{<principal>}:<key hash>:inflight:held`,
//! `:line`, `:wait` and `:cap`, in the principal's hash slot) hold the slots
//! held (a sorted set of holder ids by
//! lease expiry, on Redis's clock), the line (waiter ids by ticket), the
//! waiters' own leases and the latest cap; a second script decides on them
//! atomically. A slot is held under a lease
//! ([`RedisStoreBuilder::slot_lease`], default 30 s) that a task of each
//! node renews every third of a lease, in one call for all its slots, and
//! that also sends the releases of dropped permits and cancelled waiters. A
//! node that dies stops renewing: its slots come free when their leases run
//! out, and its waiters leave the line within a few polls. A renewal that
//! finds its slot gone (Redis restarted or flushed, or out of reach for a
//! whole lease) holds it again: its request is still in flight. A waiting request
//! asks again every [`RedisStoreBuilder::slot_poll`] (default 25 ms), or as
//! soon as a slot of its key is freed on the same node; it leaves the line
//! when its `max_wait` runs out or its future is dropped. Every key expires
//! with its latest lease, so the database empties when traffic stops.
//!
//! Every call has the store's deadline and goes through its circuit
//! breaker. When Redis cannot answer, the limit's [`FailurePolicy`] decides:
//! `Open` gives a permit that holds nothing, `Closed` answers
//! [`Busy::Unavailable`](crate::store::protocol::Busy::Unavailable) (the
//! layer refuses it as [`RefusalReason::Unavailable`](crate::RefusalReason::Unavailable),
//! on [`Basis::FailedClosed`](crate::Basis::FailedClosed)), and
//! `Local { percent }` takes a slot of this node's share of the cap (`max ×
//! percent / 100`, rounded up, at least 1) in a local limiter (refused
//! there as [`Busy::LocalShareFull`](crate::store::protocol::Busy::LocalShareFull),
//! which the layer reports on [`Basis::LocalFallback`](crate::Basis::LocalFallback),
//! with the share's numbers). A waiting
//! request never waits past its `max_wait`. Slots of permits that outlive
//! every clone of their store are not released or renewed: they come free
//! when their leases run out.
//!
//! # Peek and reset
//!
//! For operators (the admin API, feature `admin`),
//! [`Store::peek`](crate::store::Store::peek) reads a key's buckets and
//! bans with a script that writes nothing, one call per principal, and
//! computes each window here with the memory store's arithmetic, as the
//! decision script would find it (a GCRA window charged at another rate is
//! rescaled in the answer, not in Redis).
//! [`Store::forget`](crate::store::Store::forget) deletes the buckets and
//! their penalties' bans and refusals, and tells every store on the same
//! Redis and prefix to forget what it remembers of them. Both run on the store's clock, within
//! its deadline and through its circuit breaker, and answer a
//! [`StoreError`](crate::store::StoreError) when Redis does not answer.
//! [`SharedSlots::in_flight`](crate::store::protocol::SharedSlots::in_flight)
//! counts a key's live slots across every node.
//!
//! # Redis Cluster
//!
//! [`RedisStore::cluster_builder`] uses a Redis Cluster. Keys are hash-tagged
//! by principal, so one key's counts live on one shard and one script call
//! decides them, while the keys of many clients spread over every shard. A
//! request over several principals (several slots) is decided across them
//! as described in [One script, all or nothing](#one-script-all-or-nothing).
//! A node's renewals of in-flight slots go in one call per principal.
//!
//! The store routes its calls itself: it maps the slots to their primaries
//! (`CLUSTER SLOTS`, asked of the seeds on first use), keeps one connection
//! per primary, and sends each call to its slot's primary, so a call waits
//! for its own node only. A primary that dies, or goes silent, costs its
//! own keys their failure policy until its replica takes over, and no other
//! node's call is slowed meanwhile: the map is made again in a task of its
//! own, whenever a node stops answering or a slot moves (asking the nodes
//! that answered last first, and passing over one that knows no primary).
//! A `MOVED` answer sends the call at once to the slot's new primary; an
//! `ASK` answer (a slot in migration whose keys have moved) sends it with
//! `ASKING`, the two as one pipeline that no other call can come between.
//! While a slot migrates, Redis answers `TRYAGAIN` to a call whose keys are
//! not all on the node asked, and a call's keys include ones not created
//! yet (a ban not started, a second limit not counted, the in-flight
//! keys): such a call is tried again, 10 ms later, then 20, up to five
//! redirections in all within its deadline, and then follows the failure
//! policy. A migration of a few milliseconds a slot (`redis-cli --cluster
//! reshard`) is followed without a failure; a slot held in migration for
//! longer costs those calls their failure policy meanwhile.
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
mod builder;
mod clients;
mod cluster;
mod connection;
mod deny;
mod failure;
mod failure_policy;
mod keys;
mod metrics;
mod peek;
mod redis_time;
mod resets;
mod script;
mod slots;
mod store;

pub use builder::RedisStoreBuilder;
pub use failure_policy::FailurePolicy;
#[doc(hidden)]
pub use store::PendingDecision;
pub use store::RedisStore;
