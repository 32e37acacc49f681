//! The gateway's shared state: the current snapshot and what outlives it.

use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};

use arc_swap::ArcSwap;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::guard::conn_limit::ConnLimiter;
use crate::metrics::Metrics;
use crate::registry::Registry;
use crate::reload::ReloadStatus;
use crate::snapshot::Snapshot;
use crate::tls::TlsError;
use crate::upstream::{HttpClient, build_client};

/// Everything the request path and the control plane share.
pub struct State {
    /// The snapshot new requests use; replaced whole by a reload.
    pub snapshot: ArcSwap<Snapshot>,
    pub registry: Registry,
    pub client: HttpClient,
    pub metrics: Metrics,
    pub connections: Arc<ConnLimiter>,
    /// Every connection and upgrade task, so shutdown can wait for them.
    pub tasks: TaskTracker,
    /// Cancelled when the process stops: listeners stop and connections drain.
    pub shutdown: CancellationToken,
    /// Written by the reload controller, read by the admin API.
    pub reload_status: Mutex<ReloadStatus>,
    pub started_at: SystemTime,
    pub started: Instant,
}

impl State {
    /// Builds the state with the first snapshot, generation 1, from `config`.
    pub fn new(config: Arc<Config>) -> Result<State, TlsError> {
        let registry = Registry::default();
        let snapshot = Snapshot::build(config, &registry, 1)?;
        let connections = Arc::new(ConnLimiter::default());
        connections.set_limit(snapshot.config.core.limit_max_conn);
        Ok(State {
            snapshot: ArcSwap::from_pointee(snapshot),
            registry,
            client: build_client(),
            metrics: Metrics::default(),
            connections,
            tasks: TaskTracker::new(),
            shutdown: CancellationToken::new(),
            reload_status: Mutex::new(ReloadStatus::default()),
            started_at: SystemTime::now(),
            started: Instant::now(),
        })
    }
}
