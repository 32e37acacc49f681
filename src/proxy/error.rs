//! Every way a request can fail, and the response each one gets.
//!
//! This is the one place that maps failures to statuses: each variant has its status,
//! its rejection-counter label and a short plain-text body.

use std::time::Duration;

use http::{HeaderValue, Response, StatusCode, header};

use super::body::ResponseBody;
use crate::guard::Rejection;
use crate::metrics::Reason;
use crate::upstream::http1::ExchangeError;
use crate::upstream::pool::ConnectError;

static TEXT_PLAIN: HeaderValue = HeaderValue::from_static("text/plain; charset=utf-8");
static CLOSE: HeaderValue = HeaderValue::from_static("close");
const CLIENT_CLOSED_REQUEST: StatusCode = match StatusCode::from_u16(499) {
    Ok(status) => status,
    Err(_) => panic!("499 is a valid status code"),
};
/// The methods the gateway forwards: all but CONNECT, which would make it a tunnel.
static ALLOWED_METHODS: HeaderValue = HeaderValue::from_static("GET, HEAD, POST, PUT, DELETE, PATCH, OPTIONS, TRACE");

/// A failed attempt to reach an upstream or exchange a request with it.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("{0}")]
    Connect(#[from] ConnectError),
    #[error("{0}")]
    Exchange(#[from] ExchangeError),
}

/// A request that the gateway responded to itself instead of an upstream.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("HTTP/1.1 request has no Host header")]
    MissingHost,
    #[error("request has more than one Host header")]
    DuplicateHost,
    #[error("request host is not a valid host name")]
    InvalidHost,
    #[error("CONNECT requests are not proxied")]
    UnsupportedMethod,
    #[error("no route matches the request host")]
    NoRoute,
    #[error("client IP is on the black list")]
    Blacklisted,
    #[error("client IP is banned by CC defence")]
    Banned,
    #[error("request rate limit exceeded")]
    RateLimited { retry_after: Duration },
    #[error("request body is larger than maxBodyBytes")]
    BodyTooLarge,
    #[error("request body was not received within readTimeout")]
    RequestTimeout,
    #[error("request body is malformed")]
    InvalidRequestBody,
    #[error("client closed the connection before its request body ended")]
    ClientAborted,
    #[error("no healthy target in the pool")]
    NoHealthyTarget,
    #[error("connection to upstream {target} failed: {source}")]
    UpstreamConnect { target: Box<str>, source: UpstreamError },
    #[error("upstream {target} did not respond in time")]
    UpstreamTimeout { target: Box<str> },
    #[error("upstream {target} failed: {source}")]
    UpstreamFailed { target: Box<str>, source: UpstreamError },
}

impl From<Rejection> for ProxyError {
    fn from(rejection: Rejection) -> Self {
        match rejection {
            Rejection::Blacklisted => ProxyError::Blacklisted,
            Rejection::Banned => ProxyError::Banned,
            Rejection::RateLimited { retry_after } => ProxyError::RateLimited { retry_after },
        }
    }
}

impl ProxyError {
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::MissingHost
            | ProxyError::DuplicateHost
            | ProxyError::InvalidHost
            | ProxyError::InvalidRequestBody => StatusCode::BAD_REQUEST,
            // nginx's code for a client that closed its connection. The client never reads it.
            ProxyError::ClientAborted => CLIENT_CLOSED_REQUEST,
            ProxyError::UnsupportedMethod => StatusCode::METHOD_NOT_ALLOWED,
            ProxyError::NoRoute => StatusCode::NOT_FOUND,
            ProxyError::Blacklisted | ProxyError::Banned => StatusCode::FORBIDDEN,
            ProxyError::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            ProxyError::BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ProxyError::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            ProxyError::NoHealthyTarget => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::UpstreamConnect { .. } | ProxyError::UpstreamFailed { .. } => StatusCode::BAD_GATEWAY,
            ProxyError::UpstreamTimeout { .. } => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    pub fn reason(&self) -> Reason {
        match self {
            ProxyError::MissingHost
            | ProxyError::DuplicateHost
            | ProxyError::InvalidHost
            | ProxyError::InvalidRequestBody
            | ProxyError::UnsupportedMethod => Reason::BadRequest,
            ProxyError::ClientAborted => Reason::ClientAborted,
            ProxyError::NoRoute => Reason::HostNotFound,
            ProxyError::Blacklisted => Reason::Blacklisted,
            ProxyError::Banned => Reason::Banned,
            ProxyError::RateLimited { .. } => Reason::RateLimited,
            ProxyError::BodyTooLarge => Reason::BodyTooLarge,
            ProxyError::RequestTimeout => Reason::RequestTimeout,
            ProxyError::NoHealthyTarget => Reason::NoHealthyTarget,
            ProxyError::UpstreamConnect { .. } => Reason::UpstreamConnect,
            ProxyError::UpstreamTimeout { .. } => Reason::UpstreamTimeout,
            ProxyError::UpstreamFailed { .. } => Reason::UpstreamError,
        }
    }

