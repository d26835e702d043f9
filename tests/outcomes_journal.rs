//! The journal as the outcome follower's log source, on real journal files:
//! systemd-journal-remote writes them from journal export format (real
//! Postfix lines from `tests/fixtures/postfix-logs/` as MESSAGE), and
//! `JournalReader` follows the directory through journalctl. Checked: every
//! mail entry arrives once, in order, with its fields; entries appended to
//! a file and a new file in the directory are followed; a new reader after
//! the saved cursor reads what was written meanwhile, nothing twice and
//! nothing skipped; the entries give the same deliveries as the log file.
//!
//! Needs journalctl and systemd-journal-remote (Debian: the package
//! `systemd-journal-remote`, which `scripts/test-all` installs); fails
//! when they are missing (`tests/common/journal.rs`).

mod common;

use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::journal::{Fields, journal_remote, mail_entry};

use tls_policyd::outcomes::connections::{AttributedDelivery, ConnectionTracker, ProcessKey};
use tls_policyd::outcomes::event_of;
use tls_policyd::outcomes::follow::Start;
use tls_policyd::outcomes::journal::{
    JournalEntry, JournalOptions, JournalReader, JournalSource, JournalStats,
};
use tls_policyd::outcomes::state::{self, JournalState, SavedState};
use tls_policyd::outcomes::syslog::{SyslogLine, YearHint, parse_line};

const FIXTURE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/postfix-logs/postfix-3.7-outbound.log"
);
const WAIT: Duration = Duration::from_secs(30);

/// One entry as journal export format fields, and what the reader should
/// make of it (`None`: not handed out).
struct Export {
    fields: Fields,
    want: Option<Want>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Want {
    host: String,
    program: String,
    pid: Option<u32>,
    message: String,
    realtime: SystemTime,
}

impl Want {
    fn of(e: &JournalEntry) -> Want {
        Want {
            host: e.hostname.clone(),
            program: e.identifier.clone(),
            pid: e.pid,
            message: e.message.clone(),
            realtime: e.realtime,
        }
    }
}

/// Times and ids for the entries, always increasing (one boot).
struct Clock {
    n: u64,
}

impl Clock {
    /// A mail entry of `program[pid]` on `host`, with extra fields.
    fn entry(&mut self, host: &str, program: &str, pid: u32, message: &[u8]) -> Export {
        self.n += 1;
        let realtime = 1_764_917_454_000_000 + self.n * 1_000;
        let fields = mail_entry(realtime, 5_000_000 + self.n, host, program, pid, message);
        let want = Want {
            host: host.into(),
            program: program.into(),
            pid: Some(pid),
            message: String::from_utf8_lossy(message).into_owned(),
            realtime: UNIX_EPOCH + Duration::from_micros(realtime),
        };
        Export {
            fields,
            want: Some(want),
        }
    }

    /// A fixture line as a mail entry.
    fn line(&mut self, line: &SyslogLine<'_>) -> Export {
        let pid = line.pid.expect("fixture lines have a pid");
        self.entry(line.host, line.program, pid, line.message.as_bytes())
    }
}

/// Write `entries` to the journal file `file` (appended when it exists).
fn write_journal(remote: &Path, file: &Path, entries: &[Export]) {
    common::journal::write_journal(remote, file, entries.iter().map(|e| &e.fields));
}

fn wanted(entries: &[Export]) -> Vec<Want> {
    entries.iter().filter_map(|e| e.want.clone()).collect()
}

/// Entries read until `n` have come (within [`WAIT`]), then for another
/// half second to catch any extra one.
fn read_n(r: &mut JournalReader, n: usize) -> Vec<JournalEntry> {
    let deadline = Instant::now() + WAIT;
    let mut got = Vec::new();
    while got.len() < n {
        assert!(
            Instant::now() < deadline,
            "{} of {n} entries after {WAIT:?}: {:?}; journalctl said {:?}",
            got.len(),
            r.stats(),
            r.take_said()
        );
        match r.read(1000) {
            Ok(v) => got.extend(v),
            Err(e) => panic!("{e}"),
        }
    }
    let quiet = Instant::now() + Duration::from_millis(500);
    while Instant::now() < quiet {
        got.extend(r.read(1000).unwrap());
    }
    got
}

fn reader(dir: &Path, cursor: Option<String>, start: Start) -> JournalReader {
    let options = JournalOptions {
        wait: Duration::from_millis(100),
        ..JournalOptions::default()
    };
    JournalReader::new(
        JournalSource::Directory(dir.to_path_buf()),
        cursor,
        start,
        options,
    )
}

/// The deliveries a connection tracker finds in syslog lines.
fn deliveries<'a>(lines: impl Iterator<Item = SyslogLine<'a>>) -> Vec<AttributedDelivery> {
    let mut tracker = ConnectionTracker::default();
    let mut found = Vec::new();
    for line in lines {
        let key = ProcessKey {
            host: line.host.into(),
            program: line.program.into(),
            pid: line.pid.unwrap_or(0),
        };
        found.extend(tracker.observe(&key, event_of(&line)));
    }
    found
}

