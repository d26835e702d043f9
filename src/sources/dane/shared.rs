//! DANE and the store a fleet shares: a domain with no fresh result here
//! is asked for there before it is looked up, and what a lookup finds is
//! published.
//!
//! DANE policies travel (a result that found usable TLSA records, still
//! fresh), and so do "no DANE" results of a lookup this host claimed for
//! the fleet, for at most [`SHARED_NEGATIVE_MAX`]: the other hosts then do
//! not all look the domain up. A shared "no DANE" is never taken for a
//! domain this host remembers as having had DANE (it looks for itself),
//! so a store that is wrong or tampered with cannot turn DANE off for
//! such a domain. Failed lookups do not travel; the "had DANE" memory
//! travels on its own key (`had`) and only ever makes a host stricter.
//!
//! One lookup per domain for the fleet: after a miss the domain is
//! claimed; the host that wins looks it up and settles (the result
//! written, the others told), the others wait for that and read the
//! store again.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use super::record::{DaneRecord, keep_until, remembered};
use super::{Inner, Outcome, expiry, stored};
use crate::cache::persist::{Claim, ClaimToken, Entry, Kind, Learned, Waited};

/// Longest life of a shared "no DANE".
pub const SHARED_NEGATIVE_MAX: Duration = Duration::from_secs(300);
/// Claims tried at most before this host looks alone.
pub const CLAIM_ROUNDS: usize = 2;
/// What a claim lasts beyond `lookup_timeout`.
pub const HOLD_MARGIN: Duration = Duration::from_secs(2);

/// Whether `shared`, read for `domain`, may be used at `now`.
pub(super) fn usable(shared: &DaneRecord, domain: &str, now: SystemTime) -> Result<(), String> {
    if shared.assessment.domain != domain {
        return Err(format!(
            "the entry is for {:?}",
            crate::util::text::printable_ascii(&shared.assessment.domain, 256)
        ));
    }
    match shared.assessment.outcome {
        Outcome::Policy { .. } => {}
        Outcome::NoPolicy { .. } => {
            if shared.ttl > SHARED_NEGATIVE_MAX {
                return Err(format!(
                    "a \"no DANE\" kept {}s, more than {}s",
                    shared.ttl.as_secs(),
                    SHARED_NEGATIVE_MAX.as_secs()
                ));
            }
        }
        Outcome::Failed { .. } => {
            return Err(
                "only DANE policies and \"no DANE\" are taken from the shared store".into(),
            );
        }
    }
    if !shared.fresh(now) {
        return Err("the result is not fresh".into());
    }
    Ok(())
}

impl Inner {
    /// Whether this host remembers `domain` as having had DANE.
    fn had_dane(&self, domain: &str, now: SystemTime) -> bool {
        self.cache.peek(domain).is_some_and(|(r, _)| {
            matches!(r.assessment.outcome, Outcome::Policy { .. })
                || remembered(&r, &self.config, now).is_some()
        })
    }

    /// The shared store's result for `domain` when this host holds no
    /// fresh one of its own, taken into the cache and the cache file.
    pub(super) async fn ask_shared(&self, domain: &str) -> Option<Arc<DaneRecord>> {
        let shared = self.shared.get()?;
        let now = SystemTime::now();
        if self
            .cache
            .peek(domain)
            .is_some_and(|(r, _)| r.fresh(now) && !r.failed())
        {
            return None;
        }
        let entry = shared.fetch(Kind::Dane, domain).await?;
        let mut record = match entry.decode::<DaneRecord>() {
            Ok(r) => r,
            Err(e) => {
                shared.unusable(Kind::Dane, domain, &e.to_string());
                return None;
            }
        };
        let now = SystemTime::now();
        match usable(&record, domain, now) {
            Ok(()) => {}
            Err(why) if why.starts_with("only") => return None,
            Err(why) => {
                shared.unusable(Kind::Dane, domain, &why);
                return None;
            }
        }
        let negative = matches!(record.assessment.outcome, Outcome::NoPolicy { .. });
        if negative {
            if self.had_dane(domain, now) {
                tracing::info!(
                    domain,
                    "\"no DANE\" in the shared store not taken: this host remembers DANE for the domain; it looks itself"
                );
                return None;
            }
            // The writer's memory is not this host's.
            record.last_dane = None;
        }
        let record = Arc::new(record);
        let taken = self.cache.insert_unless(
            domain.to_string(),
            record.clone(),
            expiry(&record),
            |old, valid| {
                (valid && !old.failed() && old.checked_at >= record.checked_at)
                    || (negative && matches!(old.assessment.outcome, Outcome::Policy { .. }))
            },
        );
        if !taken {
            return None;
        }
        tracing::info!(domain, negative, "DANE result taken from the shared store");
        if let Some(store) = &self.store {
            stored::save(
                store.as_ref(),
                domain,
                &record,
                keep_until(&record, &self.config),
            );
        }
        Some(record)
    }

