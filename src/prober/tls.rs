//! TLS for probes: the trust roots, and a certificate verifier that never
//! fails a handshake but records what a verifying client would have
//! concluded, so that protocol version, cipher and certificate names can
//! be reported for every server, trusted or not.

use std::path::Path;
use std::sync::{Arc, Mutex};

use super::postfix_ca;
use crate::tls_roots::{RootsError, load_roots};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{WebPkiServerVerifier, verify_server_name};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::ParsedCertificate;
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, Error, RootCertStore, SignatureScheme,
};

/// Why the TLS setup could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TlsSetupError {
    /// `extra_ca_file` could not be read or holds no usable certificate.
    #[error(transparent)]
    ExtraCa(RootsError),
    /// rustls refused the configuration.
    #[error("prober TLS setup: {0}")]
    Config(String),
}

/// What the verifier saw of the server's certificate.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CertReport {
    /// The chain leads to a trusted root (names not considered).
    pub chain_valid: bool,
    /// Why it does not, when it does not.
    pub chain_error: Option<String>,
    /// DNS names in the leaf's subject alternative names.
    pub names: Vec<String>,
    /// The leaf is valid for the name the client asked for (SNI).
    pub matches_host: bool,
}

/// Shared, immutable TLS material: the crypto provider and the trusted
/// roots. Each probe makes its own client config from it.
pub struct TlsSetup {
    provider: Arc<CryptoProvider>,
    roots: Arc<RootCertStore>,
    webpki: Arc<WebPkiServerVerifier>,
    /// Why the CAs Postfix trusts are not known, when they are not: a
    /// chain the prober does not trust then proves nothing.
    unknown_trust: Option<String>,
}

impl TlsSetup {
    /// The Mozilla roots from `webpki-roots`, plus the certificates in
    /// `extra_ca` (PEM) if given, and the system bundle.
    pub fn new(extra_ca: Option<&Path>) -> Result<TlsSetup, TlsSetupError> {
        TlsSetup::with_postfix(extra_ca, None)
    }

    /// [`TlsSetup::new`], plus every CA Postfix's smtp(8) trusts with the
    /// configuration in `postfix_config_directory` (`smtp_tls_CAfile`,
    /// `smtp_tls_CApath`, read with `postconf`). When those cannot be
    /// read or loaded the setup still succeeds, with
    /// [`TlsSetup::unknown_trust`] saying why.
    pub fn with_postfix(
        extra_ca: Option<&Path>,
        postfix_config_directory: Option<&Path>,
    ) -> Result<TlsSetup, TlsSetupError> {
        TlsSetup::build(
            extra_ca,
            postfix_config_directory,
            Path::new(postfix_ca::SYSTEM_BUNDLE),
        )
    }

    fn build(
        extra_ca: Option<&Path>,
        postfix_config_directory: Option<&Path>,
        system_bundle: &Path,
    ) -> Result<TlsSetup, TlsSetupError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots =
            load_roots(extra_ca, "prober.extra_ca_file").map_err(TlsSetupError::ExtraCa)?;
        postfix_ca::add_system_bundle(&mut roots, system_bundle);
        let unknown_trust = postfix_config_directory.and_then(|dir| {
            let added = postfix_ca::read_settings(dir)
                .and_then(|ca| postfix_ca::add_postfix(&mut roots, &ca));
            match added {
                Ok(_) => None,
                Err(e) => {
                    tracing::warn!(
                        postfix_config_directory = %dir.display(),
                        "{e}; the prober refuses no recipient for an untrusted certificate"
                    );
                    Some(e.to_string())
                }
            }
        });
        let roots = Arc::new(roots);
        let webpki = WebPkiServerVerifier::builder_with_provider(roots.clone(), provider.clone())
            .build()
            .map_err(|e| TlsSetupError::Config(e.to_string()))?;
        Ok(TlsSetup {
            provider,
            roots,
            webpki,
            unknown_trust,
        })
    }

    /// Why the CAs Postfix trusts are not known, if they are not.
    pub fn unknown_trust(&self) -> Option<&str> {
        self.unknown_trust.as_deref()
    }

    /// Number of trusted roots.
    pub fn root_count(&self) -> usize {
        self.roots.len()
    }

    /// A client config for one connection, and the verifier that will
    /// hold the certificate report after the handshake. Session resumption
    /// is off: a resumed session would skip certificate verification.
    pub fn client_config(
        &self,
    ) -> Result<(Arc<ClientConfig>, Arc<RecordingVerifier>), TlsSetupError> {
        let verifier = Arc::new(RecordingVerifier {
            inner: self.webpki.clone(),
            report: Mutex::new(None),
        });
        let mut config = ClientConfig::builder_with_provider(self.provider.clone())
            .with_protocol_versions(rustls::ALL_VERSIONS)
            .map_err(|e| TlsSetupError::Config(e.to_string()))?
            .dangerous()
            .with_custom_certificate_verifier(verifier.clone())
            .with_no_client_auth();
        config.resumption = rustls::client::Resumption::disabled();
        config.enable_sni = true;
        Ok((Arc::new(config), verifier))
    }
}

/// Wraps rustls's WebPKI verifier: asks it, records the verdict, and
/// accepts the certificate whatever the verdict. Handshake signatures are
/// still checked for real, so a completed handshake means the server holds
/// the key of the certificate it showed.
#[derive(Debug)]
pub struct RecordingVerifier {
    inner: Arc<WebPkiServerVerifier>,
    report: Mutex<Option<CertReport>>,
}

