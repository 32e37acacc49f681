//! OCSP (RFC 6960): the request for one certificate and the checks a response must pass
//! before it is stapled.
//!
//! A response is used only when it contains the status of this certificate and issuer,
//! that status is good, it is signed by the issuer or by a responder the issuer
//! delegated (RFC 6960 section 2.6), and the current time lies within
//! thisUpdate..nextUpdate. Signatures are
//! checked with the signature algorithms of the rustls crypto provider.

use std::time::{Duration, SystemTime};

use rustls::crypto::CryptoProvider;
use x509_cert::der::asn1::{BitStringRef, Null, OctetString};
use x509_cert::der::oid::db::rfc5280::ID_KP_OCSP_SIGNING;
use x509_cert::der::oid::db::rfc5912::{ID_SHA_1, ID_SHA_256, ID_SHA_384, ID_SHA_512};
use x509_cert::der::oid::db::rfc6960::ID_PKIX_OCSP_BASIC;
use x509_cert::der::{Decode, Encode, Header, Reader, SliceReader, Tag, TagNumber};
use x509_cert::ext::pkix::ExtendedKeyUsage;
use x509_cert::spki::{AlgorithmIdentifierOwned, SubjectPublicKeyInfoOwned};
use x509_ocsp::{
    CertId, CertStatus, OcspRequest, OcspResponse, OcspResponseStatus, Request, ResponderId, ResponseData, TbsRequest,
    Version,
};

use super::certs::{ParsedCert, format_time};

/// How far a responder's clock may run ahead of ours: a response whose thisUpdate is
/// at most this far in the future is accepted.
pub const CLOCK_SKEW: Duration = Duration::from_secs(5 * 60);

/// A verified OCSP response that is good for one certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Staple {
    /// The DER `OCSPResponse` as the responder sent it, which is what gets stapled.
    pub response: Vec<u8>,
    pub this_update: SystemTime,
    pub next_update: SystemTime,
}

impl Staple {
    /// Returns whether the staple may be sent at `now`.
    pub fn is_current(&self, now: SystemTime) -> bool {
        now < self.next_update && self.this_update <= now + CLOCK_SKEW
    }

    /// Returns the time to fetch a fresh response: half-way through the validity period.
    pub fn refresh_at(&self) -> SystemTime {
        let validity = self.next_update.duration_since(self.this_update).unwrap_or_default();
        self.this_update + validity / 2
    }
}

/// Reasons a response is not stapled.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OcspError {
    #[error("malformed OCSP response: {0}")]
    Malformed(String),
    #[error("the responder returned status {0}")]
    Status(&'static str),
    #[error("the response is not a basic OCSP response")]
    NotBasic,
    #[error("the response holds no status for this certificate")]
    NoMatchingResponse,
    #[error("the certificate is revoked (since {0})")]
    Revoked(String),
    #[error("the responder does not know the certificate (status unknown)")]
    Unknown,
    #[error("the response is not valid before {0}")]
    NotYetValid(String),
    #[error("the response expired at {0}")]
    Expired(String),
    #[error("the response has no nextUpdate time, so how long it stays valid is unknown")]
    NoNextUpdate,
    #[error("the response is signed by neither the issuer nor a responder the issuer delegated")]
    UnauthorizedSigner,
    #[error("the response signature is invalid")]
    BadSignature,
    #[error("the signature algorithm {0} is not supported")]
    UnsupportedAlgorithm(String),
}

fn malformed(error: x509_cert::der::Error) -> OcspError {
    OcspError::Malformed(error.to_string())
}

fn status_name(status: OcspResponseStatus) -> &'static str {
    match status {
        OcspResponseStatus::Successful => "successful",
        OcspResponseStatus::MalformedRequest => "malformedRequest",
        OcspResponseStatus::InternalError => "internalError",
        OcspResponseStatus::TryLater => "tryLater",
        OcspResponseStatus::SigRequired => "sigRequired",
        OcspResponseStatus::Unauthorized => "unauthorized",
    }
}

/// A signed DER structure (a certificate or a basic OCSP response) split into the
/// to-be-signed bytes as received, the algorithm, the signature, and for a basic OCSP
/// response the certificates it carries, each as received.
struct Signed<'a> {
    tbs: &'a [u8],
    algorithm: AlgorithmIdentifierOwned,
    signature: &'a [u8],
    certs: Vec<&'a [u8]>,
}

