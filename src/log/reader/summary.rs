//! The summary output: totals by tls, source, level and the top domains,
//! and by verdict among delivery records, counted while reading and printed
//! at the end.

use std::borrow::Cow;
use std::collections::HashMap;
use std::io::{self, Write};
use std::time::SystemTime;

use super::RunStats;
use super::record::{Record, text};
use super::table::clean;

/// How many domains the summary lists.
const TOP_DOMAINS: usize = 20;

/// Occurrences per distinct value.
#[derive(Default)]
struct Counter(HashMap<String, u64>);

impl Counter {
    fn add(&mut self, key: Option<&str>) {
        let key = match key {
            Some(k) if !k.is_empty() => k,
            _ => "-",
        };
        // Look up by &str first so known values cost no allocation.
        if let Some(n) = self.0.get_mut(key) {
            *n += 1;
        } else {
            self.0.insert(key.to_owned(), 1);
        }
    }

    /// By count descending, then by name.
    fn sorted(&self) -> Vec<(&str, u64)> {
        let mut v: Vec<(&str, u64)> = self.0.iter().map(|(k, &n)| (k.as_str(), n)).collect();
        v.sort_unstable_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(b.0)));
        v
    }
}

#[derive(Default)]
pub(super) struct Summary {
    tls: Counter,
    source: Counter,
    level: Counter,
    domain: Counter,
    /// Among delivery records only.
    verdict: Counter,
    deliveries: u64,
    first: Option<SystemTime>,
    last: Option<SystemTime>,
}

impl Summary {
    pub(super) fn add(&mut self, rec: &Record<'_>, ts: SystemTime) {
        self.tls.add(text(&rec.tls));
        self.source.add(text(&rec.source));
        self.level.add(rec.effective_level());
        self.domain.add(text(&rec.domain));
        if rec.is_delivery() {
            self.deliveries += 1;
            self.verdict.add(text(&rec.verdict));
        }
        self.first = Some(self.first.map_or(ts, |f| f.min(ts)));
        self.last = Some(self.last.map_or(ts, |l| l.max(ts)));
    }

    pub(super) fn write(&self, out: &mut dyn Write, stats: &RunStats) -> io::Result<()> {
        writeln!(out, "records matched: {}", stats.matched)?;
        writeln!(out, "lines read:      {}", stats.lines)?;
        writeln!(out, "bad lines:       {}", stats.bad_lines)?;
        if let (Some(first), Some(last)) = (self.first, self.last) {
            writeln!(
                out,
                "period:          {} .. {}",
                humantime::format_rfc3339_micros(first),
                humantime::format_rfc3339_micros(last)
            )?;
        }
        if stats.matched == 0 {
            return Ok(());
        }
        let total = stats.matched;
        if self.deliveries > 0 {
            let title = format!("by verdict ({} delivery records)", self.deliveries);
            write_section(out, &title, &self.verdict.sorted(), self.deliveries)?;
        }
        write_section(out, "by tls", &self.tls.sorted(), total)?;
        write_section(out, "by source", &self.source.sorted(), total)?;
        write_section(out, "by level", &self.level.sorted(), total)?;
        let domains = self.domain.sorted();
        let shown = &domains[..domains.len().min(TOP_DOMAINS)];
        let title = format!(
            "top domains ({} of {} distinct)",
            shown.len(),
            domains.len()
        );
        write_section(out, &title, shown, total)
    }
}

