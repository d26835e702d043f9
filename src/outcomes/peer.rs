//! What both event lines and delivery lines name: a peer as Postfix
//! writes it, and the kinds of TLS failure.

use super::syslog::parse_digits;

/// `host[addr]:port` as Postfix writes a peer (`namaddr`). `addr` is
/// whatever is inside the brackets: an IPv4 or IPv6 address, or a
/// unix-domain socket path for LMTP.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Endpoint {
    pub host: String,
    pub addr: String,
    pub port: Option<u16>,
}

impl Endpoint {
    /// Parse `host[addr]` or `host[addr]:port` (nothing before or after).
    pub fn parse(s: &str) -> Option<Endpoint> {
        let (host, rest) = s.split_once('[')?;
        let close = rest.rfind(']')?;
        let addr = &rest[..close];
        let tail = &rest[close + 1..];
        let port = match tail {
            "" => None,
            t => Some(u16::try_from(parse_digits(t.strip_prefix(':')?)?).ok()?),
        };
        if host.contains(char::is_whitespace) || addr.is_empty() || addr.contains(' ') {
            return None;
        }
        Some(Endpoint {
            host: host.to_string(),
            addr: addr.to_string(),
            port,
        })
    }
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}[{}]", self.host, self.addr)?;
        if let Some(p) = self.port {
            write!(f, ":{p}")?;
        }
        Ok(())
    }
}

/// Kinds of TLS failure Postfix logs, on their own lines or as the reason
/// of a deferral.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TlsFailureKind {
    /// `TLS is required, but was not offered by host ...` (4.7.4).
    NotOffered,
    /// `TLS is required, but host ... refused to start TLS: ...`.
    StartTlsRefused,
    /// `TLS is required, but our TLS engine is unavailable` / `unavailable`.
    TlsUnavailable,
    /// `Server certificate not verified` (4.7.5).
    CertNotVerified,
    /// `[server ]certificate verification failed for ...: ...`.
    VerificationFailed,
    /// `... certificate verification failed for ...: num=65:no matching
    /// DANE TLSA records` (DANE or fingerprint mismatch).
    DaneMismatch,
    /// `all TLSA records unusable`, `all fingerprints unusable`, ...
    TlsaUnusable,
    /// `TLSA lookup error for HOST:PORT` (4.7.5).
    TlsaLookupError,
    /// `SSL_connect error to ...` or `Cannot start TLS: handshake failure`.
    HandshakeFailed,
    /// `warning: TLS library problem: ...`.
    LibraryProblem,
    /// `client TLS configuration problem` (4.7.5: no valid policy, e.g. the
    /// policy server did not answer).
    ConfigProblem,
}

impl TlsFailureKind {
    /// The name written in outcome records.
    pub fn as_str(self) -> &'static str {
        match self {
            TlsFailureKind::NotOffered => "not-offered",
            TlsFailureKind::StartTlsRefused => "starttls-refused",
            TlsFailureKind::TlsUnavailable => "tls-unavailable",
            TlsFailureKind::CertNotVerified => "certificate-not-verified",
            TlsFailureKind::VerificationFailed => "verification-failed",
            TlsFailureKind::DaneMismatch => "dane-mismatch",
            TlsFailureKind::TlsaUnusable => "tlsa-unusable",
            TlsFailureKind::TlsaLookupError => "tlsa-lookup-error",
            TlsFailureKind::HandshakeFailed => "handshake-failed",
            TlsFailureKind::LibraryProblem => "library-problem",
            TlsFailureKind::ConfigProblem => "config-problem",
        }
    }
}
