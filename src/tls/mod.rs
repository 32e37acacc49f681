//! TLS termination: certificates, SNI selection, OCSP stapling and the rustls server
//! settings of each snapshot.
//!
//! A snapshot build loads every `[sslCert.<label>]` pair and builds a [`TlsContext`]: the
//! served certificates, a resolver over them and the rustls `ServerConfig`. A
//! certificate that fails to load fails the build, so a reload with a broken pair is
//! rejected whole. What must outlive snapshots lives in [`TlsState`]: the session
//! ticket keys, the session cache, fetched OCSP staples and handshake counters.
//!
//! The crypto provider is *ring* rather than rustls's default, aws-lc-rs: ring compiles
//! far less C code, so clean builds are faster, and it offers the TLS 1.2 and 1.3
//! suites and the RSA, ECDSA and Ed25519 keys a gateway needs.

pub mod certs;
pub mod fetch;
pub mod handshake;
pub mod ocsp;
pub mod resolver;
pub mod staple;

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use rustls::ServerConfig;
use rustls::crypto::CryptoProvider;
use rustls::server::{ProducesTickets, ServerSessionMemoryCache, StoresServerSessions};
use serde_json::{Value, json};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, TlsVersion};
use crate::state::State;
use certs::{CertError, LoadedCert, StapleMode, format_time, hex};
use resolver::{CertResolver, ServedCert, StapleSource};
use staple::FetchJob;

/// TLS sessions kept for resumption by session ID (TLS 1.2) or stateful tickets.
const SESSION_CACHE_SIZE: usize = 4096;

/// Errors that stop a TLS context from being built.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error(transparent)]
    Certificate(#[from] CertError),
    #[error("failed to set up TLS: {0}")]
    Setup(#[from] rustls::Error),
}

/// Handshake counters over all HTTPS listeners.
#[derive(Debug, Default)]
pub struct HandshakeStats {
    pub completed: AtomicU64,
    pub failed: AtomicU64,
    pub timed_out: AtomicU64,
}

/// TLS state that outlives snapshots.
pub struct TlsState {
    pub provider: Arc<CryptoProvider>,
    /// Created on first use, so a configuration without session tickets never has keys.
    ticketer: Mutex<Option<Arc<dyn ProducesTickets>>>,
    sessions: Arc<dyn StoresServerSessions>,
    pub staples: staple::StapleStore,
    pub handshakes: HandshakeStats,
}

impl Default for TlsState {
    fn default() -> Self {
        TlsState {
            provider: Arc::new(rustls::crypto::ring::default_provider()),
            ticketer: Mutex::new(None),
            sessions: ServerSessionMemoryCache::new(SESSION_CACHE_SIZE),
            staples: staple::StapleStore::default(),
            handshakes: HandshakeStats::default(),
        }
    }
}

impl std::fmt::Debug for TlsState {
    // Ticket keys stay out of every log.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsState")
            .field("handshakes", &self.handshakes)
            .finish_non_exhaustive()
    }
}

impl TlsState {
    /// Returns the session ticket encrypter: rustls's rotating ticketer, whose keys
    /// are random, held in memory only and replaced every 6 hours.
    fn ticketer(&self) -> Result<Arc<dyn ProducesTickets>, TlsError> {
        let mut ticketer = self.ticketer.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(existing) = ticketer.as_ref() {
            return Ok(existing.clone());
        }
        let created = rustls::crypto::ring::Ticketer::new()?;
        *ticketer = Some(created.clone());
        Ok(created)
    }
}

/// The TLS side of one snapshot.
pub struct TlsContext {
    pub acceptor: TlsAcceptor,
    /// The certificates in file order.
    pub certs: Arc<[Arc<ServedCert>]>,
}

impl std::fmt::Debug for TlsContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let labels: Vec<&str> = self.certs.iter().map(|cert| cert.loaded.label.as_str()).collect();
        f.debug_struct("TlsContext")
            .field("certs", &labels)
            .finish_non_exhaustive()
    }
}

/// Loads the certificates of `config` and prepares their staples; returns them with
/// the warnings an operator should see (expiry, unusable OCSP settings).
fn prepare(config: &Config, state: &TlsState) -> Result<(Vec<Arc<ServedCert>>, Vec<String>), TlsError> {
    let loaded = certs::load_all(&config.certs, &state.provider)?;
    let now = SystemTime::now();
    let mut warnings = Vec::new();

    let served = loaded
        .into_iter()
        .map(|cert| {
            warnings.extend(cert.expiry_warning(now));
            let source = staple_source(&cert, state, now, &mut warnings);
            Arc::new(ServedCert::new(cert, source))
        })
        .collect();
    Ok((served, warnings))
}

