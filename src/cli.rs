//! The administrator's commands besides `serve`: `explain`, `probe`,
//! `check-config` and `log`. Each returns text (or an error text) so `main` only prints.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::json;

use crate::config::{Config, DefaultReply};
use crate::engine::{Engine, Explanation};
use crate::frontends::policy;
use crate::frontends::socketmap::{self, MapKind};
use crate::log::reader::{self, LogQuery, OutputFormat};
use crate::prober::{self, Prober};
use crate::sources::static_file::StaticPolicy;

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
        out += &format!(
            "  prober        {}\n",
            if config.prober.enabled {
                "background probes on"
            } else {
                "background probes off"
            }
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
    Ok(out)
}

/// `tls-policyd explain`: the decision for one key, every source
/// consulted, and the exact socketmap replies.
pub fn explain(config_path: &Path, key: &str, as_json: bool) -> Result<String, String> {
    let (config, policy) = load(config_path)?;
    let engine = Engine::new(policy);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start runtime: {e}"))?;
    let x = rt.block_on(engine.explain(key));
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
        explain_json(&x, &replies)
    } else {
        explain_text(&x, &replies)
    })
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
