//! The demo server (`voice_api`) against slow and numerous
//! clients: half-sent requests, idle connections and unfinished bodies do
//! not hold a connection past the header timeout, and connections beyond
//! the cap wait for a free one.

#[path = "../src/server.rs"]
mod server;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tower_ratelimit::{Policy, RateLimitLayer};

/// The header timeout of these tests' servers.
const HEADER_TIMEOUT: Duration = Duration::from_millis(500);

/// A demo server on the default policy and a free loopback port, running
/// until the test's runtime ends.
async fn start(header_timeout: Duration, max_connections: usize) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let policy = Policy::from_toml(include_str!("../policies/default.toml")).unwrap();
    let app = server::app(|router| router.layer(RateLimitLayer::new(policy)));
    let guards = server::Guards {
        header_timeout,
        max_connections,
    };
    tokio::spawn(server::serve(listener, app, guards, std::future::pending()));
    addr
}

/// Reads until the server closes the connection (at most 5 s): what it
/// sent, and how long after `since` it closed.
/// A reset counts as a close (it follows bytes sent after the close).
async fn until_closed(stream: &mut (impl AsyncRead + Unpin), since: Instant) -> (String, Duration) {
    let mut received = Vec::new();
    let mut buf = [0; 4096];
    let deadline = since + Duration::from_secs(5);
    loop {
        match tokio::time::timeout_at(deadline.into(), stream.read(&mut buf)).await {
            Err(_) => panic!(
                "the connection is still open after 5 s; received {:?}",
                String::from_utf8_lossy(&received)
            ),
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => received.extend_from_slice(&buf[..n]),
        }
    }
    (String::from_utf8(received).unwrap(), since.elapsed())
}

/// Asserts the connection was closed by the header timeout: not before
/// it, soon after it, with nothing sent or a 408.
fn closed_by_the_timeout(received: &str, after: Duration) {
    assert!(
        received.is_empty() || received.starts_with("HTTP/1.1 408 "),
        "{received:?}"
    );
    assert!(
        after >= HEADER_TIMEOUT - Duration::from_millis(50),
        "closed after {after:?}"
    );
    assert!(
        after < HEADER_TIMEOUT + Duration::from_secs(1),
        "closed after {after:?}"
    );
}

#[tokio::test]
async fn a_connection_that_sends_nothing_is_closed_after_the_header_timeout() {
    let addr = start(HEADER_TIMEOUT, 1_000).await;
    let started = Instant::now();
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let (received, after) = until_closed(&mut stream, started).await;
    closed_by_the_timeout(&received, after);
}

#[tokio::test]
async fn trickled_headers_are_cut_off_at_the_header_timeout() {
    let addr = start(HEADER_TIMEOUT, 1_000).await;
    let started = Instant::now();
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut reader, mut writer) = stream.into_split();
    // Half a request at once, then one more header byte every 50 ms: each
    // byte arrives well within the timeout, the whole never does.
    writer
        .write_all(b"GET /v1/calls HTTP/1.1\r\nHost: 127.0.0.1\r\nX-API-Key: slow\r\nX-Pad: ")
        .await
        .unwrap();
    let trickle = tokio::spawn(async move {
        for _ in 0..100 {
            if writer.write_all(b"a").await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    let (received, after) = until_closed(&mut reader, started).await;
    trickle.abort();
    closed_by_the_timeout(&received, after);
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed_after_the_header_timeout() {
    let addr = start(HEADER_TIMEOUT, 1_000).await;
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(b"GET /v1/calls HTTP/1.1\r\nHost: 127.0.0.1\r\nX-API-Key: idle\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0; 4096];
    let n = stream.read(&mut buf).await.unwrap();
    let answered = Instant::now();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200 OK\r\n"));
    let (received, after) = until_closed(&mut stream, answered).await;
    closed_by_the_timeout(&received, after);
}

#[tokio::test]
async fn a_response_closes_a_connection_whose_body_is_still_arriving() {
    let addr = start(HEADER_TIMEOUT, 1_000).await;
    let started = Instant::now();
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(
            b"POST /v1/calls HTTP/1.1\r\nHost: 127.0.0.1\r\nX-API-Key: body\r\n\
              Content-Length: 1000\r\n\r\nthe first bytes of 1000",
        )
        .await
        .unwrap();
    let (received, after) = until_closed(&mut stream, started).await;
    assert!(received.starts_with("HTTP/1.1 200 OK\r\n"), "{received:?}");
    assert!(
        received.ends_with(r#"{"ok":true,"method":"POST","path":"/v1/calls","held_ms":0}"#),
        "{received:?}"
    );
    assert!(after < HEADER_TIMEOUT / 2, "closed after {after:?}");
}

#[tokio::test]
async fn connections_over_the_cap_wait_for_a_free_one() {
    // A long header timeout, so that only the client closes connections.
    let addr = start(Duration::from_secs(10), 1).await;
    let request = b"GET /v1/calls HTTP/1.1\r\nHost: 127.0.0.1\r\nX-API-Key: cap\r\n\r\n";
    let mut buf = [0; 4096];

    let mut first = TcpStream::connect(addr).await.unwrap();
    first.write_all(request).await.unwrap();
    let n = first.read(&mut buf).await.unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200 OK\r\n"));

    // The first connection, kept alive, holds the only slot.
    let mut second = TcpStream::connect(addr).await.unwrap();
    second.write_all(request).await.unwrap();
    let waiting = tokio::time::timeout(Duration::from_millis(300), second.read(&mut buf)).await;
    assert!(waiting.is_err(), "answered over the cap: {waiting:?}");

    drop(first);
    let n = tokio::time::timeout(Duration::from_secs(2), second.read(&mut buf))
        .await
        .expect("answered once the first connection closed")
        .unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200 OK\r\n"));
}

#[tokio::test]
async fn methods_the_api_does_not_serve_get_a_405() {
    let addr = start(HEADER_TIMEOUT, 1_000).await;
    for method in ["PURGE", "OPTIONS", "get"] {
        let started = Instant::now();
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let request = format!(
            "{method} /v1/calls HTTP/1.1\r\nHost: 127.0.0.1\r\nX-API-Key: m\r\nConnection: close\r\n\r\n"
        );
        stream.write_all(request.as_bytes()).await.unwrap();
        let (received, _) = until_closed(&mut stream, started).await;
        assert!(
            received.starts_with("HTTP/1.1 405 Method Not Allowed\r\n"),
            "{method}: {received:?}"
        );
        assert!(
            received.contains("allow: GET, HEAD, POST, PUT, PATCH, DELETE\r\n"),
            "{received:?}"
        );
        assert!(
            received.contains(r#""code":"method_not_allowed""#),
            "{received:?}"
        );
    }
}
