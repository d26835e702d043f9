//! Wiring of TLS reporting: the counter ([`Counter`]) the outcome follower
//! tells of each delivery attempt (on the follower's thread), and the
//! thread that sends each day's reports after the day ends (with a runtime
//! of its own, never on the threads that answer Postfix). With `[shared]`
//! the sender publishes this host's counts at each round and sends a
//! day's report for the fleet when it takes it (`tlsrpt::fleet_send`);
//! while a report waits for the fleet, rounds come every
//! [`PENDING_ROUND`].

use std::collections::HashMap;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime};

use tokio_util::sync::CancellationToken;

use super::Context;
use crate::dns::Resolver;
use crate::log::record::DeliveryOutcome;
use crate::outcomes::task::DeliveryHook;
use crate::tlsrpt::config::TlsRptConfig;
use crate::tlsrpt::counter::Counter;
use crate::tlsrpt::deliver::Poster;
use crate::tlsrpt::fleet::{FLEET_SETTLE, FleetReports};
use crate::tlsrpt::fleet_send::Published;
use crate::tlsrpt::report::{day_name, day_start};
use crate::tlsrpt::sender::{DomainResult, ReportSender, yesterday};
use crate::tlsrpt::store::TlsRptStore;
use crate::util::rate::RateLimit;

/// How often the sender wakes.
const SEND_ROUND: Duration = Duration::from_secs(300);
/// How often it wakes while a report waits for the fleet (the lock held
/// by another host, or the shared store down).
const PENDING_ROUND: Duration = Duration::from_secs(15);
/// Days of counts kept.
const KEEP_DAYS: u64 = 8;

/// The counter of sessions and the hook that feeds it, when `[tlsrpt]` is
/// on.
pub(super) fn counter(
    ctx: &Context,
    config: &TlsRptConfig,
    resolver: Option<Resolver>,
) -> (Arc<Counter>, DeliveryHook) {
    let c = Arc::new(Counter::new(
        config.cache_file.clone(),
        resolver,
        tokio::runtime::Handle::try_current().ok(),
        ctx.mta_sts.clone(),
        ctx.dane.clone(),
        ctx.metrics.clone(),
    ));
    let hook = c.clone();
    (
        c,
        Arc::new(move |queue_id: &str, d: &DeliveryOutcome| hook.count(queue_id, d)),
    )
}

/// Whether the reports of the UTC day starting at `day` are due at `now`,
/// `delay` after the day ended.
fn due(day: SystemTime, delay: Duration, now: SystemTime) -> bool {
    now >= day + Duration::from_secs(86_400) + delay
}

/// A random delay up to `max` (a report's time after its day ended).
fn random_delay(max: Duration) -> Duration {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(std::process::id().into());
    let r = h.finish();
    let secs = max.as_secs();
    Duration::from_secs(if secs == 0 { 0 } else { r % (secs + 1) })
}

/// Start the sender thread, when `[tlsrpt]` is on. It reads `[tlsrpt]`
/// from the configuration in force at each round (a reload changes who
/// the reports say they are from).
pub(super) fn spawn_sender(
    ctx: &Arc<Context>,
    resolver: Resolver,
    stop: CancellationToken,
) -> Option<JoinHandle<()>> {
    let config = ctx.config().tlsrpt.clone().filter(|t| t.enabled)?;
    let poster = match Poster::new(resolver.clone(), config.extra_ca_file.as_deref()) {
        Ok(p) => p,
        Err(e) => {
            tracing::error!(error = %e, "TLS-RPT: cannot set up HTTPS; no reports are sent");
            ctx.metrics.error("tlsrpt", "setup");
            return None;
        }
    };
    // The fleet's share of the store, when `[shared]` is on.
    let fleet: Option<Arc<dyn FleetReports>> = match (&ctx.shared, &ctx.config().shared) {
        (Some(store), Some(c)) => match c.host_id() {
            Ok(host) => {
                tracing::info!(host = %host,
                    "TLS-RPT: reports are sent for the fleet sharing the store (one host each)");
                Some(Arc::new(crate::shared::reports::ReportStore::new(
                    store.clone(),
                    host,
                )))
            }
            Err(e) => {
                // The configuration checks this at load; a host name
                // changed since: no report rather than one per host.
                tracing::error!(error = %e, "TLS-RPT: no host id for the fleet; no reports are sent");
                ctx.metrics.error("tlsrpt", "setup");
                return None;
            }
        },
        _ => None,
    };
    let live = ctx.clone();
    let spawned = std::thread::Builder::new()
        .name("tlsrpt-sender".into())
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    tracing::error!(error = %e, "TLS-RPT: cannot start the sender's runtime");
                    live.metrics.error("tlsrpt", "setup");
                    return;
                }
            };
            let mut sender = ReportSender {
                config,
                resolver,
                poster,
                metrics: Some(live.metrics.clone()),
                fleet,
                store_waits: Default::default(),
            };
            rt.block_on(send_loop(&live, &mut sender, stop));
        });
    match spawned {
        Ok(h) => Some(h),
        Err(e) => {
            tracing::error!(error = %e, "TLS-RPT: cannot start the sender thread");
            ctx.metrics.error("tlsrpt", "thread");
            None
        }
    }
}

