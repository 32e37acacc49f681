//! The immutable snapshot that every request reads.
//!
//! A snapshot holds everything built from one configuration: the router, the pools with
//! their balancers, the client-IP policy, guard settings, timeouts and the certificates
//! with their TLS settings. It is swapped
//! whole by a reload; a request keeps the snapshot it started with until it ends.

use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioTimer};
use hyper_util::server::conn::auto;

use crate::balance::Balancer;
use crate::client_ip::ClientIpPolicy;
use crate::config::{Config, HashKey};
use crate::guard::GuardSettings;
use crate::metrics::RouteStats;
use crate::registry::{Registry, target_key};
use crate::router::Router;
use crate::tls::{TlsContext, TlsError};
use crate::upstream::{Pool, Target, TargetAddr};

/// Smallest read buffer hyper accepts; maxHeaderBytes below it is raised to it.
const MIN_HEADER_BUFFER: usize = 8192;

/// One route: its hosts were compiled into the router, its targets into the pool.
#[derive(Debug)]
pub struct Route {
    pub label: Box<str>,
    pub pool: Pool,
    pub hash_key: HashKey,
    pub redirect_https: bool,
    pub stats: Arc<RouteStats>,
}

/// Per-connection timeouts, in the meaning of Go's http.Server.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    pub read: Option<Duration>,
    pub write: Option<Duration>,
    pub idle: Option<Duration>,
}

pub struct Snapshot {
    /// Increases by one with each applied reload; the first snapshot is 1.
    pub generation: u64,
    pub config: Arc<Config>,
    pub router: Router,
    pub routes: Box<[Route]>,
    pub client_ip: ClientIpPolicy,
    pub guards: GuardSettings,
    pub timeouts: Timeouts,
    pub max_body_bytes: Option<u64>,
    /// Port for `redirectHttps` locations; `None` when it is 443 and can be left out.
    pub https_port: Option<u16>,
    /// The HTTP/1 and HTTP/2 server settings new connections are served with.
    pub http: auto::Builder<TokioExecutor>,
    /// The certificates and TLS settings new HTTPS handshakes use; `None` without certificates.
    pub tls: Option<Arc<TlsContext>>,
}

impl std::fmt::Debug for Snapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Snapshot")
            .field("generation", &self.generation)
            .field("routes", &self.routes)
            .finish_non_exhaustive()
    }
}

/// Builds the server settings for new client connections.
fn http_builder(config: &Config) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        // Header and idle deadlines are enforced per connection by the listener, with
        // Go's meaning; hyper's own header timer would also cut idle keep-alive waits.
        .header_read_timeout(None)
        .keep_alive(true)
        .max_buf_size(config.core.max_header_bytes.max(MIN_HEADER_BUFFER));
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(config.core.max_header_bytes).unwrap_or(u32::MAX))
        .max_concurrent_streams(256);
    builder
}

impl Snapshot {
    /// Builds a snapshot, taking carried-over state for each route and target from
    /// `registry`.
    ///
    /// Reads the certificate, key and OCSP files, so it runs where blocking is allowed.
    /// A certificate that fails to load fails the build.
    pub fn build(config: Arc<Config>, registry: &Registry, generation: u64) -> Result<Snapshot, TlsError> {
        let tls = TlsContext::build(&config, &registry.tls)?;
        let router = Router::new(config.routes.iter().map(|route| route.hosts.as_slice()));

        let routes = config
            .routes
            .iter()
            .map(|route| {
                let targets: Box<[Target]> = route
                    .targets
                    .iter()
                    .map(|target| {
                        let key = target_key(&route.label, &target.url);
                        Target {
                            url: target.url.as_str().into(),
                            authority: target.authority.clone(),
                            addr: TargetAddr::from_authority(&target.authority),
                            connections: registry.connection_pools.get(target.authority.as_str()),
                            path_prefix: target.path_prefix.as_str().into(),
                            health: registry.health.get(&key),
                            stats: registry.target_stats.get(&key),
                        }
                    })
                    .collect();
                let identities: Vec<&str> = route.targets.iter().map(|t| t.url.as_str()).collect();
                let weights: Vec<u32> = route.targets.iter().map(|t| t.weight).collect();
                let balancer = Balancer::new(
                    route.strategy,
                    &identities,
                    &weights,
                    registry.positions.get(&route.label),
                );
                Route {
                    label: route.label.as_str().into(),
                    pool: Pool {
                        targets,
                        balancer,
                        max_fails: route.max_fails,
                        fail_timeout: route.fail_timeout,
                    },
                    hash_key: route.hash_key.clone(),
                    redirect_https: route.redirect_https,
                    stats: registry.route_stats.get(&route.label),
                }
            })
            .collect();

        let https_port = config
            .core
            .https_listen
            .first()
            .map(|addr| addr.port())
            .filter(|&port| port != 443);

        Ok(Snapshot {
            generation,
            router,
            routes,
            client_ip: ClientIpPolicy::new(config.core.ip_forwardeds.clone(), config.core.trusted_proxies.clone()),
            guards: GuardSettings::from_config(&config),
            timeouts: Timeouts {
                read: config.core.read_timeout,
                write: config.core.write_timeout,
                idle: config.core.idle_timeout,
            },
            max_body_bytes: config.core.max_body_bytes,
            https_port,
            http: http_builder(&config),
            tls,
            config,
        })
    }

    /// Drops registry entries of routes and targets this snapshot no longer has.
    pub fn prune(&self, registry: &Registry) {
        let labels: Vec<&str> = self.routes.iter().map(|r| &*r.label).collect();
        let targets: Vec<String> = self
            .routes
            .iter()
            .flat_map(|r| r.pool.targets.iter().map(|t| target_key(&r.label, &t.url)))
            .collect();
        registry.positions.retain(|key| labels.contains(&key));
        registry.route_stats.retain(|key| labels.contains(&key));
        registry.health.retain(|key| targets.iter().any(|t| t == key));
        let authorities: Vec<&str> = self
            .routes
            .iter()
            .flat_map(|r| r.pool.targets.iter().map(|t| t.authority.as_str()))
            .collect();
        registry.connection_pools.retain(|key| authorities.contains(&key));
        registry.target_stats.retain(|key| targets.iter().any(|t| t == key));
    }
}
