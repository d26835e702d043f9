//! The administrator's commands besides `serve`: `explain`, `probe`,
//! `check-config` and `log`. Each returns text (or an error text) so `main` only prints.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::json;

use crate::config::Config;
use crate::engine::{Engine, Explanation};
use crate::frontends::policy;
use crate::frontends::socketmap::DefaultReply;
use crate::frontends::socketmap::{self, MapKind};
use crate::log::reader::{self, LogQuery, OutputFormat};
use crate::prober::{self, Prober};
use crate::sources::dane::CacheUse;
use crate::sources::mta_sts::{MtaSts, report};
use crate::sources::static_file::StaticPolicy;
use crate::store::{Db, Entry, Kind};

/// Load config and policy file, or say precisely what is wrong.
fn load(config_path: &Path) -> Result<(Config, StaticPolicy), String> {
    let config = Config::load(config_path).map_err(|e| e.to_string())?;
    let policy = StaticPolicy::load(&config.policy.file).map_err(|e| e.to_string())?;
    Ok((config, policy))
}

/// `tls-policyd check-config`: everything `serve` would load, without
/// binding sockets.
pub fn check_config(config_path: &Path) -> Result<String, String> {
    let (config, policy) = load(config_path)?;
    let mut out = format!("{}: OK\n", config_path.display());
    if let Some(s) = &config.socketmap {
        out += &format!(
            "  socketmap     {} (maps {:?} and {:?}; unknown domains get {})\n",
            s.listen,
            s.map,
            s.forced_map,
            match s.default_reply {
                DefaultReply::Policy => "the default policy",
                DefaultReply::Notfound => "NOTFOUND",
            }
        );
    }
    if let Some(p) = &config.policy_server {
        out += &format!(
            "  policy server {} (refuse {}, sender-rule transport {:?}{})\n",
            p.listen,
            p.refuse.as_str(),
            p.forced_transport,
            match &p.trace_header {
                Some(h) => format!(", trace header {h}"),
                None => String::new(),
            }
        );
    }
    if let Some(m) = &config.milter {
        let mut actions = Vec::new();
        if m.refuse != crate::engine::refusal::RefuseMode::Off {
            actions.push(format!("refuse {}", m.refuse.as_str()));
        }
        if let Some(h) = &m.trace_header {
            actions.push(format!("trace header {h}"));
        }
        if m.quarantine {
            actions.push("quarantine".to_string());
        }
        if let Some(h) = &m.routing_header {
            actions.push(format!("routing header {h}"));
        }
        out += &format!(
            "  milter        {} ({})\n",
            m.listen,
            if actions.is_empty() {
                "records only".to_string()
            } else {
                actions.join(", ")
            }
        );
    }
    if config.policy_server.is_some() || config.milter.is_some() {
        out += &format!(
            "  prober        {}\n",
            if config.prober.enabled {
                "background probes on"
            } else {
                "background probes off"
            }
        );
    }
    if let Some(d) = config.dane.as_ref().filter(|d| d.enabled) {
        let servers = match crate::dns::effective_nameservers(&config.dns) {
            Ok(a) => a
                .iter()
                .map(|a| a.to_string())
                .collect::<Vec<_>>()
                .join(", "),
            Err(e) => return Err(format!("{}: dns: {e}", config_path.display())),
        };
        if let Some(p) = &config.dns.trust_anchor
            && let Err(e) = std::fs::metadata(p)
        {
            return Err(format!(
                "{}: key `dns.trust_anchor`: cannot read {}: {e}",
                config_path.display(),
                p.display()
            ));
        }
        let dir = d.cache_file.parent().unwrap_or(Path::new("."));
        if !dir.is_dir() {
            return Err(format!(
                "{}: key `dane.cache_file`: directory {} does not exist",
                config_path.display(),
                dir.display()
            ));
        }
        out += &format!(
            "  dane          DNSSEC by {} via {servers}; on failure {}; cache {}\n",
            config.dns.dnssec,
            d.on_failure.as_str(),
            d.cache_file.display()
        );
    }
    out += &format!(
        "  policy file   {}: {} rule{}, default {}\n",
        policy.path().display(),
        policy.rules().len(),
        if policy.rules().len() == 1 { "" } else { "s" },
        policy.default_decision().level
    );
    let decisions = &config.log.decisions;
    if decisions.as_os_str() == "-" {
        out += "  decision log  standard output\n";
    } else {
        let dir = decisions.parent().unwrap_or(Path::new("."));
        if !dir.is_dir() {
            return Err(format!(
                "{}: key `log.decisions`: directory {} does not exist",
                config_path.display(),
                dir.display()
            ));
        }
        out += &format!("  decision log  {}\n", decisions.display());
    }
    if let Some(m) = config.mta_sts.as_ref().filter(|m| m.enabled) {
        out += &check_mta_sts(config_path, m)?;
    }
    Ok(out)
}

