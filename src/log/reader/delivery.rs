//! Delivery outcome records handed to other modules ([`read_deliveries`],
//! used by `tls-policyd report`): the fields that say what became of one
//! delivery attempt, borrowed from the line being read.

use std::time::SystemTime;

use super::record::{Record, text};
use super::values::{Verdict, verdict_from_log};
use super::{Filter, LogQuery, ReadError, RunStats, Stop, scan};

/// One delivery record (`frontend` `"delivery"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delivery<'a> {
    /// The record's `ts`.
    pub ts: SystemTime,
    pub queue_id: Option<&'a str>,
    pub recipient: Option<&'a str>,
    /// Lower-case A-label; absent for a recipient without a domain.
    pub domain: Option<&'a str>,
    /// `sent`, `deferred`, `bounced`, `expired` or what else Postfix said.
    pub status: Option<&'a str>,
    /// `none`, `anonymous`, `untrusted`, `trusted` or `verified`.
    pub tls_trust: Option<&'a str>,
    /// `None` for a verdict this reader does not know.
    pub verdict: Option<Verdict>,
}

impl<'a> Delivery<'a> {
    fn of(rec: &'a Record<'_>, ts: SystemTime) -> Self {
        Delivery {
            ts,
            queue_id: text(&rec.queue_id),
            recipient: text(&rec.recipient),
            domain: text(&rec.domain),
            status: text(&rec.status),
            tls_trust: text(&rec.tls_trust),
            verdict: text(&rec.verdict).and_then(verdict_from_log),
        }
    }
}

/// Reads `query.files` in order and hands every delivery record that
/// passes the query's filters to `each`, in the order read. The query's
/// other record kinds are skipped whatever its `outcomes` says.
///
/// # Errors
///
/// As [`super::run`]: invalid query values, a file that cannot be opened
/// or read. Malformed lines are counted in [`RunStats::bad_lines`].
pub fn read_deliveries(
    query: &LogQuery,
    each: &mut dyn FnMut(&Delivery<'_>),
) -> Result<RunStats, ReadError> {
    let mut filter = Filter::new(query)?;
    filter.only_deliveries();
    let mut stats = RunStats::default();
    let result = scan(&query.files, &filter, &mut stats, &mut |rec, ts, _| {
        each(&Delivery::of(rec, ts));
        Ok(())
    });
    match result {
        Ok(()) | Err(Stop::Quiet) => Ok(stats),
        Err(Stop::Fail(e)) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::reader::fixture::{at, mixed_query};

    fn deliveries(f: impl FnOnce(&mut LogQuery)) -> (RunStats, Vec<String>) {
        let (_dir, q) = mixed_query(f);
        let mut seen = Vec::new();
        let stats = read_deliveries(&q, &mut |d| {
            seen.push(format!(
                "{} {} {} {} {} {} {}",
                humantime::format_rfc3339_seconds(d.ts),
                d.queue_id.unwrap_or("-"),
                d.recipient.unwrap_or("-"),
                d.domain.unwrap_or("-"),
                d.status.unwrap_or("-"),
                d.tls_trust.unwrap_or("-"),
                d.verdict.map_or("-", Verdict::as_str),
            ));
        })
        .unwrap();
        (stats, seen)
    }

    #[test]
    fn only_delivery_records_are_handed_over() {
        let (stats, seen) = deliveries(|_| {});
        assert_eq!(
            seen,
            [
                "2026-11-24T10:10:00Z Q1 a@gmail.com gmail.com sent trusted encrypted",
                "2026-11-24T10:20:00Z Q2 b@bücher.example xn--bcher-kva.example deferred none held",
                "2026-11-24T11:30:00Z Q2 b@bücher.example xn--bcher-kva.example sent verified verified",
                "2026-11-24T12:10:00Z Q3 c@gmail.com gmail.com sent none plaintext-fallback",
                "2026-11-24T13:10:00Z Q5 root - sent none undecided",
                "2026-11-24T13:20:00Z Q6 d@example.net example.net deferred none -",
            ]
        );
        // 9 decision-fixture lines and 6 delivery lines; the decision
        // fixture's bad lines hold no "delivery" and are never parsed.
        assert_eq!(stats.lines, 15);
        assert_eq!(stats.matched, 6);
        assert_eq!(stats.bad_lines, 0);
    }

    #[test]
    fn the_query_filters_apply() {
        type Case = (&'static str, fn(&mut LogQuery), usize);
        let cases: [Case; 4] = [
            ("domain", |q| q.domain = Some("gmail.com".into()), 2),
            ("queue id", |q| q.queue_id = Some("Q2".into()), 2),
            ("since", |q| q.since = Some(at("2026-11-24T11:30:00Z")), 4),
            ("verdict", |q| q.verdicts = vec![Verdict::Held], 1),
        ];
        for (what, f, want) in cases {
            assert_eq!(deliveries(f).1.len(), want, "{what}");
        }
    }
}
