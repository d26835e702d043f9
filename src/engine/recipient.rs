//! Ruling on the recipients of a message, for the front doors that see
//! messages (the policy server and the milter): the domain's decision, the
//! sender rule that may force the whole message, which refusal setting
//! applies, early refusal against what the [`TlsKnowledge`] knows, and the
//! per-message summary (the trace header's text, the message's verdict).

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::Engine;
use super::decision::{Decision, SourceKind, Tls};
use super::key::{Destination, KeyForm};
use super::policy_file::{PolicyFile, SenderHit};
use super::refusal::{
    DeliveryAssessment, RefuseMode, Requirement, TlsKnowledge, assess, refusal_text,
};

/// Longest trace header line, name included (RFC 5322 allows 998).
pub const MAX_TRACE_HEADER_LEN: usize = 900;

/// Everything decided about one recipient.
#[derive(Debug, Clone)]
pub struct Ruling {
    /// The domain part as received.
    pub key: String,
    pub dest: Option<Destination>,
    /// The decision that applies: the domain's, raised to forced when a
    /// sender rule forces the whole message.
    pub decision: Decision,
    pub sender_hit: Option<SenderHit>,
    /// A sender rule matched and is applied: the message goes through the
    /// forced transport.
    pub forced_by_sender: bool,
    pub refuse: RefuseMode,
}

impl Ruling {
    /// The normalised domain, for domain destinations only (not address
    /// literals).
    ///
    /// A malformed domain that kept a rule's answer through the rule's
    /// exact domain entry ([`super::malformed`]) is that domain, so what
    /// is known of it refuses as it would for the well-formed name.
    pub fn domain(&self) -> Option<&str> {
        match &self.dest {
            Some(d) => (d.form == KeyForm::Domain).then_some(d.name.as_str()),
            None if super::malformed::held(None, &self.decision) => self
                .decision
                .matched
                .as_deref()
                .filter(|m| !m.starts_with(['.', '['])),
            None => None,
        }
    }

    /// This recipient's entry in the message's summary.
    pub fn recipient_decision(&self, recipient: &str, action: Option<String>) -> RecipientDecision {
        RecipientDecision {
            recipient: Some(recipient.to_string()),
            domain: self.dest.as_ref().map(|d| d.name.clone()),
            tls: self.decision.tls(),
            level: self.decision.policy.clone(),
            source: self.decision.source,
            rule: self.decision.rule,
            reason: self.decision.reason.clone(),
            action,
        }
    }
}

/// One recipient of a message as decided, and what was answered for it
/// (the per-message record lists these).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecipientDecision {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recipient: Option<String>,
    /// Normalised recipient domain; absent when the address had none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    pub tls: Tls,
    /// The Postfix level and attributes that apply (`encrypt`).
    pub level: Arc<str>,
    pub source: SourceKind,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule: Option<u32>,
    pub reason: Arc<str>,
    /// What was answered at RCPT for this recipient.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub action: Option<String>,
}

/// Decide for a recipient: the engine's decision for its domain, the
/// sender rule (applied, raising the decision to forced, only when
/// `apply_sender_rules`: the front door can route the message through the
/// forced transport), and which refusal setting applies (`default_refuse`
/// unless the rule behind the decision says otherwise).
pub async fn rule_recipient(
    engine: &Engine,
    recipient: &str,
    sender: &str,
    default_refuse: RefuseMode,
    apply_sender_rules: bool,
) -> Ruling {
    // The domain follows the last `@` (a quoted local part may hold one);
    // an address with a control character in it is not well-formed, and
    // everything after its first `@` is read for the domain it could name.
    let split = if recipient.chars().any(char::is_control) {
        recipient.split_once('@')
    } else {
        recipient.rsplit_once('@')
    };
    let key = split.map_or("", |(_, d)| d);
    let (dest, decision) = engine.decide_key(key).await;
    let policy = engine.policy();
    let sender_hit = policy.lookup_sender(sender);
    let forced_by_sender = apply_sender_rules && sender_hit.is_some();
    let raised = forced_by_sender && Requirement::of(decision.level).is_none();
    let refuse = if Requirement::of(decision.level).is_some() {
        // The domain itself requires forced TLS: its rule's setting.
        rule_refuse(policy, &decision).unwrap_or(default_refuse)
    } else if raised {
        sender_hit
            .as_ref()
            .and_then(|h| policy.sender_rule(h.rule))
            .and_then(|r| r.refuse)
            .unwrap_or(default_refuse)
    } else {
        default_refuse
    };
    let decision = if forced_by_sender {
        decision.forced()
    } else {
        decision
    };
    Ruling {
        key: key.to_string(),
        dest,
        decision,
        sender_hit,
        forced_by_sender,
        refuse,
    }
}

