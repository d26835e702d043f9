//! A DANE result as kept (its freshness, its DANE history), and what it
//! answers.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::assess::{self, Assessment, Outcome};
use super::config::{DaneConfig, FailPolicy};
use crate::engine::Consulted;
use crate::engine::decision::{Decision, Level, SourceKind};

/// The last time a lookup found a DANE policy for a domain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LastDane {
    pub at: SystemTime,
    pub level: Level,
}

/// A DANE result as kept between lookups (and in the persisted store).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DaneRecord {
    pub assessment: Assessment,
    /// When the lookup finished.
    pub checked_at: SystemTime,
    /// How long the result is valid (bounded DNS TTL, or `failure_ttl`).
    pub ttl: Duration,
    /// The last lookup that found a DANE policy; kept across failures,
    /// cleared by a lookup that finds none.
    pub last_dane: Option<LastDane>,
}

impl DaneRecord {
    pub fn expires(&self) -> SystemTime {
        self.checked_at + self.ttl
    }

    /// Time left before the result expires (zero when expired).
    pub fn remaining(&self, now: SystemTime) -> Duration {
        self.expires().duration_since(now).unwrap_or(Duration::ZERO)
    }

    pub fn fresh(&self, now: SystemTime) -> bool {
        // A clock that went backwards makes a result older, not younger.
        now >= self.checked_at && now < self.expires()
    }

    /// Less than a quarter of the time left.
    pub fn due_for_refresh(&self, now: SystemTime) -> bool {
        self.remaining(now) < self.ttl / 4
    }

    pub fn failed(&self) -> bool {
        matches!(self.assessment.outcome, Outcome::Failed { .. })
    }
}

/// How long a stored record is worth keeping: until it expires, or while
/// its DANE history is remembered.
pub(super) fn keep_until(record: &DaneRecord, cfg: &DaneConfig) -> SystemTime {
    let history = record.last_dane.map(|l| l.at + cfg.remember);
    record.expires().max(history.unwrap_or(UNIX_EPOCH))
}

/// The last DANE policy seen, if it is still remembered.
pub(super) fn remembered(
    record: &DaneRecord,
    cfg: &DaneConfig,
    now: SystemTime,
) -> Option<LastDane> {
    record
        .last_dane
        .filter(|l| now.duration_since(l.at).unwrap_or(Duration::ZERO) < cfg.remember)
}

pub(super) fn bounded_ttl(secs: u32, cfg: &DaneConfig) -> Duration {
    Duration::from_secs(u64::from(secs)).clamp(cfg.min_ttl, cfg.max_ttl)
}

/// A record for a lookup that did not finish, keeping what was known.
pub(super) fn failure_record(
    domain: &str,
    reason: String,
    previous: Option<&DaneRecord>,
    cfg: &DaneConfig,
) -> DaneRecord {
    DaneRecord {
        assessment: Assessment {
            domain: domain.to_string(),
            mx: assess::MxState::Failed {
                problem: reason.clone(),
            },
            hosts: Vec::new(),
            skipped: 0,
            ttl: 0,
            outcome: Outcome::Failed { reason },
        },
        checked_at: SystemTime::now(),
        ttl: cfg.failure_ttl,
        last_dane: previous.and_then(|p| p.last_dane),
    }
}

pub(super) fn outcome_reason(o: &Outcome) -> &str {
    match o {
        Outcome::Policy { reason, .. }
        | Outcome::NoPolicy { reason }
        | Outcome::Failed { reason } => reason,
    }
}

