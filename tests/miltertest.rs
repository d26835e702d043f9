//! The milter against OpenDKIM's `miltertest` (Debian package
//! `miltertest`), a libmilter-compatible MTA simulator driven by the Lua
//! script `tests/miltertest/milter.lua`. The milter runs in process on
//! 127.0.0.1 port 0; the script checks replies and end-of-message actions,
//! this test checks the decision records.
//!
//! Without `miltertest` installed this test fails, unless
//! `SKIP_POSTFIX_TESTS=1` is set (`./scripts/test-all` installs it).

mod common;

use std::path::Path;
use std::process::Command;

use common::knowledge::no_starttls;
use common::milter::MilterServer;
use common::netns::skip_or_fail;
use common::{find_tool, run_with_timeout};

const POLICY: &str = r#"
[[rule]]
domains = ["refused.example"]
tls = "forced"

[[rule]]
domains = ["held.example"]
tls = "forced"
refuse = "off"
"#;

const SETTINGS: &str = common::fixtures::MILTER_ALL_ACTIONS;

#[test]
fn miltertest_script_drives_the_milter() {
    let Some(tool) = find_tool("miltertest") else {
        skip_or_fail("`miltertest` is not installed");
        return;
    };
    let m = MilterServer::start("inet:127.0.0.1:0", SETTINGS, POLICY);
    for d in ["refused.example", "held.example"] {
        m.knowledge.set(d, no_starttls(d));
    }
    let port = m.socket_addr().port();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/miltertest/milter.lua");
    let out = run_with_timeout(
        Command::new(tool)
            .arg("-D")
            .arg(format!("socket=inet:{port}@127.0.0.1"))
            .arg("-s")
            .arg(&script),
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains("all checks passed"),
        "miltertest failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    assert!(!stdout.contains("FAILED"), "{stdout}");

    let recs = m.wait_for_records(3);
    let ids: Vec<&str> = recs
        .iter()
        .map(|r| r["queue_id"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(
        ids,
        ["MT1", "MT2", "MT4"],
        "the aborted MT3 leaves no record"
    );
    let one = &recs[0];
    assert_eq!(one["frontend"], "milter");
    assert_eq!(one["sender"], "alice@src.example");
    assert_eq!(one["auth_user"], "alice");
    assert_eq!(one["client_address"], "192.0.2.25");
    assert_eq!(one["mta"], "mx.test.example");
    assert_eq!(one["inbound_tls"]["version"], "TLSv1.2");
    assert_eq!(one["inbound_tls"]["bits"], 128);
    assert_eq!(one["message_id"], "<mt1@src.example>");
    let list = one["recipients"].as_array().unwrap();
    assert_eq!(list[0]["domain"], "refused.example");
    assert!(
        list[0]["action"]
            .as_str()
            .unwrap()
            .starts_with("450 4.7.10 TLS policy for refused.example"),
        "{list:?}"
    );
    assert_eq!(list[1]["domain"], "other.example");
    assert!(
        one["action"]
            .as_str()
            .unwrap()
            .starts_with("add header X-TLS-Policy: ")
    );
    assert_eq!(recs[1]["tls_required_no"], true);
    assert!(
        recs[1]["action"]
            .as_str()
            .unwrap()
            .starts_with("add header X-TLS-Route: relaxed; add header X-TLS-Policy: "),
        "{}",
        recs[1]["action"]
    );
    assert!(
        recs[2]["action"]
            .as_str()
            .unwrap()
            .starts_with("quarantine; "),
        "{}",
        recs[2]["action"]
    );
    assert_eq!(recs[2]["recipients"][0]["tls"], "forced");
}
