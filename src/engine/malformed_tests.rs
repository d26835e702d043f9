use std::path::Path;

use super::*;
use crate::engine::decision::Level;

const RULES: &str = r#"
default = "opportunistic"

[[rule]]
domains = ["bank.example", ".bank.example"]
tls = "forced"
reason = "PCI partner"

[[rule]]
domains = [".example"]
tls = "may"

[[rule]]
domains = ["[relay.example]"]
tls = "verify"
"#;

fn policy() -> PolicyFile {
    PolicyFile::parse(RULES, Path::new("policy.toml")).unwrap_or_else(|e| panic!("{e}"))
}

/// The decision for a key that must not parse.
fn bad(p: &PolicyFile, key: &str) -> Decision {
    match Destination::parse(key) {
        Ok(d) => panic!("{key:?} parsed as {d}"),
        Err(e) => decide(p, key, &e),
    }
}

/// A key that must parse and match rule `rule`.
fn good(p: &PolicyFile, key: &str, rule: u32) {
    let d = Destination::parse(key).unwrap_or_else(|e| panic!("{key:?}: {e}"));
    let hit = p
        .lookup(&d)
        .unwrap_or_else(|| panic!("{key:?} matches nothing"));
    assert_eq!(hit.rule + 1, rule, "{key:?}");
}

/// `bad` gives rule 1's answer (forced), not temporary.
fn bank(p: &PolicyFile, key: &str) {
    let d = bad(p, key);
    assert_eq!(
        (d.source, d.rule, d.level, d.temporary),
        (SourceKind::Static, Some(1), Level::Encrypt, false),
        "{key:?}: {}",
        d.reason
    );
    assert!(held(None, &d));
    assert!(
        d.reason.starts_with("key is not a destination ("),
        "{}",
        d.reason
    );
    assert!(d.reason.ends_with("PCI partner"), "{}", d.reason);
}

#[test]
fn port_boundary() {
    let p = policy();
    good(&p, "bank.example:65535", 1);
    good(&p, "[relay.example]:65535", 3);
    bank(&p, "bank.example:65536");
    bank(&p, "bank.example:0");
    bank(&p, "bank.example:");
    bank(&p, "bank.example:99999999999");
    bank(&p, "[bank.example]:65536");
    bank(&p, "[bank.example]:-1");
    let relay = bad(&p, "[relay.example]:65536");
    assert_eq!((relay.rule, relay.level), (Some(3), Level::Verify));
}

#[test]
fn label_boundary() {
    let p = policy();
    let l63 = "a".repeat(63);
    let l64 = "a".repeat(64);
    good(&p, &format!("{l63}.bank.example"), 1);
    bank(&p, &format!("{l64}.bank.example"));
    bank(&p, &format!("x.{l64}.bank.example"));
    bank(&p, &format!("[{l64}.bank.example]"));
}

#[test]
fn name_length_boundary() {
    let p = policy();
    // 3 labels of 62 + dots = 189; + ".bank.example" (13) = 202; pad to
    // exactly 253 and 254 with one more label.
    let l62 = "b".repeat(62);
    let base = format!("{l62}.{l62}.{l62}.bank.example");
    let room = 253 - base.len() - 1;
    let n253 = format!("{}.{base}", "c".repeat(room));
    let n254 = format!("{}.{base}", "c".repeat(room + 1));
    assert_eq!((n253.len(), n254.len()), (253, 254));
    good(&p, &n253, 1);
    bank(&p, &n254);
    // The trailing dot is not counted.
    good(&p, &format!("{n253}."), 1);
}

#[test]
fn control_characters() {
    let p = policy();
    bank(&p, "bank.example\0");
    bank(&p, "bank.example\r\n");
    bank(&p, "bank.example\n");
    bank(&p, "\rbank.example");
    // Read once with the control character taken out.
    bank(&p, "bank.exa\0mple");
    bank(&p, "bank.exa\r\nmple");
    bank(&p, "Bank.Example\u{7f}");
}