async fn send_loop(ctx: &Context, sender: &mut ReportSender, stop: CancellationToken) {
    // The delay of each day, chosen when the day is first due.
    let mut delays: HashMap<SystemTime, Duration> = HashMap::new();
    let mut store: Option<TlsRptStore> = None;
    let mut pruned: Option<SystemTime> = None;
    let mut published = Published::new();
    let waiting_log = RateLimit::per_minute(1);
    let mut first = true;
    loop {
        if let Some(t) = ctx.config().tlsrpt.clone().filter(|t| t.enabled) {
            sender.config = t;
        }
        if store.is_none() {
            match TlsRptStore::open(&sender.config.cache_file) {
                Ok(s) => store = Some(s),
                Err(e) => {
                    tracing::error!(error = %e, "TLS-RPT: cannot open the store; reports wait");
                    ctx.metrics.error("tlsrpt", "store_open");
                }
            }
        }
        let mut waiting = Vec::new();
        let mut behind = false;
        if let Some(s) = &store {
            let (tried, w, b) = round(s, sender, &mut delays, &mut pruned, &mut published).await;
            waiting = w;
            behind = b;
            if first {
                first = false;
                tracing::info!(
                    tried,
                    send_delay = %humantime::format_duration(sender.config.send_delay),
                    "TLS-RPT: first round done; a day's reports go out up to send_delay after it ends"
                );
            }
        }
        if !waiting.is_empty()
            && let Some(more) = waiting_log.admit()
        {
            tracing::info!(reports = waiting.len(), first = %waiting[0], more,
                "TLS-RPT: reports wait for the fleet; tried again soon");
        }
        let next = next_round(waiting.len(), behind);
        tokio::select! {
            () = stop.cancelled() => break,
            () = tokio::time::sleep(next) => {}
        }
    }
}

/// When the next round comes: soon while reports wait for the fleet or
/// this host's counts are not all in the store yet (a store not yet
/// connected at start, or down), else at the full round.
fn next_round(waiting: usize, behind: bool) -> Duration {
    if waiting > 0 || behind {
        PENDING_ROUND
    } else {
        SEND_ROUND
    }
}

/// One round: with a fleet, this host's counts published; the last two
/// days' reports that are due, then the tries due again; once a day, old
/// counts forgotten. Returns the destinations tried, the reports that
/// wait for the fleet (`day domain: why`) and whether counts are still
/// to be published.
async fn round(
    store: &TlsRptStore,
    sender: &ReportSender,
    delays: &mut HashMap<SystemTime, Duration>,
    pruned: &mut Option<SystemTime>,
    published: &mut Published,
) -> (usize, Vec<String>, bool) {
    let mut tried = 0;
    let mut behind = false;
    let mut waiting = Vec::new();
    let now = SystemTime::now();
    let today = day_start(now);
    let last = yesterday(now);
    let days = [last - Duration::from_secs(86_400), last];
    if sender.fleet.is_some() {
        match sender
            .publish_counts(store, &[days[0], days[1], today], published, now)
            .await
        {
            Ok(b) => behind = b,
            Err(e) => {
                tracing::error!(error = %e, "TLS-RPT: cannot read the counts to publish");
                if let Some(m) = &sender.metrics {
                    m.error("tlsrpt", "store");
                }
            }
        }
    }
    for day in days {
        let mut delay = *delays
            .entry(day)
            .or_insert_with(|| random_delay(sender.config.send_delay));
        if sender.fleet.is_some() {
            // Every running host has published its last counts of the day.
            delay = delay.max(FLEET_SETTLE);
        }
        if !due(day, delay, now) {
            continue;
        }
        match sender.send_day(store, day, false, now).await {
            Ok(results) => {
                for (domain, r) in &results {
                    match r {
                        DomainResult::Reported { sent, .. } => tried += sent.len(),
                        DomainResult::Waiting(why) => {
                            waiting.push(format!("{} {domain}: {why}", day_name(day)));
                        }
                        _ => {}
                    }
                }
            }
            Err(e) => {
                tracing::error!(day = %day_name(day), error = %e, "TLS-RPT: sending stopped");
                if let Some(m) = &sender.metrics {
                    m.error("tlsrpt", "store");
                }
            }
        }
    }
    delays.retain(|d, _| *d >= last - Duration::from_secs(86_400));
    match sender.retry_due(store, None, now).await {
        Ok(sent) => tried += sent.len(),
        Err(e) => tracing::error!(error = %e, "TLS-RPT: retries stopped"),
    }
    if *pruned != Some(today) {
        let before = day_name(today - Duration::from_secs(KEEP_DAYS * 86_400));
        match store.prune_before(&before, now) {
            Ok(_) => *pruned = Some(today),
            Err(e) => tracing::warn!(error = %e, "TLS-RPT: cannot forget old counts"),
        }
    }
    (tried, waiting, behind)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tlsrpt::report::parse_day;

    #[test]
    fn a_day_is_due_its_delay_after_it_ended() {
        let day = parse_day("2026-12-04").unwrap();
        let end = parse_day("2026-12-05").unwrap();
        let delay = Duration::from_secs(1800);
        assert!(!due(day, delay, day + Duration::from_secs(3600)));
        assert!(!due(day, delay, end));
        assert!(!due(day, delay, end + delay - Duration::from_secs(1)));
        assert!(due(day, delay, end + delay));
        assert!(due(day, Duration::ZERO, end));
    }

    #[test]
    fn the_next_round_is_soon_while_reports_wait_or_counts_are_unpublished() {
        assert_eq!(next_round(0, false), SEND_ROUND);
        assert_eq!(next_round(1, false), PENDING_ROUND);
        assert_eq!(next_round(0, true), PENDING_ROUND);
        assert_eq!(next_round(3, true), PENDING_ROUND);
        assert!(PENDING_ROUND < SEND_ROUND);
    }

    #[test]
    fn random_delays_stay_within_the_setting() {
        let max = Duration::from_secs(3600);
        let delays: Vec<Duration> = (0..50).map(|_| random_delay(max)).collect();
        assert!(delays.iter().all(|d| *d <= max));
        // Not one fixed value (50 draws from 3601 seconds).
        assert!(delays.iter().any(|d| *d != delays[0]));
        assert_eq!(random_delay(Duration::ZERO), Duration::ZERO);
    }
}
