//! The gateway's shared state: the current snapshot and what outlives it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};

use arc_swap::{ArcSwap, ArcSwapOption};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::access_log::AccessLog;
use crate::config::{Config, Log};
use crate::guard::Guards;
use crate::guard::conn_limit::ConnLimiter;
use crate::logging::Throttle;
use crate::metrics::Metrics;
use crate::registry::Registry;
use crate::reload::ReloadStatus;
use crate::snapshot::Snapshot;
use crate::tls::TlsError;

/// An access log opened for a reload, or `None` inside to close the open one.
pub struct PreparedAccessLog(Option<Arc<AccessLog>>);

/// Everything the request path and the control plane share.
pub struct State {
    /// The snapshot new requests use; replaced whole by a reload.
    pub snapshot: ArcSwap<Snapshot>,
    pub registry: Registry,
    pub metrics: Metrics,
    pub connections: Arc<ConnLimiter>,
    /// CC defence and limitReq state; kept across reloads.
    pub guards: Guards,
    /// Every connection and upgrade task, so shutdown can wait for them.
    pub tasks: TaskTracker,
    /// Cancelled when the process stops: listeners stop and connections drain.
    pub shutdown: CancellationToken,
    /// Written by the reload controller, read by the admin API.
    pub reload_status: Mutex<ReloadStatus>,
    /// The open access log, or `None` when `accessLog` is off.
    pub access_log: ArcSwapOption<AccessLog>,
    /// Lines dropped by access logs that were since replaced by a reload.
    access_log_dropped_before: AtomicU64,
    /// Rate limits for warnings that can repeat per request.
    pub throttle: Throttle,
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
            metrics: Metrics::default(),
            connections,
            guards: Guards::default(),
            tasks: TaskTracker::new(),
            shutdown: CancellationToken::new(),
            reload_status: Mutex::new(ReloadStatus::default()),
            access_log: ArcSwapOption::empty(),
            access_log_dropped_before: AtomicU64::new(0),
            throttle: Throttle::default(),
            started_at: SystemTime::now(),
            started: Instant::now(),
        })
    }

    /// Opens the access log that `settings` need, without switching to it yet.
    ///
    /// Returns `None` when the open access log already matches.
    pub fn prepare_access_log(&self, settings: &Log) -> Result<Option<PreparedAccessLog>, String> {
        let current = self.access_log.load();
        match (current.as_ref(), settings.access_log) {
            (None, false) => Ok(None),
            (Some(_), false) => Ok(Some(PreparedAccessLog(None))),
            (Some(open), true) if open.matches(settings) => Ok(None),
            (_, true) => Ok(Some(PreparedAccessLog(Some(Arc::new(AccessLog::open(settings)?))))),
        }
    }

    /// Switches to a prepared access log; requests already running finish their lines
    /// in the log they started with.
    pub fn commit_access_log(&self, prepared: Option<PreparedAccessLog>) {
        let Some(PreparedAccessLog(next)) = prepared else {
            return;
        };
        if let Some(old) = self.access_log.swap(next) {
            self.access_log_dropped_before
                .fetch_add(old.dropped(), Ordering::Relaxed);
        }
    }

    /// Returns the access log lines dropped since start because the queue was full.
    pub fn access_log_dropped(&self) -> u64 {
        let current = self.access_log.load().as_ref().map_or(0, |log| log.dropped());
        self.access_log_dropped_before.load(Ordering::Relaxed) + current
    }
}
