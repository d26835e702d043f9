//! The checks every scenario ends with: the decision log, the milter's
//! records and the outcome records against what Postfix logged and what
//! the servers received.

use serde_json::Value;

use crate::common::outcomes::{self, Attempt};
use crate::common::postfix::LogLine;
use crate::lab::{DELIVERY, Lab};

impl Lab {
    /// The decision log against what Postfix did, for every message:
    ///
    /// - every recipient Postfix delivered was delivered the way the
    ///   socketmap decided for its domain: over TLS when forced, and only
    ///   to a server that got it;
    /// - no recipient of a forced domain was received in plaintext, and a
    ///   deferred one was not received at all;
    /// - every message Postfix received over SMTP while the milter ran has
    ///   exactly one milter record with its queue id, whose recipients
    ///   carry the socketmap's decision for their domain;
    /// - every delivery attempt smtp(8) logged has exactly one outcome
    ///   record, whose verdict fits what the servers received
    ///   ([`Lab::check_outcomes`]).
    ///
    /// Returns the outcome records.
    pub fn check_log_matches_postfix(&self, milter_throughout: bool) -> Vec<Value> {
        let records = self.daemon.decisions();
        let map_tls = |domain: &str| -> Option<String> {
            let tls: Vec<&str> = records
                .iter()
                .filter(|r| r["frontend"] == "socketmap" && r["domain"] == domain)
                .map(|r| r["tls"].as_str().unwrap())
                .collect();
            let first = *tls.first()?;
            assert!(
                tls.iter().all(|t| *t == first),
                "{domain} decided differently over time: {tls:?}"
            );
            Some(first.to_string())
        };
        let mut checked = 0;
        let mut accepted = Vec::new();
        let mut attempts = Vec::new();
        for line in self.pf.log_lines() {
            let Some(l) = LogLine::parse(&line) else {
                continue;
            };
            if l.daemon() == "smtpd"
                && let Some((id, rest)) = l.text.split_once(": ")
                && rest.starts_with("client=")
            {
                accepted.push(id.to_string());
            }
            if l.daemon() != "smtp" || !l.text.contains(" status=") {
                continue;
            }
            let Some(rcpt) = l
                .text
                .split_once("to=<")
                .and_then(|(_, r)| r.split_once('>'))
                .map(|(r, _)| r)
            else {
                continue;
            };
            let queue_id = l.text.split_once(": ").map_or("", |(q, _)| q);
            let status = l
                .text
                .split_once(" status=")
                .and_then(|(_, s)| s.split_whitespace().next())
                .unwrap_or_default();
            attempts.push(Attempt::new(queue_id, rcpt, status));
            let domain = rcpt.rsplit_once('@').unwrap().1.to_ascii_lowercase();
            let got = self.received_by_sinks(rcpt);
            let tls = map_tls(&domain);
            if self.bypassed.contains(&domain.as_str()) {
                // Judged by its outcome record alone (check_outcomes).
            } else if l.text.contains("status=sent") {
                let tls = tls.unwrap_or_else(|| panic!("{rcpt} sent without a map decision"));
                assert!(
                    !got.is_empty(),
                    "{rcpt}: Postfix says sent, no server has it"
                );
                if tls == "forced" {
                    assert!(got.iter().all(|m| m.tls), "{rcpt} forced, got plaintext");
                }
                checked += 1;
            } else if l.text.contains("status=deferred") && tls.as_deref() == Some("forced") {
                assert!(
                    got.iter().all(|m| m.tls),
                    "{rcpt} forced and deferred, yet received in plaintext"
                );
                checked += 1;
            }
        }
        assert!(checked > 0, "no delivery checked");
        for id in &accepted {
            let recs: Vec<&Value> = records
                .iter()
                .filter(|r| r["frontend"] == "milter" && r["queue_id"] == id.as_str())
                .collect();
            assert!(recs.len() <= 1, "{id}: {} milter records", recs.len());
            if milter_throughout {
                assert_eq!(recs.len(), 1, "{id}: no milter record");
            }
            for r in recs {
                for rcpt in r["recipients"].as_array().unwrap() {
                    let domain = rcpt["domain"].as_str().unwrap();
                    if let Some(tls) = map_tls(domain) {
                        assert_eq!(rcpt["tls"], tls.as_str(), "{id}: {rcpt} vs the map");
                    }
                }
            }
        }
        self.check_outcomes(&attempts, &records)
    }