    /// Returns whether a guard rejected the request. Such rejections can come in floods,
    /// so they are logged at debug level and counted.
    pub fn is_guard(&self) -> bool {
        matches!(
            self,
            ProxyError::Blacklisted | ProxyError::Banned | ProxyError::RateLimited { .. }
        )
    }

    /// Returns whether the upstream was at fault, as opposed to the client.
    pub fn is_upstream(&self) -> bool {
        matches!(
            self,
            ProxyError::NoHealthyTarget
                | ProxyError::UpstreamConnect { .. }
                | ProxyError::UpstreamTimeout { .. }
                | ProxyError::UpstreamFailed { .. }
        )
    }

    fn body(&self) -> &'static str {
        match self {
            ProxyError::MissingHost => "400 Bad Request: missing Host header\n",
            ProxyError::DuplicateHost => "400 Bad Request: more than one Host header\n",
            ProxyError::InvalidHost => "400 Bad Request: invalid Host\n",
            ProxyError::UnsupportedMethod => "405 Method Not Allowed\n",
            ProxyError::NoRoute => "404 Not Found: no route for this host\n",
            ProxyError::Blacklisted | ProxyError::Banned => "403 Forbidden\n",
            ProxyError::RateLimited { .. } => "429 Too Many Requests\n",
            ProxyError::BodyTooLarge => "413 Content Too Large\n",
            ProxyError::RequestTimeout => "408 Request Timeout\n",
            ProxyError::InvalidRequestBody => "400 Bad Request: malformed request body\n",
            ProxyError::ClientAborted => "499 Client Closed Request\n",
            ProxyError::NoHealthyTarget => "503 Service Unavailable: no healthy upstream\n",
            ProxyError::UpstreamConnect { .. } => "502 Bad Gateway: upstream unreachable\n",
            ProxyError::UpstreamFailed { .. } => "502 Bad Gateway: upstream failed\n",
            ProxyError::UpstreamTimeout { .. } => "504 Gateway Timeout\n",
        }
    }

    /// Builds the response for this error.
    pub fn to_response(&self) -> Response<ResponseBody> {
        let mut response = Response::new(ResponseBody::full(self.body()));
        *response.status_mut() = self.status();
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, TEXT_PLAIN.clone());
        match self {
            ProxyError::UnsupportedMethod => {
                headers.insert(header::ALLOW, ALLOWED_METHODS.clone());
                headers.insert(header::CONNECTION, CLOSE.clone());
            }
            ProxyError::RateLimited { retry_after } => {
                let seconds = retry_after.as_secs_f64().ceil().max(1.0) as u64;
                headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds));
            }
            // The framing of what follows a malformed or timed-out request is unknown.
            ProxyError::MissingHost
            | ProxyError::DuplicateHost
            | ProxyError::InvalidHost
            | ProxyError::BodyTooLarge
            | ProxyError::RequestTimeout
            | ProxyError::InvalidRequestBody
            | ProxyError::ClientAborted => {
                headers.insert(header::CONNECTION, CLOSE.clone());
            }
            _ => {}
        }
        response
    }
}
