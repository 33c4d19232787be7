//! TLS on the beacon listener, for deployments where beacond itself meets
//! the browser (behind an L4 balancer).
//!
//! Owns the server's certificate and the TLS settings: rustls with the `ring`
//! provider (no OpenSSL on this path), TLS 1.2 and 1.3, ALPN `h2` then
//! `http/1.1`, and the certificate in a slot that `SIGHUP` refills
//! ([`TlsTerminator::reload`]): a handshake takes whatever certificate is in
//! the slot when it starts, so connections that are open keep theirs and new
//! ones get the new one. A reload that fails (unreadable file, bad PEM, a key
//! that does not match the certificate) keeps the certificate in force, is
//! logged and counted.
//!
//! Must never: read a file on the request path (files are read at start-up
//! and on `SIGHUP`, on a blocking thread), serve without a certificate.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;
use tokio_rustls::TlsAcceptor;

use crate::config::TlsConfig;
use crate::metrics::{CounterSet, LabelSet, Metrics};

/// ALPN protocol ids, in the server's order of preference.
pub const ALPN_H2: &[u8] = b"h2";
pub const ALPN_HTTP1: &[u8] = b"http/1.1";

/// Why the certificate could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("http.tls.cert {path}: {message}")]
    Certificate { path: PathBuf, message: String },
    #[error("http.tls.key {path}: {message}")]
    Key { path: PathBuf, message: String },
    #[error("http.tls: the key does not fit the certificate ({0})")]
    Mismatch(rustls::Error),
    #[error("http.tls: {0}")]
    Settings(rustls::Error),
}

/// The result of a certificate reload (`SIGHUP`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CertificateReload {
    Ok,
    Failed,
}

impl LabelSet for CertificateReload {
    const NAME: &'static str = "result";
    const ALL: &'static [Self] = &[CertificateReload::Ok, CertificateReload::Failed];
    fn as_str(self) -> &'static str {
        match self {
            CertificateReload::Ok => "ok",
            CertificateReload::Failed => "failed",
        }
    }
}

/// The certificate in force; every handshake reads it.
#[derive(Debug)]
struct CertificateSlot {
    current: ArcSwap<CertifiedKey>,
}

impl ResolvesServerCert for CertificateSlot {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

/// The beacon listener's TLS: acceptor and reloadable certificate.
#[derive(Clone)]
pub struct TlsTerminator {
    acceptor: TlsAcceptor,
    slot: Arc<CertificateSlot>,
    provider: Arc<CryptoProvider>,
    cert: PathBuf,
    key: PathBuf,
    reloads: Option<CounterSet<CertificateReload>>,
}

impl std::fmt::Debug for TlsTerminator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsTerminator")
            .field("cert", &self.cert)
            .field("key", &self.key)
            .finish()
    }
}

impl TlsTerminator {
    /// Reads the certificate and key (blocking: start-up only) and builds
    /// the acceptor.
    pub fn new(config: &TlsConfig) -> Result<Self, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let certified = load_certified_key(&config.cert, &config.key, &provider)?;
        let slot = Arc::new(CertificateSlot {
            current: ArcSwap::from_pointee(certified),
        });
        let mut settings = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(TlsError::Settings)?
            .with_no_client_auth()
            .with_cert_resolver(slot.clone());
        settings.alpn_protocols = vec![ALPN_H2.to_vec(), ALPN_HTTP1.to_vec()];
        Ok(Self {
            acceptor: TlsAcceptor::from(Arc::new(settings)),
            slot,
            provider,
            cert: config.cert.clone(),
            key: config.key.clone(),
            reloads: None,
        })
    }

    /// Counts reloads in `beacond_tls_certificate_reloads_total{result}`.
    pub fn with_metrics(mut self, metrics: &Metrics) -> Self {
        self.reloads = Some(metrics.counter_set(
            "tls_certificate_reloads",
            "Reloads of the beacon listener's TLS certificate (SIGHUP), by result",
        ));
        self
    }

    pub fn acceptor(&self) -> &TlsAcceptor {
        &self.acceptor
    }

    /// Reads both files again and, if they make a certificate, puts it in
    /// force for new handshakes; on failure the certificate in force stays.
    /// Blocking: run it on a blocking thread.
    pub fn reload(&self) -> Result<(), TlsError> {
        let result = load_certified_key(&self.cert, &self.key, &self.provider);
        let outcome = match &result {
            Ok(_) => CertificateReload::Ok,
            Err(_) => CertificateReload::Failed,
        };
        if let Some(r) = &self.reloads {
            r.inc(outcome);
        }
        match result {
            Ok(certified) => {
                self.slot.current.store(Arc::new(certified));
                tracing::info!(cert = %self.cert.display(), "TLS certificate reloaded");
                Ok(())
            }
            Err(e) => {
                tracing::error!(error = %e, "TLS certificate reload failed; the certificate in force stays");
                Err(e)
            }
        }
    }
}

