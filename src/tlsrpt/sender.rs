//! Sending a day's reports: for each domain with sessions that day, its
//! TLS-RPT record (kept, or looked up), the report built once and kept,
//! each destination taken, tried, and noted; then the tries due again.
//! Used by the daemon's daily run and by `tlsrpt send`, one at a time or
//! both at once: the SQLite file decides who sends what ([`super::outbox`]).
//!
//! Blocking (SQLite and `sendmail`) with async parts (DNS, HTTPS): run it
//! on a thread of its own with a runtime of its own, never on the threads
//! that answer Postfix.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use super::config::TlsRptConfig;
use super::deliver::{self, DeliverError, MAX_REPORT_BYTES, Poster};
use super::directory;
use super::fleet::FleetReports;
use super::mail::ReportMail;
use super::outbox::{Finish, OutboxRow};
use super::record::ReportUri;
use super::report::{Report, day_name, day_start};
use super::store::{TlsRptStore, TlsRptStoreError};
use crate::dns::Resolver;
use crate::metrics::{Metrics, ReportResult};

/// Tries of one destination before it is given up.
pub const MAX_ATTEMPTS: u32 = 6;
/// Wait before the second try; doubled for each try after it.
pub const FIRST_RETRY: Duration = Duration::from_secs(600);
/// A destination left `sending` this long was abandoned by its sender.
pub const SENDING_ABANDONED: Duration = Duration::from_secs(1800);
/// A day whose records cannot be looked up is given up this long after
/// it ended.
pub const GIVE_UP_AFTER: Duration = Duration::from_secs(2 * 86_400);
/// Due tries taken in one round.
const MAX_DUE: usize = 256;

/// What happened to one destination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sent {
    pub domain: String,
    pub destination: String,
    pub result: Result<String, DeliverError>,
}

/// What a round did for one domain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DomainResult {
    /// The report went (or was tried) to these destinations.
    Reported { report_id: String, sent: Vec<Sent> },
    /// `--dry-run`: the report that would go to these destinations.
    WouldSend {
        report: Report,
        destinations: Vec<ReportUri>,
    },
    /// No TLS-RPT record: nothing to send (the day is done for it).
    NoRecord(String),
    /// The record could not be looked up; tried again later.
    LookupFailed(String),
    /// Done before (by this or another sender).
    Done,
    /// `[shared]`: another host of the fleet took the report.
    Fleet { host: String, report_id: String },
    /// `[shared]`: not sent yet (another host holds the lock, or the store
    /// cannot be reached); tried again at the next round.
    Waiting(String),
}

/// Everything a sender needs.
pub struct ReportSender {
    pub config: TlsRptConfig,
    pub resolver: Resolver,
    pub poster: Poster,
    pub metrics: Option<Arc<Metrics>>,
    /// `[shared]`: the fleet's counts and who sends (the daemon only).
    pub fleet: Option<Arc<dyn FleetReports>>,
    /// `[shared]`: when this process first found each (day, domain) due
    /// with the store unreachable.
    pub store_waits: super::fleet::StoreWaits,
}

pub(super) fn count(m: &Option<Arc<Metrics>>, r: ReportResult) {
    if let Some(m) = m {
        m.tlsrpt_report(r);
    }
}

impl ReportSender {
    /// The record of `domain`: kept, or looked up (and kept).
    pub async fn record_of(
        &self,
        store: &TlsRptStore,
        domain: &str,
        now: SystemTime,
    ) -> Result<Result<super::record::TlsRptRecord, String>, String> {
        if let Some(k) = store.kept_record(domain, now).map_err(|e| e.to_string())? {
            return Ok(k.record);
        }
        match directory::discover(&self.resolver, domain).await {
            Ok(found) => {
                store
                    .keep_record(domain, &found, now)
                    .map_err(|e| e.to_string())?;
                Ok(found.record.map_err(|e| e.to_string()))
            }
            Err(e) => Err(format!("_smtp._tls.{domain}: {e}")),
        }
    }

    /// Send the reports of the UTC day starting at `day` not sent yet, and
    /// the tries of that day due again. `dry_run`: change nothing, say what
    /// would go.
    pub async fn send_day(
        &self,
        store: &TlsRptStore,
        day: SystemTime,
        dry_run: bool,
        now: SystemTime,
    ) -> Result<Vec<(String, DomainResult)>, TlsRptStoreError> {
        let name = day_name(day);
        let mut out = Vec::new();
        if !dry_run {
            self.abandoned(store, now)?;
        }
        for (domain, _) in store.domains(&name)? {
            let r = self.send_domain(store, day, &domain, dry_run, now).await?;
            out.push((domain, r));
        }
        if !dry_run {
            for s in self.retry_due(store, Some(&name), now).await? {
                out.push((
                    s.domain.clone(),
                    DomainResult::Reported {
                        report_id: String::new(),
                        sent: vec![s],
                    },
                ));
            }
        }
        Ok(out)
    }

