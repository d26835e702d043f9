//! The shared store's values (`shared/value.rs`) and TLS-RPT snapshots
//! (`tlsrpt/fleet.rs`).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::cache::persist::Kind;
use crate::shared::value::{self, MAX_LIFETIME, MAX_VALUE};
use crate::sources::mta_sts::{SharedNegative, check_negative};

/// A value read from the shared store: decoding never panics; a refusal
/// names one of the known kinds; an accepted value is at most
/// `MAX_VALUE` bytes, was fetched before it expires, expires after now and
/// at most `MAX_LIFETIME` ahead, holds a JSON payload, and encodes and
/// decodes again to the same entry. A payload that reads as a shared
/// MTA-STS "no policy" is accepted only when it lasts at most 5 minutes
/// and its reason is short text.
pub fn check_shared_value(data: &[u8]) {
    let now = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
    match value::decode(data, Kind::MtaSts, "a.example", now) {
        Ok(Some(e)) => {
            assert!(data.len() <= MAX_VALUE);
            assert!(e.fetched_at < e.expires_at);
            assert!(e.expires_at > now);
            assert!(e.expires_at <= now + Duration::from_secs(MAX_LIFETIME));
            assert!(
                serde_json::from_str::<serde_json::Value>(&e.payload).is_ok(),
                "payload is not JSON"
            );
            if let Ok(n) = e.decode::<SharedNegative>() {
                let (f, x) = (secs(e.fetched_at), secs(e.expires_at));
                if let Ok((why, _)) = check_negative(&n, f, x) {
                    assert!(x - f <= 300);
                    assert!(why.len() <= 512 && !why.chars().any(char::is_control));
                }
            }
            if let Ok(bytes) = value::encode(&e) {
                assert_eq!(
                    value::decode(&bytes, Kind::MtaSts, "a.example", now),
                    Ok(Some(e)),
                    "encoding and decoding again differs"
                );
            }
        }
        Ok(None) => {}
        Err(err) => {
            assert!(
                ["oversized", "garbage", "future_version", "bad_times"].contains(&err.kind()),
                "{err}"
            );
            assert!(!err.to_string().is_empty());
        }
    }
}

/// A host's TLS-RPT snapshot read from the shared store
/// (`tlsrpt/fleet.rs`): decoding never panics; a refusal names one of the
/// known kinds; accepted counts are for the domain read under, a lone line at
/// most `MAX_COUNT`, and encode and decode again to the same counts.
pub fn check_tlsrpt_snapshot(data: &[u8]) {
    use crate::tlsrpt::fleet::{self, MAX_COUNT, MAX_SNAPSHOT};
    let now = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
    let (day, domain, host) = ("2026-12-04", "r.example", "a");
    match fleet::decode(data, day, domain, host, now) {
        Ok(counts) => {
            assert!(data.len() <= MAX_SNAPSHOT);
            for (policy, c) in &counts.policies {
                assert_eq!(policy.policy_domain, domain);
                // One line per policy, as encode writes it, is at most
                // MAX_COUNT; several lines of one policy add up.
                if c.failures.is_empty()
                    && data.windows(9).filter(|w| w == b"\"policy\":").count() == 1
                {
                    assert!(c.successful <= MAX_COUNT);
                }
            }
            if let Ok(bytes) = fleet::encode(day, domain, host, &counts, now) {
                assert_eq!(
                    fleet::decode(&bytes, day, domain, host, now),
                    Ok(counts),
                    "encoding and decoding again differs"
                );
            }
        }
        Err(err) => {
            assert!(
                [
                    "tlsrpt_oversized",
                    "tlsrpt_garbage",
                    "tlsrpt_future_version",
                    "tlsrpt_mismatch"
                ]
                .contains(&err.kind()),
                "{err}"
            );
            assert!(!err.to_string().is_empty());
        }
    }
}

fn secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}
