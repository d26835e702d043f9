//! DANE (RFC 7672): answer `dane-only` or `dane` for domains whose mail
//! hosts publish TLSA records under DNSSEC.
//!
//! Postfix authenticates DANE itself (`smtp_dns_support_level = dnssec`);
//! this source only has to know *that* a domain has DANE, so the answer is
//! `dane-only` (every MX host has usable TLSA records) or `dane` (some
//! have) instead of falling through to MTA-STS or the default. What counts
//! is in [`assess`]; how DNSSEC status is established is the `dns.dnssec`
//! setting ([`crate::dns::secure`]).
//!
//! **Failures.** A bogus or failed lookup is never "no DANE". What is
//! answered then is `dane.on_failure`:
//! - `defer-known` (default): a domain that had a DANE policy at its last
//!   successful lookup gets a temporary failure (socketmap `TEMP`, Postfix
//!   defers); any other domain gets no DANE policy (the next source
//!   decides);
//! - `defer`: every failure is a temporary failure;
//! - `opportunistic`: no DANE policy; the next source decides.
//!
//! **Cache.** Results are kept for the smallest TTL of the DNS answers
//! used, bounded by `min_ttl` and `max_ttl`; failures for `failure_ttl`.
//! Concurrent requests for one domain share one lookup. A request for a
//! domain whose result has less than a quarter of its time left is
//! answered from the cache and starts a refresh in the background; a
//! request for an expired or unknown domain waits for the lookup, at most
//! `lookup_timeout`. A failed background refresh does not replace a result
//! that is still valid. The cache holds at most `max_cache_entries`
//! domains (the least recently used go first).
//!
//! **Memory.** That a domain had DANE is remembered for `remember` after
//! the last lookup that found it (that is what `defer-known` goes by). A
//! [`DaneStore`] keeps results across restarts (the daemon's cache file,
//! [`crate::store`]): everything stored is loaded when the source is built,
//! and every lookup's result is saved (queued, never waited for).

pub mod assess;

use std::collections::HashMap;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use tokio::sync::{Semaphore, watch};

use crate::dns::secure::SecureResolver;
use crate::engine::decision::{Decision, Level, SourceKind};
use crate::engine::key::Destination;
use crate::engine::{Consulted, Source};
use crate::metrics::{Cache, Fetch, FetchResult, Metrics};
pub use assess::{Assessment, Outcome};

/// What to answer when a DANE lookup fails or does not validate.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FailPolicy {
    /// Temporary failure for domains that had DANE; otherwise no policy.
    #[default]
    DeferKnown,
    /// Temporary failure for every domain.
    Defer,
    /// No DANE policy: the next source decides.
    Opportunistic,
}

impl FailPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            FailPolicy::DeferKnown => "defer-known",
            FailPolicy::Defer => "defer",
            FailPolicy::Opportunistic => "opportunistic",
        }
    }
}

/// The `[dane]` section.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DaneConfig {
    /// Look for DANE at all.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// What a failed or bogus lookup answers.
    #[serde(default)]
    pub on_failure: FailPolicy,
    /// Results are kept at least this long, whatever the DNS TTL.
    #[serde(default = "default_min_ttl", with = "crate::util::duration::human")]
    pub min_ttl: Duration,
    /// Results are kept at most this long, whatever the DNS TTL.
    #[serde(default = "default_max_ttl", with = "crate::util::duration::human")]
    pub max_ttl: Duration,
    /// A failed lookup is remembered this long before the next try.
    #[serde(default = "default_failure_ttl", with = "crate::util::duration::human")]
    pub failure_ttl: Duration,
    /// A request waits at most this long for a lookup; a lookup that takes
    /// longer fails.
    #[serde(
        default = "default_lookup_timeout",
        with = "crate::util::duration::human"
    )]
    pub lookup_timeout: Duration,
    /// MX hosts looked at per domain, most preferred first. A domain with
    /// more is at most `dane`.
    #[serde(default = "default_max_mx")]
    pub max_mx: usize,
    /// Domains looked up at once; more wait.
    #[serde(default = "default_concurrency")]
    pub concurrency: usize,
    /// Domains remembered at most.
    #[serde(default = "default_max_cache_entries")]
    pub max_cache_entries: usize,
    /// The cache file (SQLite) that keeps results across restarts; the
    /// directory must exist.
    #[serde(default = "default_cache_file")]
    pub cache_file: PathBuf,
    /// How long a domain counts as having had DANE after the last lookup
    /// that found a DANE policy (for `on_failure = "defer-known"`).
    #[serde(default = "default_remember", with = "crate::util::duration::human")]
    pub remember: Duration,
}

