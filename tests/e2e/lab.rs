//! The lab of the end-to-end suite (tests/e2e.rs): the zones, the SMTP
//! and HTTPS servers, tls-policyd with the outcome follower on Postfix's
//! log, and a private Postfix wired as documented; what a scenario sends
//! and reads through it.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use crate::common::batch;
use crate::common::dnssec::{
    KNOT, Knot, Server, Zone, hex, restart_unbound, start_knot, unbound_conf,
};
use crate::common::https::{HTTPS_IP, Response, TestHttps};
use crate::common::netns::Netns;
use crate::common::outcomes;
use crate::common::postfix::{Mail, Postfix, PostfixOptions};
use crate::common::smtp::{Received, SinkTls, SmtpSink, TestCa};
use crate::common::{self, Daemon, Options, submission};

pub const TOOLS: &[&str] = &[
    "postfix",
    "postqueue",
    "swaks",
    "knotd",
    "keymgr",
    "unbound",
    "saslpasswd2",
    "logrotate",
];

/// How long a delivery may take to show up.
pub const DELIVERY: Duration = Duration::from_secs(30);

pub const TLS_MX: (&str, &str) = ("mx-tls.sink.test", "127.0.0.21");
pub const SELF_MX: (&str, &str) = ("mx-self.sink.test", "127.0.0.22");
pub const PLAIN_MX: (&str, &str) = ("mx-plain.sink.test", "127.0.0.23");
pub const DANE_GOOD_MX: (&str, &str) = ("mx-good.dane.test", "127.0.0.31");
pub const DANE_BAD_MX: (&str, &str) = ("mx-bad.dane.test", "127.0.0.32");

/// Recipient domains in the unsigned zone and the mail server each one's
/// MX points at.
pub const DOMAINS: &[(&str, (&str, &str))] = &[
    ("opp-tls.test", TLS_MX),
    ("opp-plain.test", PLAIN_MX),
    ("opp-self.test", SELF_MX),
    ("forced-tls.test", TLS_MX),
    ("forced-plain.test", PLAIN_MX),
    ("secure-tls.test", TLS_MX),
    ("secure-self.test", SELF_MX),
    ("sts-enforce.test", TLS_MX),
    ("sts-forged.test", SELF_MX),
    ("forced-bypass.test", PLAIN_MX),
    ("forced-unreach.test", TLS_MX),
    ("rua.test", TLS_MX),
    // Its MX is the plaintext server; a scenario routes it through the
    // TLS server with transport_maps (not an MX: no TLS-RPT session).
    ("relayed.test", PLAIN_MX),
    // Publishes an MTA-STS record, but its policy host has no site.
    ("sts-broken.test", TLS_MX),
];

/// Where the lab's TLS reports go: `mailto:` to a mailbox behind the
/// CA-trusted sink, `https:` to the lab's HTTPS server.
pub const RUA_MAILTO: &str = "tlsrpt@rua.test";
pub const RUA_HOST: &str = "reports.test";
pub const RUA_HTTPS: &str = "https://reports.test/v1/tlsrpt";
/// A second collector, for a domain whose reports fail differently.
pub const RUA_HOST2: &str = "reports2.test";
pub const RUA_HTTPS2: &str = "https://reports2.test/v1/tlsrpt";

/// `_smtp._tls` records in the unsigned zone: domain, rua.
pub const TLSRPT: &[(&str, &str)] = &[
    ("sts-enforce.test", "mailto:tlsrpt@rua.test"),
    ("forced-plain.test", RUA_HTTPS2),
    ("opp-tls.test", RUA_HTTPS),
    ("relayed.test", RUA_HTTPS),
    ("sts-broken.test", RUA_HTTPS),
    // Reports about reports would go here: none may be counted.
    ("rua.test", "mailto:tlsrpt@rua.test"),
];

/// The `_smtp._tls` record of `bad.dane.test`, in the signed zone.
pub const TLSRPT_DANE: &str = "mailto:tlsrpt@rua.test";

