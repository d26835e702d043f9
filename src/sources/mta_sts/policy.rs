//! The MTA-STS policy file (RFC 8461 section 3.2) and what Postfix is told
//! for it.
//!
//! ```text
//! version: STSv1
//! mode: enforce
//! mx: mail.example.com
//! mx: *.example.net
//! max_age: 604800
//! ```
//!
//! The body is read exactly by the grammar of RFC 8461 section 3.2:
//!
//! ```text
//! sts-policy-record  = sts-policy-field *WSP
//!                      *(sts-policy-term sts-policy-field *WSP)
//!                      [sts-policy-term]
//! sts-policy-term    = LF / CRLF
//! field              = name ":" *WSP value
//! name               = (ALPHA / DIGIT) *31(ALPHA / DIGIT / "_" / "-" / ".")
//! value              = vchar [*(%x20 / vchar) vchar]   ; vchar: %x21-7E / UTF-8
//! version            = %s"version" ":" *WSP %s"STSv1"
//! mode               = %s"mode" ":" *WSP (%s"testing" / %s"enforce" / %s"none")
//! max_age            = %s"max_age" ":" *WSP 1*10(DIGIT)
//! mx                 = %s"mx" ":" *WSP ["*."] Domain
//! ```
//!
//! Anything else makes the whole policy invalid: an empty line (but one
//! final line end), a line that is not `name: value`, white space before
//! the `:` or at the start of a line, a control character (a lone CR, a
//! tab inside a value), a name over 32 characters, `version`, `mode` or
//! `max_age` given twice or with another value (their names and values
//! are case-sensitive). Unknown fields that follow the grammar are
//! ignored. `max_age` above one year (31557600) is capped to it. `mx`
//! values that cannot match a host (IP literals, a `*` elsewhere than as
//! the whole leftmost label) are reported and skipped; a policy without
//! `version`, `mode` or `max_age`, or (unless `mode: none`) without a
//! usable `mx` pattern, is rejected with the reason.

use std::fmt;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::engine::key::normalize_domain;

/// Largest policy body accepted (RFC 8461 section 3.3 suggests 64 KiB).
pub const MAX_POLICY_LEN: usize = 64 * 1024;
/// `mx` lines accepted per policy; a policy with more is rejected.
pub const MAX_MX_PATTERNS: usize = 64;
/// Longest `max_age` value (RFC 8461 erratum 7282: up to ten digits).
pub const MAX_AGE_DIGITS: usize = 10;
/// `max_age` values above this are capped to it (RFC 8461: one year).
pub const MAX_AGE_LIMIT: u64 = 31_557_600;

/// The policy mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Enforce,
    Testing,
    None,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Enforce => "enforce",
            Mode::Testing => "testing",
            Mode::None => "none",
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A valid policy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StsPolicy {
    pub mode: Mode,
    /// Seconds, capped at [`MAX_AGE_LIMIT`].
    pub max_age: u64,
    /// Usable `mx` patterns, normalised (lower case, A-labels, no trailing
    /// dot), duplicates removed: `mail.example.com`, `*.example.net`.
    pub mx: Vec<String>,
    /// `mx` values that can never match a host name, with the reason
    /// (IP literals, malformed patterns). Reported, otherwise ignored.
    #[serde(default)]
    pub unusable_mx: Vec<(String, String)>,
    /// The `key: value` lines as published (for TLSRPT `policy_string`).
    #[serde(default)]
    pub lines: Vec<String>,
}

/// Why a policy body was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct StsPolicyError(pub String);

fn err(s: impl Into<String>) -> StsPolicyError {
    StsPolicyError(s.into())
}

