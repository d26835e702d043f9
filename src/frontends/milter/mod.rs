//! Milter front door (Sendmail 8 milter protocol, for Postfix's
//! `smtpd_milters` and `non_smtpd_milters`, or any other milter host).
//!
//! The milter sees every message: at RCPT it decides for the recipient's
//! domain through the same engine as the other front doors and keeps the
//! decision with the message; at end of message it writes **one decision
//! record** (`frontend = "milter"`) with the Postfix queue id, sender,
//! client, inbound TLS, authenticated user, `Message-ID`, whether the
//! message carries the RFC 8689 `TLS-Required: No` header, and every
//! recipient's decision. A connection carries any number of messages;
//! RSET and aborted transactions drop the message in progress (a record
//! is still written when a recipient had been refused, so refusals are
//! never invisible).
//!
//! Actions, each off by default (`[milter]`):
//! - `refuse`: turn a recipient away at RCPT (`450 4.7.10` or
//!   `550 5.7.10`) when its domain requires forced TLS and the
//!   [`TlsKnowledge`] positively knows delivery cannot meet it, exactly
//!   as the policy server does (a policy-file rule's `refuse` overrides);
//! - `trace_header`: a header summarising the recipients' decisions;
//! - `quarantine`: hold the message (Postfix's hold queue) when an
//!   accepted recipient's forced TLS is known not to be met;
//! - `routing_header`: a header for `milter_header_checks` to FILTER the
//!   message to a transport: `forced` when a `[[sender_rule]]` matches the
//!   sender, `relaxed` when the message says `TLS-Required: No` and no
//!   accepted recipient's forced TLS comes from a rule that forbids it.
//!
//! Only the actions that are on are negotiated (header changes,
//! quarantine), and only the macros used are requested.
//!
//! **Fail-safe**: the milter never blocks mail by itself. A panic in a
//! handler, or a stage that takes longer than `request_timeout`, is logged
//! and answered "continue". Bounded memory: at most `max_recipients`
//! recipients are remembered per message, at most `max_header_bytes` of
//! headers are looked at, and every kept value is cut at
//! [`state::MAX_FIELD_LEN`] bytes; reaching a cap is logged once per
//! message.

pub mod state;

use std::ffi::{CStr, CString};
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll, ready};
use std::time::Duration;

use arc_swap::ArcSwap;
use indymilter::{
    Actions, Callbacks, Context, ContextActions, EitherStream, EomContext, MacroStage, Macros,
    NegotiateContext, ProtoOpts, SetErrorReply, SocketInfo, Status,
};
use serde::Deserialize;
use tokio::net::{TcpStream, UnixStream};
use tokio_util::sync::CancellationToken;

use super::message::{
    Backend, CatchUnwind, assess_delivery, header_value, panic_text, refusal_for, rule_recipient,
    valid_header_name,
};
use crate::engine::refusal::{RefuseMode, TlsKnowledge, status_codes};
use crate::listen::{ListenAddr, Listener, SocketOptions, parse_mode};
use crate::metrics::{ConnectionGuard, Frontend};
use state::{Message, Recipient, Seen, Session};

/// Highest `max_recipients` accepted.
pub const MAX_RECIPIENTS_LIMIT: usize = 100_000;
/// Lowest and highest `max_header_bytes` accepted.
pub const MIN_HEADER_BYTES: usize = 1024;
pub const MAX_HEADER_BYTES_LIMIT: usize = 16 * 1024 * 1024;
/// Pause after a failed accept (out of file descriptors, ...).
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Macros requested per stage.
const CONNECT_MACROS: &str = "j {daemon_name}";
const HELO_MACROS: &str = "{tls_version} {cipher} {cipher_bits} {cert_subject}";
const MAIL_MACROS: &str = "i {auth_authen} {mail_addr}";
const RCPT_MACROS: &str = "i {rcpt_addr}";
const EOM_MACROS: &str = "i";

