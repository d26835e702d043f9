//! Wiring of the outcome follower: its index of decisions (fed by the
//! decision log's writer), its status for `/health`, and its thread.

use std::sync::Arc;
use std::thread::JoinHandle;

use tokio_util::sync::CancellationToken;

use super::Context;
use crate::engine::key::Destination;
use crate::log::record::{DecisionLog, Target};
use crate::metrics::{Cache, Metrics};
use crate::outcomes::config::OutcomesConfig;
use crate::outcomes::correlate::{DecisionIndex, IndexObservers};
use crate::outcomes::status::FollowerStatus;
use crate::outcomes::task::{FollowerDeps, Primer, RuleLookup};
use crate::outcomes::thread;

/// The follower's parts that live as long as the daemon.
pub struct Outcomes {
    pub config: OutcomesConfig,
    pub index: Arc<DecisionIndex>,
    pub status: Arc<FollowerStatus>,
    /// When the index began noting the records written.
    pub noting_since: std::time::SystemTime,
}

/// The parts for `config`, the index tapped into `log`.
pub(super) fn build(
    config: &OutcomesConfig,
    log: &DecisionLog,
    metrics: &Arc<Metrics>,
) -> Outcomes {
    let observers = IndexObservers {
        hops: metrics.cache_observer(Cache::OutcomeHops),
        processes: metrics.cache_observer(Cache::OutcomeProcesses),
        messages: metrics.cache_observer(Cache::OutcomeMessages),
    };
    let index = Arc::new(DecisionIndex::new(config.limits(), observers));
    log.set_tap(index.clone());
    Outcomes {
        config: config.clone(),
        index,
        status: Arc::new(FollowerStatus::new(config.log.to_string())),
        noting_since: std::time::SystemTime::now(),
    }
}

/// Start the follower thread, when `[outcomes]` is on.
pub(super) fn spawn(ctx: &Arc<Context>, stop: CancellationToken) -> Option<JoinHandle<()>> {
    let o = ctx.outcomes.as_ref()?;
    let live = ctx.clone();
    // The operator's rule as it stands, for deliveries nobody asked about.
    let rule_for: RuleLookup = Arc::new(move |domain: &str| {
        let engine = live.engine();
        let policy = engine.policy();
        let dest = Destination::parse(domain).ok()?;
        policy.lookup(&dest).map(|hit| policy.decision(hit))
    });
    // Decisions written to a file before the index noted them are read
    // back from it.
    let primer = match Target::from_setting(&ctx.config().log.decisions) {
        Target::File(decisions) => Some(Primer {
            decisions,
            until: o.noting_since,
        }),
        Target::Stdout => None,
    };
    let deps = FollowerDeps {
        log: ctx.log.clone(),
        index: o.index.clone(),
        metrics: Some(ctx.metrics.clone()),
        rule_for,
        status: o.status.clone(),
        primer,
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
