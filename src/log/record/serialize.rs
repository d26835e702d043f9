//! A record as its JSON line. Written by hand, not derived: the fields of
//! every kind come in one documented order (the head, the decision, then
//! what only that kind has), a field without a value is left out, and
//! the bytes are those the flat record of earlier versions wrote (the
//! golden tests hold them).
//!
//! The order is written once, against [`Fields`]; two sinks take it: the
//! decision log's line writer ([`DecisionRecord::write_json`]: strings
//! without anything to escape copied as they are, the time from a
//! per-second cache) and any serde map (`impl Serialize`). Both give the
//! same bytes through `serde_json` (tested).

use std::cell::RefCell;
use std::fmt::{Display, Write as _};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::ser::{Serialize, SerializeMap, Serializer};

use super::{
    DecisionRecord, DeliveryOutcome, Detail, Envelope, LookupLine, LookupReply, Message,
    MessageDoor, MilterMessage, Recipient,
};
use crate::engine::decision::Decision;
use crate::util::decimal::Decimal;

/// Where a record's fields go, in order.
trait Fields {
    type Error;
    /// Any value, as serde writes it.
    fn value<T: Serialize + ?Sized>(&mut self, key: Key, v: &T) -> Result<(), Self::Error>;
    fn str(&mut self, key: Key, v: &str) -> Result<(), Self::Error>;
    /// A fixed word of the format (a reply code, a source's name): plain
    /// ASCII with nothing to escape.
    fn word(&mut self, key: Key, v: &'static str) -> Result<(), Self::Error>;
    fn uint(&mut self, key: Key, v: u32) -> Result<(), Self::Error>;
    /// A value's text ([`Display`]) as a JSON string.
    fn text(&mut self, key: Key, v: &dyn Display) -> Result<(), Self::Error>;
    /// RFC 3339 UTC with microseconds.
    fn time(&mut self, key: Key, t: SystemTime) -> Result<(), Self::Error>;
}

/// A field's name, and the JSON the line writer puts before its value
/// (`,"name":`), made once at compile time: [`key!`].
#[derive(Clone, Copy)]
struct Key {
    name: &'static str,
    /// `,"name":`
    json: &'static str,
}

/// The [`Key`] of a field name (a plain ASCII word: nothing to escape).
macro_rules! key {
    ($name:literal) => {
        Key {
            name: $name,
            json: concat!(",\"", $name, "\":"),
        }
    };
}

/// Any serde map.
struct MapFields<M>(M);

impl<M: SerializeMap> Fields for MapFields<M> {
    type Error = M::Error;
    fn value<T: Serialize + ?Sized>(&mut self, key: Key, v: &T) -> Result<(), M::Error> {
        self.0.serialize_entry(key.name, v)
    }
    fn str(&mut self, key: Key, v: &str) -> Result<(), M::Error> {
        self.0.serialize_entry(key.name, v)
    }
    fn word(&mut self, key: Key, v: &'static str) -> Result<(), M::Error> {
        self.0.serialize_entry(key.name, v)
    }
    fn uint(&mut self, key: Key, v: u32) -> Result<(), M::Error> {
        self.0.serialize_entry(key.name, &v)
    }
    fn text(&mut self, key: Key, v: &dyn Display) -> Result<(), M::Error> {
        self.0.serialize_entry(key.name, &Text(v))
    }
    fn time(&mut self, key: Key, t: SystemTime) -> Result<(), M::Error> {
        self.0.serialize_entry(key.name, &Rfc3339(t))
    }
}

/// The decision log's writer: appends the fields of one JSON object.
struct Line<'a> {
    out: &'a mut Vec<u8>,
    first: bool,
    /// For [`Fields::text`].
    scratch: String,
}

