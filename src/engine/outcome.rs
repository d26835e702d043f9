//! What a delivery proves about a decision: the verdict of one delivery
//! attempt, given the level that governed it and what Postfix logged.
//!
//! The rule, once: a level needs a certain trust in the peer's certificate
//! ([`required_trust`]); a delivery that went out with less is a
//! [`Verdict::Violation`]; one that was held back for a TLS reason is
//! [`Verdict::Held`] (nothing left in plaintext); one that Postfix could
//! not get a policy for is [`Verdict::PolicyUnreachable`]; one that no
//! decision was asked for is [`Verdict::Undecided`].

use std::fmt;
use std::str::FromStr;

use super::decision::{Level, Tls};

/// How far Postfix trusted the TLS of the connection a delivery went over
/// (its `Anonymous|Untrusted|Trusted|Verified TLS connection` line), or
/// `None` for plaintext. Ordered: more trust compares greater.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TlsTrust {
    None,
    Anonymous,
    Untrusted,
    Trusted,
    Verified,
}

impl TlsTrust {
    pub const ALL: [TlsTrust; 5] = [
        TlsTrust::None,
        TlsTrust::Anonymous,
        TlsTrust::Untrusted,
        TlsTrust::Trusted,
        TlsTrust::Verified,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            TlsTrust::None => "none",
            TlsTrust::Anonymous => "anonymous",
            TlsTrust::Untrusted => "untrusted",
            TlsTrust::Trusted => "trusted",
            TlsTrust::Verified => "verified",
        }
    }
}

/// What happened to one delivery attempt, as far as TLS matters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attempt {
    /// Delivered (`status=sent`) over a connection of this trust.
    Sent(TlsTrust),
    /// Not delivered (deferred, bounced, expired) because of TLS: not
    /// offered, not verified, a handshake or DANE failure.
    HeldForTls,
    /// Not delivered because Postfix had no valid TLS policy (`client TLS
    /// configuration problem`: the policy server did not answer usably).
    NoPolicy,
    /// Not delivered for a reason that is not TLS (the peer's 4xx/5xx, a
    /// connection that failed before any TLS).
    NotDelivered,
}

/// The governing decision, as the verdict needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Governing {
    pub level: Level,
    /// Postfix asked tls-policyd for it. `false`: no decision was asked
    /// for this delivery, and the level is what the operator's rule says
    /// now (the delivery bypassed the policy).
    pub consulted: bool,
}

/// The verdict of one delivery attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Verdict {
    /// Delivered over TLS that Postfix verified, as the level required or
    /// better.
    Verified,
    /// Delivered over TLS that was not verified, and the level asked no
    /// more.
    Encrypted,
    /// Opportunistic, no TLS: delivered in plaintext, as designed.
    PlaintextFallback,
    /// A level that needs TLS, not delivered for a TLS reason: nothing was
    /// sent in plaintext.
    Held,
    /// A level that needs TLS (or verification), yet delivered in
    /// plaintext or with less trust than the level needs.
    Violation,
    /// Postfix could not get an answer from tls-policyd.
    PolicyUnreachable,
    /// Delivered where no decision was asked for.
    Undecided,
    /// Not delivered, for a reason that is not TLS.
    NotDelivered,
}

impl Verdict {
    pub const ALL: [Verdict; 8] = [
        Verdict::Verified,
        Verdict::Encrypted,
        Verdict::PlaintextFallback,
        Verdict::Held,
        Verdict::Violation,
        Verdict::PolicyUnreachable,
        Verdict::Undecided,
        Verdict::NotDelivered,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Verified => "verified",
            Verdict::Encrypted => "encrypted",
            Verdict::PlaintextFallback => "plaintext-fallback",
            Verdict::Held => "held",
            Verdict::Violation => "violation",
            Verdict::PolicyUnreachable => "policy-unreachable",
            Verdict::Undecided => "undecided",
            Verdict::NotDelivered => "not-delivered",
        }
    }

    /// Whether an operator must look at it: a violation, a delivery
    /// tls-policyd could not govern, or one that bypassed a rule that
    /// forces TLS (see [`Alarm`]).
    pub fn alarm(self, forced_by_rule: bool) -> Option<Alarm> {
        match self {
            Verdict::Violation => Some(Alarm::Violation),
            Verdict::PolicyUnreachable => Some(Alarm::PolicyUnreachable),
            Verdict::Undecided if forced_by_rule => Some(Alarm::UndecidedForced),
            _ => None,
        }
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Verdict {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Verdict::ALL
            .into_iter()
            .find(|v| v.as_str() == s)
            .ok_or_else(|| {
                let all: Vec<&str> = Verdict::ALL.iter().map(|v| v.as_str()).collect();
                format!("unknown verdict {s:?}; use one of {}", all.join(", "))
            })
    }
}

