//! Which published policy a delivery attempt was held to, for its report
//! (RFC 8460 section 4.4): `tlsa` when the MX host reached has TLSA
//! records under DNSSEC (DANE comes before MTA-STS, RFC 8461 section 2),
//! else `sts` when the domain's MTA-STS policy is cached (mode `enforce`
//! or `testing`), else `no-policy-found`. A policy that could not be found
//! out (MTA-STS published but not fetched or invalid, TLSA records that
//! do not validate or cannot be used) is reported as that policy type with
//! the discovery's result type.
//!
//! Pure: the caller reads the DANE and MTA-STS caches.

use super::report::{AppliedPolicy, PolicyType, ResultType};

/// What the MTA-STS cache holds for the domain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StsView {
    /// A valid policy: its lines as published and its `mx` patterns.
    Policy {
        lines: Vec<String>,
        mx: Vec<String>,
        /// `mode: none`: the domain withdrew its policy.
        mode_none: bool,
    },
    /// A record published, no usable policy (`sts-policy-fetch-error`,
    /// `sts-policy-invalid`, `sts-webpki-invalid`).
    Failed(ResultType),
    Nothing,
}

/// What DANE found for the MX host the attempt reached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TlsaView {
    /// Usable TLSA records, in presentation form (`3 1 1 <hex>`).
    Records(Vec<String>),
    /// TLSA records that did not validate (`dnssec-invalid`) or none
    /// usable (`tlsa-invalid`).
    Failed(ResultType),
    Nothing,
}

/// The applied policy for `domain`, and the discovery failure that fails
/// the session, if any.
pub fn applied(
    domain: &str,
    sts: &StsView,
    tlsa: &TlsaView,
) -> (AppliedPolicy, Option<ResultType>) {
    let policy = |policy_type, policy_string, mx_host| AppliedPolicy {
        policy_type,
        policy_string,
        policy_domain: domain.to_string(),
        mx_host,
    };
    match (tlsa, sts) {
        (TlsaView::Records(r), _) => (policy(PolicyType::Tlsa, r.clone(), vec![]), None),
        (TlsaView::Failed(rt), _) => (policy(PolicyType::Tlsa, vec![], vec![]), Some(*rt)),
        (
            TlsaView::Nothing,
            StsView::Policy {
                lines,
                mx,
                mode_none: false,
            },
        ) => (policy(PolicyType::Sts, lines.clone(), mx.clone()), None),
        (TlsaView::Nothing, StsView::Failed(rt)) => {
            (policy(PolicyType::Sts, vec![], vec![]), Some(*rt))
        }
        (TlsaView::Nothing, _) => (policy(PolicyType::NoPolicyFound, vec![], vec![]), None),
    }
}

/// The TLSA view of a failed attempt whose level required DANE
/// (`dane-only`): with no TLSA records known for the host, the session
/// failed because DANE was required (`dane-required`).
pub fn dane_required(view: TlsaView, level_requires_dane: bool, failed: bool) -> TlsaView {
    match view {
        TlsaView::Nothing if level_requires_dane && failed => {
            TlsaView::Failed(ResultType::DaneRequired)
        }
        v => v,
    }
}

/// A TLSA record in presentation form.
pub fn tlsa_text(usage: u8, selector: u8, matching: u8, data_hex: &str) -> String {
    format!(
        "{usage} {selector} {matching} {}",
        data_hex.to_ascii_uppercase()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sts() -> StsView {
        StsView::Policy {
            lines: vec!["version: STSv1".into(), "mode: enforce".into()],
            mx: vec!["mx.r.example".into()],
            mode_none: false,
        }
    }

    #[test]
    fn dane_before_sts_before_nothing() {
        let t = TlsaView::Records(vec![tlsa_text(3, 1, 1, "ab12")]);
        let (p, f) = applied("r.example", &sts(), &t);
        assert_eq!(p.policy_type, PolicyType::Tlsa);
        assert_eq!(p.policy_string, ["3 1 1 AB12"]);
        assert!(p.mx_host.is_empty());
        assert_eq!(f, None);
        let (p, f) = applied("r.example", &sts(), &TlsaView::Nothing);
        assert_eq!(p.policy_type, PolicyType::Sts);
        assert_eq!(p.mx_host, ["mx.r.example"]);
        assert_eq!(p.policy_string.len(), 2);
        assert_eq!(f, None);
        let (p, f) = applied("r.example", &StsView::Nothing, &TlsaView::Nothing);
        assert_eq!(p.policy_type, PolicyType::NoPolicyFound);
        assert!(p.policy_string.is_empty());
        assert_eq!(p.policy_domain, "r.example");
        assert_eq!(f, None);
    }

    #[test]
    fn dane_required_when_a_dane_only_attempt_failed_without_tlsa() {
        let (p, f) = applied(
            "r.example",
            &sts(),
            &dane_required(TlsaView::Nothing, true, true),
        );
        assert_eq!(p.policy_type, PolicyType::Tlsa);
        assert_eq!(f, Some(ResultType::DaneRequired));
        // Delivered: the TLSA records were there (Postfix verified them).
        assert_eq!(
            dane_required(TlsaView::Nothing, true, false),
            TlsaView::Nothing
        );
        // Not required, or records known: unchanged.
        assert_eq!(
            dane_required(TlsaView::Nothing, false, true),
            TlsaView::Nothing
        );
        let r = TlsaView::Records(vec![tlsa_text(3, 1, 1, "ab")]);
        assert_eq!(dane_required(r.clone(), true, true), r);
    }

    #[test]
    fn a_withdrawn_policy_is_no_policy() {
        let none = StsView::Policy {
            lines: vec!["mode: none".into()],
            mx: vec![],
            mode_none: true,
        };
        let (p, _) = applied("r.example", &none, &TlsaView::Nothing);
        assert_eq!(p.policy_type, PolicyType::NoPolicyFound);
    }

    #[test]
    fn discovery_failures_name_their_policy_type() {
        let (p, f) = applied(
            "r.example",
            &StsView::Failed(ResultType::StsWebpkiInvalid),
            &TlsaView::Nothing,
        );
        assert_eq!(p.policy_type, PolicyType::Sts);
        assert_eq!(f, Some(ResultType::StsWebpkiInvalid));
        let (p, f) = applied(
            "r.example",
            &sts(),
            &TlsaView::Failed(ResultType::DnssecInvalid),
        );
        assert_eq!(p.policy_type, PolicyType::Tlsa);
        assert_eq!(f, Some(ResultType::DnssecInvalid));
    }
}