/// `[milter]` in the daemon configuration.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MilterConfig {
    /// `inet:ADDRESS:PORT` or `unix:/PATH`.
    pub listen: ListenAddr,
    /// Unix socket mode, octal (`"0660"`).
    pub socket_mode: Option<String>,
    pub socket_owner: Option<String>,
    pub socket_group: Option<String>,
    /// Refuse a recipient whose forced TLS is known to fail: `"defer"`
    /// (450 4.7.10), `"reject"` (550 5.7.10) or `"off"` (the default).
    #[serde(default = "refuse_off")]
    pub refuse: RefuseMode,
    /// Header name for the trace header; absent = no header.
    pub trace_header: Option<String>,
    /// Hold messages with a forced recipient that cannot be delivered.
    #[serde(default)]
    pub quarantine: bool,
    /// Header name for the routing header; absent = no header (and sender
    /// rules are not applied by the milter).
    pub routing_header: Option<String>,
    /// Recipients remembered per message; more are decided (and refused)
    /// but left out of the record.
    #[serde(default = "default_max_recipients")]
    pub max_recipients: usize,
    /// Header bytes looked at per message (for `Message-ID` and
    /// `TLS-Required`); later headers are passed through unread.
    #[serde(default = "default_max_header_bytes")]
    pub max_header_bytes: usize,
    /// MTA connections served at once (Postfix opens one per smtpd
    /// process).
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Longest time for one stage; after it, "continue".
    #[serde(
        default = "default_request_timeout",
        with = "crate::config::human_duration"
    )]
    pub request_timeout: Duration,
}

fn refuse_off() -> RefuseMode {
    RefuseMode::Off
}
fn default_max_recipients() -> usize {
    1000
}
fn default_max_header_bytes() -> usize {
    256 * 1024
}
fn default_max_connections() -> usize {
    1024
}
fn default_request_timeout() -> Duration {
    Duration::from_secs(10)
}

impl MilterConfig {
    pub fn socket_options(&self) -> SocketOptions {
        SocketOptions::from_settings(
            self.socket_mode.as_deref(),
            self.socket_owner.as_ref(),
            self.socket_group.as_ref(),
        )
    }

    /// Check the values on their own. The error names the key
    /// (`milter.trace_header`) and the problem.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        if let Some(m) = &self.socket_mode {
            parse_mode(m).map_err(|e| ("milter.socket_mode", e))?;
        }
        for (key, name) in [
            ("milter.trace_header", &self.trace_header),
            ("milter.routing_header", &self.routing_header),
        ] {
            if let Some(h) = name
                && !valid_header_name(h)
            {
                return Err((
                    key,
                    format!("{h:?} is not a header name (printable ASCII, no spaces or ':')"),
                ));
            }
        }
        if let (Some(t), Some(r)) = (&self.trace_header, &self.routing_header)
            && t.eq_ignore_ascii_case(r)
        {
            return Err((
                "milter.routing_header",
                format!("must differ from milter.trace_header ({t:?})"),
            ));
        }
        if !(1..=MAX_RECIPIENTS_LIMIT).contains(&self.max_recipients) {
            return Err((
                "milter.max_recipients",
                format!("must be between 1 and {MAX_RECIPIENTS_LIMIT}"),
            ));
        }
        if !(MIN_HEADER_BYTES..=MAX_HEADER_BYTES_LIMIT).contains(&self.max_header_bytes) {
            return Err((
                "milter.max_header_bytes",
                format!("must be between {MIN_HEADER_BYTES} and {MAX_HEADER_BYTES_LIMIT}"),
            ));
        }
        if self.max_connections == 0 {
            return Err(("milter.max_connections", "must be at least 1".into()));
        }
        if self.request_timeout.is_zero() {
            return Err(("milter.request_timeout", "must be more than 0".into()));
        }
        Ok(())
    }
}

/// The reloadable part of the milter settings. Actions switched on by a
/// reload are negotiated with connections opened afterwards.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    pub refuse: RefuseMode,
    pub trace_header: Option<Arc<str>>,
    pub quarantine: bool,
    pub routing_header: Option<Arc<str>>,
    pub max_recipients: usize,
    pub max_header_bytes: usize,
    pub request_timeout: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            refuse: RefuseMode::Off,
            trace_header: None,
            quarantine: false,
            routing_header: None,
            max_recipients: default_max_recipients(),
            max_header_bytes: default_max_header_bytes(),
            request_timeout: default_request_timeout(),
        }
    }
}

