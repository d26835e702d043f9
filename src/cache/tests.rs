use super::*;

use std::sync::Mutex;
use std::sync::atomic::AtomicUsize;
use std::time::Duration;

/// Counts every event.
#[derive(Default)]
struct Counts {
    hits: AtomicUsize,
    negative_hits: AtomicUsize,
    misses: AtomicUsize,
    evicted: AtomicUsize,
    refreshes: AtomicUsize,
    size: Mutex<CacheSize>,
}

impl CacheObserver for Counts {
    fn hit(&self) {
        self.hits.fetch_add(1, Ordering::SeqCst);
    }
    fn negative_hit(&self) {
        self.negative_hits.fetch_add(1, Ordering::SeqCst);
    }
    fn miss(&self) {
        self.misses.fetch_add(1, Ordering::SeqCst);
    }
    fn evicted(&self, n: usize) {
        self.evicted.fetch_add(n, Ordering::SeqCst);
    }
    fn refresh(&self) {
        self.refreshes.fetch_add(1, Ordering::SeqCst);
    }
    fn size(&self, size: CacheSize) {
        *self.size.lock().unwrap() = size;
    }
}

impl Counts {
    fn get(&self) -> [usize; 5] {
        [
            self.hits.load(Ordering::SeqCst),
            self.negative_hits.load(Ordering::SeqCst),
            self.misses.load(Ordering::SeqCst),
            self.evicted.load(Ordering::SeqCst),
            self.refreshes.load(Ordering::SeqCst),
        ]
    }
}

fn t(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_000_000 + secs)
}

fn cache(config: CacheConfig) -> (Arc<TtlCache<String, u32>>, Arc<Counts>) {
    let counts = Arc::new(Counts::default());
    (Arc::new(TtlCache::new(config, counts.clone())), counts)
}

#[test]
fn expiry_at_exact_boundaries() {
    let (c, _) = cache(CacheConfig::new(10));
    c.insert("a".into(), 1, Expiry::between(t(100), t(200)));
    // Before `from` (the clock went back): not valid, but known.
    assert_eq!(c.get_at("a", t(99)), CacheLookup::Expired(1));
    assert!(matches!(
        c.get_at("a", t(100)),
        CacheLookup::Fresh { value: 1, .. }
    ));
    assert!(matches!(
        c.get_at("a", t(199)),
        CacheLookup::Fresh { value: 1, .. }
    ));
    let last = t(200) - Duration::from_nanos(1);
    assert!(matches!(
        c.get_at("a", last),
        CacheLookup::Fresh { value: 1, .. }
    ));
    assert_eq!(c.get_at("a", t(200)), CacheLookup::Expired(1));
    assert_eq!(c.get_at("b", t(150)), CacheLookup::Missing);
    assert_eq!(c.peek_valid("a", t(200)), None);
    assert_eq!(c.peek_valid("a", t(150)), Some(1));
    // Expired entries stay until removed.
    assert_eq!(c.len(), 1);
    assert_eq!(c.remove_expired(t(199)), 0);
    // A clock gone back does not count as expiry.
    assert_eq!(c.remove_expired(t(50)), 0);
    assert_eq!(c.remove_expired(t(200)), 1);
    assert!(c.is_empty());
    // Zero life: never valid.
    c.insert("z".into(), 0, Expiry::after(t(0), Duration::ZERO));
    assert_eq!(c.get_at("z", t(0)), CacheLookup::Expired(0));
}

