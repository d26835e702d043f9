//! The checks: Postfix's configuration (as [`PostfixConfig`]) against the
//! front doors tls-policyd serves ([`Ours`]). Pure: every finding comes
//! with the command that fixes it.

use std::net::IpAddr;
use std::path::Path;

use serde::Serialize;

use super::postconf::{
    Item, PostfixConfig, PostfixEndpoint, RESTRICTION_LISTS, Service, group_parts, list_items,
};
use crate::config::Config;
use crate::frontends::socketmap::DefaultReply;
use crate::listen::ListenAddr;

/// What tls-policyd serves, from its configuration.
#[derive(Debug, Clone, Default)]
pub struct Ours {
    pub socketmap: Option<OurSocketmap>,
    pub policy_server: Option<ListenAddr>,
    pub milter: Option<ListenAddr>,
    pub dane: bool,
    /// `[outcomes]` is on: Postfix's log must carry the TLS summaries.
    pub outcomes: bool,
}

#[derive(Debug, Clone)]
pub struct OurSocketmap {
    pub listen: ListenAddr,
    pub map: String,
    pub forced_map: String,
    /// Unruled domains get `NOTFOUND`: Postfix's own level applies.
    pub notfound_default: bool,
}

impl Ours {
    pub fn from_config(c: &Config) -> Ours {
        Ours {
            socketmap: c.socketmap.as_ref().map(|s| OurSocketmap {
                listen: s.listen.clone(),
                map: s.map.clone(),
                forced_map: s.forced_map.clone(),
                notfound_default: s.default_reply == DefaultReply::Notfound,
            }),
            policy_server: c.policy_server.as_ref().map(|p| p.listen.clone()),
            milter: c.milter.as_ref().map(|m| m.listen.clone()),
            dane: c.dane.is_some(),
            outcomes: c.outcomes.is_some(),
        }
    }
}

/// How bad a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// The policy is bypassed or mail stops: exit status 1.
    Problem,
    /// Worth knowing; nothing is bypassed.
    Note,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    pub severity: Severity,
    pub text: String,
    /// The command (or main.cf/master.cf line) that fixes it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

/// What the checks found, and what they found in order.
#[derive(Debug, Default)]
pub struct CheckOutcome {
    pub findings: Vec<Finding>,
    pub ok: Vec<String>,
}

impl CheckOutcome {
    pub(super) fn problem(&mut self, text: String, fix: Option<String>) {
        self.findings.push(Finding {
            severity: Severity::Problem,
            text,
            fix,
        });
    }

    pub(super) fn note(&mut self, text: String, fix: Option<String>) {
        self.findings.push(Finding {
            severity: Severity::Note,
            text,
            fix,
        });
    }
}

pub(super) fn shown(v: &str) -> &str {
    if v.is_empty() { "(empty)" } else { v }
}

/// Whether a Postfix endpoint reaches our listener, for a process that
/// works in `queue_dir`, chrooted there or not.
pub fn reaches(e: &PostfixEndpoint, ours: &ListenAddr, queue_dir: &Path, chrooted: bool) -> bool {
    match (e, ours) {
        (PostfixEndpoint::Inet { host, port }, ListenAddr::Inet(sa)) => {
            *port == sa.port()
                && match host.parse::<IpAddr>() {
                    Ok(ip) => ip == sa.ip() || sa.ip().is_unspecified(),
                    Err(_) => host.eq_ignore_ascii_case("localhost") && sa.ip().is_loopback(),
                }
        }
        (PostfixEndpoint::Unix(_), ListenAddr::Unix(path)) => {
            e.unix_path(queue_dir, chrooted).as_deref() == Some(path.as_path())
        }
        _ => false,
    }
}

/// Our listener as Postfix should name it: unix sockets under the queue
/// directory relative to it, so chrooted and other daemons alike reach it.
pub fn postfix_name(ours: &ListenAddr, queue_dir: &Path) -> String {
    match ours {
        ListenAddr::Inet(sa) if sa.is_ipv6() => format!("inet:[{}]:{}", sa.ip(), sa.port()),
        ListenAddr::Inet(sa) => format!("inet:{}:{}", sa.ip(), sa.port()),
        ListenAddr::Unix(p) => match p.strip_prefix(queue_dir) {
            Ok(rel) => format!("unix:{}", rel.display()),
            Err(_) => format!("unix:{}", p.display()),
        },
    }
}

