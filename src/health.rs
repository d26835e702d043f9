//! The metrics listener's two pages and `tls-policyd status`.
//!
//! `GET /metrics`: every counter in the Prometheus text format.
//! `GET /health`: a JSON [`Health`] report: listeners, policy, caches,
//! reloads, the decision log, recent warnings and errors.
//! `tls-policyd status` fetches `/health` and prints it for a person.

use std::fmt::Write as _;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::engine::policy_file::PolicyFile;
use crate::http::{self, Response};
use crate::listen::{ListenAddr, Listener};
use crate::metrics::{Cache, Fetch, Frontend, Metrics, RecentError, ReloadStatus, Writer};

/// Content type of the Prometheus text format.
pub const METRICS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// What `/health` reports.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Health {
    /// `ok`, or `degraded` when the last reload failed (the previous
    /// configuration keeps serving) or a policy source cannot look
    /// anything up: [`Health::problems`] says why.
    pub status: String,
    /// Why the status is `degraded`, besides a failed reload (which
    /// [`Health::reloads`] shows), one sentence each.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub problems: Vec<String>,
    pub version: String,
    pub pid: u32,
    /// RFC 3339.
    pub started: String,
    pub uptime_seconds: u64,
    pub listeners: Vec<ListenerHealth>,
    pub policy: PolicyHealth,
    pub caches: Vec<CacheHealth>,
    pub reloads: ReloadsHealth,
    pub decision_log: DecisionLogHealth,
    /// The outcome follower, when `[outcomes]` is on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcomes: Option<OutcomesHealth>,
    /// TLS reports, when `[tlsrpt]` is on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tlsrpt: Option<TlsRptHealth>,
    /// The store a fleet shares, when `[shared]` is on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shared: Option<SharedHealth>,
    /// Oldest first.
    pub recent_errors: Vec<RecentError>,
}

/// TLS reports since the start: delivery attempts by what they counted
/// as, and reports by what became of them per destination.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TlsRptHealth {
    pub sessions: Vec<(String, u64)>,
    pub reports: Vec<(String, u64)>,
}

/// The shared store (`[shared]`): where it is and whether it answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SharedHealth {
    pub url: String,
    /// `connecting`, `up` or `down` (this host answers on its own).
    pub state: String,
    /// Why it is down.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
    /// With sentinels: the master (`host:port`) in use.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub master: Option<String>,
    /// The other hosts' "learned" notices: `subscribed` or `not
    /// subscribed` (a host waiting for another's discovery then looks at
    /// the claim every poll instead of being told). Not a problem by
    /// itself; absent from daemons that do not say.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notices: Option<String>,
}

impl SharedHealth {
    /// Why the store makes the daemon `degraded`: it is down.
    fn problem(&self) -> Option<String> {
        (self.state == "down").then(|| {
            format!(
                "the shared store {} is down ({}): this host answers from its own memory and cache file",
                self.url,
                self.problem.as_deref().unwrap_or("no detail")
            )
        })
    }
}

/// The outcome follower: what it reads and what it found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutcomesHealth {
    /// The log followed (`file:/var/log/mail.log`, `journal`).
    pub log: String,
    /// `starting`, `following` or `failing`.
    pub state: String,
    /// Why it is failing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
    /// Deliveries judged since the start, by verdict.
    pub deliveries: Vec<(String, u64)>,
    /// Alarms since the start, by kind.
    pub alarms: Vec<(String, u64)>,
    /// Alarms within the last hour, by kind: any makes the daemon
    /// `degraded`.
    pub recent_alarms: Vec<(String, u64)>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_alarm: Option<AlarmHealth>,
}

/// The last delivery that needed an operator.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AlarmHealth {
    /// RFC 3339.
    pub at: String,
    /// `violation`, `policy-unreachable`, `undecided-forced`.
    pub alarm: String,
    /// Which delivery, and what to check.
    pub text: String,
}

