//! The join: every delivery Postfix logged, with the decision that
//! governed it.
//!
//! [`DecisionIndex`] sees every decision record as the decision log's
//! writer writes it ([`RecordTap`]) and remembers, on the one TTL cache:
//! - socketmap lookups by the next hop they named (`hops`), and by the
//!   smtp(8) process that asked when it came over a unix socket
//!   (`processes`: the log's `postfix/smtp[PID]` is that process);
//! - the policy server's and the milter's per-recipient decisions by queue
//!   id (`messages`).
//!
//! [`DecisionIndex::judge`] then finds a delivery's decision, most
//! specific first: the lookup its own process made for its next hop (the
//! relay's host name, the recipient's domain or a parent of it), any
//! recent lookup for that next hop, the RCPT-time decision for its queue
//! id and recipient, and, when Postfix asked nothing, the operator's rule
//! for the domain as it stands ([`DecidedBy::Rule`]). A delivery Postfix
//! could get no policy for (`client TLS configuration problem`) is joined
//! with no lookup: the RCPT-time decision or the rule say what it should
//! have had. The engine gives the verdict
//! ([`crate::engine::outcome::verdict`]).

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::cache::{CacheConfig, CacheObserver, Eviction, Expiry, NoObserver, TtlCache};
use crate::engine::decision::{Decision, Level, PolicyWord, Tls};
use crate::engine::key::{normalize_domain, parents};
use crate::engine::outcome::{Alarm, Attempt, Governing, TlsTrust, Verdict, verdict};
use crate::engine::recipient::RecipientDecision;
use crate::log::record::{
    DecidedBy, DecisionRecord, DeliveryOutcome, Detail, Frontend, GoverningDecision, Lookup,
    RecordTap,
};

use super::connections::AttributedDelivery;
use super::postfix::{Relay, Status, Trust};

/// How long what the index learns stays usable, and how much it holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IndexLimits {
    /// A socketmap lookup governs deliveries this long after it (an
    /// smtp(8) process keeps the policy it looked up while it lives).
    pub hop_window: Duration,
    /// A message's RCPT-time decisions govern its deliveries this long
    /// (Postfix's `maximal_queue_lifetime` is 5 days by default).
    pub message_window: Duration,
    pub max_hops: usize,
    pub max_processes: usize,
    pub max_messages: usize,
}

impl Default for IndexLimits {
    fn default() -> Self {
        IndexLimits {
            hop_window: Duration::from_secs(3600),
            message_window: Duration::from_secs(5 * 86_400),
            max_hops: 65_536,
            max_processes: 8_192,
            max_messages: 200_000,
        }
    }
}

/// A decision governs lines stamped this much before it: syslog's
/// traditional timestamps have whole seconds (a delivery in the second of
/// its lookup is stamped before it), and the log's clock may lag.
pub const CLOCK_SLACK: Duration = Duration::from_secs(2);

/// Valid from `CLOCK_SLACK` before `ts` for `window` after it.
fn validity(ts: SystemTime, window: Duration) -> Expiry {
    let from = ts.checked_sub(CLOCK_SLACK).unwrap_or(ts);
    Expiry::between(from, ts + window).no_refresh()
}

/// Lookups remembered per smtp(8) process (one next hop, its parent walk).
const LOOKUPS_PER_PROCESS: usize = 8;

/// A remembered decision, with its level for the verdict.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Noted {
    level: Level,
    governing: GoverningDecision,
}

/// One recipient's RCPT-time decision.
#[derive(Debug, Clone)]
struct NotedRecipient {
    /// Lower case.
    recipient: Option<Box<str>>,
    domain: Option<Box<str>>,
    noted: Noted,
}

/// The caches an index is built on, each with its observer.
pub struct IndexObservers {
    pub hops: Arc<dyn CacheObserver>,
    pub processes: Arc<dyn CacheObserver>,
    pub messages: Arc<dyn CacheObserver>,
}

impl Default for IndexObservers {
    fn default() -> Self {
        IndexObservers {
            hops: Arc::new(NoObserver),
            processes: Arc::new(NoObserver),
            messages: Arc::new(NoObserver),
        }
    }
}

/// A process's recent lookups: the hop named, and its decision.
type ProcessLookups = Arc<Vec<(Box<str>, Arc<Noted>)>>;

/// A hop's decisions over time: from when each governed (the first of a
/// run of lookups that answered the same), oldest first. A line read late
/// (after a restart) is judged by the one in force when it was logged, not
/// by a later lookup.
type HopLookups = Arc<Vec<(SystemTime, Arc<Noted>)>>;

