//! The operator's policy file: static per-domain rules, always consulted
//! first, and the default for everything no rule covers.
//!
//! ```toml
//! default = "opportunistic"
//!
//! [[rule]]
//! domains = ["bank.example", ".bank.example"]
//! tls = "forced"
//! reason = "PCI partner"
//! ```
//!
//! Entries are exact domains (`bank.example`), every subdomain of a domain
//! (`.bank.example`, Postfix style: not the domain itself), or next-hop keys
//! as Postfix sends them for transport-routed mail (`[relay.example]`,
//! `[relay.example]:587`, `relay.example:2525`). The most specific entry
//! wins: exact, then the nearest `.parent`, and for next-hop keys the exact
//! next-hop entry before the host name's domain rules.
//!
//! A rule may let the RFC 8689 `TLS-Required: No` header relax it
//! (`allow_tls_required_no = true`, for the milter's routing header);
//! without that, a message carrying the header is still sent with the
//! rule's forced TLS.
//!
//! Sender rules force TLS for everything a sender sends, whatever the
//! recipient domain. The policy server and the milter (with its routing
//! header) apply them by routing such mail through the forced transport:
//!
//! ```toml
//! [[sender_rule]]
//! senders = ["ceo@example.com", "@finance.example.com", ".finance.example.com"]
//! tls = "forced"
//! reason = "board and finance mail never in plaintext"
//! ```
//!
//! A sender entry is an address (`ceo@example.com`), every address at one
//! domain (`@finance.example.com`), or every address at any subdomain of a
//! domain (`.finance.example.com`, not the domain itself). Matching ignores
//! case in the whole address; domains are folded like rule domains. The
//! most specific entry wins: the address, then `@domain`, then the nearest
//! `.parent`.

mod build;
mod chunks;
pub mod name_index;
mod sender;

use build::{Builder, Table, dotted, table_of_toml_error};
use sender::{SenderIndex, fold_local};

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::engine::decision::{Decision, Level, SourceKind};
use crate::engine::key::{Destination, KeyForm, normalize_domain, parents};
use crate::engine::refusal::RefuseMode;
use name_index::NameIndex;

/// Static decisions only change on reload; callers may keep them this long.
pub const STATIC_DECISION_TTL: Duration = Duration::from_secs(3600);
/// Largest policy file accepted, so a wrong path (a log, a core file) fails
/// clearly instead of exhausting memory.
pub const MAX_POLICY_FILE_BYTES: u64 = 256 * 1024 * 1024;

/// Postfix cipher grades accepted in `ciphers = …`.
const CIPHER_GRADES: [&str; 5] = ["export", "low", "medium", "high", "null"];

/// One rule, as the engine needs it.
#[derive(Debug)]
pub struct Rule {
    /// 1-based position in the file.
    pub index: u32,
    pub level: Level,
    pub policy: Arc<str>,
    /// Where the reason sits in the policy's reason text.
    reason: (u32, u32),
    /// `refuse = …`: what the policy server answers when delivery is known
    /// to be impossible; `None` = the server's global setting.
    pub refuse: Option<RefuseMode>,
    /// `allow_tls_required_no = true`: a message with the RFC 8689
    /// `TLS-Required: No` header may be sent to this rule's domains with
    /// opportunistic TLS (the milter's routing header says `relaxed`).
    /// Without it, the rule's forced TLS is never relaxed.
    pub allow_tls_required_no: bool,
    /// `requiretls = …`: the rule's own answer to Postfix 3.11's
    /// `smtp_requiretls_policy`; `None` = from its TLS class.
    pub requiretls: Option<crate::engine::decision::RequireTlsAction>,
}

/// One sender rule: mail from these senders is always sent with forced TLS.
#[derive(Debug, Clone)]
pub struct SenderRule {
    /// 1-based position among the `[[sender_rule]]` tables.
    pub index: u32,
    pub reason: Arc<str>,
    /// `refuse = …` for recipients this rule forces; `None` = global.
    pub refuse: Option<RefuseMode>,
}

