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
    /// Read the decision log named in this configuration file, with its
    /// rotated files (read when no log file is given) [default:
    /// /etc/tls-policyd/config.toml]
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
    #[arg(long, value_parser = TlsValues)]
    pub tls: Option<String>,
    /// Counts by tls, source, level and domain.
    #[arg(long, conflicts_with = "json")]
    pub summary: bool,
    /// Matching records as JSON lines.
    #[arg(long)]
    pub json: bool,
}

/// `--tls`'s values, offered by the shell completions; any text passes
/// here, so that `log` itself says what is wrong with another value.
#[derive(Clone)]
struct TlsValues;

impl clap::builder::TypedValueParser for TlsValues {
    type Value = String;

    fn parse_ref(
        &self,
        cmd: &clap::Command,
        arg: Option<&clap::Arg>,
        value: &std::ffi::OsStr,
    ) -> Result<String, clap::Error> {
        clap::builder::StringValueParser::new().parse_ref(cmd, arg, value)
    }

    fn possible_values(
        &self,
    ) -> Option<Box<dyn Iterator<Item = clap::builder::PossibleValue> + '_>> {
        Some(Box::new(
            ["forced", "opportunistic"]
                .into_iter()
                .map(clap::builder::PossibleValue::new),
        ))
    }
}

/// `tls-policyd log`: read decision logs, write the selection to `out`.
pub fn log(opts: &LogOptions, out: &mut dyn std::io::Write) -> Result<reader::RunStats, String> {
    let files = if !opts.files.is_empty() {
        opts.files.clone()
    } else {
        let c = opts
            .config
            .clone()
            .unwrap_or_else(|| PathBuf::from(super::DEFAULT_CONFIG));
        let config = match Config::load(&c) {
            Ok(config) => config,
            Err(e) if opts.config.is_none() => {
                return Err(format!("give --file FILE or --config FILE ({e})"));
            }
            Err(e) => return Err(e.to_string()),
        };
        if config.log.decisions.as_os_str() == "-" {
            return Err(format!(
                "{}: the decision log goes to standard output; read a file with --file",
                c.display()
            ));
        }
        reader::rotated_files(&config.log.decisions)
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
