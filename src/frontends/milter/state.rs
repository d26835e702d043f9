//! What the milter remembers about one MTA connection and the message in
//! progress, and what it makes of it at end of message: the decision
//! record (built here, in [`record`], from the state alone), the trace and
//! routing header values, and whether to quarantine. No I/O here; the
//! callbacks in the parent module feed it.

use std::sync::Arc;

use crate::engine::decision::{Decision, SourceKind, Tls};
use crate::engine::policy_file::PolicyFile;
use crate::engine::recipient::{
    MessageSummary, RecipientDecision, Ruling, assess_delivery, trace_value,
};
use crate::engine::refusal::{DeliveryAssessment, TlsKnowledge, refusal_text};
use crate::frontends::message::non_empty;
use crate::log::record::{
    DecisionRecord, Detail, Envelope, InboundTls, Message as MessageRecord, MessageDoor,
    MilterMessage, MilterOutcome, MilterStep,
};

/// Longest text kept from any one macro, address or header value (RFC
/// 5322's line limit); longer values are cut.
pub const MAX_FIELD_LEN: usize = 998;

/// The routing header value that sends a message through the forced
/// transport (a sender rule matched).
pub const ROUTE_FORCED: &str = "forced";
/// The routing header value that sends a message through the relaxed
/// transport (RFC 8689 `TLS-Required: No`, and no rule forbids relaxing).
pub const ROUTE_RELAXED: &str = "relaxed";

/// `s` cut to at most [`MAX_FIELD_LEN`] bytes on a character boundary.
pub fn bounded(s: &str) -> String {
    crate::util::text::cut(s, MAX_FIELD_LEN).to_string()
}

/// An envelope address from a MAIL or RCPT argument: without the angle
/// brackets; `<>` is the null sender (`""`).
pub fn envelope_address(arg: &str) -> String {
    let a = arg.trim();
    let a = a
        .strip_prefix('<')
        .and_then(|a| a.strip_suffix('>'))
        .unwrap_or(a);
    bounded(a)
}

/// Whether MAIL FROM parameters ask for REQUIRETLS (RFC 8689).
pub fn has_requiretls<'a>(params: impl IntoIterator<Item = &'a str>) -> bool {
    params.into_iter().any(|p| {
        let name = p.split('=').next().unwrap_or("");
        name.eq_ignore_ascii_case("REQUIRETLS")
    })
}

/// Whether a `TLS-Required` header value says `No` (RFC 8689 section 5;
/// case does not matter, folding white space around it is allowed). Any
/// other value is ignored.
pub fn tls_required_says_no(value: &str) -> bool {
    value
        .trim_matches(|c: char| c == ' ' || c == '\t' || c == '\r' || c == '\n')
        .eq_ignore_ascii_case("no")
}

/// One recipient of the message in progress.
#[derive(Debug, Clone)]
pub struct PendingRecipient {
    pub record: RecipientDecision,
    pub decision: Decision,
    /// The normalised domain, for domain destinations.
    pub domain: Option<String>,
    /// Turned away at RCPT (not part of the message).
    pub refused: bool,
}

impl PendingRecipient {
    pub fn new(ruling: &Ruling, address: &str, refusal_reply: Option<String>) -> PendingRecipient {
        PendingRecipient {
            refused: refusal_reply.is_some(),
            record: ruling.recipient_decision(address, refusal_reply),
            decision: ruling.decision.clone(),
            domain: ruling.domain().map(str::to_string),
        }
    }
}

/// The message in progress: from MAIL to end of message or abort.
#[derive(Debug, Default)]
pub struct PendingMessage {
    pub sender: String,
    pub auth_user: Option<String>,
    pub requiretls: bool,
    /// The sender rule applied to the message (routing header set).
    pub sender_rule: Option<u32>,
    pub recipients: Vec<PendingRecipient>,
    /// Recipients beyond the cap: decided, not remembered.
    pub dropped: usize,
    /// Header bytes looked at so far.
    pub header_bytes: usize,
    /// The header cap was reached; later headers are not looked at.
    pub header_cap_hit: bool,
    pub message_id: Option<String>,
    pub tls_required_no: bool,
}

