//! Upgraded connections (WebSocket and other `Upgrade` protocols), spliced byte for byte.
//!
//! writeTimeout does not apply once a connection is upgraded; instead the splice ends
//! after idleTimeout passes with no bytes in either direction.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};

use crate::clock;
use crate::state::State;
use crate::upstream::pool::UpstreamConnection;

/// Records the time of the last byte read on either side of a splice.
struct ActivityIo<'a, T> {
    inner: T,
    last_read: &'a AtomicU64,
}

impl<T: AsyncRead + Unpin> AsyncRead for ActivityIo<'_, T> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let result = Pin::new(&mut this.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            this.last_read.store(clock::now_ms(), Ordering::Relaxed);
        }
        result
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for ActivityIo<'_, T> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// Starts a task that joins the client and the upstream, which has already switched
/// protocols, once the client's side has switched too.
pub fn splice(
    state: &State,
    peer: SocketAddr,
    client: OnUpgrade,
    upstream: UpstreamConnection,
    idle: Option<Duration>,
) {
    state.tasks.spawn(async move {
        let mut client = match client.await {
            Ok(client) => TokioIo::new(client),
            Err(error) => {
                tracing::debug!(client = %peer.ip(), error = %error, "upgrade did not complete");
                return;
            }
        };

        // Bytes the upstream sent right after its 101 response go first.
        if !upstream.read_buf.is_empty() {
            if let Err(error) = client.write_all(&upstream.read_buf).await {
                tracing::debug!(client = %peer.ip(), error = %error, "upgraded connection ended with an error");
                return;
            }
        }

        let last_read = AtomicU64::new(clock::now_ms());
        let mut client = ActivityIo {
            inner: client,
            last_read: &last_read,
        };
        let mut upstream = ActivityIo {
            inner: upstream.stream,
            last_read: &last_read,
        };
        let copy = tokio::io::copy_bidirectional(&mut client, &mut upstream);
        tokio::pin!(copy);

        let Some(idle) = idle else {
            let _ = copy.await;
            return;
        };
        let idle_ms = clock::duration_ms(idle);
        loop {
            let deadline = clock::instant_of(last_read.load(Ordering::Relaxed) + idle_ms);
            tokio::select! {
                result = &mut copy => {
                    if let Err(error) = result {
                        tracing::debug!(client = %peer.ip(), error = %error, "upgraded connection ended with an error");
                    }
                    return;
                }
                () = tokio::time::sleep_until(deadline.into()) => {
                    if last_read.load(Ordering::Relaxed) + idle_ms <= clock::now_ms() {
                        tracing::debug!(client = %peer.ip(), "upgraded connection idle past idleTimeout; closing");
                        return;
                    }
                }
            }
        }
    });
}
