//! One cache for everything that remembers what it looked up: DANE
//! results, MTA-STS policies, STARTTLS probe results (and, next, the
//! policy server's message state).
//!
//! [`TtlCache`] maps keys to values, each with its own validity
//! ([`Expiry`]): valid from `from` (a clock that went backwards makes an
//! entry older, not younger) until `until`, exclusive. Around that:
//!
//! - **negative entries**: an entry marked [`Expiry::negative`] is a
//!   remembered "nothing there" or failure; it is served like any other
//!   and counted apart ([`CacheObserver::negative_hit`], [`CacheSize`]);
//! - **size cap**: at most `capacity` entries. Making room forgets a batch
//!   (an eighth of the cap unless set) of the entries that have no fetch
//!   in flight, the least recently used ([`Eviction::LeastRecentlyUsed`])
//!   or the least recently written ([`Eviction::OldestWritten`]) first;
//!   evictions are counted ([`CacheObserver::evicted`]);
//! - **expired entries stay** until evicted, removed, or cleared by
//!   [`TtlCache::remove_expired`]: what was known can still be read
//!   ([`CacheFound::Expired`], [`TtlCache::peek`]);
//! - **single flight**: [`TtlCache::spawn_flight`] runs one fetch per key
//!   on the runtime, detached from whoever asked (a caller that gives up
//!   cancels nothing); [`TtlCache::get_or_fetch`] runs it in the caller,
//!   and when that caller is cancelled another waiter takes over;
//! - **refresh-ahead**: an entry used in the last fraction of its life
//!   ([`CacheConfig::refresh_ahead`], or [`Expiry::refresh_at`]) is served
//!   with `refresh_due` set; [`TtlCache::refresh`] then starts one
//!   background fetch (joining a running one) while the valid value goes
//!   on being served;
//! - **an observer** ([`CacheObserver`]) handed in at construction gets
//!   hits, misses, negative hits, evictions, refreshes and the size.
//!
//! Lookups take a read lock and never allocate; counted lookups touch an
//! atomic per entry only under LRU eviction and at most once per
//! millisecond. Below the cache, [`persist::PersistedStore`] keeps
//! entries across restarts.

mod expiry;
mod flight;
pub mod observer;
pub mod persist;
mod settings;

use std::borrow::Borrow;
use std::future::Future;
use std::hash::Hash;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hashbrown::HashMap;

pub use expiry::Expiry;
use expiry::Refresh;
use flight::{Begin, Flights};
pub use flight::{Flight, FlightStart};
pub use observer::{CacheObserver, CacheSize, FetchOutcome, NoObserver};
pub use settings::{CacheConfig, Eviction};

/// What a lookup found.
#[derive(Debug)]
pub enum CacheFound<'a, V> {
    /// Valid now; `refresh_due` when in its refresh-ahead window.
    Fresh {
        value: &'a V,
        refresh_due: bool,
    },
    /// Known but not valid now.
    Expired(&'a V),
    Missing,
}

/// [`CacheFound`], owned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CacheLookup<V> {
    Fresh { value: V, refresh_due: bool },
    Expired(V),
    Missing,
}

impl<V> CacheLookup<V> {
    /// The value, valid or not.
    pub fn value(self) -> Option<V> {
        match self {
            CacheLookup::Fresh { value, .. } | CacheLookup::Expired(value) => Some(value),
            CacheLookup::Missing => None,
        }
    }

    /// The value if valid.
    pub fn fresh(self) -> Option<V> {
        match self {
            CacheLookup::Fresh { value, .. } => Some(value),
            _ => None,
        }
    }
}

/// An entry. Times are nanoseconds since the epoch (the table stays
/// small: lookups touch fewer cache lines).
struct Slot<V> {
    value: V,
    from: u64,
    until: u64,
    /// `u64::MAX`: never due.
    refresh_at: u64,
    negative: bool,
    /// When it was last used (or written), for eviction: see [`order`].
    order: AtomicU64,
}

impl<V> Slot<V> {
    fn is_valid_at(&self, now: u64) -> bool {
        now >= self.from && now < self.until
    }

    fn expiry(&self) -> Expiry {
        let t = |n: u64| UNIX_EPOCH + Duration::from_nanos(n);
        let e = Expiry::between(t(self.from), t(self.until));
        let e = if self.negative { e.negative() } else { e };
        match self.refresh_at {
            u64::MAX => e.no_refresh(),
            at => e.refresh_at(t(at)),
        }
    }
}

