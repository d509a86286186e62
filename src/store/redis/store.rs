//! `RedisStore`: its state, its counters, and how it decides through
//! Redis (its builder is in `builder.rs`).

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use redis::Script;

use super::breaker::{self, Breaker, Permit, Ticket, Transition};
use super::connection::Backend;
use super::deny::DenyCache;
use super::failure::{self, Failure, LocalCounts};
use super::failure_policy::FailurePolicy;
use super::metrics::{Limits, StoreMetrics};
use super::peek;
use super::resets::Reset;
use super::script::{self, Planned};
use crate::clock::LATEST;
use crate::penalty::PenaltyBox;
use crate::store::protocol::{Answer, Check, Decided, Outcome, Peeked};
use crate::store::{Store, StoreError};

/// Whose clock decisions use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(super) enum ClockSource {
    /// Redis's `TIME`, read inside the decision script (the default): every
    /// node decides on one clock, however far apart the nodes' own clocks
    /// are.
    #[default]
    Redis,
    /// The layer's clock (see [`RedisStoreBuilder::layer_clock`](super::RedisStoreBuilder::layer_clock)).
    Layer,
}

/// Counters of what a [`RedisStore`] did, since it was built (read with
/// its getters: [`RedisStore::decisions`] …).
#[derive(Debug, Default)]
pub(super) struct Counters {
    pub(super) decisions: AtomicU64,
    pub(super) slot_calls: AtomicU64,
    pub(super) failures: AtomicU64,
    pub(super) timeouts: AtomicU64,
    pub(super) short_circuits: AtomicU64,
    pub(super) fallbacks: AtomicU64,
    pub(super) script_loads: AtomicU64,
    pub(super) cached_refusals: AtomicU64,
    pub(super) reconnects: AtomicU64,
}

/// Counts shared by every process that shares a Redis server (or cluster).
///
/// See the [module documentation](crate::store::redis) for the
/// arithmetic, the keys, the clock and what happens when Redis fails.
#[derive(Clone)]
pub struct RedisStore {
    pub(super) inner: Arc<Inner>,
}

pub(super) struct Inner {
    pub(super) backend: Backend,
    pub(super) script: Script,
    /// The refund of a request refused by a later group of its checks.
    pub(super) refund: Script,
    /// The operators' peek and reset (the admin API).
    pub(super) admin: Script,
    pub(super) prefix: Box<str>,
    pub(super) clock: ClockSource,
    pub(super) deadline: Duration,
    pub(super) breaker: Arc<Breaker>,
    pub(super) on_failure: FailurePolicy,
    pub(super) per_limit: HashMap<Box<str>, FailurePolicy>,
    /// The counts of the limits that fall back to this process's memory.
    pub(super) local: LocalCounts,
    pub(super) counters: Counters,
    /// The store's metrics' handles (feature `metrics`).
    pub(super) metrics: StoreMetrics,
    /// This node's side of the in-flight slots shared through Redis.
    pub(super) slots: super::slots::Slots,
    /// The bans this process has seen (Redis keeps them all): a banned key
    /// is refused here without a call.
    pub(super) bans: PenaltyBox,
    /// The refusals this process has seen, until they end: a refused bucket
    /// is refused here without a call (unless turned off).
    pub(super) deny: Option<DenyCache>,
    /// The task that hears of resets (see [`resets`](super::resets)), stopped with the
    /// store.
    pub(super) listener: std::sync::OnceLock<tokio::task::AbortHandle>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Some(listener) = self.listener.get() {
            listener.abort();
        }
    }
}

impl RedisStore {
    /// Requests whose windows Redis decided so far (in-flight slots are
    /// counted in [`RedisStore::slot_calls`]).
    pub fn decisions(&self) -> u64 {
        self.inner.counters.decisions.load(Ordering::Relaxed)
    }