/// MTA-STS policies: domain, policy id, policy text.
pub const STS: &[(&str, &str, &str)] = &[
    (
        "sts-enforce.test",
        "e1",
        "version: STSv1\nmode: enforce\nmx: mx-tls.sink.test\nmax_age: 86400\n",
    ),
    (
        "sts-forged.test",
        "f1",
        "version: STSv1\nmode: enforce\nmx: *.sink.test\nmax_age: 86400\n",
    ),
];

pub const POLICY: &str = r#"
default = "opportunistic"

[[rule]]
domains = ["forced-tls.test", "forced-plain.test", "forced-bypass.test", "forced-unreach.test"]
tls = "forced"
reason = "partner contract"

[[rule]]
domains = ["secure-tls.test", "secure-self.test"]
tls = "secure"
match = ["mx-tls.sink.test", "mx-self.sink.test"]
reason = "authenticated partner"
"#;

/// Everything a scenario needs, stopped in this order when dropped: mail
/// first, then tls-policyd, then the servers, the files and last the
/// namespace.
pub struct Lab {
    pub pf: Postfix,
    pub daemon: Daemon,
    pub tls: SmtpSink,
    pub selfsigned: SmtpSink,
    pub plain: SmtpSink,
    pub dane_good: SmtpSink,
    pub dane_bad: SmtpSink,
    pub https: TestHttps,
    pub unbound: Option<Server>,
    pub unbound_conf: PathBuf,
    pub _knot: Knot,
    pub dir: tempfile::TempDir,
    pub ns: Netns,
    /// Domains a transport of the scenario's routes around the socketmap:
    /// the checks expect no map decision for them.
    pub bypassed: Vec<&'static str>,
}

/// The daemon's configuration: the front doors where the documented lines
/// expect them, and the outcome follower on Postfix's log.
pub fn config(
    socketmap: &str,
    policy_server: &str,
    milter: &str,
    dir: &std::path::Path,
    maillog: &std::path::Path,
) -> String {
    let text = format!(
        r#"
[socketmap]
listen = "{socketmap}"

[policy_server]
listen = "{policy_server}"
refuse = "defer"

# As deployments/all-front-doors/tls-policyd.toml: the milter adds the
# trace header.
[milter]
listen = "{milter}"
trace_header = "X-TLS-Policy"

[metrics]
listen = "inet:127.0.0.1:0"

[prober]
helo_name = "probe.test"
connect_timeout = "2s"
smtp_timeout = "2s"
tls_timeout = "2s"

[dns]
nameservers = ["127.0.0.1:53"]
timeout = "1s"
attempts = 1
dnssec = "trust-ad"

[dane]
cache_file = "{cache}"

[mta_sts]
cache_file = "{cache}"
extra_ca_file = "{ca}"

[policy]
file = "policy.toml"

[log]
decisions = "decisions.jsonl"

[tlsrpt]
organization_name = "Lab Mail"
contact_info = "postmaster@src.example"
submitter = "src.example"
from = "tlsrpt-noreply@src.example"
extra_ca_file = "{ca}"
cache_file = "{cache}"
"#,
        cache = dir.join("cache.sqlite").display(),
        ca = dir.join("ca.pem").display(),
    );
    text + &outcomes::section(maillog, &dir.join("outcomes.state"))
}

/// The unsigned zone `test.`: sinks, recipient domains, MTA-STS records.
pub fn test_zone() -> Zone {
    let mut records = String::new();
    for (host, ip) in [TLS_MX, SELF_MX, PLAIN_MX] {
        records.push_str(&format!("{host}. A {ip}\n"));
    }
    for (domain, (host, _)) in DOMAINS {
        records.push_str(&format!("{domain}. MX 10 {host}.\n"));
    }
    for (domain, id, _) in STS {
        records.push_str(&format!("_mta-sts.{domain}. TXT \"v=STSv1; id={id};\"\n"));
        records.push_str(&format!("mta-sts.{domain}. A {HTTPS_IP}\n"));
    }
    for (domain, rua) in TLSRPT {
        records.push_str(&format!(
            "_smtp._tls.{domain}. TXT \"v=TLSRPTv1; rua={rua}\"\n"
        ));
    }
    records.push_str("_mta-sts.sts-broken.test. TXT \"v=STSv1; id=b1;\"\n");
    records.push_str(&format!("mta-sts.sts-broken.test. A {HTTPS_IP}\n"));
    records.push_str(&format!("{RUA_HOST}. A {HTTPS_IP}\n"));
    records.push_str(&format!("{RUA_HOST2}. A {HTTPS_IP}\n"));
    Zone::unsigned("test", &records)
}

