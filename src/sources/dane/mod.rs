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
//! the last lookup that found it (that is what `defer-known` goes by). The
//! persisted store handed in at construction
//! ([`crate::cache::persist::PersistedStore`]) keeps results across
//! restarts: everything stored is loaded when the source is built, and
//! every lookup's result is saved (queued, never waited for).
//!
//! The cache is a [`crate::cache::TtlCache`]; the files: `config` (the
//! `[dane]` section), `record` (a result, its freshness, what it answers),
//! `stored` (results in the persisted store), `shared` (DANE policies from
//! and to the store a fleet shares, when `[shared]` is on), `had` (the
//! "had DANE" memory shared the same way), `assess` (the lookup).

pub mod assess;
pub mod config;
mod had;
pub mod record;
mod shared;
pub mod stored;

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::Semaphore;

use crate::cache::persist::{PersistError, PersistedStore, SharedEntries};
use crate::cache::{
    CacheConfig, CacheLookup, CacheObserver, Expiry, FetchOutcome, NoObserver, TtlCache,
};
use crate::dns::secure::SecureResolver;
use crate::engine::decision::SourceKind;
use crate::engine::key::Destination;
use crate::engine::{Consulted, Consulting, Source};
use crate::util::rate::RateLimit;
pub use assess::{Assessment, Outcome};
pub use config::{DaneConfig, FailPolicy};
pub use record::{DaneRecord, LastDane, decide};
use record::{bounded_ttl, failure_record, keep_until, outcome_reason};
pub use stored::DaneMemoryStore;

/// Why the DANE source could not be built.
#[derive(Debug, thiserror::Error)]
pub enum DaneError {
    /// A `[dane]` setting is out of range.
    #[error("dane.{0}")]
    Config(String),
    /// The DNSSEC-aware resolver could not be built.
    #[error("dns: {0}")]
    Dns(crate::dns::DnsError),
    /// The cache file cannot be used.
    #[error("dane.cache_file: {0}")]
    Store(PersistError),
}

/// Build the DANE source of a config: the DNSSEC-aware resolver from
/// `[dns]`; results kept in `store` (loaded now), counted by `observer`.
pub fn open(
    config: &DaneConfig,
    dns: &crate::dns::DnsConfig,
    store: Option<Arc<dyn PersistedStore>>,
    observer: Arc<dyn CacheObserver>,
) -> Result<DaneSource, DaneError> {
    let resolver = SecureResolver::new(dns).map_err(DaneError::Dns)?;
    let source = DaneSource::with_observer(config.clone(), Arc::new(resolver), observer)
        .map_err(|e| DaneError::Config(e.strip_prefix("dane.").unwrap_or(&e).to_string()))?;
    Ok(match store {
        Some(s) => source.with_store(s),
        None => source,
    })
}

type Cache = TtlCache<String, Arc<DaneRecord>>;

/// At most one warning of a kind (lookups too slow, too many pending,
/// failed) per this period, with the count of those left unsaid.
pub const WARN_EVERY: Duration = Duration::from_secs(60);

struct Inner {
    config: DaneConfig,
    resolver: Arc<SecureResolver>,
    store: Option<Arc<dyn PersistedStore>>,
    /// The store a fleet shares, when `[shared]` is on.
    shared: OnceLock<Arc<dyn SharedEntries>>,
    cache: Arc<Cache>,
    lookups: Semaphore,
    started: AtomicU64,
    observer: Arc<dyn CacheObserver>,
    /// One warning per period for lookups that did not finish in time,
    /// lookups refused at `max_pending`, failed lookups.
    slow_log: RateLimit,
    full_log: RateLimit,
    failed_log: RateLimit,
}

impl Inner {
    fn new(
        config: DaneConfig,
        resolver: Arc<SecureResolver>,
        observer: Arc<dyn CacheObserver>,
    ) -> Inner {
        let cache = CacheConfig::new(config.max_cache_entries)
            .refresh_ahead(4)
            .max_flights(config.max_pending);
        Inner {
            lookups: Semaphore::new(config.concurrency),
            cache: Arc::new(TtlCache::new(cache, observer.clone())),
            config,
            resolver,
            store: None,
            shared: OnceLock::new(),
            started: AtomicU64::new(0),
            observer,
            slow_log: RateLimit::every(WARN_EVERY),
            full_log: RateLimit::every(WARN_EVERY),
            failed_log: RateLimit::every(WARN_EVERY),
        }
    }
}

