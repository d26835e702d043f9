//! The command-line filter values of `tls-policyd log`: `--since` (an
//! RFC 3339 time or a duration), `--tls`, `--domain` and `--verdict`,
//! checked and brought into the form the records use.

use std::time::{Duration, SystemTime};

use super::ReadError;

/// Parses a `--since` value: an RFC 3339 time (`2026-11-24T10:00:00Z`,
/// fractional seconds and `+01:00` style offsets allowed, a bare date means
/// midnight UTC) or a duration such as `2h`, `30m`, `1d`, `1h30m`, meaning
/// that long before `now`.
///
/// # Errors
///
/// [`ReadError::BadSince`] when the value is neither.
pub fn parse_since(s: &str, now: SystemTime) -> Result<SystemTime, ReadError> {
    parse_time(s, now).map_err(|reason| ReadError::BadSince {
        value: s.to_owned(),
        reason,
    })
}

/// Parses an `--until` value, written as for [`parse_since`].
///
/// # Errors
///
/// [`ReadError::BadUntil`] when the value is neither a time nor a
/// duration.
pub fn parse_until(s: &str, now: SystemTime) -> Result<SystemTime, ReadError> {
    parse_time(s, now).map_err(|reason| ReadError::BadUntil {
        value: s.to_owned(),
        reason,
    })
}

/// An RFC 3339 time, or a duration back from `now`; the reason it is
/// neither.
fn parse_time(s: &str, now: SystemTime) -> Result<SystemTime, String> {
    let v = s.trim();
    if v.is_empty() {
        return Err("empty value".to_owned());
    }
    if looks_like_timestamp(v) {
        return parse_timestamp(v);
    }
    let d = humantime::parse_duration(v).map_err(|e| {
        format!(
            "expected an RFC 3339 time such as 2026-11-24T10:00:00Z \
             or a duration such as 2h, 30m, 1d ({e})"
        )
    })?;
    now.checked_sub(d)
        .ok_or_else(|| "duration too large".to_owned())
}

/// A duration never has a `-` as its fifth character; a date always does.
fn looks_like_timestamp(v: &str) -> bool {
    let b = v.as_bytes();
    b.len() >= 10 && b[..4].iter().all(u8::is_ascii_digit) && b[4] == b'-'
}

/// RFC 3339 on top of humantime, which itself only understands UTC.
fn parse_timestamp(v: &str) -> Result<SystemTime, String> {
    if !v.is_ascii() {
        return Err("not an RFC 3339 time".to_owned());
    }
    // RFC 3339 allows lower-case `t` and `z`; humantime does not.
    let mut u = v.to_ascii_uppercase();
    if u.len() == 10 {
        u.push_str("T00:00:00Z");
    }
    let b = u.as_bytes();
    let n = b.len();
    if b[n - 1] == b'Z' {
        return humantime::parse_rfc3339(&u).map_err(|e| e.to_string());
    }
    // Numeric offset: local time = UTC + offset.
    if n >= 25 && (b[n - 6] == b'+' || b[n - 6] == b'-') && b[n - 3] == b':' {
        let hh = two_digits(&b[n - 5..n - 3]);
        let mm = two_digits(&b[n - 2..]);
        let (Some(hh @ 0..=23), Some(mm @ 0..=59)) = (hh, mm) else {
            return Err("bad UTC offset".to_owned());
        };
        let local =
            humantime::parse_rfc3339(&format!("{}Z", &u[..n - 6])).map_err(|e| e.to_string())?;
        let offset = Duration::from_secs(hh * 3600 + mm * 60);
        let utc = if b[n - 6] == b'+' {
            local.checked_sub(offset)
        } else {
            local.checked_add(offset)
        };
        return utc.ok_or_else(|| "time out of range".to_owned());
    }
    Err("missing time zone: append Z for UTC or an offset such as +01:00".to_owned())
}

fn two_digits(b: &[u8]) -> Option<u64> {
    match b {
        [a @ b'0'..=b'9', c @ b'0'..=b'9'] => Some(u64::from(a - b'0') * 10 + u64::from(c - b'0')),
        _ => None,
    }
}

