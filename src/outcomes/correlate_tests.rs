//! The join and the verdicts, from Postfix's own lines (captured from
//! the end-to-end suite, see tests/fixtures/postfix-logs/) through the
//! pipeline.

use std::time::Duration;

use super::*;
use crate::engine::decision::SourceKind;
use crate::engine::recipient::MessageSummary;
use crate::log::record::{Envelope, LookupReply, Message, MessageDoor};
use crate::outcomes::pipeline::Pipeline;

const T0: u64 = 1_796_455_854; // 2026-12-05T07:30:54Z

fn at(secs: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
}

fn decision(level: Level, source: SourceKind, rule: Option<u32>) -> Decision {
    Decision {
        level,
        policy: Arc::from(level.as_str()),
        source,
        rule,
        matched: None,
        reason: Arc::from("why"),
        ttl: Duration::from_secs(60),
        raised: false,
        temporary: false,
        published: None,
    }
}

fn lookup(domain: &str, level: Level, pid: Option<u32>, ts: u64) -> DecisionRecord {
    let mut r = DecisionRecord::new(
        None,
        Detail::Lookup(Lookup {
            map: Arc::from("tls_policy"),
            key: domain.to_string(),
            domain: Some(domain.to_string()),
            decision: decision(level, SourceKind::Static, Some(1)),
            reply: LookupReply::Ok,
            client_pid: pid,
        }),
    );
    r.head.ts = at(ts);
    r
}

fn milter_message(queue_id: &str, rcpt: &str, level: Level, ts: u64) -> DecisionRecord {
    let domain = rcpt.rsplit_once('@').map(|(_, d)| d.to_string());
    let summary = MessageSummary {
        recipients: vec![RecipientDecision {
            recipient: Some(rcpt.to_string()),
            domain,
            tls: level.tls(),
            level: Arc::from(format!("{level} match=x").as_str()),
            source: SourceKind::Static,
            rule: Some(3),
            reason: Arc::from("rcpt"),
            action: None,
        }],
        dropped: 0,
        cap: 10,
        sender_rule: None,
        empty_reason: "none",
    };
    let door = MessageDoor::Milter(Box::default());
    let mut r = DecisionRecord::new(
        Some(queue_id.to_string()),
        Detail::Message(Message::new(summary, Envelope::default(), door)),
    );
    r.head.ts = at(ts);
    r
}

/// Judge every delivery in `log` (lines of one Postfix log).
fn judge_all(
    index: &DecisionIndex,
    log: &str,
    rule_for: &dyn Fn(&str) -> Option<Decision>,
) -> Vec<Judged> {
    let mut p = Pipeline::new(8192, Vec::new());
    p.set_clock(at(T0), 0);
    let mut out = Vec::new();
    p.feed(log.as_bytes(), true, &mut |d, facts| {
        out.push(index.judge(d, facts, rule_for))
    });
    out
}

fn no_rule(_: &str) -> Option<Decision> {
    None
}

fn index() -> DecisionIndex {
    DecisionIndex::new(IndexLimits::default(), IndexObservers::default())
}

const VERIFIED: &str = "Dec 05 07:30:54 out postfix/smtp[4932]: Verified TLS connection established to mx.verified.test[127.0.0.11]:25: TLSv1.3 with cipher TLS_AES_256_GCM_SHA384 (256/256 bits) key-exchange X25519 server-signature RSA-PSS (2048 bits) server-digest SHA256
Dec 05 07:30:54 out postfix/smtp[4932]: 7738D98C11B: to=<a@verified.test>, relay=mx.verified.test[127.0.0.11]:25, delay=0.2, delays=0.03/0.03/0.06/0.08, dsn=2.0.0, status=sent (250 2.0.0 Ok: queued as 9974198C1B7)
Dec 05 07:30:54 out postfix/smtp[4932]: 7738D98C11B: to=<real@verified.test>, orig_to=<alias@verified.test>, relay=mx.verified.test[127.0.0.11]:25, delay=0.2, delays=0.03/0.03/0.06/0.08, dsn=2.0.0, status=sent (250 2.0.0 Ok: queued as 9974198C1B7)
";

const PLAIN: &str = "Dec 05 07:30:54 out postfix/smtp[4949]: A739398C11B: to=<a@plain.test>, relay=mx.plain.test[127.0.0.13]:25, delay=0.07, delays=0.02/0/0.02/0.03, dsn=2.0.0, status=sent (250 2.0.0 Ok: queued as B1B0098C1C2)
";

