//! The CA roots that HTTPS clients (MTA-STS fetches, TLS reports) and
//! STARTTLS probes trust: the Mozilla roots from `webpki-roots`, plus an
//! operator's PEM file; and the HTTPS client setup those clients share.

use std::path::{Path, PathBuf};

use rustls::RootCertStore;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

/// The extra CA file could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key} {}: {problem}", path.display())]
pub struct RootsError {
    /// The setting that named the file (`mta_sts.extra_ca_file`).
    pub key: &'static str,
    pub path: PathBuf,
    pub problem: String,
}

/// An HTTP/1.1 client's TLS (1.2 or 1.3, ring) trusting [`load_roots`].
pub fn https_connector(
    extra: Option<&Path>,
    key: &'static str,
) -> Result<tokio_rustls::TlsConnector, RootsError> {
    let roots = load_roots(extra, key)?;
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| RootsError {
            key,
            path: PathBuf::new(),
            problem: format!("TLS setup: {e}"),
        })?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsConnector::from(std::sync::Arc::new(
        config,
    )))
}

/// The task driving an HTTP/1.1 client connection, stopped when the
/// request it serves is done or dropped.
pub struct AbortOnDrop(pub tokio::task::JoinHandle<Result<(), hyper::Error>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The WebPKI roots plus every PEM certificate in `extra`, the file named
/// by the setting `key`. A file that cannot be read, is not PEM, holds a
/// certificate rustls cannot use, or holds none, is an error.
pub fn load_roots(extra: Option<&Path>, key: &'static str) -> Result<RootCertStore, RootsError> {
    let mut roots = RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    let Some(path) = extra else {
        return Ok(roots);
    };
    let err = |problem: String| RootsError {
        key,
        path: path.to_path_buf(),
        problem,
    };
    let bytes = std::fs::read(path).map_err(|e| err(format!("cannot read: {e}")))?;
    let mut added = 0;
    for cert in CertificateDer::pem_slice_iter(&bytes) {
        let cert = cert.map_err(|e| err(format!("not PEM certificates: {e}")))?;
        roots
            .add(cert)
            .map_err(|e| err(format!("unusable CA certificate: {e}")))?;
        added += 1;
    }
    if added == 0 {
        return Err(err("no PEM certificate in the file".into()));
    }
    Ok(roots)
}
