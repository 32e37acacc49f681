//! The `minigateway` binary: `-t`, and a graceful stop on SIGTERM.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::pki::{LeafSpec, Signer, TestCa, offline_response, write};
use crate::support::{Upstream, free_addr, get, wait_listening};

const BINARY: &str = env!("CARGO_BIN_EXE_minigateway");

fn write_tree(text: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("configs")).unwrap();
    std::fs::create_dir_all(dir.path().join("logs")).unwrap();
    let file = dir.path().join("configs").join("gateway.toml");
    std::fs::write(&file, text).unwrap();
    (dir, file)
}

fn check(file: &Path) -> (bool, String) {
    let output = Command::new(BINARY).arg("-t").arg("-c").arg(file).output().unwrap();
    let text = String::from_utf8_lossy(&output.stdout).into_owned() + &String::from_utf8_lossy(&output.stderr);
    (output.status.success(), text)
}

const VALID: &str = "[core]\nhttpListen = [\"127.0.0.1:8080\"]\n\n[proxyInfo.app]\nhost = \"app.test\"\ntarget = [\"http://127.0.0.1:9000\"]\n";

#[test]
fn check_accepts_valid_file() {
    let (_dir, file) = write_tree(VALID);
    let (ok, output) = check(&file);
    assert!(ok, "{output}");
    assert!(output.contains("test is successful"), "{output}");
}

#[test]
fn check_names_file_line_and_unknown_key() {
    let (_dir, file) = write_tree(&VALID.replace("httpListen", "readTimout = 5\nhttpListen"));
    let (ok, output) = check(&file);
    assert!(!ok);
    assert!(output.contains("gateway.toml:2:1"), "{output}");
    assert!(output.contains("core.readTimout"), "{output}");
    assert!(output.contains("did you mean `readTimeout`"), "{output}");
}

#[test]
fn check_names_bad_target_url() {
    let (_dir, file) = write_tree(&VALID.replace("http://127.0.0.1:9000", "127.0.0.1:9000"));
    let (ok, output) = check(&file);
    assert!(!ok);
    assert!(output.contains("gateway.toml:6:"), "{output}");
    assert!(output.contains("proxyInfo.app.target"), "{output}");
}

#[test]
fn check_accepts_mingateway_file() {
    let text = include_str!("../fixtures/mingateway.conf");
    let (dir, file) = write_tree(text);
    // `-t` loads the certificate, key and OCSP file the fixture names, as `nginx -t` does.
    let cert_dir = dir.path().join("cert");
    std::fs::create_dir_all(&cert_dir).unwrap();
    let ca = TestCa::new("Fixture Test CA");
    let leaf = ca.issue(&LeafSpec::names(&["example.com"]));
    write(&cert_dir, "example.com.crt", leaf.chain_pem(&ca));
    write(&cert_dir, "example.com.key", &leaf.key_pem);
    let response = offline_response(dir.path(), &ca, Signer::Issuer, &leaf, false, 1);
    write(&cert_dir, "example.com.ocsp", response);

    let (ok, output) = check(&file);
    assert!(ok, "{output}");
    assert!(
        !output.contains("expire"),
        "the fixture's certificate is valid: {output}"
    );
    // minGateway's sample sets forwarding headers without trusted proxies and a white
    // list with CC defence off; both are reported, since neither takes effect.
    assert!(output.contains("warning: ipForwardeds is set"), "{output}");
    assert!(
        output.contains("warning: [ccDefense] whiteList or blackList is set"),
        "{output}"
    );
}

