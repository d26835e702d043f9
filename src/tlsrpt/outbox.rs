//! The reports built and where each went, in the SQLite file: a report is
//! built once per domain and day and kept as sent (`tlsrpt show` prints
//! those bytes), and each destination is taken by one sender at a time,
//! so two senders (the daemon and `tlsrpt send`) never send one twice.
//!
//! ```sql
//! CREATE TABLE tlsrpt_reports (
//!     day TEXT, domain TEXT, report_id TEXT, json TEXT, built_at INTEGER,
//!     PRIMARY KEY (day, domain)
//! ) WITHOUT ROWID;
//! CREATE TABLE tlsrpt_outbox (
//!     day TEXT, domain TEXT,
//!     destination TEXT,  -- the rua URI; '' for "no TLS-RPT record" or
//!                        -- "sent by another host of the fleet"
//!     state TEXT,        -- sending, sent, retry, failed, no-record, fleet
//!     attempts INTEGER, next_try INTEGER, updated_at INTEGER,
//!     detail TEXT,       -- the last error, or what the peer answered
//!     PRIMARY KEY (day, domain, destination)
//! ) WITHOUT ROWID;
//! ```
//!
//! A destination left `sending` by a sender that died is not tried again
//! (it may have gone out): it is marked `failed` ("interrupted").

use std::fmt;
use std::time::SystemTime;

use rusqlite::{OptionalExtension, params};

use super::report::Report;
use super::store::{TlsRptStore, TlsRptStoreError, from_unix, unix};

/// Where a report stands for one destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutState {
    /// Taken by a sender now.
    Sending,
    Sent,
    /// Failed; tried again at `next_try`.
    Retry,
    /// Given up.
    Failed,
    /// The domain publishes no TLS-RPT record: nothing sent.
    NoRecord,
    /// Another host of the fleet (`[shared]`) sent the fleet's report.
    Fleet,
}

impl OutState {
    pub fn as_str(self) -> &'static str {
        match self {
            OutState::Sending => "sending",
            OutState::Sent => "sent",
            OutState::Retry => "retry",
            OutState::Failed => "failed",
            OutState::NoRecord => "no-record",
            OutState::Fleet => "fleet",
        }
    }

    fn parse(s: &str) -> OutState {
        match s {
            "sending" => OutState::Sending,
            "sent" => OutState::Sent,
            "retry" => OutState::Retry,
            "no-record" => OutState::NoRecord,
            "fleet" => OutState::Fleet,
            _ => OutState::Failed,
        }
    }
}

impl fmt::Display for OutState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One destination of one report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxRow {
    pub day: String,
    pub domain: String,
    pub destination: String,
    pub state: OutState,
    pub attempts: u32,
    pub next_try: SystemTime,
    pub updated_at: SystemTime,
    pub detail: String,
}

/// A report as built, for `tlsrpt show`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredReport {
    pub report_id: String,
    pub json: String,
    pub built_at: SystemTime,
}

/// How a try ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Finish {
    Sent(String),
    Retry {
        detail: String,
        next_try: SystemTime,
    },
    Failed(String),
}

fn row(r: &rusqlite::Row<'_>) -> rusqlite::Result<OutboxRow> {
    Ok(OutboxRow {
        day: r.get(0)?,
        domain: r.get(1)?,
        destination: r.get(2)?,
        state: OutState::parse(&r.get::<_, String>(3)?),
        attempts: r.get::<_, i64>(4)?.clamp(0, u32::MAX as i64) as u32,
        next_try: from_unix(r.get(5)?),
        updated_at: from_unix(r.get(6)?),
        detail: r.get(7)?,
    })
}

const COLUMNS: &str = "day, domain, destination, state, attempts, next_try, updated_at, detail";