/// Splits `SEQUENCE { tbs, signatureAlgorithm, signature BIT STRING, [0] certs OPTIONAL }`.
fn parse_signed(der: &[u8]) -> Result<Signed<'_>, x509_cert::der::Error> {
    let mut reader = SliceReader::new(der)?;
    let signed = reader.sequence(|fields| {
        let tbs = fields.tlv_bytes()?;
        let algorithm = AlgorithmIdentifierOwned::decode(fields)?;
        let signature = BitStringRef::decode(fields)?.raw_bytes();
        let mut certs = Vec::new();
        if !fields.is_finished() {
            let explicit = Header::decode(fields)?;
            explicit.tag.assert_eq(Tag::ContextSpecific {
                constructed: true,
                number: TagNumber::N0,
            })?;
            fields.read_nested(explicit.length, |inner| {
                inner.sequence(|list| {
                    while !list.is_finished() {
                        certs.push(list.tlv_bytes()?);
                    }
                    Ok(())
                })
            })?;
        }
        Ok(Signed {
            tbs,
            algorithm,
            signature,
            certs,
        })
    })?;
    reader.finish(signed)
}

/// Returns the contents of an AlgorithmIdentifier SEQUENCE, the form rustls compares.
fn algorithm_contents(algorithm: &AlgorithmIdentifierOwned) -> Option<Vec<u8>> {
    let der = algorithm.to_der().ok()?;
    let mut reader = SliceReader::new(&der).ok()?;
    let header = Header::decode(&mut reader).ok()?;
    let contents = reader.read_slice(header.length).ok()?;
    Some(contents.to_vec())
}

/// Returns whether `algorithm` is `expected`, counting absent parameters as NULL, as
/// some encoders leave out the NULL of RSA algorithms.
fn algorithm_matches(expected: &[u8], algorithm: &AlgorithmIdentifierOwned) -> bool {
    if algorithm_contents(algorithm).as_deref() == Some(expected) {
        return true;
    }
    if algorithm.parameters.is_some() {
        return false;
    }
    let with_null = AlgorithmIdentifierOwned {
        oid: algorithm.oid,
        parameters: Some(Null.into()),
    };
    algorithm_contents(&with_null).as_deref() == Some(expected)
}

/// Checks `signature` over `message` with the public key `signer`.
///
/// NOTE: the provider offers only the algorithms TLS uses, so a response signed with
/// SHA-1 (sha1WithRSAEncryption) is rejected as unsupported rather than verified.
fn verify_signature(
    provider: &CryptoProvider,
    signer: &SubjectPublicKeyInfoOwned,
    algorithm: &AlgorithmIdentifierOwned,
    message: &[u8],
    signature: &[u8],
) -> Result<(), OcspError> {
    let public_key = signer.subject_public_key.raw_bytes();
    let mut supported = false;
    for candidate in provider.signature_verification_algorithms.all {
        if !algorithm_matches(candidate.signature_alg_id().as_ref(), algorithm)
            || !algorithm_matches(candidate.public_key_alg_id().as_ref(), &signer.algorithm)
        {
            continue;
        }
        supported = true;
        if candidate.verify_signature(public_key, message, signature).is_ok() {
            return Ok(());
        }
    }
    if supported {
        Err(OcspError::BadSignature)
    } else {
        Err(OcspError::UnsupportedAlgorithm(algorithm.oid.to_string()))
    }
}

/// Returns whether `issuer`'s key signed `cert`.
pub fn is_signed_by(provider: &CryptoProvider, cert: &ParsedCert, issuer: &ParsedCert) -> bool {
    let Ok(signed) = parse_signed(&cert.der) else {
        return false;
    };
    let key = &issuer.cert.tbs_certificate.subject_public_key_info;
    verify_signature(provider, key, &signed.algorithm, signed.tbs, signed.signature).is_ok()
}

fn digest(algorithm: &'static ring::digest::Algorithm, data: &[u8]) -> Vec<u8> {
    ring::digest::digest(algorithm, data).as_ref().to_vec()
}

/// Builds the DER OCSP request for `leaf`. The CertID uses SHA-1 hashes, which the
/// lightweight OCSP profile of RFC 5019 requires of clients, so responders that follow
/// it can answer; a response that uses another hash is accepted as well.
pub fn request(leaf: &ParsedCert, issuer: &ParsedCert) -> Result<Vec<u8>, OcspError> {
    let issuer_tbs = &issuer.cert.tbs_certificate;
    let name = issuer_tbs.subject.to_der().map_err(malformed)?;
    let key = issuer_tbs.subject_public_key_info.subject_public_key.raw_bytes();
    let sha1 = &ring::digest::SHA1_FOR_LEGACY_USE_ONLY;

    let cert_id = CertId {
        hash_algorithm: AlgorithmIdentifierOwned {
            oid: ID_SHA_1,
            parameters: Some(Null.into()),
        },
        issuer_name_hash: OctetString::new(digest(sha1, &name)).map_err(malformed)?,
        issuer_key_hash: OctetString::new(digest(sha1, key)).map_err(malformed)?,
        serial_number: leaf.cert.tbs_certificate.serial_number.clone(),
    };
    let request = OcspRequest {
        tbs_request: TbsRequest {
            version: Version::V1,
            requestor_name: None,
            request_list: vec![Request {
                req_cert: cert_id,
                single_request_extensions: None,
            }],
            request_extensions: None,
        },
        optional_signature: None,
    };
    request.to_der().map_err(malformed)
}

