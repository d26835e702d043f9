//! `tls-policyd tlsrpt list | show DOMAIN | send`: the TLS reports of a
//! UTC day (yesterday unless `--day YYYY-MM-DD` names another, today
//! included: a partial report, sent at once, after which that day is done
//! for that domain).

use std::path::Path;
use std::process::ExitCode;
use std::time::SystemTime;

use serde_json::{Value, json};

use crate::config::Config;
use crate::tlsrpt::config::TlsRptConfig;
use crate::tlsrpt::deliver::Poster;
use crate::tlsrpt::outbox::OutboxRow;
use crate::tlsrpt::report::{Report, day_name, day_start, parse_day};
use crate::tlsrpt::sender::{DomainResult, ReportSender, yesterday};
use crate::tlsrpt::store::TlsRptStore;

/// What `tlsrpt` does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TlsRptCommand {
    List,
    Show(String),
    Send { dry_run: bool },
}

fn setup(config_path: &Path) -> Result<(Config, TlsRptConfig), String> {
    let config = Config::load(config_path).map_err(|e| e.to_string())?;
    let t = config.tlsrpt.clone().ok_or_else(|| {
        format!(
            "{}: no [tlsrpt] section, so no TLS reports are counted",
            config_path.display()
        )
    })?;
    Ok((config, t))
}

/// The day `--day` names (a day start), or yesterday.
pub fn day_of(arg: Option<&str>, now: SystemTime) -> Result<SystemTime, String> {
    match arg {
        None => Ok(yesterday(now)),
        Some(d) => {
            let day = parse_day(d)
                .ok_or_else(|| format!("--day {d:?} is not a UTC date (YYYY-MM-DD)"))?;
            if day > day_start(now) {
                return Err(format!("--day {d}: that day has not begun"));
            }
            Ok(day)
        }
    }
}

fn open(t: &TlsRptConfig) -> Result<TlsRptStore, String> {
    if !t.cache_file.exists() {
        return Err(format!(
            "{} does not exist (yet): nothing was counted",
            t.cache_file.display()
        ));
    }
    TlsRptStore::open(&t.cache_file).map_err(|e| e.to_string())
}

fn row_json(r: &OutboxRow) -> Value {
    json!({
        "destination": r.destination,
        "state": r.state.as_str(),
        "attempts": r.attempts,
        "updated": humantime::format_rfc3339_seconds(r.updated_at).to_string(),
        "detail": r.detail,
    })
}

/// `tlsrpt list`: the domains with sessions that day, their counts and
/// where their report stands.
fn list(store: &TlsRptStore, day: &str, as_json: bool) -> Result<String, String> {
    let e = |e: crate::tlsrpt::store::TlsRptStoreError| e.to_string();
    let mut rows = Vec::new();
    for (domain, sessions) in store.domains(day).map_err(e)? {
        let (counts, _) = store.counts(day, &domain).map_err(e)?;
        let failed: u64 = counts.policies.values().map(|c| c.failed()).sum();
        let outbox = store.outbox(day, Some(&domain)).map_err(e)?;
        rows.push(json!({
            "domain": domain,
            "sessions": sessions,
            "successful": sessions - failed,
            "failed": failed,
            "report_id": store.report(day, &domain).map_err(e)?.map(|r| r.report_id),
            "destinations": outbox.iter().map(row_json).collect::<Vec<_>>(),
        }));
    }
    if as_json {
        return Ok(
            serde_json::to_string_pretty(&json!({ "day": day, "domains": rows }))
                .unwrap_or_default()
                + "\n",
        );
    }
    if rows.is_empty() {
        return Ok(format!("{day}: no sessions counted\n"));
    }
    let mut out = format!(
        "{:<40} {:>9} {:>9}  report\n",
        format!("{day} domain"),
        "succeeded",
        "failed"
    );
    for r in &rows {
        let dests = r["destinations"].as_array().cloned().unwrap_or_default();
        let state = if dests.is_empty() {
            "not sent yet".to_string()
        } else {
            dests
                .iter()
                .map(|d| {
                    let dest = d["destination"].as_str().unwrap_or_default();
                    let state = d["state"].as_str().unwrap_or_default();
                    if dest.is_empty() {
                        format!("{state} ({})", d["detail"].as_str().unwrap_or_default())
                    } else {
                        format!("{dest}: {state}")
                    }
                })
                .collect::<Vec<_>>()
                .join(", ")
        };
        out.push_str(&format!(
            "{:<40} {:>9} {:>9}  {state}\n",
            r["domain"].as_str().unwrap_or_default(),
            r["successful"],
            r["failed"]
        ));
    }
    Ok(out)
}

