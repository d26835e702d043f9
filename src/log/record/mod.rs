//! Decision records and the writer that puts them on disk off the hot path.
//!
//! A record is a [`RecordHead`] (time, front door, queue id) and one
//! [`Detail`] per kind: a socketmap [`Lookup`], a policy-server RCPT
//! [`Recipient`], or a [`Message`] (the policy server at END-OF-MESSAGE and
//! the milter). What was answered is typed: [`LookupReply`],
//! [`PolicyAction`], [`MilterOutcome`]. Each serialises to one JSON line
//! (`serialize.rs`, written by hand so the fields come in the documented
//! order whatever the kind).
//!
//! Front doors hand a [`DecisionRecord`] to [`DecisionLog::log`], which only
//! queues it; a dedicated thread (`writer.rs`) serialises records as JSON
//! lines, writes them in batches and flushes. A full queue (the disk
//! stalled) drops the record and counts it rather than slowing lookups; the
//! count is reported in the operational log.

mod delivery;
mod serialize;
mod writer;

use std::fmt;
use std::sync::Arc;
use std::time::SystemTime;

use serde::Serialize;

use crate::engine::decision::Decision;
use crate::engine::recipient::{MessageSummary, MessageVerdict, RecipientDecision};

pub use delivery::{DecidedBy, DeliveryOutcome, GoverningDecision};
pub use writer::{BATCH_INTERVAL, DecisionLog, LOG_QUEUE_CAPACITY, RecordTap, Target};

/// A front door: where decisions come from. The record's `frontend`, and
/// the metrics' `frontend` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Frontend {
    Socketmap,
    Policy,
    Milter,
}

impl Frontend {
    pub const ALL: [Frontend; 3] = [Frontend::Socketmap, Frontend::Policy, Frontend::Milter];

    /// `socketmap`, `policy` or `milter`.
    pub fn as_str(self) -> &'static str {
        match self {
            Frontend::Socketmap => "socketmap",
            Frontend::Policy => "policy",
            Frontend::Milter => "milter",
        }
    }
}

/// One decision, as written to the decision log.
#[derive(Debug, Clone)]
pub struct DecisionRecord {
    pub head: RecordHead,
    pub detail: Detail,
}

/// What every record starts with.
#[derive(Debug, Clone)]
pub struct RecordHead {
    pub ts: SystemTime,
    /// Postfix queue id, when the front door (or the delivery) knows it.
    pub queue_id: Option<String>,
}

/// The kind of record and what only that kind has.
#[derive(Debug, Clone)]
pub enum Detail {
    /// One socketmap lookup.
    Lookup(Lookup),
    /// One policy-server RCPT.
    Recipient(Recipient),
    /// One message: policy server END-OF-MESSAGE, or the milter.
    Message(Message),
    /// One delivery attempt read from Postfix's log, with its verdict.
    Delivery(Box<DeliveryOutcome>),
}

impl Detail {
    /// The front door that writes this kind of record; `None` for a
    /// delivery outcome (written by the outcome follower).
    pub fn frontend(&self) -> Option<Frontend> {
        match self {
            Detail::Lookup(_) => Some(Frontend::Socketmap),
            Detail::Recipient(_) => Some(Frontend::Policy),
            Detail::Message(m) => Some(match m.door {
                MessageDoor::Policy { .. } => Frontend::Policy,
                MessageDoor::Milter(_) => Frontend::Milter,
            }),
            Detail::Delivery(_) => None,
        }
    }

    /// The record's `frontend` field: the door, or `delivery`.
    pub fn written_by(&self) -> &'static str {
        self.frontend().map_or("delivery", Frontend::as_str)
    }
}

impl DecisionRecord {
    /// A record made now; the front door follows from the detail.
    pub fn new(queue_id: Option<String>, detail: Detail) -> DecisionRecord {
        DecisionRecord {
            head: RecordHead {
                ts: SystemTime::now(),
                queue_id,
            },
            detail,
        }
    }
}

/// A socketmap lookup: the map asked, the key, the decision and the reply.
#[derive(Debug, Clone)]
pub struct Lookup {
    /// The socketmap name the lookup came in on.
    pub map: Arc<str>,
    /// The key exactly as received.
    pub key: String,
    /// The key's domain or host name, normalised (lower case, A-labels, no
    /// trailing dot): `example.com` for `.example.com` and `host` for
    /// `[host]:25`. Absent when the key was not a destination.
    pub domain: Option<String>,
    /// The decision the map stands for (raised for the forced map).
    pub decision: Decision,
    /// `level` (the decision's policy text) is written only with `OK`.
    pub reply: LookupReply,
    /// The process that asked, when it came over a unix socket
    /// (`SO_PEERCRED`): the `postfix/smtp[PID]` whose deliveries the
    /// decision governs.
    pub client_pid: Option<u32>,
}

