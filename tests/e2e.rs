//! End to end: real Postfix delivers real mail over real SMTP and TLS to
//! SMTP servers found through DNS, with tls-policyd deciding through
//! `smtp_tls_policy_maps` and `check_policy_service`. Every piece runs
//! inside a network namespace that the test creates with only `lo`:
//!
//! - a DNS server on 127.0.0.1:53 (the namespace's resolv.conf points
//!   there; Postfix and tls-policyd both use it) with MX records, so
//!   Postfix asks the policy map with the recipient domain;
//! - SMTP servers on port 25: 127.0.0.21 with STARTTLS and a certificate
//!   from a test CA, 127.0.0.22 with a self-signed certificate, 127.0.0.23
//!   without STARTTLS;
//! - tls-policyd (the binary) and a private Postfix instance that trusts
//!   the test CA.
//!
//! Each test is one scenario and asserts on what the servers received,
//! what Postfix logged and what the decision log says. Run alone with
//! `cargo test --test e2e` (as root). Needs root, `ip`, Postfix and swaks
//! (`.ci/run` installs them); without them these tests fail, unless
//! `SKIP_POSTFIX_TESTS=1` is set.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::dns::TestDns;
use common::netns::Netns;
use common::postfix::{Mail, Postfix, PostfixOptions, SENDER};
use common::smtp::{Received, SinkTls, SmtpSink, TestCa};
use common::{Daemon, Options};
use serde_json::Value;

const TOOLS: &[&str] = &["postfix", "postqueue", "swaks"];

/// How long a delivery may take to show up.
const DELIVERY: Duration = Duration::from_secs(20);

const TLS_MX: (&str, &str) = ("mx-tls.sink.test", "127.0.0.21");
const SELF_MX: (&str, &str) = ("mx-self.sink.test", "127.0.0.22");
const PLAIN_MX: (&str, &str) = ("mx-plain.sink.test", "127.0.0.23");

/// Recipient domains and the mail server each one's MX points at.
const DOMAINS: &[(&str, (&str, &str))] = &[
    ("opp-tls.test", TLS_MX),
    ("opp-plain.test", PLAIN_MX),
    ("opp-self.test", SELF_MX),
    ("forced-tls.test", TLS_MX),
    ("forced-plain.test", PLAIN_MX),
    ("secure-tls.test", TLS_MX),
    ("secure-self.test", SELF_MX),
];

const POLICY: &str = r#"
default = "opportunistic"

[[rule]]
domains = ["forced-tls.test", "forced-plain.test"]
tls = "forced"
reason = "partner contract"

[[rule]]
domains = ["secure-tls.test", "secure-self.test"]
tls = "secure"
match = ["mx-tls.sink.test", "mx-self.sink.test"]
reason = "authenticated partner"
"#;

struct Lab {
    ns: Netns,
    dns: Option<TestDns>,
    tls: SmtpSink,
    selfsigned: SmtpSink,
    plain: SmtpSink,
    daemon: Daemon,
    pf: Postfix,
}

fn config(socketmap: &str, policy_server: &str) -> String {
    format!(
        r#"
[socketmap]
listen = "{socketmap}"

[policy_server]
listen = "{policy_server}"
refuse = "defer"

[prober]
helo_name = "probe.test"
connect_timeout = "2s"
smtp_timeout = "2s"
tls_timeout = "2s"

[dns]
nameservers = ["127.0.0.1:53"]
timeout = "1s"
attempts = 1

[policy]
file = "policy.toml"

[log]
decisions = "decisions.jsonl"
"#
    )
}