/// The `mta-sts` line of `check-config`: the cache file's directory
/// exists, the file (if there) is a readable cache, the extra CAs load.
fn check_mta_sts(
    config_path: &Path,
    m: &crate::sources::mta_sts::MtaStsConfig,
) -> Result<String, String> {
    let key = |k: &str, problem: String| {
        format!("{}: key `mta_sts.{k}`: {problem}", config_path.display())
    };
    let dir = m.cache_file.parent().unwrap_or(Path::new("."));
    if !dir.is_dir() {
        return Err(key(
            "cache_file",
            format!("directory {} does not exist", dir.display()),
        ));
    }
    let cache = if m.cache_file.exists() {
        let db = Db::open_read_only(&m.cache_file).map_err(|e| key("cache_file", e.to_string()))?;
        let (entries, _) = db
            .all(Some(Kind::MtaSts))
            .map_err(|e| key("cache_file", e.to_string()))?;
        format!("{} policies cached", entries.len())
    } else {
        "created on start".to_string()
    };
    crate::sources::mta_sts::fetch::load_roots(m.extra_ca_file.as_deref())
        .map_err(|e| key("extra_ca_file", e.problem))?;
    Ok(format!(
        "  mta-sts       cache {} ({cache}); lookups wait at most {}; answers for Postfix {}{}\n",
        m.cache_file.display(),
        humantime::format_duration(m.lookup_timeout),
        m.postfix_version,
        if m.tlsrpt { " with TLSRPT" } else { "" }
    ))
}

/// `tls-policyd explain`: the decision for one key, every source
/// consulted, and the exact socketmap replies.
pub fn explain(config_path: &Path, key: &str, as_json: bool) -> Result<String, String> {
    let (config, policy) = load(config_path)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start runtime: {e}"))?;
    // The published-policy sources as the daemon has them, in precedence
    // order: DANE (looked up now; the cache file only read, for DANE
    // history), then MTA-STS (from the cache file, or discovered now).
    // Nothing is written.
    let mut sources: Vec<Arc<dyn crate::engine::Source>> = Vec::new();
    let dane = rt
        .block_on(async { crate::daemon::dane_source(&config, CacheUse::ReadOnly) })
        .map_err(|e| e.to_string())?;
    if let Some(d) = dane {
        sources.push(Arc::new(d));
    }
    let sts = rt.block_on(async { mta_sts_view(&config) })?;
    if let Some((s, _, _)) = &sts {
        sources.push(Arc::new(s.clone()));
    }
    let engine = Engine::with_sources(policy, sources);
    let x = rt.block_on(engine.explain(key));
    let report = match (&sts, &x.dest) {
        (Some((s, entries, problem)), Ok(d)) if d.form == crate::engine::key::KeyForm::Domain => {
            let cached = entries.iter().find(|e| e.domain == d.name).cloned();
            Some(rt.block_on(s.report(&d.name, cached, problem.clone())))
        }
        _ => None,
    };
    let settings = config
        .socketmap
        .as_ref()
        .map(socketmap::Settings::from)
        .unwrap_or_default();
    let replies: Vec<(Arc<str>, String)> = [
        (settings.map.clone(), MapKind::Policy),
        (settings.forced_map.clone(), MapKind::Forced),
    ]
    .into_iter()
    .map(|(name, kind)| {
        let (_, reply) = socketmap::answer(x.decision.clone(), kind, settings.default_reply);
        (name, reply.text())
    })
    .collect();
    Ok(if as_json {
        let mut v: serde_json::Value =
            serde_json::from_str(&explain_json(&x, &replies)).map_err(|e| e.to_string())?;
        if let Some(r) = &report {
            v["mta_sts"] = r.json();
        }
        format!("{v:#}\n")
    } else {
        let mut out = explain_text(&x, &replies);
        if let Some(r) = &report {
            out += "mta-sts (live lookup and cache file):\n";
            out += &r.text();
        }
        out
    })
}

