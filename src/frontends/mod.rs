//! Front doors: thin adapters between a Postfix protocol and the engine.

pub mod attrs;
pub mod message;
pub mod milter;
pub mod netstring;
pub mod policy;
pub mod socketmap;

use std::sync::Arc;

use crate::engine::Engine;
use crate::log::record::DecisionLog;
use crate::metrics::Metrics;

/// The engine and the decision log, wherever they live.
pub trait Backend: Send + Sync {
    fn engine(&self) -> &Engine;
    fn decision_log(&self) -> &DecisionLog;
    /// Where requests, decisions and errors are counted, if anywhere.
    fn metrics(&self) -> Option<&Arc<Metrics>> {
        None
    }
}
