//! HTTPS: SNI selection, ALPN and protocol versions, redirects, key formats, live
//! certificate changes, the admin status and `-t`, over real handshakes on loopback.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use minigateway::Gateway;
use rcgen::KeyPair;
use tempfile::TempDir;

use crate::support::pki::{Leaf, LeafSpec, TestCa, write};
use crate::support::tls_client::{ClientOptions, HttpOverTls, connect, handshake};
use crate::support::{TestGateway, Upstream, config, get, tree};

const BINARY: &str = env!("CARGO_BIN_EXE_minigateway");

/// A certificate change must be served within this time after the write: the watcher
/// waits 200 ms of quiet (at most 600 ms) before it reloads.
const PICKUP: Duration = Duration::from_secs(1);

/// Writes `<name>.pem` (the leaf and its issuer) and `<name>.key` under `cert/`.
fn write_pair(dir: &Path, name: &str, leaf: &Leaf, ca: &TestCa) {
    write(&dir.join("cert"), &format!("{name}.pem"), leaf.chain_pem(ca));
    write(&dir.join("cert"), &format!("{name}.key"), &leaf.key_pem);
}

/// Returns an `[sslCert.<name>]` section for the files [`write_pair`] writes.
fn cert_section(name: &str, extra: &str) -> String {
    format!("[sslCert.{name}]\nssl_certificate = \"{name}.pem\"\nssl_certificate_key = \"{name}.key\"\n{extra}\n")
}

/// Returns a configuration with an HTTPS listener and one catch-all route to `upstream`.
fn https_config(upstream: &Upstream, sections: &str) -> String {
    config(
        "httpsListen = [\"127.0.0.1:0\"]",
        &format!(
            "[proxyInfo.app]\nhost = \"default\"\ntarget = [\"{}\"]\n\n{sections}",
            upstream.url()
        ),
    )
}

/// Starts a gateway serving the certificates written by `setup`.
async fn start_https(upstream: &Upstream, sections: &str, setup: impl FnOnce(&Path)) -> TestGateway {
    let dir: TempDir = tree();
    setup(dir.path());
    TestGateway::start_in(dir, &https_config(upstream, sections)).await
}

