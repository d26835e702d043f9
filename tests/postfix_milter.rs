//! The milter behind a real Postfix: a private instance inside a network
//! namespace the test creates has `smtpd_milters` (and
//! `non_smtpd_milters`) pointing at the milter, which runs in process on
//! a thread inside the same namespace. swaks sends the mail.
//!
//! Needs root, `ip`, Postfix and swaks (with Perl's IO::Socket::SSL for
//! STARTTLS); `./scripts/test-all` installs them. Without them these tests
//! fail, unless `SKIP_POSTFIX_TESTS=1` is set.

mod common;

use common::WAIT;
use common::fixtures::MILTER_ALL_ACTIONS;
use common::knowledge::no_starttls;
use common::milter::MilterServer;
use common::netns::Netns;
use common::postfix::{CLIENT_HELO, MYHOSTNAME, Mail, Postfix, PostfixOptions, SENDER};
use serde_json::Value;

const TOOLS: &[&str] = &["postfix", "postqueue", "postcat", "sendmail", "swaks"];

const POLICY: &str = r#"
[[rule]]
domains = ["bank.example"]
tls = "forced"
reason = "PCI partner"

[[rule]]
domains = ["held.example"]
tls = "forced"
refuse = "off"

[[sender_rule]]
senders = ["ceo@src.example"]
tls = "forced"
"#;

/// A self-signed certificate for smtpd's STARTTLS.
fn smtpd_tls(opts: PostfixOptions) -> PostfixOptions {
    let cert = rcgen::generate_simple_self_signed(vec![MYHOSTNAME.to_string()]).unwrap();
    opts.file("smtpd-cert.pem", &cert.cert.pem())
        .file("smtpd-key.pem", &cert.signing_key.serialize_pem())
        .set("smtpd_tls_security_level", "may")
        .set("smtpd_tls_cert_file", "$config_directory/smtpd-cert.pem")
        .set("smtpd_tls_key_file", "$config_directory/smtpd-key.pem")
}

fn with_milter(opts: PostfixOptions, m: &MilterServer) -> PostfixOptions {
    let endpoint = format!("inet:127.0.0.1:{}", m.socket_addr().port());
    opts.set("smtpd_milters", endpoint.clone())
        .set("non_smtpd_milters", endpoint)
        .set("milter_default_action", "tempfail")
}

fn record_for<'a>(recs: &'a [Value], queue_id: &str) -> &'a Value {
    recs.iter()
        .find(|r| r["queue_id"] == queue_id)
        .unwrap_or_else(|| panic!("no record with queue_id {queue_id}: {recs:#?}"))
}

#[test]
fn one_record_per_message_with_postfixs_queue_id_and_every_decision() {
    let Some(ns) = Netns::for_test("tlspd-mi", TOOLS) else {
        return;
    };
    let m = MilterServer::start_in(Some(&ns), "inet:127.0.0.1:0", "", POLICY);
    let pf = Postfix::start(
        &ns,
        with_milter(smtpd_tls(PostfixOptions::default().defer("smtp")), &m),
    );

    let s = pf.send(
        &Mail::to(&["a@bank.example", "b@other.example"])
            // Replaces the Message-Id swaks would write.
            .arg("--header")
            .arg("Message-Id: <pf1@src.example>")
            .arg("--tls"),
    );
    assert!(s.status.success(), "{}", s.transcript);
    let id = s
        .queue_id()
        .unwrap_or_else(|| panic!("not queued:\n{}", s.transcript));
    // A second message, in plaintext.
    let s2 = pf.send(&Mail::to(&["c@other.example"]));
    let id2 = s2.queue_id().expect("second message queued");

    let recs = m.wait_for_records(2);
    assert_eq!(recs.len(), 2, "one record per message: {recs:#?}");
    let r = record_for(&recs, &id);
    assert_eq!(r["frontend"], "milter");
    assert_eq!(r["sender"], SENDER);
    assert_eq!(r["client_address"], "127.0.0.1");
    assert_eq!(r["helo_name"], CLIENT_HELO);
    assert_eq!(r["mta"], MYHOSTNAME);
    assert_eq!(r["message_id"], "<pf1@src.example>");
    let tls = &r["inbound_tls"];
    assert!(
        tls["version"].as_str().unwrap().starts_with("TLSv1."),
        "{tls}"
    );
    assert!(!tls["cipher"].as_str().unwrap().is_empty(), "{tls}");
    assert!(tls["bits"].as_u64().unwrap() >= 128, "{tls}");
    assert_eq!(r["tls"], "forced");
    let list = r["recipients"].as_array().unwrap();
    assert_eq!(list.len(), 2, "{list:?}");
    assert_eq!(list[0]["recipient"], "a@bank.example");
    assert_eq!(list[0]["tls"], "forced");
    assert_eq!(list[0]["level"], "encrypt");
    assert_eq!(list[0]["source"], "static");
    assert_eq!(list[0]["reason"], "PCI partner");
    assert_eq!(list[1]["recipient"], "b@other.example");
    assert_eq!(list[1]["tls"], "opportunistic");
    assert_eq!(list[1]["level"], "may");
    assert_eq!(list[1]["source"], "default");

    let r2 = record_for(&recs, &id2);
    assert!(r2.get("inbound_tls").is_none(), "plaintext: {r2}");
    assert_eq!(r2["tls"], "opportunistic");

    // With every action off, the message is left as it was.
    let q = pf.wait_for_queue(|q| q.len() == 2, WAIT);
    assert!(q.iter().all(|m| m.queue_name != "hold"), "{q:#?}");
    let content = pf.run_ok("postcat", &["-h", "-q", &id]);
    assert!(!content.contains("X-TLS"), "{content}");
}