#[test]
fn journal_directory_followed_and_resumed_after_the_cursor() {
    let remote = journal_remote();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("journal");
    std::fs::create_dir(&dir).unwrap();
    let text = std::fs::read_to_string(FIXTURE).unwrap();
    let hint = YearHint {
        year: 2026,
        month: 12,
    };
    let lines: Vec<SyslogLine<'_>> = text
        .lines()
        .map(|l| parse_line(l.as_bytes(), hint).unwrap())
        .collect();
    assert!(lines.len() > 100, "{}", lines.len());
    let mut clock = Clock { n: 0 };

    // The first part of the fixture, with entries the reader must refuse,
    // skip or never see, and the journal's array forms.
    let (first, rest) = lines.split_at(80);
    let mut batch: Vec<Export> = first[..40].iter().map(|l| clock.line(l)).collect();
    let mut not_mail = clock.entry("out", "dovecot", 9, b"not mail");
    not_mail.fields[4].1 = b"3".to_vec();
    not_mail.want = None;
    batch.push(not_mail);
    let mut too_long = clock.entry("out", "postfix/smtp", 9, &vec![b'a'; 70_000]);
    too_long.want = None;
    batch.push(too_long);
    let mut no_tag = clock.entry("out", "postfix/smtp", 9, b"no tag");
    no_tag
        .fields
        .retain(|(name, _)| *name != "SYSLOG_IDENTIFIER");
    no_tag.want = None;
    batch.push(no_tag);
    batch.push(clock.entry("out", "postfix/smtp", 9, b"7738D98C11B: caf\xe9"));
    let mut twice = clock.entry("out", "postfix/smtp", 9, b"first");
    twice.fields.push(("MESSAGE", b"second".to_vec()));
    batch.push(twice);
    batch.extend(first[40..].iter().map(|l| clock.line(l)));
    write_journal(&remote, &dir.join("a.journal"), &batch);
    let mut want = wanted(&batch);
    assert_eq!(want[40].message, "7738D98C11B: caf\u{fffd}");
    assert_eq!(want[41].message, "first");

    let mut r = reader(&dir, None, Start::Beginning);
    let got = read_n(&mut r, want.len());
    assert_eq!(got.iter().map(Want::of).collect::<Vec<_>>(), want);
    let stats = JournalStats {
        entries: want.len() as u64,
        too_long: 1,
        skipped: 1,
        ..JournalStats::default()
    };
    assert_eq!(r.stats(), stats);
    let mut all = got;

    // Followed: entries appended to the file, then a new file.
    let (second, rest) = rest.split_at(20);
    let appended: Vec<Export> = second.iter().map(|l| clock.line(l)).collect();
    write_journal(&remote, &dir.join("a.journal"), &appended);
    let got = read_n(&mut r, appended.len());
    assert_eq!(
        got.iter().map(Want::of).collect::<Vec<_>>(),
        wanted(&appended)
    );
    all.extend(got);
    let (third, rest) = rest.split_at(20);
    let new_file: Vec<Export> = third.iter().map(|l| clock.line(l)).collect();
    write_journal(&remote, &dir.join("b.journal"), &new_file);
    let got = read_n(&mut r, new_file.len());
    assert_eq!(
        got.iter().map(Want::of).collect::<Vec<_>>(),
        wanted(&new_file)
    );
    all.extend(got);
    want.extend(wanted(&appended));
    want.extend(wanted(&new_file));

    // Saved and resumed: what was written while no reader ran (more than
    // the 10 entries journalctl shows after a cursor by default).
    let state_file = tmp.path().join("outcomes.json");
    let source = JournalSource::Directory(dir.clone());
    let cursor = r.cursor().unwrap().to_owned();
    assert_eq!(cursor, all.last().unwrap().cursor);
    state::save(
        &state_file,
        &SavedState::Journal(JournalState {
            journal: source.clone(),
            cursor,
            connections: Vec::new(),
        }),
    )
    .unwrap();
    drop(r);
    let meanwhile: Vec<Export> = rest.iter().map(|l| clock.line(l)).collect();
    assert!(meanwhile.len() > 10, "{}", meanwhile.len());
    write_journal(&remote, &dir.join("b.journal"), &meanwhile);
    let saved = state::load(&state_file).unwrap().unwrap();
    let cursor = saved.cursor_for(&source).map(String::from);
    assert!(cursor.is_some());
    // From the end when there is no cursor: only the cursor brings them.
    let mut r = reader(&dir, cursor, Start::End);
    let got = read_n(&mut r, meanwhile.len());
    assert_eq!(
        got.iter().map(Want::of).collect::<Vec<_>>(),
        wanted(&meanwhile)
    );
    all.extend(got);
    want.extend(wanted(&meanwhile));
    assert_eq!(all.iter().map(Want::of).collect::<Vec<_>>(), want);

    // The journal path finds the deliveries the file path finds.
    let from_file = deliveries(lines.iter().copied());
    let from_journal = deliveries(all.iter().map(JournalEntry::syslog_line));
    assert!(from_file.len() > 10, "{}", from_file.len());
    assert_eq!(from_journal, from_file);
}
