//! The checks of Postfix's delivery services (smtp(8) and lmtp(8) in
//! master.cf): does each one's policy table list ask tls-policyd, for a
//! map it serves, over a socket it can reach, and does it log the TLS
//! summary the outcome follower reads? Pure, like [`super::checks`].

use std::path::Path;

use super::checks::{CheckOutcome, OurSocketmap, postfix_name, reaches, shown};
use super::postconf::{Item, PostfixConfig, Service, list_items, socketmap};

/// `smtp_tls_loglevel` (main.cf's, or a transport's `-o`) at 1 or more:
/// below, smtp(8) logs no `... TLS connection established` line and the
/// outcome follower takes every delivery for plaintext. The same for
/// `lmtp_tls_loglevel` and the lmtp(8) services in `lmtp`.
pub(super) fn check_tls_loglevel(
    pf: &PostfixConfig,
    prefix: &str,
    services: &[&Service],
    out: &mut CheckOutcome,
) {
    let name = format!("{prefix}_tls_loglevel");
    let low = |v: &str| !v.trim().parse::<u32>().is_ok_and(|n| n >= 1);
    let effect = "Postfix logs no TLS summary, so the outcome follower records every delivery as plaintext (a forced one as a violation)";
    let main = pf.param(&name);
    if low(main) && services.iter().any(|s| !s.overrides.contains_key(&name)) {
        out.problem(
            format!("{name} = {}: {effect}", shown(main)),
            Some(format!("postconf -e '{name} = 1'")),
        );
    } else if !low(main) && !services.is_empty() {
        out.ok.push(format!(
            "{name} = {main} (the outcome follower sees each TLS connection)"
        ));
    }
    for svc in services {
        if let Some(v) = svc.overrides.get(&name).filter(|v| low(v)) {
            out.problem(
                format!(
                    "master.cf service {} sets {name}={}: for mail through it {effect}",
                    svc.id(),
                    shown(v)
                ),
                Some(format!("postconf -P '{}/{name}=1'", svc.id())),
            );
        }
    }
}

/// The delivery services (`smtp(8)` clients) in master.cf.
pub(super) fn smtp_clients(pf: &PostfixConfig) -> impl Iterator<Item = &Service> {
    clients(pf, "smtp")
}

/// The master.cf delivery services run as `command` (`smtp` or `lmtp`:
/// one program, which reads the `lmtp_*` parameters when run as lmtp).
fn clients<'a>(pf: &'a PostfixConfig, command: &'a str) -> impl Iterator<Item = &'a Service> {
    pf.services
        .iter()
        .filter(move |s| s.kind == "unix" && s.command == command)
}

/// The lmtp(8) services whose `lmtp_tls_policy_maps` asks tls-policyd.
pub(super) fn lmtp_asking<'a>(pf: &'a PostfixConfig, sm: &OurSocketmap) -> Vec<&'a Service> {
    let queue = pf.queue_directory();
    clients(pf, "lmtp")
        .filter(|svc| {
            asks_us(
                svc.param(pf, "lmtp_tls_policy_maps"),
                sm,
                queue,
                svc.chrooted(),
            )
        })
        .collect()
}

/// Whether a table list holds a socketmap that reaches our listener.
fn asks_us(maps: &str, sm: &OurSocketmap, queue: &Path, chrooted: bool) -> bool {
    list_items(maps).into_iter().any(|i| match i {
        Item::Word(t) => {
            socketmap(&t).is_some_and(|(e, _)| reaches(&e, &sm.listen, queue, chrooted))
        }
        Item::Group(_) => false,
    })
}

pub(super) fn check_socketmap(pf: &PostfixConfig, sm: &OurSocketmap, out: &mut CheckOutcome) {
    let queue = pf.queue_directory();
    let wanted = format!("socketmap:{}:{}", postfix_name(&sm.listen, queue), sm.map);
    let smtp: Vec<&Service> = smtp_clients(pf).collect();
    if smtp.is_empty() {
        out.note(
            "master.cf has no smtp(8) delivery service: nothing asks the socketmap".into(),
            None,
        );
    }
    for svc in smtp {
        check_client(pf, sm, svc, "smtp", out);
    }
    for svc in clients(pf, "lmtp") {
        let param = "lmtp_tls_policy_maps";
        let main_asks = asks_us(pf.param(param), sm, queue, false);
        let named = asks_us(svc.param(pf, param), sm, queue, false);
        if named || (main_asks && svc.overrides.contains_key(param)) {
            check_client(pf, sm, svc, "lmtp", out);
        } else {
            out.note(
                format!(
                    "lmtp(8) service {} does not ask tls-policyd ({param} = {}): mail it delivers (usually to a local mailbox server) is not governed by the policy; if it delivers to other hosts, name the socketmap there",
                    svc.id(),
                    shown(svc.param(pf, param))
                ),
                Some(format!("postconf -e '{param} = {wanted}'")),
            );
        }
    }
}