/// The cache entries of the MTA-STS cache file, or why it cannot be read
/// (a missing file is an empty cache).
fn read_cache_file(path: &Path) -> (Vec<Entry>, Option<String>) {
    if !path.exists() {
        return (
            Vec::new(),
            Some(format!(
                "cache file {} does not exist (yet)",
                path.display()
            )),
        );
    }
    match Db::open_read_only(path).and_then(|db| db.all(Some(Kind::MtaSts))) {
        Ok((entries, _)) => (entries, None),
        Err(e) => (Vec::new(), Some(e.to_string())),
    }
}

type StsView = Option<(MtaSts, Vec<Entry>, Option<String>)>;

/// A read-only MTA-STS source seeded from the cache file, when the config
/// enables MTA-STS. Must run inside a tokio runtime.
fn mta_sts_view(config: &Config) -> Result<StsView, String> {
    let Some(c) = config.mta_sts.as_ref().filter(|m| m.enabled) else {
        return Ok(None);
    };
    let resolver = crate::dns::build_resolver(&config.dns).map_err(|e| format!("dns: {e}"))?;
    let (entries, problem) = read_cache_file(&c.cache_file);
    let sts =
        MtaSts::new(c, resolver, entries.clone(), None).map_err(|e| format!("mta_sts: {e}"))?;
    Ok(Some((sts, entries, problem)))
}

/// `tls-policyd cache …`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CacheCommand {
    List,
    Show(String),
    Purge(String),
}

/// The cache file a config names.
fn cache_file(config_path: &Path) -> Result<PathBuf, String> {
    let config = Config::load(config_path).map_err(|e| e.to_string())?;
    config
        .mta_sts
        .map(|m| m.cache_file)
        .or(config.dane.map(|d| d.cache_file))
        .ok_or_else(|| {
            format!(
                "{}: no [mta_sts] or [dane] section, so nothing is cached",
                config_path.display()
            )
        })
}

