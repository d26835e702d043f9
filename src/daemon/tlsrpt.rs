//! Wiring of TLS reporting: the counter ([`Counter`]) the outcome follower
//! tells of each delivery attempt (on the follower's thread), and the
//! thread that sends each day's reports after the day ends (with a runtime
//! of its own, never on the threads that answer Postfix).

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
use crate::tlsrpt::report::{day_name, day_start};
use crate::tlsrpt::sender::{DomainResult, ReportSender, yesterday};
use crate::tlsrpt::store::TlsRptStore;

/// How often the sender wakes.
const SEND_ROUND: Duration = Duration::from_secs(300);
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
        if let Some(s) = &store {
            let tried = round(s, sender, &mut delays, &mut pruned).await;
            if first {
                first = false;
                tracing::info!(
                    tried,
                    send_delay = %humantime::format_duration(sender.config.send_delay),
                    "TLS-RPT: first round done; a day's reports go out up to send_delay after it ends"
                );
            }
        }
        tokio::select! {
            () = stop.cancelled() => break,
            () = tokio::time::sleep(SEND_ROUND) => {}
        }
    }
}

/// One round: the last two days' reports that are due, then the tries
/// due again; once a day, old counts forgotten. Returns the destinations
/// tried.
async fn round(
    store: &TlsRptStore,
    sender: &ReportSender,
    delays: &mut HashMap<SystemTime, Duration>,
    pruned: &mut Option<SystemTime>,
) -> usize {
    let mut tried = 0;
    let now = SystemTime::now();
    let today = day_start(now);
    let last = yesterday(now);
    for day in [last - Duration::from_secs(86_400), last] {
        let delay = *delays
            .entry(day)
            .or_insert_with(|| random_delay(sender.config.send_delay));
        if !due(day, delay, now) {
            continue;
        }
        match sender.send_day(store, day, false, now).await {
            Ok(results) => {
                tried += results
                    .iter()
                    .map(|(_, r)| match r {
                        DomainResult::Reported { sent, .. } => sent.len(),
                        _ => 0,
                    })
                    .sum::<usize>();
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
    tried
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
    fn random_delays_stay_within_the_setting() {
        let max = Duration::from_secs(3600);
        let delays: Vec<Duration> = (0..50).map(|_| random_delay(max)).collect();
        assert!(delays.iter().all(|d| *d <= max));
        // Not one fixed value (50 draws from 3601 seconds).
        assert!(delays.iter().any(|d| *d != delays[0]));
        assert_eq!(random_delay(Duration::ZERO), Duration::ZERO);
    }
}
