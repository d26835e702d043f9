//! The daemon's counters, gauges and histograms, rendered in the Prometheus
//! text format (version 0.0.4) by the metrics listener.
//!
//! One [`Metrics`] value hangs on the daemon's `Context`; every part of the
//! daemon records into it through the small API below. Nothing here is a
//! global: a test builds its own `Metrics` and reads it back.
//!
//! Recording is lock-free on the request path (lookups, decisions,
//! connections, cache hits): those families have fixed label sets and live
//! in arrays of atomics. Rare events (errors, probe results, fetches,
//! reloads) go through a mutex.
//!
//! ```ignore
//! // A front door, per request:
//! let _conn = metrics.connection(Frontend::Milter);        // on accept; drop on close
//! let t = std::time::Instant::now();
//! let decision = engine.decide(&dest).await;
//! metrics.lookup(Frontend::Milter, t.elapsed());
//! metrics.decision(Frontend::Milter, &decision);
//! metrics.error("milter", "malformed_packet");
//! // A policy source with a cache:
//! metrics.cache_lookup(Cache::MtaSts, hit);
//! metrics.cache_entries(Cache::MtaSts, cache.len());
//! metrics.fetch(Fetch::MtaSts, FetchResult::Found, started.elapsed());
//! ```

use std::collections::{BTreeMap, VecDeque};
use std::fmt::{self, Write as _};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use crate::engine::decision::{Decision, Level, SourceKind};

/// Prefix of every metric name.
pub const PREFIX: &str = "tls_policyd_";
/// Warnings and errors kept for `tls-policyd status`.
pub const RECENT_ERRORS: usize = 20;
/// Longest message text kept per warning or error, in bytes.
pub const MAX_ERROR_TEXT: usize = 512;

/// A front door: where lookups come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Frontend {
    Socketmap,
    Policy,
    Milter,
}

impl Frontend {
    pub const ALL: [Frontend; 3] = [Frontend::Socketmap, Frontend::Policy, Frontend::Milter];

    /// The label value (the same word as the decision log's `frontend`).
    pub fn as_str(self) -> &'static str {
        match self {
            Frontend::Socketmap => "socketmap",
            Frontend::Policy => "policy",
            Frontend::Milter => "milter",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// A cache whose hits, misses and size are counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Cache {
    /// The STARTTLS prober's per-domain results.
    Prober,
    /// MTA-STS policies.
    MtaSts,
    /// DANE (TLSA) lookups.
    Dane,
}

impl Cache {
    pub const ALL: [Cache; 3] = [Cache::Prober, Cache::MtaSts, Cache::Dane];

    pub fn as_str(self) -> &'static str {
        match self {
            Cache::Prober => "prober",
            Cache::MtaSts => "mta-sts",
            Cache::Dane => "dane",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// A published-policy fetch: what a dynamic source looks up on the network.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Fetch {
    /// TXT record plus HTTPS policy file (RFC 8461).
    MtaSts,
    /// TLSA records under DNSSEC (RFC 7672).
    Dane,
}

impl Fetch {
    pub const ALL: [Fetch; 2] = [Fetch::MtaSts, Fetch::Dane];