/// `title:` followed by `  name  count  percent%` rows, aligned.
fn write_section(
    out: &mut dyn Write,
    title: &str,
    rows: &[(&str, u64)],
    total: u64,
) -> io::Result<()> {
    writeln!(out, "\n{title}:")?;
    let rows: Vec<(Cow<'_, str>, u64)> = rows.iter().map(|&(k, n)| (clean(k), n)).collect();
    let name_w = rows
        .iter()
        .map(|(k, _)| k.chars().count())
        .max()
        .unwrap_or(0);
    let count_w = rows
        .iter()
        .map(|(_, n)| n.to_string().len())
        .max()
        .unwrap_or(0);
    for (name, n) in &rows {
        // Display only; precision loss for huge counts is irrelevant.
        let pct = *n as f64 * 100.0 / total.max(1) as f64;
        writeln!(out, "  {name:<name_w$}  {n:>count_w$}  {pct:>5.1}%")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::log::reader::fixture::{fixture_query, mixed_query, run_to_string, write_file};
    use crate::log::reader::{LogQuery, OutputFormat};
    use tempfile::TempDir;

    /// Finds the summary row for `name` in the section titled `section`
    /// and returns its count.
    fn summary_count(out: &str, section: &str, name: &str) -> Option<u64> {
        let mut in_section = false;
        for line in out.lines() {
            if !line.starts_with(' ') {
                in_section = line.starts_with(section);
                continue;
            }
            let cols: Vec<&str> = line.split_whitespace().collect();
            if in_section && cols.first() == Some(&name) {
                return cols.get(1).and_then(|n| n.parse().ok());
            }
        }
        None
    }

    #[test]
    fn summary_output() {
        let (_dir, q) = fixture_query(|_| {});
        let (stats, out) = run_to_string(&q, OutputFormat::Summary);
        assert_eq!(stats.matched, 6);
        assert!(out.contains("records matched: 6\n"), "{out}");
        assert!(out.contains("lines read:      9\n"), "{out}");
        assert!(out.contains("bad lines:       2\n"), "{out}");
        assert!(
            out.contains(
                "period:          2026-11-24T10:00:00.000001Z .. 2026-11-24T13:00:00.000000Z\n"
            ),
            "{out}"
        );
        let c = |s, n| summary_count(&out, s, n);
        assert_eq!(c("by tls", "forced"), Some(4));
        assert_eq!(c("by tls", "opportunistic"), Some(2));
        assert_eq!(c("by source", "static"), Some(2));
        assert_eq!(c("by source", "default"), Some(2));
        assert_eq!(c("by source", "mta-sts"), Some(1));
        assert_eq!(c("by source", "dane"), Some(1));
        assert_eq!(c("by level", "encrypt"), Some(2));
        assert_eq!(c("by level", "may"), Some(2));
        assert_eq!(c("by level", "verify"), Some(1));
        assert_eq!(c("by level", "dane-only"), Some(1));
        assert_eq!(c("by level", "secure"), None);
        assert_eq!(c("top domains", "bank.example"), Some(2));
        assert_eq!(c("top domains", "gmail.com"), Some(2));
        assert_eq!(c("top domains", "xn--bcher-kva.example"), Some(1));
        assert_eq!(c("top domains", "example.net"), Some(1));
        assert!(out.contains("top domains (4 of 4 distinct):\n"), "{out}");
        assert!(out.contains("  forced         4   66.7%\n"), "{out}");
        // Ties are broken by name: bank.example before gmail.com,
        // example.net before xn--bcher-kva.example.
        let domains = out.split("top domains").nth(1).unwrap();
        let order: Vec<&str> = domains
            .lines()
            .skip(1)
            .filter_map(|l| l.split_whitespace().next())
            .collect();
        assert_eq!(
            order,
            [
                "bank.example",
                "gmail.com",
                "example.net",
                "xn--bcher-kva.example"
            ]
        );
    }

    #[test]
    fn summary_counts_verdicts_of_delivery_records() {
        let (_dir, q) = mixed_query(|_| {});
        let (stats, out) = run_to_string(&q, OutputFormat::Summary);
        assert_eq!(stats.matched, 12);
        assert!(out.contains("by verdict (6 delivery records):\n"), "{out}");
        let c = |n| summary_count(&out, "by verdict", n);
        for (verdict, n) in [
            ("encrypted", Some(1)),
            ("held", Some(1)),
            ("verified", Some(1)),
            ("plaintext-fallback", Some(1)),
            ("undecided", Some(1)),
            ("not-yet-known", Some(1)),
            ("violation", None),
        ] {
            assert_eq!(c(verdict), n, "{verdict}");
        }
        // Shares of the delivery records, not of every record.
        assert!(out.contains("  held                1   16.7%\n"), "{out}");
        assert_eq!(summary_count(&out, "by tls", "forced"), Some(7));

        let (_dir, q) = mixed_query(|q| q.domain = Some("gmail.com".into()));
        let (_, out) = run_to_string(&q, OutputFormat::Summary);
        assert!(out.contains("by verdict (2 delivery records):\n"), "{out}");
        assert_eq!(summary_count(&out, "by verdict", "encrypted"), Some(1));
        assert_eq!(summary_count(&out, "by verdict", "held"), None);

        // No delivery record among the matches: no verdict section.
        let (_dir, q) = fixture_query(|_| {});
        let (_, out) = run_to_string(&q, OutputFormat::Summary);
        assert!(!out.contains("by verdict"), "{out}");
    }

    #[test]
    fn summary_with_filter() {
        let (_dir, q) = fixture_query(|q| q.tls = Some("forced".into()));
        let (_, out) = run_to_string(&q, OutputFormat::Summary);
        assert!(out.contains("records matched: 4\n"), "{out}");
        assert_eq!(summary_count(&out, "by tls", "forced"), Some(4));
        assert_eq!(summary_count(&out, "by tls", "opportunistic"), None);
        assert_eq!(summary_count(&out, "by source", "static"), Some(2));
        assert_eq!(summary_count(&out, "top domains", "gmail.com"), None);
    }

    #[test]
    fn summary_without_matches() {
        let (_dir, q) = fixture_query(|q| q.domain = Some("none.example".into()));
        let (_, out) = run_to_string(&q, OutputFormat::Summary);
        assert_eq!(
            out,
            "records matched: 0\nlines read:      9\nbad lines:       0\n"
        );
    }

    #[test]
    fn summary_top_domains_is_capped_at_20() {
        let dir = TempDir::new().unwrap();
        let mut data = String::new();
        // d00 appears 25 times, d01 24 times, ... d24 once.
        for i in 0..25u32 {
            for _ in 0..(25 - i) {
                data.push_str(&format!(
                    r#"{{"ts":"2026-11-24T10:00:00Z","domain":"d{i:02}.example","tls":"forced"}}"#
                ));
                data.push('\n');
            }
        }
        let p = write_file(&dir, "many.jsonl", data.as_bytes());
        let q = LogQuery {
            files: vec![p],
            ..LogQuery::default()
        };
        let (stats, out) = run_to_string(&q, OutputFormat::Summary);
        assert_eq!(stats.matched, 325);
        assert!(out.contains("top domains (20 of 25 distinct):\n"), "{out}");
        assert_eq!(summary_count(&out, "top domains", "d00.example"), Some(25));
        assert_eq!(summary_count(&out, "top domains", "d19.example"), Some(6));
        assert_eq!(summary_count(&out, "top domains", "d20.example"), None);
        assert_eq!(summary_count(&out, "by tls", "forced"), Some(325));
        assert_eq!(summary_count(&out, "by source", "-"), Some(325));
    }
}