/// Which sender rule matched an address, and through which entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SenderHit {
    /// 1-based sender rule number.
    pub rule: u32,
    /// The entry as normalised (`ceo@example.com`, `@finance.example.com`,
    /// `.example.com`).
    pub entry: String,
}

/// Which entry of a rule matched a destination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hit {
    /// 0-based rule position.
    pub rule: u32,
    /// The entry as normalised (`.bank.example`, `[relay.example]:587`).
    pub entry: Arc<str>,
}

/// A loaded policy file.
#[derive(Debug)]
pub struct PolicyFile {
    path: PathBuf,
    rules: Vec<Rule>,
    /// Every rule's reason, one after the other.
    reasons: String,
    exact: NameIndex,
    sub: NameIndex,
    nexthop: NameIndex,
    default: Decision,
    sender_rules: Vec<SenderRule>,
    senders: SenderIndex,
}

/// A policy-file problem, naming the file, the rule and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{}: {}{}{problem}",
    .file.display(),
    where_in_file("rule", "[[rule]]", *.rule),
    where_in_file("sender_rule", "[[sender_rule]]", *.sender_rule)
)]
pub struct PolicyFileError {
    pub file: PathBuf,
    /// 1-based rule number, when the problem is inside one rule.
    pub rule: Option<u32>,
    /// 1-based sender rule number, when the problem is inside one
    /// `[[sender_rule]]`.
    pub sender_rule: Option<u32>,
    pub problem: String,
}

/// `rule 3 ([[rule]] number 3 in the file): `, or nothing.
fn where_in_file(name: &str, table: &str, n: Option<u32>) -> String {
    n.map(|r| format!("{name} {r} ({table} number {r} in the file): "))
        .unwrap_or_default()
}

impl PolicyFile {
    /// Read and check a policy file.
    pub fn load(path: &Path) -> Result<PolicyFile, PolicyFileError> {
        let err = |problem: String| PolicyFileError {
            file: path.to_path_buf(),
            rule: None,
            sender_rule: None,
            problem,
        };
        let meta = std::fs::metadata(path).map_err(|e| err(format!("cannot read: {e}")))?;
        if meta.len() > MAX_POLICY_FILE_BYTES {
            return Err(err(format!(
                "file is {} bytes, more than the {MAX_POLICY_FILE_BYTES} accepted",
                meta.len()
            )));
        }
        let text = std::fs::read_to_string(path).map_err(|e| err(format!("cannot read: {e}")))?;
        Self::parse(&text, path)
    }

