//! The policy delegation server as Postfix meets it: a real Postfix smtpd
//! with `check_policy_service` pointing at the `tls-policyd` binary, all
//! inside a network namespace with only `lo`. The daemon's STARTTLS
//! prober finds the forced domain's mail server (an SMTP server without
//! STARTTLS started here) through a test DNS server started here.
//!
//! Needs root, `ip`, Postfix and swaks (`.ci/run` installs them); without
//! them these tests fail, unless `SKIP_POSTFIX_TESTS=1` is set.

mod common;

use std::time::{Duration, Instant};

use common::dns::TestDns;
use common::netns::Netns;
use common::postfix::{Mail, Postfix, PostfixOptions, SENDER};
use common::smtp::{SinkTls, SmtpSink};
use common::{Daemon, Options};
use serde_json::Value;

const TOOLS: &[&str] = &["postfix", "postqueue", "postcat", "swaks"];

const POLICY: &str = r#"
default = "opportunistic"

[[rule]]
domains = ["nostarttls.test", "broken.test"]
tls = "forced"
reason = "partner requires TLS"

[[sender_rule]]
senders = ["@finance.example"]
tls = "forced"
reason = "finance mail"
"#;

/// The forced domain's mail server: no STARTTLS.
const MX_IP: &str = "127.0.0.21";

struct Lab {
    ns: Netns,
    dns: TestDns,
    _mx: SmtpSink,
    daemon: Daemon,
    pf: Postfix,
}

impl Lab {
    fn start(prefix: &str, trace_header: bool) -> Option<Lab> {
        let ns = Netns::for_test(prefix, TOOLS)?;
        let (dns, mx) = ns.run_in(|| {
            let dns = TestDns::start("127.0.0.1");
            let mx = SmtpSink::start(MX_IP, 0, SinkTls::None);
            (dns, mx)
        });
        dns.mx("nostarttls.test", 10, "mx.nostarttls.test")
            .a("mx.nostarttls.test", MX_IP);
        let config = format!(
            r#"
[policy_server]
listen = "inet:127.0.0.1:0"
refuse = "defer"
forced_transport = "smtp-tls-forced"
{trace}

[prober]
port = {port}
helo_name = "probe.test"
connect_timeout = "2s"
smtp_timeout = "2s"
tls_timeout = "2s"

[dns]
nameservers = ["{dns}"]
timeout = "1s"
attempts = 1

[policy]
file = "policy.toml"

[log]
decisions = "decisions.jsonl"
"#,
            trace = if trace_header {
                "trace_header = \"X-TLS-Policy\""
            } else {
                ""
            },
            port = mx.port(),
            dns = dns.nameserver(),
        );
        let daemon = Daemon::start_frontend(&config, POLICY, Options::in_netns(&ns), "policy");
        let check = format!(
            "check_policy_service {{ {}, default_action=DUNNO }}",
            daemon.address()
        );
        let mut opts = PostfixOptions::default()
            .defer("smtp")
            .defer("smtp-tls-forced")
            .master_line("smtp-tls-forced unix - - n - - smtp")
            .set(
                "smtpd_recipient_restrictions",
                format!("{check}, permit_mynetworks, reject"),
            )
            .set("smtpd_end_of_data_restrictions", check.clone());
        if trace_header {
            opts = opts.set("smtpd_data_restrictions", check);
        }
        let pf = Postfix::start(&ns, opts);
        Some(Lab {
            ns,
            dns,
            _mx: mx,
            daemon,
            pf,
        })
    }

    /// Decision records of the policy front door written so far.
    fn records(&self) -> Vec<Value> {
        self.daemon
            .decisions()
            .into_iter()
            .filter(|r| r["frontend"] == "policy")
            .collect()
    }

