//! Loading certificate chains and private keys from PEM files.
//!
//! Each `[sslCert.<label>]` pair is read, parsed and checked to match here. Loading reads
//! files, so it runs at start-up or inside the reload's blocking task, never on a
//! runtime thread that serves connections.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::{CertifiedKey, SigningKey};
use x509_cert::der::Decode;
use x509_cert::der::oid::db::rfc5280::{ID_AD_CA_ISSUERS, ID_AD_OCSP};
use x509_cert::ext::pkix::name::GeneralName;
use x509_cert::ext::pkix::{AuthorityInfoAccessSyntax, SubjectAltName};

use crate::config::CertConfig;

/// A certificate that expires within this time is reported as expiring.
pub const EXPIRY_WARNING: Duration = Duration::from_secs(14 * 24 * 60 * 60);

/// SHA-256 of a certificate's DER encoding.
pub type Fingerprint = [u8; 32];

/// Errors that reject a certificate and key pair, naming the file at fault.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error(
        "sslCert.{label}: failed to read {kind} file {}: {source}; check sslCert.{label}.{setting} \
         (scripts/dev-cert.sh makes a development certificate under cert/)",
        path.display()
    )]
    Read {
        label: String,
        kind: &'static str,
        /// The configuration key that names the file.
        setting: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("sslCert.{label}: certificate file {} contains no PEM certificate", path.display())]
    NoCertificate { label: String, path: PathBuf },
    #[error("sslCert.{label}: {kind} file {} is not valid PEM: {reason}", path.display())]
    InvalidPem {
        label: String,
        kind: &'static str,
        path: PathBuf,
        reason: String,
    },
    #[error("sslCert.{label}: certificate file {} holds an invalid X.509 certificate: {reason}", path.display())]
    InvalidCertificate {
        label: String,
        path: PathBuf,
        reason: String,
    },
    #[error(
        "sslCert.{label}: key file {} contains no private key; expected a PEM PKCS#8, PKCS#1 or SEC1 key without encryption",
        path.display()
    )]
    NoKey { label: String, path: PathBuf },
    #[error("sslCert.{label}: key file {} holds an unsupported private key: {reason}", path.display())]
    UnsupportedKey {
        label: String,
        path: PathBuf,
        reason: String,
    },
    #[error(
        "sslCert.{label}: key file {} does not match the certificate in {}",
        key_path.display(),
        cert_path.display()
    )]
    KeyMismatch {
        label: String,
        cert_path: PathBuf,
        key_path: PathBuf,
    },
}

/// A parsed X.509 certificate together with the DER bytes it was parsed from.
#[derive(Debug, Clone)]
pub struct ParsedCert {
    pub der: CertificateDer<'static>,
    pub cert: x509_cert::Certificate,
}

impl ParsedCert {
    pub fn from_der(der: CertificateDer<'static>) -> Result<ParsedCert, x509_cert::der::Error> {
        let cert = x509_cert::Certificate::from_der(&der)?;
        Ok(ParsedCert { der, cert })
    }

    /// Returns whether `self` names `issuer` as its issuer.
    pub fn is_issued_by_name(&self, issuer: &ParsedCert) -> bool {
        self.cert.tbs_certificate.issuer == issuer.cert.tbs_certificate.subject
    }

    /// Returns the URL of the first access description of `method` in the Authority
    /// Information Access extension.
    fn access_url(&self, method: x509_cert::der::oid::ObjectIdentifier) -> Option<String> {
        let (_, access) = self.cert.tbs_certificate.get::<AuthorityInfoAccessSyntax>().ok()??;
        access
            .0
            .iter()
            .filter(|description| description.access_method == method)
            .find_map(|description| match &description.access_location {
                GeneralName::UniformResourceIdentifier(url) => Some(url.to_string()),
                _ => None,
            })
    }
}

/// The source of a certificate's OCSP staple, from the `ocsp_stapling*` keys.
#[derive(Debug, Clone)]
pub enum StapleMode {
    Off,
    /// The DER response read from `ocsp_stapling_file`, when `ocsp_stapling_local`.
    File {
        path: PathBuf,
        response: Vec<u8>,
    },
    /// Fetched from the responder named in the certificate.
    Fetch,
}

/// A certificate's state against its validity period.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Expiry {
    Valid,
    /// Expires within [`EXPIRY_WARNING`].
    Expiring,
    Expired,
    NotYetValid,
}