    /// Parse policy text; `path` is only used in messages.
    ///
    /// The TOML parser allocates many times the text's size in short-lived
    /// objects: the file is parsed a few hundred rules at a time
    /// ([`chunks`]), so that garbage stays small and is reused part after
    /// part, right where the rules are built (a parser thread of its own
    /// kept ~15 MB of its freed arena resident with 100,000 rules).
    /// Afterwards the freed memory is handed back to the system.
    pub fn parse(text: &str, path: &Path) -> Result<PolicyFile, PolicyFileError> {
        let raw = chunks::parse(text).map_err(|e| {
            let (rule, sender_rule) = match table_of_toml_error(text, &e) {
                Some(Table::Rule(n)) => (Some(n), None),
                Some(Table::SenderRule(n)) => (None, Some(n)),
                None => (None, None),
            };
            PolicyFileError {
                file: path.to_path_buf(),
                rule,
                sender_rule,
                problem: e.to_string().trim_end().to_string(),
            }
        })?;
        let built = Builder::new(path).build(&raw);
        drop(raw);
        crate::memory::release_free_memory();
        built
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The first exact domain (in file order) of a rule that `pred`
    /// accepts: a domain to ask about when checking a deployment.
    pub fn exact_domain_where(&self, pred: impl Fn(&Rule) -> bool) -> Option<&str> {
        self.exact_domains_where(pred).next()
    }

    /// Every exact domain (in file order) of a rule that `pred` accepts.
    pub fn exact_domains_where(&self, pred: impl Fn(&Rule) -> bool) -> impl Iterator<Item = &str> {
        self.exact.iter().filter_map(move |(name, rule)| {
            let r = self.rules.get(usize::try_from(rule).ok()?)?;
            pred(r).then_some(name)
        })
    }

    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    pub fn default_decision(&self) -> &Decision {
        &self.default
    }

    /// Find the most specific rule entry for a destination.
    pub fn lookup(&self, dest: &Destination) -> Option<Hit> {
        match dest.form {
            KeyForm::Domain => self.lookup_domain(&dest.name),
            // `.x` asks for "a strict subdomain of x": `.x` itself or any
            // `.parent` of x covers it; an exact `x` does not.
            KeyForm::Parent => self
                .sub
                .get(&dest.name)
                .map(|rule| Hit {
                    rule,
                    entry: dotted(&dest.name),
                })
                .or_else(|| self.lookup_sub(&dest.name)),
            KeyForm::Host | KeyForm::HostPort | KeyForm::NamePort => {
                let nexthop = |key: String| {
                    self.nexthop.get(&key).map(|rule| Hit {
                        rule,
                        entry: Arc::from(key),
                    })
                };
                if let Some(h) = nexthop(dest.canonical()) {
                    return Some(h);
                }
                if dest.form == KeyForm::HostPort
                    && let Some(h) = nexthop(format!("[{}]", dest.host_text()))
                {
                    return Some(h);
                }
                if dest.is_ip {
                    None
                } else {
                    self.lookup_domain(&dest.name)
                }
            }
        }
    }

    fn lookup_domain(&self, name: &str) -> Option<Hit> {
        if let Some(rule) = self.exact.get(name) {
            return Some(Hit {
                rule,
                entry: Arc::from(name),
            });
        }
        self.lookup_sub(name)
    }

    fn lookup_sub(&self, name: &str) -> Option<Hit> {
        parents(name).find_map(|p| {
            self.sub.get(p).map(|rule| Hit {
                rule,
                entry: dotted(p),
            })
        })
    }

    /// A rule's reason text.
    pub fn reason(&self, rule: &Rule) -> &str {
        let (start, end) = rule.reason;
        &self.reasons[start as usize..end as usize]
    }

    /// The decision a hit stands for.
    pub fn decision(&self, hit: Hit) -> Decision {
        let rule = &self.rules[hit.rule as usize];
        Decision {
            level: rule.level,
            policy: rule.policy.clone(),
            source: SourceKind::Static,
            rule: Some(rule.index),
            matched: Some(hit.entry),
            reason: Arc::from(self.reason(rule)),
            ttl: STATIC_DECISION_TTL,
            raised: false,
            temporary: false,
            published: None,
        }
    }

    /// The `[[sender_rule]]` tables, in file order.
    pub fn sender_rules(&self) -> &[SenderRule] {
        &self.sender_rules
    }

    /// The sender rule for an envelope sender, if any: the address itself,
    /// then `@domain`, then the nearest `.parent`. The null sender (`""`)
    /// and addresses without a domain never match.
    pub fn lookup_sender(&self, sender: &str) -> Option<SenderHit> {
        if self.sender_rules.is_empty() {
            return None;
        }
        let (local, domain) = sender.rsplit_once('@')?;
        if local.is_empty() {
            return None;
        }
        let domain = normalize_domain(domain).ok()?;
        let hit = |rule: u32, entry: String| SenderHit {
            rule: rule + 1,
            entry,
        };
        let address = format!("{}@{domain}", fold_local(local));
        if let Some(&r) = self.senders.address.get(&address) {
            return Some(hit(r, address));
        }
        if let Some(&r) = self.senders.domain.get(&domain) {
            return Some(hit(r, format!("@{domain}")));
        }
        parents(&domain).find_map(|p| self.senders.sub.get(p).map(|&r| hit(r, format!(".{p}"))))
    }

    /// A sender rule by its 1-based number.
    pub fn sender_rule(&self, number: u32) -> Option<&SenderRule> {
        self.sender_rules
            .get(usize::try_from(number.checked_sub(1)?).ok()?)
    }
}
#[cfg(test)]
mod tests {
    use super::*;

