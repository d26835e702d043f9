//! The policy delegation front door over the wire: the server runs in
//! process on 127.0.0.1 port 0 (or a unix socket) with a real decision log
//! and an in-memory TLS knowledge source; the client is a plain blocking
//! socket that writes the protocol by hand.

mod common;

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::Value;
use tokio_util::sync::CancellationToken;

use tls_policyd::engine::Engine;
use tls_policyd::engine::policy_file::PolicyFile;
use tls_policyd::engine::refusal::Capability;
use tls_policyd::frontends::attrs::{MAX_LINE_LEN, MAX_REQUEST_LEN};
use tls_policyd::frontends::policy_server::{self, Backend, Live, PolicyDeps, PolicyServerConfig};
use tls_policyd::listen::{ListenAddr, Listener};
use tls_policyd::log::record::{DecisionLog, Target};

use common::WAIT;
use common::knowledge::{MapKnowledge, no_starttls};

const POLICY: &str = r#"
default = "opportunistic"

[[rule]]
domains = ["bank.example", ".bank.example"]
tls = "forced"
reason = "PCI partner"

[[rule]]
domains = ["payroll.example"]
tls = "secure"
match = ["mx1.payroll.example"]

[[rule]]
domains = ["verify.example"]
tls = "verify"

[[rule]]
domains = ["strict.example"]
tls = "forced"
refuse = "reject"

[[rule]]
domains = ["lenient.example"]
tls = "forced"
refuse = "off"

[[sender_rule]]
senders = ["ceo@example.com", "@finance.example.com"]
tls = "forced"
reason = "board mail"
"#;

struct Parts {
    live: Arc<Live>,
    log: DecisionLog,
}

impl Backend for Parts {
    fn live(&self) -> Arc<Live> {
        self.live.clone()
    }
    fn decision_log(&self) -> &DecisionLog {
        &self.log
    }
}

/// No STARTTLS at bank.example's MX (the detail every refusal here names).
fn no_tls() -> Capability {
    no_starttls("bank.example")
}

/// A running policy server with its own directory.
struct Server {
    rt: Option<tokio::runtime::Runtime>,
    shutdown: CancellationToken,
    parts: Arc<Parts>,
    knowledge: Arc<MapKnowledge>,
    addr: ListenAddr,
    log_path: PathBuf,
    _dir: tempfile::TempDir,
}

impl Server {
    fn start(settings: &str) -> Server {
        Server::start_at("inet:127.0.0.1:0", settings)
    }

    fn start_at(listen: &str, settings: &str) -> Server {
        let dir = tempfile::tempdir().unwrap();
        let listen = listen.replace("DIR", &dir.path().display().to_string());
        let config: PolicyServerConfig =
            toml::from_str(&format!("listen = \"{listen}\"\n{settings}")).unwrap();
        config.validate().unwrap();
        let policy = PolicyFile::parse(POLICY, Path::new("policy.toml")).unwrap();
        let log_path = dir.path().join("decisions.jsonl");
        let parts = Arc::new(Parts {
            live: Arc::new(Live {
                policy_server: policy_server::PolicyServerSettings::from(&config),
                ..Live::new(Engine::new(policy))
            }),
            log: DecisionLog::start(Target::File(log_path.clone())).unwrap(),
        });
        let knowledge = Arc::new(MapKnowledge::default());
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let listener = {
            let _guard = rt.enter();
            Listener::bind(&config.listen, &config.socket_options()).unwrap()
        };
        let addr = listener.local_addr().unwrap();
        let deps = PolicyDeps::new(parts.clone(), &config, knowledge.clone());
        let shutdown = CancellationToken::new();
        rt.spawn(policy_server::serve(listener, deps, shutdown.clone()));
        Server {
            rt: Some(rt),
            shutdown,
            parts,
            knowledge,
            addr,
            log_path,
            _dir: dir,
        }
    }

    fn connect(&self) -> Client {
        let stream = match &self.addr {
            ListenAddr::Inet(a) => {
                assert!(a.ip().is_loopback());
                let s = TcpStream::connect(a).unwrap();
                s.set_read_timeout(Some(WAIT)).unwrap();
                s.set_write_timeout(Some(WAIT)).unwrap();
                Stream::Tcp(s)
            }
            ListenAddr::Unix(p) => {
                let s = UnixStream::connect(p).unwrap();
                s.set_read_timeout(Some(WAIT)).unwrap();
                s.set_write_timeout(Some(WAIT)).unwrap();
                Stream::Unix(s)
            }
        };
        Client {
            stream,
            pending: Vec::new(),
        }
    }

    /// Every decision record written so far.
    fn records(&self) -> Vec<Value> {
        self.parts.log.flush();
        let text = std::fs::read_to_string(&self.log_path).unwrap_or_default();
        text.lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    fn last_record(&self) -> Value {
        self.records().pop().expect("no decision record")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.shutdown.cancel();
        if let Some(rt) = self.rt.take() {
            rt.shutdown_timeout(WAIT);
        }
    }
}

enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.read(buf),
            Stream::Unix(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.write(buf),
            Stream::Unix(s) => s.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.flush(),
            Stream::Unix(s) => s.flush(),
        }
    }
}

/// A policy client as Postfix is one: persistent connection, request,
/// reply.
struct Client {
    stream: Stream,
    pending: Vec<u8>,
}