/// One `[sslCert.<label>]` pair, loaded and checked.
pub struct LoadedCert {
    pub label: String,
    pub default: bool,
    pub cert_file: PathBuf,
    /// The leaf first, then the rest of the chain in file order.
    pub chain: Vec<CertificateDer<'static>>,
    pub key: Arc<dyn SigningKey>,
    pub leaf: ParsedCert,
    /// The certificate in the chain that issued the leaf, when the chain contains it.
    pub issuer: Option<ParsedCert>,
    /// DNS names from the subjectAltName extension, lower-cased; `*.` wildcards kept.
    pub names: Vec<String>,
    /// The serial number in upper-case hexadecimal, as `openssl x509 -serial` prints it.
    pub serial: String,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
    pub fingerprint: Fingerprint,
    /// The OCSP responder URL from the Authority Information Access extension.
    pub ocsp_url: Option<String>,
    /// The CA Issuers URL from the Authority Information Access extension.
    pub ca_issuers_url: Option<String>,
    pub staple_mode: StapleMode,
}

impl std::fmt::Debug for LoadedCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedCert")
            .field("label", &self.label)
            .field("names", &self.names)
            .field("serial", &self.serial)
            .finish_non_exhaustive()
    }
}

impl LoadedCert {
    pub fn expiry(&self, now: SystemTime) -> Expiry {
        if now < self.not_before {
            Expiry::NotYetValid
        } else if now >= self.not_after {
            Expiry::Expired
        } else if now + EXPIRY_WARNING >= self.not_after {
            Expiry::Expiring
        } else {
            Expiry::Valid
        }
    }

    /// Returns a warning for a certificate that is expired, expiring or not yet valid.
    pub fn expiry_warning(&self, now: SystemTime) -> Option<String> {
        let not_after = format_time(self.not_after);
        let subject = format!(
            "certificate {} (sslCert.{}, serial {})",
            self.cert_file.display(),
            self.label,
            self.serial
        );
        match self.expiry(now) {
            Expiry::Valid => None,
            Expiry::Expired => Some(format!("{subject} expired at {not_after}; renew it")),
            Expiry::Expiring => {
                let days = self.not_after.duration_since(now).unwrap_or_default().as_secs() / 86_400;
                Some(format!("{subject} expires at {not_after}, in {days} days; renew it"))
            }
            Expiry::NotYetValid => Some(format!(
                "{subject} is not valid before {}; clients will reject it until then",
                format_time(self.not_before)
            )),
        }
    }

    /// Returns the chain and key as rustls serves them, with `staple` attached.
    pub fn certified_key(&self, staple: Option<Vec<u8>>) -> CertifiedKey {
        let mut key = CertifiedKey::new(self.chain.clone(), self.key.clone());
        key.ocsp = staple;
        key
    }
}

/// Formats a time as RFC 3339 in UTC, such as `2026-03-01T12:00:00Z`.
pub fn format_time(time: SystemTime) -> String {
    match x509_cert::der::DateTime::from_system_time(time) {
        Ok(time) => time.to_string(),
        Err(_) => "(out of range)".into(),
    }
}

/// Formats bytes as upper-case hexadecimal.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02X}")).collect()
}

/// Formats a DER INTEGER's bytes as `openssl x509 -serial` does, without the zero
/// byte that DER puts before a positive number whose high bit is set.
fn serial_hex(bytes: &[u8]) -> String {
    let start = bytes
        .iter()
        .position(|&byte| byte != 0)
        .unwrap_or(bytes.len().saturating_sub(1));
    hex(&bytes[start..])
}

pub fn fingerprint(der: &[u8]) -> Fingerprint {
    let digest = ring::digest::digest(&ring::digest::SHA256, der);
    let mut fingerprint = [0u8; 32];
    fingerprint.copy_from_slice(digest.as_ref());
    fingerprint
}

fn read(label: &str, kind: &'static str, setting: &'static str, path: &Path) -> Result<Vec<u8>, CertError> {
    std::fs::read(path).map_err(|source| CertError::Read {
        label: label.to_owned(),
        kind,
        setting,
        path: path.to_path_buf(),
        source,
    })
}

