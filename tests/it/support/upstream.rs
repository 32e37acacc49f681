//! A real HTTP/1.1 upstream server on 127.0.0.1 with an ephemeral port.
//!
//! Paths choose the behaviour:
//! - `/slow/<ms>`: respond after `<ms>` milliseconds;
//! - `/echo`: stream the request body back;
//! - `/bytes/<n>`: respond with `<n>` bytes in 16 KiB chunks;
//! - `/drip`: send `first`, wait 800 ms, then send `last`;
//! - `/hop-headers`: respond with hop-by-hop headers the gateway must remove;
//! - a WebSocket handshake: echo every message;
//! - anything else: respond with the server's name.
//!
//! Every request's head is recorded, and accepted TCP connections are counted.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{HeaderMap, Method, Request, Response, StatusCode, Uri, Version};
use http_body_util::{BodyExt, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::Role;

/// One request as the upstream saw it.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: Method,
    pub uri: Uri,
    pub version: Version,
    pub headers: HeaderMap,
}

#[derive(Default)]
struct Shared {
    requests: Mutex<Vec<Recorded>>,
    connections: AtomicUsize,
}

pub struct Upstream {
    pub name: String,
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

type Body = BoxBody<Bytes, Box<dyn std::error::Error + Send + Sync>>;

fn full(text: impl Into<Bytes>) -> Body {
    http_body_util::Full::new(text.into())
        .map_err(|never| match never {})
        .boxed()
}

impl Upstream {
    pub async fn start(name: &str) -> Upstream {
        Self::start_on("127.0.0.1:0".parse().unwrap(), name).await
    }

    /// Starts on a given address, such as one a previous server gave up.
    pub async fn start_on(addr: SocketAddr, name: &str) -> Upstream {
        let listener = TcpListener::bind(addr).await.expect("bind upstream");
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(Shared::default());
        let name = name.to_owned();

        let task = {
            let shared = shared.clone();
            let name = name.clone();
            tokio::spawn(async move {
                loop {
                    let Ok((stream, _)) = listener.accept().await else {
                        continue;
                    };
                    shared.connections.fetch_add(1, Ordering::SeqCst);
                    let shared = shared.clone();
                    let name = name.clone();
                    tokio::spawn(async move {
                        let service = service_fn(move |request| handle(shared.clone(), name.clone(), request));
                        let _ = http1::Builder::new()
                            .serve_connection(TokioIo::new(stream), service)
                            .with_upgrades()
                            .await;
                    });
                }
            })
        };
        Upstream {
            name,
            addr,
            shared,
            task,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.shared.requests.lock().unwrap().clone()
    }

    pub fn request_count(&self) -> usize {
        self.shared.requests.lock().unwrap().len()
    }

    pub fn connection_count(&self) -> usize {
        self.shared.connections.load(Ordering::SeqCst)
    }

    pub fn last_request(&self) -> Recorded {
        self.requests().pop().expect("the upstream received no request")
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn handle(
    shared: Arc<Shared>,
    name: String,
    mut request: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    shared.requests.lock().unwrap().push(Recorded {
        method: request.method().clone(),
        uri: request.uri().clone(),
        version: request.version(),
        headers: request.headers().clone(),
    });

    if request.headers().contains_key(http::header::UPGRADE) {
        return Ok(accept_websocket(&mut request));
    }

    let path = request.uri().path().to_owned();
    let response = if let Some(ms) = path.strip_prefix("/slow/") {
        tokio::time::sleep(Duration::from_millis(ms.parse().unwrap_or(0))).await;
        Response::new(full(name))
    } else if path == "/echo" {
        Response::new(request.into_body().map_err(Into::into).boxed())
    } else if let Some(n) = path.strip_prefix("/bytes/") {
        let total: usize = n.parse().unwrap_or(0);
        let chunks = (0..total).step_by(16 * 1024).map(move |start| {
            let len = (total - start).min(16 * 1024);
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>(Frame::data(Bytes::from(vec![b'x'; len])))
        });
        Response::new(BodyExt::boxed(StreamBody::new(futures_util::stream::iter(chunks))))
    } else if path == "/drip" {
        let chunks = futures_util::stream::iter([0u64, 800]).then(|delay| async move {
            tokio::time::sleep(Duration::from_millis(delay)).await;
            let text = if delay == 0 { "first\n" } else { "last\n" };
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>(Frame::data(Bytes::from(text)))
        });
        Response::new(BodyExt::boxed(StreamBody::new(chunks)))
    } else if path == "/hop-headers" {
        Response::builder()
            .header("connection", "X-Bar")
            .header("x-bar", "1")
            .header("keep-alive", "timeout=5")
            .header("x-kept", "1")
            .body(full(name))
            .unwrap()
    } else {
        Response::new(full(name))
    };
    Ok(response)
}

fn accept_websocket(request: &mut Request<Incoming>) -> Response<Body> {
    let key = request
        .headers()
        .get("sec-websocket-key")
        .map(|value| value.as_bytes().to_vec())
        .unwrap_or_default();
    let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(&key);
    let on_upgrade = hyper::upgrade::on(request);
    tokio::spawn(async move {
        let Ok(upgraded) = on_upgrade.await else { return };
        let mut socket = WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None).await;
        while let Some(Ok(message)) = socket.next().await {
            if message.is_close() {
                break;
            }
            if socket.send(message).await.is_err() {
                break;
            }
        }
    });
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header("upgrade", "websocket")
        .header("connection", "Upgrade")
        .header("sec-websocket-accept", accept)
        .body(full(""))
        .unwrap()
}

/// A listener that accepts connections and never responds, like a hung upstream.
pub struct SilentUpstream {
    pub addr: SocketAddr,
    task: JoinHandle<()>,
}

impl SilentUpstream {
    pub async fn start() -> SilentUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let mut open_streams = Vec::new();
            while let Ok((stream, _)) = listener.accept().await {
                open_streams.push(stream);
            }
        });
        SilentUpstream { addr, task }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for SilentUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Returns a loopback address with nothing listening on it.
pub async fn closed_addr() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap()
}

/// An upstream that responds to every request with the same bytes, for responses that a
/// well-behaved server would not send. It reads each request head (and a body framed
/// by Content-Length or chunked) before it responds, and records the raw requests.
pub struct ScriptedUpstream {
    pub addr: SocketAddr,
    connections: Arc<AtomicUsize>,
    requests: Arc<Mutex<Vec<Vec<u8>>>>,
    task: JoinHandle<()>,
}

impl ScriptedUpstream {
    /// Responds to each request with `reply` and keeps the connection open.
    pub async fn start(reply: &'static [u8]) -> ScriptedUpstream {
        Self::start_with(reply, false).await
    }

