//! The answers per protocol stage: RCPT, DATA, END-OF-MESSAGE.

use super::{Live, MAX_RECIPIENTS_PER_MESSAGE, PolicyServerSettings, Server};
use crate::engine::Engine;
use crate::engine::decision::Decision;
use crate::engine::recipient::{
    MessageSummary, Refusal, Ruling, hold_for, refusal_for, rule_recipient, trace_value,
};
use crate::engine::refusal::{RefuseMode, TlsKnowledge, status_codes};
use crate::frontends::attrs::Request;
use crate::frontends::message::{header_value, non_empty};
use crate::frontends::note_malformed_key;
use crate::log::record::{
    DecisionRecord, Detail, Envelope, Message, MessageDoor, PolicyAction, Recipient,
};
use crate::metrics::Frontend;

impl Server {
    pub(super) async fn rcpt(&mut self, request: &Request, live: &Live) -> PolicyAction {
        let settings = &live.policy_server;
        let recipient = request.value("recipient");
        let instance = request.value("instance");
        let sender = request.value("sender");
        let engine = &live.engine;
        let ruling = rule(engine, recipient, sender, settings).await;
        if let Some(m) = self.deps.backend.metrics() {
            m.decision(Frontend::Policy, &ruling.decision);
        }
        let backend = self.deps.backend.as_ref();
        let (key, dest) = (&ruling.key, ruling.dest.as_ref());
        note_malformed_key(backend, "policy", key, dest, &ruling.decision);
        let refusal = hold_for(&ruling)
            .or_else(|| refusal_for(&ruling, self.deps.knowledge.as_ref()))
            .map(refusal_action);
        let action = match refusal {
            Some(r) => r,
            None if ruling.forced_by_sender && self.messages.take_filter(instance) => {
                PolicyAction::Filter {
                    transport: settings.forced_transport.clone(),
                }
            }
            None => PolicyAction::Dunno,
        };
        if !instance.is_empty() {
            let entry = ruling.recipient_decision(recipient, Some(action.to_string()));
            self.messages
                .add_recipient(instance, request, ruling.sender_hit.as_ref(), entry);
        }
        let rec = rcpt_record(request, &ruling, action.clone());
        self.deps.backend.decision_log().log(rec);
        action
    }

    pub(super) async fn data(&mut self, request: &Request, live: &Live) -> PolicyAction {
        let settings = &live.policy_server;
        let Some(name) = &settings.trace_header else {
            return PolicyAction::Dunno;
        };
        let instance = request.value("instance");
        let mut summary = self.messages.trace(instance).filter(|s| !s.is_empty());
        if summary.is_none() {
            // Not asked at RCPT (or the state is gone): a single recipient
            // can still be decided now.
            let recipient = request.value("recipient");
            if !recipient.is_empty() {
                let engine = &live.engine;
                let ruling = rule(engine, recipient, request.value("sender"), settings).await;
                let r = ruling.recipient_decision(recipient, None);
                summary = Some(trace_value(
                    std::slice::from_ref(&r),
                    ruling.sender_hit.as_ref().map(|h| h.rule),
                ));
            }
        }
        match summary {
            Some(s) if !s.is_empty() => trace_header(name, &s),
            _ => PolicyAction::Dunno,
        }
    }

