//! Filling the store with what this host holds: each time the store
//! becomes reachable (the first connection, and every return after it was
//! down), every valid policy the sources hold in memory is written to the
//! keys the store does not have (`SET … NX`), so a store that was
//! restarted empty, or missed what was learned while it was down, is
//! filled again without waiting for new discoveries. A key the store
//! already holds is left as it is: another host may have written a newer
//! entry.

use redis::Value;
use tokio_util::sync::CancellationToken;

use super::store::{Held, SharedStore};
use super::value;
use crate::cache::persist::Entry;
use crate::metrics::{SharedOp, SharedResult};

/// How often a store that is down is looked at (each time no sooner than
/// its back-off allows).
const PROBE_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// How one replay went.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Replayed {
    /// Written: the store did not have them.
    pub written: usize,
    /// Left: the store had an entry.
    pub present: usize,
    /// Not written: the store went down or did not answer.
    pub left: usize,
}

impl SharedStore {
    /// Add a source of entries to write when the store becomes reachable.
    pub fn replay_with(&self, held: Held) {
        self.replays()
            .sources
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(held);
    }

    /// Write what the sources hold each time the store becomes reachable,
    /// until `shutdown`.
    pub(super) async fn replay_loop(self, shutdown: CancellationToken) {
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = self.replays().wanted.notified() => {}
            }
            let r = self.replay_now().await;
            if r.written + r.present + r.left > 0 {
                tracing::info!(
                    written = r.written,
                    already_there = r.present,
                    not_written = r.left,
                    "shared store given what this host holds"
                );
            }
        }
    }

    /// While the store is down, ask it (`PING`) each time its back-off
    /// has passed, so that it is seen back (and filled again) without
    /// waiting for a lookup to miss, until `shutdown`.
    pub(super) async fn probe_loop(self, shutdown: CancellationToken) {
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(PROBE_EVERY) => {}
            }
            if self.is_down_and_due()
                && self
                    .run_command::<Value>(SharedOp::Ping, redis::cmd("PING"))
                    .await
                    .is_some()
            {
                self.count(SharedOp::Ping, SharedResult::Ok);
            }
        }
    }

    /// Write every held entry the store lacks, now.
    pub async fn replay_now(&self) -> Replayed {
        let mut r = Replayed::default();
        // Built off the threads that answer Postfix: a cache of many
        // policies takes a while to serialise.
        let me = self.clone();
        let entries = tokio::task::spawn_blocking(move || me.replays().entries())
            .await
            .unwrap_or_default();
        for entry in entries {
            match self.write_missing(&entry).await {
                Some(true) => r.written += 1,
                Some(false) => r.present += 1,
                None => r.left += 1,
            }
        }
        r
    }

    /// `SET key value NX EX ttl`: `Some(true)` written, `Some(false)` the
    /// store has the key (or the entry has expired), `None` not asked or
    /// no answer.
    async fn write_missing(&self, entry: &Entry) -> Option<bool> {
        let Ok(v) = value::encode(entry) else {
            // Too large for the store: nothing to replay.
            return Some(false);
        };
        let ttl = entry
            .expires_at
            .duration_since(std::time::SystemTime::now())
            .map_or(0, |d| d.as_secs());
        if ttl == 0 {
            return Some(false);
        }
        let mut cmd = redis::cmd("SET");
        cmd.arg(self.key(entry.kind, &entry.domain))
            .arg(v)
            .arg("NX")
            .arg("EX")
            .arg(ttl);
        match self.run_command::<Value>(SharedOp::Replay, cmd).await {
            Some(Value::Nil) => {
                self.count(SharedOp::Replay, SharedResult::Present);
                Some(false)
            }
            Some(_) => {
                self.count(SharedOp::Replay, SharedResult::Ok);
                Some(true)
            }
            None => None,
        }
    }
}
