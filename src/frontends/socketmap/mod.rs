//! Socketmap server for `smtp_tls_policy_maps` (Postfix `socketmap_table(5)`).
//!
//! Each request is a netstring `NAME KEY`; each reply a netstring
//! `OK <policy>`, `NOTFOUND `, `TEMP <reason>` (a source cannot decide now:
//! Postfix defers delivery) or `PERM <reason>`. Connections are
//! persistent and strictly request→reply. A framing error (bad length,
//! query over [`MAX_QUERY_LEN`], garbage) closes that connection with a log
//! line; other connections are not affected.

use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::Backend;
use super::netstring::{self, MAX_QUERY_LEN};
use crate::engine::decision::{Decision, SourceKind};
use crate::engine::requiretls::{self, RequireTlsAction};
use crate::listen::{self, Accepted, Admission, Drain, Expiry, IdleTimer, Listener};
use crate::log::record::{LookupLine, LookupReply};
use crate::metrics::Frontend;
use crate::util::text::printable_ascii;

mod config;

pub use config::{DefaultReply, SocketmapConfig, SocketmapSettings};

/// Bytes read from a connection at a time.
const READ_CHUNK: usize = 4096;

/// Everything the socketmap server needs.
#[derive(Clone)]
pub struct SocketmapDeps {
    pub backend: Arc<dyn Backend>,
    pub max_connections: usize,
}

impl SocketmapDeps {
    pub fn new(backend: Arc<dyn Backend>, config: &SocketmapConfig) -> SocketmapDeps {
        SocketmapDeps {
            backend,
            max_connections: config.max_connections,
        }
    }

    fn count_error(&self, kind: &'static str) {
        if let Some(m) = self.backend.metrics() {
            m.error("socketmap", kind);
        }
    }
}

/// Which of the maps a request named.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MapKind {
    /// The normal map: the decision as it is.
    Policy,
    /// Never weaker than `encrypt`.
    Forced,
    /// Postfix 3.11's `smtp_requiretls_policy`: the REQUIRETLS action for
    /// the decision ([`crate::engine::requiretls::action`]).
    RequireTls,
}

/// A socketmap reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SocketmapReply {
    Ok(Arc<str>),
    NotFound,
    /// A temporary failure: Postfix defers delivery and asks again later.
    Temp(Arc<str>),
    Perm(String),
}

impl SocketmapReply {
    pub fn code(&self) -> &'static str {
        match self {
            SocketmapReply::Ok(_) => "OK",
            SocketmapReply::NotFound => "NOTFOUND",
            SocketmapReply::Temp(_) => "TEMP",
            SocketmapReply::Perm(_) => "PERM",
        }
    }

    /// The reply code as the decision log has it; `PERM` (a map name not
    /// served) is not a decision and has no record.
    pub fn recorded(&self) -> Option<LookupReply> {
        match self {
            SocketmapReply::Ok(_) => Some(LookupReply::Ok),
            SocketmapReply::NotFound => Some(LookupReply::NotFound),
            SocketmapReply::Temp(_) => Some(LookupReply::Temp),
            SocketmapReply::Perm(_) => None,
        }
    }

    /// The reply text as sent inside the netstring.
    pub fn write_to(&self, out: &mut Vec<u8>) {
        let (head, tail): (&[u8], &[u8]) = match self {
            SocketmapReply::Ok(p) => (b"OK ", p.as_bytes()),
            SocketmapReply::NotFound => (b"NOTFOUND ", b""),
            SocketmapReply::Temp(r) => (b"TEMP ", r.as_bytes()),
            SocketmapReply::Perm(r) => (b"PERM ", r.as_bytes()),
        };
        netstring::encode_parts(&[head, tail], out);
    }

    pub fn text(&self) -> String {
        match self {
            SocketmapReply::Ok(p) => format!("OK {p}"),
            SocketmapReply::NotFound => "NOTFOUND ".to_string(),
            SocketmapReply::Temp(r) => format!("TEMP {r}"),
            SocketmapReply::Perm(r) => format!("PERM {r}"),
        }
    }
}

