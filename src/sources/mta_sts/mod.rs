//! MTA-STS (RFC 8461) as a policy source.
//!
//! A domain that publishes a `_mta-sts` TXT record and a policy at
//! `https://mta-sts.<domain>/.well-known/mta-sts.txt` gets:
//!
//! - `mode: enforce`: `secure match=<mx patterns> servername=hostname`
//!   (forced, authenticated TLS to the listed MX hosts only);
//! - `mode: testing`: opportunistic TLS, logged as MTA-STS testing (or,
//!   with `strict_testing`, the same as `enforce`);
//! - `mode: none`: nothing (the next source decides).
//!
//! Lookups are answered from memory. What is known is kept in the
//! persisted store ([`crate::cache::persist`]) so a restart does not forget it, and
//! a cached policy keeps applying until it expires even when its TXT
//! record disappears or its host is unreachable (RFC 8461 section 5.1): an
//! attacker who blocks the discovery of a known policy gains nothing.
//!
//! A domain with nothing cached is discovered on its first lookup: TXT
//! record, then policy. Lookups of one domain that arrive while its
//! discovery runs wait for that one discovery. A lookup waits at most
//! `lookup_timeout`, then answers without MTA-STS (the discovery goes on
//! and its result serves the next lookup). Failed discoveries and domains
//! without a record are remembered for `negative_ttl`.
//!
//! In the background: a cached policy's TXT record is looked at again
//! once `check_interval` has passed since the last look (a new id means a
//! new policy is fetched; the same id means none is), and every cached
//! policy is fetched again after `refresh_interval` (at the latest half-way
//! through its `max_age`), so policies in use do not expire.
//!
//! The cache is a [`crate::cache::TtlCache`] (single flight, the limit of
//! pending discoveries); the persisted store and the observer are handed in
//! at construction. The files: `cached` (what the cache holds, the
//! answers), `discover` (one discovery), `config`, `record` (the TXT
//! record), `fetch` (HTTPS), `policy` (the policy file), `report` (the
//! CLI's view), `shared` (the store a fleet shares: asked on a local miss
//! before a discovery, told what discoveries learn).

mod cached;
pub mod config;
mod discover;
pub mod fetch;
pub mod policy;
pub mod record;
pub mod report;
mod shared;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::cache::persist::{Entry, Kind, PersistError, PersistedStore, SharedEntries};
use crate::cache::{CacheConfig, CacheFound, CacheObserver, Flight, TtlCache};
use crate::dns::{LookupError, Resolver};
use crate::engine::decision::SourceKind;
use crate::engine::key::Destination;
use crate::engine::{Consulted, Consulting, Source};
use crate::util::rate::RateLimit;
pub use cached::{CacheState, Cached, Negative, Persisted};
use cached::{Settings, Slot, build_cached, rebuild};
pub use config::MtaStsConfig;
use fetch::{FetchError, Fetcher, RootsError};
use policy::{StsPolicy, StsPolicyError};
use record::{RecordError, StsRecord};
pub use shared::{NegativeBody, SharedNegative, check_negative};

/// At most one warning of a kind (discoveries too slow, too many pending)
/// per this period, with the count of those left unsaid.
pub const WARN_EVERY: Duration = Duration::from_secs(60);
/// Remembered "no policy" results at most; past this, new ones are not
/// remembered (expired ones are cleared every [`MAINTENANCE_INTERVAL`]).
pub const MAX_NEGATIVE: usize = 200_000;
/// How often expired entries are cleared and due refreshes started.
pub const MAINTENANCE_INTERVAL: Duration = Duration::from_secs(30);
/// Background refreshes started per maintenance round at most.
pub const MAX_REFRESH_PER_ROUND: usize = 1_000;

/// Seconds since the Unix epoch.
fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn to_time(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(secs)
}

fn secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// Why the source could not be built.
#[derive(Debug, thiserror::Error)]
pub enum MtaStsError {
    #[error("{0}")]
    Roots(RootsError),
    #[error("{0}")]
    Store(PersistError),
}

/// Why discovery found no policy.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DiscoveryError {
    #[error("TXT lookup: {0}")]
    Dns(LookupError),
    #[error("{0}")]
    Record(RecordError),
    #[error("{0}")]
    Fetch(FetchError),
    #[error("invalid policy: {0}")]
    Policy(StsPolicyError),
}

