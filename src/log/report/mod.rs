//! `tls-policyd report`: the TLS posture per recipient domain, read from
//! the delivery outcome records of the decision log.
//!
//! The parts: `aggregate` counts the records of a window (pure), `text`
//! prints the result as a table, `html` as one self-contained page whose
//! script draws the tables and the charts from the report's JSON.
//!
//! The log is read as `tls-policyd log` reads it ([`crate::log::reader`]):
//! streamed, rotated and compressed files included. Records before the
//! window are read too, for how long a recipient has been held; memory
//! grows with the messages in the window and the recipients ever held.

mod aggregate;
mod html;
mod text;

use std::path::PathBuf;
use std::time::SystemTime;

use crate::log::reader::{self, LogQuery, ReadError, RunStats};

pub use aggregate::{
    Aggregator, Bucket, Bucketing, DomainPosture, HeldRecipient, Posture, Report, share,
    tenths_of_percent,
};
pub use html::html;
pub use text::{format_age, text};

/// What to read and which window to report on.
#[derive(Debug, Clone)]
pub struct ReportQuery {
    /// Files to read, in this order (see [`reader::rotated_files`]).
    pub files: Vec<PathBuf>,
    /// First instant of the window.
    pub since: SystemTime,
    /// End of the window, not included.
    pub until: SystemTime,
    /// Only this recipient domain (see [`reader::normalize_domain`]).
    pub domain: Option<String>,
}

/// Why there is no report.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error(transparent)]
    Read(#[from] ReadError),
    #[error("the window is empty: --until {until} is not after --since {since}")]
    EmptyWindow { since: String, until: String },
}

/// Reads the delivery records of `query.files` and reports on the window.
///
/// # Errors
///
/// An empty window, an invalid domain, a file that cannot be opened or
/// read. Malformed lines are counted in [`RunStats::bad_lines`].
pub fn build(query: &ReportQuery) -> Result<(Report, RunStats), ReportError> {
    if query.until <= query.since {
        return Err(ReportError::EmptyWindow {
            since: humantime::format_rfc3339_micros(query.since).to_string(),
            until: humantime::format_rfc3339_micros(query.until).to_string(),
        });
    }
    let log = LogQuery {
        files: query.files.clone(),
        domain: query.domain.clone(),
        outcomes: true,
        ..LogQuery::default()
    };
    let mut agg = Aggregator::new(query.since, query.until);
    let stats = reader::read_deliveries(&log, &mut |d| agg.add(d))?;
    Ok((agg.finish(), stats))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn at(s: &str) -> SystemTime {
        humantime::parse_rfc3339(s).unwrap()
    }

    const LINES: [&str; 4] = [
        r#"{"ts":"2026-12-05T09:00:00.000000Z","frontend":"delivery","queue_id":"Q1","recipient":"a@forced.test","domain":"forced.test","status":"deferred","dsn":"4.7.4","tls_trust":"none","decided_by":"socketmap","tls":"forced","level":"encrypt","verdict":"held","logged_at":"2026-12-05T09:00:00Z"}"#,
        r#"{"ts":"2026-12-05T10:00:00.000000Z","frontend":"socketmap","key":"forced.test","domain":"forced.test","tls":"forced","level":"encrypt","reply":"OK","source":"static"}"#,
        r#"{"ts":"2026-12-05T10:30:00.000000Z","frontend":"delivery","queue_id":"Q2","recipient":"b@other.test","domain":"other.test","status":"sent","dsn":"2.0.0","tls_trust":"trusted","decided_by":"socketmap","tls":"opportunistic","level":"may","verdict":"encrypted","logged_at":"2026-12-05T10:30:00Z"}"#,
        r#"{"ts":"2026-12-05T10:45:00.000000Z","frontend":"delivery","queue_id":"Q1","recipient":"a@forced.test","domain":"forced.test","status":"deferred","dsn":"4.7.4","tls_trust":"none","decided_by":"socketmap","tls":"forced","level":"encrypt","verdict":"held","logged_at":"2026-12-05T10:45:00Z"}"#,
    ];

    fn query(dir: &tempfile::TempDir, domain: Option<&str>) -> ReportQuery {
        let path = dir.path().join("decisions.jsonl");
        let mut f = std::fs::File::create(&path).unwrap();
        for l in LINES {
            writeln!(f, "{l}").unwrap();
        }
        writeln!(f, "not json").unwrap();
        ReportQuery {
            files: vec![path],
            since: at("2026-12-05T10:00:00Z"),
            until: at("2026-12-05T11:00:00Z"),
            domain: domain.map(str::to_owned),
        }
    }

    #[test]
    fn build_reads_the_delivery_records_of_the_files() {
        let dir = tempfile::tempdir().unwrap();
        let (r, stats) = build(&query(&dir, None)).unwrap();
        assert_eq!((stats.lines, stats.matched, stats.bad_lines), (5, 3, 0));
        assert_eq!(r.records, 2);
        assert_eq!((r.totals.messages, r.totals.held), (2, 1));
        // Held since its first record, before the window.
        let oldest = r.totals.oldest_held.unwrap();
        assert_eq!((oldest.queue_id.as_str(), oldest.age_seconds), ("Q1", 7200));

        let (r, _) = build(&query(&dir, Some("other.test"))).unwrap();
        assert_eq!((r.records, r.totals.held, r.domains.len()), (1, 0, 1));
    }

    #[test]
    fn build_refuses_an_empty_window_and_a_bad_domain() {
        let dir = tempfile::tempdir().unwrap();
        let mut q = query(&dir, None);
        q.until = q.since;
        assert_eq!(
            build(&q).unwrap_err().to_string(),
            "the window is empty: --until 2026-12-05T10:00:00.000000Z is not after \
             --since 2026-12-05T10:00:00.000000Z"
        );
        let q = query(&dir, Some("a b"));
        assert!(matches!(
            build(&q).unwrap_err(),
            ReportError::Read(ReadError::BadDomain { .. })
        ));
    }
}
