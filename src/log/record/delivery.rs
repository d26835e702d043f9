//! The outcome record: one delivery attempt Postfix logged, joined with
//! the decision that governed it, and its verdict
//! ([`crate::engine::outcome`]).

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::engine::decision::{SourceKind, Tls};
use crate::engine::outcome::{TlsTrust, Verdict};

/// Which record governed a delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DecidedBy {
    /// The socketmap lookup Postfix's smtp(8) made for the next hop.
    Socketmap,
    /// The policy server's record for the message's recipient.
    Policy,
    /// The milter's record for the message's recipient.
    Milter,
    /// No decision was asked for; the operator's rule for the domain, as
    /// it stands when the delivery is read.
    Rule,
}

impl DecidedBy {
    pub const ALL: [DecidedBy; 4] = [
        DecidedBy::Socketmap,
        DecidedBy::Policy,
        DecidedBy::Milter,
        DecidedBy::Rule,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            DecidedBy::Socketmap => "socketmap",
            DecidedBy::Policy => "policy",
            DecidedBy::Milter => "milter",
            DecidedBy::Rule => "rule",
        }
    }
}

/// The decision a delivery was judged against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GoverningDecision {
    pub by: DecidedBy,
    pub tls: Tls,
    /// The level and attributes as answered (`secure match=...`).
    pub level: Arc<str>,
    pub source: SourceKind,
    pub rule: Option<u32>,
    pub reason: Arc<str>,
}

/// One delivery attempt and its verdict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveryOutcome {
    pub recipient: String,
    pub orig_to: Option<String>,
    /// The recipient's domain, normalised; absent when it has none.
    pub domain: Option<String>,
    /// `relay=` as logged (`mx.example[192.0.2.1]:25`, `none`).
    pub relay: String,
    /// The logging program (`postfix/smtp`, `postfix-out/lmtp`): the
    /// transport's service and instance.
    pub transport: String,
    /// `sent`, `deferred`, `bounced`, `expired`.
    pub status: String,
    pub dsn: String,
    /// The text after the status (the peer's reply or the reason).
    pub status_text: String,
    pub tls_trust: TlsTrust,
    pub tls_protocol: Option<String>,
    pub tls_cipher: Option<String>,
    /// The TLS failure behind a deferral (`not-offered`, ...).
    pub tls_failure: Option<&'static str>,
    pub governing: Option<GoverningDecision>,
    pub verdict: Verdict,
    /// The time in Postfix's log line.
    pub logged_at: SystemTime,
    /// `delay=`.
    pub delay: Option<Duration>,
}
