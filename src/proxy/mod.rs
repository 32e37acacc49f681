//! Forwarding: from a client request to an upstream response.
//!
//! For each request: load the snapshot once, find the host, resolve the client IP, run
//! the guards, route, pick a target, rewrite headers, send upstream through the shared
//! pool, and stream the response back. The snapshot is the only configuration read, and
//! nothing here takes a lock that a reload takes.

pub mod body;
pub mod error;
pub mod headers;
mod upgrade;

use std::borrow::Cow;
use std::convert::Infallible;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::SystemTime;

use http::header::{self, HeaderValue};
use http::request::Parts;
use http::uri::{PathAndQuery, Uri};
use http::{Method, Request, Response, StatusCode, Version};
use http_body::Body as _;
use hyper::body::Incoming;
use tokio::time::Instant;

use crate::access_log::{AccessLog, Record};
use crate::balance::{Strategy, hash_ip, hash_key};
use crate::client_ip::ClientAddr;
use crate::config::HashKey;
use crate::connection::Connection;
use crate::metrics::{Reason, RouteStats, method_index};
use crate::router::normalize_host;
use crate::snapshot::{Route, Snapshot};
use crate::state::State;
use crate::upstream::Target;
use crate::upstream::http1::{self, BodyError, ExchangeError, ResponseHead, Sent, UpstreamBody};
use crate::upstream::pool::{self, ConnectError, Lease};
use body::{ClientBodyError, ResponseBody, UpstreamRequestBody};
use error::{ProxyError, UpstreamError};
use headers::Forwarding;

/// One request from receipt to the end of its response. Dropping it does the
/// accounting, so a request abandoned half-way is counted and logged too.
pub struct Exchange {
    state: Arc<State>,
    conn: Arc<Connection>,
    started: Instant,
    method: usize,
    route: Option<Arc<RouteStats>>,
    /// Response status; 0 while none was produced (logged as 499, as nginx does when
    /// the client goes away first).
    status: u16,
    bytes_sent: u64,
    /// The resolved client IP; the peer's until it is resolved.
    client: IpAddr,
    /// Present only while the access log is on, so requests without it allocate nothing.
    log: Option<Box<PendingLine>>,
}

/// The access log fields an exchange keeps beyond its counters.
struct PendingLine {
    log: Arc<AccessLog>,
    time: SystemTime,
    method: Method,
    uri: Uri,
    version: Version,
    host: Option<HeaderValue>,
    referer: Option<HeaderValue>,
    user_agent: Option<HeaderValue>,
    route: Option<Box<str>>,
    upstream: Option<Box<str>>,
    upstream_status: Option<u16>,
}

impl Exchange {
    fn start(state: Arc<State>, conn: Arc<Connection>, request: &Request<Incoming>) -> Exchange {
        state.metrics.in_flight.fetch_add(1, Ordering::Relaxed);
        state.metrics.requests_total.fetch_add(1, Ordering::Relaxed);
        conn.request_started(request.version() == Version::HTTP_2);
        let client = conn.peer.ip();

        let log = state.access_log.load_full().map(|log| {
            Box::new(PendingLine {
                log,
                time: SystemTime::now(),
                method: request.method().clone(),
                uri: request.uri().clone(),
                version: request.version(),
                host: request.headers().get(header::HOST).cloned(),
                referer: request.headers().get(header::REFERER).cloned(),
                user_agent: request.headers().get(header::USER_AGENT).cloned(),
                route: None,
                upstream: None,
                upstream_status: None,
            })
        });
        Exchange {
            method: method_index(request.method()),
            state,
            conn,
            started: Instant::now(),
            route: None,
            status: 0,
            bytes_sent: 0,
            client,
            log,
        }
    }

    /// Ends the exchange once its response body ended or was abandoned.
    pub(crate) fn finish(mut self, bytes_sent: u64, _aborted: bool) {
        self.bytes_sent = bytes_sent;
    }

