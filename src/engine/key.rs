//! Destination keys as Postfix sends them to `smtp_tls_policy_maps`, and the
//! name normalisation shared by keys and policy-file entries.
//!
//! Postfix sends one of these forms (see `postconf(5)`, `smtp_tls_policy_maps`):
//!
//! | key              | meaning                                                    |
//! |------------------|------------------------------------------------------------|
//! | `example.com`    | next-hop domain (recipient domain when routed by MX)       |
//! | `.example.com`   | parent-domain walk: "some subdomain of example.com"        |
//! | `[host]`         | explicit next-hop host, MX lookup suppressed               |
//! | `[host]:port`    | the same, with a port                                      |
//! | `host:port`      | next-hop host with MX lookup and a port                    |
//!
//! Keys keep the case the sender typed, may carry a trailing dot and may be
//! internationalised; all of that is folded here so `Bank.Example.`,
//! `bank.example` and their A-label forms are one name.

use std::fmt;
use std::net::IpAddr;

use crate::util::decimal::Decimal;

/// Longest domain name accepted (RFC 1035: 253 characters in text form).
pub const MAX_NAME_LEN: usize = 253;
/// Longest label accepted (RFC 1035).
pub const MAX_LABEL_LEN: usize = 63;

/// The form of a destination key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KeyForm {
    /// `example.com`
    Domain,
    /// `.example.com`: Postfix's parent-domain walk.
    Parent,
    /// `[host]`
    Host,
    /// `[host]:port`
    HostPort,
    /// `host:port`
    NamePort,
}

impl KeyForm {
    pub fn as_str(self) -> &'static str {
        match self {
            KeyForm::Domain => "domain",
            KeyForm::Parent => "parent",
            KeyForm::Host => "[host]",
            KeyForm::HostPort => "[host]:port",
            KeyForm::NamePort => "host:port",
        }
    }

    /// Whether the key names a mail domain (as opposed to a host chosen by a
    /// transport). Domain-based sources (MTA-STS, DANE by MX) only apply here.
    pub fn is_domain(self) -> bool {
        matches!(self, KeyForm::Domain)
    }
}

/// A parsed, normalised destination key.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Destination {
    pub form: KeyForm,
    /// Lower-case A-label name without trailing dot, or a canonical IP
    /// address for `[192.0.2.1]` style keys. For `.parent` keys this is the
    /// parent without the leading dot.
    pub name: String,
    /// Port for `[host]:port` and `host:port`.
    pub port: Option<u16>,
    /// True when `name` is an IP address literal.
    pub is_ip: bool,
}

impl Destination {
    /// Parse a key exactly as Postfix sends it.
    pub fn parse(key: &str) -> Result<Destination, KeyError> {
        if key.is_empty() {
            return Err(KeyError::Empty);
        }
        if let Some(rest) = key.strip_prefix('[') {
            let close = rest.find(']').ok_or(KeyError::UnclosedBracket)?;
            let host = &rest[..close];
            let after = &rest[close + 1..];
            let (form, port) = if after.is_empty() {
                (KeyForm::Host, None)
            } else if let Some(p) = after.strip_prefix(':') {
                (KeyForm::HostPort, Some(parse_port(p)?))
            } else {
                return Err(KeyError::TrailingGarbage);
            };
            let (name, is_ip) = normalize_host(host)?;
            return Ok(Destination {
                form,
                name,
                port,
                is_ip,
            });
        }
        if let Some(parent) = key.strip_prefix('.') {
            if parent.bytes().any(|b| b == b':') {
                return Err(KeyError::BadName(NameError::BadChar(':')));
            }
            let name = normalize_domain(parent)?;
            return Ok(Destination {
                form: KeyForm::Parent,
                name,
                port: None,
                is_ip: false,
            });
        }
        if let Some(colon) = key.bytes().rposition(|b| b == b':') {
            let (host, port) = (&key[..colon], &key[colon + 1..]);
            let port = parse_port(port)?;
            let name = normalize_domain(host)?;
            return Ok(Destination {
                form: KeyForm::NamePort,
                name,
                port: Some(port),
                is_ip: false,
            });
        }
        let name = normalize_domain(key)?;
        Ok(Destination {
            form: KeyForm::Domain,
            name,
            port: None,
            is_ip: false,
        })
    }