    /// Mark destinations abandoned by a sender that died.
    fn abandoned(&self, store: &TlsRptStore, now: SystemTime) -> Result<(), TlsRptStoreError> {
        for r in store.interrupted(now - SENDING_ABANDONED, now)? {
            tracing::warn!(day = %r.day, domain = %r.domain, destination = %r.destination,
                "TLS-RPT: a report was left half-sent (the sender stopped); it is not sent again");
            count(&self.metrics, ReportResult::Failed);
        }
        Ok(())
    }

    async fn send_domain(
        &self,
        store: &TlsRptStore,
        day: SystemTime,
        domain: &str,
        dry_run: bool,
        now: SystemTime,
    ) -> Result<DomainResult, TlsRptStoreError> {
        let name = day_name(day);
        if store.day_done(&name, domain)? {
            return Ok(DomainResult::Done);
        }
        let record = match self.record_of(store, domain, now).await {
            Ok(r) => r,
            Err(e) => {
                let ended = day + Duration::from_secs(86_400);
                if !dry_run && now >= ended + GIVE_UP_AFTER {
                    let why = format!("lookups failed until the report was given up: {e}");
                    store.no_record(&name, domain, &why, now)?;
                    tracing::warn!(day = %name, domain, "TLS-RPT: {why}");
                    return Ok(DomainResult::NoRecord(why));
                }
                tracing::warn!(day = %name, domain, error = %e,
                    "TLS-RPT: cannot look up the domain's record; tried again later");
                return Ok(DomainResult::LookupFailed(e));
            }
        };
        let record = match record {
            Ok(r) if !r.rua.is_empty() => r,
            Ok(_) => return self.nothing(store, &name, domain, "no usable rua", dry_run, now),
            Err(why) => return self.nothing(store, &name, domain, &why, dry_run, now),
        };
        if let Some(fleet) = &self.fleet {
            return self
                .fleet_domain(
                    store,
                    fleet.as_ref(),
                    day,
                    domain,
                    &record.rua,
                    dry_run,
                    now,
                )
                .await;
        }
        let (counts, skipped) = store.counts(&name, domain)?;
        if skipped > 0 {
            tracing::warn!(day = %name, domain, skipped,
                "TLS-RPT: sessions written by another version are left out of the report");
        }
        let report = Report::build(&self.config.submitter(), domain, day, &counts);
        if dry_run {
            return Ok(DomainResult::WouldSend {
                report,
                destinations: record.rua,
            });
        }
        self.keep_and_send(store, &report, &record.rua, now).await
    }

    /// Keep `report` (unless one was kept for its day and domain) and
    /// send it to each destination not taken yet.
    pub(super) async fn keep_and_send(
        &self,
        store: &TlsRptStore,
        report: &Report,
        rua: &[ReportUri],
        now: SystemTime,
    ) -> Result<DomainResult, TlsRptStoreError> {
        let name = day_name(report.day_start);
        let domain = report.policy_domain.as_str();
        if !store.keep_report(report, now)? {
            return Ok(DomainResult::Done);
        }
        count(&self.metrics, ReportResult::Built);
        let mut sent = Vec::new();
        for uri in rua {
            let dest = uri.to_string();
            if !store.queue(&name, domain, &dest, now)? {
                continue;
            }
            let result = self.deliver(report, uri).await;
            self.note(store, &name, domain, &dest, 0, &result, now)
                .await?;
            sent.push(Sent {
                domain: domain.to_string(),
                destination: dest,
                result,
            });
        }
        Ok(DomainResult::Reported {
            report_id: report.report_id.clone(),
            sent,
        })
    }

    fn nothing(
        &self,
        store: &TlsRptStore,
        day: &str,
        domain: &str,
        why: &str,
        dry_run: bool,
        now: SystemTime,
    ) -> Result<DomainResult, TlsRptStoreError> {
        if !dry_run {
            store.no_record(day, domain, why, now)?;
        }
        Ok(DomainResult::NoRecord(why.to_string()))
    }

    /// Try the destinations due again (of `day`, or every day).
    pub async fn retry_due(
        &self,
        store: &TlsRptStore,
        day: Option<&str>,
        now: SystemTime,
    ) -> Result<Vec<Sent>, TlsRptStoreError> {
        let mut out = Vec::new();
        for row in store.take_due(day, now, MAX_DUE)? {
            let result = match self.stored_report(store, &row)? {
                Some((report, uri)) => self.deliver(&report, &uri).await,
                None => Err(DeliverError {
                    retry: false,
                    detail: "the report or its destination is no longer known".into(),
                }),
            };
            self.note(
                store,
                &row.day,
                &row.domain,
                &row.destination,
                row.attempts,
                &result,
                now,
            )
            .await?;
            out.push(Sent {
                domain: row.domain,
                destination: row.destination,
                result,
            });
        }
        Ok(out)
    }

