//! The sample Grafana dashboard (`packaging/grafana-dashboard.json`)
//! against the metrics a real daemon serves: a daemon with `[outcomes]` on
//! that has judged a delivery of every verdict (socketmap lookups over a
//! unix socket by this test's process, Postfix's lines for it appended to
//! the followed mail log), its `/metrics` scraped. Every family the
//! dashboard queries is served and every family served is on a panel;
//! every label a selector, a `by` clause or a legend names is one of the
//! family's labels, and every value a selector matches (each alternative
//! of a `=~`) is one the daemon wrote; series colours name values that
//! occur; each delivery alarm kind has a stat panel that turns red from
//! the first alarm in the range; no panel covers another. The README's
//! table of metrics names every family served.

mod common;

use std::collections::{HashMap, HashSet};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;

use common::maillog::{
    append, bounced, log_lines, no_policy, not_offered, sent_over_tls, sent_plaintext,
};
use common::{Client, Daemon, Options, WAIT, config_listening, wait_for_json_lines};
use serde_json::Value;

const POLICY: &str = "\
[[rule]]
domains = [\"forced.test\", \"unasked.test\"]
tls = \"encrypt\"

[[rule]]
domains = [\"verified.test\"]
tls = \"secure\"

[[rule]]
domains = [\"may.test\"]
tls = \"may\"
";

/// Metrics on a free port, the follower on `mail.log` with its state in
/// `state_file`.
fn config(state_file: &Path) -> String {
    config_listening("unix:socketmap.sock", "policy", "")
        + &format!(
            "\n[metrics]\n\
             listen = \"inet:127.0.0.1:0\"\n\
             \n[outcomes]\n\
             log = \"file:mail.log\"\n\
             state_file = \"{}\"\n\
             start = \"beginning\"\n\
             poll_interval = \"20ms\"\n",
            state_file.display()
        )
}

/// `GET /metrics` from the listener at `addr` (`...:PORT`): the body.
fn scrape(addr: &str) -> String {
    let port: u16 = addr.rsplit_once(':').unwrap().1.parse().unwrap();
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    body.to_string()
}

/// The deliveries judged, each with (verdict, tls_trust, decision):
/// every verdict, every decision class, TLS of several trusts and none.
fn judged_deliveries() -> Vec<(Vec<String>, [&'static str; 3])> {
    vec![
        (
            sent_over_tls("Verified", "1A", "a@verified.test"),
            ["verified", "verified", "forced"],
        ),
        (
            sent_over_tls("Untrusted", "2B", "a@may.test"),
            ["encrypted", "untrusted", "opportunistic"],
        ),
        (
            sent_plaintext("3C", "a@forced.test"),
            ["violation", "none", "forced"],
        ),
        (
            sent_plaintext("4D", "b@may.test"),
            ["plaintext-fallback", "none", "opportunistic"],
        ),
        (
            not_offered("5E", "b@forced.test"),
            ["held", "none", "forced"],
        ),
        (
            bounced("6F", "c@may.test"),
            ["not-delivered", "none", "opportunistic"],
        ),
        (
            no_policy("7G", "c@forced.test"),
            ["policy-unreachable", "none", "forced"],
        ),
        // No lookup, a rule that forces TLS: undecided, and an alarm.
        (
            sent_over_tls("Anonymous", "8H", "a@unasked.test"),
            ["undecided", "anonymous", "forced"],
        ),
        // No lookup, no rule.
        (
            sent_plaintext("9J", "a@nobody.test"),
            ["undecided", "none", "none"],
        ),
    ]
}

/// A daemon with outcomes on that judged [`judged_deliveries`], and its
/// `/metrics` once it counted them. Its saved state is not one (an error
/// of the follower's, counted), so it starts afresh.
fn metrics_after_deliveries(tmp: &Path) -> (Daemon, String) {
    let state_file = tmp.join("outcomes.state");
    std::fs::write(&state_file, "not a saved position").unwrap();
    let d = Daemon::start_frontend(
        &config(&state_file),
        POLICY,
        Options::default(),
        "socketmap",
    );
    let m = d.listening("metrics");
    let mut c = Client::connect_unix(&d.dir().join("socketmap.sock"));
    for domain in ["forced.test", "verified.test", "may.test"] {
        assert!(c.query("tls_policy", domain).starts_with("OK "), "{domain}");
    }
    wait_for_json_lines(&d.decisions_path(), 3);
    let deliveries = judged_deliveries();
    let messages: Vec<String> = deliveries.iter().flat_map(|(m, _)| m.clone()).collect();
    append(
        &d.dir().join("mail.log"),
        &log_lines(std::process::id(), &messages),
    );
    let records = wait_for_json_lines(&d.decisions_path(), 3 + deliveries.len());
    let got: Vec<&str> = records
        .iter()
        .filter(|r| r["frontend"] == "delivery")
        .map(|r| r["verdict"].as_str().unwrap())
        .collect();
    let want: Vec<&str> = deliveries.iter().map(|(_, [v, _, _])| *v).collect();
    assert_eq!(got, want);
    // Deliveries and alarms are counted before their record is written;
    // the lines read, once the follower is done with what it read.
    let lines = "tls_policyd_outcome_lines_total{kind=\"delivery\"} 9";
    let deadline = std::time::Instant::now() + WAIT;
    let text = loop {
        let text = scrape(&m);
        if text.lines().any(|l| l == lines) {
            break text;
        }
        assert!(std::time::Instant::now() < deadline, "{lines}\n{text}");
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    let mut want: HashMap<String, u64> = HashMap::new();
    for (_, [v, t, dec]) in &deliveries {
        *want
            .entry(format!(
                "tls_policyd_deliveries_total{{verdict=\"{v}\",tls_trust=\"{t}\",decision=\"{dec}\"}}"
            ))
            .or_default() += 1;
    }
    for (series, n) in &want {
        assert!(
            text.lines().any(|l| l == format!("{series} {n}")),
            "{series} {n}\n{text}"
        );
    }
    for line in [
        "tls_policyd_delivery_alarms_total{alarm=\"violation\"} 1",
        "tls_policyd_delivery_alarms_total{alarm=\"policy-unreachable\"} 1",
        "tls_policyd_delivery_alarms_total{alarm=\"undecided-forced\"} 1",
        "tls_policyd_errors_total{component=\"outcomes\",kind=\"state_read\"} 1",
    ] {
        assert!(text.lines().any(|l| l == line), "{line}\n{text}");
    }
    (d, text)
}

/// What `/metrics` serves: each family's type, and each label's values.
#[derive(Default)]
struct Served {
    types: HashMap<String, String>,
    values: HashMap<(String, String), HashSet<String>>,
    /// The families with a sample (the others' labels are unknown).
    sampled: HashSet<String>,
}

impl Served {
    fn parse(text: &str) -> Served {
        let mut s = Served::default();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').unwrap();
                s.types.insert(name.into(), kind.into());
                continue;
            }
            if line.starts_with('#') {
                continue;
            }
            let (series, _) = line.rsplit_once(' ').unwrap();
            let (name, labels) = series.split_once('{').unwrap_or((series, "}"));
            let family = s.family(name).to_string();
            s.sampled.insert(family.clone());
            let labels = labels.strip_suffix('}').unwrap();
            if labels.is_empty() {
                continue;
            }
            for pair in labels.split("\",") {
                let (k, v) = pair.split_once("=\"").unwrap();
                s.values
                    .entry((family.clone(), k.into()))
                    .or_default()
                    .insert(v.trim_end_matches('"').into());
            }
        }
        s
    }

    /// The family of a sample name (a histogram's `_bucket`, `_sum` and
    /// `_count` are its family's).
    fn family<'a>(&self, name: &'a str) -> &'a str {
        ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| {
                name.strip_suffix(s)
                    .filter(|f| self.types.get(*f).map(String::as_str) == Some("histogram"))
            })
            .unwrap_or(name)
    }

    /// Whether `family` has `label`; `None` when it served no sample to
    /// tell.
    fn has_label(&self, family: &str, label: &str) -> Option<bool> {
        if label == "instance" {
            return Some(true);
        }
        self.sampled
            .contains(family)
            .then(|| self.values.contains_key(&(family.into(), label.into())))
    }

    fn label_values(&self, family: &str, label: &str) -> HashSet<String> {
        self.values
            .get(&(family.to_string(), label.to_string()))
            .cloned()
            .unwrap_or_default()
    }
}