/// Why a domain that publishes MTA-STS has no usable policy, by the
/// result types of RFC 8460 section 4.3.2.1 (Postfix 3.10's
/// `policy_failure`). A domain without a record has none.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StsPolicyFailure {
    /// The policy could not be fetched (DNS, connection, HTTP, timeout).
    FetchError,
    /// The TXT record or the policy did not parse.
    Invalid,
    /// The policy host's certificate did not validate.
    WebPkiInvalid,
}

impl StsPolicyFailure {
    /// The RFC 8460 name.
    pub fn as_str(self) -> &'static str {
        match self {
            StsPolicyFailure::FetchError => "sts-policy-fetch-error",
            StsPolicyFailure::Invalid => "sts-policy-invalid",
            StsPolicyFailure::WebPkiInvalid => "sts-webpki-invalid",
        }
    }

    /// What a failed discovery tells: `None` when the domain publishes no
    /// record (or its TXT lookup failed: nothing says it uses MTA-STS).
    pub fn of(e: &DiscoveryError) -> Option<StsPolicyFailure> {
        match e {
            DiscoveryError::Dns(_) | DiscoveryError::Record(RecordError::None) => None,
            DiscoveryError::Record(_) | DiscoveryError::Policy(_) => {
                Some(StsPolicyFailure::Invalid)
            }
            DiscoveryError::Fetch(FetchError::Certificate(_)) => {
                Some(StsPolicyFailure::WebPkiInvalid)
            }
            DiscoveryError::Fetch(_) => Some(StsPolicyFailure::FetchError),
        }
    }
}

/// Postfix 3.10's attributes for a failed discovery:
/// `policy_type=sts policy_domain=D policy_failure=KIND`.
pub fn failure_attrs(domain: &str, failure: StsPolicyFailure) -> String {
    format!(
        "policy_type=sts policy_domain={domain} policy_failure={}",
        failure.as_str()
    )
}

/// The MTA-STS source. Cheap to clone; clones share everything.
#[derive(Clone)]
pub struct MtaSts {
    inner: Arc<Inner>,
}

struct Inner {
    settings: ArcSwap<Settings>,
    resolver: Resolver,
    fetcher: ArcSwap<Fetcher>,
    cache: Arc<TtlCache<String, Slot>>,
    store: Option<Arc<dyn PersistedStore>>,
    /// The store a fleet shares, when `[shared]` is on.
    shared: OnceLock<Arc<dyn SharedEntries>>,
    slots: Semaphore,
    fetches: AtomicU64,
    observer: Arc<dyn CacheObserver>,
    /// `max_pending`, fixed at start.
    max_pending: usize,
    slow_log: RateLimit,
    full_log: RateLimit,
}

impl MtaSts {
    /// Build the source. `entries` are what the store holds (expired ones
    /// are skipped); `store` receives what is learned from now on (`None`
    /// for a read-only view, as `explain` uses); `observer` counts lookups,
    /// discoveries and the policies held.
    pub fn new(
        config: &MtaStsConfig,
        resolver: Resolver,
        entries: Vec<Entry>,
        store: Option<Arc<dyn PersistedStore>>,
        observer: Arc<dyn CacheObserver>,
    ) -> Result<MtaSts, MtaStsError> {
        let fetcher =
            Fetcher::new(resolver.clone(), config.fetch_settings()).map_err(MtaStsError::Roots)?;
        let settings = Settings::from(config);
        let now = now_secs();
        let cache = Arc::new(TtlCache::new(
            CacheConfig::unbounded().max_flights(config.max_pending),
            observer.clone(),
        ));
        for e in entries {
            if e.kind != Kind::MtaSts || secs(e.expires_at) <= now {
                continue;
            }
            match e.decode::<Persisted>() {
                Ok(p) => {
                    let c = build_cached(
                        &e.domain,
                        p,
                        secs(e.fetched_at),
                        secs(e.expires_at),
                        secs(e.fetched_at),
                        &settings,
                    );
                    let slot = Slot::Policy(Arc::new(c));
                    let expiry = slot.expiry();
                    cache.insert(e.domain, slot, expiry);
                }
                Err(err) => {
                    tracing::warn!(domain = %e.domain, error = %err, "cached MTA-STS policy unreadable; ignored");
                }
            }
        }
        Ok(MtaSts {
            inner: Arc::new(Inner {
                slots: Semaphore::new(config.concurrency),
                settings: ArcSwap::from_pointee(settings),
                resolver,
                fetcher: ArcSwap::from_pointee(fetcher),
                cache,
                store,
                shared: OnceLock::new(),
                fetches: AtomicU64::new(0),
                observer,
                max_pending: config.max_pending,
                slow_log: RateLimit::every(WARN_EVERY),
                full_log: RateLimit::every(WARN_EVERY),
            }),
        })
    }