impl Line<'_> {
    /// `,"key":` (no comma before the first field).
    fn key(&mut self, key: Key) {
        let k = self.key_json(key);
        self.out.extend_from_slice(k);
    }

    /// `k` and `v` in quotes, `v` known to need no escaping; one
    /// reservation.
    fn quoted(&mut self, k: &[u8], v: &str) {
        let out = &mut *self.out;
        out.reserve(k.len() + v.len() + 2);
        out.extend_from_slice(k);
        out.push(b'"');
        out.extend_from_slice(v.as_bytes());
        out.push(b'"');
    }

    fn key_json(&mut self, key: Key) -> &'static [u8] {
        let json = key.json.as_bytes();
        let first = std::mem::replace(&mut self.first, false);
        if first { &json[1..] } else { json }
    }
}

/// A JSON string, byte for byte as `serde_json` writes it: copied when
/// nothing in it needs escaping, else written by `serde_json`.
fn json_str(out: &mut Vec<u8>, v: &str) -> Result<(), serde_json::Error> {
    if !needs_escape(v.as_bytes()) {
        out.reserve(v.len() + 2);
        out.push(b'"');
        out.extend_from_slice(v.as_bytes());
        out.push(b'"');
        Ok(())
    } else {
        serde_json::to_writer(out, v)
    }
}

/// Whether any byte is one JSON escapes (a control character, `"` or
/// `\\`), eight bytes at a time: a byte below 0x20 borrows through
/// `w - 0x20…` with its top bit clear, and one equal to `c` is a zero
/// byte of `w ^ c…`. A borrow can only mark a byte after a real match, so
/// the answer is exact.
fn needs_escape(s: &[u8]) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const TOPS: u64 = 0x8080_8080_8080_8080;
    let below = |w: u64, n: u8| w.wrapping_sub(ONES * u64::from(n)) & !w & TOPS;
    let mut words = s.chunks_exact(8);
    for word in &mut words {
        let w = u64::from_le_bytes(word.try_into().expect("eight bytes"));
        let quote = w ^ (ONES * u64::from(b'"'));
        let backslash = w ^ (ONES * u64::from(b'\\'));
        if below(w, 0x20) | below(quote, 1) | below(backslash, 1) != 0 {
            return true;
        }
    }
    words
        .remainder()
        .iter()
        .any(|&b| b < 0x20 || b == b'"' || b == b'\\')
}

impl Fields for Line<'_> {
    type Error = serde_json::Error;
    fn value<T: Serialize + ?Sized>(&mut self, key: Key, v: &T) -> Result<(), serde_json::Error> {
        self.key(key);
        serde_json::to_writer(&mut *self.out, v)
    }
    fn str(&mut self, key: Key, v: &str) -> Result<(), serde_json::Error> {
        // The key, the quotes and a string with nothing to escape in one
        // reservation: most fields are this.
        let k = self.key_json(key);
        if needs_escape(v.as_bytes()) {
            self.out.extend_from_slice(k);
            return serde_json::to_writer(&mut *self.out, v);
        }
        self.quoted(k, v);
        Ok(())
    }
    fn word(&mut self, key: Key, v: &'static str) -> Result<(), serde_json::Error> {
        debug_assert!(!needs_escape(v.as_bytes()), "{v:?} is not a plain word");
        let k = self.key_json(key);
        self.quoted(k, v);
        Ok(())
    }
    fn uint(&mut self, key: Key, v: u32) -> Result<(), serde_json::Error> {
        let k = self.key_json(key);
        let digits = Decimal::new(v.into());
        let digits = digits.as_bytes();
        let out = &mut *self.out;
        out.reserve(k.len() + digits.len());
        out.extend_from_slice(k);
        out.extend_from_slice(digits);
        Ok(())
    }
    fn text(&mut self, key: Key, v: &dyn Display) -> Result<(), serde_json::Error> {
        self.key(key);
        self.scratch.clear();
        write!(self.scratch, "{v}").map_err(serde::ser::Error::custom)?;
        json_str(self.out, &self.scratch)
    }
    fn time(&mut self, key: Key, t: SystemTime) -> Result<(), serde_json::Error> {
        self.key(key);
        let Ok(since) = t.duration_since(UNIX_EPOCH) else {
            return serde_json::to_writer(&mut *self.out, &Rfc3339(t));
        };
        let secs = since.as_secs();
        SECOND.with_borrow_mut(|(at, text)| {
            if *at != Some(secs) || text.is_empty() {
                // `2026-12-06T08:50:12Z` without the `Z`.
                text.clear();
                let whole = UNIX_EPOCH + std::time::Duration::from_secs(secs);
                write!(text, "{}", humantime::format_rfc3339_seconds(whole))
                    .expect("a String takes any text");
                text.pop();
                *at = Some(secs);
            }
            self.out.push(b'"');
            self.out.extend_from_slice(text.as_bytes());
        });
        let micros = since.subsec_micros();
        let mut digits = *b".000000Z\"";
        let mut n = micros;
        for d in digits[1..7].iter_mut().rev() {
            *d = b'0' + (n % 10) as u8;
            n /= 10;
        }
        self.out.extend_from_slice(&digits);
        Ok(())
    }
}