    fn policy(text: &str) -> PolicyFile {
        PolicyFile::parse(text, Path::new("policy.toml")).unwrap_or_else(|e| panic!("{e}"))
    }

    fn error(text: &str) -> PolicyFileError {
        match PolicyFile::parse(text, Path::new("policy.toml")) {
            Ok(_) => panic!("accepted: {text}"),
            Err(e) => e,
        }
    }

    fn decide(p: &PolicyFile, key: &str) -> Option<(u32, String, String)> {
        let d = Destination::parse(key).unwrap();
        p.lookup(&d).map(|h| {
            let dec = p.decision(h.clone());
            (
                dec.rule.unwrap(),
                h.entry.to_string(),
                dec.policy.to_string(),
            )
        })
    }

    const SAMPLE: &str = r#"
default = "opportunistic"

[[rule]]
domains = ["bank.example", ".bank.example"]
tls = "forced"
reason = "PCI partner"

[[rule]]
domains = ["secure.bank.example"]
tls = "secure"
match = ["mx1.bank.example", ".bank.example"]

[[rule]]
domains = [".example"]
tls = "may"

[[rule]]
domains = ["Bücher.Example", "[relay.example]:587", "[192.0.2.7]"]
tls = "verify"
protocols = ">=TLSv1.2"
"#;

    #[test]
    fn most_specific_rule_wins() {
        let p = policy(SAMPLE);
        assert_eq!(decide(&p, "bank.example").unwrap().0, 1);
        assert_eq!(decide(&p, "a.b.bank.example").unwrap().1, ".bank.example");
        let s = decide(&p, "secure.bank.example").unwrap();
        assert_eq!(s.0, 2);
        assert_eq!(s.2, "secure match=mx1.bank.example:.bank.example");
        assert_eq!(decide(&p, "other.example").unwrap().0, 3);
        // `.example` covers subdomains only, never `example` itself.
        assert_eq!(decide(&p, "example"), None);
        assert_eq!(decide(&p, "example.org"), None);
    }

    #[test]
    fn case_trailing_dot_and_idn() {
        let p = policy(SAMPLE);
        assert_eq!(decide(&p, "BANK.Example.").unwrap().0, 1);
        assert_eq!(decide(&p, "xn--bcher-kva.example").unwrap().0, 4);
        assert_eq!(decide(&p, "BÜCHER.example").unwrap().0, 4);
    }

    #[test]
    fn exact_domain_of_a_rule() {
        let p = PolicyFile::parse(
            "[[rule]]\ndomains=[\".sub.example\", \"a.example\"]\ntls=\"may\"\n[[rule]]\ndomains=[\".b.example\", \"b.example\", \"c.example\"]\ntls=\"forced\"\n",
            Path::new("p.toml"),
        )
        .unwrap();
        let forced =
            p.exact_domain_where(|r| r.level.tls() == crate::engine::decision::Tls::Forced);
        assert_eq!(forced, Some("b.example"));
        assert_eq!(p.exact_domain_where(|_| true), Some("a.example"));
        assert_eq!(p.exact_domain_where(|_| false), None);
    }

    #[test]
    fn parent_walk_keys() {
        let p = policy(SAMPLE);
        // `.bank.example` = "a subdomain of bank.example": rule 1's entry.
        assert_eq!(decide(&p, ".bank.example").unwrap().0, 1);
        // `.x.bank.example` is covered by the `.bank.example` entry too.
        assert_eq!(decide(&p, ".x.bank.example").unwrap().1, ".bank.example");
        // An exact rule does not answer for its subdomains.
        assert_eq!(decide(&p, ".secure.bank.example").unwrap().0, 1);
        assert_eq!(decide(&p, ".org"), None);
    }

