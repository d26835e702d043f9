//! Fetching `https://mta-sts.<domain>/.well-known/mta-sts.txt`
//! (RFC 8461 section 3.3): HTTP/1.1 over TLS 1.2 or 1.3, the server's
//! certificate verified against the WebPKI roots (plus an optional file of
//! extra CAs) for the name `mta-sts.<domain>`, no redirects, status 200
//! only, `text/plain` only (unless the leniency switch is on), at most
//! [`MAX_POLICY_LEN`] bytes, and a time limit on the whole fetch. HTTP
//! caches are never consulted: every fetch goes to the server.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper::header::{ACCEPT, CONNECTION, CONTENT_LENGTH, CONTENT_TYPE, HOST, LOCATION, USER_AGENT};
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;
use rustls::RootCertStore;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use super::policy::MAX_POLICY_LEN;
use crate::dns::{self, Resolver};

/// The HTTPS port policies are fetched from.
pub const HTTPS_PORT: u16 = 443;
/// The path of the policy on the policy host.
pub const POLICY_PATH: &str = "/.well-known/mta-sts.txt";
/// Addresses of the policy host tried, in turn.
pub const MAX_ADDRESSES: usize = 4;
/// Longest `Location` or `Content-Type` value quoted in an error.
const MAX_QUOTED: usize = 200;

/// Whether a failed handshake failed on the server's certificate (what
/// RFC 8460 reports as `sts-webpki-invalid`).
fn is_certificate_error(e: &std::io::Error) -> bool {
    matches!(
        e.get_ref()
            .and_then(|inner| inner.downcast_ref::<rustls::Error>()),
        Some(
            rustls::Error::InvalidCertificate(_)
                | rustls::Error::NoCertificatesPresented
                | rustls::Error::InvalidCertRevocationList(_)
        )
    )
}

/// Why a policy could not be fetched.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FetchError {
    /// The policy host has no address.
    #[error("policy host not found: {0}")]
    Dns(String),
    /// No address accepted a TCP connection.
    #[error("cannot connect to the policy host: {0}")]
    Connect(String),
    /// The TLS handshake failed for another reason than the certificate
    /// (protocol, the connection closed).
    #[error("TLS with the policy host failed: {0}")]
    Tls(String),
    /// The policy host's certificate did not validate (not trusted,
    /// expired, not for `mta-sts.<domain>`, none presented).
    #[error("the policy host's certificate is not valid: {0}")]
    Certificate(String),
    /// The HTTP exchange failed.
    #[error("HTTP error: {0}")]
    Http(String),
    /// The server answered a redirect, which RFC 8461 forbids following.
    #[error(
        "the policy host answered a redirect ({status} to {location:?}); redirects are not followed"
    )]
    Redirect { status: u16, location: String },
    /// A status other than 200.
    #[error("the policy host answered HTTP status {0}")]
    Status(u16),
    /// The body is not `text/plain`.
    #[error("the policy has media type {0:?}, not text/plain")]
    ContentType(String),
    /// The body is larger than [`MAX_POLICY_LEN`].
    #[error("the policy is larger than {MAX_POLICY_LEN} bytes ({0} bytes or more)")]
    TooLarge(u64),
    /// The whole fetch took longer than allowed.
    #[error("the fetch did not finish within {}", humantime::format_duration(*.0))]
    Timeout(Duration),
}

/// A fetched policy body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fetched {
    pub body: Vec<u8>,
    /// The address it came from.
    pub address: SocketAddr,
    /// The `Content-Type` was not `text/plain` but accepted by the
    /// leniency switch: what it was.
    pub lenient_content_type: Option<String>,
}

/// Fetch settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchSettings {
    pub connect_timeout: Duration,
    pub fetch_timeout: Duration,
    pub lenient_content_type: bool,
    pub extra_ca_file: Option<PathBuf>,
}

pub use crate::tls_roots::RootsError;

/// The WebPKI roots plus the PEM certificates in `extra`
/// (`mta_sts.extra_ca_file`).
pub fn load_roots(extra: Option<&Path>) -> Result<RootCertStore, RootsError> {
    crate::tls_roots::load_roots(extra, "mta_sts.extra_ca_file")
}

/// Fetches policies. Cheap to share.
pub struct Fetcher {
    resolver: Resolver,
    tls: TlsConnector,
    settings: FetchSettings,
}

impl Fetcher {
    pub fn new(resolver: Resolver, settings: FetchSettings) -> Result<Fetcher, RootsError> {
        Ok(Fetcher {
            resolver,
            tls: crate::tls_roots::https_connector(
                settings.extra_ca_file.as_deref(),
                "mta_sts.extra_ca_file",
            )?,
            settings,
        })
    }

    pub fn settings(&self) -> &FetchSettings {
        &self.settings
    }

    /// Fetch the policy of `domain` (lower case, A-labels).
    pub async fn fetch(&self, domain: &str) -> Result<Fetched, FetchError> {
        let limit = self.settings.fetch_timeout;
        match tokio::time::timeout(limit, self.fetch_inner(domain)).await {
            Ok(r) => r,
            Err(_) => Err(FetchError::Timeout(limit)),
        }
    }