/// Returns the DNS names of a certificate's subjectAltName extension.
fn dns_names(leaf: &ParsedCert) -> Vec<String> {
    let Ok(Some((_, names))) = leaf.cert.tbs_certificate.get::<SubjectAltName>() else {
        return Vec::new();
    };
    let mut list: Vec<String> = names
        .0
        .iter()
        .filter_map(|name| match name {
            GeneralName::DnsName(dns) => {
                let name = dns.to_string().to_ascii_lowercase();
                Some(name.strip_suffix('.').map(str::to_owned).unwrap_or(name))
            }
            _ => None,
        })
        .filter(|name| !name.is_empty())
        .collect();
    list.dedup();
    list
}

/// Reads, parses and checks one certificate and key pair.
pub fn load(config: &CertConfig, provider: &CryptoProvider) -> Result<LoadedCert, CertError> {
    let label = config.label.as_str();

    let cert_bytes = read(label, "certificate", "ssl_certificate", &config.cert_file)?;
    let chain = CertificateDer::pem_slice_iter(&cert_bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| CertError::InvalidPem {
            label: label.to_owned(),
            kind: "certificate",
            path: config.cert_file.clone(),
            reason: error.to_string(),
        })?;
    if chain.is_empty() {
        return Err(CertError::NoCertificate {
            label: label.to_owned(),
            path: config.cert_file.clone(),
        });
    }
    let invalid_certificate = |reason: String| CertError::InvalidCertificate {
        label: label.to_owned(),
        path: config.cert_file.clone(),
        reason,
    };
    let parsed = chain
        .iter()
        .map(|der| ParsedCert::from_der(der.clone()).map_err(|error| invalid_certificate(error.to_string())))
        .collect::<Result<Vec<_>, _>>()?;

    let key_bytes = read(label, "key", "ssl_certificate_key", &config.key_file)?;
    let key_der = match PrivateKeyDer::from_pem_slice(&key_bytes) {
        Ok(key) => key,
        Err(rustls::pki_types::pem::Error::NoItemsFound) => {
            return Err(CertError::NoKey {
                label: label.to_owned(),
                path: config.key_file.clone(),
            });
        }
        Err(error) => {
            return Err(CertError::InvalidPem {
                label: label.to_owned(),
                kind: "key",
                path: config.key_file.clone(),
                reason: error.to_string(),
            });
        }
    };
    let key = provider
        .key_provider
        .load_private_key(key_der)
        .map_err(|error| CertError::UnsupportedKey {
            label: label.to_owned(),
            path: config.key_file.clone(),
            reason: error.to_string(),
        })?;

    let pair = CertifiedKey::new(chain.clone(), key.clone());
    if let Err(error) = pair.keys_match() {
        return Err(match error {
            rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch) => CertError::KeyMismatch {
                label: label.to_owned(),
                cert_path: config.cert_file.clone(),
                key_path: config.key_file.clone(),
            },
            other => invalid_certificate(other.to_string()),
        });
    }

    let staple_mode = match (&config.ocsp_file, config.ocsp_stapling, config.ocsp_local) {
        (_, false, _) => StapleMode::Off,
        (Some(path), true, true) => StapleMode::File {
            path: path.clone(),
            response: read(label, "OCSP response", "ocsp_stapling_file", path)?,
        },
        // Config validation requires a file when ocsp_stapling_local is set.
        (None, true, true) | (_, true, false) => StapleMode::Fetch,
    };

    let mut parsed = parsed.into_iter();
    let leaf = parsed.next().ok_or_else(|| CertError::NoCertificate {
        label: label.to_owned(),
        path: config.cert_file.clone(),
    })?;
    let issuer = parsed.find(|candidate| leaf.is_issued_by_name(candidate));
    let validity = &leaf.cert.tbs_certificate.validity;
    let serial = serial_hex(leaf.cert.tbs_certificate.serial_number.as_bytes());

    Ok(LoadedCert {
        label: label.to_owned(),
        default: config.default,
        cert_file: config.cert_file.clone(),
        names: dns_names(&leaf),
        serial,
        not_before: validity.not_before.to_system_time(),
        not_after: validity.not_after.to_system_time(),
        fingerprint: fingerprint(&leaf.der),
        ocsp_url: leaf.access_url(ID_AD_OCSP),
        ca_issuers_url: leaf.access_url(ID_AD_CA_ISSUERS),
        chain,
        key,
        leaf,
        issuer,
        staple_mode,
    })
}