impl Lab {
    fn start(prefix: &str) -> Option<Lab> {
        let ns = Netns::for_test(prefix, TOOLS)?;
        let ca = TestCa::new();
        let (dns, tls, selfsigned, plain) = ns.run_in({
            let ca_tls = SinkTls::issued_by(&ca, &[TLS_MX.0]);
            move || {
                let dns = start_dns();
                let tls = SmtpSink::start(TLS_MX.1, 25, ca_tls);
                let selfsigned = SmtpSink::start(SELF_MX.1, 25, SinkTls::self_signed(&[SELF_MX.0]));
                let plain = SmtpSink::start(PLAIN_MX.1, 25, SinkTls::None);
                (dns, tls, selfsigned, plain)
            }
        });
        let daemon = Daemon::start_frontend(
            &config("inet:127.0.0.1:0", "inet:127.0.0.1:0"),
            POLICY,
            Options {
                netns: Some(ns.name().to_string()),
                env: Vec::new(),
            },
            "socketmap",
        );
        let policy = daemon.listening("policy");
        let check = format!("check_policy_service {{ {policy}, default_action=DUNNO }}");
        let pf = Postfix::start(
            &ns,
            PostfixOptions::default()
                .file("ca.pem", ca.pem())
                .set(
                    "smtp_tls_policy_maps",
                    format!("socketmap:{}:tls_policy", daemon.address()),
                )
                .set("smtp_tls_CAfile", "$config_directory/ca.pem")
                .set("smtp_tls_loglevel", "1")
                .set("smtp_host_lookup", "dns")
                .set(
                    "smtpd_recipient_restrictions",
                    format!("{check}, permit_mynetworks, reject"),
                )
                .set("smtpd_end_of_data_restrictions", check),
        );
        Some(Lab {
            ns,
            dns: Some(dns),
            tls,
            selfsigned,
            plain,
            daemon,
            pf,
        })
    }

    /// Send one message; its queue id.
    fn send(&self, from: &str, to: &[&str]) -> String {
        let s = self.pf.send(&Mail::to(to).from(from));
        assert!(s.status.success(), "{}", s.transcript);
        s.queue_id()
            .unwrap_or_else(|| panic!("not queued:\n{}", s.transcript))
    }

    /// Postfix's delivery line (`status=…`) for a recipient address in a
    /// message, waiting for it.
    fn status(&self, queue_id: &str, rcpt: &str, from_mark: usize) -> String {
        let to = format!("to=<{rcpt}>");
        let tag = format!(": {queue_id}: ");
        self.pf.wait_for_log_since(
            from_mark,
            |l| l.contains(&tag) && l.contains(&to) && l.contains("status="),
            DELIVERY,
        )
    }

    /// Postfix's TLS line for a delivery to `host`, after `mark`.
    fn tls_line(&self, host: &str, mark: usize) -> String {
        self.pf.wait_for_log_since(
            mark,
            |l| l.contains("TLS connection established to") && l.contains(host),
            DELIVERY,
        )
    }

    /// Socketmap decision records for a domain.
    fn map_records(&self, domain: &str) -> Vec<Value> {
        self.daemon
            .decisions()
            .into_iter()
            .filter(|r| r["frontend"] == "socketmap" && r["domain"] == domain)
            .collect()
    }
}

fn start_dns() -> TestDns {
    let dns = TestDns::start_at(SocketAddr::from(([127, 0, 0, 1], 53)));
    for (host, ip) in [TLS_MX, SELF_MX, PLAIN_MX] {
        dns.a(host, ip);
    }
    for (domain, (host, _)) in DOMAINS {
        dns.mx(domain, 10, host);
    }
    dns
}

