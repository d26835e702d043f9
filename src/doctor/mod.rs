//! `tls-policyd doctor`: Postfix wiring that bypasses the policy or stops
//! mail, found in Postfix's own configuration (`postconf`, `postconf -M`,
//! `postconf -P`, see [`postconf`]) and checked against what the daemon's
//! configuration serves ([`checks`]); then the running daemon asked
//! through Postfix's own socketmap client, `postmap -q` ([`live`]), also
//! for the next hops `relayhost` and `transport_maps` send forced domains'
//! mail to ([`nexthops`]).

pub mod checks;
mod delivery_checks;
pub mod live;
pub mod nexthops;
pub mod postconf;

use std::path::Path;

use serde::Serialize;

use crate::config::Config;
use crate::engine::policy_file::PolicyFile;
use checks::{CheckOutcome, Finding, Ours, Severity};
use postconf::{PostconfError, PostfixConfig, Service};

/// What `doctor` found.
#[derive(Debug, Serialize)]
pub struct DoctorReport {
    /// `postconf -c` directory, or Postfix's default.
    pub postfix_config: String,
    pub mail_version: String,
    pub findings: Vec<Finding>,
    /// Checks that passed, in words.
    pub ok: Vec<String>,
}

impl DoctorReport {
    /// Exit status: 1 when any problem was found.
    pub fn healthy(&self) -> bool {
        !self
            .findings
            .iter()
            .any(|f| f.severity == Severity::Problem)
    }

    /// The report for a terminal.
    pub fn text(&self) -> String {
        let mut out = format!(
            "Postfix {} configuration in {}\n",
            self.mail_version, self.postfix_config
        );
        for ok in &self.ok {
            out.push_str(&format!("ok       {ok}\n"));
        }
        for f in &self.findings {
            let word = match f.severity {
                Severity::Problem => "PROBLEM",
                Severity::Note => "note",
            };
            out.push_str(&format!("{word:<8} {}\n", f.text));
            if let Some(fix) = &f.fix {
                out.push_str(&format!("         fix: {fix}\n"));
            }
        }
        let problems = self
            .findings
            .iter()
            .filter(|f| f.severity == Severity::Problem)
            .count();
        out.push_str(&match problems {
            0 => "no problems found\n".to_string(),
            1 => "1 problem found\n".to_string(),
            n => format!("{n} problems found\n"),
        });
        out
    }
}

/// Read Postfix's configuration (from `dir`, or Postfix's default), check
/// it against `config`, and ask the daemon through `postmap -q`.
pub fn run(
    config: &Config,
    policy: &PolicyFile,
    dir: Option<&Path>,
) -> Result<DoctorReport, PostconfError> {
    let pf = PostfixConfig::read(dir)?;
    let ours = Ours::from_config(config);
    let mut outcome = check(&pf, &ours);
    if let Some(sm) = &ours.socketmap {
        live::ask(&pf, sm, policy, &mut outcome);
        nexthops::check(&pf, sm, policy, &mut outcome);
    }
    if let Some(d) = dir {
        // Fixes name the configuration directory that was checked.
        let with_dir = format!("postconf -c {} -", d.display());
        for f in &mut outcome.findings {
            if let Some(fix) = &mut f.fix {
                *fix = fix.replace("postconf -", &with_dir);
            }
        }
    }
    Ok(DoctorReport {
        postfix_config: dir
            .map(|d| d.display().to_string())
            .unwrap_or_else(|| "the default directory (/etc/postfix)".into()),
        mail_version: pf.param("mail_version").to_string(),
        findings: outcome.findings,
        ok: outcome.ok,
    })
}

/// The checks of Postfix's configuration against what tls-policyd
/// serves (pure: no `postconf`, no daemon).
pub fn check(pf: &PostfixConfig, ours: &Ours) -> CheckOutcome {
    let mut out = CheckOutcome::default();
    if let Some(sm) = &ours.socketmap {
        delivery_checks::check_socketmap(pf, sm, &mut out);
    }
    if let Some(p) = &ours.policy_server {
        checks::check_policy_server(pf, p, &mut out);
    }
    if let Some(m) = &ours.milter {
        checks::check_milter(pf, m, &mut out);
    }
    if ours.dane {
        let level = pf.param("smtp_dns_support_level");
        if level == "dnssec" {
            out.ok.push("smtp_dns_support_level = dnssec (DANE)".into());
        } else {
            out.problem(
                format!(
                    "DANE is on, but smtp_dns_support_level = {}: Postfix does not ask for DNSSEC, so it cannot verify a dane-only answer and defers that mail",
                    checks::shown(level)
                ),
                Some("postconf -e 'smtp_dns_support_level = dnssec'".into()),
            );
        }
    }
    if ours.outcomes {
        let smtp: Vec<&Service> = delivery_checks::smtp_clients(pf).collect();
        delivery_checks::check_tls_loglevel(pf, "smtp", &smtp, &mut out);
        if let Some(sm) = &ours.socketmap {
            delivery_checks::check_tls_loglevel(
                pf,
                "lmtp",
                &delivery_checks::lmtp_asking(pf, sm),
                &mut out,
            );
        }
    }
    out
}
