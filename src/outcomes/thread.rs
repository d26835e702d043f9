//! The follower's thread: the file or the journal, as configured.

use std::thread::JoinHandle;

use tokio_util::sync::CancellationToken;

use super::config::{LogSource, OutcomesConfig};
use super::journal_task::follow_journal;
use super::task::{FollowerDeps, follow_file};

/// Start the follower on a thread of its own; it ends when `stop` is
/// cancelled, after saving its position.
pub fn spawn(
    config: OutcomesConfig,
    deps: FollowerDeps,
    stop: CancellationToken,
) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name("outcomes".into())
        .spawn(move || match &config.log {
            LogSource::File(path) => follow_file(&config, path.clone(), &deps, &stop),
            LogSource::Journal(_) => follow_journal(&config, &deps, &stop),
        })
}
