//! The running daemon: shared state for every front door, reload, and
//! [`serve`].

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use arc_swap::ArcSwap;
use tokio_util::sync::CancellationToken;

use crate::cache::CacheObserver;
use crate::cache::persist::{PersistError, PersistedStore};
use crate::config::Config;
use crate::engine::policy_file::PolicyFile;
use crate::engine::refusal::TlsKnowledge;
use crate::engine::{Engine, Source};
use crate::frontends::{Backend, Live, milter, policy_server, socketmap};
use crate::listen::{ListenAddr, Listener};
use crate::log::record::{DecisionLog, Target};
use crate::metrics::{Cache, Metrics};
use crate::prober::{Prober, ProberError};
use crate::shared::{SharedError, SharedStore};
use crate::sources::dane::{DaneError, DaneSource};
use crate::sources::mta_sts::{MtaSts, MtaStsError};
use crate::store::Store;

mod outcomes;
pub mod preflight;
mod reload;
mod signals;
mod tlsrpt;

pub use reload::ReloadReport;
pub use signals::Signals;

/// Everything a front door needs, shared behind an `Arc`.
pub struct Context {
    /// The engine and the front doors' settings: replaced whole on reload.
    live: ArcSwap<Live>,
    pub log: Arc<DecisionLog>,
    /// Counters for the metrics listener and `status`.
    pub metrics: Arc<Metrics>,
    /// The STARTTLS prober: what early refusals know. Built when a front
    /// door that refuses is configured.
    pub prober: Option<Prober>,
    /// The MTA-STS source, when `[mta_sts]` enables it.
    pub mta_sts: Option<MtaSts>,
    /// The DANE source, when `[dane]` enables it.
    pub dane: Option<DaneSource>,
    /// The outcome follower's index and status, when `[outcomes]` is on.
    pub outcomes: Option<outcomes::Outcomes>,
    /// The store a fleet shares, when `[shared]` is on.
    pub shared: Option<SharedStore>,
    config_path: PathBuf,
    config: ArcSwap<Config>,
    last_reload: ArcSwap<SystemTime>,
}

impl Backend for Context {
    fn live(&self) -> Arc<Live> {
        self.live.load_full()
    }

    fn decision_log(&self) -> &DecisionLog {
        &self.log
    }

    fn metrics(&self) -> Option<&Arc<Metrics>> {
        Some(&self.metrics)
    }
}

/// Why the daemon could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(crate::config::ConfigError),
    #[error(transparent)]
    Policy(crate::engine::policy_file::PolicyFileError),
    #[error("cannot open decision log {0}: {1}")]
    Log(Target, std::io::Error),
    /// The section (`socketmap`, …) whose `listen` failed.
    #[error("key `{0}.listen`: cannot listen on {1}: {2}")]
    Bind(&'static str, ListenAddr, std::io::Error),
    #[error("dns: {0}")]
    Dns(crate::dns::DnsError),
    #[error("mta_sts: {0}")]
    MtaSts(crate::sources::mta_sts::MtaStsError),
    #[error(transparent)]
    Prober(ProberError),
    #[error(transparent)]
    Dane(crate::sources::dane::DaneError),
    #[error(transparent)]
    Shared(SharedError),
}

/// The DANE source, when `[dane]` enables it: its results kept in the
/// store `store` gives for the configured cache file (loaded now), its
/// cache counted by `observer`.
pub fn dane_source(
    config: &Config,
    store: impl FnOnce(&Path) -> Result<Arc<dyn PersistedStore>, PersistError>,
    observer: Arc<dyn CacheObserver>,
) -> Result<Option<DaneSource>, StartError> {
    let Some(d) = config.dane.as_ref().filter(|d| d.enabled) else {
        return Ok(None);
    };
    let store = store(&d.cache_file).map_err(|e| StartError::Dane(DaneError::Store(e)))?;
    crate::sources::dane::open(d, &config.dns, Some(store), observer)
        .map(Some)
        .map_err(StartError::Dane)
}

