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

mod config;
mod messages;
mod stages;

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::attrs::{Decoder, Request, encode_reply};
use super::message::{CatchUnwind, panic_text};
pub use super::{Backend, Live};
use crate::engine::refusal::TlsKnowledge;
use crate::listen::{self, Accepted, Admission, Drain, Expiry, IdleTimer, Listener};
use crate::log::record::PolicyAction;
use crate::metrics::{Cache, Frontend};
pub use config::{PolicyServerConfig, PolicyServerSettings};
use messages::Messages;
pub use stages::rcpt_answer;

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
    let admission = Admission {
        name: "policy server",
        max_connections: deps.max_connections,
        drain: Drain::Wait,
        metrics: deps
            .backend
            .metrics()
            .map(|m| (m.clone(), Frontend::Policy)),
    };
    let messages = Arc::new(match deps.backend.metrics() {
        Some(m) => Messages::new(m.cache_observer(Cache::PolicyMessages)),
        None => Messages::default(),
    });
    listen::serve(listener, admission, shutdown, move |conn, peer, opened| {
        let server = Server {
            deps: deps.clone(),
            messages: messages.clone(),
            peer,
            instance: None,
        };
        async move {
            let limit = server.deps.backend.live().policy_server.idle_timeout;
            let idle = IdleTimer::opened(limit, &opened);
            match conn {
                Accepted::Tcp(s) => server.connection(s, idle).await,
                Accepted::Unix(s) => server.connection(s, idle).await,
            }
        }
    })
    .await;
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
    async fn connection<S>(mut self, mut stream: S, mut idle: IdleTimer)
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let mut decoder = Decoder::new();
        let mut buf: Vec<u8> = Vec::with_capacity(READ_CHUNK);
        let mut out: Vec<u8> = Vec::with_capacity(256);
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
                idle.touch();
            }
            // Shutdown, or the connection limit: what was asked is
            // answered.
            if close || idle.closing() {
                return;
            }
            let read = tokio::select! {
                biased;
                r = stream.read_buf(&mut buf) => r,
                why = idle.expired(|| self.deps.backend.live().policy_server.idle_timeout) => {
                    match why {
                        Expiry::Idle => {
                            tracing::debug!(peer = %self.peer, "policy connection idle; closing");
                        }
                        Expiry::Closed => tracing::debug!(
                            peer = %self.peer,
                            "policy connection closed by the listener"
                        ),
                    }
                    return;
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
            Ok(Ok(action)) => action.to_string(),
            Ok(Err(panic)) => {
                deps.count_error("internal");
                tracing::error!(
                    peer = %peer,
                    problem = panic_text(&panic),
                    "internal error answering a policy request; answering DUNNO"
                );
                PolicyAction::Dunno.to_string()
            }
            Err(_) => {
                deps.count_error("timeout");
                tracing::warn!(
                    peer = %peer,
                    timeout = ?limit,
                    "policy request took too long; answering DUNNO"
                );
                PolicyAction::Dunno.to_string()
            }
        }
    }

    async fn respond(&mut self, request: &Request, live: Arc<Live>) -> PolicyAction {
        let kind = request.value("request");
        if kind != POLICY_REQUEST {
            tracing::warn!(
                peer = %self.peer,
                request = kind,
                "not a {POLICY_REQUEST} request; answering DUNNO"
            );
            return PolicyAction::Dunno;
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
            PolicyAction::Dunno
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
}

#[cfg(test)]
mod tests;