impl OutcomesHealth {
    /// Why the follower makes the daemon `degraded`, if it does.
    fn problems(&self) -> Vec<String> {
        let mut out: Vec<String> = self.problem.iter().cloned().collect();
        let recent: Vec<String> = self
            .recent_alarms
            .iter()
            .filter(|(_, n)| *n > 0)
            .map(|(a, n)| format!("{a}: {n}"))
            .collect();
        if !recent.is_empty() {
            let last = self
                .last_alarm
                .as_ref()
                .map(|a| format!("; last at {}: {}", a.at, a.text))
                .unwrap_or_default();
            out.push(format!(
                "deliveries that need an operator in the last hour ({}){last}",
                recent.join(", ")
            ));
        }
        out
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListenerHealth {
    /// `socketmap`, `policy`, `milter` or `metrics`.
    pub name: String,
    pub address: String,
    /// Front doors only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub open_connections: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lookups: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyHealth {
    pub file: String,
    pub rules: usize,
    /// When the running configuration and policy file were loaded.
    pub loaded: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CacheHealth {
    pub name: String,
    pub entries: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReloadsHealth {
    pub ok: u64,
    pub failed: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last: Option<ReloadStatus>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DecisionLogHealth {
    /// The file, or `-` for standard output.
    pub target: String,
    /// Records dropped: the writer could not keep up or could not write them.
    pub dropped: u64,
}

fn frontend_named(name: &str) -> Option<Frontend> {
    Frontend::ALL.into_iter().find(|f| f.as_str() == name)
}

/// What the health report and `/metrics` read from the running daemon
/// (the daemon implements it; health knows nothing else of it).
pub trait Observed: Send + Sync {
    fn metrics(&self) -> &Metrics;
    /// The policy file in force.
    fn policy(&self) -> Arc<PolicyFile>;
    /// When the configuration in force was loaded.
    fn last_reload(&self) -> SystemTime;
    /// Where decision records go (a path, or `-`).
    fn decision_log_target(&self) -> String;
    /// Decision records dropped so far.
    fn decision_log_dropped(&self) -> u64;
    /// The outcome follower's report, when it runs.
    fn outcomes(&self) -> Option<OutcomesHealth> {
        None
    }
    /// Whether TLS reports are counted and sent.
    fn tlsrpt_on(&self) -> bool {
        false
    }
    /// The shared store's state, when `[shared]` is on.
    fn shared(&self) -> Option<SharedHealth> {
        None
    }
}

/// Fetches failed in a row before a source counts as unable to look
/// anything up.
pub const FAILING_FETCHES: u64 = 5;
/// ... with no fetch that did not fail for this long.
pub const FAILING_FOR: Duration = Duration::from_secs(300);

/// Why `fetch`'s source cannot work now, if it cannot: the last
/// [`FAILING_FETCHES`] or more fetches failed and none succeeded within
/// [`FAILING_FOR`] (the resolver unreachable, DNSSEC validation failing).
fn failing(m: &Metrics, fetch: Fetch) -> Option<String> {
    let (in_a_row, last_ok) = m.fetch_failing(fetch);
    let recent = last_ok.is_some_and(|t| t.elapsed().is_ok_and(|e| e < FAILING_FOR));
    if in_a_row < FAILING_FETCHES || recent {
        return None;
    }
    let since = match last_ok {
        Some(t) => format!(
            "none succeeded since {}",
            humantime::format_rfc3339_seconds(t)
        ),
        None => "none has succeeded since the start".to_string(),
    };
    let what = match fetch {
        Fetch::Dane => "DANE (TLSA) lookups",
        Fetch::MtaSts => "MTA-STS policy fetches",
    };
    Some(format!(
        "the last {in_a_row} {what} failed and {since}: is the resolver reachable, and does DNSSEC validation work?"
    ))
}

impl Health {
    /// The report for a running daemon.
    pub fn of(ctx: &dyn Observed) -> Health {
        let m = ctx.metrics();
        let policy = ctx.policy();
        let (ok, failed) = m.reloads();
        let last = m.last_reload();
        let reload_failed = last.as_ref().is_some_and(|r| !r.ok);
        let outcomes = ctx.outcomes();
        let shared = ctx.shared();
        let problems: Vec<String> = Fetch::ALL
            .into_iter()
            .filter_map(|f| failing(m, f))
            .chain(outcomes.iter().flat_map(OutcomesHealth::problems))
            .chain(shared.iter().filter_map(SharedHealth::problem))
            .collect();
        let degraded = reload_failed || !problems.is_empty();
        let listeners = m
            .listeners()
            .into_iter()
            .map(|l| {
                let f = frontend_named(&l.name);
                ListenerHealth {
                    open_connections: f.map(|f| m.open_connections(f)),
                    lookups: f.map(|f| m.lookups(f)),
                    name: l.name,
                    address: l.address,
                }
            })
            .collect();
        let caches = Cache::ALL
            .into_iter()
            .filter_map(|c| {
                Some(CacheHealth {
                    name: c.as_str().to_string(),
                    entries: m.cache_size(c)?,
                })
            })
            .collect();
        Health {
            status: if degraded { "degraded" } else { "ok" }.to_string(),
            problems,
            version: env!("CARGO_PKG_VERSION").to_string(),
            pid: std::process::id(),
            started: humantime::format_rfc3339_seconds(m.started()).to_string(),
            uptime_seconds: m.started().elapsed().map_or(0, |d| d.as_secs()),
            listeners,
            policy: PolicyHealth {
                file: policy.path().display().to_string(),
                rules: policy.rules().len(),
                loaded: humantime::format_rfc3339_seconds(ctx.last_reload()).to_string(),
            },
            caches,
            reloads: ReloadsHealth { ok, failed, last },
            decision_log: DecisionLogHealth {
                target: ctx.decision_log_target(),
                dropped: ctx.decision_log_dropped(),
            },
            outcomes,
            tlsrpt: ctx.tlsrpt_on().then(|| {
                let (s, r) = m.tlsrpt_counts();
                let own =
                    |v: Vec<(&str, u64)>| v.into_iter().map(|(k, n)| (k.to_string(), n)).collect();
                TlsRptHealth {
                    sessions: own(s),
                    reports: own(r),
                }
            }),
            shared,
            recent_errors: m.recent_errors(),
        }
    }

    /// For a person (`tls-policyd status`).
    pub fn render_text(&self) -> String {
        let mut out = format!(
            "tls-policyd {} (pid {}): {}\n",
            self.version, self.pid, self.status
        );
        for p in &self.problems {
            let _ = writeln!(out, "problem       {p}");
        }
        let _ = writeln!(
            out,
            "started       {}, up {}",
            self.started,
            humantime::format_duration(Duration::from_secs(self.uptime_seconds))
        );
        if self.listeners.is_empty() {
            out += "listeners     none\n";
        }
        for (i, l) in self.listeners.iter().enumerate() {
            let head = if i == 0 { "listeners" } else { "" };
            let _ = write!(out, "{head:<14}{:<10} {}", l.name, l.address);
            if let (Some(open), Some(lookups)) = (l.open_connections, l.lookups) {
                let _ = write!(
                    out,
                    " ({open} open connection{}, {lookups} lookup{})",
                    plural(open.unsigned_abs()),
                    plural(lookups)
                );
            }
            out.push('\n');
        }
        let _ = writeln!(
            out,
            "policy        {}: {} rule{}, loaded {}",
            self.policy.file,
            self.policy.rules,
            plural(self.policy.rules as u64),
            self.policy.loaded
        );
        if self.caches.is_empty() {
            out += "caches        none\n";
        }
        for (i, c) in self.caches.iter().enumerate() {
            let head = if i == 0 { "caches" } else { "" };
            let _ = writeln!(
                out,
                "{head:<14}{}: {} entr{}",
                c.name,
                c.entries,
                if c.entries == 1 { "y" } else { "ies" }
            );
        }
        let _ = write!(
            out,
            "reloads       {} ok, {} failed",
            self.reloads.ok, self.reloads.failed
        );
        match &self.reloads.last {
            None => out.push('\n'),
            Some(r) if r.ok => {
                let _ = writeln!(out, "; last at {}: ok", r.at);
            }
            Some(r) => {
                let _ = writeln!(
                    out,
                    "; last at {}: FAILED, the previous configuration keeps serving: {}",
                    r.at,
                    r.error.as_deref().unwrap_or("(no detail)")
                );
            }
        }
        let target = if self.decision_log.target == "-" {
            "standard output"
        } else {
            &self.decision_log.target
        };
        let _ = writeln!(
            out,
            "decision log  {target}, {} record{} dropped",
            self.decision_log.dropped,
            plural(self.decision_log.dropped)
        );
        if let Some(o) = &self.outcomes {
            let counts = |v: &[(String, u64)]| {
                v.iter()
                    .map(|(k, n)| format!("{k} {n}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            let _ = writeln!(out, "outcomes      {}: {}", o.log, o.state);
            let _ = writeln!(out, "deliveries    {}", counts(&o.deliveries));
            let _ = writeln!(out, "alarms        {}", counts(&o.alarms));
            if let Some(a) = &o.last_alarm {
                let _ = writeln!(out, "last alarm    {} {}: {}", a.at, a.alarm, a.text);
            }
        }
        if let Some(t) = &self.tlsrpt {
            let counts = |v: &[(String, u64)]| {
                v.iter()
                    .map(|(k, n)| format!("{} {n}", k.replace('_', " ")))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            let _ = writeln!(out, "tls reports   sessions: {}", counts(&t.sessions));
            let _ = writeln!(out, "              reports: {}", counts(&t.reports));
        }
        if let Some(s) = &self.shared {
            let _ = write!(out, "shared store  {}", s.url);
            if let Some(m) = &s.master {
                let _ = write!(out, " (master {m})");
            }
            let _ = write!(out, ": {}", s.state);
            if let Some(p) = &s.problem {
                let _ = write!(out, " ({p})");
            }
            match &s.notices {
                Some(n) => {
                    let _ = writeln!(out, "; notices {n}");
                }
                None => out.push('\n'),
            }
        }
        if self.recent_errors.is_empty() {
            out += "recent errors none\n";
        } else {
            out += "recent warnings and errors, oldest first:\n";
            for e in &self.recent_errors {
                let _ = writeln!(
                    out,
                    "  {} {:<5} {}: {}",
                    e.at,
                    e.level.to_uppercase(),
                    e.target,
                    e.message
                );
            }
        }
        out
    }
}

fn plural(n: u64) -> &'static str {
    if n == 1 { "" } else { "s" }
}

/// `/metrics`: the registry plus what only the context knows.
pub fn render_metrics(ctx: &dyn Observed) -> String {
    let mut out = String::with_capacity(16 * 1024);
    ctx.metrics().render(&mut out);
    let mut w = Writer { out: &mut out };
    w.header("build_info", "gauge", "Always 1; the version as a label.");
    w.sample("build_info", &[("version", env!("CARGO_PKG_VERSION"))], 1);
    w.header("policy_rules", "gauge", "Rules in the running policy file.");
    w.sample("policy_rules", &[], ctx.policy().rules().len() as u64);
    w.header(
        "decision_log_dropped_total",
        "counter",
        "Decision records dropped: the writer could not keep up or could not write them (disk full).",
    );
    w.sample(
        "decision_log_dropped_total",
        &[],
        ctx.decision_log_dropped(),
    );
    w.header(
        "last_load_timestamp_seconds",
        "gauge",
        "Unix time the running configuration and policy file were loaded.",
    );
    let loaded = ctx
        .last_reload()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    w.sample_f("last_load_timestamp_seconds", &[], loaded);
    out
}

/// The answer for one path.
pub fn respond(ctx: &dyn Observed, path: &str) -> Response {
    match path {
        "/metrics" => Response::new(200, METRICS_CONTENT_TYPE, render_metrics(ctx)),
        "/health" => match serde_json::to_vec_pretty(&Health::of(ctx)) {
            Ok(mut body) => {
                body.push(b'\n');
                Response::new(200, "application/json", body)
            }
            Err(e) => Response::new(
                503,
                "text/plain; charset=utf-8",
                format!("cannot encode health report: {e}\n"),
            ),
        },
        "/" => Response::new(
            200,
            "text/plain; charset=utf-8",
            "tls-policyd: /metrics (Prometheus), /health (JSON)\n",
        ),
        _ => Response::new(404, "text/plain; charset=utf-8", "not found\n"),
    }
}

/// Serve `/metrics` and `/health` until `shutdown`.
pub async fn serve(ctx: Arc<dyn Observed>, listener: Listener, shutdown: CancellationToken) {
    http::serve(
        listener,
        move |path: String| {
            let ctx = ctx.clone();
            async move { respond(&*ctx, &path) }
        },
        shutdown,
    )
    .await;
}

/// Why `status` has no report.
#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    #[error("{0}")]
    Config(String),
    #[error(
        "{0} has no [metrics] section: add one with `listen = \"inet:127.0.0.1:9466\"` (then restart), or pass --address"
    )]
    NoListener(String),
    #[error("no health report: {0} (is tls-policyd running?)")]
    Http(http::ClientError),
    #[error("the health report is not readable: {0}")]
    Json(serde_json::Error),
}

/// The metrics listener address named in a config file.
pub fn address_from_config(path: &Path) -> Result<ListenAddr, StatusError> {
    let config = Config::load(path).map_err(|e| StatusError::Config(e.to_string()))?;
    config
        .metrics
        .map(|m| m.listen)
        .ok_or_else(|| StatusError::NoListener(path.display().to_string()))
}

/// Fetch `/health` from a running daemon.
pub fn fetch(addr: &ListenAddr) -> Result<Health, StatusError> {
    let body = http::get(addr, "/health").map_err(StatusError::Http)?;
    serde_json::from_slice(&body).map_err(StatusError::Json)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::FetchResult;

    fn sample() -> Health {
        Health {
            status: "degraded".into(),
            problems: Vec::new(),
            version: "1.2.3".into(),
            pid: 42,
            started: "2026-11-24T10:00:00Z".into(),
            uptime_seconds: 3723,
            listeners: vec![
                ListenerHealth {
                    name: "socketmap".into(),
                    address: "unix:/run/tls-policyd/socketmap.sock".into(),
                    open_connections: Some(1),
                    lookups: Some(12),
                },
                ListenerHealth {
                    name: "metrics".into(),
                    address: "inet:127.0.0.1:9466".into(),
                    open_connections: None,
                    lookups: None,
                },
            ],
            policy: PolicyHealth {
                file: "/etc/tls-policyd/policy.toml".into(),
                rules: 1,
                loaded: "2026-11-24T10:00:00Z".into(),
            },
            caches: vec![CacheHealth {
                name: "prober".into(),
                entries: 1,
            }],
            reloads: ReloadsHealth {
                ok: 2,
                failed: 1,
                last: Some(ReloadStatus {
                    at: "2026-11-24T11:00:00Z".into(),
                    ok: false,
                    error: Some("policy.toml: rule 3: unknown TLS level".into()),
                }),
            },
            decision_log: DecisionLogHealth {
                target: "-".into(),
                dropped: 0,
            },
            outcomes: None,
            tlsrpt: None,
            shared: None,
            recent_errors: vec![RecentError {
                at: "2026-11-24T11:00:00Z".into(),
                level: "error".into(),
                target: "tls_policyd".into(),
                message: "reload failed".into(),
            }],
        }
    }

    #[test]
    fn outcome_alarms_are_problems_and_shown() {
        let counts = |v: [u64; 3]| {
            ["violation", "policy-unreachable", "undecided-forced"]
                .iter()
                .zip(v)
                .map(|(k, n)| (k.to_string(), n))
                .collect::<Vec<_>>()
        };
        let mut o = OutcomesHealth {
            log: "file:/var/log/mail.log".into(),
            state: "following".into(),
            problem: None,
            deliveries: vec![("verified".into(), 7)],
            alarms: counts([2, 1, 0]),
            recent_alarms: counts([0, 0, 0]),
            last_alarm: Some(AlarmHealth {
                at: "2026-11-24T11:00:00Z".into(),
                alarm: "violation".into(),
                text: "violation queue 4ABC".into(),
            }),
        };
        assert!(o.problems().is_empty(), "old alarms do not degrade");
        o.recent_alarms = counts([1, 0, 2]);
        assert_eq!(
            o.problems(),
            [
                "deliveries that need an operator in the last hour (violation: 1, \
              undecided-forced: 2); last at 2026-11-24T11:00:00Z: violation queue 4ABC"
            ]
        );
        let mut h = sample();
        h.outcomes = Some(o);
        let text = h.render_text();
        for want in [
            "outcomes      file:/var/log/mail.log: following\n",
            "deliveries    verified 7\n",
            "alarms        violation 2, policy-unreachable 1, undecided-forced 0\n",
            "last alarm    2026-11-24T11:00:00Z violation: violation queue 4ABC\n",
        ] {
            assert!(text.contains(want), "{want}\n{text}");
        }
    }

    #[test]
    fn tls_reports_are_shown_when_on() {
        let mut h = sample();
        assert!(!h.render_text().contains("tls reports"));
        h.tlsrpt = Some(TlsRptHealth {
            sessions: vec![("successful".into(), 5), ("not_counted".into(), 2)],
            reports: vec![("sent".into(), 1), ("failed".into(), 0)],
        });
        let text = h.render_text();
        assert!(
            text.contains("tls reports   sessions: successful 5, not counted 2\n"),
            "{text}"
        );
        assert!(
            text.contains("              reports: sent 1, failed 0\n"),
            "{text}"
        );
        let back: Health = serde_json::from_str(&serde_json::to_string(&h).unwrap()).unwrap();
        assert_eq!(back, h);
    }

    #[test]
    fn the_shared_store_is_shown_and_down_is_a_problem() {
        let mut s = SharedHealth {
            url: "redis://10.0.0.5:6379/2".into(),
            state: "up".into(),
            problem: None,
            master: None,
            notices: None,
        };
        assert_eq!(s.problem(), None);
        let mut h = sample();
        h.shared = Some(s.clone());
        assert!(
            h.render_text()
                .contains("shared store  redis://10.0.0.5:6379/2: up\n"),
            "{}",
            h.render_text()
        );
        s.state = "down".into();
        s.problem = Some("connection refused".into());
        assert_eq!(
            s.problem().as_deref(),
            Some(
                "the shared store redis://10.0.0.5:6379/2 is down (connection refused): \
                 this host answers from its own memory and cache file"
            )
        );
        h.shared = Some(s);
        let text = h.render_text();
        assert!(
            text.contains("shared store  redis://10.0.0.5:6379/2: down (connection refused)\n"),
            "{text}"
        );
        let json = serde_json::to_string(&h).unwrap();
        assert_eq!(serde_json::from_str::<Health>(&json).unwrap(), h);
        let mut sentinel = SharedHealth {
            url: "redis://mymaster/0".into(),
            state: "up".into(),
            problem: None,
            master: Some("10.0.0.6:6379".into()),
            notices: None,
        };
        h.shared = Some(sentinel.clone());
        let text = h.render_text();
        assert!(
            text.contains("shared store  redis://mymaster/0 (master 10.0.0.6:6379): up\n"),
            "{text}"
        );
        let json = serde_json::to_string(&h).unwrap();
        assert!(json.contains("\"master\":\"10.0.0.6:6379\""), "{json}");
        assert_eq!(serde_json::from_str::<Health>(&json).unwrap(), h);
        sentinel.master = None;
        h.shared = Some(sentinel);
        assert!(!serde_json::to_string(&h).unwrap().contains("\"master\""));
        h.shared = None;
        assert!(!serde_json::to_string(&h).unwrap().contains("shared"));
    }

    #[test]
    fn the_notices_subscription_is_shown_and_not_a_problem() {
        let mut s = SharedHealth {
            url: "redis://10.0.0.5:6379/2".into(),
            state: "up".into(),
            problem: None,
            master: None,
            notices: Some("not subscribed".into()),
        };
        assert_eq!(s.problem(), None, "polling still works without notices");
        let mut h = sample();
        h.shared = Some(s.clone());
        let text = h.render_text();
        assert!(
            text.contains("shared store  redis://10.0.0.5:6379/2: up; notices not subscribed\n"),
            "{text}"
        );
        s.state = "down".into();
        s.problem = Some("connection refused".into());
        h.shared = Some(s);
        let text = h.render_text();
        assert!(
            text.contains(
                "shared store  redis://10.0.0.5:6379/2: down (connection refused); notices not subscribed\n"
            ),
            "{text}"
        );
        let json = serde_json::to_string(&h).unwrap();
        assert!(json.contains("\"notices\":\"not subscribed\""), "{json}");
        assert_eq!(serde_json::from_str::<Health>(&json).unwrap(), h);
        // What a daemon that does not say it sends still reads.
        let old = json.replace(",\"notices\":\"not subscribed\"", "");
        let back: Health = serde_json::from_str(&old).unwrap();
        assert_eq!(back.shared.unwrap().notices, None);
    }

    #[test]
    fn sources_failing_in_a_row_are_a_problem() {
        let m = Metrics::new();
        let err = |m: &Metrics| m.fetch(Fetch::Dane, FetchResult::Error, Duration::ZERO);
        for _ in 0..FAILING_FETCHES - 1 {
            err(&m);
        }
        assert_eq!(failing(&m, Fetch::Dane), None, "one short of the limit");
        err(&m);
        let p = failing(&m, Fetch::Dane).unwrap();
        assert!(
            p.starts_with(
                "the last 5 DANE (TLSA) lookups failed and none has succeeded since the start"
            ),
            "{p}"
        );
        assert_eq!(failing(&m, Fetch::MtaSts), None);
        // A success resets the count, and a recent one keeps the source
        // healthy even after more failures.
        m.fetch(Fetch::Dane, FetchResult::None, Duration::ZERO);
        assert_eq!(failing(&m, Fetch::Dane), None);
        for _ in 0..FAILING_FETCHES * 2 {
            err(&m);
        }
        assert_eq!(failing(&m, Fetch::Dane), None, "succeeded moments ago");
        let mut h = sample();
        h.problems = vec![p.clone()];
        assert!(h.render_text().contains(&format!("\nproblem       {p}\n")));
    }

    #[test]
    fn text_report() {
        let t = sample().render_text();
        assert_eq!(
            t,
            "tls-policyd 1.2.3 (pid 42): degraded\n\
             started       2026-11-24T10:00:00Z, up 1h 2m 3s\n\
             listeners     socketmap  unix:/run/tls-policyd/socketmap.sock (1 open connection, 12 lookups)\n\
             \x20             metrics    inet:127.0.0.1:9466\n\
             policy        /etc/tls-policyd/policy.toml: 1 rule, loaded 2026-11-24T10:00:00Z\n\
             caches        prober: 1 entry\n\
             reloads       2 ok, 1 failed; last at 2026-11-24T11:00:00Z: FAILED, the previous configuration keeps serving: policy.toml: rule 3: unknown TLS level\n\
             decision log  standard output, 0 records dropped\n\
             recent warnings and errors, oldest first:\n\
             \x20 2026-11-24T11:00:00Z ERROR tls_policyd: reload failed\n"
        );
    }

    #[test]
    fn json_round_trip() {
        let h = sample();
        let text = serde_json::to_string(&h).unwrap();
        assert_eq!(serde_json::from_str::<Health>(&text).unwrap(), h);
        // A field a newer daemon adds does not break an older `status`.
        let mut v: serde_json::Value = serde_json::from_str(&text).unwrap();
        v["something_new"] = serde_json::json!(1);
        assert_eq!(serde_json::from_value::<Health>(v).unwrap(), h);
    }
}
