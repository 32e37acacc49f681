//! Live reload: every way of writing the file, rejected files, reloads under load,
//! listener changes, and signals to the binary.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use minigateway::Gateway;
use minigateway::reload::ReloadOutcome;

use crate::support::{TestGateway, Upstream, config, free_port, get, pooled, raw, wait_listening};

fn route_to(upstream: &Upstream) -> String {
    config(
        "",
        &format!(
            "[proxyInfo.app]\nhost = \"app.test\"\ntarget = [\"{}\"]\n",
            upstream.url()
        ),
    )
}

/// Polls until `app.test` is served by `expected`; returns how long that took.
async fn served_by(addr: SocketAddr, expected: &str, limit: Duration) -> Duration {
    let started = Instant::now();
    loop {
        let response = get(addr, "app.test", "/").await;
        if response.status == 200 && response.text() == expected {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < limit,
            "still served by {:?} (status {}) after {limit:?}",
            response.text(),
            response.status
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn two_upstreams() -> (Upstream, Upstream) {
    (Upstream::start("a").await, Upstream::start("b").await)
}

/// The change of a write must be served within this time.
const PICKUP: Duration = Duration::from_secs(1);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_place_write_is_picked_up() {
    let (a, b) = two_upstreams().await;
    let gw = TestGateway::start(&route_to(&a)).await;
    assert_eq!(get(gw.http, "app.test", "/").await.text(), "a");

    use std::io::{Seek, Write};
    let text = route_to(&b);
    let mut file = std::fs::OpenOptions::new().write(true).open(gw.config_path()).unwrap();
    file.seek(std::io::SeekFrom::Start(0)).unwrap();
    file.write_all(text.as_bytes()).unwrap();
    file.set_len(text.len() as u64).unwrap();
    drop(file);

    served_by(gw.http, "b", PICKUP).await;
    assert_eq!(gw.gateway.generation(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rename_over_is_picked_up() {
    let (a, b) = two_upstreams().await;
    let gw = TestGateway::start(&route_to(&a)).await;

    let temporary = gw.config_path().with_extension("toml.swp");
    std::fs::write(&temporary, route_to(&b)).unwrap();
    std::fs::rename(&temporary, gw.config_path()).unwrap();

    served_by(gw.http, "b", PICKUP).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sed_in_place_is_picked_up() {
    let (a, b) = two_upstreams().await;
    let gw = TestGateway::start(&route_to(&a)).await;

    let status = Command::new("sed")
        .arg("-i")
        .arg(format!("s/{}/{}/", a.addr.port(), b.addr.port()))
        .arg(gw.config_path())
        .status()
        .unwrap();
    assert!(status.success());

    served_by(gw.http, "b", PICKUP).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncate_then_write_keeps_serving() {
    let (a, b) = two_upstreams().await;
    let gw = TestGateway::start(&route_to(&a)).await;

    std::fs::OpenOptions::new()
        .write(true)
        .open(gw.config_path())
        .unwrap()
        .set_len(0)
        .unwrap();
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(
        get(gw.http, "app.test", "/").await.text(),
        "a",
        "the empty file must not replace the routes"
    );
    assert_eq!(gw.gateway.generation(), 1);

    std::fs::write(gw.config_path(), route_to(&b)).unwrap();
    served_by(gw.http, "b", PICKUP).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_then_recreate_keeps_serving() {
    let (a, b) = two_upstreams().await;
    let gw = TestGateway::start(&route_to(&a)).await;

    std::fs::remove_file(gw.config_path()).unwrap();
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(
        get(gw.http, "app.test", "/").await.text(),
        "a",
        "a missing file must not replace the routes"
    );

    std::fs::write(gw.config_path(), route_to(&b)).unwrap();
    served_by(gw.http, "b", PICKUP).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configmap_symlink_swap_is_picked_up() {
    let (a, b) = two_upstreams().await;
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("cfg");
    let first = root.join("..2026_01_01_v1");
    std::fs::create_dir_all(&first).unwrap();
    std::fs::write(first.join("gateway.toml"), route_to(&a)).unwrap();
    std::os::unix::fs::symlink("..2026_01_01_v1", root.join("..data")).unwrap();
    std::os::unix::fs::symlink("..data/gateway.toml", root.join("gateway.toml")).unwrap();

    let gateway = Gateway::start(root.join("gateway.toml")).await.unwrap();
    let http = gateway.http_addrs()[0];
    assert_eq!(get(http, "app.test", "/").await.text(), "a");

    // Kubernetes writes a new timestamped folder, points a temporary link at it, then
    // renames the link over `..data`.
    let second = root.join("..2026_01_02_v2");
    std::fs::create_dir_all(&second).unwrap();
    std::fs::write(second.join("gateway.toml"), route_to(&b)).unwrap();
    std::os::unix::fs::symlink("..2026_01_02_v2", root.join("..data_tmp")).unwrap();
    std::fs::rename(root.join("..data_tmp"), root.join("..data")).unwrap();
    std::fs::remove_dir_all(&first).unwrap();

    served_by(http, "b", PICKUP).await;
}

/// Reads `/status` from the admin API.
async fn status(admin: SocketAddr) -> serde_json::Value {
    let response = get(admin, "127.0.0.1", "/status").await;
    assert_eq!(response.status, 200);
    serde_json::from_slice(&response.body).unwrap()
}

/// Writes a broken file, checks that the old routes keep serving and that the admin
/// API reports the error with its line and key, then fixes the file.
async fn rejected_then_fixed(broken: &str, line: u64, key: &str) {
    let (a, b) = two_upstreams().await;
    let gw = TestGateway::start(&route_to(&a)).await;
    let admin = gw.admin.unwrap();

    std::fs::write(gw.config_path(), broken).unwrap();
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(
        get(gw.http, "app.test", "/").await.text(),
        "a",
        "the old routes keep serving"
    );
    assert_eq!(gw.gateway.generation(), 1);

    let report = status(admin).await;
    let error = &report["reload"]["last_error"];
    assert_eq!(error["result"], "failed", "{report}");
    assert_eq!(error["diagnostics"][0]["line"], line, "{report}");
    assert_eq!(error["diagnostics"][0]["key"], key, "{report}");
    assert_eq!(report["reload"]["failed_total"], 1, "{report}");

    let reply = raw(
        admin,
        "POST /reload HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(reply.status, 422);
    let reply: serde_json::Value = serde_json::from_slice(&reply.body).unwrap();
    assert_eq!(reply["diagnostics"][0]["key"], key);

    std::fs::write(gw.config_path(), route_to(&b)).unwrap();
    served_by(gw.http, "b", PICKUP).await;
    let report = status(admin).await;
    assert!(report["reload"]["last_error"].is_null(), "{report}");
    assert_eq!(report["generation"], 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_toml_is_rejected() {
    let upstream = Upstream::start("x").await;
    let broken = route_to(&upstream).replace("host = \"app.test\"", "host = \"app.test");
    rejected_then_fixed(&broken, 9, "proxyInfo.app.host").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_key_is_rejected() {
    let upstream = Upstream::start("x").await;
    let broken = route_to(&upstream).replace("host = \"app.test\"", "host = \"app.test\"\nobtianMode = 2");
    rejected_then_fixed(&broken, 10, "proxyInfo.app.obtianMode").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_target_list_is_rejected() {
    let broken = config("", "[proxyInfo.app]\nhost = \"app.test\"\ntarget = []\n");
    rejected_then_fixed(&broken, 10, "proxyInfo.app.target").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unchanged_file_is_skipped() {
    let (a, _b) = two_upstreams().await;
    let gw = TestGateway::start(&route_to(&a)).await;

    let outcome = gw.gateway.reload().await;
    assert_eq!(outcome, ReloadOutcome::Unchanged { generation: 1 });

    // A comment changes nothing observable either.
    std::fs::write(gw.config_path(), format!("# edited\n{}", route_to(&a))).unwrap();
    assert_eq!(gw.gateway.reload().await, ReloadOutcome::Unchanged { generation: 1 });
    assert_eq!(gw.gateway.generation(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reloads_under_load_fail_no_request() {
    let (a, b) = two_upstreams().await;
    let gw = TestGateway::start(&route_to(&a)).await;
    let addr = gw.http;

    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicUsize::new(0));
    let mut clients = Vec::new();
    for _ in 0..32 {
        let stop = stop.clone();
        let sent = sent.clone();
        clients.push(tokio::spawn(async move {
            let client = pooled();
            let mut failures = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let request = Request::get(format!("http://{addr}/"))
                    .header("host", "app.test")
                    .body(Full::new(Bytes::new()))
                    .unwrap();
                match client.request(request).await {
                    Ok(response) if response.status() == 200 => {
                        let _ = response.into_body().collect().await;
                    }
                    Ok(response) => failures.push(format!("status {}", response.status())),
                    Err(error) => failures.push(error.to_string()),
                }
                sent.fetch_add(1, Ordering::Relaxed);
            }
            failures
        }));
    }

    // A slow request that starts before the reloads must finish against its target.
    let slow = tokio::spawn(async move { get(addr, "app.test", "/slow/1500").await });
    tokio::time::sleep(Duration::from_millis(200)).await;

    for round in 0..20 {
        let next = if round % 2 == 0 { &b } else { &a };
        std::fs::write(gw.config_path(), route_to(next)).unwrap();
        // The watcher may apply the write first; then this reload finds nothing new.
        let outcome = gw.gateway.reload().await;
        assert!(
            !matches!(outcome, ReloadOutcome::Failed { .. }),
            "round {round}: {outcome:?}"
        );
        assert_eq!(gw.gateway.generation(), round + 2, "round {round}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.store(true, Ordering::Relaxed);

    let mut failures = Vec::new();
    for client in clients {
        failures.extend(client.await.unwrap());
    }
    assert!(
        sent.load(Ordering::Relaxed) > 500,
        "too little load: {}",
        sent.load(Ordering::Relaxed)
    );
    assert!(
        failures.is_empty(),
        "{} failed requests: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );

    let slow = slow.await.unwrap();
    assert_eq!(slow.status, 200);
    assert_eq!(
        slow.text(),
        "a",
        "the in-flight request finishes against the old target"
    );
    assert_eq!(gw.gateway.generation(), 21);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listen_port_change_moves_listener() {
    let upstream = Upstream::start("app").await;
    let first = free_port();
    let second = free_port();
    let text = |port: u16| {
        format!(
            "[core]\nhttpListen = [\"127.0.0.1:{port}\"]\n\n[admin]\nlisten = \"127.0.0.1:0\"\n\n\
             [proxyInfo.app]\nhost = \"app.test\"\ntarget = [\"{}\"]\n",
            upstream.url()
        )
    };
    let gw = TestGateway::start(&text(first)).await;
    let old: SocketAddr = format!("127.0.0.1:{first}").parse().unwrap();
    let new: SocketAddr = format!("127.0.0.1:{second}").parse().unwrap();

    let long = tokio::spawn(async move { get(old, "app.test", "/slow/1500").await });
    tokio::time::sleep(Duration::from_millis(300)).await;

    std::fs::write(gw.config_path(), text(second)).unwrap();
    let outcome = gw.gateway.reload().await;
    assert!(!matches!(outcome, ReloadOutcome::Failed { .. }), "{outcome:?}");
    assert_eq!(gw.gateway.generation(), 2);

    assert_eq!(get(new, "app.test", "/").await.status, 200, "the new port serves");
    assert!(
        tokio::net::TcpStream::connect(old).await.is_err(),
        "the old port still accepts"
    );
    let long = long.await.unwrap();
    assert_eq!(long.status, 200, "the long request on the old port completes");
    assert_eq!(gw.gateway.http_addrs(), vec![new]);
}

/// Starts the binary with `text` as its configuration; returns it with its tree.
fn spawn_binary(text: &str) -> (std::process::Child, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("configs")).unwrap();
    std::fs::create_dir_all(dir.path().join("logs")).unwrap();
    std::fs::write(dir.path().join("configs/gateway.toml"), text).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_minigateway"))
        .arg("-c")
        .arg(dir.path().join("configs/gateway.toml"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    (child, dir)
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).unwrap().count()
}

fn binary_config(http: u16, admin: u16, upstream: &Upstream) -> String {
    format!(
        "[core]\nhttpListen = [\"127.0.0.1:{http}\"]\n\n[admin]\nlisten = \"127.0.0.1:{admin}\"\n\n\
         [proxyInfo.app]\nhost = \"app.test\"\ntarget = [\"{}\"]\n",
        upstream.url()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_fds_stay_flat_over_100_reloads() {
    let (a, b) = two_upstreams().await;
    let (http, admin) = (free_port(), free_port());
    let (mut child, dir) = spawn_binary(&binary_config(http, admin, &a));
    let admin: SocketAddr = format!("127.0.0.1:{admin}").parse().unwrap();
    let http: SocketAddr = format!("127.0.0.1:{http}").parse().unwrap();
    wait_listening(admin).await;
    let file = dir.path().join("configs/gateway.toml");

    let reload = |file: &Path, upstream: &Upstream| {
        std::fs::write(file, binary_config(http.port(), admin.port(), upstream)).unwrap();
    };
    // Warm up: the first reloads open the pool's connections to both upstreams.
    for round in 0..4 {
        reload(&file, if round % 2 == 0 { &b } else { &a });
        raw(
            admin,
            "POST /reload HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        )
        .await;
        get(http, "app.test", "/").await;
    }
    let before = open_fds(child.id());

    for round in 0..100 {
        reload(&file, if round % 2 == 0 { &b } else { &a });
        let reply = raw(
            admin,
            "POST /reload HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        )
        .await;
        assert_eq!(reply.status, 200, "round {round}: {}", reply.text());
        assert_eq!(get(http, "app.test", "/").await.status, 200);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let after = open_fds(child.id());

    let _ = child.kill();
    let _ = child.wait();
    assert!(
        after <= before + 4,
        "open file descriptors grew from {before} to {after}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_and_signal_option_reach_the_controller() {
    let upstream = Upstream::start("app").await;
    let (http, admin) = (free_port(), free_port());
    let (mut child, dir) = spawn_binary(&binary_config(http, admin, &upstream));
    let admin: SocketAddr = format!("127.0.0.1:{admin}").parse().unwrap();
    wait_listening(admin).await;

    // SAFETY: kill(2) on the child this test started.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGHUP) };
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let report = status(admin).await;
        if report["reload"]["last_trigger"] == "signal" {
            assert_eq!(report["reload"]["last_outcome"]["result"], "unchanged", "{report}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "SIGHUP did not reach the reload controller: {report}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // `-s reload` finds the instance through its pid file; a changed file applies.
    let other = Upstream::start("other").await;
    let file = dir.path().join("configs/gateway.toml");
    std::fs::write(&file, binary_config(http, admin.port(), &other)).unwrap();
    let sent = Command::new(env!("CARGO_BIN_EXE_minigateway"))
        .arg("-s")
        .arg("reload")
        .arg("-c")
        .arg(&file)
        .status()
        .unwrap();
    assert!(sent.success());
    let http: SocketAddr = format!("127.0.0.1:{http}").parse().unwrap();
    served_by_host(http, "other").await;

    let stopped = Command::new(env!("CARGO_BIN_EXE_minigateway"))
        .arg("-s")
        .arg("stop")
        .arg("-c")
        .arg(&file)
        .status()
        .unwrap();
    assert!(stopped.success());
    let deadline = Instant::now() + Duration::from_secs(10);
    while child.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "-s stop did not stop the gateway");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn served_by_host(addr: SocketAddr, expected: &str) {
    served_by(addr, expected, Duration::from_secs(2)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reverted_edit_clears_reported_error() {
    let (a, _b) = two_upstreams().await;
    let gw = TestGateway::start(&route_to(&a)).await;
    let admin = gw.admin.unwrap();
    let original = std::fs::read_to_string(gw.config_path()).unwrap();

    std::fs::write(gw.config_path(), original.replace("[core]", "[core]\nreadTimout = 5")).unwrap();
    let deadline = Instant::now() + Duration::from_secs(3);
    while status(admin).await["reload"]["last_error"].is_null() {
        assert!(Instant::now() < deadline, "the broken edit was not reported");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Putting the file back as it was matches what runs: no new generation, and the
    // error is no longer reported.
    std::fs::write(gw.config_path(), &original).unwrap();
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let report = status(admin).await;
        if report["reload"]["last_error"].is_null() {
            assert_eq!(report["reload"]["last_outcome"]["result"], "unchanged", "{report}");
            break;
        }
        assert!(Instant::now() < deadline, "the error outlived the revert: {report}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(gw.gateway.generation(), 1);
}
