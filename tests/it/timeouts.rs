//! Upstream failures and client timeouts: 502, 504, readTimeout, idleTimeout, size limits.

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::{SilentUpstream, TestGateway, Upstream, closed_addr, get, raw, read_response};

/// Reads until the peer closes; returns the time it took, or `None` past `limit`.
async fn time_until_closed(stream: &mut TcpStream, limit: Duration) -> Option<Duration> {
    let started = Instant::now();
    let mut chunk = [0u8; 1024];
    tokio::time::timeout(limit, async {
        loop {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await
    .ok()?;
    Some(started.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_upstream_is_502_at_once() {
    let target = format!("http://{}", closed_addr().await);
    let gw = TestGateway::single_route("", "app.test", &[target], "").await;

    let started = Instant::now();
    let response = get(gw.http, "app.test", "/").await;
    let elapsed = started.elapsed();
    assert_eq!(response.status, 502);
    assert!(response.text().contains("Bad Gateway"));
    assert!(elapsed < Duration::from_millis(100), "502 took {elapsed:?}");

    // The only target of a route is never marked down, so the next request tries again
    // instead of getting 503.
    let again = get(gw.http, "app.test", "/").await;
    assert_eq!(again.status, 502);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_upstream_is_504_after_write_timeout() {
    let silent = SilentUpstream::start().await;
    let gw = TestGateway::single_route("writeTimeout = 1", "app.test", &[silent.url()], "").await;

    let started = Instant::now();
    let response = get(gw.http, "app.test", "/").await;
    let elapsed = started.elapsed();
    assert_eq!(response.status, 504);
    assert!(elapsed >= Duration::from_millis(950), "504 came early: {elapsed:?}");
    assert!(elapsed < Duration::from_millis(1800), "504 came late: {elapsed:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_target_is_skipped_for_the_next_one() {
    let upstream = Upstream::start("alive").await;
    let dead = format!("http://{}", closed_addr().await);
    let gw = TestGateway::single_route("", "app.test", &[dead, upstream.url()], "obtainMode = 2").await;

    for _ in 0..6 {
        let response = get(gw.http, "app.test", "/").await;
        assert_eq!(response.status, 200, "a refused target must fall over to the live one");
        assert_eq!(response.text(), "alive");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_request_head_is_cut_at_read_timeout() {
    let upstream = Upstream::start("app").await;
    let gw = TestGateway::single_route("readTimeout = 1\nidleTimeout = 10", "app.test", &[upstream.url()], "").await;

    let mut stream = TcpStream::connect(gw.http).await.unwrap();
    stream.write_all(b"GET / HTTP/1.1\r\nHost: app").await.unwrap();
    let closed = time_until_closed(&mut stream, Duration::from_secs(4)).await;
    let closed = closed.expect("the gateway kept a dribbling client open");
    assert!(closed >= Duration::from_millis(900), "closed too early: {closed:?}");
    assert!(closed < Duration::from_millis(2500), "closed too late: {closed:?}");

    // A silent connection that never sends a byte is cut the same way.
    let mut silent = TcpStream::connect(gw.http).await.unwrap();
    assert!(time_until_closed(&mut silent, Duration::from_secs(4)).await.is_some());
    assert_eq!(upstream.request_count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_keep_alive_closes_at_idle_timeout() {
    let upstream = Upstream::start("app").await;
    let gw = TestGateway::single_route("readTimeout = 1\nidleTimeout = 3", "app.test", &[upstream.url()], "").await;

    let mut stream = TcpStream::connect(gw.http).await.unwrap();
    let mut buffer = Vec::new();
    let request = b"GET / HTTP/1.1\r\nHost: app.test\r\n\r\n";
    stream.write_all(request).await.unwrap();
    assert_eq!(read_response(&mut stream, &mut buffer).await.unwrap().status, 200);

    // Idle longer than readTimeout but shorter than idleTimeout: still open.
    tokio::time::sleep(Duration::from_millis(1800)).await;
    stream.write_all(request).await.unwrap();
    assert_eq!(read_response(&mut stream, &mut buffer).await.unwrap().status, 200);

    let closed = time_until_closed(&mut stream, Duration::from_secs(6)).await;
    let closed = closed.expect("an idle connection outlived idleTimeout");
    assert!(
        closed >= Duration::from_millis(2800),
        "closed before idleTimeout: {closed:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_head_is_431() {
    let upstream = Upstream::start("app").await;
    let gw = TestGateway::single_route("maxHeaderBytes = 8192", "app.test", &[upstream.url()], "").await;

    let big = "x".repeat(20_000);
    let response = raw(
        gw.http,
        &format!("GET / HTTP/1.1\r\nHost: app.test\r\nX-Big: {big}\r\n\r\n"),
    )
    .await;
    assert_eq!(response.status, 431);

    let small = raw(
        gw.http,
        "GET / HTTP/1.1\r\nHost: app.test\r\nX-Small: 1\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(small.status, 200);
    assert_eq!(upstream.request_count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_body_is_413() {
    let upstream = Upstream::start("app").await;
    let gw = TestGateway::single_route("maxBodyBytes = 1000", "app.test", &[upstream.url()], "").await;

    let declared = raw(
        gw.http,
        &format!(
            "POST /echo HTTP/1.1\r\nHost: app.test\r\nContent-Length: 5000\r\n\r\n{}",
            "a".repeat(5000)
        ),
    )
    .await;
    assert_eq!(declared.status, 413);
    assert_eq!(
        upstream.request_count(),
        0,
        "a declared oversized body never reaches the upstream"
    );

    let chunk = "b".repeat(1500);
    let chunked = raw(
        gw.http,
        &format!(
            "POST /echo HTTP/1.1\r\nHost: app.test\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{chunk}\r\n0\r\n\r\n",
            chunk.len()
        ),
    )
    .await;
    assert_eq!(chunked.status, 413);

    let fits = raw(
        gw.http,
        "POST /echo HTTP/1.1\r\nHost: app.test\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello",
    )
    .await;
    assert_eq!(fits.status, 200);
    assert_eq!(fits.text(), "hello");
}
