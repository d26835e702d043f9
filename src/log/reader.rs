//! Reader behind `tls-policyd log`: streams the daemon's decision logs (JSON
//! lines, possibly rotated and gzip-compressed by logrotate), filters them
//! and prints the matches as a table, as the raw JSON lines, or as a summary.
//!
//! Everything is streaming. One line buffer is reused for the whole run and
//! each record is deserialised with strings borrowed from that buffer, so
//! memory stays flat however large the logs are; the summary only keeps one
//! counter per distinct value.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;
use std::fs::{self, File};
use std::io::{self, BufRead, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use flate2::read::MultiGzDecoder;
use serde::Deserialize;
use serde::de::{self, Deserializer, Visitor};

/// Lines longer than this are counted as bad and skipped without being
/// buffered, so a corrupt or binary file cannot blow up memory. Real
/// decision records are a few hundred bytes.
const MAX_LINE: usize = 1 << 20;

/// Read/write buffer size; large buffers matter for multi-GB logs.
const BUF_SIZE: usize = 64 * 1024;

/// How many domains the summary lists.
const TOP_DOMAINS: usize = 20;

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
}

/// How matching records are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputFormat {
    /// Header plus one fixed-width row per record.
    Table,
    /// Each matching line exactly as it appears in the log.
    Json,
    /// Totals by tls, source, level and top domains, printed at the end.
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
    #[error("bad --tls value {value:?}: expected \"forced\" or \"opportunistic\"")]
    BadTls { value: String },
    #[error("bad --domain value {value:?}: {reason}")]
    BadDomain { value: String, reason: String },
}

/// Parses a `--since` value: an RFC 3339 time (`2026-11-24T10:00:00Z`,
/// fractional seconds and `+01:00` style offsets allowed, a bare date means
/// midnight UTC) or a duration such as `2h`, `30m`, `1d`, `1h30m`, meaning
/// that long before `now`.
///
/// # Errors
///
/// [`ReadError::BadSince`] when the value is neither.
pub fn parse_since(s: &str, now: SystemTime) -> Result<SystemTime, ReadError> {
    let bad = |reason: String| ReadError::BadSince {
        value: s.to_owned(),
        reason,
    };
    let v = s.trim();
    if v.is_empty() {
        return Err(bad("empty value".to_owned()));
    }
    if looks_like_timestamp(v) {
        return parse_timestamp(v).map_err(bad);
    }
    let d = humantime::parse_duration(v).map_err(|e| {
        bad(format!(
            "expected an RFC 3339 time such as 2026-11-24T10:00:00Z \
             or a duration such as 2h, 30m, 1d ({e})"
        ))
    })?;
    now.checked_sub(d)
        .ok_or_else(|| bad("duration too large".to_owned()))
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

/// Returns the live log `path` preceded by its rotated siblings, oldest
/// first: dateext names (`NAME-YYYYMMDD[.gz]`, by date), then numbered ones
/// (`NAME.N[.gz]`, highest N first). The live file is left out only when it
/// does not exist while rotated files do (e.g. the daemon has been stopped
/// after a rotation); with nothing rotated it is always returned so that
/// opening it reports a clear error.
pub fn rotated_files(path: &Path) -> Vec<PathBuf> {
    let live = path.to_path_buf();
    let Some(base) = path.file_name() else {
        return vec![live];
    };
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let Ok(entries) = fs::read_dir(dir) else {
        return vec![live];
    };
    let base = base.as_encoded_bytes();

    // (date stamp, compressed, path) and (number, compressed, path); the
    // flag makes `NAME.2` sort before `NAME.2.gz` when both exist (a
    // compression in progress) so the order is deterministic.
    let mut dated: Vec<(Vec<u8>, bool, PathBuf)> = Vec::new();
    let mut numbered: Vec<(u64, bool, PathBuf)> = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(rest) = name.as_encoded_bytes().strip_prefix(base) else {
            continue;
        };
        let (rest, gz) = match rest.strip_suffix(b".gz") {
            Some(r) => (r, true),
            None => (rest, false),
        };
        let sibling = path.with_file_name(&name);
        // Directories and other oddities with a matching name are not logs.
        let is_file = || fs::metadata(&sibling).is_ok_and(|m| m.is_file());
        if let Some(num) = rest.strip_prefix(b".") {
            if let Some(n) = parse_rotation_number(num) {
                if is_file() {
                    numbered.push((n, gz, sibling));
                }
            }
        } else if let Some(stamp) = rest.strip_prefix(b"-") {
            // dateformat is configurable (-%Y%m%d, -%Y%m%d-%H, -%s, ...);
            // all of them are digits and separators that sort as text.
            let date_like = stamp.first().is_some_and(u8::is_ascii_digit)
                && stamp
                    .iter()
                    .all(|&c| c.is_ascii_digit() || c == b'-' || c == b'_');
            if date_like && is_file() {
                dated.push((stamp.to_vec(), gz, sibling));
            }
        }
    }
    dated.sort();
    numbered.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));

    let mut files: Vec<PathBuf> = dated
        .into_iter()
        .map(|(_, _, p)| p)
        .chain(numbered.into_iter().map(|(_, _, p)| p))
        .collect();
    if files.is_empty() || path.exists() {
        files.push(live);
    }
    files
}

fn parse_rotation_number(num: &[u8]) -> Option<u64> {
    if num.is_empty() || num.len() > 19 || !num.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(num.iter().fold(0, |acc, &d| acc * 10 + u64::from(d - b'0')))
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
    if format == OutputFormat::Table {
        write_table_header(out)?;
    }
    let mut buf = Vec::with_capacity(1024);
    for path in &query.files {
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
            match format {
                OutputFormat::Json => {
                    out.write_all(line)?;
                    out.write_all(b"\n")?;
                }
                OutputFormat::Table => write_table_row(out, &rec)?,
                OutputFormat::Summary => summary.add(&rec, ts),
            }
        }
    }
    if format == OutputFormat::Summary {
        summary.write(out, stats)?;
    }
    out.flush()?;
    Ok(())
}