/// [`answer_with`] for the TLS policy maps, whose answers need no
/// REQUIRETLS action (the REQUIRETLS map's would be the one of the
/// decision's TLS class, without a rule's own `requiretls`).
pub fn answer(
    decision: Decision,
    kind: MapKind,
    default_reply: DefaultReply,
) -> (Decision, SocketmapReply) {
    let requiretls = requiretls::of_class(&decision);
    answer_with(decision, kind, default_reply, requiretls)
}

/// The decision a map stands for, and the reply that carries it. A
/// temporary decision is `TEMP` on every map. `requiretls`: the engine's
/// REQUIRETLS action for the decision, which the REQUIRETLS map answers
/// (its record keeps the TLS decision, the action at the head of the
/// reason).
pub fn answer_with(
    decision: Decision,
    kind: MapKind,
    default_reply: DefaultReply,
    requiretls: RequireTlsAction,
) -> (Decision, SocketmapReply) {
    if decision.temporary {
        let d = match kind {
            MapKind::Forced => decision.forced(),
            MapKind::Policy | MapKind::RequireTls => decision,
        };
        let r = SocketmapReply::Temp(temp_text(&d.reason));
        return (d, r);
    }
    match kind {
        MapKind::RequireTls => {
            let action = requiretls.as_str();
            let reason = format!("REQUIRETLS {action}: {}", decision.reason);
            let d = Decision {
                reason: Arc::from(reason),
                ..decision
            };
            (d, SocketmapReply::Ok(Arc::from(action)))
        }
        MapKind::Forced => {
            let d = decision.forced();
            let r = SocketmapReply::Ok(d.policy.clone());
            (d, r)
        }
        MapKind::Policy
            if decision.source == SourceKind::Default
                && default_reply == DefaultReply::Notfound =>
        {
            (decision, SocketmapReply::NotFound)
        }
        MapKind::Policy => {
            let r = SocketmapReply::Ok(decision.policy.clone());
            (decision, r)
        }
    }
}

/// Longest reason sent after `TEMP`; Postfix logs it with the deferral.
pub const MAX_TEMP_TEXT: usize = 200;

/// A reason as one printable ASCII line of at most [`MAX_TEMP_TEXT`] bytes.
fn temp_text(reason: &str) -> Arc<str> {
    Arc::from(printable_ascii(reason, MAX_TEMP_TEXT))
}

/// Accept connections until shutdown, then wait for open connections to
/// finish the request they are on.
pub async fn serve(listener: Listener, deps: SocketmapDeps, shutdown: CancellationToken) {
    let admission = Admission {
        name: "socketmap",
        max_connections: deps.max_connections,
        drain: Drain::Wait,
        metrics: deps
            .backend
            .metrics()
            .map(|m| (m.clone(), Frontend::Socketmap)),
    };
    let ctx = Arc::new(deps);
    listen::serve(listener, admission, shutdown, move |conn, peer, opened| {
        let ctx = ctx.clone();
        async move {
            let idle = IdleTimer::opened(ctx.backend.live().socketmap.idle_timeout, &opened);
            match conn {
                Accepted::Tcp(s) => connection(s, (&peer, None), idle, &ctx).await,
                Accepted::Unix(s) => {
                    // The smtp(8) process that asks: its deliveries are
                    // the ones this decision governs.
                    let pid = s.peer_pid();
                    connection(s, (&peer, pid), idle, &ctx).await
                }
            }
        }
    })
    .await;
}

