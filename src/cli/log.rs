//! `tls-policyd log`: read decision logs (rotated and gzipped ones too):
//! decisions and delivery outcomes.

use std::path::{Path, PathBuf};

use crate::config::Config;
use crate::log::reader::{self, LogQuery, OutputFormat, Verdict};

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
    #[arg(long, value_parser = Offered(vec!["forced", "opportunistic"]))]
    pub tls: Option<String>,
    /// Only delivery outcome records (what Postfix did with each delivery).
    #[arg(long)]
    pub outcomes: bool,
    /// Only delivery records with this verdict (repeatable, or a comma
    /// list).
    #[arg(
        long = "verdict",
        value_name = "VERDICT",
        value_delimiter = ',',
        value_parser = Offered(Verdict::ALL.map(Verdict::as_str).to_vec())
    )]
    pub verdicts: Vec<String>,
    /// Counts by tls, source, level and domain, and by verdict for
    /// delivery records.
    #[arg(long, conflicts_with = "json")]
    pub summary: bool,
    /// Matching records as JSON lines.
    #[arg(long)]
    pub json: bool,
}

/// An option's values, offered by the shell completions; any text passes
/// here, so that the command itself says what is wrong with another value.
#[derive(Clone)]
pub(super) struct Offered(pub(super) Vec<&'static str>);

impl clap::builder::TypedValueParser for Offered {
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
            self.0
                .iter()
                .copied()
                .map(clap::builder::PossibleValue::new),
        ))
    }
}

/// The log files to read: `files` when any are given, else the decision
/// log `config` names (or the packaged configuration) with its rotated
/// files. `option` is how the command names its file option.
pub(super) fn log_files(
    files: &[PathBuf],
    config: Option<&Path>,
    option: &str,
) -> Result<Vec<PathBuf>, String> {
    if !files.is_empty() {
        return Ok(files.to_vec());
    }
    let c = config.unwrap_or(Path::new(super::DEFAULT_CONFIG));
    let loaded = match Config::load(c) {
        Ok(loaded) => loaded,
        Err(e) if config.is_none() => {
            return Err(format!("give {option} FILE or --config FILE ({e})"));
        }
        Err(e) => return Err(e.to_string()),
    };
    if loaded.log.decisions.as_os_str() == "-" {
        return Err(format!(
            "{}: the decision log goes to standard output; read a file with {option}",
            c.display()
        ));
    }
    Ok(reader::rotated_files(&loaded.log.decisions))
}

/// `tls-policyd log`: read decision logs, write the selection to `out`.
pub fn log(opts: &LogOptions, out: &mut dyn std::io::Write) -> Result<reader::RunStats, String> {
    let query = LogQuery {
        files: log_files(&opts.files, opts.config.as_deref(), "--file")?,
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
        outcomes: opts.outcomes,
        verdicts: opts
            .verdicts
            .iter()
            .map(|v| reader::parse_verdict(v))
            .collect::<Result<_, _>>()
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
