//! Discovery of a domain's TLS-RPT record (`_smtp._tls.<domain>` TXT,
//! RFC 8460 section 3) through the `[dns]` resolver, and what was found,
//! kept in the SQLite file until its TTL runs out (bounded both ways), so
//! a restart looks nothing up again and `tlsrpt list` shows where reports
//! go.
//!
//! ```sql
//! CREATE TABLE tlsrpt_records (
//!     domain  TEXT PRIMARY KEY,
//!     record  TEXT,     -- the record as published; NULL: none usable
//!     problem TEXT,     -- why there is none
//!     expires INTEGER   -- Unix seconds
//! ) WITHOUT ROWID;
//! ```

use std::time::{Duration, Instant, SystemTime};

use hickory_resolver::proto::rr::{RData, RecordType};
use rusqlite::{OptionalExtension, params};

use super::record::{self, MAX_RECORD_LEN, RecordError, TlsRptRecord};
use super::store::{TlsRptStore, TlsRptStoreError, from_unix, unix};
use crate::dns::{self, LookupError, Resolver};

/// Shortest and longest time a found record is kept.
pub const RECORD_TTL: (Duration, Duration) =
    (Duration::from_secs(300), Duration::from_secs(86_400));
/// How long "no record" is kept.
pub const NEGATIVE_TTL: Duration = Duration::from_secs(3600);

/// What a lookup found: a usable record, or why there is none.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    pub record: Result<TlsRptRecord, RecordError>,
    pub ttl: Duration,
}

/// Look up `domain`'s TLS-RPT record. `Err`: nothing is known (the
/// lookup failed); a domain with no record is `Ok` with the reason.
pub async fn discover(resolver: &Resolver, domain: &str) -> Result<Found, LookupError> {
    let name = format!("_smtp._tls.{domain}");
    let answer = match dns::lookup(resolver, &name, RecordType::TXT).await {
        Ok(a) => a,
        Err(LookupError::NxDomain | LookupError::NoData) => {
            return Ok(Found {
                record: Err(RecordError::None),
                ttl: NEGATIVE_TTL,
            });
        }
        Err(e) => return Err(e),
    };
    let ttl = answer
        .valid_until()
        .saturating_duration_since(Instant::now())
        .clamp(RECORD_TTL.0, RECORD_TTL.1);
    let texts: Vec<String> = answer
        .answers()
        .iter()
        .filter_map(|r| match &r.data {
            RData::TXT(t) => {
                let bytes: Vec<u8> = t
                    .txt_data
                    .iter()
                    .flat_map(|s| s.iter().copied())
                    .take(MAX_RECORD_LEN + 1)
                    .collect();
                // Not UTF-8: not a TLS-RPT record, but still a record
                // (it counts against "exactly one").
                Some(String::from_utf8(bytes).unwrap_or_default())
            }
            _ => None,
        })
        .collect();
    let record = record::select(&texts);
    let ttl = if record.is_ok() { ttl } else { NEGATIVE_TTL };
    Ok(Found { record, ttl })
}

/// A kept lookup result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeptRecord {
    pub domain: String,
    pub record: Result<TlsRptRecord, String>,
    pub expires: SystemTime,
}

impl TlsRptStore {
    /// Keep what a lookup of `domain` found at `now`.
    pub fn keep_record(
        &self,
        domain: &str,
        found: &Found,
        now: SystemTime,
    ) -> Result<(), TlsRptStoreError> {
        let (text, problem) = match &found.record {
            Ok(r) => (Some(r.text.as_str()), None),
            Err(e) => (None, Some(e.to_string())),
        };
        self.conn
            .execute(
                "INSERT OR REPLACE INTO tlsrpt_records (domain, record, problem, expires)
                 VALUES (?1, ?2, ?3, ?4)",
                params![domain, text, problem, unix(now + found.ttl)],
            )
            .map_err(|e| self.sql(e))?;
        Ok(())
    }

    /// What was found for `domain`, while it is valid at `now`.
    pub fn kept_record(
        &self,
        domain: &str,
        now: SystemTime,
    ) -> Result<Option<KeptRecord>, TlsRptStoreError> {
        let row: Option<(Option<String>, Option<String>, i64)> = self
            .conn
            .prepare_cached("SELECT record, problem, expires FROM tlsrpt_records WHERE domain = ?1")
            .and_then(|mut st| {
                st.query_row(params![domain], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
                    .optional()
            })
            .map_err(|e| self.sql(e))?;
        Ok(row.and_then(|(text, problem, expires)| {
            let expires = from_unix(expires);
            if expires <= now {
                return None;
            }
            let record = match text {
                // Kept by this version: it parses; one that does not is
                // looked up again.
                Some(t) => Ok(record::parse(&t).ok()?),
                None => Err(problem.unwrap_or_default()),
            };
            Some(KeptRecord {
                domain: domain.to_string(),
                record,
                expires,
            })
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tlsrpt::record::ReportUri;
    use crate::tlsrpt::report::parse_day;

    #[test]
    fn kept_records_live_until_they_expire() {
        let dir = tempfile::tempdir().unwrap();
        let s = TlsRptStore::open(&dir.path().join("c.sqlite")).unwrap();
        let now = parse_day("2026-12-05").unwrap();
        let rec = record::parse("v=TLSRPTv1; rua=mailto:tlsrpt@r.example").unwrap();
        s.keep_record(
            "r.example",
            &Found {
                record: Ok(rec.clone()),
                ttl: Duration::from_secs(600),
            },
            now,
        )
        .unwrap();
        s.keep_record(
            "n.example",
            &Found {
                record: Err(RecordError::Several(2)),
                ttl: NEGATIVE_TTL,
            },
            now,
        )
        .unwrap();
        let k = s.kept_record("r.example", now).unwrap().unwrap();
        assert_eq!(
            k.record.unwrap().rua,
            [ReportUri::Mailto("tlsrpt@r.example".into())]
        );
        let n = s.kept_record("n.example", now).unwrap().unwrap();
        assert!(n.record.unwrap_err().contains("exactly one"));
        // Expired: as if never looked up.
        let later = now + Duration::from_secs(600);
        assert!(s.kept_record("r.example", later).unwrap().is_none());
        assert!(s.kept_record("x.example", now).unwrap().is_none());
        assert!(s.kept_record("n.example", later).unwrap().is_some());
        s.prune_before("2026-12-01", now + NEGATIVE_TTL + Duration::from_secs(1))
            .unwrap();
        assert!(s.kept_record("n.example", now).unwrap().is_none());
    }
}
