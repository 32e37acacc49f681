//! Test certificate authorities, certificates, and a real `openssl ocsp` responder on
//! a loopback port.
//!
//! Certificates carry Authority Information Access URLs on 127.0.0.1 only.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, CustomExtension, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SerialNumber,
};
use rustls::pki_types::CertificateDer;
use time::OffsetDateTime;
use x509_cert::der::Encode;
use x509_cert::der::asn1::Ia5String;
use x509_cert::der::oid::db::rfc5280::{ID_AD_CA_ISSUERS, ID_AD_OCSP};
use x509_cert::ext::pkix::AccessDescription;
use x509_cert::ext::pkix::AuthorityInfoAccessSyntax;
use x509_cert::ext::pkix::name::GeneralName;

/// The OID of the Authority Information Access extension, as rcgen takes it.
const AIA_OID: &[u64] = &[1, 3, 6, 1, 5, 5, 7, 1, 1];

/// A certificate authority made for one test.
pub struct TestCa {
    params: CertificateParams,
    key: KeyPair,
    pub cert_pem: String,
    pub cert_der: CertificateDer<'static>,
}

/// A certificate issued by a [`TestCa`], with its key.
pub struct Leaf {
    pub cert_pem: String,
    pub key_pem: String,
    pub der: CertificateDer<'static>,
    /// Upper-case hexadecimal, as the gateway's status and `openssl x509 -serial` show it.
    pub serial: String,
    pub common_name: String,
    pub not_after: OffsetDateTime,
}

/// What to put into a certificate.
pub struct LeafSpec {
    pub names: Vec<String>,
    pub ocsp_url: Option<String>,
    pub ca_issuers_url: Option<String>,
    pub valid_for: Duration,
    pub ocsp_signing: bool,
}

impl LeafSpec {
    pub fn names(names: &[&str]) -> LeafSpec {
        LeafSpec {
            names: names.iter().map(|name| name.to_string()).collect(),
            ocsp_url: None,
            ca_issuers_url: None,
            valid_for: Duration::from_secs(90 * 24 * 3600),
            ocsp_signing: false,
        }
    }

    pub fn ocsp(mut self, url: &str) -> LeafSpec {
        self.ocsp_url = Some(url.to_owned());
        self
    }

    pub fn ca_issuers(mut self, url: &str) -> LeafSpec {
        self.ca_issuers_url = Some(url.to_owned());
        self
    }

    pub fn valid_for(mut self, duration: Duration) -> LeafSpec {
        self.valid_for = duration;
        self
    }
}

/// Returns a random serial number of 8 bytes whose hexadecimal form has no leading
/// zero, as openssl's index lists it.
fn random_serial() -> Vec<u8> {
    let mut bytes: Vec<u8> = (0..8).map(|_| fastrand::u8(..)).collect();
    bytes[0] = fastrand::u8(0x10..0x7f);
    bytes
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02X}")).collect()
}

fn aia_extension(spec: &LeafSpec) -> Option<CustomExtension> {
    let mut descriptions = Vec::new();
    for (method, url) in [(ID_AD_OCSP, &spec.ocsp_url), (ID_AD_CA_ISSUERS, &spec.ca_issuers_url)] {
        if let Some(url) = url {
            descriptions.push(AccessDescription {
                access_method: method,
                access_location: GeneralName::UniformResourceIdentifier(Ia5String::new(url).unwrap()),
            });
        }
    }
    if descriptions.is_empty() {
        return None;
    }
    let der = AuthorityInfoAccessSyntax(descriptions).to_der().unwrap();
    Some(CustomExtension::from_oid_content(AIA_OID, der))
}

impl TestCa {
    pub fn new(name: &str) -> TestCa {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.serial_number = Some(SerialNumber::from_slice(&random_serial()));
        let now = OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::hours(1);
        params.not_after = now + time::Duration::days(365);
        let cert = params.self_signed(&key).unwrap();
        TestCa {
            cert_pem: cert.pem(),
            cert_der: cert.der().clone(),
            params,
            key,
        }
    }

    pub fn key_pem(&self) -> String {
        self.key.serialize_pem()
    }

    /// Issues a certificate for `spec` with a new P-256 key.
    pub fn issue(&self, spec: &LeafSpec) -> Leaf {
        self.issue_with_key(spec, KeyPair::generate().unwrap())
    }