/// The `refuse` of the static rule behind a decision. Checked against the
/// decision's policy text so a reload between deciding and looking here
/// never picks another rule's setting.
pub fn rule_refuse(policy: &PolicyFile, decision: &Decision) -> Option<RefuseMode> {
    if decision.source != SourceKind::Static {
        return None;
    }
    let index = usize::try_from(decision.rule?.checked_sub(1)?).ok()?;
    let rule = policy.rules().get(index)?;
    if rule.policy != decision.policy {
        return None;
    }
    rule.refuse
}

/// Judge a forced decision for `domain` against what `knowledge` knows,
/// whatever the refusal setting; a miss schedules a background probe.
/// Levels that may fall back to plaintext are always deliverable.
pub fn assess_delivery(
    decision: &Decision,
    domain: Option<&str>,
    knowledge: &dyn TlsKnowledge,
) -> DeliveryAssessment {
    if Requirement::of(decision.level).is_none() {
        return DeliveryAssessment::Deliverable;
    }
    let Some(domain) = domain else {
        return DeliveryAssessment::Unknown;
    };
    let known = knowledge.known(domain);
    if known.is_none() {
        knowledge.schedule(domain);
    }
    assess(decision, known.as_ref())
}

/// An early refusal: which mode and the reply text after the status codes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub mode: RefuseMode,
    /// From [`refusal_text`]: printable ASCII, bounded.
    pub text: String,
}

/// The refusal for a recipient, if what is known says its forced TLS
/// cannot be met and its refusal setting is not `off`.
pub fn refusal_for(ruling: &Ruling, knowledge: &dyn TlsKnowledge) -> Option<Refusal> {
    if ruling.refuse == RefuseMode::Off {
        return None;
    }
    match assess_delivery(&ruling.decision, ruling.domain(), knowledge) {
        DeliveryAssessment::Cannot { requirement, found } => ruling.domain().map(|d| Refusal {
            mode: ruling.refuse,
            text: refusal_text(d, requirement, &found),
        }),
        _ => None,
    }
}

/// Longest recipient domain quoted in a hold's text.
const MAX_HELD_KEY_TEXT: usize = 100;

/// The temporary failure for a recipient whose domain is not a
/// destination but could name rules with different answers
/// ([`super::malformed`]): deferred (`4.7.10`) whatever the refusal
/// setting, since no answer is safe until the client sends it well-formed.
/// `None` for every other recipient.
pub fn hold_for(ruling: &Ruling) -> Option<Refusal> {
    if !(ruling.decision.temporary
        && super::malformed::held(ruling.dest.as_ref(), &ruling.decision))
    {
        return None;
    }
    let key = crate::util::text::printable_ascii(&ruling.key, MAX_HELD_KEY_TEXT);
    Some(Refusal {
        mode: RefuseMode::Defer,
        text: format!(
            "recipient domain {key:?} is not a valid destination and could name domains with different TLS rules; try again later"
        ),
    })
}

/// Whether a recipient's recorded action turned it away (a policy
/// `DEFER_IF_PERMIT`/`REJECT`, or a milter `4xx`/`5xx` reply).
pub fn is_refused(action: Option<&str>) -> bool {
    action.is_some_and(|a| {
        a.starts_with("DEFER_IF_PERMIT")
            || a.starts_with("REJECT")
            || a.starts_with('4')
            || a.starts_with('5')
    })
}

