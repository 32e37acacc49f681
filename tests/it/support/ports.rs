//! Loopback ports for tests that must name a port before anything listens on it, such
//! as the configuration of a gateway binary or the responder URL in a certificate.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// Returns a loopback port that was free a moment ago; the gap until it is bound again
/// is short.
pub fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

/// Returns a free loopback address, as [`free_port`] does.
pub fn free_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], free_port()))
}

/// Waits up to 10 s until something accepts connections on `addr`.
pub async fn wait_listening(addr: SocketAddr) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while tokio::net::TcpStream::connect(addr).await.is_err() {
        assert!(Instant::now() < deadline, "nothing listens on {addr}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
