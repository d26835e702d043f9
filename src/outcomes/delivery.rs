//! A delivery status line (`log_adhoc` in Postfix's `src/global/log_adhoc.c`):
//! `QUEUEID: to=<ADDR>[, orig_to=<ADDR>], relay=RELAY[, conn_use=N],
//! delay=D, delays=a/b/c/d[, tls=FEATURES], dsn=X.Y.Z, status=STATUS (TEXT)`,
//! with 3.11's `tls=` feature status (`pol_stats_format`), and the TLS
//! failure a status text names (the deferral reasons of `smtp_proto.c`,
//! `smtp_tls_policy.c`).

use std::time::Duration;

use super::peer::{Endpoint, TlsFailureKind};
use super::syslog::parse_digits;

/// Where a delivery went (`relay=`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Relay {
    /// `relay=none`: no connection was made.
    None,
    Peer(Endpoint),
    /// Anything else (`local`, `virtual`, a transport name).
    Other(String),
}

/// `status=`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Status {
    Sent,
    Deferred,
    Bounced,
    Expired,
    Other(String),
}

/// One entry of 3.11's `tls=` field (`may/!requiretls:nostarttls`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFeature {
    pub name: String,
    /// `:final`: the feature ended at this level instead.
    pub downgraded_to: Option<String>,
    /// `!`: the policy was not met and delivery was blocked.
    pub violated: bool,
    /// `?`: left undecided (e.g. lost connection).
    pub undecided: bool,
}

/// A delivery status line from `log_adhoc`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    pub queue_id: String,
    pub to: String,
    pub orig_to: Option<String>,
    pub relay: Relay,
    /// `conn_use=N`: the Nth delivery over a cached connection (absent on
    /// a new connection's first message).
    pub conn_use: Option<u32>,
    pub delay: Option<Duration>,
    /// `delays=a/b/c/d` as written.
    pub delays: Option<String>,
    /// Postfix ≥ 3.11 `tls=`, as written.
    pub tls: Option<String>,
    pub dsn: String,
    pub status: Status,
    /// The text in parentheses after the status (the remote reply or the
    /// reason), without the parentheses.
    pub text: String,
}

impl Delivery {
    /// The `tls=` field, split into features.
    pub fn tls_features(&self) -> Vec<TlsFeature> {
        self.tls
            .as_deref()
            .map(parse_tls_features)
            .unwrap_or_default()
    }

    /// The TLS failure this status line reports, if any (from its text).
    pub fn tls_failure(&self) -> Option<TlsFailureKind> {
        classify_status_text(&self.text)
    }
}

/// Longest accepted queue id (Postfix long queue ids are about 17 chars).
const MAX_QUEUE_ID: usize = 32;

pub(super) fn parse_delivery(msg: &str) -> Option<Delivery> {
    let (queue_id, rest) = msg.split_once(": ")?;
    if queue_id.is_empty()
        || queue_id.len() > MAX_QUEUE_ID
        || !queue_id.bytes().all(|b| b.is_ascii_alphanumeric())
    {
        return None;
    }
    let rest = rest.strip_prefix("to=<")?;
    let (to, mut rest) = split_address(rest)?;
    let mut orig_to = None;
    if let Some(r) = rest.strip_prefix("orig_to=<") {
        let (o, r) = split_address(r)?;
        orig_to = Some(o.to_string());
        rest = r;
    }
    let rest = rest.strip_prefix("relay=")?;
    let (relay, mut rest) = rest.split_once(", ")?;
    let relay = match relay {
        "none" => Relay::None,
        r => Endpoint::parse(r).map_or_else(|| Relay::Other(r.to_string()), Relay::Peer),
    };
    let mut d = Delivery {
        queue_id: queue_id.to_string(),
        to: to.to_string(),
        orig_to,
        relay,
        conn_use: None,
        delay: None,
        delays: None,
        tls: None,
        dsn: String::new(),
        status: Status::Other(String::new()),
        text: String::new(),
    };
    // Fields up to `status=`, which comes last (its text may hold anything).
    loop {
        if let Some(s) = rest.strip_prefix("status=") {
            let (status, text) = parse_status(s)?;
            d.status = status;
            d.text = text.to_string();
            break;
        }
        let (field, r) = rest.split_once(", ")?;
        rest = r;
        let (name, value) = field.split_once('=')?;
        match name {
            "conn_use" => d.conn_use = Some(u32::try_from(parse_digits(value)?).ok()?),
            "delay" => d.delay = parse_seconds(value),
            "delays" => d.delays = Some(value.to_string()),
            "tls" => d.tls = Some(value.to_string()),
            "dsn" => d.dsn = value.to_string(),
            _ => {} // a field from a newer Postfix
        }
    }
    (!d.dsn.is_empty()).then_some(d)
}

