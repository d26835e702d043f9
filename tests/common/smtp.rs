//! An SMTP sink for tests: a server on a 127.0.0.x address that accepts
//! mail (EHLO/HELO, STARTTLS, MAIL, RCPT, DATA, RSET, NOOP, QUIT) and
//! records every message with whether it came over TLS.
//!
//! TLS comes in the flavours probes and deliveries meet: a certificate
//! issued by a test CA ([`TestCa`], whose PEM a test can hand to the code
//! under test as an extra trusted root), a self-signed certificate, or no
//! STARTTLS at all. Several sinks can share one port on different
//! loopback addresses, so that MX hosts resolving to 127.0.0.21, .22, .23
//! can all be reached on the one port the code under test is told to use:
//!
//! ```ignore
//! let ca = TestCa::new();
//! let a = SmtpSink::start("127.0.0.21", 0, SinkTls::issued_by(&ca, &["mx1.example.test"]));
//! let b = SmtpSink::start("127.0.0.22", a.port(), SinkTls::self_signed(&["mx2.example.test"]));
//! let c = SmtpSink::start("127.0.0.23", a.port(), SinkTls::None);
//! ```
//!
//! Each sink runs on its own thread and runtime and stops when dropped.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// Longest command line the sink reads.
const MAX_LINE: usize = 4096;
/// Largest message accepted.
const MAX_MESSAGE: usize = 10 * 1024 * 1024;

/// A certificate authority for tests.
pub struct TestCa {
    issuer: Issuer<'static, KeyPair>,
    cert: CertificateDer<'static>,
    pem: String,
}

impl Default for TestCa {
    fn default() -> Self {
        TestCa::new()
    }
}

impl TestCa {
    pub fn new() -> TestCa {
        let key = KeyPair::generate().expect("CA key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params
            .distinguished_name
            .push(DnType::CommonName, "tls-policyd test CA");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let cert = params.self_signed(&key).expect("CA certificate");
        TestCa {
            pem: cert.pem(),
            cert: cert.der().clone(),
            issuer: Issuer::new(params, key),
        }
    }

    /// The CA certificate in PEM.
    pub fn pem(&self) -> &str {
        &self.pem
    }

    pub fn der(&self) -> &CertificateDer<'static> {
        &self.cert
    }

    /// Write the CA certificate (PEM) to `path`, e.g. for `extra_ca_file`.
    pub fn write_pem(&self, path: &Path) {
        std::fs::write(path, &self.pem).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    }

    /// A leaf certificate for `names` (DNS subject alternative names) and
    /// its key; the chain is the leaf alone, as the CA is the root.
    pub fn issue(&self, names: &[&str]) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
        self.issue_for(names, ExtendedKeyUsagePurpose::ServerAuth)
    }

    /// [`TestCa::issue`] for a TLS client (extended key usage clientAuth).
    pub fn issue_client(
        &self,
        names: &[&str],
    ) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
        self.issue_for(names, ExtendedKeyUsagePurpose::ClientAuth)
    }

    fn issue_for(
        &self,
        names: &[&str],
        purpose: ExtendedKeyUsagePurpose,
    ) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
        let key = KeyPair::generate().expect("leaf key");
        let mut params =
            CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .expect("leaf params");
        if let Some(first) = names.first() {
            params.distinguished_name.push(DnType::CommonName, *first);
        }
        params.extended_key_usages = vec![purpose];
        let cert = params
            .signed_by(&key, &self.issuer)
            .expect("leaf certificate");
        (
            vec![cert.der().clone()],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        )
    }
}

/// What the sink does about TLS.
#[derive(Clone)]
pub enum SinkTls {
    /// No STARTTLS in the EHLO reply; the command is refused.
    None,
    /// STARTTLS with this certificate chain and key.
    Cert {
        chain: Vec<CertificateDer<'static>>,
        key: Arc<PrivateKeyDer<'static>>,
    },
}

impl SinkTls {
    /// A certificate for `names` issued by `ca`.
    pub fn issued_by(ca: &TestCa, names: &[&str]) -> SinkTls {
        let (chain, key) = ca.issue(names);
        SinkTls::Cert {
            chain,
            key: Arc::new(key),
        }
    }

    /// A self-signed certificate for `names`, and the SHA-256 digest of
    /// its public key (SubjectPublicKeyInfo): the data of a `3 1 1` TLSA
    /// record (DANE-EE, SPKI, SHA-256) that matches it.
    pub fn self_signed_with_spki_sha256(names: &[&str]) -> (SinkTls, Vec<u8>) {
        let ck = rcgen::generate_simple_self_signed(
            names.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
        )
        .expect("self-signed certificate");
        let spki = rcgen::PublicKeyData::subject_public_key_info(&ck.signing_key);
        let digest = ring::digest::digest(&ring::digest::SHA256, &spki)
            .as_ref()
            .to_vec();
        let tls = SinkTls::Cert {
            chain: vec![ck.cert.der().clone()],
            key: Arc::new(PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
                ck.signing_key.serialize_der(),
            ))),
        };
        (tls, digest)
    }

    /// A self-signed certificate for `names`.
    pub fn self_signed(names: &[&str]) -> SinkTls {
        SinkTls::self_signed_with_spki_sha256(names).0
    }
}