/// A certificate chain and its key from PEM files, checked to fit together.
fn load_certified_key(
    cert: &Path,
    key: &Path,
    provider: &CryptoProvider,
) -> Result<CertifiedKey, TlsError> {
    let cert_error = |message: String| TlsError::Certificate {
        path: cert.to_path_buf(),
        message,
    };
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| cert_error(e.to_string()))?
        .collect::<Result<_, _>>()
        .map_err(|e| cert_error(e.to_string()))?;
    if chain.is_empty() {
        return Err(cert_error("no CERTIFICATE block".into()));
    }
    let private = PrivateKeyDer::from_pem_file(key).map_err(|e| TlsError::Key {
        path: key.to_path_buf(),
        message: e.to_string(),
    })?;
    CertifiedKey::from_der(chain, private, provider).map_err(|e| match e {
        rustls::Error::InconsistentKeys(_) => TlsError::Mismatch(e),
        other => TlsError::Key {
            path: key.to_path_buf(),
            message: other.to_string(),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_pair(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
        let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let (c, k) = (
            dir.join(format!("{name}.pem")),
            dir.join(format!("{name}.key")),
        );
        std::fs::write(&c, cert.cert.pem()).unwrap();
        std::fs::write(&k, cert.signing_key.serialize_pem()).unwrap();
        (c, k)
    }

    fn temp() -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "beacond-tls-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        ));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    /// A terminator loaded from a fresh pair: its directory and files.
    fn loaded() -> (PathBuf, PathBuf, PathBuf, TlsTerminator) {
        let dir = temp();
        let (cert, key) = write_pair(&dir, "a");
        let tls = TlsTerminator::new(&TlsConfig {
            cert: cert.clone(),
            key: key.clone(),
        })
        .unwrap();
        (dir, cert, key, tls)
    }

    #[test]
    fn labels() {
        crate::metrics::check_label_set::<CertificateReload>().unwrap();
    }

    #[test]
    fn a_pair_loads_and_a_reload_swaps_it() {
        let (dir, cert, key, tls) = loaded();
        let before = tls.slot.current.load_full();
        let (c2, k2) = write_pair(&dir, "b");
        std::fs::rename(c2, &cert).unwrap();
        std::fs::rename(k2, &key).unwrap();
        tls.reload().unwrap();
        let after = tls.slot.current.load_full();
        assert_ne!(before.cert, after.cert);
    }

    #[test]
    fn a_bad_reload_keeps_the_certificate_in_force() {
        let (dir, cert, key, tls) = loaded();
        let before = tls.slot.current.load_full();
        // A key of another certificate: refused as a mismatch.
        let (_, other_key) = write_pair(&dir, "b");
        std::fs::copy(&other_key, &key).unwrap();
        assert!(matches!(tls.reload(), Err(TlsError::Mismatch(_))));
        // Garbage in the certificate file.
        std::fs::write(&cert, "not a certificate").unwrap();
        assert!(matches!(tls.reload(), Err(TlsError::Certificate { .. })));
        assert_eq!(tls.slot.current.load_full().cert, before.cert);
    }

    #[test]
    fn start_up_names_the_file_at_fault() {
        let dir = temp();
        let (cert, _) = write_pair(&dir, "a");
        let missing = dir.join("missing.key");
        let e = TlsTerminator::new(&TlsConfig {
            cert,
            key: missing.clone(),
        })
        .unwrap_err();
        assert!(e.to_string().contains("http.tls.key"), "{e}");
        assert!(e.to_string().contains("missing.key"), "{e}");
    }
}