fn default_true() -> bool {
    true
}
fn default_min_ttl() -> Duration {
    Duration::from_secs(60)
}
fn default_max_ttl() -> Duration {
    Duration::from_secs(86_400)
}
fn default_failure_ttl() -> Duration {
    Duration::from_secs(30)
}
fn default_lookup_timeout() -> Duration {
    Duration::from_secs(20)
}
fn default_max_mx() -> usize {
    10
}
fn default_concurrency() -> usize {
    32
}
fn default_max_cache_entries() -> usize {
    100_000
}
fn default_cache_file() -> PathBuf {
    PathBuf::from(crate::store::DEFAULT_CACHE_FILE)
}
fn default_remember() -> Duration {
    Duration::from_secs(30 * 86_400)
}

impl Default for DaneConfig {
    fn default() -> Self {
        DaneConfig {
            enabled: true,
            on_failure: FailPolicy::default(),
            min_ttl: default_min_ttl(),
            max_ttl: default_max_ttl(),
            failure_ttl: default_failure_ttl(),
            lookup_timeout: default_lookup_timeout(),
            max_mx: default_max_mx(),
            concurrency: default_concurrency(),
            max_cache_entries: default_max_cache_entries(),
            cache_file: default_cache_file(),
            remember: default_remember(),
        }
    }
}

impl DaneConfig {
    /// Check every setting; the message names the key and the problem.
    pub fn validate(&self) -> Result<(), String> {
        for (key, d) in [
            ("min_ttl", self.min_ttl),
            ("max_ttl", self.max_ttl),
            ("failure_ttl", self.failure_ttl),
            ("lookup_timeout", self.lookup_timeout),
            ("remember", self.remember),
        ] {
            if d.is_zero() {
                return Err(format!("{key}: must be longer than zero"));
            }
        }
        if self.max_ttl < self.min_ttl {
            return Err(format!(
                "max_ttl: {} is shorter than min_ttl ({})",
                humantime::format_duration(self.max_ttl),
                humantime::format_duration(self.min_ttl)
            ));
        }
        for (key, n) in [
            ("max_mx", self.max_mx),
            ("concurrency", self.concurrency),
            ("max_cache_entries", self.max_cache_entries),
        ] {
            if n == 0 {
                return Err(format!("{key}: must be at least 1"));
            }
        }
        if self.concurrency > Semaphore::MAX_PERMITS {
            return Err("concurrency: too large".into());
        }
        if self.cache_file.as_os_str().is_empty() {
            return Err("cache_file: an empty path is not a file".into());
        }
        Ok(())
    }
}

/// The last time a lookup found a DANE policy for a domain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LastDane {
    pub at: SystemTime,
    pub level: Level,
}

/// A DANE result as kept between lookups (and in a [`DaneStore`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DaneRecord {
    pub assessment: Assessment,
    /// When the lookup finished.
    pub checked_at: SystemTime,
    /// How long the result is valid (bounded DNS TTL, or `failure_ttl`).
    pub ttl: Duration,
    /// The last lookup that found a DANE policy; kept across failures,
    /// cleared by a lookup that finds none.
    pub last_dane: Option<LastDane>,
}

impl DaneRecord {
    fn expires(&self) -> SystemTime {
        self.checked_at + self.ttl
    }

    /// Time left before the result expires (zero when expired).
    pub fn remaining(&self, now: SystemTime) -> Duration {
        self.expires().duration_since(now).unwrap_or(Duration::ZERO)
    }

    fn fresh(&self, now: SystemTime) -> bool {
        // A clock that went backwards makes a result older, not younger.
        now >= self.checked_at && now < self.expires()
    }

    /// Less than a quarter of the time left.
    fn due_for_refresh(&self, now: SystemTime) -> bool {
        self.remaining(now) < self.ttl / 4
    }

    fn failed(&self) -> bool {
        matches!(self.assessment.outcome, Outcome::Failed { .. })
    }
}

/// Where DANE results are kept across restarts. Implementations must
/// not block a lookup: [`DaneStore::save`] queues.
pub trait DaneStore: Send + Sync {
    /// Every stored result (read once, when the source is built).
    fn load_all(&self) -> Vec<(String, DaneRecord)>;
    /// Keep a domain's result, replacing any older one. `keep_until` is
    /// how long the row is worth keeping (the result's expiry, or longer
    /// while the domain's DANE history is remembered).
    fn save(&self, domain: &str, record: &DaneRecord, keep_until: SystemTime);
    /// Forget rows not worth keeping any more at `now`.
    fn remove_expired(&self, _now: SystemTime) {}
    /// Write what is queued and stop (the daemon shutting down).
    fn close(&self) {}
}

/// A [`DaneStore`] in memory: survives the sources it is given to, not
/// the process.
#[derive(Debug, Default)]
pub struct MemoryStore {
    records: Mutex<HashMap<String, DaneRecord>>,
}

