//! TLS-RPT for a fleet of hosts sharing a store (`[shared]`): each host
//! publishes its own counts of a (day, domain) as a snapshot that replaces
//! its last one (so a retry or a restart never counts twice), and when the
//! day is due one host (the one that takes the lock and then the claim)
//! merges every host's snapshot into one report with the fleet's counts
//! and sends it; the others note it as sent by the fleet.
//!
//! [`FleetReports`] is what the sender asks; the daemon hands it the
//! shared store's implementation (`crate::shared::reports`). A snapshot is
//! JSON, bounded ([`MAX_SNAPSHOT`]) and checked against the key it was
//! read from: one that does not decode, names another day, domain or
//! host, or holds counts past [`MAX_COUNT`] is left out (logged and
//! counted by the store's side).

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::pin::Pin;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::report::{AppliedPolicy, DayCounts, FailureKey, PolicyCounts};

/// Longest snapshot, in bytes.
pub const MAX_SNAPSHOT: usize = 512 * 1024;
/// Most hosts whose snapshots are merged into one report.
pub const MAX_HOSTS: usize = 256;
/// Largest count one snapshot may hold for one line.
pub const MAX_COUNT: u64 = 1 << 40;
/// The snapshot format.
pub const VERSION: u32 = 1;
/// How long snapshots and marks are kept in the store.
pub const KEEP: Duration = Duration::from_secs(8 * 86_400);
/// A day is merged at the earliest this long after it ended, so that
/// every running host has published its last counts of it (hosts publish
/// at each round, every five minutes).
pub const FLEET_SETTLE: Duration = Duration::from_secs(600);
/// While the store cannot be reached, a due report waits this long past
/// its day's end and `send_delay`; then this host sends its own counts
/// only (a partial report, with a report id of its own).
pub const STORE_WAIT: Duration = Duration::from_secs(4 * 3600);

/// The store could not be asked, or answered with an error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct FleetError(pub String);

/// What a [`FleetReports`] call returns.
pub type FleetFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, FleetError>> + Send + 'a>>;

/// Which host took a report, and its id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Taken {
    pub host: String,
    pub report_id: String,
}

/// The fleet's share of the store. Days are `YYYY-MM-DD`, domains lower
/// case A-labels.
pub trait FleetReports: Send + Sync {
    /// This host's name in the fleet.
    fn host(&self) -> &str;
    /// Keep `snapshot` as this host's counts of (day, domain), replacing
    /// the one before.
    fn publish<'a>(
        &'a self,
        day: &'a str,
        domain: &'a str,
        snapshot: Vec<u8>,
    ) -> FleetFuture<'a, ()>;
    /// Every host's snapshot of (day, domain), as kept: (host, bytes).
    fn snapshots<'a>(
        &'a self,
        day: &'a str,
        domain: &'a str,
    ) -> FleetFuture<'a, Vec<(String, Vec<u8>)>>;
    /// Take the lock of (day, domain) for a short while: its token, or
    /// `None` while another host holds it.
    fn lock<'a>(&'a self, day: &'a str, domain: &'a str) -> FleetFuture<'a, Option<String>>;
    /// Give the lock back (only if `token` still holds it).
    fn unlock<'a>(&'a self, day: &'a str, domain: &'a str, token: &'a str) -> FleetFuture<'a, ()>;
    /// Who took the report of (day, domain), if a host did.
    fn taken<'a>(&'a self, day: &'a str, domain: &'a str) -> FleetFuture<'a, Option<Taken>>;
    /// Take the report for this host, with `report_id`: the host that has
    /// it afterwards (this one, or one that was first).
    fn claim<'a>(
        &'a self,
        day: &'a str,
        domain: &'a str,
        report_id: &'a str,
    ) -> FleetFuture<'a, Taken>;
    /// Note what became of one destination (for the other hosts' view).
    fn note<'a>(
        &'a self,
        day: &'a str,
        domain: &'a str,
        destination: &'a str,
        state: &'a str,
    ) -> FleetFuture<'a, ()>;
    /// A snapshot that was left out: logged and counted.
    fn unusable(&self, day: &str, domain: &str, host: &str, why: &str);
}

/// Why a snapshot was left out.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SnapshotError {
    #[error("{0} bytes, more than {MAX_SNAPSHOT}")]
    Oversized(usize),
    #[error("not a snapshot: {0}")]
    Garbage(String),
    #[error("format {0}, later than this version reads")]
    FutureVersion(u64),
    #[error("{0}")]
    Mismatch(String),
}

