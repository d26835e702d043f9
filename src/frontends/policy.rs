//! Policy delegation server for Postfix's `check_policy_service`
//! (`SMTPD_POLICY_README`).
//!
//! Postfix sends one request per SMTP protocol stage it is configured to
//! ask at (see [`super::attrs`] for the wire format); this server answers:
//!
//! - **RCPT**: decides for the recipient's domain through the same engine
//!   as the socketmap, writes a decision record and answers `DUNNO`,
//!   unless
//!   - the domain (or a sender rule) requires forced TLS and the
//!     [`TlsKnowledge`] positively knows delivery cannot meet it: a refusal
//!     (`DEFER_IF_PERMIT 4.7.10 …` by default, `REJECT 5.7.10 …`, or
//!     nothing with `refuse = "off"`);
//!   - the sender matches a `[[sender_rule]]`: `FILTER <forced_transport>:`
//!     once per message. FILTER reroutes the **whole message**, every
//!     recipient, through that transport, whose `smtp_tls_policy_maps`
//!     uses the `tls_forced` socketmap name.
//! - **DATA**: with `trace_header` set, `PREPEND <name>: <summary>` (a
//!   header line summarising the recipients' decisions); otherwise `DUNNO`.
//!   Postfix refuses PREPEND at END-OF-MESSAGE, so the header is added
//!   here, when every recipient is known and the content is not yet
//!   received.
//! - **END-OF-MESSAGE**: one decision record for the message, tying its
//!   queue id and instance to every recipient's decision; `DUNNO`.
//! - Anything else (other stages, other request types): `DUNNO`.
//!
//! **Fail-safe**: the server can never block mail by itself. An internal
//! error (a panic in the handler or in the knowledge source) or an answer
//! that takes longer than `request_timeout` is logged and answered
//! `DUNNO`. A malformed request is logged and the connection closed without
//! a reply (Postfix then reconnects; other connections are not affected).
//! For when the server is down, configure Postfix with
//! `check_policy_service { inet:…, default_action=DUNNO }`.
//!
//! RCPT decisions are kept per message (Postfix's `instance` attribute)
//! until END-OF-MESSAGE, because at DATA and END-OF-MESSAGE Postfix sends
//! an empty `recipient` when there are several. The state is shared by all
//! connections (Postfix may ask at RCPT and END-OF-MESSAGE over different
//! connections), bounded by [`MAX_RECIPIENTS_PER_MESSAGE`] and
//! [`MAX_OPEN_MESSAGES`], dropped at END-OF-MESSAGE, when the same
//! connection moves on to another message, or after [`MESSAGE_STATE_TTL`].

use std::any::Any;
use std::collections::HashMap;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use arc_swap::ArcSwap;
use serde::Deserialize;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::attrs::{Decoder, Request, encode_reply};
use crate::daemon::Context;
use crate::engine::Engine;
use crate::engine::decision::{Decision, SourceKind, Tls};
use crate::engine::key::{Destination, KeyForm};
use crate::engine::refusal::{
    Assessment, RefuseMode, Requirement, TlsKnowledge, assess, refusal_action,
};
use crate::listen::{Conn, ListenAddr, Listener, SocketOptions, parse_mode};
use crate::log::record::{DecisionLog, DecisionRecord, RecipientRecord};
use crate::metrics::{Frontend, Metrics};
use crate::sources::static_file::{SenderHit, StaticPolicy};

/// Recipients remembered per message; more are answered and logged at
/// RCPT but left out of the END-OF-MESSAGE record (Postfix's own
/// `smtpd_recipient_limit` defaults to 1000).
pub const MAX_RECIPIENTS_PER_MESSAGE: usize = 1000;
/// Messages with RCPT decisions remembered at once, over all connections;
/// beyond this the oldest is dropped (and logged).
pub const MAX_OPEN_MESSAGES: usize = 10_000;
/// A message whose END-OF-MESSAGE never came (the client gave up, or
/// Postfix only asks at RCPT) is forgotten after this long.
pub const MESSAGE_STATE_TTL: Duration = Duration::from_secs(3600);
/// Longest trace header line, name included (RFC 5322 allows 998).
pub const MAX_TRACE_HEADER_LEN: usize = 900;

/// The `request=` value Postfix sends.
const POLICY_REQUEST: &str = "smtpd_access_policy";
/// Bytes read from a connection at a time.
const READ_CHUNK: usize = 4096;
/// How often expired message state is looked for.
const SWEEP_INTERVAL: Duration = Duration::from_secs(60);