    fn stored_report(
        &self,
        store: &TlsRptStore,
        row: &OutboxRow,
    ) -> Result<Option<(Report, ReportUri)>, TlsRptStoreError> {
        let Some(kept) = store.report(&row.day, &row.domain)? else {
            return Ok(None);
        };
        let Some(day) = super::report::parse_day(&row.day) else {
            return Ok(None);
        };
        let uri = match row.destination.strip_prefix("mailto:") {
            Some(a) => ReportUri::Mailto(a.to_string()),
            None if row.destination.starts_with("https:") => {
                ReportUri::Https(row.destination.clone())
            }
            None => return Ok(None),
        };
        Ok(Some((
            Report {
                policy_domain: row.domain.clone(),
                day_start: day,
                report_id: kept.report_id,
                json: kept.json,
            },
            uri,
        )))
    }

    /// Note how a try ended: sent, due again, or given up.
    #[allow(clippy::too_many_arguments)]
    async fn note(
        &self,
        store: &TlsRptStore,
        day: &str,
        domain: &str,
        dest: &str,
        attempts_before: u32,
        result: &Result<String, DeliverError>,
        now: SystemTime,
    ) -> Result<(), TlsRptStoreError> {
        let how = match result {
            Ok(detail) => {
                tracing::info!(
                    day,
                    domain,
                    destination = dest,
                    "TLS-RPT: report sent ({detail})"
                );
                count(&self.metrics, ReportResult::Sent);
                Finish::Sent(detail.clone())
            }
            Err(e) if e.retry && attempts_before + 1 < MAX_ATTEMPTS => {
                let wait = FIRST_RETRY * 2u32.pow(attempts_before.min(10));
                tracing::warn!(day, domain, destination = dest, error = %e,
                    retry_in = %humantime::format_duration(wait), "TLS-RPT: report not sent");
                count(&self.metrics, ReportResult::Retry);
                Finish::Retry {
                    detail: e.detail.clone(),
                    next_try: now + wait,
                }
            }
            Err(e) => {
                tracing::error!(day, domain, destination = dest, error = %e,
                    attempts = attempts_before + 1, "TLS-RPT: report given up");
                count(&self.metrics, ReportResult::Failed);
                Finish::Failed(e.detail.clone())
            }
        };
        store.finish(day, domain, dest, &how, now)?;
        if let Some(fleet) = &self.fleet {
            let state = match how {
                Finish::Sent(_) => "sent",
                Finish::Retry { .. } => "retry",
                Finish::Failed(_) => "failed",
            };
            // Only for the other hosts' view: a failure is the store's to
            // log and count.
            let _ = fleet.note(day, domain, dest, state).await;
        }
        Ok(())
    }

    /// Send `report` to `uri` once.
    pub async fn deliver(&self, report: &Report, uri: &ReportUri) -> Result<String, DeliverError> {
        let gz = report.gzip();
        if gz.len() > MAX_REPORT_BYTES {
            return Err(DeliverError {
                retry: false,
                detail: format!(
                    "the compressed report is {} bytes, more than {MAX_REPORT_BYTES}",
                    gz.len()
                ),
            });
        }
        match uri {
            ReportUri::Https(u) => self.poster.post(u, gz).await,
            ReportUri::Mailto(to) => {
                if !super::config::is_mailto_address(to) {
                    return Err(DeliverError {
                        retry: false,
                        detail: format!("{to:?} is not an address mail can be sent to"),
                    });
                }
                let mail = ReportMail::build(
                    report,
                    &self.config.submitter,
                    &self.config.from,
                    to,
                    SystemTime::now(),
                );
                // sendmail(1) reads lines ending in LF.
                let text = mail.text.replace("\r\n", "\n");
                let sendmail = self.config.sendmail.clone();
                let from = self.config.from.clone();
                let to = to.clone();
                tokio::task::spawn_blocking(move || {
                    deliver::sendmail(
                        &sendmail,
                        &from,
                        &to,
                        text.as_bytes(),
                        deliver::SENDMAIL_TIMEOUT,
                    )
                })
                .await
                .unwrap_or_else(|e| {
                    Err(DeliverError {
                        retry: true,
                        detail: format!("the sending thread failed: {e}"),
                    })
                })
            }
        }
    }
}

/// The day before the one holding `now`.
pub fn yesterday(now: SystemTime) -> SystemTime {
    day_start(now) - Duration::from_secs(86_400)
}
