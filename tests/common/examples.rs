//! The Postfix lines of `postfix-examples/`, read from the files
//! themselves: tests that configure Postfix "as documented" take their
//! settings and master.cf entries from here, so the documentation and what
//! the tests run cannot drift apart.

#![allow(dead_code)]

use std::path::{Path, PathBuf};

/// `postfix-examples/` in the source tree.
pub fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("postfix-examples")
}

/// A file under `postfix-examples/` (`main.cf`,
/// `deployments/all-front-doors/master.cf`, ...).
pub fn read(relative: &str) -> String {
    let path = dir().join(relative);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The `name = value` settings of main.cf text, in order: comments and
/// blank lines skipped, continuation lines (starting with white space)
/// joined to their setting with one space.
pub fn main_cf_settings(text: &str) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    for line in text.lines() {
        if line.trim_start().starts_with('#') || line.trim().is_empty() {
            continue;
        }
        if line.starts_with(' ') || line.starts_with('\t') {
            let (_, value) = out
                .last_mut()
                .unwrap_or_else(|| panic!("continuation line without a setting: {line:?}"));
            if !value.is_empty() {
                value.push(' ');
            }
            value.push_str(line.trim());
            continue;
        }
        let (name, value) = line
            .split_once('=')
            .unwrap_or_else(|| panic!("not a main.cf setting: {line:?}"));
        out.push((name.trim().to_string(), value.trim().to_string()));
    }
    out
}

/// One setting of main.cf text (the last one wins, as in Postfix).
pub fn main_cf_value(text: &str, name: &str) -> Option<String> {
    main_cf_settings(text)
        .into_iter()
        .rev()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v)
}

/// A master.cf entry that the file ships commented out (`#submission inet
/// ...` and the `#  -o ...` lines under it), with the `#` removed: the
/// entry as an administrator enables it.
pub fn commented_service(master_cf: &str, service: &str) -> Option<String> {
    let head = format!("#{service} ");
    let mut lines = master_cf.lines().skip_while(|l| !l.starts_with(&head));
    let first = lines.next()?;
    let mut entry = first[1..].to_string();
    for l in lines {
        let Some(rest) = l.strip_prefix('#') else {
            break;
        };
        if !rest.starts_with("  -o ") {
            break;
        }
        entry.push('\n');
        entry.push_str(rest);
    }
    Some(entry)
}

/// Every commented-out service entry enabled (see [`commented_service`]):
/// `#submission` and `#submissions` with their options.
pub fn enable_commented_services(master_cf: &str, services: &[&str]) -> String {
    let mut out = String::new();
    let mut in_entry = false;
    for l in master_cf.lines() {
        let starts = services.iter().any(|s| l.starts_with(&format!("#{s} ")));
        if starts || (in_entry && l.starts_with("#  -o ")) {
            in_entry = true;
            out.push_str(&l[1..]);
        } else {
            in_entry = false;
            out.push_str(l);
        }
        out.push('\n');
    }
    out
}

/// The `-o NAME=VALUE` settings of a master.cf entry, `-o { NAME = VALUE }`
/// included, in order.
pub fn service_options(entry: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for l in entry.lines().skip(1) {
        let Some(opt) = l.trim().strip_prefix("-o ") else {
            continue;
        };
        let opt = opt.trim();
        let opt = match opt.strip_prefix('{') {
            Some(inner) => inner
                .strip_suffix('}')
                .unwrap_or_else(|| panic!("unbalanced -o {{ }}: {l:?}")),
            None => opt,
        };
        let (name, value) = opt
            .split_once('=')
            .unwrap_or_else(|| panic!("not a -o setting: {l:?}"));
        out.push((name.trim().to_string(), value.trim().to_string()));
    }
    out
}

/// The items of a Postfix restriction list: commas and white space
/// separate them, and a `{ ... }` group belongs to the item before it
/// (`check_policy_service { inet:127.0.0.1:10028, default_action=DUNNO }`
/// is one item).
pub fn restriction_items(list: &str) -> Vec<String> {
    let mut items: Vec<String> = Vec::new();
    let mut word = String::new();
    let mut depth = 0usize;
    for c in list.chars() {
        match c {
            '{' => {
                if depth == 0 && !word.is_empty() {
                    items.push(std::mem::take(&mut word));
                }
                if depth == 0 {
                    let last = items
                        .last_mut()
                        .unwrap_or_else(|| panic!("{{ without an item: {list:?}"));
                    last.push(' ');
                    last.push('{');
                } else {
                    items.last_mut().unwrap().push('{');
                }
                depth += 1;
            }
            '}' => {
                depth = depth
                    .checked_sub(1)
                    .unwrap_or_else(|| panic!("unbalanced }}: {list:?}"));
                items.last_mut().unwrap().push('}');
            }
            _ if depth > 0 => items.last_mut().unwrap().push(c),
            ',' | ' ' | '\t' | '\n' => {
                if !word.is_empty() {
                    items.push(std::mem::take(&mut word));
                }
            }
            _ => word.push(c),
        }
    }
    assert_eq!(depth, 0, "unbalanced {{: {list:?}");
    if !word.is_empty() {
        items.push(word);
    }
    items
}

/// Why mail that a restriction list accepts would not reach the policy
/// check in it: `None` when the list has a `check_policy_service` and no
/// `permit...` item comes before it; otherwise what is wrong.
pub fn policy_check_problem(list: &str) -> Option<String> {
    let items = restriction_items(list);
    let Some(at) = items
        .iter()
        .position(|i| i.starts_with("check_policy_service"))
    else {
        return Some(format!("no check_policy_service in {list:?}"));
    };
    let permits: Vec<&String> = items[..at]
        .iter()
        .filter(|i| i.starts_with("permit"))
        .collect();
    if permits.is_empty() {
        None
    } else {
        Some(format!(
            "{permits:?} before check_policy_service in {list:?}: mail they permit is never asked about"
        ))
    }
}

/// The server of the first `check_policy_service` in a restriction list:
/// `inet:HOST:PORT`, or `unix:PATH` (relative to Postfix's queue directory
/// unless it starts with `/`).
pub fn policy_service(list: &str) -> Option<String> {
    let item = restriction_items(list)
        .into_iter()
        .find(|i| i.starts_with("check_policy_service"))?;
    let start = ["inet:", "unix:"]
        .iter()
        .filter_map(|p| item.find(p))
        .min()?;
    Some(
        item[start..]
            .chars()
            .take_while(|c| !c.is_whitespace() && *c != ',' && *c != '}')
            .collect(),
    )
}