/// Opens a log file, transparently decompressing gzip. Compression is
/// detected from the magic bytes, not the name, so `NAME.1` compressed by
/// hand or `NAME.2.gz` left uncompressed both work.
fn open_log(path: &Path) -> Result<Box<dyn BufRead>, ReadError> {
    let mut file = File::open(path).map_err(|err| ReadError::Open {
        path: path.to_owned(),
        err,
    })?;
    let mut magic = [0u8; 2];
    let n = read_up_to(&mut file, &mut magic).map_err(|err| ReadError::Read {
        path: path.to_owned(),
        err,
    })?;
    // Put the sniffed bytes back in front instead of seeking, so that
    // non-seekable paths (a FIFO, /dev/stdin) work too.
    let src = io::Cursor::new(magic).take(n as u64).chain(file);
    if magic[..n] == [0x1f, 0x8b] {
        Ok(Box::new(BufReader::with_capacity(
            BUF_SIZE,
            MultiGzDecoder::new(src),
        )))
    } else {
        Ok(Box::new(BufReader::with_capacity(BUF_SIZE, src)))
    }
}

/// Like `read_exact` but stops early at end of file; returns bytes read.
fn read_up_to(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// Reads the next line into `buf` (cleared first, newline stripped).
/// Returns `None` at end of input, otherwise whether the line exceeded
/// [`MAX_LINE`]; the excess of an overlong line is consumed but not kept.
/// A last line without a newline is returned as is.
fn next_line(r: &mut dyn BufRead, buf: &mut Vec<u8>) -> io::Result<Option<bool>> {
    buf.clear();
    let mut overlong = false;
    let mut got_any = false;
    loop {
        let chunk = match r.fill_buf() {
            Ok(c) => c,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if chunk.is_empty() {
            return Ok(got_any.then_some(overlong));
        }
        got_any = true;
        let (data, used, done) = match chunk.iter().position(|&b| b == b'\n') {
            Some(i) => (&chunk[..i], i + 1, true),
            None => (chunk, chunk.len(), false),
        };
        if !overlong {
            if buf.len() + data.len() > MAX_LINE {
                overlong = true;
                buf.clear();
            } else {
                buf.extend_from_slice(data);
            }
        }
        r.consume(used);
        if done {
            return Ok(Some(overlong));
        }
    }
}

/// One decision record. Only the fields the reader uses; everything else
/// (rule, key, map, sender, recipients, future additions) is ignored.
#[derive(Debug, Deserialize)]
struct Record<'a> {
    #[serde(borrow)]
    ts: Option<Text<'a>>,
    #[serde(borrow)]
    frontend: Option<Text<'a>>,
    #[serde(borrow)]
    queue_id: Option<Text<'a>>,
    #[serde(borrow)]
    domain: Option<Text<'a>>,
    #[serde(borrow)]
    tls: Option<Text<'a>>,
    #[serde(borrow)]
    level: Option<Text<'a>>,
    #[serde(borrow)]
    policy: Option<Text<'a>>,
    #[serde(borrow)]
    source: Option<Text<'a>>,
    #[serde(borrow)]
    reason: Option<Text<'a>>,
}

impl Record<'_> {
    /// The effective Postfix level: `policy` when present, else `level`.
    fn effective_level(&self) -> Option<&str> {
        text(&self.policy).or(text(&self.level))
    }
}

/// A JSON string borrowed from the input line, or owned when the JSON text
/// contains escapes. serde's own `#[serde(borrow)]` special case only covers
/// a bare `Cow<str>`, not `Option<Cow<str>>`, hence this newtype.
#[derive(Debug)]
struct Text<'a>(Cow<'a, str>);

impl<'de: 'a, 'a> Deserialize<'de> for Text<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct TextVisitor;
        impl<'de> Visitor<'de> for TextVisitor {
            type Value = Text<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Text(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Text(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
                Ok(Text(Cow::Owned(v)))
            }
        }
        d.deserialize_str(TextVisitor)
    }
}

/// The string value of an optional field.
fn text<'r>(t: &'r Option<Text<'_>>) -> Option<&'r str> {
    t.as_ref().map(|t| &*t.0)
}

/// The query compiled for fast matching.
struct Filter {
    /// Normalised A-label.
    domain: Option<String>,
    queue_id: Option<String>,
    /// The queue id as it appears inside the JSON line, if it needs no
    /// escaping there (always true for real queue ids).
    queue_id_needle: Option<String>,
    since: Option<SystemTime>,
    tls: Option<String>,
}

impl Filter {
    fn new(q: &LogQuery) -> Result<Self, ReadError> {
        let domain = q.domain.as_deref().map(normalize_domain).transpose()?;
        let tls = q.tls.as_deref().map(parse_tls).transpose()?;
        let queue_id_needle = q.queue_id.clone().filter(|id| {
            !id.is_empty() && id.chars().all(|c| !c.is_control() && c != '"' && c != '\\')
        });
        Ok(Filter {
            domain,
            queue_id: q.queue_id.clone(),
            queue_id_needle,
            since: q.since,
            tls,
        })
    }

    /// Cheap byte test run before JSON parsing; false means the line cannot
    /// match. The daemon writes `domain` as a lower-case A-label (pure
    /// ASCII, no escapes), so searching the raw line for the normalised
    /// domain is exact enough; the real comparison happens in `matches`.
    fn prefilter(&self, line: &[u8]) -> bool {
        if let Some(d) = &self.domain {
            if !contains_ignore_ascii_case(line, d.as_bytes()) {
                return false;
            }
        }
        if let Some(id) = &self.queue_id_needle {
            if !contains(line, id.as_bytes()) {
                return false;
            }
        }
        true
    }