impl From<&MilterConfig> for Settings {
    fn from(c: &MilterConfig) -> Self {
        Settings {
            refuse: c.refuse,
            trace_header: c.trace_header.as_deref().map(Arc::from),
            quarantine: c.quarantine,
            routing_header: c.routing_header.as_deref().map(Arc::from),
            max_recipients: c.max_recipients,
            max_header_bytes: c.max_header_bytes,
            request_timeout: c.request_timeout,
        }
    }
}

impl Settings {
    /// The milter actions these settings need.
    pub fn actions(&self) -> Actions {
        let mut a = Actions::empty();
        if self.trace_header.is_some() || self.routing_header.is_some() {
            a |= Actions::ADD_HEADER;
        }
        if self.quarantine {
            a |= Actions::QUARANTINE;
        }
        a
    }
}

/// Everything the milter needs.
#[derive(Clone)]
pub struct MilterDeps {
    pub backend: Arc<dyn Backend>,
    /// Swapped on reload; read once per stage.
    pub settings: Arc<ArcSwap<Settings>>,
    pub knowledge: Arc<dyn TlsKnowledge>,
    pub max_connections: usize,
}

impl MilterDeps {
    pub fn new(
        backend: Arc<dyn Backend>,
        config: &MilterConfig,
        knowledge: Arc<dyn TlsKnowledge>,
    ) -> MilterDeps {
        MilterDeps {
            backend,
            settings: Arc::new(ArcSwap::from_pointee(Settings::from(config))),
            knowledge,
            max_connections: config.max_connections,
        }
    }
}

/// Per-connection state: the session and what was negotiated.
pub struct Conn {
    session: Session,
    /// Actions the MTA agreed to.
    actions: Actions,
    /// The steps the MTA sends without waiting for a reply
    /// (`ProtoOpts::NOREPLY_*`).
    noreply: ProtoOpts,
    /// Counts the connection as open in the metrics until it closes.
    _open: Option<ConnectionGuard>,
}

/// Serve MTA connections until shutdown; then let each connection finish
/// the stage it is in.
pub async fn serve(listener: Listener, deps: MilterDeps, shutdown: CancellationToken) {
    let config = indymilter::Config {
        max_connections: deps.max_connections.max(1),
        ..Default::default()
    };
    let accept = Accept {
        listener,
        backoff: None,
    };
    let callbacks = callbacks(Arc::new(deps));
    let stop = async move { shutdown.cancelled().await };
    if let Err(e) = indymilter::run(accept, callbacks, config, stop).await {
        tracing::error!(error = %e, "milter stopped accepting connections");
    }
}

/// The listener as indymilter wants it. A failed accept (out of file
/// descriptors, ...) is logged and retried after a pause instead of
/// ending the milter.
struct Accept {
    listener: Listener,
    backoff: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl indymilter::Listener for Accept {
    type Io = EitherStream<TcpStream, UnixStream>;

    fn poll_accept(&mut self, cx: &mut TaskContext<'_>) -> Poll<io::Result<Self::Io>> {
        loop {
            if let Some(pause) = &mut self.backoff {
                ready!(pause.as_mut().poll(cx));
                self.backoff = None;
            }
            let accepted = match &self.listener {
                Listener::Tcp(l) => l.poll_accept(cx).map_ok(|(s, _)| {
                    // Small request/reply exchanges: never wait for Nagle.
                    let _ = s.set_nodelay(true);
                    EitherStream::Tcp(s)
                }),
                Listener::Unix(l, _) => l.poll_accept(cx).map_ok(|(s, _)| EitherStream::Unix(s)),
            };
            match ready!(accepted) {
                Ok(s) => return Poll::Ready(Ok(s)),
                Err(e) => {
                    tracing::warn!(error = %e, "milter accept failed");
                    self.backoff = Some(Box::pin(tokio::time::sleep(ACCEPT_BACKOFF)));
                }
            }
        }
    }
}

/// A macro's value as text.
fn macro_value(macros: &Macros, name: &CStr) -> Option<String> {
    macros.get(name).map(|v| v.to_string_lossy().into_owned())
}

/// [`macro_value`] by a name given as text (names from outside the code).
fn macro_value_named(macros: &Macros, name: &str) -> Option<String> {
    macro_value(macros, &CString::new(name).ok()?)
}

fn queue_id(macros: &Macros) -> Option<String> {
    macro_value(macros, c"i").filter(|s| !s.is_empty())
}

fn text(s: &CString) -> String {
    state::bounded(&s.to_string_lossy())
}

type Shared = Arc<MilterDeps>;

/// Run one stage's work; a panic or a timeout is logged and becomes
/// "continue".
async fn guarded<'a>(
    deps: &Shared,
    stage: &'static str,
    queue_id: Option<String>,
    work: impl Future<Output = Status> + Send + 'a,
) -> Status {
    let limit = deps.settings.load().request_timeout;
    match tokio::time::timeout(limit, CatchUnwind(Box::pin(work))).await {
        Ok(Ok(status)) => status,
        Ok(Err(panic)) => {
            if let Some(m) = deps.backend.metrics() {
                m.error("milter", "internal");
            }
            tracing::error!(
                stage,
                queue_id = queue_id.as_deref().unwrap_or(""),
                problem = panic_text(&panic),
                "internal error in the milter; the message continues"
            );
            Status::Continue
        }
        Err(_) => {
            if let Some(m) = deps.backend.metrics() {
                m.error("milter", "timeout");
            }
            tracing::warn!(
                stage,
                queue_id = queue_id.as_deref().unwrap_or(""),
                timeout = ?limit,
                "milter stage took too long; the message continues"
            );
            Status::Continue
        }
    }
}

