//! `tls-policyd check-config`: load everything `serve` would, without
//! binding sockets, and say what was found or precisely what is wrong.

use std::path::Path;

use crate::config::LogFormat;
use crate::frontends::socketmap::DefaultReply;
use crate::store::{Db, Kind, StoreError};

/// `tls-policyd check-config`: everything `serve` would load, without
/// binding sockets.
pub fn check_config(config_path: &Path) -> Result<String, String> {
    let (config, policy) = super::load(config_path)?;
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
    out += &format!(
        "  operational   level {}, {}\n",
        config.log.level,
        match config.log.format {
            LogFormat::Auto => "journal priorities under systemd, text otherwise",
            LogFormat::Text => "text",
            LogFormat::Journal => "journal priorities",
        }
    );
    if let Some(m) = config.mta_sts.as_ref().filter(|m| m.enabled) {
        out += &check_mta_sts(config_path, m)?;
    }
    if let Some(m) = &config.metrics {
        out += &format!(
            "  metrics       {} ({})\n",
            m.listen,
            match &m.listen {
                crate::listen::ListenAddr::Inet(a) if a.ip().is_loopback() =>
                    "/metrics and /health",
                crate::listen::ListenAddr::Inet(_) => {
                    "/metrics and /health; not on loopback and without authentication"
                }
                crate::listen::ListenAddr::Unix(_) => "/health for tls-policyd status",
            }
        );
    }
    if let Some(s) = &config.shared {
        // Reads the password and PEM files as `serve` does.
        crate::shared::connect::Target::new(s)
            .map_err(|e| format!("{}: {e}", config_path.display()))?;
        out += &format!("  shared store  {}", s.shown_url());
        if s.uses_sentinels() {
            out += &format!(
                " (master {:?} from the sentinels {})",
                s.master_name.as_deref().unwrap_or_default(),
                s.sentinels.join(", ")
            );
        }
        if let Some(ca) = &s.ca_file {
            out += &format!(", trusting {} only", ca.display());
        }
        out.push('\n');
    }
    out += &format!(
        "  runtime       {} thread{}\n",
        config.runtime.threads,
        if config.runtime.threads == 1 { "" } else { "s" }
    );
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
        let read = Db::open_read_only(&m.cache_file).and_then(|db| db.all(Some(Kind::MtaSts)));
        match read {
            Ok((entries, _)) => format!("{} policies cached", entries.len()),
            // `serve` (and so a reload after this check) copes: it moves
            // a damaged file aside and starts with an empty cache.
            Err(e @ (StoreError::Damaged { .. } | StoreError::Sql { .. })) => format!(
                "damaged, moved aside to {}.corrupt-SECONDS on start, policies learned again: {e}",
                m.cache_file.display()
            ),
            Err(e) => return Err(key("cache_file", e.to_string())),
        }
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
