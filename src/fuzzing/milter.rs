//! The milter's per-connection state fed with arbitrary callbacks.

use super::{Bytes, engine, names_forced, runtime};
use crate::engine::decision::Tls;
use crate::engine::recipient::rule_recipient;
use crate::engine::refusal::{Capability, RefuseMode, TlsKnowledge};
use crate::frontends::milter::state::{
    self, Ending, MAX_FIELD_LEN, PendingMessage, PendingRecipient, ROUTE_FORCED, ROUTE_RELAXED,
    Seen, Session,
};

/// Recipients remembered per message in the checks (small, to reach it).
const CAP: usize = 4;
/// Header bytes looked at per message in the checks.
const HEADER_CAP: usize = 600;

/// Knowledge chosen by the input: what a domain is known to offer.
struct Known(u8);

impl TlsKnowledge for Known {
    fn known(&self, domain: &str) -> Option<Capability> {
        let detail = String::from("fuzz");
        match (usize::from(self.0) + domain.len()) % 5 {
            0 => None,
            1 => Some(Capability::NoStarttls { detail }),
            2 => Some(Capability::StarttlsUnverified { detail }),
            3 => Some(Capability::StarttlsVerified {
                names: vec![domain.to_string()],
            }),
            _ => Some(Capability::Unknown { detail }),
        }
    }

    fn schedule(&self, _domain: &str) {}
}

/// Everything that must hold of a message at its end.
fn check_message(message: &PendingMessage, knowledge: &Known) {
    assert!(message.recipients.len() <= CAP);
    assert!(message.header_bytes <= HEADER_CAP);
    assert!(message.sender.len() <= MAX_FIELD_LEN);
    assert!(
        message
            .message_id
            .as_ref()
            .is_none_or(|m| m.len() <= MAX_FIELD_LEN)
    );
    let policy = engine().policy();
    let route = message.route(policy);
    if message.sender_rule.is_some() {
        assert_eq!(route, Some(ROUTE_FORCED));
    }
    for r in message.recipients.iter().filter(|r| !r.refused) {
        let forced_domain = r.domain.as_deref().is_some_and(names_forced);
        if forced_domain {
            assert!(
                r.decision.tls() == Tls::Forced || r.decision.temporary,
                "recipient of the forced domain decided {}",
                r.decision.policy
            );
            assert_ne!(
                route,
                Some(ROUTE_RELAXED),
                "forced rule relaxed by TLS-Required: No"
            );
        }
    }
    let trace = message.trace();
    assert!(
        !trace.contains(['\r', '\n']),
        "trace header value {trace:?}"
    );
    if let Some(q) = message.quarantine_reason(knowledge) {
        assert!(!q.is_empty());
    }
}

/// The milter's state: a session fed any order of connect, MAIL, RCPT,
/// header, end-of-message, abort and macro callbacks with any values
/// never panics; caps hold; a recipient of the forced domain is decided
/// forced and its message never routed `relaxed`; the trace header is
/// one line; every record is JSON; reply text escapes every `%`.
pub fn check_milter(data: &[u8]) {
    let mut b = Bytes(data);
    let knowledge = Known(b.byte().unwrap_or(0));
    let mut session = Session::default();
    let mut steps = 0;
    while !b.is_empty() && steps < 64 {
        steps += 1;
        match b.byte().unwrap_or(0) % 8 {
            0 => {
                session = Session {
                    client_address: Some(state::bounded(&b.text())),
                    client_name: Some(state::bounded(&b.text())),
                    helo_name: Some(state::bounded(&b.text())),
                    local_submission: b.byte().unwrap_or(0) % 2 == 0,
                    message: None,
                };
            }
            1 => {
                let sender = state::envelope_address(&b.text());
                let params = b.text();
                let requiretls = state::has_requiretls(params.split(' '));
                let auth = Some(state::bounded(&b.text())).filter(|a| !a.is_empty());
                session.message = Some(PendingMessage::new(sender, auth, requiretls));
            }
            2 => {
                let recipient = state::envelope_address(&b.text());
                let refused = b.byte().unwrap_or(0) % 4 == 0;
                let message = session.message.get_or_insert_with(PendingMessage::default);
                let ruling = runtime().block_on(rule_recipient(
                    engine(),
                    &recipient,
                    &message.sender,
                    RefuseMode::Defer,
                    true,
                ));
                if ruling.forced_by_sender {
                    message.sender_rule = ruling.sender_hit.as_ref().map(|h| h.rule);
                }
                let reply = refused.then(|| state::escape_reply(&ruling.decision.reason));
                message.add_recipient(PendingRecipient::new(&ruling, &recipient, reply), CAP);
            }
            3 => {
                let (name, value) = (b.text(), b.text());
                if let Some(m) = session.message.as_mut() {
                    m.header(&name, &value, HEADER_CAP);
                }
            }
            4 | 5 => {
                let values: Vec<String> = (0..7).map(|_| b.text()).collect();
                let seen = Seen::from_macros(|n| {
                    let i = ["i", "j", "{daemon_name}", "{tls_version}", "{cipher}"]
                        .iter()
                        .position(|m| *m == n)
                        .unwrap_or(5);
                    values.get(i).cloned()
                });
                let Some(message) = session.message.take() else {
                    continue;
                };
                check_message(&message, &knowledge);
                let ending = if b.byte().unwrap_or(0) % 2 == 0 {
                    Ending::EndOfMessage(Vec::new())
                } else {
                    Ending::Aborted("fuzz abort")
                };
                let rec = state::record(&session, message, seen, CAP, ending);
                let line = serde_json::to_string(&rec).expect("a record serialises");
                assert!(!line.contains('\n'));
                serde_json::from_str::<serde_json::Value>(&line).expect("a record is JSON");
            }
            6 => {
                let t = state::escape_reply(&b.text());
                assert!(!t.replace("%%", "").contains('%'), "lone % in {t:?}");
            }
            _ => {
                let v = b.text();
                let _ = state::tls_required_says_no(&v);
                assert!(state::bounded(&v).len() <= MAX_FIELD_LEN);
            }
        }
    }
    if let Some(m) = &session.message {
        check_message(m, &knowledge);
    }
}