    /// Issues a certificate for `spec` with the given key.
    pub fn issue_with_key(&self, spec: &LeafSpec, key: KeyPair) -> Leaf {
        let mut params = CertificateParams::new(spec.names.clone()).unwrap();
        let common_name = spec.names.first().cloned().unwrap_or_else(|| "responder".into());
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, common_name.as_str());
        let serial = random_serial();
        params.serial_number = Some(SerialNumber::from_slice(&serial));
        let now = OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::hours(1);
        params.not_after = now + time::Duration::try_from(spec.valid_for).unwrap();
        params.use_authority_key_identifier_extension = true;
        if spec.ocsp_signing {
            params.extended_key_usages = vec![ExtendedKeyUsagePurpose::OcspSigning];
            params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        } else {
            params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        }
        params.custom_extensions.extend(aia_extension(spec));

        let issuer = Issuer::from_params(&self.params, &self.key);
        let cert = params.signed_by(&key, &issuer).unwrap();
        Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            der: cert.der().clone(),
            serial: hex(&serial),
            common_name,
            not_after: params.not_after,
        }
    }

    /// Issues a delegated OCSP responder certificate (extended key usage OCSPSigning).
    pub fn responder(&self) -> Leaf {
        let mut spec = LeafSpec::names(&[]);
        spec.ocsp_signing = true;
        self.issue(&spec)
    }
}

impl Leaf {
    /// Returns the certificate followed by its issuer, as a chain file contains them.
    pub fn chain_pem(&self, ca: &TestCa) -> String {
        format!("{}{}", self.cert_pem, ca.cert_pem)
    }

    /// Returns the line `openssl ocsp -index` reads for this certificate.
    fn index_line(&self, revoked: bool) -> String {
        let expiry = index_time(self.not_after);
        let subject = format!("/CN={}", self.common_name);
        if revoked {
            let revoked_at = index_time(OffsetDateTime::now_utc() - time::Duration::hours(1));
            format!("R\t{expiry}\t{revoked_at}\t{}\tunknown\t{subject}\n", self.serial)
        } else {
            format!("V\t{expiry}\t\t{}\tunknown\t{subject}\n", self.serial)
        }
    }
}

/// Formats a time as the index of `openssl ca` and `openssl ocsp` does: `YYMMDDHHMMSSZ`.
fn index_time(time: OffsetDateTime) -> String {
    format!(
        "{:02}{:02}{:02}{:02}{:02}{:02}Z",
        time.year() % 100,
        u8::from(time.month()),
        time.day(),
        time.hour(),
        time.minute(),
        time.second()
    )
}

/// Writes `text` to `dir/name` and returns the path.
pub fn write(dir: &Path, name: &str, text: impl AsRef<[u8]>) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

/// An OCSP responder for one CA on 127.0.0.1, with 1-minute response validity.
///
/// A loopback HTTP listener takes each POSTed request and responds to it with
/// `openssl ocsp` in responder mode (`-index ... -reqin ... -respout ...`), because
/// `openssl ocsp -port` cannot be bound to the loopback address.
pub struct OcspResponder {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// Who signs the responses.
pub enum Signer<'a> {
    Issuer,
    Delegated(&'a Leaf),
}

/// The index, CA and signer files `openssl ocsp` reads to build responses.
struct ResponderFiles {
    dir: PathBuf,
    index: PathBuf,
    ca: PathBuf,
    signer_cert: PathBuf,
    signer_key: PathBuf,
}

impl ResponderFiles {
    /// Runs `openssl ocsp` on one DER request; returns the DER response.
    fn respond(&self, request: &[u8], number: usize) -> Option<Vec<u8>> {
        let request_file = self.dir.join(format!("request-{number}.der"));
        let response_file = self.dir.join(format!("response-{number}.der"));
        std::fs::write(&request_file, request).ok()?;
        let status = Command::new("openssl")
            .arg("ocsp")
            .arg("-index")
            .arg(&self.index)
            .arg("-rsigner")
            .arg(&self.signer_cert)
            .arg("-rkey")
            .arg(&self.signer_key)
            .arg("-CA")
            .arg(&self.ca)
            .arg("-nmin")
            .arg("1")
            .arg("-reqin")
            .arg(&request_file)
            .arg("-respout")
            .arg(&response_file)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("openssl must be installed to run the OCSP tests");
        status.success().then(|| std::fs::read(&response_file).ok()).flatten()
    }
}

/// Reads one HTTP request with a Content-Length body and responds to it.
fn serve_one(mut stream: std::net::TcpStream, files: &ResponderFiles, number: usize) {
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let mut received = Vec::new();
    let mut chunk = [0u8; 4096];
    let (head_len, body_len) = loop {
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut request = httparse::Request::new(&mut headers);
        if let Ok(httparse::Status::Complete(head_len)) = request.parse(&received) {
            let body_len = request
                .headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                .and_then(|h| std::str::from_utf8(h.value).ok()?.trim().parse::<usize>().ok())
                .unwrap_or(0);
            break (head_len, body_len);
        }
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => received.extend_from_slice(&chunk[..n]),
        }
    };
    while received.len() < head_len + body_len {
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => received.extend_from_slice(&chunk[..n]),
        }
    }
    let reply = match files.respond(&received[head_len..head_len + body_len], number) {
        Some(body) => {
            let mut reply = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: application/ocsp-response\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            )
            .into_bytes();
            reply.extend_from_slice(&body);
            reply
        }
        None => b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_vec(),
    };
    let _ = stream.write_all(&reply);
}