/// Why a delivery needs an operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Alarm {
    Violation,
    PolicyUnreachable,
    /// Delivered without asking tls-policyd, to a domain a rule forces.
    UndecidedForced,
}

impl Alarm {
    pub const ALL: [Alarm; 3] = [
        Alarm::Violation,
        Alarm::PolicyUnreachable,
        Alarm::UndecidedForced,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Alarm::Violation => "violation",
            Alarm::PolicyUnreachable => "policy-unreachable",
            Alarm::UndecidedForced => "undecided-forced",
        }
    }

    /// What to check, for the operator.
    pub fn advice(self) -> &'static str {
        match self {
            Alarm::Violation => {
                "delivered with less TLS than the decision required: check that this transport \
                 uses smtp_tls_policy_maps (postconf -P; tls-policyd doctor)"
            }
            Alarm::PolicyUnreachable => {
                "Postfix could not get a TLS policy from tls-policyd: check that the daemon runs \
                 and that smtp(8) can reach its socket (chroot; tls-policyd doctor)"
            }
            Alarm::UndecidedForced => {
                "delivered to a domain a rule forces without asking tls-policyd: check the \
                 transport's smtp_tls_policy_maps (postconf -P; tls-policyd doctor)"
            }
        }
    }
}

/// The least trust a delivery at `level` may go out with: none for the
/// levels that may fall back to plaintext (`none`, `may`, `dane` without
/// usable TLSA records), any TLS for `encrypt`, a verified certificate
/// for `dane-only`, `verify` and `secure`.
pub fn required_trust(level: Level) -> TlsTrust {
    match level {
        Level::None | Level::May | Level::Dane => TlsTrust::None,
        Level::Encrypt => TlsTrust::Anonymous,
        Level::DaneOnly | Level::Verify | Level::Secure => TlsTrust::Verified,
    }
}

