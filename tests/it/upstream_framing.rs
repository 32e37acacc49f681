//! The gateway as an HTTP/1.1 client: response framing, interim responses, malformed
//! upstream responses, request bodies and upstream connection reuse.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use http::Request;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use crate::admin::{scrape, value};
use crate::support::{ScriptedUpstream, TestGateway, Upstream, get, h2c_sender, logs, raw, read_response, send};

async fn gateway_for(upstream: &ScriptedUpstream) -> TestGateway {
    TestGateway::single_route("", "app.test", &[upstream.url()], "").await
}

/// Starts an upstream that responds 413 as soon as it has a request head, writing the
/// head and the body separately, and closes without reading the request body.
async fn early_413_upstream() -> (SocketAddr, JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        let mut head = Vec::new();
        let mut chunk = [0u8; 4096];
        while !head.windows(4).any(|window| window == b"\r\n\r\n") {
            let n = stream.read(&mut chunk).await.unwrap();
            assert!(n > 0);
            head.extend_from_slice(&chunk[..n]);
        }

        stream
            .write_all(b"HTTP/1.1 413 Content Too Large\r\nContent-Length: 8\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        stream.write_all(b"too big\n").await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
    });
    (addr, server)
}

/// Sends `count` keep-alive GETs on one client connection and returns the bodies.
async fn get_on_one_connection(gw: &TestGateway, count: usize) -> Vec<(u16, String)> {
    let mut stream = TcpStream::connect(gw.http).await.unwrap();
    let mut buffer = Vec::new();
    let mut seen = Vec::new();
    for _ in 0..count {
        let response = send(&mut stream, &mut buffer, "GET / HTTP/1.1\r\nHost: app.test\r\n\r\n")
            .await
            .expect("a response");
        seen.push((response.status, response.text()));
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunked_response_is_decoded_and_connection_reused() {
    let upstream = ScriptedUpstream::start(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 999\r\n\r\n\
          5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n",
    )
    .await;
    let gw = gateway_for(&upstream).await;

    let seen = get_on_one_connection(&gw, 3).await;

    assert_eq!(seen, vec![(200, "hello world".to_owned()); 3]);
    assert_eq!(upstream.connections(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_delimited_response_read_fully() {
    let upstream = ScriptedUpstream::start_closing(b"HTTP/1.0 200 OK\r\nX-Old: yes\r\n\r\nuntil the end").await;
    let gw = gateway_for(&upstream).await;

    let seen = get_on_one_connection(&gw, 2).await;

    assert_eq!(seen, vec![(200, "until the end".to_owned()); 2]);
    assert_eq!(upstream.connections(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn head_response_without_body() {
    let upstream = ScriptedUpstream::start(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n").await;
    let gw = gateway_for(&upstream).await;
    let mut stream = TcpStream::connect(gw.http).await.unwrap();

    stream
        .write_all(
            b"HEAD / HTTP/1.1\r\nHost: app.test\r\n\r\nHEAD / HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n",
        )
        .await
        .unwrap();
    let mut received = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut received))
        .await
        .expect("the gateway closed the connection")
        .unwrap();

    let text = String::from_utf8_lossy(&received).to_ascii_lowercase();
    assert_eq!(text.matches("http/1.1 200 ok\r\n").count(), 2, "{text}");
    assert_eq!(text.matches("content-length: 5\r\n").count(), 2, "{text}");
    assert!(text.ends_with("\r\n\r\n"), "a HEAD response carried a body: {text}");
    assert_eq!(upstream.connections(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interim_responses_are_skipped() {
    let upstream = ScriptedUpstream::start(
        b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n\
          HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\ndone",
    )
    .await;
    let gw = gateway_for(&upstream).await;

    let seen = get_on_one_connection(&gw, 2).await;

    assert_eq!(seen, vec![(200, "done".to_owned()); 2]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_responses_get_502() {
    let malformed: [&'static [u8]; 7] = [
        b"NOT HTTP AT ALL\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\nContent-Length: 5\r\n\r\nbody!",
        b"HTTP/1.1 200 OK\r\nContent-Length: -4\r\n\r\nbody",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nbody",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n4\r\nbody\r\n0\r\n\r\n",
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\nConnection: upgrade\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nBad Header: x\r\n\r\n",
    ];
    for reply in malformed {
        let upstream = ScriptedUpstream::start(reply).await;
        let gw = gateway_for(&upstream).await;

        let response = get(gw.http, "app.test", "/").await;

        assert_eq!(response.status, 502, "{:?}", String::from_utf8_lossy(reply));
        // The upstream responded, so even an idempotent request is not sent again.
        assert_eq!(upstream.requests().len(), 1, "{:?}", String::from_utf8_lossy(reply));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_response_head_gets_502() {
    let mut reply = b"HTTP/1.1 200 OK\r\n".to_vec();
    for index in 0..90 {
        reply.extend_from_slice(format!("X-Filler-{index}: {}\r\n", "f".repeat(1000)).as_bytes());
    }
    reply.extend_from_slice(b"Content-Length: 0\r\n\r\n");
    let upstream = ScriptedUpstream::start(reply.leak()).await;
    let gw = gateway_for(&upstream).await;

    let response = get(gw.http, "app.test", "/").await;

    assert_eq!(response.status, 502);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncated_body_aborts_client_response() {
    let upstream = ScriptedUpstream::start_closing(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly this").await;
    let gw = gateway_for(&upstream).await;
    logs::watch(&upstream.addr.to_string());

    let response = tokio::time::timeout(
        Duration::from_secs(10),
        crate::support::client::try_raw(
            gw.http,
            b"GET / HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n",
        ),
    )
    .await
    .expect("the client response was left hanging");

    // The head was already sent, so the only signal left is a short, closed response.
    assert!(
        response.is_none(),
        "a truncated body was passed off as whole: {response:?}"
    );

    let samples = scrape(gw.admin.unwrap()).await;
    let other_errors = value(&samples, "minigateway_upstream_errors_total", &[("kind", "other")]);
    assert_eq!(other_errors, 1.0);
    let logged = logs::lines_with(&upstream.addr.to_string());
    assert!(
        logged.iter().any(|line| line.contains("the response was cut short")),
        "{logged:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_pooled_connection_is_skipped() {
    // Promises keep-alive, then closes every connection after one response.
    let upstream = ScriptedUpstream::start_closing(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok").await;
    let gw = gateway_for(&upstream).await;
    let mut stream = TcpStream::connect(gw.http).await.unwrap();
    let mut buffer = Vec::new();

    for _ in 0..5 {
        // The upstream's close reaches the gateway before the next request.
        tokio::time::sleep(Duration::from_millis(50)).await;
        let response = send(
            &mut stream,
            &mut buffer,
            "POST / HTTP/1.1\r\nHost: app.test\r\nContent-Length: 0\r\n\r\n",
        )
        .await
        .expect("a response");
        assert_eq!(response.status, 200);
        assert_eq!(response.text(), "ok");
    }
    assert_eq!(upstream.connections(), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunked_request_body_is_forwarded_chunked() {
    let upstream = ScriptedUpstream::start(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok").await;
    let gw = gateway_for(&upstream).await;
    let mut stream = TcpStream::connect(gw.http).await.unwrap();
    let mut buffer = Vec::new();

    let response = send(
        &mut stream,
        &mut buffer,
        "POST /in HTTP/1.1\r\nHost: app.test\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
    )
    .await
    .expect("a response");

    assert_eq!(response.status, 200);
    let request = String::from_utf8_lossy(&upstream.requests()[0]).into_owned();
    assert!(request.starts_with("POST /in HTTP/1.1\r\n"), "{request}");
    assert!(request.contains("transfer-encoding: chunked\r\n"), "{request}");
    let (_, body) = request.split_once("\r\n\r\n").unwrap();
    let decoded: String = body
        .split("\r\n")
        .collect::<Vec<_>>()
        .chunks(2)
        .filter_map(|pair| pair.get(1).copied())
        .collect();
    assert_eq!(decoded, "hello world");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunked_request_body_reaches_a_real_server() {
    let upstream = Upstream::start("app").await;
    let gw = TestGateway::single_route("", "app.test", &[upstream.url()], "").await;

    let response = raw(
        gw.http,
        "POST /echo HTTP/1.1\r\nHost: app.test\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n\
         4\r\nWiki\r\n5\r\npedia\r\n0\r\n\r\n",
    )
    .await;

    assert_eq!(response.status, 200);
    assert_eq!(response.text(), "Wikipedia");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn early_response_reaches_uploading_client() {
    let (addr, server) = early_413_upstream().await;
    let gw = TestGateway::single_route("", "app.test", &[format!("http://{addr}")], "").await;

    let mut stream = TcpStream::connect(gw.http).await.unwrap();
    stream
        .write_all(b"POST /upload HTTP/1.1\r\nHost: app.test\r\nContent-Length: 10000000\r\n\r\n")
        .await
        .unwrap();
    stream.write_all(&[b'x'; 64 * 1024]).await.unwrap();
    let mut buffer = Vec::new();
    let response = tokio::time::timeout(Duration::from_secs(10), read_response(&mut stream, &mut buffer))
        .await
        .expect("the early response never reached the client")
        .expect("a response");

    assert_eq!(response.status, 413);
    assert_eq!(response.text(), "too big\n");
    server.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_after_101_reach_client() {
    let upstream = ScriptedUpstream::start(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: test\r\nConnection: upgrade\r\n\r\nEARLY",
    )
    .await;
    let gw = gateway_for(&upstream).await;
    let mut stream = TcpStream::connect(gw.http).await.unwrap();

    stream
        .write_all(b"GET /up HTTP/1.1\r\nHost: app.test\r\nUpgrade: test\r\nConnection: upgrade\r\n\r\n")
        .await
        .unwrap();
    let mut received = Vec::new();
    let mut chunk = [0u8; 1024];
    while !String::from_utf8_lossy(&received).ends_with("EARLY") {
        let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut chunk))
            .await
            .expect("the upstream's first bytes never arrived")
            .unwrap();
        assert!(n > 0, "closed early: {:?}", String::from_utf8_lossy(&received));
        received.extend_from_slice(&chunk[..n]);
    }

    let text = String::from_utf8_lossy(&received);
    assert!(text.starts_with("HTTP/1.1 101"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn content_length_beside_chunked_dropped() {
    let upstream = ScriptedUpstream::start(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok").await;
    let gw = gateway_for(&upstream).await;

    // Framed by Transfer-Encoding, the body is 5 bytes. Framed by Content-Length it would
    // be 30 and swallow the next request on a shared upstream connection.
    for head in [
        "Content-Length: 30\r\nTransfer-Encoding: chunked",
        "Transfer-Encoding: chunked\r\nContent-Length: 30",
    ] {
        let response = raw(
            gw.http,
            &format!("POST /in HTTP/1.1\r\nHost: app.test\r\n{head}\r\n\r\n5\r\nhello\r\n0\r\n\r\n"),
        )
        .await;
        assert_eq!(response.status, 200);
    }

    for request in upstream.requests() {
        let request = String::from_utf8_lossy(&request).to_ascii_lowercase();
        assert!(!request.contains("content-length"), "{request}");
        assert!(request.contains("transfer-encoding: chunked\r\n"), "{request}");
        assert!(request.ends_with("\r\n\r\n5\r\nhello\r\n0\r\n\r\n"), "{request}");
    }
    assert_eq!(upstream.requests().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_streamed_body_is_echoed_through() {
    let upstream = Upstream::start("app").await;
    let gw = TestGateway::single_route("", "app.test", &[upstream.url()], "").await;
    let mut sender = h2c_sender(gw.http).await;

    // No Content-Length, and the frames come apart, so the upstream starts echoing
    // before the request body ends and the rest is sent while the response streams.
    let frames = futures_util::stream::iter(["one ", "two ", "three"]).then(|text| async move {
        tokio::time::sleep(Duration::from_millis(100)).await;
        Ok::<_, std::convert::Infallible>(Frame::data(Bytes::from(text)))
    });
    let request = Request::post(format!("http://app.test:{}/echo", gw.http.port()))
        .body(StreamBody::new(Box::pin(frames)))
        .unwrap();
    let response = tokio::time::timeout(Duration::from_secs(10), sender.send_request(request))
        .await
        .expect("no response head")
        .unwrap();
    assert_eq!(response.status(), 200);
    let body = tokio::time::timeout(Duration::from_secs(10), response.into_body().collect())
        .await
        .expect("the echoed body did not end")
        .unwrap()
        .to_bytes();

    assert_eq!(&body[..], b"one two three");
    let seen = upstream.last_request();
    assert_eq!(seen.headers["transfer-encoding"], "chunked");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aborted_upload_is_not_an_upstream_error() {
    let upstream = ScriptedUpstream::start(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok").await;
    let gw = gateway_for(&upstream).await;

    let mut stream = TcpStream::connect(gw.http).await.unwrap();
    stream
        .write_all(b"POST /up HTTP/1.1\r\nHost: app.test\r\nContent-Length: 100000\r\n\r\n")
        .await
        .unwrap();
    stream.write_all(&[b'x'; 1000]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    drop(stream);
    tokio::time::sleep(Duration::from_millis(300)).await;

    let samples = scrape(gw.admin.unwrap()).await;
    let requests = |class| {
        value(
            &samples,
            "minigateway_requests_total",
            &[("route", "app"), ("status_class", class)],
        )
    };
    assert_eq!(requests("4xx"), 1.0, "the abort is not recorded as 499");
    assert_eq!(requests("5xx"), 0.0);
    let other_errors = value(&samples, "minigateway_upstream_errors_total", &[("kind", "other")]);
    assert_eq!(other_errors, 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_early_response_reaches_the_client() {
    let (addr, server) = early_413_upstream().await;
    let gw = TestGateway::single_route("", "app.test", &[format!("http://{addr}")], "").await;
    let mut sender = h2c_sender(gw.http).await;

    // A body far larger than the socket buffers, so most of it is never read.
    let frames = futures_util::stream::iter(0..200).then(|_| async {
        tokio::time::sleep(Duration::from_millis(5)).await;
        Ok::<_, std::convert::Infallible>(Frame::data(Bytes::from(vec![b'x'; 64 * 1024])))
    });
    let request = Request::post(format!("http://app.test:{}/upload", gw.http.port()))
        .body(StreamBody::new(Box::pin(frames)))
        .unwrap();
    let response = tokio::time::timeout(Duration::from_secs(10), sender.send_request(request))
        .await
        .expect("no response head")
        .unwrap();
    assert_eq!(response.status(), 413);
    let body = tokio::time::timeout(Duration::from_secs(10), response.into_body().collect())
        .await
        .expect("the response body did not end")
        .expect("the response stream was reset before its body")
        .to_bytes();

    assert_eq!(&body[..], b"too big\n");
    server.await.unwrap();
}
