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

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use crate::engine::decision::{Decision, Level, PolicyWord, SourceKind, policy_text};
use crate::engine::key::{Destination, KeyForm, MAX_NAME_LEN, normalize_domain, parents};
use crate::engine::refusal::RefuseMode;
use crate::sources::name_index::NameIndex;

/// Static decisions only change on reload; callers may keep them this long.
pub const STATIC_DECISION_TTL: Duration = Duration::from_secs(3600);
/// Largest policy file accepted, so a wrong path (a log, a core file) fails
/// clearly instead of exhausting memory.
pub const MAX_POLICY_FILE_BYTES: u64 = 256 * 1024 * 1024;

/// Postfix cipher grades accepted in `ciphers = …`.
const CIPHER_GRADES: [&str; 5] = ["export", "low", "medium", "high", "null"];

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    #[serde(default = "default_word")]
    default: String,
    #[serde(default)]
    rule: Vec<RawRule>,
    #[serde(default)]
    sender_rule: Vec<RawSenderRule>,
}

fn default_word() -> String {
    "opportunistic".into()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    domains: Vec<String>,
    tls: String,
    #[serde(default, rename = "match")]
    matches: Vec<String>,
    reason: Option<String>,
    protocols: Option<String>,
    ciphers: Option<String>,
    refuse: Option<String>,
    #[serde(default)]
    allow_tls_required_no: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSenderRule {
    senders: Vec<String>,
    tls: String,
    reason: Option<String>,
    refuse: Option<String>,
}

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

/// The sender entries of all sender rules, by form. Values are 0-based
/// sender rule positions.
#[derive(Debug, Default)]
struct SenderIndex {
    address: HashMap<String, u32>,
    domain: HashMap<String, u32>,
    sub: HashMap<String, u32>,
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
pub struct StaticPolicy {
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
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyError {
    pub file: PathBuf,
    /// 1-based rule number, when the problem is inside one rule.
    pub rule: Option<u32>,
    /// 1-based sender rule number, when the problem is inside one
    /// `[[sender_rule]]`.
    pub sender_rule: Option<u32>,
    pub problem: String,
}

impl fmt::Display for PolicyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: ", self.file.display())?;
        if let Some(r) = self.rule {
            write!(f, "rule {r} ([[rule]] number {r} in the file): ")?;
        }
        if let Some(r) = self.sender_rule {
            write!(
                f,
                "sender_rule {r} ([[sender_rule]] number {r} in the file): "
            )?;
        }
        f.write_str(&self.problem)
    }
}

impl std::error::Error for PolicyError {}

impl StaticPolicy {
    /// Read and check a policy file.
    pub fn load(path: &Path) -> Result<StaticPolicy, PolicyError> {
        let err = |problem: String| PolicyError {
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
    /// The TOML parser allocates many times the file's size in short-lived
    /// objects. It runs on a thread of its own, so those allocations come
    /// from that thread's malloc arena and not interleaved with the index
    /// built here; afterwards the freed memory is handed back to the
    /// system. With 100,000 rules this is the difference between ~20 MB and
    /// ~150 MB resident.
    pub fn parse(text: &str, path: &Path) -> Result<StaticPolicy, PolicyError> {
        let parsed = std::thread::scope(|s| {
            std::thread::Builder::new()
                .name("policy-parse".into())
                .spawn_scoped(s, || toml::from_str::<RawPolicy>(text))
                .map(|h| h.join())
        });
        let raw = match parsed {
            Ok(Ok(r)) => r,
            // No thread to be had (resource limits): parse right here.
            Err(_) => toml::from_str::<RawPolicy>(text),
            Ok(Err(panic)) => std::panic::resume_unwind(panic),
        }
        .map_err(|e| {
            let (rule, sender_rule) = match table_of_toml_error(text, &e) {
                Some(Table::Rule(n)) => (Some(n), None),
                Some(Table::SenderRule(n)) => (None, Some(n)),
                None => (None, None),
            };
            PolicyError {
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

/// A sender entry, normalised.
enum SenderEntry {
    /// `local@domain`, local part folded.
    Address(String),
    /// `@domain`
    Domain(String),
    /// `.domain`: any subdomain.
    Sub(String),
}

impl SenderEntry {
    fn text(&self) -> String {
        match self {
            SenderEntry::Address(a) => a.clone(),
            SenderEntry::Domain(d) => format!("@{d}"),
            SenderEntry::Sub(d) => format!(".{d}"),
        }
    }
}

/// Local parts compare without regard to case (as Postfix's access maps
/// do), including non-ASCII ones.
fn fold_local(local: &str) -> String {
    if local.is_ascii() {
        local.to_ascii_lowercase()
    } else {
        local.to_lowercase()
    }
}

fn parse_sender_entry(written: &str) -> Result<SenderEntry, String> {
    const FORMS: &str =
        "use user@domain, @domain (any address at domain) or .domain (any address at a subdomain)";
    if written.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!(
            "spaces and control characters are not allowed; {FORMS}"
        ));
    }
    if let Some(domain) = written.strip_prefix('@') {
        return normalize_domain(domain)
            .map(SenderEntry::Domain)
            .map_err(|e| e.to_string());
    }
    if let Some(domain) = written.strip_prefix('.') {
        if domain.contains('@') {
            return Err(format!("not a sender pattern; {FORMS}"));
        }
        return normalize_domain(domain)
            .map(SenderEntry::Sub)
            .map_err(|e| e.to_string());
    }
    let Some((local, domain)) = written.rsplit_once('@') else {
        return Err(format!("not an address; {FORMS}"));
    };
    if local.is_empty() {
        return Err(format!("empty local part; {FORMS}"));
    }
    let domain = normalize_domain(domain).map_err(|e| e.to_string())?;
    Ok(SenderEntry::Address(format!(
        "{}@{domain}",
        fold_local(local)
    )))
}

/// `.name` as a shared string, built with one allocation (this runs for
/// every lookup that a subdomain rule answers).
fn dotted(name: &str) -> Arc<str> {
    let mut buf = [0u8; 1 + MAX_NAME_LEN];
    match buf.get_mut(1..=name.len()) {
        Some(tail) => {
            tail.copy_from_slice(name.as_bytes());
            buf[0] = b'.';
            // Both parts are UTF-8, so the join is too.
            Arc::from(std::str::from_utf8(&buf[..=name.len()]).unwrap_or_default())
        }
        None => Arc::from(format!(".{name}")),
    }
}

/// The current length of the reason text as an offset.
fn offset(reasons: &str) -> Result<u32, PolicyError> {
    u32::try_from(reasons.len()).map_err(|_| PolicyError {
        file: PathBuf::new(),
        rule: None,
        sender_rule: None,
        problem: "reasons take more than 4 GiB".into(),
    })
}

/// The canonical text of an index key of a given form.
fn dest_canonical(form: KeyForm, key: &str) -> String {
    match form {
        KeyForm::Parent => format!(".{key}"),
        _ => key.to_string(),
    }
}

/// An array table of the policy file, numbered from 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Table {
    Rule(u32),
    SenderRule(u32),
}

/// Guess which `[[rule]]` or `[[sender_rule]]` a TOML error sits in from
/// its byte offset, so the message can name the rule as well as the line.
fn table_of_toml_error(text: &str, e: &toml::de::Error) -> Option<Table> {
    let at = e.span()?.start;
    let before = text.get(..at)?;
    let (mut rules, mut senders, mut last) = (0u32, 0u32, None);
    for line in before.lines() {
        let l = line.trim_start();
        if l.starts_with("[[rule]]") {
            rules = rules.saturating_add(1);
            last = Some(Table::Rule(rules));
        } else if l.starts_with("[[sender_rule]]") {
            senders = senders.saturating_add(1);
            last = Some(Table::SenderRule(senders));
        } else if l.starts_with('[') {
            last = None;
        }
    }
    last
}

struct Builder<'a> {
    path: &'a Path,
    /// Shared strings: most rules repeat the same policy text.
    interned: HashSet<Arc<str>>,
}

impl<'a> Builder<'a> {
    fn new(path: &'a Path) -> Self {
        Builder {
            path,
            interned: HashSet::new(),
        }
    }

    fn intern(&mut self, s: &str) -> Arc<str> {
        if let Some(a) = self.interned.get(s) {
            return a.clone();
        }
        let a: Arc<str> = Arc::from(s);
        self.interned.insert(a.clone());
        a
    }

    /// The message for an entry that normalises to one already indexed,
    /// naming where it was first listed and how it was written there.
    fn duplicate(
        &self,
        raw: &RawPolicy,
        number: u32,
        first: u32,
        written: &str,
        canonical: &str,
    ) -> PolicyError {
        let first_written = raw.rule[first as usize]
            .domains
            .iter()
            .find(|w| Destination::parse(w).is_ok_and(|d| d.canonical() == canonical))
            .map(String::as_str)
            .unwrap_or(canonical);
        let same = if first_written == written {
            String::new()
        } else {
            format!(" (as {first_written:?})")
        };
        let where_ = if first + 1 == number {
            "earlier in this rule".to_string()
        } else {
            format!("in rule {}", first + 1)
        };
        self.error(
            Some(number),
            format!("domain {written:?} is already listed {where_}{same}"),
        )
    }

    fn error(&self, rule: Option<u32>, problem: String) -> PolicyError {
        PolicyError {
            file: self.path.to_path_buf(),
            rule,
            sender_rule: None,
            problem,
        }
    }

    fn sender_error(&self, number: u32, problem: String) -> PolicyError {
        PolicyError {
            file: self.path.to_path_buf(),
            rule: None,
            sender_rule: Some(number),
            problem,
        }
    }

    fn refuse(&self, raw: Option<&str>) -> Result<Option<RefuseMode>, String> {
        raw.map(|r| {
            r.parse::<RefuseMode>()
                .map_err(|e| format!("key `refuse`: {e}"))
        })
        .transpose()
    }

    fn build_senders(
        &self,
        raw: &RawPolicy,
    ) -> Result<(Vec<SenderRule>, SenderIndex), PolicyError> {
        let mut rules = Vec::with_capacity(raw.sender_rule.len());
        let mut index = SenderIndex::default();
        // Where each normalised entry was first listed, and as what.
        let mut seen: HashMap<String, (u32, &str)> = HashMap::new();
        for (i, r) in raw.sender_rule.iter().enumerate() {
            let number = u32::try_from(i + 1)
                .map_err(|_| self.error(None, "too many sender rules".to_string()))?;
            let level = r
                .tls
                .parse::<PolicyWord>()
                .map_err(|e| self.sender_error(number, format!("key `tls`: {e}")))?
                .0;
            if level != Level::Encrypt {
                return Err(self.sender_error(
                    number,
                    format!(
                        "key `tls`: sender rules only take \"forced\" (got {:?}): their mail goes through the forced transport, which never sends in plaintext",
                        r.tls
                    ),
                ));
            }
            let refuse = self
                .refuse(r.refuse.as_deref())
                .map_err(|e| self.sender_error(number, e))?;
            if r.senders.is_empty() {
                return Err(self.sender_error(number, "key `senders` is empty".into()));
            }
            for written in &r.senders {
                let entry = parse_sender_entry(written)
                    .map_err(|e| self.sender_error(number, format!("sender {written:?}: {e}")))?;
                let text = entry.text();
                if let Some((first, as_written)) = seen.get(&text) {
                    let where_ = if *first == number {
                        "earlier in this sender rule".to_string()
                    } else {
                        format!("in sender_rule {first}")
                    };
                    let same = if *as_written == written.as_str() {
                        String::new()
                    } else {
                        format!(" (as {as_written:?})")
                    };
                    return Err(self.sender_error(
                        number,
                        format!("sender {written:?} is already listed {where_}{same}"),
                    ));
                }
                seen.insert(text, (number, written.as_str()));
                let pos = number - 1;
                match entry {
                    SenderEntry::Address(a) => index.address.insert(a, pos),
                    SenderEntry::Domain(d) => index.domain.insert(d, pos),
                    SenderEntry::Sub(d) => index.sub.insert(d, pos),
                };
            }
            let reason = match &r.reason {
                Some(text) => Arc::from(text.as_str()),
                None => Arc::from(format!("policy file sender_rule {number}")),
            };
            rules.push(SenderRule {
                index: number,
                reason,
                refuse,
            });
        }
        Ok((rules, index))
    }

    fn build(mut self, raw: &RawPolicy) -> Result<StaticPolicy, PolicyError> {
        let default_level = raw
            .default
            .parse::<PolicyWord>()
            .map_err(|e| self.error(None, format!("key `default`: {e}")))?
            .0;
        let mut rules = Vec::with_capacity(raw.rule.len());
        let mut reasons = String::new();
        let mut exact = NameIndex::default();
        let mut sub = NameIndex::default();
        let mut nexthop = NameIndex::default();
        for (i, r) in raw.rule.iter().enumerate() {
            let number =
                u32::try_from(i + 1).map_err(|_| self.error(None, "too many rules".to_string()))?;
            let pos = number - 1;
            let level = r
                .tls
                .parse::<PolicyWord>()
                .map_err(|e| self.error(Some(number), format!("key `tls`: {e}")))?
                .0;
            self.check_attributes(number, level, r)?;
            let refuse = self
                .refuse(r.refuse.as_deref())
                .map_err(|e| self.error(Some(number), e))?;
            if r.domains.is_empty() {
                return Err(self.error(Some(number), "key `domains` is empty".into()));
            }
            for written in &r.domains {
                let dest = Destination::parse(written)
                    .map_err(|e| self.error(Some(number), format!("domain {written:?}: {e}")))?;
                let (map, key) = match dest.form {
                    KeyForm::Domain => (&mut exact, dest.name),
                    KeyForm::Parent => (&mut sub, dest.name),
                    _ => (&mut nexthop, dest.canonical()),
                };
                if let Err(first) = map.insert(&key, pos) {
                    let canonical = dest_canonical(dest.form, &key);
                    return Err(self.duplicate(raw, number, first, written, &canonical));
                }
            }
            let policy = self.intern(&policy_text(
                level,
                &r.matches,
                r.protocols.as_deref(),
                r.ciphers.as_deref(),
            ));
            let start = offset(&reasons)?;
            match &r.reason {
                Some(text) => reasons.push_str(text),
                None => reasons.push_str(&format!("policy file rule {number}")),
            }
            let reason = (start, offset(&reasons)?);
            rules.push(Rule {
                index: number,
                level,
                policy,
                reason,
                refuse,
                allow_tls_required_no: r.allow_tls_required_no,
            });
        }
        let (sender_rules, senders) = self.build_senders(raw)?;
        exact.shrink_to_fit();
        sub.shrink_to_fit();
        nexthop.shrink_to_fit();
        reasons.shrink_to_fit();
        let default = Decision {
            level: default_level,
            policy: Arc::from(default_level.as_str()),
            source: SourceKind::Default,
            rule: None,
            matched: None,
            reason: Arc::from("no rule matches; the policy file's default"),
            ttl: STATIC_DECISION_TTL,
            raised: false,
            temporary: false,
            published: None,
        };
        Ok(StaticPolicy {
            path: self.path.to_path_buf(),
            rules,
            reasons,
            exact,
            sub,
            nexthop,
            default,
            sender_rules,
            senders,
        })
    }

    fn check_attributes(&self, number: u32, level: Level, r: &RawRule) -> Result<(), PolicyError> {
        if !r.matches.is_empty() && !level.takes_match() {
            return Err(self.error(
                Some(number),
                format!(
                    "key `match` does not apply to tls = {:?} (Postfix level {}); only verify and secure take certificate names",
                    r.tls, level
                ),
            ));
        }
        for m in &r.matches {
            if m.is_empty()
                || m.chars()
                    .any(|c| !c.is_ascii_graphic() || c == ':' || c == ',')
            {
                return Err(self.error(
                    Some(number),
                    format!(
                        "key `match`: {m:?} is not a certificate name pattern (no spaces, ':' or ','; one name per list item)"
                    ),
                ));
            }
        }
        if let Some(p) = &r.protocols {
            let ok = !p.is_empty()
                && p.chars()
                    .all(|c| c.is_ascii_alphanumeric() || ".:!<>=_-".contains(c));
            if !ok {
                return Err(self.error(
                    Some(number),
                    format!(
                        "key `protocols`: {p:?} is not a Postfix protocol list (e.g. \">=TLSv1.2\")"
                    ),
                ));
            }
        }
        if let Some(c) = &r.ciphers
            && !CIPHER_GRADES.contains(&c.as_str())
        {
            return Err(self.error(
                Some(number),
                format!(
                    "key `ciphers`: {c:?} is not a Postfix cipher grade ({})",
                    CIPHER_GRADES.join(", ")
                ),
            ));
        }
        if level == Level::None && (r.protocols.is_some() || r.ciphers.is_some()) {
            return Err(self.error(
                Some(number),
                "keys `protocols` and `ciphers` do not apply to tls = \"none\"".into(),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(text: &str) -> StaticPolicy {
        StaticPolicy::parse(text, Path::new("policy.toml")).unwrap_or_else(|e| panic!("{e}"))
    }

    fn error(text: &str) -> PolicyError {
        match StaticPolicy::parse(text, Path::new("policy.toml")) {
            Ok(_) => panic!("accepted: {text}"),
            Err(e) => e,
        }
    }

    fn decide(p: &StaticPolicy, key: &str) -> Option<(u32, String, String)> {
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
