//! Listeners: binding, the accept loop, and live changes of the listen addresses.
//!
//! Sockets use SO_REUSEPORT, so a changed listener can be bound before the old one
//! closes and a new binary can start beside an old one. A removed listener stops
//! accepting at once; its open connections finish their in-flight requests and close.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use crate::connection::{self, Connection, TrackedIo};
use crate::metrics::Reason;
use crate::state::State;
use crate::tls;

/// Pending-connection queue length passed to listen(2).
const BACKLOG: i32 = 4096;

/// Pause after the process ran out of file descriptors, so accept does not spin.
const FD_EXHAUSTED_BACKOFF: Duration = Duration::from_millis(100);

const OVER_LIMIT_RESPONSE: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\n\
content-type: text/plain; charset=utf-8\r\n\
content-length: 45\r\n\
connection: close\r\n\
\r\n\
503 Service Unavailable: too many connections\n";

/// The protocol a listener serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ListenerKind {
    Http,
    Https,
}

impl std::fmt::Display for ListenerKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ListenerKind::Http => "http",
            ListenerKind::Https => "https",
        })
    }
}

/// How to treat an address that another socket already listens on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sharing {
    /// Fail, as nginx does: SO_REUSEPORT alone would let a second process share the
    /// port silently, and the kernel would split connections between the two.
    Exclusive,
    /// Bind beside it: a new binary starting next to the old one for an upgrade.
    Shared,
}

/// Fails with `AddrInUse` when a socket already listens on `addr`.
///
/// The probe binds without SO_REUSEPORT, which the kernel refuses while any socket
/// listens there, with or without that option.
pub fn ensure_unused(addr: SocketAddr) -> io::Result<()> {
    if addr.port() == 0 {
        return Ok(());
    }
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.bind(&addr.into()).map_err(|error| {
        if error.kind() == io::ErrorKind::AddrInUse {
            io::Error::new(
                error.kind(),
                "address already in use by another process; if it is minigateway, stop it with \
                 `minigateway -s stop`, or start with --upgrade to run beside it",
            )
        } else {
            error
        }
    })
}

/// Binds a TCP listener with SO_REUSEADDR and SO_REUSEPORT.
pub fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(BACKLOG)?;
    TcpListener::from_std(socket.into())
}

struct Handle {
    bound: SocketAddr,
    /// Stops the accept loop.
    stop: CancellationToken,
    /// Asks this listener's connections to finish and close.
    drain: CancellationToken,
}

/// The open listeners, keyed by configured address and kind.
#[derive(Default)]
pub struct Listeners {
    open: Mutex<HashMap<(SocketAddr, ListenerKind), Handle>>,
}

/// Listeners bound by [`Listeners::prepare`] and not serving yet.
pub struct PreparedListeners {
    wanted: Vec<(SocketAddr, ListenerKind)>,
    fresh: Vec<(SocketAddr, ListenerKind, TcpListener)>,
}

/// One open listener, for status reports.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ListenerInfo {
    pub configured: SocketAddr,
    pub bound: SocketAddr,
    pub kind: ListenerKind,
}

impl Listeners {
    /// Binds the addresses of `wanted` that are not open yet, without serving them.
    ///
    /// If one fails to bind, the ones bound here are dropped and nothing changed.
    pub fn prepare(&self, wanted: &[(SocketAddr, ListenerKind)], sharing: Sharing) -> io::Result<PreparedListeners> {
        let open = self.open.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut fresh = Vec::new();
        for &(addr, kind) in wanted {
            if open.contains_key(&(addr, kind)) {
                continue;
            }
            let bind_error = |error: io::Error| {
                io::Error::new(error.kind(), format!("failed to bind {kind} listener {addr}: {error}"))
            };
            // An address this gateway already listens on (moving from HTTP to HTTPS) is shared
            // with itself only.
            let held = open.keys().any(|(open_addr, _)| *open_addr == addr);
            if sharing == Sharing::Exclusive && !held {
                ensure_unused(addr).map_err(bind_error)?;
            }
            let listener = bind(addr).map_err(bind_error)?;
            fresh.push((addr, kind, listener));
        }
        Ok(PreparedListeners {
            wanted: wanted.to_vec(),
            fresh,
        })
    }

