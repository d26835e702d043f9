//! The message part of a Postfix smtp/lmtp (or tlsproxy) log line as a
//! typed [`Event`]: the TLS summary (`Verified TLS connection established
//! to ...`), a delivery status line (`QUEUEID: to=<...>, relay=...,
//! status=...`), the TLS failures logged on their own lines, and the
//! warnings Postfix logs when it cannot get a TLS policy answer. Everything
//! else is [`Event::Unknown`]. Pure and total: any string gives an event.
//! Status lines themselves are parsed in [`super::delivery`].
//!
//! The formats come from Postfix's source (3.7 to 3.12): `tls_log_summary`
//! in `src/tls/tls_misc.c`, `log_adhoc` in `src/global/log_adhoc.c`
//! (including 3.11's `tls=` feature status from `pol_stats_format`),
//! `tls_log_verify_error` in `src/tls/tls_verify.c`, `tls_client_start` in
//! `src/tls/tls_client.c`, `smtp_connect.c`, `smtp_proto.c`,
//! `smtp_tls_policy.c` and `util/dict_sockmap.c`.

use super::delivery::parse_delivery;
pub use super::delivery::{
    Delivery, Relay, Status, TlsFeature, classify_status_text, parse_tls_features,
};
pub use super::peer::{Endpoint, TlsFailureKind};
use super::syslog::parse_digits;

/// How far the server certificate was checked (`tls_log_summary`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Trust {
    /// No certificate (anonymous cipher or raw key without policy).
    Anonymous,
    /// A certificate that was not checked or did not chain to a trust anchor.
    Untrusted,
    /// Chains to a trusted CA, name not checked.
    Trusted,
    /// Chains and matches the policy (`verify`, `secure`, `dane`, `fingerprint`).
    Verified,
}

/// `... TLS connection established to HOST[IP]:PORT: PROTOCOL with cipher ...`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsEstablished {
    pub trust: Trust,
    /// `reused`: a cached TLS connection taken up again (Postfix logs this
    /// when a connection from the cache, through tlsproxy, is reused).
    pub reused: bool,
    /// `to` (client side) rather than `from` (server side).
    pub outbound: bool,
    pub peer: Endpoint,
    pub protocol: String,
    pub cipher: String,
    /// `(used bits, algorithm bits)`.
    pub bits: Option<(u16, u16)>,
    /// What follows the bits: `key-exchange X25519 server-signature ...`.
    pub extra: String,
}

/// A TLS failure logged on its own line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFailure {
    pub kind: TlsFailureKind,
    pub peer: Option<Endpoint>,
    pub detail: String,
}

/// What one smtp/lmtp message says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    TlsEstablished(TlsEstablished),
    Delivery(Delivery),
    TlsFailure(TlsFailure),
    /// `connect to HOST[ADDR]:PORT: REASON` (no connection was made).
    ConnectFailed {
        peer: Endpoint,
        detail: String,
    },
    /// `warning: TLS policy lookup [error ]for NEXTHOP/HOST: REASON`:
    /// delivery to that host gets no TLS policy (usually deferred with
    /// `client TLS configuration problem`).
    PolicyLookupFailed {
        nexthop: String,
        host: String,
        reason: String,
    },
    /// A table lookup warning: `table T lookup error: D`, `T lookup error
    /// for "KEY"`, `T socketmap server CLASS error: D`, or
    /// `smtp_tls_policy_maps, next-hop destination "KEY": policy table
    /// lookup error`. `table` is `type:name` or the parameter name.
    TableLookupError {
        table: String,
        key: Option<String>,
        detail: String,
    },
    /// `warning: connect to ENDPOINT: REASON` without a `host[addr]`: a
    /// table client (socketmap) could not reach its server.
    TableConnectFailed {
        endpoint: String,
        detail: String,
    },
    Unknown,
}

/// Parse the message of an smtp/lmtp/tlsproxy line.
pub fn parse_message(msg: &str) -> Event {
    if let Some(w) = msg.strip_prefix("warning: ") {
        return parse_warning(w).unwrap_or(Event::Unknown);
    }
    parse_info(msg).unwrap_or(Event::Unknown)
}