/// `[policy_server]` in the daemon configuration.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyServerConfig {
    /// `inet:ADDRESS:PORT` or `unix:/PATH`.
    pub listen: ListenAddr,
    /// Unix socket mode, octal (`"0660"`).
    pub socket_mode: Option<String>,
    pub socket_owner: Option<String>,
    pub socket_group: Option<String>,
    /// What to answer for a recipient whose forced TLS is known to fail,
    /// unless its rule says otherwise.
    #[serde(default)]
    pub refuse: RefuseMode,
    /// The master.cf transport that sender-rule mail is FILTERed to; it
    /// must use the `tls_forced` socketmap name (postfix-examples/master.cf
    /// defines it).
    #[serde(default = "default_forced_transport")]
    pub forced_transport: String,
    /// Header name for the trace header (`"X-TLS-Policy"`); absent = no
    /// header.
    pub trace_header: Option<String>,
    /// Connections served at once (Postfix keeps one per smtpd process).
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Close a connection with no request for this long. Longer than
    /// Postfix's `smtpd_policy_service_max_idle` (300 s), so Postfix
    /// closes first.
    #[serde(default = "default_idle", with = "crate::config::human_duration")]
    pub idle_timeout: Duration,
    /// Longest time to answer one request; after it, `DUNNO`.
    #[serde(
        default = "default_request_timeout",
        with = "crate::config::human_duration"
    )]
    pub request_timeout: Duration,
}

fn default_forced_transport() -> String {
    "smtp-tls-forced".into()
}

fn default_max_connections() -> usize {
    1024
}
fn default_idle() -> Duration {
    Duration::from_secs(600)
}
fn default_request_timeout() -> Duration {
    Duration::from_secs(10)
}

impl PolicyServerConfig {
    pub fn socket_options(&self) -> SocketOptions {
        SocketOptions {
            mode: self.socket_mode.as_deref().and_then(|m| parse_mode(m).ok()),
            owner: self.socket_owner.clone(),
            group: self.socket_group.clone(),
        }
    }

    /// Check the values on their own. The error names the key
    /// (`policy_server.trace_header`) and the problem.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        if self.max_connections == 0 {
            return Err(("policy_server.max_connections", "must be at least 1".into()));
        }
        if let Some(m) = &self.socket_mode {
            parse_mode(m).map_err(|e| ("policy_server.socket_mode", e))?;
        }
        {
            let t = &self.forced_transport;
            let ok = !t.is_empty()
                && t.len() <= 64
                && t.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
            if !ok {
                return Err((
                    "policy_server.forced_transport",
                    format!(
                        "{t:?} is not a master.cf service name (letters, digits, '-', '_', '.'; no ':')"
                    ),
                ));
            }
        }
        if let Some(h) = &self.trace_header {
            let ok = !h.is_empty()
                && h.len() <= 64
                && h.bytes().all(|b| b.is_ascii_graphic() && b != b':');
            if !ok {
                return Err((
                    "policy_server.trace_header",
                    format!("{h:?} is not a header name (printable ASCII, no spaces or ':')"),
                ));
            }
        }
        if self.idle_timeout.is_zero() {
            return Err(("policy_server.idle_timeout", "must be more than 0".into()));
        }
        if self.request_timeout.is_zero() {
            return Err((
                "policy_server.request_timeout",
                "must be more than 0".into(),
            ));
        }
        Ok(())
    }
}

/// The reloadable part of the policy server settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    pub refuse: RefuseMode,
    pub forced_transport: Arc<str>,
    pub trace_header: Option<Arc<str>>,
    pub idle_timeout: Duration,
    pub request_timeout: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            refuse: RefuseMode::default(),
            forced_transport: Arc::from(default_forced_transport()),
            trace_header: None,
            idle_timeout: default_idle(),
            request_timeout: default_request_timeout(),
        }
    }
}

impl From<&PolicyServerConfig> for Settings {
    fn from(c: &PolicyServerConfig) -> Self {
        Settings {
            refuse: c.refuse,
            forced_transport: Arc::from(c.forced_transport.as_str()),
            trace_header: c.trace_header.as_deref().map(Arc::from),
            idle_timeout: c.idle_timeout,
            request_timeout: c.request_timeout,
        }
    }
}

/// The engine and the decision log, wherever they live.
pub trait Backend: Send + Sync {
    fn engine(&self) -> &Engine;
    fn decision_log(&self) -> &DecisionLog;
    /// Where requests, decisions and errors are counted, if anywhere.
    fn metrics(&self) -> Option<&Arc<Metrics>> {
        None
    }
}

impl Backend for Context {
    fn engine(&self) -> &Engine {
        &self.engine
    }

    fn decision_log(&self) -> &DecisionLog {
        &self.log
    }

    fn metrics(&self) -> Option<&Arc<Metrics>> {
        Some(&self.metrics)
    }
}

/// Everything the policy server needs.
#[derive(Clone)]
pub struct PolicyDeps {
    pub backend: Arc<dyn Backend>,
    /// Swapped on reload; read once per request.
    pub settings: Arc<ArcSwap<Settings>>,
    pub knowledge: Arc<dyn TlsKnowledge>,
    pub max_connections: usize,
}

impl PolicyDeps {
    fn count_error(&self, kind: &'static str) {
        if let Some(m) = self.backend.metrics() {
            m.error("policy", kind);
        }
    }

    pub fn new(
        backend: Arc<dyn Backend>,
        config: &PolicyServerConfig,
        knowledge: Arc<dyn TlsKnowledge>,
    ) -> PolicyDeps {
        PolicyDeps {
            backend,
            settings: Arc::new(ArcSwap::from_pointee(Settings::from(config))),
            knowledge,
            max_connections: config.max_connections,
        }
    }
}

