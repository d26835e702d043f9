//! What the policy sources read from the network: MTA-STS TXT records and
//! policy files, and DNS answers for DANE.

use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

use hickory_resolver::proto::op::Message;
use hickory_resolver::proto::rr::{Name, RecordType};

use super::Bytes;
use crate::dns::secure::{Found, MAX_CNAME_CHAIN, SecureError, interpret_response};
use crate::engine::Consulted;
use crate::engine::decision::Level;
use crate::sources::dane::assess::{
    self, AddressState, Assessment, MAX_TLSA_SHOWN, MxHost, MxState, Outcome, TlsaState,
};
use crate::sources::dane::{DaneConfig, DaneRecord, FailPolicy, LastDane, decide};
use crate::sources::mta_sts::policy::{self, AnswerStyle, MAX_AGE_LIMIT, MAX_MX_PATTERNS};
use crate::sources::mta_sts::record::{self, MAX_ID_LEN, MAX_RECORD_LEN, RecordError};

/// MTA-STS TXT records (the input cut at NUL bytes into the strings of
/// one answer): choosing and parsing never panics; an accepted record is
/// the one `v=STSv1` string, with a 1-32 character alphanumeric id;
/// errors quote at most the record limit.
pub fn check_mta_sts_record(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let records: Vec<String> = text.split('\0').map(str::to_string).collect();
    match record::select(&records) {
        Ok(r) => {
            assert!(!r.id.is_empty() && r.id.len() <= MAX_ID_LEN);
            assert!(r.id.bytes().all(|b| b.is_ascii_alphanumeric()));
            assert!(r.text.len() <= MAX_RECORD_LEN);
            let sts = |t: &&String| {
                t.strip_prefix("v=STSv1")
                    .is_some_and(|r| r.is_empty() || r.starts_with([';', ' ', '\t']))
            };
            assert_eq!(records.iter().filter(sts).count(), 1);
            assert_eq!(
                record::parse(&r.text),
                Ok(r.clone()),
                "parsing again differs"
            );
        }
        Err(RecordError::Invalid { text, .. }) => {
            assert!(text.chars().count() <= MAX_RECORD_LEN);
        }
        Err(_) => {}
    }
}

/// TLS-RPT TXT records (the input cut at NUL bytes into the strings of
/// one answer): choosing and parsing never panic; an accepted record is
/// the one string starting with `v=TLSRPTv1`, within `MAX_RECORD_LEN`,
/// with 1 to `MAX_RUA` destinations (addresses with no white space or
/// control character, `https:` URIs with a host), and parses again to the
/// same record; an `Invalid` error quotes at most `MAX_RECORD_LEN`
/// characters.
pub fn check_tlsrpt_record(data: &[u8]) {
    use crate::tlsrpt::record::{self as rpt, ReportUri};
    let text = String::from_utf8_lossy(data);
    let records: Vec<String> = text.split('\0').map(str::to_string).collect();
    match rpt::select(&records) {
        Ok(r) => {
            assert!(r.text.len() <= rpt::MAX_RECORD_LEN);
            assert!(!r.rua.is_empty() && r.rua.len() <= rpt::MAX_RUA);
            assert_eq!(records.iter().filter(|t| rpt::is_tlsrpt(t)).count(), 1);
            for u in &r.rua {
                match u {
                    ReportUri::Mailto(a) => {
                        assert!(a.contains('@'), "{a:?}");
                        assert!(!a.chars().any(|c| c.is_control() || c == ' '), "{a:?}");
                    }
                    ReportUri::Https(h) => {
                        assert!(h.get(..6).is_some_and(|p| p.eq_ignore_ascii_case("https:")));
                        assert!(!h.chars().any(char::is_whitespace), "{h:?}");
                    }
                }
            }
            assert_eq!(rpt::parse(&r.text), Ok(r.clone()), "parsing again differs");
        }
        Err(rpt::RecordError::Invalid { text, .. }) => {
            assert!(text.chars().count() <= rpt::MAX_RECORD_LEN);
        }
        Err(_) => {}
    }
}

