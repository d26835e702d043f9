//! Negotiation: the actions, protocol steps, replies and macros asked of
//! the MTA, and the per-connection state it starts.

use std::ffi::CString;

use indymilter::{Actions, MacroStage, NegotiateContext, ProtoOpts, Status};

use super::state::Session;
use super::{MilterConn, Shared};
use crate::engine::refusal::RefuseMode;
use crate::metrics::Frontend;

/// Macros requested per stage.
pub const REQUESTED_MACROS: [(MacroStage, &str); 5] = [
    (MacroStage::Connect, "j {daemon_name}"),
    (
        MacroStage::Helo,
        "{tls_version} {cipher} {cipher_bits} {cert_subject}",
    ),
    (MacroStage::Mail, "i {auth_authen} {mail_addr}"),
    (MacroStage::Rcpt, "i {rcpt_addr}"),
    (MacroStage::Eom, "i"),
];

/// Ask for the actions the settings need (those the MTA offers) and the
/// macros used; start the connection's state.
pub(super) fn negotiate(
    deps: &Shared,
    cx: &mut NegotiateContext<MilterConn>,
    offered: Actions,
    offered_opts: ProtoOpts,
) -> Status {
    let live = deps.backend.live();
    let settings = &live.milter;
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
    for (stage, names) in REQUESTED_MACROS {
        if let Ok(names) = CString::new(names) {
            cx.requested_macros.insert(stage, names);
        }
    }
    let open = deps
        .backend
        .metrics()
        .map(|m| m.connection(Frontend::Milter));
    // Steps and replies: see [`protocol_options`].
    let opts = protocol_options(offered_opts, refuse != RefuseMode::Off, deps.unix_socket);
    cx.requested_opts = opts;
    cx.data = Some(MilterConn {
        session: Session::default(),
        actions,
        noreply: opts & NOREPLY,
        _open: open,
        live: live.clone(),
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
/// waits behind them: so over TCP the DATA step is taken and answered.
/// Over a unix socket (`unix_socket`) there is no Nagle to wait for: the
/// DATA step is skipped, which spares smtpd a wait for a reply per
/// message (its macros still come, unanswered).
pub fn protocol_options(offered: ProtoOpts, refuse: bool, unix_socket: bool) -> ProtoOpts {
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
    if unix_socket {
        opts |= ProtoOpts::NO_DATA;
    }
    // Only what the MTA offers may be asked for.
    opts & offered
}

/// `status`, or no reply where the MTA was told not to wait for one.
pub(super) fn answer(conn: Option<&MilterConn>, step: ProtoOpts, status: Status) -> Status {
    if conn.is_some_and(|c| c.noreply.contains(step)) {
        Status::Noreply
    } else {
        status
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_steps_that_can_change_the_outcome_are_answered() {
        let all = ProtoOpts::all();
        let tcp = protocol_options(all, false, false);
        // Answered: DATA (over TCP) and the end of message (no option).
        assert!(!tcp.contains(ProtoOpts::NO_DATA));
        assert!(!tcp.contains(ProtoOpts::NOREPLY_DATA));
        for step in [
            ProtoOpts::NOREPLY_CONNECT,
            ProtoOpts::NOREPLY_HELO,
            ProtoOpts::NOREPLY_MAIL,
            ProtoOpts::NOREPLY_RCPT,
            ProtoOpts::NOREPLY_HEADER,
            ProtoOpts::NO_EOH,
            ProtoOpts::NO_BODY,
            ProtoOpts::NO_UNKNOWN,
        ] {
            assert!(tcp.contains(step), "{step:?}");
        }
        // Refusing at RCPT needs its reply.
        assert!(!protocol_options(all, true, false).contains(ProtoOpts::NOREPLY_RCPT));
        // Over a unix socket DATA is not asked for.
        let unix = protocol_options(all, false, true);
        assert_eq!(unix, tcp | ProtoOpts::NO_DATA);
    }

    #[test]
    fn nothing_the_mta_does_not_offer_is_asked_for() {
        let offered = ProtoOpts::NOREPLY_HELO | ProtoOpts::NO_BODY;
        assert_eq!(protocol_options(offered, false, true), offered);
        assert_eq!(
            protocol_options(ProtoOpts::empty(), true, true),
            ProtoOpts::empty()
        );
    }
}
