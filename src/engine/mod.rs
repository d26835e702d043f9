//! The policy engine: one decision per destination key, from the sources in
//! their documented precedence.
//!
//! 1. **static**: the operator's policy file (always first: the operator's
//!    word beats anything published in DNS);
//! 2. **dane**, 3. **mta-sts**: published policies, consulted through the
//!    [`Source`] trait, only for domain keys;
//! 4. **default**: the policy file's `default` (opportunistic unless set).
//!
//! Parent-walk keys (`.example.com`) and next-hop keys (`[host]:port`) are
//! answered from the policy file and the default only: they never start a
//! lookup in DNS.

pub mod decision;
pub mod discovery;
pub mod key;
pub mod malformed;
pub mod outcome;
pub mod policy_file;
pub mod recipient;
pub mod refusal;
pub mod requiretls;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use crate::engine::policy_file::PolicyFile;
use decision::{Decision, SourceKind, Tls};
use discovery::{Asked, DiscoveryObserver, consult_all};
use key::{Destination, KeyError, KeyForm, parents};

/// What a dynamic source says about a destination.
#[derive(Debug, Clone)]
pub enum Consulted {
    /// The source has a policy: it decides.
    Policy(Decision),
    /// The source has nothing to say; the next one is asked. The text
    /// says why, for `explain`.
    NoPolicy(String),
}

/// A policy source between the static file and the default (DANE,
/// MTA-STS). Implementations answer from their cache where they can.
/// What [`Source::consult`] returns: the answer, when it comes.
pub type Consulting<'a> = Pin<Box<dyn Future<Output = Consulted> + Send + 'a>>;

pub trait Source: Send + Sync {
    fn kind(&self) -> SourceKind;

    /// Whether this source is asked at all for a destination. Only domain
    /// keys by default: a parent-walk key must never start a lookup.
    fn applies_to(&self, dest: &Destination) -> bool {
        dest.form == KeyForm::Domain
    }

    fn consult<'a>(&'a self, dest: &'a Destination) -> Consulting<'a>;

    /// Attributes saying why this source, asked and answering no policy,
    /// has none (MTA-STS with Postfix 3.10's TLSRPT: `policy_type=sts
    /// policy_domain=D policy_failure=KIND`). Added to the default's
    /// answer when nothing else decided, and only where they cannot stop
    /// mail ([`Decision::noting_failure`]). Nothing by default.
    fn failure_attrs(&self, _dest: &Destination) -> Option<String> {
        None
    }

    /// What the source found out about a destination, one line per fact
    /// (for `explain`); asked right after [`Source::consult`]. Nothing by
    /// default.
    fn details(&self, _dest: &Destination) -> Vec<String> {
        Vec::new()
    }
}

/// One source's part in an explanation.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Step {
    pub source: SourceKind,
    pub applied: bool,
    pub detail: String,
    /// Further lines from the source (DANE: DNSSEC and TLSA state per MX).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub details: Vec<String>,
}

/// A decision and how it was reached.
#[derive(Debug, Clone)]
pub struct Explanation {
    pub key: String,
    pub dest: Result<Destination, KeyError>,
    pub steps: Vec<Step>,
    pub decision: Decision,
}

/// The engine: the operator's policy file and the published-policy
/// sources, in precedence order. Immutable: a reload builds a new engine
/// with the new policy file and the same sources ([`Engine::with_policy`]),
/// and the daemon swaps it in together with the front doors' settings.
#[derive(Clone)]
pub struct Engine {
    policy: Arc<PolicyFile>,
    sources: Arc<[Arc<dyn Source>]>,
    observer: Option<Arc<dyn DiscoveryObserver>>,
}

impl Engine {
    pub fn new(policy: PolicyFile) -> Engine {
        Engine::with_sources(policy, Vec::new())
    }

    /// `sources` in precedence order (DANE before MTA-STS).
    pub fn with_sources(policy: PolicyFile, sources: Vec<Arc<dyn Source>>) -> Engine {
        Engine {
            policy: Arc::new(policy),
            sources: sources.into(),
            observer: None,
        }
    }

