//! End to end: real Postfix delivers real mail over real SMTP and TLS to
//! SMTP servers found through real DNS, with tls-policyd deciding through
//! all three front doors: `smtp_tls_policy_maps` (socketmap),
//! `check_policy_service` (policy server) and `smtpd_milters` (milter).
//! Every piece runs inside a network namespace that the test creates with
//! only `lo`:
//!
//! - knot on 127.0.0.2:53, authoritative for the unsigned zone `test.`
//!   (MX records of the recipient domains, MTA-STS TXT records) and the
//!   zone `dane.test.`, signed with a key made for the test; unbound on
//!   127.0.0.1:53 (the namespace's resolv.conf) validates, with that key's
//!   DS as its only trust anchor. Postfix and tls-policyd both use it, so
//!   Postfix asks the policy map with the recipient domain;
//! - an HTTPS server on 127.0.0.44:443 serving MTA-STS policies with
//!   certificates from a test CA;
//! - SMTP servers on port 25: 127.0.0.21 with STARTTLS and a certificate
//!   from the test CA, 127.0.0.22 with a self-signed certificate, 127.0.0.23
//!   without STARTTLS, 127.0.0.31 and .32 with self-signed certificates
//!   that the DANE zone's TLSA records match and do not match;
//! - tls-policyd (the binary) on the addresses the documented `main.cf`
//!   names, and a private Postfix instance that trusts the test CA, uses
//!   DNSSEC (`smtp_dns_support_level = dnssec`) and wires tls-policyd in
//!   with the lines of `postfix-examples/deployments/all-front-doors`,
//!   read from the files: relay control in `smtpd_relay_restrictions`, the
//!   policy check, the milter, and the `submission` entry of its
//!   `master.cf` with Cyrus SASL (see `common::submission`).
//!
//! tls-policyd follows Postfix's log (`[outcomes]`, Postfix's own
//! `maillog_file`) and writes an outcome record for every delivery
//! attempt.
//!
//! Each test is one scenario; it asserts on what the servers received,
//! what Postfix logged and what the decision log says, and ends by
//! checking every decision record against every delivery Postfix logged,
//! and every delivery attempt against its one outcome record and verdict
//! (`e2e/checks.rs`). The lab is in `e2e/lab.rs`; the outcome follower's
//! own scenarios (a transport around the map, a socketmap Postfix cannot
//! reach, the log rotated while mail flows) in `e2e/outcome_scenarios.rs`;
//! TLS reports from the lab's deliveries in `e2e/tlsrpt_scenario.rs`.
//! Everything is stopped and the namespace and files removed when a test
//! ends, failed or not. Run alone with `cargo test --test e2e` (as root).
//! Needs root, `ip`, Postfix, swaks, knot, unbound and logrotate
//! (`.ci/run` installs them); without them these tests fail, unless
//! `SKIP_POSTFIX_TESTS=1` is set.

#[path = "e2e/checks.rs"]
mod checks;
mod common;
#[path = "e2e/lab.rs"]
mod lab;
#[path = "e2e/outcome_scenarios.rs"]
mod outcome_scenarios;
#[path = "e2e/tlsrpt_scenario.rs"]
mod tlsrpt_scenario;

use std::time::Duration;

use common::Client;
use common::dnssec::restart_unbound;
use common::postfix::{Mail, SENDER};
use common::submission;
use lab::*;

#[test]
fn e2e_opportunistic_domains_get_tls_when_offered_and_plaintext_otherwise() {
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
    // A certificate from the trusted CA, not verified against a name:
    // encrypted.
    lab.expect(&id, "a@opp-tls.test", "sent", "encrypted", "trusted");

    // No STARTTLS: plaintext, not lost.
    let id = lab.send(SENDER, &["b@opp-plain.test"]);
    let line = lab.status(&id, "b@opp-plain.test", mark);
    assert!(line.contains("status=sent"), "{line}");
    let m = received(&lab.plain, "b@opp-plain.test");
    assert!(!m.tls);
    lab.expect(
        &id,
        "b@opp-plain.test",
        "sent",
        "plaintext-fallback",
        "none",
    );

    // Self-signed: encrypted, not authenticated, delivered.
    let id = lab.send(SENDER, &["c@opp-self.test"]);
    assert!(
        lab.status(&id, "c@opp-self.test", mark)
            .contains("status=sent")
    );
    assert!(lab.tls_line(SELF_MX.0, mark).contains("Untrusted TLS"));
    assert!(received(&lab.selfsigned, "c@opp-self.test").tls);
    lab.expect(&id, "c@opp-self.test", "sent", "encrypted", "untrusted");

    for d in ["opp-tls.test", "opp-plain.test", "opp-self.test"] {
        let recs = lab.map_records(d);
        assert!(!recs.is_empty(), "no socketmap record for {d}");
        for r in &recs {
            assert_eq!(r["tls"], "opportunistic", "{r}");
            assert_eq!(r["level"], "may", "{r}");
            assert_eq!(r["key"], d, "{r}");
        }
    }
    lab.check_log_matches_postfix(true);
    summary("opportunistic: TLS when offered, plaintext fallback, nothing lost");
}

