//! The STARTTLS prober: for a domain, find its mail exchangers, connect to
//! each on port 25, EHLO, STARTTLS, complete a TLS handshake, and record
//! what was offered and what the certificate is good for.
//!
//! Probes never run on a request's path. A front door answering a request
//! asks [`Prober::known`] (a map lookup, no I/O) and, on a miss, calls
//! [`Prober::schedule`], which starts a background probe unless one is
//! already running for that domain or one started less than
//! `min_interval` ago. Results count as knowledge for `ttl`.
//!
//! Everything is bounded: each step has a timeout, reply lines and reply
//! sizes are capped, at most `concurrency` domains are probed at once and
//! at most `max_connections` SMTP connections are open at once, at most
//! `max_pending` background probes wait or run (further requests are
//! dropped and come again with the next miss), at most `max_mx` hosts with
//! `max_addresses_per_mx` addresses each are probed per domain, and the
//! cache holds at most `max_cache_entries` domains.
//!
//! The cache is a [`crate::cache::TtlCache`] (the oldest written go first
//! when it is full; a probe in flight is never forgotten). The files:
//! `config` (the `[prober]` section), `probe` (one probe, DNS to TLS),
//! `smtp` and `tls` (the dialogue's pieces), `result` (what a probe found),
//! `knowledge` (what early refusals ask), `shared` (what a fleet's store
//! gives and is told, when `[shared]` is on).

mod config;
mod knowledge;
pub mod postfix_ca;
mod probe;
pub mod result;
mod shared;
pub mod smtp;
pub mod tls;

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Instant, SystemTime};

use tokio::sync::Semaphore;

use crate::cache::persist::SharedEntries;
use crate::cache::{
    CacheConfig, CacheLookup, CacheObserver, Eviction, Expiry, FetchOutcome, FlightStart,
    NoObserver, TtlCache,
};
use crate::dns::Resolver;
use crate::engine::key::normalize_domain;
use crate::engine::refusal::Capability;
pub use config::{ProberConfig, default_helo_name};
use probe::run_probe;
pub use result::{DomainProbe, MxResult, MxStatus, TlsCapability, render_json, render_text};
use tls::TlsSetup;

/// Why a prober could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProberError {
    /// A setting is out of range.
    #[error("prober.{0}")]
    Config(String),
    /// The trust roots or TLS settings are unusable.
    #[error(transparent)]
    Tls(tls::TlsSetupError),
}

/// One domain's line in the cache: the last result (valid for `ttl`
/// from when it was stored) and when the last probe started.
#[derive(Clone)]
struct Known {
    result: Option<Arc<DomainProbe>>,
    last_started: Option<Instant>,
    /// What the fleet's store gave, when this host has no result of its
    /// own (it expires with the entry).
    shared: Option<Capability>,
}

struct Inner {
    config: ProberConfig,
    resolver: Resolver,
    tls: TlsSetup,
    /// Domain probes at once.
    probes: Semaphore,
    /// SMTP connections at once.
    connections: Semaphore,
    /// Background probes waiting or running.
    pending: AtomicUsize,
    cache: Arc<TtlCache<String, Known>>,
    started: AtomicU64,
    /// Where probe results, cache hits and the cache size are counted.
    observer: Arc<dyn CacheObserver>,
    /// The store a fleet shares, when `[shared]` is on.
    shared: OnceLock<Arc<dyn SharedEntries>>,
}