thread_local! {
    /// The last whole second written, as text: records come many to a
    /// second.
    static SECOND: RefCell<(Option<u64>, String)> = const { RefCell::new((None, String::new())) };
}

impl Serialize for DecisionRecord {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = MapFields(s.serialize_map(None)?);
        record(&mut m, self)?;
        m.0.end()
    }
}

impl DecisionRecord {
    /// Append the record as one JSON object (no newline); what the
    /// decision log writes. On an error nothing is appended.
    pub fn write_json(&self, out: &mut Vec<u8>) -> Result<(), serde_json::Error> {
        object(out, |line| record(line, self))
    }
}

/// Append one JSON object whose fields `fields` writes; on an error
/// nothing is appended.
fn object(
    out: &mut Vec<u8>,
    fields: impl FnOnce(&mut Line<'_>) -> Result<(), serde_json::Error>,
) -> Result<(), serde_json::Error> {
    let at = out.len();
    out.push(b'{');
    let mut line = Line {
        out,
        first: true,
        scratch: String::new(),
    };
    match fields(&mut line) {
        Ok(()) => {
            out.push(b'}');
            Ok(())
        }
        Err(e) => {
            out.truncate(at);
            Err(e)
        }
    }
}

impl DecisionRecord {
    /// The record's JSON line, without the newline.
    pub fn to_json_line(&self) -> String {
        let mut out = Vec::with_capacity(320);
        self.write_json(&mut out)
            .expect("a record's fields all serialise");
        String::from_utf8(out).expect("JSON is UTF-8")
    }
}

impl LookupLine<'_> {
    /// Append the record of this lookup made at `ts`, as
    /// [`DecisionRecord::write_json`] would write it.
    pub fn write_json(&self, ts: SystemTime, out: &mut Vec<u8>) -> Result<(), serde_json::Error> {
        object(out, |line| {
            line.time(key!("ts"), ts)?;
            line.word(
                key!("frontend"),
                crate::log::record::Frontend::Socketmap.as_str(),
            )?;
            lookup(line, self)
        })
    }
}

fn record<F: Fields>(m: &mut F, r: &DecisionRecord) -> Result<(), F::Error> {
    let head = &r.head;
    m.time(key!("ts"), head.ts)?;
    m.word(key!("frontend"), r.detail.written_by())?;
    opt_str(m, key!("queue_id"), head.queue_id.as_deref())?;
    match &r.detail {
        Detail::Lookup(l) => lookup(m, &l.line()),
        Detail::Recipient(r) => recipient(m, r),
        Detail::Message(msg) => message(m, msg),
        Detail::Delivery(d) => delivery(m, d),
    }
}

fn lookup<M: Fields>(m: &mut M, l: &LookupLine<'_>) -> Result<(), M::Error> {
    m.str(key!("map"), l.map)?;
    let level = l.reply == LookupReply::Ok;
    let decided = (l.key, l.domain, l.decision);
    decision(m, decided, level, l.reply.as_str())?;
    opt_uint(m, key!("client_pid"), l.client_pid)
}

