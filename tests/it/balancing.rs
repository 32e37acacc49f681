//! Balancing over real upstreams: round robin fairness, consistent hashing.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpSocket;

use crate::support::{TestGateway, Upstream, pooled, read_response};

async fn start_upstreams(count: usize) -> Vec<Upstream> {
    let mut list = Vec::new();
    for i in 0..count {
        list.push(Upstream::start(&format!("u{i}")).await);
    }
    list
}

fn urls(upstreams: &[Upstream]) -> Vec<String> {
    upstreams.iter().map(Upstream::url).collect()
}

/// Sends `total` GET requests from `concurrency` keep-alive clients; returns the
/// upstream name in each response, in no particular order.
async fn load(addr: SocketAddr, host: &str, total: usize, concurrency: usize, header: Option<&str>) -> Vec<String> {
    let client = Arc::new(pooled());
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let client = client.clone();
        let next = next.clone();
        let host = host.to_owned();
        let header = header.map(str::to_owned);
        tasks.push(tokio::spawn(async move {
            let mut names = Vec::new();
            loop {
                let n = next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                if n >= total {
                    return names;
                }
                let mut request = Request::get(format!("http://{addr}/")).header("host", &host);
                if let Some(name) = &header {
                    request = request.header(name, n.to_string());
                }
                let response = client
                    .request(request.body(Full::new(Bytes::new())).unwrap())
                    .await
                    .unwrap();
                assert_eq!(response.status(), 200);
                let body = response.into_body().collect().await.unwrap().to_bytes();
                names.push(String::from_utf8(body.to_vec()).unwrap());
            }
        }));
    }
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await.unwrap());
    }
    all
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_is_fair_under_concurrency() {
    let servers = start_upstreams(3).await;
    let gw = TestGateway::single_route("", "rr.test", &urls(&servers), "obtainMode = 2").await;

    let names = load(gw.http, "rr.test", 3000, 64, None).await;
    assert_eq!(names.len(), 3000);
    for server in &servers {
        let count = names.iter().filter(|name| **name == server.name).count();
        assert!((980..=1020).contains(&count), "{} served {count} of 3000", server.name);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_reaches_every_target() {
    let servers = start_upstreams(3).await;
    let gw = TestGateway::single_route("", "random.test", &urls(&servers), "obtainMode = 1").await;

    let names = load(gw.http, "random.test", 600, 8, None).await;
    for server in &servers {
        let count = names.iter().filter(|name| **name == server.name).count();
        assert!(count > 100, "{} served only {count} of 600", server.name);
    }
}

/// Sends one request from a chosen loopback source address.
async fn get_from(source: &str, addr: SocketAddr, host: &str) -> String {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(format!("{source}:0").parse().unwrap()).unwrap();
    let mut stream = socket.connect(addr).await.unwrap();
    let request = format!("GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut buffer = Vec::new();
    let response = read_response(&mut stream, &mut buffer).await.unwrap();
    assert_eq!(response.status, 200);
    response.text()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consistent_hash_pins_client_ip() {
    let servers = start_upstreams(4).await;
    let gw = TestGateway::single_route("", "hash.test", &urls(&servers), "obtainMode = 3").await;

    let mut chosen: HashMap<String, String> = HashMap::new();
    for round in 0..3 {
        for n in 1..=40 {
            let source = format!("127.0.{n}.{}", 10 + n);
            let name = get_from(&source, gw.http, "hash.test").await;
            match chosen.get(&source) {
                Some(previous) => assert_eq!(previous, &name, "{source} moved in round {round}"),
                None => {
                    chosen.insert(source, name);
                }
            }
        }
    }
    let distinct: std::collections::HashSet<&String> = chosen.values().collect();
    assert!(
        distinct.len() >= 3,
        "40 clients should spread over the targets: {distinct:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adding_a_target_moves_only_its_share() {
    let servers = start_upstreams(5).await;
    let four = TestGateway::single_route(
        "",
        "hash.test",
        &urls(&servers[..4]),
        "obtainMode = 3\nhashKey = \"header:x-user\"",
    )
    .await;
    let five = TestGateway::single_route(
        "",
        "hash.test",
        &urls(&servers),
        "obtainMode = 3\nhashKey = \"header:x-user\"",
    )
    .await;

    // One request per key; the header value is the key, so keys map to responses by
    // sending them in order on one connection each.
    async fn owners(addr: SocketAddr) -> Vec<String> {
        let client = pooled();
        let mut owners = Vec::with_capacity(10_000);
        for key in 0..10_000 {
            let request = Request::get(format!("http://{addr}/"))
                .header("host", "hash.test")
                .header("x-user", key.to_string())
                .body(Full::new(Bytes::new()))
                .unwrap();
            let response = client.request(request).await.unwrap();
            let body = response.into_body().collect().await.unwrap().to_bytes();
            owners.push(String::from_utf8(body.to_vec()).unwrap());
        }
        owners
    }
    let (before, after) = tokio::join!(owners(four.http), owners(five.http));

    let new_name = &servers[4].name;
    let mut moved = 0;
    for (old, new) in before.iter().zip(&after) {
        if old != new {
            moved += 1;
            assert_eq!(new, new_name, "a moved key must move to the added target");
        }
    }
    assert!((1_000..=3_000).contains(&moved), "moved {moved} of 10000 keys");
}