/// MTA-STS policy files: parsing never panics; an accepted policy is
/// within its limits, its patterns normalised; it survives the cache's
/// JSON round trip; the Postfix answer made from it is one line of
/// printable text with balanced braces.
pub fn check_mta_sts_policy(data: &[u8]) {
    let Ok(p) = policy::parse(data) else {
        return;
    };
    assert!(p.max_age <= MAX_AGE_LIMIT);
    assert!(p.mx.len() <= MAX_MX_PATTERNS);
    for m in &p.mx {
        let name = m.strip_prefix("*.").unwrap_or(m);
        assert_eq!(
            crate::engine::key::normalize_domain(name).as_deref(),
            Ok(name),
            "pattern {m:?} not normalised"
        );
    }
    let json = serde_json::to_string(&p).expect("a policy serialises");
    let back: policy::StsPolicy = serde_json::from_str(&json).expect("a policy reads back");
    assert_eq!(back, p);
    for (servername, tlsrpt) in [(false, false), (true, true)] {
        let s = policy::postfix_secure("d.example", &p, AnswerStyle { servername, tlsrpt });
        assert!(s.starts_with("secure match="));
        assert!(
            !s.chars().any(char::is_control),
            "control character in {s:?}"
        );
        let mut depth = 0i32;
        for c in s.chars() {
            depth += match c {
                '{' => 1,
                '}' => -1,
                _ => 0,
            };
            assert!((0..=1).contains(&depth), "braces in {s:?}");
        }
        assert_eq!(depth, 0);
    }
}

/// One MX host whose TLSA lookup got `wire` as its response, the way the
/// assessment reads it: the DNS message decoded, the answer interpreted
/// (response code, CNAME chain, AD bit), the TLSA records judged.
fn host(i: usize, addresses: u8, wire: &[u8]) -> MxHost {
    let host = format!("mx{i}.d.example");
    let addresses = match addresses % 5 {
        0 => AddressState::Secure {
            count: 1,
            via: None,
        },
        1 => AddressState::Insecure { count: 2 },
        2 => AddressState::None,
        3 => AddressState::Bogus {
            problem: "fuzz".into(),
        },
        _ => AddressState::Failed {
            problem: "fuzz".into(),
        },
    };
    let name = format!("_25._tcp.{host}");
    let tlsa = if !matches!(addresses, AddressState::Secure { .. }) {
        TlsaState::NotLooked
    } else {
        match Message::from_vec(wire) {
            Err(e) => TlsaState::Failed {
                name,
                problem: format!("unreadable answer: {e}"),
            },
            Ok(msg) => tlsa_state(&msg, name),
        }
    };
    MxHost {
        preference: Some(10),
        host,
        addresses,
        tlsa,
    }
}

fn tlsa_state(msg: &Message, name: String) -> TlsaState {
    let qname = msg
        .queries
        .first()
        .map(|q| q.name().clone())
        .or_else(|| Name::from_ascii(&name).ok())
        .unwrap_or_else(Name::root);
    let server = SocketAddr::from(([127, 0, 0, 1], 53));
    let answer = match interpret_response(msg, &qname, RecordType::TLSA, server) {
        Err(SecureError::Bogus(problem)) => return TlsaState::Bogus { name, problem },
        Err(SecureError::Failed(problem) | SecureError::BadName(problem)) => {
            return TlsaState::Failed { name, problem };
        }
        Ok(a) => a,
    };
    assert!(!answer.chain.is_empty() && answer.chain.len() <= MAX_CNAME_CHAIN + 2);
    match &answer.found {
        Found::Records(_) if !answer.secure => TlsaState::Insecure { name },
        Found::Records(records) => {
            assert!(!records.is_empty());
            let all: Vec<_> = records.iter().filter_map(assess::tlsa_record).collect();
            for r in &all {
                let kind_ok = matches!(r.usage, 2 | 3) && r.selector <= 1 && r.matching <= 2;
                assert!(
                    !r.usable || kind_ok,
                    "unusable TLSA record judged usable: {r:?}"
                );
                assert!(r.data.len() <= assess::TLSA_DATA_SHOWN + 3);
            }
            let usable = all.iter().filter(|r| r.usable).count();
            let total = all.len();
            let mut shown = all;
            shown.sort_by_key(|r| !r.usable);
            shown.truncate(MAX_TLSA_SHOWN);
            TlsaState::Secure {
                name: answer.target().to_string(),
                records: shown,
                total,
                usable,
            }
        }
        Found::NoData | Found::NxDomain => TlsaState::Absent {
            names: vec![name],
            secure: answer.secure,
        },
    }
}

