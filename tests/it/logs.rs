//! Log files: the access log in both formats, rotated gateway logs with retention, and
//! throttled repeating warnings.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use regex::Regex;

use crate::support::{TestGateway, Upstream, closed_addr, config, free_port, raw};

/// Waits until `file` has at least `count` lines and returns them.
async fn wait_for_lines(file: &Path, count: usize) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let lines: Vec<String> = std::fs::read_to_string(file)
            .map(|text| text.lines().map(str::to_owned).collect())
            .unwrap_or_default();
        if lines.len() >= count {
            return lines;
        }
        assert!(
            Instant::now() < deadline,
            "{} has {} lines, expected {count}",
            file.display(),
            lines.len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn request_with_agent(addr: SocketAddr, path: &str) {
    let response = raw(
        addr,
        &format!(
            "GET {path} HTTP/1.1\r\nHost: app.test\r\nUser-Agent: test-agent/1.0\r\nReferer: http://ref.test/\r\nConnection: close\r\n\r\n"
        ),
    )
    .await;
    assert_eq!(response.status, 200);
}

fn route(upstream: &Upstream, log: &str) -> String {
    config(
        "",
        &format!(
            "[log]\n{log}\n\n[proxyInfo.app]\nhost = \"app.test\"\ntarget = [\"{}\"]\n",
            upstream.url()
        ),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_log_combined_line() {
    let upstream = Upstream::start("app").await;
    let gw = TestGateway::start(&route(&upstream, "accessLog = true")).await;

    request_with_agent(gw.http, "/path?x=1").await;
    let lines = wait_for_lines(&gw.dir.path().join("logs/access.log"), 1).await;

    let combined = Regex::new(
        r#"^(\S+) - - \[\d{2}/[A-Z][a-z]{2}/\d{4}:\d{2}:\d{2}:\d{2} \+0000\] "(\S+) (\S+) (HTTP/\d\.\d)" (\d{3}) (\d+) "([^"]*)" "([^"]*)" "([^"]*)" (\d{3}|-) (\d+\.\d{3})$"#,
    )
    .unwrap();
    let fields = combined
        .captures(&lines[0])
        .unwrap_or_else(|| panic!("not a combined line: {}", lines[0]));
    assert_eq!(&fields[1], "127.0.0.1");
    assert_eq!(&fields[2], "GET");
    assert_eq!(&fields[3], "/path?x=1");
    assert_eq!(&fields[4], "HTTP/1.1");
    assert_eq!(&fields[5], "200");
    assert_eq!(&fields[6], "3", "body bytes sent");
    assert_eq!(&fields[7], "http://ref.test/");
    assert_eq!(&fields[8], "test-agent/1.0");
    assert_eq!(&fields[9], upstream.addr.to_string(), "upstream address");
    assert_eq!(&fields[10], "200", "upstream status");
    let seconds: f64 = fields[11].parse().unwrap();
    assert!(seconds < 5.0);

    let dated = Regex::new(r"^access\.\d{4}-\d{2}-\d{2}-\d{2}\.log$").unwrap();
    let names: Vec<String> = std::fs::read_dir(gw.dir.path().join("logs"))
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(names.iter().any(|name| dated.is_match(name)), "{names:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_log_json_line() {
    let upstream = Upstream::start("app").await;
    let gw = TestGateway::start(&route(&upstream, "accessLog = true\naccessLogFormat = \"json\"")).await;

    request_with_agent(gw.http, "/j").await;
    assert_eq!(crate::support::get(gw.http, "nowhere.test", "/").await.status, 404);
    let lines = wait_for_lines(&gw.dir.path().join("logs/access.log"), 2).await;

    let first: serde_json::Value = serde_json::from_str(&lines[0]).unwrap();
    assert_eq!(first["uri"], "/j");
    assert_eq!(first["status"], 200);
    assert_eq!(first["route"], "app");
    assert_eq!(first["user_agent"], "test-agent/1.0");
    assert_eq!(first["upstream"], upstream.addr.to_string());
    assert_eq!(first["upstream_status"], 200);
    assert!(first["request_time"].is_f64());

    let second: serde_json::Value = serde_json::from_str(&lines[1]).unwrap();
    assert_eq!(second["status"], 404);
    assert!(second["upstream"].is_null(), "no upstream was tried: {second}");
}

/// Runs the binary on `text` in a fresh tree prepared by `prepare`, until `check`
/// returns, then stops it.
struct Binary {
    child: std::process::Child,
}

impl Drop for Binary {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_log_rotates_with_retention() {
    let dead = closed_addr().await;
    let http = free_port();
    let dir = tempfile::tempdir().unwrap();
    let logs = dir.path().join("logs");
    std::fs::create_dir_all(dir.path().join("configs")).unwrap();
    std::fs::create_dir_all(&logs).unwrap();

    // Five files from earlier runs; with maxFiles = 3 the two newest stay.
    for hour in 1..=5 {
        std::fs::write(logs.join(format!("minigateway.2026-11-01-0{hour}.log")), "old\n").unwrap();
        std::thread::sleep(Duration::from_millis(20));
    }
    std::fs::write(logs.join("unrelated.txt"), "kept\n").unwrap();

    let text = format!(
        "[core]\nhttpListen = [\"127.0.0.1:{http}\"]\n\n[admin]\nenable = false\n\n\
         [log]\nlogLevel = \"info\"\nwriteFile = true\nrotation = \"hourly\"\nmaxFiles = 3\n\n\
         [proxyInfo.dead]\nhost = \"dead.test\"\ntarget = [\"http://{dead}\"]\nmaxFails = 0\n"
    );
    std::fs::write(dir.path().join("configs/gateway.toml"), text).unwrap();
    // A relative configuration path, as in the default `minigateway` invocation from
    // the tree: the `minigateway.log` symlink must still resolve.
    let child = Command::new(env!("CARGO_BIN_EXE_minigateway"))
        .current_dir(dir.path())
        .arg("-c")
        .arg("configs/gateway.toml")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let _binary = Binary { child };
    let addr: SocketAddr = format!("127.0.0.1:{http}").parse().unwrap();

    let deadline = Instant::now() + Duration::from_secs(10);
    while tokio::net::TcpStream::connect(addr).await.is_err() {
        assert!(Instant::now() < deadline, "the gateway did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Requests to a refused upstream repeat one warning; only the first of a burst is
    // written, and the next line counts the ones held back.
    for _ in 0..20 {
        let response = crate::support::get(addr, "dead.test", "/").await;
        assert_eq!(response.status, 502);
    }
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(crate::support::get(addr, "dead.test", "/").await.status, 502);

    let newest = logs.join("minigateway.log");
    let lines = wait_for_lines(&newest, 3).await;
    let text = lines.join("\n");
    assert!(text.contains("gateway started"), "{text}");
    // Every 502 is either written or counted as held back by the next written line. A
    // slow machine may spread the burst over more than one throttle interval.
    let suppressed = Regex::new(r"suppressed=(\d+)").unwrap();
    let warnings: Vec<&String> = lines.iter().filter(|line| line.contains("upstream_connect")).collect();
    let accounted: u64 = warnings
        .iter()
        .map(|line| 1 + suppressed.captures(line).map_or(0, |c| c[1].parse::<u64>().unwrap()))
        .sum();
    assert_eq!(accounted, 21, "{text}");
    assert!(
        warnings.len() <= 5,
        "{} warning lines for 21 failures: {text}",
        warnings.len()
    );
    assert!(warnings.last().unwrap().contains("suppressed="), "{text}");

    let target = std::fs::read_link(&newest).unwrap();
    let current = target.file_name().unwrap().to_string_lossy().into_owned();
    let hourly = Regex::new(r"^minigateway\.\d{4}-\d{2}-\d{2}-\d{2}\.log$").unwrap();
    assert!(hourly.is_match(&current), "{current}");

    let mut names: Vec<String> = std::fs::read_dir(&logs)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| hourly.is_match(name))
        .collect();
    names.sort();
    assert_eq!(
        names,
        vec![
            "minigateway.2026-11-01-04.log".to_owned(),
            "minigateway.2026-11-01-05.log".to_owned(),
            current
        ]
    );
    assert!(
        logs.join("unrelated.txt").exists(),
        "files of other names are left alone"
    );
}
