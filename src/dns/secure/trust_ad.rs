//! `trust-ad`: a stub that asks the configured nameservers (validating
//! resolvers) with the DO and AD bits, and reads their AD bit as the
//! verdict. A SERVFAIL that carries a DNSSEC extended error is bogus.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use hickory_resolver::proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_resolver::proto::rr::rdata::opt::{EdnsCode, EdnsOption};
use hickory_resolver::proto::rr::{Name, Record, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;

use super::SecureError;
use super::answer::{Answer, Found, follow_chain, negative_ttl, rcode_text};
use crate::dns::{DnsConfig, DnsError, effective_nameservers, name_text};

/// UDP payload size announced in queries (the DNS flag day 2020 value).
pub const EDNS_PAYLOAD: u16 = 1232;
/// Largest DNS message read (UDP or TCP): the protocol's own limit.
pub const MAX_MESSAGE: usize = 65_535;
/// Longest extended-error text kept for a message.
const MAX_EDE_TEXT: usize = 200;
/// EDNS option code of RFC 8914 extended DNS errors.
const EDE_OPTION: u16 = 15;

/// A DNS stub that sends queries with the DO and AD bits and hands back
/// the whole response.
pub(super) struct Stub {
    servers: Vec<SocketAddr>,
    timeout: Duration,
    attempts: usize,
    rng: ring::rand::SystemRandom,
}

impl Stub {
    /// The stub for a `[dns]` section: its nameservers, else those of
    /// `/etc/resolv.conf`.
    pub(super) fn new(config: &DnsConfig) -> Result<Stub, DnsError> {
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
        Ok(Stub {
            servers,
            timeout: config.timeout,
            attempts: config.attempts.max(1),
            rng: ring::rand::SystemRandom::new(),
        })
    }

    /// The nameservers asked, in order.
    pub(super) fn servers(&self) -> &[SocketAddr] {
        &self.servers
    }

    /// Look up records of one type at `qname`; the answer is secure when
    /// the response has the AD bit set.
    pub(super) async fn lookup(
        &self,
        qname: &Name,
        rtype: RecordType,
    ) -> Result<Answer, SecureError> {
        let msg = self.query(qname, rtype).await?;
        interpret_trust_ad(&msg, qname, rtype)
    }

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

/// What a response as received means: a NOERROR or NXDOMAIN response as
/// [`interpret_trust_ad`] reads it, any other code as the error the
/// lookup gives for it (as [`Stub::lookup`] does, server by server).
pub(crate) fn interpret_response(
    msg: &Message,
    qname: &Name,
    rtype: RecordType,
    server: SocketAddr,
) -> Result<Answer, SecureError> {
    match msg.metadata.response_code {
        ResponseCode::NoError | ResponseCode::NXDomain => interpret_trust_ad(msg, qname, rtype),
        code => Err(rcode_error(msg, code, server)),
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dns::absolute_name;
    use crate::dns::secure::MAX_CNAME_CHAIN;
    use hickory_resolver::proto::rr::RData;
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
}