    pub fn as_str(self) -> &'static str {
        match self {
            Fetch::MtaSts => "mta-sts",
            Fetch::Dane => "dane",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// How a fetch ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FetchResult {
    /// A usable policy (MTA-STS policy, TLSA records).
    Found,
    /// Definitely none published (no TXT record, NXDOMAIN, no TLSA).
    None,
    /// Something was published but cannot be used (bad policy syntax,
    /// unsigned or bogus DNSSEC answer, unusable TLSA).
    Invalid,
    /// Could not tell: timeout, SERVFAIL, HTTPS failure.
    Error,
}

impl FetchResult {
    pub const ALL: [FetchResult; 4] = [
        FetchResult::Found,
        FetchResult::None,
        FetchResult::Invalid,
        FetchResult::Error,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            FetchResult::Found => "found",
            FetchResult::None => "none",
            FetchResult::Invalid => "invalid",
            FetchResult::Error => "error",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

const SOURCES: [SourceKind; 4] = [
    SourceKind::Static,
    SourceKind::Dane,
    SourceKind::MtaSts,
    SourceKind::Default,
];

fn source_index(s: SourceKind) -> usize {
    match s {
        SourceKind::Static => 0,
        SourceKind::Dane => 1,
        SourceKind::MtaSts => 2,
        SourceKind::Default => 3,
    }
}

fn level_index(l: Level) -> usize {
    Level::ALL
        .iter()
        .position(|x| *x == l)
        .expect("Level::ALL lists every level")
}

/// Upper bounds of the lookup latency buckets, in microseconds.
const LOOKUP_BUCKETS_US: &[u64] = &[
    25, 50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000,
    1_000_000, 2_500_000, 5_000_000, 10_000_000,
];

/// Upper bounds of the network latency buckets (probes, fetches), in
/// microseconds.
const NETWORK_BUCKETS_US: &[u64] = &[
    5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000, 2_500_000, 5_000_000,
    10_000_000, 30_000_000, 60_000_000,
];

/// A histogram with fixed buckets; lock-free to record.
pub struct Histogram {
    bounds_us: &'static [u64],
    /// Per bucket (not cumulative); the last one is `+Inf`.
    buckets: Box<[AtomicU64]>,
    sum_us: AtomicU64,
}

impl Histogram {
    fn new(bounds_us: &'static [u64]) -> Histogram {
        Histogram {
            bounds_us,
            buckets: (0..=bounds_us.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_us: AtomicU64::new(0),
        }
    }

    pub fn observe(&self, d: Duration) {
        let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        let i = self.bounds_us.partition_point(|b| *b < us);
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.sum_us.fetch_add(us, Ordering::Relaxed);
    }

    /// Observations so far (the sum of the buckets: no separate counter
    /// to update on the request path).
    pub fn count(&self) -> u64 {
        self.buckets.iter().map(|b| b.load(Ordering::Relaxed)).sum()
    }

    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let sep = if labels.is_empty() { "" } else { "," };
        let mut cumulative = 0u64;
        for (i, b) in self.buckets.iter().enumerate() {
            cumulative += b.load(Ordering::Relaxed);
            let le = match self.bounds_us.get(i) {
                Some(us) => seconds(*us),
                None => "+Inf".to_string(),
            };
            let _ = writeln!(
                out,
                "{PREFIX}{name}_bucket{{{labels}{sep}le=\"{le}\"}} {cumulative}"
            );
        }
        let braces = if labels.is_empty() {
            String::new()
        } else {
            format!("{{{labels}}}")
        };
        let _ = writeln!(
            out,
            "{PREFIX}{name}_sum{braces} {}",
            seconds(self.sum_us.load(Ordering::Relaxed))
        );
        // The count is the sum of the buckets as rendered, so a scrape
        // racing an observation stays consistent.
        let _ = writeln!(out, "{PREFIX}{name}_count{braces} {cumulative}");
    }
}

/// Microseconds as decimal seconds without exponent (`0.00025`).
fn seconds(us: u64) -> String {
    let whole = us / 1_000_000;
    let frac = us % 1_000_000;
    if frac == 0 {
        whole.to_string()
    } else {
        let f = format!("{frac:06}");
        format!("{whole}.{}", f.trim_end_matches('0'))
    }
}

/// How the last reload went.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReloadStatus {
    /// RFC 3339 time.
    pub at: String,
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// A warning or error from the operational log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecentError {
    /// RFC 3339 time.
    pub at: String,
    /// `WARN` or `ERROR`.
    pub level: String,
    /// The module that logged it.
    pub target: String,
    /// The message and its fields, as the log line shows them.
    pub message: String,
}

/// A listener the daemon has bound.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListenerStatus {
    /// `socketmap`, `policy`, `milter` or `metrics`.
    pub name: String,
    /// `inet:127.0.0.1:10027`, `unix:/run/tls-policyd/socketmap.sock`.
    pub address: String,
}

/// The rarely changing part, behind one mutex.
#[derive(Default)]
struct Slow {
    /// (component, kind) -> count.
    errors: BTreeMap<(&'static str, &'static str), u64>,
    /// Prober verdicts (`starttls_verified`, `no_starttls`, ...) -> count.
    probes: BTreeMap<&'static str, u64>,
    /// Operational log warnings and errors by level.
    log_events: BTreeMap<&'static str, u64>,
    reloads_ok: u64,
    reloads_failed: u64,
    last_reload: Option<ReloadStatus>,
    last_reload_unix: Option<f64>,
    recent: VecDeque<RecentError>,
    listeners: Vec<ListenerStatus>,
}

/// The registry. See the module documentation for the API in use.
pub struct Metrics {
    started: SystemTime,
    /// Also the lookup count: `lookups_total` is its count.
    lookup_seconds: [Histogram; 3],
    /// [frontend][level][source]; the `tls` label follows from the level.
    decisions: [[[AtomicU64; 4]; 7]; 3],
    connections_open: [AtomicI64; 3],
    connections: [AtomicU64; 3],
    /// [cache][0 = hit, 1 = miss]
    cache_lookups: [[AtomicU64; 2]; 3],
    cache_entries: [AtomicU64; 3],
    /// Caches that reported a size at least once.
    cache_seen: [AtomicU64; 3],
    /// [fetch][result]
    fetches: [[AtomicU64; 4]; 2],
    fetch_seconds: [Histogram; 2],
    probe_seconds: Histogram,
    slow: Mutex<Slow>,
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

impl Metrics {
    pub fn new() -> Metrics {
        Metrics {
            started: SystemTime::now(),
            lookup_seconds: std::array::from_fn(|_| Histogram::new(LOOKUP_BUCKETS_US)),
            decisions: Default::default(),
            connections_open: Default::default(),
            connections: Default::default(),
            cache_lookups: Default::default(),
            cache_entries: Default::default(),
            cache_seen: Default::default(),
            fetches: Default::default(),
            fetch_seconds: std::array::from_fn(|_| Histogram::new(NETWORK_BUCKETS_US)),
            probe_seconds: Histogram::new(NETWORK_BUCKETS_US),
            slow: Mutex::new(Slow::default()),
        }
    }

