//! The registry in the Prometheus text format.

use std::sync::atomic::Ordering;
use std::time::SystemTime;

use super::Writer;
use super::labels::{Cache, Fetch, FetchResult, Frontend, SOURCES, level_index, source_index};
use super::registry::Metrics;
use crate::engine::decision::Level;

impl Metrics {
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
            "discovery_waits_total",
            "counter",
            "Lookups that waited for DANE or MTA-STS, by whether one source or several side by side were waited for.",
        );
        for (i, mode) in ["one", "side_by_side"].into_iter().enumerate() {
            w.sample(
                "discovery_waits_total",
                &[("sources", mode)],
                self.discovery_waits[i].load(Ordering::Relaxed),
            );
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
        w.header(
            "cache_evictions_total",
            "counter",
            "Entries dropped to keep a cache within its size cap, by cache.",
        );
        for c in Cache::ALL {
            w.sample(
                "cache_evictions_total",
                &[("cache", c.as_str())],
                self.cache_evictions[c.index()].load(Ordering::Relaxed),
            );
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
        self.outcomes.render(&mut w);
        self.tlsrpt.render(&mut w);
        self.shared.render(&mut w);
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
