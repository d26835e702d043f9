//! Postfix's log: lines from a file (syslog format) and entries from the
//! journal.

use std::time::{Duration, SystemTime};

use super::chunks;
use crate::outcomes::event_of;
use crate::outcomes::journal::{self, EntryError, MAX_CURSOR_LEN};
use crate::outcomes::lines::{Line, LineSplitter, MAX_LINE_LEN};
use crate::outcomes::postfix::{self, Event};
use crate::outcomes::syslog::{self, LogTime, SyslogLine, YearHint};

/// A line as the splitter handed it out, owned.
#[derive(Debug, PartialEq, Eq)]
enum Split {
    Complete(Vec<u8>),
    TooLong(usize),
}

fn split(chunks: &[&[u8]], max: usize) -> Vec<Split> {
    let mut s = LineSplitter::new(max);
    let mut out = Vec::new();
    let mut take = |l: Line<'_>| match l {
        Line::Complete(b) => {
            assert!(b.len() <= max);
            out.push(Split::Complete(b.to_vec()));
        }
        Line::TooLong { len } => {
            assert!(len > max);
            out.push(Split::TooLong(len));
        }
    };
    for c in chunks {
        s.push(c, &mut take);
    }
    s.finish(&mut take);
    assert_eq!(s.pending(), 0);
    out
}

fn check_time(t: &LogTime) {
    assert!(
        (1..=12).contains(&t.month) && (1..=31).contains(&t.day),
        "{t:?}"
    );
    assert!(t.hour < 24 && t.minute < 60 && t.second <= 60, "{t:?}");
    assert!(t.nanos < 1_000_000_000);
    let _ = t.to_system_time(0);
    let _ = t.to_system_time(14 * 3600);
}

fn check_line(line: &SyslogLine<'_>) {
    check_time(&line.time);
    let _ = (line.syslog_name(), line.daemon());
    check_event(&event_of(line));
    check_event(&postfix::parse_message(line.message));
}

fn check_event(e: &Event) {
    if let Event::Delivery(d) = e {
        let _ = (d.tls_features(), d.tls_failure());
    }
    let _ = format!("{e:?}");
}

/// Postfix log files: the stream split into lines in any pieces gives the
/// same lines (with a small limit too, to reach it); each line's syslog
/// frame, timestamp and Postfix message parse without panicking to values
/// in range.
pub fn check_postfix_log(data: &[u8]) {
    for max in [MAX_LINE_LEN, 40] {
        let whole = split(&[data], max);
        assert_eq!(whole, split(&chunks(data), max), "pieces split differently");
    }
    let hint = YearHint {
        year: 2026,
        month: data.first().map_or(1, |b| b % 12 + 1),
    };
    for piece in split(&[data], MAX_LINE_LEN) {
        let Split::Complete(line) = piece else {
            continue;
        };
        if let Ok(l) = syslog::parse_line(&line, hint) {
            assert!(!l.host.is_empty());
            check_line(&l);
        }
        if let Ok(text) = std::str::from_utf8(&line) {
            check_event(&postfix::parse_message(text));
            let _ = postfix::classify_status_text(text);
            let _ = postfix::parse_tls_features(text);
        }
    }
}

/// `journalctl --output=json` lines: each parses without panicking; an
/// entry has a bounded cursor and makes a syslog line whose message
/// parses; an error past the cursor keeps it.
pub fn check_journal_entry(data: &[u8]) {
    for line in data.split(|&b| b == b'\n') {
        match journal::parse_entry(line) {
            Ok(e) => {
                assert!(journal::is_cursor(&e.cursor) && e.cursor.len() <= MAX_CURSOR_LEN);
                assert!(e.realtime >= SystemTime::UNIX_EPOCH);
                let _ = e.realtime.checked_add(Duration::from_secs(1));
                check_line(&e.syslog_line());
            }
            Err(e @ EntryError::BadField { .. }) => assert!(e.cursor().is_some()),
            Err(_) => {}
        }
    }
}
