//! The signals the daemon acts on: SIGHUP reloads, SIGTERM and SIGINT stop.

use std::sync::Arc;

use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio_util::sync::CancellationToken;

use super::Context;
use crate::notify::Notifier;

/// The target of the reload and shutdown lines in the operational log: the
/// crate's name, as for the start-up lines.
const LOG_TARGET: &str = "tls_policyd";

/// The signals the daemon acts on.
pub struct Signals {
    hup: Signal,
    term: Signal,
    int: Signal,
}

impl Signals {
    /// Catch SIGHUP, SIGTERM and SIGINT from now on. Must run inside a
    /// tokio runtime.
    pub fn install() -> std::io::Result<Signals> {
        Ok(Signals {
            hup: signal(SignalKind::hangup())?,
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
        })
    }

    /// SIGHUP reloads; SIGTERM and SIGINT cancel the shutdown token. systemd
    /// hears of both.
    pub async fn handle(
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
                            tracing::error!(target: LOG_TARGET, error = %e, "reload failed; the previous configuration keeps serving");
                            notifier.ready("serving the previous configuration; the last reload failed");
                            continue;
                        }
                    };
                    match result {
                        Ok(r) => {
                            tracing::info!(target: LOG_TARGET, rules = r.rules, "reloaded");
                            if !r.needs_restart.is_empty() {
                                tracing::warn!(target: LOG_TARGET, settings = ?r.needs_restart, "changed settings take effect on restart");
                            }
                            notifier.ready(&format!("serving; reloaded, {} rules", r.rules));
                        }
                        Err(e) => {
                            tracing::error!(target: LOG_TARGET, error = %e, "reload failed; the previous configuration keeps serving");
                            notifier.ready("serving the previous configuration; the last reload failed");
                        }
                    }
                },
                _ = self.term.recv() => break,
                _ = self.int.recv() => break,
            }
        }
        tracing::info!(target: LOG_TARGET, "shutting down");
        notifier.stopping();
        shutdown.cancel();
    }
}
