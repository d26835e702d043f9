//! Sender rules' entries: addresses, `@domain`, `.parent`.

use std::collections::HashMap;

use crate::engine::key::normalize_domain;

/// The sender entries of all sender rules, by form. Values are 0-based
/// sender rule positions.
#[derive(Debug, Default)]
pub(super) struct SenderIndex {
    pub(super) address: HashMap<String, u32>,
    pub(super) domain: HashMap<String, u32>,
    pub(super) sub: HashMap<String, u32>,
}

/// A sender entry, normalised.
pub(super) enum SenderEntry {
    /// `local@domain`, local part folded.
    Address(String),
    /// `@domain`
    Domain(String),
    /// `.domain`: any subdomain.
    Sub(String),
}

impl SenderEntry {
    pub(super) fn text(&self) -> String {
        match self {
            SenderEntry::Address(a) => a.clone(),
            SenderEntry::Domain(d) => format!("@{d}"),
            SenderEntry::Sub(d) => format!(".{d}"),
        }
    }
}

/// Local parts compare without regard to case (as Postfix's access maps
/// do), including non-ASCII ones.
pub(super) fn fold_local(local: &str) -> String {
    if local.is_ascii() {
        local.to_ascii_lowercase()
    } else {
        local.to_lowercase()
    }
}

pub(super) fn parse_sender_entry(written: &str) -> Result<SenderEntry, String> {
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