impl PendingMessage {
    pub fn new(sender: String, auth_user: Option<String>, requiretls: bool) -> PendingMessage {
        PendingMessage {
            sender,
            auth_user,
            requiretls,
            ..PendingMessage::default()
        }
    }

    /// Remember a recipient unless `cap` are remembered already; `false`
    /// when it was only counted (the first time, the caller logs it).
    pub fn add_recipient(&mut self, r: PendingRecipient, cap: usize) -> bool {
        if self.recipients.len() < cap {
            self.recipients.push(r);
            true
        } else {
            self.dropped += 1;
            false
        }
    }

    /// Look at one header, within `cap` header bytes in all. Returns
    /// `false` when this header crossed the cap (the caller logs it once);
    /// headers after that are not looked at.
    pub fn header(&mut self, name: &str, value: &str, cap: usize) -> bool {
        if self.header_cap_hit {
            return true;
        }
        // As it stands in the message: `Name: value` and CRLF.
        let size = name.len() + value.len() + 4;
        if self.header_bytes + size > cap {
            self.header_cap_hit = true;
            return false;
        }
        self.header_bytes += size;
        if name.eq_ignore_ascii_case("Message-ID") {
            if self.message_id.is_none() {
                self.message_id = non_empty(&bounded(value.trim()));
            }
        } else if name.eq_ignore_ascii_case("TLS-Required") && tls_required_says_no(value) {
            self.tls_required_no = true;
        }
        true
    }

    fn accepted(&self) -> impl Iterator<Item = &PendingRecipient> {
        self.recipients.iter().filter(|r| !r.refused)
    }

    pub fn has_refusals(&self) -> bool {
        self.recipients.iter().any(|r| r.refused)
    }

    /// The routing header value: `forced` when a sender rule applies;
    /// `relaxed` when the message says `TLS-Required: No`, did not ask for
    /// REQUIRETLS (which overrides the header), and no accepted
    /// recipient's forced TLS comes from a rule (or default) of the policy
    /// file that does not allow relaxing; otherwise none.
    pub fn route(&self, policy: &PolicyFile) -> Option<&'static str> {
        if self.sender_rule.is_some() {
            return Some(ROUTE_FORCED);
        }
        if !self.tls_required_no || self.requiretls {
            return None;
        }
        let mut accepted = self.accepted().peekable();
        accepted.peek()?;
        accepted
            .all(|r| may_relax(policy, &r.decision))
            .then_some(ROUTE_RELAXED)
    }

    /// The trace header value (empty when nothing is accepted).
    pub fn trace(&self) -> String {
        let records: Vec<RecipientDecision> = self.accepted().map(|r| r.record.clone()).collect();
        trace_value(&records, self.sender_rule)
    }

    /// Why the message should be held: the first accepted recipient whose
    /// forced TLS is now known not to be met, as text. Asks `knowledge`
    /// (a miss schedules a probe).
    pub fn quarantine_reason(&self, knowledge: &dyn TlsKnowledge) -> Option<String> {
        let mut cannot = self.accepted().filter_map(|r| {
            match assess_delivery(&r.decision, r.domain.as_deref(), knowledge) {
                DeliveryAssessment::Cannot { requirement, found } => r
                    .domain
                    .as_deref()
                    .map(|d| refusal_text(d, requirement, &found)),
                _ => None,
            }
        });
        let first = cannot.next()?;
        let more = cannot.count();
        Some(if more == 0 {
            first
        } else {
            format!("{first} (and {more} more recipient domains)")
        })
    }
}

/// Whether `TLS-Required: No` may relax a decision: opportunistic ones
/// trivially; published policies (DANE, MTA-STS) yes, that is what the
/// header is for; the operator's rules only with
/// `allow_tls_required_no = true`; a forced default never.
pub fn may_relax(policy: &PolicyFile, decision: &Decision) -> bool {
    if decision.tls() == Tls::Opportunistic {
        return true;
    }
    if decision.raised {
        return false;
    }
    match decision.source {
        SourceKind::Dane | SourceKind::MtaSts => true,
        SourceKind::Default => false,
        SourceKind::Static => decision
            .rule
            .and_then(|n| n.checked_sub(1))
            .and_then(|i| policy.rules().get(usize::try_from(i).ok()?))
            .is_some_and(|rule| rule.policy == decision.policy && rule.allow_tls_required_no),
    }
}

