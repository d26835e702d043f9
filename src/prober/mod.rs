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

mod knowledge;
pub mod result;
pub mod smtp;
pub mod tls;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use rustls::pki_types::ServerName;
use serde::Deserialize;
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_rustls::TlsConnector;

use crate::dns::{self, MxAnswer, Resolver};
use crate::engine::key::normalize_domain;
use crate::metrics::{Cache, Metrics};
pub use result::{DomainProbe, MxResult, MxStatus, TlsCapability, render_json, render_text};
use smtp::Conn;
use tls::TlsSetup;

/// The `[prober]` section.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProberConfig {
    /// Background probes from the daemon. `probe` on the command line
    /// works either way.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// SMTP port of the mail exchangers.
    #[serde(default = "default_port")]
    pub port: u16,
    /// Name sent in EHLO. Default: this machine's host name, or
    /// `localhost` if it has none that is usable.
    #[serde(default = "default_helo_name")]
    pub helo_name: String,
    /// Time allowed for the TCP connection.
    #[serde(
        default = "default_connect_timeout",
        with = "crate::util::duration::human"
    )]
    pub connect_timeout: Duration,
    /// Time allowed for each SMTP command and its complete reply (and for
    /// the greeting).
    #[serde(
        default = "default_smtp_timeout",
        with = "crate::util::duration::human"
    )]
    pub smtp_timeout: Duration,
    /// Time allowed for the TLS handshake.
    #[serde(default = "default_tls_timeout", with = "crate::util::duration::human")]
    pub tls_timeout: Duration,
    /// Domains probed at once (DNS lookups and SMTP); more wait.
    #[serde(default = "default_concurrency")]
    pub concurrency: usize,
    /// SMTP connections open at once, over all probes; more wait.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Background probes waiting or running at most; `schedule` drops
    /// requests beyond this.
    #[serde(default = "default_max_pending")]
    pub max_pending: usize,
    /// No new background probe of a domain sooner than this after the
    /// last one started.
    #[serde(
        default = "default_min_interval",
        with = "crate::util::duration::human"
    )]
    pub min_interval: Duration,
    /// How long a result counts as knowledge.
    #[serde(default = "default_ttl", with = "crate::util::duration::human")]
    pub ttl: Duration,
    /// MX hosts probed per domain, most preferred first.
    #[serde(default = "default_max_mx")]
    pub max_mx: usize,
    /// Addresses probed per MX host (IPv4 and IPv6 alternating).
    #[serde(default = "default_max_addresses")]
    pub max_addresses_per_mx: usize,
    /// PEM file of CA certificates trusted in addition to the built-in
    /// Mozilla roots (private CAs).
    #[serde(default)]
    pub extra_ca_file: Option<PathBuf>,
    /// Domains remembered at most; the oldest are forgotten first.
    #[serde(default = "default_max_cache_entries")]
    pub max_cache_entries: usize,
}

fn default_true() -> bool {
    true
}
fn default_port() -> u16 {
    25
}
fn default_connect_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_smtp_timeout() -> Duration {
    Duration::from_secs(30)
}
fn default_tls_timeout() -> Duration {
    Duration::from_secs(30)
}
fn default_concurrency() -> usize {
    8
}
fn default_max_connections() -> usize {
    16
}
fn default_max_pending() -> usize {
    1000
}
fn default_min_interval() -> Duration {
    Duration::from_secs(300)
}
fn default_ttl() -> Duration {
    Duration::from_secs(3600)
}
fn default_max_mx() -> usize {
    5
}
fn default_max_addresses() -> usize {
    2
}
fn default_max_cache_entries() -> usize {
    100_000
}

/// This machine's host name if it is a usable EHLO name, else `localhost`.
pub fn default_helo_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .and_then(|h| normalize_domain(h.trim()).ok())
        .unwrap_or_else(|| "localhost".to_string())
}