    pub(super) async fn end_of_message(&mut self, request: &Request, live: &Live) -> PolicyAction {
        let instance = request.value("instance");
        let engine = &live.engine;
        let policy = engine.policy();
        let message = if instance.is_empty() {
            None
        } else {
            self.messages.take(instance)
        };
        if !instance.is_empty() && self.instance.as_deref() == Some(instance) {
            self.instance = None;
        }
        let sender = request.value("sender");
        let (recipients, dropped, sender_rule) = match message {
            Some(m) => (m.recipients, m.dropped, m.sender_rule),
            None => {
                let recipient = request.value("recipient");
                let settings = &live.policy_server;
                if recipient.is_empty() {
                    (Vec::new(), 0, policy.lookup_sender(sender).map(|h| h.rule))
                } else {
                    let ruling = rule(engine, recipient, sender, settings).await;
                    let hit = ruling.sender_hit.as_ref().map(|h| h.rule);
                    (vec![ruling.recipient_decision(recipient, None)], 0, hit)
                }
            }
        };
        let empty_reason = format!(
            "no RCPT decision was seen for this message (recipient_count={})",
            request.value("recipient_count")
        );
        let message = Message::new(
            MessageSummary {
                recipients,
                dropped,
                cap: MAX_RECIPIENTS_PER_MESSAGE,
                sender_rule,
                empty_reason: &empty_reason,
            },
            envelope(request),
            MessageDoor::Policy {
                instance: non_empty(instance),
                action: PolicyAction::Dunno,
            },
        );
        let queue_id = non_empty(request.value("queue_id"));
        let rec = DecisionRecord::new(queue_id, Detail::Message(message));
        self.deps.backend.decision_log().log(rec);
        PolicyAction::Dunno
    }
}

/// The record of a RCPT request: the recipient's domain as decided, and
/// what was answered.
fn rcpt_record(request: &Request, ruling: &Ruling, action: PolicyAction) -> DecisionRecord {
    let rcpt = Recipient {
        key: ruling.key.clone(),
        domain: ruling.dest.as_ref().map(|d| d.name.clone()),
        decision: ruling.decision.clone(),
        instance: non_empty(request.value("instance")),
        envelope: envelope(request),
        recipient: request.value("recipient").to_string(),
        action,
        sender_rule: ruling.sender_hit.as_ref().map(|h| h.rule),
    };
    DecisionRecord::new(
        non_empty(request.value("queue_id")),
        Detail::Recipient(rcpt),
    )
}

/// Sender and client of a request.
fn envelope(request: &Request) -> Envelope {
    Envelope {
        sender: request.value("sender").to_string(),
        client_address: non_empty(request.value("client_address")),
    }
}

/// What the policy server would answer at RCPT for a recipient in
/// `domain` with a null sender, from what `knowledge` knows now: the
/// decision and the action text (`DUNNO`, `DEFER_IF_PERMIT 4.7.10 …`).
/// For `tls-policyd probe`.
pub async fn rcpt_answer(
    engine: &Engine,
    domain: &str,
    settings: &PolicyServerSettings,
    knowledge: &dyn TlsKnowledge,
) -> (Decision, String) {
    let ruling = rule(engine, &format!("postmaster@{domain}"), "", settings).await;
    let action = hold_for(&ruling)
        .or_else(|| refusal_for(&ruling, knowledge))
        .map(refusal_action)
        .unwrap_or(PolicyAction::Dunno);
    (ruling.decision, action.to_string())
}

/// Decide for a recipient with the policy server's settings: sender rules
/// always apply (the message is FILTERed to the forced transport).
async fn rule(
    engine: &Engine,
    recipient: &str,
    sender: &str,
    settings: &PolicyServerSettings,
) -> Ruling {
    rule_recipient(engine, recipient, sender, settings.refuse, true).await
}

/// `DEFER_IF_PERMIT 4.7.10 …` or `REJECT 5.7.10 …`.
fn refusal_action(r: Refusal) -> PolicyAction {
    let (_, enhanced) = status_codes(r.mode).unwrap_or(("450", "4.7.10"));
    match r.mode {
        RefuseMode::Reject => PolicyAction::Reject {
            enhanced,
            text: r.text,
        },
        _ => PolicyAction::DeferIfPermit {
            enhanced,
            text: r.text,
        },
    }
}

/// `PREPEND Name: value`, sanitised and bounded.
pub(super) fn trace_header(name: &str, value: &str) -> PolicyAction {
    PolicyAction::Prepend {
        header: format!("{name}: {}", header_value(name, value)),
    }
}