/// `tlsrpt show DOMAIN`: the report kept (what went out), else the report
/// as it would be built now.
fn show(
    store: &TlsRptStore,
    t: &TlsRptConfig,
    day: SystemTime,
    domain: &str,
    as_json: bool,
) -> Result<String, String> {
    let name = day_name(day);
    let e = |e: crate::tlsrpt::store::TlsRptStoreError| e.to_string();
    let (json_text, kept) = match store.report(&name, domain).map_err(e)? {
        Some(r) => (r.json, true),
        None => {
            let (counts, _) = store.counts(&name, domain).map_err(e)?;
            if counts.policies.is_empty() {
                return Err(format!("{name}: no sessions counted for {domain}"));
            }
            (
                Report::build(&t.submitter(), domain, day, &counts).json,
                false,
            )
        }
    };
    if as_json {
        return Ok(json_text + "\n");
    }
    let v: Value = serde_json::from_str(&json_text).map_err(|e| e.to_string())?;
    let mut out = format!(
        "report {} for {domain}, {name} ({})\n",
        v["report-id"].as_str().unwrap_or_default(),
        if kept {
            "as built when sent"
        } else {
            "not sent yet; as it would be built now"
        }
    );
    for p in v["policies"].as_array().cloned().unwrap_or_default() {
        out.push_str(&format!(
            "  policy {}: {} successful, {} failed\n",
            p["policy"]["policy-type"].as_str().unwrap_or_default(),
            p["summary"]["total-successful-session-count"],
            p["summary"]["total-failure-session-count"]
        ));
        for s in p["policy"]["policy-string"]
            .as_array()
            .cloned()
            .unwrap_or_default()
        {
            out.push_str(&format!("    | {}\n", s.as_str().unwrap_or_default()));
        }
        for f in p["failure-details"].as_array().cloned().unwrap_or_default() {
            out.push_str(&format!(
                "    {} x {} at {} {}\n",
                f["failed-session-count"],
                f["result-type"].as_str().unwrap_or_default(),
                f["receiving-mx-hostname"].as_str().unwrap_or("-"),
                f["receiving-ip"].as_str().unwrap_or("")
            ));
        }
    }
    for r in store.outbox(&name, Some(domain)).map_err(e)? {
        out.push_str(&format!(
            "  {} {} (attempts {}): {}\n",
            if r.destination.is_empty() {
                "-"
            } else {
                &r.destination
            },
            r.state,
            r.attempts,
            r.detail
        ));
    }
    Ok(out)
}

