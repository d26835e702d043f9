//! The registry: fixed label sets in arrays of atomics, rare events
//! behind one mutex.

use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use super::capture::truncate_utf8;
use super::histogram::{Histogram, LOOKUP_BUCKETS_US, NETWORK_BUCKETS_US};
use super::labels::{Cache, Fetch, FetchResult, Frontend, level_index, source_index};
use super::outcomes::{LineKind, OutcomeCounters};
use super::{ListenerStatus, MAX_ERROR_TEXT, RECENT_ERRORS, RecentError, ReloadStatus};
use crate::engine::decision::{Decision, Tls};
use crate::engine::outcome::{Alarm, TlsTrust, Verdict};

/// The rarely changing part, behind one mutex.
#[derive(Default)]
pub(super) struct Slow {
    /// (component, kind) -> count.
    pub(super) errors: BTreeMap<(&'static str, &'static str), u64>,
    /// Prober verdicts (`starttls_verified`, `no_starttls`, ...) -> count.
    pub(super) probes: BTreeMap<&'static str, u64>,
    /// Operational log warnings and errors by level.
    pub(super) log_events: BTreeMap<&'static str, u64>,
    pub(super) reloads_ok: u64,
    pub(super) reloads_failed: u64,
    pub(super) last_reload: Option<ReloadStatus>,
    pub(super) last_reload_unix: Option<f64>,
    pub(super) recent: VecDeque<RecentError>,
    pub(super) listeners: Vec<ListenerStatus>,
}