/// Decides how a certificate gets its staple; a file's response is verified here.
fn staple_source(cert: &LoadedCert, state: &TlsState, now: SystemTime, warnings: &mut Vec<String>) -> StapleSource {
    let subject = format!("sslCert.{} ({})", cert.label, cert.cert_file.display());
    match &cert.staple_mode {
        StapleMode::Off => StapleSource::Off,
        StapleMode::File { path, response } => {
            let verified = match &cert.issuer {
                Some(issuer) => {
                    ocsp::verify(&state.provider, response, &cert.leaf, issuer, now).map_err(|e| e.to_string())
                }
                None => Err(
                    "the chain file holds no issuer certificate to verify it with; add the issuer to the chain".into(),
                ),
            };
            if let Err(error) = &verified {
                warnings.push(format!(
                    "{subject}: the OCSP response in {} is not stapled: {error}",
                    path.display()
                ));
            }
            StapleSource::File {
                path: path.clone(),
                staple: verified.as_ref().ok().cloned().map(Arc::new),
                error: verified.err(),
            }
        }
        StapleMode::Fetch => {
            if cert.ocsp_url.is_none() {
                warnings.push(format!(
                    "{subject}: ocsp_stapling is on, but the certificate names no OCSP responder; no staple is sent"
                ));
                return StapleSource::Off;
            }
            StapleSource::Fetch {
                slot: state.staples.slot(cert.fingerprint),
            }
        }
    }
}

fn server_config(config: &Config, resolver: Arc<CertResolver>, state: &TlsState) -> Result<ServerConfig, TlsError> {
    let versions: &[&rustls::SupportedProtocolVersion] = match config.ssl_base.min_version {
        TlsVersion::Tls12 => &[&rustls::version::TLS13, &rustls::version::TLS12],
        TlsVersion::Tls13 => &[&rustls::version::TLS13],
    };
    let mut server = ServerConfig::builder_with_provider(state.provider.clone())
        .with_protocol_versions(versions)?
        .with_no_client_auth()
        .with_cert_resolver(resolver);

    // NOTE: with http2 = false only ALPN stops offering h2. A client that sends the
    // HTTP/2 preface anyway is still served, because HTTP/1 and HTTP/2 share one server.
    server.alpn_protocols = if config.ssl_base.http2 {
        vec![b"h2".to_vec(), b"http/1.1".to_vec()]
    } else {
        vec![b"http/1.1".to_vec()]
    };
    server.session_storage = state.sessions.clone();
    if config.ssl_base.session_ticket {
        server.ticketer = state.ticketer()?;
    } else {
        // Without this, TLS 1.3 would still send tickets that name cached sessions.
        server.send_tls13_tickets = 0;
    }
    Ok(server)
}

impl TlsContext {
    /// Loads the certificates of `config` and builds the server settings. Returns
    /// `None` when no certificate is configured.
    pub fn build(config: &Config, state: &TlsState) -> Result<Option<Arc<TlsContext>>, TlsError> {
        if config.certs.is_empty() {
            return Ok(None);
        }
        let (served, warnings) = prepare(config, state)?;
        for warning in warnings {
            tracing::warn!("{warning}");
        }

        let certs: Arc<[Arc<ServedCert>]> = served.into();
        let resolver = Arc::new(CertResolver::new(certs.clone()));
        let server = server_config(config, resolver, state)?;
        Ok(Some(Arc::new(TlsContext {
            acceptor: TlsAcceptor::from(Arc::new(server)),
            certs,
        })))
    }

    /// Starts a staple refresher for each certificate that fetches its staple.
    fn start_refreshers(&self, state: &TlsState, shutdown: &CancellationToken) {
        let mut started = HashSet::new();
        for cert in self.certs.iter() {
            let StapleSource::Fetch { slot } = &cert.staple else {
                continue;
            };
            let Some(ocsp_url) = &cert.loaded.ocsp_url else {
                continue;
            };
            // Two labels may serve one certificate; its slot needs one refresher.
            if !started.insert(cert.loaded.fingerprint) {
                continue;
            }
            let job = FetchJob {
                label: cert.loaded.label.clone(),
                serial: cert.loaded.serial.clone(),
                leaf: cert.loaded.leaf.clone(),
                issuer: cert.loaded.issuer.clone(),
                ocsp_url: ocsp_url.clone(),
                ca_issuers_url: cert.loaded.ca_issuers_url.clone(),
                provider: state.provider.clone(),
            };
            slot.start(job, shutdown);
        }
    }
}

/// Makes the staple refreshers match the current snapshot: starts those of new
/// certificates and stops those of certificates it no longer serves. Called after a
/// snapshot is swapped in.
pub fn activate(state: &State) {
    let snapshot = state.snapshot.load();
    let tls = &state.registry.tls;
    let mut fetched = HashSet::new();
    if let Some(context) = &snapshot.tls {
        for cert in context.certs.iter() {
            if matches!(cert.staple, StapleSource::Fetch { .. }) {
                fetched.insert(cert.loaded.fingerprint);
            }
        }
        context.start_refreshers(tls, &state.shutdown);
    }
    tls.staples.retain(&fetched);
}

