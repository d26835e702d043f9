//! What one key of the shared store holds: the JSON payload the cache
//! file keeps for a (kind, domain), when it was learned and when it
//! expires, with a format version.
//!
//! ```text
//! {"v":1,"fetched_at":1767225600,"expires_at":1767830400,"payload":"{...}"}
//! ```
//!
//! Version 2 has the same fields and marks a negative result (a domain
//! with no policy, shared so that the other hosts do not all discover
//! it): a version that does not know negatives refuses it as a later
//! format instead of taking its payload for a policy. Policies are still
//! written as version 1, which every version reads.
//!
//! The store is outside input: a value that is too long, not this shape, or
//! of a later version is refused with a [`ValueError`], never trusted.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::cache::persist::{Entry, Kind};

/// The newest format read, and the one negative results are written in.
pub const VERSION: u32 = 2;
/// The format policies are written in.
pub const VERSION_POLICY: u32 = 1;
/// Longest value read or written, in bytes. An MTA-STS policy is at most
/// 64 KiB of text; kept with its parsed form and JSON-escaped it stays
/// well below this.
pub const MAX_VALUE: usize = 256 * 1024;
/// Furthest in the future an entry may expire, in seconds (a year and a
/// day: MTA-STS's longest `max_age` is a year).
pub const MAX_LIFETIME: u64 = 366 * 86_400;

/// Why a value is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValueError {
    #[error("{0} bytes, more than the {MAX_VALUE} allowed")]
    Oversized(usize),
    #[error("not a value of this format: {0}")]
    Garbage(String),
    #[error("format version {0}, newer than the {VERSION} this version reads")]
    FutureVersion(u64),
    #[error("times out of order or too far ahead: {0}")]
    Times(String),
}

impl ValueError {
    /// The `kind` label of `errors_total{component="shared"}`.
    pub fn kind(&self) -> &'static str {
        match self {
            ValueError::Oversized(_) => "oversized",
            ValueError::Garbage(_) => "garbage",
            ValueError::FutureVersion(_) => "future_version",
            ValueError::Times(_) => "bad_times",
        }
    }
}

#[derive(Serialize)]
struct Out<'a> {
    v: u32,
    fetched_at: u64,
    expires_at: u64,
    payload: &'a str,
}

#[derive(Deserialize)]
struct In {
    fetched_at: u64,
    expires_at: u64,
    payload: String,
}

fn secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// The value for `entry`, a policy.
pub fn encode(entry: &Entry) -> Result<Vec<u8>, ValueError> {
    encode_as(entry, VERSION_POLICY)
}

/// The value for `entry`, a negative result.
pub fn encode_negative(entry: &Entry) -> Result<Vec<u8>, ValueError> {
    encode_as(entry, VERSION)
}

fn encode_as(entry: &Entry, version: u32) -> Result<Vec<u8>, ValueError> {
    let out = serde_json::to_vec(&Out {
        v: version,
        fetched_at: secs(entry.fetched_at),
        expires_at: secs(entry.expires_at),
        payload: &entry.payload,
    })
    .map_err(|e| ValueError::Garbage(e.to_string()))?;
    if out.len() > MAX_VALUE {
        return Err(ValueError::Oversized(out.len()));
    }
    Ok(out)
}

/// The entry a value holds for `kind` and `domain`, checked at `now`.
/// `Ok(None)`: a well-formed value that has expired.
pub fn decode(
    bytes: &[u8],
    kind: Kind,
    domain: &str,
    now: SystemTime,
) -> Result<Option<Entry>, ValueError> {
    if bytes.len() > MAX_VALUE {
        return Err(ValueError::Oversized(bytes.len()));
    }
    // The version first, so that a later format with other fields is
    // named as such rather than as garbage.
    #[derive(Deserialize)]
    struct Version {
        v: serde_json::Value,
    }
    let version: Version = serde_json::from_slice(bytes).map_err(|e| garbage(&e))?;
    match version.v.as_u64() {
        Some(v) if v > u64::from(VERSION) => return Err(ValueError::FutureVersion(v)),
        Some(v) if (u64::from(VERSION_POLICY)..=u64::from(VERSION)).contains(&v) => {}
        _ => return Err(ValueError::Garbage(format!("version {}", version.v))),
    }
    let v: In = serde_json::from_slice(bytes).map_err(|e| garbage(&e))?;
    let now_s = secs(now);
    if v.expires_at <= v.fetched_at {
        return Err(ValueError::Times(format!(
            "expires at {} but fetched at {}",
            v.expires_at, v.fetched_at
        )));
    }
    if v.fetched_at > now_s.saturating_add(300) {
        return Err(ValueError::Times(format!(
            "fetched at {}, in the future",
            v.fetched_at
        )));
    }
    if v.expires_at > now_s.saturating_add(MAX_LIFETIME) {
        return Err(ValueError::Times(format!(
            "expires at {}, more than a year ahead",
            v.expires_at
        )));
    }
    if serde_json::from_str::<serde::de::IgnoredAny>(&v.payload).is_err() {
        return Err(ValueError::Garbage("the payload is not JSON".into()));
    }
    if v.expires_at <= now_s {
        return Ok(None);
    }
    Ok(Some(Entry {
        kind,
        domain: domain.to_string(),
        fetched_at: UNIX_EPOCH + Duration::from_secs(v.fetched_at),
        expires_at: UNIX_EPOCH + Duration::from_secs(v.expires_at),
        payload: v.payload,
    }))
}