#[test]
fn cap_evicts_the_least_recently_used_batch_and_counts_it() {
    let (c, counts) = cache(CacheConfig::new(16));
    for i in 0..16u64 {
        c.insert(
            format!("d{i}"),
            i as u32,
            Expiry::after(t(0), Duration::from_secs(1000)),
        );
    }
    // Use them in order: d0 is the least recently used, d15 the most.
    let now = SystemTime::now();
    for i in 0..16u64 {
        c.get_at(&format!("d{i}"), now + Duration::from_secs(i + 1));
    }
    // d0 is in flight: never evicted.
    let _flight = match c.flights.begin(&"d0".to_string(), false) {
        Begin::Lead(tx, landing, _) => (tx, landing),
        _ => unreachable!(),
    };
    c.insert(
        "new".into(),
        99,
        Expiry::after(t(0), Duration::from_secs(1000)),
    );
    // An eighth of 16 went, then the new one came.
    assert_eq!(c.len(), 15);
    assert!(c.contains("d0"), "in flight");
    assert!(!c.contains("d1") && !c.contains("d2"));
    assert!(c.contains("d3") && c.contains("new"));
    assert_eq!(counts.get()[3], 2);
    assert_eq!(counts.size.lock().unwrap().entries, 15);
    // Replacing a key does not evict.
    c.insert(
        "new".into(),
        100,
        Expiry::after(t(0), Duration::from_secs(1000)),
    );
    assert_eq!(counts.get()[3], 2);
}

#[test]
fn oldest_written_ignores_lookups() {
    let (c, _) = cache(CacheConfig::new(4).eviction(Eviction::OldestWritten));
    for i in 0..4u32 {
        c.insert(format!("d{i}"), i, Expiry::expired());
        std::thread::sleep(Duration::from_millis(2));
    }
    // Looking d0 up does not save it.
    c.get("d0");
    c.insert("d4".into(), 4, Expiry::expired());
    assert!(!c.contains("d0") && c.contains("d1") && c.contains("d4"));
    // Writing d1 again does.
    c.insert("d1".into(), 1, Expiry::expired());
    c.insert("d5".into(), 5, Expiry::expired());
    assert!(c.contains("d1") && !c.contains("d2"));
}

#[test]
fn negative_entries_are_served_and_counted_apart() {
    let (c, counts) = cache(CacheConfig::new(10));
    c.insert("none".into(), 0, Expiry::between(t(0), t(10)).negative());
    c.insert("some".into(), 1, Expiry::between(t(0), t(100)));
    assert!(matches!(
        c.get_at("none", t(5)),
        CacheLookup::Fresh { value: 0, .. }
    ));
    assert!(matches!(
        c.get_at("some", t(5)),
        CacheLookup::Fresh { value: 1, .. }
    ));
    assert_eq!(c.get_at("none", t(10)), CacheLookup::Expired(0));
    assert_eq!(counts.get()[..3], [1, 1, 1]);
    assert_eq!(
        c.size(),
        CacheSize {
            entries: 2,
            negative: 1
        }
    );
    assert_eq!(c.size().positive(), 1);
    // A negative entry replaced by a positive one, and removal.
    c.insert("none".into(), 2, Expiry::between(t(0), t(10)));
    assert_eq!(
        c.size(),
        CacheSize {
            entries: 2,
            negative: 0
        }
    );
    c.insert("gone".into(), 0, Expiry::between(t(0), t(10)).negative());
    assert_eq!(c.remove_expired(t(10)), 2);
    assert_eq!(
        *counts.size.lock().unwrap(),
        CacheSize {
            entries: 1,
            negative: 0
        }
    );
}

#[test]
fn refresh_ahead_window() {
    let (c, _) = cache(CacheConfig::new(10).refresh_ahead(4));
    c.insert("a".into(), 1, Expiry::between(t(0), t(100)));
    let due = |now| {
        matches!(
            c.get_at("a", now),
            CacheLookup::Fresh {
                refresh_due: true,
                ..
            }
        )
    };
    // The last quarter: 25 s left is not less than a quarter.
    assert!(!due(t(75)));
    assert!(due(t(76)));
    assert!(due(t(99)));
    c.insert("b".into(), 1, Expiry::between(t(0), t(100)).no_refresh());
    assert!(!matches!(
        c.get_at("b", t(99)),
        CacheLookup::Fresh {
            refresh_due: true,
            ..
        }
    ));
    c.insert(
        "c".into(),
        1,
        Expiry::between(t(0), t(100)).refresh_at(t(10)),
    );
    assert!(matches!(
        c.get_at("c", t(11)),
        CacheLookup::Fresh {
            refresh_due: true,
            ..
        }
    ));
    // Without refresh-ahead, never due.
    let (plain, _) = cache(CacheConfig::new(10));
    plain.insert("a".into(), 1, Expiry::between(t(0), t(100)));
    assert!(!matches!(
        plain.get_at("a", t(99)),
        CacheLookup::Fresh {
            refresh_due: true,
            ..
        }
    ));
}