fn recipient<M: Fields>(m: &mut M, r: &Recipient) -> Result<(), M::Error> {
    let decided = (&*r.key, r.domain.as_deref(), &r.decision);
    decision(m, decided, true, r.action.verb())?;
    opt_str(m, key!("instance"), r.instance.as_deref())?;
    m.str(key!("sender"), &r.envelope.sender)?;
    m.str(key!("recipient"), &r.recipient)?;
    opt_str(
        m,
        key!("client_address"),
        r.envelope.client_address.as_deref(),
    )?;
    m.text(key!("action"), &r.action)?;
    opt_uint(m, key!("sender_rule"), r.sender_rule)
}

fn message<M: Fields>(m: &mut M, msg: &Message) -> Result<(), M::Error> {
    let reply = match &msg.door {
        MessageDoor::Policy { action, .. } => action.verb(),
        MessageDoor::Milter(milter) => milter.outcome.reply(),
    };
    // No single key, domain or level: those are per recipient.
    m.str(key!("key"), "")?;
    m.word(key!("tls"), msg.verdict.tls.as_str())?;
    m.word(key!("reply"), reply)?;
    m.word(key!("source"), msg.verdict.source.as_str())?;
    m.str(key!("reason"), &msg.verdict.reason)?;
    if let MessageDoor::Policy { instance, .. } = &msg.door {
        opt_str(m, key!("instance"), instance.as_deref())?;
    }
    let Envelope {
        sender,
        client_address,
    } = &msg.envelope;
    m.str(key!("sender"), sender)?;
    opt_str(m, key!("client_address"), client_address.as_deref())?;
    m.value(key!("recipients"), &msg.recipients)?;
    match &msg.door {
        MessageDoor::Policy { action, .. } => m.text(key!("action"), action)?,
        MessageDoor::Milter(milter) => m.text(key!("action"), &milter.outcome)?,
    }
    opt_uint(m, key!("sender_rule"), msg.sender_rule)?;
    if let MessageDoor::Milter(milter) = &msg.door {
        milter_fields(m, milter)?;
    }
    Ok(())
}

/// A delivery outcome's fields after the head.
fn delivery<M: Fields>(m: &mut M, d: &DeliveryOutcome) -> Result<(), M::Error> {
    m.str(key!("recipient"), &d.recipient)?;
    opt_str(m, key!("orig_to"), d.orig_to.as_deref())?;
    opt_str(m, key!("domain"), d.domain.as_deref())?;
    m.str(key!("relay"), &d.relay)?;
    m.str(key!("transport"), &d.transport)?;
    m.str(key!("status"), &d.status)?;
    m.str(key!("dsn"), &d.dsn)?;
    m.str(key!("status_text"), &d.status_text)?;
    m.word(key!("tls_trust"), d.tls_trust.as_str())?;
    opt_str(m, key!("tls_protocol"), d.tls_protocol.as_deref())?;
    opt_str(m, key!("tls_cipher"), d.tls_cipher.as_deref())?;
    opt_str(m, key!("tls_failure"), d.tls_failure)?;
    if let Some(g) = &d.governing {
        m.word(key!("decided_by"), g.by.as_str())?;
        m.word(key!("tls"), g.tls.as_str())?;
        m.str(key!("level"), &g.level)?;
        m.word(key!("source"), g.source.as_str())?;
        opt_uint(m, key!("rule"), g.rule)?;
        m.str(key!("reason"), &g.reason)?;
    }
    m.word(key!("verdict"), d.verdict.as_str())?;
    m.time(key!("logged_at"), d.logged_at)?;
    if let Some(delay) = d.delay {
        m.value(key!("delay"), &delay.as_secs_f64())?;
    }
    Ok(())
}