/// How the sink behaves.
#[derive(Clone)]
pub struct SinkOptions {
    pub tls: SinkTls,
    /// Name in the greeting and the EHLO reply.
    pub hostname: String,
    /// Wait this long before the greeting (to hold connections open).
    pub greeting_delay: Duration,
    /// A greeting other than `220 <hostname> ESMTP`, e.g. `"554 go away"`;
    /// the connection is closed after a non-220 greeting.
    pub greeting: Option<String>,
    /// A reply to STARTTLS other than 220, e.g. `"454 4.7.0 TLS not available"`.
    pub starttls_reply: Option<String>,
    /// Offer only TLS 1.2.
    pub tls12_only: bool,
}

impl SinkOptions {
    pub fn new(tls: SinkTls) -> SinkOptions {
        SinkOptions {
            tls,
            hostname: "sink.test".into(),
            greeting_delay: Duration::ZERO,
            greeting: None,
            starttls_reply: None,
            tls12_only: false,
        }
    }
}

/// One message the sink accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    /// The EHLO/HELO argument.
    pub helo: String,
    /// The MAIL FROM address, without the angle brackets.
    pub mail_from: String,
    pub rcpt_to: Vec<String>,
    /// The message, dot-unstuffed, CRLF line endings, without the final
    /// `.` line.
    pub data: Vec<u8>,
    /// Whether the message came over TLS.
    pub tls: bool,
    /// `TLSv1.3` or `TLSv1.2` when over TLS.
    pub tls_version: Option<String>,
}

#[derive(Default)]
struct State {
    connections: AtomicUsize,
    open: AtomicUsize,
    max_open: AtomicUsize,
    handshakes: AtomicUsize,
    commands: Mutex<Vec<String>>,
    messages: Mutex<Vec<Received>>,
}

