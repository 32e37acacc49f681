//! The lifecycle of one client connection and its deadlines.
//!
//! A connection is in one of three phases: reading a request head, handling requests,
//! or idle between requests. The deadlines follow Go's http.Server, whose timeouts the
//! config keys carry:
//! - readTimeout runs from the first byte of a request head (or from accept, for the
//!   first request) until the head is read. The body wrapper gives the request body the
//!   same deadline. A client that dribbles its head is cut off, which frees its slot.
//! - writeTimeout runs from the request head being read until the response is written.
//! - idleTimeout runs while a keep-alive connection waits for its next request.
//!
//! hyper's own header timer starts when a connection begins waiting for a head, so it
//! would cut idle keep-alive connections at readTimeout. It is disabled in favour of
//! these phases, which the I/O wrapper and the request path update with a few atomics.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use http::HeaderValue;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_util::sync::CancellationToken;

use crate::clock;
use crate::guard::conn_limit::ConnSlot;
use crate::metrics::Reason;
use crate::proxy;
use crate::proxy::headers::ip_header;
use crate::snapshot::Timeouts;
use crate::state::State;

/// How often a connection with requests in flight rechecks its phase.
const ACTIVE_RECHECK: Duration = Duration::from_secs(1);

/// Extra time after writeTimeout before a stuck HTTP/1 connection is closed, so the
/// request's own 504 can still be written.
const WRITE_GRACE: Duration = Duration::from_secs(1);

const PHASE_HEAD: u8 = 0;
const PHASE_ACTIVE: u8 = 1;
const PHASE_IDLE: u8 = 2;

/// Facts about one client connection, shared with the requests on it.
#[derive(Debug)]
pub struct Connection {
    pub peer: SocketAddr,
    /// The peer's IP as header text, formatted once for X-Forwarded-For and X-Real-IP.
    pub peer_header: HeaderValue,
    pub local: SocketAddr,
    pub tls: bool,
    phase: AtomicU8,
    /// Clock time the current phase began.
    since: AtomicU64,
    in_flight: AtomicU32,
    http2: AtomicBool,
    /// Cancelled to ask the connection to finish its requests and close, such as when
    /// limitMaxConn needs room for a new connection. Listeners make it a child of their
    /// drain token, so the connection task waits on one token for both.
    close: CancellationToken,
}

/// The deadline that a connection's check found expired.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expiry {
    /// Idle past idleTimeout: close gracefully.
    Idle,
    /// A request head took longer than readTimeout.
    Head,
    /// An HTTP/1 response took longer than writeTimeout.
    Write,
}

impl Connection {
    pub fn new(peer: SocketAddr, local: SocketAddr, tls: bool, close: CancellationToken) -> Self {
        Connection {
            peer,
            peer_header: ip_header(crate::client_ip::canonical_ip(peer.ip())),
            local,
            tls,
            phase: AtomicU8::new(PHASE_HEAD),
            since: AtomicU64::new(clock::now_ms()),
            in_flight: AtomicU32::new(0),
            http2: AtomicBool::new(false),
            close,
        }
    }

    /// Marks a request as received; the connection is now handling requests.
    pub fn request_started(&self, http2: bool) {
        if http2 && !self.http2.load(Ordering::Relaxed) {
            self.http2.store(true, Ordering::Relaxed);
        }
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        self.since.store(clock::now_ms(), Ordering::Relaxed);
        self.phase.store(PHASE_ACTIVE, Ordering::Release);
    }

    /// Marks a response as finished; with none left the connection is idle.
    pub fn request_finished(&self) {
        if self.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.since.store(clock::now_ms(), Ordering::Relaxed);
            self.phase.store(PHASE_IDLE, Ordering::Release);
        }
    }

    /// Called on every read that returned bytes: an idle HTTP/1 connection that
    /// receives bytes has started its next request head. HTTP/2 connections also
    /// receive control frames while idle, so they stay idle until a request arrives.
    fn bytes_received(&self) {
        if self.phase.load(Ordering::Relaxed) == PHASE_IDLE && !self.http2.load(Ordering::Relaxed) {
            self.since.store(clock::now_ms(), Ordering::Relaxed);
            self.phase.store(PHASE_HEAD, Ordering::Release);
        }
    }

    pub fn is_idle(&self) -> bool {
        self.phase.load(Ordering::Acquire) == PHASE_IDLE
    }

    /// Returns the clock time an idle connection became idle, or `None` when it is
    /// busy or already asked to close.
    pub fn idle_since(&self) -> Option<u64> {
        let since = self.since.load(Ordering::Relaxed);
        (self.is_idle() && !self.close.is_cancelled()).then_some(since)
    }

    /// Asks the connection to finish its in-flight requests and close.
    pub fn request_close(&self) {
        self.close.cancel();
    }

    pub fn close_requested(&self) -> bool {
        self.close.is_cancelled()
    }

    /// Returns when to check next, and what expires then.
    fn next_deadline(&self, timeouts: &Timeouts, now: u64) -> (u64, Option<Expiry>) {
        let since = self.since.load(Ordering::Relaxed);
        let after = |limit: Option<Duration>| limit.map(|d| since + clock::duration_ms(d));
        let recheck = now + clock::duration_ms(ACTIVE_RECHECK);
        match self.phase.load(Ordering::Acquire) {
            PHASE_HEAD => match after(timeouts.read) {
                Some(at) => (at, Some(Expiry::Head)),
                None => (recheck, None),
            },
            PHASE_IDLE => match after(timeouts.idle) {
                Some(at) => (at, Some(Expiry::Idle)),
                None => (recheck, None),
            },
            _ => match after(timeouts.write.map(|d| d + WRITE_GRACE)) {
                Some(at) if !self.http2.load(Ordering::Relaxed) => {
                    (at.min(recheck), (at <= recheck).then_some(Expiry::Write))
                }
                _ => (recheck, None),
            },
        }
    }
}

