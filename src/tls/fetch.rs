//! A small HTTP/1.1 client for OCSP responders and CA Issuers URLs.
//!
//! Certificates name their responder and issuer by `http://` URLs; what those serve is
//! signed, so it needs no TLS. Every exchange has a time limit and a response size
//! limit, so a slow or hostile server costs one background task a bounded wait and
//! nothing more.

use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode, Uri, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// Time allowed for one exchange: connect, send, and read the whole response.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(10);

/// Largest response body accepted. OCSP responses and certificates are a few KiB.
pub const MAX_RESPONSE_BYTES: usize = 256 * 1024;

/// Errors that stop a staple fetch.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("invalid URL {url}: {reason}")]
    InvalidUrl { url: String, reason: &'static str },
    #[error("failed to connect to {url}: {source}")]
    Connect { url: String, source: std::io::Error },
    #[error("request to {url} failed: {reason}")]
    Http { url: String, reason: String },
    #[error("{url} returned status {status}")]
    Status { url: String, status: StatusCode },
    #[error("{url} did not respond within {FETCH_TIMEOUT:?}")]
    Timeout { url: String },
}

/// Sends an OCSP request by HTTP POST and returns the response body.
pub async fn post_ocsp(url: &str, request: Vec<u8>) -> Result<Bytes, FetchError> {
    exchange(url, Method::POST, Some(("application/ocsp-request", request))).await
}

/// Fetches a CA Issuers URL and returns the body (a DER or PEM certificate).
pub async fn get(url: &str) -> Result<Bytes, FetchError> {
    exchange(url, Method::GET, None).await
}

async fn exchange(url: &str, method: Method, body: Option<(&'static str, Vec<u8>)>) -> Result<Bytes, FetchError> {
    match tokio::time::timeout(FETCH_TIMEOUT, exchange_unbounded(url, method, body)).await {
        Ok(result) => result,
        Err(_) => Err(FetchError::Timeout { url: url.to_owned() }),
    }
}

async fn exchange_unbounded(
    url: &str,
    method: Method,
    body: Option<(&'static str, Vec<u8>)>,
) -> Result<Bytes, FetchError> {
    let invalid = |reason| FetchError::InvalidUrl {
        url: url.to_owned(),
        reason,
    };
    let http_error = |error: &dyn std::fmt::Display| FetchError::Http {
        url: url.to_owned(),
        reason: error.to_string(),
    };

    let uri: Uri = url.parse().map_err(|_| invalid("not a URL"))?;
    if uri.scheme_str() != Some("http") {
        return Err(invalid("only http:// URLs are supported"));
    }
    let authority = uri.authority().ok_or_else(|| invalid("no host"))?.clone();
    let host = authority.host().trim_start_matches('[').trim_end_matches(']');
    let port = authority.port_u16().unwrap_or(80);

    let stream = TcpStream::connect((host, port))
        .await
        .map_err(|source| FetchError::Connect {
            url: url.to_owned(),
            source,
        })?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|error| http_error(&error))?;
    // The connection task ends when the sender is dropped or the server closes.
    tokio::spawn(async move {
        let _ = connection.await;
    });

    let path = uri.path_and_query().map_or("/", |path| path.as_str());
    let mut request = Request::builder()
        .method(method)
        .uri(path)
        .header(header::HOST, authority.as_str())
        .header(header::CONNECTION, "close");
    let payload = match body {
        Some((content_type, bytes)) => {
            request = request
                .header(header::CONTENT_TYPE, content_type)
                .header(header::ACCEPT, "application/ocsp-response");
            Bytes::from(bytes)
        }
        None => Bytes::new(),
    };
    let request = request.body(Full::new(payload)).map_err(|error| http_error(&error))?;

    let response = sender.send_request(request).await.map_err(|error| http_error(&error))?;
    if response.status() != StatusCode::OK {
        return Err(FetchError::Status {
            url: url.to_owned(),
            status: response.status(),
        });
    }
    let body = Limited::new(response.into_body(), MAX_RESPONSE_BYTES)
        .collect()
        .await
        .map_err(|error| http_error(&error))?;
    Ok(body.to_bytes())
}
