//! `doctor`: check Postfix's wiring against the daemon's configuration.

use std::path::Path;
use std::process::ExitCode;

use super::{fail, load, print_report};
use crate::doctor;

/// Print the report; exit 0 when no problem was found, 1 otherwise (and
/// when Postfix's or tls-policyd's configuration cannot be read).
pub fn doctor(config: &Path, postfix_config: Option<&Path>, json: bool) -> ExitCode {
    let (config, policy) = match load(config) {
        Ok(c) => c,
        Err(e) => return fail(&e),
    };
    let report = match doctor::run(&config, &policy, postfix_config) {
        Ok(r) => r,
        Err(e) => return fail(&e.to_string()),
    };
    let code = if report.healthy() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    };
    print_report(&report, json, |r| r.text(), code)
}
