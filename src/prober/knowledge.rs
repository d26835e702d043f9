//! The prober as the early-refusal knowledge source: what the front doors
//! ask before refusing a recipient.

use crate::engine::refusal::{Capability, TlsKnowledge};

use super::{Prober, TlsCapability};

impl TlsKnowledge for Prober {
    fn known(&self, domain: &str) -> Option<Capability> {
        if let Some(probe) = Prober::known(self, domain) {
            return Some(capability(&probe.verdict(), &probe));
        }
        // Nothing of its own: what the fleet's store gave, if still fresh
        // (held to the rules of `super::shared`).
        self.shared_known(domain)
    }

    fn schedule(&self, domain: &str) {
        Prober::schedule(self, domain);
    }
}

/// Map a probe's verdict to what refusals may rely on. Anything short of
/// a definite answer (incomplete pictures, null MX, lookup failures) is
/// `Unknown`, which never refuses.
pub(super) fn capability(verdict: &TlsCapability, probe: &super::DomainProbe) -> Capability {
    let detail = verdict.detail().to_string();
    match verdict {
        TlsCapability::NoStarttls(_) => Capability::NoStarttls { detail },
        // A chain the prober could not judge (the CAs Postfix trusts are
        // not known) proves nothing about what Postfix would verify.
        TlsCapability::StarttlsUnverified(_) if trust_unknown(probe) => Capability::Unknown {
            detail: format!("{detail}; whether Postfix trusts the certificate is not known"),
        },
        TlsCapability::StarttlsUnverified(_) => Capability::StarttlsUnverified { detail },
        TlsCapability::StarttlsVerified(_) => {
            let mut names: Vec<String> = probe
                .mx
                .iter()
                .filter(|r| r.tls_with_trusted_chain())
                .flat_map(|r| r.cert_names.iter().cloned())
                .collect();
            names.sort();
            names.dedup();
            Capability::StarttlsVerified { names }
        }
        TlsCapability::StarttlsOffered(_)
        | TlsCapability::NullMx(_)
        | TlsCapability::Unknown(_) => Capability::Unknown { detail },
    }
}

/// Some MX showed a certificate whose chain could not be judged.
fn trust_unknown(probe: &super::DomainProbe) -> bool {
    probe
        .mx
        .iter()
        .any(|r| r.tls_version.is_some() && r.cert_chain_valid.is_none())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::prober::{DomainProbe, MxResult, MxStatus};
    use std::time::SystemTime;

    fn mx(status: MxStatus, offered: bool, trusted: bool, names: &[&str]) -> MxResult {
        let mut r = MxResult::unreached("mx1.example", 10, None, String::new());
        r.status = status;
        r.starttls_offered = offered;
        if offered {
            r.tls_version = Some("TLSv1.3".into());
            r.cert_chain_valid = Some(trusted);
            r.cert_names = names.iter().map(|s| s.to_string()).collect();
            r.cert_matches_host = Some(trusted);
            r.error = None;
        } else {
            r.error = Some("no STARTTLS".into());
        }
        r
    }

    fn probe(results: Vec<MxResult>) -> DomainProbe {
        let mut p = DomainProbe::dns_failure("example", SystemTime::now(), String::new());
        p.dns_error = None;
        p.mx = results;
        p
    }

    #[test]
    fn verdicts_map_to_capabilities() {
        let p = probe(vec![mx(MxStatus::NoStarttls, false, false, &[])]);
        assert!(matches!(
            capability(&p.verdict(), &p),
            Capability::NoStarttls { .. }
        ));

        let p = probe(vec![mx(
            MxStatus::TlsVerified,
            true,
            true,
            &["mx1.example", "mx.example"],
        )]);
        assert_eq!(
            capability(&p.verdict(), &p),
            Capability::StarttlsVerified {
                names: vec!["mx.example".into(), "mx1.example".into()]
            }
        );

        let p = probe(vec![mx(MxStatus::TlsUnverified, true, false, &["other"])]);
        assert!(matches!(
            capability(&p.verdict(), &p),
            Capability::StarttlsUnverified { .. }
        ));

        // A chain not judged (Postfix's CAs unknown) is no knowledge.
        let mut unjudged = mx(MxStatus::TlsUnverified, true, false, &["other"]);
        unjudged.cert_chain_valid = None;
        let p = probe(vec![unjudged]);
        match capability(&p.verdict(), &p) {
            Capability::Unknown { detail } => {
                assert!(detail.contains("whether Postfix trusts"), "{detail}")
            }
            other => panic!("{other:?}"),
        }

        // A lookup failure is no knowledge.
        let p = DomainProbe::dns_failure("example", SystemTime::now(), "SERVFAIL".into());
        match capability(&p.verdict(), &p) {
            Capability::Unknown { detail } => assert!(detail.contains("SERVFAIL"), "{detail}"),
            other => panic!("{other:?}"),
        }
    }
}