    /// Logs a response body that broke after its head was sent, so the client got a
    /// response cut short.
    pub(crate) fn body_failed(&self, error: &BodyError) {
        match error {
            BodyError::Upstream(error) => {
                let Some(suppressed) = self.state.throttle.allow(Reason::UpstreamError) else {
                    return;
                };
                tracing::warn!(client = %self.client, peer = %self.conn.peer, suppressed, error = %error, "upstream response body failed; the response was cut short");
            }
            BodyError::Client(error) => {
                tracing::debug!(client = %self.client, peer = %self.conn.peer, error = %error, "request body failed while the response streamed");
            }
        }
    }

    /// Logs a response body that did not end within writeTimeout.
    pub(crate) fn body_timed_out(&self) {
        let Some(suppressed) = self.state.throttle.allow(Reason::UpstreamTimeout) else {
            return;
        };
        tracing::warn!(client = %self.client, peer = %self.conn.peer, suppressed, "upstream response body not complete within writeTimeout; the response was cut short");
    }

    fn set_route(&mut self, route: &Route) {
        self.route = Some(route.stats.clone());
        if let Some(line) = &mut self.log {
            line.route = Some(route.label.clone());
        }
    }

    fn set_upstream(&mut self, target: &Target, status: Option<u16>) {
        if let Some(line) = &mut self.log {
            line.upstream = Some(target.authority.as_str().into());
            line.upstream_status = status;
        }
    }
}

impl Drop for Exchange {
    fn drop(&mut self) {
        let duration = self.started.elapsed();
        self.state.metrics.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.conn.request_finished();

        let status = if self.status == 0 { 499 } else { self.status };
        match &self.route {
            Some(route) => route.record(status, self.method, duration),
            None => self.state.metrics.unrouted.record(status, self.method, duration),
        }

        if let Some(line) = self.log.take() {
            let PendingLine {
                log,
                time,
                method,
                uri,
                version,
                host,
                referer,
                user_agent,
                route,
                upstream,
                upstream_status,
            } = *line;
            log.write(&Record {
                time,
                client: self.client,
                method,
                uri,
                version,
                host,
                referer,
                user_agent,
                route,
                status,
                bytes_sent: self.bytes_sent,
                upstream,
                upstream_status,
                duration,
            });
        }
    }
}

/// Handles one client request; this is the hyper service of every client connection.
pub async fn handle(
    state: Arc<State>,
    conn: Arc<Connection>,
    request: Request<Incoming>,
) -> Result<Response<ResponseBody>, Infallible> {
    let snapshot = state.snapshot.load_full();
    let mut exchange = Exchange::start(state.clone(), conn.clone(), &request);

    let mut response = match forward(&state, &snapshot, &conn, request, &mut exchange).await {
        Ok(response) => response,
        Err(error) => {
            state.metrics.reject(error.reason());
            log_error(&state, &conn, exchange.client, &error);
            error.to_response()
        }
    };
    exchange.status = response.status().as_u16();
    response.body_mut().set_exchange(exchange);
    Ok(response)
}

/// Logs a request the gateway responded to itself: upstream failures as warnings, guard
/// rejections at debug level, other client faults as information. Each reason is
/// throttled, since a broken upstream or a flood repeats it for every request.
fn log_error(state: &State, conn: &Connection, client: IpAddr, error: &ProxyError) {
    let reason = error.reason();
    let Some(suppressed) = state.throttle.allow(reason) else {
        return;
    };
    let status = error.status().as_u16();
    let reason = reason.as_str();
    if error.is_upstream() {
        tracing::warn!(%client, peer = %conn.peer, reason, suppressed, error = %error, "responded {status}");
    } else if error.is_guard() {
        tracing::debug!(%client, peer = %conn.peer, reason, suppressed, error = %error, "responded {status}");
    } else {
        tracing::info!(%client, peer = %conn.peer, reason, suppressed, error = %error, "responded {status}");
    }
}