fn parse_info(msg: &str) -> Option<Event> {
    let first = msg.split(' ').next().unwrap_or("");
    match first {
        "Anonymous" | "Untrusted" | "Trusted" | "Verified" => {
            return parse_tls_summary(msg).map(Event::TlsEstablished);
        }
        "SSL_connect" => {
            let rest = msg.strip_prefix("SSL_connect error to ")?;
            let (peer, detail) = split_namaddr(rest)?;
            return Some(failure(TlsFailureKind::HandshakeFailed, Some(peer), detail));
        }
        "TLS" => {
            // tlsproxy (tlsproxy_state.c): `TLS handshake failed for
            // service=%s peer=%s`, the peer as `[addr]:port`.
            let rest = msg.strip_prefix("TLS handshake failed for ")?;
            let (service, peer) = rest.split_once(" peer=")?;
            return Some(failure(
                TlsFailureKind::HandshakeFailed,
                Some(Endpoint::parse(peer)?),
                service,
            ));
        }
        "connect" => {
            let rest = msg.strip_prefix("connect to ")?;
            let (peer, detail) = split_namaddr(rest)?;
            return Some(Event::ConnectFailed {
                peer,
                detail: detail.to_string(),
            });
        }
        _ => {}
    }
    // `[PURPOSE ]certificate verification failed for NAMADDR: DETAIL`
    // (tls_verify.c); PURPOSE is `server`, `client` or `CA`.
    const VERIFY: &str = "certificate verification failed for ";
    let verify = ["", "server ", "CA ", "client "]
        .iter()
        .find_map(|p| msg.strip_prefix(p)?.strip_prefix(VERIFY));
    if let Some(rest) = verify {
        let (peer, detail) = split_namaddr(rest)?;
        let kind = if detail.contains("DANE TLSA") {
            TlsFailureKind::DaneMismatch
        } else {
            TlsFailureKind::VerificationFailed
        };
        return Some(failure(kind, Some(peer), detail));
    }
    parse_delivery(msg).map(Event::Delivery)
}

fn failure(kind: TlsFailureKind, peer: Option<Endpoint>, detail: &str) -> Event {
    Event::TlsFailure(TlsFailure {
        kind,
        peer,
        detail: detail.to_string(),
    })
}

fn parse_warning(w: &str) -> Option<Event> {
    if let Some(rest) = w.strip_prefix("TLS library problem: ") {
        return Some(failure(TlsFailureKind::LibraryProblem, None, rest));
    }
    if let Some(rest) = w
        .strip_prefix("TLS policy lookup error for ")
        .or_else(|| w.strip_prefix("TLS policy lookup for "))
    {
        let (where_, reason) = rest.split_once(": ")?;
        let (nexthop, host) = where_.rsplit_once('/')?;
        return Some(Event::PolicyLookupFailed {
            nexthop: nexthop.to_string(),
            host: host.to_string(),
            reason: reason.to_string(),
        });
    }
    if let Some(rest) = w.strip_prefix("connect to ") {
        let (endpoint, detail) = rest.split_once(": ")?;
        if Endpoint::parse(endpoint).is_some() {
            return None;
        }
        return Some(Event::TableConnectFailed {
            endpoint: endpoint.to_string(),
            detail: detail.to_string(),
        });
    }
    if let Some(rest) = w.strip_prefix("table ") {
        let (table, detail) = rest.split_once(" lookup error")?;
        let detail = detail.strip_prefix(": ").unwrap_or(detail);
        return Some(table_error(table, None, detail));
    }
    if let Some((head, key)) = w.split_once(" lookup error for \"") {
        let key = key.strip_suffix('"')?;
        return Some(table_error(head, Some(key), "lookup error"));
    }
    if let Some((head, detail)) = w.split_once(" socketmap server ") {
        return Some(table_error(
            head,
            None,
            &format!("socketmap server {detail}"),
        ));
    }
    if let Some(head) = w.strip_suffix("\": policy table lookup error") {
        let (table, key) = head.split_once(", ")?;
        let key = key.split_once(" \"")?.1;
        return Some(table_error(table, Some(key), "policy table lookup error"));
    }
    let (peer, detail) = split_namaddr(w)?;
    if detail.starts_with("all TLSA records unusable")
        || detail.starts_with("all fingerprints unusable")
        || detail.starts_with("all trust anchors unusable")
    {
        return Some(failure(TlsFailureKind::TlsaUnusable, Some(peer), detail));
    }
    None
}

