//! DNS resolution shared by everything that looks things up: the STARTTLS
//! prober (MX, A, AAAA) and the published-policy sources (TXT for MTA-STS,
//! TLSA for DANE).
//!
//! One resolver is built from the `[dns]` section: either the nameservers it
//! lists, or the system's `/etc/resolv.conf` when the list is empty. Record
//! TTLs are honoured as published (no minimum or maximum is imposed), EDNS0
//! is on, and `/etc/hosts` is never consulted: mail routing goes by DNS, as
//! Postfix's `smtp_host_lookup = dns` does.
//!
//! Lookups report failures in three kinds that callers must keep apart: the
//! name does not exist, the name exists without records of the type asked
//! for, and "no answer" (SERVFAIL, timeout, network error). Only the first two
//! are knowledge.
//!
//! DANE needs more than records: it needs to know whether each answer is
//! DNSSEC-validated. [`secure`] does those lookups, in the mode the
//! `dnssec` setting chooses.

pub mod secure;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use hickory_resolver::config::{
    ConnectionConfig, NameServerConfig, ResolveHosts, ResolverConfig, ResolverOpts,
};
use hickory_resolver::lookup::Lookup;
use hickory_resolver::net::NetError;
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::op::ResponseCode;
use hickory_resolver::proto::rr::{Name, RData, RecordType};
use hickory_resolver::{ResolverBuilder, TokioResolver};
use serde::Deserialize;

pub use secure::DnssecMode;

/// The port nameservers listen on unless one is given.
pub const DNS_PORT: u16 = 53;

/// The `[dns]` section.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DnsConfig {
    /// Nameserver addresses, `"192.0.2.53"` (port 53), `"127.0.0.1:5353"`,
    /// `"::1"` or `"[::1]:5353"`. Empty: the system's `/etc/resolv.conf`.
    #[serde(default)]
    pub nameservers: Vec<String>,
    /// How long to wait for one answer (`"5s"`).
    #[serde(default = "default_timeout", with = "crate::util::duration::human")]
    pub timeout: Duration,
    /// How many times a query is sent before giving up.
    #[serde(default = "default_attempts")]
    pub attempts: usize,
    /// How DANE learns that an answer is DNSSEC-validated: `"trust-ad"`
    /// (the nameservers are validating resolvers and their AD bit is
    /// trusted, as Postfix does) or `"validate"` (validated here).
    #[serde(default)]
    pub dnssec: DnssecMode,
    /// `validate` only: a file of DNSKEY records (zone-file syntax) to
    /// trust instead of the built-in root keys.
    #[serde(default)]
    pub trust_anchor: Option<PathBuf>,
}

impl Default for DnsConfig {
    fn default() -> Self {
        DnsConfig {
            nameservers: Vec::new(),
            timeout: default_timeout(),
            attempts: default_attempts(),
            dnssec: DnssecMode::default(),
            trust_anchor: None,
        }
    }
}

fn default_timeout() -> Duration {
    Duration::from_secs(5)
}

fn default_attempts() -> usize {
    2
}

impl DnsConfig {
    /// Check every setting; the message names the key and the problem.
    pub fn validate(&self) -> Result<(), String> {
        for ns in &self.nameservers {
            parse_nameserver(ns).map_err(|e| format!("nameservers: {e}"))?;
        }
        if self.timeout.is_zero() {
            return Err("timeout: must be longer than zero".into());
        }
        if self.attempts == 0 {
            return Err("attempts: must be at least 1".into());
        }
        if let Some(p) = &self.trust_anchor {
            if self.dnssec != DnssecMode::Validate {
                return Err(format!(
                    "trust_anchor: only used with dnssec = \"validate\" (dnssec is {:?})",
                    self.dnssec.as_str()
                ));
            }
            if p.as_os_str().is_empty() {
                return Err("trust_anchor: an empty path is not a file".into());
            }
        }
        Ok(())
    }

