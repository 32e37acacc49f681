//! A small HTTP upstream for trying minigateway. It responds to every request with its
//! name, the request path and the forwarded client address.
//!
//! Usage: `demo_upstream <LISTEN-ADDRESS> <NAME>`, for example
//! `demo_upstream 127.0.0.1:8081 upstream-a`.

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

async fn answer(name: String, request: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let client = request
        .headers()
        .get("x-forwarded-for")
        .and_then(|value| value.to_str().ok())
        .unwrap_or("-");
    let text = format!("{name} answered {} {} for {client}\n", request.method(), request.uri());
    Ok(Response::new(Full::new(Bytes::from(text))))
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let mut args = std::env::args().skip(1);
    let (Some(addr), Some(name)) = (args.next(), args.next()) else {
        eprintln!("usage: demo_upstream <LISTEN-ADDRESS> <NAME>");
        std::process::exit(2);
    };
    let addr: SocketAddr = match addr.parse() {
        Ok(addr) => addr,
        Err(error) => {
            eprintln!("demo_upstream: invalid address {addr}: {error}");
            std::process::exit(2);
        }
    };
    let listener = match TcpListener::bind(addr).await {
        Ok(listener) => listener,
        Err(error) => {
            eprintln!("demo_upstream: failed to bind {addr}: {error}");
            std::process::exit(1);
        }
    };
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let name = name.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request| answer(name.clone(), request));
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}
