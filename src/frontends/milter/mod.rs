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

mod accept;
mod config;
mod negotiate;
pub mod state;
pub mod watch;

pub use negotiate::{REQUESTED_MACROS, protocol_options};

pub use config::{
    MAX_HEADER_BYTES_LIMIT, MAX_RECIPIENTS_LIMIT, MIN_HEADER_BYTES, MilterConfig, MilterSettings,
};

use std::ffi::{CStr, CString};
use std::future::Future;
use std::sync::Arc;

use indymilter::{
    Actions, Callbacks, Context, ContextActions, EomContext, Macros, ProtoOpts, SetErrorReply,
    SocketInfo, Status,
};
use tokio_util::sync::CancellationToken;

use super::message::{CatchUnwind, header_value, panic_text};
use super::{Backend, Live, note_malformed_key};
use crate::engine::recipient::{assess_delivery, hold_for, refusal_for, rule_recipient};
use crate::engine::refusal::{RefuseMode, TlsKnowledge, status_codes};
use crate::listen::{Admission, Drain, Listener};
use crate::log::record::MilterStep;
use crate::metrics::{ConnectionGuard, Frontend};
use accept::Accept;
use negotiate::{answer, negotiate};
use state::{Ending, PendingMessage, PendingRecipient, Seen, Session};

/// Everything the milter needs.
#[derive(Clone)]
pub struct MilterDeps {
    pub backend: Arc<dyn Backend>,
    pub knowledge: Arc<dyn TlsKnowledge>,
    pub max_connections: usize,
    /// Whether the MTA connects over a unix socket (set by [`serve`]
    /// from its listener): no Nagle there, so a step may go unanswered
    /// (see `negotiate::protocol_options`).
    unix_socket: bool,
}

impl MilterDeps {
    pub fn new(
        backend: Arc<dyn Backend>,
        config: &MilterConfig,
        knowledge: Arc<dyn TlsKnowledge>,
    ) -> MilterDeps {
        MilterDeps {
            backend,
            knowledge,
            max_connections: config.max_connections,
            unix_socket: false,
        }
    }
}

/// Per-connection state: the session and what was negotiated.
pub struct MilterConn {
    session: Session,
    /// Actions the MTA agreed to.
    actions: Actions,
    /// The steps the MTA sends without waiting for a reply
    /// (`ProtoOpts::NOREPLY_*`).
    noreply: ProtoOpts,
    /// Counts the connection as open in the metrics until it closes.
    _open: Option<ConnectionGuard>,
    /// The configuration this connection was negotiated with; it rules
    /// every message on the connection (a reload applies to connections
    /// opened afterwards).
    live: Arc<Live>,
}

