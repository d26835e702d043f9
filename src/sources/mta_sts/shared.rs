//! MTA-STS and the store a fleet shares: a domain with nothing valid in
//! the local cache is asked for there before it is discovered, and what a
//! discovery learns is published.
//!
//! A shared entry may add a policy or refresh one, never erase or shorten
//! a valid policy this host holds before that policy's own lifetime ends
//! (RFC 8461 section 5.1, fleet-wide): [`may_replace`].

use std::sync::Arc;

use super::cached::{Cached, Persisted, Slot, build_cached};
use super::policy::{MAX_AGE_LIMIT, Mode};
use super::{Inner, now_secs, secs};
use crate::cache::persist::{Entry, Kind};

/// Whether a policy from the shared store (fetched at `fetched_at`,
/// expiring at `expires_at`, of `mode`) may take the place of `held`, the
/// policy this host holds, at `now`.
pub(super) fn may_replace(
    held: Option<&Cached>,
    fetched_at: u64,
    expires_at: u64,
    mode: Mode,
    now: u64,
) -> bool {
    let Some(h) = held.filter(|h| h.expires_at > now) else {
        return true;
    };
    fetched_at > h.fetched_at
        && expires_at >= h.expires_at
        && !(mode == Mode::None && h.policy.mode != Mode::None)
}

impl Inner {
    /// The policy the shared store holds for `domain`, taken into the
    /// cache (and the cache file) when it may be: `None` when there is
    /// none, the store is down or slow, or its entry is unusable.
    pub(super) async fn ask_shared(&self, domain: &str) -> Option<Slot> {
        let shared = self.shared.get()?;
        if self.valid_policy(domain, now_secs()).is_some() {
            return None;
        }
        let entry = shared.fetch(Kind::MtaSts, domain).await?;
        let p = match entry.decode::<Persisted>() {
            Ok(p) => p,
            Err(e) => {
                shared.unusable(Kind::MtaSts, domain, &e.to_string());
                return None;
            }
        };
        let (fetched, expires) = (secs(entry.fetched_at), secs(entry.expires_at));
        if p.policy.max_age > MAX_AGE_LIMIT || expires > fetched.saturating_add(p.policy.max_age) {
            shared.unusable(
                Kind::MtaSts,
                domain,
                &format!(
                    "expires at {expires}, past the policy's max_age ({}) after its fetch at {fetched}",
                    p.policy.max_age
                ),
            );
            return None;
        }
        let now = now_secs();
        let mode = p.policy.mode;
        let settings = self.settings.load_full();
        let c = Arc::new(build_cached(domain, p, fetched, expires, now, &settings));
        let slot = Slot::Policy(c.clone());
        let taken =
            self.cache
                .insert_unless(
                    domain.to_string(),
                    slot.clone(),
                    slot.expiry(),
                    |old, _| match old {
                        Slot::Policy(h) => !may_replace(Some(h), fetched, expires, mode, now),
                        Slot::Negative(_) => false,
                    },
                );
        if !taken {
            // A policy this host holds stays; answer with it.
            return self.valid_policy(domain, now).map(Slot::Policy);
        }
        tracing::info!(domain, id = %c.id, mode = %c.policy.mode, expires = %humantime::format_rfc3339_seconds(entry.expires_at),
            "MTA-STS policy taken from the shared store");
        if let Some(store) = &self.store {
            store.save(entry);
        }
        Some(slot)
    }

    /// Publish what a discovery learned.
    pub(super) fn publish(&self, entry: &Entry) {
        if let Some(shared) = self.shared.get() {
            shared.publish(entry);
        }
    }
}

impl super::MtaSts {
    /// Every valid policy held in memory, as entries for the shared store
    /// (written there when it lacks them: `SharedStore::replay_with`).
    pub fn held_entries(&self) -> Vec<Entry> {
        let now = now_secs();
        let mut held = Vec::new();
        self.inner.cache.for_each(|domain, slot, _| {
            if let Slot::Policy(c) = slot
                && c.expires_at > now
            {
                held.push((domain.clone(), c.clone()));
            }
        });
        held.into_iter()
            .filter_map(|(domain, c)| {
                Entry::new(
                    Kind::MtaSts,
                    &domain,
                    super::to_time(c.fetched_at),
                    super::to_time(c.expires_at),
                    &c.persisted(),
                )
                .ok()
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sources::mta_sts::cached::Settings;
    use crate::sources::mta_sts::config::MtaStsConfig;
    use crate::sources::mta_sts::policy::{self, StsPolicy};

    fn held(mode: Mode, fetched: u64, expires: u64) -> Cached {
        let p = Persisted {
            id: "1".into(),
            policy: StsPolicy {
                mode,
                ..policy::parse(
                    format!(
                        "version: STSv1\nmode: enforce\nmx: mx.a.example\nmax_age: {}\n",
                        expires - fetched
                    )
                    .as_bytes(),
                )
                .unwrap()
            },
            text: String::new(),
        };
        build_cached(
            "a.example",
            p,
            fetched,
            expires,
            fetched,
            &Settings::from(&MtaStsConfig::default()),
        )
    }

    #[test]
    fn a_shared_entry_never_erases_or_shortens_a_valid_policy() {
        let now = 1_000;
        let h = held(Mode::Enforce, 500, 2_000);
        // Nothing held, or what is held has expired: anything is taken.
        assert!(may_replace(None, 10, 20, Mode::None, now));
        let old = held(Mode::Enforce, 100, 900);
        assert!(may_replace(Some(&old), 50, 950, Mode::None, now));
        // A refresh: fetched later, lasting at least as long.
        assert!(may_replace(Some(&h), 600, 2_000, Mode::Enforce, now));
        assert!(may_replace(Some(&h), 600, 5_000, Mode::Testing, now));
        // Shorter, older or the same fetch: kept.
        assert!(!may_replace(Some(&h), 600, 1_999, Mode::Enforce, now));
        assert!(!may_replace(Some(&h), 500, 3_000, Mode::Enforce, now));
        assert!(!may_replace(Some(&h), 400, 3_000, Mode::Enforce, now));
        // `mode: none` from the store does not end a policy in force.
        assert!(!may_replace(Some(&h), 600, 3_000, Mode::None, now));
        let none = held(Mode::None, 500, 2_000);
        assert!(may_replace(Some(&none), 600, 3_000, Mode::None, now));
    }
}