/// Finds the request's host: the absolute-form URI authority (HTTP/1) or `:authority`
/// (HTTP/2) when present, else the `Host` header. The returned value is also written as
/// the `Host` header, which RFC 9112 section 3.2.2 requires for absolute-form requests
/// and the HTTP/1.1 upstream needs for HTTP/2 requests.
fn request_host(request: &mut Request<Incoming>) -> Result<Option<HeaderValue>, ProxyError> {
    if let Some(authority) = request.uri().authority() {
        let value = HeaderValue::from_str(authority.as_str()).map_err(|_| ProxyError::InvalidHost)?;
        request.headers_mut().insert(header::HOST, value.clone());
        return Ok(Some(value));
    }
    let mut hosts = request.headers().get_all(header::HOST).iter();
    match (hosts.next(), hosts.next()) {
        (Some(_), Some(_)) => Err(ProxyError::DuplicateHost),
        (Some(host), None) => Ok(Some(host.clone())),
        (None, _) if request.version() == Version::HTTP_11 => Err(ProxyError::MissingHost),
        (None, _) => Ok(None),
    }
}

fn is_idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}

fn content_length(parts: &Parts) -> Option<u64> {
    parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|text| text.parse().ok())
}

/// Returns the consistent-hash key of a request; other strategies ignore it.
fn balance_key(route: &Route, client: &ClientAddr, host: &str, parts: &Parts, forwarding: &Forwarding) -> u64 {
    if route.pool.balancer.strategy() != Strategy::ConsistentHash {
        return 0;
    }
    match &route.hash_key {
        HashKey::ClientIp => hash_ip(client.ip),
        HashKey::Host => hash_key(host.as_bytes()),
        HashKey::Uri => hash_key(parts.uri.path_and_query().map_or("/", PathAndQuery::as_str).as_bytes()),
        HashKey::Header(name) => forwarding
            .get(name)
            .or_else(|| parts.headers.get(name))
            .map_or_else(|| hash_ip(client.ip), |value| hash_key(value.as_bytes())),
    }
}

/// Builds the upstream request target in origin form: the target's path prefix and the
/// request's path and query (RFC 9112 section 3.2.1). Without a prefix it is borrowed.
fn upstream_target<'a>(target: &Target, original: &'a Uri) -> Cow<'a, str> {
    match original.path_and_query() {
        Some(existing) if target.path_prefix.is_empty() || existing.as_str() == "*" => Cow::Borrowed(existing.as_str()),
        Some(existing) => Cow::Owned(format!("{}{}", target.path_prefix, existing.as_str())),
        None if target.path_prefix.is_empty() => Cow::Borrowed("/"),
        None => Cow::Owned(format!("{}/", target.path_prefix)),
    }
}

fn redirect_to_https(host: &str, port: Option<u16>, uri: &Uri) -> Response<ResponseBody> {
    let path = uri.path_and_query().map_or("/", PathAndQuery::as_str);
    let host = if host.contains(':') {
        format!("[{host}]")
    } else {
        host.to_owned()
    };
    let location = match port {
        Some(port) => format!("https://{host}:{port}{path}"),
        None => format!("https://{host}{path}"),
    };
    let mut response = Response::new(ResponseBody::full("308 Permanent Redirect\n"));
    *response.status_mut() = StatusCode::PERMANENT_REDIRECT;
    if let Ok(location) = HeaderValue::from_str(&location) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    response
}

/// A request checked, routed and rewritten, ready to be sent upstream.
struct Prepared {
    route: usize,
    parts: Parts,
    forwarding: Forwarding,
    body: UpstreamRequestBody,
    key: u64,
    deadline: Option<Instant>,
    client_upgrade: Option<hyper::upgrade::OnUpgrade>,
}