/// The SMTP servers (`smtpd(8)`) in master.cf.
fn smtp_servers(pf: &PostfixConfig) -> impl Iterator<Item = &Service> {
    pf.services.iter().filter(|s| s.command == "smtpd")
}

/// `check_policy_service` entries in one restriction list.
struct PolicyCheck {
    endpoint: PostfixEndpoint,
    default_action: Option<String>,
    /// A `permit_*` that comes before it (mail it permits is never asked).
    after_permit: Option<String>,
}

fn policy_checks(value: &str) -> Vec<PolicyCheck> {
    let items = list_items(value);
    let mut found = Vec::new();
    let mut permit: Option<String> = None;
    let mut i = 0;
    while i < items.len() {
        match &items[i] {
            Item::Word(w) if w == "check_policy_service" => {
                let (endpoint, default_action) = match items.get(i + 1) {
                    Some(Item::Group(g)) => {
                        let (e, attrs) = group_parts(g);
                        (e, attrs.get("default_action").cloned())
                    }
                    Some(Item::Word(e)) => (e.clone(), None),
                    None => (String::new(), None),
                };
                if let Some(endpoint) = PostfixEndpoint::parse(&endpoint) {
                    found.push(PolicyCheck {
                        endpoint,
                        default_action,
                        after_permit: permit.clone(),
                    });
                }
                i += 2;
                continue;
            }
            Item::Word(w)
                if permit.is_none()
                    && matches!(
                        w.as_str(),
                        "permit" | "permit_mynetworks" | "permit_sasl_authenticated"
                    ) =>
            {
                permit = Some(w.clone());
            }
            _ => {}
        }
        i += 1;
    }
    found
}

pub(super) fn check_policy_server(pf: &PostfixConfig, ours: &ListenAddr, out: &mut CheckOutcome) {
    let queue = pf.queue_directory();
    let name = postfix_name(ours, queue);
    let entry = format!("check_policy_service {{ {name}, default_action=DUNNO }}");
    let main_chroot = smtp_servers(pf).any(|s| s.chrooted() && s.kind == "inet");
    let global_default = pf.param("smtpd_policy_service_default_action");
    let mut asked = false;
    let mut lists: Vec<(String, String, bool, Option<&Service>)> = RESTRICTION_LISTS
        .iter()
        .map(|l| (l.to_string(), pf.param(l).to_string(), main_chroot, None))
        .collect();
    for svc in smtp_servers(pf) {
        for l in RESTRICTION_LISTS {
            if let Some(v) = svc.overrides.get(l) {
                lists.push((l.to_string(), v.clone(), svc.chrooted(), Some(svc)));
            }
        }
    }
    for (list, value, chrooted, svc) in &lists {
        let place = match svc {
            Some(s) => format!("master.cf service {} (-o {list})", s.id()),
            None => list.clone(),
        };
        let ours_here: Vec<PolicyCheck> = policy_checks(value)
            .into_iter()
            .filter(|c| reaches(&c.endpoint, ours, queue, *chrooted))
            .collect();
        for c in ours_here {
            asked = true;
            let action = c.default_action.as_deref().unwrap_or(global_default);
            if action.eq_ignore_ascii_case("DUNNO") {
                out.ok.push(format!(
                    "{place}: check_policy_service asks tls-policyd, default_action=DUNNO"
                ));
            } else {
                out.problem(
                    format!(
                        "{place}: when tls-policyd cannot answer, Postfix applies {action:?} to the mail (check_policy_service without default_action=DUNNO)"
                    ),
                    Some(format!("use {entry} in {list}")),
                );
            }
            if let Some(p) = c.after_permit {
                out.problem(
                    format!(
                        "{place}: {p} comes before check_policy_service: mail it permits (your own users' and networks' outbound mail) is never tagged or refused early"
                    ),
                    Some(format!("put {entry} first in {list}")),
                );
            }
        }
    }
    // Each SMTP server must reach the check through the lists it uses
    // (its own -o lists or main.cf's): relay restrictions first, then
    // recipient restrictions; a permit in one does not skip the other.
    if asked {
        for svc in smtp_servers(pf).filter(|s| s.kind == "inet") {
            let reaches_check = ["smtpd_relay_restrictions", "smtpd_recipient_restrictions"]
                .iter()
                .any(|l| {
                    policy_checks(svc.param(pf, l))
                        .iter()
                        .any(|c| reaches(&c.endpoint, ours, queue, svc.chrooted()))
                });
            if !reaches_check {
                let list = "smtpd_recipient_restrictions";
                let value = svc.param(pf, list);
                out.problem(
                    format!(
                        "master.cf service {} replaces its restriction lists without check_policy_service for tls-policyd: mail received by this service is never tagged or refused early",
                        svc.id()
                    ),
                    Some(format!("postconf -P '{}/{list}={entry}, {value}'", svc.id())),
                );
            }
        }
    }
    if !asked {
        let current = pf.param("smtpd_recipient_restrictions");
        let fix = if current.is_empty() {
            format!("postconf -e 'smtpd_recipient_restrictions = {entry}'")
        } else {
            format!("postconf -e 'smtpd_recipient_restrictions = {entry}, {current}'")
        };
        out.problem(
            format!("no restriction list asks tls-policyd's policy server ({name})"),
            Some(fix),
        );
    }
}

