//! The query compiled into a [`Filter`]: a cheap byte prefilter on the raw
//! line, then the exact test on the parsed record.

use std::time::SystemTime;

use super::record::{DELIVERY, Record, text};
use super::values::{Verdict, normalize_domain, parse_tls, verdict_from_log};
use super::{LogQuery, ReadError};

/// The query compiled for fast matching.
pub(super) struct Filter {
    /// Normalised A-label.
    domain: Option<String>,
    queue_id: Option<String>,
    /// The queue id as it appears inside the JSON line, if it needs no
    /// escaping there (always true for real queue ids).
    queue_id_needle: Option<String>,
    since: Option<SystemTime>,
    tls: Option<String>,
    /// Only delivery records.
    deliveries: bool,
    /// Only delivery records with one of these verdicts; any when empty.
    verdicts: Vec<Verdict>,
}

impl Filter {
    pub(super) fn new(q: &LogQuery) -> Result<Self, ReadError> {
        let domain = q.domain.as_deref().map(normalize_domain).transpose()?;
        let tls = q.tls.as_deref().map(parse_tls).transpose()?;
        let queue_id_needle = q.queue_id.clone().filter(|id| {
            !id.is_empty() && id.chars().all(|c| !c.is_control() && c != '"' && c != '\\')
        });
        Ok(Filter {
            domain,
            queue_id: q.queue_id.clone(),
            queue_id_needle,
            since: q.since,
            tls,
            deliveries: q.deliveries_only(),
            verdicts: q.verdicts.clone(),
        })
    }

    /// Lets only delivery records through, whatever the query said.
    pub(super) fn only_deliveries(&mut self) {
        self.deliveries = true;
    }

    /// Cheap byte test run before JSON parsing; false means the line cannot
    /// match. The daemon writes `domain` as a lower-case A-label (pure
    /// ASCII, no escapes), so searching the raw line for the normalised
    /// domain is exact enough; the real comparison happens in `matches`.
    /// Likewise `"delivery"` and each verdict, quoted, must appear in a
    /// delivery record's line (as the frontend and the verdict).
    pub(super) fn prefilter(&self, line: &[u8]) -> bool {
        if self.deliveries && !contains_quoted(line, DELIVERY.as_bytes()) {
            return false;
        }
        if !self.verdicts.is_empty()
            && !self
                .verdicts
                .iter()
                .any(|v| contains_quoted(line, v.as_str().as_bytes()))
        {
            return false;
        }
        if let Some(d) = &self.domain {
            if !contains_ignore_ascii_case(line, d.as_bytes()) {
                return false;
            }
        }
        if let Some(id) = &self.queue_id_needle {
            if !contains(line, id.as_bytes()) {
                return false;
            }
        }
        true
    }

    pub(super) fn matches(&self, rec: &Record<'_>, ts: SystemTime) -> bool {
        if self.since.is_some_and(|since| ts < since) {
            return false;
        }
        if self.deliveries && !rec.is_delivery() {
            return false;
        }
        if !self.verdicts.is_empty()
            && !text(&rec.verdict)
                .and_then(verdict_from_log)
                .is_some_and(|v| self.verdicts.contains(&v))
        {
            return false;
        }
        if let Some(want) = &self.domain {
            let Some(d) = &rec.domain else {
                return false;
            };
            let d = d.0.strip_suffix('.').unwrap_or(&d.0);
            if !d.eq_ignore_ascii_case(want) {
                return false;
            }
        }
        if let Some(want) = &self.queue_id {
            if text(&rec.queue_id) != Some(want.as_str()) {
                return false;
            }
        }
        if let Some(want) = &self.tls {
            if !rec
                .tls
                .as_ref()
                .is_some_and(|t| t.0.eq_ignore_ascii_case(want))
            {
                return false;
            }
        }
        true
    }
}

/// Whether `word` appears in `hay` between double quotes.
fn contains_quoted(hay: &[u8], word: &[u8]) -> bool {
    hay.windows(word.len() + 2)
        .any(|w| w[0] == b'"' && w[w.len() - 1] == b'"' && &w[1..w.len() - 1] == word)
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || hay.windows(needle.len()).any(|w| w == needle)
}