    /// The canonical text of this key (`[host]:25`, `.example.com`, ...),
    /// used to index next-hop rules.
    pub fn canonical(&self) -> String {
        let mut text = String::with_capacity(self.name.len() + 14);
        let bracketed = matches!(self.form, KeyForm::Host | KeyForm::HostPort);
        match self.form {
            KeyForm::Parent => text.push('.'),
            KeyForm::Host | KeyForm::HostPort => text.push('['),
            KeyForm::Domain | KeyForm::NamePort => {}
        }
        self.push_host(&mut text);
        if bracketed {
            text.push(']');
        }
        if let (KeyForm::HostPort | KeyForm::NamePort, Some(port)) = (self.form, self.port) {
            text.push(':');
            text.push_str(Decimal::new(port.into()).as_str());
        }
        text
    }
}

impl Destination {
    /// The host part as written inside brackets: the name, or an IP
    /// literal (`ipv6:` prefixed for IPv6, as Postfix writes it).
    pub fn host_text(&self) -> String {
        let mut text = String::with_capacity(self.name.len() + 5);
        self.push_host(&mut text);
        text
    }

    fn push_host(&self, text: &mut String) {
        if self.is_ip && self.name.contains(':') {
            text.push_str("ipv6:");
        }
        text.push_str(&self.name);
    }
}

impl fmt::Display for Destination {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.canonical())
    }
}

/// Why a key or name was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("empty key")]
    Empty,
    #[error("'[' without matching ']'")]
    UnclosedBracket,
    #[error("text after ']' that is not ':port'")]
    TrailingGarbage,
    #[error("bad port {0:?} (1-65535)")]
    BadPort(String),
    #[error(transparent)]
    BadName(NameError),
}

impl From<NameError> for KeyError {
    fn from(e: NameError) -> Self {
        KeyError::BadName(e)
    }
}

/// Why a domain name was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("empty domain name")]
    Empty,
    #[error("domain name is {0} characters long (at most {MAX_NAME_LEN})")]
    TooLong(usize),
    #[error("empty label (two dots in a row?)")]
    EmptyLabel,
    #[error("label is {0} characters long (at most {MAX_LABEL_LEN})")]
    LabelTooLong(usize),
    #[error("character {0:?} is not allowed in a domain name")]
    BadChar(char),
    #[error("not a valid internationalised domain name")]
    Idna,
}

fn parse_port(p: &str) -> Result<u16, KeyError> {
    if p.is_empty() || p.len() > 5 || !p.bytes().all(|b| b.is_ascii_digit()) {
        return Err(KeyError::BadPort(p.to_string()));
    }
    match p.parse::<u16>() {
        Ok(0) | Err(_) => Err(KeyError::BadPort(p.to_string())),
        Ok(n) => Ok(n),
    }
}

/// Normalise the inside of `[...]`: an IP literal (optionally `ipv6:`
/// prefixed, as in Postfix) or a host name.
fn normalize_host(host: &str) -> Result<(String, bool), KeyError> {
    let literal = host
        .strip_prefix("ipv6:")
        .or_else(|| host.strip_prefix("IPv6:"))
        .or_else(|| host.strip_prefix("IPV6:"))
        .unwrap_or(host);
    if let Ok(ip) = literal.parse::<IpAddr>() {
        return Ok((ip.to_string(), true));
    }
    Ok((normalize_domain(host)?, false))
}

/// Fold a domain name to its canonical form: lower case, A-labels, no
/// trailing dot. ASCII names (the common case) take a fast path that only
/// lower-cases and checks syntax; names with non-ASCII characters go through
/// UTS #46 processing so U-labels and A-labels compare equal.
pub fn normalize_domain(name: &str) -> Result<String, NameError> {
    let name = name.strip_suffix('.').unwrap_or(name);
    if name.is_empty() {
        return Err(NameError::Empty);
    }
    let ascii = if name.is_ascii() {
        name.to_ascii_lowercase()
    } else {
        idna::domain_to_ascii(name).map_err(|_| NameError::Idna)?
    };
    check_ascii_name(ascii.as_bytes())?;
    Ok(ascii)
}

/// What a byte is in an ASCII name: [`NAME_BYTES`].
const BAD: u8 = 0;
const LABEL: u8 = 1;
const DOT: u8 = 2;

