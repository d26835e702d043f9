//! What the engine decides: a Postfix TLS security level plus attributes,
//! whether that is forced or opportunistic, and where it came from.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Postfix TLS security levels tls-policyd answers with
/// (`postconf(5)`, `smtp_tls_security_level`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Level {
    None,
    May,
    Dane,
    Encrypt,
    DaneOnly,
    Verify,
    Secure,
}

impl Level {
    pub const ALL: [Level; 7] = [
        Level::None,
        Level::May,
        Level::Dane,
        Level::Encrypt,
        Level::DaneOnly,
        Level::Verify,
        Level::Secure,
    ];

    /// The word Postfix understands.
    pub fn as_str(self) -> &'static str {
        match self {
            Level::None => "none",
            Level::May => "may",
            Level::Dane => "dane",
            Level::Encrypt => "encrypt",
            Level::DaneOnly => "dane-only",
            Level::Verify => "verify",
            Level::Secure => "secure",
        }
    }

    /// Whether Postfix may ever send in plaintext at this level.
    pub fn tls(self) -> Tls {
        match self {
            Level::None | Level::May | Level::Dane => Tls::Opportunistic,
            Level::Encrypt | Level::DaneOnly | Level::Verify | Level::Secure => Tls::Forced,
        }
    }

    /// Whether the level takes `match=` certificate name patterns.
    pub fn takes_match(self) -> bool {
        matches!(self, Level::Verify | Level::Secure)
    }

    /// The weakest level at or above `self` that never sends plaintext; used
    /// by the forced map. `dane` becomes `dane-only`, everything else that
    /// may fall back to plaintext becomes `encrypt`.
    pub fn forced(self) -> Level {
        match self {
            Level::None | Level::May => Level::Encrypt,
            Level::Dane => Level::DaneOnly,
            other => other,
        }
    }
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Forced TLS never falls back to plaintext; opportunistic TLS may.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Tls {
    Opportunistic,
    Forced,
}

impl Tls {
    pub fn as_str(self) -> &'static str {
        match self {
            Tls::Opportunistic => "opportunistic",
            Tls::Forced => "forced",
        }
    }
}

impl fmt::Display for Tls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Tls {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "opportunistic" => Ok(Tls::Opportunistic),
            "forced" => Ok(Tls::Forced),
            other => Err(format!(
                "{other:?} is not a TLS class (opportunistic or forced)"
            )),
        }
    }
}

/// The value of `tls = …` in the policy file: the two product words plus
/// every Postfix level.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PolicyWord(pub Level);

impl FromStr for PolicyWord {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let level = match s.to_ascii_lowercase().as_str() {
            "opportunistic" | "may" => Level::May,
            "forced" | "encrypt" => Level::Encrypt,
            "verify" => Level::Verify,
            "secure" => Level::Secure,
            "dane" => Level::Dane,
            "dane-only" => Level::DaneOnly,
            "none" => Level::None,
            _ => {
                return Err(format!(
                    "unknown TLS level {s:?}; use one of opportunistic, forced, verify, secure, dane, dane-only, none"
                ));
            }
        };
        Ok(PolicyWord(level))
    }
}

/// Which source produced a decision, in precedence order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SourceKind {
    Static,
    Dane,
    MtaSts,
    Default,
}

impl SourceKind {
    pub fn as_str(self) -> &'static str {
        match self {
            SourceKind::Static => "static",
            SourceKind::Dane => "dane",
            SourceKind::MtaSts => "mta-sts",
            SourceKind::Default => "default",
        }
    }
}

impl fmt::Display for SourceKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A complete decision. Cheap to clone: the strings are shared.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub level: Level,
    /// Exactly what follows `OK ` in the socketmap reply:
    /// the level and its attributes, e.g. `secure match=mx1.example`.
    pub policy: Arc<str>,
    pub source: SourceKind,
    /// 1-based index of the policy-file rule, for static decisions.
    pub rule: Option<u32>,
    /// The rule entry that matched (`.bank.example`), for static decisions.
    pub matched: Option<Arc<str>>,
    /// Human-readable why.
    pub reason: Arc<str>,
    /// How long the decision may be cached by a caller.
    pub ttl: Duration,
    /// Set when the forced map raised a weaker answer.
    pub raised: bool,
    /// The source could not find out now what applies, and holding the
    /// mail is safer than guessing (a failed DNSSEC lookup for a domain
    /// that publishes DANE): front doors answer a temporary failure
    /// (socketmap `TEMP`), so Postfix defers delivery and tries again.
    /// `level` is what the source expects to apply once it knows.
    pub temporary: bool,
    /// The published policy behind a DANE or MTA-STS decision.
    pub published: Option<Arc<Published>>,
}

/// What identifies the published policy behind a decision, for the
/// decision log and `explain`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Published {
    /// MTA-STS: the policy id from the `_mta-sts` TXT record.
    pub policy_id: Option<Arc<str>>,
    /// MTA-STS: the policy mode (`enforce`, `testing`, `none`).
    pub mode: Option<&'static str>,
}

