//! Fetched OCSP staples, kept across reloads by certificate fingerprint, and the
//! background task that keeps each one fresh.
//!
//! A refresher fetches a response from the certificate's responder, verifies it, and
//! stores it in the certificate's slot. It fetches again half-way through the
//! response's validity, retries with exponential backoff after a failure, and drops the
//! staple at its nextUpdate when no fresh one arrived. Handshakes only read the slot,
//! so a responder that is down or slow never delays one.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwapOption;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use tokio_util::sync::CancellationToken;

use super::certs::{Fingerprint, ParsedCert, format_time};
use super::fetch::{self, FetchError};
use super::ocsp::{self, OcspError, Staple};

/// First wait before retrying a failed fetch; it doubles with each further failure.
const RETRY_MIN: Duration = Duration::from_secs(2);

/// Maximum wait between retries of a failing fetch.
const RETRY_MAX: Duration = Duration::from_secs(10 * 60);

/// Shortest wait between two successful fetches, for responses whose validity is
/// very short or already half over when they arrive (a responder behind a cache).
const MIN_REFRESH_INTERVAL: Duration = Duration::from_secs(10);

/// Errors that stop a staple fetch.
#[derive(Debug, thiserror::Error)]
pub enum StapleError {
    #[error(
        "the chain holds no issuer certificate and the certificate names no CA Issuers URL; add the issuer certificate to the chain file"
    )]
    NoIssuer,
    #[error("{url} returned no certificate that issued this one")]
    WrongIssuer { url: String },
    #[error(transparent)]
    Fetch(#[from] FetchError),
    #[error(transparent)]
    Ocsp(#[from] OcspError),
}

/// The certificate, issuer and URLs a refresher fetches and verifies a staple with.
#[derive(Clone)]
pub struct FetchJob {
    /// The label of the first `[sslCert.<label>]` section that serves the certificate.
    pub label: String,
    pub serial: String,
    pub leaf: ParsedCert,
    /// The issuer from the chain file; fetched from `ca_issuers_url` when absent.
    pub issuer: Option<ParsedCert>,
    pub ocsp_url: String,
    pub ca_issuers_url: Option<String>,
    pub provider: Arc<CryptoProvider>,
}

/// The fetch history of one slot, for the admin status.
#[derive(Debug, Clone, Default)]
pub struct FetchStatus {
    pub last_success: Option<SystemTime>,
    pub last_error: Option<String>,
    pub failures: u32,
    pub next_fetch: Option<SystemTime>,
}

/// The fetched staple of one certificate.
#[derive(Default)]
pub struct StapleSlot {
    staple: ArcSwapOption<Staple>,
    status: Mutex<FetchStatus>,
    /// Stops the refresher; `None` until one was started.
    refresher: Mutex<Option<CancellationToken>>,
}

impl StapleSlot {
    /// Returns the staple when it may be sent at `now`.
    pub fn current(&self, now: SystemTime) -> Option<Arc<Staple>> {
        self.staple.load_full().filter(|staple| staple.is_current(now))
    }

    pub fn status(&self) -> FetchStatus {
        self.status
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// Starts the refresher for `job` unless one runs already. It stops when `shutdown`
    /// is cancelled or the slot is removed from its store.
    pub fn start(self: &Arc<Self>, job: FetchJob, shutdown: &CancellationToken) {
        let mut refresher = self.refresher.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if refresher.is_some() {
            return;
        }
        let cancel = shutdown.child_token();
        *refresher = Some(cancel.clone());
        tracing::info!(
            certificate = %job.label,
            serial = %job.serial,
            responder = %job.ocsp_url,
            "OCSP stapling: fetching the first staple"
        );
        tokio::spawn(refresh(self.clone(), job, cancel));
    }

    fn stop(&self) {
        let refresher = self.refresher.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(cancel) = refresher.as_ref() {
            cancel.cancel();
        }
    }

    fn update_status(&self, change: impl FnOnce(&mut FetchStatus)) {
        change(&mut self.status.lock().unwrap_or_else(|poisoned| poisoned.into_inner()));
    }

    /// Sleeps until `at`, and drops the staple if it expires first. Returns `false`
    /// when the refresher was cancelled.
    async fn wait_until(&self, at: SystemTime, cancel: &CancellationToken, label: &str) -> bool {
        loop {
            let now = SystemTime::now();
            if now >= at {
                return true;
            }
            let wake = match self.staple.load().as_ref() {
                Some(staple) if staple.next_update < at => staple.next_update,
                _ => at,
            };
            let delay = wake.duration_since(now).unwrap_or_default();
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                () = cancel.cancelled() => return false,
            }

            let expired = self
                .staple
                .load()
                .as_ref()
                .is_some_and(|staple| SystemTime::now() >= staple.next_update);
            if expired {
                self.staple.store(None);
                tracing::warn!(
                    certificate = %label,
                    "OCSP staple expired before a fresh one could be fetched; handshakes go without a staple until a fetch succeeds"
                );
            }
        }
    }
}

/// Fetched staples by certificate fingerprint; they outlive snapshots.
#[derive(Default)]
pub struct StapleStore {
    slots: Mutex<HashMap<Fingerprint, Arc<StapleSlot>>>,
}

impl StapleStore {
    /// Returns the slot of a certificate, creating an empty one on first use.
    pub fn slot(&self, fingerprint: Fingerprint) -> Arc<StapleSlot> {
        let mut slots = self.slots.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        slots.entry(fingerprint).or_default().clone()
    }

    /// Drops the slots of certificates not in `keep` and stops their refreshers.
    pub fn retain(&self, keep: &HashSet<Fingerprint>) {
        let mut slots = self.slots.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        slots.retain(|fingerprint, slot| {
            let kept = keep.contains(fingerprint);
            if !kept {
                slot.stop();
            }
            kept
        });
    }
}

/// Keeps one slot's staple fresh until cancelled.
async fn refresh(slot: Arc<StapleSlot>, mut job: FetchJob, cancel: CancellationToken) {
    let mut retry = RETRY_MIN;
    loop {
        let fetched = tokio::select! {
            fetched = fetch_staple(&mut job) => fetched,
            () = cancel.cancelled() => return,
        };

        let now = SystemTime::now();
        let next_fetch = match fetched {
            Ok(staple) => {
                retry = RETRY_MIN;
                let next_fetch = staple.refresh_at().max(now + MIN_REFRESH_INTERVAL);
                tracing::info!(
                    certificate = %job.label,
                    serial = %job.serial,
                    next_update = %format_time(staple.next_update),
                    next_fetch = %format_time(next_fetch),
                    "OCSP staple fetched: status good"
                );
                slot.staple.store(Some(Arc::new(staple)));
                slot.update_status(|status| {
                    status.last_success = Some(now);
                    status.last_error = None;
                    status.failures = 0;
                    status.next_fetch = Some(next_fetch);
                });
                next_fetch
            }
            Err(error) => {
                let next_fetch = now + retry;
                tracing::warn!(
                    certificate = %job.label,
                    serial = %job.serial,
                    error = %error,
                    "OCSP staple fetch failed; retrying in {retry:?}"
                );
                slot.update_status(|status| {
                    status.last_error = Some(error.to_string());
                    status.failures += 1;
                    status.next_fetch = Some(next_fetch);
                });
                retry = (retry * 2).min(RETRY_MAX);
                next_fetch
            }
        };

        if !slot.wait_until(next_fetch, &cancel, &job.label).await {
            return;
        }
    }
}

async fn fetch_staple(job: &mut FetchJob) -> Result<Staple, StapleError> {
    let issuer = match &job.issuer {
        Some(issuer) => issuer.clone(),
        None => {
            let url = job.ca_issuers_url.clone().ok_or(StapleError::NoIssuer)?;
            let issuer = fetch_issuer(&url, &job.leaf, &job.provider).await?;
            job.issuer = Some(issuer.clone());
            issuer
        }
    };
    let request = ocsp::request(&job.leaf, &issuer)?;
    let response = fetch::post_ocsp(&job.ocsp_url, request).await?;
    Ok(ocsp::verify(
        &job.provider,
        &response,
        &job.leaf,
        &issuer,
        SystemTime::now(),
    )?)
}

/// Fetches the issuer of `leaf` from a CA Issuers URL, which serves a DER certificate; a
/// PEM one is accepted too. The certificate is used only if its key signed `leaf`.
async fn fetch_issuer(url: &str, leaf: &ParsedCert, provider: &CryptoProvider) -> Result<ParsedCert, StapleError> {
    let body = fetch::get(url).await?;
    let candidates: Vec<CertificateDer<'static>> = if body.starts_with(b"-----BEGIN") {
        CertificateDer::pem_slice_iter(&body).filter_map(Result::ok).collect()
    } else {
        vec![CertificateDer::from(body.to_vec())]
    };
    candidates
        .into_iter()
        .filter_map(|der| ParsedCert::from_der(der).ok())
        .find(|candidate| leaf.is_issued_by_name(candidate) && ocsp::is_signed_by(provider, leaf, candidate))
        .ok_or_else(|| StapleError::WrongIssuer { url: url.to_owned() })
}
