//! The registry on the `prometheus-client` crate (feature
//! `prometheus-client`): the same API and families as `registry.rs`, the
//! counters, gauges and histograms the crate's, the exposition its
//! Prometheus text encoder (version 0.0.4).
//!
//! The request path keeps handles: every series with a fixed label set is
//! created up front, and a decision's series once, on its first use, so a
//! lookup does not hash labels.

use std::collections::VecDeque;
use std::fmt;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, SystemTime};

use prometheus_client::encoding::prometheus_text;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use super::capture::truncate_utf8;
use super::histogram::{LOOKUP_BUCKETS_US, NETWORK_BUCKETS_US};
use super::labels::{Cache, Fetch, FetchResult, Frontend, SOURCES, level_index, source_index};
use super::{ListenerStatus, MAX_ERROR_TEXT, RECENT_ERRORS, RecentError, ReloadStatus};
use crate::engine::decision::{Decision, Level};

type Labels<const N: usize> = [(&'static str, &'static str); N];
type HistogramFamily = Family<Labels<1>, Histogram, fn() -> Histogram>;
type FloatGauge = Gauge<f64, AtomicU64>;

fn bounds(us: &[u64]) -> impl Iterator<Item = f64> + '_ {
    us.iter().map(|us| *us as f64 / 1e6)
}

fn lookup_histogram() -> Histogram {
    Histogram::new(bounds(LOOKUP_BUCKETS_US))
}

fn network_histogram() -> Histogram {
    Histogram::new(bounds(NETWORK_BUCKETS_US))
}

/// Whole microseconds in seconds, as the hand-written histogram counts.
fn observed(d: Duration) -> f64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX) as f64 / 1e6
}

/// The registry's help texts end in a full stop that the crate adds.
fn help(text: &str) -> &str {
    text.strip_suffix('.').unwrap_or(text)
}

/// What `/health` shows besides counts, behind one mutex.
#[derive(Default)]
struct State {
    last_reload: Option<ReloadStatus>,
    recent: VecDeque<RecentError>,
    listeners: Vec<ListenerStatus>,
}

/// The registry. See the module documentation of `metrics` for the API.
pub struct Metrics {
    started: SystemTime,
    registry: Registry,
    lookups: [Counter; 3],
    lookup_seconds: [Histogram; 3],
    decisions: Family<Labels<4>, Counter>,
    /// [frontend][level][source], each set on the first such decision.
    decision_series: [[[OnceLock<Counter>; 4]; 7]; 3],
    connections_open: [Gauge; 3],
    connections: [Counter; 3],
    /// [cache][0 = hit, 1 = miss]
    cache_requests: [[Counter; 2]; 3],
    cache_entries: Family<Labels<1>, Gauge<u64, AtomicU64>>,
    /// [fetch][result]
    fetches: [[Counter; 4]; 2],
    fetch_seconds: [Histogram; 2],
    probes: Family<Labels<1>, Counter>,
    probe_seconds: Histogram,
    errors: Family<Labels<2>, Counter>,
    /// [0 = warn, 1 = error]
    log_messages: [Counter; 2],
    /// [0 = ok, 1 = failed]
    reloads: [Counter; 2],
    last_reload_success: Gauge,
    /// Listed from the first reload on.
    last_reload_timestamp: Family<Labels<0>, FloatGauge>,
    state: Mutex<State>,
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
        let started = SystemTime::now();
        let mut r = Registry::with_prefix("tls_policyd");

