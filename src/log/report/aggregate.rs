//! The aggregation behind `tls-policyd report`: delivery records in, the
//! TLS posture per recipient domain and over time out. Pure: no files, no
//! clock; the window and every record's time are given.

use std::cmp::Reverse;
use std::collections::{HashMap, HashSet};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Serialize, Serializer};

use crate::log::reader::{Delivery, Verdict};

/// Windows longer than this are charted by day, shorter ones by hour.
const HOURLY_UP_TO: Duration = Duration::from_secs(3 * 86_400);

/// The `status` of a delivery Postfix completed.
const SENT: &str = "sent";

/// The `tls_trust` values of a connection that had TLS.
const TLS_TRUST: [&str; 4] = ["anonymous", "untrusted", "trusted", "verified"];

/// The `tls_trust` of a verified peer.
const VERIFIED: &str = "verified";

/// The width of a chart bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Bucketing {
    Hour,
    Day,
}

impl Bucketing {
    /// Hours for windows of up to 3 days, days beyond.
    pub fn for_window(since: SystemTime, until: SystemTime) -> Bucketing {
        match until.duration_since(since) {
            Ok(d) if d > HOURLY_UP_TO => Bucketing::Day,
            _ => Bucketing::Hour,
        }
    }

    fn seconds(self) -> u64 {
        match self {
            Bucketing::Hour => 3600,
            Bucketing::Day => 86_400,
        }
    }
}

/// The report: the window, the posture per domain and in total, and the
/// shares over time.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    /// First instant of the window (records at it count).
    #[serde(serialize_with = "rfc3339")]
    pub since: SystemTime,
    /// End of the window (records at it do not count).
    #[serde(serialize_with = "rfc3339")]
    pub until: SystemTime,
    /// Delivery records in the window.
    pub records: u64,
    pub totals: Posture,
    /// By violations, then held, then messages (most first), then name;
    /// the recipients without a domain last.
    pub domains: Vec<DomainPosture>,
    pub bucket: Bucketing,
    /// Every bucket from the one holding `since` to the one before
    /// `until`, empty ones included.
    pub series: Vec<Bucket>,
}

/// What the records of the window say about one domain, or all of them.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Posture {
    /// Distinct queue ids with a delivery record.
    pub messages: u64,
    /// Delivery records (attempts).
    pub deliveries: u64,
    /// Records with status `sent`.
    pub delivered: u64,
    /// Of those, sent over TLS of any trust.
    pub encrypted: u64,
    /// Of those, sent to a verified peer.
    pub verified: u64,
    /// `encrypted / delivered`; `None` (JSON null) when nothing was
    /// delivered.
    pub share_encrypted: Option<f64>,
    /// `verified / delivered`; `None` (JSON null) when nothing was
    /// delivered.
    pub share_verified: Option<f64>,
    pub plaintext_fallbacks: u64,
    /// Recipients whose latest record in the window is `held`.
    pub held: u64,
    /// The one of them held the longest.
    pub oldest_held: Option<HeldRecipient>,
    pub violations: u64,
    pub policy_unreachable: u64,
    pub undecided: u64,
}

/// A recipient still held at the end of the window.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HeldRecipient {
    pub queue_id: String,
    pub recipient: String,
    /// Its first `held` record, in the window or before it.
    #[serde(serialize_with = "rfc3339")]
    pub since: SystemTime,
    /// From `since` to the end of the window, in whole seconds.
    pub age_seconds: u64,
}

/// One domain's posture; `domain` is `None` (JSON null) for recipients
/// without one.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DomainPosture {
    pub domain: Option<String>,
    #[serde(flatten)]
    pub posture: Posture,
}

/// Deliveries completed within one bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Bucket {
    #[serde(serialize_with = "rfc3339")]
    pub start: SystemTime,
    pub delivered: u64,
    pub encrypted: u64,
    pub verified: u64,
}

/// The counters of one domain.
#[derive(Debug, Default)]
struct Counts {
    queue_ids: HashSet<String>,
    deliveries: u64,
    delivered: u64,
    encrypted: u64,
    verified: u64,
    plaintext_fallbacks: u64,
    violations: u64,
    policy_unreachable: u64,
    undecided: u64,
}

