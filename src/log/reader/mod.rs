//! Reader behind `tls-policyd log`: streams the daemon's decision logs (JSON
//! lines, possibly rotated and gzip-compressed by logrotate), filters them
//! and prints the matches as a table, as the raw JSON lines, or as a summary.
//! [`read_deliveries`] hands the delivery outcome records to a caller
//! instead (`tls-policyd report`).
//!
//! Everything is streaming. One line buffer is reused for the whole run and
//! each record is deserialised with strings borrowed from that buffer, so
//! memory stays flat however large the logs are; the summary only keeps one
//! counter per distinct value.
//!
//! The parts: `values` checks the command-line filter values, `input` finds
//! the rotated files and reads their lines, `record` parses a line, `filter`
//! decides whether it matches, `table` and `summary` print the matches, and
//! `delivery` is the view of a delivery record given to other modules.

mod delivery;
mod filter;
mod input;
mod record;
mod summary;
mod table;
mod values;

use std::io::{self, BufWriter, Write};
use std::path::PathBuf;
use std::time::SystemTime;

use filter::Filter;
use input::{next_line, open_log};
use record::Record;
use summary::Summary;
use table::{Layout, write_table_header, write_table_row};

pub use delivery::{Delivery, read_deliveries};
pub use input::rotated_files;
pub use values::{Verdict, normalize_domain, parse_since, parse_tls, parse_until, parse_verdict};

/// Read/write buffer size; large buffers matter for multi-GB logs.
const BUF_SIZE: usize = 64 * 1024;

/// What to read and which records to keep. A record must pass every filter.
#[derive(Debug, Clone, Default)]
pub struct LogQuery {
    /// Files to read, in this order (see [`rotated_files`]).
    pub files: Vec<PathBuf>,
    /// Recipient domain. Case-insensitive, a trailing dot is ignored and
    /// U-labels are converted to A-labels, so `bücher.example` finds records
    /// for `xn--bcher-kva.example`.
    pub domain: Option<String>,
    /// Exact Postfix queue id (policy and milter front ends only).
    pub queue_id: Option<String>,
    /// Keep records with `ts >= since` (see [`parse_since`]).
    pub since: Option<SystemTime>,
    /// `"forced"` or `"opportunistic"` (see [`parse_tls`]).
    pub tls: Option<String>,
    /// Only delivery outcome records (`frontend` `"delivery"`).
    pub outcomes: bool,
    /// Only delivery records with one of these verdicts (implies
    /// `outcomes`); any verdict when empty.
    pub verdicts: Vec<Verdict>,
}

impl LogQuery {
    /// Whether only delivery records can match.
    pub fn deliveries_only(&self) -> bool {
        self.outcomes || !self.verdicts.is_empty()
    }
}

/// How matching records are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputFormat {
    /// Header plus one fixed-width row per record (the delivery columns
    /// when only delivery records can match).
    Table,
    /// Each matching line exactly as it appears in the log.
    Json,
    /// Totals by tls, source, level and top domains, and by verdict when
    /// delivery records matched, printed at the end.
    Summary,
}

/// Counters for one [`run`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RunStats {
    /// Lines read from all files (including blank and bad ones).
    pub lines: u64,
    /// Records that passed every filter.
    pub matched: u64,
    /// Lines that were examined but are not usable records: not JSON, no or
    /// unparsable `ts`, overlong, truncated. Lines discarded by the cheap
    /// `--domain`/`--queue-id` byte prefilter are never parsed, so garbage
    /// among them is not counted here.
    pub bad_lines: u64,
}

/// Errors from reading logs or from parsing command-line filter values.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("cannot open {}: {err}", path.display())]
    Open { path: PathBuf, err: io::Error },
    #[error("cannot read {}: {err}", path.display())]
    Read { path: PathBuf, err: io::Error },
    #[error("cannot write output: {0}")]
    Write(io::Error),
    #[error("bad --since value {value:?}: {reason}")]
    BadSince { value: String, reason: String },
    #[error("bad --until value {value:?}: {reason}")]
    BadUntil { value: String, reason: String },
    #[error("bad --tls value {value:?}: expected \"forced\" or \"opportunistic\"")]
    BadTls { value: String },
    #[error("bad --verdict value {value:?}: expected one of {}", Verdict::names())]
    BadVerdict { value: String },
    #[error("bad --domain value {value:?}: {reason}")]
    BadDomain { value: String, reason: String },
}

