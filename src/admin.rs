//! The management API on its own listener (127.0.0.1:9900 by default).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use serde_json::json;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::state::State;

/// Maximum time an admin client may take to send its request head.
const HEADER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// The admin API's listener task.
pub struct AdminServer {
    pub addr: SocketAddr,
    stop: CancellationToken,
}

impl AdminServer {
    /// Binds the admin listener and starts serving.
    pub fn start(state: Arc<State>, addr: SocketAddr) -> std::io::Result<AdminServer> {
        let listener = crate::listener::bind(addr).map_err(|error| {
            std::io::Error::new(error.kind(), format!("failed to bind admin listener {addr}: {error}"))
        })?;
        let bound = listener.local_addr()?;
        let stop = state.shutdown.child_token();
        tokio::spawn(accept_loop(listener, state, stop.clone()));
        tracing::info!(address = %bound, "admin API listening");
        Ok(AdminServer { addr: bound, stop })
    }

    pub fn stop(&self) {
        self.stop.cancel();
    }
}

impl Drop for AdminServer {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn accept_loop(listener: TcpListener, state: Arc<State>, stop: CancellationToken) {
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(error) => {
                    tracing::debug!(error = %error, "admin accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = stop.cancelled() => return,
        };
        let state = state.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request| {
                let state = state.clone();
                async move { Ok::<_, Infallible>(route(&state, request)) }
            });
            let connection = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service);
            tokio::pin!(connection);
            tokio::select! {
                _ = connection.as_mut() => {}
                () = stop.cancelled() => {
                    connection.as_mut().graceful_shutdown();
                    let _ = connection.await;
                }
            }
        });
    }
}

fn json_response(status: StatusCode, value: serde_json::Value) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(value.to_string() + "\n")));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    response
}

fn route(state: &State, request: Request<Incoming>) -> Response<Full<Bytes>> {
    match (request.method(), request.uri().path()) {
        (&Method::GET, "/api_status/reqcount") => {
            let count = state.metrics.in_flight.load(Ordering::Relaxed).max(0);
            json_response(
                StatusCode::OK,
                json!({"code": 0, "msg": "success", "body": {"count": count}}),
            )
        }
        (_, "/api_status/reqcount") => {
            json_response(StatusCode::METHOD_NOT_ALLOWED, json!({"error": "method not allowed"}))
        }
        _ => json_response(StatusCode::NOT_FOUND, json!({"error": "not found"})),
    }
}