    /// The outcome records against the attempts Postfix logged, what the
    /// servers received and what the socketmap answered (`decisions`):
    ///
    /// - each attempt has exactly one record, and no record names an
    ///   attempt Postfix did not log;
    /// - a recipient has as many `sent` records as the servers received
    ///   messages for it, and as many of them without TLS as came in
    ///   plaintext;
    /// - each verdict is what the governing level makes of the attempt
    ///   ([`expected_verdict`]);
    /// - a delivery to a domain the socketmap was asked about, sent or held
    ///   for TLS, is joined with a socketmap lookup, at a level the
    ///   socketmap answered for that domain.
    pub fn check_outcomes(&self, attempts: &[Attempt], decisions: &[Value]) -> Vec<Value> {
        let records = outcomes::wait_for(&self.daemon, attempts, DELIVERY);
        let got: Vec<Attempt> = records.iter().map(Attempt::of).collect();
        assert_eq!(
            outcomes::counts(&got),
            outcomes::counts(attempts),
            "outcome records (left) against the attempts Postfix logged (right)"
        );
        let rcpts: std::collections::BTreeSet<&str> =
            attempts.iter().map(|a| a.recipient.as_str()).collect();
        for rcpt in rcpts {
            let sent: Vec<&Value> = records
                .iter()
                .filter(|r| r["recipient"] == rcpt && r["status"] == "sent")
                .collect();
            let received = self.received_by_sinks(rcpt);
            assert_eq!(
                sent.len(),
                received.len(),
                "{rcpt}: sent records {sent:#?} against messages received"
            );
            let plain = sent.iter().filter(|r| r["tls_trust"] == "none").count();
            let plain_received = received.iter().filter(|m| !m.tls).count();
            assert_eq!(plain, plain_received, "{rcpt}: plaintext {sent:#?}");
        }
        let map_levels = |domain: &str| -> Vec<&str> {
            decisions
                .iter()
                .filter(|r| r["frontend"] == "socketmap" && r["domain"] == domain)
                .filter_map(|r| r["level"].as_str())
                .collect()
        };
        for r in &records {
            assert_eq!(r["verdict"], expected_verdict(r), "{r}");
            let domain = r["domain"].as_str().unwrap_or_default();
            let levels = map_levels(domain);
            let tls_outcome = r["status"] == "sent" || r["verdict"] == "held";
            if tls_outcome && !levels.is_empty() {
                assert_eq!(r["decided_by"], "socketmap", "{r}");
            }
            if r["verdict"] == "policy-unreachable" {
                assert_ne!(r["decided_by"], "socketmap", "{r}");
            }
            if r["decided_by"] == "socketmap" {
                let level = r["level"].as_str().unwrap_or_default();
                assert!(levels.contains(&level), "{r}: the map said {levels:?}");
            }
        }
        records
    }
}

/// The verdict an outcome record must have, from its own facts: the
/// governing level (`level`; none: nothing governed it), the TLS trust of
/// a delivery, the TLS failure or the policy problem of one held back.
pub fn expected_verdict(r: &Value) -> &'static str {
    let level = r["level"]
        .as_str()
        .map(|l| l.split_whitespace().next().unwrap_or_default());
    // Trust needed and had: 0 none, 1 any TLS, 2 verified.
    let need = match level {
        Some("encrypt") => 1,
        Some("secure" | "verify" | "dane-only") => 2,
        _ => 0,
    };
    let status_text = r["status_text"].as_str().unwrap_or_default();
    if r["status"] != "sent" {
        return if status_text.contains("TLS configuration problem") {
            "policy-unreachable"
        } else if !r["tls_failure"].is_null() && (need > 0 || level == Some("dane")) {
            "held"
        } else {
            "not-delivered"
        };
    }
    let trust = r["tls_trust"].as_str().unwrap_or_default();
    let have = match trust {
        "none" => 0,
        "verified" => 2,
        _ => 1,
    };
    if level.is_none() {
        "undecided"
    } else if have < need {
        "violation"
    } else if r["decided_by"] == "rule" {
        "undecided"
    } else {
        match have {
            0 => "plaintext-fallback",
            2 => "verified",
            _ => "encrypted",
        }
    }
}
