//! The report as one self-contained HTML page: inline style and script,
//! nothing loaded from anywhere (its Content-Security-Policy allows only
//! its own style and script, by hash), the report's JSON embedded as data.
//! The script (`page.js`) fills the table and draws the charts (inline SVG)
//! from that data; without scripts the page shows the text report.
//!
//! What the script leaves in the page, for readers and tests: `#report`
//! gets `data-rendered="true"` once it is done; `#totals` (the table's
//! footer) holds one row, `#domains` one row per domain (`data-domain`,
//! empty for recipients without one), each cell named by `data-field`
//! (`domain`, `messages`, `deliveries`, `delivered`, `encrypted`,
//! `verified`, `plaintext-fallbacks`, `held`, `oldest-held`, `violations`,
//! `policy-unreachable`, `undecided`) and holding what the text report
//! prints there; `#chart-encrypted` and `#chart-verified` get `data-points`
//! and one `circle` per bucket with deliveries, with `data-start`,
//! `data-share` (`66.7%`) and `data-count` (`2/3`).

use ring::digest::{SHA256, digest};

use super::aggregate::Report;
use super::text::text;

const SCRIPT: &str = include_str!("page.js");
const STYLE: &str = include_str!("page.css");

/// The table's column headers, in the order the script fills the cells.
const COLUMNS: [&str; 12] = [
    "Domain",
    "Messages",
    "Deliveries",
    "Delivered",
    "Encrypted",
    "Verified",
    "Plaintext fallbacks",
    "Held",
    "Oldest held",
    "Violations",
    "Policy unreachable",
    "Undecided",
];

/// The report as a page.
pub fn html(r: &Report) -> String {
    let title = format!(
        "TLS posture {} .. {}",
        humantime::format_rfc3339_seconds(r.since),
        humantime::format_rfc3339_seconds(r.until)
    );
    let headers: String = COLUMNS
        .iter()
        .map(|c| format!("<th scope=\"col\">{c}</th>"))
        .collect();
    let data = script_json(&serde_json::to_string(r).expect("a report serialises"));
    format!(
        "<!DOCTYPE html>\n\
         <html lang=\"en\">\n\
         <head>\n\
         <meta charset=\"utf-8\">\n\
         <meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; \
         script-src 'sha256-{script_hash}'; style-src 'sha256-{style_hash}'\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
         <title>{title}</title>\n\
         <style>{STYLE}</style>\n\
         </head>\n\
         <body>\n\
         <main id=\"report\">\n\
         <h1>TLS posture</h1>\n\
         <p id=\"window\"></p>\n\
         <noscript><p>This page draws its tables and charts with a script. \
         The report as text:</p>\n<pre>{text}</pre></noscript>\n\
         <p class=\"note\">From tls-policyd's delivery outcome records. Encrypted and \
         verified: the shares of delivered mail sent over TLS, and to a server whose \
         certificate was verified. Held: recipients whose latest record is held, \
         waiting for forced TLS; oldest held: how long the longest-waiting one has \
         waited, from its first held record to the end of the window.</p>\n\
         <h2>Domains</h2>\n\
         <table>\n\
         <thead><tr>{headers}</tr></thead>\n\
         <tbody id=\"domains\"></tbody>\n\
         <tfoot id=\"totals\"></tfoot>\n\
         </table>\n\
         <h2>Encrypted share of delivered mail</h2>\n\
         <svg id=\"chart-encrypted\" role=\"img\" \
         aria-label=\"Share of delivered mail sent over TLS, per bucket\"></svg>\n\
         <h2>Verified share of delivered mail</h2>\n\
         <svg id=\"chart-verified\" role=\"img\" \
         aria-label=\"Share of delivered mail sent to a verified server, per bucket\"></svg>\n\
         </main>\n\
         <script type=\"application/json\" id=\"report-data\">{data}</script>\n\
         <script>{SCRIPT}</script>\n\
         </body>\n\
         </html>\n",
        script_hash = base64(digest(&SHA256, SCRIPT.as_bytes()).as_ref()),
        style_hash = base64(digest(&SHA256, STYLE.as_bytes()).as_ref()),
        title = escape(&title),
        text = escape(&text(r)),
    )
}

/// `s` with the characters that mean something in HTML text and attribute
/// values replaced by references.
fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            _ => out.push(c),
        }
    }
    out
}

