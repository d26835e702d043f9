//! `validate`: hickory-resolver validates every answer in process, from
//! the root's keys or from the DNSKEY records of a trust anchor file, and
//! the DNSSEC proof of the records used decides whether it is secure.

use std::sync::Arc;

use hickory_resolver::lookup::Lookup;
use hickory_resolver::net::{DnsError as HickoryDnsError, NetError};
use hickory_resolver::proto::dnssec::{DnssecSummary, TrustAnchors};
use hickory_resolver::proto::op::ResponseCode;
use hickory_resolver::proto::rr::{Name, Record, RecordType};

use super::SecureError;
use super::answer::{Answer, Found, follow_chain, negative_ttl, rcode_text};
use crate::dns::{DnsConfig, DnsError, Resolver, name_text, resolver_builder};

/// The validating resolver for a `[dns]` section; reads the trust anchor
/// file if there is one.
pub(super) fn build(config: &DnsConfig) -> Result<Resolver, DnsError> {
    let mut builder = resolver_builder(config)?;
    let opts = builder.options_mut();
    opts.validate = true;
    opts.preserve_intermediates = true;
    let anchors = match &config.trust_anchor {
        Some(path) => std::fs::read_to_string(path)
            .map_err(|e| e.to_string())
            .and_then(|text| parse_trust_anchors(&text))
            .map_err(|e| DnsError::TrustAnchor(format!("{}: {e}", path.display())))?,
        None => TrustAnchors::default(),
    };
    let builder = builder.with_trust_anchor(Arc::new(anchors));
    builder.build().map_err(|e| DnsError::Build(e.to_string()))
}

/// Look up records of one type at `qname`; the answer is secure when
/// every record used validates.
pub(super) async fn lookup(
    resolver: &Resolver,
    qname: &Name,
    rtype: RecordType,
) -> Result<Answer, SecureError> {
    let result = resolver.lookup(qname.clone(), rtype).await;
    interpret_validated(result, qname, rtype)
}

/// Longest trust anchor file read.
pub const MAX_TRUST_ANCHOR_FILE: usize = 64 * 1024;

/// Parse a trust anchor file: DNSKEY records in zone-file syntax, one per
/// line, as `keymgr ZONE dnskey`, `dig DNSKEY` or unbound's key files
/// write them (the class may be left out; `;` starts a comment). DS
/// records are refused with a clear message: a DNSKEY is needed here.
pub fn parse_trust_anchors(text: &str) -> Result<TrustAnchors, String> {
    if text.len() > MAX_TRUST_ANCHOR_FILE {
        return Err(format!(
            "longer than {MAX_TRUST_ANCHOR_FILE} bytes; not a trust anchor file"
        ));
    }
    let mut normalised = String::new();
    let mut keys = 0usize;
    for (n, raw) in text.lines().enumerate() {
        let line = raw.split(';').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let tokens: Vec<&str> = line.split_whitespace().collect();
        let Some(ty) = tokens
            .iter()
            .position(|t| t.eq_ignore_ascii_case("DNSKEY") || t.eq_ignore_ascii_case("DS"))
        else {
            return Err(format!("line {}: not a DNSKEY record", n + 1));
        };
        if tokens[ty].eq_ignore_ascii_case("DS") {
            return Err(format!(
                "line {}: a DS record; give the zone's DNSKEY record instead",
                n + 1
            ));
        }
        let has_class = tokens[..ty].iter().any(|t| t.eq_ignore_ascii_case("IN"));
        for (i, t) in tokens.iter().enumerate() {
            if i == ty && !has_class {
                normalised.push_str("IN ");
            }
            normalised.push_str(t);
            normalised.push(' ');
        }
        normalised.push('\n');
        keys += 1;
    }
    if keys == 0 {
        return Err("no DNSKEY record".into());
    }
    normalised
        .parse::<TrustAnchors>()
        .map_err(|e| e.to_string())
}