    async fn fetch_inner(&self, domain: &str) -> Result<Fetched, FetchError> {
        let host = format!("mta-sts.{domain}");
        let server_name = ServerName::try_from(host.clone())
            .map_err(|e| FetchError::Dns(format!("{host:?} is not a host name: {e}")))?;
        let addrs = dns::lookup_addresses(&self.resolver, &host, MAX_ADDRESSES)
            .await
            .map_err(|e| FetchError::Dns(format!("{host}: {e}")))?;
        let mut last = FetchError::Dns(format!("{host}: no address"));
        for ip in addrs {
            let address = SocketAddr::new(ip, HTTPS_PORT);
            let tcp = match self.connect(address).await {
                Ok(s) => s,
                Err(e) => {
                    last = e;
                    continue;
                }
            };
            let tls = match self.tls.connect(server_name.clone(), tcp).await {
                Ok(s) => s,
                Err(e) => {
                    last = if is_certificate_error(&e) {
                        FetchError::Certificate(format!("{address}: {e}"))
                    } else {
                        FetchError::Tls(format!("{address}: {e}"))
                    };
                    continue;
                }
            };
            // Past the handshake the server has proved it is the policy
            // host: what it answers is the answer, no other address is
            // tried.
            return self.request(tls, &host, address).await;
        }
        Err(last)
    }

    async fn connect(&self, address: SocketAddr) -> Result<TcpStream, FetchError> {
        match tokio::time::timeout(self.settings.connect_timeout, TcpStream::connect(address)).await
        {
            Ok(Ok(s)) => Ok(s),
            Ok(Err(e)) => Err(FetchError::Connect(format!("{address}: {e}"))),
            Err(_) => Err(FetchError::Connect(format!(
                "{address}: no connection within {}",
                humantime::format_duration(self.settings.connect_timeout)
            ))),
        }
    }

    async fn request<S>(
        &self,
        stream: S,
        host: &str,
        address: SocketAddr,
    ) -> Result<Fetched, FetchError>
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let http = |e: hyper::Error| FetchError::Http(e.to_string());
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(http)?;
        let driver = tokio::spawn(conn);
        let _abort = crate::tls_roots::AbortOnDrop(driver);
        let req = Request::get(POLICY_PATH)
            .header(HOST, host)
            .header(
                USER_AGENT,
                concat!("tls-policyd/", env!("CARGO_PKG_VERSION")),
            )
            .header(ACCEPT, "text/plain")
            .header(CONNECTION, "close")
            .body(Empty::<Bytes>::new())
            .map_err(|e| FetchError::Http(e.to_string()))?;
        let resp = sender.send_request(req).await.map_err(http)?;
        let status = resp.status();
        if status.is_redirection() {
            let location = resp
                .headers()
                .get(LOCATION)
                .map(|v| quote(&String::from_utf8_lossy(v.as_bytes())))
                .unwrap_or_default();
            return Err(FetchError::Redirect {
                status: status.as_u16(),
                location,
            });
        }
        if status != StatusCode::OK {
            return Err(FetchError::Status(status.as_u16()));
        }
        let media = resp
            .headers()
            .get(CONTENT_TYPE)
            .map(|v| quote(&String::from_utf8_lossy(v.as_bytes())));
        let plain = media.as_deref().is_some_and(is_text_plain);
        let lenient_content_type = if plain {
            None
        } else if self.settings.lenient_content_type {
            Some(media.clone().unwrap_or_else(|| "(none)".into()))
        } else {
            return Err(FetchError::ContentType(
                media.unwrap_or_else(|| "(none)".into()),
            ));
        };
        if let Some(n) = resp
            .headers()
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            && n > MAX_POLICY_LEN as u64
        {
            return Err(FetchError::TooLarge(n));
        }
        let mut body = resp.into_body();
        let mut out = Vec::new();
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(http)?;
            if let Some(data) = frame.data_ref() {
                if out.len() + data.len() > MAX_POLICY_LEN {
                    return Err(FetchError::TooLarge((out.len() + data.len()) as u64));
                }
                out.extend_from_slice(data);
            }
        }
        Ok(Fetched {
            body: out,
            address,
            lenient_content_type,
        })
    }
}

/// A header value cut to a length fit for a log line.
fn quote(s: &str) -> String {
    s.chars().take(MAX_QUOTED).collect()
}

/// `text/plain`, with or without parameters, in any case.
pub fn is_text_plain(content_type: &str) -> bool {
    content_type
        .split(';')
        .next()
        .is_some_and(|m| m.trim().eq_ignore_ascii_case("text/plain"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn media_types() {
        assert!(is_text_plain("text/plain"));
        assert!(is_text_plain("Text/Plain; charset=utf-8"));
        assert!(is_text_plain(" text/plain ;charset=us-ascii"));
        assert!(!is_text_plain("text/html"));
        assert!(!is_text_plain("text/plainx"));
        assert!(!is_text_plain("application/octet-stream"));
        assert!(!is_text_plain(""));
    }

    #[test]
    fn extra_roots() {
        let dir = tempfile::tempdir().unwrap();
        let n = webpki_roots::TLS_SERVER_ROOTS.len();
        assert_eq!(load_roots(None).unwrap().len(), n);
        let missing = dir.path().join("missing.pem");
        let e = load_roots(Some(&missing)).unwrap_err().to_string();
        assert!(e.starts_with("mta_sts.extra_ca_file "), "{e}");
        assert!(e.contains("cannot read"), "{e}");
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "no certificates here\n").unwrap();
        let e = load_roots(Some(&empty)).unwrap_err().to_string();
        assert!(e.contains("no PEM certificate"), "{e}");
        let ca = rcgen::generate_simple_self_signed(vec!["ca.test".to_string()]).unwrap();
        let pem = dir.path().join("ca.pem");
        std::fs::write(&pem, ca.cert.pem()).unwrap();
        assert_eq!(load_roots(Some(&pem)).unwrap().len(), n + 1);
    }
}