    /// The configured nameservers as socket addresses.
    pub fn nameserver_addrs(&self) -> Result<Vec<SocketAddr>, DnsError> {
        self.nameservers
            .iter()
            .map(|s| {
                parse_nameserver(s).map_err(|problem| DnsError::BadNameserver {
                    value: s.clone(),
                    problem,
                })
            })
            .collect()
    }
}

/// Parse one nameserver setting: an IP address with an optional port.
/// Host names are refused: something has to resolve them first.
pub fn parse_nameserver(s: &str) -> Result<SocketAddr, String> {
    let t = s.trim();
    if t.is_empty() {
        return Err("an empty string is not a nameserver address".into());
    }
    let addr = if let Ok(sa) = t.parse::<SocketAddr>() {
        sa
    } else if let Ok(ip) = t.parse::<IpAddr>() {
        SocketAddr::new(ip, DNS_PORT)
    } else if let Some(inner) = t.strip_prefix('[').and_then(|r| r.strip_suffix(']'))
        && let Ok(ip) = inner.parse::<Ipv6Addr>()
    {
        SocketAddr::new(IpAddr::V6(ip), DNS_PORT)
    } else {
        return Err(format!(
            "{s:?} is not a nameserver address; use an IP address with an optional port, \
             like \"192.0.2.53\", \"127.0.0.1:5353\", \"::1\" or \"[::1]:5353\" \
             (host names are not accepted)"
        ));
    };
    if addr.port() == 0 {
        return Err(format!("{s:?}: port 0 is not a nameserver port"));
    }
    if addr.ip().is_unspecified() {
        return Err(format!(
            "{s:?}: the unspecified address is not a nameserver"
        ));
    }
    Ok(addr)
}

/// Why a resolver could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DnsError {
    /// A `nameservers` entry is not an address.
    #[error("dns.nameservers: {problem}")]
    BadNameserver { value: String, problem: String },
    /// `nameservers` is empty and the system configuration is unusable.
    #[error(
        "cannot read the system resolver configuration (/etc/resolv.conf): {0}; set dns.nameservers"
    )]
    SystemConfig(String),
    /// The resolver library refused the configuration.
    #[error("cannot set up the DNS resolver: {0}")]
    Build(String),
    /// The `trust_anchor` file cannot be read or parsed.
    #[error("dns.trust_anchor: {0}")]
    TrustAnchor(String),
}

/// The resolver type every lookup uses.
pub type Resolver = TokioResolver;

/// Build the resolver for a `[dns]` section. Must be called inside a tokio
/// runtime if the resolver is used there (it spawns no task until the
/// first lookup).
pub fn build_resolver(config: &DnsConfig) -> Result<Resolver, DnsError> {
    resolver_builder(config)?
        .build()
        .map_err(|e| DnsError::Build(e.to_string()))
}

/// The nameservers of a `[dns]` section: the configured ones, else those
/// of `/etc/resolv.conf`.
pub fn effective_nameservers(config: &DnsConfig) -> Result<Vec<SocketAddr>, DnsError> {
    let addrs = config.nameserver_addrs()?;
    if !addrs.is_empty() {
        return Ok(addrs);
    }
    let (system, _) = hickory_resolver::system_conf::read_system_conf()
        .map_err(|e| DnsError::SystemConfig(e.to_string()))?;
    let mut out = Vec::new();
    for ns in &system.name_servers {
        let port = ns.connections.first().map_or(DNS_PORT, |c| c.port);
        let a = SocketAddr::new(ns.ip, port);
        if !out.contains(&a) {
            out.push(a);
        }
    }
    if out.is_empty() {
        return Err(DnsError::SystemConfig("no nameserver listed".into()));
    }
    Ok(out)
}