/// A recipient that had a `held` record: whether it still is.
#[derive(Debug)]
struct Recipient {
    /// The domain of its latest record ("" for none).
    domain: String,
    latest: SystemTime,
    latest_held: bool,
    first_held: SystemTime,
}

/// Takes delivery records one by one ([`Aggregator::add`]), in the order
/// they were written, and makes the [`Report`] ([`Aggregator::finish`]).
/// Records before the window only tell how long a recipient has been held;
/// records at or after its end are ignored.
#[derive(Debug)]
pub struct Aggregator {
    since: SystemTime,
    until: SystemTime,
    bucketing: Bucketing,
    /// Start of the first bucket: `since` rounded down to the bucket width.
    first_bucket: SystemTime,
    series: Vec<Bucket>,
    records: u64,
    /// By domain, "" for recipients without one.
    domains: HashMap<String, Counts>,
    /// Every queue id of the window, for the total of messages.
    queue_ids: HashSet<String>,
    /// By queue id and recipient, separated by a NUL.
    held: HashMap<String, Recipient>,
    /// Reused to build keys of `held`.
    key: String,
}

impl Aggregator {
    /// An aggregator for the window `since` (included) to `until` (not
    /// included); `until` must be after `since`.
    pub fn new(since: SystemTime, until: SystemTime) -> Aggregator {
        let bucketing = Bucketing::for_window(since, until);
        let width = bucketing.seconds();
        let since_secs = secs(since);
        let first_bucket = UNIX_EPOCH + Duration::from_secs(since_secs - since_secs % width);
        let span = until
            .duration_since(first_bucket)
            .unwrap_or_default()
            .as_nanos();
        let width_nanos = u128::from(width) * 1_000_000_000;
        let n = u64::try_from(span.div_ceil(width_nanos)).unwrap_or(u64::MAX);
        let series = (0..n)
            .map(|i| Bucket {
                start: first_bucket + Duration::from_secs(i * width),
                delivered: 0,
                encrypted: 0,
                verified: 0,
            })
            .collect();
        Aggregator {
            since,
            until,
            bucketing,
            first_bucket,
            series,
            records: 0,
            domains: HashMap::new(),
            queue_ids: HashSet::new(),
            held: HashMap::new(),
            key: String::new(),
        }
    }

    /// Counts one delivery record.
    pub fn add(&mut self, d: &Delivery<'_>) {
        if d.ts >= self.until {
            return;
        }
        self.follow_held(d);
        if d.ts < self.since {
            return;
        }
        self.records += 1;
        let queue_id = d.queue_id.unwrap_or("");
        insert_str(&mut self.queue_ids, queue_id);
        let domain = d.domain.unwrap_or("");
        if !self.domains.contains_key(domain) {
            self.domains.insert(domain.to_owned(), Counts::default());
        }
        let c = self.domains.get_mut(domain).expect("inserted above");
        insert_str(&mut c.queue_ids, queue_id);
        c.deliveries += 1;
        match d.verdict {
            Some(Verdict::PlaintextFallback) => c.plaintext_fallbacks += 1,
            Some(Verdict::Violation) => c.violations += 1,
            Some(Verdict::PolicyUnreachable) => c.policy_unreachable += 1,
            Some(Verdict::Undecided) => c.undecided += 1,
            _ => {}
        }
        if d.status != Some(SENT) {
            return;
        }
        let trust = d.tls_trust.unwrap_or("");
        let encrypted = TLS_TRUST.contains(&trust);
        let verified = trust == VERIFIED;
        c.delivered += 1;
        c.encrypted += u64::from(encrypted);
        c.verified += u64::from(verified);
        let width = self.bucketing.seconds();
        let offset = d.ts.duration_since(self.first_bucket).unwrap_or_default();
        if let Some(b) = usize::try_from(offset.as_secs() / width)
            .ok()
            .and_then(|i| self.series.get_mut(i))
        {
            b.delivered += 1;
            b.encrypted += u64::from(encrypted);
            b.verified += u64::from(verified);
        }
    }

