//! The management API on its own listener (127.0.0.1:9900 by default).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::clock;
use crate::reload::{ReloadHandle, ReloadOutcome, Trigger};
use crate::state::State;

/// Maximum time an admin client may take to send its request head.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// A bound admin listener that is not serving yet.
pub struct BoundAdmin {
    listener: TcpListener,
    addr: SocketAddr,
}

/// The running admin API; dropping it stops its listener.
pub struct AdminServer {
    pub addr: SocketAddr,
    stop: CancellationToken,
}

impl AdminServer {
    /// Binds the admin listener without serving, so a reload can fail before any change.
    pub fn bind(addr: SocketAddr) -> std::io::Result<BoundAdmin> {
        let listener = crate::listener::bind(addr).map_err(|error| {
            std::io::Error::new(error.kind(), format!("failed to bind admin listener {addr}: {error}"))
        })?;
        let addr = listener.local_addr()?;
        Ok(BoundAdmin { listener, addr })
    }

    pub fn stop(&self) {
        self.stop.cancel();
    }
}

impl BoundAdmin {
    /// Starts serving the admin API.
    pub fn start(self, state: Arc<State>, reloads: ReloadHandle) -> AdminServer {
        let stop = state.shutdown.child_token();
        let context = Arc::new(Context { state, reloads });
        tokio::spawn(accept_loop(self.listener, context, stop.clone()));
        tracing::info!(address = %self.addr, "admin API listening");
        AdminServer { addr: self.addr, stop }
    }
}

impl Drop for AdminServer {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// What every admin request can reach.
struct Context {
    state: Arc<State>,
    reloads: ReloadHandle,
}

async fn accept_loop(listener: TcpListener, context: Arc<Context>, stop: CancellationToken) {
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(error) => {
                    tracing::debug!(error = %error, "admin accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = stop.cancelled() => return,
        };
        let context = context.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request| {
                let context = context.clone();
                async move { Ok::<_, Infallible>(route(&context, request).await) }
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

fn json_response(status: StatusCode, value: Value) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(value.to_string() + "\n")));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    response
}

fn method_not_allowed() -> Response<Full<Bytes>> {
    json_response(StatusCode::METHOD_NOT_ALLOWED, json!({"error": "method not allowed"}))
}

async fn route(context: &Context, request: Request<Incoming>) -> Response<Full<Bytes>> {
    let state = &context.state;
    match (request.method(), request.uri().path()) {
        (&Method::GET, "/api_status/reqcount") => {
            let count = state.metrics.in_flight.load(Ordering::Relaxed).max(0);
            json_response(
                StatusCode::OK,
                json!({"code": 0, "msg": "success", "body": {"count": count}}),
            )
        }
        (&Method::GET, "/status") => json_response(StatusCode::OK, status(state)),
        (&Method::POST, "/reload") => match context.reloads.reload(Trigger::Admin).await {
            Some(outcome) => {
                let code = match outcome {
                    ReloadOutcome::Failed { .. } => StatusCode::UNPROCESSABLE_ENTITY,
                    _ => StatusCode::OK,
                };
                json_response(code, serde_json::to_value(&outcome).unwrap_or(Value::Null))
            }
            None => json_response(
                StatusCode::SERVICE_UNAVAILABLE,
                json!({"error": "the gateway is stopping"}),
            ),
        },
        (_, "/api_status/reqcount" | "/status" | "/reload") => method_not_allowed(),
        _ => json_response(StatusCode::NOT_FOUND, json!({"error": "not found"})),
    }
}

/// Builds the `/status` document.
fn status(state: &State) -> Value {
    let snapshot = state.snapshot.load();
    let reload = state
        .reload_status
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .clone();
    let now = clock::now_ms();

    let routes: Vec<Value> = snapshot
        .routes
        .iter()
        .map(|route| {
            let targets: Vec<Value> = route
                .pool
                .targets
                .iter()
                .map(|target| {
                    let down_until = target.health.down_until();
                    json!({
                        "url": &*target.url,
                        "healthy": target.health.is_available(now),
                        "down_for_ms": down_until.saturating_sub(now),
                        "requests": target.stats.requests.load(Ordering::Relaxed),
                        "connect_errors": target.stats.connect_errors.load(Ordering::Relaxed),
                        "timeouts": target.stats.timeouts.load(Ordering::Relaxed),
                        "other_errors": target.stats.other_errors.load(Ordering::Relaxed),
                    })
                })
                .collect();
            json!({
                "label": &*route.label,
                "strategy": route.pool.balancer.strategy(),
                "requests": route.stats.requests(),
                "targets": targets,
            })
        })
        .collect();

    let rejections: serde_json::Map<String, Value> = state
        .metrics
        .rejection_counts()
        .map(|(reason, count)| (reason.as_str().to_owned(), json!(count)))
        .collect();

    let (certificates, tls) = crate::tls::status(state);
    json!({
        "version": env!("CARGO_PKG_VERSION"),
        "uptime_seconds": state.started.elapsed().as_secs(),
        "generation": snapshot.generation,
        "reload": reload,
        "connections": {
            "open": state.connections.open(),
            "limit": state.connections.limit(),
        },
        "in_flight": state.metrics.in_flight.load(Ordering::Relaxed).max(0),
        "requests_total": state.metrics.requests_total.load(Ordering::Relaxed),
        "rejections": rejections,
        "routes": routes,
        "certificates": certificates,
        "tls": tls,
    })
}