/// Validates a `--tls` value and returns its canonical spelling.
///
/// # Errors
///
/// [`ReadError::BadTls`] for anything but `forced` or `opportunistic`
/// (case-insensitive).
pub fn parse_tls(s: &str) -> Result<String, ReadError> {
    let v = s.trim();
    for word in ["forced", "opportunistic"] {
        if v.eq_ignore_ascii_case(word) {
            return Ok(word.to_owned());
        }
    }
    Err(ReadError::BadTls {
        value: s.to_owned(),
    })
}

pub use crate::engine::outcome::Verdict;

/// The verdict a record's `verdict` field names (exact spelling).
pub fn verdict_from_log(s: &str) -> Option<Verdict> {
    s.parse().ok()
}

/// The allowed `--verdict` spellings, comma-separated, for error messages.
pub fn verdict_names() -> String {
    Verdict::ALL.map(Verdict::as_str).join(", ")
}

/// Validates a `--verdict` value (one verdict, any letter case).
///
/// # Errors
///
/// [`ReadError::BadVerdict`] for anything but a verdict's name.
pub fn parse_verdict(s: &str) -> Result<Verdict, ReadError> {
    let v = s.trim();
    Verdict::ALL
        .into_iter()
        .find(|w| v.eq_ignore_ascii_case(w.as_str()))
        .ok_or_else(|| ReadError::BadVerdict {
            value: s.to_owned(),
        })
}