    #[test]
    fn nexthop_keys() {
        let p = policy(SAMPLE);
        assert_eq!(
            decide(&p, "[relay.example]:587").unwrap().1,
            "[relay.example]:587"
        );
        // Other port: falls back to the host name's domain rules (.example).
        assert_eq!(decide(&p, "[relay.example]:25").unwrap().0, 3);
        assert_eq!(decide(&p, "[192.0.2.7]:25").unwrap().1, "[192.0.2.7]");
        assert_eq!(decide(&p, "[192.0.2.8]"), None);
        assert_eq!(decide(&p, "[mx.bank.example]").unwrap().0, 1);
        assert_eq!(decide(&p, "mx.bank.example:2525").unwrap().0, 1);
    }

    #[test]
    fn default_and_reason() {
        let p = policy("default = \"forced\"\n");
        assert_eq!(p.default_decision().policy.as_ref(), "encrypt");
        let p = policy(SAMPLE);
        assert_eq!(p.default_decision().policy.as_ref(), "may");
        let d = p.decision(
            p.lookup(&Destination::parse("bank.example").unwrap())
                .unwrap(),
        );
        assert_eq!(d.reason.as_ref(), "PCI partner");
        let d = p.decision(p.lookup(&Destination::parse("x.example").unwrap()).unwrap());
        assert_eq!(d.reason.as_ref(), "policy file rule 3");
    }

    #[test]
    fn errors_name_file_rule_and_problem() {
        let e = error(
            "[[rule]]\ndomains=[\"a.example\"]\ntls=\"forced\"\n[[rule]]\ndomains=[\"b.example\",\"A.example.\"]\ntls=\"may\"\n",
        );
        assert_eq!(e.rule, Some(2));
        let text = e.to_string();
        assert!(text.starts_with("policy.toml: rule 2"), "{text}");
        assert!(
            text.contains("\"A.example.\" is already listed in rule 1 (as \"a.example\")"),
            "{text}"
        );

        let e =
            error("[[rule]]\ndomains=[\"a.example\"]\ntls=\"forced\"\nmatch=[\"mx.a.example\"]\n");
        assert_eq!(e.rule, Some(1));
        assert!(
            e.problem.contains("`match` does not apply"),
            "{}",
            e.problem
        );

        let e = error("[[rule]]\ndomains=[\"a.example\"]\ntls=\"fast\"\n");
        assert!(
            e.problem.contains("unknown TLS level \"fast\""),
            "{}",
            e.problem
        );

        let e = error(
            "[[rule]]\ndomains=[\"a.example\"]\ntls=\"forced\"\n\n[[rule]]\ndomains=[\"b.example\"]\ntls=\"forced\"\nresaon=\"typo\"\n",
        );
        assert_eq!(e.rule, Some(2), "{e}");
        assert!(
            e.problem.contains("unknown field `resaon`"),
            "{}",
            e.problem
        );

        let e = error("defualt = \"forced\"\n");
        assert_eq!(e.rule, None);
        assert!(
            e.problem.contains("unknown field `defualt`"),
            "{}",
            e.problem
        );

        let e = error("default = \"sometimes\"\n");
        assert!(e.problem.contains("key `default`"), "{}", e.problem);

        let e = error("[[rule]]\ndomains=[\"a..example\"]\ntls=\"forced\"\n");
        assert!(e.problem.contains("empty label"), "{}", e.problem);

        let e = error("[[rule]]\ndomains=[]\ntls=\"forced\"\n");
        assert!(e.problem.contains("`domains` is empty"), "{}", e.problem);

        let e = error("[[rule]]\ndomains=[\"a.example\", \"a.example\"]\ntls=\"forced\"\n");
        assert!(e.problem.contains("earlier in this rule"), "{}", e.problem);

        let e = error("[[rule]]\ndomains=[\"a.example\"]\ntls=\"secure\"\nmatch=[\"a b\"]\n");
        assert!(
            e.problem.contains("not a certificate name pattern"),
            "{}",
            e.problem
        );

        let e = error("[[rule]]\ndomains=[\"a.example\"]\ntls=\"forced\"\nciphers=\"strong\"\n");
        assert!(e.problem.contains("cipher grade"), "{}", e.problem);
    }