#[test]
fn e2e_forced_domains_never_go_out_in_plaintext() {
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
    lab.expect(&id, "a@forced-tls.test", "sent", "encrypted", "trusted");

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
    for rcpt in ["b@forced-plain.test", "C@Forced-Plain.TEST"] {
        let r = lab.expect(&id, rcpt, "deferred", "held", "not-offered");
        assert_eq!(r["domain"], "forced-plain.test", "{r}");
    }
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
    lab.expect(&id, "e@secure-tls.test", "sent", "verified", "verified");
    lab.expect(
        &id,
        "f@secure-self.test",
        "deferred",
        "held",
        "certificate-not-verified",
    );
    lab.check_log_matches_postfix(true);
    summary("forced: TLS or nothing, any letter case, 450 4.7.10 at RCPT once known");
}

#[test]
fn e2e_one_message_to_a_forced_and_an_opportunistic_domain() {
    let Some(lab) = Lab::start("e2e-mix") else {
        return;
    };
    let mark = lab.pf.log_mark();
    let id = lab.send(SENDER, &["a@forced-plain.test", "b@opp-plain.test"]);
    assert!(
        lab.status(&id, "b@opp-plain.test", mark)
            .contains("status=sent")
    );
    let got = received(&lab.plain, "b@opp-plain.test");
    assert!(!got.tls);
    // The milter's trace header (milter.trace_header) summarises both.
    let text = String::from_utf8_lossy(&got.data);
    let header = text
        .lines()
        .take_while(|l| !l.is_empty())
        .find(|l| l.starts_with("X-TLS-Policy: "))
        .unwrap_or_else(|| panic!("no X-TLS-Policy header: {text}"));
    assert!(header.contains("forced-plain.test=forced"), "{header}");
    assert!(header.contains("opp-plain.test=opportunistic"), "{header}");
    assert!(
        lab.status(&id, "a@forced-plain.test", mark)
            .contains("status=deferred")
    );
    never_received(&lab.plain, "a@forced-plain.test");
    lab.expect(
        &id,
        "a@forced-plain.test",
        "deferred",
        "held",
        "not-offered",
    );
    lab.expect(
        &id,
        "b@opp-plain.test",
        "sent",
        "plaintext-fallback",
        "none",
    );

    // The policy server recorded each recipient at RCPT; the deployment
    // asks it at RCPT only, so the per-message record is the milter's.
    let recs = lab.daemon.decisions();
    let at_rcpt = |who: &str| {
        recs.iter()
            .filter(|r| r["frontend"] == "policy" && r["recipient"] == who)
            .map(|r| r["tls"].as_str().unwrap_or_default().to_string())
            .collect::<Vec<_>>()
    };
    assert_eq!(at_rcpt("a@forced-plain.test"), ["forced"], "{recs:#?}");
    assert_eq!(at_rcpt("b@opp-plain.test"), ["opportunistic"], "{recs:#?}");
    assert!(
        !recs
            .iter()
            .any(|r| r["frontend"] == "policy" && r.get("recipients").is_some()),
        "a policy-server message record, though END-OF-DATA is not asked: {recs:#?}"
    );

    // The milter's record: the same queue id, the sender, the client, and
    // both recipients with their decisions.
    let r = lab.milter_record(&id);
    assert_eq!(r["sender"], SENDER, "{r}");
    assert_eq!(r["client_address"], "127.0.0.1", "{r}");
    assert_eq!(r["tls"], "forced", "{r}");
    let rs = r["recipients"].as_array().unwrap();
    assert_eq!(rs.len(), 2, "{r}");
    let of = |domain: &str| {
        rs.iter()
            .find(|x| x["domain"] == domain)
            .unwrap_or_else(|| panic!("{domain} missing: {r}"))
    };
    assert_eq!(of("forced-plain.test")["tls"], "forced");
    assert_eq!(of("forced-plain.test")["level"], "encrypt");
    assert_eq!(of("forced-plain.test")["source"], "static");
    assert_eq!(of("opp-plain.test")["tls"], "opportunistic");
    assert_eq!(of("opp-plain.test")["level"], "may");
    // The milter's work shows in the metrics.
    assert!(lab.metric("tls_policyd_lookups_total{frontend=\"milter\"}") >= 2);
    assert!(lab.metric("tls_policyd_connections_total{frontend=\"milter\"}") >= 1);
    assert!(
        lab.metric(
            "tls_policyd_decisions_total{frontend=\"milter\",tls=\"forced\",level=\"encrypt\",source=\"static\"}"
        ) >= 1
    );
    lab.check_log_matches_postfix(true);
    summary(
        "mixed message: each recipient per its domain; policy records at RCPT, the milter's with the queue id",
    );
}