    /// Load what `store` holds and build the source writing to it.
    pub fn open(
        config: &MtaStsConfig,
        resolver: Resolver,
        store: Arc<dyn PersistedStore>,
        observer: Arc<dyn CacheObserver>,
    ) -> Result<MtaSts, MtaStsError> {
        let (entries, skipped) = store.load(Kind::MtaSts).map_err(MtaStsError::Store)?;
        if skipped > 0 {
            tracing::warn!(cache = %config.cache_file.display(), skipped, "unusable rows in the cache file ignored");
        }
        let src = MtaSts::new(config, resolver, entries, Some(store), observer)?;
        // The rows and their JSON were read whole; give that memory back.
        crate::memory::release_free_memory();
        tracing::info!(
            cache = %config.cache_file.display(),
            policies = src.policy_count(),
            "MTA-STS cache loaded"
        );
        Ok(src)
    }

    /// Ask `shared` on a local miss before discovering, and publish there
    /// what discoveries learn. Set once; later calls change nothing.
    pub fn set_shared(&self, shared: Arc<dyn SharedEntries>) {
        let _ = self.inner.shared.set(shared);
    }

    /// The store, when this source writes one.
    pub fn store(&self) -> Option<&Arc<dyn PersistedStore>> {
        self.inner.store.as_ref()
    }

    /// Cached policies (valid or not yet cleared).
    pub fn policy_count(&self) -> usize {
        self.inner.cache.size().positive()
    }

    /// Policy fetches started so far.
    pub fn fetches(&self) -> u64 {
        self.inner.fetches.load(Ordering::Relaxed)
    }

    /// Take a reloaded configuration. Settings that change how answers
    /// look apply to cached policies at once; a new `extra_ca_file` is read
    /// now (an unreadable one is an error and nothing changes). Then the
    /// cache is brought in line with the cache file: a policy removed there
    /// (`tls-policyd cache purge`) is forgotten.
    pub fn reconfigure(&self, config: &MtaStsConfig) -> Result<(), MtaStsError> {
        let new_fetch = config.fetch_settings();
        if *self.inner.fetcher.load().settings() != new_fetch {
            let f =
                Fetcher::new(self.inner.resolver.clone(), new_fetch).map_err(MtaStsError::Roots)?;
            self.inner.fetcher.store(Arc::new(f));
        }
        let settings = Settings::from(config);
        if **self.inner.settings.load() != settings {
            let answers_change = {
                let old = self.inner.settings.load();
                old.style != settings.style || old.strict_testing != settings.strict_testing
            };
            self.inner.settings.store(Arc::new(settings.clone()));
            if answers_change {
                self.inner.cache.map_values(|_, slot| match slot {
                    Slot::Policy(c) => Slot::Policy(Arc::new(rebuild(c, &settings))),
                    other => other.clone(),
                });
            }
        }
        if let Some(store) = &self.inner.store {
            match store.load(Kind::MtaSts) {
                Ok((entries, _)) => {
                    let kept: hashbrown::HashSet<String> =
                        entries.into_iter().map(|e| e.domain).collect();
                    let gone = self
                        .inner
                        .cache
                        .retain(|d, s, _| !matches!(s, Slot::Policy(_)) || kept.contains(d));
                    if gone > 0 {
                        tracing::info!(
                            forgotten = gone,
                            "MTA-STS policies removed from the cache file are forgotten"
                        );
                    }
                }
                Err(e) => tracing::warn!(error = %e, "cannot re-read the cache file"),
            }
        }
        Ok(())
    }