/// Parse a policy body.
pub fn parse(body: &[u8]) -> Result<StsPolicy, StsPolicyError> {
    if body.len() > MAX_POLICY_LEN {
        return Err(err(format!(
            "the policy is {} bytes, more than {MAX_POLICY_LEN}",
            body.len()
        )));
    }
    let text = std::str::from_utf8(body).map_err(|e| err(format!("not UTF-8 text: {e}")))?;
    let mut version = None;
    let mut mode = None;
    let mut max_age = None;
    let mut mx_lines = 0usize;
    let mut mx: Vec<String> = Vec::new();
    let mut unusable_mx = Vec::new();
    let mut lines = Vec::new();
    let mut raw_lines: Vec<&str> = text.split('\n').collect();
    if raw_lines.len() > 1 && raw_lines.last() == Some(&"") {
        // The one optional final line end.
        raw_lines.pop();
    }
    for (number, raw) in raw_lines.into_iter().enumerate() {
        let number = number + 1;
        let line = raw.strip_suffix('\r').unwrap_or(raw);
        let (key, value) = field(line).map_err(|why| err(format!("line {number}: {why}")))?;
        lines.push(format!("{key}: {value}"));
        let once = |seen: &Option<&str>| {
            if seen.is_some() {
                Err(err(format!("line {number}: a second {key} field")))
            } else {
                Ok(())
            }
        };
        match key {
            "version" => {
                once(&version)?;
                version = Some(value);
            }
            "mode" => {
                once(&mode)?;
                mode = Some(value);
            }
            "max_age" => {
                once(&max_age)?;
                max_age = Some(value);
            }
            "mx" => {
                mx_lines += 1;
                if mx_lines > MAX_MX_PATTERNS {
                    return Err(err(format!("more than {MAX_MX_PATTERNS} mx lines")));
                }
                match mx_pattern(value) {
                    Ok(p) => {
                        if !mx.contains(&p) {
                            mx.push(p);
                        }
                    }
                    Err(why) => unusable_mx.push((value.to_string(), why)),
                }
            }
            _ => {}
        }
    }
    match version {
        Some("STSv1") => {}
        Some(v) => return Err(err(format!("version {v:?} is not STSv1"))),
        None => return Err(err("no version field")),
    }
    let mode = match mode {
        Some("enforce") => Mode::Enforce,
        Some("testing") => Mode::Testing,
        Some("none") => Mode::None,
        Some(m) => {
            return Err(err(format!("mode {m:?} is not enforce, testing or none")));
        }
        None => return Err(err("no mode field")),
    };
    let max_age = match max_age {
        None => return Err(err("no max_age field")),
        Some(a)
            if a.is_empty()
                || a.len() > MAX_AGE_DIGITS
                || !a.bytes().all(|b| b.is_ascii_digit()) =>
        {
            return Err(err(format!(
                "max_age {a:?} is not a number of 1 to {MAX_AGE_DIGITS} digits"
            )));
        }
        Some(a) => a
            .parse::<u64>()
            .map_or(MAX_AGE_LIMIT, |n| n.min(MAX_AGE_LIMIT)),
    };
    if mode != Mode::None && mx.is_empty() {
        return Err(err(if unusable_mx.is_empty() {
            "no mx field".to_string()
        } else {
            format!(
                "no usable mx pattern ({})",
                unusable_mx
                    .iter()
                    .map(|(v, why)| format!("{v:?}: {why}"))
                    .collect::<Vec<_>>()
                    .join("; ")
            )
        }));
    }
    Ok(StsPolicy {
        mode,
        max_age,
        mx,
        unusable_mx,
        lines,
    })
}

/// Longest field name (RFC 8461: 1 to 32 characters).
pub const MAX_FIELD_NAME_LEN: usize = 32;

/// One line as `name ":" *WSP value *WSP`: the name and the value
/// without the white space around it, or why the line is not a field.
fn field(line: &str) -> Result<(&str, &str), String> {
    if line.is_empty() {
        return Err("an empty line".into());
    }
    let Some((name, rest)) = line.split_once(':') else {
        return Err(format!("{:?} is not name: value", head(line)));
    };
    let name_ok = (1..=MAX_FIELD_NAME_LEN).contains(&name.len())
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
    if !name_ok {
        return Err(format!(
            "{:?} is not a field name (a letter or digit, then up to 31 letters, digits, '_', '-', '.')",
            head(name)
        ));
    }
    let value = rest.trim_matches([' ', '\t']);
    if value.is_empty() {
        return Err(format!("the {name} field has no value"));
    }
    if let Some(c) = value.chars().find(|c| c.is_control()) {
        return Err(format!(
            "the {name} field's value holds the control character {c:?}"
        ));
    }
    Ok((name, value))
}

