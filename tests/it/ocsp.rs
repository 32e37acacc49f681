//! OCSP stapling against a real `openssl ocsp` responder on loopback, the local-file
//! mode, and the checks a response must pass before it is stapled.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime};

use minigateway::tls::certs::ParsedCert;
use minigateway::tls::ocsp::{self, OcspError};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use x509_cert::der::Decode;
use x509_ocsp::{BasicOcspResponse, OcspResponse};

use crate::support::pki::{Leaf, LeafSpec, OcspResponder, Signer, TestCa, offline_response, url_for, write};
use crate::support::tls_client::{ClientOptions, Presented, handshake};
use crate::support::{SilentUpstream, TestGateway, Upstream, config, free_port, get, tree};

/// Time allowed for the first fetch of a staple after start-up.
const FIRST_STAPLE: Duration = Duration::from_secs(10);

fn write_pair(dir: &Path, name: &str, leaf: &Leaf, ca: &TestCa) {
    write(&dir.join("cert"), &format!("{name}.pem"), leaf.chain_pem(ca));
    write(&dir.join("cert"), &format!("{name}.key"), &leaf.key_pem);
}

/// Returns an `[sslCert.<name>]` section that fetches its staple.
fn stapled_section(name: &str) -> String {
    format!(
        "[sslCert.{name}]\nssl_certificate = \"{name}.pem\"\nssl_certificate_key = \"{name}.key\"\nocsp_stapling = true\n\n"
    )
}

fn https_config(upstream: &Upstream, sections: &str) -> String {
    config(
        "httpsListen = [\"127.0.0.1:0\"]",
        &format!(
            "[proxyInfo.app]\nhost = \"default\"\ntarget = [\"{}\"]\n\n{sections}",
            upstream.url()
        ),
    )
}

async fn presented(gw: &TestGateway, sni: &str) -> Presented {
    handshake(gw.https.unwrap(), &ClientOptions::sni(sni)).await
}

