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
//! reloads) go through a mutex. The registry and its exposition are the
//! project's own rather than the `prometheus-client` crate's: that one
//! cost about 3 ns more per recorded lookup and lists neither empty
//! families nor the smallest bucket bounds the same way (BENCHMARKS.md,
//! "Metrics on the lookup path").
//!
//! ```ignore
//! // A front door, per request:
//! let _conn = metrics.connection(Frontend::Milter);        // on accept; drop on close
//! let t = std::time::Instant::now();
//! let decision = engine.decide(&dest).await;
//! metrics.lookup(Frontend::Milter, t.elapsed());
//! metrics.decision(Frontend::Milter, &decision);
//! metrics.error("milter", "malformed_packet");
//! // A cache (crate::cache::TtlCache) reports through its observer:
//! let observer = metrics.cache_observer(Cache::MtaSts);
//! ```
//!
//! The files: `labels` holds the label values (front doors, caches,
//! fetches), `observer` the registry as a cache's observer, `registry` the counters and the recording API, `render` the
//! exposition of the registry, `histogram` the lock-free latency
//! histogram, `text` the [`Writer`] every family is written with, `capture`
//! the `tracing` layer that keeps the recent warnings and errors.

mod capture;
mod histogram;
mod labels;
mod observer;
mod outcomes;
mod registry;
mod render;
mod shared;
mod text;
mod tlsrpt;

use serde::{Deserialize, Serialize};

pub use capture::ErrorCapture;
pub use histogram::Histogram;
pub use labels::{Cache, Fetch, FetchResult, Frontend};
pub use observer::MetricsObserver;
pub use outcomes::LineKind;
pub use registry::{ConnectionGuard, Metrics};
pub use shared::{ClaimResult, NoticeDir, SharedOp, SharedResult};
pub use text::Writer;
pub use tlsrpt::{ReportResult, SessionKind};

/// Prefix of every metric name.
pub const PREFIX: &str = "tls_policyd_";
/// Warnings and errors kept for `tls-policyd status`.
pub const RECENT_ERRORS: usize = 20;
/// Longest message text kept per warning or error, in bytes.
pub const MAX_ERROR_TEXT: usize = 512;

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

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;
    use crate::engine::decision::{Decision, Level, SourceKind};

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
        let t = rendered(&m);
        assert_eq!(
            value(&t, "tls_policyd_log_messages_total{level=\"warn\"}").as_deref(),
            Some(&*(RECENT_ERRORS + 5).to_string())
        );
    }
}
