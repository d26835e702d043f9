//! One domain's DANE assessment (RFC 7672 section 2): the DNSSEC state of
//! its MX RRset, and for each MX host the DNSSEC state of its addresses and
//! its `_25._tcp` TLSA records.
//!
//! - MX RRset not validated (or no MX and that answer not validated):
//!   DANE does not apply.
//! - Validated "no MX": the domain itself is the implicit MX host.
//! - Null MX (RFC 7505): the domain takes no mail; no policy.
//! - Per host: TLSA records are only looked for when the host's address
//!   records are validated (RFC 7672 section 2.2.2). A host name that is a
//!   CNAME is looked up at the fully expanded name first, then at the name
//!   in the MX record (section 2.2.3).
//! - Usable TLSA records: usage DANE-TA(2) or DANE-EE(3), selector 0 or 1,
//!   matching type 0, 1 or 2 with data of the right length (section 3.1).
//!   Usages 0 and 1 are not used for SMTP.
//!
//! Every host with an address has usable TLSA: `dane-only`. Some do:
//! `dane` (Postfix uses TLSA where there is some). None: no policy. A
//! failed or bogus lookup is never "no TLSA": when no host is known to
//! have usable TLSA records, the whole assessment failed.

use std::sync::Arc;

use hickory_resolver::proto::rr::{RData, RecordType};
use serde::{Deserialize, Serialize};
use tokio::task::JoinSet;

use crate::dns::secure::{Answer, Found, SecureError, SecureResolver};
use crate::engine::decision::Level;

/// TLSA records described per host in an assessment at most (the rest
/// are counted).
pub const MAX_TLSA_SHOWN: usize = 8;
/// Hex digits of certificate association data kept per TLSA record: a
/// SHA-256 or SHA-512 digest whole (TLS reports carry the records), a
/// full certificate or key (matching type 0) cut with `...`.
pub const TLSA_DATA_SHOWN: usize = 128;

mod describe;

/// What the MX lookup gave.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "kebab-case")]
pub enum MxState {
    /// A validated MX RRset.
    Secure { ttl: u32 },
    /// A validated answer without MX records: the domain is its own MX.
    Implicit { ttl: u32 },
    /// Only `0 .` (RFC 7505).
    NullMx,
    /// The MX answer (or its absence) is not validated.
    Insecure,
    /// The domain does not exist.
    NxDomain { secure: bool },
    /// The name cannot be looked up.
    BadName { problem: String },
    /// Validation failed.
    Bogus { problem: String },
    /// No usable answer.
    Failed { problem: String },
}

/// What the address lookups of a host gave.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "kebab-case")]
pub enum AddressState {
    /// Validated addresses; `via` is the CNAME-expanded name, if any.
    Secure {
        count: usize,
        via: Option<String>,
    },
    /// Addresses, not all validated.
    Insecure {
        count: usize,
    },
    /// No addresses at all.
    None,
    Bogus {
        problem: String,
    },
    Failed {
        problem: String,
    },
}

/// One TLSA record, shortened for display.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TlsaRecord {
    pub usage: u8,
    pub selector: u8,
    pub matching: u8,
    /// The start of the certificate association data, in hex.
    pub data: String,
    pub usable: bool,
}

/// What the TLSA lookup of a host gave.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "kebab-case")]
pub enum TlsaState {
    /// Not looked up: the addresses are not validated (or there are none).
    NotLooked,
    /// Validated TLSA records at `name`; `records` are the first
    /// [`MAX_TLSA_SHOWN`], `total` counts all, `usable` the usable ones.
    Secure {
        name: String,
        records: Vec<TlsaRecord>,
        total: usize,
        usable: usize,
    },
    /// TLSA records that are not validated.
    Insecure {
        name: String,
    },
    /// No TLSA records at any name tried; `secure` when that denial is
    /// validated.
    Absent {
        names: Vec<String>,
        secure: bool,
    },
    Bogus {
        name: String,
        problem: String,
    },
    Failed {
        name: String,
        problem: String,
    },
}

/// One MX host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MxHost {
    /// MX preference; absent for the implicit MX.
    pub preference: Option<u16>,
    pub host: String,
    pub addresses: AddressState,
    pub tlsa: TlsaState,
}

impl MxHost {
    /// Has usable TLSA records under DNSSEC.
    pub fn usable(&self) -> bool {
        matches!(self.tlsa, TlsaState::Secure { usable, .. } if usable > 0)
    }