/// One label matcher of a selector: `label OP "value"`.
#[derive(Debug)]
struct Matcher {
    label: String,
    op: String,
    value: String,
}

/// One metric named in an expression and its matchers.
#[derive(Debug)]
struct Selector {
    name: String,
    matchers: Vec<Matcher>,
}

/// The `tls_policyd_*` selectors of a PromQL expression.
fn selectors(expr: &str) -> Vec<Selector> {
    let mut found = Vec::new();
    let mut rest = expr;
    while let Some(at) = rest.find("tls_policyd_") {
        let name: String = rest[at..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        rest = &rest[at + name.len()..];
        let mut matchers = Vec::new();
        if let Some(inner) = rest.strip_prefix('{') {
            let end = inner.find('}').unwrap_or_else(|| panic!("no }} in {expr}"));
            let body = &inner[..end];
            rest = &inner[end + 1..];
            let mut b = body;
            while !b.is_empty() {
                let label: String = b
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                b = &b[label.len()..];
                let op = ["=~", "!~", "!=", "="]
                    .into_iter()
                    .find(|op| b.starts_with(op))
                    .unwrap_or_else(|| panic!("no operator after {label} in {expr}"));
                b = b[op.len()..]
                    .strip_prefix('"')
                    .unwrap_or_else(|| panic!("unquoted value of {label} in {expr}"));
                let close = b.find('"').unwrap();
                matchers.push(Matcher {
                    label,
                    op: op.into(),
                    value: b[..close].into(),
                });
                b = &b[close + 1..];
                b = b.strip_prefix(',').unwrap_or(b);
            }
        }
        found.push(Selector { name, matchers });
    }
    found
}

/// The labels of the `by (...)` clauses of an expression.
fn by_labels(expr: &str) -> Vec<String> {
    let mut labels = Vec::new();
    let mut rest = expr;
    while let Some(at) = rest.find("by (") {
        let inner = &rest[at + 4..];
        let end = inner.find(')').unwrap();
        labels.extend(inner[..end].split(',').map(|l| l.trim().to_string()));
        rest = &inner[end..];
    }
    labels
}

/// The `{{label}}`s of a legend.
fn legend_labels(legend: &str) -> Vec<String> {
    legend
        .split("{{")
        .skip(1)
        .map(|p| p.split_once("}}").unwrap().0.trim().to_string())
        .collect()
}

/// Every label of `sels` is the family's, and every value it matches
/// (each alternative of a regular expression) one the daemon wrote.
fn check_selectors(served: &Served, sels: &[Selector], expr: &str) {
    for sel in sels {
        let family = served.family(&sel.name);
        assert!(
            served.types.contains_key(family),
            "the dashboard queries {}, which the daemon does not serve: {expr}",
            sel.name
        );
        for m in &sel.matchers {
            if m.label == "instance" {
                assert_eq!(
                    (m.op.as_str(), m.value.as_str()),
                    ("=~", "$instance"),
                    "{expr}"
                );
                continue;
            }
            let values = served.label_values(family, &m.label);
            assert!(
                !values.is_empty(),
                "{family} has no label {}: {expr}",
                m.label
            );
            let alternatives: Vec<&str> = if m.op.ends_with('~') {
                m.value.split('|').collect()
            } else {
                vec![m.value.as_str()]
            };
            for a in alternatives {
                assert!(
                    a.chars()
                        .all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c)),
                    "{:?} in {expr}: only literal alternatives are checked",
                    m.value
                );
                assert!(
                    values.contains(a),
                    "{family}{{{}=\"{a}\"}} is never served ({values:?}): {expr}",
                    m.label
                );
            }
        }
    }
}

