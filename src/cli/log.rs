//! `tls-policyd log`: read decision logs (rotated and gzipped ones too).

use std::path::PathBuf;

use crate::config::Config;
use crate::log::reader::{self, LogQuery, OutputFormat};

/// Options of `tls-policyd log`.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct LogOptions {
    /// A log file to read (repeatable, read in order).
    #[arg(long = "file", short = 'f')]
    pub files: Vec<PathBuf>,
    /// Read the decision log named in this config, with its rotated files.
    #[arg(long, short, conflicts_with = "files")]
    pub config: Option<PathBuf>,
    #[arg(long)]
    pub domain: Option<String>,
    #[arg(long = "queue-id")]
    pub queue_id: Option<String>,
    /// RFC 3339 time, or a duration ago such as 2h or 1d.
    #[arg(long)]
    pub since: Option<String>,
    /// forced or opportunistic.
    #[arg(long)]
    pub tls: Option<String>,
    /// Counts by tls, source, level and domain.
    #[arg(long, conflicts_with = "json")]
    pub summary: bool,
    /// Matching records as JSON lines.
    #[arg(long)]
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