/// Open the cache file for writing.
fn open_store(path: &Path) -> Result<Arc<Store>, PersistError> {
    Store::open(path)
        .map(Arc::new)
        .map_err(|e| PersistError(e.to_string()))
}

/// The live configuration for `config`: each front door's settings from
/// its section; a section that is absent keeps `old`'s settings (removing a
/// front door takes a restart), or the defaults at start.
fn live_config(engine: Engine, config: &Config, old: Option<&Live>) -> Live {
    let mut live = match old {
        Some(old) => Live {
            engine,
            ..old.clone()
        },
        None => Live::new(engine),
    };
    if let Some(s) = &config.socketmap {
        live.socketmap = socketmap::SocketmapSettings::from(s);
    }
    if let Some(s) = &config.policy_server {
        live.policy_server = policy_server::PolicyServerSettings::from(s);
    }
    if let Some(s) = &config.milter {
        live.milter = milter::MilterSettings::from(s);
    }
    live
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
        let policy = PolicyFile::load(&config.policy.file).map_err(StartError::Policy)?;
        let sts_config = config.mta_sts.as_ref().filter(|m| m.enabled);
        // Early refusals and quarantine (policy server, milter) rely on the prober.
        let refuses = config.policy_server.is_some() || config.milter.is_some();
        let resolver = if refuses || sts_config.is_some() {
            Some(crate::dns::build_resolver(&config.dns).map_err(StartError::Dns)?)
        } else {
            None
        };
        let prober = match (refuses, &resolver) {
            (true, Some(r)) => Some(
                Prober::with_observer(
                    config.prober.clone(),
                    r.clone(),
                    metrics.cache_observer(Cache::Prober),
                )
                .map_err(StartError::Prober)?,
            ),
            _ => None,
        };
        // One cache file, one writer: DANE shares MTA-STS's store when both
        // name the same file.
        let sts_store = match (sts_config, &resolver) {
            (Some(c), Some(_)) => Some((
                c.cache_file.clone(),
                open_store(&c.cache_file).map_err(|e| StartError::MtaSts(MtaStsError::Store(e)))?,
            )),
            _ => None,
        };
        let mta_sts = match (sts_config, &resolver, &sts_store) {
            (Some(c), Some(r), Some((_, store))) => Some(
                MtaSts::open(
                    c,
                    r.clone(),
                    store.clone(),
                    metrics.cache_observer(Cache::MtaSts),
                )
                .map_err(StartError::MtaSts)?,
            ),
            _ => None,
        };
        let dane = dane_source(
            &config,
            |path| match &sts_store {
                Some((p, store)) if p == path => Ok(store.clone() as Arc<dyn PersistedStore>),
                _ => open_store(path).map(|s| s as Arc<dyn PersistedStore>),
            },
            metrics.cache_observer(Cache::Dane),
        )?;
        // The fleet's store: asked on a local miss, told what is learned.
        let shared = match &config.shared {
            Some(c) => Some(SharedStore::new(c, metrics.clone()).map_err(StartError::Shared)?),
            None => None,
        };
        if let (Some(sh), Some(sts)) = (&shared, &mta_sts) {
            sts.set_shared(Arc::new(sh.clone()));
            let sts = sts.clone();
            sh.replay_with(Box::new(move || sts.held_entries()));
        }
        if let (Some(sh), Some(d)) = (&shared, &dane) {
            d.set_shared(Arc::new(sh.clone()));
            let d = d.clone();
            sh.replay_with(Box::new(move || d.held_entries()));
        }
        if let (Some(sh), Some(p)) = (&shared, &prober) {
            p.set_shared(Arc::new(sh.clone()));
        }
        // Precedence: DANE before MTA-STS (RFC 8461 section 2).
        let mut sources: Vec<Arc<dyn Source>> = Vec::new();
        if let Some(d) = &dane {
            sources.push(Arc::new(d.clone()));
        }
        if let Some(s) = &mta_sts {
            sources.push(Arc::new(s.clone()));
        }
        let target = Target::from_setting(&config.log.decisions);
        let log = DecisionLog::start(target.clone()).map_err(|e| StartError::Log(target, e))?;
        let outcomes = config
            .outcomes
            .as_ref()
            .map(|o| outcomes::build(o, &config.log.decisions, &log, &metrics));
        let engine = Engine::with_sources(policy, sources).observed_by(metrics.clone());
        let live = live_config(engine, &config, None);
        Ok(Context {
            live: ArcSwap::from_pointee(live),
            log: Arc::new(log),
            metrics,
            prober,
            mta_sts,
            dane,
            outcomes,
            shared,
            config_path: config_path.to_path_buf(),
            config: ArcSwap::from_pointee(config),
            last_reload: ArcSwap::from_pointee(SystemTime::now()),
        })
    }

    /// What early refusals rely on: the prober, or nothing.
    pub fn knowledge(&self) -> Arc<dyn TlsKnowledge> {
        match &self.prober {
            Some(p) => Arc::new(p.clone()),
            None => Arc::new(crate::engine::refusal::NoKnowledge),
        }
    }

    /// The engine in force now (its policy file, its sources).
    pub fn engine(&self) -> Engine {
        self.live.load().engine.clone()
    }

    pub fn config(&self) -> Arc<Config> {
        self.config.load_full()
    }

    pub fn last_reload(&self) -> SystemTime {
        **self.last_reload.load()
    }
}

