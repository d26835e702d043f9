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
//! persisted store ([`crate::store`]) so a restart does not forget it, and
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

pub mod config;
pub mod fetch;
pub mod policy;
pub mod record;
pub mod report;

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use hashbrown::HashMap;
use serde::{Deserialize, Serialize};
use tokio::sync::{Semaphore, watch};
use tokio_util::sync::CancellationToken;

use crate::dns::{self, LookupError, Resolver};
use crate::engine::decision::{Decision, Level, Published, SourceKind};
use crate::engine::key::Destination;
use crate::engine::{Consulted, Source};
use crate::metrics::{Cache, Fetch, FetchResult, Metrics};
use crate::store::{Entry, Kind, Store};
pub use config::MtaStsConfig;
use fetch::{FetchError, Fetcher, RootsError};
use policy::{AnswerStyle, Mode, Policy, PolicyError};
use record::{RecordError, StsRecord};

/// Discoveries waiting or running at most; lookups of further domains are
/// answered without MTA-STS until some finish.
pub const MAX_PENDING: usize = 10_000;
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

/// What the store keeps per domain (the payload's JSON).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Persisted {
    /// The policy id from the TXT record when the policy was fetched.
    pub id: String,
    pub policy: Policy,
    /// The policy text as fetched.
    pub text: String,
}

/// A cached policy.
#[derive(Debug)]
pub struct Cached {
    pub domain: String,
    pub id: String,
    pub policy: Policy,
    pub text: String,
    pub fetched_at: u64,
    pub expires_at: u64,
    /// Last time the TXT record was looked at (or such a look started).
    checked_at: AtomicU64,
    /// Last time a background refresh was started.
    refresh_started_at: AtomicU64,
    /// The answer, built for the settings in force.
    answer: Consulted,
}

impl Cached {
    pub fn checked_at(&self) -> u64 {
        self.checked_at.load(Ordering::Relaxed)
    }

    /// When the policy is fetched again: `refresh_interval` after the
    /// fetch, at the latest half-way through `max_age`.
    pub fn refresh_due(&self, refresh_interval: Duration) -> u64 {
        let half = self.policy.max_age / 2;
        self.fetched_at + half.min(refresh_interval.as_secs())
    }

    fn persisted(&self) -> Persisted {
        Persisted {
            id: self.id.clone(),
            policy: self.policy.clone(),
            text: self.text.clone(),
        }
    }
}

/// A remembered "no policy".
#[derive(Debug)]
pub struct Negative {
    pub until: u64,
    pub why: String,
}

#[derive(Debug, Clone)]
enum Slot {
    Policy(Arc<Cached>),
    Negative(Arc<Negative>),
}

/// What the cache holds for a domain, for `explain` and the CLI.
#[derive(Debug, Clone)]
pub enum CacheState {
    Policy(Arc<Cached>),
    Negative(Arc<Negative>),
    Nothing,
}

/// The settings that a reload may change.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Settings {
    lookup_timeout: Duration,
    negative_ttl: Duration,
    check_interval: Duration,
    refresh_interval: Duration,
    strict_testing: bool,
    style: AnswerStyle,
}

impl From<&MtaStsConfig> for Settings {
    fn from(c: &MtaStsConfig) -> Self {
        Settings {
            lookup_timeout: c.lookup_timeout,
            negative_ttl: c.negative_ttl,
            check_interval: c.check_interval,
            refresh_interval: c.refresh_interval,
            strict_testing: c.strict_testing,
            style: c.answer_style(),
        }
    }
}

/// Why the source could not be built.
#[derive(Debug)]
pub enum MtaStsError {
    Roots(RootsError),
    Store(crate::store::StoreError),
}

impl std::fmt::Display for MtaStsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MtaStsError::Roots(e) => e.fmt(f),
            MtaStsError::Store(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for MtaStsError {}

/// Why discovery found no policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DiscoveryError {
    Dns(LookupError),
    Record(RecordError),
    Fetch(FetchError),
    Policy(PolicyError),
}