/// DNS answers for DANE: a flag byte, then up to four MX hosts, each an
/// address state byte and a length-prefixed DNS response to its TLSA
/// query. Decoding and interpreting never panic; the verdict over the
/// hosts is fail-closed (a failed lookup with no usable TLSA anywhere is
/// a failure, never "no DANE"); what it answers follows `on_failure`
/// (`defer` always waits); the record survives the store's round trip.
pub fn check_dane_answer(data: &[u8]) {
    let mut b = Bytes(data);
    let flags = b.byte().unwrap_or(0);
    let mut hosts = Vec::new();
    while !b.is_empty() && hosts.len() < 4 {
        let addresses = b.byte().unwrap_or(0);
        let wire = b.piece();
        hosts.push(host(hosts.len(), addresses, wire));
    }
    let skipped = usize::from(flags >> 6);
    let outcome = assess::verdict("d.example", &hosts, skipped);
    let counted: Vec<&MxHost> = hosts
        .iter()
        .filter(|h| !matches!(h.addresses, AddressState::None))
        .collect();
    let usable = counted.iter().filter(|h| h.usable()).count();
    let failed = counted.iter().any(|h| h.failure().is_some());
    match &outcome {
        Outcome::Policy { level, .. } => {
            assert!(usable > 0);
            let all = usable == counted.len() && skipped == 0;
            assert_eq!(*level, if all { Level::DaneOnly } else { Level::Dane });
        }
        Outcome::Failed { .. } => assert!(usable == 0 && failed),
        Outcome::NoPolicy { .. } => assert!(usable == 0 && !failed, "a failure read as no DANE"),
    }
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
    let cfg = DaneConfig {
        on_failure: match flags % 3 {
            0 => FailPolicy::Defer,
            1 => FailPolicy::DeferKnown,
            _ => FailPolicy::Opportunistic,
        },
        ..DaneConfig::default()
    };
    let last_dane = (flags & 4 != 0).then_some(LastDane {
        at: now - Duration::from_secs(60),
        level: Level::DaneOnly,
    });
    let rec = DaneRecord {
        assessment: Assessment {
            domain: "d.example".into(),
            mx: MxState::Secure { ttl: 300 },
            hosts,
            skipped,
            ttl: 300,
            outcome,
        },
        checked_at: now,
        ttl: Duration::from_secs(300),
        last_dane,
    };
    let consulted = decide(&rec, &cfg, now);
    match (&rec.assessment.outcome, &consulted) {
        (Outcome::Policy { level, .. }, Consulted::Policy(d)) => {
            assert_eq!(d.level, *level);
            assert!(!d.temporary);
        }
        (Outcome::Failed { .. }, Consulted::Policy(d)) => assert!(d.temporary),
        (Outcome::Failed { .. }, Consulted::NoPolicy(_)) => {
            assert!(cfg.on_failure != FailPolicy::Defer, "defer did not wait");
            assert!(cfg.on_failure == FailPolicy::Opportunistic || rec.last_dane.is_none());
        }
        (Outcome::NoPolicy { .. }, Consulted::NoPolicy(_)) => {}
        (o, c) => panic!("{o:?} answered {c:?}"),
    }
    let json = serde_json::to_string(&rec).expect("a DANE record serialises");
    let back: DaneRecord = serde_json::from_str(&json).expect("a DANE record reads back");
    assert_eq!(back, rec);
}
