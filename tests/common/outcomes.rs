//! The outcome follower as a test sees it: the `[outcomes]` section that
//! follows a Postfix log file, and the delivery records it writes to the
//! decision log, waited for by what Postfix logged.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::Daemon;

/// The `[outcomes]` section for a Postfix log file: read from its
/// beginning, checked every 50 ms, the position kept in `state`.
pub fn section(log: &Path, state: &Path) -> String {
    format!(
        "\n[outcomes]\nlog = \"file:{}\"\nstate_file = \"{}\"\nstart = \"beginning\"\n\
         poll_interval = \"50ms\"\n",
        log.display(),
        state.display()
    )
}

/// One delivery as Postfix logged it: queue id, recipient (as logged) and
/// status (`sent`, `deferred`, `bounced`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Attempt {
    pub queue_id: String,
    pub recipient: String,
    pub status: String,
}

impl Attempt {
    pub fn new(queue_id: &str, recipient: &str, status: &str) -> Attempt {
        Attempt {
            queue_id: queue_id.into(),
            recipient: recipient.into(),
            status: status.into(),
        }
    }

    /// The attempt a delivery record is about.
    pub fn of(record: &Value) -> Attempt {
        let s = |k: &str| record[k].as_str().unwrap_or_default();
        Attempt::new(s("queue_id"), s("recipient"), s("status"))
    }
}

/// The delivery records among decision records.
pub fn deliveries(records: &[Value]) -> Vec<Value> {
    records
        .iter()
        .filter(|r| r["frontend"] == "delivery")
        .cloned()
        .collect()
}

/// How many times each attempt occurs.
pub fn counts<'a>(attempts: impl IntoIterator<Item = &'a Attempt>) -> BTreeMap<Attempt, usize> {
    let mut m = BTreeMap::new();
    for a in attempts {
        *m.entry(a.clone()).or_insert(0) += 1;
    }
    m
}

/// Wait up to `timeout` until the decision log holds a delivery record for
/// each of `want` (as many as it lists of each); every delivery record
/// then. Panics naming the attempts without a record.
pub fn wait_for(daemon: &Daemon, want: &[Attempt], timeout: Duration) -> Vec<Value> {
    let wanted = counts(want);
    let deadline = Instant::now() + timeout;
    loop {
        let records = deliveries(&daemon.decisions());
        let got = counts(records.iter().map(Attempt::of).collect::<Vec<_>>().iter());
        let missing: Vec<(&Attempt, usize)> = wanted
            .iter()
            .filter(|(a, n)| got.get(*a).copied().unwrap_or(0) < **n)
            .map(|(a, n)| (a, *n))
            .collect();
        if missing.is_empty() {
            return records;
        }
        assert!(
            Instant::now() < deadline,
            "no delivery record within {timeout:?} for {missing:#?}\nrecords: {records:#?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The one delivery record for a recipient of a message with `status`,
/// waiting up to `timeout` for it.
pub fn record(
    daemon: &Daemon,
    queue_id: &str,
    recipient: &str,
    status: &str,
    timeout: Duration,
) -> Value {
    let want = Attempt::new(queue_id, recipient, status);
    let all = wait_for(daemon, std::slice::from_ref(&want), timeout);
    let mut found: Vec<Value> = all.into_iter().filter(|r| Attempt::of(r) == want).collect();
    assert_eq!(found.len(), 1, "{want:?}: {found:#?}");
    found.remove(0)
}
