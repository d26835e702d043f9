//! The `_smtp._tls.<domain>` TXT record (RFC 8460 section 3):
//! `v=TLSRPTv1; rua=mailto:tlsrpt@example.com,https://r.example/v1`.
//!
//! ```text
//! tlsrpt-record    = tlsrpt-version 1*(field-delim tlsrpt-field) [field-delim]
//! field-delim      = *WSP ";" *WSP
//! tlsrpt-field     = tlsrpt-rua / tlsrpt-extension
//! tlsrpt-version   = %s"v=TLSRPTv1"
//! tlsrpt-rua       = %s"rua=" tlsrpt-uri *(*WSP "," *WSP tlsrpt-uri)
//! tlsrpt-uri       = URI  ; RFC 3986; "," and "!" percent-encoded
//! tlsrpt-extension = tlsrpt-ext-name "=" tlsrpt-ext-value
//! tlsrpt-ext-name  = (ALPHA / DIGIT) *31(ALPHA / DIGIT / "_" / "-" / ".")
//! tlsrpt-ext-value = 1*(%x21-3A / %x3C / %x3E-7E)
//! ```
//!
//! Records that do not start with `v=TLSRPTv1` are someone else's. If the
//! number left is not one, the domain does not implement TLS-RPT (the
//! RFC's rule), as when the one record does not parse or has no `rua`.
//! URIs other than `mailto:` and `https:` are kept out of the destinations
//! (the RFC defines no others), but do not make the record invalid.

use std::fmt;

/// Longest TXT record looked at; longer ones are invalid.
pub const MAX_RECORD_LEN: usize = 2048;
/// TXT records at one name looked at; more make the answer invalid.
pub const MAX_RECORDS: usize = 64;
/// Report destinations kept from one record.
pub const MAX_RUA: usize = 8;
/// Longest extension field name.
pub const MAX_EXT_NAME_LEN: usize = 32;

/// Where reports go.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ReportUri {
    /// `mailto:` with its address, percent-decoded.
    Mailto(String),
    /// `https:` URI as published.
    Https(String),
}

impl fmt::Display for ReportUri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReportUri::Mailto(a) => write!(f, "mailto:{a}"),
            ReportUri::Https(u) => f.write_str(u),
        }
    }
}

/// A valid TLS-RPT record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsRptRecord {
    /// The destinations tls-policyd can send to, in record order.
    pub rua: Vec<ReportUri>,
    /// The record as published.
    pub text: String,
}

/// Why the TXT records give no TLS-RPT destination.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    #[error("no TXT record starts with v=TLSRPTv1")]
    None,
    #[error("{0} TXT records start with v=TLSRPTv1; exactly one is allowed")]
    Several(usize),
    #[error("{0} TXT records; more than {MAX_RECORDS} are not looked at")]
    TooMany(usize),
    #[error("invalid TLS-RPT record {text:?}: {problem}")]
    Invalid { text: String, problem: String },
}

/// Whether a TXT string is a TLS-RPT record (starts with `v=TLSRPTv1`).
pub fn is_tlsrpt(text: &str) -> bool {
    text.strip_prefix("v=TLSRPTv1")
        .is_some_and(|rest| rest.is_empty() || rest.starts_with([';', ' ', '\t']))
}

/// Pick and parse the TLS-RPT record among the TXT records of
/// `_smtp._tls.<domain>`.
pub fn select(records: &[String]) -> Result<TlsRptRecord, RecordError> {
    if records.len() > MAX_RECORDS {
        return Err(RecordError::TooMany(records.len()));
    }
    let ours: Vec<&String> = records.iter().filter(|r| is_tlsrpt(r)).collect();
    match ours.as_slice() {
        [] => Err(RecordError::None),
        [one] => parse(one),
        more => Err(RecordError::Several(more.len())),
    }
}

fn wsp(c: char) -> bool {
    c == ' ' || c == '\t'
}