/// The class of every byte: a letter, digit, `-` or `_` is part of a
/// label, `.` ends one, anything else is not allowed.
const NAME_BYTES: [u8; 256] = {
    let mut t = [BAD; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        if c.is_ascii_alphanumeric() || c == b'-' || c == b'_' {
            t[b] = LABEL;
        } else if c == b'.' {
            t[b] = DOT;
        }
        b += 1;
    }
    t
};

/// Syntax check on an ASCII name, in one pass over its bytes: the whole
/// name at most [`MAX_NAME_LEN`], then label by label, emptiness, then
/// length, then the first character that is not a letter, digit, `-` or
/// `_`. Underscores are accepted: they occur in real host names and
/// Postfix passes them through.
fn check_ascii_name(name: &[u8]) -> Result<(), NameError> {
    if name.is_empty() {
        return Err(NameError::Empty);
    }
    if name.len() > MAX_NAME_LEN {
        return Err(NameError::TooLong(name.len()));
    }
    let label_done = |len: usize, bad: Option<u8>| {
        if len == 0 {
            Err(NameError::EmptyLabel)
        } else if len > MAX_LABEL_LEN {
            Err(NameError::LabelTooLong(len))
        } else if let Some(b) = bad {
            Err(NameError::BadChar(char::from(b)))
        } else {
            Ok(())
        }
    };
    let mut label_start = 0;
    let mut bad = None;
    for (i, &b) in name.iter().enumerate() {
        match NAME_BYTES[usize::from(b)] {
            LABEL => {}
            DOT => {
                label_done(i - label_start, bad)?;
                label_start = i + 1;
                bad = None;
            }
            _ => {
                if bad.is_none() {
                    bad = Some(b);
                }
            }
        }
    }
    label_done(name.len() - label_start, bad)
}

