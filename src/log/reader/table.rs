//! The table output: a header and one fixed-width row per record, with
//! control characters in values replaced ([`clean`], also used by the
//! summary). Decisions and delivery outcomes have columns of their own
//! ([`Layout`]).

use std::borrow::Cow;
use std::io::{self, Write};

use super::record::{Record, text};

/// Replaces control characters so a hostile or odd value cannot break the
/// table layout or the terminal; borrows when nothing needs replacing.
pub(super) fn clean(s: &str) -> Cow<'_, str> {
    if s.chars().any(char::is_control) {
        Cow::Owned(
            s.chars()
                .map(|c| if c.is_control() { ' ' } else { c })
                .collect(),
        )
    } else {
        Cow::Borrowed(s)
    }
}

fn cell(t: Option<&str>) -> Cow<'_, str> {
    match t {
        Some(s) if !s.is_empty() => clean(s),
        _ => Cow::Borrowed("-"),
    }
}

/// Which columns the table has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Layout {
    /// Any record: front door, TLS class, level, source, reason.
    Decisions,
    /// Delivery records: what Postfix did and the verdict on it.
    Deliveries,
}

// Column widths. Rows are streamed, so widths are fixed; longer values are
// printed whole and shift the rest of that row.
const W_TS: usize = 27; // 2026-11-24T14:03:07.123456Z
const W_FRONTEND: usize = 9;
const W_QUEUE_ID: usize = 12;
const W_DOMAIN: usize = 30;
const W_TLS: usize = 13;
const W_LEVEL: usize = 20;
const W_SOURCE: usize = 8;
const W_STATUS: usize = 8; // deferred
const W_TRUST: usize = 9; // anonymous, untrusted
const W_VERDICT: usize = 18; // plaintext-fallback, policy-unreachable
const W_RELAY: usize = 40;

/// Writes one table line; `c` holds the eight columns in header order.
fn write_columns(out: &mut dyn Write, c: [&str; 8]) -> io::Result<()> {
    let [ts, frontend, queue_id, domain, tls, level, source, reason] = c;
    writeln!(
        out,
        "{ts:<W_TS$} {frontend:<W_FRONTEND$} {queue_id:<W_QUEUE_ID$} {domain:<W_DOMAIN$} \
         {tls:<W_TLS$} {level:<W_LEVEL$} {source:<W_SOURCE$} {reason}"
    )
}

/// Writes one delivery table line; `c` holds the eight columns in header
/// order. The level, which may hold spaces, comes last.
fn write_delivery_columns(out: &mut dyn Write, c: [&str; 8]) -> io::Result<()> {
    let [ts, queue_id, domain, status, trust, verdict, relay, level] = c;
    writeln!(
        out,
        "{ts:<W_TS$} {queue_id:<W_QUEUE_ID$} {domain:<W_DOMAIN$} {status:<W_STATUS$} \
         {trust:<W_TRUST$} {verdict:<W_VERDICT$} {relay:<W_RELAY$} {level}"
    )
}

pub(super) fn write_table_header(out: &mut dyn Write, layout: Layout) -> io::Result<()> {
    match layout {
        Layout::Decisions => write_columns(
            out,
            [
                "TS", "FRONTEND", "QUEUE_ID", "DOMAIN", "TLS", "LEVEL", "SOURCE", "REASON",
            ],
        ),
        Layout::Deliveries => write_delivery_columns(
            out,
            [
                "TS",
                "QUEUE_ID",
                "DOMAIN",
                "STATUS",
                "TLS_TRUST",
                "VERDICT",
                "RELAY",
                "LEVEL",
            ],
        ),
    }
}

pub(super) fn write_table_row(
    out: &mut dyn Write,
    layout: Layout,
    rec: &Record<'_>,
) -> io::Result<()> {
    if layout == Layout::Deliveries {
        return write_delivery_columns(
            out,
            [
                &cell(text(&rec.ts)),
                &cell(text(&rec.queue_id)),
                &cell(text(&rec.domain)),
                &cell(text(&rec.status)),
                &cell(text(&rec.tls_trust)),
                &cell(text(&rec.verdict)),
                &cell(text(&rec.relay)),
                &cell(rec.effective_level()),
            ],
        );
    }
    write_columns(
        out,
        [
            &cell(text(&rec.ts)),
            &cell(text(&rec.frontend)),
            &cell(text(&rec.queue_id)),
            &cell(text(&rec.domain)),
            &cell(text(&rec.tls)),
            &cell(rec.effective_level()),
            &cell(text(&rec.source)),
            &cell(text(&rec.reason)),
        ],
    )
}

#[cfg(test)]
mod tests {
    use crate::log::reader::fixture::{fixture_query, mixed_query, run_to_string};
    use crate::log::reader::{OutputFormat, Verdict};