/// How long a record is served: from its lookup for its TTL; a failure is
/// negative and never refreshed ahead (the next request after it expires
/// looks again).
fn expiry(r: &DaneRecord) -> Expiry {
    let e = Expiry::between(r.checked_at, r.expires());
    match r.assessment.outcome {
        Outcome::Policy { .. } => e,
        Outcome::NoPolicy { .. } => e.negative(),
        Outcome::Failed { .. } => e.negative().no_refresh(),
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
    /// Build from the `[dane]` settings and a DNSSEC-aware resolver,
    /// counting nothing.
    pub fn new(config: DaneConfig, resolver: Arc<SecureResolver>) -> Result<DaneSource, String> {
        DaneSource::with_observer(config, resolver, Arc::new(NoObserver))
    }

    /// [`DaneSource::new`], its cache and lookups reported to `observer`.
    pub fn with_observer(
        config: DaneConfig,
        resolver: Arc<SecureResolver>,
        observer: Arc<dyn CacheObserver>,
    ) -> Result<DaneSource, String> {
        config.validate().map_err(|e| format!("dane.{e}"))?;
        Ok(DaneSource {
            inner: Arc::new(Inner::new(config, resolver, observer)),
        })
    }

    /// Keep results in `store` too, starting with what it holds (at most
    /// `max_cache_entries`, the most recent first). Call before the source
    /// is shared: a source already shared gets a fresh cache.
    pub fn with_store(self, store: Arc<dyn PersistedStore>) -> DaneSource {
        let mut inner = match Arc::try_unwrap(self.inner) {
            Ok(inner) => inner,
            Err(shared) => Inner::new(
                shared.config.clone(),
                shared.resolver.clone(),
                shared.observer.clone(),
            ),
        };
        let mut rows = stored::load(store.as_ref());
        rows.sort_by_key(|s| std::cmp::Reverse(s.1.checked_at));
        rows.truncate(inner.config.max_cache_entries);
        for (domain, record) in rows {
            let e = expiry(&record);
            inner.cache.insert(domain, Arc::new(record), e);
        }
        inner.store = Some(store);
        DaneSource {
            inner: Arc::new(inner),
        }
    }

    pub fn config(&self) -> &DaneConfig {
        &self.inner.config
    }

    /// Ask `shared` for a domain with no fresh result here before looking
    /// it up, and publish there the DANE policies lookups find. Set once.
    pub fn set_shared(&self, shared: Arc<dyn SharedEntries>) {
        let _ = self.inner.shared.set(shared);
    }

    /// Write what is queued for the store and stop it (at shutdown).
    pub fn close_store(&self) {
        if let Some(s) = &self.inner.store {
            s.close();
        }
    }

    /// Every 30 s until `shutdown`, drop expired rows from the store.
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
        self.inner.cache.len()
    }

    /// The cached result for a domain, fresh or not. No I/O.
    pub fn cached(&self, domain: &str) -> Option<Arc<DaneRecord>> {
        self.inner.cache.peek(domain).map(|(r, _)| r)
    }

    /// The result for a domain: from the cache while valid (refreshing
    /// it in the background when it nears its end), else from a lookup,
    /// waiting at most `lookup_timeout`. `domain` is normalised.
    pub async fn resolve(&self, domain: &str) -> Arc<DaneRecord> {
        let previous = match self.inner.cache.get(domain) {
            CacheLookup::Fresh { value, refresh_due } => {
                if refresh_due {
                    let inner = self.inner.clone();
                    self.inner
                        .cache
                        .refresh(domain.to_string(), || fetch(inner, domain.to_string()));
                }
                return value;
            }
            CacheLookup::Expired(r) => Some(r),
            CacheLookup::Missing => None,
        };
        // Taken before the lookup starts: a lookup that fails by its own
        // timeout ends no earlier than `asked + limit`.
        let asked = Instant::now();
        let inner = self.inner.clone();
        let flight = self
            .inner
            .cache
            .spawn_flight(domain.to_string(), || fetch(inner, domain.to_string()))
            .flight();
        let limit = self.inner.config.lookup_timeout;
        let reason = match flight {
            Some(f) => match f.wait_at_most(limit).await {
                Ok(Some(r)) => {
                    if r.failed() && asked.elapsed() >= limit {
                        self.note_timeout(domain, limit);
                    }
                    return r;
                }
                Ok(None) => format!("the DANE lookup of {domain} was abandoned"),
                Err(()) => {
                    self.note_timeout(domain, limit);
                    format!(
                        "the DANE lookup of {domain} did not finish within {} (dane.lookup_timeout)",
                        humantime::format_duration(limit)
                    )
                }
            },
            None => {
                let most = self.inner.config.max_pending;
                self.inner.observer.dropped("queue_full");
                if let Some(more) = self.inner.full_log.admit() {
                    tracing::warn!(
                        domain,
                        max_pending = most,
                        more,
                        "too many DANE lookups pending (dane.max_pending); \
                         new domains answered by dane.on_failure \
                         (`more`: others since the last warning)"
                    );
                }
                format!(
                    "{most} DANE lookups are pending (dane.max_pending); {domain} is not looked up now"
                )
            }
        };
        Arc::new(failure_record(
            domain,
            reason,
            previous.as_deref(),
            &self.inner.config,
        ))
    }

    /// A request's lookup did not finish within `limit`: counted, and
    /// warned about once per [`WARN_EVERY`].
    fn note_timeout(&self, domain: &str, limit: Duration) {
        self.inner.observer.dropped("lookup_timeout");
        if let Some(more) = self.inner.slow_log.admit() {
            tracing::warn!(
                domain,
                timeout = %humantime::format_duration(limit),
                more,
                "DANE lookups did not finish in time (dane.lookup_timeout); answered by \
                 dane.on_failure (`more`: others since the last warning)"
            );
        }
    }

    /// The answer for a domain.
    pub async fn consult_domain(&self, domain: &str) -> Consulted {
        let record = self.resolve(domain).await;
        decide(&record, &self.inner.config, SystemTime::now())
    }
}

