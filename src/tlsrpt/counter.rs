//! Counting sessions as the outcome follower reads deliveries (on its
//! thread): a delivery to a domain that publishes a TLS-RPT record, to one
//! of the domain's MX hosts (not a relayhost or another next hop the
//! operator routes through), becomes a session of the policy that applied
//! ([`super::applied`], read from the DANE and MTA-STS caches), kept once
//! in the SQLite file.
//!
//! What a domain publishes is learned once (its `_smtp._tls` record kept
//! in the file, its MX hosts in memory) by lookups on the daemon's runtime;
//! deliveries to a domain not known yet wait for them (bounded), and are
//! counted when they end, on a blocking thread.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use super::applied::{StsView, TlsaView, applied, dane_required, tlsa_text};
use super::directory::{Found, discover};
use super::report::{ResultType, day_name, day_start};
use super::session::{SessionResult, session_of};
use super::store::TlsRptStore;
use crate::dns::{self, MxAnswer, Resolver};
use crate::log::record::DeliveryOutcome;
use crate::metrics::{Metrics, SessionKind};
use crate::sources::dane::DaneSource;
use crate::sources::dane::assess::TlsaState;
use crate::sources::mta_sts::policy::Mode;
use crate::sources::mta_sts::{CacheState, MtaSts, StsPolicyFailure};
use crate::util::rate::RateLimit;

/// Domains looked up at once at most; deliveries to others wait.
const MAX_LOOKUPS: usize = 32;
/// Domains whose state is held in memory at most.
const MAX_KNOWN: usize = 100_000;
/// Deliveries waiting for their domain's lookups at most.
pub const MAX_WAITING: usize = 10_000;
/// How long MX hosts are kept (the record has its own TTL).
const MX_TTL: Duration = Duration::from_secs(3600);

/// What is known of a domain.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Known {
    /// No usable TLS-RPT record.
    NoRecord,
    /// A record: sessions to these MX hosts count (`None`: the MX hosts
    /// could not be looked up; every host counts).
    Reporting(Option<Vec<String>>),
}

/// The relay host of `relay=` (`mx.example[192.0.2.1]:25`), lower case.
fn relay_host(relay: &str) -> String {
    relay
        .split('[')
        .next()
        .unwrap_or_default()
        .trim_end_matches('.')
        .to_ascii_lowercase()
}

/// The hosts that count as `domain`'s MX from an MX lookup.
fn mx_hosts(domain: &str, answer: Result<MxAnswer, dns::LookupError>) -> Option<Vec<String>> {
    match answer {
        Ok(MxAnswer::Hosts(h)) => Some(h.into_iter().map(|(_, host)| host).collect()),
        Ok(MxAnswer::NoMx) => Some(vec![domain.to_string()]),
        Ok(MxAnswer::NullMx) => Some(Vec::new()),
        Err(_) => None,
    }
}

type Waiting = HashMap<String, Vec<(String, DeliveryOutcome)>>;

