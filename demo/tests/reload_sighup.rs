//! `SIGHUP` reloads the demo's `--config` file: a running demo process
//! whose file is rewritten enforces the new limit after the signal, keeps
//! the running policy when the file is broken, and logs both.

mod support;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc::{channel, Receiver};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use support::{free_port, Process as Server, DEMO};

fn policy(windows: &str) -> String {
    format!(
        "[[limits]]\nname = \"per_key\"\nkey = {{ header = \"X-API-Key\" }}\n\n\
         [[limits.routes]]\nwindows = [{windows}]\n"
    )
}

/// Starts the demo on `config` and waits for its "listening" line; its
/// log lines (stderr) come through the receiver.
fn start(config: &std::path::Path) -> (Server, u16, Receiver<String>) {
    let port = free_port();
    let mut child = Command::new(DEMO)
        .args(["--addr", &format!("127.0.0.1:{port}")])
        .arg("--config")
        .arg(config)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the demo server starts");
    let (stdout, stderr) = (child.stdout.take().unwrap(), child.stderr.take().unwrap());
    let server = Server(child);
    let (listening, started) = channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if line.contains("listening on") {
                let _ = listening.send(());
            }
        }
    });
    let (log, lines) = channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = log.send(line);
        }
    });
    started
        .recv_timeout(Duration::from_secs(20))
        .expect("the demo server said it is listening within 20 s");
    (server, port, lines)
}

/// One GET with `X-API-Key: key`: the status and `X-RateLimit-Limit`.
async fn get(port: u16, key: &str) -> (u16, String) {
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let request = format!(
        "GET /v1/calls HTTP/1.1\r\nHost: 127.0.0.1\r\nX-API-Key: {key}\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let status = response[9..12].parse().unwrap();
    let limit = response
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("x-ratelimit-limit: ")
                .map(str::to_owned)
        })
        .unwrap_or_default();
    (status, limit)
}

fn hang_up(server: &Server) {
    let status = Command::new("kill")
        .args(["-HUP", &server.0.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

/// Waits (at most 10 s) for a log line that contains `text`.
fn logged(lines: &Receiver<String>, text: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        match lines.recv_timeout(left) {
            Ok(line) if line.contains(text) => return line,
            Ok(_) => {}
            Err(_) => break,
        }
    }
    panic!("no log line with `{text}` within 10 s");
}

#[tokio::test]
async fn sighup_reloads_the_config_file_and_refuses_a_broken_one() {
    let dir = std::env::temp_dir().join(format!("voice-api-reload-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("policy.toml");
    std::fs::write(&config, policy("\"2/minute\"")).unwrap();
    let (server, port, lines) = start(&config);

    assert_eq!(get(port, "k").await, (200, "2".into()));
    assert_eq!(get(port, "k").await.0, 200);
    assert_eq!(get(port, "k").await.0, 429);

    std::fs::write(&config, policy("\"5/minute\"")).unwrap();
    hang_up(&server);
    let line = logged(&lines, "policy reloaded");
    assert!(line.contains("changed: per_key"), "{line}");
    // The key's 2 requests carry over: 3 left of 5.
    assert_eq!(get(port, "k").await, (200, "5".into()));

    std::fs::write(&config, policy("\"5/fortnight\"")).unwrap();
    hang_up(&server);
    let line = logged(&lines, "policy reload refused");
    assert!(line.contains("fortnight"), "{line}");
    assert_eq!(get(port, "other").await, (200, "5".into()));
    std::fs::remove_dir_all(&dir).unwrap();
}
