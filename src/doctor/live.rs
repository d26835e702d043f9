//! The running daemon, asked the way Postfix asks it: `postmap -q` with
//! Postfix's configuration, run in the queue directory (where Postfix's
//! daemons resolve relative socket paths).

use std::process::Command;

use super::checks::{CheckOutcome, OurSocketmap, postfix_name};
use super::postconf::PostfixConfig;
use crate::engine::decision::Tls;
use crate::engine::policy_file::PolicyFile;

/// A domain no policy names (RFC 2606 `.invalid`).
pub const UNKNOWN_DOMAIN: &str = "tls-policyd-doctor.invalid";

/// What `postmap -q` said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PostmapAnswer {
    /// Exit 0: the value.
    Found(String),
    /// Exit 1: not found (`NOTFOUND`).
    NotFound,
    /// Anything else: what it printed.
    Failed(String),
}

/// `postmap [-c DIR] -q KEY TABLE`.
pub fn postmap(pf: &PostfixConfig, table: &str, key: &str) -> PostmapAnswer {
    let mut cmd = Command::new("postmap");
    cmd.args(pf.config_args()).arg("-q").arg(key).arg(table);
    let queue = pf.queue_directory();
    if queue.is_dir() {
        cmd.current_dir(queue);
    }
    match cmd.output() {
        Err(e) => PostmapAnswer::Failed(format!("cannot run postmap: {e}")),
        Ok(o) => match o.status.code() {
            Some(0) => PostmapAnswer::Found(String::from_utf8_lossy(&o.stdout).trim().to_string()),
            Some(1) if o.stderr.is_empty() => PostmapAnswer::NotFound,
            _ => PostmapAnswer::Failed(String::from_utf8_lossy(&o.stderr).trim().to_string()),
        },
    }
}

/// Ask for a domain a rule forces and for one nobody names.
pub fn ask(pf: &PostfixConfig, sm: &OurSocketmap, policy: &PolicyFile, out: &mut CheckOutcome) {
    let table = format!(
        "socketmap:{}:{}",
        postfix_name(&sm.listen, pf.queue_directory()),
        sm.map
    );
    let forced = policy.exact_domain_where(|r| r.level.tls() == Tls::Forced);
    if let Some(domain) = forced {
        match postmap(pf, &table, domain) {
            PostmapAnswer::Found(level) if !weak(&level) => out.ok.push(format!(
                "postmap -q {domain} {table}: {level} (a rule forces TLS for {domain})"
            )),
            PostmapAnswer::Failed(e) => {
                unreachable(&table, &e, out);
                return;
            }
            other => out.problem(
                format!(
                    "postmap -q {domain} {table} answered {}, but a rule forces TLS for {domain}: is another tls-policyd, or an older policy file, answering?",
                    shown(&other)
                ),
                Some("tls-policyd explain --config CONFIG DOMAIN; systemctl reload tls-policyd".into()),
            ),
        }
    } else {
        out.note(
            "the policy file forces TLS for no exact domain: only the unknown-domain answer was checked".into(),
            None,
        );
    }
    match postmap(pf, &table, UNKNOWN_DOMAIN) {
        PostmapAnswer::Failed(e) => unreachable(&table, &e, out),
        a => out.ok.push(format!(
            "postmap -q {UNKNOWN_DOMAIN} {table}: {} (the default)",
            shown(&a)
        )),
    }
}

fn unreachable(table: &str, error: &str, out: &mut CheckOutcome) {
    out.problem(
        format!(
            "Postfix's own client could not ask tls-policyd ({table}): {error}; every delivery is deferred with \"4.7.5 client TLS configuration problem\" until it can"
        ),
        Some("systemctl status tls-policyd (is it running and listening there?)".into()),
    );
}

fn shown(a: &PostmapAnswer) -> String {
    match a {
        PostmapAnswer::Found(v) => v.clone(),
        PostmapAnswer::NotFound => "NOTFOUND".into(),
        PostmapAnswer::Failed(e) => e.clone(),
    }
}

/// A level that lets mail go out in plaintext.
pub fn weak(level: &str) -> bool {
    let word = level.split_whitespace().next().unwrap_or("");
    matches!(word, "" | "none" | "may")
}
