//! The systemd journal as the log source: `log = "journal"` (the system
//! journal) or `log = "journal:/dir"` (the journal files in a directory, as
//! `journalctl --directory` reads them; what systemd-journal-remote
//! writes on a log host).
//!
//! [`JournalReader`] runs `journalctl --follow --output=json` for the mail
//! facility and hands out [`JournalEntry`]s, each with its cursor: the
//! position a caller saves ([`super::state`]) so that a restart goes on
//! with `--after-cursor`, nothing read twice and nothing skipped. An entry
//! becomes the same [`SyslogLine`] a log file gives
//! ([`JournalEntry::syslog_line`]), so everything after is shared.
//!
//! journalctl follows a directory as it does the system journal: entries
//! appended to a file and files added to the directory are both picked up
//! (checked with systemd 252, `tests/outcomes_journal.rs`).
//!
//! The reader needs the right to read the journal: for the system journal
//! the daemon's user in the group `systemd-journal` (or `adm`). Without it
//! journalctl does not fail: it shows only the entries that user may read.
//! What it writes on standard error is kept for the caller to log
//! ([`JournalReader::take_said`]).

use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;

use super::syslog::{LogTime, SyslogLine, parse_digits};

mod reader;

pub use reader::{JournalOptions, JournalReader, JournalStats, ReaderError, command_args};

/// Longest `journalctl --output=json` line accepted, in bytes, without its
/// newline. A Postfix message is far below it even with every byte
/// escaped; longer lines are refused and counted, never buffered whole.
pub const MAX_ENTRY_LEN: usize = 64 * 1024;
/// Longest cursor accepted (journalctl's are about 130 bytes).
pub const MAX_CURSOR_LEN: usize = 512;
/// The journal's syslog facility of mail (`LOG_MAIL`).
pub const MAIL_FACILITY: u8 = 2;

/// Which journal is read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JournalSource {
    /// The system journal (`journalctl` without `--directory`).
    System,
    /// The journal files in a directory (`journalctl --directory DIR`).
    Directory(PathBuf),
}

impl JournalSource {
    /// The journal a `log` setting names: `journal` or `journal:DIR`;
    /// `None` for anything else (a file path), or for `journal:` with no
    /// directory.
    pub fn from_setting(log: &str) -> Option<JournalSource> {
        match log.strip_prefix("journal")? {
            "" => Some(JournalSource::System),
            rest => {
                let dir = rest.strip_prefix(':')?;
                (!dir.is_empty()).then(|| JournalSource::Directory(dir.into()))
            }
        }
    }
}

impl Serialize for JournalSource {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            JournalSource::System => s.serialize_str("system"),
            JournalSource::Directory(d) => d.serialize(s),
        }
    }
}

impl<'de> Deserialize<'de> for JournalSource {
    /// `system`, or a directory (so a relative directory named `system`
    /// would read back as the system journal: give directories whole).
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Ok(match s.as_str() {
            "system" => JournalSource::System,
            _ => JournalSource::Directory(s.into()),
        })
    }
}

/// Whether `s` has the shape of a journal cursor: `key=hex` parts (one
/// lowercase letter as the key) separated by `;`, as journalctl writes
/// them (`s=…;i=…;b=…;m=…;t=…;x=…`). journalctl refuses another shape and
/// exits; a saved cursor that fails this is not used.
pub fn is_cursor(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_CURSOR_LEN
        && s.split(';').all(|part| {
            let b = part.as_bytes();
            b.len() >= 3
                && b[0].is_ascii_lowercase()
                && b[1] == b'='
                && b[2..].iter().all(u8::is_ascii_hexdigit)
        })
}

/// One journal entry, owned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JournalEntry {
    /// Where the entry is (`__CURSOR`): what a restart resumes after.
    pub cursor: String,
    /// When it was written (`__REALTIME_TIMESTAMP`, µs since 1970).
    pub realtime: SystemTime,
    /// `_HOSTNAME`; empty when the entry has none.
    pub hostname: String,
    /// `SYSLOG_IDENTIFIER`: the syslog tag, e.g. `postfix-out/smtp`.
    pub identifier: String,
    /// `SYSLOG_PID`, else `_PID` (the sender's pid as journald saw it);
    /// `None` when neither is a number.
    pub pid: Option<u32>,
    /// `MESSAGE`.
    pub message: String,
}

