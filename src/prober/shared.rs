//! The prober's knowledge, shared by a fleet (`[shared]`): what a probe
//! found about a domain's inbound TLS (the capability early refusals go
//! by, with when it was probed) is published (key `PREFIX prober:DOMAIN`,
//! kept for this host's `prober.ttl` from the probe); a host with nothing
//! of its own asks the store before it probes, in the background probe a
//! miss schedules (never on a request's path).
//!
//! Early refusal refuses mail, so a shared entry is held to more than a
//! host's own probe (fail closed: knowledge from elsewhere must never
//! refuse what this host would have accepted on what it knows itself):
//! - it is taken only when well-formed (bounded texts and names, for
//!   this domain) and fresh by this host's own `prober.ttl` (probed not
//!   longer ago, and not ahead of this host's clock by more than 5
//!   minutes); it expires when this host's own probe of that time would;
//! - "STARTTLS, certificate not verified" depends on the CAs the probing
//!   host trusts, which may not be this host's Postfix's: from the store
//!   it is no knowledge (`Unknown`, never a refusal);
//! - "no STARTTLS" is a fact about the receiving servers, the same from
//!   every host: a fresh entry may refuse as this host's own probe would;
//! - "verified" only prevents a refusal;
//! - "unknown" is not shared (each host probes for itself).

use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use super::{DomainProbe, Inner};
use crate::cache::persist::{Entry, Kind};
use crate::engine::refusal::Capability;

/// How far ahead of this host's clock a shared probe time may be.
const CLOCK_LEEWAY: Duration = Duration::from_secs(300);
/// Longest detail text taken.
const MAX_DETAIL: usize = 1024;
/// Most certificate names taken.
const MAX_NAMES: usize = 64;
/// Longest certificate name taken.
const MAX_NAME: usize = 253;

/// What the store holds for a domain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct SharedProbe {
    pub domain: String,
    pub probed_at: SystemTime,
    pub capability: SharedCapability,
}

/// The capabilities that travel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub(super) enum SharedCapability {
    NoStarttls { detail: String },
    StarttlsUnverified { detail: String },
    StarttlsVerified { names: Vec<String> },
}

/// What of `cap` is published (`None`: nothing).
pub(super) fn to_shared(cap: &Capability) -> Option<SharedCapability> {
    match cap {
        Capability::NoStarttls { detail } => Some(SharedCapability::NoStarttls {
            detail: detail.clone(),
        }),
        Capability::StarttlsUnverified { detail } => Some(SharedCapability::StarttlsUnverified {
            detail: detail.clone(),
        }),
        Capability::StarttlsVerified { names } => Some(SharedCapability::StarttlsVerified {
            names: names.clone(),
        }),
        Capability::Unknown { .. } => None,
    }
}

/// What `s`, read for `domain`, tells this host at `now` (its own
/// `prober.ttl` is `ttl`), or why it tells nothing.
pub(super) fn usable(
    s: &SharedProbe,
    domain: &str,
    ttl: Duration,
    now: SystemTime,
) -> Result<Capability, String> {
    if s.domain != domain {
        return Err(format!(
            "the entry is for {:?}",
            crate::util::text::printable_ascii(&s.domain, 256)
        ));
    }
    if s.probed_at > now + CLOCK_LEEWAY {
        return Err("probed at a time ahead of this host's clock".into());
    }
    if now.duration_since(s.probed_at).unwrap_or(Duration::ZERO) >= ttl {
        return Err("older than prober.ttl".into());
    }
    let bounded = |d: &str| {
        if d.len() > MAX_DETAIL {
            Err(format!("a detail of {} bytes", d.len()))
        } else {
            Ok(crate::util::text::printable_ascii(d, MAX_DETAIL))
        }
    };
    Ok(match &s.capability {
        SharedCapability::NoStarttls { detail } => Capability::NoStarttls {
            detail: format!("{} (probed by another host of the fleet)", bounded(detail)?),
        },
        SharedCapability::StarttlsUnverified { detail } => Capability::Unknown {
            detail: format!(
                "{} (probed by another host of the fleet, whose trusted CAs may not be this \
                 host's: no refusal on it)",
                bounded(detail)?
            ),
        },
        SharedCapability::StarttlsVerified { names } => {
            if names.len() > MAX_NAMES
                || names.iter().any(|n| {
                    n.is_empty() || n.len() > MAX_NAME || !n.bytes().all(|b| b.is_ascii_graphic())
                })
            {
                return Err("certificate names out of bounds".into());
            }
            Capability::StarttlsVerified {
                names: names.clone(),
            }
        }
    })
}

