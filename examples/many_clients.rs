//! Sends one request from each of many loopback source addresses, so a gateway receives
//! requests from that many distinct client IPs through real sockets.
//!
//! Usage: `many_clients <GATEWAY-ADDRESS> <CLIENTS> [HOST] [FIRST-SOURCE]`, for example
//! `many_clients 127.0.0.1:8080 20000 app.test 127.2.0.1`. Sources count up from
//! FIRST-SOURCE (default 127.2.0.1) and must stay in 127.0.0.0/8, as must the gateway
//! address. Prints the count of each response status
//! and exits 1 if any request failed.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpSocket;

/// Concurrent connections.
const WORKERS: usize = 32;

/// Sends one request from `source` and returns the response status.
async fn request(source: IpAddr, gateway: SocketAddr, host: &str) -> std::io::Result<u16> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(source, 0))?;
    let mut stream = socket.connect(gateway).await?;
    let head = format!("GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    stream.write_all(head.as_bytes()).await?;

    let mut response = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut response))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "response timed out"))??;
    let status = response
        .get(9..12)
        .and_then(|digits| std::str::from_utf8(digits).ok())
        .and_then(|digits| digits.parse().ok());
    status.ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidData, "no HTTP status line"))
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (Some(gateway), Some(clients)) = (args.first(), args.get(1)) else {
        eprintln!("usage: many_clients <GATEWAY-ADDRESS> <CLIENTS> [HOST] [FIRST-SOURCE]");
        std::process::exit(2);
    };
    let gateway: SocketAddr = match gateway.parse() {
        Ok(addr) if matches!(addr, SocketAddr::V4(v4) if v4.ip().is_loopback()) => addr,
        _ => {
            eprintln!("many_clients: {gateway} is not an IPv4 loopback address and port");
            std::process::exit(2);
        }
    };
    let clients: u32 = match clients.parse() {
        Ok(n) if n < 1 << 16 => n,
        _ => {
            eprintln!("many_clients: CLIENTS must be below 65536, not {clients:?}");
            std::process::exit(2);
        }
    };
    let host: Arc<str> = args.get(2).map_or("app.test", String::as_str).into();
    let first_source = args.get(3).map_or("127.2.0.1", String::as_str);
    let first = match first_source.parse::<Ipv4Addr>() {
        Ok(ip) if ip.is_loopback() && u32::from(ip) + clients <= u32::from(Ipv4Addr::new(127, 255, 255, 254)) => {
            u32::from(ip)
        }
        _ => {
            eprintln!(
                "many_clients: FIRST-SOURCE {first_source:?} leaves no room for {clients} addresses in 127.0.0.0/8"
            );
            std::process::exit(2);
        }
    };

    let next = Arc::new(AtomicU32::new(0));
    let statuses = Arc::new(Mutex::new(BTreeMap::<String, u32>::new()));
    let workers: Vec<_> = (0..WORKERS)
        .map(|_| {
            let next = next.clone();
            let statuses = statuses.clone();
            let host = host.clone();
            tokio::spawn(async move {
                loop {
                    let n = next.fetch_add(1, Ordering::Relaxed);
                    if n >= clients {
                        return;
                    }
                    let source = IpAddr::V4(Ipv4Addr::from(first + n));
                    let label = match request(source, gateway, &host).await {
                        Ok(status) => status.to_string(),
                        Err(error) => format!("failed ({})", error.kind()),
                    };
                    *statuses.lock().unwrap().entry(label).or_default() += 1;
                }
            })
        })
        .collect();
    for worker in workers {
        let _ = worker.await;
    }

    let statuses = statuses.lock().unwrap();
    for (label, count) in statuses.iter() {
        println!("{label}: {count}");
    }
    if statuses.keys().any(|label| label.starts_with("failed")) {
        std::process::exit(1);
    }
}