/// The verdict of `attempt` under `governing` (`None`: no decision was
/// asked for and no rule names the destination).
pub fn verdict(governing: Option<Governing>, attempt: Attempt) -> Verdict {
    if attempt == Attempt::NoPolicy {
        return Verdict::PolicyUnreachable;
    }
    let Some(g) = governing else {
        return match attempt {
            Attempt::Sent(_) => Verdict::Undecided,
            _ => Verdict::NotDelivered,
        };
    };
    let judged = match attempt {
        Attempt::Sent(trust) if trust < required_trust(g.level) => Verdict::Violation,
        Attempt::Sent(TlsTrust::Verified) => Verdict::Verified,
        Attempt::Sent(TlsTrust::None) => Verdict::PlaintextFallback,
        Attempt::Sent(_) => Verdict::Encrypted,
        // `dane` holds mail when the TLSA records it found do not match.
        Attempt::HeldForTls if g.level.tls() == Tls::Forced || g.level == Level::Dane => {
            Verdict::Held
        }
        Attempt::HeldForTls | Attempt::NotDelivered => Verdict::NotDelivered,
        Attempt::NoPolicy => Verdict::PolicyUnreachable,
    };
    match judged {
        // Not asked, yet nothing broke the rule: the delivery still
        // bypassed the policy.
        Verdict::Verified | Verdict::Encrypted | Verdict::PlaintextFallback if !g.consulted => {
            Verdict::Undecided
        }
        v => v,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Attempt::*;
    use TlsTrust as T;
    use Verdict as V;

    fn asked(level: Level) -> Option<Governing> {
        Some(Governing {
            level,
            consulted: true,
        })
    }

    fn rule(level: Level) -> Option<Governing> {
        Some(Governing {
            level,
            consulted: false,
        })
    }

    #[test]
    fn verdicts() {
        let cases = [
            // Opportunistic: anything delivered is fine.
            (asked(Level::May), Sent(T::None), V::PlaintextFallback),
            (asked(Level::May), Sent(T::Anonymous), V::Encrypted),
            (asked(Level::May), Sent(T::Untrusted), V::Encrypted),
            (asked(Level::May), Sent(T::Trusted), V::Encrypted),
            (asked(Level::May), Sent(T::Verified), V::Verified),
            (asked(Level::None), Sent(T::None), V::PlaintextFallback),
            (asked(Level::Dane), Sent(T::None), V::PlaintextFallback),
            (asked(Level::Dane), Sent(T::Verified), V::Verified),
            // encrypt: any TLS, never plaintext.
            (asked(Level::Encrypt), Sent(T::None), V::Violation),
            (asked(Level::Encrypt), Sent(T::Anonymous), V::Encrypted),
            (asked(Level::Encrypt), Sent(T::Verified), V::Verified),
            // Verification levels: exactly Verified.
            (asked(Level::Verify), Sent(T::Trusted), V::Violation),
            (asked(Level::Verify), Sent(T::Verified), V::Verified),
            (asked(Level::Secure), Sent(T::Untrusted), V::Violation),
            (asked(Level::Secure), Sent(T::None), V::Violation),
            (asked(Level::DaneOnly), Sent(T::Trusted), V::Violation),
            (asked(Level::DaneOnly), Sent(T::Verified), V::Verified),
            // Not delivered.
            (asked(Level::Encrypt), HeldForTls, V::Held),
            (asked(Level::DaneOnly), HeldForTls, V::Held),
            (asked(Level::Dane), HeldForTls, V::Held),
            (asked(Level::May), HeldForTls, V::NotDelivered),
            (asked(Level::Secure), NotDelivered, V::NotDelivered),
            (asked(Level::Secure), NoPolicy, V::PolicyUnreachable),
            (None, NoPolicy, V::PolicyUnreachable),
            // Nothing asked, no rule.
            (None, Sent(T::None), V::Undecided),
            (None, Sent(T::Verified), V::Undecided),
            (None, HeldForTls, V::NotDelivered),
            (None, NotDelivered, V::NotDelivered),
            // Nothing asked, a rule forces: a breach is still a violation.
            (rule(Level::Encrypt), Sent(T::None), V::Violation),
            (rule(Level::Secure), Sent(T::Trusted), V::Violation),
            (rule(Level::Encrypt), Sent(T::Anonymous), V::Undecided),
            (rule(Level::Secure), Sent(T::Verified), V::Undecided),
            (rule(Level::Encrypt), HeldForTls, V::Held),
        ];
        for (governing, attempt, want) in cases {
            assert_eq!(
                verdict(governing, attempt),
                want,
                "{governing:?} {attempt:?}"
            );
        }
    }

    #[test]
    fn trust_order_and_requirements() {
        assert!(TlsTrust::ALL.windows(2).all(|w| w[0] < w[1]));
        for level in Level::ALL {
            let need = required_trust(level);
            // A level may send plaintext exactly when it needs no trust.
            assert_eq!(
                need == TlsTrust::None,
                level.tls() == Tls::Opportunistic,
                "{level}"
            );
        }
    }

    #[test]
    fn names_round_trip_and_alarms() {
        for v in Verdict::ALL {
            assert_eq!(v.as_str().parse::<Verdict>(), Ok(v));
        }
        let e = "sent".parse::<Verdict>().unwrap_err();
        assert!(
            e.contains("plaintext-fallback") && e.contains("\"sent\""),
            "{e}"
        );
        assert_eq!(V::Violation.alarm(false), Some(Alarm::Violation));
        assert_eq!(
            V::PolicyUnreachable.alarm(false),
            Some(Alarm::PolicyUnreachable)
        );
        assert_eq!(V::Undecided.alarm(true), Some(Alarm::UndecidedForced));
        assert_eq!(V::Undecided.alarm(false), None);
        assert_eq!(V::Held.alarm(true), None);
        let names: Vec<_> = Alarm::ALL.iter().map(|a| a.as_str()).collect();
        assert_eq!(
            names,
            ["violation", "policy-unreachable", "undecided-forced"]
        );
    }
}