/// A lookup's record, borrowed from what the socketmap has at hand: the
/// decision log writes it without an owned [`Lookup`]
/// ([`DecisionLog::log_lookup`]).
#[derive(Debug, Clone, Copy)]
pub struct LookupLine<'a> {
    pub map: &'a str,
    pub key: &'a str,
    pub domain: Option<&'a str>,
    pub decision: &'a Decision,
    pub reply: LookupReply,
    pub client_pid: Option<u32>,
}

impl Lookup {
    pub fn line(&self) -> LookupLine<'_> {
        LookupLine {
            map: &self.map,
            key: &self.key,
            domain: self.domain.as_deref(),
            decision: &self.decision,
            reply: self.reply,
            client_pid: self.client_pid,
        }
    }
}

impl LookupLine<'_> {
    /// The owned record, made at `ts`.
    pub fn record(&self, ts: SystemTime) -> DecisionRecord {
        DecisionRecord {
            head: RecordHead { ts, queue_id: None },
            detail: Detail::Lookup(Lookup {
                map: Arc::from(self.map),
                key: self.key.to_string(),
                domain: self.domain.map(str::to_string),
                decision: self.decision.clone(),
                reply: self.reply,
                client_pid: self.client_pid,
            }),
        }
    }
}

/// The socketmap reply code of a recorded lookup. (`PERM`, for a map name
/// the daemon does not serve, goes to the operational log only.)
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LookupReply {
    Ok,
    NotFound,
    /// The source could not decide now: Postfix defers delivery.
    Temp,
}

impl LookupReply {
    pub fn as_str(self) -> &'static str {
        match self {
            LookupReply::Ok => "OK",
            LookupReply::NotFound => "NOTFOUND",
            LookupReply::Temp => "TEMP",
        }
    }
}

/// Who sent a message, as the policy server and the milter know it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Envelope {
    /// The envelope sender (`""` for the null sender: written, not left
    /// out).
    pub sender: String,
    /// The SMTP client's IP address.
    pub client_address: Option<String>,
}

/// A policy-server RCPT: the recipient's domain decided, and the answer.
#[derive(Debug, Clone)]
pub struct Recipient {
    /// The recipient's domain part as received.
    pub key: String,
    /// Normalised; absent when the domain part is not a destination.
    pub domain: Option<String>,
    pub decision: Decision,
    /// Postfix's `instance` attribute (one per message within an SMTP
    /// session).
    pub instance: Option<String>,
    pub envelope: Envelope,
    /// The recipient the decision is for.
    pub recipient: String,
    pub action: PolicyAction,
    /// The `[[sender_rule]]` that forces TLS for the message (1-based).
    pub sender_rule: Option<u32>,
}

/// One message: what its recipients come to, every recipient's decision,
/// and what the door did.
#[derive(Debug, Clone)]
pub struct Message {
    /// `tls`, `source` and `reason` of the whole message.
    pub verdict: MessageVerdict,
    pub envelope: Envelope,
    pub recipients: Vec<RecipientDecision>,
    /// The `[[sender_rule]]` that forces TLS for the message (1-based).
    pub sender_rule: Option<u32>,
    pub door: MessageDoor,
}

impl Message {
    /// The message of `summary` (see [`MessageSummary::verdict`]).
    pub fn new(summary: MessageSummary<'_>, envelope: Envelope, door: MessageDoor) -> Message {
        Message {
            verdict: summary.verdict(),
            envelope,
            sender_rule: summary.sender_rule,
            recipients: summary.recipients,
            door,
        }
    }
}

/// What only one door knows about a message.
#[derive(Debug, Clone)]
pub enum MessageDoor {
    /// The policy server at END-OF-MESSAGE.
    Policy {
        instance: Option<String>,
        action: PolicyAction,
    },
    Milter(Box<MilterMessage>),
}