    #[test]
    fn subdomain_and_exact_of_same_name_are_distinct() {
        let p = policy(
            "[[rule]]\ndomains=[\"a.example\"]\ntls=\"forced\"\n[[rule]]\ndomains=[\".a.example\"]\ntls=\"may\"\n",
        );
        assert_eq!(decide(&p, "a.example").unwrap().0, 1);
        assert_eq!(decide(&p, "x.a.example").unwrap().0, 2);
    }

    #[test]
    fn policy_strings_are_shared() {
        let p = policy(
            "[[rule]]\ndomains=[\"a.example\"]\ntls=\"forced\"\n[[rule]]\ndomains=[\"b.example\"]\ntls=\"encrypt\"\n",
        );
        assert!(Arc::ptr_eq(&p.rules()[0].policy, &p.rules()[1].policy));
    }

    const SENDERS: &str = r#"
[[rule]]
domains = ["bank.example"]
tls = "forced"
refuse = "reject"

[[rule]]
domains = ["other.example"]
tls = "verify"

[[sender_rule]]
senders = ["CEO@Example.COM", "@finance.example.com"]
tls = "forced"
reason = "board mail"

[[sender_rule]]
senders = [".example.org", "@Bücher.example"]
tls = "encrypt"
refuse = "off"
"#;

    #[test]
    fn rule_allow_tls_required_no_setting() {
        let p = policy(
            "[[rule]]\ndomains=[\"a.example\"]\ntls=\"forced\"\nallow_tls_required_no=true\n[[rule]]\ndomains=[\"b.example\"]\ntls=\"forced\"\n",
        );
        assert!(p.rules()[0].allow_tls_required_no);
        assert!(!p.rules()[1].allow_tls_required_no);
        let e = error(
            "[[rule]]\ndomains=[\"a.example\"]\ntls=\"forced\"\nallow_tls_required_no=\"yes\"\n",
        );
        assert_eq!(e.rule, Some(1));
        assert!(e.problem.contains("allow_tls_required_no"), "{}", e.problem);
    }

    #[test]
    fn rule_refuse_setting() {
        let p = policy(SENDERS);
        assert_eq!(p.rules()[0].refuse, Some(RefuseMode::Reject));
        assert_eq!(p.rules()[1].refuse, None);
        let e = error("[[rule]]\ndomains=[\"a.example\"]\ntls=\"forced\"\nrefuse=\"maybe\"\n");
        assert_eq!(e.rule, Some(1));
        assert!(e.problem.contains("key `refuse`"), "{}", e.problem);
    }

