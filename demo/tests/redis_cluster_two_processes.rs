//! Two demo servers (the `voice_api` binary), two processes, one three-node
//! Redis Cluster (`--redis-cluster`, each through another seed node): between
//! them they admit exactly the limit. `--redis` and `--redis-cluster` exclude
//! each other.
//!
//! The cluster test starts three `redis-server`s in cluster mode on free
//! loopback ports and joins them with `redis-cli --cluster create`. Without
//! them on `PATH` it fails with a message that says how to install them,
//! unless `TOWER_RATELIMIT_SKIP_REDIS=1` is set (then it passes after
//! printing that it did not run).

#![cfg(feature = "redis")]

mod support;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// One key secret for both processes, so that they hash a key into the
/// same bucket.
const SECRET: &str = "000102030405060708090a0b0c0d0e0f";

/// 50 per hour per `X-API-Key`, GCRA: a slot comes back only after 72 s, so
/// a test run admits exactly 50.
const POLICY: &str = r#"
headers = "x-ratelimit"

[[limits]]
name = "per_key"
key = { header = "X-API-Key" }
on_missing_key = "reject"

[[limits.routes]]
windows = ["50/hour"]
"#;

use support::{exchange, free_port, start_demo, Process, DEMO};

/// Three `redis-server`s in cluster mode joined into one cluster, killed
/// and their scratch directory removed on drop.
struct Cluster {
    nodes: Vec<Process>,
    ports: Vec<u16>,
    dir: PathBuf,
}

impl Cluster {
    fn start() -> Self {
        let dir = std::env::temp_dir().join(format!(
            "tower-ratelimit-demo-cluster-{}",
            std::process::id()
        ));
        let mut cluster = Cluster {
            nodes: Vec::new(),
            ports: Vec::new(),
            dir,
        };
        for _ in 0..3 {
            // The cluster bus listens 10,000 ports above.
            let port = std::iter::repeat_with(free_port)
                .find(|&p| {
                    p <= u16::MAX - 10_000 && TcpListener::bind(("127.0.0.1", p + 10_000)).is_ok()
                })
                .unwrap();
            let dir = cluster.dir.join(port.to_string());
            std::fs::create_dir_all(&dir).expect("a scratch directory");
            let child = Command::new("redis-server")
                .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
                .args([
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                    "--cluster-enabled",
                    "yes",
                ])
                .arg("--dir")
                .arg(&dir)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap_or_else(|e| panic!("{}: {e}", install("redis-server")));
            cluster.nodes.push(Process(child));
            cluster.ports.push(port);
        }
        wait_for(
            |port| query(port, "PING").starts_with("+PONG"),
            &cluster.ports,
        );
        let output = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(cluster.ports.iter().map(|p| format!("127.0.0.1:{p}")))
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("{}: {e}", install("redis-cli")));
        assert!(
            output.status.success(),
            "redis-cli --cluster create: {}",
            String::from_utf8_lossy(&output.stdout)
        );
        wait_for(
            |port| query(port, "CLUSTER INFO").contains("cluster_state:ok"),
            &cluster.ports,
        );
        cluster
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.nodes.clear();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn install(program: &str) -> String {
    format!(
        "the Redis tests need `{program}` on PATH: install it with \
         `apt-get install -y redis-server` (or `brew install redis`), \
         or set TOWER_RATELIMIT_SKIP_REDIS=1 to skip them"
    )
}

/// Polls `ready` on every port until it holds, for at most 15 s.
fn wait_for(ready: impl Fn(u16) -> bool, ports: &[u16]) {
    let started = Instant::now();
    for &port in ports {
        while !ready(port) {
            assert!(
                started.elapsed() < Duration::from_secs(15),
                "the Redis node on port {port} was not ready within 15 s"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Sends one inline command and `QUIT` to the Redis on `port`; the reply
/// as text ("" if it does not answer).
fn query(port: u16, command: &str) -> String {
    let Ok(mut stream) =
        TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_millis(200))
    else {
        return String::new();
    };
    let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
    let mut reply = String::new();
    if stream
        .write_all(format!("{command}\r\nQUIT\r\n").as_bytes())
        .is_ok()
    {
        let _ = stream.read_to_string(&mut reply);
    }
    reply
}

/// Starts a demo server with `args` and the key secret, and waits for its
/// "listening" line.
fn start(args: &[&str]) -> (Process, u16) {
    start_demo(args, &[("RATELIMIT_KEY_SECRET", SECRET)])
}

/// One GET with `X-API-Key: key`: the status code and
/// `X-RateLimit-Remaining`.
fn get(port: u16, key: &str) -> (u16, Option<u32>) {
    let reply = exchange(
        port,
        "GET",
        "/v1/calls",
        &[&format!("X-API-Key: {key}")],
        "",
    );
    let remaining = reply
        .header("x-ratelimit-remaining")
        .map(|value| value.parse().unwrap());
    (reply.status, remaining)
}

#[test]
fn two_demo_server_processes_on_a_three_node_cluster_admit_exactly_the_limit() {
    if std::env::var_os("TOWER_RATELIMIT_SKIP_REDIS").is_some_and(|v| v == "1") {
        eprintln!("note: TOWER_RATELIMIT_SKIP_REDIS=1: this Redis test did not run");
        return;
    }
    let cluster = Cluster::start();
    let policy = cluster.dir.join("policy.toml");
    std::fs::write(&policy, POLICY).unwrap();
    let policy = policy.to_str().unwrap();
    let seed = |i: usize| format!("redis://127.0.0.1:{}", cluster.ports[i]);
    let (_a, port_a) = start(&["--config", policy, "--redis-cluster", &seed(0)]);
    let (_b, port_b) = start(&["--config", policy, "--redis-cluster", &seed(1)]);

    // One request at a time, alternating between the processes: each is
    // decided well within the store's 50 ms deadline (a missed deadline
    // fails open, without rate-limit headers, by design).
    let mut admitted = [0u32; 2];
    let mut refused = 0;
    for i in 0..120 {
        let port = [port_a, port_b][i % 2];
        match get(port, "shared") {
            (200, remaining) => {
                let counted = admitted[0] + admitted[1] + 1;
                assert_eq!(
                    remaining,
                    Some(50 - counted),
                    "request {i} counted once, in the cluster"
                );
                admitted[i % 2] += 1;
            }
            (429, _) => refused += 1,
            (other, _) => panic!("unexpected status {other}"),
        }
    }
    assert_eq!(
        admitted,
        [25, 25],
        "the first 50 alternate between processes"
    );
    assert_eq!(refused, 70);
}

#[test]
fn redis_and_redis_cluster_exclude_each_other() {
    let output = Command::new(DEMO)
        .args(["--redis", "redis://127.0.0.1:6379"])
        .args(["--redis-cluster", "redis://127.0.0.1:7000"])
        .output()
        .expect("the demo runs");
    assert_eq!(output.status.code(), Some(2));
    assert_eq!(
        String::from_utf8_lossy(&output.stderr).trim(),
        "--redis and --redis-cluster exclude each other: count in one Redis server \
         (--redis) or in one Redis Cluster (--redis-cluster)"
    );
}