#[test]
fn enabled_actions_refuse_add_headers_quarantine_and_route() {
    let Some(ns) = Netns::for_test("tlspd-mi", TOOLS) else {
        return;
    };
    let m = MilterServer::start_in(Some(&ns), "inet:127.0.0.1:0", MILTER_ALL_ACTIONS, POLICY);
    for d in ["bank.example", "held.example"] {
        m.knowledge.set(d, no_starttls(d));
    }
    let pf = Postfix::start(
        &ns,
        with_milter(PostfixOptions::default(), &m)
            .defer("smtp")
            .defer("smtp-tls-forced")
            .master_line("smtp-tls-forced unix - - n - - smtp")
            .file(
                "milter_header_checks",
                "/^X-TLS-Route: forced$/ FILTER smtp-tls-forced:\n",
            )
            .set(
                "milter_header_checks",
                "regexp:$config_directory/milter_header_checks",
            ),
    );

    // Refusal: the forced domain known without STARTTLS gets 450 4.7.10
    // at RCPT; the other recipient is accepted and the trace header added.
    let s = pf.send(&Mail::to(&["a@bank.example", "b@other.example"]));
    let refused = s.rcpt_reply("a@bank.example");
    assert!(
        refused.starts_with(
            "450 4.7.10 TLS policy for bank.example requires forced TLS (encrypt), but no mail server of the domain offers STARTTLS"
        ),
        "{refused}\n{}",
        s.transcript
    );
    assert!(s.rcpt_reply("b@other.example").starts_with("250 "));
    let id = s.queue_id().expect("queued for the accepted recipient");
    let headers = pf.run_ok("postcat", &["-h", "-q", &id]);
    assert!(
        headers.contains("X-TLS-Policy: other.example=opportunistic (may, default)"),
        "{headers}"
    );

    // Quarantine: a forced domain whose rule does not refuse, known
    // undeliverable, lands in the hold queue.
    let s = pf.send(&Mail::to(&["c@held.example"]));
    assert!(s.rcpt_reply("c@held.example").starts_with("250 "));
    let held = s.queue_id().expect("queued");

    // Routing: a sender rule adds the routing header, which
    // milter_header_checks turns into FILTER smtp-tls-forced:.
    let s = pf.send(&Mail::to(&["d@other.example"]).from("ceo@src.example"));
    let routed = s.queue_id().expect("queued");

    let q = pf.wait_for_queue(
        |q| {
            q.iter()
                .any(|m| m.queue_id == held && m.queue_name == "hold")
                && q.iter().any(|m| m.queue_id == routed)
        },
        WAIT,
    );
    let normal = q.iter().find(|m| m.queue_id == id).unwrap();
    assert_ne!(normal.queue_name, "hold");
    assert_eq!(normal.recipient_addresses(), ["b@other.example"]);
    let envelope = pf.run_ok("postcat", &["-e", "-q", &routed]);
    assert!(
        envelope.contains("content_filter: smtp-tls-forced:"),
        "{envelope}"
    );
    let headers = pf.run_ok("postcat", &["-h", "-q", &routed]);
    assert!(headers.contains("X-TLS-Route: forced"), "{headers}");
    let envelope = pf.run_ok("postcat", &["-e", "-q", &id]);
    assert!(!envelope.contains("content_filter"), "{envelope}");

    let recs = m.wait_for_records(3);
    let r = record_for(&recs, &id);
    assert!(
        r["recipients"][0]["action"]
            .as_str()
            .unwrap()
            .starts_with("450 4.7.10 "),
        "{r}"
    );
    assert_eq!(
        r["action"],
        "add header X-TLS-Policy: other.example=opportunistic (may, default)"
    );
    let r = record_for(&recs, &held);
    assert!(
        r["action"].as_str().unwrap().starts_with("quarantine; "),
        "{r}"
    );
    pf.wait_for_log(
        |l| l.contains(&format!("{held}: milter-hold: END-OF-MESSAGE")),
        WAIT,
    );
    let r = record_for(&recs, &routed);
    assert_eq!(r["sender_rule"], 1);
    assert!(
        r["action"]
            .as_str()
            .unwrap()
            .starts_with("add header X-TLS-Route: forced"),
        "{r}"
    );
}