/// Parse one record that starts with `v=TLSRPTv1`.
pub fn parse(text: &str) -> Result<TlsRptRecord, RecordError> {
    let invalid = |problem: String| RecordError::Invalid {
        text: text.chars().take(MAX_RECORD_LEN).collect(),
        problem,
    };
    if text.len() > MAX_RECORD_LEN {
        return Err(invalid(format!(
            "{} bytes is longer than {MAX_RECORD_LEN}",
            text.len()
        )));
    }
    let mut fields: Vec<&str> = text.split(';').collect();
    // One trailing separator (with white space around it) is allowed.
    if fields.len() > 1 && fields.last().is_some_and(|l| l.chars().all(wsp)) {
        fields.pop();
    }
    let mut fields = fields.into_iter();
    let version = fields.next().unwrap_or_default();
    if version.trim_end_matches(wsp) != "v=TLSRPTv1" {
        return Err(invalid("the first field must be v=TLSRPTv1".into()));
    }
    let mut rua: Option<Vec<ReportUri>> = None;
    let mut count = 0;
    for raw in fields {
        count += 1;
        let field = raw.trim_matches(wsp);
        if field.is_empty() {
            return Err(invalid("an empty field (two separators in a row)".into()));
        }
        if let Some(list) = field.strip_prefix("rua=") {
            if rua.is_some() {
                return Err(invalid("rua appears twice".into()));
            }
            rua = Some(parse_rua(list).map_err(invalid)?);
        } else {
            check_extension(field).map_err(invalid)?;
        }
    }
    if count == 0 {
        return Err(invalid("no field after v=TLSRPTv1".into()));
    }
    let Some(rua) = rua else {
        return Err(invalid("no rua field".into()));
    };
    if rua.is_empty() {
        return Err(invalid("rua names no mailto: or https: URI".into()));
    }
    Ok(TlsRptRecord {
        rua,
        text: text.to_string(),
    })
}

/// `tlsrpt-uri *(*WSP "," *WSP tlsrpt-uri)`: the usable destinations.
fn parse_rua(list: &str) -> Result<Vec<ReportUri>, String> {
    let mut out = Vec::new();
    for uri in list.split(',') {
        let uri = uri.trim_matches(wsp);
        if uri.is_empty() {
            return Err("an empty URI in rua".into());
        }
        if let Some(u) = parse_uri(uri)? {
            if !out.contains(&u) && out.len() < MAX_RUA {
                out.push(u);
            }
        }
    }
    Ok(out)
}

/// One URI: `Some` when tls-policyd can send there.
fn parse_uri(uri: &str) -> Result<Option<ReportUri>, String> {
    let bad = |why: &str| format!("{uri:?} is not a URI: {why}");
    let Some((scheme, rest)) = uri.split_once(':') else {
        return Err(bad("no scheme"));
    };
    let mut sc = scheme.chars();
    if !sc.next().is_some_and(|c| c.is_ascii_alphabetic())
        || !sc.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
    {
        return Err(bad("bad scheme"));
    }
    check_uri_chars(rest).map_err(|w| bad(&w))?;
    match scheme.to_ascii_lowercase().as_str() {
        "mailto" => {
            let addr = rest.split('?').next().unwrap_or_default();
            let addr = percent_decode(addr).ok_or_else(|| bad("bad percent-encoding"))?;
            match addr.rsplit_once('@') {
                Some((local, domain))
                    if !local.is_empty()
                        && !domain.is_empty()
                        && !addr.contains(|c: char| c.is_ascii_control() || c == ' ') =>
                {
                    Ok(Some(ReportUri::Mailto(addr)))
                }
                _ => Err(bad("mailto: needs one address")),
            }
        }
        "https" => {
            let u: http::Uri = uri.parse().map_err(|_| bad("not a valid https URI"))?;
            if u.host().is_none_or(str::is_empty) {
                return Err(bad("no host"));
            }
            Ok(Some(ReportUri::Https(uri.to_string())))
        }
        _ => Ok(None),
    }
}

