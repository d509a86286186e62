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

/// A response read whole from the demo.
pub struct Reply {
    pub status: u16,
    /// The status line and the header lines.
    pub head: String,
    pub body: String,
}

impl Reply {
    /// The value of header `name` (any case), if it is there.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().find_map(|line| {
            let (key, value) = line.split_once(':')?;
            key.eq_ignore_ascii_case(name).then(|| value.trim())
        })
    }
}

/// One HTTP/1.1 request to the demo on `port` (`headers` as `Name: value`
/// lines), on a connection of its own that it closes; the reply within
/// 10 s.
pub fn exchange(port: u16, method: &str, path: &str, headers: &[&str], body: &str) -> Reply {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connects");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut request = format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n");
    for header in headers {
        request.push_str(header);
        request.push_str("\r\n");
    }
    request.push_str(&format!(
        "Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    ));
    stream.write_all(request.as_bytes()).unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let (head, body) = response
        .split_once("\r\n\r\n")
        .unwrap_or((response.as_str(), ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("not HTTP: {response}"));
    Reply {
        status,
        head: head.to_owned(),
        body: body.to_owned(),
    }
}