/// Accept connections until shutdown, then wait for open connections to
/// finish the request they are on.
pub async fn serve(listener: Listener, deps: PolicyDeps, shutdown: CancellationToken) {
    let slots = Arc::new(Semaphore::new(deps.max_connections.max(1)));
    let messages = Arc::new(Messages::default());
    let mut conns = JoinSet::new();
    loop {
        let permit = tokio::select! {
            _ = shutdown.cancelled() => break,
            p = slots.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
        };
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => break,
            a = listener.accept() => a,
        };
        while conns.try_join_next().is_some() {}
        match accepted {
            Ok((conn, peer)) => {
                let server = Server {
                    deps: deps.clone(),
                    messages: messages.clone(),
                    peer,
                    instance: None,
                };
                let shutdown = shutdown.clone();
                let open = deps
                    .backend
                    .metrics()
                    .map(|m| m.connection(Frontend::Policy));
                conns.spawn(async move {
                    let _permit = permit;
                    let _open = open;
                    match conn {
                        Conn::Tcp(s) => server.connection(s, &shutdown).await,
                        Conn::Unix(s) => server.connection(s, &shutdown).await,
                    }
                });
            }
            Err(e) => {
                deps.count_error("accept");
                tracing::warn!(error = %e, "policy server accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    drop(listener);
    while conns.join_next().await.is_some() {}
}

/// One action and the word that goes into the record's `reply`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Action {
    verb: &'static str,
    text: String,
}

impl Action {
    fn dunno() -> Action {
        Action {
            verb: "DUNNO",
            text: "DUNNO".into(),
        }
    }
}

/// One connection's handler.
struct Server {
    deps: PolicyDeps,
    messages: Arc<Messages>,
    peer: String,
    /// The message this connection last asked about.
    instance: Option<String>,
}

impl Server {
    async fn connection<S>(mut self, mut stream: S, shutdown: &CancellationToken)
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let mut decoder = Decoder::new();
        let mut buf: Vec<u8> = Vec::with_capacity(READ_CHUNK);
        let mut out: Vec<u8> = Vec::with_capacity(256);
        let cancelled = shutdown.cancelled();
        tokio::pin!(cancelled);
        let mut last_request = Instant::now();
        let idle = tokio::time::sleep_until(last_request + self.deps.settings.load().idle_timeout);
        tokio::pin!(idle);
        loop {
            // Answer every complete request received; requests before a
            // malformed one still get their replies.
            let mut close = false;
            let mut at = 0;
            while at < buf.len() {
                match decoder.push(&buf[at..]) {
                    Ok((used, request)) => {
                        at += used;
                        if let Some(request) = request {
                            let action = self.answer(&request).await;
                            encode_reply(&action, &mut out);
                        }
                    }
                    Err(e) => {
                        self.deps.count_error("malformed_request");
                        tracing::warn!(
                            peer = %self.peer,
                            error = %e,
                            "malformed policy request; closing connection without a reply"
                        );
                        close = true;
                        break;
                    }
                }
            }
            buf.clear();
            if !out.is_empty() {
                if let Err(e) = stream.write_all(&out).await {
                    tracing::debug!(peer = %self.peer, error = %e, "policy client went away");
                    return;
                }
                out.clear();
                last_request = Instant::now();
            }
            if close || shutdown.is_cancelled() {
                return;
            }
            let read = loop {
                tokio::select! {
                    biased;
                    r = stream.read_buf(&mut buf) => break r,
                    _ = &mut cancelled => return,
                    _ = &mut idle => {
                        let deadline = last_request + self.deps.settings.load().idle_timeout;
                        if Instant::now() >= deadline {
                            tracing::debug!(peer = %self.peer, "policy connection idle; closing");
                            return;
                        }
                        idle.as_mut().reset(deadline);
                    }
                }
            };
            match read {
                Ok(0) => {
                    if decoder.in_request() {
                        self.deps.count_error("incomplete_request");
                        tracing::warn!(peer = %self.peer, "policy client closed mid-request");
                    }
                    return;
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::debug!(peer = %self.peer, error = %e, "policy read failed");
                    return;
                }
            }
        }
    }

    /// The action for one request. Never fails: a panic anywhere below, or
    /// an answer slower than `request_timeout`, becomes `DUNNO`.
    async fn answer(&mut self, request: &Request) -> String {
        let settings = self.deps.settings.load_full();
        let limit = settings.request_timeout;
        let peer = self.peer.clone();
        let started = Instant::now();
        let deps = self.deps.clone();
        let work = CatchUnwind(Box::pin(self.respond(request, settings)));
        let result = tokio::time::timeout(limit, work).await;
        if let Some(m) = deps.backend.metrics() {
            m.lookup(Frontend::Policy, started.elapsed());
        }
        match result {
            Ok(Ok(action)) => action.text,
            Ok(Err(panic)) => {
                deps.count_error("internal");
                tracing::error!(
                    peer = %peer,
                    problem = panic_text(&panic),
                    "internal error answering a policy request; answering DUNNO"
                );
                Action::dunno().text
            }
            Err(_) => {
                deps.count_error("timeout");
                tracing::warn!(
                    peer = %peer,
                    timeout = ?limit,
                    "policy request took too long; answering DUNNO"
                );
                Action::dunno().text
            }
        }
    }

    async fn respond(&mut self, request: &Request, settings: Arc<Settings>) -> Action {
        let kind = request.value("request");
        if kind != POLICY_REQUEST {
            tracing::warn!(
                peer = %self.peer,
                request = kind,
                "not a {POLICY_REQUEST} request; answering DUNNO"
            );
            return Action::dunno();
        }
        let instance = request.value("instance");
        self.switch_instance(instance);
        let state = request.value("protocol_state");
        if state.eq_ignore_ascii_case("RCPT") {
            self.rcpt(request, &settings).await
        } else if state.eq_ignore_ascii_case("DATA") {
            self.data(request, &settings).await
        } else if state.eq_ignore_ascii_case("END-OF-MESSAGE") {
            self.end_of_message(request).await
        } else {
            Action::dunno()
        }
    }

    /// A connection that moves on to another message is done with the
    /// previous one (an smtpd process handles one message at a time).
    fn switch_instance(&mut self, instance: &str) {
        if instance.is_empty() || self.instance.as_deref() == Some(instance) {
            return;
        }
        if let Some(previous) = self.instance.replace(instance.to_string()) {
            self.messages.remove(&previous);
        }
    }

    async fn rcpt(&mut self, request: &Request, settings: &Settings) -> Action {
        let recipient = request.value("recipient");
        let instance = request.value("instance");
        let sender = request.value("sender");
        let engine = self.deps.backend.engine();
        let ruling = rule_recipient(engine, recipient, sender, settings).await;
        if let Some(m) = self.deps.backend.metrics() {
            m.decision(Frontend::Policy, &ruling.decision);
        }
        let refusal = refusal_for(&ruling, self.deps.knowledge.as_ref());
        let action = match (refusal, &ruling.transport) {
            (Some(r), _) => r,
            (None, Some(t)) if self.messages.take_filter(instance) => Action {
                verb: "FILTER",
                text: format!("FILTER {t}:"),
            },
            _ => Action::dunno(),
        };

        let mut rec = ruling.record(request);
        rec.recipient = Some(recipient.to_string());
        rec.reply = action.verb;
        rec.action = Some(action.text.clone());
        if !instance.is_empty() {
            let entry = ruling.recipient_record(recipient, Some(action.text.clone()));
            self.messages
                .add_recipient(instance, request, ruling.sender_hit.as_ref(), entry);
        }
        self.deps.backend.decision_log().log(rec);
        action
    }

    async fn data(&mut self, request: &Request, settings: &Settings) -> Action {
        let Some(name) = &settings.trace_header else {
            return Action::dunno();
        };
        let instance = request.value("instance");
        let mut summary = self.messages.trace(instance).filter(|s| !s.is_empty());
        if summary.is_none() {
            // Not asked at RCPT (or the state is gone): a single recipient
            // can still be decided now.
            let recipient = request.value("recipient");
            if !recipient.is_empty() {
                let engine = self.deps.backend.engine();
                let ruling =
                    rule_recipient(engine, recipient, request.value("sender"), settings).await;
                let r = ruling.recipient_record(recipient, None);
                summary = Some(trace_value(
                    std::slice::from_ref(&r),
                    ruling.sender_hit.as_ref().map(|h| h.rule),
                ));
            }
        }
        match summary {
            Some(s) if !s.is_empty() => Action {
                verb: "PREPEND",
                text: trace_header(name, &s),
            },
            _ => Action::dunno(),
        }
    }

    async fn end_of_message(&mut self, request: &Request) -> Action {
        let instance = request.value("instance");
        let engine = self.deps.backend.engine();
        let policy = engine.policy();
        let message = if instance.is_empty() {
            None
        } else {
            self.messages.take(instance)
        };
        if !instance.is_empty() && self.instance.as_deref() == Some(instance) {
            self.instance = None;
        }
        let sender = request.value("sender");
        let (recipients, dropped, sender_rule) = match message {
            Some(m) => (m.recipients, m.dropped, m.sender_rule),
            None => {
                let recipient = request.value("recipient");
                let settings = self.deps.settings.load_full();
                if recipient.is_empty() {
                    (Vec::new(), 0, policy.lookup_sender(sender).map(|h| h.rule))
                } else {
                    let ruling = rule_recipient(engine, recipient, sender, &settings).await;
                    let hit = ruling.sender_hit.as_ref().map(|h| h.rule);
                    (vec![ruling.recipient_record(recipient, None)], 0, hit)
                }
            }
        };
        let forced = recipients.iter().filter(|r| r.tls == Tls::Forced).count();
        let strictest = recipients
            .iter()
            .find(|r| r.tls == Tls::Forced)
            .or(recipients.first());
        let mut rec = DecisionRecord::new("policy", "", policy.default_decision());
        rec.tls = if forced > 0 || sender_rule.is_some() {
            Tls::Forced
        } else {
            Tls::Opportunistic
        };
        rec.level = None;
        rec.source = strictest.map_or(SourceKind::Default, |r| r.source);
        rec.rule = None;
        rec.matched = None;
        rec.raised = false;
        rec.reason = Arc::from(if recipients.is_empty() {
            format!(
                "no RCPT decision was seen for this message (recipient_count={})",
                request.value("recipient_count")
            )
        } else {
            let mut s = format!(
                "message with {} recipient{}: {forced} forced, {} opportunistic",
                recipients.len() + dropped,
                if recipients.len() + dropped == 1 {
                    ""
                } else {
                    "s"
                },
                recipients.len() - forced
            );
            if dropped > 0 {
                s.push_str(&format!(
                    ", {dropped} not listed (over {MAX_RECIPIENTS_PER_MESSAGE})"
                ));
            }
            s
        });
        rec.queue_id = non_empty(request.value("queue_id"));
        rec.instance = non_empty(instance);
        rec.sender = Some(sender.to_string());
        rec.client_address = non_empty(request.value("client_address"));
        rec.sender_rule = sender_rule;
        rec.recipients = Some(recipients);
        let action = Action::dunno();
        rec.reply = action.verb;
        rec.action = Some(action.text.clone());
        self.deps.backend.decision_log().log(rec);
        action
    }
}

/// Everything decided about one recipient.
struct Ruling {
    /// The domain part as received.
    key: String,
    dest: Option<Destination>,
    /// The decision that applies: the domain's, raised to forced when a
    /// sender rule reroutes the message.
    decision: Decision,
    sender_hit: Option<SenderHit>,
    /// Where to FILTER to (a sender rule matched and a transport is set).
    transport: Option<Arc<str>>,
    refuse: RefuseMode,
}

impl Ruling {
    /// The normalised domain, for domain destinations only (not address
    /// literals).
    fn domain(&self) -> Option<&str> {
        self.dest
            .as_ref()
            .filter(|d| d.form == KeyForm::Domain)
            .map(|d| d.name.as_str())
    }

    fn record(&self, request: &Request) -> DecisionRecord {
        let mut rec = DecisionRecord::new("policy", &self.key, &self.decision);
        rec.domain = self.dest.as_ref().map(|d| d.name.clone());
        rec.queue_id = non_empty(request.value("queue_id"));
        rec.instance = non_empty(request.value("instance"));
        rec.sender = Some(request.value("sender").to_string());
        rec.client_address = non_empty(request.value("client_address"));
        rec.sender_rule = self.sender_hit.as_ref().map(|h| h.rule);
        rec
    }

    fn recipient_record(&self, recipient: &str, action: Option<String>) -> RecipientRecord {
        RecipientRecord {
            recipient: Some(recipient.to_string()),
            domain: self.dest.as_ref().map(|d| d.name.clone()),
            tls: self.decision.tls(),
            level: self.decision.policy.clone(),
            source: self.decision.source,
            rule: self.decision.rule,
            reason: self.decision.reason.clone(),
            action,
        }
    }
}

/// Ask the knowledge source, when there is something to ask about; a miss
/// schedules a background probe.
fn assess_ruling(ruling: &Ruling, knowledge: &dyn TlsKnowledge) -> Assessment {
    if ruling.refuse == RefuseMode::Off || Requirement::of(ruling.decision.level).is_none() {
        return Assessment::Deliverable;
    }
    let Some(domain) = ruling.domain() else {
        return Assessment::Unknown;
    };
    let known = knowledge.known(domain);
    if known.is_none() {
        knowledge.schedule(domain);
    }
    assess(&ruling.decision, known.as_ref())
}

/// The refusal for a recipient, if what is known says its forced TLS
/// cannot be met and refusals are on.
fn refusal_for(ruling: &Ruling, knowledge: &dyn TlsKnowledge) -> Option<Action> {
    match assess_ruling(ruling, knowledge) {
        Assessment::Cannot { requirement, found } => ruling.domain().and_then(|d| {
            refusal_action(ruling.refuse, d, requirement, &found).map(|text| Action {
                verb: match ruling.refuse {
                    RefuseMode::Reject => "REJECT",
                    _ => "DEFER_IF_PERMIT",
                },
                text,
            })
        }),
        _ => None,
    }
}

/// What the policy server would answer at RCPT for a recipient in
/// `domain` with a null sender, from what `knowledge` knows now: the
/// decision and the action text (`DUNNO`, `DEFER_IF_PERMIT 4.7.10 …`).
/// For `tls-policyd probe`.
pub async fn rcpt_answer(
    engine: &Engine,
    domain: &str,
    settings: &Settings,
    knowledge: &dyn TlsKnowledge,
) -> (Decision, String) {
    let ruling = rule_recipient(engine, &format!("postmaster@{domain}"), "", settings).await;
    let action = refusal_for(&ruling, knowledge).unwrap_or_else(Action::dunno);
    (ruling.decision, action.text)
}

/// Decide for a recipient: the engine's decision for its domain, the
/// sender rule, and which refusal setting applies.
async fn rule_recipient(
    engine: &Engine,
    recipient: &str,
    sender: &str,
    settings: &Settings,
) -> Ruling {
    let key = recipient.rsplit_once('@').map_or("", |(_, d)| d);
    let (dest, decision) = engine.decide_key(key).await;
    let policy = engine.policy();
    let sender_hit = policy.lookup_sender(sender);
    let transport = sender_hit
        .as_ref()
        .map(|_| settings.forced_transport.clone());
    let raised = transport.is_some() && Requirement::of(decision.level).is_none();
    let refuse = if Requirement::of(decision.level).is_some() {
        // The domain itself requires forced TLS: its rule's setting.
        rule_refuse(&policy, &decision).unwrap_or(settings.refuse)
    } else if raised {
        sender_hit
            .as_ref()
            .and_then(|h| policy.sender_rule(h.rule))
            .and_then(|r| r.refuse)
            .unwrap_or(settings.refuse)
    } else {
        settings.refuse
    };
    let decision = if transport.is_some() {
        decision.forced()
    } else {
        decision
    };
    Ruling {
        key: key.to_string(),
        dest,
        decision,
        sender_hit,
        transport,
        refuse,
    }
}

/// The `refuse` of the static rule behind a decision. Checked against the
/// decision's policy text so a reload between deciding and looking here
/// never picks another rule's setting.
fn rule_refuse(policy: &StaticPolicy, decision: &Decision) -> Option<RefuseMode> {
    if decision.source != SourceKind::Static {
        return None;
    }
    let index = usize::try_from(decision.rule?.checked_sub(1)?).ok()?;
    let rule = policy.rules().get(index)?;
    if rule.policy != decision.policy {
        return None;
    }
    rule.refuse
}

fn non_empty(s: &str) -> Option<String> {
    (!s.is_empty()).then(|| s.to_string())
}

/// `Name: value`, sanitised, within [`MAX_TRACE_HEADER_LEN`].
fn trace_header(name: &str, value: &str) -> String {
    let mut header = format!("{name}: ");
    for c in value.chars() {
        if header.len() >= MAX_TRACE_HEADER_LEN {
            break;
        }
        // One byte per character pushed: the length check is exact.
        header.push(if c == ' ' || c.is_ascii_graphic() {
            c
        } else {
            '?'
        });
    }
    format!("PREPEND {header}")
}

/// The trace header value: each domain once, in order, with its class,
/// level and source; refused recipients are left out (they are not part
/// of the message).
fn trace_value(recipients: &[RecipientRecord], sender_rule: Option<u32>) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut seen: Vec<&str> = Vec::new();
    let mut more = 0usize;
    // Room for the parts, leaving space for the name and the tail.
    let budget = MAX_TRACE_HEADER_LEN.saturating_sub(120);
    let mut used = 0usize;
    for r in recipients {
        let refused = r
            .action
            .as_deref()
            .is_some_and(|a| a.starts_with("DEFER_IF_PERMIT") || a.starts_with("REJECT"));
        if refused {
            continue;
        }
        let domain = r.domain.as_deref().unwrap_or("(no domain)");
        if seen.contains(&domain) {
            continue;
        }
        seen.push(domain);
        let source = match r.rule {
            Some(n) => format!("{} rule {n}", r.source),
            None => r.source.to_string(),
        };
        let part = format!("{domain}={} ({}, {source})", r.tls, r.level);
        if used + part.len() + 2 > budget {
            more += 1;
            continue;
        }
        used += part.len() + 2;
        parts.push(part);
    }
    let mut value = parts.join("; ");
    if more > 0 {
        value.push_str(&format!("; +{more} more domains"));
    }
    if let Some(n) = sender_rule
        && !value.is_empty()
    {
        value.push_str(&format!(
            "; sender rule {n}: forced TLS for the whole message"
        ));
    }
    value
}