/// The strict parent domains of `name`, most specific first:
/// `a.b.example` gives `b.example`, `example`.
pub fn parents(name: &str) -> impl Iterator<Item = &str> {
    // Bytes, not a `char` pattern: names are short and searched per lookup.
    name.bytes()
        .enumerate()
        .filter(|&(_, b)| b == b'.')
        .map(move |(i, _)| &name[i + 1..])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(key: &str) -> Destination {
        Destination::parse(key).unwrap_or_else(|e| panic!("{key}: {e}"))
    }

    #[test]
    fn plain_domain_is_folded() {
        let x = d("Bank.EXAMPLE.");
        assert_eq!(x.form, KeyForm::Domain);
        assert_eq!(x.name, "bank.example");
        assert_eq!(x.port, None);
    }

    #[test]
    fn parent_key() {
        let x = d(".Example.COM");
        assert_eq!(x.form, KeyForm::Parent);
        assert_eq!(x.name, "example.com");
        assert_eq!(x.canonical(), ".example.com");
        let top = d(".com");
        assert_eq!(top.name, "com");
    }

    #[test]
    fn bracket_forms() {
        let h = d("[MX1.Bank.Example]");
        assert_eq!(
            (h.form, h.name.as_str(), h.port),
            (KeyForm::Host, "mx1.bank.example", None)
        );
        let hp = d("[mx1.bank.example]:587");
        assert_eq!(hp.form, KeyForm::HostPort);
        assert_eq!(hp.port, Some(587));
        assert_eq!(hp.canonical(), "[mx1.bank.example]:587");
        let np = d("Relay.Example:2525");
        assert_eq!(np.form, KeyForm::NamePort);
        assert_eq!(np.canonical(), "relay.example:2525");
    }

    #[test]
    fn ip_literals() {
        let v4 = d("[192.0.2.1]:25");
        assert!(v4.is_ip);
        assert_eq!(v4.canonical(), "[192.0.2.1]:25");
        let v6 = d("[ipv6:2001:DB8::1]");
        assert!(v6.is_ip);
        assert_eq!(v6.name, "2001:db8::1");
        assert_eq!(v6.canonical(), "[ipv6:2001:db8::1]");
        assert_eq!(d("[2001:db8::1]:25").port, Some(25));
    }

    #[test]
    fn idn_labels_match() {
        let u = d("Bücher.Example");
        let a = d("XN--BCHER-KVA.example.");
        assert_eq!(u.name, "xn--bcher-kva.example");
        assert_eq!(u.name, a.name);
    }

    #[test]
    fn bad_keys() {
        assert_eq!(Destination::parse(""), Err(KeyError::Empty));
        assert_eq!(Destination::parse("[x"), Err(KeyError::UnclosedBracket));
        assert_eq!(Destination::parse("[x]y"), Err(KeyError::TrailingGarbage));
        assert!(matches!(
            Destination::parse("[x]:0"),
            Err(KeyError::BadPort(_))
        ));
        assert!(matches!(
            Destination::parse("[x]:65536"),
            Err(KeyError::BadPort(_))
        ));
        assert!(matches!(
            Destination::parse("x:+25"),
            Err(KeyError::BadPort(_))
        ));
        assert_eq!(
            Destination::parse("a..b"),
            Err(KeyError::BadName(NameError::EmptyLabel))
        );
        assert_eq!(
            Destination::parse("a b"),
            Err(KeyError::BadName(NameError::BadChar(' ')))
        );
        assert_eq!(
            Destination::parse("."),
            Err(KeyError::BadName(NameError::Empty))
        );
    }

    /// The label-by-label check the one-pass check replaces.
    fn reference(name: &str) -> Result<String, NameError> {
        let name = name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase();
        if name.is_empty() {
            return Err(NameError::Empty);
        }
        if name.len() > MAX_NAME_LEN {
            return Err(NameError::TooLong(name.len()));
        }
        for label in name.split('.') {
            if label.is_empty() {
                return Err(NameError::EmptyLabel);
            }
            if label.len() > MAX_LABEL_LEN {
                return Err(NameError::LabelTooLong(label.len()));
            }
            if let Some(b) = label
                .bytes()
                .find(|b| !(b.is_ascii_alphanumeric() || *b == b'-' || *b == b'_'))
            {
                return Err(NameError::BadChar(char::from(b)));
            }
        }
        Ok(name)
    }

    /// ASCII names built from pieces that hit every check in every
    /// position and combination give the same name or error as the
    /// label-by-label check: which problem is reported first is part of
    /// the log lines operators read.
    #[test]
    fn one_pass_check_agrees_with_label_by_label_check() {
        let long = "L".repeat(64);
        let pieces = [
            "a", "B", "-", "_", ".", "..", " ", "\"", ":", "\u{7f}", "9", &long,
        ];
        let mut checked = 0;
        for a in &pieces {
            for b in &pieces {
                for c in &pieces {
                    for tail in ["", "."] {
                        let name = format!("{a}{b}{c}{tail}");
                        assert_eq!(normalize_domain(&name), reference(&name), "{name:?}");
                        let framed = format!("x{name}.Example");
                        assert_eq!(normalize_domain(&framed), reference(&framed), "{framed:?}");
                        checked += 2;
                    }
                }
            }
        }
        assert_eq!(checked, 12 * 12 * 12 * 2 * 2);
        // Every ASCII byte inside a label, alone and at its edges.
        for b in 0u8..0x80 {
            let c = char::from(b);
            for name in [format!("a{c}b.example"), format!("{c}"), format!("x.{c}")] {
                assert_eq!(normalize_domain(&name), reference(&name), "{name:?}");
            }
        }
        let over = format!("{}.{}", "a".repeat(200), "b".repeat(60));
        assert_eq!(normalize_domain(&over), Err(NameError::TooLong(261)));
        assert_eq!(normalize_domain(&over), reference(&over));
    }

    #[test]
    fn length_boundaries() {
        let label63 = "a".repeat(63);
        assert!(normalize_domain(&format!("{label63}.example")).is_ok());
        let label64 = "a".repeat(64);
        assert_eq!(
            normalize_domain(&format!("{label64}.example")),
            Err(NameError::LabelTooLong(64))
        );
        // 4 labels of 62 + 3 dots = 251, plus ".x" = 253: accepted.
        let l62 = "b".repeat(62);
        let n253 = format!("{l62}.{l62}.{l62}.{l62}.x");
        assert_eq!(n253.len(), 253);
        assert!(normalize_domain(&n253).is_ok());
        let n254 = format!("{l62}.{l62}.{l62}.{l62}.xy");
        assert_eq!(normalize_domain(&n254), Err(NameError::TooLong(254)));
        // A trailing dot does not count.
        assert!(normalize_domain(&format!("{n253}.")).is_ok());
    }

    #[test]
    fn parent_walk_order() {
        let p: Vec<_> = parents("a.b.example").collect();
        assert_eq!(p, ["b.example", "example"]);
        assert_eq!(parents("example").count(), 0);
    }
}
