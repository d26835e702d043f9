//! DANE and the store a fleet shares: a domain with no fresh result here
//! is asked for there before it is looked up, and what a lookup finds is
//! published.
//!
//! Only DANE policies travel (a result that found usable TLSA records,
//! still fresh): a shared entry can add what this host would have found,
//! never stand in for a lookup that finds no DANE or fails, so a store
//! that is wrong or tampered with cannot turn DANE off for a domain. The
//! "had DANE" memory stays each host's own.

use std::sync::Arc;
use std::time::SystemTime;

use super::record::{DaneRecord, keep_until};
use super::{Inner, Outcome, expiry, stored};
use crate::cache::persist::{Entry, Kind};

/// Whether `shared`, read for `domain`, may be used at `now`.
pub(super) fn usable(shared: &DaneRecord, domain: &str, now: SystemTime) -> Result<(), String> {
    if shared.assessment.domain != domain {
        return Err(format!(
            "the entry is for {:?}",
            crate::util::text::printable_ascii(&shared.assessment.domain, 256)
        ));
    }
    if !matches!(shared.assessment.outcome, Outcome::Policy { .. }) {
        return Err("only DANE policies are taken from the shared store".into());
    }
    if !shared.fresh(now) {
        return Err("the result is not fresh".into());
    }
    Ok(())
}

impl Inner {
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
        let record = match entry.decode::<DaneRecord>() {
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
        let record = Arc::new(record);
        let taken = self.cache.insert_unless(
            domain.to_string(),
            record.clone(),
            expiry(&record),
            |old, valid| valid && !old.failed() && old.checked_at >= record.checked_at,
        );
        if !taken {
            return None;
        }
        tracing::info!(domain, "DANE result taken from the shared store");
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

    /// Publish a lookup's result when it found a DANE policy.
    pub(super) fn publish(&self, domain: &str, record: &DaneRecord) {
        let Some(shared) = self.shared.get() else {
            return;
        };
        if !matches!(record.assessment.outcome, Outcome::Policy { .. }) {
            return;
        }
        match Entry::new(
            Kind::Dane,
            domain,
            record.checked_at,
            record.expires(),
            record,
        ) {
            Ok(e) => shared.publish(&e),
            Err(e) => tracing::warn!(domain, error = %e, "cannot publish a DANE result"),
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
        // "No DANE" and failures are each host's own lookup.
        for outcome in [
            Outcome::NoPolicy {
                reason: "no TLSA".into(),
            },
            Outcome::Failed {
                reason: "SERVFAIL".into(),
            },
        ] {
            let why = usable(&record("a.test", outcome, now), "a.test", now).unwrap_err();
            assert!(why.starts_with("only"), "{why}");
        }
    }
}