impl crate::health::Observed for Context {
    fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    fn policy(&self) -> Arc<PolicyFile> {
        self.engine().policy().clone()
    }

    fn last_reload(&self) -> SystemTime {
        Context::last_reload(self)
    }

    fn decision_log_target(&self) -> String {
        self.config().log.decisions.display().to_string()
    }

    fn decision_log_dropped(&self) -> u64 {
        self.log.dropped()
    }

    fn outcomes(&self) -> Option<crate::health::OutcomesHealth> {
        let o = self.outcomes.as_ref()?;
        Some(o.status.health(&self.metrics, SystemTime::now()))
    }

    fn tlsrpt_on(&self) -> bool {
        self.outcomes.is_some() && self.config().tlsrpt.as_ref().is_some_and(|t| t.enabled)
    }

    fn shared(&self) -> Option<crate::health::SharedHealth> {
        let s = self.shared.as_ref()?.status();
        Some(crate::health::SharedHealth {
            url: s.url,
            state: s.state.to_string(),
            problem: s.problem,
            master: s.master,
            notices: Some(
                if s.notices {
                    "subscribed"
                } else {
                    "not subscribed"
                }
                .to_string(),
            ),
        })
    }
}

/// The bound sockets of every front door.
pub struct Listeners {
    pub socketmap: Option<Listener>,
    pub policy_server: Option<Listener>,
    pub milter: Option<Listener>,
}

impl Listeners {
    /// Bind what the config asks for. Must run inside a tokio runtime.
    pub fn bind(config: &Config) -> Result<Listeners, StartError> {
        let bind = |key, addr: &ListenAddr, opts: &crate::listen::SocketOptions| {
            Listener::bind(addr, opts).map_err(|e| StartError::Bind(key, addr.clone(), e))
        };
        let socketmap = match &config.socketmap {
            Some(s) => Some(bind("socketmap", &s.listen, &s.socket_options())?),
            None => None,
        };
        let policy_server = match &config.policy_server {
            Some(s) => Some(bind("policy_server", &s.listen, &s.socket_options())?),
            None => None,
        };
        let milter = match &config.milter {
            Some(s) => Some(bind("milter", &s.listen, &s.socket_options())?),
            None => None,
        };
        Ok(Listeners {
            socketmap,
            policy_server,
            milter,
        })
    }

    /// Each bound front door with its name, for the "listening" lines.
    pub fn each(&self) -> Vec<(&'static str, &Listener)> {
        [
            ("socketmap", self.socketmap.as_ref()),
            ("policy", self.policy_server.as_ref()),
            ("milter", self.milter.as_ref()),
        ]
        .into_iter()
        .filter_map(|(name, l)| l.map(|l| (name, l)))
        .collect()
    }
}