fn table_error(table: &str, key: Option<&str>, detail: &str) -> Event {
    Event::TableLookupError {
        table: table.to_string(),
        key: key.map(str::to_string),
        detail: detail.to_string(),
    }
}

/// `NAMADDR: rest`, where NAMADDR is `host[addr]` or `host[addr]:port`.
fn split_namaddr(s: &str) -> Option<(Endpoint, &str)> {
    let close = s.find(']')?;
    let after = &s[close + 1..];
    let sep = after.find(": ")?;
    let peer = Endpoint::parse(&s[..close + 1 + sep])?;
    Some((peer, &after[sep + 2..]))
}

fn parse_tls_summary(msg: &str) -> Option<TlsEstablished> {
    let (trust, rest) = msg.split_once(' ')?;
    let trust = match trust {
        "Anonymous" => Trust::Anonymous,
        "Untrusted" => Trust::Untrusted,
        "Trusted" => Trust::Trusted,
        "Verified" => Trust::Verified,
        _ => return None,
    };
    let rest = rest.strip_prefix("TLS connection ")?;
    let (usage, rest) = rest.split_once(' ')?;
    let reused = match usage {
        "established" => false,
        "reused" => true,
        _ => return None,
    };
    let (direction, rest) = rest.split_once(' ')?;
    let outbound = match direction {
        "to" => true,
        "from" => false,
        _ => return None,
    };
    let (peer, rest) = split_namaddr_sni(rest)?;
    let (protocol, rest) = rest.split_once(" with cipher ")?;
    let (cipher, rest) = rest.split_once(' ').unwrap_or((rest, ""));
    let (bits, extra) = match rest.strip_prefix('(') {
        Some(r) => {
            let (b, extra) = r.split_once(" bits)")?;
            let (used, alg) = b.split_once('/')?;
            let used = u16::try_from(parse_digits(used)?).ok()?;
            let alg = u16::try_from(parse_digits(alg)?).ok()?;
            (Some((used, alg)), extra.trim_start())
        }
        None => (None, rest),
    };
    if protocol.is_empty() || cipher.is_empty() {
        return None;
    }
    Some(TlsEstablished {
        trust,
        reused,
        outbound,
        peer,
        protocol: protocol.to_string(),
        cipher: cipher.to_string(),
        bits,
        extra: extra.to_string(),
    })
}

/// Like [`split_namaddr`], allowing the server side's ` to SNI` after it.
fn split_namaddr_sni(s: &str) -> Option<(Endpoint, &str)> {
    let (head, rest) = split_at_colon_after_bracket(s)?;
    let head = head.split_once(" to ").map_or(head, |(h, _sni)| h);
    Some((Endpoint::parse(head)?, rest))
}

