//! Following the systemd journal (`log = "journal"` or
//! `"journal:DIRECTORY"`) through journalctl: entries go through the same
//! pipeline as the file's lines, and the cursor of the last entry done
//! with is saved as the position.
//!
//! A directory that holds no journal file yet (or does not exist yet: a
//! log host before systemd-journal-remote wrote anything) is waited on, as
//! a log file that does not exist yet is: journalctl `--follow` would exit
//! at once on it. Everything the first file holds was written while the
//! daemon ran, so it is read from the beginning whatever `start` says.

use std::io;
use std::path::Path;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::metrics::LineKind;

use super::config::{LogSource, OutcomesConfig};
use super::connections::SAVED_CONNECTIONS;
use super::follow::Start;
use super::journal::{JournalOptions, JournalReader, JournalSource, JournalStats};
use super::state::{JournalState, SavedState};
use super::status::FollowerState;
use super::task::{FollowerDeps, Run, count_error, load_state, pause, save_state, start_of};

/// Entries taken at once.
const READ_ENTRIES: usize = 4096;
/// How long a journalctl started after a failure runs without an entry
/// before the follower says it runs again.
const RUNS_AGAIN_AFTER: Duration = Duration::from_secs(1);

/// Follow the journal until `stop`.
pub(super) fn follow_journal(
    config: &OutcomesConfig,
    deps: &FollowerDeps,
    stop: &CancellationToken,
) {
    let source = match &config.log {
        LogSource::Journal(Some(dir)) => JournalSource::Directory(dir.clone()),
        _ => JournalSource::System,
    };
    let state = load_state(config, deps).filter(|s| s.cursor_for(&source).is_some());
    let saved = state
        .as_ref()
        .and_then(|s| s.cursor_for(&source).map(str::to_owned));
    tracing::info!(log = %config.log, resumed = saved.is_some(), "outcomes: following the journal");
    let mut start = start_of(config);
    if let JournalSource::Directory(dir) = &source
        && waits_for_files(dir)
    {
        tracing::info!(log = %config.log, "outcomes: no journal file in the directory yet; waiting for the first");
        deps.status.set_state(FollowerState::Following);
        while waits_for_files(dir) {
            if pause(config.poll_interval, stop) {
                return;
            }
        }
        start = Start::Beginning;
    }
    let options = JournalOptions {
        wait: config.poll_interval,
        ..JournalOptions::default()
    };
    let mut reader = JournalReader::new(source.clone(), saved, start, options);
    let mut run = Run::new(config, deps);
    if let Some(s) = &state {
        run.pipeline.restore_connections(s.connections());
    }
    let mut seen = JournalStats::default();
    let mut saved_cursor: Option<String> = None;
    let mut last_save = Instant::now();
    let mut journalctl = Journalctl::default();
    while !stop.is_cancelled() {
        match reader.read(READ_ENTRIES) {
            Ok(entries) => {
                // A journalctl that exits at once may still give one read
                // that does not fail before its exit is seen.
                if reader.runs(RUNS_AGAIN_AFTER) && journalctl.read(reader.stats().restarts) {
                    tracing::info!(log = %config.log, "outcomes: journalctl runs again");
                }
                if !journalctl.failing {
                    deps.status.set_state(FollowerState::Following);
                }
                if !entries.is_empty() {
                    run.begin();
                    for e in &entries {
                        run.syslog_line(&e.syslog_line());
                    }
                    run.end();
                }
            }
            Err(e) => {
                if journalctl.failed(reader.stats().restarts) {
                    tracing::error!(log = %config.log, error = %e, "outcomes: cannot read the journal");
                }
                count_error(deps, "journal");
                deps.status.set_state(FollowerState::Failing(e.to_string()));
            }
        }
        for said in reader.take_said() {
            tracing::warn!(log = %config.log, "journalctl: {said}");
        }
        let now = reader.stats();
        count_stats(deps, &seen, &now);
        seen = now;
        if last_save.elapsed() >= super::task::SAVE_EVERY {
            save_cursor(config, &source, &reader, &run, &mut saved_cursor, deps);
            last_save = Instant::now();
        }
    }
    save_cursor(config, &source, &reader, &run, &mut saved_cursor, deps);
}

/// Whether to wait for `dir` to hold a journal file before running
/// journalctl: it does not exist, or holds none where `journalctl
/// --directory` looks (`*.journal` and `*.journal~` in it and in its
/// subdirectories named by a machine id). Any other error is left for
/// journalctl to report.
fn waits_for_files(dir: &Path) -> bool {
    let is_journal = |name: &str| name.ends_with(".journal") || name.ends_with(".journal~");
    let holds = |dir: &Path| -> io::Result<bool> {
        Ok(std::fs::read_dir(dir)?
            .flatten()
            .any(|e| is_journal(&e.file_name().to_string_lossy())))
    };
    match std::fs::read_dir(dir) {
        Err(e) => e.kind() == io::ErrorKind::NotFound,
        Ok(list) => !list.flatten().any(|e| {
            let name = e.file_name();
            let name = name.to_string_lossy();
            let machine = name.len() == 32 && name.bytes().all(|b| b.is_ascii_hexdigit());
            is_journal(&name)
                || (machine
                    && e.file_type().is_ok_and(|t| t.is_dir())
                    && holds(&e.path()).unwrap_or(false))
        }),
    }
}