/// The signed zone `dane.test.`: `good` publishes a TLSA record that
/// matches its server's key, `bad` one that does not.
pub fn dane_zone(good: &[u8], bad: &[u8]) -> Zone {
    let wrong: Vec<u8> = bad.iter().map(|b| b ^ 0xff).collect();
    let mut records = String::new();
    for (name, (host, ip), digest) in [
        ("good", DANE_GOOD_MX, good.to_vec()),
        ("bad", DANE_BAD_MX, wrong),
    ] {
        records.push_str(&format!(
            "{name} MX 10 {host}.\n{host}. A {ip}\n_25._tcp.{host}. TLSA 3 1 1 {}\n",
            hex(&digest)
        ));
    }
    records.push_str(&format!(
        "_smtp._tls.bad TXT \"v=TLSRPTv1; rua={TLSRPT_DANE}\"\n"
    ));
    Zone::signed("dane.test", &records)
}

impl Lab {
    pub fn start(prefix: &str) -> Option<Lab> {
        Lab::start_with(prefix, |o| o)
    }

    /// [`Lab::start`] with Postfix's options changed by `postfix`.
    pub fn start_with(
        prefix: &str,
        postfix: impl FnOnce(PostfixOptions) -> PostfixOptions,
    ) -> Option<Lab> {
        let ns = Netns::for_test(prefix, TOOLS)?;
        let dir = tempfile::tempdir().unwrap();
        let ca = Arc::new(TestCa::new());
        ca.write_pem(&dir.path().join("ca.pem"));
        let (good_tls, good_digest) = SinkTls::self_signed_with_spki_sha256(&[DANE_GOOD_MX.0]);
        let (bad_tls, bad_digest) = SinkTls::self_signed_with_spki_sha256(&[DANE_BAD_MX.0]);
        let knot = start_knot(
            &ns,
            dir.path(),
            KNOT,
            &[test_zone(), dane_zone(&good_digest, &bad_digest)],
        );
        let conf = unbound_conf(dir.path(), &knot, &["test", "dane.test"]);
        let unbound = restart_unbound(&ns, dir.path(), &conf);
        let (https, tls, selfsigned, plain, dane_good, dane_bad) = ns.run_in({
            let ca = ca.clone();
            let ca_tls = SinkTls::issued_by(&ca, &[TLS_MX.0]);
            move || {
                let https = TestHttps::start(HTTPS_IP, 443, ca);
                for (domain, _, policy) in STS {
                    https.site(&format!("mta-sts.{domain}"), Response::policy(policy));
                }
                https.collector(RUA_HOST);
                https.collector(RUA_HOST2);
                (
                    https,
                    SmtpSink::start(TLS_MX.1, 25, ca_tls),
                    SmtpSink::start(SELF_MX.1, 25, SinkTls::self_signed(&[SELF_MX.0])),
                    SmtpSink::start(PLAIN_MX.1, 25, SinkTls::None),
                    SmtpSink::start(DANE_GOOD_MX.1, 25, good_tls),
                    SmtpSink::start(DANE_BAD_MX.1, 25, bad_tls),
                )
            }
        });
        // Postfix first: the daemon follows its log. Nothing is sent
        // before both run.
        let pf = Postfix::start(
            &ns,
            postfix(
                submission::documented(PostfixOptions::default())
                    .file("ca.pem", ca.pem())
                    .set("smtp_tls_CAfile", "$config_directory/ca.pem")
                    .set("smtp_tls_loglevel", "1")
                    .set("smtp_host_lookup", "dns")
                    .set("smtp_dns_support_level", "dnssec"),
            ),
        );
        submission::add_sasl_user(&pf);
        // Where the documented main.cf lines expect the front doors.
        let doors = submission::front_doors();
        let daemon = Daemon::start_frontend(
            &config(
                &doors.socketmap,
                &doors.policy,
                &doors.milter,
                dir.path(),
                &pf.log_path(),
            ),
            POLICY,
            Options::in_netns(&ns),
            "socketmap",
        );
        Some(Lab {
            pf,
            daemon,
            tls,
            selfsigned,
            plain,
            dane_good,
            dane_bad,
            https,
            unbound: Some(unbound),
            unbound_conf: conf,
            _knot: knot,
            dir,
            ns,
            bypassed: Vec::new(),
        })
    }

