//! Upstream connections: a pool of idle HTTP/1.1 connections per upstream address.
//!
//! A request takes an idle connection (the most recently used first) or opens a new one,
//! and the response body hands it back when it ends cleanly. Pools are keyed by the target's
//! address in the registry and reached through the snapshot, so a request never hashes
//! a key to find its pool and reloads keep warm connections. An idle connection is
//! closed after `POOL_IDLE_TIMEOUT`, before common upstream keep-alive timeouts, by
//! the checkout that finds it and by a reaper task that runs every second.

use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::BytesMut;
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::metrics::TargetStats;

/// How long an idle upstream connection stays in the pool.
///
/// Shorter than the keep-alive timeouts of common upstream servers (Node.js and Apache
/// use 5 s), so the gateway closes an idle connection before the upstream does and
/// rarely sends a request into a connection that is being closed.
pub const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(4);

/// Maximum idle connections kept per upstream address.
pub const POOL_MAX_IDLE: usize = 1024;

/// Time allowed to open a TCP connection to an upstream.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// A target's address: a socket address, or a name resolved at each connect.
#[derive(Debug, Clone)]
pub enum TargetAddr {
    Socket(SocketAddr),
    Name { host: String, port: u16 },
}

impl TargetAddr {
    /// Reads the address of an authority such as `127.0.0.1:8080`, `[::1]:80` or
    /// `app.internal`; the port defaults to 80.
    pub fn from_authority(authority: &http::uri::Authority) -> TargetAddr {
        let port = authority.port_u16().unwrap_or(80);
        let host = authority.host().trim_start_matches('[').trim_end_matches(']');
        match host.parse() {
            Ok(ip) => TargetAddr::Socket(SocketAddr::new(ip, port)),
            Err(_) => TargetAddr::Name {
                host: host.to_owned(),
                port,
            },
        }
    }
}

/// Errors that stop an upstream connection from opening.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("failed to resolve {host}: {source}")]
    Resolve { host: String, source: io::Error },
    #[error("connection failed: {0}")]
    Io(#[from] io::Error),
    #[error("connection timed out after {CONNECT_TIMEOUT:?}")]
    TimedOut,
}

async fn connect_tcp(addr: &TargetAddr) -> Result<TcpStream, ConnectError> {
    match addr {
        TargetAddr::Socket(socket) => Ok(TcpStream::connect(socket).await?),
        TargetAddr::Name { host, port } => {
            let addrs = tokio::net::lookup_host((host.as_str(), *port))
                .await
                .map_err(|source| ConnectError::Resolve {
                    host: host.clone(),
                    source,
                })?;
            let mut last = io::Error::new(io::ErrorKind::NotFound, format!("{host} has no address"));
            for socket in addrs {
                match TcpStream::connect(socket).await {
                    Ok(stream) => return Ok(stream),
                    Err(error) => last = error,
                }
            }
            Err(ConnectError::Io(last))
        }
    }
}

/// An open connection to an upstream, with the bytes read from it but not yet used.
#[derive(Debug)]
pub struct UpstreamConnection {
    pub stream: TcpStream,
    pub read_buf: BytesMut,
}

impl UpstreamConnection {
    /// Returns whether an idle connection can carry another request: the upstream has
    /// neither closed it nor sent anything unasked.
    ///
    /// The socket is only read when the runtime saw it become readable, so checking a
    /// quiet connection costs no system call.
    fn is_usable(&self) -> bool {
        if !self.read_buf.is_empty() {
            return false;
        }
        let mut cx = Context::from_waker(Waker::noop());
        match self.stream.poll_read_ready(&mut cx) {
            Poll::Pending => true,
            Poll::Ready(Err(_)) => false,
            Poll::Ready(Ok(())) => {
                let mut byte = [0u8; 1];
                matches!(self.stream.try_read(&mut byte), Err(error) if error.kind() == io::ErrorKind::WouldBlock)
            }
        }
    }
}

/// Opens a connection to `addr`.
pub async fn connect(addr: &TargetAddr) -> Result<UpstreamConnection, ConnectError> {
    let stream = tokio::time::timeout(CONNECT_TIMEOUT, connect_tcp(addr))
        .await
        .map_err(|_| ConnectError::TimedOut)??;
    let _ = stream.set_nodelay(true);
    Ok(UpstreamConnection {
        stream,
        read_buf: BytesMut::new(),
    })
}

struct Idle {
    connection: UpstreamConnection,
    since: Instant,
}

/// The idle connections to one upstream address.
#[derive(Default)]
pub struct ConnectionPool {
    /// Oldest first; requests take from the back, the most recently used.
    idle: Mutex<VecDeque<Idle>>,
}

impl std::fmt::Debug for ConnectionPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectionPool")
            .field("idle", &self.idle_count())
            .finish()
    }
}

impl ConnectionPool {
    /// Takes the most recently used open connection, closing expired ones on the way.
    pub fn checkout(&self) -> Option<UpstreamConnection> {
        let now = Instant::now();
        let mut idle = self.idle.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        while let Some(entry) = idle.pop_back() {
            if now.duration_since(entry.since) < POOL_IDLE_TIMEOUT && entry.connection.is_usable() {
                return Some(entry.connection);
            }
        }
        None
    }

    /// Returns a connection whose response ended, unless the pool is full.
    pub fn checkin(&self, connection: UpstreamConnection) {
        let mut idle = self.idle.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if idle.len() < POOL_MAX_IDLE {
            idle.push_back(Idle {
                connection,
                since: Instant::now(),
            });
        }
    }

    /// Closes idle connections older than `POOL_IDLE_TIMEOUT` or closed by the upstream.
    pub fn prune(&self) {
        let now = Instant::now();
        let mut idle = self.idle.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        idle.retain(|entry| now.duration_since(entry.since) < POOL_IDLE_TIMEOUT && entry.connection.is_usable());
    }

    pub fn idle_count(&self) -> usize {
        self.idle.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).len()
    }
}

/// A connection lent to one request, returned to its pool when the response ends.
#[derive(Debug)]
pub struct Lease {
    pub connection: UpstreamConnection,
    pub pool: Arc<ConnectionPool>,
    /// The counters of the target the connection leads to.
    pub stats: Arc<TargetStats>,
}

impl Lease {
    /// Returns the connection for reuse; dropping a lease instead closes it.
    pub fn release(self) {
        self.pool.checkin(self.connection);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn authority_addresses() {
        let ip: http::uri::Authority = "127.0.0.1:8080".parse().unwrap();
        assert!(
            matches!(TargetAddr::from_authority(&ip), TargetAddr::Socket(a) if a == "127.0.0.1:8080".parse().unwrap())
        );
        let v6: http::uri::Authority = "[::1]".parse().unwrap();
        assert!(matches!(TargetAddr::from_authority(&v6), TargetAddr::Socket(a) if a == "[::1]:80".parse().unwrap()));
        let name: http::uri::Authority = "app.internal:9000".parse().unwrap();
        assert!(
            matches!(TargetAddr::from_authority(&name), TargetAddr::Name { ref host, port: 9000 } if host == "app.internal")
        );
    }
}