impl TlsRptStore {
    /// Keep `report` as the report of its domain and day. `false`: one
    /// was kept already (by this or another sender); it stays.
    pub fn keep_report(&self, report: &Report, now: SystemTime) -> Result<bool, TlsRptStoreError> {
        let n = self
            .conn
            .execute(
                "INSERT OR IGNORE INTO tlsrpt_reports (day, domain, report_id, json, built_at)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
                params![
                    super::report::day_name(report.day_start),
                    report.policy_domain,
                    report.report_id,
                    report.json,
                    unix(now)
                ],
            )
            .map_err(|e| self.sql(e))?;
        Ok(n == 1)
    }

    /// The report kept for `domain` and `day`.
    pub fn report(
        &self,
        day: &str,
        domain: &str,
    ) -> Result<Option<StoredReport>, TlsRptStoreError> {
        self.conn
            .query_row(
                "SELECT report_id, json, built_at FROM tlsrpt_reports WHERE day = ?1 AND domain = ?2",
                params![day, domain],
                |r| {
                    Ok(StoredReport {
                        report_id: r.get(0)?,
                        json: r.get(1)?,
                        built_at: from_unix(r.get(2)?),
                    })
                },
            )
            .optional()
            .map_err(|e| self.sql(e))
    }

    /// Whether `domain`'s day is done: its report kept, or no record
    /// found for it.
    pub fn day_done(&self, day: &str, domain: &str) -> Result<bool, TlsRptStoreError> {
        let n: i64 = self
            .conn
            .query_row(
                "SELECT (SELECT COUNT(*) FROM tlsrpt_reports WHERE day = ?1 AND domain = ?2)
                      + (SELECT COUNT(*) FROM tlsrpt_outbox WHERE day = ?1 AND domain = ?2)",
                params![day, domain],
                |r| r.get(0),
            )
            .map_err(|e| self.sql(e))?;
        Ok(n > 0)
    }

    /// Add `destination` for the day's report, taken by the caller
    /// (`sending`). `false`: it was there already.
    pub fn queue(
        &self,
        day: &str,
        domain: &str,
        destination: &str,
        now: SystemTime,
    ) -> Result<bool, TlsRptStoreError> {
        self.insert(day, domain, destination, OutState::Sending, "", now)
    }

    /// Note that `domain` published no TLS-RPT record when its report for
    /// `day` was due. `false`: the day was noted already.
    pub fn no_record(
        &self,
        day: &str,
        domain: &str,
        why: &str,
        now: SystemTime,
    ) -> Result<bool, TlsRptStoreError> {
        self.insert(day, domain, "", OutState::NoRecord, why, now)
    }

    /// Note that another host of the fleet took `domain`'s report for
    /// `day` (`detail` says which, and the report id). `false`: the day
    /// was noted already.
    pub fn fleet_sent(
        &self,
        day: &str,
        domain: &str,
        detail: &str,
        now: SystemTime,
    ) -> Result<bool, TlsRptStoreError> {
        self.insert(day, domain, "", OutState::Fleet, detail, now)
    }

    fn insert(
        &self,
        day: &str,
        domain: &str,
        destination: &str,
        state: OutState,
        detail: &str,
        now: SystemTime,
    ) -> Result<bool, TlsRptStoreError> {
        let n = self
            .conn
            .execute(
                &format!(
                    "INSERT OR IGNORE INTO tlsrpt_outbox ({COLUMNS})
                     VALUES (?1, ?2, ?3, ?4, 0, ?5, ?5, ?6)"
                ),
                params![day, domain, destination, state.as_str(), unix(now), detail],
            )
            .map_err(|e| self.sql(e))?;
        Ok(n == 1)
    }