/// Changes of decision kept per hop.
const CHANGES_PER_HOP: usize = 4;

/// `list` with the decision `noted` in force from `from` (lookups may come
/// in any order: the decision log read back after live records).
fn merged(
    list: &[(SystemTime, Arc<Noted>)],
    from: SystemTime,
    noted: Arc<Noted>,
) -> Vec<(SystemTime, Arc<Noted>)> {
    let mut all = list.to_vec();
    let at = all.partition_point(|(f, _)| *f <= from);
    all.insert(at, (from, noted));
    // A run of the same decision governs from its first lookup.
    all.dedup_by(|later, earlier| later.1 == earlier.1);
    let excess = all.len().saturating_sub(CHANGES_PER_HOP);
    all.drain(..excess);
    all
}

/// What the decision log has decided lately, by next hop, process and
/// queue id.
pub struct DecisionIndex {
    limits: IndexLimits,
    hops: TtlCache<Box<str>, HopLookups>,
    processes: TtlCache<u32, ProcessLookups>,
    messages: TtlCache<Box<str>, Arc<Vec<NotedRecipient>>>,
}

/// Where a delivery line came from.
#[derive(Debug, Clone, Copy)]
pub struct LineFacts<'a> {
    /// `postfix/smtp`.
    pub program: &'a str,
    pub pid: Option<u32>,
    /// The line's own time.
    pub logged_at: SystemTime,
}

/// A delivery judged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Judged {
    pub queue_id: String,
    pub outcome: DeliveryOutcome,
    /// A rule of the operator's forces TLS for the domain (whatever
    /// governed the delivery).
    pub forced_by_rule: bool,
    pub alarm: Option<Alarm>,
}

fn cache<K, V>(capacity: usize, observer: Arc<dyn CacheObserver>) -> TtlCache<K, V>
where
    K: std::hash::Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
{
    TtlCache::new(
        CacheConfig::new(capacity).eviction(Eviction::OldestWritten),
        observer,
    )
}

impl DecisionIndex {
    pub fn new(limits: IndexLimits, observers: IndexObservers) -> DecisionIndex {
        DecisionIndex {
            limits,
            hops: cache(limits.max_hops, observers.hops),
            processes: cache(limits.max_processes, observers.processes),
            messages: cache(limits.max_messages, observers.messages),
        }
    }

    /// Remember what a record decided (delivery records are ignored).
    pub fn note_record(&self, rec: &DecisionRecord) {
        let ts = rec.head.ts;
        match &rec.detail {
            Detail::Lookup(l) => self.note_lookup(l, ts),
            Detail::Recipient(r) => {
                if let Some(q) = &rec.head.queue_id {
                    let rd = RecipientDecision {
                        recipient: Some(r.recipient.clone()),
                        domain: r.domain.clone(),
                        tls: r.decision.tls(),
                        level: r.decision.policy.clone(),
                        source: r.decision.source,
                        rule: r.decision.rule,
                        reason: r.decision.reason.clone(),
                        action: None,
                    };
                    self.note_message(q, DecidedBy::Policy, std::slice::from_ref(&rd), ts);
                }
            }
            Detail::Message(m) => {
                if let Some(q) = &rec.head.queue_id {
                    let by = match rec.detail.frontend() {
                        Some(Frontend::Milter) => DecidedBy::Milter,
                        _ => DecidedBy::Policy,
                    };
                    self.note_message(q, by, &m.recipients, ts);
                }
            }
            Detail::Delivery(_) => {}
        }
    }

    fn note_lookup(&self, l: &Lookup, ts: SystemTime) {
        if let Some(domain) = l.domain.as_deref() {
            self.note_hop(domain, l.client_pid, &l.decision, ts);
        }
    }

    /// A socketmap decision for the next hop `domain` (normalised), asked
    /// at `ts` by process `pid` when known.
    pub fn note_hop(&self, domain: &str, pid: Option<u32>, d: &Decision, ts: SystemTime) {
        let noted = Arc::new(Noted {
            level: d.level,
            governing: governing(DecidedBy::Socketmap, d),
        });
        let expiry = validity(ts, self.limits.hop_window);
        self.note_hop_entry(domain, noted.clone(), expiry);
        if let Some(pid) = pid {
            self.note_process(pid, domain, noted, expiry, ts);
        }
    }

    fn note_hop_entry(&self, domain: &str, noted: Arc<Noted>, expiry: Expiry) {
        self.hops.upsert(Box::from(domain), |old| {
            let list = old.map_or(&[][..], |(v, _)| v.as_slice());
            let list = merged(list, expiry.from, noted);
            let until = old.map_or(expiry.until, |(_, e)| e.until.max(expiry.until));
            let from = list.first().map_or(expiry.from, |(f, _)| *f);
            (Arc::new(list), Expiry::between(from, until).no_refresh())
        });
    }