#[test]
fn sendmail_submissions_go_through_non_smtpd_milters() {
    let Some(ns) = Netns::for_test("tlspd-mi", TOOLS) else {
        return;
    };
    let m = MilterServer::start_in(
        Some(&ns),
        "inet:127.0.0.1:0",
        "trace_header = \"X-TLS-Policy\"\n",
        POLICY,
    );
    let pf = Postfix::start(
        &ns,
        with_milter(PostfixOptions::default().defer("smtp"), &m),
    );
    let mut child = pf
        .netns()
        .cmd("sendmail")
        .arg("-C")
        .arg(pf.config_dir())
        .args([
            "-f",
            "local@src.example",
            "x@bank.example",
            "y@other.example",
        ])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .expect("run sendmail");
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        stdin
            .write_all(b"Subject: local\nMessage-ID: <local1@src.example>\n\nhello\n")
            .unwrap();
    }
    assert!(child.wait().unwrap().success());
    // postdrop's file in `maildrop` gets a new queue id when pickup hands
    // it to cleanup, which talks to the milter.
    let q = pf.wait_for_queue(|q| q.len() == 1 && q[0].queue_name != "maildrop", WAIT);
    let id = q[0].queue_id.clone();
    let recs = m.wait_for_records(1);
    let r = record_for(&recs, &id);
    assert_eq!(r["sender"], "local@src.example");
    assert_eq!(r["message_id"], "<local1@src.example>");
    let list = r["recipients"].as_array().unwrap();
    assert_eq!(list.len(), 2, "{r}");
    assert_eq!(list[0]["tls"], "forced");
    assert_eq!(list[1]["tls"], "opportunistic");
    let headers = pf.run_ok("postcat", &["-h", "-q", &id]);
    assert!(
        headers.contains("X-TLS-Policy: bank.example=forced"),
        "{headers}"
    );
}

#[test]
fn sendmail_submissions_are_never_refused_but_can_be_quarantined() {
    // Postfix cannot refuse one recipient of mail submitted with
    // sendmail(1): it would keep the whole message in the maildrop queue
    // as a "milter configuration error". The milter accepts such
    // recipients, and quarantine holds the message instead.
    let Some(ns) = Netns::for_test("tlspd-mi", TOOLS) else {
        return;
    };
    let m = MilterServer::start_in(
        Some(&ns),
        "inet:127.0.0.1:0",
        "refuse = \"defer\"\nquarantine = true\n",
        POLICY,
    );
    m.knowledge.set("bank.example", no_starttls("bank.example"));
    let pf = Postfix::start(
        &ns,
        with_milter(PostfixOptions::default().defer("smtp"), &m),
    );
    let mut child = pf
        .netns()
        .cmd("sendmail")
        .arg("-C")
        .arg(pf.config_dir())
        .args([
            "-f",
            "local@src.example",
            "x@bank.example",
            "y@other.example",
        ])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .expect("run sendmail");
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(b"Subject: local\n\nhello\n").unwrap();
    }
    assert!(child.wait().unwrap().success());
    let q = pf.wait_for_queue(|q| q.len() == 1 && q[0].queue_name == "hold", WAIT);
    let id = q[0].queue_id.clone();
    let mut rcpts = q[0].recipient_addresses();
    rcpts.sort();
    assert_eq!(rcpts, ["x@bank.example", "y@other.example"]);
    assert!(
        !pf.log_text().contains("milter configuration error"),
        "{}",
        pf.log_text()
    );
    let recs = m.wait_for_records(1);
    let r = record_for(&recs, &id);
    assert_eq!(r["action"], "quarantine", "{r}");
    assert!(r["recipients"][0].get("action").is_none(), "{r}");
}