impl MemoryStore {
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn get(&self, domain: &str) -> Option<DaneRecord> {
        self.lock().get(domain).cloned()
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, DaneRecord>> {
        self.records.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl DaneStore for MemoryStore {
    fn load_all(&self) -> Vec<(String, DaneRecord)> {
        self.lock()
            .iter()
            .map(|(d, r)| (d.clone(), r.clone()))
            .collect()
    }

    fn save(&self, domain: &str, record: &DaneRecord, _keep_until: SystemTime) {
        self.lock().insert(domain.to_string(), record.clone());
    }
}

/// Decode stored rows; rows that cannot be used are counted and logged.
fn decode_rows(entries: Vec<crate::store::Entry>, skipped: usize) -> Vec<(String, DaneRecord)> {
    let mut out = Vec::with_capacity(entries.len());
    let mut bad = skipped;
    for e in entries {
        match e.decode::<DaneRecord>() {
            Ok(r) if r.assessment.domain == e.domain => out.push((e.domain, r)),
            _ => bad += 1,
        }
    }
    if bad > 0 {
        tracing::warn!(
            rows = bad,
            "stored DANE results that cannot be used were skipped"
        );
    }
    out
}

/// The daemon's cache file: rows of kind `dane`, the payload a
/// [`DaneRecord`] as JSON.
impl DaneStore for crate::store::Store {
    fn load_all(&self) -> Vec<(String, DaneRecord)> {
        match self.load(crate::store::Kind::Dane) {
            Ok((entries, skipped)) => decode_rows(entries, skipped),
            Err(e) => {
                tracing::warn!(error = %e, "cannot read stored DANE results; starting without them");
                Vec::new()
            }
        }
    }

    fn save(&self, domain: &str, record: &DaneRecord, keep_until: SystemTime) {
        use crate::store::{Entry, Kind};
        match Entry::new(Kind::Dane, domain, record.checked_at, keep_until, record) {
            Ok(e) => self.put(e),
            Err(e) => tracing::warn!(domain, error = %e, "cannot store a DANE result"),
        }
    }

    fn remove_expired(&self, now: SystemTime) {
        crate::store::Store::remove_expired(self, now);
    }

    fn close(&self) {
        crate::store::Store::close(self);
    }
}

/// What the cache file held when it was read, for commands that must not
/// write it (`explain`): saving does nothing.
#[derive(Debug, Default)]
pub struct Snapshot {
    rows: Vec<(String, DaneRecord)>,
}

impl Snapshot {
    /// Read the DANE rows of a cache file; a missing file is empty.
    pub fn read(path: &std::path::Path) -> Result<Snapshot, crate::store::StoreError> {
        if !path.exists() {
            return Ok(Snapshot::default());
        }
        let (entries, skipped) =
            crate::store::Db::open_read_only(path)?.all(Some(crate::store::Kind::Dane))?;
        Ok(Snapshot {
            rows: decode_rows(entries, skipped),
        })
    }
}

impl DaneStore for Snapshot {
    fn load_all(&self) -> Vec<(String, DaneRecord)> {
        self.rows.clone()
    }

    fn save(&self, _domain: &str, _record: &DaneRecord, _keep_until: SystemTime) {}
}

/// Why the DANE source could not be built.
#[derive(Debug)]
pub enum DaneError {
    /// A `[dane]` setting is out of range.
    Config(String),
    /// The DNSSEC-aware resolver could not be built.
    Dns(crate::dns::DnsError),
    /// The cache file cannot be used.
    Store(crate::store::StoreError),
}

impl std::fmt::Display for DaneError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DaneError::Config(e) => write!(f, "dane.{e}"),
            DaneError::Dns(e) => write!(f, "dns: {e}"),
            DaneError::Store(e) => write!(f, "dane.cache_file: {e}"),
        }
    }
}

impl std::error::Error for DaneError {}

/// How a source built by [`open`] uses the cache file.
#[derive(Clone)]
pub enum CacheUse {
    /// Open it, load it and save every result (the daemon).
    ReadWrite,
    /// Load it, never write (`explain`).
    ReadOnly,
    /// The store another source opened on the same file.
    Shared(Arc<crate::store::Store>),
}

/// Build the DANE source of a config: the DNSSEC-aware resolver from
/// `[dns]`, the cache file from `[dane]`.
pub fn open(
    config: &DaneConfig,
    dns: &crate::dns::DnsConfig,
    cache: CacheUse,
) -> Result<DaneSource, DaneError> {
    let resolver = SecureResolver::new(dns).map_err(DaneError::Dns)?;
    let source = DaneSource::new(config.clone(), Arc::new(resolver))
        .map_err(|e| DaneError::Config(e.strip_prefix("dane.").unwrap_or(&e).to_string()))?;
    let store: Arc<dyn DaneStore> = match cache {
        CacheUse::ReadWrite => {
            Arc::new(crate::store::Store::open(&config.cache_file).map_err(DaneError::Store)?)
        }
        CacheUse::ReadOnly => {
            Arc::new(Snapshot::read(&config.cache_file).map_err(DaneError::Store)?)
        }
        CacheUse::Shared(store) => store,
    };
    Ok(source.with_store(store))
}

type Pending = watch::Receiver<Option<Arc<DaneRecord>>>;

struct Entry {
    record: Option<Arc<DaneRecord>>,
    in_flight: Option<Pending>,
    last_used: Instant,
}

