//! `tls-policyd cache`: list the persisted cache (MTA-STS policies and
//! DANE results), show or purge a domain's entries.

use std::path::{Path, PathBuf};

use serde_json::json;

use crate::config::Config;
use crate::sources::mta_sts::report;
use crate::store::Db;

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
