//! Early refusal: turning a recipient away at RCPT time when its domain
//! requires forced TLS and tls-policyd already knows that delivery cannot
//! meet the requirement (no mail server offers STARTTLS, or the certificate
//! cannot be verified for `verify`/`secure`).
//!
//! Without this, Postfix accepts such mail, finds out at delivery, and keeps
//! it in the queue until `maximal_queue_lifetime` runs out, days later; the
//! sender only then gets a bounce. Refusing at RCPT tells the sender right
//! away, while the SMTP session is still open.
//!
//! The rules are conservative: **never refuse on a guess**. Nothing known,
//! stale knowledge, a failed probe: all of those are [`DeliveryAssessment::Unknown`]
//! and the recipient is accepted. Only positive knowledge that the
//! requirement cannot be met gives [`DeliveryAssessment::Cannot`].
//!
//! This module knows nothing about any front door: the policy server and
//! the milter build their replies from [`assess`], [`refusal_text`] and
//! [`status_codes`].

use std::fmt;
use std::str::FromStr;

use serde::Deserialize;

use super::decision::{Decision, Level};
use crate::util::text::printable_ascii;

/// Longest reply text built by [`refusal_text`], in bytes. Postfix puts
/// `450 4.7.10 <recipient>: Recipient address rejected: ` in front of it,
/// and an SMTP reply line must stay within 512 bytes.
pub const MAX_REFUSAL_TEXT: usize = 300;

/// What is known about a domain's inbound TLS (from a STARTTLS prober).
pub trait TlsKnowledge: Send + Sync {
    /// What is known about the domain's inbound TLS, never blocking on
    /// I/O; `None` = nothing fresh. `domain` is normalised (lower case,
    /// A-labels, no trailing dot). Implementations must not return stale
    /// knowledge: a refusal is only as good as what this says.
    fn known(&self, domain: &str) -> Option<Capability>;

    /// Ask for knowledge to be gathered in the background (a miss on the
    /// hot path). Must return at once.
    fn schedule(&self, domain: &str);
}

/// A domain's inbound TLS, as last observed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Capability {
    /// No mail server of the domain offers STARTTLS.
    NoStarttls { detail: String },
    /// STARTTLS is offered, but the certificate does not verify (untrusted
    /// issuer, expired, name mismatch).
    StarttlsUnverified { detail: String },
    /// STARTTLS with a certificate that verifies for these names.
    StarttlsVerified { names: Vec<String> },
    /// The probe ran but could not tell (timeouts, refused connections,
    /// DNS failures).
    Unknown { detail: String },
}

/// Knowledge that knows nothing: every domain is unknown, so nothing is
/// ever refused. For setups without a prober.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoKnowledge;

impl TlsKnowledge for NoKnowledge {
    fn known(&self, _domain: &str) -> Option<Capability> {
        None
    }

    fn schedule(&self, _domain: &str) {}
}

/// What to answer when delivery is known to be impossible.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RefuseMode {
    /// `DEFER_IF_PERMIT 4.7.10 …`: a temporary refusal (the client sees
    /// `450 4.7.10`), so a sender who fixes things, or a receiver who
    /// enables STARTTLS, gets the mail through on the next attempt.
    #[default]
    Defer,
    /// `REJECT 5.7.10 …`: a permanent refusal.
    Reject,
    /// Never refuse; accept and let the mail wait in the queue.
    Off,
}

impl RefuseMode {
    pub fn as_str(self) -> &'static str {
        match self {
            RefuseMode::Defer => "defer",
            RefuseMode::Reject => "reject",
            RefuseMode::Off => "off",
        }
    }
}

impl fmt::Display for RefuseMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for RefuseMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "defer" => Ok(RefuseMode::Defer),
            "reject" => Ok(RefuseMode::Reject),
            "off" => Ok(RefuseMode::Off),
            _ => Err(format!(
                "{s:?} is not a refusal mode; use \"defer\", \"reject\" or \"off\""
            )),
        }
    }
}

