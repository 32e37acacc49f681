//! HTTP/1.1 to upstreams, spoken from the request's own task.
//!
//! The request head goes out in one write, together with the body's first frame when
//! that has already arrived. The response head is parsed with httparse from the
//! connection's buffer, and the body that hyper sends to the client ([`UpstreamBody`])
//! reads the response body from the socket. No connection task or channel sits between
//! a request and its upstream socket, which saves a task wakeup and a message per
//! request over hyper's client.

use std::collections::VecDeque;
use std::error::Error as StdError;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll, Waker, ready};

use bytes::{Buf, Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use super::chunked::{Decoded, Decoder};
use super::pool::{Lease, UpstreamConnection};
use crate::proxy::body::{ClientBodyError, UpstreamRequestBody};
use crate::proxy::headers::{Forwarding, KEEP_ALIVE, PROXY_CONNECTION};

/// Maximum size of a response head accepted from an upstream.
const MAX_HEAD_BYTES: usize = 64 * 1024;

/// Maximum number of header fields in a response head, as in hyper's client.
const MAX_HEADERS: usize = 100;

/// Bytes reserved for each read of a response head or of a body of unknown length.
const READ_SIZE: usize = 16 * 1024;

/// Maximum body bytes read at once when the length is known.
const MAX_READ: usize = 64 * 1024;

/// A failed exchange of one request and response head with an upstream.
#[derive(Debug, thiserror::Error)]
pub enum ExchangeError {
    /// The first write failed, so the upstream received nothing.
    #[error("sending the request failed: {0}")]
    Unsent(io::Error),
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("upstream closed the connection without responding")]
    Closed,
    #[error("upstream reset the connection without responding: {0}")]
    Reset(io::Error),
    #[error("upstream sent an invalid response head: {0}")]
    InvalidHead(httparse::Error),
    #[error("upstream sent an invalid response: {0}")]
    InvalidResponse(&'static str),
    #[error("upstream sent a response head larger than {MAX_HEAD_BYTES} bytes")]
    HeadTooLarge,
    #[error("{0}")]
    ClientBody(ClientBodyError),
    #[error("reading the client's request body failed: {0}")]
    ClientBodyFailed(Box<dyn StdError + Send + Sync>),
}

impl ExchangeError {
    /// Returns whether the upstream sent no byte of a response, so the request can be
    /// retried where that is safe.
    pub fn before_response(&self) -> bool {
        matches!(
            self,
            ExchangeError::Unsent(_) | ExchangeError::Closed | ExchangeError::Reset(_)
        )
    }
}

impl From<Box<dyn StdError + Send + Sync>> for ExchangeError {
    fn from(error: Box<dyn StdError + Send + Sync>) -> Self {
        match error.downcast::<ClientBodyError>() {
            Ok(body_error) => ExchangeError::ClientBody(*body_error),
            Err(other) => ExchangeError::ClientBodyFailed(other),
        }
    }
}

/// Response body framing (RFC 9112 section 6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body: a response to HEAD, a 1xx, 204 or 304.
    Empty,
    Length(u64),
    Chunked,
    /// The body ends when the upstream closes the connection.
    Close,
}

/// A parsed response head, with its body framing and whether the connection is reusable.
#[derive(Debug)]
pub struct ResponseHead {
    pub response: Response<()>,
    pub framing: Framing,
    /// The connection can carry another request once the body is read.
    pub keep_alive: bool,
    /// The rest of the request body, sent while the response body is read.
    pub unsent_body: Option<Box<BodySender>>,
}

/// The request being sent, as far as the response head depends on it.
#[derive(Debug, Clone, Copy)]
pub struct Sent<'a> {
    pub method: &'a Method,
    /// The request target in origin form.
    pub target: &'a str,
    pub headers: &'a HeaderMap,
    /// Headers that replace the client's values of the same names.
    pub forwarding: Option<&'a Forwarding>,
    /// The request is an upgrade request, so a 101 response is expected.
    pub upgrade: bool,
}

