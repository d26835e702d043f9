//! TLS-RPT's keys in the shared store ([`ReportStore`], the
//! `tlsrpt::fleet::FleetReports` the daemon hands the report sender):
//!
//! ```text
//! PREFIX tlsrpt:DAY:DOMAIN        hash: host -> that host's snapshot (JSON)
//! PREFIX tlsrpt-send:DAY:DOMAIN   string: the lock (a token; SET NX PX)
//! PREFIX tlsrpt-sent:DAY:DOMAIN   string: the claim {"host","report_id"} (SET NX)
//! PREFIX tlsrpt-dest:DAY:DOMAIN   hash: destination -> "state host"
//! ```
//!
//! Snapshots, claims and destination notes are kept eight days; the lock
//! runs out after [`LOCK_TTL`]. A host's snapshot is one field, replaced
//! each time it is published, so publishing again never counts twice, and
//! the hash is its own index of the hosts (no SCAN). Reading is bounded:
//! at most `MAX_HOSTS` fields, each checked for its name and size before
//! it is read.

use std::time::Duration;

use redis::Value;
use serde::{Deserialize, Serialize};

use super::config::check_host_id;
use super::store::{Outcome, SharedStore};
use crate::metrics::{SharedOp, SharedResult};
use crate::tlsrpt::fleet::{
    FleetError, FleetFuture, FleetReports, KEEP, MAX_HOSTS, MAX_SNAPSHOT, Taken, token,
};
use crate::util::rate::RateLimit;

/// How long the lock holds at most (a host that stops holding it lets it
/// run out).
pub const LOCK_TTL: Duration = Duration::from_secs(60);
/// Longest claim value read.
const MAX_CLAIM: usize = 1024;
/// Longest report id in a claim.
const MAX_REPORT_ID: usize = 512;

/// Gives the lock back only to the token that holds it.
const UNLOCK: &str = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) else return 0 end";

#[derive(Serialize, Deserialize)]
struct Claim {
    host: String,
    report_id: String,
}

/// The fleet's TLS-RPT keys, for this host.
pub struct ReportStore {
    store: SharedStore,
    host: String,
    bad_log: RateLimit,
}

/// Whether `day` and `domain` may go into a key.
fn check_parts(day: &str, domain: &str) -> Result<(), FleetError> {
    let day_ok = day.len() == 10
        && day.bytes().enumerate().all(|(i, b)| {
            if i == 4 || i == 7 {
                b == b'-'
            } else {
                b.is_ascii_digit()
            }
        });
    let domain_ok = !domain.is_empty()
        && domain.len() <= 253
        && domain
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b));
    if day_ok && domain_ok {
        Ok(())
    } else {
        Err(FleetError(format!(
            "{:?} {:?} cannot name a key",
            crate::util::text::printable_ascii(day, 20),
            crate::util::text::printable_ascii(domain, 80)
        )))
    }
}

impl ReportStore {
    /// `host`: this host's name (checked by the configuration).
    pub fn new(store: SharedStore, host: String) -> ReportStore {
        ReportStore {
            store,
            host,
            bad_log: RateLimit::per_minute(5),
        }
    }

    /// The key of `what` for (day, domain).
    pub fn key(&self, what: &str, day: &str, domain: &str) -> Result<String, FleetError> {
        check_parts(day, domain)?;
        Ok(format!("{}{what}:{day}:{domain}", self.store.prefix()))
    }

    async fn run<T: redis::FromRedisValue>(
        &self,
        op: SharedOp,
        cmd: redis::Cmd,
    ) -> Result<T, FleetError> {
        match self.store.command::<T>(op, cmd).await {
            Some(Outcome::Answer(v)) => Ok(v),
            Some(Outcome::Timeout) => Err(FleetError("no answer in time".into())),
            Some(Outcome::Failed) => Err(FleetError("the store answered with an error".into())),
            None => Err(FleetError("the store is down".into())),
        }
    }

    fn answered(&self, op: SharedOp, r: SharedResult) {
        self.store.metrics().shared_request(op, r);
    }

    /// Something unusable in the store: logged (rate-limited) and counted.
    fn bad(&self, key: &str, label: &'static str, why: &str) {
        self.answered(SharedOp::Get, SharedResult::Invalid);
        self.store.metrics().error("shared", label);
        if let Some(more) = self.bad_log.admit() {
            tracing::warn!(key, problem = label, error = %crate::util::text::printable_ascii(why, 300),
                more, "unusable TLS-RPT value in the shared store ignored");
        }
    }

    async fn publish_at(
        &self,
        day: &str,
        domain: &str,
        snapshot: Vec<u8>,
    ) -> Result<(), FleetError> {
        let key = self.key("tlsrpt", day, domain)?;
        let mut set = redis::cmd("HSET");
        set.arg(&key).arg(&self.host).arg(snapshot);
        self.run::<i64>(SharedOp::Set, set).await?;
        let mut exp = redis::cmd("EXPIRE");
        exp.arg(&key).arg(KEEP.as_secs());
        self.run::<i64>(SharedOp::Set, exp).await?;
        self.answered(SharedOp::Set, SharedResult::Ok);
        Ok(())
    }