/// What the milter knows about a message besides its recipients.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MilterMessage {
    /// The SMTP client's host name as the MTA resolved it.
    pub client_name: Option<String>,
    /// The name the client gave in HELO/EHLO.
    pub helo_name: Option<String>,
    /// The MTA's own host name (macro `j`).
    pub mta: Option<String>,
    /// The receiving service (macro `{daemon_name}`).
    pub daemon_name: Option<String>,
    /// The inbound connection's TLS; absent for plaintext.
    pub inbound_tls: Option<InboundTls>,
    /// The SASL-authenticated user (macro `{auth_authen}`).
    pub auth_user: Option<String>,
    /// The message's `Message-ID` header, as written.
    pub message_id: Option<String>,
    /// The message carries the RFC 8689 `TLS-Required: No` header.
    pub tls_required_no: bool,
    /// The sender asked for REQUIRETLS (RFC 8689) in MAIL FROM.
    pub requiretls: bool,
    pub outcome: MilterOutcome,
}

/// The TLS of the connection a message came in on (milter macros
/// `{tls_version}`, `{cipher}`, `{cipher_bits}`, `{cert_subject}`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct InboundTls {
    /// `TLSv1.3`
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cipher: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bits: Option<u32>,
    /// The client certificate's subject, when the client presented one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cert_subject: Option<String>,
}

/// A policy server answer. `reply` is its verb; `action` (and the wire)
/// its text ([`fmt::Display`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PolicyAction {
    /// `DUNNO`
    Dunno,
    /// `FILTER <transport>:` (a sender rule: the whole message goes
    /// through the forced transport).
    Filter { transport: Arc<str> },
    /// `DEFER_IF_PERMIT 4.7.10 <text>`
    DeferIfPermit {
        enhanced: &'static str,
        text: String,
    },
    /// `REJECT 5.7.10 <text>`
    Reject {
        enhanced: &'static str,
        text: String,
    },
    /// `PREPEND <header>` (at DATA; no record).
    Prepend { header: String },
}

impl PolicyAction {
    pub fn verb(&self) -> &'static str {
        match self {
            PolicyAction::Dunno => "DUNNO",
            PolicyAction::Filter { .. } => "FILTER",
            PolicyAction::DeferIfPermit { .. } => "DEFER_IF_PERMIT",
            PolicyAction::Reject { .. } => "REJECT",
            PolicyAction::Prepend { .. } => "PREPEND",
        }
    }
}

impl fmt::Display for PolicyAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let verb = self.verb();
        match self {
            PolicyAction::Dunno => f.write_str(verb),
            PolicyAction::Filter { transport } => write!(f, "{verb} {transport}:"),
            PolicyAction::DeferIfPermit { enhanced, text }
            | PolicyAction::Reject { enhanced, text } => write!(f, "{verb} {enhanced} {text}"),
            PolicyAction::Prepend { header } => write!(f, "{verb} {header}"),
        }
    }
}

/// How a message ended for the milter. `reply` is `CONTINUE` or `ABORT`;
/// `action` what was done ([`fmt::Display`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MilterOutcome {
    /// End of message, and what was done to it (nothing: `continue`).
    Continue(Vec<MilterStep>),
    /// The transaction ended before end of message (recorded because a
    /// recipient had been refused): `none: no message`.
    Abort,
}

impl Default for MilterOutcome {
    fn default() -> Self {
        MilterOutcome::Continue(Vec::new())
    }
}

impl MilterOutcome {
    pub fn reply(&self) -> &'static str {
        match self {
            MilterOutcome::Continue(_) => "CONTINUE",
            MilterOutcome::Abort => "ABORT",
        }
    }
}

impl fmt::Display for MilterOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MilterOutcome::Continue(steps) if steps.is_empty() => f.write_str("continue"),
            MilterOutcome::Continue(steps) => {
                for (i, step) in steps.iter().enumerate() {
                    if i > 0 {
                        f.write_str("; ")?;
                    }
                    write!(f, "{step}")?;
                }
                Ok(())
            }
            MilterOutcome::Abort => f.write_str("none: no message"),
        }
    }
}

/// One thing the milter did at end of message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MilterStep {
    /// `quarantine`
    Quarantine,
    /// `add header NAME: VALUE`
    AddHeader { name: Arc<str>, value: String },
}