#[test]
fn e2e_mta_sts_enforce_verifies_and_defers_an_untrusted_server() {
    let Some(lab) = Lab::start("e2e-sts") else {
        return;
    };
    let mark = lab.pf.log_mark();
    // enforce, MX listed, certificate from the trusted CA: verified TLS.
    let id = lab.send(SENDER, &["a@sts-enforce.test"]);
    let line = lab.status(&id, "a@sts-enforce.test", mark);
    assert!(line.contains("status=sent"), "{line}");
    assert!(lab.tls_line(TLS_MX.0, mark).contains("Verified TLS"));
    assert!(received(&lab.tls, "a@sts-enforce.test").tls);
    lab.expect(&id, "a@sts-enforce.test", "sent", "verified", "verified");

    // enforce, but the server's certificate is self-signed: deferred.
    let id = lab.send(SENDER, &["b@sts-forged.test"]);
    let line = lab.status(&id, "b@sts-forged.test", mark);
    assert!(line.contains("status=deferred"), "{line}");
    never_received(&lab.selfsigned, "b@sts-forged.test");
    lab.expect(
        &id,
        "b@sts-forged.test",
        "deferred",
        "held",
        "certificate-not-verified",
    );

    for (domain, level, policy_id) in [
        (
            "sts-enforce.test",
            "secure match=mx-tls.sink.test servername=hostname",
            "e1",
        ),
        (
            "sts-forged.test",
            "secure match=.sink.test servername=hostname",
            "f1",
        ),
    ] {
        let recs = lab.map_records(domain);
        assert!(!recs.is_empty(), "no socketmap record for {domain}");
        for r in &recs {
            assert_eq!(r["source"], "mta-sts", "{r}");
            assert_eq!(r["tls"], "forced", "{r}");
            assert_eq!(r["level"], level, "{r}");
            assert_eq!(r["policy_mode"], "enforce", "{r}");
            assert_eq!(r["policy_id"], policy_id, "{r}");
        }
    }
    assert!(lab.metric("tls_policyd_fetches_total{source=\"mta-sts\",result=\"found\"}") >= 2);
    assert_eq!(
        lab.metric("tls_policyd_cache_entries{cache=\"mta-sts\"}"),
        2
    );
    assert!(lab.metric("tls_policyd_cache_requests_total{cache=\"mta-sts\",result=\"hit\"}") >= 1);
    lab.check_log_matches_postfix(true);
    summary("MTA-STS enforce: verified TLS to a listed MX, deferred on an untrusted certificate");
}

