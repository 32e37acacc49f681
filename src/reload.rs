//! Live reload: file watcher, SIGHUP, `-s reload` and `POST /reload` all end here.
//!
//! One controller task performs every reload, one at a time: read and validate the
//! configuration, load the certificates and build the new snapshot, bind new
//! listeners, then swap the snapshot and close removed listeners. A failure at any step
//! leaves the old snapshot serving and nothing changed. A reload whose result equals
//! the current configuration (same parsed settings, same contents of every referenced
//! file) is skipped.
//!
//! The watcher watches the parent directory of the configuration file and of every file
//! it names, both as given and with symlinks resolved. Watching directories instead of
//! files catches every way of writing a file: in place, through a temporary file and a
//! rename (vim, `sed -i`), truncate then write, and delete then recreate. It also catches
//! Kubernetes' ConfigMap layout, where `..data` is a symlink that is replaced by a rename.

use std::collections::BTreeSet;
use std::hash::Hasher;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use notify::event::{AccessKind, AccessMode};
use notify::{EventKind, RecommendedWatcher, RecursiveMode, Watcher};
use serde::Serialize;
use siphasher::sip128::{Hasher128, SipHasher13};
use tokio::sync::{mpsc, oneshot};

use crate::admin::AdminServer;
use crate::config::{Config, ConfigError, Diagnostic};
use crate::listener::{ListenerKind, Listeners, Sharing};
use crate::logging;
use crate::snapshot::Snapshot;
use crate::state::State;
use crate::tls::{self, TlsError};

/// Quiet time after the last file event before a reload starts.
const DEBOUNCE: Duration = Duration::from_millis(200);

/// Maximum time a stream of file events can postpone a reload.
const DEBOUNCE_LIMIT: Duration = Duration::from_millis(600);

/// The source that started a reload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Trigger {
    FileChange,
    Signal,
    Admin,
    Api,
}

impl std::fmt::Display for Trigger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Trigger::FileChange => "file_change",
            Trigger::Signal => "signal",
            Trigger::Admin => "admin",
            Trigger::Api => "api",
        })
    }
}

/// The result of one reload.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum ReloadOutcome {
    /// A new snapshot serves from now on.
    Applied { generation: u64, changes: String },
    /// The configuration and its files are as already loaded; nothing was swapped.
    Unchanged { generation: u64 },
    /// The reload was rejected; the snapshot of `generation` keeps serving.
    Failed {
        generation: u64,
        error: String,
        diagnostics: Vec<Diagnostic>,
    },
}

/// Reload counters and outcomes, as the admin API reports them.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ReloadStatus {
    pub applied_total: u64,
    pub failed_total: u64,
    /// Unix time in milliseconds of the last reload attempt that was not skipped.
    pub last_attempt_unix_ms: Option<u64>,
    pub last_trigger: Option<Trigger>,
    pub last_outcome: Option<ReloadOutcome>,
    /// The last failure, kept until a later reload applies.
    pub last_error: Option<ReloadOutcome>,
}

