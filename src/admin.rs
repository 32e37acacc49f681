//! The management API on its own listener (127.0.0.1:9900 by default).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use serde_json::{Value, json};
use subtle::ConstantTimeEq;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::clock;
use crate::config::HashKey;
use crate::exposition;
use crate::listener::{ListenerInfo, Sharing};
use crate::reload::{ControlPlane, ReloadHandle, ReloadOutcome, Trigger};
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
    pub fn bind(addr: SocketAddr, sharing: Sharing) -> std::io::Result<BoundAdmin> {
        let exclusive = if sharing == Sharing::Exclusive {
            crate::listener::ensure_unused(addr)
        } else {
            Ok(())
        };
        let listener = exclusive.and_then(|()| crate::listener::bind(addr)).map_err(|error| {
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
    pub fn start(self, state: Arc<State>, reloads: ReloadHandle, plane: Weak<ControlPlane>) -> AdminServer {
        let stop = state.shutdown.child_token();
        let context = Arc::new(Context { state, reloads, plane });
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

/// The shared state that every admin request can reach.
struct Context {
    state: Arc<State>,
    reloads: ReloadHandle,
    /// Weak, because the control plane owns the admin server.
    plane: Weak<ControlPlane>,
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

/// Builds a 405 with the methods `path` accepts in `Allow` (RFC 9110 section 15.5.6).
fn method_not_allowed(path: &str) -> Response<Full<Bytes>> {
    let allow = match path {
        "/reload" => "POST",
        _ if path.starts_with("/bans/") => "DELETE",
        _ => "GET",
    };
    let mut response = json_response(StatusCode::METHOD_NOT_ALLOWED, json!({"error": "method not allowed"}));
    response
        .headers_mut()
        .insert(header::ALLOW, header::HeaderValue::from_static(allow));
    response
}

/// Decodes `%XX` escapes in a path segment, such as `%3A` in an IPv6 address.
fn percent_decode(segment: &str) -> Option<String> {
    let bytes = segment.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            decoded.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            decoded.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(decoded).ok()
}

/// Returns whether the request carries the configured bearer token, compared in
/// constant time. Without a configured token every request is allowed.
fn authorized(token: Option<&str>, request: &Request<Incoming>) -> bool {
    let Some(token) = token else {
        return true;
    };
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|value| value.as_bytes().strip_prefix(b"Bearer "))
        .unwrap_or_default();
    presented.ct_eq(token.as_bytes()).into()
}

async fn route(context: &Context, request: Request<Incoming>) -> Response<Full<Bytes>> {
    let state = &context.state;
    let token = state.snapshot.load().config.admin.token.clone();
    if !authorized(token.as_deref(), &request) {
        let mut response = json_response(
            StatusCode::UNAUTHORIZED,
            json!({"error": "missing or invalid bearer token"}),
        );
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, header::HeaderValue::from_static("Bearer"));
        return response;
    }

    let path = request.uri().path();
    match (request.method(), path) {
        (&Method::GET, "/api_status/reqcount") => {
            let count = state.metrics.in_flight.load(Ordering::Relaxed).max(0);
            json_response(
                StatusCode::OK,
                json!({"code": 0, "msg": "success", "body": {"count": count}}),
            )
        }
        (&Method::GET, "/status") => json_response(StatusCode::OK, status(state)),
        (&Method::GET, "/config") => {
            let listeners = context
                .plane
                .upgrade()
                .map(|plane| plane.listeners.list())
                .unwrap_or_default();
            json_response(StatusCode::OK, effective_config(state, &listeners))
        }
        (&Method::GET, "/metrics") => {
            let mut response = Response::new(Full::new(Bytes::from(exposition::render(state))));
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static(exposition::CONTENT_TYPE),
            );
            response
        }
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
        (&Method::GET, "/bans") => json_response(StatusCode::OK, bans(state)),
        (&Method::DELETE, path) if path.starts_with("/bans/") => unban(state, &path["/bans/".len()..]),
        (_, "/api_status/reqcount" | "/status" | "/config" | "/metrics" | "/reload" | "/bans") => {
            method_not_allowed(path)
        }
        (_, path) if path.starts_with("/bans/") => method_not_allowed(path),
        _ => json_response(StatusCode::NOT_FOUND, json!({"error": "not found"})),
    }
}

/// Builds the `/config` document: the effective routing table and settings, without
/// secrets such as the admin token.
fn effective_config(state: &State, listeners: &[ListenerInfo]) -> Value {
    let snapshot = state.snapshot.load();
    let config = &snapshot.config;
    let seconds = |duration: Option<std::time::Duration>| duration.map_or(0.0, |d| d.as_secs_f64());
    let networks = |list: &[ipnet::IpNet]| list.iter().map(ToString::to_string).collect::<Vec<_>>();

    let routes: Vec<Value> = config
        .routes
        .iter()
        .map(|route| {
            json!({
                "label": route.label,
                "hosts": route.hosts.iter().map(ToString::to_string).collect::<Vec<_>>(),
                "strategy": route.strategy,
                "hash_key": match &route.hash_key {
                    HashKey::ClientIp => "ip".to_owned(),
                    HashKey::Host => "host".to_owned(),
                    HashKey::Uri => "uri".to_owned(),
                    HashKey::Header(name) => format!("header:{name}"),
                },
                "targets": route.targets.iter().map(|t| json!({"url": t.url, "weight": t.weight})).collect::<Vec<_>>(),
                "max_fails": route.max_fails,
                "fail_timeout_seconds": route.fail_timeout.as_secs_f64(),
                "redirect_https": route.redirect_https,
            })
        })
        .collect();

    json!({
        "file": config.file,
        "generation": snapshot.generation,
        "listeners": listeners,
        "core": {
            "limit_max_conn": config.core.limit_max_conn,
            "read_timeout_seconds": seconds(config.core.read_timeout),
            "write_timeout_seconds": seconds(config.core.write_timeout),
            "idle_timeout_seconds": seconds(config.core.idle_timeout),
            "max_header_bytes": config.core.max_header_bytes,
            "max_body_bytes": config.core.max_body_bytes,
            "ip_forwardeds": config.core.ip_forwardeds.iter().map(|h| h.as_str()).collect::<Vec<_>>(),
            "trusted_proxies": networks(&config.core.trusted_proxies),
            "shutdown_timeout_seconds": config.core.shutdown_timeout.as_secs_f64(),
        },
        "cc_defense": {
            "enable": config.cc_defense.enable,
            "time_duration_ms": config.cc_defense.window.as_millis() as u64,
            "count": config.cc_defense.count,
            "black_time_seconds": config.cc_defense.ban.as_secs(),
            "white_list": networks(&config.cc_defense.white_list),
            "black_list": networks(&config.cc_defense.black_list),
            "max_entries": config.cc_defense.max_entries,
        },
        "limit_req": {
            "enable": config.limit_req.enable,
            "time_duration_ms": config.limit_req.window.as_millis() as u64,
            "count": config.limit_req.count,
            "mode": config.limit_req.mode,
            "max_entries": config.limit_req.max_entries,
        },
        "log": {
            "level": config.log.level.as_str(),
            "write_file": config.log.write_file,
            "dir": config.log.dir,
            "access_log": config.log.access_log,
        },
        "routes": routes,
        "certificates": config.certs.iter().map(|cert| json!({
            "label": cert.label,
            "certificate_file": cert.cert_file,
            "ocsp_stapling": cert.ocsp_stapling,
            "ocsp_stapling_local": cert.ocsp_local,
            "default": cert.default,
        })).collect::<Vec<_>>(),
        "admin": {
            "listen": config.admin.listen,
            "token_required": config.admin.token.is_some(),
        },
    })
}

/// Builds the `/bans` document: current CC bans, soonest expiry first, and the static
/// black list, whose addresses always get 403.
fn bans(state: &State) -> Value {
    let bans: Vec<Value> = state
        .guards
        .bans()
        .iter()
        .map(|ban| {
            json!({
                "ip": ban.ip,
                "remaining_seconds": ban.remaining.as_secs_f64(),
                "expires_unix": ban.expires_at.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs()),
            })
        })
        .collect();
    let snapshot = state.snapshot.load();
    let black_list: Vec<String> = snapshot
        .config
        .cc_defense
        .black_list
        .iter()
        .map(ToString::to_string)
        .collect();
    json!({"bans": bans, "black_list": black_list})
}

/// Handles `DELETE /bans/{ip}`: lifts a CC ban.
fn unban(state: &State, segment: &str) -> Response<Full<Bytes>> {
    let text = percent_decode(segment).unwrap_or_else(|| segment.to_owned());
    let Ok(ip) = text.parse::<std::net::IpAddr>() else {
        return json_response(
            StatusCode::BAD_REQUEST,
            json!({"error": format!("`{text}` is not an IP address")}),
        );
    };
    let ip = crate::client_ip::canonical_ip(ip);
    if state.guards.unban(ip) {
        json_response(StatusCode::OK, json!({"ip": ip, "unbanned": true}))
    } else {
        json_response(StatusCode::NOT_FOUND, json!({"error": format!("{ip} is not banned")}))
    }
}

/// Returns a mean in seconds, 0 when nothing was measured.
fn average_seconds(total_seconds: f64, count: u64) -> f64 {
    if count == 0 { 0.0 } else { total_seconds / count as f64 }
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
                    let responses = target.stats.responses.load(Ordering::Relaxed);
                    let response_micros = target.stats.response_micros.load(Ordering::Relaxed);
                    json!({
                        "url": &*target.url,
                        "healthy": target.health.is_available(now),
                        "down_for_ms": down_until.saturating_sub(now),
                        "requests": target.stats.requests.load(Ordering::Relaxed),
                        "response_seconds_average": average_seconds(response_micros as f64 / 1e6, responses),
                        "connect_errors": target.stats.connect_errors.load(Ordering::Relaxed),
                        "timeouts": target.stats.timeouts.load(Ordering::Relaxed),
                        "other_errors": target.stats.other_errors.load(Ordering::Relaxed),
                    })
                })
                .collect();
            let duration = &route.stats.duration;
            json!({
                "label": &*route.label,
                "strategy": route.pool.balancer.strategy(),
                "requests": route.stats.requests(),
                "server_errors": route.stats.server_errors(),
                "latency_seconds_average": average_seconds(duration.sum_seconds(), duration.count()),
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
        "guards": {
            "bans": state.guards.bans().len(),
            "cc_entries": state.guards.cc.len(),
            "limit_req_entries": state.guards.limit_req.len(),
            "idle_connections_closed": state.connections.idle_closed(),
        },
        "routes": routes,
        "certificates": certificates,
        "tls": tls,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_decode_escapes() {
        assert_eq!(percent_decode("%3A%3A1").as_deref(), Some("::1"));
        assert_eq!(percent_decode("127.0.0.1").as_deref(), Some("127.0.0.1"));
        assert_eq!(percent_decode("%zz"), None);
        assert_eq!(percent_decode("%3"), None);
    }
}