    /// Starts serving the listeners `prepared` bound, then stops accepting on those no
    /// longer wanted, whose connections drain.
    pub fn commit(&self, state: &Arc<State>, prepared: PreparedListeners) {
        let mut open = self.open.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        for (addr, kind, listener) in prepared.fresh {
            let Ok(bound) = listener.local_addr() else { continue };
            let stop = state.shutdown.child_token();
            let drain = state.shutdown.child_token();
            tracing::info!(address = %bound, %kind, "listening");
            tokio::spawn(accept_loop(listener, state.clone(), kind, stop.clone(), drain.clone()));
            open.insert((addr, kind), Handle { bound, stop, drain });
        }

        let removed: Vec<_> = open
            .keys()
            .filter(|key| !prepared.wanted.contains(key))
            .copied()
            .collect();
        for key in removed {
            if let Some(handle) = open.remove(&key) {
                tracing::info!(address = %handle.bound, kind = %key.1, "listener removed; draining its connections");
                handle.stop.cancel();
                handle.drain.cancel();
            }
        }
    }

    /// Returns the open listeners in address order.
    pub fn list(&self) -> Vec<ListenerInfo> {
        let open = self.open.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut list: Vec<ListenerInfo> = open
            .iter()
            .map(|(&(configured, kind), handle)| ListenerInfo {
                configured,
                bound: handle.bound,
                kind,
            })
            .collect();
        list.sort_by_key(|info| (info.configured, info.kind as u8));
        list
    }

    /// Stops every accept loop; connections are drained through the shutdown token.
    pub fn stop_accepting(&self) {
        let open = self.open.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        for handle in open.values() {
            handle.stop.cancel();
        }
    }
}

fn is_fd_exhaustion(error: &io::Error) -> bool {
    matches!(
        error.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}

/// Sends 503 to a connection past limitMaxConn and closes it without blocking the loop.
fn reject_over_limit(stream: TcpStream, kind: ListenerKind) {
    if kind == ListenerKind::Http {
        // A fresh socket's send buffer is empty, so this short write completes at once.
        let _ = stream.try_write(OVER_LIMIT_RESPONSE);
    }
    let _ = socket2::SockRef::from(&stream).shutdown(std::net::Shutdown::Write);

    // Closing a socket with unread bytes sends a reset, which can destroy the 503 before
    // the client reads it, so discard what already arrived (without waiting for more).
    let mut discard = [0u8; 4096];
    for _ in 0..4 {
        match stream.try_read(&mut discard) {
            Ok(n) if n > 0 => {}
            _ => break,
        }
    }
}

async fn accept_loop(
    listener: TcpListener,
    state: Arc<State>,
    kind: ListenerKind,
    stop: CancellationToken,
    drain: CancellationToken,
) {
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = stop.cancelled() => return,
        };
        let (stream, peer) = match accepted {
            Ok(pair) => pair,
            Err(error) if is_fd_exhaustion(&error) => {
                tracing::warn!(error = %error, "accept failed: out of file descriptors; pausing {FD_EXHAUSTED_BACKOFF:?}");
                tokio::time::sleep(FD_EXHAUSTED_BACKOFF).await;
                continue;
            }
            Err(error) => {
                tracing::debug!(error = %error, "accept failed");
                continue;
            }
        };

        let local = stream
            .local_addr()
            .unwrap_or_else(|_| listener.local_addr().expect("listener has an address"));
        let conn = Arc::new(Connection::new(
            peer,
            local,
            kind == ListenerKind::Https,
            drain.child_token(),
        ));
        let Some(slot) = state.connections.try_acquire(&conn) else {
            state.metrics.reject(Reason::ConnectionLimit);
            tracing::debug!(client = %peer.ip(), "connection rejected: limitMaxConn reached and no connection is idle");
            reject_over_limit(stream, kind);
            continue;
        };
        state
            .metrics
            .connections_total
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);

        let _ = stream.set_nodelay(true);
        match kind {
            ListenerKind::Http => {
                let io = TrackedIo::new(stream, conn, slot);
                state.tasks.spawn(connection::serve(io, state.clone(), drain.clone()));
            }
            ListenerKind::Https => {
                state
                    .tasks
                    .spawn(tls::handshake::serve(stream, conn, slot, state.clone(), drain.clone()));
            }
        }
    }
}