/// Normalises a `--domain` value the way the daemon writes the `domain`
/// field: lower-case A-label without a trailing dot.
///
/// # Errors
///
/// [`ReadError::BadDomain`] when the value is not a usable domain name.
pub fn normalize_domain(s: &str) -> Result<String, ReadError> {
    let bad = |reason: &str| ReadError::BadDomain {
        value: s.to_owned(),
        reason: reason.to_owned(),
    };
    let v = s.trim();
    let v = v.strip_suffix('.').unwrap_or(v);
    if v.is_empty() {
        return Err(bad("empty domain"));
    }
    if v.contains('@') {
        return Err(bad("expected a domain, not an address"));
    }
    if v.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(bad("whitespace or control characters in domain"));
    }
    match idna::domain_to_ascii(v) {
        Ok(a) if !a.is_empty() => Ok(a),
        _ => Err(bad("not a valid domain name")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::UNIX_EPOCH;

    #[test]
    fn parse_since_rfc3339() {
        let now = SystemTime::now();
        let base = UNIX_EPOCH + Duration::from_secs(1_795_514_400); // 2026-11-24T10:00:00Z
        assert_eq!(parse_since("2026-11-24T10:00:00Z", now).unwrap(), base);
        assert_eq!(parse_since(" 2026-11-24t10:00:00z ", now).unwrap(), base);
        assert_eq!(parse_since("2026-11-24T10:00:00+00:00", now).unwrap(), base);
        assert_eq!(
            parse_since("2026-11-24T10:00:00.123456Z", now).unwrap(),
            base + Duration::from_micros(123_456)
        );
        assert_eq!(
            parse_since("2026-11-24T10:00:00.5Z", now).unwrap(),
            base + Duration::from_millis(500)
        );
        assert_eq!(parse_since("2026-11-24T11:30:00+01:30", now).unwrap(), base);
        assert_eq!(parse_since("2026-11-24T05:00:00-05:00", now).unwrap(), base);
        assert_eq!(
            parse_since("2026-11-24", now).unwrap(),
            base - Duration::from_secs(10 * 3600)
        );
    }

    #[test]
    fn parse_since_relative() {
        let now = UNIX_EPOCH + Duration::from_secs(1_795_514_400);
        let ago = |s: &str| now.duration_since(parse_since(s, now).unwrap()).unwrap();
        assert_eq!(ago("2h"), Duration::from_secs(7200));
        assert_eq!(ago("30m"), Duration::from_secs(1800));
        assert_eq!(ago("1d"), Duration::from_secs(86_400));
        assert_eq!(ago("1h30m"), Duration::from_secs(5400));
        assert_eq!(ago("1h 30m"), Duration::from_secs(5400));
        assert_eq!(ago("45s"), Duration::from_secs(45));
        assert_eq!(ago("0"), Duration::ZERO);
    }

    #[test]
    fn parse_since_errors() {
        let now = SystemTime::now();
        for bad in [
            "yesterday",
            "",
            "  ",
            "-2h",
            "2 hours ago",
            "2026-13-01T00:00:00Z",
            "2026-11-24T10:00:00",
            "2026-11-24 10:00",
            "2026-11-24T10:00:00+25:00",
            "2026-11-24T10:00:00+01",
            "2026-11-24T10:00:00Zjunk",
            "2026-11-2ä",
            "1969-12-31T23:59:59Z",
            "99999999999999999999y",
        ] {
            let err = parse_since(bad, now).unwrap_err();
            assert!(
                matches!(err, ReadError::BadSince { .. }),
                "{bad:?}: {err:?}"
            );
            let msg = err.to_string();
            assert!(
                msg.starts_with(&format!("bad --since value {bad:?}: ")),
                "{msg}"
            );
        }
        let msg = parse_since("yesterday", now).unwrap_err().to_string();
        assert!(
            msg.starts_with("bad --since value \"yesterday\": expected"),
            "{msg}"
        );
        let msg = parse_since("2026-11-24T10:00:00", now)
            .unwrap_err()
            .to_string();
        assert!(msg.contains("missing time zone"), "{msg}");
    }

    #[test]
    fn parse_tls_values() {
        assert_eq!(parse_tls("forced").unwrap(), "forced");
        assert_eq!(parse_tls("Opportunistic ").unwrap(), "opportunistic");
        for bad in ["maybe", "", "force", "encrypt"] {
            let err = parse_tls(bad).unwrap_err();
            assert_eq!(
                err.to_string(),
                format!("bad --tls value {bad:?}: expected \"forced\" or \"opportunistic\"")
            );
        }
    }

    #[test]
    fn parse_until_shares_since_but_names_its_option() {
        let now = UNIX_EPOCH + Duration::from_secs(1_795_514_400);
        assert_eq!(
            parse_until("2026-11-24T10:00:00Z", SystemTime::now()).unwrap(),
            now
        );
        assert_eq!(
            parse_until("1h", now).unwrap(),
            now - Duration::from_secs(3600)
        );
        for bad in ["soon", "", "2026-11-24T10:00:00"] {
            let err = parse_until(bad, now).unwrap_err();
            assert!(
                err.to_string()
                    .starts_with(&format!("bad --until value {bad:?}: ")),
                "{err}"
            );
        }
    }

    #[test]
    fn parse_verdict_values() {
        let cases: [(&str, Verdict); 4] = [
            ("held", Verdict::Held),
            (" Plaintext-Fallback", Verdict::PlaintextFallback),
            ("NOT-DELIVERED", Verdict::NotDelivered),
            ("policy-unreachable", Verdict::PolicyUnreachable),
        ];
        for (text, want) in cases {
            assert_eq!(parse_verdict(text).unwrap(), want, "{text:?}");
        }
        for bad in ["", "sent", "plaintext", "held,violation"] {
            assert_eq!(
                parse_verdict(bad).unwrap_err().to_string(),
                format!(
                    "bad --verdict value {bad:?}: expected one of verified, encrypted, \
                     plaintext-fallback, held, violation, policy-unreachable, undecided, \
                     not-delivered"
                )
            );
        }
    }

    #[test]
    fn verdict_spellings_round_trip_exactly() {
        for v in Verdict::ALL {
            assert_eq!(verdict_from_log(v.as_str()), Some(v));
            assert_eq!(parse_verdict(v.as_str()).unwrap(), v);
        }
        // The log is read as written: no case folding, no trimming.
        for text in ["Held", " held", "sent", ""] {
            assert_eq!(verdict_from_log(text), None, "{text:?}");
        }
    }

    #[test]
    fn normalize_domain_values() {
        assert_eq!(
            normalize_domain("bücher.example").unwrap(),
            "xn--bcher-kva.example"
        );
        assert_eq!(
            normalize_domain("XN--BCHER-KVA.EXAMPLE.").unwrap(),
            "xn--bcher-kva.example"
        );
        assert_eq!(normalize_domain("Gmail.COM").unwrap(), "gmail.com");
    }
}