fn milter_fields<M: Fields>(m: &mut M, x: &MilterMessage) -> Result<(), M::Error> {
    opt_str(m, key!("client_name"), x.client_name.as_deref())?;
    opt_str(m, key!("helo_name"), x.helo_name.as_deref())?;
    opt_str(m, key!("mta"), x.mta.as_deref())?;
    opt_str(m, key!("daemon_name"), x.daemon_name.as_deref())?;
    opt(m, key!("inbound_tls"), x.inbound_tls.as_ref())?;
    opt_str(m, key!("auth_user"), x.auth_user.as_deref())?;
    opt_str(m, key!("message_id"), x.message_id.as_deref())?;
    flag(m, key!("tls_required_no"), x.tls_required_no)?;
    flag(m, key!("requiretls"), x.requiretls)
}

/// The decision's fields, with the reply code between `level` and
/// `source`; `level` only when `with_level`.
/// The key, its domain and the decision for it.
type Decided<'a> = (&'a str, Option<&'a str>, &'a Decision);

fn decision<M: Fields>(
    m: &mut M,
    (key, domain, d): Decided<'_>,
    with_level: bool,
    reply: &'static str,
) -> Result<(), M::Error> {
    m.str(key!("key"), key)?;
    opt_str(m, key!("domain"), domain)?;
    m.word(key!("tls"), d.tls().as_str())?;
    if with_level {
        m.str(key!("level"), &d.policy)?;
    }
    m.word(key!("reply"), reply)?;
    m.word(key!("source"), d.source.as_str())?;
    opt_uint(m, key!("rule"), d.rule)?;
    opt_str(m, key!("matched"), d.matched.as_deref())?;
    m.str(key!("reason"), &d.reason)?;
    flag(m, key!("raised"), d.raised)?;
    flag(m, key!("temporary"), d.temporary)?;
    if let Some(p) = &d.published {
        opt_str(m, key!("policy_id"), p.policy_id.as_deref())?;
        opt_str(m, key!("policy_mode"), p.mode)?;
    }
    Ok(())
}

/// `key` with its value, or nothing.
fn opt<M: Fields, T: Serialize + ?Sized>(
    m: &mut M,
    key: Key,
    value: Option<&T>,
) -> Result<(), M::Error> {
    match value {
        Some(v) => m.value(key, v),
        None => Ok(()),
    }
}

/// `key` with its number, or nothing.
fn opt_uint<M: Fields>(m: &mut M, key: Key, value: Option<u32>) -> Result<(), M::Error> {
    match value {
        Some(v) => m.uint(key, v),
        None => Ok(()),
    }
}

/// `key` with its string, or nothing.
fn opt_str<M: Fields>(m: &mut M, key: Key, value: Option<&str>) -> Result<(), M::Error> {
    match value {
        Some(v) => m.str(key, v),
        None => Ok(()),
    }
}

/// `key: true`, or nothing.
fn flag<M: Fields>(m: &mut M, key: Key, on: bool) -> Result<(), M::Error> {
    if on { m.value(key, &true) } else { Ok(()) }
}

/// RFC 3339 UTC with microseconds.
struct Rfc3339(SystemTime);

impl Serialize for Rfc3339 {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&humantime::format_rfc3339_micros(self.0))
    }
}

/// A value's text (`Display`) as a JSON string, without building it first.
struct Text<'a, T: ?Sized>(&'a T);

