//! The command line: every command, option, help text and default. The
//! shell completions and `tls-policyd(8)` are generated from or checked
//! against these definitions.

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use clap_complete::Shell;

use crate::listen::ListenAddr;

/// The packaged configuration file: every command that reads a config
/// reads this one unless `-c`/`--config` names another.
pub const DEFAULT_CONFIG: &str = "/etc/tls-policyd/config.toml";

// The commands. Plain comments here: a doc comment would become help text.
#[derive(Parser)]
#[command(
    name = "tls-policyd",
    version,
    about = "Per-recipient-domain TLS policy (opportunistic or forced) for Postfix"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Run the daemon (SIGHUP reloads config and policy file and reopens
    /// the decision log; SIGTERM/SIGINT stop it).
    Serve {
        /// The configuration file.
        #[arg(long, short, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
    },
    /// Show the decision for a destination key and every source consulted.
    Explain {
        /// The configuration file.
        #[arg(long, short, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
        /// A key as Postfix sends it: domain, .parent, [host], [host]:port or host:port.
        key: String,
        #[arg(long)]
        json: bool,
    },
    /// Probe a domain's mail servers for STARTTLS now and show what the
    /// policy decision and the policy server's answer would be.
    Probe {
        /// The configuration file.
        #[arg(long, short, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
        /// The recipient domain.
        domain: String,
        #[arg(long)]
        json: bool,
    },
    /// The persisted cache (MTA-STS policies and DANE results): list it,
    /// show or purge a domain's entries.
    Cache {
        /// The configuration file.
        #[arg(long, short, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
        #[command(subcommand)]
        action: CacheAction,
        #[arg(long, global = true)]
        json: bool,
    },
    /// Load the config and policy file as `serve` would; exit 1 on errors.
    CheckConfig {
        /// The configuration file.
        #[arg(long, short, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
    },
    /// Read decision logs (rotated and gzipped ones too): decisions and
    /// delivery outcomes.
    Log(super::log::LogOptions),
    /// The TLS posture per recipient domain from the delivery outcome
    /// records (shares sent encrypted and verified, held recipients,
    /// violations), as a table, JSON or an HTML page with charts.
    Report(super::report::ReportOptions),
    /// Check Postfix's configuration for wiring that bypasses the policy
    /// or stops mail (each finding with the command that fixes it), then
    /// ask the running daemon through postmap -q. Exit 0 when no problem
    /// is found, 1 otherwise.
    Doctor {
        /// The configuration file.
        #[arg(long, short, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
        /// Postfix's configuration directory (postconf -c); Postfix's
        /// default when absent.
        #[arg(long = "postfix-config")]
        postfix_config: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// Ask a running daemon how it is: listeners, policy, caches, reloads,
    /// recent warnings and errors (from the [metrics] listener's /health).
    /// Exit 0 when it is healthy, 2 when the last reload failed, 1 when
    /// it cannot be reached.
    Status {
        /// The configuration file, for the [metrics] listener's address.
        #[arg(long, short, default_value = DEFAULT_CONFIG, conflicts_with = "address")]
        config: PathBuf,
        /// The metrics listener: inet:127.0.0.1:9466 or unix:/PATH.
        #[arg(long, short)]
        address: Option<ListenAddr>,
        /// The health report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// TLS reports (RFC 8460): the reporting domains of a UTC day, a
    /// domain's report byte for byte, or send the day's reports now.
    Tlsrpt {
        /// The configuration file.
        #[arg(long, short, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
        #[command(subcommand)]
        action: TlsRptAction,
        /// The UTC day, YYYY-MM-DD (yesterday when absent; today gives a
        /// partial report, and once sent that day is done for the domain).
        #[arg(long, global = true)]
        day: Option<String>,
        #[arg(long, global = true)]
        json: bool,
    },
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions { shell: Shell },
}

// What `cache` does.
#[derive(Subcommand)]
pub enum CacheAction {
    /// Every cached entry with its state and age.
    List,
    /// A domain's entries in full.
    Show { domain: String },
    /// Remove a domain's entries from the cache file (a running daemon
    /// forgets them on its next reload).
    Purge { domain: String },
}

// What `tlsrpt` does.
#[derive(Subcommand)]
pub enum TlsRptAction {
    /// The domains with sessions counted that day, their counts and where
    /// their report stands.
    List,
    /// The report of a domain: as sent, or as it would be built now;
    /// --json prints its JSON byte for byte.
    Show { domain: String },
    /// Send that day's reports not sent yet, and the retries due.
    Send {
        /// Say what would be sent; change and send nothing.
        #[arg(long)]
        dry_run: bool,
    },
}
