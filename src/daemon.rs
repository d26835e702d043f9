//! The running daemon: shared state for every front door, reload, and
//! [`serve`].

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use arc_swap::ArcSwap;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::engine::Engine;
use crate::frontends::socketmap;
use crate::listen::{ListenAddr, Listener};
use crate::log::record::{DecisionLog, Target};
use crate::metrics::Metrics;
use crate::sources::static_file::StaticPolicy;

/// Everything a front door needs, shared behind an `Arc`.
pub struct Context {
    pub engine: Engine,
    pub log: DecisionLog,
    /// Counters for the metrics listener and `status`.
    pub metrics: Arc<Metrics>,
    socketmap: ArcSwap<socketmap::Settings>,
    config_path: PathBuf,
    config: ArcSwap<Config>,
    last_reload: ArcSwap<SystemTime>,
}

/// Why the daemon could not start.
#[derive(Debug)]
pub enum StartError {
    Config(crate::config::ConfigError),
    Policy(crate::sources::static_file::PolicyError),
    Log(Target, std::io::Error),
    Bind(ListenAddr, std::io::Error),
}

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StartError::Config(e) => e.fmt(f),
            StartError::Policy(e) => e.fmt(f),
            StartError::Log(t, e) => write!(f, "cannot open decision log {t}: {e}"),
            StartError::Bind(a, e) => write!(f, "cannot listen on {a}: {e}"),
        }
    }
}

impl std::error::Error for StartError {}

/// What a reload changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReloadReport {
    pub rules: usize,
    /// Settings that only take effect on restart and differ now.
    pub needs_restart: Vec<&'static str>,
}

impl Context {
    /// Load the policy file and open the decision log for a config.
    pub fn new(config_path: &Path, config: Config) -> Result<Context, StartError> {
        Context::with_metrics(config_path, config, Arc::new(Metrics::new()))
    }

    /// [`Context::new`] recording into `metrics` (which the operational
    /// log's [`crate::metrics::ErrorCapture`] may share).
    pub fn with_metrics(
        config_path: &Path,
        config: Config,
        metrics: Arc<Metrics>,
    ) -> Result<Context, StartError> {
        let policy = StaticPolicy::load(&config.policy.file).map_err(StartError::Policy)?;
        let target = Target::from_setting(&config.log.decisions);
        let log = DecisionLog::start(target.clone()).map_err(|e| StartError::Log(target, e))?;
        let settings = config
            .socketmap
            .as_ref()
            .map(socketmap::Settings::from)
            .ok_or_else(|| {
                StartError::Config(crate::config::ConfigError {
                    messages: vec![format!("{}: no [socketmap] section", config_path.display())],
                })
            })?;
        Ok(Context {
            engine: Engine::new(policy),
            log,
            metrics,
            socketmap: ArcSwap::from_pointee(settings),
            config_path: config_path.to_path_buf(),
            config: ArcSwap::from_pointee(config),
            last_reload: ArcSwap::from_pointee(SystemTime::now()),
        })
    }

    pub fn socketmap_settings(&self) -> arc_swap::Guard<Arc<socketmap::Settings>> {
        self.socketmap.load()
    }

    pub fn config(&self) -> Arc<Config> {
        self.config.load_full()
    }

    pub fn last_reload(&self) -> SystemTime {
        **self.last_reload.load()
    }

    /// SIGHUP: reopen the decision log (logrotate), then re-read the config
    /// and the policy file. Nothing changes unless both load cleanly: a
    /// broken file leaves the running policy in place.
    pub fn reload(&self) -> Result<ReloadReport, StartError> {
        let result = self.reload_inner();
        match &result {
            Ok(_) => self.metrics.reload(Ok(())),
            Err(e) => {
                self.metrics.error("reload", "invalid_config");
                self.metrics.reload(Err(e.to_string()));
            }
        }
        result
    }

    fn reload_inner(&self) -> Result<ReloadReport, StartError> {
        let old = self.config.load_full();
        let new = match Config::load(&self.config_path) {
            Ok(c) => c,
            Err(e) => {
                self.log.reopen(Target::from_setting(&old.log.decisions));
                return Err(StartError::Config(e));
            }
        };
        let policy = match StaticPolicy::load(&new.policy.file) {
            Ok(p) => p,
            Err(e) => {
                self.log.reopen(Target::from_setting(&old.log.decisions));
                return Err(StartError::Policy(e));
            }
        };
        let rules = policy.rules().len();
        let mut needs_restart = Vec::new();
        if let (Some(o), Some(n)) = (&old.socketmap, &new.socketmap) {
            if o.listen != n.listen {
                needs_restart.push("socketmap.listen");
            }
            if o.max_connections != n.max_connections {
                needs_restart.push("socketmap.max_connections");
            }
            if (&o.socket_mode, &o.socket_owner, &o.socket_group)
                != (&n.socket_mode, &n.socket_owner, &n.socket_group)
            {
                needs_restart.push("socketmap.socket_*");
            }
        }
        if old.log.level != new.log.level {
            needs_restart.push("log.level");
        }
        if old.metrics != new.metrics {
            needs_restart.push("metrics");
        }
        self.engine.replace_policy(policy);
        if let Some(s) = &new.socketmap {
            self.socketmap.store(Arc::new(socketmap::Settings::from(s)));
        }
        self.log.reopen(Target::from_setting(&new.log.decisions));
        self.config.store(Arc::new(new));
        self.last_reload.store(Arc::new(SystemTime::now()));
        Ok(ReloadReport {
            rules,
            needs_restart,
        })
    }
}

/// The bound sockets of every front door.
pub struct Listeners {
    pub socketmap: Listener,
}

impl Listeners {
    /// Bind what the config asks for. Must run inside a tokio runtime.
    pub fn bind(config: &Config) -> Result<Listeners, StartError> {
        let s = config.socketmap.as_ref().ok_or_else(|| {
            StartError::Config(crate::config::ConfigError {
                messages: vec!["no [socketmap] section".into()],
            })
        })?;
        let socketmap = Listener::bind(&s.listen, &s.socket_options())
            .map_err(|e| StartError::Bind(s.listen.clone(), e))?;
        Ok(Listeners { socketmap })
    }
}

/// Serve every front door until `shutdown` is cancelled, then let open
/// connections finish and flush the decision log.
pub async fn serve(ctx: Arc<Context>, listeners: Listeners, shutdown: CancellationToken) {
    let max = ctx
        .config()
        .socketmap
        .as_ref()
        .map_or(1, |s| s.max_connections);
    socketmap::serve(listeners.socketmap, ctx.clone(), max, shutdown).await;
    ctx.log.close();
}