struct Inner {
    config: DaneConfig,
    resolver: Arc<SecureResolver>,
    store: Option<Arc<dyn DaneStore>>,
    cache: Mutex<HashMap<String, Entry>>,
    lookups: Semaphore,
    started: AtomicU64,
    metrics: OnceLock<Arc<Metrics>>,
}

impl Inner {
    fn cache(&self) -> MutexGuard<'_, HashMap<String, Entry>> {
        self.cache.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The DANE source. Cheap to clone; clones share cache and limits.
#[derive(Clone)]
pub struct DaneSource {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for DaneSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DaneSource")
            .field("config", &self.inner.config)
            .field("dnssec", &self.inner.resolver.mode())
            .finish_non_exhaustive()
    }
}

impl DaneSource {
    /// Build from the `[dane]` settings and a DNSSEC-aware resolver.
    pub fn new(config: DaneConfig, resolver: Arc<SecureResolver>) -> Result<DaneSource, String> {
        config.validate().map_err(|e| format!("dane.{e}"))?;
        Ok(DaneSource {
            inner: Arc::new(Inner {
                lookups: Semaphore::new(config.concurrency),
                config,
                resolver,
                store: None,
                cache: Mutex::new(HashMap::new()),
                started: AtomicU64::new(0),
                metrics: OnceLock::new(),
            }),
        })
    }

    /// Keep results in `store` too, starting with what it holds (at most
    /// `max_cache_entries`, the most recent first). Call before the source
    /// is shared: a source already shared gets a fresh cache.
    pub fn with_store(self, store: Arc<dyn DaneStore>) -> DaneSource {
        let mut inner = match Arc::try_unwrap(self.inner) {
            Ok(inner) => inner,
            Err(shared) => Inner {
                lookups: Semaphore::new(shared.config.concurrency),
                config: shared.config.clone(),
                resolver: shared.resolver.clone(),
                store: None,
                cache: Mutex::new(HashMap::new()),
                started: AtomicU64::new(0),
                metrics: OnceLock::new(),
            },
        };
        let mut stored = store.load_all();
        stored.sort_by_key(|s| std::cmp::Reverse(s.1.checked_at));
        stored.truncate(inner.config.max_cache_entries);
        {
            let cache = inner.cache.get_mut().unwrap_or_else(|e| e.into_inner());
            let now = Instant::now();
            for (domain, record) in stored {
                cache.insert(
                    domain,
                    Entry {
                        record: Some(Arc::new(record)),
                        in_flight: None,
                        last_used: now,
                    },
                );
            }
        }
        inner.store = Some(store);
        DaneSource {
            inner: Arc::new(inner),
        }
    }

    pub fn config(&self) -> &DaneConfig {
        &self.inner.config
    }

    /// Write what is queued for the store and stop it (at shutdown).
    pub fn close_store(&self) {
        if let Some(s) = &self.inner.store {
            s.close();
        }
    }

    /// Count lookups (cache hits and misses), DNS lookups and the number
    /// of cached domains in `metrics` from now on. The first call wins.
    pub fn attach_metrics(&self, metrics: Arc<Metrics>) {
        metrics.cache_entries(Cache::Dane, self.cached_domains());
        let _ = self.inner.metrics.set(metrics);
    }