/// Loads every certificate of a configuration, in file order. The first failure
/// rejects the whole set.
pub fn load_all(configs: &[CertConfig], provider: &CryptoProvider) -> Result<Vec<LoadedCert>, CertError> {
    configs.iter().map(|config| load(config, provider)).collect()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Writes a new self-signed certificate for `names` and its key under `dir`, and
    /// returns the `[sslCert]` settings that name them.
    pub(crate) fn write_cert(dir: &Path, label: &str, names: &[&str]) -> CertConfig {
        let names: Vec<String> = names.iter().map(|name| name.to_string()).collect();
        let generated = rcgen::generate_simple_self_signed(names).unwrap();
        let cert_file = dir.join(format!("{label}.pem"));
        let key_file = dir.join(format!("{label}.key"));
        std::fs::write(&cert_file, generated.cert.pem()).unwrap();
        std::fs::write(&key_file, generated.signing_key.serialize_pem()).unwrap();
        CertConfig {
            label: label.to_owned(),
            cert_file,
            key_file,
            ocsp_stapling: false,
            ocsp_local: false,
            ocsp_file: None,
            default: false,
        }
    }

    fn provider() -> CryptoProvider {
        rustls::crypto::ring::default_provider()
    }

    #[test]
    fn load_reads_names_serial_and_validity() {
        let dir = tempfile::tempdir().unwrap();
        let config = write_cert(dir.path(), "site", &["Site.Test", "*.site.test"]);
        let loaded = load(&config, &provider()).unwrap();
        assert_eq!(loaded.names, ["site.test", "*.site.test"]);
        assert_eq!(loaded.chain.len(), 1);
        assert!(loaded.issuer.is_none(), "a self-signed leaf has no issuer in its chain");
        assert!(!loaded.serial.is_empty());
        assert!(
            loaded
                .serial
                .chars()
                .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_lowercase())
        );
        assert_eq!(loaded.expiry(SystemTime::now()), Expiry::Valid);
        assert!(loaded.expiry_warning(SystemTime::now()).is_none());
    }

    #[test]
    fn empty_certificate_file_is_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let config = write_cert(dir.path(), "site", &["site.test"]);
        std::fs::write(&config.cert_file, "").unwrap();
        let error = load(&config, &provider()).unwrap_err().to_string();
        assert!(error.contains("site.pem"), "{error}");
        assert!(error.contains("contains no PEM certificate"), "{error}");
    }

    #[test]
    fn mismatched_key_is_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let config = write_cert(dir.path(), "site", &["site.test"]);
        let other = write_cert(dir.path(), "other", &["other.test"]);
        let mismatched = CertConfig {
            key_file: other.key_file,
            ..config
        };
        let error = load(&mismatched, &provider()).unwrap_err();
        assert!(matches!(error, CertError::KeyMismatch { .. }), "{error}");
        let message = error.to_string();
        assert!(message.contains("other.key"), "{message}");
        assert!(message.contains("site.pem"), "{message}");
    }

    #[test]
    fn key_file_without_key_is_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let config = write_cert(dir.path(), "site", &["site.test"]);
        let certificate = std::fs::read(&config.cert_file).unwrap();
        std::fs::write(&config.key_file, certificate).unwrap();
        let error = load(&config, &provider()).unwrap_err();
        assert!(matches!(error, CertError::NoKey { .. }), "{error}");
    }

    #[test]
    fn missing_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let config = write_cert(dir.path(), "site", &["site.test"]);
        std::fs::remove_file(&config.key_file).unwrap();
        let error = load(&config, &provider()).unwrap_err().to_string();
        assert!(error.contains("failed to read key file"), "{error}");
        assert!(error.contains("site.key"), "{error}");

        let stapled = CertConfig {
            ocsp_stapling: true,
            ocsp_local: true,
            ocsp_file: Some(dir.path().join("site.ocsp")),
            ..write_cert(dir.path(), "site", &["site.test"])
        };
        let error = load(&stapled, &provider()).unwrap_err().to_string();
        assert!(error.contains("failed to read OCSP response file"), "{error}");
        assert!(error.contains("site.ocsp"), "{error}");
    }

    #[test]
    fn serial_drops_der_sign_byte() {
        assert_eq!(serial_hex(&[0x00, 0x9F, 0x01]), "9F01");
        assert_eq!(serial_hex(&[0x00]), "00");
        assert_eq!(serial_hex(&[0x12, 0x00]), "1200");
    }
}