fn split_at_colon_after_bracket(s: &str) -> Option<(&str, &str)> {
    let close = s.find(']')?;
    let sep = s[close..].find(": ")? + close;
    Some((&s[..sep], &s[sep + 2..]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn delivery(msg: &str) -> Delivery {
        match parse_message(msg) {
            Event::Delivery(d) => d,
            other => panic!("not a delivery: {other:?} for {msg}"),
        }
    }

    fn ep(host: &str, addr: &str, port: Option<u16>) -> Endpoint {
        Endpoint {
            host: host.into(),
            addr: addr.into(),
            port,
        }
    }

    #[test]
    fn tls_summary() {
        let m = "Verified TLS connection established to mx.verified.test[127.0.0.11]:25: \
                 TLSv1.3 with cipher TLS_AES_256_GCM_SHA384 (256/256 bits) key-exchange X25519 \
                 server-signature RSA-PSS (2048 bits) server-digest SHA256";
        let Event::TlsEstablished(t) = parse_message(m) else {
            panic!()
        };
        assert_eq!(t.trust, Trust::Verified);
        assert!(!t.reused && t.outbound);
        assert_eq!(t.peer, ep("mx.verified.test", "127.0.0.11", Some(25)));
        assert_eq!(t.protocol, "TLSv1.3");
        assert_eq!(t.cipher, "TLS_AES_256_GCM_SHA384");
        assert_eq!(t.bits, Some((256, 256)));
        assert!(t.extra.starts_with("key-exchange X25519"));
        let m =
            "Trusted TLS connection reused to ::1[::1]:25: TLSv1.3 with cipher X (128/256 bits)";
        let Event::TlsEstablished(t) = parse_message(m) else {
            panic!()
        };
        assert_eq!((t.trust, t.reused), (Trust::Trusted, true));
        assert_eq!(t.peer, ep("::1", "::1", Some(25)));
        assert_eq!(t.bits, Some((128, 256)));
        assert_eq!(t.extra, "");
        // Server side, with the SNI name after the peer.
        let m = "Anonymous TLS connection established from c.test[2001:db8::1]:41234 to mx.test: \
                 TLSv1.2 with cipher ADH (256/256 bits)";
        let Event::TlsEstablished(t) = parse_message(m) else {
            panic!()
        };
        assert_eq!((t.trust, t.outbound), (Trust::Anonymous, false));
        assert_eq!(t.peer, ep("c.test", "2001:db8::1", Some(41234)));
        for bad in [
            "Verified TLS connection established to mx: TLSv1.3 with cipher X (1/1 bits)",
            "Verified TLS connection maybe to a[b]:25: TLSv1.3 with cipher X",
            "Verified TLS connection established to a[b]:25: TLSv1.3 with cipher X (x/1 bits)",
            "Verified TLS connection established to a[b]:25: TLSv1.3",
            "Verified",
        ] {
            assert_eq!(parse_message(bad), Event::Unknown, "{bad}");
        }
    }

    #[test]
    fn delivery_fields() {
        let d = delivery(
            "7738D98C11B: to=<real@verified.test>, orig_to=<alias@verified.test>, \
             relay=mx.verified.test[127.0.0.11]:25, delay=0.2, delays=0.03/0.03/0.06/0.08, \
             dsn=2.0.0, status=sent (250 2.0.0 Ok: queued as 9974198C1B7)",
        );
        assert_eq!(d.queue_id, "7738D98C11B");
        assert_eq!(d.to, "real@verified.test");
        assert_eq!(d.orig_to.as_deref(), Some("alias@verified.test"));
        assert_eq!(
            d.relay,
            Relay::Peer(ep("mx.verified.test", "127.0.0.11", Some(25)))
        );
        assert_eq!(d.conn_use, None);
        assert_eq!(d.delay, Some(Duration::from_millis(200)));
        assert_eq!(d.delays.as_deref(), Some("0.03/0.03/0.06/0.08"));
        assert_eq!(d.tls, None);
        assert_eq!(d.dsn, "2.0.0");
        assert_eq!(d.status, Status::Sent);
        assert_eq!(d.text, "250 2.0.0 Ok: queued as 9974198C1B7");
        assert_eq!(d.tls_failure(), None);
    }

    #[test]
    fn delivery_boundaries() {
        // Commas, parentheses and field names inside the status text.
        let d = delivery(
            "A1: to=<a@b>, relay=h[192.0.2.1]:25, conn_use=12, delay=8.4, delays=8.4/0/0/0, \
             dsn=5.1.1, status=bounced (host h[192.0.2.1] said: 550 5.1.1 no, such (user), dsn=2.0.0, status=sent)",
        );
        assert_eq!(d.conn_use, Some(12));
        assert_eq!(d.status, Status::Bounced);
        assert_eq!(d.dsn, "5.1.1");
        assert_eq!(
            d.text,
            "host h[192.0.2.1] said: 550 5.1.1 no, such (user), dsn=2.0.0, status=sent"
        );
        // Quoted local parts with spaces, commas and `>`.
        let d = delivery(
            "A2: to=<\"john doe\"@b>, relay=none, delay=0, delays=0/0/0/0, dsn=4.4.4, \
             status=deferred (unable to look up host b: x)",
        );
        assert_eq!(d.to, "\"john doe\"@b");
        assert_eq!(d.relay, Relay::None);
        assert_eq!(d.status, Status::Deferred);
        let d = delivery(
            "A3: to=<\"x>, y\"@b>, orig_to=<\"q>, relay=z\"@c>, relay=local, delay=1, \
             delays=1/0/0/0, dsn=2.0.0, status=sent (delivered to mailbox)",
        );
        assert_eq!(d.to, "\"x>, y\"@b");
        assert_eq!(d.orig_to.as_deref(), Some("\"q>, relay=z\"@c"));
        assert_eq!(d.relay, Relay::Other("local".into()));
        // Unbalanced quotes: the first `>, relay=` wins.
        let d = delivery("A4: to=<\"x>, relay=y>, relay=none, dsn=2.0.0, status=sent (x)");
        assert_eq!(d.to, "\"x");
        // A backslash-escaped quote inside quotes.
        let d = delivery("A5: to=<\"a\\\">, \"@b>, relay=none, dsn=2.0.0, status=sent (x)");
        assert_eq!(d.to, "\"a\\\">, \"@b");
        let d = delivery("A3: to=<>, relay=local, delay=1, dsn=2.0.0, status=sent (x)");
        assert_eq!(d.to, "");
        assert_eq!(d.relay, Relay::Other("local".into()));
        // IPv6 relay, 3.11 tls= field, an unknown newer field.
        let d = delivery(
            "B1: to=<a@b>, relay=mx.b[2001:db8::1]:25, delay=0.5, delays=0/0/0.4/0, \
             tls=may/!requiretls:nostarttls, new_field=7, dsn=5.7.30, \
             status=bounced (Sender requested REQUIRETLS, but TLS service was not offered by host mx.b[2001:db8::1])",
        );
        assert_eq!(d.relay, Relay::Peer(ep("mx.b", "2001:db8::1", Some(25))));
        assert_eq!(d.tls.as_deref(), Some("may/!requiretls:nostarttls"));
        assert_eq!(
            d.tls_features(),
            vec![
                TlsFeature {
                    name: "may".into(),
                    downgraded_to: None,
                    violated: false,
                    undecided: false
                },
                TlsFeature {
                    name: "requiretls".into(),
                    downgraded_to: Some("nostarttls".into()),
                    violated: true,
                    undecided: false
                }
            ]
        );
        assert_eq!(d.tls_failure(), Some(TlsFailureKind::NotOffered));
        // LMTP over a unix socket: a path in brackets, no port.
        let d = delivery(
            "C1: to=<a@b>, relay=mail.b[private/dovecot-lmtp], delay=0.05, \
             delays=0.01/0/0.01/0.03, dsn=2.0.0, status=sent (250 2.0.0 <a@b> Saved)",
        );
        assert_eq!(
            d.relay,
            Relay::Peer(ep("mail.b", "private/dovecot-lmtp", None))
        );
        // Status without parenthesised text (qmgr-style) and odd statuses.
        let d = delivery("D1: to=<a@b>, relay=none, dsn=4.7.0, status=expired, returned to sender");
        assert_eq!(
            (d.status, d.text.as_str()),
            (Status::Expired, "returned to sender")
        );
        let d = delivery("D2: to=<a@b>, relay=none, dsn=4.0.0, status=SOFTBOUNCE (x)");
        assert_eq!(d.status, Status::Other("SOFTBOUNCE".into()));
        assert_eq!(
            delivery("D3: to=<a@b>, relay=none, dsn=2.0.0, status=sent ()").text,
            ""
        );
    }

    #[test]
    fn not_deliveries() {
        for m in [
            "",
            ": to=<a@b>, relay=none, dsn=2.0.0, status=sent (x)",
            "A!: to=<a@b>, relay=none, dsn=2.0.0, status=sent (x)",
            "A1: from=<a@b>, size=1, nrcpt=1 (queue active)",
            "A1: to=<a@b, relay=none, dsn=2.0.0, status=sent (x)",
            "A1: to=<a@b>, relay=none, delay=1, status=sent (x)",
            "A1: to=<a@b>, relay=none, dsn=2.0.0, status=",
            "A1: to=<a@b>, relay=none, dsn=2.0.0",
            "A1: to=<a@b>, relay=none, conn_use=x, dsn=2.0.0, status=sent (x)",
            "A1: to=<a@b>, relay=none, weird, dsn=2.0.0, status=sent (x)",
            "A1: to=<a@b>, orig_to=<c, relay=none, dsn=2.0.0, status=sent (x)",
            "A1: to=<a@b>, relay=none",
        ] {
            assert_eq!(parse_message(m), Event::Unknown, "{m}");
        }
        let long_id = format!(
            "{}: to=<a@b>, relay=none, dsn=2.0.0, status=sent (x)",
            "A".repeat(33)
        );
        assert_eq!(parse_message(&long_id), Event::Unknown);
    }

    #[test]
    fn status_texts() {
        use TlsFailureKind::*;
        for (text, want) in [
            (
                "TLS is required, but was not offered by host h[192.0.2.1]",
                Some(NotOffered),
            ),
            (
                "TLS is required, but host h[192.0.2.1] refused to start TLS: 454 4.7.0 no",
                Some(StartTlsRefused),
            ),
            (
                "TLS is required, but our TLS engine is unavailable",
                Some(TlsUnavailable),
            ),
            ("TLS is required, but unavailable", Some(TlsUnavailable)),
            ("Server certificate not verified", Some(CertNotVerified)),
            ("Cannot start TLS: handshake failure", Some(HandshakeFailed)),
            ("client TLS configuration problem", Some(ConfigProblem)),
            (
                "delivery temporarily suspended: client TLS configuration problem",
                Some(ConfigProblem),
            ),
            ("TLSA lookup error for mx.b:25", Some(TlsaLookupError)),
            ("250 2.0.0 Ok", None),
        ] {
            assert_eq!(classify_status_text(text), want, "{text}");
        }
    }

    #[test]
    fn tls_failure_lines() {
        use TlsFailureKind::*;
        let cases = [
            (
                "certificate verification failed for mx.b[127.0.0.12]:25: self-signed certificate",
                VerificationFailed,
                "self-signed certificate",
            ),
            (
                "server certificate verification failed for mx.fp[127.0.0.11]:25: num=65:no matching DANE TLSA records",
                DaneMismatch,
                "num=65:no matching DANE TLSA records",
            ),
            (
                "certificate verification failed for mx.b[192.0.2.9]:25: untrusted issuer /CN=x: y",
                VerificationFailed,
                "untrusted issuer /CN=x: y",
            ),
            (
                "SSL_connect error to mx.old[127.0.0.14]:25: -1",
                HandshakeFailed,
                "-1",
            ),
            (
                "TLS handshake failed for service=smtp peer=[127.0.0.14]:25",
                HandshakeFailed,
                "service=smtp",
            ),
            (
                "SSL_connect error to mx.old[127.0.0.14]:25: lost connection",
                HandshakeFailed,
                "lost connection",
            ),
            (
                "warning: mx.dane[192.0.2.9]:25: all TLSA records unusable",
                TlsaUnusable,
                "all TLSA records unusable",
            ),
        ];
        for (m, kind, detail) in cases {
            let Event::TlsFailure(f) = parse_message(m) else {
                panic!("{m}")
            };
            assert_eq!((f.kind, f.detail.as_str()), (kind, detail), "{m}");
            assert!(f.peer.is_some());
        }
        let Event::TlsFailure(f) = parse_message(
            "warning: TLS library problem: error:0A00042E:SSL routines::tlsv1 alert protocol version:x:",
        ) else {
            panic!()
        };
        assert_eq!((f.kind, f.peer), (LibraryProblem, None));
        assert_eq!(
            parse_message("weird certificate verification failed for a[b]:25: x"),
            Event::Unknown
        );
        // A status text that quotes such a line is still a status line.
        let m = "Q1: to=<a@b>, relay=none, dsn=4.7.5, status=deferred \
                 (server certificate verification failed for a[b]:25: x)";
        assert!(matches!(parse_message(m), Event::Delivery(_)));
    }

    #[test]
    fn policy_and_table_warnings() {
        assert_eq!(
            parse_message(
                "warning: TLS policy lookup for [mx.v.test]/mx.v.test: client TLS configuration problem"
            ),
            Event::PolicyLookupFailed {
                nexthop: "[mx.v.test]".into(),
                host: "mx.v.test".into(),
                reason: "client TLS configuration problem".into()
            }
        );
        assert_eq!(
            parse_message("warning: TLS policy lookup error for [2001:db8::1]:25/h: x: y"),
            Event::PolicyLookupFailed {
                nexthop: "[2001:db8::1]:25".into(),
                host: "h".into(),
                reason: "x: y".into()
            }
        );
        let table = |t: &str, k: Option<&str>, d: &str| Event::TableLookupError {
            table: t.into(),
            key: k.map(Into::into),
            detail: d.into(),
        };
        assert_eq!(
            parse_message(
                "warning: table socketmap:inet:127.0.0.1:9999:policy lookup error: Connection refused"
            ),
            table(
                "socketmap:inet:127.0.0.1:9999:policy",
                None,
                "Connection refused"
            )
        );
        assert_eq!(
            parse_message(
                "warning: socketmap:inet:127.0.0.1:9999:policy lookup error for \"[mx.v.test]\""
            ),
            table(
                "socketmap:inet:127.0.0.1:9999:policy",
                Some("[mx.v.test]"),
                "lookup error"
            )
        );
        assert_eq!(
            parse_message(
                "warning: smtp_tls_policy_maps, next-hop destination \"[mx.v.test]\": policy table lookup error"
            ),
            table(
                "smtp_tls_policy_maps",
                Some("[mx.v.test]"),
                "policy table lookup error"
            )
        );
        assert_eq!(
            parse_message(
                "warning: socketmap:unix:/run/p.sock:policy socketmap server temporary error: busy"
            ),
            table(
                "socketmap:unix:/run/p.sock:policy",
                None,
                "socketmap server temporary error: busy"
            )
        );
        assert_eq!(
            parse_message("warning: connect to 127.0.0.1:9999: Connection refused"),
            Event::TableConnectFailed {
                endpoint: "127.0.0.1:9999".into(),
                detail: "Connection refused".into()
            }
        );
        assert_eq!(
            parse_message("connect to 127.0.0.15[127.0.0.15]:24: Connection refused"),
            Event::ConnectFailed {
                peer: ep("127.0.0.15", "127.0.0.15", Some(24)),
                detail: "Connection refused".into()
            }
        );
        assert_eq!(parse_message("warning: something else"), Event::Unknown);
        assert_eq!(
            parse_message("warning: TLS policy lookup for x"),
            Event::Unknown
        );
    }

    #[test]
    fn endpoints() {
        assert_eq!(Endpoint::parse("a[b]:25"), Some(ep("a", "b", Some(25))));
        assert_eq!(Endpoint::parse("[b]"), Some(ep("", "b", None)));
        for bad in [
            "a",
            "a[]",
            "a[b]x",
            "a[b]:",
            "a[b]:99999",
            "a b[c]:25",
            "a[b]:2x",
        ] {
            assert_eq!(Endpoint::parse(bad), None, "{bad}");
        }
        let e = ep("mx", "2001:db8::1", Some(25));
        assert_eq!(Endpoint::parse(&e.to_string()), Some(e));
    }

    #[test]
    fn tls_feature_forms() {
        let f = parse_tls_features("dane:encrypt?/!sts");
        assert_eq!(f.len(), 2);
        assert_eq!(f[0].downgraded_to.as_deref(), Some("encrypt"));
        assert!(f[0].undecided && !f[0].violated);
        assert!(f[1].violated && f[1].name == "sts");
        assert!(parse_tls_features("").is_empty());
    }
}
