//! Opens many keep-alive connections to a proxy, sends one request on each, then keeps
//! them idle, so a benchmark can measure the proxy's memory per idle connection.
//!
//! Usage: `idle_clients <ADDRESS> <HOST> <CONNECTIONS> <HOLD-SECONDS>`. Prints
//! `ready <N>` once every connection got its response, and exits after the hold time.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn open(addr: SocketAddr, request: &'static [u8]) -> Option<TcpStream> {
    let mut stream = TcpStream::connect(addr).await.ok()?;
    stream.write_all(request).await.ok()?;
    let mut buffer = [0u8; 4096];
    let mut received = Vec::new();
    // One small response; the head ends with an empty line and the body is short.
    while !received.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut buffer).await.ok()?;
        if n == 0 {
            return None;
        }
        received.extend_from_slice(&buffer[..n]);
    }
    Some(stream)
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [addr, host, count, hold] = args.as_slice() else {
        eprintln!("usage: idle_clients <ADDRESS> <HOST> <CONNECTIONS> <HOLD-SECONDS>");
        std::process::exit(2);
    };
    let (Ok(addr), Ok(count), Ok(hold)) = (addr.parse::<SocketAddr>(), count.parse::<usize>(), hold.parse::<u64>())
    else {
        eprintln!("idle_clients: invalid address, connection count or hold time");
        std::process::exit(2);
    };
    let request: &'static [u8] = format!("GET / HTTP/1.1\r\nHost: {host}\r\n\r\n").leak().as_bytes();

    let mut streams = Vec::with_capacity(count);
    for chunk in 0..count.div_ceil(500) {
        let batch = (chunk * 500..count.min((chunk + 1) * 500)).map(|_| open(addr, request));
        for stream in futures_util::future::join_all(batch).await.into_iter().flatten() {
            streams.push(stream);
        }
    }
    println!("ready {}", streams.len());
    tokio::time::sleep(Duration::from_secs(hold)).await;
}
