//! Reading and checking a policy file: TOML into rules and indexes.

use crate::engine::decision::RequireTlsAction;
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;

use super::name_index::NameIndex;
use super::sender::{SenderEntry, SenderIndex, parse_sender_entry};
use super::{CIPHER_GRADES, PolicyFile, PolicyFileError, Rule, STATIC_DECISION_TTL, SenderRule};
use crate::engine::decision::{Decision, Level, PolicyWord, SourceKind, policy_text};
use crate::engine::key::{Destination, KeyForm, MAX_NAME_LEN};
use crate::engine::refusal::RefuseMode;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPolicy {
    #[serde(default = "default_word")]
    default: String,
    #[serde(default)]
    rule: Vec<RawRule>,
    #[serde(default)]
    sender_rule: Vec<RawSenderRule>,
}

impl RawPolicy {
    /// Neither `rule` nor `sender_rule` has a table.
    pub(super) fn has_no_tables(&self) -> bool {
        self.rule.is_empty() && self.sender_rule.is_empty()
    }

    /// Add the tables of a later part of the file (its `default` is not
    /// read: a part starts with a table header, so it cannot set it).
    pub(super) fn append_tables(&mut self, part: RawPolicy) {
        self.rule.extend(part.rule);
        self.sender_rule.extend(part.sender_rule);
    }

    /// The default, the number of rules and sender rules, and every rule's
    /// first domain and reason (to compare two parses).
    #[cfg(test)]
    pub(super) fn summary(&self) -> (String, usize, usize, Vec<(String, Option<String>)>) {
        (
            self.default.clone(),
            self.rule.len(),
            self.sender_rule.len(),
            self.rule
                .iter()
                .map(|r| (r.domains.join(","), r.reason.clone()))
                .collect(),
        )
    }
}

pub(super) fn default_word() -> String {
    "opportunistic".into()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRule {
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
    requiretls: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSenderRule {
    senders: Vec<String>,
    tls: String,
    reason: Option<String>,
    refuse: Option<String>,
}

/// `.name` as a shared string, built with one allocation (this runs for
/// every lookup that a subdomain rule answers).
pub(super) fn dotted(name: &str) -> Arc<str> {
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
pub(super) fn offset(reasons: &str) -> Result<u32, PolicyFileError> {
    u32::try_from(reasons.len()).map_err(|_| PolicyFileError {
        file: PathBuf::new(),
        rule: None,
        sender_rule: None,
        problem: "reasons take more than 4 GiB".into(),
    })
}

/// The canonical text of an index key of a given form.
pub(super) fn dest_canonical(form: KeyForm, key: &str) -> String {
    match form {
        KeyForm::Parent => format!(".{key}"),
        _ => key.to_string(),
    }
}

/// An array table of the policy file, numbered from 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Table {
    Rule(u32),
    SenderRule(u32),
}

/// Guess which `[[rule]]` or `[[sender_rule]]` a TOML error sits in from
/// its byte offset, so the message can name the rule as well as the line.
pub(super) fn table_of_toml_error(text: &str, e: &toml::de::Error) -> Option<Table> {
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

pub(super) struct Builder<'a> {
    path: &'a Path,
    /// Shared strings: most rules repeat the same policy text.
    interned: HashSet<Arc<str>>,
}

impl<'a> Builder<'a> {
    pub(super) fn new(path: &'a Path) -> Self {
        Builder {
            path,
            interned: HashSet::new(),
        }
    }

    pub(super) fn intern(&mut self, s: &str) -> Arc<str> {
        if let Some(a) = self.interned.get(s) {
            return a.clone();
        }
        let a: Arc<str> = Arc::from(s);
        self.interned.insert(a.clone());
        a
    }

    /// The message for an entry that normalises to one already indexed,
    /// naming where it was first listed and how it was written there.
    pub(super) fn duplicate(
        &self,
        raw: &RawPolicy,
        number: u32,
        first: u32,
        written: &str,
        canonical: &str,
    ) -> PolicyFileError {
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

    pub(super) fn error(&self, rule: Option<u32>, problem: String) -> PolicyFileError {
        PolicyFileError {
            file: self.path.to_path_buf(),
            rule,
            sender_rule: None,
            problem,
        }
    }

    pub(super) fn sender_error(&self, number: u32, problem: String) -> PolicyFileError {
        PolicyFileError {
            file: self.path.to_path_buf(),
            rule: None,
            sender_rule: Some(number),
            problem,
        }
    }

    pub(super) fn refuse(&self, raw: Option<&str>) -> Result<Option<RefuseMode>, String> {
        raw.map(|r| {
            r.parse::<RefuseMode>()
                .map_err(|e| format!("key `refuse`: {e}"))
        })
        .transpose()
    }

    pub(super) fn build_senders(
        &self,
        raw: &RawPolicy,
    ) -> Result<(Vec<SenderRule>, SenderIndex), PolicyFileError> {
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

    pub(super) fn build(mut self, raw: &RawPolicy) -> Result<PolicyFile, PolicyFileError> {
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
            let requiretls = r
                .requiretls
                .as_deref()
                .map(str::parse::<RequireTlsAction>)
                .transpose()
                .map_err(|e| self.error(Some(number), format!("key `requiretls`: {e}")))?;
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
                requiretls,
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
        Ok(PolicyFile {
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

    pub(super) fn check_attributes(
        &self,
        number: u32,
        level: Level,
        r: &RawRule,
    ) -> Result<(), PolicyFileError> {
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
