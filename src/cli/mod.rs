//! The administrator's commands besides `serve`: `explain`, `probe`,
//! `check-config`, `cache` and `log`, one module each. Each returns text
//! (or an error text) so `main` only prints.

use std::path::Path;

use crate::config::Config;
use crate::engine::policy_file::PolicyFile;

mod cache;
mod check_config;
mod explain;
mod log;
mod probe;

pub use cache::{CacheCommand, cache};
pub use check_config::check_config;
pub use explain::explain;
pub use log::{LogOptions, log};
pub use probe::probe;

/// Load config and policy file, or say precisely what is wrong.
fn load(config_path: &Path) -> Result<(Config, PolicyFile), String> {
    let config = Config::load(config_path).map_err(|e| e.to_string())?;
    let policy = PolicyFile::load(&config.policy.file).map_err(|e| e.to_string())?;
    Ok((config, policy))
}