fn callbacks(deps: Shared) -> Callbacks<Conn> {
    // Each callback owns a handle on the shared parts.
    let d = || deps.clone();
    Callbacks::new()
        .on_negotiate({
            let deps = d();
            move |cx, actions, opts| {
                let deps = deps.clone();
                Box::pin(async move { negotiate(&deps, cx, actions, opts) })
            }
        })
        .on_connect({
            let deps = d();
            move |cx, hostname, socket| {
                let deps = deps.clone();
                Box::pin(async move {
                    let status = guarded(&deps, "connect", None, async {
                        connect(cx, hostname, socket);
                        Status::Continue
                    })
                    .await;
                    answer(cx.data.as_ref(), ProtoOpts::NOREPLY_CONNECT, status)
                })
            }
        })
        .on_helo({
            let deps = d();
            move |cx, name| {
                let deps = deps.clone();
                Box::pin(async move {
                    let status = guarded(&deps, "helo", None, async {
                        if let Some(c) = cx.data.as_mut() {
                            c.session.helo_name = Some(text(&name));
                        }
                        Status::Continue
                    })
                    .await;
                    answer(cx.data.as_ref(), ProtoOpts::NOREPLY_HELO, status)
                })
            }
        })
        .on_mail({
            let deps = d();
            move |cx, args| {
                let deps = deps.clone();
                Box::pin(async move {
                    let id = queue_id(&cx.macros);
                    let status = guarded(&deps, "mail", id, async {
                        mail(cx, &args);
                        Status::Continue
                    })
                    .await;
                    answer(cx.data.as_ref(), ProtoOpts::NOREPLY_MAIL, status)
                })
            }
        })
        .on_rcpt({
            let deps = d();
            move |cx, args| {
                let deps = deps.clone();
                Box::pin(async move {
                    let id = queue_id(&cx.macros);
                    let status = guarded(&deps, "rcpt", id, rcpt(&deps, cx, args)).await;
                    answer(cx.data.as_ref(), ProtoOpts::NOREPLY_RCPT, status)
                })
            }
        })
        // Answered at once, so that nothing Postfix's smtpd sent is left
        // unanswered when it hands the connection to cleanup (see
        // `protocol_options`).
        .on_data(|_| Box::pin(async { Status::Continue }))
        .on_header({
            let deps = d();
            move |cx, name, value| {
                let deps = deps.clone();
                Box::pin(async move {
                    let id = queue_id(&cx.macros);
                    let status = guarded(&deps, "header", id, async {
                        header(&deps, cx, &name, &value);
                        Status::Continue
                    })
                    .await;
                    answer(cx.data.as_ref(), ProtoOpts::NOREPLY_HEADER, status)
                })
            }
        })
        .on_eom({
            let deps = d();
            move |cx| {
                let deps = deps.clone();
                Box::pin(async move {
                    let id = queue_id(&cx.macros);
                    let work = eom(&deps, cx);
                    guarded(&deps, "end of message", id, work).await
                })
            }
        })
        .on_abort({
            let deps = d();
            move |cx| {
                let deps = deps.clone();
                Box::pin(async move {
                    let id = queue_id(&cx.macros);
                    guarded(&deps, "abort", id, async {
                        end_transaction(&deps, cx, "the transaction was aborted (RSET)");
                        Status::Continue
                    })
                    .await
                })
            }
        })
        .on_close({
            let deps = d();
            move |cx| {
                let deps = deps.clone();
                Box::pin(async move {
                    let id = queue_id(&cx.macros);
                    guarded(&deps, "close", id, async {
                        end_transaction(&deps, cx, "the connection ended during the transaction");
                        cx.data = None;
                        Status::Continue
                    })
                    .await
                })
            }
        })
}