/// The start of a text, for error messages.
fn head(s: &str) -> String {
    s.chars().take(40).collect()
}

/// Normalise one `mx` value: `mail.example.com` or `*.example.net`.
fn mx_pattern(value: &str) -> Result<String, String> {
    let (wild, name) = match value.strip_prefix("*.") {
        Some(rest) => (true, rest),
        None => (false, value),
    };
    if name.is_empty() {
        return Err("empty pattern".into());
    }
    let bare = name.trim_start_matches('[').trim_end_matches(']');
    if bare.parse::<IpAddr>().is_ok() {
        return Err("an IP address is not a host name pattern".into());
    }
    if name.contains('*') {
        return Err("a wildcard is only allowed as the whole leftmost label (*.)".into());
    }
    let n = normalize_domain(name).map_err(|e| format!("not a host name: {e}"))?;
    if n.split('.').all(|l| l.bytes().all(|b| b.is_ascii_digit())) {
        return Err("an IP address is not a host name pattern".into());
    }
    Ok(if wild { format!("*.{n}") } else { n })
}

/// The Postfix `match=` entry for a pattern: `*.example.net` becomes
/// `.example.net` (Postfix matches any depth below it; MTA-STS only one
/// label: Postfix 3.10's `mx_host_pattern` attributes are exact).
pub fn postfix_match(pattern: &str) -> &str {
    pattern.strip_prefix('*').unwrap_or(pattern)
}

/// What the Postfix answer includes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AnswerStyle {
    /// `servername=hostname` (Postfix 3.4 and later).
    pub servername: bool,
    /// TLSRPT attributes (Postfix 3.10 and later).
    pub tlsrpt: bool,
}

/// Longest total of `policy_string` attributes in one answer; lines past
/// it are left out of the TLSRPT attributes (the policy still applies).
pub const MAX_TLSRPT_POLICY_STRINGS: usize = 8 * 1024;