/// RFC 3986 characters only, `%` followed by two hex digits, and no `!`
/// (RFC 8460 wants it encoded).
fn check_uri_chars(s: &str) -> Result<(), String> {
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        match c {
            b'%' => {
                if i + 2 >= b.len()
                    || !b[i + 1].is_ascii_hexdigit()
                    || !b[i + 2].is_ascii_hexdigit()
                {
                    return Err("a % not followed by two hex digits".into());
                }
                i += 3;
                continue;
            }
            b'!' => return Err("an unencoded \"!\"".into()),
            c if c.is_ascii_alphanumeric() => {}
            b'-' | b'.' | b'_' | b'~' | b':' | b'/' | b'?' | b'#' | b'[' | b']' | b'@' | b'$'
            | b'&' | b'\'' | b'(' | b')' | b'*' | b'+' | b'=' => {}
            _ => return Err(format!("the character {:?}", c as char)),
        }
        i += 1;
    }
    Ok(())
}

fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// `tlsrpt-ext-name "=" tlsrpt-ext-value`.
fn check_extension(field: &str) -> Result<(), String> {
    let Some((name, value)) = field.split_once('=') else {
        return Err(format!("{field:?} is not name=value"));
    };
    let mut chars = name.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric());
    if !first_ok
        || name.len() > MAX_EXT_NAME_LEN
        || !chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
    {
        return Err(format!(
            "{name:?} is not a field name (a letter or digit, then up to 31 of letters, digits, _ - .)"
        ));
    }
    if value.is_empty()
        || !value
            .bytes()
            .all(|b| matches!(b, 0x21..=0x3A | 0x3C | 0x3E..=0x7E))
    {
        return Err(format!(
            "the value of {name} is empty or holds a character the grammar excludes (=, ;, space, control, non-ASCII)"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(t: &str) -> TlsRptRecord {
        parse(t).unwrap_or_else(|e| panic!("{t:?}: {e}"))
    }

    fn bad(t: &str) -> String {
        match parse(t) {
            Err(RecordError::Invalid { problem, .. }) => problem,
            other => panic!("{t:?}: {other:?}"),
        }
    }

    #[test]
    fn the_rfc_examples() {
        let r = ok("v=TLSRPTv1; rua=mailto:reports@example.com");
        assert_eq!(r.rua, [ReportUri::Mailto("reports@example.com".into())]);
        let r = ok("v=TLSRPTv1; rua=https://reporting.example.com/v1/tlsrpt");
        assert_eq!(
            r.rua,
            [ReportUri::Https(
                "https://reporting.example.com/v1/tlsrpt".into()
            )]
        );
        let r = ok(
            "v=TLSRPTv1; rua=mailto:reports@example.com,https://reporting.example.com/v1/tlsrpt",
        );
        assert_eq!(r.rua.len(), 2);
    }

    #[test]
    fn separators_and_white_space() {
        ok("v=TLSRPTv1;rua=mailto:a@x.example");
        ok("v=TLSRPTv1 ;\trua=mailto:a@x.example");
        ok("v=TLSRPTv1; rua=mailto:a@x.example;");
        ok("v=TLSRPTv1; rua=mailto:a@x.example ; ");
        ok("v=TLSRPTv1; rua=mailto:a@x.example , https://r.example/x");
        assert!(bad("v=TLSRPTv1; rua=mailto:a@x.example;;").contains("empty field"));
        assert!(bad("v=TLSRPTv1;; rua=mailto:a@x.example").contains("empty field"));
        assert!(bad("v=TLSRPTv1").contains("no field"));
        assert!(bad("v=TLSRPTv1;").contains("no field"));
        assert!(bad("v=TLSRPTv1; rua=mailto:a@x.example,").contains("empty URI"));
    }

    #[test]
    fn version_is_exact_and_first() {
        assert_eq!(
            select(&["v=tlsrptv1; rua=mailto:a@x.example".into()]),
            Err(RecordError::None)
        );
        assert_eq!(
            select(&["v=TLSRPTv10; rua=mailto:a@x.example".into()]),
            Err(RecordError::None)
        );
        assert_eq!(
            select(&["rua=mailto:a@x.example; v=TLSRPTv1".into()]),
            Err(RecordError::None)
        );
    }

    #[test]
    fn exactly_one_record() {
        let one = "v=TLSRPTv1; rua=mailto:a@x.example".to_string();
        let other = "v=spf1 -all".to_string();
        assert!(select(&[other.clone(), one.clone()]).is_ok());
        assert_eq!(
            select(&[one.clone(), one.clone()]),
            Err(RecordError::Several(2))
        );
        assert_eq!(select(&[other]), Err(RecordError::None));
        assert_eq!(
            select(&vec![one; MAX_RECORDS + 1]),
            Err(RecordError::TooMany(MAX_RECORDS + 1))
        );
    }

    #[test]
    fn rua_required_once_and_usable() {
        assert!(bad("v=TLSRPTv1; ext=1").contains("no rua"));
        assert!(
            bad("v=TLSRPTv1; rua=mailto:a@x.example; rua=mailto:b@x.example").contains("twice")
        );
        // Only schemes the RFC defines are usable; others are ignored.
        let r = ok("v=TLSRPTv1; rua=ftp://x.example/r,mailto:a@x.example");
        assert_eq!(r.rua, [ReportUri::Mailto("a@x.example".into())]);
        assert!(bad("v=TLSRPTv1; rua=ftp://x.example/r").contains("no mailto: or https:"));
        // Case of the scheme; duplicates once.
        let r = ok("v=TLSRPTv1; rua=MAILTO:a@x.example,mailto:a@x.example");
        assert_eq!(r.rua.len(), 1);
    }

    #[test]
    fn uris() {
        assert!(bad("v=TLSRPTv1; rua=mailto:nobody").contains("one address"));
        assert!(bad("v=TLSRPTv1; rua=mailto:a!b@x.example").contains("\"!\""));
        assert!(bad("v=TLSRPTv1; rua=mailto:a@x.example%2").contains("hex"));
        assert!(bad("v=TLSRPTv1; rua=mailto:a@x.example%zz").contains("hex"));
        assert!(bad("v=TLSRPTv1; rua=noscheme").contains("no scheme"));
        assert!(bad("v=TLSRPTv1; rua=1a:x").contains("bad scheme"));
        let p = bad("v=TLSRPTv1; rua=https:///path");
        assert!(
            p.contains("host") || p.contains("not a valid https URI"),
            "{p}"
        );
        assert!(bad("v=TLSRPTv1; rua=https://r.example/a b").contains("character"));
        // Encoded comma and bang are fine; hfields are dropped.
        let r = ok("v=TLSRPTv1; rua=mailto:a%2Cb%21c@x.example?subject=x");
        assert_eq!(r.rua, [ReportUri::Mailto("a,b!c@x.example".into())]);
        assert!(bad("v=TLSRPTv1; rua=mailto:a%20b@x.example").contains("one address"));
    }

    #[test]
    fn extensions_by_the_grammar() {
        ok("v=TLSRPTv1; rua=mailto:a@x.example; x=1");
        ok("v=TLSRPTv1; rua=mailto:a@x.example; 9a_b-c.d=!\"#$%&'()*+,-./0123456789:<>?@[]^_`{|}~");
        let name32 = format!("a{}", "b".repeat(31));
        ok(&format!("v=TLSRPTv1; rua=mailto:a@x.example; {name32}=v"));
        let name33 = format!("a{}", "b".repeat(32));
        assert!(
            bad(&format!("v=TLSRPTv1; rua=mailto:a@x.example; {name33}=v")).contains("field name")
        );
        for f in ["_a=1", "-a=1", ".a=1", "a b=1", "=1", "a", "a="] {
            let p = bad(&format!("v=TLSRPTv1; rua=mailto:a@x.example; {f}"));
            assert!(!p.is_empty(), "{f}");
        }
        for v in ["a=b", "a b", "\u{7f}", "é", "\u{1}"] {
            let p = bad(&format!("v=TLSRPTv1; rua=mailto:a@x.example; x={v}"));
            assert!(p.contains("value of x"), "{v:?}: {p}");
        }
    }

    #[test]
    fn length_boundary() {
        let head = "v=TLSRPTv1; rua=mailto:a@x.example; x=";
        let fit = format!("{head}{}", "v".repeat(MAX_RECORD_LEN - head.len()));
        assert_eq!(fit.len(), MAX_RECORD_LEN);
        ok(&fit);
        let over = format!("{fit}v");
        assert!(bad(&over).contains("longer than"));
    }
}
