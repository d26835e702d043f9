//! Following the systemd journal (`log = "journal"` or
//! `"journal:DIRECTORY"`) through journalctl: entries go through the same
//! pipeline as the file's lines, and the cursor of the last entry done
//! with is saved as the position.

use std::time::Instant;

use tokio_util::sync::CancellationToken;

use crate::metrics::LineKind;

use super::config::{LogSource, OutcomesConfig};
use super::connections::SAVED_CONNECTIONS;
use super::journal::{JournalOptions, JournalReader, JournalSource, JournalStats};
use super::state::{JournalState, SavedState};
use super::status::FollowerState;
use super::task::{FollowerDeps, Run, count_error, load_state, prime, save_state, start_of};

/// Entries taken at once.
const READ_ENTRIES: usize = 4096;

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
    let options = JournalOptions {
        wait: config.poll_interval,
        ..JournalOptions::default()
    };
    let mut reader = JournalReader::new(source.clone(), saved, start_of(config), options);
    let mut run = Run::new(config, deps);
    if let Some(s) = &state {
        run.pipeline.restore_connections(s.connections());
    }
    prime(config, deps);
    let mut seen = JournalStats::default();
    let mut saved_cursor: Option<String> = None;
    let mut last_save = Instant::now();
    let mut failing = false;
    while !stop.is_cancelled() {
        match reader.read(READ_ENTRIES) {
            Ok(entries) => {
                if failing {
                    failing = false;
                    tracing::info!(log = %config.log, "outcomes: journalctl runs again");
                }
                deps.status.set_state(FollowerState::Following);
                if !entries.is_empty() {
                    run.begin();
                    for e in &entries {
                        run.syslog_line(&e.syslog_line());
                    }
                    run.end();
                }
            }
            Err(e) => {
                if !failing {
                    tracing::error!(log = %config.log, error = %e, "outcomes: cannot read the journal");
                    failing = true;
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
