//! Guards: client IP from trusted proxies, CC defence, limitReq, limitMaxConn, and the
//! bounds of guard state. Clients bind distinct 127.x.y.z source addresses to act as
//! different client IPs.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use minigateway::guard;
use minigateway::metrics::Reason;
use minigateway::reload::ReloadOutcome;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::{TestGateway, Upstream, config, connect_from, logs, read_response, send};

fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

/// Starts a gateway with `core` keys and extra `sections`, routing app.test to `upstream`.
async fn gateway(core: &str, sections: &str, upstream: &Upstream) -> TestGateway {
    let route = format!(
        "[proxyInfo.app]\nhost = \"app.test\"\ntarget = [\"{}\"]\n",
        upstream.url()
    );
    TestGateway::start(&config(core, &format!("{sections}\n{route}"))).await
}

/// Builds a keep-alive GET for app.test with extra header lines.
fn get_request(path: &str, headers: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: app.test\r\n{headers}\r\n")
}

/// Sends `request` on a new connection from `source` and returns the status.
async fn status_from(source: IpAddr, gw: &TestGateway, request: &str) -> u16 {
    let mut stream = connect_from(source, gw.http).await.expect("connect to the gateway");
    let mut buffer = Vec::new();
    let response = send(&mut stream, &mut buffer, request).await.expect("a response");
    response.status
}

/// Reads until the peer closes; returns whether it closed within `limit`.
async fn closes_within(stream: &mut TcpStream, limit: Duration) -> bool {
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
    .is_ok()
}

