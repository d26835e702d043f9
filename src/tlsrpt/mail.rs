//! A report as mail (RFC 8460 section 5.3): `multipart/report;
//! report-type="tlsrpt"` with the `TLS-Report-Domain` and
//! `TLS-Report-Submitter` headers, the RFC's subject, a short text part
//! and the report as an `application/tlsrpt+gzip` attachment, and
//! `TLS-Required: No` (RFC 8689) so that a report about TLS trouble is not
//! itself held by it.

use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;

use super::report::{Report, day_name};

/// The message text (CRLF line ends; given to `sendmail` with LF).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReportMail {
    pub text: String,
}

/// `addr-spec` as a header writes it: the local part quoted when it is
/// not a dot-atom.
fn header_address(addr: &str) -> String {
    let Some((local, domain)) = addr.rsplit_once('@') else {
        return addr.to_string();
    };
    let atext = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-/=?^_`{|}~".contains(c);
    let dot_atom = !local.is_empty()
        && !local.starts_with('.')
        && !local.ends_with('.')
        && !local.contains("..")
        && local.chars().all(|c| atext(c) || c == '.');
    if dot_atom {
        return addr.to_string();
    }
    let quoted: String = local
        .chars()
        .flat_map(|c| match c {
            '"' | '\\' => vec!['\\', c],
            c => vec![c],
        })
        .collect();
    format!("\"{quoted}\"@{domain}")
}

/// RFC 5322 date: `Fri, 04 Dec 2026 10:00:00 +0000`.
pub fn rfc5322_date(t: SystemTime) -> String {
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let secs = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let stamp = humantime::format_rfc3339_seconds(t).to_string();
    // YYYY-MM-DDTHH:MM:SSZ
    let month: usize = stamp[5..7].parse().unwrap_or(1);
    format!(
        "{}, {} {} {} {} +0000",
        DAYS[((secs / 86_400) % 7) as usize],
        &stamp[8..10],
        MONTHS[month.clamp(1, 12) - 1],
        &stamp[0..4],
        &stamp[11..19]
    )
}

/// Base64 in lines of 76 characters.
fn base64_lines(data: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(data);
    let mut out = String::with_capacity(b64.len() + b64.len() / 38 + 2);
    for chunk in b64.as_bytes().chunks(76) {
        out.push_str(std::str::from_utf8(chunk).unwrap_or_default());
        out.push_str("\r\n");
    }
    out
}

/// A header value with no line breaks (what the report carries comes
/// from DNS and the configuration, both checked; this is the last guard).
fn clean(v: &str) -> String {
    v.chars().filter(|c| !c.is_control()).collect()
}

impl ReportMail {
    /// The message that sends `report` from `from` to `to`, dated `now`.
    pub fn build(
        report: &Report,
        submitter: &str,
        from: &str,
        to: &str,
        now: SystemTime,
    ) -> ReportMail {
        let domain = clean(&report.policy_domain);
        let submitter = clean(submitter);
        let id = clean(&report.report_id);
        let boundary = format!("tlsrpt-{}", id.replace(['@', '.'], "-"));
        let file = clean(&report.file_name(&submitter));
        let day = day_name(report.day_start);
        let mut m = String::new();
        let mut h = |name: &str, value: &str| {
            m.push_str(name);
            m.push_str(": ");
            m.push_str(value);
            m.push_str("\r\n");
        };
        h("From", &header_address(&clean(from)));
        h("To", &header_address(&clean(to)));
        h("Date", &rfc5322_date(now));
        h(
            "Subject",
            &format!("Report Domain: {domain} Submitter: {submitter} Report-ID: <{id}>"),
        );
        h("Message-ID", &format!("<{id}>"));
        h("TLS-Report-Domain", &domain);
        h("TLS-Report-Submitter", &submitter);
        h("TLS-Required", "No");
        h("Auto-Submitted", "auto-generated");
        h("MIME-Version", "1.0");
        h(
            "Content-Type",
            &format!("multipart/report; report-type=\"tlsrpt\"; boundary=\"{boundary}\""),
        );
        m.push_str("\r\nThis is a multipart message in MIME format.\r\n\r\n");
        m.push_str(&format!("--{boundary}\r\n"));
        m.push_str("Content-Type: text/plain; charset=\"us-ascii\"\r\n");
        m.push_str("Content-Transfer-Encoding: 7bit\r\n\r\n");
        m.push_str(&format!(
            "This is an aggregate TLS report (RFC 8460) from {submitter}\r\nfor {domain}, covering {day} (UTC).\r\n\r\n"
        ));
        m.push_str(&format!("--{boundary}\r\n"));
        m.push_str("Content-Type: application/tlsrpt+gzip\r\n");
        m.push_str("Content-Transfer-Encoding: base64\r\n");
        m.push_str(&format!(
            "Content-Disposition: attachment; filename=\"{file}\"\r\n\r\n"
        ));
        m.push_str(&base64_lines(&report.gzip()));
        m.push_str(&format!("\r\n--{boundary}--\r\n"));
        ReportMail { text: m }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tlsrpt::report::{DayCounts, Submitter, parse_day};
    use std::io::Read;
    use std::time::Duration;

    fn report() -> Report {
        let s = Submitter {
            organization_name: "Org".into(),
            contact_info: "c@sender.example".into(),
            submitter: "sender.example".into(),
        };
        Report::build(
            &s,
            "rcpt.example",
            parse_day("2026-12-04").unwrap(),
            &DayCounts::default(),
        )
    }

    fn header<'a>(m: &'a str, name: &str) -> Option<&'a str> {
        let head = m.split("\r\n\r\n").next()?;
        head.lines()
            .find_map(|l| l.strip_prefix(&format!("{name}: ")))
    }

    #[test]
    fn headers_of_section_5_3() {
        let now = parse_day("2026-12-05").unwrap() + Duration::from_secs(3600 + 61);
        let m = ReportMail::build(
            &report(),
            "sender.example",
            "tlsrpt@sender.example",
            "reports@rcpt.example",
            now,
        )
        .text;
        assert_eq!(header(&m, "From"), Some("tlsrpt@sender.example"));
        assert_eq!(header(&m, "To"), Some("reports@rcpt.example"));
        assert_eq!(header(&m, "Date"), Some("Sat, 05 Dec 2026 01:01:01 +0000"));
        assert_eq!(
            header(&m, "Subject"),
            Some(
                "Report Domain: rcpt.example Submitter: sender.example Report-ID: <2026-12-04_rcpt.example@sender.example>"
            )
        );
        assert_eq!(header(&m, "TLS-Report-Domain"), Some("rcpt.example"));
        assert_eq!(header(&m, "TLS-Report-Submitter"), Some("sender.example"));
        assert_eq!(header(&m, "TLS-Required"), Some("No"));
        let ct = header(&m, "Content-Type").unwrap();
        assert!(ct.starts_with("multipart/report; report-type=\"tlsrpt\"; boundary=\""));
        assert!(m.lines().all(|l| l.len() <= 998));
        assert!(!m.replace("\r\n", "").contains('\n'));
    }

    #[test]
    fn the_attachment_is_the_report() {
        let r = report();
        let m = ReportMail::build(
            &r,
            "sender.example",
            "a@s.example",
            "b@r.example",
            UNIX_EPOCH,
        )
        .text;
        let part = m
            .split("Content-Type: application/tlsrpt+gzip\r\n")
            .nth(1)
            .unwrap();
        assert!(part.contains(&format!("filename=\"{}\"", r.file_name("sender.example"))));
        let body = part.split("\r\n\r\n").nth(1).unwrap();
        let b64: String = body.lines().take_while(|l| !l.starts_with("--")).collect();
        let z = base64::engine::general_purpose::STANDARD
            .decode(b64.trim())
            .unwrap();
        let mut json = String::new();
        flate2::read::GzDecoder::new(&z[..])
            .read_to_string(&mut json)
            .unwrap();
        assert_eq!(json, r.json);
    }

    #[test]
    fn addresses_and_dates() {
        assert_eq!(header_address("a.b@x.example"), "a.b@x.example");
        assert_eq!(header_address("a,b@x.example"), "\"a,b\"@x.example");
        assert_eq!(header_address("a\"b@x.example"), "\"a\\\"b\"@x.example");
        assert_eq!(header_address(".a@x.example"), "\".a\"@x.example");
        assert_eq!(rfc5322_date(UNIX_EPOCH), "Thu, 01 Jan 1970 00:00:00 +0000");
        assert_eq!(
            rfc5322_date(parse_day("2024-02-29").unwrap()),
            "Thu, 29 Feb 2024 00:00:00 +0000"
        );
        assert_eq!(clean("a\r\nBcc: x"), "aBcc: x");
    }
}
