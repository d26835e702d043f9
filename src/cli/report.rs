//! `tls-policyd report`: the TLS posture per recipient domain from the
//! delivery outcome records, as text, JSON or an HTML page.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use super::log::log_files;
use crate::log::reader::{self, RunStats};
use crate::log::report::{self, ReportQuery};

/// Options of `tls-policyd report`.
#[derive(Debug, Clone, clap::Args)]
pub struct ReportOptions {
    /// A decision log file to read (repeatable, read in order).
    #[arg(long = "log", value_name = "FILE")]
    pub logs: Vec<PathBuf>,
    /// Read the decision log named in this configuration file, with its
    /// rotated files (read when no log file is given) [default:
    /// /etc/tls-policyd/config.toml]
    #[arg(long, short, conflicts_with = "logs")]
    pub config: Option<PathBuf>,
    /// Start of the window: RFC 3339 time, or a duration ago such as 24h
    /// or 7d.
    #[arg(long, default_value = "24h")]
    pub since: String,
    /// End of the window, not included: RFC 3339 time, or a duration ago
    /// [default: now]
    #[arg(long)]
    pub until: Option<String>,
    /// Only this recipient domain.
    #[arg(long)]
    pub domain: Option<String>,
    /// The report as one JSON document.
    #[arg(long, conflicts_with = "html")]
    pub json: bool,
    /// Write the report as one self-contained HTML page to FILE (- for
    /// standard output) instead of printing the table.
    #[arg(long, value_name = "FILE")]
    pub html: Option<PathBuf>,
}

/// `tls-policyd report`: read the logs, write the report to `out`, or the
/// page to the `--html` file.
pub fn report(opts: &ReportOptions, out: &mut dyn Write) -> Result<RunStats, String> {
    let now = SystemTime::now();
    let query = ReportQuery {
        files: log_files(&opts.logs, opts.config.as_deref(), "--log")?,
        since: reader::parse_since(&opts.since, now).map_err(|e| e.to_string())?,
        until: opts
            .until
            .as_deref()
            .map_or(Ok(now), |u| reader::parse_until(u, now))
            .map_err(|e| e.to_string())?,
        domain: opts
            .domain
            .as_deref()
            .map(reader::normalize_domain)
            .transpose()
            .map_err(|e| e.to_string())?,
    };
    let (r, stats) = report::build(&query).map_err(|e| e.to_string())?;
    let written = match &opts.html {
        Some(path) if path.as_os_str() != "-" => {
            return write_page(path, &report::html(&r)).map(|()| stats);
        }
        Some(_) => out.write_all(report::html(&r).as_bytes()),
        None if opts.json => {
            let json = serde_json::to_string_pretty(&r).expect("a report serialises");
            out.write_all(format!("{json}\n").as_bytes())
        }
        None => out.write_all(report::text(&r).as_bytes()),
    };
    match written {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(format!("cannot write output: {e}"))
        }
        _ => Ok(stats),
    }
}

/// Writes the page next to `path` and renames it into place, so that a
/// web server never serves half a page.
fn write_page(path: &Path, page: &str) -> Result<(), String> {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".tmp-{}", std::process::id()));
    let tmp = path.with_file_name(name);
    let result = std::fs::write(&tmp, page).and_then(|()| std::fs::rename(&tmp, path));
    result.map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        format!("cannot write {}: {e}", path.display())
    })
}
