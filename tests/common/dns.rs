//! An in-process DNS server for tests: answers UDP and TCP on one
//! 127.0.0.x port from a table the test fills, with chosen names made to
//! fail (SERVFAIL, REFUSED, NXDOMAIN) or to go unanswered, and the AD bit
//! set where the test says so.
//!
//! It answers like a recursive resolver would to a stub: every query gets
//! the records from the table, CNAMEs followed inside the table, NXDOMAIN
//! for names that do not exist, NODATA (with an SOA for the negative TTL)
//! for names that exist without records of the type asked for. It runs on
//! its own thread and runtime, so sync tests and async tests (and daemons
//! started as separate processes) can all use it; it stops when dropped.
//!
//! ```ignore
//! let dns = TestDns::start("127.0.0.53");
//! dns.mx("example.test", 10, "mx1.example.test");
//! dns.a("mx1.example.test", "127.0.0.21");
//! dns.servfail("broken.test");
//! // DnsConfig { nameservers: vec![dns.nameserver()], .. }
//! ```

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use hickory_proto::op::{Edns, Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA, CNAME, MX, SOA, TXT};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// TTL of records added without one.
pub const DEFAULT_TTL: u32 = 60;
/// SOA minimum of negative answers (how long resolvers cache "no such
/// record"); short so tests can change the table.
pub const NEGATIVE_TTL: u32 = 1;

/// What to do instead of answering from the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Behaviour {
    /// Answer SERVFAIL.
    ServFail,
    /// Answer REFUSED.
    Refused,
    /// Answer NXDOMAIN, whatever the table holds.
    NxDomain,
    /// Never answer (the client times out).
    Drop,
}

#[derive(Default)]
struct Table {
    records: HashMap<String, Vec<Record>>,
    /// By (name, type); `None` for every type.
    behaviour: HashMap<(String, Option<RecordType>), Behaviour>,
    /// AD bit per name; `ad_default` for the rest.
    ad: HashMap<String, bool>,
    ad_default: bool,
}

/// One query the server received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Query {
    pub name: String,
    pub rtype: RecordType,
    pub tcp: bool,
}

#[derive(Default)]
struct Shared {
    table: Mutex<Table>,
    queries: Mutex<Vec<Query>>,
}

