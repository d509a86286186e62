//! In-flight caps shared through Redis: two stores on one server play two
//! nodes. One cap across both, one first-come-first-served line across
//! both, waits that run out, cancelled waiters, leases that outlive a dead
//! node, each failure policy when Redis is gone, late answers the circuit
//! breaker hears, keys that expire, and the layer on two stores.

use std::convert::Infallible;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::{Request, Response, StatusCode};
use tokio::sync::{mpsc, oneshot, Semaphore};
use tower::util::BoxCloneService;
use tower::{service_fn, Layer, ServiceExt};
use tower_ratelimit::key::Header;
use tower_ratelimit::store::protocol::SharedSlots;
use tower_ratelimit::store::protocol::{Busy, Mode, Permit};
use tower_ratelimit::store::redis::{FailurePolicy, RedisStore, RedisStoreBuilder};
use tower_ratelimit::store::Store;
use tower_ratelimit::{Limit, Policy, Quota, RateLimitLayer, ResponseBody};

use crate::support::{RedisServer, SECRET};

/// What an answer may take when no wait is involved: the deadline, plus
/// room for a busy test machine.
const BOUND: Duration = Duration::from_millis(400);

fn queue(max_queued: usize, max_wait: Duration) -> Mode {
    Mode::Queue {
        max_queued,
        max_wait,
    }
}

/// A long wait: the test decides when it ends.
fn patient() -> Mode {
    queue(100, Duration::from_secs(30))
}

fn builder(server: &RedisServer) -> RedisStoreBuilder {
    RedisStore::builder(server.url()).deadline(Duration::from_millis(100))
}

async fn node(server: &RedisServer) -> RedisStore {
    builder(server).connect().await.unwrap()
}

/// One Redis key of `key`'s slots: `held`, `line`, `wait` or `cap`.
fn slot_key(key: u64, part: &str) -> String {
    format!("ratelimit:{{{key:016x}}}:{key:016x}:inflight:{part}")
}

async fn zcard(server: &RedisServer, key: u64, part: &str) -> usize {
    let mut connection = server.client().await;
    redis::cmd("ZCARD")
        .arg(slot_key(key, part))
        .query_async(&mut connection)
        .await
        .unwrap()
}