/// The connection: who the client is, and the message in progress.
#[derive(Debug, Default)]
pub struct Session {
    pub client_address: Option<String>,
    pub client_name: Option<String>,
    pub helo_name: Option<String>,
    /// Mail that did not come over SMTP (Postfix's `non_smtpd_milters`:
    /// sendmail(1), pickup). Postfix cannot refuse a single recipient of
    /// such mail: it defers the whole message as a configuration error.
    pub local_submission: bool,
    pub message: Option<PendingMessage>,
}

impl Session {
    /// Postfix presents mail that did not come over SMTP as a connection
    /// from `127.0.0.1` port 0; a real TCP client always has a port.
    pub fn is_local_submission(address: &std::net::SocketAddr) -> bool {
        address.port() == 0 && address.ip().is_loopback()
    }
}

/// Connection-level macros read at end of message.
#[derive(Debug, Default, Clone)]
pub struct Seen {
    pub queue_id: Option<String>,
    pub mta: Option<String>,
    pub daemon_name: Option<String>,
    pub inbound_tls: Option<InboundTls>,
}

impl Seen {
    /// From macro values (`i`, `j`, `{daemon_name}`, `{tls_version}`,
    /// `{cipher}`, `{cipher_bits}`, `{cert_subject}`).
    pub fn from_macros(get: impl Fn(&str) -> Option<String>) -> Seen {
        let field = |name: &str| {
            get(name)
                .as_deref()
                .map(bounded)
                .and_then(|s| non_empty(&s))
        };
        let version = field("{tls_version}");
        let cipher = field("{cipher}");
        let bits = field("{cipher_bits}").and_then(|b| b.trim().parse::<u32>().ok());
        let cert_subject = field("{cert_subject}");
        let tls = (version.is_some() || cipher.is_some()).then_some(InboundTls {
            version,
            cipher,
            bits,
            cert_subject,
        });
        Seen {
            queue_id: field("i"),
            mta: field("j"),
            daemon_name: field("{daemon_name}"),
            inbound_tls: tls,
        }
    }
}

/// The reason of a message record when no recipient was seen.
pub const NO_RECIPIENT: &str = "no recipient was seen for this message";

/// How a message ended, for its record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ending {
    /// End of message, and what was done to it.
    EndOfMessage(Vec<MilterStep>),
    /// RSET, abort or disconnect before end of message (recorded only
    /// after a refusal), and why.
    Aborted(&'static str),
}

/// Everything known about the message, as one decision record:
/// `cap` is the recipients remembered (the reason counts those over it).
pub fn record(
    session: &Session,
    message: PendingMessage,
    seen: Seen,
    cap: usize,
    ending: Ending,
) -> DecisionRecord {
    let PendingMessage {
        sender,
        auth_user,
        requiretls,
        sender_rule,
        recipients,
        dropped,
        message_id,
        tls_required_no,
        ..
    } = message;
    let summary = MessageSummary {
        recipients: recipients.into_iter().map(|r| r.record).collect(),
        dropped,
        cap,
        sender_rule,
        empty_reason: NO_RECIPIENT,
    };
    let envelope = Envelope {
        sender,
        client_address: session.client_address.clone(),
    };
    let (outcome, aborted) = match ending {
        Ending::EndOfMessage(done) => (MilterOutcome::Continue(done), None),
        Ending::Aborted(why) => (MilterOutcome::Abort, Some(why)),
    };
    let milter = MilterMessage {
        client_name: session.client_name.clone(),
        helo_name: session.helo_name.clone(),
        mta: seen.mta,
        daemon_name: seen.daemon_name,
        inbound_tls: seen.inbound_tls,
        auth_user,
        message_id,
        tls_required_no,
        requiretls,
        outcome,
    };
    let mut msg = MessageRecord::new(summary, envelope, MessageDoor::Milter(Box::new(milter)));
    if let Some(why) = aborted {
        msg.verdict.reason = Arc::from(format!("{}; {why}", msg.verdict.reason));
    }
    DecisionRecord::new(seen.queue_id, Detail::Message(msg))
}