/// A resolver builder with the settings every resolver here shares.
pub(crate) fn resolver_builder(
    config: &DnsConfig,
) -> Result<ResolverBuilder<TokioRuntimeProvider>, DnsError> {
    let addrs = config.nameserver_addrs()?;
    let mut builder = if addrs.is_empty() {
        TokioResolver::builder_tokio().map_err(|e| DnsError::SystemConfig(e.to_string()))?
    } else {
        let servers = addrs
            .iter()
            .map(|a| {
                let mut udp = ConnectionConfig::udp();
                udp.port = a.port();
                let mut tcp = ConnectionConfig::tcp();
                tcp.port = a.port();
                NameServerConfig::new(a.ip(), true, vec![udp, tcp])
            })
            .collect();
        TokioResolver::builder_with_config(
            ResolverConfig::from_parts(None, Vec::new(), servers),
            TokioRuntimeProvider::default(),
        )
        .with_options(ResolverOpts::default())
    };
    let opts = builder.options_mut();
    opts.timeout = config.timeout;
    opts.attempts = config.attempts;
    opts.edns0 = true;
    opts.use_hosts_file = ResolveHosts::Never;
    // Published TTLs as they are: no floor that would keep stale data, no
    // ceiling beyond the protocol's.
    opts.positive_min_ttl = None;
    opts.negative_min_ttl = None;
    opts.positive_max_ttl = None;
    opts.negative_max_ttl = None;
    // Every name asked for here is absolute; never append search domains.
    opts.ndots = 0;
    Ok(builder)
}

/// Why a lookup gave no records.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LookupError {
    /// The name does not exist (NXDOMAIN).
    #[error("the name does not exist (NXDOMAIN)")]
    NxDomain,
    /// The name exists but has no records of the type asked for.
    #[error("no records of that type")]
    NoData,
    /// No usable answer (SERVFAIL, REFUSED, timeout, network error):
    /// nothing is known.
    #[error("lookup failed: {0}")]
    Failed(String),
    /// The name cannot be put in a query.
    #[error("not a name that can be looked up: {0}")]
    BadName(String),
}

impl LookupError {
    /// Whether the answer is knowledge (the records do not exist) rather
    /// than a failure to find out.
    pub fn is_definite(&self) -> bool {
        matches!(self, LookupError::NxDomain | LookupError::NoData)
    }
}

fn classify(e: NetError) -> LookupError {
    if e.is_nx_domain() {
        return LookupError::NxDomain;
    }
    if e.is_no_records_found() {
        return LookupError::NoData;
    }
    if let NetError::Dns(hickory_resolver::net::DnsError::ResponseCode(code)) = &e {
        return LookupError::Failed(response_code_text(*code));
    }
    match e {
        NetError::Timeout => LookupError::Failed("no answer (timed out)".into()),
        other => LookupError::Failed(other.to_string()),
    }
}

fn response_code_text(code: ResponseCode) -> String {
    match code {
        ResponseCode::ServFail => "the nameserver answered SERVFAIL".into(),
        ResponseCode::Refused => "the nameserver REFUSED the query".into(),
        ResponseCode::FormErr => "the nameserver answered FORMERR".into(),
        other => format!("the nameserver answered {other}"),
    }
}

/// An absolute DNS name for a domain or host name in text form.
pub fn absolute_name(name: &str) -> Result<Name, LookupError> {
    let mut n = Name::from_ascii(name).map_err(|e| LookupError::BadName(e.to_string()))?;
    n.set_fqdn(true);
    Ok(n)
}

/// A name as text: lower case, no trailing dot.
pub fn name_text(name: &Name) -> String {
    let s = name.to_ascii().to_ascii_lowercase();
    match s.strip_suffix('.') {
        Some(t) => t.to_string(),
        None => s,
    }
}

/// Look up records of one type. The answer keeps the whole response
/// message (header bits such as AD included) for callers that need it.
pub async fn lookup(
    resolver: &Resolver,
    name: &str,
    rtype: RecordType,
) -> Result<Lookup, LookupError> {
    let n = absolute_name(name)?;
    resolver.lookup(n, rtype).await.map_err(classify)
}