    /// Tell `observer` how the walks that wait for sources go (kept by
    /// [`Engine::with_policy`]).
    pub fn observed_by(mut self, observer: Arc<dyn DiscoveryObserver>) -> Engine {
        self.observer = Some(observer);
        self
    }

    /// The same sources (and what they have learned) with another policy
    /// file.
    pub fn with_policy(&self, policy: PolicyFile) -> Engine {
        Engine {
            policy: Arc::new(policy),
            sources: self.sources.clone(),
            observer: self.observer.clone(),
        }
    }

    pub fn policy(&self) -> &Arc<PolicyFile> {
        &self.policy
    }

    /// Decide for a destination.
    pub async fn decide(&self, dest: &Destination) -> Decision {
        self.walk(&self.policy, dest, None).await
    }

    /// The precedence walk behind [`Engine::decide`] and
    /// [`Engine::explain`]: the policy file, then each source in order,
    /// then the default. Without `trace` it stops at the first decision;
    /// with one, it records a step for every source, consulted or not.
    async fn walk(
        &self,
        policy: &PolicyFile,
        dest: &Destination,
        mut trace: Option<&mut Vec<Step>>,
    ) -> Decision {
        let hit = policy.lookup(dest);
        if let Some(steps) = trace.as_deref_mut() {
            steps.push(Step {
                source: SourceKind::Static,
                applied: hit.is_some(),
                detail: match &hit {
                    Some(hit) => format!(
                        "rule {} matches through entry {:?} in {}",
                        hit.rule + 1,
                        hit.entry,
                        policy.path().display()
                    ),
                    None => format!(
                        "no rule in {} matches (looked for {})",
                        policy.path().display(),
                        candidates(dest).join(", ")
                    ),
                },
                details: Vec::new(),
            });
        }
        let ruled = hit.is_some();
        let mut decision = hit.map(|hit| policy.decision(hit));
        // No rule: the sources that apply are asked side by side.
        let asked = if !ruled {
            let applicable: Vec<&Arc<dyn Source>> =
                self.sources.iter().filter(|s| s.applies_to(dest)).collect();
            consult_all(&applicable, dest, self.observer.as_deref()).await
        } else {
            Vec::new()
        };
        let mut asked = asked.into_iter();
        let mut quiet: Vec<&Arc<dyn Source>> = Vec::new();
        for source in self.sources.iter() {
            let step = |applied, detail, details| Step {
                source: source.kind(),
                applied,
                detail,
                details,
            };
            if ruled {
                let Some(steps) = trace.as_deref_mut() else {
                    break;
                };
                steps.push(step(false, NOT_CONSULTED.to_string(), Vec::new()));
                continue;
            }
            if !source.applies_to(dest) {
                if let Some(steps) = trace.as_deref_mut() {
                    let why = format!("not consulted for a {} key", dest.form.as_str());
                    steps.push(step(false, why, Vec::new()));
                }
                continue;
            }
            let (applied, detail, answered) = match asked.next() {
                Some(Asked::Answered(Consulted::Policy(d))) => {
                    let d = not_below_default(d, policy.default_decision());
                    let text = if d.temporary {
                        format!("temporary failure: {}", d.reason)
                    } else {
                        format!("policy: {}", d.reason)
                    };
                    decision = Some(d);
                    (true, text, true)
                }
                Some(Asked::Answered(Consulted::NoPolicy(why))) => {
                    quiet.push(source);
                    (false, why, true)
                }
                Some(Asked::Unused { started: true }) => (false, NOT_USED.to_string(), false),
                Some(Asked::Unused { started: false }) | None => {
                    (false, NOT_CONSULTED.to_string(), false)
                }
            };
            if let Some(steps) = trace.as_deref_mut() {
                let details = if answered {
                    source.details(dest)
                } else {
                    Vec::new()
                };
                steps.push(step(applied, detail, details));
            }
        }
        if let Some(steps) = trace {
            let applied = decision.is_none();
            steps.push(Step {
                source: SourceKind::Default,
                applied,
                detail: if applied {
                    format!(
                        "default = {:?} from {}",
                        policy.default_decision().level.as_str(),
                        policy.path().display()
                    )
                } else {
                    NOT_CONSULTED.to_string()
                },
                details: Vec::new(),
            });
        }
        decision.unwrap_or_else(|| {
            let d = policy.default_decision().clone();
            match quiet.iter().find_map(|s| s.failure_attrs(dest)) {
                Some(attrs) => d.noting_failure(&attrs),
                None => d,
            }
        })
    }