/// One smtp(8) or lmtp(8) service (`prefix`: which parameters it reads):
/// does its policy table list ask tls-policyd, for a map it serves, over
/// a socket it can reach?
fn check_client(
    pf: &PostfixConfig,
    sm: &OurSocketmap,
    svc: &Service,
    prefix: &str,
    out: &mut CheckOutcome,
) {
    let queue = pf.queue_directory();
    let wanted = format!("socketmap:{}:{}", postfix_name(&sm.listen, queue), sm.map);
    let param = format!("{prefix}_tls_policy_maps");
    let maps = svc.param(pf, &param);
    let overridden = svc.overrides.contains_key(&param);
    let whose = if overridden {
        format!("master.cf service {} (-o {param})", svc.id())
    } else {
        format!("{param} (used by {})", svc.id())
    };
    let tables: Vec<String> = list_items(maps)
        .into_iter()
        .filter_map(|i| match i {
            Item::Word(w) => Some(w),
            Item::Group(_) => None,
        })
        .collect();
    let mut verdict = None;
    for (pos, t) in tables.iter().enumerate() {
        let Some((endpoint, name)) = socketmap(t) else {
            continue;
        };
        if reaches(&endpoint, &sm.listen, queue, svc.chrooted()) {
            verdict = Some(if name == sm.map || name == sm.forced_map {
                Ok(pos)
            } else {
                Err(format!(
                    "{whose} asks tls-policyd for the map {name:?}, which it does not serve (it serves {:?} and {:?}): every delivery through it is deferred",
                    sm.map, sm.forced_map
                ))
            });
            break;
        }
        if svc.chrooted() && reaches(&endpoint, &sm.listen, queue, false) {
            verdict = Some(Err(format!(
                "{} runs chrooted in {} and cannot reach {}: every delivery is deferred with \"4.7.5 client TLS configuration problem\"",
                svc.id(),
                queue.display(),
                sm.listen
            )));
            break;
        }
    }
    match verdict {
        Some(Ok(0)) => out.ok.push(format!("{whose} asks tls-policyd ({maps})")),
        Some(Ok(_)) => out.note(
            format!(
                "{whose} = {maps}: the tables before tls-policyd's answer first; tls-policyd decides only for next hops they do not list"
            ),
            None,
        ),
        Some(Err(text)) => {
            let fix = if overridden {
                format!("postconf -P '{}/{param}={wanted}'", svc.id())
            } else if text.contains("chrooted") {
                format!(
                    "listen on a socket under {} ({param} = {wanted}), or postconf -F '{}/chroot=n'",
                    queue.display(),
                    svc.id()
                )
            } else {
                format!("postconf -e '{param} = {wanted}'")
            };
            out.problem(text, Some(fix));
        }
        None if overridden => out.problem(
            format!(
                "{whose} = {}: mail through this transport bypasses tls-policyd",
                shown(maps)
            ),
            Some(format!("postconf -PX '{}/{param}'", svc.id())),
        ),
        None => out.problem(
            format!(
                "{param} = {}: Postfix never asks tls-policyd (used by {})",
                shown(maps),
                svc.id()
            ),
            Some(format!("postconf -e '{param} = {wanted}'")),
        ),
    }
    if sm.notfound_default {
        if let Some(level) = svc.overrides.get(&format!("{prefix}_tls_security_level")) {
            if level == "none" || level == "may" || level.is_empty() {
                out.note(
                    format!(
                        "master.cf service {} sets {prefix}_tls_security_level={}: with default_reply = \"notfound\" that level applies to every domain no rule names",
                        svc.id(),
                        shown(level)
                    ),
                    None,
                );
            }
        }
    }
}