    fn slow(&self) -> MutexGuard<'_, Slow> {
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

    /// The size last reported for a cache, if it ever reported one.
    pub fn cache_size(&self, cache: Cache) -> Option<u64> {
        (self.cache_seen[cache.index()].load(Ordering::Relaxed) != 0)
            .then(|| self.cache_entries[cache.index()].load(Ordering::Relaxed))
    }

    /// A network fetch by a policy source ended.
    pub fn fetch(&self, fetch: Fetch, result: FetchResult, took: Duration) {
        self.fetches[fetch.index()][result.index()].fetch_add(1, Ordering::Relaxed);
        self.fetch_seconds[fetch.index()].observe(took);
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

    /// Every family in the Prometheus text format.
    pub fn render(&self, out: &mut String) {
        let mut w = Writer { out };
        w.header(
            "lookups_total",
            "counter",
            "Requests answered, by front door.",
        );
        for f in Frontend::ALL {
            w.sample(
                "lookups_total",
                &[("frontend", f.as_str())],
                self.lookups(f),
            );
        }
        w.header(
            "lookup_duration_seconds",
            "histogram",
            "Time to answer a request, by front door.",
        );
        for f in Frontend::ALL {
            self.lookup_seconds[f.index()].render(
                w.out,
                "lookup_duration_seconds",
                &format!("frontend=\"{}\"", f.as_str()),
            );
        }
        w.header(
            "decisions_total",
            "counter",
            "Decisions acted on, by front door, TLS class, Postfix level and source.",
        );
        for f in Frontend::ALL {
            for level in Level::ALL {
                for source in SOURCES {
                    let n = self.decisions[f.index()][level_index(level)][source_index(source)]
                        .load(Ordering::Relaxed);
                    if n > 0 {
                        w.sample(
                            "decisions_total",
                            &[
                                ("frontend", f.as_str()),
                                ("tls", level.tls().as_str()),
                                ("level", level.as_str()),
                                ("source", source.as_str()),
                            ],
                            n,
                        );
                    }
                }
            }
        }
        w.header(
            "connections_open",
            "gauge",
            "Connections open now, by front door.",
        );
        for f in Frontend::ALL {
            w.sample_i(
                "connections_open",
                &[("frontend", f.as_str())],
                self.connections_open[f.index()].load(Ordering::Relaxed),
            );
        }
        w.header(
            "connections_total",
            "counter",
            "Connections accepted, by front door.",
        );
        for f in Frontend::ALL {
            w.sample(
                "connections_total",
                &[("frontend", f.as_str())],
                self.connections[f.index()].load(Ordering::Relaxed),
            );
        }
        w.header(
            "cache_requests_total",
            "counter",
            "Cache lookups, by cache and result (hit or miss).",
        );
        for c in Cache::ALL {
            for (i, result) in ["hit", "miss"].into_iter().enumerate() {
                w.sample(
                    "cache_requests_total",
                    &[("cache", c.as_str()), ("result", result)],
                    self.cache_lookups[c.index()][i].load(Ordering::Relaxed),
                );
            }
        }
        w.header("cache_entries", "gauge", "Entries in each cache now.");
        for c in Cache::ALL {
            if let Some(n) = self.cache_size(c) {
                w.sample("cache_entries", &[("cache", c.as_str())], n);
            }
        }
        w.header(
            "fetches_total",
            "counter",
            "Published-policy fetches (MTA-STS, DANE), by source and result.",
        );
        for f in Fetch::ALL {
            for r in FetchResult::ALL {
                w.sample(
                    "fetches_total",
                    &[("source", f.as_str()), ("result", r.as_str())],
                    self.fetches[f.index()][r.index()].load(Ordering::Relaxed),
                );
            }
        }
        w.header(
            "fetch_duration_seconds",
            "histogram",
            "Time a published-policy fetch took, by source.",
        );
        for f in Fetch::ALL {
            self.fetch_seconds[f.index()].render(
                w.out,
                "fetch_duration_seconds",
                &format!("source=\"{}\"", f.as_str()),
            );
        }
        let slow = self.slow();
        w.header(
            "probes_total",
            "counter",
            "STARTTLS probes of a domain's mail servers, by verdict.",
        );
        for (verdict, n) in &slow.probes {
            w.sample("probes_total", &[("verdict", verdict)], *n);
        }
        w.header(
            "probe_duration_seconds",
            "histogram",
            "Time a STARTTLS probe of a domain took.",
        );
        self.probe_seconds
            .render(w.out, "probe_duration_seconds", "");
        w.header("errors_total", "counter", "Errors, by component and kind.");
        for ((component, kind), n) in &slow.errors {
            w.sample(
                "errors_total",
                &[("component", component), ("kind", kind)],
                *n,
            );
        }
        w.header(
            "log_messages_total",
            "counter",
            "Warnings and errors written to the operational log, by level.",
        );
        for level in ["warn", "error"] {
            w.sample(
                "log_messages_total",
                &[("level", level)],
                slow.log_events.get(level).copied().unwrap_or(0),
            );
        }
        w.header("reloads_total", "counter", "Reloads (SIGHUP), by result.");
        w.sample("reloads_total", &[("result", "ok")], slow.reloads_ok);
        w.sample(
            "reloads_total",
            &[("result", "failed")],
            slow.reloads_failed,
        );
        w.header(
            "last_reload_success",
            "gauge",
            "1 when the last reload succeeded or there was none, 0 when it failed.",
        );
        let ok = slow.last_reload.as_ref().is_none_or(|r| r.ok);
        w.sample("last_reload_success", &[], u64::from(ok));
        if let Some(t) = slow.last_reload_unix {
            w.header(
                "last_reload_timestamp_seconds",
                "gauge",
                "Unix time of the last reload.",
            );
            w.sample_f("last_reload_timestamp_seconds", &[], t);
        }
        drop(slow);
        w.header(
            "start_time_seconds",
            "gauge",
            "Unix time the daemon started.",
        );
        let start = self
            .started
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0);
        w.sample_f("start_time_seconds", &[], start);
    }
}

/// Writes families; `render_extra` in the daemon uses it too.
pub struct Writer<'a> {
    pub out: &'a mut String,
}

impl Writer<'_> {
    pub fn header(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.out, "# HELP {PREFIX}{name} {help}");
        let _ = writeln!(self.out, "# TYPE {PREFIX}{name} {kind}");
    }