/// What a forced decision needs from the receiving side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Requirement {
    /// STARTTLS must be offered (`encrypt`, and `dane-only`, whose DANE
    /// authentication is not assessed here).
    Starttls { level: Level },
    /// STARTTLS with a certificate that verifies (`verify`, `secure`).
    VerifiedCertificate { level: Level },
}

impl Requirement {
    /// The requirement of a level; `None` for levels that may fall back
    /// to plaintext (nothing to refuse for).
    pub fn of(level: Level) -> Option<Requirement> {
        match level {
            Level::None | Level::May | Level::Dane => None,
            Level::Encrypt | Level::DaneOnly => Some(Requirement::Starttls { level }),
            Level::Verify | Level::Secure => Some(Requirement::VerifiedCertificate { level }),
        }
    }

    pub fn level(self) -> Level {
        match self {
            Requirement::Starttls { level } | Requirement::VerifiedCertificate { level } => level,
        }
    }
}

impl fmt::Display for Requirement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Requirement::Starttls {
                level: Level::DaneOnly,
            } => f.write_str("DANE-authenticated TLS (dane-only)"),
            Requirement::Starttls { level } => write!(f, "forced TLS ({level})"),
            Requirement::VerifiedCertificate { level } => {
                write!(f, "TLS with a verified certificate ({level})")
            }
        }
    }
}

/// Whether a delivery can meet a decision's requirement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeliveryAssessment {
    /// Nothing stands in the way (or the level falls back to plaintext).
    Deliverable,
    /// Not known: accept.
    Unknown,
    /// Known not to work: what is required and what was found instead.
    Cannot {
        requirement: Requirement,
        found: String,
    },
}

/// Judge a decision against what is known about the destination. Pure:
/// the caller fetches the knowledge.
pub fn assess(decision: &Decision, cap: Option<&Capability>) -> DeliveryAssessment {
    // A source that could not decide is not knowledge.
    if decision.temporary {
        return DeliveryAssessment::Unknown;
    }
    let Some(requirement) = Requirement::of(decision.level) else {
        return DeliveryAssessment::Deliverable;
    };
    let Some(cap) = cap else {
        return DeliveryAssessment::Unknown;
    };
    match (requirement, cap) {
        (_, Capability::Unknown { .. }) => DeliveryAssessment::Unknown,
        (_, Capability::NoStarttls { detail }) => DeliveryAssessment::Cannot {
            requirement,
            found: with_detail("no mail server of the domain offers STARTTLS", detail),
        },
        // DANE authentication is not something the prober judges.
        (
            Requirement::Starttls {
                level: Level::DaneOnly,
            },
            _,
        ) => DeliveryAssessment::Unknown,
        (Requirement::Starttls { .. }, _) => DeliveryAssessment::Deliverable,
        (Requirement::VerifiedCertificate { .. }, Capability::StarttlsUnverified { detail }) => {
            DeliveryAssessment::Cannot {
                requirement,
                found: with_detail(
                    "the domain's mail servers offer STARTTLS but their certificate does not verify",
                    detail,
                ),
            }
        }
        // `match=` patterns are Postfix's to check at delivery; a verified
        // certificate is enough not to refuse.
        (Requirement::VerifiedCertificate { .. }, Capability::StarttlsVerified { .. }) => {
            DeliveryAssessment::Deliverable
        }
    }
}

fn with_detail(what: &str, detail: &str) -> String {
    let detail = detail.trim();
    if detail.is_empty() {
        what.to_string()
    } else {
        format!("{what} ({detail})")
    }
}

/// The text of a refusal, after the status code: which domain, which
/// requirement, what was found. Printable ASCII only (anything else from
/// probe details becomes `?`) and at most [`MAX_REFUSAL_TEXT`] bytes.
pub fn refusal_text(domain: &str, requirement: Requirement, found: &str) -> String {
    let head = format!("TLS policy for {domain} requires {requirement}, but ");
    let tail = "; the mail could not be delivered";
    let mut text = sanitize(&head);
    let room = MAX_REFUSAL_TEXT.saturating_sub(text.len() + tail.len());
    let found = sanitize(found);
    if found.len() <= room {
        text.push_str(&found);
    } else {
        // ASCII after sanitising, so any index is a char boundary.
        let cut = room.saturating_sub(3);
        text.push_str(&found[..cut]);
        text.push_str("...");
    }
    if text.len() + tail.len() <= MAX_REFUSAL_TEXT {
        text.push_str(tail);
    }
    text.truncate(MAX_REFUSAL_TEXT);
    text
}

