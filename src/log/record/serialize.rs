//! A record as its JSON line. Written by hand, not derived: the fields of
//! every kind come in one documented order (the head, the decision, then
//! what only that kind has), a field without a value is left out, and
//! the bytes are those the flat record of earlier versions wrote (the
//! golden tests hold them).

use std::fmt::Display;
use std::time::SystemTime;

use serde::ser::{Serialize, SerializeMap, Serializer};

use super::{
    DecisionRecord, DeliveryOutcome, Detail, Envelope, Lookup, LookupReply, Message, MessageDoor,
    MilterMessage, Recipient,
};
use crate::engine::decision::Decision;

impl Serialize for DecisionRecord {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(None)?;
        let head = &self.head;
        m.serialize_entry("ts", &Rfc3339(head.ts))?;
        m.serialize_entry("frontend", self.detail.written_by())?;
        opt(&mut m, "queue_id", head.queue_id.as_deref())?;
        match &self.detail {
            Detail::Lookup(l) => lookup(&mut m, l)?,
            Detail::Recipient(r) => recipient(&mut m, r)?,
            Detail::Message(msg) => message(&mut m, msg)?,
            Detail::Delivery(d) => delivery(&mut m, d)?,
        }
        m.end()
    }
}

fn lookup<M: SerializeMap>(m: &mut M, l: &Lookup) -> Result<(), M::Error> {
    m.serialize_entry("map", &*l.map)?;
    let level = l.reply == LookupReply::Ok;
    let decided = (&*l.key, l.domain.as_deref(), &l.decision);
    decision(m, decided, level, l.reply.as_str())?;
    opt(m, "client_pid", l.client_pid.as_ref())
}

fn recipient<M: SerializeMap>(m: &mut M, r: &Recipient) -> Result<(), M::Error> {
    let decided = (&*r.key, r.domain.as_deref(), &r.decision);
    decision(m, decided, true, r.action.verb())?;
    opt(m, "instance", r.instance.as_deref())?;
    m.serialize_entry("sender", &r.envelope.sender)?;
    m.serialize_entry("recipient", &r.recipient)?;
    opt(m, "client_address", r.envelope.client_address.as_deref())?;
    m.serialize_entry("action", &Text(&r.action))?;
    opt(m, "sender_rule", r.sender_rule.as_ref())
}

fn message<M: SerializeMap>(m: &mut M, msg: &Message) -> Result<(), M::Error> {
    let reply = match &msg.door {
        MessageDoor::Policy { action, .. } => action.verb(),
        MessageDoor::Milter(milter) => milter.outcome.reply(),
    };
    // No single key, domain or level: those are per recipient.
    m.serialize_entry("key", "")?;
    m.serialize_entry("tls", &msg.verdict.tls)?;
    m.serialize_entry("reply", reply)?;
    m.serialize_entry("source", &msg.verdict.source)?;
    m.serialize_entry("reason", &*msg.verdict.reason)?;
    if let MessageDoor::Policy { instance, .. } = &msg.door {
        opt(m, "instance", instance.as_deref())?;
    }
    let Envelope {
        sender,
        client_address,
    } = &msg.envelope;
    m.serialize_entry("sender", sender)?;
    opt(m, "client_address", client_address.as_deref())?;
    m.serialize_entry("recipients", &msg.recipients)?;
    match &msg.door {
        MessageDoor::Policy { action, .. } => m.serialize_entry("action", &Text(action))?,
        MessageDoor::Milter(milter) => m.serialize_entry("action", &Text(&milter.outcome))?,
    }
    opt(m, "sender_rule", msg.sender_rule.as_ref())?;
    if let MessageDoor::Milter(milter) = &msg.door {
        milter_fields(m, milter)?;
    }
    Ok(())
}