    fn matches(&self, rec: &Record<'_>, ts: SystemTime) -> bool {
        if self.since.is_some_and(|since| ts < since) {
            return false;
        }
        if let Some(want) = &self.domain {
            let Some(d) = &rec.domain else {
                return false;
            };
            let d = d.0.strip_suffix('.').unwrap_or(&d.0);
            if !d.eq_ignore_ascii_case(want) {
                return false;
            }
        }
        if let Some(want) = &self.queue_id {
            if text(&rec.queue_id) != Some(want.as_str()) {
                return false;
            }
        }
        if let Some(want) = &self.tls {
            if !rec
                .tls
                .as_ref()
                .is_some_and(|t| t.0.eq_ignore_ascii_case(want))
            {
                return false;
            }
        }
        true
    }
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || hay.windows(needle.len()).any(|w| w == needle)
}

/// Case-insensitive (ASCII) substring test; `needle` must be lower-case.
fn contains_ignore_ascii_case(hay: &[u8], needle: &[u8]) -> bool {
    let Some((&first, _)) = needle.split_first() else {
        return true;
    };
    let first_upper = first.to_ascii_uppercase();
    hay.windows(needle.len())
        .any(|w| (w[0] == first || w[0] == first_upper) && w.eq_ignore_ascii_case(needle))
}

/// Replaces control characters so a hostile or odd value cannot break the
/// table layout or the terminal; borrows when nothing needs replacing.
fn clean(s: &str) -> Cow<'_, str> {
    if s.chars().any(char::is_control) {
        Cow::Owned(
            s.chars()
                .map(|c| if c.is_control() { ' ' } else { c })
                .collect(),
        )
    } else {
        Cow::Borrowed(s)
    }
}

fn cell(t: Option<&str>) -> Cow<'_, str> {
    match t {
        Some(s) if !s.is_empty() => clean(s),
        _ => Cow::Borrowed("-"),
    }
}

// Column widths. Rows are streamed, so widths are fixed; longer values are
// printed whole and shift the rest of that row.
const W_TS: usize = 27; // 2026-11-24T14:03:07.123456Z
const W_FRONTEND: usize = 9;
const W_QUEUE_ID: usize = 12;
const W_DOMAIN: usize = 30;
const W_TLS: usize = 13;
const W_LEVEL: usize = 20;
const W_SOURCE: usize = 8;

/// Writes one table line; `c` holds the eight columns in header order.
fn write_columns(out: &mut dyn Write, c: [&str; 8]) -> io::Result<()> {
    let [ts, frontend, queue_id, domain, tls, level, source, reason] = c;
    writeln!(
        out,
        "{ts:<W_TS$} {frontend:<W_FRONTEND$} {queue_id:<W_QUEUE_ID$} {domain:<W_DOMAIN$} \
         {tls:<W_TLS$} {level:<W_LEVEL$} {source:<W_SOURCE$} {reason}"
    )
}

fn write_table_header(out: &mut dyn Write) -> io::Result<()> {
    write_columns(
        out,
        [
            "TS", "FRONTEND", "QUEUE_ID", "DOMAIN", "TLS", "LEVEL", "SOURCE", "REASON",
        ],
    )
}

fn write_table_row(out: &mut dyn Write, rec: &Record<'_>) -> io::Result<()> {
    write_columns(
        out,
        [
            &cell(text(&rec.ts)),
            &cell(text(&rec.frontend)),
            &cell(text(&rec.queue_id)),
            &cell(text(&rec.domain)),
            &cell(text(&rec.tls)),
            &cell(rec.effective_level()),
            &cell(text(&rec.source)),
            &cell(text(&rec.reason)),
        ],
    )
}

/// Occurrences per distinct value.
#[derive(Default)]
struct Counter(HashMap<String, u64>);

impl Counter {
    fn add(&mut self, key: Option<&str>) {
        let key = match key {
            Some(k) if !k.is_empty() => k,
            _ => "-",
        };
        // Look up by &str first so known values cost no allocation.
        if let Some(n) = self.0.get_mut(key) {
            *n += 1;
        } else {
            self.0.insert(key.to_owned(), 1);
        }
    }

    /// By count descending, then by name.
    fn sorted(&self) -> Vec<(&str, u64)> {
        let mut v: Vec<(&str, u64)> = self.0.iter().map(|(k, &n)| (k.as_str(), n)).collect();
        v.sort_unstable_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(b.0)));
        v
    }
}

#[derive(Default)]
struct Summary {
    tls: Counter,
    source: Counter,
    level: Counter,
    domain: Counter,
    first: Option<SystemTime>,
    last: Option<SystemTime>,
}

impl Summary {
    fn add(&mut self, rec: &Record<'_>, ts: SystemTime) {
        self.tls.add(text(&rec.tls));
        self.source.add(text(&rec.source));
        self.level.add(rec.effective_level());
        self.domain.add(text(&rec.domain));
        self.first = Some(self.first.map_or(ts, |f| f.min(ts)));
        self.last = Some(self.last.map_or(ts, |l| l.max(ts)));
    }

    fn write(&self, out: &mut dyn Write, stats: &RunStats) -> io::Result<()> {
        writeln!(out, "records matched: {}", stats.matched)?;
        writeln!(out, "lines read:      {}", stats.lines)?;
        writeln!(out, "bad lines:       {}", stats.bad_lines)?;
        if let (Some(first), Some(last)) = (self.first, self.last) {
            writeln!(
                out,
                "period:          {} .. {}",
                humantime::format_rfc3339_micros(first),
                humantime::format_rfc3339_micros(last)
            )?;
        }
        if stats.matched == 0 {
            return Ok(());
        }
        let total = stats.matched;
        write_section(out, "by tls", &self.tls.sorted(), total)?;
        write_section(out, "by source", &self.source.sorted(), total)?;
        write_section(out, "by level", &self.level.sorted(), total)?;
        let domains = self.domain.sorted();
        let shown = &domains[..domains.len().min(TOP_DOMAINS)];
        let title = format!(
            "top domains ({} of {} distinct)",
            shown.len(),
            domains.len()
        );
        write_section(out, &title, shown, total)
    }
}

