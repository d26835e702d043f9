//! DNSSEC-aware lookups, for DANE.
//!
//! Every answer says whether it is *secure*: DNSSEC-validated from a trust
//! anchor down to the records (RFC 4033 section 5). Two modes
//! ([`DnssecMode`], the `dns.dnssec` setting):
//!
//! - `trust-ad` (default): the configured nameservers are validating
//!   resolvers (a local unbound, say). Every query carries the DO and AD
//!   bits, and an answer is secure when the response has the AD bit set
//!   (RFC 6840 section 5.7). This is what Postfix itself relies on for DANE
//!   (`smtp_dns_support_level = dnssec`), so tls-policyd and Postfix see the
//!   same thing. The AD bit is only as trustworthy as the path to the
//!   resolver: use a resolver on the same machine. The queries are sent
//!   here rather than through hickory's resolver, which sets the DO bit
//!   only when it validates itself and keeps no header bits of negative
//!   answers.
//! - `validate`: hickory-resolver validates every answer in process, from
//!   the root's keys or from the DNSKEY records in `dns.trust_anchor`. The
//!   nameservers only have to pass DNSSEC records through (any recursive
//!   resolver does).
//!
//! Failures keep DNSSEC's distinction between **bogus** (validation
//! failed: an attack, or a broken signer) and **failed** (no usable
//! answer). Neither is ever "no records". A validating resolver answers
//! SERVFAIL for bogus data; when it says why (RFC 8914 extended DNS errors),
//! `trust-ad` reports bogus too.
//!
//! `answer` holds what a lookup answers and the reading of responses both
//! modes share; `trust_ad` and `validate` hold one mode each.

mod answer;
mod trust_ad;
mod validate;

use std::fmt;

use hickory_resolver::proto::rr::RecordType;
use serde::Deserialize;

use super::{DnsConfig, DnsError, Resolver, absolute_name};
use trust_ad::Stub;

pub use answer::{Answer, Found, MAX_CNAME_CHAIN};
pub(crate) use trust_ad::interpret_response;
pub use trust_ad::{EDNS_PAYLOAD, MAX_MESSAGE};
pub use validate::{MAX_TRUST_ANCHOR_FILE, parse_trust_anchors};

/// How DNSSEC status is established.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DnssecMode {
    /// Trust the AD bit of validating nameservers.
    #[default]
    TrustAd,
    /// Validate in process.
    Validate,
}

impl DnssecMode {
    pub fn as_str(self) -> &'static str {
        match self {
            DnssecMode::TrustAd => "trust-ad",
            DnssecMode::Validate => "validate",
        }
    }
}

impl fmt::Display for DnssecMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a lookup gave no answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecureError {
    /// DNSSEC validation failed.
    #[error("DNSSEC validation failed (bogus): {0}")]
    Bogus(String),
    /// No usable answer (SERVFAIL, REFUSED, timeout, network error).
    #[error("lookup failed: {0}")]
    Failed(String),
    /// The name cannot be put in a query.
    #[error("not a name that can be looked up: {0}")]
    BadName(String),
}

/// Lookups that know whether their answers are DNSSEC-validated.
pub struct SecureResolver {
    mode: DnssecMode,
    validation: Validation,
}

/// Where DNSSEC validation happens: in the nameservers, whose AD bit is
/// trusted, or here.
enum Validation {
    /// `trust-ad`: a stub reads the nameservers' AD bit.
    TrustAd(Stub),
    /// `validate`: a resolver that validates in process.
    Validate(Box<Resolver>),
}

impl fmt::Debug for SecureResolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("SecureResolver");
        d.field("mode", &self.mode);
        if let Validation::TrustAd(s) = &self.validation {
            d.field("nameservers", &s.servers());
        }
        d.finish_non_exhaustive()
    }
}

impl SecureResolver {
    /// Build from a `[dns]` section. In `validate` mode this reads the
    /// trust anchor file; like [`super::build_resolver`] it spawns nothing
    /// until the first lookup.
    pub fn new(config: &DnsConfig) -> Result<SecureResolver, DnsError> {
        let validation = match config.dnssec {
            DnssecMode::TrustAd => Validation::TrustAd(Stub::new(config)?),
            DnssecMode::Validate => Validation::Validate(Box::new(validate::build(config)?)),
        };
        Ok(SecureResolver {
            mode: config.dnssec,
            validation,
        })
    }

    pub fn mode(&self) -> DnssecMode {
        self.mode
    }

    /// Look up records of one type at `name`.
    pub async fn lookup(&self, name: &str, rtype: RecordType) -> Result<Answer, SecureError> {
        let qname = absolute_name(name).map_err(|e| SecureError::BadName(e.to_string()))?;
        match &self.validation {
            Validation::TrustAd(stub) => stub.lookup(&qname, rtype).await,
            Validation::Validate(resolver) => validate::lookup(resolver, &qname, rtype).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mode_words() {
        #[derive(Deserialize)]
        struct W {
            m: DnssecMode,
        }
        assert_eq!(
            toml::from_str::<W>("m = \"trust-ad\"").unwrap().m,
            DnssecMode::TrustAd
        );
        assert_eq!(
            toml::from_str::<W>("m = \"validate\"").unwrap().m,
            DnssecMode::Validate
        );
        assert!(toml::from_str::<W>("m = \"yes\"").is_err());
    }
}
