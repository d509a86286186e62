//! The decision script's exact integer arithmetic, run inside a real Redis
//! (Lua 5.1, whose numbers are doubles): its big integers against Rust's
//! `u128`, and its decisions at any time of the `u64` range of nanoseconds,
//! on any window the crate accepts, against the memory store's.

use proptest::prelude::*;

const BIGNUM: &str = include_str!("../../src/store/redis/bignum.lua");

/// Runs one operation of either kind on decimal arguments; answers decimal.
const DRIVER: &str = r#"
local B = bignum()
local op, a, b = ARGV[1], B.dec(ARGV[2]), B.dec(ARGV[3])
-- The decimal string of a (in the test only: the script never prints one).
function B.str(a)
  if #a == 1 and a[1] < 1000000 then return string.format('%d', a[1]) end
  local parts, x = {}, a
  while not (#x == 1 and x[1] == 0) do
    local r
    x, r = B.divmod(x, B.from_int(1000000))
    parts[#parts + 1] = B.to_num(r)
  end
  local out = string.format('%d', parts[#parts])
  for i = #parts - 1, 1, -1 do out = out .. string.format('%06d', parts[i]) end
  return out
end
if op == 'add' then return B.str(B.add(a, b)) end
if op == 'sub' then return B.str(B.sub(a, b)) end
if op == 'mul' then return B.str(B.mul(a, b)) end
if op == 'cmp' then return tostring(B.cmp(a, b)) end
if op == 'divmod' then
  local q, r = B.divmod(a, b)
  return { B.str(q), B.str(r) }
end
return redis.error_reply('unknown op')
"#;

async fn run(
    connection: &mut redis::aio::MultiplexedConnection,
    op: &str,
    a: u128,
    b: u128,
) -> redis::Value {
    redis::cmd("EVAL")
        .arg(format!("{BIGNUM}\n{DRIVER}"))
        .arg(0)
        .arg(op)
        .arg(a.to_string())
        .arg(b.to_string())
        .query_async(connection)
        .await
        .expect("the script runs")
}

fn text(value: &redis::Value) -> String {
    match value {
        redis::Value::BulkString(bytes) => String::from_utf8(bytes.clone()).unwrap(),
        other => panic!("not a string: {other:?}"),
    }
}

/// Values spread over every magnitude from 0 to 2^64, with the edges.
fn u64s() -> impl Strategy<Value = u64> {
    prop_oneof![
        0u64..1000,
        any::<u64>(),
        (0u32..64).prop_flat_map(
            |bits| (0u64..=(1u64 << bits)).prop_map(move |x| x | (1u64 << bits) >> 1)
        ),
        Just(u64::MAX),
        Just((1u64 << 53) + 1),
        Just(1u64 << 24),
        Just((1u64 << 48) - 1),
    ]
}

#[test]
fn lua_arithmetic_is_exact_over_the_whole_u64_range() {
    let Some(server) = crate::support::server() else {
        return;
    };
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let connection = runtime.block_on(server.client());
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases: 400,
        failure_persistence: None,
        ..ProptestConfig::default()
    });
    runner
        .run(&(u64s(), u64s(), u64s()), |(a, b, c)| {
            let (a, b, c) = (u128::from(a), u128::from(b), u128::from(c));
            let mut connection = connection.clone();
            runtime.block_on(async {
                let (hi, lo) = (a.max(b), a.min(b));
                assert_eq!(
                    text(&run(&mut connection, "add", a, b).await),
                    (a + b).to_string()
                );
                assert_eq!(
                    text(&run(&mut connection, "sub", hi, lo).await),
                    (hi - lo).to_string()
                );
                assert_eq!(
                    text(&run(&mut connection, "mul", a, b).await),
                    (a * b).to_string()
                );
                let order = match a.cmp(&b) {
                    std::cmp::Ordering::Less => "-1",
                    std::cmp::Ordering::Equal => "0",
                    std::cmp::Ordering::Greater => "1",
                };
                assert_eq!(text(&run(&mut connection, "cmp", a, b).await), order);
                // Division as the rescale uses it: a u64 (or a product of
                // two) by a u64.
                for (n, d) in [(a, b.max(1)), (a * b, c.max(1)), (a * c + b, b.max(1))] {
                    let redis::Value::Array(qr) = run(&mut connection, "divmod", n, d).await else {
                        panic!("divmod answers two values");
                    };
                    assert_eq!(
                        (text(&qr[0]), text(&qr[1])),
                        ((n / d).to_string(), (n % d).to_string()),
                        "{n} / {d}"
                    );
                }
            });
            Ok(())
        })
        .unwrap();
}

/// A window of any period the crate accepts (1 ms to 366 days, to the
/// nanosecond), with any limit it allows.
fn windows() -> impl Strategy<Value = tower_ratelimit::Window> {
    const MAX: u64 = 366 * 86_400 * 1_000_000_000;
    let period = prop_oneof![
        1_000_000u64..=MAX,
        (1u64..=366 * 86_400).prop_map(|s| s * 1_000_000_000),
        (1u64..=366 * 86_400_000).prop_map(|ms| ms * 1_000_000),
        1_000_000u64..10_000_000_000,
    ];
    (period, 1u32..=u32::MAX, 1u32..8).prop_map(|(period, limit, small)| {
        // Mostly small limits (so that requests are refused), some large.
        let limit = if limit % 3 == 0 { limit } else { small };
        let limit = u64::from(limit).min(period) as u32;
        tower_ratelimit::Window::new(limit, std::time::Duration::from_nanos(period)).unwrap()
    })
}

#[test]
fn decisions_agree_with_the_memory_store_at_any_time_on_any_window() {
    use tower_ratelimit::store::protocol::{Check, Decided};
    use tower_ratelimit::store::redis::RedisStore;
    use tower_ratelimit::store::{MemoryStore, Store};
    use tower_ratelimit::{Algorithm, Quota};

    let Some(server) = crate::support::server() else {
        return;
    };
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let case = std::sync::atomic::AtomicUsize::new(0);
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases: 120,
        failure_persistence: None,
        ..ProptestConfig::default()
    });
    // Times up to the last that leaves room for a year's window and its
    // debt in 64 bits of nanoseconds.
    let times = prop_oneof![
        0u64..u64::MAX - (1 << 60),
        Just(1_700_000_000_999_999_999u64),
        Just(u64::MAX - (1 << 60)),
    ];
    let strategy = (
        times,
        windows(),
        prop::option::of(windows()),
        1u32..=u32::MAX,
        any::<bool>(),
        prop::collection::vec((0u64..(1 << 50), any::<bool>()), 1..12),
    );
    runner
        .run(
            &strategy,
            |(start, first, second, other_limit, fixed, steps)| {
                runtime.block_on(async {
                    let prefix = format!(
                        "x{}",
                        case.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
                    );
                    let redis = RedisStore::builder(server.url())
                        .prefix(prefix)
                        .layer_clock()
                        .deadline(std::time::Duration::from_secs(5))
                        .deny_cache(false)
                        .connect()
                        .await
                        .unwrap();
                    let memory = MemoryStore::new();
                    let algorithm = if fixed {
                        Algorithm::FixedWindow
                    } else {
                        Algorithm::Gcra
                    };
                    let mut base = Quota::new(first).algorithm(algorithm);
                    if let Some(second) = second.filter(|w| w.period() != first.period()) {
                        base = base.and(second);
                    }
                    // The same period at another limit: a changed quota.
                    let limit = other_limit.min(first.period().as_nanos() as u32).max(1);
                    let changed =
                        Quota::new(tower_ratelimit::Window::new(limit, first.period()).unwrap())
                            .algorithm(algorithm);
                    let mut now = start;
                    for (i, &(advance, use_changed)) in steps.iter().enumerate() {
                        now = now.saturating_add(advance % (first.period().as_nanos() as u64 * 2));
                        let quota = if use_changed { &changed } else { &base };
                        let checks = [Check::new(1, quota).based_on(&base)];
                        let Decided::Ready(Ok(expected)) = memory.check(now, &checks) else {
                            panic!("the memory store decides at once");
                        };
                        let got = match redis.check(now, &checks) {
                            Decided::Pending(pending) => pending.await.unwrap(),
                            Decided::Ready(result) => result.unwrap(),
                        };
                        prop_assert_eq!(&got, &expected, "step {} at {} on {:?}", i, now, quota);
                    }
                    prop_assert_eq!(redis.failures(), 0);
                    Ok(())
                })
            },
        )
        .unwrap();
}