    /// Keeps track of the recipients that were held: from their first
    /// `held` record, whether their latest one is `held` too.
    fn follow_held(&mut self, d: &Delivery<'_>) {
        let held = d.verdict == Some(Verdict::Held);
        if !held && self.held.is_empty() {
            return;
        }
        self.key.clear();
        self.key.push_str(d.queue_id.unwrap_or(""));
        self.key.push('\0');
        self.key.push_str(d.recipient.unwrap_or(""));
        let domain = d.domain.unwrap_or("");
        match self.held.get_mut(self.key.as_str()) {
            Some(r) => {
                if held {
                    r.first_held = r.first_held.min(d.ts);
                }
                if d.ts >= r.latest {
                    r.latest = d.ts;
                    r.latest_held = held;
                    if r.domain != domain {
                        domain.clone_into(&mut r.domain);
                    }
                }
            }
            None if held => {
                self.held.insert(
                    self.key.clone(),
                    Recipient {
                        domain: domain.to_owned(),
                        latest: d.ts,
                        latest_held: true,
                        first_held: d.ts,
                    },
                );
            }
            None => {}
        }
    }

    /// The report of what was added.
    pub fn finish(self) -> Report {
        let until = self.until;
        let mut held: HashMap<&str, (u64, Option<HeldRecipient>)> = HashMap::new();
        for (key, r) in &self.held {
            if !r.latest_held || r.latest < self.since {
                continue;
            }
            let (queue_id, recipient) = key.split_once('\0').unwrap_or((key, ""));
            let candidate = HeldRecipient {
                queue_id: queue_id.to_owned(),
                recipient: recipient.to_owned(),
                since: r.first_held,
                age_seconds: until
                    .duration_since(r.first_held)
                    .unwrap_or_default()
                    .as_secs(),
            };
            let entry = held.entry(r.domain.as_str()).or_default();
            entry.0 += 1;
            entry.1 = Some(older(entry.1.take(), candidate));
        }
        let mut totals = Posture {
            messages: self.queue_ids.len() as u64,
            ..Posture::default()
        };
        let mut domains: Vec<DomainPosture> = Vec::with_capacity(self.domains.len());
        // Every held recipient's latest record is in the window, so its
        // domain is among these.
        for (name, c) in &self.domains {
            let (n_held, oldest) = held.remove(name.as_str()).unwrap_or_default();
            let p = posture(c, n_held, oldest);
            add_into(&mut totals, &p);
            domains.push(DomainPosture {
                domain: (!name.is_empty()).then(|| name.clone()),
                posture: p,
            });
        }
        totals.share_encrypted = share(totals.encrypted, totals.delivered);
        totals.share_verified = share(totals.verified, totals.delivered);
        domains.sort_by(|a, b| {
            let rank = |d: &DomainPosture| {
                (
                    Reverse(d.posture.violations),
                    Reverse(d.posture.held),
                    Reverse(d.posture.messages),
                    d.domain.is_none(),
                )
            };
            rank(a).cmp(&rank(b)).then_with(|| a.domain.cmp(&b.domain))
        });
        Report {
            since: self.since,
            until,
            records: self.records,
            totals,
            domains,
            bucket: self.bucketing,
            series: self.series,
        }
    }
}

fn posture(c: &Counts, held: u64, oldest_held: Option<HeldRecipient>) -> Posture {
    Posture {
        messages: c.queue_ids.len() as u64,
        deliveries: c.deliveries,
        delivered: c.delivered,
        encrypted: c.encrypted,
        verified: c.verified,
        share_encrypted: share(c.encrypted, c.delivered),
        share_verified: share(c.verified, c.delivered),
        plaintext_fallbacks: c.plaintext_fallbacks,
        held,
        oldest_held,
        violations: c.violations,
        policy_unreachable: c.policy_unreachable,
        undecided: c.undecided,
    }
}