impl<T: Display + ?Sized> Serialize for Text<'_, T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self.0)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::super::tests::{decision, lookup};
    use super::*;

    /// Both sinks, the same bytes.
    fn both(r: &DecisionRecord) -> String {
        let line = r.to_json_line();
        assert_eq!(line, serde_json::to_string(r).unwrap());
        line
    }

    #[test]
    fn strings_that_need_escaping_are_written_as_serde_json_writes_them() {
        for text in [
            "",
            "plain",
            "quote \" inside",
            "back\\slash",
            "tab\there",
            "nl\nand cr\r",
            "\u{0}nul and \u{1f} unit separator",
            "\u{7f} DEL is not escaped",
            "non-ASCII: bücher.example, 例え.テスト",
            " ",
            "\"",
        ] {
            let mut d = decision();
            d.reason = Arc::from(text);
            let mut r = lookup(text, d);
            r.head.queue_id = Some(text.to_string());
            let line = both(&r);
            let v: serde_json::Value = serde_json::from_str(&line).unwrap();
            assert_eq!(v["reason"], text);
            assert_eq!(v["key"], text);
        }
    }

    /// Every byte JSON escapes, at every position of strings up to three
    /// words long, among plain, non-ASCII and DEL neighbours: found, and
    /// written as serde_json writes it.
    #[test]
    fn escaping_is_found_at_every_position() {
        let mut specials: Vec<u8> = (0u8..0x20).collect();
        specials.extend([b'"', b'\\']);
        for len in 0..=24usize {
            for filler in ["a", "\u{7f}", "é"] {
                let base: String = filler.repeat(len);
                assert!(!needs_escape(base.as_bytes()), "{base:?}");
                let mut out = Vec::new();
                json_str(&mut out, &base).unwrap();
                assert_eq!(out, serde_json::to_vec(&base).unwrap());
                for at in 0..=base.len() {
                    if !base.is_char_boundary(at) {
                        continue;
                    }
                    for &c in &specials {
                        let mut v = base.clone();
                        v.insert(at, char::from(c));
                        assert!(needs_escape(v.as_bytes()), "{v:?}");
                        let mut out = Vec::new();
                        json_str(&mut out, &v).unwrap();
                        assert_eq!(out, serde_json::to_vec(&v).unwrap(), "{v:?}");
                    }
                }
            }
        }
        // Bytes right above what is escaped, in every lane.
        for b in [0x20u8, b'!', b'#', b'[', b']', 0x7f] {
            let v = String::from(char::from(b)).repeat(17);
            assert!(!needs_escape(v.as_bytes()), "{v:?}");
        }
    }

    #[test]
    fn times_from_the_per_second_cache_are_exact() {
        let at = |micros: u64| UNIX_EPOCH + Duration::from_micros(micros);
        let mut r = lookup("a.example", decision());
        for (micros, text) in [
            (0, "1970-01-01T00:00:00.000000Z"),
            (1, "1970-01-01T00:00:00.000001Z"),
            (999_999, "1970-01-01T00:00:00.999999Z"),
            (1_000_000, "1970-01-01T00:00:01.000000Z"),
            (1_764_000_000_123_456, "2025-11-24T16:00:00.123456Z"),
            // The same second again, and the second before it: the cache
            // is not a clock that only moves forward.
            (1_764_000_000_999_000, "2025-11-24T16:00:00.999000Z"),
            (1_763_999_999_999_999, "2025-11-24T15:59:59.999999Z"),
            (1_764_000_000_000_000, "2025-11-24T16:00:00.000000Z"),
            // A leap day, a year's last microsecond.
            (951_782_400_500_000, "2000-02-29T00:00:00.500000Z"),
            (1_798_761_599_999_999, "2026-12-31T23:59:59.999999Z"),
        ] {
            r.head.ts = at(micros);
            let line = both(&r);
            assert!(line.starts_with(&format!("{{\"ts\":\"{text}\",")), "{line}");
        }
    }

    #[test]
    fn nothing_is_appended_when_a_field_fails() {
        // A record's own fields never fail; a value that does (here a
        // map with non-string keys, through `value`) leaves the buffer
        // as it was.
        let mut out = b"before\n".to_vec();
        let mut line = Line {
            out: &mut out,
            first: true,
            scratch: String::new(),
        };
        line.str(key!("a"), "b").unwrap();
        let bad: std::collections::BTreeMap<(u8, u8), u8> = [((1, 2), 3)].into();
        assert!(line.value(key!("x"), &bad).is_err());
        let mut out = b"before\n".to_vec();
        let r = lookup("a.example", decision());
        r.write_json(&mut out).unwrap();
        assert!(out.starts_with(b"before\n{\"ts\":"));
        assert!(out.ends_with(b"}"));
    }
}