/// What a record answers, with the fail policy applied.
pub fn decide(record: &DaneRecord, cfg: &DaneConfig, now: SystemTime) -> Consulted {
    let domain = &record.assessment.domain;
    let ttl = record.remaining(now);
    let decision = |level: Level, reason: String, temporary: bool| Decision {
        level,
        policy: Arc::from(level.as_str()),
        source: SourceKind::Dane,
        rule: None,
        matched: None,
        reason: Arc::from(reason),
        ttl,
        raised: false,
        temporary,
        published: None,
    };
    match &record.assessment.outcome {
        Outcome::Policy { level, reason } => {
            Consulted::Policy(decision(*level, reason.clone(), false))
        }
        Outcome::NoPolicy { reason } => Consulted::NoPolicy(reason.clone()),
        Outcome::Failed { reason } => match (cfg.on_failure, remembered(record, cfg, now)) {
            (FailPolicy::Defer, last) => Consulted::Policy(decision(
                last.map_or(Level::DaneOnly, |l| l.level),
                format!(
                    "DANE lookup failed, delivery waits (dane.on_failure = \"defer\"): {reason}"
                ),
                true,
            )),
            (FailPolicy::DeferKnown, Some(last)) => Consulted::Policy(decision(
                last.level,
                format!(
                    "{domain} had DANE ({}) and its DANE lookup failed, so delivery waits: \
                     {reason}",
                    last.level
                ),
                true,
            )),
            (FailPolicy::DeferKnown, None) => Consulted::NoPolicy(format!(
                "{reason}; {domain} had no DANE policy before (within dane.remember), so the \
                 next source decides (dane.on_failure = \"defer-known\")"
            )),
            (FailPolicy::Opportunistic, _) => Consulted::NoPolicy(format!(
                "{reason}; the next source decides (dane.on_failure = \"opportunistic\")"
            )),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttl_bounds() {
        let c = DaneConfig {
            min_ttl: Duration::from_secs(60),
            max_ttl: Duration::from_secs(3600),
            ..DaneConfig::default()
        };
        assert_eq!(bounded_ttl(0, &c), Duration::from_secs(60));
        assert_eq!(bounded_ttl(59, &c), Duration::from_secs(60));
        assert_eq!(bounded_ttl(60, &c), Duration::from_secs(60));
        assert_eq!(bounded_ttl(61, &c), Duration::from_secs(61));
        assert_eq!(bounded_ttl(3600, &c), Duration::from_secs(3600));
        assert_eq!(bounded_ttl(3601, &c), Duration::from_secs(3600));
        assert_eq!(bounded_ttl(u32::MAX, &c), Duration::from_secs(3600));
    }

    fn record(outcome: Outcome, last: Option<Level>) -> DaneRecord {
        let now = SystemTime::now();
        DaneRecord {
            assessment: Assessment {
                domain: "d.example".into(),
                mx: assess::MxState::Insecure,
                hosts: Vec::new(),
                skipped: 0,
                ttl: 0,
                outcome,
            },
            checked_at: now,
            ttl: Duration::from_secs(100),
            last_dane: last.map(|level| LastDane { at: now, level }),
        }
    }

    fn failed() -> Outcome {
        Outcome::Failed {
            reason: "SERVFAIL".into(),
        }
    }

    #[test]
    fn fail_policy() {
        let now = SystemTime::now();
        let with = |p: FailPolicy| DaneConfig {
            on_failure: p,
            ..DaneConfig::default()
        };
        // defer-known: temporary for domains that had DANE, at their level.
        match decide(
            &record(failed(), Some(Level::Dane)),
            &with(FailPolicy::DeferKnown),
            now,
        ) {
            Consulted::Policy(d) => {
                assert!(d.temporary);
                assert_eq!((d.level, d.source), (Level::Dane, SourceKind::Dane));
                assert!(
                    d.reason.starts_with("d.example had DANE (dane) and"),
                    "{}",
                    d.reason
                );
            }
            other => panic!("{other:?}"),
        }
        match decide(&record(failed(), None), &with(FailPolicy::DeferKnown), now) {
            Consulted::NoPolicy(why) => assert!(why.contains("had no DANE policy before"), "{why}"),
            other => panic!("{other:?}"),
        }
        // defer: always temporary.
        match decide(&record(failed(), None), &with(FailPolicy::Defer), now) {
            Consulted::Policy(d) => assert!(d.temporary && d.level == Level::DaneOnly),
            other => panic!("{other:?}"),
        }
        // opportunistic: never temporary.
        assert!(matches!(
            decide(
                &record(failed(), Some(Level::DaneOnly)),
                &with(FailPolicy::Opportunistic),
                now
            ),
            Consulted::NoPolicy(_)
        ));
        // A policy is a policy whatever the fail policy.
        let p = Outcome::Policy {
            level: Level::DaneOnly,
            reason: "all".into(),
        };
        let r = record(p, None);
        match decide(
            &r,
            &with(FailPolicy::Defer),
            r.checked_at + Duration::from_secs(5),
        ) {
            Consulted::Policy(d) => {
                assert!(!d.temporary);
                assert_eq!(&*d.policy, "dane-only");
                assert_eq!(d.ttl, Duration::from_secs(95));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn history_is_remembered_for_a_while() {
        let cfg = DaneConfig {
            remember: Duration::from_secs(1000),
            ..DaneConfig::default()
        };
        let r = record(failed(), Some(Level::DaneOnly));
        let at = r.last_dane.unwrap().at;
        assert!(remembered(&r, &cfg, at + Duration::from_secs(999)).is_some());
        assert!(remembered(&r, &cfg, at + Duration::from_secs(1000)).is_none());
        assert!(matches!(
            decide(&r, &cfg, at + Duration::from_secs(1000)),
            Consulted::NoPolicy(_)
        ));
        // The row is kept as long as the history, or the result if longer.
        assert_eq!(keep_until(&r, &cfg), at + Duration::from_secs(1000));
        let mut long = r.clone();
        long.ttl = Duration::from_secs(5000);
        assert_eq!(
            keep_until(&long, &cfg),
            long.checked_at + Duration::from_secs(5000)
        );
        let none = record(failed(), None);
        assert_eq!(keep_until(&none, &cfg), none.checked_at + none.ttl);
    }

    #[test]
    fn freshness_and_refresh() {
        let mut r = record(failed(), None);
        let t0 = r.checked_at;
        assert!(r.fresh(t0));
        assert!(r.fresh(t0 + Duration::from_secs(99)));
        assert!(!r.fresh(t0 + Duration::from_secs(100)));
        // A clock that went back does not make a result fresh.
        assert!(!r.fresh(t0 - Duration::from_secs(1)));
        assert!(!r.due_for_refresh(t0 + Duration::from_secs(75)));
        assert!(r.due_for_refresh(t0 + Duration::from_secs(76)));
        r.ttl = Duration::ZERO;
        assert_eq!(r.remaining(t0), Duration::ZERO);
    }

    #[test]
    fn memory_store_and_eviction() {
        use super::super::stored::DaneMemoryStore;
        let s = DaneMemoryStore::default();
        assert!(s.is_empty());
        let r = record(failed(), Some(Level::DaneOnly));
        s.save("d.example", &r, SystemTime::now());
        assert_eq!(s.get("d.example"), Some(r.clone()));
        assert_eq!(s.load_all(), vec![("d.example".to_string(), r)]);
        // Eviction (the least recently used eighth, never an entry in
        // flight) is the cache's: crate::cache's
        // cap_evicts_the_least_recently_used_batch_and_counts_it.
    }
}