/// Serve MTA connections until shutdown; then let each connection finish
/// the stage it is in.
pub async fn serve(listener: Listener, mut deps: MilterDeps, shutdown: CancellationToken) {
    deps.unix_socket = matches!(listener, Listener::Unix(..));
    let config = indymilter::Config {
        max_connections: deps.max_connections.max(1),
        ..Default::default()
    };
    let accept = Accept {
        listener,
        admission: Admission {
            name: "milter",
            max_connections: config.max_connections,
            drain: Drain::Wait,
            metrics: deps
                .backend
                .metrics()
                .map(|m| (m.clone(), Frontend::Milter)),
        },
        backoff: None,
    };
    let callbacks = callbacks(Arc::new(deps));
    let stop = async move { shutdown.cancelled().await };
    if let Err(e) = indymilter::run(accept, callbacks, config, stop).await {
        tracing::error!(error = %e, "milter stopped accepting connections");
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
    let limit = deps.backend.live().milter.request_timeout;
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

fn callbacks(deps: Shared) -> Callbacks<MilterConn> {
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
                        connect(&deps, cx, hostname, socket);
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
        // Over TCP, answered at once, so that nothing Postfix's smtpd
        // sent is left unanswered when it hands the connection to
        // cleanup; over a unix socket not asked for (see
        // `protocol_options`).
        .on_data(|_| Box::pin(async { Status::Continue }))
        .on_header({
            let deps = d();
            move |cx, name, value| {
                let deps = deps.clone();
                Box::pin(async move {
                    let id = queue_id(&cx.macros);
                    let status = guarded(&deps, "header", id, async {
                        header(cx, &name, &value);
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

fn connect(deps: &Shared, cx: &mut Context<MilterConn>, hostname: CString, socket: SocketInfo) {
    let conn = cx.data.get_or_insert_with(|| MilterConn {
        session: Session::default(),
        actions: Actions::empty(),
        noreply: ProtoOpts::empty(),
        _open: None,
        live: deps.backend.live(),
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

fn mail(cx: &mut Context<MilterConn>, args: &[CString]) {
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
        c.session.message = Some(PendingMessage::new(sender, auth, requiretls));
    }
}

async fn rcpt(deps: &Shared, cx: &mut Context<MilterConn>, args: Vec<CString>) -> Status {
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
    let live = conn.live.clone();
    let settings = &live.milter;
    // Refusing was off when this connection was negotiated (RCPT needs no
    // reply); a reload that switched it on applies to later connections.
    let can_refuse = !conn.noreply.contains(ProtoOpts::NOREPLY_RCPT);
    let local_submission = conn.session.local_submission;
    let message = conn
        .session
        .message
        .get_or_insert_with(PendingMessage::default);
    let engine = &live.engine;
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
    let (key, dest) = (&ruling.key, ruling.dest.as_ref());
    note_malformed_key(deps.backend.as_ref(), "milter", key, dest, &ruling.decision);
    // A domain that could name rules with different answers is deferred
    // where RCPT can be answered (not for local submission: see Session).
    let hold = if can_refuse && !local_submission {
        hold_for(&ruling)
    } else {
        None
    };
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
    let held = hold.is_some();
    if let Some(refusal) = hold.or_else(|| refusal_for(&ruling, deps.knowledge.as_ref()))
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
                    "recipient refused: {}",
                    if held {
                        "its domain is malformed and could name rules with different answers"
                    } else {
                        "forced TLS cannot be met"
                    }
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
    if !message.add_recipient(PendingRecipient::new(&ruling, &recipient, reply), cap) && first_over
    {
        tracing::warn!(
            queue_id = id.as_deref().unwrap_or(""),
            limit = cap,
            "message has more recipients than are remembered; the rest are decided but left out of its record"
        );
    }
    status
}

fn header(cx: &mut Context<MilterConn>, name: &CString, value: &CString) {
    let id = queue_id(&cx.macros);
    let Some(conn) = cx.data.as_mut() else {
        return;
    };
    let cap = conn.live.milter.max_header_bytes;
    let Some(message) = conn.session.message.as_mut() else {
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

async fn eom(deps: &Shared, cx: &mut EomContext<MilterConn>) -> Status {
    let seen = Seen::from_macros(|n| macro_value_named(&cx.macros, n));
    let Some(conn) = cx.data.as_mut() else {
        return Status::Continue;
    };
    let Some(message) = conn.session.message.take() else {
        return Status::Continue;
    };
    let id = seen.queue_id.clone().unwrap_or_default();
    let live = conn.live.clone();
    let settings = &live.milter;
    let policy = live.engine.policy();
    let mut done: Vec<MilterStep> = Vec::new();

    if settings.quarantine
        && let Some(why) = message.quarantine_reason(deps.knowledge.as_ref())
    {
        if conn.actions.contains(Actions::QUARANTINE) {
            let why = state::bounded(&why);
            match cx.actions.quarantine(why.as_str()).await {
                Ok(()) => {
                    tracing::info!(queue_id = %id, reason = %why, "message quarantined");
                    done.push(MilterStep::Quarantine);
                }
                Err(e) => tracing::error!(queue_id = %id, error = %e, "cannot quarantine"),
            }
        } else {
            tracing::warn!(queue_id = %id, "quarantine was not negotiated on this connection");
        }
    }
    let mut headers: Vec<(Arc<str>, String)> = Vec::new();
    if let Some(name) = &settings.routing_header
        && let Some(route) = message.route(policy)
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
            Ok(()) => done.push(MilterStep::AddHeader { name, value }),
            Err(e) => {
                tracing::error!(queue_id = %id, header = %name, error = %e, "cannot add header")
            }
        }
    }

    let rec = state::record(
        &conn.session,
        message,
        seen,
        settings.max_recipients,
        Ending::EndOfMessage(done),
    );
    deps.backend.decision_log().log(rec);
    Status::Continue
}

/// RSET, abort or disconnect: drop the message in progress; write its
/// record only when a recipient had been refused.
fn end_transaction(deps: &Shared, cx: &mut Context<MilterConn>, why: &'static str) {
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
    let rec = state::record(
        &conn.session,
        message,
        seen,
        conn.live.milter.max_recipients,
        Ending::Aborted(why),
    );
    deps.backend.decision_log().log(rec);
}
