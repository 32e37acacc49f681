//! Forwarding: headers in both directions, streaming, connection reuse, upgrades, h2c.

use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::Request;
use http_body_util::{BodyExt, Full};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

use crate::support::{TestGateway, Upstream, get, h2c_sender, raw};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hop_by_hop_headers_are_removed_upstream() {
    let upstream = Upstream::start("app").await;
    let gw = TestGateway::single_route("", "app.test", &[upstream.url()], "").await;

    let response = raw(
        gw.http,
        "GET / HTTP/1.1\r\nHost: app.test\r\nConnection: X-Foo, close\r\nConnection: X-Other\r\n\
         X-Foo: 1\r\nX-Other: 2\r\nKeep-Alive: timeout=5\r\nTE: trailers\r\nProxy-Connection: keep-alive\r\n\
         X-Kept: 3\r\n\r\n",
    )
    .await;
    assert_eq!(response.status, 200);

    let seen = upstream.last_request();
    for name in ["x-foo", "x-other", "keep-alive", "te", "proxy-connection"] {
        assert!(!seen.headers.contains_key(name), "{name} reached the upstream");
    }
    let connection: Vec<_> = seen.headers.get_all("connection").iter().collect();
    assert!(connection.is_empty(), "Connection reached the upstream: {connection:?}");
    assert_eq!(seen.headers["x-kept"], "3");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hop_by_hop_headers_are_removed_downstream() {
    let upstream = Upstream::start("app").await;
    let gw = TestGateway::single_route("", "app.test", &[upstream.url()], "").await;

    let response = get(gw.http, "app.test", "/hop-headers").await;
    assert_eq!(response.status, 200);
    assert_eq!(response.header("x-bar"), None);
    assert_eq!(response.header("keep-alive"), None);
    assert_eq!(response.header("x-kept"), Some("1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarding_headers_and_original_host() {
    let upstream = Upstream::start("app").await;
    let gw = TestGateway::single_route("", "app.test", &[upstream.url()], "").await;

    let response = raw(
        gw.http,
        "GET /p HTTP/1.1\r\nHost: App.Test:8080\r\nX-Forwarded-For: 203.0.113.7\r\nX-Real-IP: 203.0.113.7\r\n\
         X-Forwarded-Proto: https\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(response.status, 200);

    let seen = upstream.last_request();
    assert_eq!(seen.headers["host"], "App.Test:8080", "the original Host is kept");
    assert_eq!(
        seen.headers["x-forwarded-for"], "127.0.0.1",
        "an untrusted client cannot forge the chain"
    );
    assert_eq!(seen.headers["x-real-ip"], "127.0.0.1");
    assert_eq!(seen.headers["x-forwarded-proto"], "http");
    assert_eq!(seen.headers["x-forwarded-host"], "App.Test:8080");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_connection_close_reuses_upstream_connections() {
    let upstream = Upstream::start("app").await;
    let gw = TestGateway::single_route("", "app.test", &[upstream.url()], "").await;

    for _ in 0..200 {
        let response = get(gw.http, "app.test", "/").await;
        assert_eq!(response.status, 200);
    }
    assert_eq!(upstream.request_count(), 200);
    let connections = upstream.connection_count();
    assert!(
        connections <= 10,
        "200 requests opened {connections} upstream connections"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_stream_both_ways() {
    let upstream = Upstream::start("app").await;
    let gw = TestGateway::single_route("", "app.test", &[upstream.url()], "").await;
    let client = crate::support::pooled();

    let payload: Vec<u8> = (0..8 * 1024 * 1024).map(|i| (i % 251) as u8).collect();
    let request = Request::post(format!("http://{}/echo", gw.http))
        .header("host", "app.test")
        .body(Full::new(Bytes::from(payload.clone())))
        .unwrap();
    let response = client.request(request).await.unwrap();
    assert_eq!(response.status(), 200);
    let echoed = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(echoed.len(), payload.len());
    assert!(echoed == payload, "the echoed body differs");
    assert_eq!(upstream.last_request().method, http::Method::POST);

    let response = get(gw.http, "app.test", "/bytes/5000000").await;
    assert_eq!(response.body.len(), 5_000_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn response_streams_before_upstream_finishes() {
    let upstream = Upstream::start("app").await;
    let gw = TestGateway::single_route("", "app.test", &[upstream.url()], "").await;

    let mut stream = TcpStream::connect(gw.http).await.unwrap();
    stream
        .write_all(b"GET /drip HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let started = Instant::now();
    let mut received = Vec::new();
    let mut chunk = [0u8; 4096];
    while !String::from_utf8_lossy(&received).contains("first") {
        let n = stream.read(&mut chunk).await.unwrap();
        assert!(n > 0, "connection closed before the first chunk");
        received.extend_from_slice(&chunk[..n]);
    }
    assert!(
        started.elapsed() < Duration::from_millis(600),
        "the first chunk waited for the whole body: {:?}",
        started.elapsed()
    );
    stream.read_to_end(&mut received).await.unwrap();
    assert!(String::from_utf8_lossy(&received).contains("last"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_echo_round_trip() {
    let upstream = Upstream::start("app").await;
    let gw = TestGateway::single_route("", "app.test", &[upstream.url()], "").await;

    let stream = TcpStream::connect(gw.http).await.unwrap();
    let request = Request::get("ws://app.test/socket")
        .header("host", "app.test")
        .header(
            "sec-websocket-key",
            tokio_tungstenite::tungstenite::handshake::client::generate_key(),
        )
        .header("sec-websocket-version", "13")
        .header("connection", "Upgrade")
        .header("upgrade", "websocket")
        .body(())
        .unwrap();
    let (mut socket, response) = tokio_tungstenite::client_async(request, stream).await.unwrap();
    assert_eq!(response.status(), 101);

    for text in ["hello", "through the gateway"] {
        socket.send(Message::text(text)).await.unwrap();
        let echoed = tokio::time::timeout(Duration::from_secs(5), socket.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(echoed.into_text().unwrap().as_str(), text);
    }
    socket.send(Message::binary(vec![1u8, 2, 3])).await.unwrap();
    let echoed = socket.next().await.unwrap().unwrap();
    assert_eq!(echoed.into_data().as_ref(), &[1u8, 2, 3]);
    socket.close(None).await.unwrap();

    let seen = upstream.last_request();
    assert_eq!(seen.headers["upgrade"], "websocket");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_prior_knowledge_reaches_http1_upstream() {
    let upstream = Upstream::start("app").await;
    let gw = TestGateway::single_route("", "app.test", &[upstream.url()], "").await;

    let mut sender = h2c_sender(gw.http).await;

    // The URI authority travels as :authority, which routes the request.
    let authority = format!("app.test:{}", gw.http.port());
    let request = Request::get(format!("http://{authority}/h2"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let response = tokio::time::timeout(Duration::from_secs(5), sender.send_request(request))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.version(), http::Version::HTTP_2);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], b"app");

    let seen = upstream.last_request();
    assert_eq!(seen.version, http::Version::HTTP_11);
    assert_eq!(seen.headers["host"], authority.as_str());
    assert_eq!(seen.uri, "/h2");
}
