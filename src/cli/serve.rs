//! `serve`: load the configuration, set up the operational log, build the
//! runtime, bind every listener and hand over to the daemon until a
//! signal stops it.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::config::{Config, LogFormat};
use crate::daemon::{Context, Listeners, Signals};
use crate::health;
use crate::listen::{ListenAddr, Listener, SocketOptions};
use crate::metrics::{ErrorCapture, Metrics};
use crate::notify::Notifier;

/// The target of the start-up and stop lines in the operational log: the
/// crate's name, which `RUST_LOG` and `[log] level` directives select.
const LOG_TARGET: &str = "tls_policyd";

/// Run the daemon with the config at `config_path` until SIGTERM or
/// SIGINT. Exit 1 when it cannot start.
pub fn serve(config_path: PathBuf) -> ExitCode {
    let config = match Config::load(&config_path) {
        Ok(c) => c,
        // Which format the config asks for is unknown: the journal's when
        // standard error is its stream.
        Err(e) => return fail(&e.to_string(), stderr_is_journal()),
    };
    let journal = match config.log.format {
        LogFormat::Journal => true,
        LogFormat::Text => false,
        LogFormat::Auto => stderr_is_journal(),
    };
    let fail = move |e: &str| fail(e, journal);
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&config.log.level));
    // Warnings and errors also go to the metrics, for `status`.
    let metrics = Arc::new(Metrics::new());
    {
        use tracing_subscriber::layer::SubscriberExt;
        use tracing_subscriber::util::SubscriberInitExt;
        let text = (!journal).then(|| {
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_ansi(false)
        });
        let journal = journal.then(|| {
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_ansi(false)
                .event_format(JournalFormat::new())
        });
        tracing_subscriber::registry()
            .with(filter)
            .with(text)
            .with(journal)
            .with(ErrorCapture::new(metrics.clone()))
            .init();
    }
    let notifier = Arc::new(Notifier::from_env());
    if let Some(p) = notifier.problem() {
        tracing::warn!(target: LOG_TARGET, "readiness notification is off: {p}");
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
        if let Err(e) = super::check_policy_file(&config_path, &config) {
            return fail(&e);
        }
        // Before any file is opened: nothing left behind that would break
        // the service's next start.
        if let Err(e) = crate::daemon::preflight::check(&config, nix::unistd::geteuid().as_raw()) {
            return fail(&format!("{}: {e}", config_path.display()));
        }
        let listeners = match Listeners::bind(&config) {
            Ok(l) => l,
            Err(e) => return fail(&format!("{}: {e}", config_path.display())),
        };
        if let Some(ListenAddr::Inet(a)) = config.metrics.as_ref().map(|m| &m.listen)
            && !a.ip().is_loopback()
        {
            tracing::warn!(target: LOG_TARGET, address = %a, "the metrics listener has no authentication and is not on loopback");
        }
        let metrics_listener = match &config.metrics {
            Some(m) => match Listener::bind(&m.listen, &SocketOptions::default()) {
                Ok(l) => Some(l),
                Err(e) => {
                    return fail(&format!(
                        "{}: key `metrics.listen`: cannot listen on {}: {e}",
                        config_path.display(),
                        m.listen
                    ));
                }
            },
            None => None,
        };
        // Listeners first, files after: a start that cannot bind leaves no
        // file behind.
        let ctx = match Context::with_metrics(&config_path, config.clone(), metrics) {
            Ok(c) => Arc::new(c),
            Err(e) => return fail(&e.to_string()),
        };
        let shutdown = CancellationToken::new();
        tokio::spawn(signals.handle(ctx.clone(), shutdown.clone(), notifier.clone()));
        let mut bound = listeners.each();
        bound.extend(metrics_listener.as_ref().map(|l| ("metrics", l)));
        let mut addresses = Vec::new();
        for (name, l) in bound {
            match l.local_addr() {
                Ok(a) => {
                    tracing::info!(target: LOG_TARGET, frontend = name, address = %a, "listening");
                    ctx.metrics.listening(name, a.to_string());
                    addresses.push(format!("{name} on {a}"));
                }
                Err(e) => return fail(&format!("{name} listener: {e}")),
            }
        }
        let metrics_task =
            metrics_listener.map(|l| tokio::spawn(health::serve(ctx.clone(), l, shutdown.clone())));
        let policy = ctx.engine().policy().clone();
        tracing::info!(
            target: LOG_TARGET,
            policy = %policy.path().display(),
            rules = policy.rules().len(),
            "tls-policyd {} started",
            env!("CARGO_PKG_VERSION")
        );
        drop(policy);
        let ready = format!("serving {}", addresses.join(", "));
        notifier.ready(&ready);
        crate::daemon::serve(ctx, listeners, shutdown).await;
        if let Some(t) = metrics_task {
            let _ = t.await;
        }
        tracing::info!(target: LOG_TARGET, "stopped");
        ExitCode::SUCCESS
    })
}

