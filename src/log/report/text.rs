//! The report as text: a line on the window, then one row per domain and
//! a total row, in columns as wide as their widest value.

use std::fmt::Write as _;

use super::aggregate::{Bucketing, Posture, Report, tenths_of_percent};
use crate::util::text::printable_ascii;

/// Column headers; the domain's is first, the rest are right-aligned.
const HEADERS: [&str; 12] = [
    "DOMAIN",
    "MESSAGES",
    "DELIVERIES",
    "DELIVERED",
    "ENCRYPTED",
    "VERIFIED",
    "FALLBACKS",
    "HELD",
    "OLDEST_HELD",
    "VIOLATIONS",
    "UNREACHABLE",
    "UNDECIDED",
];

/// How the table names recipients without a domain, and the totals.
const NO_DOMAIN: &str = "(none)";
const TOTAL: &str = "TOTAL";

/// The longest a domain name can be (RFC 1035), with room to spare.
const MAX_DOMAIN: usize = 255;

/// The report as a table.
pub fn text(r: &Report) -> String {
    let mut out = format!(
        "TLS posture {} .. {}: {} delivery records, {} domains, {} buckets\n",
        humantime::format_rfc3339_seconds(r.since),
        humantime::format_rfc3339_seconds(r.until),
        r.records,
        r.domains.len(),
        match r.bucket {
            Bucketing::Hour => "hourly",
            Bucketing::Day => "daily",
        }
    );
    if r.records == 0 {
        out.push_str("no delivery records in the window\n");
        return out;
    }
    let mut rows: Vec<[String; 12]> = vec![HEADERS.map(str::to_owned)];
    for d in &r.domains {
        let name = d
            .domain
            .as_deref()
            .map_or(NO_DOMAIN.to_owned(), |n| printable_ascii(n, MAX_DOMAIN));
        rows.push(row(name, &d.posture));
    }
    rows.push(row(TOTAL.to_owned(), &r.totals));
    let mut widths = [0; 12];
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    out.push('\n');
    for row in &rows {
        let mut line = format!("{:<w$}", row[0], w = widths[0]);
        for (cell, w) in row.iter().zip(widths).skip(1) {
            let _ = write!(line, "  {cell:>w$}");
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

fn row(name: String, p: &Posture) -> [String; 12] {
    [
        name,
        p.messages.to_string(),
        p.deliveries.to_string(),
        p.delivered.to_string(),
        percent(p.encrypted, p.delivered),
        percent(p.verified, p.delivered),
        p.plaintext_fallbacks.to_string(),
        p.held.to_string(),
        p.oldest_held
            .as_ref()
            .map_or("-".to_owned(), |h| format_age(h.age_seconds)),
        p.violations.to_string(),
        p.policy_unreachable.to_string(),
        p.undecided.to_string(),
    ]
}

/// `66.7%`, or `-` when there is nothing to divide by.
fn percent(part: u64, whole: u64) -> String {
    tenths_of_percent(part, whole).map_or("-".to_owned(), |t| format!("{}.{}%", t / 10, t % 10))
}

/// An age in its two largest units: `2d 3h`, `3h 5m`, `5m 0s`, `45s`.
pub fn format_age(seconds: u64) -> String {
    let (d, h, m, s) = (
        seconds / 86_400,
        seconds / 3600 % 24,
        seconds / 60 % 60,
        seconds % 60,
    );
    if d > 0 {
        format!("{d}d {h}h")
    } else if h > 0 {
        format!("{h}h {m}m")
    } else if m > 0 {
        format!("{m}m {s}s")
    } else {
        format!("{s}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::reader::{Delivery, Verdict};
    use crate::log::report::Aggregator;

    fn at(s: &str) -> std::time::SystemTime {
        humantime::parse_rfc3339(s).unwrap()
    }

    fn rec(
        ts: &str,
        queue_id: &'static str,
        domain: Option<&'static str>,
        status: &'static str,
        trust: &'static str,
        verdict: Verdict,
    ) -> Delivery<'static> {
        Delivery {
            ts: at(ts),
            queue_id: Some(queue_id),
            recipient: Some("someone"),
            domain,
            status: Some(status),
            tls_trust: Some(trust),
            verdict: Some(verdict),
        }
    }

    #[test]
    fn table() {
        let mut a = Aggregator::new(at("2026-12-05T10:00:00Z"), at("2026-12-05T12:00:00Z"));
        for d in [
            rec(
                "2026-12-05T10:00:00Z",
                "Q1",
                Some("forced.test"),
                "deferred",
                "none",
                Verdict::Held,
            ),
            rec(
                "2026-12-05T10:10:00Z",
                "Q2",
                Some("opp.test"),
                "sent",
                "trusted",
                Verdict::Encrypted,
            ),
            rec(
                "2026-12-05T10:20:00Z",
                "Q3",
                Some("opp.test"),
                "sent",
                "verified",
                Verdict::Verified,
            ),
            rec(
                "2026-12-05T10:30:00Z",
                "Q4",
                Some("opp.test"),
                "sent",
                "none",
                Verdict::PlaintextFallback,
            ),
            rec(
                "2026-12-05T10:40:00Z",
                "Q5",
                Some("bad\u{1b}[31m.test"),
                "sent",
                "none",
                Verdict::Violation,
            ),
            rec(
                "2026-12-05T10:50:00Z",
                "Q6",
                None,
                "sent",
                "none",
                Verdict::Undecided,
            ),
        ] {
            a.add(&d);
        }
        let out = text(&a.finish());
        let want = [
            "TLS posture 2026-12-05T10:00:00Z .. 2026-12-05T12:00:00Z: 6 delivery records, 4 domains, hourly buckets",
            "",
            "DOMAIN         MESSAGES  DELIVERIES  DELIVERED  ENCRYPTED  VERIFIED  FALLBACKS  HELD  OLDEST_HELD  VIOLATIONS  UNREACHABLE  UNDECIDED",
            "bad?[31m.test         1           1          1       0.0%      0.0%          0     0            -           1            0          0",
            "forced.test           1           1          0          -         -          0     1        2h 0m           0            0          0",
            "opp.test              3           3          3      66.7%     33.3%          1     0            -           0            0          0",
            "(none)                1           1          1       0.0%      0.0%          0     0            -           0            0          1",
            "TOTAL                 6           6          5      40.0%     20.0%          1     1        2h 0m           1            0          1",
        ];
        assert_eq!(out.lines().collect::<Vec<_>>(), want, "{out}");
        assert!(out.ends_with("          1\n"), "{out}");
    }

    #[test]
    fn empty_window() {
        let a = Aggregator::new(at("2026-11-01T00:00:00Z"), at("2026-12-01T00:00:00Z"));
        assert_eq!(
            text(&a.finish()),
            "TLS posture 2026-11-01T00:00:00Z .. 2026-12-01T00:00:00Z: \
             0 delivery records, 0 domains, daily buckets\n\
             no delivery records in the window\n"
        );
    }

    #[test]
    fn ages() {
        let cases = [
            (0, "0s"),
            (59, "59s"),
            (60, "1m 0s"),
            (3599, "59m 59s"),
            (3600, "1h 0m"),
            (86_399, "23h 59m"),
            (86_400, "1d 0h"),
            (90_061, "1d 1h"),
            (40 * 86_400 + 7200, "40d 2h"),
        ];
        for (seconds, want) in cases {
            assert_eq!(format_age(seconds), want, "{seconds}");
        }
    }
}