#[test]
fn e2e_dane_verifies_by_tlsa_and_defers_on_a_mismatch() {
    let Some(lab) = Lab::start("e2e-dane") else {
        return;
    };
    let mark = lab.pf.log_mark();
    let id = lab.send(SENDER, &["a@good.dane.test", "b@bad.dane.test"]);
    let line = lab.status(&id, "a@good.dane.test", mark);
    assert!(line.contains("status=sent"), "{line}");
    let tls = lab.tls_line(DANE_GOOD_MX.0, mark);
    assert!(
        tls.contains(&format!(
            "Verified TLS connection established to {}[{}]:25",
            DANE_GOOD_MX.0, DANE_GOOD_MX.1
        )),
        "{tls}"
    );
    assert!(received(&lab.dane_good, "a@good.dane.test").tls);

    let line = lab.status(&id, "b@bad.dane.test", mark);
    assert!(line.contains("status=deferred"), "{line}");
    assert!(line.contains("Server certificate not verified"), "{line}");
    never_received(&lab.dane_bad, "b@bad.dane.test");
    lab.expect(&id, "a@good.dane.test", "sent", "verified", "verified");
    let r = lab.expect(
        &id,
        "b@bad.dane.test",
        "deferred",
        "held",
        "certificate-not-verified",
    );
    // The handshake completed before the TLSA check failed.
    assert_eq!(r["tls_trust"], "untrusted", "{r}");

    for domain in ["good.dane.test", "bad.dane.test"] {
        let recs = lab.map_records(domain);
        assert!(!recs.is_empty(), "no socketmap record for {domain}");
        for r in &recs {
            assert_eq!(r["source"], "dane", "{r}");
            assert_eq!(r["level"], "dane-only", "{r}");
            assert_eq!(r["tls"], "forced", "{r}");
        }
    }
    // The milter saw the same DANE decisions at RCPT time.
    let r = lab.milter_record(&id);
    for x in r["recipients"].as_array().unwrap() {
        assert_eq!(x["source"], "dane", "{r}");
        assert_eq!(x["level"], "dane-only", "{r}");
    }
    assert!(lab.metric("tls_policyd_fetches_total{source=\"dane\",result=\"found\"}") >= 2);
    assert!(lab.metric("tls_policyd_cache_requests_total{cache=\"dane\",result=\"hit\"}") >= 1);
    assert!(lab.metric("tls_policyd_cache_entries{cache=\"dane\"}") >= 2);
    lab.check_log_matches_postfix(true);
    summary("DANE: verified TLS where the TLSA record matches, deferred where it does not");
}

#[test]
fn e2e_daemon_restart_while_mail_flows_loses_nothing_and_leaks_nothing() {
    let Some(mut lab) = Lab::start("e2e-rst") else {
        return;
    };
    // Fixed ports for the restart.
    let sm = lab.daemon.address().to_string();
    let ps = lab.daemon.listening("policy");
    let mi = lab.daemon.listening("milter");
    lab.daemon
        .write_config(&config(&sm, &ps, &mi, lab.dir.path(), &lab.pf.log_path()));
    // Mail flows; the daemon stops (SIGTERM) two thirds of the way in
    // (smtpd takes about a second for each message it cannot ask about).
    const N: usize = 30;
    let sender = lab.send_batch(batch_rcpts("f", N), Duration::from_millis(40));
    lab.wait_received(2 * N / 3);
    lab.daemon.signal(libc::SIGTERM);
    assert!(lab.daemon.wait_exit().success());
    let flowed = sender.join().expect("the batch sender");
    let state = lab.dir.path().join("outcomes.state");
    assert!(state.exists(), "no position saved on stop");

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
    let down = lab.received_count();
    assert!(down < N, "the whole batch went out before the stop");

    // Back up: reading resumes where it stopped; the queued mail goes
    // out, encrypted where forced.
    lab.daemon.restart("socketmap");
    lab.daemon
        .wait_for_line(|l| l.contains("outcomes: resuming where reading stopped"));
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
    lab.wait_received(N + 1);
    // Every attempt judged once, before, during and after the stop.
    let records = lab.check_log_matches_postfix(false);
    for q in &flowed {
        let of = |status: &str| {
            records
                .iter()
                .filter(|r| r["queue_id"] == q.as_str() && r["status"] == status)
                .collect::<Vec<_>>()
        };
        assert_eq!(of("sent").len(), 1, "{q}: {records:#?}");
        for r in of("deferred") {
            assert_eq!(r["verdict"], "policy-unreachable", "{r}");
        }
    }
    lab.expect(&id, "b@forced-tls.test", "sent", "encrypted", "trusted");
    // Deferred while down: Postfix got no policy, and the rule says what
    // it should have had; then a@ held for TLS.
    let of = |rcpt: &str| -> Vec<(String, String, String)> {
        records
            .iter()
            .filter(|r| r["queue_id"] == id.as_str() && r["recipient"] == rcpt)
            .filter(|r| r["status"] == "deferred")
            .map(|r| {
                let s = |k: &str| r[k].as_str().unwrap_or_default().to_string();
                (s("verdict"), s("tls_failure"), s("decided_by"))
            })
            .collect()
    };
    let unreachable = (
        "policy-unreachable".to_string(),
        "config-problem".to_string(),
        "rule".to_string(),
    );
    let held = (
        "held".to_string(),
        "not-offered".to_string(),
        "socketmap".to_string(),
    );
    assert_eq!(of("a@forced-plain.test"), [unreachable.clone(), held]);
    assert_eq!(of("b@forced-tls.test"), [unreachable]);
    summary(
        "daemon stopped while mail flows and back: queued, then delivered; forced never in \
         plaintext; each delivery judged once",
    );
}