/// The client socket (plain or TLS) with read tracking and the connection slot it
/// occupies. The slot is released when the socket is dropped, also after an upgrade
/// moved the socket out of hyper.
pub struct TrackedIo<T> {
    inner: T,
    conn: Arc<Connection>,
    _slot: ConnSlot,
}

impl<T> TrackedIo<T> {
    pub fn new(inner: T, conn: Arc<Connection>, slot: ConnSlot) -> Self {
        TrackedIo {
            inner,
            conn,
            _slot: slot,
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for TrackedIo<T> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let result = Pin::new(&mut this.inner).poll_read(cx, buf);
        if matches!(result, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            this.conn.bytes_received();
        }
        result
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for TrackedIo<T> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// Serves HTTP/1.1 or HTTP/2 (prior knowledge or ALPN) on one connection until it
/// closes, its deadlines expire, or `drain` is cancelled.
pub async fn serve<T>(io: TrackedIo<T>, state: Arc<State>, drain: CancellationToken)
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let conn = io.conn.clone();
    let snapshot = state.snapshot.load_full();
    let timeouts = snapshot.timeouts;
    let drain_limit = snapshot.config.core.shutdown_timeout;

    let service = {
        let state = state.clone();
        let conn = conn.clone();
        service_fn(move |request| proxy::handle(state.clone(), conn.clone(), request))
    };
    // An owned connection lets the snapshot go, so a long-lived connection does not keep
    // every configuration it has seen alive.
    let connection = snapshot
        .http
        .serve_connection_with_upgrades(TokioIo::new(io), service)
        .into_owned();
    drop(snapshot);
    tokio::pin!(connection);

    let timer = tokio::time::sleep(Duration::ZERO);
    tokio::pin!(timer);
    // Set once a graceful shutdown was requested: the time to close regardless.
    let mut close_by: Option<tokio::time::Instant> = None;

    loop {
        let expiry = match close_by {
            Some(at) => {
                timer.as_mut().reset(at);
                None
            }
            None => {
                let (at, expiry) = conn.next_deadline(&timeouts, clock::now_ms());
                timer.as_mut().reset(clock::instant_of(at).into());
                expiry
            }
        };

        tokio::select! {
            // The connection is polled first, because it causes nearly every wakeup.
            biased;

            result = connection.as_mut() => {
                if let Err(error) = result {
                    log_connection_error(&state, &conn, error.as_ref());
                }
                return;
            }
            () = conn.close.cancelled(), if close_by.is_none() => {
                connection.as_mut().graceful_shutdown();
                if drain.is_cancelled() {
                    close_by = Some(tokio::time::Instant::now() + drain_limit);
                } else {
                    tracing::debug!(peer = %conn.peer, "closing an idle connection to make room under limitMaxConn");
                    close_by = Some(tokio::time::Instant::now() + WRITE_GRACE);
                }
            }
            () = &mut timer => {
                if close_by.is_some() {
                    tracing::debug!(peer = %conn.peer, "closing a connection that did not finish draining in time");
                    return;
                }
                // A request may have moved the phase since the timer was set.
                let Some(expiry) = expiry else { continue };
                let (at, again) = conn.next_deadline(&timeouts, clock::now_ms());
                if again != Some(expiry) || at > clock::now_ms() {
                    continue;
                }
                match expiry {
                    Expiry::Idle => {
                        connection.as_mut().graceful_shutdown();
                        close_by = Some(tokio::time::Instant::now() + WRITE_GRACE);
                    }
                    Expiry::Head => {
                        state.metrics.reject(Reason::RequestTimeout);
                        tracing::debug!(peer = %conn.peer, "request head not received within readTimeout; closing");
                        return;
                    }
                    Expiry::Write => {
                        tracing::debug!(peer = %conn.peer, "response not written within writeTimeout; closing");
                        return;
                    }
                }
            }
        }
    }
}

fn log_connection_error(state: &State, conn: &Connection, error: &(dyn std::error::Error + 'static)) {
    if let Some(hyper_error) = error.downcast_ref::<hyper::Error>() {
        if hyper_error.is_parse_too_large() {
            state.metrics.reject(Reason::HeaderTooLarge);
            tracing::info!(peer = %conn.peer, "request head larger than maxHeaderBytes; responded 431");
            return;
        }
        if hyper_error.is_parse() {
            state.metrics.reject(Reason::BadRequest);
            tracing::info!(peer = %conn.peer, error = %hyper_error, "malformed request; responded 400");
            return;
        }
    }
    tracing::debug!(peer = %conn.peer, error = %error, "connection ended with an error");
}
