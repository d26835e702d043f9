//! The aggregate report (RFC 8460 section 4): its JSON, compressed with
//! gzip, and the file name the RFC gives it (section 5.3).
//!
//! A report is built from what was counted for one policy domain over one
//! UTC day ([`DayCounts`]); the same counts always give the same bytes, so
//! `tlsrpt show` prints exactly what goes, or went, out.

use std::collections::BTreeMap;
use std::io::Write;
use std::net::IpAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// Seconds in the UTC day a report covers.
const DAY: u64 = 86_400;

/// The kind of policy that applied (RFC 8460 section 4.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PolicyType {
    Tlsa,
    Sts,
    NoPolicyFound,
}

/// Why a session failed (RFC 8460 section 4.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ResultType {
    StarttlsNotSupported,
    CertificateHostMismatch,
    CertificateExpired,
    CertificateNotTrusted,
    ValidationFailure,
    TlsaInvalid,
    DnssecInvalid,
    DaneRequired,
    StsPolicyFetchError,
    StsPolicyInvalid,
    StsWebpkiInvalid,
}

/// The policy a session was held to.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct AppliedPolicy {
    #[serde(rename = "policy-type")]
    pub policy_type: PolicyType,
    /// The MTA-STS policy's lines, or the TLSA records in presentation
    /// form; empty for `no-policy-found`.
    #[serde(
        rename = "policy-string",
        default,
        skip_serializing_if = "Vec::is_empty"
    )]
    pub policy_string: Vec<String>,
    #[serde(rename = "policy-domain")]
    pub policy_domain: String,
    /// The MTA-STS policy's `mx` patterns (`sts` only).
    #[serde(rename = "mx-host", default, skip_serializing_if = "Vec::is_empty")]
    pub mx_host: Vec<String>,
}

/// What a failure is grouped by.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct FailureKey {
    #[serde(rename = "result-type")]
    pub result_type: ResultType,
    #[serde(rename = "sending-mta-ip", skip_serializing_if = "Option::is_none")]
    pub sending_mta_ip: Option<IpAddr>,
    #[serde(
        rename = "receiving-mx-hostname",
        skip_serializing_if = "Option::is_none"
    )]
    pub receiving_mx_hostname: Option<String>,
    #[serde(rename = "receiving-ip", skip_serializing_if = "Option::is_none")]
    pub receiving_ip: Option<IpAddr>,
    #[serde(
        rename = "failure-reason-code",
        skip_serializing_if = "Option::is_none"
    )]
    pub failure_reason_code: Option<String>,
}

/// Counts for one applied policy.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PolicyCounts {
    pub successful: u64,
    pub failures: BTreeMap<FailureKey, u64>,
}

impl PolicyCounts {
    pub fn failed(&self) -> u64 {
        self.failures.values().sum()
    }
}

/// Everything counted for one policy domain on one UTC day.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DayCounts {
    pub policies: BTreeMap<AppliedPolicy, PolicyCounts>,
}

/// Who sends the report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Submitter {
    pub organization_name: String,
    pub contact_info: String,
    /// The submitter's domain (`TLS-Report-Submitter`, the report id).
    pub submitter: String,
}

#[derive(Debug, Serialize)]
struct DateRange {
    #[serde(rename = "start-datetime")]
    start: String,
    #[serde(rename = "end-datetime")]
    end: String,
}

#[derive(Debug, Serialize)]
struct Summary {
    #[serde(rename = "total-successful-session-count")]
    successful: u64,
    #[serde(rename = "total-failure-session-count")]
    failed: u64,
}

#[derive(Debug, Serialize)]
struct FailureDetail<'a> {
    #[serde(flatten)]
    key: &'a FailureKey,
    #[serde(rename = "failed-session-count")]
    count: u64,
}

#[derive(Debug, Serialize)]
struct PolicyReport<'a> {
    policy: &'a AppliedPolicy,
    summary: Summary,
    #[serde(rename = "failure-details", skip_serializing_if = "Vec::is_empty")]
    failure_details: Vec<FailureDetail<'a>>,
}

