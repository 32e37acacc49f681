//! Starting and stopping a gateway.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::admin::AdminServer;
use crate::config::{Config, ConfigError};
use crate::listener::{ListenerInfo, ListenerKind, Listeners};
use crate::state::State;

/// Errors that stop a gateway from starting.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{0}")]
    Config(#[from] ConfigError),
    #[error("{0}")]
    Bind(#[from] std::io::Error),
}

/// A running gateway.
pub struct Gateway {
    state: Arc<State>,
    listeners: Listeners,
    admin: Option<AdminServer>,
    config_path: PathBuf,
}

/// Returns the listener addresses that a configuration names.
fn wanted_listeners(config: &Config) -> Vec<(SocketAddr, ListenerKind)> {
    config
        .core
        .http_listen
        .iter()
        .map(|&addr| (addr, ListenerKind::Http))
        .collect()
}

/// Warns about enabled settings that this build parses and validates but does not
/// enforce yet, so none of them is ignored silently.
fn warn_unimplemented(config: &Config) {
    // NOTE: each of these warnings goes away when its feature lands.
    if !config.certs.is_empty() || !config.core.https_listen.is_empty() {
        tracing::warn!("[sslCert] and httpsListen are set, but this build serves plain HTTP only");
    }
    if config.log.write_file || config.log.access_log {
        tracing::warn!("[log] writeFile and accessLog are set, but this build logs to the console only");
    }
}

impl Gateway {
    /// Loads the configuration, binds every listener and starts serving.
    ///
    /// Must run inside a Tokio runtime. A configuration error or a listener that cannot
    /// be bound stops start-up with that error.
    pub async fn start(config_path: impl AsRef<Path>) -> Result<Gateway, StartError> {
        let config_path = config_path.as_ref().to_path_buf();
        let config = Arc::new(Config::load(&config_path)?);
        let state = Arc::new(State::new(config.clone()));

        let listeners = Listeners::default();
        listeners.reconcile(&state, &wanted_listeners(&config))?;

        let admin = if config.admin.enable {
            Some(AdminServer::start(state.clone(), config.admin.listen)?)
        } else {
            None
        };

        warn_unimplemented(&config);
        crate::guard::warn_ineffective(&config);
        tracing::info!(
            config = %config_path.display(),
            routes = config.routes.len(),
            "gateway started"
        );
        Ok(Gateway {
            state,
            listeners,
            admin,
            config_path,
        })
    }

    pub fn state(&self) -> &Arc<State> {
        &self.state
    }

    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    pub fn listeners(&self) -> Vec<ListenerInfo> {
        self.listeners.list()
    }

    /// Returns the bound addresses of the plain-HTTP listeners.
    pub fn http_addrs(&self) -> Vec<SocketAddr> {
        self.listeners
            .list()
            .into_iter()
            .filter(|info| info.kind == ListenerKind::Http)
            .map(|info| info.bound)
            .collect()
    }

    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().map(|admin| admin.addr)
    }

    /// Stops accepting, lets in-flight requests finish within shutdownTimeout, then
    /// returns. Connections still open after the timeout are left to the runtime's end.
    pub async fn shutdown(&self) {
        let timeout = self.state.snapshot.load().config.core.shutdown_timeout;
        self.listeners.stop_accepting();
        if let Some(admin) = &self.admin {
            admin.stop();
        }
        self.state.shutdown.cancel();
        self.state.tasks.close();

        let in_flight = self.state.metrics.in_flight.load(std::sync::atomic::Ordering::Relaxed);
        tracing::info!(in_flight, "stopping: draining connections for up to {timeout:?}");
        if tokio::time::timeout(timeout, self.state.tasks.wait()).await.is_err() {
            tracing::warn!(
                open = self.state.tasks.len(),
                "shutdownTimeout passed with connections still open; closing them"
            );
        }
    }
}
