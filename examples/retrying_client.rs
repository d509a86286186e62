//! Run the demo (`cargo run -p voice-api`), then
//! `cargo run --example retrying_client --features client [-- HOST:PORT [N]]`.
//!
//! Sends N (default 65) `GET /v1/agents` with one API key through
//! `tower::retry` and the crate's `RetryPolicy`. The demo's default policy
//! admits 60 a minute per key and then refuses with `Retry-After`; the policy
//! waits what each refusal asks and tries again. Each request prints its
//! status and what it waited, and why.
//!
//! The HTTP client is a minimal HTTP/1.1 one over a `TcpStream` (one
//! connection per request), so that the example needs no client crate.

use std::time::{Duration, Instant};

use http::{Request, Response};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tower::retry::RetryLayer;
use tower::{service_fn, ServiceBuilder, ServiceExt};
use tower_ratelimit::client::{RetryPolicy, Wait};

type Error = Box<dyn std::error::Error + Send + Sync>;

/// Sends `request` to `addr` and reads the whole response.
async fn send(addr: String, request: Request<String>) -> Result<Response<String>, Error> {
    let mut stream = TcpStream::connect(&addr).await?;
    let mut head = format!(
        "{} {} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        request.method(),
        request.uri(),
        request.body().len()
    );
    for (name, value) in request.headers() {
        head.push_str(&format!("{name}: {}\r\n", value.to_str()?));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(request.body().as_bytes()).await?;
    let mut raw = String::new();
    stream.read_to_string(&mut raw).await?;
    let (head, body) = raw.split_once("\r\n\r\n").ok_or("no end of headers")?;
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|line| line.split(' ').nth(1))
        .ok_or("no status line")?;
    let mut response = Response::builder().status(status.parse::<u16>()?);
    for line in lines {
        if let Some((name, value)) = line.split_once(':') {
            response = response.header(name.trim(), value.trim());
        }
    }
    Ok(response.body(body.to_owned())?)
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Error> {
    let mut args = std::env::args().skip(1);
    let addr = args
        .next()
        .unwrap_or_else(|| String::from("127.0.0.1:3000"));
    let n: usize = args.next().map_or(Ok(65), |n| n.parse())?;

    let policy = RetryPolicy::new()
        .max_retries(3)
        .max_wait(Duration::from_secs(30))
        .backoff(Duration::from_millis(100), Duration::from_secs(5));
    let client = ServiceBuilder::new()
        .layer(RetryLayer::new(policy))
        .service(service_fn(move |request| send(addr.clone(), request)));

    let started = Instant::now();
    for i in 1..=n {
        let request = Request::get("/v1/agents")
            .header("x-api-key", "retrying_client")
            .body(String::new())?;
        let response = client.clone().oneshot(request).await?;
        let waits = response.extensions().get::<Vec<Wait>>();
        let told = match waits {
            None => String::from("no wait"),
            Some(waits) => waits
                .iter()
                .map(|w| format!("waited {:?} after a {} ({:?})", w.delay, w.status, w.hint))
                .collect::<Vec<_>>()
                .join(", then "),
        };
        let remaining = response
            .headers()
            .get("x-ratelimit-remaining")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("-");
        println!(
            "request {i:>3}: {} (remaining {remaining}) {told}",
            response.status()
        );
    }
    println!("{n} requests in {:.1?}", started.elapsed());
    Ok(())
}
