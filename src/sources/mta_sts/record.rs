//! The `_mta-sts.<domain>` TXT record (RFC 8461 section 3.1):
//! `v=STSv1; id=20240101T000000;`.
//!
//! Records that do not start with `v=STSv1` are someone else's and are
//! ignored. Exactly one record must start with it; two or more mean the
//! domain has no usable MTA-STS record (the RFC's rule), as does one that
//! the grammar does not produce ([`parse`]).

/// Longest TXT record looked at; longer ones are invalid.
pub const MAX_RECORD_LEN: usize = 1024;
/// TXT records at one name looked at; more make the answer invalid.
pub const MAX_RECORDS: usize = 64;
/// Longest policy id (RFC 8461: 1 to 32 letters and digits).
pub const MAX_ID_LEN: usize = 32;
/// Longest extension field name (RFC 8461: 1 to 32 characters).
pub const MAX_EXT_NAME_LEN: usize = 32;

/// A valid MTA-STS TXT record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StsRecord {
    pub id: String,
    /// The record as published.
    pub text: String,
}

/// Why the TXT records do not give a usable MTA-STS record.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    /// No record starts with `v=STSv1`.
    #[error("no TXT record starts with v=STSv1")]
    None,
    /// More than one does.
    #[error("{0} TXT records start with v=STSv1; exactly one is allowed")]
    Several(usize),
    /// More TXT records than [`MAX_RECORDS`].
    #[error("{0} TXT records; more than {MAX_RECORDS} are not looked at")]
    TooMany(usize),
    /// The one record does not parse.
    #[error("invalid MTA-STS record {text:?}: {problem}")]
    Invalid { text: String, problem: String },
}

/// Whether a TXT string is meant as an MTA-STS record: `v=STSv1` followed
/// by the end, `;` or white space.
fn is_sts(text: &str) -> bool {
    text.strip_prefix("v=STSv1")
        .is_some_and(|rest| rest.is_empty() || rest.starts_with([';', ' ', '\t']))
}

/// Pick and parse the MTA-STS record among the TXT records of
/// `_mta-sts.<domain>`.
pub fn select(records: &[String]) -> Result<StsRecord, RecordError> {
    if records.len() > MAX_RECORDS {
        return Err(RecordError::TooMany(records.len()));
    }
    let sts: Vec<&String> = records.iter().filter(|r| is_sts(r)).collect();
    match sts.as_slice() {
        [] => Err(RecordError::None),
        [one] => parse(one),
        more => Err(RecordError::Several(more.len())),
    }
}

/// Parse one record that starts with `v=STSv1`, exactly by the grammar
/// of RFC 8461 section 3.1:
///
/// ```text
/// sts-text-record = sts-version 1*(sts-sep sts-field) [sts-sep]
/// sts-sep         = *WSP %x3B *WSP
/// sts-field       = sts-id / sts-extension
/// sts-version     = %s"v=STSv1"
/// sts-id          = %s"id=" 1*32(ALPHA / DIGIT)
/// sts-extension   = sts-ext-name "=" sts-ext-value
/// sts-ext-name    = (ALPHA / DIGIT) *31(ALPHA / DIGIT / "_" / "-" / ".")
/// sts-ext-value   = 1*(%x21-3A / %x3C / %x3E-7E)
/// ```
///
/// Anything the grammar does not produce is invalid: an empty field
/// (`;;`), a second trailing separator, white space after the last field
/// without a `;`, a value with `=`, a space, DEL or a non-ASCII character.
/// The `id` field is the record's id (`id=` with anything but 1 to 32
/// letters and digits is invalid, not an extension); it is required, and
/// the first one counts.
pub fn parse(text: &str) -> Result<StsRecord, RecordError> {
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
    let Some(mut rest) = text.strip_prefix("v=STSv1") else {
        return Err(invalid("the record must start with v=STSv1".into()));
    };
    let mut id = None;
    let mut fields = 0usize;
    loop {
        // sts-sep, or the end of the record.
        let after_wsp = rest.trim_start_matches(WSP);
        if after_wsp.is_empty() {
            if rest.is_empty() && fields > 0 {
                break;
            }
            let what = if fields == 0 {
                "no field after v=STSv1"
            } else {
                "white space after the last field without a ';'"
            };
            return Err(invalid(what.into()));
        }
        let Some(after_sep) = after_wsp.strip_prefix(';') else {
            return Err(invalid(format!(
                "expected ';' before {:?}",
                head(after_wsp)
            )));
        };
        rest = after_sep.trim_start_matches(WSP);
        if rest.is_empty() {
            if fields == 0 {
                return Err(invalid("no field after v=STSv1".into()));
            }
            // The one optional trailing separator.
            break;
        }
        // sts-field: up to the next white space or ';'.
        let end = rest.find([' ', '\t', ';']).unwrap_or(rest.len());
        let field = &rest[..end];
        rest = &rest[end..];
        fields += 1;
        if field.is_empty() {
            return Err(invalid("empty field (two ';' in a row)".into()));
        }
        if let Some(value) = field.strip_prefix("id=") {
            if !is_id(value) {
                return Err(invalid(format!(
                    "id {value:?} is not 1 to {MAX_ID_LEN} letters and digits"
                )));
            }
            if id.is_none() {
                id = Some(value.to_string());
            }
        } else if !is_extension(field) {
            return Err(invalid(format!(
                "field {:?} is not id=... nor a valid extension",
                head(field)
            )));
        }
    }
    match id {
        Some(id) => Ok(StsRecord {
            id,
            text: text.to_string(),
        }),
        None => Err(invalid("no id= field".into())),
    }
}