/// Polls handshakes with `sni` until the leaf's serial is `expected`; returns the time
/// that took.
async fn serial_within(gw: &TestGateway, sni: &str, expected: &str, limit: Duration) -> Duration {
    let started = Instant::now();
    loop {
        let presented = handshake(gw.https.unwrap(), &ClientOptions::sni(sni)).await;
        if presented.serial() == expected {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < limit,
            "still serving serial {} after {limit:?}, expected {expected}",
            presented.serial()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn admin_status(gw: &TestGateway) -> serde_json::Value {
    let response = get(gw.admin.unwrap(), "127.0.0.1", "/status").await;
    assert_eq!(response.status, 200);
    serde_json::from_slice(&response.body).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sni_picks_exact_then_wildcard_then_default() {
    let upstream = Upstream::start("app").await;
    let ca = TestCa::new("SNI Test CA");
    let a = ca.issue(&LeafSpec::names(&["a.test"]));
    let b = ca.issue(&LeafSpec::names(&["b.test", "www.b.test"]));
    let wild = ca.issue(&LeafSpec::names(&["*.wild.test"]));
    let sections = cert_section("a", "") + &cert_section("b", "default = true") + &cert_section("wild", "");
    let gw = start_https(&upstream, &sections, |dir| {
        write_pair(dir, "a", &a, &ca);
        write_pair(dir, "b", &b, &ca);
        write_pair(dir, "wild", &wild, &ca);
    })
    .await;
    let https = gw.https.unwrap();

    let cases: [(Option<&str>, &Leaf, &str); 11] = [
        (Some("a.test"), &a, "exact name"),
        (Some("A.TEST"), &a, "upper-case exact name"),
        (Some("b.test"), &b, "exact name of the default"),
        (Some("www.b.test"), &b, "second name of a certificate"),
        (Some("x.wild.test"), &wild, "wildcard"),
        (Some("X.Wild.TEST"), &wild, "upper-case wildcard"),
        (Some("deep.x.wild.test"), &b, "a wildcard covers one label only"),
        (Some("wild.test"), &b, "a wildcard does not cover its parent"),
        (Some("unknown.test"), &b, "unknown name"),
        (Some("a.test.example"), &b, "name with a known prefix"),
        (None, &b, "no SNI"),
    ];
    for (sni, expected, case) in cases {
        let options = match sni {
            Some(name) => ClientOptions::sni(name),
            None => ClientOptions::no_sni(),
        };
        let presented = handshake(https, &options).await;
        assert_eq!(presented.serial(), expected.serial, "{case}: SNI {sni:?}");
    }

    for name in ["a.test", "b.test", "x.wild.test"] {
        let options = ClientOptions {
            ca: Some(&ca),
            ..ClientOptions::sni(name)
        };
        let presented = handshake(https, &options).await;
        assert_eq!(presented.verified, Some(Ok(())), "chain for {name}");
        assert_eq!(presented.chain_len, 2, "chain length for {name}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_certificate_is_default_without_flag() {
    let upstream = Upstream::start("app").await;
    let ca = TestCa::new("Default Test CA");
    let a = ca.issue(&LeafSpec::names(&["a.test"]));
    let b = ca.issue(&LeafSpec::names(&["b.test"]));
    let sections = cert_section("a", "") + &cert_section("b", "");
    let gw = start_https(&upstream, &sections, |dir| {
        write_pair(dir, "a", &a, &ca);
        write_pair(dir, "b", &b, &ca);
    })
    .await;

    let unknown = handshake(gw.https.unwrap(), &ClientOptions::sni("other.test")).await;
    assert_eq!(unknown.serial(), a.serial);
    let missing = handshake(gw.https.unwrap(), &ClientOptions::no_sni()).await;
    assert_eq!(missing.serial(), a.serial);
    let named = handshake(gw.https.unwrap(), &ClientOptions::sni("b.test")).await;
    assert_eq!(named.serial(), b.serial);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_and_http1_reach_upstream() {
    let upstream = Upstream::start("app").await;
    let ca = TestCa::new("ALPN Test CA");
    let a = ca.issue(&LeafSpec::names(&["a.test"]));
    let gw = start_https(&upstream, &cert_section("a", ""), |dir| write_pair(dir, "a", &a, &ca)).await;

    /// ALPN protocols offered, the one the gateway must choose, and the HTTP version.
    type Case = (&'static [&'static [u8]], &'static [u8], http::Version);
    let cases: [Case; 2] = [
        (&[b"h2", b"http/1.1"], b"h2", http::Version::HTTP_2),
        (&[b"http/1.1"], b"http/1.1", http::Version::HTTP_11),
    ];
    for (offered, chosen, version) in cases {
        let options = ClientOptions {
            alpn: offered,
            ..ClientOptions::sni("a.test")
        };
        let (stream, presented) = connect(gw.https.unwrap(), &options).await.unwrap();
        assert_eq!(presented.alpn.as_deref(), Some(chosen));

        let mut client = HttpOverTls::start(stream).await;
        let response = client.get("a.test", "/over-tls").await;
        assert_eq!(response.status, 200, "{version:?}");
        assert_eq!(response.body, "app", "{version:?}");

        let seen = upstream.last_request();
        assert_eq!(seen.uri.path(), "/over-tls");
        assert_eq!(
            seen.version,
            http::Version::HTTP_11,
            "upstreams are spoken to in HTTP/1.1"
        );
        assert_eq!(seen.headers["x-forwarded-proto"], "https", "{version:?}");
        assert_eq!(seen.headers["host"], "a.test", "{version:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_off_offers_only_http1() {
    let upstream = Upstream::start("app").await;
    let ca = TestCa::new("HTTP/1 Test CA");
    let a = ca.issue(&LeafSpec::names(&["a.test"]));
    let sections = format!("[sslBase]\nhttp2 = false\n\n{}", cert_section("a", ""));
    let gw = start_https(&upstream, &sections, |dir| write_pair(dir, "a", &a, &ca)).await;

    let options = ClientOptions {
        alpn: &[b"h2", b"http/1.1"],
        ..ClientOptions::sni("a.test")
    };
    let (stream, presented) = connect(gw.https.unwrap(), &options).await.unwrap();
    assert_eq!(presented.alpn.as_deref(), Some(&b"http/1.1"[..]));
    let response = HttpOverTls::start(stream).await.get("a.test", "/").await;
    assert_eq!(response.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls12_and_tls13_follow_min_version() {
    let upstream = Upstream::start("app").await;
    let ca = TestCa::new("Version Test CA");
    let a = ca.issue(&LeafSpec::names(&["a.test"]));
    let tls12_only = ClientOptions {
        versions: &[&rustls::version::TLS12],
        ..ClientOptions::sni("a.test")
    };

    let gw = start_https(&upstream, &cert_section("a", ""), |dir| write_pair(dir, "a", &a, &ca)).await;
    let default = handshake(gw.https.unwrap(), &ClientOptions::sni("a.test")).await;
    assert_eq!(default.version, Some(rustls::ProtocolVersion::TLSv1_3));
    let (stream, old) = connect(gw.https.unwrap(), &tls12_only).await.unwrap();
    assert_eq!(old.version, Some(rustls::ProtocolVersion::TLSv1_2));
    let response = HttpOverTls::start(stream).await.get("a.test", "/").await;
    assert_eq!(response.status, 200);

    let sections = format!("[sslBase]\nminVersion = \"1.3\"\n\n{}", cert_section("a", ""));
    let strict = start_https(&upstream, &sections, |dir| write_pair(dir, "a", &a, &ca)).await;
    let rejected = connect(strict.https.unwrap(), &tls12_only).await;
    assert!(
        rejected.is_err(),
        "a TLS 1.2 client must be rejected when minVersion is 1.3"
    );
    let accepted = handshake(strict.https.unwrap(), &ClientOptions::sni("a.test")).await;
    assert_eq!(accepted.version, Some(rustls::ProtocolVersion::TLSv1_3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirect_https_reaches_tls_listener() {
    let upstream = Upstream::start("app").await;
    let ca = TestCa::new("Redirect Test CA");
    let a = ca.issue(&LeafSpec::names(&["a.test"]));
    let dir = tree();
    write_pair(dir.path(), "a", &a, &ca);
    // The redirect names the HTTPS port, so the listener needs a fixed one.
    let port = crate::support::free_port();
    let text = config(
        &format!("httpsListen = [\"127.0.0.1:{port}\"]"),
        &format!(
            "[proxyInfo.app]\nhost = \"a.test\"\ntarget = [\"{}\"]\nredirectHttps = true\n\n{}",
            upstream.url(),
            cert_section("a", "")
        ),
    );
    let gw = TestGateway::start_in(dir, &text).await;

    let redirect = get(gw.http, "a.test", "/path?q=1").await;
    assert_eq!(redirect.status, 308);
    let location = format!("https://a.test:{port}/path?q=1");
    assert_eq!(redirect.header("location"), Some(location.as_str()));
    assert_eq!(
        upstream.request_count(),
        0,
        "a redirected request must not reach the upstream"
    );

    let options = ClientOptions {
        ca: Some(&ca),
        ..ClientOptions::sni("a.test")
    };
    let (stream, presented) = connect(gw.https.unwrap(), &options).await.unwrap();
    assert_eq!(presented.verified, Some(Ok(())));
    let response = HttpOverTls::start(stream).await.get("a.test", "/path?q=1").await;
    assert_eq!(response.status, 200, "HTTPS requests are not redirected");
    assert_eq!(upstream.last_request().headers["x-forwarded-proto"], "https");
}

/// Converts a PKCS#8 PEM key to the traditional form (PKCS#1 for RSA, SEC1 for EC).
fn traditional_key(pkcs8: &str, scratch: &Path) -> String {
    let input = write(scratch, "pkcs8.pem", pkcs8);
    let output = Command::new("openssl")
        .args(["pkey", "-traditional", "-in"])
        .arg(&input)
        .output()
        .expect("openssl must be installed");
    assert!(output.status.success(), "openssl pkey failed");
    String::from_utf8(output.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pkcs8_pkcs1_and_sec1_keys_load() {
    let upstream = Upstream::start("app").await;
    let ca = TestCa::new("Key Format Test CA");
    let scratch = tempfile::tempdir().unwrap();

    let output = Command::new("openssl")
        .args(["genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"])
        .output()
        .expect("openssl must be installed");
    assert!(output.status.success(), "openssl genpkey failed");
    let rsa_pkcs8 = String::from_utf8(output.stdout).unwrap();
    let rsa = ca.issue_with_key(&LeafSpec::names(&["rsa.test"]), KeyPair::from_pem(&rsa_pkcs8).unwrap());
    let rsa_pkcs1 = traditional_key(&rsa.key_pem, scratch.path());
    assert!(rsa_pkcs1.starts_with("-----BEGIN RSA PRIVATE KEY-----"), "{rsa_pkcs1}");

    let ec = ca.issue(&LeafSpec::names(&["sec1.test"]));
    let ec_sec1 = traditional_key(&ec.key_pem, scratch.path());
    assert!(ec_sec1.starts_with("-----BEGIN EC PRIVATE KEY-----"), "{ec_sec1}");

    let pkcs8 = ca.issue(&LeafSpec::names(&["pkcs8.test"]));
    assert!(pkcs8.key_pem.starts_with("-----BEGIN PRIVATE KEY-----"));

    let sections = cert_section("rsa", "") + &cert_section("sec1", "") + &cert_section("pkcs8", "");
    let gw = start_https(&upstream, &sections, |dir| {
        write_pair(dir, "rsa", &rsa, &ca);
        write(&dir.join("cert"), "rsa.key", &rsa_pkcs1);
        write_pair(dir, "sec1", &ec, &ca);
        write(&dir.join("cert"), "sec1.key", &ec_sec1);
        write_pair(dir, "pkcs8", &pkcs8, &ca);
    })
    .await;

    for (name, leaf) in [("rsa.test", &rsa), ("sec1.test", &ec), ("pkcs8.test", &pkcs8)] {
        let options = ClientOptions {
            ca: Some(&ca),
            ..ClientOptions::sni(name)
        };
        let presented = handshake(gw.https.unwrap(), &options).await;
        assert_eq!(presented.serial(), leaf.serial, "{name}");
        assert_eq!(presented.verified, Some(Ok(())), "{name}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replaced_pair_serves_new_serial() {
    let upstream = Upstream::start("app").await;
    let ca = TestCa::new("Replace Test CA");
    let old = ca.issue(&LeafSpec::names(&["a.test"]));
    let new = ca.issue(&LeafSpec::names(&["a.test"]));
    let gw = start_https(&upstream, &cert_section("a", ""), |dir| write_pair(dir, "a", &old, &ca)).await;

    let (stream, presented) = connect(gw.https.unwrap(), &ClientOptions::sni("a.test")).await.unwrap();
    assert_eq!(presented.serial(), old.serial);
    let mut open = HttpOverTls::start(stream).await;
    assert_eq!(open.get("a.test", "/before").await.status, 200);

    write_pair(gw.dir.path(), "a", &new, &ca);
    let took = serial_within(&gw, "a.test", &new.serial, PICKUP).await;
    eprintln!("new certificate served {took:?} after the write");

    let response = open.get("a.test", "/after").await;
    assert_eq!(
        response.status, 200,
        "a connection opened before the change keeps working"
    );
    assert_eq!(upstream.last_request().uri.path(), "/after");
    assert_eq!(gw.gateway.generation(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_key_keeps_old_certificate() {
    let upstream = Upstream::start("app").await;
    let ca = TestCa::new("Wrong Key Test CA");
    let old = ca.issue(&LeafSpec::names(&["a.test"]));
    let gw = start_https(&upstream, &cert_section("a", ""), |dir| write_pair(dir, "a", &old, &ca)).await;

    let other_key = KeyPair::generate().unwrap().serialize_pem();
    write(&gw.cert_dir(), "a.key", other_key);

    let started = Instant::now();
    while started.elapsed() < Duration::from_millis(1200) {
        let presented = handshake(gw.https.unwrap(), &ClientOptions::sni("a.test")).await;
        assert_eq!(presented.serial(), old.serial, "the old certificate keeps serving");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    assert_eq!(gw.gateway.generation(), 1);
    let status = admin_status(&gw).await;
    let error = status["reload"]["last_error"]["error"].as_str().unwrap_or_default();
    assert!(error.contains("a.key"), "{error}");
    assert!(error.contains("does not match"), "{error}");
    assert!(error.contains("sslCert.a"), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncated_certificate_keeps_old_certificate() {
    let upstream = Upstream::start("app").await;
    let ca = TestCa::new("Truncate Test CA");
    let old = ca.issue(&LeafSpec::names(&["a.test"]));
    let gw = start_https(&upstream, &cert_section("a", ""), |dir| write_pair(dir, "a", &old, &ca)).await;

    std::fs::OpenOptions::new()
        .write(true)
        .open(gw.cert_dir().join("a.pem"))
        .unwrap()
        .set_len(0)
        .unwrap();

    let started = Instant::now();
    while started.elapsed() < Duration::from_millis(1200) {
        let presented = handshake(gw.https.unwrap(), &ClientOptions::sni("a.test")).await;
        assert_eq!(presented.serial(), old.serial, "the old certificate keeps serving");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    assert_eq!(gw.gateway.generation(), 1);
    let status = admin_status(&gw).await;
    let error = status["reload"]["last_error"]["error"].as_str().unwrap_or_default();
    assert!(error.contains("a.pem"), "{error}");
    assert!(error.contains("contains no PEM certificate"), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_before_key_applies_with_key() {
    let upstream = Upstream::start("app").await;
    let ca = TestCa::new("Order Test CA");
    let old = ca.issue(&LeafSpec::names(&["a.test"]));
    let new = ca.issue(&LeafSpec::names(&["a.test"]));
    let gw = start_https(&upstream, &cert_section("a", ""), |dir| write_pair(dir, "a", &old, &ca)).await;

    write(&gw.cert_dir(), "a.pem", new.chain_pem(&ca));
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(1) {
        let presented = handshake(gw.https.unwrap(), &ClientOptions::sni("a.test")).await;
        assert_eq!(
            presented.serial(),
            old.serial,
            "the new certificate must wait for its key"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    write(&gw.cert_dir(), "a.key", &new.key_pem);
    let took = serial_within(&gw, "a.test", &new.serial, PICKUP).await;
    eprintln!("new pair served {took:?} after the key was written");
    let status = admin_status(&gw).await;
    assert!(status["reload"]["last_error"].is_null(), "{}", status["reload"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mismatched_pair_stops_startup() {
    let ca = TestCa::new("Startup Test CA");
    let leaf = ca.issue(&LeafSpec::names(&["a.test"]));
    let dir = tree();
    write_pair(dir.path(), "a", &leaf, &ca);
    write(
        &dir.path().join("cert"),
        "a.key",
        KeyPair::generate().unwrap().serialize_pem(),
    );
    let file = write(
        &dir.path().join("configs"),
        "gateway.toml",
        config(
            "httpsListen = [\"127.0.0.1:0\"]",
            &format!(
                "[proxyInfo.app]\nhost = \"default\"\ntarget = [\"http://127.0.0.1:9\"]\n\n{}",
                cert_section("a", "")
            ),
        ),
    );

    let error = match Gateway::start(&file).await {
        Ok(_) => panic!("a gateway with a mismatched key must not start"),
        Err(error) => error.to_string(),
    };
    assert!(error.contains("a.key"), "{error}");
    assert!(error.contains("does not match"), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_lists_certificates_and_expiry() {
    let upstream = Upstream::start("app").await;
    let ca = TestCa::new("Status Test CA");
    let a = ca.issue(&LeafSpec::names(&["a.test", "*.a.test"]));
    let soon = ca.issue(&LeafSpec::names(&["soon.test"]).valid_for(Duration::from_secs(5 * 24 * 3600)));
    let sections = cert_section("a", "") + &cert_section("soon", "");
    let gw = start_https(&upstream, &sections, |dir| {
        write_pair(dir, "a", &a, &ca);
        write_pair(dir, "soon", &soon, &ca);
    })
    .await;
    // A response proves the server finished its side of the handshake too.
    let (stream, _) = connect(gw.https.unwrap(), &ClientOptions::sni("a.test")).await.unwrap();
    let response = HttpOverTls::start(stream).await.get("a.test", "/").await;
    assert_eq!(response.status, 200);

    let status = admin_status(&gw).await;
    let certificates = status["certificates"].as_array().unwrap();
    assert_eq!(certificates.len(), 2);
    assert_eq!(certificates[0]["label"], "a");
    assert_eq!(certificates[0]["names"], serde_json::json!(["a.test", "*.a.test"]));
    assert_eq!(certificates[0]["serial"], a.serial.as_str());
    assert_eq!(certificates[0]["expiry"], "valid");
    assert_eq!(certificates[0]["staple"]["mode"], "off");
    assert_eq!(certificates[0]["staple"]["stapled"], false);
    assert_eq!(certificates[1]["label"], "soon");
    assert_eq!(certificates[1]["expiry"], "expiring");
    assert!(certificates[1]["not_after"].as_str().is_some_and(|t| t.ends_with('Z')));
    assert!(status["tls"]["handshakes"]["completed"].as_u64().unwrap() >= 1);

    let metrics = get(gw.admin.unwrap(), "127.0.0.1", "/metrics").await.text();
    let expiry = format!(
        "minigateway_certificate_not_after_seconds{{certificate=\"soon\"}} {}",
        certificates[1]["not_after_unix"]
    );
    assert!(metrics.contains(&expiry), "missing `{expiry}` in:\n{metrics}");
    let completed = metrics
        .lines()
        .find(|line| line.starts_with("minigateway_tls_handshakes_total{result=\"completed\"}"))
        .and_then(|line| line.rsplit(' ').next()?.parse::<u64>().ok());
    assert!(completed.is_some_and(|n| n >= 1), "{metrics}");
    assert!(
        !metrics.contains("minigateway_ocsp_staple_age_seconds{"),
        "no staple is sent, so no age"
    );
}

fn check(file: &Path) -> (bool, String) {
    let output = Command::new(BINARY).arg("-t").arg("-c").arg(file).output().unwrap();
    let text = String::from_utf8_lossy(&output.stdout).into_owned() + &String::from_utf8_lossy(&output.stderr);
    (output.status.success(), text)
}

#[test]
fn check_loads_certificates() {
    let ca = TestCa::new("Check Test CA");
    let good = ca.issue(&LeafSpec::names(&["a.test"]));
    let soon = ca.issue(&LeafSpec::names(&["soon.test"]).valid_for(Duration::from_secs(3 * 24 * 3600)));
    let dir = tree();
    write_pair(dir.path(), "a", &good, &ca);
    write_pair(dir.path(), "soon", &soon, &ca);
    let text = format!(
        "[core]\nhttpListen = [\"127.0.0.1:8080\"]\nhttpsListen = [\"127.0.0.1:8443\"]\n\n[proxyInfo.app]\nhost = \"default\"\ntarget = [\"http://127.0.0.1:9000\"]\n\n{}{}",
        cert_section("a", ""),
        cert_section("soon", "")
    );
    let file = write(&dir.path().join("configs"), "gateway.toml", &text);

    let (ok, output) = check(&file);
    assert!(ok, "{output}");
    assert!(output.contains("test is successful"), "{output}");
    assert!(output.contains("warning"), "{output}");
    assert!(output.contains("soon.pem"), "{output}");
    assert!(output.contains("expires"), "{output}");

    write(
        &dir.path().join("cert"),
        "a.key",
        KeyPair::generate().unwrap().serialize_pem(),
    );
    let (ok, output) = check(&file);
    assert!(!ok, "{output}");
    assert!(output.contains("a.key"), "{output}");
    assert!(output.contains("does not match"), "{output}");
    assert!(output.contains("test failed"), "{output}");

    std::fs::remove_file(dir.path().join("cert").join("a.key")).unwrap();
    let (ok, output) = check(&file);
    assert!(!ok, "{output}");
    assert!(output.contains("failed to read key file"), "{output}");
}

/// Connects with `config`, sends one request so TLS 1.3 tickets are read, and returns
/// how the handshake went.
async fn resume_kind(
    addr: std::net::SocketAddr,
    config: &std::sync::Arc<rustls::ClientConfig>,
) -> rustls::HandshakeKind {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("a.test").unwrap();
    let stream = tokio_rustls::TlsConnector::from(config.clone())
        .connect(name, tcp)
        .await
        .unwrap();
    let kind = stream.get_ref().1.handshake_kind().unwrap();
    let response = HttpOverTls::start(stream).await.get("a.test", "/").await;
    assert_eq!(response.status, 200);
    kind
}

/// Returns a client that trusts `ca` and keeps its sessions for resumption.
fn resuming_client(ca: &TestCa) -> std::sync::Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.cert_der.clone()).unwrap();
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    std::sync::Arc::new(config)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_resume_across_reload() {
    let upstream = Upstream::start("app").await;
    let ca = TestCa::new("Resumption Test CA");
    let a = ca.issue(&LeafSpec::names(&["a.test"]));
    let gw = start_https(&upstream, &cert_section("a", ""), |dir| write_pair(dir, "a", &a, &ca)).await;
    let client = resuming_client(&ca);
    let https = gw.https.unwrap();

    assert_eq!(resume_kind(https, &client).await, rustls::HandshakeKind::Full);
    assert_eq!(resume_kind(https, &client).await, rustls::HandshakeKind::Resumed);

    let text = std::fs::read_to_string(gw.config_path()).unwrap();
    std::fs::write(gw.config_path(), text.replace("[core]\n", "[core]\nreadTimeout = 30\n")).unwrap();
    let outcome = gw.gateway.reload().await;
    // The watcher may apply the write first; then this reload finds nothing new.
    assert!(
        !matches!(outcome, minigateway::reload::ReloadOutcome::Failed { .. }),
        "{outcome:?}"
    );
    assert_eq!(gw.gateway.generation(), 2);
    assert_eq!(
        resume_kind(https, &client).await,
        rustls::HandshakeKind::Resumed,
        "tickets issued before a reload resume after it"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_tickets_off_sends_no_tls13_tickets() {
    let upstream = Upstream::start("app").await;
    let ca = TestCa::new("No Ticket Test CA");
    let a = ca.issue(&LeafSpec::names(&["a.test"]));
    let sections = format!("[sslBase]\nsessionTicket = false\n\n{}", cert_section("a", ""));
    let gw = start_https(&upstream, &sections, |dir| write_pair(dir, "a", &a, &ca)).await;
    let client = resuming_client(&ca);
    let https = gw.https.unwrap();

    assert_eq!(resume_kind(https, &client).await, rustls::HandshakeKind::Full);
    assert_eq!(
        resume_kind(https, &client).await,
        rustls::HandshakeKind::Full,
        "without tickets a TLS 1.3 session does not resume"
    );
}
