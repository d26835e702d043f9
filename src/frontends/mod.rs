//! Front doors: thin adapters between a Postfix protocol and the engine.

pub mod attrs;
pub mod message;
pub mod milter;
pub mod netstring;
pub mod policy_server;
pub mod socketmap;

use std::sync::Arc;

use crate::engine::Engine;
use crate::engine::decision::Decision;
use crate::engine::key::Destination;
use crate::engine::malformed;
use crate::log::record::DecisionLog;
use crate::metrics::Metrics;
use crate::util::rate::RateLimit;

/// Everything a reload replaces, in one value: the engine (with the
/// policy file) and every front door's reloadable settings. The daemon
/// swaps it whole, so an answer never mixes two configurations.
#[derive(Clone)]
pub struct Live {
    pub engine: Engine,
    pub socketmap: socketmap::SocketmapSettings,
    pub policy_server: policy_server::PolicyServerSettings,
    pub milter: milter::MilterSettings,
}

impl Live {
    /// `engine` with every front door's default settings.
    pub fn new(engine: Engine) -> Live {
        Live {
            engine,
            socketmap: socketmap::SocketmapSettings::default(),
            policy_server: policy_server::PolicyServerSettings::default(),
            milter: milter::MilterSettings::default(),
        }
    }
}

/// The longest a message door (policy server, milter) takes to answer one
/// request unless its section says; after it, the fail-safe answer.
pub fn default_request_timeout() -> std::time::Duration {
    std::time::Duration::from_secs(10)
}

/// What every front door is handed: the live configuration, the decision
/// log and the metrics, wherever they live.
pub trait Backend: Send + Sync {
    /// The configuration in force now. Read once per request (the milter:
    /// once per connection) and used for the whole answer.
    fn live(&self) -> Arc<Live>;
    fn decision_log(&self) -> &DecisionLog;
    /// Where requests, decisions and errors are counted, if anywhere.
    fn metrics(&self) -> Option<&Arc<Metrics>> {
        None
    }
}

/// Log lines a minute about keys that are not destinations but still
/// govern the answer, for all doors together.
static HELD_KEY_LOG: RateLimit = RateLimit::per_minute(10);

/// A key that did not parse but named a rule (its answer, or a temporary
/// failure): counted in `errors_total{component, kind="malformed_key"}`
/// and logged, at most [`HELD_KEY_LOG`]'s lines a minute. Nothing for any
/// other key.
pub fn note_malformed_key(
    backend: &dyn Backend,
    component: &'static str,
    key: &str,
    dest: Option<&Destination>,
    decision: &Decision,
) {
    if !malformed::held(dest, decision) {
        return;
    }
    if let Some(m) = backend.metrics() {
        m.error(component, "malformed_key");
    }
    if let Some(unlogged) = HELD_KEY_LOG.admit() {
        tracing::warn!(
            door = component,
            key = %crate::util::text::printable_ascii(key, 300),
            answer = %decision.policy,
            temporary = decision.temporary,
            rule = decision.rule.unwrap_or(0),
            unlogged,
            "malformed key names a ruled domain: {}",
            decision.reason
        );
    }
}
