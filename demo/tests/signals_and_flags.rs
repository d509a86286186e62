//! The demo as a process: `--help` is an answer, not an error; `--config`
//! and `--preset` name one policy; a `SIGHUP` without a file to reload
//! changes nothing; `SIGTERM` lets the requests in flight finish.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

use support::{start_demo, DEMO};

fn signal(pid: u32, name: &str) {
    let status = Command::new("kill")
        .args([&format!("-{name}"), &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

/// Sends a GET of `path` and returns the status line, on its own thread.
fn get(port: u16, path: &str) -> std::thread::JoinHandle<String> {
    let path = path.to_owned();
    std::thread::spawn(move || {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nX-API-Key: k\r\nConnection: close\r\n\r\n"
        );
        stream.write_all(request.as_bytes()).unwrap();
        let mut response = String::new();
        let _ = stream.read_to_string(&mut response);
        response.lines().next().unwrap_or_default().to_owned()
    })
}

#[test]
fn help_is_printed_on_stdout_and_succeeds() {
    let output = Command::new(DEMO).arg("--help").output().unwrap();
    assert!(output.status.success(), "{output:?}");
    let text = String::from_utf8(output.stdout).unwrap();
    assert!(text.starts_with("usage: voice_api"), "{text}");
}

#[test]
fn config_and_preset_together_are_refused() {
    let output = Command::new(DEMO)
        .args(["--preset", "Flireo", "--config", "/nonexistent.toml"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let text = String::from_utf8(output.stderr).unwrap();
    assert!(text.contains("--config and --preset"), "{text}");
}

#[test]
fn a_hangup_without_a_file_changes_nothing_and_sigterm_lets_requests_finish() {
    let (mut demo, port) = start_demo(&[], &[]);
    let pid = demo.0.id();
    signal(pid, "HUP");
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        demo.0.try_wait().unwrap().is_none(),
        "a SIGHUP ended the demo"
    );
    // A request in flight for 1.5 s, then SIGTERM: it is answered, and then
    // the process ends on its own.
    let in_flight = get(port, "/v1/calls?hold_ms=1500");
    std::thread::sleep(Duration::from_millis(300));
    let since = Instant::now();
    signal(pid, "TERM");
    assert_eq!(in_flight.join().unwrap(), "HTTP/1.1 200 OK");
    let deadline = since + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = demo.0.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "the demo did not stop");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status:?}");
}