/// JSON text made safe inside a `<script>` element: `<`, `>` and `&`
/// (which only occur inside JSON strings) as `\u` escapes, so that no
/// `</script>` or `<!--` can end or change the element.
fn script_json(json: &str) -> String {
    let mut out = String::with_capacity(json.len());
    for c in json.chars() {
        match c {
            '<' => out.push_str("\\u003c"),
            '>' => out.push_str("\\u003e"),
            '&' => out.push_str("\\u0026"),
            _ => out.push(c),
        }
    }
    out
}

/// Standard base64 with padding (RFC 4648), for the policy's hashes.
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = u32::from(b[0]) << 16 | u32::from(b[1]) << 8 | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[(n >> (18 - 6 * i) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::reader::{Delivery, Verdict};
    use crate::log::report::Aggregator;

    fn at(s: &str) -> std::time::SystemTime {
        humantime::parse_rfc3339(s).unwrap()
    }

    /// A report on one delivery to `domain` and one to `recipient`.
    fn report(domain: &'static str, recipient: &'static str) -> Report {
        let mut a = Aggregator::new(at("2026-12-05T10:00:00Z"), at("2026-12-05T11:00:00Z"));
        for (domain, recipient) in [(domain, "a@x.test"), ("x.test", recipient)] {
            a.add(&Delivery {
                ts: at("2026-12-05T10:10:00Z"),
                queue_id: Some("Q1"),
                recipient: Some(recipient),
                domain: Some(domain),
                status: Some("deferred"),
                tls_trust: Some("none"),
                verdict: Some(Verdict::Held),
            });
        }
        a.finish()
    }

    /// The text between `start` and the next `end` after it.
    fn between<'a>(page: &'a str, start: &str, end: &str) -> &'a str {
        let from = page.find(start).unwrap_or_else(|| panic!("no {start}")) + start.len();
        let len = page[from..].find(end).unwrap_or_else(|| panic!("no {end}"));
        &page[from..from + len]
    }

    #[test]
    fn text_from_the_log_cannot_become_markup() {
        let hostile = "</script><script>alert(1)</script><!--";
        let page = html(&report(hostile, "<b>\"bob\"&amp;</b>@x.test"));
        // Only the page's own two scripts; nothing of the domain as markup.
        assert_eq!(page.matches("<script").count(), 2, "{page}");
        assert_eq!(page.matches("</script>").count(), 2, "{page}");
        assert!(!page.contains("<b>"), "{page}");
        assert!(!page.contains("<!--"), "{page}");
        // The embedded data is the report's JSON, intact.
        let data = between(
            &page,
            "<script type=\"application/json\" id=\"report-data\">",
            "</script>",
        );
        let parsed: serde_json::Value = serde_json::from_str(data).unwrap();
        let report = report(hostile, "<b>\"bob\"&amp;</b>@x.test");
        assert_eq!(parsed, serde_json::to_value(&report).unwrap());
        assert_eq!(parsed["domains"][0]["domain"], hostile);
        // The text report for browsers without scripts, escaped.
        let pre = between(&page, "<pre>", "</pre>");
        assert!(
            pre.contains("&lt;/script&gt;&lt;script&gt;alert(1)&lt;/script&gt;&lt;!--  "),
            "{pre}"
        );
    }

    #[test]
    fn the_policy_allows_exactly_the_inline_script_and_style() {
        let page = html(&report("a.test", "b@x.test"));
        let policy = between(&page, "Content-Security-Policy\" content=\"", "\"");
        let hash = |s: &str| {
            format!(
                "'sha256-{}'",
                base64(digest(&SHA256, s.as_bytes()).as_ref())
            )
        };
        let script = between(&page, "<script>", "</script>");
        let style = between(&page, "<style>", "</style>");
        assert_eq!(
            policy,
            format!(
                "default-src 'none'; script-src {}; style-src {}",
                hash(script),
                hash(style)
            )
        );
        // Nothing to fetch: no sources, links, imports or URLs in styles.
        for outside in ["src=", "href=", "url(", "@import", "https:"] {
            assert!(!page.contains(outside), "{outside} in the page");
        }
    }

    #[test]
    fn escapes() {
        assert_eq!(
            escape("<a href=\"x\">'&'</a>"),
            "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;"
        );
        assert_eq!(
            script_json(r#"{"a":"</script><!--&"}"#),
            r#"{"a":"\u003c/script\u003e\u003c!--\u0026"}"#
        );
    }

    #[test]
    fn base64_of_rfc_4648_vectors() {
        let cases = [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ];
        for (input, want) in cases {
            assert_eq!(base64(input.as_bytes()), want, "{input:?}");
        }
    }
}