/// Loads and checks every certificate of `config` without serving, for `-t`. Returns
/// the warnings an operator should see.
pub fn check(config: &Config) -> Result<Vec<String>, TlsError> {
    let state = TlsState::default();
    let (_, warnings) = prepare(config, &state)?;
    Ok(warnings)
}

/// Logs which certificates a reload added, removed or replaced.
pub fn log_changes(old: Option<&TlsContext>, new: Option<&TlsContext>) {
    let serials = |context: Option<&TlsContext>| -> Vec<(String, String)> {
        context
            .map(|context| {
                context
                    .certs
                    .iter()
                    .map(|cert| (cert.loaded.label.clone(), cert.loaded.serial.clone()))
                    .collect()
            })
            .unwrap_or_default()
    };
    let (old, new) = (serials(old), serials(new));
    for (label, serial) in &new {
        match old.iter().find(|(old_label, _)| old_label == label) {
            None => tracing::info!(certificate = %label, %serial, "certificate added"),
            Some((_, old_serial)) if old_serial != serial => {
                tracing::info!(certificate = %label, %serial, previous = %old_serial, "certificate replaced")
            }
            Some(_) => {}
        }
    }
    for (label, serial) in &old {
        if !new.iter().any(|(new_label, _)| new_label == label) {
            tracing::info!(certificate = %label, %serial, "certificate removed");
        }
    }
}

fn unix_seconds(time: SystemTime) -> u64 {
    time.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// Describes the staple of one certificate for the admin status.
fn staple_status(cert: &ServedCert, now: SystemTime) -> Value {
    let current = cert.current_staple(now);
    let mut value = json!({
        "mode": match cert.staple {
            StapleSource::Off => "off",
            StapleSource::File { .. } => "file",
            StapleSource::Fetch { .. } => "fetch",
        },
        "stapled": current.is_some(),
    });
    if let Some(staple) = &current {
        value["this_update"] = json!(format_time(staple.this_update));
        value["next_update"] = json!(format_time(staple.next_update));
        value["age_seconds"] = json!(now.duration_since(staple.this_update).unwrap_or_default().as_secs());
    }
    match &cert.staple {
        StapleSource::Off => {}
        StapleSource::File { path, error, .. } => {
            value["file"] = json!(path.display().to_string());
            value["error"] = json!(error);
        }
        StapleSource::Fetch { slot } => {
            let status = slot.status();
            value["responder"] = json!(cert.loaded.ocsp_url);
            value["error"] = json!(status.last_error);
            value["failures"] = json!(status.failures);
            value["last_success"] = json!(status.last_success.map(format_time));
            value["next_fetch"] = json!(status.next_fetch.map(format_time));
        }
    }
    value
}

/// Expiry and staple figures of one served certificate, for metrics.
pub struct CertificateFigures {
    pub label: String,
    pub not_after_unix: u64,
    /// Age of the staple being sent, in seconds since its thisUpdate; `None` without one.
    pub staple_age_seconds: Option<u64>,
}

/// Returns the figures of every certificate the current snapshot serves.
pub fn certificate_figures(state: &State) -> Vec<CertificateFigures> {
    let snapshot = state.snapshot.load();
    let now = SystemTime::now();
    snapshot
        .tls
        .iter()
        .flat_map(|context| context.certs.iter())
        .map(|cert| CertificateFigures {
            label: cert.loaded.label.clone(),
            not_after_unix: unix_seconds(cert.loaded.not_after),
            staple_age_seconds: cert
                .current_staple(now)
                .map(|staple| now.duration_since(staple.this_update).unwrap_or_default().as_secs()),
        })
        .collect()
}

/// Builds the `certificates` and `tls` sections of the admin status.
pub fn status(state: &State) -> (Value, Value) {
    let snapshot = state.snapshot.load();
    let now = SystemTime::now();
    let certificates: Vec<Value> = snapshot
        .tls
        .iter()
        .flat_map(|context| context.certs.iter())
        .map(|cert| {
            let loaded = &cert.loaded;
            json!({
                "label": loaded.label,
                "file": loaded.cert_file.display().to_string(),
                "names": loaded.names,
                "serial": loaded.serial,
                "sha256": hex(&loaded.fingerprint),
                "default": loaded.default,
                "not_before": format_time(loaded.not_before),
                "not_after": format_time(loaded.not_after),
                "not_after_unix": unix_seconds(loaded.not_after),
                "expiry": loaded.expiry(now),
                "staple": staple_status(cert, now),
            })
        })
        .collect();

    let handshakes = &state.registry.tls.handshakes;
    let tls = json!({
        "handshakes": {
            "completed": handshakes.completed.load(Ordering::Relaxed),
            "failed": handshakes.failed.load(Ordering::Relaxed),
            "timed_out": handshakes.timed_out.load(Ordering::Relaxed),
        },
    });
    (Value::Array(certificates), tls)
}