/// Ask for the actions the settings need (those the MTA offers) and the
/// macros used; start the connection's state.
fn negotiate(
    deps: &Shared,
    cx: &mut NegotiateContext<Conn>,
    offered: Actions,
    offered_opts: ProtoOpts,
) -> Status {
    let settings = deps.settings.load();
    let want = settings.actions();
    let refuse = settings.refuse;
    let actions = want & offered;
    if actions != want {
        tracing::warn!(
            wanted = ?want,
            offered = ?offered,
            "the MTA does not offer every milter action the settings need; those actions are skipped"
        );
    }
    // Assigned, not added to: it starts out as everything the MTA offers.
    cx.requested_actions = actions;
    for (stage, names) in [
        (MacroStage::Connect, CONNECT_MACROS),
        (MacroStage::Helo, HELO_MACROS),
        (MacroStage::Mail, MAIL_MACROS),
        (MacroStage::Rcpt, RCPT_MACROS),
        (MacroStage::Eom, EOM_MACROS),
    ] {
        if let Ok(names) = CString::new(names) {
            cx.requested_macros.insert(stage, names);
        }
    }
    let open = deps
        .backend
        .metrics()
        .map(|m| m.connection(Frontend::Milter));
    // Steps and replies: see [`protocol_options`].
    let opts = protocol_options(offered_opts, refuse != RefuseMode::Off);
    cx.requested_opts = opts;
    cx.data = Some(Conn {
        session: Session::default(),
        actions,
        noreply: opts & NOREPLY,
        _open: open,
    });
    Status::Continue
}

/// Every "no reply" protocol option.
const NOREPLY: ProtoOpts = ProtoOpts::NOREPLY_CONNECT
    .union(ProtoOpts::NOREPLY_HELO)
    .union(ProtoOpts::NOREPLY_MAIL)
    .union(ProtoOpts::NOREPLY_RCPT)
    .union(ProtoOpts::NOREPLY_DATA)
    .union(ProtoOpts::NOREPLY_HEADER)
    .union(ProtoOpts::NOREPLY_EOH)
    .union(ProtoOpts::NOREPLY_BODY)
    .union(ProtoOpts::NOREPLY_UNKNOWN);

/// The protocol steps and replies asked of the MTA, from those it offers.
///
/// Each reply is a round trip the MTA waits for, so only the steps that
/// can change what happens are answered: RCPT when recipients may be
/// refused, DATA, and the end of message (headers, trace and routing,
/// quarantine, the record). Connect, HELO, MAIL and headers are sent
/// without waiting for a reply (Postfix writes them together with the
/// next answered step); end of headers, body chunks and unknown commands
/// are skipped (their macros, too, travel with the next answered step).
///
/// Whatever the MTA writes must be followed, before it waits, by a step
/// the milter answers: a packet left unanswered is acknowledged only by
/// the kernel's delayed ACK, and Postfix (which leaves Nagle's algorithm
/// on) holds its next small write until then, about 40 ms per message.
/// Postfix's smtpd sends the DATA step's macros even when the step itself
/// is skipped, then hands the connection to cleanup, whose first write
/// waits behind them: so the DATA step is taken and answered.
fn protocol_options(offered: ProtoOpts, refuse: bool) -> ProtoOpts {
    let mut opts = ProtoOpts::NO_EOH
        | ProtoOpts::NO_BODY
        | ProtoOpts::NO_UNKNOWN
        | ProtoOpts::NOREPLY_CONNECT
        | ProtoOpts::NOREPLY_HELO
        | ProtoOpts::NOREPLY_MAIL
        | ProtoOpts::NOREPLY_HEADER;
    if !refuse {
        opts |= ProtoOpts::NOREPLY_RCPT;
    }
    // Only what the MTA offers may be asked for.
    opts & offered
}

