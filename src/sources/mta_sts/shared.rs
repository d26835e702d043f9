//! MTA-STS and the store a fleet shares: a domain with nothing valid in
//! the local cache is asked for there before it is discovered, and what a
//! discovery learns is published.
//!
//! A shared entry may add a policy or refresh one, never erase or shorten
//! a valid policy this host holds before that policy's own lifetime ends
//! (RFC 8461 section 5.1, fleet-wide): [`may_replace`].
//!
//! One discovery per domain for the fleet: after a miss the domain is
//! claimed ([`crate::cache::persist::SharedEntries::claim`]); the host
//! that wins discovers and settles (its policy, or its "no policy", is
//! written and the others are told), the others wait for that and read
//! the store again. A shared "no policy" lives at most
//! [`SHARED_NEGATIVE_MAX`] (and this host's `negative_ttl`), and never
//! takes the place of a valid policy this host holds.

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::cached::{Cached, Negative, Persisted, Slot, build_cached};
use super::policy::{MAX_AGE_LIMIT, Mode};
use super::{Inner, StsPolicyFailure, now_secs, secs, to_time};
use crate::cache::persist::{Claim, ClaimToken, Entry, Kind, Learned, Waited};

/// Longest life of a shared "no policy", in seconds.
pub const SHARED_NEGATIVE_MAX: u64 = 300;
/// Longest reason of a shared "no policy", in bytes.
pub const MAX_SHARED_WHY: usize = 512;
/// Claims tried at most before this host discovers alone (a second one
/// when the first host's discovery left nothing usable).
pub const CLAIM_ROUNDS: usize = 2;
/// What a claim lasts beyond the fetch's own limit (`fetch_timeout`) and
/// `lookup_timeout`: the TXT lookup and the writes after the discovery.
pub const HOLD_MARGIN: Duration = Duration::from_secs(2);

/// A "no policy" as the shared store keeps it (the payload's JSON).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SharedNegative {
    pub negative: NegativeBody,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NegativeBody {
    /// Why the discovery found no policy.
    pub why: String,
    /// The RFC 8460 result type when the domain publishes MTA-STS.
    pub failure: Option<String>,
}