/// A running sink. Stops when dropped.
pub struct SmtpSink {
    addr: SocketAddr,
    state: Arc<State>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl SmtpSink {
    /// Start on `ip` and `port` (0: a free one) with default options.
    pub fn start(ip: &str, port: u16, tls: SinkTls) -> SmtpSink {
        SmtpSink::start_with(ip, port, SinkOptions::new(tls))
    }

    pub fn start_with(ip: &str, port: u16, opts: SinkOptions) -> SmtpSink {
        let ip: IpAddr = ip.parse().expect("an IP address");
        let listener = std::net::TcpListener::bind(SocketAddr::new(ip, port))
            .unwrap_or_else(|e| panic!("bind SMTP sink on {ip}:{port}: {e}"));
        listener.set_nonblocking(true).expect("nonblocking");
        let addr = listener.local_addr().expect("local address");
        let acceptor = match &opts.tls {
            SinkTls::None => None,
            SinkTls::Cert { chain, key } => {
                let provider = Arc::new(rustls::crypto::ring::default_provider());
                let versions: &[&rustls::SupportedProtocolVersion] = if opts.tls12_only {
                    &[&rustls::version::TLS12]
                } else {
                    rustls::ALL_VERSIONS
                };
                let config = rustls::ServerConfig::builder_with_provider(provider)
                    .with_protocol_versions(versions)
                    .expect("TLS versions")
                    .with_no_client_auth()
                    .with_single_cert(chain.clone(), key.clone_key())
                    .expect("sink certificate");
                Some(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
            }
        };
        let state = Arc::new(State::default());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let st = state.clone();
        let thread = std::thread::Builder::new()
            .name(format!("smtp-sink-{addr}"))
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("sink runtime");
                rt.block_on(async move {
                    let listener =
                        tokio::net::TcpListener::from_std(listener).expect("tokio listener");
                    let opts = Arc::new(opts);
                    let accept = async {
                        loop {
                            let Ok((stream, _)) = listener.accept().await else {
                                continue;
                            };
                            let (st, opts, acceptor) = (st.clone(), opts.clone(), acceptor.clone());
                            tokio::spawn(async move {
                                st.connections.fetch_add(1, Ordering::SeqCst);
                                let open = st.open.fetch_add(1, Ordering::SeqCst) + 1;
                                st.max_open.fetch_max(open, Ordering::SeqCst);
                                session(stream, &st, &opts, acceptor).await;
                                st.open.fetch_sub(1, Ordering::SeqCst);
                            });
                        }
                    };
                    tokio::select! {
                        _ = accept => {}
                        _ = stopped => {}
                    }
                });
            })
            .expect("spawn sink thread");
        SmtpSink {
            addr,
            state,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// TCP connections accepted so far.
    pub fn connections(&self) -> usize {
        self.state.connections.load(Ordering::SeqCst)
    }

    /// Connections open right now.
    pub fn open_connections(&self) -> usize {
        self.state.open.load(Ordering::SeqCst)
    }

    /// The most connections that were open at once.
    pub fn max_open_connections(&self) -> usize {
        self.state.max_open.load(Ordering::SeqCst)
    }

    /// TLS handshakes completed.
    pub fn tls_handshakes(&self) -> usize {
        self.state.handshakes.load(Ordering::SeqCst)
    }

    /// Every command line received, in order, over all connections.
    pub fn commands(&self) -> Vec<String> {
        self.state
            .commands
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Messages accepted so far.
    pub fn messages(&self) -> Vec<Received> {
        self.state
            .messages
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Wait (up to `timeout`) until `n` messages have arrived.
    pub fn wait_for_messages(&self, n: usize, timeout: Duration) -> Vec<Received> {
        let until = Instant::now() + timeout;
        loop {
            let m = self.messages();
            if m.len() >= n {
                return m;
            }
            assert!(
                Instant::now() < until,
                "sink {} got {} messages, wanted {n}",
                self.addr,
                m.len()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for SmtpSink {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// How a run of the command loop ended.
enum End {
    Closed,
    StartTls,
}

#[derive(Default)]
struct Transaction {
    helo: String,
    mail_from: Option<String>,
    rcpt_to: Vec<String>,
}

async fn session(
    stream: TcpStream,
    state: &State,
    opts: &SinkOptions,
    acceptor: Option<tokio_rustls::TlsAcceptor>,
) {
    tokio::time::sleep(opts.greeting_delay).await;
    let mut plain = BufReader::new(stream);
    let greeting = opts
        .greeting
        .clone()
        .unwrap_or_else(|| format!("220 {} ESMTP test sink", opts.hostname));
    if plain
        .get_mut()
        .write_all(format!("{greeting}\r\n").as_bytes())
        .await
        .is_err()
        || !greeting.starts_with("220")
    {
        return;
    }
    let mut tx = Transaction::default();
    let can_tls = acceptor.is_some() && opts.starttls_reply.is_none();
    match commands(&mut plain, state, opts, &mut tx, None, acceptor.is_some()).await {
        End::Closed => {}
        End::StartTls => {
            let Some(acceptor) = acceptor.filter(|_| can_tls) else {
                return;
            };
            // Anything pipelined after STARTTLS is discarded with the
            // plaintext buffer (RFC 3207 section 4.2).
            let stream = plain.into_inner();
            let Ok(tls) = acceptor.accept(stream).await else {
                return;
            };
            state.handshakes.fetch_add(1, Ordering::SeqCst);
            let version = tls.get_ref().1.protocol_version().map(|v| match v {
                rustls::ProtocolVersion::TLSv1_3 => "TLSv1.3".to_string(),
                rustls::ProtocolVersion::TLSv1_2 => "TLSv1.2".to_string(),
                other => format!("{other:?}"),
            });
            let mut tls = BufReader::new(tls);
            // A new EHLO is required after the handshake.
            let mut tx = Transaction::default();
            let _ = commands(&mut tls, state, opts, &mut tx, Some(version), false).await;
        }
    }
}

/// Read one line (without its line ending), at most [`MAX_LINE`] bytes.
async fn read_line<S: AsyncRead + Unpin>(r: &mut BufReader<S>) -> Option<Vec<u8>> {
    let mut line = Vec::new();
    loop {
        let buf = r.fill_buf().await.ok()?;
        if buf.is_empty() {
            return None;
        }
        match buf.iter().position(|&b| b == b'\n') {
            Some(i) => {
                line.extend_from_slice(&buf[..i]);
                r.consume(i + 1);
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
                return Some(line);
            }
            None => {
                let n = buf.len();
                line.extend_from_slice(buf);
                r.consume(n);
                if line.len() > MAX_LINE {
                    return None;
                }
            }
        }
    }
}

/// Serve commands until QUIT, EOF or STARTTLS. `tls` is `Some(version)`
/// once TLS is up; `offer_tls` says whether EHLO announces STARTTLS.
async fn commands<S: AsyncRead + AsyncWrite + Unpin>(
    io: &mut BufReader<S>,
    state: &State,
    opts: &SinkOptions,
    tx: &mut Transaction,
    tls: Option<Option<String>>,
    offer_tls: bool,
) -> End {
    macro_rules! reply {
        ($($arg:tt)*) => {
            if io.get_mut().write_all(format!($($arg)*).as_bytes()).await.is_err() {
                return End::Closed;
            }
        };
    }
    loop {
        let Some(line) = read_line(io).await else {
            return End::Closed;
        };
        let line = String::from_utf8_lossy(&line).into_owned();
        state
            .commands
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(line.clone());
        let upper = line.to_ascii_uppercase();
        let verb = upper.split_ascii_whitespace().next().unwrap_or("");
        let arg = line.get(verb.len()..).unwrap_or("").trim();
        match verb {
            "EHLO" => {
                tx.helo = arg.to_string();
                tx.mail_from = None;
                tx.rcpt_to.clear();
                let mut lines = vec![
                    opts.hostname.clone(),
                    "PIPELINING".into(),
                    "SIZE 10240000".into(),
                ];
                if offer_tls {
                    lines.push("STARTTLS".into());
                }
                lines.push("8BITMIME".into());
                let n = lines.len();
                let mut text = String::new();
                for (i, l) in lines.iter().enumerate() {
                    let sep = if i + 1 == n { ' ' } else { '-' };
                    text.push_str(&format!("250{sep}{l}\r\n"));
                }
                reply!("{text}");
            }
            "HELO" => {
                tx.helo = arg.to_string();
                reply!("250 {}\r\n", opts.hostname);
            }
            "STARTTLS" => {
                if tls.is_some() {
                    reply!("503 5.5.1 TLS already active\r\n");
                } else if let Some(r) = &opts.starttls_reply {
                    reply!("{r}\r\n");
                } else if !offer_tls {
                    reply!("502 5.5.1 STARTTLS not available\r\n");
                } else {
                    reply!("220 2.0.0 Ready to start TLS\r\n");
                    return End::StartTls;
                }
            }
            "MAIL" => {
                let from = upper
                    .strip_prefix("MAIL FROM:")
                    .map(|_| address(&line["MAIL FROM:".len()..]));
                match from {
                    Some(f) if tx.mail_from.is_none() => {
                        tx.mail_from = Some(f);
                        reply!("250 2.1.0 Ok\r\n");
                    }
                    Some(_) => reply!("503 5.5.1 nested MAIL command\r\n"),
                    None => reply!("501 5.5.4 syntax: MAIL FROM:<address>\r\n"),
                }
            }
            "RCPT" => {
                if tx.mail_from.is_none() {
                    reply!("503 5.5.1 need MAIL first\r\n");
                } else if upper.starts_with("RCPT TO:") {
                    tx.rcpt_to.push(address(&line["RCPT TO:".len()..]));
                    reply!("250 2.1.5 Ok\r\n");
                } else {
                    reply!("501 5.5.4 syntax: RCPT TO:<address>\r\n");
                }
            }
            "DATA" => {
                if tx.rcpt_to.is_empty() {
                    reply!("503 5.5.1 need RCPT first\r\n");
                    continue;
                }
                reply!("354 End data with <CR><LF>.<CR><LF>\r\n");
                let mut data = Vec::new();
                loop {
                    let Some(l) = read_line(io).await else {
                        return End::Closed;
                    };
                    if l == b"." {
                        break;
                    }
                    let l = l.strip_prefix(b".").unwrap_or(&l);
                    if data.len() + l.len() + 2 > MAX_MESSAGE {
                        return End::Closed;
                    }
                    data.extend_from_slice(l);
                    data.extend_from_slice(b"\r\n");
                }
                state
                    .messages
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(Received {
                        helo: tx.helo.clone(),
                        mail_from: tx.mail_from.take().unwrap_or_default(),
                        rcpt_to: std::mem::take(&mut tx.rcpt_to),
                        data,
                        tls: tls.is_some(),
                        tls_version: tls.clone().flatten(),
                    });
                reply!("250 2.0.0 Ok: queued\r\n");
            }
            "RSET" => {
                tx.mail_from = None;
                tx.rcpt_to.clear();
                reply!("250 2.0.0 Ok\r\n");
            }
            "NOOP" => reply!("250 2.0.0 Ok\r\n"),
            "QUIT" => {
                reply!("221 2.0.0 Bye\r\n");
                let _ = io.get_mut().shutdown().await;
                return End::Closed;
            }
            _ => reply!("502 5.5.2 command not recognized\r\n"),
        }
    }
}

/// `<a@b> SIZE=1` → `a@b`.
fn address(arg: &str) -> String {
    let arg = arg.trim();
    let first = arg.split_ascii_whitespace().next().unwrap_or("");
    first
        .trim_start_matches('<')
        .trim_end_matches('>')
        .to_string()
}