impl std::fmt::Display for DiscoveryError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DiscoveryError::Dns(e) => write!(f, "TXT lookup: {e}"),
            DiscoveryError::Record(e) => e.fmt(f),
            DiscoveryError::Fetch(e) => e.fmt(f),
            DiscoveryError::Policy(e) => write!(f, "invalid policy: {e}"),
        }
    }
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
    cache: RwLock<HashMap<String, Slot>>,
    inflight: Mutex<HashMap<String, watch::Receiver<Option<Consulted>>>>,
    store: Option<Arc<Store>>,
    slots: Semaphore,
    fetches: AtomicU64,
    metrics: OnceLock<Arc<Metrics>>,
}

impl MtaSts {
    /// Build the source. `entries` are what the store holds (expired ones
    /// are skipped); `store` receives what is learned from now on (`None`
    /// for a read-only view, as `explain` uses).
    pub fn new(
        config: &MtaStsConfig,
        resolver: Resolver,
        entries: Vec<Entry>,
        store: Option<Arc<Store>>,
    ) -> Result<MtaSts, MtaStsError> {
        let fetcher =
            Fetcher::new(resolver.clone(), config.fetch_settings()).map_err(MtaStsError::Roots)?;
        let settings = Settings::from(config);
        let now = now_secs();
        let mut cache = HashMap::new();
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
                    cache.insert(e.domain.clone(), Slot::Policy(Arc::new(c)));
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
                cache: RwLock::new(cache),
                inflight: Mutex::new(HashMap::new()),
                store,
                fetches: AtomicU64::new(0),
                metrics: OnceLock::new(),
            }),
        })
    }

    /// Open the store at `config.cache_file`, load it and build the source.
    pub fn open(config: &MtaStsConfig, resolver: Resolver) -> Result<MtaSts, MtaStsError> {
        let store = Arc::new(Store::open(&config.cache_file).map_err(MtaStsError::Store)?);
        let (entries, skipped) = store.load(Kind::MtaSts).map_err(MtaStsError::Store)?;
        if skipped > 0 {
            tracing::warn!(cache = %config.cache_file.display(), skipped, "unusable rows in the cache file ignored");
        }
        let src = MtaSts::new(config, resolver, entries, Some(store))?;
        // The rows and their JSON were read whole; give that memory back.
        crate::memory::release_free_memory();
        tracing::info!(
            cache = %config.cache_file.display(),
            policies = src.policy_count(),
            "MTA-STS cache loaded"
        );
        Ok(src)
    }

    /// The store, when this source writes one.
    pub fn store(&self) -> Option<&Arc<Store>> {
        self.inner.store.as_ref()
    }

    /// Cached policies (valid or not yet cleared).
    pub fn policy_count(&self) -> usize {
        self.inner
            .read_cache()
            .values()
            .filter(|s| matches!(s, Slot::Policy(_)))
            .count()
    }

    /// Count lookups (cache hits and misses), discoveries and the number
    /// of cached policies in `metrics` from now on. The first call wins.
    pub fn attach_metrics(&self, metrics: Arc<Metrics>) {
        metrics.cache_entries(Cache::MtaSts, self.policy_count());
        let _ = self.inner.metrics.set(metrics);
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
                let mut cache = self.inner.write_cache();
                for slot in cache.values_mut() {
                    if let Slot::Policy(c) = slot {
                        *slot = Slot::Policy(Arc::new(rebuild(c, &settings)));
                    }
                }
            }
        }
        if let Some(store) = &self.inner.store {
            match store.load(Kind::MtaSts) {
                Ok((entries, _)) => {
                    let kept: hashbrown::HashSet<String> =
                        entries.into_iter().map(|e| e.domain).collect();
                    let mut cache = self.inner.write_cache();
                    let before = cache.len();
                    cache.retain(|d, s| !matches!(s, Slot::Policy(_)) || kept.contains(d));
                    let gone = before - cache.len();
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
        let now = now_secs();
        let cached = self.inner.cached_answer(domain, now);
        if let Some(m) = self.inner.metrics.get() {
            m.cache_lookup(Cache::MtaSts, cached.is_some());
        }
        if let Some(answer) = cached {
            return answer;
        }
        let rx = match self.inner.start(domain, false) {
            Some(rx) => rx,
            None => {
                return Consulted::NoPolicy(format!(
                    "MTA-STS: {MAX_PENDING} discoveries are in progress; {domain} answered without MTA-STS"
                ));
            }
        };
        let limit = self.inner.settings.load().lookup_timeout;
        match wait(rx, Some(limit)).await {
            Some(answer) => answer,
            None => {
                tracing::info!(domain, timeout = %humantime::format_duration(limit),
                    "MTA-STS discovery did not finish in time; answered without MTA-STS, the discovery goes on");
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
            Some(rx) => wait(rx, None)
                .await
                .unwrap_or_else(|| Consulted::NoPolicy("discovery ended without a result".into())),
            None => Consulted::NoPolicy(format!("{MAX_PENDING} discoveries are in progress")),
        }
    }

    /// What the cache holds for a domain.
    pub fn cache_state(&self, domain: &str) -> CacheState {
        match self.inner.read_cache().get(domain) {
            Some(Slot::Policy(c)) => CacheState::Policy(c.clone()),
            Some(Slot::Negative(n)) => CacheState::Negative(n.clone()),
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
        Option<Result<(Policy, String), DiscoveryError>>,
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
        let mut due = Vec::new();
        {
            let mut cache = self.inner.write_cache();
            cache.retain(|_, slot| match slot {
                Slot::Policy(c) => c.expires_at > now,
                Slot::Negative(n) => n.until > now,
            });
            let retry = settings.check_interval.as_secs();
            for (domain, slot) in cache.iter() {
                if due.len() >= MAX_REFRESH_PER_ROUND {
                    break;
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
            }
        }
        if let Some(store) = &self.inner.store {
            store.remove_expired(to_time(now));
        }
        if let Some(m) = self.inner.metrics.get() {
            m.cache_entries(Cache::MtaSts, self.policy_count());
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

/// Wait for a discovery's answer, at most `limit`.
async fn wait(
    mut rx: watch::Receiver<Option<Consulted>>,
    limit: Option<Duration>,
) -> Option<Consulted> {
    let done = async {
        match rx.wait_for(Option::is_some).await {
            Ok(v) => v.clone(),
            Err(_) => None,
        }
    };
    match limit {
        Some(l) => tokio::time::timeout(l, done).await.ok().flatten(),
        None => done.await,
    }
}

impl Inner {
    fn read_cache(&self) -> std::sync::RwLockReadGuard<'_, HashMap<String, Slot>> {
        self.cache.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write_cache(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<String, Slot>> {
        self.cache.write().unwrap_or_else(|e| e.into_inner())
    }

    /// The hot path: the answer from memory, if it is valid. Starts a
    /// background check of the TXT record when one is due.
    fn cached_answer(self: &Arc<Self>, domain: &str, now: u64) -> Option<Consulted> {
        let cache = self.read_cache();
        match cache.get(domain)? {
            Slot::Policy(c) if c.expires_at > now => {
                let checked = c.checked_at.load(Ordering::Relaxed);
                let interval = self.settings.load().check_interval.as_secs();
                if now >= checked.saturating_add(interval)
                    && c.checked_at
                        .compare_exchange(checked, now, Ordering::Relaxed, Ordering::Relaxed)
                        .is_ok()
                {
                    let answer = c.answer.clone();
                    drop(cache);
                    self.start(domain, false);
                    return Some(answer);
                }
                Some(c.answer.clone())
            }
            Slot::Negative(n) if n.until > now => Some(Consulted::NoPolicy(n.why.clone())),
            _ => None,
        }
    }

    /// The valid cached policy of a domain.
    fn valid_policy(&self, domain: &str, now: u64) -> Option<Arc<Cached>> {
        match self.read_cache().get(domain) {
            Some(Slot::Policy(c)) if c.expires_at > now => Some(c.clone()),
            _ => None,
        }
    }

    /// Start a discovery of `domain`, or join the one running. `None` when
    /// too many are pending.
    fn start(
        self: &Arc<Self>,
        domain: &str,
        fetch: bool,
    ) -> Option<watch::Receiver<Option<Consulted>>> {
        let mut inflight = self.inflight.lock().unwrap_or_else(|e| e.into_inner());
        // A finished discovery stays listed until its task removes it:
        // that one is not joined, a new one starts.
        if let Some(rx) = inflight.get(domain)
            && rx.borrow().is_none()
        {
            return Some(rx.clone());
        }
        if inflight.len() >= MAX_PENDING {
            return None;
        }
        let (tx, rx) = watch::channel(None);
        inflight.insert(domain.to_string(), rx.clone());
        drop(inflight);
        let inner = self.clone();
        let domain = domain.to_string();
        let own = rx.clone();
        tokio::spawn(async move {
            let answer = inner.discover(&domain, fetch).await;
            let _ = tx.send(Some(answer));
            let mut inflight = inner.inflight.lock().unwrap_or_else(|e| e.into_inner());
            if inflight.get(&domain).is_some_and(|r| r.same_channel(&own)) {
                inflight.remove(&domain);
            }
        });
        Some(rx)
    }

    async fn record(&self, domain: &str) -> Result<StsRecord, DiscoveryError> {
        let name = format!("_mta-sts.{domain}");
        let txt = dns::lookup_txt(&self.resolver, &name)
            .await
            .map_err(DiscoveryError::Dns)?;
        record::select(&txt).map_err(DiscoveryError::Record)
    }

    async fn fetch_policy(&self, domain: &str) -> Result<(Policy, String), DiscoveryError> {
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
    async fn discover(self: &Arc<Self>, domain: &str, fetch: bool) -> Consulted {
        let _permit = self.slots.acquire().await;
        let started = std::time::Instant::now();
        let (answer, result) = self.discover_counted(domain, fetch).await;
        if let Some(m) = self.metrics.get() {
            m.fetch(Fetch::MtaSts, result, started.elapsed());
        }
        answer
    }

    /// [`Inner::discover`], and how it ended for the metrics.
    async fn discover_counted(
        self: &Arc<Self>,
        domain: &str,
        fetch: bool,
    ) -> (Consulted, FetchResult) {
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
                    return (c.answer.clone(), FetchResult::Error);
                }
                let result = match &e {
                    DiscoveryError::Dns(LookupError::NxDomain | LookupError::NoData)
                    | DiscoveryError::Record(RecordError::None) => FetchResult::None,
                    DiscoveryError::Record(_) => FetchResult::Invalid,
                    _ => FetchResult::Error,
                };
                let why = format!("no MTA-STS policy: {e}");
                self.remember_negative(domain, now, &why);
                return (Consulted::NoPolicy(why), result);
            }
        };
        if let Some(c) = &cached
            && c.id == record.id
            && !fetch
        {
            return (c.answer.clone(), FetchResult::Found);
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
                        Ok(e) => store.put(e),
                        Err(e) => {
                            tracing::error!(domain, error = %e, "cannot store MTA-STS policy")
                        }
                    }
                }
                self.write_cache()
                    .insert(domain.to_string(), Slot::Policy(c.clone()));
                if let Some(m) = self.metrics.get() {
                    // Under the read lock: lookups go on meanwhile.
                    let policies = self
                        .read_cache()
                        .values()
                        .filter(|s| matches!(s, Slot::Policy(_)))
                        .count();
                    m.cache_entries(Cache::MtaSts, policies);
                }
                (c.answer.clone(), FetchResult::Found)
            }
            Err(e) => {
                if let Some(c) = cached {
                    if c.policy.mode != Mode::None {
                        tracing::warn!(domain, error = %e, id = %c.id, new_id = %record.id,
                            expires = %humantime::format_rfc3339_seconds(to_time(c.expires_at)),
                            "MTA-STS policy fetch failed; the cached policy applies until it expires");
                    }
                    return (c.answer.clone(), FetchResult::Error);
                }
                tracing::warn!(domain, id = %record.id, error = %e, "MTA-STS record published but no usable policy");
                let why = format!(
                    "MTA-STS record (id {}) but no usable policy: {e}",
                    record.id
                );
                self.remember_negative(domain, now, &why);
                let result = match e {
                    DiscoveryError::Policy(_) => FetchResult::Invalid,
                    _ => FetchResult::Error,
                };
                (Consulted::NoPolicy(why), result)
            }
        }
    }

    fn remember_negative(&self, domain: &str, now: u64, why: &str) {
        let until = now.saturating_add(self.settings.load().negative_ttl.as_secs());
        let mut cache = self.write_cache();
        if cache.len() >= MAX_NEGATIVE && !cache.contains_key(domain) {
            return;
        }
        // Never replace a policy (one fetched meanwhile, or expired: the
        // maintenance round clears those).
        if let Some(Slot::Policy(c)) = cache.get(domain)
            && c.expires_at > now
        {
            return;
        }
        cache.insert(
            domain.to_string(),
            Slot::Negative(Arc::new(Negative {
                until,
                why: why.to_string(),
            })),
        );
    }
}

fn build_cached(
    domain: &str,
    p: Persisted,
    fetched_at: u64,
    expires_at: u64,
    checked_at: u64,
    settings: &Settings,
) -> Cached {
    let answer = answer(domain, &p.id, &p.policy, fetched_at, settings);
    Cached {
        domain: domain.to_string(),
        id: p.id,
        policy: p.policy,
        text: p.text,
        fetched_at,
        expires_at,
        checked_at: AtomicU64::new(checked_at),
        refresh_started_at: AtomicU64::new(0),
        answer,
    }
}

fn rebuild(c: &Cached, settings: &Settings) -> Cached {
    let mut n = build_cached(
        &c.domain,
        c.persisted(),
        c.fetched_at,
        c.expires_at,
        c.checked_at(),
        settings,
    );
    n.refresh_started_at = AtomicU64::new(c.refresh_started_at.load(Ordering::Relaxed));
    n
}

/// The answer for a policy.
fn answer(domain: &str, id: &str, p: &Policy, fetched_at: u64, settings: &Settings) -> Consulted {
    let published = Some(Arc::new(Published {
        policy_id: Some(Arc::from(id)),
        mode: Some(p.mode.as_str()),
    }));
    let mx = p.mx.join(", ");
    let ttl = Duration::from_secs(p.max_age).min(settings.check_interval);
    let fetched = humantime::format_rfc3339_seconds(to_time(fetched_at));
    let secure = |reason: String| Decision {
        level: Level::Secure,
        policy: Arc::from(policy::postfix_secure(domain, p, settings.style)),
        source: SourceKind::MtaSts,
        rule: None,
        matched: None,
        reason: Arc::from(reason),
        ttl,
        raised: false,
        temporary: false,
        published: published.clone(),
    };
    match p.mode {
        Mode::Enforce => Consulted::Policy(secure(format!(
            "MTA-STS policy {id} (enforce, fetched {fetched}): MX must be {mx}"
        ))),
        Mode::Testing if settings.strict_testing => Consulted::Policy(secure(format!(
            "MTA-STS policy {id} (testing, enforced by strict_testing, fetched {fetched}): MX must be {mx}"
        ))),
        Mode::Testing => Consulted::Policy(Decision {
            level: Level::May,
            policy: Arc::from(Level::May.as_str()),
            source: SourceKind::MtaSts,
            rule: None,
            matched: None,
            reason: Arc::from(format!(
                "MTA-STS policy {id} is in testing mode: opportunistic TLS (fetched {fetched})"
            )),
            ttl,
            raised: false,
            temporary: false,
            published,
        }),
        Mode::None => Consulted::NoPolicy(format!(
            "MTA-STS policy {id} has mode none (fetched {fetched})"
        )),
    }
}

impl Source for MtaSts {
    fn kind(&self) -> SourceKind {
        SourceKind::MtaSts
    }

    fn consult<'a>(
        &'a self,
        dest: &'a Destination,
    ) -> Pin<Box<dyn Future<Output = Consulted> + Send + 'a>> {
        Box::pin(self.lookup(&dest.name))
    }
}