/// Checks, routes and rewrites a request: everything before it goes upstream.
///
/// This is a plain function, so its locals (such as the host buffer) stay out of the
/// request future, which is smaller and cheaper to move for it.
fn prepare(
    state: &State,
    snapshot: &Snapshot,
    conn: &Connection,
    mut request: Request<Incoming>,
    exchange: &mut Exchange,
) -> Result<Result<Prepared, Response<ResponseBody>>, ProxyError> {
    let received = exchange.started;

    if request.method() == Method::CONNECT {
        return Err(ProxyError::UnsupportedMethod);
    }
    let host_value = request_host(&mut request)?;
    let host = normalize_host(host_value.as_ref().map_or(&b""[..], HeaderValue::as_bytes))
        .map_err(|_| ProxyError::InvalidHost)?;

    let client = snapshot.client_ip.resolve(conn.peer.ip(), request.headers());
    exchange.client = client.ip;
    if client.malformed {
        state.metrics.reject(Reason::MalformedForwarded);
        tracing::debug!(client = %client.ip, "malformed forwarding header from a trusted proxy; using the peer address");
    }

    state
        .guards
        .check(&snapshot.guards, client.ip, host.as_str(), request.uri())?;

    let index = snapshot.router.route(host.as_str()).ok_or(ProxyError::NoRoute)?;
    let route = &snapshot.routes[index];
    exchange.set_route(route);

    if route.redirect_https && !conn.tls {
        return Ok(Err(redirect_to_https(
            host.as_str(),
            snapshot.https_port,
            request.uri(),
        )));
    }

    let upgrade = request.version() == Version::HTTP_11 && headers::is_upgrade_request(request.headers());
    let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut request));

    let (mut parts, body) = request.into_parts();
    if let (Some(limit), Some(length)) = (snapshot.max_body_bytes, content_length(&parts)) {
        if length > limit {
            return Err(ProxyError::BodyTooLarge);
        }
    }

    headers::remove_hop_by_hop(&mut parts.headers, upgrade);
    // hyper sends `100 Continue` itself when the body is first read.
    if parts.headers.contains_key(header::EXPECT) {
        parts.headers.remove(header::EXPECT);
    }
    let forwarding = Forwarding::new(&client, &conn.peer_header, conn.tls, host_value);
    parts.version = Version::HTTP_11;

    let key = balance_key(route, &client, host.as_str(), &parts, &forwarding);
    let body = if body.is_end_stream() {
        UpstreamRequestBody::empty()
    } else {
        let body_deadline = snapshot.timeouts.read.map(|limit| received + limit);
        UpstreamRequestBody::streaming(body, snapshot.max_body_bytes, body_deadline)
    };
    Ok(Ok(Prepared {
        route: index,
        parts,
        forwarding,
        body,
        key,
        deadline: snapshot.timeouts.write.map(|limit| received + limit),
        client_upgrade,
    }))
}

async fn forward(
    state: &State,
    snapshot: &Snapshot,
    conn: &Connection,
    request: Request<Incoming>,
    exchange: &mut Exchange,
) -> Result<Response<ResponseBody>, ProxyError> {
    let prepared = match prepare(state, snapshot, conn, request, exchange)? {
        Ok(prepared) => prepared,
        Err(response) => return Ok(response),
    };
    let route = &snapshot.routes[prepared.route];
    let deadline = prepared.deadline;
    let upgrade = prepared.client_upgrade.is_some();

    let request = Outgoing {
        parts: &prepared.parts,
        forwarding: &prepared.forwarding,
        upgrade,
    };
    let (head, lease) = send(route, request, prepared.body, prepared.key, deadline, exchange).await?;
    let ResponseHead {
        response,
        framing,
        keep_alive,
        unsent_body,
    } = head;
    let (mut parts, ()) = response.into_parts();

    if let Some(client_upgrade) = prepared.client_upgrade {
        if parts.status == StatusCode::SWITCHING_PROTOCOLS {
            // The upgraded socket leaves the pool for good.
            upgrade::splice(
                state,
                conn.peer,
                client_upgrade,
                lease.connection,
                snapshot.timeouts.idle,
            );
            headers::remove_hop_by_hop(&mut parts.headers, true);
            return Ok(Response::from_parts(parts, ResponseBody::empty()));
        }
    }

    // The response head was read without its hop-by-hop fields.
    let body = UpstreamBody::new(lease, framing, keep_alive, unsent_body);
    Ok(Response::from_parts(parts, ResponseBody::upstream(body, deadline)))
}

