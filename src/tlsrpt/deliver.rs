//! Sending one report to one destination (RFC 8460 section 5):
//! `mailto:` through Postfix's `sendmail`, `https:` as a POST of
//! `application/tlsrpt+gzip`. Both bounded in time and size; the answer
//! says whether a later try may do better.

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::header::{CONNECTION, CONTENT_TYPE, HOST, USER_AGENT};
use hyper::{Request, Uri};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::dns::{self, Resolver};
use crate::tls_roots::RootsError;

/// Longest compressed report sent.
pub const MAX_REPORT_BYTES: usize = 4 << 20;
/// Time allowed for `sendmail` to take a report.
pub const SENDMAIL_TIMEOUT: Duration = Duration::from_secs(60);
/// Time allowed for connecting to an `https:` destination.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Time allowed for a whole POST.
pub const POST_TIMEOUT: Duration = Duration::from_secs(60);
/// Bytes of an answer kept (for the log and `tlsrpt list`).
const MAX_ANSWER: usize = 512;
/// Addresses of an `https:` host tried in turn.
const MAX_ADDRESSES: usize = 4;

/// Why a report did not go out.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{detail}")]
pub struct DeliverError {
    /// A later try may succeed.
    pub retry: bool,
    pub detail: String,
}

fn retry(detail: impl Into<String>) -> DeliverError {
    DeliverError {
        retry: true,
        detail: detail.into(),
    }
}

fn permanent(detail: impl Into<String>) -> DeliverError {
    DeliverError {
        retry: false,
        detail: detail.into(),
    }
}

/// Text cut to what a log line holds, control characters dropped.
fn short(bytes: &[u8]) -> String {
    String::from_utf8_lossy(&bytes[..bytes.len().min(MAX_ANSWER)])
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect::<String>()
        .trim()
        .to_string()
}

/// Hand `message` (lines ending in LF) to `sendmail -i -f FROM -- TO`.
/// Blocking: run it on a thread that may wait.
pub fn sendmail(
    sendmail: &Path,
    from: &str,
    to: &str,
    message: &[u8],
    timeout: Duration,
) -> Result<String, DeliverError> {
    let mut child = Command::new(sendmail)
        .args(["-i", "-f", from, "--", to])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| retry(format!("cannot run {}: {e}", sendmail.display())))?;
    let mut stderr = child.stderr.take();
    let reader = std::thread::spawn(move || {
        // Read to the end (a sendmail must never block on a full pipe),
        // keeping the beginning.
        let mut out = Vec::new();
        if let Some(s) = stderr.as_mut() {
            let mut buf = [0u8; 4096];
            while let Ok(n) = s.read(&mut buf) {
                if n == 0 {
                    break;
                }
                let room = (MAX_ANSWER * 4).saturating_sub(out.len());
                out.extend_from_slice(&buf[..n.min(room)]);
            }
        }
        out
    });
    // Written from a thread of its own: a sendmail that does not read its
    // input must not hold this one past the timeout.
    let stdin = child.stdin.take();
    let message = message.to_vec();
    let writer = std::thread::spawn(move || match stdin {
        Some(mut s) => s.write_all(&message),
        None => Ok(()),
    });
    let until = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break s,
            Ok(None) if Instant::now() < until => std::thread::sleep(Duration::from_millis(20)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(retry(format!(
                    "{} did not finish within {}",
                    sendmail.display(),
                    humantime::format_duration(timeout)
                )));
            }
            Err(e) => return Err(retry(format!("waiting for {}: {e}", sendmail.display()))),
        }
    };
    let written = writer
        .join()
        .unwrap_or_else(|_| Err(std::io::Error::other("the writing thread failed")));
    let err = short(&reader.join().unwrap_or_default());
    if !status.success() {
        let code = status
            .code()
            .map_or_else(|| "a signal".to_string(), |c| format!("exit {c}"));
        return Err(retry(format!(
            "{} ended with {code}: {err}",
            sendmail.display()
        )));
    }
    if let Err(e) = written {
        return Err(retry(format!("writing to {}: {e}", sendmail.display())));
    }
    Ok(format!("handed to {}", sendmail.display()))
}

/// POSTs reports to `https:` destinations. Cheap to share.
pub struct Poster {
    resolver: Resolver,
    tls: TlsConnector,
}

impl Poster {
    /// WebPKI roots plus the PEM certificates in `extra_ca_file`.
    pub fn new(resolver: Resolver, extra_ca_file: Option<&Path>) -> Result<Poster, RootsError> {
        Ok(Poster {
            resolver,
            tls: crate::tls_roots::https_connector(extra_ca_file, "tlsrpt.extra_ca_file")?,
        })
    }

    /// POST `gzipped` to `uri`, within [`POST_TIMEOUT`].
    pub async fn post(&self, uri: &str, gzipped: Vec<u8>) -> Result<String, DeliverError> {
        match tokio::time::timeout(POST_TIMEOUT, self.post_inner(uri, gzipped)).await {
            Ok(r) => r,
            Err(_) => Err(retry(format!(
                "no answer within {}",
                humantime::format_duration(POST_TIMEOUT)
            ))),
        }
    }

