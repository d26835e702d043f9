//! `tls-policyd report --html`: the page, loaded in headless Chromium,
//! shows the numbers its own script computed from the data embedded in it
//! (the table rows, the chart points), and text from the log stays text.
//! Chromium is Debian's (`/usr/bin/chromium`; `scripts/test-all` installs
//! it); without it the test fails.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::deliveries::{delivery, log_text};
use common::run_within;

const CHROMIUM: &str = "/usr/bin/chromium";

/// Chromium's start on a busy machine can take a while.
const CHROMIUM_WAIT: Duration = Duration::from_secs(120);

/// A domain made of markup: the page must show it as text.
const HOSTILE: &str = "<b>injected</b>.test";

/// The log: the window is 08:00 to 11:00 on 2026-12-05, hourly buckets.
fn log_lines() -> Vec<String> {
    let t = |hms: &str| format!("2026-12-05T{hms}.000000Z");
    let mut lines = vec![
        // Before the window and at its end: not counted.
        delivery(
            &t("07:59:59"),
            "Q0",
            "z@forced.test",
            "sent",
            "verified",
            "verified",
        ),
        delivery(
            &t("08:05:00"),
            "Q1",
            "a@forced.test",
            "sent",
            "verified",
            "verified",
        ),
        delivery(
            &t("08:10:00"),
            "Q2",
            "b@forced.test",
            "deferred",
            "none",
            "held",
        ),
        delivery(
            &t("08:20:00"),
            "Q5",
            "e@opp.test",
            "sent",
            "none",
            "plaintext-fallback",
        ),
        delivery(
            &t("08:30:00"),
            "Q9",
            "i@late.test",
            "deferred",
            "none",
            "held",
        ),
        delivery(
            &t("09:10:00"),
            "Q2",
            "b@forced.test",
            "deferred",
            "none",
            "held",
        ),
        delivery(
            &t("09:20:00"),
            "Q6",
            "f@opp.test",
            "sent",
            "anonymous",
            "encrypted",
        ),
        delivery(
            &t("09:30:00"),
            "Q9",
            "i@late.test",
            "sent",
            "verified",
            "verified",
        ),
        delivery(
            &t("09:40:00"),
            "Q7",
            "g@opp.test",
            "sent",
            "trusted",
            "encrypted",
        ),
        delivery(
            &t("09:50:00"),
            "QA",
            &format!("j@{HOSTILE}"),
            "sent",
            "none",
            "undecided",
        ),
    ];
    // 16 deliveries, one over TLS: 6.25%, shown rounded half up.
    for i in 0..16 {
        let (trust, verdict) = if i == 0 {
            ("trusted", "encrypted")
        } else {
            ("none", "plaintext-fallback")
        };
        lines.push(delivery(
            &t(&format!("10:05:{i:02}")),
            &format!("QM{i:02}"),
            "m@many.test",
            "sent",
            trust,
            verdict,
        ));
    }
    lines.extend([
        delivery(
            &t("10:20:00"),
            "Q3",
            "c@forced.test",
            "sent",
            "trusted",
            "encrypted",
        ),
        delivery(
            &t("10:30:00"),
            "Q4",
            "d@forced.test",
            "sent",
            "none",
            "violation",
        ),
        delivery(
            &t("10:40:00"),
            "Q8",
            "h@opp.test",
            "deferred",
            "none",
            "policy-unreachable",
        ),
        delivery(
            &t("11:00:00"),
            "Q2",
            "b@forced.test",
            "sent",
            "verified",
            "verified",
        ),
    ]);
    lines
}

/// The cell fields of a row, in the page's order after `domain`.
const FIELDS: [&str; 12] = [
    "domain",
    "messages",
    "deliveries",
    "delivered",
    "encrypted",
    "verified",
    "plaintext-fallbacks",
    "held",
    "oldest-held",
    "violations",
    "policy-unreachable",
    "undecided",
];

/// The rows of the element with id `id`, each as its cells' texts in
/// [`FIELDS`] order (as the serialised DOM has them: `<` as `&lt;`).
fn rows(dom: &str, id: &str) -> Vec<Vec<String>> {
    let open = format!("id=\"{id}\">");
    let start = dom
        .find(&open)
        .unwrap_or_else(|| panic!("no #{id} in\n{dom}"))
        + open.len();
    let rest = &dom[start..];
    let end = ["</tbody>", "</tfoot>"]
        .iter()
        .filter_map(|e| rest.find(e))
        .min()
        .expect("end of section");
    let section = &rest[..end];
    section
        .split("<tr")
        .skip(1)
        .map(|row| {
            FIELDS
                .iter()
                .map(|f| {
                    let at = format!("data-field=\"{f}\"");
                    let from = row
                        .find(&at)
                        .unwrap_or_else(|| panic!("no {at} in row {row}"));
                    let rest = &row[from..];
                    let text = &rest[rest.find('>').unwrap() + 1..];
                    text[..text.find("</t").unwrap()].to_string()
                })
                .collect()
        })
        .collect()
}

