//! Postfix 3.11's REQUIRETLS (RFC 8689) policy, `smtp_requiretls_policy`:
//! what Postfix does with a message that asks for REQUIRETLS, per next
//! hop. Answered from the same decision as the TLS policy: `enforce` where
//! TLS is forced, `opportunistic` elsewhere, unless the deciding rule says
//! otherwise (`requiretls = "..."` in the policy file).

pub use super::decision::RequireTlsAction;
use super::decision::{Decision, SourceKind, Tls};
use super::malformed;
use super::policy_file::PolicyFile;

/// The REQUIRETLS action for a decision: the deciding rule's own
/// `requiretls` when it has one, else `enforce` where TLS is forced and
/// `opportunistic` elsewhere. (A temporary decision is answered as a
/// temporary failure by the doors, whatever this says.)
pub fn action(policy: &PolicyFile, decision: &Decision) -> RequireTlsAction {
    let own = match (decision.source, decision.rule) {
        (SourceKind::Static, Some(n)) => n
            .checked_sub(1)
            .and_then(|i| policy.rules().get(i as usize))
            .and_then(|r| r.requiretls),
        _ => None,
    };
    own.unwrap_or_else(|| of_class(decision))
}

/// The action for a lookup of `key` decided as `decision` (`parsed`: the
/// key is a destination). A key that is not a destination and could name
/// rules with different actions gets `None`: the doors answer a temporary
/// failure, as for rules with different TLS answers
/// ([`super::malformed`]), never the weaker of them.
pub fn for_key(
    policy: &PolicyFile,
    key: &str,
    parsed: bool,
    decision: &Decision,
) -> Option<RequireTlsAction> {
    let own = action(policy, decision);
    if parsed || decision.source != SourceKind::Static {
        return Some(own);
    }
    for reading in malformed::plausible_names(key) {
        if let Some(hit) = policy.lookup(&reading.destination()) {
            let d = policy.decision(hit);
            if action(policy, &d) != own {
                return None;
            }
        }
    }
    Some(own)
}

/// The action of a decision's TLS class alone: `enforce` where TLS is
/// forced, `opportunistic` elsewhere.
pub fn of_class(decision: &Decision) -> RequireTlsAction {
    match decision.tls() {
        Tls::Forced => RequireTlsAction::Enforce,
        Tls::Opportunistic => RequireTlsAction::Opportunistic,
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::engine::Engine;
    use crate::engine::key::Destination;

    const FILE: &str = "\
[[rule]]
domains = [\"bank.example\"]
tls = \"forced\"

[[rule]]
domains = [\"relaxed.example\"]
tls = \"forced\"
requiretls = \"opportunistic+starttls\"

[[rule]]
domains = [\"plain.example\"]
tls = \"opportunistic\"
requiretls = \"disable\"
";

    fn decide(text: &str, key: &str) -> String {
        let p = PolicyFile::parse(text, Path::new("p.toml")).unwrap();
        let e = Engine::new(p);
        let d = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(e.decide_key(key))
            .1;
        action(e.policy(), &d).as_str().to_string()
    }

    #[test]
    fn forced_rules_enforce_others_are_opportunistic_rules_override() {
        assert_eq!(decide(FILE, "bank.example"), "enforce");
        assert_eq!(decide(FILE, "relaxed.example"), "opportunistic+starttls");
        assert_eq!(decide(FILE, "plain.example"), "disable");
        assert_eq!(decide(FILE, "other.example"), "opportunistic");
        let forced_default = format!("default = \"forced\"\n{FILE}");
        assert_eq!(decide(&forced_default, "other.example"), "enforce");
        assert_eq!(decide(&forced_default, "plain.example"), "disable");
        // A next-hop key as Postfix sends it.
        assert!(Destination::parse("[bank.example]:25").is_ok());
        assert_eq!(decide(FILE, "[bank.example]:25"), "enforce");
    }

    #[test]
    fn malformed_keys_answer_as_the_engine_decides_them() {
        // Not a destination and naming no rule: the default's action.
        assert_eq!(decide(FILE, "bank.example..x"), "opportunistic");
        let forced_default = format!("default = \"forced\"\n{FILE}");
        assert_eq!(decide(&forced_default, "bank.example..x"), "enforce");
        // Case and a trailing dot are not malformed.
        assert_eq!(decide(FILE, "Bank.Example."), "enforce");
    }

    #[test]
    fn malformed_keys_naming_rules_with_different_actions_are_held() {
        // Both rules are `encrypt`; their REQUIRETLS actions differ.
        let p = PolicyFile::parse(FILE, Path::new("p.toml")).unwrap();
        let e = Engine::new(p);
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let key = "bank.example relaxed.example";
        let (dest, d) = rt.block_on(e.decide_key(key));
        assert!(dest.is_none());
        assert_eq!((d.source, d.temporary), (SourceKind::Static, false));
        assert_eq!(for_key(e.policy(), key, false, &d), None);
        // One rule named: its action.
        let key = "bank.example\u{0}";
        let (dest, d) = rt.block_on(e.decide_key(key));
        assert!(dest.is_none());
        assert_eq!(
            for_key(e.policy(), key, false, &d),
            Some(RequireTlsAction::Enforce)
        );
        let (_, d) = rt.block_on(e.decide_key("relaxed.example"));
        assert_eq!(
            for_key(e.policy(), "relaxed.example", true, &d),
            Some(RequireTlsAction::OpportunisticStarttls)
        );
    }

    #[test]
    fn actions_parse_exactly() {
        for a in RequireTlsAction::ALL {
            assert_eq!(a.as_str().parse::<RequireTlsAction>(), Ok(a));
        }
        for bad in ["", "Enforce", "opportunistic+", "none", "enforce "] {
            assert!(bad.parse::<RequireTlsAction>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn policy_file_validates_the_key() {
        let e = PolicyFile::parse(
            "[[rule]]\ndomains=[\"a.example\"]\ntls=\"forced\"\nrequiretls=\"sometimes\"\n",
            Path::new("p.toml"),
        )
        .unwrap_err();
        assert!(e.problem.contains("key `requiretls`"), "{}", e.problem);
        assert!(
            e.problem.contains("not a REQUIRETLS action"),
            "{}",
            e.problem
        );
    }
}
