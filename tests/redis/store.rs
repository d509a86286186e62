//! The Redis store against a real `redis-server`: shared exact counts across
//! layers, all-or-nothing decisions, keys and TTLs, clocks, and quota
//! changes that keep a bucket's count.

use std::sync::Arc;
use std::time::Duration;

use http::StatusCode;
use tower_ratelimit::clock::ManualClock;
use tower_ratelimit::key::{Header, PathCapture};
use tower_ratelimit::store::protocol::{Check, Decided, Outcome};
use tower_ratelimit::store::redis::RedisStore;
use tower_ratelimit::store::{MemoryStore, Store};
use tower_ratelimit::{Algorithm, Limit, Policy, Quota, RateLimitLayer, Window};

use crate::support::{decide, header, on_layer_clock, per_key, send, service, RedisServer, SECRET};

const S: u64 = 1_000_000_000;
/// 2023-11-14T22:13:20Z: not aligned to a minute or an hour.
const T0: u64 = 1_700_000_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_layers_sharing_one_redis_admit_exactly_the_limit_under_concurrent_load() {
    let server = redis_or_skip!();
    // GCRA, 60 per hour: one request earns back a slot only after 60 s, so
    // exactly 60 of these requests may pass, whichever node they reach.
    let policy = per_key(Quota::new(Window::per_hour(60)).and(Window::per_day(1000)));
    let mut services = Vec::new();
    let mut stores = Vec::new();
    for _ in 0..2 {
        let store = RedisStore::builder(server.url())
            .deadline(Duration::from_secs(5))
            .connect()
            .await
            .unwrap();
        stores.push(store.clone());
        services.push(service(
            &RateLimitLayer::with_store(policy.clone(), store).decision_extensions(true),
        ));
    }
    // One request through each layer first: the second sees the first's
    // count, so both decide on the same counts in Redis.
    let first = send(&services[0], "GET", "/v1/calls", "shared-key").await;
    assert_eq!(header(&first, "x-ratelimit-remaining"), Some("59"));
    let second = send(&services[1], "GET", "/v1/calls", "shared-key").await;
    assert_eq!(header(&second, "x-ratelimit-remaining"), Some("58"));
    let mut tasks = Vec::new();
    for i in 2..300 {
        let svc = services[i % 2].clone();
        tasks.push(tokio::spawn(async move {
            let response = send(&svc, "GET", "/v1/calls", "shared-key").await;
            (i % 2, response.status())
        }));
    }
    let mut admitted = [1usize; 2];
    let mut refused = 0;
    for task in tasks {
        let (node, status) = tokio::time::timeout(Duration::from_secs(20), task)
            .await
            .expect("no request hangs")
            .unwrap();
        match status {
            StatusCode::OK => admitted[node] += 1,
            StatusCode::TOO_MANY_REQUESTS => refused += 1,
            other => panic!("unexpected {other}"),
        }
    }
    assert_eq!(admitted[0] + admitted[1], 60, "{admitted:?} admitted");
    assert_eq!(refused, 240);
    for store in &stores {
        assert_eq!(store.failures(), 0, "every decision came from Redis");
    }
    // Another key is untouched.
    let response = send(&services[0], "GET", "/v1/calls", "other-key").await;
    assert_eq!(header(&response, "x-ratelimit-remaining"), Some("59"));
}

#[tokio::test]
async fn a_refused_request_writes_nothing_across_windows_and_stacked_limits() {
    let server = redis_or_skip!();
    let store = on_layer_clock(RedisStore::builder(server.url())).await;
    let now = T0 * S;
    let wide = Quota::new(Window::per_minute(100)).and(Window::per_hour(1000));
    let narrow = Quota::new(Window::per_second(1))
        .and(Window::per_minute(1))
        .algorithm(Algorithm::FixedWindow);
    let both = [Check::new(1, &wide), Check::new(2, &narrow)];
    assert!(decide(&store, now, &both).await.admitted());

    let mut client = server.client().await;
    let before = server.values().await;
    assert_eq!(before.len(), 2, "one key per bucket: {before:?}");

    let refused = decide(&store, now, &both).await;
    assert!(!refused.admitted());
    assert_eq!(
        refused.windows()[0].remaining,
        99,
        "the admitting limit reports what is left, untouched"
    );
    assert_eq!(
        refused.retry_after(),
        40 * S,
        "the fixed minute ends in 40 s"
    );
    assert_eq!(server.values().await, before, "nothing was written");

    // Multi-window inside one limit: the hour refuses, so the minute is not charged.
    let tight = Quota::new(Window::per_minute(5)).and(Window::per_hour(2));
    let one = [Check::new(3, &tight)];
    assert!(decide(&store, now, &one).await.admitted());
    assert!(decide(&store, now, &one).await.admitted());
    let refused = decide(&store, now, &one).await;
    assert!(!refused.admitted());
    assert_eq!(
        refused.windows()[0].remaining,
        3,
        "the minute window kept 3 of 5"
    );
    let only_wide = decide(&store, now, &[Check::new(1, &wide)]).await;
    assert_eq!(
        only_wide.windows()[0].remaining,
        98,
        "one request counted, not two"
    );
    let _: () = redis::cmd("PING").query_async(&mut client).await.unwrap();
}