/// `status`, or no reply where the MTA was told not to wait for one.
fn answer(conn: Option<&Conn>, step: ProtoOpts, status: Status) -> Status {
    if conn.is_some_and(|c| c.noreply.contains(step)) {
        Status::Noreply
    } else {
        status
    }
}

fn connect(cx: &mut Context<Conn>, hostname: CString, socket: SocketInfo) {
    let conn = cx.data.get_or_insert_with(|| Conn {
        session: Session::default(),
        actions: Actions::empty(),
        noreply: ProtoOpts::empty(),
        _open: None,
    });
    let (client_address, local_submission) = match socket {
        SocketInfo::Inet(a) => (Some(a.ip().to_string()), Session::is_local_submission(&a)),
        _ => (None, false),
    };
    conn.session = Session {
        client_address,
        client_name: Some(text(&hostname)),
        local_submission,
        ..Session::default()
    };
}

fn mail(cx: &mut Context<Conn>, args: &[CString]) {
    let sender = macro_value(&cx.macros, c"{mail_addr}")
        .map(|s| state::bounded(&s))
        .or_else(|| {
            args.first()
                .map(|a| state::envelope_address(&a.to_string_lossy()))
        })
        .unwrap_or_default();
    let params: Vec<String> = args
        .iter()
        .skip(1)
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let requiretls = state::has_requiretls(params.iter().map(String::as_str));
    let auth = macro_value(&cx.macros, c"{auth_authen}")
        .filter(|s| !s.is_empty())
        .map(|s| state::bounded(&s));
    if let Some(c) = cx.data.as_mut() {
        c.session.message = Some(Message::new(sender, auth, requiretls));
    }
}

async fn rcpt(deps: &Shared, cx: &mut Context<Conn>, args: Vec<CString>) -> Status {
    let settings = deps.settings.load_full();
    let recipient = macro_value(&cx.macros, c"{rcpt_addr}")
        .map(|s| state::bounded(&s))
        .or_else(|| {
            args.first()
                .map(|a| state::envelope_address(&a.to_string_lossy()))
        })
        .unwrap_or_default();
    let id = queue_id(&cx.macros);
    let Some(conn) = cx.data.as_mut() else {
        return Status::Continue;
    };
    // Refusing was off when this connection was negotiated (RCPT needs no
    // reply); a reload that switched it on applies to later connections.
    let can_refuse = !conn.noreply.contains(ProtoOpts::NOREPLY_RCPT);
    let local_submission = conn.session.local_submission;
    let message = conn.session.message.get_or_insert_with(Message::default);
    let engine = deps.backend.engine();
    let started = std::time::Instant::now();
    let mut ruling = rule_recipient(
        engine,
        &recipient,
        &message.sender,
        settings.refuse,
        settings.routing_header.is_some(),
    )
    .await;
    if let Some(m) = deps.backend.metrics() {
        m.lookup(Frontend::Milter, started.elapsed());
        m.decision(Frontend::Milter, &ruling.decision);
    }
    if settings.refuse == RefuseMode::Off || !can_refuse {
        // Refusals are switched on here, not by a policy-file rule.
        ruling.refuse = RefuseMode::Off;
    }
    if ruling.forced_by_sender {
        message.sender_rule = ruling.sender_hit.as_ref().map(|h| h.rule);
    }
    if local_submission && ruling.refuse != RefuseMode::Off {
        // Postfix would defer the whole message instead (see Session).
        tracing::debug!(
            queue_id = id.as_deref().unwrap_or(""),
            recipient = %recipient,
            "mail not received over SMTP: recipients are never refused"
        );
        ruling.refuse = RefuseMode::Off;
    }
    let mut status = Status::Continue;
    let mut reply = None;
    if let Some(refusal) = refusal_for(&ruling, deps.knowledge.as_ref())
        && let Some((code, enhanced)) = status_codes(refusal.mode)
    {
        match cx
            .reply
            .set_error_reply(code, Some(enhanced), [state::escape_reply(&refusal.text)])
        {
            Ok(()) => {
                status = if refusal.mode == RefuseMode::Reject {
                    Status::Reject
                } else {
                    Status::Tempfail
                };
                reply = Some(format!("{code} {enhanced} {}", refusal.text));
                tracing::info!(
                    queue_id = id.as_deref().unwrap_or(""),
                    recipient = %recipient,
                    reply = reply.as_deref().unwrap_or(""),
                    "recipient refused: forced TLS cannot be met"
                );
            }
            Err(e) => tracing::error!(
                recipient = %recipient,
                error = %e,
                "cannot build the refusal reply; the recipient is accepted"
            ),
        }
    }
    if reply.is_none() && settings.quarantine {
        // Quarantine decides at end of message: have the knowledge
        // gathered by then.
        let _ = assess_delivery(&ruling.decision, ruling.domain(), deps.knowledge.as_ref());
    }
    let cap = settings.max_recipients;
    let first_over = message.dropped == 0;
    if !message.add_recipient(Recipient::new(&ruling, &recipient, reply), cap) && first_over {
        tracing::warn!(
            queue_id = id.as_deref().unwrap_or(""),
            limit = cap,
            "message has more recipients than are remembered; the rest are decided but left out of its record"
        );
    }
    status
}

