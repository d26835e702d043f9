//! A log limiter: at most so many lines a minute for one kind of event,
//! and how many were left unsaid since the last one logged.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The window a [`LogLimit`] counts in.
pub const WINDOW: Duration = Duration::from_secs(60);

/// At most `per_window` log lines per [`WINDOW`]; a `static` per kind of
/// event.
pub struct LogLimit {
    per_window: u32,
    state: Mutex<State>,
}

struct State {
    window_start: Option<Instant>,
    logged: u32,
    suppressed: u64,
}

impl LogLimit {
    pub const fn new(per_window: u32) -> LogLimit {
        LogLimit {
            per_window,
            state: Mutex::new(State {
                window_start: None,
                logged: 0,
                suppressed: 0,
            }),
        }
    }

    /// Whether this event may be logged now (`Some`, with the number of
    /// events left unlogged before it), or is only counted (`None`).
    pub fn admit(&self) -> Option<u64> {
        self.admit_at(Instant::now())
    }

    fn admit_at(&self, now: Instant) -> Option<u64> {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if s.window_start
            .is_none_or(|t| now.saturating_duration_since(t) >= WINDOW)
        {
            s.window_start = Some(now);
            s.logged = 0;
        }
        if s.logged >= self.per_window {
            s.suppressed += 1;
            return None;
        }
        s.logged += 1;
        Some(std::mem::take(&mut s.suppressed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_per_window_and_reports_the_suppressed() {
        let l = LogLimit::new(2);
        let t0 = Instant::now();
        assert_eq!(l.admit_at(t0), Some(0));
        assert_eq!(l.admit_at(t0), Some(0));
        assert_eq!(l.admit_at(t0), None);
        assert_eq!(l.admit_at(t0 + WINDOW - Duration::from_millis(1)), None);
        assert_eq!(l.admit_at(t0 + WINDOW), Some(2));
        assert_eq!(l.admit_at(t0 + WINDOW), Some(0));
        assert_eq!(l.admit_at(t0 + WINDOW), None);
    }
}
