//! What a decision costs Redis, and how many decisions one process gets
//! through one connection: the store's decision script beside a plain GCRA
//! script, on one `redis-server` that the bench starts (from `PATH`,
//! persistence off) on a free loopback port and stops at the end.
//!
//! Run with
//! `cargo bench -p tower-ratelimit-benches --bench redis_cost --features redis`.
//!
//! * **Redis CPU per decision**: `INFO commandstats`, `cmdstat_evalsha`'s
//!   `usec` over its `calls` after `CONFIG RESETSTAT`, for the store with one
//!   window (60/minute) and with two (and 1,000/hour), and for the plain GCRA
//!   script on as many keys; the median of five rounds of 20,000 decisions,
//!   and the ratio store / plain. Every decision is admitted (limits no run
//!   gets near), so both scripts write every window.
//! * **Decisions per second** from one process over the store's one
//!   connection, two windows, with 64 and 256 decisions in flight, and the
//!   p50 and p99 latency of one decision under that load (the median rate of
//!   five runs of 30,000, alternating with the plain script through one
//!   multiplexed connection).
//!
//! Each measurement cycles through 10,000 distinct keys, created by a
//! warm-up pass first. Criterion then times batches of 128 decisions in
//! flight, store beside plain script.

mod support;

use std::cell::Cell;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput};
use redis::aio::MultiplexedConnection;
use support::{bucket, quantile_micros, RedisServer, T0};
use tower_ratelimit::store::protocol::{Check, Decided};
use tower_ratelimit::store::redis::RedisStore;
use tower_ratelimit::store::Store;
use tower_ratelimit::{Quota, Window};

/// Distinct keys of each measurement.
const KEYS: u64 = 10_000;
/// Decisions per round of the CPU measurement.
const PER_ROUND: u64 = 20_000;
/// Rounds of each measurement (the median is reported).
const ROUNDS: usize = 5;
/// Decisions in flight in the CPU measurement.
const CPU_IN_FLIGHT: usize = 64;
/// Decisions per throughput run.
const PER_RUN: u64 = 30_000;
/// Decisions in flight in criterion's batches.
const BATCH: usize = 128;

/// The windows' limits, far above what any run sends to one key.
const PER_MINUTE: u32 = 100_000;
const PER_HOUR: u32 = 1_000_000;

/// The standard GCRA, as a Redis script of the usual shape (`TIME`, one `GET`
/// per window, the arithmetic in Lua numbers, one `SET … PX` per window on
/// admission), for as many windows as keys, all or nothing.
const PLAIN_GCRA: &str = r#"
-- KEYS[i]: window i's theoretical arrival time (TAT), in microseconds.
-- ARGV[2i-1], ARGV[2i]: its emission interval and period (interval * limit),
-- in microseconds. Returns admitted (1/0), then per window what remains
-- and the microseconds until it is full again.
local t = redis.call('TIME')
local now = t[1] * 1000000 + t[2]
local reply = { 1 }
local tats = {}
for i, key in ipairs(KEYS) do
  local interval = tonumber(ARGV[2 * i - 1])
  local period = tonumber(ARGV[2 * i])
  local tat = tonumber(redis.call('GET', key)) or now
  if tat < now then tat = now end
  local new_tat = tat + interval
  local diff = now - (new_tat - period)
  if diff < 0 then reply[1] = 0 end
  tats[i] = new_tat
  reply[2 * i] = math.floor(diff / interval)
  reply[2 * i + 1] = new_tat - now
end
if reply[1] == 1 then
  for i, key in ipairs(KEYS) do
    redis.call('SET', key, tats[i], 'PX', math.ceil((tats[i] - now) / 1000))
  end
end
return reply
"#;

/// Which script decides.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Decider {
    /// The crate's `RedisStore`.
    Store,
    /// [`PLAIN_GCRA`], through a multiplexed connection.
    Plain,
}