    /// Responds to each request with `reply`, then closes the connection.
    pub async fn start_closing(reply: &'static [u8]) -> ScriptedUpstream {
        Self::start_with(reply, true).await
    }

    async fn start_with(reply: &'static [u8], close: bool) -> ScriptedUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let connections = Arc::new(AtomicUsize::new(0));
        let requests = Arc::new(Mutex::new(Vec::new()));
        let (counter, recorded) = (connections.clone(), requests.clone());
        let task = tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                counter.fetch_add(1, Ordering::SeqCst);
                let recorded = recorded.clone();
                tokio::spawn(async move {
                    let mut buffer = Vec::new();
                    while let Some(request) = read_request(&mut stream, &mut buffer).await {
                        recorded.lock().unwrap().push(request);
                        if stream.write_all(reply).await.is_err() || close {
                            break;
                        }
                    }
                });
            }
        });
        ScriptedUpstream {
            addr,
            connections,
            requests,
            task,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Returns the number of TCP connections accepted so far.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    /// Returns the raw requests received so far, head and body.
    pub fn requests(&self) -> Vec<Vec<u8>> {
        self.requests.lock().unwrap().clone()
    }
}

impl Drop for ScriptedUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Reads one request (head and body) from `stream`, keeping what follows it in `buffer`.
async fn read_request(stream: &mut tokio::net::TcpStream, buffer: &mut Vec<u8>) -> Option<Vec<u8>> {
    async fn fill(stream: &mut tokio::net::TcpStream, buffer: &mut Vec<u8>) -> Option<()> {
        let mut chunk = [0u8; 16 * 1024];
        let n = stream.read(&mut chunk).await.ok()?;
        (n > 0).then(|| buffer.extend_from_slice(&chunk[..n]))
    }

    let head_len = loop {
        if let Some(end) = buffer.windows(4).position(|window| window == b"\r\n\r\n") {
            break end + 4;
        }
        fill(stream, buffer).await?;
    };
    let head = String::from_utf8_lossy(&buffer[..head_len]).to_ascii_lowercase();
    let length = head
        .lines()
        .find_map(|line| line.strip_prefix("content-length:"))
        .and_then(|value| value.trim().parse::<usize>().ok());
    let end = if let Some(length) = length {
        while buffer.len() < head_len + length {
            fill(stream, buffer).await?;
        }
        head_len + length
    } else if head.contains("transfer-encoding: chunked") {
        loop {
            if let Some(end) = buffer[head_len..].windows(5).position(|window| window == b"0\r\n\r\n") {
                break head_len + end + 5;
            }
            fill(stream, buffer).await?;
        }
    } else {
        head_len
    };
    Some(buffer.drain(..end).collect())
}