    /// Decide for a raw key. A key that is not a destination gets the
    /// answer of the rule it could still name, a temporary failure when
    /// it could name rules with different answers, and the default only
    /// when no rule's domain could be meant ([`malformed`]).
    pub async fn decide_key(&self, key: &str) -> (Option<Destination>, Decision) {
        match Destination::parse(key) {
            Ok(dest) => {
                let d = self.decide(&dest).await;
                (Some(dest), d)
            }
            Err(e) => (None, bad_key_decision(&self.policy, key, &e)),
        }
    }

    /// Decide and say why, consulting every source (for `explain`): the
    /// same walk as [`Engine::decide`], with a step per source.
    pub async fn explain(&self, key: &str) -> Explanation {
        let policy = &self.policy;
        let dest = Destination::parse(key);
        let mut steps = Vec::new();
        let decision = match &dest {
            Err(e) => {
                let d = bad_key_decision(policy, key, e);
                let ruled = d.source == SourceKind::Static;
                steps.push(Step {
                    source: SourceKind::Static,
                    applied: ruled,
                    detail: format!("key {key:?} is not a destination: {e}; {}", d.reason),
                    details: Vec::new(),
                });
                steps.push(Step {
                    source: SourceKind::Default,
                    applied: !ruled,
                    detail: if ruled {
                        NOT_CONSULTED.to_string()
                    } else {
                        format!(
                            "default = {:?} from {}",
                            policy.default_decision().level.as_str(),
                            policy.path().display()
                        )
                    },
                    details: Vec::new(),
                });
                d
            }
            Ok(d) => self.walk(policy, d, Some(&mut steps)).await,
        };
        Explanation {
            key: key.to_string(),
            dest,
            steps,
            decision,
        }
    }
}

/// What a step says of a source the walk passed over.
const NOT_CONSULTED: &str = "not consulted: a higher-precedence source decided";
/// What a step says of a source asked alongside a higher one that decided.
const NOT_USED: &str = "asked alongside, not used: a higher-precedence source decided";

/// A published policy never weakens a forced default: an opportunistic
/// answer (MTA-STS `testing`) gives way to the default's level, and the
/// decision keeps its source and says so.
fn not_below_default(d: Decision, default: &Decision) -> Decision {
    if d.tls() == Tls::Opportunistic && default.tls() == Tls::Forced {
        let reason = format!(
            "{}; the default ({}) is forced and applies",
            d.reason, default.policy
        );
        Decision {
            level: default.level,
            policy: default.policy.clone(),
            reason: Arc::from(reason),
            ..d
        }
    } else {
        d
    }
}

/// A key that is not a destination: the rule it could still name, or the
/// default (`malformed::decide`).
fn bad_key_decision(policy: &PolicyFile, key: &str, e: &KeyError) -> Decision {
    malformed::decide(policy, key, e)
}