    /// Ask at RCPT until the prober's knowledge makes the daemon refuse
    /// `rcpt`; the first ask schedules the probe. Returns the refusal.
    fn wait_for_refusal(&self, rcpt: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let s = self.pf.send(&Mail::to(&[rcpt]).quit_after("RCPT"));
            let reply = s.rcpt_reply(rcpt);
            if reply.starts_with("450 ") {
                return reply;
            }
            assert!(
                reply.starts_with("250 "),
                "{reply}\n{}\n{}",
                s.transcript,
                self.pf.diagnostics()
            );
            assert!(
                Instant::now() < deadline,
                "the daemon never learnt that {rcpt} cannot do STARTTLS\n{}",
                self.daemon.stderr_text()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

#[test]
fn postfix_passes_dunno_defers_a_forced_domain_without_starttls_and_logs_queue_ids() {
    let Some(lab) = Lab::start("tlspd-pol", false) else {
        return;
    };
    let pf = &lab.pf;

    // An opportunistic domain: DUNNO, and the mail is queued.
    let open = pf.send(&Mail::to(&["a@open.test"]));
    assert!(open.status.success(), "{}", open.transcript);
    assert!(open.rcpt_reply("a@open.test").starts_with("250 "));
    let open_id = open.queue_id().expect("queued");

    // Nothing is known about the forced domain at first: never refuse on
    // a guess. The probe runs in the background; then Postfix's client
    // hears 450 4.7.10 at RCPT.
    let refusal = lab.wait_for_refusal("b@nostarttls.test");
    assert!(refusal.starts_with("450 4.7.10 "), "{refusal}");
    for part in [
        "nostarttls.test",
        "forced TLS (encrypt)",
        "no mail server of the domain offers STARTTLS",
    ] {
        assert!(refusal.contains(part), "{part:?} not in {refusal}");
    }

    // One message with both: the refused recipient is left out, the
    // other is queued.
    let both = pf.send(&Mail::to(&["c@open.test", "d@nostarttls.test"]));
    assert!(both.status.success(), "{}", both.transcript);
    assert!(both.rcpt_reply("c@open.test").starts_with("250 "));
    assert!(
        both.rcpt_reply("d@nostarttls.test")
            .starts_with("450 4.7.10 ")
    );
    let both_id = both.queue_id().expect("queued");
    let queue = pf.wait_for_queue(|q| q.len() == 2, common::WAIT);
    let queued = queue
        .iter()
        .find(|m| m.queue_id == both_id)
        .expect("second message queued");
    assert_eq!(queued.recipient_addresses(), ["c@open.test"]);

    // The decision log: RCPT records name sender, recipient, client and
    // action; one END-OF-MESSAGE record per message carries Postfix's
    // queue id and its recipients' decisions.
    let records = lab.records();
    let rcpt = |who: &str| -> Vec<&Value> {
        records
            .iter()
            .filter(|r| r["recipient"] == who && r.get("recipients").is_none())
            .collect()
    };
    let a = rcpt("a@open.test");
    assert_eq!(a.len(), 1, "{records:#?}");
    assert_eq!(a[0]["tls"], "opportunistic");
    assert_eq!(a[0]["domain"], "open.test");
    assert_eq!(a[0]["sender"], SENDER);
    assert_eq!(a[0]["client_address"], "127.0.0.1");
    assert_eq!(a[0]["action"], "DUNNO");
    assert!(
        a[0].get("queue_id").is_none(),
        "Postfix has no queue id at the first RCPT: {}",
        a[0]
    );
    let d = rcpt("d@nostarttls.test");
    assert_eq!(d.len(), 1, "{records:#?}");
    assert_eq!(d[0]["tls"], "forced");
    assert_eq!(d[0]["level"], "encrypt");
    assert!(
        d[0]["action"]
            .as_str()
            .unwrap()
            .starts_with("DEFER_IF_PERMIT 4.7.10 "),
        "{}",
        d[0]
    );
    assert_eq!(d[0]["queue_id"], both_id.as_str(), "{}", d[0]);

    let eom = |id: &str| -> Value {
        let m: Vec<&Value> = records
            .iter()
            .filter(|r| r["queue_id"] == id && r.get("recipients").is_some())
            .collect();
        assert_eq!(m.len(), 1, "one record per message for {id}: {records:#?}");
        m[0].clone()
    };
    let m = eom(&open_id);
    assert_eq!(m["tls"], "opportunistic");
    let rs = m["recipients"].as_array().unwrap();
    assert_eq!(rs.len(), 1);
    assert_eq!(rs[0]["recipient"], "a@open.test");
    let m = eom(&both_id);
    let rs = m["recipients"].as_array().unwrap();
    let by = |who: &str| rs.iter().find(|r| r["recipient"] == who).cloned();
    let c = by("c@open.test").expect("accepted recipient in the message record");
    assert_eq!(c["tls"], "opportunistic");
    assert_eq!(c["action"], "DUNNO");
    // The refused recipient is not part of the message, but its refusal
    // is on record with the message.
    if let Some(d) = by("d@nostarttls.test") {
        assert!(
            d["action"].as_str().unwrap().starts_with("DEFER_IF_PERMIT"),
            "{d}"
        );
    }

    // `tls-policyd log --queue-id` finds the message by Postfix's id.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tls-policyd"))
        .args(["log", "--json", "--queue-id", &both_id, "--file"])
        .arg(lab.daemon.decisions_path())
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.lines().count() >= 1, "{text}");
    assert!(text.lines().all(|l| l.contains(&both_id)), "{text}");
    drop(lab.ns);
}

#[test]
fn postfix_filters_sender_rule_mail_to_the_forced_transport_and_prepends_the_trace_header() {
    let Some(lab) = Lab::start("tlspd-flt", true) else {
        return;
    };
    let pf = &lab.pf;

    let s = pf.send(&Mail::to(&["e@open.test"]).from("cfo@finance.example"));
    assert!(s.status.success(), "{}", s.transcript);
    assert!(s.rcpt_reply("e@open.test").starts_with("250 "));
    let filtered = s.queue_id().expect("queued");
    let plain = pf.send(&Mail::to(&["f@open.test"]));
    let plain_id = plain.queue_id().expect("queued");
    pf.wait_for_queue(|q| q.len() == 2, common::WAIT);

    // Postfix logs the FILTER action and writes it into the queue file:
    // the whole message goes through the forced transport.
    pf.wait_for_log(
        |l| l.contains("triggers FILTER smtp-tls-forced:"),
        common::WAIT,
    );
    let cat = |id: &str| pf.run_ok("postcat", &["-q", id]);
    let filtered_file = cat(&filtered);
    assert!(
        filtered_file.contains("content_filter: smtp-tls-forced:"),
        "{filtered_file}"
    );
    let plain_file = cat(&plain_id);
    assert!(!plain_file.contains("content_filter:"), "{plain_file}");

    // The trace header, added at DATA, says what was decided.
    let header = filtered_file
        .lines()
        .find(|l| l.starts_with("X-TLS-Policy: "))
        .unwrap_or_else(|| panic!("no trace header:\n{filtered_file}"));
    assert!(header.contains("open.test=forced (encrypt"), "{header}");
    assert!(header.contains("sender rule 1"), "{header}");
    let header = plain_file
        .lines()
        .find(|l| l.starts_with("X-TLS-Policy: "))
        .unwrap_or_else(|| panic!("no trace header:\n{plain_file}"));
    assert!(
        header.contains("open.test=opportunistic (may, default)"),
        "{header}"
    );

    // The message record names the sender rule and counts as forced.
    let records = lab.records();
    let m = records
        .iter()
        .find(|r| r["queue_id"] == filtered.as_str() && r.get("recipients").is_some())
        .unwrap_or_else(|| panic!("no message record for {filtered}: {records:#?}"));
    assert_eq!(m["tls"], "forced", "{m}");
    assert_eq!(m["sender_rule"], 1, "{m}");
    let r = records
        .iter()
        .find(|r| r["recipient"] == "e@open.test" && r.get("recipients").is_none())
        .unwrap();
    assert_eq!(r["action"], "FILTER smtp-tls-forced:", "{r}");
}

#[test]
fn probe_command_shows_what_it_found_and_the_rcpt_answer() {
    let Some(lab) = Lab::start("tlspd-prb", false) else {
        return;
    };
    let probe = |domain: &str, json: bool| -> String {
        let mut cmd = lab.ns.cmd(env!("CARGO_BIN_EXE_tls-policyd"));
        cmd.arg("probe")
            .arg("--config")
            .arg(lab.daemon.config_path())
            .arg(domain);
        if json {
            cmd.arg("--json");
        }
        let out = common::run_with_timeout(&mut cmd);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };

    let text = probe("nostarttls.test", false);
    for part in [
        "mx.nostarttls.test",
        MX_IP,
        "forced TLS, Postfix level \"encrypt\"",
        "partner requires TLS",
        "at RCPT      DEFER_IF_PERMIT 4.7.10 TLS policy for nostarttls.test requires forced TLS (encrypt)",
    ] {
        assert!(text.contains(part), "{part:?} not in\n{text}");
    }

    let v: Value = serde_json::from_str(&probe("nostarttls.test", true)).unwrap();
    assert_eq!(v["verdict"], "no_starttls", "{v:#}");
    assert_eq!(v["mx"][0]["host"], "mx.nostarttls.test", "{v:#}");
    assert_eq!(v["mx"][0]["starttls_offered"], false, "{v:#}");
    assert_eq!(v["decision"]["tls"], "forced", "{v:#}");
    assert_eq!(v["decision"]["level"], "encrypt", "{v:#}");
    assert!(
        v["policy_server_answer"]
            .as_str()
            .unwrap()
            .starts_with("DEFER_IF_PERMIT 4.7.10 "),
        "{v:#}"
    );

    // A forced domain whose MX lookup fails: nothing is known, so DUNNO.
    lab.dns.servfail("broken.test");
    let v: Value = serde_json::from_str(&probe("broken.test", true)).unwrap();
    assert_eq!(v["verdict"], "unknown", "{v:#}");
    assert_eq!(v["decision"]["tls"], "forced", "{v:#}");
    assert_eq!(v["policy_server_answer"], "DUNNO", "{v:#}");
}