impl OcspResponder {
    /// Starts a responder on 127.0.0.1:`port` that returns the status of each
    /// certificate in `entries` (`true` for revoked) and "unknown" for any other.
    pub fn start(dir: &Path, ca: &TestCa, signer: Signer<'_>, port: u16, entries: &[(&Leaf, bool)]) -> OcspResponder {
        let dir = dir.join(format!("ocsp-{port}"));
        std::fs::create_dir_all(&dir).unwrap();
        let ca_file = write(&dir, "ca.pem", &ca.cert_pem);
        let (signer_cert, signer_key) = match signer {
            Signer::Issuer => (ca_file.clone(), write(&dir, "signer.key", ca.key_pem())),
            Signer::Delegated(leaf) => (
                write(&dir, "signer.pem", &leaf.cert_pem),
                write(&dir, "signer.key", &leaf.key_pem),
            ),
        };
        let index = dir.join("index.txt");
        let mut file = std::fs::File::create(&index).unwrap();
        for (leaf, revoked) in entries {
            file.write_all(leaf.index_line(*revoked).as_bytes()).unwrap();
        }
        drop(file);

        let listener = std::net::TcpListener::bind(("127.0.0.1", port))
            .unwrap_or_else(|error| panic!("the OCSP responder failed to bind 127.0.0.1:{port}: {error}"));
        listener.set_nonblocking(true).unwrap();
        let files = ResponderFiles {
            dir,
            index,
            ca: ca_file,
            signer_cert,
            signer_key,
        };
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut number = 0;
                while !stop.load(Ordering::Relaxed) {
                    match listener.accept() {
                        Ok((stream, _)) => {
                            number += 1;
                            serve_one(stream, &files, number);
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(10)),
                    }
                }
            })
        };
        OcspResponder {
            stop,
            thread: Some(thread),
        }
    }

    /// Stops the responder; its port refuses connections afterwards.
    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for OcspResponder {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Makes a DER OCSP response for `leaf` without a server, with `openssl ocsp -reqin`,
/// valid for `days` days.
pub fn offline_response(dir: &Path, ca: &TestCa, signer: Signer<'_>, leaf: &Leaf, revoked: bool, days: u32) -> Vec<u8> {
    let dir = dir.join(format!("offline-{}", leaf.serial));
    std::fs::create_dir_all(&dir).unwrap();
    let ca_file = write(&dir, "ca.pem", &ca.cert_pem);
    let leaf_file = write(&dir, "leaf.pem", &leaf.cert_pem);
    let (signer_cert, signer_key) = match signer {
        Signer::Issuer => (ca_file.clone(), write(&dir, "signer.key", ca.key_pem())),
        Signer::Delegated(responder) => (
            write(&dir, "signer.pem", &responder.cert_pem),
            write(&dir, "signer.key", &responder.key_pem),
        ),
    };
    let index = write(&dir, "index.txt", leaf.index_line(revoked));
    let request = dir.join("request.der");
    let response = dir.join("response.der");

    let status = Command::new("openssl")
        .args(["ocsp", "-no_nonce", "-issuer"])
        .arg(&ca_file)
        .arg("-cert")
        .arg(&leaf_file)
        .arg("-reqout")
        .arg(&request)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success(), "openssl ocsp failed to write a request");
    let status = Command::new("openssl")
        .args(["ocsp", "-index"])
        .arg(&index)
        .arg("-rsigner")
        .arg(&signer_cert)
        .arg("-rkey")
        .arg(&signer_key)
        .arg("-CA")
        .arg(&ca_file)
        .arg("-reqin")
        .arg(&request)
        .arg("-respout")
        .arg(&response)
        .arg("-ndays")
        .arg(days.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success(), "openssl ocsp failed to write a response");
    std::fs::read(&response).unwrap()
}

pub fn url_for(port: u16) -> String {
    format!("http://127.0.0.1:{port}/")
}