/// Writes `text` as the configuration and reloads it through the reload controller.
async fn reload_config(gw: &TestGateway, text: &str) {
    let before = gw.gateway.generation();
    std::fs::write(gw.gateway.config_path(), text).unwrap();
    // The watcher may apply the file first; then this reload finds nothing new.
    let outcome = gw.gateway.reload().await;
    assert!(!matches!(outcome, ReloadOutcome::Failed { .. }), "{outcome:?}");
    assert_eq!(gw.gateway.generation(), before + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn untrusted_peer_keyed_and_logged_as_peer() {
    let client = ip("127.0.0.77");
    logs::watch("client=127.0.0.77");
    let upstream = Upstream::start("app").await;
    let gw = gateway(
        "ipForwardeds = [\"X-Forwarded-For\"]\ntrustedProxies = [\"127.0.0.2/32\"]",
        "[limitReq]\nenable = true\ntimeDuration = 60000\ncount = 1",
        &upstream,
    )
    .await;

    let first = status_from(client, &gw, &get_request("/", "X-Forwarded-For: 203.0.113.7\r\n")).await;
    assert_eq!(first, 200);
    let seen = upstream.last_request();
    assert_eq!(
        seen.headers["x-forwarded-for"], "127.0.0.77",
        "the peer is the last element"
    );
    assert_eq!(seen.headers["x-real-ip"], "127.0.0.77");

    // A different forged address is still the same client, so its limit is used up.
    let second = status_from(client, &gw, &get_request("/", "X-Forwarded-For: 198.51.100.9\r\n")).await;
    assert_eq!(second, 429);

    let lines = logs::lines_with("client=127.0.0.77");
    assert!(
        lines.iter().any(|line| line.contains("rate_limited")),
        "no rejection logged for the peer: {lines:?}"
    );
    assert!(
        lines
            .iter()
            .all(|line| !line.contains("203.0.113.7") && !line.contains("198.51.100.9")),
        "a forged address was logged: {lines:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trusted_peer_client_from_forwarded_for() {
    let upstream = Upstream::start("app").await;
    let gw = gateway(
        "ipForwardeds = [\"x-forwarded-for\"]\ntrustedProxies = [\"127.0.0.1/32\", \"127.0.0.2/32\"]",
        "[limitReq]\nenable = true\ntimeDuration = 60000\ncount = 1",
        &upstream,
    )
    .await;
    let peer = ip("127.0.0.1");

    let chain = "X-Forwarded-For: 203.0.113.7, 127.0.0.2\r\n";
    assert_eq!(status_from(peer, &gw, &get_request("/", chain)).await, 200);
    let seen = upstream.last_request();
    assert_eq!(seen.headers["x-real-ip"], "203.0.113.7");
    assert_eq!(seen.headers["x-forwarded-for"], "203.0.113.7, 127.0.0.2, 127.0.0.1");

    let other = "X-Forwarded-For: 203.0.113.8, 127.0.0.2\r\n";
    assert_eq!(
        status_from(peer, &gw, &get_request("/", other)).await,
        200,
        "another forwarded client has its own limit"
    );
    assert_eq!(
        status_from(peer, &gw, &get_request("/", chain)).await,
        429,
        "the limit is keyed by the forwarded client"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_forwarded_for_uses_peer_and_counts() {
    let upstream = Upstream::start("app").await;
    let gw = gateway(
        "ipForwardeds = [\"X-Forwarded-For\"]\ntrustedProxies = [\"127.0.0.0/8\"]",
        "",
        &upstream,
    )
    .await;

    let request = get_request("/", "X-Forwarded-For: 203.0.113.7, not-an-address\r\n");
    assert_eq!(status_from(ip("127.0.0.1"), &gw, &request).await, 200);
    let seen = upstream.last_request();
    assert_eq!(seen.headers["x-real-ip"], "127.0.0.1");
    assert_eq!(seen.headers["x-forwarded-for"], "127.0.0.1");
    let metrics = &gw.gateway.state().metrics;
    assert_eq!(metrics.rejections(Reason::MalformedForwarded), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarding_headers_without_trusted_proxies_warn() {
    logs::watch("trustedProxies is empty");
    let upstream = Upstream::start("app").await;
    let _gw = gateway("ipForwardeds = [\"X-Real-IP\"]", "", &upstream).await;

    let lines = logs::lines_with("trustedProxies is empty");
    assert!(!lines.is_empty(), "start-up did not warn");
    assert!(lines[0].contains("WARN"), "not a warning: {}", lines[0]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotating_forged_forwarded_for_still_banned() {
    let upstream = Upstream::start("app").await;
    let gw = gateway(
        "ipForwardeds = [\"X-Forwarded-For\", \"X-Real-IP\"]\ntrustedProxies = [\"127.0.0.2/32\"]",
        "[ccDefense]\nenable = true\ntimeDuration = 60000\ncount = 50\nblackTime = 60",
        &upstream,
    )
    .await;

    let mut stream = connect_from(ip("127.0.0.1"), gw.http).await.unwrap();
    let mut buffer = Vec::new();
    let mut statuses = Vec::new();
    for n in 0..300u32 {
        let forged = format!(
            "X-Forwarded-For: 203.0.113.{}\r\nX-Real-IP: 198.51.100.{}\r\n",
            n % 250,
            n % 200
        );
        let response = send(&mut stream, &mut buffer, &get_request("/", &forged))
            .await
            .expect("a response");
        statuses.push(response.status);
    }

    let admitted = statuses.iter().filter(|&&status| status == 200).count();
    assert_eq!(admitted, 50, "only `count` requests pass before the ban");
    assert!(statuses[..50].iter().all(|&status| status == 200));
    assert!(
        statuses[50..].iter().all(|&status| status == 403),
        "every later request is banned"
    );
    let state = gw.gateway.state();
    let status = guard::status(&state.guards, &state.connections, &state.metrics);
    let bans: Vec<IpAddr> = status.bans.iter().map(|ban| ban.ip).collect();
    assert_eq!(bans, [ip("127.0.0.1")], "the ban is on the peer address");
    assert_eq!(status.rejections["banned"], 250);
    assert_eq!(status.cc_entries, 1, "one client is tracked");
    assert_eq!(upstream.request_count(), 50);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cc_sixth_request_banned_until_black_time() {
    let upstream = Upstream::start("app").await;
    let gw = gateway(
        "",
        "[ccDefense]\nenable = true\ntimeDuration = 1000\ncount = 5\nblackTime = 1",
        &upstream,
    )
    .await;

    let mut stream = connect_from(ip("127.0.0.1"), gw.http).await.unwrap();
    let mut buffer = Vec::new();
    for n in 1..=5 {
        let response = send(&mut stream, &mut buffer, &get_request("/", "")).await.unwrap();
        assert_eq!(response.status, 200, "request {n} is inside the limit");
    }
    let sixth = send(&mut stream, &mut buffer, &get_request("/", "")).await.unwrap();
    let banned_at = Instant::now();
    assert_eq!(sixth.status, 403);
    assert_eq!(sixth.text(), "403 Forbidden\n");
    let seventh = send(&mut stream, &mut buffer, &get_request("/", "")).await.unwrap();
    assert_eq!(seventh.status, 403, "the ban holds for blackTime");

    tokio::time::sleep_until((banned_at + Duration::from_millis(1100)).into()).await;
    let after = send(&mut stream, &mut buffer, &get_request("/", "")).await.unwrap();
    assert_eq!(after.status, 200, "requests succeed again after blackTime");
    assert_eq!(gw.gateway.state().metrics.rejections(Reason::Banned), 2);
    assert!(gw.gateway.state().guards.bans().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cc_whitelisted_cidr_never_banned() {
    let upstream = Upstream::start("app").await;
    let gw = gateway(
        "",
        "[ccDefense]\nenable = true\ntimeDuration = 60000\ncount = 5\nblackTime = 60\nwhiteList = [\"127.0.0.64/26\"]",
        &upstream,
    )
    .await;

    let mut stream = connect_from(ip("127.0.0.65"), gw.http).await.unwrap();
    let mut buffer = Vec::new();
    for n in 1..=20 {
        let response = send(&mut stream, &mut buffer, &get_request("/", "")).await.unwrap();
        assert_eq!(response.status, 200, "whitelisted request {n}");
    }

    let mut outside = connect_from(ip("127.0.0.1"), gw.http).await.unwrap();
    let mut buffer = Vec::new();
    let mut statuses = Vec::new();
    for _ in 0..6 {
        statuses.push(
            send(&mut outside, &mut buffer, &get_request("/", ""))
                .await
                .unwrap()
                .status,
        );
    }
    assert_eq!(
        statuses,
        [200, 200, 200, 200, 200, 403],
        "an address outside the list is banned"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cc_black_list_and_alias_get_403() {
    let upstream = Upstream::start("app").await;
    let gw = gateway(
        "",
        "[ccDefense]\nenable = true\nblackList = [\"127.0.0.3\"]\nIPBlackList = [\"127.0.0.4/32\"]",
        &upstream,
    )
    .await;

    let listed = {
        let mut stream = connect_from(ip("127.0.0.3"), gw.http).await.unwrap();
        send(&mut stream, &mut Vec::new(), &get_request("/", "")).await.unwrap()
    };
    assert_eq!(listed.status, 403);
    assert_eq!(listed.text(), "403 Forbidden\n");
    assert_eq!(
        status_from(ip("127.0.0.4"), &gw, &get_request("/", "")).await,
        403,
        "IPBlackList"
    );
    assert_eq!(status_from(ip("127.0.0.5"), &gw, &get_request("/", "")).await, 200);
    assert_eq!(
        upstream.request_count(),
        1,
        "blacklisted requests never reach the upstream"
    );
    assert_eq!(gw.gateway.state().metrics.rejections(Reason::Blacklisted), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cc_ban_survives_config_reload() {
    let upstream = Upstream::start("app").await;
    let route = format!(
        "[proxyInfo.app]\nhost = \"app.test\"\ntarget = [\"{}\"]\n",
        upstream.url()
    );
    let strict = config(
        "",
        &format!("[ccDefense]\nenable = true\ntimeDuration = 60000\ncount = 2\nblackTime = 60\n{route}"),
    );
    let gw = TestGateway::start(&strict).await;

    let statuses: Vec<u16> = {
        let mut stream = connect_from(ip("127.0.0.1"), gw.http).await.unwrap();
        let mut buffer = Vec::new();
        let mut statuses = Vec::new();
        for _ in 0..3 {
            statuses.push(
                send(&mut stream, &mut buffer, &get_request("/", ""))
                    .await
                    .unwrap()
                    .status,
            );
        }
        statuses
    };
    assert_eq!(statuses, [200, 200, 403]);

    let lenient = config(
        "",
        &format!("[ccDefense]\nenable = true\ntimeDuration = 60000\ncount = 1000\nblackTime = 60\n{route}"),
    );
    reload_config(&gw, &lenient).await;
    assert_eq!(
        status_from(ip("127.0.0.1"), &gw, &get_request("/", "")).await,
        403,
        "the ban outlives the snapshot"
    );
    assert_eq!(
        status_from(ip("127.0.0.6"), &gw, &get_request("/", "")).await,
        200,
        "other clients are unaffected"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reloaded_limits_apply_to_next_request() {
    let upstream = Upstream::start("app").await;
    let route = format!(
        "[proxyInfo.app]\nhost = \"app.test\"\ntarget = [\"{}\"]\n",
        upstream.url()
    );
    let limits = |count: u32| {
        config(
            "",
            &format!("[limitReq]\nenable = true\ntimeDuration = 60000\ncount = {count}\n{route}"),
        )
    };
    let gw = TestGateway::start(&limits(100)).await;

    let mut stream = connect_from(ip("127.0.0.1"), gw.http).await.unwrap();
    let mut buffer = Vec::new();
    for _ in 0..3 {
        assert_eq!(
            send(&mut stream, &mut buffer, &get_request("/p", ""))
                .await
                .unwrap()
                .status,
            200
        );
    }

    reload_config(&gw, &limits(3)).await;
    let next = send(&mut stream, &mut buffer, &get_request("/p", "")).await.unwrap();
    assert_eq!(
        next.status, 429,
        "the window kept its 3 requests and the new count applies"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limit_req_mode_0_ignores_query() {
    let upstream = Upstream::start("app").await;
    let gw = gateway(
        "",
        "[limitReq]\nenable = true\ntimeDuration = 60000\ncount = 2\nmode = 0",
        &upstream,
    )
    .await;
    let client = ip("127.0.0.1");

    assert_eq!(status_from(client, &gw, &get_request("/a?x=1", "")).await, 200);
    assert_eq!(status_from(client, &gw, &get_request("/a?x=2", "")).await, 200);
    let limited = {
        let mut stream = connect_from(client, gw.http).await.unwrap();
        send(&mut stream, &mut Vec::new(), &get_request("/a?x=3", ""))
            .await
            .unwrap()
    };
    assert_eq!(limited.status, 429, "mode 0 counts /a whatever the query");
    let retry_after: u64 = limited.header("retry-after").expect("Retry-After").parse().unwrap();
    assert!((1..=60).contains(&retry_after), "Retry-After is {retry_after}");
    assert_eq!(limited.text(), "429 Too Many Requests\n");
    assert_eq!(
        status_from(client, &gw, &get_request("/b?x=1", "")).await,
        200,
        "another path"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limit_req_mode_1_keys_on_query() {
    let upstream = Upstream::start("app").await;
    let gw = gateway(
        "",
        "[limitReq]\nenable = true\ntimeDuration = 60000\ncount = 2\nmode = 1",
        &upstream,
    )
    .await;
    let client = ip("127.0.0.1");

    assert_eq!(status_from(client, &gw, &get_request("/a?x=1", "")).await, 200);
    assert_eq!(status_from(client, &gw, &get_request("/a?x=1", "")).await, 200);
    assert_eq!(status_from(client, &gw, &get_request("/a?x=1", "")).await, 429);
    assert_eq!(
        status_from(client, &gw, &get_request("/a?x=2", "")).await,
        200,
        "mode 1 counts each query apart"
    );
    assert_eq!(
        status_from(ip("127.0.0.7"), &gw, &get_request("/a?x=1", "")).await,
        200,
        "another client"
    );
    assert_eq!(gw.gateway.state().metrics.rejections(Reason::RateLimited), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limit_req_readmits_after_window() {
    let upstream = Upstream::start("app").await;
    let gw = gateway(
        "",
        "[limitReq]\nenable = true\ntimeDuration = 1000\ncount = 2",
        &upstream,
    )
    .await;

    let mut stream = connect_from(ip("127.0.0.1"), gw.http).await.unwrap();
    let mut buffer = Vec::new();
    let started = Instant::now();
    let mut results: Vec<(Duration, u16)> = Vec::new();
    // A client that keeps sending every 50 ms, for at most 2.5 s.
    while started.elapsed() < Duration::from_millis(2500) {
        let response = send(&mut stream, &mut buffer, &get_request("/", "")).await.unwrap();
        results.push((started.elapsed(), response.status));
        if results.iter().filter(|(_, status)| *status == 200).count() == 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let statuses: Vec<u16> = results.iter().map(|(_, status)| *status).collect();
    assert_eq!(&statuses[..3], [200, 200, 429], "statuses: {statuses:?}");
    let first_limited = statuses.iter().position(|&status| status == 429).unwrap();
    let readmitted = results[first_limited..]
        .iter()
        .find(|(_, status)| *status == 200)
        .map(|(at, _)| *at)
        .expect("the client was never admitted again");
    assert!(
        readmitted >= Duration::from_millis(1000),
        "admitted before the window ended: {readmitted:?}"
    );
    assert!(
        readmitted < Duration::from_millis(1800),
        "rejected requests extended the window: admitted at {readmitted:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conn_cap_rejects_51st_promptly() {
    let upstream = Upstream::start("app").await;
    let gw = gateway("limitMaxConn = 50", "", &upstream).await;

    let mut slow_requests = Vec::new();
    for _ in 0..50 {
        let mut stream = TcpStream::connect(gw.http).await.unwrap();
        stream
            .write_all(get_request("/slow/4000", "").as_bytes())
            .await
            .unwrap();
        slow_requests.push(stream);
    }
    let state = gw.gateway.state().clone();
    let deadline = Instant::now() + Duration::from_secs(5);
    while state.connections.open() < 50 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(state.connections.open(), 50);

    let started = Instant::now();
    let mut extra = TcpStream::connect(gw.http).await.unwrap();
    let mut buffer = Vec::new();
    let rejected = tokio::time::timeout(Duration::from_secs(2), read_response(&mut extra, &mut buffer))
        .await
        .expect("the 51st connection got no answer")
        .expect("the 51st connection was closed without a response");
    let elapsed = started.elapsed();
    assert_eq!(rejected.status, 503);
    assert!(elapsed < Duration::from_millis(1000), "the 503 took {elapsed:?}");
    assert!(
        closes_within(&mut extra, Duration::from_secs(1)).await,
        "the 51st stays open"
    );
    assert_eq!(state.metrics.rejections(Reason::ConnectionLimit), 1);

    for (n, stream) in slow_requests.iter_mut().enumerate() {
        let mut buffer = Vec::new();
        let first = read_response(stream, &mut buffer).await;
        assert_eq!(
            first.map(|r| r.status),
            Some(200),
            "slow-request connection {n}, first request"
        );
        let second = send(stream, &mut buffer, &get_request("/", "")).await;
        assert_eq!(
            second.map(|r| r.status),
            Some(200),
            "slow-request connection {n}, second request"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conn_cap_closes_idle_connection_first() {
    let upstream = Upstream::start("app").await;
    let gw = gateway("limitMaxConn = 5\nidleTimeout = 60", "", &upstream).await;

    let mut idle = Vec::new();
    for _ in 0..5 {
        let mut stream = TcpStream::connect(gw.http).await.unwrap();
        let response = send(&mut stream, &mut Vec::new(), &get_request("/", "")).await;
        assert_eq!(response.map(|r| r.status), Some(200));
        idle.push(stream);
    }

    let mut newcomer = TcpStream::connect(gw.http).await.unwrap();
    let response = send(&mut newcomer, &mut Vec::new(), &get_request("/", "")).await;
    assert_eq!(response.map(|r| r.status), Some(200), "the new client is served");

    let mut closed = 0;
    for stream in &mut idle {
        if closes_within(stream, Duration::from_millis(300)).await {
            closed += 1;
        }
    }
    assert_eq!(closed, 1, "exactly one idle connection makes room");
    let state = gw.gateway.state();
    assert_eq!(state.connections.idle_closed(), 1);
    assert_eq!(state.metrics.rejections(Reason::ConnectionLimit), 0);
}

/// Opens `count` connections that send a partial request head and then one byte every
/// 300 ms, for at most `duration`. Returns the tasks and the number of connections
/// that the gateway closed.
fn slowloris(
    gw: &TestGateway,
    count: usize,
    duration: Duration,
) -> (Vec<tokio::task::JoinHandle<()>>, Arc<AtomicUsize>) {
    let closed = Arc::new(AtomicUsize::new(0));
    let tasks = (0..count)
        .map(|_| {
            let addr = gw.http;
            let closed = closed.clone();
            tokio::spawn(async move {
                let Ok(mut stream) = TcpStream::connect(addr).await else {
                    closed.fetch_add(1, Ordering::SeqCst);
                    return;
                };
                let started = Instant::now();
                let mut head = b"GET / HTTP/1.1\r\nHost: app".to_vec();
                head.extend(std::iter::repeat_n(b'x', 64));
                let mut chunk = [0u8; 256];
                for byte in head {
                    if started.elapsed() > duration {
                        return;
                    }
                    if stream.write_all(&[byte]).await.is_err() {
                        closed.fetch_add(1, Ordering::SeqCst);
                        return;
                    }
                    // A read that ends means the gateway closed the connection.
                    let read = tokio::time::timeout(Duration::from_millis(300), stream.read(&mut chunk)).await;
                    if let Ok(Ok(0) | Err(_)) = read {
                        closed.fetch_add(1, Ordering::SeqCst);
                        return;
                    }
                }
            })
        })
        .collect();
    (tasks, closed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_does_not_block_normal_client() {
    let upstream = Upstream::start("app").await;
    let gw = gateway("limitMaxConn = 1000\nreadTimeout = 2", "", &upstream).await;
    let state = gw.gateway.state().clone();

    let (tasks, closed) = slowloris(&gw, 500, Duration::from_secs(6));
    let deadline = Instant::now() + Duration::from_secs(5);
    while state.connections.open() < 500 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(state.connections.open(), 500, "the slow clients are connected");

    let started = Instant::now();
    let status = status_from(ip("127.0.0.1"), &gw, &get_request("/", "Connection: close\r\n")).await;
    let elapsed = started.elapsed();
    assert_eq!(status, 200);
    assert!(
        elapsed < Duration::from_millis(1000),
        "the normal client waited {elapsed:?}"
    );

    // readTimeout cuts every dribbling client and frees its slot.
    let deadline = Instant::now() + Duration::from_secs(5);
    while state.connections.open() > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(state.connections.open(), 0, "slow clients kept their slots");
    for task in tasks {
        task.await.unwrap();
    }
    assert_eq!(closed.load(Ordering::SeqCst), 500, "every slow client was disconnected");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_at_cap_frees_slots_at_read_timeout() {
    let upstream = Upstream::start("app").await;
    let gw = gateway("limitMaxConn = 50\nreadTimeout = 2", "", &upstream).await;
    let state = gw.gateway.state().clone();

    let (tasks, _closed) = slowloris(&gw, 500, Duration::from_secs(6));
    let deadline = Instant::now() + Duration::from_secs(5);
    while state.metrics.rejections(Reason::ConnectionLimit) < 450 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(state.connections.open(), 50, "the slow clients fill the cap");
    assert_eq!(state.metrics.rejections(Reason::ConnectionLimit), 450);

    // Slow clients hold slots at most readTimeout (2 s) after they connected.
    let started = Instant::now();
    let mut served = false;
    while started.elapsed() < Duration::from_secs(5) {
        let mut stream = TcpStream::connect(gw.http).await.unwrap();
        let mut buffer = Vec::new();
        if let Some(response) = send(&mut stream, &mut buffer, &get_request("/", "Connection: close\r\n")).await {
            if response.status == 200 {
                served = true;
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(served, "no slot was freed within 5 s");
    assert!(
        started.elapsed() < Duration::from_millis(3000),
        "a slot was freed only after {:?}",
        started.elapsed()
    );
    for task in tasks {
        task.await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn distinct_clients_bounded_by_max_entries() {
    const CLIENTS: u32 = 20_000;
    const MAX_ENTRIES: usize = 2_000;
    let upstream = Upstream::start("app").await;
    let gw = gateway(
        "",
        &format!(
            "[ccDefense]\nenable = true\ntimeDuration = 60000\ncount = 100\nmaxEntries = {MAX_ENTRIES}\n\n\
             [limitReq]\nenable = true\ntimeDuration = 60000\ncount = 100\nmaxEntries = {MAX_ENTRIES}"
        ),
        &upstream,
    )
    .await;

    // Sources 127.1.0.1 onwards, each sending one request on its own connection.
    let next = Arc::new(AtomicUsize::new(0));
    let failures = Arc::new(AtomicUsize::new(0));
    let workers: Vec<_> = (0..32)
        .map(|_| {
            let next = next.clone();
            let failures = failures.clone();
            let addr = gw.http;
            tokio::spawn(async move {
                loop {
                    let n = next.fetch_add(1, Ordering::Relaxed) as u32;
                    if n >= CLIENTS {
                        return;
                    }
                    let source = IpAddr::V4(Ipv4Addr::from(u32::from(Ipv4Addr::new(127, 1, 0, 1)) + n));
                    let request = get_request("/", "Connection: close\r\n");
                    let ok = match connect_from(source, addr).await {
                        Ok(mut stream) => send(&mut stream, &mut Vec::new(), &request)
                            .await
                            .is_some_and(|response| response.status == 200),
                        Err(_) => false,
                    };
                    if !ok {
                        failures.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    for worker in workers {
        worker.await.unwrap();
    }

    assert_eq!(failures.load(Ordering::Relaxed), 0, "every distinct client is served");
    let guards = &gw.gateway.state().guards;
    let bound = MAX_ENTRIES + 63;
    let cc = guards.cc.len();
    let limits = guards.limit_req.len();
    assert!(cc <= bound, "CC defence tracks {cc} clients, above the cap");
    assert!(limits <= bound, "limitReq tracks {limits} keys, above the cap");
    assert!(cc >= MAX_ENTRIES / 2, "CC defence tracks only {cc} clients");
    assert!(limits >= MAX_ENTRIES / 2, "limitReq tracks only {limits} keys");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_lists_and_lifts_bans() {
    let upstream = Upstream::start("app").await;
    let text = config(
        "",
        &format!(
            "[ccDefense]\nenable = true\ntimeDuration = 60000\ncount = 2\nblackTime = 600\nblackList = [\"198.51.100.0/24\"]\n\
             [proxyInfo.app]\nhost = \"app.test\"\ntarget = [\"{}\"]\n",
            upstream.url()
        ),
    );
    let gw = TestGateway::start(&text).await;
    let admin = gw.admin.unwrap();
    let client = ip("127.0.0.7");
    let mut statuses = Vec::new();
    for _ in 0..3 {
        statuses.push(status_from(client, &gw, &get_request("/", "")).await);
    }
    assert_eq!(statuses, [200, 200, 403]);

    let listed = crate::support::get(admin, "127.0.0.1", "/bans").await;
    assert_eq!(listed.status, 200);
    let listed: serde_json::Value = serde_json::from_slice(&listed.body).unwrap();
    assert_eq!(listed["bans"][0]["ip"], "127.0.0.7", "{listed}");
    let remaining = listed["bans"][0]["remaining_seconds"].as_f64().unwrap();
    assert!(remaining > 590.0, "{listed}");
    assert!(remaining <= 600.0, "{listed}");
    assert_eq!(listed["black_list"][0], "198.51.100.0/24");

    let delete = |path: &'static str| async move {
        crate::support::raw(
            admin,
            &format!("DELETE {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"),
        )
        .await
    };
    let lifted = delete("/bans/127.0.0.7").await;
    assert_eq!(lifted.status, 200, "{}", lifted.text());
    assert_eq!(
        status_from(client, &gw, &get_request("/", "")).await,
        200,
        "the ban is lifted"
    );

    assert_eq!(delete("/bans/127.0.0.7").await.status, 404, "no ban left to lift");
    assert_eq!(delete("/bans/not-an-ip").await.status, 400);
    let status: serde_json::Value =
        serde_json::from_slice(&crate::support::get(admin, "127.0.0.1", "/status").await.body).unwrap();
    assert_eq!(status["guards"]["bans"], 0);
}