/// Writes the request line and the header fields into `out`.
fn encode_head(request: &Sent<'_>, chunked: bool, out: &mut Vec<u8>) {
    out.extend_from_slice(request.method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(request.target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    for (name, value) in request.headers {
        if request.forwarding.is_some() && Forwarding::replaces(name) {
            continue;
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if let Some(forwarding) = request.forwarding {
        forwarding.encode(out);
    }
    if chunked {
        out.extend_from_slice(b"transfer-encoding: chunked\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// Returns the size line that starts a chunk of `len` bytes.
fn chunk_prefix(len: usize) -> Bytes {
    Bytes::from(format!("{len:x}\r\n"))
}

const LAST_CHUNK: &[u8] = b"0\r\n\r\n";

/// Sends one request and reads its response head on `connection`.
///
/// The request body is sent while the response head is awaited. Whatever is left of it
/// when the head arrives is sent while the response body streams, so an upstream that
/// responds early (with 413, or by echoing the body as it arrives) is heard.
pub async fn exchange(
    connection: &mut UpstreamConnection,
    request: Sent<'_>,
    body: UpstreamRequestBody,
) -> Result<ResponseHead, ExchangeError> {
    let has_body = !body.is_end_stream();
    let chunked = has_body && !request.headers.contains_key(header::CONTENT_LENGTH);

    let mut head = Vec::with_capacity(256 + request.headers.len() * 48);
    encode_head(&request, chunked, &mut head);

    // A small body usually arrives with the request head, so it goes in the same write.
    let mut sender = has_body.then(|| Box::new(BodySender::new(body, chunked)));
    if let Some(sending) = sender.as_mut() {
        sending.take_ready()?;
        for bytes in sending.pending.drain(..) {
            head.extend_from_slice(&bytes);
        }
    }

    let stream = &mut connection.stream;
    let written = stream.write(&head).await.map_err(ExchangeError::Unsent)?;
    stream.write_all(&head[written..]).await?;

    let mut send_error = None;
    let head = std::future::poll_fn(|cx| {
        if let Some(sending) = sender.as_mut().filter(|_| send_error.is_none()) {
            match sending.poll_send(&mut connection.stream, cx) {
                Poll::Ready(Ok(())) | Poll::Pending => {}
                // The upstream may have stopped reading because it is responding.
                Poll::Ready(Err(ExchangeError::Io(error))) => send_error = Some(error),
                Poll::Ready(Err(error)) => return Poll::Ready(Err(error)),
            }
        }
        poll_read_head(&mut connection.stream, &mut connection.read_buf, &request, cx)
    })
    .await;

    let mut head = match (head, send_error) {
        (Ok(head), None) => head,
        (Ok(mut head), Some(_)) => {
            head.keep_alive = false;
            if let Some(sending) = sender.as_mut() {
                sending.stop();
            }
            head
        }
        (Err(_), Some(error)) => return Err(ExchangeError::Io(error)),
        (Err(error), None) => return Err(error),
    };
    // An unfinished request body is kept until the response ends, even when no more of
    // it can be sent, so the client's upload is abandoned only after the whole response.
    head.unsent_body = sender.filter(|sending| !sending.is_done());
    Ok(head)
}

/// The part of a request body still to be sent, written as the socket accepts it.
///
/// It is polled by the exchange until the response head arrives, then by the response
/// body, so one task drives both directions of the connection.
pub struct BodySender {
    body: UpstreamRequestBody,
    chunked: bool,
    /// Bytes taken from the body but not yet written.
    pending: VecDeque<Bytes>,
    /// The body's end was read (and the last chunk queued).
    ended: bool,
    /// The upstream stopped reading, so nothing more is sent.
    stopped: bool,
}

impl std::fmt::Debug for BodySender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BodySender").field("ended", &self.ended).finish()
    }
}

impl BodySender {
    fn new(body: UpstreamRequestBody, chunked: bool) -> Self {
        BodySender {
            body,
            chunked,
            pending: VecDeque::with_capacity(3),
            ended: false,
            stopped: false,
        }
    }

    /// Returns whether the whole body was written.
    pub fn is_done(&self) -> bool {
        self.ended && self.pending.is_empty()
    }

    /// Takes the body frames that have already arrived, without waiting for more.
    fn take_ready(&mut self) -> Result<(), ExchangeError> {
        let mut cx = Context::from_waker(Waker::noop());
        if let Poll::Ready(frame) = Pin::new(&mut self.body).poll_frame(&mut cx) {
            self.queue(frame)?;
        }
        Ok(())
    }

    /// Queues one frame (or the end, for `None`) with its chunked framing.
    fn queue(
        &mut self,
        frame: Option<Result<Frame<Bytes>, Box<dyn StdError + Send + Sync>>>,
    ) -> Result<(), ExchangeError> {
        match frame {
            Some(frame) => {
                let Ok(data) = frame?.into_data() else {
                    return Ok(());
                };
                if data.is_empty() {
                    return Ok(());
                }
                if self.chunked {
                    self.pending.push_back(chunk_prefix(data.len()));
                    self.pending.push_back(data);
                    self.pending.push_back(Bytes::from_static(b"\r\n"));
                } else {
                    self.pending.push_back(data);
                }
            }
            None => {
                self.ended = true;
                if self.chunked {
                    self.pending.push_back(Bytes::from_static(LAST_CHUNK));
                }
            }
        }
        Ok(())
    }

    /// Stops sending, after the upstream stopped reading.
    fn stop(&mut self) {
        self.stopped = true;
    }

    /// Writes body bytes until the body or the socket has to wait, or all is sent.
    pub fn poll_send(&mut self, stream: &mut TcpStream, cx: &mut Context<'_>) -> Poll<Result<(), ExchangeError>> {
        if self.stopped {
            return Poll::Ready(Ok(()));
        }
        loop {
            while !self.pending.is_empty() {
                let mut slices = [IoSlice::new(&[]); 3];
                let count = self.pending.len().min(slices.len());
                for (slice, bytes) in slices.iter_mut().zip(&self.pending) {
                    *slice = IoSlice::new(bytes);
                }
                let mut written = ready!(Pin::new(&mut *stream).poll_write_vectored(cx, &slices[..count]))?;
                if written == 0 {
                    return Poll::Ready(Err(io::Error::from(io::ErrorKind::WriteZero).into()));
                }
                while written > 0 {
                    let front = &mut self.pending[0];
                    let take = written.min(front.len());
                    front.advance(take);
                    written -= take;
                    if front.is_empty() {
                        self.pending.pop_front();
                    }
                }
            }
            if self.ended {
                return Poll::Ready(Ok(()));
            }

            let frame = ready!(Pin::new(&mut self.body).poll_frame(cx));
            if let Err(error) = self.queue(frame) {
                return Poll::Ready(Err(error));
            }
        }
    }
}

/// Reads response heads until a final one, skipping interim 1xx responses.
fn poll_read_head(
    stream: &mut TcpStream,
    buf: &mut BytesMut,
    request: &Sent<'_>,
    cx: &mut Context<'_>,
) -> Poll<Result<ResponseHead, ExchangeError>> {
    loop {
        if !buf.is_empty() {
            match parse_head(buf, request)? {
                Parsed::Partial => {}
                Parsed::Interim => continue,
                Parsed::Final(head) => return Poll::Ready(Ok(head)),
            }
        }
        if buf.len() >= MAX_HEAD_BYTES {
            return Poll::Ready(Err(ExchangeError::HeadTooLarge));
        }

        let nothing_yet = buf.is_empty();
        let read = ready!(poll_read_more(stream, buf, READ_SIZE, cx)).map_err(|error| {
            if nothing_yet {
                ExchangeError::Reset(error)
            } else {
                ExchangeError::Io(error)
            }
        })?;
        if read == 0 {
            return Poll::Ready(Err(if buf.is_empty() {
                ExchangeError::Closed
            } else {
                ExchangeError::InvalidResponse("connection closed inside the response head")
            }));
        }
    }
}

enum Parsed {
    Partial,
    /// A 1xx response other than an expected 101, taken from the buffer.
    Interim,
    Final(ResponseHead),
}

/// Parses a response head at the front of `buf`, taking it from the buffer when whole.
///
/// Hop-by-hop fields (RFC 9110 section 7.6.1) are read for framing and keep-alive and
/// left out of the returned map, except in a 101 response, whose handshake must reach
/// the client. Header values are slices of the head's bytes, not copies.
fn parse_head(buf: &mut BytesMut, request: &Sent<'_>) -> Result<Parsed, ExchangeError> {
    let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut parsed = httparse::Response::new(&mut fields);
    let len = match parsed.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(Parsed::Partial),
        Err(error) => return Err(ExchangeError::InvalidHead(error)),
    };

    let code = parsed.code.unwrap_or_default();
    let status = StatusCode::from_u16(code).map_err(|_| ExchangeError::InvalidResponse("invalid status code"))?;
    if status.is_informational() && !(status == StatusCode::SWITCHING_PROTOCOLS && request.upgrade) {
        if status == StatusCode::SWITCHING_PROTOCOLS {
            return Err(ExchangeError::InvalidResponse("101 without an upgrade request"));
        }
        buf.advance(len);
        return Ok(Parsed::Interim);
    }

    // One pass names every field and reads the framing and connection fields. Names
    // listed in `Connection` are marked afterwards, since they may come first.
    let base = buf.as_ptr() as usize;
    let mut facts = HeadFacts::default();
    let mut fields = Vec::with_capacity(parsed.headers.len());
    for field in parsed.headers.iter() {
        let name = HeaderName::from_bytes(field.name.as_bytes())
            .map_err(|_| ExchangeError::InvalidResponse("invalid header name"))?;
        let hop_by_hop = facts.read(&name, field.value)?;
        let start = field.value.as_ptr() as usize - base;
        fields.push((name, start, start + field.value.len(), hop_by_hop));
    }
    for listed in &facts.listed {
        for field in fields
            .iter_mut()
            .filter(|field| field.0.as_str().as_bytes().eq_ignore_ascii_case(listed))
        {
            field.3 = true;
        }
    }

    let framing = facts.framing(request.method, status)?;
    let switching = status == StatusCode::SWITCHING_PROTOCOLS;
    let keep_alive = framing != Framing::Close
        && !switching
        && if parsed.version == Some(0) {
            facts.keep_alive
        } else {
            !facts.close
        };
    drop(facts);
    let head = buf.split_to(len).freeze();

    let mut headers = HeaderMap::with_capacity(fields.len());
    for (name, start, end, hop_by_hop) in fields {
        if hop_by_hop && !switching {
            continue;
        }
        if framing == Framing::Chunked && name == header::CONTENT_LENGTH {
            continue;
        }
        let value = HeaderValue::from_maybe_shared(head.slice(start..end))
            .map_err(|_| ExchangeError::InvalidResponse("invalid header value"))?;
        headers.append(name, value);
    }

    let mut response = Response::new(());
    *response.status_mut() = status;
    *response.headers_mut() = headers;
    Ok(Parsed::Final(ResponseHead {
        response,
        framing,
        keep_alive,
        unsent_body: None,
    }))
}

/// Framing and connection facts read from a response head.
#[derive(Debug, Default)]
struct HeadFacts<'h> {
    /// `Connection: close` was sent.
    close: bool,
    /// `Connection: keep-alive` was sent (what keeps an HTTP/1.0 response's connection).
    keep_alive: bool,
    /// Transfer-Encoding was sent, and whether it is exactly `chunked`.
    transfer_encoding: Option<bool>,
    content_length: Option<u64>,
    /// Other names listed in `Connection`, hop-by-hop too.
    listed: Vec<&'h [u8]>,
}

fn comma_items(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value
        .split(|&byte| byte == b',')
        .map(<[u8]>::trim_ascii)
        .filter(|item| !item.is_empty())
}

impl<'h> HeadFacts<'h> {
    /// Reads one field and returns whether it is hop-by-hop by its name alone.
    fn read(&mut self, name: &HeaderName, value: &'h [u8]) -> Result<bool, ExchangeError> {
        if name == header::CONNECTION {
            for token in comma_items(value) {
                if token.eq_ignore_ascii_case(b"close") {
                    self.close = true;
                } else if token.eq_ignore_ascii_case(b"keep-alive") {
                    self.keep_alive = true;
                } else {
                    self.listed.push(token);
                }
            }
            return Ok(true);
        }
        if name == header::TRANSFER_ENCODING {
            // Only plain chunked is relayed, because a client would take bytes in another
            // coding (such as gzip) for the body itself.
            let mut codings = comma_items(value);
            let chunked = codings
                .next()
                .is_some_and(|coding| coding.eq_ignore_ascii_case(b"chunked"))
                && codings.next().is_none()
                && self.transfer_encoding.is_none();
            self.transfer_encoding = Some(chunked);
            return Ok(true);
        }
        if name == header::CONTENT_LENGTH {
            if comma_items(value).next().is_none() {
                return Err(ExchangeError::InvalidResponse("invalid Content-Length"));
            }
            for item in comma_items(value) {
                let length = std::str::from_utf8(item)
                    .ok()
                    .filter(|text| text.bytes().all(|byte| byte.is_ascii_digit()))
                    .and_then(|text| text.parse::<u64>().ok())
                    .ok_or(ExchangeError::InvalidResponse("invalid Content-Length"))?;
                if self.content_length.is_some_and(|seen| seen != length) {
                    return Err(ExchangeError::InvalidResponse("conflicting Content-Length values"));
                }
                self.content_length = Some(length);
            }
            return Ok(false);
        }
        Ok(name == header::TE
            || name == header::TRAILER
            || name == header::UPGRADE
            || name == KEEP_ALIVE
            || name == PROXY_CONNECTION)
    }

    /// Finds how the body ends (RFC 9112 section 6.3).
    fn framing(&self, method: &Method, status: StatusCode) -> Result<Framing, ExchangeError> {
        if method == Method::HEAD
            || status.is_informational()
            || status == StatusCode::NO_CONTENT
            || status == StatusCode::NOT_MODIFIED
        {
            return Ok(Framing::Empty);
        }
        match (self.transfer_encoding, self.content_length) {
            (Some(true), _) => Ok(Framing::Chunked),
            (Some(false), _) => Err(ExchangeError::InvalidResponse("unsupported Transfer-Encoding")),
            (None, Some(0)) => Ok(Framing::Empty),
            (None, Some(length)) => Ok(Framing::Length(length)),
            (None, None) => Ok(Framing::Close),
        }
    }
}

#[derive(Debug)]
enum BodyState {
    Length(u64),
    Chunked(Decoder),
    Close,
    Done,
}

/// A response body read straight from the upstream connection it arrives on.
#[derive(Debug)]
pub struct UpstreamBody {
    lease: Option<Lease>,
    state: BodyState,
    keep_alive: bool,
    unsent_body: Option<Box<BodySender>>,
}

fn unexpected_eof() -> io::Error {
    io::Error::new(
        io::ErrorKind::UnexpectedEof,
        "upstream closed the connection inside the response body",
    )
}

impl UpstreamBody {
    pub fn new(lease: Lease, framing: Framing, keep_alive: bool, unsent_body: Option<Box<BodySender>>) -> Self {
        let state = match framing {
            Framing::Empty | Framing::Length(0) => BodyState::Done,
            Framing::Length(length) => BodyState::Length(length),
            Framing::Chunked => BodyState::Chunked(Decoder::default()),
            Framing::Close => BodyState::Close,
        };
        UpstreamBody {
            lease: Some(lease),
            state,
            keep_alive,
            unsent_body,
        }
    }

    /// Returns the connection to its pool if the body ended cleanly and nothing
    /// unasked follows it. Otherwise it closes the connection.
    pub fn release(&mut self) {
        let Some(lease) = self.lease.take() else {
            return;
        };
        let sent = self.unsent_body.as_ref().is_none_or(|sending| sending.is_done());
        if matches!(self.state, BodyState::Done) && self.keep_alive && sent && lease.connection.read_buf.is_empty() {
            lease.release();
        }
    }

    /// Closes the connection, for a body that did not end cleanly.
    pub fn discard(&mut self) {
        self.lease = None;
    }

    /// Counts a body that did not arrive within writeTimeout against its target.
    pub fn record_timeout(&self) {
        if let Some(lease) = &self.lease {
            lease.stats.timeouts.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Reads more bytes into `buf`, with room for at least `want`, and returns how many.
fn poll_read_more(
    stream: &mut TcpStream,
    buf: &mut BytesMut,
    want: usize,
    cx: &mut Context<'_>,
) -> Poll<io::Result<usize>> {
    buf.reserve(want);
    tokio_util::io::poll_read_buf(Pin::new(stream), cx, buf)
}

/// Reads the next part of a response body from its connection.
fn poll_read_body(
    state: &mut BodyState,
    connection: &mut UpstreamConnection,
    cx: &mut Context<'_>,
) -> Poll<Option<io::Result<Frame<Bytes>>>> {
    loop {
        match state {
            BodyState::Done => return Poll::Ready(None),
            BodyState::Length(left) => {
                if connection.read_buf.is_empty() {
                    let want = (*left).min(MAX_READ as u64) as usize;
                    if ready!(poll_read_more(
                        &mut connection.stream,
                        &mut connection.read_buf,
                        want,
                        cx
                    ))? == 0
                    {
                        return Poll::Ready(Some(Err(unexpected_eof())));
                    }
                }
                let take = (*left).min(connection.read_buf.len() as u64);
                let data = connection.read_buf.split_to(take as usize).freeze();
                *left -= take;
                if *left == 0 {
                    *state = BodyState::Done;
                }
                return Poll::Ready(Some(Ok(Frame::data(data))));
            }
            BodyState::Close => {
                if connection.read_buf.is_empty()
                    && ready!(poll_read_more(
                        &mut connection.stream,
                        &mut connection.read_buf,
                        READ_SIZE,
                        cx
                    ))? == 0
                {
                    *state = BodyState::Done;
                    return Poll::Ready(None);
                }
                let data = connection.read_buf.split().freeze();
                return Poll::Ready(Some(Ok(Frame::data(data))));
            }
            BodyState::Chunked(decoder) => match decoder.decode(&mut connection.read_buf, MAX_READ)? {
                Decoded::Data(data) => return Poll::Ready(Some(Ok(Frame::data(data)))),
                Decoded::End => *state = BodyState::Done,
                Decoded::NeedMore => {
                    if ready!(poll_read_more(
                        &mut connection.stream,
                        &mut connection.read_buf,
                        READ_SIZE,
                        cx
                    ))? == 0
                    {
                        return Poll::Ready(Some(Err(unexpected_eof())));
                    }
                }
            },
        }
    }
}

/// Counts a response body failure against its target and names the upstream in it.
fn upstream_failure(lease: &Lease, error: io::Error) -> io::Error {
    lease.stats.other_errors.fetch_add(1, Ordering::Relaxed);
    match lease.connection.stream.peer_addr() {
        Ok(addr) => io::Error::new(error.kind(), format!("upstream {addr}: {error}")),
        Err(_) => error,
    }
}

/// The cause of a response body that stopped before its end.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    /// The upstream broke the body, such as by closing the connection early.
    #[error("{0}")]
    Upstream(io::Error),
    /// The rest of the client's request body could not be read.
    #[error("{0}")]
    Client(ExchangeError),
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = self.get_mut();
        let Some(lease) = this.lease.as_mut() else {
            return Poll::Ready(None);
        };
        let connection = &mut lease.connection;

        if let Some(sending) = this.unsent_body.as_mut().filter(|sending| !sending.is_done()) {
            match sending.poll_send(&mut connection.stream, cx) {
                Poll::Ready(Ok(())) | Poll::Pending => {}
                // The upstream stopped reading the request, but its response may still come.
                Poll::Ready(Err(ExchangeError::Io(_))) => {
                    sending.stop();
                    this.keep_alive = false;
                }
                Poll::Ready(Err(error)) => {
                    this.lease = None;
                    return Poll::Ready(Some(Err(BodyError::Client(error))));
                }
            }
        }

        match poll_read_body(&mut this.state, connection, cx) {
            Poll::Ready(Some(Err(error))) => {
                let error = upstream_failure(lease, error);
                this.lease = None;
                Poll::Ready(Some(Err(BodyError::Upstream(error))))
            }
            Poll::Ready(Some(Ok(frame))) => Poll::Ready(Some(Ok(frame))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.lease.is_none() || matches!(self.state, BodyState::Done)
    }

    fn size_hint(&self) -> SizeHint {
        match self.state {
            BodyState::Length(left) => SizeHint::with_exact(left),
            BodyState::Done => SizeHint::with_exact(0),
            BodyState::Chunked(_) | BodyState::Close => SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(fields: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in fields {
            map.append(*name, HeaderValue::from_static(value));
        }
        map
    }

    fn parse(head: &'static [u8], method: &Method) -> Result<ResponseHead, ExchangeError> {
        let fields = HeaderMap::new();
        let request = Sent {
            method,
            target: "/",
            headers: &fields,
            forwarding: None,
            upgrade: false,
        };
        match parse_head(&mut BytesMut::from(head), &request)? {
            Parsed::Final(head) => Ok(head),
            _ => panic!("no final head in {:?}", String::from_utf8_lossy(head)),
        }
    }

    #[test]
    fn framing_follows_rfc_9112() {
        let get = Method::GET;
        let framing_of = |head| parse(head, &get).map(|parsed| parsed.framing);

        let both = parse(
            b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\nTransfer-Encoding: chunked\r\n\r\n",
            &get,
        )
        .unwrap();
        assert_eq!(both.framing, Framing::Chunked);
        assert!(both.response.headers().is_empty(), "{:?}", both.response.headers());

        assert_eq!(
            framing_of(b"HTTP/1.1 200 OK\r\nContent-Length: 7, 7\r\nContent-Length: 7\r\n\r\n").unwrap(),
            Framing::Length(7)
        );
        assert_eq!(framing_of(b"HTTP/1.1 200 OK\r\n\r\n").unwrap(), Framing::Close);
        assert_eq!(
            parse(b"HTTP/1.1 200 OK\r\nContent-Length: 7\r\n\r\n", &Method::HEAD)
                .unwrap()
                .framing,
            Framing::Empty
        );
        assert_eq!(
            framing_of(b"HTTP/1.1 304 Not Modified\r\nContent-Length: 7\r\n\r\n").unwrap(),
            Framing::Empty
        );

        for bad in [
            &b"HTTP/1.1 200 OK\r\nContent-Length: 7, 8\r\n\r\n"[..],
            b"HTTP/1.1 200 OK\r\nContent-Length: +7\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: \r\n\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
        ] {
            assert!(framing_of(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn hop_by_hop_fields_are_read_and_dropped() {
        let head = parse(
            b"HTTP/1.1 200 OK\r\nConnection: X-Bar, close\r\nX-Bar: 1\r\nKeep-Alive: timeout=5\r\n\
              X-Kept: 2\r\nContent-Length: 0\r\n\r\n",
            &Method::GET,
        )
        .unwrap();
        let names: Vec<&str> = head.response.headers().keys().map(HeaderName::as_str).collect();
        assert_eq!(names, ["x-kept", "content-length"]);
        assert!(!head.keep_alive);

        let old = parse(
            b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 1\r\n\r\n",
            &Method::GET,
        )
        .unwrap();
        assert!(old.keep_alive);
        let old = parse(b"HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\n", &Method::GET).unwrap();
        assert!(!old.keep_alive);
    }

    #[test]
    fn encode_head_origin_form_chunked() {
        let fields = headers(&[("host", "app.test"), ("x-a", "1"), ("x-a", "2")]);
        let request = Sent {
            method: &Method::POST,
            target: "/p?q=1",
            headers: &fields,
            forwarding: None,
            upgrade: false,
        };
        let mut out = Vec::new();
        encode_head(&request, true, &mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "POST /p?q=1 HTTP/1.1\r\nhost: app.test\r\nx-a: 1\r\nx-a: 2\r\ntransfer-encoding: chunked\r\n\r\n"
        );
    }

    #[test]
    fn parse_head_keeps_buffer_rest() {
        let fields = HeaderMap::new();
        let request = Sent {
            method: &Method::GET,
            target: "/",
            headers: &fields,
            forwarding: None,
            upgrade: false,
        };
        let mut buf = BytesMut::from(&b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: close\r\n\r\nabc"[..]);
        let Parsed::Final(head) = parse_head(&mut buf, &request).unwrap() else {
            panic!("the head was not parsed");
        };
        assert_eq!(head.response.status(), StatusCode::OK);
        assert_eq!(head.response.headers()[header::CONTENT_LENGTH], "3");
        assert_eq!(head.framing, Framing::Length(3));
        assert!(!head.keep_alive);
        assert_eq!(&buf[..], b"abc");

        let mut partial = BytesMut::from(&b"HTTP/1.1 200 OK\r\nContent-"[..]);
        assert!(matches!(parse_head(&mut partial, &request).unwrap(), Parsed::Partial));
    }
}
