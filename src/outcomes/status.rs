//! What the follower tells `/health` and `tls-policyd status`: whether it
//! reads, and the deliveries that need an operator.

use std::collections::VecDeque;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use crate::engine::outcome::{Alarm, Verdict};
use crate::health::{AlarmHealth, OutcomesHealth};
use crate::metrics::Metrics;

/// Alarms within this long make the daemon `degraded`.
pub const ALARM_WINDOW: Duration = Duration::from_secs(3600);
/// Alarm times remembered for the window (older or more are forgotten).
const MAX_RECENT: usize = 10_000;

/// What the follower is doing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FollowerState {
    Starting,
    Following,
    /// The log cannot be read now: the reason.
    Failing(String),
}

#[derive(Debug)]
struct Inner {
    state: FollowerState,
    recent: VecDeque<(SystemTime, Alarm)>,
    last: Option<AlarmHealth>,
}

/// Shared between the follower thread and the health report.
#[derive(Debug)]
pub struct FollowerStatus {
    source: String,
    inner: Mutex<Inner>,
}

impl FollowerStatus {
    /// `source`: the log followed, as configured (`file:/var/log/mail.log`).
    pub fn new(source: String) -> FollowerStatus {
        FollowerStatus {
            source,
            inner: Mutex::new(Inner {
                state: FollowerState::Starting,
                recent: VecDeque::new(),
                last: None,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn set_state(&self, state: FollowerState) {
        self.lock().state = state;
    }

    pub fn state(&self) -> FollowerState {
        self.lock().state.clone()
    }

    /// An alarm raised now; `text` says which delivery and what to check.
    pub fn alarm(&self, alarm: Alarm, at: SystemTime, text: String) {
        let mut g = self.lock();
        if g.recent.len() >= MAX_RECENT {
            g.recent.pop_front();
        }
        g.recent.push_back((at, alarm));
        g.last = Some(AlarmHealth {
            at: humantime::format_rfc3339_seconds(at).to_string(),
            alarm: alarm.as_str().to_string(),
            text,
        });
    }

    /// The report at `now`.
    pub fn health(&self, metrics: &Metrics, now: SystemTime) -> OutcomesHealth {
        let mut g = self.lock();
        while g
            .recent
            .front()
            .is_some_and(|(t, _)| now.duration_since(*t).is_ok_and(|d| d > ALARM_WINDOW))
        {
            g.recent.pop_front();
        }
        let recent_alarms = Alarm::ALL
            .into_iter()
            .map(|a| {
                let n = g.recent.iter().filter(|(_, x)| *x == a).count() as u64;
                (a.as_str().to_string(), n)
            })
            .collect();
        let (state, problem) = match &g.state {
            FollowerState::Starting => ("starting".to_string(), None),
            FollowerState::Following => ("following".to_string(), None),
            FollowerState::Failing(why) => (
                "failing".to_string(),
                Some(format!(
                    "the outcome follower cannot read {}: {why}",
                    self.source
                )),
            ),
        };
        OutcomesHealth {
            log: self.source.clone(),
            state,
            problem,
            deliveries: Verdict::ALL
                .into_iter()
                .map(|v| (v.as_str().to_string(), metrics.deliveries_with(v)))
                .collect(),
            alarms: Alarm::ALL
                .into_iter()
                .map(|a| (a.as_str().to_string(), metrics.alarms(a)))
                .collect(),
            recent_alarms,
            last_alarm: g.last.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recent_alarms_age_out_and_failures_are_problems() {
        let m = Metrics::new();
        let s = FollowerStatus::new("file:/var/log/mail.log".into());
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        s.alarm(Alarm::Violation, t0, "queue 1".into());
        s.alarm(
            Alarm::PolicyUnreachable,
            t0 + ALARM_WINDOW,
            "queue 2".into(),
        );
        let h = s.health(&m, t0 + ALARM_WINDOW);
        assert_eq!(h.recent_alarms.iter().map(|(_, n)| n).sum::<u64>(), 2);
        assert_eq!(h.state, "starting");
        assert!(h.problem.is_none());
        let h = s.health(&m, t0 + ALARM_WINDOW + Duration::from_secs(1));
        assert_eq!(h.recent_alarms[0], ("violation".to_string(), 0));
        assert_eq!(h.recent_alarms[1], ("policy-unreachable".to_string(), 1));
        assert_eq!(h.last_alarm.unwrap().text, "queue 2");
        s.set_state(FollowerState::Failing("permission denied".into()));
        let h = s.health(&m, t0);
        assert_eq!(
            h.problem.as_deref(),
            Some("the outcome follower cannot read file:/var/log/mail.log: permission denied")
        );
    }
}
