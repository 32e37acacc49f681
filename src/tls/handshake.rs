//! The TLS handshake of an accepted connection, before HTTP is served on it.
//!
//! The handshake runs in the connection's own task, never in the accept loop, with a
//! deadline, so a client that stalls mid-handshake holds only its own connection slot
//! until the deadline and never delays other clients.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use crate::connection::{self, Connection, TrackedIo};
use crate::guard::conn_limit::ConnSlot;
use crate::state::State;

/// Handshake deadline when readTimeout is 0 (no limit on reading requests).
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Runs the TLS handshake with the certificates of the snapshot current when the
/// connection was accepted, then serves HTTP/1.1 or HTTP/2 on the connection.
pub async fn serve(
    stream: TcpStream,
    conn: Arc<Connection>,
    slot: ConnSlot,
    state: Arc<State>,
    drain: CancellationToken,
) {
    let snapshot = state.snapshot.load_full();
    let Some(context) = snapshot.tls.clone() else {
        tracing::debug!(peer = %conn.peer, "HTTPS connection closed: no certificate is configured");
        return;
    };
    let limit = snapshot.timeouts.read.unwrap_or(DEFAULT_HANDSHAKE_TIMEOUT);
    drop(snapshot);

    let handshakes = &state.registry.tls.handshakes;
    let accepted = tokio::select! {
        accepted = tokio::time::timeout(limit, context.acceptor.accept(stream)) => accepted,
        () = drain.cancelled() => return,
    };
    drop(context);
    let stream = match accepted {
        Ok(Ok(stream)) => {
            handshakes.completed.fetch_add(1, Ordering::Relaxed);
            stream
        }
        Ok(Err(error)) => {
            handshakes.failed.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(peer = %conn.peer, error = %error, "TLS handshake failed");
            return;
        }
        Err(_) => {
            handshakes.timed_out.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(peer = %conn.peer, "TLS handshake not completed within {limit:?}; closing");
            return;
        }
    };

    connection::serve(TrackedIo::new(stream, conn, slot), state, drain).await;
}