    /// Calls about in-flight slots that Redis answered so far: takes, polls
    /// of a waiting request, renewals and releases.
    pub fn slot_calls(&self) -> u64 {
        self.inner.counters.slot_calls.load(Ordering::Relaxed)
    }

    /// Calls to Redis that failed so far: an error, a missed deadline, or
    /// an answer that made no sense.
    pub fn failures(&self) -> u64 {
        self.inner.counters.failures.load(Ordering::Relaxed)
    }

    /// The calls that missed the deadline: Redis's [failures](RedisStore::failures)
    /// by silence, and the calls that waited behind this process's own while
    /// Redis answered (not failures).
    pub fn timeouts(&self) -> u64 {
        self.inner.counters.timeouts.load(Ordering::Relaxed)
    }

    /// Requests not sent to Redis so far because the circuit breaker was
    /// open.
    pub fn short_circuits(&self) -> u64 {
        self.inner.counters.short_circuits.load(Ordering::Relaxed)
    }

    /// Requests decided so far by their limits' [`FailurePolicy`] instead
    /// of Redis: every call that failed or missed its deadline
    /// ([failures](RedisStore::failures) and
    /// [timeouts](RedisStore::timeouts), the latter counted in both when
    /// Redis was silent), and every
    /// [short circuit](RedisStore::short_circuits).
    pub fn fallbacks(&self) -> u64 {
        self.inner.counters.fallbacks.load(Ordering::Relaxed)
    }

    /// Times the script was loaded into Redis: once at
    /// [`RedisStoreBuilder::connect`](super::RedisStoreBuilder::connect),
    /// and again after each `NOSCRIPT` (a restarted or flushed server).
    pub fn script_loads(&self) -> u64 {
        self.inner.counters.script_loads.load(Ordering::Relaxed)
    }

    /// Requests refused from this process's memory of Redis's refusals,
    /// without a call (see [the deny cache](crate::store::redis#the-deny-cache)).
    pub fn cached_refusals(&self) -> u64 {
        self.inner.counters.cached_refusals.load(Ordering::Relaxed)
    }

    /// Times the store set out to replace its connection because Redis
    /// seemed silent on it: the circuit breaker opened, a probe failed, or
    /// a call went unanswered a cool-down past its deadline (on a cluster,
    /// the new connection is used once it reaches every primary; see
    /// [the module documentation](crate::store::redis)).
    pub fn reconnects(&self) -> u64 {
        self.inner.counters.reconnects.load(Ordering::Relaxed)
    }

    /// Whether the circuit breaker is open: Redis is not being called, and
    /// requests follow their limits' [`FailurePolicy`].
    pub fn is_circuit_open(&self) -> bool {
        self.inner.breaker.is_open()
    }

    /// The prefix of the store's keys.
    pub fn prefix(&self) -> &str {
        &self.inner.prefix
    }

    /// The policy that applies to the limit named `limit` when Redis fails.
    pub fn failure_policy(&self, limit: &str) -> FailurePolicy {
        self.inner.policy_for(limit)
    }
}

impl fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStore")
            .field("backend", &self.inner.backend)
            .field("prefix", &self.inner.prefix)
            .field("clock", &self.inner.clock)
            .field("deadline", &self.inner.deadline)
            .field("counters", &self.inner.counters)
            .finish_non_exhaustive()
    }
}

impl Inner {
    /// Gives up the connection for a new one, as Redis seems silent on
    /// it, and counts it.
    pub(super) fn reconnect(&self) {
        tracing::info!("rate-limit store: Redis seems silent; making a new connection");
        self.counters.reconnects.fetch_add(1, Ordering::Relaxed);
        self.metrics.reconnect();
        self.backend.renew();
    }

    /// Forgets what a reset deleted.
    pub(super) fn forget_reset(&self, resets: impl Iterator<Item = Reset>) {
        for reset in resets {
            match reset {
                Reset::Bucket(bucket) => {
                    if let Some(deny) = &self.deny {
                        deny.forget(bucket);
                    }
                }
                Reset::Penalty(key) => self.bans.forget(key),
            }
        }
    }

