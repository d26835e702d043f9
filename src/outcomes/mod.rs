//! Delivery outcomes: what Postfix did with each delivery, read from its
//! log.
//!
//! - [`follow`]: a log file followed across rotation and restarts;
//!   [`journal`]: the systemd journal followed through journalctl, its
//!   entries as syslog lines; [`state`]: where either stopped, saved
//!   atomically.
//! - [`lines`]: bytes → complete lines, bounded ([`lines::LineSplitter`]).
//! - [`syslog`]: a line → timestamp, host, program, pid, message
//!   ([`syslog::parse_line`]).
//! - [`postfix`]: an smtp/lmtp message → a typed [`postfix::Event`];
//!   [`delivery`]: its status lines (`to=<...>, relay=..., status=...`).
//! - [`connections`]: per-process state that attaches a connection's TLS
//!   facts to the delivery lines it carried ([`connections::ConnectionTracker`]);
//!   [`pipeline`]: bytes → deliveries, every line counted.
//! - [`correlate`]: the join of each delivery with the decision that
//!   governed it ([`correlate::DecisionIndex`], fed by the decision log's
//!   writer), and its verdict (the engine's rule); [`rebuild`]: what was
//!   decided before the start, read back from the decision log.
//! - [`task`]: the follower thread (file or journal): records, metrics,
//!   alarms ([`status`] for `/health`), the saved position; [`config`]:
//!   `[outcomes]`.
//!
//! Parsing is pure (no I/O, no clock); the follower reads files, the
//! journal reader runs journalctl.

pub mod config;
pub mod connections;
pub mod correlate;
pub mod delivery;
pub mod follow;
pub mod journal;
mod journal_task;
pub mod lines;
pub mod peer;
pub mod pipeline;
pub mod postfix;
pub mod rebuild;
pub mod state;
pub mod status;
pub mod syslog;
pub mod task;
pub mod thread;

use postfix::Event;
use syslog::SyslogLine;

/// The Postfix daemons whose messages [`event_of`] parses: the delivery
/// agents, and tlsproxy (which logs the TLS summary too when
/// `smtp_tls_connection_reuse = yes`).
pub const PARSED_DAEMONS: [&str; 3] = ["smtp", "lmtp", "tlsproxy"];

/// The event a syslog line carries: parsed for [`PARSED_DAEMONS`],
/// [`Event::Unknown`] for any other program.
pub fn event_of(line: &SyslogLine<'_>) -> Event {
    if PARSED_DAEMONS.contains(&line.daemon()) {
        postfix::parse_message(line.message)
    } else {
        Event::Unknown
    }
}

#[cfg(test)]
mod fixture_tests;