    /// Take the destinations due for another try (of `day`, or of every
    /// day), at most `limit`.
    pub fn take_due(
        &self,
        day: Option<&str>,
        now: SystemTime,
        limit: usize,
    ) -> Result<Vec<OutboxRow>, TlsRptStoreError> {
        let due: Vec<OutboxRow> = {
            let mut st = self
                .conn
                .prepare(&format!(
                    "SELECT {COLUMNS} FROM tlsrpt_outbox
                     WHERE state = 'retry' AND next_try <= ?1 AND (?2 IS NULL OR day = ?2)
                     ORDER BY next_try LIMIT ?3"
                ))
                .map_err(|e| self.sql(e))?;
            st.query_map(params![unix(now), day, limit as i64], row)
                .map_err(|e| self.sql(e))?
                .collect::<Result<_, _>>()
                .map_err(|e| self.sql(e))?
        };
        let mut taken = Vec::with_capacity(due.len());
        for mut r in due {
            let n = self
                .conn
                .execute(
                    "UPDATE tlsrpt_outbox SET state = 'sending', updated_at = ?4
                     WHERE day = ?1 AND domain = ?2 AND destination = ?3 AND state = 'retry'",
                    params![r.day, r.domain, r.destination, unix(now)],
                )
                .map_err(|e| self.sql(e))?;
            if n == 1 {
                r.state = OutState::Sending;
                taken.push(r);
            }
        }
        Ok(taken)
    }

    /// Note how a try of a taken destination ended.
    pub fn finish(
        &self,
        day: &str,
        domain: &str,
        destination: &str,
        how: &Finish,
        now: SystemTime,
    ) -> Result<(), TlsRptStoreError> {
        let (state, detail, next) = match how {
            Finish::Sent(d) => (OutState::Sent, d, now),
            Finish::Retry { detail, next_try } => (OutState::Retry, detail, *next_try),
            Finish::Failed(d) => (OutState::Failed, d, now),
        };
        self.conn
            .execute(
                "UPDATE tlsrpt_outbox
                 SET state = ?4, attempts = attempts + 1, next_try = ?5, updated_at = ?6, detail = ?7
                 WHERE day = ?1 AND domain = ?2 AND destination = ?3",
                params![
                    day,
                    domain,
                    destination,
                    state.as_str(),
                    unix(next),
                    unix(now),
                    detail
                ],
            )
            .map_err(|e| self.sql(e))?;
        Ok(())
    }

    /// Destinations left `sending` since before `before` (their sender
    /// died): marked `failed`, not tried again. Returns them.
    pub fn interrupted(
        &self,
        before: SystemTime,
        now: SystemTime,
    ) -> Result<Vec<OutboxRow>, TlsRptStoreError> {
        let rows: Vec<OutboxRow> = {
            let mut st = self
                .conn
                .prepare(&format!(
                    "SELECT {COLUMNS} FROM tlsrpt_outbox WHERE state = 'sending' AND updated_at < ?1"
                ))
                .map_err(|e| self.sql(e))?;
            st.query_map(params![unix(before)], row)
                .map_err(|e| self.sql(e))?
                .collect::<Result<_, _>>()
                .map_err(|e| self.sql(e))?
        };
        for r in &rows {
            self.finish(
                &r.day,
                &r.domain,
                &r.destination,
                &Finish::Failed(
                    "interrupted while sending; not sent again (it may have gone out)".into(),
                ),
                now,
            )?;
        }
        Ok(rows)
    }

    /// Every destination of `day` (of `domain` only, when given).
    pub fn outbox(
        &self,
        day: &str,
        domain: Option<&str>,
    ) -> Result<Vec<OutboxRow>, TlsRptStoreError> {
        let mut st = self
            .conn
            .prepare(&format!(
                "SELECT {COLUMNS} FROM tlsrpt_outbox WHERE day = ?1 AND (?2 IS NULL OR domain = ?2)
                 ORDER BY domain, destination"
            ))
            .map_err(|e| self.sql(e))?;
        st.query_map(params![day, domain], row)
            .map_err(|e| self.sql(e))?
            .collect::<Result<_, _>>()
            .map_err(|e| self.sql(e))
    }