/// Each alarm kind has a stat panel of its own that is red from the
/// first alarm in the range and not red at none.
fn check_alarm_stats(served: &Served, panels: &[Value]) {
    let kinds = served.label_values("tls_policyd_delivery_alarms_total", "alarm");
    assert_eq!(kinds.len(), 3, "{kinds:?}");
    for kind in &kinds {
        let selector = format!("alarm=\"{kind}\"");
        let stat = panels
            .iter()
            .find(|p| {
                p["type"] == "stat"
                    && p["targets"].as_array().into_iter().flatten().any(|t| {
                        let e = t["expr"].as_str().unwrap();
                        e.contains("tls_policyd_delivery_alarms_total")
                            && e.contains(&selector)
                            && e.contains("[$__range]")
                    })
            })
            .unwrap_or_else(|| panic!("no stat panel for the alarm {kind}"));
        let steps = stat["fieldConfig"]["defaults"]["thresholds"]["steps"]
            .as_array()
            .unwrap_or_else(|| panic!("{kind}: no thresholds"));
        // Grafana's: the step of the highest threshold at or below the
        // value (the base step's is null: below all).
        let colour_at = |v: f64| {
            steps
                .iter()
                .map(|s| (s["value"].as_f64().unwrap_or(f64::NEG_INFINITY), s))
                .filter(|(t, _)| v >= *t)
                .max_by(|a, b| a.0.total_cmp(&b.0))
                .map(|(_, s)| s["color"].as_str().unwrap())
                .unwrap()
        };
        assert_ne!(colour_at(0.0), "red", "{kind}: red at 0");
        assert_eq!(colour_at(1.0), "red", "{kind}: not red at 1");
        assert_eq!(
            stat["fieldConfig"]["defaults"]["color"]["mode"], "thresholds",
            "{kind}"
        );
    }
}