#[test]
fn brackets_and_garbage() {
    let p = policy();
    bank(&p, "[bank.example");
    bank(&p, "[bank.example]x");
    bank(&p, "[bank.example]]");
    bank(&p, "bank.example garbage");
    bank(&p, "<bank.example>");
    bank(&p, "bank..example");
    bank(&p, "mx1.bank.example/25");
    bank(&p, ".bank.example:25");
    bank(&p, "bank.example\u{2028}");
}

#[test]
fn parent_of_a_bad_name_is_found() {
    let p = policy();
    bank(&p, "bad!name.bank.example");
    bank(&p, "under_score..bank.example");
    // Labels UTS #46 refuses (U+02DA maps to a space and a combining
    // mark), with and without control characters around them: the
    // labels after them still name the rule (a fuzzing finding).
    bank(&p, "\u{2da}.bank.example");
    bank(&p, "\u{79a}\u{2da}.Bank.Example.");
    bank(&p, "\0\0\u{79a}\u{2da}.bank.example.");
    bank(&p, "x.\u{2da}.bank.example");
    bank(&p, "[\u{2da}.bank.example]:25");
    // A label mapped to nothing (a soft hyphen alone) leaves no empty
    // label behind.
    bank(&p, "\u{ad}.\u{2da}.bank.example");
}

/// A separator inside brackets leaves a piece that ends at `]` (a
/// fuzzing finding).
#[test]
fn pieces_of_a_bracketed_key() {
    let p = policy();
    bank(&p, "[m'.bank.example]:87");
    bank(&p, "[m'.bank.example]");
    bank(&p, "[m bank.example]:25");
    bank(&p, "x\"bank.example]");
    bank(&p, "[<bank.example>]");
}

#[test]
fn no_rule_meant_gets_the_default() {
    let p = policy();
    for key in [
        "nothing..org",
        "[x",
        "\0",
        "x:99999",
        "[ipv6:2001:db8::1",
        "[192.0.2.1]x",
    ] {
        let d = bad(&p, key);
        assert_eq!(d.source, SourceKind::Default, "{key:?}");
        assert!(!held(None, &d));
        assert!(
            d.reason.contains("no rule's domain could be meant"),
            "{}",
            d.reason
        );
    }
}

#[test]
fn different_answers_are_held_at_the_strongest() {
    let p = policy();
    // rule 1 (forced) and rule 2 (.example, may).
    let d = bad(&p, "bank.example\0other.example");
    assert!(d.temporary);
    assert_eq!((d.level, d.rule), (Level::Encrypt, Some(1)));
    assert!(d.reason.contains("different answers"), "{}", d.reason);
    assert!(held(None, &d));
    // The same rule twice is one answer.
    let d = bad(&p, "bank.example\0mx.bank.example");
    assert!(!d.temporary);
}

#[test]
fn readings_are_bounded() {
    // Every piece is read (and the key without its NULs): a ruled
    // domain after many other pieces is found.
    let many = (0..50).map(|i| format!("d{i}.example")).collect::<Vec<_>>();
    let key = many.join("\0");
    assert_eq!(plausible_names(&key).len(), 51);
    let p = policy();
    bank(
        &p,
        &format!("{} .bank.example", "a b c d e f g h i j".repeat(20)),
    );
    // One-character pieces up to the scan limit: one reading each, the
    // joined key none (it has no control character).
    let tiny: String = (0..MAX_KEY_SCAN / 2)
        .map(|i| format!("{} ", char::from(b'a' + (i % 26) as u8)))
        .collect();
    assert_eq!(plausible_names(&tiny).len(), 26);
    let distinct: String = (0..MAX_KEY_SCAN)
        .map(|i| format!("x{i}\0"))
        .collect::<String>();
    assert!(plausible_names(&distinct).len() <= MAX_READINGS);
    let long = "a.".repeat(MAX_KEY_SCAN);
    let r = plausible_names(&long);
    assert!(r.len() <= 1);
    assert!(r[0].name.len() < MAX_KEY_SCAN);
    // Multi-byte characters at the cut are not split.
    let wide = "ü".repeat(MAX_KEY_SCAN);
    let _ = plausible_names(&wide);
}

#[test]
fn a_parsed_key_is_never_held() {
    let p = policy();
    let dest = Destination::parse("bank.example").unwrap();
    let d = p.decision(p.lookup(&dest).unwrap());
    assert!(!held(Some(&dest), &d));
}
