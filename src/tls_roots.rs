//! The CA roots that HTTPS fetches (MTA-STS) and STARTTLS probes trust:
//! the Mozilla roots from `webpki-roots`, plus an operator's PEM file.

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
