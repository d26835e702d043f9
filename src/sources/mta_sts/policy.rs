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
//! Lines end in LF or CRLF; white space around values is ignored; unknown
//! keys are ignored; of a repeated key other than `mx` the first counts.
//! Lines that are not `key: value` (comments, junk) are ignored too, as
//! senders in the field do. A policy without a valid `version`, `mode` or
//! `max_age`, or (unless `mode: none`) without an `mx` pattern that can
//! match a host, is rejected with the reason.

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
    for raw in text.split('\n') {
        let line = raw.strip_suffix('\r').unwrap_or(raw);
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        let key = key.trim_matches([' ', '\t']);
        let value = value.trim_matches([' ', '\t']);
        if key.is_empty() || key.starts_with('#') || key.contains([' ', '\t']) {
            continue;
        }
        lines.push(format!("{key}: {value}"));
        match key {
            "version" if version.is_none() => version = Some(value),
            "mode" if mode.is_none() => mode = Some(value),
            "max_age" if max_age.is_none() => max_age = Some(value),
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
        Some(v) if v.eq_ignore_ascii_case("STSv1") => {}
        Some(v) => return Err(err(format!("version {v:?} is not STSv1"))),
        None => return Err(err("no version field")),
    }
    let mode = match mode {
        Some(m) if m.eq_ignore_ascii_case("enforce") => Mode::Enforce,
        Some(m) if m.eq_ignore_ascii_case("testing") => Mode::Testing,
        Some(m) if m.eq_ignore_ascii_case("none") => Mode::None,
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
        s.push_str(&format!(
            " policy_type=sts policy_domain={domain} policy_ttl={}",
            policy.max_age
        ));
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
        // Comments, blank lines, junk, unknown keys, a BOM-free header.
        let p = ok(
            "# MTA-STS policy\n\nversion: STSv1\nthis line is junk\nmode: enforce\nextension_key: whatever\nmx: mail.example.com\nmx: mail.example.com\nmax_age: 1209600\n\n",
        );
        assert_eq!(p.mx, ["mail.example.com"], "duplicates removed");
        assert!(!p.lines.iter().any(|l| l.contains("junk")));
        // Repeated keys: the first counts.
        let p = ok(
            "version: STSv1\nmode: testing\nmode: enforce\nmax_age: 5\nmax_age: 99\nmx: a.example\n",
        );
        assert_eq!((p.mode, p.max_age), (Mode::Testing, 5));
        // Case of the values of version and mode does not matter.
        assert_eq!(
            ok("version: stsv1\nmode: Enforce\nmx: a.example\nmax_age: 1\n").mode,
            Mode::Enforce
        );
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
            ("<html><body>Not found</body></html>", "no version"),
            ("", "no version"),
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
        let pad = |total: usize| format!("{head}{}", "#".repeat(total - head.len()));
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
             policy_type=sts policy_domain=example.com policy_ttl=604800 \
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
}