fn send(
    store: &TlsRptStore,
    config: &Config,
    t: &TlsRptConfig,
    day: SystemTime,
    dry_run: bool,
    as_json: bool,
) -> Result<(String, bool), String> {
    if config.shared.is_some() && t.enabled && !dry_run {
        return Err(
            "with [shared], the fleet's daemons send the reports (one host each, with every \
             host's counts); `tlsrpt send` here would send this host's counts only \
             (--dry-run shows the report of this host's own counts)"
                .into(),
        );
    }
    let resolver = crate::dns::build_resolver(&config.dns).map_err(|e| e.to_string())?;
    let poster =
        Poster::new(resolver.clone(), t.extra_ca_file.as_deref()).map_err(|e| e.to_string())?;
    let sender = ReportSender {
        config: t.clone(),
        resolver,
        poster,
        metrics: None,
        fleet: None,
        store_waits: Default::default(),
    };
    let rt = super::runtime()?;
    let results = rt
        .block_on(sender.send_day(store, day, dry_run, SystemTime::now()))
        .map_err(|e| e.to_string())?;
    let mut ok = true;
    let mut items = Vec::new();
    let mut text = String::new();
    for (domain, r) in &results {
        let (state, detail): (&str, Value) = match r {
            DomainResult::Reported { report_id, sent } => {
                let mut dests = Vec::new();
                for s in sent {
                    ok &= s.result.is_ok();
                    let (st, d) = match &s.result {
                        Ok(d) => ("sent", d.clone()),
                        Err(e) if e.retry => ("retry", e.detail.clone()),
                        Err(e) => ("failed", e.detail.clone()),
                    };
                    text.push_str(&format!("{domain}: {} {st}: {d}\n", s.destination));
                    dests.push(json!({"destination": s.destination, "state": st, "detail": d}));
                }
                (
                    "reported",
                    json!({"report_id": report_id, "destinations": dests}),
                )
            }
            DomainResult::WouldSend {
                report,
                destinations,
            } => {
                let d: Vec<String> = destinations.iter().map(ToString::to_string).collect();
                text.push_str(&format!(
                    "{domain}: would send {} to {}\n",
                    report.report_id,
                    d.join(", ")
                ));
                (
                    "would-send",
                    json!({"report_id": report.report_id, "destinations": d}),
                )
            }
            DomainResult::NoRecord(why) => {
                text.push_str(&format!("{domain}: no report ({why})\n"));
                ("no-record", json!(why))
            }
            DomainResult::LookupFailed(why) => {
                ok = false;
                text.push_str(&format!(
                    "{domain}: record lookup failed, tried again later ({why})\n"
                ));
                ("lookup-failed", json!(why))
            }
            DomainResult::Done => {
                text.push_str(&format!("{domain}: done before\n"));
                ("done", Value::Null)
            }
            DomainResult::Fleet { host, report_id } => {
                text.push_str(&format!(
                    "{domain}: sent by host {host} of the fleet ({report_id})\n"
                ));
                ("fleet", json!({"host": host, "report_id": report_id}))
            }
            DomainResult::Waiting(why) => {
                ok = false;
                text.push_str(&format!("{domain}: waiting ({why})\n"));
                ("waiting", json!(why))
            }
        };
        items.push(json!({"domain": domain, "result": state, "detail": detail}));
    }
    if as_json {
        let v = json!({"day": day_name(day), "dry_run": dry_run, "domains": items});
        return Ok((
            serde_json::to_string_pretty(&v).unwrap_or_default() + "\n",
            ok,
        ));
    }
    if results.is_empty() {
        text = format!("{}: nothing to send\n", day_name(day));
    }
    Ok((text, ok))
}

/// `tls-policyd tlsrpt …`: exit 0, or 1 on an error or a report not sent.
pub fn tlsrpt(
    config_path: &Path,
    cmd: &TlsRptCommand,
    day: Option<&str>,
    as_json: bool,
) -> ExitCode {
    let run = || -> Result<(String, bool), String> {
        let (config, t) = setup(config_path)?;
        let day = day_of(day, SystemTime::now())?;
        let store = open(&t)?;
        match cmd {
            TlsRptCommand::List => Ok((list(&store, &day_name(day), as_json)?, true)),
            TlsRptCommand::Show(d) => {
                let d = crate::engine::key::normalize_domain(d.trim())
                    .map_err(|e| format!("{d:?} is not a domain: {e}"))?;
                Ok((show(&store, &t, day, &d, as_json)?, true))
            }
            TlsRptCommand::Send { dry_run } => send(&store, &config, &t, day, *dry_run, as_json),
        }
    };
    match run() {
        Ok((text, ok)) => {
            use std::io::Write;
            let _ = std::io::stdout().write_all(text.as_bytes());
            if ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => super::fail(&e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn days() {
        let now = parse_day("2026-12-05").unwrap() + Duration::from_secs(3600);
        assert_eq!(day_name(day_of(None, now).unwrap()), "2026-12-04");
        assert_eq!(
            day_name(day_of(Some("2026-12-05"), now).unwrap()),
            "2026-12-05"
        );
        assert_eq!(
            day_name(day_of(Some("2026-11-30"), now).unwrap()),
            "2026-11-30"
        );
        assert!(
            day_of(Some("2026-12-06"), now)
                .unwrap_err()
                .contains("not begun")
        );
        for bad in ["2026-12-5", "yesterday", "2026-13-01", ""] {
            assert!(
                day_of(Some(bad), now).unwrap_err().contains("YYYY-MM-DD"),
                "{bad}"
            );
        }
    }
}