    /// Every 30 s until `shutdown`, drop expired rows from the cache file.
    /// The MTA-STS source does this for the file when it shares it; run
    /// this when DANE has the file alone.
    pub async fn maintain_store(self, shutdown: tokio_util::sync::CancellationToken) {
        let Some(store) = self.inner.store.clone() else {
            return;
        };
        let mut tick = tokio::time::interval(Duration::from_secs(30));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tick.tick() => store.remove_expired(SystemTime::now()),
            }
        }
    }

    /// Lookups started since the source was built.
    pub fn lookups_started(&self) -> u64 {
        self.inner.started.load(Ordering::Relaxed)
    }

    /// Domains in the cache.
    pub fn cached_domains(&self) -> usize {
        self.inner.cache().len()
    }

    /// The cached result for a domain, fresh or not. No I/O.
    pub fn cached(&self, domain: &str) -> Option<Arc<DaneRecord>> {
        self.inner.cache().get(domain)?.record.clone()
    }

    /// The result for a domain: from the cache while valid (refreshing
    /// it in the background when it nears its end), else from a lookup,
    /// waiting at most `lookup_timeout`. `domain` is normalised.
    pub async fn resolve(&self, domain: &str) -> Arc<DaneRecord> {
        let now = SystemTime::now();
        let previous = self.current(domain);
        let hit = previous.as_ref().is_some_and(|r| r.fresh(now));
        if let Some(m) = self.inner.metrics.get() {
            m.cache_lookup(Cache::Dane, hit);
        }
        if let Some(r) = &previous
            && hit
        {
            if !r.failed() && r.due_for_refresh(now) {
                self.start_lookup(domain);
            }
            return r.clone();
        }
        let mut pending = self.start_lookup(domain);
        let limit = self.inner.config.lookup_timeout;
        let waited = tokio::time::timeout(limit, pending.wait_for(Option::is_some))
            .await
            .map(|r| r.ok().and_then(|done| done.clone()));
        if let Ok(Some(r)) = waited {
            return r;
        }
        let reason = match waited {
            Err(_) => format!(
                "the DANE lookup of {domain} did not finish within {} (dane.lookup_timeout)",
                humantime::format_duration(limit)
            ),
            _ => format!("the DANE lookup of {domain} was abandoned"),
        };
        Arc::new(failure_record(
            domain,
            reason,
            previous.as_deref(),
            &self.inner.config,
        ))
    }

    /// The cached record.
    fn current(&self, domain: &str) -> Option<Arc<DaneRecord>> {
        let mut cache = self.inner.cache();
        let e = cache.get_mut(domain)?;
        e.last_used = Instant::now();
        e.record.clone()
    }

    /// Start a lookup of `domain` unless one is running; either way return
    /// its result channel.
    fn start_lookup(&self, domain: &str) -> Pending {
        let (tx, rx) = {
            let mut cache = self.inner.cache();
            let e = entry(&self.inner, &mut cache, domain);
            if let Some(p) = &e.in_flight {
                return p.clone();
            }
            let (tx, rx) = watch::channel(None);
            e.in_flight = Some(rx.clone());
            (tx, rx)
        };
        self.inner.started.fetch_add(1, Ordering::Relaxed);
        let inner = self.inner.clone();
        let domain = domain.to_string();
        tokio::spawn(async move {
            // Clears the in-flight mark however the task ends.
            let _guard = InFlight {
                inner: inner.clone(),
                domain: domain.clone(),
            };
            let started = Instant::now();
            let record = lookup(&inner, &domain).await;
            if let Some(m) = inner.metrics.get() {
                let result = match &record.assessment.outcome {
                    Outcome::Policy { .. } => FetchResult::Found,
                    Outcome::NoPolicy { .. } => FetchResult::None,
                    Outcome::Failed { .. } => FetchResult::Error,
                };
                m.fetch(Fetch::Dane, result, started.elapsed());
            }
            let record = Arc::new(record);
            let kept = {
                let mut cache = inner.cache();
                let e = entry(&inner, &mut cache, &domain);
                let keep_old = record.failed()
                    && e.record
                        .as_ref()
                        .is_some_and(|old| !old.failed() && old.fresh(SystemTime::now()));
                if keep_old {
                    tracing::info!(
                        domain,
                        reason = outcome_reason(&record.assessment.outcome),
                        "DANE refresh failed; the previous result stays until it expires"
                    );
                } else {
                    e.record = Some(record.clone());
                }
                e.in_flight = None;
                if let Some(m) = inner.metrics.get() {
                    m.cache_entries(Cache::Dane, cache.len());
                }
                !keep_old
            };
            if kept && let Some(store) = &inner.store {
                store.save(&domain, &record, keep_until(&record, &inner.config));
            }
            let _ = tx.send(Some(record));
        });
        rx
    }

    /// The answer for a domain.
    pub async fn consult_domain(&self, domain: &str) -> Consulted {
        let record = self.resolve(domain).await;
        decide(&record, &self.inner.config, SystemTime::now())
    }
}

/// The cache entry of `domain`, made (evicting if full) when missing.
fn entry<'c>(inner: &Inner, cache: &'c mut HashMap<String, Entry>, domain: &str) -> &'c mut Entry {
    if !cache.contains_key(domain) && cache.len() >= inner.config.max_cache_entries {
        evict_oldest(cache, inner.config.max_cache_entries);
    }
    let e = cache.entry(domain.to_string()).or_insert_with(|| Entry {
        record: None,
        in_flight: None,
        last_used: Instant::now(),
    });
    e.last_used = Instant::now();
    e
}

/// Make room: forget the least recently used eighth of the entries that
/// have no lookup running.
fn evict_oldest(cache: &mut HashMap<String, Entry>, max: usize) {
    let mut idle: Vec<(Instant, String)> = cache
        .iter()
        .filter(|(_, e)| e.in_flight.is_none())
        .map(|(k, e)| (e.last_used, k.clone()))
        .collect();
    let n = (max / 8).max(1).min(idle.len());
    if n == 0 {
        return;
    }
    idle.select_nth_unstable_by(n - 1, |a, b| a.0.cmp(&b.0));
    for (_, k) in idle.into_iter().take(n) {
        cache.remove(&k);
    }
}

struct InFlight {
    inner: Arc<Inner>,
    domain: String,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if let Some(e) = self.inner.cache().get_mut(&self.domain) {
            e.in_flight = None;
        }
    }
}