    fn note_process(
        &self,
        pid: u32,
        domain: &str,
        noted: Arc<Noted>,
        expiry: Expiry,
        ts: SystemTime,
    ) {
        self.processes.upsert(pid, |old| {
            let mut list: Vec<_> = old
                .filter(|(_, e)| e.is_valid_at(ts))
                .map(|(v, _)| v.as_ref().clone())
                .unwrap_or_default();
            list.retain(|(d, _)| &**d != domain);
            if list.len() >= LOOKUPS_PER_PROCESS {
                list.remove(0);
            }
            list.push((Box::from(domain), noted));
            (Arc::new(list), expiry)
        });
    }

    /// RCPT-time decisions for the recipients of message `queue_id`.
    pub fn note_message(
        &self,
        queue_id: &str,
        by: DecidedBy,
        rcpts: &[RecipientDecision],
        ts: SystemTime,
    ) {
        let noted: Vec<NotedRecipient> = rcpts
            .iter()
            .filter_map(|r| {
                let PolicyWord(level) = first_word(&r.level).parse().ok()?;
                Some(NotedRecipient {
                    recipient: r
                        .recipient
                        .as_deref()
                        .map(|s| s.to_ascii_lowercase().into()),
                    domain: r.domain.as_deref().map(|d| d.to_ascii_lowercase().into()),
                    noted: Noted {
                        level,
                        governing: GoverningDecision {
                            by,
                            tls: r.tls,
                            level: r.level.clone(),
                            source: r.source,
                            rule: r.rule,
                            reason: r.reason.clone(),
                        },
                    },
                })
            })
            .collect();
        if noted.is_empty() {
            return;
        }
        let expiry = validity(ts, self.limits.message_window);
        self.messages.upsert(Box::from(queue_id), |old| {
            // Later records (END-OF-MESSAGE after RCPT) replace what an
            // earlier one said of the same recipient.
            let mut list: Vec<NotedRecipient> =
                old.map(|(v, _)| v.as_ref().clone()).unwrap_or_default();
            for n in noted {
                list.retain(|o| o.recipient.is_none() || o.recipient != n.recipient);
                list.push(n);
            }
            (Arc::new(list), expiry)
        });
    }

    /// Judge one delivery. `rule_for(domain)` is the operator's rule for a
    /// domain as it stands now (the policy file's decision, `None` when
    /// no rule names it).
    pub fn judge(
        &self,
        d: &AttributedDelivery,
        line: LineFacts<'_>,
        rule_for: &dyn Fn(&str) -> Option<Decision>,
    ) -> Judged {
        let dl = &d.delivery;
        let domain = dl
            .to
            .rsplit_once('@')
            .and_then(|(_, dom)| normalize_domain(dom).ok());
        let at = line.logged_at;
        let rule = domain.as_deref().and_then(rule_for);
        let forced_by_rule = rule.as_ref().is_some_and(|r| r.tls() == Tls::Forced);
        let facts = d.connection.as_ref();
        let tls = facts.and_then(|f| f.tls.as_ref());
        let trust = tls.map_or(TlsTrust::None, |t| trust_of(t.trust));
        let failure = dl
            .tls_failure()
            .or_else(|| facts.and_then(|f| f.failures.last()).map(|f| f.kind));
        let attempt = match (&dl.status, failure) {
            (Status::Sent, _) => Attempt::Sent(trust),
            (_, Some(super::peer::TlsFailureKind::ConfigProblem)) => Attempt::NoPolicy,
            (Status::Deferred | Status::Bounced | Status::Expired, Some(_)) => Attempt::HeldForTls,
            _ => Attempt::NotDelivered,
        };
        // Postfix got no answer for a delivery without a policy: a lookup
        // others made for its next hop did not govern it.
        let asked = attempt != Attempt::NoPolicy;
        let found = asked
            .then(|| self.by_hop(dl, domain.as_deref(), line.pid, at))
            .flatten()
            .or_else(|| self.by_message(&dl.queue_id, dl, domain.as_deref(), at))
            .map(|n| (n, true))
            .or_else(|| {
                rule.as_ref().map(|r| {
                    let n = Noted {
                        level: r.level,
                        governing: governing(DecidedBy::Rule, r),
                    };
                    (n, false)
                })
            });
        let g = found.as_ref().map(|(n, consulted)| Governing {
            level: n.level,
            consulted: *consulted,
        });
        let v: Verdict = verdict(g, attempt);
        let outcome = DeliveryOutcome {
            recipient: dl.to.clone(),
            orig_to: dl.orig_to.clone(),
            domain,
            relay: relay_text(&dl.relay),
            transport: line.program.to_string(),
            status: status_text(&dl.status).to_string(),
            dsn: dl.dsn.clone(),
            status_text: dl.text.clone(),
            tls_trust: trust,
            tls_protocol: tls.map(|t| t.protocol.clone()),
            tls_cipher: tls.map(|t| t.cipher.clone()),
            tls_failure: match attempt {
                Attempt::Sent(_) => None,
                _ => failure.map(|f| f.as_str()),
            },
            governing: found.map(|(n, _)| n.governing),
            verdict: v,
            logged_at: at,
            delay: dl.delay,
        };
        Judged {
            queue_id: dl.queue_id.clone(),
            outcome,
            forced_by_rule,
            alarm: v.alarm(forced_by_rule),
        }
    }