#[tokio::test]
async fn shadow_checks_are_charged_only_when_the_request_and_all_of_them_admit() {
    let server = redis_or_skip!();
    let store = on_layer_clock(RedisStore::builder(server.url())).await;
    let now = T0 * S;
    let enforced = Quota::new(Window::per_minute(3));
    let shadow = Quota::new(Window::per_minute(1));
    let checks = [Check::new(10, &enforced), Check::shadow(11, &shadow)];
    let first = decide(&store, now, &checks).await;
    assert!(first.admitted() && !first.shadow_refused());
    let second = decide(&store, now, &checks).await;
    assert!(second.admitted(), "a shadow limit never refuses");
    assert!(second.shadow_refused());
    assert_eq!(second.retry_after(), 0);
    let third = decide(&store, now, &checks).await;
    assert!(third.admitted());
    let refused = decide(&store, now, &checks).await;
    assert!(!refused.admitted(), "3 per minute enforced");
    assert_eq!(
        refused.windows()[1].retry_after,
        0,
        "a shadow window never makes a client wait"
    );
}

#[tokio::test]
async fn no_raw_key_reaches_redis_and_every_key_has_a_ttl_just_past_its_window() {
    let server = redis_or_skip!();
    let policy = Policy::builder()
        .key_secret(SECRET)
        .limit(
            Limit::new("per_key", Header::parse("X-API-Key").unwrap())
                .quota(Quota::new(Window::per_minute(60)).and(Window::per_hour(1000))),
        )
        .limit(
            Limit::new("per_call", PathCapture::new("call_id")).route(
                "POST /v1/calls/{call_id}/control",
                Quota::new(Window::per_second(2))
                    .and(Window::per_minute(10))
                    .algorithm(Algorithm::FixedWindow),
            ),
        )
        .build()
        .unwrap();
    let store = RedisStore::builder(server.url())
        .prefix("nodes")
        .connect()
        .await
        .unwrap();
    let svc = service(&RateLimitLayer::with_store(policy, store).decision_extensions(true));
    let raw_keys = ["sk_live_RAWSECRETKEY1", "sk_live_RAWSECRETKEY2"];
    for (i, key) in raw_keys.iter().enumerate() {
        for _ in 0..3 {
            send(
                &svc,
                "POST",
                &format!("/v1/calls/call_RAWCALLID{i}/control"),
                key,
            )
            .await;
        }
    }
    let keys = server.keys().await;
    assert_eq!(
        keys.len(),
        2 + 2,
        "one key per bucket (both windows in it), per key and per call: {keys:?}"
    );
    let mut client = server.client().await;
    let hex = |part: &str| part.len() == 16 && part.bytes().all(|b| b.is_ascii_hexdigit());
    for key in &keys {
        let parts: Vec<&str> = key.split(':').collect();
        assert_eq!(parts.len(), 3, "{key}");
        assert_eq!(parts[0], "nodes");
        let tag = parts[1]
            .strip_prefix('{')
            .and_then(|p| p.strip_suffix('}'))
            .unwrap_or_else(|| panic!("{key}: the principal is the hash tag"));
        assert!(hex(tag), "{key}: the principal is a 64-bit hash");
        assert!(hex(parts[2]), "{key}: the bucket is a 64-bit hash");
        let value: Vec<u8> = redis::cmd("GET")
            .arg(key)
            .query_async(&mut client)
            .await
            .unwrap();
        let text = String::from_utf8_lossy(&value);
        for raw in ["RAWSECRETKEY", "RAWCALLID", "sk_live"] {
            assert!(!key.contains(raw) && !text.contains(raw), "{key} = {text}");
        }
        // The longest window's period, from the value's entries: a tag
        // ('g<period>@<interval>=' or 'f<period>=') and two doubles each.
        let mut periods = Vec::new();
        let mut rest = &value[..];
        while !rest.is_empty() {
            let end = rest.iter().position(|&b| b == b'=').unwrap() + 1;
            let tag = std::str::from_utf8(&rest[..end]).unwrap();
            let digits = tag[1..].split(['@', '=']).next().unwrap();
            periods.push(digits.parse::<u64>().unwrap());
            rest = &rest[end + 16..];
        }
        let period_ns = *periods.iter().max().unwrap();
        let ttl_ms: i64 = redis::cmd("PTTL")
            .arg(key)
            .query_async(&mut client)
            .await
            .unwrap();
        assert!(ttl_ms > 0, "{key} has a TTL");
        assert!(
            ttl_ms as u64 <= period_ns / 1_000_000 + 2,
            "{key}: TTL {ttl_ms} ms, just past its window at most"
        );
    }
}