/// The store, the plain script's connection, and the key each next
/// decision takes (cycling through [`KEYS`]).
struct Bench {
    store: RedisStore,
    plain: MultiplexedConnection,
    plain_sha: String,
    one: Quota,
    two: Quota,
    cursor: Cell<u64>,
}

impl Bench {
    /// One decision by `who` with `windows` (1 or 2) windows on the next
    /// key; whether it was admitted.
    async fn decide(&self, who: Decider, windows: usize) -> bool {
        let i = self.cursor.get();
        self.cursor.set(i + 1);
        // One key set per window count, as the store's keys name the window.
        let key = bucket(i % KEYS + ((windows as u64) << 32));
        match who {
            Decider::Store => {
                let quota = if windows == 1 { &self.one } else { &self.two };
                match self.store.check(T0, &[Check::new(key, quota)]) {
                    Decided::Pending(pending) => pending.await.expect("decided").admitted(),
                    Decided::Ready(_) => panic!("the circuit breaker opened"),
                }
            }
            Decider::Plain => {
                // (period in µs, limit) of each window.
                let windows = &[(60_000_000u64, PER_MINUTE), (3_600_000_000, PER_HOUR)][..windows];
                let mut command = redis::cmd("EVALSHA");
                command.arg(&self.plain_sha).arg(windows.len());
                for (period, _) in windows {
                    command.arg(format!("plain:{key:016x}:{period}"));
                }
                for &(period, limit) in windows {
                    command.arg(period / u64::from(limit)).arg(period);
                }
                let reply: Vec<i64> = command
                    .query_async(&mut self.plain.clone())
                    .await
                    .expect("the plain script runs");
                reply[0] == 1
            }
        }
    }

    /// `total` decisions by `who`, `in_flight` at a time: how long they
    /// took, and each one's latency.
    async fn drive(
        &self,
        who: Decider,
        windows: usize,
        total: u64,
        in_flight: usize,
    ) -> (Duration, Vec<Duration>) {
        let left = Cell::new(total);
        let worker = || async {
            let mut latencies = Vec::new();
            while left.get() > 0 {
                left.set(left.get() - 1);
                let started = Instant::now();
                assert!(self.decide(who, windows).await, "admitted");
                latencies.push(started.elapsed());
            }
            latencies
        };
        let started = Instant::now();
        let workers = futures::future::join_all((0..in_flight).map(|_| worker())).await;
        (started.elapsed(), workers.into_iter().flatten().collect())
    }

    /// Redis's CPU per `EVALSHA`, in microseconds, over [`PER_ROUND`]
    /// decisions by `who`.
    async fn cpu_per_decision(&self, who: Decider, windows: usize) -> f64 {
        let mut admin = self.plain.clone();
        let () = redis::cmd("CONFIG")
            .arg("RESETSTAT")
            .query_async(&mut admin)
            .await
            .expect("CONFIG RESETSTAT");
        self.drive(who, windows, PER_ROUND, CPU_IN_FLIGHT).await;
        let info: String = redis::cmd("INFO")
            .arg("commandstats")
            .query_async(&mut admin)
            .await
            .expect("INFO commandstats");
        let (calls, usec) = evalsha_stats(&info);
        assert_eq!(calls, PER_ROUND, "one EVALSHA per decision");
        usec as f64 / calls as f64
    }
}

