//! The decision script's exact integer arithmetic, run inside a real Redis
//! (Lua 5.1, whose numbers are doubles), against Rust's `u128`.

use proptest::prelude::*;

const LIMBS: &str = include_str!("../../src/store/redis/limbs.lua");
const BIGNUM: &str = include_str!("../../src/store/redis/bignum.lua");

/// Runs one operation of either kind on decimal arguments; answers decimal.
const DRIVER: &str = r#"
local B = bignum()
local op, a, b = ARGV[1], B.dec(ARGV[2]), B.dec(ARGV[3])
local function split(x)
  local y = B.norm({ x[1], x[2] or 0, x[3] or 0 })
  if #y > 3 then error('too big for three limbs') end
  return x[3] or 0, x[2] or 0, x[1]
end
local function join(a2, a1, a0) return B.str(B.norm({ a0, a1, a2 })) end
if op == 'add' then return B.str(B.add(a, b)) end
if op == 'sub' then return B.str(B.sub(a, b)) end
if op == 'mul' then return B.str(B.mul(a, b)) end
if op == 'cmp' then return tostring(B.cmp(a, b)) end
if op == 'divmod' then
  local q, r = B.divmod(a, b)
  return { B.str(q), B.str(r) }
end
local a2, a1, a0 = split(a)
local b2, b1, b0 = split(b)
if op == 'add3' then return join(add3(a2, a1, a0, b2, b1, b0)) end
if op == 'sub3' then return join(sub3(a2, a1, a0, b2, b1, b0)) end
if op == 'cmp3' then return tostring(cmp3(a2, a1, a0, b2, b1, b0)) end
if op == 'div_ceil3' then return string.format('%.0f', div_ceil3(a2, a1, a0, B.to_num(b))) end
if op == 'divmod3' then
  local q, r2, r1, r0 = divmod3(a2, a1, a0, b2, b1, b0)
  return { string.format('%.0f', q), join(r2, r1, r0) }
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
        .arg(format!("{LIMBS}\n{BIGNUM}\n{DRIVER}"))
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
                // The three-limb operations of every decision.
                let (a64, b64) = (a, b);
                assert_eq!(
                    text(&run(&mut connection, "add3", a64, b64).await),
                    (a64 + b64).to_string()
                );
                assert_eq!(
                    text(&run(&mut connection, "sub3", hi, lo).await),
                    (hi - lo).to_string()
                );
                assert_eq!(text(&run(&mut connection, "cmp3", a, b).await), order);
                let d = 1_000_000 + c % ((1 << 29) - 1_000_000);
                assert_eq!(
                    text(&run(&mut connection, "div_ceil3", a, d).await),
                    a.div_ceil(d).to_string()
                );
                // A time divided by a window's period (at least 1 ms).
                let period = b % (366 * 86_400 * 1_000_000_000) + 1_000_000;
                let redis::Value::Array(qr) = run(&mut connection, "divmod3", a, period).await
                else {
                    panic!("divmod3 answers two values");
                };
                assert_eq!(
                    (text(&qr[0]), text(&qr[1])),
                    ((a / period).to_string(), (a % period).to_string()),
                    "{a} / {period}"
                );
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