/// What an MX lookup found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MxAnswer {
    /// Mail exchangers as (preference, host), most preferred first, host
    /// names lower case without a trailing dot.
    Hosts(Vec<(u16, String)>),
    /// RFC 7505 null MX: the domain accepts no mail.
    NullMx,
    /// The domain exists but publishes no MX: the domain itself is the
    /// implicit mail exchanger (RFC 5321 section 5.1).
    NoMx,
}

/// Look up a domain's MX records. NXDOMAIN is an error (the domain does
/// not exist); a name without MX records gives [`MxAnswer::NoMx`].
pub async fn lookup_mx(resolver: &Resolver, domain: &str) -> Result<MxAnswer, LookupError> {
    let answer = match lookup(resolver, domain, RecordType::MX).await {
        Ok(l) => l,
        Err(LookupError::NoData) => return Ok(MxAnswer::NoMx),
        Err(e) => return Err(e),
    };
    let mut hosts: Vec<(u16, String)> = Vec::new();
    let mut null = false;
    for r in answer.answers() {
        if let RData::MX(mx) = &r.data {
            if mx.exchange.is_root() {
                null = true;
            } else {
                let h = (mx.preference, name_text(&mx.exchange));
                if !hosts.contains(&h) {
                    hosts.push(h);
                }
            }
        }
    }
    if hosts.is_empty() {
        return Ok(if null {
            MxAnswer::NullMx
        } else {
            MxAnswer::NoMx
        });
    }
    // A "." mixed with real exchangers is a misconfiguration; the real ones
    // are what a sender uses.
    hosts.sort();
    Ok(MxAnswer::Hosts(hosts))
}

/// Look up a host's addresses: A and AAAA, asked at the same time. The
/// result alternates IPv4 and IPv6 (IPv4 first) so that a limit keeps
/// both families; at most `max` addresses are returned. An error only when
/// neither lookup found anything: one family failing while the other
/// answered is not an error.
pub async fn lookup_addresses(
    resolver: &Resolver,
    host: &str,
    max: usize,
) -> Result<Vec<IpAddr>, LookupError> {
    let (v4, v6) = tokio::join!(
        lookup(resolver, host, RecordType::A),
        lookup(resolver, host, RecordType::AAAA)
    );
    let v4s: Vec<Ipv4Addr> = match &v4 {
        Ok(l) => l
            .answers()
            .iter()
            .filter_map(|r| match &r.data {
                RData::A(a) => Some(a.0),
                _ => None,
            })
            .collect(),
        Err(_) => Vec::new(),
    };
    let v6s: Vec<Ipv6Addr> = match &v6 {
        Ok(l) => l
            .answers()
            .iter()
            .filter_map(|r| match &r.data {
                RData::AAAA(a) => Some(a.0),
                _ => None,
            })
            .collect(),
        Err(_) => Vec::new(),
    };
    if v4s.is_empty() && v6s.is_empty() {
        return Err(match (v4, v6) {
            (Err(LookupError::NxDomain), _) | (_, Err(LookupError::NxDomain)) => {
                LookupError::NxDomain
            }
            (Err(e @ (LookupError::Failed(_) | LookupError::BadName(_))), _)
            | (_, Err(e @ (LookupError::Failed(_) | LookupError::BadName(_)))) => e,
            _ => LookupError::NoData,
        });
    }
    let mut out = Vec::new();
    let (mut a, mut b) = (v4s.into_iter(), v6s.into_iter());
    loop {
        let x = a.next().map(IpAddr::V4);
        let y = b.next().map(IpAddr::V6);
        if x.is_none() && y.is_none() {
            break;
        }
        for ip in [x, y].into_iter().flatten() {
            if !out.contains(&ip) {
                out.push(ip);
            }
        }
    }
    out.truncate(max);
    Ok(out)
}

