//! `serve`: load the configuration, set up the operational log, build the
//! runtime, bind every listener and hand over to the daemon until a
//! signal stops it.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use super::fail;
use crate::config::Config;
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
            tracing::warn!(target: LOG_TARGET, address = %a, "the metrics listener has no authentication and is not on loopback");
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
