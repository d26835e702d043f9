//! Keys that are not destinations, and the rules they could still name.
//!
//! A key Postfix (or a client in front of it) sends may be malformed: a
//! port out of range (`bank.example:65536`), a bracket never closed
//! (`[bank.example`), a NUL, CR or LF inside, text after the name, a label
//! over 63 octets, a name over 253. Such a key matches no rule as it
//! stands, but answering it with the default (`OK may`, or `NOTFOUND`)
//! would let Postfix fall back to a weaker level than the operator forced
//! for the domain the key was meant to name. So the most plausible domain
//! texts are recovered from the key ([`plausible_names`]); each, and its
//! parents, is looked up in the policy file:
//!
//! - no rule could be meant: the default, as for any other name;
//! - every reading names the same rule (or rules with the same answer):
//!   that rule's answer;
//! - readings name rules with different answers: a temporary failure at
//!   the strongest of them (socketmap `TEMP`, the message doors defer the
//!   recipient), so Postfix holds the mail rather than guess.

use std::collections::HashSet;
use std::sync::Arc;

use super::decision::{Decision, SourceKind};
use super::key::{Destination, KeyError, KeyForm};
use super::policy_file::PolicyFile;

/// The longest key text considered; the rest cannot change which rule is
/// meant more than the part before it (socketmap queries are bounded far
/// below this anyway).
pub const MAX_KEY_SCAN: usize = 4096;

/// Most readings of one key: every piece between separators in the
/// [`MAX_KEY_SCAN`] bytes read (a piece and its separator take two bytes
/// at least), and the key with its control characters taken out. Every
/// piece is read, not the first few: a rule's domain late in a key of
/// many pieces is found all the same. The work stays in proportion to
/// the bytes scanned (each reading is looked up with its parents).
pub const MAX_READINGS: usize = MAX_KEY_SCAN / 2 + 1;

/// What a malformed key could mean.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Meant {
    /// No rule's domain could be meant.
    Nothing,
    /// One answer: the rule's.
    Rule(Decision),
    /// Rules with different answers: hold the mail.
    Ambiguous(Decision),
}

/// Whether a key that failed to parse still governs the answer: the
/// decision for it came from a rule (not the default). Front doors log and
/// count these (`dest` is `None` exactly when the key did not parse).
pub fn held(dest: Option<&Destination>, decision: &Decision) -> bool {
    dest.is_none() && decision.source != SourceKind::Default
}

/// The decision for a key that is not a destination.
pub fn decide(policy: &PolicyFile, key: &str, e: &KeyError) -> Decision {
    match meant(policy, key) {
        Meant::Nothing => {
            let mut d = policy.default_decision().clone();
            d.reason = Arc::from(format!(
                "key is not a destination ({e}); no rule's domain could be meant; the default applies"
            ));
            d
        }
        Meant::Rule(mut d) => {
            d.reason = Arc::from(format!(
                "key is not a destination ({e}); it names {}, whose rule applies: {}",
                d.matched.as_deref().unwrap_or("a ruled domain"),
                d.reason
            ));
            d
        }
        Meant::Ambiguous(mut d) => {
            d.reason = Arc::from(format!(
                "key is not a destination ({e}); it could name rules with different answers; held until it is sent well-formed"
            ));
            d
        }
    }
}

/// Which rules a malformed key could name.
pub fn meant(policy: &PolicyFile, key: &str) -> Meant {
    let mut found: Vec<Decision> = Vec::new();
    let mut rules = HashSet::new();
    for reading in plausible_names(key) {
        if let Some(hit) = policy.lookup(&reading.destination())
            && rules.insert(hit.rule)
        {
            found.push(policy.decision(hit));
        }
    }
    let Some(first) = found.first().cloned() else {
        return Meant::Nothing;
    };
    if found.iter().all(|d| d.policy == first.policy) {
        return Meant::Rule(first);
    }
    let mut strongest = found.into_iter().max_by_key(|d| d.level).unwrap_or(first);
    strongest.temporary = true;
    Meant::Ambiguous(strongest)
}