/// Serve one connection: requests in order, one reply each.
/// `who`: the peer as described for log lines, and its pid when known.
async fn connection<S>(
    mut stream: S,
    (peer, client_pid): (&str, Option<u32>),
    mut idle: IdleTimer,
    ctx: &SocketmapDeps,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut buf: Vec<u8> = Vec::with_capacity(READ_CHUNK);
    let mut out: Vec<u8> = Vec::with_capacity(256);
    let mut start = 0usize;
    let mut answered: Option<Instant> = None;
    loop {
        // Answer every complete request already received. Requests before
        // a bad one still get their replies before the connection closes.
        let mut close = false;
        loop {
            match netstring::decode(&buf[start..], MAX_QUERY_LEN) {
                Ok(Some(frame)) => {
                    let payload = &buf[start + frame.payload.start..start + frame.payload.end];
                    // One clock read serves the lookup's duration and the
                    // idle timer.
                    let started = Instant::now();
                    answered = Some(started);
                    if let Err(problem) = request(payload, client_pid, ctx, started, &mut out).await
                    {
                        ctx.count_error("bad_request");
                        tracing::warn!(
                            peer,
                            problem,
                            "socketmap request refused; closing connection"
                        );
                        close = true;
                        break;
                    }
                    start += frame.consumed;
                }
                Ok(None) => break,
                Err(e) => {
                    ctx.count_error("framing");
                    tracing::warn!(peer, error = %e, "socketmap framing error; closing connection");
                    close = true;
                    break;
                }
            }
        }
        if !out.is_empty() {
            if let Err(e) = stream.write_all(&out).await {
                tracing::debug!(peer, error = %e, "socketmap client went away");
                return;
            }
            out.clear();
            if let Some(at) = answered.take() {
                idle.touch_at(at);
            }
        }
        if close {
            return;
        }
        if start == buf.len() {
            buf.clear();
        } else {
            buf.drain(..start);
        }
        start = 0;
        // Shutdown, or the connection limit: what was asked is answered.
        if idle.closing() {
            return;
        }
        buf.reserve(READ_CHUNK);
        // One timer per connection, not per read: the idle deadline is
        // only re-armed when it fires early.
        let read = tokio::select! {
            biased;
            r = stream.read_buf(&mut buf) => r,
            why = idle.expired(|| ctx.backend.live().socketmap.idle_timeout) => {
                match why {
                    Expiry::Idle => tracing::debug!(peer, "socketmap connection idle; closing"),
                    Expiry::Closed => tracing::debug!(peer, "socketmap connection closed by the listener"),
                }
                return;
            }
        };
        match read {
            Ok(0) => {
                if !buf.is_empty() {
                    ctx.count_error("incomplete_request");
                    tracing::warn!(
                        peer,
                        bytes = buf.len(),
                        "socketmap client closed mid-request"
                    );
                }
                return;
            }
            Ok(_) => {}
            Err(e) => {
                tracing::debug!(peer, error = %e, "socketmap read failed");
                return;
            }
        }
    }
}