/// Maps a failure to read the client's request body: a malformed body gets 400, and a
/// client that went away mid-body is recorded as 499, as nginx does.
fn client_body_failure(error: Box<dyn std::error::Error + Send + Sync>) -> ProxyError {
    match error.downcast_ref::<hyper::Error>() {
        Some(hyper_error) if hyper_error.is_parse() => ProxyError::InvalidRequestBody,
        _ => ProxyError::ClientAborted,
    }
}

/// A prepared request as the upstream will see it, apart from its target path.
#[derive(Clone, Copy)]
struct Outgoing<'a> {
    parts: &'a Parts,
    forwarding: &'a Forwarding,
    upgrade: bool,
}

/// The failure of one attempt to exchange a request with a target.
enum AttemptError {
    /// No connection could be opened; nothing was sent.
    Connect(ConnectError),
    /// The exchange failed on an open connection before a whole response head arrived.
    Exchange(ExchangeError),
}

/// Sends a request to `target` on a pooled connection, or on a new one, and reads the
/// response head.
///
/// A pooled connection that fails the first write is dropped and the next one tried,
/// because nothing was sent on it. This needs an empty body, since a body is not kept.
async fn exchange_with(
    target: &Target,
    request: Sent<'_>,
    body: UpstreamRequestBody,
) -> Result<(ResponseHead, Lease), AttemptError> {
    let replayable = body.is_end_stream();
    let mut body = Some(body);
    loop {
        let (connection, reused) = match target.connections.checkout() {
            Some(connection) => (connection, true),
            None => (pool::connect(&target.addr).await.map_err(AttemptError::Connect)?, false),
        };
        let mut lease = Lease {
            connection,
            pool: target.connections.clone(),
            stats: target.stats.clone(),
        };
        let body = body.take().unwrap_or_else(UpstreamRequestBody::empty);
        match http1::exchange(&mut lease.connection, request, body).await {
            Ok(head) => return Ok((head, lease)),
            Err(ExchangeError::Unsent(_)) if reused && replayable => {}
            Err(error) => return Err(AttemptError::Exchange(error)),
        }
    }
}