fn unix_ms(time: SystemTime) -> u64 {
    time.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Errors that reject a reload.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("{0}")]
    Config(#[from] ConfigError),
    #[error("{0}")]
    Bind(#[from] std::io::Error),
    #[error("{0}")]
    Log(String),
    #[error("{0}")]
    Tls(#[from] TlsError),
    #[error("reload task failed: {0}")]
    Internal(String),
}

type Request = (Trigger, oneshot::Sender<ReloadOutcome>);

/// Sends reload requests to the controller; cheap to clone.
#[derive(Clone)]
pub struct ReloadHandle {
    requests: mpsc::Sender<Request>,
}

impl ReloadHandle {
    /// Reloads now and returns the outcome. Returns `None` once the gateway stopped.
    pub async fn reload(&self, trigger: Trigger) -> Option<ReloadOutcome> {
        let (reply, outcome) = oneshot::channel();
        self.requests.send((trigger, reply)).await.ok()?;
        outcome.await.ok()
    }
}

/// The listeners and admin server, which reloads change and the gateway reads.
#[derive(Default)]
pub struct ControlPlane {
    pub listeners: Listeners,
    pub admin: Mutex<Option<AdminServer>>,
}

/// Returns the listener addresses that a configuration names.
pub fn wanted_listeners(config: &Config) -> Vec<(std::net::SocketAddr, ListenerKind)> {
    let http = config.core.http_listen.iter().map(|&addr| (addr, ListenerKind::Http));
    let https = config.core.https_listen.iter().map(|&addr| (addr, ListenerKind::Https));
    http.chain(https).collect()
}

/// Hashes the contents of every file the configuration names; a missing file hashes
/// as absent, so its appearance is a change.
fn file_fingerprint(config: &Config) -> u128 {
    let mut hasher = SipHasher13::new();
    for file in config.referenced_files() {
        hasher.write(file.as_os_str().as_encoded_bytes());
        match std::fs::read(&file) {
            Ok(bytes) => {
                hasher.write_u8(1);
                hasher.write(&bytes);
            }
            Err(_) => hasher.write_u8(0),
        }
    }
    hasher.finish128().as_u128()
}

/// Returns the directories to watch for `files`: each parent as given and with
/// symlinks resolved.
fn watch_dirs(files: &[PathBuf]) -> BTreeSet<PathBuf> {
    let mut dirs = BTreeSet::new();
    for file in files {
        let absolute = std::path::absolute(file).unwrap_or_else(|_| file.clone());
        if let Some(parent) = absolute.parent() {
            dirs.insert(parent.to_path_buf());
        }
        if let Ok(real) = std::fs::canonicalize(file) {
            if let Some(parent) = real.parent() {
                dirs.insert(parent.to_path_buf());
            }
        }
    }
    dirs
}

/// Returns whether a file event can mean changed contents. Opening and reading a file
/// (the gateway's own reads included) is not a change.
fn is_change(kind: &EventKind) -> bool {
    match kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        EventKind::Access(_) => false,
        _ => true,
    }
}

/// Describes what differs between two configurations in one line.
fn summarize(old: &Config, new: &Config) -> String {
    let mut parts = Vec::new();

    let old_routes: BTreeSet<&str> = old.routes.iter().map(|r| r.label.as_str()).collect();
    let new_routes: BTreeSet<&str> = new.routes.iter().map(|r| r.label.as_str()).collect();
    let added: Vec<&str> = new_routes.difference(&old_routes).copied().collect();
    let removed: Vec<&str> = old_routes.difference(&new_routes).copied().collect();
    let changed: Vec<&str> = new
        .routes
        .iter()
        .filter(|route| old.routes.iter().any(|o| o.label == route.label && *o != **route))
        .map(|route| route.label.as_str())
        .collect();
    for (sign, list) in [("+", &added), ("-", &removed), ("~", &changed)] {
        if !list.is_empty() {
            parts.push(format!("routes {sign}{}", list.join(",")));
        }
    }

    let targets = |config: &Config| -> BTreeSet<String> {
        config
            .routes
            .iter()
            .flat_map(|r| r.targets.iter().map(move |t| format!("{}={}", r.label, t.url)))
            .collect()
    };
    let (old_targets, new_targets) = (targets(old), targets(new));
    let added: Vec<&String> = new_targets.difference(&old_targets).collect();
    let removed: Vec<&String> = old_targets.difference(&new_targets).collect();
    if !added.is_empty() {
        parts.push(format!(
            "targets +{}",
            added.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(",")
        ));
    }
    if !removed.is_empty() {
        parts.push(format!(
            "targets -{}",
            removed.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(",")
        ));
    }

    if wanted_listeners(old) != wanted_listeners(new) {
        parts.push("listeners changed".into());
    }
    if old.certs != new.certs {
        parts.push("certificates changed".into());
    }
    let sections = [
        ("[core]", old.core != new.core),
        ("[ccDefense]", old.cc_defense != new.cc_defense),
        ("[limitReq]", old.limit_req != new.limit_req),
        ("[log]", old.log != new.log),
        ("[admin]", old.admin != new.admin),
        ("[sslBase]", old.ssl_base != new.ssl_base),
    ];
    let changed: Vec<&str> = sections
        .iter()
        .filter(|(_, changed)| *changed)
        .map(|(name, _)| *name)
        .collect();
    if !changed.is_empty() {
        parts.push(format!("{} changed", changed.join(", ")));
    }
    if parts.is_empty() {
        return "certificate, key or OCSP file contents changed".into();
    }
    parts.join("; ")
}

/// Performs reloads; owned by one task, so reloads never overlap.
pub struct Controller {
    state: Arc<State>,
    plane: Arc<ControlPlane>,
    config_path: PathBuf,
    reloads: ReloadHandle,
    files: u128,
    watcher: Option<RecommendedWatcher>,
    watched: BTreeSet<PathBuf>,
    events: mpsc::UnboundedReceiver<()>,
}

impl Controller {
    /// Creates the controller for a gateway that already serves `state`'s snapshot, and
    /// starts watching the configuration's files.
    pub fn new(
        state: Arc<State>,
        plane: Arc<ControlPlane>,
        config_path: PathBuf,
    ) -> (Controller, ReloadHandle, mpsc::Receiver<Request>) {
        let (requests, receiver) = mpsc::channel(16);
        let reloads = ReloadHandle { requests };
        let files = file_fingerprint(&state.snapshot.load().config);

        let (events_tx, events) = mpsc::unbounded_channel();
        let watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
            if let Ok(event) = event {
                if is_change(&event.kind) {
                    let _ = events_tx.send(());
                }
            }
        });
        let watcher = match watcher {
            Ok(watcher) => Some(watcher),
            Err(error) => {
                tracing::warn!(error = %error, "file watcher unavailable; reload with SIGHUP or POST /reload");
                None
            }
        };

        let mut controller = Controller {
            state,
            plane,
            config_path,
            reloads: reloads.clone(),
            files,
            watcher,
            watched: BTreeSet::new(),
            events,
        };
        controller.update_watches();
        (controller, reloads, receiver)
    }

    /// Runs until the gateway stops, serving reload requests and file events.
    ///
    /// File events start a debounce. An explicit request meanwhile reloads at once, and
    /// because it reads every file afresh it also settles the pending file change.
    pub async fn run(mut self, mut requests: mpsc::Receiver<Request>) {
        let shutdown = self.state.shutdown.clone();
        let mut pending: Option<Debounce> = None;
        let timer = tokio::time::sleep(Duration::ZERO);
        tokio::pin!(timer);

        loop {
            if let Some(debounce) = &pending {
                timer.as_mut().reset(debounce.due());
            }
            tokio::select! {
                request = requests.recv() => {
                    let Some((trigger, reply)) = request else { return };
                    pending = None;
                    let outcome = self.reload(trigger).await;
                    let _ = reply.send(outcome);
                }
                event = self.events.recv() => {
                    if event.is_none() {
                        return;
                    }
                    let now = tokio::time::Instant::now();
                    match &mut pending {
                        Some(debounce) => debounce.last_event = now,
                        None => pending = Some(Debounce { first_event: now, last_event: now }),
                    }
                }
                () = &mut timer, if pending.is_some() => {
                    pending = None;
                    self.reload(Trigger::FileChange).await;
                }
                () = shutdown.cancelled() => return,
            }
        }
    }

    /// Returns a handle for sending reload requests.
    pub fn handle(&self) -> ReloadHandle {
        self.reloads.clone()
    }

    fn update_watches(&mut self) {
        let Some(watcher) = self.watcher.as_mut() else { return };
        let config = self.state.snapshot.load().config.clone();
        let mut files = vec![self.config_path.clone()];
        files.extend(config.referenced_files());
        let wanted = watch_dirs(&files);

        for dir in self.watched.difference(&wanted) {
            let _ = watcher.unwatch(dir);
        }
        let mut watched = BTreeSet::new();
        for dir in wanted {
            if self.watched.contains(&dir) {
                watched.insert(dir);
                continue;
            }
            match watcher.watch(&dir, RecursiveMode::NonRecursive) {
                Ok(()) => {
                    watched.insert(dir);
                }
                Err(error) => {
                    tracing::warn!(dir = %dir.display(), error = %error, "failed to watch directory for changes")
                }
            }
        }
        self.watched = watched;
    }

    /// Reloads once and records the outcome.
    pub async fn reload(&mut self, trigger: Trigger) -> ReloadOutcome {
        let current = self.state.snapshot.load_full();
        let generation = current.generation;
        let outcome = match self.try_reload(&current).await {
            Ok(Some(changes)) => ReloadOutcome::Applied {
                generation: generation + 1,
                changes,
            },
            Ok(None) => ReloadOutcome::Unchanged { generation },
            Err(error) => ReloadOutcome::Failed {
                generation,
                diagnostics: match &error {
                    ReloadError::Config(config) => config.diagnostics().to_vec(),
                    _ => Vec::new(),
                },
                error: error.to_string(),
            },
        };

        match &outcome {
            ReloadOutcome::Applied { generation, changes } => {
                tracing::info!(generation, %trigger, "configuration reloaded: {changes}");
                self.update_watches();
            }
            ReloadOutcome::Unchanged { generation } => {
                tracing::debug!(generation, %trigger, "reload skipped: nothing changed");
            }
            ReloadOutcome::Failed { generation, error, .. } => {
                tracing::error!(
                    generation,
                    %trigger,
                    "reload rejected; generation {generation} keeps serving: {error}"
                );
                // A file may have moved; watch its new place so the fix is seen.
                self.update_watches();
            }
        }
        self.record(trigger, &outcome);
        outcome
    }

    fn record(&self, trigger: Trigger, outcome: &ReloadOutcome) {
        let mut status = self
            .state
            .reload_status
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        // File events that change nothing are frequent (editor swap files, the gateway's
        // own reads of its folder) and not worth recording. The exception settles an
        // error: a file put back as it was matches what runs, so the error is over.
        let unchanged = matches!(outcome, ReloadOutcome::Unchanged { .. });
        if unchanged && trigger == Trigger::FileChange && status.last_error.is_none() {
            return;
        }
        status.last_attempt_unix_ms = Some(unix_ms(SystemTime::now()));
        status.last_trigger = Some(trigger);
        status.last_outcome = Some(outcome.clone());
        match outcome {
            ReloadOutcome::Applied { .. } => {
                status.applied_total += 1;
                status.last_error = None;
            }
            ReloadOutcome::Failed { .. } => {
                status.failed_total += 1;
                status.last_error = Some(outcome.clone());
            }
            ReloadOutcome::Unchanged { .. } => {
                if status.last_error.take().is_some() {
                    tracing::info!(
                        "the configuration files match the running configuration again; the last reload error is cleared"
                    );
                }
            }
        }
    }

    /// Returns the change summary of an applied reload, or `None` when nothing changed.
    async fn try_reload(&mut self, current: &Snapshot) -> Result<Option<String>, ReloadError> {
        // Reading the configuration and the certificate files blocks, so it runs off the
        // runtime threads that serve connections.
        let path = self.config_path.clone();
        let state = self.state.clone();
        let (running_config, running_files) = (current.config.clone(), self.files);
        let generation = current.generation + 1;
        let built = tokio::task::spawn_blocking(move || -> Result<Option<(Snapshot, u128)>, ReloadError> {
            let config = Config::load(&path)?;
            let files = file_fingerprint(&config);
            if config == *running_config && files == running_files {
                return Ok(None);
            }
            let snapshot = Snapshot::build(Arc::new(config), &state.registry, generation)?;
            Ok(Some((snapshot, files)))
        })
        .await
        .map_err(|error| ReloadError::Internal(error.to_string()))??;

        let Some((snapshot, files)) = built else {
            return Ok(None);
        };
        let config = snapshot.config.clone();
        let changes = summarize(&current.config, &config);

        let admin_moved = config.admin.listen != current.config.admin.listen || !current.config.admin.enable;
        let admin = if config.admin.enable && admin_moved {
            Some(AdminServer::bind(config.admin.listen, Sharing::Exclusive)?)
        } else {
            None
        };
        let listeners = self
            .plane
            .listeners
            .prepare(&wanted_listeners(&config), Sharing::Exclusive)?;
        let log_file = logging::prepare(&config.log).map_err(ReloadError::Log)?;
        let access_log = self.state.prepare_access_log(&config.log).map_err(ReloadError::Log)?;

        // Nothing below can fail: commit everything, the snapshot first so that new
        // listeners serve it from their first connection.
        self.state.snapshot.store(Arc::new(snapshot));
        self.plane.listeners.commit(&self.state, listeners);
        logging::commit(config.log.level, log_file);
        self.state.commit_access_log(access_log);
        self.state.connections.set_limit(config.core.limit_max_conn);
        crate::guard::warn_ineffective(&config);
        self.state.snapshot.load().prune(&self.state.registry);
        tls::activate(&self.state);
        tls::log_changes(current.tls.as_deref(), self.state.snapshot.load().tls.as_deref());
        self.files = files;

        let mut running = self.plane.admin.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(bound) = admin {
            *running = Some(bound.start(self.state.clone(), self.reloads.clone(), Arc::downgrade(&self.plane)));
        } else if !config.admin.enable {
            *running = None;
        }
        Ok(Some(changes))
    }
}