/// Run one assessment, bounded by `lookup_timeout` once a slot is free.
async fn lookup(inner: &Inner, domain: &str) -> DaneRecord {
    let cfg = &inner.config;
    let previous = inner.cache().get(domain).and_then(|e| e.record.clone());
    let Ok(_permit) = inner.lookups.acquire().await else {
        return failure_record(domain, "shutting down".into(), previous.as_deref(), cfg);
    };
    tracing::debug!(domain, "DANE lookup started");
    let work = assess::assess(&inner.resolver, domain, cfg.max_mx);
    let assessment = match tokio::time::timeout(cfg.lookup_timeout, work).await {
        Ok(a) => a,
        Err(_) => {
            let reason = format!(
                "the DANE lookup of {domain} did not finish within {} (dane.lookup_timeout)",
                humantime::format_duration(cfg.lookup_timeout)
            );
            return failure_record(domain, reason, previous.as_deref(), cfg);
        }
    };
    let now = SystemTime::now();
    let (ttl, last_dane) = match &assessment.outcome {
        Outcome::Policy { level, .. } => (
            bounded_ttl(assessment.ttl, cfg),
            Some(LastDane {
                at: now,
                level: *level,
            }),
        ),
        Outcome::NoPolicy { .. } => (bounded_ttl(assessment.ttl, cfg), None),
        Outcome::Failed { reason } => {
            tracing::warn!(domain, reason, "DANE lookup failed");
            (cfg.failure_ttl, previous.and_then(|p| p.last_dane))
        }
    };
    tracing::debug!(
        domain,
        outcome = outcome_reason(&assessment.outcome),
        "DANE lookup finished"
    );
    DaneRecord {
        assessment,
        checked_at: now,
        ttl,
        last_dane,
    }
}

/// How long a stored record is worth keeping: until it expires, or while
/// its DANE history is remembered.
fn keep_until(record: &DaneRecord, cfg: &DaneConfig) -> SystemTime {
    let history = record.last_dane.map(|l| l.at + cfg.remember);
    record.expires().max(history.unwrap_or(UNIX_EPOCH))
}

/// The last DANE policy seen, if it is still remembered.
fn remembered(record: &DaneRecord, cfg: &DaneConfig, now: SystemTime) -> Option<LastDane> {
    record
        .last_dane
        .filter(|l| now.duration_since(l.at).unwrap_or(Duration::ZERO) < cfg.remember)
}

fn bounded_ttl(secs: u32, cfg: &DaneConfig) -> Duration {
    Duration::from_secs(u64::from(secs)).clamp(cfg.min_ttl, cfg.max_ttl)
}

/// A record for a lookup that did not finish, keeping what was known.
fn failure_record(
    domain: &str,
    reason: String,
    previous: Option<&DaneRecord>,
    cfg: &DaneConfig,
) -> DaneRecord {
    DaneRecord {
        assessment: Assessment {
            domain: domain.to_string(),
            mx: assess::MxState::Failed {
                problem: reason.clone(),
            },
            hosts: Vec::new(),
            skipped: 0,
            ttl: 0,
            outcome: Outcome::Failed { reason },
        },
        checked_at: SystemTime::now(),
        ttl: cfg.failure_ttl,
        last_dane: previous.and_then(|p| p.last_dane),
    }
}

fn outcome_reason(o: &Outcome) -> &str {
    match o {
        Outcome::Policy { reason, .. }
        | Outcome::NoPolicy { reason }
        | Outcome::Failed { reason } => reason,
    }
}

/// What a record answers, with the fail policy applied.
pub fn decide(record: &DaneRecord, cfg: &DaneConfig, now: SystemTime) -> Consulted {
    let domain = &record.assessment.domain;
    let ttl = record.remaining(now);
    let decision = |level: Level, reason: String, temporary: bool| Decision {
        level,
        policy: Arc::from(level.as_str()),
        source: SourceKind::Dane,
        rule: None,
        matched: None,
        reason: Arc::from(reason),
        ttl,
        raised: false,
        temporary,
        published: None,
    };
    match &record.assessment.outcome {
        Outcome::Policy { level, reason } => {
            Consulted::Policy(decision(*level, reason.clone(), false))
        }
        Outcome::NoPolicy { reason } => Consulted::NoPolicy(reason.clone()),
        Outcome::Failed { reason } => match (cfg.on_failure, remembered(record, cfg, now)) {
            (FailPolicy::Defer, last) => Consulted::Policy(decision(
                last.map_or(Level::DaneOnly, |l| l.level),
                format!(
                    "DANE lookup failed, delivery waits (dane.on_failure = \"defer\"): {reason}"
                ),
                true,
            )),
            (FailPolicy::DeferKnown, Some(last)) => Consulted::Policy(decision(
                last.level,
                format!(
                    "{domain} had DANE ({}) and its DANE lookup failed, so delivery waits: \
                     {reason}",
                    last.level
                ),
                true,
            )),
            (FailPolicy::DeferKnown, None) => Consulted::NoPolicy(format!(
                "{reason}; {domain} had no DANE policy before (within dane.remember), so the \
                 next source decides (dane.on_failure = \"defer-known\")"
            )),
            (FailPolicy::Opportunistic, _) => Consulted::NoPolicy(format!(
                "{reason}; the next source decides (dane.on_failure = \"opportunistic\")"
            )),
        },
    }
}

