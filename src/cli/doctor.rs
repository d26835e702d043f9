//! `doctor`: check Postfix's wiring against the daemon's configuration.

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

use super::{fail, load};
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
    let text = if json {
        serde_json::to_string_pretty(&report).unwrap_or_default() + "\n"
    } else {
        report.text()
    };
    let _ = std::io::stdout().write_all(text.as_bytes());
    if report.healthy() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