/// Whether journalctl runs, as the follower says it: failing from a failed
/// read until a journalctl started after it gives a read that does not
/// fail (while the reader waits to start it again, its reads give nothing
/// and do not fail: journalctl is not running then).
#[derive(Debug, Default)]
struct Journalctl {
    failing: bool,
    /// The reader's restarts at the last failure.
    restarts_at_failure: u64,
}

impl Journalctl {
    /// A failed read, with the reader's restarts: `true` when it was
    /// running until then (say so once).
    fn failed(&mut self, restarts: u64) -> bool {
        let news = !self.failing;
        self.failing = true;
        self.restarts_at_failure = restarts;
        news
    }

    /// A read that did not fail, with the reader's restarts: `true` when
    /// journalctl runs again after failing.
    fn read(&mut self, restarts: u64) -> bool {
        if self.failing && restarts > self.restarts_at_failure {
            self.failing = false;
            return true;
        }
        false
    }
}

/// Save the reader's cursor if it moved since the last save.
fn save_cursor(
    config: &OutcomesConfig,
    source: &JournalSource,
    reader: &JournalReader,
    run: &Run<'_>,
    saved: &mut Option<String>,
    deps: &FollowerDeps,
) {
    let Some(cursor) = reader.cursor() else {
        return;
    };
    if saved.as_deref() == Some(cursor) {
        return;
    }
    let s = SavedState::Journal(JournalState {
        journal: source.clone(),
        cursor: cursor.to_owned(),
        connections: run.pipeline.tracker().saved(SAVED_CONNECTIONS),
    });
    save_state(config, &s, deps);
    *saved = Some(cursor.to_owned());
}

/// What the reader refused or skipped since `before`, as line counts.
fn count_stats(deps: &FollowerDeps, before: &JournalStats, now: &JournalStats) {
    let Some(m) = &deps.metrics else { return };
    m.outcome_lines(LineKind::TooLong, now.too_long - before.too_long);
    m.outcome_lines(LineKind::NotSyslog, now.invalid - before.invalid);
    m.outcome_lines(LineKind::Ignored, now.skipped - before.skipped);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_for_a_journal_file_where_journalctl_looks() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("journal");
        assert!(waits_for_files(&dir), "missing");
        std::fs::create_dir(&dir).unwrap();
        assert!(waits_for_files(&dir), "empty");
        std::fs::write(dir.join("notes.txt"), "").unwrap();
        std::fs::write(dir.join("remote.journal.tmp"), "").unwrap();
        std::fs::create_dir(dir.join("other")).unwrap();
        std::fs::write(dir.join("other/remote.journal"), "").unwrap();
        let machine = dir.join("0123456789abcdef0123456789abcdef");
        std::fs::create_dir(&machine).unwrap();
        assert!(
            waits_for_files(&dir),
            "no journal file where journalctl looks"
        );
        std::fs::write(machine.join("system.journal"), "").unwrap();
        assert!(!waits_for_files(&dir), "in a machine id's directory");
        std::fs::remove_file(machine.join("system.journal")).unwrap();
        std::fs::write(dir.join("system@0001-0002.journal~"), "").unwrap();
        assert!(!waits_for_files(&dir), "a journal file set aside");
        std::fs::remove_file(dir.join("system@0001-0002.journal~")).unwrap();
        std::fs::write(dir.join("remote-out.journal"), "").unwrap();
        assert!(!waits_for_files(&dir), "a journal file");
        // Not a directory: journalctl says what is wrong.
        assert!(!waits_for_files(&dir.join("notes.txt")));
    }

    #[test]
    fn journalctl_runs_again_only_once_started_again() {
        let mut j = Journalctl::default();
        assert!(!j.read(0));
        assert!(!j.failing);
        // It exited: said once, however often it fails before running.
        assert!(j.failed(0));
        assert!(j.failing);
        // Waiting to start it again: reads give nothing, it is not running.
        assert!(!j.read(0));
        assert!(j.failing);
        // Started again, and exited at once.
        assert!(!j.failed(1));
        assert!(!j.read(1));
        assert!(j.failing);
        // Started again, and reading.
        assert!(j.read(2));
        assert!(!j.failing);
        assert!(!j.read(2));
        assert!(j.failed(2));
    }
}
