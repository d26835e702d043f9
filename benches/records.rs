//! Cost of writing a decision record: serialising one record of each kind
//! to its JSON line, as the writer thread does for every record.
//!
//!     cargo bench --bench records
//!
//! `BENCH_OPS` sets the records serialised per kind (default 2,000,000).

use std::hint::black_box;
use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tls_policyd::engine::decision::{Decision, Level, SourceKind, Tls};
use tls_policyd::engine::recipient::RecipientDecision;
use tls_policyd::log::record::{DecisionRecord, InboundTls};

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
    let mut r = DecisionRecord::new("socketmap", "MX.Bank.Example.", &static_decision());
    r.map = Some(Arc::from("tls_policy"));
    r.domain = Some("mx.bank.example".into());
    r
}

fn policy_rcpt() -> DecisionRecord {
    let mut r = DecisionRecord::new("policy", "Bank.Example", &static_decision());
    r.domain = Some("bank.example".into());
    r.queue_id = Some("4XyZ1".into());
    r.instance = Some("1a2b.6543.0".into());
    r.sender = Some("alice@example.com".into());
    r.recipient = Some("bob@Bank.Example".into());
    r.client_address = Some("192.0.2.25".into());
    r.reply = "DUNNO";
    r.action = Some("DUNNO".into());
    r
}

fn message(frontend: &'static str) -> DecisionRecord {
    let d = Decision::bare(Level::May, SourceKind::Default, "default");
    let mut r = DecisionRecord::new(frontend, "", &d);
    r.tls = Tls::Forced;
    r.level = None;
    r.source = SourceKind::Static;
    r.reason = Arc::from("message with 3 recipients: 3 forced, 0 opportunistic");
    r.queue_id = Some("4XyZ1".into());
    r.sender = Some("alice@example.com".into());
    r.client_address = Some("192.0.2.25".into());
    r.recipients = Some(recipients());
    r
}

fn policy_message() -> DecisionRecord {
    let mut r = message("policy");
    r.instance = Some("1a2b.6543.0".into());
    r.reply = "DUNNO";
    r.action = Some("DUNNO".into());
    r
}

fn milter_message() -> DecisionRecord {
    let mut r = message("milter");
    r.client_name = Some("client.example".into());
    r.helo_name = Some("client.example".into());
    r.mta = Some("mx.example".into());
    r.daemon_name = Some("smtpd".into());
    r.inbound_tls = Some(InboundTls {
        version: Some("TLSv1.3".into()),
        cipher: Some("TLS_AES_256_GCM_SHA384".into()),
        bits: Some(256),
        cert_subject: None,
    });
    r.message_id = Some("<1@client.example>".into());
    r.reply = "CONTINUE";
    r.action = Some("continue".into());
    r
}

fn with_ts(mut r: DecisionRecord) -> DecisionRecord {
    r.ts = SystemTime::UNIX_EPOCH + Duration::from_micros(1_767_323_045_123_456);
    r
}

/// Serialise `r` `ops` times as the writer does; ns per record and the
/// line's length.
fn serialise(r: &DecisionRecord, ops: u64) -> (f64, usize) {
    let mut out: Vec<u8> = Vec::with_capacity(256 * 1024);
    let mut len = 0;
    let start = Instant::now();
    for _ in 0..ops {
        let before = out.len();
        serde_json::to_writer(&mut out, black_box(r)).unwrap();
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
        serialise(r, ops / 10);
    }
    println!("records per kind: {ops}");
    for (name, r) in &kinds {
        let (ns, len) = serialise(r, ops);
        println!("{name:<26} {ns:>7.1} ns/record ({len} bytes)");
    }
}