/// Sends a request to a target of the route's pool, retrying once where that is safe.
///
/// A connection failure moves to another target, because nothing was sent. Any other
/// failure before a response head (such as a pooled connection the upstream had just
/// closed) is retried once for idempotent requests without a body.
async fn send(
    route: &Route,
    request: Outgoing<'_>,
    body: UpstreamRequestBody,
    key: u64,
    deadline: Option<Instant>,
    exchange: &mut Exchange,
) -> Result<(ResponseHead, Lease), ProxyError> {
    let Outgoing {
        parts,
        forwarding,
        upgrade,
    } = request;
    let pool = &route.pool;
    let replayable = body.is_end_stream() && !upgrade;
    let idempotent = is_idempotent(&parts.method);
    let mut retries = usize::from(replayable && (idempotent || pool.targets.len() > 1));
    let mut body = Some(body);
    let mut excluded = None;

    loop {
        let index = pool.pick(key, excluded).ok_or(ProxyError::NoHealthyTarget)?;
        let target = &pool.targets[index];
        target.stats.requests.fetch_add(1, Ordering::Relaxed);
        exchange.set_upstream(target, None);

        let path = upstream_target(target, &parts.uri);
        let request = Sent {
            method: &parts.method,
            target: &path,
            headers: &parts.headers,
            forwarding: Some(forwarding),
            upgrade,
        };
        let body = body.take().unwrap_or_else(UpstreamRequestBody::empty);

        let sent_at = Instant::now();
        let attempt = exchange_with(target, request, body);
        let result = match deadline {
            Some(deadline) => tokio::time::timeout_at(deadline, attempt).await,
            None => Ok(attempt.await),
        };

        let (connect, error) = match result {
            Ok(Ok((head, lease))) => {
                target.health.record_success();
                target.stats.record_response(sent_at.elapsed());
                exchange.set_upstream(target, Some(head.response.status().as_u16()));
                return Ok((head, lease));
            }
            Err(_) | Ok(Err(AttemptError::Connect(ConnectError::TimedOut))) => {
                target.stats.timeouts.fetch_add(1, Ordering::Relaxed);
                pool.record_failure(index);
                return Err(ProxyError::UpstreamTimeout {
                    target: target.url.clone(),
                });
            }
            Ok(Err(AttemptError::Connect(error))) => (true, UpstreamError::Connect(error)),
            Ok(Err(AttemptError::Exchange(ExchangeError::ClientBody(body_error)))) => {
                return Err(match body_error {
                    ClientBodyError::TooLarge => ProxyError::BodyTooLarge,
                    ClientBodyError::TimedOut => ProxyError::RequestTimeout,
                });
            }
            // The client's fault, not the upstream's, so nothing is counted against the target.
            Ok(Err(AttemptError::Exchange(ExchangeError::ClientBodyFailed(error)))) => {
                return Err(client_body_failure(error));
            }
            Ok(Err(AttemptError::Exchange(error))) => (false, UpstreamError::Exchange(error)),
        };
        let before_response = match &error {
            UpstreamError::Connect(_) => true,
            UpstreamError::Exchange(error) => error.before_response(),
        };

        if connect {
            target.stats.connect_errors.fetch_add(1, Ordering::Relaxed);
            if pool.record_failure(index) {
                tracing::warn!(route = %route.label, target = %target.url, "target marked down for {:?}", pool.fail_timeout);
            }
        } else {
            target.stats.other_errors.fetch_add(1, Ordering::Relaxed);
        }

        let next_excluded = if connect { Some(index) } else { None };
        // A malformed response is not retried, because the upstream has already handled it.
        if retries > 0 && before_response && (connect || idempotent) && pool.pick(key, next_excluded).is_some() {
            tracing::debug!(route = %route.label, target = %target.url, error = %error, "retrying upstream request");
            retries -= 1;
            excluded = next_excluded;
            continue;
        }

        let target = target.url.clone();
        return Err(if connect {
            ProxyError::UpstreamConnect { target, source: error }
        } else {
            ProxyError::UpstreamFailed { target, source: error }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upstream::TargetHealth;

    fn target(prefix: &str) -> Target {
        Target {
            url: "http://127.0.0.1:9000".into(),
            authority: "127.0.0.1:9000".parse().unwrap(),
            addr: crate::upstream::TargetAddr::Socket("127.0.0.1:9000".parse().unwrap()),
            path_prefix: prefix.into(),
            health: Arc::new(TargetHealth::default()),
            stats: Arc::default(),
            connections: Arc::default(),
        }
    }

    #[test]
    fn upstream_target_joins_prefix() {
        let original: Uri = "/a/b?x=1".parse().unwrap();
        assert_eq!(upstream_target(&target(""), &original), "/a/b?x=1");
        assert_eq!(upstream_target(&target("/base"), &original), "/base/a/b?x=1");
        let absolute: Uri = "http://a.test/p".parse().unwrap();
        assert_eq!(upstream_target(&target(""), &absolute), "/p");
        let asterisk: Uri = "*".parse().unwrap();
        assert_eq!(upstream_target(&target("/base"), &asterisk), "*");
    }

    #[test]
    fn redirect_keeps_path_and_brackets_ipv6() {
        let uri: Uri = "/x?y=1".parse().unwrap();
        let response = redirect_to_https("a.test", None, &uri);
        assert_eq!(response.status(), StatusCode::PERMANENT_REDIRECT);
        assert_eq!(response.headers()[header::LOCATION], "https://a.test/x?y=1");
        let response = redirect_to_https("::1", Some(8443), &uri);
        assert_eq!(response.headers()[header::LOCATION], "https://[::1]:8443/x?y=1");
    }
}
