//! The operator's files: the policy file and the daemon config (TOML).

use std::path::Path;

use crate::config::Config;
use crate::engine::key::Destination;
use crate::engine::policy_file::PolicyFile;

/// The `domains` entries of every `[[rule]]`, read with the TOML parser.
fn rule_entries(text: &str) -> Vec<String> {
    let Ok(table) = text.parse::<toml::Table>() else {
        return Vec::new();
    };
    let Some(rules) = table.get("rule").and_then(toml::Value::as_array) else {
        return Vec::new();
    };
    rules
        .iter()
        .filter_map(|r| r.get("domains").and_then(toml::Value::as_array))
        .flatten()
        .filter_map(|d| d.as_str().map(str::to_string))
        .collect()
}

/// Policy files: parsing never panics; a file that parses has a rule
/// for each of its entries (the entry, looked up as a key, finds a rule);
/// an error says something.
pub fn check_policy_file(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match PolicyFile::parse(text, Path::new("fuzz-policy.toml")) {
        Ok(p) => {
            for entry in rule_entries(text) {
                if let Ok(d) = Destination::parse(&entry) {
                    assert!(p.lookup(&d).is_some(), "entry {entry:?} finds no rule");
                }
            }
            let _ = p.lookup_sender("a@b.example");
        }
        Err(e) => assert!(!e.to_string().is_empty()),
    }
}

/// Config files: parsing and checking never panic; an error says
/// something.
pub fn check_config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Err(e) = Config::from_text(text, Path::new("/etc/tls-policyd/config.toml")) {
        assert!(!e.to_string().is_empty());
    }
}
