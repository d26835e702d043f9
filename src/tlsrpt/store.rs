//! TLS-RPT's share of the SQLite file: each counted session, once, and
//! what was sent. Sessions are kept one row per delivery attempt, keyed
//! by the attempt (queue id, recipient, time and relay as Postfix logged
//! them), so a line read twice (a restart between reading and saving the
//! log position) is counted once; a day's counts are summed when its
//! report is built.
//!
//! ```sql
//! CREATE TABLE tlsrpt_sessions (
//!     day     TEXT NOT NULL,   -- YYYY-MM-DD, UTC
//!     domain  TEXT NOT NULL,   -- the policy domain (recipient domain)
//!     attempt TEXT NOT NULL,   -- the delivery attempt
//!     policy  TEXT NOT NULL,   -- JSON: the applied policy
//!     failure TEXT,            -- JSON: the failure's details; NULL: successful
//!     PRIMARY KEY (day, domain, attempt)
//! ) WITHOUT ROWID;
//! ```
//!
//! The reports built and where they went are in [`super::outbox`]'s
//! tables, the `_smtp._tls` records looked up in [`super::directory`]'s.
//! ```

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rusqlite::{Connection, params};

use super::report::{AppliedPolicy, DayCounts, FailureKey, day_name};
use super::session::{Session, SessionResult};

/// How long a statement waits for another process's lock.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TlsRptStoreError {
    #[error("TLS-RPT store {}: {problem}", path.display())]
    Sql { path: PathBuf, problem: String },
}

/// The TLS-RPT tables of the cache file.
pub struct TlsRptStore {
    pub(super) conn: Connection,
    path: PathBuf,
}