/// A delivery outcome's fields after the head.
fn delivery<M: SerializeMap>(m: &mut M, d: &DeliveryOutcome) -> Result<(), M::Error> {
    m.serialize_entry("recipient", &d.recipient)?;
    opt(m, "orig_to", d.orig_to.as_deref())?;
    opt(m, "domain", d.domain.as_deref())?;
    m.serialize_entry("relay", &d.relay)?;
    m.serialize_entry("transport", &d.transport)?;
    m.serialize_entry("status", &d.status)?;
    m.serialize_entry("dsn", &d.dsn)?;
    m.serialize_entry("status_text", &d.status_text)?;
    m.serialize_entry("tls_trust", d.tls_trust.as_str())?;
    opt(m, "tls_protocol", d.tls_protocol.as_deref())?;
    opt(m, "tls_cipher", d.tls_cipher.as_deref())?;
    opt(m, "tls_failure", d.tls_failure)?;
    if let Some(g) = &d.governing {
        m.serialize_entry("decided_by", g.by.as_str())?;
        m.serialize_entry("tls", g.tls.as_str())?;
        m.serialize_entry("level", &*g.level)?;
        m.serialize_entry("source", g.source.as_str())?;
        opt(m, "rule", g.rule.as_ref())?;
        m.serialize_entry("reason", &*g.reason)?;
    }
    m.serialize_entry("verdict", d.verdict.as_str())?;
    m.serialize_entry("logged_at", &Rfc3339(d.logged_at))?;
    if let Some(delay) = d.delay {
        m.serialize_entry("delay", &delay.as_secs_f64())?;
    }
    Ok(())
}

fn milter_fields<M: SerializeMap>(m: &mut M, x: &MilterMessage) -> Result<(), M::Error> {
    opt(m, "client_name", x.client_name.as_deref())?;
    opt(m, "helo_name", x.helo_name.as_deref())?;
    opt(m, "mta", x.mta.as_deref())?;
    opt(m, "daemon_name", x.daemon_name.as_deref())?;
    opt(m, "inbound_tls", x.inbound_tls.as_ref())?;
    opt(m, "auth_user", x.auth_user.as_deref())?;
    opt(m, "message_id", x.message_id.as_deref())?;
    flag(m, "tls_required_no", x.tls_required_no)?;
    flag(m, "requiretls", x.requiretls)
}

/// The decision's fields, with the reply code between `level` and
/// `source`; `level` only when `with_level`.
/// The key, its domain and the decision for it.
type Decided<'a> = (&'a str, Option<&'a str>, &'a Decision);

fn decision<M: SerializeMap>(
    m: &mut M,
    (key, domain, d): Decided<'_>,
    with_level: bool,
    reply: &str,
) -> Result<(), M::Error> {
    m.serialize_entry("key", key)?;
    opt(m, "domain", domain)?;
    m.serialize_entry("tls", &d.tls())?;
    if with_level {
        m.serialize_entry("level", &*d.policy)?;
    }
    m.serialize_entry("reply", reply)?;
    m.serialize_entry("source", &d.source)?;
    opt(m, "rule", d.rule.as_ref())?;
    opt(m, "matched", d.matched.as_deref())?;
    m.serialize_entry("reason", &*d.reason)?;
    flag(m, "raised", d.raised)?;
    flag(m, "temporary", d.temporary)?;
    if let Some(p) = &d.published {
        opt(m, "policy_id", p.policy_id.as_deref())?;
        opt(m, "policy_mode", p.mode)?;
    }
    Ok(())
}

/// `key` with its value, or nothing.
fn opt<M: SerializeMap, T: Serialize + ?Sized>(
    m: &mut M,
    key: &'static str,
    value: Option<&T>,
) -> Result<(), M::Error> {
    match value {
        Some(v) => m.serialize_entry(key, v),
        None => Ok(()),
    }
}

/// `key: true`, or nothing.
fn flag<M: SerializeMap>(m: &mut M, key: &'static str, on: bool) -> Result<(), M::Error> {
    if on {
        m.serialize_entry(key, &true)
    } else {
        Ok(())
    }
}

/// RFC 3339 UTC with microseconds.
struct Rfc3339(SystemTime);

impl Serialize for Rfc3339 {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&humantime::format_rfc3339_micros(self.0))
    }
}

/// A value's text (`Display`) as a JSON string, without building it first.
struct Text<'a, T>(&'a T);

impl<T: Display> Serialize for Text<'_, T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self.0)
    }
}