/// The running server. Stops when dropped.
pub struct TestDns {
    addr: SocketAddr,
    shared: Arc<Shared>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

/// Lower case, no trailing dot.
fn key(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

fn dns_name(name: &str) -> Name {
    let mut n = Name::from_ascii(name).unwrap_or_else(|e| panic!("bad DNS name {name:?}: {e}"));
    n.set_fqdn(true);
    n
}

impl TestDns {
    /// Start on `ip` (a 127.0.0.x address), UDP and TCP on the same free
    /// port.
    pub fn start(ip: &str) -> TestDns {
        let ip: IpAddr = ip.parse().expect("an IP address");
        TestDns::start_sockets(bind_pair(ip))
    }

    /// Start on exactly `addr` (e.g. `127.0.0.1:53` inside a namespace,
    /// where a resolv.conf nameserver must be).
    pub fn start_at(addr: SocketAddr) -> TestDns {
        let udp =
            std::net::UdpSocket::bind(addr).unwrap_or_else(|e| panic!("bind UDP {addr}: {e}"));
        let tcp =
            std::net::TcpListener::bind(addr).unwrap_or_else(|e| panic!("bind TCP {addr}: {e}"));
        udp.set_nonblocking(true).expect("nonblocking");
        tcp.set_nonblocking(true).expect("nonblocking");
        TestDns::start_sockets((udp, tcp))
    }

    fn start_sockets((udp, tcp): (std::net::UdpSocket, std::net::TcpListener)) -> TestDns {
        let addr = udp.local_addr().expect("local address");
        let shared = Arc::new(Shared::default());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let s = shared.clone();
        let thread = std::thread::Builder::new()
            .name(format!("test-dns-{addr}"))
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("test DNS runtime");
                rt.block_on(async move {
                    let udp = tokio::net::UdpSocket::from_std(udp).expect("tokio UDP socket");
                    let tcp = tokio::net::TcpListener::from_std(tcp).expect("tokio TCP listener");
                    tokio::select! {
                        _ = serve_udp(udp, s.clone()) => {}
                        _ = serve_tcp(tcp, s) => {}
                        _ = stopped => {}
                    }
                });
            })
            .expect("spawn test DNS thread");
        TestDns {
            addr,
            shared,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `"127.0.0.53:PORT"`, for `dns.nameservers`.
    pub fn nameserver(&self) -> String {
        self.addr.to_string()
    }

    fn table(&self) -> std::sync::MutexGuard<'_, Table> {
        self.shared.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Add a record with [`DEFAULT_TTL`].
    pub fn add(&self, name: &str, rdata: RData) -> &Self {
        self.add_ttl(name, DEFAULT_TTL, rdata)
    }

    /// Add a record with a TTL.
    pub fn add_ttl(&self, name: &str, ttl: u32, rdata: RData) -> &Self {
        let record = Record::from_rdata(dns_name(name), ttl, rdata);
        self.table()
            .records
            .entry(key(name))
            .or_default()
            .push(record);
        self
    }

    pub fn mx(&self, domain: &str, preference: u16, host: &str) -> &Self {
        self.add(domain, RData::MX(MX::new(preference, dns_name(host))))
    }

    /// RFC 7505 null MX: `0 .`.
    pub fn null_mx(&self, domain: &str) -> &Self {
        self.add(domain, RData::MX(MX::new(0, Name::root())))
    }

    pub fn a(&self, name: &str, ip: &str) -> &Self {
        let ip: Ipv4Addr = ip.parse().expect("an IPv4 address");
        self.add(name, RData::A(A(ip)))
    }

    pub fn aaaa(&self, name: &str, ip: &str) -> &Self {
        let ip: Ipv6Addr = ip.parse().expect("an IPv6 address");
        self.add(name, RData::AAAA(AAAA(ip)))
    }

    /// One TXT record of one string (split into 255-byte pieces).
    pub fn txt(&self, name: &str, text: &str) -> &Self {
        let pieces: Vec<&[u8]> = text.as_bytes().chunks(255).collect();
        self.add(name, RData::TXT(TXT::from_bytes(pieces)))
    }

    pub fn cname(&self, name: &str, target: &str) -> &Self {
        self.add(name, RData::CNAME(CNAME(dns_name(target))))
    }

    /// Remove every record of `name` and every behaviour set for it.
    pub fn remove(&self, name: &str) -> &Self {
        let k = key(name);
        let mut t = self.table();
        t.records.remove(&k);
        t.behaviour.retain(|(n, _), _| *n != k);
        self
    }

    /// Make every query for `name` behave so, whatever the table holds.
    pub fn behave(&self, name: &str, b: Behaviour) -> &Self {
        self.table().behaviour.insert((key(name), None), b);
        self
    }

    /// Make queries for one type at `name` behave so.
    pub fn behave_for(&self, name: &str, rtype: RecordType, b: Behaviour) -> &Self {
        self.table().behaviour.insert((key(name), Some(rtype)), b);
        self
    }

    pub fn servfail(&self, name: &str) -> &Self {
        self.behave(name, Behaviour::ServFail)
    }

    pub fn nxdomain(&self, name: &str) -> &Self {
        self.behave(name, Behaviour::NxDomain)
    }

    /// Never answer queries for `name`.
    pub fn no_answer(&self, name: &str) -> &Self {
        self.behave(name, Behaviour::Drop)
    }

    /// Set the AD (authentic data) bit on answers about `name`.
    pub fn set_ad(&self, name: &str, on: bool) -> &Self {
        self.table().ad.insert(key(name), on);
        self
    }

    /// Set the AD bit on answers about names without their own setting.
    pub fn set_ad_default(&self, on: bool) -> &Self {
        self.table().ad_default = on;
        self
    }

    /// Every query received so far.
    pub fn queries(&self) -> Vec<Query> {
        self.shared
            .queries
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// How many queries for `name` of type `rtype` were received.
    pub fn query_count(&self, name: &str, rtype: RecordType) -> usize {
        let k = key(name);
        self.queries()
            .iter()
            .filter(|q| q.name == k && q.rtype == rtype)
            .count()
    }
}

impl Drop for TestDns {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A UDP socket and a TCP listener on the same free port of `ip`.
fn bind_pair(ip: IpAddr) -> (std::net::UdpSocket, std::net::TcpListener) {
    for _ in 0..50 {
        let udp = std::net::UdpSocket::bind(SocketAddr::new(ip, 0))
            .unwrap_or_else(|e| panic!("bind UDP on {ip}: {e}"));
        let port = udp.local_addr().expect("local address").port();
        if let Ok(tcp) = std::net::TcpListener::bind(SocketAddr::new(ip, port)) {
            udp.set_nonblocking(true).expect("nonblocking");
            tcp.set_nonblocking(true).expect("nonblocking");
            return (udp, tcp);
        }
    }
    panic!("no port free for both UDP and TCP on {ip}");
}

async fn serve_udp(socket: tokio::net::UdpSocket, shared: Arc<Shared>) {
    let mut buf = vec![0u8; 65535];
    loop {
        let Ok((n, peer)) = socket.recv_from(&mut buf).await else {
            continue;
        };
        let Some((response, max)) = answer(&buf[..n], &shared, false) else {
            continue;
        };
        let bytes = encode(response, max);
        let _ = socket.send_to(&bytes, peer).await;
    }
}

async fn serve_tcp(listener: tokio::net::TcpListener, shared: Arc<Shared>) {
    loop {
        let Ok((mut stream, _)) = listener.accept().await else {
            continue;
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            loop {
                let mut len = [0u8; 2];
                if stream.read_exact(&mut len).await.is_err() {
                    return;
                }
                let mut msg = vec![0u8; usize::from(u16::from_be_bytes(len))];
                if stream.read_exact(&mut msg).await.is_err() {
                    return;
                }
                let Some((response, _)) = answer(&msg, &shared, true) else {
                    continue;
                };
                let bytes = encode(response, usize::from(u16::MAX));
                let Ok(n) = u16::try_from(bytes.len()) else {
                    return;
                };
                let mut out = n.to_be_bytes().to_vec();
                out.extend_from_slice(&bytes);
                if stream.write_all(&out).await.is_err() {
                    return;
                }
            }
        });
    }
}

/// Serialise, truncating (TC bit, no records) past `max` bytes.
fn encode(response: Message, max: usize) -> Vec<u8> {
    let bytes = response.to_vec().unwrap_or_default();
    if bytes.len() <= max {
        return bytes;
    }
    let mut t = Message::response(response.metadata.id, response.metadata.op_code);
    t.metadata = response.metadata;
    t.metadata.truncation = true;
    t.add_queries(response.queries.iter().cloned());
    t.to_vec().unwrap_or_default()
}

/// The response to one request and the largest UDP answer the client
/// takes, or `None` to stay silent.
fn answer(request: &[u8], shared: &Shared, tcp: bool) -> Option<(Message, usize)> {
    let req = Message::from_vec(request).ok()?;
    if req.metadata.message_type != MessageType::Query {
        return None;
    }
    let mut resp = Message::response(req.metadata.id, req.metadata.op_code);
    resp.metadata.recursion_desired = req.metadata.recursion_desired;
    resp.metadata.recursion_available = true;
    resp.metadata.checking_disabled = req.metadata.checking_disabled;
    let max = req
        .edns
        .as_ref()
        .map_or(512, |e| usize::from(e.max_payload()).max(512));
    if let Some(e) = &req.edns {
        let mut edns = Edns::new();
        edns.set_max_payload(1232);
        edns.flags_mut().dnssec_ok = e.flags().dnssec_ok;
        resp.set_edns(edns);
    }
    let Some(q) = req.queries.first().cloned() else {
        resp.metadata.response_code = ResponseCode::FormErr;
        return Some((resp, max));
    };
    resp.add_query(q.clone());
    if req.metadata.op_code != OpCode::Query {
        resp.metadata.response_code = ResponseCode::NotImp;
        return Some((resp, max));
    }
    let qname = key(&q.name().to_ascii());
    let qtype = q.query_type();
    shared
        .queries
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(Query {
            name: qname.clone(),
            rtype: qtype,
            tcp,
        });
    let table = shared.table.lock().unwrap_or_else(|e| e.into_inner());
    resp.metadata.authentic_data = *table.ad.get(&qname).unwrap_or(&table.ad_default);
    let behaviour = table
        .behaviour
        .get(&(qname.clone(), Some(qtype)))
        .or_else(|| table.behaviour.get(&(qname.clone(), None)));
    match behaviour {
        Some(Behaviour::Drop) => return None,
        Some(Behaviour::ServFail) => {
            resp.metadata.response_code = ResponseCode::ServFail;
            resp.metadata.authentic_data = false;
            return Some((resp, max));
        }
        Some(Behaviour::Refused) => {
            resp.metadata.response_code = ResponseCode::Refused;
            resp.metadata.authentic_data = false;
            return Some((resp, max));
        }
        Some(Behaviour::NxDomain) => {
            resp.metadata.response_code = ResponseCode::NXDomain;
            resp.add_authority(soa_for(&qname));
            return Some((resp, max));
        }
        None => {}
    }
    // Follow CNAMEs inside the table (at most 8).
    let mut name = qname.clone();
    for _ in 0..8 {
        let records = table.records.get(&name);
        let cname = records.and_then(|rs| {
            rs.iter().find_map(|r| match &r.data {
                RData::CNAME(target) => Some((r.clone(), key(&target.0.to_ascii()))),
                _ => None,
            })
        });
        match cname {
            Some((record, target)) if qtype != RecordType::CNAME => {
                name = target;
                resp.add_answer(record);
            }
            _ => {
                let matching: Vec<Record> = records
                    .map(|rs| {
                        rs.iter()
                            .filter(|r| qtype == RecordType::ANY || r.record_type() == qtype)
                            .cloned()
                            .collect()
                    })
                    .unwrap_or_default();
                if !matching.is_empty() {
                    resp.add_answers(matching);
                } else if resp.answers.is_empty() {
                    if !exists(&table, &name) {
                        resp.metadata.response_code = ResponseCode::NXDomain;
                    }
                    resp.add_authority(soa_for(&name));
                }
                break;
            }
        }
    }
    Some((resp, max))
}

/// A name exists if it has records or a name below it has.
fn exists(table: &Table, name: &str) -> bool {
    let suffix = format!(".{name}");
    table
        .records
        .keys()
        .any(|k| k == name || k.ends_with(&suffix))
}

/// An SOA for negative answers about `name`, owned by its parent zone
/// (the last two labels).
fn soa_for(name: &str) -> Record {
    let labels: Vec<&str> = name.split('.').collect();
    let zone = if labels.len() > 2 {
        labels[labels.len() - 2..].join(".")
    } else {
        name.to_string()
    };
    let zone = if zone.is_empty() {
        ".".to_string()
    } else {
        zone
    };
    let soa = SOA::new(
        dns_name(&format!("ns.{}", zone.trim_start_matches('.'))),
        dns_name(&format!("hostmaster.{}", zone.trim_start_matches('.'))),
        1,
        3600,
        600,
        86400,
        NEGATIVE_TTL,
    );
    Record::from_rdata(dns_name(&zone), NEGATIVE_TTL, RData::SOA(soa))
}