impl TlsRptStore {
    /// Open `path` (created when missing), creating the tables.
    pub fn open(path: &Path) -> Result<TlsRptStore, TlsRptStoreError> {
        let err = |e: rusqlite::Error| TlsRptStoreError::Sql {
            path: path.to_path_buf(),
            problem: e.to_string(),
        };
        let conn = Connection::open(path).map_err(err)?;
        conn.busy_timeout(BUSY_TIMEOUT).map_err(err)?;
        conn.query_row("PRAGMA journal_mode = WAL", [], |_| Ok(()))
            .map_err(err)?;
        // A commit per counted session: durable when the daemon dies,
        // without waiting for the disk each time.
        conn.execute_batch("PRAGMA synchronous = NORMAL")
            .map_err(err)?;
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS tlsrpt_sessions (
                 day     TEXT NOT NULL,
                 domain  TEXT NOT NULL,
                 attempt TEXT NOT NULL,
                 policy  TEXT NOT NULL,
                 failure TEXT,
                 PRIMARY KEY (day, domain, attempt)
             ) WITHOUT ROWID;
             CREATE TABLE IF NOT EXISTS tlsrpt_reports (
                 day       TEXT NOT NULL,
                 domain    TEXT NOT NULL,
                 report_id TEXT NOT NULL,
                 json      TEXT NOT NULL,
                 built_at  INTEGER NOT NULL,
                 PRIMARY KEY (day, domain)
             ) WITHOUT ROWID;
             CREATE TABLE IF NOT EXISTS tlsrpt_outbox (
                 day         TEXT NOT NULL,
                 domain      TEXT NOT NULL,
                 destination TEXT NOT NULL,
                 state       TEXT NOT NULL,
                 attempts    INTEGER NOT NULL,
                 next_try    INTEGER NOT NULL,
                 updated_at  INTEGER NOT NULL,
                 detail      TEXT NOT NULL,
                 PRIMARY KEY (day, domain, destination)
             ) WITHOUT ROWID;
             CREATE TABLE IF NOT EXISTS tlsrpt_records (
                 domain  TEXT NOT NULL PRIMARY KEY,
                 record  TEXT,
                 problem TEXT,
                 expires INTEGER NOT NULL
             ) WITHOUT ROWID;",
        )
        .map_err(err)?;
        Ok(TlsRptStore {
            conn,
            path: path.to_path_buf(),
        })
    }

    pub(super) fn sql(&self, e: rusqlite::Error) -> TlsRptStoreError {
        TlsRptStoreError::Sql {
            path: self.path.clone(),
            problem: e.to_string(),
        }
    }

    /// Count `session`, the delivery attempt `attempt` logged at `at`.
    /// `false`: that attempt was counted already.
    pub fn add(
        &self,
        session: &Session,
        attempt: &str,
        at: SystemTime,
    ) -> Result<bool, TlsRptStoreError> {
        let policy = serde_json::to_string(&session.policy).unwrap_or_default();
        let failure = match &session.result {
            SessionResult::Successful => None,
            SessionResult::Failed(k) => Some(serde_json::to_string(k).unwrap_or_default()),
        };
        // Prepared once per connection: a session is counted per delivery.
        let n = self
            .conn
            .prepare_cached(
                "INSERT OR IGNORE INTO tlsrpt_sessions (day, domain, attempt, policy, failure)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
            )
            .and_then(|mut st| {
                st.execute(params![
                    day_name(at),
                    session.domain,
                    attempt,
                    policy,
                    failure
                ])
            })
            .map_err(|e| self.sql(e))?;
        Ok(n == 1)
    }

    /// The policy domains with sessions on `day` (`YYYY-MM-DD`), with
    /// their session counts.
    pub fn domains(&self, day: &str) -> Result<Vec<(String, u64)>, TlsRptStoreError> {
        let mut st = self
            .conn
            .prepare(
                "SELECT domain, COUNT(*) FROM tlsrpt_sessions WHERE day = ?1
                 GROUP BY domain ORDER BY domain",
            )
            .map_err(|e| self.sql(e))?;
        let rows = st
            .query_map(params![day], |r| {
                Ok((r.get(0)?, r.get::<_, i64>(1)? as u64))
            })
            .map_err(|e| self.sql(e))?;
        rows.collect::<Result<_, _>>().map_err(|e| self.sql(e))
    }

    /// What was counted for `domain` on `day`. Rows that do not parse
    /// (written by another version) are skipped and counted in the second
    /// value.
    pub fn counts(&self, day: &str, domain: &str) -> Result<(DayCounts, u64), TlsRptStoreError> {
        let mut st = self
            .conn
            .prepare(
                "SELECT policy, failure, COUNT(*) FROM tlsrpt_sessions
                 WHERE day = ?1 AND domain = ?2 GROUP BY policy, failure",
            )
            .map_err(|e| self.sql(e))?;
        let rows = st
            .query_map(params![day, domain], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, Option<String>>(1)?,
                    r.get::<_, i64>(2)? as u64,
                ))
            })
            .map_err(|e| self.sql(e))?;
        let mut counts = DayCounts::default();
        let mut bad = 0;
        for row in rows {
            let (policy, failure, n) = row.map_err(|e| self.sql(e))?;
            let Ok(policy) = serde_json::from_str::<AppliedPolicy>(&policy) else {
                bad += n;
                continue;
            };
            let entry = counts.policies.entry(policy).or_default();
            match failure {
                None => entry.successful += n,
                Some(f) => match serde_json::from_str::<FailureKey>(&f) {
                    Ok(k) => *entry.failures.entry(k).or_default() += n,
                    Err(_) => bad += n,
                },
            }
        }
        Ok((counts, bad))
    }

    /// Forget the sessions, reports and sendings of days before `day`,
    /// and records that expired before `now`.
    pub fn prune_before(&self, day: &str, now: SystemTime) -> Result<usize, TlsRptStoreError> {
        let mut n = 0;
        for table in ["tlsrpt_sessions", "tlsrpt_reports", "tlsrpt_outbox"] {
            n += self
                .conn
                .execute(&format!("DELETE FROM {table} WHERE day < ?1"), params![day])
                .map_err(|e| self.sql(e))?;
        }
        self.conn
            .execute(
                "DELETE FROM tlsrpt_records WHERE expires < ?1",
                params![unix(now)],
            )
            .map_err(|e| self.sql(e))?;
        Ok(n)
    }
}

