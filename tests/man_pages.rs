//! The man pages in `packaging/man` stay true: groff formats them without
//! a warning, `man` renders them at 80 columns without one, `tls-policyd(8)` documents every command and option the
//! binary has, `tls-policyd.toml(5)` every configuration section and key
//! the daemon accepts and no other, `tls-policyd-policy(5)` every policy
//! file key. The accepted keys come from the daemon itself: an unknown key
//! is refused with the list of the expected ones.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use common::{find_tool, run_with_timeout};
use tls_policyd::config::Config;
use tls_policyd::engine::policy_file::PolicyFile;

const PAGES: [&str; 3] = [
    "tls-policyd.8",
    "tls-policyd.toml.5",
    "tls-policyd-policy.5",
];

fn page_path(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("packaging/man")
        .join(name)
}

fn page(name: &str) -> String {
    std::fs::read_to_string(page_path(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

#[test]
fn groff_formats_every_page_without_warnings() {
    let groff = find_tool("groff").expect("groff is not installed (Debian package groff-base)");
    for name in PAGES {
        let out = run_with_timeout(
            Command::new(&groff)
                .args(["-man", "-Tutf8", "-ww", "-z"])
                .arg(page_path(name)),
        );
        assert!(out.status.success(), "{name}: groff failed");
        assert_eq!(
            String::from_utf8_lossy(&out.stderr),
            "",
            "{name}: groff warnings"
        );
    }
}

/// As an administrator reads them: `man` at 80 columns, with groff's
/// warnings on (a table wider than the line, a line that cannot be
/// adjusted or broken).
#[test]
fn man_renders_every_page_at_80_columns_without_warnings() {
    let man = find_tool("man").expect("man is not installed (Debian package man-db)");
    for name in PAGES {
        let out = run_with_timeout(
            Command::new(&man)
                .args(["--warnings", "-l"])
                .arg(page_path(name))
                .env("MANWIDTH", "80")
                .env("LC_ALL", "C.UTF-8")
                .env_remove("MANPAGER")
                .env_remove("PAGER"),
        );
        assert!(out.status.success(), "{name}: man failed");
        assert_eq!(
            String::from_utf8_lossy(&out.stderr),
            "",
            "{name}: warnings from MANWIDTH=80 man --warnings -l {name}"
        );
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("NAME"), "{name}: {text}");
        for line in text.lines() {
            assert!(
                line.chars().count() <= 80,
                "{name}: a line wider than 80 columns: {line:?}"
            );
        }
    }
}

/// Section -> keys documented as `.TP` / `.B key` under a heading naming
/// the section (`.SS [socketmap]`, `.SH [[rule]]`); keys under "TOP-LEVEL
/// KEYS" belong to the section "".
fn documented(text: &str) -> BTreeMap<String, BTreeSet<String>> {
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut section: Option<String> = None;
    let mut after_tp = false;
    for line in text.lines() {
        if let Some(h) = line
            .strip_prefix(".SH ")
            .or_else(|| line.strip_prefix(".SS "))
        {
            let h = h.trim_matches('"');
            section = if h == "TOP-LEVEL KEYS" {
                Some(String::new())
            } else {
                h.strip_prefix("[[")
                    .and_then(|r| r.strip_suffix("]]"))
                    .or_else(|| h.strip_prefix('[').and_then(|r| r.strip_suffix(']')))
                    .map(str::to_string)
            };
            if let Some(s) = &section {
                out.entry(s.clone()).or_default();
            }
            after_tp = false;
            continue;
        }
        if after_tp
            && let (Some(s), Some(key)) = (&section, line.strip_prefix(".B "))
            && !key.is_empty()
            && key.chars().all(|c| c.is_ascii_lowercase() || c == '_')
        {
            out.get_mut(s).unwrap().insert(key.to_string());
        }
        after_tp = line == ".TP";
    }
    out
}

/// The identifiers in backquotes after "expected" in an unknown-key error.
fn expected_keys(error: &str) -> BTreeSet<String> {
    let line = error
        .lines()
        .find(|l| l.contains("zz_unknown") && l.contains("expected"))
        .unwrap_or_else(|| panic!("no unknown-key error with expected keys:\n{error}"));
    let tail = &line[line.find("expected").unwrap()..];
    let mut keys = BTreeSet::new();
    for part in tail.split('`') {
        if !part.is_empty() && part.chars().all(|c| c.is_ascii_lowercase() || c == '_') {
            keys.insert(part.to_string());
        }
    }
    assert!(!keys.is_empty(), "{line}");
    keys
}

fn config_error(dir: &Path, text: &str) -> String {
    let p = dir.join("config.toml");
    std::fs::write(&p, text).unwrap();
    Config::load(&p)
        .err()
        .unwrap_or_else(|| panic!("accepted: {text}"))
        .to_string()
}

fn policy_error(dir: &Path, text: &str) -> String {
    let p = dir.join("policy.toml");
    std::fs::write(&p, text).unwrap();
    PolicyFile::load(&p)
        .err()
        .unwrap_or_else(|| panic!("accepted: {text}"))
        .to_string()
}

#[test]
fn config_page_documents_every_key_and_no_other() {
    let dir = tempfile::tempdir().unwrap();
    let docs = documented(&page("tls-policyd.toml.5"));
    let sections = expected_keys(&config_error(dir.path(), "zz_unknown = 1\n"));
    let mut accepted = BTreeMap::new();
    for s in &sections {
        let keys = expected_keys(&config_error(
            dir.path(),
            &format!("[{s}]\nzz_unknown = 1\n"),
        ));
        accepted.insert(s.clone(), keys);
    }
    assert_eq!(
        docs, accepted,
        "tls-policyd.toml(5) (left) and the keys the daemon accepts (right) differ"
    );
}

#[test]
fn policy_page_documents_every_key_and_no_other() {
    let dir = tempfile::tempdir().unwrap();
    let docs = documented(&page("tls-policyd-policy.5"));
    let top = expected_keys(&policy_error(dir.path(), "zz_unknown = 1\n"));
    let mut accepted = BTreeMap::new();
    let mut plain = BTreeSet::new();
    for k in &top {
        let probe = format!("[[{k}]]\nzz_unknown = 1\n");
        let e = policy_error(dir.path(), &probe);
        if e.contains("zz_unknown") && e.contains("expected") {
            accepted.insert(k.clone(), expected_keys(&e));
        } else {
            // Not an array of tables: a plain top-level key.
            plain.insert(k.clone());
        }
    }
    accepted.insert(String::new(), plain);
    assert_eq!(
        docs, accepted,
        "tls-policyd-policy(5) (left) and the keys the policy file accepts (right) differ"
    );
}

fn help(args: &[&str]) -> String {
    let out = run_with_timeout(Command::new(env!("CARGO_BIN_EXE_tls-policyd")).args(args));
    assert!(out.status.success(), "{args:?}");
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn command_page_documents_every_command_and_option() {
    // `\-` is a hyphen in roff.
    let text = page("tls-policyd.8").replace("\\-", "-");
    let top = help(&["--help"]);
    let commands: Vec<String> = top
        .lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| !l.trim().is_empty())
        .filter_map(|l| l.split_whitespace().next())
        .filter(|c| *c != "help")
        .map(str::to_string)
        .collect();
    assert!(commands.len() >= 7, "{top}");
    for c in &commands {
        let heading = format!(".SS \"tls-policyd {c}");
        assert!(text.contains(&heading), "tls-policyd(8) has no {heading}");
        assert!(
            text.contains(&format!(".B tls-policyd {c}\n")),
            "tls-policyd(8) SYNOPSIS lacks {c}"
        );
        for line in help(&[c, "--help"]).lines() {
            for word in line.split([' ', ',', '[', ']', '<', '>']) {
                if let Some(opt) = word.strip_prefix("--")
                    && !opt.is_empty()
                    && opt != "help"
                {
                    assert!(
                        text.contains(&format!("--{opt}")),
                        "tls-policyd(8) does not document {c} --{opt}"
                    );
                }
            }
        }
    }
}