    /// Forgets every refusal and ban remembered: resets may have been
    /// missed.
    pub(super) fn forget_remembered(&self) {
        if let Some(deny) = &self.deny {
            deny.clear();
        }
        self.bans.clear();
    }

    /// Remembers the ban an outcome reports, so that the key is refused
    /// here without a call until it lifts (on the layer's clock, `now`).
    fn note_ban(&self, checks: &[Planned], outcome: &Outcome, now: u64) {
        let ban = outcome.ban();
        let key = ban.and_then(|b| checks.get(usize::from(b.check))?.penalty);
        if let (Some(ban), Some((key, _))) = (ban, key) {
            self.bans.note_ban(key, now, now.saturating_add(ban.left));
        }
    }

    fn policy_for(&self, limit: &str) -> FailurePolicy {
        self.per_limit
            .get(limit)
            .copied()
            .unwrap_or(self.on_failure)
    }

    /// The outcome when Redis did not decide, with the failure recorded
    /// (`limits`: the checks' limits, for the metrics). `now` is when the
    /// request arrived: one whose call failed falls back later, and is
    /// decided no earlier than the requests that fell back meanwhile (see
    /// [`LocalCounts`]).
    fn fall_back(&self, checks: &[Planned], limits: &Limits, now: u64) -> Outcome {
        self.counters.fallbacks.fetch_add(1, Ordering::Relaxed);
        self.metrics.fallback(limits, checks);
        let retry = self.breaker.retry_hint().as_nanos();
        let retry = u64::try_from(retry).unwrap_or(u64::MAX);
        let (outcome, decided_at) = self.local.decide(checks, now, retry);
        self.note_ban(checks, &outcome, decided_at);
        outcome
    }

    fn record_failure(&self, failure: &Failure, ticket: Ticket) {
        let counters = [&self.counters.failures, &self.counters.timeouts];
        let metrics = &self.metrics;
        failure::record(
            failure,
            ticket,
            &self.breaker,
            counters,
            metrics,
            "requests",
        );
    }
}

/// A decision on its way from Redis.
pub struct PendingDecision {
    inner: Pin<Box<dyn Future<Output = Result<Outcome, StoreError>> + Send>>,
}

impl fmt::Debug for PendingDecision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PendingDecision")
    }
}

impl Future for PendingDecision {
    type Output = Result<Outcome, StoreError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.inner.as_mut().poll(cx)
    }
}

impl Store for RedisStore {
    type Pending = PendingDecision;

    /// In-flight caps are counted in Redis too, so every node shares each
    /// key's slots (see [`SharedSlots`](crate::store::protocol::SharedSlots) for
    /// [`RedisStore`]).
    fn shared_slots(&self) -> Option<&dyn crate::store::protocol::SharedSlots> {
        Some(self)
    }

    /// Every process that uses the same Redis and prefix shares the counts.
    fn shares_counts(&self) -> bool {
        true
    }

    /// Answers from the bans this process has seen in Redis's answers.
    fn banned_for(&self, key: u64, now: u64) -> Option<u64> {
        self.inner.bans.banned_for(key, now.min(LATEST))
    }

