//! One log line for many events: a [`LogEvery`] lets the first event of
//! each period be logged and counts the ones it holds back, so a flood of
//! the same problem (every lookup of a DNS outage timing out) gives one
//! line per period with how many were left unsaid.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// At most one line per period, with the count of events held back.
#[derive(Debug)]
pub struct LogEvery {
    period: Duration,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    last: Option<Instant>,
    held: u64,
}

impl LogEvery {
    pub const fn new(period: Duration) -> LogEvery {
        LogEvery {
            period,
            state: Mutex::new(State {
                last: None,
                held: 0,
            }),
        }
    }

    /// Whether this event is logged: `Some(n)` with `n` the events held
    /// back since the last line, `None` when it is held back too.
    pub fn admit(&self) -> Option<u64> {
        self.admit_at(Instant::now())
    }

    fn admit_at(&self, now: Instant) -> Option<u64> {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if s.last
            .is_some_and(|t| now.saturating_duration_since(t) < self.period)
        {
            s.held = s.held.saturating_add(1);
            return None;
        }
        s.last = Some(now);
        Some(std::mem::take(&mut s.held))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_period_with_the_count_held_back() {
        let limit = LogEvery::new(Duration::from_secs(10));
        let t = Instant::now();
        assert_eq!(limit.admit_at(t), Some(0));
        for i in 0..199 {
            assert_eq!(limit.admit_at(t + Duration::from_millis(i)), None);
        }
        // Just before the period ends: still held back.
        let end = t + Duration::from_secs(10);
        assert_eq!(limit.admit_at(end - Duration::from_nanos(1)), None);
        assert_eq!(limit.admit_at(end), Some(200));
        assert_eq!(limit.admit_at(end + Duration::from_secs(10)), Some(0));
    }
}