/// The policy-file entries that could match a destination, most specific
/// first, for explanations.
fn candidates(d: &Destination) -> Vec<String> {
    let mut out = Vec::new();
    match d.form {
        KeyForm::Domain => out.push(d.name.clone()),
        KeyForm::Parent => out.push(format!(".{}", d.name)),
        _ => {
            out.push(d.canonical());
            if d.form == KeyForm::HostPort {
                out.push(format!("[{}]", d.host_text()));
            }
            if !d.is_ip {
                out.push(d.name.clone());
            }
        }
    }
    if !d.is_ip {
        out.extend(parents(&d.name).map(|p| format!(".{p}")));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use decision::Level;

    /// A source that answers `dane-only` for one domain and counts calls.
    struct Fixed {
        domain: &'static str,
        calls: AtomicUsize,
    }

    impl Source for Fixed {
        fn kind(&self) -> SourceKind {
            SourceKind::Dane
        }
        fn consult<'a>(&'a self, dest: &'a Destination) -> Consulting<'a> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            Box::pin(async move {
                if dest.name == self.domain {
                    Consulted::Policy(Decision {
                        level: Level::DaneOnly,
                        policy: Arc::from("dane-only"),
                        source: SourceKind::Dane,
                        rule: None,
                        matched: None,
                        reason: Arc::from("TLSA published"),
                        ttl: Duration::from_secs(60),
                        raised: false,
                        temporary: false,
                        published: None,
                    })
                } else {
                    Consulted::NoPolicy("no TLSA".into())
                }
            })
        }
    }

    fn engine(text: &str) -> (Engine, Arc<Fixed>) {
        let p = PolicyFile::parse(text, Path::new("p.toml")).unwrap();
        let src = Arc::new(Fixed {
            domain: "dane.example",
            calls: AtomicUsize::new(0),
        });
        (Engine::with_sources(p, vec![src.clone()]), src)
    }

    fn block_on<F: Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(f)
    }

    const RULES: &str = "[[rule]]\ndomains=[\"bank.example\", \"dane.example\"]\ntls=\"forced\"\n";

    #[test]
    fn precedence_static_then_source_then_default() {
        let (e, src) = engine(RULES);
        block_on(async {
            let d = e.decide(&Destination::parse("dane.example").unwrap()).await;
            assert_eq!(d.source, SourceKind::Static, "static beats DANE");
            assert_eq!(src.calls.load(Ordering::SeqCst), 0);
            let e = e.with_policy(PolicyFile::parse("", Path::new("p.toml")).unwrap());
            let d = e.decide(&Destination::parse("dane.example").unwrap()).await;
            assert_eq!((d.source, d.level), (SourceKind::Dane, Level::DaneOnly));
            let d = e
                .decide(&Destination::parse("other.example").unwrap())
                .await;
            assert_eq!((d.source, d.level), (SourceKind::Default, Level::May));
            assert_eq!(src.calls.load(Ordering::SeqCst), 2);
        });
    }

    #[test]
    fn parent_and_nexthop_keys_never_reach_dynamic_sources() {
        let (e, src) = engine("");
        block_on(async {
            for key in [
                ".dane.example",
                "[dane.example]",
                "[dane.example]:25",
                "dane.example:25",
            ] {
                let d = e.decide(&Destination::parse(key).unwrap()).await;
                assert_eq!(d.source, SourceKind::Default, "{key}");
            }
        });
        assert_eq!(src.calls.load(Ordering::SeqCst), 0);
    }

    /// Answers `may` (like MTA-STS testing) for every domain.
    struct Testing;

    impl Source for Testing {
        fn kind(&self) -> SourceKind {
            SourceKind::MtaSts
        }
        fn consult<'a>(&'a self, _dest: &'a Destination) -> Consulting<'a> {
            Box::pin(async {
                Consulted::Policy(Decision {
                    level: Level::May,
                    policy: Arc::from("may"),
                    source: SourceKind::MtaSts,
                    rule: None,
                    matched: None,
                    reason: Arc::from("testing"),
                    ttl: Duration::from_secs(60),
                    raised: false,
                    temporary: false,
                    published: None,
                })
            })
        }
    }

    #[test]
    fn published_opportunistic_never_weakens_a_forced_default() {
        let sources: Vec<Arc<dyn Source>> = vec![Arc::new(Testing)];
        let forced = PolicyFile::parse("default = \"forced\"\n", Path::new("p.toml")).unwrap();
        let e = Engine::with_sources(forced, sources.clone());
        let dest = Destination::parse("sts.example").unwrap();
        let d = block_on(e.decide(&dest));
        assert_eq!(
            (d.level, &*d.policy, d.source),
            (Level::Encrypt, "encrypt", SourceKind::MtaSts)
        );
        assert_eq!(
            &*d.reason,
            "testing; the default (encrypt) is forced and applies"
        );
        let x = block_on(e.explain("sts.example"));
        assert_eq!(x.decision.level, Level::Encrypt);
        let open = PolicyFile::parse("", Path::new("p.toml")).unwrap();
        let e = Engine::with_sources(open, sources);
        assert_eq!(block_on(e.decide(&dest)).level, Level::May);
    }

    #[test]
    fn bad_key_gets_default_with_reason() {
        let (e, _) = engine("default = \"forced\"\n");
        let (dest, d) = block_on(e.decide_key("a..b"));
        assert!(dest.is_none());
        assert_eq!(d.level, Level::Encrypt);
        assert!(d.reason.contains("empty label"), "{}", d.reason);
    }

    #[test]
    fn explain_lists_every_source() {
        let (e, _) = engine(RULES);
        let x = block_on(e.explain("Bank.Example."));
        assert_eq!(x.steps.len(), 3);
        assert!(x.steps[0].applied);
        assert!(
            x.steps[0]
                .detail
                .contains("rule 1 matches through entry \"bank.example\"")
        );
        assert!(!x.steps[1].applied);
        assert!(x.steps[1].detail.contains("higher-precedence"));
        assert!(!x.steps[2].applied);

        let x = block_on(e.explain("mail.other.example"));
        assert!(!x.steps[0].applied);
        assert!(
            x.steps[0]
                .detail
                .contains("mail.other.example, .other.example, .example"),
            "{}",
            x.steps[0].detail
        );
        assert_eq!(x.steps[1].detail, "no TLSA");
        assert!(x.steps[2].applied);
        assert_eq!(x.decision.source, SourceKind::Default);

        let x = block_on(e.explain(".example"));
        assert!(x.steps[1].detail.contains("not consulted for a parent key"));
    }

    /// Has no policy and says why (like MTA-STS after a failed fetch).
    struct Failed;

    impl Source for Failed {
        fn kind(&self) -> SourceKind {
            SourceKind::MtaSts
        }
        fn consult<'a>(&'a self, _dest: &'a Destination) -> Consulting<'a> {
            Box::pin(async { Consulted::NoPolicy("fetch failed".into()) })
        }
        fn failure_attrs(&self, dest: &Destination) -> Option<String> {
            Some(format!(
                "policy_type=sts policy_domain={} policy_failure=sts-policy-fetch-error",
                dest.name
            ))
        }
    }

    #[test]
    fn failure_attributes_only_on_an_opportunistic_default() {
        let sources: Vec<Arc<dyn Source>> = vec![Arc::new(Failed)];
        let dest = Destination::parse("sts.example").unwrap();
        let open = PolicyFile::parse("", Path::new("p.toml")).unwrap();
        let e = Engine::with_sources(open, sources.clone());
        let d = block_on(e.decide(&dest));
        assert_eq!(
            (&*d.policy, d.source),
            (
                "may policy_type=sts policy_domain=sts.example policy_failure=sts-policy-fetch-error",
                SourceKind::Default
            )
        );
        assert_eq!(
            &*block_on(e.explain("sts.example")).decision.policy,
            &*d.policy
        );
        // The forced map raises it to a bare `encrypt`.
        assert_eq!(&*d.forced().policy, "encrypt");
        // A forced default would turn the failure into deferrals.
        let forced = PolicyFile::parse("default = \"forced\"\n", Path::new("p.toml")).unwrap();
        let e = Engine::with_sources(forced, sources.clone());
        assert_eq!(&*block_on(e.decide(&dest)).policy, "encrypt");
        // A rule decides without the sources.
        let ruled = PolicyFile::parse(
            "[[rule]]\ndomains=[\"sts.example\"]\ntls=\"opportunistic\"\n",
            Path::new("p.toml"),
        )
        .unwrap();
        let e = Engine::with_sources(ruled, sources);
        assert_eq!(&*block_on(e.decide(&dest)).policy, "may");
    }
}