/// Reads `query.files` in order and writes the matching records to `out`.
///
/// Output is buffered internally. A closed pipe on the output (`| head`)
/// ends the run quietly with `Ok` and the counts so far.
///
/// # Errors
///
/// Invalid `domain`/`tls` values in the query, a file that cannot be opened
/// or read (including corrupt gzip data), or a failure writing `out`.
/// Malformed lines are not errors; they are counted in
/// [`RunStats::bad_lines`].
pub fn run(
    query: &LogQuery,
    format: OutputFormat,
    out: &mut dyn Write,
) -> Result<RunStats, ReadError> {
    let filter = Filter::new(query)?;
    let mut out = BufWriter::with_capacity(BUF_SIZE, out);
    let mut stats = RunStats::default();
    match run_inner(query, &filter, format, &mut out, &mut stats) {
        Ok(()) | Err(Stop::Quiet) => Ok(stats),
        Err(Stop::Fail(e)) => Err(e),
    }
}

/// Why processing ended early.
enum Stop {
    /// The reader of our output went away; not an error.
    Quiet,
    Fail(ReadError),
}

impl From<io::Error> for Stop {
    /// Only for errors writing the output.
    fn from(e: io::Error) -> Self {
        if e.kind() == io::ErrorKind::BrokenPipe {
            Stop::Quiet
        } else {
            Stop::Fail(ReadError::Write(e))
        }
    }
}

impl From<ReadError> for Stop {
    fn from(e: ReadError) -> Self {
        Stop::Fail(e)
    }
}

fn run_inner(
    query: &LogQuery,
    filter: &Filter,
    format: OutputFormat,
    out: &mut dyn Write,
    stats: &mut RunStats,
) -> Result<(), Stop> {
    let mut summary = Summary::default();
    let layout = if query.deliveries_only() {
        Layout::Deliveries
    } else {
        Layout::Decisions
    };
    if format == OutputFormat::Table {
        write_table_header(out, layout)?;
    }
    scan(&query.files, filter, stats, &mut |rec, ts, line| {
        match format {
            OutputFormat::Json => {
                out.write_all(line)?;
                out.write_all(b"\n")?;
            }
            OutputFormat::Table => write_table_row(out, layout, rec)?,
            OutputFormat::Summary => summary.add(rec, ts),
        }
        Ok(())
    })?;
    if format == OutputFormat::Summary {
        summary.write(out, stats)?;
    }
    out.flush()?;
    Ok(())
}

/// What [`scan`] calls with each matching record, its time and its line.
/// Hands every record line of `files` (read in order) stamped at or
/// after `since` to `each`, with its time: for a reader of its own fields
/// (the outcome follower notes earlier decisions this way).
///
/// # Errors
///
/// A file that cannot be opened or read. Malformed lines are counted in
/// [`RunStats::bad_lines`].
pub fn read_lines_since(
    files: &[PathBuf],
    since: SystemTime,
    each: &mut dyn FnMut(&[u8], SystemTime),
) -> Result<RunStats, ReadError> {
    let query = LogQuery {
        since: Some(since),
        ..LogQuery::default()
    };
    let filter = Filter::new(&query)?;
    let mut stats = RunStats::default();
    let result = scan(files, &filter, &mut stats, &mut |_, ts, line| {
        each(line, ts);
        Ok(())
    });
    match result {
        Ok(()) | Err(Stop::Quiet) => Ok(stats),
        Err(Stop::Fail(e)) => Err(e),
    }
}

type EachRecord<'f> = dyn FnMut(&Record<'_>, SystemTime, &[u8]) -> Result<(), Stop> + 'f;