    /// Send one message; its queue id.
    pub fn send(&self, from: &str, to: &[&str]) -> String {
        let s = self.pf.send(&Mail::to(to).from(from));
        assert!(s.status.success(), "{}", s.transcript);
        s.queue_id()
            .unwrap_or_else(|| panic!("not queued:\n{}", s.transcript))
    }

    /// Postfix's delivery line (`status=…`) for a recipient address in a
    /// message, waiting for it.
    pub fn status(&self, queue_id: &str, rcpt: &str, from_mark: usize) -> String {
        let to = format!("to=<{rcpt}>");
        let tag = format!(": {queue_id}: ");
        self.pf.wait_for_log_since(
            from_mark,
            |l| l.contains(&tag) && l.contains(&to) && l.contains("status="),
            DELIVERY,
        )
    }

    /// Postfix's TLS line for a delivery to `host`, after `mark`.
    pub fn tls_line(&self, host: &str, mark: usize) -> String {
        self.pf.wait_for_log_since(
            mark,
            |l| l.contains("TLS connection established to") && l.contains(host),
            DELIVERY,
        )
    }

    /// Socketmap decision records for a domain.
    pub fn map_records(&self, domain: &str) -> Vec<Value> {
        self.daemon
            .decisions()
            .into_iter()
            .filter(|r| r["frontend"] == "socketmap" && r["domain"] == domain)
            .collect()
    }

    /// The value of one Prometheus sample (`name{labels}`) the metrics
    /// listener serves now; 0 when absent.
    pub fn metric(&self, sample: &str) -> u64 {
        use std::io::{Read, Write};
        let addr = self.daemon.listening("metrics");
        let port: u16 = addr.rsplit(':').next().unwrap().parse().unwrap();
        let mut s = self.ns.tcp_connect(("127.0.0.1", port)).unwrap();
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut text = String::new();
        s.read_to_string(&mut text).unwrap();
        text.lines()
            .find_map(|l| l.strip_prefix(sample)?.strip_prefix(' '))
            .map(|v| v.trim().parse::<f64>().unwrap() as u64)
            .unwrap_or(0)
    }

