//! A log-line limiter: at most so many lines per window, with a count of
//! the ones left unsaid, so that many bad clients at once give a few lines
//! and a number instead of a line each.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Admits at most `per_window` events per `window`; the rest are counted
/// and reported with the next admitted one. Shared between threads.
pub struct RateLimit {
    window: Duration,
    per_window: u32,
    state: Mutex<State>,
}

struct State {
    window_start: Option<Instant>,
    admitted: u32,
    suppressed: u64,
}

impl RateLimit {
    pub const fn new(window: Duration, per_window: u32) -> RateLimit {
        RateLimit {
            window,
            per_window,
            state: Mutex::new(State {
                window_start: None,
                admitted: 0,
                suppressed: 0,
            }),
        }
    }

    /// `Some(n)` when this event is to be logged, `n` being how many were
    /// left unsaid since the last one logged; `None` when it is to be
    /// left unsaid (it is counted).
    pub fn admit(&self) -> Option<u64> {
        self.admit_at(Instant::now())
    }

    fn admit_at(&self, now: Instant) -> Option<u64> {
        let mut s = match self.state.lock() {
            Ok(s) => s,
            Err(p) => p.into_inner(),
        };
        if s.window_start
            .is_none_or(|t| now.saturating_duration_since(t) >= self.window)
        {
            s.window_start = Some(now);
            s.admitted = 0;
        }
        if s.admitted >= self.per_window {
            s.suppressed += 1;
            return None;
        }
        s.admitted += 1;
        Some(std::mem::take(&mut s.suppressed))
    }

    /// Events left unsaid since the last one logged.
    pub fn suppressed(&self) -> u64 {
        match self.state.lock() {
            Ok(s) => s.suppressed,
            Err(p) => p.into_inner().suppressed,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admits_per_window_and_counts_the_rest() {
        let r = RateLimit::new(Duration::from_secs(60), 3);
        let t = Instant::now();
        assert_eq!(r.admit_at(t), Some(0));
        assert_eq!(r.admit_at(t), Some(0));
        assert_eq!(r.admit_at(t), Some(0));
        for _ in 0..10 {
            assert_eq!(r.admit_at(t + Duration::from_secs(59)), None);
        }
        assert_eq!(r.suppressed(), 10);
        // The next window's first line carries the count.
        assert_eq!(r.admit_at(t + Duration::from_secs(60)), Some(10));
        assert_eq!(r.admit_at(t + Duration::from_secs(61)), Some(0));
        assert_eq!(r.suppressed(), 0);
    }
}
