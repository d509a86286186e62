//! Two demo servers (the `voice_api` binary), two processes, one Redis:
//! between them they admit exactly the limit. Without a shared key secret
//! the demo refuses to start on Redis rather than count apart.
//!
//! Each test starts its own `redis-server` on a free loopback port. Without
//! `redis-server` on `PATH` the tests fail with a message that says how to
//! install it, unless `TOWER_RATELIMIT_SKIP_REDIS=1` is set (then each test
//! passes after printing that it did not run).

#![cfg(feature = "redis")]

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// One key secret for both processes, so that they hash a key into the
/// same bucket.
const SECRET: &str = "000102030405060708090a0b0c0d0e0f";

use support::{free_port, start_demo, Process as Server, DEMO};

/// A `redis-server` on loopback with persistence off, killed and its
/// scratch directory removed on drop.
struct Redis {
    server: Option<Server>,
    port: u16,
    dir: PathBuf,
}

impl Redis {
    /// Starts a server on a free port and waits until it answers PING; a
    /// missing `redis-server` fails with how to install it.
    fn start() -> Self {
        let port = free_port();
        let dir = std::env::temp_dir().join(format!(
            "tower-ratelimit-demo-redis-{}-{port}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir).expect("a scratch directory");
        let child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(&dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        let child = match child {
            Ok(child) => child,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
                "the Redis tests need `redis-server` on PATH: install it with \
                 `apt-get install -y redis-server` (or `brew install redis`), \
                 or set TOWER_RATELIMIT_SKIP_REDIS=1 to skip them"
            ),
            Err(e) => panic!("cannot start redis-server: {e}"),
        };
        let mut redis = Redis {
            server: Some(Server(child)),
            port,
            dir,
        };
        let started = Instant::now();
        while !answers_ping(port) {
            if let Some(Ok(Some(status))) = redis.server.as_mut().map(|s| s.0.try_wait()) {
                panic!("redis-server on port {port} exited at start: {status}");
            }
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "redis-server on port {port} did not answer within 10 s"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        redis
    }

    /// `redis://127.0.0.1:PORT`.
    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        drop(self.server.take());
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Whether a Redis on `port` answers PING.
fn answers_ping(port: u16) -> bool {
    let Ok(mut stream) =
        TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_millis(200))
    else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
    if stream.write_all(b"PING\r\n").is_err() {
        return false;
    }
    let mut reply = [0u8; 7];
    stream.read_exact(&mut reply).is_ok() && &reply == b"+PONG\r\n"
}

/// A Redis for the test, or `None` (after saying so) when the Redis tests
/// are skipped on purpose (`TOWER_RATELIMIT_SKIP_REDIS=1`).
fn redis_or_skip() -> Option<Redis> {
    if std::env::var_os("TOWER_RATELIMIT_SKIP_REDIS").is_some_and(|v| v == "1") {
        eprintln!("note: TOWER_RATELIMIT_SKIP_REDIS=1: this Redis test did not run");
        return None;
    }
    Some(Redis::start())
}

/// Starts a demo server on its default policy (60 per minute and 1,000 per
/// hour per `X-API-Key`), with the key secret from the environment, and
/// waits for its "listening" line.
fn start(redis: &str) -> (Server, u16) {
    start_demo(&["--redis", redis], &[("RATELIMIT_KEY_SECRET", SECRET)])
}

/// One GET with `X-API-Key: key`; the response's status code.
async fn get(port: u16, key: &str) -> u16 {
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connects");
    let request = format!("GET /v1/calls HTTP/1.1\r\nHost: 127.0.0.1\r\nX-API-Key: {key}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.unwrap();
    let text = String::from_utf8_lossy(&response);
    text.split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("not HTTP: {text}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_demo_server_processes_on_one_redis_admit_exactly_the_limit() {
    let Some(redis) = redis_or_skip() else {
        return;
    };
    let (_a, port_a) = start(&redis.url());
    let (_b, port_b) = start(&redis.url());

    // Ten requests in flight at a time, alternating between the processes:
    // concurrent, yet light enough for a debug build to answer each within
    // the store's 50 ms deadline (a missed deadline is decided by the local fallback, by design).
    let started = Instant::now();
    let in_flight = std::sync::Arc::new(tokio::sync::Semaphore::new(10));
    let mut tasks = Vec::new();
    for i in 0..200 {
        let port = if i % 2 == 0 { port_a } else { port_b };
        let permit = std::sync::Arc::clone(&in_flight)
            .acquire_owned()
            .await
            .unwrap();
        tasks.push(tokio::spawn(async move {
            let status = get(port, "shared").await;
            drop(permit);
            (port, status)
        }));
    }
    let (mut admitted_a, mut admitted_b, mut refused) = (0, 0, 0);
    for task in tasks {
        let (port, status) = tokio::time::timeout(Duration::from_secs(20), task)
            .await
            .expect("no request hangs")
            .unwrap();
        match (status, port == port_a) {
            (200, true) => admitted_a += 1,
            (200, false) => admitted_b += 1,
            (429, _) => refused += 1,
            (other, _) => panic!("unexpected status {other}"),
        }
    }
    // 60 per minute, GCRA: one more slot returns each second.
    let extra = started.elapsed().as_secs() as usize;
    let total = admitted_a + admitted_b;
    assert!(
        (60..=60 + extra).contains(&total),
        "{admitted_a} + {admitted_b} admitted"
    );
    assert!(
        admitted_a > 0 && admitted_b > 0,
        "both processes admitted some"
    );
    assert_eq!(total + refused, 200);
}

#[tokio::test]
async fn without_a_shared_key_secret_the_demo_refuses_to_count_in_redis() {
    let Some(redis) = redis_or_skip() else {
        return;
    };
    let output = Command::new(DEMO)
        .args(["--addr", &format!("127.0.0.1:{}", free_port())])
        .args(["--preset", "nixflex", "--redis", &redis.url()])
        .env_remove("RATELIMIT_KEY_SECRET")
        .output()
        .expect("the demo runs");
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("sets no key_secret") && stderr.contains("RATELIMIT_KEY_SECRET"),
        "{stderr}"
    );
    // A secret that is not 32 hex digits is named, never shown.
    let output = Command::new(DEMO)
        .args(["--addr", &format!("127.0.0.1:{}", free_port())])
        .args(["--preset", "nixflex", "--redis", &redis.url()])
        .env("RATELIMIT_KEY_SECRET", "not-hex-SECRETVALUE")
        .output()
        .expect("the demo runs");
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("RATELIMIT_KEY_SECRET"), "{stderr}");
    assert!(!stderr.contains("SECRETVALUE"), "{stderr}");
}