    async fn snapshots_at(
        &self,
        day: &str,
        domain: &str,
    ) -> Result<Vec<(String, Vec<u8>)>, FleetError> {
        let key = self.key("tlsrpt", day, domain)?;
        let mut len = redis::cmd("HLEN");
        len.arg(&key);
        let n: u64 = self.run(SharedOp::Get, len).await?;
        if n > MAX_HOSTS as u64 {
            let why = format!("{n} hosts, more than {MAX_HOSTS}");
            self.bad(&key, "tlsrpt_too_many_hosts", &why);
            return Err(FleetError(format!("{key}: {why}")));
        }
        let mut keys = redis::cmd("HKEYS");
        keys.arg(&key);
        let names: Vec<Vec<u8>> = self.run(SharedOp::Get, keys).await?;
        let mut out = Vec::new();
        for name in names.into_iter().take(MAX_HOSTS) {
            let host = match String::from_utf8(name) {
                Ok(h) if check_host_id(&h).is_ok() => h,
                Ok(h) => {
                    self.bad(&key, "tlsrpt_bad_host", &format!("field {h:?}"));
                    continue;
                }
                Err(_) => {
                    self.bad(&key, "tlsrpt_bad_host", "a field that is not UTF-8");
                    continue;
                }
            };
            let mut strlen = redis::cmd("HSTRLEN");
            strlen.arg(&key).arg(&host);
            let size: u64 = self.run(SharedOp::Get, strlen).await?;
            if size > MAX_SNAPSHOT as u64 {
                self.bad(
                    &key,
                    "tlsrpt_oversized",
                    &format!("host {host}: {size} bytes, more than {MAX_SNAPSHOT}"),
                );
                continue;
            }
            let mut get = redis::cmd("HGET");
            get.arg(&key).arg(&host);
            let v: Option<Vec<u8>> = self.run(SharedOp::Get, get).await?;
            if let Some(v) = v {
                out.push((host, v));
            }
        }
        self.answered(
            SharedOp::Get,
            if out.is_empty() {
                SharedResult::Miss
            } else {
                SharedResult::Hit
            },
        );
        Ok(out)
    }

    async fn lock_at(&self, day: &str, domain: &str) -> Result<Option<String>, FleetError> {
        let key = self.key("tlsrpt-send", day, domain)?;
        let t = token(&self.host);
        let mut set = redis::cmd("SET");
        set.arg(&key)
            .arg(&t)
            .arg("NX")
            .arg("PX")
            .arg(LOCK_TTL.as_millis() as u64);
        let v: Value = self.run(SharedOp::Set, set).await?;
        self.answered(SharedOp::Set, SharedResult::Ok);
        Ok(match v {
            Value::Nil => None,
            _ => Some(t),
        })
    }

    async fn unlock_at(&self, day: &str, domain: &str, token: &str) -> Result<(), FleetError> {
        let key = self.key("tlsrpt-send", day, domain)?;
        let mut eval = redis::cmd("EVAL");
        eval.arg(UNLOCK).arg(1).arg(&key).arg(token);
        self.run::<i64>(SharedOp::Set, eval).await?;
        Ok(())
    }

    async fn taken_at(&self, day: &str, domain: &str) -> Result<Option<Taken>, FleetError> {
        let key = self.key("tlsrpt-sent", day, domain)?;
        let mut get = redis::cmd("GETRANGE");
        get.arg(&key).arg(0).arg(MAX_CLAIM);
        let bytes: Vec<u8> = self.run(SharedOp::Get, get).await?;
        if bytes.is_empty() {
            return Ok(None);
        }
        // A claim this version cannot read keeps every host from sending
        // the fleet's report: the store is treated as unusable for it
        // (the report waits, then goes out partial).
        let claim = (bytes.len() <= MAX_CLAIM)
            .then(|| serde_json::from_slice::<Claim>(&bytes).ok())
            .flatten()
            .filter(|c| {
                check_host_id(&c.host).is_ok()
                    && !c.report_id.is_empty()
                    && c.report_id.len() <= MAX_REPORT_ID
                    && c.report_id.bytes().all(|b| b.is_ascii_graphic())
            });
        match claim {
            Some(c) => Ok(Some(Taken {
                host: c.host,
                report_id: c.report_id,
            })),
            None => {
                let why = String::from_utf8_lossy(&bytes).into_owned();
                self.bad(&key, "tlsrpt_bad_claim", &why);
                Err(FleetError(format!("{key}: a claim that cannot be read")))
            }
        }
    }

