//! The follower thread: reads Postfix's log as it is written, judges each
//! delivery against the decision that governed it, writes the outcome
//! record, counts it, raises alarms, and saves where it stopped.
//!
//! Records are queued with [`DecisionLog::log_waiting`] (an outcome is
//! never dropped: reading waits for the writer) before the position after
//! their line is saved, and the position is saved at most once a second
//! and when the daemon stops, so a restart reads no line twice and skips
//! none. Before judging what it read, the thread waits for the decision
//! log's writer to catch up ([`DecisionLog::flush`]): every decision
//! answered before Postfix logged the delivery is in the index by then.
//!
//! Across a restart: the connections open at the saved position are
//! saved with it and taken up again; on a stop, what Postfix logged up to
//! then is read before the position is saved; at the start, the index
//! was read back from the decision log before the follower started
//! ([`super::rebuild`]), so what Postfix logs after the start about
//! connections made before it is joined with their decisions.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tokio_util::sync::CancellationToken;

use crate::engine::decision::Decision;
use crate::engine::outcome::Alarm;
use crate::log::record::{DecisionLog, DecisionRecord, DeliveryOutcome, Detail};
use crate::metrics::{LineKind, Metrics};

use super::config::{OutcomesConfig, StartAt};
use super::connections::{AttributedDelivery, SAVED_CONNECTIONS};
use super::correlate::{DecisionIndex, Judged, LineFacts};
use super::follow::{Follower, Position, Resumed, Start};
use super::pipeline::{Pipeline, local_offset};
use super::state::{self, FileState, SavedState};
use super::status::{FollowerState, FollowerStatus};

/// Bytes read at once.
const READ_CHUNK: usize = 256 * 1024;
/// The position is saved at most this often while reading.
pub(super) const SAVE_EVERY: Duration = Duration::from_secs(1);
/// Alarms logged per kind per minute at most; the rest are counted and
/// said in the next line logged.
const ALARMS_PER_MINUTE: u32 = 10;

/// The operator's rule for a domain, as it stands (the policy file's
/// decision, `None` when no rule names it).
pub type RuleLookup = Arc<dyn Fn(&str) -> Option<Decision> + Send + Sync>;

/// Told of every delivery attempt judged, with its queue id, before its
/// record is written (TLS-RPT counts its sessions from it). Runs on the
/// follower's thread: it may block briefly, never for long.
pub type DeliveryHook = Arc<dyn Fn(&str, &DeliveryOutcome) + Send + Sync>;

/// What the follower works with.
pub struct FollowerDeps {
    pub log: Arc<DecisionLog>,
    pub index: Arc<DecisionIndex>,
    pub metrics: Option<Arc<Metrics>>,
    pub rule_for: RuleLookup,
    pub status: Arc<FollowerStatus>,
    pub on_delivery: Option<DeliveryHook>,
}

/// Sleep `d`, waking early when `stop` is cancelled. `true`: stop.
pub(super) fn pause(d: Duration, stop: &CancellationToken) -> bool {
    let until = Instant::now() + d;
    while !stop.is_cancelled() {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        std::thread::sleep(left.min(Duration::from_millis(50)));
    }
    true
}