    /// A lookup for this host failed or did not validate.
    pub fn failure(&self) -> Option<String> {
        let p = match (&self.addresses, &self.tlsa) {
            (AddressState::Bogus { problem }, _) => format!("addresses bogus: {problem}"),
            (AddressState::Failed { problem }, _) => format!("addresses: {problem}"),
            (_, TlsaState::Bogus { name, problem }) => format!("TLSA {name} bogus: {problem}"),
            (_, TlsaState::Failed { name, problem }) => format!("TLSA {name}: {problem}"),
            _ => return None,
        };
        Some(format!("{}: {p}", self.host))
    }

    /// Whether the host counts for the verdict: it has addresses, or its
    /// lookups failed.
    fn counts(&self) -> bool {
        !matches!(self.addresses, AddressState::None)
    }
}

/// The verdict.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "kebab-case")]
pub enum Outcome {
    /// `dane` or `dane-only`.
    Policy { level: Level, reason: String },
    /// DANE does not apply; the next source decides.
    NoPolicy { reason: String },
    /// Lookups failed or did not validate, and nothing known makes up for
    /// it: the fail policy applies.
    Failed { reason: String },
}

/// A domain's assessment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Assessment {
    pub domain: String,
    pub mx: MxState,
    pub hosts: Vec<MxHost>,
    /// MX hosts beyond `max_mx`, not looked at.
    pub skipped: usize,
    /// The smallest TTL of the answers used, in seconds (0: none said).
    pub ttl: u32,
    pub outcome: Outcome,
}

impl Assessment {
    fn without_hosts(domain: &str, mx: MxState, ttl: u32, outcome: Outcome) -> Assessment {
        Assessment {
            domain: domain.to_string(),
            mx,
            hosts: Vec::new(),
            skipped: 0,
            ttl,
            outcome,
        }
    }
}

/// Assess `domain` (normalised: lower case, A-labels, no trailing dot),
/// looking at the `max_mx` most preferred MX hosts.
pub async fn assess(resolver: &Arc<SecureResolver>, domain: &str, max_mx: usize) -> Assessment {
    let no = |reason: String| Outcome::NoPolicy { reason };
    let mx = match resolver.lookup(domain, RecordType::MX).await {
        Ok(a) => a,
        Err(SecureError::Bogus(problem)) => {
            let reason = format!("the MX lookup of {domain} does not validate: {problem}");
            return Assessment::without_hosts(
                domain,
                MxState::Bogus { problem },
                0,
                Outcome::Failed { reason },
            );
        }
        Err(SecureError::Failed(problem)) => {
            let reason = format!("the MX lookup of {domain} failed: {problem}");
            return Assessment::without_hosts(
                domain,
                MxState::Failed { problem },
                0,
                Outcome::Failed { reason },
            );
        }
        Err(SecureError::BadName(problem)) => {
            let reason = format!("{domain} cannot be looked up: {problem}");
            return Assessment::without_hosts(domain, MxState::BadName { problem }, 0, no(reason));
        }
    };
    let ttl = mx.ttl;
    if let Found::NxDomain = mx.found {
        return Assessment::without_hosts(
            domain,
            MxState::NxDomain { secure: mx.secure },
            ttl,
            no(format!("{domain} does not exist")),
        );
    }
    if !mx.secure {
        let what = match mx.found {
            Found::Records(_) => "the MX records are",
            _ => "the answer without MX records is",
        };
        return Assessment::without_hosts(
            domain,
            MxState::Insecure,
            ttl,
            no(format!(
                "{what} not DNSSEC-validated: DANE does not apply to {domain}"
            )),
        );
    }
    let (state, mut hosts) = match &mx.found {
        Found::Records(records) => {
            let mut hosts: Vec<(u16, String)> = Vec::new();
            let mut null = false;
            for r in records {
                if let RData::MX(m) = r {
                    if m.exchange.is_root() {
                        null = true;
                    } else {
                        let h = (m.preference, crate::dns::name_text(&m.exchange));
                        if !hosts.contains(&h) {
                            hosts.push(h);
                        }
                    }
                }
            }
            if hosts.is_empty() {
                let state = if null {
                    MxState::NullMx
                } else {
                    MxState::Insecure
                };
                let reason = if null {
                    format!("{domain} publishes a null MX (RFC 7505): it accepts no mail")
                } else {
                    format!("{domain}: the MX answer holds no MX records")
                };
                return Assessment::without_hosts(domain, state, ttl, no(reason));
            }
            hosts.sort();
            let hosts = hosts.into_iter().map(|(p, h)| (Some(p), h)).collect();
            (MxState::Secure { ttl }, hosts)
        }
        _ => (MxState::Implicit { ttl }, vec![(None, domain.to_string())]),
    };
    let skipped = hosts.len().saturating_sub(max_mx.max(1));
    hosts.truncate(max_mx.max(1));

    let mut set = JoinSet::new();
    for (i, (pref, host)) in hosts.into_iter().enumerate() {
        let resolver = resolver.clone();
        set.spawn(async move { (i, assess_host(&resolver, pref, host).await) });
    }
    let mut results: Vec<(usize, (MxHost, u32))> = Vec::new();
    while let Some(joined) = set.join_next().await {
        match joined {
            Ok(r) => results.push(r),
            Err(e) => tracing::error!(domain, "DANE host lookup task failed: {e}"),
        }
    }
    results.sort_by_key(|r| r.0);
    let ttl = results.iter().map(|r| r.1.1).fold(ttl, u32::min);
    let hosts: Vec<MxHost> = results.into_iter().map(|r| r.1.0).collect();
    let outcome = verdict(domain, &hosts, skipped);
    Assessment {
        domain: domain.to_string(),
        mx: state,
        hosts,
        skipped,
        ttl,
        outcome,
    }
}

