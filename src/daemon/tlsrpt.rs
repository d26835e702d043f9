//! Wiring of TLS reporting: the counter the outcome follower tells of each
//! delivery attempt (on the follower's thread), and the thread that sends
//! each day's reports after the day ends (with a runtime of its own, never
//! on the threads that answer Postfix).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime};

use tokio_util::sync::CancellationToken;

use super::Context;
use crate::dns::Resolver;
use crate::log::record::DeliveryOutcome;
use crate::metrics::{Metrics, SessionKind};
use crate::outcomes::task::DeliveryHook;
use crate::sources::dane::DaneSource;
use crate::sources::dane::assess::TlsaState;
use crate::sources::mta_sts::policy::Mode;
use crate::sources::mta_sts::{CacheState, MtaSts};
use crate::tlsrpt::applied::{StsView, TlsaView, applied, tlsa_text};
use crate::tlsrpt::config::TlsRptConfig;
use crate::tlsrpt::deliver::Poster;
use crate::tlsrpt::directory::{Found, discover};
use crate::tlsrpt::report::{ResultType, day_name, day_start};
use crate::tlsrpt::sender::{ReportSender, yesterday};
use crate::tlsrpt::session::{SessionResult, session_of};
use crate::tlsrpt::store::TlsRptStore;
use crate::util::rate::RateLimit;

/// Record lookups in flight at most.
const MAX_LOOKUPS: usize = 32;
/// Domains whose record state is held in memory at most.
const MAX_KNOWN: usize = 100_000;
/// How often the sender wakes.
const SEND_ROUND: Duration = Duration::from_secs(300);
/// Days of counts kept.
const KEEP_DAYS: u64 = 8;

/// The counter: turns delivery attempts into sessions in the SQLite file.
struct Counter {
    path: PathBuf,
    store: Mutex<Option<TlsRptStore>>,
    /// domain → (publishes a usable record, until).
    known: Mutex<HashMap<String, (bool, SystemTime)>>,
    /// Lookups finished, to be kept in the file by the follower's thread.
    found: Mutex<Vec<(String, Found, SystemTime)>>,
    lookups: AtomicUsize,
    resolver: Option<Resolver>,
    runtime: Option<tokio::runtime::Handle>,
    mta_sts: Option<MtaSts>,
    dane: Option<DaneSource>,
    metrics: Arc<Metrics>,
    errors: RateLimit,
}

impl Counter {
    fn error(&self, kind: &'static str, e: &dyn std::fmt::Display) {
        self.metrics.error("tlsrpt", kind);
        if let Some(unsaid) = self.errors.admit() {
            tracing::error!(file = %self.path.display(), error = %e, not_logged = unsaid,
                "TLS-RPT: cannot count a session; it is missing from the reports");
        }
    }

    fn with_store<R>(&self, f: impl FnOnce(&TlsRptStore) -> R) -> Option<R> {
        let mut guard = self.store.lock().unwrap_or_else(|p| p.into_inner());
        if guard.is_none() {
            match TlsRptStore::open(&self.path) {
                Ok(s) => *guard = Some(s),
                Err(e) => {
                    self.error("store_open", &e);
                    return None;
                }
            }
        }
        guard.as_ref().map(f)
    }

    /// Whether `domain` publishes a usable record: known, kept in the
    /// file, or `None` (a lookup is started).
    fn publishes(self: &Arc<Self>, domain: &str, now: SystemTime) -> Option<bool> {
        {
            let known = self.known.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(&(yes, until)) = known.get(domain)
                && until > now
            {
                return Some(yes);
            }
        }
        let kept = self
            .with_store(|s| s.kept_record(domain, now))
            .and_then(Result::ok)
            .flatten();
        if let Some(k) = kept {
            self.remember(domain, k.record.is_ok(), k.expires, now);
            return Some(k.record.is_ok());
        }
        self.look_up(domain);
        None
    }

    fn remember(&self, domain: &str, yes: bool, until: SystemTime, now: SystemTime) {
        let mut known = self.known.lock().unwrap_or_else(|p| p.into_inner());
        if known.len() >= MAX_KNOWN {
            known.retain(|_, (_, u)| *u > now);
            if known.len() >= MAX_KNOWN {
                known.clear();
            }
        }
        known.insert(domain.to_string(), (yes, until));
    }

    fn look_up(self: &Arc<Self>, domain: &str) {
        let (Some(rt), Some(resolver)) = (&self.runtime, &self.resolver) else {
            return;
        };
        if self.lookups.fetch_add(1, Ordering::Relaxed) >= MAX_LOOKUPS {
            self.lookups.fetch_sub(1, Ordering::Relaxed);
            return;
        }
        let resolver = resolver.clone();
        let domain = domain.to_string();
        let me = self.clone();
        rt.spawn(async move {
            let r = discover(&resolver, &domain).await;
            me.lookups.fetch_sub(1, Ordering::Relaxed);
            match r {
                Ok(found) => {
                    let now = SystemTime::now();
                    me.remember(&domain, found.record.is_ok(), now + found.ttl, now);
                    me.found
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push((domain, found, now));
                }
                Err(e) => tracing::debug!(domain, error = %e, "TLS-RPT: record lookup failed"),
            }
        });
    }

    /// What the MTA-STS cache says of `domain`.
    fn sts_view(&self, domain: &str) -> StsView {
        match self.mta_sts.as_ref().map(|s| s.cache_state(domain)) {
            Some(CacheState::Policy(c)) => StsView::Policy {
                lines: c.policy.lines.clone(),
                mx: c.policy.mx.clone(),
                mode_none: c.policy.mode == Mode::None,
            },
            _ => StsView::Nothing,
        }
    }

