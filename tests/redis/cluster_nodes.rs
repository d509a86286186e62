//! The Redis store on a real three-node Redis Cluster (three primaries on
//! loopback, see [`Cluster`]): exact counts across two stores, all or nothing
//! across limits keyed by different headers, a killed or frozen node
//! answered by the failure policy within the deadline while the other nodes
//! decide, and distinct keys spread evenly over the nodes.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::{Request, Response, StatusCode};
use tower::ServiceExt;
use tower_ratelimit::key::Header;
use tower_ratelimit::store::protocol::{Check, Outcome};
use tower_ratelimit::store::redis::{FailurePolicy, RedisStore};
use tower_ratelimit::{
    Basis, Decision, Limit, Policy, Quota, RateLimitLayer, ResponseBody, Window,
};

use crate::support::{decide, header, impatient, per_key, send, service, Cluster, Svc, SECRET};

const T0: u64 = 1_700_000_000_000_000_000;

/// A store on `cluster`, reached through all three nodes.
async fn store(cluster: &Cluster) -> RedisStore {
    RedisStore::cluster_builder(cluster.urls())
        .deadline(Duration::from_secs(2))
        .connect()
        .await
        .expect("the cluster answers")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_stores_on_three_nodes_admit_exactly_the_quota() {
    let cluster = cluster_or_skip!();
    // GCRA, 50 per hour: a slot comes back only after 72 s.
    let policy = per_key(Quota::new(Window::per_hour(50)).and(Window::per_day(500)));
    let stores = [store(&cluster).await, store(&cluster).await];
    let services: Vec<Svc> = stores
        .iter()
        .map(|s| {
            service(
                &RateLimitLayer::with_store(policy.clone(), s.clone()).decision_extensions(true),
            )
        })
        .collect();

    let mut admitted = [0usize; 2];
    let mut refused = 0;
    for i in 0..120 {
        let response = send(&services[i % 2], "GET", "/v1/calls", "shared-key").await;
        match response.status() {
            StatusCode::OK => {
                let left = 50 - 1 - (admitted[0] + admitted[1]);
                assert_eq!(
                    header(&response, "x-ratelimit-remaining"),
                    Some(left.to_string().as_str()),
                    "request {i} counted once, across both stores"
                );
                admitted[i % 2] += 1;
            }
            StatusCode::TOO_MANY_REQUESTS => refused += 1,
            other => panic!("unexpected {other}"),
        }
    }
    assert_eq!(admitted, [25, 25], "the first 50 alternate between stores");
    assert_eq!(refused, 70);
    for store in &stores {
        assert_eq!(store.failures(), 0, "every decision came from Redis");
        assert_eq!(store.reconnects(), 0, "{store:?}");
    }
}

/// One GET with `X-API-Key: key` and `X-User: user`.
async fn send_as(svc: &Svc, key: &str, user: &str) -> Response<ResponseBody<String>> {
    let request = Request::get("/v1/calls")
        .header("x-api-key", key)
        .header("x-user", user)
        .body(String::new())
        .unwrap();
    svc.clone()
        .oneshot(request)
        .await
        .unwrap_or_else(|e: Infallible| match e {})
}

/// What the limit at `limit_index` has left after `response`'s request.
fn remaining(response: &Response<ResponseBody<String>>, limit_index: u16) -> u32 {
    let decision = response
        .extensions()
        .get::<Decision>()
        .expect("decision extensions are on by default");
    decision
        .windows()
        .iter()
        .find(|w| w.limit_index == limit_index)
        .unwrap_or_else(|| panic!("limit {limit_index} counted: {decision:?}"))
        .remaining
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_refused_by_its_second_limit_leaves_the_first_uncharged() {
    let cluster = cluster_or_skip!();
    let policy = Policy::builder()
        .key_secret(SECRET)
        .limit(
            Limit::new("per_key", Header::parse("X-API-Key").unwrap())
                .quota(Quota::new(Window::per_hour(10))),
        )
        .limit(
            Limit::new("per_user", Header::parse("X-User").unwrap())
                .quota(Quota::new(Window::per_hour(2))),
        )
        .build()
        .unwrap();
    let store = store(&cluster).await;
    let svc = service(&RateLimitLayer::with_store(policy, store.clone()).decision_extensions(true));

    for left in [9, 8] {
        let response = send_as(&svc, "key", "alice").await;
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(remaining(&response, 0), left);
    }
    let refused = send_as(&svc, "key", "alice").await;
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(remaining(&refused, 1), 0, "refused by per_user");

    let later = send_as(&svc, "key", "bob").await;
    assert_eq!(later.status(), StatusCode::OK);
    assert_eq!(
        remaining(&later, 0),
        7,
        "the refused request charged per_key nothing"
    );
    assert_eq!(remaining(&later, 1), 1);
    assert_eq!(store.failures(), 0, "every decision came from Redis");
    let keys: u64 = cluster.key_counts().await.iter().sum();
    assert_eq!(keys, 3, "one key per bucket: key, alice, bob");
}

/// The deadline of the stores in the failing-node tests.
const DEADLINE: Duration = Duration::from_millis(100);
/// Room above the deadline for a busy 2-core test machine.
const MARGIN: Duration = Duration::from_millis(300);

/// Stores that fail closed within [`DEADLINE`], with different prefixes, on
/// `cluster`, each counted once for each of a few keys; and where those
/// counts went.
struct Spread {
    services: Vec<Svc>,
    stores: Vec<RedisStore>,
    /// The node holding the keys of store 0's `k0`.
    victim: usize,
    /// A store and key counted on another node than `victim`.
    survivor: (usize, &'static str),
}

impl Spread {
    async fn new(cluster: &Cluster) -> Self {
        let policy = per_key(Quota::new(Window::per_hour(100)));
        // Wherever the store puts a request's hash tag (its prefix, or the
        // request's key), some of these requests land on other nodes than
        // others.
        let mut services = Vec::new();
        let mut stores = Vec::new();
        for prefix in ["p0", "p1", "p2"] {
            let store = RedisStore::cluster_builder(cluster.urls())
                .prefix(prefix)
                .deadline(DEADLINE)
                .on_failure(FailurePolicy::Closed)
                .connect()
                .await
                .expect("the cluster answers");
            services.push(service(
                &RateLimitLayer::with_store(policy.clone(), store.clone())
                    .decision_extensions(true),
            ));
            stores.push(store);
        }
        // Which node each (store, key) counts on: the one whose DBSIZE grows.
        let mut node_of = HashMap::new();
        let mut before = cluster.key_counts().await;
        for (s, svc) in services.iter().enumerate() {
            for key in ["k0", "k1", "k2", "k3"] {
                let response = send(svc, "GET", "/", key).await;
                assert_eq!(response.status(), StatusCode::OK);
                let after = cluster.key_counts().await;
                let grew: Vec<usize> = (0..3).filter(|&n| after[n] > before[n]).collect();
                assert_eq!(
                    grew.len(),
                    1,
                    "one node took the keys: {before:?} {after:?}"
                );
                node_of.insert((s, key), grew[0]);
                before = after;
            }
        }
        let victim = node_of[&(0, "k0")];
        // Store 0's own key on another node if it has one, so that one
        // store's calls reach a failed node and a working one.
        let mut others: Vec<_> = node_of.iter().filter(|(_, &node)| node != victim).collect();
        others.sort_by_key(|((store, key), _)| (*store, *key));
        let (&survivor, _) = others
            .first()
            .copied()
            .unwrap_or_else(|| panic!("every request counted on node {victim}: {node_of:?}"));
        Spread {
            services,
            stores,
            victim,
            survivor,
        }
    }

    /// Store 0's `k0`, whose node failed: refused (fail closed) within the
    /// deadline and the margin, as one fallback.
    async fn refused_in_time(&self) {
        let started = Instant::now();
        let response = send(&self.services[0], "GET", "/", "k0").await;
        let took = started.elapsed();
        assert_eq!(
            response.status(),
            StatusCode::TOO_MANY_REQUESTS,
            "fails closed"
        );
        assert!(took < DEADLINE + MARGIN, "answered in {took:?}");
        assert_eq!(self.stores[0].fallbacks(), 1);
    }

    /// The survivor's key, on a node that still runs: counted in Redis on
    /// top of its first request. One failure is below the circuit breaker's
    /// threshold (3), so even a store whose other keys live on the failed
    /// node still calls Redis for it.
    async fn survivor_decides(&self) {
        let (store, key) = self.survivor;
        let failures = self.stores[store].failures();
        let response = send(&self.services[store], "GET", "/", key).await;
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(header(&response, "x-ratelimit-remaining"), Some("98"));
        assert_eq!(self.stores[store].failures(), failures);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_node_fails_closed_within_the_deadline_and_the_others_still_decide() {
    let mut cluster = cluster_or_skip!();
    let spread = Spread::new(&cluster).await;
    cluster.kill(spread.victim);
    // A killed process refuses connections: the store hears it at once.
    spread.refused_in_time().await;
    spread.survivor_decides().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_node_does_not_stop_the_calls_to_the_others() {
    let mut cluster = cluster_or_skip!();
    let spread = Spread::new(&cluster).await;
    let (store, key) = spread.survivor;
    assert_eq!(store, 0, "store 0 has a key on another node than k0's");
    cluster.kill(spread.victim);
    // Runs of failures longer than the breaker's threshold (3 in a row),
    // each while the other nodes answer: they are the failed node's, and
    // store 0 goes on calling Redis for its keys on the others.
    for round in 0..3u32 {
        let alive = send(&spread.services[0], "GET", "/", key).await;
        assert_eq!(alive.status(), StatusCode::OK, "round {round}");
        let left = (98 - round).to_string();
        assert_eq!(header(&alive, "x-ratelimit-remaining"), Some(left.as_str()));
        for _ in 0..4 {
            let dead = send(&spread.services[0], "GET", "/", "k0").await;
            assert_eq!(
                dead.status(),
                StatusCode::TOO_MANY_REQUESTS,
                "round {round}"
            );
        }
    }
    let store = &spread.stores[0];
    assert!(!store.is_circuit_open(), "{store:?}");
    assert_eq!(store.short_circuits(), 0, "{store:?}");
    assert_eq!(store.fallbacks(), 12, "only the failed node's requests");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_node_fails_closed_at_the_deadline_and_the_others_still_decide() {
    let cluster = cluster_or_skip!();
    let spread = Spread::new(&cluster).await;
    cluster.freeze(spread.victim);
    // A frozen node keeps its connections open and answers nothing: only
    // the deadline ends the wait.
    spread.refused_in_time().await;
    assert_eq!(spread.stores[0].timeouts(), 1);
    spread.survivor_decides().await;
}

/// Each request's keys are hash-tagged by its principal (the request's
/// key), not by the store, so a cluster shares the load.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_keys_spread_evenly_over_three_nodes() {
    const KEYS: usize = 10_000;
    let cluster = cluster_or_skip!();
    let store = store(&cluster).await;
    let svc = service(
        &RateLimitLayer::with_store(per_key(Quota::new(Window::per_hour(100))), store.clone())
            .decision_extensions(true),
    );
    for chunk in (0..KEYS).collect::<Vec<_>>().chunks(100) {
        let responses = futures::future::join_all(
            chunk
                .iter()
                .map(|i| send(&svc, "GET", "/", &format!("key-{i}"))),
        )
        .await;
        assert!(responses.iter().all(|r| r.status() == StatusCode::OK));
    }
    assert_eq!(store.failures(), 0, "every decision came from Redis");

    let counts = cluster.key_counts().await;
    assert_eq!(
        counts.iter().sum::<u64>(),
        KEYS as u64,
        "one key per bucket"
    );
    let fair = KEYS as f64 / 3.0;
    for (node, &count) in counts.iter().enumerate() {
        assert!(
            (count as f64 - fair).abs() <= 0.15 * fair,
            "node {node} holds {count} of {KEYS} keys ({counts:?}): not within 15 % of a third"
        );
    }
}

/// Checks of `quota` for principals 1, 2, …, one counted (now) on the
/// primary `node` and one on another: `node` is the first principal's if
/// `None`. Returns the two and the node.
async fn one_on_and_one_off<'q>(
    cluster: &Cluster,
    store: &RedisStore,
    quota: &'q Quota,
    node: Option<usize>,
) -> (Check<'q>, Check<'q>, usize) {
    let primaries = cluster.primaries().await;
    let mut node = node;
    let (mut on, mut off) = (None, None);
    let mut before = cluster.key_counts().await;
    for principal in 1..100u64 {
        let check = Check::new(principal, quota).of_principal(principal);
        assert_eq!(decide(store, T0, &[check]).await.basis(), Basis::Counted);
        let after = cluster.key_counts().await;
        let grew = primaries.iter().find(|&&n| after[n] > before[n]);
        let grew = *grew.expect("a primary took the keys");
        if *node.get_or_insert(grew) == grew {
            on.get_or_insert(check);
        } else {
            off.get_or_insert(check);
        }
        before = after;
        if let (Some(on), Some(off), Some(node)) = (on, off, node) {
            return (on, off, node);
        }
    }
    panic!("99 principals, all on one side of node {node:?}");
}

/// Decides `failed` (whose node stopped answering) and `answering` in
/// turn until Redis decides `failed` again, at most `within`. Returns that
/// outcome and how many times `failed` fell back meanwhile.
async fn until_decided_again(
    store: &RedisStore,
    failed: Check<'_>,
    answering: Check<'_>,
    within: Duration,
) -> (Outcome, usize) {
    let started = Instant::now();
    let mut fallbacks = 0;
    loop {
        decide(store, T0, &[answering]).await;
        let outcome = decide(store, T0, &[failed]).await;
        match outcome.basis() {
            Basis::Counted => return (outcome, fallbacks),
            Basis::LocalFallback => fallbacks += 1,
            other => panic!("decided by {other:?}"),
        }
        assert!(
            started.elapsed() < within,
            "never decided in Redis again: {store:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A node whose connections go silent (a middlebox that forgot them): the
/// other nodes keep answering, so the breaker, which stands for the whole
/// store, stays closed. Once a call to the silent node is lost (unanswered
/// a cool-down past its deadline), the store connects anew, and that
/// node's keys are decided in Redis again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_gone_silent_is_reached_on_a_new_connection() {
    let cluster = cluster_or_skip!();
    let proxy = cluster.behind_proxy(0).await;
    let store = impatient(RedisStore::cluster_builder(cluster.urls()), 3).await;
    let quota = Quota::new(Window::per_hour(1_000));
    let (silenced, answering, _) = one_on_and_one_off(&cluster, &store, &quota, Some(0)).await;
    proxy.silence();
    let (_, fell_back) =
        until_decided_again(&store, silenced, answering, Duration::from_secs(3)).await;
    assert!(fell_back >= 1, "the silence was heard: {store:?}");
    assert!(store.reconnects() >= 1, "{store:?}");
    // The other nodes answered meanwhile: the breaker stayed closed.
    assert!(!store.is_circuit_open(), "{store:?}");
    assert_eq!(store.short_circuits(), 0, "{store:?}");
}

/// The same silence with sparse traffic (one call every 1.2 s, each given
/// up before the next is sent): the silent node's connection is still
/// replaced, and its keys decided in Redis again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_gone_silent_under_sparse_traffic_is_reached_on_a_new_connection() {
    let cluster = cluster_or_skip!();
    let proxy = cluster.behind_proxy(0).await;
    let store = impatient(RedisStore::cluster_builder(cluster.urls()), 3).await;
    let quota = Quota::new(Window::per_hour(1_000));
    let (silenced, _, _) = one_on_and_one_off(&cluster, &store, &quota, Some(0)).await;
    proxy.silence();
    let started = Instant::now();
    let mut fell_back = 0;
    loop {
        match decide(&store, T0, &[silenced]).await.basis() {
            Basis::Counted => break,
            Basis::LocalFallback => fell_back += 1,
            other => panic!("decided by {other:?}"),
        }
        assert!(
            started.elapsed() < Duration::from_secs(8),
            "never decided in Redis again: {store:?}"
        );
        tokio::time::sleep(Duration::from_millis(1200)).await;
    }
    assert!(fell_back >= 1, "the silence was heard: {store:?}");
    assert!(store.reconnects() >= 1, "{store:?}");
}

/// A seed that is a cluster node outside the cluster (it answers `CLUSTER
/// SLOTS` with no slot) does not decide the map: the next seed is asked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_seed_outside_the_cluster_is_passed_over() {
    let cluster = cluster_or_skip!();
    let stray = crate::support::RedisServer::start_with(&["--cluster-enabled", "yes"]);
    let mut seeds = vec![stray.url()];
    seeds.extend(cluster.urls());
    let store = RedisStore::cluster_builder(seeds)
        .deadline(Duration::from_secs(2))
        .connect()
        .await
        .expect("the cluster answers through the other seeds");
    let quota = Quota::new(Window::per_hour(10));
    for principal in 1..=20u64 {
        let check = Check::new(principal, &quota).of_principal(principal);
        assert_eq!(decide(&store, T0, &[check]).await.basis(), Basis::Counted);
    }
    assert_eq!(store.failures(), 0, "{store:?}");
}

/// A primary that stops answering (its host frozen, or cut off) is replaced
/// by its replica after the cluster's node timeout (1 s here). The
/// connection the store holds to it stays open and silent; once a call to
/// it is lost the store connects to the cluster anew, learns the new
/// topology, and the primary's keys are decided on the promoted replica,
/// their counts carried on. Meanwhile the other primaries' keys are still
/// decided, so the breaker stays closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_primary_failed_over_to_its_replica_is_followed() {
    failover_is_followed(|cluster, victim| cluster.freeze(victim)).await;
}

/// A primary killed outright (its connections refused) is followed to its
/// replica the same way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_primary_failed_over_to_its_replica_is_followed() {
    failover_is_followed(Cluster::kill).await;
}

/// Stops a primary with `stop`, and checks that its keys are decided on
/// the replica that takes its place, counts carried on, while the breaker
/// stays closed.
async fn failover_is_followed(stop: impl FnOnce(&mut Cluster, usize)) {
    let mut cluster = cluster_or_skip!(replicated);
    let store = impatient(RedisStore::cluster_builder(cluster.urls()), 3).await;
    let quota = Quota::new(Window::per_day(1_000));
    let (moved, answering, victim) = one_on_and_one_off(&cluster, &store, &quota, None).await;
    cluster.replicated(victim).await;
    stop(&mut cluster, victim);
    let (outcome, fell_back) =
        until_decided_again(&store, moved, answering, Duration::from_secs(10)).await;
    assert!(fell_back >= 1, "the stop was heard: {store:?}");
    // The other primaries answered meanwhile: the breaker stayed closed.
    assert_eq!(store.short_circuits(), 0, "{store:?}");
    // The promoted replica had the count: 1,000 less the first request and
    // this one, and less any call that fell back yet reached Redis after
    // its deadline (each counted once at most).
    let remaining = outcome.windows()[0].remaining as usize;
    assert!(
        (998 - fell_back..=998).contains(&remaining),
        "{fell_back} fallbacks: {outcome:?}"
    );
}

/// A frozen primary with no replica to take over: the store keeps the
/// connection in use (a new one would not reach that primary) while the
/// frozen primary's keys fall back, and the other primaries' calls are not
/// slowed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_primary_without_a_replica_slows_no_other_node() {
    let cluster = cluster_or_skip!();
    let store = impatient(RedisStore::cluster_builder(cluster.urls()), 3).await;
    let quota = Quota::new(Window::per_day(1_000));
    let (frozen, answering, victim) = one_on_and_one_off(&cluster, &store, &quota, None).await;
    cluster.freeze(victim);
    let mut waits = Vec::new();
    let started = Instant::now();
    // Calls lost to the frozen primary, and new connections tried, every
    // cool-down (100 ms).
    while started.elapsed() < Duration::from_secs(2) {
        let sent = Instant::now();
        decide(&store, T0, &[answering]).await;
        waits.push(sent.elapsed());
        let outcome = decide(&store, T0, &[frozen]).await;
        assert_eq!(outcome.basis(), Basis::LocalFallback);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    waits.sort();
    let median = waits[waits.len() / 2];
    assert!(
        median < Duration::from_millis(20),
        "the other primary's calls waited {median:?} at the median: {store:?}"
    );
    assert!(store.reconnects() >= 1, "{store:?}");
    assert_eq!(store.short_circuits(), 0, "{store:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slot_caught_mid_migration_falls_back_at_once_without_a_renewal() {
    let cluster = cluster_or_skip!();
    let store = RedisStore::cluster_builder(cluster.urls())
        .layer_clock()
        .deny_cache(false)
        .deadline(Duration::from_millis(300))
        .connect()
        .await
        .expect("the cluster answers");
    // Two limits of one principal: two keys in its slot.
    let quota = Quota::new(Window::per_minute(100));
    let checks = [
        Check::new(1, &quota).of_principal(0x77),
        Check::new(u64::MAX / 3, &quota).of_principal(0x77),
    ];
    assert!(decide(&store, T0, &checks).await.admitted());

    // The slot starts moving to another node, and one of its two keys has.
    let mut keys = Vec::new();
    let mut source = None;
    for index in 0..3 {
        let found: Vec<String> = redis::cmd("KEYS")
            .arg("*")
            .query_async(&mut cluster.node(index).await)
            .await
            .unwrap();
        if !found.is_empty() {
            (keys, source) = (found, Some(index));
        }
    }
    let (source, target) = (source.expect("a node holds the keys"), 0);
    let target = if source == target { 1 } else { target };
    assert_eq!(keys.len(), 2, "{keys:?}");
    start_migration(&cluster, source, target, &keys[0]).await;

    // Redis refuses the script over the split slot (TRYAGAIN): the request
    // follows its failure policy at once, counted as a failure, not as a
    // wait to the deadline, and nothing takes the node for a silent one.
    let sent = Instant::now();
    let outcome = decide(&store, T0, &checks).await;
    let took = sent.elapsed();
    assert_eq!(outcome.basis(), Basis::LocalFallback);
    assert!(took < Duration::from_millis(250), "{took:?}");
    assert_eq!((store.failures(), store.timeouts()), (1, 0));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(store.reconnects(), 0);
}

/// A slot caught mid-migration with every key of a request already moved:
/// Redis answers the old node's `ASK` only to a command sent right after
/// `ASKING` on the same connection. Many calls at once on the connections
/// both stores share are each decided on the new node, exactly: none is
/// taken for a failure, none admitted past the quota.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_calls_on_a_moved_key_of_a_migrating_slot_are_decided_exactly() {
    let cluster = cluster_or_skip!();
    // Every call asks Redis: no refusal is answered from memory.
    let uncached = || async {
        RedisStore::cluster_builder(cluster.urls())
            .deny_cache(false)
            .deadline(Duration::from_secs(2))
            .connect()
            .await
            .expect("the cluster answers")
    };
    let stores = [uncached().await, uncached().await];
    let quota = Quota::new(Window::per_hour(5));
    let checks = [Check::new(0x5eed, &quota)];
    for i in 0..5 {
        let outcome = decide(&stores[i % 2], T0, &checks).await;
        assert!(outcome.admitted(), "request {i}: {outcome:?}");
    }

    // The key's slot starts moving to another node, and the key has moved.
    let mut found = None;
    for index in 0..3 {
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg("*")
            .query_async(&mut cluster.node(index).await)
            .await
            .unwrap();
        if let [key] = &keys[..] {
            found = Some((index, key.clone()));
        }
    }
    let (source, key) = found.expect("one node holds the key");
    let target = (source + 1) % 3;
    start_migration(&cluster, source, target, &key).await;

    // 50 calls at once, half on each store: every one refused by Redis.
    let calls = (0..50).map(|i| decide(&stores[i % 2], T0 + 1, &checks));
    let outcomes = futures::future::join_all(calls).await;
    for (i, outcome) in outcomes.iter().enumerate() {
        assert_eq!(outcome.basis(), Basis::Counted, "call {i}: {outcome:?}");
        assert!(!outcome.admitted(), "call {i}: {outcome:?}");
    }
    for store in &stores {
        assert_eq!(store.failures(), 0, "{store:?}");
    }
}

/// A primary killed under steady concurrent load on keys of every shard
/// (bursts of 48 calls every 20 ms): until its replica takes over, its own
/// keys fall back, and the keys of the other primaries are still decided in
/// Redis the whole time (the map of the slots is made again aside, and no
/// call waits for it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_primary_killed_under_load_leaves_the_other_shards_decided_in_redis() {
    let mut cluster = cluster_or_skip!(replicated);
    let store = impatient(RedisStore::cluster_builder(cluster.urls()), 3).await;
    let quota = Quota::new(Window::per_day(1_000_000));
    let (on, _, victim) = one_on_and_one_off(&cluster, &store, &quota, None).await;
    // Principals on the other primaries.
    let primaries = cluster.primaries().await;
    let mut others = Vec::new();
    let mut before = cluster.key_counts().await;
    for principal in 1_000..1_200u64 {
        let check = Check::new(principal, &quota).of_principal(principal);
        decide(&store, T0, &[check]).await;
        let after = cluster.key_counts().await;
        if primaries
            .iter()
            .any(|&n| n != victim && after[n] > before[n])
        {
            others.push(check);
        }
        before = after;
        if others.len() == 8 {
            break;
        }
    }
    assert_eq!(others.len(), 8);
    cluster.replicated(victim).await;

    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Mutex::new(HashMap::<(bool, String), usize>::new()));
    let principals: Vec<(bool, u64)> = others
        .iter()
        .map(|c| (false, c.principal))
        .chain(std::iter::repeat_n((true, on.principal), 4))
        .collect();
    let driver = {
        let (store, stop, tally) = (store.clone(), Arc::clone(&stop), Arc::clone(&tally));
        tokio::spawn(async move {
            let mut bursts = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                for _ in 0..4 {
                    for &(victim, principal) in &principals {
                        let (store, tally) = (store.clone(), Arc::clone(&tally));
                        bursts.push(tokio::spawn(async move {
                            let quota = Quota::new(Window::per_day(1_000_000));
                            let check = Check::new(principal, &quota).of_principal(principal);
                            let outcome = decide(&store, T0, &[check]).await;
                            *tally
                                .lock()
                                .unwrap()
                                .entry((victim, format!("{:?}", outcome.basis())))
                                .or_default() += 1;
                        }));
                    }
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            for burst in bursts {
                burst.await.unwrap();
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    cluster.kill(victim);
    tokio::time::sleep(Duration::from_secs(4)).await;
    stop.store(true, Ordering::Relaxed);
    driver.await.unwrap();
    let tally = tally.lock().unwrap().clone();
    let others_fell_back: usize = tally
        .iter()
        .filter(|((victims, basis), _)| !victims && basis != "Counted")
        .map(|(_, n)| n)
        .sum();
    assert_eq!(others_fell_back, 0, "{tally:?}: {store:?}");
    let victim_fell_back = tally.get(&(true, "LocalFallback".to_owned()));
    assert!(victim_fell_back.is_some(), "the kill was heard: {tally:?}");
    assert_eq!(store.short_circuits(), 0, "{store:?}");
}

/// Starts moving the slot of `key` from node `source` to node `target`
/// (`IMPORTING`, `MIGRATING`), and moves `key` itself (`MIGRATE`); the
/// slot's other keys stay where they are.
async fn start_migration(cluster: &Cluster, source: usize, target: usize, key: &str) {
    let (mut from, mut to) = (cluster.node(source).await, cluster.node(target).await);
    let slot: u16 = redis::cmd("CLUSTER")
        .arg("KEYSLOT")
        .arg(key)
        .query_async(&mut from)
        .await
        .unwrap();
    let id = async |node: &mut redis::aio::MultiplexedConnection| -> String {
        redis::cmd("CLUSTER")
            .arg("MYID")
            .query_async(node)
            .await
            .unwrap()
    };
    let (from_id, to_id) = (id(&mut from).await, id(&mut to).await);
    let setslot = |state: &str, node: &str| {
        let mut cmd = redis::cmd("CLUSTER");
        cmd.arg("SETSLOT").arg(slot).arg(state).arg(node);
        cmd
    };
    let _: () = setslot("IMPORTING", &from_id)
        .query_async(&mut to)
        .await
        .unwrap();
    let _: () = setslot("MIGRATING", &to_id)
        .query_async(&mut from)
        .await
        .unwrap();
    let port = cluster.urls()[target]
        .rsplit(':')
        .next()
        .unwrap()
        .to_owned();
    let _: () = redis::cmd("MIGRATE")
        .arg("127.0.0.1")
        .arg(&port)
        .arg(key)
        .arg(0)
        .arg(5000)
        .query_async(&mut from)
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_a_stalled_cluster_runs_late_charge_nothing() {
    let cluster = cluster_or_skip!();
    let store = RedisStore::cluster_builder(cluster.urls())
        .deadline(Duration::from_millis(50))
        .on_failure(FailurePolicy::Closed)
        .connect()
        .await
        .expect("the cluster answers");
    let layer = RateLimitLayer::with_store(per_key(Quota::new(Window::per_minute(3))), store);
    let svc = service(&layer);
    let first = send(&svc, "GET", "/", "k").await;
    assert_eq!(header(&first, "x-ratelimit-remaining"), Some("2"));
    // Every node stalls while 10 requests come at once: each is refused by
    // the failure policy at its deadline, and its call waits in its node.
    for node in 0..3 {
        cluster.freeze(node);
    }
    let stalled: Vec<_> = (0..10)
        .map(|_| tokio::spawn(send(&svc, "GET", "/", "k")))
        .collect();
    for request in stalled {
        let response = request.await.unwrap();
        assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    }
    for node in 0..3 {
        cluster.thaw(node);
    }
    // The node runs them past the moment they were given up: none charges.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let after = send(&svc, "GET", "/", "k").await;
    assert_eq!(after.status(), StatusCode::OK);
    assert_eq!(header(&after, "x-ratelimit-remaining"), Some("1"));
}