impl Default for ProberConfig {
    fn default() -> Self {
        ProberConfig {
            enabled: true,
            port: default_port(),
            helo_name: default_helo_name(),
            connect_timeout: default_connect_timeout(),
            smtp_timeout: default_smtp_timeout(),
            tls_timeout: default_tls_timeout(),
            concurrency: default_concurrency(),
            max_connections: default_max_connections(),
            max_pending: default_max_pending(),
            min_interval: default_min_interval(),
            ttl: default_ttl(),
            max_mx: default_max_mx(),
            max_addresses_per_mx: default_max_addresses(),
            extra_ca_file: None,
            max_cache_entries: default_max_cache_entries(),
        }
    }
}

impl ProberConfig {
    /// Check every setting; the message names the key and the problem.
    pub fn validate(&self) -> Result<(), String> {
        if self.port == 0 {
            return Err("port: must be 1 to 65535".into());
        }
        if !valid_helo(&self.helo_name) {
            return Err(format!(
                "helo_name: {:?} is not a host name or an address literal like [192.0.2.1]",
                self.helo_name
            ));
        }
        for (key, d) in [
            ("connect_timeout", self.connect_timeout),
            ("smtp_timeout", self.smtp_timeout),
            ("tls_timeout", self.tls_timeout),
            ("ttl", self.ttl),
        ] {
            if d.is_zero() {
                return Err(format!("{key}: must be longer than zero"));
            }
        }
        for (key, n) in [
            ("concurrency", self.concurrency),
            ("max_connections", self.max_connections),
            ("max_pending", self.max_pending),
            ("max_mx", self.max_mx),
            ("max_addresses_per_mx", self.max_addresses_per_mx),
            ("max_cache_entries", self.max_cache_entries),
        ] {
            if n == 0 {
                return Err(format!("{key}: must be at least 1"));
            }
        }
        for (key, n) in [
            ("concurrency", self.concurrency),
            ("max_connections", self.max_connections),
        ] {
            if n > Semaphore::MAX_PERMITS {
                return Err(format!("{key}: too large"));
            }
        }
        Ok(())
    }
}

fn valid_helo(name: &str) -> bool {
    if let Some(inner) = name.strip_prefix('[').and_then(|r| r.strip_suffix(']')) {
        let inner = inner.strip_prefix("IPv6:").unwrap_or(inner);
        return inner.parse::<IpAddr>().is_ok();
    }
    name.is_ascii() && !name.ends_with('.') && normalize_domain(name).is_ok()
}

/// Why a prober could not be built.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProberError {
    /// A setting is out of range.
    Config(String),
    /// The trust roots or TLS settings are unusable.
    Tls(tls::TlsSetupError),
}

