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

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use hickory_resolver::net::{DnsError as HickoryDnsError, NetError};
use hickory_resolver::proto::dnssec::{DnssecSummary, TrustAnchors};
use hickory_resolver::proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_resolver::proto::rr::rdata::opt::{EdnsCode, EdnsOption};
use hickory_resolver::proto::rr::{Name, RData, Record, RecordType};
use serde::Deserialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;

use super::{DnsConfig, DnsError, Resolver, absolute_name, effective_nameservers, name_text};

/// UDP payload size announced in queries (the DNS flag day 2020 value).
pub const EDNS_PAYLOAD: u16 = 1232;
/// CNAMEs followed in one answer at most.
pub const MAX_CNAME_CHAIN: usize = 8;
/// Largest DNS message read (UDP or TCP): the protocol's own limit.
pub const MAX_MESSAGE: usize = 65_535;
/// Longest extended-error text kept for a message.
const MAX_EDE_TEXT: usize = 200;
/// EDNS option code of RFC 8914 extended DNS errors.
const EDE_OPTION: u16 = 15;

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

/// Why a lookup gave no answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecureError {
    /// DNSSEC validation failed.
    Bogus(String),
    /// No usable answer (SERVFAIL, REFUSED, timeout, network error).
    Failed(String),
    /// The name cannot be put in a query.
    BadName(String),
}

impl fmt::Display for SecureError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SecureError::Bogus(e) => write!(f, "DNSSEC validation failed (bogus): {e}"),
            SecureError::Failed(e) => write!(f, "lookup failed: {e}"),
            SecureError::BadName(e) => write!(f, "not a name that can be looked up: {e}"),
        }
    }
}

impl std::error::Error for SecureError {}

/// Lookups that know whether their answers are DNSSEC-validated.
pub struct SecureResolver {
    mode: DnssecMode,
    backend: Backend,
}

enum Backend {
    TrustAd(Stub),
    Validate(Box<Resolver>),
}

impl fmt::Debug for SecureResolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("SecureResolver");
        d.field("mode", &self.mode);
        if let Backend::TrustAd(s) = &self.backend {
            d.field("nameservers", &s.servers);
        }
        d.finish_non_exhaustive()
    }
}

impl SecureResolver {
    /// Build from a `[dns]` section. In `validate` mode this reads the
    /// trust anchor file; like [`super::build_resolver`] it spawns nothing
    /// until the first lookup.
    pub fn new(config: &DnsConfig) -> Result<SecureResolver, DnsError> {
        let backend = match config.dnssec {
            DnssecMode::TrustAd => {
                let servers = effective_nameservers(config)?;
                for s in &servers {
                    if !s.ip().is_loopback() {
                        tracing::warn!(
                            nameserver = %s,
                            "dns.dnssec = \"trust-ad\" trusts the AD bit of a nameserver that is \
                             not on this machine; the network path to it can forge that bit"
                        );
                    }
                }
                Backend::TrustAd(Stub {
                    servers,
                    timeout: config.timeout,
                    attempts: config.attempts.max(1),
                    rng: ring::rand::SystemRandom::new(),
                })
            }
            DnssecMode::Validate => {
                let mut builder = super::resolver_builder(config)?;
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
                Backend::Validate(Box::new(
                    builder
                        .build()
                        .map_err(|e| DnsError::Build(e.to_string()))?,
                ))
            }
        };
        Ok(SecureResolver {
            mode: config.dnssec,
            backend,
        })
    }

    pub fn mode(&self) -> DnssecMode {
        self.mode
    }

    /// Look up records of one type at `name`.
    pub async fn lookup(&self, name: &str, rtype: RecordType) -> Result<Answer, SecureError> {
        let qname = absolute_name(name).map_err(|e| SecureError::BadName(e.to_string()))?;
        match &self.backend {
            Backend::TrustAd(stub) => {
                let msg = stub.query(&qname, rtype).await?;
                interpret_trust_ad(&msg, &qname, rtype)
            }
            Backend::Validate(resolver) => {
                let result = resolver.lookup(qname.clone(), rtype).await;
                interpret_validated(result, &qname, rtype)
            }
        }
    }
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

/// A DNS stub that sends queries with the DO and AD bits and hands back
/// the whole response.
struct Stub {
    servers: Vec<SocketAddr>,
    timeout: Duration,
    attempts: usize,
    rng: ring::rand::SystemRandom,
}

impl Stub {
    /// Ask each server in turn, `attempts` rounds, until one gives a
    /// NOERROR or NXDOMAIN response.
    async fn query(&self, name: &Name, rtype: RecordType) -> Result<Message, SecureError> {
        let mut last: Option<SecureError> = None;
        for _ in 0..self.attempts {
            for &server in &self.servers {
                let e = match self.ask(server, name, rtype).await {
                    Ok(m) => match m.metadata.response_code {
                        ResponseCode::NoError | ResponseCode::NXDomain => return Ok(m),
                        code => rcode_error(&m, code, server),
                    },
                    Err(e) => SecureError::Failed(format!("{server}: {e}")),
                };
                // A bogus verdict is worth more than a later timeout.
                if !matches!(last, Some(SecureError::Bogus(_))) {
                    last = Some(e);
                }
            }
        }
        Err(last.unwrap_or_else(|| SecureError::Failed("no nameserver".into())))
    }