/// Our milter in a milter list, and its own `default_action` if set.
fn find_milter(
    value: &str,
    ours: &ListenAddr,
    queue: &Path,
    chrooted: bool,
) -> Option<Option<String>> {
    list_items(value).into_iter().find_map(|i| {
        let (e, action) = match i {
            Item::Word(w) => (w, None),
            Item::Group(g) => {
                let (e, attrs) = group_parts(&g);
                (e, attrs.get("default_action").cloned())
            }
        };
        let e = PostfixEndpoint::parse(&e)?;
        reaches(&e, ours, queue, chrooted).then_some(action)
    })
}

pub(super) fn check_milter(pf: &PostfixConfig, ours: &ListenAddr, out: &mut CheckOutcome) {
    let queue = pf.queue_directory();
    let name = postfix_name(ours, queue);
    let chrooted = smtp_servers(pf).any(|s| s.chrooted() && s.kind == "inet");
    let milters = pf.param("smtpd_milters");
    match find_milter(milters, ours, queue, chrooted) {
        None => out.problem(
            format!(
                "smtpd_milters = {}: tls-policyd's milter ({name}) is not asked",
                shown(milters)
            ),
            Some(if milters.is_empty() {
                format!("postconf -e 'smtpd_milters = {name}'")
            } else {
                format!("postconf -e 'smtpd_milters = {milters}, {name}'")
            }),
        ),
        Some(own) => {
            let action = own.unwrap_or_else(|| pf.param("milter_default_action").to_string());
            if action.eq_ignore_ascii_case("accept") {
                out.ok.push(format!(
                    "smtpd_milters asks tls-policyd ({name}), default action accept"
                ));
            } else {
                out.problem(
                    format!(
                        "milter_default_action = {}: when tls-policyd cannot be reached Postfix refuses or holds every message",
                        shown(&action)
                    ),
                    Some("postconf -e 'milter_default_action = accept'".into()),
                );
            }
        }
    }
    let other = pf.param("non_smtpd_milters");
    if find_milter(other, ours, queue, false).is_none() {
        out.note(
            format!(
                "non_smtpd_milters = {}: mail submitted with sendmail(1) gets no milter record",
                shown(other)
            ),
            Some(format!("postconf -e 'non_smtpd_milters = {name}'")),
        );
    }
    for svc in smtp_servers(pf) {
        if let Some(v) = svc.overrides.get("smtpd_milters") {
            if find_milter(v, ours, queue, svc.chrooted()).is_none() {
                out.problem(
                    format!(
                        "master.cf service {} sets smtpd_milters={}: mail received by it bypasses tls-policyd's milter",
                        svc.id(),
                        shown(v)
                    ),
                    Some(format!("postconf -P '{}/smtpd_milters={name}'", svc.id())),
                );
            }
        }
    }
}

#[cfg(test)]
#[path = "checks_tests.rs"]
mod tests;