/// Serve every front door until `shutdown` is cancelled, then let open
/// connections finish and flush the decision log.
pub async fn serve(ctx: Arc<Context>, listeners: Listeners, shutdown: CancellationToken) {
    let config = ctx.config();
    let mut tasks = tokio::task::JoinSet::new();
    if let (Some(l), Some(c)) = (listeners.socketmap, &config.socketmap) {
        let deps = socketmap::SocketmapDeps {
            backend: ctx.clone(),
            max_connections: c.max_connections,
        };
        tasks.spawn(socketmap::serve(l, deps, shutdown.clone()));
    }
    if let (Some(l), Some(c)) = (listeners.policy_server, &config.policy_server) {
        let deps = policy_server::PolicyDeps {
            backend: ctx.clone(),
            knowledge: ctx.knowledge(),
            max_connections: c.max_connections,
        };
        tasks.spawn(policy_server::serve(l, deps, shutdown.clone()));
    }
    if let (Some(l), Some(c)) = (listeners.milter, &config.milter) {
        let deps = milter::MilterDeps::new(ctx.clone(), c, ctx.knowledge());
        tasks.spawn(milter::serve(l, deps, shutdown.clone()));
    }
    // TLS reports: sessions counted from the follower's deliveries, sent
    // by a thread of their own.
    let tlsrpt_on = config
        .tlsrpt
        .as_ref()
        .filter(|t| t.enabled && ctx.outcomes.is_some());
    let tlsrpt_resolver = match tlsrpt_on.map(|_| crate::dns::build_resolver(&config.dns)) {
        Some(Ok(r)) => Some(r),
        Some(Err(e)) => {
            tracing::error!(error = %e, "TLS-RPT: no resolver; records are not looked up and no report is sent");
            ctx.metrics.error("tlsrpt", "setup");
            None
        }
        None => None,
    };
    let (counter, hook) = match tlsrpt_on.map(|t| tlsrpt::counter(&ctx, t, tlsrpt_resolver.clone()))
    {
        Some((c, h)) => (Some(c), Some(h)),
        None => (None, None),
    };
    let sender = tlsrpt_resolver.and_then(|r| tlsrpt::spawn_sender(&ctx, r, shutdown.clone()));
    drop(config);
    let follower = outcomes::spawn(&ctx, hook, shutdown.clone());
    tasks.spawn(timer_anchor(shutdown.clone()));
    if let Some(s) = &ctx.shared {
        tasks.spawn(s.clone().run(shutdown.clone()));
    }
    match (&ctx.mta_sts, &ctx.dane) {
        (Some(s), _) => {
            tasks.spawn(s.clone().maintain(shutdown.clone()));
        }
        (None, Some(d)) => {
            tasks.spawn(d.clone().maintain_store(shutdown.clone()));
        }
        (None, None) => {}
    }
    while tasks.join_next().await.is_some() {}
    // The follower saves its position after its last records are queued;
    // the log is closed after that.
    if let Some(f) = follower {
        let _ = tokio::task::spawn_blocking(move || f.join()).await;
    }
    if let Some(s) = sender {
        let _ = tokio::task::spawn_blocking(move || s.join()).await;
    }
    if let Some(c) = counter {
        let _ = tokio::task::spawn_blocking(move || c.finish()).await;
    }
    if let Some(store) = ctx.mta_sts.as_ref().and_then(|s| s.store()) {
        store.close();
    }
    if let Some(d) = &ctx.dane {
        d.close_store();
    }
    ctx.log.close();
}

/// Keeps a timer due within [`TIMER_ANCHOR`], until shutdown.
///
/// Every request arms a timeout (`request_timeout`, the idle timeout) that
/// is almost always cancelled long before it is due. Tokio wakes its driver
/// (a write to an eventfd, then one more pass through epoll) whenever a new
/// timer is due before every timer it already has; with a timer always due
/// sooner than any request's timeout, arming one costs no system call. The
/// price is one wake-up per [`TIMER_ANCHOR`].
async fn timer_anchor(shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(TIMER_ANCHOR);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = shutdown.cancelled() => break,
        }
    }
}

/// How often [`timer_anchor`] wakes.
const TIMER_ANCHOR: std::time::Duration = std::time::Duration::from_secs(1);
