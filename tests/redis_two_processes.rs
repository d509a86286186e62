//! Two demo servers (`examples/voice_api.rs`), two processes, one Redis:
//! between them they admit exactly the limit. Without a shared key secret
//! the demo refuses to start on Redis rather than count apart.

#![cfg(feature = "redis")]

mod redis_support;

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// One key secret for both processes, so that they hash a key into the
/// same bucket.
const SECRET: &str = "000102030405060708090a0b0c0d0e0f";

/// A child process, killed on drop.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Builds the demo server (a no-op when it is up to date) with the features
/// this test was built with, and returns its path.
fn demo_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("the test's path");
    // target/<profile>/deps/<test> → target/<profile>
    let profile_dir = exe
        .parent()
        .and_then(|d| d.parent())
        .expect("target/<profile>");
    let target_dir = profile_dir.parent().expect("target");
    let mut features = vec!["redis"];
    if cfg!(feature = "axum") {
        features.push("axum");
    }
    if cfg!(feature = "governor") {
        features.push("governor");
    }
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let mut command = Command::new(cargo);
    command
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(["build", "--quiet", "--example", "voice_api"])
        .args(["--features", &features.join(",")])
        .arg("--target-dir")
        .arg(target_dir);
    if profile_dir.file_name().is_some_and(|n| n == "release") {
        command.arg("--release");
    }
    let status = command.status().expect("cargo runs");
    assert!(status.success(), "building the voice_api example failed");
    let binary = profile_dir.join("examples").join("voice_api");
    assert!(binary.exists(), "{} was not built", binary.display());
    binary
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Starts a demo server on its default policy (60 per minute and 1,000 per
/// hour per `X-API-Key`), with the key secret from the environment, and
/// waits for its "listening" line.
fn start(binary: &PathBuf, redis: &str) -> (Server, u16) {
    let port = free_port();
    let mut child = Command::new(binary)
        .args(["--addr", &format!("127.0.0.1:{port}")])
        .args(["--redis", redis])
        .env("RATELIMIT_KEY_SECRET", SECRET)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("the demo server starts");
    let stdout = child.stdout.take().expect("its output");
    let server = Server(child);
    let (sender, receiver) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if line.contains("listening on") {
                let _ = sender.send(());
            }
        }
    });
    receiver
        .recv_timeout(Duration::from_secs(20))
        .expect("the demo server said it is listening within 20 s");
    (server, port)
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
    let redis = redis_or_skip!();
    let binary = tokio::task::spawn_blocking(demo_binary).await.unwrap();
    let (_a, port_a) = start(&binary, &redis.url());
    let (_b, port_b) = start(&binary, &redis.url());

    // Ten requests in flight at a time, alternating between the processes:
    // concurrent, yet light enough for a debug build to answer each within
    // the store's 50 ms deadline (a missed deadline fails open, by design).
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
    let redis = redis_or_skip!();
    let binary = tokio::task::spawn_blocking(demo_binary).await.unwrap();
    let output = Command::new(&binary)
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
    let output = Command::new(&binary)
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