    /// Look a domain up (lower case, A-labels, no trailing dot).
    pub async fn lookup(&self, domain: &str) -> Consulted {
        if let Some(answer) = self.inner.cached_answer(domain, now_secs()) {
            return answer;
        }
        let Some(flight) = self.inner.start(domain, false) else {
            let most = self.inner.max_pending;
            self.inner.observer.dropped("queue_full");
            if let Some(more) = self.inner.full_log.admit() {
                tracing::warn!(
                    domain,
                    max_pending = most,
                    more,
                    "too many MTA-STS discoveries pending (mta_sts.max_pending); new domains answered \
                     without MTA-STS (`more`: others since the last warning)"
                );
            }
            return Consulted::NoPolicy(format!(
                "MTA-STS: {most} discoveries are pending (mta_sts.max_pending); {domain} answered without MTA-STS"
            ));
        };
        let limit = self.inner.settings.load().lookup_timeout;
        match flight.wait_at_most(limit).await {
            Ok(Some(slot)) => slot.answer(),
            Ok(None) => Consulted::NoPolicy(format!(
                "MTA-STS discovery for {domain} ended without a result; answered without MTA-STS"
            )),
            Err(()) => {
                self.inner.observer.dropped("lookup_timeout");
                if let Some(more) = self.inner.slow_log.admit() {
                    tracing::warn!(domain, timeout = %humantime::format_duration(limit), more,
                        "MTA-STS discovery did not finish in time; answered without MTA-STS, the discovery goes on \
                         (`more`: others since the last warning)");
                }
                Consulted::NoPolicy(format!(
                    "MTA-STS discovery for {domain} did not finish within {}; answered without MTA-STS \
                 (the discovery goes on in the background)",
                    humantime::format_duration(limit)
                ))
            }
        }
    }

    /// Discover a domain now, waiting for the result however long it
    /// takes: fetch the policy even when the TXT id is unchanged (a
    /// proactive refresh) when `fetch` is set.
    pub async fn refresh(&self, domain: &str, fetch: bool) -> Consulted {
        match self.inner.start(domain, fetch) {
            Some(flight) => flight.wait().await.map_or_else(
                || Consulted::NoPolicy("discovery ended without a result".into()),
                |slot| slot.answer(),
            ),
            None => Consulted::NoPolicy(format!(
                "{} discoveries are pending (mta_sts.max_pending)",
                self.inner.max_pending
            )),
        }
    }

    /// What the cache holds for a domain.
    pub fn cache_state(&self, domain: &str) -> CacheState {
        match self.inner.cache.peek(domain) {
            Some((Slot::Policy(c), _)) => CacheState::Policy(c),
            Some((Slot::Negative(n), _)) => CacheState::Negative(n),
            None => CacheState::Nothing,
        }
    }

    /// Look up the TXT record and fetch the policy, changing nothing
    /// (for `explain`).
    pub async fn inspect(
        &self,
        domain: &str,
    ) -> (
        Result<StsRecord, DiscoveryError>,
        Option<Result<(StsPolicy, String), DiscoveryError>>,
    ) {
        let record = self.inner.record(domain).await;
        let policy = match &record {
            Ok(_) => Some(self.inner.fetch_policy(domain).await),
            Err(_) => None,
        };
        (record, policy)
    }

    /// Run background work until `shutdown`: clear expired entries and
    /// start due refreshes every [`MAINTENANCE_INTERVAL`].
    pub async fn maintain(self, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(MAINTENANCE_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tick.tick() => { self.maintenance_round(now_secs()); }
            }
        }
    }

    /// One maintenance round at `now`: forget expired entries (in memory
    /// and in the store) and start refreshes that are due. Returns how many
    /// refreshes were started.
    pub fn maintenance_round(&self, now: u64) -> usize {
        let settings = self.inner.settings.load_full();
        self.inner.cache.remove_expired(to_time(now));
        let mut due = Vec::new();
        let retry = settings.check_interval.as_secs();
        self.inner.cache.for_each(|domain, slot, _| {
            if due.len() >= MAX_REFRESH_PER_ROUND {
                return;
            }
            if let Slot::Policy(c) = slot
                && now >= c.refresh_due(settings.refresh_interval)
            {
                let last = c.refresh_started_at.load(Ordering::Relaxed);
                if (last <= c.fetched_at || now >= last + retry)
                    && c.refresh_started_at
                        .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                        .is_ok()
                {
                    due.push(domain.clone());
                }
            }
        });
        if let Some(store) = &self.inner.store {
            store.remove_expired(to_time(now));
        }
        let mut started = 0;
        for domain in due {
            if self.inner.start(&domain, true).is_some() {
                started += 1;
            }
        }
        started
    }
}