/// The points of a chart: (data-start, data-share, data-count).
fn points(dom: &str, id: &str) -> (String, Vec<(String, String, String)>) {
    let open = format!("<svg id=\"{id}\"");
    let start = dom.find(&open).unwrap_or_else(|| panic!("no {open}"));
    let chart = &dom[start..start + dom[start..].find("</svg>").unwrap()];
    let attr = |s: &str, name: &str| -> String {
        let at = format!("{name}=\"");
        let from = s.find(&at).unwrap_or_else(|| panic!("no {name} in {s}")) + at.len();
        s[from..from + s[from..].find('"').unwrap()].to_string()
    };
    let head = &chart[..chart.find('>').unwrap()];
    let found = chart
        .split("<circle")
        .skip(1)
        .map(|c| {
            (
                attr(c, "data-start"),
                attr(c, "data-share"),
                attr(c, "data-count"),
            )
        })
        .collect();
    (attr(head, "data-points"), found)
}

fn strings(rows: &[&[&str]]) -> Vec<Vec<String>> {
    rows.iter()
        .map(|r| r.iter().map(|c| c.to_string()).collect())
        .collect()
}

fn triples(points: &[(&str, &str, &str)]) -> Vec<(String, String, String)> {
    points
        .iter()
        .map(|&(a, b, c)| (a.to_string(), b.to_string(), c.to_string()))
        .collect()
}

#[test]
fn the_page_shows_what_its_script_computed() {
    assert!(
        Path::new(CHROMIUM).is_file(),
        "{CHROMIUM} is not installed (Debian package chromium; ./scripts/test-all \
         installs it): the HTML report cannot be checked"
    );
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("decisions.jsonl");
    std::fs::write(&log, log_text(&log_lines())).unwrap();
    let page = dir.path().join("report.html");
    let out = run_within(
        Command::new(env!("CARGO_BIN_EXE_tls-policyd"))
            .args(["report", "--since", "2026-12-05T08:00:00Z"])
            .args(["--until", "2026-12-05T11:00:00Z", "--log"])
            .arg(&log)
            .arg("--html")
            .arg(&page),
        common::WAIT,
    );
    assert!(
        out.status.success() && out.stdout.is_empty(),
        "{out:?}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let profile = tempfile::tempdir().unwrap();
    let out = run_within(
        Command::new(CHROMIUM)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("--dump-dom")
            .arg(format!("file://{}", page.display())),
        CHROMIUM_WAIT,
    );
    let dom = String::from_utf8(out.stdout).unwrap();
    assert!(
        out.status.success(),
        "chromium failed: {}\n{dom}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        dom.contains("<main id=\"report\" data-rendered=\"true\">"),
        "the page's script did not finish:\n{dom}"
    );
    assert!(
        dom.contains(
            "<p id=\"window\">2026-12-05T08:00:00Z .. 2026-12-05T11:00:00Z: \
             28 delivery records, 5 domains, hourly buckets</p>"
        ),
        "{dom}"
    );

    assert_eq!(
        rows(&dom, "domains"),
        strings(&[
            &[
                "forced.test",
                "4",
                "5",
                "3",
                "66.7%",
                "33.3%",
                "0",
                "1",
                "2h 50m",
                "1",
                "0",
                "0"
            ],
            &[
                "many.test",
                "16",
                "16",
                "16",
                "6.3%",
                "0.0%",
                "15",
                "0",
                "-",
                "0",
                "0",
                "0"
            ],
            &[
                "opp.test", "4", "4", "3", "66.7%", "0.0%", "1", "0", "-", "0", "1", "0"
            ],
            // Text, not markup: the script put the domain in textContent.
            &[
                "&lt;b&gt;injected&lt;/b&gt;.test",
                "1",
                "1",
                "1",
                "0.0%",
                "0.0%",
                "0",
                "0",
                "-",
                "0",
                "0",
                "1"
            ],
            &[
                "late.test",
                "1",
                "2",
                "1",
                "100.0%",
                "100.0%",
                "0",
                "0",
                "-",
                "0",
                "0",
                "0"
            ],
        ]),
        "{dom}"
    );
    assert_eq!(
        rows(&dom, "totals"),
        strings(&[&[
            "all domains",
            "26",
            "28",
            "24",
            "25.0%",
            "8.3%",
            "16",
            "1",
            "2h 50m",
            "1",
            "1",
            "1"
        ]]),
        "{dom}"
    );
    assert!(!dom.contains("<b>injected"), "{dom}");

    assert_eq!(
        points(&dom, "chart-encrypted"),
        (
            "3".to_string(),
            triples(&[
                ("2026-12-05T08:00:00Z", "50.0%", "1/2"),
                ("2026-12-05T09:00:00Z", "75.0%", "3/4"),
                ("2026-12-05T10:00:00Z", "11.1%", "2/18"),
            ])
        )
    );
    assert_eq!(
        points(&dom, "chart-verified"),
        (
            "3".to_string(),
            triples(&[
                ("2026-12-05T08:00:00Z", "50.0%", "1/2"),
                ("2026-12-05T09:00:00Z", "25.0%", "1/4"),
                ("2026-12-05T10:00:00Z", "0.0%", "0/18"),
            ])
        )
    );
}