fn header(deps: &Shared, cx: &mut Context<Conn>, name: &CString, value: &CString) {
    let cap = deps.settings.load().max_header_bytes;
    let id = queue_id(&cx.macros);
    let Some(message) = cx.data.as_mut().and_then(|c| c.session.message.as_mut()) else {
        return;
    };
    let name = name.to_string_lossy();
    let value = value.to_string_lossy();
    if !message.header(&name, &value, cap) {
        tracing::warn!(
            queue_id = id.as_deref().unwrap_or(""),
            limit = cap,
            "message headers exceed the bytes looked at; the rest pass unread"
        );
    }
}

async fn eom(deps: &Shared, cx: &mut EomContext<Conn>) -> Status {
    let settings = deps.settings.load_full();
    let seen = Seen::from_macros(|n| macro_value_named(&cx.macros, n));
    let Some(conn) = cx.data.as_mut() else {
        return Status::Continue;
    };
    let Some(message) = conn.session.message.take() else {
        return Status::Continue;
    };
    let id = seen.queue_id.clone().unwrap_or_default();
    let engine = deps.backend.engine();
    let policy = engine.policy();
    let mut done: Vec<String> = Vec::new();

    if settings.quarantine
        && let Some(why) = message.quarantine_reason(deps.knowledge.as_ref())
    {
        if conn.actions.contains(Actions::QUARANTINE) {
            let why = state::bounded(&why);
            match cx.actions.quarantine(why.as_str()).await {
                Ok(()) => {
                    tracing::info!(queue_id = %id, reason = %why, "message quarantined");
                    done.push("quarantine".into());
                }
                Err(e) => tracing::error!(queue_id = %id, error = %e, "cannot quarantine"),
            }
        } else {
            tracing::warn!(queue_id = %id, "quarantine was not negotiated on this connection");
        }
    }
    let mut headers: Vec<(Arc<str>, String)> = Vec::new();
    if let Some(name) = &settings.routing_header
        && let Some(route) = message.route(&policy)
    {
        headers.push((name.clone(), route.to_string()));
    }
    if let Some(name) = &settings.trace_header {
        let v = message.trace();
        if !v.is_empty() {
            headers.push((name.clone(), header_value(name, &v)));
        }
    }
    for (name, value) in headers {
        if !conn.actions.contains(Actions::ADD_HEADER) {
            tracing::warn!(queue_id = %id, header = %name, "header changes were not negotiated on this connection");
            continue;
        }
        match cx.actions.insert_header(0, &*name, value.as_str()).await {
            Ok(()) => done.push(format!("add header {name}: {value}")),
            Err(e) => {
                tracing::error!(queue_id = %id, header = %name, error = %e, "cannot add header")
            }
        }
    }

    let mut rec = state::record(
        &conn.session,
        message,
        seen,
        policy.default_decision(),
        settings.max_recipients,
        "no recipient was seen for this message",
    );
    rec.reply = "CONTINUE";
    rec.action = Some(if done.is_empty() {
        "continue".into()
    } else {
        done.join("; ")
    });
    deps.backend.decision_log().log(rec);
    Status::Continue
}