    async fn claim_at(
        &self,
        day: &str,
        domain: &str,
        report_id: &str,
    ) -> Result<Taken, FleetError> {
        let key = self.key("tlsrpt-sent", day, domain)?;
        let value = serde_json::to_string(&Claim {
            host: self.host.clone(),
            report_id: report_id.to_string(),
        })
        .map_err(|e| FleetError(e.to_string()))?;
        let mut set = redis::cmd("SET");
        set.arg(&key)
            .arg(value)
            .arg("NX")
            .arg("EX")
            .arg(KEEP.as_secs());
        let v: Value = self.run(SharedOp::Set, set).await?;
        self.answered(SharedOp::Set, SharedResult::Ok);
        if v != Value::Nil {
            return Ok(Taken {
                host: self.host.clone(),
                report_id: report_id.to_string(),
            });
        }
        self.taken_at(day, domain)
            .await?
            .ok_or_else(|| FleetError(format!("{key}: claimed, then gone")))
    }

    async fn note_at(
        &self,
        day: &str,
        domain: &str,
        destination: &str,
        state: &str,
    ) -> Result<(), FleetError> {
        let key = self.key("tlsrpt-dest", day, domain)?;
        let mut set = redis::cmd("HSET");
        set.arg(&key)
            .arg(crate::util::text::printable_ascii(destination, 1024))
            .arg(format!("{state} {}", self.host));
        self.run::<i64>(SharedOp::Set, set).await?;
        let mut exp = redis::cmd("EXPIRE");
        exp.arg(&key).arg(KEEP.as_secs());
        self.run::<i64>(SharedOp::Set, exp).await?;
        self.answered(SharedOp::Set, SharedResult::Ok);
        Ok(())
    }
}

impl FleetReports for ReportStore {
    fn host(&self) -> &str {
        &self.host
    }

    fn publish<'a>(
        &'a self,
        day: &'a str,
        domain: &'a str,
        snapshot: Vec<u8>,
    ) -> FleetFuture<'a, ()> {
        Box::pin(self.publish_at(day, domain, snapshot))
    }

    fn snapshots<'a>(
        &'a self,
        day: &'a str,
        domain: &'a str,
    ) -> FleetFuture<'a, Vec<(String, Vec<u8>)>> {
        Box::pin(self.snapshots_at(day, domain))
    }

    fn lock<'a>(&'a self, day: &'a str, domain: &'a str) -> FleetFuture<'a, Option<String>> {
        Box::pin(self.lock_at(day, domain))
    }

    fn unlock<'a>(&'a self, day: &'a str, domain: &'a str, token: &'a str) -> FleetFuture<'a, ()> {
        Box::pin(self.unlock_at(day, domain, token))
    }

    fn taken<'a>(&'a self, day: &'a str, domain: &'a str) -> FleetFuture<'a, Option<Taken>> {
        Box::pin(self.taken_at(day, domain))
    }

    fn claim<'a>(
        &'a self,
        day: &'a str,
        domain: &'a str,
        report_id: &'a str,
    ) -> FleetFuture<'a, Taken> {
        Box::pin(self.claim_at(day, domain, report_id))
    }

    fn note<'a>(
        &'a self,
        day: &'a str,
        domain: &'a str,
        destination: &'a str,
        state: &'a str,
    ) -> FleetFuture<'a, ()> {
        Box::pin(self.note_at(day, domain, destination, state))
    }

    fn unusable(&self, day: &str, domain: &str, host: &str, why: &str) {
        let key = format!("{}tlsrpt:{day}:{domain}", self.store.prefix());
        self.bad(&key, "tlsrpt_snapshot", &format!("host {host}: {why}"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shared::SharedConfig;
    use std::sync::Arc;

    fn store() -> ReportStore {
        let mut c = SharedConfig::new("redis://127.0.0.1:1/0");
        c.key_prefix = "fleet:".into();
        let s = SharedStore::new(&c, Arc::new(crate::metrics::Metrics::new())).unwrap();
        ReportStore::new(s, "mx-1".into())
    }

    #[test]
    fn keys_name_the_day_and_domain_and_refuse_what_does_not_fit() {
        let s = store();
        assert_eq!(
            s.key("tlsrpt", "2026-12-04", "r.example").unwrap(),
            "fleet:tlsrpt:2026-12-04:r.example"
        );
        assert_eq!(
            s.key("tlsrpt-send", "2026-12-04", "xn--bcher-kva.example")
                .unwrap(),
            "fleet:tlsrpt-send:2026-12-04:xn--bcher-kva.example"
        );
        for (day, domain) in [
            ("2026-12-4", "r.example"),
            ("2026/12/04", "r.example"),
            ("2026-12-04", ""),
            ("2026-12-04", "r example"),
            ("2026-12-04", "r:example"),
        ] {
            assert!(s.key("tlsrpt", day, domain).is_err(), "{day} {domain}");
        }
        let longest = format!("{}.example", "a".repeat(253 - 8));
        assert_eq!(longest.len(), 253);
        assert!(s.key("tlsrpt", "2026-12-04", &longest).is_ok());
        assert!(
            s.key("tlsrpt", "2026-12-04", &format!("a{longest}"))
                .is_err()
        );
    }

    #[test]
    fn a_store_not_connected_is_an_error_not_a_wait() {
        let s = store();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let e = rt.block_on(s.lock("2026-12-04", "r.example")).unwrap_err();
        assert!(e.0.contains("down"), "{e}");
        assert!(rt.block_on(s.taken("2026-12-04", "r.example")).is_err());
    }
}