#[tokio::test]
async fn the_database_empties_once_the_longest_window_has_passed() {
    let server = redis_or_skip!();
    let store = RedisStore::builder(server.url()).connect().await.unwrap();
    let gcra = Quota::new(Window::new(5, Duration::from_millis(200)).unwrap())
        .and(Window::new(20, Duration::from_millis(600)).unwrap());
    let fixed = Quota::new(Window::new(5, Duration::from_millis(300)).unwrap())
        .algorithm(Algorithm::FixedWindow);
    for bucket in 0..20u64 {
        let checks = [
            Check::new(bucket, &gcra),
            Check::new(bucket | 1 << 40, &fixed),
        ];
        assert!(decide(&store, 0, &checks).await.admitted());
    }
    let mut client = server.client().await;
    let size: u64 = redis::cmd("DBSIZE").query_async(&mut client).await.unwrap();
    assert_eq!(size, 40, "one key per bucket");
    tokio::time::sleep(Duration::from_millis(700)).await;
    // Redis expires keys lazily and in an active cycle (10 times a second);
    // give the cycle a moment.
    let mut size = u64::MAX;
    for _ in 0..20 {
        size = redis::cmd("DBSIZE").query_async(&mut client).await.unwrap();
        if size == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(size, 0, "every key expired");
}

#[tokio::test]
async fn skewed_node_clocks_change_no_decision() {
    let server = redis_or_skip!();
    // Two nodes, their clocks 5 hours apart, one Redis clock.
    let policy = per_key(Quota::new(Window::per_minute(10)));
    let early = ManualClock::at_unix_secs(T0);
    let late = ManualClock::at_unix_secs(T0 + 5 * 3600);
    let mut nodes = Vec::new();
    for clock in [&early, &late] {
        let store = RedisStore::builder(server.url()).connect().await.unwrap();
        nodes.push(service(
            &RateLimitLayer::with_store(policy.clone(), store)
                .decision_extensions(true)
                .clock(clock.clone()),
        ));
    }
    let mut statuses = Vec::new();
    for i in 0..14 {
        let response = send(&nodes[i % 2], "GET", "/", "k").await;
        statuses.push(response.status().as_u16());
        if response.status() == StatusCode::TOO_MANY_REQUESTS {
            // Either node says the same wait: the next slot is ~6 s away on
            // Redis's clock.
            assert_eq!(header(&response, "retry-after"), Some("6"), "request {i}");
        }
    }
    assert_eq!(
        statuses.iter().filter(|&&s| s == 200).count(),
        10,
        "{statuses:?}"
    );
    assert_eq!(&statuses[..10], &[200; 10]);
    // Moving a node's clock on by an hour earns nothing back: Redis decides.
    early.advance(Duration::from_secs(3600));
    assert_eq!(
        send(&nodes[0], "GET", "/", "k").await.status(),
        StatusCode::TOO_MANY_REQUESTS
    );
}

#[tokio::test]
async fn a_fixed_window_counts_a_node_behind_in_the_window_a_node_ahead_counted_in() {
    let server = redis_or_skip!();
    let redis = on_layer_clock(RedisStore::builder(server.url())).await;
    let memory = MemoryStore::new();
    // A whole minute, and a period of whole nanoseconds only (the script's
    // rare path).
    let periods = [
        Duration::from_secs(60),
        Duration::from_nanos(60_000_000_001),
    ];
    for (bucket, period) in (1..).zip(periods) {
        let p = period.as_nanos() as u64;
        let quota = Quota::new(Window::new(5, period).unwrap()).algorithm(Algorithm::FixedWindow);
        let check = [Check::new(bucket, &quota)];
        let end = (T0 * S / p + 1) * p;
        let (ahead, behind) = (end + 1_000, end - 1_000);
        // The node ahead counts 3 in the new window; the node behind counts
        // there too (2 more, not a fresh 5), and overwrites nothing.
        for (now, n, admitted) in [(ahead, 3, 3), (behind, 5, 2), (ahead, 5, 0), (behind, 5, 0)] {
            let mut counted = 0;
            for _ in 0..n {
                let on_redis = decide(&redis, now, &check).await;
                let in_memory = match memory.check(now, &check) {
                    Decided::Ready(outcome) => outcome.unwrap(),
                    Decided::Pending(_) => unreachable!("the memory store decides at once"),
                };
                assert_eq!(
                    on_redis.windows(),
                    in_memory.windows(),
                    "{period:?} at {now}"
                );
                assert_eq!(on_redis.admitted(), in_memory.admitted());
                counted += usize::from(on_redis.admitted());
            }
            assert_eq!(counted, admitted, "{period:?}: {n} at {now}");
        }
    }
    // The keys live until the new windows end, not the old ones.
    let mut client = server.client().await;
    for key in server.keys().await {
        let ttl_ms: i64 = redis::cmd("PTTL")
            .arg(&key)
            .query_async(&mut client)
            .await
            .unwrap();
        assert!(ttl_ms > 59_000, "{key}: {ttl_ms} ms");
    }
}

#[tokio::test]
async fn lowering_a_gcra_limit_keeps_the_count_and_refuses_at_once() {
    let server = redis_or_skip!();
    let store = on_layer_clock(RedisStore::builder(server.url())).await;
    let now = T0 * S;
    let ten = Quota::new(Window::per_minute(10));
    let five = Quota::new(Window::per_minute(5));
    let twenty = Quota::new(Window::per_minute(20));
    for _ in 0..8 {
        assert!(decide(&store, now, &[Check::new(7, &ten)]).await.admitted());
    }
    // 8 used of a new limit of 5: refused at once, until 4 requests' worth
    // (3 over the limit, and room for this one) has returned at 12 s each.
    let lowered = decide(&store, now, &[Check::new(7, &five)]).await;
    assert!(!lowered.admitted());
    assert_eq!(lowered.windows()[0].remaining, 0);
    assert_eq!(lowered.retry_after(), 48 * S);
    // The conversion is kept although the request was refused: the count
    // now returns at the new rate (one per 12 s, not one per 6 s).
    let later = decide(&store, now + 24 * S, &[Check::new(7, &five)]).await;
    assert!(!later.admitted(), "6 of 5 still used after 24 s");
    assert_eq!(later.retry_after(), 24 * S);
    assert!(decide(&store, now + 48 * S, &[Check::new(7, &five)])
        .await
        .admitted());
    // Raised to 20 at the same moment: 5 used, so 14 left after one more.
    let raised = decide(&store, now + 48 * S, &[Check::new(7, &twenty)]).await;
    assert!(raised.admitted());
    assert_eq!(raised.windows()[0].remaining, 14);
    // Back at 10: 6 used (rescaled from the 20-per-minute interval).
    let back = decide(&store, now + 48 * S, &[Check::new(7, &ten)]).await;
    assert!(back.admitted());
    assert_eq!(back.windows()[0].remaining, 3);

    // Fixed windows keep their count as it is.
    let fixed = |limit| Quota::new(Window::per_minute(limit)).algorithm(Algorithm::FixedWindow);
    for _ in 0..8 {
        assert!(decide(&store, now, &[Check::new(8, &fixed(10))])
            .await
            .admitted());
    }
    assert!(!decide(&store, now, &[Check::new(8, &fixed(5))])
        .await
        .admitted());
    let raised = decide(&store, now, &[Check::new(8, &fixed(20))]).await;
    assert_eq!(raised.windows()[0].remaining, 11);
}

#[tokio::test]
async fn script_flush_is_recovered_from_transparently() {
    let server = redis_or_skip!();
    let store = on_layer_clock(RedisStore::builder(server.url())).await;
    let quota = Quota::new(Window::per_minute(3));
    let check = [Check::new(1, &quota)];
    assert!(decide(&store, T0 * S, &check).await.admitted());
    let loads = store.script_loads();
    let mut client = server.client().await;
    let _: () = redis::cmd("SCRIPT")
        .arg("FLUSH")
        .query_async(&mut client)
        .await
        .unwrap();
    let after = decide(&store, T0 * S, &check).await;
    assert!(after.admitted());
    assert_eq!(
        after.windows()[0].remaining,
        1,
        "the count survived, the script was reloaded"
    );
    assert_eq!(store.script_loads(), loads + 1);
    assert_eq!(store.failures(), 0, "NOSCRIPT is no failure");
}

#[tokio::test]
async fn keys_of_other_prefixes_and_stores_do_not_mix() {
    let server = redis_or_skip!();
    let a = Arc::new(
        RedisStore::builder(server.url())
            .prefix("a")
            .layer_clock()
            .connect()
            .await
            .unwrap(),
    );
    let b = RedisStore::builder(server.url())
        .prefix("b")
        .layer_clock()
        .connect()
        .await
        .unwrap();
    let quota = Quota::new(Window::per_minute(1));
    assert!(decide(&a, T0 * S, &[Check::new(1, &quota)])
        .await
        .admitted());
    assert!(decide(&b, T0 * S, &[Check::new(1, &quota)])
        .await
        .admitted());
    assert!(!decide(&a, T0 * S, &[Check::new(1, &quota)])
        .await
        .admitted());
    assert!(RedisStore::builder(server.url())
        .prefix("bad{tag}")
        .build()
        .is_err());
    assert!(RedisStore::builder("not a url").build().is_err());
}

/// A Redis store on the layer's clock that decides every refusal itself
/// (no deny cache: every window is reported), beside a memory store to
/// compare it with.
async fn beside_memory(server: &RedisServer) -> (RedisStore, MemoryStore) {
    let redis = RedisStore::builder(server.url())
        .layer_clock()
        .deny_cache(false)
        .deadline(Duration::from_secs(2))
        .connect()
        .await
        .unwrap();
    (redis, MemoryStore::new())
}

/// The memory store's outcome of `checks` at `now`.
fn decided_in(memory: &MemoryStore, now: u64, checks: &[Check<'_>]) -> Outcome {
    match memory.check(now, checks) {
        Decided::Ready(outcome) => outcome.unwrap(),
        Decided::Pending(_) => unreachable!(),
    }
}

#[tokio::test]
async fn quotas_of_three_windows_and_their_changes_decide_and_peek_as_the_memory_store() {
    let server = redis_or_skip!();
    let (redis, memory) = beside_memory(&server).await;
    let ms = Duration::from_millis;
    let gcra = Quota::new(Window::per_second(5))
        .and(Window::per_minute(20))
        .and(Window::per_hour(100));
    // Other rates in all three periods (every window rescaled); other
    // rates in two of the periods, and a period dropped.
    let rescaled = Quota::new(Window::per_second(4))
        .and(Window::per_minute(30))
        .and(Window::per_hour(60));
    let changed = Quota::new(Window::per_second(3)).and(Window::per_minute(7));
    let fixed = Quota::new(Window::new(4, ms(700)).unwrap())
        .and(Window::per_second(6))
        .and(Window::new(9, ms(2500)).unwrap())
        .algorithm(Algorithm::FixedWindow);
    let mut now = T0 * S + 123_456_789;
    // Three windows, three at other rates, two, and three again (the
    // dropped period back): each change read from a value of another quota.
    for step in 0..64u64 {
        now += (step % 7) * 97_000_000;
        let quota = match step {
            0..16 => &gcra,
            16..32 => &rescaled,
            32..48 => &changed,
            _ => &gcra,
        };
        let checks = [Check::new(1, quota).based_on(&gcra), Check::new(2, &fixed)];
        for checks in [&checks[..1], &checks[1..], &checks[..]] {
            let expected = decided_in(&memory, now, checks);
            assert_eq!(decide(&redis, now, checks).await, expected, "step {step}");
            let peeked = redis.peek(now, checks).await.unwrap();
            assert_eq!(
                peeked,
                memory.peek(now, checks).await.unwrap(),
                "step {step}"
            );
        }
    }
    assert_eq!(redis.failures(), 0);
}

#[tokio::test]
async fn a_debt_past_any_window_converts_and_comes_back_as_in_the_memory_store() {
    let server = redis_or_skip!();
    let (redis, memory) = beside_memory(&server).await;
    let year = Duration::from_secs(366 * 86_400);
    // A year's quota used at once; then 1 a year (a debt of 1,000 years,
    // past the latest arrival time kept: capped alike), back, then 10 a
    // year (100 years: kept exactly), back.
    let base = Quota::new(Window::new(1000, year).unwrap()).cost(1000);
    let sliver = Quota::new(Window::new(1, year).unwrap());
    let tenth = Quota::new(Window::new(10, year).unwrap());
    let mut now = T0 * S;
    for (step, quota) in [&base, &sliver, &base, &tenth, &base, &sliver]
        .into_iter()
        .enumerate()
    {
        let checks = [Check::new(1, quota).based_on(&base)];
        let expected = decided_in(&memory, now, &checks);
        assert_eq!(decide(&redis, now, &checks).await, expected, "step {step}");
        assert_eq!(expected.admitted(), step == 0, "step {step}");
        now += 500_000_000;
    }
    assert_eq!(redis.failures(), 0);
}