/// RSET, abort or disconnect: drop the message in progress; write its
/// record only when a recipient had been refused.
fn end_transaction(deps: &Shared, cx: &mut Context<Conn>, why: &str) {
    let seen = Seen::from_macros(|n| macro_value_named(&cx.macros, n));
    let Some(conn) = cx.data.as_mut() else {
        return;
    };
    let Some(message) = conn.session.message.take() else {
        return;
    };
    if !message.has_refusals() {
        return;
    }
    let settings = deps.settings.load();
    let policy = deps.backend.engine().policy();
    let mut rec = state::record(
        &conn.session,
        message,
        seen,
        policy.default_decision(),
        settings.max_recipients,
        "no recipient was seen for this message",
    );
    rec.reason = Arc::from(format!("{}; {why}", rec.reason));
    rec.reply = "ABORT";
    rec.action = Some("none: no message".into());
    deps.backend.decision_log().log(rec);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(extra: &str) -> Result<MilterConfig, toml::de::Error> {
        toml::from_str(&format!("listen = \"inet:127.0.0.1:0\"\n{extra}"))
    }

    #[test]
    fn config_defaults_are_all_off() {
        let c = config("").unwrap();
        assert_eq!(c.refuse, RefuseMode::Off);
        assert_eq!(c.trace_header, None);
        assert!(!c.quarantine);
        assert_eq!(c.routing_header, None);
        assert_eq!(c.max_recipients, 1000);
        assert_eq!(c.max_header_bytes, 256 * 1024);
        assert_eq!(c.max_connections, 1024);
        assert_eq!(c.request_timeout, Duration::from_secs(10));
        assert!(c.validate().is_ok());
        assert_eq!(Settings::from(&c), Settings::default());
        assert_eq!(Settings::from(&c).actions(), Actions::empty());
    }

    #[test]
    fn actions_follow_settings() {
        let c = config("trace_header = \"X-TLS-Policy\"\n").unwrap();
        assert_eq!(Settings::from(&c).actions(), Actions::ADD_HEADER);
        let c = config("routing_header = \"X-TLS-Route\"\nquarantine = true\n").unwrap();
        assert_eq!(
            Settings::from(&c).actions(),
            Actions::ADD_HEADER | Actions::QUARANTINE
        );
        let c = config("refuse = \"defer\"\n").unwrap();
        assert_eq!(
            Settings::from(&c).actions(),
            Actions::empty(),
            "refusing needs no action"
        );
    }

    #[test]
    fn config_errors_name_the_key() {
        assert!(config("refuse = \"later\"\n").is_err());
        assert!(config("lisen = \"x\"\n").is_err());
        assert!(config("request_timeout = \"soon\"\n").is_err());
        assert!(config("quarantine = \"yes\"\n").is_err());
        for (extra, key) in [
            ("trace_header = \"X TLS\"\n", "milter.trace_header"),
            ("routing_header = \"X-Route:\"\n", "milter.routing_header"),
            (
                "trace_header = \"X-A\"\nrouting_header = \"x-a\"\n",
                "milter.routing_header",
            ),
            ("max_recipients = 0\n", "milter.max_recipients"),
            ("max_recipients = 100001\n", "milter.max_recipients"),
            ("max_header_bytes = 1023\n", "milter.max_header_bytes"),
            ("max_header_bytes = 16777217\n", "milter.max_header_bytes"),
            ("max_connections = 0\n", "milter.max_connections"),
            ("socket_mode = \"rw\"\n", "milter.socket_mode"),
            ("request_timeout = \"0s\"\n", "milter.request_timeout"),
        ] {
            let e = config(extra).unwrap().validate().unwrap_err();
            assert_eq!(e.0, key, "{extra}");
        }
        for extra in [
            "max_recipients = 1\n",
            "max_recipients = 100000\n",
            "max_header_bytes = 1024\n",
            "max_header_bytes = 16777216\n",
        ] {
            assert!(config(extra).unwrap().validate().is_ok(), "{extra}");
        }
    }
}