    /// Before a lookup of `domain`: the shared store's result, or another
    /// host's lookup waited for. `Err`: this host looks it up, for the
    /// fleet when it holds the claim.
    pub(super) async fn before_lookup(
        &self,
        domain: &str,
    ) -> Result<Arc<DaneRecord>, Option<ClaimToken>> {
        let Some(shared) = self.shared.get() else {
            return Err(None);
        };
        if let Some(r) = self.ask_shared(domain).await {
            return Ok(r);
        }
        let now = SystemTime::now();
        if self
            .cache
            .peek(domain)
            .is_some_and(|(r, _)| r.fresh(now) && !r.failed())
        {
            // A refresh of a fresh result: this host's own.
            return Err(None);
        }
        let hold = self.config.lookup_timeout + HOLD_MARGIN;
        for _ in 0..CLAIM_ROUNDS {
            match shared.claim(Kind::Dane, domain, hold).await {
                Claim::Won(t) => {
                    // Another host may have settled between the read above
                    // and this claim: read once more before looking up.
                    if let Some(r) = self.ask_shared(domain).await {
                        shared.settle(t, None).await;
                        return Ok(r);
                    }
                    return Err(Some(t));
                }
                Claim::Unavailable => return Err(None),
                Claim::Busy(wait) => {
                    let end = wait.await;
                    if let Some(r) = self.ask_shared(domain).await {
                        return Ok(r);
                    }
                    if end == Waited::Down {
                        return Err(None);
                    }
                }
            }
        }
        Err(None)
    }

    /// End this host's claim of `domain` with its lookup's result: a DANE
    /// policy or a "no DANE" (for at most [`SHARED_NEGATIVE_MAX`]) is
    /// written; a failure is not, the others are told all the same.
    pub(super) async fn settle(&self, claim: ClaimToken, domain: &str, record: &DaneRecord) {
        let Some(shared) = self.shared.get() else {
            return;
        };
        let learned = match &record.assessment.outcome {
            Outcome::Policy { .. } => self.entry(domain, record).map(|entry| Learned {
                entry,
                negative: false,
            }),
            Outcome::NoPolicy { .. } => {
                let mut r = record.clone();
                r.ttl = r.ttl.min(SHARED_NEGATIVE_MAX);
                r.last_dane = None;
                self.entry(domain, &r).map(|entry| Learned {
                    entry,
                    negative: true,
                })
            }
            Outcome::Failed { .. } => None,
        };
        shared.settle(claim, learned).await;
    }

    fn entry(&self, domain: &str, record: &DaneRecord) -> Option<Entry> {
        Entry::new(
            Kind::Dane,
            domain,
            record.checked_at,
            record.expires(),
            record,
        )
        .map_err(|e| tracing::warn!(domain, error = %e, "cannot publish a DANE result"))
        .ok()
    }

    /// Publish a lookup's result when it found a DANE policy.
    pub(super) fn publish(&self, domain: &str, record: &DaneRecord) {
        let Some(shared) = self.shared.get() else {
            return;
        };
        if !matches!(record.assessment.outcome, Outcome::Policy { .. }) {
            return;
        }
        if let Some(e) = self.entry(domain, record) {
            shared.publish(&e);
        }
    }
}

impl super::DaneSource {
    /// Every fresh DANE policy held in memory, as entries for the shared
    /// store (written there when it lacks them:
    /// `SharedStore::replay_with`).
    pub fn held_entries(&self) -> Vec<Entry> {
        let now = SystemTime::now();
        let mut held = Vec::new();
        self.inner.cache.for_each(|domain, record, _| {
            if matches!(record.assessment.outcome, Outcome::Policy { .. }) && record.fresh(now) {
                held.push((domain.clone(), record.clone()));
            }
        });
        held.into_iter()
            .filter_map(|(domain, r)| {
                Entry::new(Kind::Dane, &domain, r.checked_at, r.expires(), r.as_ref()).ok()
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::engine::decision::Level;
    use crate::sources::dane::assess::{Assessment, MxState};

    fn record(domain: &str, outcome: Outcome, checked_at: SystemTime) -> DaneRecord {
        DaneRecord {
            assessment: Assessment {
                domain: domain.into(),
                mx: MxState::Secure { ttl: 300 },
                hosts: Vec::new(),
                skipped: 0,
                ttl: 300,
                outcome,
            },
            checked_at,
            ttl: Duration::from_secs(300),
            last_dane: None,
        }
    }

    #[test]
    fn only_fresh_dane_policies_for_the_domain_are_taken() {
        let now = SystemTime::now();
        let policy = || Outcome::Policy {
            level: Level::DaneOnly,
            reason: "every MX has TLSA".into(),
        };
        assert_eq!(
            usable(&record("a.test", policy(), now), "a.test", now),
            Ok(())
        );
        // Another domain's, not (yet, or any longer) fresh.
        assert!(usable(&record("b.test", policy(), now), "a.test", now).is_err());
        let old = now - Duration::from_secs(300);
        assert!(usable(&record("a.test", policy(), old), "a.test", now).is_err());
        let ahead = now + Duration::from_secs(5);
        assert!(usable(&record("a.test", policy(), ahead), "a.test", now).is_err());
        // Failures are each host's own lookup.
        let failed = Outcome::Failed {
            reason: "SERVFAIL".into(),
        };
        let why = usable(&record("a.test", failed, now), "a.test", now).unwrap_err();
        assert!(why.starts_with("only"), "{why}");
        // "No DANE" is taken, kept at most SHARED_NEGATIVE_MAX.
        let none = || Outcome::NoPolicy {
            reason: "no TLSA".into(),
        };
        let mut r = record("a.test", none(), now);
        r.ttl = SHARED_NEGATIVE_MAX;
        assert_eq!(usable(&r, "a.test", now), Ok(()));
        r.ttl = SHARED_NEGATIVE_MAX + Duration::from_secs(1);
        let why = usable(&r, "a.test", now).unwrap_err();
        assert!(why.contains("more than 300s"), "{why}");
    }
}