/// Report why the daemon cannot start on stderr; exit 1. For the journal,
/// each line has the error priority, `<3>`.
fn fail(e: &str, journal: bool) -> ExitCode {
    if journal {
        for line in e.lines() {
            eprintln!("<3>tls-policyd: {line}");
        }
        ExitCode::FAILURE
    } else {
        super::fail(e)
    }
}

/// Whether standard error is the systemd journal: systemd sets
/// `JOURNAL_STREAM` to the device and inode of the stream it connects a
/// service's standard error (or output) to; a child started from a
/// service inherits the variable but usually not the stream.
fn stderr_is_journal() -> bool {
    let Some(value) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let Some((dev, ino)) = value.to_str().and_then(|v| v.split_once(':')) else {
        return false;
    };
    let (Ok(dev), Ok(ino)) = (dev.parse::<libc::dev_t>(), ino.parse::<libc::ino_t>()) else {
        return false;
    };
    match nix::sys::stat::fstat(libc::STDERR_FILENO) {
        Ok(st) => st.st_dev == dev && st.st_ino == ino,
        Err(_) => false,
    }
}

/// Operational log lines for the journal: each line (a multi-line message
/// too) starts with its syslog priority, `<3>` for errors to `<7>` for
/// debug and trace, which journald takes as the entry's priority
/// (`journalctl -p warning`); the level in words follows, then the target
/// and the message; no timestamp, the journal has its own.
struct JournalFormat {
    inner: tracing_subscriber::fmt::format::Format<tracing_subscriber::fmt::format::Full, ()>,
}

impl JournalFormat {
    fn new() -> Self {
        JournalFormat {
            inner: tracing_subscriber::fmt::format::Format::default()
                .without_time()
                .with_level(false)
                .with_ansi(false),
        }
    }
}

/// The syslog priority journald gives a line with this level.
fn journal_priority(level: &tracing::Level) -> u8 {
    match *level {
        tracing::Level::ERROR => 3,
        tracing::Level::WARN => 4,
        tracing::Level::INFO => 6,
        _ => 7,
    }
}

impl<S, N> tracing_subscriber::fmt::FormatEvent<S, N> for JournalFormat
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    N: for<'a> tracing_subscriber::fmt::FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &tracing_subscriber::fmt::FmtContext<'_, S, N>,
        mut writer: tracing_subscriber::fmt::format::Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        let level = event.metadata().level();
        let mut text = String::new();
        self.inner.format_event(
            ctx,
            tracing_subscriber::fmt::format::Writer::new(&mut text),
            event,
        )?;
        let priority = journal_priority(level);
        let mut lines = text.trim_end_matches('\n').split('\n');
        let first = lines.next().unwrap_or_default();
        writeln!(writer, "<{priority}>{level} {first}")?;
        for line in lines {
            writeln!(writer, "<{priority}>{line}")?;
        }
        Ok(())
    }
}