#[tokio::test]
async fn refresh_runs_once_while_the_valid_value_is_served() {
    let (c, counts) = cache(CacheConfig::new(10).refresh_ahead(2));
    let now = SystemTime::now();
    c.insert(
        "a".into(),
        1,
        Expiry::between(now - Duration::from_secs(90), now + Duration::from_secs(10)),
    );
    let (go, wait) = tokio::sync::oneshot::channel::<()>();
    let runs = Arc::new(AtomicUsize::new(0));
    let mut wait = Some(wait);
    let mut started = Vec::new();
    for _ in 0..5 {
        let CacheLookup::Fresh { value, refresh_due } = c.get("a") else {
            panic!("not fresh")
        };
        assert_eq!(value, 1, "the valid value is served meanwhile");
        assert!(refresh_due);
        let (c2, runs, wait) = (c.clone(), runs.clone(), wait.take());
        let s = c.refresh("a".into(), move || async move {
            runs.fetch_add(1, Ordering::SeqCst);
            if let Some(w) = wait {
                let _ = w.await;
            }
            let now = SystemTime::now();
            c2.insert("a".into(), 2, Expiry::after(now, Duration::from_secs(100)));
            2
        });
        started.push(s.is_new());
    }
    assert_eq!(started, [true, false, false, false, false]);
    go.send(()).unwrap();
    while c.in_flight("a") {
        tokio::task::yield_now().await;
    }
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    assert_eq!(counts.get()[4], 1);
    assert!(matches!(
        c.get("a"),
        CacheLookup::Fresh {
            value: 2,
            refresh_due: false
        }
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_misses_run_one_fetch() {
    let (c, counts) = cache(CacheConfig::new(10));
    let fetches = Arc::new(AtomicUsize::new(0));
    let barrier = Arc::new(tokio::sync::Barrier::new(32));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..32 {
        let (c, fetches, barrier) = (c.clone(), fetches.clone(), barrier.clone());
        tasks.spawn(async move {
            barrier.wait().await;
            c.get_or_fetch("k".to_string(), || async {
                fetches.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(50)).await;
                (7, Expiry::after(SystemTime::now(), Duration::from_secs(60)))
            })
            .await
        });
    }
    while let Some(v) = tasks.join_next().await {
        assert_eq!(v.unwrap(), 7);
    }
    assert_eq!(fetches.load(Ordering::SeqCst), 1);
    // Each caller counted once: all missed, or came after the fetch.
    let [hits, _, misses, _, _] = counts.get();
    assert_eq!(hits + misses, 32);
    assert!(!c.in_flight("k"));

    // Spawned flights too: one fetch, every waiter gets its result.
    let runs = Arc::new(AtomicUsize::new(0));
    let mut flights = Vec::new();
    for _ in 0..10 {
        let runs = runs.clone();
        let s = c.spawn_flight("s".into(), move || async move {
            runs.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(20)).await;
            5
        });
        flights.push(s.flight().unwrap());
    }
    for f in flights {
        assert_eq!(f.wait().await, Some(5));
    }
    assert_eq!(runs.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_cancelled_leader_hands_over_and_never_hangs() {
    let (c, _) = cache(CacheConfig::new(10));
    // The leader never finishes; it is cancelled.
    let leader = {
        let c = c.clone();
        tokio::spawn(async move {
            c.get_or_fetch("k".to_string(), std::future::pending::<(u32, Expiry)>)
                .await
        })
    };
    while !c.in_flight("k") {
        tokio::task::yield_now().await;
    }
    let follower = {
        let c = c.clone();
        tokio::spawn(async move {
            c.get_or_fetch("k".to_string(), || async {
                (3, Expiry::after(SystemTime::now(), Duration::from_secs(60)))
            })
            .await
        })
    };
    tokio::task::yield_now().await;
    leader.abort();
    let v = tokio::time::timeout(Duration::from_secs(5), follower)
        .await
        .expect("the follower took over")
        .unwrap();
    assert_eq!(v, 3);
    assert!(!c.in_flight("k"));

    // A spawned flight whose task dies: waiters get None, the key is free.
    let s = c.spawn_flight("p".into(), || async {
        panic!("the fetch panicked");
    });
    let f = s.flight().unwrap();
    assert_eq!(
        tokio::time::timeout(Duration::from_secs(5), f.wait())
            .await
            .unwrap(),
        None
    );
    assert!(!c.in_flight("p"));
    // A waiter that gives up cancels nothing.
    let s = c.spawn_flight("q".into(), || async {
        tokio::time::sleep(Duration::from_millis(30)).await;
        9
    });
    assert!(
        s.flight()
            .unwrap()
            .wait_at_most(Duration::from_millis(1))
            .await
            .is_err()
    );
    let again = c.spawn_flight("q".into(), || async { unreachable!() });
    assert!(!again.is_new());
    assert_eq!(again.flight().unwrap().wait().await, Some(9));
}

#[tokio::test]
async fn flights_are_limited() {
    let (c, _) = cache(CacheConfig::new(10).max_flights(1));
    let a = c.spawn_flight("a".into(), std::future::pending::<u32>);
    assert!(a.is_new());
    assert!(matches!(
        c.spawn_flight("b".into(), || async { 1 }),
        FlightStart::Full
    ));
    // Joining a running one is not limited.
    assert!(matches!(
        c.spawn_flight("a".into(), || async { 1 }),
        FlightStart::Running(_)
    ));
    assert_eq!(c.flights(), 1);
}

#[test]
fn insert_unless_upsert_retain_and_map() {
    let (c, _) = cache(CacheConfig::new(10));
    let now = SystemTime::now();
    let valid = Expiry::after(now, Duration::from_secs(60));
    c.insert("a".into(), 1, valid);
    // Keep a valid old value.
    assert!(!c.insert_unless("a".into(), 2, valid, |_, valid| valid));
    assert_eq!(c.peek("a").unwrap().0, 1);
    assert!(c.insert_unless("a".into(), 3, valid, |old, _| *old != 1));
    c.upsert("b".into(), |old| {
        assert!(old.is_none());
        (10, Expiry::expired())
    });
    c.upsert("b".into(), |old| (old.unwrap().0 + 1, *old.unwrap().1));
    assert_eq!(c.peek("b").unwrap().0, 11);
    c.map_values(|_, v| v * 2);
    assert_eq!(c.peek("a").unwrap().0, 6);
    assert_eq!(c.retain(|k, _, _| k == "a"), 1);
    assert_eq!(c.remove("a"), Some(6));
    assert!(c.is_empty());
}

#[test]
fn observer_counts_lookups() {
    let (c, counts) = cache(CacheConfig::new(10));
    c.insert("a".into(), 1, Expiry::between(t(0), t(10)));
    c.get_at("a", t(1));
    c.get_at("a", t(2));
    c.get_at("a", t(10));
    c.get_at("x", t(1));
    // Peeks are not counted.
    c.peek("a");
    c.peek_valid("a", t(1));
    assert_eq!(counts.get(), [2, 0, 2, 0, 0]);
    assert_eq!(
        *counts.size.lock().unwrap(),
        CacheSize {
            entries: 1,
            negative: 0
        }
    );
}