    fn labels(&mut self, name: &str, labels: &[(&str, &str)]) {
        let _ = write!(self.out, "{PREFIX}{name}");
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                let _ = write!(self.out, "{k}=\"");
                escape_label(v, self.out);
                self.out.push('"');
            }
            self.out.push('}');
        }
    }

    pub fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: u64) {
        self.labels(name, labels);
        let _ = writeln!(self.out, " {value}");
    }

    pub fn sample_i(&mut self, name: &str, labels: &[(&str, &str)], value: i64) {
        self.labels(name, labels);
        let _ = writeln!(self.out, " {value}");
    }

    pub fn sample_f(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        self.labels(name, labels);
        let _ = writeln!(self.out, " {value}");
    }
}

/// Label values escape backslash, double quote and newline.
fn escape_label(v: &str, out: &mut String) {
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

fn truncate_utf8(s: &mut String, max: usize) {
    if s.len() > max {
        let mut end = max;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
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
        self.metrics.connections_open[self.frontend.index()].fetch_sub(1, Ordering::Relaxed);
    }
}

/// A `tracing` layer that hands every warning and error to
/// [`Metrics::log_event`], so `status` can show the last ones.
pub struct ErrorCapture {
    metrics: Arc<Metrics>,
}

impl ErrorCapture {
    pub fn new(metrics: Arc<Metrics>) -> ErrorCapture {
        ErrorCapture { metrics }
    }
}

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for ErrorCapture {
    fn on_event(
        &self,
        event: &tracing::Event<'_>,
        _ctx: tracing_subscriber::layer::Context<'_, S>,
    ) {
        let level = match *event.metadata().level() {
            tracing::Level::ERROR => "error",
            tracing::Level::WARN => "warn",
            _ => return,
        };
        let mut v = FieldText::default();
        event.record(&mut v);
        self.metrics
            .log_event(level, event.metadata().target(), v.finish());
    }
}

/// Formats an event the way the log line shows it: the message, then
/// `name=value` fields.
#[derive(Default)]
struct FieldText {
    message: String,
    fields: String,
}

impl FieldText {
    fn finish(self) -> String {
        if self.fields.is_empty() {
            self.message
        } else if self.message.is_empty() {
            self.fields
        } else {
            format!("{} {}", self.message, self.fields)
        }
    }

    fn push(&mut self, name: &str, value: fmt::Arguments<'_>) {
        // Stop formatting once past the limit: a huge field must not cost
        // memory.
        if self.message.len() + self.fields.len() > MAX_ERROR_TEXT {
            return;
        }
        if name == "message" {
            let _ = self.message.write_fmt(value);
        } else {
            if !self.fields.is_empty() {
                self.fields.push(' ');
            }
            let _ = write!(self.fields, "{name}={value}");
        }
    }
}

impl tracing::field::Visit for FieldText {
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        if field.name() == "message" {
            self.push("message", format_args!("{value}"));
        } else {
            self.push(field.name(), format_args!("{value:?}"));
        }
    }

    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn fmt::Debug) {
        self.push(field.name(), format_args!("{value:?}"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::decision::Decision;

    fn decision(level: Level, source: SourceKind) -> Decision {
        Decision::bare(level, source, "r")
    }

    fn rendered(m: &Metrics) -> String {
        let mut s = String::new();
        m.render(&mut s);
        s
    }

    fn value(text: &str, series: &str) -> Option<String> {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
            .map(str::to_string)
    }

    #[test]
    fn seconds_without_exponent() {
        assert_eq!(seconds(0), "0");
        assert_eq!(seconds(25), "0.000025");
        assert_eq!(seconds(250_000), "0.25");
        assert_eq!(seconds(1_000_000), "1");
        assert_eq!(seconds(2_500_000), "2.5");
        assert_eq!(seconds(60_000_000), "60");
    }

    #[test]
    fn histogram_buckets_at_their_bounds() {
        let h = Histogram::new(&[100, 1_000]);
        // A value equal to a bound belongs to that bucket (le = "less or
        // equal"); one microsecond more goes to the next.
        h.observe(Duration::from_micros(100));
        h.observe(Duration::from_micros(101));
        h.observe(Duration::from_micros(1_000));
        h.observe(Duration::from_micros(1_001));
        let mut s = String::new();
        h.render(&mut s, "x", "a=\"b\"");
        assert_eq!(
            s,
            "tls_policyd_x_bucket{a=\"b\",le=\"0.0001\"} 1\n\
             tls_policyd_x_bucket{a=\"b\",le=\"0.001\"} 3\n\
             tls_policyd_x_bucket{a=\"b\",le=\"+Inf\"} 4\n\
             tls_policyd_x_sum{a=\"b\"} 0.002202\n\
             tls_policyd_x_count{a=\"b\"} 4\n"
        );
        let mut s = String::new();
        Histogram::new(&[1]).render(&mut s, "y", "");
        assert!(s.contains("tls_policyd_y_bucket{le=\"+Inf\"} 0\n"), "{s}");
        assert!(s.contains("tls_policyd_y_count 0\n"), "{s}");
    }

    #[test]
    fn decisions_by_frontend_tls_level_and_source() {
        let m = Metrics::new();
        m.decision(
            Frontend::Socketmap,
            &decision(Level::Encrypt, SourceKind::Static),
        );
        m.decision(
            Frontend::Socketmap,
            &decision(Level::Encrypt, SourceKind::Static),
        );
        m.decision(Frontend::Policy, &decision(Level::May, SourceKind::Default));
        let t = rendered(&m);
        assert_eq!(
            value(
                &t,
                "tls_policyd_decisions_total{frontend=\"socketmap\",tls=\"forced\",level=\"encrypt\",source=\"static\"}"
            )
            .as_deref(),
            Some("2")
        );
        assert_eq!(
            value(
                &t,
                "tls_policyd_decisions_total{frontend=\"policy\",tls=\"opportunistic\",level=\"may\",source=\"default\"}"
            )
            .as_deref(),
            Some("1")
        );
        // Combinations never seen are not listed.
        assert_eq!(t.matches("tls_policyd_decisions_total{").count(), 2);
    }

    #[test]
    fn connections_open_until_guard_dropped() {
        let m = Arc::new(Metrics::new());
        let a = m.connection(Frontend::Socketmap);
        let b = m.connection(Frontend::Socketmap);
        assert_eq!(m.open_connections(Frontend::Socketmap), 2);
        drop(a);
        assert_eq!(m.open_connections(Frontend::Socketmap), 1);
        drop(b);
        let t = rendered(&m);
        assert_eq!(
            value(&t, "tls_policyd_connections_open{frontend=\"socketmap\"}").as_deref(),
            Some("0")
        );
        assert_eq!(
            value(&t, "tls_policyd_connections_total{frontend=\"socketmap\"}").as_deref(),
            Some("2")
        );
    }

    #[test]
    fn caches_fetches_probes_errors_reloads() {
        let m = Metrics::new();
        m.cache_lookup(Cache::Prober, true);
        m.cache_lookup(Cache::Prober, false);
        m.cache_lookup(Cache::Prober, false);
        m.cache_entries(Cache::Prober, 7);
        m.fetch(Fetch::MtaSts, FetchResult::Found, Duration::from_millis(20));
        m.probe("no_starttls", Duration::from_millis(30));
        m.error("socketmap", "framing");
        m.error("socketmap", "framing");
        m.reload(Ok(()));
        m.reload(Err("bad".into()));
        let t = rendered(&m);
        for (series, want) in [
            (
                "tls_policyd_cache_requests_total{cache=\"prober\",result=\"hit\"}",
                "1",
            ),
            (
                "tls_policyd_cache_requests_total{cache=\"prober\",result=\"miss\"}",
                "2",
            ),
            ("tls_policyd_cache_entries{cache=\"prober\"}", "7"),
            (
                "tls_policyd_fetches_total{source=\"mta-sts\",result=\"found\"}",
                "1",
            ),
            (
                "tls_policyd_fetch_duration_seconds_count{source=\"mta-sts\"}",
                "1",
            ),
            ("tls_policyd_probes_total{verdict=\"no_starttls\"}", "1"),
            (
                "tls_policyd_probe_duration_seconds_bucket{le=\"0.05\"}",
                "1",
            ),
            (
                "tls_policyd_errors_total{component=\"socketmap\",kind=\"framing\"}",
                "2",
            ),
            ("tls_policyd_reloads_total{result=\"ok\"}", "1"),
            ("tls_policyd_reloads_total{result=\"failed\"}", "1"),
            ("tls_policyd_last_reload_success", "0"),
        ] {
            assert_eq!(value(&t, series).as_deref(), Some(want), "{series}\n{t}");
        }
        // A cache that never reported a size has no gauge.
        assert!(!t.contains("cache_entries{cache=\"dane\"}"), "{t}");
        assert_eq!(m.last_reload().unwrap().error.as_deref(), Some("bad"));
    }

    #[test]
    fn every_family_has_help_and_type_once() {
        let m = Metrics::new();
        let t = rendered(&m);
        let mut types = std::collections::HashSet::new();
        for line in t.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let name = rest.split(' ').next().unwrap();
                assert!(types.insert(name.to_string()), "TYPE twice: {name}");
            } else if !line.starts_with("# HELP ") {
                let name = line.split(['{', ' ']).next().unwrap();
                let family = ["_bucket", "_sum", "_count"]
                    .iter()
                    .find_map(|s| name.strip_suffix(s).filter(|f| types.contains(*f)))
                    .unwrap_or(name);
                assert!(types.contains(family), "sample before its TYPE: {line}");
            }
        }
    }

    #[test]
    fn recent_errors_are_bounded() {
        let m = Metrics::new();
        for i in 0..RECENT_ERRORS + 5 {
            m.log_event("warn", "t", format!("problem {i}"));
        }
        m.log_event("error", "t", "x".repeat(MAX_ERROR_TEXT + 100));
        let r = m.recent_errors();
        assert_eq!(r.len(), RECENT_ERRORS);
        assert_eq!(r[0].message, "problem 6");
        assert_eq!(r.last().unwrap().message.len(), MAX_ERROR_TEXT);
        let mut long = "é".repeat(MAX_ERROR_TEXT);
        truncate_utf8(&mut long, MAX_ERROR_TEXT - 1);
        assert_eq!(long.len(), MAX_ERROR_TEXT - 2);
        let t = rendered(&m);
        assert_eq!(
            value(&t, "tls_policyd_log_messages_total{level=\"warn\"}").as_deref(),
            Some(&*(RECENT_ERRORS + 5).to_string())
        );
    }

    #[test]
    fn error_capture_layer_formats_fields() {
        use tracing_subscriber::layer::SubscriberExt;
        let m = Arc::new(Metrics::new());
        let subscriber = tracing_subscriber::registry().with(ErrorCapture::new(m.clone()));
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!("not kept");
            tracing::warn!(peer = "unix:/x", bytes = 3, "client closed mid-request");
            tracing::error!(error = %"boom", "reload failed");
        });
        let r = m.recent_errors();
        assert_eq!(r.len(), 2);
        assert_eq!(r[0].level, "warn");
        assert_eq!(
            r[0].message,
            "client closed mid-request peer=\"unix:/x\" bytes=3"
        );
        assert_eq!(r[1].message, "reload failed error=boom");
    }

    #[test]
    fn label_values_are_escaped() {
        let mut s = String::new();
        Writer { out: &mut s }.sample("x", &[("a", "q\"b\\c\nd")], 1);
        assert_eq!(s, "tls_policyd_x{a=\"q\\\"b\\\\c\\nd\"} 1\n");
    }
}
