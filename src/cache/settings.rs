//! A cache's fixed settings: the cap, the eviction order, refresh-ahead,
//! the limit of flights.

/// Which entries go first when the cache is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Eviction {
    /// The least recently looked up or written.
    LeastRecentlyUsed,
    /// The least recently written (lookups do not count).
    OldestWritten,
}

/// A cache's fixed settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheConfig {
    /// Entries at most (at least 1).
    pub capacity: usize,
    pub eviction: Eviction,
    /// Entries forgotten at once when full (default: an eighth of the
    /// capacity, at least 1).
    pub evict_batch: usize,
    /// `Some(n)`: an entry is due for refresh in the last `1/n` of its
    /// life (unless its [`Expiry`] says otherwise).
    pub refresh_ahead: Option<u32>,
    /// Flights started by [`TtlCache::spawn_flight`] at once at most;
    /// past it, none starts ([`FlightStart::Full`]).
    pub max_flights: usize,
}

impl CacheConfig {
    /// `capacity` entries, LRU, no refresh-ahead, flights unbounded.
    pub fn new(capacity: usize) -> CacheConfig {
        let capacity = capacity.max(1);
        CacheConfig {
            capacity,
            eviction: Eviction::LeastRecentlyUsed,
            evict_batch: (capacity / 8).max(1),
            refresh_ahead: None,
            max_flights: usize::MAX,
        }
    }

    /// No cap (nothing is ever evicted).
    pub fn unbounded() -> CacheConfig {
        CacheConfig::new(usize::MAX).eviction(Eviction::OldestWritten)
    }

    pub fn eviction(mut self, e: Eviction) -> CacheConfig {
        self.eviction = e;
        self
    }

    pub fn refresh_ahead(mut self, last_fraction: u32) -> CacheConfig {
        self.refresh_ahead = Some(last_fraction.max(1));
        self
    }

    pub fn max_flights(mut self, n: usize) -> CacheConfig {
        self.max_flights = n;
        self
    }
}