    /// The milter's record for a message, waiting for it.
    pub fn milter_record(&self, queue_id: &str) -> Value {
        let deadline = std::time::Instant::now() + DELIVERY;
        loop {
            if let Some(r) = self
                .daemon
                .decisions()
                .into_iter()
                .find(|r| r["frontend"] == "milter" && r["queue_id"] == queue_id)
            {
                return r;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no milter record for {queue_id}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn sinks(&self) -> [&SmtpSink; 5] {
        [
            &self.tls,
            &self.selfsigned,
            &self.plain,
            &self.dane_good,
            &self.dane_bad,
        ]
    }

    /// Send one message to each of `rcpts` from a thread, `gap` apart;
    /// join it for their queue ids.
    pub fn send_batch(
        &self,
        rcpts: Vec<String>,
        gap: Duration,
    ) -> std::thread::JoinHandle<Vec<String>> {
        let stream = self
            .ns
            .tcp_connect(("127.0.0.1", self.pf.port()))
            .expect("connect to Postfix");
        std::thread::spawn(move || batch::send_each(stream, &rcpts, gap))
    }

    /// Messages all servers received so far.
    pub fn received_count(&self) -> usize {
        self.sinks().iter().map(|s| s.messages().len()).sum()
    }

    /// Wait until the servers received `n` messages in all.
    pub fn wait_received(&self, n: usize) {
        let deadline = std::time::Instant::now() + DELIVERY;
        while self.received_count() < n {
            assert!(
                std::time::Instant::now() < deadline,
                "{} of {n} messages received",
                self.received_count()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `tls-policyd doctor --json` on the daemon's configuration and
    /// Postfix's, in the namespace: its exit code and report.
    pub fn doctor(&self) -> (i32, Value) {
        let mut c = tls_policyd(&self.ns);
        c.arg("doctor")
            .arg("--config")
            .arg(self.daemon.config_path())
            .arg("--postfix-config")
            .arg(self.pf.config_dir())
            .arg("--json");
        let out = common::run_with_timeout(&mut c);
        let report = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "doctor --json: {e}: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )
        });
        (out.status.code().unwrap_or(-1), report)
    }

    /// `tls-policyd status` against the metrics listener: exit code and
    /// report.
    pub fn status_report(&self) -> (i32, String) {
        let mut c = tls_policyd(&self.ns);
        c.args(["status", "--address", &self.daemon.listening("metrics")]);
        let out = common::run_with_timeout(&mut c);
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    }

    /// Every message the servers received for `rcpt`.
    pub fn received_by_sinks(&self, rcpt: &str) -> Vec<Received> {
        self.sinks()
            .iter()
            .flat_map(|s| s.messages())
            .filter(|m| m.rcpt_to.iter().any(|r| r == rcpt))
            .collect()
    }

    /// The one outcome record for a recipient of a message with `status`,
    /// waiting for it.
    pub fn outcome(&self, queue_id: &str, rcpt: &str, status: &str) -> Value {
        outcomes::record(&self.daemon, queue_id, rcpt, status, DELIVERY)
    }

    /// [`Lab::outcome`], checked to have `verdict` and, when sent, `trust`
    /// (held: the TLS failure `trust`).
    pub fn expect(
        &self,
        queue_id: &str,
        rcpt: &str,
        status: &str,
        verdict: &str,
        tls: &str,
    ) -> Value {
        let r = self.outcome(queue_id, rcpt, status);
        assert_eq!(r["verdict"], verdict, "{r}");
        let field = if status == "sent" {
            "tls_trust"
        } else {
            "tls_failure"
        };
        assert_eq!(r[field], tls, "{r}");
        r
    }
}

/// The tls-policyd binary in the namespace, with none of the test's
/// `TLS_POLICYD_*` or `RUST_LOG` settings.
pub fn tls_policyd(ns: &Netns) -> std::process::Command {
    let mut c = ns.cmd(env!("CARGO_BIN_EXE_tls-policyd"));
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("TLS_POLICYD_") || k == "RUST_LOG" {
            c.env_remove(&k);
        }
    }
    c
}

/// `n` recipients, `tag1@…` on, over the domains a batch goes to:
/// verified-CA, plaintext and self-signed servers, and a forced domain.
pub fn batch_rcpts(tag: &str, n: usize) -> Vec<String> {
    const TO: [&str; 4] = [
        "opp-tls.test",
        "opp-plain.test",
        "forced-tls.test",
        "opp-self.test",
    ];
    (1..=n)
        .map(|i| format!("{tag}{i}@{}", TO[i % TO.len()]))
        .collect()
}

/// The one message a sink got for `rcpt`.
pub fn received(sink: &SmtpSink, rcpt: &str) -> Received {
    let deadline = std::time::Instant::now() + DELIVERY;
    loop {
        if let Some(m) = sink
            .messages()
            .into_iter()
            .find(|m| m.rcpt_to.iter().any(|r| r == rcpt))
        {
            return m;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{rcpt} never arrived at {}",
            sink.addr()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub fn never_received(sink: &SmtpSink, rcpt: &str) {
    assert!(
        !sink
            .messages()
            .iter()
            .any(|m| m.rcpt_to.iter().any(|r| r == rcpt)),
        "{rcpt} reached {}",
        sink.addr()
    );
}

pub fn summary(name: &str) {
    println!("e2e: PASS {name}");
}