/// Waits (at most `within`) until `check` holds.
async fn until<F, Fut>(what: &str, within: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let started = Instant::now();
    while !check().await {
        assert!(started.elapsed() < within, "{what}: not within {within:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Waits until `key`'s sorted set `part` holds `len` members.
async fn count_is(server: &RedisServer, key: u64, part: &str, len: usize) {
    until(
        &format!("{len} in {part}"),
        Duration::from_secs(3),
        || async move { zcard(server, key, part).await == len },
    )
    .await;
}

/// Waits until `key`'s line is `len` long.
async fn line_is(server: &RedisServer, key: u64, len: usize) {
    count_is(server, key, "line", len).await;
}

/// An acquire that must answer within [`BOUND`].
async fn now(store: &RedisStore, key: u64, max: u32, mode: Mode) -> Result<Permit, Busy> {
    let started = Instant::now();
    let answer = tokio::time::timeout(
        Duration::from_secs(2),
        store.acquire(key, key, max, mode, "l"),
    )
    .await
    .expect("no acquire hangs");
    let took = started.elapsed();
    assert!(took < BOUND, "an answer at once took {took:?}");
    answer
}

/// A waiter on its own task: reports its name when it gets a slot, then
/// holds it until told to let go.
struct Waiter {
    task: tokio::task::JoinHandle<Result<(), Busy>>,
    release: oneshot::Sender<()>,
}

fn wait_for(
    store: &RedisStore,
    key: u64,
    max: u32,
    mode: Mode,
    name: &'static str,
    granted: &mpsc::UnboundedSender<&'static str>,
) -> Waiter {
    let (release, released) = oneshot::channel::<()>();
    let store = store.clone();
    let granted = granted.clone();
    let task = tokio::spawn(async move {
        let permit = store.acquire(key, key, max, mode, "l").await?;
        granted.send(name).unwrap();
        let _ = released.await;
        drop(permit);
        Ok(())
    });
    Waiter { task, release }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_share_one_cap() {
    let server = redis_or_skip!();
    let (a, b) = (node(&server).await, node(&server).await);
    let key = 0x1111;
    let first = now(&a, key, 3, Mode::Refuse).await.unwrap();
    let second = now(&b, key, 3, Mode::Refuse).await.unwrap();
    let third = now(&a, key, 3, Mode::Refuse).await.unwrap();
    assert_eq!(
        [first.in_flight(), second.in_flight(), third.in_flight()],
        [1, 2, 3]
    );
    assert_eq!(first.key(), key);
    for store in [&a, &b] {
        let busy = now(store, key, 3, Mode::Refuse).await.unwrap_err();
        assert_eq!(busy, Busy::Full { in_flight: 3 });
    }
    assert_eq!(zcard(&server, key, "held").await, 3);
    // One call per take, counted apart from rate decisions.
    let calls = |store: &RedisStore| (store.slot_calls(), store.decisions());
    assert_eq!([calls(&a), calls(&b)], [(3, 0), (2, 0)]);
    // Other keys are counted on their own.
    let other = now(&b, 0x2222, 3, Mode::Refuse).await.unwrap();
    assert_eq!(other.in_flight(), 1);

    // A slot freed on one node serves the other.
    drop(second);
    count_is(&server, key, "held", 2).await;
    let again = now(&a, key, 3, Mode::Refuse).await.unwrap();
    assert_eq!(again.in_flight(), 3);

    // Lowering the cap revokes nothing; raising it admits at once.
    assert_eq!(
        now(&b, key, 1, Mode::Refuse).await.unwrap_err(),
        Busy::Full { in_flight: 3 }
    );
    assert_eq!(zcard(&server, key, "held").await, 3);
    assert_eq!(now(&b, key, 4, Mode::Refuse).await.unwrap().in_flight(), 4);
    // A cap of 0 closes the key.
    assert!(now(&a, 0x3333, 0, Mode::Refuse).await.is_err());
    drop((first, third, again, other));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slot_freed_on_one_node_goes_to_the_oldest_waiter_on_any_node() {
    let server = redis_or_skip!();
    let (a, b) = (node(&server).await, node(&server).await);
    let key = 0xf1f0;
    let holder = now(&a, key, 1, patient()).await.unwrap();

    // Three waiters, arriving in this order, on alternating nodes.
    let (tx, mut granted) = mpsc::unbounded_channel();
    let mut waiters = Vec::new();
    for (i, (store, name)) in [(&b, "b1"), (&a, "a2"), (&b, "b3")].into_iter().enumerate() {
        waiters.push(wait_for(store, key, 1, patient(), name, &tx));
        line_is(&server, key, i + 1).await;
    }
    // While they wait, a newcomer never gets a slot, even a free one.
    assert_eq!(
        now(&a, key, 1, Mode::Refuse).await.unwrap_err(),
        Busy::Full { in_flight: 1 }
    );

    drop(holder);
    for (i, expected) in ["b1", "a2", "b3"].into_iter().enumerate() {
        let name = tokio::time::timeout(Duration::from_secs(3), granted.recv())
            .await
            .expect("the next waiter gets the slot")
            .unwrap();
        assert_eq!(name, expected, "grants follow the order of arrival");
        assert_eq!(zcard(&server, key, "line").await, 2 - i);
        // One slot: nobody else gets in while it is held.
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(granted.try_recv().is_err(), "only one slot at a time");
        let waiter = waiters.remove(0);
        waiter.release.send(()).unwrap();
        assert_eq!(waiter.task.await.unwrap(), Ok(()));
    }
    count_is(&server, key, "held", 0).await;
    assert_eq!(now(&b, key, 1, Mode::Refuse).await.unwrap().in_flight(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_free_slot_waits_for_the_waiter_whose_turn_it_is() {
    let server = redis_or_skip!();
    let a = node(&server).await;
    // B polls slowly, so a slot freed on A stays free for a while.
    let b = builder(&server)
        .slot_poll(Duration::from_millis(700))
        .connect()
        .await
        .unwrap();
    let key = 0xabc;
    let holder = now(&a, key, 1, Mode::Refuse).await.unwrap();
    let (tx, mut granted) = mpsc::unbounded_channel();
    let waiter = wait_for(&b, key, 1, patient(), "b", &tx);
    line_is(&server, key, 1).await;
    drop(holder);
    count_is(&server, key, "held", 0).await;
    // The slot is free, but B waits for it: a newcomer on A is refused or
    // queues behind.
    assert_eq!(
        now(&a, key, 1, Mode::Refuse).await.unwrap_err(),
        Busy::Full { in_flight: 1 }
    );
    let (tx2, mut granted2) = mpsc::unbounded_channel();
    let behind = wait_for(&a, key, 1, patient(), "a", &tx2);
    line_is(&server, key, 2).await;
    assert_eq!(
        tokio::time::timeout(Duration::from_secs(3), granted.recv())
            .await
            .unwrap(),
        Some("b")
    );
    assert!(granted2.try_recv().is_err());
    waiter.release.send(()).unwrap();
    assert_eq!(
        tokio::time::timeout(Duration::from_secs(3), granted2.recv())
            .await
            .unwrap(),
        Some("a")
    );
    behind.release.send(()).unwrap();
    assert_eq!(behind.task.await.unwrap(), Ok(()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raising_the_cap_lets_waiters_in() {
    let server = redis_or_skip!();
    let (a, b) = (node(&server).await, node(&server).await);
    let key = 0x5eed;
    let holder = now(&a, key, 1, Mode::Refuse).await.unwrap();
    let (tx, mut granted) = mpsc::unbounded_channel();
    let waiter = wait_for(&b, key, 1, patient(), "b", &tx);
    line_is(&server, key, 1).await;
    // A new request raises the cap to 2: it is refused (someone waits),
    // and the waiter gets in without any release.
    assert!(now(&a, key, 2, Mode::Refuse).await.is_err());
    assert_eq!(
        tokio::time::timeout(Duration::from_secs(3), granted.recv())
            .await
            .unwrap(),
        Some("b")
    );
    assert_eq!(zcard(&server, key, "held").await, 2);
    waiter.release.send(()).unwrap();
    drop(holder);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_line_refuses_at_once() {
    let server = redis_or_skip!();
    let (a, b) = (node(&server).await, node(&server).await);
    let key = 0x10e;
    let holder = now(&a, key, 1, Mode::Refuse).await.unwrap();
    let (tx, _granted) = mpsc::unbounded_channel();
    let line = queue(2, Duration::from_secs(30));
    let first = wait_for(&a, key, 1, line, "a", &tx);
    line_is(&server, key, 1).await;
    let second = wait_for(&b, key, 1, line, "b", &tx);
    line_is(&server, key, 2).await;
    // The line holds two across both nodes: a third is refused at once.
    for store in [&a, &b] {
        assert_eq!(
            now(store, key, 1, line).await.unwrap_err(),
            Busy::Full { in_flight: 1 }
        );
    }
    assert_eq!(zcard(&server, key, "line").await, 2);
    // A line of 0 acts like Refuse; a wait of 0 times out at once.
    assert_eq!(
        now(&a, key, 1, queue(0, Duration::from_secs(30)))
            .await
            .unwrap_err(),
        Busy::Full { in_flight: 1 }
    );
    assert_eq!(
        now(&a, key, 1, queue(5, Duration::ZERO)).await.unwrap_err(),
        Busy::TimedOut {
            waited: Duration::ZERO
        }
    );
    assert_eq!(zcard(&server, key, "line").await, 2);
    first.task.abort();
    second.task.abort();
    line_is(&server, key, 0).await;
    drop(holder);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wait_that_runs_out_times_out_and_leaves_the_line() {
    let server = redis_or_skip!();
    let (a, b) = (node(&server).await, node(&server).await);
    let key = 0x71e;
    let holder = now(&a, key, 1, Mode::Refuse).await.unwrap();
    let max_wait = Duration::from_millis(300);
    let started = Instant::now();
    let busy = b
        .acquire(key, key, 1, queue(10, max_wait), "l")
        .await
        .unwrap_err();
    let took = started.elapsed();
    let Busy::TimedOut { waited } = busy else {
        panic!("timed out, not {busy:?}")
    };
    assert!(waited >= max_wait, "waited {waited:?}");
    assert!(took < max_wait + BOUND, "ended by max_wait: took {took:?}");
    // It left the line (and its waiter lease) behind.
    line_is(&server, key, 0).await;
    count_is(&server, key, "wait", 0).await;
    drop(holder);
    count_is(&server, key, "held", 0).await;
    assert_eq!(now(&b, key, 1, Mode::Refuse).await.unwrap().in_flight(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_waiter_leaves_the_line() {
    let server = redis_or_skip!();
    let (a, b) = (node(&server).await, node(&server).await);
    let key = 0xd50;
    let holder = now(&a, key, 1, Mode::Refuse).await.unwrap();
    // Dropped while waiting, on its own task ...
    let (tx, _granted) = mpsc::unbounded_channel();
    let waiter = wait_for(&b, key, 1, patient(), "b", &tx);
    line_is(&server, key, 1).await;
    waiter.task.abort();
    line_is(&server, key, 0).await;
    // ... and in place, by a timeout around it.
    let gone = tokio::time::timeout(
        Duration::from_millis(200),
        b.acquire(key, key, 1, patient(), "l"),
    )
    .await;
    assert!(gone.is_err(), "still waiting when dropped");
    line_is(&server, key, 0).await;
    // Nobody waits: the freed slot goes to a newcomer.
    drop(holder);
    count_is(&server, key, "held", 0).await;
    assert!(now(&b, key, 1, Mode::Refuse).await.is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_are_renewed_while_a_node_lives_and_expire_when_it_dies() {
    let server = redis_or_skip!();
    let lease = Duration::from_millis(300);
    let a = builder(&server).slot_lease(lease).connect().await.unwrap();
    let b = node(&server).await;
    let key = 0xdead;
    let held = [
        now(&a, key, 2, Mode::Refuse).await.unwrap(),
        now(&a, key, 2, Mode::Refuse).await.unwrap(),
    ];
    // Alive: renewed past several leases.
    tokio::time::sleep(lease * 4).await;
    assert_eq!(
        now(&b, key, 2, Mode::Refuse).await.unwrap_err(),
        Busy::Full { in_flight: 2 }
    );

    // A dies holding both slots: nothing is released, nothing renewed.
    std::mem::forget(held);
    drop(a);
    let died = Instant::now();
    let (tx, mut granted) = mpsc::unbounded_channel();
    let first = wait_for(&b, key, 2, patient(), "b1", &tx);
    let second = wait_for(&b, key, 2, patient(), "b2", &tx);
    for _ in 0..2 {
        tokio::time::timeout(Duration::from_secs(3), granted.recv())
            .await
            .expect("a dead node's slots come free")
            .unwrap();
    }
    let took = died.elapsed();
    assert!(
        took < lease * 3,
        "within the lease (and a renewal): {took:?}"
    );
    first.release.send(()).unwrap();
    second.release.send(()).unwrap();
    assert_eq!(first.task.await.unwrap(), Ok(()));
    assert_eq!(second.task.await.unwrap(), Ok(()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_nodes_waiters_leave_the_line() {
    let server = redis_or_skip!();
    let a = node(&server).await;
    let b = node(&server).await;
    let key = 0xbeef;
    let holder = now(&a, key, 1, Mode::Refuse).await.unwrap();
    // B queues, then stops polling without a word (its task is frozen:
    // the future is forgotten, never polled again nor dropped).
    let mut stuck = b.acquire(key, key, 1, patient(), "l");
    let started = Instant::now();
    while zcard(&server, key, "line").await == 0 {
        assert!(futures::poll!(stuck.as_mut()).is_pending());
        assert!(started.elapsed() < Duration::from_secs(3), "never joined");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    std::mem::forget(stuck);
    // Its waiter lease runs out: it no longer blocks the line.
    let (tx, mut granted) = mpsc::unbounded_channel();
    let next = wait_for(&a, key, 1, patient(), "a", &tx);
    drop(holder);
    tokio::time::timeout(Duration::from_secs(3), granted.recv())
        .await
        .expect("the dead waiter is skipped")
        .unwrap();
    next.release.send(()).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_redis_gone_each_failure_policy_answers_within_the_deadline() {
    let mut server = redis_or_skip!();
    let open = builder(&server)
        .on_failure(FailurePolicy::Open)
        .connect()
        .await
        .unwrap();
    let closed = builder(&server)
        .on_failure(FailurePolicy::Closed)
        .connect()
        .await
        .unwrap();
    let local = builder(&server)
        .on_failure(FailurePolicy::Open)
        .on_failure_of("local", FailurePolicy::local(50))
        .connect()
        .await
        .unwrap();
    let key = 0xfa11;
    let slot = now(&open, key, 4, Mode::Refuse).await.unwrap();
    assert_eq!(slot.in_flight(), 1, "counted in Redis");
    drop(slot);

    server.kill();
    for _ in 0..5 {
        // Fail open: a permit that holds nothing.
        let permit = now(&open, key, 1, Mode::Refuse).await.unwrap();
        assert_eq!(permit.in_flight(), 0);
        // Fail closed: refused.
        assert_eq!(
            now(&closed, key, 1, patient()).await.unwrap_err(),
            Busy::Unavailable
        );
    }
    // Local: half of 4 in this process.
    let started = Instant::now();
    let mine: Vec<Permit> = futures::future::join_all(
        (0..2).map(|_| local.acquire(key, key, 4, Mode::Refuse, "local")),
    )
    .await
    .into_iter()
    .map(Result::unwrap)
    .collect();
    assert!(started.elapsed() < BOUND);
    assert_eq!(
        local
            .acquire(key, key, 4, Mode::Refuse, "local")
            .await
            .unwrap_err(),
        Busy::LocalShareFull {
            in_flight: 2,
            share: 2
        }
    );
    // A queued request waits in the local line and still ends by max_wait.
    let started = Instant::now();
    let max_wait = Duration::from_millis(200);
    let busy = local
        .acquire(key, key, 4, queue(10, max_wait), "local")
        .await
        .unwrap_err();
    assert!(matches!(busy, Busy::TimedOut { .. }), "{busy:?}");
    assert!(started.elapsed() < max_wait + BOUND);
    // A freed local slot is taken again; half of 1 is still one slot.
    drop(mine);
    assert!(local
        .acquire(key, key, 4, Mode::Refuse, "local")
        .await
        .is_ok());
    assert_eq!(
        local
            .acquire(0x9, 0x9, 1, Mode::Refuse, "local")
            .await
            .unwrap()
            .in_flight(),
        1
    );
    for store in [&open, &closed, &local] {
        assert!(store.fallbacks() > 0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiter_on_a_frozen_redis_ends_within_its_wait() {
    let server = redis_or_skip!();
    let a = node(&server).await;
    let b = builder(&server)
        .on_failure(FailurePolicy::Closed)
        .connect()
        .await
        .unwrap();
    let key = 0xf00;
    let holder = now(&a, key, 1, Mode::Refuse).await.unwrap();
    let max_wait = Duration::from_millis(1500);
    let waiting = tokio::spawn({
        let b = b.clone();
        async move {
            let started = Instant::now();
            let answer = b.acquire(key, key, 1, queue(10, max_wait), "l").await;
            (answer.map(drop), started.elapsed())
        }
    });
    line_is(&server, key, 1).await;
    server.freeze();
    let (answer, took) = tokio::time::timeout(Duration::from_secs(3), waiting)
        .await
        .expect("no waiter hangs")
        .unwrap();
    server.thaw();
    assert_eq!(answer, Err(Busy::Unavailable));
    assert!(took < max_wait, "a failed poll decides at once: {took:?}");
    assert!(b.timeouts() > 0);
    drop(holder);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_answers_to_slot_calls_keep_the_breaker_closed() {
    let server = redis_or_skip!();
    // A 100 ms deadline; the breaker opens after 3 failures with nothing
    // heard from Redis between them.
    let store = node(&server).await;
    for round in 0..3 {
        let key = 0xa00 + round;
        server.freeze();
        // Past its deadline, the request gets the failure policy's answer,
        // and the node gives up its call: the release it sends for it
        // misses its deadline too (the next try is a second away).
        let _ = now(&store, key, 100, Mode::Refuse).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        server.thaw();
        // Redis then answers both calls, late: it has once it answers a
        // command sent after them, and the node hears them. Without them,
        // the next round's failure would be the third in a row.
        let _: String = redis::cmd("PING")
            .query_async(&mut server.client().await)
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(store.timeouts() >= 3, "{store:?}");
    let permit = now(&store, 0xb00, 100, Mode::Refuse).await.unwrap();
    assert_eq!(
        store.short_circuits(),
        0,
        "the breaker stayed closed: {store:?}"
    );
    assert_eq!(zcard(&server, 0xb00, "held").await, 1, "Redis granted it");
    drop(permit);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_key_expires_and_the_database_empties() {
    let server = redis_or_skip!();
    let (a, b) = (node(&server).await, node(&server).await);
    let keys = [0x1, 0x2, 0x3];
    let mut held = Vec::new();
    for key in keys {
        held.push(now(&a, key, 1, Mode::Refuse).await.unwrap());
    }
    let (tx, _granted) = mpsc::unbounded_channel();
    let waiter = wait_for(&b, keys[0], 1, patient(), "b", &tx);
    line_is(&server, keys[0], 1).await;

    // Every key has a TTL, no longer than its lease.
    let mut connection = server.client().await;
    let names = server.keys().await;
    assert!(names.len() >= 3 * 2 + 2, "{names:?}");
    for name in &names {
        assert!(name.starts_with("ratelimit:{"), "{name}");
        let ttl: i64 = redis::cmd("PTTL")
            .arg(name)
            .query_async(&mut connection)
            .await
            .unwrap();
        assert!(ttl > 0 && ttl <= 30_000, "{name}: TTL {ttl}");
    }

    drop(held);
    waiter.release.send(()).unwrap();
    assert_eq!(waiter.task.await.unwrap(), Ok(()));
    let server = &server;
    until(
        "the database empties",
        Duration::from_secs(3),
        || async move { server.keys().await.is_empty() },
    )
    .await;
}

#[tokio::test]
async fn slot_settings_are_checked_when_built() {
    let url = "redis://127.0.0.1:1";
    let field = |b: RedisStoreBuilder| b.build().unwrap_err().field().to_owned();
    let b = || RedisStore::builder(url).deadline(Duration::from_millis(50));
    assert_eq!(
        field(b().slot_lease(Duration::from_millis(100))),
        "slot_lease"
    );
    assert_eq!(
        field(b().slot_lease(Duration::from_secs(2 * 86_400))),
        "slot_lease"
    );
    assert_eq!(field(b().slot_poll(Duration::ZERO)), "slot_poll");
    assert_eq!(
        field(
            b().slot_lease(Duration::from_secs(1))
                .slot_poll(Duration::from_secs(2))
        ),
        "slot_poll"
    );
    assert!(b()
        .slot_lease(Duration::from_millis(150))
        .slot_poll(Duration::from_millis(5))
        .build()
        .is_ok());
}

// ---------------------------------------------------------------------------
// Through the layer: two layers on two stores, one cap.

type Svc = BoxCloneService<Request<String>, Response<ResponseBody<String>>, Infallible>;

/// `layer` around a service that holds each request until `gate` gives it
/// a permit; `entered` counts the requests that reached it.
fn gated<St: Store>(
    layer: &RateLimitLayer<St>,
    gate: &Arc<Semaphore>,
    entered: &Arc<AtomicUsize>,
) -> Svc {
    let (gate, entered) = (Arc::clone(gate), Arc::clone(entered));
    let inner = service_fn(move |_req: Request<String>| {
        let (gate, entered) = (Arc::clone(&gate), Arc::clone(&entered));
        async move {
            entered.fetch_add(1, Ordering::SeqCst);
            gate.acquire().await.unwrap().forget();
            Ok::<_, Infallible>(Response::new(String::from("ok")))
        }
    });
    BoxCloneService::new(layer.layer(inner))
}

/// `POST /v1/calls`, at most 2 in flight per API key.
fn calls_capped_at_2() -> Policy {
    Policy::builder()
        .key_secret(SECRET)
        .limit(
            Limit::new("calls", Header::parse("X-API-Key").unwrap())
                .route("POST /v1/calls", Quota::in_flight(2)),
        )
        .build()
        .unwrap()
}

fn request(key: &str) -> Request<String> {
    Request::post("/v1/calls")
        .header("x-api-key", key)
        .body(String::new())
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_layers_on_two_stores_share_one_in_flight_cap() {
    let server = redis_or_skip!();
    let gate = Arc::new(Semaphore::new(0));
    let entered = Arc::new(AtomicUsize::new(0));
    let one = gated(
        &RateLimitLayer::with_store(calls_capped_at_2(), node(&server).await),
        &gate,
        &entered,
    );
    let two = gated(
        &RateLimitLayer::with_store(calls_capped_at_2(), node(&server).await),
        &gate,
        &entered,
    );
    let raw = "nx_live_raw_key_0123456789";
    let (server, entered_now) = (&server, &entered);

    // One request in flight on each layer.
    let first = tokio::spawn(one.clone().oneshot(request(raw)));
    until(
        "the first request is in",
        Duration::from_secs(2),
        || async move { entered_now.load(Ordering::SeqCst) == 1 },
    )
    .await;
    let second = tokio::spawn(two.clone().oneshot(request(raw)));
    until(
        "the second request is in",
        Duration::from_secs(2),
        || async move { entered_now.load(Ordering::SeqCst) == 2 },
    )
    .await;

    // Both slots are counted in Redis, under the key's hash.
    let held: Vec<String> = server
        .keys()
        .await
        .into_iter()
        .filter(|k| k.ends_with(":inflight:held"))
        .collect();
    assert_eq!(held.len(), 1, "{held:?}");
    let mut connection = server.client().await;
    let count: usize = redis::cmd("ZCARD")
        .arg(&held[0])
        .query_async(&mut connection)
        .await
        .unwrap();
    assert_eq!(count, 2);

    // A third, on either layer, is busy; another key is not.
    for svc in [&one, &two] {
        let response = tokio::time::timeout(BOUND, svc.clone().oneshot(request(raw)))
            .await
            .expect("answered at once")
            .unwrap();
        assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    }
    assert_eq!(entered.load(Ordering::SeqCst), 2);
    let other = tokio::spawn(one.clone().oneshot(request("another key")));
    until("another key is in", Duration::from_secs(2), || async move {
        entered_now.load(Ordering::SeqCst) == 3
    })
    .await;

    // The requests finish and their bodies are dropped: new ones get in.
    gate.add_permits(3);
    for task in [first, second, other] {
        let response = task.await.unwrap().unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        drop(response);
    }
    gate.add_permits(2);
    until(
        "freed slots are free in Redis",
        Duration::from_secs(2),
        || async move {
            server
                .keys()
                .await
                .iter()
                .all(|k| !k.ends_with(":inflight:held"))
        },
    )
    .await;
    for svc in [&one, &two] {
        let response =
            tokio::time::timeout(Duration::from_secs(2), svc.clone().oneshot(request(raw)))
                .await
                .expect("answered")
                .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
    }

    // No raw key reaches Redis.
    let names = server.keys().await;
    assert!(
        names
            .iter()
            .all(|k| !k.contains(raw) && !k.contains("another")),
        "{names:?}"
    );
}

/// A cap that fails closed, with Redis gone: the decision says the count
/// could not be reached (`Unavailable`, on `FailedClosed`), as a window's
/// would, not that the key is busy; the answer keeps the busy status the
/// policy gives a cap's refusals.
#[tokio::test]
async fn a_cap_failing_closed_is_refused_as_unavailable_not_busy() {
    let mut server = redis_or_skip!();
    let store = builder(&server)
        .on_failure(FailurePolicy::Closed)
        .connect()
        .await
        .unwrap();
    let policy = Policy::builder()
        .key_secret(SECRET)
        .busy_status(StatusCode::SERVICE_UNAVAILABLE)
        .limit(
            Limit::new("calls", Header::parse("X-API-Key").unwrap())
                .route("POST /v1/calls", Quota::in_flight(2)),
        )
        .build()
        .unwrap();
    let layer = RateLimitLayer::with_store(policy, store).decision_extensions(true);
    let svc = layer.layer(service_fn(|_: Request<String>| async {
        Ok::<_, Infallible>(Response::new(String::new()))
    }));
    let admitted = svc.clone().oneshot(request("k")).await.unwrap();
    assert_eq!(admitted.status(), StatusCode::OK);
    drop(admitted);

    server.kill();
    let refused = svc.oneshot(request("k")).await.unwrap();
    assert_eq!(refused.status(), StatusCode::SERVICE_UNAVAILABLE);
    let decision = refused
        .extensions()
        .get::<tower_ratelimit::Decision>()
        .expect("the decision");
    assert_eq!(
        decision.refusal(),
        Some(tower_ratelimit::RefusalReason::Unavailable)
    );
    assert_eq!(decision.basis(), tower_ratelimit::Basis::FailedClosed);
    assert_eq!(refused.headers()["retry-after"], "1");
    let body = http_body_util::BodyExt::collect(refused.into_body())
        .await
        .unwrap()
        .to_bytes();
    let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(body["error"]["code"], "concurrency_limit_exceeded");
}

/// A cap that fails open, or falls back to a local share, with Redis gone:
/// the decision says what stood in for the count, and a cap let through
/// uncounted reports no made-up numbers.
#[tokio::test]
async fn a_cap_failing_open_or_falling_back_says_so() {
    use tower_ratelimit::{Basis, Decision};
    let mut server = redis_or_skip!();
    let layer = |store: RedisStore| {
        RateLimitLayer::with_store(calls_capped_at_2(), store)
            .decision_extensions(true)
            .layer(service_fn(|_: Request<String>| async {
                Ok::<_, Infallible>(Response::new(String::new()))
            }))
    };
    let open = layer(
        builder(&server)
            .on_failure(FailurePolicy::Open)
            .connect()
            .await
            .unwrap(),
    );
    let local = layer(
        builder(&server)
            .on_failure(FailurePolicy::local(50))
            .connect()
            .await
            .unwrap(),
    );
    let counted = open.clone().oneshot(request("k")).await.unwrap();
    let decision = counted.extensions().get::<Decision>().unwrap();
    assert_eq!(decision.basis(), Basis::Counted);
    assert_eq!(counted.headers()["x-ratelimit-remaining"], "1");
    drop(counted);

    server.kill();
    let passed = open.oneshot(request("k")).await.unwrap();
    assert_eq!(passed.status(), StatusCode::OK);
    let decision = passed.extensions().get::<Decision>().unwrap();
    assert_eq!(decision.basis(), Basis::FailedOpen);
    assert!(
        !passed.headers().contains_key("x-ratelimit-remaining"),
        "{:?}",
        passed.headers()
    );
    let fell_back = local.clone().oneshot(request("k")).await.unwrap();
    assert_eq!(fell_back.status(), StatusCode::OK);
    let decision = fell_back.extensions().get::<Decision>().unwrap();
    assert_eq!(decision.basis(), Basis::LocalFallback);
    // This process's share is not the cap: no made-up numbers either.
    assert!(
        !fell_back.headers().contains_key("x-ratelimit-remaining"),
        "{:?}",
        fell_back.headers()
    );
    // The share (half of 2) is full while that response is held: refused
    // as busy, on the local share, which is what the numbers are of.
    let refused = local.oneshot(request("k")).await.unwrap();
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    let decision = refused.extensions().get::<Decision>().unwrap();
    assert_eq!(
        decision.refusal(),
        Some(tower_ratelimit::RefusalReason::Busy)
    );
    assert_eq!(decision.basis(), Basis::LocalFallback);
    assert_eq!(refused.headers()["x-ratelimit-limit"], "1");
    assert_eq!(refused.headers()["x-ratelimit-remaining"], "0");
    drop(fell_back);
}

/// Slots Redis lost (flushed here; a restart without persistence alike)
/// while their requests are still in flight are held again at the next
/// renewal: the cap holds across nodes again, rather than letting a second
/// round of requests in beside the first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slots_redis_lost_are_held_again_while_their_requests_run() {
    let server = redis_or_skip!();
    let lease = Duration::from_millis(300);
    let a = builder(&server).slot_lease(lease).connect().await.unwrap();
    let b = builder(&server).slot_lease(lease).connect().await.unwrap();
    let key = 0xf105;
    let held = now(&a, key, 1, Mode::Refuse).await.unwrap();
    let mut redis = server.client().await;
    let _: () = redis::cmd("FLUSHALL")
        .query_async(&mut redis)
        .await
        .unwrap();
    // Lost: another node's request gets the slot (until the renewal).
    let between = now(&b, key, 1, Mode::Refuse).await.unwrap();
    drop(between);
    // A renewal (every third of a lease) holds it again.
    tokio::time::sleep(lease).await;
    assert_eq!(
        now(&b, key, 1, Mode::Refuse).await.unwrap_err(),
        Busy::Full { in_flight: 1 }
    );
    drop(held);
    tokio::time::sleep(lease / 2).await;
    assert!(now(&b, key, 1, Mode::Refuse).await.is_ok());
}