    #[test]
    fn sender_rules_match_address_domain_and_subdomain() {
        let p = policy(SENDERS);
        assert_eq!(p.sender_rules().len(), 2);
        let hit = |s: &str| p.lookup_sender(s).map(|h| (h.rule, h.entry));
        assert_eq!(hit("ceo@example.com"), Some((1, "ceo@example.com".into())));
        assert_eq!(hit("Ceo@EXAMPLE.com."), Some((1, "ceo@example.com".into())));
        assert_eq!(hit("cfo@example.com"), None);
        assert_eq!(
            hit("anyone@Finance.Example.com"),
            Some((1, "@finance.example.com".into()))
        );
        // `@domain` is that domain only.
        assert_eq!(hit("x@eu.finance.example.com"), None);
        // `.domain` is every subdomain, not the domain.
        assert_eq!(hit("x@a.b.example.org"), Some((2, ".example.org".into())));
        assert_eq!(hit("x@example.org"), None);
        assert_eq!(
            hit("x@xn--bcher-kva.example"),
            Some((2, "@xn--bcher-kva.example".into()))
        );
        assert_eq!(hit(""), None);
        assert_eq!(hit("postmaster"), None);
        assert_eq!(hit("@example.com"), None);
        let r = p.sender_rule(1).unwrap();
        assert_eq!(r.reason.as_ref(), "board mail");
        assert_eq!(r.refuse, None);
        assert_eq!(p.sender_rule(2).unwrap().refuse, Some(RefuseMode::Off));
        assert_eq!(
            p.sender_rule(2).unwrap().reason.as_ref(),
            "policy file sender_rule 2"
        );
        assert!(p.sender_rule(0).is_none());
        assert!(p.sender_rule(3).is_none());
        // No sender rules: nothing matches.
        assert_eq!(policy(SAMPLE).lookup_sender("ceo@example.com"), None);
    }

    #[test]
    fn sender_rule_errors_name_file_sender_rule_and_problem() {
        let e = error(
            "[[sender_rule]]\nsenders=[\"a@example.com\"]\ntls=\"forced\"\n[[sender_rule]]\nsenders=[\"A@Example.com.\"]\ntls=\"forced\"\n",
        );
        assert_eq!((e.rule, e.sender_rule), (None, Some(2)));
        let text = e.to_string();
        assert!(
            text.starts_with("policy.toml: sender_rule 2 ([[sender_rule]] number 2 in the file): "),
            "{text}"
        );
        assert!(
            text.contains(
                "\"A@Example.com.\" is already listed in sender_rule 1 (as \"a@example.com\")"
            ),
            "{text}"
        );
        let e =
            error("[[sender_rule]]\nsenders=[\"@a.example\", \"@A.example\"]\ntls=\"forced\"\n");
        assert!(
            e.problem.contains("earlier in this sender rule"),
            "{}",
            e.problem
        );

        let e = error("[[sender_rule]]\nsenders=[\"a.example\"]\ntls=\"forced\"\n");
        assert!(e.problem.contains("not an address"), "{}", e.problem);
        let e = error("[[sender_rule]]\nsenders=[\"@a..example\"]\ntls=\"forced\"\n");
        assert!(e.problem.contains("empty label"), "{}", e.problem);
        let e = error("[[sender_rule]]\nsenders=[\"a b@example.com\"]\ntls=\"forced\"\n");
        assert!(e.problem.contains("spaces"), "{}", e.problem);
        let e = error("[[sender_rule]]\nsenders=[\"@example.com\"]\ntls=\"verify\"\n");
        assert!(e.problem.contains("only take \"forced\""), "{}", e.problem);
        let e = error("[[sender_rule]]\nsenders=[]\ntls=\"forced\"\n");
        assert!(e.problem.contains("`senders` is empty"), "{}", e.problem);
        let e =
            error("[[sender_rule]]\nsenders=[\"@x.example\"]\ntls=\"forced\"\nrefuse=\"later\"\n");
        assert!(e.problem.contains("key `refuse`"), "{}", e.problem);

        // TOML-level errors name the right table.
        let e = error(
            "[[rule]]\ndomains=[\"a.example\"]\ntls=\"forced\"\n\n[[sender_rule]]\nsenders=[\"@x.example\"]\ntls=\"forced\"\nreasn=\"typo\"\n",
        );
        assert_eq!((e.rule, e.sender_rule), (None, Some(1)), "{e}");
        assert!(e.problem.contains("unknown field `reasn`"), "{}", e.problem);
        let e = error(
            "[[sender_rule]]\nsenders=[\"@x.example\"]\ntls=\"forced\"\n\n[[rule]]\ndomains=[\"a.example\"]\ntls=\"forced\"\nresaon=\"typo\"\n",
        );
        assert_eq!((e.rule, e.sender_rule), (Some(1), None), "{e}");
    }
}