struct Running {
    child: Child,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_in_flight_request_and_exits_zero() {
    let upstream = Upstream::start("app").await;
    let http = free_addr();
    let admin = free_addr();
    let text = format!(
        "[core]\nhttpListen = [\"{http}\"]\n\n[admin]\nlisten = \"{admin}\"\n\n[log]\naccessLog = true\n\n\
         [proxyInfo.app]\nhost = \"app.test\"\ntarget = [\"{}\"]\n",
        upstream.url()
    );
    let (dir, file) = write_tree(&text);
    let child = Command::new(BINARY)
        .arg("-c")
        .arg(&file)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut running = Running { child };
    wait_listening(http).await;
    // The pid file is written after the listeners are bound, so it may lag a little.
    let pid_file = dir.path().join("logs/minigateway.pid");
    let deadline = Instant::now() + Duration::from_secs(5);
    while !pid_file.exists() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(pid_file.exists(), "pid file missing");

    let slow = tokio::spawn(async move { get(http, "app.test", "/slow/1500").await });
    tokio::time::sleep(Duration::from_millis(400)).await;
    // SAFETY: kill(2) on the child this test started.
    unsafe { libc::kill(running.child.id() as libc::pid_t, libc::SIGTERM) };

    let response = slow.await.unwrap();
    assert_eq!(response.status, 200, "the in-flight request must finish");
    assert_eq!(response.text(), "app");

    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = running.child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "gateway did not exit after SIGTERM");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(status.success(), "exit status {status}");
    assert!(
        tokio::net::TcpStream::connect(http).await.is_err(),
        "the listener is still open"
    );
    assert!(
        !dir.path().join("logs/minigateway.pid").exists(),
        "pid file left behind"
    );
    let access = std::fs::read_to_string(dir.path().join("logs/access.log")).unwrap_or_default();
    assert!(
        access.contains("\"GET /slow/1500 HTTP/1.1\" 200"),
        "the in-flight request's access log line was not written before exit: {access:?}"
    );
}

fn binary_config(http: std::net::SocketAddr, admin: std::net::SocketAddr, upstream: &Upstream) -> String {
    format!(
        "[core]\nhttpListen = [\"{http}\"]\n\n[admin]\nlisten = \"{admin}\"\n\n[proxyInfo.app]\nhost = \"app.test\"\ntarget = [\"{}\"]\n",
        upstream.url()
    )
}

async fn wait_exit(child: &mut Child) -> std::process::ExitStatus {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(Instant::now() < deadline, "the gateway did not exit");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_instance_is_refused_unless_upgrading() {
    let upstream = Upstream::start("app").await;
    let (http, admin) = (free_addr(), free_addr());
    let (dir, file) = write_tree(&binary_config(http, admin, &upstream));
    let start = |extra: &[&str]| {
        Command::new(BINARY)
            .args(extra)
            .arg("-c")
            .arg(&file)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let mut first = Running { child: start(&[]) };
    wait_listening(http).await;
    let pid_file = dir.path().join("logs/minigateway.pid");
    let deadline = Instant::now() + Duration::from_secs(5);
    while !pid_file.exists() {
        assert!(Instant::now() < deadline, "pid file missing");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // A second start on the same addresses fails, as nginx's does, and leaves the
    // first instance and its pid file alone.
    let second = start(&[]).wait_with_output().unwrap();
    assert!(!second.status.success());
    let message = String::from_utf8_lossy(&second.stderr);
    assert!(message.contains("already in use"), "{message}");
    assert!(message.contains("--upgrade"), "{message}");
    assert_eq!(
        std::fs::read_to_string(&pid_file).unwrap().trim(),
        first.child.id().to_string()
    );
    assert_eq!(get(http, "app.test", "/").await.status, 200);

    // With --upgrade the new binary serves beside the old one and takes the pid file.
    // Stopping the old one then leaves the new one reachable through `-s`.
    let mut upgraded = Running {
        child: start(&["--upgrade"]),
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::fs::read_to_string(&pid_file).unwrap_or_default().trim() != upgraded.child.id().to_string() {
        assert!(
            Instant::now() < deadline,
            "the upgraded instance did not write its pid file"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // SAFETY: kill(2) on a child this test started.
    unsafe { libc::kill(first.child.id() as libc::pid_t, libc::SIGTERM) };
    assert!(wait_exit(&mut first.child).await.success());
    assert!(pid_file.exists(), "the old instance removed the new one's pid file");
    assert_eq!(
        get(http, "app.test", "/").await.status,
        200,
        "the upgraded instance serves"
    );

    let stopped = Command::new(BINARY)
        .arg("-s")
        .arg("stop")
        .arg("-c")
        .arg(&file)
        .status()
        .unwrap();
    assert!(stopped.success());
    assert!(wait_exit(&mut upgraded.child).await.success());
}

#[test]
fn check_prints_ineffective_guard_settings() {
    let (_dir, file) = write_tree(&VALID.replace("httpListen", "ipForwardeds = [\"X-Forwarded-For\"]\nhttpListen"));
    let (ok, output) = check(&file);
    assert!(ok, "{output}");
    assert!(
        output.contains("warning: ipForwardeds is set but trustedProxies is empty"),
        "{output}"
    );
}
