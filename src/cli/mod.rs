//! The command line: its definitions ([`Cli`]), the dispatch ([`run`]) and
//! one module per command: `serve`, `status`, `explain`, `probe`,
//! `check-config`, `cache`, `log`, `report`, `doctor`, `tlsrpt` and `completions`. Most commands return
//! text (or an error text) that [`run`] prints.

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

use crate::config::Config;
use crate::engine::policy_file::PolicyFile;

mod args;
mod cache;
mod check_config;
mod completions;
mod doctor;
mod explain;
mod log;
mod probe;
mod report;
mod serve;
mod status;
mod tlsrpt;

pub use args::{CacheAction, Cli, Command, DEFAULT_CONFIG, TlsRptAction};
pub use cache::{CacheCommand, cache};
pub use check_config::check_config;
pub use completions::completions;
pub use doctor::doctor;
pub use explain::explain;
pub use log::{LogOptions, log};
pub use probe::probe;
pub use report::{ReportOptions, report};
pub use serve::serve;
pub use status::status;
pub use tlsrpt::{TlsRptCommand, tlsrpt};

/// Run the command `cli` names; its exit code.
pub fn run(cli: Cli) -> ExitCode {
    match cli.command {
        Command::Serve { config } => serve(config),
        Command::Explain { config, key, json } => print(explain(&config, &key, json)),
        Command::Probe {
            config,
            domain,
            json,
        } => print(probe(&config, &domain, json)),
        Command::CheckConfig { config } => print(check_config(&config)),
        Command::Doctor {
            config,
            postfix_config,
            json,
        } => doctor(&config, postfix_config.as_deref(), json),
        Command::Cache {
            config,
            action,
            json,
        } => {
            let cmd = match action {
                CacheAction::List => CacheCommand::List,
                CacheAction::Show { domain } => CacheCommand::Show(domain),
                CacheAction::Purge { domain } => CacheCommand::Purge(domain),
            };
            print(cache(&config, &cmd, json))
        }
        Command::Status {
            config,
            address,
            json,
        } => status(&config, address, json),
        Command::Completions { shell } => {
            completions(shell, &mut std::io::stdout());
            ExitCode::SUCCESS
        }
        Command::Tlsrpt {
            config,
            action,
            day,
            json,
        } => {
            let cmd = match action {
                TlsRptAction::List => TlsRptCommand::List,
                TlsRptAction::Show { domain } => TlsRptCommand::Show(domain),
                TlsRptAction::Send { dry_run } => TlsRptCommand::Send { dry_run },
            };
            tlsrpt(&config, &cmd, day.as_deref(), json)
        }
        Command::Log(opts) => read_logs(log(&opts, &mut std::io::stdout().lock())),
        Command::Report(opts) => read_logs(report(&opts, &mut std::io::stdout().lock())),
    }
}

/// The end of a command that read logs: a note on unreadable lines, or
/// its error; exit 0 or 1.
fn read_logs(result: Result<crate::log::reader::RunStats, String>) -> ExitCode {
    match result {
        Ok(stats) => {
            if stats.bad_lines > 0 {
                eprintln!("tls-policyd: skipped {} unreadable lines", stats.bad_lines);
            }
            ExitCode::SUCCESS
        }
        Err(e) => fail(&e),
    }
}

/// Print a command's text, or its error; exit 0 or 1.
fn print(result: Result<String, String>) -> ExitCode {
    match result {
        Ok(text) => {
            let _ = std::io::stdout().write_all(text.as_bytes());
            ExitCode::SUCCESS
        }
        Err(e) => fail(&e),
    }
}

/// Print `value` as pretty JSON or as `text` renders it; exit with
/// `code`.
fn print_report<T: serde::Serialize>(
    value: &T,
    json: bool,
    text: impl FnOnce(&T) -> String,
    code: ExitCode,
) -> ExitCode {
    let out = if json {
        serde_json::to_string_pretty(value).unwrap_or_default() + "\n"
    } else {
        text(value)
    };
    let _ = std::io::stdout().write_all(out.as_bytes());
    code
}

/// A runtime for a command that looks things up on the network.
fn runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start runtime: {e}"))
}

/// Report an error on stderr; exit 1.
fn fail(e: &str) -> ExitCode {
    eprintln!("tls-policyd: {e}");
    ExitCode::FAILURE
}

/// Load config and policy file, or say precisely what is wrong.
fn load(config_path: &Path) -> Result<(Config, PolicyFile), String> {
    let config = Config::load(config_path).map_err(|e| e.to_string())?;
    check_policy_file(config_path, &config)?;
    let policy = PolicyFile::load(&config.policy.file).map_err(|e| e.to_string())?;
    Ok((config, policy))
}

/// A policy file that cannot be read at all is the config's problem: name
/// the config file and its key `policy.file`.
fn check_policy_file(config_path: &Path, config: &Config) -> Result<(), String> {
    match std::fs::metadata(&config.policy.file) {
        Ok(_) => Ok(()),
        Err(e) => Err(format!(
            "{}: key `policy.file`: cannot read {}: {e}",
            config_path.display(),
            config.policy.file.display()
        )),
    }
}
