//! `tls-policyd explain`: the decision for one key, every source
//! consulted, and the exact socketmap replies.

use std::path::Path;
use std::sync::Arc;

use serde_json::json;

use crate::cache::NoObserver;
use crate::cache::persist::{PersistError, PersistedStore, ReadOnly};
use crate::config::Config;
use crate::engine::{Engine, Explanation};
use crate::frontends::socketmap::{self, MapKind};
use crate::sources::mta_sts::MtaSts;
use crate::store::{Db, Entry, Kind};

/// `tls-policyd explain`: the decision for one key, every source
/// consulted, and the exact socketmap replies.
pub fn explain(config_path: &Path, key: &str, as_json: bool) -> Result<String, String> {
    let (config, policy) = super::load(config_path)?;
    let rt = super::runtime()?;
    // The published-policy sources as the daemon has them, in precedence
    // order: DANE (looked up now; the cache file only read, for DANE
    // history), then MTA-STS (from the cache file, or discovered now).
    // Nothing is written.
    let mut sources: Vec<Arc<dyn crate::engine::Source>> = Vec::new();
    let dane = rt
        .block_on(async {
            crate::daemon::dane_source(&config, read_only_dane, Arc::new(NoObserver))
        })
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
        .map(socketmap::SocketmapSettings::from)
        .unwrap_or_default();
    let replies: Vec<(Arc<str>, String)> = [
        (settings.map.clone(), MapKind::Policy),
        (settings.forced_map.clone(), MapKind::Forced),
        (settings.requiretls_map.clone(), MapKind::RequireTls),
    ]
    .into_iter()
    .map(|(name, kind)| {
        let parsed = x.dest.is_ok();
        let mut d = x.decision.clone();
        let action = crate::engine::requiretls::for_key(engine.policy(), key, parsed, &d);
        if action.is_none() && kind == MapKind::RequireTls {
            // Rules with different REQUIRETLS actions: held, as the daemon does.
            d.temporary = true;
            d.reason = Arc::from("it could name rules with different REQUIRETLS actions");
        }
        let action = action.unwrap_or(crate::engine::requiretls::RequireTlsAction::Enforce);
        let (_, reply) = socketmap::answer_with(d, kind, settings.default_reply, action);
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

/// The DANE rows of the cache file, never written (a missing file has
/// none).
fn read_only_dane(path: &Path) -> Result<Arc<dyn PersistedStore>, PersistError> {
    if !path.exists() {
        return Ok(Arc::new(ReadOnly::default()));
    }
    let (entries, _) = Db::open_read_only(path)
        .and_then(|db| db.all(Some(Kind::Dane)))
        .map_err(|e| PersistError(e.to_string()))?;
    Ok(Arc::new(ReadOnly::new(entries)))
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
    let sts = MtaSts::new(c, resolver, entries.clone(), None, Arc::new(NoObserver))
        .map_err(|e| format!("mta_sts: {e}"))?;
    Ok(Some((sts, entries, problem)))
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