/// The trace header value: each domain once, in order, with its class,
/// level and source; refused recipients are left out (they are not part
/// of the message).
pub fn trace_value(recipients: &[RecipientDecision], sender_rule: Option<u32>) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut seen: Vec<&str> = Vec::new();
    let mut more = 0usize;
    // Room for the parts, leaving space for the name and the tail.
    let budget = MAX_TRACE_HEADER_LEN.saturating_sub(120);
    let mut used = 0usize;
    for r in recipients {
        if is_refused(r.action.as_deref()) {
            continue;
        }
        let domain = r.domain.as_deref().unwrap_or("(no domain)");
        if seen.contains(&domain) {
            continue;
        }
        seen.push(domain);
        let source = match r.rule {
            Some(n) => format!("{} rule {n}", r.source),
            None => r.source.to_string(),
        };
        let part = format!("{domain}={} ({}, {source})", r.tls, r.level);
        if used + part.len() + 2 > budget {
            more += 1;
            continue;
        }
        used += part.len() + 2;
        parts.push(part);
    }
    let mut value = parts.join("; ");
    if more > 0 {
        value.push_str(&format!("; +{more} more domains"));
    }
    if let Some(n) = sender_rule
        && !value.is_empty()
    {
        value.push_str(&format!(
            "; sender rule {n}: forced TLS for the whole message"
        ));
    }
    value
}

/// The recipients of one message: those remembered, how many more there
/// were, and the sender rule that forces the message.
pub struct MessageSummary<'a> {
    pub recipients: Vec<RecipientDecision>,
    /// Recipients over `cap`, counted only.
    pub dropped: usize,
    pub cap: usize,
    pub sender_rule: Option<u32>,
    /// The reason when no recipient is known at all.
    pub empty_reason: &'a str,
}

/// What a whole message comes to: forced when any recipient (or a sender
/// rule) is, the strictest recipient's source, and a reason that counts
/// the recipients.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageVerdict {
    pub tls: Tls,
    pub source: SourceKind,
    pub reason: Arc<str>,
}