    /// Never fails: when Redis cannot decide, each check follows its limit's
    /// [`FailurePolicy`] (and the failure is logged and counted).
    fn check(&self, now: u64, checks: &[Check<'_>]) -> Decided<PendingDecision> {
        // As the memory store: no later than the latest time counted at.
        let now = now.min(LATEST);
        let inner = &self.inner;
        let planned: Vec<Planned> = checks
            .iter()
            .map(|c| Planned::new(c, inner.policy_for(c.limit)))
            .collect();
        if planned.is_empty() {
            return Decided::Ready(Ok(Outcome::new(true, std::iter::empty())));
        }
        let cached = inner.deny.as_ref().and_then(|d| d.refusal(&planned, now));
        if let Some(refusal) = cached {
            inner
                .counters
                .cached_refusals
                .fetch_add(1, Ordering::Relaxed);
            inner.metrics.cached_refusal();
            return Decided::Ready(Ok(refusal));
        }
        let limits = inner.metrics.limits(checks);
        let permit = inner.breaker.permit();
        if let Permit::Refused(_) = permit {
            inner
                .counters
                .short_circuits
                .fetch_add(1, Ordering::Relaxed);
            tracing::trace!("rate-limit store: circuit open, Redis not called");
            return Decided::Ready(Ok(inner.fall_back(&planned, &limits, now)));
        }
        let layer_now = (inner.clock == ClockSource::Layer).then_some(now);
        let ticket = Ticket::new(Arc::clone(&inner.breaker), permit);
        let inner = Arc::clone(inner);
        Decided::Pending(PendingDecision {
            inner: Box::pin(async move {
                let timer = inner.metrics.start();
                let decided = inner.decide(&planned, layer_now).await;
                inner.metrics.finished(timer);
                match decided {
                    Ok(outcome) => {
                        inner.counters.decisions.fetch_add(1, Ordering::Relaxed);
                        inner.note_ban(&planned, &outcome, now);
                        if let Some(deny) = &inner.deny {
                            deny.note(&planned, &outcome, now);
                        }
                        if ticket.success() == Transition::Closed {
                            tracing::info!("rate-limit store: Redis answers again");
                        }
                        Ok(outcome)
                    }
                    Err(failure) => {
                        inner.record_failure(&failure, ticket);
                        Ok(inner.fall_back(&planned, &limits, now))
                    }
                }
            }),
        })
    }

    /// Reads the checks' buckets and bans in Redis, one call per principal,
    /// writing nothing, and computes each window as the memory store would
    /// (on Redis's clock, unless the store uses the layer's). Fails when
    /// Redis cannot answer within the deadline or the breaker is open.
    fn peek(&self, now: u64, checks: &[Check<'_>]) -> Answer<Peeked> {
        let now = now.min(LATEST);
        let planned = peek::planned(checks);
        let inner = Arc::clone(&self.inner);
        let layer_now = (inner.clock == ClockSource::Layer).then_some(now);
        Box::pin(async move {
            if planned.is_empty() {
                return Ok(Peeked::default());
            }
            let groups = script::groups(&planned);
            let calls = groups
                .iter()
                .map(|group| peek::peek_call(&inner.prefix, &planned, group))
                .collect();
            let replies: Vec<Vec<Option<Vec<u8>>>> = inner.operate(calls).await?;
            let mut reads: Vec<_> = planned.iter().map(|_| None).collect();
            for (group, reply) in groups.iter().zip(&replies) {
                let now = match layer_now {
                    Some(now) => now,
                    None => peek::redis_time(reply).map_err(StoreError::protocol)?,
                };
                peek::read_group(&planned, group, reply, now, &mut reads)
                    .map_err(StoreError::protocol)?;
            }
            peek::peeked(reads).map_err(StoreError::protocol)
        })
    }

    /// Deletes the checks' buckets and their penalties' bans and refusals
    /// in Redis, one call per principal, then forgets what this process
    /// remembers of them (refusals in the deny cache, bans); every other
    /// store on the same Redis and prefix hears of it and forgets them too
    /// (see [the deny cache](super#the-deny-cache)).
    fn forget(&self, _now: u64, checks: &[Check<'_>]) -> Answer<bool> {
        let planned = peek::planned(checks);
        let inner = Arc::clone(&self.inner);
        Box::pin(async move {
            if planned.is_empty() {
                return Ok(true);
            }
            let calls = script::groups(&planned)
                .iter()
                .map(|group| peek::forget_call(&inner.prefix, &planned, group))
                .collect();
            let answers = inner.operate::<(i64, i64)>(calls).await?;
            if answers.iter().any(|&(_, published)| published == 0) {
                tracing::warn!(
                    channel = %super::resets::channel(&inner.prefix),
                    "rate-limit store: a reset deleted its keys in Redis, but Redis refused to \
                     publish it: other processes keep refusing from what they remember until \
                     each refusal's time; let the Redis user publish and subscribe on the \
                     channel (ACL `&<channel>`)"
                );
            }
            for check in &planned {
                if let Some(deny) = &inner.deny {
                    deny.forget(check.bucket);
                }
                if let Some((key, _)) = check.penalty {
                    inner.bans.forget(key);
                }
            }
            Ok(true)
        })
    }
}

impl Inner {
    /// One call of the script `which` picks, within the deadline. A call
    /// still unanswered then goes on in a task of its own, so that the
    /// breaker hears Redis's answer even when it comes after the deadline
    /// (see [`breaker::within`]).
    async fn call<A, T>(
        self: &Arc<Self>,
        which: fn(&Inner) -> &Script,
        keys: Vec<String>,
        args: Vec<A>,
    ) -> Result<T, Failure>
    where
        A: redis::ToRedisArgs + Send + Sync + 'static,
        T: redis::FromRedisValue + Send + 'static,
    {
        let inner = Arc::clone(self);
        let call = async move {
            let loads = &inner.counters.script_loads;
            inner.backend.eval(which(&inner), &keys, &args, loads).await
        };
        match breaker::within(&self.breaker, self.deadline, call).await {
            Err(sent) => Err(Failure::Timeout(self.deadline, sent)),
            Ok(Err(e)) => Err(Failure::Redis(e)),
            Ok(Ok(reply)) => Ok(reply),
        }
    }

    /// Runs `calls` of the operators' script in turn, each within the
    /// deadline, under the circuit breaker: their answers, or the error
    /// that says why Redis did not give them.
    async fn operate<T>(
        self: &Arc<Self>,
        calls: Vec<(Vec<String>, Vec<String>)>,
    ) -> Result<Vec<T>, StoreError>
    where
        T: redis::FromRedisValue + Send + 'static,
    {
        let permit = self.breaker.permit();
        if let Permit::Refused(_) = permit {
            let message = "the circuit breaker is open: Redis is not being called";
            return Err(StoreError::connection(message));
        }
        let ticket = Ticket::new(Arc::clone(&self.breaker), permit);
        let mut answers = Vec::with_capacity(calls.len());
        for (keys, args) in calls {
            match self.call(|inner| &inner.admin, keys, args).await {
                Ok(answer) => answers.push(answer),
                Err(failure) => {
                    let error = failure.error();
                    self.record_failure(&failure, ticket);
                    return Err(error);
                }
            }
        }
        if ticket.success() == Transition::Closed {
            tracing::info!("rate-limit store: Redis answers again");
        }
        Ok(answers)
    }

    /// Decides `checks` in Redis: one script call per principal (one call
    /// in all when the checks share one), in the order of the principals;
    /// then the refunds of what earlier groups charged if a later one
    /// refused (see the module documentation).
    async fn decide(
        self: &Arc<Self>,
        checks: &[Planned],
        now: Option<u64>,
    ) -> Result<Outcome, Failure> {
        let groups = script::groups(checks);
        let mut decided: Vec<script::Decided<'_>> = Vec::with_capacity(groups.len());
        let mut failure = None;
        for group in &groups {
            let charge = decided.iter().all(|d| d.reply.admitted);
            let shadows = decided.iter().all(|d| d.reply.shadow_admitted);
            let (keys, mut args) =
                script::invocation(&self.prefix, now, checks, group, charge, shadows);
            // On Redis's clock, the server is told when this process stops
            // waiting, on its own clock: a call it runs later (after a
            // stall) writes nothing.
            let clock = match now {
                None => self.backend.clock_for(&keys),
                Some(_) => None,
            };
            if let Some(until) = clock.as_ref().and_then(|c| c.until(self.deadline)) {
                script::set_until(&mut args[0], until);
            }
            let sent = tokio::time::Instant::now();
            let reply = self
                .call::<_, Vec<u8>>(|inner| &inner.script, keys, args)
                .await
                .and_then(|reply| {
                    if let Some(redis_now) = script::too_late(&reply) {
                        // Its clock may have stepped forward: what it says
                        // now is heard too, so the next call is not given
                        // up before it is sent.
                        if let Some(clock) = &clock {
                            clock.heard(redis_now);
                        }
                        return Err(Failure::Timeout(self.deadline, sent));
                    }
                    script::parse_reply(checks, group, &reply).map_err(Failure::Reply)
                });
            match reply {
                Ok(reply) => {
                    if let Some(clock) = &clock {
                        clock.heard(reply.now);
                    }
                    let banned = reply.ban.is_some_and(|(_, _, started)| !started);
                    decided.push(script::Decided {
                        group,
                        charge,
                        shadows,
                        reply,
                    });
                    if banned {
                        break;
                    }
                }
                Err(e) => {
                    failure = Some(e);
                    break;
                }
            }
        }
        let outcome = match failure {
            Some(e) => Err(e),
            None => script::outcome(checks, &decided).map_err(Failure::Reply),
        };
        if groups.len() > 1 {
            // A request that falls back gives back all it was charged.
            let all = outcome.is_err();
            for (keys, args) in script::refunds(&self.prefix, checks, &decided, all) {
                let refund = self.call::<_, Vec<i64>>(|inner| &inner.refund, keys, args);
                if let Err(e) = refund.await {
                    tracing::warn!(
                        error = %e,
                        "rate-limit store: a refund failed; its charge stays until its window passes"
                    );
                }
            }
        }
        outcome
    }
}

/// Slots held under leases in Redis, shared by every node: see
/// [In-flight caps across processes](crate::store::redis#in-flight-caps-across-processes).
/// When Redis cannot answer, the limit's [`FailurePolicy`] decides: a permit
/// that holds nothing, [`Busy::Unavailable`](crate::store::protocol::Busy::Unavailable),
/// or a slot of this node's own share of the cap.
impl crate::store::protocol::SharedSlots for RedisStore {
    /// Counts the live slots of `key` in Redis (every node's), on Redis's
    /// clock, within the deadline and under the circuit breaker.
    fn in_flight(&self, key: u64, principal: u64) -> Answer<u32> {
        let inner = Arc::clone(&self.inner);
        Box::pin(async move {
            let call = peek::in_flight_call(&inner.prefix, principal, key);
            let replies: Vec<Vec<Option<Vec<u8>>>> = inner.operate(vec![call]).await?;
            let reply = replies.first().map_or(&[][..], Vec::as_slice);
            peek::in_flight_of(reply).map_err(StoreError::protocol)
        })
    }

    fn acquire(
        &self,
        key: u64,
        principal: u64,
        max: u32,
        mode: crate::inflight::Mode,
        limit: &str,
    ) -> crate::store::protocol::SlotFuture {
        fn parts(inner: &Inner) -> super::slots::Parts<'_> {
            super::slots::Parts {
                backend: &inner.backend,
                breaker: &inner.breaker,
                deadline: inner.deadline,
                prefix: &inner.prefix,
                counters: super::slots::Counts {
                    answered: &inner.counters.slot_calls,
                    failures: &inner.counters.failures,
                    timeouts: &inner.counters.timeouts,
                    short_circuits: &inner.counters.short_circuits,
                    fallbacks: &inner.counters.fallbacks,
                    script_loads: &inner.counters.script_loads,
                    metrics: &inner.metrics,
                },
                slots: &inner.slots,
            }
        }
        let policy = self.inner.policy_for(limit);
        super::slots::acquire(
            Arc::clone(&self.inner),
            parts,
            key,
            principal,
            max,
            mode,
            policy,
        )
    }
}
