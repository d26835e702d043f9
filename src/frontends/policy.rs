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

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use serde::Deserialize;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::attrs::{Decoder, Request, encode_reply};
use super::message::{
    CatchUnwind, header_value, message_record, non_empty, panic_text, ruling_record,
    valid_header_name,
};
pub use super::{Backend, Live};
use crate::engine::Engine;
use crate::engine::decision::Decision;
use crate::engine::policy_file::SenderHit;
use crate::engine::recipient::{
    MessageSummary, RecipientDecision, Refusal, Ruling, refusal_for, rule_recipient, trace_value,
};
use crate::engine::refusal::{RefuseMode, TlsKnowledge, status_codes};
use crate::listen::{Conn, ListenAddr, Listener, SocketOptions, parse_mode};
use crate::metrics::Frontend;

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
    #[serde(default = "default_idle", with = "crate::util::duration::human")]
    pub idle_timeout: Duration,
    /// Longest time to answer one request; after it, `DUNNO`.
    #[serde(
        default = "default_request_timeout",
        with = "crate::util::duration::human"
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
        SocketOptions::from_settings(
            self.socket_mode.as_deref(),
            self.socket_owner.as_ref(),
            self.socket_group.as_ref(),
        )
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
            if !valid_header_name(h) {
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

/// Everything the policy server needs.
#[derive(Clone)]
pub struct PolicyDeps {
    pub backend: Arc<dyn Backend>,
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
        let idle = tokio::time::sleep_until(
            last_request + self.deps.backend.live().policy_server.idle_timeout,
        );
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
                        let deadline = last_request + self.deps.backend.live().policy_server.idle_timeout;
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
        let live = self.deps.backend.live();
        let limit = live.policy_server.request_timeout;
        let peer = self.peer.clone();
        let started = Instant::now();
        let deps = self.deps.clone();
        let work = CatchUnwind(Box::pin(self.respond(request, live)));
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

    async fn respond(&mut self, request: &Request, live: Arc<Live>) -> Action {
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
            self.rcpt(request, &live).await
        } else if state.eq_ignore_ascii_case("DATA") {
            self.data(request, &live).await
        } else if state.eq_ignore_ascii_case("END-OF-MESSAGE") {
            self.end_of_message(request, &live).await
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

    async fn rcpt(&mut self, request: &Request, live: &Live) -> Action {
        let settings = &live.policy_server;
        let recipient = request.value("recipient");
        let instance = request.value("instance");
        let sender = request.value("sender");
        let engine = &live.engine;
        let ruling = rule(engine, recipient, sender, settings).await;
        if let Some(m) = self.deps.backend.metrics() {
            m.decision(Frontend::Policy, &ruling.decision);
        }
        let refusal = refusal_for(&ruling, self.deps.knowledge.as_ref()).map(refusal_action);
        let action = match refusal {
            Some(r) => r,
            None if ruling.forced_by_sender && self.messages.take_filter(instance) => Action {
                verb: "FILTER",
                text: format!("FILTER {}:", settings.forced_transport),
            },
            None => Action::dunno(),
        };

        let mut rec = ruling_record(&ruling, "policy");
        rec.queue_id = non_empty(request.value("queue_id"));
        rec.instance = non_empty(request.value("instance"));
        rec.sender = Some(request.value("sender").to_string());
        rec.client_address = non_empty(request.value("client_address"));
        rec.recipient = Some(recipient.to_string());
        rec.reply = action.verb;
        rec.action = Some(action.text.clone());
        if !instance.is_empty() {
            let entry = ruling.recipient_decision(recipient, Some(action.text.clone()));
            self.messages
                .add_recipient(instance, request, ruling.sender_hit.as_ref(), entry);
        }
        self.deps.backend.decision_log().log(rec);
        action
    }

    async fn data(&mut self, request: &Request, live: &Live) -> Action {
        let settings = &live.policy_server;
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
                let engine = &live.engine;
                let ruling = rule(engine, recipient, request.value("sender"), settings).await;
                let r = ruling.recipient_decision(recipient, None);
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

    async fn end_of_message(&mut self, request: &Request, live: &Live) -> Action {
        let instance = request.value("instance");
        let engine = &live.engine;
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
                let settings = &live.policy_server;
                if recipient.is_empty() {
                    (Vec::new(), 0, policy.lookup_sender(sender).map(|h| h.rule))
                } else {
                    let ruling = rule(engine, recipient, sender, settings).await;
                    let hit = ruling.sender_hit.as_ref().map(|h| h.rule);
                    (vec![ruling.recipient_decision(recipient, None)], 0, hit)
                }
            }
        };
        let empty_reason = format!(
            "no RCPT decision was seen for this message (recipient_count={})",
            request.value("recipient_count")
        );
        let mut rec = message_record(
            "policy",
            policy.default_decision(),
            MessageSummary {
                recipients,
                dropped,
                cap: MAX_RECIPIENTS_PER_MESSAGE,
                sender_rule,
                empty_reason: &empty_reason,
            },
        );
        rec.queue_id = non_empty(request.value("queue_id"));
        rec.instance = non_empty(instance);
        rec.sender = Some(sender.to_string());
        rec.client_address = non_empty(request.value("client_address"));
        let action = Action::dunno();
        rec.reply = action.verb;
        rec.action = Some(action.text.clone());
        self.deps.backend.decision_log().log(rec);
        action
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
    let ruling = rule(engine, &format!("postmaster@{domain}"), "", settings).await;
    let action = refusal_for(&ruling, knowledge)
        .map(refusal_action)
        .unwrap_or_else(Action::dunno);
    (ruling.decision, action.text)
}

/// Decide for a recipient with the policy server's settings: sender rules
/// always apply (the message is FILTERed to the forced transport).
async fn rule(engine: &Engine, recipient: &str, sender: &str, settings: &Settings) -> Ruling {
    rule_recipient(engine, recipient, sender, settings.refuse, true).await
}

/// `DEFER_IF_PERMIT 4.7.10 …` or `REJECT 5.7.10 …`.
fn refusal_action(r: Refusal) -> Action {
    let verb = match r.mode {
        RefuseMode::Reject => "REJECT",
        _ => "DEFER_IF_PERMIT",
    };
    let (_, enhanced) = status_codes(r.mode).unwrap_or(("450", "4.7.10"));
    Action {
        verb,
        text: format!("{verb} {enhanced} {}", r.text),
    }
}

/// `PREPEND Name: value`, sanitised and bounded.
fn trace_header(name: &str, value: &str) -> String {
    format!("PREPEND {name}: {}", header_value(name, value))
}

/// RCPT decisions of one message.
#[derive(Debug)]
struct Message {
    created: Instant,
    sender_rule: Option<u32>,
    filter_sent: bool,
    recipients: Vec<RecipientDecision>,
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
        entry: RecipientDecision,
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::decision::Tls;
    use crate::engine::recipient::tests::rcpt;

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
            h.len() - "PREPEND ".len() <= crate::engine::recipient::MAX_TRACE_HEADER_LEN,
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
}
