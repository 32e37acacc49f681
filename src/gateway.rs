//! Starting, reloading and stopping a gateway.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::task::JoinHandle;

use crate::admin::AdminServer;
use crate::config::{Config, ConfigError};
use crate::listener::{ListenerInfo, ListenerKind, Sharing};
use crate::reload::{ControlPlane, Controller, ReloadHandle, ReloadOutcome, Trigger, wanted_listeners};
use crate::state::State;
use crate::tls::{self, TlsError};

/// Errors that stop a gateway from starting.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{0}")]
    Config(#[from] ConfigError),
    #[error("{0}")]
    Bind(#[from] std::io::Error),
    #[error("{0}")]
    Log(String),
    #[error("{0}")]
    Tls(#[from] TlsError),
}

/// A running gateway.
pub struct Gateway {
    state: Arc<State>,
    plane: Arc<ControlPlane>,
    reloads: ReloadHandle,
    controller: JoinHandle<()>,
    config_path: PathBuf,
}

/// Closes expired idle upstream connections once a second until the gateway stops.
async fn reap_idle_connections(state: Arc<State>) {
    let mut ticks = tokio::time::interval(std::time::Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            () = state.shutdown.cancelled() => return,
        }
        for (_, pool) in state.registry.connection_pools.entries() {
            pool.prune();
        }
    }
}

impl Gateway {
    /// Loads the configuration, binds every listener, starts serving and starts
    /// watching the configuration for changes.
    ///
    /// Must run inside a Tokio runtime. A configuration error, a certificate that fails
    /// to load or a listener that cannot be bound stops start-up with that error.
    pub async fn start(config_path: impl AsRef<Path>) -> Result<Gateway, StartError> {
        Gateway::start_with(config_path, Sharing::Exclusive).await
    }

    /// Starts as [`Gateway::start`] does; with [`Sharing::Shared`] the listeners may bind
    /// beside another process's on the same addresses, for a zero-downtime upgrade.
    pub async fn start_with(config_path: impl AsRef<Path>, sharing: Sharing) -> Result<Gateway, StartError> {
        let config_path = config_path.as_ref().to_path_buf();
        let config = Arc::new(Config::load(&config_path)?);
        let state = Arc::new(State::new(config.clone())?);
        let plane = Arc::new(ControlPlane::default());
        let access_log = state.prepare_access_log(&config.log).map_err(StartError::Log)?;
        state.commit_access_log(access_log);

        let listeners = plane.listeners.prepare(&wanted_listeners(&config), sharing)?;
        plane.listeners.commit(&state, listeners);

        let (controller, reloads, requests) = Controller::new(state.clone(), plane.clone(), config_path.clone());
        if config.admin.enable {
            let admin = AdminServer::bind(config.admin.listen, sharing)?.start(
                state.clone(),
                controller.handle(),
                Arc::downgrade(&plane),
            );
            *plane.admin.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(admin);
        }
        let controller = tokio::spawn(controller.run(requests));
        tokio::spawn(reap_idle_connections(state.clone()));
        tls::activate(&state);

        crate::guard::warn_ineffective(&config);
        tracing::info!(
            config = %config_path.display(),
            routes = config.routes.len(),
            "gateway started"
        );
        Ok(Gateway {
            state,
            plane,
            reloads,
            controller,
            config_path,
        })
    }

    pub fn state(&self) -> &Arc<State> {
        &self.state
    }

    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    /// Returns a handle that triggers reloads, for signal handlers.
    pub fn reload_handle(&self) -> ReloadHandle {
        self.reloads.clone()
    }

    /// Reloads the configuration now, as SIGHUP does.
    pub async fn reload(&self) -> ReloadOutcome {
        self.reloads
            .reload(Trigger::Api)
            .await
            .expect("the reload controller runs while the gateway does")
    }

    /// Returns the generation of the snapshot that serves new requests.
    pub fn generation(&self) -> u64 {
        self.state.snapshot.load().generation
    }

    pub fn listeners(&self) -> Vec<ListenerInfo> {
        self.plane.listeners.list()
    }

    /// Returns the bound addresses of the plain-HTTP listeners.
    pub fn http_addrs(&self) -> Vec<SocketAddr> {
        self.addrs_of(ListenerKind::Http)
    }

    /// Returns the bound addresses of the HTTPS listeners.
    pub fn https_addrs(&self) -> Vec<SocketAddr> {
        self.addrs_of(ListenerKind::Https)
    }

    fn addrs_of(&self, kind: ListenerKind) -> Vec<SocketAddr> {
        self.listeners()
            .into_iter()
            .filter(|info| info.kind == kind)
            .map(|info| info.bound)
            .collect()
    }

    pub fn admin_addr(&self) -> Option<SocketAddr> {
        let admin = self.plane.admin.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        admin.as_ref().map(|admin| admin.addr)
    }

    /// Stops accepting, lets in-flight requests finish within shutdownTimeout, then
    /// returns. Connections still open after the timeout are left to the runtime's end.
    pub async fn shutdown(&self) {
        let timeout = self.state.snapshot.load().config.core.shutdown_timeout;
        self.plane.listeners.stop_accepting();
        if let Some(admin) = self
            .plane
            .admin
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .as_ref()
        {
            admin.stop();
        }
        self.state.shutdown.cancel();
        self.state.tasks.close();
        self.controller.abort();

        let in_flight = self.state.metrics.in_flight.load(std::sync::atomic::Ordering::Relaxed);
        tracing::info!(in_flight, "stopping: draining connections for up to {timeout:?}");
        if tokio::time::timeout(timeout, self.state.tasks.wait()).await.is_err() {
            tracing::warn!(
                open = self.state.tasks.len(),
                "shutdownTimeout passed with connections still open; closing them"
            );
        }

        // Write the access log lines still queued before the process exits.
        if let Some(log) = self.state.access_log.swap(None).and_then(Arc::into_inner) {
            let _ = tokio::task::spawn_blocking(move || log.close()).await;
        }
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        // Without this, a gateway dropped without `shutdown` would keep serving.
        self.state.shutdown.cancel();
        self.controller.abort();
    }
}