/// Handle one `NAME KEY` request, appending the reply to `out`. An error
/// means the payload is not a socketmap request at all.
async fn request(
    payload: &[u8],
    client_pid: Option<u32>,
    ctx: &SocketmapDeps,
    started: Instant,
    out: &mut Vec<u8>,
) -> Result<(), &'static str> {
    let text = std::str::from_utf8(payload).map_err(|_| "request is not UTF-8")?;
    let space = payload
        .iter()
        .position(|&b| b == b' ')
        .ok_or("request is not \"NAME KEY\"")?;
    let (name, key) = (&text[..space], &text[space + 1..]);
    let live = ctx.backend.live();
    let settings = &live.socketmap;
    let Some(kind) = settings.map_kind(name) else {
        let reason = format!(
            "unknown map name {name:?}; this server answers {:?}, {:?} and {:?}",
            settings.map, settings.forced_map, settings.requiretls_map
        );
        tracing::warn!(map = name, key, "{reason}");
        SocketmapReply::Perm(reason).write_to(out);
        ctx.count_error("unknown_map");
        if let Some(m) = ctx.backend.metrics() {
            m.lookup(Frontend::Socketmap, started.elapsed());
        }
        return Ok(());
    };
    let (dest, decision) = live.engine.decide_key(key).await;
    super::note_malformed_key(
        ctx.backend.as_ref(),
        "socketmap",
        key,
        dest.as_ref(),
        &decision,
    );
    let (decision, requiretls) =
        match requiretls::for_key(live.engine.policy(), key, dest.is_some(), &decision) {
            Some(a) => (decision, a),
            // Only asked of the REQUIRETLS map's answer: the TLS maps
            // answer the decision as it is.
            None if kind == MapKind::RequireTls => (
                Decision {
                    temporary: true,
                    reason: Arc::from(
                        "key is not a destination; it could name rules with different \
                         REQUIRETLS actions; held until it is sent well-formed",
                    ),
                    ..decision
                },
                RequireTlsAction::Enforce,
            ),
            None => (decision, RequireTlsAction::Enforce),
        };
    let (decision, reply) = answer_with(decision, kind, settings.default_reply, requiretls);
    reply.write_to(out);
    if let Some(m) = ctx.backend.metrics() {
        m.lookup(Frontend::Socketmap, started.elapsed());
        m.decision(Frontend::Socketmap, &decision);
    }
    let map = match kind {
        MapKind::Policy => &settings.map,
        MapKind::Forced => &settings.forced_map,
        MapKind::RequireTls => &settings.requiretls_map,
    };
    if let Some(reply) = reply.recorded() {
        ctx.backend.decision_log().log_lookup(&LookupLine {
            map,
            key,
            domain: dest.as_ref().map(|d| d.name.as_str()),
            decision: &decision,
            reply,
            client_pid,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::decision::Level;
    use crate::engine::key::Destination;

    fn decision(level: Level, source: SourceKind) -> Decision {
        Decision::bare(level, source, "r")
    }

    fn wire(r: &SocketmapReply) -> String {
        let mut v = Vec::new();
        r.write_to(&mut v);
        String::from_utf8(v).unwrap()
    }

    #[test]
    fn replies_on_the_wire() {
        assert_eq!(
            wire(&SocketmapReply::Ok(Arc::from("encrypt"))),
            "10:OK encrypt,"
        );
        assert_eq!(wire(&SocketmapReply::NotFound), "9:NOTFOUND ,");
        assert_eq!(wire(&SocketmapReply::Perm("x".into())), "6:PERM x,");
    }

    #[test]
    fn default_reply_setting() {
        let d = decision(Level::May, SourceKind::Default);
        let (_, r) = answer(d.clone(), MapKind::Policy, DefaultReply::Policy);
        assert_eq!(r, SocketmapReply::Ok(Arc::from("may")));
        let (_, r) = answer(d.clone(), MapKind::Policy, DefaultReply::Notfound);
        assert_eq!(r, SocketmapReply::NotFound);
        // A static rule is always answered, whatever default_reply says.
        let s = decision(Level::May, SourceKind::Static);
        let (_, r) = answer(s, MapKind::Policy, DefaultReply::Notfound);
        assert_eq!(r, SocketmapReply::Ok(Arc::from("may")));
    }

    #[test]
    fn requiretls_map_answers_the_action_and_keeps_the_decision() {
        let d = decision(Level::Encrypt, SourceKind::Static);
        for dr in [DefaultReply::Policy, DefaultReply::Notfound] {
            let (kept, r) = answer_with(
                d.clone(),
                MapKind::RequireTls,
                dr,
                RequireTlsAction::OpportunisticStarttls,
            );
            assert_eq!(wire(&r), "25:OK opportunistic+starttls,");
            assert_eq!((kept.level, &*kept.policy), (Level::Encrypt, "encrypt"));
            assert_eq!(&*kept.reason, "REQUIRETLS opportunistic+starttls: r");
        }
        // The default is answered too (no NOTFOUND on this map).
        let (_, r) = answer(
            decision(Level::May, SourceKind::Default),
            MapKind::RequireTls,
            DefaultReply::Notfound,
        );
        assert_eq!(r, SocketmapReply::Ok(Arc::from("opportunistic")));
        let mut t = decision(Level::DaneOnly, SourceKind::Dane);
        t.temporary = true;
        let (_, r) = answer_with(
            t,
            MapKind::RequireTls,
            DefaultReply::Policy,
            RequireTlsAction::Enforce,
        );
        assert_eq!(r.code(), "TEMP");
    }

    #[test]
    fn temporary_decisions_are_temp_on_both_maps() {
        let mut d = decision(Level::DaneOnly, SourceKind::Dane);
        d.temporary = true;
        d.reason = Arc::from(format!("DNSSEC lookup failed\n{}", "x".repeat(300)));
        for kind in [MapKind::Policy, MapKind::Forced] {
            for dr in [DefaultReply::Policy, DefaultReply::Notfound] {
                let (_, r) = answer(d.clone(), kind, dr);
                let SocketmapReply::Temp(t) = &r else {
                    panic!("{kind:?}: {r:?}")
                };
                assert!(t.starts_with("DNSSEC lookup failed?xxx"), "{t}");
                assert_eq!(t.len(), MAX_TEMP_TEXT);
                assert_eq!(r.code(), "TEMP");
            }
        }
        assert_eq!(
            wire(&SocketmapReply::Temp(Arc::from("later"))),
            "10:TEMP later,"
        );
    }

    /// Golden lines: the exact bytes of the lookup records the socketmap
    /// writes, through [`answer`] and [`record`] as a request does, at a
    /// fixed time.
    fn golden(key: &str, map: &str, decision: Decision, kind: MapKind, dr: DefaultReply) -> String {
        let (decision, reply) = answer(decision, kind, dr);
        let dest = Destination::parse(key).ok();
        let line = LookupLine {
            map,
            key,
            domain: dest.as_ref().map(|d| d.name.as_str()),
            decision: &decision,
            reply: reply.recorded().unwrap(),
            client_pid: None,
        };
        let ts = std::time::SystemTime::UNIX_EPOCH
            + std::time::Duration::from_micros(1_767_323_045_123_456);
        let mut written = Vec::new();
        line.write_json(ts, &mut written).unwrap();
        let written = String::from_utf8(written).unwrap();
        // The record a tap sees writes the same line, both ways.
        let rec = line.record(ts);
        assert_eq!(written, rec.to_json_line());
        assert_eq!(written, serde_json::to_string(&rec).unwrap());
        written
    }

    fn static_rule() -> Decision {
        Decision {
            level: Level::Secure,
            policy: Arc::from("secure match=mx1.bank.example:mx2.bank.example"),
            source: SourceKind::Static,
            rule: Some(2),
            matched: Some(Arc::from(".bank.example")),
            reason: Arc::from("PCI \"partner\"\tnever plaintext"),
            ttl: std::time::Duration::from_secs(1),
            raised: false,
            temporary: false,
            published: None,
        }
    }

    #[test]
    fn golden_lookup_records() {
        let p = DefaultReply::Policy;
        assert_eq!(
            golden(
                "MX.Bank.Example.",
                "tls_policy",
                static_rule(),
                MapKind::Policy,
                p
            ),
            r#"{"ts":"2026-01-02T03:04:05.123456Z","frontend":"socketmap","map":"tls_policy","key":"MX.Bank.Example.","domain":"mx.bank.example","tls":"forced","level":"secure match=mx1.bank.example:mx2.bank.example","reply":"OK","source":"static","rule":2,"matched":".bank.example","reason":"PCI \"partner\"\tnever plaintext"}"#
        );
        let default = Decision::bare(Level::May, SourceKind::Default, "no rule matched");
        assert_eq!(
            golden(
                "[192.0.2.7]:25",
                "tls_policy",
                default.clone(),
                MapKind::Policy,
                p
            ),
            r#"{"ts":"2026-01-02T03:04:05.123456Z","frontend":"socketmap","map":"tls_policy","key":"[192.0.2.7]:25","domain":"192.0.2.7","tls":"opportunistic","level":"may","reply":"OK","source":"default","reason":"no rule matched"}"#
        );
        // NOTFOUND: no level.
        assert_eq!(
            golden(
                ".example",
                "tls_policy",
                default.clone(),
                MapKind::Policy,
                DefaultReply::Notfound
            ),
            r#"{"ts":"2026-01-02T03:04:05.123456Z","frontend":"socketmap","map":"tls_policy","key":".example","domain":"example","tls":"opportunistic","reply":"NOTFOUND","source":"default","reason":"no rule matched"}"#
        );
        // The forced map raises the default.
        assert_eq!(
            golden(
                "example.com",
                "tls_forced",
                default.clone(),
                MapKind::Forced,
                p
            ),
            r#"{"ts":"2026-01-02T03:04:05.123456Z","frontend":"socketmap","map":"tls_forced","key":"example.com","domain":"example.com","tls":"forced","level":"encrypt","reply":"OK","source":"default","reason":"no rule matched","raised":true}"#
        );
        // Not a destination: no domain.
        assert_eq!(
            golden("not a domain", "tls_policy", default, MapKind::Policy, p),
            r#"{"ts":"2026-01-02T03:04:05.123456Z","frontend":"socketmap","map":"tls_policy","key":"not a domain","tls":"opportunistic","level":"may","reply":"OK","source":"default","reason":"no rule matched"}"#
        );
        // DANE could not decide now: TEMP, no level, on both maps.
        let mut dane = Decision::bare(Level::DaneOnly, SourceKind::Dane, "DNSSEC lookup failed");
        dane.temporary = true;
        assert_eq!(
            golden(
                "dane.example",
                "tls_policy",
                dane.clone(),
                MapKind::Policy,
                p
            ),
            r#"{"ts":"2026-01-02T03:04:05.123456Z","frontend":"socketmap","map":"tls_policy","key":"dane.example","domain":"dane.example","tls":"forced","reply":"TEMP","source":"dane","reason":"DNSSEC lookup failed","temporary":true}"#
        );
        assert_eq!(
            golden("dane.example", "tls_forced", dane, MapKind::Forced, p),
            r#"{"ts":"2026-01-02T03:04:05.123456Z","frontend":"socketmap","map":"tls_forced","key":"dane.example","domain":"dane.example","tls":"forced","reply":"TEMP","source":"dane","reason":"DNSSEC lookup failed","temporary":true}"#
        );
        // MTA-STS: the published policy's id and mode; testing mode
        // raised on the forced map.
        let mut sts = Decision::bare(Level::May, SourceKind::MtaSts, "MTA-STS testing");
        sts.policy = Arc::from("may");
        sts.published = Some(Arc::new(crate::engine::decision::Published {
            policy_id: Some(Arc::from("20240101T000000")),
            mode: Some("testing"),
        }));
        assert_eq!(
            golden("sts.example", "tls_policy", sts.clone(), MapKind::Policy, p),
            r#"{"ts":"2026-01-02T03:04:05.123456Z","frontend":"socketmap","map":"tls_policy","key":"sts.example","domain":"sts.example","tls":"opportunistic","level":"may","reply":"OK","source":"mta-sts","reason":"MTA-STS testing","policy_id":"20240101T000000","policy_mode":"testing"}"#
        );
        assert_eq!(
            golden("sts.example", "tls_forced", sts, MapKind::Forced, p),
            r#"{"ts":"2026-01-02T03:04:05.123456Z","frontend":"socketmap","map":"tls_forced","key":"sts.example","domain":"sts.example","tls":"forced","level":"encrypt","reply":"OK","source":"mta-sts","reason":"MTA-STS testing","raised":true,"policy_id":"20240101T000000","policy_mode":"testing"}"#
        );
    }

    #[test]
    fn forced_map_never_weaker_than_encrypt() {
        for level in Level::ALL {
            for reply in [DefaultReply::Policy, DefaultReply::Notfound] {
                let (d, r) = answer(decision(level, SourceKind::Default), MapKind::Forced, reply);
                assert_eq!(d.tls(), crate::engine::decision::Tls::Forced);
                let SocketmapReply::Ok(p) = r else {
                    panic!("{level}: {r:?}")
                };
                assert_eq!(&*p, level.forced().as_str());
                assert_eq!(d.raised, level.forced() != level);
            }
        }
    }
}