impl Client {
    fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).unwrap();
    }

    /// One request, one reply: the text after `action=`.
    fn ask(&mut self, request: &[u8]) -> String {
        self.send(request);
        self.reply().unwrap_or_else(|e| panic!("no reply: {e}"))
    }

    /// The next reply: exactly `action=…\n\n`.
    fn reply(&mut self) -> io::Result<String> {
        loop {
            if let Some(end) = self.pending.windows(2).position(|w| w == b"\n\n") {
                let reply: Vec<u8> = self.pending.drain(..end + 2).collect();
                let text = String::from_utf8(reply[..end].to_vec()).unwrap();
                let action = text
                    .strip_prefix("action=")
                    .unwrap_or_else(|| panic!("reply is not action=…: {text:?}"));
                assert!(!action.contains('\n'), "one line per reply: {text:?}");
                return Ok(action.to_string());
            }
            let mut chunk = [0u8; 4096];
            let n = self.stream.read(&mut chunk)?;
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("closed with {} bytes pending", self.pending.len()),
                ));
            }
            self.pending.extend_from_slice(&chunk[..n]);
        }
    }

    /// Whether the server closed the connection without sending anything
    /// more.
    fn closed_without_reply(&mut self) -> bool {
        if !self.pending.is_empty() {
            return false;
        }
        let mut chunk = [0u8; 256];
        match self.stream.read(&mut chunk) {
            Ok(0) => true,
            Ok(n) => panic!(
                "unexpected data: {:?}",
                String::from_utf8_lossy(&chunk[..n])
            ),
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => true,
            Err(e) => panic!("connection still open: {e}"),
        }
    }
}