/// RCPT decisions of one message.
#[derive(Debug)]
struct Message {
    created: Instant,
    sender_rule: Option<u32>,
    filter_sent: bool,
    recipients: Vec<RecipientRecord>,
    /// Recipients over [`MAX_RECIPIENTS_PER_MESSAGE`], counted only.
    dropped: usize,
}

impl Message {
    fn new() -> Message {
        Message {
            created: Instant::now(),
            sender_rule: None,
            filter_sent: false,
            recipients: Vec::new(),
            dropped: 0,
        }
    }
}

#[derive(Debug)]
struct MessagesInner {
    map: HashMap<String, Message>,
    last_sweep: Instant,
}

/// Per-message state shared by every connection of one server.
#[derive(Debug)]
struct Messages {
    inner: Mutex<MessagesInner>,
}

impl Default for Messages {
    fn default() -> Self {
        Messages {
            inner: Mutex::new(MessagesInner {
                map: HashMap::new(),
                last_sweep: Instant::now(),
            }),
        }
    }
}

impl Messages {
    fn lock(&self) -> MutexGuard<'_, MessagesInner> {
        // A panic while holding the lock leaves a map that is still a
        // valid map: keep using it.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The message's entry, created when missing (expired entries are
    /// swept and the oldest dropped when full).
    fn entry<'a>(inner: &'a mut MessagesInner, instance: &str) -> &'a mut Message {
        let now = Instant::now();
        if now.duration_since(inner.last_sweep) >= SWEEP_INTERVAL {
            inner.last_sweep = now;
            let before = inner.map.len();
            inner
                .map
                .retain(|_, m| now.duration_since(m.created) < MESSAGE_STATE_TTL);
            let gone = before - inner.map.len();
            if gone > 0 {
                tracing::debug!(
                    messages = gone,
                    "forgot messages that never reached END-OF-MESSAGE"
                );
            }
        }
        if !inner.map.contains_key(instance) && inner.map.len() >= MAX_OPEN_MESSAGES {
            let oldest = inner
                .map
                .iter()
                .min_by_key(|(_, m)| m.created)
                .map(|(k, _)| k.clone());
            if let Some(k) = oldest {
                inner.map.remove(&k);
                tracing::warn!(
                    limit = MAX_OPEN_MESSAGES,
                    instance = %k,
                    "too many open messages; forgot the oldest one's RCPT decisions"
                );
            }
        }
        inner
            .map
            .entry(instance.to_string())
            .or_insert_with(Message::new)
    }

    /// Whether FILTER is still to be sent for this message; marks it sent.
    /// Messages without an instance get it every time.
    fn take_filter(&self, instance: &str) -> bool {
        if instance.is_empty() {
            return true;
        }
        let mut inner = self.lock();
        let m = Self::entry(&mut inner, instance);
        !std::mem::replace(&mut m.filter_sent, true)
    }

    fn add_recipient(
        &self,
        instance: &str,
        request: &Request,
        sender_hit: Option<&SenderHit>,
        entry: RecipientRecord,
    ) {
        let mut inner = self.lock();
        let m = Self::entry(&mut inner, instance);
        if let Some(h) = sender_hit {
            m.sender_rule = Some(h.rule);
        }
        if m.recipients.len() < MAX_RECIPIENTS_PER_MESSAGE {
            m.recipients.push(entry);
        } else {
            if m.dropped == 0 {
                tracing::warn!(
                    instance,
                    queue_id = request.value("queue_id"),
                    limit = MAX_RECIPIENTS_PER_MESSAGE,
                    "message has more recipients than are remembered; the rest are only in their RCPT records"
                );
            }
            m.dropped += 1;
        }
    }

    /// The trace header value for a message, if its RCPT decisions are
    /// known.
    fn trace(&self, instance: &str) -> Option<String> {
        if instance.is_empty() {
            return None;
        }
        let inner = self.lock();
        let m = inner.map.get(instance)?;
        Some(trace_value(&m.recipients, m.sender_rule))
    }

    fn take(&self, instance: &str) -> Option<Message> {
        self.lock().map.remove(instance)
    }

    fn remove(&self, instance: &str) {
        self.lock().map.remove(instance);
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().map.len()
    }
}