/// Adds a domain's counts to the totals (all but messages, which are
/// counted once however many domains a message went to).
fn add_into(totals: &mut Posture, p: &Posture) {
    totals.deliveries += p.deliveries;
    totals.delivered += p.delivered;
    totals.encrypted += p.encrypted;
    totals.verified += p.verified;
    totals.plaintext_fallbacks += p.plaintext_fallbacks;
    totals.held += p.held;
    totals.violations += p.violations;
    totals.policy_unreachable += p.policy_unreachable;
    totals.undecided += p.undecided;
    if let Some(o) = &p.oldest_held {
        totals.oldest_held = Some(older(totals.oldest_held.take(), o.clone()));
    }
}

/// The one held longer; on a tie the first by queue id and recipient, so
/// the report does not depend on hash order.
fn older(a: Option<HeldRecipient>, b: HeldRecipient) -> HeldRecipient {
    match a {
        Some(a) if (a.since, &a.queue_id, &a.recipient) <= (b.since, &b.queue_id, &b.recipient) => {
            a
        }
        _ => b,
    }
}

/// `part / whole`, absent for nothing.
pub fn share(part: u64, whole: u64) -> Option<f64> {
    // Counts far below 2^53: exact as f64.
    (whole > 0).then(|| part as f64 / whole as f64)
}

/// `part / whole` in tenths of a percent, rounded half up, as the text and
/// the page show it: whole numbers only, so both round alike.
pub fn tenths_of_percent(part: u64, whole: u64) -> Option<u64> {
    (whole > 0).then(|| (2000 * part + whole) / (2 * whole))
}

fn insert_str(set: &mut HashSet<String>, s: &str) {
    if !set.contains(s) {
        set.insert(s.to_owned());
    }
}

/// Whole seconds since the epoch (0 for earlier times, which the command
/// line does not accept).
fn secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs()
}

