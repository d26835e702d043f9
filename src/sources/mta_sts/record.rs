//! The `_mta-sts.<domain>` TXT record (RFC 8461 section 3.1):
//! `v=STSv1; id=20240101T000000;`.
//!
//! Records that do not start with `v=STSv1` are someone else's and are
//! ignored. Exactly one record must start with it; two or more mean the
//! domain has no usable MTA-STS record (the RFC's rule), as does one that
//! does not parse.

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

/// Parse one record that starts with `v=STSv1`.
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
    let mut fields = text.split(';').map(|f| f.trim_matches([' ', '\t']));
    if fields.next() != Some("v=STSv1") {
        return Err(invalid("the first field must be v=STSv1".into()));
    }
    let mut id = None;
    for field in fields {
        if field.is_empty() {
            // `;;` and a trailing `;` are tolerated.
            continue;
        }
        let Some((name, value)) = field.split_once('=') else {
            return Err(invalid(format!("field {field:?} is not name=value")));
        };
        if name == "id" {
            if id.is_some() {
                // The first id counts; RFC 8461 has no rule for a second.
                continue;
            }
            if value.is_empty()
                || value.len() > MAX_ID_LEN
                || !value.bytes().all(|b| b.is_ascii_alphanumeric())
            {
                return Err(invalid(format!(
                    "id {value:?} is not 1 to {MAX_ID_LEN} letters and digits"
                )));
            }
            id = Some(value.to_string());
        } else {
            let name_ok = !name.is_empty()
                && name.len() <= MAX_EXT_NAME_LEN
                && name.as_bytes()[0].is_ascii_alphanumeric()
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.');
            let value_ok = !value.is_empty()
                && value
                    .bytes()
                    .all(|b| (0x21..=0x7e).contains(&b) && b != b'=' && b != b';');
            if !name_ok || !value_ok {
                return Err(invalid(format!("field {field:?} is not a valid extension")));
            }
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
            ("v=STSv1;; id=abc;;", "abc"),
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
}