impl RecordingVerifier {
    /// The report, once the server's certificate has been seen.
    pub fn report(&self) -> Option<CertReport> {
        self.report
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

fn is_name_error(e: &Error) -> bool {
    matches!(
        e,
        Error::InvalidCertificate(
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. }
        )
    )
}

/// Short text for a certificate problem.
fn cert_error_text(e: &Error) -> String {
    match e {
        Error::InvalidCertificate(c) => match c {
            CertificateError::UnknownIssuer => {
                "issuer not trusted (self-signed or unknown CA)".into()
            }
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
                "certificate expired".into()
            }
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                "certificate not valid yet".into()
            }
            CertificateError::BadEncoding => "certificate cannot be parsed".into(),
            CertificateError::BadSignature => "bad signature in the chain".into(),
            CertificateError::Revoked => "certificate revoked".into(),
            other => format!("{other:?}"),
        },
        other => other.to_string(),
    }
}

impl ServerCertVerifier for RecordingVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        let names = webpki::EndEntityCert::try_from(end_entity)
            .map(|c| {
                c.valid_dns_names()
                    .map(|n| n.to_ascii_lowercase())
                    .collect()
            })
            .unwrap_or_default();
        let verdict = self.inner.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        );
        let report = match verdict {
            Ok(_) => CertReport {
                chain_valid: true,
                chain_error: None,
                names,
                matches_host: true,
            },
            // The name is checked after the chain: a name error means
            // the chain itself was fine.
            Err(e) if is_name_error(&e) => CertReport {
                chain_valid: true,
                chain_error: None,
                names,
                matches_host: false,
            },
            Err(e) => {
                let matches_host = ParsedCertificate::try_from(end_entity)
                    .map(|p| verify_server_name(&p, server_name).is_ok())
                    .unwrap_or(false);
                CertReport {
                    chain_valid: false,
                    chain_error: Some(cert_error_text(&e)),
                    names,
                    matches_host,
                }
            }
        };
        *self.report.lock().unwrap_or_else(|e| e.into_inner()) = Some(report);
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// `TLSv1.3`, `TLSv1.2`, as Postfix logs them.
pub fn version_text(v: rustls::ProtocolVersion) -> String {
    match v {
        rustls::ProtocolVersion::TLSv1_3 => "TLSv1.3".into(),
        rustls::ProtocolVersion::TLSv1_2 => "TLSv1.2".into(),
        rustls::ProtocolVersion::TLSv1_1 => "TLSv1.1".into(),
        rustls::ProtocolVersion::TLSv1_0 => "TLSv1".into(),
        other => format!("{other:?}"),
    }
}

/// The IANA name of a cipher suite (`TLS13_AES_256_GCM_SHA384`).
pub fn cipher_text(s: rustls::SupportedCipherSuite) -> String {
    let suite = s.suite();
    match suite.as_str() {
        Some(n) => n.to_string(),
        None => format!("{suite:?}"),
    }
}

/// Whether a certificate name (possibly a `*.` wildcard) covers a host
/// name, both lower case.
pub fn cert_name_covers(cert_name: &str, host: &str) -> bool {
    match cert_name.strip_prefix("*.") {
        Some(parent) => host
            .split_once('.')
            .is_some_and(|(label, rest)| !label.is_empty() && rest == parent),
        None => cert_name == host,
    }
}

/// Whether a certificate with `cert_names` satisfies a Postfix-style match
/// pattern: `host.example` (the name itself) or `.example` (any name below
/// it).
pub fn cert_matches_pattern(cert_names: &[String], pattern: &str) -> bool {
    let pattern = pattern.trim_end_matches('.').to_ascii_lowercase();
    match pattern.strip_prefix('.') {
        Some(suffix) => cert_names.iter().any(|n| {
            let n = n.strip_prefix("*.").unwrap_or(n);
            n.len() > suffix.len()
                && n.ends_with(suffix)
                && n[..n.len() - suffix.len()].ends_with('.')
        }),
        None => cert_names.iter().any(|n| cert_name_covers(n, &pattern)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards_cover_one_label() {
        assert!(cert_name_covers("mx.example", "mx.example"));
        assert!(cert_name_covers("*.example", "mx.example"));
        assert!(!cert_name_covers("*.example", "a.mx.example"));
        assert!(!cert_name_covers("*.example", "example"));
        assert!(!cert_name_covers("mx.example", "mx2.example"));
    }

    #[test]
    fn match_patterns() {
        let names = vec!["mx1.bank.example".to_string(), "*.mail.example".to_string()];
        assert!(cert_matches_pattern(&names, "mx1.bank.example"));
        assert!(cert_matches_pattern(&names, "MX1.Bank.Example."));
        assert!(cert_matches_pattern(&names, ".bank.example"));
        assert!(!cert_matches_pattern(&names, ".mx1.bank.example"));
        assert!(cert_matches_pattern(&names, "a.mail.example"));
        assert!(cert_matches_pattern(&names, ".example"));
        assert!(!cert_matches_pattern(&names, "bank.example"));
        assert!(!cert_matches_pattern(&names, ".other.example"));
    }

    #[test]
    fn extra_ca_errors_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.pem");
        let e = TlsSetup::new(Some(&missing)).err().unwrap().to_string();
        assert!(
            e.contains("missing.pem") && e.contains("cannot read"),
            "{e}"
        );
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        let e = TlsSetup::new(Some(&empty)).err().unwrap().to_string();
        assert!(e.contains("no PEM certificate"), "{e}");
        let s = TlsSetup::new(None).unwrap();
        assert!(s.root_count() > 50);
        assert!(s.client_config().is_ok());
    }
}