const NOT_OFFERED: &str = "Dec 05 07:30:54 out postfix/smtp[4937]: AD56598C1BE: to=<a@forced.test>, relay=mx.forced.test[127.0.0.13]:25, delay=0.04, delays=0.01/0.02/0.01/0, dsn=4.7.4, status=deferred (TLS is required, but was not offered by host mx.forced.test[127.0.0.13])
";

const NO_POLICY: &str = "Dec 05 07:30:54 out postfix/smtp[4950]: warning: TLS policy lookup for forced.test/mx.forced.test: client TLS configuration problem
Dec 05 07:30:54 out postfix/smtp[4950]: C0FFEE11B: to=<b@forced.test>, relay=none, delay=0.01, delays=0/0/0/0, dsn=4.7.5, status=deferred (client TLS configuration problem)
";

#[test]
fn the_asking_process_governs_its_deliveries() {
    let ix = index();
    // Another process asked for the same hop later, with another answer:
    // the delivery's own process wins.
    ix.note_record(&lookup("verified.test", Level::Secure, Some(4932), T0 - 5));
    ix.note_record(&lookup("verified.test", Level::May, Some(9999), T0 - 1));
    let j = judge_all(&ix, VERIFIED, &no_rule);
    assert_eq!(j.len(), 2);
    for x in &j {
        let g = x.outcome.governing.as_ref().unwrap();
        assert_eq!((g.by, &*g.level), (DecidedBy::Socketmap, "secure"));
        assert_eq!(x.outcome.verdict, Verdict::Verified);
        assert_eq!(x.outcome.tls_trust, TlsTrust::Verified);
        assert_eq!(x.outcome.tls_protocol.as_deref(), Some("TLSv1.3"));
        assert_eq!(x.alarm, None);
        assert_eq!(x.queue_id, "7738D98C11B");
        assert_eq!(x.outcome.transport, "postfix/smtp");
        assert_eq!(x.outcome.relay, "mx.verified.test[127.0.0.11]:25");
        assert_eq!(x.outcome.logged_at, at(T0));
    }
    assert_eq!(j[1].outcome.orig_to.as_deref(), Some("alias@verified.test"));
    // Without a lookup of its own, the latest lookup for the hop.
    let ix = index();
    ix.note_record(&lookup("verified.test", Level::May, None, T0 - 1));
    let j = judge_all(&ix, VERIFIED, &no_rule);
    assert_eq!(&*j[0].outcome.governing.as_ref().unwrap().level, "may");
    assert_eq!(j[0].outcome.verdict, Verdict::Verified);
}

#[test]
fn the_relay_host_and_parent_domains_name_the_hop() {
    let ix = index();
    ix.note_record(&lookup("mx.plain.test", Level::Encrypt, None, T0 - 1));
    let j = judge_all(&ix, PLAIN, &no_rule);
    assert_eq!(j[0].outcome.verdict, Verdict::Violation);
    assert_eq!(j[0].alarm, Some(Alarm::Violation));
    let ix = index();
    ix.note_record(&lookup("test", Level::May, None, T0 - 1));
    let j = judge_all(&ix, PLAIN, &no_rule);
    assert_eq!(j[0].outcome.verdict, Verdict::PlaintextFallback);
}

#[test]
fn lookups_older_than_the_window_govern_nothing() {
    let ix = index();
    let window = IndexLimits::default().hop_window.as_secs();
    ix.note_record(&lookup(
        "plain.test",
        Level::Encrypt,
        Some(4949),
        T0 - window,
    ));
    let j = judge_all(&ix, PLAIN, &no_rule);
    assert_eq!(j[0].outcome.verdict, Verdict::Undecided);
    assert!(j[0].outcome.governing.is_none());
    assert_eq!(j[0].alarm, None);
    // One second younger: still in force.
    ix.note_record(&lookup(
        "plain.test",
        Level::Encrypt,
        Some(4949),
        T0 - window + 1,
    ));
    assert_eq!(
        judge_all(&ix, PLAIN, &no_rule)[0].outcome.verdict,
        Verdict::Violation
    );
}