    fn id(&self) -> u16 {
        let mut b = [0u8; 2];
        // SystemRandom only fails when the OS has no randomness at all.
        if ring::rand::SecureRandom::fill(&self.rng, &mut b).is_err() {
            b = (std::process::id() as u16 ^ 0x5a5a).to_be_bytes();
        }
        u16::from_be_bytes(b)
    }

    /// One query to one server: UDP, then TCP if the answer was truncated.
    async fn ask(
        &self,
        server: SocketAddr,
        name: &Name,
        rtype: RecordType,
    ) -> Result<Message, String> {
        let id = self.id();
        let bytes = request(id, name, rtype)
            .to_vec()
            .map_err(|e| format!("cannot encode the query: {e}"))?;
        let deadline = Instant::now() + self.timeout;
        let within = humantime::format_duration(self.timeout);
        let local: SocketAddr = if server.is_ipv4() {
            (Ipv4Addr::UNSPECIFIED, 0).into()
        } else {
            (Ipv6Addr::UNSPECIFIED, 0).into()
        };
        let sock = tokio::net::UdpSocket::bind(local)
            .await
            .map_err(|e| format!("UDP socket: {e}"))?;
        sock.connect(server)
            .await
            .map_err(|e| format!("UDP connect: {e}"))?;
        sock.send(&bytes)
            .await
            .map_err(|e| format!("UDP send: {e}"))?;
        let mut buf = vec![0u8; MAX_MESSAGE];
        loop {
            let n = match tokio::time::timeout_at(deadline, sock.recv(&mut buf)).await {
                Err(_) => return Err(format!("no answer within {within}")),
                Ok(Err(e)) => return Err(format!("UDP receive: {e}")),
                Ok(Ok(n)) => n,
            };
            // Garbage, or an answer to some other query: keep waiting.
            let Ok(msg) = Message::from_vec(&buf[..n]) else {
                continue;
            };
            if !answers(&msg, id, name, rtype) {
                continue;
            }
            if msg.metadata.truncation {
                return self
                    .ask_tcp(server, &bytes, id, name, rtype, deadline)
                    .await;
            }
            return Ok(msg);
        }
    }

