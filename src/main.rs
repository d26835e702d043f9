//! `tls-policyd`: parse the command line, bind sockets, wire signals; the
//! library does the rest.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio_util::sync::CancellationToken;

use tls_policyd::cli::{self, LogOptions};
use tls_policyd::config::Config;
use tls_policyd::{Context, Listeners};

#[derive(Parser)]
#[command(
    name = "tls-policyd",
    version,
    about = "Per-recipient-domain TLS policy (opportunistic or forced) for Postfix"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon (SIGHUP reloads config and policy file and reopens
    /// the decision log; SIGTERM/SIGINT stop it).
    Serve {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Show the decision for a destination key and every source consulted.
    Explain {
        #[arg(long, short)]
        config: PathBuf,
        /// A key as Postfix sends it: domain, .parent, [host], [host]:port or host:port.
        key: String,
        #[arg(long)]
        json: bool,
    },
    /// Probe a domain's mail servers for STARTTLS now and show what the
    /// policy decision and the policy server's answer would be.
    Probe {
        #[arg(long, short)]
        config: PathBuf,
        /// The recipient domain.
        domain: String,
        #[arg(long)]
        json: bool,
    },
    /// The persisted cache (MTA-STS policies): list it, show or purge a
    /// domain's entries.
    Cache {
        #[arg(long, short)]
        config: PathBuf,
        #[command(subcommand)]
        action: CacheAction,
        #[arg(long, global = true)]
        json: bool,
    },
    /// Load the config and policy file as `serve` would; exit 1 on errors.
    CheckConfig {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Read decision logs (rotated and gzipped ones too).
    Log {
        /// A log file to read (repeatable, read in order).
        #[arg(long = "file", short = 'f')]
        files: Vec<PathBuf>,
        /// Read the decision log named in this config, with its rotated files.
        #[arg(long, short, conflicts_with = "files")]
        config: Option<PathBuf>,
        #[arg(long)]
        domain: Option<String>,
        #[arg(long = "queue-id")]
        queue_id: Option<String>,
        /// RFC 3339 time, or a duration ago such as 2h or 1d.
        #[arg(long)]
        since: Option<String>,
        /// forced or opportunistic.
        #[arg(long)]
        tls: Option<String>,
        /// Counts by tls, source, level and domain.
        #[arg(long, conflicts_with = "json")]
        summary: bool,
        /// Matching records as JSON lines.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum CacheAction {
    /// Every cached entry with its state and age.
    List,
    /// A domain's entries in full.
    Show { domain: String },
    /// Remove a domain's entries from the cache file (a running daemon
    /// forgets them on its next reload).
    Purge { domain: String },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve { config } => serve(config),
        Command::Explain { config, key, json } => print(cli::explain(&config, &key, json)),
        Command::Probe {
            config,
            domain,
            json,
        } => print(cli::probe(&config, &domain, json)),
        Command::CheckConfig { config } => print(cli::check_config(&config)),
        Command::Cache {
            config,
            action,
            json,
        } => {
            let cmd = match action {
                CacheAction::List => cli::CacheCommand::List,
                CacheAction::Show { domain } => cli::CacheCommand::Show(domain),
                CacheAction::Purge { domain } => cli::CacheCommand::Purge(domain),
            };
            print(cli::cache(&config, &cmd, json))
        }
        Command::Log {
            files,
            config,
            domain,
            queue_id,
            since,
            tls,
            summary,
            json,
        } => {
            let opts = LogOptions {
                files,
                config,
                domain,
                queue_id,
                since,
                tls,
                summary,
                json,
            };
            let stdout = std::io::stdout();
            match cli::log(&opts, &mut stdout.lock()) {
                Ok(stats) => {
                    if stats.bad_lines > 0 {
                        eprintln!("tls-policyd: skipped {} unreadable lines", stats.bad_lines);
                    }
                    ExitCode::SUCCESS
                }
                Err(e) => fail(&e),
            }
        }
    }
}

fn print(result: Result<String, String>) -> ExitCode {
    match result {
        Ok(text) => {
            let _ = std::io::stdout().write_all(text.as_bytes());
            ExitCode::SUCCESS
        }
        Err(e) => fail(&e),
    }
}

fn fail(e: &str) -> ExitCode {
    eprintln!("tls-policyd: {e}");
    ExitCode::FAILURE
}

fn serve(config_path: PathBuf) -> ExitCode {
    let config = match Config::load(&config_path) {
        Ok(c) => c,
        Err(e) => return fail(&e.to_string()),
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&config.log.level));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .init();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return fail(&format!("cannot start runtime: {e}")),
    };
    rt.block_on(async move {
        // Signals are caught from before the first "listening" line, so a
        // reload or stop sent as soon as the daemon announces itself is
        // never fatal.
        let signals = match Signals::install() {
            Ok(s) => s,
            Err(e) => return fail(&format!("cannot install signal handlers: {e}")),
        };
        let ctx = match Context::new(&config_path, config.clone()) {
            Ok(c) => Arc::new(c),
            Err(e) => return fail(&e.to_string()),
        };
        let listeners = match Listeners::bind(&config) {
            Ok(l) => l,
            Err(e) => return fail(&e.to_string()),
        };
        let shutdown = CancellationToken::new();
        tokio::spawn(signals.handle(ctx.clone(), shutdown.clone()));
        for (frontend, listener) in listeners.each() {
            match listener.local_addr() {
                Ok(a) => tracing::info!(frontend, address = %a, "listening"),
                Err(e) => return fail(&format!("{frontend} listener: {e}")),
            }
        }
        let policy = ctx.engine.policy();
        tracing::info!(
            policy = %policy.path().display(),
            rules = policy.rules().len(),
            "tls-policyd {} started",
            env!("CARGO_PKG_VERSION")
        );
        drop(policy);
        tls_policyd::serve(ctx, listeners, shutdown).await;
        tracing::info!("stopped");
        ExitCode::SUCCESS
    })
}

/// The signals the daemon acts on.
struct Signals {
    hup: Signal,
    term: Signal,
    int: Signal,
}

impl Signals {
    fn install() -> std::io::Result<Signals> {
        Ok(Signals {
            hup: signal(SignalKind::hangup())?,
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
        })
    }

    /// SIGHUP reloads; SIGTERM and SIGINT cancel the shutdown token.
    async fn handle(mut self, ctx: Arc<Context>, shutdown: CancellationToken) {
        loop {
            tokio::select! {
                _ = self.hup.recv() => match ctx.reload() {
                    Ok(r) => {
                        tracing::info!(rules = r.rules, "reloaded");
                        if !r.needs_restart.is_empty() {
                            tracing::warn!(settings = ?r.needs_restart, "changed settings take effect on restart");
                        }
                    }
                    Err(e) => tracing::error!(error = %e, "reload failed; the previous configuration keeps serving"),
                },
                _ = self.term.recv() => break,
                _ = self.int.recv() => break,
            }
        }
        tracing::info!("shutting down");
        shutdown.cancel();
    }
}
