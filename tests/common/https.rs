//! An in-process HTTPS server for tests: serves MTA-STS policy hosts
//! (`mta-sts.<domain>`) on one 127.0.0.x address and port, choosing the
//! certificate by SNI, answering each host from a table the test fills
//! (status, headers, body, a delay before answering) and counting the
//! requests per host.
//!
//! Certificates are issued by a [`TestCa`] for the host unless the test
//! sets another one (self-signed, or issued for other names). A host
//! without a site gets no certificate: the handshake fails.
//!
//! It runs on its own thread and runtime; the listening socket is bound on
//! the calling thread, so a test that runs inside a network namespace gets
//! a server inside it (port 443 then belongs to the namespace alone). It
//! stops when dropped.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::smtp::TestCa;

/// Where the tests' MTA-STS policy host (`mta-sts.DOMAIN`) listens, in a
/// test's network namespace.
pub const HTTPS_IP: &str = "127.0.0.44";

/// Longest request head read.
const MAX_REQUEST_HEAD: usize = 16 * 1024;

/// What a host answers.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// Wait this long before answering.
    pub delay: Duration,
    /// Leave `Content-Length` out: the body ends when the connection
    /// closes.
    pub omit_length: bool,
}

impl Response {
    /// `200`, `Content-Type: text/plain`, the policy as the body.
    pub fn policy(text: &str) -> Response {
        Response {
            status: 200,
            headers: vec![("Content-Type".into(), "text/plain".into())],
            body: text.as_bytes().to_vec(),
            delay: Duration::ZERO,
            omit_length: false,
        }
    }

    /// A status with an empty body.
    pub fn status(status: u16) -> Response {
        Response {
            status,
            headers: Vec::new(),
            body: Vec::new(),
            delay: Duration::ZERO,
            omit_length: false,
        }
    }

    pub fn header(mut self, name: &str, value: &str) -> Response {
        self.headers.retain(|(n, _)| !n.eq_ignore_ascii_case(name));
        self.headers.push((name.into(), value.into()));
        self
    }

    pub fn delayed(mut self, d: Duration) -> Response {
        self.delay = d;
        self
    }

    pub fn without_length(mut self) -> Response {
        self.omit_length = true;
        self
    }
}

/// Which certificate a host shows.
#[derive(Debug, Clone)]
pub enum Cert {
    /// Issued by the server's test CA for the host name.
    FromCa,
    /// Issued by the test CA for other names.
    FromCaFor(Vec<String>),
    /// Self-signed, for the host name.
    SelfSigned,
}

struct Site {
    response: Response,
    key: Arc<CertifiedKey>,
    /// Takes POSTs (any path): kept, answered with `response`.
    collect: bool,
}

/// A POST a collecting site took.
#[derive(Debug, Clone)]
pub struct Posted {
    pub path: String,
    pub content_type: String,
    pub body: Vec<u8>,
}

/// Longest POST body taken.
const MAX_POST_BODY: usize = 8 << 20;

#[derive(Default)]
struct Table {
    sites: HashMap<String, Site>,
    requests: HashMap<String, usize>,
    posts: HashMap<String, Vec<Posted>>,
}

struct Shared {
    table: Mutex<Table>,
}

/// Picks the certificate by SNI from the table.
struct BySni(Arc<Shared>);

impl std::fmt::Debug for BySni {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BySni")
    }
}

impl ResolvesServerCert for BySni {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let name = hello.server_name()?.to_ascii_lowercase();
        let table = self.0.table.lock().unwrap_or_else(|e| e.into_inner());
        table.sites.get(&name).map(|s| s.key.clone())
    }
}

