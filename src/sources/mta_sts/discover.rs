//! One discovery of a domain: the TXT record, then (when the id is new,
//! or a refresh asks) the policy; what it learns goes into the cache and
//! the persisted store.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::cached::{Negative, Persisted, Slot, build_cached};
use super::policy::{self, Mode, StsPolicy};
use super::record::{self, RecordError, StsRecord};
use super::{DiscoveryError, Inner, MAX_NEGATIVE, StsPolicyFailure, now_secs, to_time};
use crate::cache::FetchOutcome;
use crate::cache::persist::{Entry, Kind};
use crate::dns::{self, LookupError};

impl Inner {
    pub(super) async fn record(&self, domain: &str) -> Result<StsRecord, DiscoveryError> {
        let name = format!("_mta-sts.{domain}");
        let txt = dns::lookup_txt(&self.resolver, &name)
            .await
            .map_err(DiscoveryError::Dns)?;
        record::select(&txt).map_err(DiscoveryError::Record)
    }

    pub(super) async fn fetch_policy(
        &self,
        domain: &str,
    ) -> Result<(StsPolicy, String), DiscoveryError> {
        self.fetches.fetch_add(1, Ordering::Relaxed);
        let fetcher = self.fetcher.load_full();
        let fetched = fetcher.fetch(domain).await.map_err(DiscoveryError::Fetch)?;
        if let Some(t) = &fetched.lenient_content_type {
            tracing::info!(domain, content_type = %t, "MTA-STS policy not served as text/plain; accepted (lenient_content_type)");
        }
        let policy = policy::parse(&fetched.body).map_err(DiscoveryError::Policy)?;
        let text = String::from_utf8_lossy(&fetched.body).into_owned();
        Ok((policy, text))
    }

    /// One discovery: TXT record, then (if the id is new, or `fetch`) the
    /// policy. A valid cached policy survives every failure.
    /// A domain with nothing valid cached is asked for in the shared
    /// store first, when there is one.
    /// One discovery for the fleet: when another host is at it, its
    /// result is waited for; when this host claims it, what it learns is
    /// written at once and the others are told.
    pub(super) async fn discover(self: &Arc<Self>, domain: &str, fetch: bool) -> Slot {
        let claim = if fetch {
            None
        } else {
            match self.before_discovery(domain).await {
                Ok(slot) => return slot,
                Err(claim) => claim,
            }
        };
        let permit = self.slots.acquire().await;
        let started = std::time::Instant::now();
        let (slot, result) = self.discover_counted(domain, fetch, claim.is_none()).await;
        self.observer.fetched(result, started.elapsed());
        drop(permit);
        if let Some(claim) = claim {
            self.settle(claim, domain, &slot).await;
        }
        slot
    }

    /// [`Inner::discover`], and how it ended for the metrics. A policy
    /// fetched is queued for the shared store when `queue_publish` (not
    /// when a claim's settling writes it).
    async fn discover_counted(
        self: &Arc<Self>,
        domain: &str,
        fetch: bool,
        queue_publish: bool,
    ) -> (Slot, FetchOutcome) {
        let now = now_secs();
        let cached = self.valid_policy(domain, now);
        if let Some(c) = &cached {
            c.checked_at.store(now, Ordering::Relaxed);
        }
        let record = match self.record(domain).await {
            Ok(r) => r,
            Err(e) => {
                if let Some(c) = cached {
                    if c.policy.mode != Mode::None {
                        tracing::warn!(domain, error = %e, id = %c.id, expires = %humantime::format_rfc3339_seconds(to_time(c.expires_at)),
                            "no MTA-STS record now; the cached policy applies until it expires");
                    }
                    return (Slot::Policy(c), FetchOutcome::Error);
                }
                let result = match &e {
                    DiscoveryError::Dns(LookupError::NxDomain | LookupError::NoData)
                    | DiscoveryError::Record(RecordError::None) => FetchOutcome::None,
                    DiscoveryError::Record(_) => FetchOutcome::Invalid,
                    _ => FetchOutcome::Error,
                };
                let why = format!("no MTA-STS policy: {e}");
                let failure = StsPolicyFailure::of(&e);
                return (self.remember_negative(domain, now, why, failure), result);
            }
        };
        if let Some(c) = &cached
            && c.id == record.id
            && !fetch
        {
            return (Slot::Policy(c.clone()), FetchOutcome::Found);
        }
        match self.fetch_policy(domain).await {
            Ok((policy, text)) => {
                let settings = self.settings.load_full();
                let persisted = Persisted {
                    id: record.id.clone(),
                    policy,
                    text,
                };
                let expires = now.saturating_add(persisted.policy.max_age);
                let c = Arc::new(build_cached(
                    domain, persisted, now, expires, now, &settings,
                ));
                tracing::info!(domain, id = %c.id, mode = %c.policy.mode, max_age = c.policy.max_age,
                    "MTA-STS policy fetched");
                if let Some(store) = &self.store {
                    match Entry::new(
                        Kind::MtaSts,
                        domain,
                        to_time(now),
                        to_time(expires),
                        &c.persisted(),
                    ) {
                        Ok(e) => {
                            if queue_publish {
                                self.publish(&e);
                            }
                            store.save(e);
                        }
                        Err(e) => {
                            tracing::error!(domain, error = %e, "cannot store MTA-STS policy")
                        }
                    }
                }
                let slot = Slot::Policy(c);
                self.cache
                    .insert(domain.to_string(), slot.clone(), slot.expiry());
                (slot, FetchOutcome::Found)
            }
            Err(e) => {
                if let Some(c) = cached {
                    if c.policy.mode != Mode::None {
                        tracing::warn!(domain, error = %e, id = %c.id, new_id = %record.id,
                            expires = %humantime::format_rfc3339_seconds(to_time(c.expires_at)),
                            "MTA-STS policy fetch failed; the cached policy applies until it expires");
                    }
                    return (Slot::Policy(c), FetchOutcome::Error);
                }
                tracing::warn!(domain, id = %record.id, error = %e, "MTA-STS record published but no usable policy");
                let why = format!(
                    "MTA-STS record (id {}) but no usable policy: {e}",
                    record.id
                );
                let result = match e {
                    DiscoveryError::Policy(_) => FetchOutcome::Invalid,
                    _ => FetchOutcome::Error,
                };
                let failure = StsPolicyFailure::of(&e);
                (self.remember_negative(domain, now, why, failure), result)
            }
        }
    }

    /// Remember "no policy" for `negative_ttl`, unless the cache is full
    /// of them or a valid policy is there (one fetched meanwhile; an
    /// expired one is replaced). Returns what the discovery answers.
    fn remember_negative(
        &self,
        domain: &str,
        now: u64,
        why: String,
        failure: Option<StsPolicyFailure>,
    ) -> Slot {
        let until = now.saturating_add(self.settings.load().negative_ttl.as_secs());
        let slot = Slot::Negative(Arc::new(Negative {
            until,
            why,
            failure,
        }));
        if self.cache.len() >= MAX_NEGATIVE && !self.cache.contains(domain) {
            return slot;
        }
        self.cache.insert_unless(
            domain.to_string(),
            slot.clone(),
            slot.expiry(),
            |old, _| matches!(old, Slot::Policy(c) if c.expires_at > now),
        );
        slot
    }
}