/// The address up to `>, ` before the next field (`orig_to=<` or `relay=`).
/// Addresses may hold spaces, quotes, commas and even `>`.
fn split_address(s: &str) -> Option<(&str, &str)> {
    // Postfix quotes a local part holding specials: skip `>` inside quotes.
    let mut quoted = false;
    let mut escaped = false;
    for (i, b) in s.bytes().enumerate() {
        match b {
            _ if escaped => escaped = false,
            b'\\' if quoted => escaped = true,
            b'"' => quoted = !quoted,
            b'>' if !quoted => {
                if let Some(next) = s[i..].strip_prefix(">, ") {
                    if next.starts_with("orig_to=<") || next.starts_with("relay=") {
                        return Some((&s[..i], next));
                    }
                }
            }
            _ => {}
        }
    }
    // Unbalanced quotes: the first `>, ` before a field name.
    let mut from = 0;
    while let Some(i) = s[from..].find(">, ") {
        let at = from + i;
        let next = &s[at + 3..];
        if next.starts_with("orig_to=<") || next.starts_with("relay=") {
            return Some((&s[..at], next));
        }
        from = at + 1;
    }
    None
}

/// `WORD (TEXT)` at the end of the line; also `expired, returned to sender`.
fn parse_status(s: &str) -> Option<(Status, &str)> {
    let end = s.find([' ', ',']).unwrap_or(s.len());
    let (word, rest) = s.split_at(end);
    let status = match word {
        "sent" => Status::Sent,
        "deferred" => Status::Deferred,
        "bounced" => Status::Bounced,
        "expired" => Status::Expired,
        "" => return None,
        w => Status::Other(w.to_string()),
    };
    let text = match rest.strip_prefix(" (").and_then(|r| r.strip_suffix(')')) {
        Some(t) => t,
        None => rest.trim_start_matches([',', ' ']),
    };
    Some((status, text))
}

/// `0.2`, `8.4`, `1234` (seconds).
fn parse_seconds(s: &str) -> Option<Duration> {
    if s.is_empty() || s.len() > 20 || !s.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        return None;
    }
    let v: f64 = s.parse().ok()?;
    Duration::try_from_secs_f64(v).ok()
}

/// Split a `tls=` value (`feature/feature`, each `[!]name[:final][?]`).
pub fn parse_tls_features(s: &str) -> Vec<TlsFeature> {
    s.split('/')
        .filter(|f| !f.is_empty())
        .map(|f| {
            let (violated, f) = match f.strip_prefix('!') {
                Some(f) => (true, f),
                None => (false, f),
            };
            let (undecided, f) = match f.strip_suffix('?') {
                Some(f) => (true, f),
                None => (false, f),
            };
            let (name, downgraded_to) = match f.split_once(':') {
                Some((n, d)) => (n, Some(d.to_string())),
                None => (f, None),
            };
            TlsFeature {
                name: name.to_string(),
                downgraded_to,
                violated,
                undecided,
            }
        })
        .collect()
}

/// The TLS failure a deferral/bounce reason names, if any.
pub fn classify_status_text(text: &str) -> Option<TlsFailureKind> {
    use TlsFailureKind::*;
    const PATTERNS: [(&str, TlsFailureKind); 10] = [
        ("TLS is required, but was not offered by host", NotOffered),
        (
            "REQUIRETLS, but TLS service was not offered by host",
            NotOffered,
        ),
        ("TLS is required, but host ", StartTlsRefused),
        ("REQUIRETLS, but host ", StartTlsRefused),
        (
            "TLS is required, but our TLS engine is unavailable",
            TlsUnavailable,
        ),
        ("TLS is required, but unavailable", TlsUnavailable),
        ("Server certificate not verified", CertNotVerified),
        ("Cannot start TLS: handshake failure", HandshakeFailed),
        ("client TLS configuration problem", ConfigProblem),
        ("TLSA lookup error for ", TlsaLookupError),
    ];
    PATTERNS
        .iter()
        .find(|(p, _)| text.contains(p))
        .map(|(_, k)| *k)
}