/// The running server.
pub struct TestHttps {
    addr: SocketAddr,
    shared: Arc<Shared>,
    ca: Arc<TestCa>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

fn certified(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Arc<CertifiedKey> {
    let signing = rustls::crypto::ring::sign::any_supported_type(&key).expect("signing key");
    Arc::new(CertifiedKey::new(chain, signing))
}

impl TestHttps {
    /// Start on `ip:port` (port 0 for a free one), certificates from `ca`.
    pub fn start(ip: &str, port: u16, ca: Arc<TestCa>) -> TestHttps {
        let ip: IpAddr = ip.parse().expect("an IP address");
        let listener = std::net::TcpListener::bind(SocketAddr::new(ip, port))
            .unwrap_or_else(|e| panic!("bind HTTPS on {ip}:{port}: {e}"));
        listener.set_nonblocking(true).expect("nonblocking");
        let addr = listener.local_addr().expect("local address");
        let shared = Arc::new(Shared {
            table: Mutex::new(Table::default()),
        });
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(rustls::ALL_VERSIONS)
            .expect("TLS versions")
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(BySni(shared.clone())));
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let s = shared.clone();
        let thread = std::thread::Builder::new()
            .name(format!("test-https-{addr}"))
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("test HTTPS runtime");
                rt.block_on(async move {
                    let listener =
                        tokio::net::TcpListener::from_std(listener).expect("tokio listener");
                    tokio::select! {
                        _ = serve(listener, acceptor, s) => {}
                        _ = stopped => {}
                    }
                });
            })
            .expect("spawn test HTTPS thread");
        TestHttps {
            addr,
            shared,
            ca,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    fn table(&self) -> std::sync::MutexGuard<'_, Table> {
        self.shared.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Serve `host` with a certificate from the CA and this response.
    pub fn site(&self, host: &str, response: Response) -> &Self {
        let key = self.make_cert(host, &Cert::FromCa);
        self.table().sites.insert(
            host.to_ascii_lowercase(),
            Site {
                response,
                key,
                collect: false,
            },
        );
        self
    }

    /// Serve `host` as a report collector: it takes POSTs to any path
    /// (kept, see [`TestHttps::posted`]) and answers `200`.
    pub fn collector(&self, host: &str) -> &Self {
        let key = self.make_cert(host, &Cert::FromCa);
        self.table().sites.insert(
            host.to_ascii_lowercase(),
            Site {
                response: Response::status(200),
                key,
                collect: true,
            },
        );
        self
    }

    /// The POSTs `host` took, in order.
    pub fn posted(&self, host: &str) -> Vec<Posted> {
        self.table()
            .posts
            .get(&host.to_ascii_lowercase())
            .cloned()
            .unwrap_or_default()
    }

    /// Change what `host` answers (it must have a site).
    pub fn respond(&self, host: &str, response: Response) -> &Self {
        let mut t = self.table();
        let site = t
            .sites
            .get_mut(&host.to_ascii_lowercase())
            .unwrap_or_else(|| panic!("no site {host}"));
        site.response = response;
        self
    }

    /// Change the certificate `host` shows (it must have a site).
    pub fn cert(&self, host: &str, cert: Cert) -> &Self {
        let key = self.make_cert(host, &cert);
        let mut t = self.table();
        let site = t
            .sites
            .get_mut(&host.to_ascii_lowercase())
            .unwrap_or_else(|| panic!("no site {host}"));
        site.key = key;
        self
    }

    /// Stop serving `host`: its handshakes fail.
    pub fn remove(&self, host: &str) -> &Self {
        self.table().sites.remove(&host.to_ascii_lowercase());
        self
    }

    /// Requests `host` received (complete request heads).
    pub fn requests(&self, host: &str) -> usize {
        *self
            .table()
            .requests
            .get(&host.to_ascii_lowercase())
            .unwrap_or(&0)
    }

    fn make_cert(&self, host: &str, cert: &Cert) -> Arc<CertifiedKey> {
        match cert {
            Cert::FromCa => {
                let (chain, key) = self.ca.issue(&[host]);
                certified(chain, key)
            }
            Cert::FromCaFor(names) => {
                let names: Vec<&str> = names.iter().map(String::as_str).collect();
                let (chain, key) = self.ca.issue(&names);
                certified(chain, key)
            }
            Cert::SelfSigned => {
                let ck = rcgen::generate_simple_self_signed(vec![host.to_string()])
                    .expect("self-signed certificate");
                certified(
                    vec![ck.cert.der().clone()],
                    PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(ck.signing_key.serialize_der())),
                )
            }
        }
    }
}

impl Drop for TestHttps {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

async fn serve(
    listener: tokio::net::TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    shared: Arc<Shared>,
) {
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            continue;
        };
        let acceptor = acceptor.clone();
        let shared = shared.clone();
        tokio::spawn(async move {
            let Ok(mut tls) = acceptor.accept(tcp).await else {
                return;
            };
            let host = tls
                .get_ref()
                .1
                .server_name()
                .unwrap_or_default()
                .to_ascii_lowercase();
            let mut head = Vec::new();
            let mut buf = [0u8; 1024];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                match tls.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => head.extend_from_slice(&buf[..n]),
                }
                if head.len() > MAX_REQUEST_HEAD {
                    return;
                }
            }
            let end = head.windows(4).position(|w| w == b"\r\n\r\n").unwrap_or(0) + 4;
            let mut body = head.split_off(end);
            let head = String::from_utf8_lossy(&head).into_owned();
            let method = head.split_whitespace().next().unwrap_or("").to_string();
            let path = head.split_whitespace().nth(1).unwrap_or("").to_string();
            let header = |name: &str| {
                head.lines()
                    .filter_map(|l| l.split_once(':'))
                    .find(|(n, _)| n.trim().eq_ignore_ascii_case(name))
                    .map(|(_, v)| v.trim().to_string())
            };
            let (response, collect) = {
                let mut t = shared.table.lock().unwrap_or_else(|e| e.into_inner());
                *t.requests.entry(host.clone()).or_default() += 1;
                match t.sites.get(&host) {
                    Some(s) => (Some(s.response.clone()), s.collect),
                    None => (None, false),
                }
            };
            let response = match response {
                Some(r) if collect && method == "POST" => {
                    let len: usize = header("content-length")
                        .and_then(|v| v.parse().ok())
                        .unwrap_or(0)
                        .min(MAX_POST_BODY);
                    while body.len() < len {
                        match tls.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => body.extend_from_slice(&buf[..n]),
                        }
                    }
                    body.truncate(len);
                    let posted = Posted {
                        path: path.clone(),
                        content_type: header("content-type").unwrap_or_default(),
                        body,
                    };
                    let mut t = shared.table.lock().unwrap_or_else(|e| e.into_inner());
                    t.posts.entry(host.clone()).or_default().push(posted);
                    r
                }
                Some(r) if !collect && path == "/.well-known/mta-sts.txt" => r,
                _ => Response::status(404),
            };
            if !response.delay.is_zero() {
                tokio::time::sleep(response.delay).await;
            }
            let mut out = format!("HTTP/1.1 {} Test\r\n", response.status);
            for (n, v) in &response.headers {
                out.push_str(&format!("{n}: {v}\r\n"));
            }
            if !response.omit_length {
                out.push_str(&format!("Content-Length: {}\r\n", response.body.len()));
            }
            out.push_str("Connection: close\r\n\r\n");
            let mut bytes = out.into_bytes();
            bytes.extend_from_slice(&response.body);
            let _ = tls.write_all(&bytes).await;
            let _ = tls.shutdown().await;
        });
    }
}
