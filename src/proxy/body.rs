//! Streaming bodies with deadlines, size limits and completion accounting.
//!
//! Bodies are never buffered whole: each frame passes through as it arrives. The timer
//! for a deadline is only created when a body actually has to wait, so a small body
//! that arrives with its head costs no timer.

use std::error::Error as StdError;
use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use tokio::time::{Instant, Sleep};

use super::Exchange;
use crate::upstream::http1::UpstreamBody;

/// The reason a client request body could not be forwarded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientBodyError {
    /// The body grew past maxBodyBytes.
    TooLarge,
    /// The body did not arrive within readTimeout.
    TimedOut,
}

impl fmt::Display for ClientBodyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientBodyError::TooLarge => f.write_str("request body is larger than maxBodyBytes"),
            ClientBodyError::TimedOut => f.write_str("request body was not received within readTimeout"),
        }
    }
}

impl StdError for ClientBodyError {}

/// Returns the client body error at the root of an upstream request failure, if any.
pub fn find_client_body_error(error: &(dyn StdError + 'static)) -> Option<ClientBodyError> {
    let mut current = Some(error);
    while let Some(error) = current {
        if let Some(found) = error.downcast_ref::<ClientBodyError>() {
            return Some(*found);
        }
        current = error.source();
    }
    None
}

/// Polls an optional deadline timer, creating it on first use.
fn poll_deadline(deadline: Option<Instant>, sleep: &mut Option<Pin<Box<Sleep>>>, cx: &mut Context<'_>) -> Poll<()> {
    let Some(deadline) = deadline else {
        return Poll::Pending;
    };
    let sleep = sleep.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
    sleep.as_mut().poll(cx)
}

/// The body sent upstream: the client's body with readTimeout and maxBodyBytes applied.
pub struct UpstreamRequestBody {
    inner: Option<Incoming>,
    limit: Option<u64>,
    received: u64,
    deadline: Option<Instant>,
    sleep: Option<Pin<Box<Sleep>>>,
}

impl UpstreamRequestBody {
    pub fn empty() -> Self {
        UpstreamRequestBody {
            inner: None,
            limit: None,
            received: 0,
            deadline: None,
            sleep: None,
        }
    }

    pub fn streaming(inner: Incoming, limit: Option<u64>, deadline: Option<Instant>) -> Self {
        UpstreamRequestBody {
            inner: Some(inner),
            limit,
            received: 0,
            deadline,
            sleep: None,
        }
    }
}

impl Body for UpstreamRequestBody {
    type Data = Bytes;
    type Error = Box<dyn StdError + Send + Sync>;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Ready(None);
        };

        match Pin::new(inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.received += data.len() as u64;
                    if this.limit.is_some_and(|limit| this.received > limit) {
                        this.inner = None;
                        return Poll::Ready(Some(Err(Box::new(ClientBodyError::TooLarge))));
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(error))) => Poll::Ready(Some(Err(Box::new(error)))),
            Poll::Ready(None) => {
                this.inner = None;
                Poll::Ready(None)
            }
            Poll::Pending => {
                ready!(poll_deadline(this.deadline, &mut this.sleep, cx));
                this.inner = None;
                Poll::Ready(Some(Err(Box::new(ClientBodyError::TimedOut))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(Body::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.inner
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), Body::size_hint)
    }
}

enum Source {
    Full(Option<Bytes>),
    Upstream(UpstreamBody),
}

/// The body sent to the client: a fixed message or the upstream's body, cut off at the
/// writeTimeout deadline.
pub struct ResponseBody {
    source: Source,
    deadline: Option<Instant>,
    sleep: Option<Pin<Box<Sleep>>>,
    bytes_sent: u64,
    exchange: Option<Exchange>,
}

/// The writeTimeout deadline passed while an upstream body was still streaming.
#[derive(Debug)]
pub struct ResponseTimedOut;

impl fmt::Display for ResponseTimedOut {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("response was not complete within writeTimeout")
    }
}

impl StdError for ResponseTimedOut {}

impl ResponseBody {
    pub fn full(bytes: impl Into<Bytes>) -> Self {
        Self::new(Source::Full(Some(bytes.into())), None)
    }

    pub fn empty() -> Self {
        Self::new(Source::Full(None), None)
    }

    pub fn upstream(body: UpstreamBody, deadline: Option<Instant>) -> Self {
        Self::new(Source::Upstream(body), deadline)
    }

    fn new(source: Source, deadline: Option<Instant>) -> Self {
        ResponseBody {
            source,
            deadline,
            sleep: None,
            bytes_sent: 0,
            exchange: None,
        }
    }

    /// Attaches the exchange whose accounting runs once the body ends or is dropped.
    pub fn set_exchange(&mut self, exchange: Exchange) {
        self.exchange = Some(exchange);
        if self.is_end_stream() {
            // hyper never polls a body that reports its end up front.
            self.finish(false);
        }
    }

    fn finish(&mut self, aborted: bool) {
        // A connection whose response did not end cleanly may have bytes left in flight,
        // so it is closed rather than reused.
        if let Source::Upstream(body) = &mut self.source {
            if aborted {
                body.discard();
            } else {
                body.release();
            }
        }
        if let Some(exchange) = self.exchange.take() {
            exchange.finish(self.bytes_sent, aborted);
        }
    }
}

impl Drop for ResponseBody {
    fn drop(&mut self) {
        self.finish(true);
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = Box<dyn StdError + Send + Sync>;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        let polled = match &mut this.source {
            Source::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            Source::Upstream(body) => match Pin::new(&mut *body).poll_frame(cx) {
                Poll::Ready(Some(Err(error))) => {
                    if let Some(exchange) = &this.exchange {
                        exchange.body_failed(&error);
                    }
                    Poll::Ready(Some(Err(error.into())))
                }
                Poll::Ready(Some(Ok(frame))) => Poll::Ready(Some(Ok(frame))),
                Poll::Ready(None) => Poll::Ready(None),
                Poll::Pending => {
                    ready!(poll_deadline(this.deadline, &mut this.sleep, cx));
                    body.record_timeout();
                    if let Some(exchange) = &this.exchange {
                        exchange.body_timed_out();
                    }
                    this.finish(true);
                    return Poll::Ready(Some(Err(Box::new(ResponseTimedOut))));
                }
            },
        };
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.bytes_sent += data.len() as u64;
                }
                if this.is_end_stream() {
                    this.finish(false);
                }
            }
            Poll::Ready(None) => this.finish(false),
            Poll::Ready(Some(Err(_))) => this.finish(true),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        match &self.source {
            Source::Full(bytes) => bytes.is_none(),
            Source::Upstream(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.source {
            Source::Full(bytes) => SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64)),
            Source::Upstream(body) => body.size_hint(),
        }
    }
}