/// `tls-policyd cache list | show DOMAIN | purge DOMAIN`.
pub fn cache(config_path: &Path, cmd: &CacheCommand, as_json: bool) -> Result<String, String> {
    let path = cache_file(config_path)?;
    let now = std::time::SystemTime::now();
    let domain_of = |d: &str| {
        crate::engine::key::normalize_domain(d.trim())
            .map_err(|e| format!("{d:?} is not a domain: {e}"))
    };
    match cmd {
        CacheCommand::List | CacheCommand::Show(_) => {
            if !path.exists() {
                return Err(format!(
                    "cache file {} does not exist (yet)",
                    path.display()
                ));
            }
            let db = Db::open_read_only(&path).map_err(|e| e.to_string())?;
            let (mut entries, skipped) = db.all(None).map_err(|e| e.to_string())?;
            if let CacheCommand::Show(d) = cmd {
                let d = domain_of(d)?;
                entries.retain(|e| e.domain == d);
                if entries.is_empty() {
                    return Err(format!("nothing cached for {d} in {}", path.display()));
                }
            }
            if as_json {
                let v: Vec<serde_json::Value> =
                    entries.iter().map(|e| report::entry_json(e, now)).collect();
                return Ok(format!("{:#}\n", json!(v)));
            }
            let mut out = String::new();
            if let CacheCommand::Show(_) = cmd {
                for e in &entries {
                    out += &format!(
                        "{} {}\n  {}\n",
                        e.kind,
                        e.domain,
                        report::entry_state(e, now)
                    );
                    match report::persisted(e) {
                        Some(p) => {
                            out += &format!(
                                "  {}\n  policy as fetched:\n",
                                report::policy_line(&p.id, &p.policy)
                            );
                            for line in p.text.lines() {
                                out += &format!("    {line}\n");
                            }
                        }
                        None => out += &format!("  {}\n", e.payload),
                    }
                }
                return Ok(out);
            }
            out += &format!(
                "{:<8} {:<40} {:<8} {:>10} {:>10}  policy\n",
                "kind", "domain", "state", "age", "expires in"
            );
            for e in &entries {
                let valid = e.is_valid_at(now);
                let age = report::ago(now.duration_since(e.fetched_at).unwrap_or_default());
                let left = if valid {
                    report::ago(e.expires_at.duration_since(now).unwrap_or_default())
                } else {
                    "-".into()
                };
                let detail = match report::persisted(e) {
                    Some(p) => format!("id {} mode {}", p.id, p.policy.mode),
                    None => e.payload.chars().take(60).collect(),
                };
                out += &format!(
                    "{:<8} {:<40} {:<8} {:>10} {:>10}  {detail}\n",
                    e.kind.as_str(),
                    e.domain,
                    if valid { "valid" } else { "expired" },
                    age,
                    left
                );
            }
            out += &format!(
                "{} entr{} in {}",
                entries.len(),
                if entries.len() == 1 { "y" } else { "ies" },
                path.display()
            );
            if skipped > 0 {
                out += &format!(" ({skipped} unreadable rows skipped)");
            }
            out.push('\n');
            Ok(out)
        }
        CacheCommand::Purge(d) => {
            let d = domain_of(d)?;
            if !path.exists() {
                return Err(format!("cache file {} does not exist", path.display()));
            }
            let db = Db::open(&path).map_err(|e| e.to_string())?;
            let n = db.remove(None, &d).map_err(|e| e.to_string())?;
            if n == 0 {
                return Err(format!("nothing cached for {d} in {}", path.display()));
            }
            Ok(format!(
                "removed {n} entr{} for {d} from {}; a running daemon forgets {} on its next reload (SIGHUP)\n",
                if n == 1 { "y" } else { "ies" },
                path.display(),
                if n == 1 { "it" } else { "them" }
            ))
        }
    }
}

/// `tls-policyd probe`: probe a domain's mail servers now, then show what
/// was found, the decision for the domain and what the policy server would
/// answer at RCPT with that knowledge.
pub fn probe(config_path: &Path, domain: &str, as_json: bool) -> Result<String, String> {
    let (config, policy) = load(config_path)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start runtime: {e}"))?;
    rt.block_on(async {
        let resolver = crate::dns::build_resolver(&config.dns).map_err(|e| format!("dns: {e}"))?;
        let prober = Prober::new(config.prober.clone(), resolver).map_err(|e| e.to_string())?;
        let found = prober.probe(domain).await;
        let engine = Engine::new(policy);
        let settings = config
            .policy_server
            .as_ref()
            .map(policy::Settings::from)
            .unwrap_or_default();
        let (decision, action) = policy::rcpt_answer(&engine, domain, &settings, &prober).await;
        Ok(if as_json {
            let mut v: serde_json::Value = serde_json::from_str(&prober::render_json(&found))
                .map_err(|e| format!("cannot render the probe: {e}"))?;
            v["decision"] = json!({
                "tls": decision.tls(),
                "level": decision.policy.as_ref(),
                "source": decision.source,
                "rule": decision.rule,
                "reason": decision.reason.as_ref(),
            });
            v["policy_server_answer"] = json!(action);
            let mut text = serde_json::to_string_pretty(&v).map_err(|e| e.to_string())?;
            text.push('\n');
            text
        } else {
            let mut text = prober::render_text(&found);
            if !text.ends_with('\n') {
                text.push('\n');
            }
            text += &format!(
                "decision     {} TLS, Postfix level \"{}\" (source {}{})\n",
                decision.tls(),
                decision.policy,
                decision.source,
                decision
                    .rule
                    .map(|r| format!(", rule {r}"))
                    .unwrap_or_default()
            );
            text += &format!("reason       {}\n", decision.reason);
            text += &format!("at RCPT      {action}\n");
            text
        })
    })
}