    async fn ask_tcp(
        &self,
        server: SocketAddr,
        bytes: &[u8],
        id: u16,
        name: &Name,
        rtype: RecordType,
        deadline: Instant,
    ) -> Result<Message, String> {
        let within = humantime::format_duration(self.timeout);
        let work = async {
            let mut s = tokio::net::TcpStream::connect(server)
                .await
                .map_err(|e| format!("TCP connect: {e}"))?;
            let len = u16::try_from(bytes.len()).map_err(|_| "query too long".to_string())?;
            let mut out = len.to_be_bytes().to_vec();
            out.extend_from_slice(bytes);
            s.write_all(&out)
                .await
                .map_err(|e| format!("TCP send: {e}"))?;
            let mut len = [0u8; 2];
            s.read_exact(&mut len)
                .await
                .map_err(|e| format!("TCP receive: {e}"))?;
            let mut msg = vec![0u8; usize::from(u16::from_be_bytes(len))];
            s.read_exact(&mut msg)
                .await
                .map_err(|e| format!("TCP receive: {e}"))?;
            let msg = Message::from_vec(&msg).map_err(|e| format!("unreadable answer: {e}"))?;
            if !answers(&msg, id, name, rtype) {
                return Err("the TCP answer is not about the query".to_string());
            }
            Ok(msg)
        };
        match tokio::time::timeout_at(deadline, work).await {
            Err(_) => Err(format!("no answer within {within} (TCP)")),
            Ok(r) => r,
        }
    }
}

/// A recursive query with the DO bit (RFC 3225) and the AD bit (RFC 6840
/// section 5.7): either asks a validating resolver to report validation.
fn request(id: u16, name: &Name, rtype: RecordType) -> Message {
    let mut m = Message::new(id, MessageType::Query, OpCode::Query);
    m.metadata.recursion_desired = true;
    m.metadata.authentic_data = true;
    m.add_query(Query::query(name.clone(), rtype));
    let mut edns = Edns::new();
    edns.set_max_payload(EDNS_PAYLOAD);
    edns.set_dnssec_ok(true);
    m.set_edns(edns);
    m
}

/// Whether `msg` is the response to our query.
fn answers(msg: &Message, id: u16, name: &Name, rtype: RecordType) -> bool {
    msg.metadata.id == id
        && msg.metadata.message_type == MessageType::Response
        && msg.queries.len() == 1
        && msg.queries[0].name() == name
        && msg.queries[0].query_type() == rtype
}

/// The error for a response code other than NOERROR and NXDOMAIN.
fn rcode_error(msg: &Message, code: ResponseCode, server: SocketAddr) -> SecureError {
    let ede = extended_error(msg);
    let code = rcode_text(code);
    let text = match (&ede, code.as_str()) {
        (Some((info, t)), _) => format!("{server} answered {code} (extended error {info}: {t})"),
        (None, "SERVFAIL") => format!(
            "{server} answered SERVFAIL (a validating resolver also answers so for bogus data)"
        ),
        (None, _) => format!("{server} answered {code}"),
    };
    match ede {
        Some((info, _)) if is_dnssec_ede(info) => SecureError::Bogus(text),
        _ => SecureError::Failed(text),
    }
}

/// A response code as the RFCs spell it.
fn rcode_text(code: ResponseCode) -> String {
    match code {
        ResponseCode::ServFail => "SERVFAIL".into(),
        ResponseCode::Refused => "REFUSED".into(),
        ResponseCode::FormErr => "FORMERR".into(),
        ResponseCode::NotImp => "NOTIMP".into(),
        other => format!("response code {}", u16::from(other)),
    }
}

/// RFC 8914 info codes that mean DNSSEC validation failed.
fn is_dnssec_ede(info: u16) -> bool {
    // 1 unsupported DNSKEY algorithm and 2 unsupported DS digest make a
    // zone insecure, not bogus; 6..=12 are validation failures.
    (6..=12).contains(&info)
}

/// The first extended DNS error of a response: info code and text.
fn extended_error(msg: &Message) -> Option<(u16, String)> {
    let edns = msg.edns.as_ref()?;
    let EdnsOption::Unknown(_, data) = edns.options().get(EdnsCode::from(EDE_OPTION))? else {
        return None;
    };
    let info = u16::from_be_bytes([*data.first()?, *data.get(1)?]);
    let text: String = String::from_utf8_lossy(&data[2..])
        .chars()
        .filter(|c| !c.is_control())
        .take(MAX_EDE_TEXT)
        .collect();
    Some((info, text))
}

/// Follow CNAMEs from `qname` through `records`. Returns the chain of
/// names (query name first) and the TTLs of the CNAME records used.
fn follow_chain<'r>(
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
fn negative_ttl(authorities: &[Record]) -> u32 {
    authorities
        .iter()
        .find_map(|r| match &r.data {
            RData::SOA(soa) => Some(r.ttl.min(soa.minimum)),
            _ => None,
        })
        .unwrap_or(0)
}

fn interpret_trust_ad(
    msg: &Message,
    qname: &Name,
    rtype: RecordType,
) -> Result<Answer, SecureError> {
    let (chain, cnames) = follow_chain(&msg.answers, qname, rtype)?;
    let target = chain.last().expect("chain starts with the query name");
    let matching: Vec<&Record> = msg
        .answers
        .iter()
        .filter(|r| &r.name == target && r.record_type() == rtype)
        .collect();
    let cname_ttl = cnames.iter().map(|r| r.ttl).min();
    let (found, ttl) = if msg.metadata.response_code == ResponseCode::NXDomain {
        (Found::NxDomain, negative_ttl(&msg.authorities))
    } else if matching.is_empty() {
        (Found::NoData, negative_ttl(&msg.authorities))
    } else {
        (
            Found::Records(matching.iter().map(|r| r.data.clone()).collect()),
            matching.iter().map(|r| r.ttl).min().unwrap_or(0),
        )
    };
    Ok(Answer {
        chain: chain.iter().map(name_text).collect(),
        found,
        secure: msg.metadata.authentic_data,
        ttl: cname_ttl.map_or(ttl, |c| c.min(ttl)),
    })
}

fn interpret_validated(
    result: Result<hickory_resolver::lookup::Lookup, NetError>,
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
    use hickory_resolver::proto::rr::rdata::{A, CNAME, SOA};

    fn n(s: &str) -> Name {
        absolute_name(s).unwrap()
    }

    fn response(rcode: ResponseCode, ad: bool) -> Message {
        let mut m = Message::new(7, MessageType::Response, OpCode::Query);
        m.metadata.response_code = rcode;
        m.metadata.authentic_data = ad;
        m
    }

    fn soa(zone: &str, ttl: u32, minimum: u32) -> Record {
        Record::from_rdata(
            n(zone),
            ttl,
            RData::SOA(SOA::new(n("ns.x"), n("h.x"), 1, 1, 1, 1, minimum)),
        )
    }

    #[test]
    fn query_carries_do_and_ad() {
        let m = request(9, &n("mx.example"), RecordType::TLSA);
        assert!(m.metadata.authentic_data);
        assert!(m.metadata.recursion_desired);
        let e = m.edns.as_ref().unwrap();
        assert!(e.flags().dnssec_ok);
        assert_eq!(e.max_payload(), EDNS_PAYLOAD);
    }

    #[test]
    fn trust_ad_positive_with_cname_chain() {
        let mut m = response(ResponseCode::NoError, true);
        m.add_answer(Record::from_rdata(
            n("a.example"),
            300,
            RData::CNAME(CNAME(n("b.example"))),
        ));
        m.add_answer(Record::from_rdata(
            n("b.example"),
            50,
            RData::A(A::new(192, 0, 2, 1)),
        ));
        let a = interpret_trust_ad(&m, &n("A.example"), RecordType::A).unwrap();
        assert_eq!(a.chain, ["a.example", "b.example"]);
        assert!(a.secure && a.aliased());
        assert_eq!(a.target(), "b.example");
        assert_eq!(a.records().len(), 1);
        assert_eq!(a.ttl, 50);
    }

    #[test]
    fn trust_ad_negative_answers() {
        let mut m = response(ResponseCode::NoError, false);
        m.add_authority(soa("example", 900, 120));
        let a = interpret_trust_ad(&m, &n("example"), RecordType::MX).unwrap();
        assert_eq!(
            (a.found.clone(), a.secure, a.ttl),
            (Found::NoData, false, 120)
        );
        let mut m = response(ResponseCode::NXDomain, true);
        m.add_authority(soa("example", 30, 120));
        let a = interpret_trust_ad(&m, &n("x.example"), RecordType::MX).unwrap();
        assert_eq!((a.found, a.secure, a.ttl), (Found::NxDomain, true, 30));
    }

    #[test]
    fn cname_loops_and_long_chains_fail() {
        let mut m = response(ResponseCode::NoError, true);
        m.add_answer(Record::from_rdata(
            n("a.x"),
            1,
            RData::CNAME(CNAME(n("b.x"))),
        ));
        m.add_answer(Record::from_rdata(
            n("b.x"),
            1,
            RData::CNAME(CNAME(n("a.x"))),
        ));
        let e = interpret_trust_ad(&m, &n("a.x"), RecordType::A).unwrap_err();
        assert!(e.to_string().contains("CNAME loop"), "{e}");

        let mut m = response(ResponseCode::NoError, true);
        for i in 0..=MAX_CNAME_CHAIN {
            m.add_answer(Record::from_rdata(
                n(&format!("c{i}.x")),
                1,
                RData::CNAME(CNAME(n(&format!("c{}.x", i + 1)))),
            ));
        }
        let e = interpret_trust_ad(&m, &n("c0.x"), RecordType::A).unwrap_err();
        assert!(e.to_string().contains("more than 8 CNAMEs"), "{e}");
        // Exactly the limit is fine.
        let mut m = response(ResponseCode::NoError, true);
        for i in 0..MAX_CNAME_CHAIN {
            m.add_answer(Record::from_rdata(
                n(&format!("c{i}.x")),
                1,
                RData::CNAME(CNAME(n(&format!("c{}.x", i + 1)))),
            ));
        }
        let a = interpret_trust_ad(&m, &n("c0.x"), RecordType::A).unwrap();
        assert_eq!(a.chain.len(), MAX_CNAME_CHAIN + 1);
        assert_eq!(a.found, Found::NoData);
    }

    #[test]
    fn servfail_with_dnssec_extended_error_is_bogus() {
        let server: SocketAddr = "127.0.0.1:53".parse().unwrap();
        let mut m = response(ResponseCode::ServFail, false);
        let mut edns = Edns::new();
        let mut data = 6u16.to_be_bytes().to_vec();
        data.extend_from_slice(b"signature expired\x07");
        edns.options_mut()
            .insert(EdnsOption::Unknown(EDE_OPTION, data));
        m.set_edns(edns);
        let e = rcode_error(&m, ResponseCode::ServFail, server);
        assert!(matches!(e, SecureError::Bogus(_)), "{e:?}");
        assert!(
            e.to_string()
                .contains("extended error 6: signature expired"),
            "{e}"
        );

        let plain = response(ResponseCode::ServFail, false);
        let e = rcode_error(&plain, ResponseCode::ServFail, server);
        assert!(matches!(e, SecureError::Failed(_)), "{e:?}");
        let e = rcode_error(&plain, ResponseCode::Refused, server);
        assert!(e.to_string().ends_with("answered REFUSED"), "{e}");
        assert!(!is_dnssec_ede(1) && is_dnssec_ede(6) && is_dnssec_ede(12) && !is_dnssec_ede(13));
    }

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
