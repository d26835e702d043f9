//! `status`: ask a running daemon's metrics listener for its health report.

use std::path::Path;
use std::process::ExitCode;

use super::{fail, print_report};
use crate::health;
use crate::listen::ListenAddr;

/// Print the health report of the daemon at `address`, or at the
/// `[metrics]` listener named in `config`. Exit 0 when it is healthy, 2
/// when it is not, 1 when it cannot be reached.
pub fn status(config: &Path, address: Option<ListenAddr>, json: bool) -> ExitCode {
    let addr = match address {
        Some(a) => a,
        None => match health::address_from_config(config) {
            Ok(a) => a,
            Err(e) => return fail(&e.to_string()),
        },
    };
    let report = match health::fetch(&addr) {
        Ok(r) => r,
        Err(e) => return fail(&e.to_string()),
    };
    let code = if report.status == "ok" {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(2)
    };
    print_report(&report, json, |r| r.render_text(), code)
}