impl JournalEntry {
    /// The entry as the syslog line of a log file (its time in UTC), for
    /// [`super::event_of`] and the connection tracker.
    pub fn syslog_line(&self) -> SyslogLine<'_> {
        SyslogLine {
            time: LogTime::from_system_time(self.realtime),
            host: &self.hostname,
            program: &self.identifier,
            pid: self.pid,
            message: &self.message,
        }
    }
}

/// Why a journalctl line gives no entry. Those with a cursor still move
/// the position past the entry ([`EntryError::cursor`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EntryError {
    #[error("journal entry of {len} bytes is over the limit of {max}")]
    TooLong { len: usize, max: usize },
    #[error("journal entry is not a JSON object: {0}")]
    NotJson(String),
    #[error("journal entry has no valid __CURSOR")]
    NoCursor,
    #[error("journal entry {cursor}: no valid __REALTIME_TIMESTAMP")]
    BadTimestamp { cursor: String },
    #[error("journal entry {cursor}: {field} is not a string, bytes or a list of them")]
    BadField { cursor: String, field: &'static str },
    /// No `MESSAGE` or no `SYSLOG_IDENTIFIER` (or `null`: a field journalctl
    /// elided): not a syslog line, skipped.
    #[error("journal entry {cursor}: no {field}")]
    Missing { cursor: String, field: &'static str },
}

impl EntryError {
    /// The cursor of the entry, when the line had one.
    pub fn cursor(&self) -> Option<&str> {
        match self {
            EntryError::BadTimestamp { cursor }
            | EntryError::BadField { cursor, .. }
            | EntryError::Missing { cursor, .. } => Some(cursor),
            _ => None,
        }
    }
}

/// The fields read; journalctl's others are ignored unparsed.
#[derive(Deserialize)]
struct RawEntry {
    #[serde(rename = "__CURSOR")]
    cursor: Option<Value>,
    #[serde(rename = "__REALTIME_TIMESTAMP")]
    realtime: Option<Value>,
    #[serde(rename = "_HOSTNAME")]
    hostname: Option<Value>,
    #[serde(rename = "SYSLOG_IDENTIFIER")]
    identifier: Option<Value>,
    #[serde(rename = "SYSLOG_PID")]
    syslog_pid: Option<Value>,
    #[serde(rename = "_PID")]
    pid: Option<Value>,
    #[serde(rename = "MESSAGE")]
    message: Option<Value>,
}

/// A field's text. journalctl writes a value that is not UTF-8 as an array
/// of byte numbers (read here as lossy UTF-8), and a field given several
/// times as an array of values (the first one is used). `Ok(None)`: absent
/// or `null`; `Err(())`: another shape.
fn field_text(v: Option<&Value>) -> Result<Option<String>, ()> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(Value::Array(items)) => match items.first() {
            // Several values: the first, text or bytes.
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(Value::Array(bytes)) => bytes_text(bytes).map(Some),
            // One value that is not UTF-8.
            _ => bytes_text(items).map(Some),
        },
        Some(_) => Err(()),
    }
}

/// An array of byte numbers as lossy UTF-8.
fn bytes_text(items: &[Value]) -> Result<String, ()> {
    let bytes: Option<Vec<u8>> = items
        .iter()
        .map(|b| b.as_u64().and_then(|b| u8::try_from(b).ok()))
        .collect();
    Ok(String::from_utf8_lossy(&bytes.ok_or(())?).into_owned())
}

/// A pid field: a number, else `None`.
fn pid_of(v: Option<&Value>) -> Option<u32> {
    let text = field_text(v).ok()??;
    parse_digits(&text).and_then(|p| u32::try_from(p).ok())
}