/// Returns whether a response's CertID names `leaf` as issued by `issuer`, with
/// whichever hash algorithm the responder used.
fn cert_id_matches(id: &CertId, leaf: &ParsedCert, issuer: &ParsedCert) -> bool {
    if id.serial_number != leaf.cert.tbs_certificate.serial_number {
        return false;
    }
    let algorithm = match id.hash_algorithm.oid {
        oid if oid == ID_SHA_1 => &ring::digest::SHA1_FOR_LEGACY_USE_ONLY,
        oid if oid == ID_SHA_256 => &ring::digest::SHA256,
        oid if oid == ID_SHA_384 => &ring::digest::SHA384,
        oid if oid == ID_SHA_512 => &ring::digest::SHA512,
        _ => return false,
    };
    let issuer_tbs = &issuer.cert.tbs_certificate;
    let Ok(name) = issuer_tbs.subject.to_der() else {
        return false;
    };
    let key = issuer_tbs.subject_public_key_info.subject_public_key.raw_bytes();
    id.issuer_name_hash.as_bytes() == digest(algorithm, &name)
        && id.issuer_key_hash.as_bytes() == digest(algorithm, key)
}

/// Returns whether the ResponderID names `cert`.
fn names_responder(id: &ResponderId, cert: &x509_cert::Certificate) -> bool {
    match id {
        ResponderId::ByName(name) => *name == cert.tbs_certificate.subject,
        ResponderId::ByKey(hash) => {
            let key = cert
                .tbs_certificate
                .subject_public_key_info
                .subject_public_key
                .raw_bytes();
            hash.as_bytes() == digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, key)
        }
    }
}

/// Returns whether `candidate` is a responder certificate that `issuer` delegated OCSP
/// signing to: issued and signed by the issuer, with the OCSPSigning extended key usage,
/// and valid at `now`.
fn is_delegated_responder(
    provider: &CryptoProvider,
    candidate: &ParsedCert,
    issuer: &ParsedCert,
    now: SystemTime,
) -> bool {
    let tbs = &candidate.cert.tbs_certificate;
    let has_ocsp_signing = matches!(
        tbs.get::<ExtendedKeyUsage>(),
        Ok(Some((_, usage))) if usage.0.contains(&ID_KP_OCSP_SIGNING)
    );
    let valid_now = tbs.validity.not_before.to_system_time() <= now && now <= tbs.validity.not_after.to_system_time();
    has_ocsp_signing && valid_now && candidate.is_issued_by_name(issuer) && is_signed_by(provider, candidate, issuer)
}

/// Returns the public key that must have signed the response: the issuer's, or that of
/// a delegated responder certificate carried in the response.
fn signer_key(
    provider: &CryptoProvider,
    responder: &ResponderId,
    carried: &[&[u8]],
    issuer: &ParsedCert,
    now: SystemTime,
) -> Result<SubjectPublicKeyInfoOwned, OcspError> {
    if names_responder(responder, &issuer.cert) {
        return Ok(issuer.cert.tbs_certificate.subject_public_key_info.clone());
    }
    for der in carried {
        let Ok(candidate) = ParsedCert::from_der(der.to_vec().into()) else {
            continue;
        };
        if names_responder(responder, &candidate.cert) && is_delegated_responder(provider, &candidate, issuer, now) {
            return Ok(candidate.cert.tbs_certificate.subject_public_key_info);
        }
    }
    Err(OcspError::UnauthorizedSigner)
}