impl SnapshotError {
    /// The `kind` label of `errors_total`.
    pub fn kind(&self) -> &'static str {
        match self {
            SnapshotError::Oversized(_) => "tlsrpt_oversized",
            SnapshotError::Garbage(_) => "tlsrpt_garbage",
            SnapshotError::FutureVersion(_) => "tlsrpt_future_version",
            SnapshotError::Mismatch(_) => "tlsrpt_mismatch",
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct Failure {
    key: FailureKey,
    count: u64,
}

#[derive(Debug, Serialize, Deserialize)]
struct Line {
    policy: AppliedPolicy,
    successful: u64,
    #[serde(default)]
    failures: Vec<Failure>,
}

#[derive(Debug, Serialize, Deserialize)]
struct Snapshot {
    v: u32,
    day: String,
    domain: String,
    host: String,
    /// When it was published (seconds since the epoch).
    at: u64,
    policies: Vec<Line>,
}

fn secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// The snapshot of `host`'s counts of (day, domain), published at `now`.
pub fn encode(
    day: &str,
    domain: &str,
    host: &str,
    counts: &DayCounts,
    now: SystemTime,
) -> Result<Vec<u8>, SnapshotError> {
    let s = Snapshot {
        v: VERSION,
        day: day.into(),
        domain: domain.into(),
        host: host.into(),
        at: secs(now),
        policies: counts
            .policies
            .iter()
            .map(|(p, c)| Line {
                policy: p.clone(),
                successful: c.successful,
                failures: c
                    .failures
                    .iter()
                    .map(|(k, &n)| Failure {
                        key: k.clone(),
                        count: n,
                    })
                    .collect(),
            })
            .collect(),
    };
    let out = serde_json::to_vec(&s).map_err(|e| SnapshotError::Garbage(e.to_string()))?;
    if out.len() > MAX_SNAPSHOT {
        return Err(SnapshotError::Oversized(out.len()));
    }
    Ok(out)
}

/// The counts a snapshot read under (day, domain, host) holds, checked
/// at `now`.
pub fn decode(
    bytes: &[u8],
    day: &str,
    domain: &str,
    host: &str,
    now: SystemTime,
) -> Result<DayCounts, SnapshotError> {
    if bytes.len() > MAX_SNAPSHOT {
        return Err(SnapshotError::Oversized(bytes.len()));
    }
    #[derive(Deserialize)]
    struct Version {
        v: serde_json::Value,
    }
    let garbage = |e: serde_json::Error| {
        SnapshotError::Garbage(crate::util::text::printable_ascii(&e.to_string(), 200))
    };
    let version: Version = serde_json::from_slice(bytes).map_err(garbage)?;
    match version.v.as_u64() {
        Some(v) if v > u64::from(VERSION) => return Err(SnapshotError::FutureVersion(v)),
        Some(v) if v == u64::from(VERSION) => {}
        _ => return Err(SnapshotError::Garbage(format!("version {}", version.v))),
    }
    let s: Snapshot = serde_json::from_slice(bytes).map_err(garbage)?;
    let mismatch = |what: &str, got: &str| {
        Err(SnapshotError::Mismatch(format!(
            "holds {what} {:?}, read under another",
            crate::util::text::printable_ascii(got, 80)
        )))
    };
    if s.day != day {
        return mismatch("day", &s.day);
    }
    if s.domain != domain {
        return mismatch("domain", &s.domain);
    }
    if s.host != host {
        return mismatch("host", &s.host);
    }
    if s.at > secs(now).saturating_add(300) {
        return Err(SnapshotError::Mismatch(format!(
            "published at {}, in the future",
            s.at
        )));
    }
    let mut counts = DayCounts::default();
    for line in s.policies {
        if line.policy.policy_domain != domain {
            return mismatch("a policy of domain", &line.policy.policy_domain);
        }
        let entry = counts.policies.entry(line.policy).or_default();
        add(&mut entry.successful, line.successful)?;
        for f in line.failures {
            add(entry.failures.entry(f.key).or_default(), f.count)?;
        }
    }
    Ok(counts)
}

fn add(to: &mut u64, n: u64) -> Result<(), SnapshotError> {
    if n > MAX_COUNT {
        return Err(SnapshotError::Mismatch(format!(
            "a count of {n}, more than {MAX_COUNT}"
        )));
    }
    *to = to.saturating_add(n);
    Ok(())
}

/// `into` plus `more`: each policy's successful sessions and each
/// failure's count summed.
pub fn merge(into: &mut DayCounts, more: &DayCounts) {
    for (policy, c) in &more.policies {
        let entry: &mut PolicyCounts = into.policies.entry(policy.clone()).or_default();
        entry.successful = entry.successful.saturating_add(c.successful);
        for (k, n) in &c.failures {
            let to = entry.failures.entry(k.clone()).or_default();
            *to = to.saturating_add(*n);
        }
    }
}

/// The fleet's counts: `own` (this host's, read from its own file) plus
/// every other host's usable snapshot. Returns the counts, the hosts in
/// them (sorted), and the snapshots left out as (host, why).
pub fn fleet_counts(
    own_host: &str,
    own: &DayCounts,
    snapshots: &[(String, Vec<u8>)],
    day: &str,
    domain: &str,
    now: SystemTime,
) -> (DayCounts, Vec<String>, Vec<(String, SnapshotError)>) {
    let mut counts = own.clone();
    let mut hosts = BTreeMap::new();
    hosts.insert(own_host.to_string(), ());
    let mut left_out = Vec::new();
    for (host, bytes) in snapshots {
        // This host's own counts come from its file, fresher than what it
        // published.
        if host == own_host || hosts.contains_key(host) {
            continue;
        }
        match decode(bytes, day, domain, host, now) {
            Ok(c) => {
                merge(&mut counts, &c);
                hosts.insert(host.clone(), ());
            }
            Err(e) => left_out.push((host.clone(), e)),
        }
    }
    (counts, hosts.into_keys().collect(), left_out)
}

/// (day, domain) pairs at most remembered in [`StoreWaits`].
const MAX_WAITS: usize = 100_000;

/// When each (day, domain) was first found due with the store
/// unreachable (by this process).
#[derive(Debug, Default)]
pub struct StoreWaits(Mutex<HashMap<(String, String), SystemTime>>);

impl StoreWaits {
    /// Since when (day, domain) waits for the store, counting from `now`
    /// if it did not.
    pub fn since(&self, day: &str, domain: &str, now: SystemTime) -> SystemTime {
        let mut m = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if m.len() >= MAX_WAITS {
            m.clear();
        }
        *m.entry((day.to_string(), domain.to_string()))
            .or_insert(now)
    }

    pub fn done(&self, day: &str, domain: &str) {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&(day.to_string(), domain.to_string()));
    }
}

/// A random token for the lock.
pub fn token(host: &str) -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write(host.as_bytes());
    h.write_u128(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    format!("{host}:{:016x}", h.finish())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tlsrpt::report::{PolicyType, ResultType};

    const DAY: &str = "2026-12-04";
    const DOMAIN: &str = "r.example";

    fn now() -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_800_000_000)
    }

    fn policy(t: PolicyType) -> AppliedPolicy {
        AppliedPolicy {
            policy_type: t,
            policy_string: vec![],
            policy_domain: DOMAIN.into(),
            mx_host: vec![],
        }
    }

    fn failure(ip: &str) -> FailureKey {
        FailureKey {
            result_type: ResultType::StarttlsNotSupported,
            sending_mta_ip: None,
            receiving_mx_hostname: Some("mx.r.example".into()),
            receiving_ip: Some(ip.parse().unwrap()),
            failure_reason_code: None,
        }
    }

    fn counts(ok: u64, failed: &[(&str, u64)]) -> DayCounts {
        let mut c = DayCounts::default();
        let e = c.policies.entry(policy(PolicyType::Sts)).or_default();
        e.successful = ok;
        for (ip, n) in failed {
            e.failures.insert(failure(ip), *n);
        }
        c
    }

    #[test]
    fn a_snapshot_round_trips_and_is_checked_against_its_key() {
        let c = counts(3, &[("192.0.2.1", 2)]);
        let b = encode(DAY, DOMAIN, "a", &c, now()).unwrap();
        assert_eq!(decode(&b, DAY, DOMAIN, "a", now()), Ok(c.clone()));
        let kind = |r: Result<DayCounts, SnapshotError>| r.unwrap_err().kind();
        assert_eq!(
            kind(decode(&b, "2026-12-05", DOMAIN, "a", now())),
            "tlsrpt_mismatch"
        );
        assert_eq!(
            kind(decode(&b, DAY, "s.example", "a", now())),
            "tlsrpt_mismatch"
        );
        assert_eq!(kind(decode(&b, DAY, DOMAIN, "b", now())), "tlsrpt_mismatch");
        // Published more than five minutes ahead of this host's clock.
        let ahead = encode(DAY, DOMAIN, "a", &c, now() + Duration::from_secs(301)).unwrap();
        assert_eq!(
            kind(decode(&ahead, DAY, DOMAIN, "a", now())),
            "tlsrpt_mismatch"
        );
        let d = |t: &str| decode(t.as_bytes(), DAY, DOMAIN, "a", now());
        assert_eq!(kind(d("")), "tlsrpt_garbage");
        assert_eq!(kind(d("{\"v\":\"1\"}")), "tlsrpt_garbage");
        assert_eq!(kind(d("{\"v\":1}")), "tlsrpt_garbage");
        assert_eq!(
            d("{\"v\":2,\"x\":[]}"),
            Err(SnapshotError::FutureVersion(2))
        );
        let huge = format!(
            "{{\"v\":1,\"day\":\"{DAY}\",\"domain\":\"{DOMAIN}\",\"host\":\"a\",\"at\":1,\
             \"policies\":[{{\"policy\":{{\"policy-type\":\"sts\",\"policy-domain\":\"{DOMAIN}\"}},\
             \"successful\":{}}}]}}",
            MAX_COUNT + 1
        );
        assert_eq!(kind(d(&huge)), "tlsrpt_mismatch");
        let other = huge
            .replace(&(MAX_COUNT + 1).to_string(), &MAX_COUNT.to_string())
            .replace(
                "\"policy-domain\":\"r.example\"",
                "\"policy-domain\":\"x.example\"",
            );
        assert_eq!(kind(d(&other)), "tlsrpt_mismatch");
        let exact = huge.replace(&(MAX_COUNT + 1).to_string(), &MAX_COUNT.to_string());
        assert_eq!(
            d(&exact).unwrap().policies[&policy(PolicyType::Sts)].successful,
            MAX_COUNT
        );
    }

    #[test]
    fn size_limit_exact_boundary() {
        let base = encode(DAY, DOMAIN, "a", &DayCounts::default(), now()).unwrap();
        // Padding in the host name field is refused by the key check, so
        // pad with spaces JSON allows after the object.
        let mut at = base.clone();
        at.resize(MAX_SNAPSHOT, b' ');
        assert!(decode(&at, DAY, DOMAIN, "a", now()).is_ok());
        let mut over = base;
        over.resize(MAX_SNAPSHOT + 1, b' ');
        assert_eq!(
            decode(&over, DAY, DOMAIN, "a", now()),
            Err(SnapshotError::Oversized(MAX_SNAPSHOT + 1))
        );
        let mut big = DayCounts::default();
        let e = big.policies.entry(policy(PolicyType::Sts)).or_default();
        for i in 0..20_000u32 {
            e.failures
                .insert(failure(&std::net::Ipv4Addr::from(i).to_string()), 1);
        }
        assert!(matches!(
            encode(DAY, DOMAIN, "a", &big, now()),
            Err(SnapshotError::Oversized(_))
        ));
    }

    #[test]
    fn the_fleet_counts_sum_every_host_once_and_leave_garbage_out() {
        let own = counts(3, &[("192.0.2.1", 1)]);
        let b = counts(2, &[("192.0.2.1", 4), ("192.0.2.2", 1)]);
        let mut c = counts(0, &[]);
        c.policies
            .entry(policy(PolicyType::NoPolicyFound))
            .or_default()
            .successful = 5;
        let snaps = vec![
            // Its own published snapshot is older than its file: not used.
            (
                "a".to_string(),
                encode(DAY, DOMAIN, "a", &counts(1, &[]), now()).unwrap(),
            ),
            (
                "b".to_string(),
                encode(DAY, DOMAIN, "b", &b, now()).unwrap(),
            ),
            (
                "c".to_string(),
                encode(DAY, DOMAIN, "c", &c, now()).unwrap(),
            ),
            ("d".to_string(), b"\x01not json{".to_vec()),
            // Copied from host b's field: names b, read under e.
            (
                "e".to_string(),
                encode(DAY, DOMAIN, "b", &b, now()).unwrap(),
            ),
        ];
        let (sum, hosts, left_out) = fleet_counts("a", &own, &snaps, DAY, DOMAIN, now());
        assert_eq!(hosts, ["a", "b", "c"]);
        let sts = &sum.policies[&policy(PolicyType::Sts)];
        assert_eq!(sts.successful, 5);
        assert_eq!(sts.failures[&failure("192.0.2.1")], 5);
        assert_eq!(sts.failures[&failure("192.0.2.2")], 1);
        assert_eq!(
            sum.policies[&policy(PolicyType::NoPolicyFound)].successful,
            5
        );
        let kinds: Vec<_> = left_out
            .iter()
            .map(|(h, e)| (h.as_str(), e.kind()))
            .collect();
        assert_eq!(kinds, [("d", "tlsrpt_garbage"), ("e", "tlsrpt_mismatch")]);
        // Merging the same snapshots again gives the same counts: a
        // snapshot replaces, it never adds.
        let (again, _, _) = fleet_counts("a", &own, &snaps, DAY, DOMAIN, now());
        assert_eq!(again, sum);
    }

    #[test]
    fn tokens_differ() {
        let a = token("h");
        assert!(a.starts_with("h:"));
        assert_ne!(a, token("h"));
    }
}
