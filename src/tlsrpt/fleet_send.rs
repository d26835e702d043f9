//! The sender's way for a fleet (`[shared]`): this host's counts
//! published as its snapshot, and a due report taken by one host.
//!
//! For each (day, domain) due: a host that finds the report taken by
//! another notes it locally as sent by the fleet (`tlsrpt list` shows
//! `fleet` and which host); otherwise it takes the short lock
//! `tlsrpt-send:DAY:DOMAIN`, looks again, merges every host's snapshot
//! with its own counts (read from its file), and claims the report with
//! its id (the claim, set only if absent, decides even if the lock ran
//! out); then it keeps and sends the report as a lone host does, and
//! retries stay with it. A host whose claim lost keeps nothing.
//!
//! The store unreachable at send time: the report waits (tried again at
//! each round) for [`STORE_WAIT`] from the time this process first found
//! it due with the store unreachable (and not before its day's end and
//! `send_delay` plus that); then this host sends its own counts only, as a
//! partial report with a report id naming it (`DAY_DOMAIN.HOST@SUBMITTER`),
//! logged as such. The collector then gets one report per host that could
//! not reach the store, never none. A restart starts the wait again: more
//! waiting, never a report sent sooner.

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use super::fleet::{self, FleetError, FleetReports, STORE_WAIT, Taken};
use super::record::ReportUri;
use super::report::{DayCounts, Report, day_name};
use super::sender::{DomainResult, ReportSender, count};
use super::store::{TlsRptStore, TlsRptStoreError};
use crate::metrics::ReportResult;

/// What the store said of a report.
enum Step {
    /// Another host has it.
    Taken(Taken),
    /// Another host holds the lock now.
    Busy,
    /// This host has it: the fleet's report.
    Mine(Report),
}

/// What was published, by (day, domain): the session count then.
pub type Published = HashMap<(String, String), u64>;

/// Whether a report that waits for the store since `since` goes out
/// partial at `now` (its day ended at `ended`).
fn partial_due(
    ended: SystemTime,
    send_delay: Duration,
    since: SystemTime,
    now: SystemTime,
) -> bool {
    now >= (ended + send_delay).max(since) + STORE_WAIT
}

impl ReportSender {
    /// Publish this host's counts of `days` that changed since they were
    /// last published. Stops at the first the store does not take (it
    /// logs and counts that) and returns `true` then: counts are still to
    /// be published (store down, or not yet connected), soon rather than
    /// at the next full round.
    pub async fn publish_counts(
        &self,
        store: &TlsRptStore,
        days: &[SystemTime],
        published: &mut Published,
        now: SystemTime,
    ) -> Result<bool, TlsRptStoreError> {
        let Some(fleet) = &self.fleet else {
            return Ok(false);
        };
        let names: Vec<String> = days.iter().map(|d| day_name(*d)).collect();
        published.retain(|(day, _), _| names.contains(day));
        for day in &names {
            for (domain, sessions) in store.domains(day)? {
                let key = (day.clone(), domain.clone());
                if published.get(&key) == Some(&sessions) {
                    continue;
                }
                let (counts, _) = store.counts(day, &domain)?;
                let bytes = match fleet::encode(day, &domain, fleet.host(), &counts, now) {
                    Ok(b) => b,
                    Err(e) => {
                        if let Some(m) = &self.metrics {
                            m.error("tlsrpt", e.kind());
                        }
                        tracing::error!(day, domain, error = %e,
                            "TLS-RPT: this host's counts cannot be published; the fleet's report will lack them");
                        published.insert(key, sessions);
                        continue;
                    }
                };
                if fleet.publish(day, &domain, bytes).await.is_err() {
                    return Ok(true);
                }
                published.insert(key, sessions);
            }
        }
        Ok(false)
    }