/// `title:` followed by `  name  count  percent%` rows, aligned.
fn write_section(
    out: &mut dyn Write,
    title: &str,
    rows: &[(&str, u64)],
    total: u64,
) -> io::Result<()> {
    writeln!(out, "\n{title}:")?;
    let rows: Vec<(Cow<'_, str>, u64)> = rows.iter().map(|&(k, n)| (clean(k), n)).collect();
    let name_w = rows
        .iter()
        .map(|(k, _)| k.chars().count())
        .max()
        .unwrap_or(0);
    let count_w = rows
        .iter()
        .map(|(_, n)| n.to_string().len())
        .max()
        .unwrap_or(0);
    for (name, n) in &rows {
        // Display only; precision loss for huge counts is irrelevant.
        let pct = *n as f64 * 100.0 / total.max(1) as f64;
        writeln!(out, "  {name:<name_w$}  {n:>count_w$}  {pct:>5.1}%")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::Compression;
    use flate2::write::GzEncoder;
    use std::fs;
    use std::time::UNIX_EPOCH;
    use tempfile::TempDir;

    // The fixture: 9 lines, 6 good records, 2 bad lines, 1 blank line.
    //
    //   #  domain                 tls            level*     source   queue_id  ts (2026-11-24)
    //   1  bank.example           forced         encrypt    static   -         10:00:00.000001
    //   2  gmail.com              opportunistic  may        default  Q1        10:05:00
    //   3  xn--bcher-kva.example  forced         verify     mta-sts  Q2        11:00:00
    //   4  (not JSON)
    //   5  gmail.com, no ts
    //   6  gmail.com              opportunistic  may        default  Q3        12:00:00 (extra fields)
    //   7  bank.example           forced         encrypt    static   -         12:30:00 (escaped reason)
    //   8  example.net            forced         dane-only  dane     Q4        13:00:00
    //   9  (blank)
    //
    // * effective level: record 3 has level "secure" but policy "verify".
    const L1: &str = r#"{"ts":"2026-11-24T10:00:00.000001Z","frontend":"socketmap","map":"tls_policy","key":"Bank.Example","domain":"bank.example","tls":"forced","level":"encrypt","policy":"encrypt","source":"static","rule":1,"reason":"PCI partner"}"#;
    const L2: &str = r#"{"ts":"2026-11-24T10:05:00.000000Z","frontend":"policy","queue_id":"Q1","key":"gmail.com","domain":"gmail.com","tls":"opportunistic","level":"may","policy":"may","source":"default","reason":"no rule matched"}"#;
    const L3: &str = r#"{"ts":"2026-11-24T11:00:00.000000Z","frontend":"policy","queue_id":"Q2","key":"bücher.example","domain":"xn--bcher-kva.example","tls":"forced","level":"secure","policy":"verify","source":"mta-sts","reason":"mta-sts enforce"}"#;
    const L4: &str = "this is not json";
    const L5: &str = r#"{"frontend":"policy","domain":"gmail.com","tls":"forced"}"#;
    const L6: &str = r#"{"ts":"2026-11-24T12:00:00.000000Z","frontend":"milter","queue_id":"Q3","domain":"gmail.com","tls":"opportunistic","level":"may","source":"default","reason":"no rule matched","sender":"a@b.example","recipients":["x@gmail.com","y@gmail.com"],"future":{"nested":[1,2,3]}}"#;
    const L7: &str = r#"{"ts":"2026-11-24T12:30:00.000000Z","frontend":"socketmap","key":"bank.example","domain":"bank.example","tls":"forced","level":"encrypt","source":"static","reason":"PCI \"partner\"\ttab"}"#;
    const L8: &str = r#"{"ts":"2026-11-24T13:00:00.000000Z","frontend":"policy","queue_id":"Q4","domain":"example.net","tls":"forced","level":"dane-only","source":"dane","reason":"TLSA published"}"#;

    fn fixture() -> String {
        [L1, L2, L3, L4, L5, L6, L7, L8, ""]
            .iter()
            .map(|l| format!("{l}\n"))
            .collect()
    }

    fn write_file(dir: &TempDir, name: &str, data: &[u8]) -> PathBuf {
        let p = dir.path().join(name);
        fs::write(&p, data).unwrap();
        p
    }

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut e = GzEncoder::new(Vec::new(), Compression::default());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    /// Runs `query` against the fixture with the given filters applied.
    fn fixture_query(f: impl FnOnce(&mut LogQuery)) -> (TempDir, LogQuery) {
        let dir = TempDir::new().unwrap();
        let p = write_file(&dir, "decisions.jsonl", fixture().as_bytes());
        let mut q = LogQuery {
            files: vec![p],
            ..LogQuery::default()
        };
        f(&mut q);
        (dir, q)
    }

    fn run_to_string(q: &LogQuery, format: OutputFormat) -> (RunStats, String) {
        let mut out = Vec::new();
        let stats = run(q, format, &mut out).unwrap();
        (stats, String::from_utf8(out).unwrap())
    }

    fn matched(f: impl FnOnce(&mut LogQuery)) -> u64 {
        let (_dir, q) = fixture_query(f);
        run_to_string(&q, OutputFormat::Json).0.matched
    }

    /// The matching lines (JSON output), in order.
    fn matched_lines(f: impl FnOnce(&mut LogQuery)) -> Vec<String> {
        let (_dir, q) = fixture_query(f);
        let (_, out) = run_to_string(&q, OutputFormat::Json);
        out.lines().map(str::to_owned).collect()
    }

    fn at(s: &str) -> SystemTime {
        humantime::parse_rfc3339(s).unwrap()
    }

    #[test]
    fn no_filter_reads_everything() {
        let (_dir, q) = fixture_query(|_| {});
        let (stats, out) = run_to_string(&q, OutputFormat::Json);
        assert_eq!(
            stats,
            RunStats {
                lines: 9,
                matched: 6,
                bad_lines: 2
            }
        );
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
    fn domain_filter() {
        assert_eq!(matched(|q| q.domain = Some("bank.example".into())), 2);
        assert_eq!(matched(|q| q.domain = Some("Bank.EXAMPLE.".into())), 2);
        assert_eq!(matched(|q| q.domain = Some(" gmail.com ".into())), 2);
        assert_eq!(matched(|q| q.domain = Some("example.net".into())), 1);
        // Exact match on `domain`: no suffix or substring matching.
        assert_eq!(matched(|q| q.domain = Some("example".into())), 0);
        assert_eq!(matched(|q| q.domain = Some("mail.com".into())), 0);
        assert_eq!(matched(|q| q.domain = Some("nowhere.example".into())), 0);
    }

    #[test]
    fn domain_filter_idn() {
        for d in [
            "bücher.example",
            "BÜCHER.example.",
            "xn--bcher-kva.example",
            "XN--BCHER-KVA.EXAMPLE.",
        ] {
            let lines = matched_lines(|q| q.domain = Some(d.into()));
            assert_eq!(lines, vec![L3.to_owned()], "filter {d:?}");
        }
    }

    #[test]
    fn prefilter_skips_lines_without_the_needle() {
        // Line 4 (garbage) does not contain "gmail.com" and is never parsed;
        // line 5 does, gets parsed and is bad for lacking ts.
        let (_dir, q) = fixture_query(|q| q.domain = Some("gmail.com".into()));
        let (stats, _) = run_to_string(&q, OutputFormat::Json);
        assert_eq!(
            stats,
            RunStats {
                lines: 9,
                matched: 2,
                bad_lines: 1
            }
        );
    }

    #[test]
    fn queue_id_filter() {
        assert_eq!(
            matched_lines(|q| q.queue_id = Some("Q2".into())),
            vec![L3.to_owned()]
        );
        assert_eq!(matched(|q| q.queue_id = Some("Q4".into())), 1);
        // Exact and case-sensitive.
        assert_eq!(matched(|q| q.queue_id = Some("Q".into())), 0);
        assert_eq!(matched(|q| q.queue_id = Some("q1".into())), 0);
        assert_eq!(matched(|q| q.queue_id = Some("Q9".into())), 0);
    }

    #[test]
    fn since_filter() {
        // Inclusive: record 6 is at exactly 12:00:00.
        let lines = matched_lines(|q| q.since = Some(at("2026-11-24T12:00:00Z")));
        assert_eq!(lines, vec![L6.to_owned(), L7.to_owned(), L8.to_owned()]);
        assert_eq!(
            matched(|q| q.since = Some(at("2026-11-24T12:00:00.000001Z"))),
            2
        );
        assert_eq!(matched(|q| q.since = Some(at("2026-11-24T10:00:00Z"))), 6);
        // Record 1 is at 10:00:00.000001, one microsecond after.
        assert_eq!(
            matched(|q| q.since = Some(at("2026-11-24T10:00:00.000002Z"))),
            5
        );
        assert_eq!(matched(|q| q.since = Some(at("2027-01-01T00:00:00Z"))), 0);
    }

    #[test]
    fn tls_filter() {
        assert_eq!(matched(|q| q.tls = Some("forced".into())), 4);
        assert_eq!(matched(|q| q.tls = Some("opportunistic".into())), 2);
        assert_eq!(matched(|q| q.tls = Some("FORCED".into())), 4);
    }

    #[test]
    fn combined_filters() {
        assert_eq!(
            matched_lines(|q| {
                q.domain = Some("bank.example".into());
                q.since = Some(at("2026-11-24T12:00:00Z"));
            }),
            vec![L7.to_owned()]
        );
        assert_eq!(
            matched_lines(|q| {
                q.tls = Some("opportunistic".into());
                q.queue_id = Some("Q3".into());
            }),
            vec![L6.to_owned()]
        );
        assert_eq!(
            matched(|q| {
                q.domain = Some("gmail.com".into());
                q.tls = Some("forced".into());
            }),
            0
        );
        assert_eq!(
            matched(|q| {
                q.domain = Some("bücher.example".into());
                q.queue_id = Some("Q2".into());
                q.tls = Some("forced".into());
                q.since = Some(at("2026-11-24T11:00:00Z"));
            }),
            1
        );
        assert_eq!(
            matched(|q| {
                q.domain = Some("bücher.example".into());
                q.since = Some(at("2026-11-24T11:00:01Z"));
            }),
            0
        );
    }

    #[test]
    fn bad_lines_are_counted_not_fatal() {
        let dir = TempDir::new().unwrap();
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
        let p = write_file(&dir, "bad.jsonl", &data);
        let q = LogQuery {
            files: vec![p],
            ..LogQuery::default()
        };
        let (stats, out) = run_to_string(&q, OutputFormat::Json);
        assert_eq!(
            stats,
            RunStats {
                lines: 13,
                matched: 2,
                bad_lines: 9
            }
        );
        assert_eq!(out, format!("{L1}\n{L2}\n"));
    }

    #[test]
    fn truncated_last_line_is_bad() {
        let dir = TempDir::new().unwrap();
        let data = format!("{L1}\n{L2}\n{}", &L3[..60]);
        let p = write_file(&dir, "live.jsonl", data.as_bytes());
        let q = LogQuery {
            files: vec![p],
            ..LogQuery::default()
        };
        let (stats, out) = run_to_string(&q, OutputFormat::Json);
        assert_eq!(
            stats,
            RunStats {
                lines: 3,
                matched: 2,
                bad_lines: 1
            }
        );
        assert_eq!(out, format!("{L1}\n{L2}\n"));
    }

    #[test]
    fn complete_last_line_without_newline_and_crlf() {
        let dir = TempDir::new().unwrap();
        let data = format!("{L1}\r\n{L2}");
        let p = write_file(&dir, "live.jsonl", data.as_bytes());
        let q = LogQuery {
            files: vec![p],
            ..LogQuery::default()
        };
        let (stats, out) = run_to_string(&q, OutputFormat::Json);
        assert_eq!(stats.matched, 2);
        assert_eq!(stats.bad_lines, 0);
        assert_eq!(out, format!("{L1}\n{L2}\n"));
    }

    #[test]
    fn overlong_line_is_bad_and_reading_continues() {
        let dir = TempDir::new().unwrap();
        let huge = format!(
            r#"{{"ts":"2026-11-24T10:00:00Z","reason":"{}"}}"#,
            "x".repeat(MAX_LINE + 10)
        );
        let data = format!("{L1}\n{huge}\n{L2}\n");
        let p = write_file(&dir, "big.jsonl", data.as_bytes());
        let q = LogQuery {
            files: vec![p],
            ..LogQuery::default()
        };
        let (stats, out) = run_to_string(&q, OutputFormat::Json);
        assert_eq!(
            stats,
            RunStats {
                lines: 3,
                matched: 2,
                bad_lines: 1
            }
        );
        assert_eq!(out, format!("{L1}\n{L2}\n"));
    }

    #[test]
    fn gzip_detected_by_magic_not_name() {
        let dir = TempDir::new().unwrap();
        // Compressed but without .gz, and plain text named .gz.
        let gz = write_file(&dir, "decisions.jsonl.1", &gzip(fixture().as_bytes()));
        let plain = write_file(&dir, "decisions.jsonl.2.gz", fixture().as_bytes());
        for p in [gz, plain] {
            let q = LogQuery {
                files: vec![p.clone()],
                ..LogQuery::default()
            };
            let (stats, _) = run_to_string(&q, OutputFormat::Json);
            assert_eq!(
                stats,
                RunStats {
                    lines: 9,
                    matched: 6,
                    bad_lines: 2
                },
                "{}",
                p.display()
            );
        }
    }

    #[test]
    fn gzip_multi_member() {
        // `cat a.gz b.gz` is a valid gzip file with two members.
        let dir = TempDir::new().unwrap();
        let mut data = gzip(format!("{L1}\n{L2}\n").as_bytes());
        data.extend(gzip(format!("{L3}\n").as_bytes()));
        let p = write_file(&dir, "multi.gz", &data);
        let q = LogQuery {
            files: vec![p],
            ..LogQuery::default()
        };
        let (stats, out) = run_to_string(&q, OutputFormat::Json);
        assert_eq!(stats.matched, 3);
        assert_eq!(out, format!("{L1}\n{L2}\n{L3}\n"));
    }

    #[test]
    fn corrupt_gzip_is_an_error_naming_the_file() {
        let dir = TempDir::new().unwrap();
        let mut data = gzip(fixture().as_bytes());
        data.truncate(data.len() / 2);
        let p = write_file(&dir, "broken.gz", &data);
        let q = LogQuery {
            files: vec![p.clone()],
            ..LogQuery::default()
        };
        let err = run(&q, OutputFormat::Json, &mut Vec::new()).unwrap_err();
        assert!(matches!(err, ReadError::Read { .. }), "{err:?}");
        assert!(
            err.to_string()
                .starts_with(&format!("cannot read {}: ", p.display())),
            "{err}"
        );
    }

    #[test]
    fn tiny_and_empty_files() {
        let dir = TempDir::new().unwrap();
        let empty = write_file(&dir, "empty", b"");
        let one = write_file(&dir, "one", b"\x1f");
        let q = LogQuery {
            files: vec![empty, one],
            ..LogQuery::default()
        };
        let (stats, out) = run_to_string(&q, OutputFormat::Json);
        assert_eq!(
            stats,
            RunStats {
                lines: 1,
                matched: 0,
                bad_lines: 1
            }
        );
        assert_eq!(out, "");
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

    #[test]
    fn missing_file_is_an_error_naming_it() {
        let dir = TempDir::new().unwrap();
        let ok = write_file(&dir, "ok", format!("{L1}\n").as_bytes());
        let missing = dir.path().join("nope.jsonl");
        let q = LogQuery {
            files: vec![ok, missing.clone()],
            ..LogQuery::default()
        };
        let err = run(&q, OutputFormat::Json, &mut Vec::new()).unwrap_err();
        match &err {
            ReadError::Open { path, err } => {
                assert_eq!(path, &missing);
                assert_eq!(err.kind(), io::ErrorKind::NotFound);
            }
            other => panic!("unexpected {other:?}"),
        }
        let msg = err.to_string();
        assert!(
            msg.starts_with(&format!("cannot open {}: ", missing.display())),
            "{msg}"
        );
        assert!(msg.contains("No such file or directory"), "{msg}");
    }

    #[test]
    fn table_output() {
        let (_dir, q) = fixture_query(|_| {});
        let (stats, out) = run_to_string(&q, OutputFormat::Table);
        assert_eq!(stats.matched, 6);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 7, "{out}");
        let header: Vec<&str> = lines[0].split_whitespace().collect();
        assert_eq!(
            header,
            [
                "TS", "FRONTEND", "QUEUE_ID", "DOMAIN", "TLS", "LEVEL", "SOURCE", "REASON"
            ]
        );
        // Fixed columns: every field starts at the same offset in each row
        // (no value in the fixture exceeds its width).
        let starts = [0, 28, 38, 51, 82, 96, 117, 126];
        for line in &lines {
            for &s in &starts[1..] {
                assert_eq!(&line[s - 1..s], " ", "{line:?} at {s}");
                assert_ne!(&line[s..s + 1], " ", "{line:?} at {s}");
            }
        }
        assert_eq!(
            lines[1],
            "2026-11-24T10:00:00.000001Z socketmap -            bank.example                   \
             forced        encrypt              static   PCI partner"
        );
        let row = |i: usize| lines[i].split_whitespace().collect::<Vec<_>>();
        // Record 3: LEVEL shows `policy` ("verify"), not `level` ("secure").
        assert_eq!(
            row(3),
            [
                "2026-11-24T11:00:00.000000Z",
                "policy",
                "Q2",
                "xn--bcher-kva.example",
                "forced",
                "verify",
                "mta-sts",
                "mta-sts",
                "enforce"
            ]
        );
        // Record 6 has no `policy`: falls back to `level`.
        assert_eq!(row(4)[5], "may");
        // Escapes decoded, the tab replaced so the row stays on one line.
        assert!(
            lines[5].ends_with("static   PCI \"partner\" tab"),
            "{}",
            lines[5]
        );
        assert_eq!(out.matches(" forced ").count(), 4);
        assert_eq!(out.matches(" opportunistic ").count(), 2);
    }

    #[test]
    fn table_output_with_filter_and_no_match() {
        let (_dir, q) = fixture_query(|q| q.queue_id = Some("none".into()));
        let (stats, out) = run_to_string(&q, OutputFormat::Table);
        assert_eq!(stats.matched, 0);
        assert_eq!(out.lines().count(), 1);
        assert!(out.starts_with("TS "));
    }

    /// Finds the summary row for `name` in the section titled `section`
    /// and returns its count.
    fn summary_count(out: &str, section: &str, name: &str) -> Option<u64> {
        let mut in_section = false;
        for line in out.lines() {
            if !line.starts_with(' ') {
                in_section = line.starts_with(section);
                continue;
            }
            let cols: Vec<&str> = line.split_whitespace().collect();
            if in_section && cols.first() == Some(&name) {
                return cols.get(1).and_then(|n| n.parse().ok());
            }
        }
        None
    }

    #[test]
    fn summary_output() {
        let (_dir, q) = fixture_query(|_| {});
        let (stats, out) = run_to_string(&q, OutputFormat::Summary);
        assert_eq!(stats.matched, 6);
        assert!(out.contains("records matched: 6\n"), "{out}");
        assert!(out.contains("lines read:      9\n"), "{out}");
        assert!(out.contains("bad lines:       2\n"), "{out}");
        assert!(
            out.contains(
                "period:          2026-11-24T10:00:00.000001Z .. 2026-11-24T13:00:00.000000Z\n"
            ),
            "{out}"
        );
        let c = |s, n| summary_count(&out, s, n);
        assert_eq!(c("by tls", "forced"), Some(4));
        assert_eq!(c("by tls", "opportunistic"), Some(2));
        assert_eq!(c("by source", "static"), Some(2));
        assert_eq!(c("by source", "default"), Some(2));
        assert_eq!(c("by source", "mta-sts"), Some(1));
        assert_eq!(c("by source", "dane"), Some(1));
        assert_eq!(c("by level", "encrypt"), Some(2));
        assert_eq!(c("by level", "may"), Some(2));
        assert_eq!(c("by level", "verify"), Some(1));
        assert_eq!(c("by level", "dane-only"), Some(1));
        assert_eq!(c("by level", "secure"), None);
        assert_eq!(c("top domains", "bank.example"), Some(2));
        assert_eq!(c("top domains", "gmail.com"), Some(2));
        assert_eq!(c("top domains", "xn--bcher-kva.example"), Some(1));
        assert_eq!(c("top domains", "example.net"), Some(1));
        assert!(out.contains("top domains (4 of 4 distinct):\n"), "{out}");
        assert!(out.contains("  forced         4   66.7%\n"), "{out}");
        // Ties are broken by name: bank.example before gmail.com,
        // example.net before xn--bcher-kva.example.
        let domains = out.split("top domains").nth(1).unwrap();
        let order: Vec<&str> = domains
            .lines()
            .skip(1)
            .filter_map(|l| l.split_whitespace().next())
            .collect();
        assert_eq!(
            order,
            [
                "bank.example",
                "gmail.com",
                "example.net",
                "xn--bcher-kva.example"
            ]
        );
    }

    #[test]
    fn summary_with_filter() {
        let (_dir, q) = fixture_query(|q| q.tls = Some("forced".into()));
        let (_, out) = run_to_string(&q, OutputFormat::Summary);
        assert!(out.contains("records matched: 4\n"), "{out}");
        assert_eq!(summary_count(&out, "by tls", "forced"), Some(4));
        assert_eq!(summary_count(&out, "by tls", "opportunistic"), None);
        assert_eq!(summary_count(&out, "by source", "static"), Some(2));
        assert_eq!(summary_count(&out, "top domains", "gmail.com"), None);
    }

    #[test]
    fn summary_without_matches() {
        let (_dir, q) = fixture_query(|q| q.domain = Some("none.example".into()));
        let (_, out) = run_to_string(&q, OutputFormat::Summary);
        assert_eq!(
            out,
            "records matched: 0\nlines read:      9\nbad lines:       0\n"
        );
    }

    #[test]
    fn summary_top_domains_is_capped_at_20() {
        let dir = TempDir::new().unwrap();
        let mut data = String::new();
        // d00 appears 25 times, d01 24 times, ... d24 once.
        for i in 0..25u32 {
            for _ in 0..(25 - i) {
                data.push_str(&format!(
                    r#"{{"ts":"2026-11-24T10:00:00Z","domain":"d{i:02}.example","tls":"forced"}}"#
                ));
                data.push('\n');
            }
        }
        let p = write_file(&dir, "many.jsonl", data.as_bytes());
        let q = LogQuery {
            files: vec![p],
            ..LogQuery::default()
        };
        let (stats, out) = run_to_string(&q, OutputFormat::Summary);
        assert_eq!(stats.matched, 325);
        assert!(out.contains("top domains (20 of 25 distinct):\n"), "{out}");
        assert_eq!(summary_count(&out, "top domains", "d00.example"), Some(25));
        assert_eq!(summary_count(&out, "top domains", "d19.example"), Some(6));
        assert_eq!(summary_count(&out, "top domains", "d20.example"), None);
        assert_eq!(summary_count(&out, "by tls", "forced"), Some(325));
        assert_eq!(summary_count(&out, "by source", "-"), Some(325));
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

    #[test]
    fn rotated_files_ordering() {
        let dir = TempDir::new().unwrap();
        for name in [
            "decisions.jsonl",
            "decisions.jsonl.1",
            "decisions.jsonl.2.gz",
            "decisions.jsonl.10.gz",
            "decisions.jsonl.3",
            "decisions.jsonl-20261122",
            "decisions.jsonl-20261120.gz",
            "decisions.jsonl-20261121.gz",
            // Not rotations of decisions.jsonl:
            "decisions.jsonl.bak",
            "decisions.jsonl.gz",
            "decisions.jsonl.1.xz",
            "decisions.jsonl-old",
            "decisions.jsonl2.1",
            "other.jsonl.1",
        ] {
            write_file(&dir, name, b"");
        }
        // A directory with a matching name is not a log.
        fs::create_dir(dir.path().join("decisions.jsonl.4")).unwrap();
        let live = dir.path().join("decisions.jsonl");
        let names: Vec<String> = rotated_files(&live)
            .iter()
            .map(|p| {
                assert_eq!(p.parent(), Some(dir.path()));
                p.file_name().unwrap().to_string_lossy().into_owned()
            })
            .collect();
        assert_eq!(
            names,
            [
                "decisions.jsonl-20261120.gz",
                "decisions.jsonl-20261121.gz",
                "decisions.jsonl-20261122",
                "decisions.jsonl.10.gz",
                "decisions.jsonl.3",
                "decisions.jsonl.2.gz",
                "decisions.jsonl.1",
                "decisions.jsonl",
            ]
        );
    }

    #[test]
    fn rotated_files_same_number_plain_and_gz() {
        let dir = TempDir::new().unwrap();
        for name in ["x.log", "x.log.2", "x.log.2.gz", "x.log.1"] {
            write_file(&dir, name, b"");
        }
        let got = rotated_files(&dir.path().join("x.log"));
        let want: Vec<PathBuf> = ["x.log.2", "x.log.2.gz", "x.log.1", "x.log"]
            .iter()
            .map(|n| dir.path().join(n))
            .collect();
        assert_eq!(got, want);
    }

    #[test]
    fn rotated_files_only_live_or_missing() {
        let dir = TempDir::new().unwrap();
        let live = dir.path().join("decisions.jsonl");
        // Nothing at all: still the live path, so opening it reports the error.
        assert_eq!(rotated_files(&live), vec![live.clone()]);
        write_file(&dir, "decisions.jsonl", b"");
        assert_eq!(rotated_files(&live), vec![live.clone()]);
        // Live file gone after a rotation: only the rotated one.
        fs::remove_file(&live).unwrap();
        let r1 = write_file(&dir, "decisions.jsonl.1", b"");
        assert_eq!(rotated_files(&live), vec![r1]);
        // Missing directory.
        let nodir = dir.path().join("missing/decisions.jsonl");
        assert_eq!(rotated_files(&nodir), vec![nodir.clone()]);
    }

    #[test]
    fn rotated_files_end_to_end() {
        let dir = TempDir::new().unwrap();
        write_file(
            &dir,
            "decisions.jsonl.2.gz",
            &gzip(format!("{L1}\n{L2}\n").as_bytes()),
        );
        write_file(
            &dir,
            "decisions.jsonl.1",
            format!("{L3}\n{L4}\n").as_bytes(),
        );
        let live = write_file(&dir, "decisions.jsonl", format!("{L6}\n").as_bytes());
        let q = LogQuery {
            files: rotated_files(&live),
            ..LogQuery::default()
        };
        let (stats, out) = run_to_string(&q, OutputFormat::Json);
        assert_eq!(
            stats,
            RunStats {
                lines: 5,
                matched: 4,
                bad_lines: 1
            }
        );
        assert_eq!(out, format!("{L1}\n{L2}\n{L3}\n{L6}\n"));
    }

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
    fn run_validates_query_values() {
        let (_dir, q) = fixture_query(|q| q.tls = Some("bogus".into()));
        let err = run(&q, OutputFormat::Json, &mut Vec::new()).unwrap_err();
        assert!(matches!(err, ReadError::BadTls { .. }), "{err:?}");

        for bad in ["", ".", "user@gmail.com", "exa mple.com", "xn--a.example"] {
            let (_dir, q) = fixture_query(|q| q.domain = Some(bad.into()));
            let err = run(&q, OutputFormat::Json, &mut Vec::new()).unwrap_err();
            assert!(
                matches!(err, ReadError::BadDomain { .. }),
                "{bad:?}: {err:?}"
            );
            assert!(
                err.to_string()
                    .starts_with(&format!("bad --domain value {bad:?}: ")),
                "{err}"
            );
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

    #[test]
    fn substring_helpers() {
        assert!(contains_ignore_ascii_case(
            b"xx\"domain\":\"Bank.Example\"",
            b"bank.example"
        ));
        assert!(contains_ignore_ascii_case(b"bank.example", b"bank.example"));
        assert!(!contains_ignore_ascii_case(b"bank.exampl", b"bank.example"));
        assert!(contains_ignore_ascii_case(b"abc", b""));
        assert!(!contains_ignore_ascii_case(b"", b"a"));
        assert!(contains(b"\"queue_id\":\"4Xyz1Q2\"", b"4Xyz1Q2"));
        assert!(!contains(b"\"queue_id\":\"4xyz1q2\"", b"4Xyz1Q2"));
    }

    #[test]
    fn text_borrows_unless_escaped() {
        let line = br#"{"ts":"2026-11-24T10:00:00Z","domain":"a.example","reason":"say \"hi\""}"#;
        let rec: Record<'_> = serde_json::from_slice(line).unwrap();
        assert!(matches!(rec.domain.unwrap().0, Cow::Borrowed("a.example")));
        match rec.reason.unwrap().0 {
            Cow::Owned(s) => assert_eq!(s, "say \"hi\""),
            Cow::Borrowed(s) => panic!("escaped string borrowed: {s}"),
        }
        assert!(rec.queue_id.is_none());
    }
}