impl Source for DaneSource {
    fn kind(&self) -> SourceKind {
        SourceKind::Dane
    }

    fn consult<'a>(
        &'a self,
        dest: &'a Destination,
    ) -> Pin<Box<dyn Future<Output = Consulted> + Send + 'a>> {
        Box::pin(self.consult_domain(&dest.name))
    }

    fn details(&self, dest: &Destination) -> Vec<String> {
        let Some(r) = self.cached(&dest.name) else {
            return Vec::new();
        };
        let now = SystemTime::now();
        let mut out = r.assessment.describe();
        let age = now.duration_since(r.checked_at).unwrap_or(Duration::ZERO);
        out.push(format!(
            "DNSSEC by {}; looked up {}s ago, kept {}s more",
            self.inner.resolver.mode(),
            age.as_secs(),
            r.remaining(now).as_secs()
        ));
        if r.failed()
            && let Some(last) = r.last_dane
        {
            let ago = now.duration_since(last.at).unwrap_or(Duration::ZERO);
            out.push(format!(
                "last DANE policy seen {}s ago: {}",
                ago.as_secs(),
                last.level
            ));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_defaults() {
        let c: DaneConfig = toml::from_str("").unwrap();
        assert_eq!(c, DaneConfig::default());
        assert!(c.enabled);
        assert_eq!(c.on_failure, FailPolicy::DeferKnown);
        assert_eq!(c.min_ttl, Duration::from_secs(60));
        assert_eq!(c.max_ttl, Duration::from_secs(86_400));
        assert_eq!(c.failure_ttl, Duration::from_secs(30));
        assert_eq!(c.lookup_timeout, Duration::from_secs(20));
        assert_eq!(
            (c.max_mx, c.concurrency, c.max_cache_entries),
            (10, 32, 100_000)
        );
        assert!(c.validate().is_ok());
    }

    #[test]
    fn config_errors() {
        assert!(toml::from_str::<DaneConfig>("max_mxs = 1\n").is_err());
        assert!(toml::from_str::<DaneConfig>("on_failure = \"panic\"\n").is_err());
        assert!(toml::from_str::<DaneConfig>("min_ttl = \"soon\"\n").is_err());
        for (text, key) in [
            ("min_ttl = \"0s\"\n", "min_ttl"),
            ("failure_ttl = \"0s\"\n", "failure_ttl"),
            ("lookup_timeout = \"0s\"\n", "lookup_timeout"),
            ("min_ttl = \"2h\"\nmax_ttl = \"1h\"\n", "max_ttl"),
            ("max_mx = 0\n", "max_mx"),
            ("concurrency = 0\n", "concurrency"),
            ("max_cache_entries = 0\n", "max_cache_entries"),
            ("remember = \"0s\"\n", "remember"),
            ("cache_file = \"\"\n", "cache_file"),
        ] {
            let c: DaneConfig = toml::from_str(text).unwrap();
            let e = c.validate().unwrap_err();
            assert!(e.starts_with(key), "{text}: {e}");
        }
        // The boundary: equal bounds are fine.
        let c: DaneConfig = toml::from_str("min_ttl = \"1h\"\nmax_ttl = \"1h\"\n").unwrap();
        assert!(c.validate().is_ok());
        for w in ["defer-known", "defer", "opportunistic"] {
            let c: DaneConfig = toml::from_str(&format!("on_failure = \"{w}\"\n")).unwrap();
            assert_eq!(c.on_failure.as_str(), w);
        }
    }

    #[test]
    fn ttl_bounds() {
        let c = DaneConfig {
            min_ttl: Duration::from_secs(60),
            max_ttl: Duration::from_secs(3600),
            ..DaneConfig::default()
        };
        assert_eq!(bounded_ttl(0, &c), Duration::from_secs(60));
        assert_eq!(bounded_ttl(59, &c), Duration::from_secs(60));
        assert_eq!(bounded_ttl(60, &c), Duration::from_secs(60));
        assert_eq!(bounded_ttl(61, &c), Duration::from_secs(61));
        assert_eq!(bounded_ttl(3600, &c), Duration::from_secs(3600));
        assert_eq!(bounded_ttl(3601, &c), Duration::from_secs(3600));
        assert_eq!(bounded_ttl(u32::MAX, &c), Duration::from_secs(3600));
    }

    fn record(outcome: Outcome, last: Option<Level>) -> DaneRecord {
        let now = SystemTime::now();
        DaneRecord {
            assessment: Assessment {
                domain: "d.example".into(),
                mx: assess::MxState::Insecure,
                hosts: Vec::new(),
                skipped: 0,
                ttl: 0,
                outcome,
            },
            checked_at: now,
            ttl: Duration::from_secs(100),
            last_dane: last.map(|level| LastDane { at: now, level }),
        }
    }

    fn failed() -> Outcome {
        Outcome::Failed {
            reason: "SERVFAIL".into(),
        }
    }

    #[test]
    fn fail_policy() {
        let now = SystemTime::now();
        let with = |p: FailPolicy| DaneConfig {
            on_failure: p,
            ..DaneConfig::default()
        };
        // defer-known: temporary for domains that had DANE, at their level.
        match decide(
            &record(failed(), Some(Level::Dane)),
            &with(FailPolicy::DeferKnown),
            now,
        ) {
            Consulted::Policy(d) => {
                assert!(d.temporary);
                assert_eq!((d.level, d.source), (Level::Dane, SourceKind::Dane));
                assert!(
                    d.reason.starts_with("d.example had DANE (dane) and"),
                    "{}",
                    d.reason
                );
            }
            other => panic!("{other:?}"),
        }
        match decide(&record(failed(), None), &with(FailPolicy::DeferKnown), now) {
            Consulted::NoPolicy(why) => assert!(why.contains("had no DANE policy before"), "{why}"),
            other => panic!("{other:?}"),
        }
        // defer: always temporary.
        match decide(&record(failed(), None), &with(FailPolicy::Defer), now) {
            Consulted::Policy(d) => assert!(d.temporary && d.level == Level::DaneOnly),
            other => panic!("{other:?}"),
        }
        // opportunistic: never temporary.
        assert!(matches!(
            decide(
                &record(failed(), Some(Level::DaneOnly)),
                &with(FailPolicy::Opportunistic),
                now
            ),
            Consulted::NoPolicy(_)
        ));
        // A policy is a policy whatever the fail policy.
        let p = Outcome::Policy {
            level: Level::DaneOnly,
            reason: "all".into(),
        };
        let r = record(p, None);
        match decide(
            &r,
            &with(FailPolicy::Defer),
            r.checked_at + Duration::from_secs(5),
        ) {
            Consulted::Policy(d) => {
                assert!(!d.temporary);
                assert_eq!(&*d.policy, "dane-only");
                assert_eq!(d.ttl, Duration::from_secs(95));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn history_is_remembered_for_a_while() {
        let cfg = DaneConfig {
            remember: Duration::from_secs(1000),
            ..DaneConfig::default()
        };
        let r = record(failed(), Some(Level::DaneOnly));
        let at = r.last_dane.unwrap().at;
        assert!(remembered(&r, &cfg, at + Duration::from_secs(999)).is_some());
        assert!(remembered(&r, &cfg, at + Duration::from_secs(1000)).is_none());
        assert!(matches!(
            decide(&r, &cfg, at + Duration::from_secs(1000)),
            Consulted::NoPolicy(_)
        ));
        // The row is kept as long as the history, or the result if longer.
        assert_eq!(keep_until(&r, &cfg), at + Duration::from_secs(1000));
        let mut long = r.clone();
        long.ttl = Duration::from_secs(5000);
        assert_eq!(
            keep_until(&long, &cfg),
            long.checked_at + Duration::from_secs(5000)
        );
        let none = record(failed(), None);
        assert_eq!(keep_until(&none, &cfg), none.checked_at + none.ttl);
    }

    #[test]
    fn freshness_and_refresh() {
        let mut r = record(failed(), None);
        let t0 = r.checked_at;
        assert!(r.fresh(t0));
        assert!(r.fresh(t0 + Duration::from_secs(99)));
        assert!(!r.fresh(t0 + Duration::from_secs(100)));
        // A clock that went back does not make a result fresh.
        assert!(!r.fresh(t0 - Duration::from_secs(1)));
        assert!(!r.due_for_refresh(t0 + Duration::from_secs(75)));
        assert!(r.due_for_refresh(t0 + Duration::from_secs(76)));
        r.ttl = Duration::ZERO;
        assert_eq!(r.remaining(t0), Duration::ZERO);
    }

    #[test]
    fn memory_store_and_eviction() {
        let s = MemoryStore::default();
        assert!(s.is_empty());
        let r = record(failed(), Some(Level::DaneOnly));
        s.save("d.example", &r, SystemTime::now());
        assert_eq!(s.get("d.example"), Some(r.clone()));
        assert_eq!(s.load_all(), vec![("d.example".to_string(), r)]);

        let mut cache = HashMap::new();
        let now = Instant::now();
        for i in 0..16u64 {
            let (_tx, rx) = watch::channel(None);
            cache.insert(
                format!("d{i}"),
                Entry {
                    record: None,
                    in_flight: (i == 0).then_some(rx),
                    last_used: now + Duration::from_secs(i),
                },
            );
        }
        evict_oldest(&mut cache, 16);
        assert_eq!(cache.len(), 14);
        assert!(cache.contains_key("d0"), "in flight");
        assert!(!cache.contains_key("d1") && !cache.contains_key("d2"));
        assert!(cache.contains_key("d3"));
    }
}