/// The registry. See the module documentation for the API in use.
pub struct Metrics {
    pub(super) started: SystemTime,
    /// Also the lookup count: `lookups_total` is its count.
    pub(super) lookup_seconds: [Histogram; 3],
    /// [frontend][level][source]; the `tls` label follows from the level.
    pub(super) decisions: [[[AtomicU64; 4]; 7]; 3],
    pub(super) connections_open: [AtomicI64; 3],
    pub(super) connections: [AtomicU64; 3],
    /// [cache][0 = hit, 1 = miss]
    pub(super) cache_lookups: [[AtomicU64; 2]; Cache::ALL.len()],
    pub(super) cache_entries: [AtomicU64; Cache::ALL.len()],
    pub(super) cache_evictions: [AtomicU64; Cache::ALL.len()],
    /// Caches that reported a size at least once.
    pub(super) cache_seen: [AtomicU64; Cache::ALL.len()],
    /// [fetch][result]
    pub(super) fetches: [[AtomicU64; 4]; 2],
    pub(super) fetch_seconds: [Histogram; 2],
    /// Fetches failed in a row, per source (0 after any that did not fail).
    pub(super) fetch_failing: [AtomicU64; 2],
    /// Unix seconds of the last fetch that did not fail (0: none yet).
    pub(super) fetch_last_ok: [AtomicU64; 2],
    pub(super) probe_seconds: Histogram,
    /// Walks that waited for sources: [one at a time, side by side].
    pub(super) discovery_waits: [AtomicU64; 2],
    pub(super) outcomes: OutcomeCounters,
    pub(super) tlsrpt: super::tlsrpt::TlsRptCounters,
    pub(super) shared: super::shared::SharedCounters,
    pub(super) slow: Mutex<Slow>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl fmt::Debug for Metrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

/// Counters by name, in a fixed order.
pub type Counts = Vec<(&'static str, u64)>;

impl Metrics {
    pub fn new() -> Metrics {
        Metrics {
            started: SystemTime::now(),
            lookup_seconds: std::array::from_fn(|_| Histogram::new(LOOKUP_BUCKETS_US)),
            decisions: Default::default(),
            connections_open: Default::default(),
            connections: Default::default(),
            cache_lookups: Default::default(),
            cache_evictions: Default::default(),
            cache_entries: Default::default(),
            cache_seen: Default::default(),
            fetches: Default::default(),
            fetch_seconds: std::array::from_fn(|_| Histogram::new(NETWORK_BUCKETS_US)),
            fetch_failing: Default::default(),
            fetch_last_ok: Default::default(),
            probe_seconds: Histogram::new(NETWORK_BUCKETS_US),
            discovery_waits: Default::default(),
            outcomes: Default::default(),
            tlsrpt: Default::default(),
            shared: Default::default(),
            slow: Mutex::new(Slow::default()),
        }
    }

    pub(super) fn slow(&self) -> MutexGuard<'_, Slow> {
        self.slow.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn started(&self) -> SystemTime {
        self.started
    }

    // ---- front doors ----

    /// One request answered by a front door, and how long the answer took.
    pub fn lookup(&self, frontend: Frontend, took: Duration) {
        self.lookup_seconds[frontend.index()].observe(took);
    }

    /// One decision a front door acted on.
    pub fn decision(&self, frontend: Frontend, decision: &Decision) {
        self.decisions[frontend.index()][level_index(decision.level)]
            [source_index(decision.source)]
        .fetch_add(1, Ordering::Relaxed);
    }

    /// A connection accepted; it counts as open until the guard is dropped.
    pub fn connection(self: &Arc<Self>, frontend: Frontend) -> ConnectionGuard {
        self.connections[frontend.index()].fetch_add(1, Ordering::Relaxed);
        self.connections_open[frontend.index()].fetch_add(1, Ordering::Relaxed);
        ConnectionGuard {
            metrics: self.clone(),
            frontend,
        }
    }

    /// Something went wrong that an operator may want to alert on:
    /// `component` is `socketmap`, `policy`, `milter`, `prober`, `mta-sts`,
    /// `dane`, `reload`, `metrics`; `kind` a short snake_case word.
    pub fn error(&self, component: &'static str, kind: &'static str) {
        *self.slow().errors.entry((component, kind)).or_insert(0) += 1;
    }

    /// A delivery attempt seen by the TLS-RPT counter.
    pub fn tlsrpt_session(&self, k: super::tlsrpt::SessionKind) {
        self.tlsrpt.session(k);
    }

    /// TLS-RPT's counters: sessions by kind and reports by result, each
    /// as `(name, count)` in the order of their `ALL`.
    pub fn tlsrpt_counts(&self) -> (Counts, Counts) {
        use super::tlsrpt::{ReportResult, SessionKind};
        let (s, r) = self.tlsrpt.counts();
        (
            SessionKind::ALL.iter().map(|k| k.as_str()).zip(s).collect(),
            ReportResult::ALL
                .iter()
                .map(|k| k.as_str())
                .zip(r)
                .collect(),
        )
    }

    /// A report built, or what became of it for one destination.
    pub fn tlsrpt_report(&self, r: super::tlsrpt::ReportResult) {
        self.tlsrpt.report(r);
    }

    /// Lookups that waited for published-policy sources: `(one source,
    /// several side by side)`.
    pub fn discovery_waits(&self) -> (u64, u64) {
        (
            self.discovery_waits[0].load(Ordering::Relaxed),
            self.discovery_waits[1].load(Ordering::Relaxed),
        )
    }

    // ---- delivery outcomes ----

    /// One delivery judged.
    pub fn delivery(&self, verdict: Verdict, trust: TlsTrust, decision: Option<Tls>) {
        self.outcomes.delivery(verdict, trust, decision);
    }

    /// One delivery an operator must look at.
    pub fn outcome_alarm(&self, alarm: Alarm) {
        self.outcomes.alarm(alarm);
    }

    /// `n` lines the outcome follower read, of one kind.
    pub fn outcome_lines(&self, kind: LineKind, n: u64) {
        self.outcomes.lines(kind, n);
    }

    /// Deliveries judged so far with this verdict.
    pub fn deliveries_with(&self, verdict: Verdict) -> u64 {
        self.outcomes.deliveries_with(verdict)
    }

    /// Alarms raised so far of this kind.
    pub fn alarms(&self, alarm: Alarm) -> u64 {
        self.outcomes.alarms(alarm)
    }

    // ---- caches and sources ----

    /// A cache was asked; `hit` when it had a usable answer.
    pub fn cache_lookup(&self, cache: Cache, hit: bool) {
        self.cache_lookups[cache.index()][usize::from(!hit)].fetch_add(1, Ordering::Relaxed);
    }

    /// A cache's size now (call when it changes).
    pub fn cache_entries(&self, cache: Cache, entries: usize) {
        self.cache_entries[cache.index()].store(entries as u64, Ordering::Relaxed);
        self.cache_seen[cache.index()].store(1, Ordering::Relaxed);
    }

    /// Entries a cache dropped to stay within its size cap.
    pub fn cache_evicted(&self, cache: Cache, n: usize) {
        self.cache_evictions[cache.index()].fetch_add(n as u64, Ordering::Relaxed);
    }

    /// The size last reported for a cache, if it ever reported one.
    pub fn cache_size(&self, cache: Cache) -> Option<u64> {
        (self.cache_seen[cache.index()].load(Ordering::Relaxed) != 0)
            .then(|| self.cache_entries[cache.index()].load(Ordering::Relaxed))
    }

    /// A network fetch by a policy source ended.
    pub fn fetch(&self, fetch: Fetch, result: FetchResult, took: Duration) {
        let i = fetch.index();
        self.fetches[i][result.index()].fetch_add(1, Ordering::Relaxed);
        self.fetch_seconds[i].observe(took);
        if result == FetchResult::Error {
            self.fetch_failing[i].fetch_add(1, Ordering::Relaxed);
        } else {
            self.fetch_failing[i].store(0, Ordering::Relaxed);
            let now = SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            self.fetch_last_ok[i].store(now, Ordering::Relaxed);
        }
    }

    /// A source's fetches failing in a row (DNS unreachable, DNSSEC
    /// failing, ...): how many, and when one last did not fail.
    pub fn fetch_failing(&self, fetch: Fetch) -> (u64, Option<SystemTime>) {
        let i = fetch.index();
        let last = self.fetch_last_ok[i].load(Ordering::Relaxed);
        (
            self.fetch_failing[i].load(Ordering::Relaxed),
            (last > 0).then(|| SystemTime::UNIX_EPOCH + Duration::from_secs(last)),
        )
    }

    /// A STARTTLS probe of a domain ended with this verdict
    /// (`TlsCapability::as_str`).
    pub fn probe(&self, verdict: &'static str, took: Duration) {
        *self.slow().probes.entry(verdict).or_insert(0) += 1;
        self.probe_seconds.observe(took);
    }

    // ---- the daemon ----

    /// A listener is bound and served.
    pub fn listening(&self, name: &str, address: String) {
        let mut s = self.slow();
        s.listeners.retain(|l| l.name != name);
        s.listeners.push(ListenerStatus {
            name: name.to_string(),
            address,
        });
    }

    pub fn listeners(&self) -> Vec<ListenerStatus> {
        self.slow().listeners.clone()
    }

    /// A reload finished: `Ok` or the error text.
    pub fn reload(&self, result: Result<(), String>) {
        let now = SystemTime::now();
        let mut s = self.slow();
        let ok = result.is_ok();
        if ok {
            s.reloads_ok += 1;
        } else {
            s.reloads_failed += 1;
        }
        s.last_reload = Some(ReloadStatus {
            at: humantime::format_rfc3339_seconds(now).to_string(),
            ok,
            error: result.err(),
        });
        s.last_reload_unix = now
            .duration_since(SystemTime::UNIX_EPOCH)
            .ok()
            .map(|d| d.as_secs_f64());
    }

    /// (successful, failed) reloads so far.
    pub fn reloads(&self) -> (u64, u64) {
        let s = self.slow();
        (s.reloads_ok, s.reloads_failed)
    }

    pub fn last_reload(&self) -> Option<ReloadStatus> {
        self.slow().last_reload.clone()
    }

    /// Remember a warning or error from the operational log (see
    /// [`ErrorCapture`]). Keeps the last [`RECENT_ERRORS`].
    pub fn log_event(&self, level: &'static str, target: &str, message: String) {
        let mut message = message;
        truncate_utf8(&mut message, MAX_ERROR_TEXT);
        let mut s = self.slow();
        *s.log_events.entry(level).or_insert(0) += 1;
        if s.recent.len() == RECENT_ERRORS {
            s.recent.pop_front();
        }
        s.recent.push_back(RecentError {
            at: humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
            level: level.to_string(),
            target: target.to_string(),
            message,
        });
    }

    /// Warnings and errors, oldest first.
    pub fn recent_errors(&self) -> Vec<RecentError> {
        self.slow().recent.iter().cloned().collect()
    }

    /// Open connections per front door that has any listener or traffic.
    pub fn open_connections(&self, frontend: Frontend) -> i64 {
        self.connections_open[frontend.index()].load(Ordering::Relaxed)
    }

    pub fn lookups(&self, frontend: Frontend) -> u64 {
        self.lookup_seconds[frontend.index()].count()
    }

    /// A connection's guard was dropped.
    pub(super) fn connection_closed(&self, frontend: Frontend) {
        self.connections_open[frontend.index()].fetch_sub(1, Ordering::Relaxed);
    }
}

/// An open connection; dropping it closes it in the counts.
#[must_use = "the connection counts as open until this is dropped"]
pub struct ConnectionGuard {
    metrics: Arc<Metrics>,
    frontend: Frontend,
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.metrics.connection_closed(self.frontend);
    }
}

impl crate::engine::discovery::DiscoveryObserver for Metrics {
    fn waited(&self, side_by_side: bool) {
        self.discovery_waits[usize::from(side_by_side)].fetch_add(1, Ordering::Relaxed);
    }
}