        let lookups = Family::<Labels<1>, Counter>::default();
        r.register(
            "lookups",
            help("Requests answered, by front door."),
            lookups.clone(),
        );
        let lookup_seconds = HistogramFamily::new_with_constructor(lookup_histogram);
        r.register(
            "lookup_duration_seconds",
            help("Time to answer a request, by front door."),
            lookup_seconds.clone(),
        );
        let decisions = Family::<Labels<4>, Counter>::default();
        r.register(
            "decisions",
            help("Decisions acted on, by front door, TLS class, Postfix level and source."),
            decisions.clone(),
        );
        let connections_open = Family::<Labels<1>, Gauge>::default();
        r.register(
            "connections_open",
            help("Connections open now, by front door."),
            connections_open.clone(),
        );
        let connections = Family::<Labels<1>, Counter>::default();
        r.register(
            "connections",
            help("Connections accepted, by front door."),
            connections.clone(),
        );
        let cache_requests = Family::<Labels<2>, Counter>::default();
        r.register(
            "cache_requests",
            help("Cache lookups, by cache and result (hit or miss)."),
            cache_requests.clone(),
        );
        let cache_entries = Family::<Labels<1>, Gauge<u64, AtomicU64>>::default();
        r.register(
            "cache_entries",
            help("Entries in each cache now."),
            cache_entries.clone(),
        );
        let fetches = Family::<Labels<2>, Counter>::default();
        r.register(
            "fetches",
            help("Published-policy fetches (MTA-STS, DANE), by source and result."),
            fetches.clone(),
        );
        let fetch_seconds = HistogramFamily::new_with_constructor(network_histogram);
        r.register(
            "fetch_duration_seconds",
            help("Time a published-policy fetch took, by source."),
            fetch_seconds.clone(),
        );
        let probes = Family::<Labels<1>, Counter>::default();
        r.register(
            "probes",
            help("STARTTLS probes of a domain's mail servers, by verdict."),
            probes.clone(),
        );
        let probe_seconds = network_histogram();
        r.register(
            "probe_duration_seconds",
            help("Time a STARTTLS probe of a domain took."),
            probe_seconds.clone(),
        );
        let errors = Family::<Labels<2>, Counter>::default();
        r.register(
            "errors",
            help("Errors, by component and kind."),
            errors.clone(),
        );
        let log_messages = Family::<Labels<1>, Counter>::default();
        r.register(
            "log_messages",
            help("Warnings and errors written to the operational log, by level."),
            log_messages.clone(),
        );
        let reloads = Family::<Labels<1>, Counter>::default();
        r.register(
            "reloads",
            help("Reloads (SIGHUP), by result."),
            reloads.clone(),
        );
        let last_reload_success = Gauge::default();
        last_reload_success.set(1);
        r.register(
            "last_reload_success",
            help("1 when the last reload succeeded or there was none, 0 when it failed."),
            last_reload_success.clone(),
        );
        let last_reload_timestamp = Family::<Labels<0>, FloatGauge>::default();
        r.register(
            "last_reload_timestamp_seconds",
            help("Unix time of the last reload."),
            last_reload_timestamp.clone(),
        );
        let start_time = FloatGauge::default();
        start_time.set(
            started
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0.0, |d| d.as_secs_f64()),
        );
        r.register(
            "start_time_seconds",
            help("Unix time the daemon started."),
            start_time,
        );

        let frontend = |f: Frontend| [("frontend", f.as_str())];
        Metrics {
            started,
            registry: r,
            lookups: Frontend::ALL.map(|f| lookups.get_or_create_owned(&frontend(f))),
            lookup_seconds: Frontend::ALL.map(|f| lookup_seconds.get_or_create_owned(&frontend(f))),
            decisions,
            decision_series: Default::default(),
            connections_open: Frontend::ALL
                .map(|f| connections_open.get_or_create_owned(&frontend(f))),
            connections: Frontend::ALL.map(|f| connections.get_or_create_owned(&frontend(f))),
            cache_requests: Cache::ALL.map(|c| {
                ["hit", "miss"].map(|r| {
                    cache_requests.get_or_create_owned(&[("cache", c.as_str()), ("result", r)])
                })
            }),
            cache_entries,
            fetches: Fetch::ALL.map(|f| {
                FetchResult::ALL.map(|r| {
                    fetches.get_or_create_owned(&[("source", f.as_str()), ("result", r.as_str())])
                })
            }),
            fetch_seconds: Fetch::ALL
                .map(|f| fetch_seconds.get_or_create_owned(&[("source", f.as_str())])),
            probes,
            probe_seconds,
            errors,
            log_messages: ["warn", "error"]
                .map(|l| log_messages.get_or_create_owned(&[("level", l)])),
            reloads: ["ok", "failed"].map(|r| reloads.get_or_create_owned(&[("result", r)])),
            last_reload_success,
            last_reload_timestamp,
            state: Mutex::new(State::default()),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn started(&self) -> SystemTime {
        self.started
    }

    // ---- front doors ----

    /// One request answered by a front door, and how long the answer took.
    pub fn lookup(&self, frontend: Frontend, took: Duration) {
        self.lookups[frontend.index()].inc();
        self.lookup_seconds[frontend.index()].observe(observed(took));
    }

    /// One decision a front door acted on.
    pub fn decision(&self, frontend: Frontend, decision: &Decision) {
        let (level, source) = (decision.level, decision.source);
        self.decision_series[frontend.index()][level_index(level)][source_index(source)]
            .get_or_init(|| {
                self.decisions.get_or_create_owned(&[
                    ("frontend", frontend.as_str()),
                    ("tls", level.tls().as_str()),
                    ("level", level.as_str()),
                    ("source", source.as_str()),
                ])
            })
            .inc();
    }

    /// A connection accepted; it counts as open until the guard is dropped.
    pub fn connection(self: &Arc<Self>, frontend: Frontend) -> ConnectionGuard {
        self.connections[frontend.index()].inc();
        self.connections_open[frontend.index()].inc();
        ConnectionGuard {
            metrics: self.clone(),
            frontend,
        }
    }

    /// Something went wrong that an operator may want to alert on:
    /// `component` is `socketmap`, `policy`, `milter`, `prober`, `mta-sts`,
    /// `dane`, `reload`, `metrics`; `kind` a short snake_case word.
    pub fn error(&self, component: &'static str, kind: &'static str) {
        self.errors
            .get_or_create(&[("component", component), ("kind", kind)])
            .inc();
    }

    // ---- caches and sources ----

    /// A cache was asked; `hit` when it had a usable answer.
    pub fn cache_lookup(&self, cache: Cache, hit: bool) {
        self.cache_requests[cache.index()][usize::from(!hit)].inc();
    }

    /// A cache's size now (call when it changes).
    pub fn cache_entries(&self, cache: Cache, entries: usize) {
        self.cache_entries
            .get_or_create(&[("cache", cache.as_str())])
            .set(entries as u64);
    }

    /// The size last reported for a cache, if it ever reported one.
    pub fn cache_size(&self, cache: Cache) -> Option<u64> {
        self.cache_entries
            .get(&[("cache", cache.as_str())])
            .map(|g| g.get())
    }

    /// A network fetch by a policy source ended.
    pub fn fetch(&self, fetch: Fetch, result: FetchResult, took: Duration) {
        self.fetches[fetch.index()][result.index()].inc();
        self.fetch_seconds[fetch.index()].observe(observed(took));
    }

    /// A STARTTLS probe of a domain ended with this verdict
    /// (`TlsCapability::as_str`).
    pub fn probe(&self, verdict: &'static str, took: Duration) {
        self.probes.get_or_create(&[("verdict", verdict)]).inc();
        self.probe_seconds.observe(observed(took));
    }

    // ---- the daemon ----

    /// A listener is bound and served.
    pub fn listening(&self, name: &str, address: String) {
        let mut s = self.state();
        s.listeners.retain(|l| l.name != name);
        s.listeners.push(ListenerStatus {
            name: name.to_string(),
            address,
        });
    }

    pub fn listeners(&self) -> Vec<ListenerStatus> {
        self.state().listeners.clone()
    }

    /// A reload finished: `Ok` or the error text.
    pub fn reload(&self, result: Result<(), String>) {
        let now = SystemTime::now();
        let mut s = self.state();
        let ok = result.is_ok();
        self.reloads[usize::from(!ok)].inc();
        self.last_reload_success.set(i64::from(ok));
        s.last_reload = Some(ReloadStatus {
            at: humantime::format_rfc3339_seconds(now).to_string(),
            ok,
            error: result.err(),
        });
        if let Ok(d) = now.duration_since(SystemTime::UNIX_EPOCH) {
            self.last_reload_timestamp
                .get_or_create(&[])
                .set(d.as_secs_f64());
        }
    }

    /// (successful, failed) reloads so far.
    pub fn reloads(&self) -> (u64, u64) {
        (self.reloads[0].get(), self.reloads[1].get())
    }

    pub fn last_reload(&self) -> Option<ReloadStatus> {
        self.state().last_reload.clone()
    }

    /// Remember a warning or error from the operational log (see
    /// [`super::ErrorCapture`]). Keeps the last [`RECENT_ERRORS`].
    pub fn log_event(&self, level: &'static str, target: &str, message: String) {
        let mut message = message;
        truncate_utf8(&mut message, MAX_ERROR_TEXT);
        match level {
            "warn" => self.log_messages[0].inc(),
            "error" => self.log_messages[1].inc(),
            _ => 0,
        };
        let mut s = self.state();
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
        self.state().recent.iter().cloned().collect()
    }

    /// Open connections per front door that has any listener or traffic.
    pub fn open_connections(&self, frontend: Frontend) -> i64 {
        self.connections_open[frontend.index()].get()
    }

    pub fn lookups(&self, frontend: Frontend) -> u64 {
        self.lookups[frontend.index()].get()
    }

    /// Every family in the Prometheus text format.
    pub fn render(&self, out: &mut String) {
        // Writing into a String cannot fail.
        let _ = prometheus_text::encode(out, &self.registry);
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
        self.metrics.connections_open[self.frontend.index()].dec();
    }
}