impl fmt::Display for MilterStep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MilterStep::Quarantine => f.write_str("quarantine"),
            MilterStep::AddHeader { name, value } => write!(f, "add header {name}: {value}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::decision::{Level, SourceKind, Tls};
    use std::time::Duration;

    pub(super) fn decision() -> Decision {
        Decision {
            level: Level::Secure,
            policy: Arc::from("secure match=mx.bank.example"),
            source: SourceKind::Static,
            rule: Some(2),
            matched: Some(Arc::from(".bank.example")),
            reason: Arc::from("PCI \"partner\""),
            ttl: Duration::from_secs(1),
            raised: false,
            temporary: false,
            published: None,
        }
    }

    /// A lookup on `tls_policy` answered `OK`.
    pub(super) fn lookup(key: &str, decision: Decision) -> DecisionRecord {
        DecisionRecord::new(
            None,
            Detail::Lookup(Lookup {
                map: Arc::from("tls_policy"),
                key: key.to_string(),
                domain: None,
                decision,
                reply: LookupReply::Ok,
                client_pid: None,
            }),
        )
    }

    fn message(door: MessageDoor) -> DecisionRecord {
        let summary = MessageSummary {
            recipients: vec![RecipientDecision {
                recipient: Some("a@bank.example".into()),
                domain: Some("bank.example".into()),
                tls: Tls::Forced,
                level: Arc::from("encrypt"),
                source: SourceKind::Static,
                rule: Some(1),
                reason: Arc::from("why"),
                action: None,
            }],
            dropped: 0,
            cap: 10,
            sender_rule: Some(1),
            empty_reason: "none",
        };
        let envelope = Envelope {
            sender: String::new(),
            client_address: Some("192.0.2.1".into()),
        };
        DecisionRecord::new(
            Some("4ABC".into()),
            Detail::Message(Message::new(summary, envelope, door)),
        )
    }

    #[test]
    fn record_is_one_json_line_with_documented_fields() {
        let mut r = lookup("X.Bank.Example", decision());
        r.head.ts = SystemTime::UNIX_EPOCH + Duration::from_micros(1_764_000_000_123_456);
        if let Detail::Lookup(l) = &mut r.detail {
            l.domain = Some("x.bank.example".into());
        }
        let line = r.to_json_line();
        assert_eq!(line, serde_json::to_string(&r).unwrap());
        assert!(!line.contains('\n'));
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["ts"], "2025-11-24T16:00:00.123456Z");
        assert_eq!(v["frontend"], "socketmap");
        assert_eq!(v["key"], "X.Bank.Example");
        assert_eq!(v["domain"], "x.bank.example");
        assert_eq!(v["tls"], "forced");
        assert_eq!(v["level"], "secure match=mx.bank.example");
        assert_eq!(v["reply"], "OK");
        assert_eq!(v["source"], "static");
        assert_eq!(v["rule"], 2);
        assert_eq!(v["reason"], "PCI \"partner\"");
        assert!(v.get("queue_id").is_none());
        assert!(v.get("raised").is_none());
        for absent in [
            "policy_id",
            "policy_mode",
            "instance",
            "sender",
            "recipient",
            "client_address",
            "recipients",
            "action",
            "sender_rule",
            "client_name",
            "helo_name",
            "mta",
            "daemon_name",
            "inbound_tls",
            "auth_user",
            "message_id",
            "tls_required_no",
            "requiretls",
        ] {
            assert!(v.get(absent).is_none(), "{absent}");
        }
    }

    #[test]
    fn published_policy_fields() {
        let mut d = decision();
        d.source = SourceKind::MtaSts;
        d.published = Some(Arc::new(crate::engine::decision::Published {
            policy_id: Some(Arc::from("20240101T000000")),
            mode: Some("enforce"),
        }));
        let v = serde_json::to_value(lookup("sts.example", d)).unwrap();
        assert_eq!(v["source"], "mta-sts");
        assert_eq!(v["policy_id"], "20240101T000000");
        assert_eq!(v["policy_mode"], "enforce");
    }

    #[test]
    fn policy_server_fields() {
        let r = message(MessageDoor::Policy {
            instance: Some("1.2.3".into()),
            action: PolicyAction::Dunno,
        });
        let v: serde_json::Value = serde_json::to_value(&r).unwrap();
        assert_eq!(v["queue_id"], "4ABC");
        assert_eq!(v["instance"], "1.2.3");
        assert_eq!(v["sender"], "", "the null sender is written, not left out");
        assert_eq!(v["client_address"], "192.0.2.1");
        assert_eq!(v["action"], "DUNNO");
        assert_eq!(v["sender_rule"], 1);
        let rcpt = &v["recipients"][0];
        assert_eq!(rcpt["recipient"], "a@bank.example");
        assert_eq!(rcpt["domain"], "bank.example");
        assert_eq!(rcpt["tls"], "forced");
        assert_eq!(rcpt["level"], "encrypt");
        assert_eq!(rcpt["source"], "static");
        assert_eq!(rcpt["rule"], 1);
        assert!(rcpt.get("action").is_none());
    }

    #[test]
    fn milter_fields() {
        let r = message(MessageDoor::Milter(Box::new(MilterMessage {
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
            auth_user: Some("alice".into()),
            message_id: Some("<1@client.example>".into()),
            tls_required_no: true,
            requiretls: false,
            outcome: MilterOutcome::default(),
        })));
        let v: serde_json::Value = serde_json::to_value(&r).unwrap();
        assert_eq!(v["frontend"], "milter");
        assert_eq!(v["client_name"], "client.example");
        assert_eq!(v["helo_name"], "client.example");
        assert_eq!(v["mta"], "mx.example");
        assert_eq!(v["daemon_name"], "smtpd");
        assert_eq!(v["inbound_tls"]["version"], "TLSv1.3");
        assert_eq!(v["inbound_tls"]["cipher"], "TLS_AES_256_GCM_SHA384");
        assert_eq!(v["inbound_tls"]["bits"], 256);
        assert!(v["inbound_tls"].get("cert_subject").is_none());
        assert_eq!(v["auth_user"], "alice");
        assert_eq!(v["message_id"], "<1@client.example>");
        assert_eq!(v["tls_required_no"], true);
        assert!(v.get("requiretls").is_none());
    }

    #[test]
    fn message_record_counts_and_lists() {
        use crate::engine::recipient::tests::rcpt;
        let milter = MessageDoor::Milter(Box::default());
        let msg = Message::new(
            MessageSummary {
                recipients: vec![
                    rcpt("a.example", Tls::Opportunistic, "may", None),
                    rcpt("b.example", Tls::Forced, "encrypt", None),
                ],
                dropped: 3,
                cap: 2,
                sender_rule: None,
                empty_reason: "none",
            },
            Envelope::default(),
            milter,
        );
        let rec = DecisionRecord::new(None, Detail::Message(msg));
        assert_eq!(rec.detail.frontend(), Some(Frontend::Milter));
        let Detail::Message(m) = &rec.detail else {
            panic!("{rec:?}")
        };
        assert_eq!(m.verdict.tls, Tls::Forced);
        assert_eq!(m.verdict.source, SourceKind::Static);
        assert_eq!(
            &*m.verdict.reason,
            "message with 5 recipients: 1 forced, 1 opportunistic, 3 not listed (over 2)"
        );
        assert_eq!(m.recipients.len(), 2);
        assert!(serde_json::to_value(&rec).unwrap().get("level").is_none());

        let policy = MessageDoor::Policy {
            instance: None,
            action: PolicyAction::Dunno,
        };
        let m = Message::new(
            MessageSummary {
                recipients: vec![],
                dropped: 0,
                cap: 2,
                sender_rule: Some(1),
                empty_reason: "nothing seen",
            },
            Envelope::default(),
            policy,
        );
        assert_eq!(
            m.verdict.tls,
            Tls::Forced,
            "a sender rule forces the message"
        );
        assert_eq!(&*m.verdict.reason, "nothing seen");
        assert_eq!(m.sender_rule, Some(1));
    }

    #[test]
    fn replies_and_actions_as_written() {
        let refusal = PolicyAction::DeferIfPermit {
            enhanced: "4.7.10",
            text: "why".into(),
        };
        assert_eq!(
            (refusal.verb(), refusal.to_string().as_str()),
            ("DEFER_IF_PERMIT", "DEFER_IF_PERMIT 4.7.10 why")
        );
        let filter = PolicyAction::Filter {
            transport: Arc::from("smtp-tls-forced"),
        };
        assert_eq!(filter.to_string(), "FILTER smtp-tls-forced:");
        let done = MilterOutcome::Continue(vec![
            MilterStep::Quarantine,
            MilterStep::AddHeader {
                name: Arc::from("X-T"),
                value: "v".into(),
            },
        ]);
        assert_eq!(done.to_string(), "quarantine; add header X-T: v");
        assert_eq!(MilterOutcome::default().to_string(), "continue");
        assert_eq!(
            (
                MilterOutcome::Abort.reply(),
                MilterOutcome::Abort.to_string().as_str()
            ),
            ("ABORT", "none: no message")
        );
        assert_eq!(
            Frontend::ALL.map(Frontend::as_str),
            ["socketmap", "policy", "milter"]
        );
    }
}