/// A request as Postfix 3.7 writes it (every attribute, empty or not),
/// with `overrides` replacing or adding attributes.
fn request(state: &str, overrides: &[(&str, &str)]) -> Vec<u8> {
    let mut attrs: Vec<(String, String)> = [
        ("request", "smtpd_access_policy"),
        ("protocol_state", state),
        ("protocol_name", "ESMTP"),
        ("client_address", "192.0.2.25"),
        ("client_name", "client.example"),
        ("client_port", "41234"),
        ("reverse_client_name", "client.example"),
        ("server_address", "192.0.2.1"),
        ("server_port", "25"),
        ("helo_name", "client.example"),
        ("sender", "alice@example.com"),
        ("recipient", ""),
        ("recipient_count", "0"),
        ("queue_id", ""),
        ("instance", "1a2b.6543.0"),
        ("size", "0"),
        ("etrn_domain", ""),
        ("stress", ""),
        ("sasl_method", ""),
        ("sasl_username", ""),
        ("sasl_sender", ""),
        ("ccert_subject", ""),
        ("ccert_issuer", ""),
        ("ccert_fingerprint", ""),
        ("ccert_pubkey_fingerprint", ""),
        ("encryption_protocol", "TLSv1.3"),
        ("encryption_cipher", "TLS_AES_256_GCM_SHA384"),
        ("encryption_keysize", "256"),
        ("policy_context", ""),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    for (k, v) in overrides {
        match attrs.iter_mut().find(|(name, _)| name == k) {
            Some(slot) => slot.1 = v.to_string(),
            None => attrs.push((k.to_string(), v.to_string())),
        }
    }
    let mut out = String::new();
    for (k, v) in attrs {
        out.push_str(&format!("{k}={v}\n"));
    }
    out.push('\n');
    out.into_bytes()
}

fn rcpt(recipient: &str) -> Vec<u8> {
    request("RCPT", &[("recipient", recipient)])
}

const DEFER_BANK: &str = "DEFER_IF_PERMIT 4.7.10 TLS policy for bank.example requires forced TLS (encrypt), but no mail server of the domain offers STARTTLS (mx1.bank.example[192.0.2.10]: no STARTTLS in EHLO reply); the mail could not be delivered";

#[test]
fn rcpt_for_an_opportunistic_domain_is_dunno_and_logged() {
    let s = Server::start("");
    let mut c = s.connect();
    let action = c.ask(&request(
        "RCPT",
        &[("recipient", "Bob@Other.Example"), ("queue_id", "4XyZ1")],
    ));
    assert_eq!(action, "DUNNO");
    let r = s.last_record();
    assert_eq!(r["frontend"], "policy");
    assert_eq!(r["key"], "Other.Example");
    assert_eq!(r["domain"], "other.example");
    assert_eq!(r["recipient"], "Bob@Other.Example");
    assert_eq!(r["sender"], "alice@example.com");
    assert_eq!(r["client_address"], "192.0.2.25");
    assert_eq!(r["instance"], "1a2b.6543.0");
    assert_eq!(r["queue_id"], "4XyZ1");
    assert_eq!(r["tls"], "opportunistic");
    assert_eq!(r["level"], "may");
    assert_eq!(r["source"], "default");
    assert_eq!(r["reply"], "DUNNO");
    assert_eq!(r["action"], "DUNNO");
    assert!(r.get("sender_rule").is_none());
    assert!(r.get("map").is_none());
    // Opportunistic delivery cannot fail for lack of TLS: nothing asked.
    assert!(s.knowledge.asked().is_empty());
    assert!(s.knowledge.scheduled().is_empty());
}

#[test]
fn queue_id_is_left_out_while_postfix_has_none() {
    let s = Server::start("");
    let mut c = s.connect();
    assert_eq!(c.ask(&rcpt("bob@other.example")), "DUNNO");
    assert!(s.last_record().get("queue_id").is_none());
}

#[test]
fn forced_domain_known_without_starttls_is_deferred() {
    let s = Server::start("");
    s.knowledge.set("bank.example", no_tls());
    let mut c = s.connect();
    assert_eq!(c.ask(&rcpt("bob@Bank.Example")), DEFER_BANK);
    let r = s.last_record();
    assert_eq!(r["tls"], "forced");
    assert_eq!(r["level"], "encrypt");
    assert_eq!(r["rule"], 1);
    assert_eq!(r["reply"], "DEFER_IF_PERMIT");
    assert_eq!(r["action"], DEFER_BANK);
    // Subdomains covered by `.bank.example` say their own name.
    s.knowledge.set("eu.bank.example", no_tls());
    let a = c.ask(&rcpt("x@eu.bank.example"));
    assert!(
        a.starts_with(
            "DEFER_IF_PERMIT 4.7.10 TLS policy for eu.bank.example requires forced TLS (encrypt)"
        ),
        "{a}"
    );
}

#[test]
fn reject_when_configured_globally_or_per_rule() {
    let s = Server::start("refuse = \"reject\"\n");
    s.knowledge.set("bank.example", no_tls());
    let mut c = s.connect();
    let a = c.ask(&rcpt("bob@bank.example"));
    assert_eq!(
        a,
        DEFER_BANK.replace("DEFER_IF_PERMIT 4.7.10", "REJECT 5.7.10")
    );
    assert_eq!(s.last_record()["reply"], "REJECT");

    // Global default (defer), rule says reject.
    let s = Server::start("");
    s.knowledge.set("strict.example", no_tls());
    let mut c = s.connect();
    let a = c.ask(&rcpt("bob@strict.example"));
    assert!(
        a.starts_with("REJECT 5.7.10 TLS policy for strict.example requires forced TLS (encrypt), but no mail server"),
        "{a}"
    );
}

#[test]
fn refuse_off_globally_or_per_rule_never_refuses() {
    let s = Server::start("");
    s.knowledge.set("lenient.example", no_tls());
    let mut c = s.connect();
    assert_eq!(c.ask(&rcpt("bob@lenient.example")), "DUNNO");
    assert!(
        s.knowledge.asked().is_empty(),
        "refuse=off needs no knowledge"
    );

    let s = Server::start("refuse = \"off\"\n");
    s.knowledge.set("bank.example", no_tls());
    let mut c = s.connect();
    assert_eq!(c.ask(&rcpt("bob@bank.example")), "DUNNO");
    // A rule's own setting beats the global one.
    s.knowledge.set("strict.example", no_tls());
    assert!(
        c.ask(&rcpt("bob@strict.example"))
            .starts_with("REJECT 5.7.10")
    );
}

#[test]
fn nothing_known_is_dunno_and_schedules_a_probe() {
    let s = Server::start("");
    let mut c = s.connect();
    assert_eq!(c.ask(&rcpt("bob@bank.example")), "DUNNO");
    assert_eq!(s.knowledge.scheduled(), ["bank.example"]);
    // An inconclusive probe is no reason either, and is not rescheduled.
    s.knowledge.set(
        "bank.example",
        Capability::Unknown {
            detail: "connection timed out".into(),
        },
    );
    assert_eq!(c.ask(&rcpt("bob@bank.example")), "DUNNO");
    assert_eq!(s.knowledge.scheduled(), ["bank.example"]);
}

#[test]
fn verified_starttls_is_dunno() {
    let s = Server::start("");
    for d in ["bank.example", "payroll.example", "verify.example"] {
        s.knowledge.set(
            d,
            Capability::StarttlsVerified {
                names: vec![format!("mx1.{d}")],
            },
        );
    }
    let mut c = s.connect();
    for d in ["bank.example", "payroll.example", "verify.example"] {
        assert_eq!(c.ask(&rcpt(&format!("bob@{d}"))), "DUNNO", "{d}");
    }
    assert!(s.knowledge.scheduled().is_empty());
}

#[test]
fn verify_and_secure_with_an_unverified_certificate_are_refused() {
    let s = Server::start("");
    let unverified = Capability::StarttlsUnverified {
        detail: "certificate issuer not trusted".into(),
    };
    for d in ["bank.example", "payroll.example", "verify.example"] {
        s.knowledge.set(d, unverified.clone());
    }
    let mut c = s.connect();
    // encrypt does not check certificates.
    assert_eq!(c.ask(&rcpt("bob@bank.example")), "DUNNO");
    assert_eq!(
        c.ask(&rcpt("bob@payroll.example")),
        "DEFER_IF_PERMIT 4.7.10 TLS policy for payroll.example requires TLS with a verified certificate (secure), but the domain's mail servers offer STARTTLS but their certificate does not verify (certificate issuer not trusted); the mail could not be delivered"
    );
    assert!(
        c.ask(&rcpt("bob@verify.example"))
            .starts_with("DEFER_IF_PERMIT 4.7.10 TLS policy for verify.example requires TLS with a verified certificate (verify)")
    );
}

#[test]
fn sender_rule_filters_once_per_message() {
    let s = Server::start("forced_transport = \"smtp-tls-forced\"\n");
    let mut c = s.connect();
    let from_ceo = |rcpt: &str, instance: &str| {
        request(
            "RCPT",
            &[
                ("sender", "CEO@Example.com"),
                ("recipient", rcpt),
                ("instance", instance),
            ],
        )
    };
    assert_eq!(
        c.ask(&from_ceo("a@other.example", "m1")),
        "FILTER smtp-tls-forced:"
    );
    let r = s.last_record();
    assert_eq!(r["sender_rule"], 1);
    assert_eq!(r["tls"], "forced", "the forced transport raises it");
    assert_eq!(r["level"], "encrypt");
    assert_eq!(r["raised"], true);
    assert_eq!(r["reply"], "FILTER");
    // FILTER applies to the whole message: said once.
    assert_eq!(c.ask(&from_ceo("b@third.example", "m1")), "DUNNO");
    assert_eq!(s.last_record()["sender_rule"], 1);
    // The next message gets its own.
    assert_eq!(
        c.ask(&from_ceo("a@other.example", "m2")),
        "FILTER smtp-tls-forced:"
    );
    // @domain entries match any local part; other senders nothing.
    let finance = request(
        "RCPT",
        &[
            ("sender", "payroll@finance.example.com"),
            ("recipient", "x@other.example"),
            ("instance", "m3"),
        ],
    );
    assert_eq!(c.ask(&finance), "FILTER smtp-tls-forced:");
    let plain = request(
        "RCPT",
        &[("recipient", "x@other.example"), ("instance", "m4")],
    );
    assert_eq!(c.ask(&plain), "DUNNO");
    assert!(s.last_record().get("sender_rule").is_none());
}

#[test]
fn sender_rule_refuses_a_recipient_known_without_starttls_then_filters() {
    let s = Server::start("forced_transport = \"smtp-tls-forced\"\n");
    s.knowledge.set(
        "plain.example",
        Capability::NoStarttls {
            detail: String::new(),
        },
    );
    let mut c = s.connect();
    let from_ceo = |rcpt: &str| {
        request(
            "RCPT",
            &[
                ("sender", "ceo@example.com"),
                ("recipient", rcpt),
                ("instance", "m1"),
            ],
        )
    };
    // plain.example is opportunistic by policy, but the sender rule would
    // send it through the forced transport, where it cannot go.
    assert_eq!(
        c.ask(&from_ceo("a@plain.example")),
        "DEFER_IF_PERMIT 4.7.10 TLS policy for plain.example requires forced TLS (encrypt), but no mail server of the domain offers STARTTLS; the mail could not be delivered"
    );
    // The refusal took the reply; FILTER comes with the next recipient.
    assert_eq!(
        c.ask(&from_ceo("b@other.example")),
        "FILTER smtp-tls-forced:"
    );
}

#[test]
fn end_of_message_record_lists_every_recipient() {
    let s = Server::start("");
    s.knowledge.set("bank.example", no_tls());
    let mut c = s.connect();
    assert_eq!(c.ask(&rcpt("a@other.example")), "DUNNO");
    let second = request(
        "RCPT",
        &[("recipient", "b@Bank.Example"), ("queue_id", "4Q1")],
    );
    assert_eq!(c.ask(&second), DEFER_BANK);
    assert_eq!(
        c.ask(&request(
            "RCPT",
            &[("recipient", "c@payroll.example"), ("queue_id", "4Q1")]
        )),
        "DUNNO"
    );
    let eom = request(
        "END-OF-MESSAGE",
        &[
            ("queue_id", "4Q1"),
            ("recipient_count", "2"),
            ("size", "1234"),
        ],
    );
    assert_eq!(c.ask(&eom), "DUNNO");
    let records = s.records();
    assert_eq!(
        records.len(),
        4,
        "three RCPT records and one for the message"
    );
    let m = &records[3];
    assert_eq!(m["frontend"], "policy");
    assert_eq!(m["queue_id"], "4Q1");
    assert_eq!(m["instance"], "1a2b.6543.0");
    assert_eq!(m["sender"], "alice@example.com");
    assert_eq!(m["client_address"], "192.0.2.25");
    assert_eq!(m["tls"], "forced");
    assert_eq!(m["reply"], "DUNNO");
    assert!(m.get("domain").is_none());
    assert!(m.get("level").is_none());
    assert_eq!(
        m["reason"],
        "message with 3 recipients: 2 forced, 1 opportunistic"
    );
    let rcpts = m["recipients"].as_array().unwrap();
    let summary: Vec<(String, String, String, String)> = rcpts
        .iter()
        .map(|r| {
            (
                r["recipient"].as_str().unwrap().to_string(),
                r["domain"].as_str().unwrap().to_string(),
                r["tls"].as_str().unwrap().to_string(),
                r["level"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            (
                "a@other.example".into(),
                "other.example".into(),
                "opportunistic".into(),
                "may".into()
            ),
            (
                "b@Bank.Example".into(),
                "bank.example".into(),
                "forced".into(),
                "encrypt".into()
            ),
            (
                "c@payroll.example".into(),
                "payroll.example".into(),
                "forced".into(),
                "secure match=mx1.payroll.example".into()
            ),
        ]
    );
    assert_eq!(rcpts[1]["source"], "static");
    assert_eq!(rcpts[1]["rule"], 1);
    assert_eq!(rcpts[1]["reason"], "PCI partner");
    assert_eq!(rcpts[1]["action"], DEFER_BANK);
    assert_eq!(rcpts[0]["action"], "DUNNO");

    // The state is gone after END-OF-MESSAGE.
    assert_eq!(c.ask(&eom), "DUNNO");
    let again = s.last_record();
    assert_eq!(again["recipients"].as_array().unwrap().len(), 0);
    assert_eq!(
        again["reason"],
        "no RCPT decision was seen for this message (recipient_count=2)"
    );
    assert_eq!(again["tls"], "opportunistic");
}

#[test]
fn end_of_message_on_another_connection_finds_the_rcpt_decisions() {
    let s = Server::start("");
    let mut rcpt_conn = s.connect();
    let mut eom_conn = s.connect();
    let r = |to: &str| request("RCPT", &[("recipient", to), ("instance", "shared.1")]);
    assert_eq!(rcpt_conn.ask(&r("a@bank.example")), "DUNNO");
    assert_eq!(rcpt_conn.ask(&r("b@other.example")), "DUNNO");
    let eom = request(
        "END-OF-MESSAGE",
        &[
            ("instance", "shared.1"),
            ("queue_id", "4Q2"),
            ("recipient_count", "2"),
        ],
    );
    assert_eq!(eom_conn.ask(&eom), "DUNNO");
    let m = s.last_record();
    assert_eq!(m["recipients"].as_array().unwrap().len(), 2);
    assert_eq!(
        m["reason"],
        "message with 2 recipients: 1 forced, 1 opportunistic"
    );
}

#[test]
fn end_of_message_with_one_recipient_and_no_rcpt_state_decides_it() {
    let s = Server::start("");
    let mut c = s.connect();
    let eom = request(
        "END-OF-MESSAGE",
        &[
            ("instance", "solo"),
            ("queue_id", "4Q3"),
            ("recipient", "z@bank.example"),
            ("recipient_count", "1"),
        ],
    );
    assert_eq!(c.ask(&eom), "DUNNO");
    let m = s.last_record();
    assert_eq!(m["tls"], "forced");
    assert_eq!(m["recipients"][0]["domain"], "bank.example");
    assert_eq!(m["recipients"][0]["level"], "encrypt");
    assert!(m["recipients"][0].get("action").is_none());
}

#[test]
fn a_new_message_on_a_connection_drops_the_previous_one() {
    let s = Server::start("");
    let mut c = s.connect();
    let r = |to: &str, inst: &str| request("RCPT", &[("recipient", to), ("instance", inst)]);
    assert_eq!(c.ask(&r("a@bank.example", "old")), "DUNNO");
    // RSET, then another message on the same session.
    assert_eq!(c.ask(&r("b@other.example", "new")), "DUNNO");
    let eom_old = request("END-OF-MESSAGE", &[("instance", "old")]);
    assert_eq!(c.ask(&eom_old), "DUNNO");
    assert_eq!(s.last_record()["recipients"].as_array().unwrap().len(), 0);
}

#[test]
fn trace_header_is_prepended_at_data_when_enabled() {
    let s =
        Server::start("trace_header = \"X-TLS-Policy\"\nforced_transport = \"smtp-tls-forced\"\n");
    s.knowledge.set("strict.example", no_tls());
    let mut c = s.connect();
    assert_eq!(c.ask(&rcpt("a@bank.example")), "DUNNO");
    assert_eq!(c.ask(&rcpt("b@other.example")), "DUNNO");
    assert_eq!(c.ask(&rcpt("c@bank.example")), "DUNNO");
    assert!(c.ask(&rcpt("d@strict.example")).starts_with("REJECT"));
    let data = request("DATA", &[("recipient_count", "3")]);
    assert_eq!(
        c.ask(&data),
        "PREPEND X-TLS-Policy: bank.example=forced (encrypt, static rule 1); other.example=opportunistic (may, default)"
    );
    let records_before = s.records().len();
    // One recipient: Postfix names it at DATA; without RCPT state it is
    // decided there.
    let single = request(
        "DATA",
        &[
            ("instance", "other"),
            ("recipient", "x@payroll.example"),
            ("recipient_count", "1"),
        ],
    );
    assert_eq!(
        c.ask(&single),
        "PREPEND X-TLS-Policy: payroll.example=forced (secure match=mx1.payroll.example, static rule 2)"
    );
    // Sender rules are named.
    let ceo = request(
        "RCPT",
        &[
            ("sender", "ceo@example.com"),
            ("recipient", "a@other.example"),
            ("instance", "boss"),
        ],
    );
    assert_eq!(c.ask(&ceo), "FILTER smtp-tls-forced:");
    let data = request(
        "DATA",
        &[
            ("sender", "ceo@example.com"),
            ("instance", "boss"),
            ("recipient_count", "1"),
        ],
    );
    assert_eq!(
        c.ask(&data),
        "PREPEND X-TLS-Policy: other.example=forced (encrypt, default); sender rule 1: forced TLS for the whole message"
    );
    // DATA writes no decision records of its own.
    assert_eq!(s.records().len(), records_before + 1);

    let s = Server::start("");
    let mut c = s.connect();
    assert_eq!(c.ask(&rcpt("a@bank.example")), "DUNNO");
    assert_eq!(c.ask(&request("DATA", &[])), "DUNNO", "off by default");
}

#[test]
fn other_states_and_request_types_are_dunno_without_records() {
    let s = Server::start("trace_header = \"X-TLS-Policy\"\n");
    let mut c = s.connect();
    for state in ["CONNECT", "EHLO", "HELO", "MAIL", "VRFY", "ETRN", "junk"] {
        assert_eq!(c.ask(&request(state, &[])), "DUNNO", "{state}");
    }
    assert_eq!(
        c.ask(&request(
            "RCPT",
            &[
                ("request", "something_else"),
                ("recipient", "a@bank.example")
            ]
        )),
        "DUNNO"
    );
    assert_eq!(c.ask(b"\n"), "DUNNO", "an empty request is still a request");
    assert!(s.records().is_empty());
}

#[test]
fn unknown_attributes_are_ignored() {
    let s = Server::start("");
    s.knowledge.set("bank.example", no_tls());
    let mut c = s.connect();
    let req = request(
        "RCPT",
        &[
            ("recipient", "bob@bank.example"),
            ("compatibility_level", "3.6"),
            ("mail_version", "3.9.1"),
            ("some_future_attribute", "x=y=z"),
        ],
    );
    assert_eq!(c.ask(&req), DEFER_BANK);
}

#[test]
fn several_requests_per_connection_answered_in_order() {
    let s = Server::start("");
    s.knowledge.set("bank.example", no_tls());
    let mut c = s.connect();
    // Written in one go, as a pipelining client would.
    let mut all = rcpt("a@other.example");
    all.extend(rcpt("b@bank.example"));
    all.extend(request("CONNECT", &[]));
    all.extend(rcpt("c@other.example"));
    c.send(&all);
    assert_eq!(c.reply().unwrap(), "DUNNO");
    assert_eq!(c.reply().unwrap(), DEFER_BANK);
    assert_eq!(c.reply().unwrap(), "DUNNO");
    assert_eq!(c.reply().unwrap(), "DUNNO");
    // And byte by byte.
    let one = rcpt("b@bank.example");
    for b in &one {
        c.send(std::slice::from_ref(b));
    }
    assert_eq!(c.reply().unwrap(), DEFER_BANK);
    for i in 0..50 {
        assert_eq!(c.ask(&rcpt(&format!("u{i}@other.example"))), "DUNNO");
    }
}

#[test]
fn many_connections_at_once() {
    let s = Arc::new(Server::start(""));
    s.knowledge.set("bank.example", no_tls());
    let threads: Vec<_> = (0..16)
        .map(|t| {
            let s = s.clone();
            std::thread::spawn(move || {
                let mut c = s.connect();
                for i in 0..20 {
                    let inst = format!("t{t}");
                    let to = if i % 2 == 0 {
                        "x@bank.example"
                    } else {
                        "x@other.example"
                    };
                    let a = c.ask(&request("RCPT", &[("recipient", to), ("instance", &inst)]));
                    assert_eq!(a == DEFER_BANK, i % 2 == 0, "{a}");
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(s.records().len(), 16 * 20);
}

#[test]
fn malformed_request_closes_that_connection_only() {
    let s = Server::start("");
    let mut other = s.connect();
    assert_eq!(other.ask(&rcpt("a@other.example")), "DUNNO");

    let mut bad = s.connect();
    // A good request, then a line without '=': the first is answered, the
    // second closes the connection without a reply.
    let mut bytes = rcpt("a@other.example");
    bytes.extend_from_slice(b"request=smtpd_access_policy\nthis line is broken\n\n");
    bad.send(&bytes);
    assert_eq!(bad.reply().unwrap(), "DUNNO");
    assert!(bad.closed_without_reply());

    for garbage in [&b"=nameless\n\n"[..], b"a=1\na=2\n\n"] {
        let mut c = s.connect();
        c.send(garbage);
        assert!(
            c.closed_without_reply(),
            "{:?}",
            String::from_utf8_lossy(garbage)
        );
    }

    // Untouched.
    assert_eq!(other.ask(&rcpt("b@other.example")), "DUNNO");
    assert_eq!(s.connect().ask(&rcpt("c@other.example")), "DUNNO");
    assert_eq!(s.records().len(), 4);
}

/// `name=` plus filler so the line is exactly `len` bytes with its newline.
fn line_of(name: &str, len: usize) -> Vec<u8> {
    let mut l = format!("{name}=").into_bytes();
    assert!(len > l.len(), "a {len}-byte line cannot hold {name}=");
    l.resize(len - 1, b'x');
    l.push(b'\n');
    l
}

#[test]
fn line_length_limit_over_the_wire() {
    let s = Server::start("");
    let mut base = rcpt("a@other.example");
    base.pop(); // reopen the request

    let mut ok = base.clone();
    ok.extend(line_of("padding", MAX_LINE_LEN));
    ok.push(b'\n');
    let mut c = s.connect();
    assert_eq!(c.ask(&ok), "DUNNO");

    let mut over = base.clone();
    over.extend(line_of("padding", MAX_LINE_LEN + 1));
    over.push(b'\n');
    let mut c = s.connect();
    c.send(&over);
    assert!(c.closed_without_reply());
    assert_eq!(s.connect().ask(&rcpt("b@other.example")), "DUNNO");
}

#[test]
fn request_length_limit_over_the_wire() {
    let s = Server::start("");
    let mut base = rcpt("a@other.example");
    base.pop();
    // Pad with full-length lines, then one line that lands exactly on the
    // limit (counting the final empty line).
    let build = |total: usize| {
        let mut v = base.clone();
        let mut i = 0;
        while total - 1 - v.len() > MAX_LINE_LEN {
            v.extend(line_of(&format!("pad{i}"), MAX_LINE_LEN));
            i += 1;
        }
        let left = total - 1 - v.len();
        v.extend(line_of(&format!("pad{i}"), left));
        v.push(b'\n');
        assert_eq!(v.len(), total);
        v
    };
    let mut c = s.connect();
    assert_eq!(c.ask(&build(MAX_REQUEST_LEN)), "DUNNO");
    // The connection is still good for more.
    assert_eq!(c.ask(&rcpt("b@other.example")), "DUNNO");

    let mut c = s.connect();
    c.send(&build(MAX_REQUEST_LEN + 1));
    assert!(c.closed_without_reply());
    assert_eq!(s.connect().ask(&rcpt("c@other.example")), "DUNNO");
}

#[test]
fn an_internal_error_answers_dunno() {
    let s = Server::start("");
    let mut c = s.connect();
    // The knowledge source panics for this domain.
    assert_eq!(c.ask(&rcpt("a@panic.bank.example")), "DUNNO");
    // Same connection keeps working.
    s.knowledge.set("bank.example", no_tls());
    assert_eq!(c.ask(&rcpt("b@bank.example")), DEFER_BANK);
}

#[test]
fn recipients_without_a_usable_domain() {
    let s = Server::start("");
    let mut c = s.connect();
    assert_eq!(c.ask(&rcpt("postmaster")), "DUNNO");
    let r = s.last_record();
    assert_eq!(r["key"], "");
    assert!(r.get("domain").is_none());
    assert!(
        r["reason"].as_str().unwrap().contains("not a destination"),
        "{r}"
    );
    // Address literals are decided but never refused.
    assert_eq!(c.ask(&rcpt("x@[192.0.2.7]")), "DUNNO");
    assert_eq!(s.last_record()["domain"], "192.0.2.7");
    assert!(s.knowledge.asked().is_empty());
}

#[test]
fn crlf_requests_work() {
    let s = Server::start("");
    s.knowledge.set("bank.example", no_tls());
    let mut c = s.connect();
    let req = String::from_utf8(rcpt("b@bank.example"))
        .unwrap()
        .replace('\n', "\r\n");
    assert_eq!(c.ask(req.as_bytes()), DEFER_BANK);
}

#[test]
fn unix_socket() {
    let s = Server::start_at("unix:DIR/policy.sock", "");
    let mut c = s.connect();
    assert_eq!(c.ask(&rcpt("a@other.example")), "DUNNO");
}

/// Golden lines: the decision log's exact bytes (field order, presence,
/// escaping) for each record kind the policy server writes. `ts` is the
/// only field that varies between runs; it is set to a fixed value.
mod golden {
    use super::*;

    const TS: &str = "2026-01-02T03:04:05.123456Z";

    /// `line` with its leading `"ts"` value replaced by [`TS`].
    pub(super) fn fixed_ts(line: &str) -> String {
        let rest = line
            .strip_prefix("{\"ts\":\"")
            .unwrap_or_else(|| panic!("record does not start with ts: {line}"));
        let end = rest.find('"').unwrap();
        format!("{{\"ts\":\"{TS}\"{}", &rest[end + 1..])
    }

    fn lines(s: &Server) -> Vec<String> {
        s.parts.log.flush();
        std::fs::read_to_string(&s.log_path)
            .unwrap_or_default()
            .lines()
            .map(fixed_ts)
            .collect()
    }

    const RCPT_DUNNO: &str = r#"{"ts":"2026-01-02T03:04:05.123456Z","frontend":"policy","queue_id":"4XyZ1","key":"Other.Example","domain":"other.example","tls":"opportunistic","level":"may","reply":"DUNNO","source":"default","reason":"no rule matches; the policy file's default","instance":"1a2b.6543.0","sender":"alice@example.com","recipient":"Bob@Other.Example","client_address":"192.0.2.25","action":"DUNNO"}"#;
    const RCPT_DEFER: &str = r#"{"ts":"2026-01-02T03:04:05.123456Z","frontend":"policy","queue_id":"4XyZ1","key":"Bank.Example","domain":"bank.example","tls":"forced","level":"encrypt","reply":"DEFER_IF_PERMIT","source":"static","rule":1,"matched":"bank.example","reason":"PCI partner","instance":"1a2b.6543.0","sender":"alice@example.com","recipient":"b@Bank.Example","client_address":"192.0.2.25","action":"DEFER_IF_PERMIT 4.7.10 TLS policy for bank.example requires forced TLS (encrypt), but no mail server of the domain offers STARTTLS (mx1.bank.example[192.0.2.10]: no STARTTLS in EHLO reply); the mail could not be delivered"}"#;
    const RCPT_REJECT: &str = r#"{"ts":"2026-01-02T03:04:05.123456Z","frontend":"policy","queue_id":"4XyZ1","key":"strict.example","domain":"strict.example","tls":"forced","level":"encrypt","reply":"REJECT","source":"static","rule":4,"matched":"strict.example","reason":"policy file rule 4","instance":"1a2b.6543.0","sender":"alice@example.com","recipient":"c@strict.example","client_address":"192.0.2.25","action":"REJECT 5.7.10 TLS policy for strict.example requires forced TLS (encrypt), but no mail server of the domain offers STARTTLS (mx1.bank.example[192.0.2.10]: no STARTTLS in EHLO reply); the mail could not be delivered"}"#;
    const RCPT_FILTER: &str = r#"{"ts":"2026-01-02T03:04:05.123456Z","frontend":"policy","key":"other.example","domain":"other.example","tls":"forced","level":"encrypt","reply":"FILTER","source":"default","reason":"no rule matches; the policy file's default","raised":true,"instance":"m2","sender":"CEO@Example.com","recipient":"a@other.example","client_address":"192.0.2.25","action":"FILTER smtp-tls-forced:","sender_rule":1}"#;
    const RCPT_AFTER_FILTER: &str = r#"{"ts":"2026-01-02T03:04:05.123456Z","frontend":"policy","queue_id":"4M2","key":"payroll.example","domain":"payroll.example","tls":"forced","level":"secure match=mx1.payroll.example","reply":"DUNNO","source":"static","rule":2,"matched":"payroll.example","reason":"policy file rule 2","instance":"m2","sender":"CEO@Example.com","recipient":"\"q\"@payroll.example","client_address":"192.0.2.25","action":"DUNNO","sender_rule":1}"#;
    const RCPT_NULL_SENDER_NO_QUEUE_ID: &str = r#"{"ts":"2026-01-02T03:04:05.123456Z","frontend":"policy","key":"[192.0.2.7]","domain":"192.0.2.7","tls":"opportunistic","level":"may","reply":"DUNNO","source":"default","reason":"no rule matches; the policy file's default","instance":"m3","sender":"","recipient":"x@[192.0.2.7]","action":"DUNNO"}"#;
    const EOM_MESSAGE: &str = r#"{"ts":"2026-01-02T03:04:05.123456Z","frontend":"policy","queue_id":"4XyZ1","key":"","tls":"forced","reply":"DUNNO","source":"static","reason":"message with 3 recipients: 2 forced, 1 opportunistic","instance":"1a2b.6543.0","sender":"alice@example.com","client_address":"192.0.2.25","recipients":[{"recipient":"Bob@Other.Example","domain":"other.example","tls":"opportunistic","level":"may","source":"default","reason":"no rule matches; the policy file's default","action":"DUNNO"},{"recipient":"b@Bank.Example","domain":"bank.example","tls":"forced","level":"encrypt","source":"static","rule":1,"reason":"PCI partner","action":"DEFER_IF_PERMIT 4.7.10 TLS policy for bank.example requires forced TLS (encrypt), but no mail server of the domain offers STARTTLS (mx1.bank.example[192.0.2.10]: no STARTTLS in EHLO reply); the mail could not be delivered"},{"recipient":"c@strict.example","domain":"strict.example","tls":"forced","level":"encrypt","source":"static","rule":4,"reason":"policy file rule 4","action":"REJECT 5.7.10 TLS policy for strict.example requires forced TLS (encrypt), but no mail server of the domain offers STARTTLS (mx1.bank.example[192.0.2.10]: no STARTTLS in EHLO reply); the mail could not be delivered"}],"action":"DUNNO"}"#;
    const EOM_FILTERED_MESSAGE: &str = r#"{"ts":"2026-01-02T03:04:05.123456Z","frontend":"policy","queue_id":"4M2","key":"","tls":"forced","reply":"DUNNO","source":"default","reason":"message with 2 recipients: 2 forced, 0 opportunistic","instance":"m2","sender":"CEO@Example.com","client_address":"192.0.2.25","recipients":[{"recipient":"a@other.example","domain":"other.example","tls":"forced","level":"encrypt","source":"default","reason":"no rule matches; the policy file's default","action":"FILTER smtp-tls-forced:"},{"recipient":"\"q\"@payroll.example","domain":"payroll.example","tls":"forced","level":"secure match=mx1.payroll.example","source":"static","rule":2,"reason":"policy file rule 2","action":"DUNNO"}],"action":"DUNNO","sender_rule":1}"#;
    const EOM_NOTHING_SEEN: &str = r#"{"ts":"2026-01-02T03:04:05.123456Z","frontend":"policy","queue_id":"4M4","key":"","tls":"opportunistic","reply":"DUNNO","source":"default","reason":"no RCPT decision was seen for this message (recipient_count=3)","instance":"m4","sender":"alice@example.com","client_address":"192.0.2.25","recipients":[],"action":"DUNNO"}"#;

    #[test]
    fn policy_records_byte_for_byte() {
        let s = Server::start("forced_transport = \"smtp-tls-forced\"\nrefuse = \"defer\"\n");
        s.knowledge.set("bank.example", no_tls());
        s.knowledge.set("strict.example", no_tls());
        let mut c = s.connect();
        let ask = |c: &mut Client, state: &str, attrs: &[(&str, &str)]| {
            c.ask(&request(state, attrs));
        };
        // Message 1: a DUNNO, a deferral and a rule's REJECT, then its
        // END-OF-MESSAGE record.
        ask(
            &mut c,
            "RCPT",
            &[("recipient", "Bob@Other.Example"), ("queue_id", "4XyZ1")],
        );
        ask(
            &mut c,
            "RCPT",
            &[("recipient", "b@Bank.Example"), ("queue_id", "4XyZ1")],
        );
        ask(
            &mut c,
            "RCPT",
            &[("recipient", "c@strict.example"), ("queue_id", "4XyZ1")],
        );
        ask(
            &mut c,
            "END-OF-MESSAGE",
            &[("queue_id", "4XyZ1"), ("recipient_count", "1")],
        );
        // Message 2: a sender rule FILTERs, the null sender without a
        // queue id yet, and a quote in an address.
        let m2 = [("sender", "CEO@Example.com"), ("instance", "m2")];
        ask(
            &mut c,
            "RCPT",
            &[m2[0], m2[1], ("recipient", "a@other.example")],
        );
        ask(
            &mut c,
            "RCPT",
            &[
                m2[0],
                m2[1],
                ("recipient", "\"q\"@payroll.example"),
                ("queue_id", "4M2"),
            ],
        );
        ask(
            &mut c,
            "END-OF-MESSAGE",
            &[m2[0], m2[1], ("queue_id", "4M2"), ("recipient_count", "2")],
        );
        ask(
            &mut c,
            "RCPT",
            &[
                ("sender", ""),
                ("instance", "m3"),
                ("recipient", "x@[192.0.2.7]"),
                ("client_address", ""),
            ],
        );
        // Message 4: END-OF-MESSAGE without any RCPT state.
        ask(
            &mut c,
            "END-OF-MESSAGE",
            &[
                ("instance", "m4"),
                ("queue_id", "4M4"),
                ("recipient_count", "3"),
            ],
        );
        let got = lines(&s);
        let want = [
            RCPT_DUNNO,
            RCPT_DEFER,
            RCPT_REJECT,
            EOM_MESSAGE,
            RCPT_FILTER,
            RCPT_AFTER_FILTER,
            EOM_FILTERED_MESSAGE,
            RCPT_NULL_SENDER_NO_QUEUE_ID,
            EOM_NOTHING_SEEN,
        ];
        assert_eq!(got.len(), want.len(), "{got:#?}");
        for (i, (g, w)) in got.iter().zip(want).enumerate() {
            assert_eq!(g, w, "record {i}");
        }
    }
}

#[test]
fn malformed_recipient_domains_keep_their_rule_or_are_deferred() {
    // Refusals off: the hold is a temporary failure, not an early refusal.
    let s = Server::start("refuse = \"off\"\n");
    let mut c = s.connect();
    for recipient in [
        "bob@bank.example:65536",
        "bob@[bank.example",
        "bob@bank.exa\rmple",
        "bob@bank.example>",
        &format!("bob@{}.bank.example", "a".repeat(64)),
    ] {
        assert_eq!(c.ask(&rcpt(recipient)), "DUNNO", "{recipient:?}");
        let r = s.last_record();
        assert_eq!(r["tls"], "forced", "{recipient:?}: {r}");
        assert_eq!(r["level"], "encrypt");
        assert_eq!(r["source"], "static");
        assert_eq!(r["rule"], 1);
        assert!(r.get("domain").is_none(), "{r}");
    }
    // bank.example (encrypt) or payroll.example (secure): deferred.
    let a = c.ask(&rcpt("bob@bank.example\rpayroll.example"));
    assert_eq!(
        a,
        "DEFER_IF_PERMIT 4.7.10 recipient domain \"bank.example?payroll.example\" is not a valid destination and could name domains with different TLS rules; try again later"
    );
    let r = s.last_record();
    assert_eq!(r["reply"], "DEFER_IF_PERMIT");
    assert_eq!(r["temporary"], true);
    // No rule could be meant: the default, nothing held.
    assert_eq!(c.ask(&rcpt("bob@other.example:65536")), "DUNNO");
    assert_eq!(s.last_record()["source"], "default");

    // With refusals on, what is known of bank.example refuses a malformed
    // address that names it exactly as it refuses bob@bank.example.
    let s = Server::start("");
    s.knowledge.set("bank.example", no_tls());
    let mut c = s.connect();
    assert_eq!(c.ask(&rcpt("bob@bank.example:65536")), DEFER_BANK);
    assert_eq!(c.ask(&rcpt("bob@[bank.example")), DEFER_BANK);
    // Through `.bank.example` the subdomain meant is not known: no refusal.
    let sub = format!("bob@{}.bank.example", "a".repeat(64));
    assert_eq!(c.ask(&rcpt(&sub)), "DUNNO");
}