    /// What DANE found for the MX host `host` of `domain`.
    fn tlsa_view(&self, domain: &str, host: &str) -> TlsaView {
        let Some(record) = self.dane.as_ref().and_then(|d| d.cached(domain)) else {
            return TlsaView::Nothing;
        };
        let host = host.trim_end_matches('.');
        let Some(h) = record
            .assessment
            .hosts
            .iter()
            .find(|h| h.host.trim_end_matches('.').eq_ignore_ascii_case(host))
        else {
            return TlsaView::Nothing;
        };
        match &h.tlsa {
            TlsaState::Secure {
                records, usable, ..
            } if *usable > 0 => TlsaView::Records(
                records
                    .iter()
                    .filter(|r| r.usable)
                    .map(|r| tlsa_text(r.usage, r.selector, r.matching, &r.data))
                    .collect(),
            ),
            TlsaState::Secure { .. } => TlsaView::Failed(ResultType::TlsaInvalid),
            TlsaState::Bogus { .. } => TlsaView::Failed(ResultType::DnssecInvalid),
            _ => TlsaView::Nothing,
        }
    }

    fn count(self: &Arc<Self>, queue_id: &str, d: &DeliveryOutcome) {
        let Some(domain) = d.domain.as_deref() else {
            return;
        };
        let now = SystemTime::now();
        self.keep_found();
        if self.publishes(domain, now) == Some(false) {
            self.metrics.tlsrpt_session(SessionKind::NotCounted);
            return;
        }
        let since = day_name(day_start(d.logged_at) - Duration::from_secs(2 * 86_400));
        if self
            .with_store(|s| s.is_report_recipient(&d.recipient, &since))
            .and_then(Result::ok)
            .unwrap_or(false)
        {
            self.metrics.tlsrpt_session(SessionKind::Report);
            return;
        }
        let host = d.relay.split('[').next().unwrap_or_default();
        let (policy, failure) = applied(
            domain,
            &self.sts_view(domain),
            &self.tlsa_view(domain, host),
        );
        let Some(session) = session_of(d, policy, failure) else {
            self.metrics.tlsrpt_session(SessionKind::NotCounted);
            return;
        };
        let at = d
            .logged_at
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default();
        let attempt = format!(
            "{queue_id} {} {}.{:06} {}",
            d.recipient,
            at.as_secs(),
            at.subsec_micros(),
            d.relay
        );
        match self.with_store(|s| s.add(&session, &attempt, d.logged_at)) {
            Some(Ok(true)) => self.metrics.tlsrpt_session(match session.result {
                SessionResult::Successful => SessionKind::Successful,
                SessionResult::Failed(_) => SessionKind::Failed,
            }),
            Some(Ok(false)) => {}
            Some(Err(e)) => self.error("session_lost", &e),
            None => self.metrics.error("tlsrpt", "session_lost"),
        }
    }

    /// Keep finished lookups in the file.
    fn keep_found(&self) {
        let found = std::mem::take(&mut *self.found.lock().unwrap_or_else(|p| p.into_inner()));
        for (domain, f, at) in found {
            if let Some(Err(e)) = self.with_store(|s| s.keep_record(&domain, &f, at)) {
                self.error("store_write", &e);
            }
        }
    }
}

/// The hook that counts sessions, when `[tlsrpt]` is on.
pub(super) fn counter(
    ctx: &Context,
    config: &TlsRptConfig,
    resolver: Option<Resolver>,
) -> DeliveryHook {
    let c = Arc::new(Counter {
        path: config.cache_file.clone(),
        store: Mutex::new(None),
        known: Mutex::new(HashMap::new()),
        found: Mutex::new(Vec::new()),
        lookups: AtomicUsize::new(0),
        resolver,
        runtime: tokio::runtime::Handle::try_current().ok(),
        mta_sts: ctx.mta_sts.clone(),
        dane: ctx.dane.clone(),
        metrics: ctx.metrics.clone(),
        errors: RateLimit::per_minute(10),
    });
    Arc::new(move |queue_id: &str, d: &DeliveryOutcome| c.count(queue_id, d))
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
            round(s, sender, &mut delays, &mut pruned).await;
        }
        tokio::select! {
            () = stop.cancelled() => break,
            () = tokio::time::sleep(SEND_ROUND) => {}
        }
    }
}

/// One round: the last two days' reports that are due, then the tries
/// due again; once a day, old counts forgotten.
async fn round(
    store: &TlsRptStore,
    sender: &ReportSender,
    delays: &mut HashMap<SystemTime, Duration>,
    pruned: &mut Option<SystemTime>,
) {
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
        if let Err(e) = sender.send_day(store, day, false, now).await {
            tracing::error!(day = %day_name(day), error = %e, "TLS-RPT: sending stopped");
            if let Some(m) = &sender.metrics {
                m.error("tlsrpt", "store");
            }
        }
    }
    delays.retain(|d, _| *d >= last - Duration::from_secs(86_400));
    if let Err(e) = sender.retry_due(store, None, now).await {
        tracing::error!(error = %e, "TLS-RPT: retries stopped");
    }
    if *pruned != Some(today) {
        let before = day_name(today - Duration::from_secs(KEEP_DAYS * 86_400));
        match store.prune_before(&before, now) {
            Ok(_) => *pruned = Some(today),
            Err(e) => tracing::warn!(error = %e, "TLS-RPT: cannot forget old counts"),
        }
    }
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