impl MessageSummary<'_> {
    pub fn verdict(&self) -> MessageVerdict {
        let recipients = &self.recipients;
        let forced = recipients.iter().filter(|r| r.tls == Tls::Forced).count();
        let strictest = recipients
            .iter()
            .find(|r| r.tls == Tls::Forced)
            .or(recipients.first());
        let reason = if recipients.is_empty() {
            self.empty_reason.to_string()
        } else {
            let total = recipients.len() + self.dropped;
            let mut s = format!(
                "message with {total} recipient{}: {forced} forced, {} opportunistic",
                if total == 1 { "" } else { "s" },
                recipients.len() - forced
            );
            if self.dropped > 0 {
                s.push_str(&format!(
                    ", {} not listed (over {})",
                    self.dropped, self.cap
                ));
            }
            s
        };
        MessageVerdict {
            tls: if forced > 0 || self.sender_rule.is_some() {
                Tls::Forced
            } else {
                Tls::Opportunistic
            },
            source: strictest.map_or(SourceKind::Default, |r| r.source),
            reason: Arc::from(reason),
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::engine::decision::Level;

    /// A recipient record for `u@domain` by policy-file rule 1.
    pub(crate) fn rcpt(
        domain: &str,
        tls: Tls,
        level: &str,
        action: Option<&str>,
    ) -> RecipientDecision {
        RecipientDecision {
            recipient: Some(format!("u@{domain}")),
            domain: Some(domain.to_string()),
            tls,
            level: Arc::from(level),
            source: SourceKind::Static,
            rule: Some(1),
            reason: Arc::from("r"),
            action: action.map(str::to_string),
        }
    }

    #[test]
    fn trace_value_lists_each_domain_once_without_refused_ones() {
        let v = trace_value(
            &[
                rcpt("bank.example", Tls::Forced, "encrypt", Some("DUNNO")),
                rcpt("bank.example", Tls::Forced, "encrypt", Some("DUNNO")),
                rcpt(
                    "gone.example",
                    Tls::Forced,
                    "encrypt",
                    Some("DEFER_IF_PERMIT 4.7.10 x"),
                ),
                rcpt(
                    "milter-gone.example",
                    Tls::Forced,
                    "encrypt",
                    Some("450 4.7.10 x"),
                ),
                rcpt("other.example", Tls::Opportunistic, "may", None),
            ],
            None,
        );
        assert_eq!(
            v,
            "bank.example=forced (encrypt, static rule 1); other.example=opportunistic (may, static rule 1)"
        );
        let v = trace_value(&[rcpt("a.example", Tls::Forced, "encrypt", None)], Some(2));
        assert!(
            v.ends_with("; sender rule 2: forced TLS for the whole message"),
            "{v}"
        );
        assert_eq!(trace_value(&[], Some(1)), "");
    }

    #[test]
    fn refused_actions() {
        assert!(is_refused(Some("DEFER_IF_PERMIT 4.7.10 x")));
        assert!(is_refused(Some("REJECT 5.7.10 x")));
        assert!(is_refused(Some("450 4.7.10 x")));
        assert!(is_refused(Some("550 5.7.10 x")));
        assert!(!is_refused(Some("DUNNO")));
        assert!(!is_refused(Some("FILTER smtp-tls-forced:")));
        assert!(!is_refused(None));
    }

    #[test]
    fn rule_refuse_checks_the_rule_still_matches() {
        let p = PolicyFile::parse(
            "[[rule]]\ndomains=[\"a.example\"]\ntls=\"forced\"\nrefuse=\"reject\"\n",
            std::path::Path::new("p.toml"),
        )
        .unwrap();
        let d = p.decision(p.lookup(&Destination::parse("a.example").unwrap()).unwrap());
        assert_eq!(rule_refuse(&p, &d), Some(RefuseMode::Reject));
        let mut other = d.clone();
        other.policy = Arc::from("secure");
        assert_eq!(rule_refuse(&p, &other), None);
        let mut dflt = d.clone();
        dflt.source = SourceKind::Default;
        assert_eq!(rule_refuse(&p, &dflt), None);
        assert_eq!(Level::Encrypt, d.level);
    }

    #[tokio::test]
    async fn sender_rules_raise_only_when_applied() {
        let p = PolicyFile::parse(
            "[[sender_rule]]\nsenders=[\"ceo@example.com\"]\ntls=\"forced\"\nrefuse=\"reject\"\n",
            std::path::Path::new("p.toml"),
        )
        .unwrap();
        let engine = Engine::new(p);
        let r = rule_recipient(
            &engine,
            "x@other.example",
            "ceo@example.com",
            RefuseMode::Defer,
            true,
        )
        .await;
        assert!(r.forced_by_sender);
        assert_eq!(r.decision.tls(), Tls::Forced);
        assert_eq!(r.refuse, RefuseMode::Reject);
        assert_eq!(r.domain(), Some("other.example"));
        let r = rule_recipient(
            &engine,
            "x@other.example",
            "ceo@example.com",
            RefuseMode::Defer,
            false,
        )
        .await;
        assert!(!r.forced_by_sender);
        assert_eq!(r.sender_hit.as_ref().map(|h| h.rule), Some(1));
        assert_eq!(r.decision.tls(), Tls::Opportunistic);
        assert_eq!(r.refuse, RefuseMode::Defer);
    }

    #[tokio::test]
    async fn malformed_recipient_domains_keep_their_rule_or_are_held() {
        let p = PolicyFile::parse(
            "[[rule]]\ndomains=[\"bank.example\"]\ntls=\"forced\"\n[[rule]]\ndomains=[\"other.example\"]\ntls=\"may\"\n",
            std::path::Path::new("p.toml"),
        )
        .unwrap();
        let engine = Engine::new(p);
        let ruled = |addr: &'static str| {
            let engine = engine.clone();
            async move { rule_recipient(&engine, addr, "", RefuseMode::Off, false).await }
        };
        for addr in [
            "u@bank.example:65536",
            "u@[bank.example",
            "u@bank.example\r",
            "u@bank.example\0@other.org",
            "u@bank.example>",
        ] {
            let r = ruled(addr).await;
            assert!(r.dest.is_none(), "{addr:?}");
            assert_eq!(
                (r.decision.rule, r.decision.tls(), r.decision.temporary),
                (Some(1), Tls::Forced, false),
                "{addr:?}"
            );
            assert_eq!(hold_for(&r), None, "{addr:?}");
        }
        // Two rules with different answers: held whatever `refuse` says.
        let r = ruled("u@bank.example\0other.example").await;
        assert!(r.decision.temporary);
        let hold = hold_for(&r).expect("held");
        assert_eq!(hold.mode, RefuseMode::Defer);
        assert!(
            hold.text.starts_with(
                "recipient domain \"bank.example?other.example\" is not a valid destination"
            ),
            "{}",
            hold.text
        );
        // A well-formed domain and a malformed one no rule could mean.
        assert_eq!(hold_for(&ruled("u@bank.example").await), None);
        let r = ruled("u@nothing..org").await;
        assert_eq!(
            (r.decision.source, hold_for(&r)),
            (SourceKind::Default, None)
        );
    }
}