/// Case-insensitive (ASCII) substring test; `needle` must be lower-case.
fn contains_ignore_ascii_case(hay: &[u8], needle: &[u8]) -> bool {
    let Some((&first, _)) = needle.split_first() else {
        return true;
    };
    let first_upper = first.to_ascii_uppercase();
    hay.windows(needle.len())
        .any(|w| (w[0] == first || w[0] == first_upper) && w.eq_ignore_ascii_case(needle))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::reader::fixture::{
        D1, D2, D3, D4, D5, D6, L3, L6, L7, L8, at, fixture_query, matched, matched_lines,
        mixed_query, run_to_string,
    };
    use crate::log::reader::{OutputFormat, RunStats, run};

    #[test]
    fn domain_filter() {
        assert_eq!(matched(|q| q.domain = Some("bank.example".into())), 2);
        assert_eq!(matched(|q| q.domain = Some("Bank.EXAMPLE.".into())), 2);
        assert_eq!(matched(|q| q.domain = Some(" gmail.com ".into())), 2);
        assert_eq!(matched(|q| q.domain = Some("example.net".into())), 1);
        // Exact match on `domain`: no suffix or substring matching.
        assert_eq!(matched(|q| q.domain = Some("example".into())), 0);
        assert_eq!(matched(|q| q.domain = Some("mail.com".into())), 0);
        assert_eq!(matched(|q| q.domain = Some("nowhere.example".into())), 0);
    }

    #[test]
    fn domain_filter_idn() {
        for d in [
            "bücher.example",
            "BÜCHER.example.",
            "xn--bcher-kva.example",
            "XN--BCHER-KVA.EXAMPLE.",
        ] {
            let lines = matched_lines(|q| q.domain = Some(d.into()));
            assert_eq!(lines, vec![L3.to_owned()], "filter {d:?}");
        }
    }

    #[test]
    fn prefilter_skips_lines_without_the_needle() {
        // Line 4 (garbage) does not contain "gmail.com" and is never parsed;
        // line 5 does, gets parsed and is bad for lacking ts.
        let (_dir, q) = fixture_query(|q| q.domain = Some("gmail.com".into()));
        let (stats, _) = run_to_string(&q, OutputFormat::Json);
        assert_eq!(
            stats,
            RunStats {
                lines: 9,
                matched: 2,
                bad_lines: 1
            }
        );
    }

    #[test]
    fn queue_id_filter() {
        assert_eq!(
            matched_lines(|q| q.queue_id = Some("Q2".into())),
            vec![L3.to_owned()]
        );
        assert_eq!(matched(|q| q.queue_id = Some("Q4".into())), 1);
        // Exact and case-sensitive.
        assert_eq!(matched(|q| q.queue_id = Some("Q".into())), 0);
        assert_eq!(matched(|q| q.queue_id = Some("q1".into())), 0);
        assert_eq!(matched(|q| q.queue_id = Some("Q9".into())), 0);
    }

    #[test]
    fn since_filter() {
        // Inclusive: record 6 is at exactly 12:00:00.
        let lines = matched_lines(|q| q.since = Some(at("2026-11-24T12:00:00Z")));
        assert_eq!(lines, vec![L6.to_owned(), L7.to_owned(), L8.to_owned()]);
        assert_eq!(
            matched(|q| q.since = Some(at("2026-11-24T12:00:00.000001Z"))),
            2
        );
        assert_eq!(matched(|q| q.since = Some(at("2026-11-24T10:00:00Z"))), 6);
        // Record 1 is at 10:00:00.000001, one microsecond after.
        assert_eq!(
            matched(|q| q.since = Some(at("2026-11-24T10:00:00.000002Z"))),
            5
        );
        assert_eq!(matched(|q| q.since = Some(at("2027-01-01T00:00:00Z"))), 0);
    }

    #[test]
    fn tls_filter() {
        assert_eq!(matched(|q| q.tls = Some("forced".into())), 4);
        assert_eq!(matched(|q| q.tls = Some("opportunistic".into())), 2);
        assert_eq!(matched(|q| q.tls = Some("FORCED".into())), 4);
    }

    #[test]
    fn combined_filters() {
        assert_eq!(
            matched_lines(|q| {
                q.domain = Some("bank.example".into());
                q.since = Some(at("2026-11-24T12:00:00Z"));
            }),
            vec![L7.to_owned()]
        );
        assert_eq!(
            matched_lines(|q| {
                q.tls = Some("opportunistic".into());
                q.queue_id = Some("Q3".into());
            }),
            vec![L6.to_owned()]
        );
        assert_eq!(
            matched(|q| {
                q.domain = Some("gmail.com".into());
                q.tls = Some("forced".into());
            }),
            0
        );
        assert_eq!(
            matched(|q| {
                q.domain = Some("bücher.example".into());
                q.queue_id = Some("Q2".into());
                q.tls = Some("forced".into());
                q.since = Some(at("2026-11-24T11:00:00Z"));
            }),
            1
        );
        assert_eq!(
            matched(|q| {
                q.domain = Some("bücher.example".into());
                q.since = Some(at("2026-11-24T11:00:01Z"));
            }),
            0
        );
    }

    #[test]
    fn run_validates_query_values() {
        let (_dir, q) = fixture_query(|q| q.tls = Some("bogus".into()));
        let err = run(&q, OutputFormat::Json, &mut Vec::new()).unwrap_err();
        assert!(matches!(err, ReadError::BadTls { .. }), "{err:?}");

        for bad in ["", ".", "user@gmail.com", "exa mple.com", "xn--a.example"] {
            let (_dir, q) = fixture_query(|q| q.domain = Some(bad.into()));
            let err = run(&q, OutputFormat::Json, &mut Vec::new()).unwrap_err();
            assert!(
                matches!(err, ReadError::BadDomain { .. }),
                "{bad:?}: {err:?}"
            );
            assert!(
                err.to_string()
                    .starts_with(&format!("bad --domain value {bad:?}: ")),
                "{err}"
            );
        }
    }

    /// The mixed fixture's lines that match the query `f` builds.
    fn mixed_lines(f: impl FnOnce(&mut LogQuery)) -> Vec<String> {
        let (_dir, q) = mixed_query(f);
        let (_, out) = run_to_string(&q, OutputFormat::Json);
        out.lines().map(str::to_owned).collect()
    }

    #[test]
    fn outcome_and_verdict_filters() {
        type Case<'a> = (&'a str, fn(&mut LogQuery), &'a [&'a str]);
        let cases: [Case<'_>; 12] = [
            ("outcomes", |q| q.outcomes = true, &[D1, D2, D3, D4, D5, D6]),
            ("held", |q| q.verdicts = vec![Verdict::Held], &[D2]),
            (
                "two verdicts, outcomes implied",
                |q| q.verdicts = vec![Verdict::Verified, Verdict::PlaintextFallback],
                &[D3, D4],
            ),
            (
                "a verdict no record has",
                |q| q.verdicts = vec![Verdict::Violation],
                &[],
            ),
            (
                "outcomes for a domain",
                |q| {
                    q.outcomes = true;
                    q.domain = Some("gmail.com".into());
                },
                &[D1, D4],
            ),
            (
                "outcomes of a queue id",
                |q| {
                    q.outcomes = true;
                    q.queue_id = Some("Q2".into());
                },
                &[D2, D3],
            ),
            (
                "outcomes since a record's own time",
                |q| {
                    q.outcomes = true;
                    q.since = Some(at("2026-11-24T12:10:00Z"));
                },
                &[D4, D5, D6],
            ),
            (
                "outcomes under forced TLS",
                |q| {
                    q.outcomes = true;
                    q.tls = Some("forced".into());
                },
                &[D2, D3, D6],
            ),
            (
                "a verdict and a domain",
                |q| {
                    q.verdicts = vec![Verdict::Encrypted, Verdict::Verified];
                    q.domain = Some("bücher.example".into());
                },
                &[D3],
            ),
            // "verified" is also a tls_trust: the prefilter lets D3 through
            // on either, the verdict decides.
            ("verified", |q| q.verdicts = vec![Verdict::Verified], &[D3]),
            (
                "undecided",
                |q| q.verdicts = vec![Verdict::Undecided],
                &[D5],
            ),
            // Without --outcomes the decisions and the deliveries match.
            (
                "no outcome filter",
                |q| q.queue_id = Some("Q2".into()),
                &[L3, D2, D3],
            ),
        ];
        for (what, f, want) in cases {
            assert_eq!(mixed_lines(f), want.to_vec(), "{what}");
        }
    }

    #[test]
    fn outcome_prefilter_skips_decision_lines_unparsed() {
        // The garbage line and the line without ts are never parsed: no
        // bad lines, unlike a run over everything.
        for (outcomes, bad_lines) in [(true, 0), (false, 2)] {
            let (_dir, q) = mixed_query(|q| q.outcomes = outcomes);
            let (stats, _) = run_to_string(&q, OutputFormat::Json);
            assert_eq!(stats.lines, 15, "outcomes {outcomes}");
            assert_eq!(stats.bad_lines, bad_lines, "outcomes {outcomes}");
        }
        // A decision record that mentions "delivery" passes the prefilter
        // and is still refused.
        let line = br#"{"ts":"2026-11-24T10:00:00Z","frontend":"policy","reason":"delivery"}"#;
        let q = LogQuery {
            outcomes: true,
            ..LogQuery::default()
        };
        let f = Filter::new(&q).unwrap();
        assert!(f.prefilter(line));
        let rec: Record<'_> = serde_json::from_slice(line).unwrap();
        assert!(!f.matches(&rec, at("2026-11-24T10:00:00Z")));
    }

    #[test]
    fn substring_helpers() {
        assert!(contains_ignore_ascii_case(
            b"xx\"domain\":\"Bank.Example\"",
            b"bank.example"
        ));
        assert!(contains_ignore_ascii_case(b"bank.example", b"bank.example"));
        assert!(!contains_ignore_ascii_case(b"bank.exampl", b"bank.example"));
        assert!(contains_ignore_ascii_case(b"abc", b""));
        assert!(!contains_ignore_ascii_case(b"", b"a"));
        assert!(contains(b"\"queue_id\":\"4Xyz1Q2\"", b"4Xyz1Q2"));
        assert!(contains_quoted(b"\"verdict\":\"held\"}", b"held"));
        assert!(!contains_quoted(b"\"verdict\":\"withheld\"}", b"held"));
        assert!(!contains_quoted(b"\"held", b"held"));
        assert!(!contains(b"\"queue_id\":\"4xyz1q2\"", b"4Xyz1Q2"));
    }
}