/// `%` doubled: Postfix and sendmail read a milter's reply text as a
/// format string (Postfix turns `%%` back into `%` and drops a lone `%`).
pub fn escape_reply(text: &str) -> String {
    text.replace('%', "%%")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::Engine;
    use crate::engine::recipient::rule_recipient;
    use crate::engine::refusal::{Capability, RefuseMode};
    use std::collections::HashMap;
    use std::path::Path;
    use std::sync::{Arc, Mutex};

    const POLICY: &str = r#"
[[rule]]
domains = ["bank.example"]
tls = "forced"

[[rule]]
domains = ["relaxable.example"]
tls = "forced"
allow_tls_required_no = true

[[sender_rule]]
senders = ["ceo@example.com"]
tls = "forced"
"#;

    #[derive(Default)]
    struct Known(Mutex<HashMap<String, Capability>>, Mutex<Vec<String>>);

    impl TlsKnowledge for Known {
        fn known(&self, domain: &str) -> Option<Capability> {
            self.0.lock().unwrap().get(domain).cloned()
        }
        fn schedule(&self, domain: &str) {
            self.1.lock().unwrap().push(domain.into());
        }
    }

    fn engine() -> Engine {
        Engine::new(PolicyFile::parse(POLICY, Path::new("p.toml")).unwrap())
    }

    async fn rcpt(engine: &Engine, m: &mut PendingMessage, addr: &str, routing: bool) {
        let r = rule_recipient(engine, addr, &m.sender.clone(), RefuseMode::Off, routing).await;
        if r.forced_by_sender {
            m.sender_rule = r.sender_hit.as_ref().map(|h| h.rule);
        }
        m.add_recipient(PendingRecipient::new(&r, addr, None), 100);
    }

    #[test]
    fn addresses_and_parameters() {
        assert_eq!(envelope_address("<a@b.example>"), "a@b.example");
        assert_eq!(envelope_address("<>"), "");
        assert_eq!(envelope_address(" a@b.example "), "a@b.example");
        assert!(has_requiretls(["SIZE=10", "requiretls"]));
        assert!(!has_requiretls(["SIZE=10", "BODY=8BITMIME"]));
        assert!(tls_required_says_no("No"));
        assert!(tls_required_says_no(" no\r\n"));
        assert!(tls_required_says_no("\tNO"));
        assert!(!tls_required_says_no("Yes"));
        assert!(!tls_required_says_no("No thanks"));
        assert_eq!(escape_reply("100% sure"), "100%% sure");
    }

    #[test]
    fn local_submissions_are_loopback_port_zero() {
        let is = |a: &str| Session::is_local_submission(&a.parse().unwrap());
        assert!(is("127.0.0.1:0"));
        assert!(is("[::1]:0"));
        assert!(!is("127.0.0.1:41234"), "an SMTP client on loopback");
        assert!(!is("192.0.2.25:0"), "a host that sends no port");
    }

    #[test]
    fn bounded_cuts_on_a_character_boundary() {
        let exact = "a".repeat(MAX_FIELD_LEN);
        assert_eq!(bounded(&exact), exact);
        let over = format!("{exact}b");
        assert_eq!(bounded(&over), exact);
        let wide = format!("{}\u{e9}", "a".repeat(MAX_FIELD_LEN - 1));
        assert_eq!(bounded(&wide).len(), MAX_FIELD_LEN - 1);
    }

    #[test]
    fn header_cap_is_exact() {
        // "Subject: x" + CRLF = 12 bytes.
        let mut m = PendingMessage::default();
        assert!(m.header("Subject", "x", 24));
        assert!(m.header("Message-ID", "<1@x>", 24 + 19));
        assert_eq!(m.header_bytes, 24 + 7, "second header does not fit in 24");
        let mut m = PendingMessage::default();
        assert!(m.header("Subject", "x", 12), "exactly at the cap");
        assert!(!m.header("TLS-Required", "No", 12), "one over");
        assert!(m.header_cap_hit);
        assert!(!m.tls_required_no, "a header past the cap is not looked at");
        assert!(m.header("TLS-Required", "No", 12), "logged only once");
        assert!(!m.tls_required_no);
    }

    #[test]
    fn message_id_and_tls_required() {
        let mut m = PendingMessage::default();
        m.header("message-id", " <a@b.example> ", 1000);
        m.header("Message-ID", "<second@b.example>", 1000);
        m.header("TLS-Required", "Yes", 1000);
        assert_eq!(m.message_id.as_deref(), Some("<a@b.example>"));
        assert!(!m.tls_required_no);
        m.header("tls-required", "No", 1000);
        assert!(m.tls_required_no);
    }

    #[test]
    fn recipient_cap() {
        let mut m = PendingMessage::default();
        let p = PolicyFile::parse("", Path::new("p.toml")).unwrap();
        let ruling = Ruling {
            key: "a.example".into(),
            dest: None,
            decision: p.default_decision().clone(),
            sender_hit: None,
            forced_by_sender: false,
            refuse: RefuseMode::Off,
        };
        assert!(m.add_recipient(PendingRecipient::new(&ruling, "a@a.example", None), 2));
        assert!(m.add_recipient(PendingRecipient::new(&ruling, "b@a.example", None), 2));
        assert!(!m.add_recipient(PendingRecipient::new(&ruling, "c@a.example", None), 2));
        assert_eq!((m.recipients.len(), m.dropped), (2, 1));
    }

    #[tokio::test]
    async fn routes() {
        let e = engine();
        let p = e.policy();
        // Sender rule with routing: forced, whatever the header says.
        let mut m = PendingMessage::new("ceo@example.com".into(), None, false);
        m.tls_required_no = true;
        rcpt(&e, &mut m, "x@other.example", true).await;
        assert_eq!(m.route(p), Some(ROUTE_FORCED));
        assert!(m.trace().contains("sender rule 1"), "{}", m.trace());

        // TLS-Required: No with an opportunistic and a relaxable domain.
        let mut m = PendingMessage::new("a@src.example".into(), None, false);
        m.tls_required_no = true;
        rcpt(&e, &mut m, "x@other.example", true).await;
        rcpt(&e, &mut m, "y@relaxable.example", true).await;
        assert_eq!(m.route(p), Some(ROUTE_RELAXED));
        // A forced rule without the allowance keeps the message normal.
        rcpt(&e, &mut m, "z@bank.example", true).await;
        assert_eq!(m.route(p), None);
        // ... unless that recipient was refused (not part of the message).
        m.recipients.last_mut().unwrap().refused = true;
        assert_eq!(m.route(p), Some(ROUTE_RELAXED));
        // REQUIRETLS overrides the header.
        m.requiretls = true;
        assert_eq!(m.route(p), None);
        // No header, no route.
        let mut m = PendingMessage::new("a@src.example".into(), None, false);
        rcpt(&e, &mut m, "x@other.example", true).await;
        assert_eq!(m.route(p), None);
        // Nothing accepted: no route.
        let mut m = PendingMessage::new("a@src.example".into(), None, false);
        m.tls_required_no = true;
        assert_eq!(m.route(p), None);
    }

    #[test]
    fn relaxing_needs_the_policy_files_allowance() {
        let p = PolicyFile::parse(
            "default = \"forced\"\n[[rule]]\ndomains=[\"a.example\"]\ntls=\"forced\"\nallow_tls_required_no=true\n",
            Path::new("p.toml"),
        )
        .unwrap();
        let hit = p
            .lookup(&crate::engine::key::Destination::parse("a.example").unwrap())
            .unwrap();
        let d = p.decision(hit);
        assert!(may_relax(&p, &d));
        let mut changed = d.clone();
        changed.policy = Arc::from("secure");
        assert!(!may_relax(&p, &changed), "rule changed since the decision");
        assert!(!may_relax(&p, p.default_decision()), "forced default");
        let mut sts = d.clone();
        sts.source = SourceKind::MtaSts;
        sts.rule = None;
        assert!(may_relax(&p, &sts));
        let mut raised = sts.clone();
        raised.raised = true;
        assert!(!may_relax(&p, &raised));
    }

    #[tokio::test]
    async fn quarantine_reason_from_knowledge() {
        let e = engine();
        let k = Known::default();
        let mut m = PendingMessage::new("a@src.example".into(), None, false);
        rcpt(&e, &mut m, "x@bank.example", false).await;
        rcpt(&e, &mut m, "y@other.example", false).await;
        assert_eq!(m.quarantine_reason(&k), None);
        assert_eq!(*k.1.lock().unwrap(), ["bank.example"], "a miss schedules");
        k.0.lock().unwrap().insert(
            "bank.example".into(),
            Capability::NoStarttls {
                detail: "mx: no STARTTLS".into(),
            },
        );
        let why = m.quarantine_reason(&k).unwrap();
        assert!(
            why.starts_with("TLS policy for bank.example requires"),
            "{why}"
        );
        m.recipients[0].refused = true;
        assert_eq!(m.quarantine_reason(&k), None, "refused ones do not count");
    }

    #[tokio::test]
    async fn one_record_from_the_state() {
        let e = engine();
        let session = Session {
            client_address: Some("192.0.2.25".into()),
            client_name: Some("client.example".into()),
            helo_name: Some("helo.example".into()),
            ..Session::default()
        };
        let seen = Seen::from_macros(|n| (n == "i").then(|| "4QX1".to_string()));
        let mut m = PendingMessage::new("a@src.example".into(), Some("alice".into()), false);
        rcpt(&e, &mut m, "x@bank.example", false).await;
        m.recipients[0].refused = true;
        m.recipients[0].record.action = Some("450 4.7.10 no".into());
        let mut rec = record(
            &session,
            m,
            seen,
            10,
            Ending::Aborted("the connection ended"),
        );
        rec.head.ts = std::time::SystemTime::UNIX_EPOCH;
        assert_eq!(
            serde_json::to_string(&rec).unwrap(),
            r#"{"ts":"1970-01-01T00:00:00.000000Z","frontend":"milter","queue_id":"4QX1","key":"","tls":"forced","reply":"ABORT","source":"static","reason":"message with 1 recipient: 1 forced, 0 opportunistic; the connection ended","sender":"a@src.example","client_address":"192.0.2.25","recipients":[{"recipient":"x@bank.example","domain":"bank.example","tls":"forced","level":"encrypt","source":"static","rule":1,"reason":"policy file rule 1","action":"450 4.7.10 no"}],"action":"none: no message","client_name":"client.example","helo_name":"helo.example","auth_user":"alice"}"#
        );
        let m = PendingMessage::new(String::new(), None, true);
        let rec = record(
            &Session::default(),
            m,
            Seen::default(),
            10,
            Ending::EndOfMessage(vec![MilterStep::Quarantine]),
        );
        let v = serde_json::to_value(&rec).unwrap();
        assert_eq!(v["reason"], NO_RECIPIENT);
        assert_eq!(v["reply"], "CONTINUE");
        assert_eq!(v["action"], "quarantine");
        assert_eq!(v["requiretls"], true);
        assert_eq!(v["sender"], "");
    }

    #[test]
    fn seen_from_macros() {
        let macros: HashMap<&str, &str> = [
            ("i", "4ABC"),
            ("j", "mx.example"),
            ("{tls_version}", "TLSv1.3"),
            ("{cipher}", "TLS_AES_256_GCM_SHA384"),
            ("{cipher_bits}", "256"),
            ("{cert_subject}", ""),
        ]
        .into_iter()
        .collect();
        let s = Seen::from_macros(|n| macros.get(n).map(|v| v.to_string()));
        assert_eq!(s.queue_id.as_deref(), Some("4ABC"));
        assert_eq!(s.mta.as_deref(), Some("mx.example"));
        assert_eq!(s.daemon_name, None);
        let tls = s.inbound_tls.unwrap();
        assert_eq!(tls.bits, Some(256));
        assert_eq!(tls.cert_subject, None);
        let s = Seen::from_macros(|_| None);
        assert!(s.inbound_tls.is_none() && s.queue_id.is_none());
    }
}
