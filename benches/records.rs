//! Cost of writing a decision record: serialising one record of each kind
//! to its JSON line, as the decision log does for every record (its line
//! writer), and through serde_json (the same bytes) for comparison.
//!
//!     cargo bench --bench records
//!
//! `BENCH_OPS` sets the records serialised per kind (default 2,000,000).

use std::hint::black_box;
use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tls_policyd::engine::decision::{Decision, Level, SourceKind, Tls};
use tls_policyd::engine::recipient::{MessageSummary, RecipientDecision};
use tls_policyd::log::record::{
    DecisionRecord, Detail, Envelope, InboundTls, Lookup, LookupReply, Message, MessageDoor,
    MilterMessage, PolicyAction, Recipient,
};

fn static_decision() -> Decision {
    Decision {
        level: Level::Secure,
        policy: Arc::from("secure match=mx1.bank.example:mx2.bank.example"),
        source: SourceKind::Static,
        rule: Some(2),
        matched: Some(Arc::from(".bank.example")),
        reason: Arc::from("PCI partner: never in plaintext"),
        ttl: Duration::from_secs(1),
        raised: false,
        temporary: false,
        published: None,
    }
}

fn recipients() -> Vec<RecipientDecision> {
    (0..3)
        .map(|i| RecipientDecision {
            recipient: Some(format!("user{i}@bank{i}.example")),
            domain: Some(format!("bank{i}.example")),
            tls: Tls::Forced,
            level: Arc::from("encrypt"),
            source: SourceKind::Static,
            rule: Some(1),
            reason: Arc::from("PCI partner"),
            action: Some("DUNNO".into()),
        })
        .collect()
}

fn lookup() -> DecisionRecord {
    DecisionRecord::new(
        None,
        Detail::Lookup(Lookup {
            map: Arc::from("tls_policy"),
            key: "MX.Bank.Example.".into(),
            domain: Some("mx.bank.example".into()),
            decision: static_decision(),
            reply: LookupReply::Ok,
            client_pid: Some(4242),
        }),
    )
}

fn envelope() -> Envelope {
    Envelope {
        sender: "alice@example.com".into(),
        client_address: Some("192.0.2.25".into()),
    }
}

fn policy_rcpt() -> DecisionRecord {
    DecisionRecord::new(
        Some("4XyZ1".into()),
        Detail::Recipient(Recipient {
            key: "Bank.Example".into(),
            domain: Some("bank.example".into()),
            decision: static_decision(),
            instance: Some("1a2b.6543.0".into()),
            envelope: envelope(),
            recipient: "bob@Bank.Example".into(),
            action: PolicyAction::Dunno,
            sender_rule: None,
        }),
    )
}

fn message(door: MessageDoor) -> DecisionRecord {
    let summary = MessageSummary {
        recipients: recipients(),
        dropped: 0,
        cap: 1000,
        sender_rule: None,
        empty_reason: "none",
    };
    DecisionRecord::new(
        Some("4XyZ1".into()),
        Detail::Message(Message::new(summary, envelope(), door)),
    )
}

fn policy_message() -> DecisionRecord {
    message(MessageDoor::Policy {
        instance: Some("1a2b.6543.0".into()),
        action: PolicyAction::Dunno,
    })
}

fn milter_message() -> DecisionRecord {
    message(MessageDoor::Milter(Box::new(MilterMessage {
        client_name: Some("client.example".into()),
        helo_name: Some("client.example".into()),
        mta: Some("mx.example".into()),
        daemon_name: Some("smtpd".into()),
        inbound_tls: Some(InboundTls {
            version: Some("TLSv1.3".into()),
            cipher: Some("TLS_AES_256_GCM_SHA384".into()),
            bits: Some(256),
            cert_subject: None,
        }),
        message_id: Some("<1@client.example>".into()),
        ..MilterMessage::default()
    })))
}

fn with_ts(mut r: DecisionRecord) -> DecisionRecord {
    r.head.ts = SystemTime::UNIX_EPOCH + Duration::from_micros(1_767_323_045_123_456);
    r
}

/// How a record becomes its line.
#[derive(Clone, Copy)]
enum Sink {
    /// The line writer the decision log uses.
    Line,
    /// serde_json through the record's `Serialize` (the same bytes).
    Serde,
}

/// Serialise `r` `ops` times through `sink`; ns per record and the line's
/// length.
fn serialise(r: &DecisionRecord, ops: u64, sink: Sink) -> (f64, usize) {
    let mut out: Vec<u8> = Vec::with_capacity(256 * 1024);
    let mut len = 0;
    let start = Instant::now();
    for _ in 0..ops {
        let before = out.len();
        match sink {
            Sink::Line => black_box(r).write_json(&mut out).unwrap(),
            Sink::Serde => serde_json::to_writer(&mut out, black_box(r)).unwrap(),
        }
        out.write_all(b"\n").unwrap();
        len = out.len() - before;
        if out.len() > 200 * 1024 {
            out.clear();
        }
    }
    (start.elapsed().as_nanos() as f64 / ops as f64, len)
}

fn main() {
    let ops: u64 = std::env::var("BENCH_OPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2_000_000);
    let kinds = [
        ("socketmap lookup", with_ts(lookup())),
        ("policy RCPT", with_ts(policy_rcpt())),
        ("policy message (3 rcpt)", with_ts(policy_message())),
        ("milter message (3 rcpt)", with_ts(milter_message())),
    ];
    for (_, r) in &kinds {
        serialise(r, ops / 10, Sink::Line);
        serialise(r, ops / 10, Sink::Serde);
    }
    println!("records per kind: {ops}; the decision log's line writer, then serde_json");
    for (name, r) in &kinds {
        let (ns, len) = serialise(r, ops, Sink::Line);
        let (serde_ns, _) = serialise(r, ops, Sink::Serde);
        println!("{name:<26} {ns:>7.1} ns/record ({len} bytes); serde_json {serde_ns:>7.1} ns");
    }
}
