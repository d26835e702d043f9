//! What a lookup answers ([`Found`], [`Answer`]) and the reading of
//! responses both modes share: CNAME chains, negative TTLs, response code
//! names.

use hickory_resolver::proto::op::ResponseCode;
use hickory_resolver::proto::rr::{Name, RData, Record, RecordType};

use super::SecureError;
use crate::dns::name_text;

/// CNAMEs followed in one answer at most.
pub const MAX_CNAME_CHAIN: usize = 8;

/// What a lookup found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Found {
    /// Records of the type asked for, at the end of the CNAME chain.
    Records(Vec<RData>),
    /// The name exists without records of that type.
    NoData,
    /// The name does not exist.
    NxDomain,
}

/// A DNSSEC-aware answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// The name asked for, then each CNAME target in turn (lower case, no
    /// trailing dot). The last one is the name the answer is about.
    pub chain: Vec<String>,
    pub found: Found,
    /// Whether the whole answer, CNAMEs included, is DNSSEC-validated.
    pub secure: bool,
    /// Seconds the answer may be kept (for negative answers the SOA's
    /// negative TTL; 0 when the answer did not say).
    pub ttl: u32,
}

impl Answer {
    /// The name the answer is about (the last CNAME target).
    pub fn target(&self) -> &str {
        self.chain.last().map_or("", String::as_str)
    }

    /// Whether a CNAME was followed.
    pub fn aliased(&self) -> bool {
        self.chain.len() > 1
    }

    /// The records found (none for negative answers).
    pub fn records(&self) -> &[RData] {
        match &self.found {
            Found::Records(r) => r,
            _ => &[],
        }
    }
}

/// Follow CNAMEs from `qname` through `records`. Returns the chain of
/// names (query name first) and the TTLs of the CNAME records used.
pub(super) fn follow_chain<'r>(
    records: &'r [Record],
    qname: &Name,
    rtype: RecordType,
) -> Result<(Vec<Name>, Vec<&'r Record>), SecureError> {
    let mut chain = vec![qname.clone()];
    let mut used = Vec::new();
    if rtype == RecordType::CNAME {
        return Ok((chain, used));
    }
    loop {
        let current = chain.last().expect("chain starts with the query name");
        let Some(r) = records
            .iter()
            .find(|r| &r.name == current && r.record_type() == RecordType::CNAME)
        else {
            return Ok((chain, used));
        };
        let RData::CNAME(target) = &r.data else {
            return Ok((chain, used));
        };
        if chain.contains(&target.0) {
            return Err(SecureError::Failed(format!(
                "CNAME loop at {}",
                name_text(&target.0)
            )));
        }
        if chain.len() > MAX_CNAME_CHAIN {
            return Err(SecureError::Failed(format!(
                "more than {MAX_CNAME_CHAIN} CNAMEs from {}",
                name_text(qname)
            )));
        }
        used.push(r);
        chain.push(target.0.clone());
    }
}

/// The negative TTL of a response: the SOA's TTL or minimum, whichever
/// is smaller (RFC 2308 section 5).
pub(super) fn negative_ttl(authorities: &[Record]) -> u32 {
    authorities
        .iter()
        .find_map(|r| match &r.data {
            RData::SOA(soa) => Some(r.ttl.min(soa.minimum)),
            _ => None,
        })
        .unwrap_or(0)
}

/// A response code as the RFCs spell it.
pub(super) fn rcode_text(code: ResponseCode) -> String {
    match code {
        ResponseCode::ServFail => "SERVFAIL".into(),
        ResponseCode::Refused => "REFUSED".into(),
        ResponseCode::FormErr => "FORMERR".into(),
        ResponseCode::NotImp => "NOTIMP".into(),
        other => format!("response code {}", u16::from(other)),
    }
}