/// `cmdstat_evalsha`'s `calls` and `usec` in `INFO commandstats`.
fn evalsha_stats(info: &str) -> (u64, u64) {
    let line = info
        .lines()
        .find_map(|l| l.strip_prefix("cmdstat_evalsha:"))
        .unwrap_or_else(|| panic!("no cmdstat_evalsha in {info}"));
    let field = |name: &str| -> u64 {
        line.split(',')
            .find_map(|f| f.strip_prefix(name)?.strip_prefix('='))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {name} in {line}"))
    };
    (field("calls"), field("usec"))
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn main() {
    let server = RedisServer::start();
    let runtime = support::runtime();
    let bench = runtime.block_on(async {
        let store = RedisStore::builder(server.url())
            .deadline(Duration::from_secs(5))
            .connect()
            .await
            .expect("the bench's Redis answers");
        let mut plain = redis::Client::open(server.url())
            .expect("a URL")
            .get_multiplexed_async_connection()
            .await
            .expect("a connection");
        let plain_sha: String = redis::cmd("SCRIPT")
            .arg("LOAD")
            .arg(PLAIN_GCRA)
            .query_async(&mut plain)
            .await
            .expect("SCRIPT LOAD");
        Bench {
            store,
            plain,
            plain_sha,
            one: Quota::new(Window::per_minute(PER_MINUTE)),
            two: Quota::new(Window::per_minute(PER_MINUTE)).and(Window::per_hour(PER_HOUR)),
            cursor: Cell::new(0),
        }
    });
    let both = [Decider::Store, Decider::Plain];

    runtime.block_on(async {
        for windows in [1, 2] {
            for who in both {
                bench.drive(who, windows, KEYS, CPU_IN_FLIGHT).await;
            }
        }
        println!(
            "Redis CPU per decision (cmdstat_evalsha usec / calls; median of {ROUNDS} rounds of \
             {PER_ROUND}, {KEYS} keys):"
        );
        for windows in [1, 2] {
            let mut usec = [Vec::new(), Vec::new()];
            for _ in 0..ROUNDS {
                for (k, who) in both.into_iter().enumerate() {
                    usec[k].push(bench.cpu_per_decision(who, windows).await);
                }
            }
            let [store, plain] = usec.map(median);
            println!(
                "  {windows} window{s}: store {store:6.2} µs   plain GCRA {plain:6.2} µs   \
                 ratio {:.2}x",
                store / plain,
                s = if windows == 1 { " " } else { "s" },
            );
        }

        println!(
            "decisions per second, one process, one connection, 2 windows, {KEYS} keys \
             (median of {ROUNDS} runs of {PER_RUN}; latencies over all runs):"
        );
        for in_flight in [64, 256] {
            let mut rates = [Vec::new(), Vec::new()];
            let mut latencies = [Vec::new(), Vec::new()];
            for _ in 0..ROUNDS {
                for (k, who) in both.into_iter().enumerate() {
                    let (took, run) = bench.drive(who, 2, PER_RUN, in_flight).await;
                    rates[k].push(PER_RUN as f64 / took.as_secs_f64());
                    latencies[k].extend(run);
                }
            }
            let rates = rates.map(median);
            for (k, name) in ["store", "plain GCRA"].into_iter().enumerate() {
                latencies[k].sort();
                println!(
                    "  {name:<10} {in_flight:>3} in flight: {:>8.0}/s   p50 {:>8.1} µs   p99 {:>8.1} µs",
                    rates[k],
                    quantile_micros(&latencies[k], 0.50),
                    quantile_micros(&latencies[k], 0.99),
                );
            }
            println!(
                "  {:<10} {in_flight:>3} in flight: {:.2}x the plain script's rate",
                "store", rates[0] / rates[1]
            );
        }
    });
    assert_eq!(bench.store.failures(), 0, "every decision came from Redis");

    let mut criterion = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(20)
        .configure_from_args();
    let mut group = criterion.benchmark_group("evalsha, 2 windows");
    group.throughput(Throughput::Elements(BATCH as u64));
    for (name, who) in [("store", Decider::Store), ("plain GCRA", Decider::Plain)] {
        group.bench_function(format!("{name}, {BATCH} in flight"), |b| {
            b.iter(|| runtime.block_on(bench.drive(who, 2, BATCH as u64, BATCH)))
        });
    }
    group.finish();
    criterion.final_summary();
    assert_eq!(bench.store.failures(), 0, "every decision came from Redis");
}