/// A burst of file events that has not been reloaded yet.
struct Debounce {
    first_event: tokio::time::Instant,
    last_event: tokio::time::Instant,
}

impl Debounce {
    /// Returns when to reload: `DEBOUNCE` after the last event, at most
    /// `DEBOUNCE_LIMIT` after the first.
    fn due(&self) -> tokio::time::Instant {
        (self.last_event + DEBOUNCE).min(self.first_event + DEBOUNCE_LIMIT)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn config(text: &str) -> Config {
        Config::parse(Path::new("gateway.toml"), text).unwrap()
    }

    const BASE: &str = "[core]\nhttpListen = [\"127.0.0.1:8080\"]\n\n[proxyInfo.a]\nhost = \"a.test\"\ntarget = [\"http://127.0.0.1:9001\"]\n";

    #[test]
    fn summary_names_routes_and_targets() {
        let old = config(BASE);
        let new = config(&format!(
            "{}\n[proxyInfo.b]\nhost = \"b.test\"\ntarget = [\"http://127.0.0.1:9002\"]\n",
            BASE.replace("9001", "9003")
        ));
        let summary = summarize(&old, &new);
        assert!(summary.contains("routes +b"), "{summary}");
        assert!(summary.contains("routes ~a"), "{summary}");
        assert!(
            summary.contains("targets +a=http://127.0.0.1:9003,b=http://127.0.0.1:9002"),
            "{summary}"
        );
        assert!(summary.contains("targets -a=http://127.0.0.1:9001"), "{summary}");
    }

    #[test]
    fn summary_names_listener_changes() {
        let old = config(BASE);
        let new = config(&BASE.replace("8080", "8081"));
        assert!(summarize(&old, &new).contains("listeners changed"));
    }

    #[test]
    fn open_events_are_not_changes() {
        assert!(!is_change(&EventKind::Access(AccessKind::Open(AccessMode::Any))));
        assert!(is_change(&EventKind::Access(AccessKind::Close(AccessMode::Write))));
        assert!(is_change(&EventKind::Create(notify::event::CreateKind::File)));
        assert!(is_change(&EventKind::Remove(notify::event::RemoveKind::File)));
    }

    #[test]
    fn watch_dirs_include_resolved_symlinks() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("v1");
        std::fs::create_dir(&real).unwrap();
        std::fs::write(real.join("gateway.toml"), "").unwrap();
        std::os::unix::fs::symlink(&real, dir.path().join("..data")).unwrap();
        std::os::unix::fs::symlink("..data/gateway.toml", dir.path().join("gateway.toml")).unwrap();

        let dirs = watch_dirs(&[dir.path().join("gateway.toml")]);
        assert!(dirs.contains(dir.path()), "{dirs:?}");
        assert!(dirs.contains(&std::fs::canonicalize(&real).unwrap()), "{dirs:?}");
    }
}