    /// A due report of (day, domain) in a fleet; `rua` from its record.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn fleet_domain(
        &self,
        store: &TlsRptStore,
        fleet: &dyn FleetReports,
        day: SystemTime,
        domain: &str,
        rua: &[ReportUri],
        dry_run: bool,
        now: SystemTime,
    ) -> Result<DomainResult, TlsRptStoreError> {
        let name = day_name(day);
        let (own, skipped) = store.counts(&name, domain)?;
        if skipped > 0 {
            tracing::warn!(day = %name, domain, skipped,
                "TLS-RPT: sessions written by another version are left out of the report");
        }
        let submitter = self.config.submitter();
        if dry_run {
            let counts = match fleet.snapshots(&name, domain).await {
                Ok(snaps) => self.merged(fleet, &own, &snaps, &name, domain, now).0,
                Err(_) => own,
            };
            return Ok(DomainResult::WouldSend {
                report: Report::build(&submitter, domain, day, &counts),
                destinations: rua.to_vec(),
            });
        }
        let step = self.step(fleet, day, &name, domain, &own, now).await;
        if step.is_ok() {
            self.store_waits.done(&name, domain);
        }
        match step {
            Ok(Step::Mine(report)) => self.keep_and_send(store, &report, rua, now).await,
            Ok(Step::Taken(t)) => {
                let detail = format!("sent by host {} (report {})", t.host, t.report_id);
                if store.fleet_sent(&name, domain, &detail, now)? {
                    tracing::info!(day = %name, domain, host = %t.host, report_id = %t.report_id,
                        "TLS-RPT: the fleet's report is sent by another host");
                    count(&self.metrics, ReportResult::Fleet);
                }
                Ok(DomainResult::Fleet {
                    host: t.host,
                    report_id: t.report_id,
                })
            }
            Ok(Step::Busy) => Ok(DomainResult::Waiting(
                "another host of the fleet is building it".into(),
            )),
            Err(e) => {
                if let Some(m) = &self.metrics {
                    m.error("tlsrpt", "fleet_store");
                }
                let ended = day + Duration::from_secs(86_400);
                let since = self.store_waits.since(&name, domain, now);
                if !partial_due(ended, self.config.send_delay, since, now) {
                    return Ok(DomainResult::Waiting(format!("the shared store: {e}")));
                }
                self.store_waits.done(&name, domain);
                // Fail-safe: a report with this host's counts rather than
                // none; its id names the host so that it is not taken for
                // the fleet's.
                let id = format!("{name}_{domain}.{}@{}", fleet.host(), submitter.submitter);
                tracing::warn!(day = %name, domain, error = %e, report_id = %id,
                    "TLS-RPT: the shared store cannot be reached; a partial report with this host's counts only is sent");
                if let Some(m) = &self.metrics {
                    m.error("tlsrpt", "fleet_partial");
                }
                let report = Report::build_with_id(&submitter, domain, day, &own, id);
                self.keep_and_send(store, &report, rua, now).await
            }
        }
    }

    /// The fleet's counts, the snapshots left out told to the store.
    fn merged(
        &self,
        fleet: &dyn FleetReports,
        own: &DayCounts,
        snaps: &[(String, Vec<u8>)],
        day: &str,
        domain: &str,
        now: SystemTime,
    ) -> (DayCounts, Vec<String>) {
        let (counts, hosts, left_out) =
            fleet::fleet_counts(fleet.host(), own, snaps, day, domain, now);
        for (host, why) in left_out {
            fleet.unusable(day, domain, &host, &why.to_string());
            if let Some(m) = &self.metrics {
                m.error("tlsrpt", why.kind());
            }
        }
        (counts, hosts)
    }

    async fn step(
        &self,
        fleet: &dyn FleetReports,
        day: SystemTime,
        name: &str,
        domain: &str,
        own: &DayCounts,
        now: SystemTime,
    ) -> Result<Step, FleetError> {
        if let Some(t) = fleet.taken(name, domain).await? {
            if t.host != fleet.host() {
                return Ok(Step::Taken(t));
            }
        }
        let Some(token) = fleet.lock(name, domain).await? else {
            return Ok(Step::Busy);
        };
        let r = self.under_lock(fleet, day, name, domain, own, now).await;
        // A lock not given back runs out by itself.
        let _ = fleet.unlock(name, domain, &token).await;
        r
    }

    async fn under_lock(
        &self,
        fleet: &dyn FleetReports,
        day: SystemTime,
        name: &str,
        domain: &str,
        own: &DayCounts,
        now: SystemTime,
    ) -> Result<Step, FleetError> {
        let before = fleet.taken(name, domain).await?;
        if let Some(t) = &before
            && t.host != fleet.host()
        {
            return Ok(Step::Taken(t.clone()));
        }
        let snaps = fleet.snapshots(name, domain).await?;
        let (counts, hosts) = self.merged(fleet, own, &snaps, name, domain, now);
        let report = Report::build(&self.config.submitter(), domain, day, &counts);
        // Taken by this host before (it stopped before keeping the
        // report): the claim stands; the report is built again.
        let t = match before {
            Some(t) => t,
            None => fleet.claim(name, domain, &report.report_id).await?,
        };
        if t.host != fleet.host() {
            return Ok(Step::Taken(t));
        }
        tracing::info!(day = name, domain, hosts = %hosts.join(","), report_id = %report.report_id,
            "TLS-RPT: the fleet's report is built by this host");
        Ok(Step::Mine(report))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tlsrpt::fleet::StoreWaits;
    use crate::tlsrpt::report::parse_day;

    #[test]
    fn a_partial_report_waits_for_the_store_from_when_it_was_first_missed() {
        let ended = parse_day("2026-12-05").unwrap();
        let delay = Duration::from_secs(3600);
        // Missed at once after the delay: STORE_WAIT later, not sooner.
        let since = ended + delay;
        assert!(!partial_due(ended, delay, since, since));
        assert!(!partial_due(
            ended,
            delay,
            since,
            since + STORE_WAIT - Duration::from_secs(1)
        ));
        assert!(partial_due(ended, delay, since, since + STORE_WAIT));
        // A host started long after the day (the store not connected yet
        // at its first round) waits STORE_WAIT from then.
        let late = ended + Duration::from_secs(20 * 3600);
        assert!(!partial_due(ended, delay, late, late));
        assert!(partial_due(ended, delay, late, late + STORE_WAIT));
        let waits = StoreWaits::default();
        assert_eq!(waits.since("2026-12-04", "r.example", late), late);
        assert_eq!(
            waits.since("2026-12-04", "r.example", late + STORE_WAIT),
            late
        );
        waits.done("2026-12-04", "r.example");
        assert_eq!(
            waits.since("2026-12-04", "r.example", late + delay),
            late + delay
        );
    }
}