/// Nanoseconds since the epoch (0 before it, `u64::MAX` past 2554).
fn nanos(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

struct Table<K, V> {
    map: HashMap<K, Slot<V>>,
    negative: usize,
    /// Writes so far: orders the writes of one millisecond.
    writes: u64,
}

impl<K: Hash + Eq, V> Table<K, V> {
    fn size(&self) -> CacheSize {
        CacheSize {
            entries: self.map.len(),
            negative: self.negative,
        }
    }

    fn removed(&mut self, slot: &Slot<V>) {
        if slot.negative {
            self.negative -= 1;
        }
    }
}

fn millis(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Bits of [`Slot::order`] below the milliseconds.
const ORDER_SHIFT: u32 = 20;

/// An eviction order: milliseconds since the epoch, then (low bits) the
/// write's number within the table, so that writes in one millisecond keep
/// their order; a use counts as after every write of its millisecond.
fn order(ms: u64, write: Option<u64>) -> u64 {
    let low = write.map_or((1 << ORDER_SHIFT) - 1, |w| w % ((1 << ORDER_SHIFT) - 1));
    (ms.min(u64::MAX >> ORDER_SHIFT) << ORDER_SHIFT) | low
}

/// The TTL cache. Share it behind an `Arc` (flights need one).
pub struct TtlCache<K, V> {
    table: RwLock<Table<K, V>>,
    flights: Flights<K, V>,
    config: CacheConfig,
    observer: Arc<dyn CacheObserver>,
}

impl<K, V> std::fmt::Debug for TtlCache<K, V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TtlCache")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl<K, V> TtlCache<K, V>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
{
    pub fn new(config: CacheConfig, observer: Arc<dyn CacheObserver>) -> TtlCache<K, V> {
        let cache = TtlCache {
            table: RwLock::new(Table {
                map: HashMap::new(),
                negative: 0,
                writes: 0,
            }),
            flights: Flights::new(config.max_flights),
            config,
            observer,
        };
        cache.observer.size(CacheSize::default());
        cache
    }

    pub fn config(&self) -> &CacheConfig {
        &self.config
    }

    fn read(&self) -> RwLockReadGuard<'_, Table<K, V>> {
        self.table.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, Table<K, V>> {
        self.table.write().unwrap_or_else(|e| e.into_inner())
    }

    /// The counted lookup, without copying: `f` sees what was found
    /// (under the read lock: keep it short, take no other lock of this
    /// cache).
    pub fn lookup_with<Q, R>(
        &self,
        key: &Q,
        now: SystemTime,
        f: impl FnOnce(CacheFound<'_, V>) -> R,
    ) -> R
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let table = self.read();
        let Some(slot) = table.map.get(key) else {
            self.observer.miss();
            return f(CacheFound::Missing);
        };
        if self.config.eviction == Eviction::LeastRecentlyUsed {
            let used = order(millis(now), None);
            if slot.order.load(Ordering::Relaxed) < used {
                slot.order.store(used, Ordering::Relaxed);
            }
        }
        let now = nanos(now);
        if !slot.is_valid_at(now) {
            self.observer.miss();
            return f(CacheFound::Expired(&slot.value));
        }
        if slot.negative {
            self.observer.negative_hit();
        } else {
            self.observer.hit();
        }
        let refresh_due = now > slot.refresh_at;
        f(CacheFound::Fresh {
            value: &slot.value,
            refresh_due,
        })
    }

    /// The counted lookup at `now`.
    pub fn get_at<Q>(&self, key: &Q, now: SystemTime) -> CacheLookup<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.lookup_with(key, now, |found| match found {
            CacheFound::Fresh { value, refresh_due } => CacheLookup::Fresh {
                value: value.clone(),
                refresh_due,
            },
            CacheFound::Expired(v) => CacheLookup::Expired(v.clone()),
            CacheFound::Missing => CacheLookup::Missing,
        })
    }

    /// The counted lookup, now.
    pub fn get<Q>(&self, key: &Q) -> CacheLookup<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.get_at(key, SystemTime::now())
    }

    /// The value, valid or not, and its expiry: not counted, not touched.
    pub fn peek<Q>(&self, key: &Q) -> Option<(V, Expiry)>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.read()
            .map
            .get(key)
            .map(|s| (s.value.clone(), s.expiry()))
    }

    /// The value if valid at `now`: not counted, not touched.
    pub fn peek_valid<Q>(&self, key: &Q, now: SystemTime) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let table = self.read();
        let s = table.map.get(key)?;
        s.is_valid_at(nanos(now)).then(|| s.value.clone())
    }

    pub fn contains<Q>(&self, key: &Q) -> bool
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.read().map.contains_key(key)
    }

    /// Entries held (valid or not).
    pub fn len(&self) -> usize {
        self.read().map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Entries held, and how many are negative.
    pub fn size(&self) -> CacheSize {
        self.read().size()
    }

    /// Keep `value` for `key`, replacing what was there.
    pub fn insert(&self, key: K, value: V, expiry: Expiry) {
        self.insert_unless(key, value, expiry, |_, _| false);
    }

    /// Keep `value` for `key` unless `keep(old, old_valid_now)` says the
    /// entry there stays. Returns whether `value` was kept.
    pub fn insert_unless(
        &self,
        key: K,
        value: V,
        expiry: Expiry,
        keep: impl FnOnce(&V, bool) -> bool,
    ) -> bool {
        let now = SystemTime::now();
        let mut table = self.write();
        if let Some(old) = table.map.get(&key)
            && keep(&old.value, old.is_valid_at(nanos(now)))
        {
            return false;
        }
        self.put(&mut table, key, value, expiry, now);
        let size = table.size();
        drop(table);
        self.observer.size(size);
        true
    }

    /// Replace `key`'s entry with what `f` makes of the one there (valid
    /// or not).
    pub fn upsert(&self, key: K, f: impl FnOnce(Option<(&V, &Expiry)>) -> (V, Expiry)) {
        let now = SystemTime::now();
        let mut table = self.write();
        let old = table.map.get(&key).map(|s| (&s.value, s.expiry()));
        let (value, expiry) = f(old.as_ref().map(|(v, e)| (*v, e)));
        self.put(&mut table, key, value, expiry, now);
        let size = table.size();
        drop(table);
        self.observer.size(size);
    }

    fn put(&self, table: &mut Table<K, V>, key: K, value: V, expiry: Expiry, now: SystemTime) {
        if !table.map.contains_key(&key) && table.map.len() >= self.config.capacity {
            self.evict(table);
        }
        let expiry = expiry.resolved(self.config.refresh_ahead);
        if expiry.negative {
            table.negative += 1;
        }
        let slot = Slot {
            value,
            from: nanos(expiry.from),
            until: nanos(expiry.until),
            refresh_at: match expiry.refresh {
                Refresh::At(t) => nanos(t),
                _ => u64::MAX,
            },
            negative: expiry.negative,
            order: AtomicU64::new(order(millis(now), Some(table.writes))),
        };
        table.writes = table.writes.wrapping_add(1);
        if let Some(old) = table.map.insert(key, slot) {
            table.removed(&old);
        }
    }

    /// Make room: forget a batch of the entries without a flight, lowest
    /// order first.
    fn evict(&self, table: &mut Table<K, V>) {
        let mut idle: Vec<(u64, K)> = self.flights.with_keys(|in_flight| {
            table
                .map
                .iter()
                .filter(|(k, _)| !in_flight(k))
                .map(|(k, s)| (s.order.load(Ordering::Relaxed), k.clone()))
                .collect()
        });
        let n = self.config.evict_batch.max(1).min(idle.len());
        if n == 0 {
            return;
        }
        idle.select_nth_unstable_by(n - 1, |a, b| a.0.cmp(&b.0));
        for (_, k) in idle.into_iter().take(n) {
            if let Some(old) = table.map.remove(&k) {
                table.removed(&old);
            }
        }
        self.observer.evicted(n);
    }

    pub fn remove<Q>(&self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let mut table = self.write();
        let old = table.map.remove(key)?;
        table.removed(&old);
        let size = table.size();
        drop(table);
        self.observer.size(size);
        Some(old.value)
    }

    /// Keep only the entries for which `f(key, value, expiry)` is true.
    /// Returns how many were removed.
    pub fn retain(&self, mut f: impl FnMut(&K, &V, &Expiry) -> bool) -> usize {
        let mut table = self.write();
        let before = table.map.len();
        let mut negative_gone = 0;
        table.map.retain(|k, s| {
            let keep = f(k, &s.value, &s.expiry());
            if !keep && s.negative {
                negative_gone += 1;
            }
            keep
        });
        table.negative -= negative_gone;
        let gone = before - table.map.len();
        let size = table.size();
        drop(table);
        self.observer.size(size);
        gone
    }

    /// Forget every entry not valid any more at `now` (a clock gone back
    /// does not count as expiry). Returns how many were removed.
    pub fn remove_expired(&self, now: SystemTime) -> usize {
        self.retain(|_, _, e| now < e.until)
    }

    /// Replace every value by `f`'s (same expiry).
    pub fn map_values(&self, mut f: impl FnMut(&K, &V) -> V) {
        let mut table = self.write();
        for (k, s) in table.map.iter_mut() {
            s.value = f(k, &s.value);
        }
    }

    /// Call `f` on every entry (under the read lock).
    pub fn for_each(&self, mut f: impl FnMut(&K, &V, &Expiry)) {
        for (k, s) in self.read().map.iter() {
            f(k, &s.value, &s.expiry());
        }
    }

    /// Whether a fetch of `key` is running.
    pub fn in_flight<Q>(&self, key: &Q) -> bool
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.flights.contains(key)
    }

    /// Fetches running.
    pub fn flights(&self) -> usize {
        self.flights.len()
    }

    /// Run the fetch `make()` for `key` on the runtime unless one is
    /// running (then join it) or `max_flights` run. The fetch stores what
    /// it found itself (it decides whether and how); its result goes to
    /// every waiter. `make` is called only when a new fetch starts, with
    /// no lock held.
    pub fn spawn_flight<F>(self: &Arc<Self>, key: K, make: impl FnOnce() -> F) -> FlightStart<V>
    where
        F: Future<Output = V> + Send + 'static,
    {
        let (tx, landing, flight) = match self.flights.begin(&key, true) {
            Begin::Follow(f) => return FlightStart::Running(f),
            Begin::Full => return FlightStart::Full,
            Begin::Lead(tx, landing, flight) => (tx, landing, flight),
        };
        // Owned by the task: dropped with it however it ends (even never
        // polled, the runtime shutting down).
        let (key, rx) = landing.detach();
        let landing = OwnedLanding {
            cache: self.clone(),
            key,
            rx,
        };
        let fetch = make();
        tokio::spawn(async move {
            let _landing = landing;
            let v = fetch.await;
            let _ = tx.send(Some(v));
        });
        FlightStart::New(flight)
    }

    /// A refresh-ahead: [`TtlCache::spawn_flight`], counted as a refresh
    /// when it starts one.
    pub fn refresh<F>(self: &Arc<Self>, key: K, make: impl FnOnce() -> F) -> FlightStart<V>
    where
        F: Future<Output = V> + Send + 'static,
    {
        let start = self.spawn_flight(key, make);
        if start.is_new() {
            self.observer.refresh();
        }
        start
    }

    /// The valid value of `key`, else the result of `fetch` run here,
    /// stored with the expiry it gives. Concurrent callers for one key run
    /// one fetch; when its caller is cancelled, a waiter runs its own.
    pub async fn get_or_fetch<F, Fut>(&self, key: K, fetch: F) -> V
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = (V, Expiry)>,
    {
        let mut counted = false;
        loop {
            let now = SystemTime::now();
            let fresh = if counted {
                self.peek_valid(&key, now)
            } else {
                counted = true;
                self.get_at(&key, now).fresh()
            };
            if let Some(v) = fresh {
                return v;
            }
            match self.flights.begin(&key, false) {
                Begin::Lead(tx, landing, _) => {
                    let (v, expiry) = fetch().await;
                    self.insert(key, v.clone(), expiry);
                    let _ = tx.send(Some(v.clone()));
                    drop(landing);
                    return v;
                }
                Begin::Follow(flight) => {
                    if let Some(v) = flight.wait().await {
                        return v;
                    }
                    // The leader is gone without a result: try again.
                }
                Begin::Full => unreachable!("unlimited"),
            }
        }
    }
}

/// A spawned flight's registration, unregistered when dropped.
struct OwnedLanding<K, V>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
{
    cache: Arc<TtlCache<K, V>>,
    key: K,
    rx: tokio::sync::watch::Receiver<Option<V>>,
}

impl<K, V> Drop for OwnedLanding<K, V>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
{
    fn drop(&mut self) {
        self.cache.flights.unregister(&self.key, &self.rx);
    }
}

#[cfg(test)]
mod tests;