impl Inner {
    /// The hot path: the answer from memory, if it is valid. Starts a
    /// background check of the TXT record when one is due.
    fn cached_answer(self: &Arc<Self>, domain: &str, now: u64) -> Option<Consulted> {
        let (answer, check) = self
            .cache
            .lookup_with(domain, to_time(now), |found| match found {
                CacheFound::Fresh {
                    value: Slot::Policy(c),
                    ..
                } => {
                    let checked = c.checked_at.load(Ordering::Relaxed);
                    let interval = self.settings.load().check_interval.as_secs();
                    let check = now >= checked.saturating_add(interval)
                        && c.checked_at
                            .compare_exchange(checked, now, Ordering::Relaxed, Ordering::Relaxed)
                            .is_ok();
                    (Some(c.answer.clone()), check)
                }
                CacheFound::Fresh {
                    value: Slot::Negative(n),
                    ..
                } => (Some(Consulted::NoPolicy(n.why.clone())), false),
                _ => (None, false),
            });
        if check {
            self.start(domain, false);
        }
        answer
    }

    /// The valid cached policy of a domain.
    fn valid_policy(&self, domain: &str, now: u64) -> Option<Arc<Cached>> {
        match self.cache.peek_valid(domain, to_time(now)) {
            Some(Slot::Policy(c)) => Some(c),
            _ => None,
        }
    }

    /// Start a discovery of `domain`, or join the one running. `None` when
    /// too many are pending.
    fn start(self: &Arc<Self>, domain: &str, fetch: bool) -> Option<Flight<Slot>> {
        let inner = self.clone();
        let owned = domain.to_string();
        self.cache
            .spawn_flight(domain.to_string(), move || async move {
                inner.discover(&owned, fetch).await
            })
            .flight()
    }
}

impl Source for MtaSts {
    fn kind(&self) -> SourceKind {
        SourceKind::MtaSts
    }

    fn consult<'a>(&'a self, dest: &'a Destination) -> Consulting<'a> {
        Box::pin(self.lookup(&dest.name))
    }

    /// With `tlsrpt = true`: why the remembered discovery of a domain that
    /// publishes MTA-STS found no usable policy, for Postfix's own TLSRPT.
    fn failure_attrs(&self, dest: &Destination) -> Option<String> {
        if !self.inner.settings.load().style.tlsrpt {
            return None;
        }
        match self.cache_state(&dest.name) {
            CacheState::Negative(n) if n.until > now_secs() => {
                n.failure.map(|f| failure_attrs(&dest.name, f))
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod failure_tests {
    use super::*;

    #[test]
    fn discovery_errors_map_to_rfc_8460_result_types() {
        let of = |e: DiscoveryError| StsPolicyFailure::of(&e).map(StsPolicyFailure::as_str);
        assert_eq!(of(DiscoveryError::Dns(LookupError::NxDomain)), None);
        assert_eq!(of(DiscoveryError::Record(RecordError::None)), None);
        assert_eq!(
            of(DiscoveryError::Fetch(FetchError::Certificate("x".into()))),
            Some("sts-webpki-invalid")
        );
        for e in [
            FetchError::Tls("x".into()),
            FetchError::Connect("x".into()),
            FetchError::Status(404),
            FetchError::Timeout(Duration::from_secs(1)),
        ] {
            assert_eq!(of(DiscoveryError::Fetch(e)), Some("sts-policy-fetch-error"));
        }
        let bad = record::select(&["v=STSv1; id=".into()]).unwrap_err();
        assert_eq!(of(DiscoveryError::Record(bad)), Some("sts-policy-invalid"));
        let bad = policy::parse(b"version: STSv1\n").unwrap_err();
        assert_eq!(of(DiscoveryError::Policy(bad)), Some("sts-policy-invalid"));
        assert_eq!(
            failure_attrs("example.com", StsPolicyFailure::WebPkiInvalid),
            "policy_type=sts policy_domain=example.com policy_failure=sts-webpki-invalid"
        );
    }
}