/// Polls handshakes with `sni` until `done` holds for what was presented.
async fn poll(
    gw: &TestGateway,
    sni: &str,
    limit: Duration,
    what: &str,
    done: impl Fn(&Presented) -> bool,
) -> Presented {
    let started = Instant::now();
    loop {
        let presented = presented(gw, sni).await;
        if done(&presented) {
            return presented;
        }
        assert!(
            started.elapsed() < limit,
            "{sni}: {what} did not happen within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn certificate_status(gw: &TestGateway, label: &str) -> serde_json::Value {
    let response = get(gw.admin.unwrap(), "127.0.0.1", "/status").await;
    let status: serde_json::Value = serde_json::from_slice(&response.body).unwrap();
    status["certificates"]
        .as_array()
        .unwrap()
        .iter()
        .find(|cert| cert["label"] == label)
        .cloned()
        .unwrap_or_else(|| panic!("no certificate {label} in the status"))
}

/// Returns the thisUpdate time of the single response in a stapled OCSP response.
fn this_update(staple: &[u8]) -> SystemTime {
    let response = OcspResponse::from_der(staple).unwrap();
    let bytes = response.response_bytes.unwrap();
    let basic = BasicOcspResponse::from_der(bytes.response.as_bytes()).unwrap();
    basic.tbs_response_data.responses[0].this_update.0.to_system_time()
}

/// Runs `openssl s_client -status` against the gateway and returns its output.
async fn s_client_status(addr: SocketAddr, sni: &str, ca_file: &Path) -> String {
    let (sni, ca_file) = (sni.to_owned(), ca_file.to_owned());
    tokio::task::spawn_blocking(move || {
        let output = Command::new("openssl")
            .args(["s_client", "-status", "-connect"])
            .arg(addr.to_string())
            .arg("-servername")
            .arg(&sni)
            .arg("-CAfile")
            .arg(&ca_file)
            .stdin(Stdio::null())
            .output()
            .expect("openssl must be installed");
        String::from_utf8_lossy(&output.stdout).into_owned()
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fetched_staple_reaches_clients() {
    let upstream = Upstream::start("app").await;
    let scratch = tempfile::tempdir().unwrap();
    let port = free_port();
    let ca = TestCa::new("Staple Test CA");
    let signer = ca.responder();
    let leaf = ca.issue(&LeafSpec::names(&["a.test"]).ocsp(&url_for(port)));
    let _responder = OcspResponder::start(scratch.path(), &ca, Signer::Delegated(&signer), port, &[(&leaf, false)]);

    let dir = tree();
    write_pair(dir.path(), "a", &leaf, &ca);
    let gw = TestGateway::start_in(dir, &https_config(&upstream, &stapled_section("a"))).await;

    let stapled = poll(&gw, "a.test", FIRST_STAPLE, "stapling", Presented::has_staple).await;
    let response = OcspResponse::from_der(&stapled.staple).unwrap();
    assert_eq!(response.response_status, x509_ocsp::OcspResponseStatus::Successful);

    let ca_file = write(scratch.path(), "ca.pem", &ca.cert_pem);
    let output = s_client_status(gw.https.unwrap(), "a.test", &ca_file).await;
    assert!(output.contains("OCSP Response Status: successful"), "{output}");
    assert!(output.contains("Cert Status: good"), "{output}");
    assert!(output.contains(&format!("Serial Number: {}", leaf.serial)), "{output}");
    assert!(output.contains("Verify return code: 0 (ok)"), "{output}");

    let status = certificate_status(&gw, "a").await;
    assert_eq!(status["staple"]["mode"], "fetch");
    assert_eq!(status["staple"]["stapled"], true);
    assert!(status["staple"]["error"].is_null(), "{status}");
    assert!(status["staple"]["age_seconds"].as_u64().is_some(), "{status}");

    // A reload keeps the staple of an unchanged certificate without fetching again.
    let text = std::fs::read_to_string(gw.config_path()).unwrap();
    std::fs::write(gw.config_path(), text.replace("[core]\n", "[core]\nreadTimeout = 30\n")).unwrap();
    let outcome = gw.gateway.reload().await;
    // The watcher may apply the write first; then this reload finds nothing new.
    assert!(
        !matches!(outcome, minigateway::reload::ReloadOutcome::Failed { .. }),
        "{outcome:?}"
    );
    assert_eq!(gw.gateway.generation(), 2);
    let after_reload = presented(&gw, "a.test").await;
    assert_eq!(after_reload.staple, stapled.staple);
    let reloaded = certificate_status(&gw, "a").await;
    assert_eq!(reloaded["staple"]["last_success"], status["staple"]["last_success"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_certificate_gets_no_staple() {
    let upstream = Upstream::start("app").await;
    let scratch = tempfile::tempdir().unwrap();
    let port = free_port();
    let ca = TestCa::new("Revocation Test CA");
    let good = ca.issue(&LeafSpec::names(&["good.test"]).ocsp(&url_for(port)));
    let revoked = ca.issue(&LeafSpec::names(&["revoked.test"]).ocsp(&url_for(port)));
    let _responder = OcspResponder::start(
        scratch.path(),
        &ca,
        Signer::Issuer,
        port,
        &[(&good, false), (&revoked, true)],
    );

    let dir = tree();
    write_pair(dir.path(), "good", &good, &ca);
    write_pair(dir.path(), "revoked", &revoked, &ca);
    let sections = stapled_section("good") + &stapled_section("revoked");
    let gw = TestGateway::start_in(dir, &https_config(&upstream, &sections)).await;

    poll(&gw, "good.test", FIRST_STAPLE, "stapling", Presented::has_staple).await;

    let started = Instant::now();
    let status = loop {
        let status = certificate_status(&gw, "revoked").await;
        if status["staple"]["failures"].as_u64().unwrap_or(0) >= 1 {
            break status;
        }
        assert!(
            started.elapsed() < FIRST_STAPLE,
            "no fetch attempt for the revoked certificate: {status}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let error = status["staple"]["error"].as_str().unwrap_or_default();
    assert!(error.contains("revoked"), "{error}");

    let revoked_handshake = presented(&gw, "revoked.test").await;
    assert_eq!(revoked_handshake.serial(), revoked.serial);
    assert!(
        !revoked_handshake.has_staple(),
        "a revoked certificate must get no staple"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn staples_refresh_and_expire_with_responder() {
    let upstream = Upstream::start("app").await;
    let scratch = tempfile::tempdir().unwrap();
    let ca = TestCa::new("Refresh Test CA");
    let signer = ca.responder();
    let (kept_port, stopped_port) = (free_port(), free_port());
    let kept = ca.issue(&LeafSpec::names(&["kept.test"]).ocsp(&url_for(kept_port)));
    let stopped = ca.issue(&LeafSpec::names(&["stopped.test"]).ocsp(&url_for(stopped_port)));
    let _kept_responder = OcspResponder::start(
        scratch.path(),
        &ca,
        Signer::Delegated(&signer),
        kept_port,
        &[(&kept, false)],
    );
    let mut stopped_responder = OcspResponder::start(
        scratch.path(),
        &ca,
        Signer::Delegated(&signer),
        stopped_port,
        &[(&stopped, false)],
    );

    let dir = tree();
    write_pair(dir.path(), "kept", &kept, &ca);
    write_pair(dir.path(), "stopped", &stopped, &ca);
    let sections = stapled_section("kept") + &stapled_section("stopped");
    let gw = TestGateway::start_in(dir, &https_config(&upstream, &sections)).await;

    let first_kept = poll(&gw, "kept.test", FIRST_STAPLE, "stapling", Presented::has_staple).await;
    let first_stopped = poll(&gw, "stopped.test", FIRST_STAPLE, "stapling", Presented::has_staple).await;
    stopped_responder.stop();
    let first_this_update = this_update(&first_kept.staple);
    let stopped_next_update = this_update(&first_stopped.staple) + Duration::from_secs(60);

    // openssl's `-nmin 1` responses are valid for 60 s, so a refresh is due after 30 s.
    let refreshed = poll(&gw, "kept.test", Duration::from_secs(45), "a refresh", |presented| {
        presented.has_staple() && this_update(&presented.staple) > first_this_update
    })
    .await;
    eprintln!(
        "staple refreshed {:?} after the first thisUpdate",
        this_update(&refreshed.staple)
            .duration_since(first_this_update)
            .unwrap()
    );
    assert!(
        SystemTime::now() < stopped_next_update,
        "the refresh came too late to check the stopped responder's staple before expiry"
    );
    let before_expiry = presented(&gw, "stopped.test").await;
    assert!(
        before_expiry.has_staple(),
        "a staple stays until its nextUpdate when the responder is down"
    );

    let expired = poll(
        &gw,
        "stopped.test",
        Duration::from_secs(45),
        "staple expiry",
        |presented| !presented.has_staple(),
    )
    .await;
    assert_eq!(expired.serial(), stopped.serial);
    let dropped_at = SystemTime::now();
    assert!(
        dropped_at + Duration::from_secs(1) >= stopped_next_update,
        "the staple was dropped before its nextUpdate"
    );

    let status = certificate_status(&gw, "stopped").await;
    assert!(status["staple"]["failures"].as_u64().unwrap_or(0) >= 1, "{status}");
    assert_eq!(status["staple"]["stapled"], false);
    let still_kept = presented(&gw, "kept.test").await;
    assert!(
        still_kept.has_staple(),
        "the running responder's certificate keeps its staple"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_responder_port_does_not_delay_startup() {
    let upstream = Upstream::start("app").await;
    let ca = TestCa::new("Closed Port Test CA");
    let leaf = ca.issue(&LeafSpec::names(&["a.test"]).ocsp(&url_for(free_port())));
    let dir = tree();
    write_pair(dir.path(), "a", &leaf, &ca);

    let started = Instant::now();
    let gw = TestGateway::start_in(dir, &https_config(&upstream, &stapled_section("a"))).await;
    let first = presented(&gw, "a.test").await;
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(2),
        "start-up and first handshake took {took:?}"
    );
    assert_eq!(first.serial(), leaf.serial);
    assert!(!first.has_staple());

    let started = Instant::now();
    let status = loop {
        let status = certificate_status(&gw, "a").await;
        if status["staple"]["failures"].as_u64().unwrap_or(0) >= 1 {
            break status;
        }
        assert!(started.elapsed() < FIRST_STAPLE, "no failed fetch recorded: {status}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let error = status["staple"]["error"].as_str().unwrap_or_default();
    assert!(error.contains("failed to connect"), "{error}");
    assert!(status["staple"]["next_fetch"].is_string(), "{status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_responder_does_not_delay_handshakes_or_reloads() {
    let upstream = Upstream::start("app").await;
    let silent = SilentUpstream::start().await;
    let ca = TestCa::new("Silent Responder Test CA");
    let leaf = ca.issue(&LeafSpec::names(&["a.test"]).ocsp(&format!("{}/", silent.url())));
    let dir = tree();
    write_pair(dir.path(), "a", &leaf, &ca);
    let gw = TestGateway::start_in(dir, &https_config(&upstream, &stapled_section("a"))).await;

    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = Instant::now();
    let first = presented(&gw, "a.test").await;
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "handshake took {:?}",
        started.elapsed()
    );
    assert!(!first.has_staple());

    let text = std::fs::read_to_string(gw.config_path()).unwrap();
    std::fs::write(gw.config_path(), text.replace("[core]\n", "[core]\nreadTimeout = 30\n")).unwrap();
    let started = Instant::now();
    let outcome = gw.gateway.reload().await;
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "reload took {:?}",
        started.elapsed()
    );
    // The watcher may apply the write first; then this reload finds nothing new.
    assert!(
        !matches!(outcome, minigateway::reload::ReloadOutcome::Failed { .. }),
        "{outcome:?}"
    );
    assert_eq!(gw.gateway.generation(), 2);
    let after = presented(&gw, "a.test").await;
    assert_eq!(after.serial(), leaf.serial);
}

/// Serves `body` to every GET on a loopback port, like a CA Issuers URL; counts requests.
async fn serve_issuer(body: Vec<u8>) -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let requests = Arc::new(AtomicUsize::new(0));
    let counter = requests.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
            let body = body.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut chunk = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&chunk[..n]),
                    }
                }
                let header = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/pkix-cert\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                    body.len()
                );
                let _ = stream.write_all(header.as_bytes()).await;
                let _ = stream.write_all(&body).await;
            });
        }
    });
    (addr, requests)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issuer_is_fetched_through_aia() {
    let upstream = Upstream::start("app").await;
    let scratch = tempfile::tempdir().unwrap();
    let port = free_port();
    let ca = TestCa::new("AIA Test CA");
    let signer = ca.responder();
    let (issuer_addr, issuer_requests) = serve_issuer(ca.cert_der.to_vec()).await;
    let leaf = ca.issue(
        &LeafSpec::names(&["a.test"])
            .ocsp(&url_for(port))
            .ca_issuers(&format!("http://{issuer_addr}/ca.der")),
    );
    let _responder = OcspResponder::start(scratch.path(), &ca, Signer::Delegated(&signer), port, &[(&leaf, false)]);

    let dir = tree();
    // The chain file contains the leaf only.
    write(&dir.path().join("cert"), "a.pem", &leaf.cert_pem);
    write(&dir.path().join("cert"), "a.key", &leaf.key_pem);
    let gw = TestGateway::start_in(dir, &https_config(&upstream, &stapled_section("a"))).await;

    let stapled = poll(&gw, "a.test", FIRST_STAPLE, "stapling", Presented::has_staple).await;
    assert_eq!(stapled.chain_len, 1);
    assert!(issuer_requests.load(Ordering::SeqCst) >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_file_staple_is_sent_and_replaced() {
    let upstream = Upstream::start("app").await;
    let scratch = tempfile::tempdir().unwrap();
    let ca = TestCa::new("File Staple Test CA");
    let signer = ca.responder();
    let leaf = ca.issue(&LeafSpec::names(&["a.test"]));
    let first = offline_response(scratch.path(), &ca, Signer::Delegated(&signer), &leaf, false, 1);

    let dir = tree();
    write_pair(dir.path(), "a", &leaf, &ca);
    write(&dir.path().join("cert"), "a.ocsp", &first);
    let section = "[sslCert.a]\nssl_certificate = \"a.pem\"\nssl_certificate_key = \"a.key\"\nocsp_stapling = true\nocsp_stapling_local = true\nocsp_stapling_file = \"a.ocsp\"\n";
    let gw = TestGateway::start_in(dir, &https_config(&upstream, section)).await;

    let stapled = presented(&gw, "a.test").await;
    assert_eq!(stapled.staple, first, "the file's response is stapled as it is");
    let status = certificate_status(&gw, "a").await;
    assert_eq!(status["staple"]["mode"], "file");

    let second = offline_response(scratch.path(), &ca, Signer::Issuer, &leaf, false, 2);
    assert_ne!(second, first);
    write(&gw.cert_dir(), "a.ocsp", &second);
    poll(
        &gw,
        "a.test",
        Duration::from_secs(1),
        "the replaced file",
        |presented| presented.staple == second,
    )
    .await;

    let revoked = offline_response(&scratch.path().join("revoked"), &ca, Signer::Issuer, &leaf, true, 1);
    write(&gw.cert_dir(), "a.ocsp", &revoked);
    poll(
        &gw,
        "a.test",
        Duration::from_secs(1),
        "dropping a revoked response",
        |presented| !presented.has_staple(),
    )
    .await;
    let status = certificate_status(&gw, "a").await;
    let error = status["staple"]["error"].as_str().unwrap_or_default();
    assert!(error.contains("revoked"), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_file_for_other_certificate_is_not_stapled() {
    let upstream = Upstream::start("app").await;
    let scratch = tempfile::tempdir().unwrap();
    let ca = TestCa::new("Wrong File Test CA");
    let leaf = ca.issue(&LeafSpec::names(&["a.test"]));
    let other = ca.issue(&LeafSpec::names(&["b.test"]));
    let response = offline_response(scratch.path(), &ca, Signer::Issuer, &other, false, 1);

    let dir = tree();
    write_pair(dir.path(), "a", &leaf, &ca);
    write(&dir.path().join("cert"), "a.ocsp", &response);
    let section = "[sslCert.a]\nssl_certificate = \"a.pem\"\nssl_certificate_key = \"a.key\"\nocsp_stapling = true\nocsp_stapling_local = true\nocsp_stapling_file = \"a.ocsp\"\n";
    let gw = TestGateway::start_in(dir, &https_config(&upstream, section)).await;

    assert!(!presented(&gw, "a.test").await.has_staple());
    let status = certificate_status(&gw, "a").await;
    let error = status["staple"]["error"].as_str().unwrap_or_default();
    assert!(error.contains("no status for this certificate"), "{error}");
}

/// A CA, a certificate it issued, and the parsed forms `ocsp::verify` takes.
struct VerifyCase {
    scratch: tempfile::TempDir,
    ca: TestCa,
    leaf: Leaf,
    parsed_leaf: ParsedCert,
    parsed_ca: ParsedCert,
}

fn verify_case() -> VerifyCase {
    let ca = TestCa::new("Verify Test CA");
    let leaf = ca.issue(&LeafSpec::names(&["a.test"]));
    VerifyCase {
        scratch: tempfile::tempdir().unwrap(),
        parsed_leaf: ParsedCert::from_der(leaf.der.clone()).unwrap(),
        parsed_ca: ParsedCert::from_der(ca.cert_der.clone()).unwrap(),
        ca,
        leaf,
    }
}

fn verify(case: &VerifyCase, response: &[u8], now: SystemTime) -> Result<ocsp::Staple, OcspError> {
    let provider = rustls::crypto::ring::default_provider();
    ocsp::verify(&provider, response, &case.parsed_leaf, &case.parsed_ca, now)
}

#[test]
fn verify_accepts_issuer_and_delegated_signers() {
    let case = verify_case();
    let signer = case.ca.responder();
    let by_issuer = offline_response(case.scratch.path(), &case.ca, Signer::Issuer, &case.leaf, false, 1);
    let by_delegate = offline_response(
        &case.scratch.path().join("delegated"),
        &case.ca,
        Signer::Delegated(&signer),
        &case.leaf,
        false,
        1,
    );

    let staple = verify(&case, &by_issuer, SystemTime::now()).unwrap();
    assert_eq!(staple.response, by_issuer);
    assert!(staple.next_update > SystemTime::now() + Duration::from_secs(23 * 3600));
    assert!(verify(&case, &by_delegate, SystemTime::now()).is_ok());
}

#[test]
fn verify_rejects_tampered_signature() {
    let case = verify_case();
    let mut response = offline_response(case.scratch.path(), &case.ca, Signer::Issuer, &case.leaf, false, 1);
    let signature = {
        let outer = OcspResponse::from_der(&response).unwrap();
        let basic = BasicOcspResponse::from_der(outer.response_bytes.unwrap().response.as_bytes()).unwrap();
        basic.signature.raw_bytes().to_vec()
    };
    let start = response
        .windows(signature.len())
        .position(|window| window == signature)
        .unwrap();
    response[start + signature.len() - 1] ^= 0x01;
    assert_eq!(
        verify(&case, &response, SystemTime::now()),
        Err(OcspError::BadSignature)
    );
}

#[test]
fn verify_rejects_response_outside_validity() {
    let case = verify_case();
    let response = offline_response(case.scratch.path(), &case.ca, Signer::Issuer, &case.leaf, false, 1);
    let staple = verify(&case, &response, SystemTime::now()).unwrap();

    let after = verify(&case, &response, staple.next_update);
    assert!(matches!(after, Err(OcspError::Expired(_))), "{after:?}");
    let before = verify(
        &case,
        &response,
        staple.this_update - ocsp::CLOCK_SKEW - Duration::from_secs(1),
    );
    assert!(matches!(before, Err(OcspError::NotYetValid(_))), "{before:?}");
}

#[test]
fn verify_rejects_signer_without_ocsp_signing() {
    let case = verify_case();
    let plain = case.ca.issue(&LeafSpec::names(&["not-a-responder.test"]));
    let response = offline_response(
        case.scratch.path(),
        &case.ca,
        Signer::Delegated(&plain),
        &case.leaf,
        false,
        1,
    );
    assert_eq!(
        verify(&case, &response, SystemTime::now()),
        Err(OcspError::UnauthorizedSigner)
    );
}

#[test]
fn verify_rejects_responder_of_other_ca() {
    let case = verify_case();
    let other_ca = TestCa::new("Other Test CA");
    let foreign_signer = other_ca.responder();
    let response = offline_response(
        case.scratch.path(),
        &case.ca,
        Signer::Delegated(&foreign_signer),
        &case.leaf,
        false,
        1,
    );
    assert_eq!(
        verify(&case, &response, SystemTime::now()),
        Err(OcspError::UnauthorizedSigner)
    );
}

#[test]
fn verify_rejects_response_for_other_issuer() {
    let case = verify_case();
    let response = offline_response(case.scratch.path(), &case.ca, Signer::Issuer, &case.leaf, false, 1);
    let other_ca = TestCa::new("Other Issuer Test CA");
    let provider = rustls::crypto::ring::default_provider();
    let parsed_other = ParsedCert::from_der(other_ca.cert_der.clone()).unwrap();
    let result = ocsp::verify(
        &provider,
        &response,
        &case.parsed_leaf,
        &parsed_other,
        SystemTime::now(),
    );
    assert_eq!(result, Err(OcspError::NoMatchingResponse));
}