fn rfc3339<S: Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&humantime::format_rfc3339_seconds(*t))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> SystemTime {
        humantime::parse_rfc3339(s).unwrap()
    }

    /// A delivery record on 2026-12-05 at `hms`; the domain is the
    /// recipient's after the `@`.
    fn rec(
        hms: &str,
        queue_id: &'static str,
        recipient: &'static str,
        status: &'static str,
        trust: &'static str,
        verdict: Verdict,
    ) -> Delivery<'static> {
        Delivery {
            ts: at(&format!("2026-12-05T{hms}Z")),
            queue_id: Some(queue_id),
            recipient: Some(recipient),
            domain: recipient.split_once('@').map(|(_, d)| d),
            status: Some(status),
            tls_trust: Some(trust),
            verdict: Some(verdict),
        }
    }

    fn sent(hms: &str, q: &'static str, r: &'static str, trust: &'static str) -> Delivery<'static> {
        let verdict = match trust {
            "verified" => Verdict::Verified,
            "none" => Verdict::PlaintextFallback,
            _ => Verdict::Encrypted,
        };
        rec(hms, q, r, "sent", trust, verdict)
    }

    fn held(hms: &str, q: &'static str, r: &'static str) -> Delivery<'static> {
        rec(hms, q, r, "deferred", "none", Verdict::Held)
    }

    /// One line per posture: totals first, then the domains in order.
    fn lines(r: &Report) -> Vec<String> {
        let show = |name: &str, p: &Posture| {
            let oldest = p.oldest_held.as_ref().map_or("-".to_owned(), |o| {
                format!(
                    "{}/{}@{}+{}s",
                    o.queue_id,
                    o.recipient,
                    humantime::format_rfc3339_seconds(o.since),
                    o.age_seconds
                )
            });
            format!(
                "{name}: msgs {} deliv {} sent {} enc {} ver {} fallback {} held {} oldest {oldest} \
                 viol {} unreach {} undec {}",
                p.messages,
                p.deliveries,
                p.delivered,
                p.encrypted,
                p.verified,
                p.plaintext_fallbacks,
                p.held,
                p.violations,
                p.policy_unreachable,
                p.undecided
            )
        };
        let mut out = vec![show("TOTAL", &r.totals)];
        for d in &r.domains {
            out.push(show(d.domain.as_deref().unwrap_or("-"), &d.posture));
        }
        out
    }

    fn report(since: &str, until: &str, records: &[Delivery<'_>]) -> Report {
        let mut a = Aggregator::new(at(since), at(until));
        for d in records {
            a.add(d);
        }
        a.finish()
    }

    const SINCE: &str = "2026-12-05T10:00:00Z";
    const UNTIL: &str = "2026-12-05T12:00:00Z";

    #[test]
    fn posture_by_domain() {
        let no_domain = Delivery {
            domain: None,
            ..sent("10:20:00", "Q9", "root", "none")
        };
        let cases: [(&str, Vec<Delivery<'static>>, &[&str]); 9] = [
            (
                "empty log",
                vec![],
                &[
                    "TOTAL: msgs 0 deliv 0 sent 0 enc 0 ver 0 fallback 0 held 0 oldest - \
                   viol 0 unreach 0 undec 0",
                ],
            ),
            (
                "one domain",
                vec![
                    sent("10:00:00", "Q1", "a@one.test", "verified"),
                    sent("10:00:00", "Q1", "b@one.test", "trusted"),
                    sent("11:00:00", "Q2", "a@one.test", "none"),
                    rec(
                        "11:10:00",
                        "Q3",
                        "c@one.test",
                        "bounced",
                        "none",
                        Verdict::NotDelivered,
                    ),
                ],
                &[
                    "TOTAL: msgs 3 deliv 4 sent 3 enc 2 ver 1 fallback 1 held 0 oldest - \
                     viol 0 unreach 0 undec 0",
                    "one.test: msgs 3 deliv 4 sent 3 enc 2 ver 1 fallback 1 held 0 oldest - \
                     viol 0 unreach 0 undec 0",
                ],
            ),
            (
                "held then delivered",
                vec![
                    held("10:00:00", "Q1", "a@forced.test"),
                    held("10:30:00", "Q1", "a@forced.test"),
                    sent("10:45:00", "Q1", "a@forced.test", "verified"),
                ],
                &[
                    "TOTAL: msgs 1 deliv 3 sent 1 enc 1 ver 1 fallback 0 held 0 oldest - \
                     viol 0 unreach 0 undec 0",
                    "forced.test: msgs 1 deliv 3 sent 1 enc 1 ver 1 fallback 0 held 0 oldest - \
                     viol 0 unreach 0 undec 0",
                ],
            ),
            (
                "held never delivered: aged from the first held record to the end",
                vec![
                    held("10:00:00", "Q1", "a@forced.test"),
                    rec(
                        "10:15:00",
                        "Q1",
                        "a@forced.test",
                        "deferred",
                        "none",
                        Verdict::NotDelivered,
                    ),
                    held("10:30:00", "Q1", "a@forced.test"),
                    held("11:00:00", "Q2", "b@forced.test"),
                    sent("11:00:00", "Q2", "c@forced.test", "verified"),
                ],
                &[
                    "TOTAL: msgs 2 deliv 5 sent 1 enc 1 ver 1 fallback 0 held 2 \
                     oldest Q1/a@forced.test@2026-12-05T10:00:00Z+7200s viol 0 unreach 0 undec 0",
                    "forced.test: msgs 2 deliv 5 sent 1 enc 1 ver 1 fallback 0 held 2 \
                     oldest Q1/a@forced.test@2026-12-05T10:00:00Z+7200s viol 0 unreach 0 undec 0",
                ],
            ),
            (
                "held before the window and in it; held before it only",
                vec![
                    held("08:00:00", "Q1", "a@forced.test"),
                    held("08:30:00", "Q2", "b@forced.test"),
                    sent("09:00:00", "Q3", "c@forced.test", "verified"),
                    held("10:30:00", "Q1", "a@forced.test"),
                ],
                &[
                    "TOTAL: msgs 1 deliv 1 sent 0 enc 0 ver 0 fallback 0 held 1 \
                     oldest Q1/a@forced.test@2026-12-05T08:00:00Z+14400s viol 0 unreach 0 undec 0",
                    "forced.test: msgs 1 deliv 1 sent 0 enc 0 ver 0 fallback 0 held 1 \
                     oldest Q1/a@forced.test@2026-12-05T08:00:00Z+14400s viol 0 unreach 0 undec 0",
                ],
            ),
            (
                "--since exactly at a record's ts counts it, --until at one does not",
                vec![
                    sent("09:59:59.999999", "Q0", "a@edge.test", "none"),
                    sent("10:00:00", "Q1", "a@edge.test", "verified"),
                    sent("11:59:59.999999", "Q2", "a@edge.test", "trusted"),
                    held("11:59:59", "Q3", "a@edge.test"),
                    sent("12:00:00", "Q3", "a@edge.test", "verified"),
                ],
                &[
                    "TOTAL: msgs 3 deliv 3 sent 2 enc 2 ver 1 fallback 0 held 1 \
                     oldest Q3/a@edge.test@2026-12-05T11:59:59Z+1s viol 0 unreach 0 undec 0",
                    "edge.test: msgs 3 deliv 3 sent 2 enc 2 ver 1 fallback 0 held 1 \
                     oldest Q3/a@edge.test@2026-12-05T11:59:59Z+1s viol 0 unreach 0 undec 0",
                ],
            ),
            (
                "order: violations, then held, then messages, then name; no domain last",
                vec![
                    sent("10:00:00", "Q1", "a@many.test", "none"),
                    sent("10:00:00", "Q2", "a@many.test", "none"),
                    sent("10:00:00", "Q3", "a@many.test", "none"),
                    held("10:00:00", "Q4", "a@held.test"),
                    rec(
                        "10:00:00",
                        "Q5",
                        "a@bad.test",
                        "sent",
                        "none",
                        Verdict::Violation,
                    ),
                    sent("10:00:00", "Q6", "a@b-few.test", "trusted"),
                    sent("10:00:00", "Q7", "a@a-few.test", "trusted"),
                    no_domain,
                ],
                &[
                    "TOTAL: msgs 8 deliv 8 sent 7 enc 2 ver 0 fallback 4 held 1 \
                     oldest Q4/a@held.test@2026-12-05T10:00:00Z+7200s viol 1 unreach 0 undec 0",
                    "bad.test: msgs 1 deliv 1 sent 1 enc 0 ver 0 fallback 0 held 0 oldest - \
                     viol 1 unreach 0 undec 0",
                    "held.test: msgs 1 deliv 1 sent 0 enc 0 ver 0 fallback 0 held 1 \
                     oldest Q4/a@held.test@2026-12-05T10:00:00Z+7200s viol 0 unreach 0 undec 0",
                    "many.test: msgs 3 deliv 3 sent 3 enc 0 ver 0 fallback 3 held 0 oldest - \
                     viol 0 unreach 0 undec 0",
                    "a-few.test: msgs 1 deliv 1 sent 1 enc 1 ver 0 fallback 0 held 0 oldest - \
                     viol 0 unreach 0 undec 0",
                    "b-few.test: msgs 1 deliv 1 sent 1 enc 1 ver 0 fallback 0 held 0 oldest - \
                     viol 0 unreach 0 undec 0",
                    "-: msgs 1 deliv 1 sent 1 enc 0 ver 0 fallback 1 held 0 oldest - \
                     viol 0 unreach 0 undec 0",
                ],
            ),
            (
                "a message to two domains is one message in the totals",
                vec![
                    sent("10:00:00", "Q1", "a@one.test", "trusted"),
                    sent("10:00:00", "Q1", "a@two.test", "anonymous"),
                    rec(
                        "10:05:00",
                        "Q2",
                        "b@two.test",
                        "deferred",
                        "none",
                        Verdict::PolicyUnreachable,
                    ),
                    rec(
                        "10:06:00",
                        "Q2",
                        "b@two.test",
                        "sent",
                        "untrusted",
                        Verdict::Undecided,
                    ),
                ],
                &[
                    "TOTAL: msgs 2 deliv 4 sent 3 enc 3 ver 0 fallback 0 held 0 oldest - \
                     viol 0 unreach 1 undec 1",
                    "two.test: msgs 2 deliv 3 sent 2 enc 2 ver 0 fallback 0 held 0 oldest - \
                     viol 0 unreach 1 undec 1",
                    "one.test: msgs 1 deliv 1 sent 1 enc 1 ver 0 fallback 0 held 0 oldest - \
                     viol 0 unreach 0 undec 0",
                ],
            ),
            (
                "two held: the oldest of all in the totals",
                vec![
                    held("10:40:00", "Q2", "b@one.test"),
                    held("10:20:00", "Q1", "a@two.test"),
                    held("10:50:00", "Q3", "c@one.test"),
                ],
                &[
                    "TOTAL: msgs 3 deliv 3 sent 0 enc 0 ver 0 fallback 0 held 3 \
                     oldest Q1/a@two.test@2026-12-05T10:20:00Z+6000s viol 0 unreach 0 undec 0",
                    "one.test: msgs 2 deliv 2 sent 0 enc 0 ver 0 fallback 0 held 2 \
                     oldest Q2/b@one.test@2026-12-05T10:40:00Z+4800s viol 0 unreach 0 undec 0",
                    "two.test: msgs 1 deliv 1 sent 0 enc 0 ver 0 fallback 0 held 1 \
                     oldest Q1/a@two.test@2026-12-05T10:20:00Z+6000s viol 0 unreach 0 undec 0",
                ],
            ),
        ];
        for (what, records, want) in cases {
            let r = report(SINCE, UNTIL, &records);
            assert_eq!(lines(&r), want.to_vec(), "{what}");
        }
    }

    #[test]
    fn records_counts_the_window_only() {
        let r = report(
            SINCE,
            UNTIL,
            &[
                held("09:00:00", "Q1", "a@x.test"),
                held("10:00:00", "Q1", "a@x.test"),
                sent("12:00:00", "Q1", "a@x.test", "verified"),
            ],
        );
        assert_eq!(r.records, 1);
        assert_eq!(r.totals.deliveries, 1);
    }

    #[test]
    fn shares() {
        let r = report(
            SINCE,
            UNTIL,
            &[
                sent("10:00:00", "Q1", "a@x.test", "verified"),
                sent("10:00:00", "Q2", "a@x.test", "untrusted"),
                sent("10:00:00", "Q3", "a@x.test", "none"),
                held("10:00:00", "Q4", "a@y.test"),
            ],
        );
        assert_eq!(r.totals.share_encrypted, Some(2.0 / 3.0));
        assert_eq!(r.totals.share_verified, Some(1.0 / 3.0));
        let y = r
            .domains
            .iter()
            .find(|d| d.domain.as_deref() == Some("y.test"));
        assert_eq!(y.unwrap().posture.share_encrypted, None);

        let cases: [(u64, u64, Option<u64>); 8] = [
            (1, 3, Some(333)),
            (2, 3, Some(667)),
            (1, 16, Some(63)), // 6.25%: half up
            (1, 8, Some(125)),
            (0, 5, Some(0)),
            (5, 5, Some(1000)),
            (1, 2000, Some(1)), // 0.05%: half up
            (3, 0, None),
        ];
        for (part, whole, want) in cases {
            assert_eq!(tenths_of_percent(part, whole), want, "{part}/{whole}");
        }
    }

    #[test]
    fn buckets() {
        // (since, until, bucketing, bucket starts)
        let cases: [(&str, &str, Bucketing, &[&str]); 5] = [
            (
                "2026-12-05T10:30:00Z",
                "2026-12-05T12:15:00Z",
                Bucketing::Hour,
                &[
                    "2026-12-05T10:00:00Z",
                    "2026-12-05T11:00:00Z",
                    "2026-12-05T12:00:00Z",
                ],
            ),
            (
                "2026-12-05T10:00:00Z",
                "2026-12-05T12:00:00Z",
                Bucketing::Hour,
                &["2026-12-05T10:00:00Z", "2026-12-05T11:00:00Z"],
            ),
            (
                "2026-12-05T10:00:00Z",
                "2026-12-05T10:00:00.5Z",
                Bucketing::Hour,
                &["2026-12-05T10:00:00Z"],
            ),
            (
                "2026-12-01T05:00:00Z",
                "2026-12-05T05:00:00Z",
                Bucketing::Day,
                &[
                    "2026-12-01T00:00:00Z",
                    "2026-12-02T00:00:00Z",
                    "2026-12-03T00:00:00Z",
                    "2026-12-04T00:00:00Z",
                    "2026-12-05T00:00:00Z",
                ],
            ),
            (
                "2026-12-02T00:00:00Z",
                "2026-12-05T00:00:01Z",
                Bucketing::Day,
                &[
                    "2026-12-02T00:00:00Z",
                    "2026-12-03T00:00:00Z",
                    "2026-12-04T00:00:00Z",
                    "2026-12-05T00:00:00Z",
                ],
            ),
        ];
        for (since, until, bucketing, starts) in cases {
            let r = report(since, until, &[]);
            assert_eq!(r.bucket, bucketing, "{since} .. {until}");
            let got: Vec<String> = r
                .series
                .iter()
                .map(|b| humantime::format_rfc3339_seconds(b.start).to_string())
                .collect();
            assert_eq!(got, starts.to_vec(), "{since} .. {until}");
        }
        // Exactly three days is still hourly.
        let r = report("2026-12-02T00:00:00Z", "2026-12-05T00:00:00Z", &[]);
        assert_eq!((r.bucket, r.series.len()), (Bucketing::Hour, 72));
    }

    #[test]
    fn series_counts_deliveries_in_their_bucket() {
        let r = report(
            "2026-12-05T10:30:00Z",
            "2026-12-05T12:15:00Z",
            &[
                // Before the window, though in its first bucket.
                sent("10:15:00", "Q0", "a@x.test", "verified"),
                sent("10:30:00", "Q1", "a@x.test", "verified"),
                sent("10:59:59.999999", "Q2", "a@x.test", "none"),
                sent("11:00:00", "Q3", "a@x.test", "trusted"),
                held("11:10:00", "Q4", "a@x.test"),
                sent("12:14:59", "Q5", "a@x.test", "anonymous"),
                sent("12:15:00", "Q6", "a@x.test", "verified"),
            ],
        );
        let got: Vec<(u64, u64, u64)> = r
            .series
            .iter()
            .map(|b| (b.delivered, b.encrypted, b.verified))
            .collect();
        assert_eq!(got, [(2, 1, 1), (1, 1, 0), (1, 1, 0)]);
    }

    #[test]
    fn json_shape() {
        let r = report(
            SINCE,
            "2026-12-05T11:00:00Z",
            &[held("10:00:00", "Q1", "a@x.test")],
        );
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(v["since"], "2026-12-05T10:00:00Z");
        assert_eq!(v["until"], "2026-12-05T11:00:00Z");
        assert_eq!(v["bucket"], "hour");
        assert_eq!(v["records"], 1);
        assert_eq!(v["totals"]["share_encrypted"], serde_json::Value::Null);
        assert_eq!(
            v["domains"][0],
            serde_json::json!({
                "domain": "x.test",
                "messages": 1,
                "deliveries": 1,
                "delivered": 0,
                "encrypted": 0,
                "verified": 0,
                "share_encrypted": null,
                "share_verified": null,
                "plaintext_fallbacks": 0,
                "held": 1,
                "oldest_held": {
                    "queue_id": "Q1",
                    "recipient": "a@x.test",
                    "since": "2026-12-05T10:00:00Z",
                    "age_seconds": 3600
                },
                "violations": 0,
                "policy_unreachable": 0,
                "undecided": 0
            })
        );
        assert_eq!(
            v["series"],
            serde_json::json!([{
                "start": "2026-12-05T10:00:00Z",
                "delivered": 0,
                "encrypted": 0,
                "verified": 0
            }])
        );
    }
}