pub(super) fn follow_file(
    config: &OutcomesConfig,
    path: std::path::PathBuf,
    deps: &FollowerDeps,
    stop: &CancellationToken,
) {
    let state = load_state(config, deps).filter(|s| s.position_for(&path).is_some());
    let saved = state.as_ref().and_then(|s| s.position_for(&path));
    let start = start_of(config);
    let (mut follower, resumed) = Follower::new(&path, saved, start);
    match &resumed {
        Resumed::InPlace => {
            tracing::info!(log = %path.display(), "outcomes: resuming where reading stopped")
        }
        Resumed::Rotated(r) => tracing::info!(log = %path.display(), rotated = %r.display(),
            "outcomes: the log was rotated meanwhile; reading the rest of the rotated file first"),
        Resumed::Lost => {
            tracing::warn!(log = %path.display(),
                "outcomes: the file of the saved position is gone (rotated and compressed?); \
                 what it held after that position was not read");
            count_error(deps, "position_lost");
        }
        Resumed::Fresh => tracing::info!(log = %path.display(), "outcomes: following"),
    }
    let mut run = Run::new(config, deps);
    if let Some(s) = &state {
        run.pipeline.restore_connections(s.connections());
    }
    let mut position: Option<Position> = None;
    let mut last_save = Instant::now();
    let mut dirty = false;
    let mut failing = false;
    loop {
        match follower.read(READ_CHUNK) {
            Ok(Some(chunk)) => {
                if failing {
                    failing = false;
                    tracing::info!(log = %path.display(), "outcomes: the log is readable again");
                }
                deps.status.set_state(FollowerState::Following);
                position = Some(run.chunk(&chunk));
                dirty = true;
                if last_save.elapsed() >= SAVE_EVERY {
                    save(config, &path, position, &run, deps);
                    last_save = Instant::now();
                    dirty = false;
                }
                if stop.is_cancelled() {
                    break;
                }
                continue;
            }
            Ok(None) => {
                if !failing {
                    deps.status.set_state(FollowerState::Following);
                }
            }
            Err(e) => {
                if !failing {
                    tracing::error!(log = %path.display(), error = %e, "outcomes: cannot read the log");
                    failing = true;
                }
                count_error(deps, "read");
                deps.status.set_state(FollowerState::Failing(e.to_string()));
            }
        }
        if dirty {
            save(config, &path, position, &run, deps);
            last_save = Instant::now();
            dirty = false;
        }
        if pause(config.poll_interval, stop) {
            break;
        }
    }
    // What Postfix logged up to the stop is judged now, while this run's
    // decisions are at hand (a log written faster than it is read is left
    // to the next start).
    for _ in 0..FINAL_CHUNKS {
        match follower.read(READ_CHUNK) {
            Ok(Some(chunk)) => {
                position = Some(run.chunk(&chunk));
                dirty = true;
            }
            _ => break,
        }
    }
    if dirty {
        save(config, &path, position, &run, deps);
    }
}

/// Chunks read at most after a stop was asked for.
const FINAL_CHUNKS: usize = 64;

fn save(
    config: &OutcomesConfig,
    path: &std::path::Path,
    position: Option<Position>,
    run: &Run<'_>,
    deps: &FollowerDeps,
) {
    let Some(position) = position else { return };
    let s = SavedState::File(FileState {
        log: path.to_path_buf(),
        position,
        connections: run.pipeline.tracker().saved(SAVED_CONNECTIONS),
    });
    save_state(config, &s, deps);
}

/// The saved state, if any can be read (a bad one is logged and counted;
/// reading then starts as `start` says).
pub(super) fn load_state(config: &OutcomesConfig, deps: &FollowerDeps) -> Option<SavedState> {
    match state::load(&config.state_file) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "outcomes: cannot read the saved position; starting afresh");
            count_error(deps, "state_read");
            None
        }
    }
}

pub(super) fn save_state(config: &OutcomesConfig, s: &SavedState, deps: &FollowerDeps) {
    if let Err(e) = state::save(&config.state_file, s) {
        tracing::warn!(error = %e, "outcomes: cannot save the position");
        count_error(deps, "state_save");
    }
}

pub(super) fn start_of(config: &OutcomesConfig) -> Start {
    match config.start {
        StartAt::End => Start::End,
        StartAt::Beginning => Start::Beginning,
    }
}

pub(super) fn count_error(deps: &FollowerDeps, kind: &'static str) {
    if let Some(m) = &deps.metrics {
        m.error("outcomes", kind);
    }
}

/// Per-kind alarm log limiter.
#[derive(Default)]
struct AlarmLimiter {
    window_start: Option<Instant>,
    logged: [u32; Alarm::ALL.len()],
    suppressed: [u64; Alarm::ALL.len()],
}

impl AlarmLimiter {
    /// Whether to log this alarm, and how many were left unsaid before it.
    fn admit(&mut self, a: Alarm) -> Option<u64> {
        let now = Instant::now();
        if self
            .window_start
            .is_none_or(|t| now.duration_since(t) >= Duration::from_secs(60))
        {
            self.window_start = Some(now);
            self.logged = Default::default();
        }
        let i = a as usize;
        if self.logged[i] >= ALARMS_PER_MINUTE {
            self.suppressed[i] += 1;
            return None;
        }
        self.logged[i] += 1;
        Some(std::mem::take(&mut self.suppressed[i]))
    }
}

/// One reading run (shared by the file and the journal).
pub(super) struct Run<'a> {
    pub(super) pipeline: Pipeline,
    pub(super) sink: Sink<'a>,
}

/// Where judged deliveries go: the record, the metrics, the alarms.
pub(super) struct Sink<'a> {
    deps: &'a FollowerDeps,
    limiter: AlarmLimiter,
}