/// RFC 5234 WSP.
const WSP: [char; 2] = [' ', '\t'];

/// `1*32(ALPHA / DIGIT)`.
fn is_id(value: &str) -> bool {
    (1..=MAX_ID_LEN).contains(&value.len()) && value.bytes().all(|b| b.is_ascii_alphanumeric())
}

/// `sts-ext-name "=" sts-ext-value`.
fn is_extension(field: &str) -> bool {
    let Some((name, value)) = field.split_once('=') else {
        return false;
    };
    let name_ok = (1..=MAX_EXT_NAME_LEN).contains(&name.len())
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
    let value_ok = !value.is_empty()
        && value
            .bytes()
            .all(|b| matches!(b, 0x21..=0x3a | 0x3c | 0x3e..=0x7e));
    name_ok && value_ok
}

/// The start of a text, for error messages.
fn head(s: &str) -> String {
    s.chars().take(40).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recs(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn real_world_shapes() {
        for (text, id) in [
            ("v=STSv1; id=20190429T010101;", "20190429T010101"),
            ("v=STSv1;id=abc", "abc"),
            ("v=STSv1; id=1 ;", "1"),
            ("v=STSv1;\tid=X2;  ", "X2"),
            ("v=STSv1; id=20240101; ext-1=yes;", "20240101"),
            ("v=STSv1; id=a; id=b", "a"),
        ] {
            let r = select(&recs(&["v=spf1 -all", text])).unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!(r.id, id, "{text}");
            assert_eq!(r.text, text);
        }
    }

    #[test]
    fn id_boundaries() {
        let max = "a".repeat(MAX_ID_LEN);
        assert_eq!(parse(&format!("v=STSv1; id={max}")).unwrap().id, max);
        let over = "a".repeat(MAX_ID_LEN + 1);
        assert!(parse(&format!("v=STSv1; id={over}")).is_err());
        for bad in [
            "v=STSv1; id=",
            "v=STSv1; id=ab-cd",
            "v=STSv1; id=ab cd",
            "v=STSv1;",
            "v=STSv1",
            "v=STSv1; idd",
            "v=STSv1; =x; id=a",
            "v=STSv1; e=a=b; id=a",
            "v=STSv1; id=a; -ext=1",
            "v=STSv1;; id=abc;;",
        ] {
            let e = select(&recs(&[bad])).unwrap_err();
            assert!(matches!(e, RecordError::Invalid { .. }), "{bad}: {e:?}");
        }
    }

    #[test]
    fn record_length_boundary() {
        let pad = |n: usize| {
            let head = "v=STSv1; id=a; x=";
            format!("{head}{}", "y".repeat(n - head.len()))
        };
        assert!(parse(&pad(MAX_RECORD_LEN)).is_ok());
        let e = parse(&pad(MAX_RECORD_LEN + 1)).unwrap_err().to_string();
        assert!(e.contains("longer than 1024"), "{e}");
    }

    #[test]
    fn which_records_count() {
        assert_eq!(select(&[]).unwrap_err(), RecordError::None);
        // Version is case-sensitive and must be a whole field.
        assert_eq!(
            select(&recs(&["v=stsv1; id=a", "v=STSv10; id=a", "v=spf1"])).unwrap_err(),
            RecordError::None
        );
        assert_eq!(
            select(&recs(&["v=STSv1; id=a", "v=STSv1; id=b"])).unwrap_err(),
            RecordError::Several(2)
        );
        let many: Vec<String> = (0..=MAX_RECORDS).map(|i| format!("x{i}")).collect();
        assert_eq!(
            select(&many).unwrap_err(),
            RecordError::TooMany(MAX_RECORDS + 1)
        );
        let mut ok: Vec<String> = (0..MAX_RECORDS - 1).map(|i| format!("x{i}")).collect();
        ok.push("v=STSv1; id=z".into());
        assert_eq!(select(&ok).unwrap().id, "z");
    }

    /// `Ok(id)` or the problem.
    fn id(text: &str) -> Result<String, String> {
        parse(text).map(|r| r.id).map_err(|e| e.to_string())
    }

    fn valid(text: &str) {
        assert!(id(text).is_ok(), "{text:?} should be valid: {:?}", id(text));
    }

    fn invalid(text: &str) {
        assert!(id(text).is_err(), "{text:?} should be invalid");
    }

    #[test]
    fn grammar_sts_version_is_case_sensitive_and_first() {
        valid("v=STSv1;id=a");
        for bad in [
            "V=STSv1;id=a",
            "v=stsv1;id=a",
            "v=STSV1;id=a",
            " v=STSv1;id=a",
            "id=a;v=STSv1",
            "v=STSv1",
            "v=STSv1;",
            "v=STSv1 ",
            "v=STSv1 ;",
        ] {
            invalid(bad);
        }
        // `v=STSv1x` is not an MTA-STS record at all.
        assert_eq!(
            select(&recs(&["v=STSv1x;id=a"])).unwrap_err(),
            RecordError::None
        );
    }

    #[test]
    fn grammar_sts_id_length_and_characters() {
        invalid("v=STSv1; id=");
        assert_eq!(id("v=STSv1; id=1").unwrap(), "1");
        let max = "Z9".repeat(16);
        assert_eq!(id(&format!("v=STSv1; id={max}")).unwrap(), max);
        invalid(&format!("v=STSv1; id={max}x"));
        for bad in ["id=a_b", "id=a-b", "id=a.b", "id=ä", "id=a=b", "id=\u{7f}"] {
            invalid(&format!("v=STSv1; {bad}"));
        }
        // `ID=` is an extension (the name is case-sensitive): no id.
        let e = id("v=STSv1; ID=abc").unwrap_err();
        assert!(e.contains("no id= field"), "{e}");
        // An extension alone is no record.
        invalid("v=STSv1; ext=1");
    }

    #[test]
    fn grammar_sts_sep_spaces_tabs_and_trailing() {
        for ok in [
            "v=STSv1;id=a",
            "v=STSv1 ;id=a",
            "v=STSv1\t;\tid=a",
            "v=STSv1 \t ; \t id=a",
            "v=STSv1; id=a;",
            "v=STSv1; id=a; ",
            "v=STSv1; id=a ;\t",
            "v=STSv1; id=a; x=1",
            "v=STSv1; x=1; id=a",
        ] {
            valid(ok);
        }
        for bad in [
            "v=STSv1 id=a",
            "v=STSv1;id=a ",
            "v=STSv1;id=a\t",
            "v=STSv1; id=a;;",
            "v=STSv1; id=a; ;",
            "v=STSv1;;id=a",
            "v=STSv1; id=a x=1",
            "v=STSv1;\nid=a",
            "v=STSv1; id=a\r\n",
            "v=STSv1\u{a0}; id=a",
        ] {
            invalid(bad);
        }
    }

    #[test]
    fn grammar_sts_ext_name() {
        let n32 = format!("a{}", "b".repeat(31));
        valid(&format!("v=STSv1; id=a; {n32}=v"));
        invalid(&format!("v=STSv1; id=a; {n32}c=v"));
        for ok in ["A=v", "9=v", "a_b=v", "a-b=v", "a.b=v", "a9-_.=v"] {
            valid(&format!("v=STSv1; id=a; {ok}"));
        }
        for bad in ["_a=v", "-a=v", ".a=v", "=v", "a b=v", "a/b=v", "ä=v", "a"] {
            invalid(&format!("v=STSv1; id=a; {bad}"));
        }
    }

    #[test]
    fn grammar_sts_ext_value() {
        // Every character of %x21-3A / %x3C / %x3E-7E.
        let all: String = (0x21u8..=0x7e)
            .filter(|b| *b != b';' && *b != b'=')
            .map(char::from)
            .collect();
        valid(&format!("v=STSv1; id=a; x={all}"));
        for bad in ["x=", "x=a=b", "x=a\u{7f}", "x=é", "x=a\u{0}", "x=a\u{1f}"] {
            invalid(&format!("v=STSv1; id=a; {bad}"));
        }
        // A `;` ends the value; what follows must be a field.
        valid("v=STSv1; id=a; x=a;y=b");
        invalid("v=STSv1; id=a; x=a;=b");
    }
}