#[derive(Debug, Serialize)]
struct ReportJson<'a> {
    #[serde(rename = "organization-name")]
    organization_name: &'a str,
    #[serde(rename = "date-range")]
    date_range: DateRange,
    #[serde(rename = "contact-info")]
    contact_info: &'a str,
    #[serde(rename = "report-id")]
    report_id: &'a str,
    policies: Vec<PolicyReport<'a>>,
}

/// A built report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    pub policy_domain: String,
    /// The first second of the UTC day.
    pub day_start: SystemTime,
    pub report_id: String,
    /// The JSON text.
    pub json: String,
}

/// The start of the UTC day holding `t`.
pub fn day_start(t: SystemTime) -> SystemTime {
    let secs = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    UNIX_EPOCH + Duration::from_secs(secs - secs % DAY)
}

/// `YYYY-MM-DD` of a day start.
pub fn day_name(day: SystemTime) -> String {
    let s = humantime::format_rfc3339_seconds(day).to_string();
    s[..10].to_string()
}

/// Parse `YYYY-MM-DD` into its day start.
pub fn parse_day(text: &str) -> Option<SystemTime> {
    if text.len() != 10 {
        return None;
    }
    let t = humantime::parse_rfc3339(&format!("{text}T00:00:00Z")).ok()?;
    (day_start(t) == t).then_some(t)
}

impl Report {
    /// Build the report for `domain`'s counts of the day starting at
    /// `day` (a day start).
    pub fn build(
        submitter: &Submitter,
        domain: &str,
        day: SystemTime,
        counts: &DayCounts,
    ) -> Report {
        let report_id = format!("{}_{domain}@{}", day_name(day), submitter.submitter);
        Report::build_with_id(submitter, domain, day, counts, report_id)
    }

    /// [`Report::build`] with another report id (a fleet host's partial
    /// report: `DAY_DOMAIN.HOST@SUBMITTER`).
    pub fn build_with_id(
        submitter: &Submitter,
        domain: &str,
        day: SystemTime,
        counts: &DayCounts,
        report_id: String,
    ) -> Report {
        let end = day + Duration::from_secs(DAY - 1);
        let policies = counts
            .policies
            .iter()
            .map(|(policy, c)| PolicyReport {
                policy,
                summary: Summary {
                    successful: c.successful,
                    failed: c.failed(),
                },
                failure_details: c
                    .failures
                    .iter()
                    .map(|(key, &count)| FailureDetail { key, count })
                    .collect(),
            })
            .collect();
        let json = ReportJson {
            organization_name: &submitter.organization_name,
            date_range: DateRange {
                start: humantime::format_rfc3339_seconds(day).to_string(),
                end: humantime::format_rfc3339_seconds(end).to_string(),
            },
            contact_info: &submitter.contact_info,
            report_id: &report_id,
            policies,
        };
        Report {
            policy_domain: domain.to_string(),
            day_start: day,
            report_id: report_id.clone(),
            json: serde_json::to_string_pretty(&json).unwrap_or_default(),
        }
    }

    /// The report gzip-compressed (`application/tlsrpt+gzip`); the same
    /// report gives the same bytes (no file name or time in the header).
    pub fn gzip(&self) -> Vec<u8> {
        let mut enc = flate2::GzBuilder::new()
            .mtime(0)
            .write(Vec::new(), flate2::Compression::default());
        // Writing to memory does not fail.
        let _ = enc.write_all(self.json.as_bytes());
        enc.finish().unwrap_or_default()
    }

