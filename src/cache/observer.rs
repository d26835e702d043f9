//! What a cache reports as it works: handed in at construction, so the
//! cache knows nothing of where the counts go (the metrics registry
//! implements [`CacheObserver`] in `crate::metrics`).

use std::time::Duration;

/// How many entries a cache holds, and how many of them are negative
/// (a remembered "nothing there" or failure).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheSize {
    pub entries: usize,
    pub negative: usize,
}

impl CacheSize {
    /// Entries that are not negative.
    pub fn positive(self) -> usize {
        self.entries - self.negative
    }
}

/// Receives a cache's events. Every method has an empty default; calls
/// happen on the lookup path (keep them cheap: an atomic add).
pub trait CacheObserver: Send + Sync {
    /// A counted lookup found a valid positive entry.
    fn hit(&self) {}
    /// A counted lookup found a valid negative entry.
    fn negative_hit(&self) {}
    /// A counted lookup found nothing valid.
    fn miss(&self) {}
    /// `n` entries were dropped to stay within the size cap.
    fn evicted(&self, _n: usize) {}
    /// A refresh of an entry still valid was started in the background.
    fn refresh(&self) {}
    /// The cache's size changed (reported after every change).
    fn size(&self, _size: CacheSize) {}
    /// A fetch for the cache (a lookup on the network) ended.
    fn fetched(&self, _outcome: FetchOutcome, _took: Duration) {}
    /// A fetch was not started: `why` (a short word, `queue_full`).
    fn dropped(&self, _why: &'static str) {}
}

/// How a fetch ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FetchOutcome {
    /// Something was found (a policy).
    Found,
    /// Nothing is published.
    None,
    /// What is published is not usable.
    Invalid,
    /// The fetch failed.
    Error,
    /// A fetch that ends in a verdict of its own (a STARTTLS probe).
    Verdict(&'static str),
}

/// Counts nothing.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoObserver;

impl CacheObserver for NoObserver {}