    /// Whether a report was mailed (or is being mailed) to `address` for
    /// a day from `day` on: a delivery to it is a report, not counted.
    pub fn is_report_recipient(&self, address: &str, day: &str) -> Result<bool, TlsRptStoreError> {
        self.conn
            .prepare_cached(
                "SELECT 1 FROM tlsrpt_outbox
                 WHERE day >= ?2 AND lower(destination) = 'mailto:' || lower(?1) LIMIT 1",
            )
            .and_then(|mut st| st.query_row(params![address, day], |_| Ok(())).optional())
            .map(|r| r.is_some())
            .map_err(|e| self.sql(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tlsrpt::report::{DayCounts, Submitter, parse_day};
    use std::time::Duration;

    fn report(domain: &str) -> Report {
        let s = Submitter {
            organization_name: "O".into(),
            contact_info: "c@example.net".into(),
            submitter: "example.net".into(),
        };
        Report::build(
            &s,
            domain,
            parse_day("2026-12-04").unwrap(),
            &DayCounts::default(),
        )
    }

    #[test]
    fn a_report_is_kept_once_and_each_destination_taken_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.sqlite");
        let a = TlsRptStore::open(&path).unwrap();
        let b = TlsRptStore::open(&path).unwrap();
        let now = parse_day("2026-12-05").unwrap();
        let day = "2026-12-04";
        assert!(!a.day_done(day, "r.example").unwrap());
        assert!(a.keep_report(&report("r.example"), now).unwrap());
        assert!(!b.keep_report(&report("r.example"), now).unwrap());
        assert!(a.day_done(day, "r.example").unwrap());
        assert_eq!(
            b.report(day, "r.example").unwrap().unwrap().report_id,
            report("r.example").report_id
        );
        assert!(
            a.queue(day, "r.example", "mailto:t@r.example", now)
                .unwrap()
        );
        assert!(
            !b.queue(day, "r.example", "mailto:t@r.example", now)
                .unwrap()
        );
        // A failure: due again at next_try, taken by one sender only.
        let later = now + Duration::from_secs(600);
        a.finish(
            day,
            "r.example",
            "mailto:t@r.example",
            &Finish::Retry {
                detail: "sendmail exit 75".into(),
                next_try: later,
            },
            now,
        )
        .unwrap();
        assert!(b.take_due(None, now, 10).unwrap().is_empty());
        let taken = b.take_due(Some(day), later, 10).unwrap();
        assert_eq!(taken.len(), 1);
        assert_eq!(taken[0].attempts, 1);
        assert!(a.take_due(None, later, 10).unwrap().is_empty());
        b.finish(
            day,
            "r.example",
            "mailto:t@r.example",
            &Finish::Sent("queued".into()),
            later,
        )
        .unwrap();
        let rows = a.outbox(day, None).unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].state, OutState::Sent);
        assert_eq!(rows[0].attempts, 2);
        assert!(a.is_report_recipient("T@r.example", "2026-12-04").unwrap());
        assert!(!a.is_report_recipient("u@r.example", "2026-12-04").unwrap());
        assert!(!a.is_report_recipient("t@r.example", "2026-12-05").unwrap());
    }

    #[test]
    fn no_record_makes_the_day_done_and_an_interrupted_send_is_not_retried() {
        let dir = tempfile::tempdir().unwrap();
        let s = TlsRptStore::open(&dir.path().join("c.sqlite")).unwrap();
        let now = parse_day("2026-12-05").unwrap();
        assert!(
            s.no_record("2026-12-04", "n.example", "NXDOMAIN", now)
                .unwrap()
        );
        assert!(
            !s.no_record("2026-12-04", "n.example", "NXDOMAIN", now)
                .unwrap()
        );
        assert!(s.day_done("2026-12-04", "n.example").unwrap());
        assert!(
            s.queue("2026-12-04", "r.example", "https://r.example/v1", now)
                .unwrap()
        );
        // Not stale yet.
        assert!(s.interrupted(now, now).unwrap().is_empty());
        let later = now + Duration::from_secs(3600);
        let gone = s.interrupted(later, later).unwrap();
        assert_eq!(gone.len(), 1);
        let rows = s.outbox("2026-12-04", Some("r.example")).unwrap();
        assert_eq!(rows[0].state, OutState::Failed);
        assert!(rows[0].detail.contains("interrupted"));
        assert!(s.take_due(None, later, 10).unwrap().is_empty());
    }
}