    /// RFC 8460 section 5.3: `submitter!policy-domain!begin!end.json.gz`,
    /// the times in seconds since the epoch.
    pub fn file_name(&self, submitter: &str) -> String {
        let begin = self
            .day_start
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        format!(
            "{submitter}!{}!{begin}!{}.json.gz",
            self.policy_domain,
            begin + DAY - 1
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn submitter() -> Submitter {
        Submitter {
            organization_name: "Example Org".into(),
            contact_info: "postmaster@sender.example".into(),
            submitter: "sender.example".into(),
        }
    }

    fn sts() -> AppliedPolicy {
        AppliedPolicy {
            policy_type: PolicyType::Sts,
            policy_string: vec![
                "version: STSv1".into(),
                "mode: enforce".into(),
                "mx: mx.rcpt.example".into(),
                "max_age: 86400".into(),
            ],
            policy_domain: "rcpt.example".into(),
            mx_host: vec!["mx.rcpt.example".into()],
        }
    }

    #[test]
    fn the_report_has_every_field_of_section_4() {
        let day = parse_day("2026-12-04").unwrap();
        let mut c = DayCounts::default();
        let mut p = PolicyCounts {
            successful: 5,
            ..PolicyCounts::default()
        };
        p.failures.insert(
            FailureKey {
                result_type: ResultType::CertificateNotTrusted,
                sending_mta_ip: Some("192.0.2.1".parse().unwrap()),
                receiving_mx_hostname: Some("mx.rcpt.example".into()),
                receiving_ip: Some("198.51.100.7".parse().unwrap()),
                failure_reason_code: None,
            },
            2,
        );
        c.policies.insert(sts(), p);
        c.policies.insert(
            AppliedPolicy {
                policy_type: PolicyType::NoPolicyFound,
                policy_string: vec![],
                policy_domain: "rcpt.example".into(),
                mx_host: vec![],
            },
            PolicyCounts {
                successful: 1,
                ..PolicyCounts::default()
            },
        );
        let r = Report::build(&submitter(), "rcpt.example", day, &c);
        let v: serde_json::Value = serde_json::from_str(&r.json).unwrap();
        assert_eq!(v["organization-name"], "Example Org");
        assert_eq!(v["contact-info"], "postmaster@sender.example");
        assert_eq!(v["report-id"], "2026-12-04_rcpt.example@sender.example");
        assert_eq!(v["date-range"]["start-datetime"], "2026-12-04T00:00:00Z");
        assert_eq!(v["date-range"]["end-datetime"], "2026-12-04T23:59:59Z");
        let pols = v["policies"].as_array().unwrap();
        assert_eq!(pols.len(), 2);
        let s = &pols[0];
        assert_eq!(s["policy"]["policy-type"], "sts");
        assert_eq!(s["policy"]["policy-string"][1], "mode: enforce");
        assert_eq!(s["policy"]["mx-host"][0], "mx.rcpt.example");
        assert_eq!(s["summary"]["total-successful-session-count"], 5);
        assert_eq!(s["summary"]["total-failure-session-count"], 2);
        let f = &s["failure-details"][0];
        assert_eq!(f["result-type"], "certificate-not-trusted");
        assert_eq!(f["sending-mta-ip"], "192.0.2.1");
        assert_eq!(f["receiving-mx-hostname"], "mx.rcpt.example");
        assert_eq!(f["receiving-ip"], "198.51.100.7");
        assert_eq!(f["failed-session-count"], 2);
        assert!(f.get("failure-reason-code").is_none());
        let n = &pols[1];
        assert_eq!(n["policy"]["policy-type"], "no-policy-found");
        assert!(n["policy"].get("policy-string").is_none());
        assert!(n["policy"].get("mx-host").is_none());
        assert!(n.get("failure-details").is_none());
        assert_eq!(
            r.file_name("sender.example"),
            "sender.example!rcpt.example!1796342400!1796428799.json.gz"
        );
    }

    #[test]
    fn gzip_round_trips_and_is_the_same_each_time() {
        let day = parse_day("2026-01-31").unwrap();
        let r = Report::build(&submitter(), "x.example", day, &DayCounts::default());
        let z = r.gzip();
        assert_eq!(z, r.gzip());
        let mut out = String::new();
        flate2::read::GzDecoder::new(&z[..])
            .read_to_string(&mut out)
            .unwrap();
        assert_eq!(out, r.json);
    }

    #[test]
    fn days() {
        let d = parse_day("2026-12-04").unwrap();
        assert_eq!(day_name(d), "2026-12-04");
        assert_eq!(day_start(d + Duration::from_secs(DAY - 1)), d);
        assert_eq!(
            day_start(d + Duration::from_secs(DAY)),
            d + Duration::from_secs(DAY)
        );
        for bad in ["2026-12-4", "2026-13-01", "2026-12-04T00", "", "yesterday"] {
            assert_eq!(parse_day(bad), None, "{bad}");
        }
    }
}