#[test]
fn a_line_read_late_is_judged_by_the_lookup_in_force_when_it_was_logged() {
    // Read after a restart: the hop was looked up again since, with
    // another answer.
    let ix = index();
    ix.note_record(&lookup("plain.test", Level::May, None, T0 - 10));
    ix.note_record(&lookup("plain.test", Level::May, None, T0 - 5));
    ix.note_record(&lookup("plain.test", Level::Encrypt, None, T0 + 30));
    let j = judge_all(&ix, PLAIN, &no_rule);
    assert_eq!(j[0].outcome.verdict, Verdict::PlaintextFallback);
    // The same, the earlier lookups read back from the decision log after
    // the later one was noted.
    let ix = index();
    ix.note_record(&lookup("plain.test", Level::Encrypt, None, T0 + 30));
    let may = decision(Level::May, SourceKind::Static, Some(1));
    ix.note_hop("plain.test", None, &may, at(T0 - 10));
    assert_eq!(
        judge_all(&ix, PLAIN, &no_rule)[0].outcome.verdict,
        Verdict::PlaintextFallback
    );
    // A line logged after the later lookup: the later one.
    let late = PLAIN.replace("07:30:54", "07:31:30");
    assert_eq!(
        judge_all(&ix, &late, &no_rule)[0].outcome.verdict,
        Verdict::Violation
    );
}

#[test]
fn rcpt_time_decisions_govern_by_queue_id() {
    let ix = index();
    ix.note_record(&milter_message(
        "7738D98C11B",
        "alias@Verified.test",
        Level::Verify,
        T0 - 60,
    ));
    let j = judge_all(&ix, VERIFIED, &no_rule);
    // a@ matches by domain, real@ by its original address.
    for x in &j {
        let g = x.outcome.governing.as_ref().unwrap();
        assert_eq!(
            (g.by, &*g.level, g.rule),
            (DecidedBy::Milter, "verify match=x", Some(3))
        );
        assert_eq!(x.outcome.verdict, Verdict::Verified);
    }
}

#[test]
fn held_unreachable_and_bypassed() {
    let ix = index();
    ix.note_record(&lookup("forced.test", Level::Encrypt, Some(4937), T0 - 1));
    let j = judge_all(&ix, NOT_OFFERED, &no_rule);
    assert_eq!(j[0].outcome.verdict, Verdict::Held);
    assert_eq!(j[0].outcome.tls_failure, Some("not-offered"));
    assert_eq!(j[0].outcome.status, "deferred");

    let j = judge_all(&index(), NO_POLICY, &no_rule);
    assert_eq!(j[0].outcome.verdict, Verdict::PolicyUnreachable);
    assert_eq!(j[0].outcome.tls_failure, Some("config-problem"));
    assert_eq!(j[0].alarm, Some(Alarm::PolicyUnreachable));

    // Nobody asked; the operator's rule forces the domain.
    let forced = |d: &str| {
        (d == "plain.test").then(|| decision(Level::Encrypt, SourceKind::Static, Some(7)))
    };
    let j = judge_all(&index(), PLAIN, &forced);
    let g = j[0].outcome.governing.as_ref().unwrap();
    assert_eq!((g.by, g.rule), (DecidedBy::Rule, Some(7)));
    assert_eq!(j[0].outcome.verdict, Verdict::Violation);
    assert!(j[0].forced_by_rule);
    let j = judge_all(&index(), VERIFIED, &|_| {
        decision(Level::Encrypt, SourceKind::Static, Some(7)).into()
    });
    assert_eq!(j[0].outcome.verdict, Verdict::Undecided);
    assert_eq!(j[0].alarm, Some(Alarm::UndecidedForced));
}

/// Postfix 3.7's lines for a transport whose `smtp_tls_policy_maps` names
/// a socket nobody listens on (tests/e2e.rs).
const UNREACHABLE: &str = "Dec 05 11:21:23 mx postfix/nomap/smtp[8997]: warning: connect to tls-policyd/gone.sock: No such file or directory
Dec 05 11:21:23 mx postfix/nomap/smtp[8997]: warning: table socketmap:unix:tls-policyd/gone.sock:tls_policy lookup error: No such file or directory
Dec 05 11:21:23 mx postfix/nomap/smtp[8997]: warning: socketmap:unix:tls-policyd/gone.sock:tls_policy lookup error for \"forced-unreach.test\"
Dec 05 11:21:23 mx postfix/nomap/smtp[8997]: warning: smtp_tls_policy_maps, next-hop destination \"forced-unreach.test\": policy table lookup error
Dec 05 11:21:23 mx postfix/nomap/smtp[8997]: warning: TLS policy lookup for forced-unreach.test/mx-tls.sink.test: client TLS configuration problem
Dec 05 11:21:23 mx postfix/nomap/smtp[8997]: 11E8E9A23E8: to=<a@forced-unreach.test>, relay=none, delay=0.04, delays=0.01/0.03/0/0, dsn=4.7.5, status=deferred (client TLS configuration problem)
";