/// The verdict over the hosts looked at.
pub(crate) fn verdict(domain: &str, hosts: &[MxHost], skipped: usize) -> Outcome {
    let counted: Vec<&MxHost> = hosts.iter().filter(|h| h.counts()).collect();
    let usable = counted.iter().filter(|h| h.usable()).count();
    let failures: Vec<String> = counted.iter().filter_map(|h| h.failure()).collect();
    if counted.is_empty() {
        return Outcome::NoPolicy {
            reason: format!("no MX host of {domain} has an address"),
        };
    }
    if usable > 0 {
        let all = usable == counted.len() && skipped == 0;
        let (level, reason) = if all {
            (
                Level::DaneOnly,
                format!(
                    "every MX host of {domain} has usable TLSA records under DNSSEC ({usable} of {usable})"
                ),
            )
        } else {
            let mut r = format!(
                "{usable} of {} MX hosts of {domain} have usable TLSA records under DNSSEC",
                counted.len() + skipped
            );
            if !failures.is_empty() {
                r += &format!("; lookups failed for {}", failures.join("; "));
            }
            (Level::Dane, r)
        };
        return Outcome::Policy { level, reason };
    }
    if !failures.is_empty() {
        return Outcome::Failed {
            reason: format!("DANE lookups failed for {}", failures.join("; ")),
        };
    }
    Outcome::NoPolicy {
        reason: format!("no MX host of {domain} has usable TLSA records under DNSSEC"),
    }
}

/// Addresses, then TLSA records, of one host. Returns the host and the
/// smallest TTL seen.
async fn assess_host(
    resolver: &SecureResolver,
    preference: Option<u16>,
    host: String,
) -> (MxHost, u32) {
    let (a, aaaa) = tokio::join!(
        resolver.lookup(&host, RecordType::A),
        resolver.lookup(&host, RecordType::AAAA)
    );
    let mut ttl = u32::MAX;
    let mk = |addresses, tlsa, ttl: u32| {
        (
            MxHost {
                preference,
                host: host.clone(),
                addresses,
                tlsa,
            },
            ttl,
        )
    };
    let (a, aaaa) = match (a, aaaa) {
        (Err(SecureError::Bogus(p)), _) | (_, Err(SecureError::Bogus(p))) => {
            return mk(AddressState::Bogus { problem: p }, TlsaState::NotLooked, 0);
        }
        (Err(e), _) | (_, Err(e)) => {
            return mk(
                AddressState::Failed {
                    problem: e.to_string(),
                },
                TlsaState::NotLooked,
                0,
            );
        }
        (Ok(a), Ok(b)) => (a, b),
    };
    let count = a.records().len() + aaaa.records().len();
    for ans in [&a, &aaaa] {
        ttl = ttl.min(ans.ttl);
    }
    if count == 0 {
        return mk(AddressState::None, TlsaState::NotLooked, ttl);
    }
    if !(a.secure && aaaa.secure) {
        return mk(AddressState::Insecure { count }, TlsaState::NotLooked, ttl);
    }
    // The expanded name, from whichever answer has records.
    let with_records: &Answer = if a.records().is_empty() { &aaaa } else { &a };
    let via = with_records
        .aliased()
        .then(|| with_records.target().to_string());
    let mut names = Vec::new();
    if let Some(v) = &via {
        names.push(format!("_25._tcp.{v}"));
    }
    names.push(format!("_25._tcp.{host}"));
    let addresses = AddressState::Secure { count, via };
    let mut tried = Vec::new();
    let mut all_secure = true;
    for name in names {
        tried.push(name.clone());
        match resolver.lookup(&name, RecordType::TLSA).await {
            Err(SecureError::Bogus(problem)) => {
                return mk(addresses, TlsaState::Bogus { name, problem }, ttl);
            }
            Err(e) => {
                let problem = match e {
                    SecureError::Failed(p) | SecureError::BadName(p) => p,
                    SecureError::Bogus(_) => unreachable!("handled above"),
                };
                return mk(addresses, TlsaState::Failed { name, problem }, ttl);
            }
            Ok(ans) => {
                ttl = ttl.min(ans.ttl);
                match &ans.found {
                    Found::Records(records) if !ans.secure => {
                        let _ = records;
                        return mk(addresses, TlsaState::Insecure { name }, ttl);
                    }
                    Found::Records(records) => {
                        let all: Vec<TlsaRecord> = records.iter().filter_map(tlsa_record).collect();
                        let usable = all.iter().filter(|r| r.usable).count();
                        let total = all.len();
                        let mut shown = all;
                        // Usable records first, then the rest.
                        shown.sort_by_key(|r| !r.usable);
                        shown.truncate(MAX_TLSA_SHOWN);
                        let tlsa = TlsaState::Secure {
                            name: ans.target().to_string(),
                            records: shown,
                            total,
                            usable,
                        };
                        return mk(addresses, tlsa, ttl);
                    }
                    Found::NoData | Found::NxDomain => {
                        all_secure &= ans.secure;
                    }
                }
            }
        }
    }
    mk(
        addresses,
        TlsaState::Absent {
            names: tried,
            secure: all_secure,
        },
        ttl,
    )
}