/// Reads `files` in order and hands every usable record that passes
/// `filter` to `each`, with its time and its line as read; counts lines,
/// matches and bad lines in `stats`.
fn scan(
    files: &[PathBuf],
    filter: &Filter,
    stats: &mut RunStats,
    each: &mut EachRecord<'_>,
) -> Result<(), Stop> {
    let mut buf = Vec::with_capacity(1024);
    for path in files {
        let mut reader = open_log(path)?;
        loop {
            let overlong = match next_line(&mut *reader, &mut buf) {
                Ok(Some(overlong)) => overlong,
                Ok(None) => break,
                Err(err) => {
                    return Err(Stop::Fail(ReadError::Read {
                        path: path.clone(),
                        err,
                    }));
                }
            };
            stats.lines += 1;
            if overlong {
                stats.bad_lines += 1;
                continue;
            }
            let line = buf.strip_suffix(b"\r").unwrap_or(&buf);
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            if !filter.prefilter(line) {
                continue;
            }
            let Ok(rec) = serde_json::from_slice::<Record<'_>>(line) else {
                stats.bad_lines += 1;
                continue;
            };
            let Some(ts) = rec
                .ts
                .as_ref()
                .and_then(|t| humantime::parse_rfc3339(&t.0).ok())
            else {
                stats.bad_lines += 1;
                continue;
            };
            if !filter.matches(&rec, ts) {
                continue;
            }
            stats.matched += 1;
            each(&rec, ts, line)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod fixture;

#[cfg(test)]
mod tests {
    use super::fixture::{
        L1, L2, L3, L6, L7, L8, fixture_query, gzip, matched_lines, read_one, run_to_string,
        stats_of, write_file,
    };
    use super::*;
    use tempfile::TempDir;

    #[test]
    fn no_filter_reads_everything() {
        let (_dir, q) = fixture_query(|_| {});
        let (stats, out) = run_to_string(&q, OutputFormat::Json);
        assert_eq!(stats, stats_of(9, 6, 2));
        assert_eq!(
            out,
            [L1, L2, L3, L6, L7, L8].map(|l| format!("{l}\n")).concat()
        );
    }

    #[test]
    fn json_output_is_verbatim() {
        let lines = matched_lines(|q| q.domain = Some("bank.example".into()));
        assert_eq!(lines, vec![L1.to_owned(), L7.to_owned()]);
    }

    #[test]
    fn bad_lines_are_counted_not_fatal() {
        let mut data = Vec::new();
        for l in [
            L1,
            "{",
            "[1,2,3]",
            "42",
            r#"{"ts":"yesterday","domain":"a.example"}"#,
            r#"{"ts":12345}"#,
            r#"{"ts":null}"#,
            r#"{"domain":"a.example"}"#,
            r#"{"ts":"2026-11-24T10:00:00Z","queue_id":7}"#,
            L2,
        ] {
            data.extend_from_slice(l.as_bytes());
            data.push(b'\n');
        }
        data.extend_from_slice(b"\xff\xfe not utf-8 \x80\n");
        data.extend_from_slice(b"   \n\r\n");
        let (stats, out) = read_one("bad.jsonl", &data);
        assert_eq!(stats, stats_of(13, 2, 9));
        assert_eq!(out, format!("{L1}\n{L2}\n"));
    }

    #[test]
    fn files_are_read_in_the_given_order() {
        let dir = TempDir::new().unwrap();
        let a = write_file(&dir, "a", format!("{L8}\n").as_bytes());
        let b = write_file(&dir, "b", &gzip(format!("{L1}\n{L2}\n").as_bytes()));
        let q = LogQuery {
            files: vec![a, b],
            ..LogQuery::default()
        };
        let (stats, out) = run_to_string(&q, OutputFormat::Json);
        assert_eq!(stats.lines, 3);
        assert_eq!(out, format!("{L8}\n{L1}\n{L2}\n"));
    }

    /// Accepts `limit` bytes, then fails every write with `kind`.
    struct FailingWriter {
        written: Vec<u8>,
        limit: usize,
        kind: io::ErrorKind,
    }

    impl Write for FailingWriter {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            let room = self.limit - self.written.len();
            if room == 0 {
                return Err(io::Error::from(self.kind));
            }
            let n = room.min(buf.len());
            self.written.extend_from_slice(&buf[..n]);
            Ok(n)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn broken_pipe_stops_quietly() {
        let dir = TempDir::new().unwrap();
        // Well over the internal buffer so the pipe breaks mid-run.
        let data = format!("{L1}\n").repeat(2000);
        let p = write_file(&dir, "big.jsonl", data.as_bytes());
        let q = LogQuery {
            files: vec![p],
            ..LogQuery::default()
        };
        let mut w = FailingWriter {
            written: Vec::new(),
            limit: 1000,
            kind: io::ErrorKind::BrokenPipe,
        };
        let stats = run(&q, OutputFormat::Json, &mut w).unwrap();
        assert!(stats.matched < 2000, "{stats:?}");
        assert_eq!(w.written.len(), 1000);

        // Also when the pipe breaks on the final flush.
        let (_dir, q) = fixture_query(|_| {});
        let mut w = FailingWriter {
            written: Vec::new(),
            limit: 0,
            kind: io::ErrorKind::BrokenPipe,
        };
        let stats = run(&q, OutputFormat::Summary, &mut w).unwrap();
        assert_eq!(stats.matched, 6);
    }

    #[test]
    fn other_write_errors_are_reported() {
        let (_dir, q) = fixture_query(|_| {});
        let mut w = FailingWriter {
            written: Vec::new(),
            limit: 0,
            kind: io::ErrorKind::StorageFull,
        };
        let err = run(&q, OutputFormat::Table, &mut w).unwrap_err();
        assert!(matches!(err, ReadError::Write(_)), "{err:?}");
        assert!(
            err.to_string().starts_with("cannot write output: "),
            "{err}"
        );
    }
}