/// The one message a sink got for `rcpt`.
fn received(sink: &SmtpSink, rcpt: &str) -> Received {
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

fn never_received(sink: &SmtpSink, rcpt: &str) {
    assert!(
        !sink
            .messages()
            .iter()
            .any(|m| m.rcpt_to.iter().any(|r| r == rcpt)),
        "{rcpt} reached {}",
        sink.addr()
    );
}

fn summary(name: &str) {
    println!("e2e: PASS {name}");
}

#[test]
fn opportunistic_domains_get_tls_when_offered_and_plaintext_otherwise() {
    let Some(lab) = Lab::start("e2e-opp") else {
        return;
    };
    let mark = lab.pf.log_mark();
    let id = lab.send(SENDER, &["a@opp-tls.test"]);
    let line = lab.status(&id, "a@opp-tls.test", mark);
    assert!(line.contains("status=sent"), "{line}");
    assert!(lab.tls_line(TLS_MX.0, mark).contains("Trusted TLS"));
    let m = received(&lab.tls, "a@opp-tls.test");
    assert!(
        m.tls,
        "delivered in plaintext although STARTTLS was offered"
    );

    // No STARTTLS: plaintext, not lost.
    let id = lab.send(SENDER, &["b@opp-plain.test"]);
    let line = lab.status(&id, "b@opp-plain.test", mark);
    assert!(line.contains("status=sent"), "{line}");
    let m = received(&lab.plain, "b@opp-plain.test");
    assert!(!m.tls);

    // Self-signed: encrypted, not authenticated, delivered.
    let id = lab.send(SENDER, &["c@opp-self.test"]);
    assert!(
        lab.status(&id, "c@opp-self.test", mark)
            .contains("status=sent")
    );
    assert!(lab.tls_line(SELF_MX.0, mark).contains("Untrusted TLS"));
    assert!(received(&lab.selfsigned, "c@opp-self.test").tls);

    for d in ["opp-tls.test", "opp-plain.test", "opp-self.test"] {
        let recs = lab.map_records(d);
        assert!(!recs.is_empty(), "no socketmap record for {d}");
        for r in &recs {
            assert_eq!(r["tls"], "opportunistic", "{r}");
            assert_eq!(r["level"], "may", "{r}");
            assert_eq!(r["key"], d, "{r}");
        }
    }
    summary("opportunistic: TLS when offered, plaintext fallback, nothing lost");
}

#[test]
fn forced_domains_never_go_out_in_plaintext() {
    let Some(lab) = Lab::start("e2e-frc") else {
        return;
    };
    let mark = lab.pf.log_mark();
    let id = lab.send(SENDER, &["a@forced-tls.test"]);
    assert!(
        lab.status(&id, "a@forced-tls.test", mark)
            .contains("status=sent")
    );
    assert!(received(&lab.tls, "a@forced-tls.test").tls);

    // No STARTTLS: deferred, never sent. Mixed case in the address does
    // not get around it (Postfix asks with the case as typed).
    let id = lab.send(SENDER, &["b@forced-plain.test", "C@Forced-Plain.TEST"]);
    for rcpt in ["b@forced-plain.test", "C@Forced-Plain.TEST"] {
        let line = lab.status(&id, rcpt, mark);
        assert!(line.contains("status=deferred"), "{line}");
        assert!(
            line.contains("TLS is required, but was not offered"),
            "{line}"
        );
    }
    std::thread::sleep(Duration::from_millis(300));
    never_received(&lab.plain, "b@forced-plain.test");
    never_received(&lab.plain, "C@Forced-Plain.TEST");
    assert!(lab.plain.messages().is_empty());
    let keys: Vec<String> = lab
        .map_records("forced-plain.test")
        .iter()
        .map(|r| {
            assert_eq!(r["tls"], "forced", "{r}");
            assert_eq!(r["level"], "encrypt", "{r}");
            r["key"].as_str().unwrap().to_string()
        })
        .collect();
    assert!(keys.iter().any(|k| k == "Forced-Plain.TEST"), "{keys:?}");

    // Early refusal: once the prober has seen that forced-plain.test
    // offers no STARTTLS, the sender hears 450 4.7.10 at RCPT.
    let deadline = std::time::Instant::now() + DELIVERY;
    let refusal = loop {
        let s = lab
            .pf
            .send(&Mail::to(&["d@forced-plain.test"]).quit_after("RCPT"));
        let r = s.rcpt_reply("d@forced-plain.test");
        if r.starts_with("450") {
            break r;
        }
        assert!(std::time::Instant::now() < deadline, "never refused: {r}");
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(refusal.starts_with("450 4.7.10 "), "{refusal}");
    assert!(refusal.contains("forced-plain.test"), "{refusal}");

    // secure: verified against the test CA and the match names, or
    // deferred.
    let mark = lab.pf.log_mark();
    let id = lab.send(SENDER, &["e@secure-tls.test", "f@secure-self.test"]);
    assert!(
        lab.status(&id, "e@secure-tls.test", mark)
            .contains("status=sent")
    );
    assert!(lab.tls_line(TLS_MX.0, mark).contains("Verified TLS"));
    let line = lab.status(&id, "f@secure-self.test", mark);
    assert!(line.contains("status=deferred"), "{line}");
    never_received(&lab.selfsigned, "f@secure-self.test");
    summary("forced: TLS or nothing, any letter case, 450 4.7.10 at RCPT once known");
}

#[test]
fn one_message_to_a_forced_and_an_opportunistic_domain() {
    let Some(lab) = Lab::start("e2e-mix") else {
        return;
    };
    let mark = lab.pf.log_mark();
    let id = lab.send(SENDER, &["a@forced-plain.test", "b@opp-plain.test"]);
    assert!(
        lab.status(&id, "b@opp-plain.test", mark)
            .contains("status=sent")
    );
    assert!(!received(&lab.plain, "b@opp-plain.test").tls);
    assert!(
        lab.status(&id, "a@forced-plain.test", mark)
            .contains("status=deferred")
    );
    never_received(&lab.plain, "a@forced-plain.test");

    // The policy server's message record ties Postfix's queue id to both
    // decisions.
    let recs = lab.daemon.decisions();
    let m = recs
        .iter()
        .find(|r| {
            r["frontend"] == "policy"
                && r["queue_id"] == id.as_str()
                && r.get("recipients").is_some()
        })
        .unwrap_or_else(|| panic!("no message record for {id}: {recs:#?}"));
    let rs = m["recipients"].as_array().unwrap();
    let tls_of = |who: &str| {
        rs.iter()
            .find(|r| r["recipient"] == who)
            .map(|r| r["tls"].as_str().unwrap().to_string())
    };
    assert_eq!(tls_of("a@forced-plain.test").as_deref(), Some("forced"));
    assert_eq!(tls_of("b@opp-plain.test").as_deref(), Some("opportunistic"));
    assert_eq!(m["tls"], "forced");
    summary("mixed message: each recipient per its domain, one record with the queue id");
}

#[test]
fn daemon_restart_while_mail_flows_loses_nothing_and_leaks_nothing() {
    let Some(mut lab) = Lab::start("e2e-rst") else {
        return;
    };
    // Fixed ports for the restart.
    let sm = lab.daemon.address().to_string();
    let ps = lab.daemon.listening("policy");
    lab.daemon.write_config(&config(&sm, &ps));
    lab.daemon.signal(libc::SIGTERM);
    assert!(lab.daemon.wait_exit().success());

    // Down: mail is still accepted (default_action=DUNNO) but not
    // delivered: Postfix cannot learn the TLS policy and defers.
    let mark = lab.pf.log_mark();
    let id = lab.send(SENDER, &["a@forced-plain.test", "b@forced-tls.test"]);
    for rcpt in ["a@forced-plain.test", "b@forced-tls.test"] {
        let line = lab.status(&id, rcpt, mark);
        assert!(line.contains("status=deferred"), "{line}");
        assert!(line.contains("TLS configuration problem"), "{line}");
    }
    never_received(&lab.plain, "a@forced-plain.test");
    never_received(&lab.tls, "b@forced-tls.test");

    // Back up: the queued mail goes out, encrypted where forced.
    lab.daemon.restart("socketmap");
    let mark = lab.pf.log_mark();
    lab.pf.flush();
    assert!(
        lab.status(&id, "b@forced-tls.test", mark)
            .contains("status=sent")
    );
    assert!(received(&lab.tls, "b@forced-tls.test").tls);
    let line = lab.status(&id, "a@forced-plain.test", mark);
    assert!(line.contains("TLS is required"), "{line}");
    never_received(&lab.plain, "a@forced-plain.test");
    summary("daemon down and back: queued, then delivered; forced never in plaintext");
}

#[test]
fn dns_outage_defers_and_a_broken_reload_keeps_the_old_policy() {
    let Some(mut lab) = Lab::start("e2e-flt") else {
        return;
    };
    // DNS gone: Postfix cannot find the MX and defers; nothing is sent.
    drop(lab.dns.take());
    let mark = lab.pf.log_mark();
    let id = lab.send(SENDER, &["a@forced-tls.test", "b@opp-plain.test"]);
    for rcpt in ["a@forced-tls.test", "b@opp-plain.test"] {
        let line = lab.status(&id, rcpt, mark);
        assert!(line.contains("status=deferred"), "{line}");
    }
    // Back: delivered per policy.
    lab.dns = Some(lab.ns.run_in(start_dns));
    let mark = lab.pf.log_mark();
    lab.pf.flush();
    assert!(
        lab.status(&id, "a@forced-tls.test", mark)
            .contains("status=sent")
    );
    assert!(received(&lab.tls, "a@forced-tls.test").tls);
    assert!(
        lab.status(&id, "b@opp-plain.test", mark)
            .contains("status=sent")
    );

    // A broken policy file on reload: the old policy keeps serving.
    lab.daemon
        .write_policy("default = \"opportunistic\"\n[[rule]]\ndomains = [\"forced-plain.test\"]\ntls = \"sometimes\"\n");
    let m = lab.daemon.mark();
    lab.daemon.signal(libc::SIGHUP);
    let line = lab
        .daemon
        .wait_for_line_since(m, |l| l.contains("reload failed"));
    assert!(line.contains("sometimes"), "{line}");
    let mark = lab.pf.log_mark();
    let id = lab.send(SENDER, &["c@forced-plain.test"]);
    let line = lab.status(&id, "c@forced-plain.test", mark);
    assert!(line.contains("TLS is required"), "{line}");
    never_received(&lab.plain, "c@forced-plain.test");
    summary("DNS outage defers then delivers; broken reload keeps the old policy");
}