// The level and source lists the decision series are indexed by.
const _: () = assert!(Level::ALL.len() == 7 && SOURCES.len() == 4);

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::super::registry::Metrics as HandWritten;
    use super::*;
    use crate::engine::decision::SourceKind;

    /// An exposition read back: family order, HELP and TYPE per family,
    /// and every sample by name and labels (sorted, `le` as a number).
    #[derive(Debug, Default)]
    struct Exposition {
        order: Vec<String>,
        meta: BTreeMap<String, (String, String)>,
        samples: BTreeMap<String, f64>,
    }

    fn read(text: &str) -> Exposition {
        let mut e = Exposition::default();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# HELP ") {
                let (name, help) = rest.split_once(' ').unwrap();
                e.order.push(name.to_string());
                e.meta
                    .insert(name.to_string(), (help.to_string(), String::new()));
            } else if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').unwrap();
                e.meta.get_mut(name).expect("TYPE after HELP").1 = kind.to_string();
            } else {
                assert!(!line.starts_with('#'), "stray line: {line}");
                let (series, value) = line.rsplit_once(' ').unwrap();
                let (name, labels) = series.split_once('{').unwrap_or((series, "}"));
                let mut labels: Vec<String> = labels
                    .strip_suffix('}')
                    .unwrap()
                    .split("\",")
                    .filter(|l| !l.is_empty())
                    .map(|l| {
                        let (k, v) = l.split_once("=\"").unwrap();
                        let v = v.trim_end_matches('"');
                        match (k, v.parse::<f64>()) {
                            ("le", Ok(n)) => format!("le={n:e}"),
                            _ => format!("{k}={v}"),
                        }
                    })
                    .collect();
                labels.sort();
                let value = match value {
                    "+Inf" => f64::INFINITY,
                    v => v.parse().unwrap(),
                };
                let key = format!("{name}{{{}}}", labels.join(","));
                assert!(e.samples.insert(key, value).is_none(), "twice: {line}");
            }
        }
        e
    }

    fn both() -> (Arc<HandWritten>, Arc<Metrics>) {
        (Arc::new(HandWritten::new()), Arc::new(Metrics::new()))
    }

    fn rendered(h: &HandWritten, c: &Metrics) -> (String, String) {
        let (mut a, mut b) = (String::new(), String::new());
        h.render(&mut a);
        c.render(&mut b);
        (a, b)
    }

    /// The same samples with the same values, HELP and TYPE alike, the
    /// families in the same order; `missing` are the families only the
    /// hand-written registry lists (with no samples).
    fn assert_equivalent(h: &str, c: &str, missing: &[&str]) {
        let (h, c) = (read(h), read(c));
        let left: Vec<_> = h
            .order
            .iter()
            .filter(|f| !missing.contains(&f.as_str()))
            .collect();
        assert_eq!(left, c.order.iter().collect::<Vec<_>>());
        for f in missing {
            assert!(h.samples.keys().all(|k| !k.starts_with(&format!("{f}{{"))));
        }
        for (f, meta) in &c.meta {
            assert_eq!(Some(meta), h.meta.get(f), "{f}");
        }
        assert_eq!(
            h.samples.keys().collect::<Vec<_>>(),
            c.samples.keys().collect::<Vec<_>>()
        );
        for (k, v) in &h.samples {
            let w = c.samples[k];
            // Start and reload times are taken by each registry itself.
            let tolerance = if k.contains("timestamp") || k.contains("start_time") {
                5.0
            } else {
                1e-9 * v.abs().max(1.0)
            };
            assert!((v - w).abs() <= tolerance, "{k}: {v} and {w}");
        }
    }

    #[test]
    fn a_new_registry_lists_the_same_but_not_its_empty_families() {
        let (h, c) = both();
        let (a, b) = rendered(&h, &c);
        assert_equivalent(
            &a,
            &b,
            &[
                "tls_policyd_decisions_total",
                "tls_policyd_cache_entries",
                "tls_policyd_probes_total",
                "tls_policyd_errors_total",
            ],
        );
    }

    #[test]
    fn the_same_events_give_the_same_exposition() {
        let (h, c) = both();
        let decisions = [
            Decision::bare(Level::Encrypt, SourceKind::Static, "r"),
            Decision::bare(Level::May, SourceKind::Default, "r"),
            Decision::bare(Level::Secure, SourceKind::Dane, "r"),
        ];
        for (i, us) in [0, 25, 26, 100, 999, 40_000, 3_000_000, 20_000_000]
            .into_iter()
            .enumerate()
        {
            let f = Frontend::ALL[i % 3];
            let took = Duration::from_micros(us);
            h.lookup(f, took);
            c.lookup(f, took);
            h.decision(f, &decisions[i % 3]);
            c.decision(f, &decisions[i % 3]);
            h.fetch(Fetch::ALL[i % 2], FetchResult::ALL[i % 4], took * 10);
            c.fetch(Fetch::ALL[i % 2], FetchResult::ALL[i % 4], took * 10);
        }
        let _open = (
            h.connection(Frontend::Milter),
            c.connection(Frontend::Milter),
        );
        drop((
            h.connection(Frontend::Policy),
            c.connection(Frontend::Policy),
        ));
        for m in [&*h as &dyn Record, &*c] {
            m.events();
        }
        let (a, b) = rendered(&h, &c);
        assert_equivalent(&a, &b, &[]);
        assert_eq!(
            h.lookups(Frontend::Socketmap),
            c.lookups(Frontend::Socketmap)
        );
        assert_eq!(h.cache_size(Cache::Dane), c.cache_size(Cache::Dane));
        assert_eq!(h.cache_size(Cache::MtaSts), c.cache_size(Cache::MtaSts));
        assert_eq!(h.reloads(), c.reloads());
        assert_eq!(
            h.open_connections(Frontend::Milter),
            c.open_connections(Frontend::Milter)
        );
        // What differs in the text itself: bounds below 0.0001 s in
        // exponent form.
        assert!(a.contains("le=\"0.000025\"") && b.contains("le=\"2.5e-05\""));
        assert!(a.contains("le=\"0.00005\"") && b.contains("le=\"5e-05\""));
    }

    /// The rare events, recorded the same way into either registry.
    trait Record {
        fn events(&self);
    }

    macro_rules! record {
        ($t:ty) => {
            impl Record for $t {
                fn events(&self) {
                    self.cache_lookup(Cache::Prober, true);
                    self.cache_lookup(Cache::Dane, false);
                    self.cache_entries(Cache::Dane, 3);
                    self.probe("no_starttls", Duration::from_millis(30));
                    self.probe("starttls_verified", Duration::from_millis(7));
                    self.error("socketmap", "framing");
                    self.error("socketmap", "framing");
                    self.error("policy", "malformed_request");
                    self.reload(Ok(()));
                    self.reload(Err("bad".into()));
                    self.log_event("warn", "t", "w".into());
                    self.log_event("error", "t", "e".into());
                }
            }
        };
    }
    record!(HandWritten);
    record!(Metrics);
}