/// Checks a DER `OCSPResponse` for `leaf` issued by `issuer` at time `now`, and returns
/// it as a staple when it passes every check.
pub fn verify(
    provider: &CryptoProvider,
    response: &[u8],
    leaf: &ParsedCert,
    issuer: &ParsedCert,
    now: SystemTime,
) -> Result<Staple, OcspError> {
    let outer = OcspResponse::from_der(response).map_err(malformed)?;
    if outer.response_status != OcspResponseStatus::Successful {
        return Err(OcspError::Status(status_name(outer.response_status)));
    }
    let bytes = outer
        .response_bytes
        .ok_or_else(|| OcspError::Malformed("a successful response without responseBytes".into()))?;
    if bytes.response_type != ID_PKIX_OCSP_BASIC {
        return Err(OcspError::NotBasic);
    }

    let signed = parse_signed(bytes.response.as_bytes()).map_err(malformed)?;
    let data = ResponseData::from_der(signed.tbs).map_err(malformed)?;
    let single = data
        .responses
        .iter()
        .find(|single| cert_id_matches(&single.cert_id, leaf, issuer))
        .ok_or(OcspError::NoMatchingResponse)?;

    let signer = signer_key(provider, &data.responder_id, &signed.certs, issuer, now)?;
    verify_signature(provider, &signer, &signed.algorithm, signed.tbs, signed.signature)?;

    match &single.cert_status {
        CertStatus::Good(_) => {}
        CertStatus::Revoked(info) => {
            return Err(OcspError::Revoked(format_time(info.revocation_time.0.to_system_time())));
        }
        CertStatus::Unknown(_) => return Err(OcspError::Unknown),
    }

    let this_update = single.this_update.0.to_system_time();
    let next_update = single.next_update.ok_or(OcspError::NoNextUpdate)?.0.to_system_time();
    if this_update > now + CLOCK_SKEW {
        return Err(OcspError::NotYetValid(format_time(this_update)));
    }
    if now >= next_update {
        return Err(OcspError::Expired(format_time(next_update)));
    }
    Ok(Staple {
        response: response.to_vec(),
        this_update,
        next_update,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn staple_refreshes_half_way() {
        let this_update = SystemTime::UNIX_EPOCH + Duration::from_secs(1000);
        let staple = Staple {
            response: Vec::new(),
            this_update,
            next_update: this_update + Duration::from_secs(60),
        };
        assert_eq!(staple.refresh_at(), this_update + Duration::from_secs(30));
    }

    #[test]
    fn staple_is_current_within_validity() {
        let this_update = SystemTime::UNIX_EPOCH + Duration::from_secs(100_000);
        let next_update = this_update + Duration::from_secs(60);
        let staple = Staple {
            response: Vec::new(),
            this_update,
            next_update,
        };
        assert!(staple.is_current(this_update));
        assert!(staple.is_current(next_update - Duration::from_secs(1)));
        assert!(!staple.is_current(next_update));
        assert!(staple.is_current(this_update - CLOCK_SKEW));
        assert!(!staple.is_current(this_update - CLOCK_SKEW - Duration::from_secs(1)));
    }

    #[test]
    fn garbage_response_is_malformed() {
        let provider = rustls::crypto::ring::default_provider();
        let cert = rcgen::generate_simple_self_signed(vec!["a.test".into()]).unwrap();
        let parsed = ParsedCert::from_der(cert.cert.der().clone()).unwrap();
        for input in [&b""[..], b"\x30\x03\x0a\x01", b"not der at all", b"\x30\x80\x00\x00"] {
            let result = verify(&provider, input, &parsed, &parsed, SystemTime::now());
            assert!(matches!(result, Err(OcspError::Malformed(_))), "{input:?}: {result:?}");
        }
    }

    #[test]
    fn unsuccessful_status_is_named() {
        let provider = rustls::crypto::ring::default_provider();
        let cert = rcgen::generate_simple_self_signed(vec!["a.test".into()]).unwrap();
        let parsed = ParsedCert::from_der(cert.cert.der().clone()).unwrap();
        let try_later = OcspResponse::try_later().to_der().unwrap();
        let result = verify(&provider, &try_later, &parsed, &parsed, SystemTime::now());
        assert_eq!(result, Err(OcspError::Status("tryLater")));
    }

    #[test]
    fn request_names_leaf_serial_with_sha1() {
        let cert = rcgen::generate_simple_self_signed(vec!["a.test".into()]).unwrap();
        let parsed = ParsedCert::from_der(cert.cert.der().clone()).unwrap();
        let der = request(&parsed, &parsed).unwrap();
        let decoded = OcspRequest::from_der(&der).unwrap();
        let id = &decoded.tbs_request.request_list[0].req_cert;
        assert_eq!(id.hash_algorithm.oid, ID_SHA_1);
        assert_eq!(id.serial_number, parsed.cert.tbs_certificate.serial_number);
        assert!(cert_id_matches(id, &parsed, &parsed));
    }
}