impl Inner {
    /// Publish what this host's probe of `domain` found.
    pub(super) fn publish(&self, domain: &str, probe: &DomainProbe) {
        let Some(shared) = self.shared.get() else {
            return;
        };
        let cap = super::knowledge::capability(&probe.verdict(), probe);
        let Some(capability) = to_shared(&cap) else {
            return;
        };
        let s = SharedProbe {
            domain: domain.to_string(),
            probed_at: probe.probed_at,
            capability,
        };
        match Entry::new(
            Kind::Prober,
            domain,
            probe.probed_at,
            probe.probed_at + self.config.ttl,
            &s,
        ) {
            Ok(e) => shared.publish(&e),
            Err(e) => tracing::warn!(domain, error = %e, "cannot publish a probe's result"),
        }
    }

    /// The fleet's knowledge of `domain`, when usable: the capability and
    /// when it was probed.
    pub(super) async fn ask_shared(&self, domain: &str) -> Option<(Capability, SystemTime)> {
        let shared = self.shared.get()?;
        let entry = shared.fetch(Kind::Prober, domain).await?;
        let s = match entry.decode::<SharedProbe>() {
            Ok(s) => s,
            Err(e) => {
                shared.unusable(Kind::Prober, domain, &e.to_string());
                return None;
            }
        };
        match usable(&s, domain, self.config.ttl, SystemTime::now()) {
            Ok(cap) => {
                tracing::info!(domain, "probe result taken from the shared store");
                Some((cap, s.probed_at.min(SystemTime::now())))
            }
            Err(why) => {
                shared.unusable(Kind::Prober, domain, &why);
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shared(domain: &str, at: SystemTime, capability: SharedCapability) -> SharedProbe {
        SharedProbe {
            domain: domain.into(),
            probed_at: at,
            capability,
        }
    }

    #[test]
    fn only_fresh_well_formed_knowledge_is_taken_and_unverified_never_refuses() {
        let now = SystemTime::now();
        let ttl = Duration::from_secs(3600);
        let no = || SharedCapability::NoStarttls {
            detail: "mx1: no STARTTLS".into(),
        };
        assert!(matches!(
            usable(&shared("a.test", now, no()), "a.test", ttl, now),
            Ok(Capability::NoStarttls { .. })
        ));
        assert!(usable(&shared("b.test", now, no()), "a.test", ttl, now).is_err());
        // Exact boundaries of freshness and of the clock leeway.
        assert!(usable(&shared("a.test", now - ttl, no()), "a.test", ttl, now).is_err());
        let young = now - ttl + Duration::from_secs(1);
        assert!(usable(&shared("a.test", young, no()), "a.test", ttl, now).is_ok());
        let ahead = now + CLOCK_LEEWAY;
        assert!(usable(&shared("a.test", ahead, no()), "a.test", ttl, now).is_ok());
        let ahead = now + CLOCK_LEEWAY + Duration::from_secs(1);
        assert!(usable(&shared("a.test", ahead, no()), "a.test", ttl, now).is_err());
        // Another host's trust store: no refusal on it.
        let unverified = SharedCapability::StarttlsUnverified {
            detail: "untrusted issuer".into(),
        };
        assert!(matches!(
            usable(&shared("a.test", now, unverified), "a.test", ttl, now),
            Ok(Capability::Unknown { .. })
        ));
        // Bounds.
        let long = SharedCapability::NoStarttls {
            detail: "x".repeat(MAX_DETAIL + 1),
        };
        assert!(usable(&shared("a.test", now, long), "a.test", ttl, now).is_err());
        let at_limit = SharedCapability::NoStarttls {
            detail: "x".repeat(MAX_DETAIL),
        };
        assert!(usable(&shared("a.test", now, at_limit), "a.test", ttl, now).is_ok());
        let names = |n: usize, len: usize| SharedCapability::StarttlsVerified {
            names: vec!["n".repeat(len); n],
        };
        assert!(
            usable(
                &shared("a.test", now, names(MAX_NAMES, MAX_NAME)),
                "a.test",
                ttl,
                now
            )
            .is_ok()
        );
        assert!(
            usable(
                &shared("a.test", now, names(MAX_NAMES + 1, 5)),
                "a.test",
                ttl,
                now
            )
            .is_err()
        );
        assert!(
            usable(
                &shared("a.test", now, names(1, MAX_NAME + 1)),
                "a.test",
                ttl,
                now
            )
            .is_err()
        );
        assert!(usable(&shared("a.test", now, names(1, 0)), "a.test", ttl, now).is_err());
        // Unknown is not published.
        assert_eq!(
            to_shared(&Capability::Unknown {
                detail: "timeout".into()
            }),
            None
        );
    }
}