/// Look up TXT records, each record's strings joined into one string
/// (RFC 7208 and RFC 8461 read them that way). Records that are not
/// UTF-8 are skipped.
pub async fn lookup_txt(resolver: &Resolver, name: &str) -> Result<Vec<String>, LookupError> {
    let answer = lookup(resolver, name, RecordType::TXT).await?;
    Ok(answer
        .answers()
        .iter()
        .filter_map(|r| match &r.data {
            RData::TXT(t) => {
                let bytes: Vec<u8> = t.txt_data.iter().flat_map(|s| s.iter().copied()).collect();
                String::from_utf8(bytes).ok()
            }
            _ => None,
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nameserver_forms() {
        assert_eq!(
            parse_nameserver("127.0.0.1").unwrap(),
            "127.0.0.1:53".parse().unwrap()
        );
        assert_eq!(
            parse_nameserver("127.0.0.1:5353").unwrap(),
            "127.0.0.1:5353".parse().unwrap()
        );
        assert_eq!(
            parse_nameserver("::1").unwrap(),
            "[::1]:53".parse().unwrap()
        );
        assert_eq!(
            parse_nameserver("[::1]").unwrap(),
            "[::1]:53".parse().unwrap()
        );
        assert_eq!(
            parse_nameserver("[::1]:5353").unwrap(),
            "[::1]:5353".parse().unwrap()
        );
        for bad in [
            "",
            "ns1.example",
            "127.0.0.1:",
            "127.0.0.1:0",
            "1.2.3.4:99999",
            "0.0.0.0",
        ] {
            assert!(parse_nameserver(bad).is_err(), "{bad:?}");
        }
        let e = parse_nameserver("ns1.example").unwrap_err();
        assert!(e.contains("host names are not accepted"), "{e}");
    }

    #[test]
    fn config_defaults_and_validation() {
        let c: DnsConfig = toml::from_str("").unwrap();
        assert_eq!(c, DnsConfig::default());
        assert_eq!(c.timeout, Duration::from_secs(5));
        assert_eq!(c.attempts, 2);
        assert!(c.validate().is_ok());

        let c: DnsConfig = toml::from_str(
            "nameservers = [\"127.0.0.1:5353\"]\ntimeout = \"500ms\"\nattempts = 1\n",
        )
        .unwrap();
        assert_eq!(c.timeout, Duration::from_millis(500));
        assert!(c.validate().is_ok());

        let c: DnsConfig = toml::from_str("nameservers = [\"resolver.example\"]\n").unwrap();
        let e = c.validate().unwrap_err();
        assert!(e.starts_with("nameservers: "), "{e}");

        assert!(toml::from_str::<DnsConfig>("timeout = \"soon\"\n").is_err());
        assert!(toml::from_str::<DnsConfig>("servers = []\n").is_err());
        let c: DnsConfig = toml::from_str("attempts = 0\n").unwrap();
        assert!(c.validate().unwrap_err().contains("attempts"));
    }

    #[test]
    fn build_with_explicit_nameservers() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let c = DnsConfig {
                nameservers: vec!["127.0.0.1:5353".into(), "[::1]:5353".into()],
                ..DnsConfig::default()
            };
            assert!(build_resolver(&c).is_ok());
            let bad = DnsConfig {
                nameservers: vec!["x".into()],
                ..DnsConfig::default()
            };
            let e = build_resolver(&bad).unwrap_err().to_string();
            assert!(e.starts_with("dns.nameservers: "), "{e}");
        });
    }

    #[test]
    fn names() {
        let n = absolute_name("Mx1.Example.COM").unwrap();
        assert!(n.is_fqdn());
        assert_eq!(name_text(&n), "mx1.example.com");
        assert!(LookupError::NoData.is_definite());
        assert!(!LookupError::Failed("x".into()).is_definite());
    }
}
