//! The metrics registry as a cache's observer: what a cache (and the
//! fetches that fill it) reports lands in the cache and fetch families.

use std::sync::Arc;
use std::time::Duration;

use super::labels::{Cache, Fetch, FetchResult};
use super::registry::Metrics;
use crate::cache::{CacheObserver, CacheSize, FetchOutcome};

/// Records one cache's events into [`Metrics`]. Built by
/// [`Metrics::cache_observer`].
pub struct MetricsObserver {
    metrics: Arc<Metrics>,
    cache: Cache,
}

impl Metrics {
    /// The observer to hand a cache at construction: its lookups, size and
    /// fetches are counted under `cache`'s labels.
    pub fn cache_observer(self: &Arc<Self>, cache: Cache) -> Arc<dyn CacheObserver> {
        Arc::new(MetricsObserver {
            metrics: self.clone(),
            cache,
        })
    }
}

impl CacheObserver for MetricsObserver {
    fn hit(&self) {
        self.metrics.cache_lookup(self.cache, true);
    }

    /// A remembered "none" answers from the cache: a hit.
    fn negative_hit(&self) {
        self.metrics.cache_lookup(self.cache, true);
    }

    fn miss(&self) {
        self.metrics.cache_lookup(self.cache, false);
    }

    fn evicted(&self, n: usize) {
        self.metrics.cache_evicted(self.cache, n);
    }

    /// The MTA-STS family counts policies (remembered "no policy" results
    /// are not entries); the others count every domain held.
    fn size(&self, size: CacheSize) {
        let n = match self.cache {
            Cache::MtaSts => size.positive(),
            Cache::Dane
            | Cache::Prober
            | Cache::PolicyMessages
            | Cache::OutcomeHops
            | Cache::OutcomeProcesses
            | Cache::OutcomeMessages => size.entries,
        };
        self.metrics.cache_entries(self.cache, n);
    }

    fn fetched(&self, outcome: FetchOutcome, took: Duration) {
        let fetch = match self.cache {
            Cache::MtaSts => Fetch::MtaSts,
            Cache::Dane => Fetch::Dane,
            Cache::PolicyMessages
            | Cache::OutcomeHops
            | Cache::OutcomeProcesses
            | Cache::OutcomeMessages => return,
            Cache::Prober => {
                if let FetchOutcome::Verdict(v) = outcome {
                    self.metrics.probe(v, took);
                }
                return;
            }
        };
        let result = match outcome {
            FetchOutcome::Found => FetchResult::Found,
            FetchOutcome::None => FetchResult::None,
            FetchOutcome::Invalid => FetchResult::Invalid,
            FetchOutcome::Error | FetchOutcome::Verdict(_) => FetchResult::Error,
        };
        self.metrics.fetch(fetch, result, took);
    }

    fn dropped(&self, why: &'static str) {
        self.metrics.error(self.cache.component(), why);
    }
}