fn explain_text(x: &Explanation, replies: &[(Arc<str>, String)]) -> String {
    let mut out = format!("key          {}\n", x.key);
    match &x.dest {
        Ok(d) => {
            out += &format!("destination  {} ({} key)\n", d.canonical(), d.form.as_str());
        }
        Err(e) => out += &format!("destination  none: {e}\n"),
    }
    out += "sources, in precedence order:\n";
    for s in &x.steps {
        out += &format!(
            "  {:<8} {:<8} {}\n",
            s.source.as_str(),
            if s.applied { "DECIDES" } else { "-" },
            s.detail
        );
        for line in &s.details {
            out += &format!("  {:<8} {:<8} {}\n", "", "", line);
        }
    }
    let d = &x.decision;
    out += &format!(
        "decision     {} TLS, Postfix level \"{}\"\n",
        d.tls(),
        d.policy
    );
    out += &format!("source       {}", d.source);
    if let Some(r) = d.rule {
        out += &format!(", rule {r}");
    }
    out += &format!("\nreason       {}\n", d.reason);
    out += &format!("cacheable    {}s\n", d.ttl.as_secs());
    for (i, (name, reply)) in replies.iter().enumerate() {
        let label = if i == 0 { "socketmap" } else { "" };
        out += &format!("{label:<12} {name} -> {reply:?}\n");
    }
    out
}

fn explain_json(x: &Explanation, replies: &[(Arc<str>, String)]) -> String {
    let d = &x.decision;
    let dest = match &x.dest {
        Ok(dst) => json!({
            "form": dst.form.as_str(),
            "name": dst.name,
            "port": dst.port,
            "canonical": dst.canonical(),
        }),
        Err(e) => json!({ "error": e.to_string() }),
    };
    let replies: serde_json::Map<String, serde_json::Value> = replies
        .iter()
        .map(|(n, r)| (n.to_string(), json!(r)))
        .collect();
    let v = json!({
        "key": x.key,
        "destination": dest,
        "steps": x.steps,
        "decision": {
            "tls": d.tls(),
            "level": d.level,
            "policy": &*d.policy,
            "source": d.source,
            "rule": d.rule,
            "matched": d.matched.as_deref(),
            "reason": &*d.reason,
            "ttl_secs": d.ttl.as_secs(),
        },
        "socketmap": replies,
    });
    format!("{v:#}\n")
}

/// Options of `tls-policyd log`.
#[derive(Debug, Clone, Default)]
pub struct LogOptions {
    pub files: Vec<PathBuf>,
    pub config: Option<PathBuf>,
    pub domain: Option<String>,
    pub queue_id: Option<String>,
    pub since: Option<String>,
    pub tls: Option<String>,
    pub summary: bool,
    pub json: bool,
}

/// `tls-policyd log`: read decision logs, write the selection to `out`.
pub fn log(opts: &LogOptions, out: &mut dyn std::io::Write) -> Result<reader::RunStats, String> {
    let files = if !opts.files.is_empty() {
        opts.files.clone()
    } else if let Some(c) = &opts.config {
        let config = Config::load(c).map_err(|e| e.to_string())?;
        if config.log.decisions.as_os_str() == "-" {
            return Err(format!(
                "{}: the decision log goes to standard output; read a file with --file",
                c.display()
            ));
        }
        reader::rotated_files(&config.log.decisions)
    } else {
        return Err("give --file FILE or --config FILE".into());
    };
    let query = LogQuery {
        files,
        domain: opts
            .domain
            .as_deref()
            .map(reader::normalize_domain)
            .transpose()
            .map_err(|e| e.to_string())?,
        queue_id: opts.queue_id.clone(),
        since: opts
            .since
            .as_deref()
            .map(|s| reader::parse_since(s, std::time::SystemTime::now()))
            .transpose()
            .map_err(|e| e.to_string())?,
        tls: opts
            .tls
            .as_deref()
            .map(reader::parse_tls)
            .transpose()
            .map_err(|e| e.to_string())?,
    };
    let format = if opts.summary {
        OutputFormat::Summary
    } else if opts.json {
        OutputFormat::Json
    } else {
        OutputFormat::Table
    };
    reader::run(&query, format, out).map_err(|e| e.to_string())
}