/// The prober. Cheap to clone; clones share cache and limits.
#[derive(Clone)]
pub struct Prober {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Prober {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Prober")
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

/// Takes a background probe off `pending` however it ends (finished,
/// cancelled, panicked, or never started).
struct Pending(Arc<Inner>);

impl Drop for Pending {
    fn drop(&mut self) {
        self.0.pending.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Prober {
    /// Build a prober from its settings and a resolver (see
    /// [`crate::dns::build_resolver`]), counting nothing.
    pub fn new(config: ProberConfig, resolver: Resolver) -> Result<Prober, ProberError> {
        Prober::with_observer(config, resolver, Arc::new(NoObserver))
    }

    /// [`Prober::new`], counting probe results, cache hits and misses
    /// ([`Prober::known`]) and the cache size in `observer`.
    pub fn with_observer(
        config: ProberConfig,
        resolver: Resolver,
        observer: Arc<dyn CacheObserver>,
    ) -> Result<Prober, ProberError> {
        config.validate().map_err(ProberError::Config)?;
        let tls = TlsSetup::with_postfix(
            config.extra_ca_file.as_deref(),
            config.postfix_config_directory.as_deref(),
        )
        .map_err(ProberError::Tls)?;
        let cache = CacheConfig::new(config.max_cache_entries).eviction(Eviction::OldestWritten);
        Ok(Prober {
            inner: Arc::new(Inner {
                probes: Semaphore::new(config.concurrency),
                connections: Semaphore::new(config.max_connections),
                pending: AtomicUsize::new(0),
                cache: Arc::new(TtlCache::new(cache, observer.clone())),
                config,
                resolver,
                tls,
                started: AtomicU64::new(0),
                observer,
                shared: OnceLock::new(),
            }),
        })
    }

    /// Ask the store a fleet shares before a background probe, and
    /// publish what probes find. Set once.
    pub fn set_shared(&self, shared: Arc<dyn SharedEntries>) {
        let _ = self.inner.shared.set(shared);
    }

    /// The capability the fleet's store gave for `domain`, while fresh.
    fn shared_known(&self, domain: &str) -> Option<Capability> {
        let domain = normalize_domain(domain).ok()?;
        match self.inner.cache.peek(&domain) {
            Some((k, e)) if e.is_valid_at(SystemTime::now()) && k.result.is_none() => k.shared,
            _ => None,
        }
    }

    pub fn config(&self) -> &ProberConfig {
        &self.inner.config
    }

    /// Probes started since the prober was built (explicit and background).
    pub fn probes_started(&self) -> u64 {
        self.inner.started.load(Ordering::Relaxed)
    }

    /// Domains in the cache (with a result or a probe in flight).
    pub fn cached_domains(&self) -> usize {
        self.inner.cache.len()
    }

    /// Background probes waiting or running now.
    pub fn pending(&self) -> usize {
        self.inner.pending.load(Ordering::SeqCst)
    }

    /// What is known about a domain: the last result if it is younger
    /// than `ttl`. Never waits for I/O.
    pub fn known(&self, domain: &str) -> Option<Arc<DomainProbe>> {
        let Ok(domain) = normalize_domain(domain) else {
            self.inner.observer.miss();
            return None;
        };
        match self.inner.cache.get(&domain) {
            CacheLookup::Fresh { value, .. } => value.result,
            _ => None,
        }
    }

    /// [`Prober::known`], and on a miss [`Prober::schedule`]: what a
    /// request handler calls.
    pub fn known_or_schedule(&self, domain: &str) -> Option<Arc<DomainProbe>> {
        let k = self.known(domain);
        if k.is_none() {
            self.schedule(domain);
        }
        k
    }

    /// Start a background probe of `domain` on the current tokio runtime,
    /// unless probing is disabled, one is in flight for the domain, the
    /// last one started less than `min_interval` ago, or `max_pending`
    /// background probes are waiting or running. Returns whether a probe
    /// was started. Concurrent calls for one domain start at most one
    /// probe. Outside a tokio runtime nothing happens.
    pub fn schedule(&self, domain: &str) -> bool {
        let inner = &self.inner;
        if !inner.config.enabled {
            return false;
        }
        let Ok(domain) = normalize_domain(domain) else {
            return false;
        };
        if tokio::runtime::Handle::try_current().is_err() {
            tracing::warn!(domain, "cannot schedule a probe outside the runtime");
            return false;
        }
        let recent = inner.cache.peek(&domain).is_some_and(|(k, _)| {
            k.last_started
                .is_some_and(|t| t.elapsed() < inner.config.min_interval)
        });
        if recent || inner.cache.in_flight(&domain) {
            return false;
        }
        let max = inner.config.max_pending;
        if inner
            .pending
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |p| {
                (p < max).then_some(p + 1)
            })
            .is_err()
        {
            inner.observer.dropped("queue_full");
            tracing::debug!(domain, "probe queue full; request dropped");
            return false;
        }
        let pending = Pending(inner.clone());
        let start = inner.cache.spawn_flight(domain.clone(), || {
            let probe = probe_and_store(inner.clone(), domain.clone(), true);
            async move {
                let _pending = pending;
                probe.await
            }
        });
        // Not started: the closure (and its `Pending`) was dropped unused.
        start.is_new()
    }

    /// Probe `domain` now (waiting for a connection slot like any probe),
    /// store the result, and return it; a probe of the domain already
    /// running is waited for instead. Ignores `min_interval` and
    /// `enabled`: this is the explicit request (`tls-policyd probe`).
    pub async fn probe(&self, domain: &str) -> Arc<DomainProbe> {
        let domain = match normalize_domain(domain) {
            Ok(d) => d,
            Err(e) => {
                return Arc::new(DomainProbe::dns_failure(
                    domain,
                    SystemTime::now(),
                    format!("not a domain name: {e}"),
                ));
            }
        };
        let inner = self.inner.clone();
        let start = self.inner.cache.spawn_flight(domain.clone(), || {
            probe_and_store(inner, domain.clone(), false)
        });
        let result = match start {
            FlightStart::New(f) | FlightStart::Running(f) => f.wait().await,
            FlightStart::Full => None,
        };
        match result.and_then(|k| k.result) {
            Some(r) => r,
            None => Arc::new(DomainProbe::dns_failure(
                &domain,
                SystemTime::now(),
                "the probe was abandoned".into(),
            )),
        }
    }
}

/// The fetch of a probe flight: note the start, probe, count, store.
/// `ask_store` (a background probe): the fleet's store first, if it is
/// there and knows the domain.
fn probe_and_store(
    inner: Arc<Inner>,
    domain: String,
    ask_store: bool,
) -> impl std::future::Future<Output = Known> + Send {
    inner.started.fetch_add(1, Ordering::Relaxed);
    inner.cache.upsert(domain.clone(), |old| match old {
        Some((k, e)) => (
            Known {
                result: k.result.clone(),
                last_started: Some(Instant::now()),
                shared: k.shared.clone(),
            },
            *e,
        ),
        None => (
            Known {
                result: None,
                last_started: Some(Instant::now()),
                shared: None,
            },
            Expiry::expired(),
        ),
    });
    async move {
        if ask_store && let Some((cap, probed_at)) = inner.ask_shared(&domain).await {
            let mut known = Known {
                result: None,
                last_started: None,
                shared: Some(cap),
            };
            let ttl = inner.config.ttl;
            inner.cache.upsert(domain, |old| {
                known.last_started = old.and_then(|(k, _)| k.last_started);
                (known.clone(), Expiry::after(probed_at, ttl))
            });
            return known;
        }
        let started = Instant::now();
        let result = Arc::new(run_probe(&inner, &domain).await);
        inner.publish(&domain, &result);
        inner.observer.fetched(
            FetchOutcome::Verdict(result.verdict().as_str()),
            started.elapsed(),
        );
        let mut known = Known {
            result: Some(result),
            last_started: None,
            shared: None,
        };
        let ttl = inner.config.ttl;
        inner.cache.upsert(domain, |old| {
            known.last_started = old.and_then(|(k, _)| k.last_started);
            (known.clone(), Expiry::after(SystemTime::now(), ttl))
        });
        known
    }
}
