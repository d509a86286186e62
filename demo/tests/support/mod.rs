//! What the demo's process tests share: a child process killed on drop, a
//! free loopback port, and the demo server started on one.

#![allow(dead_code)] // each test binary uses its own part

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// The demo server, built with this test's features.
pub const DEMO: &str = env!("CARGO_BIN_EXE_voice_api");

/// A child process, killed (and waited for) on drop.
pub struct Process(pub Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A loopback port that was free a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Starts the demo on a free port with `args` and the environment `envs`,
/// and waits (at most 20 s) for its "listening on" line; its log (stderr)
/// goes to the test's.
pub fn start_demo(args: &[&str], envs: &[(&str, &str)]) -> (Process, u16) {
    let port = free_port();
    let mut child = Command::new(DEMO)
        .args(["--addr", &format!("127.0.0.1:{port}")])
        .args(args)
        .envs(envs.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("the demo server starts");
    let stdout = child.stdout.take().expect("its output");
    let process = Process(child);
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
    (process, port)
}