impl<'a> Run<'a> {
    pub(super) fn new(config: &OutcomesConfig, deps: &'a FollowerDeps) -> Run<'a> {
        Run {
            pipeline: Pipeline::new(config.max_line_length, config.syslog_names.clone()),
            sink: Sink {
                deps,
                limiter: AlarmLimiter::default(),
            },
        }
    }

    /// One journal entry's line (see [`Pipeline::syslog_line`]).
    pub(super) fn syslog_line(&mut self, line: &super::syslog::SyslogLine<'_>) {
        let sink = &mut self.sink;
        self.pipeline
            .syslog_line(line, &mut |d, facts| sink.judged(d, facts));
    }

    /// Bytes read from a file (see [`Pipeline::feed`]).
    pub(super) fn feed(&mut self, bytes: &[u8], fresh: bool) {
        let sink = &mut self.sink;
        self.pipeline
            .feed(bytes, fresh, &mut |d, facts| sink.judged(d, facts));
    }

    /// Before judging what was read: the clock, and the decisions
    /// answered so far in the index.
    pub(super) fn begin(&mut self) {
        let now = SystemTime::now();
        self.pipeline.set_clock(now, local_offset(now));
        self.sink.deps.log.flush();
    }

    /// Bytes read from a file, judged (between [`Run::begin`] and
    /// [`Run::end`]); the position after the last complete line.
    pub(super) fn chunk(&mut self, chunk: &super::follow::Chunk) -> Position {
        self.begin();
        self.feed(&chunk.bytes, chunk.fresh);
        let end = chunk.at.offset + chunk.bytes.len() as u64;
        self.end();
        Position {
            offset: end - self.pipeline.pending() as u64,
            ..chunk.at
        }
    }

    /// After: the line counts into the metrics.
    pub(super) fn end(&mut self) {
        let counts = self.pipeline.take_counts();
        if let Some(m) = &self.sink.deps.metrics {
            for k in LineKind::ALL {
                m.outcome_lines(k, counts[k as usize]);
            }
        }
    }
}

impl Sink<'_> {
    pub(super) fn judged(&mut self, d: &AttributedDelivery, facts: LineFacts<'_>) {
        let judged = self.deps.index.judge(d, facts, &*self.deps.rule_for);
        self.record(judged);
    }

    fn record(&mut self, j: Judged) {
        let o = &j.outcome;
        let queue_id = &j.queue_id;
        if let Some(m) = &self.deps.metrics {
            m.delivery(o.verdict, o.tls_trust, o.governing.as_ref().map(|g| g.tls));
            if let Some(a) = j.alarm {
                m.outcome_alarm(a);
            }
        }
        if let Some(a) = j.alarm {
            let level = o.governing.as_ref().map_or("none", |g| &*g.level);
            let text = format!(
                "{} queue {queue_id} to {} via {} relay={} ({} {}, level {level}, TLS {}): {}",
                o.verdict,
                o.recipient,
                o.transport,
                o.relay,
                o.status,
                o.dsn,
                o.tls_trust.as_str(),
                a.advice()
            );
            self.deps.status.alarm(a, o.logged_at, text);
            if let Some(unsaid) = self.limiter.admit(a) {
                tracing::error!(
                    queue_id = %queue_id,
                    recipient = %o.recipient,
                    transport = %o.transport,
                    relay = %o.relay,
                    status = %o.status,
                    verdict = %o.verdict,
                    level,
                    tls_trust = o.tls_trust.as_str(),
                    alarms_not_logged = unsaid,
                    "delivery needs an operator: {}",
                    a.advice()
                );
            }
        }
        if let Some(hook) = &self.deps.on_delivery {
            hook(queue_id, o);
        }
        let rec = DecisionRecord::new(Some(j.queue_id), Detail::Delivery(Box::new(j.outcome)));
        if !self.deps.log.log_waiting(rec) {
            count_error(self.deps, "record_dropped");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limiter_admits_ten_a_minute_and_tells_what_it_held_back() {
        let mut l = AlarmLimiter::default();
        for _ in 0..ALARMS_PER_MINUTE {
            assert_eq!(l.admit(Alarm::Violation), Some(0));
        }
        assert_eq!(l.admit(Alarm::Violation), None);
        assert_eq!(l.admit(Alarm::Violation), None);
        // Another kind has its own allowance.
        assert_eq!(l.admit(Alarm::PolicyUnreachable), Some(0));
        // A new minute: the held-back count is told with the next one.
        l.window_start = Some(Instant::now() - Duration::from_secs(61));
        assert_eq!(l.admit(Alarm::Violation), Some(2));
        assert_eq!(l.admit(Alarm::Violation), Some(0));
    }
}