/// The counter. Shared by the follower's hook and the lookups.
pub struct Counter {
    path: PathBuf,
    store: Mutex<Option<TlsRptStore>>,
    known: Mutex<HashMap<String, (Known, SystemTime)>>,
    /// Deliveries waiting, by domain (a domain here is being looked up).
    waiting: Mutex<Waiting>,
    waiting_total: AtomicUsize,
    lookups: AtomicUsize,
    resolver: Option<Resolver>,
    runtime: Option<tokio::runtime::Handle>,
    mta_sts: Option<MtaSts>,
    dane: Option<DaneSource>,
    metrics: Arc<Metrics>,
    errors: RateLimit,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Counter {
    /// A counter keeping sessions in `path`, looking up with `resolver`
    /// on `runtime` (without them every delivery counts at once and the
    /// record is looked up when the report is due).
    pub fn new(
        path: PathBuf,
        resolver: Option<Resolver>,
        runtime: Option<tokio::runtime::Handle>,
        mta_sts: Option<MtaSts>,
        dane: Option<DaneSource>,
        metrics: Arc<Metrics>,
    ) -> Counter {
        Counter {
            path,
            store: Mutex::new(None),
            known: Mutex::new(HashMap::new()),
            waiting: Mutex::new(HashMap::new()),
            waiting_total: AtomicUsize::new(0),
            lookups: AtomicUsize::new(0),
            resolver,
            runtime,
            mta_sts,
            dane,
            metrics,
            errors: RateLimit::per_minute(10),
        }
    }

    fn error(&self, kind: &'static str, e: &dyn std::fmt::Display) {
        self.metrics.error("tlsrpt", kind);
        if let Some(unsaid) = self.errors.admit() {
            tracing::error!(file = %self.path.display(), error = %e, not_logged = unsaid,
                "TLS-RPT: a session is missing from the reports");
        }
    }

    fn with_store<R>(&self, f: impl FnOnce(&TlsRptStore) -> R) -> Option<R> {
        let mut guard = lock(&self.store);
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

    fn remember(&self, domain: &str, k: Known, until: SystemTime, now: SystemTime) {
        let mut known = lock(&self.known);
        if known.len() >= MAX_KNOWN {
            known.retain(|_, (_, u)| *u > now);
            if known.len() >= MAX_KNOWN {
                known.clear();
            }
        }
        known.insert(domain.to_string(), (k, until));
    }

    fn known(&self, domain: &str, now: SystemTime) -> Option<Known> {
        lock(&self.known)
            .get(domain)
            .filter(|(_, until)| *until > now)
            .map(|(k, _)| k.clone())
    }

    /// Count the delivery attempt `d` of message `queue_id`.
    pub fn count(self: &Arc<Self>, queue_id: &str, d: &DeliveryOutcome) {
        let Some(domain) = d.domain.as_deref() else {
            return;
        };
        let now = SystemTime::now();
        if let Some(k) = self.known(domain, now) {
            return self.settle(queue_id, d, &k);
        }
        let (Some(rt), Some(resolver)) = (&self.runtime, &self.resolver) else {
            return self.settle(queue_id, d, &Known::Reporting(None));
        };
        // A domain the file says has no record needs no lookup.
        let kept = self
            .with_store(|s| s.kept_record(domain, now))
            .and_then(Result::ok)
            .flatten();
        if let Some(k) = &kept
            && k.record.is_err()
        {
            self.remember(domain, Known::NoRecord, k.expires, now);
            return self.settle(queue_id, d, &Known::NoRecord);
        }
        {
            let mut waiting = lock(&self.waiting);
            if let Some(w) = waiting.get_mut(domain) {
                if self.waiting_total.load(Ordering::Relaxed) < MAX_WAITING {
                    w.push((queue_id.to_string(), d.clone()));
                    self.waiting_total.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                drop(waiting);
                return self.settle(queue_id, d, &Known::Reporting(None));
            }
            if self.lookups.load(Ordering::Relaxed) >= MAX_LOOKUPS
                || self.waiting_total.load(Ordering::Relaxed) >= MAX_WAITING
            {
                drop(waiting);
                // Counted now, as if the domain reported to every host;
                // the record decides when the report is due.
                return self.settle(queue_id, d, &Known::Reporting(None));
            }
            waiting.insert(domain.to_string(), vec![(queue_id.to_string(), d.clone())]);
            self.waiting_total.fetch_add(1, Ordering::Relaxed);
            self.lookups.fetch_add(1, Ordering::Relaxed);
        }
        let me = self.clone();
        let resolver = resolver.clone();
        let domain = domain.to_string();
        let have_record = kept.is_some();
        rt.spawn(async move {
            let (known, found) = me.look_up(&resolver, &domain, have_record).await;
            let me2 = me.clone();
            let settled = tokio::task::spawn_blocking(move || {
                let now = SystemTime::now();
                if let Some(f) = &found
                    && let Some(Err(e)) = me2.with_store(|s| s.keep_record(&domain, f, now))
                {
                    me2.error("store_write", &e);
                }
                me2.settle_waiting(&domain, &known);
            })
            .await;
            me.lookups.fetch_sub(1, Ordering::Relaxed);
            if let Err(e) = settled {
                me.error("thread", &e);
            }
        });
    }

    /// What `domain` publishes: its record (unless the file has it) and
    /// MX hosts. Remembered unless the lookups failed.
    async fn look_up(
        &self,
        resolver: &Resolver,
        domain: &str,
        have_record: bool,
    ) -> (Known, Option<Found>) {
        let now = SystemTime::now();
        let (reporting, found, until) = if have_record {
            (true, None, now + MX_TTL)
        } else {
            match discover(resolver, domain).await {
                Ok(f) => (f.record.is_ok(), Some(f.clone()), now + f.ttl),
                Err(e) => {
                    tracing::debug!(domain, error = %e, "TLS-RPT: record lookup failed");
                    return (Known::Reporting(None), None);
                }
            }
        };
        if !reporting {
            self.remember(domain, Known::NoRecord, until, now);
            return (Known::NoRecord, found);
        }
        let mx = mx_hosts(domain, dns::lookup_mx(resolver, domain).await);
        let k = Known::Reporting(mx.clone());
        if mx.is_some() {
            self.remember(domain, k.clone(), until.min(now + MX_TTL), now);
        }
        (k, found)
    }

    /// Count every delivery still waiting for lookups, as if its domain
    /// reported to every host (at shutdown: nothing read is lost; the
    /// record decides when the report is due).
    pub fn finish(&self) {
        let all: Vec<String> = lock(&self.waiting).keys().cloned().collect();
        for domain in all {
            self.settle_waiting(&domain, &Known::Reporting(None));
        }
    }

    fn settle_waiting(&self, domain: &str, k: &Known) {
        let w = lock(&self.waiting).remove(domain).unwrap_or_default();
        self.waiting_total.fetch_sub(w.len(), Ordering::Relaxed);
        for (q, d) in w {
            self.settle(&q, &d, k);
        }
    }

    /// What the MTA-STS cache says of `domain`.
    fn sts_view(&self, domain: &str) -> StsView {
        match self.mta_sts.as_ref().map(|s| s.cache_state(domain)) {
            Some(CacheState::Policy(c)) => StsView::Policy {
                lines: c.policy.lines.clone(),
                mx: c.policy.mx.clone(),
                mode_none: c.policy.mode == Mode::None,
            },
            // A record published, no usable policy: the session fails
            // with the reason.
            Some(CacheState::Negative(n)) => match n.failure {
                Some(StsPolicyFailure::FetchError) => {
                    StsView::Failed(ResultType::StsPolicyFetchError)
                }
                Some(StsPolicyFailure::Invalid) => StsView::Failed(ResultType::StsPolicyInvalid),
                Some(StsPolicyFailure::WebPkiInvalid) => {
                    StsView::Failed(ResultType::StsWebpkiInvalid)
                }
                None => StsView::Nothing,
            },
            _ => StsView::Nothing,
        }
    }

    /// What DANE found for the MX host `host` of `domain`.
    fn tlsa_view(&self, domain: &str, host: &str) -> TlsaView {
        let Some(record) = self.dane.as_ref().and_then(|d| d.cached(domain)) else {
            return TlsaView::Nothing;
        };
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

    /// Count `d` now that `k` is known of its domain.
    fn settle(&self, queue_id: &str, d: &DeliveryOutcome, k: &Known) {
        let Some(domain) = d.domain.as_deref() else {
            return;
        };
        let host = relay_host(&d.relay);
        let to_mx = match k {
            Known::NoRecord => false,
            Known::Reporting(None) => true,
            Known::Reporting(Some(mx)) => mx.contains(&host),
        };
        if !to_mx {
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
        let requires_dane = d
            .governing
            .as_ref()
            .is_some_and(|g| g.level.starts_with("dane-only"));
        let tlsa = dane_required(
            self.tlsa_view(domain, &host),
            requires_dane,
            d.tls_failure.is_some(),
        );
        let (policy, failure) = applied(domain, &self.sts_view(domain), &tlsa);
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relay_hosts_and_mx_sets() {
        assert_eq!(relay_host("MX.Example.[192.0.2.1]:25"), "mx.example");
        assert_eq!(relay_host("none"), "none");
        assert_eq!(
            mx_hosts(
                "r.example",
                Ok(MxAnswer::Hosts(vec![(10, "mx.r.example".into())]))
            ),
            Some(vec!["mx.r.example".to_string()])
        );
        assert_eq!(
            mx_hosts("r.example", Ok(MxAnswer::NoMx)),
            Some(vec!["r.example".to_string()])
        );
        assert_eq!(mx_hosts("r.example", Ok(MxAnswer::NullMx)), Some(vec![]));
        assert_eq!(
            mx_hosts("r.example", Err(dns::LookupError::Failed("x".into()))),
            None
        );
    }
}