/// The complete policy action for a refusal (`DEFER_IF_PERMIT 4.7.10 …` or
/// `REJECT 5.7.10 …`); `None` when refusals are off.
pub fn refusal_action(
    mode: RefuseMode,
    domain: &str,
    requirement: Requirement,
    found: &str,
) -> Option<String> {
    let verb = match mode {
        RefuseMode::Defer => "DEFER_IF_PERMIT",
        RefuseMode::Reject => "REJECT",
        RefuseMode::Off => return None,
    };
    let (_, enhanced) = status_codes(mode)?;
    Some(format!(
        "{verb} {enhanced} {}",
        refusal_text(domain, requirement, found)
    ))
}

/// The SMTP reply code and enhanced status code a refusal gives the
/// client: `450`/`4.7.10` (defer) or `550`/`5.7.10` (reject); `None` when
/// refusals are off.
pub fn status_codes(mode: RefuseMode) -> Option<(&'static str, &'static str)> {
    match mode {
        RefuseMode::Defer => Some(("450", "4.7.10")),
        RefuseMode::Reject => Some(("550", "5.7.10")),
        RefuseMode::Off => None,
    }
}

/// Printable ASCII; everything else (controls, non-ASCII) becomes `?`.
fn sanitize(s: &str) -> String {
    printable_ascii(s, usize::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::decision::SourceKind;
    use std::sync::Arc;
    use std::time::Duration;

    fn decision(level: Level) -> Decision {
        Decision {
            level,
            policy: Arc::from(level.as_str()),
            source: SourceKind::Static,
            rule: Some(1),
            matched: None,
            reason: Arc::from("r"),
            ttl: Duration::from_secs(1),
            raised: false,
            temporary: false,
            published: None,
        }
    }

    fn no_tls() -> Capability {
        Capability::NoStarttls {
            detail: "mx1.example: STARTTLS not offered".into(),
        }
    }

    fn unverified() -> Capability {
        Capability::StarttlsUnverified {
            detail: "self-signed".into(),
        }
    }

    fn verified() -> Capability {
        Capability::StarttlsVerified {
            names: vec!["mx1.example".into()],
        }
    }

    fn unknown() -> Capability {
        Capability::Unknown {
            detail: "timeout".into(),
        }
    }

    fn cannot(a: &DeliveryAssessment) -> bool {
        matches!(a, DeliveryAssessment::Cannot { .. })
    }

    #[test]
    fn opportunistic_levels_are_always_deliverable() {
        for level in [Level::None, Level::May, Level::Dane] {
            for cap in [None, Some(no_tls()), Some(unverified())] {
                assert_eq!(
                    assess(&decision(level), cap.as_ref()),
                    DeliveryAssessment::Deliverable,
                    "{level}"
                );
            }
        }
    }

    #[test]
    fn never_refuse_without_knowledge() {
        for level in Level::ALL {
            assert!(!cannot(&assess(&decision(level), None)), "{level}");
            assert!(
                !cannot(&assess(&decision(level), Some(&unknown()))),
                "{level}"
            );
        }
        assert_eq!(
            assess(&decision(Level::Encrypt), None),
            DeliveryAssessment::Unknown
        );
    }

    #[test]
    fn temporary_decisions_never_refuse() {
        for level in Level::ALL {
            let mut d = decision(level);
            d.temporary = true;
            assert_eq!(
                assess(&d, Some(&no_tls())),
                DeliveryAssessment::Unknown,
                "{level}"
            );
        }
    }

    #[test]
    fn encrypt_needs_starttls_only() {
        let d = decision(Level::Encrypt);
        let a = assess(&d, Some(&no_tls()));
        let DeliveryAssessment::Cannot { requirement, found } = a else {
            panic!("{a:?}")
        };
        assert_eq!(
            requirement,
            Requirement::Starttls {
                level: Level::Encrypt
            }
        );
        assert!(found.contains("offers STARTTLS"), "{found}");
        assert!(
            found.contains("mx1.example: STARTTLS not offered"),
            "{found}"
        );
        assert_eq!(
            assess(&d, Some(&unverified())),
            DeliveryAssessment::Deliverable
        );
        assert_eq!(
            assess(&d, Some(&verified())),
            DeliveryAssessment::Deliverable
        );
    }

    #[test]
    fn verify_and_secure_need_a_verified_certificate() {
        for level in [Level::Verify, Level::Secure] {
            let d = decision(level);
            assert!(cannot(&assess(&d, Some(&no_tls()))));
            let a = assess(&d, Some(&unverified()));
            let DeliveryAssessment::Cannot { requirement, found } = a else {
                panic!("{a:?}")
            };
            assert_eq!(requirement, Requirement::VerifiedCertificate { level });
            assert!(found.contains("does not verify (self-signed)"), "{found}");
            assert_eq!(
                assess(&d, Some(&verified())),
                DeliveryAssessment::Deliverable
            );
        }
    }

    #[test]
    fn dane_only_refused_only_without_starttls() {
        let d = decision(Level::DaneOnly);
        assert!(cannot(&assess(&d, Some(&no_tls()))));
        assert_eq!(assess(&d, Some(&unverified())), DeliveryAssessment::Unknown);
        assert_eq!(assess(&d, Some(&verified())), DeliveryAssessment::Unknown);
    }

    #[test]
    fn refusal_text_names_domain_requirement_and_finding() {
        let r = Requirement::Starttls {
            level: Level::Encrypt,
        };
        let t = refusal_text("bank.example", r, "no mail server offers STARTTLS");
        assert_eq!(
            t,
            "TLS policy for bank.example requires forced TLS (encrypt), but no mail server offers STARTTLS; the mail could not be delivered"
        );
        assert_eq!(
            refusal_action(RefuseMode::Defer, "bank.example", r, "x").unwrap(),
            "DEFER_IF_PERMIT 4.7.10 TLS policy for bank.example requires forced TLS (encrypt), but x; the mail could not be delivered"
        );
        assert!(
            refusal_action(RefuseMode::Reject, "b.example", r, "x")
                .unwrap()
                .starts_with("REJECT 5.7.10 TLS policy for b.example")
        );
        assert_eq!(refusal_action(RefuseMode::Off, "b.example", r, "x"), None);
        let v = Requirement::VerifiedCertificate {
            level: Level::Secure,
        };
        assert!(refusal_text("p.example", v, "y").contains("verified certificate (secure)"));
    }

    #[test]
    fn refusal_text_is_bounded_printable_ascii() {
        let r = Requirement::Starttls {
            level: Level::Encrypt,
        };
        let found = format!("line1\r\nline2\tbücher {}", "z".repeat(1000));
        let t = refusal_text("bank.example", r, &found);
        assert!(t.len() <= MAX_REFUSAL_TEXT, "{}", t.len());
        assert!(t.chars().all(|c| c == ' ' || c.is_ascii_graphic()), "{t}");
        assert!(t.contains("line1??line2?b?cher"), "{t}");
        assert!(t.ends_with("z...; the mail could not be delivered"), "{t}");
    }

    #[test]
    fn refuse_mode_words() {
        assert_eq!("Defer".parse::<RefuseMode>(), Ok(RefuseMode::Defer));
        assert_eq!("reject".parse::<RefuseMode>(), Ok(RefuseMode::Reject));
        assert_eq!("off".parse::<RefuseMode>(), Ok(RefuseMode::Off));
        assert!(
            "no".parse::<RefuseMode>()
                .unwrap_err()
                .contains("\"defer\"")
        );
        assert_eq!(RefuseMode::default(), RefuseMode::Defer);
    }
}