/// One line of `journalctl --output=json` (without its newline).
pub fn parse_entry(line: &[u8]) -> Result<JournalEntry, EntryError> {
    if line.len() > MAX_ENTRY_LEN {
        return Err(EntryError::TooLong {
            len: line.len(),
            max: MAX_ENTRY_LEN,
        });
    }
    let raw: RawEntry =
        serde_json::from_slice(line).map_err(|e| EntryError::NotJson(e.to_string()))?;
    let cursor = match field_text(raw.cursor.as_ref()) {
        Ok(Some(c)) if is_cursor(&c) => c,
        _ => return Err(EntryError::NoCursor),
    };
    let text = |field: &'static str, v: Option<&Value>| {
        field_text(v).map_err(|()| EntryError::BadField {
            cursor: cursor.clone(),
            field,
        })
    };
    let realtime = text("__REALTIME_TIMESTAMP", raw.realtime.as_ref())?
        .filter(|t| !t.is_empty() && t.len() <= 19 && t.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|t| t.parse::<u64>().ok())
        .and_then(|us| UNIX_EPOCH.checked_add(Duration::from_micros(us)))
        .ok_or_else(|| EntryError::BadTimestamp {
            cursor: cursor.clone(),
        })?;
    let missing = |field| EntryError::Missing {
        cursor: cursor.clone(),
        field,
    };
    let message = text("MESSAGE", raw.message.as_ref())?.ok_or_else(|| missing("MESSAGE"))?;
    let identifier = text("SYSLOG_IDENTIFIER", raw.identifier.as_ref())?
        .filter(|i| !i.is_empty())
        .ok_or_else(|| missing("SYSLOG_IDENTIFIER"))?;
    let hostname = text("_HOSTNAME", raw.hostname.as_ref())?.unwrap_or_default();
    let pid = pid_of(raw.syslog_pid.as_ref()).or_else(|| pid_of(raw.pid.as_ref()));
    Ok(JournalEntry {
        cursor,
        realtime,
        hostname,
        identifier,
        pid,
        message,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outcomes::event_of;
    use crate::outcomes::postfix::{Event, Status};

    /// journalctl 252's output (`--output=json --all --output-fields=…`)
    /// of a journal written by systemd-journal-remote from export format:
    /// a Postfix status line, a MESSAGE that is not UTF-8 (bytes
    /// `caf\xe9 \xff binary`), and a MESSAGE given three times (`first`,
    /// `second`, byte `\xff`).
    const REAL: [&str; 3] = [
        r#"{"_BOOT_ID":"0123456789abcdef0123456789abcdef","__CURSOR":"s=ab158500e4864a8ebf3863241088d2a4;i=1;b=0123456789abcdef0123456789abcdef;m=1388;t=6452edde931c0;x=ef9fce481dd432be","__MONOTONIC_TIMESTAMP":"5000","SYSLOG_PID":"4932","__REALTIME_TIMESTAMP":"1764917454123456","_HOSTNAME":"out","_PID":"4932","MESSAGE":"7738D98C11B: to=<a@verified.test>, relay=mx.verified.test[127.0.0.11]:25, delay=0.16, delays=0.03/0.02/0.09/0.02, dsn=2.0.0, status=sent (250 2.0.0 Ok: queued as 8A4A598C0FE)","SYSLOG_IDENTIFIER":"postfix/smtp"}"#,
        r#"{"MESSAGE":[99,97,102,233,32,255,32,98,105,110,97,114,121],"SYSLOG_IDENTIFIER":"postfix/smtp","SYSLOG_PID":"4932","__REALTIME_TIMESTAMP":"1764917455000000","_HOSTNAME":"out","__CURSOR":"s=ab158500e4864a8ebf3863241088d2a4;i=2;b=0123456789abcdef0123456789abcdef;m=1389;t=6452eddf691c0;x=768eb01c34af528d","_BOOT_ID":"0123456789abcdef0123456789abcdef","__MONOTONIC_TIMESTAMP":"5001","_PID":"4932"}"#,
        r#"{"__MONOTONIC_TIMESTAMP":"5002","SYSLOG_PID":"4932","_HOSTNAME":"out","MESSAGE":["first","second",[255]],"SYSLOG_IDENTIFIER":"postfix/smtp","_PID":"4932","_BOOT_ID":"0123456789abcdef0123456789abcdef","__REALTIME_TIMESTAMP":"1764917456000000","__CURSOR":"s=ab158500e4864a8ebf3863241088d2a4;i=3;b=0123456789abcdef0123456789abcdef;m=138a;t=6452ede05d400;x=15ffa73e0fe421e4"}"#,
    ];

    const CURSOR: &str = "s=1a;i=2;b=3c;m=4;t=5;x=6";

    fn at_micros(us: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_micros(us)
    }

    /// A line with the cursor, time and identifier set, and `fields` (JSON
    /// members) added.
    fn line_with(fields: &str) -> String {
        format!(
            r#"{{"__CURSOR":"{CURSOR}","__REALTIME_TIMESTAMP":"1764917454000001","SYSLOG_IDENTIFIER":"postfix/smtp"{}{fields}}}"#,
            if fields.is_empty() { "" } else { "," }
        )
    }

    #[test]
    fn real_lines() {
        let e = parse_entry(REAL[0].as_bytes()).unwrap();
        assert_eq!(
            e.cursor,
            "s=ab158500e4864a8ebf3863241088d2a4;i=1;b=0123456789abcdef0123456789abcdef;m=1388;t=6452edde931c0;x=ef9fce481dd432be"
        );
        assert_eq!(e.realtime, at_micros(1_764_917_454_123_456));
        assert_eq!(
            (e.hostname.as_str(), e.identifier.as_str(), e.pid),
            ("out", "postfix/smtp", Some(4932))
        );
        let line = e.syslog_line();
        assert_eq!(line.time.to_system_time(3600), Some(e.realtime));
        assert_eq!(
            (line.host, line.program, line.pid),
            ("out", "postfix/smtp", Some(4932))
        );
        assert_eq!(line.daemon(), "smtp");
        match event_of(&line) {
            Event::Delivery(d) => {
                assert_eq!(d.queue_id, "7738D98C11B");
                assert_eq!(d.status, Status::Sent);
            }
            other => panic!("{other:?}"),
        }
        let e = parse_entry(REAL[1].as_bytes()).unwrap();
        assert_eq!(e.message, "caf\u{fffd} \u{fffd} binary");
        let e = parse_entry(REAL[2].as_bytes()).unwrap();
        assert_eq!(e.message, "first");
        assert_eq!(e.realtime, at_micros(1_764_917_456_000_000));
    }

    #[test]
    fn field_shapes() {
        let message = |fields: &str| parse_entry(line_with(fields).as_bytes()).map(|e| e.message);
        for (fields, want) in [
            (r#""MESSAGE":"plain""#, "plain"),
            (r#""MESSAGE":"""#, ""),
            (r#""MESSAGE":[104,105]"#, "hi"),
            (r#""MESSAGE":[]"#, ""),
            (r#""MESSAGE":[104,255]"#, "h\u{fffd}"),
            (r#""MESSAGE":["one","two"]"#, "one"),
            (r#""MESSAGE":[[111,110,101],"two"]"#, "one"),
        ] {
            assert_eq!(message(fields).as_deref(), Ok(want), "{fields}");
        }
        let bad = |field| EntryError::BadField {
            cursor: CURSOR.into(),
            field,
        };
        for fields in [
            r#""MESSAGE":5"#,
            r#""MESSAGE":{"a":1}"#,
            r#""MESSAGE":[104,256]"#,
            r#""MESSAGE":[104,-1]"#,
            r#""MESSAGE":[true]"#,
            r#""MESSAGE":[[1,"x"]]"#,
        ] {
            assert_eq!(message(fields), Err(bad("MESSAGE")), "{fields}");
        }
        assert_eq!(
            message(r#""MESSAGE":"m","_HOSTNAME":false"#),
            Err(bad("_HOSTNAME"))
        );
    }

    #[test]
    fn pid_and_host() {
        let entry = |fields: &str| parse_entry(line_with(fields).as_bytes()).unwrap();
        for (fields, want) in [
            (r#""MESSAGE":"m","SYSLOG_PID":"12","_PID":"34""#, Some(12)),
            (r#""MESSAGE":"m","_PID":"34""#, Some(34)),
            (r#""MESSAGE":"m","SYSLOG_PID":"x","_PID":"34""#, Some(34)),
            (r#""MESSAGE":"m","SYSLOG_PID":["56","78"]"#, Some(56)),
            (r#""MESSAGE":"m","SYSLOG_PID":"99999999999""#, None),
            (r#""MESSAGE":"m""#, None),
        ] {
            assert_eq!(entry(fields).pid, want, "{fields}");
        }
        let e = entry(r#""MESSAGE":"m""#);
        assert_eq!(e.hostname, "");
        assert_eq!(e.syslog_line().host, "");
    }

    #[test]
    fn entries_without_message_or_identifier_are_skipped() {
        let missing = |field| {
            Err(EntryError::Missing {
                cursor: CURSOR.into(),
                field,
            })
        };
        for (line, want) in [
            (line_with(""), missing("MESSAGE")),
            (line_with(r#""MESSAGE":null"#), missing("MESSAGE")),
            (
                line_with(r#""MESSAGE":"m""#)
                    .replace(r#""SYSLOG_IDENTIFIER":"postfix/smtp""#, r#""X":"1""#),
                missing("SYSLOG_IDENTIFIER"),
            ),
            (
                line_with(r#""MESSAGE":"m""#).replace("postfix/smtp", ""),
                missing("SYSLOG_IDENTIFIER"),
            ),
        ] {
            let got = parse_entry(line.as_bytes());
            assert_eq!(got, want, "{line}");
            assert_eq!(got.unwrap_err().cursor(), Some(CURSOR));
        }
    }

    #[test]
    fn lines_that_are_not_entries() {
        let ok = line_with(r#""MESSAGE":"m""#);
        for (line, want) in [
            (ok.replace(CURSOR, "garbage"), EntryError::NoCursor),
            (ok.replace(CURSOR, ""), EntryError::NoCursor),
            (ok.replace(r#""__CURSOR""#, r#""_X""#), EntryError::NoCursor),
            (
                ok.replace("1764917454000001", "12x"),
                EntryError::BadTimestamp {
                    cursor: CURSOR.into(),
                },
            ),
            (
                ok.replace(r#""__REALTIME_TIMESTAMP""#, r#""_X""#),
                EntryError::BadTimestamp {
                    cursor: CURSOR.into(),
                },
            ),
            (
                ok.replace("1764917454000001", "99999999999999999999"),
                EntryError::BadTimestamp {
                    cursor: CURSOR.into(),
                },
            ),
        ] {
            assert_eq!(parse_entry(line.as_bytes()), Err(want), "{line}");
        }
        for line in ["", "[]", "{", "{\"MESSAGE\":\"m\"} x", "\u{fffd}"] {
            let got = parse_entry(line.as_bytes());
            assert!(
                matches!(got, Err(EntryError::NotJson(_))),
                "{line}: {got:?}"
            );
            assert_eq!(got.unwrap_err().cursor(), None);
        }
    }

    #[test]
    fn exact_length_limit() {
        let short = line_with(r#""MESSAGE":"""#);
        let padded = |len: usize| {
            let line = line_with(&format!(r#""MESSAGE":"{}""#, "x".repeat(len - short.len())));
            assert_eq!(line.len(), len);
            line
        };
        for len in [MAX_ENTRY_LEN - 1, MAX_ENTRY_LEN] {
            let e = parse_entry(padded(len).as_bytes()).unwrap();
            assert_eq!(e.message.len(), len - short.len());
        }
        assert_eq!(
            parse_entry(padded(MAX_ENTRY_LEN + 1).as_bytes()),
            Err(EntryError::TooLong {
                len: MAX_ENTRY_LEN + 1,
                max: MAX_ENTRY_LEN
            })
        );
    }

    #[test]
    fn settings_and_cursors() {
        for (setting, want) in [
            ("journal", Some(JournalSource::System)),
            (
                "journal:/var/log/journal/remote",
                Some(JournalSource::Directory("/var/log/journal/remote".into())),
            ),
            ("journal:", None),
            ("journald", None),
            ("/var/log/mail.log", None),
            ("Journal", None),
        ] {
            assert_eq!(JournalSource::from_setting(setting), want, "{setting}");
        }
        let real = parse_entry(REAL[2].as_bytes()).unwrap().cursor;
        for (cursor, want) in [
            (CURSOR, true),
            (real.as_str(), true),
            ("s=0", true),
            ("", false),
            ("garbage", false),
            ("s=", false),
            ("S=1", false),
            ("s=1;", false),
            ("s=1;i=xyz", false),
            ("s=1 ;i=2", false),
        ] {
            assert_eq!(is_cursor(cursor), want, "{cursor:?}");
        }
        let long = format!("s={}", "a".repeat(MAX_CURSOR_LEN - 2));
        assert!(is_cursor(&long));
        assert!(!is_cursor(&format!("{long}a")));
    }
}