#[test]
fn e2e_dns_outage_defers_and_a_broken_reload_keeps_the_old_policy() {
    let Some(mut lab) = Lab::start("e2e-flt") else {
        return;
    };
    // A DANE domain is learned while DNS works.
    let mark = lab.pf.log_mark();
    let id = lab.send(SENDER, &["d@good.dane.test"]);
    assert!(
        lab.status(&id, "d@good.dane.test", mark)
            .contains("status=sent")
    );

    // The resolver gone: Postfix cannot find the MX and defers; nothing is
    // sent.
    drop(lab.unbound.take());
    let mark = lab.pf.log_mark();
    let id = lab.send(SENDER, &["a@forced-tls.test", "b@opp-plain.test"]);
    for rcpt in ["a@forced-tls.test", "b@opp-plain.test"] {
        let line = lab.status(&id, rcpt, mark);
        assert!(line.contains("status=deferred"), "{line}");
        // Not for a TLS reason: no alarm, nothing held.
        let r = lab.outcome(&id, rcpt, "deferred");
        assert_eq!(r["verdict"], "not-delivered", "{r}");
        assert_eq!(r["relay"], "none", "{r}");
        assert!(r["tls_failure"].is_null(), "{r}");
    }
    // tls-policyd keeps answering as documented: policy file rules, the
    // cached DANE result, the default for a domain it cannot look up.
    let mut map = Client::from_tcp(
        lab.ns
            .tcp_connect(("127.0.0.1", lab.daemon.port()))
            .unwrap(),
    );
    for (domain, answer) in [
        ("forced-plain.test", "OK encrypt"),
        ("good.dane.test", "OK dane-only"),
        ("opp-plain.test", "OK may"),
    ] {
        assert_eq!(map.query("tls_policy", domain), answer, "{domain}");
    }
    // Back: delivered per policy.
    lab.unbound = Some(restart_unbound(&lab.ns, lab.dir.path(), &lab.unbound_conf));
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
    lab.expect(&id, "a@forced-tls.test", "sent", "encrypted", "trusted");
    lab.expect(
        &id,
        "b@opp-plain.test",
        "sent",
        "plaintext-fallback",
        "none",
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
    lab.check_log_matches_postfix(true);
    summary("DNS outage defers then delivers; broken reload keeps the old policy");
}

#[test]
fn e2e_mail_from_mynetworks_and_sasl_users_is_tagged_and_refused_early() {
    use submission::MUA_IP;
    let Some(lab) = Lab::start("e2e-mua") else {
        return;
    };
    let mark = lab.pf.log_mark();
    // A client in mynetworks (127.0.0.1) on port 25. The forced domain
    // without STARTTLS is new: nothing is known, so DUNNO, and a probe.
    let local = lab.send(
        SENDER,
        &[
            "a@forced-tls.test",
            "b@opp-plain.test",
            "c@forced-plain.test",
        ],
    );
    // A SASL-authenticated user on the submission port, from an address
    // outside mynetworks.
    let mail = Mail::to(&["d@forced-tls.test", "e@opp-plain.test"]).from("alice@src.example");
    let s = submission::submit(&lab.pf, &mail, true);
    assert!(s.status.success(), "{}", s.transcript);
    let sasl = s
        .queue_id()
        .unwrap_or_else(|| panic!("not queued:\n{}", s.transcript));
    // Without AUTH that client may not relay: relay control refuses it
    // before the policy server is asked.
    let s = submission::submit(
        &lab.pf,
        &Mail::to(&["f@opp-plain.test"]).quit_after("RCPT"),
        false,
    );
    let r = s.rcpt_reply("f@opp-plain.test");
    assert!(r.starts_with("554 5.7.1 "), "{r}\n{}", s.transcript);

    for (id, rcpt, verdict, trust) in [
        (&local, "a@forced-tls.test", "encrypted", "trusted"),
        (&local, "b@opp-plain.test", "plaintext-fallback", "none"),
        (&sasl, "d@forced-tls.test", "encrypted", "trusted"),
        (&sasl, "e@opp-plain.test", "plaintext-fallback", "none"),
    ] {
        let line = lab.status(id, rcpt, mark);
        assert!(line.contains("status=sent"), "{line}");
        lab.expect(id, rcpt, "sent", verdict, trust);
    }
    assert!(received(&lab.tls, "a@forced-tls.test").tls);
    assert!(received(&lab.tls, "d@forced-tls.test").tls);
    let line = lab.status(&local, "c@forced-plain.test", mark);
    assert!(line.contains("TLS is required"), "{line}");
    never_received(&lab.plain, "c@forced-plain.test");
    lab.expect(
        &local,
        "c@forced-plain.test",
        "deferred",
        "held",
        "not-offered",
    );

    // Tagged at RCPT: a policy record per recipient, with its decision
    // and the client it came from.
    for (rcpt, client, tls, level, source) in [
        (
            "a@forced-tls.test",
            "127.0.0.1",
            "forced",
            "encrypt",
            "static",
        ),
        (
            "b@opp-plain.test",
            "127.0.0.1",
            "opportunistic",
            "may",
            "default",
        ),
        (
            "c@forced-plain.test",
            "127.0.0.1",
            "forced",
            "encrypt",
            "static",
        ),
        ("d@forced-tls.test", MUA_IP, "forced", "encrypt", "static"),
        (
            "e@opp-plain.test",
            MUA_IP,
            "opportunistic",
            "may",
            "default",
        ),
    ] {
        let r = submission::rcpt_record(&lab.daemon, rcpt, DELIVERY);
        assert_eq!(r["client_address"], client, "{r}");
        assert_eq!(r["tls"], tls, "{r}");
        assert_eq!(r["level"], level, "{r}");
        assert_eq!(r["source"], source, "{r}");
        assert_eq!(r["action"], "DUNNO", "{r}");
    }
    assert!(
        !lab.daemon
            .decisions()
            .iter()
            .any(|r| r["recipient"] == "f@opp-plain.test"),
        "asked about mail that relay control refused"
    );
    // The milter saw the user behind the submission.
    let m = lab.milter_record(&sasl);
    assert_eq!(m["auth_user"], submission::sasl_login().as_str(), "{m}");
    assert_eq!(m["client_address"], MUA_IP, "{m}");
    assert_eq!(m["daemon_name"], "ORIGINATING", "{m}");
    assert_eq!(
        m["inbound_tls"]["version"]
            .as_str()
            .map(|v| v.starts_with("TLS")),
        Some(true),
        "{m}"
    );
    assert!(lab.milter_record(&local).get("auth_user").is_none());

    // Refused early both ways once the prober has seen that
    // forced-plain.test offers no STARTTLS.
    let deadline = std::time::Instant::now() + DELIVERY;
    while lab.metric("tls_policyd_probes_total{verdict=\"no_starttls\"}") == 0 {
        assert!(std::time::Instant::now() < deadline, "never probed");
        std::thread::sleep(Duration::from_millis(100));
    }
    let rcpt = Mail::to(&["g@forced-plain.test"]).quit_after("RCPT");
    let from_mynetworks = lab.pf.send(&rcpt).rcpt_reply("g@forced-plain.test");
    let rcpt = Mail::to(&["h@forced-plain.test"]).quit_after("RCPT");
    let from_user = submission::submit(&lab.pf, &rcpt, true).rcpt_reply("h@forced-plain.test");
    for (reply, rcpt, client) in [
        (from_mynetworks, "g@forced-plain.test", "127.0.0.1"),
        (from_user, "h@forced-plain.test", MUA_IP),
    ] {
        assert!(reply.starts_with("450 4.7.10 "), "{reply}");
        assert!(reply.contains("forced-plain.test"), "{reply}");
        let r = submission::rcpt_record(&lab.daemon, rcpt, DELIVERY);
        assert_eq!(r["client_address"], client, "{r}");
        assert_eq!(r["tls"], "forced", "{r}");
        let action = r["action"].as_str().unwrap();
        assert!(action.starts_with("DEFER_IF_PERMIT 4.7.10 "), "{r}");
    }
    lab.check_log_matches_postfix(true);
    summary(
        "documented lines: mail from mynetworks and from SASL users on submission tagged at RCPT, \
         450 4.7.10 early",
    );
}