    #[test]
    fn table_output() {
        let (_dir, q) = fixture_query(|_| {});
        let (stats, out) = run_to_string(&q, OutputFormat::Table);
        assert_eq!(stats.matched, 6);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 7, "{out}");
        let header: Vec<&str> = lines[0].split_whitespace().collect();
        assert_eq!(
            header,
            [
                "TS", "FRONTEND", "QUEUE_ID", "DOMAIN", "TLS", "LEVEL", "SOURCE", "REASON"
            ]
        );
        // Fixed columns: every field starts at the same offset in each row
        // (no value in the fixture exceeds its width).
        let starts = [0, 28, 38, 51, 82, 96, 117, 126];
        for line in &lines {
            for &s in &starts[1..] {
                assert_eq!(&line[s - 1..s], " ", "{line:?} at {s}");
                assert_ne!(&line[s..s + 1], " ", "{line:?} at {s}");
            }
        }
        assert_eq!(
            lines[1],
            "2026-11-24T10:00:00.000001Z socketmap -            bank.example                   \
             forced        encrypt              static   PCI partner"
        );
        let row = |i: usize| lines[i].split_whitespace().collect::<Vec<_>>();
        // Record 3: LEVEL shows `policy` ("verify"), not `level` ("secure").
        assert_eq!(
            row(3),
            [
                "2026-11-24T11:00:00.000000Z",
                "policy",
                "Q2",
                "xn--bcher-kva.example",
                "forced",
                "verify",
                "mta-sts",
                "mta-sts",
                "enforce"
            ]
        );
        // Record 6 has no `policy`: falls back to `level`.
        assert_eq!(row(4)[5], "may");
        // Escapes decoded, the tab replaced so the row stays on one line.
        assert!(
            lines[5].ends_with("static   PCI \"partner\" tab"),
            "{}",
            lines[5]
        );
        assert_eq!(out.matches(" forced ").count(), 4);
        assert_eq!(out.matches(" opportunistic ").count(), 2);
    }

    #[test]
    fn delivery_table_output() {
        let (_dir, q) = mixed_query(|q| q.outcomes = true);
        let (stats, out) = run_to_string(&q, OutputFormat::Table);
        assert_eq!(stats.matched, 6);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 7, "{out}");
        assert_eq!(
            lines[0].split_whitespace().collect::<Vec<_>>(),
            [
                "TS",
                "QUEUE_ID",
                "DOMAIN",
                "STATUS",
                "TLS_TRUST",
                "VERDICT",
                "RELAY",
                "LEVEL"
            ]
        );
        // Fixed columns: every field starts at the same offset in each row.
        let starts = [0, 28, 41, 72, 81, 91, 110, 151];
        for line in &lines {
            for &s in &starts[1..] {
                assert_eq!(&line[s - 1..s], " ", "{line:?} at {s}");
                assert_ne!(&line[s..s + 1], " ", "{line:?} at {s}");
            }
        }
        let rows: Vec<Vec<&str>> = lines[1..]
            .iter()
            .map(|l| l.split_whitespace().collect())
            .collect();
        assert_eq!(
            rows[1],
            [
                "2026-11-24T10:20:00.000000Z",
                "Q2",
                "xn--bcher-kva.example",
                "deferred",
                "none",
                "held",
                "mx.xn--bcher-kva.example[192.0.2.7]:25",
                "secure",
                "match=mx.xn--bcher-kva.example"
            ]
        );
        // No domain, no level: dashes.
        assert_eq!(
            rows[4],
            [
                "2026-11-24T13:10:00.000000Z",
                "Q5",
                "-",
                "sent",
                "none",
                "undecided",
                "local",
                "-"
            ]
        );
        let verdicts: Vec<&str> = rows.iter().map(|r| r[5]).collect();
        assert_eq!(
            verdicts,
            [
                "encrypted",
                "held",
                "verified",
                "plaintext-fallback",
                "undecided",
                "not-yet-known"
            ]
        );
    }

    #[test]
    fn verdict_filter_alone_shows_the_delivery_table() {
        let (_dir, q) = mixed_query(|q| q.verdicts = vec![Verdict::PlaintextFallback]);
        let (_, out) = run_to_string(&q, OutputFormat::Table);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 2, "{out}");
        assert!(lines[0].starts_with("TS "), "{out}");
        assert!(lines[0].contains(" VERDICT "), "{out}");
        assert!(lines[1].contains(" plaintext-fallback "), "{out}");
    }

    #[test]
    fn table_output_with_filter_and_no_match() {
        let (_dir, q) = fixture_query(|q| q.queue_id = Some("none".into()));
        let (stats, out) = run_to_string(&q, OutputFormat::Table);
        assert_eq!(stats.matched, 0);
        assert_eq!(out.lines().count(), 1);
        assert!(out.starts_with("TS "));
    }
}
