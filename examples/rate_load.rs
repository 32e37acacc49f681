//! Sends HTTP/1.1 GET requests at a fixed total rate over keep-alive connections, for
//! benchmarks that compare CPU per request at equal load.
//!
//! Usage: `rate_load <ADDRESS> <HOST> <RATE> <SECONDS> [CONNECTIONS]`. Each of the
//! connections (50 by default) sends its share of the rate on a fixed schedule and
//! waits for each response before the next request. Prints one line:
//! `requests N errors E p50_ms X p99_ms Y elapsed_s S`.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::MissedTickBehavior;

/// Reads one response with a Content-Length body; returns false on any error.
async fn read_response(stream: &mut TcpStream, buffer: &mut Vec<u8>) -> bool {
    let mut chunk = [0u8; 16 * 1024];
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut response = httparse::Response::new(&mut headers);
        if let Ok(httparse::Status::Complete(head)) = response.parse(buffer) {
            let ok = response.code == Some(200);
            let length = response
                .headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                .and_then(|h| std::str::from_utf8(h.value).ok()?.trim().parse::<usize>().ok());
            let Some(length) = length else { return false };
            while buffer.len() < head + length {
                match stream.read(&mut chunk).await {
                    Ok(0) | Err(_) => return false,
                    Ok(n) => buffer.extend_from_slice(&chunk[..n]),
                }
            }
            buffer.drain(..head + length);
            return ok;
        }
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return false,
            Ok(n) => buffer.extend_from_slice(&chunk[..n]),
        }
    }
}

async fn connection(addr: SocketAddr, request: &'static [u8], period: Duration, until: Instant) -> (Vec<u32>, u64) {
    let mut latencies = Vec::new();
    let mut errors = 0;
    let Ok(mut stream) = TcpStream::connect(addr).await else {
        return (latencies, 1);
    };
    let _ = stream.set_nodelay(true);
    let mut buffer = Vec::new();
    let mut ticks = tokio::time::interval(period);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Burst);
    while Instant::now() < until {
        ticks.tick().await;
        let sent = Instant::now();
        if stream.write_all(request).await.is_err() || !read_response(&mut stream, &mut buffer).await {
            errors += 1;
            let Ok(fresh) = TcpStream::connect(addr).await else {
                break;
            };
            stream = fresh;
            buffer.clear();
            continue;
        }
        latencies.push(sent.elapsed().as_micros().min(u128::from(u32::MAX)) as u32);
    }
    (latencies, errors)
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (addr, host, rate, seconds, connections) = match args.as_slice() {
        [addr, host, rate, seconds] => (addr, host, rate, seconds, "50"),
        [addr, host, rate, seconds, connections] => (addr, host, rate, seconds, connections.as_str()),
        _ => {
            eprintln!("usage: rate_load <ADDRESS> <HOST> <RATE> <SECONDS> [CONNECTIONS]");
            std::process::exit(2);
        }
    };
    let (Ok(addr), Ok(rate), Ok(seconds), Ok(connections)) = (
        addr.parse::<SocketAddr>(),
        rate.parse::<f64>(),
        seconds.parse::<f64>(),
        connections.parse::<u32>(),
    ) else {
        eprintln!("rate_load: invalid address, rate, duration or connection count");
        std::process::exit(2);
    };
    let request: &'static [u8] = format!("GET / HTTP/1.1\r\nHost: {host}\r\n\r\n").leak().as_bytes();
    let period = Duration::from_secs_f64(f64::from(connections) / rate);
    let started = Instant::now();
    let until = started + Duration::from_secs_f64(seconds);

    let tasks: Vec<_> = (0..connections)
        .map(|_| tokio::spawn(connection(addr, request, period, until)))
        .collect();
    let mut latencies = Vec::new();
    let mut errors = 0;
    for task in tasks {
        if let Ok((mut list, failed)) = task.await {
            latencies.append(&mut list);
            errors += failed;
        }
    }
    latencies.sort_unstable();
    let percentile = |p: f64| {
        latencies
            .get(((latencies.len() as f64 * p) as usize).min(latencies.len().saturating_sub(1)))
            .map_or(0.0, |&micros| f64::from(micros) / 1000.0)
    };
    println!(
        "requests {} errors {} p50_ms {:.3} p99_ms {:.3} elapsed_s {:.2}",
        latencies.len(),
        errors,
        percentile(0.50),
        percentile(0.99),
        started.elapsed().as_secs_f64()
    );
}
