//! One delivery attempt as a TLS-RPT session (RFC 8460 section 4.3):
//! successful when Postfix delivered over TLS (or handed the message over
//! TLS and the peer deferred or refused it for another reason), failed
//! with a result type when TLS failed, not a session at all when there was
//! no TLS question to the domain's servers (no connection, LMTP, this
//! host's own configuration problem).
//!
//! Pure: the delivery as the outcome follower judged it, and the policy
//! that applied to the domain (the caller's lookup in the MTA-STS and DANE
//! caches at the time).

use std::net::IpAddr;

use crate::engine::outcome::TlsTrust;
use crate::log::record::DeliveryOutcome;

use super::report::{AppliedPolicy, FailureKey, ResultType};

/// What a delivery attempt counts as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionResult {
    Successful,
    Failed(FailureKey),
}

/// A delivery attempt counted for `domain`'s report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    pub domain: String,
    pub policy: AppliedPolicy,
    pub result: SessionResult,
}

/// `host[addr]:port` of `relay=`: the host and the address when it is an
/// IP address.
fn relay_parts(relay: &str) -> Option<(String, Option<IpAddr>)> {
    let (host, rest) = relay.split_once('[')?;
    let addr = &rest[..rest.find(']')?];
    Some((host.to_ascii_lowercase(), addr.parse().ok()))
}

/// Longest `failure-reason-code` (Postfix's words for the failure).
pub const MAX_REASON: usize = 200;

/// The result type of a TLS failure as the outcome follower named it, with
/// the text Postfix logged for the deferral. `None`: the failure is this
/// host's own (the policy map unreachable, no TLS engine), not the
/// domain's, and is not reported to it.
pub fn result_type(failure: &str, text: &str) -> Option<ResultType> {
    let t = text.to_ascii_lowercase();
    Some(match failure {
        "not-offered" | "starttls-refused" => ResultType::StarttlsNotSupported,
        "certificate-not-verified" | "verification-failed" => {
            if t.contains("expired") {
                ResultType::CertificateExpired
            } else if t.contains("hostname mismatch")
                || t.contains("name mismatch")
                || t.contains("does not match")
            {
                ResultType::CertificateHostMismatch
            } else {
                ResultType::CertificateNotTrusted
            }
        }
        "tlsa-unusable" => ResultType::TlsaInvalid,
        "tlsa-lookup-error" => ResultType::DnssecInvalid,
        "dane-mismatch" | "handshake-failed" => ResultType::ValidationFailure,
        // config-problem, tls-unavailable, library-problem: this host's.
        _ => return None,
    })
}