/// One lookup of `domain` (the flight's fetch): run it, keep its result
/// (unless it failed and a valid result is there), save it, return it.
fn fetch(inner: Arc<Inner>, domain: String) -> impl Future<Output = Arc<DaneRecord>> + Send {
    inner.started.fetch_add(1, Ordering::Relaxed);
    async move {
        let claim = match inner.before_lookup(&domain).await {
            Ok(r) => return r,
            Err(claim) => claim,
        };
        let started = Instant::now();
        let mut record = lookup(&inner, &domain).await;
        // A failure with no memory of DANE here: the fleet's may make it
        // wait (only ever stricter: see `had`).
        if record.failed()
            && record.last_dane.is_none()
            && let Some(last) = inner.shared_had(&domain).await
        {
            record.last_dane = Some(last);
        }
        let outcome = match &record.assessment.outcome {
            Outcome::Policy { .. } => FetchOutcome::Found,
            Outcome::NoPolicy { .. } => FetchOutcome::None,
            Outcome::Failed { .. } => FetchOutcome::Error,
        };
        inner.observer.fetched(outcome, started.elapsed());
        let record = Arc::new(record);
        let kept = inner.cache.insert_unless(
            domain.clone(),
            record.clone(),
            expiry(&record),
            |old, valid| record.failed() && !old.failed() && valid,
        );
        if !kept {
            tracing::info!(
                domain,
                reason = outcome_reason(&record.assessment.outcome),
                "DANE refresh failed; the previous result stays until it expires"
            );
        } else if let Some(store) = &inner.store {
            if claim.is_none() {
                inner.publish(&domain, &record);
            }
            if !record.failed()
                && let Some(last) = &record.last_dane
            {
                inner.publish_had(&domain, last);
            }
            stored::save(
                store.as_ref(),
                &domain,
                &record,
                keep_until(&record, &inner.config),
            );
        }
        if let Some(claim) = claim {
            inner.settle(claim, &domain, &record).await;
        }
        record
    }
}

/// Run one assessment, bounded by `lookup_timeout` once a slot is free.
async fn lookup(inner: &Inner, domain: &str) -> DaneRecord {
    let cfg = &inner.config;
    let previous = inner.cache.peek(domain).map(|(r, _)| r);
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
            if let Some(more) = inner.failed_log.admit() {
                tracing::warn!(
                    domain,
                    reason,
                    more,
                    "DANE lookup failed (`more`: others since the last warning)"
                );
            }
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

impl Source for DaneSource {
    fn kind(&self) -> SourceKind {
        SourceKind::Dane
    }

    fn consult<'a>(&'a self, dest: &'a Destination) -> Consulting<'a> {
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