impl Decision {
    /// A decision at `level` by `source` with nothing more to it: no rule,
    /// no attributes, no published policy, a TTL of one second.
    pub fn bare(level: Level, source: SourceKind, reason: &str) -> Decision {
        Decision {
            level,
            policy: Arc::from(level.as_str()),
            source,
            rule: None,
            matched: None,
            reason: Arc::from(reason),
            ttl: Duration::from_secs(1),
            raised: false,
            temporary: false,
            published: None,
        }
    }

    pub fn tls(&self) -> Tls {
        self.level.tls()
    }

    /// This decision with `attrs` (a source's word on why it has no
    /// policy: Postfix 3.10's `policy_type=sts ... policy_failure=...`)
    /// added, when they cannot change whether mail goes: only at `may`,
    /// where Postfix authenticates nothing and a failed check does not
    /// stop delivery (RFC 8461 section 5: with no usable policy, mail goes
    /// as if none were published). At any other level (a forced default,
    /// which the failure would turn into deferrals) and for a temporary
    /// answer, the decision is returned unchanged.
    pub fn noting_failure(self, attrs: &str) -> Decision {
        if self.level != Level::May || self.temporary || attrs.is_empty() {
            return self;
        }
        Decision {
            policy: Arc::from(format!("{} {attrs}", self.policy)),
            ..self
        }
    }

    /// The variant of this decision for the forced map: never weaker than
    /// `encrypt`. Returns `self` unchanged when it already never sends
    /// plaintext.
    pub fn forced(&self) -> Decision {
        let level = self.level.forced();
        if level == self.level {
            return self.clone();
        }
        Decision {
            level,
            policy: Arc::from(level.as_str()),
            raised: true,
            ..self.clone()
        }
    }
}

/// Format the Postfix policy text for a level and its attributes.
pub fn policy_text(
    level: Level,
    matches: &[String],
    protocols: Option<&str>,
    ciphers: Option<&str>,
) -> String {
    let mut s = String::from(level.as_str());
    if !matches.is_empty() {
        s.push_str(" match=");
        s.push_str(&matches.join(":"));
    }
    if let Some(p) = protocols {
        s.push_str(" protocols=");
        s.push_str(p);
    }
    if let Some(c) = ciphers {
        s.push_str(" ciphers=");
        s.push_str(c);
    }
    s
}

/// One of Postfix's `smtp_requiretls_policy` actions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequireTlsAction {
    /// REQUIRETLS is required of the next hop (and strong TLS).
    Enforce,
    /// Used when the next hop offers it; STARTTLS is still required.
    OpportunisticStarttls,
    /// Used when the next hop offers it.
    Opportunistic,
    /// Never asked of the next hop.
    Disable,
}

impl RequireTlsAction {
    pub const ALL: [RequireTlsAction; 4] = [
        RequireTlsAction::Enforce,
        RequireTlsAction::OpportunisticStarttls,
        RequireTlsAction::Opportunistic,
        RequireTlsAction::Disable,
    ];

    /// The word Postfix reads.
    pub fn as_str(self) -> &'static str {
        match self {
            RequireTlsAction::Enforce => "enforce",
            RequireTlsAction::OpportunisticStarttls => "opportunistic+starttls",
            RequireTlsAction::Opportunistic => "opportunistic",
            RequireTlsAction::Disable => "disable",
        }
    }
}

impl FromStr for RequireTlsAction {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        RequireTlsAction::ALL
            .into_iter()
            .find(|a| a.as_str() == s)
            .ok_or_else(|| {
                format!(
                    "{s:?} is not a REQUIRETLS action; use \"enforce\", \
                     \"opportunistic+starttls\", \"opportunistic\" or \"disable\""
                )
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn product_words_map_to_postfix_levels() {
        assert_eq!("opportunistic".parse::<PolicyWord>().unwrap().0, Level::May);
        assert_eq!("forced".parse::<PolicyWord>().unwrap().0, Level::Encrypt);
        assert_eq!(
            "Dane-Only".parse::<PolicyWord>().unwrap().0,
            Level::DaneOnly
        );
        assert!("fast".parse::<PolicyWord>().is_err());
    }

    #[test]
    fn tls_class_of_every_level() {
        let forced: Vec<_> = Level::ALL
            .iter()
            .filter(|l| l.tls() == Tls::Forced)
            .map(|l| l.as_str())
            .collect();
        assert_eq!(forced, ["encrypt", "dane-only", "verify", "secure"]);
    }

    #[test]
    fn forced_variant_never_weaker_than_encrypt() {
        for level in Level::ALL {
            assert_eq!(level.forced().tls(), Tls::Forced, "{level}");
        }
        assert_eq!(Level::Dane.forced(), Level::DaneOnly);
        assert_eq!(Level::Secure.forced(), Level::Secure);
    }

    #[test]
    fn policy_text_joins_matches_with_colons() {
        let m = vec!["mx1.example".to_string(), ".example".to_string()];
        assert_eq!(
            policy_text(Level::Secure, &m, Some(">=TLSv1.2"), None),
            "secure match=mx1.example:.example protocols=>=TLSv1.2"
        );
        assert_eq!(policy_text(Level::Encrypt, &[], None, None), "encrypt");
    }
}
