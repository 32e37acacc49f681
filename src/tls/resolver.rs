//! Choosing the certificate for a handshake by SNI.
//!
//! Each snapshot has its own resolver over its own certificates, so a handshake that
//! starts after a reload gets the new certificates while open connections keep the one
//! they were given. Resolving takes no lock: it looks up two hash maps and loads the
//! certificate's current staple through an `ArcSwap`.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::SystemTime;

use arc_swap::ArcSwap;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use super::certs::LoadedCert;
use super::ocsp::Staple;
use super::staple::StapleSlot;

/// The source of a served certificate's staple.
pub enum StapleSource {
    Off,
    /// Read from `ocsp_stapling_file` when the snapshot was built; `staple` is `None`
    /// when the file's response failed verification, for the reason in `error`.
    File {
        path: PathBuf,
        staple: Option<Arc<Staple>>,
        error: Option<String>,
    },
    /// Fetched by a refresher into a slot that outlives the snapshot.
    Fetch {
        slot: Arc<StapleSlot>,
    },
}

/// The CertifiedKey last handed out, with the staple it carries.
struct CachedKey {
    staple: Option<Arc<Staple>>,
    key: Arc<CertifiedKey>,
}

/// A certificate as one snapshot serves it.
pub struct ServedCert {
    pub loaded: LoadedCert,
    pub staple: StapleSource,
    cached: ArcSwap<CachedKey>,
}

impl ServedCert {
    pub fn new(loaded: LoadedCert, staple: StapleSource) -> ServedCert {
        let key = Arc::new(loaded.certified_key(None));
        ServedCert {
            loaded,
            staple,
            cached: ArcSwap::from_pointee(CachedKey { staple: None, key }),
        }
    }

    /// Returns the staple to send at `now`, if any.
    pub fn current_staple(&self, now: SystemTime) -> Option<Arc<Staple>> {
        match &self.staple {
            StapleSource::Off => None,
            StapleSource::File { staple, .. } => staple.clone().filter(|staple| staple.is_current(now)),
            StapleSource::Fetch { slot } => slot.current(now),
        }
    }

    /// Returns the chain, key and current staple for a handshake. The CertifiedKey is
    /// rebuilt only when the staple changed since the last handshake.
    pub fn certified_key(&self, now: SystemTime) -> Arc<CertifiedKey> {
        let staple = self.current_staple(now);
        let cached = self.cached.load();
        let unchanged = match (&cached.staple, &staple) {
            (None, None) => true,
            (Some(old), Some(new)) => Arc::ptr_eq(old, new),
            _ => false,
        };
        if unchanged {
            return cached.key.clone();
        }

        let key = Arc::new(self.loaded.certified_key(staple.as_ref().map(|s| s.response.clone())));
        self.cached.store(Arc::new(CachedKey {
            staple,
            key: key.clone(),
        }));
        key
    }
}

/// Picks a certificate by SNI: an exact name from the certificates' subjectAltNames,
/// then a `*.` wildcard covering one label, then the default certificate.
pub struct CertResolver {
    certs: Arc<[Arc<ServedCert>]>,
    exact: HashMap<String, usize>,
    /// Wildcard names without their `*.`, mapped to the certificate index.
    wildcard: HashMap<String, usize>,
    default: usize,
}

impl std::fmt::Debug for CertResolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertResolver")
            .field("exact", &self.exact)
            .field("wildcard", &self.wildcard)
            .field("default", &self.default)
            .finish_non_exhaustive()
    }
}

impl CertResolver {
    /// Indexes `certs`, which must not be empty. When two certificates carry the same
    /// name, the first in file order serves it. The default is the certificate marked
    /// `default = true`, else the first.
    pub fn new(certs: Arc<[Arc<ServedCert>]>) -> CertResolver {
        let mut exact = HashMap::new();
        let mut wildcard = HashMap::new();
        for (index, cert) in certs.iter().enumerate() {
            for name in &cert.loaded.names {
                match name.strip_prefix("*.") {
                    Some(parent) => wildcard.entry(parent.to_owned()).or_insert(index),
                    None => exact.entry(name.clone()).or_insert(index),
                };
            }
        }
        let default = certs.iter().position(|cert| cert.loaded.default).unwrap_or(0);
        CertResolver {
            certs,
            exact,
            wildcard,
            default,
        }
    }

    /// Returns the index of the certificate for `server_name`.
    pub fn select(&self, server_name: Option<&str>) -> usize {
        let Some(name) = server_name else {
            return self.default;
        };
        let name = name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase();
        if let Some(&index) = self.exact.get(&name) {
            return index;
        }
        if let Some((_, parent)) = name.split_once('.') {
            if let Some(&index) = self.wildcard.get(parent) {
                return index;
            }
        }
        self.default
    }
}

impl ResolvesServerCert for CertResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let index = self.select(hello.server_name());
        let cert = self.certs.get(index)?;
        Some(cert.certified_key(SystemTime::now()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::certs::{self, tests::write_cert};

    /// Builds a resolver over self-signed certificates, one per entry of `names`.
    fn resolver(names: &[&[&str]], default: Option<usize>) -> CertResolver {
        let dir = tempfile::tempdir().unwrap();
        let provider = rustls::crypto::ring::default_provider();
        let served: Vec<Arc<ServedCert>> = names
            .iter()
            .enumerate()
            .map(|(index, names)| {
                let mut config = write_cert(dir.path(), &format!("cert{index}"), names);
                config.default = default == Some(index);
                let loaded = certs::load(&config, &provider).unwrap();
                Arc::new(ServedCert::new(loaded, StapleSource::Off))
            })
            .collect();
        CertResolver::new(served.into())
    }

    #[test]
    fn exact_name_beats_wildcard() {
        let resolver = resolver(&[&["*.example.test"], &["api.example.test"]], None);
        assert_eq!(resolver.select(Some("api.example.test")), 1);
        assert_eq!(resolver.select(Some("www.example.test")), 0);
    }

    #[test]
    fn wildcard_covers_one_label() {
        let resolver = resolver(&[&["a.test"], &["*.example.test"]], None);
        assert_eq!(resolver.select(Some("x.example.test")), 1);
        assert_eq!(resolver.select(Some("x.y.example.test")), 0);
        assert_eq!(resolver.select(Some("example.test")), 0);
    }

    #[test]
    fn names_match_case_insensitively() {
        let resolver = resolver(&[&["a.test"], &["b.test"]], None);
        assert_eq!(resolver.select(Some("B.Test")), 1);
        assert_eq!(resolver.select(Some("b.test.")), 1);
    }

    #[test]
    fn unknown_or_missing_name_gets_default() {
        let first = resolver(&[&["a.test"], &["b.test"]], None);
        assert_eq!(first.select(None), 0);
        assert_eq!(first.select(Some("c.test")), 0);

        let marked = resolver(&[&["a.test"], &["b.test"]], Some(1));
        assert_eq!(marked.select(None), 1);
        assert_eq!(marked.select(Some("c.test")), 1);
        assert_eq!(marked.select(Some("a.test")), 0);
    }

    #[test]
    fn first_certificate_wins_a_shared_name() {
        let resolver = resolver(&[&["a.test"], &["a.test", "b.test"]], None);
        assert_eq!(resolver.select(Some("a.test")), 0);
        assert_eq!(resolver.select(Some("b.test")), 1);
    }
}