fn garbage(e: &serde_json::Error) -> ValueError {
    // serde's messages quote at most a short piece of the input.
    let text = e.to_string();
    let cut = crate::util::text::printable_ascii(&text, 200);
    ValueError::Garbage(cut)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_800_000_000)
    }

    fn entry(payload: &str) -> Entry {
        Entry {
            kind: Kind::MtaSts,
            domain: "a.example".into(),
            fetched_at: now() - Duration::from_secs(10),
            expires_at: now() + Duration::from_secs(86_400),
            payload: payload.into(),
        }
    }

    /// A value of exactly `len` bytes (a payload of padding).
    fn value_of_len(len: usize) -> Vec<u8> {
        let make = |pad: &str| {
            let p = format!("\"{pad}\"");
            serde_json::to_vec(&Out {
                v: VERSION,
                fetched_at: secs(now() - Duration::from_secs(10)),
                expires_at: secs(now() + Duration::from_secs(86_400)),
                payload: &p,
            })
            .unwrap()
        };
        let base = make("").len();
        let v = make(&"x".repeat(len - base));
        assert_eq!(v.len(), len);
        v
    }

    #[test]
    fn round_trip() {
        let e = entry("{\"id\":\"1\"}");
        let bytes = encode(&e).unwrap();
        assert_eq!(
            decode(&bytes, Kind::MtaSts, "a.example", now()),
            Ok(Some(e))
        );
    }

    #[test]
    fn negatives_are_version_2_policies_version_1() {
        let e = entry("{\"negative\":{\"why\":\"no record\"}}");
        let neg = encode_negative(&e).unwrap();
        assert!(
            neg.starts_with(b"{\"v\":2,"),
            "{}",
            String::from_utf8_lossy(&neg)
        );
        assert_eq!(
            decode(&neg, Kind::MtaSts, "a.example", now()),
            Ok(Some(e.clone()))
        );
        assert!(encode(&e).unwrap().starts_with(b"{\"v\":1,"));
    }

    #[test]
    fn size_limit_exact_boundary() {
        let at = value_of_len(MAX_VALUE);
        assert!(matches!(
            decode(&at, Kind::MtaSts, "a.example", now()),
            Ok(Some(_))
        ));
        let over = value_of_len(MAX_VALUE + 1);
        assert_eq!(
            decode(&over, Kind::MtaSts, "a.example", now()),
            Err(ValueError::Oversized(MAX_VALUE + 1))
        );
        let pad = "x".repeat(MAX_VALUE);
        assert!(matches!(
            encode(&entry(&format!("\"{pad}\""))),
            Err(ValueError::Oversized(_))
        ));
    }

    #[test]
    fn refusals() {
        let d = |b: &[u8]| decode(b, Kind::MtaSts, "a.example", now());
        let t = secs(now());
        assert_eq!(d(b"").unwrap_err().kind(), "garbage");
        assert_eq!(d(b"\xff\xfe").unwrap_err().kind(), "garbage");
        assert_eq!(d(b"[1,2]").unwrap_err().kind(), "garbage");
        assert_eq!(d(b"{\"v\":\"1\"}").unwrap_err().kind(), "garbage");
        assert_eq!(d(b"{\"v\":0,\"x\":1}").unwrap_err().kind(), "garbage");
        assert_eq!(
            d(b"{\"v\":3,\"whatever\":[]}"),
            Err(ValueError::FutureVersion(3))
        );
        assert_eq!(
            d(format!(
                "{{\"v\":1,\"fetched_at\":{t},\"expires_at\":{},\"payload\":7}}",
                t + 5
            )
            .as_bytes())
            .unwrap_err()
            .kind(),
            "garbage"
        );
        assert_eq!(
            d(format!(
                "{{\"v\":1,\"fetched_at\":{t},\"expires_at\":{},\"payload\":\"{{\"}}",
                t + 5
            )
            .as_bytes())
            .unwrap_err()
            .kind(),
            "garbage"
        );
        let times = |f: u64, e: u64| {
            d(
                format!("{{\"v\":1,\"fetched_at\":{f},\"expires_at\":{e},\"payload\":\"1\"}}")
                    .as_bytes(),
            )
        };
        assert_eq!(times(t, t).unwrap_err().kind(), "bad_times");
        assert_eq!(times(t + 301, t + 400).unwrap_err().kind(), "bad_times");
        assert_eq!(
            times(t, t + MAX_LIFETIME + 1).unwrap_err().kind(),
            "bad_times"
        );
        assert!(times(t, t + MAX_LIFETIME).unwrap().is_some());
        // Expired: well-formed, nothing to use.
        assert_eq!(times(t - 20, t), Ok(None));
    }
}