#[test]
fn a_delivery_without_a_policy_is_not_joined_with_others_lookups() {
    // The same next hop looked up through a map that works (another
    // transport, postmap -q): not what this smtp process got.
    let ix = index();
    ix.note_record(&lookup("forced-unreach.test", Level::Encrypt, None, T0 - 1));
    let unreachable = UNREACHABLE.replace("Dec 05 11:21:23", "Dec 05 07:30:54");
    let j = judge_all(&ix, &unreachable, &no_rule);
    assert_eq!(j.len(), 1);
    let o = &j[0].outcome;
    assert_eq!(o.verdict, Verdict::PolicyUnreachable);
    assert_eq!(o.transport, "postfix/nomap/smtp");
    assert_eq!(o.tls_failure, Some("config-problem"));
    assert!(o.governing.is_none(), "{:?}", o.governing);
    assert_eq!(j[0].alarm, Some(Alarm::PolicyUnreachable));
    // What it should have had: the message's RCPT-time decision, else the
    // operator's rule.
    ix.note_record(&milter_message(
        "11E8E9A23E8",
        "a@forced-unreach.test",
        Level::Encrypt,
        T0 - 2,
    ));
    let j = judge_all(&ix, &unreachable, &no_rule);
    let g = j[0].outcome.governing.as_ref().unwrap();
    assert_eq!(g.by, DecidedBy::Milter);
    let forced = |_: &str| Some(decision(Level::Encrypt, SourceKind::Static, Some(7)));
    let j = judge_all(&index(), &unreachable, &forced);
    let g = j[0].outcome.governing.as_ref().unwrap();
    assert_eq!((g.by, g.rule), (DecidedBy::Rule, Some(7)));
    assert_eq!(j[0].outcome.verdict, Verdict::PolicyUnreachable);
}

#[test]
fn outcome_record_line() {
    let ix = index();
    ix.note_record(&lookup("verified.test", Level::Secure, Some(4932), T0 - 5));
    let j = judge_all(&ix, VERIFIED, &no_rule).remove(1);
    let mut rec = DecisionRecord::new(Some(j.queue_id), Detail::Delivery(Box::new(j.outcome)));
    rec.head.ts = at(T0) + Duration::from_micros(250);
    assert_eq!(rec.to_json_line(), serde_json::to_string(&rec).unwrap());
    assert_eq!(
        rec.to_json_line(),
        r#"{"ts":"2026-12-05T07:30:54.000250Z","frontend":"delivery","queue_id":"7738D98C11B","recipient":"real@verified.test","orig_to":"alias@verified.test","domain":"verified.test","relay":"mx.verified.test[127.0.0.11]:25","transport":"postfix/smtp","status":"sent","dsn":"2.0.0","status_text":"250 2.0.0 Ok: queued as 9974198C1B7","tls_trust":"verified","tls_protocol":"TLSv1.3","tls_cipher":"TLS_AES_256_GCM_SHA384","decided_by":"socketmap","tls":"forced","level":"secure","source":"static","rule":1,"reason":"why","verdict":"verified","logged_at":"2026-12-05T07:30:54.000000Z","delay":0.2}"#
    );
}

#[test]
fn delivery_records_are_not_indexed_and_sizes_are_kept() {
    let ix = index();
    ix.note_record(&lookup("a.test", Level::May, Some(1), T0));
    ix.note_record(&lookup("b.test", Level::May, Some(1), T0));
    ix.note_record(&milter_message("Q1", "x@a.test", Level::Encrypt, T0));
    assert_eq!(ix.sizes(), (2, 1, 1));
    let j = judge_all(&ix, PLAIN, &no_rule).remove(0);
    ix.note_record(&DecisionRecord::new(
        Some(j.queue_id),
        Detail::Delivery(Box::new(j.outcome)),
    ));
    assert_eq!(ix.sizes(), (2, 1, 1));
}
