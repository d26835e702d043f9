//! Wiring of the outcome follower: its index of decisions (fed by the
//! decision log's writer), its status for `/health`, and its thread.

use std::path::Path;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::SystemTime;

use tokio_util::sync::CancellationToken;

use super::Context;
use crate::engine::key::Destination;
use crate::log::record::{DecisionLog, Target};
use crate::metrics::{Cache, Metrics};
use crate::outcomes::config::OutcomesConfig;
use crate::outcomes::correlate::{DecisionIndex, IndexObservers};
use crate::outcomes::rebuild::{MAX_REBUILD_BYTES, rebuild};
use crate::outcomes::status::FollowerStatus;
use crate::outcomes::task::{DeliveryHook, FollowerDeps, RuleLookup};
use crate::outcomes::thread;

/// The follower's parts that live as long as the daemon.
pub struct Outcomes {
    pub config: OutcomesConfig,
    pub index: Arc<DecisionIndex>,
    pub status: Arc<FollowerStatus>,
    /// When the index began noting the records written.
    pub noting_since: std::time::SystemTime,
}

/// The parts for `config`, the index tapped into `log` after learning
/// back what the decision log at `decisions` holds (when it is a file).
pub(super) fn build(
    config: &OutcomesConfig,
    decisions: &Path,
    log: &DecisionLog,
    metrics: &Arc<Metrics>,
) -> Outcomes {
    let observers = IndexObservers {
        hops: metrics.cache_observer(Cache::OutcomeHops),
        processes: metrics.cache_observer(Cache::OutcomeProcesses),
        messages: metrics.cache_observer(Cache::OutcomeMessages),
    };
    let index = Arc::new(DecisionIndex::new(config.limits(), observers));
    if let Target::File(path) = Target::from_setting(decisions) {
        let window = config.message_window.max(config.hop_window);
        match rebuild(&index, &path, MAX_REBUILD_BYTES, window, SystemTime::now()) {
            Ok(s) => tracing::info!(
                log = %path.display(),
                lookups = s.lookups,
                messages = s.messages,
                "outcomes: decisions read back from the decision log"
            ),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(log = %path.display(), error = %e,
                    "outcomes: cannot read back the decision log; deliveries of messages decided before the start may be judged without their decision");
                metrics.error("outcomes", "rebuild");
            }
        }
    }
    log.set_tap(index.clone());
    Outcomes {
        config: config.clone(),
        index,
        status: Arc::new(FollowerStatus::new(config.log.to_string())),
        noting_since: std::time::SystemTime::now(),
    }
}

/// Start the follower thread, when `[outcomes]` is on.
pub(super) fn spawn(
    ctx: &Arc<Context>,
    on_delivery: Option<DeliveryHook>,
    stop: CancellationToken,
) -> Option<JoinHandle<()>> {
    let o = ctx.outcomes.as_ref()?;
    let live = ctx.clone();
    // The operator's rule as it stands, for deliveries nobody asked about.
    let rule_for: RuleLookup = Arc::new(move |domain: &str| {
        let engine = live.engine();
        let policy = engine.policy();
        let dest = Destination::parse(domain).ok()?;
        policy.lookup(&dest).map(|hit| policy.decision(hit))
    });
    let deps = FollowerDeps {
        log: ctx.log.clone(),
        index: o.index.clone(),
        metrics: Some(ctx.metrics.clone()),
        rule_for,
        status: o.status.clone(),
        on_delivery,
    };
    match thread::spawn(o.config.clone(), deps, stop) {
        Ok(h) => Some(h),
        Err(e) => {
            tracing::error!(error = %e, "cannot start the outcome follower thread");
            ctx.metrics.error("outcomes", "thread");
            None
        }
    }
}