fn interpret_validated(
    result: Result<Lookup, NetError>,
    qname: &Name,
    rtype: RecordType,
) -> Result<Answer, SecureError> {
    match result {
        Ok(lookup) => {
            let answers = lookup.answers();
            let (chain, cnames) = follow_chain(answers, qname, rtype)?;
            let target = chain.last().expect("chain starts with the query name");
            let matching: Vec<&Record> = answers
                .iter()
                .filter(|r| &r.name == target && r.record_type() == rtype)
                .collect();
            let used = cnames.iter().copied().chain(matching.iter().copied());
            let secure = DnssecSummary::from_records(used) == DnssecSummary::Secure;
            let ttl = cnames
                .iter()
                .chain(matching.iter())
                .map(|r| r.ttl)
                .min()
                .unwrap_or(0);
            let found = if matching.is_empty() {
                Found::NoData
            } else {
                Found::Records(matching.iter().map(|r| r.data.clone()).collect())
            };
            Ok(Answer {
                chain: chain.iter().map(name_text).collect(),
                found,
                secure,
                ttl,
            })
        }
        Err(NetError::Dns(HickoryDnsError::NoRecordsFound(nr))) => {
            let found = if nr.response_code == ResponseCode::NXDomain {
                Found::NxDomain
            } else {
                Found::NoData
            };
            let secure = nr.authorities.as_ref().is_some_and(|a| {
                !a.is_empty() && DnssecSummary::from_records(a.iter()) == DnssecSummary::Secure
            });
            let ttl = nr
                .soa
                .as_ref()
                .map(|s| s.ttl.min(s.data.minimum))
                .or(nr.negative_ttl)
                .unwrap_or(0);
            Ok(Answer {
                chain: vec![name_text(qname)],
                found,
                secure,
                ttl,
            })
        }
        Err(NetError::Dns(HickoryDnsError::Nsec {
            response, proof, ..
        })) => {
            if proof.is_bogus() {
                return Err(SecureError::Bogus(format!(
                    "the denial of {} {rtype} does not validate",
                    name_text(qname)
                )));
            }
            let found = if response.response_code == ResponseCode::NXDomain {
                Found::NxDomain
            } else {
                Found::NoData
            };
            Ok(Answer {
                chain: vec![name_text(qname)],
                found,
                secure: false,
                ttl: negative_ttl(&response.authorities),
            })
        }
        Err(NetError::Dns(HickoryDnsError::DnssecBogus)) => Err(SecureError::Bogus(format!(
            "the answer for {} {rtype} does not validate",
            name_text(qname)
        ))),
        Err(NetError::Dns(HickoryDnsError::ResponseCode(code))) => Err(SecureError::Failed(
            format!("the nameserver answered {}", rcode_text(code)),
        )),
        Err(NetError::Timeout) => Err(SecureError::Failed("no answer (timed out)".into())),
        Err(e) => Err(SecureError::Failed(e.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str =
        "gEkLGJDCJJnxSq2+ZgGmqMPG5QQ3O0uxuhilY3fKS0Z+G9M//sT2Dm2q/yRQv1/SYKCZFl4Su0tz55m+EHrjFg==";

    #[test]
    fn trust_anchor_files() {
        // keymgr (no class), dig (TTL and class), comments and blank lines.
        for text in [
            format!("dane.test. DNSKEY 257 3 13 {KEY}\n"),
            format!("; comment\n\ndane.test. 3600 IN DNSKEY 257 3 13 {KEY} ; key\n"),
            format!("dane.test. IN DNSKEY 257 3 13 {KEY}\n"),
        ] {
            assert!(parse_trust_anchors(&text).is_ok(), "{text}");
        }
        for (text, want) in [
            (String::new(), "no DNSKEY record"),
            ("; only a comment\n".to_string(), "no DNSKEY record"),
            (
                "dane.test. DS 46752 13 2 9c18\n".to_string(),
                "line 1: a DS record",
            ),
            (
                "dane.test. A 192.0.2.1\n".to_string(),
                "line 1: not a DNSKEY",
            ),
            (
                "x".repeat(MAX_TRUST_ANCHOR_FILE + 1),
                "longer than 65536 bytes",
            ),
        ] {
            let e = parse_trust_anchors(&text).err().unwrap();
            assert!(e.contains(want), "{e}");
        }
        // Exactly at the size limit is read.
        let key_line = format!("dane.test. DNSKEY 257 3 13 {KEY}\n");
        let padded = format!(
            "{key_line}{}\n",
            ";".repeat(MAX_TRUST_ANCHOR_FILE - key_line.len() - 1)
        );
        assert_eq!(padded.len(), MAX_TRUST_ANCHOR_FILE);
        assert!(parse_trust_anchors(&padded).is_ok());
    }
}