    async fn post_inner(&self, uri: &str, gzipped: Vec<u8>) -> Result<String, DeliverError> {
        let parsed: Uri = uri
            .parse()
            .map_err(|e| permanent(format!("{uri:?} is not a URI: {e}")))?;
        if parsed.scheme_str() != Some("https") {
            return Err(permanent(format!("{uri:?} is not an https: URI")));
        }
        let host = parsed
            .host()
            .ok_or_else(|| permanent(format!("{uri:?} names no host")))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let port = parsed.port_u16().unwrap_or(443);
        let path = parsed
            .path_and_query()
            .map_or("/".to_string(), |p| p.as_str().to_string());
        let server_name = ServerName::try_from(host.clone())
            .map_err(|e| permanent(format!("{host:?} is not a host name: {e}")))?;
        let addrs: Vec<IpAddr> = match host.parse::<IpAddr>() {
            Ok(ip) => vec![ip],
            Err(_) => dns::lookup_addresses(&self.resolver, &host, MAX_ADDRESSES)
                .await
                .map_err(|e| retry(format!("{host}: {e}")))?,
        };
        let mut last = retry(format!("{host}: no address"));
        for ip in addrs {
            let address = SocketAddr::new(ip, port);
            let tcp = match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(address)).await
            {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    last = retry(format!("{address}: {e}"));
                    continue;
                }
                Err(_) => {
                    last = retry(format!("{address}: no connection within 10s"));
                    continue;
                }
            };
            let tls = match self.tls.connect(server_name.clone(), tcp).await {
                Ok(s) => s,
                Err(e) => {
                    last = retry(format!("{address}: TLS: {e}"));
                    continue;
                }
            };
            return request(tls, &host, port, &path, gzipped).await;
        }
        Err(last)
    }
}

async fn request<S>(
    stream: S,
    host: &str,
    port: u16,
    path: &str,
    body: Vec<u8>,
) -> Result<String, DeliverError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let http = |e: hyper::Error| retry(format!("HTTP: {e}"));
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(http)?;
    let driver = tokio::spawn(conn);
    let _abort = crate::tls_roots::AbortOnDrop(driver);
    let host_header = if port == 443 {
        host.to_string()
    } else {
        format!("{host}:{port}")
    };
    let req = Request::post(path)
        .header(HOST, host_header)
        .header(
            USER_AGENT,
            concat!("tls-policyd/", env!("CARGO_PKG_VERSION")),
        )
        .header(CONTENT_TYPE, "application/tlsrpt+gzip")
        .header(CONNECTION, "close")
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| permanent(format!("cannot build the request: {e}")))?;
    let resp = sender.send_request(req).await.map_err(http)?;
    let status = resp.status();
    let mut body = resp.into_body();
    let mut answer = Vec::new();
    while answer.len() < MAX_ANSWER {
        match body.frame().await {
            Some(Ok(f)) => {
                if let Some(d) = f.data_ref() {
                    answer.extend_from_slice(d);
                }
            }
            _ => break,
        }
    }
    let text = format!("HTTP {}: {}", status.as_u16(), short(&answer));
    if status.is_success() {
        Ok(text)
    } else if status.is_client_error() && status.as_u16() != 408 && status.as_u16() != 429 {
        Err(permanent(text))
    } else {
        Err(retry(text))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn script(dir: &Path, body: &str) -> std::path::PathBuf {
        let p = dir.join("sendmail");
        std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        p
    }

    #[test]
    fn sendmail_gets_the_sender_the_recipient_and_the_message() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        let s = script(
            dir.path(),
            &format!("echo \"$@\" > {0}.args; cat > {0}", out.display()),
        );
        let r = sendmail(
            &s,
            "r@example.net",
            "t@r.example",
            b"Subject: x\n\nhi\n",
            SENDMAIL_TIMEOUT,
        );
        assert!(r.is_ok(), "{r:?}");
        assert_eq!(std::fs::read(&out).unwrap(), b"Subject: x\n\nhi\n");
        assert_eq!(
            std::fs::read_to_string(dir.path().join("out.args")).unwrap(),
            "-i -f r@example.net -- t@r.example\n"
        );
    }

    #[test]
    fn a_failing_or_hanging_sendmail_is_a_retry_with_its_words() {
        let dir = tempfile::tempdir().unwrap();
        let s = script(
            dir.path(),
            "cat >/dev/null; echo 'postdrop: queue full' >&2; exit 75",
        );
        let e = sendmail(&s, "r@example.net", "t@r.example", b"x\n", SENDMAIL_TIMEOUT).unwrap_err();
        assert!(e.retry);
        assert!(e.detail.contains("exit 75"), "{e}");
        assert!(e.detail.contains("postdrop: queue full"), "{e}");
        let s = script(dir.path(), "sleep 5");
        let e = sendmail(
            &s,
            "r@example.net",
            "t@r.example",
            b"x\n",
            Duration::from_millis(200),
        )
        .unwrap_err();
        assert!(e.retry && e.detail.contains("did not finish"), "{e}");
        // One that never reads a message larger than a pipe holds: the
        // timeout still ends it.
        let s = script(dir.path(), "exec sleep 5");
        let big = vec![b'x'; 1 << 20];
        let e = sendmail(
            &s,
            "r@example.net",
            "t@r.example",
            &big,
            Duration::from_millis(200),
        )
        .unwrap_err();
        assert!(e.retry && e.detail.contains("did not finish"), "{e}");
        let e = sendmail(
            &dir.path().join("missing"),
            "r@example.net",
            "t@r.example",
            b"x\n",
            SENDMAIL_TIMEOUT,
        )
        .unwrap_err();
        assert!(e.detail.contains("cannot run"), "{e}");
    }

    #[test]
    fn answers_are_cut_and_cleaned() {
        assert_eq!(short(b"ok\r\nfine"), "ok  fine");
        assert_eq!(short(&[b'a'; 2000]).len(), MAX_ANSWER);
    }
}
