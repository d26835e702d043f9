//! The outcome parser (`tls_policyd::outcomes`) on what the installed
//! Postfix logs now, so that a Postfix upgrade that changes a line shows up
//! here (the unit tests parse lines captured once, see
//! `tests/fixtures/postfix-logs/README.md`).
//!
//! Inside a network namespace with only `lo`: SMTP sinks on 127.0.0.21
//! (STARTTLS, certificate from a test CA) and 127.0.0.23 (no STARTTLS),
//! found through the namespace's `hosts` file; a private Postfix with
//! `smtp_tls_loglevel = 1`, `transport_maps` to `smtp:[mx-…]`, a texthash
//! TLS policy (`secure` for the CA-signed sink, `encrypt` for a name of the
//! plaintext one) and a transport whose policy map is a socketmap nobody
//! answers. Its `maillog_file` goes byte by byte through the line
//! splitter, the syslog parser, the event parser and the connection
//! tracker. Needs root, `ip`, Postfix and swaks; skipped with
//! `SKIP_POSTFIX_TESTS=1`.

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use common::netns::Netns;
use common::postfix::{Mail, Postfix, PostfixOptions};
use common::smtp::{SinkTls, SmtpSink, TestCa};
use tls_policyd::outcomes::connections::{AttributedDelivery, ConnectionTracker, ProcessKey};
use tls_policyd::outcomes::event_of;
use tls_policyd::outcomes::lines::{Line, LineSplitter};
use tls_policyd::outcomes::postfix::{Event, Status, TlsFailureKind, Trust};
use tls_policyd::outcomes::syslog::{YearHint, parse_line};

const TOOLS: &[&str] = &["postfix", "postqueue", "swaks"];
const DELIVERY: Duration = Duration::from_secs(30);

const RECIPIENTS: [&str; 5] = [
    "a@verified.test",
    "b@verified.test",
    "p@plain.test",
    "f@forced.test",
    "m@pm.test",
];

#[test]
fn outcomes_parse_what_this_postfix_logs() {
    let Some(ns) = Netns::for_test("tlspd-outc", TOOLS) else {
        return;
    };
    let hosts = ns.etc_dir().join("hosts");
    let mut text = std::fs::read_to_string(&hosts).unwrap();
    text.push_str("127.0.0.21 mx-ca.test\n127.0.0.23 mx-plain.test mx-forced.test\n");
    std::fs::write(&hosts, text).unwrap();

    let ca = Arc::new(TestCa::new());
    let ca_tls = SinkTls::issued_by(&ca, &["mx-ca.test"]);
    let (_tls_sink, _plain_sink) = ns.run_in(move || {
        (
            SmtpSink::start("127.0.0.21", 25, ca_tls),
            SmtpSink::start("127.0.0.23", 25, SinkTls::None),
        )
    });
    let pf = Postfix::start(
        &ns,
        PostfixOptions::default()
            .file("ca.pem", ca.pem())
            .file(
                "transport",
                "verified.test smtp:[mx-ca.test]\nplain.test smtp:[mx-plain.test]\n\
                 forced.test smtp:[mx-forced.test]\npm.test smtp-pm:[mx-ca.test]\n",
            )
            .file(
                "tls_policy",
                "[mx-ca.test] secure match=mx-ca.test\n[mx-forced.test] encrypt\n",
            )
            .set("transport_maps", "texthash:$config_directory/transport")
            .set(
                "smtp_tls_policy_maps",
                "texthash:$config_directory/tls_policy",
            )
            .set("smtp_tls_security_level", "may")
            .set("smtp_tls_loglevel", "1")
            .set("smtp_tls_CAfile", "$config_directory/ca.pem")
            .set("disable_dns_lookups", "yes")
            .set("smtp_host_lookup", "native")
            .master_line(
                "smtp-pm unix - - n - - smtp \
                 -o smtp_tls_policy_maps=socketmap:inet:127.0.0.1:9:policy",
            ),
    );
    for to in [
        &RECIPIENTS[..2],
        &RECIPIENTS[2..3],
        &RECIPIENTS[3..4],
        &RECIPIENTS[4..],
    ] {
        let s = pf.send(&Mail::to(to));
        assert!(s.status.success(), "{}", s.transcript);
    }
    for r in RECIPIENTS {
        let to = format!("to=<{r}>, relay=");
        pf.wait_for_log(|line| line.contains(&to), DELIVERY);
    }

    // The log, one byte at a time, through the whole chain.
    let bytes = std::fs::read(pf.log_path()).unwrap();
    let hint = YearHint::from_system_time(SystemTime::now());
    let mut splitter = LineSplitter::default();
    let mut tracker = ConnectionTracker::default();
    let mut deliveries: HashMap<String, AttributedDelivery> = HashMap::new();
    let mut events: Vec<Event> = Vec::new();
    let mut not_understood = Vec::new();
    for b in &bytes {
        splitter.push(std::slice::from_ref(b), |line| {
            let Line::Complete(line) = line else {
                panic!("over-long line in {}", pf.log_path().display());
            };
            let l = parse_line(line, hint).unwrap_or_else(|e| {
                panic!("{e}: {}", String::from_utf8_lossy(line));
            });
            if !matches!(l.daemon(), "smtp" | "lmtp") {
                return;
            }
            let ev = event_of(&l);
            if ev == Event::Unknown {
                not_understood.push(l.message.to_string());
            }
            events.push(ev.clone());
            let key = ProcessKey {
                host: l.host.to_string(),
                program: l.program.to_string(),
                pid: l.pid.expect("smtp lines carry a pid"),
            };
            if let Some(a) = tracker.observe(&key, ev) {
                deliveries.entry(a.delivery.to.clone()).or_insert(a);
            }
        });
    }
    assert_eq!(splitter.pending(), 0);
    assert!(
        not_understood.is_empty(),
        "smtp lines not understood: {not_understood:#?}"
    );

    let trust = |to: &str| {
        let a = deliveries
            .get(to)
            .unwrap_or_else(|| panic!("no status line for {to}\n{}", pf.diagnostics()));
        (
            a.delivery.status.clone(),
            a.connection
                .as_ref()
                .and_then(|c| c.tls.as_ref())
                .map(|t| t.trust),
            a.delivery.tls_failure(),
        )
    };
    assert_eq!(
        trust("a@verified.test"),
        (Status::Sent, Some(Trust::Verified), None)
    );
    assert_eq!(
        trust("b@verified.test"),
        (Status::Sent, Some(Trust::Verified), None)
    );
    assert_eq!(trust("p@plain.test"), (Status::Sent, None, None));
    assert_eq!(
        trust("f@forced.test"),
        (Status::Deferred, None, Some(TlsFailureKind::NotOffered))
    );
    assert_eq!(
        trust("m@pm.test"),
        (Status::Deferred, None, Some(TlsFailureKind::ConfigProblem))
    );
    assert!(
        events.iter().any(
            |e| matches!(e, Event::PolicyLookupFailed { nexthop, .. } if nexthop == "[mx-ca.test]")
        ),
        "no `TLS policy lookup` warning"
    );
    assert!(
        events.iter().any(|e| matches!(
            e,
            Event::TableLookupError { table, .. } if table == "socketmap:inet:127.0.0.1:9:policy"
        )),
        "no socketmap lookup error"
    );
}