/// What a shared "no policy" says, checked: its reason and failure, or
/// why it is refused. `fetched`, `expires`: the entry's times (seconds).
pub fn check_negative(
    n: &SharedNegative,
    fetched: u64,
    expires: u64,
) -> Result<(String, Option<StsPolicyFailure>), String> {
    if expires.saturating_sub(fetched) > SHARED_NEGATIVE_MAX {
        return Err(format!(
            "a \"no policy\" kept {}s, more than {SHARED_NEGATIVE_MAX}s",
            expires.saturating_sub(fetched)
        ));
    }
    let why = &n.negative.why;
    if why.len() > MAX_SHARED_WHY || why.chars().any(char::is_control) {
        return Err("the reason of a \"no policy\" is too long or not text".into());
    }
    let failure = match &n.negative.failure {
        None => None,
        Some(f) => Some(
            [
                StsPolicyFailure::FetchError,
                StsPolicyFailure::Invalid,
                StsPolicyFailure::WebPkiInvalid,
            ]
            .into_iter()
            .find(|k| k.as_str() == f)
            .ok_or_else(|| {
                format!(
                    "{:?} is not a policy failure",
                    crate::util::text::printable_ascii(f, 64)
                )
            })?,
        ),
    };
    Ok((why.clone(), failure))
}

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
        if let Ok(n) = entry.decode::<SharedNegative>() {
            return self.take_negative(domain, &entry, &n);
        }
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

    /// A "no policy" from the shared store, unless this host holds a
    /// valid policy (answered then) or the entry is unusable.
    fn take_negative(&self, domain: &str, entry: &Entry, n: &SharedNegative) -> Option<Slot> {
        let shared = self.shared.get()?;
        let (fetched, expires) = (secs(entry.fetched_at), secs(entry.expires_at));
        let (why, failure) = match check_negative(n, fetched, expires) {
            Ok(v) => v,
            Err(e) => {
                shared.unusable(Kind::MtaSts, domain, &e);
                return None;
            }
        };
        let now = now_secs();
        let own = now.saturating_add(self.settings.load().negative_ttl.as_secs());
        let slot = Slot::Negative(Arc::new(Negative {
            until: expires.min(own),
            why,
            failure,
        }));
        let taken = self.cache.insert_unless(
            domain.to_string(),
            slot.clone(),
            slot.expiry(),
            |old, _| matches!(old, Slot::Policy(c) if c.expires_at > now),
        );
        if !taken {
            return self.valid_policy(domain, now).map(Slot::Policy);
        }
        tracing::info!(domain, "MTA-STS \"no policy\" taken from the shared store");
        Some(slot)
    }

    /// Before a first discovery of `domain`: the shared store's entry, or
    /// another host's discovery waited for. `Err`: this host discovers,
    /// for the fleet when it holds the claim.
    pub(super) async fn before_discovery(&self, domain: &str) -> Result<Slot, Option<ClaimToken>> {
        let Some(shared) = self.shared.get() else {
            return Err(None);
        };
        if self.valid_policy(domain, now_secs()).is_some() {
            return Err(None);
        }
        if let Some(slot) = self.ask_shared(domain).await {
            return Ok(slot);
        }
        let fetch_timeout = self.fetcher.load().settings().fetch_timeout;
        let hold = fetch_timeout + self.settings.load().lookup_timeout + HOLD_MARGIN;
        for _ in 0..CLAIM_ROUNDS {
            match shared.claim(Kind::MtaSts, domain, hold).await {
                Claim::Won(t) => {
                    // Another host may have settled between the read above
                    // and this claim: read once more before discovering.
                    if let Some(slot) = self.ask_shared(domain).await {
                        shared.settle(t, None).await;
                        return Ok(slot);
                    }
                    return Err(Some(t));
                }
                Claim::Unavailable => return Err(None),
                Claim::Busy(wait) => {
                    let end = wait.await;
                    if let Some(slot) = self.ask_shared(domain).await {
                        return Ok(slot);
                    }
                    if end == Waited::Down {
                        return Err(None);
                    }
                }
            }
        }
        Err(None)
    }

    /// End this host's claim of `domain` with what its discovery answers.
    pub(super) async fn settle(&self, claim: ClaimToken, domain: &str, slot: &Slot) {
        let Some(shared) = self.shared.get() else {
            return;
        };
        let learned = match slot {
            Slot::Policy(c) => Entry::new(
                Kind::MtaSts,
                domain,
                to_time(c.fetched_at),
                to_time(c.expires_at),
                &c.persisted(),
            )
            .map(|entry| Learned {
                entry,
                negative: false,
            }),
            Slot::Negative(n) => {
                let now = now_secs();
                let until = n.until.min(now.saturating_add(SHARED_NEGATIVE_MAX));
                let why = crate::util::text::printable_ascii(&n.why, MAX_SHARED_WHY);
                let body = SharedNegative {
                    negative: NegativeBody {
                        why,
                        failure: n.failure.map(|f| f.as_str().to_string()),
                    },
                };
                Entry::new(Kind::MtaSts, domain, to_time(now), to_time(until), &body).map(|entry| {
                    Learned {
                        entry,
                        negative: true,
                    }
                })
            }
        };
        let learned = learned
            .map_err(|e| tracing::error!(domain, error = %e, "cannot share an MTA-STS result"))
            .ok()
            .filter(|l| l.entry.expires_at > l.entry.fetched_at);
        shared.settle(claim, learned).await;
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

    fn negative(why: &str, failure: Option<&str>) -> SharedNegative {
        SharedNegative {
            negative: NegativeBody {
                why: why.into(),
                failure: failure.map(str::to_string),
            },
        }
    }

    #[test]
    fn a_shared_no_policy_is_short_bounded_and_names_a_known_failure() {
        let n = negative("no MTA-STS record", None);
        assert_eq!(
            check_negative(&n, 1_000, 1_000 + SHARED_NEGATIVE_MAX),
            Ok(("no MTA-STS record".into(), None))
        );
        let err = check_negative(&n, 1_000, 1_001 + SHARED_NEGATIVE_MAX).unwrap_err();
        assert!(err.contains("more than 300s"), "{err}");
        let f = negative("fetch failed", Some("sts-webpki-invalid"));
        assert_eq!(
            check_negative(&f, 1_000, 1_060).unwrap().1,
            Some(StsPolicyFailure::WebPkiInvalid)
        );
        assert!(check_negative(&negative("x", Some("sts-other")), 1_000, 1_060).is_err());
        // The reason: at most MAX_SHARED_WHY bytes of text.
        let at = "r".repeat(MAX_SHARED_WHY);
        assert!(check_negative(&negative(&at, None), 1_000, 1_060).is_ok());
        let over = "r".repeat(MAX_SHARED_WHY + 1);
        assert!(check_negative(&negative(&over, None), 1_000, 1_060).is_err());
        assert!(check_negative(&negative("a\nb", None), 1_000, 1_060).is_err());
        // The payload's shape: a policy never reads as a "no policy", nor
        // one with more fields.
        assert!(serde_json::from_str::<SharedNegative>(r#"{"id":"1"}"#).is_err());
        assert!(
            serde_json::from_str::<SharedNegative>(
                r#"{"negative":{"why":"x","failure":null},"policy":1}"#
            )
            .is_err()
        );
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
