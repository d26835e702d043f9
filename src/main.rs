//! `tls-policyd`: parse the command line, bind sockets, wire signals; the
//! library does the rest.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{CommandFactory, Parser, Subcommand};
use clap_complete::Shell;
use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio_util::sync::CancellationToken;

use tls_policyd::cli::{self, LogOptions};
use tls_policyd::config::Config;
use tls_policyd::listen::{ListenAddr, Listener, SocketOptions};
use tls_policyd::metrics::{ErrorCapture, Metrics};
use tls_policyd::notify::Notifier;
use tls_policyd::{Context, Listeners, health};

/// The packaged configuration file.
const DEFAULT_CONFIG: &str = "/etc/tls-policyd/config.toml";

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
    /// The persisted cache (MTA-STS policies and DANE results): list it,
    /// show or purge a domain's entries.
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
    /// Ask a running daemon how it is: listeners, policy, caches, reloads,
    /// recent warnings and errors (from the [metrics] listener's /health).
    /// Exit 0 when it is healthy, 2 when the last reload failed, 1 when
    /// it cannot be reached.
    Status {
        /// Read the [metrics] listener address from this config.
        #[arg(long, short, default_value = DEFAULT_CONFIG, conflicts_with = "address")]
        config: PathBuf,
        /// The metrics listener: inet:127.0.0.1:9466 or unix:/PATH.
        #[arg(long, short)]
        address: Option<ListenAddr>,
        /// The health report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions { shell: Shell },
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
        Command::Status {
            config,
            address,
            json,
        } => status(&config, address, json),
        Command::Completions { shell } => {
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "tls-policyd",
                &mut std::io::stdout(),
            );
            ExitCode::SUCCESS
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

fn status(config: &std::path::Path, address: Option<ListenAddr>, json: bool) -> ExitCode {
    let addr = match address {
        Some(a) => a,
        None => match health::address_from_config(config) {
            Ok(a) => a,
            Err(e) => return fail(&e.to_string()),
        },
    };
    let report = match health::fetch(&addr) {
        Ok(r) => r,
        Err(e) => return fail(&e.to_string()),
    };
    let text = if json {
        serde_json::to_string_pretty(&report).unwrap_or_default() + "\n"
    } else {
        report.render_text()
    };
    let _ = std::io::stdout().write_all(text.as_bytes());
    if report.status == "ok" {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(2)
    }
}

fn serve(config_path: PathBuf) -> ExitCode {
    let config = match Config::load(&config_path) {
        Ok(c) => c,
        Err(e) => return fail(&e.to_string()),
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&config.log.level));
    // Warnings and errors also go to the metrics, for `status`.
    let metrics = Arc::new(Metrics::new());
    {
        use tracing_subscriber::layer::SubscriberExt;
        use tracing_subscriber::util::SubscriberInitExt;
        tracing_subscriber::registry()
            .with(filter)
            .with(
                tracing_subscriber::fmt::layer()
                    .with_writer(std::io::stderr)
                    .with_ansi(false),
            )
            .with(ErrorCapture::new(metrics.clone()))
            .init();
    }
    let notifier = Arc::new(Notifier::from_env());
    if let Some(p) = notifier.problem() {
        tracing::warn!("readiness notification is off: {p}");
    }
    // One thread (the default) runs everything on the thread that calls
    // block_on: no packet wakes a second thread.
    let threads = config.runtime.threads;
    let mut builder = if threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(threads);
        b
    };
    let rt = match builder.enable_all().build() {
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
        let ctx = match Context::with_metrics(&config_path, config.clone(), metrics) {
            Ok(c) => Arc::new(c),
            Err(e) => return fail(&e.to_string()),
        };
        let listeners = match Listeners::bind(&config) {
            Ok(l) => l,
            Err(e) => return fail(&e.to_string()),
        };
        if let Some(ListenAddr::Inet(a)) = config.metrics.as_ref().map(|m| &m.listen)
            && !a.ip().is_loopback()
        {
            tracing::warn!(address = %a, "the metrics listener has no authentication and is not on loopback");
        }
        let metrics_listener = match &config.metrics {
            Some(m) => match Listener::bind(&m.listen, &SocketOptions::default()) {
                Ok(l) => Some(l),
                Err(e) => return fail(&format!("cannot listen on {}: {e}", m.listen)),
            },
            None => None,
        };
        let shutdown = CancellationToken::new();
        tokio::spawn(signals.handle(ctx.clone(), shutdown.clone(), notifier.clone()));
        let mut bound = listeners.each();
        bound.extend(metrics_listener.as_ref().map(|l| ("metrics", l)));
        let mut addresses = Vec::new();
        for (name, l) in bound {
            match l.local_addr() {
                Ok(a) => {
                    tracing::info!(frontend = name, address = %a, "listening");
                    ctx.metrics.listening(name, a.to_string());
                    addresses.push(format!("{name} on {a}"));
                }
                Err(e) => return fail(&format!("{name} listener: {e}")),
            }
        }
        let metrics_task =
            metrics_listener.map(|l| tokio::spawn(health::serve(ctx.clone(), l, shutdown.clone())));
        let policy = ctx.engine.policy();
        tracing::info!(
            policy = %policy.path().display(),
            rules = policy.rules().len(),
            "tls-policyd {} started",
            env!("CARGO_PKG_VERSION")
        );
        drop(policy);
        let ready = format!("serving {}", addresses.join(", "));
        notifier.ready(&ready);
        tls_policyd::serve(ctx, listeners, shutdown).await;
        if let Some(t) = metrics_task {
            let _ = t.await;
        }
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

    /// SIGHUP reloads; SIGTERM and SIGINT cancel the shutdown token. systemd
    /// hears of both.
    async fn handle(
        mut self,
        ctx: Arc<Context>,
        shutdown: CancellationToken,
        notifier: Arc<Notifier>,
    ) {
        loop {
            tokio::select! {
                _ = self.hup.recv() => {
                    notifier.reloading();
                    // Reading and checking a large policy file takes a
                    // while: off the threads that answer Postfix.
                    let reloading = ctx.clone();
                    let result = match tokio::task::spawn_blocking(move || reloading.reload()).await {
                        Ok(r) => r,
                        Err(e) => {
                            tracing::error!(error = %e, "reload failed; the previous configuration keeps serving");
                            notifier.ready("serving the previous configuration; the last reload failed");
                            continue;
                        }
                    };
                    match result {
                        Ok(r) => {
                            tracing::info!(rules = r.rules, "reloaded");
                            if !r.needs_restart.is_empty() {
                                tracing::warn!(settings = ?r.needs_restart, "changed settings take effect on restart");
                            }
                            notifier.ready(&format!("serving; reloaded, {} rules", r.rules));
                        }
                        Err(e) => {
                            tracing::error!(error = %e, "reload failed; the previous configuration keeps serving");
                            notifier.ready("serving the previous configuration; the last reload failed");
                        }
                    }
                },
                _ = self.term.recv() => break,
                _ = self.int.recv() => break,
            }
        }
        tracing::info!("shutting down");
        notifier.stopping();
        shutdown.cancel();
    }
}