/// One reading of a malformed key: a host text and how it was written.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Reading {
    /// Lower-case, without brackets, port, leading or trailing dot.
    pub name: String,
    /// Written inside `[...]`.
    pub bracketed: bool,
    /// Written with a leading dot (a parent-walk key).
    pub parent: bool,
}

impl Reading {
    /// The destination this reading is looked up as. The name is used
    /// as it is, even when it breaks the name syntax (an over-long label):
    /// the policy file's index finds it or one of its parents all the same.
    pub(super) fn destination(&self) -> Destination {
        // `[host]` is looked up as Postfix's own `[host]` key would be
        // (the next-hop entry, then the name), `.name` as a parent walk.
        let form = if self.bracketed {
            KeyForm::Host
        } else if self.parent {
            KeyForm::Parent
        } else {
            KeyForm::Domain
        };
        Destination {
            form,
            name: self.name.clone(),
            port: None,
            is_ip: false,
        }
    }
}

/// Characters that cannot be part of a key's host name and so separate
/// the pieces a malformed key is read as.
fn is_separator(c: char) -> bool {
    c.is_control()
        || c.is_whitespace()
        || matches!(
            c,
            '<' | '>' | '@' | ',' | ';' | '/' | '\\' | '"' | '\'' | '(' | ')'
        )
}

/// The plausible domain texts in a malformed key, at most
/// [`MAX_READINGS`]: each piece between separators (NUL, CR, LF, other
/// controls, white space, address punctuation), and the whole key with
/// its control characters taken out (`bank.exa\0mple` read as
/// `bank.example`).
pub fn plausible_names(key: &str) -> Vec<Reading> {
    let key = cut(key, MAX_KEY_SCAN);
    let mut out: Vec<Reading> = Vec::new();
    let mut seen = HashSet::new();
    let mut push = |text: &str| {
        if out.len() < MAX_READINGS
            && let Some(r) = read(text)
            && seen.insert(r.clone())
        {
            out.push(r);
        }
    };
    for piece in key.split(is_separator) {
        push(piece);
    }
    if key.chars().any(char::is_control) {
        let joined: String = key.chars().filter(|c| !c.is_control()).collect();
        push(&joined);
    }
    out
}

/// The host text of one piece: inside a bracket (closed or not), before
/// a `:port` (whatever follows the colon) or a closing bracket, without
/// leading or trailing dots; lower case, non-ASCII as A-labels where
/// that works.
fn read(piece: &str) -> Option<Reading> {
    let (text, bracketed) = match piece.strip_prefix('[') {
        Some(rest) => (rest.split(']').next().unwrap_or(rest), true),
        // A piece cut out of a bracketed key (`[m'.bank.example]:25`
        // gives `.bank.example]:25`) ends its host at the bracket.
        None => (piece.split([':', ']']).next().unwrap_or(piece), false),
    };
    let text = if bracketed {
        // `[ipv6:...]` is an address: no rule's domain.
        if text.to_ascii_lowercase().starts_with("ipv6:") {
            return None;
        }
        text.split(':').next().unwrap_or(text)
    } else {
        text
    };
    let parent = text.starts_with('.');
    // Empty labels (`bank..example`) are dropped: two dots in a row most
    // plausibly stand for one.
    let text = text
        .split('.')
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(".");
    if text.is_empty() || text.parse::<std::net::IpAddr>().is_ok() {
        return None;
    }
    let name = if text.is_ascii() {
        text.to_ascii_lowercase()
    } else {
        idna::domain_to_ascii(&text).unwrap_or_else(|_| labels_to_ascii(&text))
    };
    if name.is_empty() {
        return None;
    }
    Some(Reading {
        name,
        bracketed,
        parent,
    })
}

/// A name UTS #46 refuses as a whole, label by label: a label it refuses
/// (a disallowed character) keeps its text in lower case, so the labels
/// after it (the name's parents) can still name a rule.
fn labels_to_ascii(text: &str) -> String {
    let labels: Vec<String> = text
        .split('.')
        .map(|label| idna::domain_to_ascii(label).unwrap_or_else(|_| label.to_lowercase()))
        .filter(|label| !label.is_empty())
        .collect();
    labels.join(".")
}

/// `s` cut to at most `max` bytes at a character boundary.
fn cut(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
#[path = "malformed_tests.rs"]
mod tests;