impl std::fmt::Display for ProberError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ProberError::Config(e) => write!(f, "prober.{e}"),
            ProberError::Tls(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for ProberError {}

/// One domain's line in the cache.
struct Entry {
    /// The last result and when it was stored.
    result: Option<(Instant, Arc<DomainProbe>)>,
    /// When the last probe started.
    last_started: Option<Instant>,
    /// Probes of this domain waiting or running.
    in_flight: u32,
}

impl Entry {
    fn age_key(&self) -> Option<Instant> {
        let stored = self.result.as_ref().map(|(t, _)| *t);
        stored.max(self.last_started)
    }
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
    cache: Mutex<HashMap<String, Entry>>,
    started: AtomicU64,
    /// Where probe results, cache hits and the cache size are counted.
    metrics: OnceLock<Arc<Metrics>>,
}

impl Inner {
    fn cache(&self) -> MutexGuard<'_, HashMap<String, Entry>> {
        self.cache.lock().unwrap_or_else(|e| e.into_inner())
    }
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

/// Clears a domain's in-flight mark however its probe ends (finished,
/// cancelled, or panicked).
struct InFlight {
    inner: Arc<Inner>,
    domain: String,
    /// Counted in `pending` (a background probe).
    background: bool,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut cache = self.inner.cache();
        if let Some(e) = cache.get_mut(&self.domain) {
            e.in_flight = e.in_flight.saturating_sub(1);
        }
        if self.background {
            self.inner.pending.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

impl Prober {
    /// Build a prober from its settings and a resolver (see
    /// [`crate::dns::build_resolver`]).
    pub fn new(config: ProberConfig, resolver: Resolver) -> Result<Prober, ProberError> {
        config.validate().map_err(ProberError::Config)?;
        let tls = TlsSetup::new(config.extra_ca_file.as_deref()).map_err(ProberError::Tls)?;
        Ok(Prober {
            inner: Arc::new(Inner {
                probes: Semaphore::new(config.concurrency),
                connections: Semaphore::new(config.max_connections),
                pending: AtomicUsize::new(0),
                config,
                resolver,
                tls,
                cache: Mutex::new(HashMap::new()),
                started: AtomicU64::new(0),
                metrics: OnceLock::new(),
            }),
        })
    }

    pub fn config(&self) -> &ProberConfig {
        &self.inner.config
    }

    /// Count probe results, cache hits and misses ([`Prober::known`]) and
    /// the cache size in `metrics` from now on. The first call wins.
    pub fn attach_metrics(&self, metrics: Arc<Metrics>) {
        metrics.cache_entries(Cache::Prober, self.cached_domains());
        let _ = self.inner.metrics.set(metrics);
    }

    /// Probes started since the prober was built (explicit and background).
    pub fn probes_started(&self) -> u64 {
        self.inner.started.load(Ordering::Relaxed)
    }

    /// Domains in the cache (with a result or a probe in flight).
    pub fn cached_domains(&self) -> usize {
        self.inner.cache().len()
    }

    /// Background probes waiting or running now.
    pub fn pending(&self) -> usize {
        self.inner.pending.load(Ordering::SeqCst)
    }

    /// What is known about a domain: the last result if it is younger
    /// than `ttl`. Never waits for I/O.
    pub fn known(&self, domain: &str) -> Option<Arc<DomainProbe>> {
        let known = self.lookup(domain);
        if let Some(m) = self.inner.metrics.get() {
            m.cache_lookup(Cache::Prober, known.is_some());
        }
        known
    }

    fn lookup(&self, domain: &str) -> Option<Arc<DomainProbe>> {
        let domain = normalize_domain(domain).ok()?;
        let cache = self.inner.cache();
        let (stored, result) = cache.get(&domain)?.result.as_ref()?;
        (stored.elapsed() < self.inner.config.ttl).then(|| result.clone())
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
        if !self.inner.config.enabled {
            return false;
        }
        let Ok(domain) = normalize_domain(domain) else {
            return false;
        };
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            tracing::warn!(domain, "cannot schedule a probe outside the runtime");
            return false;
        };
        let guard = {
            let mut cache = self.inner.cache();
            if let Some(e) = cache.get(&domain)
                && (e.in_flight > 0
                    || e.last_started
                        .is_some_and(|t| t.elapsed() < self.inner.config.min_interval))
            {
                return false;
            }
            // `pending` only changes under the cache lock, so this
            // check-then-add is exact.
            if self.inner.pending.load(Ordering::SeqCst) >= self.inner.config.max_pending {
                if let Some(m) = self.inner.metrics.get() {
                    m.error("prober", "queue_full");
                }
                tracing::debug!(domain, "probe queue full; request dropped");
                return false;
            }
            self.inner.pending.fetch_add(1, Ordering::SeqCst);
            self.mark_started(&mut cache, &domain, true)
        };
        let inner = self.inner.clone();
        handle.spawn(async move {
            let started = Instant::now();
            let result = run_probe(&inner, &guard.domain).await;
            count_probe(&inner, &result, started);
            store(&inner, &guard.domain, result);
            drop(guard);
        });
        true
    }

    /// Probe `domain` now (waiting for a connection slot like any probe),
    /// store the result, and return it. Ignores `min_interval` and
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
        let guard = {
            let mut cache = self.inner.cache();
            self.mark_started(&mut cache, &domain, false)
        };
        let started = Instant::now();
        let result = run_probe(&self.inner, &domain).await;
        count_probe(&self.inner, &result, started);
        let result = store(&self.inner, &domain, result);
        drop(guard);
        result
    }

    fn mark_started(
        &self,
        cache: &mut HashMap<String, Entry>,
        domain: &str,
        background: bool,
    ) -> InFlight {
        if !cache.contains_key(domain) && cache.len() >= self.inner.config.max_cache_entries {
            evict_oldest(cache, self.inner.config.max_cache_entries);
        }
        let e = cache.entry(domain.to_string()).or_insert(Entry {
            result: None,
            last_started: None,
            in_flight: 0,
        });
        e.in_flight += 1;
        e.last_started = Some(Instant::now());
        self.inner.started.fetch_add(1, Ordering::Relaxed);
        if let Some(m) = self.inner.metrics.get() {
            m.cache_entries(Cache::Prober, cache.len());
        }
        InFlight {
            inner: self.inner.clone(),
            domain: domain.to_string(),
            background,
        }
    }
}

/// Make room: forget the oldest eighth of the entries that have no probe
/// in flight.
fn evict_oldest(cache: &mut HashMap<String, Entry>, max: usize) {
    let mut idle: Vec<(Option<Instant>, String)> = cache
        .iter()
        .filter(|(_, e)| e.in_flight == 0)
        .map(|(k, e)| (e.age_key(), k.clone()))
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

fn count_probe(inner: &Inner, result: &DomainProbe, started: Instant) {
    if let Some(m) = inner.metrics.get() {
        m.probe(result.verdict().as_str(), started.elapsed());
    }
}

fn store(inner: &Inner, domain: &str, result: DomainProbe) -> Arc<DomainProbe> {
    let result = Arc::new(result);
    let mut cache = inner.cache();
    if let Some(e) = cache.get_mut(domain) {
        e.result = Some((Instant::now(), result.clone()));
    }
    result
}

/// An MX host and what its address lookup gave.
struct Target {
    /// Position in preference order.
    index: usize,
    preference: u16,
    host: String,
    addrs: Result<Vec<IpAddr>, dns::LookupError>,
}

/// The whole probe of one domain.
async fn run_probe(inner: &Arc<Inner>, domain: &str) -> DomainProbe {
    let Ok(_permit) = inner.probes.acquire().await else {
        return DomainProbe::dns_failure(
            domain,
            SystemTime::now(),
            "prober is shutting down".into(),
        );
    };
    let probed_at = SystemTime::now();
    let cfg = &inner.config;
    tracing::debug!(domain, "probe started");
    let (mut hosts, implicit) = match dns::lookup_mx(&inner.resolver, domain).await {
        Ok(MxAnswer::Hosts(h)) => (h, false),
        Ok(MxAnswer::NoMx) => (vec![(0, domain.to_string())], true),
        Ok(MxAnswer::NullMx) => {
            return DomainProbe {
                domain: domain.to_string(),
                probed_at,
                mx: Vec::new(),
                null_mx: true,
                implicit_mx: false,
                dns_error: None,
            };
        }
        Err(e) => return DomainProbe::dns_failure(domain, probed_at, e.to_string()),
    };
    hosts.truncate(cfg.max_mx);

    // Addresses of every host, looked up at the same time.
    let mut lookups = JoinSet::new();
    for (i, (pref, host)) in hosts.iter().enumerate() {
        let inner = inner.clone();
        let (pref, host) = (*pref, host.clone());
        lookups.spawn(async move {
            let addrs =
                dns::lookup_addresses(&inner.resolver, &host, inner.config.max_addresses_per_mx)
                    .await;
            Target {
                index: i,
                preference: pref,
                host,
                addrs,
            }
        });
    }
    let mut targets: Vec<Target> = Vec::new();
    while let Some(joined) = lookups.join_next().await {
        if let Ok(t) = joined {
            targets.push(t);
        }
    }
    targets.sort_by_key(|t| t.index);

    // Then every address, each connection waiting for a slot.
    let mut results: Vec<(usize, usize, MxResult)> = Vec::new();
    let mut probes = JoinSet::new();
    for Target {
        index: i,
        preference: pref,
        host,
        addrs,
    } in targets
    {
        match addrs {
            Err(e) => results.push((
                i,
                0,
                MxResult::unreached(&host, pref, None, format!("no address for {host}: {e}")),
            )),
            Ok(addrs) => {
                for (j, ip) in addrs.into_iter().enumerate() {
                    let inner = inner.clone();
                    let host = host.clone();
                    probes
                        .spawn(async move { (i, j, probe_address(&inner, &host, pref, ip).await) });
                }
            }
        }
    }
    while let Some(joined) = probes.join_next().await {
        match joined {
            Ok(r) => results.push(r),
            Err(e) => tracing::error!(domain, "probe task failed: {e}"),
        }
    }
    results.sort_by_key(|r| (r.0, r.1));
    let probe = DomainProbe {
        domain: domain.to_string(),
        probed_at,
        mx: results.into_iter().map(|r| r.2).collect(),
        null_mx: false,
        implicit_mx: implicit,
        dns_error: None,
    };
    tracing::debug!(domain, verdict = probe.verdict().as_str(), "probe finished");
    probe
}

/// Probe one address of one MX host.
async fn probe_address(inner: &Inner, host: &str, preference: u16, ip: IpAddr) -> MxResult {
    let mut r = MxResult::unreached(host, preference, Some(ip), String::new());
    let Ok(_permit) = inner.connections.acquire().await else {
        r.error = Some("prober is shutting down".into());
        return r;
    };
    r.error = None;
    if let Err(e) = dialogue(inner, host, ip, &mut r).await {
        r.error = Some(e);
    }
    r
}

/// The SMTP dialogue. Fills `r` as it goes; an `Err` is the text of the
/// step that failed (the status says how far it got).
async fn dialogue(inner: &Inner, host: &str, ip: IpAddr, r: &mut MxResult) -> Result<(), String> {
    let cfg = &inner.config;
    let addr = SocketAddr::new(ip, cfg.port);
    let step = cfg.smtp_timeout;
    let stream = match tokio::time::timeout(cfg.connect_timeout, TcpStream::connect(addr)).await {
        Err(_) => {
            return Err(format!(
                "connect to {addr}: no answer within {}",
                humantime::format_duration(cfg.connect_timeout)
            ));
        }
        Ok(Err(e)) => return Err(format!("connect to {addr}: {e}")),
        Ok(Ok(s)) => s,
    };
    let mut conn = Conn::new(stream);
    let greeting = conn
        .read_reply(step)
        .await
        .map_err(|e| format!("greeting from {addr}: {e}"))?;
    if greeting.code != 220 {
        quit(&mut conn, cfg).await;
        return Err(format!(
            "greeting from {addr} refused us: {}",
            greeting.summary()
        ));
    }
    let ehlo = conn
        .command(&format!("EHLO {}", cfg.helo_name), step)
        .await
        .map_err(|e| format!("EHLO: {e}"))?;
    if ehlo.code != 250 {
        quit(&mut conn, cfg).await;
        return Err(format!("EHLO refused: {}", ehlo.summary()));
    }
    if !ehlo.has_extension("STARTTLS") {
        r.status = MxStatus::NoStarttls;
        quit(&mut conn, cfg).await;
        return Ok(());
    }
    r.starttls_offered = true;
    r.status = MxStatus::StarttlsFailed;
    let reply = conn
        .command("STARTTLS", step)
        .await
        .map_err(|e| format!("STARTTLS: {e}"))?;
    if reply.code != 220 {
        quit(&mut conn, cfg).await;
        return Err(format!("STARTTLS refused: {}", reply.summary()));
    }
    if conn.has_pending() {
        return Err(
            "the server sent data after its STARTTLS reply, before the TLS handshake".into(),
        );
    }
    let (config, verifier) = inner.tls.client_config().map_err(|e| e.to_string())?;
    let name = ServerName::try_from(host.to_string())
        .map_err(|e| format!("{host:?} cannot be sent as a TLS server name: {e}"))?;
    let handshake = TlsConnector::from(config).connect(name, conn.into_inner());
    let outcome = tokio::time::timeout(cfg.tls_timeout, handshake).await;
    if let Some(rep) = verifier.report() {
        r.cert_chain_valid = Some(rep.chain_valid);
        r.cert_error = rep.chain_error;
        r.cert_names = rep.names;
        r.cert_matches_host = Some(rep.matches_host);
    }
    let tls = match outcome {
        Err(_) => {
            return Err(format!(
                "TLS handshake: not finished within {}",
                humantime::format_duration(cfg.tls_timeout)
            ));
        }
        Ok(Err(e)) => return Err(format!("TLS handshake failed: {e}")),
        Ok(Ok(tls)) => tls,
    };
    {
        let (_, session) = tls.get_ref();
        r.tls_version = session.protocol_version().map(tls::version_text);
        r.cipher = session.negotiated_cipher_suite().map(tls::cipher_text);
    }
    r.status = if r.cert_chain_valid == Some(true) && r.cert_matches_host == Some(true) {
        MxStatus::TlsVerified
    } else {
        MxStatus::TlsUnverified
    };
    let mut conn = Conn::new(tls);
    quit(&mut conn, cfg).await;
    let mut tls = conn.into_inner();
    let _ = tokio::time::timeout(
        Duration::from_secs(1),
        tokio::io::AsyncWriteExt::shutdown(&mut tls),
    )
    .await;
    Ok(())
}

/// Say goodbye without waiting long for the answer.
async fn quit<S>(conn: &mut Conn<S>, cfg: &ProberConfig)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let deadline = cfg.smtp_timeout.min(Duration::from_secs(5));
    let _ = conn.command("QUIT", deadline).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_defaults() {
        let c: ProberConfig = toml::from_str("").unwrap();
        assert!(c.enabled);
        assert_eq!(c.port, 25);
        assert_eq!(c.connect_timeout, Duration::from_secs(10));
        assert_eq!(c.smtp_timeout, Duration::from_secs(30));
        assert_eq!(c.tls_timeout, Duration::from_secs(30));
        assert_eq!(c.concurrency, 8);
        assert_eq!(c.max_connections, 16);
        assert_eq!(c.max_pending, 1000);
        assert_eq!(c.min_interval, Duration::from_secs(300));
        assert_eq!(c.ttl, Duration::from_secs(3600));
        assert_eq!(c.max_mx, 5);
        assert_eq!(c.max_addresses_per_mx, 2);
        assert_eq!(c.extra_ca_file, None);
        assert_eq!(c.max_cache_entries, 100_000);
        assert!(c.validate().is_ok(), "{:?}", c.validate());
        assert_eq!(c, ProberConfig::default());
    }

    #[test]
    fn config_errors() {
        assert!(toml::from_str::<ProberConfig>("prot = 25\n").is_err());
        assert!(toml::from_str::<ProberConfig>("ttl = \"forever\"\n").is_err());
        for (text, key) in [
            ("port = 0\n", "port"),
            ("concurrency = 0\n", "concurrency"),
            ("max_mx = 0\n", "max_mx"),
            ("ttl = \"0s\"\n", "ttl"),
            ("helo_name = \"bad name\"\n", "helo_name"),
        ] {
            let c: ProberConfig = toml::from_str(text).unwrap();
            let e = c.validate().unwrap_err();
            assert!(e.starts_with(key), "{text}: {e}");
        }
        for ok in [
            "mail.example",
            "[192.0.2.1]",
            "[IPv6:2001:db8::1]",
            "localhost",
        ] {
            assert!(valid_helo(ok), "{ok}");
        }
    }

    #[test]
    fn eviction_keeps_in_flight_and_newest() {
        let mut cache = HashMap::new();
        let now = Instant::now();
        for i in 0..16u64 {
            cache.insert(
                format!("d{i}"),
                Entry {
                    result: None,
                    last_started: Some(now + Duration::from_secs(i)),
                    in_flight: u32::from(i == 0),
                },
            );
        }
        evict_oldest(&mut cache, 16);
        assert_eq!(cache.len(), 14);
        assert!(cache.contains_key("d0"), "in flight");
        assert!(!cache.contains_key("d1"));
        assert!(!cache.contains_key("d2"));
        assert!(cache.contains_key("d3"));
    }
}