/// The Postfix policy text for an enforced policy:
/// `secure match=mail.example.com:.example.net servername=hostname`, plus
/// the TLSRPT attributes when asked for.
pub fn postfix_secure(domain: &str, policy: &StsPolicy, style: AnswerStyle) -> String {
    let mut matches: Vec<&str> = Vec::with_capacity(policy.mx.len());
    for m in policy.mx.iter().map(|p| postfix_match(p)) {
        if !matches.contains(&m) {
            matches.push(m);
        }
    }
    let mut s = format!("secure match={}", matches.join(":"));
    if style.servername {
        s.push_str(" servername=hostname");
    }
    if style.tlsrpt {
        s.push_str(&format!(" policy_type=sts policy_domain={domain}"));
        for p in &policy.mx {
            s.push_str(" mx_host_pattern=");
            s.push_str(p);
        }
        let mut budget = MAX_TLSRPT_POLICY_STRINGS;
        for line in &policy.lines {
            // `{ name = value }` carries spaces; braces and control
            // characters cannot be carried at all.
            if line.contains(['{', '}']) || line.chars().any(char::is_control) {
                continue;
            }
            let attr = format!(" {{ policy_string = {line} }}");
            if attr.len() > budget {
                break;
            }
            budget -= attr.len();
            s.push_str(&attr);
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(text: &str) -> StsPolicy {
        parse(text.as_bytes()).unwrap_or_else(|e| panic!("{text:?}: {e}"))
    }

    fn bad(text: &str) -> String {
        match parse(text.as_bytes()) {
            Ok(p) => panic!("{text:?} parsed: {p:?}"),
            Err(e) => e.0,
        }
    }

    #[test]
    fn the_rfc_example() {
        let p = ok(
            "version: STSv1\nmode: enforce\nmx: mail.example.com\nmx: *.example.net\nmx: backupmx.example.com\nmax_age: 604800\n",
        );
        assert_eq!(p.mode, Mode::Enforce);
        assert_eq!(p.max_age, 604800);
        assert_eq!(
            p.mx,
            ["mail.example.com", "*.example.net", "backupmx.example.com"]
        );
        assert!(p.unusable_mx.is_empty());
        assert_eq!(p.lines.len(), 6);
    }

    #[test]
    fn real_world_shapes() {
        // CRLF, trailing spaces and tabs, no final newline.
        let p = ok("version: STSv1\r\nmode: testing \r\nmx: Mx1.Example.COM.\t\r\nmax_age:86400");
        assert_eq!(p.mode, Mode::Testing);
        assert_eq!(p.mx, ["mx1.example.com"]);
        assert_eq!(p.max_age, 86400);
        // Google's shape: several mx, a wildcard.
        let p = ok(
            "version: STSv1\nmode: enforce\nmx: gmail-smtp-in.l.google.com\nmx: *.gmail-smtp-in.l.google.com\nmax_age: 86400\n",
        );
        assert_eq!(p.mx.len(), 2);
        // Unknown fields that follow the grammar; a repeated mx.
        let p = ok(
            "version: STSv1\nmode: enforce\nextension_key: what ever\nx.1-y: \u{e9}t\u{e9}\nmx: mail.example.com\nmx: mail.example.com\nmax_age: 1209600\n",
        );
        assert_eq!(p.mx, ["mail.example.com"], "duplicates removed");
        assert_eq!(p.lines.len(), 7);
        // Internationalised names become A-labels.
        assert_eq!(
            ok("version: STSv1\nmode: enforce\nmx: mx.bücher.example\nmax_age: 1\n").mx,
            ["mx.xn--bcher-kva.example"]
        );
        // mode none needs no mx.
        let p = ok("version: STSv1\nmode: none\nmax_age: 86400\n");
        assert_eq!((p.mode, p.mx.len()), (Mode::None, 0));
    }

    #[test]
    fn rejected_with_a_reason() {
        for (text, why) in [
            ("mode: enforce\nmx: a.example\nmax_age: 1\n", "no version"),
            (
                "version: STSv2\nmode: enforce\nmx: a.example\nmax_age: 1\n",
                "is not STSv1",
            ),
            ("version: STSv1\nmx: a.example\nmax_age: 1\n", "no mode"),
            (
                "version: STSv1\nmode: strict\nmx: a.example\nmax_age: 1\n",
                "not enforce, testing or none",
            ),
            (
                "version: STSv1\nmode: enforce\nmx: a.example\n",
                "no max_age",
            ),
            (
                "version: STSv1\nmode: enforce\nmx: a.example\nmax_age: -1\n",
                "max_age \"-1\"",
            ),
            (
                "version: STSv1\nmode: enforce\nmx: a.example\nmax_age: 1 day\n",
                "max_age",
            ),
            (
                "version: STSv1\nmode: enforce\nmx: a.example\nmax_age:\n",
                "max_age",
            ),
            ("version: STSv1\nmode: enforce\nmax_age: 1\n", "no mx field"),
            (
                "version: STSv1\nmode: testing\nmx: 192.0.2.1\nmx: [2001:db8::1]\nmax_age: 1\n",
                "no usable mx pattern",
            ),
            (
                "version: STSv1\nmode: enforce\nmx: *.*.example\nmx: a..example\nmax_age: 1\n",
                "no usable mx pattern",
            ),
            ("<html><body>Not found</body></html>", "is not name: value"),
            ("", "an empty line"),
        ] {
            let e = bad(text);
            assert!(e.contains(why), "{text:?}: {e}");
        }
        assert!(
            parse(b"version: STSv1\nmode: enforce\nmx: \xff\nmax_age: 1\n")
                .unwrap_err()
                .0
                .contains("UTF-8")
        );
    }

    #[test]
    fn unusable_patterns_are_reported_and_skipped() {
        let p = ok(
            "version: STSv1\nmode: enforce\nmx: 192.0.2.25\nmx: mail.example\nmx: m*.example\nmx: *.\nmax_age: 1\n",
        );
        assert_eq!(p.mx, ["mail.example"]);
        let bad: Vec<&str> = p.unusable_mx.iter().map(|(v, _)| v.as_str()).collect();
        assert_eq!(bad, ["192.0.2.25", "m*.example", "*."]);
        assert!(p.unusable_mx[0].1.contains("IP address"));
    }

    #[test]
    fn max_age_boundaries() {
        let age = |v: &str| ok(&format!("version: STSv1\nmode: none\nmax_age: {v}\n")).max_age;
        assert_eq!(age("0"), 0);
        assert_eq!(age("31557600"), MAX_AGE_LIMIT);
        assert_eq!(age("31557601"), MAX_AGE_LIMIT);
        assert_eq!(age("9999999999"), MAX_AGE_LIMIT);
        assert!(
            bad("version: STSv1\nmode: none\nmax_age: 10000000000\n").contains("1 to 10 digits")
        );
    }

    #[test]
    fn size_and_mx_count_boundaries() {
        let head = "version: STSv1\nmode: enforce\nmx: a.example\nmax_age: 1\n";
        let pad = |total: usize| format!("{head}x: {}", "#".repeat(total - head.len() - 3));
        assert!(parse(pad(MAX_POLICY_LEN).as_bytes()).is_ok());
        assert!(bad(&pad(MAX_POLICY_LEN + 1)).contains("more than 65536"));

        let mx = |n: usize| {
            let mut s = String::from("version: STSv1\nmode: enforce\nmax_age: 1\n");
            for i in 0..n {
                s.push_str(&format!("mx: mx{i}.example\n"));
            }
            s
        };
        assert_eq!(ok(&mx(MAX_MX_PATTERNS)).mx.len(), MAX_MX_PATTERNS);
        assert!(bad(&mx(MAX_MX_PATTERNS + 1)).contains("more than 64 mx lines"));
    }

    #[test]
    fn postfix_answers() {
        let p = ok(
            "version: STSv1\nmode: enforce\nmx: mail.example.com\nmx: *.example.net\nmx: .example.net\nmax_age: 604800\n",
        );
        assert_eq!(p.unusable_mx.len(), 1, "a leading dot is not a pattern");
        let plain = AnswerStyle {
            servername: true,
            tlsrpt: false,
        };
        assert_eq!(
            postfix_secure("example.com", &p, plain),
            "secure match=mail.example.com:.example.net servername=hostname"
        );
        let old = AnswerStyle {
            servername: false,
            tlsrpt: false,
        };
        assert_eq!(
            postfix_secure("example.com", &p, old),
            "secure match=mail.example.com:.example.net"
        );
        let rpt = AnswerStyle {
            servername: true,
            tlsrpt: true,
        };
        assert_eq!(
            postfix_secure("example.com", &p, rpt),
            "secure match=mail.example.com:.example.net servername=hostname \
             policy_type=sts policy_domain=example.com \
             mx_host_pattern=mail.example.com mx_host_pattern=*.example.net \
             { policy_string = version: STSv1 } { policy_string = mode: enforce } \
             { policy_string = mx: mail.example.com } { policy_string = mx: *.example.net } \
             { policy_string = mx: .example.net } { policy_string = max_age: 604800 }"
        );
    }

    #[test]
    fn tlsrpt_policy_strings_are_bounded_and_safe() {
        let mut text = String::from(
            "version: STSv1\nmode: enforce\nmx: a.example\nmax_age: 1\nx-brace: {oops}\n",
        );
        for i in 0..2000 {
            text.push_str(&format!("ext{i}: value\n"));
        }
        let p = ok(&text);
        let s = postfix_secure(
            "a.example",
            &p,
            AnswerStyle {
                servername: true,
                tlsrpt: true,
            },
        );
        assert!(!s.contains("oops"));
        let strings: usize = s.matches("{ policy_string = ").count();
        assert!(strings > 4 && strings < 2000, "{strings}");
        let attrs = &s[s.find(" {").unwrap()..];
        assert!(attrs.len() <= MAX_TLSRPT_POLICY_STRINGS, "{}", attrs.len());
    }

    const HEAD: &str = "version: STSv1\nmode: enforce\nmx: a.example\nmax_age: 1";

    #[test]
    fn grammar_line_ends() {
        assert_eq!(ok(HEAD).max_age, 1, "no final line end");
        ok(&format!("{HEAD}\n"));
        ok(&format!("{HEAD}\r\n"));
        ok(&HEAD.replace('\n', "\r\n"));
        ok(&format!("{}\n", HEAD.replace('\n', "\r\n")));
        for (text, why) in [
            (format!("{HEAD}\n\n"), "an empty line"),
            (format!("{HEAD}\r\n\r\n"), "an empty line"),
            (format!("\n{HEAD}"), "line 1: an empty line"),
            (HEAD.replacen('\n', "\n\n", 1), "line 2: an empty line"),
            (HEAD.replacen('\n', "\r", 1), "control character"),
            (format!("{HEAD}\r\r\n"), "control character"),
        ] {
            let e = bad(&text);
            assert!(e.contains(why), "{text:?}: {e}");
        }
    }

    #[test]
    fn grammar_field_names_and_values() {
        // White space after the colon and after the value only.
        ok("version:STSv1\nmode:\t enforce \t\nmx:a.example\nmax_age:1");
        let n32 = format!("a{}", "b".repeat(31));
        ok(&format!("{HEAD}\n{n32}: v"));
        for (extra, why) in [
            (format!("{n32}c: v"), "not a field name"),
            ("_x: v".to_string(), "not a field name"),
            ("-x: v".to_string(), "not a field name"),
            ("x y: v".to_string(), "not a field name"),
            ("x : v".to_string(), "not a field name"),
            (" x: v".to_string(), "not a field name"),
            (": v".to_string(), "not a field name"),
            ("# comment".to_string(), "is not name: value"),
            ("junk".to_string(), "is not name: value"),
            ("x:".to_string(), "has no value"),
            ("x: \t".to_string(), "has no value"),
            ("x: a\tb".to_string(), "control character"),
            ("x: a\u{7f}".to_string(), "control character"),
            ("x: a\u{0}b".to_string(), "control character"),
        ] {
            let e = bad(&format!("{HEAD}\n{extra}"));
            assert!(e.contains(why), "{extra:?}: {e}");
        }
        // A space inside a value is fine; a colon too.
        ok(&format!("{HEAD}\nx: a b: c"));
    }

    #[test]
    fn grammar_known_fields_are_case_sensitive_and_once() {
        for (text, why) in [
            (
                "version: stsv1\nmode: enforce\nmx: a.example\nmax_age: 1",
                "is not STSv1",
            ),
            (
                "version: STSv1\nmode: Enforce\nmx: a.example\nmax_age: 1",
                "not enforce, testing or none",
            ),
            (
                "version: STSv1\nmode: ENFORCE\nmx: a.example\nmax_age: 1",
                "not enforce, testing or none",
            ),
            (
                "Version: STSv1\nmode: enforce\nmx: a.example\nmax_age: 1",
                "no version field",
            ),
            (
                "version: STSv1\nMode: enforce\nmx: a.example\nmax_age: 1",
                "no mode field",
            ),
            (
                "version: STSv1\nmode: enforce\nmx: a.example\nMax_Age: 1",
                "no max_age field",
            ),
            (
                "version: STSv1\nversion: STSv1\nmode: enforce\nmx: a.example\nmax_age: 1",
                "line 2: a second version field",
            ),
            (
                "version: STSv1\nmode: testing\nmode: enforce\nmx: a.example\nmax_age: 1",
                "a second mode field",
            ),
            (
                "version: STSv1\nmode: enforce\nmx: a.example\nmax_age: 1\nmax_age: 1",
                "a second max_age field",
            ),
            (
                "version: STSv1\nmode: enforce\nmx: a.example\nmax_age: +1",
                "max_age",
            ),
            (
                "version: STSv1\nmode: enforce\nmx: a.example\nmax_age: 1.5",
                "max_age",
            ),
            (
                "version: STSv1\nmode: enforce\nmx: a.example\nmax_age: 0x10",
                "max_age",
            ),
        ] {
            let e = bad(text);
            assert!(e.contains(why), "{text:?}: {e}");
        }
        // Every mode value.
        for m in ["enforce", "testing", "none"] {
            let p = ok(&format!(
                "version: STSv1\nmode: {m}\nmx: a.example\nmax_age: 1"
            ));
            assert_eq!(p.mode.as_str(), m);
        }
        // Ten digits are the most; leading zeros count as digits.
        let age = |v: &str| ok(&format!("version: STSv1\nmode: none\nmax_age: {v}")).max_age;
        assert_eq!(age("0000000001"), 1);
        assert!(bad("version: STSv1\nmode: none\nmax_age: 00000000001").contains("1 to 10 digits"));
    }
}