/// Seconds since the epoch, as SQLite keeps them.
pub(super) fn unix(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()) as i64
}

/// [`unix`] back.
pub(super) fn from_unix(s: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(s.max(0) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tlsrpt::report::{PolicyType, ResultType, parse_day};

    fn policy(t: PolicyType) -> AppliedPolicy {
        AppliedPolicy {
            policy_type: t,
            policy_string: if t == PolicyType::Sts {
                vec!["version: STSv1".into(), "mode: enforce".into()]
            } else {
                vec![]
            },
            policy_domain: "rcpt.example".into(),
            mx_host: vec![],
        }
    }

    fn failed(rt: ResultType) -> SessionResult {
        SessionResult::Failed(FailureKey {
            result_type: rt,
            sending_mta_ip: None,
            receiving_mx_hostname: Some("mx.rcpt.example".into()),
            receiving_ip: Some("192.0.2.1".parse().unwrap()),
            failure_reason_code: None,
        })
    }

    fn session(t: PolicyType, result: SessionResult) -> Session {
        Session {
            domain: "rcpt.example".into(),
            policy: policy(t),
            result,
        }
    }

    #[test]
    fn each_attempt_counts_once_and_days_are_apart() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cache.sqlite");
        let day = parse_day("2026-12-04").unwrap();
        let noon = day + Duration::from_secs(12 * 3600);
        let s = TlsRptStore::open(&path).unwrap();
        let ok = session(PolicyType::Sts, SessionResult::Successful);
        assert!(s.add(&ok, "A1 a@rcpt.example 1", noon).unwrap());
        assert!(!s.add(&ok, "A1 a@rcpt.example 1", noon).unwrap());
        assert!(s.add(&ok, "A2 a@rcpt.example 1", noon).unwrap());
        let bad = session(PolicyType::Sts, failed(ResultType::StarttlsNotSupported));
        assert!(s.add(&bad, "A3 a@rcpt.example 1", noon).unwrap());
        let none = session(PolicyType::NoPolicyFound, SessionResult::Successful);
        assert!(s.add(&none, "A4 a@rcpt.example 1", noon).unwrap());
        // The next day.
        assert!(
            s.add(
                &ok,
                "A5 a@rcpt.example 1",
                day + Duration::from_secs(86_400)
            )
            .unwrap()
        );
        drop(s);
        // Reopened: the same counts.
        let s = TlsRptStore::open(&path).unwrap();
        assert_eq!(
            s.domains("2026-12-04").unwrap(),
            [("rcpt.example".into(), 4)]
        );
        let (c, skipped) = s.counts("2026-12-04", "rcpt.example").unwrap();
        assert_eq!(skipped, 0);
        let sts = &c.policies[&policy(PolicyType::Sts)];
        assert_eq!(sts.successful, 2);
        assert_eq!(sts.failed(), 1);
        assert_eq!(c.policies[&policy(PolicyType::NoPolicyFound)].successful, 1);
        assert_eq!(
            s.domains("2026-12-05").unwrap(),
            [("rcpt.example".into(), 1)]
        );
        assert_eq!(s.prune_before("2026-12-05", noon).unwrap(), 4);
        assert!(s.domains("2026-12-04").unwrap().is_empty());
    }

    #[test]
    fn a_row_of_another_version_is_skipped_and_counted() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.sqlite");
        let s = TlsRptStore::open(&path).unwrap();
        s.conn
            .execute(
                "INSERT INTO tlsrpt_sessions VALUES ('2026-12-04', 'r.example', 'x', '{\"policy-type\":\"future\"}', NULL)",
                [],
            )
            .unwrap();
        let (c, skipped) = s.counts("2026-12-04", "r.example").unwrap();
        assert!(c.policies.is_empty());
        assert_eq!(skipped, 1);
    }
}