#[test]
fn grafana_dashboard_matches_the_metrics() {
    let tmp = tempfile::tempdir().unwrap();
    let (_d, text) = metrics_after_deliveries(tmp.path());
    let served = Served::parse(&text);
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("packaging/grafana-dashboard.json");
    let dash: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let panels = dash["panels"].as_array().unwrap();
    let mut used = HashSet::new();
    let mut ids = HashSet::new();
    // Families whose labels could not be checked: they served no sample.
    let mut unchecked: HashSet<String> = HashSet::new();
    for v in dash["templating"]["list"].as_array().unwrap() {
        let expr = v["query"]["query"].as_str().unwrap();
        let sels = selectors(expr);
        check_selectors(&served, &sels, expr);
        used.extend(sels.iter().map(|s| served.family(&s.name).to_string()));
    }
    for p in panels {
        let title = p["title"].as_str().unwrap();
        assert!(ids.insert(p["id"].as_u64().unwrap()), "duplicate panel id");
        // The names a series of this panel can have.
        let mut names: HashSet<String> = HashSet::new();
        for t in p["targets"].as_array().into_iter().flatten() {
            let expr = t["expr"].as_str().unwrap();
            let sels = selectors(expr);
            check_selectors(&served, &sels, expr);
            let families: Vec<&str> = sels.iter().map(|s| served.family(&s.name)).collect();
            used.extend(families.iter().map(|f| f.to_string()));
            let legend = t["legendFormat"].as_str().unwrap_or("");
            for label in by_labels(expr).iter().chain(&legend_labels(legend)) {
                let known: Vec<bool> = families
                    .iter()
                    .filter_map(|f| served.has_label(f, label))
                    .collect();
                if known.is_empty() {
                    unchecked.extend(families.iter().map(|f| f.to_string()));
                    continue;
                }
                assert!(
                    known.contains(&true),
                    "{title}: no family of {expr} has the label {label}"
                );
            }
            match legend_labels(legend).as_slice() {
                [] => {
                    names.insert(legend.to_string());
                }
                [label] if legend == format!("{{{{{label}}}}}") => {
                    for f in &families {
                        names.extend(served.label_values(f, label));
                    }
                }
                _ => {}
            }
        }
        for o in p["fieldConfig"]["overrides"]
            .as_array()
            .into_iter()
            .flatten()
        {
            if o["matcher"]["id"] == "byName" {
                let name = o["matcher"]["options"].as_str().unwrap();
                assert!(
                    names.contains(name),
                    "{title}: an override for {name:?}, which no series is called ({names:?})"
                );
            }
        }
    }
    let mut unused: Vec<_> = served.types.keys().filter(|f| !used.contains(*f)).collect();
    unused.sort();
    assert!(
        unused.is_empty(),
        "families served but on no panel: {unused:?}"
    );
    check_alarm_stats(&served, panels);
    // Only the prober's probes (none ran here) may be left unchecked.
    for family in [
        "tls_policyd_deliveries_total",
        "tls_policyd_delivery_alarms_total",
        "tls_policyd_outcome_lines_total",
        "tls_policyd_errors_total",
        "tls_policyd_cache_entries",
    ] {
        assert!(served.sampled.contains(family), "{family}");
        assert!(!unchecked.contains(family), "{family}");
    }
    // The README's table of metrics names every family served.
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap();
    let table = readme
        .split_once("### Metrics")
        .and_then(|(_, rest)| rest.split_once("\n### "))
        .unwrap()
        .0;
    for family in served.types.keys() {
        assert!(
            table.contains(&format!("`{family}`")),
            "{family} is not in the README's table of metrics"
        );
    }
    // No panel covers another, and each fits the 24 columns.
    let rect = |p: &Value| {
        let g = &p["gridPos"];
        let n = |k: &str| g[k].as_u64().unwrap();
        (n("x"), n("y"), n("w"), n("h"))
    };
    for (i, a) in panels.iter().enumerate() {
        let (x, y, w, h) = rect(a);
        assert!(x + w <= 24, "{}", a["title"]);
        for b in &panels[i + 1..] {
            let (x2, y2, w2, h2) = rect(b);
            let apart = x + w <= x2 || x2 + w2 <= x || y + h <= y2 || y2 + h2 <= y;
            assert!(apart, "{} overlaps {}", a["title"], b["title"]);
        }
    }
    // The delivery outcomes have a row of their own.
    assert!(
        panels
            .iter()
            .any(|p| p["type"] == "row" && p["title"] == "Delivery outcomes")
    );
}