    /// The socketmap lookup for this delivery's next hop: its own
    /// process's first, then the latest for that hop.
    fn by_hop(
        &self,
        dl: &super::delivery::Delivery,
        domain: Option<&str>,
        pid: Option<u32>,
        at: SystemTime,
    ) -> Option<Noted> {
        let relay_host = match &dl.relay {
            Relay::Peer(p) => normalize_domain(&p.host).ok(),
            _ => None,
        };
        let candidates: Vec<&str> = relay_host
            .as_deref()
            .into_iter()
            .chain(domain)
            .chain(domain.into_iter().flat_map(parents))
            .collect();
        if let Some(list) = pid.and_then(|p| self.processes.peek_valid(&p, at)) {
            for c in &candidates {
                if let Some((_, n)) = list.iter().rev().find(|(d, _)| &**d == *c) {
                    return Some(n.as_ref().clone());
                }
            }
        }
        candidates.iter().find_map(|c| {
            let list = self.hops.peek_valid(*c, at)?;
            let in_force = list.iter().rev().find(|(from, _)| *from <= at)?;
            Some(in_force.1.as_ref().clone())
        })
    }

    /// The RCPT-time decision for this queue id's recipient (by address,
    /// then original address, then domain).
    fn by_message(
        &self,
        queue_id: &str,
        dl: &super::delivery::Delivery,
        domain: Option<&str>,
        at: SystemTime,
    ) -> Option<Noted> {
        let list = self.messages.peek_valid(queue_id, at)?;
        let to = dl.to.to_ascii_lowercase();
        let orig = dl.orig_to.as_deref().map(str::to_ascii_lowercase);
        let by_addr = |a: &str| {
            list.iter()
                .rev()
                .find(|r| r.recipient.as_deref() == Some(a))
        };
        by_addr(&to)
            .or_else(|| orig.as_deref().and_then(by_addr))
            .or_else(|| {
                let d = domain?;
                list.iter().rev().find(|r| r.domain.as_deref() == Some(d))
            })
            .map(|r| r.noted.clone())
    }

    /// Entries held: hops, processes, messages.
    pub fn sizes(&self) -> (usize, usize, usize) {
        (self.hops.len(), self.processes.len(), self.messages.len())
    }
}

impl RecordTap for DecisionIndex {
    fn note(&self, record: &DecisionRecord) {
        self.note_record(record);
    }
}

fn governing(by: DecidedBy, d: &Decision) -> GoverningDecision {
    GoverningDecision {
        by,
        tls: d.tls(),
        level: d.policy.clone(),
        source: d.source,
        rule: d.rule,
        reason: d.reason.clone(),
    }
}

fn first_word(s: &str) -> &str {
    s.split_ascii_whitespace().next().unwrap_or("")
}

fn trust_of(t: Trust) -> TlsTrust {
    match t {
        Trust::Anonymous => TlsTrust::Anonymous,
        Trust::Untrusted => TlsTrust::Untrusted,
        Trust::Trusted => TlsTrust::Trusted,
        Trust::Verified => TlsTrust::Verified,
    }
}

fn relay_text(r: &Relay) -> String {
    match r {
        Relay::None => "none".to_string(),
        Relay::Peer(p) => p.to_string(),
        Relay::Other(s) => s.clone(),
    }
}

fn status_text(s: &Status) -> &str {
    match s {
        Status::Sent => "sent",
        Status::Deferred => "deferred",
        Status::Bounced => "bounced",
        Status::Expired => "expired",
        Status::Other(o) => o,
    }
}

#[cfg(test)]
#[path = "correlate_tests.rs"]
mod tests;
