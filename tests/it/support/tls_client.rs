//! A rustls test client that records what the server presented: the certificate, the
//! stapled OCSP response and the negotiated protocol, and whether the chain verifies
//! against a test CA.

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, ProtocolVersion, RootCertStore, SignatureScheme};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use x509_cert::der::Decode;

use super::pki::TestCa;

/// What one handshake presented.
#[derive(Debug, Clone)]
pub struct Presented {
    pub leaf: CertificateDer<'static>,
    pub chain_len: usize,
    /// The stapled OCSP response; empty when none was sent.
    pub staple: Vec<u8>,
    /// The result of verifying the chain and name against the test CA, when one was given.
    pub verified: Option<Result<(), String>>,
    pub alpn: Option<Vec<u8>>,
    pub version: Option<ProtocolVersion>,
}

impl Presented {
    /// Returns the leaf's serial number in upper-case hexadecimal without leading zero bytes.
    pub fn serial(&self) -> String {
        let cert = x509_cert::Certificate::from_der(&self.leaf).unwrap();
        let bytes = cert.tbs_certificate.serial_number.as_bytes();
        let start = bytes.iter().position(|&b| b != 0).unwrap_or(0);
        bytes[start..].iter().map(|b| format!("{b:02X}")).collect()
    }

    pub fn has_staple(&self) -> bool {
        !self.staple.is_empty()
    }
}

#[derive(Debug)]
struct Recorder {
    provider: Arc<CryptoProvider>,
    webpki: Option<Arc<WebPkiServerVerifier>>,
    seen: Mutex<Option<Presented>>,
}

impl ServerCertVerifier for Recorder {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let verified = self.webpki.as_ref().map(|webpki| {
            webpki
                .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
                .map(|_| ())
                .map_err(|error| error.to_string())
        });
        *self.seen.lock().unwrap() = Some(Presented {
            leaf: end_entity.clone().into_owned(),
            chain_len: 1 + intermediates.len(),
            staple: ocsp_response.to_vec(),
            verified,
            alpn: None,
            version: None,
        });
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

/// How to connect.
pub struct ClientOptions<'a> {
    /// The SNI name; `None` sends no SNI.
    pub sni: Option<&'a str>,
    pub alpn: &'a [&'a [u8]],
    /// Verify the presented chain against this CA and record the result.
    pub ca: Option<&'a TestCa>,
    pub versions: &'a [&'static rustls::SupportedProtocolVersion],
}

impl<'a> ClientOptions<'a> {
    pub fn sni(sni: &'a str) -> ClientOptions<'a> {
        ClientOptions {
            sni: Some(sni),
            alpn: &[b"http/1.1"],
            ca: None,
            versions: rustls::ALL_VERSIONS,
        }
    }

    pub fn no_sni() -> ClientOptions<'a> {
        ClientOptions {
            sni: None,
            ..ClientOptions::sni("")
        }
    }
}

/// Connects and completes a handshake; returns the stream and what the server presented.
pub async fn connect(
    addr: SocketAddr,
    options: &ClientOptions<'_>,
) -> Result<(TlsStream<TcpStream>, Presented), String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let webpki = options.ca.map(|ca| {
        let mut roots = RootCertStore::empty();
        roots.add(ca.cert_der.clone()).unwrap();
        WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
            .build()
            .unwrap()
    });
    let recorder = Arc::new(Recorder {
        provider: provider.clone(),
        webpki,
        seen: Mutex::new(None),
    });
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(options.versions)
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(recorder.clone())
        .with_no_client_auth();
    config.alpn_protocols = options.alpn.iter().map(|p| p.to_vec()).collect();

    let name = match options.sni {
        Some(sni) => ServerName::try_from(sni.to_owned()).map_err(|e| e.to_string())?,
        None => ServerName::IpAddress(IpAddr::from([127, 0, 0, 1]).into()),
    };
    let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let connector = TlsConnector::from(Arc::new(config));
    let stream = tokio::time::timeout(Duration::from_secs(10), connector.connect(name, tcp))
        .await
        .map_err(|_| "handshake timed out".to_string())?
        .map_err(|e| e.to_string())?;

    let mut presented = recorder
        .seen
        .lock()
        .unwrap()
        .clone()
        .ok_or("no certificate was presented")?;
    let (_, session) = stream.get_ref();
    presented.alpn = session.alpn_protocol().map(<[u8]>::to_vec);
    presented.version = session.protocol_version();
    Ok((stream, presented))
}

/// Completes a handshake and returns what the server presented.
pub async fn handshake(addr: SocketAddr, options: &ClientOptions<'_>) -> Presented {
    match connect(addr, options).await {
        Ok((_, presented)) => presented,
        Err(error) => panic!("TLS handshake with {addr} failed: {error}"),
    }
}

/// A response read over TLS.
#[derive(Debug)]
pub struct TlsResponse {
    pub status: StatusCode,
    pub body: String,
}

/// An HTTP/1.1 or HTTP/2 client connection over an established TLS stream.
pub enum HttpOverTls {
    Http1(hyper::client::conn::http1::SendRequest<Empty<Bytes>>),
    Http2(hyper::client::conn::http2::SendRequest<Empty<Bytes>>),
}

impl HttpOverTls {
    /// Starts HTTP/2 when ALPN chose `h2`, else HTTP/1.1.
    pub async fn start(stream: TlsStream<TcpStream>) -> HttpOverTls {
        let h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
        let io = TokioIo::new(stream);
        if h2 {
            let (sender, connection) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
                .await
                .unwrap();
            tokio::spawn(connection);
            HttpOverTls::Http2(sender)
        } else {
            let (sender, connection) = hyper::client::conn::http1::handshake(io).await.unwrap();
            tokio::spawn(connection);
            HttpOverTls::Http1(sender)
        }
    }

    /// Sends `GET path` to `host` and reads the whole response.
    pub async fn get(&mut self, host: &str, path: &str) -> TlsResponse {
        let response = match self {
            HttpOverTls::Http1(sender) => {
                let request = Request::get(path)
                    .header(http::header::HOST, host)
                    .body(Empty::new())
                    .unwrap();
                sender.send_request(request).await.unwrap()
            }
            HttpOverTls::Http2(sender) => {
                let request = Request::get(format!("https://{host}{path}"))
                    .version(http::Version::HTTP_2)
                    .body(Empty::new())
                    .unwrap();
                sender.send_request(request).await.unwrap()
            }
        };
        let status = response.status();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        TlsResponse {
            status,
            body: String::from_utf8_lossy(&body).into_owned(),
        }
    }
}