/// A TLSA record and whether it is usable for SMTP (RFC 7672 section 3.1).
pub(crate) fn tlsa_record(r: &RData) -> Option<TlsaRecord> {
    let RData::TLSA(t) = r else {
        return None;
    };
    let usage = u8::from(t.cert_usage);
    let selector = u8::from(t.selector);
    let matching = u8::from(t.matching);
    let len_ok = match matching {
        0 => !t.cert_data.is_empty(),
        1 => t.cert_data.len() == 32,
        2 => t.cert_data.len() == 64,
        _ => false,
    };
    let usable = matches!(usage, 2 | 3) && matches!(selector, 0 | 1) && len_ok;
    let mut data: String = t
        .cert_data
        .iter()
        .take(TLSA_DATA_SHOWN / 2)
        .map(|b| format!("{b:02x}"))
        .collect();
    if t.cert_data.len() > TLSA_DATA_SHOWN / 2 {
        data.push_str("...");
    }
    Some(TlsaRecord {
        usage,
        selector,
        matching,
        data,
        usable,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_resolver::proto::rr::rdata::TLSA;
    use hickory_resolver::proto::rr::rdata::tlsa::{CertUsage, Matching, Selector};

    fn tlsa(u: u8, s: u8, m: u8, len: usize) -> RData {
        RData::TLSA(TLSA::new(
            CertUsage::from(u),
            Selector::from(s),
            Matching::from(m),
            vec![0xab; len],
        ))
    }

    #[test]
    fn usable_tlsa_records() {
        for (u, s, m, len, want) in [
            (3, 1, 1, 32, true),
            (2, 0, 1, 32, true),
            (3, 0, 0, 300, true),
            (3, 1, 2, 64, true),
            // Exact digest lengths only.
            (3, 1, 1, 31, false),
            (3, 1, 1, 33, false),
            (3, 1, 2, 32, false),
            (3, 1, 0, 0, false),
            // PKIX usages are not for SMTP; unknown selectors and types.
            (0, 1, 1, 32, false),
            (1, 1, 1, 32, false),
            (4, 1, 1, 32, false),
            (3, 2, 1, 32, false),
            (3, 1, 3, 32, false),
            // Exact boundaries of every field (RFC 6698 section 2.1,
            // RFC 7671 and 7672 section 3.1: PKIX-TA(0) and PKIX-EE(1)
            // are unusable for SMTP, private values (255) are unusable).
            (2, 1, 1, 32, true),
            (2, 1, 2, 64, true),
            (3, 0, 2, 64, true),
            (3, 1, 0, 1, true),
            (2, 0, 0, 1, true),
            (3, 1, 1, 0, false),
            (3, 1, 1, 64, false),
            (3, 1, 2, 63, false),
            (3, 1, 2, 65, false),
            (2, 1, 0, 0, false),
            (255, 1, 1, 32, false),
            (3, 255, 1, 32, false),
            (3, 1, 255, 32, false),
        ] {
            let r = tlsa_record(&tlsa(u, s, m, len)).unwrap();
            assert_eq!(r.usable, want, "{u} {s} {m} len {len}");
        }
        // Digests whole (a TLS report carries them); a full key or
        // certificate cut at 64 bytes.
        let r = tlsa_record(&tlsa(3, 1, 1, 32)).unwrap();
        assert_eq!(r.to_string(), format!("3 1 1 {}", "ab".repeat(32)));
        let r = tlsa_record(&tlsa(3, 1, 2, 64)).unwrap();
        assert_eq!(r.to_string(), format!("3 1 2 {}", "ab".repeat(64)));
        let r = tlsa_record(&tlsa(3, 1, 0, 65)).unwrap();
        assert_eq!(r.to_string(), format!("3 1 0 {}...", "ab".repeat(64)));
    }

    fn host(addresses: AddressState, tlsa: TlsaState) -> MxHost {
        MxHost {
            preference: Some(10),
            host: "mx.example".into(),
            addresses,
            tlsa,
        }
    }

    fn usable() -> MxHost {
        host(
            AddressState::Secure {
                count: 1,
                via: None,
            },
            TlsaState::Secure {
                name: "_25._tcp.mx.example".into(),
                records: Vec::new(),
                total: 1,
                usable: 1,
            },
        )
    }

    fn absent() -> MxHost {
        host(
            AddressState::Secure {
                count: 1,
                via: None,
            },
            TlsaState::Absent {
                names: vec!["_25._tcp.mx.example".into()],
                secure: true,
            },
        )
    }

    fn failed() -> MxHost {
        host(
            AddressState::Secure {
                count: 1,
                via: None,
            },
            TlsaState::Failed {
                name: "_25._tcp.mx.example".into(),
                problem: "timeout".into(),
            },
        )
    }

    fn no_address() -> MxHost {
        host(AddressState::None, TlsaState::NotLooked)
    }

    fn level(o: &Outcome) -> Option<Level> {
        match o {
            Outcome::Policy { level, .. } => Some(*level),
            _ => None,
        }
    }

    #[test]
    fn verdicts() {
        let d = "example";
        assert_eq!(
            level(&verdict(d, &[usable(), usable()], 0)),
            Some(Level::DaneOnly)
        );
        assert_eq!(
            level(&verdict(d, &[usable(), absent()], 0)),
            Some(Level::Dane)
        );
        // Hosts not looked at keep it from dane-only.
        assert_eq!(level(&verdict(d, &[usable()], 1)), Some(Level::Dane));
        // A host without addresses does not count.
        assert_eq!(
            level(&verdict(d, &[usable(), no_address()], 0)),
            Some(Level::DaneOnly)
        );
        // A failure next to a usable host: dane, and the reason says so.
        let o = verdict(d, &[usable(), failed()], 0);
        assert_eq!(level(&o), Some(Level::Dane));
        let Outcome::Policy { reason, .. } = o else {
            unreachable!()
        };
        assert!(
            reason.contains("lookups failed for mx.example: TLSA"),
            "{reason}"
        );
        // A failure with nothing usable is a failure, never "no TLSA".
        assert!(matches!(
            verdict(d, &[absent(), failed()], 0),
            Outcome::Failed { .. }
        ));
        assert!(matches!(
            verdict(d, &[absent()], 0),
            Outcome::NoPolicy { .. }
        ));
        assert!(matches!(
            verdict(d, &[no_address()], 0),
            Outcome::NoPolicy { .. }
        ));
        let insecure = host(AddressState::Insecure { count: 2 }, TlsaState::NotLooked);
        assert!(matches!(
            verdict(d, &[insecure], 0),
            Outcome::NoPolicy { .. }
        ));
    }

    #[test]
    fn assessment_round_trips_through_json() {
        let a = Assessment {
            domain: "example".into(),
            mx: MxState::Secure { ttl: 300 },
            hosts: vec![usable(), failed(), no_address()],
            skipped: 2,
            ttl: 300,
            outcome: Outcome::Policy {
                level: Level::Dane,
                reason: "r".into(),
            },
        };
        let text = serde_json::to_string(&a).unwrap();
        assert_eq!(serde_json::from_str::<Assessment>(&text).unwrap(), a);
        let lines = a.describe();
        assert_eq!(lines.len(), 5, "{lines:?}");
        assert_eq!(lines[0], "example: MX RRset DNSSEC-validated");
        assert!(lines[1].starts_with("MX 10 mx.example: 1 address(es), DNSSEC-validated; TLSA at"));
        assert!(lines[4].contains("2 more MX host(s)"));
    }
}