/// The session of one delivery attempt to `policy.policy_domain`, if it
/// is one. `lmtp` transports and attempts that reached no server
/// (`relay=none`) are not sessions. `discovery`: the policy could not be
/// found out (an MTA-STS policy published but not fetched, TLSA records
/// that do not validate): the session failed with that result whatever
/// Postfix then did.
pub fn session_of(
    d: &DeliveryOutcome,
    policy: AppliedPolicy,
    discovery: Option<ResultType>,
) -> Option<Session> {
    let domain = d.domain.clone()?;
    if d.transport.ends_with("/lmtp") {
        return None;
    }
    let (host, ip) = relay_parts(&d.relay)?;
    let own = d
        .tls_failure
        .is_some_and(|f| result_type(f, &d.status_text).is_none());
    let result = match (discovery, d.tls_failure) {
        (_, Some(_)) if own => return None,
        (Some(rt), _) => SessionResult::Failed(FailureKey {
            result_type: rt,
            sending_mta_ip: None,
            receiving_mx_hostname: Some(host),
            receiving_ip: ip,
            failure_reason_code: None,
        }),
        (None, Some(f)) => SessionResult::Failed(FailureKey {
            result_type: result_type(f, &d.status_text)?,
            sending_mta_ip: None,
            receiving_mx_hostname: Some(host),
            receiving_ip: ip,
            // What Postfix said of the failure (its own words or the
            // server's reply to STARTTLS), never a reply to the message.
            failure_reason_code: Some(crate::util::text::printable_ascii(
                d.status_text.trim(),
                MAX_REASON,
            ))
            .filter(|r| !r.is_empty()),
        }),
        (None, None) if d.tls_trust != TlsTrust::None => SessionResult::Successful,
        // Plaintext without a TLS failure: STARTTLS was not offered and
        // the level let the mail go in plaintext.
        (None, None) => SessionResult::Failed(FailureKey {
            result_type: ResultType::StarttlsNotSupported,
            sending_mta_ip: None,
            receiving_mx_hostname: Some(host),
            receiving_ip: ip,
            failure_reason_code: None,
        }),
    };
    Some(Session {
        domain,
        policy,
        result,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::outcome::Verdict;
    use crate::tlsrpt::report::PolicyType;
    use std::time::UNIX_EPOCH;

    fn delivery(
        relay: &str,
        trust: TlsTrust,
        failure: Option<&'static str>,
        text: &str,
    ) -> DeliveryOutcome {
        DeliveryOutcome {
            recipient: "a@rcpt.example".into(),
            orig_to: None,
            domain: Some("rcpt.example".into()),
            relay: relay.into(),
            transport: "postfix/smtp".into(),
            status: if failure.is_some() {
                "deferred"
            } else {
                "sent"
            }
            .into(),
            dsn: "2.0.0".into(),
            status_text: text.into(),
            tls_trust: trust,
            tls_protocol: None,
            tls_cipher: None,
            tls_failure: failure,
            governing: None,
            verdict: Verdict::Encrypted,
            logged_at: UNIX_EPOCH,
            delay: None,
        }
    }

    fn none() -> AppliedPolicy {
        AppliedPolicy {
            policy_type: PolicyType::NoPolicyFound,
            policy_string: vec![],
            policy_domain: "rcpt.example".into(),
            mx_host: vec![],
        }
    }

    #[test]
    fn tls_deliveries_are_successful_sessions() {
        for trust in [
            TlsTrust::Anonymous,
            TlsTrust::Untrusted,
            TlsTrust::Trusted,
            TlsTrust::Verified,
        ] {
            let s = session_of(
                &delivery("mx.rcpt.example[192.0.2.1]:25", trust, None, "250 ok"),
                none(),
                None,
            )
            .unwrap();
            assert_eq!(s.result, SessionResult::Successful);
            assert_eq!(s.domain, "rcpt.example");
        }
    }

    #[test]
    fn failures_carry_the_mx_and_its_address() {
        let s = session_of(
            &delivery(
                "MX.rcpt.example[2001:db8::25]:25",
                TlsTrust::None,
                Some("not-offered"),
                "TLS is required, but was not offered by host mx.rcpt.example[2001:db8::25]",
            ),
            none(),
            None,
        )
        .unwrap();
        let SessionResult::Failed(k) = s.result else {
            panic!()
        };
        assert_eq!(k.result_type, ResultType::StarttlsNotSupported);
        assert_eq!(
            k.failure_reason_code.as_deref(),
            Some("TLS is required, but was not offered by host mx.rcpt.example[2001:db8::25]")
        );
        assert_eq!(k.receiving_mx_hostname.as_deref(), Some("mx.rcpt.example"));
        assert_eq!(k.receiving_ip, Some("2001:db8::25".parse().unwrap()));
        // Plaintext, as the level allowed: STARTTLS was not there.
        let s = session_of(
            &delivery(
                "mx.rcpt.example[192.0.2.1]:25",
                TlsTrust::None,
                None,
                "250 ok",
            ),
            none(),
            None,
        )
        .unwrap();
        // The server's reply to the message is not a reason.
        assert!(
            matches!(s.result, SessionResult::Failed(ref k) if k.result_type == ResultType::StarttlsNotSupported
                && k.failure_reason_code.is_none())
        );
    }

    #[test]
    fn a_discovery_failure_fails_the_session_unless_the_failure_was_this_hosts() {
        let s = session_of(
            &delivery(
                "mx.rcpt.example[192.0.2.1]:25",
                TlsTrust::Verified,
                None,
                "250 ok",
            ),
            none(),
            Some(ResultType::StsPolicyFetchError),
        )
        .unwrap();
        assert!(
            matches!(s.result, SessionResult::Failed(ref k) if k.result_type == ResultType::StsPolicyFetchError
                && k.receiving_mx_hostname.as_deref() == Some("mx.rcpt.example"))
        );
        let own = delivery(
            "mx.rcpt.example[192.0.2.1]:25",
            TlsTrust::None,
            Some("config-problem"),
            "",
        );
        assert_eq!(
            session_of(&own, none(), Some(ResultType::DnssecInvalid)),
            None
        );
    }

    #[test]
    fn result_types() {
        let cases = [
            ("starttls-refused", "", ResultType::StarttlsNotSupported),
            (
                "certificate-not-verified",
                "Server certificate not verified",
                ResultType::CertificateNotTrusted,
            ),
            (
                "verification-failed",
                "num=10:certificate has expired",
                ResultType::CertificateExpired,
            ),
            (
                "verification-failed",
                "num=62:hostname mismatch",
                ResultType::CertificateHostMismatch,
            ),
            ("tlsa-unusable", "", ResultType::TlsaInvalid),
            (
                "tlsa-lookup-error",
                "TLSA lookup error for mx:25",
                ResultType::DnssecInvalid,
            ),
            ("dane-mismatch", "", ResultType::ValidationFailure),
            ("handshake-failed", "", ResultType::ValidationFailure),
        ];
        for (f, t, want) in cases {
            assert_eq!(result_type(f, t), Some(want), "{f} {t}");
        }
        for own in ["config-problem", "tls-unavailable", "library-problem"] {
            assert_eq!(result_type(own, ""), None, "{own}");
        }
    }

    #[test]
    fn not_sessions() {
        // No server reached.
        assert_eq!(
            session_of(
                &delivery("none", TlsTrust::None, Some("tlsa-lookup-error"), ""),
                none(),
                None
            ),
            None
        );
        // This host's own problem.
        assert_eq!(
            session_of(
                &delivery(
                    "mx.rcpt.example[192.0.2.1]:25",
                    TlsTrust::None,
                    Some("config-problem"),
                    ""
                ),
                none(),
                None
            ),
            None
        );
        // LMTP.
        let mut d = delivery(
            "mx.rcpt.example[192.0.2.1]:24",
            TlsTrust::Verified,
            None,
            "",
        );
        d.transport = "postfix/lmtp".into();
        assert_eq!(session_of(&d, none(), None), None);
        // No recipient domain.
        let mut d = delivery(
            "mx.rcpt.example[192.0.2.1]:25",
            TlsTrust::Verified,
            None,
            "",
        );
        d.domain = None;
        assert_eq!(session_of(&d, none(), None), None);
    }
}