/// A future that turns a panic while polling into an error, so one bad
/// request cannot take the connection (or the reply) down with it.
struct CatchUnwind<'a, T>(Pin<Box<dyn Future<Output = T> + Send + 'a>>);

impl<T> Future for CatchUnwind<'_, T> {
    type Output = Result<T, Box<dyn Any + Send>>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Self::Output> {
        let inner = self.0.as_mut();
        match std::panic::catch_unwind(AssertUnwindSafe(move || inner.poll(cx))) {
            Ok(Poll::Pending) => Poll::Pending,
            Ok(Poll::Ready(v)) => Poll::Ready(Ok(v)),
            Err(panic) => Poll::Ready(Err(panic)),
        }
    }
}

fn panic_text(panic: &Box<dyn Any + Send>) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "panic".to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::decision::Level;

    fn rcpt(domain: &str, tls: Tls, level: &str, action: Option<&str>) -> RecipientRecord {
        RecipientRecord {
            recipient: Some(format!("u@{domain}")),
            domain: Some(domain.to_string()),
            tls,
            level: Arc::from(level),
            source: SourceKind::Static,
            rule: Some(1),
            reason: Arc::from("r"),
            action: action.map(str::to_string),
        }
    }

    fn config(extra: &str) -> Result<PolicyServerConfig, toml::de::Error> {
        toml::from_str(&format!("listen = \"inet:127.0.0.1:0\"\n{extra}"))
    }

    #[test]
    fn config_defaults_and_validation() {
        let c = config("").unwrap();
        assert_eq!(c.refuse, RefuseMode::Defer);
        assert_eq!(c.forced_transport, "smtp-tls-forced");
        assert_eq!(c.trace_header, None);
        assert_eq!(c.max_connections, 1024);
        assert_eq!(c.idle_timeout, Duration::from_secs(600));
        assert_eq!(c.request_timeout, Duration::from_secs(10));
        assert!(c.validate().is_ok());

        let c = config("refuse = \"reject\"\nforced_transport = \"smtp-tls-forced\"\ntrace_header = \"X-TLS-Policy\"\nidle_timeout = \"1m\"\n").unwrap();
        assert_eq!(c.refuse, RefuseMode::Reject);
        assert!(c.validate().is_ok());
        let s = Settings::from(&c);
        assert_eq!(&*s.forced_transport, "smtp-tls-forced");
        assert_eq!(s.idle_timeout, Duration::from_secs(60));

        assert!(config("refuse = \"later\"\n").is_err());
        assert!(config("listn = \"x\"\n").is_err());
        assert!(config("idle_timeout = \"soon\"\n").is_err());
        for (extra, key) in [
            (
                "forced_transport = \"smtp:[relay]\"\n",
                "policy_server.forced_transport",
            ),
            (
                "forced_transport = \"\"\n",
                "policy_server.forced_transport",
            ),
            (
                "trace_header = \"X-TLS Policy\"\n",
                "policy_server.trace_header",
            ),
            (
                "trace_header = \"X-TLS-Policy:\"\n",
                "policy_server.trace_header",
            ),
            ("max_connections = 0\n", "policy_server.max_connections"),
            ("socket_mode = \"999\"\n", "policy_server.socket_mode"),
            (
                "request_timeout = \"0s\"\n",
                "policy_server.request_timeout",
            ),
        ] {
            let e = config(extra).unwrap().validate().unwrap_err();
            assert_eq!(e.0, key, "{extra}");
        }
    }

    #[test]
    fn trace_value_lists_each_domain_once_without_refused_ones() {
        let v = trace_value(
            &[
                rcpt("bank.example", Tls::Forced, "encrypt", Some("DUNNO")),
                rcpt("bank.example", Tls::Forced, "encrypt", Some("DUNNO")),
                rcpt(
                    "gone.example",
                    Tls::Forced,
                    "encrypt",
                    Some("DEFER_IF_PERMIT 4.7.10 x"),
                ),
                rcpt("other.example", Tls::Opportunistic, "may", None),
            ],
            None,
        );
        assert_eq!(
            v,
            "bank.example=forced (encrypt, static rule 1); other.example=opportunistic (may, static rule 1)"
        );
        let v = trace_value(&[rcpt("a.example", Tls::Forced, "encrypt", None)], Some(2));
        assert!(
            v.ends_with("; sender rule 2: forced TLS for the whole message"),
            "{v}"
        );
        assert_eq!(trace_value(&[], Some(1)), "");
    }

    #[test]
    fn trace_header_is_bounded() {
        let many: Vec<_> = (0..200)
            .map(|i| {
                rcpt(
                    &format!("domain{i}.example"),
                    Tls::Opportunistic,
                    "may",
                    None,
                )
            })
            .collect();
        let v = trace_value(&many, Some(1));
        assert!(v.contains("more domains"), "{v}");
        let h = trace_header("X-TLS-Policy", &v);
        assert!(
            h.starts_with("PREPEND X-TLS-Policy: domain0.example="),
            "{h}"
        );
        assert!(
            h.len() - "PREPEND ".len() <= MAX_TRACE_HEADER_LEN,
            "{}",
            h.len()
        );
        let h = trace_header("X-T", "a\nb\u{e9}");
        assert_eq!(h, "PREPEND X-T: a?b?");
    }

    #[test]
    fn message_state_is_bounded() {
        let m = Messages::default();
        let req = Request::default();
        for i in 0..MAX_RECIPIENTS_PER_MESSAGE + 5 {
            m.add_recipient(
                "i1",
                &req,
                None,
                rcpt(&format!("d{i}.example"), Tls::Opportunistic, "may", None),
            );
        }
        let msg = m.take("i1").unwrap();
        assert_eq!(msg.recipients.len(), MAX_RECIPIENTS_PER_MESSAGE);
        assert_eq!(msg.dropped, 5);
        assert!(m.take("i1").is_none());

        for i in 0..MAX_OPEN_MESSAGES + 3 {
            m.add_recipient(
                &format!("m{i}"),
                &req,
                None,
                rcpt("a.example", Tls::Forced, "encrypt", None),
            );
        }
        assert_eq!(m.len(), MAX_OPEN_MESSAGES);
        // The oldest went first.
        assert!(m.take("m0").is_none());
        assert!(m.take(&format!("m{}", MAX_OPEN_MESSAGES + 2)).is_some());
    }

    #[test]
    fn filter_once_per_message() {
        let m = Messages::default();
        assert!(m.take_filter("i1"));
        assert!(!m.take_filter("i1"));
        assert!(m.take_filter("i2"));
        assert!(m.take_filter(""));
        assert!(m.take_filter(""));
    }

    #[test]
    fn rule_refuse_checks_the_rule_still_matches() {
        let p = StaticPolicy::parse(
            "[[rule]]\ndomains=[\"a.example\"]\ntls=\"forced\"\nrefuse=\"reject\"\n",
            std::path::Path::new("p.toml"),
        )
        .unwrap();
        let d = p.decision(p.lookup(&Destination::parse("a.example").unwrap()).unwrap());
        assert_eq!(rule_refuse(&p, &d), Some(RefuseMode::Reject));
        let mut other = d.clone();
        other.policy = Arc::from("secure");
        assert_eq!(rule_refuse(&p, &other), None);
        let mut dflt = d.clone();
        dflt.source = SourceKind::Default;
        assert_eq!(rule_refuse(&p, &dflt), None);
        assert_eq!(Level::Encrypt, d.level);
    }

    #[tokio::test]
    async fn catch_unwind_turns_a_panic_into_an_error() {
        let ok = CatchUnwind(Box::pin(async { 7 })).await;
        assert_eq!(ok.ok(), Some(7));
        let bad: Result<u8, _> = CatchUnwind(Box::pin(async { panic!("boom") })).await;
        assert_eq!(panic_text(&bad.unwrap_err()), "boom");
    }
}
