//! Bytes of Postfix's log in, deliveries with their connection's TLS facts
//! out: lines ([`LineSplitter`]), the syslog envelope
//! ([`syslog::parse_line`]), the instance filter, the smtp/lmtp message
//! ([`super::event_of`]) and the per-process state
//! ([`ConnectionTracker`]). Every line is counted by what became of it
//! ([`LineKind`]). Pure: the caller reads the log and keeps the clock.

use std::time::SystemTime;

use crate::metrics::LineKind;

use super::connections::{AttributedDelivery, ConnectionTracker, ProcessKey};
use super::correlate::LineFacts;
use super::lines::{Line, LineSplitter};
use super::postfix::Event;
use super::syslog::{self, SyslogLine, YearHint};

/// The local time zone's offset from UTC, in seconds east, at `now`
/// (traditional syslog timestamps are local time).
pub fn local_offset(now: SystemTime) -> i32 {
    let secs = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let t = libc::time_t::try_from(secs).unwrap_or(0);
    // SAFETY: localtime_r only writes the `tm` it is given.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    let ok = unsafe { !libc::localtime_r(&t, &mut tm).is_null() };
    if ok {
        i32::try_from(tm.tm_gmtoff).unwrap_or(0)
    } else {
        0
    }
}

/// Counts of lines by [`LineKind`].
pub type LineCounts = [u64; LineKind::ALL.len()];

/// The path from bytes to deliveries.
pub struct Pipeline {
    splitter: LineSplitter,
    tracker: ConnectionTracker,
    /// Empty: every instance.
    names: Vec<String>,
    hint: YearHint,
    local_offset: i32,
    now: SystemTime,
    counts: LineCounts,
}

impl Pipeline {
    /// Lines of at most `max_line` bytes, from the instances in `names`
    /// (`syslog_name`s; empty: all).
    pub fn new(max_line: usize, names: Vec<String>) -> Pipeline {
        let now = SystemTime::now();
        Pipeline {
            splitter: LineSplitter::new(max_line),
            tracker: ConnectionTracker::default(),
            names,
            hint: YearHint::from_system_time(now),
            local_offset: local_offset(now),
            now,
            counts: LineCounts::default(),
        }
    }

    /// Set the clock that places traditional timestamps (year, zone) and
    /// stands in for a line's time when it cannot be read.
    pub fn set_clock(&mut self, now: SystemTime, local_offset: i32) {
        self.now = now;
        self.hint = YearHint::from_system_time(now);
        self.local_offset = local_offset;
    }

    /// Bytes of an unfinished line held (see [`LineSplitter::pending`]).
    pub fn pending(&self) -> usize {
        self.splitter.pending()
    }

    /// The tracker, for its size and counters.
    pub fn tracker(&self) -> &ConnectionTracker {
        &self.tracker
    }

    /// Take up the connections saved with the position (see
    /// [`ConnectionTracker::restore`]).
    pub fn restore_connections(&mut self, saved: &[super::connections::SavedConnection]) {
        self.tracker.restore(saved);
    }

    /// The counts since the last call, and start again from zero.
    pub fn take_counts(&mut self) -> LineCounts {
        std::mem::take(&mut self.counts)
    }

    fn count(&mut self, kind: LineKind) {
        self.counts[kind as usize] += 1;
    }

    /// Feed bytes read from a file. `fresh`: they start a file (or the
    /// file was truncated), so an unfinished line before them is lost.
    /// `out` gets every delivery line, in order.
    pub fn feed(
        &mut self,
        bytes: &[u8],
        fresh: bool,
        out: &mut dyn FnMut(&AttributedDelivery, LineFacts<'_>),
    ) {
        if fresh && self.splitter.pending() > 0 {
            self.splitter.reset();
            self.count(LineKind::Cut);
        }
        let mut splitter = std::mem::take(&mut self.splitter);
        splitter.push(bytes, |line| match line {
            Line::Complete(l) => self.raw_line(l, out),
            Line::TooLong { .. } => self.count(LineKind::TooLong),
        });
        self.splitter = splitter;
    }

    fn raw_line(&mut self, line: &[u8], out: &mut dyn FnMut(&AttributedDelivery, LineFacts<'_>)) {
        match syslog::parse_line(line, self.hint) {
            Ok(l) => self.syslog_line(&l, out),
            Err(_) => self.count(LineKind::NotSyslog),
        }
    }

    /// One line already split into its syslog parts (the journal's
    /// entries come this way).
    pub fn syslog_line(
        &mut self,
        l: &SyslogLine<'_>,
        out: &mut dyn FnMut(&AttributedDelivery, LineFacts<'_>),
    ) {
        let ours = self.names.is_empty() || self.names.iter().any(|n| n == l.syslog_name());
        if !ours || !super::PARSED_DAEMONS.contains(&l.daemon()) {
            return self.count(LineKind::Ignored);
        }
        let event = super::event_of(l);
        if event == Event::Unknown {
            return self.count(LineKind::NotUnderstood);
        }
        // tlsproxy serves many connections in one process: its lines are
        // facts, not attached to one smtp process's deliveries.
        if l.daemon() == "tlsproxy" {
            return self.count(LineKind::Fact);
        }
        let key = ProcessKey {
            host: l.host.to_string(),
            program: l.program.to_string(),
            pid: l.pid.unwrap_or(0),
        };
        match self.tracker.observe(&key, event) {
            Some(delivery) => {
                self.count(LineKind::Delivery);
                let facts = LineFacts {
                    program: l.program,
                    pid: l.pid,
                    logged_at: l.time.to_system_time(self.local_offset).unwrap_or(self.now),
                };
                out(&delivery, facts);
            }
            None => self.count(LineKind::Fact),
        }
    }
}
